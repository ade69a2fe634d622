//! The executor: runs every stage of a Plan for each seed, evaluates, exports, and writes
//! the run folder (`metrics.jsonl`, `summary.json`, the exported weights).

pub mod cache;
pub mod checkpoint;
mod data_parallel;
mod disk_cache;
mod evaluation;
pub mod graph;
pub mod losses;
mod non_finite;
pub mod optim;
mod pruning;
mod quantize;
pub mod shared;
mod stage;
pub mod sweep;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor, Var};
use kd_plan::{Op, Plan, Role, Stage};

use crate::data::Dataset;
use crate::device::RunDevice;
use crate::distributed::World;
use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::model::Model;
use crate::output::files::write_atomically;
use crate::output::metrics_log::MetricsLog;
use crate::output::progress::Progress;
use crate::output::summary::{model_summaries, Provenance, StageSummary, Summary, SCHEMA_VERSION};
use cache::OutputCache;
use checkpoint::{Checkpoint, RunState, SeedRecord};
use graph::BatchData;
use losses::Labels;
use optim::Optim;

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
    /// The ranks of a data-parallel run ([`World::single`] otherwise): each computes its
    /// share of every batch, and rank 0 alone writes the run folder.
    pub world: World,
    /// In a sweep: what its configurations share (stage results, frozen outputs).
    pub shared: Option<Arc<shared::Shared>>,
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
    /// Where the models and batches live.
    device: Device,
    /// Its name for messages (`cpu`, `cuda:0`).
    device_name: String,
    datasets: HashMap<String, Dataset>,
    /// Per data source: the normalised value of a raw zero, per channel.
    fills: HashMap<String, Vec<f32>>,
    log: MetricsLog,
    /// Where the run stands; the skeleton of every checkpoint.
    state: RunState,
    /// The checkpoint the run continues from, until the models have taken it back.
    resume: Option<Checkpoint>,
    /// In a data-parallel run: some rank was asked to stop at the last step, so every
    /// rank stops there.
    stop_agreed: bool,
}

/// Runs `plan` and writes its run folder into `opts.out_dir`.
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<Summary> {
    crate::limits::check(plan)?;
    let device = crate::device::select(&plan.settings.device)?;
    let threads = configure_threads(plan.settings.threads);
    let kernels = crate::ops::cpu_kernels();
    on_worker(threads, || {
        crate::ops::set_cpu_kernels(kernels);
        run_plan_on(plan, opts, threads, device)
    })
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

fn run_plan_on(
    plan: &Plan,
    opts: &RunOptions,
    threads: usize,
    device: RunDevice,
) -> Result<Summary> {
    let mut datasets = HashMap::new();
    let mut fills = HashMap::new();
    let mut data_files = BTreeMap::new();
    // Decoded images are cached beside the frozen models' outputs (`cache: disk`). In a
    // data-parallel run rank 0 alone keeps the disk cache: two ranks writing one file
    // through the same `.partial` could leave a mix of both.
    let cache = (plan.settings.cache == kd_plan::CacheMode::Disk && opts.world.writes())
        .then(|| plan.resolve(&plan.settings.output).join("cache"));
    for spec in &plan.data {
        let dataset = Dataset::load_cached(
            spec,
            &plan.source.base_dir,
            plan.settings.seed,
            cache.as_deref(),
        )?;
        for (path, hash) in &dataset.files {
            data_files.insert(path.display().to_string(), hash.clone());
        }
        fills.insert(spec.name.clone(), dataset.norm.zero_values().to_vec());
        datasets.insert(spec.name.clone(), dataset);
    }
    let writes = opts.world.writes();
    let resume = if opts.resume {
        if writes {
            remove_partial_files(&opts.out_dir)?;
        }
        let checkpoint = Checkpoint::read(&opts.out_dir)?;
        // Every rank has read the checkpoint before any can finish the run and remove it.
        opts.world.barrier()?;
        if checkpoint.state.plan_hash != plan.hash() {
            return Err(RuntimeError::Checkpoint {
                path: crate::train::checkpoint::path(&opts.out_dir),
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
        _ if !writes => MetricsLog::silent(
            &log_path,
            resume.as_ref().map_or(0, |c| c.state.metrics_log_bytes),
        ),
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
        device: device.device.clone(),
        device_name: device.name.clone(),
        datasets,
        fills,
        log,
        state,
        resume,
        stop_agreed: false,
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
        run.state.pruned.clear();
        run.checkpoint(None, &HashMap::new())?;
    }
    let results = std::mem::take(&mut run.state.seeds_done);
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        pipeline: plan.settings.name.clone(),
        seed: plan.settings.seed,
        seeds: seeds.clone(),
        device: device.name.clone(),
        gpu: device.gpu.clone(),
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
        peak_rss_mb: crate::output::summary::peak_rss_mb(),
        sweep: None,
    };
    if !writes {
        return Ok(summary);
    }
    let text = serde_json::to_string_pretty(&summary)?;
    write_atomically(&opts.out_dir.join("summary.json"), text.as_bytes())?;
    // The run is complete: its checkpoint has nothing left to continue.
    let checkpoint = crate::train::checkpoint::path(&opts.out_dir);
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

/// How many times candle's idle workers spin before they sleep.
const CANDLE_SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's CPU kernels use `threads` (they read `RAYON_NUM_THREADS` on every call,
/// and rayon's pool reads it when first used); returns the number in effect.
///
/// It also has candle's worker threads sleep as soon as an op of candle's ends, unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` says otherwise: by default each spins 25,000 times
/// first, holding a core that kdc's own kernels (on rayon's pool) then share. On 2 cores
/// that halved the speed of every memory-bound kernel that ran next (`kdc bench layers`:
/// relu's backward 1.44-1.89 -> 1.00-1.16 us a sample) and cost resnet_bn and
/// transformer_student a fifth of their speed (docs/performance.md).
pub fn configure_threads(threads: Option<usize>) -> usize {
    if std::env::var_os(CANDLE_SPIN_LIMIT).is_none() {
        // Read once, when candle's pool starts: on its first op, after this.
        std::env::set_var(CANDLE_SPIN_LIMIT, "0");
    }
    if let Some(n) = threads.filter(|&n| n > 0) {
        if candle_core::utils::get_num_threads() != n {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
    candle_core::utils::get_num_threads()
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
                (None, Some(bert)) => Model::from_bert_on(
                    spec,
                    &plan.resolve(&bert.path),
                    seed,
                    cache_dir.as_deref(),
                    &self.device,
                )?,
                // A model pruned gradually by neurons is at full width until its ramp
                // stage ends (see `train::pruning`).
                (None, None) => match resume
                    .as_ref()
                    .is_some_and(|c| pruning::wide_at(plan, spec, &c.state))
                {
                    true => Model::new_on(&pruning::wide_spec(plan, spec)?, seed, &self.device)?,
                    false => Model::new_on(spec, seed, &self.device)?,
                },
            };
            self.configure(&mut model);
            match &resume {
                Some(checkpoint) => checkpoint.restore_model(
                    &mut model,
                    &crate::train::checkpoint::path(&self.opts.out_dir),
                    spec.quantized.as_ref().is_some_and(|q| q.aware),
                )?,
                None => {
                    if let Some(path) = &spec.init_from {
                        model.load_weights(&plan.resolve(path))?;
                    }
                }
            }
            models.insert(spec.name.clone(), model);
        }
        let mut resume = resume.filter(|c| c.state.stage.is_some());
        let keys = match &self.opts.shared {
            Some(_) => shared::stage_keys(plan, seed),
            None => vec![None; plan.stages.len()],
        };
        if self.state.stage_index == 0 && resume.is_none() {
            self.take_shared_stages(&keys, &mut models)?;
        }
        while self.state.stage_index < plan.stages.len() {
            let stage = &plan.stages[self.state.stage_index];
            self.make_pruned(Some(stage), &mut models)?;
            self.make_aware(seed, stage, &mut models)?;
            let records = self.log.record_count();
            let summary = self.train_stage(stage, seed, &mut models, resume.take())?;
            self.narrow_after(stage, &mut models)?;
            self.save_caches(&mut models)?;
            self.state.stages_done.push(summary);
            self.share_stages(&keys, &models, records)?;
            self.state.stage_index += 1;
            self.state.stage = None;
            self.checkpoint(None, &models)?;
            self.stop_if_interrupted()?;
        }
        self.make_pruned(None, &mut models)?;
        self.make_quantized(seed, &mut models)?;
        let metrics = self.evaluate(&mut models)?;
        self.save_caches(&mut models)?;
        let mut bytes = BTreeMap::new();
        let mut files: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        // Rank 0 writes the files; the other ranks' summaries are not written either.
        let exports = plan.exports.iter().filter(|_| self.opts.world.writes());
        for export in exports {
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
                let file = crate::output::onnx_export::export(spec, model)?;
                write_atomically(&path, &file)?;
                file.len() as u64
            } else {
                model.save_weights(&path)?
            };
            bytes.entry(export.model.clone()).or_insert(size);
            files
                .entry(export.model.clone())
                .or_default()
                .insert(export.path.display().to_string(), size);
        }
        let params = models
            .iter()
            .map(|(name, m)| (name.clone(), m.param_count()))
            .collect();
        let mut sparsity = BTreeMap::new();
        for spec in plan.models.iter().filter(|m| m.pruned.is_some()) {
            sparsity.insert(
                spec.name.clone(),
                self.model_ref(&models, &spec.name)?.sparsity()?,
            );
        }
        // Counted before the latency probe, whose forwards bypass the cache on purpose.
        let mut encoder_forwards: BTreeMap<String, u64> = models
            .iter()
            .filter(|(_, m)| m.is_bert())
            .map(|(name, m)| (name.clone(), m.encoder_samples()))
            .collect();
        // Each rank's encoder ran on its rows: the run's count is their sum.
        let mut counts: Vec<f64> = encoder_forwards.values().map(|&n| n as f64).collect();
        self.opts.world.sum_f64(&mut counts)?;
        for (count, sum) in encoder_forwards.values_mut().zip(counts) {
            *count = sum as u64;
        }
        let latency_ms = self.latencies(&mut models)?;
        Ok(SeedRecord {
            stages: std::mem::take(&mut self.state.stages_done),
            metrics,
            bytes,
            params,
            latency_ms,
            encoder_forwards,
            sparsity,
            files,
        })
    }

    /// In a sweep, takes over the longest run of first stages another configuration has
    /// already computed alike: their models' weights, summaries and metrics lines.
    fn take_shared_stages(
        &mut self,
        keys: &[Option<String>],
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let Some(shared) = self.opts.shared.clone() else {
            return Ok(());
        };
        let mut found = None;
        for (k, key) in keys.iter().enumerate() {
            let Some(key) = key else { break };
            match shared.stage(key, &self.device)? {
                Some(result) => found = Some((k, result)),
                None => break,
            }
        }
        let Some((k, result)) = found else {
            return Ok(());
        };
        for (name, tensors, calls) in &result.models {
            let model = models
                .get_mut(name)
                .ok_or_else(|| plan_error(format!("a shared stage names no model `{name}`")))?;
            model.restore(tensors)?;
            model.set_dropout_calls(*calls);
        }
        for record in &result.meta.records {
            self.log.write(record)?;
        }
        for summary in &result.meta.summaries {
            let mut summary = summary.clone();
            summary.shared_from = Some(result.meta.from.clone());
            self.state.stages_done.push(summary);
        }
        self.state.stage_index = k + 1;
        Ok(())
    }

    /// In a sweep, keeps the result of the stages up to the one just finished when
    /// another configuration would compute them alike.
    fn share_stages(
        &self,
        keys: &[Option<String>],
        models: &HashMap<String, Model>,
        records_before: usize,
    ) -> Result<()> {
        let (Some(shared), Some(Some(key))) = (&self.opts.shared, keys.get(self.state.stage_index))
        else {
            return Ok(());
        };
        if !shared.wants(key) || shared.stage(key, &self.device)?.is_some() {
            return Ok(());
        }
        let done = &self.plan.stages[..=self.state.stage_index];
        let mut names: Vec<&String> = Vec::new();
        for stage in done {
            for name in stage.frozen.iter().chain([&stage.trains]) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut kept = Vec::new();
        for name in names {
            let model = self.model_ref(models, name)?;
            kept.push((name.clone(), model.snapshot()?, model.dropout_calls()));
        }
        let from = self
            .opts
            .out_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // This seed's stages so far: the earlier ones may themselves be shared.
        let summaries = self.state.stages_done[self.state.stages_done.len() - done.len()..]
            .iter()
            .map(|s| StageSummary {
                shared_from: None,
                ..s.clone()
            })
            .collect();
        let mut records = self.log.records_since(records_before).to_vec();
        // Earlier stages' lines were kept with them; a result taken over replays both.
        if let Some(Some(previous)) = self.state.stage_index.checked_sub(1).map(|i| &keys[i]) {
            if let Some(earlier) = shared.stage(previous, &self.device)? {
                let mut all = earlier.meta.records.clone();
                all.extend(records);
                records = all;
            }
        }
        let dropout_calls = kept.iter().map(|(n, _, c)| (n.clone(), *c)).collect();
        shared.keep_stage(
            key,
            shared::StageResult {
                models: kept,
                meta: shared::StageMeta {
                    from,
                    summaries,
                    records,
                    dropout_calls,
                },
            },
        )
    }

    /// The models' disk caches (BERT encoder outputs), written by the rank that writes the
    /// run folder; the others read them.
    fn save_caches(&self, models: &mut HashMap<String, Model>) -> Result<()> {
        if self.opts.world.writes() {
            for model in models.values_mut() {
                model.save_caches()?;
            }
        }
        // No rank reads a cache file before rank 0 has written it whole.
        self.opts.world.barrier()
    }

    /// Writes a checkpoint of the run as it stands: `stage` carries a stage's optimizer
    /// and best weights while it runs (rank 0's alone in a data-parallel run: every rank
    /// holds the same state).
    fn checkpoint(
        &self,
        stage: Option<StageCheckpoint>,
        models: &HashMap<String, Model>,
    ) -> Result<()> {
        if !self.opts.world.writes() {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.metrics_log_bytes = self.log.bytes;
        // Models in plan order, so two checkpoints of one state are byte for byte equal.
        let ordered = self.plan.models.iter().filter_map(|m| models.get(&m.name));
        let mut checkpoint = Checkpoint::new(state, ordered)?;
        if let Some((optim, best, cache, projections)) = stage {
            checkpoint.add_optimizer(&optim.slots()?);
            checkpoint.add_cache(cache);
            checkpoint.add_projections(projections)?;
            if let Some(best) = best {
                checkpoint.add_best(best)?;
            }
        }
        checkpoint.write(&self.opts.out_dir)
    }

    /// Whether the run stops at this step: asked of this process, or in a data-parallel
    /// run of any rank at the last step (all ranks agree on it, see `data_parallel`).
    fn interrupted(&self) -> bool {
        match self.opts.world.size() > 1 {
            true => self.stop_agreed,
            false => self.interrupt_asked(),
        }
    }

    /// Whether this process was asked to stop (Ctrl-C, SIGTERM).
    fn interrupt_asked(&self) -> bool {
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
        let x = Tensor::from_vec(x, shape, &self.device).ctx("building a batch")?;
        Ok(BatchData {
            x,
            labels: Labels::hard(labels),
            data: data.to_string(),
            split: split_name.to_string(),
            indices: positions.to_vec(),
            split_samples: split.len(),
        })
    }

    fn model_ref<'m>(&self, models: &'m HashMap<String, Model>, name: &str) -> Result<&'m Model> {
        models
            .get(name)
            .ok_or_else(|| plan_error(format!("no model `{name}`")))
    }

    /// `<output>/cache` under `cache: disk`: beside the pipeline's run folders (wherever
    /// `--out` puts this one), shared by every run of every pipeline with that output.
    /// In a sweep whose pipeline caches in memory, the sweep's own folder, so that its
    /// configurations share the tables.
    fn cache_dir(&self) -> Option<PathBuf> {
        match (self.plan.settings.cache, &self.opts.shared) {
            (kd_plan::CacheMode::Disk, _) => {
                Some(self.plan.resolve(&self.plan.settings.output).join("cache"))
            }
            (kd_plan::CacheMode::Memory, Some(shared)) => Some(shared.cache_dir()),
            _ => None,
        }
    }
}

/// A stage's trainable projections by name: weight and bias.
type Projections = HashMap<String, (Var, Var)>;

/// What a checkpoint taken inside a stage adds: the optimizer, the best epoch's weights,
/// the output cache and the stage's projections.
type StageCheckpoint<'a> = (
    &'a Optim,
    Option<&'a Vec<Tensor>>,
    &'a OutputCache,
    &'a [(String, Var)],
);

impl Run<'_> {
    /// What every model of the run is given once made: its padding id, and whether it
    /// may cache its outputs.
    fn configure(&self, model: &mut Model) {
        if let Some(pad_id) = pad_id_for(self.plan, &model.name) {
            model.set_pad_id(pad_id);
        }
        model.set_output_caching(self.plan.settings.cache != kd_plan::CacheMode::Off);
    }
}

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
