//! Products of a quantized W with a few input rows (a batch of decoding sequences):
//! W is dequantized one tile of `TILE` rows at a time into a buffer that stays in cache,
//! and each tile meets every x row in a register-blocked kernel (4 rows of W × 4 rows of
//! x per pass, 8 lanes), so W's bytes are read and decoded once per call whatever the
//! number of x rows, and no W-sized buffer is written. Tiles run in parallel.
//!
//! The kernel body is one generic function compiled three times: for AVX-512F, for
//! AVX2+FMA (chosen once by CPU features) and plain (the scalar twin, and other hosts).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::gguf::GgmlType;
use crate::quant;

/// Rows of W per tile (dequantized together; the unit of parallel work). A multiple of 4
/// (the AVX-512 and plain kernels' blocks) and of 3 (the AVX2 kernel's).
pub const TILE: usize = 24;

/// out [nx4, TILE] = x [nx4, k] · wᵀ with w [TILE, k] (k a multiple of 16, nx4 of 4).
pub type Kernel = fn(&[f32], &[f32], usize, &mut [f32]);

/// y [n_x, n_out] = x [n_x, n_in] · Wᵀ with W [n_out, n_in] in `t` blocks (`row_bytes`
/// per row). x rows are padded to a multiple of 4 here.
pub fn matmul_few(t: GgmlType, w: &[u8], row_bytes: usize, n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, quant::QuantError> {
    let kernel = kernel();
    let k = n_in.next_multiple_of(16);
    let nx4 = n_x.next_multiple_of(4);
    // x padded: rows to a multiple of 4, columns to a multiple of 8 (zeros add nothing).
    let mut xp = vec![0f32; nx4 * k];
    for (dst, src) in xp.chunks_exact_mut(k).zip(x.chunks_exact(n_in)) {
        dst[..n_in].copy_from_slice(src);
    }
    // Per tile: its outputs for every x row, [nx4, TILE].
    let tiles: Vec<Vec<f32>> = w
        .par_chunks(row_bytes * TILE)
        .map_init(
            || vec![0f32; TILE * k],
            |wt, rows| -> Result<Vec<f32>, quant::QuantError> {
                let nr = rows.len() / row_bytes;
                // Zeros where the tile is padded (a short last tile, columns past n_in).
                if nr < TILE || k != n_in {
                    wt.fill(0.0);
                }
                if k == n_in {
                    quant::dequantize(t, rows, &mut wt[..nr * n_in])?;
                } else {
                    for (dst, src) in wt.chunks_exact_mut(k).zip(rows.chunks_exact(row_bytes)) {
                        quant::dequantize(t, src, &mut dst[..n_in])?;
                    }
                }
                let mut out = vec![0f32; nx4 * TILE];
                kernel(wt, &xp, k, &mut out);
                Ok(out)
            },
        )
        .collect::<Result<_, _>>()?;
    let mut y = vec![0f32; n_x * n_out];
    for (ti, tile) in tiles.iter().enumerate() {
        let o0 = ti * TILE;
        let nr = TILE.min(n_out - o0);
        for r in 0..n_x {
            y[r * n_out + o0..r * n_out + o0 + nr].copy_from_slice(&tile[r * TILE..r * TILE + nr]);
        }
    }
    Ok(y)
}

/// The kernel this CPU runs, chosen once.
fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::tile_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return x86::tile_avx2;
            }
        }
        tile_plain
    })
}

/// Every tile kernel this CPU can run, by name (the dispatcher picks one), so that tests
/// check each, not only the selected one.
pub fn all_kernels() -> Vec<(&'static str, Kernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Kernel)> = vec![("plain", tile_plain as Kernel)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512", x86::tile_avx512 as Kernel));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push(("avx2", x86::tile_avx2 as Kernel));
        }
    }
    v
}

/// The scalar twin (the same body, compiled without extra features).
pub fn tile_plain(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    tile_body::<false>(w, x, k, out)
}

/// out [nx4, TILE] = x [nx4, k] · wᵀ, w [TILE, k]; k a multiple of 16, nx4 of 4.
/// `FMA`: fused multiply-adds (where the CPU has them; elsewhere `mul_add` is a libm call).
#[inline(always)]
fn tile_body<const FMA: bool>(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    let nx = x.len() / k;
    for ob in (0..TILE).step_by(4) {
        let wr: [&[f32]; 4] = std::array::from_fn(|i| &w[(ob + i) * k..(ob + i + 1) * k]);
        for rb in (0..nx).step_by(4) {
            let xr: [&[f32]; 4] = std::array::from_fn(|j| &x[(rb + j) * k..(rb + j + 1) * k]);
            // acc[i][j]: 8 lanes of Σ w_i·x_j.
            let mut acc = [[[0f32; 8]; 4]; 4];
            for c in (0..k).step_by(8) {
                let wv: [[f32; 8]; 4] = std::array::from_fn(|i| wr[i][c..c + 8].try_into().expect("8 lanes"));
                let xv: [[f32; 8]; 4] = std::array::from_fn(|j| xr[j][c..c + 8].try_into().expect("8 lanes"));
                for i in 0..4 {
                    for j in 0..4 {
                        for l in 0..8 {
                            acc[i][j][l] = if FMA { wv[i][l].mul_add(xv[j][l], acc[i][j][l]) } else { wv[i][l] * xv[j][l] + acc[i][j][l] };
                        }
                    }
                }
            }
            for i in 0..4 {
                for j in 0..4 {
                    out[(rb + j) * TILE + ob + i] = acc[i][j].iter().sum();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TILE;

    /// [`super::tile_body`] in AVX-512F intrinsics: 16 accumulators (4 rows of W × 4 of
    /// x, 16 lanes), 4 + 4 loads per 16 fused multiply-adds.
    pub fn tile_avx512(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
        #[target_feature(enable = "avx512f")]
        fn inner(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
            let nx = x.len() / k;
            assert!(k.is_multiple_of(16) && nx.is_multiple_of(4) && w.len() >= TILE * k && out.len() >= nx * TILE);
            for ob in (0..TILE).step_by(4) {
                for rb in (0..nx).step_by(4) {
                    let mut acc = [_mm512_setzero_ps(); 16];
                    let (wp, xp) = (w.as_ptr(), x.as_ptr());
                    let mut c = 0;
                    while c < k {
                        // SAFETY: rows ob..ob+4 of w and rb..rb+4 of x hold k floats each
                        // (asserted above); c + 16 ≤ k.
                        let wv: [__m512; 4] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(wp.add((ob + i) * k + c)) });
                        let xv: [__m512; 4] = std::array::from_fn(|j| unsafe { _mm512_loadu_ps(xp.add((rb + j) * k + c)) });
                        for i in 0..4 {
                            for j in 0..4 {
                                acc[i * 4 + j] = _mm512_fmadd_ps(wv[i], xv[j], acc[i * 4 + j]);
                            }
                        }
                        c += 16;
                    }
                    for i in 0..4 {
                        for j in 0..4 {
                            out[(rb + j) * TILE + ob + i] = _mm512_reduce_add_ps(acc[i * 4 + j]);
                        }
                    }
                }
            }
        }
        // SAFETY: chosen only after detecting AVX-512F (see `kernel`).
        unsafe { inner(w, x, k, out) }
    }

    /// [`super::tile_body`] in AVX2+FMA intrinsics, blocked for the 16 vector registers:
    /// 3 rows of W × 4 rows of x per pass (12 accumulators, the 3 W vectors held, each x
    /// vector loaded once for 3 fused multiply-adds: 7 loads per 12 FMAs). The generic
    /// body's 4 × 4 block does not fit in 16 registers (the compiler spilled it: 5 GMAC/s
    /// on a Zen 3 core against 27 for the GEMM). TILE is a multiple of 3.
    pub fn tile_avx2(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
        #[target_feature(enable = "avx2,fma")]
        fn inner(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
            let nx = x.len() / k;
            assert!(k.is_multiple_of(16) && nx.is_multiple_of(4) && w.len() >= TILE * k && out.len() >= nx * TILE);
            for ob in (0..TILE).step_by(3) {
                for rb in (0..nx).step_by(4) {
                    let mut acc = [_mm256_setzero_ps(); 12];
                    let (wp, xp) = (w.as_ptr(), x.as_ptr());
                    let mut c = 0;
                    while c < k {
                        // SAFETY: rows ob..ob+3 of w (ob + 3 ≤ TILE) and rb..rb+4 of x hold
                        // k floats each (asserted above); c + 8 ≤ k.
                        let wv: [__m256; 3] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(wp.add((ob + i) * k + c)) });
                        for j in 0..4 {
                            // SAFETY: as above.
                            let xv = unsafe { _mm256_loadu_ps(xp.add((rb + j) * k + c)) };
                            for i in 0..3 {
                                acc[i * 4 + j] = _mm256_fmadd_ps(wv[i], xv, acc[i * 4 + j]);
                            }
                        }
                        c += 8;
                    }
                    for i in 0..3 {
                        for j in 0..4 {
                            out[(rb + j) * TILE + ob + i] = hsum(acc[i * 4 + j]);
                        }
                    }
                }
            }
        }
        // SAFETY: chosen only after detecting AVX2 and FMA (see `kernel`).
        unsafe { inner(w, x, k, out) }
    }

    /// The sum of a vector's 8 lanes.
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }
}
