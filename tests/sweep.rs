//! `kdc run FILE --sweep NAME`: every configuration in its folder, the teacher trained
//! once, augmented teacher outputs shared between configurations that meet the same
//! batches, each configuration bitwise what a plain run with its values gives, the best
//! chosen on the validation split, and a killed sweep resumed without touching the
//! configurations it finished.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::root;
use serde_json::Value;

const FILE: &str = "tests/sweep/digits.kd";

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdc"));
    command.args(args).current_dir(root());
    command
}

fn kdc(args: &[&str]) -> Output {
    command(args).output().expect("kdc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-sweep-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One uninterrupted sweep, shared by the tests that only read it.
fn reference() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = scratch("reference").join("run");
        let o = kdc(&[
            "run",
            FILE,
            "--sweep",
            "tune",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains("sweep `tune` (grid, 4 configurations"),
            "{stdout}"
        );
        out
    })
}

/// The stages of a configuration's summary: name, seed, where it came from, forwards.
fn stages(summary: &Value) -> Vec<(String, u64, Option<String>, u64)> {
    summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["seed"].as_u64().unwrap(),
                s["shared_from"].as_str().map(String::from),
                s["teacher_forwards"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_teacher_trains_once_and_augmented_outputs_are_shared() {
    let run = reference();
    let train = 1078; // 60% of the 1,797 digits
    for (config, shared_teach, distill_forwards) in [
        // T=2, 2 epochs: computes everything.
        ("c01", false, 2 * train),
        // T=2, 4 epochs: its first two epochs meet c01's batches.
        ("c02", true, 2 * train),
        // T=4, 2 epochs: every batch is one c01 met.
        ("c03", true, 0),
        // T=4, 4 epochs: every batch is one c01 or c02 met.
        ("c04", true, 0),
    ] {
        let summary = json(&run.join(config).join("summary.json"));
        for (name, seed, from, forwards) in stages(&summary) {
            match name.as_str() {
                "teach" => {
                    assert_eq!(from.is_some(), shared_teach, "{config} seed {seed}");
                    if shared_teach {
                        assert_eq!(from.as_deref(), Some("c01"));
                    }
                }
                "distill" => {
                    assert_eq!(from, None);
                    assert_eq!(forwards, distill_forwards as u64, "{config} seed {seed}");
                }
                _ => assert_eq!(forwards, 0),
            }
        }
    }
    // The sweep's summary and a configuration's follow the schema.
    let top = common::valid_summary(run);
    common::valid_summary(&run.join("c02"));
    let sweep = &top["sweep"];
    // Without sharing: 2 + 4 + 2 + 4 epochs of teacher forwards per seed.
    assert_eq!(
        sweep["teacher_forwards"].as_u64().unwrap(),
        2 * 4 * train as u64
    );
    // The best has the highest validation score, the first of equals.
    let configs = sweep["configs"].as_array().unwrap();
    let scores: Vec<f64> = configs
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    let best = scores
        .iter()
        .enumerate()
        .fold(0, |b, (i, s)| if *s > scores[b] { i } else { b });
    assert_eq!(sweep["best"], configs[best]["name"]);
    // The summary's models are the best configuration's.
    let chosen = json(
        &run.join(configs[best]["name"].as_str().unwrap())
            .join("summary.json"),
    );
    assert_eq!(top["models"], chosen["models"]);
    assert!(configs[0]["baselines"]["scratch"].as_f64().is_some());
    assert_eq!(configs[3]["values"]["loss.hinton.T"], "4");
}

#[test]
fn each_configuration_is_bitwise_a_plain_run_with_its_values() {
    let run = reference();
    let out = scratch("plain").join("run");
    let o = kdc(&[
        "run",
        FILE,
        "--set",
        "loss.hinton.T=4",
        "--set",
        "stage.distill.epochs=4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for seed in ["seed-7", "seed-8"] {
        let plain = std::fs::read(out.join(seed).join("student.safetensors")).unwrap();
        let swept = std::fs::read(run.join("c04").join(seed).join("student.safetensors")).unwrap();
        assert!(plain == swept, "{seed}: the swept student differs");
    }
    let plain = json(&out.join("summary.json"));
    let swept = json(&run.join("c04").join("summary.json"));
    assert_eq!(
        plain["models"]["s"]["metrics"]["test"],
        swept["models"]["s"]["metrics"]["test"]
    );
}

#[test]
fn a_killed_sweep_resumes_and_leaves_finished_configurations_alone() {
    let out = scratch("killed").join("run");
    // A checkpoint every step makes the sweep slow enough to be killed in c03.
    let mut child = command(&[
        "run",
        FILE,
        "--sweep",
        "tune",
        "--set",
        "pipeline.sweep.checkpoint_every=1",
        "--out",
        out.to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    // Kill it once the second configuration has finished.
    while !out.join("c02/summary.json").exists() && child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "c02 never finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if out.join("summary.json").exists() {
        // The sweep won the race and finished: leave it as a kill after c02 would have.
        std::fs::remove_file(out.join("summary.json")).unwrap();
        std::fs::remove_dir_all(out.join("c03")).unwrap();
        std::fs::remove_dir_all(out.join("c04")).unwrap();
    }
    let kept = std::fs::read(out.join("c02/summary.json")).unwrap();
    let o = kdc(&[
        "run",
        "--resume",
        out.to_str().unwrap(),
        FILE,
        "--set",
        "pipeline.sweep.checkpoint_every=1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::read(out.join("c02/summary.json")).unwrap();
    assert!(after == kept, "the resumed sweep rewrote c02's summary");
    // The same choice and scores as the uninterrupted sweep.
    let resumed = json(&out.join("summary.json"));
    let reference = json(&reference().join("summary.json"));
    // (Its teacher forwards may be more: augmented outputs are shared in memory only.)
    assert_eq!(resumed["sweep"]["best"], reference["sweep"]["best"]);
    let scores = |v: &Value| -> Vec<Value> {
        v["sweep"]["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["score"].clone())
            .collect()
    };
    assert_eq!(scores(&resumed), scores(&reference));
    // A finished sweep has nothing to resume.
    let o = kdc(&["run", "--resume", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("kd::run::finished"), "{}", stderr(&o));
}

#[test]
fn an_unknown_sweep_and_a_bad_value_are_diagnostics() {
    let o = kdc(&["run", FILE, "--sweep", "tun", "--out", "/nonexistent/x"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("kd::sweep::unknown") && err.contains("did you mean `tune`?"),
        "{err}"
    );

    let dir = scratch("bad");
    let source = std::fs::read_to_string(root().join(FILE))
        .unwrap()
        .replace(
            "../../examples",
            &root().join("examples").display().to_string(),
        )
        .replace(
            "stage.distill.epochs in [2, 4]",
            "stage.distill.epochs in [2, \"four\"]",
        );
    let file = dir.join("bad.kd");
    std::fs::write(&file, source).unwrap();
    let o = kdc(&["check", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("epochs must be a number, found a string"),
        "{err}"
    );
    assert!(
        err.contains("stage.distill.epochs in [2, \"four\"]"),
        "{err}"
    );
}
