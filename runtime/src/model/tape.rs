//! kdc's own reverse pass over a trained model's layers. candle's backward adds every
//! gradient it hands to an op's input into a freshly zeroed tensor (`GradStore::or_insert`,
//! then `add`): between two layers that is an allocation and three passes over the
//! activation, which on a batch-norm CNN was about 40% of the backward. A trained model's
//! forward instead runs each layer outside candle's graph and records how to get its
//! input's gradient from its output's (a [`Backward`]); the model's ports join candle's
//! graph as one node ([`join`]) whose backward walks this tape from the last layer to the
//! first, handing gradients from layer to layer as they are, and parameters' gradients to
//! their sinks. Layers without a backward of kdc's own keep candle's graph inside the
//! layer ([`Local`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, Var};

use crate::ops::attention::{BlockBackward, LayerNormBackward};
use crate::ops::batch_norm::BatchNormBackward;
use crate::ops::dense::DenseBackward;
use crate::ops::elementwise::{map_values2, read_f32, Computed};
use crate::ops::grad_sink::{GradSink, GradSinks};
use crate::ops::recurrent::LstmBackward;
use kd_kernels::{activation, elementwise};

/// How one layer's input gradient comes from its output's.
pub(crate) enum Backward {
    /// The input needs no gradient (the layer reads data).
    Stop,
    Identity,
    Dense(DenseBackward),
    BatchNorm(BatchNormBackward),
    /// A ReLU, from its output.
    Relu {
        y: Tensor,
    },
    MaxPool {
        x: Tensor,
        y: Tensor,
        kernel: usize,
        stride: usize,
    },
    MaxOverTime {
        x: Tensor,
        mask: Option<Tensor>,
        y: Tensor,
    },
    /// Average pooling whose windows tile the plane (kernel = stride, dividing it): each
    /// window's gradient spread evenly over it.
    AvgPool {
        kernel: usize,
        height: usize,
        width: usize,
    },
    /// tanh, from its output.
    Tanh {
        y: Tensor,
    },
    /// The logistic sigmoid, from its output.
    Sigmoid {
        y: Tensor,
    },
    /// Softmax over the last axis, from its output.
    Softmax {
        y: Tensor,
    },
    /// The mean over a sequence's real positions (`dims` the input's `[B, L, C]`).
    MeanOverTime {
        mask: Option<Tensor>,
        dims: (usize, usize, usize),
    },
    /// A sequence's first position (`dims` the input's `[B, L, C]`).
    FirstOfSequence {
        dims: (usize, usize, usize),
    },
    Reshape {
        dims: Vec<usize>,
    },
    /// Elementwise scaling by a constant (dropout's mask).
    Scale {
        factor: Tensor,
    },
    /// An embedding lookup (token ids have no gradient): the table's and the position
    /// vectors' gradients go to their sinks.
    Embedding {
        table: Tensor,
        ids: Tensor,
        table_sink: GradSink,
        /// The positions' sink and their table's row count.
        positions: Option<(GradSink, usize)>,
    },
    /// Each direction's projection and recurrence; their outputs side by side.
    Lstm {
        directions: Vec<(DenseBackward, LstmBackward)>,
        hidden: usize,
    },
    LayerNorm(LayerNormBackward),
    /// GELU, from its input.
    Gelu {
        x: Tensor,
    },
    Transformer(Box<BlockBackward>),
    /// `body(x) + shortcut(x)`, with the ReLU after it when `relu` holds its output.
    Residual {
        body: Tape,
        shortcut: Option<Box<Backward>>,
        want_x: bool,
        relu: Option<Tensor>,
    },
    Local(Local),
}

/// A layer run in candle's graph on its own: its input as a variable, so that candle's
/// backward from the layer's output gives the input's and the parameters' gradients.
pub(crate) struct Local {
    pub input: Option<Var>,
    pub output: Tensor,
}

/// A model's layers' backwards, each with the indices of the first and last layer it
/// covers (a dense layer's fused ReLU makes one entry of two layers) and the time its
/// forward took.
#[derive(Default)]
pub(crate) struct Tape {
    entries: Vec<Entry>,
    /// Where the backward reports each entry's times, when the model is timed.
    timing: Option<LayerTimes>,
}

struct Entry {
    first: usize,
    last: usize,
    forward: Duration,
    backward: Backward,
}

/// One entry of a taped forward and backward: the layers it covers and their times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerTime {
    pub first: usize,
    pub last: usize,
    pub forward: Duration,
    pub backward: Duration,
}

/// Where a timed model's tapes report their [`LayerTime`]s (`kdc bench layers`).
pub(crate) type LayerTimes = Arc<Mutex<Vec<LayerTime>>>;

impl Tape {
    pub(crate) fn push(
        &mut self,
        (first, last): (usize, usize),
        forward: Duration,
        backward: Backward,
    ) {
        self.entries.push(Entry {
            first,
            last,
            forward,
            backward,
        });
    }

    /// Reports each entry's times to `times` when the backward has run.
    pub(crate) fn report_to(&mut self, times: LayerTimes) {
        self.timing = Some(times);
    }

    /// The input's gradient from the output's (`None` when the loss did not read the
    /// output) and the taps' (`(layer index, gradient)`).
    pub(crate) fn backward(
        &self,
        output: Option<Tensor>,
        taps: &[(usize, Tensor)],
        sinks: &GradSinks,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut grad = output;
        let mut times = Vec::new();
        for entry in self.entries.iter().rev() {
            for (_, g) in taps.iter().filter(|(at, _)| *at == entry.last) {
                grad = Some(match grad {
                    Some(sum) => (sum + g)?,
                    None => g.clone(),
                });
            }
            kd_kernels::warm::keep_warm();
            let started = Instant::now();
            grad = match grad {
                Some(g) => entry.backward.backward(&g, sinks)?,
                None => None,
            };
            if self.timing.is_some() {
                times.push(LayerTime {
                    first: entry.first,
                    last: entry.last,
                    forward: entry.forward,
                    backward: started.elapsed(),
                });
            }
        }
        if let Some(timing) = &self.timing {
            if let Ok(mut all) = timing.lock() {
                all.extend(times.into_iter().rev());
            }
        }
        Ok(grad)
    }
}

impl Backward {
    fn backward(&self, grad: &Tensor, sinks: &GradSinks) -> candle_core::Result<Option<Tensor>> {
        Ok(match self {
            Backward::Stop => None,
            Backward::Identity => Some(grad.clone()),
            Backward::Dense(dense) => dense.backward(grad)?,
            Backward::BatchNorm(bn) => bn.backward(grad)?,
            Backward::Relu { y } => Some(crate::ops::elementwise::relu_backward(y, grad)?),
            Backward::MaxPool {
                x,
                y,
                kernel,
                stride,
            } => Some(crate::ops::pooling::max_pool2d_grad(
                x, y, grad, *kernel, *stride,
            )?),
            Backward::MaxOverTime { x, mask, y } => Some(
                crate::ops::pooling::max_over_time_backward(x, mask.as_ref(), y, grad)?,
            ),
            Backward::AvgPool {
                kernel,
                height,
                width,
            } => Some(crate::ops::pooling::avg_pool2d_tiled_backward(
                grad,
                *kernel,
                (*height, *width),
            )?),
            Backward::Tanh { y } => Some(map_values2(y, grad, activation::tanh_backward)?),
            Backward::Sigmoid { y } => Some(map_values2(y, grad, activation::sigmoid_backward)?),
            Backward::Softmax { y } => {
                let len = y.dims().last().copied().unwrap_or(1);
                Some(map_values2(grad, y, |g, y| {
                    let mut dx = activation::parallel_copy(g);
                    activation::softmax_backward(y, &mut dx, len, 1.0);
                    dx
                })?)
            }
            Backward::MeanOverTime { mask, dims } => Some(
                crate::ops::pooling::mean_over_time_backward(grad, mask.as_ref(), *dims)?,
            ),
            Backward::FirstOfSequence { dims } => Some(
                crate::ops::pooling::first_of_sequence_backward(grad, *dims)?,
            ),
            Backward::Reshape { dims } => Some(grad.reshape(dims.as_slice())?),
            Backward::Scale { factor } => Some(grad.mul(factor)?),
            Backward::Embedding {
                table,
                ids,
                table_sink,
                positions,
            } => {
                let dim = table.dim(1)?;
                let rows = grad.elem_count() / dim.max(1);
                crate::ops::elementwise::embedding_backward(
                    table,
                    ids,
                    &grad.reshape((rows, dim))?,
                    table_sink,
                )?;
                if let Some((sink, table_rows)) = positions {
                    // [B, L, D] summed over the batch, then zeros for rows past L.
                    let batch = grad.dim(0)?;
                    let mut used = read_f32(grad, |g| Ok(elementwise::sum_over_batch(g, batch)))?;
                    used.resize(table_rows * dim, 0.0);
                    sink.add(Tensor::from_vec(used, (*table_rows, dim), grad.device())?)?;
                }
                None
            }
            Backward::Lstm { directions, hidden } => {
                let mut dx: Option<Tensor> = None;
                for (d, (projection, recurrence)) in directions.iter().enumerate() {
                    let part = match directions.len() {
                        1 => grad.clone(),
                        _ => grad.narrow(2, d * hidden, *hidden)?.contiguous()?,
                    };
                    let gates = recurrence.backward(&part)?;
                    if let Some(g) = projection.backward(&gates)? {
                        dx = Some(match dx {
                            Some(sum) => (sum + g)?,
                            None => g,
                        });
                    }
                }
                dx
            }
            Backward::Residual {
                body,
                shortcut,
                want_x,
                relu,
            } => {
                let grad = match relu {
                    Some(y) => crate::ops::elementwise::relu_backward(y, grad)?,
                    None => grad.clone(),
                };
                let through_body = body.backward(Some(grad.clone()), &[], sinks)?;
                let through_shortcut = match shortcut {
                    Some(short) => short.backward(&grad, sinks)?,
                    None => Some(grad),
                };
                match (want_x, through_body, through_shortcut) {
                    (false, _, _) => None,
                    (true, Some(a), Some(b)) => Some(crate::ops::elementwise::add(&a, &b, false)?),
                    (true, a, b) => a.or(b),
                }
            }
            Backward::LayerNorm(norm) => Some(norm.backward(grad)?),
            Backward::Gelu { x } => Some(crate::ops::attention::gelu_backward(x, grad)?),
            Backward::Transformer(block) => Some(block.backward(grad)?),
            Backward::Local(local) => local.backward(grad, sinks)?,
        })
    }
}

impl Local {
    fn backward(&self, grad: &Tensor, sinks: &GradSinks) -> candle_core::Result<Option<Tensor>> {
        let root = self.output.apply_op1(Inject(grad.clone()))?;
        let mut store = root.backward()?;
        sinks.absorb(&mut store)?;
        Ok(match &self.input {
            Some(input) => store.remove(input.as_tensor()),
            None => None,
        })
    }
}

/// A scalar whose backward hands its input a given gradient: how a backward through
/// candle's graph starts from a layer's output gradient.
struct Inject(Tensor);

impl CustomOp1 for Inject {
    fn name(&self) -> &'static str {
        "inject-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}

/// A port of the model: a tap's layer index (`None` for the output) and its value.
pub(crate) struct Port {
    pub layer: Option<usize>,
    pub value: Tensor,
}

/// The model's ports as nodes of candle's graph: one op over `anchor` (a trained
/// parameter, so that candle runs its backward) holds every port's values side by side,
/// and its backward runs `tape` with each port's gradient.
pub(crate) fn join(
    anchor: &Tensor,
    ports: Vec<Port>,
    tape: Tape,
    sinks: GradSinks,
) -> candle_core::Result<Vec<Tensor>> {
    let Some(first) = ports.first() else {
        return Ok(Vec::new());
    };
    let batch = first.value.dim(0)?;
    let flat: Vec<Tensor> = ports
        .iter()
        .map(|p| p.value.to_dtype(DType::F32)?.reshape((batch, ())))
        .collect::<candle_core::Result<_>>()?;
    let widths: Vec<usize> = flat
        .iter()
        .map(|t| t.dim(1))
        .collect::<candle_core::Result<_>>()?;
    let values: Vec<f32> = Tensor::cat(&flat, 1)?.flatten_all()?.to_vec1()?;
    let total: usize = widths.iter().sum();
    let layout: Vec<(Option<usize>, Vec<usize>)> = ports
        .iter()
        .map(|p| (p.layer, p.value.dims().to_vec()))
        .collect();
    let op = Join {
        values: Computed::new(values, Shape::from((batch, total))),
        ports: layout.clone(),
        widths: widths.clone(),
        tape,
        sinks,
    };
    let joined = anchor.apply_op1(op)?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(layout.len());
    for ((_, dims), width) in layout.iter().zip(&widths) {
        out.push(joined.narrow(1, offset, *width)?.reshape(dims.as_slice())?);
        offset += width;
    }
    Ok(out)
}

struct Join {
    values: Computed,
    ports: Vec<(Option<usize>, Vec<usize>)>,
    widths: Vec<usize>,
    tape: Tape,
    sinks: GradSinks,
}

impl CustomOp1 for Join {
    fn name(&self) -> &'static str {
        "model-ports"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.values.storage("model ports")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut output = None;
        let mut taps = Vec::new();
        let mut offset = 0;
        for ((layer, dims), width) in self.ports.iter().zip(&self.widths) {
            let g = grad
                .narrow(1, offset, *width)?
                .contiguous()?
                .reshape(dims.as_slice())?;
            offset += width;
            match layer {
                Some(at) => taps.push((*at, g)),
                None => output = Some(g),
            }
        }
        self.tape.backward(output, &taps, &self.sinks)?;
        Ok(None)
    }
}
