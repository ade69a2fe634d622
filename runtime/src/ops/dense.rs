//! A dense layer (linear, conv1d or conv2d) with its bias and an optional ReLU as one node
//! of candle's graph. Built from separate ops, every intermediate (the unfolded windows, the
//! product, the biased product, each reshape) gets its own gradient, and candle's backward
//! adds each into a freshly zeroed tensor: on text_student that was most of the backward.
//! Here the output (the product, the bias, the ReLU and, for a frozen conv2d, a following
//! max pool) is computed on detached tensors, and one custom op puts it in the graph and
//! carries the backward to the input, the weight and the bias. tests/ops.rs checks it
//! against the layer built from candle's ops.

use crate::ops::elementwise::{bias_gradient, read_f32, relu_backward, Computed};
use crate::ops::grad_sink::{GradSink, GradSinks};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use kd_kernels::conv1d::{conv1d, conv1d_input_grad, conv1d_weight_grad};
use kd_kernels::conv2d::{conv2d, conv2d_input_grad, conv2d_weight_grad, ConvEpilogue};
use kd_kernels::elementwise as kernels;
use kd_kernels::unfold::{Window1d, Window2d};

/// Which product the layer computes.
#[derive(Clone, Copy, Debug)]
pub enum Dense {
    /// `x` `[..., K]` times `w^T`, `w` `[N, K]`.
    Linear,
    /// `x` `[B, L, C]` (channels last) with `w` `[O, C, k]`, stride 1.
    Conv1d { padding: usize },
    /// `x` `[B, C, H, W]` with `w` `[O, C, k, k]`.
    Conv2d { stride: usize, padding: usize },
}

/// What a dense layer's output pass applies after the bias.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    pub relu: bool,
    /// A following max pool's `(kernel, stride)`, for conv2d on a forward without
    /// gradients (a frozen teacher, evaluation): the op has no backward through it, and
    /// the unpooled output is never stored.
    pub max_pool: Option<(usize, usize)>,
}

impl Epilogue {
    pub const RELU: Epilogue = Epilogue {
        relu: true,
        max_pool: None,
    };
}

/// `act(product(x, w) + b)`, with `act` the epilogue's ReLU and max pool. The gradients of
/// parameters with a sink in `sinks` go there.
pub fn dense(
    kind: Dense,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
    sinks: &GradSinks,
) -> candle_core::Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || b.is_some_and(Tensor::track_op);
    if epilogue.max_pool.is_some() && (tracked || !matches!(kind, Dense::Conv2d { .. })) {
        candle_core::bail!("dense: a max pool joins only a conv2d outside the graph");
    }
    if !crate::ops::kernels_apply(x) {
        if epilogue.max_pool.is_some() {
            candle_core::bail!("dense: a max pool joins a conv2d only on kdc's CPU kernels");
        }
        return composed(kind, x, w, b, epilogue.relu);
    }
    let x = x.contiguous()?;
    let b = b.map(Tensor::contiguous).transpose()?;
    let op = DenseOp::new(kind, &x, w, b.as_ref(), epilogue, sinks)?;
    match b {
        Some(b) => x.apply_op3(w, &b, op),
        None => x.apply_op2(w, op),
    }
}

/// The layer from candle's ops, for every device and float type; the conv1d as its windows
/// unfolded into one product (candle 0.11's conv1d kernel gradient is wrong).
pub fn composed(
    kind: Dense,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let (y, channel_axis) = match kind {
        Dense::Linear => {
            let w = w.t()?;
            let y = match x.rank() {
                2 => x.matmul(&w)?,
                _ => x.broadcast_matmul(&w)?,
            };
            (y, None)
        }
        Dense::Conv1d { padding } => {
            let (batch, len, channels) = x.dims3()?;
            let (out, _, kernel) = w.dims3()?;
            let padded = x.pad_with_zeros(1, padding, padding)?;
            let steps = (len + 2 * padding + 1).saturating_sub(kernel);
            // [B, L', C, k]: tap j of every window, matching w's [O, C, k] layout.
            let taps: Vec<Tensor> = (0..kernel)
                .map(|j| padded.narrow(1, j, steps))
                .collect::<candle_core::Result<_>>()?;
            let windows = Tensor::stack(&taps, 3)?.reshape((batch, steps, channels * kernel))?;
            let w = w.reshape((out, channels * kernel))?.t()?;
            (windows.broadcast_matmul(&w)?, None)
        }
        // candle 0.11 has no bf16 convolution on the CPU; its bf16 matmul there widens to
        // f32 and rounds the result, so the convolution does the same (as bf16 hardware
        // accumulates in f32).
        Dense::Conv2d { stride, padding }
            if x.dtype() == candle_core::DType::BF16 && x.device().is_cpu() =>
        {
            let f32 = candle_core::DType::F32;
            let y = x
                .to_dtype(f32)?
                .conv2d(&w.to_dtype(f32)?, padding, stride, 1, 1)?
                .to_dtype(x.dtype())?;
            (y, Some(1))
        }
        Dense::Conv2d { stride, padding } => (x.conv2d(w, padding, stride, 1, 1)?, Some(1)),
    };
    let y = match (b, channel_axis) {
        (Some(b), Some(axis)) => {
            let mut shape = vec![1; y.rank()];
            shape[axis] = b.elem_count();
            y.broadcast_add(&b.reshape(shape)?)?
        }
        (Some(b), None) => y.broadcast_add(b)?,
        (None, _) => y,
    };
    if relu {
        crate::ops::elementwise::relu_composed(&y)
    } else {
        Ok(y)
    }
}

/// [`dense`] outside candle's graph, for kdc's own reverse pass: the output and what
/// computes the input's gradient (when `want_x`) from the output's, the parameters'
/// gradients going to their sinks (`w` and `b` are the parameters' own tensors).
pub(crate) fn dense_taped(
    kind: Dense,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
    sinks: &GradSinks,
    want_x: bool,
) -> candle_core::Result<(Tensor, DenseBackward)> {
    dense_taped_with(kind, x, w, b, epilogue, sinks, want_x, Straight::default())
}

/// What a fake-quantised layer computes with in place of its own operands.
#[derive(Default)]
pub(crate) struct Straight {
    /// The weight's values (its gradient goes to the weight's sink as it comes).
    pub values: Option<Tensor>,
    /// Where the input's gradient passes (1) and where it stops (0).
    pub inside: Option<Tensor>,
}

/// [`dense_taped`] computing with `straight`'s weight values in `w`'s place, the input's
/// gradient masked by `straight.inside`: a straight-through estimator for quantisation-aware
/// training (`x` is then already fake-quantised).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_taped_with(
    kind: Dense,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
    sinks: &GradSinks,
    want_x: bool,
    straight: Straight,
) -> candle_core::Result<(Tensor, DenseBackward)> {
    if epilogue.max_pool.is_some() {
        candle_core::bail!("dense: a fused max pool has no backward");
    }
    let x = x.contiguous()?.detach();
    let b = b.map(Tensor::contiguous).transpose()?;
    let values = straight.values.as_ref().unwrap_or(w);
    // The sinks are found by the parameters' own tensors; the op keeps detached ones.
    let mut op = DenseOp::new(kind, &x, values, b.as_ref(), epilogue, sinks)?;
    op.weight_sink = sinks.get(w).cloned();
    let (w, b) = (values.detach(), b.map(|b| b.detach()));
    let (values, shape) = op.forward()?;
    let CpuStorage::F32(values) = values else {
        candle_core::bail!("dense: the output is not f32");
    };
    let y = Tensor::from_vec(values, shape, x.device())?;
    let backward = DenseBackward {
        op,
        x,
        w,
        b,
        y: y.clone(),
        want_x,
        inside: straight.inside,
    };
    Ok((y, backward))
}

/// What [`dense_taped`]'s backward needs.
pub(crate) struct DenseBackward {
    op: DenseOp,
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    y: Tensor,
    want_x: bool,
    /// Multiplies the input's gradient (see [`Straight`]).
    inside: Option<Tensor>,
}

impl DenseBackward {
    /// The input's gradient (when wanted) from the output's; the parameters' go to sinks.
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.op.weight_sink.is_none() || (self.b.is_some() && self.op.bias_sink.is_none()) {
            candle_core::bail!("dense: a trained parameter without a gradient sink");
        }
        let want = Want {
            x: self.want_x,
            w: true,
            b: self.b.is_some(),
        };
        let (dx, _, _) =
            self.op
                .backward(&self.x, &self.w, self.b.as_ref(), &self.y, grad, want)?;
        match (dx, &self.inside) {
            (Some(dx), Some(inside)) => Ok(Some(dx.mul(inside)?)),
            (dx, _) => Ok(dx),
        }
    }
}

/// Which gradients a backward computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Want {
    pub x: bool,
    pub w: bool,
    pub b: bool,
}

impl Dense {
    /// The layer's output values and shape, computed on tensors outside the graph: the
    /// product, then the bias and the epilogue in the pass that puts it in its layout.
    fn output(
        self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        epilogue: Epilogue,
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        match self {
            Dense::Linear => {
                let (rows, k) = linear_rows(x)?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = w.dim(0)?;
                }
                let n = w.dim(0)?;
                let x = x.reshape((rows, k))?;
                let y = match rows > n {
                    // More rows than outputs (a sequence's tokens): x @ w^T, already in the
                    // output's layout. linear(256) on [1536, 64]: 0.15 ms against 0.27 ms
                    // for w @ x^T, which then needs a transposing pass as well.
                    true => read_f32(&x.matmul(&w.t()?)?, |z| {
                        with_values(b, |bias| Ok(bias_relu(z, bias, 1, epilogue.relu)))
                    })?,
                    // w @ x^T: the weight as gemm's contiguous left operand measured
                    // 0.3-0.9 ms faster per layer than x @ w^T on mlp_distill's shapes;
                    // the pass transposes.
                    false => with_values(b, |bias| {
                        read_f32(&w.matmul(&x.t()?)?, |zt| {
                            Ok(kernels::transpose_bias(zt, n, rows, bias, epilogue.relu))
                        })
                    })?,
                };
                Ok((y, Shape::from(dims)))
            }
            Dense::Conv1d { padding } => {
                let (batch, _, _) = x.dims3()?;
                let window = window1d(x, w, padding)?;
                let out = w.dim(0)?;
                let y = read_f32(x, |xs| {
                    read_f32(&kernel_rows(w)?, |kernel| {
                        with_values(b, |bias| {
                            Ok(conv1d(xs, &window, kernel, out, bias, epilogue.relu))
                        })
                    })
                })?;
                Ok((y, Shape::from((batch, window.rows(), out))))
            }
            Dense::Conv2d { stride, padding } => {
                let batch = x.dim(0)?;
                let window = window2d(x, w, stride, padding)?;
                let out_channels = w.dim(0)?;
                let (height, width) = match epilogue.max_pool {
                    Some((k, s)) => {
                        let (height, width) = (window.out_height(), window.out_width());
                        if k > height || k > width {
                            candle_core::bail!(
                                "pooling window {k} larger than the input {height}x{width}"
                            );
                        }
                        ((height - k) / s.max(1) + 1, (width - k) / s.max(1) + 1)
                    }
                    None => (window.out_height(), window.out_width()),
                };
                let mut y = vec![0f32; batch * out_channels * height * width];
                read_f32(x, |xs| {
                    read_f32(&kernel_rows2d(w)?, |kernel| {
                        with_values(b, |bias| {
                            let epilogue = ConvEpilogue {
                                bias,
                                relu: epilogue.relu,
                                max_pool: epilogue.max_pool,
                            };
                            conv2d(xs, &window, kernel, out_channels, &epilogue, &mut y);
                            Ok(())
                        })
                    })
                })?;
                Ok((y, Shape::from((batch, out_channels, height, width))))
            }
        }
    }

    /// Values each bias value covers in a row of the output (its positions after the
    /// channel axis).
    fn bias_inner(self, dims: &[usize]) -> usize {
        match self {
            Dense::Linear | Dense::Conv1d { .. } => 1,
            Dense::Conv2d { .. } => dims.iter().skip(2).product(),
        }
    }

    /// The gradients of the product for the input (when `want_x`) and the weight (when
    /// `want_w`), from the product's gradient `g`.
    fn backward(
        self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
        want_x: bool,
        want_w: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        match self {
            Dense::Linear => {
                let (rows, k) = linear_rows(x)?;
                let g = g.reshape((rows, w.dim(0)?))?;
                let dx = match want_x {
                    true => Some(g.matmul(w)?.reshape(x.dims())?),
                    false => None,
                };
                let dw = match want_w {
                    true => Some(g.t()?.matmul(&x.reshape((rows, k))?)?),
                    false => None,
                };
                Ok((dx, dw))
            }
            Dense::Conv1d { padding } => {
                let (_, _, channels) = x.dims3()?;
                let window = window1d(x, w, padding)?;
                let (out, _, kernel) = w.dims3()?;
                let dx = match want_x {
                    true => {
                        let dx = read_f32(g, |grad| {
                            read_f32(&kernel_rows(w)?, |rows| {
                                Ok(conv1d_input_grad(grad, &window, rows, out))
                            })
                        })?;
                        Some(Tensor::from_vec(dx, x.dims(), x.device())?)
                    }
                    false => None,
                };
                let dw = match want_w {
                    true => {
                        let dw = read_f32(x, |xs| {
                            read_f32(g, |grad| Ok(conv1d_weight_grad(xs, &window, grad, out)))
                        })?;
                        // Rows hold a window frame by frame: [O, k, C] back to [O, C, k].
                        Some(
                            Tensor::from_vec(dw, (out, kernel, channels), w.device())?
                                .permute((0, 2, 1))?
                                .contiguous()?,
                        )
                    }
                    false => None,
                };
                Ok((dx, dw))
            }
            Dense::Conv2d { stride, padding } => {
                let window = window2d(x, w, stride, padding)?;
                let out_channels = w.dim(0)?;
                let g = g.contiguous()?;
                let dx = match (want_x, stride, window.kernel) {
                    (false, _, _) => None,
                    // Stride 1: the input gradient is the output gradient convolved with
                    // the flipped kernel (padding k - 1 - p), through the forward: its
                    // products are O k k long instead of O, and nothing is folded back.
                    (true, 1, k) if padding < k => {
                        let flipped = Dense::Conv2d {
                            stride: 1,
                            padding: k - 1 - padding,
                        };
                        let (dx, shape) =
                            flipped.output(&g, &flipped_kernel(w)?, None, Epilogue::default())?;
                        if shape.dims() != x.dims() {
                            candle_core::bail!(
                                "conv2d: the input gradient came out {:?} for an input {:?}",
                                shape.dims(),
                                x.dims()
                            );
                        }
                        Some(Tensor::from_vec(dx, shape, x.device())?)
                    }
                    (true, _, _) => {
                        let dx = read_f32(&g, |grad| {
                            read_f32(&kernel_rows2d(w)?, |kernel| {
                                Ok(conv2d_input_grad(grad, &window, kernel, out_channels))
                            })
                        })?;
                        Some(Tensor::from_vec(dx, x.dims(), x.device())?)
                    }
                };
                let dw = match want_w {
                    true => {
                        let dw = read_f32(x, |xs| {
                            read_f32(&g, |grad| {
                                Ok(conv2d_weight_grad(xs, &window, grad, out_channels))
                            })
                        })?;
                        // [O, k * k * C] back to [O, C, k, k].
                        let (out, channels, k, _) = w.dims4()?;
                        Some(
                            Tensor::from_vec(dw, (out, k, k, channels), w.device())?
                                .permute((0, 3, 1, 2))?
                                .contiguous()?,
                        )
                    }
                    false => None,
                };
                Ok((dx, dw))
            }
        }
    }
}

/// `z` with `bias` added (each value covering `inner` values) and, when `relu`, negative
/// values zeroed.
fn bias_relu(z: &[f32], bias: Option<&[f32]>, inner: usize, relu: bool) -> Vec<f32> {
    match (bias, relu) {
        (Some(b), true) => kernels::add_bias_relu(z, b, inner),
        (Some(b), false) => kernels::add_bias(z, b, inner),
        (None, true) => kernels::relu(z),
        (None, false) => z.to_vec(),
    }
}

fn linear_rows(x: &Tensor) -> candle_core::Result<(usize, usize)> {
    let Some((&k, lead)) = x.dims().split_last() else {
        candle_core::bail!("linear: a scalar input");
    };
    Ok((lead.iter().product(), k))
}

fn window1d(x: &Tensor, w: &Tensor, padding: usize) -> candle_core::Result<Window1d> {
    let (_, length, channels) = x.dims3()?;
    let (_, _, kernel) = w.dims3()?;
    Ok(Window1d {
        length,
        channels,
        kernel,
        padding,
    })
}

fn window2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Window2d> {
    let (_, channels, height, width) = x.dims4()?;
    let (_, _, kernel, _) = w.dims4()?;
    Ok(Window2d {
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
    })
}

/// A conv1d kernel `[O, C, k]` as the rows the unfolded windows meet: `[O, k * C]`.
fn kernel_rows(w: &Tensor) -> candle_core::Result<Tensor> {
    let (out, channels, kernel) = w.dims3()?;
    w.permute((0, 2, 1))?
        .contiguous()?
        .reshape((out, kernel * channels))
}

/// The kernel of a stride-1 conv2d's input gradient: `[O, C, k, k]` to `[C, O, k, k]`,
/// each `k x k` window turned by 180 degrees.
fn flipped_kernel(w: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, k, _) = w.dims4()?;
    let reversed: Vec<u32> = (0..k as u32).rev().collect();
    let reversed = Tensor::from_vec(reversed, k, w.device())?;
    w.transpose(0, 1)?
        .contiguous()?
        .index_select(&reversed, 2)?
        .index_select(&reversed, 3)?
        .contiguous()
}

/// A conv2d kernel `[O, C, k, k]` as the rows the unfolded windows meet: `[O, k * k * C]`.
fn kernel_rows2d(w: &Tensor) -> candle_core::Result<Tensor> {
    let (out, channels, k, _) = w.dims4()?;
    w.permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((out, k * k * channels))
}

struct DenseOp {
    kind: Dense,
    /// The output, computed before the op joins the graph; candle's forward takes it.
    output: Computed,
    relu: bool,
    weight_sink: Option<GradSink>,
    bias_sink: Option<GradSink>,
}

/// `f` on the values of `t` when there is one.
fn with_values<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    match t {
        Some(t) => read_f32(t, |values| f(Some(values))),
        None => f(None),
    }
}

impl DenseOp {
    fn new(
        kind: Dense,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        epilogue: Epilogue,
        sinks: &GradSinks,
    ) -> candle_core::Result<DenseOp> {
        let output = {
            let bias = b.map(Tensor::detach);
            kind.output(&x.detach(), &w.detach(), bias.as_ref(), epilogue)?
        };
        Ok(DenseOp {
            kind,
            output: Computed::new(output.0, output.1),
            relu: epilogue.relu,
            weight_sink: sinks.get(w).cloned(),
            bias_sink: b.and_then(|b| sinks.get(b)).cloned(),
        })
    }

    fn forward(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.storage("dense")
    }

    /// Gradients for `x`, `w` and (with a bias) `b`, from the output `y` and its gradient.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
        grad: &Tensor,
        want: Want,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // y > 0 exactly where the biased product is: the ReLU's mask, read from the output.
        let g = match self.relu {
            true => relu_backward(y, grad)?,
            false => grad.contiguous()?,
        };
        let db = match b {
            Some(b) if want.b => {
                let inner = self.kind.bias_inner(y.dims());
                Some(bias_gradient(&g, b.elem_count(), inner)?)
            }
            _ => None,
        };
        let (dx, dw) = self
            .kind
            .backward(&x.detach(), &w.detach(), &g, want.x, want.w)?;
        Ok((dx, sink(dw, &self.weight_sink)?, sink(db, &self.bias_sink)?))
    }
}

/// `grad` for candle, or `None` once it is in `sink`.
pub(crate) fn sink(
    grad: Option<Tensor>,
    sink: &Option<GradSink>,
) -> candle_core::Result<Option<Tensor>> {
    match (grad, sink) {
        (Some(grad), Some(sink)) => sink.add(grad).map(|()| None),
        (grad, _) => Ok(grad),
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
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
        self.forward()
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = Want {
            x: x.track_op(),
            w: w.track_op(),
            b: b.track_op(),
        };
        self.backward(x, w, Some(b), y, grad, want)
    }
}

impl CustomOp2 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward()
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want = Want {
            x: x.track_op(),
            w: w.track_op(),
            b: false,
        };
        let (dx, dw, _) = self.backward(x, w, None, y, grad, want)?;
        Ok((dx, dw))
    }
}
