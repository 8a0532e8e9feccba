//! Causal self-attention with grouped-query heads over a KV cache.

/// q [n_tok, n_head, hd] for positions `pos0..pos0+n_tok`; k_cache, v_cache
/// [pos0+n_tok, n_head_kv, hd] (this batch's keys/values already appended).
/// Returns [n_tok, n_head·hd]. Head h reads kv head h / (n_head / n_head_kv).
pub fn attention_forward(q: &[f32], k_cache: &[f32], v_cache: &[f32], pos0: usize, n_head: usize, n_head_kv: usize, hd: usize) -> Vec<f32> {
    let n_tok = q.len() / (n_head * hd);
    let group = n_head / n_head_kv;
    let kv_w = n_head_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut scores = Vec::new();
    for t in 0..n_tok {
        let n_ctx = pos0 + t + 1; // causal: keys 0..=pos
        for h in 0..n_head {
            let kvh = h / group;
            let qh = &q[(t * n_head + h) * hd..][..hd];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for p in 0..n_ctx {
                let k = &k_cache[p * kv_w + kvh * hd..][..hd];
                let s = crate::compute::cpu::dot(qh, k) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(t * n_head + h) * hd..][..hd];
            for (p, s) in scores.iter().enumerate() {
                let v = &v_cache[p * kv_w + kvh * hd..][..hd];
                let w = s / sum;
                for (oi, vi) in o.iter_mut().zip(v) {
                    *oi += w * vi;
                }
            }
        }
    }
    out
}
