//! Optimizer updates with PyTorch's rules, one fused pass over each parameter, in parallel
//! chunks: the same numbers whether one thread or many run the chunks. Adam works in f32,
//! as PyTorch does; SGD in f64 per element, stored as f32.

use rayon::prelude::*;

/// Values per task of the parallel loops: large enough to amortise the scheduling.
pub const CHUNK: usize = 1 << 14;

/// The sum of squares, accumulated in f64 over eight lanes so that it vectorises. The
/// chunks' sums are added in order: rayon's `sum` groups them as its threads split the
/// work, so a clipped gradient's norm (and the update) would vary in its last bits with
/// the scheduling.
pub fn sum_of_squares(values: &[f32]) -> f64 {
    let arch = pulp::Arch::new();
    let sums: Vec<f64> = values
        .par_chunks(CHUNK)
        .map(|chunk| arch.dispatch(SumOfSquares(chunk)))
        .collect();
    sums.iter().sum()
}

struct SumOfSquares<'a>(&'a [f32]);

impl pulp::WithSimd for SumOfSquares<'_> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        let mut lanes = [0f64; 8];
        let mut exact = self.0.chunks_exact(8);
        for eight in &mut exact {
            for (lane, &v) in lanes.iter_mut().zip(eight) {
                *lane += f64::from(v) * f64::from(v);
            }
        }
        let rest: f64 = exact
            .remainder()
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum();
        lanes.iter().sum::<f64>() + rest
    }
}

/// The gradient value an update uses: clipped gradients are rounded to f32 first, as a
/// clipped gradient tensor would be.
#[inline]
fn clipped(g: f32, scale: Option<f64>) -> f64 {
    match scale {
        Some(scale) => f64::from((f64::from(g) * scale) as f32),
        None => f64::from(g),
    }
}

/// `torch.optim.SGD` (dampening 0) for one step.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// The first step's momentum buffer is the gradient itself.
    pub first_step: bool,
    /// Gradient clipping factor, when clipping shrinks the gradients.
    pub scale: Option<f64>,
}

/// Updates `param` in place; `buffer` is the momentum buffer (unused, and may be empty,
/// without momentum).
pub fn sgd(rule: &Sgd, param: &mut [f32], grad: &[f32], buffer: &mut [f32]) {
    let Sgd {
        lr,
        momentum,
        nesterov,
        weight_decay,
        first_step,
        scale,
    } = *rule;
    let n = param.len().min(grad.len());
    let (param, grad) = (&mut param[..n], &grad[..n]);
    if momentum == 0.0 {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(p, g)| {
                for (p, &g) in p.iter_mut().zip(g) {
                    let value = f64::from(*p);
                    *p = (value - lr * (clipped(g, scale) + weight_decay * value)) as f32;
                }
            });
        return;
    }
    let buffer = &mut buffer[..n];
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(buffer.par_chunks_mut(CHUNK))
        .for_each(|((p, g), buf)| {
            for ((p, &g), buf) in p.iter_mut().zip(g).zip(buf) {
                let value = f64::from(*p);
                let g = clipped(g, scale) + weight_decay * value;
                let b = if first_step {
                    g
                } else {
                    momentum * f64::from(*buf) + g
                };
                *buf = b as f32;
                let step = if nesterov { g + momentum * b } else { b };
                *p = (value - lr * step) as f32;
            }
        });
}

/// `torch.optim.Adam` (L2 decay added to the gradient) or `AdamW` (decoupled decay) for
/// one step.
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
    /// This step's number, from 1 (for the bias corrections).
    pub step: u64,
    /// Gradient clipping factor, when clipping shrinks the gradients.
    pub scale: Option<f64>,
}

/// Updates `param` and the moments `first` and `second` in place.
pub fn adam(rule: &Adam, param: &mut [f32], grad: &[f32], first: &mut [f32], second: &mut [f32]) {
    let Adam {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled,
        step,
        scale,
    } = *rule;
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let bias_correction1 = 1.0 - beta1.powi(t);
    let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let step_size = lr / bias_correction1;
    let n = param
        .len()
        .min(grad.len())
        .min(first.len())
        .min(second.len());
    // f32 arithmetic, as PyTorch's Adam, without branches in the loop so that it
    // vectorises: the f64 version spent 4-5 ns per value in square roots and divisions.
    let k = AdamConstants {
        beta1: beta1 as f32,
        beta2: beta2 as f32,
        eps: eps as f32,
        step_size: step_size as f32,
        bias_correction2_sqrt: bias_correction2_sqrt as f32,
        decay: if decoupled {
            1.0 - (lr * weight_decay) as f32
        } else {
            1.0
        },
        l2: if decoupled { 0.0 } else { weight_decay as f32 },
        scale: scale.map_or(1.0, |s| s as f32),
    };
    let arch = pulp::Arch::new();
    param[..n]
        .par_chunks_mut(CHUNK)
        .zip(grad[..n].par_chunks(CHUNK))
        .zip(
            first[..n]
                .par_chunks_mut(CHUNK)
                .zip(second[..n].par_chunks_mut(CHUNK)),
        )
        .for_each(|((param, grad), (first, second))| {
            arch.dispatch(AdamChunk {
                k,
                param,
                grad,
                first,
                second,
            })
        });
}

#[derive(Debug, Clone, Copy)]
struct AdamConstants {
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    /// Decoupled weight decay's factor (1 for Adam).
    decay: f32,
    /// L2 decay added to the gradient (0 for AdamW).
    l2: f32,
    /// Gradient clipping's factor (1 without clipping).
    scale: f32,
}

struct AdamChunk<'a> {
    k: AdamConstants,
    param: &'a mut [f32],
    grad: &'a [f32],
    first: &'a mut [f32],
    second: &'a mut [f32],
}

impl pulp::WithSimd for AdamChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let AdamChunk {
            k,
            param,
            grad,
            first,
            second,
        } = self;
        let n = param.len();
        let (grad, first, second) = (&grad[..n], &mut first[..n], &mut second[..n]);
        for i in 0..n {
            let value = param[i] * k.decay;
            let g = grad[i] * k.scale + k.l2 * value;
            let m = k.beta1 * first[i] + (1.0 - k.beta1) * g;
            let v = k.beta2 * second[i] + (1.0 - k.beta2) * g * g;
            first[i] = m;
            second[i] = v;
            param[i] = value - k.step_size * m / (v.sqrt() / k.bias_correction2_sqrt + k.eps);
        }
    }
}
