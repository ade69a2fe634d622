//! int8 inference: symmetric quantisation as ONNX's `QuantizeLinear` does it (divide by
//! the scale, round half to even, saturate to [-128, 127]; zero point 0), and matrix
//! products of int8 values with exact i32 sums. Integer sums are exact in any order, so
//! results do not depend on the thread count.

use rayon::prelude::*;

use crate::unfold::Window2d;

/// `round_half_even(x / scale)` saturated to an i8.
#[inline(always)]
pub fn quantize_one(x: f32, scale: f32) -> i8 {
    (x / scale).round_ties_even().clamp(-128.0, 127.0) as i8
}

/// Quantises `x` into `out` (the same length).
pub fn quantize(x: &[f32], scale: f32, out: &mut [i8]) {
    crate::vectorised(
        #[inline(always)]
        || {
            for (o, v) in out.iter_mut().zip(x) {
                *o = quantize_one(*v, scale);
            }
        },
    );
}

/// Every kernel window of one NCHW sample, quantised, a row per output position, each in
/// the order of a `[out, channels, kernel, kernel]` weight's row (padding reads 0).
pub fn quantize_windows(x: &[f32], g: &Window2d, scale: f32, out: &mut [i8]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let k = g.kernel;
    let row_len = g.row_len();
    let stride = g.stride.max(1);
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * row_len..][..row_len];
            let mut at = 0;
            for c in 0..g.channels {
                let plane = &x[c * g.height * g.width..][..g.height * g.width];
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - g.padding as isize;
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - g.padding as isize;
                        let inside = iy >= 0
                            && ix >= 0
                            && (iy as usize) < g.height
                            && (ix as usize) < g.width;
                        row[at] = match inside {
                            true => quantize_one(plane[iy as usize * g.width + ix as usize], scale),
                            false => 0,
                        };
                        at += 1;
                    }
                }
            }
        }
    }
}

/// Rows of `a` at once per task: enough work to share out, little enough to spread.
const ROWS: usize = 16;

/// `out[r][c] = sum_k a[r][k] * b[c][k]`: `a` is `rows x depth`, `b` is `cols x depth`
/// (a weight, a row per output), `out` is `rows x cols`.
pub fn matmul(a: &[i8], b: &[i8], depth: usize, cols: usize, out: &mut [i32]) {
    if depth == 0 || cols == 0 {
        out.fill(0);
        return;
    }
    out.par_chunks_mut(ROWS * cols)
        .zip(a.par_chunks(ROWS * depth))
        .for_each(|(out, a)| {
            crate::vectorised(
                #[inline(always)]
                || {
                    for (out_row, a_row) in out.chunks_mut(cols).zip(a.chunks(depth)) {
                        for (o, b_row) in out_row.iter_mut().zip(b.chunks(depth)) {
                            *o = dot(a_row, b_row);
                        }
                    }
                },
            )
        });
}

/// An i8 dot product in i32: 16-bit products summed in 32-bit lanes.
#[inline(always)]
fn dot(a: &[i8], b: &[i8]) -> i32 {
    const LANES: usize = 32;
    let mut lanes = [0i32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for i in 0..LANES {
            lanes[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    let mut sum: i32 = lanes.iter().sum();
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        sum += i32::from(*x) * i32::from(*y);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_rounds_half_to_even_and_saturates() {
        let x = [0.5, 1.5, 2.5, -0.5, -2.5, 1000.0, -1000.0, 0.26];
        let mut q = [0i8; 8];
        quantize(&x, 1.0, &mut q);
        assert_eq!(q, [0, 2, 2, 0, -2, 127, -128, 0]);
        quantize(&[0.26, -0.76], 0.5, &mut q[..2]);
        assert_eq!(q[..2], [1, -2]);
    }

    #[test]
    fn the_product_is_the_exact_integer_sum() {
        let (rows, depth, cols) = (37, 83, 11);
        let a: Vec<i8> = (0..rows * depth)
            .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
            .collect();
        let b: Vec<i8> = (0..cols * depth)
            .map(|i| ((i * 91 + 5) % 256) as u8 as i8)
            .collect();
        let mut out = vec![0i32; rows * cols];
        matmul(&a, &b, depth, cols, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                let expected: i32 = (0..depth)
                    .map(|k| i32::from(a[r * depth + k]) * i32::from(b[c * depth + k]))
                    .sum();
                assert_eq!(out[r * cols + c], expected);
            }
        }
    }

    #[test]
    fn windows_follow_the_weight_layout_and_pad_with_zeros() {
        // One channel, 3x3, kernel 2, padding 1, stride 2: output 2x2.
        let g = Window2d {
            channels: 1,
            height: 3,
            width: 3,
            kernel: 2,
            stride: 2,
            padding: 1,
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![0i8; g.rows() * g.row_len()];
        quantize_windows(&x, &g, 1.0, &mut out);
        assert_eq!(out, [0, 0, 0, 1, 0, 0, 2, 3, 0, 4, 0, 7, 5, 6, 8, 9]);
    }
}
