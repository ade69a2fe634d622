//! `summary.json` (its shape is `docs/summary.schema.json`) and the human report.

use std::collections::BTreeMap;
use std::fmt::Write;

use kd_plan::Role;
use serde::{Deserialize, Serialize};

use crate::output::metrics::SplitMetrics;
use crate::train::checkpoint::SeedRecord;
use kd_plan::Plan;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub pipeline: String,
    /// The base seed; the run used `seeds`.
    pub seed: u64,
    pub seeds: Vec<u64>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU a CUDA run used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::device::GpuInfo>,
    pub threads: usize,
    pub provenance: Provenance,
    pub models: BTreeMap<String, ModelSummary>,
    pub stages: Vec<StageSummary>,
    /// The most memory the kdc process held at once (its peak resident set, in MiB), where
    /// the system says (Linux); for a resumed run, the peak of the last process only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
}

/// The process's peak resident set in MiB (`VmHWM` in /proc/self/status), on Linux.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Provenance {
    pub kdc_version: String,
    pub plan_hash: String,
    pub overrides: BTreeMap<String, String>,
    /// Data file as the plan names it -> sha256 of its bytes.
    pub data_files: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub role: Role,
    pub architecture: String,
    /// What the model computed in: `f32` or `bf16` (`precision:`).
    #[serde(default = "f32_name")]
    pub precision: String,
    pub params: usize,
    /// Size of the exported weights file (the first seed's), if exported.
    pub bytes: Option<u64>,
    /// Per-sample CPU latency in milliseconds (the first seed's): the median of
    /// single-sample forwards on the first evaluation split; absent for models no
    /// evaluation runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// BERT models: the samples the encoder actually ran on (the rest came from its cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_forwards: Option<u64>,
    /// int8 models: the model they were made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_from: Option<String>,
    /// Pruned models: the model whose weights were pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_from: Option<String>,
    /// Pruned models: parameters that are not zero (the first seed's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonzero_params: Option<usize>,
    /// Pruned models: the fraction of the pruned tensors' values that are pruned (the
    /// first seed's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Split name -> metrics; with several seeds, the means (per-class scores and the
    /// confusion matrix are the first seed's).
    pub metrics: BTreeMap<String, SplitMetrics>,
    /// With several seeds: the sample standard deviation over seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_std: Option<BTreeMap<String, MetricsStd>>,
}

fn f32_name() -> String {
    "f32".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MetricsStd {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StageSummary {
    pub name: String,
    pub model: String,
    pub seed: u64,
    /// Epochs actually run (fewer than planned after an early stop).
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
    /// Samples that went through a frozen model's forward during training steps.
    pub teacher_forwards: u64,
    /// Batches skipped because their loss or gradient was not finite (`non_finite: skip`).
    #[serde(default)]
    pub skipped_batches: u64,
    pub best_epoch: Option<usize>,
}

fn role_rank(role: Role) -> u8 {
    match role {
        Role::Teacher => 0,
        Role::Student => 1,
        Role::Baseline => 2,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Teacher => "teacher",
        Role::Student => "student",
        Role::Baseline => "baseline",
    }
}

/// `97.50` or `97.50 ± 0.20` (percent).
fn percent(value: f64, std: Option<f64>) -> String {
    match std {
        Some(std) => format!("{:.2} ± {:.2}", 100.0 * value, 100.0 * std),
        None => format!("{:.2}", 100.0 * value),
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

/// A table of every model side by side (role, parameters, accuracy and F1 in percent per
/// evaluated split, `± std` over seeds), then whether the student beat the baseline.
pub fn report(summary: &Summary) -> String {
    let mut models: Vec<(&String, &ModelSummary)> = summary.models.iter().collect();
    models.sort_by_key(|(name, m)| (role_rank(m.role), (*name).clone()));
    let mut splits: Vec<&String> = Vec::new();
    for (_, model) in &models {
        for split in model.metrics.keys() {
            if !splits.contains(&split) {
                splits.push(split);
            }
        }
    }
    let mut header = vec![
        "model".to_string(),
        "role".to_string(),
        "params".to_string(),
    ];
    // Pruned models: the parameters left that are not zero.
    let pruned = models.iter().any(|(_, m)| m.nonzero_params.is_some());
    if pruned {
        header.push("nonzero".to_string());
    }
    for split in &splits {
        header.push(format!("{split} acc %"));
        header.push(format!("{split} f1 %"));
    }
    let mut rows = vec![header];
    for (name, model) in &models {
        let mut row = vec![
            (*name).clone(),
            role_name(model.role).to_string(),
            thousands(model.params),
        ];
        if pruned {
            row.push(model.nonzero_params.map_or("-".into(), thousands));
        }
        for split in &splits {
            match model.metrics.get(*split) {
                Some(m) => {
                    let std = model.metrics_std.as_ref().and_then(|s| s.get(*split));
                    row.push(percent(m.accuracy, std.map(|s| s.accuracy)));
                    row.push(percent(m.f1, std.map(|s| s.f1)));
                }
                None => {
                    row.push("-".into());
                    row.push("-".into());
                }
            }
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let seeds = if summary.seeds.len() > 1 {
        format!("{} seeds from {}", summary.seeds.len(), summary.seed)
    } else {
        format!("seed {}", summary.seed)
    };
    let _ = writeln!(
        out,
        "pipeline `{}` ({seeds}, {} threads)",
        summary.pipeline, summary.threads
    );
    for (r, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                // Names and roles read left-aligned, numbers right-aligned.
                if c < 2 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if r == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (columns - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    if let Some(line) = verdict(&models) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Whether the (first) student beat the (first) baseline, on `test` when both have it.
fn verdict(models: &[(&String, &ModelSummary)]) -> Option<String> {
    let (student_name, student) = models.iter().find(|(_, m)| m.role == Role::Student)?;
    let (baseline_name, baseline) = models.iter().find(|(_, m)| m.role == Role::Baseline)?;
    let shared: Vec<&String> = student
        .metrics
        .keys()
        .filter(|k| baseline.metrics.contains_key(*k))
        .collect();
    let split = shared
        .iter()
        .find(|s| s.as_str() == "test")
        .or_else(|| shared.last())?;
    let difference = 100.0 * (student.metrics[*split].accuracy - baseline.metrics[*split].accuracy);
    let outcome = if difference > 0.0 {
        "beat"
    } else {
        "did not beat"
    };
    Some(format!(
        "the distilled student `{student_name}` {outcome} the baseline `{baseline_name}` on `{split}`: {difference:+.2} accuracy points"
    ))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Sample standard deviation (n - 1); 0 for fewer than two values.
fn sample_std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// Per model: the first seed's numbers, with metric means and standard deviations over
/// seeds when there are several.
pub(crate) fn model_summaries(
    plan: &Plan,
    results: &[SeedRecord],
) -> BTreeMap<String, ModelSummary> {
    let mut models = BTreeMap::new();
    let Some(first) = results.first() else {
        return models;
    };
    for spec in &plan.models {
        let mut metrics = first.metrics.get(&spec.name).cloned().unwrap_or_default();
        let mut metrics_std = None;
        if results.len() > 1 {
            let mut stds = BTreeMap::new();
            for (split, m) in metrics.iter_mut() {
                let per_seed: Vec<&SplitMetrics> = results
                    .iter()
                    .filter_map(|r| r.metrics.get(&spec.name).and_then(|s| s.get(split)))
                    .collect();
                let pick = |f: fn(&SplitMetrics) -> f64| -> Vec<f64> {
                    per_seed.iter().map(|m| f(m)).collect()
                };
                let (acc, prec, rec, f1, ece) = (
                    pick(|m| m.accuracy),
                    pick(|m| m.precision),
                    pick(|m| m.recall),
                    pick(|m| m.f1),
                    pick(|m| m.ece),
                );
                m.accuracy = mean(&acc);
                m.precision = mean(&prec);
                m.recall = mean(&rec);
                m.f1 = mean(&f1);
                m.ece = mean(&ece);
                if m.agreement.is_some() {
                    let agreements: Vec<f64> =
                        per_seed.iter().filter_map(|m| m.agreement).collect();
                    m.agreement = Some(mean(&agreements));
                }
                for (teacher, value) in m.agreement_with.iter_mut() {
                    let agreements: Vec<f64> = per_seed
                        .iter()
                        .filter_map(|m| m.agreement_with.get(teacher).copied())
                        .collect();
                    *value = mean(&agreements);
                }
                stds.insert(
                    split.clone(),
                    MetricsStd {
                        accuracy: sample_std(&acc),
                        precision: sample_std(&prec),
                        recall: sample_std(&rec),
                        f1: sample_std(&f1),
                    },
                );
            }
            metrics_std = Some(stds);
        }
        models.insert(
            spec.name.clone(),
            ModelSummary {
                role: spec.role,
                architecture: spec.architecture.clone(),
                precision: match spec.quantized {
                    Some(_) => "int8".to_string(),
                    None => spec.precision.name().to_string(),
                },
                params: first.params.get(&spec.name).copied().unwrap_or(spec.params),
                bytes: first.bytes.get(&spec.name).copied(),
                latency_ms: first.latency_ms.get(&spec.name).copied(),
                encoder_forwards: first.encoder_forwards.get(&spec.name).copied(),
                quantized_from: spec.quantized.as_ref().map(|q| q.from.clone()),
                pruned_from: spec.pruned.as_ref().map(|p| p.from.clone()),
                nonzero_params: first.sparsity.get(&spec.name).map(|s| s.0),
                sparsity: first.sparsity.get(&spec.name).and_then(|s| s.1),
                metrics,
                metrics_std,
            },
        );
    }
    models
}
