//! Tensor functions shared by kdc's sequence layers and its BERT encoder: layer norm, masked
//! multi-head attention and masked pooling over time. Sequences are `[B, L, C]`; masks
//! `[B, L]` hold 1 at real tokens and 0 at padding. Everything here is built from candle
//! ops that have a backward pass (candle-nn 0.11's fused `layer_norm` and
//! `softmax_last_dim` do not).

use candle_core::{DType, Result, Tensor, D};
use kd_plan::SeqPool;

/// `f` on `x` in f32, its result back in `x`'s dtype: reductions (means, variances,
/// softmax sums) stay f32 in a bf16 model, as PyTorch's autocast keeps them.
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 => f(x),
        other => f(&x.to_dtype(DType::F32)?)?.to_dtype(other),
    }
}

/// Normalises the last axis to zero mean and unit variance, then scales and shifts.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() != DType::F32 && x.dtype() != DType::F64 {
        let (w, b) = (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
        return in_f32(x, |x| layer_norm(x, &w, &b, eps));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// 0 at real tokens and far below any activation or score at padding, `[B, L]`.
pub fn padding_penalty(mask: &Tensor) -> Result<Tensor> {
    (mask - 1.0)? * 1e9
}

/// Scaled dot-product attention of `heads` heads over the real tokens: queries, keys and
/// values `[B, L, D]` (already projected) to the context vectors `[B, L, D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
) -> Result<Tensor> {
    let (b, len, d) = q.dims3()?;
    let heads = heads.max(1);
    let head_dim = d / heads;
    let split = |t: &Tensor| {
        t.reshape((b, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&padding_penalty(m)?.reshape((b, 1, 1, len))?)?,
        None => scores,
    };
    let weights = in_f32(&scores, |s| candle_nn::ops::softmax(s, D::Minus1))?;
    weights
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, len, d))
}

/// The maximum over `axis`, its gradient going to the first position that holds it
/// (PyTorch's rule; candle's `max` hands it to every tied position).
pub fn first_max(x: &Tensor, axis: usize) -> Result<Tensor> {
    let first = x.argmax_keepdim(axis)?;
    x.gather(&first, axis)?.squeeze(axis)
}

/// `[B, L, C]` to `[B, C]` over the positions where `mask` is 1. A row with no real token
/// pools to zeros.
pub fn pool(x: &Tensor, mask: Option<&Tensor>, kind: SeqPool) -> Result<Tensor> {
    if kind == SeqPool::Mean && x.dtype() != DType::F32 && x.dtype() != DType::F64 {
        let mask = mask.map(|m| m.to_dtype(DType::F32)).transpose()?;
        return in_f32(x, |x| pool(x, mask.as_ref(), kind));
    }
    match (kind, mask) {
        // One pass each way (runtime/src/ops/pooling.rs) instead of a strided reduction.
        (SeqPool::Max, _) if crate::ops::kernels_apply(x) => {
            crate::ops::pooling::max_over_time(x, mask)
        }
        (SeqPool::First, _) => x.narrow(1, 0, 1)?.squeeze(1),
        (SeqPool::Max, None) => first_max(x, 1),
        (SeqPool::Mean, None) => x.mean(1),
        (SeqPool::Max, Some(m)) => {
            let any_real = m.max_keepdim(1)?;
            first_max(&x.broadcast_add(&padding_penalty(m)?.unsqueeze(2)?)?, 1)?
                .broadcast_mul(&any_real)
        }
        (SeqPool::Mean, Some(m)) => {
            let counts = m.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
            x.broadcast_mul(&m.unsqueeze(2)?)?
                .sum(1)?
                .broadcast_div(&counts)
        }
    }
}
