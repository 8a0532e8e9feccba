//! ggml's reference quantizers in Rust: the bytes of `quantize_row_*_ref` (ggml-quants.c)
//! and of ggml's fp16/bf16 conversions, bit for bit, without linking llama.cpp.
//!
//! These are what `ggml_quantize_chunk` runs for every type here when no importance matrix
//! is given. ggml builds them as plain IEEE f32 code (no fast-math, no FMA), so matching it
//! means doing each float operation in the same order and precision as ggml does, rounding
//! with its `nearest_int` (ties to even), and keeping its comparisons (`>` vs `>=`) and
//! thresholds. The test suite compares every type against ggml byte for byte.
//!
//! Every quantizer here works block by block (no state across blocks or rows), so callers
//! may split rows between threads freely.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::blocks::*;
use super::quantize::quantize_row_q4_1;
use crate::gguf::GgmlType;

/// Below this absolute maximum a group counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Whether [`quantize_rows`] writes `t`.
pub fn supports(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

/// Quantizes `src` (whole rows of `n_per_row` values; `n_per_row` a multiple of t's block
/// size, checked by the caller) into `dst` (exactly `t.bytes_for(src.len())` bytes) as
/// ggml's reference quantizer does. Panics-free: returns false for a type it does not
/// support or for sizes that do not match.
pub fn quantize_rows(t: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) -> bool {
    use GgmlType::*;
    let sizes_ok = n_per_row != 0
        && src.len().is_multiple_of(n_per_row)
        && (n_per_row as u64).is_multiple_of(t.block_size())
        && t.bytes_for(src.len() as u64) == Some(dst.len() as u64);
    if !supports(t) || !sizes_ok {
        return false;
    }
    match t {
        F32 => elements(src, dst, f32::to_le_bytes),
        F16 => elements(src, dst, |v| fp16(v).to_bits().to_le_bytes()),
        BF16 => elements(src, dst, |v| bf16_bits(v).to_le_bytes()),
        Q4_0 => blocks(src, dst, QK, q4_0),
        Q4_1 => blocks(src, dst, QK, q4_1),
        Q5_0 => blocks(src, dst, QK, q5_0),
        Q5_1 => blocks(src, dst, QK, q5_1),
        Q8_0 => blocks(src, dst, QK, q8_0),
        Q2_K => blocks(src, dst, QK_K, q2_k),
        Q3_K => blocks(src, dst, QK_K, q3_k),
        Q4_K => blocks(src, dst, QK_K, q4_k),
        Q5_K => blocks(src, dst, QK_K, q5_k),
        Q6_K => blocks(src, dst, QK_K, q6_k),
        _ => return false,
    }
    true
}

/// Writes one `N`-byte encoding per value.
fn elements<const N: usize>(src: &[f32], dst: &mut [u8], encode: impl Fn(f32) -> [u8; N]) {
    for (&v, out) in src.iter().zip(dst.chunks_exact_mut(N)) {
        out.copy_from_slice(&encode(v));
    }
}

/// Quantizes each run of `n` values into one block `B`, copied out as bytes (so `dst`
/// needs no alignment).
fn blocks<B: Pod>(src: &[f32], dst: &mut [u8], n: usize, quantize: impl Fn(&[f32]) -> B) {
    for (x, out) in src.chunks_exact(n).zip(dst.chunks_exact_mut(std::mem::size_of::<B>())) {
        out.copy_from_slice(bytemuck::bytes_of(&quantize(x)));
    }
}

// ---------------------------------------------------------------------------------------
// Scalar conversions, as ggml does them.

/// ggml's fp32 → fp16: round to nearest even (half's conversion does the same); NaN
/// becomes the quiet NaN 0x7e00 with the input's sign, its payload dropped.
fn fp16(v: f32) -> f16 {
    if v.is_nan() {
        let sign = (v.to_bits() >> 16) as u16 & 0x8000;
        return f16::from_bits(sign | 0x7e00);
    }
    f16::from_f32(v)
}

/// ggml's fp32 → bf16 bits: round to nearest even; NaN keeps its top half, made quiet.
fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// ggml's `nearest_int`: adds 1.5·2²³ so the FPU rounds (ties to even) into the low
/// mantissa bits, and reads them back. Exact for |v| ≤ 2²² − 1; beyond that (and for
/// non-finite v) it returns the same garbage ggml does, without panicking.
fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0;
    (biased.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's float → int conversion as x86-64 performs it (`cvttss2si`): truncation toward
/// zero, and i32::MIN for NaN and out-of-range values (where Rust's `as` saturates). The
/// caller then narrows with `as`, which wraps like C's conversion to a smaller integer.
fn c_int(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// The value of largest magnitude (the first one on ties) and that magnitude; NaNs are
/// skipped, as ggml's strict `>` skips them.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Smallest and largest value, starting from ±f32::MAX as ggml's Q4_1/Q5_1 do.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1/d`, or 0 for d = 0.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------
// The 32-wide formats.

/// Q4_0: d = (value of largest magnitude)/−8, codes ⌊x/d + 8.5⌋ capped at 15.
fn q4_0(x: &[f32]) -> BlockQ4_0 {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    let mut b = BlockQ4_0 { d: fp16(d), qs: [0; QK / 2] };
    let code = |v: f32| (c_int(v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        b.qs[j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
    b
}

/// Q4_1: the min/max grid (our bit-exact twin of ggml's, in `quantize`).
fn q4_1(x: &[f32]) -> BlockQ4_1 {
    let mut b = [BlockQ4_1::zeroed()];
    quantize_row_q4_1(x, &mut b);
    b[0]
}

/// Packs 32 five-bit codes: low nibbles in `qs` (j and j + 16 share a byte), fifth bits
/// in the 32-bit little-endian `qh` (bit j for code j).
fn pack_q5(codes: &[u8; QK], qs: &mut [u8; QK / 2]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (lo, hi) = (codes[j], codes[j + QK / 2]);
        qs[j] = (lo & 0x0f) | ((hi & 0x0f) << 4);
        qh |= u32::from((lo & 0x10) >> 4) << j;
        qh |= u32::from((hi & 0x10) >> 4) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

/// Q5_0: d = (value of largest magnitude)/−16, codes ⌊x/d + 16.5⌋ capped at 31.
fn q5_0(x: &[f32]) -> BlockQ5_0 {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (c_int(v * id + 16.5) as i8).min(31) as u8;
    }
    let mut b = BlockQ5_0 { d: fp16(d), qh: [0; 4], qs: [0; QK / 2] };
    b.qh = pack_q5(&codes, &mut b.qs);
    b
}

/// Q5_1: min/max grid, d = (max − min)/31, codes ⌊(x − min)/d + ½⌋ (not capped).
fn q5_1(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = c_int((v - min) * id + 0.5) as u8;
    }
    let mut b = BlockQ5_1 { d: fp16(d), m: fp16(min), qh: [0; 4], qs: [0; QK / 2] };
    b.qh = pack_q5(&codes, &mut b.qs);
    b
}

/// Q8_0: d = max|x|/127, codes round(x/d), halves away from zero.
fn q8_0(x: &[f32]) -> BlockQ8_0 {
    // ggml's MAX(a, b) is `a > b ? a : b`: a NaN replaces the running max.
    let amax = x.iter().fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    let mut b = BlockQ8_0 { d: fp16(d), qs: [0; QK] };
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = c_int((v * id).round()) as i8;
    }
    b
}

// ---------------------------------------------------------------------------------------
// Scale searches shared by the K-quants.

/// Symmetric codes in [−nmax, nmax) for one group, weighted by x², with the scale chosen
/// among 19 candidate grids (ggml's `make_qx_quants` with rmse_type 1 and no weights).
/// Writes `l` = code + nmax (all 0 for an all-zero group) and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·q and Σ w·q² over the group for one grid, w = x².
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let write = |iscale: f32, l: &mut [i8]| {
        for (li, &v) in l.iter_mut().zip(x) {
            *li = (nmax + code(iscale, v)) as i8;
        }
    };
    let iscale = -(nmax as f32) / max;
    write(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            write(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric codes in [−nmax, nmax) for one group, refined one code at a time (up to 5
/// passes) to maximize the x²-weighted fit (ggml's `make_q3_quants` with do_rmse).
/// Writes `l` = code + nmax (all 0 for an all-zero group) and returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*li);
            let mut slx = sumlx - w * v * old;
            if slx <= 0.0 || slx.is_nan() {
                continue;
            }
            let mut sl2 = suml2 - w * old * old;
            let q = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
            if q == i32::from(*li) {
                continue;
            }
            slx += w * v * q as f32;
            sl2 += w * q as f32 * q as f32;
            if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                *li = q as i8;
                sumlx = slx;
                suml2 = sl2;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// How [`make_qkx2_quants`] searches: codes 0..=nmax, candidate grids
/// (rmin + rdelta·i + nmax)/(max − min) for i in 0..=nstep, error |·| or squared.
struct Search {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

const Q2_K_SEARCH: Search = Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
const Q4_K_SEARCH: Search = Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
const Q5_K_SEARCH: Search = Search { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };

/// Asymmetric codes x ≈ scale·l − min for one group (at most 32 values), with the
/// weighted least-squares scale and min of the best candidate grid (ggml's
/// `make_qkx2_quants`). Writes `l` and returns (scale, min), min ≥ 0 (or −0).
fn make_qkx2_quants(s: &Search, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    // Each candidate grid starts from the best fit so far: `min` changes as it improves.
    let code = |iscale: f32, min: f32, v: f32| nearest_int(iscale * (v - min)).clamp(0, s.nmax) as u8;
    let error = |scale: f32, min: f32, l: &[u8]| {
        let mut e = 0.0f32;
        for ((&q, &v), &w) in l.iter().zip(x).zip(weights) {
            let diff = scale * f32::from(q) + min - v;
            e += w * if s.use_mad { diff.abs() } else { diff * diff };
        }
        e
    };
    let iscale = s.nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = code(iscale, min, v);
    }
    let mut best_error = error(scale, min, l);
    let mut aux = [0u8; 32];
    let aux = &mut aux[..x.len()];
    for is in 0..=s.nstep {
        let iscale = (s.rmin + s.rdelta * is as f32 + s.nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((a, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            *a = code(iscale, min, v);
            let q = f32::from(*a);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = error(this_scale, this_min, aux);
            if cur_error < best_error {
                l.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 2-bit codes four to a byte: in each half of 128, byte i holds codes i, i + 32,
/// i + 64, i + 96 from its low bits up.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (half, q) in l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (i, q) in q.iter_mut().enumerate() {
            *q = half[i] | (half[i + 32] << 2) | (half[i + 64] << 4) | (half[i + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The K-quants (super-blocks of 256).

/// Q2_K: 16 groups of 16 fitted by [`make_qkx2_quants`] (weights |x|), their scales and
/// mins quantized to 4 bits against the largest, then the codes redone on that grid.
fn q2_k(x: &[f32]) -> BlockQ2K {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; QK_K / 16], [0f32; QK_K / 16]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (xg, lg)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
        let mut weights = [0f32; 16];
        for (w, v) in weights.iter_mut().zip(xg) {
            *w = v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(&Q2_K_SEARCH, xg, &weights, lg);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut b = BlockQ2K::zeroed();
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (sc, &s) in b.scales.iter_mut().zip(&scales) {
            *sc = nearest_int(iscale * s) as u8;
        }
        b.d = fp16(max_scale / 15.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (sc, &m) in b.scales.iter_mut().zip(&mins) {
            *sc |= (nearest_int(iscale * m) << 4) as u8;
        }
        b.dmin = fp16(max_min / 15.0);
    }
    let (d_all, dmin_all) = (b.d.to_f32(), b.dmin.to_f32());
    for ((xg, lg), &sc) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).zip(&b.scales) {
        let d = d_all * f32::from(sc & 0x0f);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(sc >> 4);
        for (li, &v) in lg.iter_mut().zip(xg) {
            *li = nearest_int((v + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut b.qs);
    b
}

/// Q3_K's 6-bit scale of group j (biased by 32) from its packed 12 bytes.
fn q3_k_scale(scales: &[u8; 12], j: usize) -> i32 {
    let lo = if j < 8 { scales[j] & 0x0f } else { scales[j - 8] >> 4 };
    let hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(lo | (hi << 4)) - 32
}

/// Q3_K: 16 groups of 16 fitted by [`make_q3_quants`], signed scales quantized to 6 bits
/// against the one of largest magnitude, then the codes redone on that grid; the third
/// bit goes to `hmask`.
fn q3_k(x: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (s, (xg, lg)) in scales.iter_mut().zip(x.chunks_exact(16).zip(l.chunks_exact_mut(16))) {
        *s = make_q3_quants(4, xg, lg);
    }
    let (_, max_scale) = signed_absmax(&scales);
    let mut b = BlockQ3K::zeroed();
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            let q = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                b.scales[j] = q & 0x0f;
            } else {
                b.scales[j - 8] |= (q & 0x0f) << 4;
            }
            b.scales[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
        }
        b.d = fp16(1.0 / iscale);
    }
    let d_all = b.d.to_f32();
    for (j, (xg, lg)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
        let d = d_all * q3_k_scale(&b.scales, j) as f32;
        if d == 0.0 {
            continue;
        }
        for (li, &v) in lg.iter_mut().zip(xg) {
            *li = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // The high bit of code j goes to bit j/32 of hmask[j % 32].
    let mut low = [0u8; QK_K];
    for (j, (lo, &q)) in low.iter_mut().zip(&l).enumerate() {
        if q > 3 {
            b.hmask[j % 32] |= 1 << (j / 32);
            *lo = (q - 4) as u8;
        } else {
            *lo = q as u8;
        }
    }
    pack_2bit(&low, &mut b.qs);
    b
}

/// Sub-block j's 6-bit scale and min from the 12 packed bytes of Q4_K/Q5_K.
fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The inverse of [`get_scale_min_k4`], for j in order 0..8.
fn put_scale_min_k4(j: usize, q: &mut [u8; K_SCALE_SIZE], ls: u8, lm: u8) {
    if j < 4 {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
        q[j - 4] |= (ls >> 4) << 6;
        q[j] |= (lm >> 4) << 6;
    }
}

/// What Q4_K and Q5_K share: 8 groups of 32 fitted by [`make_qkx2_quants`] (weights
/// rms + |x|), scales and mins quantized to 6 bits against the largest, then the codes
/// redone on that grid. Returns the codes, packed scales, d and dmin.
fn fit_k4(x: &[f32], search: &Search) -> ([u8; QK_K], [u8; K_SCALE_SIZE], f16, f16) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; QK_K / 32], [0f32; QK_K / 32]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (xg, lg)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, v) in weights.iter_mut().zip(xg) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(search, xg, &weights, lg);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..QK_K / 32 {
        // ggml narrows to uint8 before capping (a negative wraps high, then caps at 63).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        put_scale_min_k4(j, &mut packed, ls, lm);
    }
    let (d, dmin) = (fp16(max_scale / 63.0), fp16(max_min / 63.0));
    let nmax = search.nmax;
    for (j, (xg, lg)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = d.to_f32() * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for (li, &v) in lg.iter_mut().zip(xg) {
            *li = nearest_int((v + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (l, packed, d, dmin)
}

/// Q4_K: 4-bit codes; in each 64, byte i holds codes i (low) and i + 32 (high).
fn q4_k(x: &[f32]) -> BlockQ4K {
    let (l, scales, d, dmin) = fit_k4(x, &Q4_K_SEARCH);
    let mut b = BlockQ4K { d, dmin, scales, qs: [0; QK_K / 2] };
    for (l64, q) in l.chunks_exact(64).zip(b.qs.chunks_exact_mut(32)) {
        for (i, q) in q.iter_mut().enumerate() {
            *q = l64[i] | (l64[i + 32] << 4);
        }
    }
    b
}

/// Q5_K: as Q4_K with 5-bit codes; the fifth bit of code n·64 + i (+ 32) goes to bit 2n
/// (2n + 1) of qh[i].
fn q5_k(x: &[f32]) -> BlockQ5K {
    let (l, scales, d, dmin) = fit_k4(x, &Q5_K_SEARCH);
    let mut b = BlockQ5K { d, dmin, scales, qh: [0; QK_K / 8], qs: [0; QK_K / 2] };
    for (n, (l64, q)) in l.chunks_exact(64).zip(b.qs.chunks_exact_mut(32)).enumerate() {
        for (i, q) in q.iter_mut().enumerate() {
            let (lo, hi) = (l64[i], l64[i + 32]);
            b.qh[i] |= ((lo >> 4) & 1) << (2 * n) | ((hi >> 4) & 1) << (2 * n + 1);
            *q = (lo & 0x0f) | ((hi & 0x0f) << 4);
        }
    }
    b
}

/// Q6_K: 16 groups of 16 fitted by [`make_qx_quants`], signed 8-bit scales against the
/// one of largest magnitude (÷ −128), then 6-bit codes redone on that grid.
fn q6_k(x: &[f32]) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (s, (xg, lg)) in scales.iter_mut().zip(x.chunks_exact(16).zip(l.chunks_exact_mut(16))) {
        *s = make_qx_quants(32, xg, lg);
    }
    let (max_abs, max_scale) = signed_absmax(&scales);
    let mut b = BlockQ6K::zeroed();
    if max_abs < GROUP_MAX_EPS {
        return b;
    }
    let iscale = -128.0 / max_scale;
    b.d = fp16(1.0 / iscale);
    for (sc, &s) in b.scales.iter_mut().zip(&scales) {
        *sc = nearest_int(iscale * s).min(127) as i8;
    }
    let d_all = b.d.to_f32();
    for ((xg, lg), &sc) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).zip(&b.scales) {
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        for (li, &v) in lg.iter_mut().zip(xg) {
            *li = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
        }
    }
    // In each 128: ql[i] holds codes i | i + 64 (low nibbles), ql[i + 32] codes i + 32 |
    // i + 96; qh[i] the top two bits of codes i, i + 32, i + 64, i + 96 from the low end.
    for ((l128, ql), qh) in l.chunks_exact(128).zip(b.ql.chunks_exact_mut(64)).zip(b.qh.chunks_exact_mut(32)) {
        for i in 0..32 {
            let q = [0, 32, 64, 96].map(|o| l128[i + o] as u8);
            ql[i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            ql[i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            qh[i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    b
}
