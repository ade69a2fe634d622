//! Layer normalisation over the last axis, forward and backward, each one parallel pass
//! over rows (candle's composition took seven passes each way, with a zeroed gradient
//! tensor per intermediate). Rows are short (a model's width), so each is normalised while
//! it sits in cache. The parameters' gradients are summed per fixed block of rows and the
//! blocks' sums added in order, so results do not depend on the number of threads.

use rayon::prelude::*;

use crate::optim::CHUNK;

/// Rows per task: at least CHUNK values each.
fn rows_per_task(dim: usize) -> usize {
    (CHUNK / dim.max(1)).max(1)
}

/// A row's mean and `1 / sqrt(var + eps)`, the variance around the mean (two passes over
/// a row in cache), summed in 16 lanes so that the passes vectorise. The mean is summed
/// around the row's first value, so that f32 keeps its digits for rows far from zero.
#[inline(always)]
fn row_statistics(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len().max(1) as f32;
    let shift = row.first().copied().unwrap_or(0.0);
    let mean = shift + lane_sum(row, |v| v - shift) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (f64::from(var) + eps).sqrt()) as f32)
}

/// The sum of `f` over `values` in 16 interleaved lanes, then the lanes in order: one
/// running sum must be added a value at a time, 16 lanes vectorise (a layer norm of width
/// 64 summed in f64, one value at a time, was three quarters of its forward).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// What the forward keeps for the backward: each row's mean and `1 / sqrt(var + eps)`.
#[derive(Clone, Debug, Default)]
pub struct RowStatistics {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over rows of `weight.len()` values.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f64) -> (Vec<f32>, RowStatistics) {
    let dim = weight.len().max(1);
    let rows = x.len() / dim;
    let per_task = rows_per_task(dim);
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![(0f32, 0f32); rows];
    y.par_chunks_mut(per_task * dim)
        .zip(x.par_chunks(per_task * dim))
        .zip(stats.par_chunks_mut(per_task))
        .for_each(|((y, x), stats)| {
            crate::vectorised(|| {
                for ((y, x), stat) in y.chunks_mut(dim).zip(x.chunks(dim)).zip(stats.iter_mut()) {
                    let (mean, inv) = row_statistics(x, eps);
                    *stat = (mean, inv);
                    for (((v, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                        *v = (x - mean) * inv * w + b;
                    }
                }
            })
        });
    let (mean, inv_std) = stats.into_iter().unzip();
    (y, RowStatistics { mean, inv_std })
}

/// One row of [`layer_norm_backward`]: adds the row's terms to the weight's and the bias's
/// gradients, leaves `g * weight` in `dxhat`, and returns the row's sums of `dxhat` and of
/// `dxhat * xhat`, each in 16 lanes (one running sum made the loop scalar: the backward
/// of a width-64 layer norm took twice PyTorch's time).
#[inline(always)]
fn row_backward_sums(
    x: &[f32],
    g: &[f32],
    weight: &[f32],
    (mean, inv): (f32, f32),
    dw: &mut [f32],
    db: &mut [f32],
    dxhat: &mut [f32],
) -> (f32, f32) {
    let mut sums = [0f32; 16];
    let mut sums_xhat = [0f32; 16];
    let mut term =
        |lane: usize, x: f32, g: f32, w: f32, dw: &mut f32, db: &mut f32, dh: &mut f32| {
            let xhat = (x - mean) * inv;
            *dw += g * xhat;
            *db += g;
            *dh = g * w;
            sums[lane] += *dh;
            sums_xhat[lane] += *dh * xhat;
        };
    let whole = x.len() / 16 * 16;
    for start in (0..whole).step_by(16) {
        let at = start..start + 16;
        let (x, g, w) = (&x[at.clone()], &g[at.clone()], &weight[at.clone()]);
        let (dw, db, dh) = (&mut dw[at.clone()], &mut db[at.clone()], &mut dxhat[at]);
        for lane in 0..16 {
            term(
                lane,
                x[lane],
                g[lane],
                w[lane],
                &mut dw[lane],
                &mut db[lane],
                &mut dh[lane],
            );
        }
    }
    for j in whole..x.len() {
        term(
            0,
            x[j],
            g[j],
            weight[j],
            &mut dw[j],
            &mut db[j],
            &mut dxhat[j],
        );
    }
    (sums.iter().sum(), sums_xhat.iter().sum())
}

/// The gradients of [`layer_norm`]: the input's (when `want_input`), the weight's and the
/// bias's, from the output's gradient `grad`.
pub fn layer_norm_backward(
    x: &[f32],
    grad: &[f32],
    weight: &[f32],
    stats: &RowStatistics,
    want_input: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let dim = weight.len().max(1);
    let per_task = rows_per_task(dim);
    let mut dx = vec![0f32; if want_input { x.len() } else { 0 }];
    let task = |(index, (x, g)): (usize, (&[f32], &[f32])), dx: Option<&mut [f32]>| {
        let mut dw = vec![0f32; dim];
        let mut db = vec![0f32; dim];
        let mut dxhat = vec![0f32; dim];
        let mut dx = dx;
        crate::vectorised(
            #[inline(always)]
            || {
                for (r, (x, g)) in x.chunks(dim).zip(g.chunks(dim)).enumerate() {
                    let row = index * per_task + r;
                    let (mean, inv) = (stats.mean[row], stats.inv_std[row]);
                    let (sum, sum_xhat) =
                        row_backward_sums(x, g, weight, (mean, inv), &mut dw, &mut db, &mut dxhat);
                    if let Some(dx) = dx.as_deref_mut() {
                        let (a, b) = (sum / dim as f32, sum_xhat / dim as f32);
                        let out = &mut dx[r * dim..(r + 1) * dim];
                        for ((out, &x), &dh) in out.iter_mut().zip(x).zip(dxhat.iter()) {
                            let xhat = (x - mean) * inv;
                            *out = inv * (dh - a - xhat * b);
                        }
                    }
                }
            },
        );
        (dw, db)
    };
    let blocks = x
        .par_chunks(per_task * dim)
        .zip(grad.par_chunks(per_task * dim));
    let partials: Vec<(Vec<f32>, Vec<f32>)> = match want_input {
        true => blocks
            .enumerate()
            .zip(dx.par_chunks_mut(per_task * dim))
            .map(|(block, dx)| task(block, Some(dx)))
            .collect(),
        false => blocks.enumerate().map(|block| task(block, None)).collect(),
    };
    let mut dw = vec![0f64; dim];
    let mut db = vec![0f64; dim];
    for (w, b) in partials {
        for (sum, v) in dw.iter_mut().zip(w) {
            *sum += f64::from(v);
        }
        for (sum, v) in db.iter_mut().zip(b) {
            *sum += f64::from(v);
        }
    }
    (
        want_input.then_some(dx),
        dw.into_iter().map(|v| v as f32).collect(),
        db.into_iter().map(|v| v as f32).collect(),
    )
}
