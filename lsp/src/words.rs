//! What hover says about the language's own words, and what completion offers.

use kd_compiler::vocabulary as v;
use lsp_types::CompletionItemKind;

/// One line on what `word` means, and where docs/language.md says more.
pub fn describe(word: &str) -> Option<&'static str> {
    Some(match word {
        "pipeline" => "`pipeline NAME { settings }`: seed, device, output folder, threads, repeat, checkpoints, cache, precision (section 3)",
        "data" => "`data NAME = idx(...) | csv(...) | tsv(...) | text(...) | npy(...) | npz(...) | images(...) | parquet(...) | arrow(...) { settings }`: a data set, checked against its files (section 4)",
        "augment" => "`augment NAME { ops }`: an augmentation pipeline a stage applies `with` (section 5)",
        "model" => "`model NAME { input [shape] layers }`: an architecture; kdc infers every layer's shape (section 6)",
        "teacher" => "`teacher NAME = ARCH | onnx(...) | bert(...) | prune(MODEL)`: a model instance that `distill` may run frozen (section 7)",
        "student" => "`student NAME = ARCH | bert(...) | prune(MODEL) { ... }`: a model instance that learns (section 7)",
        "prune" => "`prune(MODEL) { sparsity: 50% }`: MODEL's architecture and weights, the smallest-magnitude weights set to zero and kept there (section 7.3); `sparsity: cubic(from: 0, to: 90%)` prunes gradually over the first stage that trains it",
        "quantize" => "`quantize(MODEL) on DATA.SPLIT { samples: N, aware: true }`: MODEL after every stage, its linear and conv2d layers in int8 (per-channel symmetric weights, per-tensor symmetric inputs calibrated on N samples of the split, drawn from the seed) (section 7.4)",
        "aware" => "setting of `quantize(...)`: `aware: true` trains the int8 model quantisation-aware: made when its first stage starts, trained with its linear and conv2d layers fake-quantised (straight-through gradients), in int8 after the last stage (section 7.4)",
        "samples" => "setting of `quantize(...)`: how many of the split's samples, drawn from the seed, calibrate the int8 input scales (default 1,024)",
        "granularity" => "setting of `prune(...)`: `weights` (default) zeroes single weights behind masks; `neurons` removes whole neurons (a linear layer's outputs, a convolution's channels) with what reads them, and shrinks the model (at once, or gradually over a stage with a schedule)",
        "sparsity" => "setting of `prune(...)`: the fraction of each weight tensor set to zero, `50%` or `0.5` at once, or a schedule (`cubic(from: 0, to: 90%)`) over the stage",
        "every" => "`every`: the lr schedule `step(every: N)`'s period in epochs, or a setting of `prune(...)`: a gradual sparsity updates the masks after every this many steps (default 1)",
        "loss" => "`loss NAME(params) = expression`, or `loss EXPR` in a stage: what a stage minimises (section 8)",
        "stage" => "`stage NAME { train|distill ..., loss, optimizer, epochs, batch, ... }`: one training stage (section 9)",
        "baseline" => "`baseline NAME = STUDENT trained like STAGE [without TEACHER]`: the student's architecture trained alone (section 10)",
        "evaluate" => "`evaluate MODELS on DATA.SPLIT { metrics }` (section 11)",
        "export" => "`export MODEL to \"file.safetensors\" | \"file.onnx\"` (section 12)",
        "input" => "`input [C, H, W]` or `input tokens[LEN]`: one sample's shape, without the batch axis",
        "residual" => "`residual { layers } [as TAP]`: the block's output plus its input (a projection when the shapes differ)",
        "train" => "`train MODEL on DATA.SPLIT [with AUGMENT]`: the stage trains MODEL on labels",
        "distill" => "`distill TEACHER[, TEACHER...] -> STUDENT on DATA.SPLIT [with AUGMENT]`: the teachers run frozen while the student learns",
        "optimizer" => "`optimizer sgd | adam | adamw(lr: ..., ...)`",
        "schedule" => "`schedule constant | step | cosine | linear | warmup(...)`: the learning rate over the stage",
        "validate" => "`validate on DATA.SPLIT`: metrics on a held-out split after every epoch",
        "keep" => "`keep best METRIC` (on the validation split) or `keep last`: which epoch's weights the stage ends with",
        "linear" => "layer `linear(out, bias: true)`: a dense layer over the last axis (or a `schedule`: linear decay to 0; or a loss parameter's schedule `linear(from: 8, to: 1)`)",
        "conv2d" => "layer `conv2d(out, kernel: K, stride: 1, padding: 0, bias: true)` on `[C, H, W]`",
        "conv1d" => "layer `conv1d(out, kernel: K, padding: 0)` over a sequence `[L, C]`",
        "maxpool" => "layer `maxpool(K, stride: K)`: the maximum of each window",
        "avgpool" => "layer `avgpool(K, stride: K)`: the mean of each window",
        "batchnorm" => "layer `batchnorm(eps: 1e-5, momentum: 0.1)`: batch statistics in training, running ones in evaluation",
        "dropout" => "layer `dropout(p)`: zeroes each value with probability p in training",
        "flatten" => "layer `flatten`: one axis per sample",
        "relu" => "layer `relu`: max(x, 0)",
        "gelu" => "layer `gelu`: x * Phi(x) (the erf form)",
        "tanh" => "layer `tanh`",
        "sigmoid" => "layer `sigmoid`",
        "softmax" => "layer `softmax` (its output is probabilities), or built-in `softmax(logits, T)`: probabilities at temperature T",
        "embedding" => "layer `embedding(vocab, dim, positions: false)`: token ids to vectors",
        "lstm" => "layer `lstm(hidden)`: an LSTM over the sequence (padding masked)",
        "bilstm" => "layer `bilstm(hidden)`: both directions, concatenated",
        "transformer" => "layer `transformer(heads: H, ff: F, dropout: 0)`: a pre-norm encoder block with masked attention",
        "layernorm" => "layer `layernorm(eps: 1e-5)` over the last axis",
        "pool" => "layer `pool(mean | max | first)`: a sequence to one vector, padding excluded",
        "max_over_time" => "layer `max_over_time`: the maximum over the sequence's positions",
        "log_softmax" => "built-in `log_softmax(logits, T)`: log-probabilities at temperature T",
        "kl" => "built-in `kl(p, q)`: KL(p || q) of two distributions, the mean over the batch (`kl(teacher, student)`)",
        "cross_entropy" => "built-in `cross_entropy(logits, label)`: against the hard labels",
        "soft_cross_entropy" => "built-in `soft_cross_entropy(logits, probabilities)`: against soft targets",
        "mse" => "built-in `mse(a, b)`: mean squared error of two features of one shape",
        "cosine" => "built-in `cosine(a, b)`: 1 - cosine similarity, the mean over the batch (or a `schedule`: cosine decay; or a loss parameter's schedule `cosine(from: 8, to: 1)`)",
        "project" => "built-in `project(features)`: a learned linear map to the other side's width",
        "attention_transfer" => "built-in `attention_transfer(a, b)`: the distance of two feature maps' attention maps",
        "ensemble" => "built-in `ensemble(p1, p2, ...)`: the mean of two or more distributions (several teachers' softened outputs), probabilities",
        "label" => "the batch's labels (`cross_entropy(s.logits, label)`)",
        "sgd" => "optimizer `sgd(lr, momentum: 0, nesterov: false, weight_decay: 0)`",
        "adam" => "optimizer `adam(lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0)`",
        "adamw" => "optimizer `adamw(...)`: Adam with decoupled weight decay",
        "cubic" => "a loss parameter's or a pruning `sparsity:`'s schedule `cubic(from: 0, to: 0.9)`: `to + (from - to) (1 - t)^3` over the stage (Zhu and Gupta 2017), fast at first, flat at the end",
        "constant" => "schedule `constant`: the optimizer's lr throughout (or a loss parameter's `constant(value: 4)`)",
        "step" => "schedule `step(every: N, gamma: 0.1)`: lr times gamma every N epochs (or a loss parameter's `step(from: 0, to: 1, at: 0.5)`: `to` from that fraction of the stage's steps on)",
        "warmup" => "schedule `warmup(epochs: N)`: linear warm-up, then constant",
        "accuracy" | "precision" | "recall" | "f1" | "confusion" | "per_class" | "agreement" | "ece" => {
            "a metric of `evaluate` (section 11; `keep best` takes accuracy, precision, recall, f1 or loss)"
        }
        _ => return None,
    })
}

/// Every word completion offers anywhere, with its kind.
pub fn everywhere() -> Vec<(&'static str, CompletionItemKind)> {
    let mut words = Vec::new();
    for w in v::DECLARATION_KEYWORDS
        .iter()
        .chain(v::STATEMENT_KEYWORDS)
        .chain(v::JOINING_WORDS)
    {
        words.push((*w, CompletionItemKind::KEYWORD));
    }
    for w in v::LAYERS.iter().chain(v::BUILTINS).chain(v::AUGMENTATIONS) {
        words.push((*w, CompletionItemKind::FUNCTION));
    }
    for w in v::OPTIMIZERS
        .iter()
        .chain(v::SCHEDULES)
        .chain(v::DATA_SOURCES)
        .chain(v::MODEL_SOURCES)
    {
        words.push((*w, CompletionItemKind::FUNCTION));
    }
    for w in v::METRICS.iter().chain(v::BUILTIN_VALUES) {
        words.push((*w, CompletionItemKind::CONSTANT));
    }
    for w in v::STAGE_SETTINGS {
        words.push((*w, CompletionItemKind::PROPERTY));
    }
    words.sort_by_key(|w| w.0);
    words.dedup_by(|a, b| a.0 == b.0);
    words
}
