//! Batch normalisation (and a ReLU after it) as one node of candle's graph, over
//! `kd_kernels::batchnorm`: statistics in one pass, the output in another, the backward in
//! two, the parameter gradients into their sinks. Built from candle's ops it took about
//! 85% of a batch-norm CNN's training step. tests/ops.rs checks it against that
//! composition, values and gradients.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var};
use kd_kernels::batchnorm::{self as kernels, Affine, Channels, InputGradient};

use crate::ops::dense::sink;
use crate::ops::elementwise::{read_f32, Computed};
use crate::ops::grad_sink::{GradSink, GradSinks};

/// The statistics a batch norm normalises with.
pub enum Statistics<'a> {
    /// Training: the batch's own, and the running statistics `(mean, var)` to update
    /// with `momentum` (PyTorch's rule: the unbiased variance, momentum on the new value).
    Batch {
        running: (&'a Var, &'a Var),
        momentum: f64,
    },
    /// Evaluation: the running statistics.
    Running { mean: &'a Tensor, var: &'a Tensor },
}

/// `relu?(weight * (x - mean) / sqrt(var + eps) + bias)` per channel (axis 1) of an f32
/// `x`; the gradients of parameters with a sink in `sinks` go there.
pub fn batch_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    statistics: Statistics,
    eps: f64,
    relu: bool,
    sinks: &GradSinks,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let op = BatchNormOp::new(&x, weight, bias, statistics, eps, relu, sinks)?;
    x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// [`batch_norm`] outside candle's graph, for kdc's own reverse pass: the output and what
/// computes the input's gradient (when `want_x`) from the output's, the parameters'
/// gradients going to their sinks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_taped(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    statistics: Statistics,
    eps: f64,
    relu: bool,
    sinks: &GradSinks,
    want_x: bool,
) -> candle_core::Result<(Tensor, BatchNormBackward)> {
    let x = x.contiguous()?.detach();
    let op = BatchNormOp::new(&x, weight, bias, statistics, eps, relu, sinks)?;
    if op.weight_sink.is_none() || op.bias_sink.is_none() {
        candle_core::bail!("batch norm: a trained parameter without a gradient sink");
    }
    let (values, shape) = op.take_output()?;
    let y = Tensor::from_vec(values, shape, x.device())?;
    let backward = BatchNormBackward {
        op,
        x,
        weight: weight.detach(),
        y: y.clone(),
        want_x,
    };
    Ok((y, backward))
}

/// What [`batch_norm_taped`]'s backward needs.
pub(crate) struct BatchNormBackward {
    op: BatchNormOp,
    x: Tensor,
    weight: Tensor,
    y: Tensor,
    want_x: bool,
}

impl BatchNormBackward {
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (dx, _, _) = self.op.backward(
            &self.x,
            &self.weight,
            &self.y,
            grad,
            (self.want_x, true, true),
        )?;
        Ok(dx)
    }
}

impl BatchNormOp {
    fn new(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        statistics: Statistics,
        eps: f64,
        relu: bool,
        sinks: &GradSinks,
    ) -> candle_core::Result<BatchNormOp> {
        let channels = weight.elem_count();
        if x.rank() < 2 || x.dim(1)? != channels {
            candle_core::bail!(
                "batch norm of {channels} channels on an input of shape {:?}",
                x.dims()
            );
        }
        let shape = Channels {
            channels,
            inner: x.dims()[2..].iter().product(),
        };
        let (mean, var, train) = match statistics {
            Statistics::Batch { running, momentum } => {
                let (mean, var) = read_f32(x, |v| Ok(kernels::moments(v, shape)))?;
                update_running(running, &mean, &var, shape.count(x.elem_count()), momentum)?;
                (mean, var, true)
            }
            Statistics::Running { mean, var } => (f64s(mean)?, f64s(var)?, false),
        };
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let w = f64s(weight)?;
        // The kernels subtract the mean rounded to f32; what the rounding left out (`low`)
        // goes into the shift, so a channel far from zero is centred exactly.
        let centre: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let low: Vec<f64> = mean
            .iter()
            .zip(&centre)
            .map(|(&m, &c)| m - f64::from(c))
            .collect();
        let scale: Vec<f64> = w.iter().zip(&inv_std).map(|(w, s)| w * s).collect();
        let affine = Affine {
            centre,
            scale: scale.iter().map(|&k| k as f32).collect(),
            shift: f64s(bias)?
                .into_iter()
                .zip(scale.iter().zip(&low))
                .map(|(b, (k, lo))| (b - k * lo) as f32)
                .collect(),
        };
        let y = read_f32(x, |v| Ok(kernels::normalise(v, shape, &affine, relu)))?;
        Ok(BatchNormOp {
            output: Computed::new(y, x.shape().clone()),
            shape,
            centre: affine.centre,
            low,
            inv_std,
            train,
            relu,
            weight_sink: sinks.get(weight).cloned(),
            bias_sink: sinks.get(bias).cloned(),
        })
    }

    fn take_output(&self) -> candle_core::Result<(Vec<f32>, Shape)> {
        self.output.take("batch norm")
    }
}

/// The running statistics after one training batch of `count` values per channel.
fn update_running(
    (running_mean, running_var): (&Var, &Var),
    mean: &[f64],
    var: &[f64],
    count: usize,
    momentum: f64,
) -> candle_core::Result<()> {
    let unbiased = if count > 1 {
        count as f64 / (count as f64 - 1.0)
    } else {
        1.0
    };
    let blend = |old: Vec<f64>, new: &[f64], factor: f64| -> Vec<f32> {
        old.iter()
            .zip(new)
            .map(|(o, n)| ((1.0 - momentum) * o + momentum * factor * n) as f32)
            .collect()
    };
    let new_mean = blend(f64s(running_mean.as_tensor())?, mean, 1.0);
    let new_var = blend(f64s(running_var.as_tensor())?, var, unbiased);
    let device = running_mean.device();
    running_mean.set(&Tensor::from_vec(new_mean, mean.len(), device)?)?;
    running_var.set(&Tensor::from_vec(new_var, var.len(), device)?)
}

fn f64s(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()
}

struct BatchNormOp {
    /// The output, computed before the op joins the graph; candle's forward takes it.
    output: Computed,
    shape: Channels,
    /// The mean normalised with (the batch's, or the running one), rounded to f32, and
    /// what the rounding left out.
    centre: Vec<f32>,
    low: Vec<f64>,
    inv_std: Vec<f64>,
    /// Whether the statistics are the batch's, so gradients flow through them too.
    train: bool,
    relu: bool,
    weight_sink: Option<GradSink>,
    bias_sink: Option<GradSink>,
}

impl BatchNormOp {
    /// The gradients of `x`, the weight and the bias, those in `want`.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        (want_x, want_w, want_b): (bool, bool, bool),
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, grad, y) = (x.contiguous()?, grad.contiguous()?, y.contiguous()?);
        let shape = self.shape;
        let (sum_g, sum_gx) = read_f32(&x, |xv| {
            read_f32(&grad, |gv| match self.relu {
                true => read_f32(&y, |yv| {
                    Ok(kernels::backward_sums(
                        xv,
                        gv,
                        Some(yv),
                        shape,
                        &self.centre,
                    ))
                }),
                false => Ok(kernels::backward_sums(xv, gv, None, shape, &self.centre)),
            })
        })?;
        // Around the exact mean: sum(g (x - c)) - low sum(g).
        let sum_gx: Vec<f64> = sum_gx
            .iter()
            .zip(&sum_g)
            .zip(&self.low)
            .map(|((sgx, sg), lo)| sgx - lo * sg)
            .collect();
        let device = x.device();
        let channels = shape.channels;
        let dw = match want_w {
            true => {
                let dw: Vec<f32> = sum_gx
                    .iter()
                    .zip(&self.inv_std)
                    .map(|(s, i)| (s * i) as f32)
                    .collect();
                Some(Tensor::from_vec(dw, channels, device)?)
            }
            false => None,
        };
        let db = match want_b {
            true => {
                let db: Vec<f32> = sum_g.iter().map(|&s| s as f32).collect();
                Some(Tensor::from_vec(db, channels, device)?)
            }
            false => None,
        };
        let dx = match want_x {
            true => Some(self.input_gradient(&x, &grad, &y, w, &sum_g, &sum_gx)?),
            false => None,
        };
        Ok((dx, sink(dw, &self.weight_sink)?, sink(db, &self.bias_sink)?))
    }

    /// `dx = k (g - sum(g) / n - (x - mean) inv_std^2 sum(g (x - mean)) / n)` with
    /// `k = weight * inv_std` in training mode; `k g` with running statistics.
    fn input_gradient(
        &self,
        x: &Tensor,
        grad: &Tensor,
        y: &Tensor,
        w: &Tensor,
        sum_g: &[f64],
        sum_gx: &[f64],
    ) -> candle_core::Result<Tensor> {
        let n = self.shape.count(x.elem_count()).max(1) as f64;
        let k: Vec<f64> = f64s(w)?
            .iter()
            .zip(&self.inv_std)
            .map(|(w, i)| w * i)
            .collect();
        // slope (x - mean) = slope (x - c) - slope low: the second part joins the offset.
        let (slope, offset): (Vec<f32>, Vec<f32>) = match self.train {
            true => k
                .iter()
                .zip(&self.inv_std)
                .zip(sum_g.iter().zip(sum_gx))
                .zip(&self.low)
                .map(|(((k, i), (sg, sgx)), lo)| {
                    let slope = -k * i * i * sgx / n;
                    (slope as f32, (-k * sg / n - slope * lo) as f32)
                })
                .unzip(),
            false => (vec![0.0; k.len()], vec![0.0; k.len()]),
        };
        let coefs = InputGradient {
            centre: self.centre.clone(),
            scale: k.iter().map(|&k| k as f32).collect(),
            slope,
            offset,
        };
        let dx = read_f32(x, |xv| {
            read_f32(grad, |gv| match self.relu {
                true => read_f32(y, |yv| {
                    Ok(kernels::backward_input(
                        xv,
                        gv,
                        Some(yv),
                        self.shape,
                        &coefs,
                    ))
                }),
                false => Ok(kernels::backward_input(xv, gv, None, self.shape, &coefs)),
            })
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, shape) = self.take_output()?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = (x.track_op(), w.track_op(), b.track_op());
        self.backward(x, w, y, grad, want)
    }
}
