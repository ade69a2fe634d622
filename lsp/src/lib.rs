//! `kdc lsp`: a language server over stdio for `.kd` files (docs/editors.md).
//!
//! Diagnostics are `kdc check`'s own (codes, ranges, help), computed on a thread of their
//! own so a slow data file never holds up the editor: edits that arrive meanwhile replace
//! the queued text, and only the newest is checked. Everything else (hover, completion,
//! definitions, references, rename, symbols, formatting) answers from the document's
//! syntax tree at once, and from the last Plan that checked for what only the checker
//! knows (shapes, parameters, taps, splits).

mod index;
mod words;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kd_grammar::ast::{Declaration, Program, RoleSource, Span};
use kd_plan::Plan;
use lsp_server::{Connection, Message, Notification, Request, RequestId, Response};
use lsp_types::*;

use index::{symbol_at, symbols, Lines, Space, Symbol};

/// Serves one editor over stdin and stdout until it says `exit`.
pub fn serve_stdio() -> Result<(), String> {
    let (connection, io) = Connection::stdio();
    let capabilities = ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Kind(TextDocumentSyncKind::FULL)),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec![".".into()]),
            ..Default::default()
        }),
        definition_provider: Some(OneOf::Left(true)),
        references_provider: Some(OneOf::Left(true)),
        rename_provider: Some(OneOf::Left(true)),
        document_symbol_provider: Some(OneOf::Left(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        ..Default::default()
    };
    let capabilities = serde_json::to_value(capabilities).map_err(|e| e.to_string())?;
    connection
        .initialize(capabilities)
        .map_err(|e| format!("initialize: {e}"))?;
    let plans: Arc<Mutex<HashMap<String, Plan>>> = Arc::default();
    let (jobs, queue) = mpsc::channel::<Job>();
    let checker = {
        let sender = connection.sender.clone();
        let plans = plans.clone();
        std::thread::spawn(move || check_loop(queue, sender, plans))
    };
    let mut server = Server {
        docs: HashMap::new(),
        plans,
        jobs,
    };
    for message in &connection.receiver {
        match message {
            Message::Request(request) => {
                if connection
                    .handle_shutdown(&request)
                    .map_err(|e| e.to_string())?
                {
                    break;
                }
                // A bug in one answer must not take the editor's server down with it.
                let id = request.id.clone();
                let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.request(request)
                }))
                .unwrap_or_else(|_| {
                    Response::new_err(
                        id,
                        lsp_server::ErrorCode::InternalError as i32,
                        "kdc lsp hit a bug answering this; please report it with the file".into(),
                    )
                });
                connection
                    .sender
                    .send(Message::Response(response))
                    .map_err(|e| e.to_string())?;
            }
            Message::Notification(n) => server.notification(n),
            Message::Response(_) => {}
        }
    }
    // The writer thread ends when every sender is gone: the checker's (it ends once the
    // server's job queue closes) and the connection's.
    drop(server);
    let _ = checker.join();
    drop(connection);
    io.join().map_err(|e| e.to_string())
}

/// A text to check.
struct Job {
    uri: Uri,
    version: i32,
    text: String,
}

/// Checks the newest text of each document and publishes its diagnostics.
fn check_loop(
    queue: mpsc::Receiver<Job>,
    sender: crossbeam_channel::Sender<Message>,
    plans: Arc<Mutex<HashMap<String, Plan>>>,
) {
    while let Ok(first) = queue.recv() {
        let mut newest: Vec<Job> = vec![first];
        while let Ok(job) = queue.try_recv() {
            newest.retain(|j| j.uri != job.uri);
            newest.push(job);
        }
        for job in newest {
            let path = file_path(&job.uri);
            let lines = Lines::new(&job.text);
            let compiled = std::panic::catch_unwind(|| kd_compiler::compile(&job.text, &path, &[]));
            let Ok(compiled) = compiled else {
                continue;
            };
            let diagnostics = match compiled {
                Ok(compiled) => {
                    if let Ok(mut plans) = plans.lock() {
                        plans.insert(job.uri.as_str().to_string(), compiled.plan);
                    }
                    compiled
                        .warnings
                        .iter()
                        .map(|d| diagnostic(d, &lines, &job.uri))
                        .collect()
                }
                Err(errors) => errors
                    .iter()
                    .map(|d| diagnostic(d, &lines, &job.uri))
                    .collect(),
            };
            let params = PublishDiagnosticsParams {
                uri: job.uri,
                diagnostics,
                version: Some(job.version),
            };
            let note = Notification::new("textDocument/publishDiagnostics".into(), params);
            if sender.send(Message::Notification(note)).is_err() {
                return;
            }
        }
    }
}

/// A `kdc check` diagnostic for the editor: the first label's range, the message with its
/// help, the code, and the other labels as related information.
fn diagnostic(d: &kd_compiler::KdError, lines: &Lines, uri: &Uri) -> Diagnostic {
    use miette::Diagnostic as _;
    let labels: Vec<miette::LabeledSpan> = d.labels().map(|l| l.collect()).unwrap_or_default();
    let range = |l: &miette::LabeledSpan| lines.range(Span::new(l.offset(), l.offset() + l.len()));
    let mut message = d.to_string();
    if let Some(label) = labels.first().and_then(|l| l.label()) {
        message.push_str(&format!(" ({label})"));
    }
    if let Some(help) = d.help() {
        message.push_str(&format!("\nhelp: {help}"));
    }
    let related: Vec<DiagnosticRelatedInformation> = labels
        .iter()
        .skip(1)
        .map(|l| DiagnosticRelatedInformation {
            location: Location::new(uri.clone(), range(l)),
            message: l.label().unwrap_or("here").to_string(),
        })
        .collect();
    Diagnostic {
        range: labels.first().map(range).unwrap_or_default(),
        severity: Some(match d.is_error() {
            true => DiagnosticSeverity::ERROR,
            false => DiagnosticSeverity::WARNING,
        }),
        code: d.code().map(|c| NumberOrString::String(c.to_string())),
        source: Some("kdc".into()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..Default::default()
    }
}

/// The file a `file://` URI names (percent-escapes decoded).
fn file_path(uri: &Uri) -> PathBuf {
    let text = uri.as_str();
    let path = text.strip_prefix("file://").unwrap_or(text);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// An open document and what was parsed of it.
struct Document {
    uri: Uri,
    text: String,
    /// The last text that parsed (completion keeps its declarations while a line is half
    /// typed).
    program: Option<Program>,
    symbols: Vec<Symbol>,
    /// Whether `program` and `symbols` are of `text` itself: positions of an older text
    /// would point at the wrong characters, so navigation and rename wait for a parse.
    fresh: bool,
}

struct Server {
    docs: HashMap<String, Document>,
    plans: Arc<Mutex<HashMap<String, Plan>>>,
    jobs: mpsc::Sender<Job>,
}

/// Deserialises a request's parameters or answers with an error.
fn params<P: serde::de::DeserializeOwned>(request: &Request) -> Result<P, Response> {
    serde_json::from_value(request.params.clone()).map_err(|e| {
        Response::new_err(
            request.id.clone(),
            lsp_server::ErrorCode::InvalidParams as i32,
            e.to_string(),
        )
    })
}

fn ok<T: serde::Serialize>(id: RequestId, value: T) -> Response {
    Response::new_ok(
        id,
        serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
    )
}

impl Server {
    fn notification(&mut self, n: Notification) {
        match n.method.as_str() {
            "textDocument/didOpen" => {
                if let Ok(p) = serde_json::from_value::<DidOpenTextDocumentParams>(n.params) {
                    let d = p.text_document;
                    self.update(d.uri, d.version, d.text);
                }
            }
            "textDocument/didChange" => {
                if let Ok(p) = serde_json::from_value::<DidChangeTextDocumentParams>(n.params) {
                    if let Some(change) = p.content_changes.into_iter().last() {
                        self.update(p.text_document.uri, p.text_document.version, change.text);
                    }
                }
            }
            "textDocument/didClose" => {
                if let Ok(p) = serde_json::from_value::<DidCloseTextDocumentParams>(n.params) {
                    self.docs.remove(p.text_document.uri.as_str());
                    if let Ok(mut plans) = self.plans.lock() {
                        plans.remove(p.text_document.uri.as_str());
                    }
                }
            }
            _ => {}
        }
    }

    fn update(&mut self, uri: Uri, version: i32, text: String) {
        let key = uri.as_str().to_string();
        let parsed = kd_grammar::parse(&text).ok();
        let doc = self.docs.entry(key).or_insert_with(|| Document {
            uri: uri.clone(),
            text: String::new(),
            program: None,
            symbols: Vec::new(),
            fresh: false,
        });
        doc.text = text.clone();
        doc.fresh = parsed.is_some();
        if let Some(program) = parsed {
            doc.symbols = symbols(&program);
            doc.program = Some(program);
        }
        let _ = self.jobs.send(Job { uri, version, text });
    }

    fn request(&mut self, request: Request) -> Response {
        let id = request.id.clone();
        let result = match request.method.as_str() {
            "textDocument/hover" => params::<HoverParams>(&request).map(|p| {
                let at = p.text_document_position_params;
                ok(id.clone(), self.hover(&at.text_document.uri, at.position))
            }),
            "textDocument/completion" => params::<CompletionParams>(&request).map(|p| {
                let at = p.text_document_position;
                ok(
                    id.clone(),
                    self.completion(&at.text_document.uri, at.position),
                )
            }),
            "textDocument/definition" => params::<GotoDefinitionParams>(&request).map(|p| {
                let at = p.text_document_position_params;
                let found = self.locations(&at.text_document.uri, at.position, false, true);
                ok(id.clone(), found.and_then(|l| l.into_iter().next()))
            }),
            "textDocument/references" => params::<ReferenceParams>(&request).map(|p| {
                let at = p.text_document_position;
                let with_decl = p.context.include_declaration;
                ok(
                    id.clone(),
                    self.locations(&at.text_document.uri, at.position, true, with_decl),
                )
            }),
            "textDocument/rename" => params::<RenameParams>(&request).and_then(|p| {
                let at = p.text_document_position;
                self.rename(&at.text_document.uri, at.position, &p.new_name)
                    .map(|edit| ok(id.clone(), edit))
                    .map_err(|message| {
                        Response::new_err(
                            id.clone(),
                            lsp_server::ErrorCode::InvalidParams as i32,
                            message,
                        )
                    })
            }),
            "textDocument/documentSymbol" => params::<DocumentSymbolParams>(&request)
                .map(|p| ok(id.clone(), self.document_symbols(&p.text_document.uri))),
            "textDocument/formatting" => params::<DocumentFormattingParams>(&request)
                .map(|p| ok(id.clone(), self.format(&p.text_document.uri))),
            _ => Err(Response::new_err(
                id.clone(),
                lsp_server::ErrorCode::MethodNotFound as i32,
                format!("kdc lsp does not answer `{}`", request.method),
            )),
        };
        result.unwrap_or_else(|error| error)
    }

    fn doc(&self, uri: &Uri) -> Option<&Document> {
        self.docs.get(uri.as_str())
    }

    /// The document, when its names are of its current text.
    fn parsed_doc(&self, uri: &Uri) -> Option<&Document> {
        self.doc(uri).filter(|d| d.fresh)
    }

    fn plan(&self, uri: &Uri) -> Option<Plan> {
        self.plans.lock().ok()?.get(uri.as_str()).cloned()
    }

    /// The word at `offset`, its span, and the name before a `.` in front of it.
    fn word_at(text: &str, offset: usize) -> Option<(String, Span, Option<String>)> {
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let offset = offset.min(text.len());
        let start = word_start(text, offset);
        let end = text[offset..]
            .find(|c: char| !is_word(c))
            .map_or(text.len(), |i| offset + i);
        if start >= end {
            return None;
        }
        let owner = text[..start]
            .strip_suffix('.')
            .map(|before| before[word_start(before, before.len())..].to_string());
        Some((text[start..end].to_string(), Span::new(start, end), owner))
    }

    fn hover(&self, uri: &Uri, position: Position) -> Option<Hover> {
        let doc = self.doc(uri)?;
        let lines = Lines::new(&doc.text);
        let offset = lines.offset(position);
        let (word, span, owner) = Self::word_at(&doc.text, offset)?;
        let plan = self.plan(uri);
        let found = match doc.fresh {
            true => symbol_at(&doc.symbols, offset),
            false => None,
        };
        let text = match (found, owner) {
            (_, Some(owner)) => member_hover(plan.as_ref(), &owner, &word)?,
            (Some((sym, _)), None) => symbol_hover(plan.as_ref(), sym),
            (None, None) => words::describe(&word)?.to_string(),
        };
        Some(Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: text,
            }),
            range: Some(lines.range(span)),
        })
    }

    fn completion(&self, uri: &Uri, position: Position) -> Option<CompletionResponse> {
        let doc = self.doc(uri)?;
        let lines = Lines::new(&doc.text);
        let offset = lines.offset(position);
        let before = &doc.text[..offset];
        let typed = word_start(before, before.len());
        let item = |label: &str, kind: CompletionItemKind, detail: Option<String>| CompletionItem {
            label: label.to_string(),
            kind: Some(kind),
            detail,
            ..Default::default()
        };
        // After `NAME.`: a model's taps, or a data set's splits.
        if let Some(owner) = before[..typed].strip_suffix('.') {
            let owner = &owner[word_start(owner, owner.len())..];
            let plan = self.plan(uri)?;
            let items: Vec<CompletionItem> = if let Some(model) = plan.model(owner) {
                let mut names: Vec<(String, String)> = model
                    .taps
                    .iter()
                    .map(|t| (t.name.clone(), format!("{:?} {:?}", t.ty.kind, t.ty.shape)))
                    .collect();
                names.push(("output".into(), "the model's output".into()));
                names
                    .iter()
                    .map(|(n, d)| item(n, CompletionItemKind::FIELD, Some(d.clone())))
                    .collect()
            } else if let Some(data) = plan.data(owner) {
                data.splits
                    .iter()
                    .map(|s| item(&s.name, CompletionItemKind::FIELD, None))
                    .collect()
            } else {
                Vec::new()
            };
            return Some(CompletionResponse::Array(items));
        }
        let mut items: Vec<CompletionItem> = words::everywhere()
            .into_iter()
            .map(|(w, kind)| item(w, kind, words::describe(w).map(str::to_string)))
            .collect();
        for sym in &doc.symbols {
            items.push(item(
                &sym.name,
                CompletionItemKind::VARIABLE,
                Some(format!("{:?}", sym.space)),
            ));
        }
        // Inside a declaration with settings: its keys.
        if let Some(program) = &doc.program {
            let inside = program.declarations.iter().find_map(|d| {
                let (span, keys): (Span, &[&str]) = match d {
                    Declaration::Pipeline(p) => {
                        (p.span, kd_compiler::vocabulary::PIPELINE_SETTINGS)
                    }
                    Declaration::Data(x) => (x.span, kd_compiler::vocabulary::DATA_SETTINGS),
                    Declaration::Role(r) => match &r.source {
                        RoleSource::Bert(_) => (r.span, kd_compiler::vocabulary::BERT_SETTINGS),
                        RoleSource::Architecture { .. } => {
                            (r.span, kd_compiler::vocabulary::INSTANCE_SETTINGS)
                        }
                        RoleSource::Prune(_) => (r.span, kd_compiler::vocabulary::PRUNE_SETTINGS),
                        RoleSource::Quantize(_) => {
                            (r.span, kd_compiler::vocabulary::QUANTIZE_SETTINGS)
                        }
                        RoleSource::Onnx(_) => return None,
                    },
                    _ => return None,
                };
                (span.start < offset && offset <= span.end).then_some(keys)
            });
            for key in inside.unwrap_or(&[]) {
                items.push(item(
                    key,
                    CompletionItemKind::PROPERTY,
                    Some("setting".into()),
                ));
            }
        }
        Some(CompletionResponse::Array(items))
    }

    /// The declaration (when `with_decl`) and, with `uses`, every use of the symbol at
    /// `position`.
    fn locations(
        &self,
        uri: &Uri,
        position: Position,
        uses: bool,
        with_decl: bool,
    ) -> Option<Vec<Location>> {
        let doc = self.parsed_doc(uri)?;
        let lines = Lines::new(&doc.text);
        let (sym, _) = symbol_at(&doc.symbols, lines.offset(position))?;
        let mut spans = Vec::new();
        if with_decl {
            spans.push(sym.def);
        }
        if uses {
            spans.extend(sym.uses.iter().copied());
        }
        Some(
            spans
                .into_iter()
                .map(|s| Location::new(doc.uri.clone(), lines.range(s)))
                .collect(),
        )
    }

    fn rename(
        &self,
        uri: &Uri,
        position: Position,
        new_name: &str,
    ) -> Result<WorkspaceEdit, String> {
        use kd_compiler::vocabulary as v;
        let valid = new_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && new_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !["true", "false"].contains(&new_name);
        if !valid {
            return Err(format!("`{new_name}` is not a name kdc accepts"));
        }
        // Words the language gives a meaning would change what the program says.
        let taken = v::JOINING_WORDS
            .iter()
            .chain(v::DECLARATION_KEYWORDS)
            .chain(v::STATEMENT_KEYWORDS)
            .chain(v::BUILTINS)
            .chain(v::BUILTIN_VALUES)
            .any(|w| *w == new_name);
        if taken {
            return Err(format!("`{new_name}` is a word of the language"));
        }
        let doc = self
            .parsed_doc(uri)
            .ok_or("the file does not parse: mend it before renaming")?;
        let lines = Lines::new(&doc.text);
        let (sym, _) = symbol_at(&doc.symbols, lines.offset(position))
            .ok_or("nothing declared here to rename")?;
        if doc
            .symbols
            .iter()
            .any(|s| s.space == sym.space && s.name == new_name)
        {
            return Err(format!("`{new_name}` is already declared"));
        }
        let edits: Vec<TextEdit> = std::iter::once(sym.def)
            .chain(sym.uses.iter().copied())
            .map(|s| TextEdit::new(lines.range(s), new_name.to_string()))
            .collect();
        Ok(WorkspaceEdit {
            changes: Some(HashMap::from([(doc.uri.clone(), edits)])),
            ..Default::default()
        })
    }

    fn document_symbols(&self, uri: &Uri) -> Option<DocumentSymbolResponse> {
        let doc = self.parsed_doc(uri)?;
        let lines = Lines::new(&doc.text);
        #[allow(deprecated)] // `deprecated` is a required field of the struct
        let list = doc
            .symbols
            .iter()
            .map(|s| DocumentSymbol {
                name: s.name.clone(),
                detail: Some(format!("{:?}", s.space).to_lowercase()),
                kind: match s.space {
                    Space::Pipeline => SymbolKind::MODULE,
                    Space::Data => SymbolKind::STRUCT,
                    Space::Augment => SymbolKind::FUNCTION,
                    Space::Architecture => SymbolKind::CLASS,
                    Space::Instance => SymbolKind::OBJECT,
                    Space::Loss => SymbolKind::FUNCTION,
                    Space::Stage => SymbolKind::EVENT,
                },
                tags: None,
                deprecated: None,
                range: lines.range(s.decl.to(s.def)),
                selection_range: lines.range(s.def),
                children: None,
            })
            .collect();
        Some(DocumentSymbolResponse::Nested(list))
    }

    fn format(&self, uri: &Uri) -> Option<Vec<TextEdit>> {
        let doc = self.doc(uri)?;
        let formatted = kd_grammar::format(&doc.text).ok()?;
        if formatted == doc.text {
            return Some(Vec::new());
        }
        let lines = Lines::new(&doc.text);
        Some(vec![TextEdit::new(
            lines.range(Span::new(0, doc.text.len())),
            formatted,
        )])
    }
}

/// Where the word ending at `offset` starts (after the last character that is no part of
/// a name, whatever its width in bytes).
fn word_start(text: &str, offset: usize) -> usize {
    text[..offset]
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// Hover over a declared name: what the checker made of it.
fn symbol_hover(plan: Option<&Plan>, sym: &Symbol) -> String {
    let what = format!("{:?}", sym.space).to_lowercase();
    let Some(plan) = plan else {
        return format!("{what} `{}` (not checked yet)", sym.name);
    };
    match sym.space {
        Space::Instance => match plan.model(&sym.name) {
            Some(m) => format!(
                "{:?} `{}` = {}: {} parameters, {} FLOPs per sample\n\n```text\n{}```",
                m.role,
                m.name,
                m.architecture,
                kd_compiler::explain::group(m.params as u64),
                kd_compiler::explain::group(m.flops),
                kd_compiler::explain::model_table(m)
            ),
            None => format!("model `{}`", sym.name),
        },
        Space::Architecture => match plan.models.iter().find(|m| m.architecture == sym.name) {
            Some(m) => format!(
                "model `{}`: {} parameters, {} FLOPs per sample\n\n```text\n{}```",
                sym.name,
                kd_compiler::explain::group(m.params as u64),
                kd_compiler::explain::group(m.flops),
                kd_compiler::explain::model_table(m)
            ),
            None => format!("model `{}` (no instance of it)", sym.name),
        },
        Space::Data => match plan.data(&sym.name) {
            Some(d) => format!(
                "data `{}`: {} of shape {:?}, {} classes ({}); splits {}",
                d.name,
                match d.samples {
                    Some(kd_plan::Samples {
                        train,
                        test: Some(test),
                    }) => {
                        format!("{train} training and {test} test samples")
                    }
                    Some(kd_plan::Samples { train, test: None }) => format!("{train} samples"),
                    None => "samples".to_string(),
                },
                d.sample_shape,
                d.classes,
                d.class_names.join(", "),
                d.splits
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("data `{}`", sym.name),
        },
        _ => format!("{what} `{}`", sym.name),
    }
}

/// Hover over `owner.word`: a model's tap, or a data set's split.
fn member_hover(plan: Option<&Plan>, owner: &str, word: &str) -> Option<String> {
    let plan = plan?;
    if let Some(model) = plan.model(owner) {
        if word == "output" {
            return Some(format!("`{owner}.output`: the model's output"));
        }
        let tap = model.taps.iter().find(|t| t.name == word)?;
        return Some(format!(
            "tap `{owner}.{word}`: {:?} of shape {:?} (the output of layer {})",
            tap.ty.kind, tap.ty.shape, tap.layer
        ));
    }
    let data = plan.data(owner)?;
    let split = data.splits.iter().find(|s| s.name == word)?;
    Some(format!(
        "split `{owner}.{word}`: {:?}{}",
        split.size,
        if split.labeled { "" } else { ", unlabeled" }
    ))
}
