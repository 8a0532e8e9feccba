//! The CPU backend: the SIMD dequantizers from `quant` and rayon over rows.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::dense::{self, Layout};
use super::{check_delta, Backend, ComputeError, Delta, MatrixRef};
use crate::gguf::GgmlType;
use crate::quant;

pub struct Cpu;

/// Up to this many input rows, quantized matmuls outside [`TILE_ROWS`] (1–2 rows, or a
/// format without a SIMD dequantizer) run as fused dot products over the blocks (each row
/// of W decoded on the fly, per input row); above, W is dequantized a block of rows at a
/// time and multiplied by GEMM. Measured crossover on this project's machine (1 thread):
/// 8 rows fused beat GEMM by 1.5×, 16 rows lose by 15%. LoRA factors use the same bound.
pub const FEW_ROWS: usize = 8;

/// Up to this many input rows, formats with four-row split kernels (Q4_1/Q8_0 on
/// AVX512-VNNI; AVX2's up to [`AVX2_SPLIT_ROWS`], see [`split_rows`]) take them, each
/// quad of W rows against up to four inputs per call (its
/// codes unpacked once), with the same operations per (row, input) as decoding one row:
/// a row of a batch gets exactly the values it gets alone. Measured with `edgelora bench
/// batch -t 2` on this project's machine (aggregate tokens/s, two rounds, rank-16 adapter
/// per sequence): 4 rows 235.6/242.3 (the single-input kernel per row: 199.1/200.3); 8 rows
/// 233.9/240.9 vs tiled 244.0/239.8; 12 rows 238.4/243.1 vs tiled 275.4/278.0; before,
/// 2 rows took the one-row split kernel (132.1/129.4) and 3–4 the tiled one (164.3/158.1,
/// 199.8/194.2).
pub const SPLIT_ROWS: usize = 8;

/// Input rows up to which the four-row split kernels take a product, on this CPU:
/// [`SPLIT_ROWS`] with AVX512-VNNI, [`AVX2_SPLIT_ROWS`] with AVX2's; beyond, the tiled
/// kernel. `EDGELORA_SPLIT_ROWS=N` overrides it (to measure the crossover).
pub fn split_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| match std::env::var("EDGELORA_SPLIT_ROWS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None if quant::simd::selected_split() == Some("avx2") => AVX2_SPLIT_ROWS,
        None => SPLIT_ROWS,
    })
}

/// [`split_rows`] where the split kernels are AVX2's. Measured on an AVX2-only host (AMD
/// Zen 3; a [1536, 576] product, µs per input row, the best of 7 runs, 1 thread / 2;
/// `cargo bench --bench gguf -- matmul_rows` times the same shape):
/// Q4_1 four-row split vs tiled — 1 row 65.5 / 38.9 (the one-row kernel 78.4 / 43.4),
/// 2 rows 52.9 / 30.0 (one-row 94.3 / 51.0), 3 rows 53.7 / 29.9 vs 63.9 / 38.3, 4 rows
/// 52.7 / 27.7 vs 49.8 / 28.2, 6 rows 55.4 / 26.5 vs 49.2 / 26.1, 8 rows 51.3 / 25.2 vs
/// 37.5 / 20.2; Q8_0 4 rows 43.2 / 23.9 vs 59.9 / 30.5, 8 rows 44.0 / 22.1 vs 41.3 / 20.2.
pub const AVX2_SPLIT_ROWS: usize = 4;

/// Input rows for which the tiled kernel ([`super::tile`]) runs. Measured with
/// `edgelora bench batch` on this project's machine (1 thread, default model, rank-16
/// adapter per row; aggregate tokens/s): 2 rows: fused 42.6 vs tiled 35.3; 3 rows: fused
/// 47.1 vs tiled 55.0; 8 rows: fused 53.8 vs tiled 98.2; 48 rows: GEMM 147.8 vs tiled
/// 164.6; 64 rows: GEMM 166.3 vs tiled 159.5. On an AVX2-only host (AMD Zen 3, 1 thread,
/// a Q4_1 [1536, 576] product — the shape `cargo bench --bench gguf -- matmul_rows` times
/// — with the AVX2 tile kernel blocked for 16 registers): 2 rows one-row split kernel 98
/// µs per row vs tiled ~98; 3 rows 65; 8 rows 36; 48 rows 24.5; GEMM at 64 rows 28.
pub const TILE_ROWS: std::ops::RangeInclusive<usize> = 3..=48;

/// Dot product, the kernel chosen once by CPU features (AVX2+FMA: eight lanes, four
/// accumulators), with the scalar loop as its twin. Lanes change the summation order, so
/// results differ from the scalar loop by float rounding only.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    static KERNEL: OnceLock<fn(&[f32], &[f32]) -> f32> = OnceLock::new();
    KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return x86::dot;
            }
        }
        dot_scalar
    })(a, b)
}

/// The scalar twin of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// y[o] += Σ_k m[o·r + k]·v[k] for every output o, with r = v.len() short (a LoRA rank):
/// M [y.len(), r] times a short vector. AVX2+FMA where r is a multiple of 8 up to 64 (eight
/// outputs at a time, their sums reduced together), else a dot product per row.
pub fn gemv_short(m: &[f32], v: &[f32], y: &mut [f32]) {
    let r = v.len();
    assert_eq!(m.len(), r * y.len(), "gemv_short: M holds {} values for [{}, {r}]", m.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: OnceLock<bool> = OnceLock::new();
        if r.is_multiple_of(8) && (8..=64).contains(&r) && *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            // SAFETY: AVX2 and FMA detected above.
            return unsafe { x86::gemv_short(m, v, y) };
        }
    }
    for (o, row) in y.iter_mut().zip(m.chunks_exact(r.max(1))) {
        *o += dot(row, v);
    }
}

/// [`dot`] with `a` in f16 (LoRA factors stored as f16): each value widened to f32
/// exactly, then the same lanes, accumulators and reduction as [`dot`] — so the result is
/// bit-for-bit `dot(a as f32, b)` (AVX2+FMA+F16C; else the scalar twin, which equals
/// [`dot_scalar`] on the widened values).
pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    static KERNEL: OnceLock<fn(&[half::f16], &[f32]) -> f32> = OnceLock::new();
    KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if f16c() {
                return x86::dot_f16;
            }
        }
        dot_f16_scalar
    })(a, b)
}

/// The scalar twin of [`dot_f16`].
pub fn dot_f16_scalar(a: &[half::f16], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x.to_f32() * y).sum()
}

/// [`dot`] with `a` in int8 (LoRA factors quantized for decoding, the scale applied by
/// the caller): each value widened to f32 exactly, then the same lanes, accumulators and
/// reduction as [`dot`] — bit for bit `dot(a as f32, b)` (AVX2+FMA; else the scalar twin,
/// which equals [`dot_scalar`] on the widened values).
pub fn dot_i8(a: &[i8], b: &[f32]) -> f32 {
    static KERNEL: OnceLock<fn(&[i8], &[f32]) -> f32> = OnceLock::new();
    KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return x86::dot_i8;
            }
        }
        dot_i8_scalar
    })(a, b)
}

/// The scalar twin of [`dot_i8`].
pub fn dot_i8_scalar(a: &[i8], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, y)| f32::from(x) * y).sum()
}

/// [`gemv_short`] with M in int8, equal to it bit for bit on the widened values.
pub fn gemv_short_i8(m: &[i8], v: &[f32], y: &mut [f32]) {
    let r = v.len();
    assert_eq!(m.len(), r * y.len(), "gemv_short_i8: M holds {} values for [{}, {r}]", m.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: OnceLock<bool> = OnceLock::new();
        if r.is_multiple_of(8) && (8..=64).contains(&r) && *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            // SAFETY: AVX2 and FMA detected above.
            return unsafe { x86::gemv_short_i8(m, v, y) };
        }
    }
    for (o, row) in y.iter_mut().zip(m.chunks_exact(r.max(1))) {
        *o += dot_i8(row, v);
    }
}

/// AVX2, FMA and F16C (the f16 kernels' set; [`dot`] and [`gemv_short`] need the first two).
#[cfg(target_arch = "x86_64")]
fn f16c() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c"))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight f32 of M from `p` (f32 as is, f16 widened exactly).
    trait Lanes: Copy {
        /// SAFETY: 8 readable values at p.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: by the caller.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Lanes for half::f16 {
        #[inline(always)]
        unsafe fn load8(p: *const half::f16) -> __m256 {
            // SAFETY: by the caller (8 f16 = 16 bytes); F16C is enabled in every function
            // that inlines this (dot_f16_avx2).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
    }

    impl Lanes for i8 {
        #[inline(always)]
        unsafe fn load8(p: *const i8) -> __m256 {
            // SAFETY: by the caller (8 bytes); AVX2 is enabled in every function that
            // inlines this (gemv_short_i8, dot_i8_avx2).
            unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
        }
    }

    /// See [`super::gemv_short`]; r = v.len() is a multiple of 8, at most 64.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_short(m: &[f32], v: &[f32], y: &mut [f32]) {
        // SAFETY: by the caller.
        unsafe { gemv_short_any(m, v, y) }
    }

    /// See [`super::gemv_short_i8`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_short_i8(m: &[i8], v: &[f32], y: &mut [f32]) {
        // SAFETY: by the caller.
        unsafe { gemv_short_any(m, v, y) }
    }

    #[inline(always)]
    unsafe fn gemv_short_any<T: Lanes>(m: &[T], v: &[f32], y: &mut [f32]) {
        let r = v.len();
        let k = r / 8;
        let mut vv = [_mm256_setzero_ps(); 8];
        for (j, x) in vv.iter_mut().take(k).enumerate() {
            // SAFETY: 8 readable floats at 8j < r.
            *x = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * j)) };
        }
        let n = y.len();
        let mut o = 0;
        while o + 8 <= n {
            // No closures here: they would not inherit the callers' target features, and
            // their intrinsics would become calls.
            let mut s = [_mm256_setzero_ps(); 8];
            for (i, si) in s.iter_mut().enumerate() {
                // SAFETY: rows o..o + 8 < n of M hold r values each (asserted by the caller).
                *si = unsafe { row_lanes(m, r, o + i, &vv[..k]) };
            }
            // Eight lane vectors → their eight sums in one vector.
            let u0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
            let u1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
            let sums = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1));
            // SAFETY: 8 writable floats at o (o + 8 ≤ n).
            unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(o), _mm256_add_ps(_mm256_loadu_ps(y.as_ptr().add(o)), sums)) };
            o += 8;
        }
        for i in o..n {
            let mut lanes = [0f32; 8];
            // SAFETY: row i < n of M holds r values; 8 writable floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), row_lanes(m, r, i, &vv[..k])) };
            y[i] += lanes.iter().sum::<f32>();
        }
    }

    /// Row `o` of M [.., r] against v's lane vectors `vv` (r = 8·vv.len()): eight partial sums.
    /// SAFETY: row o of M holds r values.
    #[inline(always)]
    unsafe fn row_lanes<T: Lanes>(m: &[T], r: usize, o: usize, vv: &[__m256]) -> __m256 {
        let mut acc = _mm256_setzero_ps();
        for (j, x) in vv.iter().enumerate() {
            // SAFETY: by the caller.
            acc = _mm256_fmadd_ps(unsafe { T::load8(m.as_ptr().add(o * r + 8 * j)) }, *x, acc);
        }
        acc
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: inlined into an AVX2+FMA function.
        unsafe { dot_any(a, b) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_f16_avx2(a: &[half::f16], b: &[f32]) -> f32 {
        // SAFETY: inlined into an AVX2+FMA+F16C function.
        unsafe { dot_any(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_i8_avx2(a: &[i8], b: &[f32]) -> f32 {
        // SAFETY: inlined into an AVX2+FMA function.
        unsafe { dot_any(a, b) }
    }

    pub fn dot_i8(a: &[i8], b: &[f32]) -> f32 {
        // SAFETY: handed out only after detecting AVX2 and FMA.
        unsafe { dot_i8_avx2(a, b) }
    }

    pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
        // SAFETY: handed out only after detecting AVX2, FMA and F16C.
        unsafe { dot_f16_avx2(a, b) }
    }

    /// Σ a·b over the shorter length: four 8-lane accumulators, then the tail.
    #[inline(always)]
    unsafe fn dot_any<T: Lanes + Into<f32>>(a: &[T], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 ≤ n elements are readable in both slices.
                let (x, y) = unsafe { (T::load8(a.as_ptr().add(i + 8 * k)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * k))) };
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        let mut total: f32 = lanes.iter().sum();
        while i < n {
            total += a[i].into() * b[i];
            i += 1;
        }
        total
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: handed out only after detecting AVX2 and FMA.
        unsafe { dot_avx2(a, b) }
    }
}

/// Dequantizes whole rows of `n_in` elements (`bytes` → `out`), groups of rows in parallel.
pub fn dequantize_rows(t: GgmlType, bytes: &[u8], n_in: usize, out: &mut [f32]) -> Result<(), quant::QuantError> {
    const ROWS: usize = 32;
    let row_bytes = t.bytes_for(n_in as u64).unwrap_or(0) as usize;
    if row_bytes == 0 {
        return quant::dequantize(t, bytes, out);
    }
    out.par_chunks_mut(ROWS * n_in).zip(bytes.par_chunks(ROWS * row_bytes)).try_for_each(|(o, b)| quant::dequantize(t, b, o))
}

/// y [n_x, n_out] with y[r, o] = `f(row o of W, r)`: groups of output rows in parallel (a
/// task per row would drown in scheduling).
fn per_row(w: &[u8], row_bytes: usize, n_x: usize, n_out: usize, f: impl Fn(&[u8], usize) -> f32 + Sync) -> Vec<f32> {
    const ROWS: usize = 32;
    let groups = w.par_chunks(row_bytes * ROWS);
    if n_x == 1 {
        // Each group writes its own part of y (an indexed split: no per-group vectors).
        let mut y = vec![0f32; n_out];
        y.par_chunks_mut(ROWS).zip(groups).for_each(|(ys, rows)| {
            for (yo, row) in ys.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                *yo = f(row, 0);
            }
        });
        return y;
    }
    // Per output, its n_x values; then transposed to [n_x, n_out].
    let cols: Vec<f32> = groups.flat_map_iter(|rows| rows.chunks_exact(row_bytes).flat_map(|row| (0..n_x).map(|r| f(row, r)).collect::<Vec<f32>>())).collect();
    let mut y = vec![0f32; n_x * n_out];
    for (o, col) in cols.chunks_exact(n_x).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * n_out + o] = *v;
        }
    }
    y
}

/// How many quads of W rows ahead [`rows_by_fours`] asks the cache for (software
/// prefetch, x86): while one quad meets the input, the next one's lines are on their way.
/// Decoding streams all of W once per token, and one core's hardware prefetchers alone
/// did not keep the loads fed. Measured on a Xeon with AVX-512 (2026-12-07, `edgelora
/// bench --backend native -t 1|2 -p 16 -n 64 --reps 3`, three interleaved rounds, decode
/// tokens/s): 1 thread, none 67.5 / 64.1 / 65.3, one quad ahead 115.3 / 112.0 / 107.4, two
/// 93.8 / 100.1 / 96.5, four 84.4 / 96.6 / 78.1; 2 threads, none 108.2 / 104.8, one 145.1
/// / 157.3, two 151.4 / 151.3. `EDGELORA_PREFETCH=N` overrides it (0: off).
pub const PREFETCH_QUADS: usize = 1;

/// Prefetches quad `quad` of `rows` (its four rows of `row_bytes`, or what is left of
/// them) — nothing when `ahead` is 0 (prefetch off) or the quad lies past the end.
#[inline(always)]
fn prefetch_quad(rows: &[u8], row_bytes: usize, quad: usize, ahead: usize) {
    if ahead > 0 {
        let from = (quad * 4 * row_bytes).min(rows.len());
        prefetch(&rows[from..(from + 4 * row_bytes).min(rows.len())]);
    }
}

/// Asks the cache for every line of `bytes` (x86; a no-op elsewhere).
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch hint for an address inside `bytes`; it reads nothing.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn prefetch_quads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::env::var("EDGELORA_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(PREFETCH_QUADS))
}

/// Rows of W (`row_bytes` each) · one split input row into `ys` (one value per row):
/// four rows per kernel call, the rest one at a time; the rows [`prefetch_quads`] quads
/// ahead are prefetched.
fn rows_by_fours(ys: &mut [f32], rows: &[u8], row_bytes: usize, x: &quant::simd::SplitX, four: quant::simd::SplitDot4Kernel, one: quant::simd::SplitDotKernel) {
    let done = (ys.len() / 4) * 4;
    let mut quads = ys.chunks_exact_mut(4);
    let ahead = prefetch_quads();
    for (i, (q, w4)) in quads.by_ref().zip(rows.chunks_exact(4 * row_bytes)).enumerate() {
        prefetch_quad(rows, row_bytes, i + ahead, ahead);
        let mut o = [0f32; 4];
        four(w4, row_bytes, x, &mut o);
        q.copy_from_slice(&o);
    }
    for (yo, row) in quads.into_remainder().iter_mut().zip(rows[done * row_bytes..].chunks_exact(row_bytes)) {
        *yo = one(row, x);
    }
}

/// Output rows per parallel task of the one-row kernels.
const TASK_ROWS: usize = 32;

/// y [n_x, n_out] = x · Wᵀ for split input rows ([`rows_by_fours`] on each): groups of
/// TASK_ROWS rows of W in parallel, every input row against a group while it is in
/// cache. Each row's values do not depend on the other rows (the same groups and kernel
/// calls as alone).
fn rows_by_fours_each(w: &[u8], row_bytes: usize, n_out: usize, xs: &[quant::simd::SplitX], four: quant::simd::SplitDot4Kernel, four_n: Option<quant::simd::SplitDot4NKernel>, one: quant::simd::SplitDotKernel) -> Vec<f32> {
    if let [x] = xs {
        let mut y = vec![0f32; n_out];
        y.par_chunks_mut(TASK_ROWS).zip(w.par_chunks(TASK_ROWS * row_bytes)).for_each(|(ys, rows)| rows_by_fours(ys, rows, row_bytes, x, four, one));
        return y;
    }
    // Per group: [n_x, rows in the group], then put in place. Each quad of W rows meets
    // every input in one call (its codes unpacked once per four inputs).
    let n_x = xs.len();
    let parts: Vec<Vec<f32>> = w
        .par_chunks(TASK_ROWS * row_bytes)
        .map(|rows| {
            let nr = rows.len() / row_bytes;
            let mut out = vec![0f32; n_x * nr];
            match four_n {
                Some(k) => {
                    let mut o4 = vec![[0f32; 4]; n_x];
                    let ahead = prefetch_quads();
                    for (qi, w4) in rows.chunks_exact(4 * row_bytes).enumerate() {
                        prefetch_quad(rows, row_bytes, qi + ahead, ahead);
                        k(w4, row_bytes, xs, &mut o4);
                        for (j, o) in o4.iter().enumerate() {
                            out[j * nr + 4 * qi..][..4].copy_from_slice(o);
                        }
                    }
                    let done = (nr / 4) * 4;
                    for (j, x) in xs.iter().enumerate() {
                        for (i, row) in rows[done * row_bytes..].chunks_exact(row_bytes).enumerate() {
                            out[j * nr + done + i] = one(row, x);
                        }
                    }
                }
                None => {
                    for (o, x) in out.chunks_exact_mut(nr).zip(xs) {
                        rows_by_fours(o, rows, row_bytes, x, four, one);
                    }
                }
            }
            out
        })
        .collect();
    let mut y = vec![0f32; xs.len() * n_out];
    for (g, part) in parts.iter().enumerate() {
        let nr = part.len() / xs.len();
        for (r, src) in part.chunks_exact(nr).enumerate() {
            y[r * n_out + g * TASK_ROWS..][..nr].copy_from_slice(src);
        }
    }
    y
}

/// The bytes per row of W [.., n_in] as `t` blocks, and a check of W's and x's lengths.
fn check_matmul(t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<usize, ComputeError> {
    let row_bytes = t.bytes_for(n_in as u64).ok_or_else(|| ComputeError::Shape(format!("{n_in} is not a whole number of {t} blocks")))? as usize;
    if w.len() != row_bytes * n_out || x.len() != n_x * n_in {
        return Err(ComputeError::Shape(format!("W {} bytes for [{n_out}, {n_in}] {t}, x {} for [{n_x}, {n_in}]", w.len(), x.len())));
    }
    Ok(row_bytes)
}

impl Backend for Cpu {
    fn name(&self) -> String {
        format!("cpu ({})", quant::simd::selected())
    }

    fn packs_weights(&self) -> bool {
        super::packed::available()
    }

    fn dequantize(&self, t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError> {
        Ok(quant::dequantize(t, bytes, out)?)
    }

    fn lora_delta(&self, acc: &mut [f32], n_out: usize, n_in: usize, deltas: &[Delta]) -> Result<(), ComputeError> {
        for d in deltas {
            check_delta(acc, n_out, n_in, d)?;
            // acc [n_out, n_in] += (s·B) [n_out, r] · A [r, n_in]: one GEMM (rows in parallel).
            let sb: Vec<f32> = d.b.iter().map(|b| d.scale * b).collect();
            dense::matmul(acc, &sb, Layout::N, d.a, Layout::N, n_out, n_in, d.rank, true);
        }
        Ok(())
    }

    fn matmul(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError> {
        let row_bytes = check_matmul(t, w, n_out, n_in, x, n_x)?;
        if n_x == 0 {
            return Ok(Vec::new());
        }
        // Few input rows (decoding, short prompts): fused kernels over each row of W, which
        // is never written out as floats. The rows meet x rounded to 16 bits per block
        // (prepared once per input row) in integer byte products — AVX512-VNNI, four rows
        // of W per call for each input row up to split_rows() rows, or AVX2's `vpmaddwd` —
        // else f32 fused kernels.
        // A batch of decoding sequences or a short prompt: W decoded once, in tiles that
        // stay in cache, against every row (`tile`).
        if (1..=split_rows()).contains(&n_x) {
            if let (Some(four), Some(one)) = (quant::simd::split_dot4_kernel(t), quant::simd::split_dot_kernel(t)) {
                let xs: Vec<quant::simd::SplitX> = x.chunks_exact(n_in).map(quant::simd::SplitX::new).collect();
                return Ok(rows_by_fours_each(w, row_bytes, n_out, &xs, four, quant::simd::split_dot4n_kernel(t), one));
            }
        }
        if TILE_ROWS.contains(&n_x) && quant::simd::kernel(t).is_some() {
            return Ok(super::tile::matmul_few(t, w, row_bytes, n_out, n_in, x, n_x)?);
        }
        if n_x <= FEW_ROWS {
            if let Some(split) = quant::simd::split_dot_kernel(t) {
                let xs: Vec<quant::simd::SplitX> = x.chunks_exact(n_in).map(quant::simd::SplitX::new).collect();
                return Ok(per_row(w, row_bytes, n_x, n_out, |row, r| split(row, &xs[r])));
            }
            if let Some(fused) = quant::simd::dot_kernel(t) {
                return Ok(per_row(w, row_bytes, n_x, n_out, |row, r| fused(row, &x[r * n_in..(r + 1) * n_in])));
            }
        }
        // Several input rows (prompts): dequantize W a block of rows at a time (SIMD,
        // rows in parallel) and multiply with the dense GEMM, so each weight is decoded
        // once per call and the product runs at GEMM speed.
        const BLOCK: usize = 2048;
        let block = BLOCK.min(n_out);
        let mut y = vec![0f32; n_x * n_out];
        let mut wbuf = vec![0f32; block * n_in];
        let mut part = vec![0f32; n_x * block];
        for (bi, rows) in w.chunks(row_bytes * block).enumerate() {
            let nr = rows.len() / row_bytes;
            dequantize_rows(t, rows, n_in, &mut wbuf[..nr * n_in])?;
            dense::matmul(&mut part[..n_x * nr], x, Layout::N, &wbuf[..nr * n_in], Layout::T, n_x, nr, n_in, false);
            for (r, src) in part[..n_x * nr].chunks_exact(nr).enumerate() {
                y[r * n_out + bi * block..][..nr].copy_from_slice(src);
            }
        }
        Ok(y)
    }

    /// One decoding row against several weights with four-row split kernels (q/k/v,
    /// gate/up while decoding): the input is split once and every weight's row groups go
    /// through one parallel pass — one hand-off between threads instead of one per weight.
    /// Otherwise [`Backend::matmul`] on each.
    fn matmul_shared(&self, ws: &[MatrixRef], n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<Vec<f32>>, ComputeError> {
        type Kernels = (quant::simd::SplitDot4Kernel, quant::simd::SplitDotKernel);
        let kernels: Option<Vec<Kernels>> = ws.iter().map(|w| Some((quant::simd::split_dot4_kernel(w.t)?, quant::simd::split_dot_kernel(w.t)?))).collect();
        let Some(kernels) = kernels.filter(|_| n_x == 1 && ws.len() > 1) else {
            return ws.iter().map(|w| self.matmul(w.t, w.bytes, w.n_out, n_in, x, n_x)).collect();
        };
        let row_bytes: Vec<usize> = ws.iter().map(|w| check_matmul(w.t, w.bytes, w.n_out, n_in, x, n_x)).collect::<Result<_, _>>()?;
        let split = quant::simd::SplitX::new(x);
        let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.n_out]).collect();
        // Every weight's groups of TASK_ROWS output rows, as one list of tasks.
        let mut tasks: Vec<(&mut [f32], &[u8], usize, Kernels)> = Vec::new();
        for (((y, w), &rb), &k) in ys.iter_mut().zip(ws).zip(&row_bytes).zip(&kernels) {
            tasks.extend(y.chunks_mut(TASK_ROWS).zip(w.bytes.chunks(TASK_ROWS * rb)).map(|(ys, rows)| (ys, rows, rb, k)));
        }
        tasks.into_par_iter().for_each(|(ys, rows, rb, (four, one))| rows_by_fours(ys, rows, rb, &split, four, one));
        Ok(ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use rand::{Rng, SeedableRng};

    fn halves(n: usize, seed: u64) -> Vec<f16> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| f16::from_f32(r.random_range(-1.0f32..1.0))).collect()
    }

    fn floats(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn f16_dot_equals_the_f32_kernel_on_the_widened_values_to_the_bit() {
        // Lengths with and without a 32-value main loop and a tail.
        for n in [0, 1, 7, 8, 31, 32, 33, 576, 1536 + 5] {
            let a = halves(n, n as u64);
            let wide: Vec<f32> = a.iter().map(|h| h.to_f32()).collect();
            let b = floats(n, 100 + n as u64);
            assert_eq!(dot_f16(&a, &b).to_bits(), dot(&wide, &b).to_bits(), "dot, n {n}");
            assert_eq!(dot_f16_scalar(&a, &b).to_bits(), dot_scalar(&wide, &b).to_bits(), "scalar dot, n {n}");
        }
    }

    #[test]
    fn int8_dot_and_gemv_equal_the_f32_kernels_on_the_widened_values_to_the_bit() {
        let bytes = |n: usize, seed: u64| -> Vec<i8> {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..n).map(|_| r.random_range(-127i8..=127)).collect()
        };
        for n in [0, 1, 7, 8, 31, 32, 33, 576, 1536 + 5] {
            let a = bytes(n, n as u64);
            let wide: Vec<f32> = a.iter().map(|&q| f32::from(q)).collect();
            let b = floats(n, 200 + n as u64);
            assert_eq!(dot_i8(&a, &b).to_bits(), dot(&wide, &b).to_bits(), "dot, n {n}");
            assert_eq!(dot_i8_scalar(&a, &b).to_bits(), dot_scalar(&wide, &b).to_bits(), "scalar dot, n {n}");
        }
        for (r, n_out) in [(8, 13), (16, 576), (64, 9), (4, 10), (12, 7), (72, 3)] {
            let m = bytes(r * n_out, r as u64);
            let wide: Vec<f32> = m.iter().map(|&q| f32::from(q)).collect();
            let v = floats(r, 8);
            let (mut y8, mut y32) = (floats(n_out, 10), floats(n_out, 10));
            gemv_short_i8(&m, &v, &mut y8);
            gemv_short(&wide, &v, &mut y32);
            assert_eq!(y8.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), y32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "gemv, r {r}, n_out {n_out}");
        }
    }
}
