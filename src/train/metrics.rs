//! Business metrics of a classifier and the statistics that compare two runs on the same
//! records: confusion matrix, per-label precision / recall / F1, macro-F1, one-vs-rest ROC
//! AUC (tied scores count half), McNemar's exact test, paired bootstrap intervals and
//! percentiles. Pure functions over indices and scores; `eval` feeds them.

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One label's figures. Conventions (scikit-learn's with `zero_division=0`): a label never
/// predicted has precision 0, one never expected has recall 0, and F1 is 0 when precision
/// + recall is 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelMetrics {
    pub label: String,
    /// Records whose expected label this is.
    pub support: usize,
    /// Records predicted as this label.
    pub predicted: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// One-vs-rest ROC AUC of this label's score; `None` without scores, or when every
    /// record (or none) has this label.
    pub auc: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Mean F1 over the labels that were expected or predicted at least once.
    pub macro_f1: f64,
    /// Mean of the labels' AUCs that exist.
    pub macro_auc: Option<f64>,
    pub labels: Vec<LabelMetrics>,
    /// `confusion[i][j]`: records expected as `labels[i]` and predicted as `labels[j]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Metrics of `predicted` against `expected` (indices into `labels`, one per record);
/// `scores[r][l]` (optional) is record r's score for label l, higher = more likely.
pub fn classification(labels: &[String], expected: &[usize], predicted: &[usize], scores: Option<&[Vec<f64>]>) -> ClassificationMetrics {
    assert_eq!(expected.len(), predicted.len(), "one prediction per record");
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&e, &p) in expected.iter().zip(predicted) {
        confusion[e][p] += 1;
    }
    let n = expected.len();
    let correct = (0..k).map(|i| confusion[i][i]).sum::<usize>();
    let per: Vec<LabelMetrics> = (0..k)
        .map(|l| {
            let tp = confusion[l][l] as f64;
            let support = confusion[l].iter().sum::<usize>();
            let predicted = (0..k).map(|i| confusion[i][l]).sum::<usize>();
            let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
            let recall = if support == 0 { 0.0 } else { tp / support as f64 };
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            let auc = scores.and_then(|s| {
                let col: Vec<f64> = s.iter().map(|row| row[l]).collect();
                let pos: Vec<bool> = expected.iter().map(|&e| e == l).collect();
                roc_auc(&col, &pos)
            });
            LabelMetrics { label: labels[l].clone(), support, predicted, precision, recall, f1, auc }
        })
        .collect();
    let present: Vec<&LabelMetrics> = per.iter().filter(|m| m.support > 0 || m.predicted > 0).collect();
    let macro_f1 = if present.is_empty() { 0.0 } else { present.iter().map(|m| m.f1).sum::<f64>() / present.len() as f64 };
    let aucs: Vec<f64> = per.iter().filter_map(|m| m.auc).collect();
    let macro_auc = (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64);
    ClassificationMetrics { n, correct, accuracy: correct as f64 / n.max(1) as f64, macro_f1, macro_auc, labels: per, confusion }
}

/// ROC AUC of `scores` for the records marked `positive`: the probability that a random
/// positive scores above a random negative, a tie counting half (Mann–Whitney U over
/// average ranks). `None` when there is no positive or no negative.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len());
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average 1-based ranks over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * order[i..=j].iter().filter(|&&r| positive[r]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// The ROC curve of `scores` for the records marked `positive`: (false-positive rate,
/// true-positive rate) points from (0, 0) to (1, 1), the threshold lowered one distinct
/// score at a time (tied scores move together, a diagonal step), so the trapezoids under it
/// sum to [`roc_auc`]. `None` when there is no positive or no negative.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Option<Vec<(f64, f64)>> {
    assert_eq!(scores.len(), positive.len());
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut out) = (0.0, 0.0, vec![(0.0, 0.0)]);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if positive[order[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        out.push((fp / n_neg, tp / n_pos));
        i = j;
    }
    Some(out)
}

/// McNemar's exact test (two-sided) on the discordant pairs: `a_only` records that the
/// first run got right and the second wrong, `b_only` the reverse. Under the null each
/// discordant record is a fair coin: p = min(1, 2·P[Binomial(n, ½) ≤ min(a_only, b_only)]).
pub fn mcnemar_exact(a_only: usize, b_only: usize) -> f64 {
    let n = a_only + b_only;
    if n == 0 {
        return 1.0;
    }
    let k = a_only.min(b_only);
    // Σ_{i≤k} C(n, i) / 2ⁿ in log space (n may be large).
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut ln_c = 0.0f64; // ln C(n, 0)
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        terms.push(ln_c - ln2n);
        ln_c += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// A two-sided percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// Paired bootstrap: `reps` resamples (with replacement, seeded ChaCha8) of the record
/// indices `0..n`, `stat` evaluated on each; the 2.5th and 97.5th percentiles of the
/// results. The same indices feed both runs' figures inside `stat`, so the pairing is
/// kept. `n` = 0 or `reps` = 0 gives `stat(&[])` for both ends.
pub fn paired_bootstrap(n: usize, reps: usize, seed: u64, mut stat: impl FnMut(&[usize]) -> f64) -> Interval {
    if n == 0 || reps == 0 {
        let v = stat(&[]);
        return Interval { lo: v, hi: v };
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut values: Vec<f64> = (0..reps)
        .map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.random_range(0..n));
            stat(&idx)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    Interval { lo: percentile_sorted(&values, 2.5), hi: percentile_sorted(&values, 97.5) }
}

/// The `q`-th percentile (0–100) of `values`, linear between the closest ranks (numpy's
/// default); `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, q))
}

fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn classification_figures_match_a_hand_computed_case() {
        // Labels yes/no/maybe; "maybe" is expected once and never predicted.
        // expected: yes yes yes no no maybe ; predicted: yes yes no no yes no
        let labels: Vec<String> = ["yes", "no", "maybe"].iter().map(|s| s.to_string()).collect();
        let expected = [0, 0, 0, 1, 1, 2];
        let predicted = [0, 0, 1, 1, 0, 1];
        let m = classification(&labels, &expected, &predicted, None);
        assert_eq!(m.confusion, vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 1, 0]]);
        assert_eq!((m.n, m.correct), (6, 3));
        assert!(close(m.accuracy, 0.5));
        // yes: tp 2, predicted 3, support 3 → p 2/3, r 2/3, f1 2/3.
        assert!(close(m.labels[0].precision, 2.0 / 3.0) && close(m.labels[0].recall, 2.0 / 3.0) && close(m.labels[0].f1, 2.0 / 3.0));
        // no: tp 1, predicted 3, support 2 → p 1/3, r 1/2, f1 = 2·(1/6)/(5/6) = 0.4.
        assert!(close(m.labels[1].precision, 1.0 / 3.0) && close(m.labels[1].recall, 0.5) && close(m.labels[1].f1, 0.4));
        // maybe: never predicted → precision 0 (zero_division=0), recall 0, f1 0.
        assert_eq!((m.labels[2].support, m.labels[2].predicted), (1, 0));
        assert_eq!((m.labels[2].precision, m.labels[2].recall, m.labels[2].f1), (0.0, 0.0, 0.0));
        assert!(close(m.macro_f1, (2.0 / 3.0 + 0.4 + 0.0) / 3.0));
        assert_eq!(m.macro_auc, None);
    }

    #[test]
    fn a_label_neither_expected_nor_predicted_is_left_out_of_macro_f1() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = classification(&labels, &[0, 1], &[0, 1], None);
        assert!(close(m.macro_f1, 1.0), "{}", m.macro_f1);
        assert_eq!(m.labels[2].f1, 0.0);
    }

    #[test]
    fn auc_counts_ties_half() {
        // positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 → ½) (0.5>0.1) = 3.5/4.
        assert_eq!(roc_auc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]), Some(0.875));
        // Perfect and reversed orderings; all scores equal gives ½.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]), Some(0.0));
        assert_eq!(roc_auc(&[0.3; 5], &[true, false, true, false, false]), Some(0.5));
        // No negatives (or positives): undefined.
        assert_eq!(roc_auc(&[0.3, 0.4], &[true, true]), None);
        assert_eq!(roc_auc(&[], &[]), None);
    }

    #[test]
    fn auc_per_label_comes_from_the_scores() {
        let labels: Vec<String> = ["yes", "no"].iter().map(|s| s.to_string()).collect();
        let scores = vec![vec![0.9, 0.1], vec![0.6, 0.4], vec![0.6, 0.4], vec![0.2, 0.8]];
        let m = classification(&labels, &[0, 0, 1, 1], &[0, 0, 0, 1], Some(&scores));
        // yes: positives 0.9, 0.6 vs negatives 0.6, 0.2 → (1 + 1 + ½ + 1)/4; no: the mirror.
        assert_eq!(m.labels[0].auc, Some(0.875));
        assert_eq!(m.labels[1].auc, Some(0.875));
        assert_eq!(m.macro_auc, Some(0.875));
    }

    #[test]
    fn mcnemar_exact_matches_the_binomial_tail() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // n 7, k 1: 2·(1 + 7)/128.
        assert!(close(mcnemar_exact(1, 6), 0.125));
        assert!(close(mcnemar_exact(6, 1), 0.125));
        // n 5, k 0: 2/32.
        assert!(close(mcnemar_exact(0, 5), 0.0625));
        // n 12, k 2: 2·(1 + 12 + 66)/4096.
        assert!(close(mcnemar_exact(2, 10), 158.0 / 4096.0));
        // Balanced: capped at 1.
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // Large n stays finite: n 2000, k 900 (normal approximation z ≈ −4.47, p ≈ 7.7e-6).
        let p = mcnemar_exact(900, 1100);
        assert!(p > 5e-6 && p < 1.2e-5, "{p}");
    }

    #[test]
    fn bootstrap_interval_is_seeded_and_covers_the_truth() {
        // Every record's difference the same: the interval collapses onto it.
        let d = vec![0.25; 40];
        let mean = |ix: &[usize]| ix.iter().map(|&i| d[i]).sum::<f64>() / ix.len() as f64;
        let iv = paired_bootstrap(d.len(), 500, 7, mean);
        assert!(close(iv.lo, 0.25) && close(iv.hi, 0.25), "{iv:?}");

        // Differences ±1, half each, n = 400: mean 0, sd 1 → the 95% interval ≈ ±1.96/√400 = ±0.098.
        let d: Vec<f64> = (0..400).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let mean = |ix: &[usize]| ix.iter().map(|&i| d[i]).sum::<f64>() / ix.len() as f64;
        let iv = paired_bootstrap(d.len(), 4000, 1, mean);
        assert!((iv.lo + 0.098).abs() < 0.015 && (iv.hi - 0.098).abs() < 0.015, "{iv:?}");
        assert_eq!(iv, paired_bootstrap(d.len(), 4000, 1, mean), "same seed, same interval");
        assert_ne!(iv, paired_bootstrap(d.len(), 4000, 2, mean));
    }

    #[test]
    fn the_roc_curve_has_the_auc_under_it() {
        // Ties at 0.5 (one positive, one negative) make a diagonal step.
        let scores = [0.9, 0.8, 0.5, 0.5, 0.3, 0.1];
        let positive = [true, false, true, false, true, false];
        let c = roc_curve(&scores, &positive).unwrap();
        let third = 1.0 / 3.0;
        assert_eq!(c, vec![(0.0, 0.0), (0.0, third), (third, third), (2.0 * third, 2.0 * third), (2.0 * third, 1.0), (1.0, 1.0)]);
        let area: f64 = c.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        assert!((area - roc_auc(&scores, &positive).unwrap()).abs() < 1e-12, "{area}");
        assert_eq!(roc_curve(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), Some(2.5));
        assert!(close(percentile(&[1.0, 2.0, 3.0, 4.0], 95.0).unwrap(), 3.85));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
