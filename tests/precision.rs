//! `precision: bf16`: every layer kind computes in bf16 while its parameters stay f32
//! (mixed precision with f32 master weights). Against the same model in f32 on kdc's
//! kernels, the outputs agree to bf16's rounding and every parameter gets an f32 gradient
//! pointing the same way (cosine similarity above 0.9), with batch norm and dropout in training mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::{random, root, values};
use kd_runtime::model::Model;

/// Model `m` as student `s` in f32 and in bf16 (the same initial weights: both draw
/// them from the seed and the instance's name).
fn models(data: &str, input: &str, layers: &str, pad: bool) -> (Model, Model) {
    let make = |settings: &str| {
        let source = format!(
            "{data}\nmodel m {{ input {input} {layers} }}\nstudent s = m {settings}\n\
             stage a {{ train s on d.train, loss cross_entropy(s.output, label), optimizer adam, epochs 1 }}\n"
        );
        let compiled = kd_compiler::compile(&source, &root().join("tests/precision.kd"), &[])
            .unwrap_or_else(|e| panic!("{layers}: {e:?}"));
        let spec = compiled.plan.model("s").unwrap().clone();
        let mut model = Model::new(&spec, 11).unwrap();
        if pad {
            model.set_pad_id(0);
        }
        model
    };
    (make(""), make("{ precision: bf16 }"))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-30)
}

/// One training-mode forward and backward of both models on `x`.
fn assert_close(what: &str, (mut full, mut half): (Model, Model), x: &Tensor) {
    let a = full.forward(x, true).unwrap();
    let b = half.forward(x, true).unwrap();
    let loss = |ports: &[(String, Tensor)]| {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (i, (_, t)) in ports.iter().enumerate() {
            let weights = random(t.dims(), 100 + i as u64);
            total = (total + (t * weights).unwrap().sum_all().unwrap()).unwrap();
        }
        total
    };
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        assert_eq!(tb.dtype(), DType::F32, "{what}: port {name} leaves in f32");
        let (va, vb) = (values(ta), values(tb));
        let scale = va.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (p, q)) in va.iter().zip(&vb).enumerate() {
            // bf16 keeps 8 significant bits (relative rounding 2^-9 per op).
            assert!(
                (p - q).abs() <= 0.05 * scale,
                "{what}: port {name}[{i}] {p} (f32) vs {q} (bf16)"
            );
        }
    }
    let ga = full.backward(&loss(&a)).unwrap();
    let gb = half.backward(&loss(&b)).unwrap();
    for ((name, va), (_, vb)) in full.params().iter().zip(half.params()) {
        assert_eq!(
            vb.dtype(),
            DType::F32,
            "{what}: {name} stays an f32 master weight"
        );
        let (Some(da), Some(db)) = (ga.get(va.as_tensor()), gb.get(vb.as_tensor())) else {
            panic!("{what}: no gradient for {name}");
        };
        assert_eq!(db.dtype(), DType::F32, "{what}: {name}'s gradient is f32");
        let (da, db) = (values(da), values(db));
        let size = da.iter().map(|v| v * v).sum::<f64>().sqrt();
        // A gradient that is zero in exact arithmetic (a bias before a batch norm) holds
        // only rounding noise in both: nothing to compare.
        if size < 1e-4 {
            continue;
        }
        let c = cosine(&da, &db);
        // bf16 rounds every activation to 8 significant bits, so near-equal values tie and
        // a max (pool or over time) may pick another position than f32 does: cosines
        // here run 0.92-0.9999. A wrong gradient (a lost cast, a sign) is far below.
        assert!(c > 0.9, "{what}: {name}'s gradient, cosine {c} to f32's");
    }
    for (a, b) in full
        .buffer_snapshot()
        .unwrap()
        .iter()
        .zip(&half.buffer_snapshot().unwrap())
    {
        for (x, y) in values(a).iter().zip(values(b)) {
            assert!(
                (x - y).abs() <= 0.02 * x.abs().max(1.0),
                "{what}: running statistics {x} vs {y}"
            );
        }
    }
}

const DIGITS: &str =
    "data d = csv(\"../examples/data/digits.csv.gz\") { shape: [1, 8, 8], scale: 16 }";

#[test]
fn image_layers_in_bf16_follow_f32() {
    let stacks = [
        "conv2d(4, kernel: 3, padding: 1) batchnorm relu \
         residual { conv2d(4, kernel: 3, padding: 1) batchnorm relu conv2d(4, kernel: 3, padding: 1) batchnorm } relu \
         residual { conv2d(6, kernel: 3, stride: 2, padding: 1, bias: false) batchnorm } \
         maxpool(2) as pooled avgpool(2) flatten dropout(0.3) linear(16) gelu linear(12) tanh \
         softmax linear(10) sigmoid linear(10) as logits",
        "conv2d(5, kernel: 3) as c1 relu maxpool(3, stride: 1) conv2d(6, kernel: 2, stride: 2) relu \
         flatten linear(20) relu batchnorm dropout(0.2) residual { linear(20) relu } linear(10)",
    ];
    let x = random(&[6, 1, 8, 8], 1);
    for stack in stacks {
        assert_close(stack, models(DIGITS, "[1, 8, 8]", stack, false), &x);
    }
}

#[test]
fn sequence_layers_in_bf16_follow_f32() {
    let data = "data d = text(\"text/mail.jsonl\") { classes: [\"ham\", \"spam\"], \
                tokenizer: \"text/tokenizer.json\", max_len: 12 }";
    let stacks = [
        "embedding(30522, 8, positions: true) conv1d(6, kernel: 3, padding: 1) relu as seq \
         max_over_time linear(2)",
        "embedding(30522, 8) bilstm(5) as seq pool(mean) linear(2)",
        "embedding(30522, 8, positions: true) transformer(heads: 2, ff: 12, dropout: 0.1) \
         transformer(heads: 4, ff: 8) layernorm pool(first) linear(2)",
    ];
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
        assert_close(stack, models(data, "tokens[12]", stack, true), &x);
    }
    // Without a padding id the input is still token ids: ids past 256 must not be rounded
    // to bf16 (30522 would become 30464).
    let stack = stacks[0];
    assert_close(stack, models(data, "tokens[12]", stack, false), &x);
}

fn pipeline(precision: &str, out: &std::path::Path) -> String {
    let data = root().join("examples/data/digits.csv.gz");
    format!(
        r#"pipeline p {{ seed: 3, output: "{out}", threads: 2, precision: {precision} }}
data digits = csv("{data}") {{
  label: 64, shape: [1, 8, 8], scale: 16
  split {{ train: 0.6, val: 0.1, test: 0.3 }}
  normalize: auto
}}
model cnn {{
  input [1, 8, 8]
  conv2d(16, kernel: 3, padding: 1) batchnorm relu maxpool(2)
  flatten linear(64) relu dropout(0.2) linear(10) as logits
}}
model mlp {{ input [1, 8, 8] flatten linear(32) relu linear(10) as logits }}
teacher t = cnn
student s = mlp {{ precision: f32 }}
stage teach {{
  train t on digits.train
  loss cross_entropy(t.logits, label)
  optimizer adam(lr: 3e-3), epochs 6, batch 64
}}
stage distill {{
  distill t -> s on digits.train
  loss 4 * kl(softmax(t.logits, 2), softmax(s.logits, 2))
  optimizer adam(lr: 3e-3), epochs 8, batch 64
}}
evaluate t, s on digits.test {{ accuracy }}
export t to "t.onnx"
"#,
        out = out.display(),
        data = data.display(),
    )
}

/// Runs the digits pipeline with `precision` pipeline-wide (the student keeps f32 by its
/// own setting): summary.json and the run folder.
fn run(precision: &str, name: &str) -> (serde_json::Value, PathBuf) {
    let dir = std::env::temp_dir().join(format!("kdc-precision-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.kd");
    std::fs::write(&file, pipeline(precision, &dir.join("runs"))).unwrap();
    let out = dir.join("run");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kdc"))
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kdc run with precision {precision}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), out)
}

/// A whole bf16 run: the teacher trains in bf16 with f32 master weights, the f32 student
/// learns from its bf16 outputs, both end near the f32 run's accuracy, the summary
/// records each model's precision, the export is f32, and a second run is bitwise the same.
#[test]
fn a_bf16_run_trains_and_ends_near_f32() {
    let (full, _) = run("f32", "full");
    let (half, out) = run("bf16", "half");
    let (again, out_again) = run("bf16", "again");
    let accuracy = |s: &serde_json::Value, m: &str| {
        s["models"][m]["metrics"]["test"]["accuracy"]
            .as_f64()
            .unwrap()
    };
    for model in ["t", "s"] {
        let (a, b) = (accuracy(&full, model), accuracy(&half, model));
        assert!(b > 0.85, "{model}: accuracy {b} in bf16");
        assert!(
            (a - b).abs() < 0.05,
            "{model}: accuracy {a} (f32) vs {b} (bf16)"
        );
        assert_eq!(
            accuracy(&again, model),
            b,
            "{model}: bf16 runs repeat exactly"
        );
    }
    assert_eq!(half["models"]["t"]["precision"], "bf16");
    assert_eq!(half["models"]["s"]["precision"], "f32");
    assert_eq!(full["models"]["t"]["precision"], "f32");
    let onnx = std::fs::read(out.join("t.onnx")).unwrap();
    assert_eq!(onnx, std::fs::read(out_again.join("t.onnx")).unwrap());
}
