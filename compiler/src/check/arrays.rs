//! `data d = npy(x: "images.npy", y: "labels.npy")` and `npz("file.npz", x: "images", y:
//! "labels")`: NumPy arrays checked against their headers (type, order, shape: nothing of
//! the values is read) and their labels (read whole: the classes) before anything runs,
//! through the same reader as the runtime's (`kd_datafiles`).

use std::path::{Path, PathBuf};

use kd_datafiles::npy::{self, Header};
use kd_datafiles::{npz, Reason};
use kd_grammar::ast::{Call, Span, Value};
use kd_plan::DataSource;

use super::values::Fields;
use super::Cx;
use crate::diagnostics::{span, CheckError};
use crate::inspect::SourceFacts;

/// The samples' header and the labels' count and classes of one part.
#[derive(Clone, Debug)]
struct Part {
    samples: Header,
    labels: usize,
    classes: usize,
}

/// A source of arrays as the checker found it: the source, its facts, and whether its
/// samples are bytes (so that `scale` defaults to 255, as for IDX images).
pub(super) struct Arrays {
    pub source: DataSource,
    pub facts: SourceFacts,
    pub bytes: bool,
}

impl Cx<'_> {
    pub(super) fn array_source(
        &mut self,
        call: &Call,
        fields: &Fields,
        archive: bool,
    ) -> Option<Arrays> {
        let names: &[&str] = if archive {
            &["path", "x", "y", "test_x", "test_y"]
        } else {
            &["x", "y", "test_x", "test_y"]
        };
        let args = self.args(call, names, usize::from(archive));
        let channels_last = match fields.value("channels") {
            Some(v) => self.choice(v, "channels", &["first", "last"])? == "last",
            None => false,
        };
        let (Some(x), Some(y)) = (args.get("x", None), args.get("y", None)) else {
            let example = if archive {
                "`npz(\"mnist.npz\", x: \"x_train\", y: \"y_train\")`"
            } else {
                "`npy(x: \"images.npy\", y: \"labels.npy\")`"
            };
            self.error(CheckError::Missing {
                message: format!(
                    "`{}` needs `x:` (the samples) and `y:` (the labels)",
                    call.name.name
                ),
                span: span(call.span),
                label: "here".into(),
                help: Some(example.into()),
            });
            return None;
        };
        let test = match (args.get("test_x", None), args.get("test_y", None)) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                self.invalid(
                    v.span,
                    "`test_x` and `test_y` come together".into(),
                    "without its pair",
                    Some("give both, or neither".into()),
                );
                return None;
            }
        };
        let (source, train, test_part) = if archive {
            let Some(path_value) = args.get("path", Some(0)) else {
                self.error(CheckError::Missing {
                    message: "`npz` needs the archive's path".into(),
                    span: span(call.span),
                    label: "here".into(),
                    help: Some("`npz(\"mnist.npz\", x: \"x_train\", y: \"y_train\")`".into()),
                });
                return None;
            };
            let (text, path) = self.path_arg(path_value, false)?;
            let key = |cx: &mut Self, v: &Value| cx.string(v, "an array's key");
            let (kx, ky) = (key(self, x)?, key(self, y)?);
            let train = self.npz_part(&text, &path, (&kx, &ky), (x.span, y.span))?;
            let test = match test {
                Some((a, b)) => {
                    let (ka, kb) = (key(self, a)?, key(self, b)?);
                    let part = self.npz_part(&text, &path, (&ka, &kb), (a.span, b.span))?;
                    Some(((ka, kb), part))
                }
                None => None,
            };
            let (test_x, test_y, test_part) = match test {
                Some(((a, b), part)) => (Some(a), Some(b), Some(part)),
                None => (None, None, None),
            };
            let source = DataSource::Npz {
                path: PathBuf::from(text),
                x: kx,
                y: ky,
                test_x,
                test_y,
                channels_last,
            };
            (source, train, test_part)
        } else {
            let train = self.npy_part(x, y)?;
            let test = match test {
                Some((a, b)) => Some(self.npy_part(a, b)?),
                None => None,
            };
            let (train, (tx, ty)) = train;
            let (test_x, test_y, test_part) = match test {
                Some((part, (a, b))) => (Some(a), Some(b), Some(part)),
                None => (None, None, None),
            };
            let source = DataSource::Npy {
                x: tx,
                y: ty,
                test_x,
                test_y,
                channels_last,
            };
            (source, train, test_part)
        };
        let mut sample_shape = train.samples.shape[1..].to_vec();
        if let Some(test) = &test_part {
            if test.samples.shape[1..] != train.samples.shape[1..]
                || test.samples.dtype != train.samples.dtype
            {
                self.data_error(
                    call.span,
                    format!(
                        "the test samples are {} of shape {:?} but the training samples {} of shape {:?}",
                        test.samples.dtype.name(),
                        &test.samples.shape[1..],
                        train.samples.dtype.name(),
                        sample_shape
                    ),
                );
                return None;
            }
        }
        if channels_last {
            let setting = fields.value("channels")?;
            if sample_shape.len() != 3 {
                self.invalid(
                    setting.span,
                    format!(
                        "`channels: last` needs samples of shape [H, W, C]; these are {sample_shape:?}"
                    ),
                    "not an image array",
                    None,
                );
                return None;
            }
            sample_shape = vec![sample_shape[2], sample_shape[0], sample_shape[1]];
        }
        Some(Arrays {
            facts: SourceFacts {
                train_count: train.labels,
                test_count: test_part.as_ref().map(|p| p.labels),
                sample_shape,
                classes: train
                    .classes
                    .max(test_part.as_ref().map_or(0, |p| p.classes)),
            },
            bytes: train.samples.dtype.kind == npy::Kind::Unsigned(1),
            source,
        })
    }

    /// A pair of `.npy` files, with their paths as written.
    fn npy_part(&mut self, x: &Value, y: &Value) -> Option<(Part, (PathBuf, PathBuf))> {
        let (x_text, x_path) = self.path_arg(x, false)?;
        let (y_text, y_path) = self.path_arg(y, false)?;
        let samples = self.array_fact(&x_text, x.span, &x_path, "", || {
            npy::read_header(&x_path).and_then(sample_header)
        })?;
        let (labels, classes) = self.array_fact(&y_text, y.span, &y_path, "", || {
            std::fs::read(&y_path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| label_facts(&bytes))
        })?;
        let part = self.matched(samples, labels, classes, y.span, &y_text)?;
        Some((part, (PathBuf::from(x_text), PathBuf::from(y_text))))
    }

    /// A pair of arrays of one `.npz` archive.
    fn npz_part(
        &mut self,
        text: &str,
        path: &Path,
        (x, y): (&str, &str),
        (x_at, y_at): (Span, Span),
    ) -> Option<Part> {
        let samples = self.array_fact(text, x_at, path, &format!("x:{x}"), || {
            npz::open(path)
                .and_then(|mut archive| npz::header(&mut archive, x))
                .and_then(sample_header)
                .map_err(|r| with_key(x, r))
        })?;
        let (labels, classes) = self.array_fact(text, y_at, path, &format!("y:{y}"), || {
            npz::open(path)
                .and_then(|mut archive| npz::member(&mut archive, y))
                .and_then(|bytes| label_facts(&bytes))
                .map_err(|r| with_key(y, r))
        })?;
        self.matched(samples, labels, classes, y_at, text)
    }

    fn matched(
        &mut self,
        samples: Header,
        labels: usize,
        classes: usize,
        at: Span,
        what: &str,
    ) -> Option<Part> {
        let count = samples.shape[0];
        if labels != count {
            self.error(CheckError::File {
                path: what.to_string(),
                reason: format!("it holds {labels} labels for {count} samples"),
                span: span(at),
                help: Some("each sample needs one label, in the same order".into()),
            });
            return None;
        }
        Some(Part {
            samples,
            labels,
            classes,
        })
    }

    /// A fact about an array file, remembered while the file is unchanged; an error names
    /// the file as written.
    fn array_fact<T: Clone + Send + 'static>(
        &mut self,
        text: &str,
        at: Span,
        path: &Path,
        args: &str,
        read: impl FnOnce() -> Result<T, Reason>,
    ) -> Option<T> {
        match crate::remembered::remembered(path, args, read) {
            Ok(fact) => Some(fact),
            Err(reason) => {
                self.error(CheckError::File {
                    path: text.to_string(),
                    reason,
                    span: span(at),
                    help: None,
                });
                None
            }
        }
    }
}

fn with_key(key: &str, reason: Reason) -> Reason {
    // An archive that cannot be opened is not about one array.
    if reason.contains(&format!("`{key}`")) || reason.contains("(zip) archive") {
        reason
    } else {
        format!("array `{key}`: {reason}")
    }
}

/// A samples header kdc can train on: uint8, float32 or float64, a sample axis, samples.
fn sample_header(header: Header) -> Result<Header, Reason> {
    if !header.dtype.is_sample_type() {
        return Err(format!(
            "it holds {} values; samples must be uint8, float32 or float64",
            header.dtype.name()
        ));
    }
    if header.shape.len() < 2 {
        return Err(format!(
            "its shape is {:?}: samples need axes of their own after the first, [N, features] or [N, H, W]",
            header.shape
        ));
    }
    if header.shape[0] == 0 || header.shape[1..].contains(&0) {
        return Err(format!(
            "its shape is {:?}: it holds no values",
            header.shape
        ));
    }
    Ok(header)
}

/// The number of labels and one more than the largest.
fn label_facts(bytes: &[u8]) -> Result<(usize, usize), Reason> {
    let labels = npy::labels(bytes)?;
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok((labels.len(), classes))
}
