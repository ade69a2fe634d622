//! A conv1d on channels-last sequences (`[B, L, C]`, as kdc keeps them) with no unfolded
//! windows: for each kernel tap `j`, the output rows that tap reaches read one contiguous
//! block of input rows. The forward meets all taps in one product per group of samples
//! and adds them at their shifts; the gradients are a product per tap and sample
//! (kd-matmul, single-threaded), samples in parallel. The weight gradient sums fixed
//! groups of samples in order, so no result depends on the thread count.

use kd_matmul::{matmul, Mat};
use rayon::prelude::*;

use crate::unfold::Window1d;

/// Output rows `[first, end)` that tap `j` reaches with an input row, and the input row
/// of the first.
fn tap_rows(g: &Window1d, j: usize) -> Option<(usize, usize, usize)> {
    let first = g.padding.saturating_sub(j);
    let end = (g.length + g.padding).saturating_sub(j).min(g.rows());
    (first < end).then(|| (first, end, first + j - g.padding))
}

/// `x` `[B, L, C]` convolved with `kernel` (`[O, k * C]`), then `bias` added and, when
/// `relu`, negative values zeroed: `[B, L', O]`. Each group of [`GROUP`] samples meets
/// every tap at once, `[n L, C] @ [C, k O]`, a product large enough for gemm to run well
/// (one per tap and sample ran at 0.62x of PyTorch), and the taps' columns are then added
/// at their shifts.
pub fn conv1d(
    x: &[f32],
    g: &Window1d,
    kernel: &[f32],
    out: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let (rows, sample_len, c) = (g.rows(), g.sample_len(), g.channels);
    let mut y = vec![0f32; x.len().checked_div(sample_len).unwrap_or(0) * rows * out];
    if y.is_empty() || c == 0 {
        return y;
    }
    let taps = g.kernel * out;
    // [C, k O]: column j O + o is tap j of output channel o.
    let mut all_taps = vec![0f32; c * taps];
    for o in 0..out {
        for j in 0..g.kernel {
            for ch in 0..c {
                all_taps[ch * taps + j * out + o] = kernel[o * g.row_len() + j * c + ch];
            }
        }
    }
    y.par_chunks_mut(GROUP * rows * out)
        .zip(x.par_chunks(GROUP * sample_len))
        .for_each_init(Vec::new, |z, (y, x)| {
            let n = x.len() / c;
            z.resize(n * taps, 0.0);
            matmul(
                z,
                false,
                Mat::row_major(x, n, c),
                Mat::row_major(&all_taps, c, taps),
            );
            for (y, z) in y
                .chunks_exact_mut(rows * out)
                .zip(z.chunks_exact(g.length * taps))
            {
                for j in 0..g.kernel {
                    if let Some((first, end, input)) = tap_rows(g, j) {
                        for (t, i) in (first..end).zip(input..) {
                            let from = &z[i * taps + j * out..i * taps + (j + 1) * out];
                            for (v, &add) in y[t * out..(t + 1) * out].iter_mut().zip(from) {
                                *v += add;
                            }
                        }
                    }
                }
                for row in y.chunks_exact_mut(out) {
                    if let Some(bias) = bias {
                        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                    if relu {
                        row.iter_mut()
                            .for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 });
                    }
                }
            }
        });
    y
}

/// Samples per partial sum of [`conv1d_weight_grad`]: fixed, so that the sum's order is
/// the same on any number of threads.
const GROUP: usize = 8;

/// The kernel's gradient `[O, k * C]` from the output's (`grad` `[B, L', O]`).
pub fn conv1d_weight_grad(x: &[f32], g: &Window1d, grad: &[f32], out: usize) -> Vec<f32> {
    let (rows, sample_len, row_len) = (g.rows(), g.sample_len(), g.row_len());
    let len = out * row_len;
    if len == 0 || sample_len == 0 || rows == 0 {
        return vec![0f32; len];
    }
    let partials: Vec<Vec<f32>> = x
        .par_chunks(GROUP * sample_len)
        .zip(grad.par_chunks(GROUP * rows * out))
        .map(|(xs, grads)| {
            // [k, O, C]: tap j's gradient is one contiguous [O, C] product.
            let mut taps = vec![0f32; len];
            for (x, grad) in xs
                .chunks_exact(sample_len)
                .zip(grads.chunks_exact(rows * out))
            {
                for j in 0..g.kernel {
                    if let Some((first, end, input)) = tap_rows(g, j) {
                        let n = end - first;
                        matmul(
                            &mut taps[j * out * g.channels..(j + 1) * out * g.channels],
                            true,
                            Mat::row_major(&grad[first * out..end * out], n, out).t(),
                            Mat::row_major(
                                &x[input * g.channels..(input + n) * g.channels],
                                n,
                                g.channels,
                            ),
                        );
                    }
                }
            }
            taps
        })
        .collect();
    let mut sum = vec![0f32; len];
    for part in &partials {
        for (s, p) in sum.iter_mut().zip(part) {
            *s += p;
        }
    }
    // [k, O, C] to [O, k * C].
    let mut dw = vec![0f32; len];
    for j in 0..g.kernel {
        for o in 0..out {
            let from = &sum[(j * out + o) * g.channels..(j * out + o + 1) * g.channels];
            dw[o * row_len + j * g.channels..o * row_len + (j + 1) * g.channels]
                .copy_from_slice(from);
        }
    }
    dw
}

/// The input's gradient `[B, L, C]` from the output's (`grad` `[B, L', O]`).
pub fn conv1d_input_grad(grad: &[f32], g: &Window1d, kernel: &[f32], out: usize) -> Vec<f32> {
    let (rows, sample_len, row_len) = (g.rows(), g.sample_len(), g.row_len());
    let batch = grad.len().checked_div(rows * out).unwrap_or(0);
    let mut dx = vec![0f32; batch * sample_len];
    if dx.is_empty() || out == 0 {
        return dx;
    }
    dx.par_chunks_mut(sample_len)
        .zip(grad.par_chunks(rows * out))
        .for_each(|(dx, grad)| {
            for j in 0..g.kernel {
                if let Some((first, end, input)) = tap_rows(g, j) {
                    let n = end - first;
                    // [n, O] @ [O, C]: tap j's rows of the kernel.
                    matmul(
                        &mut dx[input * g.channels..(input + n) * g.channels],
                        true,
                        Mat::row_major(&grad[first * out..end * out], n, out),
                        Mat::strided(&kernel[j * g.channels..], out, g.channels, row_len, 1),
                    );
                }
            }
        });
    dx
}
