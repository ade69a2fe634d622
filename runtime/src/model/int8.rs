//! int8 models (`quantize(s) on data.split`): each `linear` and `conv2d` layer (residual
//! shortcuts included) computes `y = s_x * s_w[c] * sum(q(x) * q(w)) + b` with int8 values
//! and exact i32 sums (kd_kernels::int8). Weights are symmetric per output channel
//! (`s_w[c] = max |w[c]| / 127`), inputs symmetric per tensor (`s_x = max |x| / 127`, the
//! largest magnitude the layer's input took on the calibration samples); quantising
//! rounds half to even and saturates to [-128, 127], as ONNX's QuantizeLinear does.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, TensorId, Var};
use kd_kernels::int8;
use kd_kernels::unfold::Window2d;
use rayon::prelude::*;

use super::{LayerImpl, Model};
use crate::error::{plan_error, Result, TensorContext};

/// What a calibration pass records: the largest input magnitude per layer, by the id of
/// the layer's weight.
pub(super) type Observer = Mutex<HashMap<TensorId, f32>>;

/// Records the largest magnitude of `x`, the input of the layer whose weight is `weight`.
pub(super) fn observe(observer: &Observer, weight: &Var, x: &Tensor) -> candle_core::Result<()> {
    let amax = x
        .to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let mut seen = observer.lock().unwrap_or_else(|p| p.into_inner());
    let entry = seen.entry(weight.as_tensor().id()).or_insert(0.0);
    *entry = entry.max(amax);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Int8Kind {
    Linear,
    Conv2d {
        stride: usize,
        padding: usize,
        kernel: usize,
    },
}

/// A `linear` or `conv2d` layer in int8.
#[derive(Debug)]
pub(super) struct Int8Layer {
    pub(super) kind: Int8Kind,
    /// The f32 weight it was made from (what exports and the parameter count read).
    pub(super) weight: Var,
    /// `[out, depth]`: a row per output channel (a conv's `[in, k, k]` flattened).
    pub(super) weights: Vec<i8>,
    pub(super) weight_scale: Vec<f32>,
    pub(super) input_scale: f32,
    /// A linear layer's `weights` as its kernel reads them (kd_kernels::int8::transpose_weight).
    packed: Vec<i16>,
    /// `input_scale * weight_scale[c]`, and the bias (zeros without one), per output.
    scales: Vec<f32>,
    bias_values: Vec<f32>,
    out: usize,
    depth: usize,
}

impl Int8Layer {
    fn new(kind: Int8Kind, weight: &Var, bias: &Option<Var>, input_amax: f32) -> Result<Self> {
        let dims = weight.dims().to_vec();
        let out = dims[0];
        let depth = dims[1..].iter().product::<usize>();
        let values = weight
            .as_tensor()
            .to_dtype(DType::F32)
            .and_then(|w| w.flatten_all())
            .and_then(|w| w.to_vec1::<f32>())
            .ctx("reading a weight to quantise")?;
        let mut weights = vec![0i8; values.len()];
        let weight_scale = row_scales(&values, depth);
        for ((row, q), scale) in values
            .chunks(depth.max(1))
            .zip(weights.chunks_mut(depth.max(1)))
            .zip(&weight_scale)
        {
            int8::quantize(row, *scale, q);
        }
        let input_scale = scale_of(input_amax);
        let bias_values = match bias {
            Some(b) => b
                .as_tensor()
                .to_dtype(DType::F32)
                .and_then(|b| b.to_vec1::<f32>())
                .ctx("reading a bias to quantise")?,
            None => vec![0.0; out],
        };
        Ok(Int8Layer {
            kind,
            weight: weight.clone(),
            packed: match kind {
                Int8Kind::Linear => int8::transpose_weight(&weights, depth, out),
                Int8Kind::Conv2d { .. } => Vec::new(),
            },
            scales: weight_scale.iter().map(|s| s * input_scale).collect(),
            bias_values,
            weights,
            weight_scale,
            input_scale,
            out,
            depth,
        })
    }

    /// The layer's output for an f32 input (computed on the host).
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let device = x.device().clone();
        let host = x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let values = host.flatten_all()?.to_vec1::<f32>()?;
        // Quantised once, each value (a convolution's windows then widen int8 values).
        let mut q = vec![0i8; values.len()];
        if values.len() < QUANTIZE_CHUNK {
            int8::quantize(&values, self.input_scale, &mut q);
        } else {
            q.par_chunks_mut(QUANTIZE_CHUNK)
                .zip(values.par_chunks(QUANTIZE_CHUNK))
                .for_each(|(q, x)| int8::quantize(x, self.input_scale, q));
        }
        let dims = host.dims().to_vec();
        let (y, shape) = match self.kind {
            Int8Kind::Linear => {
                let rows = values.len() / self.depth.max(1);
                let mut sums = vec![0i32; rows * self.out];
                int8::matmul(&q, &self.packed, self.depth, self.out, &mut sums);
                let mut y = vec![0f32; rows * self.out];
                int8::dequantize(&sums, &self.scales, &self.bias_values, &mut y);
                let mut shape = dims.clone();
                if let Some(last) = shape.last_mut() {
                    *last = self.out;
                }
                (y, shape)
            }
            Int8Kind::Conv2d {
                stride,
                padding,
                kernel,
            } => {
                let [n, channels, height, width] = dims[..] else {
                    return Err(candle_core::Error::Msg(format!(
                        "an int8 conv2d takes [N, C, H, W], not {dims:?}"
                    )));
                };
                let g = Window2d {
                    channels,
                    height,
                    width,
                    kernel,
                    stride,
                    padding,
                };
                let plane = self.out * g.rows();
                let mut y = vec![0f32; n * plane];
                let conv = |scratch: &mut Vec<i16>, (y, x): (&mut [f32], &[i8])| {
                    int8::conv2d(
                        x,
                        &g,
                        &self.weights,
                        &self.scales,
                        &self.bias_values,
                        scratch,
                        y,
                    )
                };
                // A sample at a time, each on one thread.
                if n == 1 {
                    conv(&mut Vec::new(), (&mut y, &q));
                } else {
                    y.par_chunks_mut(plane)
                        .zip(q.par_chunks(g.sample_len()))
                        .for_each_init(Vec::new, conv);
                }
                (y, vec![n, self.out, g.out_height(), g.out_width()])
            }
        };
        Tensor::from_vec(y, shape, &Device::Cpu)?.to_device(&device)
    }
}

/// Values quantised per task when an input is large.
pub(super) const QUANTIZE_CHUNK: usize = 1 << 14;

/// A weight's symmetric scale per output channel: `values` holds a row of `depth` per
/// channel. Fake quantisation (`super::aware`) and the int8 layer share it.
pub(super) fn row_scales(values: &[f32], depth: usize) -> Vec<f32> {
    values
        .chunks(depth.max(1))
        .map(|row| scale_of(row.iter().fold(0.0f32, |m, v| m.max(v.abs()))))
        .collect()
}

/// An int8 layer's weight as exports write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    /// The weight's name (`linear1.weight`).
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<i8>,
    /// One per output channel.
    pub scales: Vec<f32>,
    /// The scale of the layer's input.
    pub input_scale: f32,
}

/// A symmetric int8 scale for values up to `amax` in magnitude (1 when all are zero).
pub(super) fn scale_of(amax: f32) -> f32 {
    match amax > 0.0 && amax.is_finite() {
        true => amax / 127.0,
        false => 1.0,
    }
}

impl Model {
    /// Runs `batches` through the model in eval mode, recording the largest input
    /// magnitude of each linear and conv2d layer; then puts those layers in int8.
    pub fn quantize(&mut self, batches: &[Tensor]) -> Result<()> {
        self.calibrate(&mut batches.iter().map(|x| Ok(x.clone())))
    }

    /// [`Model::quantize`] on batches made one at a time (each dropped after its forward).
    pub fn calibrate(&mut self, batches: &mut dyn Iterator<Item = Result<Tensor>>) -> Result<()> {
        let seen = self.observe_inputs(batches)?;
        self.convert_to_int8(&seen)
    }

    /// Runs `batches` in eval mode: the largest input magnitude of each linear and conv2d
    /// layer, by the id of its weight.
    pub(super) fn observe_inputs(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<Tensor>>,
    ) -> Result<HashMap<TensorId, f32>> {
        self.observer = Some(Mutex::new(HashMap::new()));
        let mut observed = Ok(());
        for x in batches {
            if let Err(e) = x.and_then(|x| self.forward_with(&x, false, false, false)) {
                observed = Err(e);
                break;
            }
        }
        let seen = self
            .observer
            .take()
            .map(|o| o.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_default();
        observed.map(|()| seen)
    }

    /// Puts the linear and conv2d layers in int8, each with its input range in `seen`.
    pub(super) fn convert_to_int8(&mut self, seen: &HashMap<TensorId, f32>) -> Result<()> {
        let layers = std::mem::take(&mut self.layers);
        self.layers = layers
            .into_iter()
            .map(|layer| to_int8(layer, seen))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Whether some layer computes in int8.
    pub fn is_int8(&self) -> bool {
        fn any(layers: &[LayerImpl]) -> bool {
            layers.iter().any(|l| match l {
                LayerImpl::Int8(_) => true,
                LayerImpl::Residual { body, shortcut } => {
                    any(body)
                        || shortcut
                            .as_deref()
                            .is_some_and(|s| matches!(s, LayerImpl::Int8(_)))
                }
                _ => false,
            })
        }
        any(&self.layers)
    }

    /// The int8 layers' weights, by name.
    pub fn int8_tensors(&self) -> Vec<Int8Weight> {
        fn collect<'l>(layers: &'l [LayerImpl], out: &mut Vec<&'l super::int8::Int8Layer>) {
            for layer in layers {
                match layer {
                    LayerImpl::Int8(q) => out.push(q),
                    LayerImpl::Residual { body, shortcut } => {
                        collect(body, out);
                        if let Some(LayerImpl::Int8(q)) = shortcut.as_deref() {
                            out.push(q);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut layers = Vec::new();
        collect(&self.layers, &mut layers);
        self.params
            .iter()
            .filter_map(|(name, var)| {
                let id = var.as_tensor().id();
                let q = layers.iter().find(|q| q.weight.as_tensor().id() == id)?;
                Some(Int8Weight {
                    name: name.clone(),
                    shape: var.dims().to_vec(),
                    values: q.weights.clone(),
                    scales: q.weight_scale.clone(),
                    input_scale: q.input_scale,
                })
            })
            .collect()
    }
}

/// The ids of the weights of `layers`' linear and conv2d layers (at any depth).
pub(super) fn quantizable_ids(layers: &[LayerImpl]) -> Vec<TensorId> {
    let mut ids = Vec::new();
    for layer in layers {
        match layer {
            LayerImpl::Linear { weight, .. } | LayerImpl::Conv2d { weight, .. } => {
                ids.push(weight.as_tensor().id())
            }
            LayerImpl::Residual { body, shortcut } => {
                ids.extend(quantizable_ids(body));
                if let Some(s) = shortcut {
                    ids.extend(quantizable_ids(std::slice::from_ref(&**s)));
                }
            }
            _ => {}
        }
    }
    ids
}

/// `layer` with its linear and conv2d layers (at any depth) in int8.
fn to_int8(layer: LayerImpl, seen: &HashMap<TensorId, f32>) -> Result<LayerImpl> {
    let amax = |w: &Var| {
        seen.get(&w.as_tensor().id())
            .copied()
            .ok_or_else(|| plan_error("a layer to quantise saw no calibration input".to_string()))
    };
    Ok(match layer {
        LayerImpl::Linear { weight, bias } => LayerImpl::Int8(Box::new(Int8Layer::new(
            Int8Kind::Linear,
            &weight,
            &bias,
            amax(&weight)?,
        )?)),
        LayerImpl::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let kernel = weight.dims().get(2).copied().unwrap_or(1);
            let kind = Int8Kind::Conv2d {
                stride,
                padding,
                kernel,
            };
            LayerImpl::Int8(Box::new(Int8Layer::new(
                kind,
                &weight,
                &bias,
                amax(&weight)?,
            )?))
        }
        LayerImpl::Residual { body, shortcut } => LayerImpl::Residual {
            body: body
                .into_iter()
                .map(|l| to_int8(l, seen))
                .collect::<Result<_>>()?,
            shortcut: match shortcut {
                Some(s) => Some(Box::new(to_int8(*s, seen)?)),
                None => None,
            },
        },
        other => other,
    })
}

/// A tensor for a safetensors file: its type, shape and little-endian bytes.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_raw(shape: Vec<usize>, values: &[f32]) -> Raw {
    Raw {
        dtype: safetensors::Dtype::F32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

impl Model {
    /// An int8 model as safetensors: each int8 layer's weight as `I8` under its name, with
    /// `NAME_scale` (f32, one per output channel) and the layer's `input_scale` beside it
    /// (`linear1.weight`, `linear1.weight_scale`, `linear1.input_scale`); every other tensor
    /// f32 as usual.
    pub(super) fn int8_safetensors(&self) -> Result<Vec<u8>> {
        let int8 = self.int8_tensors();
        let mut tensors: Vec<(String, Raw)> = Vec::new();
        for (name, var) in self.state() {
            if let Some(q) = int8.iter().find(|q| q.name == name) {
                tensors.push((
                    name.to_string(),
                    Raw {
                        dtype: safetensors::Dtype::I8,
                        shape: q.shape.clone(),
                        bytes: q.values.iter().map(|w| *w as u8).collect(),
                    },
                ));
                let scales = f32_raw(vec![q.scales.len()], &q.scales);
                tensors.push((format!("{name}_scale"), scales));
                let layer = name.strip_suffix(".weight").unwrap_or(name);
                let input = f32_raw(vec![1], &[q.input_scale]);
                tensors.push((format!("{layer}.input_scale"), input));
                continue;
            }
            let values = var
                .as_tensor()
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .ctx_with(|| format!("saving `{name}`"))?;
            tensors.push((name.to_string(), f32_raw(var.dims().to_vec(), &values)));
        }
        safetensors::serialize(tensors, None)
            .map_err(|e| plan_error(format!("cannot write an int8 safetensors file: {e}")))
    }
}
