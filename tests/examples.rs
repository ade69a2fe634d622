//! The example pipelines that train on MNIST, each run end to end, shortened with `--set`
//! (their full runs are recorded in docs/results.md). The test fetches MNIST itself with
//! the project's pinned, checksummed script: missing data fails the test, never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "../runtime/tests/common/schema.rs"]
mod schema;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/fetch-data.sh mnist` once per test process (it is idempotent).
fn mnist() {
    static FETCHED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = FETCHED.get_or_init(|| {
        let o = Command::new("bash")
            .arg(root().join("scripts/fetch-data.sh"))
            .arg("mnist")
            .output()
            .map_err(|e| format!("cannot run the fetch script: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "fetch-data.sh mnist failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

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
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/summary.schema.json")).unwrap(),
    )
    .unwrap();
    let errors = schema::validate(&schema, &summary);
    assert!(
        errors.is_empty(),
        "{example}: summary.json does not follow its schema: {errors:#?}"
    );
    summary
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
    mnist();
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
    mnist();
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
    mnist();
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
