//! `data mail = text("data/spam") { tokenizer: "...", max_len: 128, classes {...} }`: text
//! data checked against its files (samples counted, every label mapped to a class) and its
//! tokenizer (vocabulary size, padding and mask tokens) before anything runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kd_grammar::ast::{DataDecl, SettingValue, Value, ValueKind};
use kd_plan::{DataSource, DataSpec, Normalize, TextFormat, TextSpec};
use kd_textdata::{Format, Layout};

use super::values::Fields;
use super::Cx;
use crate::diagnostics::{span, CheckError};

/// Raw label to class index, and the class names.
type ClassMap = (Vec<(String, usize)>, Vec<String>);

/// Settings that mean something for numeric data only.
const NUMERIC_ONLY: &[&str] = &[
    "header",
    "delimiter",
    "shape",
    "scale",
    "relabel",
    "normalize",
];

impl Cx<'_> {
    pub(super) fn text_data_decl(&mut self, decl: &DataDecl, fields: &Fields) -> Option<DataSpec> {
        self.refuse_numeric_settings(fields);
        self.text_source_decl(decl, fields)
    }

    /// Settings of numeric data (`shape`, `scale`, ...) given to text data are refused.
    pub(super) fn refuse_numeric_settings(&mut self, fields: &Fields) {
        for key in NUMERIC_ONLY {
            if let Some(setting) = fields.get(key) {
                self.invalid(
                    setting.key.span,
                    format!("`{key}` applies to numeric data, not text"),
                    "not for text",
                    Some("text data takes `text`, `label`, `tokenizer`, `max_len`, `classes`, `format`, `extension`, `skip_headers`, `limit` and `split`".into()),
                );
            }
        }
    }

    fn text_source_decl(&mut self, decl: &DataDecl, fields: &Fields) -> Option<DataSpec> {
        let args = self.args(&decl.source, &["path"], 1);
        let Some(path_value) = args.get("path", Some(0)) else {
            self.error(CheckError::Missing {
                message: "`text` needs a file or folder".into(),
                span: span(decl.source.span),
                label: "here".into(),
                help: Some("`text(\"data/reviews.jsonl\")` or `text(\"data/spam-assassin\")` (one sub-folder per label)".into()),
            });
            return None;
        };
        let text = self.string(path_value, "a path")?;
        let path = self.resolve_path(&text);
        if !path.exists() {
            self.error(CheckError::File {
                path: text.clone(),
                reason: "it does not exist".into(),
                span: span(path_value.span),
                help: Some(fetch_hint(&text)),
            });
            return None;
        }
        let format = match fields.value("format") {
            Some(v) => match self
                .choice(
                    v,
                    "text format",
                    &["jsonl", "json", "csv", "tsv", "folders"],
                )?
                .as_str()
            {
                "jsonl" => Format::Jsonl,
                "json" => Format::Json,
                "csv" => Format::Csv,
                "tsv" => Format::Tsv,
                _ => Format::Folders,
            },
            None => match Format::infer(&path) {
                Some(f) => f,
                None => {
                    self.invalid(
                        path_value.span,
                        format!("kdc cannot tell the format of `{text}` from its name"),
                        "which format?",
                        Some("add `format: jsonl` (or json, csv, tsv, folders)".into()),
                    );
                    return None;
                }
            },
        };
        if (format == Format::Folders) != path.is_dir() {
            self.invalid(
                path_value.span,
                if path.is_dir() {
                    format!("`{text}` is a folder, so its format is `folders`")
                } else {
                    format!("`folders` reads a folder, but `{text}` is a file")
                },
                "format and path disagree",
                None,
            );
            return None;
        }
        let field = |cx: &mut Self, key: &str, default: &str| -> Option<String> {
            match fields.value(key) {
                Some(v) => cx.string(v, key),
                None => Some(default.to_string()),
            }
        };
        let text_field = field(self, "text", "text")?;
        let label_field = field(self, "label", "label")?;
        let extension = match fields.value("extension") {
            Some(v) => Some(self.string(v, "extension")?),
            None => None,
        };
        let skip_headers = match fields.value("skip_headers") {
            Some(v) => self.boolean(v, "skip_headers")?,
            None => false,
        };
        let layout = Layout {
            format,
            text_field: text_field.clone(),
            label_field: label_field.clone(),
            extension: extension.clone(),
            skip_headers,
        };
        let read = || kd_textdata::read(&path, &layout, false);
        let records = match crate::remembered::remembered(&path, &format!("{layout:?}"), read) {
            Ok(records) => records,
            Err(e) => {
                self.error(CheckError::File {
                    path: text.clone(),
                    reason: e.reason,
                    span: span(path_value.span),
                    help: None,
                });
                return None;
            }
        };
        let count = records.len();
        let format = match format {
            Format::Jsonl => TextFormat::Jsonl,
            Format::Json => TextFormat::Json,
            Format::Csv => TextFormat::Csv,
            Format::Tsv => TextFormat::Tsv,
            Format::Folders => TextFormat::Folders,
        };
        let source = |classes| DataSource::Text {
            path: PathBuf::from(text),
            format,
            text_field,
            label_field,
            extension,
            classes,
            skip_headers,
        };
        self.text_spec(decl, fields, source, &records, None, (count, None))
    }

    /// The rest of text data from any source of labelled texts: classes (from `records`'
    /// labels, in `order` where the source has one), tokenizer, `max_len`, `limit` and
    /// splits, for `counts` samples in the training and the test part.
    pub(super) fn text_spec(
        &mut self,
        decl: &DataDecl,
        fields: &Fields,
        source: impl FnOnce(Vec<(String, usize)>) -> DataSource,
        records: &[kd_textdata::Record],
        order: Option<&[String]>,
        counts: (usize, Option<usize>),
    ) -> Option<DataSpec> {
        // Both are reported when both are wrong.
        let classes = self.text_classes(decl, fields, records, order);
        let tokenizer = self.tokenizer(decl, fields);
        let ((classes, class_names), tokenizer) = (classes?, tokenizer?);
        let max_len = match fields.value("max_len") {
            Some(v) => self.count(v, "max_len", 2)?,
            None => {
                self.error(CheckError::Missing {
                    message: format!("text data `{}` needs `max_len`", decl.name.name),
                    span: span(decl.name.span),
                    label: "here".into(),
                    help: Some(
                        "the length every sample is truncated or padded to, e.g. `max_len: 128`"
                            .into(),
                    ),
                });
                return None;
            }
        };
        if max_len > 1 << 16 {
            let at = fields.value("max_len").map_or(decl.span, |v| v.span);
            self.invalid(
                at,
                format!("max_len {max_len} is over 65536"),
                "too long",
                None,
            );
            return None;
        }
        let limit = match fields.value("limit") {
            Some(v) => Some(self.count(v, "limit", 1)?),
            None => None,
        };
        let count = limit.map_or(counts.0, |l| l.min(counts.0));
        let test_count = counts.1.map(|t| limit.map_or(t, |l| l.min(t)));
        let splits = self.splits(
            decl,
            fields.get("split").map(|s| (&s.value, s.span)),
            count,
            test_count,
            limit.is_some(),
        )?;
        let (tokenizer_path, facts) = tokenizer;
        Some(DataSpec {
            name: decl.name.name.clone(),
            source: source(classes),
            sample_shape: vec![max_len],
            classes: class_names.len(),
            class_names,
            relabel: None,
            limit,
            scale: 1.0,
            normalize: Normalize::None,
            splits,
            text: Some(TextSpec {
                tokenizer: tokenizer_path,
                max_len,
                vocab: facts.vocab,
                pad_id: facts.pad_id,
                mask_id: facts.mask_id,
                special_ids: facts.special_ids,
            }),
            samples: Some(kd_plan::Samples {
                train: count,
                test: test_count,
            }),
        })
    }

    /// `classes { ham: ["easy-ham-1", "hard-ham-1"], spam: ["spam-1"] }`, or
    /// `classes: ["neg", "pos"]`, or (neither) the distinct labels in `order`, or sorted. Every label in
    /// the data must land in a class.
    pub(super) fn text_classes(
        &mut self,
        decl: &DataDecl,
        fields: &Fields,
        records: &[kd_textdata::Record],
        order: Option<&[String]>,
    ) -> Option<ClassMap> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for r in records {
            *seen.entry(r.label.as_str()).or_default() += 1;
        }
        let mut map: Vec<(String, usize)> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let setting = fields.get("classes");
        match setting.map(|s| &s.value) {
            None => {
                // The source's own order (a ClassLabel's, integers'), then any other label.
                names = order
                    .unwrap_or_default()
                    .iter()
                    .filter(|n| seen.contains_key(n.as_str()))
                    .cloned()
                    .collect();
                for label in seen.keys() {
                    if !names.iter().any(|n| n == label) {
                        names.push(label.to_string());
                    }
                }
                map = names
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, n)| (n, i))
                    .collect();
            }
            Some(SettingValue::Value(v)) => {
                let ValueKind::List(items) = &v.kind else {
                    self.invalid(
                        v.span,
                        "text classes are a list of labels, or a block mapping class names to labels".into(),
                        "expected a list or a block",
                        Some("`classes: [\"neg\", \"pos\"]` or `classes { ham: [\"easy-ham-1\"], spam: [\"spam-1\"] }`".into()),
                    );
                    return None;
                };
                for item in items {
                    let label = self.label_string(item)?;
                    map.push((label.clone(), names.len()));
                    names.push(label);
                }
            }
            Some(SettingValue::Block(entries)) => {
                for entry in entries {
                    let class = names.len();
                    names.push(entry.key.name.clone());
                    let labels: Vec<&Value> = match &entry.value {
                        SettingValue::Value(Value {
                            kind: ValueKind::List(items),
                            ..
                        }) => items.iter().collect(),
                        SettingValue::Value(v) => vec![v],
                        SettingValue::Block(_) => {
                            self.invalid(
                                entry.key.span,
                                "a class maps to a label or a list of labels".into(),
                                "not a label",
                                None,
                            );
                            return None;
                        }
                    };
                    for label in labels {
                        let raw = self.label_string(label)?;
                        if map.iter().any(|(l, _)| *l == raw) {
                            self.invalid(
                                label.span,
                                format!("label `{raw}` is in two classes"),
                                "again here",
                                None,
                            );
                            return None;
                        }
                        map.push((raw, class));
                    }
                }
            }
        }
        let at = setting.map_or(decl.source.span, |s| s.span);
        let unmapped: Vec<String> = seen
            .iter()
            .filter(|(label, _)| !map.iter().any(|(l, _)| l == *label))
            .map(|(label, n)| format!("`{label}` ({n} samples)"))
            .collect();
        if !unmapped.is_empty() {
            self.error(CheckError::Data {
                message: format!(
                    "`{}` has labels in no class: {}",
                    decl.name.name,
                    unmapped.join(", ")
                ),
                span: span(at),
                label: "incomplete".into(),
                help: Some("list every label under a class".into()),
            });
            return None;
        }
        let empty: Vec<&str> = map
            .iter()
            .filter(|(l, _)| !seen.contains_key(l.as_str()))
            .map(|(l, _)| l.as_str())
            .collect();
        if !empty.is_empty() {
            self.error(CheckError::Data {
                message: format!(
                    "`{}` has no sample labelled {}",
                    decl.name.name,
                    empty
                        .iter()
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                span: span(at),
                label: "never seen".into(),
                help: Some(format!(
                    "its labels are {}",
                    seen.keys()
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
            return None;
        }
        if names.len() < 2 {
            self.error(CheckError::Data {
                message: format!(
                    "`{}` has {} class; classification needs two or more",
                    decl.name.name,
                    names.len()
                ),
                span: span(at),
                label: "one class".into(),
                help: None,
            });
            return None;
        }
        Some((map, names))
    }

    fn label_string(&mut self, value: &Value) -> Option<String> {
        match &value.kind {
            ValueKind::Str(s) => Some(s.clone()),
            ValueKind::Name(s) => Some(s.clone()),
            ValueKind::Number { value, unit: None } => Some(super::values::format_number(*value)),
            _ => {
                self.invalid(
                    value.span,
                    "a label is a string".into(),
                    "not a label",
                    None,
                );
                None
            }
        }
    }

    fn tokenizer(
        &mut self,
        decl: &DataDecl,
        fields: &Fields,
    ) -> Option<(PathBuf, kd_textdata::TokenizerFacts)> {
        let Some(v) = fields.value("tokenizer") else {
            self.error(CheckError::Missing {
                message: format!("text data `{}` needs a `tokenizer`", decl.name.name),
                span: span(decl.name.span),
                label: "here".into(),
                help: Some("a Hugging Face tokenizer.json, e.g. `tokenizer: \"data/minilm/tokenizer.json\"`".into()),
            });
            return None;
        };
        let text = self.string(v, "a tokenizer file")?;
        let path = self.resolve_path(&text);
        if !path.is_file() {
            self.error(CheckError::File {
                path: text.clone(),
                reason: "it does not exist".into(),
                span: span(v.span),
                help: Some(fetch_hint(&text)),
            });
            return None;
        }
        match crate::remembered::remembered(&path, "", || kd_textdata::tokenizer_facts(&path)) {
            Ok(facts) => Some((PathBuf::from(text), facts)),
            Err(reason) => {
                self.error(CheckError::File {
                    path: text,
                    reason,
                    span: span(v.span),
                    help: Some("kdc reads Hugging Face `tokenizer.json` files".into()),
                });
                None
            }
        }
    }
}

fn fetch_hint(path: &str) -> String {
    let fetch = if path.contains("spam-assassin") {
        " (fetch it with `scripts/fetch-data.sh spam`)"
    } else if path.contains("minilm") {
        " (fetch it with `scripts/fetch-data.sh minilm`)"
    } else {
        ""
    };
    format!("paths resolve against the folder of the .kd file{fetch}")
}
