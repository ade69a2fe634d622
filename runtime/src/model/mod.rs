//! Models built from a `ModelSpec`: layers, parameters under stable names, forward with taps,
//! and loading and saving weights as safetensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use kd_plan::{Layer, LayerSpec, ModelSpec, Precision, SeqPool};

use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::ops::dense::{dense, Dense, Epilogue};
use crate::ops::grad_sink::GradSinks;
use crate::ops::sequence;
use crate::rng::Rng;
use crate::train::losses;

mod aware;
pub mod bert;
mod int8;
pub use int8::Int8Weight;
mod pruning;
pub(crate) mod tape;
mod taped;

/// Batch norm state: affine parameters and running statistics (buffers, not trained).
#[derive(Debug)]
struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

#[derive(Debug)]
enum LayerImpl {
    Linear {
        weight: Var,
        bias: Option<Var>,
    },
    Conv2d {
        weight: Var,
        bias: Option<Var>,
        stride: usize,
        padding: usize,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    BatchNorm(BatchNorm),
    Dropout {
        p: f64,
        name: String,
    },
    Flatten,
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Softmax,
    Residual {
        body: Vec<LayerImpl>,
        shortcut: Option<Box<LayerImpl>>,
    },
    Embedding {
        weight: Var,
        positions: Option<Var>,
    },
    Conv1d {
        weight: Var,
        bias: Option<Var>,
        padding: usize,
        kernel: usize,
    },
    Lstm {
        /// `(weight_ih, weight_hh, bias)` forward, then backward when bidirectional.
        directions: Vec<(Var, Var, Var)>,
    },
    Transformer(Box<TransformerBlock>),
    LayerNorm {
        weight: Var,
        bias: Var,
        eps: f64,
    },
    Pool {
        kind: SeqPool,
    },
    /// A linear or conv2d layer in int8 (`quantize(...)`).
    Int8(Box<int8::Int8Layer>),
}

/// A pre-norm encoder block's parameters.
#[derive(Debug)]
struct TransformerBlock {
    norm1: (Var, Var),
    qkv: (Var, Var),
    attn_out: (Var, Var),
    norm2: (Var, Var),
    ff1: (Var, Var),
    ff2: (Var, Var),
    heads: usize,
    dropout: f64,
    name: String,
}

/// A model instance: its layers and every tensor it owns under its export name.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    layers: Vec<LayerImpl>,
    /// Tap name and the index of the layer whose output it is.
    taps: Vec<(String, usize)>,
    /// Trainable parameters in declaration order.
    params: Vec<(String, Var)>,
    /// Where the ops that compute a parameter's whole gradient put it.
    grad_sinks: GradSinks,
    /// Batch-norm running statistics.
    buffers: Vec<(String, Var)>,
    /// Ends in a softmax layer, so its output is already probabilities.
    outputs_probabilities: bool,
    seed: u64,
    /// Forward passes so far in training mode; keys each pass's dropout masks.
    dropout_calls: u64,
    /// See [`Model::set_first_row`].
    first_row: usize,
    /// Set when the model runs from an ONNX file instead of `layers`.
    onnx: Option<OnnxGraph>,
    /// Set for a BERT-family model.
    bert: Option<Box<crate::model::bert::Bert>>,
    /// The input is token ids padded with this id (the mask is `id != pad_id`).
    pad_id: Option<u32>,
    /// Training steps run kdc's own reverse pass (`crate::model::tape`) rather than candle's
    /// graph through every layer.
    own_reverse_pass: bool,
    /// Where taped steps report their layers' times, when timed.
    layer_times: Option<crate::model::tape::LayerTimes>,
    /// What the layers compute in (`precision:`): parameters stay f32 and are cast on use,
    /// the input is cast on entry and every port back to f32 on exit.
    dtype: DType,
    /// The input is token ids (`input tokens[...]`), never cast.
    tokens: bool,
    /// A pruned model's masks (1 keeps a value, 0 prunes it), by parameter name, in
    /// parameter order; updates keep the pruned values at zero.
    masks: Vec<(String, Tensor)>,
    /// While an int8 model calibrates: each linear and conv2d layer's largest input.
    observer: Option<int8::Observer>,
    /// Set while the model trains quantisation-aware: its layers' input ranges.
    aware: Option<aware::Ranges>,
}

/// The dtype a model of `precision` computes in.
pub fn compute_dtype(precision: Precision) -> DType {
    match precision {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
    }
}

/// A frozen model evaluated by candle-onnx.
#[derive(Debug)]
struct OnnxGraph {
    /// The file's model, with every tapped value added to the graph's outputs.
    proto: candle_onnx::onnx::ModelProto,
    input: String,
    /// `(port, ONNX value)`: the taps, `output` and the output's alias.
    ports: Vec<(String, String)>,
    /// Numbers in the file's weights.
    params: usize,
    /// The file, for messages.
    path: std::path::PathBuf,
}

fn copy_all<'a>(vars: impl Iterator<Item = (&'a str, &'a Var)>) -> Result<Vec<Tensor>> {
    vars.map(|(name, var)| {
        var.as_tensor()
            .copy()
            .ctx_with(|| format!("copying `{name}`"))
    })
    .collect()
}

fn set_all<'a>(vars: impl Iterator<Item = (&'a str, &'a Var)>, saved: &[Tensor]) -> Result<()> {
    for ((name, var), value) in vars.zip(saved) {
        value
            .to_device(var.device())
            .and_then(|value| var.set(&value))
            .ctx_with(|| format!("restoring `{name}`"))?;
    }
    Ok(())
}

/// The text a panic carried.
fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Builds layers, drawing each fresh parameter from its own stream.
struct Builder<'a> {
    seed: u64,
    init_key: &'a str,
    /// Where the parameters live (drawn on the host, then moved there).
    device: &'a Device,
    params: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
}

impl Builder<'_> {
    fn uniform(&mut self, name: String, shape: &[usize], bound: f64) -> Result<Var> {
        let count: usize = shape.iter().product();
        let mut rng = Rng::new(self.seed, &format!("init/{}/{name}", self.init_key));
        let values: Vec<f32> = (0..count)
            .map(|_| rng.uniform_in(-bound, bound) as f32)
            .collect();
        let var = Var::from_vec(values, shape, self.device)
            .ctx_with(|| format!("initialising `{name}`"))?;
        self.params.push((name, var.clone()));
        Ok(var)
    }

    fn constant(
        &mut self,
        name: String,
        shape: &[usize],
        value: f32,
        trainable: bool,
    ) -> Result<Var> {
        let count: usize = shape.iter().product();
        let var = Var::from_vec(vec![value; count], shape, self.device)
            .ctx_with(|| format!("initialising `{name}`"))?;
        if trainable {
            self.params.push((name, var.clone()));
        } else {
            self.buffers.push((name, var.clone()));
        }
        Ok(var)
    }

    fn layer(&mut self, spec: &LayerSpec, prefix: &str) -> Result<LayerImpl> {
        let name = format!("{prefix}{}", spec.name);
        Ok(match &spec.layer {
            Layer::Linear { out, bias } => {
                let fan_in = *spec
                    .input
                    .last()
                    .ok_or_else(|| plan_error(format!("layer `{name}` has no input shape")))?;
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                let weight = self.uniform(format!("{name}.weight"), &[*out, fan_in], bound)?;
                let bias = if *bias {
                    Some(self.uniform(format!("{name}.bias"), &[*out], bound)?)
                } else {
                    None
                };
                LayerImpl::Linear { weight, bias }
            }
            Layer::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            } => {
                let in_channels = *spec
                    .input
                    .first()
                    .ok_or_else(|| plan_error(format!("layer `{name}` has no input shape")))?;
                let fan_in = in_channels * kernel * kernel;
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                let weight = self.uniform(
                    format!("{name}.weight"),
                    &[*out, in_channels, *kernel, *kernel],
                    bound,
                )?;
                let bias = if *bias {
                    Some(self.uniform(format!("{name}.bias"), &[*out], bound)?)
                } else {
                    None
                };
                LayerImpl::Conv2d {
                    weight,
                    bias,
                    stride: (*stride).max(1),
                    padding: *padding,
                }
            }
            Layer::MaxPool { kernel, stride } => LayerImpl::MaxPool {
                kernel: (*kernel).max(1),
                stride: (*stride).max(1),
            },
            Layer::AvgPool { kernel, stride } => LayerImpl::AvgPool {
                kernel: (*kernel).max(1),
                stride: (*stride).max(1),
            },
            Layer::BatchNorm { eps, momentum } => {
                let channels = *spec
                    .input
                    .first()
                    .ok_or_else(|| plan_error(format!("layer `{name}` has no input shape")))?;
                LayerImpl::BatchNorm(BatchNorm {
                    weight: self.constant(format!("{name}.weight"), &[channels], 1.0, true)?,
                    bias: self.constant(format!("{name}.bias"), &[channels], 0.0, true)?,
                    running_mean: self.constant(
                        format!("{name}.running_mean"),
                        &[channels],
                        0.0,
                        false,
                    )?,
                    running_var: self.constant(
                        format!("{name}.running_var"),
                        &[channels],
                        1.0,
                        false,
                    )?,
                    eps: *eps,
                    momentum: *momentum,
                })
            }
            Layer::Dropout { p } => LayerImpl::Dropout { p: *p, name },
            Layer::Flatten => LayerImpl::Flatten,
            Layer::Relu => LayerImpl::Relu,
            Layer::Gelu => LayerImpl::Gelu,
            Layer::Tanh => LayerImpl::Tanh,
            Layer::Sigmoid => LayerImpl::Sigmoid,
            Layer::Softmax => LayerImpl::Softmax,
            Layer::Embedding {
                vocab,
                dim,
                positions,
            } => {
                let bound = (3.0 / *dim as f64).sqrt();
                let weight = self.uniform(format!("{name}.weight"), &[*vocab, *dim], bound)?;
                let positions = if *positions {
                    let len = spec.input.first().copied().unwrap_or(1);
                    Some(self.uniform(format!("{name}.positions"), &[len, *dim], bound)?)
                } else {
                    None
                };
                LayerImpl::Embedding { weight, positions }
            }
            Layer::Conv1d {
                out,
                kernel,
                padding,
                bias,
            } => {
                let channels = spec.input.last().copied().unwrap_or(1);
                let bound = 1.0 / ((channels * kernel).max(1) as f64).sqrt();
                let weight =
                    self.uniform(format!("{name}.weight"), &[*out, channels, *kernel], bound)?;
                let bias = if *bias {
                    Some(self.uniform(format!("{name}.bias"), &[*out], bound)?)
                } else {
                    None
                };
                LayerImpl::Conv1d {
                    weight,
                    bias,
                    padding: *padding,
                    kernel: *kernel,
                }
            }
            Layer::Lstm {
                hidden,
                bidirectional,
            } => {
                let channels = spec.input.last().copied().unwrap_or(1);
                let bound = 1.0 / (*hidden as f64).sqrt();
                let suffixes: &[&str] = if *bidirectional {
                    &["", "_reverse"]
                } else {
                    &[""]
                };
                let mut directions = Vec::new();
                for d in suffixes {
                    directions.push((
                        self.uniform(
                            format!("{name}.weight_ih{d}"),
                            &[4 * hidden, channels],
                            bound,
                        )?,
                        self.uniform(
                            format!("{name}.weight_hh{d}"),
                            &[4 * hidden, *hidden],
                            bound,
                        )?,
                        self.uniform(format!("{name}.bias{d}"), &[4 * hidden], bound)?,
                    ));
                }
                LayerImpl::Lstm { directions }
            }
            Layer::Transformer { heads, ff, dropout } => {
                let d = spec.input.last().copied().unwrap_or(1);
                let linear = |b: &mut Self, part: &str, out: usize, fan_in: usize| {
                    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                    Ok::<_, RuntimeError>((
                        b.uniform(format!("{name}.{part}.weight"), &[out, fan_in], bound)?,
                        b.uniform(format!("{name}.{part}.bias"), &[out], bound)?,
                    ))
                };
                let norm = |b: &mut Self, part: &str| {
                    Ok::<_, RuntimeError>((
                        b.constant(format!("{name}.{part}.weight"), &[d], 1.0, true)?,
                        b.constant(format!("{name}.{part}.bias"), &[d], 0.0, true)?,
                    ))
                };
                let norm1 = norm(self, "norm1")?;
                let qkv = linear(self, "qkv", 3 * d, d)?;
                let attn_out = linear(self, "attn_out", d, d)?;
                let norm2 = norm(self, "norm2")?;
                let ff1 = linear(self, "ff1", *ff, d)?;
                let ff2 = linear(self, "ff2", d, *ff)?;
                LayerImpl::Transformer(Box::new(TransformerBlock {
                    norm1,
                    qkv,
                    attn_out,
                    norm2,
                    ff1,
                    ff2,
                    heads: *heads,
                    dropout: *dropout,
                    name: name.clone(),
                }))
            }
            Layer::LayerNorm { eps } => {
                let d = spec.input.last().copied().unwrap_or(1);
                LayerImpl::LayerNorm {
                    weight: self.constant(format!("{name}.weight"), &[d], 1.0, true)?,
                    bias: self.constant(format!("{name}.bias"), &[d], 0.0, true)?,
                    eps: *eps,
                }
            }
            Layer::Pool { kind } => LayerImpl::Pool { kind: *kind },
            Layer::Residual { body, shortcut } => {
                let inner_prefix = format!("{name}.");
                let body = body
                    .iter()
                    .map(|inner| self.layer(inner, &inner_prefix))
                    .collect::<Result<Vec<_>>>()?;
                let shortcut = match shortcut {
                    Some(short) => {
                        // The shortcut's parameters are always `{residual}.shortcut.*`.
                        let mut renamed = (**short).clone();
                        renamed.name = "shortcut".into();
                        Some(Box::new(self.layer(&renamed, &inner_prefix)?))
                    }
                    None => None,
                };
                LayerImpl::Residual { body, shortcut }
            }
        })
    }
}

impl Model {
    /// A fresh model on the CPU: every parameter drawn from `init/{init_key}/{name}` under
    /// `seed`.
    pub fn new(spec: &ModelSpec, seed: u64) -> Result<Model> {
        Model::new_on(spec, seed, &Device::Cpu)
    }

    /// [`Model::new`] with the parameters on `device` (the same values on every device).
    pub fn new_on(spec: &ModelSpec, seed: u64, device: &Device) -> Result<Model> {
        let mut builder = Builder {
            seed,
            init_key: &spec.init_key,
            device,
            params: Vec::new(),
            buffers: Vec::new(),
        };
        let layers = spec
            .layers
            .iter()
            .map(|layer| builder.layer(layer, ""))
            .collect::<Result<Vec<_>>>()?;
        for tap in &spec.taps {
            if tap.layer >= layers.len() {
                return Err(plan_error(format!(
                    "tap `{}` of model `{}` points at layer {} of {}",
                    tap.name,
                    spec.name,
                    tap.layer,
                    layers.len()
                )));
            }
        }
        Ok(Model {
            name: spec.name.clone(),
            outputs_probabilities: matches!(layers.last(), Some(LayerImpl::Softmax)),
            layers,
            taps: spec
                .taps
                .iter()
                .map(|t| (t.name.clone(), t.layer))
                .collect(),
            grad_sinks: GradSinks::new(&builder.params),
            params: builder.params,
            buffers: builder.buffers,
            seed,
            dropout_calls: 0,
            first_row: 0,
            onnx: None,
            bert: None,
            pad_id: None,
            own_reverse_pass: true,
            layer_times: None,
            dtype: compute_dtype(spec.precision),
            tokens: spec.tokens,
            masks: Vec::new(),
            observer: None,
            aware: None,
        })
    }

    /// A BERT-family model from the checkpoint folder `folder` (the spec's `bert` part);
    /// its head is drawn from `(seed, init_key)`. With `cache_dir`, a frozen encoder's
    /// outputs are also kept on disk there.
    pub fn from_bert(
        spec: &ModelSpec,
        folder: &Path,
        seed: u64,
        cache_dir: Option<&Path>,
    ) -> Result<Model> {
        Model::from_bert_on(spec, folder, seed, cache_dir, &Device::Cpu)
    }

    /// [`Model::from_bert`] with the encoder and head on `device`.
    pub fn from_bert_on(
        spec: &ModelSpec,
        folder: &Path,
        seed: u64,
        cache_dir: Option<&Path>,
        device: &Device,
    ) -> Result<Model> {
        let bert_spec = spec
            .bert
            .as_ref()
            .ok_or_else(|| plan_error(format!("model `{}` is not a BERT model", spec.name)))?;
        let mut builder = Builder {
            seed,
            init_key: &spec.init_key,
            device,
            params: Vec::new(),
            buffers: Vec::new(),
        };
        let bert = crate::model::bert::Bert::load(
            bert_spec,
            folder,
            &mut |name, shape, bound| builder.uniform(name.to_string(), shape, bound),
            cache_dir,
            (device, compute_dtype(spec.precision)),
        )?;
        // Trained encoder parameters first, then the head (which the builder holds).
        let mut params = bert.trained.clone();
        params.append(&mut builder.params);
        Ok(Model {
            name: spec.name.clone(),
            layers: Vec::new(),
            taps: Vec::new(),
            grad_sinks: GradSinks::new(&params),
            params,
            buffers: Vec::new(),
            outputs_probabilities: false,
            seed,
            dropout_calls: 0,
            first_row: 0,
            onnx: None,
            bert: Some(Box::new(bert)),
            pad_id: None,
            own_reverse_pass: true,
            layer_times: None,
            dtype: compute_dtype(spec.precision),
            tokens: spec.tokens,
            masks: Vec::new(),
            observer: None,
            aware: None,
        })
    }

    /// Where the model's parameters live (the CPU for a model without any).
    pub fn device(&self) -> Device {
        self.params
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// Whether training steps run kdc's own reverse pass (the default) or candle's graph
    /// through every layer (the reference the tests compare it with).
    pub fn set_own_reverse_pass(&mut self, own: bool) {
        self.own_reverse_pass = own;
    }

    /// Token models: the id their data pads with.
    /// Times every layer of the steps that run kdc's own reverse pass, forward and
    /// backward, until [`Model::take_layer_times`] collects them (`kdc bench layers`).
    pub fn time_layers(&mut self) {
        self.layer_times.get_or_insert_with(Default::default);
    }

    /// The layer times recorded since the last call, a backward's entries in layer order,
    /// backwards one after the other.
    pub fn take_layer_times(&self) -> Vec<crate::model::tape::LayerTime> {
        self.layer_times
            .as_ref()
            .and_then(|times| times.lock().ok().map(|mut t| std::mem::take(&mut *t)))
            .unwrap_or_default()
    }

    pub fn set_pad_id(&mut self, pad_id: u32) {
        self.pad_id = Some(pad_id);
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Under `cache: off` a frozen BERT encoder keeps no outputs and runs every time.
    pub fn set_output_caching(&mut self, caching: bool) {
        if let Some(bert) = self.bert.as_mut() {
            bert.set_caching(caching);
        }
    }

    /// Writes a frozen BERT encoder's new outputs to the disk cache (when it has one).
    pub fn save_caches(&mut self) -> Result<()> {
        match self.bert.as_mut() {
            Some(bert) => bert.save_cache(),
            None => Ok(()),
        }
    }

    /// Every tensor an export writes, by name: the model's state, or for a BERT model its
    /// whole encoder (frozen parts included) and head.
    pub fn export_tensors(&self) -> Vec<(String, Tensor)> {
        match &self.bert {
            Some(bert) => bert
                .tensors()
                .into_iter()
                .map(|(name, t)| (name, t.detach()))
                .collect(),
            None => self
                .state()
                .map(|(name, var)| (name.to_string(), var.as_tensor().detach()))
                .collect(),
        }
    }

    /// What an ONNX export of a BERT model needs of its config.
    pub fn bert_export_config(&self) -> Option<crate::model::bert::ExportConfig> {
        self.bert.as_ref().map(|b| b.export_config())
    }

    pub fn is_bert(&self) -> bool {
        self.bert.is_some()
    }

    /// Samples a BERT encoder actually ran on (cache misses), for the summary.
    pub fn encoder_samples(&self) -> u64 {
        self.bert.as_ref().map_or(0, |b| b.encoder_samples)
    }

    /// A frozen model read from the ONNX file at `path` (the spec's `onnx` part says which
    /// values are its input, output and taps).
    pub fn from_onnx(spec: &ModelSpec, path: &Path) -> Result<Model> {
        let onnx = spec
            .onnx
            .as_ref()
            .ok_or_else(|| plan_error(format!("model `{}` is not an ONNX model", spec.name)))?;
        let file_error = |reason: String| RuntimeError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut proto = <candle_onnx::onnx::ModelProto as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| file_error(format!("not a readable ONNX model ({e})")))?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| file_error("it holds no graph".into()))?;
        let ports: Vec<(String, String)> = spec
            .taps
            .iter()
            .map(|tap| {
                let value = onnx
                    .taps
                    .iter()
                    .find(|(name, _)| *name == tap.name)
                    .map_or(onnx.output.clone(), |(_, value)| value.clone());
                (tap.name.clone(), value)
            })
            .collect();
        // candle-onnx hands back the graph's outputs only: make every value read one.
        for (_, value) in &ports {
            if !graph.output.iter().any(|o| o.name == *value) {
                graph.output.push(candle_onnx::onnx::ValueInfoProto {
                    name: value.clone(),
                    ..Default::default()
                });
            }
        }
        Ok(Model {
            name: spec.name.clone(),
            layers: Vec::new(),
            taps: Vec::new(),
            params: Vec::new(),
            grad_sinks: GradSinks::default(),
            buffers: Vec::new(),
            outputs_probabilities: spec
                .taps
                .iter()
                .any(|t| t.name == "output" && t.ty.kind == kd_plan::Kind::Probabilities),
            seed: 0,
            dropout_calls: 0,
            first_row: 0,
            onnx: Some(OnnxGraph {
                proto,
                input: onnx.input.clone(),
                ports,
                params: spec.params,
                path: path.to_path_buf(),
            }),
            bert: None,
            pad_id: None,
            own_reverse_pass: true,
            layer_times: None,
            dtype: DType::F32,
            tokens: spec.tokens,
            masks: Vec::new(),
            observer: None,
            aware: None,
        })
    }

    /// candle's backward of `loss` with the parameter gradients this model's ops put in
    /// their sinks (`crate::ops::grad_sink`): what a training step must call instead of
    /// `loss.backward()`.
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        let grads = loss.backward().and_then(|mut grads| {
            self.grad_sinks.drain_into(&mut grads)?;
            Ok(grads)
        });
        if grads.is_err() {
            self.grad_sinks.clear();
        }
        grads
    }

    /// Trainable parameters, in declaration order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        let frozen_bert = self.bert.as_ref().map_or(0, |b| {
            b.encoder_tensors
                .iter()
                .map(|(_, t)| t.elem_count())
                .sum::<usize>()
                - b.trained.iter().map(|(_, v)| v.elem_count()).sum::<usize>()
        });
        let frozen = self.onnx.as_ref().map_or(0, |o| o.params) + frozen_bert;
        frozen
            + self
                .params
                .iter()
                .map(|(_, v)| v.elem_count())
                .sum::<usize>()
    }

    /// Whether the last layer is a softmax (the output is probabilities, not scores).
    pub fn outputs_probabilities(&self) -> bool {
        self.outputs_probabilities
    }

    /// Every tensor the model owns (parameters, then running statistics) by export name.
    pub fn state(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params
            .iter()
            .chain(&self.buffers)
            .map(|(name, var)| (name.as_str(), var))
    }

    /// Deep copies of every tensor the model owns, to restore later.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        copy_all(self.state())
    }

    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        set_all(self.state(), snapshot)
    }

    /// Deep copies of the running statistics alone (cheap: one value per channel).
    pub fn buffer_snapshot(&self) -> Result<Vec<Tensor>> {
        copy_all(self.buffers.iter().map(|(n, v)| (n.as_str(), v)))
    }

    pub fn restore_buffers(&self, snapshot: &[Tensor]) -> Result<()> {
        set_all(self.buffers.iter().map(|(n, v)| (n.as_str(), v)), snapshot)
    }

    /// Replaces every tensor with the one of the same name in a safetensors file.
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        let weights_error = |reason: String| RuntimeError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Err(weights_error("the file does not exist".into()));
        }
        if path.is_dir() {
            return Err(weights_error(
                "it is a folder, not a safetensors file".into(),
            ));
        }
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // The safetensors crate validates the header before any tensor is made: its length
        // (at most 100 MB), the JSON, the dtypes, and that every tensor's byte range lies
        // inside the file and matches its shape.
        let file = candle_core::safetensors::SliceSafetensors::new(&bytes)
            .map_err(|e| weights_error(format!("not a readable safetensors file ({e})")))?;
        for (name, var) in self.state() {
            let view = file
                .get(name)
                .map_err(|_| weights_error(format!("no parameter `{name}` in the file")))?;
            if view.shape() != var.dims() {
                return Err(weights_error(format!(
                    "`{name}` has shape {:?} in the file, the model expects {:?}",
                    view.shape(),
                    var.dims()
                )));
            }
            use candle_core::safetensors::Load;
            let tensor = view
                .load(&Device::Cpu)
                .map_err(|e| weights_error(format!("cannot read `{name}` ({e})")))?;
            // Only plain numeric types: candle keeps packed float formats (F4, F6, F8) as
            // placeholders that do not convert to f32.
            if !matches!(
                tensor.dtype(),
                DType::U8
                    | DType::U32
                    | DType::I16
                    | DType::I32
                    | DType::I64
                    | DType::BF16
                    | DType::F16
                    | DType::F32
                    | DType::F64
            ) {
                return Err(weights_error(format!(
                    "`{name}` has dtype {:?}, which kdc cannot load as f32",
                    view.dtype()
                )));
            }
            let value = tensor
                .to_dtype(DType::F32)
                .map_err(|e| weights_error(format!("cannot convert `{name}` to f32 ({e})")))?;
            var.set(&value)
                .map_err(|e| weights_error(format!("cannot load `{name}` ({e})")))?;
        }
        Ok(())
    }

    /// Writes every tensor as safetensors to `path` atomically (see
    /// [`crate::output::files::write_atomically`]); returns the file's size.
    pub fn save_weights(&self, path: &Path) -> Result<u64> {
        let bytes = match self.is_int8() {
            true => self.int8_safetensors()?,
            false => safetensors::serialize(self.export_tensors(), None).map_err(|e| {
                RuntimeError::Write {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?,
        };
        crate::output::files::write_atomically(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// The seed the model was made with (it keys its dropout masks).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Training-mode forward passes so far: the position of the model's dropout stream.
    pub fn dropout_calls(&self) -> u64 {
        self.dropout_calls
    }

    /// Continues the dropout stream from a checkpoint.
    pub fn set_dropout_calls(&mut self, calls: u64) {
        self.dropout_calls = calls;
    }

    /// Where the rows of the next forwards start in their batch: a data-parallel rank
    /// computes rows `first..` of each batch, and draws their dropout masks where one
    /// process would (0 otherwise).
    pub fn set_first_row(&mut self, first: usize) {
        self.first_row = first;
    }

    /// Runs the model on `x` (`[B, ...input]`): the outputs of the taps and `output`.
    /// `train` puts dropout and batch norm in training mode.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        self.forward_with(x, train, true, true)
    }

    /// [`Model::forward`]; `cacheable` says whether this batch's rows recur (not augmented),
    /// so a frozen BERT encoder may keep their outputs. Without `gradients` the parameters
    /// enter as constants: no graph is kept, so each layer's values are freed as soon as
    /// the next has read them (a frozen teacher, evaluation).
    pub fn forward_with(
        &mut self,
        x: &Tensor,
        train: bool,
        cacheable: bool,
        gradients: bool,
    ) -> Result<Vec<(String, Tensor)>> {
        if let Some(bert) = self.bert.as_mut() {
            let pad_id = self.pad_id.unwrap_or(0);
            let (pooled, logits) = bert.forward(x, pad_id, cacheable)?;
            return Ok(vec![
                ("pooled".into(), pooled),
                ("logits".into(), logits.clone()),
                ("output".into(), logits),
            ]);
        }
        if let Some(onnx) = &self.onnx {
            // candle-onnx evaluates on the host (its weights load there); the outputs go
            // back to where the input came from.
            let on_host = x.to_device(&Device::Cpu).ctx("an ONNX model's input")?;
            let inputs = HashMap::from([(onnx.input.clone(), on_host)]);
            // candle-onnx panics on some malformed graphs: a file's fault, not kdc's.
            let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                candle_onnx::simple_eval(&onnx.proto, inputs)
            }))
            .map_err(|panic| RuntimeError::Weights {
                path: onnx.path.clone(),
                reason: format!("candle-onnx cannot evaluate it ({})", panic_message(&panic)),
            })?;
            let values = evaluated.ctx_with(|| format!("ONNX model `{}`", self.name))?;
            return onnx
                .ports
                .iter()
                .map(|(port, value)| {
                    let t = values.get(value).cloned().ok_or_else(|| {
                        plan_error(format!("ONNX model `{}` gave no `{value}`", self.name))
                    })?;
                    Ok((
                        port.clone(),
                        t.to_dtype(DType::F32)
                            .and_then(|t| t.to_device(x.device()))
                            .ctx("reading an ONNX output")?,
                    ))
                })
                .collect();
        }
        let call = self.dropout_calls;
        if train {
            self.dropout_calls += 1;
        }
        let context = ForwardContext {
            train,
            seed: self.seed,
            model: &self.name,
            call,
            first_row: self.first_row,
            sinks: &self.grad_sinks,
            gradients,
            dtype: self.dtype,
            observer: self.observer.as_ref(),
            aware: self.aware.as_ref(),
        };
        // kdc's own reverse pass runs on its f32 CPU kernels; elsewhere candle's graph does.
        if gradients
            && self.own_reverse_pass
            && self.dtype == DType::F32
            && crate::ops::cpu_kernels()
            && x.device().is_cpu()
        {
            if let Some((_, anchor)) = self.params.first() {
                return self.forward_taped(x, anchor.as_tensor().clone(), &context);
            }
        }
        let mut ports = Vec::with_capacity(self.taps.len() + 1);
        // Token inputs: 1 at real tokens, 0 at padding, `[B, L]`; sequence layers keep it.
        let mut mask = match self.pad_id {
            Some(pad) => Some(
                x.ne(pad as f64)
                    .and_then(|m| m.to_dtype(self.dtype))
                    .ctx("the attention mask")?,
            ),
            None => None,
        };
        // Token ids stay as they are (the embedding reads them, and bf16 would round ids
        // past 256); values take the model's precision.
        let x = match self.tokens {
            false => x.to_dtype(self.dtype).ctx("casting the input")?,
            true => x.clone(),
        };
        let taps = &self.taps;
        let h = run_layers(
            &self.layers,
            &x,
            &mut mask,
            &context,
            |at| taps.iter().any(|(_, tap)| *tap == at),
            |index, h| {
                for (tap, _) in taps.iter().filter(|(_, at)| *at == index) {
                    ports.push((tap.clone(), h.clone()));
                }
            },
        )?;
        ports.push(("output".to_string(), h));
        // Losses, metrics and caches see f32 whatever the model computed in.
        ports
            .into_iter()
            .map(|(port, t)| Ok((port, t.to_dtype(DType::F32).ctx("casting an output")?)))
            .collect()
    }
}

/// What the layer at `index` applies in its output pass: for a dense layer or a batch
/// norm, the ReLU after it, and (for a conv2d without `gradients`, on kdc's kernels) the
/// max pool after that, unless `tapped` says a tap reads a value in between.
fn epilogue(
    layers: &[LayerImpl],
    index: usize,
    (gradients, kernels): (bool, bool),
    tapped: &impl Fn(usize) -> bool,
) -> Epilogue {
    let layer = &layers[index];
    let fuses_relu = matches!(layer, LayerImpl::BatchNorm(_) | LayerImpl::Residual { .. });
    if !layer.is_dense() && !fuses_relu {
        return Epilogue::default();
    }
    let relu = matches!(layers.get(index + 1), Some(LayerImpl::Relu)) && !tapped(index);
    let last = index + usize::from(relu);
    let max_pool = match layers.get(last + 1) {
        Some(&LayerImpl::MaxPool { kernel, stride })
            if kernels
                && !gradients
                && !tapped(last)
                && matches!(layer, LayerImpl::Conv2d { .. }) =>
        {
            Some((kernel, stride))
        }
        _ => None,
    };
    Epilogue { relu, max_pool }
}

/// `layers` in order from `x`; `visit` sees each layer's output by index. A layer and the
/// ReLU (and pool) its epilogue takes in run as one op, unless `tapped` says a tap reads
/// between them.
fn run_layers(
    layers: &[LayerImpl],
    x: &Tensor,
    mask: &mut Option<Tensor>,
    context: &ForwardContext,
    tapped: impl Fn(usize) -> bool,
    mut visit: impl FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let mut h = x.clone();
    let mut fused = 0;
    for (index, layer) in layers.iter().enumerate() {
        if fused > 0 {
            fused -= 1;
            debug_assert!(matches!(layer, LayerImpl::Relu | LayerImpl::MaxPool { .. }));
        } else {
            let kernels = crate::ops::kernels_apply(&h);
            let epilogue = epilogue(layers, index, (context.gradients, kernels), &tapped);
            fused = usize::from(epilogue.relu) + usize::from(epilogue.max_pool.is_some());
            h = layer.forward(&h, mask, context, epilogue)?;
        }
        visit(index, &h);
    }
    Ok(h)
}

struct ForwardContext<'a> {
    train: bool,
    seed: u64,
    model: &'a str,
    call: u64,
    /// The first row of the batch in the whole batch (a data-parallel rank's share).
    first_row: usize,
    sinks: &'a GradSinks,
    /// Whether parameters are tracked for a backward pass.
    gradients: bool,
    /// The model's compute dtype: f32 parameters are cast to it where they are used, so
    /// their gradients come back f32 through the cast (mixed precision).
    dtype: DType,
    /// Set while an int8 model calibrates.
    observer: Option<&'a int8::Observer>,
    /// Set while the model trains quantisation-aware.
    aware: Option<&'a aware::Ranges>,
}

impl ForwardContext<'_> {
    /// A parameter as this forward uses it: outside the graph without `gradients`, in the
    /// model's precision.
    fn param(&self, var: &Var) -> Tensor {
        let t = self.param_f32(var);
        // `to_dtype` to the same dtype is a clone; a failed cast (never for f32 to bf16)
        // would surface as the layer's dtype mismatch.
        t.to_dtype(self.dtype).unwrap_or(t)
    }

    /// The parameter in its own f32.
    fn param_f32(&self, var: &Var) -> Tensor {
        match self.gradients {
            true => var.as_tensor().clone(),
            false => var.as_tensor().detach(),
        }
    }
}

impl LayerImpl {
    /// A linear or convolution layer: one `crate::ops::dense` op with its bias and a ReLU.
    fn is_dense(&self) -> bool {
        matches!(
            self,
            LayerImpl::Linear { .. } | LayerImpl::Conv1d { .. } | LayerImpl::Conv2d { .. }
        )
    }

    /// The layer's output for `x`; a dense layer applies `epilogue` too.
    fn forward(
        &self,
        x: &Tensor,
        mask: &mut Option<Tensor>,
        context: &ForwardContext,
        epilogue: Epilogue,
    ) -> Result<Tensor> {
        let fail = |what: &str| format!("{what} of model `{}`", context.model);
        // kdc's kernels apply (see `crate::ops`) to an f32 CPU input.
        let kernels = crate::ops::kernels_apply(x);
        // Such an input outside any graph: a parameter-free layer needs no graph either.
        let untracked = kernels && !x.track_op();
        match self {
            LayerImpl::Embedding { weight, positions } => {
                let (b, len) = x.dims2().ctx_with(|| fail("embedding"))?;
                let ids = x
                    .to_dtype(DType::U32)
                    .and_then(|ids| ids.flatten_all())
                    .ctx_with(|| fail("embedding"))?;
                let dim = weight.dim(1).ctx_with(|| fail("embedding"))?;
                // The table stays f32 and its rows are cast once selected, so a row's
                // gradient sums its tokens' in f32 (the embedding is the layer whose
                // gradient adds up most terms).
                let table = &context.param_f32(weight);
                let y = match crate::ops::kernels_apply(table) {
                    true => {
                        crate::ops::elementwise::embedding(table, &ids, context.sinks.get(table))
                    }
                    false => table.index_select(&ids, 0),
                }
                .and_then(|y| y.to_dtype(context.dtype))
                .and_then(|y| y.reshape((b, len, dim)))
                .ctx_with(|| fail("embedding"))?;
                match positions {
                    // Without a graph, the taped forward's kernel: the same values.
                    Some(p)
                        if !y.track_op() && !context.gradients && crate::ops::kernels_apply(&y) =>
                    {
                        crate::ops::elementwise::add_positions(&y, &context.param(p))
                            .ctx_with(|| fail("embedding positions"))
                    }
                    Some(p) => y
                        .broadcast_add(
                            &context
                                .param(p)
                                .narrow(0, 0, len)
                                .ctx_with(|| fail("positions"))?,
                        )
                        .ctx_with(|| fail("embedding positions")),
                    None => Ok(y),
                }
            }
            LayerImpl::Conv1d {
                weight,
                bias,
                padding,
                kernel,
            } => {
                // Channels last in and out: no transposes (kd_kernels::conv1d).
                let y = dense(
                    Dense::Conv1d { padding: *padding },
                    x,
                    &context.param(weight),
                    bias.as_ref().map(|b| context.param(b)).as_ref(),
                    epilogue,
                    context.sinks,
                )
                .ctx_with(|| fail("conv1d"))?;
                if let Some(m) = mask.as_ref() {
                    *mask =
                        Some(conv1d_mask(m, *kernel, *padding).ctx_with(|| fail("conv1d mask"))?);
                }
                Ok(y)
            }
            LayerImpl::Lstm { directions } => {
                lstm(x, mask.as_ref(), directions, context).ctx_with(|| fail("lstm"))
            }
            // Without gradients, the reverse pass's kernels (the same values as training).
            LayerImpl::Transformer(block) if !context.gradients && kernels => block
                .forward_taped(x, mask.as_ref(), context)
                .map(|(y, _)| y),
            LayerImpl::Transformer(block) => block.forward(x, mask.as_ref(), context),
            LayerImpl::LayerNorm { weight, bias, eps } if !context.gradients && kernels => {
                crate::ops::attention::layer_norm(
                    x,
                    &context.param(weight),
                    &context.param(bias),
                    *eps,
                )
                .map(|(y, _)| y)
                .ctx_with(|| fail("layernorm"))
            }
            LayerImpl::LayerNorm { weight, bias, eps } => {
                layer_norm(x, (weight, bias), *eps, context).ctx_with(|| fail("layernorm"))
            }
            // Without a graph, the taped forward's kernels (the same values).
            LayerImpl::Pool {
                kind: SeqPool::Mean,
            } if untracked && x.rank() == 3 => {
                crate::ops::pooling::mean_over_time(x, mask.as_ref()).ctx_with(|| fail("pool"))
            }
            LayerImpl::Pool {
                kind: SeqPool::First,
            } if untracked && x.rank() == 3 => {
                crate::ops::pooling::first_of_sequence(x).ctx_with(|| fail("pool"))
            }
            LayerImpl::Pool { kind } => {
                sequence::pool(x, mask.as_ref(), *kind).ctx_with(|| fail("pool"))
            }
            LayerImpl::Int8(layer) => layer.forward(x).ctx_with(|| fail("int8 layer")),
            LayerImpl::Linear { weight, bias } => {
                let (x, w) = context
                    .operands(weight, x)
                    .ctx_with(|| fail("int8 calibration or fake quantisation"))?;
                dense(
                    Dense::Linear,
                    &x,
                    &w,
                    bias.as_ref().map(|b| context.param(b)).as_ref(),
                    epilogue,
                    context.sinks,
                )
                .ctx_with(|| fail("linear"))
            }
            LayerImpl::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let (x, w) = context
                    .operands(weight, x)
                    .ctx_with(|| fail("int8 calibration or fake quantisation"))?;
                dense(
                    Dense::Conv2d {
                        stride: *stride,
                        padding: *padding,
                    },
                    &x,
                    &w,
                    bias.as_ref().map(|b| context.param(b)).as_ref(),
                    epilogue,
                    context.sinks,
                )
                .ctx_with(|| fail("conv2d"))
            }
            LayerImpl::MaxPool { kernel, stride } => {
                pool(x, *kernel, *stride, Pool::Max).ctx_with(|| fail("max pool"))
            }
            LayerImpl::AvgPool { kernel, stride }
                if untracked && crate::ops::pooling::tiles_planes(x, *kernel, *stride) =>
            {
                crate::ops::pooling::avg_pool2d_tiled(x, *kernel).ctx_with(|| fail("avg pool"))
            }
            LayerImpl::AvgPool { kernel, stride } => {
                pool(x, *kernel, *stride, Pool::Avg).ctx_with(|| fail("avg pool"))
            }
            LayerImpl::BatchNorm(bn) => bn
                .forward(x, context, epilogue.relu)
                .ctx_with(|| fail("batch norm")),
            LayerImpl::Dropout { p, name } => dropout(x, *p, name, context),
            LayerImpl::Flatten => x.flatten_from(1).ctx_with(|| fail("flatten")),
            LayerImpl::Relu => crate::ops::elementwise::relu(x).ctx_with(|| fail("relu")),
            LayerImpl::Gelu => crate::ops::attention::gelu_op(x).ctx_with(|| fail("gelu")),
            LayerImpl::Tanh if untracked => {
                crate::ops::elementwise::tanh(x).ctx_with(|| fail("tanh"))
            }
            LayerImpl::Tanh => x.tanh().ctx_with(|| fail("tanh")),
            LayerImpl::Sigmoid if untracked => {
                crate::ops::elementwise::sigmoid(x).ctx_with(|| fail("sigmoid"))
            }
            LayerImpl::Sigmoid => candle_nn::ops::sigmoid(x).ctx_with(|| fail("sigmoid")),
            LayerImpl::Softmax if untracked => {
                crate::ops::elementwise::softmax(x).ctx_with(|| fail("softmax"))
            }
            LayerImpl::Softmax => {
                sequence::in_f32(x, |x| losses::softmax(x, 1.0)).ctx_with(|| fail("softmax"))
            }
            LayerImpl::Residual { body, shortcut } => {
                let h = run_layers(body, x, &mut mask.clone(), context, |_| false, |_, _| ())?;
                let skip = match shortcut {
                    Some(short) => {
                        short.forward(x, &mut mask.clone(), context, Epilogue::default())?
                    }
                    None => x.clone(),
                };
                let tracked = h.track_op() || skip.track_op();
                match (tracked, epilogue.relu) {
                    // Outside a graph, one pass for the sum and the ReLU after it.
                    (false, relu) if crate::ops::kernels_apply(&h) => {
                        crate::ops::elementwise::add(&h, &skip, relu)
                    }
                    (_, false) => h.add(&skip),
                    (_, true) => h
                        .add(&skip)
                        .and_then(|sum| crate::ops::elementwise::relu(&sum)),
                }
                .ctx_with(|| fail("residual sum"))
            }
        }
    }
}

/// The padding mask after a conv1d: an output position is real when its window covers a
/// real token.
fn conv1d_mask(mask: &Tensor, kernel: usize, padding: usize) -> candle_core::Result<Tensor> {
    let ones = Tensor::ones((1, 1, kernel), mask.dtype(), mask.device())?;
    mask.unsqueeze(1)?
        .conv1d(&ones, padding, 1, 1, 1)?
        .squeeze(1)?
        .gt(0.5)?
        .to_dtype(mask.dtype())
}

/// Zeroes each value with probability `p` in training mode (scaling the rest by
/// `1 / (1 - p)`), drawing from the stream of this model, layer and forward pass.
fn dropout(x: &Tensor, p: f64, name: &str, context: &ForwardContext) -> Result<Tensor> {
    match dropout_mask(x, p, name, context)? {
        Some(mask) => x
            .mul(&mask)
            .ctx_with(|| format!("dropout of model `{}`", context.model)),
        None => Ok(x.clone()),
    }
}

/// Dropout's factors for `x` (0 or `1 / (1 - p)` each), or `None` when it changes nothing
/// (evaluation, `p` 0).
fn dropout_mask(
    x: &Tensor,
    p: f64,
    name: &str,
    context: &ForwardContext,
) -> Result<Option<Tensor>> {
    if !context.train || p <= 0.0 {
        return Ok(None);
    }
    let keep = 1.0 - p;
    // A rank's rows take the stretch of the stream one process gives them.
    let per_row = x.elem_count() / x.dims().first().copied().unwrap_or(1).max(1);
    let mut rng = Rng::at(
        context.seed,
        &format!("dropout/{}/{name}/{}", context.model, context.call),
        (context.first_row * per_row) as u64,
    );
    let scale = if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 };
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
        .collect();
    Tensor::from_vec(mask, x.shape(), x.device())
        .and_then(|m| m.to_dtype(x.dtype()))
        .map(Some)
        .ctx_with(|| format!("dropout of model `{}`", context.model))
}

/// `x W^T + b` on the last axis of `[B, L, in]`.
fn linear3(
    x: &Tensor,
    (weight, bias): &(Var, Var),
    context: &ForwardContext,
) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&context.param(weight).t()?)?
        .broadcast_add(&context.param(bias))
}

/// Layer norm with a layer's parameters.
fn layer_norm(
    x: &Tensor,
    (weight, bias): (&Var, &Var),
    eps: f64,
    context: &ForwardContext,
) -> candle_core::Result<Tensor> {
    sequence::layer_norm(x, &context.param(weight), &context.param(bias), eps)
}

/// An LSTM over `[B, L, C]` with PyTorch's gate order (input, forget, cell, output); each
/// direction's outputs are concatenated. At padded steps the state carries over and the
/// output is zero, so right padding changes nothing for either direction. The input's part
/// of every gate is one dense layer over all steps; the recurrence one op
/// (`crate::ops::recurrent`).
fn lstm(
    x: &Tensor,
    mask: Option<&Tensor>,
    directions: &[(Var, Var, Var)],
    context: &ForwardContext,
) -> candle_core::Result<Tensor> {
    // The recurrence runs in f32 in a bf16 model too (its state accumulates over steps).
    let param = |v: &Var| context.param_f32(v).to_dtype(DType::F32);
    let mask = mask.map(|m| m.to_dtype(DType::F32)).transpose()?;
    let mask = mask.as_ref();
    let mut outputs = Vec::with_capacity(directions.len());
    for (direction, (w_ih, w_hh, bias)) in directions.iter().enumerate() {
        let x = x.to_dtype(DType::F32)?;
        let projected = dense(
            Dense::Linear,
            &x,
            &param(w_ih)?,
            Some(&param(bias)?),
            Epilogue::default(),
            context.sinks,
        )?;
        let w_hh = param(w_hh)?;
        outputs.push(crate::ops::recurrent::lstm_direction(
            &projected,
            &w_hh,
            mask,
            direction == 1,
            context.sinks.get(&w_hh),
        )?);
    }
    match outputs.len() {
        1 => outputs.swap_remove(0),
        _ => Tensor::cat(&outputs, 2)?,
    }
    .to_dtype(context.dtype)
}

impl TransformerBlock {
    /// `x + attention(norm1(x))`, then `+ ff(norm2(.))`, on `[B, L, D]`.
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        context: &ForwardContext,
    ) -> Result<Tensor> {
        let fail = || format!("transformer `{}` of model `{}`", self.name, context.model);
        let d = x.dim(D::Minus1).ctx_with(fail)?;
        let attended = (|| {
            let normed = layer_norm(x, (&self.norm1.0, &self.norm1.1), 1e-5, context)?;
            let qkv = linear3(&normed, &self.qkv, context)?;
            let part = |i: usize| qkv.narrow(2, i * d, d);
            let mixed = sequence::attention(&part(0)?, &part(1)?, &part(2)?, mask, self.heads)?;
            linear3(&mixed, &self.attn_out, context)
        })()
        .ctx_with(fail)?;
        let attended = dropout(
            &attended,
            self.dropout,
            &format!("{}.attn", self.name),
            context,
        )?;
        let h = x.add(&attended).ctx_with(fail)?;
        let fed = (|| {
            let normed = layer_norm(&h, (&self.norm2.0, &self.norm2.1), 1e-5, context)?;
            let inner = linear3(&normed, &self.ff1, context)?;
            let inner = crate::ops::attention::gelu_op(&inner)?;
            linear3(&inner, &self.ff2, context)
        })()
        .ctx_with(fail)?;
        let fed = dropout(&fed, self.dropout, &format!("{}.ff", self.name), context)?;
        h.add(&fed).ctx_with(fail)
    }
}

impl BatchNorm {
    /// The normalised `x`, then a ReLU when `relu`: one fused op for f32 inputs.
    fn forward(
        &self,
        x: &Tensor,
        context: &ForwardContext,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        if !crate::ops::kernels_apply(x) {
            // Statistics in f32 whatever the model computes in (as PyTorch's autocast).
            let y = self
                .forward_candle(&x.to_dtype(DType::F32)?, context)?
                .to_dtype(x.dtype())?;
            return if relu {
                crate::ops::elementwise::relu_composed(&y)
            } else {
                Ok(y)
            };
        }
        let statistics = match context.train {
            true => crate::ops::batch_norm::Statistics::Batch {
                running: (&self.running_mean, &self.running_var),
                momentum: self.momentum,
            },
            false => crate::ops::batch_norm::Statistics::Running {
                mean: self.running_mean.as_tensor(),
                var: self.running_var.as_tensor(),
            },
        };
        crate::ops::batch_norm::batch_norm(
            x,
            &context.param(&self.weight),
            &context.param(&self.bias),
            statistics,
            self.eps,
            relu,
            context.sinks,
        )
    }

    /// The same from candle's ops (inputs other than f32).
    fn forward_candle(&self, x: &Tensor, context: &ForwardContext) -> candle_core::Result<Tensor> {
        let train = context.train;
        let rank = x.rank();
        let channels = self.weight.elem_count();
        // Parameters broadcast as [1, C, 1, ...].
        let mut param_shape = vec![1usize; rank.max(2)];
        param_shape[1] = channels;
        let reduce: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
        let (mean, var) = if train {
            let mean = x.mean_keepdim(reduce.clone())?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(reduce)?;
            // Running statistics as PyTorch: unbiased variance, momentum on the new value.
            let count = (x.elem_count() / channels.max(1)) as f64;
            let unbiased = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let m = self.momentum;
            let batch_mean = mean.detach().flatten_all()?;
            let batch_var = var.detach().flatten_all()?;
            let new_mean = (self.running_mean.as_tensor().affine(1.0 - m, 0.0)?
                + batch_mean.affine(m, 0.0)?)?;
            let new_var = (self.running_var.as_tensor().affine(1.0 - m, 0.0)?
                + batch_var.affine(m * unbiased, 0.0)?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            // Running statistics are buffers, never trained: constants in any graph.
            (
                self.running_mean
                    .as_tensor()
                    .detach()
                    .reshape(param_shape.as_slice())?,
                self.running_var
                    .as_tensor()
                    .detach()
                    .reshape(param_shape.as_slice())?,
            )
        };
        let normalised = x
            .broadcast_sub(&mean)?
            .broadcast_div(&var.affine(1.0, self.eps)?.sqrt()?)?;
        // The f32 parameters themselves: this runs in f32 for a bf16 model too.
        let weight = context
            .param_f32(&self.weight)
            .to_dtype(x.dtype())?
            .reshape(param_shape.as_slice())?;
        let bias = context
            .param_f32(&self.bias)
            .to_dtype(x.dtype())?
            .reshape(param_shape.as_slice())?;
        normalised.broadcast_mul(&weight)?.broadcast_add(&bias)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Max,
    Avg,
}

/// 2-D pooling over the last two axes without padding (PyTorch's floor mode). candle's
/// own kernels only differentiate when kernel equals stride; other cases gather windows.
fn pool(x: &Tensor, kernel: usize, stride: usize, kind: Pool) -> candle_core::Result<Tensor> {
    if x.rank() == 4 && crate::ops::kernels_apply(x) && kind == Pool::Max {
        return crate::ops::pooling::max_pool2d(x, kernel, stride);
    }
    // Not candle's max pool: its backward is wrong in candle 0.11 (the windows below
    // differentiate through `max`).
    if kernel == stride && x.rank() == 4 && kind == Pool::Avg {
        return x.avg_pool2d(kernel);
    }
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        candle_core::bail!("pooling needs at least two axes, got {dims:?}");
    }
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if h < kernel || w < kernel {
        candle_core::bail!("pooling window {kernel} larger than the input {h}x{w}");
    }
    let out_h = (h - kernel) / stride + 1;
    let out_w = (w - kernel) / stride + 1;
    // Index of every window element, window element major: [k*k, out_h*out_w].
    let mut index = Vec::with_capacity(kernel * kernel * out_h * out_w);
    for di in 0..kernel {
        for dj in 0..kernel {
            for oi in 0..out_h {
                for oj in 0..out_w {
                    index.push(((oi * stride + di) * w + oj * stride + dj) as u32);
                }
            }
        }
    }
    let lead: Vec<usize> = dims[..dims.len() - 2].to_vec();
    let index = Tensor::from_vec(index, kernel * kernel * out_h * out_w, x.device())?;
    let flat = x.flatten_from(dims.len() - 2)?;
    let gathered = flat.index_select(&index, dims.len() - 2)?;
    let mut windowed_shape = lead.clone();
    windowed_shape.extend([kernel * kernel, out_h * out_w]);
    let windows = gathered.reshape(windowed_shape)?;
    let pooled = match kind {
        Pool::Max => sequence::first_max(&windows, windows.rank() - 2)?,
        Pool::Avg => windows.mean(D::Minus2)?,
    };
    let mut out_shape = lead;
    out_shape.extend([out_h, out_w]);
    pooled.reshape(out_shape)
}
