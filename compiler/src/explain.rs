//! `kdc check --verbose`: each model's layers with shapes, parameters and FLOPs.

use std::fmt::Write;

use kd_plan::{Layer, LayerSpec, ModelSpec, Plan, Role};

fn describe(layer: &Layer) -> String {
    match layer {
        Layer::Linear { out, bias } => {
            format!("linear({out}{})", if *bias { "" } else { ", bias: false" })
        }
        Layer::Conv2d {
            out,
            kernel,
            stride,
            padding,
            ..
        } => format!("conv2d({out}, kernel: {kernel}, stride: {stride}, padding: {padding})"),
        Layer::MaxPool { kernel, stride } => format!("maxpool({kernel}, stride: {stride})"),
        Layer::AvgPool { kernel, stride } => format!("avgpool({kernel}, stride: {stride})"),
        Layer::BatchNorm { .. } => "batchnorm".into(),
        Layer::Dropout { p } => format!("dropout({p})"),
        Layer::Flatten => "flatten".into(),
        Layer::Relu => "relu".into(),
        Layer::Gelu => "gelu".into(),
        Layer::Tanh => "tanh".into(),
        Layer::Sigmoid => "sigmoid".into(),
        Layer::Softmax => "softmax".into(),
        Layer::Embedding {
            vocab,
            dim,
            positions,
        } => format!(
            "embedding({vocab}, {dim}{})",
            if *positions { ", positions: true" } else { "" }
        ),
        Layer::Conv1d {
            out,
            kernel,
            padding,
            ..
        } => format!("conv1d({out}, kernel: {kernel}, padding: {padding})"),
        Layer::Lstm {
            hidden,
            bidirectional,
        } => format!(
            "{}({hidden})",
            if *bidirectional { "bilstm" } else { "lstm" }
        ),
        Layer::Transformer { heads, ff, dropout } => {
            format!("transformer(heads: {heads}, ff: {ff}, dropout: {dropout})")
        }
        Layer::LayerNorm { .. } => "layernorm".into(),
        Layer::Pool { kind } => format!("pool({})", format!("{kind:?}").to_lowercase()),
        Layer::Residual { shortcut, .. } => format!(
            "residual{}",
            if shortcut.is_some() {
                " (with shortcut)"
            } else {
                ""
            }
        ),
    }
}

fn rows(layers: &[LayerSpec], depth: usize, out: &mut Vec<[String; 5]>) {
    for l in layers {
        out.push([
            format!("{}{}", "  ".repeat(depth), l.name),
            describe(&l.layer),
            format!("{:?}", l.output),
            group(l.params as u64),
            group(l.flops),
        ]);
        if let Layer::Residual { body, shortcut } = &l.layer {
            rows(body, depth + 1, out);
            if let Some(s) = shortcut {
                rows(std::slice::from_ref(s), depth + 1, out);
            }
        }
    }
}

/// 1234567 as "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn model_table(model: &ModelSpec) -> String {
    let role = match model.role {
        Role::Teacher => "teacher",
        Role::Student => "student",
        Role::Baseline => "baseline",
    };
    let mut table = vec![[
        "layer".to_string(),
        "op".into(),
        "output".into(),
        "params".into(),
        "FLOPs".into(),
    ]];
    table.push([
        "input".into(),
        String::new(),
        format!("{:?}", model.input),
        String::new(),
        String::new(),
    ]);
    rows(&model.layers, 0, &mut table);
    table.push([
        "total".into(),
        String::new(),
        String::new(),
        group(model.params as u64),
        group(model.flops),
    ]);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "model {} ({role}, architecture {})\n",
        model.name, model.architecture
    );
    for row in &table {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
    }
    let taps: Vec<String> = model
        .taps
        .iter()
        .map(|t| format!("{} {:?} {:?}", t.name, t.ty.kind, t.ty.shape).to_lowercase())
        .collect();
    let _ = writeln!(out, "  taps: {}", taps.join(", "));
    if let Some(p) = &model.pruned {
        let (first, last) = p.sparsity.ends();
        let sparsity = match p.gradual() {
            true => format!(
                "{} from {} to {} over its first stage, every {} step(s)",
                p.sparsity.form(),
                percent(first),
                percent(last),
                p.every
            ),
            false => format!("{} at once", percent(first)),
        };
        let what = match p.neurons.is_empty() {
            true => p.tensors.join(", "),
            false => {
                let layers: Vec<String> = p
                    .neurons
                    .iter()
                    .map(|g| format!("{} ({} -> {} neurons)", g.layer, g.from, g.keep))
                    .collect();
                layers.join(", ")
            }
        };
        let _ = writeln!(out, "  pruned from {}: {sparsity}, of {what}", p.from);
    }
    out
}

/// A fraction as a percentage, without trailing zeros (`0.5` -> `50%`).
fn percent(fraction: f64) -> String {
    let text = format!("{:.4}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Every model of the Plan, then each stage in one line.
pub fn explain(plan: &Plan) -> String {
    let mut out = String::new();
    for model in &plan.models {
        out.push_str(&model_table(model));
        out.push('\n');
    }
    for stage in &plan.stages {
        let _ = writeln!(
            out,
            "stage {}: trains {} on {}.{} for {} epochs of batch {} ({} graph nodes)",
            stage.name,
            stage.trains,
            stage.data,
            stage.split,
            stage.epochs,
            stage.batch,
            stage.nodes.len()
        );
    }
    out
}
