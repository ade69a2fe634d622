//! Models built from a `ModelSpec`: layers, parameters under stable names, forward with taps,
//! and loading and saving weights as safetensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use kd_plan::{Layer, LayerSpec, ModelSpec};

use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::losses;
use crate::rng::Rng;

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
    /// Batch-norm running statistics.
    buffers: Vec<(String, Var)>,
    /// Ends in a softmax layer, so its output is already probabilities.
    outputs_probabilities: bool,
    seed: u64,
    /// Forward passes so far in training mode; keys each pass's dropout masks.
    dropout_calls: u64,
    /// Set when the model runs from an ONNX file instead of `layers`.
    onnx: Option<OnnxGraph>,
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
        var.set(value).ctx_with(|| format!("restoring `{name}`"))?;
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
        let var = Var::from_vec(values, shape, &Device::Cpu)
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
        let var = Var::from_vec(vec![value; count], shape, &Device::Cpu)
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
    /// A fresh model: every parameter drawn from `init/{init_key}/{name}` under `seed`.
    pub fn new(spec: &ModelSpec, seed: u64) -> Result<Model> {
        let mut builder = Builder {
            seed,
            init_key: &spec.init_key,
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
            params: builder.params,
            buffers: builder.buffers,
            seed,
            dropout_calls: 0,
            onnx: None,
        })
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
            buffers: Vec::new(),
            outputs_probabilities: spec
                .taps
                .iter()
                .any(|t| t.name == "output" && t.ty.kind == kd_plan::Kind::Probabilities),
            seed: 0,
            dropout_calls: 0,
            onnx: Some(OnnxGraph {
                proto,
                input: onnx.input.clone(),
                ports,
                params: spec.params,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Trainable parameters, in declaration order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        let frozen = self.onnx.as_ref().map_or(0, |o| o.params);
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
    /// [`crate::files::write_atomically`]); returns the file's size.
    pub fn save_weights(&self, path: &Path) -> Result<u64> {
        let tensors: Vec<(String, Tensor)> = self
            .state()
            .map(|(name, var)| (name.to_string(), var.as_tensor().detach()))
            .collect();
        let bytes = safetensors::serialize(tensors, None).map_err(|e| RuntimeError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        crate::files::write_atomically(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Training-mode forward passes so far: the position of the model's dropout stream.
    pub fn dropout_calls(&self) -> u64 {
        self.dropout_calls
    }

    /// Continues the dropout stream from a checkpoint.
    pub fn set_dropout_calls(&mut self, calls: u64) {
        self.dropout_calls = calls;
    }

    /// Runs the model on `x` (`[B, ...input]`): the outputs of the taps and `output`.
    /// `train` puts dropout and batch norm in training mode.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        if let Some(onnx) = &self.onnx {
            let inputs = HashMap::from([(onnx.input.clone(), x.clone())]);
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
                        t.to_dtype(DType::F32).ctx("reading an ONNX output")?,
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
        };
        let mut ports = Vec::with_capacity(self.taps.len() + 1);
        let mut h = x.clone();
        for (index, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, &context)?;
            for (tap, _) in self.taps.iter().filter(|(_, at)| *at == index) {
                ports.push((tap.clone(), h.clone()));
            }
        }
        ports.push(("output".to_string(), h));
        Ok(ports)
    }
}

struct ForwardContext<'a> {
    train: bool,
    seed: u64,
    model: &'a str,
    call: u64,
}

impl LayerImpl {
    fn forward(&self, x: &Tensor, context: &ForwardContext) -> Result<Tensor> {
        let fail = |what: &str| format!("{what} of model `{}`", context.model);
        match self {
            LayerImpl::Linear { weight, bias } => {
                let w = weight.as_tensor().t().ctx_with(|| fail("linear"))?;
                let y = if x.rank() == 2 {
                    x.matmul(&w)
                } else {
                    x.broadcast_matmul(&w)
                }
                .ctx_with(|| fail("linear"))?;
                match bias {
                    Some(b) => y
                        .broadcast_add(b.as_tensor())
                        .ctx_with(|| fail("linear bias")),
                    None => Ok(y),
                }
            }
            LayerImpl::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let y = x
                    .conv2d(weight.as_tensor(), *padding, *stride, 1, 1)
                    .ctx_with(|| fail("conv2d"))?;
                match bias {
                    Some(b) => {
                        let b = b
                            .as_tensor()
                            .reshape((1, b.elem_count(), 1, 1))
                            .ctx_with(|| fail("conv2d bias"))?;
                        y.broadcast_add(&b).ctx_with(|| fail("conv2d bias"))
                    }
                    None => Ok(y),
                }
            }
            LayerImpl::MaxPool { kernel, stride } => {
                pool(x, *kernel, *stride, Pool::Max).ctx_with(|| fail("max pool"))
            }
            LayerImpl::AvgPool { kernel, stride } => {
                pool(x, *kernel, *stride, Pool::Avg).ctx_with(|| fail("avg pool"))
            }
            LayerImpl::BatchNorm(bn) => {
                bn.forward(x, context.train).ctx_with(|| fail("batch norm"))
            }
            LayerImpl::Dropout { p, name } => {
                if !context.train || *p <= 0.0 {
                    return Ok(x.clone());
                }
                let keep = 1.0 - p;
                let mut rng = Rng::new(
                    context.seed,
                    &format!("dropout/{}/{name}/{}", context.model, context.call),
                );
                let scale = if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 };
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(mask, x.shape(), x.device())
                    .and_then(|m| m.to_dtype(x.dtype()))
                    .ctx_with(|| fail("dropout"))?;
                x.mul(&mask).ctx_with(|| fail("dropout"))
            }
            LayerImpl::Flatten => x.flatten_from(1).ctx_with(|| fail("flatten")),
            LayerImpl::Relu => x.relu().ctx_with(|| fail("relu")),
            LayerImpl::Gelu => x.gelu_erf().ctx_with(|| fail("gelu")),
            LayerImpl::Tanh => x.tanh().ctx_with(|| fail("tanh")),
            LayerImpl::Sigmoid => candle_nn::ops::sigmoid(x).ctx_with(|| fail("sigmoid")),
            LayerImpl::Softmax => losses::softmax(x, 1.0).ctx_with(|| fail("softmax")),
            LayerImpl::Residual { body, shortcut } => {
                let mut h = x.clone();
                for layer in body {
                    h = layer.forward(&h, context)?;
                }
                let skip = match shortcut {
                    Some(short) => short.forward(x, context)?,
                    None => x.clone(),
                };
                h.add(&skip).ctx_with(|| fail("residual sum"))
            }
        }
    }
}

impl BatchNorm {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
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
            (
                self.running_mean
                    .as_tensor()
                    .reshape(param_shape.as_slice())?,
                self.running_var
                    .as_tensor()
                    .reshape(param_shape.as_slice())?,
            )
        };
        let normalised = x
            .broadcast_sub(&mean)?
            .broadcast_div(&var.affine(1.0, self.eps)?.sqrt()?)?;
        let weight = self.weight.as_tensor().reshape(param_shape.as_slice())?;
        let bias = self.bias.as_tensor().reshape(param_shape.as_slice())?;
        normalised.broadcast_mul(&weight)?.broadcast_add(&bias)
    }
}

#[derive(Clone, Copy)]
enum Pool {
    Max,
    Avg,
}

/// 2-D pooling over the last two axes without padding (PyTorch's floor mode). candle's
/// own kernels only differentiate when kernel equals stride; other cases gather windows.
fn pool(x: &Tensor, kernel: usize, stride: usize, kind: Pool) -> candle_core::Result<Tensor> {
    if kernel == stride && x.rank() == 4 {
        return match kind {
            Pool::Max => x.max_pool2d(kernel),
            Pool::Avg => x.avg_pool2d(kernel),
        };
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
        Pool::Max => windows.max(D::Minus2)?,
        Pool::Avg => windows.mean(D::Minus2)?,
    };
    let mut out_shape = lead;
    out_shape.extend([out_h, out_w]);
    pooled.reshape(out_shape)
}
