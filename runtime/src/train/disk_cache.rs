//! Where `cache: disk` keeps the frozen models' output tables: one file per model, data
//! and split, named by a hash of everything the outputs depend on.

use std::collections::HashMap;
use std::path::PathBuf;

use kd_plan::{Op, Stage};

use super::cache::{table_file, CacheKey};
use super::Run;
use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;

impl Run<'_> {
    /// Under `cache: disk`, where each table this stage's cached forwards may fill lives:
    /// the file is named by a hash of kdc's version, the frozen model (its spec, its current
    /// weights, and the files of ONNX and BERT models) and the data (its spec, its files'
    /// hashes, the split and the split's samples), so any change makes another file.
    pub(super) fn disk_tables(
        &self,
        stage: &Stage,
        models: &HashMap<String, Model>,
    ) -> Result<Vec<(CacheKey, PathBuf)>> {
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
            hash_state(&mut hasher, model)?;
            let files: Vec<PathBuf> = match (&spec.onnx, &spec.bert) {
                (Some(onnx), _) => vec![self.plan.resolve(&onnx.path)],
                (_, Some(bert)) => {
                    let folder = self.plan.resolve(&bert.path);
                    vec![folder.join("model.safetensors"), folder.join("config.json")]
                }
                _ => Vec::new(),
            };
            for file in files {
                crate::output::files::hash_file(&mut hasher, &file)?;
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
                let key = crate::output::files::hex(&h.finalize()[..16]);
                out.push((
                    (name.to_string(), data.clone(), split.clone()),
                    table_file(&dir, &key),
                ));
            }
        }
        Ok(out)
    }
}

/// Adds every tensor a model holds, by name, to a digest (the disk cache's file names and a
/// sweep's names of frozen outputs).
pub(super) fn hash_state(hasher: &mut sha2::Sha256, model: &Model) -> Result<()> {
    use sha2::Digest;
    for (parameter, var) in model.state() {
        hasher.update(parameter.as_bytes());
        let values = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .ctx("hashing a model")?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(())
}

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
