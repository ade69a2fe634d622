//! Optimizer updates against PyTorch's formulas, written out by hand in f64.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_plan::Optimizer;
use kd_runtime::train::optim::{Optim, Update};

const GRADS: [[f64; 2]; 4] = [[0.5, -1.0], [0.25, 0.75], [-0.4, 0.1], [1.2, -0.3]];
const START: [f64; 2] = [1.0, -2.0];

fn run(config: Optimizer, lrs: &[f64]) -> Vec<f32> {
    let mut optim = Optim::new(&config, 1);
    let mut param: Vec<f32> = START.iter().map(|&v| v as f32).collect();
    for (grad, &lr) in GRADS.iter().zip(lrs) {
        let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
        optim.update(0, &mut param, &grad, lr);
    }
    param
}

fn assert_close(got: &[f32], expected: &[f64]) {
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (f64::from(*g) - e).abs() < 1e-5 * e.abs().max(1.0),
            "got {got:?}, expected {expected:?}"
        );
    }
}

#[test]
fn sgd_momentum_nesterov_weight_decay() {
    let (lr, momentum, wd) = (0.1, 0.9, 0.01);
    let mut p = START;
    let mut buf = [0.0; 2];
    for (step, grad) in GRADS.iter().enumerate() {
        for i in 0..2 {
            let g = grad[i] + wd * p[i];
            buf[i] = if step == 0 { g } else { momentum * buf[i] + g };
            let update = g + momentum * buf[i];
            p[i] -= lr * update;
        }
    }
    let got = run(
        Optimizer::Sgd {
            lr,
            momentum,
            nesterov: true,
            weight_decay: wd,
        },
        &[lr; 4],
    );
    assert_close(&got, &p);
}

#[test]
fn sgd_plain_and_classical_momentum() {
    let got = run(
        Optimizer::Sgd {
            lr: 0.5,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        &[0.5; 4],
    );
    let sum: [f64; 2] = [
        GRADS.iter().map(|g| g[0]).sum(),
        GRADS.iter().map(|g| g[1]).sum(),
    ];
    assert_close(&got, &[START[0] - 0.5 * sum[0], START[1] - 0.5 * sum[1]]);

    let mut p = START;
    let mut buf = [0.0; 2];
    for (step, grad) in GRADS.iter().enumerate() {
        for i in 0..2 {
            buf[i] = if step == 0 {
                grad[i]
            } else {
                0.8 * buf[i] + grad[i]
            };
            p[i] -= 0.1 * buf[i];
        }
    }
    let got = run(
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.8,
            nesterov: false,
            weight_decay: 0.0,
        },
        &[0.1; 4],
    );
    assert_close(&got, &p);
}

fn adam_reference(lrs: &[f64], b1: f64, b2: f64, eps: f64, wd: f64, decoupled: bool) -> [f64; 2] {
    let mut p = START;
    let mut m = [0.0; 2];
    let mut v = [0.0; 2];
    for (step, (grad, lr)) in GRADS.iter().zip(lrs).enumerate() {
        let t = (step + 1) as i32;
        for i in 0..2 {
            let mut g = grad[i];
            if decoupled {
                p[i] *= 1.0 - lr * wd;
            } else {
                g += wd * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom.
            p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
    p
}

#[test]
fn adam_with_l2_decay() {
    let lrs = [0.01, 0.02, 0.015, 0.005];
    let expected = adam_reference(&lrs, 0.9, 0.999, 1e-8, 0.1, false);
    let got = run(
        Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        &lrs,
    );
    assert_close(&got, &expected);
}

#[test]
fn adamw_with_decoupled_decay() {
    let lrs = [0.01; 4];
    let expected = adam_reference(&lrs, 0.8, 0.99, 1e-6, 0.5, true);
    let got = run(
        Optimizer::AdamW {
            lr: 0.01,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.5,
        },
        &lrs,
    );
    assert_close(&got, &expected);
    // Decoupled decay differs from L2 decay.
    let l2 = adam_reference(&lrs, 0.8, 0.99, 1e-6, 0.5, false);
    assert!((l2[0] - expected[0]).abs() > 1e-4);
}

#[test]
fn clipping_scales_to_the_global_norm() {
    use candle_core::{Device, Tensor, Var};
    let a = Var::from_vec(vec![1.0f32, 1.0], 2, &Device::Cpu).unwrap();
    let b = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).unwrap();
    // loss = 3 a0 + 4 b0: gradient (3, 0, 4), global norm 5.
    let w = Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap();
    let loss = ((a.as_tensor() * &w).unwrap().sum_all().unwrap()
        + b.as_tensor().affine(4.0, 0.0).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let mut optim = Optim::new(
        &Optimizer::Sgd {
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        2,
    );
    let Update::Applied { norm } = optim.step(&params, &grads, 1.0, Some(1.0)).unwrap() else {
        panic!("finite gradients were refused");
    };
    assert!((norm - 5.0).abs() < 1e-6);
    let a_now = a.as_tensor().to_vec1::<f32>().unwrap();
    let b_now = b.as_tensor().to_vec1::<f32>().unwrap();
    // Clipped gradient (0.6, 0, 0.8) (times 5 / (5 + 1e-6)).
    assert!((a_now[0] - 0.4).abs() < 1e-5 && (a_now[1] - 1.0).abs() < 1e-7);
    assert!((b_now[0] - 0.2).abs() < 1e-5);
}

#[test]
fn a_non_finite_gradient_updates_nothing_and_names_the_parameter() {
    use candle_core::{Device, Var};
    let a = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let b = Var::new(&[3.0f32], &Device::Cpu).unwrap();
    // d/db of b * inf is inf; a's gradient is finite.
    let loss = (a.as_tensor().sum_all().unwrap()
        + b.as_tensor()
            .affine(f64::INFINITY, 0.0)
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let config = Optimizer::Sgd {
        lr: 1.0,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut optim = Optim::new(&config, 2);
    let update = optim.step(&params, &grads, 1.0, None).unwrap();
    assert_eq!(
        update,
        Update::NonFinite {
            parameter: "b".into()
        }
    );
    assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![3.0]);
    // No slot moved: the skipped batch leaves the optimizer as it was.
    assert_eq!(
        optim.slots().unwrap(),
        Optim::new(&config, 2).slots().unwrap()
    );
}

/// `steps` updates through [`Optim::step`] from gradients of a loss, on kdc's kernels or
/// (with them off, as on a GPU) composed from candle's ops.
fn run_steps(config: &Optimizer, clip: Option<f64>, kernels: bool) -> Vec<f32> {
    use candle_core::{Device, Tensor, Var};
    kd_runtime::ops::set_cpu_kernels(kernels);
    let start: Vec<f32> = START.iter().map(|&v| v as f32).collect();
    let param = Var::from_vec(start, 2, &Device::Cpu).unwrap();
    let mut optim = Optim::new(config, 1);
    for grad in GRADS {
        let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
        let g = Tensor::from_vec(grad, 2, &Device::Cpu).unwrap();
        let grads = (param.as_tensor() * g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let update = optim
            .step(&[("p".to_string(), param.clone())], &grads, 0.1, clip)
            .unwrap();
        assert!(matches!(update, Update::Applied { .. }));
    }
    // The state reads back the same way from either path.
    let slots = optim.slots().unwrap();
    kd_runtime::ops::set_cpu_kernels(true);
    let mut out = param.as_tensor().to_vec1::<f32>().unwrap();
    out.extend(slots[0].first.iter().chain(&slots[0].second));
    out
}

#[test]
fn composed_updates_match_the_kernels() {
    let configs = [
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
        },
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        Optimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        Optimizer::AdamW {
            lr: 0.1,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.1,
        },
    ];
    for config in &configs {
        for clip in [None, Some(0.5)] {
            let kernels = run_steps(config, clip, true);
            let composed = run_steps(config, clip, false);
            assert_eq!(kernels.len(), composed.len(), "{config:?}");
            for (a, b) in kernels.iter().zip(&composed) {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                    "{config:?} clip {clip:?}: {kernels:?} vs {composed:?}"
                );
            }
        }
    }
}
