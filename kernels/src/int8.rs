//! int8 inference: symmetric quantisation as ONNX's `QuantizeLinear` does it (divide by
//! the scale, round half to even, saturate to [-128, 127]; zero point 0), and matrix
//! products and convolutions of int8 values with exact i32 sums. Integer sums are exact in any order, so
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

/// One sample's convolution in int8: `x` is its input, already quantised (`[C, H, W]`),
/// `weights` a row of `depth` (`C * k * k`) per output channel, and `out` gets each
/// channel's plane (`[out, H', W']`) as `sum * scales[c] + bias[c]`. `scratch` holds the
/// sample's windows transposed, a row of output positions per weight column, so each
/// weight value scales a whole row at once: wide vector work even for a layer with few
/// channels (a row per position and a lane per channel left most lanes idle at 8 or 16
/// channels, and took 60% of a pruned MNIST CNN's single-sample forward).
pub fn conv2d(
    x: &[i8],
    g: &Window2d,
    weights: &[i8],
    scales: &[f32],
    bias: &[f32],
    scratch: &mut Vec<i16>,
    out: &mut [f32],
) {
    let rows = g.rows();
    let depth = g.row_len();
    scratch.clear();
    scratch.resize(depth * rows, 0);
    windows_by_column(x, g, scratch);
    let columns: &[i16] = scratch;
    // One output channel's plane, summed in `acc` (a row of positions).
    let channel = |acc: &mut Vec<i32>, (((plane, row), scale), b): Channel| {
        crate::vectorised(
            #[inline(always)]
            || {
                acc.clear();
                acc.resize(rows, 0);
                for (w, column) in row.iter().zip(columns.chunks(rows)) {
                    // A pruned weight adds nothing.
                    if *w == 0 {
                        continue;
                    }
                    let w = i32::from(*w);
                    for (a, v) in acc.iter_mut().zip(column) {
                        *a += w * i32::from(*v);
                    }
                }
                for (o, a) in plane.iter_mut().zip(acc.iter()) {
                    *o = *a as f32 * scale + b;
                }
            },
        )
    };
    // A large sample's channels are shared among threads (each channel's sum is exact,
    // whichever thread computes it); a small one's stay on this thread.
    if rows * depth * scales.len() < PARALLEL_WORK {
        let mut acc = Vec::new();
        out.chunks_mut(rows)
            .zip(weights.chunks(depth.max(1)))
            .zip(scales)
            .zip(bias)
            .for_each(|item| channel(&mut acc, item));
    } else {
        out.par_chunks_mut(rows)
            .zip(weights.par_chunks(depth.max(1)))
            .zip(scales.par_iter())
            .zip(bias.par_iter())
            .for_each_init(Vec::new, channel);
    }
}

/// One output channel of [`conv2d`]: its plane, its weight row, its scale and its bias.
type Channel<'a> = (((&'a mut [f32], &'a [i8]), &'a f32), &'a f32);

/// Every kernel window of one sample, a row per weight column (`c, ky, kx`, the order of
/// a `[out, C, k, k]` weight's row) holding that column's input at every output position
/// (padding reads 0), widened to i16.
fn windows_by_column(x: &[i8], g: &Window2d, out: &mut [i16]) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let rows = oh * ow;
    let k = g.kernel;
    let stride = g.stride.max(1);
    let plane = g.height * g.width;
    for c in 0..g.channels {
        let channel = &x[c * plane..][..plane];
        for ky in 0..k {
            for kx in 0..k {
                let column = &mut out[((c * k + ky) * k + kx) * rows..][..rows];
                for oy in 0..oh {
                    let dst = &mut column[oy * ow..][..ow];
                    let iy = (oy * stride + ky) as isize - g.padding as isize;
                    if iy < 0 || iy as usize >= g.height {
                        dst.fill(0);
                        continue;
                    }
                    let line = &channel[iy as usize * g.width..][..g.width];
                    // The positions whose input column `ox * stride + kx - padding` lies
                    // inside the line: [lo, hi); padding reads 0 on either side.
                    let lo = g.padding.saturating_sub(kx).div_ceil(stride).min(ow);
                    let hi = (g.width + g.padding)
                        .checked_sub(kx)
                        .map_or(0, |end| end.div_ceil(stride))
                        .clamp(lo, ow);
                    dst[..lo].fill(0);
                    dst[hi..].fill(0);
                    if lo == hi {
                        continue;
                    }
                    let first = lo * stride + kx - g.padding;
                    let inside = &mut dst[lo..hi];
                    match stride {
                        1 => {
                            for (d, v) in inside.iter_mut().zip(&line[first..]) {
                                *d = i16::from(*v);
                            }
                        }
                        _ => {
                            for (d, v) in
                                inside.iter_mut().zip(line[first..].iter().step_by(stride))
                            {
                                *d = i16::from(*v);
                            }
                        }
                    }
                }
            }
        }
    }
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
    fn the_convolution_is_the_exact_integer_sum_scaled() {
        for (channels, size, kernel, stride, padding, outs) in [
            (1, 28, 5, 1, 0, 8),
            (3, 9, 3, 2, 1, 5),
            (4, 6, 3, 1, 2, 16),
            (2, 5, 1, 1, 0, 3),
            (1, 2, 5, 3, 2, 2),
            // Past PARALLEL_WORK: its channels shared among threads.
            (16, 40, 3, 1, 1, 40),
        ] {
            let g = Window2d {
                channels,
                height: size,
                width: size + 1,
                kernel,
                stride,
                padding,
            };
            let x: Vec<i8> = (0..g.sample_len())
                .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
                .collect();
            let depth = g.row_len();
            let w: Vec<i8> = (0..outs * depth)
                .map(|i| match i % 7 {
                    3 => 0,
                    _ => ((i * 91 + 5) % 256) as u8 as i8,
                })
                .collect();
            let scales: Vec<f32> = (0..outs).map(|c| 0.01 + c as f32 * 0.003).collect();
            let bias: Vec<f32> = (0..outs).map(|c| c as f32 - 2.0).collect();
            let mut y = vec![0f32; outs * g.rows()];
            conv2d(&x, &g, &w, &scales, &bias, &mut Vec::new(), &mut y);
            // Against the convolution written out, one output at a time.
            let (oh, ow) = (g.out_height(), g.out_width());
            for c in 0..outs {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = 0i32;
                        for ci in 0..channels {
                            for ky in 0..kernel {
                                for kx in 0..kernel {
                                    let iy = (oy * stride + ky) as isize - padding as isize;
                                    let ix = (ox * stride + kx) as isize - padding as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy as usize >= g.height
                                        || ix as usize >= g.width
                                    {
                                        continue;
                                    }
                                    let v =
                                        x[(ci * g.height + iy as usize) * g.width + ix as usize];
                                    let k = w[c * depth + (ci * kernel + ky) * kernel + kx];
                                    sum += i32::from(v) * i32::from(k);
                                }
                            }
                        }
                        let expected = sum as f32 * scales[c] + bias[c];
                        assert_eq!(y[(c * oh + oy) * ow + ox], expected, "{g:?}");
                    }
                }
            }
        }
    }
}
