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

    /// Values per row, in the order of a `[out, kernel, kernel, channels]` weight (a
    /// `[out, channels, kernel, kernel]` one permuted), so that each kernel row of a window
    /// is one contiguous run of a channels-last image.
    pub fn row_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The padded image every window reads, `[height, width, channels]`: the input with
    /// `padding` zeros around it, and more below and to the right when a window would
    /// reach past that (a kernel larger than the padded input).
    fn padded(&self) -> (usize, usize) {
        let stride = self.stride.max(1);
        let span = |out: usize, size: usize| {
            ((out - 1) * stride + self.kernel).max(size + 2 * self.padding)
        };
        (
            span(self.out_height(), self.height),
            span(self.out_width(), self.width),
        )
    }

    fn padded_len(&self) -> usize {
        let (height, width) = self.padded();
        height * width * self.channels
    }

    /// Offsets in the padded image of each kernel row of each window, in row order:
    /// `(window, kernel row)` reads `kernel * channels` values from there.
    fn window_rows(&self) -> impl Iterator<Item = usize> + '_ {
        let (stride, (_, width)) = (self.stride.max(1), self.padded());
        (0..self.out_height()).flat_map(move |oy| {
            (0..self.out_width()).flat_map(move |ox| {
                (0..self.kernel)
                    .map(move |ky| ((oy * stride + ky) * width + ox * stride) * self.channels)
            })
        })
    }
}

/// One sample `[C, H, W]` into the interior of `padded` (channels last); the border is
/// left as it is (zero).
fn to_padded(sample: &[f32], g: &Window2d, padded: &mut [f32]) {
    let (c_n, width) = (g.channels, g.padded().1);
    for y in 0..g.height {
        let line = &mut padded[((y + g.padding) * width + g.padding) * c_n..][..g.width * c_n];
        for c in 0..c_n {
            let src = &sample[(c * g.height + y) * g.width..][..g.width];
            for (x, &value) in src.iter().enumerate() {
                line[x * c_n + c] = value;
            }
        }
    }
}

/// The interior of `padded` (channels last) back into one sample `[C, H, W]`.
fn from_padded(padded: &[f32], g: &Window2d, sample: &mut [f32]) {
    let (c_n, width) = (g.channels, g.padded().1);
    for y in 0..g.height {
        let line = &padded[((y + g.padding) * width + g.padding) * c_n..][..g.width * c_n];
        for c in 0..c_n {
            let dst = &mut sample[(c * g.height + y) * g.width..][..g.width];
            for (x, value) in dst.iter_mut().enumerate() {
                *value = line[x * c_n + c];
            }
        }
    }
}

/// `x` is `[batch, C, H, W]`; fills `cols` (`[batch * H' * W', k * k * C]`, every value
/// written, so a buffer reused chunk after chunk needs no zeroing) with one row per output
/// position (a sample's positions in a contiguous run), in the order of
/// [`Window2d::row_len`], so that `cols @ weight^T` is the convolution as `[positions,
/// out]` (channels last). Each sample is first copied channels last into a zero-padded
/// image, from which every kernel row of a window is one contiguous copy, with no bounds
/// to test.
pub fn unfold2d(x: &[f32], g: &Window2d, cols: &mut [f32]) {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    if rows * row_len == 0 || sample_len == 0 {
        return;
    }
    let span = g.kernel * g.channels;
    cols.par_chunks_mut(rows * row_len)
        .zip(x.par_chunks(sample_len))
        .for_each_init(
            || vec![0f32; g.padded_len()],
            |padded, (cols, sample)| {
                to_padded(sample, g, padded);
                for (dst, start) in cols.chunks_exact_mut(span).zip(g.window_rows()) {
                    dst.copy_from_slice(&padded[start..start + span]);
                }
            },
        );
}

/// The transpose of [`unfold2d`]: `cols` is `[batch * H' * W', k * k * C]`; returns
/// `[batch, C, H, W]`, each input value the sum of the values copied from it.
pub fn fold2d(cols: &[f32], batch: usize, g: &Window2d) -> Vec<f32> {
    let (rows, row_len, sample_len) = (g.rows(), g.row_len(), g.sample_len());
    let mut x = vec![0f32; batch * sample_len];
    if rows * row_len == 0 || sample_len == 0 {
        return x;
    }
    let span = g.kernel * g.channels;
    x.par_chunks_mut(sample_len)
        .zip(cols.par_chunks(rows * row_len))
        .for_each_init(
            || vec![0f32; g.padded_len()],
            |padded, (x, cols)| {
                padded.fill(0.0);
                for (src, start) in cols.chunks_exact(span).zip(g.window_rows()) {
                    let dst = &mut padded[start..start + span];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
                from_padded(padded, g, x);
            },
        );
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

/// Side of the square blocks the transposes below move through registers.
const BLOCK: usize = 8;

/// `dst[j * dst_stride + i] = f(j, src[i * src_stride + j])` for `i < rows`, `j < cols`:
/// a transpose with a per-column map, in 8 x 8 blocks that the compiler keeps in registers
/// (element by element, the strided side of a transpose ran at 3 ns a value).
#[inline(always)]
fn transpose_map(
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    (rows, cols): (usize, usize),
    f: impl Fn(usize, f32) -> f32,
) {
    for i0 in (0..rows).step_by(BLOCK) {
        for j0 in (0..cols).step_by(BLOCK) {
            if i0 + BLOCK <= rows && j0 + BLOCK <= cols {
                let mut block = [[0f32; BLOCK]; BLOCK];
                for (i, line) in block.iter_mut().enumerate() {
                    line.copy_from_slice(&src[(i0 + i) * src_stride + j0..][..BLOCK]);
                }
                for j in 0..BLOCK {
                    let out = &mut dst[(j0 + j) * dst_stride + i0..][..BLOCK];
                    for (i, value) in out.iter_mut().enumerate() {
                        *value = f(j0 + j, block[i][j]);
                    }
                }
            } else {
                for i in i0..rows.min(i0 + BLOCK) {
                    for j in j0..cols.min(j0 + BLOCK) {
                        dst[j * dst_stride + i] = f(j, src[i * src_stride + j]);
                    }
                }
            }
        }
    }
}

/// A convolution's output as [`channels_first`] writes it: `channels` planes of `height` x
/// `width` positions per sample, then optionally max-pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output2d {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// A max pool's `(kernel, stride)`, no padding, the windows inside the plane.
    pub max_pool: Option<(usize, usize)>,
}

impl Output2d {
    /// `(height, width)` of the planes written: pooled when there is a pool.
    pub fn written(&self) -> (usize, usize) {
        match self.max_pool {
            Some((kernel, stride)) => {
                let side = |size: usize| size.saturating_sub(kernel) / stride.max(1) + 1;
                (side(self.height), side(self.width))
            }
            None => (self.height, self.width),
        }
    }

    /// Values written per sample.
    pub fn sample_len(&self) -> usize {
        let (height, width) = self.written();
        self.channels * height * width
    }
}

/// A convolution's output from its product: `product` is `[n * height * width, channels]`
/// (the layout `unfold2d(..) @ weight^T` gives for `n` samples); `out` receives `[n,
/// channels, ..]` (NCHW) with `bias[c]` added, negative values zeroed when `relu`, and
/// `g.max_pool` applied, in the one pass that transposes the values. The pool keeps a NaN
/// (as the max pool does) and reads the values after the ReLU.
pub fn channels_first(
    product: &[f32],
    out: &mut [f32],
    g: &Output2d,
    bias: Option<&[f32]>,
    relu: bool,
) {
    let positions = g.height * g.width;
    let sample_len = g.channels * positions;
    if sample_len == 0 || g.sample_len() == 0 {
        return;
    }
    out.par_chunks_mut(g.sample_len())
        .zip(product.par_chunks(sample_len))
        .for_each_init(
            || vec![0f32; g.max_pool.map_or(0, |_| g.sample_len())],
            |pooled, (out, src)| {
                crate::vectorised(
                    #[inline(always)]
                    || output_sample(src, out, pooled, g, bias, relu),
                )
            },
        );
}

/// One sample of [`channels_first`].
#[inline(always)]
fn output_sample(
    src: &[f32],
    out: &mut [f32],
    pooled: &mut [f32],
    g: &Output2d,
    bias: Option<&[f32]>,
    relu: bool,
) {
    let act = |c: usize, v: f32| {
        let v = v + bias.map_or(0.0, |b| b[c]);
        if relu {
            v.max(0.0)
        } else {
            v
        }
    };
    let positions = g.height * g.width;
    match g.max_pool {
        None => transpose_map(
            src,
            g.channels,
            out,
            positions,
            (positions, g.channels),
            act,
        ),
        Some((kernel, stride)) => {
            let written = g.written();
            max_pool_rows(src, g, (kernel, stride.max(1)), written.1, pooled, relu);
            let shape = (written.0 * written.1, g.channels);
            transpose_map(pooled, g.channels, out, shape.0, shape, act);
        }
    }
}

/// One sample's max pool in the product's layout, before the bias and the ReLU: `src`
/// `[height * width, channels]` into `pooled` `[pooled positions, channels]`, a row of
/// channels at a time (they vectorise). Adding a bias and the ReLU are monotone, so
/// pooling first gives the same values; with `relu` a NaN may be dropped here (`f32::max`),
/// as the ReLU would have made it 0, and without, it wins, as in the max pool.
#[inline(always)]
fn max_pool_rows(
    src: &[f32],
    g: &Output2d,
    (kernel, stride): (usize, usize),
    out_w: usize,
    pooled: &mut [f32],
    relu: bool,
) {
    let c_n = g.channels;
    for (p, best) in pooled.chunks_exact_mut(c_n).enumerate() {
        let (y0, x0) = (p / out_w * stride, p % out_w * stride);
        let row = |dy: usize, dx: usize| &src[((y0 + dy) * g.width + x0 + dx) * c_n..][..c_n];
        best.copy_from_slice(row(0, 0));
        for (dy, dx) in (0..kernel)
            .flat_map(|dy| (0..kernel).map(move |dx| (dy, dx)))
            .skip(1)
        {
            match relu {
                true => best
                    .iter_mut()
                    .zip(row(dy, dx))
                    .for_each(|(b, &v)| *b = b.max(v)),
                false => best.iter_mut().zip(row(dy, dx)).for_each(|(b, &v)| {
                    *b = if v > *b || v.is_nan() { v } else { *b };
                }),
            }
        }
    }
}

/// `[samples, channels, positions]` (NCHW) as `[samples * positions, channels]`: a
/// convolution's output gradient in the layout of its product.
pub fn channels_last(x: &[f32], channels: usize, positions: usize) -> Vec<f32> {
    let sample_len = channels * positions;
    let mut y = vec![0f32; x.len()];
    if sample_len == 0 {
        return y;
    }
    y.par_chunks_mut(sample_len)
        .zip(x.par_chunks(sample_len))
        .for_each(|(y, x)| {
            transpose_map(x, positions, y, channels, (channels, positions), |_, v| v)
        });
    y
}
