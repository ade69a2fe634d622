//! The parallel, fused optimizer loops against plain one-element-at-a-time references, on
//! parameters spanning several chunks (and a ragged last chunk).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_kernels::optim::{adam, sgd, sum_of_squares, Adam, Sgd, CHUNK};

const N: usize = 3 * CHUNK + 17;

fn random(seed: u64, n: usize, spread: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * spread
        })
        .collect()
}

fn assert_close(got: &[f32], expected: &[f64]) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(*g) - e).abs() <= 1e-5 * e.abs().max(1.0),
            "element {i}: got {g}, expected {e}"
        );
    }
}

fn adam_reference(
    rule: &Adam,
    param: &mut [f64],
    grad: &[f32],
    first: &mut [f64],
    second: &mut [f64],
) {
    let t = rule.step as i32;
    for i in 0..param.len() {
        let mut g = f64::from(grad[i]) * rule.scale.unwrap_or(1.0);
        if rule.decoupled {
            param[i] *= 1.0 - rule.lr * rule.weight_decay;
        } else {
            g += rule.weight_decay * param[i];
        }
        first[i] = rule.beta1 * first[i] + (1.0 - rule.beta1) * g;
        second[i] = rule.beta2 * second[i] + (1.0 - rule.beta2) * g * g;
        let m_hat = first[i] / (1.0 - rule.beta1.powi(t));
        let v_hat = second[i] / (1.0 - rule.beta2.powi(t));
        param[i] -= rule.lr * m_hat / (v_hat.sqrt() + rule.eps);
    }
}

#[test]
fn adam_and_adamw_match_the_reference_over_several_steps() {
    for decoupled in [false, true] {
        let start = random(1, N, 1.0);
        let mut param = start.clone();
        let mut reference: Vec<f64> = start.iter().map(|&v| f64::from(v)).collect();
        let (mut m, mut v) = (vec![0f32; N], vec![0f32; N]);
        let (mut rm, mut rv) = (vec![0f64; N], vec![0f64; N]);
        for step in 1..=4u64 {
            let grad = random(10 + step, N, 0.1);
            let rule = Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled,
                step,
                scale: if step == 3 { Some(0.5) } else { None },
            };
            adam(&rule, &mut param, &grad, &mut m, &mut v);
            adam_reference(&rule, &mut reference, &grad, &mut rm, &mut rv);
        }
        assert_close(&param, &reference);
        assert_close(&m, &rm);
        assert_close(&v, &rv);
    }
}

#[test]
fn sgd_with_and_without_momentum_matches_the_reference() {
    for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
        let start = random(2, N, 1.0);
        let mut param = start.clone();
        let mut reference: Vec<f64> = start.iter().map(|&v| f64::from(v)).collect();
        let mut buffer = vec![0f32; if momentum == 0.0 { 0 } else { N }];
        let mut reference_buffer = vec![0f64; N];
        for step in 0..3u64 {
            let grad = random(20 + step, N, 0.1);
            let rule = Sgd {
                lr: 0.05,
                momentum,
                nesterov,
                weight_decay: 1e-4,
                first_step: step == 0,
                scale: None,
            };
            sgd(&rule, &mut param, &grad, &mut buffer);
            for i in 0..N {
                let g = f64::from(grad[i]) + rule.weight_decay * reference[i];
                let update = if momentum == 0.0 {
                    g
                } else {
                    let b = if step == 0 {
                        g
                    } else {
                        momentum * reference_buffer[i] + g
                    };
                    reference_buffer[i] = b;
                    if nesterov {
                        g + momentum * b
                    } else {
                        b
                    }
                };
                reference[i] -= rule.lr * update;
            }
        }
        assert_close(&param, &reference);
    }
}

#[test]
fn sum_of_squares_matches_a_plain_sum() {
    let values = random(3, N, 2.0);
    let plain: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let got = sum_of_squares(&values);
    assert!((got - plain).abs() <= 1e-9 * plain, "{got} vs {plain}");
}
