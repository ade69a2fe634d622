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

/// Fake quantisation, for quantisation-aware training: each value of `x` as the int8
/// value it quantises to ([`quantize_one`]) times `scale`, into `out`. `inside`, when
/// given, is 1 where `x / scale` rounds into [-128, 127] and 0 where it saturates: a
/// straight-through estimator passes gradients only there (as PyTorch's FakeQuantize).
pub fn fake_quantize(x: &[f32], scale: f32, out: &mut [f32], inside: Option<&mut [f32]>) {
    crate::vectorised(
        #[inline(always)]
        || {
            for (o, v) in out.iter_mut().zip(x) {
                *o = f32::from(quantize_one(*v, scale)) * scale;
            }
            if let Some(inside) = inside {
                for (m, v) in inside.iter_mut().zip(x) {
                    let r = (v / scale).round_ties_even();
                    *m = f32::from(u8::from((-128.0..=127.0).contains(&r)));
                }
            }
        },
    );
}

/// Every kernel window of one NCHW sample, already quantised (`x`, from [`quantize`]), a
/// row per output position, each in the order of a `[out, channels, kernel, kernel]`
/// weight's row (padding reads 0).
pub fn windows(x: &[i8], g: &Window2d, out: &mut [i8]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let k = g.kernel;
    let row_len = g.row_len();
    let stride = g.stride.max(1);
    let plane = g.height * g.width;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * row_len..][..row_len];
            let x0 = (ox * stride) as isize - g.padding as isize;
            let inside_x = x0 >= 0 && x0 as usize + k <= g.width;
            let mut at = 0;
            for c in 0..g.channels {
                let channel = &x[c * plane..][..plane];
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - g.padding as isize;
                    let dst = &mut row[at..at + k];
                    at += k;
                    if iy < 0 || iy as usize >= g.height {
                        dst.fill(0);
                    } else if inside_x {
                        let start = iy as usize * g.width + x0 as usize;
                        dst.copy_from_slice(&channel[start..start + k]);
                    } else {
                        for (kx, d) in dst.iter_mut().enumerate() {
                            let ix = x0 + kx as isize;
                            *d = match ix >= 0 && (ix as usize) < g.width {
                                true => channel[iy as usize * g.width + ix as usize],
                                false => 0,
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Multiply-adds below which a product runs on the calling thread (a single sample's
/// layer: handing it out costs more than it saves).
const PARALLEL_WORK: usize = 1 << 20;

/// A weight laid out for [`matmul`]: `[depth, cols]`, widened to i16, so that one input
/// value times a row of it updates every output of a row at once.
pub fn transpose_weight(b: &[i8], depth: usize, cols: usize) -> Vec<i16> {
    let mut t = vec![0i16; depth * cols];
    for c in 0..cols {
        for k in 0..depth {
            t[k * cols + c] = i16::from(b[c * depth + k]);
        }
    }
    t
}

/// `out[r][c] = sum_k a[r][k] * b[c][k]`: `a` is `rows x depth`, `b_t` is `b` (`cols x
/// depth`, a weight with a row per output) from [`transpose_weight`], `out` is `rows x
/// cols`. Each row accumulates over `k` in i32 lanes across `c`.
pub fn matmul(a: &[i8], b_t: &[i16], depth: usize, cols: usize, out: &mut [i32]) {
    if depth == 0 || cols == 0 {
        out.fill(0);
        return;
    }
    let rows = out.len() / cols;
    let run = |out: &mut [i32], a: &[i8]| {
        crate::vectorised(
            #[inline(always)]
            || {
                for (out_row, a_row) in out.chunks_mut(cols).zip(a.chunks(depth)) {
                    out_row.fill(0);
                    for (x, b_row) in a_row.iter().zip(b_t.chunks(cols)) {
                        if *x == 0 {
                            continue;
                        }
                        let x = i32::from(*x);
                        for (o, w) in out_row.iter_mut().zip(b_row) {
                            *o += x * i32::from(*w);
                        }
                    }
                }
            },
        )
    };
    if rows * depth * cols < PARALLEL_WORK {
        run(out, a);
        return;
    }
    // Rows per task: about a quarter of a million multiply-adds each.
    let per_task = ((1 << 18) / (depth * cols)).max(1);
    out.par_chunks_mut(per_task * cols)
        .zip(a.par_chunks(per_task * depth))
        .for_each(|(out, a)| run(out, a));
}

/// `out[r][c] = sums[r][c] * scales[c] + bias[c]`, rows of `scales.len()` values.
pub fn dequantize(sums: &[i32], scales: &[f32], bias: &[f32], out: &mut [f32]) {
    let cols = scales.len();
    crate::vectorised(
        #[inline(always)]
        || {
            for (o, s) in out.chunks_mut(cols).zip(sums.chunks(cols)) {
                for (((o, s), scale), b) in o.iter_mut().zip(s).zip(scales).zip(bias) {
                    *o = *s as f32 * scale + b;
                }
            }
        },
    );
}

/// [`dequantize`] into planes: `sums` is `rows x cols` (a row per output position),
/// `out` is `cols x rows` (a plane per channel, NCHW).
pub fn dequantize_planes(sums: &[i32], scales: &[f32], bias: &[f32], out: &mut [f32]) {
    let cols = scales.len();
    let rows = sums.len() / cols.max(1);
    for (c, plane) in out.chunks_mut(rows).enumerate() {
        let (scale, b) = (scales[c], bias[c]);
        for (r, o) in plane.iter_mut().enumerate() {
            *o = sums[r * cols + c] as f32 * scale + b;
        }
    }
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
    fn fake_quantisation_is_the_int8_value_times_the_scale() {
        let x = [0.26, -0.76, 0.25, 63.7, -64.3, 64.0, f32::NAN];
        let mut out = [0f32; 7];
        let mut inside = [9f32; 7];
        fake_quantize(&x, 0.5, &mut out, Some(&mut inside));
        let mut q = [0i8; 7];
        quantize(&x, 0.5, &mut q);
        for (o, q) in out.iter().zip(q) {
            assert_eq!(*o, f32::from(q) * 0.5);
        }
        // 0.25 / 0.5 rounds half to even, to 0; 64.0 / 0.5 = 128 saturates, and so does
        // -64.3 (-128.6 rounds to -129); NaN is outside every range.
        assert_eq!(out[..6], [0.5, -1.0, 0.0, 63.5, -64.0, 63.5]);
        assert_eq!(inside, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
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
        matmul(
            &a,
            &transpose_weight(&b, depth, cols),
            depth,
            cols,
            &mut out,
        );
        // The same on many rows, shared among threads.
        let many: Vec<i8> = a.iter().copied().cycle().take(rows * depth * 400).collect();
        let mut big = vec![0i32; rows * 400 * cols];
        matmul(
            &many,
            &transpose_weight(&b, depth, cols),
            depth,
            cols,
            &mut big,
        );
        assert_eq!(big[..out.len()], out[..]);
        assert_eq!(big[big.len() - out.len()..], out[..]);
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
        let x: Vec<i8> = (1..=9).collect();
        let mut out = vec![0i8; g.rows() * g.row_len()];
        windows(&x, &g, &mut out);
        assert_eq!(out, [0, 0, 0, 1, 0, 0, 2, 3, 0, 4, 0, 7, 5, 6, 8, 9]);
    }
}
