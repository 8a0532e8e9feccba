//! The precision of the training graph's products with the frozen base, and the base's
//! matrices as those products read them.
//!
//! f32 (the default, and every gradient check): W dequantized to f32, products by the f32
//! GEMM. bf16 (mixed precision): W and the product's other operand rounded to bf16, every
//! product summed in f32 ([`crate::compute::bf16`]); the LoRA factors, their gradients,
//! the optimizer state, attention, norms and the output head stay f32 (master weights and
//! accumulation in f32). Only the base products change: they are most of the work and W
//! is frozen, so its rounding is a fixed perturbation of the model, not a drift.

use serde::{Deserialize, Serialize};

use crate::compute::bf16::{self, PackedBf16};
use crate::compute::dense::{matmul, Layout, Real};
use crate::model::profile::time;

/// `--precision`: the base products' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    /// bf16 where it is faster than f32 (a CPU with AMX tiles), else f32; resolved
    /// when a run starts ([`Precision::resolve`]) and recorded resolved.
    Auto,
}

impl Precision {
    /// Auto → what this CPU runs best; the others unchanged.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if bf16::faster_than_f32() => Precision::Bf16,
            Precision::Auto => Precision::F32,
            p => p,
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            _ => Err(format!("unknown precision {s:?} (expected f32, bf16 or auto)")),
        }
    }
}

/// A frozen base matrix W [n_out, n_in] for the training products y = x·Wᵀ (forward) and
/// dx += dy·W (backward to the input).
pub enum BaseMatrix<T> {
    /// Dense in the graph's element type.
    Dense(Vec<T>),
    /// bf16, packed for each product that will be asked of it (see [`BaseMatrix::bf16`]).
    Bf16 { forward: Option<PackedBf16>, backward: Option<PackedBf16> },
}

impl<T: Real> BaseMatrix<T> {
    /// W (f32, [n_out, n_in]) packed in bf16 for the forward product, the backward one, or
    /// both.
    pub fn bf16(w: &[f32], n_out: usize, n_in: usize, forward: bool, backward: bool) -> BaseMatrix<T> {
        BaseMatrix::Bf16 {
            forward: forward.then(|| time(|| "train: bf16 packing (forward)".into(), || PackedBf16::from_rows(w, n_out, n_in))),
            backward: backward.then(|| time(|| "train: bf16 packing (backward)".into(), || PackedBf16::from_cols(w, n_out, n_in))),
        }
    }

    /// y [n, n_out] = x [n, n_in] · Wᵀ.
    pub fn xwt(&self, y: &mut [T], x: &[T], n: usize, n_in: usize, n_out: usize) {
        match self {
            BaseMatrix::Dense(w) => time(|| "train: base products (dense)".into(), || matmul(y, x, Layout::N, w, Layout::T, n, n_out, n_in, false)),
            BaseMatrix::Bf16 { forward, .. } => {
                let b = packed(forward, "forward", n_out, n_in);
                time(|| format!("train: base products (bf16, {})", bf16::path(b)), || bf16::matmul_bt(f32s_mut(y), f32s(x), n, b, false))
            }
        }
    }

    /// dx [n, n_in] += dy [n, n_out] · W.
    pub fn add_dyw(&self, dx: &mut [T], dy: &[T], n: usize, n_in: usize, n_out: usize) {
        match self {
            BaseMatrix::Dense(w) => time(|| "train: base products (dense)".into(), || matmul(dx, dy, Layout::N, w, Layout::N, n, n_in, n_out, true)),
            BaseMatrix::Bf16 { backward, .. } => {
                let b = packed(backward, "backward", n_in, n_out);
                time(|| format!("train: base products (bf16, {})", bf16::path(b)), || bf16::matmul_bt(f32s_mut(dx), f32s(dy), n, b, true))
            }
        }
    }
}

/// The packing a product asked for, of B [n, k]: `layer_dense` packs what its caller
/// will use (an internal invariant, not input).
fn packed<'p>(p: &'p Option<PackedBf16>, product: &str, n: usize, k: usize) -> &'p PackedBf16 {
    let p = p.as_ref().unwrap_or_else(|| panic!("a bf16 matrix used {product} was packed for it (TrainModel::layer_dense)"));
    assert_eq!((p.n(), p.k()), (n, k), "bf16 {product} shape");
    p
}

/// bf16 matrices exist only in f32 graphs (`TrainModel::with_precision` refuses others).
fn f32s<T: Real>(v: &[T]) -> &[f32] {
    T::as_f32(v).expect("bf16 products run in f32 training graphs only")
}

fn f32s_mut<T: Real>(v: &mut [T]) -> &mut [f32] {
    T::as_f32_mut(v).expect("bf16 products run in f32 training graphs only")
}
