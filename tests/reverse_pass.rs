//! kdc's own reverse pass (runtime/src/model/tape.rs) against candle's graph through every layer:
//! for models using every layer kind, with taps read by the loss, dropout and batch norm
//! in training mode, the same outputs, the same gradient for every parameter within 1e-5
//! (relative to the gradient's largest magnitude), and the same running statistics.
//!
//! And the same models composed from candle's ops with kdc's CPU kernels off
//! (`kd_runtime::ops::set_cpu_kernels(false)`): the path every layer takes on a GPU,
//! checked here on the CPU against the kernels within float rounding (outputs 1e-5,
//! gradients 1e-4 of their largest magnitude, at least 1e-5, and 5e-4 at the second step,
//! whose weights already differ by the first's rounding: sums run in another order).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;

mod common;

use candle_core::{DType, Device, Tensor};
use common::{random, values};
use kd_runtime::model::Model;

/// The repository: `KDC_ROOT` where the test binary runs away from where it was built
/// (scripts/gpu-check.sh on a GPU host).
fn root() -> PathBuf {
    std::env::var_os("KDC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Two instances of model `m` (same weights): one with kdc's reverse pass, one without
/// (on `device`).
fn models_on(data: &str, input: &str, layers: &str, pad: bool, device: &Device) -> (Model, Model) {
    let source = format!(
        "{data}\nmodel m {{ input {input} {layers} }}\nstudent s = m\n\
         stage a {{ train s on d.train, loss cross_entropy(s.output, label), optimizer adam, epochs 1 }}\n"
    );
    let compiled = kd_compiler::compile(&source, &root().join("tests/reverse_pass.kd"), &[])
        .unwrap_or_else(|e| panic!("{layers}: {e:?}"));
    let spec = compiled.plan.model("s").unwrap().clone();
    let make = |own: bool| {
        let on = if own { &Device::Cpu } else { device };
        let mut model = Model::new_on(&spec, 11, on).unwrap();
        model.set_own_reverse_pass(own);
        if pad {
            model.set_pad_id(0);
        }
        model
    };
    (make(true), make(false))
}

/// How the second model of a comparison runs.
#[derive(Clone, Copy, Debug)]
enum Other {
    /// candle's graph through kdc's ops (kdc's CPU kernels).
    Graph,
    /// candle's graph through layers composed from candle's ops (kdc's kernels off).
    Composed,
    /// The composed layers on GPU 0 (a CUDA build on a GPU host: scripts/gpu-check.sh).
    #[allow(dead_code)]
    Cuda,
}

/// Runs `f` with kdc's CPU kernels on this thread as `other` wants them.
fn as_other<R>(other: Other, f: impl FnOnce() -> R) -> R {
    kd_runtime::ops::set_cpu_kernels(matches!(other, Other::Graph));
    let result = f();
    kd_runtime::ops::set_cpu_kernels(true);
    result
}

/// Both comparisons for one stack: the reverse pass against candle's graph, and the
/// kernels against the layers composed from candle's ops; in a CUDA build, also against
/// those layers on the GPU.
fn assert_both(what: &str, models: impl Fn(&Device) -> (Model, Model), x: &Tensor, train: bool) {
    assert_same_gradients(what, models(&Device::Cpu), x, train, Other::Graph);
    assert_same_gradients(what, models(&Device::Cpu), x, train, Other::Composed);
    if kd_runtime::device::HAS_CUDA {
        let gpu = Device::new_cuda(0).expect("a CUDA build's tests run on a GPU host");
        assert_same_gradients(what, models(&gpu), x, train, Other::Cuda);
    }
}

/// Two training steps' forward and backward on `x` in both models (`train`: dropout and
/// batch norm in training mode): every port, every parameter's gradient and every buffer
/// agree.
fn assert_same_gradients(
    what: &str,
    (mut own, mut graph): (Model, Model),
    x: &Tensor,
    train: bool,
    other: Other,
) {
    // The composed layers sum in another order. A gradient that is zero in exact
    // arithmetic (a bias before a batch norm) then holds only rounding noise, about 1e-6
    // here: hence the floor under the gradient's scale.
    let (port_tolerance, gradient_tolerance, floor) = match other {
        Other::Graph => (1e-6, 1e-5, 1e-3f64),
        Other::Composed | Other::Cuda => (1e-5, 1e-4, 0.1),
    };
    let device = graph.device();
    let x_other = x.to_device(&device).unwrap();
    let what = &format!("{what} ({other:?})");
    for step in 0..2 {
        let a = own.forward(x, train).unwrap();
        let b = as_other(other, || graph.forward(&x_other, train).unwrap());
        let loss = |ports: &[(String, Tensor)]| {
            let on = ports[0].1.device().clone();
            let mut total = Tensor::zeros((), DType::F32, &on).unwrap();
            for (i, (_, t)) in ports.iter().enumerate() {
                let weights = random(t.dims(), 100 + i as u64 + 10 * step)
                    .to_device(&on)
                    .unwrap();
                total = (total + (t * weights).unwrap().sum_all().unwrap()).unwrap();
            }
            total
        };
        for ((name, ta), (_, tb)) in a.iter().zip(&b) {
            for (va, vb) in values(ta).iter().zip(values(tb)) {
                assert!(
                    (va - vb).abs() <= port_tolerance * vb.abs().max(1.0),
                    "{what}: port {name}: {va} vs {vb}"
                );
            }
        }
        let ga = own.backward(&loss(&a)).unwrap();
        let gb = as_other(other, || graph.backward(&loss(&b)).unwrap());
        for ((name, va), (_, vb)) in own.params().iter().zip(graph.params()) {
            let (Some(da), Some(db)) = (ga.get(va.as_tensor()), gb.get(vb.as_tensor())) else {
                panic!("{what}: no gradient for {name}");
            };
            let (da, db) = (values(da), values(db));
            let scale = db.iter().fold(floor, |m, v| m.max(v.abs()));
            for (i, (x, y)) in da.iter().zip(&db).enumerate() {
                // The second step's weights already differ by the first step's rounding.
                let tolerance = match (other, step) {
                    (Other::Composed | Other::Cuda, 1) => 5.0 * gradient_tolerance,
                    _ => gradient_tolerance,
                };
                assert!(
                    (x - y).abs() <= tolerance * scale,
                    "{what}, step {step}: {name}[{i}] {x} vs {y}"
                );
            }
            // Both models take the same step, so the second one starts from equal weights.
            va.set(&(va.as_tensor() - (ga.get(va.as_tensor()).unwrap() * 0.01).unwrap()).unwrap())
                .unwrap();
            vb.set(&(vb.as_tensor() - (gb.get(vb.as_tensor()).unwrap() * 0.01).unwrap()).unwrap())
                .unwrap();
        }
        let (sa, sb) = (
            own.buffer_snapshot().unwrap(),
            graph.buffer_snapshot().unwrap(),
        );
        for (a, b) in sa.iter().zip(&sb) {
            for (x, y) in values(a).iter().zip(values(b)) {
                assert!(
                    (x - y).abs() <= port_tolerance * y.abs().max(1.0),
                    "{what}: running statistics {x} vs {y}"
                );
            }
        }
    }
}

const DIGITS: &str =
    "data d = csv(\"../examples/data/digits.csv.gz\") { shape: [1, 8, 8], scale: 16 }";

#[test]
fn image_models_match_candle_in_outputs_and_gradients() {
    let stacks = [
        "conv2d(4, kernel: 3, padding: 1) batchnorm relu \
         residual { conv2d(4, kernel: 3, padding: 1) batchnorm relu conv2d(4, kernel: 3, padding: 1) batchnorm } relu \
         residual { conv2d(6, kernel: 3, stride: 2, padding: 1, bias: false) batchnorm } \
         maxpool(2) as pooled avgpool(2) flatten dropout(0.3) linear(16) gelu linear(12) tanh \
         softmax linear(10) sigmoid linear(10) as logits",
        "conv2d(5, kernel: 3) as c1 relu maxpool(3, stride: 1) conv2d(6, kernel: 2, stride: 2) relu \
         flatten linear(20) relu batchnorm dropout(0.2) residual { linear(20) relu } linear(10)",
        "flatten linear(32) relu as hidden linear(32) batchnorm relu linear(10) as logits",
    ];
    let x = random(&[6, 1, 8, 8], 1);
    for stack in stacks {
        assert_both(
            stack,
            |d| models_on(DIGITS, "[1, 8, 8]", stack, false, d),
            &x,
            true,
        );
    }
}

#[test]
fn sequence_models_match_candle_in_outputs_and_gradients() {
    let data = "data d = text(\"text/mail.jsonl\") { classes: [\"ham\", \"spam\"], \
                tokenizer: \"text/tokenizer.json\", max_len: 12 }";
    let stacks = [
        "embedding(30522, 8, positions: true) conv1d(6, kernel: 3, padding: 1) relu as seq \
         max_over_time linear(2)",
        "embedding(30522, 8) bilstm(5) as seq pool(mean) linear(2)",
        "embedding(30522, 8) lstm(4) pool(max) linear(2)",
        "embedding(30522, 8, positions: true) transformer(heads: 2, ff: 12, dropout: 0.1) \
         transformer(heads: 4, ff: 8) layernorm pool(first) linear(2)",
    ];
    // Rows of 12, 5, 2 and 0 real tokens (ids 2..), padded with 0.
    let lengths = [12, 5, 2, 0];
    let ids: Vec<f32> = lengths
        .iter()
        .enumerate()
        .flat_map(|(r, &n)| {
            (0..12).map(move |t| {
                if t < n {
                    (2 + 97 * r + 31 * t) as f32
                } else {
                    0.0
                }
            })
        })
        .collect();
    let x = Tensor::from_vec(ids, (4, 12), &Device::Cpu).unwrap();
    for stack in stacks {
        assert_both(
            stack,
            |d| models_on(data, "tokens[12]", stack, true, d),
            &x,
            true,
        );
    }
}

/// A trained model run with `train` off (a stage that evaluates in eval mode while
/// gradients flow): batch norm on its running statistics, dropout as the identity.
#[test]
fn evaluation_mode_with_gradients_matches_candle() {
    let stack = "conv2d(4, kernel: 3, padding: 1) batchnorm relu \
                 residual { conv2d(4, kernel: 3, padding: 1) batchnorm } \
                 flatten dropout(0.5) linear(16) batchnorm gelu linear(10)";
    let x = random(&[5, 1, 8, 8], 2);
    assert_both(
        stack,
        |d| models_on(DIGITS, "[1, 8, 8]", stack, false, d),
        &x,
        false,
    );
}

/// Quantisation-aware models (`quantize(s) on ... { aware: true }`): both passes
/// fake-quantise the same operands and pass gradients straight through, masked where an
/// input saturates. Input ranges are calibrated on a batch unlike the trained one, so
/// some inputs saturate and the mask matters.
#[test]
fn quantisation_aware_models_match_candle_in_outputs_and_gradients() {
    let stacks = [
        "conv2d(4, kernel: 3, padding: 1) batchnorm relu \
         residual { conv2d(4, kernel: 3, padding: 1) batchnorm } relu \
         residual { conv2d(6, kernel: 3, stride: 2, padding: 1) batchnorm } \
         flatten dropout(0.3) linear(16) relu linear(10) as logits",
        "flatten linear(32) relu as hidden linear(32) batchnorm relu linear(10) as logits",
    ];
    let calibration = (random(&[4, 1, 8, 8], 7) * 0.5).unwrap();
    let x = random(&[6, 1, 8, 8], 1);
    for stack in stacks {
        let aware = |d: &Device| {
            let (mut own, mut graph) = models_on(DIGITS, "[1, 8, 8]", stack, false, d);
            own.make_aware(&mut std::iter::once(Ok(calibration.clone())))
                .unwrap();
            graph.set_input_ranges(&own.input_ranges()).unwrap();
            (own, graph)
        };
        assert_same_gradients(stack, aware(&Device::Cpu), &x, true, Other::Graph);
    }
}

/// The straight-through estimator stops at saturated inputs: with a range far below the
/// second layer's inputs, every one saturates and the first layer learns nothing, while
/// the last layer still does.
#[test]
fn saturated_inputs_pass_no_gradient() {
    let stack = "flatten linear(16) relu linear(10) as logits";
    let x = random(&[6, 1, 8, 8], 3);
    for own in [true, false] {
        let (mut model, _) = models_on(DIGITS, "[1, 8, 8]", stack, false, &Device::Cpu);
        model.set_own_reverse_pass(own);
        let ranges: Vec<(String, f32)> = model
            .params()
            .iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .map(|(n, _)| (n.clone(), if n.starts_with("linear1") { 1.0 } else { 1e-6 }))
            .collect();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        model.set_input_ranges(&ranges).unwrap();
        let out = model.forward(&x, true).unwrap();
        let logits = &out.last().unwrap().1;
        let loss = (logits * random(logits.dims(), 5))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = model.backward(&loss).unwrap();
        let norm = |name: &str| {
            let var = &model.params().iter().find(|(n, _)| n == name).unwrap().1;
            let g = grads.get(var.as_tensor()).expect("a gradient");
            values(g).iter().map(|v| v.abs()).sum::<f64>()
        };
        assert_eq!(norm("linear1.weight"), 0.0, "own pass: {own}");
        assert!(norm("linear2.weight") > 0.0, "own pass: {own}");
    }
}

/// An aware model put in int8 computes what its fake-quantised forward computed: the
/// same values up to the f32 rounding of the sums, the same predictions.
#[test]
fn an_aware_model_computes_in_int8_what_it_trained_against() {
    let stack = "conv2d(8, kernel: 3, padding: 1) batchnorm relu maxpool(2) \
                 residual { conv2d(8, kernel: 3, padding: 1) batchnorm } relu \
                 flatten linear(32) relu linear(10) as logits";
    let (mut model, _) = models_on(DIGITS, "[1, 8, 8]", stack, false, &Device::Cpu);
    let x = random(&[64, 1, 8, 8], 4);
    model
        .make_aware(&mut std::iter::once(Ok(x.narrow(0, 0, 16).unwrap())))
        .unwrap();
    let simulated = values(&model.forward_with(&x, false, false, false).unwrap()[0].1);
    model.finish_aware().unwrap();
    assert!(model.is_int8() && !model.is_aware());
    let int8 = values(&model.forward_with(&x, false, false, false).unwrap()[0].1);
    let scale = simulated.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (a, b) in simulated.iter().zip(&int8) {
        assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
    }
    let argmax = |v: &[f64]| -> Vec<usize> {
        v.chunks(10)
            .map(|r| (0..10).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap())
            .collect()
    };
    assert_eq!(argmax(&simulated), argmax(&int8));
}
