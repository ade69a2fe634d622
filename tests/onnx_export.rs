//! kdc's ONNX exports: onnx's full checker accepts them, onnxruntime computes what kdc
//! computes (within 1e-4, on real digits), and kdc loads its own export back as a teacher
//! that predicts what the exported student predicted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

use common::{python, root};

fn kdc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn an_onnx_export_runs_in_onnxruntime_and_back_in_kdc() {
    let base = std::env::temp_dir().join(format!("kdc-onnx-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let run = base.join("run");
    let output = kdc(&[
        "run",
        "tests/onnx/export.kd",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // onnxruntime on the first 100 digits.
    let ort = base.join("ort.json");
    let status = Command::new(python())
        .args([
            root().join("tests/onnx/run_export.py").to_str().unwrap(),
            run.join("student.onnx").to_str().unwrap(),
            "100",
            ort.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let ort: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ort).unwrap()).unwrap();

    // kdc's own forward of the trained student on the same inputs.
    let source = std::fs::read_to_string(root().join("tests/onnx/export.kd")).unwrap();
    let plan = kd_compiler::compile(&source, &root().join("tests/onnx/export.kd"), &[])
        .unwrap()
        .plan;
    let spec = plan.model("s").unwrap();
    let mut model = kd_runtime::model::Model::new(spec, 0).unwrap();
    model
        .load_weights(&run.join("student.safetensors"))
        .unwrap();
    let inputs = rows(&ort["inputs"]);
    let x = Tensor::from_vec(inputs.concat(), (inputs.len(), 1, 8, 8), &Device::Cpu).unwrap();
    let ours = model.forward(&x, false).unwrap();
    let ours = ours
        .iter()
        .find(|(p, _)| p == "output")
        .unwrap()
        .1
        .to_vec2::<f32>()
        .unwrap();
    let theirs = rows(&ort["outputs"]);
    assert_eq!(ours.len(), theirs.len());
    let difference = ours
        .iter()
        .flatten()
        .zip(theirs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        difference < 1e-4,
        "onnxruntime differs from kdc by {difference}"
    );

    // kdc loads its export as a teacher: the same predictions on the same test split.
    let reload = base.join("reload.kd");
    let data = root().join("examples/data/digits.csv.gz");
    std::fs::write(
        &reload,
        format!(
            r#"pipeline export {{ seed: 5 }}
data digits = csv("{}") {{
  header: false, label: 64, shape: [1, 8, 8], scale: 16, normalize: none
  split {{ train: 0.7, test: 0.3 }}
}}
teacher t = onnx("run/student.onnx") {{ input "input", output "output" }}
evaluate t on digits.test {{ accuracy }}
"#,
            data.display()
        ),
    )
    .unwrap();
    let again = base.join("again");
    let output = kdc(&[
        "run",
        reload.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exported = &summary(&run)["models"]["s"]["metrics"]["test"];
    let reloaded = &summary(&again)["models"]["t"]["metrics"]["test"];
    assert_eq!(exported["n"], reloaded["n"]);
    assert_eq!(exported["confusion"], reloaded["confusion"]);
    // The file's initializers also hold the batch-norm statistics (2 x (6 + 8)) and GELU's
    // three constants.
    let params = |s: &serde_json::Value, m: &str| s["models"][m]["params"].as_u64().unwrap();
    assert_eq!(
        params(&summary(&again), "t"),
        params(&summary(&run), "s") + 2 * (6 + 8) + 3
    );
}

/// A JSON array of arrays of numbers (run_export.py's inputs and outputs) as f32 rows.
fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Runs `file` (a .kd of tests/onnx) into a fresh run folder; returns the folder.
fn run_pipeline(file: &str, tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = std::env::temp_dir().join(format!("kdc-onnx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let run = base.join("run");
    let output = kdc(&["run", file, "--out", run.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (base, run)
}

/// The first `n` e-mails of tests/text/mail.jsonl and some short texts, tokenised as the
/// pipelines do (truncated or padded to `len`): the ids, `[rows, len]` as f32 for kdc.
fn token_batch(n: usize, short: &[&str], len: usize) -> (Vec<u32>, Tensor) {
    let mut texts: Vec<String> = std::fs::read_to_string(root().join("tests/text/mail.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    texts.extend(short.iter().map(|s| s.to_string()));
    let ids = kd_runtime::data::text::tokenize(
        &root().join("tests/text/tokenizer.json"),
        texts.iter().map(String::as_str),
        len,
        0,
    )
    .unwrap();
    let x = Tensor::from_vec(
        ids.iter().map(|&i| i as f32).collect::<Vec<_>>(),
        (texts.len(), len),
        &Device::Cpu,
    )
    .unwrap();
    (ids, x)
}

/// onnxruntime's `output` for each ONNX file on int64 `input_ids` (tests/onnx/run_text_export.py,
/// which also runs onnx's full checker), by file.
fn onnxruntime_outputs(
    base: &Path,
    ids: &[u32],
    len: usize,
    files: &[std::path::PathBuf],
) -> serde_json::Value {
    let rows: Vec<Vec<u32>> = ids.chunks(len).map(<[u32]>::to_vec).collect();
    let request = base.join("ids.json");
    std::fs::write(&request, serde_json::json!({ "ids": rows }).to_string()).unwrap();
    let answer = base.join("ort.json");
    let mut args = vec![
        root()
            .join("tests/onnx/run_text_export.py")
            .display()
            .to_string(),
        request.display().to_string(),
        answer.display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let status = Command::new(python()).args(&args).status().unwrap();
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(&answer).unwrap()).unwrap()
}

/// The largest difference between kdc's `output` for `x` and onnxruntime's for `file`.
fn worst_difference(
    model: &mut kd_runtime::model::Model,
    x: &Tensor,
    ort: &serde_json::Value,
    file: &Path,
) -> f32 {
    let ours = model.forward(x, false).unwrap();
    let ours = ours
        .iter()
        .find(|(p, _)| p == "output")
        .unwrap()
        .1
        .to_vec2::<f32>()
        .unwrap();
    let theirs = ort[file.display().to_string()].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .flatten()
        .zip(theirs.iter().flat_map(|r| r.as_array().unwrap()))
        .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
        .fold(0.0, f32::max)
}

#[test]
fn text_models_export_to_onnx_and_run_in_onnxruntime() {
    let (base, run) = run_pipeline("tests/onnx/text_export.kd", "text");
    // 26 real e-mails (longer than 40 tokens) and 4 short texts.
    let short = [
        "Hello, world!",
        "",
        "Win a FREE cruise now, reply today",
        "see you at the meeting",
    ];
    let (ids, x) = token_batch(26, &short, 40);
    assert!(ids.contains(&0), "some rows are padded");
    let models = [("c", "cnn"), ("r", "rnn"), ("e", "encoder")];
    let files: Vec<_> = models
        .iter()
        .map(|(_, f)| run.join(format!("{f}.onnx")))
        .collect();
    let ort = onnxruntime_outputs(&base, &ids, 40, &files);

    let source = std::fs::read_to_string(root().join("tests/onnx/text_export.kd")).unwrap();
    let plan = kd_compiler::compile(&source, &root().join("tests/onnx/text_export.kd"), &[])
        .unwrap()
        .plan;
    for ((name, file), onnx) in models.iter().zip(&files) {
        let mut model = kd_runtime::model::Model::new(plan.model(name).unwrap(), 0).unwrap();
        model
            .load_weights(&run.join(format!("{file}.safetensors")))
            .unwrap();
        model.set_pad_id(0);
        let worst = worst_difference(&mut model, &x, &ort, onnx);
        assert!(
            worst < 1e-4,
            "{file}: onnxruntime differs from kdc by {worst}"
        );
    }
}

#[test]
fn bert_models_export_to_onnx_and_run_in_onnxruntime() {
    let (base, run) = run_pipeline("tests/onnx/bert_export.kd", "bert");
    let (ids, x) = token_batch(12, &["see you at the meeting"], 40);
    let files: Vec<_> = ["teacher", "student"]
        .iter()
        .map(|f| run.join(format!("{f}.onnx")))
        .collect();
    let ort = onnxruntime_outputs(&base, &ids, 40, &files);

    // kdc's forward of the exported weights: a model of the same spec started from them.
    let source = std::fs::read_to_string(root().join("tests/onnx/bert_export.kd")).unwrap();
    let plan = kd_compiler::compile(&source, &root().join("tests/onnx/bert_export.kd"), &[])
        .unwrap()
        .plan;
    for ((name, file), onnx) in [("t", "teacher"), ("s", "student")].iter().zip(&files) {
        let mut spec = plan.model(name).unwrap().clone();
        // The export holds every tensor under the model's own layer numbers: a checkpoint
        // of exactly those layers.
        let folder = base.join(format!("{file}-checkpoint"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(
            run.join(format!("{file}.safetensors")),
            folder.join("model.safetensors"),
        )
        .unwrap();
        let mut config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("tests/bert/tiny/config.json")).unwrap(),
        )
        .unwrap();
        let kept = spec.bert.as_ref().unwrap().layers.len();
        config["num_hidden_layers"] = kept.into();
        std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
        let bert = spec.bert.as_mut().unwrap();
        bert.layers = (0..kept).collect();
        bert.trainable = kd_plan::Trainable::All;
        let mut model = kd_runtime::model::Model::from_bert(&spec, &folder, 0, None).unwrap();
        // The head comes from the export too.
        model
            .load_weights(&run.join(format!("{file}.safetensors")))
            .unwrap();
        model.set_pad_id(0);
        let worst = worst_difference(&mut model, &x, &ort, onnx);
        assert!(
            worst < 1e-4,
            "{file}: onnxruntime differs from kdc by {worst}"
        );
    }
}

#[test]
fn an_int8_export_runs_in_onnxruntime_and_predicts_what_kdcs_int8_model_predicts() {
    let (base, run) = run_pipeline("tests/onnx/int8.kd", "int8");
    // onnxruntime (after onnx's full checker) on every digit of the file.
    let ort = base.join("ort.json");
    let status = Command::new(python())
        .args([
            root().join("tests/onnx/run_export.py").to_str().unwrap(),
            run.join("int8.onnx").to_str().unwrap(),
            "1797",
            ort.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let ort: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ort).unwrap()).unwrap();

    // kdc's int8 model as the run made it: the trained student, calibrated on the
    // training split.
    let file = root().join("tests/onnx/int8.kd");
    let source = std::fs::read_to_string(&file).unwrap();
    let plan = kd_compiler::compile(&source, &file, &[]).unwrap().plan;
    let seed = plan.settings.seed;
    let student = kd_runtime::model::Model::new(plan.model("s").unwrap(), seed).unwrap();
    student
        .load_weights(&run.join("student.safetensors"))
        .unwrap();
    let data =
        kd_runtime::data::Dataset::load(plan.data("digits").unwrap(), &plan.source.base_dir, seed)
            .unwrap();
    let train = data.split("train").unwrap();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    // The run's calibration sample: 1,024 of the split, drawn for `q` from the seed.
    let mut positions = kd_runtime::data::epoch_order(seed, "calibrate/q", train.len());
    positions.truncate(1024);
    data.fill_batch(train, &positions, &mut x, &mut labels)
        .unwrap();
    let calibration = Tensor::from_vec(x, (positions.len(), 1, 8, 8), &Device::Cpu).unwrap();
    let mut int8 = kd_runtime::model::Model::new(plan.model("q").unwrap(), seed).unwrap();
    int8.take_weights(&student).unwrap();
    int8.quantize(&[calibration]).unwrap();
    assert!(int8.is_int8());

    let inputs = rows(&ort["inputs"]);
    let x = Tensor::from_vec(inputs.concat(), (inputs.len(), 1, 8, 8), &Device::Cpu).unwrap();
    let ours = int8.forward(&x, false).unwrap();
    let ours = ours
        .iter()
        .find(|(p, _)| p == "output")
        .unwrap()
        .1
        .to_vec2::<f32>()
        .unwrap();
    let theirs = rows(&ort["outputs"]);
    let argmax = |r: &Vec<f32>| {
        r.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let agree = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    // The issue's bar: the same predictions on at least 99.9% of the samples.
    assert!(
        agree as f64 >= 0.999 * ours.len() as f64,
        "onnxruntime agrees with kdc's int8 model on {agree} of {}",
        ours.len()
    );
    // onnxruntime computes the QDQ graph in float, its sums in the order its kernels for
    // this CPU take (kdc's int8 sums are exact): a hidden value within a rounding of a
    // quantisation boundary can fall on the other side there, and that sample's outputs
    // move by about one int8 step of the next layer (2 samples of 1,797, by 0.0195, on an
    // AVX2-only EPYC; none on the machine this test was first run on). Every other sample
    // agrees to float precision, where the f32 model is 0.13 away.
    let per_sample: Vec<f32> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        })
        .collect();
    assert!(
        ours.iter().chain(&theirs).flatten().all(|v| v.is_finite()),
        "an output is not finite"
    );
    let off = per_sample.iter().filter(|d| **d >= 1e-4).count();
    let worst = per_sample.iter().copied().fold(0.0f32, f32::max);
    assert!(
        off * 200 <= per_sample.len(),
        "onnxruntime differs from kdc by 1e-4 or more on {off} of {} samples",
        per_sample.len()
    );
    assert!(
        worst < 0.05,
        "onnxruntime differs by {worst}: more than a step"
    );

    // The int8 safetensors: int8 weights with their scales, a quarter of the f32 bytes.
    let bytes = std::fs::read(run.join("int8.safetensors")).unwrap();
    let file = safetensors_header(&bytes);
    assert_eq!(file["conv1.weight"]["dtype"], "I8");
    assert_eq!(file["residual1.shortcut.weight"]["dtype"], "I8");
    assert_eq!(file["linear2.weight"]["dtype"], "I8");
    assert_eq!(
        file["linear1.weight_scale"]["shape"],
        serde_json::json!([24])
    );
    assert_eq!(file["linear1.input_scale"]["dtype"], "F32");
    assert_eq!(file["bn1.running_var"]["dtype"], "F32");
    let f32_bytes = std::fs::metadata(run.join("student.safetensors"))
        .unwrap()
        .len();
    assert!(
        (bytes.len() as u64) < f32_bytes / 2,
        "{} vs {f32_bytes}",
        bytes.len()
    );
    let summary = summary(&run);
    assert_eq!(summary["models"]["q"]["precision"], "int8");
    assert_eq!(summary["models"]["q"]["quantized_from"], "s");
    let _ = std::fs::remove_dir_all(&base);
}

/// A safetensors file's JSON header.
fn safetensors_header(bytes: &[u8]) -> serde_json::Value {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).unwrap()
}
