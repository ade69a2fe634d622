//! `dst (+)= lhs @ rhs` on f32 slices, single-threaded, for kernels that run many small
//! products side by side in their own parallel loops (a convolution image by image, its
//! windows still in cache). candle's matmul takes whole tensors and splits each product
//! over the thread pool; gemm's own API takes raw pointers and strides. This crate checks
//! every shape and stride against the slices, so that calling it is safe.

/// A read-only matrix over a slice: element `(i, j)` is `data[i * row_stride + j *
/// col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `rows x cols` stored row after row (the first `rows * cols` values of `data`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `rows x cols` with element `(i, j)` at `data[i * row_stride + j * col_stride]`.
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Mat<'a> {
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The transpose: no copy, the strides swap.
    pub fn t(self) -> Mat<'a> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `dst` (`rows x cols`, row-major, the first `rows * cols` values) becomes `lhs @ rhs`, or
/// has it added when `accumulate`.
///
/// # Panics
///
/// When the shapes do not chain (`lhs` is `rows x k`, `rhs` is `k x cols`) or a matrix
/// reaches past its slice: a caller's bug, caught before any memory is touched.
pub fn matmul(dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: {m}x{k} @ {}x{n}", rhs.rows);
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "matmul: a matrix past its slice"
    );
    let len = m.checked_mul(n);
    assert!(
        len.is_some_and(|len| len <= dst.len()),
        "matmul: a {m}x{n} product in {} values",
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).ok();
    let strides = (
        stride(n),
        stride(lhs.row_stride),
        stride(lhs.col_stride),
        stride(rhs.row_stride),
        stride(rhs.col_stride),
    );
    let (Some(dst_rs), Some(lhs_rs), Some(lhs_cs), Some(rhs_rs), Some(rhs_cs)) = strides else {
        panic!("matmul: a stride past isize");
    };
    // SAFETY: gemm reads lhs[i * lhs_rs + p * lhs_cs] for i < m, p < k, and
    // rhs[p * rhs_rs + j * rhs_cs] for p < k, j < n: `in_bounds` checked that the largest
    // of these offsets lies inside each slice, and every offset is non-negative. It writes
    // (and, with `read_dst`, reads) dst[i * n + j] for i < m, j < n, inside `dst` (checked
    // above); these are distinct elements, and `dst` is borrowed mutably, so nothing else
    // reads or writes them, and `lhs` and `rhs` (shared borrows) cannot overlap it.
    // `Parallelism::None` runs on this thread only.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    #[test]
    fn products_match_the_plain_loop_in_every_layout() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (16, 1024, 144),
            (33, 17, 9),
            (4, 0, 3),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &b, m, k, n);
            // a and b transposed in memory, read back through t().
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let pairs = [
                (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n)),
                (Mat::row_major(&at, k, m).t(), Mat::row_major(&bt, n, k).t()),
            ];
            for (lhs, rhs) in pairs {
                let mut c = vec![7f32; m * n];
                matmul(&mut c, false, lhs, rhs);
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{m}x{k}x{n}: {x} vs {y}"
                    );
                }
                matmul(&mut c, true, lhs, rhs);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() <= 2e-4 * (1.0 + y.abs()));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "past its slice")]
    fn a_matrix_larger_than_its_slice_is_refused() {
        let (a, b) = (vec![0f32; 5], vec![0f32; 6]);
        matmul(
            &mut [0f32; 6],
            false,
            Mat::row_major(&a, 2, 3),
            Mat::row_major(&b, 3, 2),
        );
    }

    #[test]
    #[should_panic(expected = "values")]
    fn a_destination_too_small_is_refused() {
        let (a, b) = (vec![0f32; 6], vec![0f32; 6]);
        matmul(
            &mut [0f32; 3],
            false,
            Mat::row_major(&a, 2, 3),
            Mat::row_major(&b, 3, 2),
        );
    }
}
