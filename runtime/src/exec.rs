//! The executor: runs every stage of a Plan for each seed, evaluates, exports, and writes
//! the run folder (`metrics.jsonl`, `summary.json`, the exported weights).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use kd_plan::{Keep, Metric, NonFinite, Op, Plan, Role, Stage};

use crate::cache::OutputCache;
use crate::checkpoint::{Checkpoint, RunState, SeedRecord, StageState};
use crate::data::{epoch_order, Dataset};
use crate::error::{plan_error, NonFiniteError, Result, RuntimeError, TensorContext};
use crate::evaluate::{predict, Predictions, EVAL_BATCH};
use crate::files::write_atomically;
use crate::graph::{run_step, BatchData, StepInput};
use crate::losses::Labels;
use crate::metrics::{split_metrics, SplitMetrics};
use crate::model::Model;
use crate::optim::{Optim, Update};
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
    /// Continue from the checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// Set from elsewhere (a Ctrl-C handler) to stop at the next step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// When set, every training step's wall time is appended here (`kdc bench` reads it).
    pub step_times: Option<Arc<Mutex<Vec<StepTime>>>>,
}

/// The wall time of one training step: building its batches, the forwards, the loss, the
/// backward pass and the optimizer update (not the checkpoints and validations between).
#[derive(Debug, Clone, PartialEq)]
pub struct StepTime {
    pub stage: String,
    pub seconds: f64,
}

/// Everything shared by the seeds of one run.
struct Run<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    datasets: HashMap<String, Dataset>,
    /// Per data source: the normalised value of a raw zero, per channel.
    fills: HashMap<String, Vec<f32>>,
    log: MetricsLog,
    /// Where the run stands; the skeleton of every checkpoint.
    state: RunState,
    /// The checkpoint the run continues from, until the models have taken it back.
    resume: Option<Checkpoint>,
}

/// Runs `plan` and writes its run folder into `opts.out_dir`.
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<Summary> {
    if let kd_plan::Device::Cuda(index) = plan.settings.device {
        return Err(RuntimeError::Device(index));
    }
    crate::limits::check(plan)?;
    let threads = configure_threads(plan.settings.threads);
    on_worker(threads, || run_plan_on(plan, opts, threads))
}

/// Runs `f` on a worker thread of a pool of `threads` threads, so that the parallel loops
/// it starts run on that thread and the pool's others. Started from outside a pool, every
/// loop handed its work to the pool's threads, woke them, and put the caller to sleep
/// until they were done: on two cores a wake-up each way per op. Alternating runs:
/// transformer_student 2,136-2,395 -> 2,776-2,856 samples/s, bilstm_student 1,717-1,970
/// -> 2,104-2,128, resnet_bn 1,985-2,199 -> 2,225-2,260. Without a pool (it cannot be
/// made), `f` runs here.
pub fn on_worker<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

fn run_plan_on(plan: &Plan, opts: &RunOptions, threads: usize) -> Result<Summary> {
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
    let resume = if opts.resume {
        remove_partial_files(&opts.out_dir)?;
        let checkpoint = Checkpoint::read(&opts.out_dir)?;
        if checkpoint.state.plan_hash != plan.hash() {
            return Err(RuntimeError::Checkpoint {
                path: crate::checkpoint::path(&opts.out_dir),
                reason: "it was written for another plan than the folder's plan.yaml".into(),
                help: Some("the run folder was edited by hand; start a new run".into()),
            });
        }
        Some(checkpoint)
    } else {
        None
    };
    let log_path = opts.out_dir.join("metrics.jsonl");
    let log = match &resume {
        Some(checkpoint) => MetricsLog::reopen(&log_path, checkpoint.state.metrics_log_bytes)?,
        None => MetricsLog::create(&log_path)?,
    };
    let state = match &resume {
        Some(checkpoint) => checkpoint.state.clone(),
        None => RunState {
            plan_hash: plan.hash(),
            ..RunState::default()
        },
    };
    let mut run = Run {
        plan,
        opts,
        datasets,
        fills,
        log,
        state,
        resume,
    };
    let seeds: Vec<u64> = (0..plan.settings.repeat.max(1))
        .map(|i| plan.settings.seed.wrapping_add(u64::from(i)))
        .collect();
    while run.state.seed_index < seeds.len() {
        let index = run.state.seed_index;
        let record = run.seed(seeds[index], seeds.len() > 1)?;
        run.state.seeds_done.push(record);
        run.state.seed_index += 1;
        run.state.stage_index = 0;
        run.state.stage = None;
        run.state.stages_done.clear();
        run.checkpoint(None, &HashMap::new())?;
    }
    let results = std::mem::take(&mut run.state.seeds_done);
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
        peak_rss_mb: crate::summary::peak_rss_mb(),
    };
    let text = serde_json::to_string_pretty(&summary)?;
    write_atomically(&opts.out_dir.join("summary.json"), text.as_bytes())?;
    // The run is complete: its checkpoint has nothing left to continue.
    let checkpoint = crate::checkpoint::path(&opts.out_dir);
    if checkpoint.exists() {
        std::fs::remove_file(&checkpoint).map_err(|source| RuntimeError::Write {
            path: checkpoint,
            source,
        })?;
    }
    Ok(summary)
}

/// Removes the `.partial` files a killed run left behind (in the run folder and its
/// `seed-N` folders): they were never renamed into place, so nothing refers to them.
fn remove_partial_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| RuntimeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        // Never follow a link out of the run folder.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_partial_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "partial") {
            std::fs::remove_file(&path).map_err(|source| RuntimeError::Write { path, source })?;
        }
    }
    Ok(())
}

/// Makes candle's CPU kernels use `threads` (they read `RAYON_NUM_THREADS` on every call,
/// and rayon's pool reads it when first used); returns the number in effect.
pub fn configure_threads(threads: Option<usize>) -> usize {
    if let Some(n) = threads.filter(|&n| n > 0) {
        if candle_core::utils::get_num_threads() != n {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    candle_core::utils::get_num_threads()
}

/// `metrics.jsonl`: one JSON object per epoch of each stage, flushed as written so the
/// file can be followed while a run trains.
struct MetricsLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes written so far: a checkpoint records it, a resume cuts the file back to it.
    bytes: u64,
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
            bytes: 0,
        })
    }

    /// Opens the log of a resumed run, dropping the lines written after the checkpoint
    /// (they will be written again).
    fn reopen(path: &Path, bytes: u64) -> Result<Self> {
        let write_error = |source| RuntimeError::Write {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(write_error)?;
        let len = file.metadata().map_err(write_error)?.len();
        if len < bytes {
            return Err(RuntimeError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("it holds {len} bytes, the checkpoint counts {bytes}"),
                help: Some("metrics.jsonl was cut short by hand; start a new run".into()),
            });
        }
        file.set_len(bytes).map_err(write_error)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            bytes,
        })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string(line)?;
        writeln!(self.file, "{text}")
            .and_then(|()| self.file.flush())
            .map_err(|source| RuntimeError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += text.len() as u64 + 1;
        Ok(())
    }
}

/// What was found not finite in a training step.
enum NonFiniteValue {
    /// The loss, and the nodes of the step whose values were not finite, in order.
    Loss(Vec<kd_plan::NodeId>),
    /// The gradient of this parameter of the trained model.
    Gradient(String),
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

    fn seed(&mut self, seed: u64, several: bool) -> Result<SeedRecord> {
        let plan = self.plan;
        // A checkpoint taken at the very start of a seed holds no weights: start afresh.
        let resume = self
            .resume
            .take()
            .filter(|c| c.state.stage_index > 0 || c.state.stage.is_some());
        let mut models = HashMap::new();
        let cache_dir = self.cache_dir();
        for spec in &plan.models {
            let mut model = match (&spec.onnx, &spec.bert) {
                (Some(onnx), _) => Model::from_onnx(spec, &plan.resolve(&onnx.path))?,
                (None, Some(bert)) => {
                    Model::from_bert(spec, &plan.resolve(&bert.path), seed, cache_dir.as_deref())?
                }
                (None, None) => Model::new(spec, seed)?,
            };
            if let Some(pad_id) = pad_id_for(plan, &spec.name) {
                model.set_pad_id(pad_id);
            }
            model.set_output_caching(plan.settings.cache != kd_plan::CacheMode::Off);
            match &resume {
                Some(checkpoint) => checkpoint
                    .restore_model(&mut model, &crate::checkpoint::path(&self.opts.out_dir))?,
                None => {
                    if let Some(path) = &spec.init_from {
                        model.load_weights(&plan.resolve(path))?;
                    }
                }
            }
            models.insert(spec.name.clone(), model);
        }
        let mut resume = resume.filter(|c| c.state.stage.is_some());
        while self.state.stage_index < plan.stages.len() {
            let stage = &plan.stages[self.state.stage_index];
            let summary = self.train_stage(stage, seed, &mut models, resume.take())?;
            for model in models.values_mut() {
                model.save_caches()?;
            }
            self.state.stages_done.push(summary);
            self.state.stage_index += 1;
            self.state.stage = None;
            self.checkpoint(None, &models)?;
            self.stop_if_interrupted()?;
        }
        let metrics = self.evaluate(&mut models)?;
        for model in models.values_mut() {
            model.save_caches()?;
        }
        let mut bytes = BTreeMap::new();
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
            let size = if path.extension().is_some_and(|e| e == "onnx") {
                let spec = plan.model(&export.model).ok_or_else(|| {
                    plan_error(format!("export of unknown model `{}`", export.model))
                })?;
                let file = crate::onnx_export::export(spec, model)?;
                write_atomically(&path, &file)?;
                file.len() as u64
            } else {
                model.save_weights(&path)?
            };
            bytes.entry(export.model.clone()).or_insert(size);
        }
        let params = models
            .iter()
            .map(|(name, m)| (name.clone(), m.param_count()))
            .collect();
        // Counted before the latency probe, whose forwards bypass the cache on purpose.
        let encoder_forwards = models
            .iter()
            .filter(|(_, m)| m.is_bert())
            .map(|(name, m)| (name.clone(), m.encoder_samples()))
            .collect();
        let latency_ms = self.latencies(&mut models)?;
        Ok(SeedRecord {
            stages: std::mem::take(&mut self.state.stages_done),
            metrics,
            bytes,
            params,
            latency_ms,
            encoder_forwards,
        })
    }

    /// Writes a checkpoint of the run as it stands: `stage` carries a stage's optimizer
    /// and best weights while it runs.
    fn checkpoint(
        &self,
        stage: Option<StageCheckpoint>,
        models: &HashMap<String, Model>,
    ) -> Result<()> {
        let mut state = self.state.clone();
        state.metrics_log_bytes = self.log.bytes;
        // Models in plan order, so two checkpoints of one state are byte for byte equal.
        let ordered = self.plan.models.iter().filter_map(|m| models.get(&m.name));
        let mut checkpoint = Checkpoint::new(state, ordered)?;
        if let Some((optim, best, cache, projections)) = stage {
            checkpoint.add_optimizer(optim.slots());
            checkpoint.add_cache(cache);
            checkpoint.add_projections(projections)?;
            if let Some(best) = best {
                checkpoint.add_best(best)?;
            }
        }
        checkpoint.write(&self.opts.out_dir)
    }

    fn interrupted(&self) -> bool {
        self.opts
            .interrupt
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    /// Stops the run (its checkpoint already written) when an interrupt was asked for.
    fn stop_if_interrupted(&self) -> Result<()> {
        if !self.interrupted() {
            return Ok(());
        }
        let state = &self.state;
        let position = match (self.plan.stages.get(state.stage_index), &state.stage) {
            (Some(stage), Some(progress)) => format!(
                "stage `{}`, epoch {}, step {}",
                stage.name,
                progress.epoch + 1,
                progress.step
            ),
            (Some(stage), None) => format!("the start of stage `{}`", stage.name),
            (None, _) => "the evaluation".to_string(),
        };
        Err(RuntimeError::Interrupted {
            dir: self.opts.out_dir.clone(),
            position,
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
        let split_name = split;
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
            data: data.to_string(),
            split: split_name.to_string(),
            indices: positions.to_vec(),
            split_samples: split.len(),
        })
    }

    fn train_stage(
        &mut self,
        stage: &Stage,
        seed: u64,
        models: &mut HashMap<String, Model>,
        resume: Option<Checkpoint>,
    ) -> Result<StageSummary> {
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
        // The stage's own projections train with the model and are dropped after it.
        let projection_map = projections(stage, seed)?;
        // In the stage's order: `project1.weight`, `project1.bias`, `project2.weight`, ...
        let projection_vars: Vec<(String, Var)> = stage
            .projections
            .iter()
            .filter_map(|p| projection_map.get(&p.name).map(|wb| (&p.name, wb)))
            .flat_map(|(name, (w, b))| {
                [
                    (format!("{name}.weight"), w.clone()),
                    (format!("{name}.bias"), b.clone()),
                ]
            })
            .collect();
        let mut params = params;
        params.extend(projection_vars.iter().cloned());
        let mut optim = Optim::new(&stage.optimizer, params.len());
        let mut best_weights: Option<Vec<Tensor>> = None;
        let mut st = StageState::default();
        // Frozen models' outputs, per sample, for this stage's `CachedForward` nodes.
        let mut cache = OutputCache::default();
        if let Some(checkpoint) = resume {
            let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
            let path = crate::checkpoint::path(&self.opts.out_dir);
            optim.restore(checkpoint.optimizer_for(&sizes, &path)?);
            best_weights = checkpoint.best()?;
            cache = checkpoint.cache(&crate::checkpoint::path(&self.opts.out_dir))?;
            checkpoint.restore_projections(&projection_vars, &path)?;
            st = checkpoint.state.stage.unwrap_or_default();
        }
        // `cache: disk`: tables of earlier runs with the same model weights and data.
        let disk_tables = self.disk_tables(stage, models)?;
        for (key, file) in &disk_tables {
            if cache.tables.contains_key(key) {
                continue;
            }
            let samples = self.dataset(&key.1)?.split(&key.2)?.len();
            if let Some(table) = crate::cache::CacheTable::load(file, samples) {
                cache.tables.insert(key.clone(), table);
            }
        }
        // What the cache held when the stage started, to save only tables that grew.
        let loaded: HashMap<crate::cache::CacheKey, usize> = cache
            .tables
            .iter()
            .map(|(key, table)| (key.clone(), table.filled_count()))
            .collect();
        let sources = self.batch_sources(stage);
        let primary = (stage.data.clone(), stage.split.clone());
        let progress = StageProgress::start(self.opts.progress, &stage.name, seed, total_steps);
        progress.skip(st.global_step);
        let teacher_val = self.teacher_on_validation(stage, models)?;
        let every = self.plan.settings.checkpoint_every;
        // Seconds not yet added to `st.seconds`.
        let mut clock = Instant::now();

        while st.epoch < stage.epochs && !st.stopped {
            let epoch = st.epoch;
            let epoch_started = Instant::now();
            let order = epoch_order(seed, &format!("shuffle/{}/{epoch}", stage.name), samples);
            // Batch nodes on other splits walk their own shuffled order, cycling.
            let mut other_orders = HashMap::new();
            for source in sources.iter().filter(|s| **s != primary) {
                let n = self.dataset(&source.0)?.split(&source.1)?.len();
                let stream = format!("shuffle/{}/{}.{}/{epoch}", stage.name, source.0, source.1);
                other_orders.insert(source.clone(), epoch_order(seed, &stream, n));
            }
            if st.step == 0 {
                st.loss_sum = 0.0;
                st.loss_samples = 0;
            }
            while st.step < steps_per_epoch {
                let step_started = Instant::now();
                let step = st.step;
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
                let lr = stage.schedule.lr_at(
                    stage.optimizer.lr(),
                    st.global_step,
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
                    projections: &projection_map,
                };
                // A skipped batch must not leave its batch-norm statistics behind.
                let skip = self.plan.settings.non_finite == NonFinite::Skip;
                let saved_statistics = match skip {
                    true => Some(self.model_ref(models, &stage.trains)?.buffer_snapshot()?),
                    false => None,
                };
                let output = run_step(&input, models, &mut cache)?;
                st.teacher_forwards += output.frozen_samples;
                let loss = output.loss.as_ref().ok_or_else(|| {
                    plan_error(format!("stage `{}` computes no loss", stage.name))
                })?;
                let value = f64::from(
                    loss.to_dtype(candle_core::DType::F32)
                        .and_then(|l| l.to_scalar::<f32>())
                        .ctx("reading the loss")?,
                );
                let applied = if value.is_finite() {
                    let grads = self
                        .model_ref(models, &stage.trains)?
                        .backward(loss)
                        .ctx_with(|| format!("backward of stage `{}`", stage.name))?;
                    match optim.step(&params, &grads, lr, stage.clip)? {
                        Update::Applied { .. } => true,
                        Update::NonFinite { parameter } => {
                            self.non_finite(stage, &st, NonFiniteValue::Gradient(parameter))?;
                            false
                        }
                    }
                } else {
                    self.non_finite(stage, &st, NonFiniteValue::Loss(output.non_finite))?;
                    false
                };
                if applied {
                    st.loss_sum += value * positions.len() as f64;
                    st.loss_samples += positions.len();
                } else {
                    st.skipped_batches += 1;
                    if let Some(saved) = &saved_statistics {
                        self.model_ref(models, &stage.trains)?
                            .restore_buffers(saved)?;
                    }
                }
                if let Some(times) = &self.opts.step_times {
                    if let Ok(mut times) = times.lock() {
                        times.push(StepTime {
                            stage: stage.name.clone(),
                            seconds: step_started.elapsed().as_secs_f64(),
                        });
                    }
                }
                st.step += 1;
                st.global_step += 1;
                progress.step();
                let due = every.is_some_and(|n| st.global_step % n.max(1) == 0);
                if (due && st.step < steps_per_epoch) || self.interrupted() {
                    st.seconds += clock.elapsed().as_secs_f64();
                    clock = Instant::now();
                    self.state.stage = Some(st.clone());
                    self.checkpoint(
                        Some((&optim, best_weights.as_ref(), &cache, &projection_vars)),
                        models,
                    )?;
                    self.stop_if_interrupted()?;
                }
            }
            st.epochs_run += 1;
            st.final_loss = st.loss_sum / st.loss_samples.max(1) as f64;
            // The learning rate of the epoch's last step.
            let lr = stage.schedule.lr_at(
                stage.optimizer.lr(),
                st.global_step.saturating_sub(1),
                total_steps,
                steps_per_epoch,
            );

            let validation = match &stage.validate {
                Some(_) => Some(self.validate(
                    stage,
                    seed,
                    epoch,
                    models,
                    &mut cache,
                    (teacher_val.as_ref(), &projection_map),
                )?),
                None => None,
            };
            let seconds = epoch_started.elapsed().as_secs_f64();
            let mut line = serde_json::json!({
                "seed": seed,
                "stage": stage.name,
                "model": stage.trains,
                "epoch": epoch + 1,
                "steps": st.global_step,
                "lr": lr,
                "train_loss": st.final_loss,
                "seconds": seconds,
            });
            if let Some(map) = line.as_object_mut() {
                if let Some(v) = &validation {
                    map.insert("val_accuracy".into(), v.metrics.accuracy.into());
                    map.insert("val_f1".into(), v.metrics.f1.into());
                    map.insert("val_loss".into(), v.loss.into());
                }
                if st.skipped_batches > 0 {
                    map.insert("skipped_batches".into(), st.skipped_batches.into());
                }
            }
            self.log.write(&line)?;
            progress.epoch(&EpochLine {
                seed,
                stage: &stage.name,
                epoch: epoch + 1,
                epochs: stage.epochs,
                train_loss: st.final_loss,
                val: validation.as_ref().map(|v| (v.metrics.accuracy, v.loss)),
                seconds,
            });

            if let (Some(validate), Some(v)) = (&stage.validate, &validation) {
                let metric = match validate.keep {
                    Keep::Best(metric) => metric,
                    Keep::Last => Metric::Loss,
                };
                let value = v.value(metric)?;
                let improved = match st.best {
                    None => value.is_finite(),
                    Some((best_value, _)) => {
                        if metric.higher_is_better() {
                            value > best_value
                        } else {
                            value < best_value
                        }
                    }
                };
                if improved {
                    if let Keep::Best(_) = validate.keep {
                        best_weights = Some(self.model_ref(models, &stage.trains)?.snapshot()?);
                    }
                    st.best = Some((value, epoch + 1));
                    st.epochs_without_improvement = 0;
                } else {
                    st.epochs_without_improvement += 1;
                }
                st.stopped = validate
                    .early_stop
                    .is_some_and(|patience| st.epochs_without_improvement >= patience);
            }
            st.epoch += 1;
            st.step = 0;
            st.seconds += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            self.state.stage = Some(st.clone());
            self.checkpoint(
                Some((&optim, best_weights.as_ref(), &cache, &projection_vars)),
                models,
            )?;
            self.stop_if_interrupted()?;
        }
        progress.finish();
        for (key, file) in &disk_tables {
            if let Some(table) = cache.tables.get(key) {
                if loaded.get(key) != Some(&table.filled_count()) {
                    table.save(file)?;
                }
            }
        }
        let mut best_epoch = None;
        if let Some(Keep::Best(_)) = stage.validate.as_ref().map(|v| &v.keep) {
            if let (Some((_, epoch)), Some(weights)) = (st.best, &best_weights) {
                self.model_ref(models, &stage.trains)?.restore(weights)?;
                best_epoch = Some(epoch);
            }
        }
        let seconds = st.seconds + clock.elapsed().as_secs_f64();
        let processed = (samples * st.epochs_run) as f64;
        Ok(StageSummary {
            name: stage.name.clone(),
            model: stage.trains.clone(),
            seed,
            epochs: st.epochs_run,
            steps: st.global_step,
            seconds,
            samples_per_s: if seconds > 0.0 {
                processed / seconds
            } else {
                0.0
            },
            final_loss: st.final_loss,
            teacher_forwards: st.teacher_forwards,
            skipped_batches: st.skipped_batches,
            best_epoch,
        })
    }

    /// A non-finite loss or gradient: skipped when the pipeline says so, else the end of
    /// the run with the term to blame (the checkpoint on disk is the last good state).
    fn non_finite(&self, stage: &Stage, st: &StageState, value: NonFiniteValue) -> Result<()> {
        if self.plan.settings.non_finite == NonFinite::Skip {
            return Ok(());
        }
        let graph = &self.plan.graph;
        let label_at = |node: kd_plan::NodeId, text: String| {
            graph.node_weight(node).map(|n| {
                let length = n.span.end.saturating_sub(n.span.start);
                miette::LabeledSpan::new(Some(text), n.span.start, length)
            })
        };
        let mut labels = Vec::new();
        let what = match value {
            NonFiniteValue::Loss(nodes) => {
                let op = |node: &kd_plan::NodeId| graph.node_weight(*node).map(|n| &n.op);
                // The term: the first non-finite value the loss expression computed.
                let term = nodes
                    .iter()
                    .find(|n| {
                        !matches!(
                            op(n),
                            Some(
                                Op::Batch { .. }
                                    | Op::Augment { .. }
                                    | Op::Forward { .. }
                                    | Op::CachedForward { .. }
                            )
                        )
                    })
                    .copied()
                    .unwrap_or(stage.loss);
                labels.extend(label_at(term, "this term is NaN or infinite".into()));
                // Its cause, when a batch or a model already gave a non-finite value.
                let cause = nodes.first().and_then(|node| {
                    let text = match op(node)? {
                        Op::Batch { data, split } => {
                            format!("the batch of `{data}.{split}` holds a NaN or an infinity")
                        }
                        Op::Augment { pipeline } => {
                            format!("augmentation `{pipeline}` gives a NaN or an infinity")
                        }
                        Op::Forward { model, .. } | Op::CachedForward { model } => {
                            format!("model `{model}` gives a NaN or an infinity")
                        }
                        _ => return None,
                    };
                    label_at(*node, text)
                });
                labels.extend(cause);
                "the loss".to_string()
            }
            NonFiniteValue::Gradient(parameter) => {
                labels.extend(label_at(stage.loss, "the loss whose gradient it is".into()));
                format!("the gradient of `{}.{parameter}`", stage.trains)
            }
        };
        let kept = if crate::checkpoint::path(&self.opts.out_dir).exists() {
            "the run folder keeps the last good checkpoint; "
        } else {
            ""
        };
        Err(RuntimeError::NonFinite(Box::new(NonFiniteError {
            what,
            stage: stage.name.clone(),
            epoch: st.epoch + 1,
            step: st.step + 1,
            labels,
            help: format!(
                "{kept}lower the learning rate, clip gradients (`clip`), check the data and the loss, \
                 or set `non_finite: skip` in `pipeline` to skip such batches (in a new run: a resume keeps its plan)"
            ),
        })))
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
        cache: &mut OutputCache,
        (teacher_predictions, projections): (Option<&Vec<u32>>, &Projections),
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
                projections,
            };
            let output = run_step(&input, models, cache)?;
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
                    let outputs = model.forward_with(&batch.x, false, true, false)?;
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

    /// Under `cache: disk`, where each table this stage's cached forwards may fill lives:
    /// the file is named by a hash of kdc's version, the frozen model (its spec, its current
    /// weights, and the files of ONNX and BERT models) and the data (its spec, its files'
    /// hashes, the split and the split's samples), so any change makes another file.
    fn disk_tables(
        &self,
        stage: &Stage,
        models: &HashMap<String, Model>,
    ) -> Result<Vec<(crate::cache::CacheKey, PathBuf)>> {
        use sha2::{Digest, Sha256};
        let Some(dir) = self.cache_dir() else {
            return Ok(Vec::new());
        };
        let yaml = |what: &str, value: &dyn erased::Yaml| {
            value
                .yaml()
                .map_err(|e| plan_error(format!("cannot hash {what} for the cache ({e})")))
        };
        // Each cached model with the ports the stage keeps of it (part of the file's name).
        let cached: Vec<(&str, Vec<String>)> = stage
            .nodes
            .iter()
            .filter_map(|&id| match self.plan.graph.node_weight(id).map(|n| &n.op) {
                Some(Op::CachedForward { model }) => {
                    Some((model.as_str(), kd_plan::read_ports(&self.plan.graph, id)))
                }
                _ => None,
            })
            .collect();
        let mut splits = self.batch_sources(stage);
        if let Some(v) = &stage.validate {
            splits.push((v.data.clone(), v.split.clone()));
        }
        let mut out = Vec::new();
        for (name, ports) in cached {
            let (Some(spec), Some(model)) = (self.plan.model(name), models.get(name)) else {
                continue;
            };
            let mut hasher = Sha256::new();
            hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
            hasher.update(ports.join(",").as_bytes());
            let mut spec = spec.clone();
            spec.span = Default::default();
            hasher.update(yaml("a model", &spec)?.as_bytes());
            for (parameter, var) in model.state() {
                hasher.update(parameter.as_bytes());
                let values = var
                    .as_tensor()
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .ctx("hashing a model")?;
                for v in values {
                    hasher.update(v.to_le_bytes());
                }
            }
            let files: Vec<PathBuf> = match (&spec.onnx, &spec.bert) {
                (Some(onnx), _) => vec![self.plan.resolve(&onnx.path)],
                (_, Some(bert)) => {
                    let folder = self.plan.resolve(&bert.path);
                    vec![folder.join("model.safetensors"), folder.join("config.json")]
                }
                _ => Vec::new(),
            };
            for file in files {
                crate::files::hash_file(&mut hasher, &file)?;
            }
            for (data, split) in &splits {
                let mut h = hasher.clone();
                let dataset = self.dataset(data)?;
                if let Some(d) = self.plan.data(data) {
                    let mut d = d.clone();
                    d.splits.clear();
                    h.update(yaml("a data source", &d)?.as_bytes());
                }
                for (path, hash) in &dataset.files {
                    h.update(format!("{}:{hash}", path.display()).as_bytes());
                }
                h.update(split.as_bytes());
                for i in &dataset.split(split)?.indices {
                    h.update((*i as u64).to_le_bytes());
                }
                let key = crate::files::hex(&h.finalize()[..16]);
                out.push((
                    (name.to_string(), data.clone(), split.clone()),
                    crate::cache::table_file(&dir, &key),
                ));
            }
        }
        Ok(out)
    }

    /// `<output>/cache` under `cache: disk`: beside the pipeline's run folders (wherever
    /// `--out` puts this one), shared by every run of every pipeline with that output.
    fn cache_dir(&self) -> Option<PathBuf> {
        (self.plan.settings.cache == kd_plan::CacheMode::Disk)
            .then(|| self.plan.resolve(&self.plan.settings.output).join("cache"))
    }

    /// Per-sample CPU latency of each evaluated model: the median of single-sample
    /// forwards (batch of one, eval mode, no cache) over the first samples of its first
    /// evaluation split, after one warm-up forward.
    fn latencies(&self, models: &mut HashMap<String, Model>) -> Result<BTreeMap<String, f64>> {
        const SAMPLES: usize = 20;
        let mut out = BTreeMap::new();
        for evaluation in &self.plan.evaluations {
            let dataset = self.dataset(&evaluation.data)?;
            let n = dataset.split(&evaluation.split)?.len().min(SAMPLES);
            if n == 0 {
                continue;
            }
            for name in &evaluation.models {
                if out.contains_key(name) {
                    continue;
                }
                let model = models
                    .get_mut(name)
                    .ok_or_else(|| plan_error(format!("no model `{name}`")))?;
                let mut times = Vec::with_capacity(n);
                for position in 0..=n {
                    let batch =
                        self.build_batch(&evaluation.data, &evaluation.split, &[position % n])?;
                    let started = Instant::now();
                    let outputs = model.forward_with(&batch.x, false, false, false)?;
                    // candle is eager, but make sure the result exists before the clock stops.
                    if let Some((_, t)) = outputs.last() {
                        t.sum_all().ctx("timing a forward")?;
                    }
                    if position > 0 {
                        times.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                times.sort_by(f64::total_cmp);
                out.insert(name.clone(), times[times.len() / 2]);
            }
        }
        Ok(out)
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

/// A stage's trainable projections by name: weight and bias.
type Projections = HashMap<String, (Var, Var)>;

/// Serialising a value to YAML for a cache key.
mod erased {
    pub trait Yaml {
        fn yaml(&self) -> Result<String, serde_yaml::Error>;
    }
    impl<T: serde::Serialize> Yaml for T {
        fn yaml(&self) -> Result<String, serde_yaml::Error> {
            serde_yaml::to_string(self)
        }
    }
}

/// What a checkpoint taken inside a stage adds: the optimizer, the best epoch's weights,
/// the output cache and the stage's projections.
type StageCheckpoint<'a> = (
    &'a Optim,
    Option<&'a Vec<Tensor>>,
    &'a OutputCache,
    &'a [(String, Var)],
);

/// The pad id of the text data a token model reads (from the first stage or evaluation
/// that runs it on text).
fn pad_id_for(plan: &Plan, model: &str) -> Option<u32> {
    let from_stages = plan
        .stages
        .iter()
        .filter(|s| s.trains == model || s.frozen.iter().any(|f| f == model))
        .map(|s| s.data.as_str());
    let from_evaluations = plan
        .evaluations
        .iter()
        .filter(|e| e.models.iter().any(|m| m == model))
        .map(|e| e.data.as_str());
    from_stages
        .chain(from_evaluations)
        .find_map(|d| plan.data(d).and_then(|d| d.text.as_ref()).map(|t| t.pad_id))
}

/// Fresh weights and biases for a stage's projections, each drawn from its own stream
/// (uniform in `±1/sqrt(input)`, as PyTorch's `Linear`).
fn projections(stage: &Stage, seed: u64) -> Result<Projections> {
    let mut out = Projections::new();
    for p in &stage.projections {
        let bound = 1.0 / (p.input.max(1) as f64).sqrt();
        let draw = |part: &str, shape: Vec<usize>| {
            let name = format!("{}.{part}", p.name);
            let mut rng =
                crate::rng::Rng::new(seed, &format!("init/projection/{}/{name}", stage.name));
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| rng.uniform_in(-bound, bound) as f32)
                .collect();
            Var::from_vec(values, shape.as_slice(), &candle_core::Device::Cpu)
                .ctx_with(|| format!("initialising projection `{name}`"))
        };
        let weight = draw("weight", vec![p.out, p.input])?;
        let bias = draw("bias", vec![p.out])?;
        out.insert(p.name.clone(), (weight, bias));
    }
    Ok(out)
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
fn model_summaries(plan: &Plan, results: &[SeedRecord]) -> BTreeMap<String, ModelSummary> {
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
                latency_ms: first.latency_ms.get(&spec.name).copied(),
                encoder_forwards: first.encoder_forwards.get(&spec.name).copied(),
                metrics,
                metrics_std,
            },
        );
    }
    models
}
