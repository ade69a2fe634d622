; Highlights for .kd pipelines. The word lists mirror kd_compiler::vocabulary;
; tests/editor_grammar.rs fails when they drift.

(comment) @comment
(string) @string
(number) @number
(unit) @type
(boolean) @boolean

; Declarations and the names they declare.
[
  "pipeline" "data" "augment" "model" "teacher" "student" "stage" "baseline" "evaluate" "export"
  "sweep"
] @keyword
(loss_declaration "loss" @keyword)
(pipeline_declaration name: (identifier) @type.definition)
(data_declaration name: (identifier) @type.definition)
(augment_declaration name: (identifier) @type.definition)
(model_declaration name: (identifier) @type.definition)
(role_declaration name: (identifier) @type.definition)
(stage_declaration name: (identifier) @type.definition)
(baseline_declaration name: (identifier) @type.definition)
(sweep_declaration name: (identifier) @type.definition)
(loss_declaration name: (identifier) @function)
(role_declaration architecture: (identifier) @type)

; Statements and their parts.
[
  "input" "tokens" "residual" "output" "tap" "train" "distill" "optimizer" "schedule" "validate"
  "keep" "best" "last" "trained" "onnx" "bert" "prune" "quantize" "search" "select"
] @keyword
(loss_statement "loss" @keyword)
["as" "on" "with" "to" "from" "without" "like" "of" "in"] @keyword.operator
(sweep_axis key: (sweep_key) @property)
(select_statement metric: (identifier) @constant.builtin)
(search_statement (identifier) @function.builtin)
(search_statement (call function: (identifier) @function.builtin))
(sweep_axis values: (call function: (identifier) @function.builtin))
(alias name: (identifier) @label)

; Layers of a model.
(layer (call function: (identifier) @function.builtin
  (#any-of? @function.builtin
    "linear" "conv2d" "maxpool" "avgpool" "batchnorm" "dropout" "flatten" "relu" "gelu" "tanh"
    "sigmoid" "softmax" "embedding" "conv1d" "lstm" "bilstm" "transformer" "layernorm" "pool"
    "max_over_time")))
(layer name: (identifier) @function.builtin
  (#any-of? @function.builtin
    "linear" "conv2d" "maxpool" "avgpool" "batchnorm" "dropout" "flatten" "relu" "gelu" "tanh"
    "sigmoid" "softmax" "embedding" "conv1d" "lstm" "bilstm" "transformer" "layernorm" "pool"
    "max_over_time"))

; Built-ins of loss expressions, and the labels they read.
(call_expression function: (identifier) @function.builtin
  (#any-of? @function.builtin
    "softmax" "log_softmax" "kl" "cross_entropy" "soft_cross_entropy" "mse" "cosine" "project"
    "attention_transfer" "ensemble"))
; A loss parameter's schedule (`linear(from: 8, to: 1)`; `cosine` is a built-in loss too).
(call_expression function: (identifier) @function.builtin
  (#any-of? @function.builtin "constant" "linear" "cubic" "step"))
(call_expression function: (identifier) @function
  (#not-any-of? @function
    "softmax" "log_softmax" "kl" "cross_entropy" "soft_cross_entropy" "mse" "cosine" "project"
    "attention_transfer" "ensemble" "constant" "linear" "cubic" "step"))
(expression_argument value: (identifier) @variable.builtin (#eq? @variable.builtin "label"))
(member port: (identifier) @property)

; Optimizers, schedules, metrics, augmentations, sources.
(optimizer_statement [(call function: (identifier) @function.builtin) name: (identifier) @function.builtin]
  (#any-of? @function.builtin "sgd" "adam" "adamw"))
(schedule_statement [(call function: (identifier) @function.builtin) name: (identifier) @function.builtin]
  (#any-of? @function.builtin "constant" "step" "cosine" "linear" "warmup"))
(metric_list metric: (identifier) @constant.builtin
  (#any-of? @constant.builtin
    "accuracy" "precision" "recall" "f1" "loss" "confusion" "per_class" "agreement" "ece"))
(keep_statement metric: (identifier) @constant.builtin
  (#any-of? @constant.builtin "accuracy" "precision" "recall" "f1" "loss"))
(augment_declaration (call function: (identifier) @function.builtin
  (#any-of? @function.builtin
    "crop" "flip" "rotate" "translate" "noise" "cutout" "mixup" "token_dropout" "mask_tokens"
    "span_delete" "swap_tokens")))
(augment_declaration (identifier) @function.builtin
  (#any-of? @function.builtin
    "crop" "flip" "rotate" "translate" "noise" "cutout" "mixup" "token_dropout" "mask_tokens"
    "span_delete" "swap_tokens"))
(data_declaration source: (call function: (identifier) @function.builtin
  (#any-of? @function.builtin "idx" "csv" "tsv" "text" "npy" "npz" "images" "parquet" "arrow")))

; Settings and named arguments.
(setting key: (identifier) @property
  (#any-of? @property
    "seed" "device" "output" "threads" "repeat" "checkpoint_every" "non_finite" "cache"
    "precision" "header" "label" "delimiter" "shape" "scale" "classes" "relabel" "limit" "split"
    "normalize" "channels" "color" "resize" "image" "text" "tokenizer" "max_len" "format" "extension" "skip_headers" "pooling"
    "trainable" "layers" "sparsity" "every" "granularity" "samples" "aware"))
(stage_setting key: _ @property)
; A pruned model's gradual sparsity: `sparsity: cubic(from: 0, to: 90%)`.
(setting key: (identifier) @property value: (call function: (identifier) @function.builtin)
  (#eq? @property "sparsity"))
(argument name: (identifier) @variable.parameter)
(expression_argument name: (identifier) @variable.parameter)
(loss_parameter name: (identifier) @variable.parameter)

; Operators and punctuation.
["=" "->" "+" "-" "*" "/" "^"] @operator
["(" ")" "[" "]" "{" "}"] @punctuation.bracket
["," ":" "."] @punctuation.delimiter
