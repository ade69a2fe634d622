//! A linear layer's matmul with its own backward. candle differentiates `x.matmul(w.t())`
//! by computing the input's gradient even when nothing needs it (the first layer's input
//! is data) and by adding the weight's gradient back through the transpose, a strided copy
//! of the whole weight. Here the forward is candle's matmul on detached tensors, and a
//! custom op carries it into the graph with a backward that computes the weight's gradient
//! directly as `grad^T x` (already in the weight's layout) and the input's only when it is
//! tracked. tests/ops.rs checks it against candle's.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Passes its first argument through; differentiates as `x @ w^T` in the other two.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match (y, yl.contiguous_offsets()) {
            (CpuStorage::F32(values), Some((start, end))) => Ok((
                CpuStorage::F32(values[start..end].to_vec()),
                yl.shape().clone(),
            )),
            _ => candle_core::bail!("linear: expected a contiguous f32 product"),
        }
    }

    fn bwd(
        &self,
        _: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        let dx = match x.track_op() {
            true => Some(grad.matmul(&w.detach())?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(grad.t()?.matmul(&x.detach())?),
            false => None,
        };
        Ok((None, dx, dw))
    }
}

/// `x @ w^T` for `x` `[..., K]` and `w` `[N, K]`: `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("linear: a scalar input");
    };
    let rows: usize = lead.iter().product();
    let x2 = x.reshape((rows, k))?;
    let y = x2.detach().matmul(&w.detach().t()?)?;
    let y = if x2.track_op() || w.track_op() {
        y.apply_op3(&x2, w, LinearGrad)?
    } else {
        y
    };
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}
