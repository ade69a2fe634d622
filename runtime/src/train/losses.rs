//! The loss built-ins as functions on candle tensors of any float dtype (f32 in training,
//! f64 in the tests). Class scores are on the last axis; the batch is axis 0.
//!
//! Conventions (PyTorch's): natural logarithms; `kl` is `batchmean`; no `T^2` factor
//! anywhere here (a pipeline multiplies by it explicitly).

use candle_core::{DType, Result, Tensor, D};

/// `softmax(x / T)` over the last axis.
pub fn softmax(x: &Tensor, temperature: f64) -> Result<Tensor> {
    log_softmax(x, temperature)?.exp()
}

/// `log_softmax(x / T)` over the last axis, stable for large scores.
pub fn log_softmax(x: &Tensor, temperature: f64) -> Result<Tensor> {
    let scaled = if temperature == 1.0 {
        x.clone()
    } else {
        x.affine(1.0 / temperature, 0.0)?
    };
    // The shift does not change the result, so it carries no gradient.
    let max = scaled.max_keepdim(D::Minus1)?.detach();
    let shifted = scaled.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// The smallest probability whose logarithm is taken, per dtype: keeps `log 0` finite so
/// that `0 * log 0` is 0.
fn tiny(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-300,
        _ => 1e-37,
    }
}

/// A distribution over classes as the graph holds it: probabilities and their logarithms,
/// the latter computed stably whenever the distribution came from scores.
#[derive(Clone, Debug)]
pub struct Dist {
    pub probs: Tensor,
    pub log_probs: Tensor,
}

impl Dist {
    /// `softmax(x / T)` and its stable logarithm.
    pub fn from_logits(x: &Tensor, temperature: f64) -> Result<Dist> {
        let log_probs = log_softmax(x, temperature)?;
        Ok(Dist {
            probs: log_probs.exp()?,
            log_probs,
        })
    }

    /// Probabilities given as such; their logarithms are clamped away from `-inf`.
    pub fn from_probs(p: &Tensor) -> Result<Dist> {
        let log_probs = p.maximum(tiny(p.dtype()))?.log()?;
        Ok(Dist {
            probs: p.clone(),
            log_probs,
        })
    }

    pub fn from_log_probs(log_p: &Tensor) -> Result<Dist> {
        Ok(Dist {
            probs: log_p.exp()?,
            log_probs: log_p.clone(),
        })
    }
}

fn batch_size(x: &Tensor) -> Result<f64> {
    Ok(x.dims().first().copied().unwrap_or(1).max(1) as f64)
}

/// `KL(p || q) = sum_j p_j (log p_j - log q_j)`, mean over the batch ("batchmean").
pub fn kl(p: &Dist, q: &Dist) -> Result<Tensor> {
    let n = batch_size(&p.probs)?;
    let diff = p.log_probs.broadcast_sub(&q.log_probs)?;
    p.probs
        .broadcast_mul(&diff)?
        .sum_all()?
        .affine(1.0 / n, 0.0)
}

/// `-sum_j p_j log q_j`, mean over the batch: `q` the prediction, `p` the target.
pub fn soft_cross_entropy(q: &Dist, p: &Tensor) -> Result<Tensor> {
    let n = batch_size(p)?;
    p.broadcast_mul(&q.log_probs)?
        .sum_all()?
        .affine(-1.0 / n, 0.0)
}

/// Labels as a batch carries them: class ids, and after mixup a partner and a weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    pub classes: Vec<u32>,
    pub mix: Option<Mix>,
}

/// Mixup's blend: each sample's label is `lambda * y + (1 - lambda) * partner`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    pub partner: Vec<u32>,
    pub lambda: f64,
}

impl Labels {
    pub fn hard(classes: Vec<u32>) -> Labels {
        Labels { classes, mix: None }
    }

    /// The target distribution `[B, C]`: one-hot rows, blended under mixup.
    pub fn target(
        &self,
        num_classes: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let batch = self.classes.len();
        let mut rows = vec![0f64; batch * num_classes];
        let weight = self.mix.as_ref().map_or(1.0, |m| m.lambda);
        for (b, &y) in self.classes.iter().enumerate() {
            let y = y as usize;
            if y >= num_classes {
                candle_core::bail!("label {y} is out of range for {num_classes} classes");
            }
            rows[b * num_classes + y] += weight;
        }
        if let Some(mix) = &self.mix {
            for (b, &y) in mix.partner.iter().enumerate().take(batch) {
                let y = y as usize;
                if y >= num_classes {
                    candle_core::bail!("label {y} is out of range for {num_classes} classes");
                }
                rows[b * num_classes + y] += 1.0 - mix.lambda;
            }
        }
        Tensor::from_vec(rows, (batch, num_classes), device)?.to_dtype(dtype)
    }
}

/// Mean over the batch of `-log softmax(logits)[y]`; under mixup
/// `lambda * CE(y) + (1 - lambda) * CE(partner)`.
pub fn cross_entropy(logits: &Tensor, labels: &Labels) -> Result<Tensor> {
    let num_classes = logits.dim(D::Minus1)?;
    let target = labels.target(num_classes, logits.dtype(), logits.device())?;
    let log_probs = log_softmax(logits, 1.0)?;
    let n = batch_size(logits)?;
    target.mul(&log_probs)?.sum_all()?.affine(-1.0 / n, 0.0)
}

/// Mean over all elements of `(a - b)^2`.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.broadcast_sub(b)?.sqr()?.mean_all()
}

/// PyTorch's `cosine_similarity` floor on each vector's norm.
const COSINE_EPS: f64 = 1e-8;

/// Mean over the batch of `1 - cos(a, b)`, each sample flattened to a vector.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = a.flatten_from(1)?;
    let b = b.flatten_from(1)?;
    let unit = |v: &Tensor| -> Result<Tensor> {
        let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(COSINE_EPS)?;
        v.broadcast_div(&norm)
    };
    let cos = unit(&a)?.mul(&unit(&b)?)?.sum(1)?;
    cos.affine(-1.0, 1.0)?.mean_all()
}

/// The attention map of a batch of features: the mean over channels of the squared
/// activations, flattened per sample and scaled to unit L2 norm (Zagoruyko and Komodakis,
/// 2017, as their reference code computes it). Images `[B, C, H, W]` have channels on axis
/// 1; sequences `[B, L, C]` on the last axis.
fn attention_map(x: &Tensor) -> Result<Tensor> {
    let energy = match x.rank() {
        4 => x.sqr()?.mean(1)?,
        3 => x.sqr()?.mean(2)?,
        _ => x.sqr()?,
    };
    let flat = energy.flatten_from(1)?;
    let norm = flat.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    flat.broadcast_div(&norm)
}

/// Attention transfer: the mean over samples and positions of the squared difference of
/// the two attention maps (the reference code's `(at(x) - at(y)).pow(2).mean()`; the
/// paper's weight beta is the user's factor in the loss expression).
pub fn attention_transfer(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    attention_map(a)?.sub(&attention_map(b)?)?.sqr()?.mean_all()
}
