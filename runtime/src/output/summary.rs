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
    /// In a sweep's run folder: its configurations, their scores and the chosen one,
    /// whose results the rest of the summary is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::train::sweep::SweepSummary>,
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
    /// Every exported file of the model (the first seed's), as the pipeline names it, and
    /// its size in bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, u64>,
    /// int8 models: the model they were made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_from: Option<String>,
    /// Baselines: the model they copy (the student they are compared with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_of: Option<String>,
    /// int8 models: `post-training`, or `aware` when stages trained them fake-quantised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
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
    /// With several seeds: split name -> each seed's scores, in seed order (what a paired
    /// comparison of two models needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_seed: Option<BTreeMap<String, Vec<SeedScores>>>,
}

/// One seed's scores on one split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SeedScores {
    pub seed: u64,
    pub accuracy: f64,
    pub f1: f64,
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
    /// In a sweep: the configuration whose run of this stage this one took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_from: Option<String>,
}

fn role_rank(role: Role) -> u8 {
    match role {
        Role::Teacher => 0,
        Role::Student => 1,
        Role::Baseline => 2,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Teacher => "teacher",
        Role::Student => "student",
        Role::Baseline => "baseline",
    }
}

/// `97.50` or `97.50 ± 0.20` (percent).
pub fn percent(value: f64, std: Option<f64>) -> String {
    match std {
        Some(std) => format!("{:.2} ± {:.2}", 100.0 * value, 100.0 * std),
        None => format!("{:.2}", 100.0 * value),
    }
}

/// `38378` as `38,378`.
pub fn thousands(n: usize) -> String {
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
    let mut out = String::new();
    if let Some(sweep) = &summary.sweep {
        out.push_str(&sweep_table(sweep));
    }
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
    out.push_str(&aligned(&rows, 2));
    if let Some(line) = verdict(&models) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(table) = chain(summary, &splits) {
        out.push_str(&table);
    }
    out
}

/// A sweep's configurations: the values each set, its score and its baselines', and the
/// teacher forwards it ran; then which one the rest of the report is.
fn sweep_table(sweep: &crate::train::sweep::SweepSummary) -> String {
    let (keys, baselines) = (sweep.keys(), sweep.baselines());
    let mut header = vec!["config".to_string()];
    header.extend(keys.iter().map(|k| k.to_string()));
    header.push(format!("{} {} %", sweep.model, sweep.metric));
    header.extend(baselines.iter().map(|b| format!("{b} %")));
    header.push("teacher fwd".into());
    let mut rows = vec![header];
    for c in &sweep.configs {
        let mut row = vec![match c.name == sweep.best {
            true => format!("{} *", c.name),
            false => c.name.clone(),
        }];
        row.extend(
            keys.iter()
                .map(|k| c.values.get(*k).cloned().unwrap_or_default()),
        );
        row.push(percent(c.score, c.score_std));
        row.extend(baselines.iter().map(|b| {
            c.baselines
                .get(*b)
                .map_or("-".into(), |v| percent(*v, None))
        }));
        row.push(thousands(c.teacher_forwards as usize));
        rows.push(row);
    }
    let mut out = format!(
        "sweep `{}` ({}, {} configurations, selected on {} of {} on {})\n",
        sweep.name,
        sweep.search,
        sweep.configs.len(),
        sweep.metric,
        sweep.model,
        sweep.split
    );
    out.push_str(&aligned(&rows, 1 + keys.len()));
    let _ = writeln!(
        out,
        "best: {} (its results follow); teacher forwards over the sweep: {}\n",
        sweep.best,
        thousands(sweep.teacher_forwards as usize)
    );
    out
}

/// `rows` as aligned columns, the first row a header underlined; the first `left` columns
/// (names) read left-aligned, the rest (numbers) right-aligned.
fn aligned(rows: &[Vec<String>], left: usize) -> String {
    let mut out = String::new();
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (r, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c < left {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if r == 0 {
            let total = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

/// The compression chain, when some model is pruned or int8: teachers, then each student
/// followed by the models made from it, with what each computes in, its parameters, its
/// files' sizes, its latency, its accuracy and F1, and how many times smaller than the
/// (first) teacher it is on disk: safetensors bytes where exported, otherwise parameters
/// times 4 (2 in bf16).
fn chain(summary: &Summary, splits: &[&String]) -> Option<String> {
    let models = &summary.models;
    let parent = |m: &ModelSummary| m.pruned_from.clone().or_else(|| m.quantized_from.clone());
    if !models.values().any(|m| parent(m).is_some()) {
        return None;
    }
    fn visit<'m>(
        name: &'m String,
        models: &'m BTreeMap<String, ModelSummary>,
        parent: &dyn Fn(&ModelSummary) -> Option<String>,
        order: &mut Vec<&'m String>,
    ) {
        if order.contains(&name) {
            return;
        }
        order.push(name);
        for (child, m) in models {
            if m.role != Role::Baseline && parent(m).as_ref() == Some(name) {
                visit(child, models, parent, order);
            }
        }
    }
    let mut order = Vec::new();
    for role in [Role::Teacher, Role::Student] {
        for (name, m) in models {
            if m.role == role && parent(m).is_none() {
                visit(name, models, &parent, &mut order);
            }
        }
    }
    let split = splits
        .iter()
        .find(|s| s.as_str() == "test")
        .or_else(|| splits.last())
        .copied();
    let file = |m: &ModelSummary, ext: &str| -> Option<u64> {
        m.files
            .iter()
            .find(|(path, _)| path.ends_with(ext))
            .map(|(_, b)| *b)
    };
    let size = |m: &ModelSummary| -> Option<u64> {
        file(m, ".safetensors").or(match m.precision.as_str() {
            "int8" => None,
            "bf16" => Some(2 * m.params as u64),
            _ => Some(4 * m.params as u64),
        })
    };
    let teacher = models
        .values()
        .find(|m| m.role == Role::Teacher)
        .and_then(size);
    let mut header: Vec<String> = [
        "chain",
        "from",
        "computes",
        "params",
        "safetensors B",
        "onnx B",
        "latency ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(split) = split {
        header.push(format!("{split} acc %"));
        header.push(format!("{split} f1 %"));
    }
    header.push("smaller than teacher".into());
    let mut rows = vec![header];
    let bytes = |b: Option<u64>| b.map_or("-".to_string(), |b| thousands(b as usize));
    for name in order {
        let m = &models[name];
        let mut row = vec![
            name.clone(),
            parent(m).unwrap_or_else(|| "-".into()),
            m.precision.clone(),
            thousands(m.nonzero_params.unwrap_or(m.params).min(m.params)),
            bytes(file(m, ".safetensors")),
            bytes(file(m, ".onnx")),
            m.latency_ms.map_or("-".into(), |l| format!("{l:.3}")),
        ];
        if let Some(split) = split {
            match m.metrics.get(split) {
                Some(x) => {
                    row.push(percent(x.accuracy, None));
                    row.push(percent(x.f1, None));
                }
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        row.push(match (teacher, size(m)) {
            (Some(t), Some(s)) if s > 0 => format!("{:.1}x", t as f64 / s as f64),
            _ => "-".into(),
        });
        rows.push(row);
    }
    let mut out = String::from("compression (params: those not zero)\n");
    out.push_str(&aligned(&rows, 3));
    Some(out)
}

/// Whether the (first) baseline's student beat it, on `test` when both have it.
fn verdict(models: &[(&String, &ModelSummary)]) -> Option<String> {
    let (baseline_name, baseline) = models.iter().find(|(_, m)| m.role == Role::Baseline)?;
    let (student_name, student) = models
        .iter()
        .find(|(name, _)| baseline.baseline_of.as_ref() == Some(*name))
        .or_else(|| models.iter().find(|(_, m)| m.role == Role::Student))?;
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

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Sample standard deviation (n - 1); 0 for fewer than two values.
pub fn sample_std(values: &[f64]) -> f64 {
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
        let mut per_seed_scores = None;
        if results.len() > 1 {
            let mut stds = BTreeMap::new();
            let mut scores = BTreeMap::new();
            for (split, m) in metrics.iter_mut() {
                let per_seed: Vec<&SplitMetrics> = results
                    .iter()
                    .filter_map(|r| r.metrics.get(&spec.name).and_then(|s| s.get(split)))
                    .collect();
                // Seeds as `run_plan` numbers them: the pipeline's, then the next ones.
                let seeded: Vec<SeedScores> = results
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let m = r.metrics.get(&spec.name).and_then(|s| s.get(split))?;
                        Some(SeedScores {
                            seed: plan.settings.seed.wrapping_add(i as u64),
                            accuracy: m.accuracy,
                            f1: m.f1,
                        })
                    })
                    .collect();
                scores.insert(split.clone(), seeded);
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
            per_seed_scores = Some(scores);
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
                files: first.files.get(&spec.name).cloned().unwrap_or_default(),
                quantized_from: spec.quantized.as_ref().map(|q| q.from.clone()),
                baseline_of: match spec.role {
                    Role::Baseline => plan
                        .models
                        .iter()
                        .find(|m| m.role != Role::Baseline && m.init_key == spec.init_key)
                        .map(|m| m.name.clone()),
                    _ => None,
                },
                quantization: spec.quantized.as_ref().map(|q| {
                    match q.aware {
                        true => "aware",
                        false => "post-training",
                    }
                    .to_string()
                }),
                pruned_from: spec.pruned.as_ref().map(|p| p.from.clone()),
                nonzero_params: first.sparsity.get(&spec.name).map(|s| s.0),
                sparsity: first.sparsity.get(&spec.name).and_then(|s| s.1),
                metrics,
                metrics_std,
                per_seed: per_seed_scores,
            },
        );
    }
    models
}
