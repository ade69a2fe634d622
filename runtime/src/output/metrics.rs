//! Classification metrics: accuracy, per-class and macro precision/recall/F1 (0 where
//! undefined, as scikit-learn's `zero_division=0`), confusion matrix, agreement with a
//! teacher, and expected calibration error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One class's scores.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClassScores {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// A model's metrics on one split, as `summary.json` holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SplitMetrics {
    pub data: String,
    pub n: usize,
    pub accuracy: f64,
    /// Macro averages over the classes that occur in the labels or the predictions.
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub per_class: Vec<ClassScores>,
    /// Rows are true classes, columns predicted classes.
    pub confusion: Vec<Vec<usize>>,
    pub agreement: Option<f64>,
    /// With two or more teachers in the plan: agreement with each, by name (`agreement`
    /// is the first declared's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agreement_with: BTreeMap<String, f64>,
    pub ece: f64,
}

impl SplitMetrics {
    /// A metric that is one number of these metrics (not the loss, which a split's
    /// predictions do not give, nor the tables).
    pub fn scalar(&self, metric: kd_plan::Metric) -> Option<f64> {
        use kd_plan::Metric;
        match metric {
            Metric::Accuracy => Some(self.accuracy),
            Metric::Precision => Some(self.precision),
            Metric::Recall => Some(self.recall),
            Metric::F1 => Some(self.f1),
            Metric::Ece => Some(self.ece),
            Metric::Agreement => self.agreement,
            Metric::Loss | Metric::Confusion | Metric::PerClass => None,
        }
    }
}

/// Confusion matrix of `classes` x `classes`; labels or predictions out of range are
/// ignored.
pub fn confusion(labels: &[u32], predictions: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut matrix = vec![vec![0usize; classes]; classes];
    for (&y, &p) in labels.iter().zip(predictions) {
        if let Some(row) = matrix.get_mut(y as usize) {
            if let Some(cell) = row.get_mut(p as usize) {
                *cell += 1;
            }
        }
    }
    matrix
}

pub fn accuracy(labels: &[u32], predictions: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = labels
        .iter()
        .zip(predictions)
        .filter(|(y, p)| y == p)
        .count();
    correct as f64 / labels.len() as f64
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Per-class scores from a confusion matrix, named by `class_names` (or the class id).
pub fn per_class(matrix: &[Vec<usize>], class_names: &[String]) -> Vec<ClassScores> {
    let classes = matrix.len();
    (0..classes)
        .map(|c| {
            let tp = matrix[c][c];
            let support: usize = matrix[c].iter().sum();
            let predicted: usize = matrix.iter().map(|row| row[c]).sum();
            let fp = predicted - tp;
            let fn_ = support - tp;
            ClassScores {
                class: class_names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                precision: ratio(tp, predicted),
                recall: ratio(tp, support),
                f1: ratio(2 * tp, 2 * tp + fp + fn_),
                support,
            }
        })
        .collect()
}

/// Macro precision, recall and F1 over the classes present in the labels or predictions
/// (scikit-learn's default label set).
pub fn macro_scores(matrix: &[Vec<usize>], scores: &[ClassScores]) -> (f64, f64, f64) {
    let present: Vec<&ClassScores> = scores
        .iter()
        .enumerate()
        .filter(|(c, s)| s.support > 0 || matrix.iter().any(|row| row[*c] > 0))
        .map(|(_, s)| s)
        .collect();
    if present.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let n = present.len() as f64;
    (
        present.iter().map(|s| s.precision).sum::<f64>() / n,
        present.iter().map(|s| s.recall).sum::<f64>() / n,
        present.iter().map(|s| s.f1).sum::<f64>() / n,
    )
}

/// Fraction of samples where two models predict the same class.
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    accuracy(a, b)
}

/// Expected calibration error over `bins` equal-width confidence bins `(k/bins, (k+1)/bins]`:
/// the sample-weighted mean of `|accuracy - mean confidence|` per bin.
pub fn ece(confidences: &[f64], correct: &[bool], bins: usize) -> f64 {
    let n = confidences.len().min(correct.len());
    if n == 0 || bins == 0 {
        return 0.0;
    }
    let mut count = vec![0usize; bins];
    let mut confidence_sum = vec![0.0f64; bins];
    let mut correct_sum = vec![0usize; bins];
    for (&confidence, &is_correct) in confidences.iter().zip(correct) {
        let bin = ((confidence * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[bin] += 1;
        confidence_sum[bin] += confidence;
        correct_sum[bin] += usize::from(is_correct);
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let size = count[b] as f64;
            (size / n as f64) * (correct_sum[b] as f64 / size - confidence_sum[b] / size).abs()
        })
        .sum()
}

/// Number of bins the summary's `ece` uses.
pub const ECE_BINS: usize = 15;

/// Everything the summary reports for one model on one split.
pub fn split_metrics(
    data: &str,
    labels: &[u32],
    predictions: &[u32],
    confidences: &[f64],
    class_names: &[String],
    teacher_predictions: Option<&[u32]>,
) -> SplitMetrics {
    let classes = class_names.len();
    let matrix = confusion(labels, predictions, classes);
    let per_class = per_class(&matrix, class_names);
    let (precision, recall, f1) = macro_scores(&matrix, &per_class);
    let correct: Vec<bool> = labels
        .iter()
        .zip(predictions)
        .map(|(y, p)| y == p)
        .collect();
    SplitMetrics {
        data: data.to_string(),
        n: labels.len(),
        accuracy: accuracy(labels, predictions),
        precision,
        recall,
        f1,
        per_class,
        confusion: matrix,
        agreement: teacher_predictions.map(|t| agreement(predictions, t)),
        agreement_with: BTreeMap::new(),
        ece: ece(confidences, &correct, ECE_BINS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|c| format!("c{c}")).collect()
    }

    #[test]
    fn hand_computed_three_classes() {
        // y:    0 0 1 1 2 2
        // pred: 0 1 1 1 0 2
        let y = [0, 0, 1, 1, 2, 2];
        let p = [0, 1, 1, 1, 0, 2];
        let m = split_metrics("d", &y, &p, &[0.9; 6], &names(3), None);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // class 0: tp 1, fp 1, fn 1 -> p .5 r .5 f1 .5
        // class 1: tp 2, fp 1, fn 0 -> p 2/3 r 1 f1 .8
        // class 2: tp 1, fp 0, fn 1 -> p 1 r .5 f1 2/3
        let pc = &m.per_class;
        assert!((pc[0].f1 - 0.5).abs() < 1e-12);
        assert!((pc[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((pc[1].f1 - 0.8).abs() < 1e-12);
        assert!((pc[2].recall - 0.5).abs() < 1e-12);
        assert!((m.f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m.precision - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(pc[2].support, 2);
        assert_eq!(pc[0].class, "c0");
    }

    #[test]
    fn zero_division_is_zero_and_absent_classes_do_not_count() {
        // Class 1 never predicted: precision 0; class 2 absent from both: left out.
        let y = [0, 1];
        let p = [0, 0];
        let m = split_metrics("d", &y, &p, &[1.0, 1.0], &names(3), None);
        assert_eq!(m.per_class[1].precision, 0.0);
        assert_eq!(m.per_class[1].f1, 0.0);
        // class 0: p .5 r 1 f1 2/3; class 1: 0 0 0
        assert!((m.f1 - (2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.recall - 0.5).abs() < 1e-12);
    }

    #[test]
    fn agreement_and_ece() {
        assert!((agreement(&[1, 2, 3, 4], &[1, 2, 0, 4]) - 0.75).abs() < 1e-12);
        // Two bins used: (0.6,0.667] has {0.65 correct, 0.65 wrong} -> |0.5-0.65| = .15;
        // (0.933,1] has {1.0 correct} -> 0.
        let e = ece(&[0.65, 0.65, 1.0], &[true, false, true], 15);
        assert!((e - (2.0 / 3.0) * 0.15).abs() < 1e-12, "{e}");
        assert_eq!(ece(&[], &[], 15), 0.0);
    }
}
