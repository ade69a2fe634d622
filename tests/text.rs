//! The text path against independent references, and text pipelines end to end.
//!
//! - Token ids: kdc's tokenisation (the Rust `tokenizers` crate) against Hugging Face's
//!   Python `tokenizers`, on real e-mails.
//! - BERT: kdc's pooled embeddings (candle-transformers, a layer subset, kdc's pooling)
//!   against a BERT written in numpy (tests/bert/reference.py), on the tiny checkpoint and
//!   on the real MiniLM (fetched with the project's pinned, checksummed script).
//! - Pipelines: the text and BERT cases of tests/cases/ok run through `kdc run`; the
//!   summary holds what the executor counted (teacher and encoder forwards), projections
//!   are not exported, and `cache: disk` lets a second run skip the encoder entirely.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{DType, Device, Tensor};
use kd_plan::{BertSpec, ModelSpec, Pooling, Precision, Role, Span, Trainable};
use kd_runtime::model::Model;

use common::{fetch, python, root, valid_summary};

/// Runs tests/bert/reference.py on a request.
fn reference(request: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .arg(root().join("tests/bert/reference.py"))
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The first `n` e-mails of tests/text/mail.jsonl.
fn mails(n: usize) -> Vec<String> {
    std::fs::read_to_string(root().join("tests/text/mail.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

fn tokenize(texts: &[String], max_len: usize) -> Vec<u32> {
    kd_runtime::data::text::tokenize(
        &root().join("tests/text/tokenizer.json"),
        texts.iter().map(String::as_str),
        max_len,
        0,
    )
    .unwrap()
}

#[test]
fn token_ids_match_hugging_face_tokenizers() {
    let mut texts = mails(12);
    texts.push("Hello, world!".into());
    texts.push(String::new());
    texts.push("naïve café — ÜBER résumé 日本語 emoji 🙂".into());
    let ids = tokenize(&texts, 96);
    let expected = reference(serde_json::json!({
        "tokenizer": "tests/text/tokenizer.json", "max_len": 96, "texts": texts,
    }));
    let expected: Vec<u32> = expected["ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
        })
        .collect();
    assert_eq!(ids, expected);
    // [CLS] hello , world ! [SEP], then padding.
    let hello = &ids[12 * 96..12 * 96 + 8];
    assert_eq!(hello, &[101, 7592, 1010, 2088, 999, 102, 0, 0]);
}

fn bert_spec(folder: &str, layers: Vec<usize>, hidden: usize, pooling: Pooling) -> ModelSpec {
    ModelSpec {
        name: "b".into(),
        architecture: format!("bert(\"{folder}\")"),
        role: Role::Teacher,
        input: vec![512],
        layers: vec![],
        taps: vec![],
        init_from: None,
        init_key: "b".into(),
        params: 0,
        flops: 0,
        span: Span::default(),
        onnx: None,
        pruned: None,
        quantized: None,
        bert: Some(BertSpec {
            path: folder.into(),
            pooling,
            classes: 2,
            trainable: Trainable::Head,
            layers,
            hidden,
            vocab: 30522,
            max_positions: 512,
        }),
        tokens: true,
        precision: Default::default(),
    }
}

/// kdc's pooled output against the numpy BERT, largest absolute difference.
fn pooled_difference(
    folder: &str,
    layers: Vec<usize>,
    hidden: usize,
    pooling: Pooling,
    trainable: Trainable,
) -> f64 {
    pooled_difference_in(folder, layers, hidden, (pooling, trainable), Precision::F32)
}

/// [`pooled_difference`] for a model computing in `precision`.
fn pooled_difference_in(
    folder: &str,
    layers: Vec<usize>,
    hidden: usize,
    (pooling, trainable): (Pooling, Trainable),
    precision: Precision,
) -> f64 {
    let texts = mails(6);
    let max_len = 48;
    let ids = tokenize(&texts, max_len);
    let mut spec = bert_spec(folder, layers.clone(), hidden, pooling);
    spec.bert.as_mut().unwrap().trainable = trainable;
    spec.precision = precision;
    let mut model = Model::from_bert(&spec, &root().join(folder), 1, None).unwrap();
    model.set_pad_id(0);
    let x = Tensor::from_vec(
        ids.iter().map(|&i| i as f32).collect::<Vec<_>>(),
        (texts.len(), max_len),
        &Device::Cpu,
    )
    .unwrap();
    let outputs = model.forward(&x, false).unwrap();
    let pooled = &outputs.iter().find(|(p, _)| p == "pooled").unwrap().1;
    let got = pooled.to_vec2::<f32>().unwrap();
    let expected = reference(serde_json::json!({
        "tokenizer": "tests/text/tokenizer.json", "max_len": max_len, "texts": texts,
        "checkpoint": folder, "layers": layers,
        "pooling": if pooling == Pooling::Cls { "cls" } else { "mean" },
    }));
    let mut worst = 0f64;
    for (row, want) in got.iter().zip(expected["pooled"].as_array().unwrap()) {
        for (g, w) in row.iter().zip(want.as_array().unwrap()) {
            worst = worst.max((f64::from(*g) - w.as_f64().unwrap()).abs());
        }
    }
    worst
}

#[test]
fn a_tiny_bert_and_its_layer_subsets_match_a_numpy_bert() {
    // Frozen (candle-transformers' model) and trainable (kdc's differentiable copy).
    for (layers, pooling, trainable) in [
        (vec![0, 1, 2, 3], Pooling::Mean, Trainable::Head),
        (vec![0, 2], Pooling::Cls, Trainable::Head),
        (vec![1, 3], Pooling::Mean, Trainable::Head),
        (vec![0, 1, 2, 3], Pooling::Mean, Trainable::All),
        (vec![0, 2], Pooling::Cls, Trainable::Last(1)),
    ] {
        // On kdc's kernels, and composed from candle's ops as on a GPU (docs/cuda.md).
        for kernels in [true, false] {
            kd_runtime::ops::set_cpu_kernels(kernels);
            let worst = pooled_difference("tests/bert/tiny", layers.clone(), 8, pooling, trainable);
            kd_runtime::ops::set_cpu_kernels(true);
            assert!(
                worst < 1e-4,
                "layers {layers:?}, {trainable:?}, kernels {kernels}: differs by {worst}"
            );
        }
    }
}

/// `precision: bf16`: the frozen encoder holds bf16 weights, a trained one f32 master
/// weights cast in each forward; either way its pooled output follows the numpy BERT to
/// bf16's rounding (8 significant bits, through four layers).
#[test]
fn a_bf16_bert_follows_the_numpy_bert() {
    for (layers, pooling, trainable) in [
        (vec![0, 1, 2, 3], Pooling::Mean, Trainable::Head),
        (vec![0, 2], Pooling::Cls, Trainable::All),
    ] {
        let worst = pooled_difference_in(
            "tests/bert/tiny",
            layers.clone(),
            8,
            (pooling, trainable),
            Precision::Bf16,
        );
        assert!(
            worst < 0.05,
            "layers {layers:?}, {trainable:?} in bf16: differs by {worst}"
        );
        assert!(worst > 1e-5, "bf16 must round somewhere: {worst}");
    }
}

#[test]
fn minilm_matches_a_numpy_bert() {
    fetch(&["minilm"]);
    let worst = pooled_difference(
        "data/minilm",
        (0..6).collect(),
        384,
        Pooling::Mean,
        Trainable::Head,
    );
    assert!(worst < 1e-4, "MiniLM differs by {worst}");
    let worst = pooled_difference(
        "data/minilm",
        vec![0, 2, 4],
        384,
        Pooling::Cls,
        Trainable::All,
    );
    assert!(
        worst < 1e-4,
        "MiniLM's every other layer, trainable, differs by {worst}"
    );
}

#[test]
fn every_trained_bert_parameter_gets_a_gradient() {
    for (trainable, precision) in [
        (Trainable::Last(1), Precision::F32),
        (Trainable::All, Precision::F32),
        (Trainable::All, Precision::Bf16),
    ] {
        let mut spec = bert_spec("tests/bert/tiny", vec![0, 2], 8, Pooling::Mean);
        spec.bert.as_mut().unwrap().trainable = trainable;
        spec.precision = precision;
        let mut model = Model::from_bert(&spec, &root().join("tests/bert/tiny"), 1, None).unwrap();
        model.set_pad_id(0);
        let ids = tokenize(&mails(4), 16);
        let x = Tensor::from_vec(
            ids.iter().map(|&i| i as f32).collect::<Vec<_>>(),
            (4, 16),
            &Device::Cpu,
        )
        .unwrap();
        let out = model.forward(&x, true).unwrap();
        let logits = &out.iter().find(|(p, _)| p == "logits").unwrap().1;
        let grads = model
            .backward(&logits.sqr().unwrap().sum_all().unwrap())
            .unwrap();
        let expected = match trainable {
            Trainable::Last(1) => 16 + 2,
            _ => 5 + 2 * 16 + 2,
        };
        assert_eq!(model.params().len(), expected, "{trainable:?}");
        for (name, var) in model.params() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{trainable:?}: no gradient for {name}"));
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{trainable:?}: zero gradient for {name}");
            assert_eq!(grad.dtype(), DType::F32, "{precision:?}: {name}'s gradient");
        }
    }
}

fn kdc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn run(file: &Path, out: &Path) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(out);
    let output = kdc(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    valid_summary(out)
}

fn stage<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-text-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn text_students_train_distil_and_count_their_teacher() {
    let dir = scratch("students");
    let summary = run(
        &root().join("tests/cases/ok/text_students.kd"),
        &dir.join("run"),
    );
    // 100 e-mails: train 60. A cached teacher runs once per distinct sample; an augmented
    // stage runs it on every sample of every epoch; a stage without it, never.
    assert_eq!(stage(&summary, "teach")["teacher_forwards"], 0);
    assert_eq!(stage(&summary, "distill")["teacher_forwards"], 60);
    assert_eq!(
        stage(&summary, "distill_transformer")["teacher_forwards"],
        120
    );
    for model in ["t", "s", "r"] {
        let m = &summary["models"][model];
        assert!(
            m["metrics"]["test"]["accuracy"].as_f64().is_some(),
            "{model}"
        );
        assert!(m["latency_ms"].as_f64().unwrap() > 0.0, "{model}");
    }
    let names = tensor_names(&dir.join("run/student.safetensors"));
    assert!(
        names.contains(&"embedding1.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| !n.contains("project")),
        "a projection was exported: {names:?}"
    );
}

#[test]
fn a_frozen_bert_encoder_runs_once_per_sample_and_disk_caching_skips_it_next_time() {
    let dir = scratch("bert");
    let summary = run(
        &root().join("tests/cases/ok/bert_students.kd"),
        &dir.join("run"),
    );
    // Three stages and an evaluation read the teacher; its encoder saw each distinct
    // sample once: the 100 e-mails cut to 48 tokens, less the rows that came out the same.
    let ids = tokenize(&mails(100), 48);
    let distinct: std::collections::HashSet<&[u32]> = ids.chunks(48).collect();
    assert!(
        distinct.len() > 90 && distinct.len() < 100,
        "{}",
        distinct.len()
    );
    assert_eq!(summary["models"]["t"]["encoder_forwards"], distinct.len());
    let exported = tensor_names(&dir.join("run/student.safetensors"));
    assert!(exported.contains(&"encoder.layer.1.output.dense.weight".to_string()));
    assert!(
        !exported.iter().any(|n| n.contains("encoder.layer.2.")),
        "two layers kept"
    );
    assert!(exported.contains(&"head.weight".to_string()));
    // `layers: [0, 2], trainable: last(1)`: the student's layer 0 is the checkpoint's
    // layer 0, untouched; its layer 1 started as the checkpoint's layer 2 and trained.
    let checkpoint = candle_core::safetensors::load(
        root().join("tests/bert/tiny/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let student =
        candle_core::safetensors::load(dir.join("run/student.safetensors"), &Device::Cpu).unwrap();
    let same = |a: &str, b: &str| {
        let (a, b) = (&student[a], &checkpoint[b]);
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    };
    let dense = "output.dense.weight";
    assert!(same(
        &format!("encoder.layer.0.{dense}"),
        &format!("encoder.layer.0.{dense}")
    ));
    assert!(same(
        "embeddings.word_embeddings.weight",
        "embeddings.word_embeddings.weight"
    ));
    assert!(!same(
        &format!("encoder.layer.1.{dense}"),
        &format!("encoder.layer.2.{dense}")
    ));

    // The same pipeline with `cache: disk`, twice: the second run computes nothing.
    let source = std::fs::read_to_string(root().join("tests/cases/ok/bert_students.kd"))
        .unwrap()
        .replace(
            "cache: memory",
            &format!("cache: disk, output: \"{}\"", dir.join("runs").display()),
        )
        .replace("../../", &format!("{}/tests/", root().display()));
    let file = dir.join("disk.kd");
    std::fs::write(&file, source).unwrap();
    let first = run(&file, &dir.join("runs/first"));
    assert_eq!(first["models"]["t"]["encoder_forwards"], distinct.len());
    let cached: Vec<String> = std::fs::read_dir(dir.join("runs/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    // One encoder cache for the checkpoint, one output table per cached distillation stage
    // (the two stages' teachers are the same model with the same weights on the same
    // split, so they share it).
    assert_eq!(
        cached.iter().filter(|n| n.starts_with("bert-")).count(),
        1,
        "{cached:?}"
    );
    assert_eq!(
        cached.iter().filter(|n| n.starts_with("outputs-")).count(),
        1,
        "{cached:?}"
    );
    let second = run(&file, &dir.join("runs/second"));
    assert_eq!(second["models"]["t"]["encoder_forwards"], 0);
    // The teacher's outputs on the train split went to disk when `shrink` ended: `small`
    // (the same teacher, weights and split) and every later run read them from there.
    assert_eq!(stage(&first, "shrink")["teacher_forwards"], 70);
    assert_eq!(stage(&first, "small")["teacher_forwards"], 0);
    assert_eq!(stage(&second, "shrink")["teacher_forwards"], 0);
    assert_eq!(stage(&second, "small")["teacher_forwards"], 0);
    assert_eq!(
        first["models"]["t"]["metrics"], second["models"]["t"]["metrics"],
        "cached outputs are the outputs"
    );
}

#[test]
fn every_text_layout_gives_the_same_samples() {
    // tests/text/mail.jsonl rewritten as JSON, CSV, TSV and one folder per label.
    let dir = scratch("layouts");
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(root().join("tests/text/mail.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    std::fs::write(
        dir.join("mail.json"),
        serde_json::to_string(&records).unwrap(),
    )
    .unwrap();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut csv = String::from("label,text\n");
    let mut tsv = String::from("text\tlabel\n");
    for (i, r) in records.iter().enumerate() {
        let (text, label) = (r["text"].as_str().unwrap(), r["label"].as_str().unwrap());
        csv.push_str(&format!("{label},{}\n", quote(text)));
        tsv.push_str(&format!("{}\t{label}\n", quote(text)));
        let folder = dir.join("folders").join(label);
        std::fs::create_dir_all(&folder).unwrap();
        // Names that sort in the original order within each label.
        std::fs::write(folder.join(format!("{i:04}.txt")), text).unwrap();
    }
    std::fs::write(dir.join("mail.csv"), csv).unwrap();
    std::fs::write(dir.join("mail.tsv"), tsv).unwrap();
    std::fs::copy(root().join("tests/text/mail.jsonl"), dir.join("mail.jsonl")).unwrap();
    let tokenizer = root().join("tests/text/tokenizer.json");

    let load = |path: &str| {
        let source = format!(
            "data mail = text(\"{path}\") {{ classes: [\"ham\", \"spam\"], tokenizer: \"{}\", max_len: 24 }}",
            tokenizer.display()
        );
        let file = dir.join("layout.kd");
        let plan = kd_compiler::compile(&source, &file, &[])
            .unwrap_or_else(|e| panic!("{path}: {e:?}"))
            .plan;
        let spec = plan.data("mail").unwrap();
        let dataset = kd_runtime::data::Dataset::load(spec, &dir, 1).unwrap();
        let samples = match &dataset.train.samples {
            kd_runtime::data::Samples::F32(v) => v.clone(),
            kd_runtime::data::Samples::U8(_) => panic!("token ids are f32"),
        };
        // Pair each sample with its label, in a canonical order (folders group by label).
        let mut rows: Vec<(u32, Vec<u32>)> = samples
            .chunks(24)
            .zip(&dataset.train.labels)
            .map(|(s, &l)| (l, s.iter().map(|&v| v as u32).collect()))
            .collect();
        rows.sort();
        rows
    };
    let reference = load("mail.jsonl");
    assert_eq!(reference.len(), 100);
    for path in ["mail.json", "mail.csv", "mail.tsv", "folders"] {
        assert_eq!(load(path), reference, "{path}");
    }
}
