//! Convolution as a matrix product: `unfold` copies every kernel window of the input into a
//! row (im2col), so that one matmul with the flattened kernel computes the convolution, and
//! `fold` is its transpose (col2im), which sums the rows' gradients back into the input's.
//! Samples run in parallel.

use rayon::prelude::*;

/// A 2-d convolution's geometry on NCHW inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window2d {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding).saturating_sub(self.kernel) / self.stride.max(1) + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding).saturating_sub(self.kernel) / self.stride.max(1) + 1
    }

    /// Rows per sample: one per output position.
    pub fn rows(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Values per row, in the order of a `[out, channels, kernel, kernel]` weight.
    pub fn row_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The input position a window element reads, or `None` in the padding.
    #[inline]
    fn source(&self, out: usize, offset: usize, size: usize) -> Option<usize> {
        (out * self.stride + offset)
            .checked_sub(self.padding)
            .filter(|&i| i < size)
    }
}

/// The range of output columns whose input column `o * stride + offset - padding` lies in
/// `0..size`.
fn valid_outputs(out_len: usize, offset: usize, g: &Window2d, size: usize) -> (usize, usize) {
    let stride = g.stride.max(1);
    // The first output whose input index is >= 0, and the first whose index is >= size.
    let lo = g.padding.saturating_sub(offset).div_ceil(stride);
    let hi = (size + g.padding)
        .checked_sub(offset)
        .map_or(0, |limit| limit.div_ceil(stride));
    (lo.min(out_len), hi.min(out_len).max(lo.min(out_len)))
}

/// `x` is `[batch, C, H, W]`; returns `[C * k * k, batch * H' * W']`: one row per kernel
/// element (in the order of a `[out, C, k, k]` weight), holding every sample's output
/// positions side by side, so that `weight @ cols` is one matrix product for the whole
/// batch (`[out, batch, H' * W']`, each sample a contiguous run). Each row is filled from
/// runs of input columns (contiguous when the stride is 1).
pub fn unfold2d(x: &[f32], batch: usize, g: &Window2d) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let mut cols = vec![0f32; batch * rows * row_len];
    if rows * row_len * batch == 0 {
        return cols;
    }
    let (out_h, out_w, k, stride) = (g.out_height(), g.out_width(), g.kernel, g.stride.max(1));
    cols.par_chunks_mut(batch * rows)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
            let (x_lo, x_hi) = valid_outputs(out_w, kx, g, g.width);
            for (sample, positions) in row.chunks_mut(rows).enumerate() {
                let plane =
                    &x[sample * sample_len..][c * g.height * g.width..][..g.height * g.width];
                for oy in 0..out_h {
                    let Some(iy) = g.source(oy, ky, g.height) else {
                        continue;
                    };
                    let line = &plane[iy * g.width..(iy + 1) * g.width];
                    let out = &mut positions[oy * out_w..(oy + 1) * out_w];
                    let first = x_lo * stride + kx - g.padding;
                    if stride == 1 {
                        out[x_lo..x_hi].copy_from_slice(&line[first..first + (x_hi - x_lo)]);
                    } else {
                        for (o, value) in out[x_lo..x_hi].iter_mut().enumerate() {
                            *value = line[first + o * stride];
                        }
                    }
                }
            }
        });
    cols
}

/// The transpose of [`unfold2d`]: `cols` is `[C * k * k, batch * H' * W']`; returns
/// `[batch, C, H, W]`, each input value the sum of the values copied from it.
pub fn fold2d(cols: &[f32], batch: usize, g: &Window2d) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let mut x = vec![0f32; batch * sample_len];
    if rows * row_len == 0 || sample_len == 0 {
        return x;
    }
    let (out_h, out_w, k, stride) = (g.out_height(), g.out_width(), g.kernel, g.stride.max(1));
    x.par_chunks_mut(sample_len)
        .enumerate()
        .for_each(|(sample, x)| {
            for r in 0..row_len {
                let row = &cols[(r * batch + sample) * rows..][..rows];
                let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
                let plane = &mut x[c * g.height * g.width..(c + 1) * g.height * g.width];
                let (x_lo, x_hi) = valid_outputs(out_w, kx, g, g.width);
                for oy in 0..out_h {
                    let Some(iy) = g.source(oy, ky, g.height) else {
                        continue;
                    };
                    let line = &mut plane[iy * g.width..(iy + 1) * g.width];
                    let values = &row[oy * out_w + x_lo..oy * out_w + x_hi];
                    let first = x_lo * stride + kx - g.padding;
                    if stride == 1 {
                        // A contiguous run: added element-wise (vectorises).
                        let run = &mut line[first..first + values.len()];
                        for (x, &value) in run.iter_mut().zip(values) {
                            *x += value;
                        }
                    } else {
                        for (o, &value) in values.iter().enumerate() {
                            line[first + o * stride] += value;
                        }
                    }
                }
            }
        });
    x
}

/// A 1-d convolution's geometry on `[length, channels]` samples (channels last, as kdc
/// keeps sequences), stride 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window1d {
    pub length: usize,
    pub channels: usize,
    pub kernel: usize,
    pub padding: usize,
}

impl Window1d {
    pub fn rows(&self) -> usize {
        (self.length + 2 * self.padding).saturating_sub(self.kernel) + 1
    }

    /// Values per row, in the order of a `[out, kernel, channels]` weight (a `[out,
    /// channels, kernel]` one permuted), so that every window frame is one contiguous copy.
    pub fn row_len(&self) -> usize {
        self.channels * self.kernel
    }

    pub fn sample_len(&self) -> usize {
        self.length * self.channels
    }
}

/// `x` is `[batch, L, C]`; returns `[batch, rows, k * C]`.
pub fn unfold1d(x: &[f32], batch: usize, g: &Window1d) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let mut cols = vec![0f32; batch * rows * row_len];
    if rows * row_len == 0 {
        return cols;
    }
    let k = g.kernel;
    cols.par_chunks_mut(rows * row_len)
        .zip(x.par_chunks(sample_len))
        .for_each(|(cols, x)| {
            for (t, row) in cols.chunks_mut(row_len).enumerate() {
                for j in 0..k {
                    let Some(i) = (t + j).checked_sub(g.padding).filter(|&i| i < g.length) else {
                        continue;
                    };
                    row[j * g.channels..(j + 1) * g.channels]
                        .copy_from_slice(&x[i * g.channels..(i + 1) * g.channels]);
                }
            }
        });
    cols
}

/// The transpose of [`unfold1d`].
pub fn fold1d(cols: &[f32], batch: usize, g: &Window1d) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let mut x = vec![0f32; batch * sample_len];
    if rows * row_len == 0 || sample_len == 0 {
        return x;
    }
    let k = g.kernel;
    x.par_chunks_mut(sample_len)
        .zip(cols.par_chunks(rows * row_len))
        .for_each(|(x, cols)| {
            for (t, row) in cols.chunks(row_len).enumerate() {
                for j in 0..k {
                    let Some(i) = (t + j).checked_sub(g.padding).filter(|&i| i < g.length) else {
                        continue;
                    };
                    let frame = &mut x[i * g.channels..(i + 1) * g.channels];
                    for (value, &add) in frame.iter_mut().zip(&row[j * g.channels..]) {
                        *value += add;
                    }
                }
            }
        });
    x
}

/// A convolution's output from its products: each part is `[out, n * positions]` (the
/// layout `weight @ unfold2d(..)` gives for `n` samples), and the result is
/// `[samples, out, positions]` (NCHW), with `bias[o]` added and, when `relu`, negative
/// values zeroed, in the one pass that moves the values.
pub fn channels_first(
    parts: &[&[f32]],
    out: usize,
    positions: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let sample_len = out * positions;
    // (part, sample within it) for every sample, in order.
    let samples: Vec<(usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, part)| (0..part.len() / sample_len.max(1)).map(move |s| (p, s)))
        .collect();
    let mut y = vec![0f32; samples.len() * sample_len];
    if sample_len == 0 {
        return y;
    }
    y.par_chunks_mut(sample_len)
        .zip(samples.par_iter())
        .for_each(|(y, &(p, s))| {
            let part = parts[p];
            let n = part.len() / sample_len;
            for (o, dst) in y.chunks_mut(positions).enumerate() {
                let src = &part[(o * n + s) * positions..][..positions];
                let b = bias.map_or(0.0, |b| b[o]);
                match relu {
                    true => dst
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = (v + b).max(0.0)),
                    false => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b),
                }
            }
        });
    y
}
