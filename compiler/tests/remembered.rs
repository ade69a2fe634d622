//! The checker remembers what it read of a data file for as long as the file is unchanged
//! (for `kdc lsp`, which checks on every keystroke): a file rewritten between two checks
//! in one process is read again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

fn check(dir: &Path) -> Result<(), String> {
    let source = "data d = csv(\"d.csv\") { label: 2, shape: [2], split { train: 0.5, test: 0.5 } }\n\
                  model m { input [2] linear(3) as logits }\n\
                  student s = m\n\
                  stage a { train s on d.train, loss cross_entropy(s.logits, label), optimizer sgd(lr: 0.1), epochs 1 }\n";
    kd_compiler::compile(source, &dir.join("p.kd"), &[])
        .map(|_| ())
        .map_err(|errors| format!("{errors:?}"))
}

#[test]
fn a_rewritten_data_file_is_read_again() {
    let dir = std::env::temp_dir().join(format!("kdc-remembered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("d.csv");
    std::fs::write(&csv, "0.1,0.2,0\n0.3,0.4,1\n0.5,0.6,2\n0.7,0.8,0\n").unwrap();
    check(&dir).expect("three classes fit linear(3)");
    check(&dir).expect("the same file, remembered, still fits");
    // A fourth class: the model no longer fits, and the check must see it.
    std::fs::write(&csv, "0.1,0.2,0\n0.3,0.4,1\n0.5,0.6,2\n0.7,0.8,3\n").unwrap();
    let error = check(&dir).expect_err("four classes do not fit linear(3)");
    assert!(error.contains("4 classes"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Text data laid out one folder per label is stamped by its folders: a new label folder
/// between two checks is seen.
#[test]
fn a_new_label_folder_is_seen() {
    let dir = std::env::temp_dir().join(format!("kdc-remembered-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/text/tokenizer.json");
    for label in ["ham", "spam"] {
        std::fs::create_dir_all(dir.join("mail").join(label)).unwrap();
        for i in 0..4 {
            std::fs::write(dir.join(format!("mail/{label}/{i}.txt")), "hello world").unwrap();
        }
    }
    let source = format!(
        "data d = text(\"mail\") {{ tokenizer: \"{}\", max_len: 8, split {{ train: 0.5, test: 0.5 }} }}\n\
         model m {{ input tokens[8] embedding(30522, 4) pool(mean) linear(2) as logits }}\n\
         student s = m\n\
         stage a {{ train s on d.train, loss cross_entropy(s.logits, label), optimizer sgd(lr: 0.1), epochs 1 }}\n",
        tokenizer.display()
    );
    let check = || {
        kd_compiler::compile(&source, &dir.join("p.kd"), &[])
            .map(|_| ())
            .map_err(|errors| format!("{errors:?}"))
    };
    check().expect("two labels fit linear(2)");
    check().expect("remembered, still two");
    std::fs::create_dir_all(dir.join("mail/phish")).unwrap();
    for i in 0..4 {
        std::fs::write(dir.join(format!("mail/phish/{i}.txt")), "hello").unwrap();
    }
    let error = check().expect_err("three labels do not fit linear(2)");
    assert!(error.contains("3 classes"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
