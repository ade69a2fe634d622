//! Convolution as a matrix product: `unfold` copies every kernel window of the input into a
//! row (im2col), so that one matmul with the flattened kernel computes the convolution, and
//! `fold` is its transpose (col2im), which sums the rows' gradients back into the input's.
//! 2-d windows go one sample at a time (`crate::conv2d` runs samples in parallel). A
//! conv1d needs no windows (`crate::conv1d`); its geometry is here too.

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

    pub(crate) fn padded_len(&self) -> usize {
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

/// One sample's windows: `cols` (`[H' * W', k * k * C]`, every value written) gets one row
/// per output position, in the order of [`Window2d::row_len`], so that `cols @ weight^T`
/// is the convolution. The sample is first copied channels last into `padded`
/// ([`Window2d::padded_len`] values whose border is zero; the interior is written), from
/// which every kernel row of a window is one contiguous copy, with no bounds to test.
pub(crate) fn unfold_sample(sample: &[f32], g: &Window2d, padded: &mut [f32], cols: &mut [f32]) {
    let span = g.kernel * g.channels;
    to_padded(sample, g, padded);
    for (dst, start) in cols.chunks_exact_mut(span).zip(g.window_rows()) {
        dst.copy_from_slice(&padded[start..start + span]);
    }
}

/// The transpose of [`unfold_sample`]: the windows' gradients `cols` summed into `x`
/// (`[C, H, W]`, overwritten); `padded` is scratch of [`Window2d::padded_len`] values.
pub(crate) fn fold_sample(cols: &[f32], g: &Window2d, padded: &mut [f32], x: &mut [f32]) {
    let span = g.kernel * g.channels;
    padded.fill(0.0);
    for (src, start) in cols.chunks_exact(span).zip(g.window_rows()) {
        let dst = &mut padded[start..start + span];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
    from_padded(padded, g, x);
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
