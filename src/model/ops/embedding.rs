//! Token embedding lookup.

use crate::compute::dense::Real;
use crate::model::weights::Weight;
use crate::quant;

/// out [n_tok, n_embd] = rows `tokens` of the embedding matrix [n_vocab, n_embd].
pub fn embedding_forward(tokens: &[i32], table: &Weight) -> Result<Vec<f32>, quant::QuantError> {
    let row_bytes = table.t.bytes_for(table.n_in as u64).expect("checked at load") as usize;
    let mut out = vec![0f32; tokens.len() * table.n_in];
    for (row, &t) in out.chunks_exact_mut(table.n_in).zip(tokens) {
        let start = t as usize * row_bytes;
        quant::dequantize(table.t, &table.bytes[start..start + row_bytes], row)?;
    }
    Ok(out)
}

/// dtable [n_vocab, n_embd] += scatter of dout [n_tok, n_embd] to rows `tokens`. The
/// trainer keeps the table frozen and never calls it; it completes the op's pair (and is
/// what a trainable embedding would use).
pub fn embedding_backward<T: Real>(dtable: &mut [T], dout: &[T], tokens: &[i32], n_embd: usize) {
    for (row, &t) in dout.chunks_exact(n_embd).zip(tokens) {
        let dst = &mut dtable[t as usize * n_embd..][..n_embd];
        dst.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
    }
}
