//! Pipeline settings, data sources (checked against the files themselves) and
//! augmentation pipelines.

use std::path::{Path, PathBuf};

use kd_grammar::ast::{Call, DataDecl, Declaration, Program, SettingValue, Span, Value, ValueKind};
use kd_plan::{
    AugmentOp, AugmentSpec, CacheMode, DataSource, DataSpec, Device, NonFinite, Normalize,
    Precision, Samples, Settings, SplitSize, SplitSpec,
};

use super::values::format_number;
use super::Cx;
use crate::diagnostics::{did_you_mean, one_of, span, CheckError};
use crate::inspect::{self, LabelColumn, SourceFacts};
use crate::vocabulary::{AUGMENTATIONS, DATA_SETTINGS, PIPELINE_SETTINGS, TEXT_SETTINGS};

impl Cx<'_> {
    pub(super) fn pipeline(&mut self, program: &Program, path: &Path) -> Settings {
        let default_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "pipeline".to_string());
        let mut settings = Settings {
            name: default_name,
            seed: 0,
            device: Device::Auto,
            output: PathBuf::from("runs"),
            threads: None,
            repeat: 1,
            checkpoint_every: None,
            non_finite: NonFinite::Stop,
            cache: CacheMode::Memory,
            precision: Precision::F32,
        };
        let Some(decl) = program.declarations.iter().find_map(|d| match d {
            Declaration::Pipeline(p) => Some(p),
            _ => None,
        }) else {
            return settings;
        };
        settings.name = decl.name.name.clone();
        let fields = self.fields(&decl.settings, PIPELINE_SETTINGS, "`pipeline`");
        if let Some(v) = fields.value("seed") {
            settings.seed = self.count(v, "seed", 0).unwrap_or(0) as u64;
        }
        if let Some(v) = fields.value("device") {
            settings.device = self.device(v).unwrap_or(Device::Auto);
        }
        if let Some(v) = fields.value("output") {
            if let Some(s) = self.string(v, "output") {
                settings.output = PathBuf::from(s);
            }
        }
        if let Some(v) = fields.value("threads") {
            settings.threads = self.count(v, "threads", 1);
        }
        if let Some(v) = fields.value("repeat") {
            settings.repeat = self.count(v, "repeat", 1).unwrap_or(1) as u32;
        }
        if let Some(v) = fields.value("checkpoint_every") {
            settings.checkpoint_every = self.count(v, "checkpoint_every", 1);
        }
        if let Some(v) = fields.value("cache") {
            settings.cache = match self
                .choice(v, "cache", &["memory", "disk", "off"])
                .as_deref()
            {
                Some("disk") => CacheMode::Disk,
                Some("off") => CacheMode::Off,
                _ => CacheMode::Memory,
            };
        }
        if let Some(v) = fields.value("non_finite") {
            settings.non_finite = self.non_finite(v).unwrap_or_default();
        }
        if let Some(v) = fields.value("precision") {
            settings.precision = self.precision(v).unwrap_or_default();
        }
        settings
    }

    /// `precision: f32 | bf16`, in `pipeline` and in a model instance's settings.
    pub(super) fn precision(&mut self, value: &Value) -> Option<Precision> {
        match self.choice(value, "precision", &["f32", "bf16"])?.as_str() {
            "bf16" => Some(Precision::Bf16),
            _ => Some(Precision::F32),
        }
    }

    fn non_finite(&mut self, value: &Value) -> Option<NonFinite> {
        let text = match &value.kind {
            ValueKind::Name(n) | ValueKind::Str(n) => n.as_str(),
            _ => "",
        };
        match text {
            "stop" => Some(NonFinite::Stop),
            "skip" => Some(NonFinite::Skip),
            _ => {
                self.invalid(
                    value.span,
                    "non_finite must be `stop` or `skip`".to_string(),
                    "unknown answer to a non-finite loss",
                    did_you_mean(text, ["stop", "skip"]),
                );
                None
            }
        }
    }

    fn device(&mut self, value: &Value) -> Option<Device> {
        let text = match &value.kind {
            ValueKind::Name(n) => n.clone(),
            ValueKind::Str(s) => s.clone(),
            ValueKind::Call(c) if c.name.name == "cuda" => {
                let args = self.args(c, &[], 1);
                let index = args
                    .get("", Some(0))
                    .and_then(|v| self.count(v, "the CUDA device index", 0))?;
                return Some(Device::Cuda(index));
            }
            _ => String::new(),
        };
        match text.as_str() {
            "cpu" => Some(Device::Cpu),
            "auto" => Some(Device::Auto),
            "cuda" => Some(Device::Cuda(0)),
            t if t.starts_with("cuda:") => match t[5..].parse() {
                Ok(i) => Some(Device::Cuda(i)),
                Err(_) => None,
            },
            _ => {
                self.invalid(
                    value.span,
                    "device must be `cpu`, `cuda`, `cuda(N)` or `auto`".to_string(),
                    "unknown device",
                    did_you_mean(&text, ["cpu", "cuda", "auto"]),
                );
                None
            }
        }
    }

    pub(super) fn data_decls(&mut self, program: &Program) -> Vec<DataSpec> {
        program
            .declarations
            .iter()
            .filter_map(|d| match d {
                Declaration::Data(d) => {
                    let spec = self.data_decl(d);
                    if spec.is_none() {
                        self.failed.insert(format!("data {}", d.name.name));
                    }
                    spec
                }
                _ => None,
            })
            .collect()
    }

    fn data_decl(&mut self, decl: &DataDecl) -> Option<DataSpec> {
        let fields = self.fields(
            &decl.settings,
            DATA_SETTINGS,
            &format!("data `{}`", decl.name.name),
        );
        let kind = decl.source.name.name.as_str();
        if kind == "text" {
            return self.text_data_decl(decl, &fields);
        }
        let table = matches!(kind, "parquet" | "arrow");
        if table && fields.get("tokenizer").is_some() {
            return self.text_table_decl(decl, &fields);
        }
        if let Some(setting) = fields.get("image").filter(|_| !table) {
            self.invalid(
                setting.key.span,
                "`image` names a Parquet or Arrow table's image column".into(),
                "not for this source",
                Some("`parquet(\"data/train.parquet\") { image: \"img\" }`".into()),
            );
        }
        // Image tables refuse text settings themselves, with a table's help.
        for key in TEXT_SETTINGS.iter().filter(|_| !table) {
            if let Some(setting) = fields.get(key) {
                self.invalid(
                    setting.key.span,
                    format!("`{key}` applies to text data"),
                    "not for this source",
                    Some("text data comes from `text(\"file or folder\")`".into()),
                );
            }
        }
        if let Some(setting) = fields
            .get("channels")
            .filter(|_| !matches!(kind, "npy" | "npz"))
        {
            self.invalid(
                setting.key.span,
                "`channels` applies to NumPy arrays".into(),
                "not for this source",
                Some("`channels: last` reads `npy`/`npz` samples stored as [N, H, W, C]".into()),
            );
        }
        for key in ["color", "resize"] {
            if let Some(setting) = fields.get(key).filter(|_| kind != "images" && !table) {
                self.invalid(
                    setting.key.span,
                    format!("`{key}` applies to images"),
                    "not for this source",
                    Some("image data comes from `images(\"folder or list\")`".into()),
                );
            }
        }
        // Byte samples are divided by 255 unless `scale` says otherwise.
        let mut bytes = kind == "idx";
        // Image classes have names (their folders'); other sources' are numbers.
        let mut names = None;
        let (source, facts) = match kind {
            "idx" => self.idx_source(&decl.source)?,
            "csv" | "tsv" => self.csv_source(&decl.source, &fields, kind == "tsv")?,
            "images" => {
                let images = self.image_source(decl, &fields)?;
                bytes = true;
                names = Some(images.names);
                (images.source, images.facts)
            }
            "parquet" | "arrow" => {
                let images = self.image_table(decl, &fields)?;
                bytes = true;
                names = Some(images.names);
                (images.source, images.facts)
            }
            "npy" | "npz" => {
                let arrays = self.array_source(&decl.source, &fields, kind == "npz")?;
                bytes = arrays.bytes;
                (arrays.source, arrays.facts)
            }
            other => {
                self.error(CheckError::UnknownName {
                    what: "data format",
                    name: other.to_string(),
                    span: span(decl.source.name.span),
                    help: did_you_mean(other, crate::vocabulary::DATA_SOURCES.iter().copied())
                        .or_else(|| Some("data formats: `idx(\"folder\")`, `csv(\"file.csv\")`, `tsv(\"file.tsv\")`, `text(\"file or folder\")`, `npy(x: \"x.npy\", y: \"y.npy\")`, `npz(\"file.npz\", x: \"x\", y: \"y\")`, `images(\"folder\")`, `parquet(\"file or folder\")`, `arrow(\"file or folder\")`".into())),
                });
                return None;
            }
        };
        let limit = match fields.value("limit") {
            Some(v) => Some(self.count(v, "limit", 1)?),
            None => None,
        };
        let train_count = limit.map_or(facts.train_count, |l| l.min(facts.train_count));
        let test_count = facts.test_count.map(|t| limit.map_or(t, |l| l.min(t)));

        let stored: usize = facts.sample_shape.iter().product();
        let sample_shape = match fields.value("shape") {
            Some(v) => {
                let shape = self.shape(v, "shape", 1)?;
                if shape.iter().product::<usize>() != stored {
                    self.error(CheckError::Data {
                        message: format!(
                            "shape {shape:?} holds {} values but each sample of `{}` has {stored}",
                            shape.iter().product::<usize>(),
                            decl.name.name
                        ),
                        span: span(v.span),
                        label: "does not fit the data".into(),
                        help: Some(format!(
                            "the file's samples have shape {:?}",
                            facts.sample_shape
                        )),
                    });
                    return None;
                }
                shape
            }
            // An IDX image of [H, W] is one channel: models see [1, H, W].
            None if facts.sample_shape.len() == 2 => {
                let mut s = vec![1];
                s.extend(&facts.sample_shape);
                s
            }
            None => facts.sample_shape.clone(),
        };

        if let (Some(v), Some(_)) = (fields.value("relabel"), &names) {
            self.invalid(
                v.span,
                "images take `classes` (a list, or a block merging folders), not `relabel`".into(),
                "not for images",
                Some("`classes { even: [\"0\", \"2\"], odd: [\"1\", \"3\"] }`".into()),
            );
            return None;
        }
        let (relabel, mut classes) = match fields.value("relabel") {
            Some(v) => {
                let map = self.relabel(v, facts.classes)?;
                let classes = map.iter().max().map_or(1, |m| m + 1);
                (Some(map), classes)
            }
            None => (None, facts.classes),
        };
        if let Some(v) = fields.value("classes").filter(|_| names.is_none()) {
            let declared = self.count(v, "classes", 2)?;
            if declared < classes {
                self.error(CheckError::Data {
                    message: format!(
                        "`{}` declares {declared} classes but its labels go up to {}",
                        decl.name.name,
                        classes - 1
                    ),
                    span: span(v.span),
                    label: "too few".into(),
                    help: None,
                });
            }
            classes = declared.max(classes);
        }

        let scale = match fields.value("scale") {
            Some(v) => self.number_in(v, "scale", |x| x > 0.0, "greater than 0")?,
            None if bytes => 255.0,
            None => 1.0,
        };
        let splits = self.splits(
            decl,
            fields.get("split").map(|s| (&s.value, s.span)),
            train_count,
            test_count,
            limit.is_some(),
        )?;
        let normalize = match fields.get("normalize") {
            None => Normalize::None,
            Some(setting) => self.normalize(&setting.value, &sample_shape, &splits)?,
        };

        Some(DataSpec {
            name: decl.name.name.clone(),
            source,
            sample_shape,
            classes,
            class_names: names.unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect()),
            relabel,
            limit,
            scale,
            normalize,
            splits,
            text: None,
            samples: Some(Samples {
                train: train_count,
                test: test_count,
            }),
        })
    }

    /// A path argument that must name an existing file (or folder, with `folder`).
    pub(super) fn path_arg(&mut self, value: &Value, folder: bool) -> Option<(String, PathBuf)> {
        let text = self.string(value, "a path")?;
        let path = self.resolve_path(&text);
        let ok = if folder {
            path.is_dir()
        } else {
            path.is_file()
        };
        if !ok {
            let reason = if path.exists() {
                if folder {
                    "it is not a folder"
                } else {
                    "it is not a file"
                }
            } else {
                "it does not exist"
            };
            self.error(CheckError::File {
                path: text,
                reason: reason.into(),
                span: span(value.span),
                help: Some(format!(
                    "paths resolve against the folder of the .kd file{}",
                    fetch_hint(&path)
                )),
            });
            return None;
        }
        Some((text, path))
    }

    fn idx_source(&mut self, call: &Call) -> Option<(DataSource, SourceFacts)> {
        let args = self.args(
            call,
            &["folder", "images", "labels", "test_images", "test_labels"],
            1,
        );
        let files = if let Some(folder) = args.get("folder", Some(0)) {
            let (text, dir) = self.path_arg(folder, true)?;
            let find = |stem: &str| {
                inspect::find_idx(&dir, stem)
                    .map(|p| Path::new(&text).join(p.file_name().unwrap_or_default()))
            };
            let train_images = find("train-images-idx3-ubyte");
            let train_labels = find("train-labels-idx1-ubyte");
            let (Some(train_images), Some(train_labels)) = (train_images, train_labels) else {
                self.error(CheckError::File {
                    path: text,
                    reason: "it holds no `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]`".into(),
                    span: span(folder.span),
                    help: Some("name the files: `idx(images: \"...\", labels: \"...\")`".into()),
                });
                return None;
            };
            let test_images = find("t10k-images-idx3-ubyte");
            let test_labels = find("t10k-labels-idx1-ubyte");
            (
                train_images,
                train_labels,
                test_images.zip(test_labels),
                folder.span,
            )
        } else {
            let (Some(images), Some(labels)) = (args.get("images", None), args.get("labels", None))
            else {
                self.error(CheckError::Missing {
                    message: "`idx` needs a folder or `images:` and `labels:` files".into(),
                    span: span(call.span),
                    label: "here".into(),
                    help: Some(
                        "`idx(\"data/mnist\")` or `idx(images: \"x.idx\", labels: \"y.idx\")`"
                            .into(),
                    ),
                });
                return None;
            };
            let (ti, _) = self.path_arg(images, false)?;
            let (tl, _) = self.path_arg(labels, false)?;
            let test = match (args.get("test_images", None), args.get("test_labels", None)) {
                (Some(a), Some(b)) => Some((
                    PathBuf::from(self.path_arg(a, false)?.0),
                    PathBuf::from(self.path_arg(b, false)?.0),
                )),
                _ => None,
            };
            (PathBuf::from(ti), PathBuf::from(tl), test, call.span)
        };
        let (train_images, train_labels, test, at) = files;
        let (count, sample_shape) = self.inspect_file(&train_images, at, inspect::idx_images)?;
        let (label_count, classes) = self.inspect_file(&train_labels, at, inspect::idx_labels)?;
        if label_count != count {
            self.data_error(
                at,
                format!(
                    "`{}` holds {count} images but `{}` holds {label_count} labels",
                    train_images.display(),
                    train_labels.display()
                ),
            );
            return None;
        }
        let mut test_count = None;
        let mut classes_all = classes;
        if let Some((ti, tl)) = &test {
            let (n, shape) = self.inspect_file(ti, at, inspect::idx_images)?;
            let (m, c) = self.inspect_file(tl, at, inspect::idx_labels)?;
            if n != m || shape != sample_shape {
                self.data_error(
                    at,
                    format!(
                        "the test files `{}` and `{}` do not match the training files",
                        ti.display(),
                        tl.display()
                    ),
                );
                return None;
            }
            test_count = Some(n);
            classes_all = classes_all.max(c);
        }
        let (test_images, test_labels) = match test {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        Some((
            DataSource::Idx {
                train_images,
                train_labels,
                test_images,
                test_labels,
            },
            SourceFacts {
                train_count: count,
                test_count,
                sample_shape,
                classes: classes_all,
            },
        ))
    }

    fn inspect_file<T: Clone + Send + 'static>(
        &mut self,
        path: &Path,
        at: Span,
        read: impl Fn(&Path) -> Result<T, String>,
    ) -> Option<T> {
        let resolved = self.resolve_path(&path.to_string_lossy());
        match crate::remembered::remembered(&resolved, "", || read(&resolved)) {
            Ok(facts) => Some(facts),
            Err(reason) => {
                self.error(CheckError::File {
                    path: path.display().to_string(),
                    reason,
                    span: span(at),
                    help: None,
                });
                None
            }
        }
    }

    pub(super) fn data_error(&mut self, at: Span, message: String) {
        self.error(CheckError::Data {
            message,
            span: span(at),
            label: "here".into(),
            help: None,
        });
    }

    fn csv_source(
        &mut self,
        call: &Call,
        fields: &super::values::Fields,
        tsv: bool,
    ) -> Option<(DataSource, SourceFacts)> {
        let args = self.args(call, &["path"], 1);
        let Some(path_value) = args.get("path", Some(0)) else {
            self.error(CheckError::Missing {
                message: format!("`{}` needs a file", call.name.name),
                span: span(call.span),
                label: "here".into(),
                help: Some(format!("`{}(\"data/file.csv\")`", call.name.name)),
            });
            return None;
        };
        let (text, path) = self.path_arg(path_value, false)?;
        let header = match fields.value("header") {
            Some(v) => self.boolean(v, "header")?,
            None => false,
        };
        let delimiter = match fields.value("delimiter") {
            Some(v) => {
                let d = self.string(v, "delimiter")?;
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => c,
                    _ => {
                        self.invalid(
                            v.span,
                            "a delimiter is one character".into(),
                            "not one character",
                            None,
                        );
                        return None;
                    }
                }
            }
            None if tsv => '\t',
            None => ',',
        };
        let label = match fields.value("label") {
            Some(v) => match &v.kind {
                ValueKind::Number { value, unit: None } if value.fract() == 0.0 => {
                    LabelColumn::Index(*value as i64)
                }
                ValueKind::Str(name) if header => LabelColumn::Name(name.clone()),
                ValueKind::Str(_) => {
                    self.invalid(
                        v.span,
                        "a label column named by its header needs `header: true`".into(),
                        "a column name",
                        None,
                    );
                    return None;
                }
                _ => {
                    self.invalid(
                        v.span,
                        "label must be a column index or a header name".into(),
                        "expected a column",
                        None,
                    );
                    return None;
                }
            },
            None => LabelColumn::Index(-1),
        };
        let at = fields.value("label").map_or(path_value.span, |v| v.span);
        let args = format!("{header}/{delimiter:?}/{label:?}");
        let read = || inspect::csv(&path, header, delimiter, &label);
        let (facts, label_column) = match crate::remembered::remembered(&path, &args, read) {
            Ok(f) => f,
            Err(reason) => {
                self.error(CheckError::File {
                    path: text,
                    reason,
                    span: span(if reason_is_label(&label) {
                        at
                    } else {
                        path_value.span
                    }),
                    help: None,
                });
                return None;
            }
        };
        Some((
            DataSource::Csv {
                path: PathBuf::from(text),
                header,
                label_column,
                delimiter,
            },
            SourceFacts {
                train_count: facts.rows,
                test_count: None,
                sample_shape: vec![facts.columns.saturating_sub(1)],
                classes: facts.classes,
            },
        ))
    }

    fn relabel(&mut self, value: &Value, source_classes: usize) -> Option<Vec<usize>> {
        let map = self.shape(value, "relabel", 0)?;
        if map.len() < source_classes {
            self.invalid(
                value.span,
                format!(
                    "relabel maps {} labels but the data has {source_classes}",
                    map.len()
                ),
                "too short",
                Some("give one new label for each source label, in order".into()),
            );
            return None;
        }
        Some(map)
    }

    pub(super) fn splits(
        &mut self,
        decl: &DataDecl,
        block: Option<(&SettingValue, Span)>,
        train_count: usize,
        test_count: Option<usize>,
        limit_set: bool,
    ) -> Option<Vec<SplitSpec>> {
        let mut splits = Vec::new();
        let mut counted = 0usize;
        let mut fraction = 0.0f64;
        let mut rest: Option<usize> = None;
        if let Some((value, at)) = block {
            let SettingValue::Block(entries) = value else {
                self.invalid(
                    at,
                    "split takes a block: `split { train: 0.8, val: 0.2 }`".into(),
                    "expected a block",
                    None,
                );
                return None;
            };
            for entry in entries {
                let name = entry.key.name.clone();
                if splits.iter().any(|s: &SplitSpec| s.name == name) {
                    self.invalid(
                        entry.key.span,
                        format!("split `{name}` is declared twice"),
                        "again here",
                        None,
                    );
                    continue;
                }
                let SettingValue::Value(v) = &entry.value else {
                    self.invalid(
                        entry.span,
                        "a split size is a count, a fraction, `rest` or `unlabeled(size)`".into(),
                        "expected a size",
                        None,
                    );
                    continue;
                };
                let (size_value, labeled) = match &v.kind {
                    ValueKind::Call(c) if c.name.name == "unlabeled" && c.args.len() == 1 => {
                        (&c.args[0].value, false)
                    }
                    _ => (v, true),
                };
                let size = match &size_value.kind {
                    ValueKind::Name(n) if n == "rest" => {
                        rest = Some(splits.len());
                        SplitSize::Count(0)
                    }
                    ValueKind::Name(n) if n == "test" && test_count.is_some() => {
                        SplitSize::SourceTest
                    }
                    _ => {
                        let n = self.number(size_value, "a split size")?;
                        if n > 0.0 && n < 1.0 {
                            // The runtime rounds each fraction to a count; so does the check.
                            let rounded = (n * train_count as f64).round() as usize;
                            if rounded == 0 {
                                self.error(CheckError::Data {
                                    message: format!("split `{name}` would hold no samples: {n} of {train_count}"),
                                    span: span(size_value.span),
                                    label: "rounds to 0 samples".into(),
                                    help: Some("use a larger fraction or a count".into()),
                                });
                                continue;
                            }
                            fraction += rounded as f64;
                            SplitSize::Fraction(n)
                        } else if n >= 1.0 && n.fract() == 0.0 {
                            counted += n as usize;
                            SplitSize::Count(n as usize)
                        } else {
                            self.error(CheckError::OutOfRange {
                                what: format!("the size of split `{name}`"),
                                range: "a fraction in (0, 1) or a whole count",
                                value: format_number(n),
                                span: span(size_value.span),
                                help: None,
                            });
                            continue;
                        }
                    }
                };
                splits.push(SplitSpec {
                    name,
                    size,
                    labeled,
                });
            }
            let claimed = counted as f64 + fraction;
            if claimed > train_count as f64 + 1e-6 {
                self.error(CheckError::Data {
                    message: format!(
                        "the splits of `{}` claim {} samples but its training part has {train_count}",
                        decl.name.name,
                        claimed.round()
                    ),
                    span: span(at),
                    label: "too many".into(),
                    help: Some(if limit_set {
                        format!("`limit` keeps {train_count} samples: write the splits as fractions and `rest`, which follow a limit")
                    } else {
                        "fractions and counts together must fit; `rest` takes what is left".into()
                    }),
                });
                return None;
            }
            if let Some(i) = rest {
                let left = train_count as f64 - claimed;
                splits[i].size = SplitSize::Count(left.floor().max(0.0) as usize);
            }
        } else {
            splits.push(SplitSpec {
                name: "train".into(),
                size: SplitSize::Fraction(1.0),
                labeled: true,
            });
        }
        if test_count.is_some() && !splits.iter().any(|s| s.name == "test") {
            splits.push(SplitSpec {
                name: "test".into(),
                size: SplitSize::SourceTest,
                labeled: true,
            });
        }
        Some(splits)
    }

    fn normalize(
        &mut self,
        value: &SettingValue,
        shape: &[usize],
        splits: &[SplitSpec],
    ) -> Option<Normalize> {
        match value {
            SettingValue::Value(v) => {
                match self.choice(v, "normalisation", &["auto", "none"])?.as_str() {
                    "auto" => {
                        if !splits.iter().any(|s| s.name == "train") {
                            self.invalid(v.span, "`normalize: auto` computes statistics on the `train` split, and there is none".into(), "needs a train split", None);
                            return None;
                        }
                        Some(Normalize::TrainStats)
                    }
                    _ => Some(Normalize::None),
                }
            }
            SettingValue::Block(entries) => {
                let fields = self.fields(entries, &["mean", "std"], "`normalize`");
                let channels = shape.first().copied().unwrap_or(1);
                let read = |cx: &mut Self, key: &str, positive: bool| -> Option<Vec<f64>> {
                    let Some(v) = fields.value(key) else {
                        let at = entries.first().map_or(Span::default(), |e| e.span);
                        cx.error(CheckError::Missing {
                            message: format!("`normalize` needs `{key}`"),
                            span: span(at),
                            label: "in this block".into(),
                            help: Some(
                                "`normalize { mean: 0.1307, std: 0.3081 }`, or `normalize: auto`"
                                    .into(),
                            ),
                        });
                        return None;
                    };
                    let values = match &v.kind {
                        ValueKind::List(items) => items
                            .iter()
                            .map(|i| cx.number(i, key))
                            .collect::<Option<Vec<_>>>()?,
                        _ => vec![cx.number(v, key)?],
                    };
                    if values.len() != 1 && values.len() != channels {
                        cx.invalid(
                            v.span,
                            format!("{key} has {} values for {channels} channels", values.len()),
                            "one per channel, or one for all",
                            None,
                        );
                        return None;
                    }
                    if positive && values.iter().any(|x| *x <= 0.0) {
                        cx.error(CheckError::OutOfRange {
                            what: "std".into(),
                            range: "greater than 0",
                            value: format!("{values:?}"),
                            span: span(v.span),
                            help: None,
                        });
                        return None;
                    }
                    Some(values)
                };
                let mean = read(self, "mean", false);
                let std = read(self, "std", true);
                Some(Normalize::Given {
                    mean: mean?,
                    std: std?,
                })
            }
        }
    }

    pub(super) fn augments(&mut self, program: &Program, data: &[DataSpec]) -> Vec<AugmentSpec> {
        let _ = data;
        let mut out = Vec::new();
        for decl in &program.declarations {
            let Declaration::Augment(a) = decl else {
                continue;
            };
            let mut ops = Vec::new();
            for call in &a.ops {
                if let Some(op) = self.augment_op(call) {
                    ops.push(op);
                }
            }
            out.push(AugmentSpec {
                name: a.name.name.clone(),
                ops,
            });
        }
        out
    }

    fn augment_op(&mut self, call: &Call) -> Option<AugmentOp> {
        let name = call.name.name.as_str();
        let (allowed, first): (&[&str], &str) = match name {
            "crop" => (&["padding"], "padding"),
            "flip" => (&["p"], "p"),
            "rotate" | "translate" => (&["max"], "max"),
            "noise" => (&["std"], "std"),
            "cutout" => (&["size"], "size"),
            "mixup" => (&["alpha"], "alpha"),
            "token_dropout" | "mask_tokens" => (&["p"], "p"),
            "span_delete" => (&["max"], "max"),
            "swap_tokens" => (&["n"], "n"),
            _ => {
                self.error(CheckError::UnknownName {
                    what: "augmentation",
                    name: name.to_string(),
                    span: span(call.name.span),
                    help: did_you_mean(name, AUGMENTATIONS.iter().copied())
                        .or_else(|| Some(one_of(AUGMENTATIONS.iter().copied()))),
                });
                return None;
            }
        };
        let args = self.args(call, allowed, 1);
        let value = args.get(first, Some(0));
        let need = |cx: &mut Self| {
            cx.error(CheckError::Missing {
                message: format!("`{name}` needs `{first}`"),
                span: span(call.span),
                label: "here".into(),
                help: Some(format!("`{name}({first}: ...)`")),
            });
        };
        // The one argument as a whole number >= 1, which this operation requires.
        let required_count = |cx: &mut Self, what: &str| match value {
            Some(v) => cx.count(v, what, 1),
            None => {
                need(cx);
                None
            }
        };
        Some(match name {
            "crop" => AugmentOp::RandomCrop {
                padding: required_count(self, "padding")?,
            },
            "flip" => AugmentOp::Flip {
                p: match value {
                    Some(v) => self.number_in(
                        v,
                        "flip probability",
                        |p| (0.0..=1.0).contains(&p),
                        "between 0 and 1",
                    )?,
                    None => 0.5,
                },
            },
            "rotate" => {
                let Some(v) = value else {
                    need(self);
                    return None;
                };
                let degrees = match &v.kind {
                    ValueKind::Number { value, unit }
                        if unit.as_deref() == Some("deg") || unit.is_none() =>
                    {
                        *value
                    }
                    _ => {
                        self.invalid(
                            v.span,
                            "rotate takes an angle in degrees: `rotate(max: 10deg)`".into(),
                            "expected degrees",
                            None,
                        );
                        return None;
                    }
                };
                if !(0.0..=180.0).contains(&degrees) {
                    self.error(CheckError::OutOfRange {
                        what: "rotation".into(),
                        range: "between 0deg and 180deg",
                        value: format_number(degrees),
                        span: span(v.span),
                        help: None,
                    });
                    return None;
                }
                AugmentOp::Rotate {
                    max_degrees: degrees,
                }
            }
            "translate" => AugmentOp::Translate {
                max_pixels: required_count(self, "translation")?,
            },
            "noise" => AugmentOp::Noise {
                std: match value {
                    Some(v) => self.number_in(v, "noise std", |s| s > 0.0, "greater than 0")?,
                    None => {
                        need(self);
                        return None;
                    }
                },
            },
            "cutout" => AugmentOp::Cutout {
                size: required_count(self, "cutout size")?,
            },
            "token_dropout" | "mask_tokens" => {
                let Some(v) = value else {
                    need(self);
                    return None;
                };
                let p = self.number_in(
                    v,
                    "a token probability",
                    |p| p > 0.0 && p < 1.0,
                    "between 0 and 1",
                )?;
                if name == "token_dropout" {
                    AugmentOp::TokenDropout { p }
                } else {
                    AugmentOp::MaskTokens { p }
                }
            }
            "span_delete" => AugmentOp::SpanDelete {
                max: required_count(self, "the longest deleted span")?,
            },
            "swap_tokens" => AugmentOp::SwapTokens {
                n: match value {
                    Some(v) => self.count(v, "swaps", 1)?,
                    None => 1,
                },
            },
            _ => AugmentOp::Mixup {
                alpha: match value {
                    Some(v) => self.number_in(v, "mixup alpha", |a| a > 0.0, "greater than 0")?,
                    None => 0.2,
                },
            },
        })
    }
}

/// For a data set the project's fetch script knows, the command that brings it.
fn fetch_hint(path: &Path) -> String {
    const FETCHABLE: &[&str] = &["mnist"];
    let in_data = path.components().any(|c| c.as_os_str() == "data");
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if in_data && FETCHABLE.contains(&name) => {
            format!("; fetch it with `scripts/fetch-data.sh {name}`")
        }
        _ if in_data => "; data sets are fetched with `scripts/fetch-data.sh NAME`".into(),
        _ => String::new(),
    }
}

fn reason_is_label(label: &LabelColumn) -> bool {
    matches!(label, LabelColumn::Name(_))
}

/// The name a user writes for an augmentation.
pub(crate) fn op_name(op: &AugmentOp) -> &'static str {
    match op {
        AugmentOp::RandomCrop { .. } => "crop",
        AugmentOp::Flip { .. } => "flip",
        AugmentOp::Rotate { .. } => "rotate",
        AugmentOp::Translate { .. } => "translate",
        AugmentOp::Noise { .. } => "noise",
        AugmentOp::Cutout { .. } => "cutout",
        AugmentOp::Mixup { .. } => "mixup",
        AugmentOp::TokenDropout { .. } => "token_dropout",
        AugmentOp::MaskTokens { .. } => "mask_tokens",
        AugmentOp::SpanDelete { .. } => "span_delete",
        AugmentOp::SwapTokens { .. } => "swap_tokens",
    }
}

/// Whether an augmentation edits token ids (text data only).
pub(crate) fn needs_text(op: &AugmentOp) -> bool {
    matches!(
        op,
        AugmentOp::TokenDropout { .. }
            | AugmentOp::MaskTokens { .. }
            | AugmentOp::SpanDelete { .. }
            | AugmentOp::SwapTokens { .. }
    )
}

/// Whether an augmentation needs image samples (`[C, H, W]`).
pub(crate) fn needs_image(op: &AugmentOp) -> bool {
    !matches!(op, AugmentOp::Noise { .. } | AugmentOp::Mixup { .. }) && !needs_text(op)
}
