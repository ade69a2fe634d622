//! Snapshot suites over folders of `.kd` cases: a new case is a new file.
//! `tests/cases/ok/*.kd` must compile: their Plan (YAML) and graph (Mermaid) are snapshotted.
//! `tests/cases/err/*.kd` must fail: their diagnostics are snapshotted as the user reads them.
//! `examples/*.kd` must compile: their Plan and graph are snapshotted too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use kd_compiler::diagnostics::render_plain;
use kd_compiler::{compile, render};

/// The Plan as YAML, with the machine-specific source location blanked.
fn portable_yaml(mut plan: kd_plan::Plan) -> String {
    plan.source.path = plan
        .source
        .path
        .file_name()
        .map(Into::into)
        .unwrap_or_default();
    plan.source.base_dir = ".".into();
    plan.to_yaml().unwrap()
}

fn compile_ok(path: &Path) -> kd_plan::Plan {
    let source = std::fs::read_to_string(path).unwrap();
    match compile(&source, path, &[]) {
        Ok(c) => c.plan,
        Err(errors) => panic!(
            "{} should compile:\n{}",
            path.display(),
            render_plain(&errors, "case.kd", &source)
        ),
    }
}

#[test]
fn ok_plans() {
    insta::glob!("../../tests/cases/ok", "*.kd", |path: &Path| {
        insta::assert_snapshot!(portable_yaml(compile_ok(path)));
    });
}

#[test]
fn ok_graphs() {
    insta::glob!("../../tests/cases/ok", "*.kd", |path: &Path| {
        insta::assert_snapshot!(render::mermaid(&compile_ok(path)));
    });
}

#[test]
fn err_cases_fail_with_diagnostics() {
    insta::glob!("../../tests/cases/err", "*.kd", |path: &Path| {
        let source = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match compile(&source, path, &[]) {
            Ok(_) => panic!("{name} should not compile"),
            Err(errors) => {
                assert!(errors.iter().any(|e| e.is_error()), "{name}: only warnings");
                insta::assert_snapshot!(render_plain(&errors, &name, &source));
            }
        }
    });
}

/// `tests/cases/sweeps/*.kd` each declare a sweep `tune`: its configurations (names and
/// values) and the first one's Plan are snapshotted.
#[test]
fn sweep_configurations() {
    insta::glob!("../../tests/cases/sweeps", "*.kd", |path: &Path| {
        let source = std::fs::read_to_string(path).unwrap();
        let compiled = match kd_compiler::compile_sweep(&source, path, &[], "tune") {
            Ok(c) => c.sweep,
            Err(errors) => panic!(
                "{} should compile:\n{}",
                path.display(),
                render_plain(&errors, "case.kd", &source)
            ),
        };
        let mut text = format!(
            "sweep {} ({}), select {:?}\n",
            compiled.name, compiled.search, compiled.select
        );
        for config in &compiled.configs {
            let values: Vec<String> = config
                .values
                .iter()
                .map(|o| format!("{}={}", o.key, o.value))
                .collect();
            text.push_str(&format!("{}: {}\n", config.name, values.join("  ")));
        }
        let first = compiled.configs.into_iter().next().unwrap().plan;
        text.push_str(&portable_yaml(first));
        insta::assert_snapshot!(text);
    });
}

/// `tests/cases/sweep_err/*.kd`: a sweep `tune` whose configurations do not check.
#[test]
fn sweep_errors() {
    insta::glob!("../../tests/cases/sweep_err", "*.kd", |path: &Path| {
        let source = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match kd_compiler::compile_sweep(&source, path, &[], "tune") {
            Ok(_) => panic!("{name} should not compile"),
            Err(errors) => insta::assert_snapshot!(render_plain(&errors, &name, &source)),
        }
    });
}

/// The data the examples read beyond the repository's own: MNIST (as IDX and as PNG
/// files), the SpamAssassin corpus and the MiniLM teacher, fetched once per test process
/// with the project's pinned script (idempotent), so that missing data fails here rather
/// than passing quietly.
fn fetch_example_data() {
    static FETCHED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let fetched = FETCHED.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let fetch = std::process::Command::new("bash")
            .arg(root.join("scripts/fetch-data.sh"))
            .args(["mnist", "spam", "minilm", "mnist-png"])
            .output()
            .map_err(|e| e.to_string())?;
        match fetch.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&fetch.stderr).to_string()),
        }
    });
    if let Err(e) = fetched {
        panic!("fetch-data.sh mnist spam minilm mnist-png:\n{e}");
    }
}

/// Every example compiles, those on fetched data included, and its Plan (YAML) and graph
/// (Mermaid) are snapshotted like the ok cases'.
#[test]
fn example_plans() {
    fetch_example_data();
    insta::glob!("../../examples", "*.kd", |path: &Path| {
        insta::assert_snapshot!(portable_yaml(compile_ok(path)));
    });
}

#[test]
fn example_graphs() {
    fetch_example_data();
    insta::glob!("../../examples", "*.kd", |path: &Path| {
        insta::assert_snapshot!(render::mermaid(&compile_ok(path)));
    });
}
