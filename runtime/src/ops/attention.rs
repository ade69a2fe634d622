//! The pieces of a transformer block outside candle's graph, for kdc's own reverse pass
//! (`crate::model::tape`) and for forwards without gradients: layer norm over the last axis,
//! multi-head attention with the padding mask and softmax fused, and GELU, each with its
//! backward. Built from candle's ops, a block was about forty graph nodes each way.
//! tests/reverse_pass.rs checks them against the composition from candle's ops.

use candle_core::Tensor;
use kd_kernels::activation;
use kd_kernels::layernorm::{self, RowStatistics};

use crate::ops::elementwise::{contiguous_f32, read_f32};
use crate::ops::grad_sink::GradSink;

/// Layer norm of `x` over its last axis, outside the graph, with what its backward needs.
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, RowStatistics)> {
    let dim = weight.elem_count();
    if x.dims().last() != Some(&dim) || bias.elem_count() != dim {
        candle_core::bail!(
            "layer norm of width {dim} on an input of shape {:?}",
            x.dims()
        );
    }
    let (y, stats) = read_f32(x, |xv| {
        read_f32(weight, |w| {
            read_f32(bias, |b| Ok(layernorm::layer_norm(xv, w, b, eps)))
        })
    })?;
    Ok((Tensor::from_vec(y, x.shape(), x.device())?, stats))
}

/// What a layer norm's backward needs; the parameters' gradients go to their sinks.
pub(crate) struct LayerNormBackward {
    pub x: Tensor,
    pub weight: Tensor,
    pub stats: RowStatistics,
    /// The parameters' sinks (none for a model that is not trained).
    pub weight_sink: Option<GradSink>,
    pub bias_sink: Option<GradSink>,
}

impl LayerNormBackward {
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        let (dx, dw, db) = read_f32(&self.x, |x| {
            read_f32(grad, |g| {
                read_f32(&self.weight, |w| {
                    Ok(layernorm::layer_norm_backward(x, g, w, &self.stats, true))
                })
            })
        })?;
        let device = self.x.device();
        let dim = dw.len();
        let (Some(weight_sink), Some(bias_sink)) = (&self.weight_sink, &self.bias_sink) else {
            candle_core::bail!("layer norm: a trained parameter without a gradient sink");
        };
        weight_sink.add(Tensor::from_vec(dw, dim, device)?)?;
        bias_sink.add(Tensor::from_vec(db, dim, device)?)?;
        match dx {
            Some(dx) => Tensor::from_vec(dx, self.x.shape(), device),
            None => candle_core::bail!("layer norm: no input gradient"),
        }
    }
}

/// GELU (with the error function) as a node of candle's graph, so that every path (the
/// graph, kdc's reverse pass, forwards without gradients) computes the same values; off
/// kdc's kernels (a GPU), candle's own `gelu_erf`.
pub(crate) fn gelu_op(x: &Tensor) -> candle_core::Result<Tensor> {
    if !crate::ops::kernels_apply(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl candle_core::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let y = activation::gelu(contiguous_f32(s, l)?);
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        gelu_backward(x, grad).map(Some)
    }
}

/// GELU (with the error function) outside the graph.
pub(crate) fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    let y = read_f32(x, |v| Ok(activation::gelu(v)))?;
    Tensor::from_vec(y, x.shape(), x.device())
}

/// GELU's input gradient from its input `x` and output gradient.
pub(crate) fn gelu_backward(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let dx = read_f32(x, |xv| {
        read_f32(grad, |g| Ok(activation::gelu_backward(xv, g)))
    })?;
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// Scaled dot-product attention of `heads` heads over the real tokens, from the projected
/// queries, keys and values side by side (`qkv`, `[B, L, 3D]`) to the context vectors
/// (`[B, L, D]`). `mask` (`[B, L]`) is 1 at real tokens: padded keys get no weight (a row
/// with no real key spreads its weight evenly).
pub(crate) fn attention(
    qkv: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
) -> candle_core::Result<(Tensor, AttentionBackward)> {
    let (b, len, width) = qkv.dims3()?;
    let heads = heads.max(1);
    let d = width / 3;
    if d * 3 != width || d % heads != 0 {
        candle_core::bail!("attention: {width} values per token for {heads} heads");
    }
    let head_dim = d / heads;
    // [B, L, 3, H, dh] -> [3, B, H, L, dh]: each of q, k, v as [B H, L, dh].
    let parts = qkv
        .reshape((b, len, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let part = |i: usize| parts.get(i)?.reshape((b * heads, len, head_dim));
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mask_values: Option<Vec<f32>> = match mask {
        Some(m) => Some(
            m.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        ),
        None => None,
    };
    let mut weights: Vec<f32> = q.matmul(&k.t()?)?.flatten_all()?.to_vec1()?;
    activation::masked_softmax(
        &mut weights,
        len,
        scale,
        mask_values.as_deref(),
        heads * len,
    );
    let weights = Tensor::from_vec(weights, (b * heads, len, len), qkv.device())?;
    let context = weights
        .matmul(&v)?
        .reshape((b, heads, len, head_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, len, d))?;
    let backward = AttentionBackward {
        q,
        k,
        v,
        weights,
        heads,
        scale,
    };
    Ok((context, backward))
}

/// What [`attention`]'s backward needs.
pub(crate) struct AttentionBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: Tensor,
    heads: usize,
    scale: f32,
}

impl AttentionBackward {
    /// The gradient of `qkv` (`[B, L, 3D]`) from the context's (`[B, L, D]`).
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        let (b, len, d) = grad.dims3()?;
        let heads = self.heads;
        let head_dim = d / heads;
        let g = grad
            .reshape((b, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * heads, len, head_dim))?;
        let dv = self.weights.t()?.matmul(&g)?;
        let mut ds: Vec<f32> = g.matmul(&self.v.t()?)?.flatten_all()?.to_vec1()?;
        read_f32(&self.weights, |w| {
            activation::softmax_backward(w, &mut ds, len, self.scale);
            Ok(())
        })?;
        let ds = Tensor::from_vec(ds, (b * heads, len, len), grad.device())?;
        let dq = ds.matmul(&self.k)?;
        let dk = ds.t()?.matmul(&self.q)?;
        // [3, B, H, L, dh] -> [B, L, 3, H, dh].
        Tensor::stack(&[dq, dk, dv], 0)?
            .reshape((3, b, heads, len, head_dim))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .reshape((b, len, 3 * d))
    }
}

/// What a pre-norm transformer block's backward needs:
/// `h = x + drop1(out(attention(qkv(norm1(x)))))`, `y = h + drop2(ff2(gelu(ff1(norm2(h)))))`.
pub(crate) struct BlockBackward {
    pub norm1: LayerNormBackward,
    pub qkv: crate::ops::dense::DenseBackward,
    pub attention: AttentionBackward,
    pub out: crate::ops::dense::DenseBackward,
    pub drop1: Option<Tensor>,
    pub norm2: LayerNormBackward,
    pub ff1: crate::ops::dense::DenseBackward,
    /// GELU's input.
    pub inner: Tensor,
    pub ff2: crate::ops::dense::DenseBackward,
    pub drop2: Option<Tensor>,
}

impl BlockBackward {
    /// The block input's gradient from the output's.
    pub(crate) fn backward(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        let input_grad =
            |dense: &crate::ops::dense::DenseBackward, g: &Tensor| match dense.backward(g)? {
                Some(dx) => Ok(dx),
                None => candle_core::bail!("transformer: a projection without its input gradient"),
            };
        let scaled = |mask: &Option<Tensor>, g: &Tensor| match mask {
            Some(m) => g.mul(m),
            None => Ok(g.clone()),
        };
        let fed = input_grad(&self.ff2, &scaled(&self.drop2, grad)?)?;
        let inner = gelu_backward(&self.inner, &fed)?;
        let normed = input_grad(&self.ff1, &inner)?;
        let h = (grad + self.norm2.backward(&normed)?)?;
        let mixed = input_grad(&self.out, &scaled(&self.drop1, &h)?)?;
        let qkv = self.attention.backward(&mixed)?;
        let normed = input_grad(&self.qkv, &qkv)?;
        h + self.norm1.backward(&normed)?
    }
}
