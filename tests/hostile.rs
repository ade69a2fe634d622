//! The hostile-input corpus: every folder in `tests/hostile/` is a tiny pipeline and a broken
//! file (truncated, corrupt, mismatched or absurdly sized). kdc must answer each with exit
//! code 1 and a message naming the file, never a panic; the message is compared with the
//! case's `expected.stderr` (`UPDATE_EXPECT=1 cargo test --test hostile` rewrites them).
//! `tests/hostile/make.py` wrote the folders and documents `case.txt`; `command: fmt` cases
//! also check that `kdc fmt` leaves the file it refuses unchanged, and `command: report`
//! cases that `kdc report` writes no page from broken run files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kdc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kdc runs")
}

/// What `case.txt` asks.
struct Case {
    command: String,
    names: String,
    edits: Vec<(String, String)>,
}

fn read_case(dir: &Path) -> Case {
    let text = std::fs::read_to_string(dir.join("case.txt")).unwrap();
    let mut case = Case {
        command: String::new(),
        names: String::new(),
        edits: Vec::new(),
    };
    for line in text.lines() {
        let unescape = |s: &str| s.replace("\\n", "\n");
        if let Some(v) = line.strip_prefix("command: ") {
            case.command = v.to_string();
        } else if let Some(v) = line.strip_prefix("names: ") {
            case.names = v.to_string();
        } else if let Some(v) = line.strip_prefix("edit: ") {
            let (old, new) = v.split_once(" => ").unwrap();
            case.edits.push((unescape(old), unescape(new)));
        }
    }
    assert!(
        matches!(
            case.command.as_str(),
            "check" | "run" | "fmt" | "report" | "resume"
        ) && !case.names.is_empty(),
        "{}: case.txt needs `command: check|run|fmt|report|resume` and `names: FILE`",
        dir.display()
    );
    case
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
}

/// Runs one case in a scratch copy of its folder; returns kdc's exit code and stderr.
fn run_case(source: &Path, case: &Case, scratch: &Path) -> (Option<i32>, String) {
    let _ = std::fs::remove_dir_all(scratch);
    copy_tree(source, scratch);
    let output = if case.command == "check" {
        kdc(scratch, &["check", "pipeline.kd"])
    } else if case.command == "report" {
        // The case folder is the run folder; a refused report writes nothing.
        let output = kdc(scratch, &["report", "."]);
        assert!(
            !scratch.join("report.html").exists(),
            "{}: kdc report wrote a page from broken files",
            source.display()
        );
        output
    } else if case.command == "resume" {
        // The case folder is a stopped sweep's run folder; nothing runs from a broken one.
        let output = kdc(scratch, &["run", "--resume", "."]);
        assert!(
            !scratch.join("c01").exists(),
            "{}: a broken sweep.yaml started a configuration",
            source.display()
        );
        output
    } else if case.command == "fmt" {
        // The formatter refuses the file and leaves it byte for byte as it was.
        let before = std::fs::read(scratch.join("pipeline.kd")).unwrap();
        let output = kdc(scratch, &["fmt", "pipeline.kd"]);
        assert_eq!(
            std::fs::read(scratch.join("pipeline.kd")).unwrap(),
            before,
            "{}: kdc fmt changed the file it refused",
            source.display()
        );
        output
    } else {
        let compiled = kdc(scratch, &["compile", "pipeline.kd", "-o", "plan.yaml"]);
        assert_eq!(
            compiled.status.code(),
            Some(0),
            "{}: pipeline.kd must compile before its files are broken:\n{}",
            source.display(),
            String::from_utf8_lossy(&compiled.stderr)
        );
        let run = scratch.join("run");
        if run.is_dir() {
            for entry in std::fs::read_dir(&run).unwrap() {
                let entry = entry.unwrap();
                let target = scratch.join(entry.file_name());
                remove(&target);
                if entry.file_type().unwrap().is_dir() {
                    copy_tree(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        }
        let plan_path = scratch.join("plan.yaml");
        // Files resolve against the scratch folder kdc runs in, so messages hold no temp path
        // (whose length would move miette's line breaks).
        let mut plan: String = std::fs::read_to_string(&plan_path)
            .unwrap()
            .lines()
            .map(|line| match line.strip_prefix("  base_dir: ") {
                Some(_) => "  base_dir: .\n".to_string(),
                None => format!("{line}\n"),
            })
            .collect();
        for (old, new) in &case.edits {
            assert!(
                plan.contains(old.as_str()),
                "{}: the plan has no `{old}`",
                source.display()
            );
            plan = plan.replacen(old.as_str(), new, 1);
        }
        std::fs::write(&plan_path, plan).unwrap();
        kdc(scratch, &["run", "plan.yaml", "--out", "out"])
    };
    // Compiled plans hold the absolute folder; the snapshot must not.
    let stderr =
        String::from_utf8_lossy(&output.stderr).replace(&scratch.display().to_string(), "[CASE]");
    (output.status.code(), stderr)
}

#[test]
fn hostile_files_are_refused_with_a_message_naming_them() {
    let corpus = root().join("tests/hostile");
    let scratch_root = std::env::temp_dir().join(format!("kdc-hostile-{}", std::process::id()));
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.txt").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let case = read_case(dir);
        let (code, stderr) = run_case(dir, &case, &scratch_root.join(&name));
        let mut problems = Vec::new();
        if code != Some(1) {
            problems.push(format!("exit code {code:?}, not 1"));
        }
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            if stderr.contains(bad) {
                problems.push(format!("stderr contains `{bad}`"));
            }
        }
        if !stderr.contains(&case.names) {
            problems.push(format!("stderr does not name `{}`", case.names));
        }
        let expected_path = dir.join("expected.stderr");
        if update {
            std::fs::write(&expected_path, &stderr).unwrap();
        } else {
            match std::fs::read_to_string(&expected_path) {
                Ok(expected) if expected == stderr => {}
                Ok(expected) => problems.push(format!(
                    "stderr differs from expected.stderr:\n--- expected\n{expected}--- actual\n{stderr}"
                )),
                Err(_) => problems.push("no expected.stderr (UPDATE_EXPECT=1 writes it)".into()),
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}\n{stderr}", problems.join("; ")));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch_root);
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
