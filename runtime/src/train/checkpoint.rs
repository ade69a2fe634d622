//! Checkpoints: everything a run needs to continue exactly where it stopped, in one
//! safetensors file in the run folder. The tensors are every model's parameters and
//! running statistics, the optimizer's moments and the best epoch's weights; the header's
//! metadata holds the position (seed, stage, epoch, step), the counters and the results so
//! far as JSON. Randomness needs no saving beyond that: every draw is keyed by the seed and
//! the position (see [`crate::rng`]), except dropout, whose call count is saved per model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError, TensorContext};
use crate::model::Model;
use crate::output::files::write_atomically;
use crate::output::metrics::SplitMetrics;
use crate::output::summary::StageSummary;
use crate::train::cache::{CacheTable, OutputCache};
use crate::train::optim::Slot;

/// The checkpoint's name in the run folder.
pub const FILE: &str = "checkpoint.safetensors";
/// Bumped when the layout changes; an older checkpoint is refused with a clear message.
const FORMAT: u32 = 2;
const STATE_KEY: &str = "kdc.checkpoint";

/// Where a run stands, and what it has produced so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RunState {
    pub format: u32,
    /// [`kd_plan::Plan::hash`] of the plan the run follows.
    pub plan_hash: String,
    /// Index into the run's seeds (`seed`, `seed + 1`, ...) of the seed in progress.
    pub seed_index: usize,
    /// Index of the stage in progress (or about to start) for that seed.
    pub stage_index: usize,
    /// The stage's own progress; `None` when the stage has not started.
    pub stage: Option<StageState>,
    /// The seed's finished stages.
    pub stages_done: Vec<StageSummary>,
    /// Finished seeds, evaluated and exported.
    pub seeds_done: Vec<SeedRecord>,
    /// Per model: training-mode forward passes so far (the dropout stream's position).
    pub dropout_calls: BTreeMap<String, u64>,
    /// Per optimizer slot: updates applied so far (the moments are tensors).
    pub optimizer_steps: Vec<u64>,
    /// Bytes of `metrics.jsonl` that belong to the run at this point.
    pub metrics_log_bytes: u64,
    /// The stage's frozen-model output cache: each table's key and layout (the rows
    /// are tensors).
    #[serde(default)]
    pub cache: Vec<CachedTable>,
    /// The seed's pruned models made so far (their masks are tensors).
    #[serde(default)]
    pub pruned: Vec<String>,
}

/// The layout of one table of the output cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CachedTable {
    pub model: String,
    pub data: String,
    pub split: String,
    pub samples: usize,
    /// Each port's name and the shape of one sample's output.
    pub ports: Vec<(String, Vec<usize>)>,
}

/// A stage's progress: the executor's loop state, saved as is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StageState {
    /// Epochs finished; the epoch in progress when `step > 0`.
    pub epoch: usize,
    /// Steps finished in the epoch in progress.
    pub step: usize,
    pub global_step: usize,
    pub teacher_forwards: u64,
    pub epochs_run: usize,
    pub final_loss: f64,
    /// Sum of loss times batch size over the epoch's steps so far, and their samples.
    pub loss_sum: f64,
    pub loss_samples: usize,
    /// Batches skipped for a non-finite loss or gradient (`non_finite: skip`).
    pub skipped_batches: u64,
    /// The best validation value and its epoch (1-based).
    pub best: Option<(f64, usize)>,
    pub epochs_without_improvement: usize,
    /// Early stopping ended the stage.
    pub stopped: bool,
    /// Seconds spent in the stage before this process took over.
    pub seconds: f64,
}

/// What a finished seed produced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SeedRecord {
    pub stages: Vec<StageSummary>,
    pub metrics: BTreeMap<String, BTreeMap<String, SplitMetrics>>,
    pub bytes: BTreeMap<String, u64>,
    pub params: BTreeMap<String, usize>,
    #[serde(default)]
    pub latency_ms: BTreeMap<String, f64>,
    #[serde(default)]
    pub encoder_forwards: BTreeMap<String, u64>,
    /// Pruned models: parameters that are not zero, and the pruned fraction of the
    /// masked tensors.
    #[serde(default)]
    pub sparsity: BTreeMap<String, (usize, Option<f64>)>,
    /// Per model: each exported file (as the pipeline names it) and its size.
    #[serde(default)]
    pub files: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A checkpoint in memory: the state, and the tensors by name (shape, f32 values).
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub state: RunState,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The path of the checkpoint in `run_dir`.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(FILE)
}

fn model_key(model: &str, tensor: &str) -> String {
    format!("model/{model}/{tensor}")
}

fn mask_key(model: &str, tensor: &str) -> String {
    format!("mask/{model}/{tensor}")
}

/// A quantisation-aware model's input range for the layer of weight `tensor`.
fn range_key(model: &str, tensor: &str) -> String {
    format!("range/{model}/{tensor}")
}

impl Checkpoint {
    /// A checkpoint of `state` with every tensor of `models`.
    pub fn new<'m>(
        mut state: RunState,
        models: impl IntoIterator<Item = &'m Model>,
    ) -> Result<Checkpoint> {
        state.format = FORMAT;
        let mut checkpoint = Checkpoint {
            state,
            tensors: HashMap::new(),
        };
        for model in models {
            checkpoint
                .state
                .dropout_calls
                .insert(model.name.clone(), model.dropout_calls());
            for (name, var) in model.state() {
                checkpoint.add(model_key(&model.name, name), var.as_tensor())?;
            }
            for (name, mask) in model.masks() {
                checkpoint.add(mask_key(&model.name, name), mask)?;
            }
            for (name, amax) in model.input_ranges() {
                let key = range_key(&model.name, &name);
                checkpoint.tensors.insert(key, (vec![1], vec![amax]));
            }
        }
        Ok(checkpoint)
    }

    fn add(&mut self, key: String, tensor: &Tensor) -> Result<()> {
        let values = tensor
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .ctx_with(|| format!("saving `{key}`"))?;
        self.tensors.insert(key, (tensor.dims().to_vec(), values));
        Ok(())
    }

    /// Saves the optimizer's per-parameter state.
    pub fn add_optimizer(&mut self, slots: &[Slot]) {
        self.state.optimizer_steps = slots.iter().map(|s| s.steps).collect();
        for (index, slot) in slots.iter().enumerate() {
            for (part, values) in [("first", &slot.first), ("second", &slot.second)] {
                if !values.is_empty() {
                    self.tensors.insert(
                        format!("optim/{index}/{part}"),
                        (vec![values.len()], values.clone()),
                    );
                }
            }
        }
    }

    /// Saves a stage's trainable projections.
    pub fn add_projections(&mut self, projections: &[(String, Var)]) -> Result<()> {
        for (name, var) in projections {
            self.add(format!("projection/{name}"), var.as_tensor())?;
        }
        Ok(())
    }

    /// Puts saved projections back (every one must be there, with its shape).
    pub fn restore_projections(&self, projections: &[(String, Var)], path: &Path) -> Result<()> {
        for (name, var) in projections {
            self.restore_var(&format!("projection/{name}"), var, path)?;
        }
        Ok(())
    }

    /// Sets `var` to the saved tensor `key`, which must exist and have its shape.
    fn restore_var(&self, key: &str, var: &Var, path: &Path) -> Result<()> {
        let (shape, values) = self
            .tensors
            .get(key)
            .ok_or_else(|| broken(path, format!("it holds no tensor `{key}`")))?;
        if shape.as_slice() != var.dims() {
            return Err(broken(
                path,
                format!(
                    "`{key}` has shape {shape:?}, the model has {:?}",
                    var.dims()
                ),
            ));
        }
        let tensor = Tensor::from_vec(values.clone(), shape.as_slice(), var.device())
            .ctx_with(|| format!("restoring `{key}`"))?;
        var.set(&tensor).ctx_with(|| format!("restoring `{key}`"))
    }

    /// Saves the weights of the best epoch so far (a [`Model::snapshot`]).
    pub fn add_best(&mut self, snapshot: &[Tensor]) -> Result<()> {
        for (index, tensor) in snapshot.iter().enumerate() {
            self.add(format!("best/{index}"), tensor)?;
        }
        Ok(())
    }

    /// Saves the stage's output cache.
    pub fn add_cache(&mut self, cache: &OutputCache) {
        self.state.cache.clear();
        for (index, ((model, data, split), table)) in cache.tables.iter().enumerate() {
            self.state.cache.push(CachedTable {
                model: model.clone(),
                data: data.clone(),
                split: split.clone(),
                samples: table.samples,
                ports: table
                    .ports
                    .iter()
                    .map(|(name, shape, _)| (name.clone(), shape.clone()))
                    .collect(),
            });
            for (port, (_, _, rows)) in table.ports.iter().enumerate() {
                self.tensors.insert(
                    format!("cache/{index}/{port}"),
                    (vec![rows.len()], rows.clone()),
                );
            }
            let filled = table
                .filled
                .iter()
                .map(|&f| f32::from(u8::from(f)))
                .collect();
            self.tensors.insert(
                format!("cache/{index}/filled"),
                (vec![table.samples], filled),
            );
        }
    }

    /// The output cache saved by [`Checkpoint::add_cache`].
    pub fn cache(&self, path: &Path) -> Result<OutputCache> {
        let mut cache = OutputCache::default();
        for (index, info) in self.state.cache.iter().enumerate() {
            let tensor = |name: String| {
                self.tensors
                    .get(&name)
                    .map(|(_, v)| v)
                    .ok_or_else(|| broken(path, format!("it holds no tensor `{name}`")))
            };
            let filled: Vec<bool> = tensor(format!("cache/{index}/filled"))?
                .iter()
                .map(|&v| v != 0.0)
                .collect();
            let mut ports = Vec::with_capacity(info.ports.len());
            for (port, (name, shape)) in info.ports.iter().enumerate() {
                let rows = tensor(format!("cache/{index}/{port}"))?.clone();
                let width: usize = shape.iter().product();
                if rows.len() != info.samples * width {
                    return Err(broken(
                        path,
                        format!("cache table {index} has the wrong size"),
                    ));
                }
                ports.push((name.clone(), shape.clone(), rows));
            }
            if filled.len() != info.samples {
                return Err(broken(
                    path,
                    format!("cache table {index} has the wrong size"),
                ));
            }
            cache.tables.insert(
                (info.model.clone(), info.data.clone(), info.split.clone()),
                CacheTable {
                    samples: info.samples,
                    ports,
                    filled,
                },
            );
        }
        Ok(cache)
    }

    /// The optimizer state saved by [`Checkpoint::add_optimizer`], checked against the
    /// parameters it updates (`sizes`, in order).
    pub fn optimizer_for(&self, sizes: &[usize], path: &Path) -> Result<Vec<Slot>> {
        let slots = self.optimizer();
        let fits = slots.len() == sizes.len()
            && slots.iter().zip(sizes).all(|(slot, &n)| {
                (slot.first.is_empty() || slot.first.len() == n)
                    && (slot.second.is_empty() || slot.second.len() == n)
            });
        if !fits {
            return Err(broken(
                path,
                "its optimizer state does not fit the model".into(),
            ));
        }
        Ok(slots)
    }

    /// The optimizer state saved by [`Checkpoint::add_optimizer`].
    pub fn optimizer(&self) -> Vec<Slot> {
        let take = |index: usize, part: &str| {
            self.tensors
                .get(&format!("optim/{index}/{part}"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        self.state
            .optimizer_steps
            .iter()
            .enumerate()
            .map(|(index, &steps)| Slot {
                first: take(index, "first"),
                second: take(index, "second"),
                steps,
            })
            .collect()
    }

    /// The best epoch's weights, when the checkpoint holds them.
    pub fn best(&self) -> Result<Option<Vec<Tensor>>> {
        let mut snapshot = Vec::new();
        while let Some((shape, values)) = self.tensors.get(&format!("best/{}", snapshot.len())) {
            snapshot.push(
                Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu)
                    .ctx("restoring the best epoch")?,
            );
        }
        Ok((!snapshot.is_empty()).then_some(snapshot))
    }

    /// Puts the saved tensors and dropout position back into `model`, checking every
    /// name and shape; only a quantisation-aware model (`aware`) may have input ranges.
    pub fn restore_model(&self, model: &mut Model, path: &Path, aware: bool) -> Result<()> {
        for (name, var) in model.state() {
            self.restore_var(&model_key(&model.name, name), var, path)?;
        }
        let masked: Vec<(String, Vec<usize>)> = model
            .params()
            .iter()
            .filter(|(name, _)| self.tensors.contains_key(&mask_key(&model.name, name)))
            .map(|(name, var)| (name.clone(), var.dims().to_vec()))
            .collect();
        for (name, dims) in masked {
            let key = mask_key(&model.name, &name);
            let (shape, values) = &self.tensors[&key];
            if *shape != dims {
                return Err(broken(path, format!("`{key}` has shape {shape:?}")));
            }
            let mask = Tensor::from_vec(values.clone(), shape.as_slice(), &model.device())
                .ctx_with(|| format!("restoring `{key}`"))?;
            model.set_mask(&name, mask);
        }
        let mut ranges = Vec::new();
        for (name, _) in model.params() {
            let key = range_key(&model.name, name);
            match self.tensors.get(&key) {
                Some((shape, values))
                    if shape == &[1] && values.len() == 1 && values[0].is_finite() =>
                {
                    ranges.push((name.clone(), values[0]));
                }
                Some(_) => return Err(broken(path, format!("`{key}` is not one finite value"))),
                None => {}
            }
        }
        if !ranges.is_empty() && !aware {
            return Err(broken(
                path,
                format!(
                    "model `{}` has input ranges, and is not quantisation-aware",
                    model.name
                ),
            ));
        }
        if !ranges.is_empty() {
            model
                .set_input_ranges(&ranges)
                .map_err(|e| broken(path, e.to_string()))?;
        }
        let calls = self
            .state
            .dropout_calls
            .get(&model.name)
            .copied()
            .unwrap_or(0);
        model.set_dropout_calls(calls);
        Ok(())
    }

    /// Writes the checkpoint into `run_dir` atomically: the previous one stays whole
    /// until this one is on disk.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let target = path(run_dir);
        // YAML, not JSON: a NaN metric or an infinite best value must survive the trip.
        let state = serde_yaml::to_string(&self.state).map_err(|e| RuntimeError::Write {
            path: target.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut views = Vec::with_capacity(names.len());
        let bytes: Vec<Vec<u8>> = names
            .iter()
            .map(|name| {
                self.tensors[*name]
                    .1
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            })
            .collect();
        for (name, data) in names.iter().zip(&bytes) {
            let shape = self.tensors[*name].0.clone();
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, data)
                .map_err(|e| write_error(&target, e))?;
            views.push((name.as_str(), view));
        }
        let metadata = HashMap::from([(STATE_KEY.to_string(), state)]);
        let file =
            safetensors::serialize(views, Some(metadata)).map_err(|e| write_error(&target, e))?;
        write_atomically(&target, &file)
    }

    /// Reads the checkpoint in `run_dir`, refusing anything that is not whole and ours.
    pub fn read(run_dir: &Path) -> Result<Checkpoint> {
        let path = path(run_dir);
        let bytes = std::fs::read(&path).map_err(|source| RuntimeError::Io {
            path: path.clone(),
            source,
        })?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| broken(&path, format!("it is not a whole safetensors file ({e})")))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| broken(&path, format!("its header is unreadable ({e})")))?;
        let state_json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STATE_KEY))
            .ok_or_else(|| broken(&path, "it holds no kdc run state".into()))?;
        let state: RunState = serde_yaml::from_str(state_json)
            .map_err(|e| broken(&path, format!("its run state is unreadable ({e})")))?;
        if state.format != FORMAT {
            return Err(broken(
                &path,
                format!(
                    "it has layout {}, this kdc reads layout {FORMAT}",
                    state.format
                ),
            ));
        }
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(broken(&path, format!("`{name}` is not f32")));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Checkpoint { state, tensors })
    }
}

fn broken(path: &Path, reason: String) -> RuntimeError {
    RuntimeError::Checkpoint {
        path: path.to_path_buf(),
        reason,
        help: Some("a checkpoint is only ever replaced whole; this one was changed by hand or by another program".into()),
    }
}

fn write_error(path: &Path, error: safetensors::SafeTensorError) -> RuntimeError {
    RuntimeError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(error.to_string()),
    }
}
