//! Weighted composition of adapters for one base.
//!
//! - `cat`: exact. Per target, A stacks the inputs' A rows and B their columns with
//!   wᵢ·sᵢ folded in: ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ at rank Σ rᵢ, scale 1.
//! - `linear`: PEFT's `add_weighted_adapter(…, "linear")`: equal ranks; A = Σ √wᵢ·sᵢ·Aᵢ,
//!   B = Σ √wᵢ·Bᵢ, scale 1. Not the weighted sum of deltas (cross terms), as in PEFT.
//! - `svd`: the exact weighted sum re-factorized to a target rank. ΔW = B_cat·A_cat is
//!   reduced through thin QR of B_cat and A_catᵀ to a k×k core, whose SVD (nalgebra, f64)
//!   gives the best rank-R approximation; the retained energy Σσ²(kept)/Σσ² is reported.

use std::collections::BTreeSet;

use nalgebra::DMatrix;

use super::model::{FactorDtype, LoraAdapter, LoraTensor};
use super::manifest::Manifest;
use crate::error::{AdapterError, Error};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComposeMethod {
    Cat,
    Linear,
    /// Target rank.
    Svd(usize),
}

/// What composition did, per target.
#[derive(Debug, Clone, Default)]
pub struct ComposeReport {
    /// (target, rank, retained energy in [0, 1]; 1 for exact methods).
    pub tensors: Vec<(String, usize, f64)>,
}

impl ComposeReport {
    /// Energy retained over all targets (weighted by each target's total energy for svd;
    /// the minimum is often the more useful figure).
    pub fn min_energy(&self) -> f64 {
        self.tensors.iter().map(|t| t.2).fold(1.0, f64::min)
    }
}

fn err(reason: String) -> Error {
    AdapterError::Invalid { path: "composition".into(), reason }.into()
}

/// Composes `inputs` (adapter, weight) into one adapter. All inputs must share an
/// architecture; a target missing from some inputs takes only the others' deltas.
pub fn compose(inputs: &[(&LoraAdapter, f32)], method: ComposeMethod) -> Result<(LoraAdapter, ComposeReport), Error> {
    let first = inputs.first().ok_or_else(|| err("no adapters to compose".into()))?.0;
    for (a, w) in inputs {
        if a.architecture != first.architecture {
            return Err(err(format!("architectures differ: {:?} and {:?}", first.architecture, a.architecture)));
        }
        if !w.is_finite() {
            return Err(err(format!("weight {w} is not finite")));
        }
    }
    if let ComposeMethod::Svd(0) = method {
        return Err(err("svd needs a target rank ≥ 1".into()));
    }
    let targets: BTreeSet<&String> = inputs.iter().flat_map(|(a, _)| a.tensors.keys()).collect();
    let mut out = LoraAdapter::new(first.architecture.clone());
    let mut report = ComposeReport::default();
    for name in targets {
        let parts: Vec<(&LoraTensor, f32)> = inputs.iter().filter_map(|(a, w)| a.tensors.get(name).map(|t| (t, *w))).collect();
        let (n_in, n_out) = (parts[0].0.n_in, parts[0].0.n_out);
        if parts.iter().any(|(t, _)| t.n_in != n_in || t.n_out != n_out) {
            return Err(err(format!("{name}: inputs disagree on the shape")));
        }
        let dtype = if parts.iter().all(|(t, _)| t.dtype == parts[0].0.dtype) { parts[0].0.dtype } else { FactorDtype::F32 };
        let (tensor, energy) = match method {
            ComposeMethod::Cat => (cat(&parts, n_in, n_out, dtype), 1.0),
            ComposeMethod::Linear => (linear(name, &parts, n_in, n_out, dtype)?, 1.0),
            ComposeMethod::Svd(r) => svd(&parts, n_in, n_out, r, dtype),
        };
        report.tensors.push((name.clone(), tensor.rank, energy));
        out.tensors.insert(name.clone(), tensor);
    }
    let label = match method {
        ComposeMethod::Cat => "cat".to_string(),
        ComposeMethod::Linear => "linear".to_string(),
        ComposeMethod::Svd(r) => format!("svd:{r}"),
    };
    let sources: Vec<String> = inputs
        .iter()
        .map(|(a, w)| format!("{}*{w}", a.manifest.name.clone().unwrap_or_else(|| "?".into())))
        .collect();
    out.manifest = Manifest {
        source: Some(format!("compose:{label}({})", sources.join(", "))),
        base_model: first.manifest.base_model.clone(),
        base_fingerprint: first.manifest.base_fingerprint.clone(),
        ..Manifest::default()
    };
    Ok((out, report))
}

fn cat(parts: &[(&LoraTensor, f32)], n_in: usize, n_out: usize, dtype: FactorDtype) -> LoraTensor {
    let rank: usize = parts.iter().map(|(t, _)| t.rank).sum();
    let mut a = Vec::with_capacity(rank * n_in);
    for (t, _) in parts {
        a.extend_from_slice(&t.a);
    }
    let mut b = vec![0f32; n_out * rank];
    let mut off = 0;
    for (t, w) in parts {
        let k = w * t.scale;
        for o in 0..n_out {
            for j in 0..t.rank {
                b[o * rank + off + j] = k * t.b[o * t.rank + j];
            }
        }
        off += t.rank;
    }
    LoraTensor { rank, n_in, n_out, a, b, scale: 1.0, dtype }
}

fn linear(name: &str, parts: &[(&LoraTensor, f32)], n_in: usize, n_out: usize, dtype: FactorDtype) -> Result<LoraTensor, Error> {
    let rank = parts[0].0.rank;
    if parts.iter().any(|(t, _)| t.rank != rank) {
        return Err(err(format!("{name}: linear composition needs equal ranks (found {:?}); use cat or svd", parts.iter().map(|(t, _)| t.rank).collect::<Vec<_>>())));
    }
    if parts.iter().any(|(_, w)| *w < 0.0) {
        return Err(err(format!("{name}: linear composition takes √weight, so weights must be ≥ 0")));
    }
    let mut a = vec![0f32; rank * n_in];
    let mut b = vec![0f32; n_out * rank];
    for (t, w) in parts {
        let sw = w.sqrt();
        a.iter_mut().zip(&t.a).for_each(|(x, y)| *x += sw * t.scale * y);
        b.iter_mut().zip(&t.b).for_each(|(x, y)| *x += sw * y);
    }
    Ok(LoraTensor { rank, n_in, n_out, a, b, scale: 1.0, dtype })
}

fn svd(parts: &[(&LoraTensor, f32)], n_in: usize, n_out: usize, target: usize, dtype: FactorDtype) -> (LoraTensor, f64) {
    let exact = cat(parts, n_in, n_out, dtype);
    let k = exact.rank;
    // ΔW = Bc·Ac with Bc [out, k], Ac [k, in].
    let bc = DMatrix::<f64>::from_fn(n_out, k, |o, j| f64::from(exact.b[o * k + j]));
    let act = DMatrix::<f64>::from_fn(n_in, k, |i, j| f64::from(exact.a[j * n_in + i]));
    let qb = bc.qr();
    let qa = act.qr();
    let (q_b, r_b) = (qb.q(), qb.r()); // [out, m], [m, k]
    let (q_a, r_a) = (qa.q(), qa.r()); // [in, n], [n, k]
    let core = &r_b * r_a.transpose(); // [m, n]
    let svd = core.svd(true, true);
    let (u, vt) = (svd.u.expect("u requested"), svd.v_t.expect("v_t requested"));
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
    let total: f64 = svd.singular_values.iter().map(|s| s * s).sum();
    let rank = target.min(order.len()).max(1);
    let kept: f64 = order[..rank].iter().map(|&i| svd.singular_values[i].powi(2)).sum();
    let left = &q_b * &u; // [out, m']
    let right = &q_a * vt.transpose(); // [in, m']
    let mut a = vec![0f32; rank * n_in];
    let mut b = vec![0f32; n_out * rank];
    for (j, &c) in order[..rank].iter().enumerate() {
        let root = svd.singular_values[c].sqrt();
        for o in 0..n_out {
            b[o * rank + j] = (left[(o, c)] * root) as f32;
        }
        for i in 0..n_in {
            a[j * n_in + i] = (right[(i, c)] * root) as f32;
        }
    }
    let energy = if total > 0.0 { kept / total } else { 1.0 };
    (LoraTensor { rank, n_in, n_out, a, b, scale: 1.0, dtype }, energy)
}
