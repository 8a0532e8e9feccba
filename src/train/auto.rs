//! `train --auto`: a training recipe chosen on held-out data within a time budget, for a
//! user who has a few hundred examples and no wish to tune (the seed's "automatic
//! adaptation").
//!
//! Three stages, all timed against one budget:
//! 1. **Screen**: each candidate of the space (learning rate × rank × targets) trains the
//!    same number of steps S on the training split, with the cosine schedule planned for the
//!    longest run allowed, and is scored by its loss on the validation split; the better half
//!    continue to 2·S steps and are scored again (successive halving); the best of them is
//!    kept.
//! 2. **Extend**: the best candidate keeps training, scored every half epoch ([`Validation`]:
//!    the share of greedy-exact answers first, the loss second); it stops when
//!    the validation score has not improved for `patience` scores, at `max_epochs`, or when
//!    the rest of the budget is needed for stage 3 (at least `final_share` of it is kept).
//!    The best-scoring point is the recipe's length when early stopping ended the stage;
//!    when the budget did (no sign yet that a longer run hurts), the length is the longest
//!    run the rest of the budget holds (not shorter than the best point, at most
//!    `max_epochs`).
//! 3. **Final**: the chosen recipe (its settings and length in epochs) trains anew on all
//!    the data (training + validation split), the schedule planned for that length. When
//!    the budget left cannot hold it, stage 2's best factors are the result instead, and the
//!    report says so (`final_on`).
//!
//! Every step's numbers remain a function of (seed, config, data), as in [`Trainer`].

use std::time::Instant;

use serde::Serialize;

use super::eval::Validation;
use super::trainer::{parse_targets, FrozenPair, TrainConfig, Trainer};
use super::data::Example;
use crate::error::{Error, TrainError};
use crate::gguf::GgufFile;
use crate::model::grad::LoraParams;

/// One point of the search space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    pub lr: f64,
    pub rank: usize,
    /// alpha = 2·rank (the seed's r16/alpha32 ratio).
    pub alpha: f32,
    /// `q_proj,v_proj` or `all-linear`, as `--targets` takes them.
    pub targets: String,
    /// The layers that get factors.
    pub layers: Layers,
}

/// Which layers a recipe trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layers {
    All,
    /// Layers n/2 … n−1. The frozen lower half runs once per example ([`super::frozen`])
    /// and backward stops at the middle: a step costs about half of an all-layer one.
    UpperHalf,
}

impl Layers {
    /// `--layers` for a model of `n_layer` layers.
    pub fn range(self, n_layer: usize) -> Option<(usize, usize)> {
        match self {
            Layers::All => None,
            Layers::UpperHalf => Some((n_layer / 2, n_layer.saturating_sub(1))),
        }
    }
}

impl Recipe {
    pub fn label(&self) -> String {
        let layers = match self.layers {
            Layers::All => "",
            Layers::UpperHalf => ", upper half",
        };
        format!("{} r{} lr {:.0e}{layers}", self.targets, self.rank, self.lr)
    }
}

/// The default space, every candidate on the upper half of the layers (a step costs
/// 1.4–1.8× less than on all of them: the lower half's outputs are kept per example):
/// all-linear r16 at 1e-3 and 5e-4, all-linear r8 and q/v-only r16 at 1e-3. No rate
/// above 1e-3: the screen ranks by the loss after a few steps, which favours the largest
/// rate, and on the credit example the runs at 2e-3 stalled (an `--auto` run that chose
/// it: 87.5% held out after 347 steps, and still after 150 more) where a plain upper-half
/// r16 run at 1e-3 learned the rule by step 300 (100% after 500 steps).
pub fn default_space() -> Vec<Recipe> {
    let r = |lr: f64, rank: usize, targets: &str| Recipe { lr, rank, alpha: 2.0 * rank as f32, targets: targets.into(), layers: Layers::UpperHalf };
    vec![r(1e-3, 16, "all-linear"), r(5e-4, 16, "all-linear"), r(1e-3, 8, "all-linear"), r(1e-3, 16, "q_proj,v_proj")]
}

/// The search's settings.
#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// Wall-clock budget of the three stages together, seconds.
    pub budget_secs: f64,
    /// The candidates, in screening order.
    pub space: Vec<Recipe>,
    /// The longest run (epochs of the training split) stage 2 may reach.
    pub max_epochs: f64,
    /// Scores without improvement before stage 2 stops.
    pub patience: usize,
    /// Share of the budget the screen may use.
    pub screen_share: f64,
    /// Share of the budget kept for stage 3: stage 2 ends before it.
    pub final_share: f64,
}

impl Default for AutoOptions {
    fn default() -> Self {
        AutoOptions { budget_secs: 15.0 * 60.0, space: default_space(), max_epochs: 8.0, patience: 3, screen_share: 0.15, final_share: 0.6 }
    }
}

/// A validation score during the search.
#[derive(Debug, Clone, Serialize)]
pub struct ScorePoint {
    pub step: usize,
    pub epoch: f64,
    pub val_loss: f64,
    pub val_exact: f64,
    /// Seconds since the search started.
    pub at_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub recipe: Recipe,
    pub points: Vec<ScorePoint>,
    /// Seconds per optimizer step, measured.
    pub step_secs: f64,
}

/// What the search did and chose (stored in the manifest's `training.auto`).
#[derive(Debug, Clone, Serialize)]
pub struct AutoReport {
    pub budget_secs: f64,
    pub n_train: usize,
    pub n_val: usize,
    pub screen_steps: usize,
    pub trials: Vec<Trial>,
    /// Index into `trials` of the chosen recipe.
    pub chosen: usize,
    /// The chosen length: stage 2's best point, in epochs of the training split.
    pub chosen_epochs: f64,
    /// Why stage 2 stopped.
    pub stopped: String,
    /// `all` (stage 3 trained on training + validation) or `train-split` (no time left:
    /// stage 2's best factors).
    pub final_on: String,
    /// Steps stage 3 ran (after `continued_from` when it continued stage 2's run).
    pub final_steps: usize,
    /// `final_steps` in epochs of the data it trained on.
    pub final_epochs: f64,
    /// The stage-2 step stage 3 continued from (stopped by the budget), or `None` when the
    /// final run trained anew.
    pub continued_from: Option<usize>,
    pub spent_secs: f64,
}

/// Stage 2's ordering of scores: more exact answers first, then lower loss.
fn better(a: &Validation, b: &Validation) -> bool {
    a.exact > b.exact + 1e-12 || ((a.exact - b.exact).abs() <= 1e-12 && a.loss < b.loss)
}

/// The screen's ordering: lower loss. After a few steps the exact share mostly counts the
/// majority label (measured: at 17 steps four of five credit candidates scored 62.3%, the
/// always-reject rate, and the one with the lowest loss scored 57.1%); the loss is the
/// smoother early signal.
fn screens_better(a: &Validation, b: &Validation) -> bool {
    a.loss < b.loss
}

fn config_for(base: &TrainConfig, r: &Recipe, steps: usize, n_layer: usize) -> Result<TrainConfig, Error> {
    Ok(TrainConfig { lr: r.lr, rank: r.rank, alpha: r.alpha, targets: parse_targets(&r.targets)?, layers: r.layers.range(n_layer), steps, ..base.clone() })
}

/// A new candidate shares the frozen-layer states of an earlier one on the same splits
/// (the screen's candidates, the final run's first examples and its validation split).
fn share_frozen(t: &mut Trainer, shared: &mut Option<FrozenPair>) {
    match (t.frozen_states(), shared.as_ref()) {
        (Some(mine), Some(other)) if mine.train.layer() == other.train.layer() => {
            t.share_frozen_states(other.clone()).expect("same layer");
        }
        (Some(mine), _) => *shared = Some(mine),
        (None, _) => {}
    }
}

/// Runs the search. `base_config` gives everything but lr, rank, alpha, targets and steps
/// (batch, seed, schedule, max length, …); `on_event` receives one line per score and
/// stage. Returns the trainer holding the result (its `params`) and the report.
pub fn search<'a>(
    base: &'a GgufFile,
    base_config: &TrainConfig,
    train: Vec<Example>,
    val: Vec<Example>,
    data_fingerprint: String,
    opts: &AutoOptions,
    on_event: &mut dyn FnMut(&str),
) -> Result<(Trainer<'a>, AutoReport), Error> {
    let bad = |reason: String| -> Error { TrainError::BadOption { option: "--auto".into(), reason }.into() };
    if train.len() < 8 || val.len() < 4 {
        return Err(bad(format!("needs at least 8 training and 4 validation examples, got {} and {}", train.len(), val.len())));
    }
    if opts.space.is_empty() || !(opts.budget_secs > 0.0) || !(opts.max_epochs >= 1.0) {
        return Err(bad("an empty search space, a budget ≤ 0 or max epochs < 1".into()));
    }
    let t0 = Instant::now();
    let elapsed = || t0.elapsed().as_secs_f64();
    let n_layer = crate::model::config::ModelConfig::from_gguf(base)?.n_layer;
    let mut shared: Option<FrozenPair> = None;
    let (n_train, n_val) = (train.len(), val.len());
    let epoch_steps = base_config.steps_for_epochs(1, n_train);
    let planned = ((opts.max_epochs * epoch_steps as f64).ceil() as usize).max(1);
    let score = |t: &Trainer, at: f64| -> Result<(Validation, ScorePoint), Error> {
        let v = t.validate()?.expect("validation examples exist");
        Ok((v, ScorePoint { step: t.step, epoch: t.step as f64 / epoch_steps as f64, val_loss: v.loss, val_exact: v.exact, at_secs: at }))
    };

    // Stage 1: the screen, two rungs of successive halving. Rung 1 trains every candidate
    // S steps; the better half (rounded up) continue to 2·S; the best of those goes on.
    // S: the screen's share of the budget over 5·S + 3·S steps and 8 scores (5
    // candidates), ≥ 8 and ≤ half an epoch, sized by the first candidate's first three
    // steps. A machine too slow for that screens in one rung, and if even that does not
    // fit, only the first candidates of the space (the first is the default recipe), so
    // the screen keeps its share and the final run its steps.
    let k = opts.space.len();
    let survivors = k.div_ceil(2);
    let mut trials: Vec<Trial> = Vec::new();
    let mut alive: Vec<(usize, Trainer<'a>, Validation)> = Vec::new();
    let half_epoch = (epoch_steps / 2).max(1);
    let floor = 8.min(half_epoch);
    let mut screen_steps = half_epoch;
    let (mut n_screen, mut two_rungs) = (k, k > 1);
    for (i, recipe) in opts.space.iter().enumerate() {
        if i >= n_screen {
            break;
        }
        let mut t = Trainer::new(base, config_for(base_config, recipe, planned, n_layer)?, train.clone(), val.clone(), data_fingerprint.clone())?;
        share_frozen(&mut t, &mut shared);
        let mut secs = 0.0;
        while t.step < screen_steps {
            secs += t.train_step()?.secs;
            if i == 0 && t.step == 3 {
                let per_step = secs / 3.0;
                // A score: one forward (about a third of a step) per validation batch.
                let score_secs = per_step / 3.0 * (n_val as f64 / base_config.batch.max(1) as f64).ceil();
                let share = opts.screen_share * opts.budget_secs;
                // The longest S that `runs` candidate-rungs fit in the share.
                let fit = |runs: usize| ((share - runs as f64 * score_secs) / (runs as f64 * per_step)).max(0.0) as usize;
                if two_rungs && fit(k + survivors) >= floor {
                    screen_steps = fit(k + survivors).min(half_epoch);
                } else if fit(k) >= floor {
                    two_rungs = false;
                    screen_steps = fit(k).min(half_epoch);
                } else {
                    two_rungs = false;
                    n_screen = ((share / (floor as f64 * per_step + score_secs)) as usize).clamp(1, k);
                    screen_steps = floor;
                    on_event(&format!("screen: {per_step:.1} s per step; the screen's share ({share:.0} s) holds {n_screen} of {k} candidates at {floor} steps"));
                }
            }
        }
        let (v, p) = score(&t, elapsed())?;
        on_event(&format!("screen {}/{k} {}: {} steps, validation exact {:.1}% loss {:.4} [{:.0} s]", i + 1, recipe.label(), t.step, v.exact * 100.0, v.loss, p.at_secs));
        trials.push(Trial { recipe: recipe.clone(), points: vec![p], step_secs: secs / t.step.max(1) as f64 });
        // Keep the better half only (a trainer holds the dense output matrix).
        alive.push((i, t, v));
        alive.sort_by(|a, b| a.2.loss.total_cmp(&b.2.loss).then(a.0.cmp(&b.0)));
        alive.truncate(survivors);
    }
    let mut best: Option<(usize, Trainer<'a>, Validation)> = None;
    if two_rungs {
        alive.sort_by_key(|a| a.0);
        for (i, mut t, _) in alive {
            let mut secs = 0.0;
            while t.step < 2 * screen_steps {
                secs += t.train_step()?.secs;
            }
            let (v, p) = score(&t, elapsed())?;
            on_event(&format!("screen rung 2 {}: {} steps, validation exact {:.1}% loss {:.4} [{:.0} s]", opts.space[i].label(), t.step, v.exact * 100.0, v.loss, p.at_secs));
            let tr = &mut trials[i];
            tr.step_secs = (tr.step_secs * screen_steps as f64 + secs) / t.step as f64;
            tr.points.push(p);
            if best.as_ref().is_none_or(|(_, _, b)| screens_better(&v, b)) {
                best = Some((i, t, v));
            }
        }
    } else {
        // One rung: the lowest validation loss (`alive` is sorted by it).
        best = alive.into_iter().next();
    }
    let (chosen, mut t, first) = best.expect("a non-empty space");
    on_event(&format!("chosen: {}", opts.space[chosen].label()));

    // Stage 2: extend the best, scored every half epoch. A step's time is re-measured on
    // each stretch: the screen's steps also computed the frozen layers' states of the
    // examples they met first, so they overstate a later step.
    let mut step_secs = trials[chosen].step_secs;
    let all_steps_per_epoch = base_config.steps_for_epochs(1, n_train + n_val) as f64;
    let final_secs = |epochs: f64, step_secs: f64| epochs * all_steps_per_epoch * step_secs;
    let every = half_epoch;
    let (mut best_v, mut best_step, mut best_params): (Validation, usize, LoraParams<f32>) = (first, t.step, t.params.clone());
    let mut since_better = 0;
    let stopped = loop {
        if t.step >= planned {
            break format!("reached {} epochs", opts.max_epochs);
        }
        if since_better >= opts.patience {
            break format!("no better validation score in {} scores", opts.patience);
        }
        let next = (t.step + every).min(planned);
        // Time for the next scores and for stage 3 at that length.
        let stretch = (next - t.step) as f64 * step_secs;
        let needed = stretch + final_secs(next as f64 / epoch_steps as f64, step_secs);
        if elapsed() + needed > opts.budget_secs || elapsed() + stretch > opts.budget_secs * (1.0 - opts.final_share) {
            break "the budget".into();
        }
        let mut secs = 0.0;
        let from = t.step;
        while t.step < next {
            secs += t.train_step()?.secs;
        }
        step_secs = secs / (t.step - from).max(1) as f64;
        let (v, p) = score(&t, elapsed())?;
        on_event(&format!("extend {}: step {} ({:.1} epochs), validation exact {:.1}% loss {:.4} [{:.0} s]", opts.space[chosen].label(), p.step, p.epoch, v.exact * 100.0, v.loss, p.at_secs));
        trials[chosen].points.push(p);
        if better(&v, &best_v) {
            (best_v, best_step, best_params) = (v, t.step, t.params.clone());
            since_better = 0;
        } else {
            since_better += 1;
        }
    };
    let chosen_epochs = best_step as f64 / epoch_steps as f64;
    on_event(&format!("stage 2 stopped ({stopped}); best at step {best_step} ({chosen_epochs:.1} epochs): exact {:.1}% loss {:.4}", best_v.exact * 100.0, best_v.loss));

    // Stage 3: the chosen recipe on all the data. Stopped by the budget (the score was
    // still improving, or within patience of its best), stage 2's run continues on all the
    // data for as long as the rest of the budget allows: the search's steps are kept, not
    // thrown away (on the credit example a fresh final run had 230-340 steps, too few to
    // learn the score threshold; the same recipe at 512 steps learned it). Stopped by the
    // score, the recipe trains anew for the best point's length, planned for that length.
    let all_cap = (opts.max_epochs * all_steps_per_epoch).round() as usize;
    let affordable = |spent: f64| ((opts.budget_secs - spent) * 0.97 / step_secs).floor().max(0.0) as usize;
    let extra = if stopped == "the budget" { affordable(elapsed()).min(all_cap.saturating_sub(t.step)) } else { 0 };
    let (result, final_on, final_steps, continued_from) = if extra > 0 {
        let from = t.step;
        on_event(&format!("final: {} continues from step {from} on all {} examples, {extra} more steps", opts.space[chosen].label(), n_train + n_val));
        t.extend_train(val.clone())?;
        t.config.steps = from + extra;
        keep_budget(&mut t, opts.budget_secs, &elapsed, on_event)?;
        let done = t.step - from;
        (t, "all".to_string(), done, Some(from))
    } else {
        let mut final_steps = ((chosen_epochs * all_steps_per_epoch).round() as usize).max(1);
        if stopped == "the budget" {
            final_steps = final_steps.max(affordable(elapsed()).min(all_cap));
        }
        if elapsed() + final_steps as f64 * step_secs <= opts.budget_secs {
            drop(t);
            on_event(&format!("final: {} on all {} examples, {final_steps} steps", opts.space[chosen].label(), n_train + n_val));
            let mut all = train;
            all.extend(val.iter().cloned());
            let mut f = Trainer::new(base, config_for(base_config, &opts.space[chosen], final_steps, n_layer)?, all, val, data_fingerprint)?;
            // Its first examples are the training split, in order: their states carry over.
            share_frozen(&mut f, &mut shared);
            keep_budget(&mut f, opts.budget_secs, &elapsed, on_event)?;
            let done = f.step;
            (f, "all".to_string(), done, None)
        } else {
            on_event(&format!("final: no time left for {final_steps} steps on all the data; keeping stage 2's best (step {best_step})"));
            t.params = best_params;
            t.step = best_step;
            (t, "train-split".to_string(), best_step, None)
        }
    };
    let final_epochs = final_steps as f64 / if final_on == "all" { all_steps_per_epoch } else { epoch_steps as f64 };
    let report = AutoReport { budget_secs: opts.budget_secs, n_train, n_val, screen_steps, trials, chosen, chosen_epochs, stopped, final_on, final_steps, final_epochs, continued_from, spent_secs: elapsed() };
    Ok((result, report))
}

/// Runs `t` to its configured steps; on a machine slower than the screen measured (another
/// job on it) the schedule is shortened to end at the budget, so the learning rate still
/// decays to its end. It is never lengthened.
fn keep_budget(t: &mut Trainer, budget_secs: f64, elapsed: &dyn Fn() -> f64, on_event: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let (t0, step0) = (Instant::now(), t.step);
    while t.step < t.config.steps {
        t.train_step()?;
        let done = t.step - step0;
        if done % 8 == 0 {
            let pace = t0.elapsed().as_secs_f64() / done as f64;
            let left = ((budget_secs - elapsed()) / pace).floor().max(1.0) as usize;
            if t.step + left < t.config.steps {
                on_event(&format!("final: slower than measured ({pace:.2} s per step); the schedule now ends at step {} to keep the budget", t.step + left));
                t.config.steps = t.step + left;
            }
        }
    }
    Ok(())
}
