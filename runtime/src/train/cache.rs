//! The frozen-model output cache behind `CachedForward` nodes: per model and split, each
//! sample's outputs (every port) are computed the first time a batch holds the sample and
//! copied out of memory afterwards. A cache lives for one stage (the model is frozen
//! there), and a checkpoint saves it, so a resumed stage runs the model no more often than
//! an uninterrupted one.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::error::{plan_error, Result, TensorContext};

/// Which outputs: the model, and the `(data, split)` the sample indices refer to.
pub type CacheKey = (String, String, String);

/// One model's outputs on one split.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheTable {
    /// Samples in the split.
    pub samples: usize,
    /// Per port: its name, the shape of one sample's output, and `samples` rows of it.
    pub ports: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Which rows hold outputs.
    pub filled: Vec<bool>,
}

/// Every table of a stage.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OutputCache {
    pub tables: BTreeMap<CacheKey, CacheTable>,
}

/// What a cached forward gives back.
pub struct Cached {
    /// Each port's outputs for the batch, `[B, ...]`.
    pub ports: Vec<(String, Tensor)>,
    /// Samples the model had to run on (not in the cache before).
    pub computed: usize,
}

impl OutputCache {
    /// The outputs for the samples `indices` of a split of `samples` samples, whose inputs
    /// are the rows of `x`; `forward` runs the model on the rows missing from the cache.
    pub fn forward(
        &mut self,
        key: &CacheKey,
        samples: usize,
        indices: &[usize],
        x: &Tensor,
        forward: impl FnOnce(&Tensor) -> Result<Vec<(String, Tensor)>>,
    ) -> Result<Cached> {
        if indices.iter().any(|&i| i >= samples) || x.dims().first() != Some(&indices.len()) {
            return Err(plan_error("a cached batch does not match its split"));
        }
        let missing: Vec<usize> = match self.tables.get(key) {
            Some(table) => (0..indices.len())
                .filter(|&row| !table.filled[indices[row]])
                .collect(),
            None => (0..indices.len()).collect(),
        };
        if !missing.is_empty() {
            let rows: Vec<u32> = missing.iter().map(|&r| r as u32).collect();
            let rows = Tensor::from_vec(rows, missing.len(), x.device()).ctx("caching")?;
            let inputs = x.index_select(&rows, 0).ctx("caching")?;
            let outputs = forward(&inputs)?;
            self.store(key, samples, &missing, indices, &outputs)?;
        }
        let table = self
            .tables
            .get(key)
            .ok_or_else(|| plan_error("an empty output cache"))?;
        let mut ports = Vec::with_capacity(table.ports.len());
        for (name, shape, data) in &table.ports {
            let width: usize = shape.iter().product();
            let mut values = Vec::with_capacity(indices.len() * width);
            for &i in indices {
                values.extend_from_slice(&data[i * width..(i + 1) * width]);
            }
            let mut dims = vec![indices.len()];
            dims.extend(shape);
            // Served where the batch lives.
            let tensor = Tensor::from_vec(values, dims, x.device()).ctx("reading the cache")?;
            ports.push((name.clone(), tensor));
        }
        Ok(Cached {
            ports,
            computed: missing.len(),
        })
    }

    /// Stores the outputs of the batch rows `missing` (samples `indices[row]`).
    fn store(
        &mut self,
        key: &CacheKey,
        samples: usize,
        missing: &[usize],
        indices: &[usize],
        outputs: &[(String, Tensor)],
    ) -> Result<()> {
        let table = self.tables.entry(key.clone()).or_insert_with(|| {
            CacheTable::empty(
                samples,
                outputs
                    .iter()
                    .map(|(name, t)| (name.clone(), t.dims().get(1..).unwrap_or(&[]).to_vec())),
            )
        });
        if table.ports.len() != outputs.len() {
            return Err(plan_error("a cached model changed its outputs"));
        }
        for ((name, shape, data), (port, tensor)) in table.ports.iter_mut().zip(outputs) {
            if name != port {
                return Err(plan_error(format!(
                    "a cached model changed its ports: {port}"
                )));
            }
            // One row per sample, each of the table's shape (an ONNX graph may disagree).
            let mut expected = vec![missing.len()];
            expected.extend(shape.iter());
            if tensor.dims() != expected.as_slice() {
                return Err(plan_error(format!(
                    "output `{port}` has shape {:?} for {} samples, the cache expects {expected:?}",
                    tensor.dims(),
                    missing.len()
                )));
            }
            let width: usize = shape.iter().product();
            let values = tensor
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .ctx("caching")?;
            for (k, &row) in missing.iter().enumerate() {
                let sample = indices[row];
                data[sample * width..(sample + 1) * width]
                    .copy_from_slice(&values[k * width..(k + 1) * width]);
            }
        }
        for &row in missing {
            table.filled[indices[row]] = true;
        }
        Ok(())
    }
}

/// The file a table lives in under `cache: disk`: `outputs-<key>.safetensors`.
pub fn table_file(dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    dir.join(format!("outputs-{key}.safetensors"))
}

impl CacheTable {
    /// A table of `samples` rows with nothing filled, for ports `(name, one sample's
    /// shape)`.
    pub fn empty(samples: usize, ports: impl Iterator<Item = (String, Vec<usize>)>) -> Self {
        CacheTable {
            samples,
            ports: ports
                .map(|(name, shape)| {
                    let width: usize = shape.iter().product();
                    (name, shape, vec![0.0; samples * width])
                })
                .collect(),
            filled: vec![false; samples],
        }
    }

    /// Rows that hold outputs.
    pub fn filled_count(&self) -> usize {
        self.filled.iter().filter(|&&f| f).count()
    }

    /// A table written by [`CacheTable::save`], or `None` when the file is missing or is
    /// not one (a cache is rebuilt, never trusted blindly).
    pub fn load(path: &std::path::Path, samples: usize) -> Option<CacheTable> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
        let filled: Vec<bool> = tensors
            .get("filled")?
            .to_vec1::<u8>()
            .ok()?
            .into_iter()
            .map(|f| f != 0)
            .collect();
        if filled.len() != samples {
            return None;
        }
        let mut ports = Vec::new();
        let mut index = 0;
        while let Some(t) = tensors.get(&format!("port/{index}")) {
            let name = String::from_utf8(
                tensors
                    .get(&format!("name/{index}"))?
                    .to_vec1::<u8>()
                    .ok()?,
            )
            .ok()?;
            let dims = t.dims();
            if dims.first() != Some(&samples) {
                return None;
            }
            let values = t.flatten_all().ok()?.to_vec1::<f32>().ok()?;
            ports.push((name, dims[1..].to_vec(), values));
            index += 1;
        }
        (!ports.is_empty()).then_some(CacheTable {
            samples,
            ports,
            filled,
        })
    }

    /// Writes the table to `path` atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        let filled: Vec<u8> = self.filled.iter().map(|&f| u8::from(f)).collect();
        tensors.insert(
            "filled".to_string(),
            Tensor::from_vec(filled, self.samples, &Device::Cpu).ctx("saving a cache")?,
        );
        for (index, (name, shape, values)) in self.ports.iter().enumerate() {
            let mut dims = vec![self.samples];
            dims.extend(shape);
            tensors.insert(
                format!("port/{index}"),
                Tensor::from_vec(values.clone(), dims, &Device::Cpu).ctx("saving a cache")?,
            );
            let bytes = name.as_bytes().to_vec();
            let len = bytes.len();
            tensors.insert(
                format!("name/{index}"),
                Tensor::from_vec(bytes, len, &Device::Cpu).ctx("saving a cache")?,
            );
        }
        crate::output::files::write_safetensors(path, &tensors)
    }
}
