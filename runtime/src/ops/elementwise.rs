//! ReLU and the embedding lookup as candle custom ops over `kd_kernels::elementwise`, and
//! the bias and ReLU gradients `crate::ops::dense` uses: one pass each way instead of candle's
//! several (tests/ops.rs checks them against candle's).

use std::sync::Mutex;

use crate::ops::grad_sink::GradSink;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};
use kd_kernels::elementwise as kernels;

/// The values of a contiguous f32 CPU tensor, without a copy: what every custom op here
/// and in `conv.rs` / `pooling.rs` reads.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("expected a contiguous f32 tensor"),
    }
}

/// `f` on the values of `t`, an f32 CPU tensor (made contiguous first when it is not).
pub(crate) fn read_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("expected a tensor on the CPU");
    };
    f(contiguous_f32(storage, layout)?)
}

/// `f` of `x`'s values as a tensor of `x`'s shape, outside the graph.
pub(crate) fn map_values(
    x: &Tensor,
    f: impl FnOnce(&[f32]) -> Vec<f32>,
) -> candle_core::Result<Tensor> {
    let values = read_f32(x, |v| Ok(f(v)))?;
    Tensor::from_vec(values, x.dims(), x.device())
}

/// `f` of the values of `a` and `b` (the same number) as a tensor of `a`'s shape, outside
/// the graph.
pub(crate) fn map_values2(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
) -> candle_core::Result<Tensor> {
    if a.elem_count() != b.elem_count() {
        candle_core::bail!("{:?} against {:?}", a.dims(), b.dims());
    }
    let values = read_f32(a, |a| read_f32(b, |b| Ok(f(a, b))))?;
    Tensor::from_vec(values, a.dims(), a.device())
}

/// `a + b` (the same shape), with negative sums zeroed when `relu`, outside the graph.
pub(crate) fn add(a: &Tensor, b: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
    map_values2(a, b, |a, b| kernels::add(a, b, relu))
}

/// tanh of every value, outside the graph (kdc's vectorised kernel).
pub(crate) fn tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    map_values(x, kd_kernels::activation::tanh_values)
}

/// The logistic sigmoid of every value, outside the graph.
pub(crate) fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    map_values(x, kd_kernels::activation::sigmoid_values)
}

/// Softmax over the last axis, outside the graph.
pub(crate) fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let len = x.dims().last().copied().unwrap_or(1);
    map_values(x, |x| {
        let mut y = kd_kernels::activation::parallel_copy(x);
        kd_kernels::activation::masked_softmax(&mut y, len, 1.0, None, 1);
        y
    })
}

/// `y` `[B, L, D]` plus the first L rows of `positions` for every sample, outside the graph.
pub(crate) fn add_positions(y: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
    let (_, len, _) = y.dims3()?;
    let used = positions.narrow(0, 0, len)?;
    let values = read_f32(y, |y| {
        read_f32(&used, |p| Ok(kd_kernels::elementwise::add_bias(y, p, 1)))
    })?;
    Tensor::from_vec(values, y.dims(), y.device())
}

/// An op's output computed before the op joins candle's graph (outside it, on detached
/// tensors), for candle's forward to take once.
pub(crate) struct Computed(Mutex<Option<(Vec<f32>, Shape)>>);

impl Computed {
    pub(crate) fn new(values: Vec<f32>, shape: Shape) -> Computed {
        Computed(Mutex::new(Some((values, shape))))
    }

    /// The values and their shape; an error the second time (`op` names the op).
    pub(crate) fn take(&self, op: &str) -> candle_core::Result<(Vec<f32>, Shape)> {
        let taken = match self.0.lock() {
            Ok(mut output) => output.take(),
            Err(_) => None,
        };
        taken.ok_or_else(|| candle_core::Error::Msg(format!("{op}: the op ran twice")))
    }

    /// [`Computed::take`] as candle's forward returns it.
    pub(crate) fn storage(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let (values, shape) = self.take(op)?;
        Ok((CpuStorage::F32(values), shape))
    }
}

struct BiasGradient {
    channels: usize,
    inner: usize,
}

impl CustomOp1 for BiasGradient {
    fn name(&self) -> &'static str {
        "bias-gradient"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let sums = kernels::bias_gradient(contiguous_f32(s, l)?, self.channels, self.inner);
        Ok((CpuStorage::F32(sums), Shape::from(self.channels)))
    }
}

/// The gradient of a `[channels]` bias from its output's gradient `grad` (contiguous),
/// each bias value covering runs of `inner` values; outside the graph.
pub(crate) fn bias_gradient(
    grad: &Tensor,
    channels: usize,
    inner: usize,
) -> candle_core::Result<Tensor> {
    grad.apply_op1_no_bwd(&BiasGradient { channels, inner })
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(kernels::relu(contiguous_f32(s, l)?)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        relu_backward(x, grad).map(Some)
    }
}

struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "relu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dx = kernels::relu_backward(contiguous_f32(x, xl)?, contiguous_f32(g, gl)?);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// A ReLU: kdc's kernel op, or off the kernels (a GPU) [`relu_composed`].
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !crate::ops::kernels_apply(x) {
        return relu_composed(x);
    }
    x.contiguous()?.apply_op1(Relu)
}

/// A ReLU from candle's ops whose gradient is 0 at 0, as PyTorch's and [`relu`]'s
/// (candle's own `relu` passes the gradient at 0, where a ReLU after a ReLU or a max pool
/// meets many exact zeros).
pub fn relu_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&x.gt(0.0)?.to_dtype(x.dtype())?)
}

/// A ReLU's input gradient: `grad` where `x > 0`, else 0; outside the graph.
pub(crate) fn relu_backward(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)
}

fn ids_u32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [u32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("expected contiguous u32 token ids"),
    }
}

/// An embedding lookup: rows of the table by id, with a backward that adds the gradient
/// rows straight into one zeroed table (candle's goes through `index_add` on a copy).
struct Embedding {
    table_sink: Option<GradSink>,
}

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(
        &self,
        table: &CpuStorage,
        tl: &Layout,
        ids: &CpuStorage,
        il: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [rows, dim] = tl.dims() else {
            candle_core::bail!("an embedding table is [rows, dim], got {:?}", tl.dims());
        };
        let ids = ids_u32(ids, il)?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= *rows) {
            candle_core::bail!("token id {bad} outside an embedding of {rows} rows");
        }
        let out = kernels::gather_rows(contiguous_f32(table, tl)?, ids, *dim);
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), *dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = table.dim(0)?;
        let dtable = grad
            .contiguous()?
            .apply_op2_no_bwd(ids, &EmbeddingBackward { rows })?;
        Ok((
            crate::ops::dense::sink(Some(dtable), &self.table_sink)?,
            None,
        ))
    }
}

struct EmbeddingBackward {
    rows: usize,
}

impl CustomOp2 for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding-backward"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        gl: &Layout,
        ids: &CpuStorage,
        il: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dim = gl.dims().last().copied().unwrap_or(0);
        let table =
            kernels::scatter_rows(contiguous_f32(grad, gl)?, ids_u32(ids, il)?, self.rows, dim);
        Ok((CpuStorage::F32(table), Shape::from((self.rows, dim))))
    }
}

/// Rows of `table` `[rows, dim]` for `ids` (u32, any shape flattened): `[ids, dim]`. The
/// table's gradient goes to `table_sink` when there is one.
pub fn embedding(
    table: &Tensor,
    ids: &Tensor,
    table_sink: Option<&GradSink>,
) -> candle_core::Result<Tensor> {
    let op = Embedding {
        table_sink: table_sink.cloned(),
    };
    table
        .contiguous()?
        .apply_op2(&ids.flatten_all()?.contiguous()?, op)
}

/// The table's gradient of [`embedding`] into `table_sink`, for kdc's own reverse pass.
pub(crate) fn embedding_backward(
    table: &Tensor,
    ids: &Tensor,
    grad: &Tensor,
    table_sink: &GradSink,
) -> candle_core::Result<()> {
    let rows = table.dim(0)?;
    let dtable = grad.contiguous()?.apply_op2_no_bwd(
        &ids.flatten_all()?.contiguous()?,
        &EmbeddingBackward { rows },
    )?;
    table_sink.add(dtable)
}
