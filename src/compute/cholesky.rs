//! Cholesky factorization and solves of dense symmetric positive definite systems, f64 on
//! the host, blocked so that the bulk of the work is [`matmul`] (the same `gemm` kernels
//! as the rest of the crate) — what GPTQ's drift target solves per layer (n = the input
//! width, up to the MLP's; a few hundred right-hand sides). nalgebra's unblocked
//! factorization and triangular solves took ≈ 0.43 s for n = 1536 with 576 right-hand
//! sides; this takes ≈ 0.1 s.
//!
//! Matrices are row-major; L is written over the lower triangle of A (the strict upper
//! triangle is left holding partial updates: the solves read only the lower one).

use rayon::prelude::*;

use super::dense::{matmul, Layout};

/// Columns per block.
const NB: usize = 96;

/// Copies rows `r0..r1`, columns `c0..c1` of the [·, n] matrix `a` into a contiguous
/// [r1 − r0, c1 − c0] block.
fn block(a: &[f64], n: usize, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> Vec<f64> {
    (r0..r1).flat_map(|r| a[r * n + c0..r * n + c1].iter().copied()).collect()
}

/// A = L·Lᵀ for the SPD `a` [n, n], L over its lower triangle. Err(j): the leading
/// minor of order j + 1 is not positive definite (or not finite).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n, "cholesky: {} values for [{n}, {n}]", a.len());
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        // Diagonal block, unblocked (the columns before k0 are already subtracted).
        for j in k0..k1 {
            let d = a[j * n + j] - a[j * n + k0..j * n + j].iter().map(|v| v * v).sum::<f64>();
            if !(d > 0.0 && d.is_finite()) {
                return Err(j);
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..k1 {
                let s: f64 = (k0..j).map(|p| a[i * n + p] * a[j * n + p]).sum();
                a[i * n + j] = (a[i * n + j] - s) / d;
            }
        }
        if k1 == n {
            break;
        }
        // Panel rows below: L[i, k0..k1] = A[i, k0..k1] · L_kk⁻ᵀ, each row on its own.
        let diag = block(a, n, (k0, k1), (k0, k1));
        let nb = k1 - k0;
        a[k1 * n..].par_chunks_mut(n).for_each(|row| {
            for j in 0..nb {
                let s: f64 = (0..j).map(|p| row[k0 + p] * diag[j * nb + p]).sum();
                row[k0 + j] = (row[k0 + j] - s) / diag[j * nb + j];
            }
        });
        // Trailing matrix: A[k1.., k1..] −= P·Pᵀ with P = L[k1.., k0..k1].
        let rest = n - k1;
        let p = block(a, n, (k1, n), (k0, k1));
        let mut ppt = vec![0f64; rest * rest];
        matmul(&mut ppt, &p, Layout::N, &p, Layout::T, rest, rest, nb, false);
        a[k1 * n..].par_chunks_mut(n).zip(ppt.par_chunks(rest)).for_each(|(row, u)| {
            row[k1..].iter_mut().zip(u).for_each(|(x, u)| *x -= u);
        });
    }
    Ok(())
}

/// Solves A·X = B in place for `b` [n, m], with L from [`cholesky`] in `l` [n, n]:
/// L·Y = B ([`solve_lower`]), then Lᵀ·X = Y.
pub fn solve(l: &[f64], n: usize, b: &mut [f64], m: usize) {
    solve_lower(l, n, b, m);
    solve_upper(l, n, b, m);
}

/// Solves L·Y = B in place for `b` [n, m], L the lower triangle of `l` [n, n].
pub fn solve_lower(l: &[f64], n: usize, b: &mut [f64], m: usize) {
    assert!(l.len() == n * n && b.len() == n * m, "triangular solve: L of {} values, B of {} for n {n}, m {m}", l.len(), b.len());
    // Block rows in order: B[k] −= L[k, ..k0]·Y[..k0], then within the block.
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        if k0 > 0 {
            let lk = block(l, n, (k0, k1), (0, k0));
            let mut s = vec![0f64; (k1 - k0) * m];
            matmul(&mut s, &lk, Layout::N, &b[..k0 * m], Layout::N, k1 - k0, m, k0, false);
            b[k0 * m..k1 * m].iter_mut().zip(&s).for_each(|(x, s)| *x -= s);
        }
        for i in k0..k1 {
            let (done, rest) = b.split_at_mut(i * m);
            let row = &mut rest[..m];
            for p in k0..i {
                let c = l[i * n + p];
                row.iter_mut().zip(&done[p * m..(p + 1) * m]).for_each(|(x, y)| *x -= c * y);
            }
            let inv = 1.0 / l[i * n + i];
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Solves Lᵀ·X = Y in place for `b` [n, m], L the lower triangle of `l` [n, n].
fn solve_upper(l: &[f64], n: usize, b: &mut [f64], m: usize) {
    // Block rows in reverse: Y[k] −= L[k1.., k]ᵀ·X[k1..], then within the block.
    let starts: Vec<usize> = (0..n).step_by(NB).collect();
    for &k0 in starts.iter().rev() {
        let k1 = (k0 + NB).min(n);
        if k1 < n {
            let lk = block(l, n, (k1, n), (k0, k1)); // [n − k1, nb]
            let mut s = vec![0f64; (k1 - k0) * m];
            matmul(&mut s, &lk, Layout::T, &b[k1 * m..], Layout::N, k1 - k0, m, n - k1, false);
            b[k0 * m..k1 * m].iter_mut().zip(&s).for_each(|(x, s)| *x -= s);
        }
        for i in (k0..k1).rev() {
            let (head, tail) = b.split_at_mut((i + 1) * m);
            let row = &mut head[i * m..];
            for p in i + 1..k1 {
                let c = l[p * n + i];
                row.iter_mut().zip(&tail[(p - i - 1) * m..(p - i) * m]).for_each(|(x, y)| *x -= c * y);
            }
            let inv = 1.0 / l[i * n + i];
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A = M·Mᵀ + n·I for a deterministic M: SPD, entries of mixed sign.
    fn spd(n: usize) -> Vec<f64> {
        let mut s = 7u64;
        let m: Vec<f64> = (0..n * n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let mut a = vec![0f64; n * n];
        matmul(&mut a, &m, Layout::N, &m, Layout::T, n, n, n, false);
        (0..n).for_each(|i| a[i * n + i] += n as f64);
        a
    }

    #[test]
    fn factor_and_solve_match_the_unblocked_answer() {
        // Sizes below, at and across block edges.
        for n in [1, 5, NB, NB + 1, 2 * NB + 37] {
            let a = spd(n);
            let m = 3;
            let x_true: Vec<f64> = (0..n * m).map(|i| (i % 11) as f64 - 5.0).collect();
            let mut b = vec![0f64; n * m];
            matmul(&mut b, &a, Layout::N, &x_true, Layout::N, n, m, n, false);
            let mut l = a.clone();
            cholesky(&mut l, n).unwrap();
            // L·Lᵀ reproduces A on the lower triangle.
            for i in 0..n {
                for j in 0..=i {
                    let v: f64 = (0..=j).map(|p| l[i * n + p] * l[j * n + p]).sum();
                    assert!((v - a[i * n + j]).abs() < 1e-9 * a[i * n + i], "n {n}: (L·Lᵀ)[{i},{j}] {v} vs {}", a[i * n + j]);
                }
            }
            solve(&l, n, &mut b, m);
            let err = b.iter().zip(&x_true).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
            assert!(err < 1e-9, "n {n}: max error {err}");
        }
    }

    #[test]
    fn not_positive_definite_names_the_pivot() {
        let n = 2 * NB + 3;
        let mut a = spd(n);
        // A negative pivot 150: the leading minors up to 150 stay positive definite.
        a[150 * n + 150] = -1.0;
        let e = cholesky(&mut a, n).unwrap_err();
        assert_eq!(e, 150);
        let mut nan = vec![f64::NAN; 4];
        assert_eq!(cholesky(&mut nan, 2), Err(0));
    }
}
