//! Every word the language gives a meaning to, by class: the checker checks against these
//! lists, and the editor grammars (editors/) are tested against them
//! (`tests/editor_grammar.rs`), so the language and its highlighting cannot drift.

/// Words that start a declaration.
pub const DECLARATION_KEYWORDS: &[&str] = &[
    "pipeline", "data", "augment", "model", "teacher", "student", "loss", "stage", "baseline",
    "evaluate", "export", "sweep",
];
/// Words that start a statement or a part of one inside a declaration.
pub const STATEMENT_KEYWORDS: &[&str] = &[
    "input",
    "tokens",
    "residual",
    "output",
    "tap",
    "train",
    "distill",
    "loss",
    "optimizer",
    "schedule",
    "validate",
    "keep",
    "best",
    "last",
    "trained",
    "search",
    "select",
    "of",
    "in",
];
/// Words that join clauses; they cannot be names.
pub const JOINING_WORDS: &[&str] = &["as", "on", "with", "to", "from", "without", "like"];

/// Layers of a `model`.
pub const LAYERS: &[&str] = &[
    "linear",
    "conv2d",
    "maxpool",
    "avgpool",
    "batchnorm",
    "dropout",
    "flatten",
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "softmax",
    "embedding",
    "conv1d",
    "lstm",
    "bilstm",
    "transformer",
    "layernorm",
    "pool",
    "max_over_time",
];
/// Functions of loss expressions.
pub const BUILTINS: &[&str] = &[
    "softmax",
    "log_softmax",
    "kl",
    "cross_entropy",
    "soft_cross_entropy",
    "mse",
    "cosine",
    "project",
    "attention_transfer",
    "ensemble",
];
/// The value `label` loss expressions read (the batch's labels).
pub const BUILTIN_VALUES: &[&str] = &["label"];
pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];
pub const SCHEDULES: &[&str] = &["constant", "step", "cosine", "linear", "warmup"];
/// The schedules a named loss's parameter may be bound to (`hinton(T = linear(from: 8,
/// to: 1))`), with their arguments in positional order.
pub const VALUE_SCHEDULES: &[(&str, &[&str])] = &[
    ("constant", &["value"]),
    ("linear", &["from", "to"]),
    ("cosine", &["from", "to"]),
    ("cubic", &["from", "to"]),
    ("step", &["from", "to", "at"]),
];
/// [`VALUE_SCHEDULES`]' names, and every argument name they take.
pub const VALUE_SCHEDULE_FORMS: &[&str] = &["constant", "linear", "cosine", "cubic", "step"];
pub const VALUE_SCHEDULE_ARGUMENTS: &[&str] = &["value", "from", "to", "at"];
/// What `evaluate` reports.
pub const METRICS: &[&str] = &[
    "accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
    "confusion",
    "per_class",
    "agreement",
    "ece",
];
/// What `keep best` may follow.
pub const KEEP_METRICS: &[&str] = &["accuracy", "precision", "recall", "f1", "loss"];
/// Augmentation operations.
pub const AUGMENTATIONS: &[&str] = &[
    "crop",
    "flip",
    "rotate",
    "translate",
    "noise",
    "cutout",
    "mixup",
    "token_dropout",
    "mask_tokens",
    "span_delete",
    "swap_tokens",
];
/// `data NAME = SOURCE(...)`.
pub const DATA_SOURCES: &[&str] = &[
    "idx", "csv", "tsv", "text", "npy", "npz", "images", "parquet", "arrow",
];
/// `teacher NAME = SOURCE(...)` for models from files.
pub const MODEL_SOURCES: &[&str] = &["onnx", "bert", "prune", "quantize"];

/// Settings of `pipeline`.
pub const PIPELINE_SETTINGS: &[&str] = &[
    "seed",
    "device",
    "output",
    "threads",
    "repeat",
    "checkpoint_every",
    "non_finite",
    "cache",
    "precision",
];
/// Settings of a `data` declaration.
pub const DATA_SETTINGS: &[&str] = &[
    "header",
    "label",
    "delimiter",
    "shape",
    "scale",
    "classes",
    "relabel",
    "limit",
    "split",
    "normalize",
    "channels",
    "color",
    "resize",
    "image",
    "text",
    "tokenizer",
    "max_len",
    "format",
    "extension",
    "skip_headers",
];
/// The settings only text data takes (the tail of [`DATA_SETTINGS`]).
pub const TEXT_SETTINGS: &[&str] = &[
    "text",
    "tokenizer",
    "max_len",
    "format",
    "extension",
    "skip_headers",
];
/// Settings of a `bert(...)` model.
pub const BERT_SETTINGS: &[&str] = &["pooling", "classes", "trainable", "layers", "precision"];
/// Settings of an instance of an architecture (`student s = mlp { ... }`).
pub const INSTANCE_SETTINGS: &[&str] = &["precision"];
/// Settings of a pruned model (`student p = prune(s) { sparsity: 50% }`).
pub const PRUNE_SETTINGS: &[&str] = &["sparsity", "every", "granularity"];
/// Settings of an int8 model (`student q = quantize(s) on digits.train { samples: 512 }`).
pub const QUANTIZE_SETTINGS: &[&str] = &["samples", "aware"];
/// Settings of a `stage` (written `epochs 10`, without a colon).
pub const STAGE_SETTINGS: &[&str] = &["epochs", "batch", "clip", "early_stop"];
