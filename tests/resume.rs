//! Runs that survive: a digits run killed with SIGKILL at arbitrary moments and resumed
//! each time, or stopped with Ctrl-C and resumed, ends bitwise where a run never
//! interrupted ends; a resume checks the pipeline; numeric guards name the term to blame.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdc"));
    command.args(args).current_dir(root());
    command
}

fn kdc(args: &[&str]) -> Output {
    command(args).output().expect("kdc runs")
}

fn spawn(args: &[&str]) -> Child {
    command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kdc starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh, empty folder for one test (the run folders go inside it).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The digits example cut short, with a checkpoint every 7 steps as well as every epoch,
/// so kills land between checkpoints of every kind.
const SHORT: &[&str] = &[
    "--set",
    "stage.teach.epochs=3",
    "--set",
    "stage.distill.epochs=3",
    "--set",
    "pipeline.digits.checkpoint_every=7",
];

fn digits_args(out: &Path) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "examples/digits.kd".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(SHORT.iter().map(|s| s.to_string()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// What must not change when a run is interrupted: every export byte for byte, the
/// summary without its timings, and metrics.jsonl and metrics.csv without their timings.
#[derive(Debug, PartialEq)]
struct Outcome {
    exports: Vec<(String, Vec<u8>)>,
    summary: serde_json::Value,
    metrics: Vec<serde_json::Value>,
    table: Vec<Vec<String>>,
}

/// Drops what measures this process rather than the results: its peak memory, stage times
/// and speeds, the
/// per-sample latency, and the BERT encoder's forward count (a resumed process refills its
/// in-memory cache).
fn untime(summary: &mut serde_json::Value) {
    summary.as_object_mut().unwrap().remove("peak_rss_mb");
    for stage in summary["stages"].as_array_mut().unwrap() {
        let stage = stage.as_object_mut().unwrap();
        stage.remove("seconds");
        stage.remove("samples_per_s");
    }
    for (_, model) in summary["models"].as_object_mut().unwrap() {
        let model = model.as_object_mut().unwrap();
        model.remove("latency_ms");
        model.remove("encoder_forwards");
    }
}

fn outcome(dir: &Path) -> Outcome {
    let mut exports = Vec::new();
    for name in ["teacher", "student", "baseline"] {
        let file = format!("{name}.safetensors");
        exports.push((file.clone(), std::fs::read(dir.join(&file)).unwrap()));
    }
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    untime(&mut summary);
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            value.as_object_mut().unwrap().remove("seconds");
            value
        })
        .collect();
    // metrics.csv: the same records as a table (no cell here needs quotes).
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let seconds = rows[0].iter().position(|c| c == "seconds").unwrap();
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|mut r| {
            r.remove(seconds);
            r
        })
        .collect();
    assert_eq!(table.len(), metrics.len() + 1, "a row per record");
    assert_eq!(table[0][..5], ["seed", "stage", "model", "epoch", "steps"]);
    assert!(
        !dir.join("checkpoint.safetensors").exists(),
        "a finished run keeps no checkpoint"
    );
    Outcome {
        exports,
        summary,
        metrics,
        table,
    }
}

/// The run never interrupted, shared by the tests that compare against it.
fn reference() -> &'static Outcome {
    &reference_run().0
}

/// [`reference`] and how long that run took on this machine, in milliseconds.
fn reference_run() -> &'static (Outcome, u64) {
    static REFERENCE: OnceLock<(Outcome, u64)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = scratch("reference").join("run");
        let started = Instant::now();
        let output = kdc(&as_strs(&digits_args(&dir)));
        let took = started.elapsed().as_millis() as u64;
        assert!(output.status.success(), "{}", stderr(&output));
        (outcome(&dir), took)
    })
}

/// A small generator for kill times, fixed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Starts `args`, kills it with SIGKILL after a random moment in `[min, min + spread)` ms,
/// resumes it with `kdc run --resume dir`, kills that, ... until a run finishes. Returns the
/// number of kills.
fn kill_and_resume_until_done(
    args: Vec<String>,
    dir: &Path,
    rng: &mut Lcg,
    min: u64,
    spread: u64,
) -> usize {
    let mut kills = 0;
    let mut args = args;
    for _ in 0..12 {
        let mut child = spawn(&as_strs(&args));
        let wait = Duration::from_millis(min + rng.below(spread));
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !finished {
            child.kill().unwrap();
            kills += 1;
        }
        if finished {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "a resumed run failed after {kills} kills: {}",
                stderr(&output)
            );
            return kills;
        }
        child.wait().unwrap();
        if dir.join("summary.json").is_file() && !kd_runtime::train::checkpoint::path(dir).exists()
        {
            // The kill came after the run had finished its work, as it exited: the kill
            // interrupted nothing, and a resume would rightly say there is nothing to do.
            return kills - 1;
        }
        args = vec!["run".into(), "--resume".into(), dir.display().to_string()];
    }
    let output = kdc(&["run", "--resume", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    kills
}

#[cfg(unix)]
#[test]
fn sigkill_at_random_moments_then_resume_ends_bitwise_as_an_uninterrupted_run() {
    let (expected, took) = reference_run();
    // Kill, resume, kill again, ... at moments spread over the whole run: loading the
    // data, mid-step, writing a checkpoint, evaluating, exporting. Each attempt lives
    // 5-35% of an uninterrupted run on this machine, so several kills land before a resume
    // gets to the end. The reference may have been timed while other tests of this binary
    // ran beside it, so its time can overstate a run; when fewer than three kills land,
    // the sequence starts over in a fresh folder with windows half as long. Every sequence,
    // however many kills landed, must end bitwise as the uninterrupted run.
    let mut rng = Lcg(20261128);
    let mut landed = Vec::new();
    for halving in 0..4 {
        let (min, spread) = (
            ((took / 20) >> halving).max(20),
            ((took * 3 / 10) >> halving).max(1),
        );
        let dir = scratch(&format!("sigkill-{halving}")).join("run");
        let kills = kill_and_resume_until_done(digits_args(&dir), &dir, &mut rng, min, spread);
        assert_eq!(&outcome(&dir), expected, "after {kills} kills");
        if kills >= 3 {
            return;
        }
        landed.push(kills);
    }
    panic!(
        "never three kills in one sequence (kills per sequence: {landed:?}, reference {took} ms)"
    );
}

#[cfg(unix)]
/// A whole run (`args` of its folder) into `base/whole`, then the same run killed at
/// moments spread over however long the whole one took, and resumed until done, in
/// `base/killed-N`: both folders. The reference may have been timed while other tests ran
/// beside it, overstating a run: when no kill lands, the sequence starts over in a fresh
/// folder with windows half as long (as the SIGKILL test above does).
fn whole_and_killed(
    args: &dyn Fn(&Path) -> Vec<String>,
    base: &Path,
    seed: u64,
) -> (PathBuf, PathBuf) {
    let whole = base.join("whole");
    let started = Instant::now();
    let output = kdc(&as_strs(&args(&whole)));
    assert!(output.status.success(), "{}", stderr(&output));
    let took = started.elapsed().as_millis() as u64;
    let mut rng = Lcg(seed);
    for halving in 0..4 {
        let dir = base.join(format!("killed-{halving}"));
        let (min, spread) = ((took / 10) >> halving, ((took * 8 / 10) >> halving).max(1));
        if kill_and_resume_until_done(args(&dir), &dir, &mut rng, min, spread) >= 1 {
            return (whole, dir);
        }
    }
    panic!("no kill landed");
}

/// A finished run's summary without its timings.
fn untimed_summary(dir: &Path) -> serde_json::Value {
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    untime(&mut summary);
    summary
}

#[test]
fn a_resumed_stage_keeps_its_teacher_cache() {
    // Stage `plain` caches the frozen teacher's outputs; the checkpoint carries the cache,
    // so a resumed run counts the same teacher forwards: one per training sample.
    let file = "tests/cases/passes/cache_teacher.kd";
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            file,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "stage.plain.epochs=20",
            "--set",
            "pipeline.cache.checkpoint_every=5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, dir) = whole_and_killed(&args, &scratch("cache"), 7);
    let (a, b) = (untimed_summary(&whole), untimed_summary(&dir));
    assert_eq!(a["models"], b["models"]);
    assert_eq!(a["stages"], b["stages"]);
    let plain = a["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "plain")
        .unwrap();
    assert_eq!(plain["epochs"], 20);
    assert_eq!(plain["teacher_forwards"], 1438, "once per training sample");
}

#[test]
fn a_resumed_stage_keeps_its_loss_schedules() {
    // Scheduled loss parameters follow the stage's step count: a run killed mid-stage and
    // resumed logs the same values and ends with the same weights.
    let file = "tests/cases/ok/loss_schedules.kd";
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            file,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "stage.distill.epochs=60",
            "--set",
            "pipeline.schedules.checkpoint_every=7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, dir) = whole_and_killed(&args, &scratch("schedules"), 11);
    let lines = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    let (a, b) = (lines(&whole), lines(&dir));
    assert_eq!(a, b);
    assert_eq!(
        a.last().unwrap()["schedules"]["hinton.T"].as_f64(),
        Some(1.0)
    );
    let (a, b) = (untimed_summary(&whole), untimed_summary(&dir));
    assert_eq!(a["models"], b["models"]);
    assert_eq!(a["stages"], b["stages"]);
}

#[test]
fn a_run_killed_while_it_prunes_resumes_with_its_masks() {
    // `sparse` is pruned gradually over stage `ramp`, and `half` at once before `recover`:
    // kills land inside both, and the resumed run ends with the same weights, zeros
    // included, and the same sparsity logged epoch by epoch.
    let file = "tests/cases/ok/pruning.kd";
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            file,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "stage.ramp.epochs=30",
            "--set",
            "stage.recover.epochs=20",
            "--set",
            "pipeline.prune.checkpoint_every=7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, dir) = whole_and_killed(&args, &scratch("pruning"), 13);
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    assert_eq!(
        read(&whole, "sparse.safetensors"),
        read(&dir, "sparse.safetensors")
    );
    let (a, b) = (untimed_summary(&whole), untimed_summary(&dir));
    assert_eq!(a["models"], b["models"]);
    assert_eq!(a["stages"], b["stages"]);
    assert_eq!(a["models"]["sparse"]["pruned_from"], "s");
    let sparsity = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["sparsity"].as_f64())
            .collect()
    };
    assert_eq!(sparsity(&whole), sparsity(&dir));
    assert_eq!(sparsity(&whole).len(), 60);
}

#[test]
fn a_run_killed_while_it_ramps_neurons_resumes_at_full_width() {
    // `thin` trains stage `ramp` at `s`'s widths with neurons masked, and narrows when it
    // ends: kills land before, inside and after the ramp, and the resumed run ends with
    // the same narrow model.
    let file = "tests/cases/ok/pruning_neurons_gradual.kd";
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            file,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "stage.ramp.epochs=20",
            "--set",
            "stage.tune.epochs=10",
            "--set",
            "pipeline.gradual_neurons.checkpoint_every=7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, dir) = whole_and_killed(&args, &scratch("ramp"), 17);
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    for file in ["thin.safetensors", "thin.onnx"] {
        assert_eq!(read(&whole, file), read(&dir, file), "{file}");
    }
    let (a, b) = (untimed_summary(&whole), untimed_summary(&dir));
    assert_eq!(a["models"], b["models"]);
    assert_eq!(a["stages"], b["stages"]);
    assert_eq!(a["models"]["thin"]["params"], 8970);
}

#[test]
fn a_run_killed_while_it_trains_quantisation_aware_resumes_with_its_ranges() {
    // `qat` is made (input ranges calibrated) when stage `aware` starts, and its baseline
    // with it: kills land inside that stage and its baseline's copy, and the resumed run
    // ends with the same int8 model, in both formats.
    let file = "tests/cases/ok/quantize_aware.kd";
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            file,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "stage.aware.epochs=25",
            "--set",
            "pipeline.qat.checkpoint_every=7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, dir) = whole_and_killed(&args, &scratch("aware"), 13);
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    for file in ["qat.safetensors", "qat.onnx"] {
        assert_eq!(read(&whole, file), read(&dir, file), "{file}");
    }
    let (a, b) = (untimed_summary(&whole), untimed_summary(&dir));
    assert_eq!(a["models"], b["models"]);
    assert_eq!(a["stages"], b["stages"]);
    assert_eq!(a["models"]["qat"]["quantization"], "aware");
    assert_eq!(a["models"]["ptq"]["quantization"], "post-training");
    assert_eq!(a["models"]["labels_only"]["baseline_of"], "qat");
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_a_resume_finishes_the_run_exactly() {
    let expected = reference();
    let dir = scratch("sigint").join("run");
    let child = spawn(&as_strs(&digits_args(&dir)));
    // Interrupt once training is under way (the first epoch is logged).
    let started = Instant::now();
    while std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(true, |t| t.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no epoch ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{text}");
    assert!(text.contains("kd::run::interrupted"), "{text}");
    assert!(
        text.contains(&format!("kdc run --resume {}", dir.display())),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(dir.join("checkpoint.safetensors").exists());
    assert!(!dir.join("summary.json").exists());

    // The file still compiles to the run's plan: resuming through it is allowed.
    let mut args = digits_args(&dir);
    args.splice(2..4, ["--resume".to_string(), dir.display().to_string()]);
    let output = kdc(&as_strs(&args));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(&outcome(&dir), expected);

    // Finished: nothing left to resume.
    let output = kdc(&["run", "--resume", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("kd::run::finished"));
}

#[test]
fn a_resume_refuses_a_pipeline_that_changed_and_says_what_changed() {
    let dir = scratch("mismatch").join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let mut compile = vec!["compile", "examples/digits.kd", "-o"];
    let plan = dir.join("plan.yaml");
    compile.push(plan.to_str().unwrap());
    compile.extend_from_slice(SHORT);
    assert!(kdc(&compile).status.success());
    let before = std::fs::read(&plan).unwrap();

    let mut args = vec![
        "run",
        "examples/digits.kd",
        "--resume",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(SHORT);
    args.extend_from_slice(&["--set", "stage.distill.lr=0.01"]);
    let output = kdc(&args);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("kd::run::resume_mismatch"), "{text}");
    assert!(
        text.contains("stages[1].optimizer.adam.lr: 0.003 -> 0.01"),
        "{text}"
    );
    assert!(
        text.contains("overrides[3]: nothing -> key: stage.distill.lr; value: '0.01'"),
        "{text}"
    );
    // Nothing in the run folder was touched.
    assert_eq!(std::fs::read(&plan).unwrap(), before);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // --set without a file cannot change a resumed run either.
    let output = kdc(&[
        "run",
        "--resume",
        dir.to_str().unwrap(),
        "--set",
        "stage.teach.epochs=1",
    ]);
    assert_eq!(output.status.code(), Some(2));

    let output = kdc(&["run", "--resume", "examples"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("kd::run::not_a_run"));
}

#[test]
fn force_replaces_an_earlier_run_and_nothing_else() {
    let base = scratch("force");
    let run = base.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("plan.yaml"), "an earlier run").unwrap();
    std::fs::write(run.join(".kdc-run"), "").unwrap();
    std::fs::write(run.join("stale.txt"), "from before").unwrap();
    let mut args = vec!["run", "examples/digits.kd", "--out", run.to_str().unwrap()];
    args.extend_from_slice(&[
        "--set",
        "stage.teach.epochs=1",
        "--set",
        "stage.distill.epochs=1",
    ]);

    let output = kdc(&args);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("kd::run::out_exists"));
    assert!(
        run.join("stale.txt").exists(),
        "a refused run touched the folder"
    );

    args.push("--force");
    let output = kdc(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!run.join("stale.txt").exists());
    assert!(run.join("summary.json").exists());

    // A folder that holds no kdc run is never deleted, even with --force: not even one
    // where `kdc compile -o plan.yaml` wrote a plan beside the user's files.
    let foreign = base.join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("holiday.jpg"), "precious").unwrap();
    std::fs::write(foreign.join("plan.yaml"), "a compiled plan").unwrap();
    let mut args = vec!["run", "examples/digits.kd", "--force", "--out"];
    args.push(foreign.to_str().unwrap());
    let output = kdc(&args);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not a kdc run folder"));
    assert_eq!(
        std::fs::read_to_string(foreign.join("holiday.jpg")).unwrap(),
        "precious"
    );
}

/// The teacher stage with a learning rate that makes its weights overflow within an epoch.
const EXPLODE: &[&str] = &[
    "--set",
    "stage.teach.epochs=1",
    "--set",
    "stage.distill.epochs=1",
    "--set",
    "stage.teach.lr=1e30",
];

#[test]
fn a_non_finite_loss_stops_the_run_and_points_at_the_term() {
    let dir = scratch("nan").join("run");
    let mut args = vec![
        "--error-format",
        "json",
        "run",
        "examples/digits.kd",
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(EXPLODE);
    let output = kdc(&args);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("kd::run::non_finite"))
        .unwrap_or_else(|| panic!("no non-finite diagnostic: {text}"));
    let diagnostic: serde_json::Value = serde_json::from_str(line).unwrap();
    let message = diagnostic["message"].as_str().unwrap();
    assert!(
        message.starts_with("the loss of stage `teach` is not finite at epoch 1, step "),
        "{message}"
    );
    // The spans point into digits.kd: first the loss term, then the model whose output
    // overflowed.
    let source = std::fs::read_to_string(root().join("examples/digits.kd")).unwrap();
    let text_of = |label: &serde_json::Value| {
        let start = label["start"].as_u64().unwrap() as usize;
        let end = label["end"].as_u64().unwrap() as usize;
        source[start..end].trim_end().to_string()
    };
    let labels = diagnostic["labels"].as_array().unwrap();
    assert_eq!(
        text_of(&labels[0]),
        "cross_entropy(t.logits, label)",
        "{line}"
    );
    assert_eq!(text_of(&labels[1]), "teacher t = cnn", "{line}");
    assert!(labels[1]["label"].as_str().unwrap().contains("model `t`"));
    assert!(
        !dir.join("teacher.safetensors").exists(),
        "no export of bad weights"
    );
    assert!(!dir.join("summary.json").exists());
}

#[test]
fn non_finite_skip_counts_the_skipped_batches() {
    let dir = scratch("skip").join("run");
    let mut args = vec!["run", "examples/digits.kd", "--out", dir.to_str().unwrap()];
    args.extend_from_slice(EXPLODE);
    args.extend_from_slice(&["--set", "pipeline.digits.non_finite=skip"]);
    let output = kdc(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let teach = &summary["stages"][0];
    let skipped = teach["skipped_batches"].as_u64().unwrap();
    let steps = teach["steps"].as_u64().unwrap();
    assert!(skipped > 0 && skipped < steps, "{skipped} of {steps}");
    // The baseline's stage runs no teacher, so its batches stay finite.
    assert_eq!(summary["stages"][2]["model"], "scratch");
    assert_eq!(summary["stages"][2]["skipped_batches"], 0);
}
