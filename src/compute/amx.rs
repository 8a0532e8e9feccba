//! Intel AMX (Advanced Matrix Extensions) for the bf16 products ([`super::bf16`]): eight
//! tile registers of up to 16 rows × 64 bytes, and `tdpbf16ps`, which adds a [16, 16 pairs]
//! bf16 tile times a [16 pairs, 16] one into a [16, 16] f32 tile — 8192 products in one
//! instruction, where AVX512-BF16's `vdpbf16ps` does 32.
//!
//! Usable only where the CPU reports AMX-TILE and AMX-BF16 (CPUID leaf 7) and the kernel
//! lets the process use the 8 KiB of tile data: Linux asks for it once
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and a first product is checked
//! before the path is trusted ([`available`]). Elsewhere, and with `EDGELORA_AMX=0`, the
//! bf16 products take the vector kernels.
//!
//! The instructions go through `asm!` (Rust's AMX intrinsics are not stable). The tile
//! registers are not among the compiler's: nothing but these functions touches them, each
//! configures them before use and releases them after.
//!
//! Blocking: 32 rows of A (two tiles, `tmm4`/`tmm5`) × one 32-column panel of B (two tiles,
//! `tmm6`/`tmm7`) into four f32 tiles (`tmm0`–`tmm3`), 16 pairs of k per step. A's rows
//! and B's panels are the layouts of [`super::bf16`] (a u32 per pair of k, the even element
//! low): B's panel rows are the tile rows as they lie (stride 32 pairs), A's rows too
//! (stride k2 pairs).

/// Rows of A per kernel call (two tiles of 16).
pub const MR: usize = 32;
/// Pairs of k per tile step: the shared dimension must be a multiple of this (in pairs).
pub const KP: usize = 16;

/// Whether the AMX bf16 path runs here (checked once; `EDGELORA_AMX=0` turns it off).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var("EDGELORA_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        imp::enable() && imp::self_check()
    })
}

/// out [rows, 32] = A rows `r0..r0 + rows` [rows, k2 pairs] · panel [k2 pairs, 32], for
/// `rows` a multiple of [`MR`] and k2 of [`KP`]; `a` holds whole rows of k2 pairs, `panel`
/// k2 × 32 pairs. Only after [`available`] said yes.
pub fn panel_product(a: &[u32], k2: usize, r0: usize, rows: usize, panel: &[u32], out: &mut [f32]) {
    assert!(available(), "AMX product called where AMX is not available");
    assert!(rows.is_multiple_of(MR) && k2.is_multiple_of(KP) && k2 > 0, "AMX product: {rows} rows, {k2} pairs");
    assert!(a.len() >= (r0 + rows) * k2 && panel.len() >= k2 * super::bf16::NR && out.len() >= rows * super::bf16::NR, "AMX product: operand lengths");
    // SAFETY: AMX enabled (asserted); every tile read or written lies within the slices
    // (lengths asserted above, tile shapes in `imp`).
    unsafe { imp::panel_product(a.as_ptr().add(r0 * k2), k2, rows, panel.as_ptr(), out.as_mut_ptr()) }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    use super::super::bf16::NR;
    use super::{KP, MR};

    /// The 64-byte operand of `ldtilecfg` (palette 1).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        /// Bytes per row of each tile register.
        colsb: [u16; 16],
        /// Rows of each tile register.
        rows: [u8; 16],
    }
    const _: () = assert!(std::mem::size_of::<TileConfig>() == 64);

    /// tmm0–tmm3: f32 [16, 16]; tmm4–tmm5: A [16 rows, 16 pairs]; tmm6–tmm7: B [16 pairs,
    /// 16 columns]: every one 16 rows of 64 bytes.
    static CONFIG: TileConfig = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0], rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0] };

    /// CPUID leaf 7 reports AMX-TILE and AMX-BF16, and Linux grants the tile data.
    pub fn enable() -> bool {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        // CPUID leaf 7 exists on every CPU with AVX-512F.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        let (bf16, tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
        if !(bf16 && tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission; it changes nothing else.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// One product of known values gives the known result (a hypervisor may report AMX
    /// and still not run it).
    pub fn self_check() -> bool {
        let k2 = KP;
        // A [32, 16 pairs]: row r's pairs all (1, r); panel: column j's pairs all (j, 2).
        let bf = |v: f32| (v.to_bits() >> 16) as u16;
        let join = |even: f32, odd: f32| u32::from(bf(even)) | (u32::from(bf(odd)) << 16);
        let a: Vec<u32> = (0..MR * k2).map(|i| join(1.0, (i / k2) as f32)).collect();
        let panel: Vec<u32> = (0..k2 * NR).map(|i| join((i % NR) as f32, 2.0)).collect();
        let mut out = vec![0f32; MR * NR];
        // SAFETY: enable() succeeded; the buffers hold the tiles read and written.
        unsafe { panel_product(a.as_ptr(), k2, MR, panel.as_ptr(), out.as_mut_ptr()) };
        // Each output: 16 pairs of (1·j + r·2).
        out.iter().enumerate().all(|(i, &v)| v == 16.0 * ((i % NR) as f32 + 2.0 * (i / NR) as f32))
    }

    /// See [`super::panel_product`]; `a` points at the first row.
    ///
    /// # Safety
    /// AMX enabled; `a` readable for `rows` × `k2` pairs, `panel` for `k2` × NR pairs,
    /// `out` writable for `rows` × NR floats; `rows` a multiple of MR, `k2` of KP.
    pub unsafe fn panel_product(a: *const u32, k2: usize, rows: usize, panel: *const u32, out: *mut f32) {
        let a_stride = k2 * 4;
        let b_stride = NR * 4;
        let c_stride = NR * 4;
        // SAFETY (every asm block): the tile shapes are CONFIG's; each load and store stays
        // within the ranges the caller guarantees.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            for rb in (0..rows).step_by(MR) {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                let a0 = a.add(rb * k2);
                let a1 = a.add((rb + 16) * k2);
                for kc in (0..k2).step_by(KP) {
                    let b0 = panel.add(kc * NR);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(kc),
                        a1 = in(reg) a1.add(kc),
                        b0 = in(reg) b0,
                        b1 = in(reg) b0.add(16),
                        sa = in(reg) a_stride,
                        sb = in(reg) b_stride,
                        options(nostack, readonly),
                    );
                }
                let c = out.add(rb * NR);
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) c,
                    c1 = in(reg) c.add(16),
                    c2 = in(reg) c.add(16 * NR),
                    c3 = in(reg) c.add(16 * NR + 16),
                    s = in(reg) c_stride,
                    options(nostack),
                );
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn enable() -> bool {
        false
    }
    pub fn self_check() -> bool {
        false
    }
    pub unsafe fn panel_product(_: *const u32, _: usize, _: usize, _: *const u32, _: *mut f32) {
        unreachable!("AMX is never available on this target")
    }
}
