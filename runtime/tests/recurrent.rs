//! The fused LSTM direction (runtime/src/ops/recurrent.rs) against the LSTM composed from
//! candle's ops in f64, as the runtime built it before: outputs, the gradient of the
//! gates' input parts and of the recurrent weight, forward and reversed, with padding
//! masked and without a mask, with and without a gradient sink.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device, Tensor, Var};
use kd_runtime::ops::grad_sink::GradSinks;
use kd_runtime::ops::recurrent::lstm_direction;

fn random(shape: &[usize], seed: u64, spread: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * spread
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn sigmoid(x: &Tensor) -> Tensor {
    (x.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .recip()
        .unwrap()
}

/// The LSTM direction from candle's ops: `projected` `[B, L, 4H]`, `w` `[4H, H]`.
fn composed(projected: &Tensor, w: &Tensor, mask: Option<&Tensor>, reverse: bool) -> Tensor {
    let (b, len, gates) = projected.dims3().unwrap();
    let hidden = gates / 4;
    let w_t = w.t().unwrap();
    let mut h = Tensor::zeros((b, hidden), projected.dtype(), &Device::Cpu).unwrap();
    let mut c = h.clone();
    let mut steps = vec![None; len];
    let order: Vec<usize> = match reverse {
        false => (0..len).collect(),
        true => (0..len).rev().collect(),
    };
    for t in order {
        let a = projected
            .narrow(1, t, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .add(&h.matmul(&w_t).unwrap())
            .unwrap();
        let part = |k: usize| a.narrow(1, k * hidden, hidden).unwrap();
        let (i, f, g, o) = (
            sigmoid(&part(0)),
            sigmoid(&part(1)),
            part(2).tanh().unwrap(),
            sigmoid(&part(3)),
        );
        let c_next = ((&f * &c).unwrap() + (&i * &g).unwrap()).unwrap();
        let h_next = (&o * c_next.tanh().unwrap()).unwrap();
        match mask {
            Some(m) => {
                let m = m.narrow(1, t, 1).unwrap();
                let keep = (1.0 - &m).unwrap();
                c = (c_next.broadcast_mul(&m).unwrap() + c.broadcast_mul(&keep).unwrap()).unwrap();
                h = (h_next.broadcast_mul(&m).unwrap() + h.broadcast_mul(&keep).unwrap()).unwrap();
                steps[t] = Some(h_next.broadcast_mul(&m).unwrap());
            }
            None => {
                c = c_next;
                h = h_next.clone();
                steps[t] = Some(h_next);
            }
        }
    }
    let steps: Vec<Tensor> = steps.into_iter().flatten().collect();
    Tensor::stack(&steps, 1).unwrap()
}

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

/// Rows of 7 steps, of which the first `lengths[r]` are real.
fn right_padding(lengths: &[usize], len: usize) -> Tensor {
    let values: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..len).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (lengths.len(), len), &Device::Cpu).unwrap()
}

#[test]
fn lstm_direction_matches_the_composition_in_values_and_gradients() {
    let (b, len, hidden) = (4, 7, 5);
    let masks = [None, Some(right_padding(&[7, 3, 1, 0], len))];
    for (case, mask) in masks.iter().enumerate() {
        for reverse in [false, true] {
            for with_sink in [false, true] {
                let seed = 10 * case as u64 + u64::from(reverse);
                let p = Var::from_tensor(&random(&[b, len, 4 * hidden], seed, 1.5)).unwrap();
                let w = Var::from_tensor(&random(&[4 * hidden, hidden], seed + 1, 0.6)).unwrap();
                let r = random(&[b, len, hidden], seed + 2, 1.0);
                let params = [("w".to_string(), w.clone())];
                let sinks = match with_sink {
                    true => GradSinks::new(&params),
                    false => GradSinks::default(),
                };
                let y = lstm_direction(
                    p.as_tensor(),
                    w.as_tensor(),
                    mask.as_ref(),
                    reverse,
                    sinks.get(w.as_tensor()),
                )
                .unwrap();
                let mut grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                sinks.drain_into(&mut grads).unwrap();

                let p64 = Var::from_tensor(&p.to_dtype(DType::F64).unwrap()).unwrap();
                let w64 = Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap();
                let m64 = mask.as_ref().map(|m| m.to_dtype(DType::F64).unwrap());
                let expected = composed(&p64, &w64, m64.as_ref(), reverse);
                let r64 = r.to_dtype(DType::F64).unwrap();
                let expected_grads = (&expected * &r64)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let what = |part: &str| format!("mask {case} reverse {reverse}: {part}");
                assert_close(&what("output"), &y, &expected);
                assert_close(
                    &what("gates' gradient"),
                    grads.get(p.as_tensor()).unwrap(),
                    expected_grads.get(p64.as_tensor()).unwrap(),
                );
                assert_close(
                    &what("recurrent weight's gradient"),
                    grads.get(w.as_tensor()).unwrap(),
                    expected_grads.get(w64.as_tensor()).unwrap(),
                );
            }
        }
    }
}

#[test]
fn gates_that_do_not_fit_the_weight_are_an_error() {
    let p = random(&[2, 3, 12], 1, 1.0);
    let w = random(&[16, 4], 2, 1.0);
    assert!(lstm_direction(&p, &w, None, false, None).is_err());
}
