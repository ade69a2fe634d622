//! `exp`, `sigmoid` and `tanh` without branches, so that loops over slices vectorise (the
//! standard library's call libm one value at a time), and the row softmax of attention
//! with its padding mask, forward and backward.
//!
//! `exp` reduces `x = n ln 2 + r` with `|r| <= ln 2 / 2` and evaluates a degree-6 Taylor
//! polynomial for `e^r` (truncation below 1.2e-7 relative), scaled by `2^n` built from the
//! exponent bits; tests/activation.rs bounds its error against `f64::exp`.

use rayon::prelude::*;

use crate::optim::CHUNK;

/// 1.5 * 2^23: adding it rounds a float below 2^22 to an integer held in the mantissa.
const ROUNDING: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `c[0] + x c[1] + x^2 c[2] + ...` by Horner's rule in fused multiply-adds: Rust never
/// fuses `a * b + c` itself, and unfused the polynomials took twice the instructions (GELU's
/// forward at half PyTorch's speed). `mul_add` rounds once on every CPU (the dispatched
/// wide-vector code has FMA; pulp's baseline fallback calls libm's exact `fmaf`), so
/// results do not depend on the CPU.
#[inline(always)]
fn horner(x: f32, c: &[f32]) -> f32 {
    c.iter().rev().fold(0.0, |acc, &k| acc.mul_add(x, k))
}

/// `e^x` within a few ulp; 0 below about -87 (where e^x < 2^-125: no subnormals), +inf
/// above 88.72.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.33, 88.72);
    let shifted = x * LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = horner(
        r,
        &[
            1.0,
            1.0,
            0.5,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
        ],
    );
    // The integer n sits in the low mantissa bits of `shifted`; 2^(n - 1) from its
    // exponent bits (2^n would overflow them at n = 128), times 2.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDING.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(126) << 23);
    p * scale * 2.0
}

/// `ln(x)` for a positive, normal, finite `x`, within about 2e-7 absolute: the exponent
/// from the bits, and the mantissa `m`, brought into [sqrt(1/2), sqrt(2)), through
/// `2 atanh((m - 1) / (m + 1))`'s series to the ninth power. Branch-free, so that loops
/// vectorise.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = mantissa > std::f32::consts::SQRT_2;
    let m = if big { mantissa * 0.5 } else { mantissa };
    let e = ((bits >> 23) as i32 - 127 + i32::from(big)) as f32;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series =
        2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 / 9.0))));
    series + e * std::f32::consts::LN_2
}

/// `(sin(pi s), cos(pi s))` for `s` in [-1, 1], within 1e-6: Taylor series of the
/// half angle (in [-pi/2, pi/2], to the 11th and 12th powers), doubled. Branch-free.
#[inline(always)]
pub fn sin_cos_pi(s: f32) -> (f32, f32) {
    let y = s * std::f32::consts::FRAC_PI_2;
    let y2 = y * y;
    let sin = y
        * (1.0
            + y2 * (-1.0 / 6.0
                + y2 * (1.0 / 120.0
                    + y2 * (-1.0 / 5040.0 + y2 * (1.0 / 362_880.0 - y2 / 39_916_800.0)))));
    let cos = 1.0
        + y2 * (-0.5
            + y2 * (1.0 / 24.0
                + y2 * (-1.0 / 720.0
                    + y2 * (1.0 / 40320.0 + y2 * (-1.0 / 3_628_800.0 + y2 / 479_001_600.0)))));
    (2.0 * sin * cos, 1.0 - 2.0 * sin * sin)
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`: exact to about 1e-7 absolute (so less, relatively,
/// very near zero).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Softmax over each row of `len` scores, in place, after scaling by `scale`. Row `r`
/// belongs to mask row `r / rows_per_mask`; keys where the mask is 0 get weight 0, and a
/// row whose keys are all masked spreads its weight evenly (as adding -1e9 to every
/// masked score did: in f32 they all become -1e9).
pub fn masked_softmax(
    scores: &mut [f32],
    len: usize,
    scale: f32,
    mask: Option<&[f32]>,
    rows_per_mask: usize,
) {
    let len = len.max(1);
    let per_task = (CHUNK / len).max(1) * len;
    scores
        .par_chunks_mut(per_task)
        .enumerate()
        .for_each(|(task, rows)| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for (r, row) in rows.chunks_mut(len).enumerate() {
                        let index = task * per_task / len + r;
                        let keys = mask.map(|m| {
                            let at = index / rows_per_mask.max(1) * len;
                            &m[at..at + len]
                        });
                        match keys {
                            Some(k) if k.iter().all(|&v| v == 0.0) => row.fill(1.0 / len as f32),
                            _ => softmax_row(row, scale, keys),
                        }
                    }
                },
            )
        });
}

#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32, keys: Option<&[f32]>) {
    let mut max = f32::NEG_INFINITY;
    for v in row.iter_mut() {
        *v *= scale;
    }
    match keys {
        Some(keys) => {
            for (&v, &k) in row.iter().zip(keys) {
                max = if k != 0.0 { max.max(v) } else { max };
            }
        }
        None => max = lanes(row, f32::NEG_INFINITY, |m, v| if v > m { v } else { m }),
    }
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    if let Some(keys) = keys {
        for (v, &k) in row.iter_mut().zip(keys) {
            *v = if k != 0.0 { *v } else { 0.0 };
        }
    }
    let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `values` folded with `f` in 16 interleaved lanes, then the lanes in order: a single
/// running value (a sum, a maximum) is folded one value at a time, each step waiting for
/// the last; 16 lanes vectorise (a 4,096-wide softmax of 128 rows: 584 -> 422 us, best
/// of 50).
#[inline(always)]
fn lanes(values: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = f(*a, v);
        }
    }
    let folded = acc.into_iter().fold(init, &f);
    rest.iter().fold(folded, |a, &v| f(a, v))
}

/// `sum(a * b)` in 16 interleaved lanes, as [`lanes`] (one running sum kept the softmax's
/// backward scalar: 4x PyTorch's time on rows of 1,000).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let len = a.len().min(b.len());
    let whole = len / 16 * 16;
    for (a, b) in a[..whole].chunks_exact(16).zip(b[..whole].chunks_exact(16)) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
    let folded = acc.iter().sum::<f32>();
    (whole..len).fold(folded, |sum, i| sum + a[i] * b[i])
}

/// The gradient of the scaled scores from the weights `w` and their gradient `dw`, in
/// place in `dw`: `scale * w * (dw - sum(dw * w))` per row.
pub fn softmax_backward(weights: &[f32], grad: &mut [f32], len: usize, scale: f32) {
    let len = len.max(1);
    let per_task = (CHUNK / len).max(1) * len;
    grad.par_chunks_mut(per_task)
        .zip(weights.par_chunks(per_task))
        .for_each(|(g, w)| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for (g, w) in g.chunks_mut(len).zip(w.chunks(len)) {
                        let dot = dot(g, w);
                        for (g, &w) in g.iter_mut().zip(w) {
                            *g = scale * w * (*g - dot);
                        }
                    }
                },
            )
        });
}

/// The error function, Abramowitz and Stegun's 7.1.26 (absolute error below 1.5e-7, 5e-7 in f32),
/// branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_and_gauss(x).0
}

/// `(erf(x), e^(-x^2))`: the second is a step of the first.
#[inline(always)]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let poly = t * horner(
        t,
        &[
            0.254_829_6,
            -0.284_496_74,
            1.421_413_7,
            -1.453_152_1,
            1.061_405_4,
        ],
    );
    let gauss = exp(-a * a);
    ((1.0 - poly * gauss).copysign(x), gauss)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// GELU with the error function (PyTorch's default): `x / 2 (1 + erf(x / sqrt 2))`.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
                    }
                },
            )
        });
    y
}

/// The gradient of [`gelu`]: `grad (Phi(x) + x phi(x))`.
pub fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                        // erf's own exp(-a^2) at a = x / sqrt 2 is the density's exp(-x^2 / 2).
                        let (erf, gauss) = erf_and_gauss(x * FRAC_1_SQRT_2);
                        *d = g * (0.5 * (1.0 + erf) + x * FRAC_1_SQRT_2PI * gauss);
                    }
                },
            )
        });
    dx
}

/// `f` of each value, in parallel chunks, compiled for the widest vectors.
#[inline(always)]
fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = f(x);
                    }
                },
            )
        });
    y
}

/// `f(a, b)` of each pair of values, for cheap `f` (a backward's products): rayon writes
/// the output straight into new memory, half the time of zeroing it on the calling thread
/// first and filling it from both (a sigmoid's backward on 524,288 values, 2 threads:
/// 84-134 -> 48-53 us), as [`map`] must for `f` that need the vector instructions.
#[inline(always)]
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    a.par_iter()
        .zip(b)
        .with_min_len(CHUNK)
        .map(|(&a, &b)| f(a, b))
        .collect()
}

/// A copy of `x` made by every thread of the pool, each its own part, for a pass in
/// place after it (one thread's copy of 2 MiB takes as long as the pass).
pub fn parallel_copy(x: &[f32]) -> Vec<f32> {
    x.par_iter().with_min_len(CHUNK).copied().collect()
}

/// [`tanh`] of every value.
pub fn tanh_values(x: &[f32]) -> Vec<f32> {
    map(x, tanh)
}

/// The gradient of [`tanh_values`] from its output `y`: `grad (1 - y^2)`.
pub fn tanh_backward(y: &[f32], grad: &[f32]) -> Vec<f32> {
    map2(y, grad, |y, g| g * (1.0 - y * y))
}

/// [`sigmoid`] of every value.
pub fn sigmoid_values(x: &[f32]) -> Vec<f32> {
    map(x, sigmoid)
}

/// The gradient of [`sigmoid_values`] from its output `y`: `grad y (1 - y)`.
pub fn sigmoid_backward(y: &[f32], grad: &[f32]) -> Vec<f32> {
    map2(y, grad, |y, g| g * y * (1.0 - y))
}
