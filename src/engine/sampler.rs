//! Token sampling over a logits vector, in Rust so that every generation backend samples
//! the same way. Chain order (as llama.cpp's common sampler): repeat penalty → top-k →
//! top-p → min-p → temperature → draw. Temperature 0 is greedy (first maximum wins, as
//! llama.cpp's greedy sampler).

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::EngineError;

/// Sampling settings. `Default` is greedy with no penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off. Divides positive logits (multiplies negative ones) of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, reason: &str| Err(EngineError::BadSampling { field, reason: reason.into() });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad("min_p", "must be in [0, 1)");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// A sampler with its own random stream and penalty window.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    recent: VecDeque<i32>,
    scratch: Vec<(i32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, recent: VecDeque::new(), scratch: Vec::new() })
    }

    /// Records tokens already in the context (the prompt) for the repeat penalty.
    pub fn observe(&mut self, tokens: &[i32]) {
        for &t in tokens {
            self.accept(t);
        }
    }

    fn accept(&mut self, token: i32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Picks the next token from `logits` and records it.
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let p = &self.params;
        let penalize = p.repeat_penalty != 1.0 && !self.recent.is_empty();
        let token = if p.temperature <= 0.0 && !penalize {
            argmax(logits)
        } else {
            self.scratch.clear();
            self.scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as i32, l)));
            if penalize {
                let mut seen: Vec<i32> = self.recent.iter().copied().collect();
                seen.sort_unstable();
                seen.dedup();
                for t in seen {
                    if let Some(c) = self.scratch.get_mut(t as usize) {
                        c.1 = if c.1 > 0.0 { c.1 / p.repeat_penalty } else { c.1 * p.repeat_penalty };
                    }
                }
            }
            if p.temperature <= 0.0 {
                let l: Vec<f32> = self.scratch.iter().map(|c| c.1).collect();
                argmax(&l)
            } else {
                self.draw()
            }
        };
        self.accept(token);
        token
    }

    fn draw(&mut self) -> i32 {
        let p = self.params.clone();
        let c = &mut self.scratch;
        if (p.top_k == 0 || p.top_k >= c.len()) && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // Nothing is cut: draw from the whole softmax in id order (no sort).
            let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
            let weights = softmax(c.iter().map(|x| f64::from((x.1 - max) / p.temperature)));
            return pick(&mut self.rng, c, &weights);
        }
        // Highest first; ties by id for determinism.
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < c.len() {
            c.truncate(p.top_k);
        }
        let max = c[0].1;
        // Probabilities at temperature 1 decide top-p/min-p (as llama.cpp).
        let probs: Vec<f64> = softmax(c.iter().map(|x| f64::from(x.1 - max)));
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
        }
        c.truncate(keep);
        let weights = softmax(c.iter().map(|x| f64::from((x.1 - max) / p.temperature)));
        pick(&mut self.rng, c, &weights)
    }
}

/// The candidate a uniform draw lands on, with `weights` (summing to 1) in candidate order.
fn pick(rng: &mut ChaCha8Rng, c: &[(i32, f32)], weights: &[f64]) -> i32 {
    let mut u: f64 = rng.random::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return c[i].0;
        }
        u -= w;
    }
    c[c.len() - 1].0
}

fn softmax(xs: impl Iterator<Item = f64>) -> Vec<f64> {
    let e: Vec<f64> = xs.map(f64::exp).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Index of the first maximum.
pub fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as i32
}

/// The `k` highest (id, logit) pairs, highest first (ties by lower id).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(i32, f32)> {
    let mut v: Vec<(i32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as i32, l)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn repeat_penalty_moves_greedy_off_a_recent_token() {
        let params = SamplingParams { repeat_penalty: 2.0, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        s.observe(&[1]);
        assert_eq!(s.sample(&[0.0, 3.0, 2.0]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let params = SamplingParams { temperature: 5.0, top_k: 1, seed: 9, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 0.2, 0.9, 0.3]), 2);
        }
    }

    #[test]
    fn same_seed_same_draws_and_temperature_spreads_them() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams { temperature: 1.0, seed: 42, ..Default::default() };
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(params.clone());
        assert_eq!(a, draw(params.clone()));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 10, "only {} distinct tokens", distinct.len());
        assert_ne!(a, draw(SamplingParams { seed: 43, ..params }));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // One dominant token (p ≈ 0.98): top_p 0.5 and min_p 0.5 both leave only it.
        let logits = [10.0, 6.0, 5.0, 4.0];
        for params in [
            SamplingParams { temperature: 1.0, top_p: 0.5, seed: 1, ..Default::default() },
            SamplingParams { temperature: 1.0, min_p: 0.5, seed: 1, ..Default::default() },
        ] {
            let mut s = Sampler::new(params).unwrap();
            for _ in 0..100 {
                assert_eq!(s.sample(&logits), 0);
            }
        }
    }

    #[test]
    fn bad_params_are_rejected_by_field() {
        let err = Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).err().unwrap();
        assert!(err.to_string().contains("top_p"), "{err}");
        let err = Sampler::new(SamplingParams { temperature: f32::NAN, ..Default::default() }).err().unwrap();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
}
