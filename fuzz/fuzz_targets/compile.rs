//! Arbitrary bytes, read as UTF-8 lossily, through the whole compiler: parser, checker
//! (which reads the data files a program names), lowering and passes. Any panic is a bug:
//! every input must give a Plan or diagnostics. The formatter (`kdc fmt`) reads the same
//! input: it must not panic either, and what it writes must format to itself.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A scratch folder laid out so both kinds of seed find their data: the examples' own
/// `data/digits.csv.gz` next to the input, and `../../../examples/data/digits.csv.gz` as the
/// test cases name it.
fn input_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kd-fuzz-compile-{}", std::process::id()));
        let deep = root.join("a/b/c");
        let digits = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/data/digits.csv.gz"
        ))
        .unwrap_or_default();
        for dir in [deep.join("data"), root.join("examples/data")] {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join("digits.csv.gz"), &digits);
        }
        deep.join("input.kd")
    })
}

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let _ = kd_compiler::compile(&source, input_path(), &[]);
    if let Ok(formatted) = kd_grammar::format(&source) {
        assert_eq!(kd_grammar::format(&formatted).ok(), Some(formatted));
    }
});
