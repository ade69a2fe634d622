//! Every `kd` code block in docs/language.md is a complete program, and it compiles.
//!
//! Each block is compiled as if it were the file `docs/block.kd`, so relative paths in it
//! resolve against `docs/` (`csv("../examples/data/digits.csv.gz")`). A block must
//! compile without errors and without warnings, unless its first line says otherwise:
//!
//! - `// error: kd::check::some_code` (several codes separated by commas): the block must
//!   fail, and the codes of its errors must be exactly those listed;
//! - `// warning: kd::check::some_code`: the block must compile, and the codes of its
//!   warnings must be exactly those listed.
//!
//! Fragments that are not programs belong in blocks of another info string (`text`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kd_compiler::diagnostics::render_plain;
use kd_compiler::{compile, KdError};
use miette::Diagnostic;

/// A fenced code block of the document.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// 1-based line of the opening fence in the document.
    line: usize,
    /// The info string's first word (`kd`, `text`, `sh`, ...), empty when there is none.
    info: String,
    source: String,
}

/// The fenced code blocks of a Markdown text (backtick or tilde fences, at most three
/// spaces of indentation; a closing fence uses the same character, at least as many).
fn fenced_blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize, Block)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let trimmed = line.trim_start_matches(' ');
        let fence = if indent <= 3 {
            ['`', '~'].into_iter().find_map(|c| {
                let n = trimmed.chars().take_while(|x| *x == c).count();
                (n >= 3).then_some((c, n))
            })
        } else {
            None
        };
        match (&mut open, fence) {
            (None, Some((c, n))) => {
                let info = trimmed[n..].split_whitespace().next().unwrap_or("");
                open = Some((
                    c,
                    n,
                    Block {
                        line: index + 1,
                        info: info.to_string(),
                        source: String::new(),
                    },
                ));
            }
            (Some((c, n, _)), Some((c2, n2)))
                if *c == c2 && n2 >= *n && trimmed[n2..].trim().is_empty() =>
            {
                if let Some((_, _, block)) = open.take() {
                    blocks.push(block);
                }
            }
            (Some((_, _, block)), _) => {
                block.source.push_str(line);
                block.source.push('\n');
            }
            (None, None) => {}
        }
    }
    match open {
        Some((_, _, block)) => Err(format!(
            "the code block opened on line {} is never closed",
            block.line
        )),
        None => Ok(blocks),
    }
}

/// What a block's first line says it should do.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Compiles,
    Errors(BTreeSet<String>),
    Warnings(BTreeSet<String>),
}

fn expectation(source: &str) -> Expect {
    let first = source.lines().next().unwrap_or("").trim();
    let codes = |rest: &str| -> BTreeSet<String> {
        rest.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    if let Some(rest) = first.strip_prefix("// error:") {
        Expect::Errors(codes(rest))
    } else if let Some(rest) = first.strip_prefix("// warning:") {
        Expect::Warnings(codes(rest))
    } else {
        Expect::Compiles
    }
}

fn codes<'a>(diagnostics: impl IntoIterator<Item = &'a KdError>) -> BTreeSet<String> {
    diagnostics
        .into_iter()
        .map(|d| {
            d.code()
                .map_or_else(|| "(no code)".to_string(), |c| c.to_string())
        })
        .collect()
}

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `None` when the block does what it says; otherwise why not.
fn check_block(block: &Block, file: &Path) -> Option<String> {
    let expect = expectation(&block.source);
    let render = |ds: &[KdError]| render_plain(ds, "block.kd", &block.source);
    match (compile(&block.source, file, &[]), expect) {
        (Ok(c), Expect::Compiles) if c.warnings.is_empty() => None,
        (Ok(c), Expect::Compiles) => Some(format!(
            "compiles, but with warnings (mark the block `// warning: CODE` if they are meant):\n{}",
            render(&c.warnings)
        )),
        (Ok(c), Expect::Warnings(expected)) => {
            let found = codes(&c.warnings);
            (found != expected).then(|| {
                format!(
                    "expected the warnings {expected:?}, found {found:?}:\n{}",
                    render(&c.warnings)
                )
            })
        }
        (Ok(_), Expect::Errors(expected)) => Some(format!(
            "compiles, but its first line expects the errors {expected:?}"
        )),
        (Err(errors), Expect::Errors(expected)) => {
            let found = codes(errors.iter().filter(|e| e.is_error()));
            (found != expected).then(|| {
                format!(
                    "expected the errors {expected:?}, found {found:?}:\n{}",
                    render(&errors)
                )
            })
        }
        (Err(errors), _) => Some(format!("does not compile:\n{}", render(&errors))),
    }
}

#[test]
fn every_kd_block_in_the_language_reference_compiles() {
    let root = repo_root();
    let doc = root.join("docs").join("language.md");
    let markdown = match std::fs::read_to_string(&doc) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {}: {e}", doc.display()),
    };
    let blocks = match fenced_blocks(&markdown) {
        Ok(blocks) => blocks,
        Err(e) => panic!("docs/language.md: {e}"),
    };
    let file = root.join("docs").join("block.kd");
    let kd: Vec<&Block> = blocks.iter().filter(|b| b.info == "kd").collect();
    assert!(
        kd.len() >= 20,
        "docs/language.md has only {} `kd` blocks; did the extraction break?",
        kd.len()
    );
    let failures: Vec<String> = kd
        .iter()
        .filter_map(|block| {
            check_block(block, &file)
                .map(|why| format!("docs/language.md:{}: the `kd` block {why}", block.line))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} `kd` blocks fail:\n\n{}",
        failures.len(),
        kd.len(),
        failures.join("\n")
    );
}

/// Section 1 shows `examples/digits.kd` as it is, with the data path written from `docs/`.
#[test]
fn the_first_example_is_examples_digits_kd() {
    let root = repo_root();
    let read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let markdown = read(&root.join("docs").join("language.md"));
    let example = read(&root.join("examples").join("digits.kd"));
    let first = match fenced_blocks(&markdown) {
        Ok(blocks) => blocks.into_iter().find(|b| b.info == "kd"),
        Err(e) => panic!("docs/language.md: {e}"),
    };
    let Some(first) = first else {
        panic!("docs/language.md has no `kd` block");
    };
    let expected = example.replace(
        "csv(\"data/digits.csv.gz\")",
        "csv(\"../examples/data/digits.csv.gz\")",
    );
    assert!(
        first.source == expected,
        "the `kd` block on line {} of docs/language.md should be examples/digits.kd with \
         `csv(\"../examples/data/digits.csv.gz\")`; copy the example into it again",
        first.line
    );
}

#[test]
fn fenced_blocks_are_found_with_their_lines_and_info() {
    let text =
        "# t\n\n```kd\npipeline p {}\n```\n\n````text\n```kd\n````\n  ~~~kd extra\nx\n  ~~~\n";
    let blocks = match fenced_blocks(text) {
        Ok(blocks) => blocks,
        Err(e) => panic!("{e}"),
    };
    let found: Vec<(usize, &str, &str)> = blocks
        .iter()
        .map(|b| (b.line, b.info.as_str(), b.source.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, "kd", "pipeline p {}\n"),
            (7, "text", "```kd\n"),
            (10, "kd", "x\n"),
        ]
    );
    assert!(fenced_blocks("```kd\nopen\n").is_err());
}

#[test]
fn first_lines_say_what_a_block_expects() {
    let set = |codes: &[&str]| codes.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(expectation("pipeline p {}\n"), Expect::Compiles);
    assert_eq!(
        expectation("// error: kd::check::missing\n"),
        Expect::Errors(set(&["kd::check::missing"]))
    );
    assert_eq!(
        expectation("// error: kd::check::file, kd::check::missing\n"),
        Expect::Errors(set(&["kd::check::file", "kd::check::missing"]))
    );
    assert_eq!(
        expectation("// warning: kd::check::unused\n"),
        Expect::Warnings(set(&["kd::check::unused"]))
    );
}
