//! Bias addition and ReLU, forward and backward, each one parallel pass. candle runs a
//! ReLU's backward as a comparison, a conversion and a product, and a bias's as a strided
//! reduction that alone cost 11 ms on a [64, 128, 128] tensor here.

use rayon::prelude::*;

use crate::optim::CHUNK;

/// `y[o, c, i] = x[o, c, i] + bias[c]` for `x` viewed as `[outer, channels, inner]`
/// (a linear layer's `[rows, out]` has `inner` 1, an NCHW image `inner` H * W).
pub fn add_bias(x: &[f32], bias: &[f32], inner: usize) -> Vec<f32> {
    map_with_bias(x, bias, inner, |v, b| v + b)
}

/// `max(x + bias, 0)`, [`add_bias`] and a ReLU in one pass (a dense layer's tail).
pub fn add_bias_relu(x: &[f32], bias: &[f32], inner: usize) -> Vec<f32> {
    map_with_bias(x, bias, inner, |v, b| (v + b).max(0.0))
}

fn map_with_bias(
    x: &[f32],
    bias: &[f32],
    inner: usize,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let (channels, inner) = (bias.len().max(1), inner.max(1));
    let block = channels * inner;
    // Whole blocks per task, at least CHUNK values each (a [rows, 128] layer's blocks are
    // 128 values: one task each cost more than the work).
    let per_task = (CHUNK / block).max(1) * block;
    // Written once from `x` (a copy first and an update after would be two passes).
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(per_task)
        .zip(x.par_chunks(per_task))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(block).zip(x.chunks(block)) {
                if inner == 1 {
                    // Channels last: a row against the bias, element by element (vectorises).
                    for ((v, &x), &b) in y.iter_mut().zip(x).zip(bias) {
                        *v = f(x, b);
                    }
                    continue;
                }
                for (c, (run, x)) in y.chunks_mut(inner).zip(x.chunks(inner)).enumerate() {
                    let b = bias[c % channels];
                    for (v, &x) in run.iter_mut().zip(x) {
                        *v = f(x, b);
                    }
                }
            }
        });
    y
}

/// The bias gradient of [`add_bias`]: the sum of `grad` over `outer` and `inner` per
/// channel, accumulated per block in f32 and across blocks in f64.
pub fn bias_gradient(grad: &[f32], channels: usize, inner: usize) -> Vec<f32> {
    let (channels, inner) = (channels.max(1), inner.max(1));
    let block = channels * inner;
    // Blocks per task: at least CHUNK values each.
    let per_task = (CHUNK / block).max(1) * block;
    let sums = grad
        .par_chunks(per_task)
        .map(|blocks| {
            let mut sums = vec![0f64; channels];
            if inner == 1 {
                // Channels last: whole rows added element-wise (vectorises), in f32 within
                // the task.
                let mut row_sums = vec![0f32; channels];
                for row in blocks.chunks(block) {
                    for (sum, &v) in row_sums.iter_mut().zip(row) {
                        *sum += v;
                    }
                }
                for (sum, row_sum) in sums.iter_mut().zip(row_sums) {
                    *sum = f64::from(row_sum);
                }
                return sums;
            }
            for block in blocks.chunks(block) {
                for (c, run) in block.chunks(inner).enumerate() {
                    sums[c] += f64::from(run.iter().sum::<f32>());
                }
            }
            sums
        })
        .collect::<Vec<_>>()
        // Added in task order: rayon's `reduce` groups them as the threads split the work,
        // which moves the last bits with the scheduling.
        .into_iter()
        .fold(vec![0f64; channels], |mut a, b| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
            a
        });
    sums.into_iter().map(|s| s as f32).collect()
}

/// `max(x, 0)`. Collected straight into the output: a zeroed output written over cost a
/// sixth more (relu on [128, 4096] in a step, 0.79-0.92 -> 0.68-0.72 us a sample).
pub fn relu(x: &[f32]) -> Vec<f32> {
    x.par_iter()
        .with_min_len(CHUNK)
        .map(|&x| x.max(0.0))
        .collect()
}

/// `a + b`, and with `relu` negative sums zeroed: a residual block's sum (and the ReLU
/// after it) in one pass.
pub fn add(a: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
    let sums = a.par_iter().zip(b).with_min_len(CHUNK);
    match relu {
        true => sums.map(|(&a, &b)| (a + b).max(0.0)).collect(),
        false => sums.map(|(&a, &b)| a + b).collect(),
    }
}

/// The gradient of [`relu`]: `grad` where `x > 0`, else 0 (PyTorch's choice at 0).
pub fn relu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    x.par_iter()
        .zip(grad)
        .with_min_len(CHUNK)
        .map(|(&x, &g)| if x > 0.0 { g } else { 0.0 })
        .collect()
}

/// Rows `ids` of `table` (`[rows, dim]`), `[ids.len(), dim]`; an id past the table reads
/// zeros (the runtime checks ids before).
pub fn gather_rows(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; ids.len() * dim];
    if dim == 0 {
        return out;
    }
    out.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            if let Some(source) = table.get(id as usize * dim..(id as usize + 1) * dim) {
                row.copy_from_slice(source);
            }
        });
    out
}

/// The gradient of [`gather_rows`] for the table: each id's row of `grad` added into a
/// zeroed `[rows, dim]`.
pub fn scatter_rows(grad: &[f32], ids: &[u32], rows: usize, dim: usize) -> Vec<f32> {
    let mut table = vec![0f32; rows * dim];
    if dim == 0 {
        return table;
    }
    for (row, &id) in grad.chunks(dim).zip(ids) {
        if let Some(target) = table.get_mut(id as usize * dim..(id as usize + 1) * dim) {
            for (t, &g) in target.iter_mut().zip(row) {
                *t += g;
            }
        }
    }
    table
}

/// `[rows, n]` from its transpose `zt` `[n, rows]`, with `bias[j]` added to column `j`
/// and, when `relu`, negative values zeroed, in the one pass that transposes. A linear
/// layer computes its product as `w @ x^T` (the weight contiguous is the faster operand
/// for gemm here) and writes its output through this.
pub fn transpose_bias(
    zt: &[f32],
    n: usize,
    rows: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    // Rows per task: a block of the output of at most CHUNK values (in cache while the
    // columns of `zt` are read into it).
    const BLOCK: usize = 64;
    let mut y = vec![0f32; n * rows];
    if n == 0 || rows == 0 {
        return y;
    }
    // Columns per tile: each output row's part of a tile is one cache line. Writing a
    // whole column of the block at a time strode the output by `n` values, which for n a
    // power of two maps every write to a few cache sets (linear(256) on [1536, 64]: the
    // pass took 0.8 ms, 2.5 times the product).
    const TILE: usize = 16;
    y.par_chunks_mut(BLOCK * n)
        .enumerate()
        .for_each(|(block, y)| {
            let r0 = block * BLOCK;
            let count = y.len() / n;
            for j0 in (0..n).step_by(TILE) {
                let j1 = (j0 + TILE).min(n);
                for i in 0..count {
                    let out = &mut y[i * n + j0..i * n + j1];
                    for (offset, value) in out.iter_mut().enumerate() {
                        let j = j0 + offset;
                        let v = zt[j * rows + r0 + i] + bias.map_or(0.0, |b| b[j]);
                        *value = if relu { v.max(0.0) } else { v };
                    }
                }
            }
        });
    y
}

/// `x` viewed as `[batch, n]` summed over the batch: `[n]`, each value summed in batch
/// order (the same bits on any number of threads).
pub fn sum_over_batch(x: &[f32], batch: usize) -> Vec<f32> {
    let n = x.len().checked_div(batch).unwrap_or(0);
    let mut sum = vec![0f32; n];
    if n == 0 {
        return sum;
    }
    sum.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(task, sum)| {
            let (start, len) = (task * CHUNK, sum.len());
            for row in x.chunks_exact(n) {
                for (s, &v) in sum.iter_mut().zip(&row[start..start + len]) {
                    *s += v;
                }
            }
        });
    sum
}
