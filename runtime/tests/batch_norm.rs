//! The fused batch norm (runtime/src/ops/batch_norm.rs) against batch norm composed from
//! candle's ops in f64: output, input gradient, weight and bias gradients, with and
//! without a fused ReLU, with batch and running statistics, with and without gradient
//! sinks; and the running statistics' update against PyTorch's rule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device, Tensor, Var};
use kd_runtime::ops::batch_norm::{batch_norm, Statistics};
use kd_runtime::ops::grad_sink::GradSinks;

fn random(shape: &[usize], seed: u64, centre: f32, spread: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            centre + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * spread
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Batch norm from candle's ops (in the dtype of its inputs), as the runtime composed it
/// before the fused op; `stats` are the running statistics for evaluation.
fn composed(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stats: Option<(&Tensor, &Tensor)>,
    relu: bool,
) -> Tensor {
    let eps = 1e-5;
    let mut shape = vec![1usize; x.rank()];
    shape[1] = w.elem_count();
    let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let (mean, var) = match stats {
        None => {
            let mean = x.mean_keepdim(reduce.clone()).unwrap();
            let var = x
                .broadcast_sub(&mean)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_keepdim(reduce)
                .unwrap();
            (mean, var)
        }
        Some((m, v)) => (
            m.reshape(shape.as_slice()).unwrap(),
            v.reshape(shape.as_slice()).unwrap(),
        ),
    };
    let y = x
        .broadcast_sub(&mean)
        .unwrap()
        .broadcast_div(&var.affine(1.0, eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w.reshape(shape.as_slice()).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
        .unwrap();
    if relu {
        y.relu().unwrap()
    } else {
        y
    }
}

/// Every value of `got` (f32) within 1e-5 of `expected` (f64) relative, 1e-6 absolute.
fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}");
    let got: Vec<f64> = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let expected: Vec<f64> = expected.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (g - e).abs() <= 1e-5 * e.abs() + 1e-6,
            "{what}: element {i} is {g}, expected {e}"
        );
    }
}

fn f64_var(t: &Tensor) -> Var {
    Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()
}

/// Shapes: flat features, images, an image batch past one task, flat features far from
/// zero.
const CASES: [(&[usize], f32); 4] = [
    (&[7, 12], 0.0),
    (&[4, 3, 5, 5], 0.0),
    (&[40, 8, 7, 9], 0.0),
    (&[33, 5], 50.0),
];

#[test]
fn training_mode_matches_the_composition_in_values_and_gradients() {
    for (case, &(shape, centre)) in CASES.iter().enumerate() {
        for (relu, sinks_on) in [(false, false), (true, false), (false, true), (true, true)] {
            let seed = 10 * case as u64;
            let channels = shape[1];
            let x = Var::from_tensor(&random(shape, seed, centre, 1.5)).unwrap();
            let w = Var::from_tensor(&random(&[channels], seed + 1, 1.0, 0.5)).unwrap();
            let b = Var::from_tensor(&random(&[channels], seed + 2, 0.0, 0.5)).unwrap();
            let r = random(shape, seed + 3, 0.0, 1.0);
            let running_mean = Var::zeros(channels, DType::F32, &Device::Cpu).unwrap();
            let running_var = Var::ones(channels, DType::F32, &Device::Cpu).unwrap();
            let params = [("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
            let sinks = match sinks_on {
                true => GradSinks::new(&params),
                false => GradSinks::default(),
            };
            let y = batch_norm(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                Statistics::Batch {
                    running: (&running_mean, &running_var),
                    momentum: 0.1,
                },
                1e-5,
                relu,
                &sinks,
            )
            .unwrap();
            let mut grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            sinks.drain_into(&mut grads).unwrap();

            let (x64, w64, b64) = (f64_var(&x), f64_var(&w), f64_var(&b));
            let expected = composed(&x64, &w64, &b64, None, relu);
            let r64 = r.to_dtype(DType::F64).unwrap();
            let expected_grads = (&expected * &r64)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let what = |part: &str| format!("case {case} {shape:?} relu {relu}: {part}");
            assert_close(&what("output"), &y, &expected);
            for (part, ours, theirs) in [
                ("input gradient", &x, &x64),
                ("weight gradient", &w, &w64),
                ("bias gradient", &b, &b64),
            ] {
                assert_close(
                    &what(part),
                    grads.get(ours.as_tensor()).unwrap(),
                    expected_grads.get(theirs.as_tensor()).unwrap(),
                );
            }

            // PyTorch's running statistics after one batch from (0, 1): momentum 0.1 on
            // the batch mean and the unbiased batch variance.
            let reduce: Vec<usize> = (0..shape.len()).filter(|&d| d != 1).collect();
            let count = (x.elem_count() / channels) as f64;
            let mean = x64.mean_keepdim(reduce.clone()).unwrap();
            let var = x64
                .broadcast_sub(&mean)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_keepdim(reduce)
                .unwrap()
                .flatten_all()
                .unwrap();
            let expected_mean = mean.flatten_all().unwrap().affine(0.1, 0.0).unwrap();
            let expected_var = var.affine(0.1 * count / (count - 1.0), 0.9).unwrap();
            assert_close(
                &what("running mean"),
                running_mean.as_tensor(),
                &expected_mean,
            );
            assert_close(
                &what("running variance"),
                running_var.as_tensor(),
                &expected_var,
            );
        }
    }
}

#[test]
fn evaluation_mode_uses_the_running_statistics_in_values_and_gradients() {
    for (case, &(shape, centre)) in CASES.iter().enumerate() {
        for relu in [false, true] {
            let seed = 7 + 10 * case as u64;
            let channels = shape[1];
            let x = Var::from_tensor(&random(shape, seed, centre, 1.5)).unwrap();
            let w = Var::from_tensor(&random(&[channels], seed + 1, 1.0, 0.5)).unwrap();
            let b = Var::from_tensor(&random(&[channels], seed + 2, 0.0, 0.5)).unwrap();
            let r = random(shape, seed + 3, 0.0, 1.0);
            let mean = random(&[channels], seed + 4, centre, 0.5);
            let var = random(&[channels], seed + 5, 2.0, 1.0);
            let y = batch_norm(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                Statistics::Running {
                    mean: &mean,
                    var: &var,
                },
                1e-5,
                relu,
                &GradSinks::default(),
            )
            .unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();

            let (x64, w64, b64) = (f64_var(&x), f64_var(&w), f64_var(&b));
            let (m64, v64) = (
                mean.to_dtype(DType::F64).unwrap(),
                var.to_dtype(DType::F64).unwrap(),
            );
            let expected = composed(&x64, &w64, &b64, Some((&m64, &v64)), relu);
            let r64 = r.to_dtype(DType::F64).unwrap();
            let expected_grads = (&expected * &r64)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let what = |part: &str| format!("case {case} {shape:?} relu {relu}: {part}");
            assert_close(&what("output"), &y, &expected);
            for (part, ours, theirs) in [
                ("input gradient", &x, &x64),
                ("weight gradient", &w, &w64),
                ("bias gradient", &b, &b64),
            ] {
                assert_close(
                    &what(part),
                    grads.get(ours.as_tensor()).unwrap(),
                    expected_grads.get(theirs.as_tensor()).unwrap(),
                );
            }
        }
    }
}

#[test]
fn a_channel_count_that_does_not_fit_is_an_error() {
    let x = random(&[2, 3, 4, 4], 1, 0.0, 1.0);
    let w = random(&[4], 2, 1.0, 0.5);
    let b = random(&[4], 3, 0.0, 0.5);
    let (m, v) = (random(&[4], 4, 0.0, 0.5), random(&[4], 5, 2.0, 1.0));
    let result = batch_norm(
        &x,
        &w,
        &b,
        Statistics::Running { mean: &m, var: &v },
        1e-5,
        false,
        &GradSinks::default(),
    );
    assert!(result.is_err());
}
