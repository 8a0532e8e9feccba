//! Weights repacked for decoding on AVX512-VNNI: sixteen rows of W interleaved, so that
//! one `vpdpbusd` takes four weight codes of each of the sixteen rows against four bytes
//! of one input broadcast to every lane, and a block's sixteen row sums come out in one
//! vector — no per-row horizontal sums, the block scales applied sixteen rows at a time.
//! A group of 16 rows × one 32-value block is unpacked once and meets every input row of
//! the call (a batch of decoding sequences), so the work per input is 16 `vpdpbusd` (the
//! input's high and low bytes, [`SplitX`]) and four float operations per 512 products,
//! against nine vector operations per 64 in the four-row split kernels (`quant::simd`).
//!
//! Every input row gets the same operations in the same order whatever the other rows
//! of the call are: a row of a batch gets exactly the value it gets alone. The integer
//! sums are exact; only the per-block float steps round (as in the split kernels).
//!
//! Layout per group `g` (rows 16g..16g + 16, zero rows past n_out) and block `b`:
//! - Q4_1 codes, 256 bytes: vector v (0..4) holds, for row r, bytes 4v..4v + 4 of the
//!   block's `qs` at 4r — low nibbles values 4v..4v + 4, high nibbles 16 + 4v..; scales
//!   32 f16: d of the 16 rows, then m.
//! - Q8_0 codes, 512 bytes: vector s (0..8) holds, for row r, values 4s..4s + 4 at 4r,
//!   offset by 128 (unsigned for `vpdpbusd`; the input's 128·Σq per block takes it back);
//!   scales 16 f16 (d).
//!
//! Formats: Q4_1 and Q8_0 (the default model's). A copy is the size of the original
//! weights; the native engine makes one per matrix on its first decoding product
//! ([`PackedStore`]), on CPUs with AVX512-VNNI only (`EDGELORA_PACKED=0` turns it off).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Backend, ComputeError, Delta, MatrixRef};
use crate::gguf::{GgmlType, GgufFile};
use crate::quant::blocks::{BlockQ4_1, BlockQ8_0, QK};
use crate::quant::simd::SplitX;

/// Rows of W per group (the lanes of one vector of i32 sums).
pub const GROUP: usize = 16;

/// Groups per parallel task.
const TASK_GROUPS: usize = 2;


/// One 64-byte line (the code vectors' alignment).
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([u8; 64]);

/// A matrix W [n_out, n_in] repacked (see the module comment).
pub struct Packed {
    t: GgmlType,
    n_out: usize,
    n_in: usize,
    codes: Vec<Line>,
    scales: Vec<half::f16>,
}

impl Packed {
    /// Code bytes per group and block.
    fn code_bytes(t: GgmlType) -> usize {
        if t == GgmlType::Q8_0 { 512 } else { 256 }
    }

    /// Scales per group and block.
    fn scale_count(t: GgmlType) -> usize {
        if t == GgmlType::Q8_0 { GROUP } else { 2 * GROUP }
    }

    /// Repacks W [n_out, n_in] stored as `t` blocks (`bytes`): Q4_1 or Q8_0.
    pub fn new(t: GgmlType, bytes: &[u8], n_out: usize, n_in: usize) -> Result<Packed, ComputeError> {
        if !matches!(t, GgmlType::Q4_1 | GgmlType::Q8_0) {
            return Err(ComputeError::Unsupported(t, "packed decoding"));
        }
        let row_bytes = t.bytes_for(n_in as u64).filter(|_| n_in % QK == 0).ok_or_else(|| ComputeError::Shape(format!("{n_in} is not a whole number of {t} blocks")))? as usize;
        if bytes.len() != row_bytes * n_out {
            return Err(ComputeError::Shape(format!("W {} bytes for [{n_out}, {n_in}] {t}", bytes.len())));
        }
        let n_blocks = n_in / QK;
        let groups = n_out.div_ceil(GROUP);
        let (cb, sc) = (Self::code_bytes(t), Self::scale_count(t));
        let mut codes = vec![Line([0; 64]); groups * n_blocks * cb / 64];
        let mut scales = vec![half::f16::ZERO; groups * n_blocks * sc];
        let code_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut codes);
        code_bytes.par_chunks_mut(n_blocks * cb).zip(scales.par_chunks_mut(n_blocks * sc)).enumerate().for_each(|(g, (cg, sg))| {
            for r in 0..GROUP.min(n_out - g * GROUP) {
                let row = &bytes[(g * GROUP + r) * row_bytes..][..row_bytes];
                for b in 0..n_blocks {
                    let (c, s) = (&mut cg[b * cb..][..cb], &mut sg[b * sc..][..sc]);
                    if t == GgmlType::Q8_0 {
                        let blk: BlockQ8_0 = bytemuck::pod_read_unaligned(&row[b * 34..][..34]);
                        for v in 0..8 {
                            for k in 0..4 {
                                c[64 * v + 4 * r + k] = (blk.qs[4 * v + k] as u8) ^ 0x80;
                            }
                        }
                        s[r] = blk.d;
                    } else {
                        let blk: BlockQ4_1 = bytemuck::pod_read_unaligned(&row[b * 20..][..20]);
                        for v in 0..4 {
                            c[64 * v + 4 * r..][..4].copy_from_slice(&blk.qs[4 * v..4 * v + 4]);
                        }
                        s[r] = blk.d;
                        s[GROUP + r] = blk.m;
                    }
                }
            }
        });
        Ok(Packed { t, n_out, n_in, codes, scales })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        64 * self.codes.len() + 2 * self.scales.len()
    }

    fn n_blocks(&self) -> usize {
        self.n_in / QK
    }

    /// Group g's code bytes and scales.
    fn group(&self, g: usize) -> (&[u8], &[half::f16]) {
        let nb = self.n_blocks();
        let (cb, sc) = (Self::code_bytes(self.t), Self::scale_count(self.t));
        (&bytemuck::cast_slice(&self.codes)[g * nb * cb..][..nb * cb], &self.scales[g * nb * sc..][..nb * sc])
    }

    /// Rows row0..row0 + n_out of this matrix, where row0 starts a group.
    pub fn view(&self, row0: usize, n_out: usize) -> Option<View<'_>> {
        (row0.is_multiple_of(GROUP) && row0 + n_out <= self.n_out).then_some(View { p: self, g0: row0 / GROUP, n_out })
    }
}

/// Some rows of a [`Packed`] matrix (all of them, or a fused tensor's part).
#[derive(Clone, Copy)]
pub struct View<'a> {
    p: &'a Packed,
    g0: usize,
    n_out: usize,
}

/// Whether this CPU runs the packed kernels: AVX512-VNNI (the split kernels' set, so
/// `EDGELORA_SIMD=avx2|scalar` turn them off too), unless `EDGELORA_PACKED=0`.
pub fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EDGELORA_PACKED").map_or(true, |v| v != "0") && cfg!(target_arch = "x86_64") && crate::quant::simd::selected_split() == Some("avx512vnni"))
}

/// ys[i] [n_x, n_out_i] = x [n_x, n_in] · W_iᵀ for packed weights of one input: the input
/// rows split once, every weight's groups in one parallel pass.
pub fn matmul_many(ws: &[View], x: &[f32], n_in: usize) -> Result<Vec<Vec<f32>>, ComputeError> {
    if let Some(w) = ws.iter().find(|w| w.p.n_in != n_in) {
        return Err(ComputeError::Shape(format!("a packed weight takes {} inputs, not {n_in}", w.p.n_in)));
    }
    if !available() {
        return Err(ComputeError::Shape("packed kernels need AVX512-VNNI".into()));
    }
    if n_in == 0 || !x.len().is_multiple_of(n_in) {
        return Err(ComputeError::Shape(format!("x holds {} values, not whole rows of {n_in}", x.len())));
    }
    let n_x = x.len() / n_in;
    // Rows split in parallel (each alone; a batch's rows would wait on one thread).
    let xs: Vec<SplitX> = x.par_chunks_exact(n_in).map(SplitX::for_packed).collect();
    let nb = n_in / QK;
    for x in &xs {
        assert!(x.hi.len() >= n_in && x.lo.len() >= n_in && x.d.len() >= nb && x.sums.len() >= nb && x.qsum.len() >= nb, "split input shorter than {n_in}");
    }
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; n_x * w.n_out]).collect();
    let outs: Vec<Out> = ys.iter_mut().map(|y| Out(y.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize)> = ws.iter().enumerate().flat_map(|(i, w)| (0..w.n_out.div_ceil(GROUP)).step_by(TASK_GROUPS).map(move |g| (i, g))).collect();
    tasks.into_par_iter().for_each_init(Vec::new, |buf, (i, g_first)| {
        let w = &ws[i];
        let groups = w.n_out.div_ceil(GROUP);
        let mut o = vec![[0f32; GROUP]; n_x];
        for g in g_first..(g_first + TASK_GROUPS).min(groups) {
            let rows = GROUP.min(w.n_out - g * GROUP);
            // The next group's bytes on their way while this one meets the inputs (W
            // streams from memory once per step; the hardware prefetchers alone left the
            // unpacking waiting on it).
            let next = (g + 1 < groups).then(|| w.p.group(w.g0 + g + 1));
            run_group(w.p, w.g0 + g, &xs, buf, &mut o, next);
            for (r, or) in o.iter().enumerate() {
                // SAFETY: ys[i] holds n_x · n_out floats; row r < n_x, columns
                // 16g..16g + rows ≤ n_out. Tasks cover disjoint groups, so no two
                // write the same floats, and `ys` outlives the parallel loop.
                unsafe { std::ptr::copy_nonoverlapping(or.as_ptr(), outs[i].0.add(r * w.n_out + g * GROUP), rows) };
            }
        }
    });
    Ok(ys)
}

/// A pointer into one output, shared by the tasks that write disjoint parts of it.
struct Out(*mut f32);
// SAFETY: the tasks of `matmul_many` write disjoint ranges (see there).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// Group `g` of `p` · every input: out[j] = the group's 16 row sums for xs[j]. `buf`: the
/// task's scratch (a Q4_1 group's codes unpacked once, kept in L1 while each input passes).
///
/// `next`: the bytes of the group to come, prefetched a part before each input's pass (all
/// at once, they would fill the core's miss buffers and stall the pass behind them).
fn run_group(p: &Packed, g: usize, xs: &[SplitX], buf: &mut Vec<Line>, out: &mut [[f32; GROUP]], next: Option<(&[u8], &[half::f16])>) {
    let nb = p.n_blocks();
    let (codes, scales) = p.group(g);
    // Part j of the next group's lines (of xs.len() + 1 parts).
    let parts = xs.len() + 1;
    let prefetch_part = |j: usize| {
        if let Some((c, s)) = next {
            let per = c.len().div_ceil(parts).next_multiple_of(64);
            super::cpu::prefetch(&c[(j * per).min(c.len())..((j + 1) * per).min(c.len())]);
            if j == 0 {
                super::cpu::prefetch(bytemuck::cast_slice(s));
            }
        }
    };
    // Each input holds nb blocks: checked once per call by `matmul_many`, its only caller.
    assert!(out.len() >= xs.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` (checked by the caller) means AVX-512 F/BW/VNNI; codes and
    // scales hold the group's nb blocks, each input nb blocks (asserted by `matmul_many`), buf is sized here.
    unsafe {
        prefetch_part(0);
        if p.t == GgmlType::Q8_0 {
            for (j, (x, o)) in xs.iter().zip(out.iter_mut()).enumerate() {
                x86::input_q8_0(codes, scales, nb, x, o);
                prefetch_part(j + 1);
            }
        } else {
            buf.resize(nb * x86::Q4_1_LINES, Line([0; 64]));
            x86::unpack_q4_1(codes, scales, nb, buf);
            for (j, (x, o)) in xs.iter().zip(out.iter_mut()).enumerate() {
                prefetch_part(j + 1);
                x86::input_q4_1(buf, nb, x, o);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (codes, scales, buf, prefetch_part);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Line, GROUP};
    use crate::quant::simd::SplitX;

    /// Lines per block of an unpacked Q4_1 group: 8 code vectors, d and m as f32.
    pub const Q4_1_LINES: usize = 10;

    /// Four input bytes at `p` as one i32, in every lane.
    /// SAFETY: 4 readable bytes at p.
    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m512i {
        // SAFETY: by the caller.
        _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
    }

    /// Σ over one block's eight code vectors at `q` (values 4i..4i + 4 of each row in
    /// vector i, as lines) · the input's bytes at `x` (32 of them): two chains of four
    /// `vpdpbusd`, the first starting from `start`. Exact in i32.
    /// SAFETY: 8 readable lines at q, 32 bytes at x; AVX-512 F/VNNI.
    #[inline(always)]
    unsafe fn block_dot(start: __m512i, q: *const Line, x: *const i8) -> __m512i {
        // SAFETY: by the caller (offsets 0..8 lines, 0..32 bytes).
        unsafe {
            let l = |i: usize| _mm512_load_si512(q.add(i).cast());
            let mut a = _mm512_dpbusd_epi32(start, l(0), bcast4(x));
            let mut b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), l(1), bcast4(x.add(4)));
            a = _mm512_dpbusd_epi32(a, l(2), bcast4(x.add(8)));
            b = _mm512_dpbusd_epi32(b, l(3), bcast4(x.add(12)));
            a = _mm512_dpbusd_epi32(a, l(4), bcast4(x.add(16)));
            b = _mm512_dpbusd_epi32(b, l(5), bcast4(x.add(20)));
            a = _mm512_dpbusd_epi32(a, l(6), bcast4(x.add(24)));
            b = _mm512_dpbusd_epi32(b, l(7), bcast4(x.add(28)));
            _mm512_add_epi32(a, b)
        }
    }

    /// Σ q·x_q over one block for 16 rows: 256·(codes · high bytes) + codes · low bytes.
    /// SAFETY: as [`block_dot`], 32 bytes at hi and at lo.
    #[inline(always)]
    unsafe fn split_block(q: *const Line, hi: *const i8, lo: *const i8) -> __m512i {
        // SAFETY: by the caller.
        unsafe {
            let th = block_dot(_mm512_setzero_si512(), q, hi);
            block_dot(_mm512_slli_epi32::<8>(th), q, lo)
        }
    }

    /// A Q4_1 group's nb blocks (see the module comment) into `buf`: per block the eight
    /// code vectors (nibbles spread to bytes), then d and m as f32.
    /// SAFETY: AVX-512 F/BW; codes hold nb·256 bytes, scales nb·32, buf nb·Q4_1_LINES lines.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn unpack_q4_1(codes: &[u8], scales: &[half::f16], nb: usize, buf: &mut [Line]) {
        debug_assert!(codes.len() >= nb * 256 && scales.len() >= nb * 32 && buf.len() >= nb * Q4_1_LINES);
        let low = _mm512_set1_epi8(0x0f);
        for b in 0..nb {
            // SAFETY: block b's 256 code bytes and 32 scales lie inside, its lines in buf
            // (by the caller); lines are 64-byte aligned.
            unsafe {
                let c = codes.as_ptr().add(256 * b);
                let o = buf.as_mut_ptr().add(Q4_1_LINES * b).cast::<__m512i>();
                for i in 0..4 {
                    let v = _mm512_loadu_si512(c.add(64 * i).cast());
                    _mm512_store_si512(o.add(i), _mm512_and_si512(v, low));
                    _mm512_store_si512(o.add(4 + i), _mm512_and_si512(_mm512_srli_epi16::<4>(v), low));
                }
                let s = _mm512_loadu_si512(scales.as_ptr().add(32 * b).cast());
                _mm512_store_ps(o.add(8).cast(), _mm512_cvtph_ps(_mm512_castsi512_si256(s)));
                _mm512_store_ps(o.add(9).cast(), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(s)));
            }
        }
    }

    /// An unpacked Q4_1 group ([`unpack_q4_1`]) · one input: out = the 16 row sums.
    /// Σ w·x = d_w·d_x·Σ q·x_q + m_w·Σx per row and block.
    /// SAFETY: AVX-512 F/VNNI; buf holds nb blocks, x nb blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn input_q4_1(buf: &[Line], nb: usize, x: &SplitX, out: &mut [f32; GROUP]) {
        debug_assert!(buf.len() >= nb * Q4_1_LINES && x.d.len() >= nb && x.sums.len() >= nb && x.hi.len() >= 32 * nb && x.lo.len() >= 32 * nb);
        let (hi, lo, d, sums) = (x.hi.as_ptr(), x.lo.as_ptr(), x.d.as_ptr(), x.sums.as_ptr());
        let mut acc = _mm512_setzero_ps();
        for b in 0..nb {
            // SAFETY: by the caller: block b's lines in buf, its 32 values of the input.
            unsafe {
                let q = buf.as_ptr().add(Q4_1_LINES * b);
                let t = split_block(q, hi.add(32 * b), lo.add(32 * b));
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_load_ps(q.add(8).cast()));
                acc = _mm512_fmadd_ps(f, _mm512_set1_ps(*d.add(b)), acc);
                acc = _mm512_fmadd_ps(_mm512_load_ps(q.add(9).cast()), _mm512_set1_ps(*sums.add(b)), acc);
            }
        }
        // SAFETY: 16 writable floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }

    /// A Q8_0 group (see the module comment, read where it lies) · one input.
    /// SAFETY: AVX-512 F/BW/VNNI; codes hold nb·512 bytes (64-byte aligned), scales nb·16,
    /// x nb blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn input_q8_0(codes: &[u8], scales: &[half::f16], nb: usize, x: &SplitX, out: &mut [f32; GROUP]) {
        debug_assert!(codes.len() >= nb * 512 && scales.len() >= nb * 16 && x.d.len() >= nb && x.qsum.len() >= nb && x.hi.len() >= 32 * nb && x.lo.len() >= 32 * nb);
        let (hi, lo, d, qsum) = (x.hi.as_ptr(), x.lo.as_ptr(), x.d.as_ptr(), x.qsum.as_ptr());
        let mut acc = _mm512_setzero_ps();
        for b in 0..nb {
            // SAFETY: by the caller: block b's codes and scales, its 32 values of the input.
            unsafe {
                let q = codes.as_ptr().add(512 * b).cast::<Line>();
                let t = split_block(q, hi.add(32 * b), lo.add(32 * b));
                // The codes were offset by 128: take 128·Σx_q back (exact in i32).
                let t = _mm512_sub_epi32(t, _mm512_set1_epi32(*qsum.add(b)));
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(16 * b).cast()));
                acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), dw), _mm512_set1_ps(*d.add(b)), acc);
            }
        }
        // SAFETY: 16 writable floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
}

/// A model's packed copies, made on first use: one slot per Q4_1/Q8_0 matrix of the file,
/// found by the address of its bytes in the memory map (the store lives with the model
/// that owns the map, so the addresses stay valid).
pub struct PackedStore {
    /// (first byte's address, byte length, type, n_out, n_in, the copy once made),
    /// sorted by address.
    slots: Vec<Slot>,
}

struct Slot {
    start: usize,
    len: usize,
    t: GgmlType,
    n_out: usize,
    n_in: usize,
    packed: OnceLock<Option<Packed>>,
}

impl PackedStore {
    /// Slots for every 2-D Q4_1/Q8_0 tensor of `f` (nothing is packed yet).
    pub fn new(f: &GgufFile) -> PackedStore {
        let mut slots: Vec<Slot> = f
            .tensors()
            .iter()
            .filter(|i| matches!(i.ggml_type, GgmlType::Q4_1 | GgmlType::Q8_0) && i.shape.len() == 2 && i.shape[0] as usize % QK == 0)
            .map(|i| {
                let bytes = f.tensor_data(i);
                Slot { start: bytes.as_ptr() as usize, len: bytes.len(), t: i.ggml_type, n_out: i.shape[1] as usize, n_in: i.shape[0] as usize, packed: OnceLock::new() }
            })
            .collect();
        slots.sort_by_key(|s| s.start);
        PackedStore { slots }
    }

    /// The packed rows that `w` (`t` blocks of W [n_out, n_in], borrowed from the map) are,
    /// packing their tensor on first use; `None` when they are not a packable tensor's
    /// (or a part of one that starts a group).
    pub fn view(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize) -> Option<View<'_>> {
        let at = w.as_ptr() as usize;
        let i = self.slots.partition_point(|s| s.start <= at).checked_sub(1)?;
        let s = &self.slots[i];
        if s.t != t || s.n_in != n_in || at + w.len() > s.start + s.len {
            return None;
        }
        let row_bytes = s.len / s.n_out;
        let off = at - s.start;
        if !off.is_multiple_of(row_bytes) || w.len() != n_out * row_bytes {
            return None;
        }
        let packed = s.packed.get_or_init(|| {
            // SAFETY: the slot was made from this model's mapped tensor, which lives as
            // long as the store (the model owns both); start..start + len is that tensor.
            let bytes = unsafe { std::slice::from_raw_parts(s.start as *const u8, s.len) };
            Packed::new(s.t, bytes, s.n_out, s.n_in).ok()
        });
        packed.as_ref()?.view(off / row_bytes, n_out)
    }
}

/// A backend whose products of up to `max_rows` input rows with a [`PackedStore`]'s
/// matrices run on the packed kernels (the same 16-bit input as the four-row split
/// kernels); everything else goes to `inner`. The native engine sets `max_rows` to
/// [`cpu::split_rows`](super::cpu::split_rows) when a call holds prompt rows (prompts
/// longer than that are f32 throughout) and lifts it for a step of decoding sequences
/// alone — whatever the batch, a decoding row then gets the value it gets alone.
pub struct Packing<'a> {
    pub inner: &'a dyn Backend,
    pub store: &'a PackedStore,
    pub max_rows: usize,
}

impl Packing<'_> {
    fn views(&self, ws: &[MatrixRef], n_in: usize, n_x: usize) -> Option<Vec<View<'_>>> {
        if !(1..=self.max_rows).contains(&n_x) {
            return None;
        }
        ws.iter().map(|w| self.store.view(w.t, w.bytes, w.n_out, n_in)).collect()
    }
}

impl Backend for Packing<'_> {
    fn name(&self) -> String {
        format!("{} + packed avx512vnni", self.inner.name())
    }

    fn dequantize(&self, t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError> {
        self.inner.dequantize(t, bytes, out)
    }

    fn lora_delta(&self, acc: &mut [f32], n_out: usize, n_in: usize, deltas: &[Delta]) -> Result<(), ComputeError> {
        self.inner.lora_delta(acc, n_out, n_in, deltas)
    }

    fn matmul(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError> {
        let m = [MatrixRef { t, bytes: w, n_out }];
        match self.views(&m, n_in, n_x) {
            Some(v) if x.len() == n_x * n_in => Ok(matmul_many(&v, x, n_in)?.pop().expect("one product")),
            _ => self.inner.matmul(t, w, n_out, n_in, x, n_x),
        }
    }

    fn matmul_shared(&self, ws: &[MatrixRef], n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<Vec<f32>>, ComputeError> {
        match self.views(ws, n_in, n_x) {
            Some(v) if x.len() == n_x * n_in => matmul_many(&v, x, n_in),
            _ => self.inner.matmul_shared(ws, n_in, x, n_x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;
    use rand::{Rng, SeedableRng};

    /// W [n_out, n_in] as `t` blocks, from random values.
    fn weights(t: GgmlType, n_out: usize, n_in: usize, seed: u64) -> Vec<u8> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n_out * n_in).map(|_| r.random_range(-1.0f32..1.0)).collect();
        quant::quantize_ggml(t, &v, n_in).expect("quantize")
    }

    #[test]
    fn packed_products_equal_the_dequantized_product_of_the_split_input_and_do_not_depend_on_the_other_rows() {
        if !available() {
            eprintln!("packed kernels: not available here (no AVX512-VNNI, or turned off), nothing checked");
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // Rows cutting a group short, one block and several.
        for (t, n_out, n_in) in [(GgmlType::Q4_1, 40, 64), (GgmlType::Q8_0, 35, 96), (GgmlType::Q4_1, 16, 32), (GgmlType::Q8_0, 64, 576)] {
            let w = weights(t, n_out, n_in, n_out as u64);
            let p = Packed::new(t, &w, n_out, n_in).expect("pack");
            // The copy is the original's size (groups of 16 whole rows; padding otherwise).
            assert_eq!(p.bytes() == w.len(), n_out % GROUP == 0, "{t} [{n_out}, {n_in}]: {} packed bytes for {}", p.bytes(), w.len());
            let mut wf = vec![0f32; n_out * n_in];
            quant::dequantize(t, &w, &mut wf).unwrap();
            let n_x = 11;
            let x: Vec<f32> = (0..n_x * n_in).map(|_| r.random_range(-2.0f32..2.0)).collect();
            let all = matmul_many(&[p.view(0, n_out).unwrap()], &x, n_in).unwrap().pop().unwrap();
            for j in 0..n_x {
                let xj = &x[j * n_in..(j + 1) * n_in];
                // The split input's own values: d·(256·hi + lo) per block.
                let sx = SplitX::new(xj);
                let xq: Vec<f64> = (0..n_in).map(|i| f64::from(sx.d[i / 32]) * (256.0 * f64::from(sx.hi[i]) + f64::from(sx.lo[i]))).collect();
                // Alone, and among other rows: bit for bit the same.
                let alone = matmul_many(&[p.view(0, n_out).unwrap()], xj, n_in).unwrap().pop().unwrap();
                assert_eq!(alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), all[j * n_out..(j + 1) * n_out].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{t} row {j}");
                let row_bytes = w.len() / n_out;
                for o in 0..n_out {
                    let wr = &wf[o * n_in..(o + 1) * n_in];
                    let mut want: f64 = wr.iter().zip(&xq).map(|(&a, &b)| f64::from(a) * b).sum();
                    if t == GgmlType::Q4_1 {
                        // Q4_1's min meets the exact f32 sum of x (the kernel's m·Σx term).
                        for b in 0..n_in / 32 {
                            let blk: BlockQ4_1 = bytemuck::pod_read_unaligned(&w[o * row_bytes + 20 * b..][..20]);
                            let (sx_b, sq_b): (f64, f64) = (xj[32 * b..32 * b + 32].iter().map(|&v| f64::from(v)).sum(), xq[32 * b..32 * b + 32].iter().sum());
                            want += f64::from(blk.m.to_f32()) * (sx_b - sq_b);
                        }
                    }
                    let scale: f64 = wr.iter().zip(xj).map(|(a, b)| f64::from(a.abs()) * f64::from(b.abs())).sum();
                    let got = f64::from(alone[o]);
                    assert!((got - want).abs() <= 1e-5 * scale + 1e-6, "{t} [{n_out}, {n_in}] row {j} out {o}: {got} vs {want}");
                }
            }
            // A part starting at a group boundary is that part of the product.
            if n_out > GROUP {
                let part = matmul_many(&[p.view(GROUP, n_out - GROUP).unwrap()], &x[..n_in], n_in).unwrap().pop().unwrap();
                assert_eq!(part, all[GROUP..n_out]);
                assert!(p.view(1, 4).is_none());
            }
        }
        let p = Packed::new(GgmlType::Q4_1, &weights(GgmlType::Q4_1, 16, 64, 1), 16, 64).unwrap();
        assert!(matches!(matmul_many(&[p.view(0, 16).unwrap()], &[0.0; 65], 64), Err(ComputeError::Shape(_))), "x not whole rows");
        assert!(matches!(matmul_many(&[p.view(0, 16).unwrap()], &[0.0; 96], 96), Err(ComputeError::Shape(_))), "x of another width");
        assert!(matches!(Packed::new(GgmlType::Q4_0, &[0; 18], 1, 32), Err(ComputeError::Unsupported(..))));
        assert!(matches!(Packed::new(GgmlType::Q4_1, &[0; 19], 1, 32), Err(ComputeError::Shape(_))));
    }
}
