//! `teacher t = bert("folder") { pooling: mean, classes: 2, trainable: head }`: a
//! BERT-family checkpoint (config.json, model.safetensors) checked before anything runs:
//! the files exist, the config is a BERT encoder, the layers a student keeps exist.

use std::path::Path;

use kd_grammar::ast::{BertSource, RoleDecl, RoleKind, Value, ValueKind};
use kd_plan::{BertSpec, Kind, ModelSpec, Pooling, Precision, Role, Tap, TensorType, Trainable};

use super::Cx;
use crate::diagnostics::{span, CheckError};

/// What kdc reads of a checkpoint's config.json.
#[derive(serde::Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default)]
    model_type: Option<String>,
}

impl Cx<'_> {
    /// The model a `bert(...)` role declares, or `None` after reporting why there is none.
    pub(super) fn bert_role(
        &mut self,
        r: &RoleDecl,
        source: &BertSource,
        precision: Precision,
    ) -> Option<ModelSpec> {
        let fields = self.fields(
            &source.settings,
            crate::vocabulary::BERT_SETTINGS,
            "a bert model",
        );
        let precision = match fields.value("precision") {
            Some(v) => self.precision(v).unwrap_or(precision),
            None => precision,
        };
        let text = self.string(&source.path, "a checkpoint folder")?;
        let folder = self.resolve_path(&text);
        let config = self.bert_config(&text, &folder, &source.path)?;
        let pooling = match fields.value("pooling") {
            Some(v) => match self.choice(v, "pooling", &["mean", "cls"])?.as_str() {
                "cls" => Pooling::Cls,
                _ => Pooling::Mean,
            },
            None => Pooling::Mean,
        };
        let Some(classes) = fields.value("classes") else {
            self.error(CheckError::Missing {
                message: format!("bert model `{}` needs `classes`", r.name.name),
                span: span(source.span),
                label: "here".into(),
                help: Some("the classification head's width, e.g. `classes: 2`".into()),
            });
            return None;
        };
        let classes = self.count(classes, "classes", 2)?;
        let layers = match fields.value("layers") {
            Some(v) => self.bert_layers(v, config.num_hidden_layers)?,
            None => (0..config.num_hidden_layers).collect(),
        };
        let trainable = match fields.value("trainable") {
            Some(v) => self.trainable(v, layers.len())?,
            None if r.role == RoleKind::Student => Trainable::All,
            None => Trainable::Head,
        };
        let hidden = config.hidden_size;
        let encoder_layer = 4 * hidden * hidden
            + 4 * hidden
            + 2 * hidden * config.intermediate_size
            + config.intermediate_size
            + hidden
            + 4 * hidden;
        let embeddings =
            (config.vocab_size + config.max_position_embeddings + 2) * hidden + 2 * hidden;
        let head = hidden * classes + classes;
        let params = embeddings + layers.len() * encoder_layer + head;
        let len = config.max_position_embeddings as u64;
        let flops = layers.len() as u64
            * len
            * 2
            * (4 * hidden * hidden + 2 * hidden * config.intermediate_size) as u64
            + layers.len() as u64 * 4 * len * len * hidden as u64;
        let features = |name: &str, shape: Vec<usize>, kind| Tap {
            name: name.into(),
            layer: 0,
            ty: TensorType { kind, shape },
        };
        let taps = vec![
            features("pooled", vec![hidden], Kind::Features),
            features("logits", vec![classes], Kind::Logits),
            features("output", vec![classes], Kind::Logits),
        ];
        let _ = config.num_attention_heads;
        let _ = &config.model_type;
        Some(ModelSpec {
            name: r.name.name.clone(),
            architecture: format!("bert(\"{text}\")"),
            role: match r.role {
                RoleKind::Teacher => Role::Teacher,
                RoleKind::Student => Role::Student,
            },
            input: vec![config.max_position_embeddings],
            layers: Vec::new(),
            taps,
            init_from: None,
            init_key: r.name.name.clone(),
            params,
            flops,
            span: super::models::to_plan(r.span),
            onnx: None,
            pruned: None,
            quantized: None,
            bert: Some(BertSpec {
                path: text.into(),
                pooling,
                classes,
                trainable,
                layers,
                hidden,
                vocab: config.vocab_size,
                max_positions: config.max_position_embeddings,
            }),
            tokens: true,
            precision,
        })
    }

    fn bert_config(&mut self, text: &str, folder: &Path, at: &Value) -> Option<BertConfig> {
        let file_error = |reason: String, help: Option<String>| CheckError::File {
            path: text.to_string(),
            reason,
            span: span(at.span),
            help,
        };
        if !folder.is_dir() {
            let help = if text.starts_with("data/minilm") || text.contains("minilm") {
                "fetch it with `scripts/fetch-data.sh minilm`"
            } else {
                "paths resolve against the folder of the .kd file"
            };
            self.error(file_error("it is not a folder".into(), Some(help.into())));
            return None;
        }
        for file in ["config.json", "model.safetensors"] {
            if !folder.join(file).is_file() {
                self.error(file_error(
                    format!("it holds no `{file}`"),
                    Some("a BERT checkpoint folder holds config.json and model.safetensors (as Hugging Face saves them)".into()),
                ));
                return None;
            }
        }
        let raw = match std::fs::read(folder.join("config.json")) {
            Ok(raw) if raw.len() <= 1 << 20 => raw,
            Ok(_) => {
                self.error(file_error("its config.json is over 1 MiB".into(), None));
                return None;
            }
            Err(e) => {
                self.error(file_error(
                    format!("its config.json cannot be read ({e})"),
                    None,
                ));
                return None;
            }
        };
        let config: BertConfig = match serde_json::from_slice(&raw) {
            Ok(config) => config,
            Err(e) => {
                self.error(file_error(
                    format!("its config.json is not a BERT config ({e})"),
                    None,
                ));
                return None;
            }
        };
        let sane = config.hidden_size > 0
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
            && config.num_hidden_layers > 0
            && config.vocab_size > 0
            && config.max_position_embeddings > 0
            && config.hidden_size <= 1 << 14
            && config.num_hidden_layers <= 256
            && config.intermediate_size <= 1 << 16
            && config.vocab_size <= 1 << 22
            && config.max_position_embeddings <= 1 << 16;
        if !sane {
            self.error(file_error(
                "its config.json gives sizes no BERT model has".into(),
                None,
            ));
            return None;
        }
        if let Some(kind) = &config.model_type {
            if kind != "bert" {
                self.error(file_error(
                    format!("its config.json is for `{kind}`, not `bert`"),
                    Some("kdc runs BERT-family encoders (BERT, MiniLM, ...) through candle-transformers".into()),
                ));
                return None;
            }
        }
        Some(config)
    }

    /// `layers: [0, 2, 4]`: distinct checkpoint layers in ascending order.
    fn bert_layers(&mut self, value: &Value, available: usize) -> Option<Vec<usize>> {
        let ValueKind::List(items) = &value.kind else {
            self.invalid(
                value.span,
                "`layers` is a list of the checkpoint's encoder layers".into(),
                "not a list",
                Some("for example `layers: [0, 2, 4]` keeps every other layer of six".into()),
            );
            return None;
        };
        let mut layers = Vec::new();
        for item in items {
            let layer = self.count(item, "a layer index", 0)?;
            if layer >= available {
                self.invalid(
                    item.span,
                    format!(
                        "the checkpoint has {available} encoder layers, numbered 0 to {}",
                        available - 1
                    ),
                    "no such layer",
                    None,
                );
                return None;
            }
            if layers.last().is_some_and(|&last| layer <= last) {
                self.invalid(
                    item.span,
                    "layers are listed once each, in ascending order".into(),
                    "out of order",
                    None,
                );
                return None;
            }
            layers.push(layer);
        }
        if layers.is_empty() {
            self.invalid(
                value.span,
                "a model keeps at least one layer".into(),
                "empty",
                None,
            );
            return None;
        }
        Some(layers)
    }

    /// `trainable: head | all | last(n)`.
    fn trainable(&mut self, value: &Value, layers: usize) -> Option<Trainable> {
        match &value.kind {
            ValueKind::Name(n) if n == "head" => Some(Trainable::Head),
            ValueKind::Name(n) if n == "all" => Some(Trainable::All),
            ValueKind::Call(c) if c.name.name == "last" && c.args.len() == 1 => {
                let n = self.count(&c.args[0].value, "a number of layers", 1)?;
                if n > layers {
                    self.invalid(
                        c.args[0].value.span,
                        format!("the model has {layers} encoder layers"),
                        "too many",
                        Some("`trainable: all` trains every layer and the embeddings".into()),
                    );
                    return None;
                }
                Some(Trainable::Last(n))
            }
            _ => {
                self.invalid(
                    value.span,
                    "`trainable` is `head`, `last(n)` or `all`".into(),
                    "unknown",
                    Some("`head` trains the classifier on cached encoder outputs; `last(2)` also the top two layers".into()),
                );
                None
            }
        }
    }
}
