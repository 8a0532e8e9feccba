//! Causal self-attention with grouped-query heads: o = softmax(q·kᵀ/√hd) · v, head h
//! reading kv head h / (n_head / n_head_kv).

use rayon::prelude::*;

use crate::compute::dense::Real;

/// Head counts of the attention, and its window.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Sliding window: a query at position p sees keys p − window < j ≤ p (gemma3's local
    /// layers; llama.cpp's standard SWA); None = every earlier key.
    pub window: Option<usize>,
    /// Scores are q·k times this (1/√head_dim for every model but Gemma 3 27B).
    pub scale: f64,
}

/// q [n_tok, n_head, hd] for positions `pos0..pos0+n_tok`; k_cache, v_cache
/// [pos0+n_tok, n_head_kv, hd] (this batch's keys/values already appended).
/// Returns o [n_tok, n_head·hd]. With `probs`, also the attention weights
/// [n_tok, n_head, pos0+n_tok] (zero past each token's causal limit and before its
/// window), which backward reads.
pub fn attention_forward<T: Real>(q: &[T], k_cache: &[T], v_cache: &[T], pos0: usize, hs: Heads, probs: Option<&mut Vec<T>>) -> Vec<T> {
    let Heads { n_head, n_head_kv, head_dim: hd, window, scale } = hs;
    let n_tok = q.len() / (n_head * hd);
    let n_all = pos0 + n_tok;
    let group = n_head / n_head_kv;
    let kv_w = n_head_kv * hd;
    let scale = T::of(scale);
    let mut out = vec![T::zero(); q.len()];
    // One (token, head) pair: its output o [hd] and, when kept, its weights row [n_all].
    let head = |scores: &mut Vec<T>, i: usize, o: &mut [T], pr: Option<&mut [T]>| {
        let (t, h) = (i / n_head, i % n_head);
        let n_ctx = pos0 + t + 1; // causal: keys ..=pos
        let lo = window.map_or(0, |w| n_ctx.saturating_sub(w)); // and within the window
        attend(&q[(t * n_head + h) * hd..][..hd], k_cache, v_cache, (h / group) * hd, kv_w, lo..n_ctx, scale, scores, o);
        if let Some(pr) = pr {
            pr[lo..n_ctx].copy_from_slice(scores);
        }
    };
    // Pairs in parallel, each computed alone (the same values on any number of threads);
    // at least ~64k products per task.
    let min_len = (1 << 16) / (2 * n_all * hd).max(1);
    match probs {
        Some(p) => {
            p.clear();
            p.resize(n_tok * n_head * n_all, T::zero());
            out.par_chunks_mut(hd).zip(p.par_chunks_mut(n_all)).enumerate().with_min_len(min_len.max(1)).for_each_init(|| Vec::with_capacity(n_all), |sc, (i, (o, pr))| head(sc, i, o, Some(pr)));
        }
        None => out.par_chunks_mut(hd).enumerate().with_min_len(min_len.max(1)).for_each_init(|| Vec::with_capacity(n_all), |sc, (i, o)| head(sc, i, o, None)),
    }
    out
}

/// One query head qh [hd] over keys `keys` of a cache (k, v [.., kv_w], this head's kv
/// columns at `kv_off`): o += softmax(qh·kᵀ·scale)·v, the weights left in `scores`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend<T: Real>(qh: &[T], k_cache: &[T], v_cache: &[T], kv_off: usize, kv_w: usize, keys: std::ops::Range<usize>, scale: T, scores: &mut Vec<T>, o: &mut [T]) {
    let hd = qh.len();
    scores.clear();
    #[cfg(target_arch = "x86_64")]
    if let (Some(q), Some(k), Some(v), true) = (T::as_f32(qh), T::as_f32(k_cache), T::as_f32(v_cache), x86::usable(hd)) {
        let (scale, o) = (T::as_f32(std::slice::from_ref(&scale)).expect("f32 like q")[0], T::as_f32_mut(o).expect("f32 like q"));
        // SAFETY: AVX-512F and hd a multiple of 16 up to 128 (`usable`).
        unsafe { x86::attend(q, k, v, kv_off, kv_w, keys, scale, |s| scores.push(T::of_f32(s)), o) };
        return;
    }
    let mut max = T::neg_infinity();
    for p in keys.clone() {
        let s = T::dot(qh, &k_cache[p * kv_w + kv_off..][..hd]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = T::zero();
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s = *s / sum);
    for (p, &w) in keys.zip(scores.iter()) {
        let v = &v_cache[p * kv_w + kv_off..][..hd];
        o.iter_mut().zip(v).for_each(|(oi, vi)| *oi += w * *vi);
    }
}

/// [`attend`] for f32 heads of up to 128 (a multiple of 16) on AVX-512: a score is four
/// (hd/16) fused multiply-adds and one lane sum, the output rows held in registers over
/// the keys. Another order of operations than the generic loop (rounding only).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn usable(hd: usize) -> bool {
        static AVX512: OnceLock<bool> = OnceLock::new();
        hd.is_multiple_of(16) && (16..=128).contains(&hd) && *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// SAFETY: AVX-512F; hd = q.len() as [`usable`] says; every key row of k and v holds hd
    /// values at kv_off.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend(q: &[f32], k: &[f32], v: &[f32], kv_off: usize, kv_w: usize, keys: std::ops::Range<usize>, scale: f32, mut push: impl FnMut(f32), o: &mut [f32]) {
        let n = q.len() / 16;
        assert!(keys.end * kv_w <= k.len() && keys.end * kv_w <= v.len() && kv_off + 16 * n <= kv_w && o.len() == 16 * n);
        let mut qv = [_mm512_setzero_ps(); 8];
        for (i, x) in qv.iter_mut().take(n).enumerate() {
            // SAFETY: 16 floats of q at 16i < hd.
            *x = unsafe { _mm512_loadu_ps(q.as_ptr().add(16 * i)) };
        }
        let mut scores = Vec::with_capacity(keys.len());
        let mut max = f32::NEG_INFINITY;
        for p in keys.clone() {
            let row = p * kv_w + kv_off;
            let mut acc = _mm512_setzero_ps();
            for (i, x) in qv.iter().take(n).enumerate() {
                // SAFETY: row p's hd values (asserted).
                acc = _mm512_fmadd_ps(*x, unsafe { _mm512_loadu_ps(k.as_ptr().add(row + 16 * i)) }, acc);
            }
            let s = _mm512_reduce_add_ps(acc) * scale;
            max = max.max(s);
            scores.push(s);
        }
        scores.iter_mut().for_each(|s| *s -= max);
        crate::compute::vexp::exp_in_place(&mut scores);
        let sum: f32 = scores.iter().sum();
        let mut ov = [_mm512_setzero_ps(); 8];
        for (i, x) in ov.iter_mut().take(n).enumerate() {
            // SAFETY: 16 floats of o at 16i.
            *x = unsafe { _mm512_loadu_ps(o.as_ptr().add(16 * i)) };
        }
        for (p, s) in keys.zip(scores.iter_mut()) {
            *s /= sum;
            push(*s);
            let (w, row) = (_mm512_set1_ps(*s), p * kv_w + kv_off);
            for (i, x) in ov.iter_mut().take(n).enumerate() {
                // SAFETY: row p's hd values (asserted).
                *x = _mm512_fmadd_ps(w, unsafe { _mm512_loadu_ps(v.as_ptr().add(row + 16 * i)) }, *x);
            }
        }
        for (i, x) in ov.iter().take(n).enumerate() {
            // SAFETY: 16 floats of o at 16i.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * i), *x) };
        }
    }
}

/// Backward of [`attention_forward`]: given do [n, n_head·hd] and the forward's q, k, v
/// and probs, returns (dq [n, n_head·hd], dk, dv [pos0+n, n_head_kv·hd]). k and v may hold
/// pos0 = rows(k) − n earlier keys (a shared prefix) before the queries' own.
///   dv[p] += P[t,p]·do[t];  dP[t,p] = do[t]·v[p];  dS = P ⊙ (dP − Σₚ P·dP);
///   dq[t] += dS[t,p]·k[p]/√hd;  dk[p] += dS[t,p]·q[t]/√hd.
pub fn attention_backward<T: Real>(dout: &[T], q: &[T], k: &[T], v: &[T], probs: &[T], hs: Heads) -> (Vec<T>, Vec<T>, Vec<T>) {
    // The window needs nothing here: probs are zero outside it.
    let Heads { n_head, n_head_kv, head_dim: hd, scale, .. } = hs;
    let n = q.len() / (n_head * hd);
    let group = n_head / n_head_kv;
    let kv_w = n_head_kv * hd;
    let n_all = k.len() / kv_w;
    let pos0 = n_all - n;
    let scale = T::of(scale);
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    let mut ds = Vec::with_capacity(n_all);
    for t in 0..n {
        for h in 0..n_head {
            let kvh = h / group;
            let p_row = &probs[(t * n_head + h) * n_all..][..pos0 + t + 1];
            let do_h = &dout[(t * n_head + h) * hd..][..hd];
            ds.clear();
            let mut sum = T::zero();
            for (p, &w) in p_row.iter().enumerate() {
                let off = p * kv_w + kvh * hd;
                dv[off..off + hd].iter_mut().zip(do_h).for_each(|(a, b)| *a += w * *b);
                let dp = T::dot(do_h, &v[off..off + hd]);
                sum += w * dp;
                ds.push(dp);
            }
            let q_h = &q[(t * n_head + h) * hd..][..hd];
            let dq_h = &mut dq[(t * n_head + h) * hd..][..hd];
            for (p, (&w, dp)) in p_row.iter().zip(&ds).enumerate() {
                let g = w * (*dp - sum) * scale;
                let off = p * kv_w + kvh * hd;
                dq_h.iter_mut().zip(&k[off..off + hd]).for_each(|(a, b)| *a += g * *b);
                dk[off..off + hd].iter_mut().zip(q_h).for_each(|(a, b)| *a += g * *b);
            }
        }
    }
    (dq, dk, dv)
}

/// [start, end) rows of sequences of `lens` rows packed end to end.
pub fn packed_ranges(lens: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
    let mut at = 0;
    lens.into_iter()
        .map(|n| {
            at += n;
            (at - n, at)
        })
        .collect()
}

/// The keys (or values) a segment attends over: its own rows, after the shared prefix's
/// rows when it continues one.
fn with_prefix<T: Real>(x: &[T], w: usize, prefix: usize, (s, e): (usize, usize)) -> std::borrow::Cow<'_, [T]> {
    if prefix == 0 || s == 0 {
        std::borrow::Cow::Borrowed(&x[s * w..e * w])
    } else {
        std::borrow::Cow::Owned([&x[..prefix * w], &x[s * w..e * w]].concat())
    }
}

/// The row segments of a packed batch: the shared prefix (rows 0..prefix) when there is
/// one, then the sequences, which must tile the rows after it in order.
fn segments(prefix: usize, ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    debug_assert!(ranges.iter().scan(prefix, |at, &(s, e)| { let ok = s == *at && e > s; *at = e; Some(ok) }).all(|ok| ok), "ranges must tile the rows after the prefix");
    (prefix > 0).then_some((0, prefix)).into_iter().chain(ranges.iter().copied()).collect()
}

/// Attention of sequences packed end to end (positions from 0, no cache): q [rows,
/// n_head·hd], k, v [rows, n_head_kv·hd]. With `prefix` > 0 the first `prefix` rows are a
/// prefix every sequence shares (computed once: a batch whose examples open with the same
/// system prompt and instruction): it attends over itself, and each sequence over the
/// prefix and then itself, exactly as if each held its own copy. `ranges` are the
/// sequences' rows after the prefix ([`packed_ranges`], offset by `prefix`). Returns o
/// [rows, n_head·hd] and, with `keep_probs`, each segment's attention weights (the prefix
/// first; for [`packed_attention_backward`]); segments in parallel.
pub fn packed_attention_forward<T: Real>(q: &[T], k: &[T], v: &[T], prefix: usize, ranges: &[(usize, usize)], hs: Heads, keep_probs: bool) -> (Vec<T>, Vec<Vec<T>>) {
    let (qw, kw) = (hs.n_head * hs.head_dim, hs.n_head_kv * hs.head_dim);
    let segs = segments(prefix, ranges);
    let per_seq: Vec<(Vec<T>, Vec<T>)> = segs
        .par_iter()
        .map(|&(s, e)| {
            let mut probs = Vec::new();
            let (kc, vc) = (with_prefix(k, kw, prefix, (s, e)), with_prefix(v, kw, prefix, (s, e)));
            let pos0 = kc.len() / kw - (e - s);
            let o = attention_forward(&q[s * qw..e * qw], &kc, &vc, pos0, hs, keep_probs.then_some(&mut probs));
            (o, probs)
        })
        .collect();
    let mut o = Vec::with_capacity(q.len());
    let mut probs = Vec::with_capacity(if keep_probs { segs.len() } else { 0 });
    for (seq_o, p) in per_seq {
        o.extend_from_slice(&seq_o);
        if keep_probs {
            probs.push(p);
        }
    }
    (o, probs)
}

/// Backward of [`packed_attention_forward`]: given do [rows, n_head·hd] and the forward's
/// q, k, v and per-segment probs, returns (dq, dk, dv) packed as q, k, v. The shared
/// prefix's dk and dv are its own backward's plus every sequence's share, added in
/// sequence order (deterministic).
pub fn packed_attention_backward<T: Real>(dout: &[T], q: &[T], k: &[T], v: &[T], probs: &[Vec<T>], prefix: usize, ranges: &[(usize, usize)], hs: Heads) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (qw, kw) = (hs.n_head * hs.head_dim, hs.n_head_kv * hs.head_dim);
    let segs = segments(prefix, ranges);
    let per_seq: Vec<(Vec<T>, Vec<T>, Vec<T>)> = segs
        .par_iter()
        .zip(probs)
        .map(|(&(s, e), p)| attention_backward(&dout[s * qw..e * qw], &q[s * qw..e * qw], &with_prefix(k, kw, prefix, (s, e)), &with_prefix(v, kw, prefix, (s, e)), p, hs))
        .collect();
    let (mut dq, mut dk, mut dv) = (Vec::with_capacity(q.len()), Vec::with_capacity(k.len()), Vec::with_capacity(v.len()));
    for (i, (q, k, v)) in per_seq.into_iter().enumerate() {
        dq.extend_from_slice(&q);
        // A sequence after a shared prefix: its first rows of dk/dv are the prefix's.
        let shared = if prefix > 0 && i > 0 { prefix * kw } else { 0 };
        dk[..shared].iter_mut().zip(&k[..shared]).for_each(|(a, b)| *a += *b);
        dv[..shared].iter_mut().zip(&v[..shared]).for_each(|(a, b)| *a += *b);
        dk.extend_from_slice(&k[shared..]);
        dv.extend_from_slice(&v[shared..]);
    }
    (dq, dk, dv)
}
