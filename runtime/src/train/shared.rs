//! What the configurations of a sweep share: stages whose result they would all compute
//! alike (training the teacher, typically), and frozen models' outputs.
//!
//! A stage's result is named by a digest of everything it depends on: the seed, the
//! settings that change arithmetic, and every stage up to it (its graph, optimizer,
//! schedule, data, augmentation) with the specs of the models those stages touch. Two
//! configurations with the same digest would compute the same weights bit for bit, so the
//! second takes the first's. Frozen outputs of augmented batches are named by a digest of
//! the model's weights and the batch's values: configurations whose augmentation streams
//! are equal meet the same batches and share them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use kd_plan::{Plan, Stage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::model::Model;
use crate::output::files::{hex, write_atomically};
use crate::output::summary::StageSummary;

/// Outputs of augmented batches kept for other configurations, at most this many bytes.
const OUTPUT_BUDGET: usize = 1 << 30;

/// Shared by the runs of one sweep (`RunOptions::shared`).
pub struct Shared {
    /// `RUN/shared`: stage results on disk, so a resumed sweep does not train them again.
    dir: PathBuf,
    /// The stage digests more than one configuration computes: only these are kept.
    wanted: HashSet<String>,
    stages: Mutex<HashMap<String, Arc<StageResult>>>,
    outputs: Mutex<Outputs>,
}

#[derive(Default)]
struct Outputs {
    map: HashMap<[u8; 32], Vec<(String, Tensor)>>,
    bytes: usize,
}

/// The models a run of stages 0..=k left, and what those stages reported.
pub(super) struct StageResult {
    /// Per model: its tensors (parameters, then running statistics) and dropout position.
    pub models: Vec<(String, Vec<Tensor>, u64)>,
    pub meta: StageMeta,
}

#[derive(Serialize, Deserialize, Clone)]
pub(super) struct StageMeta {
    /// The configuration that computed it.
    pub from: String,
    pub summaries: Vec<StageSummary>,
    /// Its lines of metrics.jsonl.
    pub records: Vec<serde_json::Value>,
    pub dropout_calls: Vec<(String, u64)>,
}

impl Shared {
    /// A store in `dir` for runs of `plans` (every configuration of a sweep): the stages
    /// two of them would compute alike are kept.
    pub fn new(dir: &Path, plans: &[&Plan]) -> Shared {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for plan in plans {
            let mut mine = HashSet::new();
            for seed in seeds(plan) {
                for key in stage_keys(plan, seed).into_iter().flatten() {
                    mine.insert(key);
                }
            }
            for key in mine {
                *seen.entry(key).or_default() += 1;
            }
        }
        Shared {
            dir: dir.to_path_buf(),
            wanted: seen
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(k, _)| k)
                .collect(),
            stages: Mutex::default(),
            outputs: Mutex::default(),
        }
    }

    /// Where frozen models' output tables of unaugmented batches go when the pipeline
    /// keeps them in memory: a folder every configuration reads.
    pub(super) fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    pub(super) fn wants(&self, key: &str) -> bool {
        self.wanted.contains(key)
    }

    /// The result of the stages named `key`, from memory or from `RUN/shared`.
    pub(super) fn stage(&self, key: &str, device: &Device) -> Result<Option<Arc<StageResult>>> {
        if let Some(found) = lock(&self.stages)?.get(key) {
            return Ok(Some(found.clone()));
        }
        let (tensors, meta) = (self.file(key, "safetensors"), self.file(key, "json"));
        // The JSON is written last: without it the tensors may be partial.
        let Ok(text) = std::fs::read_to_string(&meta) else {
            return Ok(None);
        };
        let Ok(meta) = serde_json::from_str::<StageMeta>(&text) else {
            return Ok(None);
        };
        let Ok(mut loaded) = candle_core::safetensors::load(&tensors, device) else {
            return Ok(None);
        };
        let mut models = Vec::new();
        for (model, calls) in &meta.dropout_calls {
            let mut values = Vec::new();
            for i in 0.. {
                match loaded.remove(&format!("{model}/{i}")) {
                    Some(t) => values.push(t),
                    None => break,
                }
            }
            models.push((model.clone(), values, *calls));
        }
        let result = Arc::new(StageResult { models, meta });
        lock(&self.stages)?.insert(key.to_string(), result.clone());
        Ok(Some(result))
    }

    /// Keeps the result of the stages named `key`, in memory and on disk.
    pub(super) fn keep_stage(&self, key: &str, result: StageResult) -> Result<()> {
        let mut tensors = HashMap::new();
        for (model, values, _) in &result.models {
            for (i, t) in values.iter().enumerate() {
                tensors.insert(format!("{model}/{i}"), t.clone());
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| RuntimeError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.file(key, "safetensors");
        let partial = path.with_extension("safetensors.partial");
        candle_core::safetensors::save(&tensors, &partial).map_err(|e| RuntimeError::Write {
            path: partial.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::rename(&partial, &path).map_err(|source| RuntimeError::Write {
            path: path.clone(),
            source,
        })?;
        let meta = serde_json::to_string(&result.meta)?;
        write_atomically(&self.file(key, "json"), meta.as_bytes())?;
        lock(&self.stages)?.insert(key.to_string(), Arc::new(result));
        Ok(())
    }

    fn file(&self, key: &str, extension: &str) -> PathBuf {
        self.dir
            .join(format!("stages-{}.{extension}", &key[..32.min(key.len())]))
    }

    /// A frozen model's outputs for an augmented batch another run computed.
    pub(super) fn outputs(&self, key: &[u8; 32]) -> Result<Option<Vec<(String, Tensor)>>> {
        Ok(lock(&self.outputs)?.map.get(key).cloned())
    }

    /// Keeps a frozen model's outputs for a batch, while the budget lasts.
    pub(super) fn keep_outputs(&self, key: [u8; 32], outputs: &[(String, Tensor)]) -> Result<()> {
        let bytes: usize = outputs.iter().map(|(_, t)| t.elem_count() * 4).sum();
        let mut store = lock(&self.outputs)?;
        if store.bytes + bytes <= OUTPUT_BUDGET && !store.map.contains_key(&key) {
            store.bytes += bytes;
            store.map.insert(key, outputs.to_vec());
        }
        Ok(())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("wanted", &self.wanted.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| plan_error("a sweep's shared store was poisoned by a panic"))
}

fn seeds(plan: &Plan) -> Vec<u64> {
    (0..plan.settings.repeat.max(1))
        .map(|i| plan.settings.seed.wrapping_add(u64::from(i)))
        .collect()
}

/// Per stage of `plan`, the digest of the stages up to it for `seed`; `None` from the
/// first stage whose result cannot be taken over (a plan that prunes or quantises models
/// changes them between stages).
pub(super) fn stage_keys(plan: &Plan, seed: u64) -> Vec<Option<String>> {
    let derived = plan
        .models
        .iter()
        .any(|m| m.pruned.is_some() || m.quantized.is_some());
    if derived {
        return vec![None; plan.stages.len()];
    }
    let mut hasher = Sha256::new();
    hasher.update(b"kdc stage results 1\n");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(seed.to_le_bytes());
    let mut settings = plan.settings.clone();
    settings.name.clear();
    settings.output = PathBuf::new();
    settings.threads = None;
    settings.repeat = 1;
    settings.seed = 0;
    settings.checkpoint_every = None;
    settings.cache = kd_plan::CacheMode::Memory;
    hasher.update(yaml(&settings).as_bytes());
    let mut keys = Vec::new();
    for stage in &plan.stages {
        match stage_text(plan, stage) {
            Some(text) => {
                hasher.update(text.as_bytes());
                keys.push(Some(hex(&hasher.clone().finalize())));
            }
            None => break,
        }
    }
    keys.resize(plan.stages.len(), None);
    keys
}

/// Everything one stage's result depends on besides the stages before it.
fn stage_text(plan: &Plan, stage: &Stage) -> Option<String> {
    let graph = &plan.graph;
    let mut canonical = stage.clone();
    canonical.nodes.clear();
    canonical.span = Default::default();
    canonical.loss = Default::default();
    let mut text = yaml(&canonical);
    let position = |id| stage.nodes.iter().position(|&n| n == id);
    text.push_str(&format!("loss: {:?}\n", position(stage.loss)));
    for &id in &stage.nodes {
        let node = graph.node_weight(id)?;
        text.push_str(&yaml(&(&node.op, &node.ty)));
        let mut edges: Vec<String> = graph
            .edges_directed(id, petgraph::Direction::Incoming)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                let source = match position(e.source()) {
                    Some(p) => p.to_string(),
                    None => graph
                        .node_weight(e.source())
                        .map(|n| yaml(&n.op))
                        .unwrap_or_default(),
                };
                format!("{} <- {source}.{}\n", e.weight().arg, e.weight().port)
            })
            .collect();
        edges.sort();
        text.extend(edges);
    }
    let mut models: Vec<&String> = stage.frozen.iter().collect();
    models.push(&stage.trains);
    for name in models {
        let mut spec = plan.model(name)?.clone();
        spec.span = Default::default();
        text.push_str(&yaml(&spec));
    }
    let mut data: Vec<&str> = vec![&stage.data];
    if let Some(v) = &stage.validate {
        data.push(&v.data);
    }
    for name in data {
        text.push_str(&yaml(plan.data(name)?));
    }
    if let Some(augment) = &stage.augment {
        text.push_str(&yaml(plan.augment(augment)?));
    }
    Some(text)
}

fn yaml(value: &impl Serialize) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// A digest of a frozen model as a stage starts: its spec and every tensor it holds.
pub(super) fn model_print(plan: &Plan, model: &Model) -> Result<Sha256> {
    let mut hasher = Sha256::new();
    if let Some(spec) = plan.model(&model.name) {
        let mut spec = spec.clone();
        spec.span = Default::default();
        hasher.update(yaml(&spec).as_bytes());
    }
    super::disk_cache::hash_state(&mut hasher, model)?;
    Ok(hasher)
}

/// The name of a frozen model's outputs for input `x`: its print and `x`'s values.
pub(super) fn outputs_key(print: &Sha256, x: &Tensor) -> Result<[u8; 32]> {
    let mut hasher = print.clone();
    hasher.update(format!("{:?}", x.dims()).as_bytes());
    let values = x
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .ctx("naming a batch")?;
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    Ok(hasher.finalize().into())
}
