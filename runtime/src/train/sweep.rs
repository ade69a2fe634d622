//! `kdc run FILE --sweep NAME`: every configuration's Plan in its own folder of the run
//! folder, sharing what they compute alike (`shared`), then the best on the validation split.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kd_plan::{Metric, SweepPlan};
use serde::{Deserialize, Serialize};

use super::shared::Shared;
use super::{run_plan, RunOptions};
use crate::error::{Result, RuntimeError};
use crate::output::files::write_atomically;
use crate::output::summary::Summary;

/// The sweep section of the run folder's `summary.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SweepSummary {
    pub name: String,
    pub search: String,
    /// `accuracy of s on digits.val`.
    pub select: String,
    /// The metric, the model and the split it is read from.
    pub metric: String,
    pub model: String,
    pub split: String,
    /// The chosen configuration (its folder); the summary's models are its.
    pub best: String,
    pub configs: Vec<ConfigResult>,
    /// Frozen-model forwards on training batches, over every configuration: what the
    /// configurations shared is not counted twice.
    pub teacher_forwards: u64,
}

impl SweepSummary {
    /// The swept keys, as the configurations name them.
    pub fn keys(&self) -> Vec<&String> {
        self.configs
            .first()
            .map(|c| c.values.keys().collect())
            .unwrap_or_default()
    }

    /// The baselines scored beside the selected model.
    pub fn baselines(&self) -> Vec<&String> {
        self.configs
            .first()
            .map(|c| c.baselines.keys().collect())
            .unwrap_or_default()
    }

    /// Whether a higher score is a better one (every selectable metric but ECE).
    pub fn higher_is_better(&self) -> bool {
        serde_json::from_value::<Metric>(serde_json::Value::String(self.metric.clone()))
            .map_or(true, Metric::higher_is_better)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigResult {
    pub name: String,
    /// Each swept key's value, as `--set` takes it.
    pub values: BTreeMap<String, String>,
    /// The selected metric of the selected model on the selection's split (mean over seeds).
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_std: Option<f64>,
    /// The same for each baseline of the model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselines: BTreeMap<String, f64>,
    pub teacher_forwards: u64,
    /// Stages this configuration took over from another one (per seed).
    pub shared_stages: usize,
}

/// Runs every configuration of `sweep` into `opts.out_dir/NAME` (skipping those a
/// resumed sweep finished), then writes `summary.json`: the best configuration's, with a
/// `sweep` section.
pub fn run_sweep(sweep: &SweepPlan, opts: &RunOptions) -> Result<Summary> {
    let plans: Vec<&kd_plan::Plan> = sweep.configs.iter().map(|c| &c.plan).collect();
    let shared = Arc::new(Shared::new(&opts.out_dir.join("shared"), &plans));
    let mut summaries = Vec::new();
    for config in &sweep.configs {
        let dir = opts.out_dir.join(&config.name);
        let done = dir.join("summary.json");
        if opts.resume && done.exists() {
            summaries.push(read_summary(&done)?);
            continue;
        }
        let resume = opts.resume && super::checkpoint::path(&dir).exists();
        if !resume {
            create_dir(&dir)?;
            let yaml = serde_yaml::to_string(&config.plan).map_err(|e| RuntimeError::Write {
                path: dir.join("plan.yaml"),
                source: std::io::Error::other(e.to_string()),
            })?;
            write_atomically(&dir.join("plan.yaml"), yaml.as_bytes())?;
        }
        let config_opts = RunOptions {
            out_dir: dir.clone(),
            resume,
            shared: Some(shared.clone()),
            ..opts.clone()
        };
        let summary = run_plan(&config.plan, &config_opts).map_err(|e| match e {
            // The sweep resumes as a whole, from its own folder.
            RuntimeError::Interrupted { position, .. } => RuntimeError::Interrupted {
                dir: opts.out_dir.clone(),
                position: format!("configuration `{}`, {position}", config.name),
            },
            other => other,
        })?;
        summaries.push(summary);
    }
    let select = &sweep.select;
    let mut configs = Vec::new();
    for (config, summary) in sweep.configs.iter().zip(&summaries) {
        let (value, score_std) = score(summary, &select.model, select)?;
        let mut baselines = BTreeMap::new();
        for baseline in &select.baselines {
            baselines.insert(baseline.clone(), score(summary, baseline, select)?.0);
        }
        configs.push(ConfigResult {
            name: config.name.clone(),
            values: config
                .values
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
            score: value,
            score_std,
            baselines,
            teacher_forwards: summary
                .stages
                .iter()
                .filter(|s| s.shared_from.is_none())
                .map(|s| s.teacher_forwards)
                .sum(),
            shared_stages: summary
                .stages
                .iter()
                .filter(|s| s.shared_from.is_some())
                .count()
                / summary.seeds.len().max(1),
        });
    }
    let higher = select.metric.higher_is_better();
    let best = (0..configs.len())
        .reduce(|a, b| {
            let (x, y) = (configs[a].score, configs[b].score);
            // The first of equals wins: the order of the declaration breaks ties.
            let better = if higher { y > x } else { y < x };
            if better {
                b
            } else {
                a
            }
        })
        .ok_or_else(|| crate::error::plan_error("a sweep without configurations"))?;
    let mut summary = summaries[best].clone();
    summary.sweep = Some(SweepSummary {
        name: sweep.name.clone(),
        search: sweep.search.clone(),
        select: format!(
            "{} of {} on {}.{}",
            select.metric.name(),
            select.model,
            select.data,
            select.split
        ),
        metric: select.metric.name().to_string(),
        model: select.model.clone(),
        split: format!("{}.{}", select.data, select.split),
        best: sweep.configs[best].name.clone(),
        teacher_forwards: configs.iter().map(|c| c.teacher_forwards).sum(),
        configs,
    });
    if opts.world.writes() {
        let text = serde_json::to_string_pretty(&summary)?;
        write_atomically(&opts.out_dir.join("summary.json"), text.as_bytes())?;
    }
    Ok(summary)
}

/// The selected metric of `model` on the selection's split: the mean over seeds, and its
/// sample standard deviation when the run repeats (for the metrics the summary keeps one of).
fn score(
    summary: &Summary,
    model: &str,
    select: &kd_plan::Selection,
) -> Result<(f64, Option<f64>)> {
    let missing = || {
        crate::error::plan_error(format!(
            "the summary has no {} of `{model}` on {}.{}",
            select.metric.name(),
            select.data,
            select.split
        ))
    };
    let entry = summary.models.get(model).ok_or_else(missing)?;
    let key = [
        select.split.clone(),
        format!("{}/{}", select.data, select.split),
    ];
    let (name, metrics) = entry
        .metrics
        .iter()
        .find(|(k, m)| key.contains(k) && m.data == select.data)
        .ok_or_else(missing)?;
    let value = metrics.scalar(select.metric).ok_or_else(missing)?;
    let std = entry
        .metrics_std
        .as_ref()
        .and_then(|s| s.get(name))
        .and_then(|s| match select.metric {
            Metric::Accuracy => Some(s.accuracy),
            Metric::Precision => Some(s.precision),
            Metric::Recall => Some(s.recall),
            Metric::F1 => Some(s.f1),
            _ => None,
        });
    Ok((value, std))
}

fn read_summary(path: &Path) -> Result<Summary> {
    let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| RuntimeError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("a finished configuration's summary cannot be read ({e})"),
        help: Some("remove that configuration's folder to run it again".into()),
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Write {
        path: dir.to_path_buf(),
        source,
    })
}
