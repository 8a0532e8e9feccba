//! bf16 products for mixed-precision training: out [m, n] (+)= A [m, k] · Bᵀ with B [n, k],
//! both operands rounded to bf16 (round to nearest even), every product summed in f32.
//!
//! B is a frozen weight, packed once per use ([`PackedBf16`]): per panel of [`NR`] = 32
//! columns, per pair p of k, the 32 columns' (B[j, 2p], B[j, 2p + 1]) as one u32 (the even
//! element in the low half) — the operand layout of AVX512-BF16's `vdpbf16ps`, which adds
//! both products of a pair into one f32 lane. A's rows are packed the same way (a u32 per
//! pair) and each pair is broadcast against a panel, [`MR`] = 8 rows at a time.
//!
//! Kernels, chosen once by CPU features: AVX512-BF16 (`vdpbf16ps`), else an emulation on
//! AVX2+FMA (the pairs widened to f32 — a shift or a mask — and fused multiply-adds), else
//! the scalar twin. Each output is summed pair by pair in the same order by all three, the
//! odd element's product first: a product of two bf16 values is exact in f32, so a fused
//! or unfused step rounds once and the AVX2 emulation equals the scalar twin to the bit.
//! The hardware instruction flushes subnormals and may round a pair's two additions
//! differently: it agrees with the twin to float rounding (tested where the CPU has it).
//!
//! Where the CPU has AMX ([`super::amx`]), [`matmul_bt`] multiplies on its tiles instead —
//! the only path faster than the f32 GEMM ([`faster_than_f32`]). Where the CPU lacks
//! AVX512-BF16 the emulation is slower than the f32 GEMM (it does the same f32 work plus
//! the widening): bf16 products there reproduce the numerics, not the speed.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::amx;

/// Columns of B per panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of A per kernel call.
pub const MR: usize = 8;
/// Row blocks (of [`MR`] rows) per parallel task: a panel meets this many blocks while it
/// is in cache.
const BLOCKS_PER_TASK: usize = 6;

/// f32 → bf16 bits, rounded to nearest even (NaN stays NaN).
/// Branch-free, so that loops over slices vectorize.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x40;
    (if b & 0x7FFF_FFFF > 0x7F80_0000 { quiet_nan } else { rounded }) as u16
}

/// Rounds `src` into `dst` (as long as `src`).
#[inline(always)]
fn round_into(src: &[f32], dst: &mut [u16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = round(v);
    }
}

/// `row` rounded into pairs (`dst`: ⌈len / 2⌉ of them; a zero after an odd length).
#[inline(always)]
fn round_pairs(row: &[f32], dst: &mut [u32]) {
    if cfg!(target_endian = "little") {
        // A pair is its two bf16 values side by side in memory, the even one first.
        let halves: &mut [u16] = bytemuck::cast_slice_mut(dst);
        round_into(row, &mut halves[..row.len()]);
        halves[row.len()..].fill(0);
    } else {
        for (kp, d) in dst.iter_mut().enumerate() {
            *d = pair(row[2 * kp], row.get(2 * kp + 1).copied().unwrap_or(0.0));
        }
    }
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn widen(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// A pair of bf16 values as the kernels read it: the even element in the low 16 bits.
#[inline(always)]
fn join(even: u16, odd: u16) -> u32 {
    u32::from(even) | (u32::from(odd) << 16)
}

/// [`join`] of two f32 values rounded.
#[inline(always)]
fn pair(even: f32, odd: f32) -> u32 {
    join(round(even), round(odd))
}

/// B [n, k] in bf16, packed for the kernels (see the module documentation).
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// Pairs per column: ⌈k / 2⌉.
    k2: usize,
    /// [panels][k2][NR] pairs; columns past n and the odd element past k are zeros.
    data: Vec<u32>,
}

impl PackedBf16 {
    /// B [n, k], each panel (its index, its [k2][NR] pairs, zeros to start with) filled
    /// by `fill`, panels in parallel.
    fn build(n: usize, k: usize, fill: impl Fn(usize, &mut [u32]) + Sync) -> PackedBf16 {
        let k2 = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * k2 * NR];
        if k2 > 0 {
            data.par_chunks_mut(k2 * NR).enumerate().for_each(|(pi, panel)| fill(pi, panel));
        }
        PackedBf16 { n, k, k2, data }
    }

    /// B = W for a row-major W [n, k]: the operand of x · Wᵀ (a linear layer's forward).
    /// Each row is rounded whole, then its pairs go to their lanes.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> PackedBf16 {
        assert!(w.len() >= n * k, "bf16 pack: {} values for [{n}, {k}]", w.len());
        PackedBf16::build(n, k, |pi, panel| {
            let mut row = vec![0u16; k.div_ceil(2) * 2];
            for l in 0..NR.min(n - pi * NR) {
                let j = pi * NR + l;
                round_into(&w[j * k..(j + 1) * k], &mut row[..k]);
                for (kp, p) in row.chunks_exact(2).enumerate() {
                    panel[kp * NR + l] = join(p[0], p[1]);
                }
            }
        })
    }

    /// B = Wᵀ for a row-major W [k, n]: the operand of dy · W (a linear layer's backward
    /// to its input). Per pair of W's rows, their panel-wide slices are rounded and
    /// interleaved.
    pub fn from_cols(w: &[f32], k: usize, n: usize) -> PackedBf16 {
        assert!(w.len() >= n * k, "bf16 pack: {} values for [{k}, {n}]", w.len());
        PackedBf16::build(n, k, |pi, panel| {
            let (c0, cols) = (pi * NR, NR.min(n - pi * NR));
            let (mut even, mut odd) = ([0u16; NR], [0u16; NR]);
            for (kp, lanes) in panel.chunks_exact_mut(NR).enumerate() {
                round_into(&w[2 * kp * n + c0..][..cols], &mut even);
                if 2 * kp + 1 < k {
                    round_into(&w[(2 * kp + 1) * n + c0..][..cols], &mut odd);
                } else {
                    odd = [0; NR];
                }
                for (l, v) in lanes.iter_mut().enumerate().take(cols) {
                    *v = join(even[l], odd[l]);
                }
            }
        })
    }

    /// Columns of B (outputs per row of the product).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The shared dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.k2 * NR..(p + 1) * self.k2 * NR]
    }
}

/// out [MR, NR] = A block [MR, k2 pairs] · panel [k2 pairs, NR] (from zero).
pub type Kernel = fn(&[u32], &[u32], usize, &mut [f32]);

/// The kernel this CPU runs, with its name, chosen once.
fn kernel() -> (&'static str, Kernel) {
    static K: OnceLock<(&'static str, Kernel)> = OnceLock::new();
    *K.get_or_init(|| all_kernels().pop().expect("the scalar kernel is always there"))
}

/// Whether bf16 products run faster than f32 ones here: on AMX tiles. AVX512-BF16's
/// `vdpbf16ps` alone does no more products per cycle than two f32 FMA units, so with the
/// packing it measured slower than the f32 GEMM (a Xeon with AMX, `EDGELORA_AMX=0`);
/// without AVX512-BF16 the products are emulated in f32 (the same values, slower).
pub fn faster_than_f32() -> bool {
    amx::available()
}

/// How bf16 products run on this CPU, in words (`edgelora train` says it).
pub fn describe() -> String {
    match (amx::available(), kernel().0) {
        (true, k) => format!("AMX tiles (a product whose shared dimension is not a multiple of 32 takes the {k} kernel)"),
        (false, "avx512bf16") => "AVX512-BF16 vector instructions, no AMX: slower than --precision f32 on the CPUs measured".into(),
        (false, k) => format!("emulated in f32 ({k}): this CPU has no AVX512-BF16, so slower than --precision f32"),
    }
}

/// The kernel's name on this CPU (`avx512bf16`, `avx2-emulated`, `scalar`).
pub fn selected() -> &'static str {
    kernel().0
}

/// Every kernel this CPU can run, the preferred last (tests check each against the
/// scalar twin).
pub fn all_kernels() -> Vec<(&'static str, Kernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Kernel)> = vec![("scalar", block_scalar as Kernel)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push(("avx2-emulated", x86::block_avx2 as Kernel));
        }
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16") {
            v.push(("avx512bf16", x86::block_avx512bf16 as Kernel));
        }
    }
    v
}

/// The scalar twin: out [MR, NR] = Σ over pairs, the odd element's product first.
pub fn block_scalar(a: &[u32], b: &[u32], k2: usize, out: &mut [f32]) {
    assert!(a.len() >= MR * k2 && b.len() >= k2 * NR && out.len() >= MR * NR);
    for r in 0..MR {
        for j in 0..NR {
            let mut acc = 0f32;
            for kp in 0..k2 {
                let (x, w) = (a[r * k2 + kp], b[kp * NR + j]);
                acc += widen((x >> 16) as u16) * widen((w >> 16) as u16);
                acc += widen(x as u16) * widen(w as u16);
            }
            out[r * NR + j] = acc;
        }
    }
}

/// out [m, n] (+= when `accumulate`) A [m, k] · Bᵀ, A rounded to bf16 here: on AMX
/// tiles where [`super::amx`] is available and k fills whole tile steps, else on this
/// CPU's vector kernel.
pub fn matmul_bt(out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, accumulate: bool) {
    if on_amx(b) {
        matmul_bt_amx(out, a, m, b, accumulate)
    } else {
        matmul_bt_with(kernel().1, out, a, m, b, accumulate)
    }
}

/// Whether [`matmul_bt`] multiplies by `b` on AMX tiles: where they run and its pairs of k
/// fill whole tile steps.
fn on_amx(b: &PackedBf16) -> bool {
    b.k2.is_multiple_of(amx::KP) && amx::available()
}

/// Which path [`matmul_bt`] takes for `b` (`amx`, or the vector kernel's name); for the
/// profile.
pub fn path(b: &PackedBf16) -> &'static str {
    if on_amx(b) {
        "amx"
    } else {
        kernel().0
    }
}

/// [`matmul_bt`] on AMX tiles (only where [`amx::available`]; k2 a multiple of
/// [`amx::KP`]).
pub fn matmul_bt_amx(out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, accumulate: bool) {
    assert!(b.k2.is_multiple_of(amx::KP), "AMX bf16 product: {} pairs of k", b.k2);
    product(out, a, m, b, accumulate, amx::MR, AMX_BLOCKS_PER_TASK, |ap, blocks, panel, o| {
        amx::panel_product(ap, b.k2, blocks.start * amx::MR, blocks.len() * amx::MR, panel, o)
    })
}

/// Row blocks (of [`amx::MR`] rows) per parallel task on AMX.
const AMX_BLOCKS_PER_TASK: usize = 4;

/// [`matmul_bt`] on a given vector kernel (tests compare them).
pub fn matmul_bt_with(kernel: Kernel, out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, accumulate: bool) {
    let k2 = b.k2;
    product(out, a, m, b, accumulate, MR, BLOCKS_PER_TASK, |ap, blocks, panel, o| {
        for (i, blk) in blocks.enumerate() {
            kernel(&ap[blk * MR * k2..(blk + 1) * MR * k2], panel, k2, &mut o[i * MR * NR..(i + 1) * MR * NR]);
        }
    })
}

/// The skeleton of every bf16 product: A rounded into pairs (rows padded with zeros to
/// whole blocks of `block_rows`), then per task — a group of up to `blocks_per_task` row
/// blocks against one panel of B — `run(pairs of A, its row blocks, the panel, its
/// [rows, NR] outputs)`, tasks in parallel; the outputs go to `out`.
#[allow(clippy::too_many_arguments)]
fn product(out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, accumulate: bool, block_rows: usize, blocks_per_task: usize, run: impl Fn(&[u32], std::ops::Range<usize>, &[u32], &mut [f32]) + Sync) {
    let (n, k, k2) = (b.n, b.k, b.k2);
    assert!(a.len() >= m * k && out.len() >= m * n, "bf16 matmul: a {} out {} for m {m} n {n} k {k}", a.len(), out.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    let blocks = m.div_ceil(block_rows);
    let mut ap = vec![0u32; blocks * block_rows * k2];
    ap.par_chunks_mut(k2).zip(a[..m * k].par_chunks(k)).for_each(|(dst, row)| round_pairs(row, dst));
    let panels = n.div_ceil(NR);
    let groups = blocks.div_ceil(blocks_per_task);
    // Per task (group of row blocks, panel): its [rows, NR] outputs in a scratch of its
    // thread, then into its own rows × columns of `out`.
    let dst = OutPtr(out.as_mut_ptr());
    (0..groups * panels).into_par_iter().for_each_init(Vec::new, |o: &mut Vec<f32>, t| {
        let (g, p) = (t / panels, t % panels);
        let bs = g * blocks_per_task..blocks.min((g + 1) * blocks_per_task);
        o.clear();
        o.resize(bs.len() * block_rows * NR, 0.0);
        run(&ap, bs, b.panel(p), o);
        let (r0, c0) = (g * blocks_per_task * block_rows, p * NR);
        let cols = NR.min(n - c0);
        for (i, src) in o.chunks_exact(NR).enumerate().take(m.saturating_sub(r0)) {
            // SAFETY: row r0 + i < m and columns c0..c0 + cols < n lie within `out` (its
            // length asserted above), and no other task writes them: tasks own disjoint
            // (row group, panel) blocks; `out` is borrowed mutably for the whole call.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at((r0 + i) * n + c0), cols) };
            if accumulate {
                row.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
            } else {
                row.copy_from_slice(&src[..cols]);
            }
        }
    });
}

/// `out`'s start, shared by the tasks of [`product`], each writing its own elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks holding it write disjoint elements (see `product`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer to element `i` (a method, so that closures capture the whole wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// [`super::block_scalar`] emulated on AVX2+FMA: per 4 rows and 16 columns, 8
    /// accumulators; each pair of B widened to two f32 vectors (the odd elements by a mask,
    /// the even ones by a shift), each pair of A broadcast as two floats.
    pub fn block_avx2(a: &[u32], b: &[u32], k2: usize, out: &mut [f32]) {
        assert!(a.len() >= MR * k2 && b.len() >= k2 * NR && out.len() >= MR * NR);
        // SAFETY: chosen only after detecting AVX2 and FMA (see `all_kernels`); lengths
        // asserted above.
        unsafe { block_avx2_inner(a, b, k2, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2_inner(a: &[u32], b: &[u32], k2: usize, out: &mut [f32]) {
        let hi_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        for r0 in (0..MR).step_by(4) {
            for c0 in (0..NR).step_by(16) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for kp in 0..k2 {
                    // SAFETY: kp < k2 and c0 + 16 ≤ NR: within the panel (asserted length).
                    let (w0, w1) = unsafe {
                        let p = b.as_ptr().add(kp * NR + c0);
                        (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(8).cast()))
                    };
                    let odd = [_mm256_castsi256_ps(_mm256_and_si256(w0, hi_mask)), _mm256_castsi256_ps(_mm256_and_si256(w1, hi_mask))];
                    let even = [_mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1))];
                    for r in 0..4 {
                        // SAFETY: r0 + r < MR, kp < k2 (asserted length).
                        let x = unsafe { *a.get_unchecked((r0 + r) * k2 + kp) };
                        let xo = _mm256_set1_ps(f32::from_bits(x & 0xFFFF_0000));
                        let xe = _mm256_set1_ps(f32::from_bits(x << 16));
                        for h in 0..2 {
                            acc[r * 2 + h] = _mm256_fmadd_ps(xo, odd[h], acc[r * 2 + h]);
                            acc[r * 2 + h] = _mm256_fmadd_ps(xe, even[h], acc[r * 2 + h]);
                        }
                    }
                }
                for r in 0..4 {
                    for h in 0..2 {
                        // SAFETY: (r0 + r)·NR + c0 + 8h + 8 ≤ MR·NR (asserted length).
                        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((r0 + r) * NR + c0 + 8 * h), acc[r * 2 + h]) };
                    }
                }
            }
        }
    }

    /// [`super::block_scalar`] on AVX512-BF16: 16 accumulators (8 rows × 2 vectors of 16
    /// columns); per pair of k, two loads of B and one broadcast of A per row, 16
    /// `vdpbf16ps`.
    pub fn block_avx512bf16(a: &[u32], b: &[u32], k2: usize, out: &mut [f32]) {
        assert!(a.len() >= MR * k2 && b.len() >= k2 * NR && out.len() >= MR * NR);
        // SAFETY: chosen only after detecting AVX-512F and AVX512-BF16 (see
        // `all_kernels`); lengths asserted above.
        unsafe { block_avx512bf16_inner(a, b, k2, out) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block_avx512bf16_inner(a: &[u32], b: &[u32], k2: usize, out: &mut [f32]) {
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for kp in 0..k2 {
            // SAFETY: kp < k2: 32 pairs at kp·NR within the panel (asserted length); __m512i
            // and __m512bh are the same 64 bytes (32 bf16 pairs' halves).
            let (w0, w1) = unsafe {
                let p = b.as_ptr().add(kp * NR);
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.add(16).cast())),
                )
            };
            for r in 0..MR {
                // SAFETY: r < MR, kp < k2 (asserted length); the same 64 bytes reread.
                let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.get_unchecked(r * k2 + kp) as i32)) };
                acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], x, w0);
                acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], x, w1);
            }
        }
        for r in 0..MR {
            for h in 0..2 {
                // SAFETY: r·NR + 16h + 16 ≤ MR·NR (asserted length).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * NR + 16 * h), acc[2 * r + h]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(widen(round(1.0)), 1.0);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: to the even one, 1.
        assert_eq!(widen(round(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(widen(round(-2.5e-3)), widen(round(-2.5e-3)));
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
        for x in values(1000, 1) {
            let r = widen(round(x));
            assert!((r - x).abs() <= x.abs() / 256.0, "{x} → {r}");
        }
    }

    /// Every kernel against the f64 product of the bf16-rounded operands, over shapes that
    /// cut panels, blocks and pairs short; the AVX2 emulation equals the scalar twin to the
    /// bit, AVX512-BF16 (where the CPU has it) to float rounding.
    #[test]
    fn every_kernel_gives_the_product_of_the_rounded_operands() {
        for &(m, n, k) in &[(1, 1, 1), (3, 33, 7), (8, 32, 64), (17, 70, 129), (49, 96, 576)] {
            let a = values(m * k, 3 + m as u64);
            let w = values(n * k, 5 + n as u64);
            let r = |v: f32| f64::from(widen(round(v)));
            let want: Vec<f64> = (0..m * n).map(|ij| (0..k).map(|p| r(a[ij / n * k + p]) * r(w[ij % n * k + p])).sum()).collect();
            let packed = PackedBf16::from_rows(&w, n, k);
            // The transposed packing of Wᵀ stored [k, n] is the same matrix.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            assert_eq!(PackedBf16::from_cols(&wt, k, n).data, packed.data);
            let mut scalar = vec![0f32; m * n];
            matmul_bt_with(block_scalar, &mut scalar, &a, m, &packed, false);
            for (name, kern) in all_kernels() {
                let mut out = vec![1f32; m * n];
                matmul_bt_with(kern, &mut out, &a, m, &packed, true);
                for (i, (o, e)) in out.iter().zip(&want).enumerate() {
                    let mag: f64 = (0..k).map(|p| (r(a[i / n * k + p]) * f64::from(w_at(&packed, i % n, p))).abs()).sum();
                    assert!((f64::from(*o) - 1.0 - e).abs() <= 1e-5 * mag.max(1.0), "{name} [{m},{n},{k}] at {i}: {o} vs {}", e + 1.0);
                }
                let mut fresh = vec![7f32; m * n];
                matmul_bt_with(kern, &mut fresh, &a, m, &packed, false);
                if name != "avx512bf16" {
                    assert_eq!(fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{name} vs scalar [{m},{n},{k}]");
                }
            }
        }
    }

    /// The AMX path (where this CPU has it) against the f64 product of the rounded
    /// operands, on shapes that cut row blocks and panels short; elsewhere it says so.
    #[test]
    fn amx_tiles_give_the_product_of_the_rounded_operands() {
        if !amx::available() {
            eprintln!("AMX not available on this CPU: its product is not checked here");
            return;
        }
        for &(m, n, k) in &[(1, 1, 32), (17, 33, 64), (33, 70, 576), (70, 96, 1536), (100, 32, 63 * 32)] {
            let a = values(m * k, 7 + m as u64);
            let w = values(n * k, 11 + n as u64);
            let r = |v: f32| f64::from(widen(round(v)));
            let packed = PackedBf16::from_rows(&w, n, k);
            for accumulate in [false, true] {
                let mut out = vec![1f32; m * n];
                matmul_bt_amx(&mut out, &a, m, &packed, accumulate);
                for (i, o) in out.iter().enumerate() {
                    let (row, col) = (i / n, i % n);
                    let want: f64 = (0..k).map(|p| r(a[row * k + p]) * r(w[col * k + p])).sum::<f64>() + if accumulate { 1.0 } else { 0.0 };
                    let mag: f64 = (0..k).map(|p| (r(a[row * k + p]) * r(w[col * k + p])).abs()).sum();
                    assert!((f64::from(*o) - want).abs() <= 1e-5 * mag.max(1.0), "AMX [{m},{n},{k}] at {i}: {o} vs {want}");
                }
            }
        }
    }

    /// B[j, kk] as packed (widened).
    fn w_at(b: &PackedBf16, j: usize, kk: usize) -> f32 {
        let v = b.panel(j / NR)[(kk / 2) * NR + j % NR];
        widen(if kk % 2 == 0 { v as u16 } else { (v >> 16) as u16 })
    }
}
