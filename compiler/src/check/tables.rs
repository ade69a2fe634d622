//! `data d = parquet("data/mnist", test: "data/mnist-test") { shape: [1, 28, 28] }` and
//! `arrow(...)`: Parquet and Arrow IPC tables, checked against their schemas and their
//! label columns (and for images, every image's header) through the runtime's reader
//! (`kd_datafiles::table`). A table is text data when it names a `tokenizer`, image data
//! otherwise.

use std::path::PathBuf;

use kd_datafiles::table::{self, Format, Kind};
use kd_grammar::ast::{DataDecl, Span};
use kd_plan::{DataSource, DataSpec, ImageColor, TableFormat, TableImages};

use super::images::{shown, ImageSettings, Images};
use super::values::Fields;
use super::Cx;
use crate::diagnostics::{span, CheckError};
use crate::inspect::SourceFacts;

/// One part of a table source (training or test) as the checker read it.
struct Part {
    /// The path as written, and resolved.
    text: String,
    path: PathBuf,
    at: Span,
    files: Vec<PathBuf>,
    labels: table::Labels,
    /// The files' lengths and times, for remembering what was read from them.
    stamp: String,
}

/// A table source's parts and columns.
struct Parts {
    format: Format,
    column: String,
    label: String,
    train: Part,
    test: Option<Part>,
}

impl Parts {
    fn records(&self) -> Vec<kd_textdata::Record> {
        let test = self.test.iter().flat_map(|t| &t.labels.labels);
        self.train
            .labels
            .labels
            .iter()
            .chain(test)
            .map(|label| kd_textdata::Record {
                text: String::new(),
                label: label.clone(),
            })
            .collect()
    }

    fn order(&self) -> Option<&[String]> {
        self.train.labels.order.as_deref()
    }

    fn source(&self, classes: Vec<(String, usize)>, images: Option<TableImages>) -> DataSource {
        DataSource::Table {
            format: match self.format {
                Format::Parquet => TableFormat::Parquet,
                Format::Arrow => TableFormat::Arrow,
            },
            path: PathBuf::from(&self.train.text),
            test: self.test.as_ref().map(|t| PathBuf::from(&t.text)),
            column: self.column.clone(),
            label: self.label.clone(),
            classes,
            images,
        }
    }
}

/// Settings of text files that tables do not take.
const TEXT_FILE_ONLY: &[&str] = &["format", "extension", "skip_headers"];

impl Cx<'_> {
    /// A table with a `tokenizer`: a text column, tokenised like text files.
    pub(super) fn text_table_decl(&mut self, decl: &DataDecl, fields: &Fields) -> Option<DataSpec> {
        self.refuse_numeric_settings(fields);
        for key in TEXT_FILE_ONLY
            .iter()
            .chain(&["image", "color", "resize", "channels"])
        {
            if let Some(setting) = fields.get(key) {
                self.invalid(
                    setting.key.span,
                    format!("`{key}` does not apply to a table's text column"),
                    "not for this source",
                    Some("a text table takes `text` (its column), `label`, `tokenizer`, `max_len`, `classes`, `limit` and `split`".into()),
                );
            }
        }
        let parts = self.table_parts(decl, fields, Kind::Text)?;
        let records = parts.records();
        let counts = (
            parts.train.labels.labels.len(),
            parts.test.as_ref().map(|t| t.labels.labels.len()),
        );
        let source = |classes| parts.source(classes, None);
        self.text_spec(decl, fields, source, &records, parts.order(), counts)
    }

    /// A table without a `tokenizer`: an image column, every image's header read.
    pub(super) fn image_table(&mut self, decl: &DataDecl, fields: &Fields) -> Option<Images> {
        for key in TEXT_FILE_ONLY.iter().chain(&["text", "max_len"]) {
            if let Some(setting) = fields.get(key) {
                self.invalid(
                    setting.key.span,
                    format!("`{key}` applies to text data"),
                    "not for an image table",
                    Some(
                        "a table's text column is read with `text: \"column\"`, a `tokenizer` and `max_len`"
                            .into(),
                    ),
                );
                return None;
            }
        }
        let ImageSettings {
            shape,
            color,
            resize,
        } = self.image_settings(fields)?;
        let parts = self.table_parts(decl, fields, Kind::Image)?;
        let mut sizes = Vec::new();
        // Only the images a run decodes: the first `limit` rows of each part.
        let limit = super::images::written_limit(fields);
        for part in std::iter::once(&parts.train).chain(&parts.test) {
            let key = format!(
                "headers {:?} {} {limit:?} {}",
                parts.format, parts.column, part.stamp
            );
            let (format, column, files) = (parts.format, parts.column.clone(), part.files.clone());
            let per_file = table::first_rows(&part.labels.per_file, limit);
            let read = move || table::image_sizes(&files, &per_file, format, &column);
            match crate::remembered::remembered(&part.path, &key, read) {
                Ok(found) => sizes.push(found),
                Err(e) => {
                    self.file_error(&e.path, &part.text, &part.path, e.reason, part.at);
                    return None;
                }
            }
        }
        let (height, width) = match shape {
            Some((_, _, h, w)) => (h, w),
            None => match sizes.first().and_then(|s| s.first()) {
                Some(&(_, _, w, h)) => (h as usize, w as usize),
                None => {
                    self.data_error(
                        parts.train.at,
                        format!("`{}` holds no rows", parts.train.text),
                    );
                    return None;
                }
            },
        };
        if resize.is_none() {
            let all = std::iter::once(&parts.train).chain(&parts.test).zip(&sizes);
            for (part, found) in all {
                let odd = found
                    .iter()
                    .find(|&&(_, _, w, h)| (w as usize, h as usize) != (width, height));
                if let Some((file, row, w, h)) = odd {
                    let why = match shape {
                        Some(_) => format!(
                            "row {row}'s image is {w} x {h} pixels but `shape` asks for {width} x {height}"
                        ),
                        None => format!(
                            "row {row}'s image is {w} x {h} pixels but the first is {width} x {height}"
                        ),
                    };
                    self.error(CheckError::File {
                        path: shown(file, &part.path, &part.text),
                        reason: why,
                        span: span(part.at),
                        help: Some("give `shape` and `resize` to scale and crop images of other sizes (`shape: [3, 224, 224], resize: 256`)".into()),
                    });
                    return None;
                }
            }
        }
        let (classes, names) = self.text_classes(decl, fields, &parts.records(), parts.order())?;
        let channels = if color == ImageColor::Gray { 1 } else { 3 };
        Some(Images {
            source: parts.source(classes, Some(TableImages { color, resize })),
            facts: SourceFacts {
                train_count: parts.train.labels.labels.len(),
                test_count: parts.test.as_ref().map(|t| t.labels.labels.len()),
                sample_shape: vec![channels, height, width],
                classes: names.len(),
            },
            names,
        })
    }

    /// The table's paths, columns and label columns, every file's schema checked.
    fn table_parts(&mut self, decl: &DataDecl, fields: &Fields, kind: Kind) -> Option<Parts> {
        let call = &decl.source;
        let format = if call.name.name == "arrow" {
            Format::Arrow
        } else {
            Format::Parquet
        };
        let args = self.args(call, &["path", "test"], 1);
        let Some(path_value) = args.get("path", Some(0)) else {
            self.error(CheckError::Missing {
                message: format!("`{}` needs a file or a folder of them", call.name.name),
                span: span(call.span),
                label: "here".into(),
                help: Some(format!(
                    "`{}(\"data/train\")`: a .{} file, or a folder read in name order",
                    call.name.name,
                    format.extensions()[0]
                )),
            });
            return None;
        };
        let (column_key, default) = match kind {
            Kind::Image => ("image", "image"),
            Kind::Text => ("text", "text"),
        };
        let column = match fields.value(column_key) {
            Some(v) => self.string(v, "a column name")?,
            None => default.to_string(),
        };
        let label = match fields.value("label") {
            Some(v) => self.string(v, "a column name")?,
            None => "label".to_string(),
        };
        // Without `image`, a table of texts that forgot its tokenizer lands here.
        let help = (kind == Kind::Image && fields.get("image").is_none()).then_some(
            "an image table reads the column `image` unless `image: \"column\"` names another; a table of texts takes `text: \"column\"`, a `tokenizer` and `max_len`",
        );
        let train = self.table_part(path_value, format, &column, kind, &label, help)?;
        let test = match args.get("test", None) {
            Some(v) => Some(self.table_part(v, format, &column, kind, &label, help)?),
            None => None,
        };
        if train.labels.labels.is_empty() {
            self.data_error(train.at, format!("`{}` holds no rows", train.text));
            return None;
        }
        Some(Parts {
            format,
            column,
            label,
            train,
            test,
        })
    }

    fn table_part(
        &mut self,
        value: &kd_grammar::ast::Value,
        format: Format,
        column: &str,
        kind: Kind,
        label: &str,
        missing_help: Option<&str>,
    ) -> Option<Part> {
        // `train-*.parquet`: the files of one split, from a folder holding several.
        let written = self.string(value, "a path")?;
        let (text, path) = if written.contains('*') {
            let path = self.resolve_path(&written);
            (written, path)
        } else {
            self.path_arg_any(value)?
        };
        let files = match table::files(&path, format) {
            Ok(files) => files,
            Err(e) => {
                self.file_error(&e.path, &text, &path, e.reason, value.span);
                return None;
            }
        };
        // A folder's stamp changes when files come and go, not when one is rewritten: the
        // files' own lengths and times join the key.
        let stamp: String = files
            .iter()
            .map(|f| match std::fs::metadata(f) {
                Ok(m) => format!("{}:{:?};", m.len(), m.modified().ok()),
                Err(_) => "?;".into(),
            })
            .collect();
        let key = format!("table {format:?} {column} {kind:?} {label} {stamp}");
        let (listed, wanted, label) = (files.clone(), column.to_string(), label.to_string());
        let read = move || table::labels(&listed, format, &wanted, kind, &label, None);
        match crate::remembered::remembered(&path, &key, read) {
            Ok(labels) => Some(Part {
                text,
                path,
                at: value.span,
                files,
                labels,
                stamp,
            }),
            Err(e) => {
                let missing = e
                    .reason
                    .starts_with(&format!("it has no column `{column}`"));
                self.error(CheckError::File {
                    path: shown(&e.path, &path, &text),
                    reason: e.reason,
                    span: span(value.span),
                    help: missing_help.filter(|_| missing).map(str::to_string),
                });
                None
            }
        }
    }
}
