//! The channels-last conv1d (a product per kernel tap) against plain f64 loops over its
//! definition: the output with bias and ReLU, the weight and input gradients, over
//! paddings, kernel sizes (one wider than the padded sequence) and channel counts, and
//! the same bits whatever the number of threads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{close, on_threads, random};

use kd_kernels::conv1d::{conv1d, conv1d_input_grad, conv1d_weight_grad};
use kd_kernels::unfold::Window1d;

/// (batch, length, channels, out, kernel, padding)
const GEOMETRIES: [(usize, usize, usize, usize, usize, usize); 6] = [
    (3, 10, 4, 5, 3, 1),
    (17, 6, 2, 3, 1, 0),
    (2, 5, 3, 4, 5, 2),
    (4, 7, 6, 2, 3, 0),
    (2, 2, 3, 3, 5, 2),
    (9, 12, 16, 8, 3, 2),
];

#[test]
fn the_output_and_gradients_match_the_definition() {
    for (case, &(b, l, c, o, k, p)) in GEOMETRIES.iter().enumerate() {
        let g = Window1d {
            length: l,
            channels: c,
            kernel: k,
            padding: p,
        };
        let rows = g.rows();
        let x = random(1 + case as u64, b * l * c);
        // [O, k * C]: window frames in order.
        let w = random(2 + case as u64, o * k * c);
        let bias = random(3 + case as u64, o);
        let grad = random(4 + case as u64, b * rows * o);
        let mut y = vec![0f64; b * rows * o];
        let mut dw = vec![0f64; o * k * c];
        let mut dx = vec![0f64; b * l * c];
        for s in 0..b {
            for t in 0..rows {
                for oc in 0..o {
                    let at = (s * rows + t) * o + oc;
                    y[at] = f64::from(bias[oc]);
                    for j in 0..k {
                        let Some(i) = (t + j).checked_sub(p).filter(|&i| i < l) else {
                            continue;
                        };
                        for ch in 0..c {
                            let wv = f64::from(w[oc * k * c + j * c + ch]);
                            let xv = f64::from(x[(s * l + i) * c + ch]);
                            y[at] += wv * xv;
                            dw[oc * k * c + j * c + ch] += f64::from(grad[at]) * xv;
                            dx[(s * l + i) * c + ch] += f64::from(grad[at]) * wv;
                        }
                    }
                }
            }
        }
        close(
            &conv1d(&x, &g, &w, o, Some(&bias), false),
            &y,
            &format!("{case}: output"),
        );
        let relu: Vec<f64> = y.iter().map(|v| v.max(0.0)).collect();
        close(
            &conv1d(&x, &g, &w, o, Some(&bias), true),
            &relu,
            &format!("{case}: ReLU"),
        );
        close(
            &conv1d_weight_grad(&x, &g, &grad, o),
            &dw,
            &format!("{case}: weight gradient"),
        );
        close(
            &conv1d_input_grad(&grad, &g, &w, o),
            &dx,
            &format!("{case}: input gradient"),
        );
    }
}

#[test]
fn the_results_do_not_depend_on_the_thread_count() {
    let (b, l, c, o, k, p) = GEOMETRIES[1];
    let g = Window1d {
        length: l,
        channels: c,
        kernel: k,
        padding: p,
    };
    let (x, w) = (random(5, b * l * c), random(6, o * k * c));
    let grad = random(7, b * g.rows() * o);
    let run = |threads: usize| {
        on_threads(threads, || {
            [
                conv1d(&x, &g, &w, o, None, false),
                conv1d_weight_grad(&x, &g, &grad, o),
                conv1d_input_grad(&grad, &g, &w, o),
            ]
        })
    };
    let bits = |v: &[Vec<f32>; 3]| -> Vec<Vec<u32>> {
        v.iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    let one = bits(&run(1));
    for threads in [2, 3, 8] {
        assert_eq!(one, bits(&run(threads)), "{threads} threads");
    }
}
