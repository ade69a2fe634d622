//! Batch normalisation, forward and backward, for `x` viewed as `[outer, channels, inner]`
//! (NCHW images have `inner` H * W, flat features `inner` 1). candle's composition took
//! about ten passes over the activations each way, each with an allocation and, in the
//! backward, a zeroed tensor per intermediate; here the statistics are one pass, the
//! output one, and the backward two (its sums, then the input gradient).
//!
//! Sums run over fixed blocks of rows whose partial results are combined in order, in f64,
//! so the results do not depend on the number of threads.

use rayon::prelude::*;

use crate::optim::CHUNK;

/// How a tensor splits into channels: `[outer, channels, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channels {
    pub channels: usize,
    pub inner: usize,
}

impl Channels {
    fn block(self) -> usize {
        (self.channels * self.inner).max(1)
    }

    /// Values each channel holds in `len` values.
    pub fn count(self, len: usize) -> usize {
        len / self.channels.max(1)
    }

    /// Whole rows per task: at least CHUNK values each.
    fn rows_per_task(self) -> usize {
        (CHUNK / self.block()).max(1)
    }
}

/// Per-channel sums of two terms, `terms(channel, range)` giving a run's pair; runs are
/// added task by task, and the tasks' partials in order.
fn channel_sums(
    len: usize,
    shape: Channels,
    terms: impl Fn(usize, std::ops::Range<usize>) -> (f64, f64) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let (channels, inner) = (shape.channels, shape.inner);
    let block = shape.block();
    let rows = len / block;
    let per_task = shape.rows_per_task();
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..rows.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let mut first = vec![0f64; channels];
            let mut second = vec![0f64; channels];
            for row in task * per_task..((task + 1) * per_task).min(rows) {
                for c in 0..channels {
                    let start = row * block + c * inner;
                    let (a, b) = terms(c, start..start + inner);
                    first[c] += a;
                    second[c] += b;
                }
            }
            (first, second)
        })
        .collect();
    add_in_order(partials, channels)
}

/// [`channel_sums`] for flat features (`inner` 1): `terms(index, channel)` for every
/// value, a row at a time across the channels (contiguous, so it vectorises; a call per
/// value was 2 ns a value).
fn column_sums(
    len: usize,
    channels: usize,
    rows_per_task: usize,
    terms: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let rows = len / channels.max(1);
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..rows.div_ceil(rows_per_task))
        .into_par_iter()
        .map(|task| {
            let mut first = vec![0f64; channels];
            let mut second = vec![0f64; channels];
            crate::vectorised(
                #[inline(always)]
                || {
                    for row in task * rows_per_task..((task + 1) * rows_per_task).min(rows) {
                        for (c, (a, b)) in first.iter_mut().zip(second.iter_mut()).enumerate() {
                            let (x, y) = terms(row * channels + c, c);
                            *a += x;
                            *b += y;
                        }
                    }
                },
            );
            (first, second)
        })
        .collect();
    add_in_order(partials, channels)
}

/// The tasks' per-channel sums added in task order.
fn add_in_order(partials: Vec<(Vec<f64>, Vec<f64>)>, channels: usize) -> (Vec<f64>, Vec<f64>) {
    let mut first = vec![0f64; channels];
    let mut second = vec![0f64; channels];
    for (a, b) in partials {
        for (sum, v) in first.iter_mut().zip(a) {
            *sum += v;
        }
        for (sum, v) in second.iter_mut().zip(b) {
            *sum += v;
        }
    }
    (first, second)
}

/// Two sums over a run in eight f64 lanes (which vectorises; one accumulator would not).
/// f64 because a parameter's gradient is a sum of thousands of terms that largely cancel:
/// f32 terms left it 2e-5 off, relatively, on a 40 x 8 x 7 x 9 batch.
#[inline(always)]
fn lane_sums(n: usize, term: impl Fn(usize) -> (f64, f64)) -> (f64, f64) {
    let mut a = [0f64; 8];
    let mut b = [0f64; 8];
    let whole = n - n % 8;
    let mut i = 0;
    while i < whole {
        for lane in 0..8 {
            let (x, y) = term(i + lane);
            a[lane] += x;
            b[lane] += y;
        }
        i += 8;
    }
    let (mut sa, mut sb) = (0f64, 0f64);
    for j in whole..n {
        let (x, y) = term(j);
        sa += x;
        sb += y;
    }
    (a.iter().sum::<f64>() + sa, b.iter().sum::<f64>() + sb)
}

/// Each channel's mean and biased variance. The sums are taken around the channel's first
/// value (shifted data), so a large mean does not cancel the variance away.
pub fn moments(x: &[f32], shape: Channels) -> (Vec<f64>, Vec<f64>) {
    let count = shape.count(x.len());
    if count == 0 {
        return (vec![0.0; shape.channels], vec![0.0; shape.channels]);
    }
    let pivot: Vec<f32> = (0..shape.channels).map(|c| x[c * shape.inner]).collect();
    let (sums, squares) = if shape.inner == 1 {
        column_sums(x.len(), shape.channels, shape.rows_per_task(), |i, c| {
            let d = f64::from(x[i] - pivot[c]);
            (d, d * d)
        })
    } else {
        channel_sums(x.len(), shape, |c, range| {
            let run = &x[range];
            let k = pivot[c];
            lane_sums(run.len(), |i| {
                let d = f64::from(run[i] - k);
                (d, d * d)
            })
        })
    };
    let n = count as f64;
    let mut mean = Vec::with_capacity(shape.channels);
    let mut var = Vec::with_capacity(shape.channels);
    for ((&k, s), q) in pivot.iter().zip(sums).zip(squares) {
        let shift = s / n;
        mean.push(f64::from(k) + shift);
        var.push((q / n - shift * shift).max(0.0));
    }
    (mean, var)
}

/// Per-channel coefficients of an elementwise pass: `a[c] * (x - m[c]) + b[c]`.
#[derive(Clone, Debug)]
pub struct Affine {
    pub centre: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

/// `y = scale[c] * (x - centre[c]) + shift[c]`, then a ReLU when `relu`: the normalised
/// output (scale `weight / sqrt(var + eps)`, shift the bias).
pub fn normalise(x: &[f32], shape: Channels, affine: &Affine, relu: bool) -> Vec<f32> {
    let block = shape.block();
    let per_task = shape.rows_per_task() * block;
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(per_task)
        .zip(x.par_chunks(per_task))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(block).zip(x.chunks(block)) {
                if shape.inner == 1 {
                    let coefs = affine.centre.iter().zip(&affine.scale).zip(&affine.shift);
                    for ((v, &x), ((&m, &a), &b)) in y.iter_mut().zip(x).zip(coefs) {
                        let out = a * (x - m) + b;
                        *v = if relu { out.max(0.0) } else { out };
                    }
                    continue;
                }
                for (c, (run, x)) in y
                    .chunks_mut(shape.inner)
                    .zip(x.chunks(shape.inner))
                    .enumerate()
                {
                    let (m, a, b) = (affine.centre[c], affine.scale[c], affine.shift[c]);
                    if relu {
                        for (v, &x) in run.iter_mut().zip(x) {
                            *v = (a * (x - m) + b).max(0.0);
                        }
                    } else {
                        for (v, &x) in run.iter_mut().zip(x) {
                            *v = a * (x - m) + b;
                        }
                    }
                }
            }
        });
    y
}

/// The gradient reaching the normalisation: `grad`, zeroed where a fused ReLU's output `y`
/// is not positive.
#[inline(always)]
fn masked(g: f32, y: Option<f32>) -> f32 {
    match y {
        Some(y) if y <= 0.0 => 0.0,
        _ => g,
    }
}

/// The backward's sums per channel: `sum(g)` and `sum(g * (x - centre))`, with `g` the
/// gradient masked by the fused ReLU's output `y` when there is one. The bias gradient is
/// the first; the weight gradient the second times `1 / sqrt(var + eps)`.
pub fn backward_sums(
    x: &[f32],
    grad: &[f32],
    y: Option<&[f32]>,
    shape: Channels,
    centre: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    if shape.inner == 1 {
        let per_task = shape.rows_per_task();
        return match y {
            Some(y) => column_sums(x.len(), shape.channels, per_task, |i, c| {
                let g = f64::from(masked(grad[i], Some(y[i])));
                (g, g * f64::from(x[i] - centre[c]))
            }),
            None => column_sums(x.len(), shape.channels, per_task, |i, c| {
                let g = f64::from(grad[i]);
                (g, g * f64::from(x[i] - centre[c]))
            }),
        };
    }
    channel_sums(x.len(), shape, |c, range| {
        let (x, g) = (&x[range.clone()], &grad[range.clone()]);
        let m = centre[c];
        match y {
            Some(y) => {
                let y = &y[range];
                lane_sums(x.len(), |i| {
                    let g = f64::from(masked(g[i], Some(y[i])));
                    (g, g * f64::from(x[i] - m))
                })
            }
            None => lane_sums(x.len(), |i| {
                let g = f64::from(g[i]);
                (g, g * f64::from(x[i] - m))
            }),
        }
    })
}

/// The input gradient's coefficients per channel: `scale * g + slope * (x - centre) +
/// offset`. In training mode (statistics of the batch) the slope and offset carry the
/// statistics' own gradients; with running statistics both are zero.
#[derive(Clone, Debug)]
pub struct InputGradient {
    pub centre: Vec<f32>,
    pub scale: Vec<f32>,
    pub slope: Vec<f32>,
    pub offset: Vec<f32>,
}

/// One run of the input gradient: `k g + p (x - m) + o` with `g` masked by `y`, each
/// coefficient from its iterator (one per value for flat features, repeated otherwise).
#[inline(always)]
fn input_gradient_run<'a>(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    y: Option<&[f32]>,
    coefs: impl Iterator<Item = (&'a f32, &'a f32, &'a f32, &'a f32)>,
) {
    match y {
        Some(y) => {
            for ((((d, &x), &g), &y), (&m, &k, &p, &o)) in
                dx.iter_mut().zip(x).zip(g).zip(y).zip(coefs)
            {
                let g = if y > 0.0 { g } else { 0.0 };
                *d = k * g + p * (x - m) + o;
            }
        }
        None => {
            for (((d, &x), &g), (&m, &k, &p, &o)) in dx.iter_mut().zip(x).zip(g).zip(coefs) {
                *d = k * g + p * (x - m) + o;
            }
        }
    }
}

/// The input gradient of [`normalise`], `g` masked as in [`backward_sums`].
pub fn backward_input(
    x: &[f32],
    grad: &[f32],
    y: Option<&[f32]>,
    shape: Channels,
    coefs: &InputGradient,
) -> Vec<f32> {
    let block = shape.block();
    let per_task = shape.rows_per_task() * block;
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(per_task)
        .enumerate()
        .for_each(|(task, dx)| {
            let base = task * per_task;
            crate::vectorised(
                #[inline(always)]
                || {
                    for (row, dx) in dx.chunks_mut(block).enumerate() {
                        let start = base + row * block;
                        let range = start..start + block;
                        let (x, g) = (&x[range.clone()], &grad[range.clone()]);
                        let y = y.map(|y| &y[range]);
                        if shape.inner == 1 {
                            // Flat features: a row holds one value per channel.
                            let each = coefs
                                .centre
                                .iter()
                                .zip(&coefs.scale)
                                .zip(&coefs.slope)
                                .zip(&coefs.offset)
                                .map(|(((m, k), p), o)| (m, k, p, o));
                            input_gradient_run(dx, x, g, y, each);
                            continue;
                        }
                        let inner = shape.inner;
                        for c in 0..shape.channels {
                            let run = c * inner..(c + 1) * inner;
                            let same = std::iter::repeat((
                                &coefs.centre[c],
                                &coefs.scale[c],
                                &coefs.slope[c],
                                &coefs.offset[c],
                            ));
                            input_gradient_run(
                                &mut dx[run.clone()],
                                &x[run.clone()],
                                &g[run.clone()],
                                y.map(|y| &y[run]),
                                same,
                            );
                        }
                    }
                },
            )
        });
    dx
}
