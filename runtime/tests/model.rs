//! Models: parameter names, initialisation, layers, weights in and out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use candle_core::{Device, Tensor, Var};
use common::temp_dir;
use kd_plan::{Layer, LayerSpec, ModelSpec, Role, Span, Tap, TensorType};
use kd_runtime::model::Model;
use kd_runtime::RuntimeError;

fn layer(name: &str, layer: Layer, input: Vec<usize>) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        layer,
        input,
        output: vec![],
        params: 0,
        flops: 0,
        span: Span::default(),
    }
}

/// conv -> bn -> relu -> residual(conv, bn; 1x1 shortcut) -> maxpool(3, 2) -> avgpool ->
/// flatten -> dropout -> linear -> gelu/tanh/sigmoid -> linear
fn cnn(name: &str, init_key: &str) -> ModelSpec {
    let conv = |out, kernel, padding| Layer::Conv2d {
        out,
        kernel,
        stride: 1,
        padding,
        bias: true,
    };
    ModelSpec {
        name: name.into(),
        architecture: "cnn".into(),
        role: Role::Student,
        input: vec![1, 8, 8],
        layers: vec![
            layer("conv1", conv(4, 3, 1), vec![1, 8, 8]),
            layer(
                "bn1",
                Layer::BatchNorm {
                    eps: 1e-5,
                    momentum: 0.1,
                },
                vec![4, 8, 8],
            ),
            layer("relu", Layer::Relu, vec![4, 8, 8]),
            layer(
                "block",
                Layer::Residual {
                    body: vec![
                        layer("conv", conv(6, 3, 1), vec![4, 8, 8]),
                        layer(
                            "bn",
                            Layer::BatchNorm {
                                eps: 1e-5,
                                momentum: 0.1,
                            },
                            vec![6, 8, 8],
                        ),
                    ],
                    shortcut: Some(Box::new(layer("proj", conv(6, 1, 0), vec![4, 8, 8]))),
                },
                vec![4, 8, 8],
            ),
            layer(
                "pool",
                Layer::MaxPool {
                    kernel: 3,
                    stride: 2,
                },
                vec![6, 8, 8],
            ),
            layer(
                "avg",
                Layer::AvgPool {
                    kernel: 1,
                    stride: 1,
                },
                vec![6, 3, 3],
            ),
            layer("flat", Layer::Flatten, vec![6, 3, 3]),
            layer("drop", Layer::Dropout { p: 0.5 }, vec![54]),
            layer(
                "fc1",
                Layer::Linear {
                    out: 16,
                    bias: true,
                },
                vec![54],
            ),
            layer("gelu", Layer::Gelu, vec![16]),
            layer("tanh", Layer::Tanh, vec![16]),
            layer("sig", Layer::Sigmoid, vec![16]),
            layer(
                "fc2",
                Layer::Linear {
                    out: 10,
                    bias: false,
                },
                vec![16],
            ),
        ],
        taps: vec![Tap {
            name: "features".into(),
            layer: 6,
            ty: TensorType::scalar(),
        }],
        init_from: None,
        onnx: None,
        pruned: None,
        quantized: None,
        bert: None,
        tokens: false,
        precision: Default::default(),
        init_key: init_key.into(),
        params: 0,
        flops: 0,
        span: Span::default(),
    }
}

fn input(batch: usize) -> Tensor {
    let values: Vec<f32> = (0..batch * 64)
        .map(|i| ((i * 13) % 17) as f32 / 17.0 - 0.5)
        .collect();
    Tensor::from_vec(values, (batch, 1, 8, 8), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn names_shapes_and_taps() {
    let mut model = Model::new(&cnn("m", "m"), 1).unwrap();
    let names: Vec<&str> = model.state().map(|(n, _)| n).collect();
    for expected in [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "block.conv.weight",
        "block.bn.weight",
        "block.bn.running_var",
        "block.shortcut.weight",
        "block.shortcut.bias",
        "fc1.weight",
        "fc2.weight",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    assert!(!names.contains(&"fc2.bias"));
    let trainable: usize =
        4 * 9 + 4 + 4 + 4 + 6 * 4 * 9 + 6 + 6 + 6 + 6 * 4 + 6 + 16 * 54 + 16 + 10 * 16;
    assert_eq!(model.param_count(), trainable);
    let outputs = model.forward(&input(3), true).unwrap();
    let find = |name: &str| outputs.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(find("features").dims(), &[3, 54]);
    assert_eq!(find("output").dims(), &[3, 10]);
    // Backward reaches every trainable parameter through the gathered max pool.
    let loss = find("output").sqr().unwrap().sum_all().unwrap();
    let grads = model.backward(&loss).unwrap();
    for (name, var) in model.params() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
}

/// Without gradients (a frozen teacher, evaluation) a forward records no graph, so its
/// activations can be freed layer by layer, and gives the same values.
#[test]
fn a_forward_without_gradients_keeps_no_graph() {
    let mut model = Model::new(&cnn("m", "m"), 1).unwrap();
    let tracked = model.forward(&input(3), false).unwrap();
    let untracked = model.forward_with(&input(3), false, true, false).unwrap();
    for ((port, a), (_, b)) in tracked.iter().zip(&untracked) {
        assert!(a.track_op(), "{port} should be in the graph");
        assert!(!b.track_op(), "{port} should be outside any graph");
        assert_eq!(values(a), values(b), "{port}");
    }
}

/// conv -> relu -> maxpool -> conv (no bias) -> maxpool -> flatten -> linear, with a tap
/// on the ReLU when `tapped`: without gradients the convolutions take their pools into
/// their output pass, except where the tap reads the value in between.
fn pooled_cnn(tapped: bool) -> ModelSpec {
    let conv = |out, bias| Layer::Conv2d {
        out,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias,
    };
    let pool = Layer::MaxPool {
        kernel: 2,
        stride: 2,
    };
    ModelSpec {
        name: "pooled".into(),
        architecture: "cnn".into(),
        role: Role::Teacher,
        input: vec![1, 8, 8],
        layers: vec![
            layer("conv1", conv(4, true), vec![1, 8, 8]),
            layer("relu", Layer::Relu, vec![4, 8, 8]),
            layer("pool1", pool.clone(), vec![4, 8, 8]),
            layer("conv2", conv(6, false), vec![4, 4, 4]),
            layer("pool2", pool, vec![6, 4, 4]),
            layer("flat", Layer::Flatten, vec![6, 2, 2]),
            layer(
                "fc",
                Layer::Linear {
                    out: 10,
                    bias: true,
                },
                vec![24],
            ),
        ],
        taps: match tapped {
            true => vec![Tap {
                name: "hidden".into(),
                layer: 1,
                ty: TensorType::scalar(),
            }],
            false => vec![],
        },
        init_from: None,
        onnx: None,
        pruned: None,
        quantized: None,
        bert: None,
        tokens: false,
        precision: Default::default(),
        init_key: "pooled".into(),
        params: 0,
        flops: 0,
        span: Span::default(),
    }
}

#[test]
fn convolutions_with_their_pools_give_the_same_values_without_gradients() {
    for tapped in [false, true] {
        let mut model = Model::new(&pooled_cnn(tapped), 3).unwrap();
        let tracked = model.forward(&input(5), false).unwrap();
        let untracked = model.forward_with(&input(5), false, true, false).unwrap();
        assert_eq!(tracked.len(), untracked.len());
        for ((port, a), (_, b)) in tracked.iter().zip(&untracked) {
            assert!(!b.track_op(), "{port} should be outside any graph");
            assert_eq!(a.dims(), b.dims(), "{port}");
            assert_eq!(values(a), values(b), "{port} (tap: {tapped})");
        }
    }
}

#[test]
fn initialisation_is_seeded_uniform_and_shared_by_init_key() {
    let a = Model::new(&cnn("a", "student"), 7).unwrap();
    let b = Model::new(&cnn("b", "student"), 7).unwrap();
    let c = Model::new(&cnn("c", "student"), 8).unwrap();
    let d = Model::new(&cnn("d", "other"), 7).unwrap();
    let weight = |m: &Model| {
        values(
            m.params()
                .iter()
                .find(|(n, _)| n == "fc1.weight")
                .unwrap()
                .1
                .as_tensor(),
        )
    };
    assert_eq!(weight(&a), weight(&b));
    assert_ne!(weight(&a), weight(&c));
    assert_ne!(weight(&a), weight(&d));
    let bound = 1.0 / (54f32).sqrt();
    let w = weight(&a);
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(
        w.iter().any(|v| v.abs() > 0.9 * bound),
        "spread over the whole range"
    );
    let bn = values(
        a.state()
            .find(|(n, _)| *n == "bn1.running_var")
            .unwrap()
            .1
            .as_tensor(),
    );
    assert!(bn.iter().all(|&v| v == 1.0));
}

#[test]
fn batch_norm_tracks_running_stats_like_pytorch_and_eval_differs_from_train() {
    let spec = ModelSpec {
        layers: vec![layer(
            "bn",
            Layer::BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
            },
            vec![2],
        )],
        input: vec![2],
        taps: vec![],
        ..cnn("bn", "bn")
    };
    let mut model = Model::new(&spec, 0).unwrap();
    let x = Tensor::new(&[[1.0f32, 10.0], [3.0, 14.0], [5.0, 12.0]], &Device::Cpu).unwrap();
    let train = model.forward(&x, true).unwrap().pop().unwrap().1;
    // Column 0: mean 3, biased var 8/3, unbiased 4.
    let out = values(&train);
    assert!((out[0] - (-2.0 / (8.0f32 / 3.0 + 1e-5).sqrt())).abs() < 1e-5);
    let state: Vec<(String, Vec<f32>)> = model
        .state()
        .map(|(n, v)| (n.to_string(), values(v.as_tensor())))
        .collect();
    let mean = &state
        .iter()
        .find(|(n, _)| n == "bn.running_mean")
        .unwrap()
        .1;
    let var = &state.iter().find(|(n, _)| n == "bn.running_var").unwrap().1;
    assert!((mean[0] - 0.3).abs() < 1e-6 && (mean[1] - 1.2).abs() < 1e-6);
    assert!((var[0] - (0.9 + 0.1 * 4.0)).abs() < 1e-6);
    let eval = model.forward(&x, false).unwrap().pop().unwrap().1;
    assert_ne!(values(&eval), out);
}

#[test]
fn dropout_only_in_training_and_deterministic() {
    let run = |seed| {
        let mut model = Model::new(&cnn("m", "m"), seed).unwrap();
        let train = values(&model.forward(&input(2), true).unwrap().pop().unwrap().1);
        let eval_a = values(&model.forward(&input(2), false).unwrap().pop().unwrap().1);
        let eval_b = values(&model.forward(&input(2), false).unwrap().pop().unwrap().1);
        (train, eval_a, eval_b)
    };
    let (train, eval_a, eval_b) = run(3);
    assert_eq!(eval_a, eval_b);
    assert_eq!(run(3).0, train);
}

#[test]
fn strided_max_pool_matches_a_hand_computation() {
    let spec = ModelSpec {
        layers: vec![layer(
            "pool",
            Layer::MaxPool {
                kernel: 2,
                stride: 1,
            },
            vec![1, 3, 3],
        )],
        input: vec![1, 3, 3],
        taps: vec![],
        ..cnn("p", "p")
    };
    let mut model = Model::new(&spec, 0).unwrap();
    let x = Tensor::new(
        &[1.0f32, 5.0, 2.0, 3.0, 4.0, 9.0, 0.0, 7.0, 6.0],
        &Device::Cpu,
    )
    .unwrap()
    .reshape((1, 1, 3, 3))
    .unwrap();
    let out = model.forward(&x, false).unwrap().pop().unwrap().1;
    assert_eq!(out.dims(), &[1, 1, 2, 2]);
    assert_eq!(values(&out), vec![5.0, 9.0, 7.0, 9.0]);
}

#[test]
fn weights_round_trip_and_bad_files_are_named() {
    let dir = temp_dir("weights");
    let mut model = Model::new(&cnn("m", "m"), 1).unwrap();
    model.forward(&input(4), true).unwrap();
    let path = dir.join("m.safetensors");
    let bytes = model.save_weights(&path).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    assert!(!dir.join("m.safetensors.partial").exists());
    let other = Model::new(&cnn("m", "m"), 2).unwrap();
    other.load_weights(&path).unwrap();
    for ((name, a), (_, b)) in model.state().zip(other.state()) {
        assert_eq!(values(a.as_tensor()), values(b.as_tensor()), "{name}");
    }
    // Missing parameter.
    let partial: std::collections::HashMap<String, Tensor> = model
        .state()
        .filter(|(n, _)| *n != "fc1.bias")
        .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&partial, dir.join("partial.safetensors")).unwrap();
    let err = other
        .load_weights(&dir.join("partial.safetensors"))
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Weights { .. }));
    let text = err.to_string();
    assert!(
        text.contains("partial.safetensors") && text.contains("fc1.bias"),
        "{text}"
    );
    // Wrong shape.
    let mut wrong = partial.clone();
    wrong.insert(
        "fc1.bias".into(),
        Var::zeros(3, candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .as_tensor()
            .clone(),
    );
    candle_core::safetensors::save(&wrong, dir.join("wrong.safetensors")).unwrap();
    let text = other
        .load_weights(&dir.join("wrong.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("[3]") && text.contains("[16]"), "{text}");
    // Not a safetensors file, and no file at all.
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    assert!(other.load_weights(&dir.join("junk.safetensors")).is_err());
    assert!(other.load_weights(&dir.join("absent.safetensors")).is_err());
}

/// The compiler checks `from "weights.safetensors"` files against `kd_plan::parameter_shapes`;
/// the runtime must save exactly those names and shapes.
#[test]
fn saved_names_and_shapes_are_the_plans() {
    let spec = cnn("m", "m");
    let model = Model::new(&spec, 1).unwrap();
    let mut saved: Vec<(String, Vec<usize>)> = model
        .state()
        .map(|(n, v)| (n.to_string(), v.as_tensor().dims().to_vec()))
        .collect();
    let mut expected = kd_plan::parameter_shapes(&spec.layers);
    saved.sort();
    expected.sort();
    assert_eq!(saved, expected);
}

#[test]
fn an_onnx_export_runs_in_kdc_as_the_model_it_came_from() {
    // Every layer kind, batch-norm statistics moved away from their initial values.
    let spec = cnn("m", "m");
    let mut model = Model::new(&spec, 5).unwrap();
    let x = Tensor::randn(0f32, 1.0, (6, 1, 8, 8), &Device::Cpu).unwrap();
    for _ in 0..3 {
        model.forward(&x, true).unwrap();
    }
    let expected = model.forward(&x, false).unwrap();
    let expected = &expected.iter().find(|(p, _)| p == "output").unwrap().1;

    let dir = temp_dir("onnx-export");
    let path = dir.join("m.onnx");
    std::fs::write(
        &path,
        kd_runtime::output::onnx_export::export(&spec, &model).unwrap(),
    )
    .unwrap();
    let teacher = ModelSpec {
        taps: vec![Tap {
            name: "output".into(),
            layer: 0,
            ty: TensorType::scalar(),
        }],
        layers: vec![],
        onnx: Some(kd_plan::OnnxSpec {
            path: path.clone(),
            input: "input".into(),
            output: "output".into(),
            taps: vec![],
        }),
        ..spec.clone()
    };
    let mut reloaded = Model::from_onnx(&teacher, &path).unwrap();
    let got = reloaded.forward(&x, false).unwrap();
    let got = &got.iter().find(|(p, _)| p == "output").unwrap().1;
    let difference = (got - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(difference < 1e-4, "the export differs by {difference}");
}

#[test]
fn pruning_zeroes_the_smallest_magnitudes_keeps_earlier_cuts_and_breaks_ties_by_position() {
    let spec = cnn("p", "p");
    let mut model = Model::new(&spec, 3).unwrap();
    let source = Model::new(&cnn("s", "s"), 3).unwrap();
    model.take_weights(&source).unwrap();
    let tensors = kd_plan::prunable(&spec.layers);
    assert!(tensors.iter().all(|t| t.ends_with("weight")), "{tensors:?}");
    assert!(!tensors.iter().any(|t| t.starts_with("bn")), "{tensors:?}");
    let var = |m: &Model, name: &str| {
        m.params()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    // Ties: eight equal magnitudes, half of them cut: the first four positions go.
    let weight = var(&model, "conv1.weight");
    let n = weight.elem_count();
    let mut v: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
    for x in v.iter_mut().take(8) {
        *x = -0.5;
    }
    for x in v.iter_mut().skip(8).take(8) {
        *x = 0.5;
    }
    weight
        .set(&Tensor::from_vec(v.clone(), weight.dims(), &Device::Cpu).unwrap())
        .unwrap();
    let cut = 8.0 / n as f64;
    model.prune_to(&tensors, cut).unwrap();
    let after = values(weight.as_tensor());
    assert!(after[..8].iter().all(|x| *x == 0.0), "{after:?}");
    assert!(after[8..].iter().all(|x| *x != 0.0));
    // A value pruned before goes first even when training made its neighbours smaller.
    let mut grown = after.clone();
    for x in grown.iter_mut().skip(8).take(8) {
        *x = 1e-6;
    }
    weight
        .set(&Tensor::from_vec(grown, weight.dims(), &Device::Cpu).unwrap())
        .unwrap();
    model.prune_to(&tensors, 12.0 / n as f64).unwrap();
    let again = values(weight.as_tensor());
    assert!(again[..12].iter().all(|x| *x == 0.0), "{again:?}");
    assert!(again[12..].iter().all(|x| *x != 0.0));
    // Every pruned tensor has round(sparsity * n) zeros; biases and norms are whole.
    model.prune_to(&tensors, 0.75).unwrap();
    for name in &tensors {
        let w = values(var(&model, name).as_tensor());
        let zeros = w.iter().filter(|x| **x == 0.0).count();
        assert_eq!(zeros, (0.75 * w.len() as f64).round() as usize, "{name}");
    }
    assert!(values(var(&model, "conv1.bias").as_tensor())
        .iter()
        .all(|x| *x != 0.0));
    let (nonzero, sparsity) = model.sparsity().unwrap();
    let sparsity = sparsity.unwrap();
    assert!((sparsity - 0.75).abs() < 0.01, "{sparsity}");
    assert!(nonzero < model.param_count());
    // Masked gradients and masked updates keep the zeros.
    assert_eq!(model.masks().len(), tensors.len());
    model.apply_masks().unwrap();
    let w = values(var(&model, "conv1.weight").as_tensor());
    assert_eq!(
        w.iter().filter(|x| **x == 0.0).count(),
        (0.75 * n as f64).round() as usize
    );
}
