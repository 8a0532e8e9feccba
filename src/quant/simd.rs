//! SIMD dequantizers, chosen once at start-up by CPU feature detection, each with the
//! scalar reference (`reference.rs`) as its twin: same signature, bit-identical output
//! (the SIMD code multiplies and adds in the same order, without FMA contraction).
//!
//! x86_64: AVX2 kernels for every type but F32 (F16 with F16C), AVX-512 (F+BW) ones for
//! Q4_0, Q4_1 and Q8_0 (the default model's types). AVX2 is preferred: on this project's
//! machines the AVX-512 ones measured no faster (these kernels are memory-bound; `cargo
//! bench --bench gguf` compares them); `EDGELORA_SIMD=avx512|avx2|scalar` overrides the
//! choice. aarch64: NEON kernels for every type but F32 (F16 through half's hardware
//! conversion). Other CPUs use the scalar path.

use std::sync::OnceLock;

use crate::gguf::GgmlType;

/// A dequantizer over raw block bytes (any alignment) into `out` (whole blocks).
pub type Kernel = fn(&[u8], &mut [f32]);

/// A fused dot product of one quantized row (raw block bytes) with f32 values, without
/// materializing the row: Σ_blocks d·Σ q·x (+ m·Σ x). Summation order differs from
/// dequantize-then-dot, so results agree up to float rounding.
pub type DotKernel = fn(&[u8], &[f32]) -> f32;

/// An input row quantized to 16 bits per 32-value block for the integer dot kernels:
/// x ≈ d·q with |q| ≤ 32639, q = 256·hi + lo split into two signed bytes (so that byte
/// dot products can take it), plus the exact f32 sum of each block (for Q4_1's min).
/// The rounding error is at most d/2 = max|x_block| / 65278 per value.
pub struct SplitX {
    pub(crate) hi: Vec<i8>,
    pub(crate) lo: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) sums: Vec<f32>,
    /// 128·Σq per block (the packed Q8_0 kernel's offset, `compute::packed`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) qsum: Vec<i32>,
    /// Exact sums of x per 16 values (Q6_K's scale groups; read by the x86 kernel only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    sums16: Vec<f32>,
    /// Per block, `[d, sum]` side by side (the four-row Q4_1 kernel loads two blocks'
    /// worth in one vector).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dsum: Vec<f32>,
    /// 128·Σq per 4 values (the four-row Q8_0 kernel offsets the weight codes by 128 to
    /// make them unsigned and takes the offset back with these, exactly in int32).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    qsum4: Vec<i32>,
    /// The 16-bit codes q themselves (= 256·hi + lo), for the AVX2 kernels' `vpmaddwd`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    q: Vec<i16>,
}

impl SplitX {
    /// `x`: a whole number of 32-value blocks.
    pub fn new(x: &[f32]) -> SplitX {
        Self::make::<true>(x)
    }

    /// What the packed kernels (`compute::packed`) read and nothing else: the same `hi`,
    /// `lo`, `d`, `sums` and `qsum` as [`new`](Self::new) gives, the other fields empty
    /// (the split kernels must not be given it).
    pub fn for_packed(x: &[f32]) -> SplitX {
        Self::make::<false>(x)
    }

    fn make<const FULL: bool>(x: &[f32]) -> SplitX {
        #[cfg(target_arch = "x86_64")]
        {
            static AVX2: OnceLock<bool> = OnceLock::new();
            if *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2")) {
                // SAFETY: AVX2 detected.
                return unsafe { Self::new_avx2::<FULL>(x) };
            }
        }
        Self::new_plain::<FULL>(x)
    }

    /// [`new`](Self::new) compiled for AVX2: the same operations in the same order (so
    /// the same values), with wider vectors where the compiler finds them.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn new_avx2<const FULL: bool>(x: &[f32]) -> SplitX {
        Self::new_plain::<FULL>(x)
    }

    /// `FULL`: every field; else only the packed kernels' ([`for_packed`](Self::for_packed)).
    #[inline(always)]
    fn new_plain<const FULL: bool>(x: &[f32]) -> SplitX {
        const QMAX: f32 = 32639.0;
        let n = x.len();
        let full = |k: usize| if FULL { k } else { 0 };
        let mut sx = SplitX {
            hi: Vec::with_capacity(n),
            lo: Vec::with_capacity(n),
            d: Vec::with_capacity(n / 32),
            sums: Vec::with_capacity(n / 32),
            sums16: if FULL { x.chunks(16).map(|c| c.iter().sum()).collect() } else { Vec::new() },
            dsum: Vec::with_capacity(full(n / 16)),
            qsum4: Vec::with_capacity(full(n / 4)),
            qsum: Vec::with_capacity(n / 32),
            q: Vec::with_capacity(full(n)),
        };
        for b in x.chunks(32) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / QMAX;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            // Round to nearest (even) by the 1.5·2²³ trick: |v·inv| ≤ QMAX < 2²². Fixed-size
            // passes, so that the compiler vectorizes them.
            const MAGIC: f32 = 12_582_912.0;
            let mut q = [0i32; 32];
            for (qi, &v) in q.iter_mut().zip(b) {
                *qi = ((v * inv + MAGIC) - MAGIC).clamp(-QMAX, QMAX) as i32;
            }
            let q = &q[..b.len()];
            sx.hi.extend(q.iter().map(|&q| ((q + 128) >> 8) as i8));
            sx.lo.extend(q.iter().map(|&q| (q - 256 * ((q + 128) >> 8)) as i8));
            sx.qsum.push(128 * q.iter().sum::<i32>());
            let sum: f32 = b.iter().sum();
            sx.d.push(d);
            sx.sums.push(sum);
            if FULL {
                sx.qsum4.extend(q.chunks(4).map(|f| 128 * f.iter().sum::<i32>()));
                sx.q.extend(q.iter().map(|&q| q as i16));
                sx.dsum.extend([d, sum]);
            }
        }
        sx
    }
}

/// The little-endian f16 at byte `i` of `b`, as f32 (block scales in the kernels).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// A dot product of one quantized row with a [`SplitX`] input.
pub type SplitDotKernel = fn(&[u8], &SplitX) -> f32;

struct Kernels {
    name: &'static str,
    /// Dequantizers by type (the types without one use the scalar path).
    dequant: Vec<(GgmlType, Kernel)>,
    dot_q4_1: Option<DotKernel>,
    dot_q8_0: Option<DotKernel>,
    /// Q4_1 and Q8_0 · x with AVX512-VNNI byte dot products on the 16-bit split input.
    split_dot_q4_1: Option<SplitDotKernel>,
    split_dot_q8_0: Option<SplitDotKernel>,
    split_dot_q4_k: Option<SplitDotKernel>,
    split_dot_q6_k: Option<SplitDotKernel>,
    /// Whose split kernels those are (the four-row kernels come from the same set).
    split: Option<SplitSet>,
}

/// The instruction sets with split-input kernels.
#[derive(Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum SplitSet {
    /// AVX512-VNNI's `vpdpbusd` on the input's high and low bytes.
    Vnni,
    /// AVX2's `vpmaddwd` on 16-bit codes.
    Avx2,
}

/// The AVX2 dequantizers (with F16C, which every AVX2 CPU has in practice: the block
/// scales convert in one instruction; without it, the scalar set).
#[cfg(target_arch = "x86_64")]
fn avx2_set() -> Vec<(GgmlType, Kernel)> {
    if !std::arch::is_x86_feature_detected!("f16c") {
        return Vec::new();
    }
    let mut v: Vec<(GgmlType, Kernel)> = vec![
        (GgmlType::BF16, x86::bf16),
        (GgmlType::Q4_0, x86::q4_0),
        (GgmlType::Q4_1, x86::q4_1),
        (GgmlType::Q5_0, x86::q5_0),
        (GgmlType::Q5_1, x86::q5_1),
        (GgmlType::Q8_0, x86::q8_0),
        (GgmlType::Q2_K, x86::q2_k),
        (GgmlType::Q3_K, x86::q3_k),
        (GgmlType::Q4_K, x86::q4_k),
        (GgmlType::Q5_K, x86::q5_k),
        (GgmlType::Q6_K, x86::q6_k),
    ];
    v.push((GgmlType::F16, x86::f16));
    v
}

/// The AVX-512 dequantizers (where written; the AVX2 set fills the other types).
#[cfg(target_arch = "x86_64")]
fn avx512_set() -> Vec<(GgmlType, Kernel)> {
    vec![(GgmlType::Q4_0, x86::q4_0_512), (GgmlType::Q4_1, x86::q4_1_512), (GgmlType::Q8_0, x86::q8_0_512)]
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let wanted = std::env::var("EDGELORA_SIMD").ok();
        let scalar = Kernels { name: "scalar", dequant: Vec::new(), dot_q4_1: None, dot_q8_0: None, split_dot_q4_1: None, split_dot_q8_0: None, split_dot_q4_k: None, split_dot_q6_k: None, split: None };
        if wanted.as_deref() == Some("scalar") {
            return scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = wanted.as_deref() == Some("avx512")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            if std::arch::is_x86_feature_detected!("avx2") {
                let fma = std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c");
                let dot_q4_1 = fma.then_some(x86::dot_q4_1 as DotKernel);
                let dot_q8_0 = fma.then_some(x86::dot_q8_0 as DotKernel);
                // The VNNI kernel unless the f32 ones were asked for (EDGELORA_SIMD=avx2).
                let vnni = wanted.as_deref() != Some("avx2")
                    && fma
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl");
                // Without VNNI (or with EDGELORA_SIMD=avx2-split), the same integer products
                // by `vpmaddwd` on 16-bit codes (AVX2).
                let avx2_split = fma && wanted.as_deref() != Some("avx2") && (!vnni || wanted.as_deref() == Some("avx2-split"));
                let (vnni, q4_1_split, q8_0_split) = if avx2_split {
                    (false, x86::split_dot_q4_1_avx2 as SplitDotKernel, x86::split_dot_q8_0_avx2 as SplitDotKernel)
                } else {
                    (vnni, x86::split_dot_q4_1 as SplitDotKernel, x86::split_dot_q8_0 as SplitDotKernel)
                };
                let split = if avx2_split { Some(SplitSet::Avx2) } else { vnni.then_some(SplitSet::Vnni) };
                let split_dot_q4_1 = split.map(|_| q4_1_split);
                let split_dot_q8_0 = split.map(|_| q8_0_split);
                let split_dot_q4_k = vnni.then_some(x86::split_dot_q4_k as SplitDotKernel);
                let split_dot_q6_k = vnni.then_some(x86::split_dot_q6_k as SplitDotKernel);
                if avx512 {
                    let mut dequant = avx512_set();
                    dequant.extend(avx2_set().into_iter().filter(|(t, _)| !avx512_set().iter().any(|(u, _)| u == t)));
                    return Kernels { name: "avx512", dequant, dot_q4_1, dot_q8_0, split_dot_q4_1, split_dot_q8_0, split_dot_q4_k, split_dot_q6_k, split };
                }
                return Kernels { name: "avx2", dequant: avx2_set(), dot_q4_1, dot_q8_0, split_dot_q4_1, split_dot_q8_0, split_dot_q4_k, split_dot_q6_k, split };
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Kernels { name: "neon", dequant: neon_set(), dot_q4_1: None, dot_q8_0: None, split_dot_q4_1: None, split_dot_q8_0: None, split_dot_q4_k: None, split_dot_q6_k: None, split: None };
        }
        scalar
    })
}

/// The NEON dequantizers (aarch64).
#[cfg(target_arch = "aarch64")]
fn neon_set() -> Vec<(GgmlType, Kernel)> {
    vec![
        (GgmlType::F16, neon::f16),
        (GgmlType::BF16, neon::bf16),
        (GgmlType::Q4_0, neon::q4_0),
        (GgmlType::Q4_1, neon::q4_1),
        (GgmlType::Q5_0, neon::q5_0),
        (GgmlType::Q5_1, neon::q5_1),
        (GgmlType::Q8_0, neon::q8_0),
        (GgmlType::Q2_K, neon::q2_k),
        (GgmlType::Q3_K, neon::q3_k),
        (GgmlType::Q4_K, neon::q4_k),
        (GgmlType::Q5_K, neon::q5_k),
        (GgmlType::Q6_K, neon::q6_k),
    ]
}

/// Which split-input kernels the dispatcher picked ("avx512vnni", "avx2"), if any.
pub fn selected_split() -> Option<&'static str> {
    kernels().split.map(|s| match s {
        SplitSet::Vnni => "avx512vnni",
        SplitSet::Avx2 => "avx2",
    })
}

/// The instruction set the dispatcher picked ("avx512", "avx2" or "scalar").
pub fn selected() -> &'static str {
    kernels().name
}

/// The SIMD kernel for `t`, if this CPU has one.
pub fn kernel(t: GgmlType) -> Option<Kernel> {
    kernels().dequant.iter().find(|(u, _)| *u == t).map(|(_, k)| *k)
}

/// Every SIMD dequantizer for `t` this CPU can run (the dispatcher uses the first), so
/// tests can check each against the scalar reference, not only the selected one.
pub fn all_kernels(t: GgmlType) -> Vec<(&'static str, Kernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let find = |set: Vec<(GgmlType, Kernel)>| set.into_iter().find(|(u, _)| *u == t).map(|(_, k)| k);
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
            v.extend(find(avx512_set()).map(|k| ("avx512", k)));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            v.extend(find(avx2_set()).map(|k| ("avx2", k)));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.extend(neon_set().into_iter().find(|(u, _)| *u == t).map(|(_, k)| ("neon", k)));
    }
    v
}

/// The split-input dot kernel for `t`, if this CPU has one (AVX512-VNNI: Q4_1, Q8_0, Q4_K,
/// Q6_K; AVX2 alone: Q4_1, Q8_0): exact integer products of the weight codes with the 16-bit input, so the result differs from
/// the f32 dot only by the input's rounding (≤ max|x_block| / 65278 per value).
pub fn split_dot_kernel(t: GgmlType) -> Option<SplitDotKernel> {
    match t {
        GgmlType::Q4_1 => kernels().split_dot_q4_1,
        GgmlType::Q8_0 => kernels().split_dot_q8_0,
        GgmlType::Q4_K => kernels().split_dot_q4_k,
        GgmlType::Q6_K => kernels().split_dot_q6_k,
        _ => None,
    }
}

/// Four consecutive rows of W (`row_bytes` each, back to back) · one [`SplitX`] input,
/// into `out`: the same integer products as [`SplitDotKernel`], two blocks per 512-bit
/// step, with the input's vectors loaded once for the four rows. Sums are in another
/// order than the one-row kernel's, so results agree with it up to float rounding.
pub type SplitDot4Kernel = fn(&[u8], usize, &SplitX, &mut [f32; 4]);

/// Four consecutive rows of W · several [`SplitX`] inputs: out[j] = what
/// [`SplitDot4Kernel`] gives for xs[j] (the same operations; each row's codes unpacked
/// once for up to four inputs).
pub type SplitDot4NKernel = fn(&[u8], usize, &[SplitX], &mut [[f32; 4]]);

/// The several-input four-row kernel for `t` (where [`split_dot4_kernel`] has one).
pub fn split_dot4n_kernel(t: GgmlType) -> Option<SplitDot4NKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        let k = kernels();
        match t {
            GgmlType::Q4_1 if k.split == Some(SplitSet::Vnni) => return Some(x86::split_dot4n_q4_1),
            GgmlType::Q8_0 if k.split == Some(SplitSet::Vnni) => return Some(x86::split_dot4n_q8_0),
            GgmlType::Q4_1 if k.split == Some(SplitSet::Avx2) => return Some(x86::split_dot4n_q4_1_avx2),
            GgmlType::Q8_0 if k.split == Some(SplitSet::Avx2) => return Some(x86::split_dot4n_q8_0_avx2),
            _ => {}
        }
    }
    let _ = t;
    None
}

/// The four-row split-input kernel for `t`, where the one-row one exists (AVX512-VNNI or
/// AVX2: Q4_1, Q8_0). The AVX2 ones give each row exactly the one-row kernel's value.
pub fn split_dot4_kernel(t: GgmlType) -> Option<SplitDot4Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        let k = kernels();
        match t {
            GgmlType::Q4_1 if k.split == Some(SplitSet::Vnni) => return Some(x86::split_dot4_q4_1),
            GgmlType::Q8_0 if k.split == Some(SplitSet::Vnni) => return Some(x86::split_dot4_q8_0),
            GgmlType::Q4_1 if k.split == Some(SplitSet::Avx2) => return Some(x86::split_dot4_q4_1_avx2),
            GgmlType::Q8_0 if k.split == Some(SplitSet::Avx2) => return Some(x86::split_dot4_q8_0_avx2),
            _ => {}
        }
    }
    let _ = t;
    None
}

/// Every split-input kernel for `t` this CPU can run, by name (the dispatcher picks one),
/// so tests can check each, not only the selected one.
pub fn all_split_dot_kernels(t: GgmlType) -> Vec<(&'static str, SplitDotKernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, SplitDotKernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &[&str]| {
            f.iter().all(|n| match *n {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
                "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                _ => false,
            })
        };
        if has(&["avx2", "fma", "f16c", "avx512bw", "avx512vnni", "avx512vl"]) {
            match t {
                GgmlType::Q4_1 => v.push(("avx512vnni", x86::split_dot_q4_1 as SplitDotKernel)),
                GgmlType::Q8_0 => v.push(("avx512vnni", x86::split_dot_q8_0 as SplitDotKernel)),
                GgmlType::Q4_K => v.push(("avx512vnni", x86::split_dot_q4_k as SplitDotKernel)),
                GgmlType::Q6_K => v.push(("avx512vnni", x86::split_dot_q6_k as SplitDotKernel)),
                _ => {}
            }
        }
        if has(&["avx2", "fma", "f16c"]) {
            match t {
                GgmlType::Q4_1 => v.push(("avx2", x86::split_dot_q4_1_avx2 as SplitDotKernel)),
                GgmlType::Q8_0 => v.push(("avx2", x86::split_dot_q8_0_avx2 as SplitDotKernel)),
                _ => {}
            }
        }
    }
    let _ = t;
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

    /// `$kernel::<N>` (a four-row kernel over N ≤ 4 inputs) on each group of up to four of
    /// `$xs`, into the matching `$out` entries: the several-input entry points. Expands to
    /// unsafe calls (the kernels need their instruction sets; the caller vouches for them).
    macro_rules! in_fours {
        ($kernel:ident, $rows:expr, $row_bytes:expr, $xs:expr, $out:expr) => {{
            assert_eq!($xs.len(), $out.len());
            for (x, o) in $xs.chunks(4).zip($out.chunks_mut(4)) {
                #[allow(unused_unsafe)]
                unsafe {
                    match (x, o) {
                        ([a, b, c, d], o) => $kernel::<4>($rows, $row_bytes, [a, b, c, d], o.try_into().expect("4")),
                        ([a, b, c], o) => $kernel::<3>($rows, $row_bytes, [a, b, c], o.try_into().expect("3")),
                        ([a, b], o) => $kernel::<2>($rows, $row_bytes, [a, b], o.try_into().expect("2")),
                        ([a], o) => $kernel::<1>($rows, $row_bytes, [a], o.try_into().expect("1")),
                        _ => unreachable!("chunks of 1 to 4"),
                    }
                }
            }
        }};
    }

    use super::f16_at;


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

    /// The two little-endian f16 at bytes 0..4 of `b` (a block's d and m, or d and the
    /// first codes), as f32, by F16C.
    #[inline]
    #[target_feature(enable = "f16c")]
    fn f16_pair(b: &[u8]) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    #[target_feature(enable = "avx2,f16c")]
    fn q4_1_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
            let (d, m) = f16_pair(b);
            let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
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

    #[target_feature(enable = "avx2,f16c")]
    fn q8_0_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_pair(b).0);
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

    /// Sum of the 8 lanes by shuffles (no round trip through memory).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_shuffle(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
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

    /// Σ q·x_q of 32 unsigned codes `q` with block `b` of the split input, as 8 float lanes
    /// (lane i: values 4i..4i+4): two `vpdpbusd` on the input's high and low signed bytes,
    /// 256·hi + lo exact in int32 before the conversion.
    ///
    /// # Safety
    /// `x.hi` and `x.lo` hold at least 32·(b + 1) values; the CPU has the enabled features.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vnni,avx512vl")]
    unsafe fn split_sum(q: __m256i, x: &super::SplitX, b: usize) -> __m256 {
        // SAFETY: 32 readable bytes at 32·b of hi and lo (the caller's contract).
        let (xh, xl) = unsafe { (_mm256_loadu_si256(x.hi.as_ptr().add(32 * b).cast()), _mm256_loadu_si256(x.lo.as_ptr().add(32 * b).cast())) };
        let th = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xh);
        let tl = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xl);
        _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32::<8>(th), tl))
    }

    /// Q4_1 row · 16-bit split x: per block, the 32 nibbles (unsigned bytes) meet the
    /// input's high and low signed bytes in two `vpdpbusd`, 256·hi + lo gives Σq·x_q in
    /// exact int32, scaled by d_w·d_x; the min's share m·Σx uses the exact block sums.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn split_dot_q4_1_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        let n_blocks = bytes.len() / 20;
        assert!(x.hi.len() >= 32 * n_blocks && x.lo.len() >= 32 * n_blocks && x.d.len() >= n_blocks && x.sums.len() >= n_blocks);
        let mask = _mm256_set1_epi8(0x0f);
        // Low nibbles stay in the lower 128 bits, the upper copy is shifted by 4.
        let shifts = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
        // One block: (Σq·x_q as 8 float lanes, [d, m] of the block).
        let block = |blk: &[u8], b: usize| -> (__m256, __m128) {
            // SAFETY: 16 readable bytes at 4 in the 20-byte block; unaligned load.
            let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.as_ptr().add(4).cast())) };
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]])));
            let q = _mm256_and_si256(_mm256_srlv_epi16(v, shifts), mask);
            // SAFETY: b < n_blocks, so 32·(b + 1) values of hi and lo (asserted above).
            (unsafe { split_sum(q, x, b) }, dm)
        };
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut m0, mut m1) = (0f32, 0f32);
        let step = |acc: &mut __m256, msum: &mut f32, blk: &[u8], b: usize| {
            let (t, dm) = block(blk, b);
            *acc = _mm256_fmadd_ps(t, _mm256_set1_ps(_mm_cvtss_f32(dm) * x.d[b]), *acc);
            *msum += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x.sums[b];
        };
        let mut pairs = bytes.chunks_exact(40);
        for (p, two) in pairs.by_ref().enumerate() {
            step(&mut acc0, &mut m0, &two[..20], 2 * p);
            step(&mut acc1, &mut m1, &two[20..], 2 * p + 1);
        }
        let rest = pairs.remainder();
        if rest.len() == 20 {
            step(&mut acc0, &mut m0, rest, n_blocks - 1);
        }
        hsum_shuffle(_mm256_add_ps(acc0, acc1)) + (m0 + m1)
    }

    /// Q8_0 row · 16-bit split x: `vpdpbusd` wants unsigned × signed bytes, so the input's
    /// bytes are offset by 128 here (hu = hi ^ 0x80 = hi + 128, likewise lu) and the offset is taken back
    /// with Σq (a third `vpdpbusd` against ones): Σq·x_q = 256·Σq·hu + Σq·lu − 32896·Σq.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
    fn split_dot_q8_0_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        let n_blocks = bytes.len() / 34;
        assert!(x.hi.len() >= 32 * n_blocks && x.lo.len() >= 32 * n_blocks && x.d.len() >= n_blocks);
        let ones = _mm256_set1_epi8(1);
        let flip = _mm256_set1_epi8(-128);
        let offset = _mm256_set1_epi32(32896);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (b, blk) in bytes.chunks_exact(34).enumerate() {
            // SAFETY: 32 readable bytes at 2 in the 34-byte block and at 32·b of hi, lo
            // (asserted above); unaligned loads.
            let (q, xh, xl) = unsafe {
                (_mm256_loadu_si256(blk.as_ptr().add(2).cast()), _mm256_loadu_si256(x.hi.as_ptr().add(32 * b).cast()), _mm256_loadu_si256(x.lo.as_ptr().add(32 * b).cast()))
            };
            let (xh, xl) = (_mm256_xor_si256(xh, flip), _mm256_xor_si256(xl, flip));
            let th = _mm256_dpbusd_epi32(_mm256_setzero_si256(), xh, q);
            let tl = _mm256_dpbusd_epi32(_mm256_setzero_si256(), xl, q);
            let ts = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
            let t = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32::<8>(th), tl), _mm256_mullo_epi32(ts, offset));
            let scale = _mm256_set1_ps(f16c_at(blk, 0) * x.d[b]);
            if b % 2 == 0 {
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, acc0);
            } else {
                acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, acc1);
            }
        }
        hsum_shuffle(_mm256_add_ps(acc0, acc1))
    }

    /// Q4_K row · 16-bit split x: each 32-value sub-block (6-bit scale sc, min m) is one
    /// 32-block of x: Σ = d·sc·d_x·Σq·x_q − dmin·m·Σx, the integer part by two `vpdpbusd`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn split_dot_q4_k_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        use crate::quant::reference::scale_min_k4;
        let n_super = bytes.len() / 144;
        assert!(x.hi.len() >= 256 * n_super && x.lo.len() >= 256 * n_super && x.d.len() >= 8 * n_super && x.sums.len() >= 8 * n_super);
        let mask = _mm256_set1_epi8(0x0f);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut msum = 0f32;
        for (sb, blk) in bytes.chunks_exact(144).enumerate() {
            let (d, dmin) = (f16c_at(blk, 0), f16c_at(blk, 2));
            let scales: &[u8; 12] = blk[4..16].try_into().expect("12 bytes");
            for n in 0..4 {
                // SAFETY: 32 readable bytes at 16 + 32n in the 144-byte block; unaligned load.
                let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * n).cast()) };
                let halves = [_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask)];
                for (i, qi) in halves.into_iter().enumerate() {
                    let b = 8 * sb + 2 * n + i;
                    let (sc, m) = scale_min_k4(2 * n + i, scales);
                    // SAFETY: b < 8·n_super, so 32·(b + 1) values of hi and lo (asserted above).
                    let t = unsafe { split_sum(qi, x, b) };
                    let scale = _mm256_set1_ps(d * f32::from(sc) * x.d[b]);
                    if i == 0 {
                        acc0 = _mm256_fmadd_ps(t, scale, acc0);
                    } else {
                        acc1 = _mm256_fmadd_ps(t, scale, acc1);
                    }
                    msum += dmin * f32::from(m) * x.sums[b];
                }
            }
        }
        hsum_shuffle(_mm256_add_ps(acc0, acc1)) - msum
    }

    pub fn split_dot_q4_k(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: selected only when AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL are available.
        unsafe { split_dot_q4_k_impl(bytes, x) }
    }

    /// Q6_K row · 16-bit split x: each 32-value quarter is one 32-block of x; the 6-bit
    /// codes enter `vpdpbusd` unsigned (q + 32) and the offset comes back as 32·Σx per
    /// 16-value scale group; lanes 0–3 / 4–7 of the int32 sums are the two groups.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn split_dot_q6_k_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        let n_super = bytes.len() / 210;
        assert!(x.hi.len() >= 256 * n_super && x.lo.len() >= 256 * n_super && x.d.len() >= 8 * n_super && x.sums16.len() >= 16 * n_super);
        let (mask4, mask2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut off = 0f32;
        for (sb, blk) in bytes.chunks_exact(210).enumerate() {
            let d = f16c_at(blk, 208);
            for n in 0..2 {
                // SAFETY: 32 readable bytes at 64n, 64n + 32 and 128 + 32n in the 210-byte
                // block; unaligned loads.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(blk.as_ptr().add(64 * n).cast()),
                        _mm256_loadu_si256(blk.as_ptr().add(64 * n + 32).cast()),
                        _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * n).cast()),
                    )
                };
                let lows = [_mm256_and_si256(ql0, mask4), _mm256_and_si256(ql1, mask4), _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), mask4), _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), mask4)];
                for (k, low) in lows.into_iter().enumerate() {
                    let high = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), mask2));
                    let q = _mm256_or_si256(low, high);
                    let b = 8 * sb + 4 * n + k;
                    // SAFETY: b < 8·n_super, so 32·(b + 1) values of hi and lo (asserted above).
                    let t = unsafe { split_sum(q, x, b) };
                    let (s0, s1) = (f32::from(blk[192 + 8 * n + 2 * k] as i8), f32::from(blk[192 + 8 * n + 2 * k + 1] as i8));
                    let scale = _mm256_set_m128(_mm_set1_ps(d * s1 * x.d[b]), _mm_set1_ps(d * s0 * x.d[b]));
                    if k % 2 == 0 {
                        acc0 = _mm256_fmadd_ps(t, scale, acc0);
                    } else {
                        acc1 = _mm256_fmadd_ps(t, scale, acc1);
                    }
                    off += 32.0 * d * (s0 * x.sums16[2 * b] + s1 * x.sums16[2 * b + 1]);
                }
            }
        }
        hsum_shuffle(_mm256_add_ps(acc0, acc1)) - off
    }

    pub fn split_dot_q6_k(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: selected only when AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL are available.
        unsafe { split_dot_q6_k_impl(bytes, x) }
    }

    /// A Q4_1 block's 32 codes as 16-bit lanes: elements 0..16 (low nibbles) and 16..32
    /// (high nibbles).
    ///
    /// # Safety
    /// `blk` points at a 20-byte Q4_1 block; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_1_codes16(blk: *const u8) -> (__m256i, __m256i) {
        // SAFETY: 16 readable bytes at 4 in the block (the caller's contract).
        let v = unsafe { _mm_loadu_si128(blk.add(4).cast()) };
        let mask = _mm_set1_epi8(0x0f);
        (_mm256_cvtepu8_epi16(_mm_and_si128(v, mask)), _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(v), mask)))
    }

    /// A Q8_0 block's 32 codes as 16-bit lanes (elements 0..16, 16..32).
    ///
    /// # Safety
    /// `blk` points at a 34-byte Q8_0 block; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q8_0_codes16(blk: *const u8) -> (__m256i, __m256i) {
        // SAFETY: 32 readable bytes at 2 in the block (the caller's contract).
        unsafe { (_mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2).cast())), _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18).cast()))) }
    }

    /// Σ w·q over one block in 8 int32 lanes: the weight codes (16-bit lanes) times the
    /// input's 16-bit codes by `vpmaddwd`, exact (|w| ≤ 128, |q| ≤ 32639: a pair's sum is
    /// within 2³¹).
    ///
    /// # Safety
    /// 32 readable codes at `x`; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_sum16(w: (__m256i, __m256i), x: *const i16) -> __m256i {
        // SAFETY: 32 readable i16 at x (the caller's contract); unaligned loads.
        let (x0, x1) = unsafe { (_mm256_loadu_si256(x.cast()), _mm256_loadu_si256(x.add(16).cast())) };
        _mm256_add_epi32(_mm256_madd_epi16(w.0, x0), _mm256_madd_epi16(w.1, x1))
    }

    /// One Q4_1 row (`n_blocks` blocks from `row`) · N 16-bit split inputs without VNNI:
    /// each block's codes widened to 16 bits once, meeting each input's 16-bit codes in
    /// two `vpmaddwd` (exact int32 sums), then d_w·d_x in f32, plus m_w·Σx. An input's
    /// value does not depend on N (the one-row and four-row kernels both run this).
    ///
    /// # Safety
    /// `row` points at `n_blocks` 20-byte blocks; every input holds `32·n_blocks` codes and
    /// `n_blocks` scales and sums; the CPU has AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_row_avx2<const N: usize>(row: *const u8, n_blocks: usize, xs: [&super::SplitX; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut msum = [0f32; N];
        for b in 0..n_blocks {
            // SAFETY: block b lies within the row, its scales in its first 4 bytes (the
            // caller's contract).
            let (w, dm) = unsafe {
                let blk = row.add(20 * b);
                (q4_1_codes16(blk), _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned())))
            };
            let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            for j in 0..N {
                let x = xs[j];
                // SAFETY: 32 codes at 32·b of x.q, values at b of d and sums (the caller's
                // contract).
                let (t, dx, sum) = unsafe { (block_sum16(w, x.q.as_ptr().add(32 * b)), *x.d.get_unchecked(b), *x.sums.get_unchecked(b)) };
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d * dx), acc[j]);
                msum[j] += m * sum;
            }
        }
        std::array::from_fn(|j| hsum_shuffle(acc[j]) + msum[j])
    }

    /// One Q8_0 row · N split inputs without VNNI, as [`q4_1_row_avx2`]: exact for every
    /// code (−128 included).
    ///
    /// # Safety
    /// `row` points at `n_blocks` 34-byte blocks; every input holds `32·n_blocks` codes and
    /// `n_blocks` scales; the CPU has AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_row_avx2<const N: usize>(row: *const u8, n_blocks: usize, xs: [&super::SplitX; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..n_blocks {
            // SAFETY: block b lies within the row (the caller's contract).
            let (w, dm) = unsafe {
                let blk = row.add(34 * b);
                (q8_0_codes16(blk), _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned())))
            };
            let d = _mm_cvtss_f32(dm);
            for j in 0..N {
                let x = xs[j];
                // SAFETY: 32 codes at 32·b of x.q, a value at b of d (the caller's contract).
                let (t, dx) = unsafe { (block_sum16(w, x.q.as_ptr().add(32 * b)), *x.d.get_unchecked(b)) };
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d * dx), acc[j]);
            }
        }
        std::array::from_fn(|j| hsum_shuffle(acc[j]))
    }

    /// Q4_1 row · 16-bit split x without VNNI ([`q4_1_row_avx2`] on one input).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn split_dot_q4_1_avx2_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        let n_blocks = bytes.len() / 20;
        assert!(x.q.len() >= 32 * n_blocks && x.d.len() >= n_blocks && x.sums.len() >= n_blocks);
        // SAFETY: n_blocks whole blocks in bytes; the input's lengths asserted.
        unsafe { q4_1_row_avx2::<1>(bytes.as_ptr(), n_blocks, [x])[0] }
    }

    /// Q8_0 row · 16-bit split x without VNNI ([`q8_0_row_avx2`] on one input).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn split_dot_q8_0_avx2_impl(bytes: &[u8], x: &super::SplitX) -> f32 {
        let n_blocks = bytes.len() / 34;
        assert!(x.q.len() >= 32 * n_blocks && x.d.len() >= n_blocks);
        // SAFETY: as above.
        unsafe { q8_0_row_avx2::<1>(bytes.as_ptr(), n_blocks, [x])[0] }
    }

    /// Four Q4_1 rows · N split inputs without VNNI (N ≤ 4 per call): [`q4_1_row_avx2`] on
    /// each row, one after another (a block of every row in turn measured slower while
    /// decoding, where W streams from memory: 60–64 vs 72–77 tokens/s), so each value
    /// equals the one-row kernel's to the bit, whatever N and whichever rows it comes with.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn split_dot4_q4_1_avx2_impl<const N: usize>(rows: &[u8], row_bytes: usize, xs: [&super::SplitX; N], out: &mut [[f32; 4]; N]) {
        let n_blocks = row_bytes / 20;
        assert!(row_bytes == 20 * n_blocks && rows.len() >= 4 * row_bytes);
        for x in xs {
            assert!(x.q.len() >= 32 * n_blocks && x.d.len() >= n_blocks && x.sums.len() >= n_blocks);
        }
        for r in 0..4 {
            // SAFETY: row r's n_blocks blocks lie within the 4·row_bytes asserted above; the
            // inputs' lengths asserted.
            let v = unsafe { q4_1_row_avx2(rows.as_ptr().add(r * row_bytes), n_blocks, xs) };
            for j in 0..N {
                out[j][r] = v[j];
            }
        }
    }

    /// Four Q8_0 rows · N split inputs without VNNI, as [`split_dot4_q4_1_avx2_impl`].
    #[target_feature(enable = "avx2,fma,f16c")]
    fn split_dot4_q8_0_avx2_impl<const N: usize>(rows: &[u8], row_bytes: usize, xs: [&super::SplitX; N], out: &mut [[f32; 4]; N]) {
        let n_blocks = row_bytes / 34;
        assert!(row_bytes == 34 * n_blocks && rows.len() >= 4 * row_bytes);
        for x in xs {
            assert!(x.q.len() >= 32 * n_blocks && x.d.len() >= n_blocks);
        }
        for r in 0..4 {
            // SAFETY: as above.
            let v = unsafe { q8_0_row_avx2(rows.as_ptr().add(r * row_bytes), n_blocks, xs) };
            for j in 0..N {
                out[j][r] = v[j];
            }
        }
    }

    pub fn split_dot4_q4_1_avx2(rows: &[u8], row_bytes: usize, x: &super::SplitX, out: &mut [f32; 4]) {
        let mut o = [[0f32; 4]; 1];
        // SAFETY: selected only when AVX2, FMA and F16C are available.
        unsafe { split_dot4_q4_1_avx2_impl::<1>(rows, row_bytes, [x], &mut o) };
        *out = o[0];
    }

    pub fn split_dot4_q8_0_avx2(rows: &[u8], row_bytes: usize, x: &super::SplitX, out: &mut [f32; 4]) {
        let mut o = [[0f32; 4]; 1];
        // SAFETY: as above.
        unsafe { split_dot4_q8_0_avx2_impl::<1>(rows, row_bytes, [x], &mut o) };
        *out = o[0];
    }

    /// [`split_dot4_q4_1_avx2`] for several inputs, up to four per pass.
    pub fn split_dot4n_q4_1_avx2(rows: &[u8], row_bytes: usize, xs: &[super::SplitX], out: &mut [[f32; 4]]) {
        // SAFETY: selected only where the kernel's instruction sets are available.
        in_fours!(split_dot4_q4_1_avx2_impl, rows, row_bytes, xs, out)
    }

    /// [`split_dot4_q8_0_avx2`] for several inputs, up to four per pass.
    pub fn split_dot4n_q8_0_avx2(rows: &[u8], row_bytes: usize, xs: &[super::SplitX], out: &mut [[f32; 4]]) {
        // SAFETY: selected only where the kernel's instruction sets are available.
        in_fours!(split_dot4_q8_0_avx2_impl, rows, row_bytes, xs, out)
    }

    pub fn split_dot_q4_1_avx2(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: selected only when AVX2, FMA and F16C are available.
        unsafe { split_dot_q4_1_avx2_impl(bytes, x) }
    }

    pub fn split_dot_q8_0_avx2(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: as above.
        unsafe { split_dot_q8_0_avx2_impl(bytes, x) }
    }

    /// The input's two 32-blocks `b`, `b + 1` as 64 high and 64 low signed bytes.
    ///
    /// # Safety
    /// `x.hi` and `x.lo` hold at least 32·(b + 2) values; the CPU has AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn split_pair(x: &super::SplitX, b: usize) -> (__m512i, __m512i) {
        // SAFETY: 64 readable bytes at 32·b of hi and lo (the caller's contract).
        unsafe { (_mm512_loadu_si512(x.hi.as_ptr().add(32 * b).cast()), _mm512_loadu_si512(x.lo.as_ptr().add(32 * b).cast())) }
    }

    /// 256·Σ(q·hi) + Σ(q·lo) per 4 bytes, for unsigned codes `q` against a pair of blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn split_pair_sum(q: __m512i, xh: __m512i, xl: __m512i) -> __m512i {
        let th = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xh);
        let tl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xl);
        _mm512_add_epi32(_mm512_slli_epi32::<8>(th), tl)
    }

    /// Four Q4_1 rows · N 16-bit split inputs, two blocks per step: each row's two 16-byte
    /// code runs are spread to 64 nibbles (block b in the low 256 bits, b + 1 in the high)
    /// once, and meet each input's high and low bytes in two 512-bit `vpdpbusd`; the
    /// scales come as one vector [d_w·d_x, m_w·Σx] per block (F16C on both blocks' [d, m]
    /// at once). Every (row, input) pair gets the same operations in the same order
    /// whatever N is: an input's results do not depend on the others (N = 1 is the
    /// decoding kernel).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn split_dot4_q4_1_impl<const N: usize>(rows: &[u8], row_bytes: usize, xs: [&super::SplitX; N], out: &mut [[f32; 4]; N]) {
        let n_blocks = row_bytes / 20;
        assert!(row_bytes == 20 * n_blocks && rows.len() >= 4 * row_bytes);
        for x in xs {
            assert!(x.hi.len() >= 32 * n_blocks && x.lo.len() >= 32 * n_blocks && x.dsum.len() >= 2 * n_blocks && x.d.len() >= n_blocks && x.sums.len() >= n_blocks);
        }
        let mask = _mm512_set1_epi8(0x0f);
        // 16-bit shift counts: 0 for the first copy of each block's codes, 4 for the second.
        let shifts = _mm512_set_epi64(0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0, 0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0);
        // Lanes 0–7 take element 0 of [dA·dxA, mA·ΣxA, dB·dxB, mB·ΣxB], lanes 8–15 element 2.
        let pick = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [[_mm512_setzero_ps(); N]; 4];
        let mut macc = [[_mm_setzero_ps(); N]; 4];
        let pairs = n_blocks / 2;
        let base = rows.as_ptr();
        for p in 0..pairs {
            let b = 2 * p;
            let mut xh = [_mm512_setzero_si512(); N];
            let mut xl = [_mm512_setzero_si512(); N];
            let mut xv = [_mm_setzero_ps(); N];
            for j in 0..N {
                // SAFETY: b + 1 < n_blocks (asserted lengths above); 4 readable floats at
                // 2b of dsum (2·n_blocks ≥ 2b + 4).
                unsafe {
                    (xh[j], xl[j]) = split_pair(xs[j], b);
                    xv[j] = _mm_loadu_ps(xs[j].dsum.as_ptr().add(2 * b));
                }
            }
            for r in 0..4 {
                // SAFETY: row r's blocks b and b + 1 lie within rows (4·row_bytes asserted):
                // 16 code bytes at 4 and 24 past 20b, 4 scale bytes at 20b and 20b + 20.
                let (v, dm) = unsafe {
                    let blk = base.add(r * row_bytes + 20 * b);
                    let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(4).cast()));
                    let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(24).cast()));
                    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    let dm = _mm_unpacklo_epi32(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()), _mm_cvtsi32_si128(blk.add(20).cast::<i32>().read_unaligned()));
                    (v, dm)
                };
                let q = _mm512_and_si512(_mm512_srlv_epi16(v, shifts), mask);
                let dm = _mm_cvtph_ps(dm);
                for j in 0..N {
                    let t = _mm512_cvtepi32_ps(split_pair_sum(q, xh[j], xl[j]));
                    let prod = _mm_mul_ps(dm, xv[j]);
                    acc[r][j] = _mm512_fmadd_ps(t, _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(prod)), acc[r][j]);
                    macc[r][j] = _mm_add_ps(macc[r][j], prod);
                }
            }
        }
        for j in 0..N {
            for r in 0..4 {
                // The m·Σx terms sit in lanes 1 and 3.
                let m = macc[r][j];
                let mut total = _mm512_reduce_add_ps(acc[r][j]) + _mm_cvtss_f32(_mm_movehdup_ps(m)) + _mm_cvtss_f32(_mm_movehdup_ps(_mm_movehl_ps(m, m)));
                if n_blocks % 2 == 1 {
                    total += q4_1_block(&rows[r * row_bytes + 20 * (n_blocks - 1)..r * row_bytes + row_bytes], xs[j], n_blocks - 1);
                }
                out[j][r] = total;
            }
        }
    }

    /// Four Q8_0 rows · N 16-bit split inputs, two blocks per step: the signed codes offset
    /// by 128 (unsigned for `vpdpbusd`) once per row, the offset's share 128·Σx_q per 4
    /// values taken back exactly in int32 per input. As the Q4_1 kernel: the same
    /// operations per (row, input) pair whatever N is.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn split_dot4_q8_0_impl<const N: usize>(rows: &[u8], row_bytes: usize, xs: [&super::SplitX; N], out: &mut [[f32; 4]; N]) {
        let n_blocks = row_bytes / 34;
        assert!(row_bytes == 34 * n_blocks && rows.len() >= 4 * row_bytes);
        for x in xs {
            assert!(x.hi.len() >= 32 * n_blocks && x.lo.len() >= 32 * n_blocks && x.qsum4.len() >= 8 * n_blocks && x.d.len() >= n_blocks);
        }
        let flip = _mm512_set1_epi8(-128);
        // Lanes 0–7 take element 0 of [dA·dxA, dB·dxB], lanes 8–15 element 1.
        let pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [[_mm512_setzero_ps(); N]; 4];
        let pairs = n_blocks / 2;
        let base = rows.as_ptr();
        for p in 0..pairs {
            let b = 2 * p;
            let mut xh = [_mm512_setzero_si512(); N];
            let mut xl = [_mm512_setzero_si512(); N];
            let mut off = [_mm512_setzero_si512(); N];
            let mut dx = [_mm_setzero_ps(); N];
            for j in 0..N {
                // SAFETY: b + 1 < n_blocks: 64 values of hi, lo and 16 of qsum4 at 8b, two of
                // d at b (lengths asserted above).
                unsafe {
                    (xh[j], xl[j]) = split_pair(xs[j], b);
                    off[j] = _mm512_loadu_si512(xs[j].qsum4.as_ptr().add(8 * b).cast());
                    dx[j] = _mm_castpd_ps(_mm_load_sd(xs[j].d.as_ptr().add(b).cast()));
                }
            }
            for r in 0..4 {
                // SAFETY: row r's blocks b and b + 1 lie within rows (4·row_bytes asserted):
                // 32 code bytes at 2 and 36 past 34b, the scales at 34b and 34b + 34.
                let (v, dw) = unsafe {
                    let blk = base.add(r * row_bytes + 34 * b);
                    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(blk.add(2).cast())), _mm256_loadu_si256(blk.add(36).cast()));
                    let d2 = i32::from(blk.cast::<u16>().read_unaligned()) | (i32::from(blk.add(34).cast::<u16>().read_unaligned()) << 16);
                    (v, _mm_cvtph_ps(_mm_cvtsi32_si128(d2)))
                };
                let v = _mm512_xor_si512(v, flip);
                for j in 0..N {
                    let t = _mm512_sub_epi32(split_pair_sum(v, xh[j], xl[j]), off[j]);
                    let scale = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(_mm_mul_ps(dw, dx[j])));
                    acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), scale, acc[r][j]);
                }
            }
        }
        for j in 0..N {
            for r in 0..4 {
                let mut total = _mm512_reduce_add_ps(acc[r][j]);
                if n_blocks % 2 == 1 {
                    total += q8_0_block(&rows[r * row_bytes + 34 * (n_blocks - 1)..r * row_bytes + row_bytes], xs[j], n_blocks - 1);
                }
                out[j][r] = total;
            }
        }
    }

    /// One Q4_1 block (20 bytes) · block `b` of the split input (an odd count's last).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn q4_1_block(blk: &[u8], x: &super::SplitX, b: usize) -> f32 {
        assert!(blk.len() == 20 && x.hi.len() >= 32 * (b + 1) && x.lo.len() >= 32 * (b + 1));
        let shifts = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
        // SAFETY: 16 readable bytes at 4 in the 20-byte block (asserted); unaligned load.
        let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.as_ptr().add(4).cast())) };
        let q = _mm256_and_si256(_mm256_srlv_epi16(v, shifts), _mm256_set1_epi8(0x0f));
        // SAFETY: 32·(b + 1) values of hi and lo (asserted).
        let t = unsafe { split_sum(q, x, b) };
        let (d, m) = f16_pair(blk);
        hsum_shuffle(t) * (d * x.d[b]) + m * x.sums[b]
    }

    /// One Q8_0 block (34 bytes) · block `b` of the split input (an odd count's last).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn q8_0_block(blk: &[u8], x: &super::SplitX, b: usize) -> f32 {
        assert!(blk.len() == 34 && x.hi.len() >= 32 * (b + 1) && x.lo.len() >= 32 * (b + 1) && x.qsum4.len() >= 8 * (b + 1) && x.d.len() > b);
        // Codes offset to unsigned, as in the pair loop; the offset's share from qsum4.
        // SAFETY: 32 readable bytes at 2 in the block and at 32·b of hi and lo, 8 values
        // of qsum4 at 8b (x is a whole number of blocks past b); unaligned loads.
        let (q, off) = unsafe { (_mm256_loadu_si256(blk.as_ptr().add(2).cast()), _mm256_loadu_si256(x.qsum4.as_ptr().add(8 * b).cast())) };
        let q = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
        // SAFETY: as above.
        let (xh, xl) = unsafe { (_mm256_loadu_si256(x.hi.as_ptr().add(32 * b).cast()), _mm256_loadu_si256(x.lo.as_ptr().add(32 * b).cast())) };
        let th = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xh);
        let tl = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xl);
        let t = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32::<8>(th), tl), off);
        hsum_shuffle(_mm256_cvtepi32_ps(t)) * (f16_pair(blk).0 * x.d[b])
    }

    pub fn split_dot4_q4_1(rows: &[u8], row_bytes: usize, x: &super::SplitX, out: &mut [f32; 4]) {
        let mut o = [[0f32; 4]; 1];
        // SAFETY: selected only when AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL are available.
        unsafe { split_dot4_q4_1_impl::<1>(rows, row_bytes, [x], &mut o) };
        *out = o[0];
    }

    pub fn split_dot4_q8_0(rows: &[u8], row_bytes: usize, x: &super::SplitX, out: &mut [f32; 4]) {
        let mut o = [[0f32; 4]; 1];
        // SAFETY: as above.
        unsafe { split_dot4_q8_0_impl::<1>(rows, row_bytes, [x], &mut o) };
        *out = o[0];
    }

    /// [`split_dot4_q4_1`] for several inputs: groups of up to 4 share each row's unpacked
    /// codes; out[j] = the four rows · xs[j], as the one-input call gives it.
    pub fn split_dot4n_q4_1(rows: &[u8], row_bytes: usize, xs: &[super::SplitX], out: &mut [[f32; 4]]) {
        // SAFETY: selected only where the kernel's instruction sets are available.
        in_fours!(split_dot4_q4_1_impl, rows, row_bytes, xs, out)
    }

    /// [`split_dot4_q8_0`] for several inputs, as [`split_dot4n_q4_1`].
    pub fn split_dot4n_q8_0(rows: &[u8], row_bytes: usize, xs: &[super::SplitX], out: &mut [[f32; 4]]) {
        // SAFETY: selected only where the kernel's instruction sets are available.
        in_fours!(split_dot4_q8_0_impl, rows, row_bytes, xs, out)
    }

    pub fn split_dot_q8_0(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: selected only when AVX2, FMA, F16C, AVX-512 F, VNNI and VL are available.
        unsafe { split_dot_q8_0_impl(bytes, x) }
    }

    pub fn split_dot_q4_1(bytes: &[u8], x: &super::SplitX) -> f32 {
        // SAFETY: selected only when AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL are available.
        unsafe { split_dot_q4_1_impl(bytes, x) }
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

    // ---- the other formats (AVX2), each the scalar reference's operations in its order ----

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load32(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: 32 readable bytes (asserted); unaligned load.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store8(out: &mut [f32], i: usize, v: __m256) {
        assert!(i + 8 <= out.len());
        // SAFETY: 8 writable floats at i (asserted); unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), v) };
    }

    /// 32 unsigned bytes → 32 floats, in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn u8x32(v: __m256i) -> [__m256; 4] {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let cvt = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
        [cvt(lo), cvt(_mm_srli_si128::<8>(lo)), cvt(hi), cvt(_mm_srli_si128::<8>(hi))]
    }

    /// 32 signed bytes → 32 floats, in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn i8x32(v: __m256i) -> [__m256; 4] {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let cvt = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
        [cvt(lo), cvt(_mm_srli_si128::<8>(lo)), cvt(hi), cvt(_mm_srli_si128::<8>(hi))]
    }

    /// Bytes of `v` shifted right by `shift` bits, masked with `mask` (per byte).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn bits(v: __m256i, shift: i32, mask: i8) -> __m256i {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask))
    }

    /// Per byte: `add` where `v & bit` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn where_set(v: __m256i, bit: u8, add: i8) -> __m256i {
        let clear = _mm256_cmpeq_epi8(_mm256_and_si256(v, _mm256_set1_epi8(bit as i8)), _mm256_setzero_si256());
        _mm256_andnot_si256(clear, _mm256_set1_epi8(add))
    }

    #[target_feature(enable = "avx2,f16c")]
    fn f16_f16c(bytes: &[u8], out: &mut [f32]) {
        let mut done = 0;
        for (b, y) in bytes.chunks_exact(16).zip(out.chunks_exact_mut(8)) {
            // SAFETY: 16 readable bytes (the chunk); unaligned load.
            let h = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
            store8(y, 0, _mm256_cvtph_ps(h));
            done += 8;
        }
        for (i, y) in out.iter_mut().enumerate().skip(done) {
            *y = f16_at(bytes, 2 * i);
        }
    }

    #[target_feature(enable = "avx2")]
    fn bf16_avx2(bytes: &[u8], out: &mut [f32]) {
        let mut done = 0;
        for (b, y) in bytes.chunks_exact(16).zip(out.chunks_exact_mut(8)) {
            // SAFETY: 16 readable bytes (the chunk); unaligned load.
            let h = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
            store8(y, 0, _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h))));
            done += 8;
        }
        for (i, y) in out.iter_mut().enumerate().skip(done) {
            *y = half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32();
        }
    }

    /// Q5_0/Q5_1: the 32 five-bit values of a block as i32 lanes (low nibbles from `qs`,
    /// bit j of `qh` as bit 4 of value j).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn five_bits(qs: &[u8], qh: u32) -> [__m256i; 4] {
        assert!(qs.len() >= 16);
        // SAFETY: 16 readable bytes (asserted); unaligned load.
        let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
        let nib = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        let qh = _mm256_set1_epi32(qh as i32);
        let one = _mm256_set1_epi32(1);
        let mut out = [_mm256_setzero_si256(); 4];
        for (k, o) in out.iter_mut().enumerate() {
            let j = 8 * k as i32;
            let shifts = _mm256_setr_epi32(j, j + 1, j + 2, j + 3, j + 4, j + 5, j + 6, j + 7);
            let h = _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srlv_epi32(qh, shifts), one));
            *o = _mm256_or_si256(_mm256_cvtepu8_epi32(nib[k]), h);
        }
        out
    }

    #[target_feature(enable = "avx2")]
    fn q5_0_avx2(bytes: &[u8], out: &mut [f32]) {
        let sixteen = _mm256_set1_epi32(16);
        for (b, y) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (k, q) in five_bits(&b[6..22], qh).into_iter().enumerate() {
                store8(y, 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, sixteen)), d));
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn q5_1_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
            let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(f16_at(b, 2)));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for (k, q) in five_bits(&b[8..24], qh).into_iter().enumerate() {
                store8(y, 8 * k, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d), m));
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn q2_k_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(84).zip(out.chunks_exact_mut(256)) {
            let (d, min) = (f16_at(b, 80), f16_at(b, 82));
            for n in 0..2 {
                let q = load32(&b[16 + 32 * n..]);
                for s in 0..4 {
                    let v = u8x32(bits(q, 2 * s as i32, 3));
                    for half in 0..2 {
                        let sc = b[n * 8 + s * 2 + half];
                        let dl = _mm256_set1_ps(d * f32::from(sc & 0x0f));
                        let ml = _mm256_set1_ps(min * f32::from(sc >> 4));
                        let at = n * 128 + s * 32 + half * 16;
                        store8(y, at, _mm256_sub_ps(_mm256_mul_ps(v[2 * half], dl), ml));
                        store8(y, at + 8, _mm256_sub_ps(_mm256_mul_ps(v[2 * half + 1], dl), ml));
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn q3_k_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(110).zip(out.chunks_exact_mut(256)) {
            let d_all = f16_at(b, 108);
            let scales = crate::quant::reference::q3_k_scales(b[96..108].try_into().expect("12 bytes"));
            let hmask = load32(&b[0..32]);
            for n in 0..2 {
                let q = load32(&b[32 + 32 * n..]);
                for s in 0..4 {
                    // value − 4 where the high bit is clear
                    let four = _mm256_sub_epi8(_mm256_set1_epi8(4), where_set(hmask, 1 << (4 * n + s), 4));
                    let v = i8x32(_mm256_sub_epi8(bits(q, 2 * s as i32, 3), four));
                    for half in 0..2 {
                        let dl = _mm256_set1_ps(d_all * f32::from(scales[n * 8 + s * 2 + half] as i32 as i16 - 32));
                        let at = n * 128 + s * 32 + half * 16;
                        store8(y, at, _mm256_mul_ps(dl, v[2 * half]));
                        store8(y, at + 8, _mm256_mul_ps(dl, v[2 * half + 1]));
                    }
                }
            }
        }
    }

    /// Q4_K and Q5_K share the layout of scales and nibbles; Q5_K adds a fifth bit from
    /// `qh` (bit 2n of qh[l] for the low nibbles of group n, bit 2n+1 for the high ones).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn k4_block(d: f32, min: f32, scales: &[u8; 12], qs: &[u8], qh: Option<__m256i>, y: &mut [f32]) {
        use crate::quant::reference::scale_min_k4;
        for n in 0..4 {
            let q = load32(&qs[32 * n..]);
            let mut halves = [bits(q, 0, 0x0f), bits(q, 4, 0x0f)];
            if let Some(h) = qh {
                halves[0] = _mm256_add_epi8(halves[0], where_set(h, 1 << (2 * n), 16));
                halves[1] = _mm256_add_epi8(halves[1], where_set(h, 2 << (2 * n), 16));
            }
            for (i, half) in halves.into_iter().enumerate() {
                let (sc, m) = scale_min_k4(2 * n + i, scales);
                let dl = _mm256_set1_ps(d * f32::from(sc));
                let ml = _mm256_set1_ps(min * f32::from(m));
                for (k, v) in u8x32(half).into_iter().enumerate() {
                    store8(y, 64 * n + 32 * i + 8 * k, _mm256_sub_ps(_mm256_mul_ps(dl, v), ml));
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn q4_k_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
            k4_block(f16_at(b, 0), f16_at(b, 2), b[4..16].try_into().expect("12 bytes"), &b[16..144], None, y);
        }
    }

    #[target_feature(enable = "avx2")]
    fn q5_k_avx2(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(176).zip(out.chunks_exact_mut(256)) {
            k4_block(f16_at(b, 0), f16_at(b, 2), b[4..16].try_into().expect("12 bytes"), &b[48..176], Some(load32(&b[16..48])), y);
        }
    }

    #[target_feature(enable = "avx2")]
    fn q6_k_avx2(bytes: &[u8], out: &mut [f32]) {
        let thirty_two = _mm256_set1_epi8(32);
        for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql0, ql1) = (load32(&b[64 * n..]), load32(&b[64 * n + 32..]));
                let qh = load32(&b[128 + 32 * n..]);
                // quarter k: low 4 bits from ql (low or high nibbles), high 2 from qh bits 2k..2k+2
                let lows = [bits(ql0, 0, 0x0f), bits(ql1, 0, 0x0f), bits(ql0, 4, 0x0f), bits(ql1, 4, 0x0f)];
                for (k, low) in lows.into_iter().enumerate() {
                    let high = _mm256_slli_epi16::<4>(bits(qh, 2 * k as i32, 3));
                    let v = i8x32(_mm256_sub_epi8(_mm256_or_si256(low, high), thirty_two));
                    for half in 0..2 {
                        let sc = b[192 + 8 * n + 2 * k + half] as i8;
                        let ds = _mm256_set1_ps(d * f32::from(sc));
                        let at = 128 * n + 32 * k + 16 * half;
                        store8(y, at, _mm256_mul_ps(ds, v[2 * half]));
                        store8(y, at + 8, _mm256_mul_ps(ds, v[2 * half + 1]));
                    }
                }
            }
        }
    }

    pub fn f16(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: selected only when AVX2 and F16C are available.
        unsafe { f16_f16c(bytes, out) }
    }
    pub fn bf16(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: selected only when AVX2 is available (as every entry point below).
        unsafe { bf16_avx2(bytes, out) }
    }
    pub fn q5_0(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q5_0_avx2(bytes, out) }
    }
    pub fn q5_1(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q5_1_avx2(bytes, out) }
    }
    pub fn q2_k(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q2_k_avx2(bytes, out) }
    }
    pub fn q3_k(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q3_k_avx2(bytes, out) }
    }
    pub fn q4_k(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q4_k_avx2(bytes, out) }
    }
    pub fn q5_k(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q5_k_avx2(bytes, out) }
    }
    pub fn q6_k(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { q6_k_avx2(bytes, out) }
    }

    // Safe entry points: only handed out by the dispatcher after detecting AVX2.
    pub fn q4_1(bytes: &[u8], out: &mut [f32]) {
        // SAFETY: selected only when AVX2 and F16C are available (avx2_set).
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

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use half::f16;

    use super::f16_at;


    fn load16(b: &[u8]) -> uint8x16_t {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable bytes (asserted); NEON loads need no alignment.
        unsafe { vld1q_u8(b.as_ptr()) }
    }

    fn store4(out: &mut [f32], i: usize, v: float32x4_t) {
        assert!(i + 4 <= out.len());
        // SAFETY: 4 writable floats at i (asserted).
        unsafe { vst1q_f32(out.as_mut_ptr().add(i), v) }
    }

    /// 16 unsigned bytes → 16 floats, in order.
    fn u8x16(v: uint8x16_t) -> [float32x4_t; 4] {
        // SAFETY: register-only NEON arithmetic (NEON is part of aarch64's baseline).
        unsafe {
            let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
            let cvt = |x: uint32x4_t| vcvtq_f32_u32(x);
            [cvt(vmovl_u16(vget_low_u16(lo))), cvt(vmovl_high_u16(lo)), cvt(vmovl_u16(vget_low_u16(hi))), cvt(vmovl_high_u16(hi))]
        }
    }

    /// 16 signed bytes → 16 floats, in order.
    fn i8x16(v: int8x16_t) -> [float32x4_t; 4] {
        // SAFETY: as above.
        unsafe {
            let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
            let cvt = |x: int32x4_t| vcvtq_f32_s32(x);
            [cvt(vmovl_s16(vget_low_s16(lo))), cvt(vmovl_high_s16(lo)), cvt(vmovl_s16(vget_low_s16(hi))), cvt(vmovl_high_s16(hi))]
        }
    }

    /// Stores 16 values at `i`, each mapped by `f`.
    fn put16(out: &mut [f32], i: usize, v: [float32x4_t; 4], f: impl Fn(float32x4_t) -> float32x4_t) {
        for (k, x) in v.into_iter().enumerate() {
            store4(out, i + 4 * k, f(x));
        }
    }

    /// Low and high nibbles of 16 bytes.
    fn nibbles(q: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
        // SAFETY: register-only NEON arithmetic.
        unsafe { (vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(q)) }
    }

    pub fn f16(bytes: &[u8], out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        // half converts with the hardware instruction where the CPU has it (exact either way).
        let halves: Vec<f16> = bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
        halves.convert_to_f32_slice(&mut out[..halves.len()]);
    }

    pub fn bf16(bytes: &[u8], out: &mut [f32]) {
        let mut done = 0;
        for (b, y) in bytes.chunks_exact(16).zip(out.chunks_exact_mut(8)) {
            // SAFETY: 16 readable bytes (the chunk); register-only arithmetic after the load.
            unsafe {
                let h = vld1q_u16(b.as_ptr().cast());
                store4(y, 0, vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))));
                store4(y, 4, vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)));
            }
            done += 8;
        }
        for (i, y) in out.iter_mut().enumerate().skip(done) {
            *y = half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32();
        }
    }

    pub fn q4_0(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
            // SAFETY: register-only NEON arithmetic.
            let (d, eight) = unsafe { (vdupq_n_f32(f16_at(b, 0)), vdupq_n_f32(8.0)) };
            let (lo, hi) = nibbles(load16(&b[2..18]));
            // (q − 8) is exact in f32: the same value as the scalar integer subtraction.
            let f = |x| unsafe { vmulq_f32(vsubq_f32(x, eight), d) };
            put16(y, 0, u8x16(lo), f);
            put16(y, 16, u8x16(hi), f);
        }
    }

    pub fn q4_1(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
            // SAFETY: register-only NEON arithmetic.
            let (d, m) = unsafe { (vdupq_n_f32(f16_at(b, 0)), vdupq_n_f32(f16_at(b, 2))) };
            let (lo, hi) = nibbles(load16(&b[4..20]));
            let f = |x| unsafe { vaddq_f32(vmulq_f32(x, d), m) };
            put16(y, 0, u8x16(lo), f);
            put16(y, 16, u8x16(hi), f);
        }
    }

    pub fn q8_0(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            // SAFETY: register-only NEON arithmetic.
            let d = unsafe { vdupq_n_f32(f16_at(b, 0)) };
            let f = |x| unsafe { vmulq_f32(x, d) };
            for h in 0..2 {
                // SAFETY: the cast reinterprets 16 loaded bytes as signed.
                let q = unsafe { vreinterpretq_s8_u8(load16(&b[2 + 16 * h..])) };
                put16(y, 16 * h, i8x16(q), f);
            }
        }
    }

    /// Per byte of `v`: 0x10 where `v & bit` is set, else 0.
    fn bit16(v: uint8x16_t, bit: u8) -> uint8x16_t {
        // SAFETY: register-only NEON arithmetic.
        unsafe { vandq_u8(vtstq_u8(v, vdupq_n_u8(bit)), vdupq_n_u8(0x10)) }
    }

    /// Q5_0/Q5_1: the fifth bits of values 16·h .. 16·h + 16 (bit j of `qh` for value j),
    /// as 0x10 or 0 per byte.
    fn qh_bits(qh: u32, h: usize) -> uint8x16_t {
        let b = qh.to_le_bytes();
        // SAFETY: register-only NEON arithmetic.
        unsafe {
            let bytes = vcombine_u8(vdup_n_u8(b[2 * h]), vdup_n_u8(b[2 * h + 1]));
            const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
            vandq_u8(vtstq_u8(bytes, vld1q_u8(BITS.as_ptr())), vdupq_n_u8(0x10))
        }
    }

    pub fn q5_0(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let (lo, hi) = nibbles(load16(&b[6..22]));
            // SAFETY: register-only NEON arithmetic.
            let (d, sixteen) = unsafe { (vdupq_n_f32(f16_at(b, 0)), vdupq_n_f32(16.0)) };
            // (q − 16) is exact in f32, as the scalar integer subtraction.
            let f = |x| unsafe { vmulq_f32(vsubq_f32(x, sixteen), d) };
            for (h, nib) in [lo, hi].into_iter().enumerate() {
                // SAFETY: register-only NEON arithmetic.
                let q = unsafe { vorrq_u8(nib, qh_bits(qh, h)) };
                put16(y, 16 * h, u8x16(q), f);
            }
        }
    }

    pub fn q5_1(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let (lo, hi) = nibbles(load16(&b[8..24]));
            // SAFETY: register-only NEON arithmetic.
            let (d, m) = unsafe { (vdupq_n_f32(f16_at(b, 0)), vdupq_n_f32(f16_at(b, 2))) };
            let f = |x| unsafe { vaddq_f32(vmulq_f32(x, d), m) };
            for (h, nib) in [lo, hi].into_iter().enumerate() {
                // SAFETY: register-only NEON arithmetic.
                let q = unsafe { vorrq_u8(nib, qh_bits(qh, h)) };
                put16(y, 16 * h, u8x16(q), f);
            }
        }
    }

    /// 2-bit values (bytes >> shift) & 3.
    fn two_bits(v: uint8x16_t, shift: usize) -> uint8x16_t {
        // SAFETY: register-only NEON arithmetic.
        unsafe { vandq_u8(vshlq_u8(v, vdupq_n_s8(-(shift as i8))), vdupq_n_u8(3)) }
    }

    pub fn q2_k(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(84).zip(out.chunks_exact_mut(256)) {
            let (d, min) = (f16_at(b, 80), f16_at(b, 82));
            for n in 0..2 {
                for s in 0..4 {
                    for half in 0..2 {
                        let sc = b[n * 8 + s * 2 + half];
                        // SAFETY: register-only NEON arithmetic.
                        let (dl, ml) = unsafe { (vdupq_n_f32(d * f32::from(sc & 0x0f)), vdupq_n_f32(min * f32::from(sc >> 4))) };
                        let q = two_bits(load16(&b[16 + 32 * n + 16 * half..]), 2 * s);
                        put16(y, n * 128 + s * 32 + half * 16, u8x16(q), |x| unsafe { vsubq_f32(vmulq_f32(x, dl), ml) });
                    }
                }
            }
        }
    }

    pub fn q3_k(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(110).zip(out.chunks_exact_mut(256)) {
            let d_all = f16_at(b, 108);
            let scales = crate::quant::reference::q3_k_scales(b[96..108].try_into().expect("12 bytes"));
            for n in 0..2 {
                for s in 0..4 {
                    for half in 0..2 {
                        let hm = load16(&b[16 * half..]);
                        let q = two_bits(load16(&b[32 + 32 * n + 16 * half..]), 2 * s);
                        // SAFETY: register-only NEON arithmetic.
                        let v = unsafe {
                            // 4 where the high bit is clear, else 0
                            let four = vandq_u8(vceqq_u8(vandq_u8(hm, vdupq_n_u8(1 << (4 * n + s))), vdupq_n_u8(0)), vdupq_n_u8(4));
                            vsubq_s8(vreinterpretq_s8_u8(q), vreinterpretq_s8_u8(four))
                        };
                        // SAFETY: as above.
                        let dl = unsafe { vdupq_n_f32(d_all * f32::from(scales[n * 8 + s * 2 + half] as i32 as i16 - 32)) };
                        put16(y, n * 128 + s * 32 + half * 16, i8x16(v), |x| unsafe { vmulq_f32(dl, x) });
                    }
                }
            }
        }
    }

    /// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; Q5_K adds bit 2n (low
    /// nibbles of group n) or 2n + 1 (high nibbles) of qh[l] as 16.
    fn k4(bytes: &[u8], out: &mut [f32], block: usize, qs_at: usize, qh_at: Option<usize>) {
        use crate::quant::reference::scale_min_k4;
        for (b, y) in bytes.chunks_exact(block).zip(out.chunks_exact_mut(256)) {
            let (d, min) = (f16_at(b, 0), f16_at(b, 2));
            let scales: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
            for n in 0..4 {
                for i in 0..2 {
                    let (sc, m) = scale_min_k4(2 * n + i, scales);
                    // SAFETY: register-only NEON arithmetic.
                    let (dl, ml) = unsafe { (vdupq_n_f32(d * f32::from(sc)), vdupq_n_f32(min * f32::from(m))) };
                    let f = |x| unsafe { vsubq_f32(vmulq_f32(dl, x), ml) };
                    for h in 0..2 {
                        let (lo, hi) = nibbles(load16(&b[qs_at + 32 * n + 16 * h..]));
                        let mut q = if i == 0 { lo } else { hi };
                        if let Some(at) = qh_at {
                            // SAFETY: register-only NEON arithmetic.
                            q = unsafe { vaddq_u8(q, bit16(load16(&b[at + 16 * h..]), 1 << (2 * n + i))) };
                        }
                        put16(y, 64 * n + 32 * i + 16 * h, u8x16(q), f);
                    }
                }
            }
        }
    }

    pub fn q4_k(bytes: &[u8], out: &mut [f32]) {
        k4(bytes, out, 144, 16, None)
    }

    pub fn q5_k(bytes: &[u8], out: &mut [f32]) {
        k4(bytes, out, 176, 48, Some(16))
    }

    pub fn q6_k(bytes: &[u8], out: &mut [f32]) {
        for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
            let d = f16_at(b, 208);
            for n in 0..2 {
                for h in 0..2 {
                    // 16 of the 32 positions l of this half: ql[l], ql[l + 32], qh[l]
                    let ql0 = load16(&b[64 * n + 16 * h..]);
                    let ql1 = load16(&b[64 * n + 32 + 16 * h..]);
                    let qh = load16(&b[128 + 32 * n + 16 * h..]);
                    let (l0, h0) = nibbles(ql0);
                    let (l1, h1) = nibbles(ql1);
                    for (k, low) in [l0, l1, h0, h1].into_iter().enumerate() {
                        // SAFETY: register-only NEON arithmetic.
                        let q = unsafe {
                            let high = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(qh, vdupq_n_s8(-2 * k as i8)), vdupq_n_u8(3)));
                            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(32))
                        };
                        let sc = b[192 + 8 * n + 2 * k + h] as i8;
                        // SAFETY: as above.
                        let ds = unsafe { vdupq_n_f32(d * f32::from(sc)) };
                        put16(y, 128 * n + 32 * k + 16 * h, i8x16(q), |x| unsafe { vmulq_f32(ds, x) });
                    }
                }
            }
        }
    }
}
