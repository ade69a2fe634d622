//! A trained model's forward for kdc's own reverse pass (`crate::model::tape`): every layer runs
//! outside candle's graph and records how its input's gradient follows from its output's.
//! Layers without a backward of kdc's own run in candle's graph on their own
//! (`Backward::Local`), with the same arithmetic as the graph path.

use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use super::{conv1d_mask, dropout_mask, epilogue, ForwardContext, LayerImpl, TransformerBlock};
use crate::error::{Result, TensorContext};
use crate::model::tape::{join, Port};
use crate::model::tape::{Backward, Local, Tape};
use crate::ops::attention::{self, BlockBackward, LayerNormBackward};
use crate::ops::batch_norm::{batch_norm_taped, Statistics};
use crate::ops::dense::{dense_taped, dense_taped_with, Dense, Epilogue, Straight};
use crate::ops::recurrent::lstm_direction_taped;

/// `layers` in order from `x`, as `super::run_layers`, recording each layer's backward.
/// `want_x` says whether `x` needs a gradient (not when it is data).
pub(super) fn run_layers_taped(
    layers: &[LayerImpl],
    x: &Tensor,
    mask: &mut Option<Tensor>,
    context: &ForwardContext,
    tapped: impl Fn(usize) -> bool,
    mut visit: impl FnMut(usize, &Tensor),
    want_x: bool,
) -> Result<(Tensor, Tape)> {
    let mut tape = Tape::default();
    let mut h = x.clone();
    let mut fused = 0;
    // Gradients are needed from the first layer with parameters on.
    let mut want = want_x;
    for (index, layer) in layers.iter().enumerate() {
        if fused > 0 {
            fused -= 1;
        } else {
            let epilogue = epilogue(layers, index, (true, true), &tapped);
            fused = usize::from(epilogue.relu);
            kd_kernels::warm::keep_warm();
            let started = Instant::now();
            let (y, backward) = layer.forward_taped(&h, mask, context, epilogue, want)?;
            tape.push((index, index + fused), started.elapsed(), backward);
            want |= layer.has_params();
            h = y;
        }
        visit(index, &h);
    }
    Ok((h, tape))
}

impl LayerImpl {
    fn has_params(&self) -> bool {
        !matches!(
            self,
            LayerImpl::MaxPool { .. }
                | LayerImpl::AvgPool { .. }
                | LayerImpl::Dropout { .. }
                | LayerImpl::Flatten
                | LayerImpl::Relu
                | LayerImpl::Gelu
                | LayerImpl::Tanh
                | LayerImpl::Sigmoid
                | LayerImpl::Softmax
                | LayerImpl::Pool { .. }
        )
    }

    /// The layer's output for `x` (outside candle's graph) and its backward; `want_x` says
    /// whether `x` needs a gradient.
    fn forward_taped(
        &self,
        x: &Tensor,
        mask: &mut Option<Tensor>,
        context: &ForwardContext,
        epilogue: Epilogue,
        want_x: bool,
    ) -> Result<(Tensor, Backward)> {
        let fail = |what: &str| format!("{what} of model `{}`", context.model);
        let sink = |var: &Var| {
            context.sinks.get(var.as_tensor()).cloned().ok_or_else(|| {
                crate::error::plan_error(format!(
                    "a parameter of model `{}` has no gradient sink",
                    context.model
                ))
            })
        };
        let f32_input = x.dtype() == DType::F32;
        // A linear or convolution layer with its epilogue, as one dense op; fake-quantised
        // when the model trains quantisation-aware.
        let dense_layer = |kind: Dense, weight: &Var, bias: &Option<Var>, what: &str| {
            let (x, straight) = match context.quantized_taped(weight, x, want_x) {
                Ok(Some(q)) => {
                    let straight = Straight {
                        values: Some(q.w),
                        inside: q.inside,
                    };
                    (q.x, straight)
                }
                Ok(None) => (x.clone(), Straight::default()),
                Err(e) => return Err(e).ctx_with(|| fail("fake quantisation")),
            };
            dense_taped_with(
                kind,
                &x,
                weight.as_tensor(),
                bias.as_ref().map(Var::as_tensor),
                epilogue,
                context.sinks,
                want_x,
                straight,
            )
            .map(|(y, backward)| (y, Backward::Dense(backward)))
            .ctx_with(|| fail(what))
        };
        Ok(match self {
            LayerImpl::Embedding { weight, positions } if weight.dtype() == DType::F32 => {
                let (b, len) = x.dims2().ctx_with(|| fail("embedding"))?;
                let ids = x
                    .to_dtype(DType::U32)
                    .and_then(|ids| ids.flatten_all())
                    .ctx_with(|| fail("embedding"))?;
                let table = weight.as_tensor().detach();
                let dim = table.dim(1).ctx_with(|| fail("embedding"))?;
                let mut y = crate::ops::elementwise::embedding(&table, &ids, None)
                    .and_then(|y| y.reshape((b, len, dim)))
                    .ctx_with(|| fail("embedding"))?;
                let positions = match positions {
                    Some(p) => {
                        let rows = p.dim(0).ctx_with(|| fail("positions"))?;
                        // Every sample's [L, D] plus the first L position vectors.
                        y = crate::ops::elementwise::add_positions(&y, &p.as_tensor().detach())
                            .ctx_with(|| fail("embedding positions"))?;
                        Some((sink(p)?, rows))
                    }
                    None => None,
                };
                let backward = Backward::Embedding {
                    table,
                    ids,
                    table_sink: sink(weight)?,
                    positions,
                };
                (y, backward)
            }
            LayerImpl::Conv1d {
                weight,
                bias,
                padding,
                kernel,
            } if f32_input => {
                let y = dense_layer(Dense::Conv1d { padding: *padding }, weight, bias, "conv1d")?;
                if let Some(m) = mask.as_ref() {
                    *mask =
                        Some(conv1d_mask(m, *kernel, *padding).ctx_with(|| fail("conv1d mask"))?);
                }
                y
            }
            LayerImpl::Linear { weight, bias } if f32_input => {
                dense_layer(Dense::Linear, weight, bias, "linear")?
            }
            LayerImpl::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } if f32_input => {
                let kind = Dense::Conv2d {
                    stride: *stride,
                    padding: *padding,
                };
                dense_layer(kind, weight, bias, "conv2d")?
            }
            LayerImpl::BatchNorm(bn) if f32_input => {
                let statistics = match context.train {
                    true => Statistics::Batch {
                        running: (&bn.running_mean, &bn.running_var),
                        momentum: bn.momentum,
                    },
                    false => Statistics::Running {
                        mean: bn.running_mean.as_tensor(),
                        var: bn.running_var.as_tensor(),
                    },
                };
                let (y, backward) = batch_norm_taped(
                    x,
                    bn.weight.as_tensor(),
                    bn.bias.as_tensor(),
                    statistics,
                    bn.eps,
                    epilogue.relu,
                    context.sinks,
                    want_x,
                )
                .ctx_with(|| fail("batch norm"))?;
                (y, Backward::BatchNorm(backward))
            }
            LayerImpl::Lstm { directions } if f32_input => {
                let mut outputs = Vec::with_capacity(directions.len());
                let mut parts = Vec::with_capacity(directions.len());
                let mut hidden = 0;
                for (d, (w_ih, w_hh, bias)) in directions.iter().enumerate() {
                    hidden = w_hh.dim(1).ctx_with(|| fail("lstm"))?;
                    let (projected, projection) = dense_taped(
                        Dense::Linear,
                        x,
                        w_ih.as_tensor(),
                        Some(bias.as_tensor()),
                        Epilogue::default(),
                        context.sinks,
                        want_x,
                    )
                    .ctx_with(|| fail("lstm"))?;
                    let (y, recurrence) = lstm_direction_taped(
                        &projected,
                        w_hh.as_tensor(),
                        mask.as_ref(),
                        d == 1,
                        &sink(w_hh)?,
                    )
                    .ctx_with(|| fail("lstm"))?;
                    outputs.push(y);
                    parts.push((projection, recurrence));
                }
                let y = match outputs.len() {
                    1 => outputs.swap_remove(0),
                    _ => Tensor::cat(&outputs, 2).ctx_with(|| fail("lstm"))?,
                };
                let backward = Backward::Lstm {
                    directions: parts,
                    hidden,
                };
                (y, backward)
            }
            LayerImpl::MaxPool { kernel, stride } if f32_input && x.rank() == 4 => {
                let x = x.contiguous().ctx_with(|| fail("max pool"))?;
                let y = crate::ops::pooling::max_pool2d(&x, *kernel, *stride)
                    .ctx_with(|| fail("max pool"))?;
                let backward = Backward::MaxPool {
                    x,
                    y: y.clone(),
                    kernel: *kernel,
                    stride: *stride,
                };
                (y, backward)
            }
            LayerImpl::AvgPool { kernel, stride }
                if f32_input && crate::ops::pooling::tiles_planes(x, *kernel, *stride) =>
            {
                let (_, _, height, width) = x.dims4().ctx_with(|| fail("avg pool"))?;
                let y = crate::ops::pooling::avg_pool2d_tiled(x, *kernel)
                    .ctx_with(|| fail("avg pool"))?;
                let backward = Backward::AvgPool {
                    kernel: *kernel,
                    height,
                    width,
                };
                (y, backward)
            }
            LayerImpl::Pool {
                kind: kd_plan::SeqPool::Max,
            } if f32_input => {
                let x = x.contiguous().ctx_with(|| fail("pool"))?;
                let y = crate::ops::pooling::max_over_time(&x, mask.as_ref())
                    .ctx_with(|| fail("pool"))?;
                let backward = Backward::MaxOverTime {
                    x,
                    mask: mask.clone(),
                    y: y.clone(),
                };
                (y, backward)
            }
            LayerImpl::Pool {
                kind: kd_plan::SeqPool::Mean,
            } if f32_input && x.rank() == 3 => {
                let dims = x.dims3().ctx_with(|| fail("pool"))?;
                let y = crate::ops::pooling::mean_over_time(x, mask.as_ref())
                    .ctx_with(|| fail("pool"))?;
                let backward = Backward::MeanOverTime {
                    mask: mask.clone(),
                    dims,
                };
                (y, backward)
            }
            LayerImpl::Pool {
                kind: kd_plan::SeqPool::First,
            } if f32_input && x.rank() == 3 => {
                let dims = x.dims3().ctx_with(|| fail("pool"))?;
                let y = crate::ops::pooling::first_of_sequence(x).ctx_with(|| fail("pool"))?;
                (y, Backward::FirstOfSequence { dims })
            }
            LayerImpl::Tanh if f32_input => {
                let y = crate::ops::elementwise::tanh(x).ctx_with(|| fail("tanh"))?;
                (y.clone(), Backward::Tanh { y })
            }
            LayerImpl::Sigmoid if f32_input => {
                let y = crate::ops::elementwise::sigmoid(x).ctx_with(|| fail("sigmoid"))?;
                (y.clone(), Backward::Sigmoid { y })
            }
            LayerImpl::Softmax if f32_input => {
                let y = crate::ops::elementwise::softmax(x).ctx_with(|| fail("softmax"))?;
                (y.clone(), Backward::Softmax { y })
            }
            LayerImpl::Relu if f32_input => {
                let y = crate::ops::elementwise::relu(x).ctx_with(|| fail("relu"))?;
                (y.clone(), Backward::Relu { y })
            }
            LayerImpl::Flatten => {
                let y = x.flatten_from(1).ctx_with(|| fail("flatten"))?;
                let dims = x.dims().to_vec();
                (y, Backward::Reshape { dims })
            }
            LayerImpl::Dropout { p, name } => match dropout_mask(x, *p, name, context)? {
                Some(factor) => {
                    let y = x.mul(&factor).ctx_with(|| fail("dropout"))?;
                    (y, Backward::Scale { factor })
                }
                None => (x.clone(), Backward::Identity),
            },
            LayerImpl::Residual { body, shortcut } => {
                let (h, body_tape) = run_layers_taped(
                    body,
                    x,
                    &mut mask.clone(),
                    context,
                    |_| false,
                    |_, _| (),
                    want_x,
                )?;
                let (skip, short) = match shortcut {
                    Some(short) => {
                        let (s, b) = short.forward_taped(
                            x,
                            &mut mask.clone(),
                            context,
                            Epilogue::default(),
                            want_x,
                        )?;
                        (s, Some(Box::new(b)))
                    }
                    None => (x.clone(), None),
                };
                let y = crate::ops::elementwise::add(&h, &skip, epilogue.relu)
                    .ctx_with(|| fail("residual sum"))?;
                let backward = Backward::Residual {
                    body: body_tape,
                    shortcut: short,
                    want_x,
                    relu: epilogue.relu.then(|| y.clone()),
                };
                (y, backward)
            }
            LayerImpl::Transformer(block) if f32_input => {
                let (y, backward) = block.forward_taped(x, mask.as_ref(), context)?;
                (y, Backward::Transformer(Box::new(backward)))
            }
            LayerImpl::LayerNorm { weight, bias, eps } if f32_input => {
                let (y, backward) = layer_norm_taped(x, (weight, bias), *eps, context)
                    .ctx_with(|| fail("layernorm"))?;
                (y, Backward::LayerNorm(backward))
            }
            LayerImpl::Gelu if f32_input => {
                let y = attention::gelu(x).ctx_with(|| fail("gelu"))?;
                (y, Backward::Gelu { x: x.clone() })
            }
            // The rest in candle's graph, on their own.
            _ => self.forward_local(x, mask, context, epilogue, want_x)?,
        })
    }

    /// The layer run in candle's graph with its input as a variable (when `want_x`) and
    /// its parameters tracked.
    fn forward_local(
        &self,
        x: &Tensor,
        mask: &mut Option<Tensor>,
        context: &ForwardContext,
        epilogue: Epilogue,
        want_x: bool,
    ) -> Result<(Tensor, Backward)> {
        let tracked = ForwardContext {
            gradients: true,
            ..*context
        };
        let input = match want_x {
            true => Some(
                Var::from_tensor(&x.detach())
                    .ctx_with(|| format!("a layer of model `{}`", context.model))?,
            ),
            false => None,
        };
        let x_in = input
            .as_ref()
            .map_or_else(|| x.detach(), |v| v.as_tensor().clone());
        let y = self.forward(&x_in, mask, &tracked, epilogue)?;
        // Nothing to differentiate (no parameters, input not wanted): a constant.
        if !y.track_op() {
            return Ok((y, Backward::Stop));
        }
        let out = y.detach();
        Ok((out, Backward::Local(Local { input, output: y })))
    }
}

impl super::Model {
    /// The forward of a training step with kdc's own reverse pass: the layers outside
    /// candle's graph, their ports joined to it through `anchor` (a trained parameter).
    pub(super) fn forward_taped(
        &self,
        x: &Tensor,
        anchor: Tensor,
        context: &ForwardContext,
    ) -> Result<Vec<(String, Tensor)>> {
        // Parameters enter as constants; the tape knows their sinks.
        let untracked = ForwardContext {
            gradients: false,
            ..*context
        };
        let mut mask = match self.pad_id {
            Some(pad) => Some(
                x.ne(pad as f64)
                    .and_then(|m| m.to_dtype(DType::F32))
                    .ctx("the attention mask")?,
            ),
            None => None,
        };
        let taps = &self.taps;
        let mut ports = Vec::with_capacity(taps.len() + 1);
        let (h, mut tape) = run_layers_taped(
            &self.layers,
            &x.detach(),
            &mut mask,
            &untracked,
            |at| taps.iter().any(|(_, tap)| *tap == at),
            |index, h| {
                for (tap, _) in taps.iter().filter(|(_, at)| *at == index) {
                    ports.push((tap.clone(), Some(index), h.clone()));
                }
            },
            false,
        )?;
        ports.push(("output".to_string(), None, h));
        if let Some(times) = &self.layer_times {
            tape.report_to(times.clone());
        }
        let (names, ports): (Vec<String>, Vec<Port>) = ports
            .into_iter()
            .map(|(name, layer, value)| (name, Port { layer, value }))
            .unzip();
        let joined = join(&anchor, ports, tape, self.grad_sinks.clone())
            .ctx_with(|| format!("the outputs of model `{}`", self.name))?;
        Ok(names.into_iter().zip(joined).collect())
    }
}

/// Layer norm outside the graph with its backward (the parameters' sinks from `context`).
fn layer_norm_taped(
    x: &Tensor,
    (weight, bias): (&Var, &Var),
    eps: f64,
    context: &ForwardContext,
) -> candle_core::Result<(Tensor, LayerNormBackward)> {
    let sink = |v: &Var| context.sinks.get(v.as_tensor()).cloned();
    let w = weight.as_tensor().detach();
    let (y, stats) = attention::layer_norm(x, &w, &bias.as_tensor().detach(), eps)?;
    let backward = LayerNormBackward {
        x: x.contiguous()?,
        weight: w,
        stats,
        weight_sink: sink(weight),
        bias_sink: sink(bias),
    };
    Ok((y, backward))
}

impl TransformerBlock {
    /// The block outside candle's graph (as `TransformerBlock::forward` computes it), with
    /// its backward; the parameters' gradients go to their sinks from `context`.
    pub(super) fn forward_taped(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        context: &ForwardContext,
    ) -> Result<(Tensor, BlockBackward)> {
        let fail = || format!("transformer `{}` of model `{}`", self.name, context.model);
        let linear = |x: &Tensor, (w, b): &(Var, Var)| {
            dense_taped(
                Dense::Linear,
                x,
                w.as_tensor(),
                Some(b.as_tensor()),
                Epilogue::default(),
                context.sinks,
                true,
            )
        };
        let dropped = |t: Tensor, part: &str| -> Result<(Tensor, Option<Tensor>)> {
            let name = format!("{}.{part}", self.name);
            match dropout_mask(&t, self.dropout, &name, context)? {
                Some(m) => Ok((t.mul(&m).ctx_with(fail)?, Some(m))),
                None => Ok((t, None)),
            }
        };
        let (normed, norm1) =
            layer_norm_taped(x, (&self.norm1.0, &self.norm1.1), 1e-5, context).ctx_with(fail)?;
        let (qkv, qkv_backward) = linear(&normed, &self.qkv).ctx_with(fail)?;
        let (mixed, attention) = attention::attention(&qkv, mask, self.heads).ctx_with(fail)?;
        let (attended, out) = linear(&mixed, &self.attn_out).ctx_with(fail)?;
        let (attended, drop1) = dropped(attended, "attn")?;
        let h = x.add(&attended).ctx_with(fail)?;
        let (normed, norm2) =
            layer_norm_taped(&h, (&self.norm2.0, &self.norm2.1), 1e-5, context).ctx_with(fail)?;
        let (inner, ff1) = linear(&normed, &self.ff1).ctx_with(fail)?;
        let activated = attention::gelu(&inner).ctx_with(fail)?;
        let (fed, ff2) = linear(&activated, &self.ff2).ctx_with(fail)?;
        let (fed, drop2) = dropped(fed, "ff")?;
        let y = h.add(&fed).ctx_with(fail)?;
        let backward = BlockBackward {
            norm1,
            qkv: qkv_backward,
            attention,
            out,
            drop1,
            norm2,
            ff1,
            inner,
            ff2,
            drop2,
        };
        Ok((y, backward))
    }
}
