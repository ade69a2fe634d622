//! Augmentation loops: a sample's rotation (the runtime draws the angles in order and runs
//! samples in parallel) and Gaussian noise (drawn here, from kdc's counter-based stream,
//! in parallel chunks): here so that every build profile optimises them.

use rayon::prelude::*;

use crate::activation::{ln, sin_cos_pi};
use crate::random::stream_value;

/// Adds `std` times a standard normal to every value. Values `2p` and `2p + 1` take the
/// Box-Muller pair of the stream's values `position + 2p` and `position + 2p + 1` (the
/// stream keyed `key`), computed in f32 with kdc's branch-free logarithm, sine and cosine
/// so that the loop vectorises (f64 with libm's took 30 us a 3 x 32 x 32 sample, 0.4x of
/// PyTorch). Chunks of values run in parallel, each starting the stream at its first pair:
/// the same values on any number of threads.
pub fn add_noise(values: &mut [f32], std: f32, key: u64, position: u64) {
    // Values per task: even, so that every task starts on a pair.
    const VALUES: usize = 1 << 14;
    values
        .par_chunks_mut(VALUES)
        .enumerate()
        .for_each(|(task, chunk)| {
            let start = position.wrapping_add((task * VALUES) as u64);
            let whole = 2 * (chunk.len() / 2) as u64;
            crate::vectorised(
                #[inline(always)]
                || {
                    let mut pairs = chunk.chunks_exact_mut(2);
                    for (p, pair) in pairs.by_ref().enumerate() {
                        let (a, b) = normal_pair(key, start.wrapping_add(2 * p as u64));
                        pair[0] += std * a;
                        pair[1] += std * b;
                    }
                    let rest = pairs.into_remainder();
                    if let Some(last) = rest.first_mut() {
                        *last += std * normal_pair(key, start.wrapping_add(whole)).0;
                    }
                },
            )
        });
}

/// Box-Muller on the stream's values `n` and `n + 1`: two independent standard normals.
#[inline(always)]
fn normal_pair(key: u64, n: u64) -> (f32, f32) {
    const UNIT: f32 = 1.0 / 16_777_216.0;
    let (a, b) = (stream_value(key, n), stream_value(key, n.wrapping_add(1)));
    // 24 random bits each: u1 in (0, 1] (its logarithm is finite), u2 in [0, 1).
    let u1 = ((a >> 40) as f32 + 1.0) * UNIT;
    let u2 = (b >> 40) as f32 * UNIT;
    let radius = (-2.0 * ln(u1)).sqrt();
    let (sin, cos) = sin_cos_pi(2.0 * u2 - 1.0);
    (radius * cos, radius * sin)
}

/// Rotates one `[channels, h, w]` sample around the image centre by `angle` radians
/// (counter-clockwise), bilinear, neighbours outside the image taking their channel's
/// `fill` value; `scratch` holds a sample's worth of values.
pub fn rotate(
    sample: &mut [f32],
    scratch: &mut [f32],
    (channels, h, w): (usize, usize, usize),
    angle: f64,
    fill: &[f32],
) {
    if angle == 0.0 {
        return;
    }
    scratch.copy_from_slice(sample);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let plane_len = h * w;
    // Where each pixel of a row reads from, the same in every channel: computed once per
    // row, not once per channel (a 3 x 32 x 32 sample: 21 us before).
    let mut y0 = vec![0isize; w];
    let mut x0 = vec![0isize; w];
    let mut fy = vec![0f64; w];
    let mut fx = vec![0f64; w];
    for i in 0..h {
        crate::vectorised(
            #[inline(always)]
            || {
                for j in 0..w {
                    let (y, x) = (i as f64 - cy, j as f64 - cx);
                    // The inverse rotation maps each output pixel to its source.
                    let sy = cos * y - sin * x + cy;
                    let sx = sin * y + cos * x + cx;
                    let (ty, tx) = (floor(sy), floor(sx));
                    (y0[j], x0[j], fy[j], fx[j]) = (ty, tx, sy - ty as f64, sx - tx as f64);
                }
            },
        );
        for c in 0..channels {
            let plane = &scratch[c * plane_len..(c + 1) * plane_len];
            let value = f64::from(fill.get(c).copied().unwrap_or(0.0));
            let at = |y: isize, x: isize| -> f64 {
                if y >= 0 && (y as usize) < h && x >= 0 && (x as usize) < w {
                    f64::from(plane[y as usize * w + x as usize])
                } else {
                    value
                }
            };
            let out = &mut sample[c * plane_len + i * w..c * plane_len + (i + 1) * w];
            for (j, o) in out.iter_mut().enumerate() {
                let (y0, x0, fy, fx) = (y0[j], x0[j], fy[j], fx[j]);
                // Most pixels read four neighbours inside the image: no bounds to test.
                let corners =
                    if y0 >= 0 && x0 >= 0 && ((y0 + 1) as usize) < h && ((x0 + 1) as usize) < w {
                        let at = y0 as usize * w + x0 as usize;
                        let v = |k: usize| f64::from(plane[k]);
                        (v(at), v(at + 1), v(at + w), v(at + w + 1))
                    } else {
                        (
                            at(y0, x0),
                            at(y0, x0 + 1),
                            at(y0 + 1, x0),
                            at(y0 + 1, x0 + 1),
                        )
                    };
                let top = corners.0 * (1.0 - fx) + corners.1 * fx;
                let bottom = corners.2 * (1.0 - fx) + corners.3 * fx;
                *o = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        }
    }
}

/// `x.floor()` as an integer, for `|x|` far below `isize::MAX` (pixel coordinates): the
/// baseline x86-64 target has no rounding instruction, so `f64::floor` is a call into
/// libm, twice per pixel of a rotation; truncation is one instruction.
#[inline(always)]
fn floor(x: f64) -> isize {
    let t = x as isize;
    if (t as f64) > x {
        t - 1
    } else {
        t
    }
}
