//! `kdc lsp` driven as an editor drives it: JSON-RPC over the process's stdin and stdout,
//! on a real example opened, broken, half typed and mended (with non-ASCII comments, so
//! UTF-16 columns differ from bytes), every request the server offers, and a few hundred
//! random edits it must survive.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::root;
use serde_json::{json, Value};

struct Editor {
    child: Child,
    stdin: ChildStdin,
    incoming: mpsc::Receiver<Value>,
    next_id: i64,
    /// Notifications read while waiting for something else.
    notes: Vec<Value>,
}

impl Editor {
    fn start() -> Editor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kdc"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut length = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; length.expect("a Content-Length header")];
                reader.read_exact(&mut body).unwrap();
                if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut editor = Editor {
            child,
            stdin,
            incoming,
            next_id: 0,
            notes: Vec::new(),
        };
        let init = editor.request(
            "initialize",
            json!({"capabilities": {}, "processId": null, "rootUri": null}),
        );
        assert!(
            init["capabilities"]["hoverProvider"]
                .as_bool()
                .unwrap_or(false),
            "{init}"
        );
        editor.notify("initialized", json!({}));
        editor
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn next(&mut self) -> Value {
        self.incoming
            .recv_timeout(Duration::from_secs(60))
            .expect("the server answers within a minute")
    }

    /// The result of a request (panics on an error response).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let reply = self.call(method, params);
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The whole response to a request.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let message = self.next();
            if message["id"] == json!(id) {
                return message;
            }
            self.notes.push(message);
        }
    }

    /// The diagnostics published for `version` of the document.
    fn diagnostics(&mut self, version: i64) -> Vec<Value> {
        self.diagnostics_of(&uri(), version)
    }

    /// The diagnostics published for `version` of the document at `uri`.
    fn diagnostics_of(&mut self, uri: &str, version: i64) -> Vec<Value> {
        let started = Instant::now();
        loop {
            if let Some(i) = self.notes.iter().position(|n| {
                n["method"] == "textDocument/publishDiagnostics"
                    && n["params"]["version"] == json!(version)
                    && n["params"]["uri"] == json!(uri)
            }) {
                let note = self.notes.remove(i);
                return note["params"]["diagnostics"].as_array().unwrap().clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no diagnostics for version {version}"
            );
            let message = self.next();
            self.notes.push(message);
        }
    }

    fn shutdown(mut self) {
        let _ = self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "kdc lsp exited with {status}");
    }
}

fn uri() -> String {
    format!("file://{}", root().join("examples/digits.kd").display())
}

/// The digits example with non-ASCII comments in front, as an editor holds it.
fn digits() -> String {
    let text = std::fs::read_to_string(root().join("examples/digits.kd")).unwrap();
    format!("// Données: 𝛼β ✓ (UTF-16 counts 𝛼 twice)\n{text}")
}

/// The LSP position of byte `offset` of `text`: line, and UTF-16 units into it.
fn position(text: &str, offset: usize) -> Value {
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    json!({"line": line, "character": before[start..].encode_utf16().count()})
}

fn at(text: &str, needle: &str, skip: usize) -> Value {
    let offset = text.find(needle).unwrap_or_else(|| panic!("no `{needle}`")) + skip;
    json!({"textDocument": {"uri": uri()}, "position": position(text, offset)})
}

fn change(editor: &mut Editor, version: i64, text: &str) {
    editor.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri(), "version": version}, "contentChanges": [{"text": text}]}),
    );
}

/// What `kdc check --error-format json` says about `text` (as examples/digits.kd).
fn check_json(text: &str) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!("kdc-lsp-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::copy(
        root().join("examples/data/digits.csv.gz"),
        dir.join("data/digits.csv.gz"),
    )
    .unwrap();
    let file = dir.join("digits.kd");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kdc"))
        .args(["--error-format", "json", "check"])
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn an_editor_session_on_the_digits_example() {
    let mut editor = Editor::start();
    let text = digits();
    editor.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri(), "languageId": "kd", "version": 1, "text": text}}),
    );
    assert_eq!(
        editor.diagnostics(1),
        Vec::<Value>::new(),
        "the example checks"
    );

    // Broken: the student's logits no longer match the ten classes.
    let broken = text.replace(
        "linear(32) relu\n  linear(10) as logits",
        "linear(32) relu\n  linear(7) as logits",
    );
    assert_ne!(broken, text);
    change(&mut editor, 2, &broken);
    let found = editor.diagnostics(2);
    let expected = check_json(&broken);
    assert!(!expected.is_empty());
    let errors: Vec<&Value> = expected
        .iter()
        .filter(|d| d["severity"] == "error")
        .collect();
    assert_eq!(
        found.iter().filter(|d| d["severity"] == json!(1)).count(),
        errors.len(),
        "{found:#?}\nagainst kdc check: {expected:#?}"
    );
    for (lsp, check) in found.iter().zip(&expected) {
        assert_eq!(lsp["code"], check["code"], "{lsp}");
        assert_eq!(lsp["source"], "kdc");
        let start = check["start"].as_u64().unwrap() as usize;
        let end = check["end"].as_u64().unwrap() as usize;
        assert_eq!(
            lsp["range"]["start"],
            position(&broken, start),
            "{lsp}\n{check}"
        );
        assert_eq!(
            lsp["range"]["end"],
            position(&broken, end),
            "{lsp}\n{check}"
        );
        assert!(lsp["message"]
            .as_str()
            .unwrap()
            .starts_with(check["message"].as_str().unwrap()));
        if let Some(help) = check["help"].as_str() {
            assert!(lsp["message"].as_str().unwrap().contains(help), "{lsp}");
        }
    }

    // Half typed: a syntax error, and the server stays.
    let half = text.replace("model mlp {", "model mlp {\n  linear(");
    change(&mut editor, 3, &half);
    let syntax = editor.diagnostics(3);
    assert_eq!(syntax.len(), 1, "{syntax:#?}");
    assert_eq!(syntax[0]["code"], "kd::parse::syntax");
    // The names of the last text that parsed are not this text's: renaming waits.
    let refused = editor.call(
        "textDocument/rename",
        json!({"textDocument": {"uri": uri()}, "position": position(&half, half.find("model cnn").unwrap() + 6), "newName": "net"}),
    );
    assert!(refused.get("error").is_some(), "{refused}");

    // Mended.
    change(&mut editor, 4, &text);
    assert_eq!(editor.diagnostics(4), Vec::<Value>::new());

    // Hover: a model instance shows its layers; a built-in its meaning; a tap its shape.
    let hover = editor.request("textDocument/hover", at(&text, "teacher t = cnn", 12));
    let shown = hover["contents"]["value"].as_str().unwrap();
    assert!(
        shown.contains("parameters") && shown.contains("conv2d"),
        "{shown}"
    );
    let hover = editor.request("textDocument/hover", at(&text, "kl(softmax", 0));
    assert!(
        hover["contents"]["value"].as_str().unwrap().contains("KL"),
        "{hover}"
    );
    let hover = editor.request("textDocument/hover", at(&text, "t.logits, T)", 3));
    assert!(
        hover["contents"]["value"]
            .as_str()
            .unwrap()
            .contains("tap `t.logits`"),
        "{hover}"
    );
    let hover = editor.request("textDocument/hover", at(&text, "on digits.train", 4));
    let shown = hover["contents"]["value"].as_str().unwrap();
    assert!(
        shown.contains("1797 samples") && shown.contains("10 classes"),
        "{shown}"
    );

    // Completion: a model's taps after `t.`; words and names elsewhere.
    let taps = editor.request("textDocument/completion", at(&text, "t.logits, T)", 2));
    let labels: Vec<&str> = taps
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    for tap in ["hidden", "logits", "output"] {
        assert!(labels.contains(&tap), "{labels:?}");
    }
    let words = editor.request("textDocument/completion", at(&text, "  epochs 30", 2));
    let labels: Vec<&str> = words
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    for word in [
        "linear",
        "cross_entropy",
        "adamw",
        "epochs",
        "scratch",
        "shift",
    ] {
        assert!(labels.contains(&word), "{word} not in {labels:?}");
    }
    let settings = editor.request(
        "textDocument/completion",
        at(&text, "  shape: [1, 8, 8]", 2),
    );
    assert!(settings
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["label"] == "max_len"));

    // Definition and references of the student `s`; the data set `digits` is not the
    // pipeline `digits`.
    let def = editor.request("textDocument/definition", at(&text, "distill t -> s", 13));
    assert_eq!(
        def["range"]["start"],
        position(&text, text.find("student s").unwrap() + 8)
    );
    let refs = editor.request(
        "textDocument/references",
        json!({"textDocument": {"uri": uri()}, "position": position(&text, text.find("data digits").unwrap() + 5),
               "context": {"includeDeclaration": true}}),
    );
    // The declaration, teach, distill (train and validate each), evaluate.
    assert_eq!(refs.as_array().unwrap().len(), 6, "{refs:#}");

    // Rename the architecture `mlp`: its declaration and its one use.
    let rename = editor.request(
        "textDocument/rename",
        json!({"textDocument": {"uri": uri()}, "position": position(&text, text.find("model mlp").unwrap() + 6), "newName": "tiny"}),
    );
    let edits = rename["changes"][uri()].as_array().unwrap();
    assert_eq!(edits.len(), 2, "{rename:#}");
    let refused = editor.call(
        "textDocument/rename",
        json!({"textDocument": {"uri": uri()}, "position": position(&text, text.find("model mlp").unwrap() + 6), "newName": "cnn"}),
    );
    assert!(
        refused.get("error").is_some(),
        "renaming onto a declared name is refused: {refused}"
    );

    // Symbols and formatting.
    let symbols = editor.request(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": uri()}}),
    );
    let names: Vec<&str> = symbols
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in [
        "digits", "shift", "cnn", "mlp", "t", "s", "hinton", "teach", "distill", "scratch",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let messy = text.replace("stage teach {", "stage   teach{");
    change(&mut editor, 5, &messy);
    let edits = editor.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": uri()}, "options": {"tabSize": 2, "insertSpaces": true}}),
    );
    let edits = edits.as_array().unwrap();
    assert_eq!(edits.len(), 1);
    assert_eq!(
        edits[0]["newText"].as_str().unwrap(),
        kd_grammar::format(&messy).unwrap()
    );
    assert_eq!(
        kd_grammar::format(&messy).unwrap(),
        text,
        "the example is already formatted"
    );
    editor.shutdown();
}

/// xorshift64, for edits that are the same on every run.
fn below(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n.max(1) as u64) as usize
}

#[test]
fn random_edits_never_stop_the_server() {
    let mut editor = Editor::start();
    let pieces = [
        "{", "}", "(", ")", "linear(", "t.", ".", ",", "\"", "/*", "//", " as ", "é𝛼", "\n",
        "loss ", "=", "-> ",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut examples: Vec<_> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kd"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5);
    for file in &examples {
        let uri = format!("file://{}", file.display());
        let mut text = format!("// é𝛼 ✓\n{}", std::fs::read_to_string(file).unwrap());
        editor.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "kd", "version": 1, "text": text}}),
        );
        let last = 120;
        for version in 2..=last {
            // Cut a random range or insert a random piece, at character boundaries.
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            let a = chars
                .get(below(&mut state, chars.len()))
                .map_or(text.len(), |c| c.0);
            if below(&mut state, 2) == 0 {
                let b = chars
                    .get(below(&mut state, chars.len()))
                    .map_or(text.len(), |c| c.0)
                    .max(a);
                let b = (a + (b - a).min(40)).min(text.len());
                let b = (b..=text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap();
                text.replace_range(a..b, "");
            } else {
                text.insert_str(a, pieces[below(&mut state, pieces.len())]);
            }
            editor.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
            );
            let offset = below(&mut state, text.len() + 1);
            let offset = (0..=offset)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap();
            let place = json!({"textDocument": {"uri": uri}, "position": position(&text, offset)});
            for method in [
                "textDocument/hover",
                "textDocument/completion",
                "textDocument/definition",
                "textDocument/references",
                "textDocument/formatting",
            ] {
                let mut params = place.clone();
                match method {
                    "textDocument/references" => {
                        params["context"] = json!({"includeDeclaration": true})
                    }
                    "textDocument/formatting" => {
                        params["options"] = json!({"tabSize": 2, "insertSpaces": true})
                    }
                    _ => {}
                }
                let reply = editor.call(method, params);
                assert!(
                    reply.get("error").is_none(),
                    "{method} after edit {version} of {}: {reply}",
                    file.display()
                );
            }
        }
        // The checker is alive too: the last version's diagnostics arrive.
        let _ = editor.diagnostics_of(&uri, last);
    }
    editor.shutdown();
}
