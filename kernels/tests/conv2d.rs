//! The image-by-image convolution against plain f64 loops over the NCHW definition: its
//! output with every epilogue, its weight and input gradients, over strides, paddings,
//! kernel sizes (one larger than the padded input) and channel counts, and the same bits
//! whatever the number of threads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{close, on_threads, random};

use kd_kernels::conv2d::{conv2d, conv2d_input_grad, conv2d_weight_grad, ConvEpilogue};
use kd_kernels::unfold::Window2d;

/// (batch, channels, height, width, out, kernel, stride, padding)
type Geometry = (usize, usize, usize, usize, usize, usize, usize, usize);

const GEOMETRIES: [Geometry; 7] = [
    (3, 1, 8, 8, 4, 3, 1, 1),
    (2, 3, 7, 9, 5, 3, 2, 1),
    (17, 2, 6, 6, 3, 1, 1, 0),
    (4, 4, 5, 5, 2, 5, 1, 2),
    (2, 2, 4, 4, 3, 3, 2, 0),
    (1, 2, 3, 3, 2, 5, 1, 0),
    (9, 16, 10, 10, 16, 3, 1, 1),
];

struct Case {
    b: usize,
    o: usize,
    g: Window2d,
    x: Vec<f32>,
    /// `[O, C, k, k]`, PyTorch's layout.
    w: Vec<f32>,
}

impl Case {
    fn new(i: usize) -> Case {
        let (b, c, h, w, o, k, stride, padding) = GEOMETRIES[i];
        let g = Window2d {
            channels: c,
            height: h,
            width: w,
            kernel: k,
            stride,
            padding,
        };
        Case {
            b,
            o,
            g,
            x: random(10 + i as u64, b * c * h * w),
            w: random(20 + i as u64, o * c * k * k),
        }
    }

    /// `[O, C, k, k]` as `[O, k, k, C]`, the order of a window's values.
    fn kernel_rows(&self) -> Vec<f32> {
        let (c_n, k) = (self.g.channels, self.g.kernel);
        let mut rows = vec![0f32; self.w.len()];
        for o in 0..self.o {
            for c in 0..c_n {
                for ky in 0..k {
                    for kx in 0..k {
                        rows[((o * k + ky) * k + kx) * c_n + c] =
                            self.w[((o * c_n + c) * k + ky) * k + kx];
                    }
                }
            }
        }
        rows
    }

    /// The input value a window reads (0 in the padding).
    fn at(&self, b: usize, c: usize, y: isize, x: isize) -> f64 {
        let g = &self.g;
        if y < 0 || x < 0 || y >= g.height as isize || x >= g.width as isize {
            return 0.0;
        }
        f64::from(self.x[((b * g.channels + c) * g.height + y as usize) * g.width + x as usize])
    }

    /// Every `(b, o, oy, ox, c, ky, kx, input y, input x)` term of the convolution.
    fn terms(&self) -> Vec<[usize; 7]> {
        let g = &self.g;
        let mut terms = Vec::new();
        for b in 0..self.b {
            for o in 0..self.o {
                for oy in 0..g.out_height() {
                    for ox in 0..g.out_width() {
                        for c in 0..g.channels {
                            for ky in 0..g.kernel {
                                for kx in 0..g.kernel {
                                    terms.push([b, o, oy, ox, c, ky, kx]);
                                }
                            }
                        }
                    }
                }
            }
        }
        terms
    }

    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> (isize, isize) {
        let g = &self.g;
        (
            (oy * g.stride + ky) as isize - g.padding as isize,
            (ox * g.stride + kx) as isize - g.padding as isize,
        )
    }

    fn out_index(&self, b: usize, o: usize, oy: usize, ox: usize) -> usize {
        ((b * self.o + o) * self.g.out_height() + oy) * self.g.out_width() + ox
    }

    fn weight(&self, o: usize, c: usize, ky: usize, kx: usize) -> f64 {
        let (c_n, k) = (self.g.channels, self.g.kernel);
        f64::from(self.w[((o * c_n + c) * k + ky) * k + kx])
    }

    fn forward(&self) -> Vec<f64> {
        let mut y = vec![0f64; self.b * self.o * self.g.rows()];
        for [b, o, oy, ox, c, ky, kx] in self.terms() {
            let (sy, sx) = self.source(oy, ox, ky, kx);
            y[self.out_index(b, o, oy, ox)] += self.weight(o, c, ky, kx) * self.at(b, c, sy, sx);
        }
        y
    }
}

#[test]
fn the_output_matches_the_definition_with_every_epilogue() {
    for i in 0..GEOMETRIES.len() {
        let case = Case::new(i);
        let g = case.g;
        let want = case.forward();
        let bias = random(30 + i as u64, case.o);
        let kernel = case.kernel_rows();
        let mut out = vec![f32::NAN; case.b * case.o * g.rows()];
        conv2d(
            &case.x,
            &g,
            &kernel,
            case.o,
            &ConvEpilogue::default(),
            &mut out,
        );
        close(&out, &want, &format!("geometry {i}"));
        let epilogue = ConvEpilogue {
            bias: Some(&bias),
            relu: true,
            max_pool: None,
        };
        conv2d(&case.x, &g, &kernel, case.o, &epilogue, &mut out);
        let biased: Vec<f64> = want
            .iter()
            .enumerate()
            .map(|(j, v)| (v + f64::from(bias[(j / g.rows()) % case.o])).max(0.0))
            .collect();
        close(&out, &biased, &format!("geometry {i} with bias and ReLU"));
        if g.out_height() >= 2 && g.out_width() >= 2 {
            let pooled = ConvEpilogue {
                max_pool: Some((2, 2)),
                ..epilogue
            };
            let (ph, pw) = (g.out_height() / 2, g.out_width() / 2);
            let mut out = vec![f32::NAN; case.b * case.o * ph * pw];
            conv2d(&case.x, &g, &kernel, case.o, &pooled, &mut out);
            let want: Vec<f64> = (0..case.b * case.o)
                .flat_map(|plane| (0..ph * pw).map(move |p| (plane, p / pw, p % pw)))
                .map(|(plane, y, x)| {
                    let at = |dy: usize, dx: usize| {
                        biased[plane * g.rows() + (2 * y + dy) * g.out_width() + 2 * x + dx]
                    };
                    at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1))
                })
                .collect();
            close(&out, &want, &format!("geometry {i} pooled"));
        }
    }
}

#[test]
fn the_gradients_match_the_definition() {
    for i in 0..GEOMETRIES.len() {
        let case = Case::new(i);
        let g = case.g;
        let grad = random(40 + i as u64, case.b * case.o * g.rows());
        let (c_n, k) = (g.channels, g.kernel);
        let mut dw = vec![0f64; case.w.len()];
        let mut dx = vec![0f64; case.x.len()];
        for [b, o, oy, ox, c, ky, kx] in case.terms() {
            let (sy, sx) = case.source(oy, ox, ky, kx);
            let gy = f64::from(grad[case.out_index(b, o, oy, ox)]);
            // dw in the kernel-rows layout [O, k, k, C].
            dw[((o * k + ky) * k + kx) * c_n + c] += gy * case.at(b, c, sy, sx);
            if sy >= 0 && sx >= 0 && (sy as usize) < g.height && (sx as usize) < g.width {
                let at = ((b * c_n + c) * g.height + sy as usize) * g.width + sx as usize;
                dx[at] += gy * case.weight(o, c, ky, kx);
            }
        }
        close(
            &conv2d_weight_grad(&case.x, &g, &grad, case.o),
            &dw,
            &format!("geometry {i} weight gradient"),
        );
        close(
            &conv2d_input_grad(&grad, &g, &case.kernel_rows(), case.o),
            &dx,
            &format!("geometry {i} input gradient"),
        );
    }
}

#[test]
fn the_results_do_not_depend_on_the_thread_count() {
    let case = Case::new(2);
    let g = case.g;
    let grad = random(50, case.b * case.o * g.rows());
    let kernel = case.kernel_rows();
    let run = |threads: usize| {
        on_threads(threads, || {
            let mut out = vec![0f32; case.b * case.o * g.rows()];
            conv2d(
                &case.x,
                &g,
                &kernel,
                case.o,
                &ConvEpilogue::default(),
                &mut out,
            );
            (
                out,
                conv2d_weight_grad(&case.x, &g, &grad, case.o),
                conv2d_input_grad(&grad, &g, &kernel, case.o),
            )
        })
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        let other = run(threads);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.0), bits(&other.0), "output on {threads} threads");
        assert_eq!(
            bits(&one.1),
            bits(&other.1),
            "weight gradient on {threads} threads"
        );
        assert_eq!(
            bits(&one.2),
            bits(&other.2),
            "input gradient on {threads} threads"
        );
    }
}
