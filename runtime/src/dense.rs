//! A dense layer (linear, conv1d or conv2d) with its bias and an optional ReLU as one node
//! of candle's graph. Built from separate ops, every intermediate (the unfolded windows, the
//! product, the biased product, each reshape) gets its own gradient, and candle's backward
//! adds each into a freshly zeroed tensor: on text_student that was most of the backward.
//! Here the product is computed on detached tensors and one custom op adds the bias, applies
//! the ReLU and carries the backward to the input, the weight and the bias. tests/ops.rs
//! checks it against the layer built from candle's ops.

use crate::conv::{Unfold, UNFOLD_BYTES};
use crate::elementwise::{bias_gradient, contiguous_f32, relu_backward};
use crate::grad_sink::{GradSink, GradSinks};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};
use kd_kernels::elementwise as kernels;
use kd_kernels::unfold::{channels_first, Window1d, Window2d};

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

/// `act(product(x, w) + b)`, with `act` a ReLU when `relu`. The gradients of parameters
/// with a sink in `sinks` go there.
pub fn dense(
    kind: Dense,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    sinks: &GradSinks,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let product = kind.product(&x.detach(), &w.detach())?;
    let op = DenseOp {
        kind,
        product,
        relu,
        weight_sink: sinks.get(w).cloned(),
        bias_sink: b.and_then(|b| sinks.get(b)).cloned(),
    };
    match b {
        Some(b) => x.apply_op3(w, &b.contiguous()?, op),
        None => x.apply_op2(w, op),
    }
}

impl Dense {
    /// The product alone, on tensors outside the graph.
    fn product(self, x: &Tensor, w: &Tensor) -> candle_core::Result<Product> {
        match self {
            Dense::Linear => {
                let (rows, k) = linear_rows(x)?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = w.dim(0)?;
                }
                // w @ x^T: the weight as gemm's contiguous left operand measured 0.3-0.9 ms
                // faster per layer than x @ w^T on mlp_distill's shapes; the op transposes.
                let x2 = x.reshape((rows, k))?;
                Ok(Product::Transposed {
                    product: w.matmul(&x2.t()?)?,
                    dims,
                })
            }
            Dense::Conv1d { padding } => {
                let (batch, _, _) = x.dims3()?;
                let window = window1d(x, w, padding)?;
                let cols = Unfold::Conv1d(window)
                    .apply(x)?
                    .reshape((batch * window.rows(), window.row_len()))?;
                Ok(Product::Whole(
                    cols.matmul(&kernel_rows(w)?.t()?)?.reshape((
                        batch,
                        window.rows(),
                        w.dim(0)?,
                    ))?,
                ))
            }
            Dense::Conv2d { stride, padding } => {
                let batch = x.dim(0)?;
                let window = window2d(x, w, stride, padding)?;
                let out = w.dim(0)?;
                let kernel = w.reshape((out, window.row_len()))?;
                // Each chunk's product is [O, n * L']; the op moves it to NCHW (no copy here).
                let parts = chunks2d(batch, &window)
                    .into_iter()
                    .map(|(start, len)| {
                        kernel.matmul(&Unfold::Conv2d(window).apply(&x.narrow(0, start, len)?)?)
                    })
                    .collect::<candle_core::Result<_>>()?;
                Ok(Product::Conv2dChunks {
                    parts,
                    dims: vec![batch, out, window.out_height(), window.out_width()],
                })
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
                        let cols = Unfold::Conv1d(window)
                            .apply(x)?
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
                let out = w.dim(0)?;
                let kernel = w.reshape((out, window.row_len()))?;
                let g = g.reshape((batch, out, window.rows()))?;
                let mut dx_parts = Vec::new();
                let mut dw: Option<Tensor> = None;
                for (start, len) in chunks2d(batch, &window) {
                    // The chunk's gradient as [O, n * L'], the layout of the product.
                    let g = g
                        .narrow(0, start, len)?
                        .transpose(0, 1)?
                        .contiguous()?
                        .reshape((out, len * window.rows()))?;
                    if want_x {
                        let dcols = kernel.t()?.matmul(&g)?;
                        dx_parts.push(dcols.apply_op1_no_bwd(&Fold(Unfold::Conv2d(window)))?);
                    }
                    if want_w {
                        let cols = Unfold::Conv2d(window).apply(&x.narrow(0, start, len)?)?;
                        let part = g.matmul(&cols.t()?)?;
                        dw = Some(match dw {
                            Some(sum) => (sum + part)?,
                            None => part,
                        });
                    }
                }
                let dx = match want_x {
                    true if dx_parts.len() == 1 => Some(dx_parts.swap_remove(0)),
                    true => Some(Tensor::cat(&dx_parts, 0)?),
                    false => None,
                };
                let dw = dw.map(|dw| dw.reshape(w.dims())).transpose()?;
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

/// `(start, len)` of the batch chunks whose unfolded windows fit in [`UNFOLD_BYTES`].
fn chunks2d(batch: usize, window: &Window2d) -> Vec<(usize, usize)> {
    let per_sample = (window.row_len() * window.rows() * 4).max(1);
    let chunk = (UNFOLD_BYTES / per_sample).clamp(1, batch.max(1));
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

/// A dense layer's product before its bias, computed outside the graph.
enum Product {
    /// In the output's layout.
    Whole(Tensor),
    /// linear: `[N, rows]`, the transpose of the output (`dims`) as rows.
    Transposed { product: Tensor, dims: Vec<usize> },
    /// conv2d: `[O, n * H' * W']` per chunk of `n` samples, for output `dims` (NCHW).
    Conv2dChunks {
        parts: Vec<Tensor>,
        dims: Vec<usize>,
    },
}

struct DenseOp {
    kind: Dense,
    product: Product,
    relu: bool,
    weight_sink: Option<GradSink>,
    bias_sink: Option<GradSink>,
}

/// `f` on the values of `t`, a contiguous f32 CPU tensor, and its layout.
fn read_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32], &Layout) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("dense: the product is not on the CPU");
    };
    f(contiguous_f32(storage, layout)?, layout)
}

impl DenseOp {
    fn forward(&self, bias: Option<&[f32]>) -> candle_core::Result<(CpuStorage, Shape)> {
        match &self.product {
            Product::Whole(product) => read_f32(product, |z, layout| {
                let inner = self.kind.bias_inner(layout.dims());
                let y = match (bias, self.relu) {
                    (Some(b), true) => kernels::add_bias_relu(z, b, inner),
                    (Some(b), false) => kernels::add_bias(z, b, inner),
                    (None, true) => kernels::relu(z),
                    (None, false) => z.to_vec(),
                };
                Ok((CpuStorage::F32(y), layout.shape().clone()))
            }),
            Product::Transposed { product, dims } => read_f32(product, |zt, layout| {
                let (n, rows) = layout.shape().dims2()?;
                let y = kernels::transpose_bias(zt, n, rows, bias, self.relu);
                Ok((CpuStorage::F32(y), Shape::from(dims.clone())))
            }),
            Product::Conv2dChunks { parts, dims } => {
                let guards: Vec<_> = parts.iter().map(Tensor::storage_and_layout).collect();
                let values = guards
                    .iter()
                    .map(|(storage, layout)| match &**storage {
                        Storage::Cpu(storage) => contiguous_f32(storage, layout),
                        _ => candle_core::bail!("dense: the product is not on the CPU"),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let positions = dims.iter().skip(2).product();
                let y = channels_first(&values, dims[1], positions, bias, self.relu);
                Ok((CpuStorage::F32(y), Shape::from(dims.clone())))
            }
        }
    }

    /// Gradients for `x`, `w` and (with a bias) `b`, from the output `y` and its gradient.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // y > 0 exactly where the biased product is: the ReLU's mask, read from the output.
        let g = match self.relu {
            true => relu_backward(y, grad)?,
            false => grad.contiguous()?,
        };
        let db = match b {
            Some(b) if b.track_op() => {
                let inner = self.kind.bias_inner(y.dims());
                Some(bias_gradient(&g, b.elem_count(), inner)?)
            }
            _ => None,
        };
        let (dx, dw) =
            self.kind
                .backward(&x.detach(), &w.detach(), &g, x.track_op(), w.track_op())?;
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
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(Some(contiguous_f32(b, bl)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), y, grad)
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
        self.forward(None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, y, grad)?;
        Ok((dx, dw))
    }
}
