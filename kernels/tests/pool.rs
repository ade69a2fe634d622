//! The pooling loops against plain f64 references: the mean over a sequence's real
//! positions and its gradient, tiled average pooling and its gradient, and the sum over a
//! batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::random;

use kd_kernels::elementwise::sum_over_batch;
use kd_kernels::pool::{
    avg_pool2d_tiled, avg_pool2d_tiled_backward, mean_over_time, mean_over_time_backward,
};

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn the_mean_over_real_positions_and_its_gradient_match_the_definition() {
    let (b, l, c) = (4, 5, 3);
    let x = random(1, b * l * c);
    let grad = random(2, b * c);
    // Rows of 5, 2, 1 and 0 real positions.
    let mask: Vec<f32> = [5, 2, 1, 0]
        .iter()
        .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    for mask in [Some(&mask[..]), None] {
        let real = |s: usize, t: usize| mask.is_none_or(|m| m[s * l + t] != 0.0);
        let mut want = vec![0f64; b * c];
        let mut want_dx = vec![0f64; b * l * c];
        for s in 0..b {
            let count = (0..l).filter(|&t| real(s, t)).count();
            for ch in 0..c {
                let sum: f64 = (0..l)
                    .filter(|&t| real(s, t))
                    .map(|t| f64::from(x[(s * l + t) * c + ch]))
                    .sum();
                want[s * c + ch] = sum / count.max(1) as f64;
                for t in (0..l).filter(|&t| real(s, t)) {
                    want_dx[(s * l + t) * c + ch] = f64::from(grad[s * c + ch]) / count as f64;
                }
            }
        }
        close(&mean_over_time(&x, mask, b, l, c), &want, "mean");
        close(
            &mean_over_time_backward(&grad, mask, b, l, c),
            &want_dx,
            "its gradient",
        );
    }
}

#[test]
fn tiled_average_pooling_and_its_gradient_match_the_definition() {
    for (planes, h, w, k) in [(3, 4, 6, 2), (2, 16, 16, 16), (5, 9, 3, 3), (1, 2, 2, 1)] {
        let x = random(3, planes * h * w);
        let (oh, ow) = (h / k, w / k);
        let grad = random(4, planes * oh * ow);
        let mut want = vec![0f64; planes * oh * ow];
        let mut want_dx = vec![0f64; planes * h * w];
        for p in 0..planes {
            for y in 0..h {
                for xx in 0..w {
                    let o = (p * oh + y / k) * ow + xx / k;
                    want[o] += f64::from(x[(p * h + y) * w + xx]) / (k * k) as f64;
                    want_dx[(p * h + y) * w + xx] = f64::from(grad[o]) / (k * k) as f64;
                }
            }
        }
        close(&avg_pool2d_tiled(&x, planes, h, w, k), &want, "avg pool");
        close(
            &avg_pool2d_tiled_backward(&grad, planes, h, w, k),
            &want_dx,
            "its gradient",
        );
    }
}

#[test]
fn the_sum_over_a_batch_matches_the_definition() {
    for (batch, n) in [(3, 7), (32, 48 * 64), (1, 5), (2, 40_000)] {
        let x = random(5, batch * n);
        let want: Vec<f64> = (0..n)
            .map(|j| (0..batch).map(|b| f64::from(x[b * n + j])).sum())
            .collect();
        close(&sum_over_batch(&x, batch), &want, "sum over the batch");
    }
}
