//! LoRA B factors laid out for decoding: B [rows, r] in blocks of 16 rows, each block
//! stored transposed ([r][16]), so that y += B·v for a short v (the rank) is, per block,
//! r fused multiply-adds of one contiguous vector of B by a broadcast v_j — no per-row
//! horizontal sums, and B read front to back. Every output gets the same operations in
//! the same order on every path (the vector kernels and the scalar twin, f16 and f32
//! copies, and [`gemv_rows`] on a row-major B): acc = 0; acc = fma(B[o, j], v_j, acc) for
//! j = 0..r; y[o] += acc — so they agree bit for bit.

use std::sync::OnceLock;

use half::f16;

/// Rows per block.
pub const BLOCK: usize = 16;

/// A factor value as the kernels read it.
pub trait Value: Copy + Default + Send + Sync + x86::Lanes + 'static {
    fn f32(self) -> f32;
    /// The kernel this CPU runs for this type, chosen once.
    fn kernel() -> Kernel<Self>;
}

impl Value for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    fn kernel() -> Kernel<f32> {
        static K: OnceLock<Kernel<f32>> = OnceLock::new();
        *K.get_or_init(pick::<f32>)
    }
}

impl Value for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
    fn kernel() -> Kernel<f16> {
        static K: OnceLock<Kernel<f16>> = OnceLock::new();
        *K.get_or_init(pick::<f16>)
    }
}

/// B [rows, r] (row-major) blocked: [⌈rows/16⌉][r][16], rows past the end zero.
pub fn block<T: Value>(b: &[T], rows: usize, r: usize) -> Vec<T> {
    assert_eq!(b.len(), rows * r, "B holds {} values for [{rows}, {r}]", b.len());
    let mut out = vec![T::default(); rows.div_ceil(BLOCK) * r * BLOCK];
    for (o, row) in b.chunks_exact(r.max(1)).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[((o / BLOCK) * r + j) * BLOCK + o % BLOCK] = v;
        }
    }
    out
}

/// The range of a blocked B's values that rows o0..o1 lie in (for prefetching).
pub fn rows_range(r: usize, o0: usize, o1: usize) -> std::ops::Range<usize> {
    (o0 / BLOCK) * r * BLOCK..o1.div_ceil(BLOCK) * r * BLOCK
}

/// y[i] += Σ_j B[o0 + i, j]·v[j] for a blocked B of rank r = v.len() (see the module
/// comment for the order of operations).
pub fn gemv_blocked<T: Value>(bt: &[T], o0: usize, v: &[f32], y: &mut [f32]) {
    let r = v.len();
    let o1 = o0 + y.len();
    assert!(bt.len() >= o1.div_ceil(BLOCK) * r * BLOCK, "blocked B holds {} values, rows up to {o1} of rank {r} need more", bt.len());
    // The whole blocks inside o0..o1 by the vector kernel, the rest here.
    let (v0, v1) = (o0.next_multiple_of(BLOCK), (o1 / BLOCK) * BLOCK);
    let at = |o: usize, j: usize| bt[((o / BLOCK) * r + j) * BLOCK + o % BLOCK].f32();
    let scalar = |o: usize| (0..r).fold(0f32, |acc, j| at(o, j).mul_add(v[j], acc));
    if v1 <= v0 {
        for (o, yo) in (o0..).zip(y.iter_mut()) {
            *yo += scalar(o);
        }
        return;
    }
    for (o, yo) in (o0..v0).zip(y.iter_mut()) {
        *yo += scalar(o);
    }
    for (o, yo) in (v1..o1).zip(y[v1 - o0..].iter_mut()) {
        *yo += scalar(o);
    }
    let blocks = &bt[(v0 / BLOCK) * r * BLOCK..(v1 / BLOCK) * r * BLOCK];
    let ys = &mut y[v0 - o0..v1 - o0];
    T::kernel()(blocks, v, ys);
}

/// y[o] += Σ_j b[o·r + j]·v[j] for a row-major B [y.len(), r]: the same operations as
/// [`gemv_blocked`] (the scalar order), for factors without a blocked copy.
pub fn gemv_rows(b: &[f32], v: &[f32], y: &mut [f32]) {
    let r = v.len();
    assert_eq!(b.len(), r * y.len(), "B holds {} values for [{}, {r}]", b.len(), y.len());
    for (yo, row) in y.iter_mut().zip(b.chunks_exact(r.max(1))) {
        *yo += row.iter().zip(v).fold(0f32, |acc, (&w, &x)| w.mul_add(x, acc));
    }
}

/// Whole blocks (ys: 16 outputs per block) · v.
pub type Kernel<T> = fn(&[T], &[f32], &mut [f32]);

/// The scalar twin of the vector kernels.
fn blocks_plain<T: Value>(bt: &[T], v: &[f32], ys: &mut [f32]) {
    let r = v.len();
    for (blk, yb) in bt.chunks_exact(r * BLOCK).zip(ys.chunks_exact_mut(BLOCK)) {
        let mut acc = [0f32; BLOCK];
        for (j, &vj) in v.iter().enumerate() {
            for (a, w) in acc.iter_mut().zip(&blk[j * BLOCK..(j + 1) * BLOCK]) {
                *a = w.f32().mul_add(vj, *a);
            }
        }
        yb.iter_mut().zip(acc).for_each(|(y, a)| *y += a);
    }
}

/// The best kernel for `T` on this CPU.
fn pick<T: Value>() -> Kernel<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return x86::blocks_avx512::<T>;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c") {
            return x86::blocks_avx2::<T>;
        }
    }
    blocks_plain::<T>
}

/// Every kernel this CPU can run for `T`, by name (tests check each).
pub fn all_kernels<T: Value>() -> Vec<(&'static str, Kernel<T>)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Kernel<T>)> = vec![("plain", blocks_plain::<T>)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512", x86::blocks_avx512::<T>));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c") {
            v.push(("avx2", x86::blocks_avx2::<T>));
        }
    }
    v
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// Loads of 16 (AVX-512) or 8 (AVX2) factor values as f32.
    pub trait Lanes: Copy {
        /// SAFETY: 16 readable values at p; AVX-512F.
        unsafe fn load16(p: *const Self) -> __m512;
        /// SAFETY: 8 readable values at p; AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: by the caller.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: by the caller.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Lanes for half::f16 {
        #[inline(always)]
        unsafe fn load16(p: *const half::f16) -> __m512 {
            // SAFETY: by the caller (16 f16 = 32 bytes).
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const half::f16) -> __m256 {
            // SAFETY: by the caller (8 f16 = 16 bytes).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    /// [`super::blocks_plain`] with a block's 16 outputs in one AVX-512 vector.
    pub fn blocks_avx512<T: super::Value>(bt: &[T], v: &[f32], ys: &mut [f32]) {
        #[target_feature(enable = "avx512f")]
        fn inner<T: super::Value>(bt: &[T], v: &[f32], ys: &mut [f32]) {
            let r = v.len();
            assert!(bt.len() >= ys.len() / BLOCK * r * BLOCK && ys.len().is_multiple_of(BLOCK));
            for (k, yb) in ys.chunks_exact_mut(BLOCK).enumerate() {
                let mut acc = _mm512_setzero_ps();
                for (j, &vj) in v.iter().enumerate() {
                    // SAFETY: block k's row j: 16 values inside bt (asserted).
                    acc = _mm512_fmadd_ps(unsafe { T::load16(bt.as_ptr().add((k * r + j) * BLOCK)) }, _mm512_set1_ps(vj), acc);
                }
                // SAFETY: 16 floats of yb.
                unsafe { _mm512_storeu_ps(yb.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(yb.as_ptr()), acc)) };
            }
        }
        // SAFETY: chosen only after detecting AVX-512F.
        unsafe { inner(bt, v, ys) }
    }

    /// [`super::blocks_plain`] with a block's 16 outputs in two AVX2 vectors.
    pub fn blocks_avx2<T: super::Value>(bt: &[T], v: &[f32], ys: &mut [f32]) {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn inner<T: super::Value>(bt: &[T], v: &[f32], ys: &mut [f32]) {
            let r = v.len();
            assert!(bt.len() >= ys.len() / BLOCK * r * BLOCK && ys.len().is_multiple_of(BLOCK));
            for (k, yb) in ys.chunks_exact_mut(BLOCK).enumerate() {
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for (j, &vj) in v.iter().enumerate() {
                    let x = _mm256_set1_ps(vj);
                    // SAFETY: block k's row j: 16 values inside bt (asserted).
                    unsafe {
                        let p = bt.as_ptr().add((k * r + j) * BLOCK);
                        lo = _mm256_fmadd_ps(T::load8(p), x, lo);
                        hi = _mm256_fmadd_ps(T::load8(p.add(8)), x, hi);
                    }
                }
                // SAFETY: 16 floats of yb.
                unsafe {
                    _mm256_storeu_ps(yb.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(yb.as_ptr()), lo));
                    _mm256_storeu_ps(yb.as_mut_ptr().add(8), _mm256_add_ps(_mm256_loadu_ps(yb.as_ptr().add(8)), hi));
                }
            }
        }
        // SAFETY: chosen only after detecting AVX2, FMA and F16C.
        unsafe { inner(bt, v, ys) }
    }
}

/// Elsewhere the trait has no vector loads (only the scalar twin runs).
#[cfg(not(target_arch = "x86_64"))]
pub mod x86 {
    pub trait Lanes: Copy {}
    impl Lanes for f32 {}
    impl Lanes for half::f16 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn blocked_products_equal_the_row_major_product_to_the_bit_on_every_kernel_and_any_row_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (rows, r) in [(1536, 16), (40, 8), (33, 5), (16, 64), (7, 3)] {
            let b: Vec<f32> = (0..rows * r).map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)).to_f32()).collect();
            let v: Vec<f32> = (0..r).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let b16: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let (bt32, bt16) = (block(&b, rows, r), block(&b16, rows, r));
            let y0: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            // Row ranges: all, a part starting inside a block, a part inside one block.
            for (o0, o1) in [(0, rows), (rows.min(5), rows), (rows / 3, rows / 3 + rows.min(3))] {
                let mut want = y0[o0..o1].to_vec();
                gemv_rows(&b[o0 * r..o1 * r], &v, &mut want);
                let bits = |y: &[f32]| y.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for (label, got) in [("f32", { let mut y = y0[o0..o1].to_vec(); gemv_blocked(&bt32, o0, &v, &mut y); y }), ("f16", { let mut y = y0[o0..o1].to_vec(); gemv_blocked(&bt16, o0, &v, &mut y); y })] {
                    assert_eq!(bits(&got), bits(&want), "{label} [{rows}, {r}] rows {o0}..{o1}");
                }
                assert!(want.iter().zip(&y0[o0..o1]).any(|(a, b)| a != b) || r == 0, "nothing added");
            }
            // Each kernel on the whole blocks.
            let whole = rows / BLOCK * BLOCK;
            if whole > 0 {
                let mut want = y0[..whole].to_vec();
                gemv_rows(&b[..whole * r], &v, &mut want);
                for (name, k) in all_kernels::<f16>() {
                    let mut y = y0[..whole].to_vec();
                    k(&bt16[..whole * r], &v, &mut y);
                    assert_eq!(y, want, "f16 kernel {name}");
                }
                for (name, k) in all_kernels::<f32>() {
                    let mut y = y0[..whole].to_vec();
                    k(&bt32[..whole * r], &v, &mut y);
                    assert_eq!(y, want, "f32 kernel {name}");
                }
            }
        }
    }
}
