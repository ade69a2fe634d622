//! kdc's custom ops (runtime/src/ops/: dense.rs, pooling.rs, elementwise.rs) against
//! candle's own ops or their definitions: the same values and the same gradients, on random
//! inputs over several shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic
#![allow(clippy::needless_range_loop)] // the reference formula reads best as indices

use candle_core::{Device, Tensor, Var};
use kd_runtime::ops::dense::{dense, Dense, Epilogue};
use kd_runtime::ops::grad_sink::GradSinks;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest magnitude in `t`.
fn largest(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The gradients of `sum(ours * r)` and `sum(theirs * r)` for each of `vars` agree within
/// 1e-5, relative to the larger of 1 and the reference's largest magnitude.
fn assert_gradients_agree(
    case: usize,
    ours: &Tensor,
    theirs: &Tensor,
    r: &Tensor,
    vars: &[(&str, &Var)],
) {
    let g_ours = (ours * r).unwrap().sum_all().unwrap().backward().unwrap();
    let g_theirs = (theirs * r).unwrap().sum_all().unwrap().backward().unwrap();
    for (what, v) in vars {
        let a = g_ours.get(v.as_tensor()).unwrap();
        let e = g_theirs.get(v.as_tensor()).unwrap();
        let d = max_difference(a, e) / largest(e).max(1.0);
        assert!(
            d < 1e-5,
            "case {case}: {what} gradient differs by {d} (relative)"
        );
    }
}

/// Output, input gradient and kernel gradient of two convolutions agree within 1e-5,
/// relative to the larger of 1 and the reference's largest magnitude.
fn assert_same(case: usize, ours: &(Tensor, Tensor, Tensor), theirs: &(Tensor, Tensor, Tensor)) {
    for (what, a, b) in [
        ("output", &ours.0, &theirs.0),
        ("input gradient", &ours.1, &theirs.1),
        ("kernel gradient", &ours.2, &theirs.2),
    ] {
        let d = max_difference(a, b) / largest(b).max(1.0);
        assert!(d < 1e-5, "case {case}: {what} differs by {d} (relative)");
    }
}

/// Output, input gradient and kernel gradient of `f` under the loss `sum(y * r)`. `f` gets
/// the input, the kernel and sinks that hold the kernel's gradient when `sink` (kdc's
/// training step drains them into candle's gradients after the backward, as here).
fn run(
    f: impl Fn(&Tensor, &Tensor, &GradSinks) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    seed: u64,
    sink: bool,
) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let sinks = match sink {
        true => GradSinks::new(&[("w".to_string(), wv.clone())]),
        false => GradSinks::default(),
    };
    let y = f(xv.as_tensor(), wv.as_tensor(), &sinks);
    let r = random(y.dims(), seed);
    let mut grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    sinks.drain_into(&mut grads).unwrap();
    let gx = grads.get(xv.as_tensor()).unwrap().clone();
    let gw = grads.get(wv.as_tensor()).unwrap().clone();
    (y, gx, gw)
}

/// kdc's convolution, without bias or ReLU.
fn conv(kind: Dense) -> impl Fn(&Tensor, &Tensor, &GradSinks) -> Tensor {
    move |x, w, sinks| dense(kind, x, w, None, Epilogue::default(), sinks).unwrap()
}

#[test]
fn conv2d_matches_candle_in_values_and_gradients() {
    // (batch, in, out, size, kernel, stride, padding)
    for (i, &(b, c, o, size, k, stride, padding)) in [
        (4, 1, 8, 28, 3, 1, 1),
        (3, 5, 7, 13, 3, 2, 1),
        (2, 3, 4, 9, 5, 1, 2),
        (2, 2, 3, 8, 1, 1, 0),
        (1, 4, 6, 10, 3, 3, 0),
        (2, 3, 2, 6, 4, 2, 3),
        // More than kdc unfolds at once (8 MiB): the batch goes in three chunks.
        (40, 16, 8, 28, 3, 1, 1),
    ]
    .iter()
    .enumerate()
    {
        let seed = i as u64 * 3 + 1;
        let x = random(&[b, c, size, size], seed);
        let w = random(&[o, c, k, k], seed + 1);
        let theirs = run(
            |x, w, _| x.conv2d(w, padding, stride, 1, 1).unwrap(),
            &x,
            &w,
            seed + 2,
            false,
        );
        for sink in [false, true] {
            let ours = run(
                conv(Dense::Conv2d { stride, padding }),
                &x,
                &w,
                seed + 2,
                sink,
            );
            assert_same(i, &ours, &theirs);
        }
    }
}

#[test]
fn conv1d_on_channels_last_matches_candle_in_values_and_gradients() {
    // (batch, length, in, out, kernel, padding)
    for (i, &(b, len, c, o, k, padding)) in [
        (4, 16, 8, 6, 3, 1),
        (2, 7, 3, 5, 5, 2),
        (3, 9, 4, 2, 2, 0),
        (1, 5, 2, 3, 5, 4),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 + i as u64 * 3;
        let x = random(&[b, len, c], seed);
        let w = random(&[o, c, k], seed + 1);
        let ours = run(conv(Dense::Conv1d { padding }), &x, &w, seed + 2, true);
        // The reference is candle's conv2d on a one-row image: candle's conv1d gets the
        // kernel gradient wrong (the first version of this test compared against it).
        let theirs = run(
            |x, w, _| {
                let image = x.transpose(1, 2).unwrap().unsqueeze(2).unwrap();
                let kernel = w.unsqueeze(2).unwrap();
                image
                    .contiguous()
                    .unwrap()
                    .conv2d(&kernel, padding, 1, 1, 1)
                    .unwrap()
                    .narrow(2, padding, 1)
                    .unwrap()
                    .squeeze(2)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            },
            &x,
            &w,
            seed + 2,
            false,
        );
        assert_same(i, &ours, &theirs);
    }
}

/// The kernel gradient written out: d/dw[o, c, j] of sum(y * r) is the sum over samples
/// and positions t of r[b, t, o] * x[b, t + j - padding, c]. kdc's conv1d agrees with it;
/// candle 0.11's own conv1d, kdc's before this test, is off by up to 0.79 here.
#[test]
fn conv1d_kernel_gradient_matches_the_formula() {
    let (b, len, c, o, k, padding) = (2, 6, 3, 4, 3, 1);
    let x = random(&[b, len, c], 7);
    let w = random(&[o, c, k], 8);
    let (y, _, gw) = run(conv(Dense::Conv1d { padding }), &x, &w, 9, false);
    let r = random(y.dims(), 9).to_vec3::<f32>().unwrap();
    let xs = x.to_vec3::<f32>().unwrap();
    let gw = gw.to_vec3::<f32>().unwrap();
    let out_len = y.dims()[1];
    for oi in 0..o {
        for ci in 0..c {
            for j in 0..k {
                let mut expected = 0f64;
                for bi in 0..b {
                    for t in 0..out_len {
                        if let Some(i) = (t + j).checked_sub(padding).filter(|&i| i < len) {
                            expected += f64::from(r[bi][t][oi]) * f64::from(xs[bi][i][ci]);
                        }
                    }
                }
                let got = f64::from(gw[oi][ci][j]);
                assert!(
                    (got - expected).abs() < 1e-5,
                    "w[{oi}][{ci}][{j}]: {got} vs {expected}"
                );
            }
        }
    }
}

/// Values as candle's max pool; gradients as the definition: each output's gradient goes
/// to its window's maximum. (candle 0.11's own max-pool backward scales it by the number of
/// maxima over the window size: a quarter of the gradient for 2x2 windows. kdc used it
/// before this test.)
#[test]
fn max_pool_matches_candle_in_values_and_the_definition_in_gradients() {
    use kd_runtime::ops::pooling::max_pool2d;
    // (batch, channels, size, kernel, stride, ties): with ties, values after a ReLU (whole
    // windows of zeros, whose gradient goes to the first).
    for (i, &(b, c, size, k, stride, ties)) in [
        (4, 3, 8, 2, 2, false),
        (2, 2, 9, 3, 3, false),
        (3, 4, 7, 3, 2, false),
        (4, 3, 8, 2, 2, true),
        (2, 3, 7, 2, 2, true),
        (2, 2, 9, 3, 3, true),
    ]
    .iter()
    .enumerate()
    {
        let seed = 200 + i as u64;
        let mut x = random(&[b, c, size, size], seed);
        if ties {
            x = x.relu().unwrap();
        }
        let x = Var::from_tensor(&x).unwrap();
        let ours = max_pool2d(x.as_tensor(), k, stride).unwrap();
        let theirs = x.as_tensor().max_pool2d_with_stride(k, stride).unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-7, "case {i}: values");
        let r = random(ours.dims(), seed + 1);
        let grads = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let got = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        let xs = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let out = (size - k) / stride + 1;
        let mut expected = vec![0f32; xs.len()];
        for plane in 0..b * c {
            for oy in 0..out {
                for ox in 0..out {
                    let mut best = None::<usize>;
                    for y in oy * stride..oy * stride + k {
                        for x in ox * stride..ox * stride + k {
                            let index = plane * size * size + y * size + x;
                            if best.is_none_or(|b| xs[index] > xs[b]) {
                                best = Some(index);
                            }
                        }
                    }
                    expected[best.unwrap()] += rs[plane * out * out + oy * out + ox];
                }
            }
        }
        for (j, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() < 1e-6, "case {i}, element {j}: {g} vs {e}");
        }
    }
}

/// kdc's ReLU against candle's: values and gradients.
#[test]
fn relu_matches_candle_in_values_and_gradients() {
    use kd_runtime::ops::elementwise::relu;
    // The last shape is more than one parallel chunk (16,384 values).
    for (i, shape) in [vec![16, 7], vec![4, 3, 5, 5], vec![64, 40, 9]]
        .into_iter()
        .enumerate()
    {
        let seed = 300 + i as u64 * 2;
        let x = Var::from_tensor(&random(&shape, seed)).unwrap();
        let r = random(&shape, seed + 2);
        let ours = relu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().relu().unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-6, "case {i}: values");
        assert_gradients_agree(i, &ours, &theirs, &r, &[("input", &x)]);
    }
}

/// kdc's dense layers (linear, conv1d, conv2d) with a bias and a ReLU against the same
/// layers built from candle's ops: values and the gradients of input, weight and bias,
/// with and without sinks for the parameters, and with data (untracked) as input.
#[test]
fn dense_layers_match_candle_in_values_and_gradients() {
    let linear = |x: &Tensor, w: &Tensor| x.broadcast_matmul(&w.t().unwrap()).unwrap();
    let conv2d = |x: &Tensor, w: &Tensor| x.conv2d(w, 1, 2, 1, 1).unwrap();
    let conv1d = |x: &Tensor, w: &Tensor| {
        // candle's conv1d gets the kernel gradient wrong: conv2d on one-row images.
        let image = x.transpose(1, 2).unwrap().unsqueeze(2).unwrap();
        image
            .contiguous()
            .unwrap()
            .conv2d(&w.unsqueeze(2).unwrap(), 1, 1, 1, 1)
            .unwrap()
            .narrow(2, 1, 1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    // (kind, input shape, weight shape, the output's channel axis, candle's layer)
    type Case<'a> = (
        Dense,
        Vec<usize>,
        Vec<usize>,
        usize,
        &'a dyn Fn(&Tensor, &Tensor) -> Tensor,
    );
    let cases: [Case; 7] = [
        (Dense::Linear, vec![16, 9], vec![5, 9], 1, &linear),
        (Dense::Linear, vec![3, 7, 6], vec![4, 6], 2, &linear),
        (Dense::Linear, vec![130, 70], vec![33, 70], 1, &linear),
        // Fewer rows than outputs: the product as w @ x^T, transposed back (tiles of 16
        // columns, a ragged last one).
        (Dense::Linear, vec![6, 20], vec![41, 20], 1, &linear),
        (Dense::Linear, vec![2, 3, 9], vec![70, 9], 2, &linear),
        (
            Dense::Conv2d {
                stride: 2,
                padding: 1,
            },
            vec![3, 4, 9, 9],
            vec![6, 4, 3, 3],
            1,
            &conv2d,
        ),
        (
            Dense::Conv1d { padding: 1 },
            vec![4, 11, 5],
            vec![7, 5, 3],
            2,
            &conv1d,
        ),
    ];
    for (i, (kind, x_shape, w_shape, axis, reference)) in cases.into_iter().enumerate() {
        let seed = 400 + i as u64 * 4;
        let x = Var::from_tensor(&random(&x_shape, seed)).unwrap();
        let w = Var::from_tensor(&random(&w_shape, seed + 1)).unwrap();
        let b = Var::from_tensor(&random(&[w_shape[0]], seed + 2)).unwrap();
        let theirs = {
            let y = reference(x.as_tensor(), w.as_tensor());
            let mut bias_shape = vec![1; y.rank()];
            bias_shape[axis] = w_shape[0];
            let bias = b.as_tensor().reshape(bias_shape).unwrap();
            y.broadcast_add(&bias).unwrap().relu().unwrap()
        };
        let r = random(theirs.dims(), seed + 3);
        let g_theirs = (&theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let params = [("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
        for (input, sinks) in [
            (x.as_tensor().clone(), GradSinks::default()),
            (x.as_tensor().clone(), GradSinks::new(&params)),
            // Data as input: only the parameters get gradients.
            (x.as_tensor().detach(), GradSinks::new(&params)),
        ] {
            let ours = dense(
                kind,
                &input,
                w.as_tensor(),
                Some(b.as_tensor()),
                Epilogue::RELU,
                &sinks,
            )
            .unwrap();
            assert!(max_difference(&ours, &theirs) < 1e-5, "case {i}: values");
            let mut grads = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            sinks.drain_into(&mut grads).unwrap();
            let vars = [("input", &x), ("weight", &w), ("bias", &b)];
            for (what, v) in vars {
                let Some(a) = grads.get(v.as_tensor()) else {
                    assert!(!input.track_op() && what == "input", "case {i}: no {what}");
                    continue;
                };
                let e = g_theirs.get(v.as_tensor()).unwrap();
                let d = max_difference(a, e) / largest(e).max(1.0);
                assert!(d < 1e-5, "case {i}: {what} gradient differs by {d}");
            }
        }
    }
}

/// A conv2d with its max pool in the output pass (a forward without gradients) against
/// conv2d, bias, ReLU and max pool as separate steps; a NaN reaches the pool as it would.
#[test]
fn pooled_conv2d_matches_the_separate_layers() {
    use kd_runtime::ops::pooling::max_pool2d;
    // (batch, in, out, size, stride, padding, pool kernel, pool stride, relu)
    for (i, &(b, c, o, size, stride, padding, k, s, relu)) in [
        (3, 4, 6, 12, 1, 1, 2, 2, true),
        (2, 3, 5, 11, 1, 1, 2, 2, true),
        (2, 3, 7, 13, 2, 1, 3, 2, false),
        (1, 2, 3, 9, 1, 0, 3, 1, true),
        // Chunked: more than one unfold's worth of samples.
        (40, 16, 8, 28, 1, 1, 2, 2, true),
    ]
    .iter()
    .enumerate()
    {
        let seed = 700 + i as u64 * 4;
        let mut x = random(&[b, c, size, size], seed);
        if !relu {
            // A NaN in the first sample: the pool keeps it.
            let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values[5] = f32::NAN;
            x = Tensor::from_vec(values, x.dims(), x.device()).unwrap();
        }
        let w = random(&[o, c, 3, 3], seed + 1);
        let bias = random(&[o], seed + 2);
        let kind = Dense::Conv2d { stride, padding };
        let unpooled = Epilogue {
            relu,
            max_pool: None,
        };
        let sinks = GradSinks::default();
        let separate = dense(kind, &x, &w, Some(&bias), unpooled, &sinks).unwrap();
        let theirs = max_pool2d(&separate, k, s).unwrap();
        let pooled = Epilogue {
            relu,
            max_pool: Some((k, s)),
        };
        let ours = dense(kind, &x, &w, Some(&bias), pooled, &sinks).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "case {i}");
        let (ours, theirs) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(
            ours.iter().filter(|v| v.is_nan()).count(),
            theirs.iter().filter(|v| v.is_nan()).count(),
            "case {i}: NaNs"
        );
        assert!(
            relu || theirs.iter().any(|v| v.is_nan()),
            "case {i}: no NaN"
        );
        for (a, e) in ours.iter().zip(&theirs) {
            assert!(a.is_nan() == e.is_nan(), "case {i}: a NaN moved");
            assert!(a.is_nan() || (a - e).abs() < 1e-5, "case {i}: {a} vs {e}");
        }
    }
    // With gradients wanted there is no pooled op: it has no backward.
    let w = Var::from_tensor(&random(&[2, 1, 3, 3], 1)).unwrap();
    let x = random(&[1, 1, 6, 6], 2);
    let pooled = Epilogue {
        relu: true,
        max_pool: Some((2, 2)),
    };
    let conv = Dense::Conv2d {
        stride: 1,
        padding: 1,
    };
    let sinks = GradSinks::default();
    assert!(dense(conv, &x, w.as_tensor(), None, pooled, &sinks).is_err());
    // A window larger than the convolution's output: the pool's own error.
    let small = Epilogue {
        relu: true,
        max_pool: Some((7, 1)),
    };
    let message = dense(conv, &x, &w.as_tensor().detach(), None, small, &sinks)
        .unwrap_err()
        .to_string();
    assert!(message.contains("pooling window 7 larger"), "{message}");
}

/// kdc's masked max over time against the candle formula it replaced (a padding penalty,
/// `max(1)`, zeros for a sample without real tokens): values and input gradients.
#[test]
fn max_over_time_matches_the_candle_formula() {
    use kd_runtime::ops::pooling::max_over_time;
    let (b, l, c) = (5, 9, 70);
    let x = Var::from_tensor(&random(&[b, l, c], 500)).unwrap();
    // Sample 0 all real, sample 3 without a real token, the rest padded at the end.
    let mask: Vec<f32> = (0..b * l)
        .map(|i| {
            let (sample, t) = (i / l, i % l);
            match sample {
                0 => 1.0,
                3 => 0.0,
                _ => f32::from(u8::from(t < 2 + sample)),
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
    for m in [Some(&mask), None] {
        let ours = max_over_time(x.as_tensor(), m).unwrap();
        let theirs = match m {
            Some(m) => {
                let penalty = ((m - 1.0).unwrap() * 1e9).unwrap();
                x.as_tensor()
                    .broadcast_add(&penalty.unsqueeze(2).unwrap())
                    .unwrap()
                    .max(1)
                    .unwrap()
                    .broadcast_mul(&m.max_keepdim(1).unwrap())
                    .unwrap()
            }
            None => x.as_tensor().max(1).unwrap(),
        };
        assert!(max_difference(&ours, &theirs) < 1e-6, "values");
        let r = random(ours.dims(), 501);
        let g_ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (&theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_difference(
            g_ours.get(x.as_tensor()).unwrap(),
            g_theirs.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-6, "gradients differ by {d}");
    }
}

/// kdc's embedding lookup against candle's `index_select`: values and table gradients,
/// with repeated ids.
#[test]
fn embedding_matches_index_select() {
    use kd_runtime::ops::elementwise::embedding;
    let table = Var::from_tensor(&random(&[50, 8], 600)).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 7) % 50).chain([3, 3, 3]).collect();
    let ids = Tensor::from_vec(ids, 43, &Device::Cpu).unwrap();
    let ours = embedding(table.as_tensor(), &ids, None).unwrap();
    let theirs = table.as_tensor().index_select(&ids, 0).unwrap();
    assert!(max_difference(&ours, &theirs) < 1e-7);
    let r = random(ours.dims(), 601);
    let g_ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g_theirs = (&theirs * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let d = max_difference(
        g_ours.get(table.as_tensor()).unwrap(),
        g_theirs.get(table.as_tensor()).unwrap(),
    );
    assert!(d < 1e-6, "gradients differ by {d}");
    // An id past the table is an error, not a panic.
    let bad = Tensor::from_vec(vec![50u32], 1, &Device::Cpu).unwrap();
    assert!(embedding(table.as_tensor(), &bad, None).is_err());
    // Through a sink, the same gradient.
    let sinks = GradSinks::new(&[("table".to_string(), table.clone())]);
    let ours = embedding(table.as_tensor(), &ids, sinks.get(table.as_tensor())).unwrap();
    let mut grads = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(table.as_tensor()).is_none());
    sinks.drain_into(&mut grads).unwrap();
    let d = max_difference(
        grads.get(table.as_tensor()).unwrap(),
        g_theirs.get(table.as_tensor()).unwrap(),
    );
    assert!(d < 1e-6, "gradients through the sink differ by {d}");
}

/// A NaN in a window pools to NaN (so a non-finite batch reaches the loss), on the tiled
/// path (kernel = stride) and the general one.
#[test]
fn max_pool_propagates_nan() {
    use kd_runtime::ops::pooling::max_pool2d;
    for (k, stride) in [(2, 2), (3, 2)] {
        let mut values = vec![0.5f32; 36];
        values[7] = f32::NAN; // row 1, column 1: the first window of either geometry
        let x = Var::from_vec(values, (1, 1, 6, 6), &Device::Cpu).unwrap();
        let y = max_pool2d(x.as_tensor(), k, stride).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].is_nan(), "kernel {k}, stride {stride}: {y:?}");
        assert!(y[1..].iter().all(|&v| v == 0.5), "{y:?}");
        // The first window's gradient goes to its NaN, not to the 0.5 before it.
        let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        assert_eq!((g[0], g[7]), (0.0, 1.0), "kernel {k}, stride {stride}");
    }
}
