//! The tree-sitter grammar (editors/tree-sitter-kd) for Neovim, Helix and Zed:
//!
//! - `tree-sitter generate` makes a parser of grammar.js without conflicts (in a scratch
//!   copy: the generated `src/` is never committed);
//! - its corpus tests (`test/corpus/`) and highlight tests (`test/highlight/`) pass;
//! - it parses every example and every checker case that checks, and every `kd` block of
//!   docs/language.md, without an ERROR or MISSING node;
//! - queries/highlights.scm names the vocabulary's words (`kd_compiler::vocabulary`).
//!
//! tree-sitter-cli comes from crates.io through scripts/editor-tools.sh, once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use common::root;
use kd_compiler::vocabulary as v;

fn grammar() -> PathBuf {
    root().join("editors/tree-sitter-kd")
}

/// The folder holding `tree-sitter` (installed the first time).
fn tools() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let out = Command::new(root().join("scripts/editor-tools.sh"))
            .output()
            .map_err(|e| format!("scripts/editor-tools.sh: {e}"))?;
        match out.status.success() {
            true => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
            false => Err(format!(
                "scripts/editor-tools.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    bin.as_deref().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `tree-sitter ARGS` in `dir`; one at a time, since each may compile the parser
/// into the same cache.
fn tree_sitter(dir: &Path, args: &[&str]) -> Output {
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(tools().join("tree-sitter"))
        .args(args)
        .current_dir(dir)
        .env(
            "TREE_SITTER_LIBDIR",
            std::env::temp_dir().join("kdc-tree-sitter-lib"),
        )
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch copy of the grammar folder with its parser generated, made once per run.
fn generated() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let scratch = std::env::temp_dir().join(format!("kdc-tree-sitter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        copy_tree(&grammar(), &scratch);
        let out = tree_sitter(&scratch, &["generate"]);
        assert!(
            out.status.success(),
            "tree-sitter generate:\n{}",
            text(&out)
        );
        scratch
    })
}

/// `from` into `to`, leaving out what `tree-sitter generate` makes.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "src" {
            continue;
        }
        let path = entry.path();
        match path.is_dir() {
            true => copy_tree(&path, &to.join(&name)),
            false => {
                std::fs::copy(&path, to.join(&name)).unwrap();
            }
        }
    }
}

#[test]
fn grammar_js_generates_a_parser() {
    assert!(generated().join("src/parser.c").is_file());
}

#[test]
fn corpus_and_highlight_tests_pass() {
    let out = tree_sitter(generated(), &["test"]);
    assert!(out.status.success(), "tree-sitter test:\n{}", text(&out));
}

/// Every `kd` block of docs/language.md that is not an error example, as files.
fn docs_blocks(dir: &Path) -> Vec<PathBuf> {
    let doc = std::fs::read_to_string(root().join("docs/language.md")).unwrap();
    let mut files = Vec::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```kd") => block = Some(String::new()),
            (Some(b), "```") => {
                if !b.starts_with("// error:") {
                    let file = dir.join(format!("docs-{}.kd", files.len()));
                    std::fs::write(&file, &b).unwrap();
                    files.push(file);
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        files.len() > 10,
        "docs/language.md: only {} kd blocks",
        files.len()
    );
    files
}

#[test]
fn every_example_case_and_docs_block_parses_without_an_error() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["examples", "tests/cases/ok", "tests/cases/passes"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "kd") {
                files.push(path);
            }
        }
    }
    let scratch = std::env::temp_dir().join(format!("kdc-ts-docs-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    files.extend(docs_blocks(&scratch));
    let mut args = vec!["parse", "--quiet", "--stat"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = tree_sitter(generated(), &args);
    let report = text(&out);
    assert!(
        out.status.success() && !report.contains("ERROR") && !report.contains("MISSING"),
        "tree-sitter parse over {} files:\n{report}",
        files.len()
    );
}

/// The words of every `(#any-of? @capture "a" "b" ...)` after `marker` in highlights.scm.
fn any_of_after(scm: &str, marker: &str) -> BTreeSet<String> {
    let start = scm
        .find(marker)
        .unwrap_or_else(|| panic!("highlights.scm has no `{marker}`"));
    let rest = &scm[start..];
    let list = &rest[rest.find("#any-of?").expect("an #any-of? list")..];
    let list = &list[..list.find(')').unwrap()];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn highlights_name_the_vocabulary() {
    let scm = std::fs::read_to_string(grammar().join("queries/highlights.scm")).unwrap();
    let set = |words: &[&str]| words.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let cases: &[(&str, &[&str])] = &[
        ("(layer (call", v::LAYERS),
        ("(layer name:", v::LAYERS),
        (
            "(call_expression function: (identifier) @function.builtin",
            v::BUILTINS,
        ),
        ("(optimizer_statement", v::OPTIMIZERS),
        ("(schedule_statement", v::SCHEDULES),
        ("(metric_list", v::METRICS),
        ("(keep_statement", v::KEEP_METRICS),
        ("(augment_declaration (call", v::AUGMENTATIONS),
        ("(augment_declaration (identifier)", v::AUGMENTATIONS),
        ("(data_declaration source:", v::DATA_SOURCES),
    ];
    for (marker, words) in cases {
        assert_eq!(
            any_of_after(&scm, marker),
            set(words),
            "highlights.scm at `{marker}`"
        );
    }
    let mut settings = set(v::PIPELINE_SETTINGS);
    for more in [
        v::DATA_SETTINGS,
        v::BERT_SETTINGS,
        v::INSTANCE_SETTINGS,
        v::PRUNE_SETTINGS,
        v::QUANTIZE_SETTINGS,
    ] {
        settings.extend(set(more));
    }
    assert_eq!(
        any_of_after(&scm, "(setting key:"),
        settings,
        "highlights.scm's settings"
    );
    // Keywords: every one is a highlighted token.
    for word in v::DECLARATION_KEYWORDS
        .iter()
        .chain(v::STATEMENT_KEYWORDS)
        .chain(v::JOINING_WORDS)
        .chain(v::MODEL_SOURCES)
    {
        assert!(
            scm.contains(&format!("\"{word}\"")),
            "highlights.scm misses the keyword `{word}`"
        );
    }
}
