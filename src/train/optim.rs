//! AdamW (decoupled weight decay), learning-rate schedules with linear warm-up, and
//! global gradient-norm clipping — the same formulas as PyTorch's `AdamW` and
//! transformers' `get_{constant,linear,cosine}_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

use crate::model::grad::{LoraParam, LoraParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(format!("{s:?} is not constant, linear or cosine")),
        }
    }
}

/// The learning rate of optimizer step `step` (0-based) of `total`, with `warmup` steps
/// of linear warm-up from 0.
pub fn lr_at(schedule: Schedule, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments per parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub m: LoraParams<f32>,
    pub v: LoraParams<f32>,
}

impl Moments {
    pub fn zeros_like(p: &LoraParams<f32>) -> Moments {
        let z: LoraParams<f32> = p.iter().map(|(k, t)| (k.clone(), t.zeros_like())).collect();
        Moments { m: z.clone(), v: z }
    }
}

fn pairs(t: &mut LoraParam<f32>) -> [&mut Vec<f32>; 2] {
    [&mut t.a, &mut t.b]
}

impl AdamW {
    /// One update at 1-based step `t` with learning rate `lr`.
    pub fn step(&self, params: &mut LoraParams<f32>, grads: &LoraParams<f32>, mom: &mut Moments, t: usize, lr: f64) {
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        for (name, p) in params.iter_mut() {
            let g = &grads[name];
            let (m, v) = (mom.m.get_mut(name).expect("moments per param"), mom.v.get_mut(name).expect("moments per param"));
            for (((p, g), m), v) in pairs(p).into_iter().zip([&g.a, &g.b]).zip(pairs(m)).zip(pairs(v)) {
                for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = f64::from(g);
                    let mf = self.beta1 * f64::from(*m) + (1.0 - self.beta1) * g;
                    let vf = self.beta2 * f64::from(*v) + (1.0 - self.beta2) * g * g;
                    *m = mf as f32;
                    *v = vf as f32;
                    let mut pf = f64::from(*p);
                    pf -= lr * self.weight_decay * pf;
                    pf -= lr * (mf / bc1) / ((vf / bc2).sqrt() + self.eps);
                    *p = pf as f32;
                }
            }
        }
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm(grads: &LoraParams<f32>) -> f64 {
    grads.values().flat_map(|g| g.a.iter().chain(&g.b)).map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
}

/// Scales the gradients so their global norm is at most `max` (no-op when `max` ≤ 0).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut LoraParams<f32>, max: f64) -> f64 {
    let norm = grad_norm(grads);
    if max > 0.0 && norm > max {
        let s = (max / (norm + 1e-6)) as f32;
        grads.values_mut().flat_map(|g| g.a.iter_mut().chain(g.b.iter_mut())).for_each(|v| *v *= s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_transformers_formulas() {
        assert_eq!(lr_at(Schedule::Cosine, 1.0, 0, 100, 10), 0.0);
        assert!((lr_at(Schedule::Cosine, 1.0, 5, 100, 10) - 0.5).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!((lr_at(Schedule::Linear, 2.0, 55, 100, 10) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 3.0, 99, 100, 0), 3.0);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        let p = LoraParam { rank: 1, n_in: 2, n_out: 1, scale: 1.0, a: vec![1.0, -1.0], b: vec![0.5] };
        let mut params: LoraParams<f32> = [("w".to_string(), p.clone())].into();
        let grads: LoraParams<f32> = [("w".to_string(), LoraParam { a: vec![0.3, -2.0], b: vec![0.0], ..p })].into();
        let mut mom = Moments::zeros_like(&params);
        AdamW { weight_decay: 0.1, ..AdamW::default() }.step(&mut params, &grads, &mut mom, 1, 0.01);
        let a = &params["w"].a;
        // bias-corrected m/√v = sign(g) at t = 1; decay 0.01·0.1·p first
        assert!((a[0] - (1.0 - 0.001 - 0.01)).abs() < 1e-6, "{a:?}");
        assert!((a[1] - (-1.0 + 0.001 + 0.01)).abs() < 1e-6, "{a:?}");
        assert!((params["w"].b[0] - (0.5 - 0.0005)).abs() < 1e-6);
    }
}
