//! The executor: runs every stage of a Plan for each seed, evaluates, exports, and writes
//! the run folder (`metrics.jsonl`, `summary.json`, the exported weights).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use kd_plan::{Keep, Metric, Op, Plan, Role, Stage};

use crate::data::{epoch_order, Dataset};
use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::evaluate::{predict, Predictions, EVAL_BATCH};
use crate::graph::{run_step, BatchData, StepInput};
use crate::losses::Labels;
use crate::metrics::{split_metrics, SplitMetrics};
use crate::model::Model;
use crate::optim::Optim;
use crate::progress::{EpochLine, Progress, StageProgress};
use crate::summary::{MetricsStd, ModelSummary, Provenance, StageSummary, Summary, SCHEMA_VERSION};

/// How to run a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder; it exists, and the CLI has already written `plan.yaml` into it.
    pub out_dir: PathBuf,
    pub progress: Progress,
    /// Recorded in the summary's provenance.
    pub kdc_version: String,
}

/// Everything shared by the seeds of one run.
struct Run<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    datasets: HashMap<String, Dataset>,
    /// Per data source: the normalised value of a raw zero, per channel.
    fills: HashMap<String, Vec<f32>>,
    log: MetricsLog,
}

/// What one seed produced.
struct SeedResult {
    stages: Vec<StageSummary>,
    metrics: BTreeMap<String, BTreeMap<String, SplitMetrics>>,
    bytes: HashMap<String, u64>,
    params: HashMap<String, usize>,
}

/// Runs `plan` and writes its run folder into `opts.out_dir`.
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<Summary> {
    if let kd_plan::Device::Cuda(index) = plan.settings.device {
        return Err(RuntimeError::Device(index));
    }
    let threads = configure_threads(plan.settings.threads);
    let mut datasets = HashMap::new();
    let mut fills = HashMap::new();
    let mut data_files = BTreeMap::new();
    for spec in &plan.data {
        let dataset = Dataset::load(spec, &plan.source.base_dir, plan.settings.seed)?;
        for (path, hash) in &dataset.files {
            data_files.insert(path.display().to_string(), hash.clone());
        }
        fills.insert(spec.name.clone(), dataset.norm.zero_values().to_vec());
        datasets.insert(spec.name.clone(), dataset);
    }
    let mut run = Run {
        plan,
        opts,
        datasets,
        fills,
        log: MetricsLog::create(&opts.out_dir.join("metrics.jsonl"))?,
    };
    let seeds: Vec<u64> = (0..plan.settings.repeat.max(1))
        .map(|i| plan.settings.seed.wrapping_add(u64::from(i)))
        .collect();
    let mut results = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        results.push(run.seed(seed, seeds.len() > 1)?);
    }
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        pipeline: plan.settings.name.clone(),
        seed: plan.settings.seed,
        seeds: seeds.clone(),
        device: "cpu".into(),
        threads,
        provenance: Provenance {
            kdc_version: opts.kdc_version.clone(),
            plan_hash: plan.hash(),
            overrides: plan
                .overrides
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
            data_files,
        },
        models: model_summaries(plan, &results),
        stages: results.iter().flat_map(|r| r.stages.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&summary)?;
    write_atomically(&opts.out_dir.join("summary.json"), text.as_bytes())?;
    Ok(summary)
}

/// Makes candle's CPU kernels use `threads` (they read `RAYON_NUM_THREADS` on every call,
/// and rayon's pool reads it when first used); returns the number in effect.
fn configure_threads(threads: Option<usize>) -> usize {
    if let Some(n) = threads.filter(|&n| n > 0) {
        if candle_core::utils::get_num_threads() != n {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    candle_core::utils::get_num_threads()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = path.as_os_str().to_os_string();
    temp.push(".partial");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, bytes).map_err(|source| RuntimeError::Write {
        path: temp.clone(),
        source,
    })?;
    std::fs::rename(&temp, path).map_err(|source| RuntimeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `metrics.jsonl`: one JSON object per epoch of each stage, flushed as written so the
/// file can be followed while a run trains.
struct MetricsLog {
    path: PathBuf,
    file: BufWriter<File>,
}

impl MetricsLog {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| RuntimeError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
        })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string(line)?;
        writeln!(self.file, "{text}")
            .and_then(|()| self.file.flush())
            .map_err(|source| RuntimeError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// One epoch's validation.
struct Validation {
    metrics: SplitMetrics,
    loss: f64,
}

impl Validation {
    fn value(&self, metric: Metric) -> Result<f64> {
        let m = &self.metrics;
        match metric {
            Metric::Accuracy => Ok(m.accuracy),
            Metric::Precision => Ok(m.precision),
            Metric::Recall => Ok(m.recall),
            Metric::F1 => Ok(m.f1),
            Metric::Loss => Ok(self.loss),
            Metric::Ece => Ok(m.ece),
            Metric::Agreement => m.agreement.ok_or_else(|| {
                plan_error("`agreement` needs a teacher other than the trained model")
            }),
            Metric::Confusion | Metric::PerClass => Err(plan_error(format!(
                "cannot keep the best epoch by `{metric:?}`"
            ))),
        }
    }
}

impl Run<'_> {
    fn dataset(&self, name: &str) -> Result<&Dataset> {
        self.datasets
            .get(name)
            .ok_or_else(|| plan_error(format!("no data `{name}`")))
    }

    fn class_names(&self, data: &str) -> Vec<String> {
        match self.plan.data(data) {
            Some(spec) if spec.class_names.len() == spec.classes => spec.class_names.clone(),
            Some(spec) => (0..spec.classes).map(|c| c.to_string()).collect(),
            None => Vec::new(),
        }
    }

    /// The plan's teacher, when it has one.
    fn teacher(&self) -> Option<&str> {
        self.plan
            .models
            .iter()
            .find(|m| m.role == Role::Teacher)
            .map(|m| m.name.as_str())
    }

    fn seed(&mut self, seed: u64, several: bool) -> Result<SeedResult> {
        let plan = self.plan;
        let mut models = HashMap::new();
        for spec in &plan.models {
            let model = Model::new(spec, seed)?;
            if let Some(path) = &spec.init_from {
                model.load_weights(&plan.resolve(path))?;
            }
            models.insert(spec.name.clone(), model);
        }
        let mut stages = Vec::with_capacity(plan.stages.len());
        for stage in &plan.stages {
            stages.push(self.train_stage(stage, seed, &mut models)?);
        }
        let metrics = self.evaluate(&mut models)?;
        let mut bytes = HashMap::new();
        for export in &plan.exports {
            let model = models
                .get(&export.model)
                .ok_or_else(|| plan_error(format!("export of unknown model `{}`", export.model)))?;
            let path = if several {
                self.opts
                    .out_dir
                    .join(format!("seed-{seed}"))
                    .join(&export.path)
            } else {
                self.opts.out_dir.join(&export.path)
            };
            let size = model.save_weights(&path)?;
            bytes.entry(export.model.clone()).or_insert(size);
        }
        let params = models
            .iter()
            .map(|(name, m)| (name.clone(), m.param_count()))
            .collect();
        Ok(SeedResult {
            stages,
            metrics,
            bytes,
            params,
        })
    }

    /// The distinct `(data, split)` the stage's `Batch` nodes read.
    fn batch_sources(&self, stage: &Stage) -> Vec<(String, String)> {
        let mut sources: Vec<(String, String)> = Vec::new();
        for &node in &stage.nodes {
            if let Some(Op::Batch { data, split }) =
                self.plan.graph.node_weight(node).map(|n| &n.op)
            {
                let key = (data.clone(), split.clone());
                if !sources.contains(&key) {
                    sources.push(key);
                }
            }
        }
        sources
    }

    fn build_batch(&self, data: &str, split: &str, positions: &[usize]) -> Result<BatchData> {
        let dataset = self.dataset(data)?;
        let split = dataset.split(split)?;
        let mut x = Vec::new();
        let mut labels = Vec::new();
        dataset.fill_batch(split, positions, &mut x, &mut labels)?;
        let mut shape = vec![positions.len()];
        shape.extend(&dataset.sample_shape);
        let x = Tensor::from_vec(x, shape, &Device::Cpu).ctx("building a batch")?;
        Ok(BatchData {
            x,
            labels: Labels::hard(labels),
        })
    }

    fn train_stage(
        &mut self,
        stage: &Stage,
        seed: u64,
        models: &mut HashMap<String, Model>,
    ) -> Result<StageSummary> {
        let started = Instant::now();
        let dataset = self.dataset(&stage.data)?;
        let samples = dataset.split(&stage.split)?.len();
        if samples == 0 && stage.epochs > 0 {
            return Err(RuntimeError::Data {
                data: stage.data.clone(),
                reason: format!(
                    "split `{}` that stage `{}` trains on is empty",
                    stage.split, stage.name
                ),
                help: None,
            });
        }
        let batch = stage.batch.max(1);
        let steps_per_epoch = samples.div_ceil(batch);
        let total_steps = steps_per_epoch * stage.epochs;
        let params = models
            .get(&stage.trains)
            .ok_or_else(|| {
                plan_error(format!(
                    "stage `{}` trains unknown model `{}`",
                    stage.name, stage.trains
                ))
            })?
            .params()
            .to_vec();
        let mut optim = Optim::new(&stage.optimizer, params.len());
        let sources = self.batch_sources(stage);
        let primary = (stage.data.clone(), stage.split.clone());
        let progress = StageProgress::start(self.opts.progress, &stage.name, seed, total_steps);
        let teacher_val = self.teacher_on_validation(stage, models)?;

        let mut global_step = 0usize;
        let mut teacher_forwards = 0u64;
        let mut epochs_run = 0usize;
        let mut final_loss = 0.0f64;
        let mut best: Option<(f64, usize, Option<Vec<Tensor>>)> = None;
        let mut epochs_without_improvement = 0usize;
        for epoch in 0..stage.epochs {
            let epoch_started = Instant::now();
            let order = epoch_order(seed, &format!("shuffle/{}/{epoch}", stage.name), samples);
            // Batch nodes on other splits walk their own shuffled order, cycling.
            let mut other_orders = HashMap::new();
            for source in sources.iter().filter(|s| **s != primary) {
                let n = self.dataset(&source.0)?.split(&source.1)?.len();
                let stream = format!("shuffle/{}/{}.{}/{epoch}", stage.name, source.0, source.1);
                other_orders.insert(source.clone(), epoch_order(seed, &stream, n));
            }
            let mut loss_sum = 0.0f64;
            let mut lr = stage.optimizer.lr();
            for step in 0..steps_per_epoch {
                let positions = &order[step * batch..((step + 1) * batch).min(samples)];
                let mut batches = HashMap::with_capacity(sources.len());
                for source in &sources {
                    let data = match other_orders.get(source) {
                        Some(other) if !other.is_empty() => {
                            let picked: Vec<usize> = (0..positions.len())
                                .map(|k| other[(step * batch + k) % other.len()])
                                .collect();
                            self.build_batch(&source.0, &source.1, &picked)?
                        }
                        _ => self.build_batch(&source.0, &source.1, positions)?,
                    };
                    batches.insert(source.clone(), data);
                }
                lr = stage.schedule.lr_at(
                    stage.optimizer.lr(),
                    global_step,
                    total_steps,
                    steps_per_epoch,
                );
                let input = StepInput {
                    plan: self.plan,
                    stage,
                    seed,
                    epoch,
                    step,
                    validating: false,
                    batches: &batches,
                    validation: None,
                    fills: &self.fills,
                };
                let output = run_step(&input, models)?;
                teacher_forwards += output.frozen_samples;
                let loss = output.loss.ok_or_else(|| {
                    plan_error(format!("stage `{}` computes no loss", stage.name))
                })?;
                let value = f64::from(
                    loss.to_dtype(candle_core::DType::F32)
                        .and_then(|l| l.to_scalar::<f32>())
                        .ctx("reading the loss")?,
                );
                if !value.is_finite() {
                    return Err(RuntimeError::NonFinite {
                        stage: stage.name.clone(),
                        epoch: epoch + 1,
                        step: step + 1,
                    });
                }
                let grads = loss
                    .backward()
                    .ctx_with(|| format!("backward of stage `{}`", stage.name))?;
                optim.step(&params, &grads, lr, stage.clip)?;
                loss_sum += value * positions.len() as f64;
                global_step += 1;
                progress.step();
            }
            epochs_run += 1;
            final_loss = loss_sum / samples.max(1) as f64;

            let validation = match &stage.validate {
                Some(_) => Some(self.validate(stage, seed, epoch, models, teacher_val.as_ref())?),
                None => None,
            };
            let seconds = epoch_started.elapsed().as_secs_f64();
            let mut line = serde_json::json!({
                "seed": seed,
                "stage": stage.name,
                "model": stage.trains,
                "epoch": epoch + 1,
                "steps": global_step,
                "lr": lr,
                "train_loss": final_loss,
                "seconds": seconds,
            });
            if let (Some(v), Some(map)) = (&validation, line.as_object_mut()) {
                map.insert("val_accuracy".into(), v.metrics.accuracy.into());
                map.insert("val_f1".into(), v.metrics.f1.into());
                map.insert("val_loss".into(), v.loss.into());
            }
            self.log.write(&line)?;
            progress.epoch(&EpochLine {
                seed,
                stage: &stage.name,
                epoch: epoch + 1,
                epochs: stage.epochs,
                train_loss: final_loss,
                val: validation.as_ref().map(|v| (v.metrics.accuracy, v.loss)),
                seconds,
            });

            if let (Some(validate), Some(v)) = (&stage.validate, &validation) {
                let metric = match validate.keep {
                    Keep::Best(metric) => metric,
                    Keep::Last => Metric::Loss,
                };
                let value = v.value(metric)?;
                let improved = match &best {
                    None => value.is_finite(),
                    Some((best_value, _, _)) => {
                        if metric.higher_is_better() {
                            value > *best_value
                        } else {
                            value < *best_value
                        }
                    }
                };
                if improved {
                    let snapshot = match validate.keep {
                        Keep::Best(_) => Some(self.model_ref(models, &stage.trains)?.snapshot()?),
                        Keep::Last => None,
                    };
                    best = Some((value, epoch + 1, snapshot));
                    epochs_without_improvement = 0;
                } else {
                    epochs_without_improvement += 1;
                }
                if validate
                    .early_stop
                    .is_some_and(|patience| epochs_without_improvement >= patience)
                {
                    break;
                }
            }
        }
        progress.finish();
        let mut best_epoch = None;
        if let Some(Keep::Best(_)) = stage.validate.as_ref().map(|v| &v.keep) {
            if let Some((_, epoch, Some(snapshot))) = &best {
                self.model_ref(models, &stage.trains)?.restore(snapshot)?;
                best_epoch = Some(*epoch);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let processed = (samples * epochs_run) as f64;
        Ok(StageSummary {
            name: stage.name.clone(),
            model: stage.trains.clone(),
            seed,
            epochs: epochs_run,
            steps: global_step,
            seconds,
            samples_per_s: if seconds > 0.0 {
                processed / seconds
            } else {
                0.0
            },
            final_loss,
            teacher_forwards,
            best_epoch,
        })
    }

    fn model_ref<'m>(&self, models: &'m HashMap<String, Model>, name: &str) -> Result<&'m Model> {
        models
            .get(name)
            .ok_or_else(|| plan_error(format!("no model `{name}`")))
    }

    /// The teacher's predictions on the stage's validation split, when the stage keeps the
    /// epoch of best agreement (the teacher does not change during the stage).
    fn teacher_on_validation(
        &self,
        stage: &Stage,
        models: &mut HashMap<String, Model>,
    ) -> Result<Option<Vec<u32>>> {
        let Some(validate) = &stage.validate else {
            return Ok(None);
        };
        if validate.keep != Keep::Best(Metric::Agreement) {
            return Ok(None);
        }
        let Some(teacher) = self.teacher().filter(|t| *t != stage.trains) else {
            return Ok(None);
        };
        let dataset = self.dataset(&validate.data)?;
        let split = dataset.split(&validate.split)?;
        let model = models
            .get_mut(teacher)
            .ok_or_else(|| plan_error(format!("no model `{teacher}`")))?;
        Ok(Some(predict(model, dataset, split)?.classes))
    }

    /// Runs the stage's nodes over the validation split in eval mode: the trained model's
    /// metrics and the stage loss (sample-weighted mean over batches).
    fn validate(
        &self,
        stage: &Stage,
        seed: u64,
        epoch: usize,
        models: &mut HashMap<String, Model>,
        teacher_predictions: Option<&Vec<u32>>,
    ) -> Result<Validation> {
        let validate = stage
            .validate
            .as_ref()
            .ok_or_else(|| plan_error("validation without `validate`"))?;
        let dataset = self.dataset(&validate.data)?;
        let split = dataset.split(&validate.split)?;
        let outputs_probabilities = self
            .model_ref(models, &stage.trains)?
            .outputs_probabilities();
        let mut predictions = Predictions::default();
        let mut loss_sum = 0.0;
        let positions: Vec<usize> = (0..split.len()).collect();
        let empty = HashMap::new();
        for (step, chunk) in positions.chunks(EVAL_BATCH).enumerate() {
            let batch = self.build_batch(&validate.data, &validate.split, chunk)?;
            let input = StepInput {
                plan: self.plan,
                stage,
                seed,
                epoch,
                step,
                validating: true,
                batches: &empty,
                validation: Some(&batch),
                fills: &self.fills,
            };
            let output = run_step(&input, models)?;
            if let Some(loss) = output.loss {
                let value = loss
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|l| l.to_scalar::<f64>())
                    .ctx("reading the validation loss")?;
                loss_sum += value * chunk.len() as f64;
            }
            let trained_output = match output.trained_output {
                Some(t) => t,
                // The graph never runs the trained model on its own: run it.
                None => {
                    let model = models
                        .get_mut(&stage.trains)
                        .ok_or_else(|| plan_error(format!("no model `{}`", stage.trains)))?;
                    let outputs = model.forward(&batch.x, false)?;
                    outputs
                        .into_iter()
                        .find(|(p, _)| p == "output")
                        .map(|(_, t)| t)
                        .ok_or_else(|| plan_error("a model without output"))?
                }
            };
            predictions.extend_from(&trained_output, outputs_probabilities)?;
        }
        let labels = dataset.split_labels(split)?;
        let metrics = split_metrics(
            &dataset.name,
            &labels,
            &predictions.classes,
            &predictions.confidences,
            &self.class_names(&validate.data),
            teacher_predictions.map(Vec::as_slice),
        );
        Ok(Validation {
            metrics,
            loss: loss_sum / split.len().max(1) as f64,
        })
    }

    /// Every evaluation: each model on each split, keyed by split name (`data/split` when
    /// two data sources share a split name).
    fn evaluate(
        &self,
        models: &mut HashMap<String, Model>,
    ) -> Result<BTreeMap<String, BTreeMap<String, SplitMetrics>>> {
        let mut results: BTreeMap<String, BTreeMap<String, SplitMetrics>> = BTreeMap::new();
        let mut split_keys: HashMap<String, String> = HashMap::new();
        let mut teacher_cache: HashMap<(String, String), Vec<u32>> = HashMap::new();
        let teacher = self.teacher().map(str::to_string);
        for evaluation in &self.plan.evaluations {
            let dataset = self.dataset(&evaluation.data)?;
            let split = dataset.split(&evaluation.split)?;
            let labels = dataset.split_labels(split)?;
            let key = match split_keys.get(&evaluation.split) {
                Some(owner) if *owner != evaluation.data => {
                    format!("{}/{}", evaluation.data, evaluation.split)
                }
                _ => {
                    split_keys.insert(evaluation.split.clone(), evaluation.data.clone());
                    evaluation.split.clone()
                }
            };
            let class_names = self.class_names(&evaluation.data);
            for name in &evaluation.models {
                let role =
                    self.plan.model(name).map(|m| m.role).ok_or_else(|| {
                        plan_error(format!("evaluation of unknown model `{name}`"))
                    })?;
                let teacher_predictions = match (&teacher, role) {
                    (Some(teacher), Role::Student | Role::Baseline) => {
                        let cache_key = (evaluation.data.clone(), evaluation.split.clone());
                        if !teacher_cache.contains_key(&cache_key) {
                            let model = models
                                .get_mut(teacher)
                                .ok_or_else(|| plan_error(format!("no model `{teacher}`")))?;
                            teacher_cache
                                .insert(cache_key.clone(), predict(model, dataset, split)?.classes);
                        }
                        teacher_cache.get(&cache_key)
                    }
                    _ => None,
                };
                let model = models
                    .get_mut(name)
                    .ok_or_else(|| plan_error(format!("no model `{name}`")))?;
                let predictions = predict(model, dataset, split)?;
                let metrics = split_metrics(
                    &dataset.name,
                    &labels,
                    &predictions.classes,
                    &predictions.confidences,
                    &class_names,
                    teacher_predictions.map(Vec::as_slice),
                );
                results
                    .entry(name.clone())
                    .or_default()
                    .insert(key.clone(), metrics);
            }
        }
        Ok(results)
    }
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
fn model_summaries(plan: &Plan, results: &[SeedResult]) -> BTreeMap<String, ModelSummary> {
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
                params: first.params.get(&spec.name).copied().unwrap_or(spec.params),
                bytes: first.bytes.get(&spec.name).copied(),
                metrics,
                metrics_std,
            },
        );
    }
    models
}
