//! A 2-d convolution image by image: each image's windows, unfolded into a buffer that
//! stays in cache, meet the kernel in one single-threaded product (kd-matmul), with images
//! in parallel. Unfolding the whole batch first wrote and read back 75 MB per layer of
//! resnet_bn, and its products, 16 wide, split badly over threads. The kernel is the
//! product's left side, so the output comes out NCHW with no transpose; the weight
//! gradient sums fixed groups of images in order, so no result depends on the thread
//! count.

use kd_matmul::{matmul, Mat};
use rayon::prelude::*;

use crate::pool::{max_pool2d_into, Pool2d};
use crate::unfold::{fold_sample, unfold_sample, Window2d};

/// What the forward applies to each output plane after the product.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// One value per output channel.
    pub bias: Option<&'a [f32]>,
    /// Negative values (and NaN) to zero, after the bias.
    pub relu: bool,
    /// A max pool `(kernel, stride)` after the ReLU; its output is what is written.
    pub max_pool: Option<(usize, usize)>,
}

impl ConvEpilogue<'_> {
    fn pool(&self, g: &Window2d) -> Option<Pool2d> {
        self.max_pool.map(|(kernel, stride)| Pool2d {
            height: g.out_height(),
            width: g.out_width(),
            kernel,
            stride,
        })
    }

    /// Values per output plane: the pooled plane's, with a pool.
    pub fn plane_len(&self, g: &Window2d) -> usize {
        match self.pool(g) {
            Some(p) => p.out_height() * p.out_width(),
            None => g.rows(),
        }
    }
}

/// `x` `[B, C, H, W]` convolved with `kernel` (`[O, k * k * C]`, rows in the order of
/// [`Window2d::row_len`]) into `out` (`[B, O, plane]`, plane from
/// [`ConvEpilogue::plane_len`]), with the epilogue applied.
pub fn conv2d(
    x: &[f32],
    g: &Window2d,
    kernel: &[f32],
    out_channels: usize,
    epilogue: &ConvEpilogue,
    out: &mut [f32],
) {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let plane = epilogue.plane_len(g);
    if out_channels * plane == 0 || sample_len == 0 {
        return;
    }
    let pool = epilogue.pool(g);
    let scratch = || Scratch {
        padded: vec![0f32; g.padded_len()],
        cols: vec![0f32; rows * row_len],
        product: vec![
            0f32;
            if pool.is_some() {
                out_channels * rows
            } else {
                0
            }
        ],
        line: vec![0f32; g.out_width()],
    };
    out.par_chunks_mut(out_channels * plane)
        .zip(x.par_chunks(sample_len))
        .for_each_init(scratch, |s, (out, sample)| {
            unfold_sample(sample, g, &mut s.padded, &mut s.cols);
            let product = match pool {
                Some(_) => &mut s.product[..],
                None => &mut out[..],
            };
            // [O, k k C] @ [k k C, H' W']: the windows' rows read as columns.
            let windows = Mat::row_major(&s.cols, rows, row_len).t();
            matmul(
                product,
                false,
                Mat::row_major(kernel, out_channels, row_len),
                windows,
            );
            finish_planes(product, rows, epilogue);
            if let Some(p) = &pool {
                max_pool2d_into(&s.product, p, out, &mut s.line);
            }
        });
}

/// Per-thread buffers of [`conv2d`].
struct Scratch {
    padded: Vec<f32>,
    cols: Vec<f32>,
    /// The unpooled planes, when a pool follows.
    product: Vec<f32>,
    line: Vec<f32>,
}

/// The bias and the ReLU on one image's planes (`plane` values each), in place.
fn finish_planes(planes: &mut [f32], plane: usize, epilogue: &ConvEpilogue) {
    match (epilogue.bias, epilogue.relu) {
        (None, false) => {}
        (None, true) => planes.iter_mut().for_each(|v| *v = relu(*v)),
        (Some(bias), relu_too) => {
            for (values, &b) in planes.chunks_exact_mut(plane).zip(bias) {
                match relu_too {
                    true => values.iter_mut().for_each(|v| *v = relu(*v + b)),
                    false => values.iter_mut().for_each(|v| *v += b),
                }
            }
        }
    }
}

/// max(v, 0), with NaN to 0 as kdc's ReLU does.
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Images per partial sum of [`conv2d_weight_grad`]: fixed, so that the sum's order (and
/// its rounding) is the same on any number of threads.
const GROUP: usize = 8;

/// The kernel's gradient `[O, k * k * C]` (the layout of [`conv2d`]'s `kernel`) from the
/// output's, `grad` `[B, O, H' * W']` (unpooled): each image's `grad @ windows`, summed over
/// groups of [`GROUP`] images, and the groups in order.
pub fn conv2d_weight_grad(x: &[f32], g: &Window2d, grad: &[f32], out_channels: usize) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let len = out_channels * row_len;
    if len == 0 || rows == 0 || sample_len == 0 {
        return vec![0f32; len];
    }
    let grad_len = out_channels * rows;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(GROUP * sample_len)
        .zip(grad.par_chunks(GROUP * grad_len))
        .map(|(samples, grads)| {
            let mut padded = vec![0f32; g.padded_len()];
            let mut cols = vec![0f32; rows * row_len];
            let mut partial = vec![0f32; len];
            for (i, (sample, grad)) in samples
                .chunks_exact(sample_len)
                .zip(grads.chunks_exact(grad_len))
                .enumerate()
            {
                unfold_sample(sample, g, &mut padded, &mut cols);
                // [O, H' W'] @ [H' W', k k C].
                matmul(
                    &mut partial,
                    i > 0,
                    Mat::row_major(grad, out_channels, rows),
                    Mat::row_major(&cols, rows, row_len),
                );
            }
            partial
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        for (s, p) in sum.iter_mut().zip(&part) {
            *s += p;
        }
    }
    sum
}

/// The input's gradient `[B, C, H, W]` from the output's (`grad` `[B, O, H' * W']`,
/// unpooled): each image's windows' gradient `grad^T @ kernel`, folded back onto it.
pub fn conv2d_input_grad(
    grad: &[f32],
    g: &Window2d,
    kernel: &[f32],
    out_channels: usize,
) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let grad_len = out_channels * rows;
    let batch = grad.len().checked_div(grad_len).unwrap_or(0);
    let mut dx = vec![0f32; batch * sample_len];
    if grad_len == 0 || sample_len == 0 || row_len == 0 {
        return dx;
    }
    dx.par_chunks_mut(sample_len)
        .zip(grad.par_chunks(grad_len))
        .for_each_init(
            || (vec![0f32; g.padded_len()], vec![0f32; rows * row_len]),
            |(padded, cols), (dx, grad)| {
                // [H' W', O] @ [O, k k C].
                matmul(
                    cols,
                    false,
                    Mat::row_major(grad, out_channels, rows).t(),
                    Mat::row_major(kernel, out_channels, row_len),
                );
                fold_sample(cols, g, padded, dx);
            },
        );
    dx
}
