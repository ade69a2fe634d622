//! A dense layer (linear, conv1d or conv2d) with its bias and an optional ReLU as one node
//! of candle's graph. Built from separate ops, every intermediate (the unfolded windows, the
//! product, the biased product, each reshape) gets its own gradient, and candle's backward
//! adds each into a freshly zeroed tensor: on text_student that was most of the backward.
//! Here the output (the product, the bias, the ReLU and, for a frozen conv2d, a following
//! max pool) is computed on detached tensors, and one custom op puts it in the graph and
//! carries the backward to the input, the weight and the bias. tests/ops.rs checks it
//! against the layer built from candle's ops.

use crate::conv::{windows1d, Unfold, Windows2d, PRODUCT_BYTES, UNFOLD_BYTES};
use crate::elementwise::{bias_gradient, contiguous_f32, read_f32, relu_backward, Computed};
use crate::grad_sink::{GradSink, GradSinks};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use kd_kernels::elementwise as kernels;
use kd_kernels::unfold::{channels_first, channels_last, Output2d, Window1d, Window2d};

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
    let x = x.contiguous()?;
    let b = b.map(Tensor::contiguous).transpose()?;
    let op = DenseOp::new(kind, &x, w, b.as_ref(), epilogue, sinks)?;
    match b {
        Some(b) => x.apply_op3(w, &b, op),
        None => x.apply_op2(w, op),
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
    if epilogue.max_pool.is_some() {
        candle_core::bail!("dense: a fused max pool has no backward");
    }
    let x = x.contiguous()?.detach();
    let b = b.map(Tensor::contiguous).transpose()?;
    // The sinks are found by the parameters' own tensors; the op keeps detached ones.
    let op = DenseOp::new(kind, &x, w, b.as_ref(), epilogue, sinks)?;
    let (w, b) = (w.detach(), b.map(|b| b.detach()));
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
        Ok(dx)
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
                // w @ x^T: the weight as gemm's contiguous left operand measured 0.3-0.9 ms
                // faster per layer than x @ w^T on mlp_distill's shapes; the pass transposes.
                let product = w.matmul(&x.reshape((rows, k))?.t()?)?;
                let n = w.dim(0)?;
                let y = with_values(b, |bias| {
                    read_f32(&product, |zt| {
                        Ok(kernels::transpose_bias(zt, n, rows, bias, epilogue.relu))
                    })
                })?;
                Ok((y, Shape::from(dims)))
            }
            Dense::Conv1d { padding } => {
                let (batch, _, _) = x.dims3()?;
                let window = window1d(x, w, padding)?;
                let product = windows1d(x, window)?
                    .reshape((batch * window.rows(), window.row_len()))?
                    .matmul(&kernel_rows(w)?.t()?)?;
                let y = with_values(b, |bias| {
                    read_f32(&product, |z| {
                        Ok(match (bias, epilogue.relu) {
                            (Some(b), true) => kernels::add_bias_relu(z, b, 1),
                            (Some(b), false) => kernels::add_bias(z, b, 1),
                            (None, true) => kernels::relu(z),
                            (None, false) => z.to_vec(),
                        })
                    })
                })?;
                Ok((y, Shape::from((batch, window.rows(), w.dim(0)?))))
            }
            Dense::Conv2d { stride, padding } => {
                let batch = x.dim(0)?;
                let window = window2d(x, w, stride, padding)?;
                let geometry = Output2d {
                    channels: w.dim(0)?,
                    height: window.out_height(),
                    width: window.out_width(),
                    max_pool: epilogue.max_pool,
                };
                if let Some((k, _)) = epilogue.max_pool {
                    let (height, width) = (geometry.height, geometry.width);
                    if k > height || k > width {
                        candle_core::bail!(
                            "pooling window {k} larger than the input {height}x{width}"
                        );
                    }
                }
                let kernel = kernel_rows2d(w)?.t()?;
                let sample_len = geometry.sample_len();
                let mut y = vec![0f32; batch * sample_len];
                // Chunk by chunk: each product ([n * H' * W', O]) goes to its place in the
                // output while it is still in cache.
                let chunks = chunks2d(batch, &window, geometry.channels);
                let windows = Windows2d::new(window, x, chunks.first().map_or(0, |c| c.1))?;
                for (start, len) in chunks {
                    let product = windows.unfold(x, start, len)?.matmul(&kernel)?;
                    let out = &mut y[start * sample_len..(start + len) * sample_len];
                    with_values(b, |bias| {
                        read_f32(&product, |z| {
                            channels_first(z, out, &geometry, bias, epilogue.relu);
                            Ok(())
                        })
                    })?;
                }
                let (height, width) = geometry.written();
                Ok((y, Shape::from((batch, geometry.channels, height, width))))
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
                let (batch, _, channels) = x.dims3()?;
                let window = window1d(x, w, padding)?;
                let (out, _, kernel) = w.dims3()?;
                let g = g.reshape((batch * window.rows(), out))?;
                let dx = match want_x {
                    true => Some(
                        g.matmul(&kernel_rows(w)?)?
                            .reshape((batch, window.rows(), window.row_len()))?
                            .apply_op1_no_bwd(&Fold(Unfold::Conv1d(window)))?,
                    ),
                    false => None,
                };
                let dw = match want_w {
                    true => {
                        let cols = windows1d(x, window)?
                            .reshape((batch * window.rows(), window.row_len()))?;
                        // Rows hold a window frame by frame: [O, k, C] back to [O, C, k].
                        Some(
                            g.t()?
                                .matmul(&cols)?
                                .reshape((out, kernel, channels))?
                                .permute((0, 2, 1))?
                                .contiguous()?,
                        )
                    }
                    false => None,
                };
                Ok((dx, dw))
            }
            Dense::Conv2d { stride, padding } => {
                let batch = x.dim(0)?;
                let window = window2d(x, w, stride, padding)?;
                // Stride 1: the input gradient is the output gradient convolved with the
                // flipped kernel (padding k - 1 - p), through the forward's fast path: its
                // products are O k k long instead of O, and nothing is folded back.
                let (want_x, flipped_dx) = match (want_x, stride, window.kernel) {
                    (true, 1, k) if padding < k => {
                        let flipped = Dense::Conv2d {
                            stride: 1,
                            padding: k - 1 - padding,
                        };
                        let (dx, shape) =
                            flipped.output(g, &flipped_kernel(w)?, None, Epilogue::default())?;
                        if shape.dims() != x.dims() {
                            candle_core::bail!(
                                "conv2d: the input gradient came out {:?} for an input {:?}",
                                shape.dims(),
                                x.dims()
                            );
                        }
                        (false, Some(Tensor::from_vec(dx, shape, x.device())?))
                    }
                    _ => (want_x, None),
                };
                if !want_x && !want_w {
                    return Ok((flipped_dx, None));
                }
                let kernel = kernel_rows2d(w)?;
                let mut dx_parts = Vec::new();
                let mut dw: Option<Tensor> = None;
                let chunks = chunks2d(batch, &window, w.dim(0)?);
                let windows = match want_w {
                    true => Some(Windows2d::new(
                        window,
                        x,
                        chunks.first().map_or(0, |c| c.1),
                    )?),
                    false => None,
                };
                for (start, len) in chunks {
                    // The chunk's gradient as [n * H' * W', O], the layout of the product.
                    let g = g.narrow(0, start, len)?.apply_op1_no_bwd(&ChannelsLast)?;
                    if want_x {
                        let dcols = g.matmul(&kernel)?;
                        dx_parts.push(dcols.apply_op1_no_bwd(&Fold(Unfold::Conv2d(window)))?);
                    }
                    if let Some(windows) = &windows {
                        let cols = windows.unfold(x, start, len)?;
                        // cols^T @ g, [k * k * C, O]: 2.3x faster than g^T @ cols for
                        // the student's first layer (C = 1), 1.2x for its second.
                        let part = cols.t()?.matmul(&g)?;
                        dw = Some(match dw {
                            Some(sum) => (sum + part)?,
                            None => part,
                        });
                    }
                }
                let dx = match want_x {
                    true if dx_parts.len() == 1 => Some(dx_parts.swap_remove(0)),
                    true => Some(Tensor::cat(&dx_parts, 0)?),
                    false => flipped_dx,
                };
                // [k * k * C, O] back to [O, C, k, k].
                let (out, channels, k, _) = w.dims4()?;
                let dw = dw
                    .map(|dw| {
                        dw.reshape((k, k, channels, out))?
                            .permute((3, 2, 0, 1))?
                            .contiguous()
                    })
                    .transpose()?;
                Ok((dx, dw))
            }
        }
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

/// `(start, len)` of the batch chunks whose unfolded windows fit in [`UNFOLD_BYTES`] and
/// whose product (`out` channels) fits in [`PRODUCT_BYTES`].
fn chunks2d(batch: usize, window: &Window2d, out: usize) -> Vec<(usize, usize)> {
    let unfolded = (window.row_len() * window.rows() * 4).max(1);
    let product = (out * window.rows() * 4).max(1);
    let chunk = (UNFOLD_BYTES / unfolded)
        .min(PRODUCT_BYTES / product)
        .clamp(1, batch.max(1));
    (0..batch)
        .step_by(chunk)
        .map(|start| (start, chunk.min(batch - start)))
        .collect()
}

/// Folds unfolded-window gradients back onto the input (outside the graph).
struct Fold(Unfold);

impl candle_core::CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.fold(s, l)
    }
}

/// `[B, C, H, W]` as `[B * H * W, C]`, outside the graph.
struct ChannelsLast;

impl candle_core::CustomOp1 for ChannelsLast {
    fn name(&self) -> &'static str {
        "channels-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l.shape().dims4()?;
        let positions = height * width;
        Ok((
            CpuStorage::F32(channels_last(contiguous_f32(s, l)?, channels, positions)),
            Shape::from((batch * positions, channels)),
        ))
    }
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
