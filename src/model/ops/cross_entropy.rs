//! The output projection fused with cross-entropy, computed `chunk` rows at a time so the
//! full [n_tokens, n_vocab] logits never exist at once (one [chunk, n_vocab] block does).

use crate::compute::dense::{matmul, Layout, Real};

/// Per-row loss −log softmax(h·Wᵀ)[target] for h [n, d], W [n_vocab, d] (the output
/// matrix, dense), targets [n] (each < n_vocab).
pub fn cross_entropy_forward<T: Real>(h: &[T], w: &[T], targets: &[i32], d: usize, chunk: usize) -> Vec<f64> {
    let mut losses = Vec::with_capacity(targets.len());
    for_each_logit_row(h, w, targets, d, chunk, |row, t| losses.push(logsumexp(row) - row[t].f64v()));
    losses
}

/// The forward's per-row loss and whether the target is the row's arg-max logit (what
/// greedy decoding would pick; a tie counts as a hit only for the first maximal id).
pub fn cross_entropy_hits<T: Real>(h: &[T], w: &[T], targets: &[i32], d: usize, chunk: usize) -> Vec<(f64, bool)> {
    let mut out = Vec::with_capacity(targets.len());
    for_each_logit_row(h, w, targets, d, chunk, |row, t| {
        let argmax = row.iter().enumerate().fold(0, |best, (i, v)| if v.f64v() > row[best].f64v() { i } else { best });
        out.push((logsumexp(row) - row[t].f64v(), argmax == t));
    });
    out
}

/// Calls `f(logits row, target)` for each row of h·Wᵀ, `chunk` rows computed at once.
fn for_each_logit_row<T: Real>(h: &[T], w: &[T], targets: &[i32], d: usize, chunk: usize, mut f: impl FnMut(&[T], usize)) {
    let n_vocab = w.len() / d;
    let mut logits = Vec::new();
    for (hc, tc) in h.chunks(chunk * d).zip(targets.chunks(chunk)) {
        let c = tc.len();
        logits.resize(c * n_vocab, T::zero());
        matmul(&mut logits, hc, Layout::N, w, Layout::T, c, n_vocab, d, false);
        for (row, &t) in logits.chunks_exact(n_vocab).zip(tc) {
            f(row, t as usize);
        }
    }
}

/// dh [n, d] = Σ_rows dloss[row] · (softmax(h·Wᵀ) − onehot(target)) · W (W frozen).
pub fn cross_entropy_backward<T: Real>(h: &[T], w: &[T], targets: &[i32], dloss: &[T], d: usize, chunk: usize) -> Vec<T> {
    let n_vocab = w.len() / d;
    let mut dh = vec![T::zero(); h.len()];
    let mut logits = Vec::new();
    for ((hc, tc), (dc, dhc)) in h.chunks(chunk * d).zip(targets.chunks(chunk)).zip(dloss.chunks(chunk).zip(dh.chunks_mut(chunk * d))) {
        let c = tc.len();
        logits.resize(c * n_vocab, T::zero());
        matmul(&mut logits, hc, Layout::N, w, Layout::T, c, n_vocab, d, false);
        // logits → dlogits in place
        for ((row, &t), &g) in logits.chunks_exact_mut(n_vocab).zip(tc).zip(dc) {
            let lse = logsumexp(row);
            row.iter_mut().for_each(|v| *v = T::of((v.f64v() - lse).exp()) * g);
            row[t as usize] = row[t as usize] - g;
        }
        // dh = dlogits · W
        matmul(dhc, &logits, Layout::N, w, Layout::N, c, d, n_vocab, false);
    }
    dh
}

fn logsumexp<T: Real>(row: &[T]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64v()));
    max + row.iter().map(|v| (v.f64v() - max).exp()).sum::<f64>().ln()
}
