//! Dense matrix products on f32 (training) and f64 (gradient checks), through the `gemm`
//! crate (runtime-dispatched AVX2/AVX-512/NEON micro-kernels, rayon threads).
//!
//! Matrices are row-major. `Real` is the element type the training ops are generic over.

use std::fmt::Debug;
use std::ops::AddAssign;

/// f32 for training, f64 for finite-difference checks.
pub trait Real: num_traits::Float + Default + Debug + Send + Sync + AddAssign + std::iter::Sum + 'static {
    fn of(x: f64) -> Self;
    fn of_f32(x: f32) -> Self;
    fn f64v(self) -> f64;
    /// The same values as `Self` (no copy for f32).
    fn from_f32_vec(v: Vec<f32>) -> Vec<Self>;
    /// Σ aᵢ·bᵢ (SIMD for f32).
    fn dot(a: &[Self], b: &[Self]) -> Self;
    /// The same slice as f32 values, where `Self` is f32 (the bf16 products' operands).
    fn as_f32(v: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn of_f32(x: f32) -> f32 {
        x
    }
    fn f64v(self) -> f64 {
        f64::from(self)
    }
    fn from_f32_vec(v: Vec<f32>) -> Vec<f32> {
        v
    }
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::cpu::dot(a, b)
    }
    fn as_f32(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32_mut(v: &mut [f32]) -> Option<&mut [f32]> {
        Some(v)
    }
}

impl Real for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn of_f32(x: f32) -> f64 {
        f64::from(x)
    }
    fn f64v(self) -> f64 {
        self
    }
    fn from_f32_vec(v: Vec<f32>) -> Vec<f64> {
        v.into_iter().map(f64::from).collect()
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// How a factor of a product is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As the product needs it: `[rows, cols]` row-major.
    N,
    /// Transposed: the `[rows, cols]` operand is stored as `[cols, rows]` row-major.
    T,
}

/// out [m, n] = (accumulate ? out : 0) + op(a) [m, k] · op(b) [k, n].
///
/// Panics if a slice is shorter than its shape says (callers size them; a short slice is
/// a bug in edgelora, never bad input).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(out: &mut [T], a: &[T], la: Layout, b: &[T], lb: Layout, m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(out.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul shapes: out {} a {} b {} for m {m} n {n} k {k}", out.len(), a.len(), b.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    let (a_rs, a_cs) = match la {
        Layout::N => (k as isize, 1),
        Layout::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match lb {
        Layout::N => (n as isize, 1),
        Layout::T => (1, k as isize),
    };
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k >= 1 << 15 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the assert above guarantees every index the strides reach is inside the
    // slices: out is m×n row-major, a is m×k (or k×m), b is k×n (or n×k); `out` does not
    // alias `a` or `b` (distinct borrows). gemm computes dst = alpha·dst + beta·lhs·rhs and
    // reads dst only when `read_dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], la: Layout, b: &[f64], lb: Layout, m: usize, n: usize, k: usize) -> Vec<f64> {
        let at = |i: usize, p: usize| if la == Layout::N { a[i * k + p] } else { a[p * m + i] };
        let bt = |p: usize, j: usize| if lb == Layout::N { b[p * n + j] } else { b[j * k + p] };
        (0..m * n).map(|ij| (0..k).map(|p| at(ij / n, p) * bt(p, ij % n)).sum()).collect()
    }

    #[test]
    fn every_layout_matches_the_naive_product() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 104729) % 97) as f64 / 48.0 - 1.0).collect();
        for la in [Layout::N, Layout::T] {
            for lb in [Layout::N, Layout::T] {
                let want = naive(&a, la, &b, lb, m, n, k);
                let mut out = vec![1.0; m * n];
                matmul(&mut out, &a, la, &b, lb, m, n, k, true);
                for (o, w) in out.iter().zip(&want) {
                    assert!((o - (w + 1.0)).abs() < 1e-9, "{la:?} {lb:?}: {o} vs {}", w + 1.0);
                }
                let af: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                let bf: Vec<f32> = b.iter().map(|&v| v as f32).collect();
                let mut outf = vec![0f32; m * n];
                matmul(&mut outf, &af, la, &bf, lb, m, n, k, false);
                for (o, w) in outf.iter().zip(&want) {
                    assert!((f64::from(*o) - w).abs() < 1e-4, "f32 {la:?} {lb:?}");
                }
            }
        }
    }
}
