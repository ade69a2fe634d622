//! `data d = images("folder") { shape: [3, 32, 32], color: rgb, resize: 36 }`: image data
//! checked against the files' headers (format and size: no pixel is decoded) before
//! anything runs, through the same reader as the runtime's (`kd_datafiles::images`).

use std::path::{Path, PathBuf};

use kd_datafiles::images;
use kd_grammar::ast::{DataDecl, Span};
use kd_plan::{DataSource, ImageColor};

use super::values::Fields;
use super::Cx;
use crate::diagnostics::{span, CheckError};
use crate::inspect::SourceFacts;

/// An image source as the checker found it, with its class names.
pub(super) struct Images {
    pub source: DataSource,
    pub facts: SourceFacts,
    pub names: Vec<String>,
}

/// How image data's settings ask samples to be made.
pub(super) struct ImageSettings {
    /// Where `shape` was written, and its C, H, W.
    pub shape: Option<(Span, usize, usize, usize)>,
    pub color: ImageColor,
    pub resize: Option<u32>,
}

impl Cx<'_> {
    pub(super) fn image_source(&mut self, decl: &DataDecl, fields: &Fields) -> Option<Images> {
        let call = &decl.source;
        let args = self.args(call, &["path", "test"], 1);
        let Some(path_value) = args.get("path", Some(0)) else {
            self.error(CheckError::Missing {
                message: "`images` needs a folder or a list file".into(),
                span: span(call.span),
                label: "here".into(),
                help: Some("`images(\"data/train\")`: one sub-folder per class".into()),
            });
            return None;
        };
        let (text, path) = self.path_arg_any(path_value)?;
        let ImageSettings {
            shape,
            color,
            resize,
        } = self.image_settings(fields)?;
        let listed = crate::remembered::remembered(&path, "entries", || {
            images::entries(&path, "path", "label")
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                self.file_error(&e.path, &text, &path, e.reason, path_value.span);
                return None;
            }
        };
        let test = match args.get("test", None) {
            Some(v) => {
                let (test_text, test_path) = self.path_arg_any(v)?;
                let listed = crate::remembered::remembered(&test_path, "entries", || {
                    images::entries(&test_path, "path", "label")
                });
                match listed {
                    Ok(found) => Some((test_text, test_path, found, v.span)),
                    Err(e) => {
                        self.file_error(&e.path, &test_text, &test_path, e.reason, v.span);
                        return None;
                    }
                }
            }
            None => None,
        };
        // Only the images a run decodes: the first `limit` of each part.
        let limit = written_limit(fields);
        let kept = |found: &[images::Entry]| limit.map_or(found.len(), |l| l.min(found.len()));
        let args = format!("headers/{limit:?}");
        let sizes = crate::remembered::remembered(&path, &args, || {
            images::headers(&entries[..kept(&entries)])
        });
        let sizes = match sizes {
            Ok(sizes) => sizes,
            Err((i, reason)) => {
                self.file_error(&entries[i].path, &text, &path, reason, path_value.span);
                return None;
            }
        };
        let test_sizes = match &test {
            Some((test_text, test_path, found, at)) => {
                let read = || images::headers(&found[..kept(found)]);
                match crate::remembered::remembered(test_path, &args, read) {
                    Ok(sizes) => sizes,
                    Err((i, reason)) => {
                        self.file_error(&found[i].path, test_text, test_path, reason, *at);
                        return None;
                    }
                }
            }
            None => Vec::new(),
        };
        let (height, width) = match shape {
            Some((_, _, h, w)) => (h, w),
            None => (sizes[0].1 as usize, sizes[0].0 as usize),
        };
        if resize.is_none() {
            let all = sizes.iter().chain(&test_sizes);
            let odd = all
                .clone()
                .position(|&(w, h)| (w as usize, h as usize) != (width, height));
            if let Some(i) = odd {
                let (w, h) = all.clone().nth(i).copied().unwrap_or_default();
                let (odd_path, root, written, at) = match (&test, i.checked_sub(sizes.len())) {
                    (Some((t, p, found, at)), Some(j)) => (&found[j].path, p, t, *at),
                    _ => (&entries[i].path, &path, &text, path_value.span),
                };
                let why = match shape {
                    Some(_) => {
                        format!("it is {w} x {h} pixels but `shape` asks for {width} x {height}")
                    }
                    None => format!(
                        "it is {w} x {h} pixels but `{}` is {width} x {height}",
                        shown(&entries[0].path, &path, &text)
                    ),
                };
                self.error(CheckError::File {
                    path: shown(odd_path, root, written),
                    reason: why,
                    span: span(at),
                    help: Some("give `shape` and `resize` to scale and crop images of other sizes (`shape: [3, 224, 224], resize: 256`)".into()),
                });
                return None;
            }
        }
        let test_entries = test.as_ref().map_or(&[][..], |(_, _, found, _)| &found[..]);
        let records: Vec<kd_textdata::Record> = entries
            .iter()
            .chain(test_entries)
            .map(|e| kd_textdata::Record {
                text: String::new(),
                label: e.label.clone(),
            })
            .collect();
        let (classes, names) = self.text_classes(decl, fields, &records, None)?;
        let channels = if color == ImageColor::Gray { 1 } else { 3 };
        Some(Images {
            source: DataSource::Images {
                path: PathBuf::from(text),
                test: test.as_ref().map(|(t, _, _, _)| PathBuf::from(t)),
                classes,
                color,
                resize,
            },
            facts: SourceFacts {
                train_count: entries.len(),
                test_count: test.as_ref().map(|(_, _, found, _)| found.len()),
                sample_shape: vec![channels, height, width],
                classes: names.len(),
            },
            names,
        })
    }

    /// `shape`, `color` and `resize` of image data (a folder, a list, or a table's column).
    pub(super) fn image_settings(&mut self, fields: &Fields) -> Option<ImageSettings> {
        let shape = match fields.value("shape") {
            Some(v) => {
                let shape = self.shape(v, "shape", 1)?;
                match shape[..] {
                    [c @ (1 | 3), h, w] if h > 0 && w > 0 => Some((v.span, c, h, w)),
                    _ => {
                        self.invalid(
                            v.span,
                            format!(
                                "images are [3, H, W] (RGB) or [1, H, W] (gray), not {shape:?}"
                            ),
                            "not an image shape",
                            None,
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let color = match fields.value("color") {
            Some(v) => {
                let color = match self.choice(v, "color", &["rgb", "gray"])?.as_str() {
                    "gray" => ImageColor::Gray,
                    _ => ImageColor::Rgb,
                };
                if let Some((_, c, _, _)) = shape {
                    if (c == 3) != (color == ImageColor::Rgb) {
                        self.invalid(
                            v.span,
                            format!(
                                "`shape` has {c} channel{} but `color` is not {}",
                                if c == 1 { "" } else { "s" },
                                if c == 1 { "gray" } else { "rgb" }
                            ),
                            "does not match the shape",
                            None,
                        );
                        return None;
                    }
                }
                color
            }
            None if shape.is_some_and(|(_, c, _, _)| c == 1) => ImageColor::Gray,
            None => ImageColor::Rgb,
        };
        let resize = match fields.value("resize") {
            Some(v) => {
                let n = self.count(v, "resize", 1)?;
                let Some((_, _, h, w)) = shape else {
                    self.invalid(
                        v.span,
                        "`resize` needs `shape`: images are scaled, then cropped to its H x W"
                            .into(),
                        "without a shape",
                        Some("e.g. `shape: [3, 224, 224], resize: 256`".into()),
                    );
                    return None;
                };
                if n < h.max(w) || n > images::MAX_SIDE as usize {
                    self.invalid(
                        v.span,
                        format!(
                            "`resize: {n}` must be at least the crop's {} and at most {}",
                            h.max(w),
                            images::MAX_SIDE
                        ),
                        "out of range",
                        None,
                    );
                    return None;
                }
                Some(n as u32)
            }
            None => None,
        };
        Some(ImageSettings {
            shape,
            color,
            resize,
        })
    }

    /// A path argument that must name an existing file or folder.
    pub(super) fn path_arg_any(
        &mut self,
        value: &kd_grammar::ast::Value,
    ) -> Option<(String, PathBuf)> {
        let text = self.string(value, "a path")?;
        let path = self.resolve_path(&text);
        if path.is_dir() {
            return Some((text, path));
        }
        self.path_arg(value, false)
    }

    pub(super) fn file_error(
        &mut self,
        file: &Path,
        text: &str,
        root: &Path,
        reason: String,
        at: Span,
    ) {
        self.error(CheckError::File {
            path: shown(file, root, text),
            reason,
            span: span(at),
            help: None,
        });
    }
}

/// `limit` when it is written as a whole number of at least 1; anything else is read as
/// no limit here, and reported where data settings are checked.
pub(super) fn written_limit(fields: &Fields) -> Option<usize> {
    match fields.value("limit")?.kind {
        kd_grammar::ast::ValueKind::Number { value, unit: None }
            if value.fract() == 0.0 && (1.0..1e15).contains(&value) =>
        {
            Some(value as usize)
        }
        _ => None,
    }
}

/// `file` as the user knows it: under the source's path as written.
pub(super) fn shown(file: &Path, root: &Path, text: &str) -> String {
    let base = if root.is_dir() {
        root
    } else {
        root.parent().unwrap_or(root)
    };
    let written = if root.is_dir() {
        Path::new(text)
    } else {
        Path::new(text).parent().unwrap_or(Path::new(""))
    };
    match file.strip_prefix(base) {
        Ok(rest) if rest.as_os_str().is_empty() => text.to_string(),
        Ok(rest) => written.join(rest).display().to_string(),
        Err(_) => file.display().to_string(),
    }
}
