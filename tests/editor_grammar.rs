//! The TextMate grammar (editors/vscode/syntaxes/kd.tmLanguage.json) against the language:
//!
//! - kd.pest's keywords, reserved words and stage settings are the vocabulary's
//!   (`kd_compiler::vocabulary`), which the checker checks against;
//! - every word of every class gets the scope of its class from a real TextMate engine
//!   (vscode-textmate through vscode-tmgrammar-test, from npm), in a context where the
//!   checker accepts it, and a misspelt one gets none;
//! - the grammar's own syntax tests and the snapshots of every example and checker case
//!   (`npm test` in editors/vscode) pass.
//!
//! The npm packages come from the lockfile through scripts/editor-tools.sh, the first time
//! a test needs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::root;
use kd_compiler::vocabulary as v;

fn extension() -> PathBuf {
    root().join("editors/vscode")
}

/// The extension's npm packages (scripts/editor-tools.sh installs them from the lockfile
/// the first time).
fn npm_packages() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        let out = Command::new(root().join("scripts/editor-tools.sh"))
            .output()
            .map_err(|e| format!("scripts/editor-tools.sh: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "scripts/editor-tools.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// The words kd.pest defines with `rule = @{ ("a" | "b" ...) ...}` or `kw_x = @{ "x" ...}`.
fn pest_words(pest: &str, rule: &str) -> BTreeSet<String> {
    let line = pest
        .lines()
        .find(|l| l.split_whitespace().next() == Some(rule))
        .unwrap_or_else(|| panic!("kd.pest has no rule `{rule}`"));
    let body = &line[line.find('{').unwrap()..];
    let body = body.split(" ~ !ident_char").next().unwrap();
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_grammar_and_the_checker_know_the_same_words() {
    let pest = std::fs::read_to_string(root().join("grammar/src/kd.pest")).unwrap();
    let keywords: BTreeSet<String> = pest
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| r.starts_with("kw_"))
        .flat_map(|r| pest_words(&pest, r))
        .collect();
    let expected: BTreeSet<String> = v::DECLARATION_KEYWORDS
        .iter()
        .chain(v::STATEMENT_KEYWORDS)
        .chain(v::MODEL_SOURCES)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        keywords, expected,
        "kd.pest's kw_ rules against the vocabulary"
    );
    let reserved = pest_words(&pest, "reserved");
    let mut joining: BTreeSet<String> = v::JOINING_WORDS.iter().map(|s| s.to_string()).collect();
    joining.extend(["true".to_string(), "false".to_string()]);
    assert_eq!(reserved, joining, "kd.pest's reserved words");
    let stage: BTreeSet<String> = v::STAGE_SETTINGS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        pest_words(&pest, "stage_key"),
        stage,
        "kd.pest's stage settings"
    );
}

/// `line` and the column of `word` in it (its first occurrence as a whole word).
fn column(line: &str, word: &str) -> usize {
    let bytes = line.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut from = 0;
    while let Some(found) = line[from..].find(word) {
        let at = from + found;
        let end = at + word.len();
        let before = at == 0 || !is_word(bytes[at - 1]);
        let after = end == line.len() || !is_word(bytes[end]);
        if before && after {
            return at;
        }
        from = at + 1;
    }
    panic!("`{word}` is not a word of `{line}`");
}

/// A syntax test's assertion that `word` in `line` has (or, with `-`, lacks) `scopes`.
fn assertion(line: &str, word: &str, scopes: &str) -> String {
    let at = column(line, word);
    match at {
        0 => format!("// <{} {scopes}", "-".repeat(word.len())),
        1 => panic!("`{word}` at column 1 cannot be pointed at"),
        _ => format!(
            "//{}{} {scopes}",
            " ".repeat(at - 2),
            "^".repeat(word.len())
        ),
    }
}

/// Every scope a known word may get: a misspelt word must get none of them.
const CLASS_SCOPES: &str = "storage.type.kd keyword.control.kd keyword.other.kd \
    support.function.layer.kd support.function.builtin.kd variable.language.label.kd \
    support.function.optimizer.kd support.function.schedule.kd support.constant.metric.kd \
    support.function.augment.kd support.function.source.kd variable.other.setting.kd";

/// A misspelling of `word` that is no word of the language: two letters swapped.
fn misspelt(word: &str, known: &BTreeSet<&str>) -> Option<String> {
    let chars: Vec<char> = word.chars().collect();
    (1..chars.len().saturating_sub(1))
        .map(|i| {
            let mut c = chars.clone();
            c.swap(i, i + 1);
            c.into_iter().collect::<String>()
        })
        .chain([format!("{word}x")])
        .find(|w| w != word && !known.contains(w.as_str()))
}

#[test]
fn every_known_word_gets_the_scope_of_its_class() {
    // Each class: its words, a line where the checker accepts one (`{}`), and its scope.
    let classes: &[(&str, &[&str], &str, &str)] = &[
        (
            "layer",
            v::LAYERS,
            "model m { input [1] {} }",
            "support.function.layer.kd",
        ),
        (
            "built-in",
            v::BUILTINS,
            "stage s { loss {}(a, b) }",
            "support.function.builtin.kd",
        ),
        (
            "built-in value",
            v::BUILTIN_VALUES,
            "stage s { loss kl(a, {}) }",
            "variable.language.label.kd",
        ),
        (
            "optimizer",
            v::OPTIMIZERS,
            "stage s { optimizer {}(lr: 0.1) }",
            "support.function.optimizer.kd",
        ),
        (
            "schedule",
            v::SCHEDULES,
            "stage s { schedule {} }",
            "support.function.schedule.kd",
        ),
        (
            "value schedule",
            v::VALUE_SCHEDULE_FORMS,
            "stage s { loss h(T = {}(from: 1, to: 2)) }",
            "support.function.schedule.kd",
        ),
        (
            "value schedule argument",
            v::VALUE_SCHEDULE_ARGUMENTS,
            "stage s { loss h(T = linear({}: 1)) }",
            "variable.parameter.kd",
        ),
        (
            "metric",
            v::METRICS,
            "evaluate s on d.test { {} }",
            "support.constant.metric.kd",
        ),
        (
            "kept metric",
            v::KEEP_METRICS,
            "stage s { keep best {} }",
            "support.constant.metric.kd",
        ),
        (
            "augmentation",
            v::AUGMENTATIONS,
            "augment a { {} }",
            "support.function.augment.kd",
        ),
        (
            "data source",
            v::DATA_SOURCES,
            "data d = {}(\"f\")",
            "support.function.source.kd",
        ),
        (
            "model source",
            v::MODEL_SOURCES,
            "teacher t = {}(\"f\")",
            "support.function.source.kd",
        ),
        (
            "pipeline setting",
            v::PIPELINE_SETTINGS,
            "pipeline p { {}: 1 }",
            "variable.other.setting.kd",
        ),
        (
            "data setting",
            v::DATA_SETTINGS,
            "data d = csv(\"f\") { {}: 1 }",
            "variable.other.setting.kd",
        ),
        (
            "bert setting",
            v::BERT_SETTINGS,
            "teacher t = bert(\"f\") { {}: 1 }",
            "variable.other.setting.kd",
        ),
        (
            "prune setting",
            v::PRUNE_SETTINGS,
            "student p = prune(s) { {}: 1 }",
            "variable.other.setting.kd",
        ),
        (
            "quantize setting",
            v::QUANTIZE_SETTINGS,
            "student q = quantize(s) on d.train { {}: 1 }",
            "variable.other.setting.kd",
        ),
        (
            "instance setting",
            v::INSTANCE_SETTINGS,
            "student s = m { {}: f32 }",
            "variable.other.setting.kd",
        ),
        (
            "stage setting",
            v::STAGE_SETTINGS,
            "stage s { {} 1 }",
            "variable.other.setting.kd",
        ),
    ];
    // Keywords: a line where each stands, and the scope of its kind.
    let keyword_lines: &[(&str, &str)] = &[
        ("pipeline", "pipeline p { seed: 1 }"),
        ("data", "data d = csv(\"f.csv\")"),
        ("augment", "augment a { flip }"),
        ("model", "model m { input [1] relu }"),
        ("teacher", "teacher t = m"),
        ("student", "student s = m"),
        ("stage", "stage s { epochs 1 }"),
        ("baseline", "baseline b = s trained like st"),
        ("evaluate", "evaluate s on d.test"),
        ("export", "export s to \"s.onnx\""),
        ("loss", "loss l = kl(a, b)"),
        ("input", "model m { input [1] }"),
        ("tokens", "model m { input tokens[4] }"),
        ("residual", "model m { input [1] residual { relu } }"),
        ("output", "teacher o = onnx(\"f\") { output \"y\" [2] }"),
        ("tap", "teacher o = onnx(\"f\") { tap \"h\" as h }"),
        ("train", "stage s { train m on d.train }"),
        ("distill", "stage s { distill t -> s on d.train }"),
        ("optimizer", "stage s { optimizer sgd }"),
        ("schedule", "stage s { schedule step }"),
        ("validate", "stage s { validate on d.val }"),
        ("keep", "stage s { keep last }"),
        ("best", "stage s { keep best f1 }"),
        ("last", "stage s { keep last }"),
        ("trained", "baseline b = s trained like st"),
        ("as", "model m { input [1] relu as h }"),
        ("on", "stage s { train m on d.train }"),
        ("with", "stage s { train m on d.train with a }"),
        ("to", "export s to \"f\""),
        ("from", "teacher t = m from \"w\""),
        ("without", "baseline b = s trained like st without t"),
        ("like", "baseline b = s trained like st"),
        ("sweep", "sweep w { search grid }"),
        ("search", "sweep w { search grid }"),
        ("select", "sweep w { select accuracy of s on d.val }"),
        ("of", "sweep w { select accuracy of s on d.val }"),
        ("in", "sweep w { stage.s.epochs in [1, 2] }"),
    ];
    let kinds: &[(&[&str], &str)] = &[
        (v::DECLARATION_KEYWORDS, "storage.type.kd"),
        (v::STATEMENT_KEYWORDS, "keyword.control.kd"),
        (v::JOINING_WORDS, "keyword.other.kd"),
    ];
    let known: BTreeSet<&str> = classes
        .iter()
        .flat_map(|c| c.1.iter())
        .chain(kinds.iter().flat_map(|k| k.0.iter()))
        .copied()
        .collect();

    let mut test = vec![r#"// SYNTAX TEST "source.kd" "every word of the vocabulary""#.to_string()];
    let mut push = |line: String, word: &str, scopes: String| {
        let check = assertion(&line, word, &scopes);
        test.push(line);
        test.push(check);
    };
    for (kind_words, scope) in kinds {
        for word in *kind_words {
            // A statement keyword may also declare (`loss`): its declaration line is enough
            // for the first, its statement line for the second.
            let lines: Vec<&str> = keyword_lines
                .iter()
                .filter(|(w, _)| w == word)
                .map(|(_, l)| *l)
                .collect();
            let line = match (*scope, word) {
                ("keyword.control.kd", &"loss") => "stage s { loss kl(a, b) }",
                _ => lines.first().copied().unwrap_or_else(|| {
                    panic!("no line in this test shows the keyword `{word}`: add one")
                }),
            };
            push(line.to_string(), word, scope.to_string());
        }
    }
    for (class, words, context, scope) in classes {
        for word in *words {
            push(context.replace("{}", word), word, scope.to_string());
            let wrong = misspelt(word, &known)
                .unwrap_or_else(|| panic!("no misspelling of the {class} `{word}`"));
            push(
                context.replace("{}", &wrong),
                &wrong,
                format!("- {CLASS_SCOPES}"),
            );
        }
    }
    npm_packages();
    let dir = std::env::temp_dir().join(format!("kdc-grammar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vocabulary.kd");
    std::fs::write(&file, test.join("\n") + "\n").unwrap();
    let out = tool(
        "vscode-tmgrammar-test",
        &[
            "-c",
            "-g",
            "syntaxes/kd.tmLanguage.json",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "the grammar gives a word the wrong scope ({}):\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let dir = extension();
    Command::new(dir.join("node_modules/.bin").join(name))
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The grammar's syntax tests and the snapshots of every example and checker case.
#[test]
fn the_grammar_passes_its_syntax_tests_and_snapshots() {
    npm_packages();
    let out = Command::new("node")
        .arg("test/run.js")
        .current_dir(extension())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm test in editors/vscode:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The extension's client type-checks (tsc, strict) and packages as a .vsix (with
/// @vscode/vsce, as VS Code's marketplace takes it) holding its manifest, grammar,
/// language configuration, compiled client and its runtime dependency only.
#[test]
fn the_extension_type_checks_and_packages_as_a_vsix() {
    npm_packages();
    let typecheck = tool("tsc", &["-p", ".", "--noEmit"]);
    assert!(
        typecheck.status.success(),
        "tsc:\n{}{}",
        String::from_utf8_lossy(&typecheck.stdout),
        String::from_utf8_lossy(&typecheck.stderr)
    );
    let out_dir = std::env::temp_dir().join(format!("kdc-vsix-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let vsix = out_dir.join("kd-language.vsix");
    let out = tool(
        "vsce",
        &[
            "package",
            "--skip-license",
            "--allow-missing-repository",
            "--out",
            vsix.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "vsce package:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("unzip").arg("-l").arg(&vsix).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "extension/package.json",
        "extension/syntaxes/kd.tmLanguage.json",
        "extension/language-configuration.json",
        // The client that starts `kdc lsp`, compiled by tsc, and the package it needs.
        "extension/out/extension.js",
        "extension/node_modules/vscode-languageclient/package.json",
    ] {
        assert!(
            listing.contains(file),
            "{file} is not in the .vsix:\n{listing}"
        );
    }
    for dev in [
        "node_modules/typescript/",
        "node_modules/vscode-tmgrammar-test/",
        "src/extension.ts",
    ] {
        assert!(!listing.contains(dev), "the .vsix carries {dev}");
    }
}
