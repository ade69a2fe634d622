//! Architectures (layer lists with inferred shapes, parameters and FLOPs) and the model
//! instances that roles declare.

use std::collections::{BTreeMap, HashMap};

use kd_grammar::ast::{
    Call, Declaration, LayerKind, LayerNode, Program, RoleKind, RoleSource, Span,
};
use kd_plan::{
    DataSpec, Kind, Layer, LayerSpec, ModelSpec, Precision, Role, SeqPool, Tap, TensorType,
};

use super::Cx;
use crate::diagnostics::{did_you_mean, labeled, one_of, span, CheckError};
use crate::vocabulary::{INSTANCE_SETTINGS, LAYERS};

/// A checked `model` declaration.
#[derive(Debug, Clone)]
pub(super) struct Architecture {
    pub input: Vec<usize>,
    pub tokens: bool,
    pub layers: Vec<LayerSpec>,
    pub taps: Vec<Tap>,
    pub span: Span,
}

impl Cx<'_> {
    pub(super) fn architectures(&mut self, program: &Program) -> HashMap<String, Architecture> {
        let mut out = HashMap::new();
        for decl in &program.declarations {
            let Declaration::Model(m) = decl else {
                continue;
            };
            let Some(input) = self.shape(&m.input, "an input dimension", 1) else {
                continue;
            };
            if m.tokens && input.len() != 1 {
                self.invalid(
                    m.input.span,
                    format!(
                        "token input is one sequence, but `{}` declares {input:?}",
                        m.name.name
                    ),
                    "one length",
                    Some("write the sequence length, e.g. `input tokens[128]`".into()),
                );
                continue;
            }
            let first_is_embedding = matches!(
                m.layers.first().map(|l| &l.kind),
                Some(LayerKind::Call(c)) if c.name.name == "embedding"
            );
            if m.tokens != first_is_embedding {
                let at = m.layers.first().map_or(m.input.span, |l| l.span);
                let (message, help) = if m.tokens {
                    (
                        format!(
                            "`{}` reads token ids, so its first layer must be `embedding`",
                            m.name.name
                        ),
                        "for example `embedding(30522, 64)` right after `input tokens[128]`",
                    )
                } else {
                    (
                        "`embedding` reads token ids, but the model's input is numbers".to_string(),
                        "declare the input as `input tokens[128]`",
                    )
                };
                self.invalid(at, message, "here", Some(help.into()));
                continue;
            }
            let mut counters = BTreeMap::new();
            let mut shape = input.clone();
            let mut prev: Option<Span> = None;
            let mut layers = Vec::new();
            let mut taps = Vec::new();
            let mut ok = true;
            for node in &m.layers {
                match self.layer(node, &shape, prev, &mut counters) {
                    Some(layer) => {
                        shape = layer.output.clone();
                        prev = Some(node.span);
                        if let Some(alias) = &node.alias {
                            if alias.name == "output"
                                || taps.iter().any(|t: &Tap| t.name == alias.name)
                            {
                                self.invalid(
                                    alias.span,
                                    format!(
                                        "tap `{}` is named twice in `{}`",
                                        alias.name, m.name.name
                                    ),
                                    "rename it",
                                    None,
                                );
                            }
                            taps.push(Tap {
                                name: alias.name.clone(),
                                layer: layers.len(),
                                ty: TensorType {
                                    kind: Kind::Features,
                                    shape: layer.output.clone(),
                                },
                            });
                        }
                        layers.push(layer);
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            if layers.is_empty() {
                self.error(CheckError::Missing {
                    message: format!("model `{}` has no layers", m.name.name),
                    span: span(m.name.span),
                    label: "empty".into(),
                    help: Some(
                        "list layers after `input [...]`, e.g. `flatten linear(10) as logits`"
                            .into(),
                    ),
                });
                continue;
            }
            let last = layers.len() - 1;
            taps.push(Tap {
                name: "output".into(),
                layer: last,
                ty: TensorType {
                    kind: Kind::Features,
                    shape: layers[last].output.clone(),
                },
            });
            for tap in &mut taps {
                tap.ty.kind = tap_kind(&layers, tap);
            }
            out.insert(
                m.name.name.clone(),
                Architecture {
                    input,
                    tokens: m.tokens,
                    layers,
                    taps,
                    span: m.span,
                },
            );
        }
        out
    }

    fn layer(
        &mut self,
        node: &LayerNode,
        input: &[usize],
        prev: Option<Span>,
        counters: &mut BTreeMap<&'static str, usize>,
    ) -> Option<LayerSpec> {
        match &node.kind {
            LayerKind::Residual(body) => self.residual(node, body, input, prev, counters),
            LayerKind::Call(call) => {
                let (layer, output) = self.layer_call(call, input, prev)?;
                let prefix = layer_prefix(&layer);
                let n = counters.entry(prefix).or_insert(0);
                *n += 1;
                let (params, flops) = cost(&layer, input, &output);
                Some(LayerSpec {
                    name: format!("{prefix}{n}"),
                    layer,
                    input: input.to_vec(),
                    output,
                    params,
                    flops,
                    span: to_plan(node.span),
                })
            }
        }
    }

    fn residual(
        &mut self,
        node: &LayerNode,
        body: &[LayerNode],
        input: &[usize],
        prev: Option<Span>,
        counters: &mut BTreeMap<&'static str, usize>,
    ) -> Option<LayerSpec> {
        let mut inner_counters = BTreeMap::new();
        let mut shape = input.to_vec();
        let mut layers = Vec::new();
        let mut inner_prev = prev;
        for inner in body {
            let layer = self.layer(inner, &shape, inner_prev, &mut inner_counters)?;
            shape = layer.output.clone();
            inner_prev = Some(inner.span);
            layers.push(layer);
        }
        let output = shape;
        // The shortcut adds the input back: the identity when the body keeps the shape, a
        // strided 1x1 convolution or a linear map when it does not.
        let shortcut_layer = if output == input {
            None
        } else if input.len() == 3
            && output.len() == 3
            && input[1].is_multiple_of(output[1])
            && input[2].is_multiple_of(output[2])
            && input[1] / output[1] == input[2] / output[2]
        {
            Some(Layer::Conv2d {
                out: output[0],
                kernel: 1,
                stride: input[1] / output[1],
                padding: 0,
                bias: false,
            })
        } else if input.len() == 1 && output.len() == 1 {
            Some(Layer::Linear {
                out: output[0],
                bias: false,
            })
        } else {
            self.error(CheckError::ShapeMismatch {
                message: format!("this residual block maps {input:?} to {output:?}, which no shortcut can add back"),
                span: span(node.span),
                label: format!("{input:?} -> {output:?}"),
                related: vec![],
                help: Some("a residual body keeps the shape, or changes channels and halves H and W evenly (a 1x1 convolution shortcut is added)".into()),
            });
            return None;
        };
        let shortcut = shortcut_layer.map(|layer| {
            let (params, flops) = cost(&layer, input, &output);
            Box::new(LayerSpec {
                name: "shortcut".into(),
                layer,
                input: input.to_vec(),
                output: output.clone(),
                params,
                flops,
                span: to_plan(node.span),
            })
        });
        let n = counters.entry("residual").or_insert(0);
        *n += 1;
        let params = layers.iter().map(|l| l.params).sum::<usize>()
            + shortcut.as_ref().map_or(0, |s| s.params);
        let flops = layers.iter().map(|l| l.flops).sum::<u64>()
            + shortcut.as_ref().map_or(0, |s| s.flops)
            + output.iter().product::<usize>() as u64;
        Some(LayerSpec {
            name: format!("residual{n}"),
            layer: Layer::Residual {
                body: layers,
                shortcut,
            },
            input: input.to_vec(),
            output,
            params,
            flops,
            span: to_plan(node.span),
        })
    }

    /// One layer: its parameters checked, and its output shape for `input`.
    fn layer_call(
        &mut self,
        call: &Call,
        input: &[usize],
        prev: Option<Span>,
    ) -> Option<(Layer, Vec<usize>)> {
        let name = call.name.name.as_str();
        let mismatch = |cx: &mut Self, message: String, help: Option<String>| {
            cx.error(CheckError::ShapeMismatch {
                message,
                span: span(call.span),
                label: format!("receives {input:?}"),
                related: prev
                    .map(|p| vec![labeled(p, format!("this produces {input:?}"))])
                    .unwrap_or_default(),
                help,
            });
        };
        let image = |cx: &mut Self| -> Option<(usize, usize, usize)> {
            if let [c, h, w] = input {
                Some((*c, *h, *w))
            } else {
                mismatch(
                    cx,
                    format!(
                        "`{name}` needs an image input [channels, height, width], found {input:?}"
                    ),
                    Some("convolutions and pools come before `flatten`".into()),
                );
                None
            }
        };
        let sequence = |cx: &mut Self| -> Option<[usize; 2]> {
            if let [len, channels] = input {
                Some([*len, *channels])
            } else {
                mismatch(
                    cx,
                    format!("`{name}` needs a sequence [length, channels], found {input:?}"),
                    Some("sequence layers come after `embedding` and before `pool`".into()),
                );
                None
            }
        };
        match name {
            "linear" => {
                let args = self.args(call, &["out", "bias"], 1);
                let Some(out_value) = args.get("out", Some(0)) else {
                    return self.missing_arg(call, "out", "linear(10)");
                };
                let out = self.count(out_value, "linear's output width", 1)?;
                let bias = match args.get("bias", None) {
                    Some(v) => self.boolean(v, "bias")?,
                    None => true,
                };
                let mut output = input.to_vec();
                if let Some(last) = output.last_mut() {
                    *last = out;
                }
                if input.len() > 2 {
                    mismatch(
                        self,
                        format!("`linear` acts on flat features, but receives {input:?}"),
                        Some("add `flatten` before it".into()),
                    );
                    return None;
                }
                Some((Layer::Linear { out, bias }, output))
            }
            "conv2d" => {
                let (out, kernel, stride, padding, bias) =
                    self.conv_args(call, true, "conv2d(16, kernel: 3)")?;
                let (_, h, w) = image(self)?;
                let (Some(oh), Some(ow)) = (
                    window(h, kernel, stride, padding),
                    window(w, kernel, stride, padding),
                ) else {
                    mismatch(
                        self,
                        format!("a {kernel}x{kernel} kernel does not fit a {h}x{w} input"),
                        Some("use a smaller kernel or more padding".into()),
                    );
                    return None;
                };
                Some((
                    Layer::Conv2d {
                        out,
                        kernel,
                        stride,
                        padding,
                        bias,
                    },
                    vec![out, oh, ow],
                ))
            }
            "maxpool" | "avgpool" => {
                let args = self.args(call, &["kernel", "stride"], 1);
                let kernel = args
                    .get("kernel", Some(0))
                    .map_or(Some(2), |v| self.count(v, "pool size", 1))?;
                let stride = args
                    .get("stride", None)
                    .map_or(Some(kernel), |v| self.count(v, "stride", 1))?;
                let (c, h, w) = image(self)?;
                let (Some(oh), Some(ow)) =
                    (window(h, kernel, stride, 0), window(w, kernel, stride, 0))
                else {
                    mismatch(
                        self,
                        format!("a {kernel}x{kernel} pool does not fit a {h}x{w} input"),
                        None,
                    );
                    return None;
                };
                let layer = if name == "maxpool" {
                    Layer::MaxPool { kernel, stride }
                } else {
                    Layer::AvgPool { kernel, stride }
                };
                Some((layer, vec![c, oh, ow]))
            }
            "batchnorm" => {
                let args = self.args(call, &["eps", "momentum"], 0);
                let eps = args.get("eps", None).map_or(Some(1e-5), |v| {
                    self.number_in(v, "eps", |e| e > 0.0, "greater than 0")
                })?;
                let momentum = args.get("momentum", None).map_or(Some(0.1), |v| {
                    self.number_in(
                        v,
                        "momentum",
                        |m| (0.0..=1.0).contains(&m),
                        "between 0 and 1",
                    )
                })?;
                if input.len() != 1 && input.len() != 3 {
                    mismatch(self, format!("`batchnorm` needs [features] or [channels, height, width], found {input:?}"), None);
                    return None;
                }
                Some((Layer::BatchNorm { eps, momentum }, input.to_vec()))
            }
            "dropout" => {
                let args = self.args(call, &["p"], 1);
                let Some(v) = args.get("p", Some(0)) else {
                    return self.missing_arg(call, "p", "dropout(0.5)");
                };
                let p = self.number_in(v, "dropout", |p| (0.0..1.0).contains(&p), "in [0, 1)")?;
                Some((Layer::Dropout { p }, input.to_vec()))
            }
            "flatten" => {
                self.args(call, &[], 0);
                Some((Layer::Flatten, vec![input.iter().product()]))
            }
            "embedding" => {
                let args = self.args(call, &["vocab", "dim", "positions"], 2);
                let Some(vocab) = args.get("vocab", Some(0)) else {
                    return self.missing_arg(call, "vocab", "embedding(30522, 64)");
                };
                let vocab = self.count(vocab, "the vocabulary size", 1)?;
                let Some(dim) = args.get("dim", Some(1)) else {
                    return self.missing_arg(call, "dim", "embedding(30522, 64)");
                };
                let dim = self.count(dim, "the embedding width", 1)?;
                let positions = args
                    .get("positions", None)
                    .map_or(Some(false), |v| self.boolean(v, "positions"))?;
                if input.len() != 1 {
                    mismatch(
                        self,
                        format!(
                            "`embedding` reads a sequence of token ids, but receives {input:?}"
                        ),
                        Some("`embedding` is the first layer after `input tokens[len]`".into()),
                    );
                    return None;
                }
                Some((
                    Layer::Embedding {
                        vocab,
                        dim,
                        positions,
                    },
                    vec![input[0], dim],
                ))
            }
            "conv1d" => {
                let (out, kernel, _, padding, bias) =
                    self.conv_args(call, false, "conv1d(128, kernel: 3)")?;
                let [len, _] = sequence(self)?;
                let Some(out_len) = window(len, kernel, 1, padding) else {
                    mismatch(
                        self,
                        format!("a kernel of {kernel} does not fit a sequence of {len}"),
                        Some("use a smaller kernel or more padding".into()),
                    );
                    return None;
                };
                Some((
                    Layer::Conv1d {
                        out,
                        kernel,
                        padding,
                        bias,
                    },
                    vec![out_len, out],
                ))
            }
            "lstm" | "bilstm" => {
                let args = self.args(call, &["hidden"], 1);
                let Some(h) = args.get("hidden", Some(0)) else {
                    return self.missing_arg(call, "hidden", "lstm(128)");
                };
                let hidden = self.count(h, "the LSTM's hidden width", 1)?;
                let [len, _] = sequence(self)?;
                let bidirectional = name == "bilstm";
                let width = if bidirectional { 2 * hidden } else { hidden };
                Some((
                    Layer::Lstm {
                        hidden,
                        bidirectional,
                    },
                    vec![len, width],
                ))
            }
            "transformer" => {
                let args = self.args(call, &["heads", "ff", "dropout"], 0);
                let Some(h) = args.get("heads", None) else {
                    return self.missing_arg(call, "heads", "transformer(heads: 4, ff: 256)");
                };
                let heads = self.count(h, "attention heads", 1)?;
                let Some(f) = args.get("ff", None) else {
                    return self.missing_arg(call, "ff", "transformer(heads: 4, ff: 256)");
                };
                let ff = self.count(f, "the feed-forward width", 1)?;
                let dropout = args.get("dropout", None).map_or(Some(0.0), |v| {
                    self.number_in(v, "dropout", |p| (0.0..1.0).contains(&p), "in [0, 1)")
                })?;
                let [_, width] = sequence(self)?;
                if !width.is_multiple_of(heads) {
                    mismatch(
                        self,
                        format!("{heads} heads do not divide the width {width}"),
                        Some("the width must be a multiple of the number of heads".into()),
                    );
                    return None;
                }
                Some((Layer::Transformer { heads, ff, dropout }, input.to_vec()))
            }
            "layernorm" => {
                let args = self.args(call, &["eps"], 0);
                let eps = args.get("eps", None).map_or(Some(1e-5), |v| {
                    self.number_in(v, "eps", |e| e > 0.0, "greater than 0")
                })?;
                Some((Layer::LayerNorm { eps }, input.to_vec()))
            }
            "pool" | "max_over_time" => {
                let kind = if name == "max_over_time" {
                    self.args(call, &[], 0);
                    SeqPool::Max
                } else {
                    let args = self.args(call, &["kind"], 1);
                    let Some(k) = args.get("kind", Some(0)) else {
                        return self.missing_arg(call, "kind", "pool(max)");
                    };
                    match self
                        .choice(k, "pooling", &["max", "mean", "first"])?
                        .as_str()
                    {
                        "max" => SeqPool::Max,
                        "mean" => SeqPool::Mean,
                        _ => SeqPool::First,
                    }
                };
                let [_, width] = sequence(self)?;
                Some((Layer::Pool { kind }, vec![width]))
            }
            "relu" | "gelu" | "tanh" | "sigmoid" | "softmax" => {
                self.args(call, &[], 0);
                let layer = match name {
                    "relu" => Layer::Relu,
                    "gelu" => Layer::Gelu,
                    "tanh" => Layer::Tanh,
                    "sigmoid" => Layer::Sigmoid,
                    _ => Layer::Softmax,
                };
                Some((layer, input.to_vec()))
            }
            other => {
                self.error(CheckError::UnknownName {
                    what: "layer",
                    name: other.to_string(),
                    span: span(call.name.span),
                    help: did_you_mean(other, LAYERS.iter().copied())
                        .or_else(|| Some(one_of(LAYERS.iter().copied()))),
                });
                None
            }
        }
    }

    /// A convolution's `out` (by position or name), `kernel`, `stride` (when `strided`; else
    /// 1), `padding` and `bias`.
    fn conv_args(
        &mut self,
        call: &Call,
        strided: bool,
        example: &str,
    ) -> Option<(usize, usize, usize, usize, bool)> {
        let allowed: &[&str] = if strided {
            &["out", "kernel", "stride", "padding", "bias"]
        } else {
            &["out", "kernel", "padding", "bias"]
        };
        let args = self.args(call, allowed, 1);
        let Some(out_value) = args.get("out", Some(0)) else {
            return self.missing_arg(call, "out", example);
        };
        let what = format!("{}'s output channels", call.name.name);
        let out = self.count(out_value, &what, 1)?;
        let Some(k) = args.get("kernel", None) else {
            return self.missing_arg(call, "kernel", example);
        };
        let kernel = self.count(k, "kernel", 1)?;
        let stride = args
            .get("stride", None)
            .map_or(Some(1), |v| self.count(v, "stride", 1))?;
        let padding = args
            .get("padding", None)
            .map_or(Some(0), |v| self.count(v, "padding", 0))?;
        let bias = args
            .get("bias", None)
            .map_or(Some(true), |v| self.boolean(v, "bias"))?;
        Some((out, kernel, stride, padding, bias))
    }

    fn missing_arg<T>(&mut self, call: &Call, arg: &str, example: &str) -> Option<T> {
        self.error(CheckError::Missing {
            message: format!("`{}` needs `{arg}`", call.name.name),
            span: span(call.span),
            label: "here".into(),
            help: Some(format!("for example `{example}`")),
        });
        None
    }

    /// `teacher t = arch` and `student s = arch`: the model instances stages train.
    pub(super) fn roles(
        &mut self,
        program: &Program,
        architectures: &HashMap<String, Architecture>,
        data: &[DataSpec],
        precision: Precision,
    ) -> Vec<ModelSpec> {
        let _ = data;
        let mut models = Vec::new();
        for decl in &program.declarations {
            let Declaration::Role(r) = decl else { continue };
            let (architecture, init_from, settings) = match &r.source {
                RoleSource::Architecture {
                    architecture,
                    init_from,
                    settings,
                } => (architecture, init_from, settings),
                RoleSource::Bert(source) => {
                    match self.bert_role(r, source, precision) {
                        Some(model) => models.push(model),
                        None => {
                            self.failed.insert(format!("model {}", r.name.name));
                        }
                    }
                    continue;
                }
                // Checked once every other model is known (`Cx::pruned_roles`).
                RoleSource::Prune(_) | RoleSource::Quantize(_) => continue,
                RoleSource::Onnx(source) => {
                    match self.onnx_role(r, source) {
                        Some(model) => models.push(model),
                        None => {
                            self.failed.insert(format!("model {}", r.name.name));
                        }
                    }
                    continue;
                }
            };
            let fields = self.fields(
                settings,
                INSTANCE_SETTINGS,
                &format!("model `{}`", r.name.name),
            );
            let precision = match fields.value("precision") {
                Some(v) => self.precision(v).unwrap_or(precision),
                None => precision,
            };
            let Some(arch) = architectures.get(&architecture.name) else {
                self.failed.insert(format!("model {}", r.name.name));
                let declared = program.declarations.iter().any(
                    |d| matches!(d, Declaration::Model(m) if m.name.name == architecture.name),
                );
                if !declared {
                    self.error(CheckError::UnknownName {
                        what: "architecture",
                        name: architecture.name.clone(),
                        span: span(architecture.span),
                        help: super::closest(
                            &architecture.name,
                            architectures.keys().map(String::as_str),
                        )
                        .or_else(|| Some(one_of(architectures.keys().map(String::as_str)))),
                    });
                }
                continue;
            };
            let init_from = match init_from {
                Some(v) => {
                    let text = self.string(v, "a weights file").unwrap_or_default();
                    let path = self.resolve_path(&text);
                    if !path.is_file() {
                        self.error(CheckError::File {
                            path: text.clone(),
                            reason: "it does not exist".into(),
                            span: span(v.span),
                            help: Some("paths resolve against the folder of the .kd file".into()),
                        });
                    } else if let Err(reason) = crate::weights::check(&path, &arch.layers) {
                        self.error(CheckError::File {
                            path: text.clone(),
                            reason,
                            span: span(v.span),
                            help: Some(format!(
                                "the weights must come from a model of architecture `{}`",
                                architecture.name
                            )),
                        });
                    }
                    Some(text.into())
                }
                None => None,
            };
            models.push(ModelSpec {
                name: r.name.name.clone(),
                architecture: architecture.name.clone(),
                role: match r.role {
                    RoleKind::Teacher => Role::Teacher,
                    RoleKind::Student => Role::Student,
                },
                input: arch.input.clone(),
                layers: arch.layers.clone(),
                taps: arch.taps.clone(),
                init_from,
                init_key: r.name.name.clone(),
                params: arch.layers.iter().map(|l| l.params).sum(),
                flops: arch.layers.iter().map(|l| l.flops).sum(),
                span: to_plan(r.span),
                onnx: None,
                pruned: None,
                quantized: None,
                bert: None,
                tokens: arch.tokens,
                precision,
            });
            let _ = arch.span;
        }
        models
    }
}

/// What a tap means: a softmax's output is probabilities, a model's final output and a tap
/// named `logits` are logits, anything else is features.
fn tap_kind(layers: &[LayerSpec], tap: &Tap) -> Kind {
    match layers.get(tap.layer).map(|l| &l.layer) {
        Some(Layer::Softmax) => Kind::Probabilities,
        _ if tap.name == "logits" || tap.layer + 1 == layers.len() => Kind::Logits,
        _ => Kind::Features,
    }
}

fn window(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    (padded >= kernel).then(|| (padded - kernel) / stride + 1)
}

fn layer_prefix(layer: &Layer) -> &'static str {
    match layer {
        Layer::Linear { .. } => "linear",
        Layer::Conv2d { .. } => "conv",
        Layer::MaxPool { .. } => "maxpool",
        Layer::AvgPool { .. } => "avgpool",
        Layer::BatchNorm { .. } => "bn",
        Layer::Dropout { .. } => "dropout",
        Layer::Flatten => "flatten",
        Layer::Relu => "relu",
        Layer::Gelu => "gelu",
        Layer::Tanh => "tanh",
        Layer::Sigmoid => "sigmoid",
        Layer::Softmax => "softmax",
        Layer::Residual { .. } => "residual",
        Layer::Embedding { .. } => "embedding",
        Layer::Conv1d { .. } => "conv1d",
        Layer::Lstm { .. } => "lstm",
        Layer::Transformer { .. } => "transformer",
        Layer::LayerNorm { .. } => "layernorm",
        Layer::Pool { .. } => "pool",
    }
}

/// Trainable parameters and forward FLOPs per sample (a multiply-add is two FLOPs).
pub(super) fn cost(layer: &Layer, input: &[usize], output: &[usize]) -> (usize, u64) {
    let out_elems = output.iter().product::<usize>() as u64;
    match layer {
        Layer::Linear { out, bias } => {
            let inp = *input.last().unwrap_or(&0);
            let params = inp * out + if *bias { *out } else { 0 };
            (params, 2 * (inp as u64) * out_elems)
        }
        Layer::Conv2d {
            out, kernel, bias, ..
        } => {
            let c = input.first().copied().unwrap_or(0);
            let params = out * c * kernel * kernel + if *bias { *out } else { 0 };
            (params, 2 * (c * kernel * kernel) as u64 * out_elems)
        }
        Layer::BatchNorm { .. } => (2 * input.first().copied().unwrap_or(0), 2 * out_elems),
        Layer::MaxPool { kernel, .. } | Layer::AvgPool { kernel, .. } => {
            (0, (kernel * kernel) as u64 * out_elems)
        }
        Layer::Gelu | Layer::Tanh | Layer::Sigmoid | Layer::Softmax => (0, 4 * out_elems),
        Layer::Relu | Layer::Dropout { .. } => (0, out_elems),
        Layer::Flatten | Layer::Residual { .. } => (0, 0),
        Layer::Embedding {
            vocab,
            dim,
            positions,
        } => {
            let len = input.first().copied().unwrap_or(0);
            let params = vocab * dim + if *positions { len * dim } else { 0 };
            (params, out_elems)
        }
        Layer::Conv1d {
            out, kernel, bias, ..
        } => {
            let c = input.last().copied().unwrap_or(0);
            let params = out * c * kernel + if *bias { *out } else { 0 };
            (params, 2 * (c * kernel) as u64 * out_elems)
        }
        Layer::Lstm {
            hidden,
            bidirectional,
        } => {
            let c = input.last().copied().unwrap_or(0);
            let len = input.first().copied().unwrap_or(0) as u64;
            let directions = if *bidirectional { 2 } else { 1 };
            let per_direction = 4 * hidden * (c + hidden) + 4 * hidden;
            (
                directions * per_direction,
                directions as u64 * len * 2 * (4 * hidden * (c + hidden)) as u64,
            )
        }
        Layer::Transformer { ff, .. } => {
            let len = input.first().copied().unwrap_or(0) as u64;
            let d = input.last().copied().unwrap_or(0);
            let params = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d;
            let matmuls = len * 2 * (4 * d * d + 2 * d * ff) as u64;
            let attention = 2 * 2 * len * len * d as u64;
            (params, matmuls + attention)
        }
        Layer::LayerNorm { .. } => (2 * input.last().copied().unwrap_or(0), 5 * out_elems),
        Layer::Pool { .. } => (0, input.iter().product::<usize>() as u64),
    }
}

pub(super) fn to_plan(s: Span) -> kd_plan::Span {
    kd_plan::Span::new(s.start, s.end)
}
