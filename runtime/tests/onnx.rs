//! ONNX teachers written by an independent producer (tests/onnx/make_teachers.py, with the
//! `onnx` package) run in kdc as onnxruntime runs them: logits and tapped values within
//! 1e-4 of the outputs onnxruntime computed (tests/onnx/expected.json).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use kd_plan::{Kind, ModelSpec, OnnxSpec, Role, Span, Tap, TensorType};
use kd_runtime::model::Model;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/onnx")
}

fn spec(file: &str, tap: &str, tap_shape: Vec<usize>) -> ModelSpec {
    let tap_of = |name: &str, kind, shape: Vec<usize>| Tap {
        name: name.into(),
        layer: 0,
        ty: TensorType { kind, shape },
    };
    ModelSpec {
        name: "t".into(),
        architecture: format!("onnx(\"{file}\")"),
        role: Role::Teacher,
        input: vec![1, 8, 8],
        layers: vec![],
        taps: vec![
            tap_of(tap, Kind::Features, tap_shape),
            tap_of("logits", Kind::Logits, vec![10]),
            tap_of("output", Kind::Logits, vec![10]),
        ],
        init_from: None,
        init_key: "t".into(),
        params: 0,
        flops: 0,
        span: Span::default(),
        onnx: Some(OnnxSpec {
            path: file.into(),
            input: "pixels".into(),
            output: "logits".into(),
            taps: vec![(tap.into(), tap.into())],
        }),
        pruned: None,
        quantized: None,
        bert: None,
        tokens: false,
        precision: Default::default(),
    }
}

fn matrix(value: &serde_json::Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_difference(a: &Tensor, b: &[Vec<f32>]) -> f32 {
    let a = a.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn onnx_teachers_match_onnxruntime() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let inputs: Vec<f32> = matrix(&expected["inputs"]).concat();
    let x = Tensor::from_vec(inputs, (20, 1, 8, 8), &Device::Cpu).unwrap();
    for (name, file, tap, width) in [
        ("mlp", "digits_mlp.onnx", "hidden", 32),
        ("cnn", "digits_cnn.onnx", "features", 128),
    ] {
        let spec = spec(file, tap, vec![width]);
        let mut model = Model::from_onnx(&spec, &fixtures().join(file)).unwrap();
        let ports = model.forward(&x, false).unwrap();
        let port = |p: &str| &ports.iter().find(|(n, _)| n == p).unwrap().1;
        for (p, reference) in [("logits", "logits"), ("output", "logits"), (tap, tap)] {
            let d = max_difference(port(p), &matrix(&expected[name][reference]));
            assert!(d < 1e-4, "{name} {p}: differs from onnxruntime by {d}");
        }
        // A frozen model: nothing to train, its weights counted from the file's spec.
        assert!(model.params().is_empty());
    }
}

#[test]
fn a_broken_onnx_file_is_a_weights_error() {
    let dir = std::env::temp_dir().join(format!("kdc-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(fixtures().join("digits_mlp.onnx")).unwrap();
    let broken = dir.join("cut.onnx");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::from_onnx(&spec("cut.onnx", "hidden", vec![32]), &broken).unwrap_err();
    assert!(
        matches!(err, kd_runtime::RuntimeError::Weights { .. }),
        "{err:?}"
    );
}
