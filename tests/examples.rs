//! The example pipelines that train on MNIST and on SpamAssassin, each run end to end,
//! shortened (their full runs are recorded in docs/results.md). The tests fetch their data
//! (and the MiniLM teacher) themselves with the project's pinned, checksummed script:
//! missing data fails a test, never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fetch, root, valid_summary};

fn run(example: &str, out: &Path, set: &[&str]) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(out);
    let mut args = vec![
        "run".to_string(),
        format!("examples/{example}"),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in set {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let o = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{example}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    valid_summary(out)
}

fn accuracy(summary: &serde_json::Value, model: &str) -> f64 {
    summary["models"][model]["metrics"]["test"]["accuracy"]
        .as_f64()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kdc-examples-{}-{name}", std::process::id()))
}

#[test]
fn mnist_hinton_runs_shortened() {
    fetch(&["mnist"]);
    let s = run(
        "mnist_hinton.kd",
        &scratch("hinton"),
        &[
            "data.mnist.limit=3000",
            "stage.teach.epochs=1",
            "stage.distill.epochs=1",
        ],
    );
    // 3,000 images and one epoch per stage: far from the full run, yet far above chance
    // (0.1). At T = 20 one epoch teaches the student least (about 0.69 here).
    for model in ["t", "s", "scratch"] {
        assert!(
            accuracy(&s, model) > 0.5,
            "{model}: {}",
            accuracy(&s, model)
        );
    }
    assert_eq!(s["models"]["t"]["metrics"]["test"]["n"], 3000);
}

#[test]
fn seed_dense_runs_shortened() {
    fetch(&["mnist"]);
    let s = run(
        "seed_dense.kd",
        &scratch("seed-dense"),
        &[
            "data.digits.limit=5000",
            "stage.teach.epochs=1",
            "stage.fit.epochs=1",
        ],
    );
    // Two classes (digits 0-4 against 5-9): a single dense layer gets most of them.
    for model in ["t", "s", "scratch"] {
        assert!(
            accuracy(&s, model) > 0.75,
            "{model}: {}",
            accuracy(&s, model)
        );
    }
    assert_eq!(
        s["models"]["s"]["metrics"]["test"]["per_class"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn mnist_cnn_runs_shortened() {
    fetch(&["mnist"]);
    let s = run(
        "mnist_cnn.kd",
        &scratch("cnn"),
        &[
            "data.mnist.limit=2000",
            "stage.teach.epochs=1",
            "stage.distill.epochs=2",
        ],
    );
    for model in ["t", "s", "scratch"] {
        assert!(
            accuracy(&s, model) > 0.5,
            "{model}: {}",
            accuracy(&s, model)
        );
    }
    // The distill stage reads plain batches, so the frozen teacher's outputs are cached:
    // it ran once per training sample (1,833 of them) over the stage's two epochs. The
    // counts come from the executor; stages without a frozen teacher count none.
    let forwards = |name: &str| {
        s["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == name)
            .unwrap()["teacher_forwards"]
            .clone()
    };
    assert_eq!(forwards("distill"), 1833);
    assert_eq!(forwards("teach"), 0);
    assert_eq!(forwards("scratch/distill"), 0);
}

#[test]
fn mnist_compress_runs_shortened() {
    fetch(&["mnist"]);
    let out = scratch("compress");
    let s = run(
        "mnist_compress.kd",
        &out,
        &[
            "data.mnist.limit=2000",
            "stage.teach.epochs=1",
            "stage.distill.epochs=1",
            "stage.recover.epochs=1",
        ],
    );
    for model in ["t", "s", "pruned", "int8", "qat"] {
        assert!(
            accuracy(&s, model) > 0.3,
            "{model}: {}",
            accuracy(&s, model)
        );
    }
    let models = &s["models"];
    // Half of the student's neurons and channels go: 80,298 -> 20,570 parameters.
    assert_eq!(models["s"]["params"], 80298);
    assert_eq!(models["pruned"]["params"], 20570);
    assert_eq!(models["int8"]["precision"], "int8");
    assert_eq!(models["qat"]["precision"], "int8");
    assert_eq!(models["qat"]["quantization"], "aware");
    // int8 computes what the pruned model computes, give or take its rounding.
    let gap = (accuracy(&s, "int8") - accuracy(&s, "pruned")).abs();
    assert!(
        gap < 0.02,
        "int8 {} pruned {}",
        accuracy(&s, "int8"),
        accuracy(&s, "pruned")
    );
    let bytes = |m: &str, f: &str| models[m]["files"][f].as_u64().unwrap();
    // The bar: at least 4x smaller than the distilled float student (13.8x here).
    assert!(4 * bytes("int8", "int8.safetensors") < bytes("s", "student.safetensors"));
    assert!(3 * bytes("int8", "int8.safetensors") < bytes("pruned", "pruned.safetensors"));
    assert!(bytes("pruned", "pruned.onnx") < bytes("s", "student.onnx") / 3);
    let _ = std::fs::remove_dir_all(&out);
}

/// examples/mnist_png.kd, MNIST from 70,000 PNG files, one epoch a stage (about 10 s
/// here; `limit` would keep the first classes' folders only): the three models learn, and
/// the test part (the `test:` folder's 10,000 images) is evaluated.
#[test]
fn mnist_png_runs_shortened() {
    fetch(&["mnist-png"]);
    let s = run(
        "mnist_png.kd",
        &scratch("png"),
        &["stage.teach.epochs=1", "stage.distill.epochs=1"],
    );
    for model in ["t", "s", "scratch"] {
        assert!(
            accuracy(&s, model) > 0.9,
            "{model}: {}",
            accuracy(&s, model)
        );
    }
}

/// examples/digits_transfer.kd, one seed, fewer epochs: the transfer stage (soft targets
/// alone) runs the teacher once per transfer sample, its inputs being unaugmented, and the
/// baseline trains on the 180 labelled digits without a teacher (the full run, five seeds,
/// is in docs/results.md).
#[test]
fn digits_transfer_runs_shortened() {
    let out = scratch("digits_transfer");
    let summary = run(
        "digits_transfer.kd",
        &out,
        &[
            "pipeline.digits.repeat=1",
            "stage.teach.epochs=30",
            "stage.labels.epochs=10",
            "stage.transfer.epochs=5",
        ],
    );
    let stages = summary["stages"].as_array().unwrap();
    let stage = |name: &str| stages.iter().find(|s| s["name"] == name).unwrap();
    let forwards = |name: &str| stage(name)["teacher_forwards"].as_u64().unwrap();
    // 1,797 digits: 180 labelled, 899 in the transfer split. The teacher's outputs on
    // unaugmented inputs are cached: one forward per sample, whatever the epochs.
    assert_eq!(forwards("teach"), 0);
    assert_eq!(forwards("labels"), 180);
    assert_eq!(forwards("transfer"), 899);
    assert_eq!(forwards("scratch/labels"), 0, "the baseline has no teacher");
    for model in ["t", "s", "scratch"] {
        let a = accuracy(&summary, model);
        assert!(a > 0.5, "{model}: {a}");
    }
}

/// examples/spam_minilm.kd on the whole corpus with the real MiniLM, cut to 32 tokens per
/// e-mail and 4 teacher and 3 student epochs so it fits the test suite (about 3 minutes on
/// 2 cores; the full run is in docs/results.md).
#[test]
fn spam_minilm_runs_shortened() {
    fetch(&["spam", "minilm"]);
    let dir = scratch("spam_minilm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = std::fs::read_to_string(root().join("examples/spam_minilm.kd"))
        .unwrap()
        .replace("\"../data/", &format!("\"{}/data/", root().display()))
        .replace("max_len: 128", "max_len: 32")
        .replace("tokens[128]", "tokens[32]")
        .replace("epochs 40", "epochs 4")
        .replace("epochs 12", "epochs 3");
    let file = dir.join("spam_short.kd");
    std::fs::write(&file, source).unwrap();
    let out = dir.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = valid_summary(&out);

    let models = &summary["models"];
    let params = |m: &str| models[m]["params"].as_u64().unwrap();
    assert_eq!(params("t"), 22_566_146, "MiniLM-L6 and a 2-way head");
    assert!(
        params("t") >= 20 * params("s"),
        "{} vs {}",
        params("t"),
        params("s")
    );
    // 6,046 e-mails, 4,232 of them in the train split. The encoder ran once per distinct
    // sample at most (identical 32-token rows share an entry); the distillation stage's
    // teacher once per train sample; the head's own stage and the baseline never.
    let encoder = models["t"]["encoder_forwards"].as_u64().unwrap();
    assert!((5_000..=6_046).contains(&encoder), "{encoder}");
    let stages = summary["stages"].as_array().unwrap();
    let forwards = |name: &str| {
        stages.iter().find(|s| s["name"] == name).unwrap()["teacher_forwards"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(forwards("teach"), 0);
    assert_eq!(forwards("distill"), 4_232);
    assert_eq!(forwards("scratch/distill"), 0);
    assert!(
        models["t"]["latency_ms"].as_f64().unwrap() > models["s"]["latency_ms"].as_f64().unwrap()
    );
    for m in ["t", "s", "scratch"] {
        assert!(
            accuracy(&summary, m) > 0.8,
            "{m}: {}",
            accuracy(&summary, m)
        );
    }
    assert!(out.join("student.onnx").is_file());
}
