//! The one linear layer every projection goes through: y = x·Wᵀ + b + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ,
//! with W frozen in its block format and the LoRA factors of the active adapters.

use crate::adapter::LoraTensor;
use crate::compute::blocked;
use crate::compute::dense::{matmul, Layout, Real};
use crate::compute::{Backend, ComputeError};
use crate::model::precision::BaseMatrix;
use crate::model::weights::Weight;
use rayon::prelude::*;

/// One adapter's factors for one weight, and the rows of x it applies to: `segments`
/// (first row, end row, weight), each a run of one sequence's rows. In a batch of
/// sequences with different adapter sets each adapter covers only its sequences' rows.
pub struct RowLora<'a> {
    pub t: &'a LoraTensor,
    pub segments: Vec<(usize, usize, f32)>,
    /// Compact copies of the same factors ([`DecodeLora`]), read instead of `t`'s f32 ones
    /// by the few-rows path (decoding).
    pub decode: Option<&'a DecodeLora>,
}

/// A LoRA tensor's factors as decoding reads them: compact copies of the f32 factors a
/// [`LoraTensor`] holds (prompts of more than `FEW_ROWS` rows still read those), B laid
/// out in blocks of 16 rows ([`blocked`](crate::compute::blocked)) where exact.
pub enum DecodeLora {
    /// f16, half the f32 bytes; made only when every value is an f16 exactly (factors
    /// read from f16 files, edgelora's exports), so the products are bit for bit those of
    /// the f32 factors (`cpu::dot_f16`; `blocked::gemv_blocked` against `gemv_rows`).
    F16 { a: Vec<half::f16>, bt: Vec<half::f16> },
    /// B blocked in f32 (A read from the tensor), for factors that are not all f16s: the
    /// same values as the tensor's B, the products bit for bit those of `gemv_rows`.
    F32 { bt: Vec<f32> },
    /// int8, a quarter of the f32 bytes (half of f16), with one f32 scale per rank
    /// component — per row of A [r, n_in] and per column of B [n_out, r] — symmetric:
    /// q = round(v / s), s = max |v| / 127 over that row or column, so each factor is off
    /// by at most s / 2. Lossy: opted into (`NativeModel::set_decode_factors`).
    Int8 { a: Vec<i8>, a_scale: Vec<f32>, b: Vec<i8>, b_scale: Vec<f32> },
}

impl DecodeLora {
    /// `t`'s factors as f16, or `None` when one of them is not an f16 exactly.
    pub fn half(t: &LoraTensor) -> Option<DecodeLora> {
        let exact = |v: &[f32]| -> Option<Vec<half::f16>> {
            v.iter().map(|&x| Some(half::f16::from_f32(x)).filter(|h| h.to_f32().to_bits() == x.to_bits())).collect()
        };
        let b = exact(&t.b)?;
        Some(DecodeLora::F16 { a: exact(&t.a)?, bt: blocked::block(&b, b.len() / t.rank.max(1), t.rank) })
    }

    /// The exact copies of `t`: [`half`](Self::half) where the factors are f16s, else B
    /// blocked in f32.
    pub fn exact(t: &LoraTensor) -> DecodeLora {
        Self::half(t).unwrap_or_else(|| DecodeLora::F32 { bt: blocked::block(&t.b, t.b.len() / t.rank.max(1), t.rank) })
    }

    /// `t`'s factors as int8 with a scale per row of A and per column of B.
    pub fn int8(t: &LoraTensor) -> DecodeLora {
        let r = t.rank;
        let scale_of = |max: f32| if max > 0.0 && max.is_finite() { max / 127.0 } else { 0.0 };
        let q = |v: f32, s: f32| if s == 0.0 { 0 } else { (v / s).round().clamp(-127.0, 127.0) as i8 };
        let a_scale: Vec<f32> = t.a.chunks_exact(t.n_in.max(1)).map(|row| scale_of(row.iter().fold(0f32, |m, v| m.max(v.abs())))).collect();
        let a: Vec<i8> = t.a.chunks_exact(t.n_in.max(1)).zip(&a_scale).flat_map(|(row, &s)| row.iter().map(move |&v| q(v, s))).collect();
        let b_scale: Vec<f32> = (0..r).map(|j| scale_of(t.b.iter().skip(j).step_by(r.max(1)).fold(0f32, |m, v| m.max(v.abs())))).collect();
        let b: Vec<i8> = t.b.iter().enumerate().map(|(i, &v)| q(v, b_scale[i % r.max(1)])).collect();
        DecodeLora::Int8 { a, a_scale, b, b_scale }
    }

    /// Bytes of the copies.
    pub fn bytes(&self) -> usize {
        match self {
            DecodeLora::F16 { a, bt } => 2 * (a.len() + bt.len()),
            DecodeLora::F32 { bt } => 4 * bt.len(),
            DecodeLora::Int8 { a, a_scale, b, b_scale } => a.len() + b.len() + 4 * (a_scale.len() + b_scale.len()),
        }
    }
}

/// x [n, n_in] → y [n, n_out]. `loras`: (factors, weight) of each active adapter that
/// targets this weight, on every row; the effective scale is weight · factors.scale.
pub fn linear_forward(backend: &dyn Backend, x: &[f32], w: &Weight, bias: Option<&[f32]>, loras: &[(&LoraTensor, f32)]) -> Result<Vec<f32>, ComputeError> {
    let n = x.len() / w.n_in;
    let groups: Vec<RowLora> = loras.iter().map(|(t, s)| RowLora { t, segments: vec![(0, n, *s)], decode: None }).collect();
    linear_forward_rows(backend, x, w, bias, &groups)
}

/// [`linear_forward`] with each adapter on its own rows: the base product runs once over
/// all n rows; each adapter's B·(A·x) runs over the rows that use it, gathered into one
/// block (its factors read once for all of them), and is added back to those rows.
///
/// The adapters' products run beside the base product ([`rayon::join`]: on another
/// thread while the base product's row groups are shared out), not after it on one
/// thread; they are added to y in the same order as before, so the values do not change.
pub fn linear_forward_rows(backend: &dyn Backend, x: &[f32], w: &Weight, bias: Option<&[f32]>, loras: &[RowLora]) -> Result<Vec<f32>, ComputeError> {
    use crate::model::profile::time;
    let n = x.len() / w.n_in;
    let base = || time(|| format!("matmul {} ({})", w.t, rows_label(n)), || backend.matmul(w.t, w.bytes, w.n_out, w.n_in, x, n));
    let (y, parts) = if loras.is_empty() { (base(), Vec::new()) } else { rayon::join(base, || lora_parts(x, w, n, loras)) };
    let mut y = y?;
    add_bias_and_loras(&mut y, w, bias, parts);
    Ok(y)
}

/// Several linear layers of one input (q/k/v; gate/up): (weight, bias, adapters' rows)
/// each, as [`linear_forward_rows`] gives them, with the base products in one
/// [`Backend::matmul_shared`] call (the input prepared once, one parallel pass while
/// decoding). The weights share n_in.
pub fn linear_forward_shared(backend: &dyn Backend, x: &[f32], layers: &[(&Weight, Option<&[f32]>, &[RowLora])]) -> Result<Vec<Vec<f32>>, ComputeError> {
    use crate::model::profile::time;
    let Some(n_in) = layers.first().map(|(w, _, _)| w.n_in) else { return Ok(Vec::new()) };
    if let Some((w, _, _)) = layers.iter().find(|(w, _, _)| w.n_in != n_in) {
        return Err(ComputeError::Shape(format!("{} takes {} inputs, not the {n_in} of {}", w.name, w.n_in, layers[0].0.name)));
    }
    let n = x.len() / n_in;
    let ws: Vec<crate::compute::MatrixRef> = layers.iter().map(|(w, _, _)| crate::compute::MatrixRef { t: w.t, bytes: w.bytes, n_out: w.n_out }).collect();
    // The label is built only when the profile is on (its closure runs then).
    let label = || {
        let mut types: Vec<String> = layers.iter().map(|(w, _, _)| w.t.to_string()).collect();
        types.dedup();
        format!("matmul {} ({}, {} weights)", types.join("+"), rows_label(n), layers.len())
    };
    // The adapters' products beside the base products, as in [`linear_forward_rows`].
    let base = || time(label, || backend.matmul_shared(&ws, n_in, x, n));
    let loras = || layers.iter().map(|(w, _, loras)| lora_parts(x, w, n, loras)).collect::<Vec<_>>();
    let (ys, parts) = if layers.iter().all(|(_, _, l)| l.is_empty()) { (base(), layers.iter().map(|_| Vec::new()).collect()) } else { rayon::join(base, loras) };
    let mut ys = ys?;
    for ((y, (w, bias, _)), parts) in ys.iter_mut().zip(layers).zip(parts) {
        add_bias_and_loras(y, w, *bias, parts);
    }
    Ok(ys)
}

/// The profile's row-count classes.
fn rows_label(n: usize) -> &'static str {
    if n == 1 {
        "1 row"
    } else if n <= 48 {
        "2–48 rows"
    } else {
        ">48 rows"
    }
}

/// Each adapter's contribution over its rows (rows of y with their scales, values),
/// adapters in parallel (in a batch each sequence may bring its own).
fn lora_parts(x: &[f32], w: &Weight, n: usize, loras: &[RowLora]) -> Vec<(Vec<(usize, f32)>, Vec<f32>)> {
    use crate::model::profile::time;
    if loras.is_empty() {
        return Vec::new();
    }
    time(|| "lora B·(A·x)".into(), || if loras.len() > 1 { loras.par_iter().map(|g| lora_rows(x, w, n, g)).collect() } else { loras.iter().map(|g| lora_rows(x, w, n, g)).collect() })
}

/// The bytes of A and of this weight's part of B that decoding reads for `g`.
fn factor_bytes<'a>(g: &RowLora<'a>, w: &Weight) -> (&'a [u8], &'a [u8]) {
    let t = g.t;
    let rank_rows = blocked::rows_range(t.rank, w.row0, w.row0 + w.n_out);
    match g.decode {
        Some(DecodeLora::F16 { a, bt }) => (bytemuck::cast_slice(a), bytemuck::cast_slice(&bt[rank_rows])),
        Some(DecodeLora::F32 { bt }) => (bytemuck::cast_slice(&t.a), bytemuck::cast_slice(&bt[rank_rows])),
        Some(DecodeLora::Int8 { a, b, .. }) => (bytemuck::cast_slice(a), bytemuck::cast_slice(w.b_rows(b, t.rank))),
        None => (bytemuck::cast_slice(&t.a), bytemuck::cast_slice(w.b_rows(&t.b, t.rank))),
    }
}

/// y [n, n_out] (the base product) += bias, then each adapter's part ([`lora_parts`]) in
/// adapter order.
fn add_bias_and_loras(y: &mut [f32], w: &Weight, bias: Option<&[f32]>, parts: Vec<(Vec<(usize, f32)>, Vec<f32>)>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(w.n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    for (rows, yg) in parts {
        for (ygr, &(r, _)) in yg.chunks_exact(w.n_out).zip(&rows) {
            y[r * w.n_out..(r + 1) * w.n_out].iter_mut().zip(ygr).for_each(|(a, b)| *a += b);
        }
    }
}

/// One adapter's s·(x·Aᵀ)·Bᵀ over the rows it covers: (each row of y it goes to with its
/// scale, yg [m, n_out]).
fn lora_rows(x: &[f32], w: &Weight, n: usize, g: &RowLora) -> (Vec<(usize, f32)>, Vec<f32>) {
    let t = g.t;
    // The rows it covers: all of x as is, else gathered (xg [m, n_in]).
    let whole = matches!(g.segments.as_slice(), [(0, end, _)] if *end == n);
    let gathered: Vec<f32>;
    let xg: &[f32] = if whole {
        x
    } else {
        gathered = g.segments.iter().flat_map(|&(a, b, _)| x[a * w.n_in..b * w.n_in].iter().copied()).collect();
        &gathered
    };
    let m = xg.len() / w.n_in;
    // This weight's rows of B (all of it unless the tensor is fused).
    let b = w.b_rows(&t.b, t.rank);
    let rows: Vec<(usize, f32)> = g.segments.iter().flat_map(|&(a, b, s)| (a..b).map(move |r| (r, s * t.scale))).collect();
    // ax [m, r] = s · xg · Aᵀ;  yg [m, n_out] = ax · Bᵀ
    let mut ax = vec![0f32; m * t.rank];
    let mut yg = vec![0f32; m * w.n_out];
    if m <= crate::compute::cpu::FEW_ROWS {
        // Decoding, short prompts: rows of dot products (a GEMM call costs more to set up
        // here), on the compact copies where there are some.
        use crate::compute::cpu::{dot_f16, dot_i8, gemv_short_i8};
        let n_in = w.n_in;
        // The factors stream from memory (one sequence's adapter is read for its one
        // row): A's row j + 2 and a sixteenth of B are asked for before A's row j meets x,
        // so that the loads find them on their way (all at once, they would fill the
        // core's miss buffers and stall the products behind them).
        let (a_bytes, b_bytes) = factor_bytes(g, w);
        let (a_row, b_part) = (a_bytes.len() / t.rank.max(1), b_bytes.len().div_ceil(t.rank.max(1)).next_multiple_of(64));
        let part = |v: &'_ [u8], i: usize, len: usize| -> std::ops::Range<usize> { (i * len).min(v.len())..((i + 1) * len).min(v.len()) };
        use crate::compute::cpu::prefetch;
        prefetch(&a_bytes[part(a_bytes, 0, 2 * a_row)]);
        for (i, ((axr, xr), &(_, s))) in ax.chunks_exact_mut(t.rank).zip(xg.chunks_exact(n_in)).zip(&rows).enumerate() {
            for (j, v) in axr.iter_mut().enumerate() {
                if i == 0 {
                    prefetch(&a_bytes[part(a_bytes, j + 2, a_row)]);
                    prefetch(&b_bytes[part(b_bytes, j, b_part)]);
                }
                let at = j * n_in..(j + 1) * n_in;
                *v = match g.decode {
                    Some(DecodeLora::F16 { a, .. }) => s * dot_f16(&a[at], xr),
                    Some(DecodeLora::Int8 { a, a_scale, .. }) => s * (a_scale[j] * dot_i8(&a[at], xr)),
                    Some(DecodeLora::F32 { .. }) | None => s * f32::dot(&t.a[at], xr),
                };
            }
        }
        let mut scaled = Vec::new();
        for (axr, ygr) in ax.chunks_exact(t.rank).zip(yg.chunks_exact_mut(w.n_out)) {
            match g.decode {
                Some(DecodeLora::F16 { bt, .. }) => blocked::gemv_blocked(bt, w.row0, axr, ygr),
                Some(DecodeLora::F32 { bt }) => blocked::gemv_blocked(bt, w.row0, axr, ygr),
                Some(DecodeLora::Int8 { b, b_scale, .. }) => {
                    // Σ_j q[o, j]·(s_j·ax_j): B's column scales folded into the short vector.
                    scaled.clear();
                    scaled.extend(axr.iter().zip(b_scale).map(|(a, s)| a * s));
                    gemv_short_i8(w.b_rows(b, t.rank), &scaled, ygr)
                }
                None => blocked::gemv_rows(b, axr, ygr),
            }
        }
        return (rows, yg);
    }
    matmul(&mut ax, xg, Layout::N, &t.a, Layout::T, m, t.rank, w.n_in, false);
    for (axr, &(_, s)) in ax.chunks_exact_mut(t.rank).zip(&rows) {
        axr.iter_mut().for_each(|v| *v *= s);
    }
    matmul(&mut yg, &ax, Layout::N, b, Layout::T, m, w.n_out, t.rank, false);
    (rows, yg)
}

/// One linear layer's trainable LoRA factors: A [r, n_in], B [n_out, r], scale s.
#[derive(Clone, Copy)]
pub struct LoraRef<'a, T> {
    pub a: &'a [T],
    pub b: &'a [T],
    pub rank: usize,
    pub scale: T,
}

/// Training forward on a dense (dequantized, frozen) W [n_out, n_in]:
/// y [n, n_out] = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ. Returns (y, ax [n, r]); backward reads ax.
pub fn lora_linear_forward<T: Real>(x: &[T], w: &BaseMatrix<T>, n_in: usize, n_out: usize, bias: Option<&[T]>, lora: Option<LoraRef<T>>) -> (Vec<T>, Vec<T>) {
    let n = x.len() / n_in;
    let mut y = vec![T::zero(); n * n_out];
    w.xwt(&mut y, x, n, n_in, n_out);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += *b);
        }
    }
    let mut ax = Vec::new();
    if let Some(l) = lora {
        // ax [n, r] = x · Aᵀ
        ax = vec![T::zero(); n * l.rank];
        matmul(&mut ax, x, Layout::N, l.a, Layout::T, n, l.rank, n_in, false);
        // y += s · ax · Bᵀ
        let sax: Vec<T> = ax.iter().map(|v| *v * l.scale).collect();
        matmul(&mut y, &sax, Layout::N, l.b, Layout::T, n, n_out, l.rank, true);
    }
    (y, ax)
}

/// Backward of [`lora_linear_forward`] (W and bias frozen: no dW, no db):
///   dx [n, n_in] += dy·W + s·(dy·B)·A    (when `dx` is given)
///   dB [n_out, r] += s·dyᵀ·ax
///   dA [r, n_in]  += s·(dy·B)ᵀ·x
pub fn lora_linear_backward<T: Real>(dx: Option<&mut [T]>, dy: &[T], x: &[T], w: &BaseMatrix<T>, n_in: usize, n_out: usize, lora: Option<(LoraRef<T>, &[T], &mut [T], &mut [T])>) {
    let n = dy.len() / n_out;
    if let Some((l, ax, da, db)) = lora {
        // dyb [n, r] = s · dy · B
        let mut dyb_s = vec![T::zero(); n * l.rank];
        matmul(&mut dyb_s, dy, Layout::N, l.b, Layout::N, n, l.rank, n_out, false);
        dyb_s.iter_mut().for_each(|v| *v = *v * l.scale);
        // dB += s · dyᵀ · ax
        let sax: Vec<T> = ax.iter().map(|v| *v * l.scale).collect();
        matmul(db, dy, Layout::T, &sax, Layout::N, n_out, l.rank, n, true);
        // dA += (s · dy · B)ᵀ · x
        matmul(da, &dyb_s, Layout::T, x, Layout::N, l.rank, n_in, n, true);
        if let Some(dx) = dx {
            w.add_dyw(dx, dy, n, n_in, n_out);
            matmul(dx, &dyb_s, Layout::N, l.a, Layout::N, n, n_in, l.rank, true);
        }
        return;
    }
    if let Some(dx) = dx {
        w.add_dyw(dx, dy, n, n_in, n_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::FactorDtype;
    use crate::compute::cpu::Cpu;
    use crate::gguf::GgmlType;
    use rand::{Rng, SeedableRng};

    fn tensor(rank: usize, n_in: usize, n_out: usize, exact: bool) -> LoraTensor {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v = |n: usize| -> Vec<f32> {
            (0..n).map(|_| {
                let x: f32 = r.random_range(-0.5..0.5);
                if exact { half::f16::from_f32(x).to_f32() } else { x }
            }).collect()
        };
        LoraTensor { rank, n_in, n_out, a: v(rank * n_in), b: v(n_out * rank), scale: 2.0, dtype: FactorDtype::F16 }
    }

    #[test]
    fn the_decode_copies_give_the_f32_factors_results_to_the_bit() {
        let (n_in, n_out) = (64, 40);
        let w_vals: Vec<f32> = (0..n_in * n_out).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
        let w = Weight::whole("blk.0.attn_q.weight", GgmlType::F32, bytemuck::cast_slice(&w_vals), n_in, n_out);
        // Rows 5..25 of the same tensor, as a fused tensor's part (B's rows from 5 on).
        let row_bytes = 4 * n_in;
        let part = Weight { n_out: 20, row0: 5, bytes: &w.bytes[5 * row_bytes..25 * row_bytes], ..w };
        let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for rank in [8, 16, 5] {
            for exact in [true, false] {
                let t = tensor(rank, n_in, n_out, exact);
                let copy = DecodeLora::exact(&t);
                // B in blocks of 16 rows (40 → 48): f16 where every factor is one, else f32.
                match &copy {
                    DecodeLora::F16 { .. } => assert!(exact && copy.bytes() == 2 * (t.a.len() + 48 * rank)),
                    DecodeLora::F32 { .. } => assert!(!exact && copy.bytes() == 4 * 48 * rank),
                    DecodeLora::Int8 { .. } => panic!("int8 copy for exact factors"),
                }
                for n in [1, 3] {
                    let x: Vec<f32> = (0..n * n_in).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
                    for w in [&w, &part] {
                        let with = linear_forward_rows(&Cpu, &x, w, None, &[RowLora { t: &t, segments: vec![(0, n, 0.5)], decode: Some(&copy) }]).unwrap();
                        let without = linear_forward_rows(&Cpu, &x, w, None, &[RowLora { t: &t, segments: vec![(0, n, 0.5)], decode: None }]).unwrap();
                        assert_eq!(bits(&with), bits(&without), "rank {rank}, exact {exact}, {n} rows, rows from {}", w.row0);
                        let base = linear_forward_rows(&Cpu, &x, w, None, &[]).unwrap();
                        assert_ne!(with, base, "the adapter changed nothing");
                    }
                }
            }
        }
        // Factors that are not all f16 values get no f16 copy.
        assert!(DecodeLora::half(&tensor(8, n_in, n_out, false)).is_none());
    }

    #[test]
    fn the_int8_copies_stay_within_their_rounding_bound_of_the_f32_factors() {
        // The LoRA part of y (with − without adapter), int8 against f32, row by row: each
        // factor is off by at most half its scale step, so the part is off by at most
        // Σ_j (|ax_j|·δB_j + |A_j|-side error) — bounded here by its first-order terms.
        let (n_in, n_out) = (64, 40);
        let w_vals: Vec<f32> = (0..n_in * n_out).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
        let w = Weight::whole("blk.0.attn_q.weight", GgmlType::F32, bytemuck::cast_slice(&w_vals), n_in, n_out);
        for rank in [8, 16, 5] {
            let t = tensor(rank, n_in, n_out, false);
            let q = DecodeLora::int8(&t);
            assert_eq!(q.bytes(), t.a.len() + t.b.len() + 4 * 2 * rank);
            let DecodeLora::Int8 { a, a_scale, b, b_scale } = &q else { panic!("not int8") };
            // Every factor within half a step of its row's (A) or column's (B) scale.
            for (i, (&qa, &v)) in a.iter().zip(&t.a).enumerate() {
                assert!((f32::from(qa) * a_scale[i / n_in] - v).abs() <= a_scale[i / n_in] * 0.5 + 1e-7, "A[{i}]");
            }
            for (i, (&qb, &v)) in b.iter().zip(&t.b).enumerate() {
                assert!((f32::from(qb) * b_scale[i % rank] - v).abs() <= b_scale[i % rank] * 0.5 + 1e-7, "B[{i}]");
            }
            let x: Vec<f32> = (0..n_in).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
            let base = linear_forward_rows(&Cpu, &x, &w, None, &[]).unwrap();
            let exact = linear_forward_rows(&Cpu, &x, &w, None, &[RowLora { t: &t, segments: vec![(0, 1, 0.5)], decode: None }]).unwrap();
            let int8 = linear_forward_rows(&Cpu, &x, &w, None, &[RowLora { t: &t, segments: vec![(0, 1, 0.5)], decode: Some(&q) }]).unwrap();
            let part = |y: &[f32]| -> Vec<f32> { y.iter().zip(&base).map(|(y, b)| y - b).collect() };
            let (pe, pq) = (part(&exact), part(&int8));
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let diff: Vec<f32> = pe.iter().zip(&pq).map(|(a, b)| a - b).collect();
            let rel = norm(&diff) / norm(&pe);
            // Uniform factors in ±0.5: a step is ≈ 1/254 of the largest, the relative error
            // of the product ≈ 1% at most (≈ 0.3% typical).
            assert!(rel < 0.01, "rank {rank}: relative error of the LoRA part {rel}");
            assert!(rel > 0.0, "rank {rank}: int8 copies not read");
        }
        // All-zero factors (a fresh B) quantize to zero, no NaN.
        let mut z = tensor(8, n_in, n_out, false);
        z.b.iter_mut().for_each(|v| *v = 0.0);
        let DecodeLora::Int8 { b, b_scale, .. } = DecodeLora::int8(&z) else { panic!("not int8") };
        assert!(b.iter().all(|&v| v == 0) && b_scale.iter().all(|&s| s == 0.0));
    }
}
