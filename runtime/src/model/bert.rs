//! BERT-family encoders from a Hugging Face checkpoint folder, run by candle-transformers:
//! the encoder (all of the checkpoint's layers, or the subset a DistilBERT-style student
//! keeps), pooling over real tokens, and a linear classification head.
//!
//! Only what a stage may train becomes a `Var`; frozen weights are plain tensors, so no
//! gradient is computed for them. When only the head trains, the encoder's pooled output is
//! a function of the token ids alone: it is cached per distinct sample (keyed by a hash of
//! the ids), in memory and, with `cache: disk`, in a safetensors file named by a hash of
//! the checkpoint and the layers kept, so a later run skips the encoder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use kd_plan::{BertSpec, Pooling, SeqPool, Trainable};
use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError, TensorContext};
use crate::ops::sequence;

type Handed = Vec<(String, Tensor, Option<Var>)>;

/// Draws a fresh parameter: its name, shape and uniform bound.
pub type Init<'a> = dyn FnMut(&str, &[usize], f64) -> Result<Var> + 'a;

/// The checkpoint's tensors, handed to candle-transformers under the names of the model
/// being built (layer `j` of a subset reads checkpoint layer `layers[j]`).
struct CheckpointBackend {
    tensors: HashMap<String, Tensor>,
    layers: Vec<usize>,
    trainable: Trainable,
    /// Every tensor handed out, in request order, with its `Var` when it is trained.
    handed: Arc<Mutex<Handed>>,
}

impl CheckpointBackend {
    fn source_name(&self, name: &str) -> String {
        let name = match name.strip_prefix("encoder.layer.") {
            Some(rest) => {
                let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
                match index.parse::<usize>().ok().and_then(|j| self.layers.get(j)) {
                    Some(source) => format!("encoder.layer.{source}.{tail}"),
                    None => name.to_string(),
                }
            }
            None => name.to_string(),
        };
        if self.tensors.contains_key(&name) {
            name
        } else {
            format!("bert.{name}")
        }
    }

    fn is_trained(&self, name: &str) -> bool {
        match self.trainable {
            Trainable::Head => false,
            Trainable::All => true,
            Trainable::Last(n) => name
                .strip_prefix("encoder.layer.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|j| j + n >= self.layers.len()),
        }
    }
}

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "`{name}` has shape {:?} in the checkpoint, the config implies {:?}",
                tensor.dims(),
                shape.dims()
            );
        }
        let (tensor, var) = if self.is_trained(name) {
            let var = Var::from_tensor(&tensor)?;
            (var.as_tensor().clone(), Some(var))
        } else {
            (tensor, None)
        };
        if let Ok(mut handed) = self.handed.lock() {
            handed.push((name.to_string(), tensor.clone(), var));
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let source = self.source_name(name);
        let tensor = self
            .tensors
            .get(&source)
            .ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint has no `{name}`")))?;
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.source_name(name))
    }
}

/// The encoder, written here: on kdc's fused kernels (dense layers, masked attention,
/// layer norm, GELU; `crate::ops::attention`) while it is frozen, and with candle's
/// differentiable ops when a stage trains some of it. candle-transformers' `BertModel`
/// ran the frozen encoder before; its layer norm and softmax have no backward pass in
/// candle-nn 0.11, and it was 0.8x PyTorch's speed on MiniLM (docs/performance.md).
enum Encoder {
    Frozen(Box<OwnEncoder>),
    Differentiable(Box<OwnEncoder>),
}

type Dense = (Tensor, Tensor);

/// One encoder layer's weights (Hugging Face names in the comments).
struct OwnLayer {
    query: Dense,     // attention.self.query
    key: Dense,       // attention.self.key
    value: Dense,     // attention.self.value
    attn_out: Dense,  // attention.output.dense
    attn_norm: Dense, // attention.output.LayerNorm
    inner: Dense,     // intermediate.dense
    out: Dense,       // output.dense
    out_norm: Dense,  // output.LayerNorm
}

struct OwnEncoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: Dense,
    layers: Vec<OwnLayer>,
    heads: usize,
    eps: f64,
    act: candle_transformers::models::bert::HiddenAct,
    /// What the layers compute in; weights held in another dtype are cast where used.
    dtype: DType,
}

impl OwnEncoder {
    fn load(vb: &VarBuilder, config: &Config, dtype: DType) -> candle_core::Result<OwnEncoder> {
        let h = config.hidden_size;
        let dense = |name: &str, out: usize, inp: usize| -> candle_core::Result<Dense> {
            Ok((
                vb.get((out, inp), &format!("{name}.weight"))?,
                vb.get(out, &format!("{name}.bias"))?,
            ))
        };
        let norm = |name: &str| -> candle_core::Result<Dense> {
            Ok((
                vb.get(h, &format!("{name}.weight"))?,
                vb.get(h, &format!("{name}.bias"))?,
            ))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            layers.push(OwnLayer {
                query: dense(&p("attention.self.query"), h, h)?,
                key: dense(&p("attention.self.key"), h, h)?,
                value: dense(&p("attention.self.value"), h, h)?,
                attn_out: dense(&p("attention.output.dense"), h, h)?,
                attn_norm: norm(&p("attention.output.LayerNorm"))?,
                inner: dense(&p("intermediate.dense"), config.intermediate_size, h)?,
                out: dense(&p("output.dense"), h, config.intermediate_size)?,
                out_norm: norm(&p("output.LayerNorm"))?,
            });
        }
        Ok(OwnEncoder {
            word: vb.get((config.vocab_size, h), "embeddings.word_embeddings.weight")?,
            position: vb.get(
                (config.max_position_embeddings, h),
                "embeddings.position_embeddings.weight",
            )?,
            token_type: vb.get(
                (config.type_vocab_size, h),
                "embeddings.token_type_embeddings.weight",
            )?,
            norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            act: config.hidden_act,
            dtype,
        })
    }

    /// The embeddings of `ids` `[B, L]`, before their layer norm.
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, len) = ids.dims2()?;
        let h = self.word.dim(1)?;
        let dtype = self.dtype;
        self.word
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(dtype)?
            .reshape((b, len, h))?
            .broadcast_add(&self.position.narrow(0, 0, len)?.to_dtype(dtype)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?.to_dtype(dtype)?)
    }

    /// [`OwnEncoder::forward`] for a frozen encoder, outside candle's graph on kdc's fused
    /// kernels: the same values within float rounding.
    fn forward_frozen(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        use crate::ops::dense::{dense, Epilogue};
        use candle_transformers::models::bert::HiddenAct;
        let none = crate::ops::grad_sink::GradSinks::default();
        let linear = |x: &Tensor, (w, bias): &Dense| {
            dense(
                crate::ops::dense::Dense::Linear,
                x,
                &w.detach(),
                Some(&bias.detach()),
                Epilogue::default(),
                &none,
            )
        };
        let norm = |x: &Tensor, (w, bias): &Dense| {
            crate::ops::attention::layer_norm(x, &w.detach(), &bias.detach(), self.eps)
                .map(|(y, _)| y)
        };
        let mut x = norm(&self.embed(ids)?.detach(), &self.norm)?;
        for layer in &self.layers {
            let qkv = Tensor::cat(
                &[
                    linear(&x, &layer.query)?,
                    linear(&x, &layer.key)?,
                    linear(&x, &layer.value)?,
                ],
                2,
            )?;
            let (context, _) = crate::ops::attention::attention(&qkv, Some(mask), self.heads)?;
            x = norm(
                &(linear(&context, &layer.attn_out)? + &x)?,
                &layer.attn_norm,
            )?;
            let inner = linear(&x, &layer.inner)?;
            let inner = match self.act {
                HiddenAct::Gelu => crate::ops::attention::gelu(&inner)?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            x = norm(&(linear(&inner, &layer.out)? + &x)?, &layer.out_norm)?;
        }
        Ok(x)
    }

    /// The last layer's states `[B, L, H]` for ids `[B, L]` and mask `[B, L]`.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        use candle_transformers::models::bert::HiddenAct;
        // Mixed precision: f32 weights cast to the compute dtype (a no-op in f32).
        let linear = |x: &Tensor, (w, bias): &Dense| {
            x.broadcast_matmul(&w.to_dtype(self.dtype)?.t()?)?
                .broadcast_add(&bias.to_dtype(self.dtype)?)
        };
        let norm = |x: &Tensor, (w, bias): &Dense| sequence::layer_norm(x, w, bias, self.eps);
        let mut x = norm(&self.embed(ids)?, &self.norm)?;
        for layer in &self.layers {
            let context = sequence::attention(
                &linear(&x, &layer.query)?,
                &linear(&x, &layer.key)?,
                &linear(&x, &layer.value)?,
                Some(mask),
                self.heads,
            )?;
            x = norm(
                &(linear(&context, &layer.attn_out)? + &x)?,
                &layer.attn_norm,
            )?;
            let inner = linear(&x, &layer.inner)?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.gelu_erf()?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            x = norm(&(linear(&inner, &layer.out)? + &x)?, &layer.out_norm)?;
        }
        Ok(x)
    }
}

/// The feed-forward activation of a BERT config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

/// What an ONNX export of a BERT model needs of its config.
#[derive(Debug, Clone, Copy)]
pub struct ExportConfig {
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
}

/// A loaded BERT classifier.
pub struct Bert {
    encoder: Encoder,
    pooling: Pooling,
    export: ExportConfig,
    pub head_weight: Var,
    pub head_bias: Var,
    /// Encoder parameters a stage trains, by export name.
    pub trained: Vec<(String, Var)>,
    /// Every encoder tensor, by export name (trained ones as their `Var`'s tensor).
    pub encoder_tensors: Vec<(String, Tensor)>,
    /// Pooled encoder output per sample, while the encoder is frozen.
    cache: HashMap<[u8; 32], Vec<f32>>,
    /// False under `cache: off`: the encoder runs on every sample every time.
    caching: bool,
    /// Entries not yet written to the disk cache.
    unsaved: usize,
    cache_file: Option<PathBuf>,
    /// Samples the encoder actually ran on.
    pub encoder_samples: u64,
    hidden: usize,
    /// Where the encoder and head live.
    device: Device,
    /// What the encoder computes in (`precision:`).
    dtype: DType,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("pooling", &self.pooling)
            .field("trained", &self.trained.len())
            .field("cached", &self.cache.len())
            .finish()
    }
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Bert {
    /// Under `cache: off` the encoder runs on every sample every time.
    pub fn set_caching(&mut self, caching: bool) {
        self.caching = caching;
    }

    /// Loads `spec.path` (resolved to `folder`); `init` draws the head's fresh weights;
    /// `cache_dir` turns on the disk cache of pooled outputs.
    pub fn load(
        spec: &BertSpec,
        folder: &Path,
        init: &mut Init,
        cache_dir: Option<&Path>,
        (device, dtype): (&Device, DType),
    ) -> Result<Bert> {
        let config_path = folder.join("config.json");
        let raw = std::fs::read(&config_path).map_err(|source| RuntimeError::Io {
            path: config_path.clone(),
            source,
        })?;
        let mut config: Config = serde_json::from_slice(&raw)
            .map_err(|e| checkpoint_error(&config_path, format!("not a BERT config ({e})")))?;
        config.num_hidden_layers = spec.layers.len();
        let weights = folder.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| checkpoint_error(&weights, format!("not readable safetensors ({e})")))?;
        let handed = Arc::new(Mutex::new(Handed::new()));
        let backend = CheckpointBackend {
            tensors,
            layers: spec.layers.clone(),
            trainable: spec.trainable,
            handed: handed.clone(),
        };
        let frozen = spec.trainable == Trainable::Head;
        // A frozen encoder keeps its weights in the compute dtype; a trained one keeps f32
        // master weights and casts them in each forward.
        let stored = if frozen { dtype } else { DType::F32 };
        let vb = VarBuilder::from_backend(Box::new(backend), stored, device.clone());
        let own = OwnEncoder::load(&vb, &config, dtype)
            .map_err(|e| checkpoint_error(&weights, format!("does not fit its config ({e})")))?;
        let encoder = match frozen {
            true => Encoder::Frozen(Box::new(own)),
            false => Encoder::Differentiable(Box::new(own)),
        };
        let handed = std::mem::take(
            &mut *handed
                .lock()
                .map_err(|_| checkpoint_error(&weights, "loading it failed half-way"))?,
        );
        let mut trained = Vec::new();
        let mut encoder_tensors = Vec::new();
        for (name, tensor, var) in handed {
            if let Some(var) = var {
                trained.push((name.clone(), var));
            }
            encoder_tensors.push((name, tensor));
        }
        let bound = 1.0 / (spec.hidden as f64).sqrt();
        let head_weight = init("head.weight", &[spec.classes, spec.hidden], bound)?;
        let head_bias = init("head.bias", &[spec.classes], bound)?;
        use candle_transformers::models::bert::HiddenAct;
        let export = ExportConfig {
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            act: match config.hidden_act {
                HiddenAct::Gelu => Activation::GeluErf,
                HiddenAct::GeluApproximate => Activation::GeluTanh,
                HiddenAct::Relu => Activation::Relu,
            },
        };
        let mut bert = Bert {
            encoder,
            pooling: spec.pooling,
            export,
            head_weight,
            head_bias,
            trained,
            encoder_tensors,
            cache: HashMap::new(),
            caching: true,
            unsaved: 0,
            cache_file: None,
            encoder_samples: 0,
            hidden: spec.hidden,
            device: device.clone(),
            dtype,
        };
        if spec.trainable == Trainable::Head {
            if let Some(dir) = cache_dir {
                let file = dir.join(format!(
                    "bert-{}.safetensors",
                    cache_key(spec, folder, dtype)?
                ));
                bert.load_cache(&file)?;
                bert.cache_file = Some(file);
            }
        }
        Ok(bert)
    }
}

/// Names the disk cache after everything the pooled outputs depend on besides the token
/// ids: kdc's version (its forward code), the checkpoint's weights and config, the layers
/// kept and the pooling.
fn cache_key(spec: &BertSpec, folder: &Path, dtype: DType) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    crate::output::files::hash_file(&mut hasher, &folder.join("model.safetensors"))?;
    crate::output::files::hash_file(&mut hasher, &folder.join("config.json"))?;
    hasher.update(format!("{:?}/{:?}/{dtype:?}", spec.layers, spec.pooling).as_bytes());
    Ok(crate::output::files::hex(&hasher.finalize()[..16]))
}

/// The cache key of one sample: its real token ids (trailing padding dropped, so another
/// `max_len` that keeps the whole text finds it) and the padding id the mask comes from.
fn ids_key(ids: &[u32], pad_id: u32) -> [u8; 32] {
    let real = ids
        .iter()
        .rposition(|&id| id != pad_id)
        .map_or(0, |p| p + 1);
    let mut hasher = Sha256::new();
    hasher.update(pad_id.to_le_bytes());
    for id in &ids[..real] {
        hasher.update(id.to_le_bytes());
    }
    hasher.finalize().into()
}

impl Bert {
    /// Runs the classifier on token ids `[B, L]` (as f32, padded with `pad_id`): the pooled
    /// encoder output and the logits. `cacheable` is false for augmented batches, whose
    /// rows are seen once.
    pub fn forward(
        &mut self,
        ids: &Tensor,
        pad_id: u32,
        cacheable: bool,
    ) -> Result<(Tensor, Tensor)> {
        let rows: Vec<Vec<u32>> = ids
            .to_dtype(DType::U32)
            .and_then(|t| t.to_vec2::<u32>())
            .ctx("reading token ids")?;
        let use_cache = self.caching && self.trained.is_empty() && cacheable;
        let keys: Vec<[u8; 32]> = if use_cache {
            rows.iter().map(|r| ids_key(r, pad_id)).collect()
        } else {
            Vec::new()
        };
        let missing: Vec<usize> = if use_cache {
            (0..rows.len())
                .filter(|&i| !self.cache.contains_key(&keys[i]))
                .collect()
        } else {
            (0..rows.len()).collect()
        };
        let pooled = if use_cache {
            if !missing.is_empty() {
                let subset: Vec<Vec<u32>> = missing.iter().map(|&i| rows[i].clone()).collect();
                let computed = self.encode(&subset, pad_id)?;
                let values = computed.to_vec2::<f32>().ctx("reading pooled outputs")?;
                for (&i, v) in missing.iter().zip(values) {
                    self.cache.insert(keys[i], v);
                    self.unsaved += 1;
                }
            }
            let mut flat = Vec::with_capacity(rows.len() * self.hidden);
            for key in &keys {
                let row = self
                    .cache
                    .get(key)
                    .ok_or_else(|| RuntimeError::Plan("a cached encoder output vanished".into()))?;
                flat.extend_from_slice(row);
            }
            Tensor::from_vec(flat, (rows.len(), self.hidden), &self.device).ctx("pooled outputs")?
        } else {
            let pooled = self.encode(&rows, pad_id)?;
            if self.trained.is_empty() {
                pooled.detach()
            } else {
                pooled
            }
        };
        let logits = pooled
            .matmul(&self.head_weight.as_tensor().t().ctx("head")?)
            .and_then(|y| y.broadcast_add(self.head_bias.as_tensor()))
            .ctx("the classification head")?;
        Ok((pooled, logits))
    }

    /// The encoder on `rows`, cut to the longest real length among them (padding beyond
    /// it is masked anyway), pooled.
    fn encode(&mut self, rows: &[Vec<u32>], pad_id: u32) -> Result<Tensor> {
        let real = |r: &Vec<u32>| r.iter().rposition(|&id| id != pad_id).map_or(1, |p| p + 1);
        let len = rows.iter().map(real).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for r in rows {
            for &id in &r[..len.min(r.len())] {
                ids.push(id);
                mask.push(if id == pad_id { 0f32 } else { 1.0 });
            }
        }
        let b = rows.len();
        let ids = Tensor::from_vec(ids, (b, len), &self.device).ctx("token ids")?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)
            .and_then(|m| m.to_dtype(self.dtype))
            .ctx("attention mask")?;
        let hidden = match &self.encoder {
            // kdc's kernels for a frozen encoder; candle's ops elsewhere (a GPU).
            Encoder::Frozen(model) if crate::ops::kernels_apply(&mask) => {
                model.forward_frozen(&ids, &mask)
            }
            Encoder::Frozen(model) => model.forward(&ids, &mask).map(|h| h.detach()),
            Encoder::Differentiable(model) => model.forward(&ids, &mask),
        }
        .ctx("the BERT encoder")?;
        self.encoder_samples += b as u64;
        let kind = match self.pooling {
            Pooling::Mean => SeqPool::Mean,
            Pooling::Cls => SeqPool::First,
        };
        sequence::pool(&hidden, Some(&mask), kind)
            .and_then(|p| p.to_dtype(DType::F32))
            .ctx("pooling")
    }

    pub fn export_config(&self) -> ExportConfig {
        self.export
    }

    /// Every tensor of the model by export name: the encoder's, then the head.
    /// Every tensor under its export name, in f32 (a frozen bf16 encoder's weights are
    /// the bf16 values it ran with, exactly).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .encoder_tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.to_dtype(DType::F32).unwrap_or(t.clone())))
            .collect();
        out.push(("head.weight".into(), self.head_weight.as_tensor().clone()));
        out.push(("head.bias".into(), self.head_bias.as_tensor().clone()));
        out
    }

    fn load_cache(&mut self, file: &Path) -> Result<()> {
        if !file.is_file() {
            return Ok(());
        }
        // A damaged cache file is not the user's data: it is rebuilt, not reported.
        let Ok(tensors) = candle_core::safetensors::load(file, &Device::Cpu) else {
            return Ok(());
        };
        let (Some(keys), Some(pooled)) = (tensors.get("keys"), tensors.get("pooled")) else {
            return Ok(());
        };
        let (Ok(keys), Ok(pooled)) = (keys.to_vec2::<u8>(), pooled.to_vec2::<f32>()) else {
            return Ok(());
        };
        for (key, row) in keys.into_iter().zip(pooled) {
            if let (Ok(key), true) = (<[u8; 32]>::try_from(key), row.len() == self.hidden) {
                self.cache.insert(key, row);
            }
        }
        Ok(())
    }

    /// Writes the disk cache when it has new entries.
    pub fn save_cache(&mut self) -> Result<()> {
        let Some(file) = self.cache_file.clone() else {
            return Ok(());
        };
        if self.unsaved == 0 || self.cache.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<(&[u8; 32], &Vec<f32>)> = self.cache.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let n = entries.len();
        let keys: Vec<u8> = entries
            .iter()
            .flat_map(|(k, _)| k.iter().copied())
            .collect();
        let pooled: Vec<f32> = entries
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let tensors = HashMap::from([
            (
                "keys".to_string(),
                Tensor::from_vec(keys, (n, 32), &Device::Cpu).ctx("cache keys")?,
            ),
            (
                "pooled".to_string(),
                Tensor::from_vec(pooled, (n, self.hidden), &Device::Cpu).ctx("cache values")?,
            ),
        ]);
        crate::output::files::write_safetensors(&file, &tensors)?;
        self.unsaved = 0;
        Ok(())
    }

    pub fn cached_samples(&self) -> usize {
        self.cache.len()
    }
}
