//! End-to-end tests of the `kdc` binary: exit codes, diagnostics formats, and runs of the
//! digits example whose outputs are compared file by file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "../runtime/tests/common/schema.rs"]
mod schema;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kdc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("kdc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The digits example cut to a few epochs: the same pipeline, seconds instead of a minute.
const SHORT: &[&str] = &[
    "--set",
    "stage.teach.epochs=2",
    "--set",
    "stage.distill.epochs=2",
];

fn run_digits(out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let mut args = vec!["run", "examples/digits.kd", "--out", out];
    args.extend_from_slice(SHORT);
    args.extend_from_slice(extra);
    kdc(&args)
}

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/summary.schema.json")).unwrap(),
    )
    .unwrap();
    let errors = schema::validate(&schema, &value);
    assert!(
        errors.is_empty(),
        "summary.json does not follow its schema: {errors:#?}"
    );
    value
}

fn model_metrics(summary: &serde_json::Value) -> serde_json::Value {
    let mut models = summary["models"].clone();
    for (_, m) in models.as_object_mut().unwrap() {
        let m = m.as_object_mut().unwrap();
        // Sizes and the time a forward takes are not results.
        m.remove("bytes");
        m.remove("latency_ms");
    }
    models
}

#[test]
fn check_accepts_the_examples() {
    let o = kdc(&["check", "examples/digits.kd"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn check_verbose_prints_layers_parameters_and_flops() {
    let o = kdc(&["check", "--verbose", "examples/digits.kd"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for expected in [
        "model t (teacher",
        "model s (student",
        "model scratch (baseline",
        "conv1",
        "FLOPs",
        "total",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn wrong_input_exits_1_with_every_diagnostic() {
    let o = kdc(&["check", "tests/cases/err/several_errors_at_once.kd"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stderr(&o);
    assert!(
        text.contains("kd::check::unknown_name") && text.contains("kd::check::out_of_range"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn json_diagnostics_are_one_object_per_line() {
    let o = kdc(&[
        "--error-format",
        "json",
        "check",
        "tests/cases/err/several_errors_at_once.kd",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4, "{lines:#?}");
    for d in &lines {
        assert!(d["code"].as_str().unwrap().starts_with("kd::"), "{d}");
        assert_eq!(d["severity"], "error");
        assert!(
            d["line"].as_u64().unwrap() >= 1 && d["column"].as_u64().unwrap() >= 1,
            "{d}"
        );
        assert!(d["start"].as_u64().unwrap() <= d["end"].as_u64().unwrap());
    }
    let threads = lines
        .iter()
        .find(|d| d["message"].as_str().unwrap().contains("threads"))
        .unwrap();
    assert_eq!(
        (threads["line"].as_u64(), threads["column"].as_u64()),
        (Some(1), Some(32))
    );
}

/// `--device cuda` on the CPU build: exit 1 with `kd::run::device` naming the CUDA binary;
/// `--device cpu` over a pipeline's `cuda` runs. A device that is no device is a usage
/// error.
#[test]
fn device_flag_chooses_and_refuses_with_help() {
    if kd_runtime::device::HAS_CUDA {
        return; // this test binary was built with CUDA: the refusal cannot happen
    }
    let dir = scratch("device");
    let refused = run_digits(&dir.join("cuda"), &["--device", "cuda"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("kd::run::device"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("kdc-cuda"),
        "{}",
        stderr(&refused)
    );
    let on_cpu = run_digits(
        &dir.join("cpu"),
        &["--set", "pipeline.digits.device=cuda", "--device", "cpu"],
    );
    assert_eq!(on_cpu.status.code(), Some(0), "{}", stderr(&on_cpu));
    assert_eq!(summary(&dir.join("cpu"))["device"], "cpu");
    let bogus = kdc(&["run", "examples/digits.kd", "--device", "tpu"]);
    assert_eq!(bogus.status.code(), Some(2), "{}", stderr(&bogus));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(kdc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        kdc(&["graph", "examples/digits.kd", "--format", "png"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn unknown_set_key_is_an_error() {
    let o = kdc(&[
        "check",
        "examples/digits.kd",
        "--set",
        "stage.teach.epoch=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("did you mean `epochs`"),
        "{}",
        stderr(&o)
    );
    let o = kdc(&[
        "check",
        "examples/digits.kd",
        "--set",
        "stage.nope.epochs=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = kdc(&[
        "check",
        "examples/digits.kd",
        "--set",
        "stage.teach.epochs=0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an override is checked like the text it replaces"
    );
}

#[test]
fn missing_file_exits_1() {
    let o = kdc(&["check", "no/such/file.kd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such/file.kd"));
}

#[test]
fn graph_renders_mermaid_and_dot() {
    let o = kdc(&["graph", "examples/digits.kd", "--format", "mermaid"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("flowchart TD") && stdout(&o).contains("t forward (frozen)"));
    let o = kdc(&["graph", "examples/digits.kd", "--format", "dot"]);
    assert!(stdout(&o).starts_with("digraph"));
}

#[test]
fn runtime_does_not_depend_on_the_grammar() {
    let o = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runtime = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kd-runtime")
        .unwrap();
    let deps: Vec<&str> = runtime["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(deps.contains(&"kd-plan"));
    for forbidden in ["kd-grammar", "kd-compiler"] {
        assert!(
            !deps.contains(&forbidden),
            "kd-runtime depends on {forbidden}"
        );
    }
}

#[test]
fn a_run_is_reproducible_and_a_plan_runs_like_its_source() {
    let dir = scratch("repro");
    // The .kd file, twice with one seed: bitwise the same weights and metrics.
    let a = dir.join("a");
    let o = run_digits(&a, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("teacher") && stdout(&o).contains("baseline"));
    let b = dir.join("b");
    assert_eq!(run_digits(&b, &[]).status.code(), Some(0));
    for file in [
        "teacher.safetensors",
        "student.safetensors",
        "baseline.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let (sa, sb) = (summary(&a), summary(&b));
    assert_eq!(model_metrics(&sa), model_metrics(&sb));
    assert_eq!(sa["provenance"]["plan_hash"], sb["provenance"]["plan_hash"]);
    assert_eq!(sa["provenance"]["overrides"]["stage.teach.epochs"], "2");
    let jsonl = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(
        jsonl.lines().count(),
        2 + 2 + 2,
        "one line per epoch of each stage"
    );
    let stages = sa["stages"].as_array().unwrap();
    let forwards: Vec<u64> = stages
        .iter()
        .map(|s| s["teacher_forwards"].as_u64().unwrap())
        .collect();
    assert_eq!(
        forwards[0], 0,
        "training the teacher runs no frozen teacher"
    );
    // The distill stage augments the teacher's batches, so nothing is cached: the teacher
    // runs on every training sample in every epoch (1,078 samples, 2 epochs).
    assert_eq!(forwards[1], 1078 * 2, "distillation runs the teacher");
    assert_eq!(forwards[2], 0, "the baseline never sees the teacher");

    // The compiled plan, run on its own: bitwise the same as running the .kd file.
    let plan = dir.join("plan.yaml");
    let mut args = vec![
        "compile",
        "examples/digits.kd",
        "-o",
        plan.to_str().unwrap(),
    ];
    args.extend_from_slice(SHORT);
    assert_eq!(kdc(&args).status.code(), Some(0));
    let c = dir.join("c");
    let o = kdc(&["run", plan.to_str().unwrap(), "--out", c.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(model_metrics(&summary(&c)), model_metrics(&sa));
    assert_eq!(
        std::fs::read(a.join("student.safetensors")).unwrap(),
        std::fs::read(c.join("student.safetensors")).unwrap()
    );

    // A hand edit of the plan changes the result.
    let text = std::fs::read_to_string(&plan).unwrap();
    let edited = text.replacen("seed: 7", "seed: 8", 1);
    assert_ne!(text, edited);
    let edited_path = dir.join("edited.yaml");
    std::fs::write(&edited_path, edited).unwrap();
    let d = dir.join("d");
    assert_eq!(
        kdc(&[
            "run",
            edited_path.to_str().unwrap(),
            "--out",
            d.to_str().unwrap()
        ])
        .status
        .code(),
        Some(0)
    );
    assert_ne!(
        std::fs::read(a.join("student.safetensors")).unwrap(),
        std::fs::read(d.join("student.safetensors")).unwrap()
    );
    assert_eq!(summary(&d)["seed"], 8);
}

#[test]
fn another_seed_gives_other_weights() {
    let dir = scratch("seed");
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_eq!(
        run_digits(
            &a,
            &[
                "--set",
                "stage.teach.epochs=1",
                "--set",
                "stage.distill.epochs=1"
            ]
        )
        .status
        .code(),
        Some(0)
    );
    let o = run_digits(
        &b,
        &[
            "--set",
            "stage.teach.epochs=1",
            "--set",
            "stage.distill.epochs=1",
            "--set",
            "pipeline.digits.seed=8",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(
        std::fs::read(a.join("teacher.safetensors")).unwrap(),
        std::fs::read(b.join("teacher.safetensors")).unwrap()
    );
}

#[test]
fn a_run_never_overwrites_a_folder() {
    let dir = scratch("clobber");
    let keep = dir.join("precious.txt");
    std::fs::write(&keep, "the user's").unwrap();
    let o = run_digits(&dir, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("kd::run::out_exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "the user's");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "nothing was added"
    );
}

#[test]
fn a_broken_plan_is_a_diagnostic() {
    let dir = scratch("badplan");
    let plan = dir.join("plan.yaml");
    std::fs::write(&plan, "version: 1\nsource: [").unwrap();
    let o = kdc(&[
        "run",
        plan.to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("kd::plan::invalid"), "{}", stderr(&o));
}

#[test]
fn a_hand_edited_plan_with_absurd_sizes_is_refused_before_allocating() {
    let dir = scratch("absurd");
    let compiled = dir.join("plan.yaml");
    let o = kdc(&[
        "compile",
        "examples/digits.kd",
        "-o",
        compiled.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&compiled).unwrap();
    for (case, from, to, expect) in [
        (
            "classes",
            "classes: 10",
            "classes: 1000000000000",
            "1000000000000 classes",
        ),
        (
            "width",
            "out: 64",
            "out: 100000000000",
            "more values than kdc allocates",
        ),
    ] {
        assert!(text.contains(from));
        let plan = dir.join(format!("{case}.yaml"));
        std::fs::write(&plan, text.replacen(from, to, 1)).unwrap();
        let out = dir.join(case);
        let o = kdc(&[
            "run",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{case}: {}", stderr(&o));
        assert!(stderr(&o).contains("kd::run::plan"), "{}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{}", stderr(&o));
    }
}

/// The fresh-machine example as the README runs it: the teacher must reach 0.97 test
/// accuracy, and teacher, student and baseline are reported side by side.
#[test]
fn digits_example_full_run() {
    let dir = scratch("digits-full");
    let out = dir.join("run");
    let o = kdc(&["run", "examples/digits.kd", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = summary(&out);
    let teacher = s["models"]["t"]["metrics"]["test"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(teacher >= 0.97, "teacher test accuracy {teacher}");
    for model in ["t", "s", "scratch"] {
        assert!(
            s["models"][model]["metrics"]["test"]["f1"]
                .as_f64()
                .unwrap()
                > 0.8,
            "{model}"
        );
    }
    let report = stdout(&o);
    assert!(
        report.contains("teacher") && report.contains("student") && report.contains("baseline"),
        "{report}"
    );
}

/// A model may start from weights an earlier run exported; weights that do not fit the
/// architecture are refused before anything runs.
#[test]
fn a_model_starts_from_an_earlier_runs_weights() {
    let dir = scratch("init-from");
    let first = dir.join("first");
    assert_eq!(run_digits(&first, &[]).status.code(), Some(0));
    let teacher_accuracy = summary(&first)["models"]["t"]["metrics"]["test"]["accuracy"]
        .as_f64()
        .unwrap();

    let example = std::fs::read_to_string(root().join("examples/digits.kd")).unwrap();
    let data = root().join("examples/data/digits.csv.gz");
    let header: String = example
        .lines()
        .take_while(|l| !l.starts_with("teacher"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "\"data/digits.csv.gz\"",
            &format!("{:?}", data.to_str().unwrap()),
        );
    let reuse = format!(
        "{header}\nteacher t = cnn from \"first/teacher.safetensors\"\nevaluate t on digits.test\n"
    );
    let kd = dir.join("reuse.kd");
    std::fs::write(&kd, &reuse).unwrap();
    let again = dir.join("again");
    let o = kdc(&[
        "run",
        kd.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reloaded = summary(&again)["models"]["t"]["metrics"]["test"]["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(
        reloaded, teacher_accuracy,
        "the same weights give the same predictions"
    );

    let wrong = reuse.replace(
        "teacher t = cnn from \"first/teacher.safetensors\"",
        "teacher t = mlp from \"first/teacher.safetensors\"",
    );
    std::fs::write(&kd, wrong).unwrap();
    let o = kdc(&["check", kd.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has no tensor `linear1.weight`") || stderr(&o).contains("shape"),
        "{}",
        stderr(&o)
    );
}

/// Every snapshot case that compiles also runs: residual blocks with shortcuts, every
/// augmentation, the article's loss combinations, unlabeled transfer splits, `repeat`.
#[test]
fn ok_cases_run_end_to_end() {
    let dir = scratch("ok-cases");
    for entry in std::fs::read_dir(root().join("tests/cases/ok")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        // The digits example has its own full-length test above.
        if path.extension().is_none_or(|e| e != "kd") || name == "digits_example" {
            continue;
        }
        let out = dir.join(&name);
        let o = kdc(&[
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{name}:\n{}", stderr(&o));
        let s = summary(&out);
        if name == "two_teachers" {
            // Each student is compared with each teacher; each teacher runs once per
            // training sample (both cached).
            for student in ["s", "e", "scratch"] {
                let with = &s["models"][student]["metrics"]["test"]["agreement_with"];
                for teacher in ["conv", "dense"] {
                    let a = with[teacher].as_f64();
                    assert!(
                        a.is_some_and(|a| (0.0..=1.0).contains(&a)),
                        "{student}: {with}"
                    );
                }
                assert_eq!(
                    with["conv"], s["models"][student]["metrics"]["test"]["agreement"],
                    "`agreement` is the first teacher's"
                );
            }
            assert!(s["models"]["conv"]["metrics"]["test"]["agreement_with"].is_null());
            let stages = s["stages"].as_array().unwrap();
            let forwards = |stage: &str| {
                stages.iter().find(|x| x["name"] == stage).unwrap()["teacher_forwards"]
                    .as_u64()
                    .unwrap()
            };
            let train = (1797.0_f64 * 0.7).round() as u64;
            assert_eq!(forwards("terms"), 2 * train);
            assert_eq!(forwards("together"), 2 * train);
        }
        if name == "transfer_set" {
            assert_eq!(s["seeds"].as_array().unwrap().len(), 3);
            let std = &s["models"]["s"]["metrics_std"]["test"]["accuracy"];
            assert!(
                std.as_f64().is_some(),
                "repeat reports a standard deviation: {}",
                s["models"]["s"]
            );
            for seed in [5, 6, 7] {
                assert!(
                    out.join(format!("seed-{seed}/s.safetensors")).is_file(),
                    "seed {seed}'s export"
                );
            }
        }
    }
}

/// Randomness comes from kdc's own generator keyed by seed and position, and the kernels
/// split work without changing sums: one thread or two give bitwise the same weights.
#[test]
fn thread_count_does_not_change_results() {
    let dir = scratch("threads");
    let (one, two) = (dir.join("one"), dir.join("two"));
    assert_eq!(
        run_digits(&one, &["--set", "pipeline.digits.threads=1"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run_digits(&two, &["--set", "pipeline.digits.threads=2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(summary(&one)["threads"], 1);
    assert_eq!(summary(&two)["threads"], 2);
    for file in [
        "teacher.safetensors",
        "student.safetensors",
        "baseline.safetensors",
    ] {
        assert_eq!(
            std::fs::read(one.join(file)).unwrap(),
            std::fs::read(two.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Without `--out`, a run gets its own new folder `<output>/<pipeline>-<UTC time>` beside
/// the `.kd` file, and a second run a second folder.
#[test]
fn default_run_folders_are_new_each_time() {
    let dir = scratch("default-out");
    let case = std::fs::read_to_string(root().join("tests/cases/ok/article_losses.kd")).unwrap();
    let data = root().join("examples/data/digits.csv.gz");
    let case = case.replace(
        "\"../../../examples/data/digits.csv.gz\"",
        &format!("{:?}", data.to_str().unwrap()),
    );
    let kd = dir.join("article.kd");
    std::fs::write(&kd, case).unwrap();
    for _ in 0..2 {
        let o = kdc(&["run", kd.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let runs: Vec<String> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for run in &runs {
        assert!(run.starts_with("article-20"), "{run}");
        assert!(dir.join("runs").join(run).join("summary.json").is_file());
    }
}

/// A cached teacher keeps only the outputs its stage reads: with `cache: disk`, the table
/// written for the digits teacher holds its logits and not its 64-wide `hidden` tap.
#[test]
fn a_cached_teacher_keeps_only_what_its_stage_reads() {
    let dir = scratch("cache-ports");
    let source = std::fs::read_to_string(root().join("examples/digits.kd"))
        .unwrap()
        .replace(
            "output: \"runs\"",
            &format!("output: \"{}\", cache: disk", dir.join("runs").display()),
        )
        // The teacher's batches unaugmented, so that its forward is cached.
        .replace("on digits.train with shift", "on digits.train")
        .replace(
            "data/digits.csv.gz",
            &root()
                .join("examples/data/digits.csv.gz")
                .display()
                .to_string(),
        );
    let file = dir.join("digits.kd");
    std::fs::write(&file, source).unwrap();
    let out = dir.join("runs/one");
    let o = kdc(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "stage.teach.epochs=1",
        "--set",
        "stage.distill.epochs=1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let tables: Vec<PathBuf> = std::fs::read_dir(dir.join("runs/cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("outputs-")
        })
        .collect();
    assert!(!tables.is_empty(), "no output table was written");
    for table in tables {
        // A safetensors header: its length (u64, little-endian), then JSON naming tensors;
        // a table stores each port as `port/N`, `[samples, width]`.
        let bytes = std::fs::read(&table).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        let ports: Vec<&serde_json::Value> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.starts_with("port/"))
            .map(|(_, tensor)| &tensor["shape"][1])
            .collect();
        // The logits (10 wide), not the hidden tap (64) or the output port besides.
        assert_eq!(ports, [&serde_json::json!(10)], "{header}");
    }
}

/// Loss parameters bound to schedules take their value at each step, are logged per epoch
/// in metrics.jsonl (at the epoch's last step), and --set refuses to flatten a schedule.
#[test]
fn scheduled_loss_parameters_follow_their_schedule() {
    let dir = scratch("schedules");
    let case = root().join("tests/cases/ok/loss_schedules.kd");
    let out = dir.join("run");
    let o = kdc(&[
        "run",
        case.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["stage"] == "distill")
        .collect();
    assert_eq!(lines.len(), 4);
    let per_epoch = lines[0]["steps"].as_f64().unwrap();
    let total = 4.0 * per_epoch;
    for (epoch, line) in lines.iter().enumerate() {
        let last = line["steps"].as_f64().unwrap() - 1.0;
        let along = last / (total - 1.0);
        let got = &line["schedules"];
        let t = got["hinton.T"].as_f64().unwrap();
        assert!(
            (t - (8.0 - 7.0 * along)).abs() < 1e-9,
            "epoch {epoch}: T {t}"
        );
        let alpha = got["hinton.alpha"].as_f64().unwrap();
        let cosine = 0.5 + 0.4 * 0.5 * (1.0 + (std::f64::consts::PI * along).cos());
        assert!(
            (alpha - cosine).abs() < 1e-9,
            "epoch {epoch}: alpha {alpha}"
        );
        let w = got["late.w"].as_f64().unwrap();
        assert_eq!(w, if epoch < 2 { 0.0 } else { 1.0 }, "epoch {epoch}");
    }
    assert_eq!(lines[3]["schedules"]["hinton.T"].as_f64(), Some(1.0));
    // metrics.csv: the same records, nested fields under dotted names.
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let column = |name: &str| rows[0].iter().position(|c| *c == name).unwrap();
    let (stage, t) = (column("stage"), column("schedules.hinton.T"));
    let logged: Vec<f64> = rows[1..]
        .iter()
        .filter(|r| r[stage] == "distill")
        .map(|r| r[t].parse().unwrap())
        .collect();
    let expected: Vec<f64> = lines
        .iter()
        .map(|l| l["schedules"]["hinton.T"].as_f64().unwrap())
        .collect();
    assert_eq!(logged, expected);
    // The teacher's rows leave the column empty.
    assert!(rows[1..]
        .iter()
        .filter(|r| r[stage] == "teach")
        .all(|r| r[t].is_empty()));
    // The teacher's stage has no schedule, and logs none.
    let teach = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(teach
        .lines()
        .filter(|l| l.contains("\"teach\""))
        .all(|l| !l.contains("schedules")));

    let o = kdc(&["check", case.to_str().unwrap(), "--set", "loss.late.w=1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("kd::set::schedule"), "{}", stderr(&o));
    // A constant default still takes --set.
    let o = kdc(&["check", case.to_str().unwrap(), "--set", "loss.hinton.T=3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // One loss called twice with two schedules for a parameter: both logged.
    let source = std::fs::read_to_string(&case).unwrap().replace(
        "loss hinton(T = linear(from: 8, to: 1), alpha = cosine(from: 0.9, to: 0.5)) + late",
        "loss hinton(T = linear(from: 8, to: 1)) + hinton(T = linear(from: 2, to: 3))",
    );
    let twice = dir.join("twice.kd");
    std::fs::write(
        &twice,
        source.replace(
            "../../../examples",
            root().join("examples").to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = dir.join("twice");
    let o = kdc(&[
        "run",
        twice.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let last = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    assert_eq!(last["schedules"]["hinton.T"].as_f64(), Some(1.0), "{last}");
    assert_eq!(
        last["schedules"]["hinton.T#2"].as_f64(),
        Some(3.0),
        "{last}"
    );
}
