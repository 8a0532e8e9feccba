//! SIMD dequantizers, chosen once at start-up by CPU feature detection, each with the
//! scalar reference (`reference.rs`) as its twin: same signature, bit-identical output
//! (the SIMD code multiplies and adds in the same order, without FMA contraction).
//!
//! x86_64: AVX2 and AVX-512 (F+BW) kernels for Q4_0, Q4_1 and Q8_0 (the default model's
//! types). AVX2 is preferred: on this project's machines the AVX-512 ones measured no
//! faster (these kernels are memory-bound; `cargo bench --bench gguf` compares them);
//! `EDGELORA_SIMD=avx512|avx2|scalar` overrides the choice. Other types and other CPUs
//! use the scalar path. NEON kernels for aarch64 are not written yet.

use std::sync::OnceLock;

use crate::gguf::GgmlType;

/// A dequantizer over raw block bytes (any alignment) into `out` (whole blocks).
pub type Kernel = fn(&[u8], &mut [f32]);

/// A fused dot product of one quantized row (raw block bytes) with f32 values, without
/// materializing the row: Σ_blocks d·Σ q·x (+ m·Σ x). Summation order differs from
/// dequantize-then-dot, so results agree up to float rounding.
pub type DotKernel = fn(&[u8], &[f32]) -> f32;

struct Kernels {
    name: &'static str,
    q4_0: Option<Kernel>,
    q4_1: Option<Kernel>,
    q8_0: Option<Kernel>,
    dot_q4_1: Option<DotKernel>,
    dot_q8_0: Option<DotKernel>,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let wanted = std::env::var("EDGELORA_SIMD").ok();
        if wanted.as_deref() == Some("scalar") {
            return Kernels { name: "scalar", q4_0: None, q4_1: None, q8_0: None, dot_q4_1: None, dot_q8_0: None };
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = wanted.as_deref() == Some("avx512")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            if std::arch::is_x86_feature_detected!("avx2") {
                let fma = std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c");
                if avx512 {
                    return Kernels {
                        name: "avx512",
                        q4_0: Some(x86::q4_0_512),
                        q4_1: Some(x86::q4_1_512),
                        q8_0: Some(x86::q8_0_512),
                        dot_q4_1: fma.then_some(x86::dot_q4_1 as DotKernel),
                        dot_q8_0: fma.then_some(x86::dot_q8_0 as DotKernel),
                    };
                }
                return Kernels {
                    name: "avx2",
                    q4_0: Some(x86::q4_0),
                    q4_1: Some(x86::q4_1),
                    q8_0: Some(x86::q8_0),
                    dot_q4_1: fma.then_some(x86::dot_q4_1 as DotKernel),
                    dot_q8_0: fma.then_some(x86::dot_q8_0 as DotKernel),
                };
            }
        }
        Kernels { name: "scalar", q4_0: None, q4_1: None, q8_0: None, dot_q4_1: None, dot_q8_0: None }
    })
}

/// The instruction set the dispatcher picked ("avx512", "avx2" or "scalar").
pub fn selected() -> &'static str {
    kernels().name
}

/// The SIMD kernel for `t`, if this CPU has one.
pub fn kernel(t: GgmlType) -> Option<Kernel> {
    let k = kernels();
    match t {
        GgmlType::Q4_0 => k.q4_0,
        GgmlType::Q4_1 => k.q4_1,
        GgmlType::Q8_0 => k.q8_0,
        _ => None,
    }
}

/// Every SIMD dequantizer for `t` this CPU can run (the dispatcher uses the first), so
/// tests can check each against the scalar reference, not only the selected one.
pub fn all_kernels(t: GgmlType) -> Vec<(&'static str, Kernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw");
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        let pick = |a: Kernel, b: Kernel, c: Kernel| match t {
            GgmlType::Q4_0 => Some(a),
            GgmlType::Q4_1 => Some(b),
            GgmlType::Q8_0 => Some(c),
            _ => None,
        };
        if avx512 {
            v.extend(pick(x86::q4_0_512, x86::q4_1_512, x86::q8_0_512).map(|k| ("avx512", k)));
        }
        if avx2 {
            v.extend(pick(x86::q4_0, x86::q4_1, x86::q8_0).map(|k| ("avx2", k)));
        }
    }
    v
}

/// The fused dot kernel for `t`, if this CPU has one (AVX2+FMA+F16C: Q4_1, Q8_0).
pub fn dot_kernel(t: GgmlType) -> Option<DotKernel> {
    let k = kernels();
    match t {
        GgmlType::Q4_1 => k.dot_q4_1,
        GgmlType::Q8_0 => k.dot_q8_0,
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    fn f16_at(b: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
    }

    /// Nibbles of 16 bytes → 32 floats: low nibbles are elements 0..16, high 16..32.
    #[target_feature(enable = "avx2")]
    fn nibbles(qs: &[u8]) -> [__m256; 4] {
        assert!(qs.len() >= 16);
        // SAFETY: 16 readable bytes (asserted); unaligned load.
        let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        let cvt = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
        [cvt(lo), cvt(_mm_srli_si128(lo, 8)), cvt(hi), cvt(_mm_srli_si128(hi, 8))]
    }

    #[target_feature(enable = "avx2")]
    fn store(out: &mut [f32], v: [__m256; 4]) {
        assert!(out.len() >= 32);
        for (k, x) in v.iter().enumerate() {
            // SAFETY: 32 writable floats (asserted); unaligned store.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), *x) };
        }
    }

    #[target_feature(enable = "avx2")]
    fn q4_1_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
            let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(f16_at(b, 2)));
            let q = nibbles(&b[4..20]);
            store(y, q.map(|x| _mm256_add_ps(_mm256_mul_ps(x, d), m)));
        }
    }

    #[target_feature(enable = "avx2")]
    fn q4_0_avx2(bytes: &[u8], out: &mut [f32]) {
        let eight = _mm256_set1_ps(8.0);
        for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(b, 0));
            // (q − 8) is exact in f32, so subtracting after the conversion matches the
            // scalar integer subtraction.
            let q = nibbles(&b[2..18]);
            store(y, q.map(|x| _mm256_mul_ps(_mm256_sub_ps(x, eight), d)));
        }
    }

    #[target_feature(enable = "avx2")]
    fn q8_0_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let qs = &b[2..34];
            let mut v = [_mm256_setzero_ps(); 4];
            for (k, x) in v.iter_mut().enumerate() {
                // SAFETY: 8 readable bytes at 8k within the 32-byte slice; unaligned load.
                let raw = unsafe { _mm_loadl_epi64(qs.as_ptr().add(8 * k).cast()) };
                *x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)), d);
            }
            store(y, v);
        }
    }

    #[inline]
    fn hsum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: 8 writable floats; storeu needs no alignment.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load8(x: &[f32], i: usize) -> __m256 {
        assert!(i + 8 <= x.len());
        // SAFETY: 8 readable floats at i (asserted).
        unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }
    }

    /// f16 at byte `i` → f32 with the F16C instruction (inlined into the kernels).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16c_at(b: &[u8], i: usize) -> f32 {
        let bits = i32::from(u16::from_le_bytes([b[i], b[i + 1]]));
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1_avx2(bytes: &[u8], x: &[f32]) -> f32 {
        let mut qx = _mm256_setzero_ps();
        let mut mx = _mm256_setzero_ps();
        for (b, xb) in bytes.chunks_exact(20).zip(x.chunks_exact(32)) {
            let (d, m) = (f16c_at(b, 0), f16c_at(b, 2));
            let q = nibbles(&b[4..20]);
            let mut acc = _mm256_setzero_ps();
            let mut sx = _mm256_setzero_ps();
            for (k, qk) in q.iter().enumerate() {
                let xv = load8(xb, 8 * k);
                acc = _mm256_fmadd_ps(*qk, xv, acc);
                sx = _mm256_add_ps(sx, xv);
            }
            // d·Σq·x + m·Σx, kept in lanes and reduced once at the end.
            qx = _mm256_fmadd_ps(acc, _mm256_set1_ps(d), qx);
            mx = _mm256_fmadd_ps(sx, _mm256_set1_ps(m), mx);
        }
        hsum(_mm256_add_ps(qx, mx))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0_avx2(bytes: &[u8], x: &[f32]) -> f32 {
        let mut qx = _mm256_setzero_ps();
        for (b, xb) in bytes.chunks_exact(34).zip(x.chunks_exact(32)) {
            let d = _mm256_set1_ps(f16c_at(b, 0));
            let qs = &b[2..34];
            let mut acc = _mm256_setzero_ps();
            for k in 0..4 {
                // SAFETY: 8 readable bytes at 8k within the 32-byte slice; unaligned load.
                let raw = unsafe { _mm_loadl_epi64(qs.as_ptr().add(8 * k).cast()) };
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
                acc = _mm256_fmadd_ps(q, load8(xb, 8 * k), acc);
            }
            qx = _mm256_fmadd_ps(acc, d, qx);
        }
        hsum(qx)
    }

    pub fn dot_q4_1(bytes: &[u8], x: &[f32]) -> f32 {
        // SAFETY: selected only when AVX2, FMA and F16C are available.
        unsafe { dot_q4_1_avx2(bytes, x) }
    }
    pub fn dot_q8_0(bytes: &[u8], x: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { dot_q8_0_avx2(bytes, x) }
    }

    /// 16 bytes of nibbles → 32 floats in two 16-lane registers (elements 0..16, 16..32).
    #[target_feature(enable = "avx512f,avx512bw")]
    fn nibbles512(qs: &[u8]) -> [__m512; 2] {
        assert!(qs.len() >= 16);
        // SAFETY: 16 readable bytes (asserted); unaligned load.
        let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        [_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))]
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn store512(out: &mut [f32], v: [__m512; 2]) {
        assert!(out.len() >= 32);
        // SAFETY: 32 writable floats (asserted); unaligned stores.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), v[0]);
            _mm512_storeu_ps(out.as_mut_ptr().add(16), v[1]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn q4_1_avx512(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
            let (d, m) = (_mm512_set1_ps(f16_at(b, 0)), _mm512_set1_ps(f16_at(b, 2)));
            store512(y, nibbles512(&b[4..20]).map(|x| _mm512_add_ps(_mm512_mul_ps(x, d), m)));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn q4_0_avx512(bytes: &[u8], out: &mut [f32]) {
        let eight = _mm512_set1_ps(8.0);
        for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
            let d = _mm512_set1_ps(f16_at(b, 0));
            store512(y, nibbles512(&b[2..18]).map(|x| _mm512_mul_ps(_mm512_sub_ps(x, eight), d)));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn q8_0_avx512(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = _mm512_set1_ps(f16_at(b, 0));
            let qs = &b[2..34];
            // SAFETY: 32 readable bytes; two unaligned 16-byte loads.
            let (lo, hi) = unsafe { (_mm_loadu_si128(qs.as_ptr().cast()), _mm_loadu_si128(qs.as_ptr().add(16).cast())) };
            let cvt = |x: __m128i| _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x)), d);
            store512(y, [cvt(lo), cvt(hi)]);
        }
    }

    pub fn q4_1_512(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: selected only when AVX-512 F and BW are available.
        unsafe { q4_1_avx512(bytes, out) }
    }
    pub fn q4_0_512(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q4_0_avx512(bytes, out) }
    }
    pub fn q8_0_512(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q8_0_avx512(bytes, out) }
    }

    // Safe entry points: only handed out by the dispatcher after detecting AVX2.
    pub fn q4_1(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: selected only when AVX2 is available.
        unsafe { q4_1_avx2(bytes, out) }
    }
    pub fn q4_0(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q4_0_avx2(bytes, out) }
    }
    pub fn q8_0(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q8_0_avx2(bytes, out) }
    }
}
