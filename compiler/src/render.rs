//! The Plan's dataflow graph as Mermaid or Graphviz DOT, one cluster per stage.

use std::fmt::Write;

use kd_plan::{Kind, Node, Op, Plan};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};

fn label(node: &Node) -> String {
    match &node.op {
        Op::Batch { data, split } => format!("batch {data}.{split}"),
        Op::Augment { pipeline } => format!("augment {pipeline}"),
        Op::Forward { model, train } => {
            format!("{model} forward{}", if *train { "" } else { " (frozen)" })
        }
        Op::CachedForward { model } => format!("{model} forward (frozen, cached)"),
        Op::Const { value } => short_number(*value),
        Op::Scheduled { name, schedule } => {
            let (from, to) = schedule.ends();
            let form = schedule.form();
            format!(
                "{name}: {form} {} -> {}",
                short_number(from),
                short_number(to)
            )
        }
        Op::Add => "+".into(),
        Op::Sub => "-".into(),
        Op::Mul => "*".into(),
        Op::Div => "/".into(),
        Op::Pow => "^".into(),
        Op::Neg => "neg".into(),
        Op::Softmax => "softmax".into(),
        Op::LogSoftmax => "log_softmax".into(),
        Op::Kl => "kl".into(),
        Op::CrossEntropy => "cross_entropy".into(),
        Op::SoftCrossEntropy => "soft_cross_entropy".into(),
        Op::Mse => "mse".into(),
        Op::Cosine => "cosine".into(),
        Op::AttentionTransfer => "attention_transfer".into(),
        Op::Ensemble => "ensemble".into(),
        Op::Project { name, input, out } => format!("{name} (trainable, {input} -> {out})"),
        Op::Loss => "loss".into(),
    }
}

/// Constants as a reader writes them: 0.1, not 0.09999999999999998.
fn short_number(v: f64) -> String {
    let text = format!("{v:.6}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-0" {
        "0".into()
    } else {
        trimmed.to_string()
    }
}

fn edge_label(port: &str, kind: Kind, shape: &[usize]) -> String {
    match kind {
        Kind::Scalar => port.to_string(),
        _ if shape.is_empty() => port.to_string(),
        _ => format!("{port} {shape:?}"),
    }
}

fn stage_id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A Mermaid flowchart (`flowchart TD`), stages as subgraphs in order.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart TD\n");
    for stage in &plan.stages {
        let _ = writeln!(
            out,
            "  subgraph {}[\"stage {}\"]",
            stage_id(&stage.name),
            stage.name
        );
        for n in &stage.nodes {
            if let Some(node) = plan.graph.node_weight(*n) {
                let shape = match node.op {
                    Op::Batch { .. } | Op::CachedForward { .. } => ("[(", ")]"),
                    Op::Forward { .. } => ("[[", "]]"),
                    Op::Loss => ("((", "))"),
                    _ => ("[", "]"),
                };
                let _ = writeln!(
                    out,
                    "    n{}{}\"{}\"{}",
                    n.index(),
                    shape.0,
                    label(node).replace('"', "'"),
                    shape.1
                );
            }
        }
        out.push_str("  end\n");
    }
    for e in plan.graph.edge_references() {
        let w = e.weight();
        let _ = writeln!(
            out,
            "  n{} -->|\"{}\"| n{}",
            e.source().index(),
            edge_label(&w.port, w.ty.kind, &w.ty.shape),
            e.target().index()
        );
    }
    for pair in plan.stages.windows(2) {
        let _ = writeln!(
            out,
            "  {} -.-> {}",
            stage_id(&pair[0].name),
            stage_id(&pair[1].name)
        );
    }
    out
}

/// Graphviz DOT, stages as clusters in order.
pub fn dot(plan: &Plan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n",
        plan.settings.name
    );
    for (i, stage) in plan.stages.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"stage {}\";",
            stage.name
        );
        for n in &stage.nodes {
            if let Some(node) = plan.graph.node_weight(*n) {
                let shape = match node.op {
                    Op::Batch { .. } | Op::CachedForward { .. } => "cylinder",
                    Op::Forward { .. } => "box3d",
                    Op::Loss => "doublecircle",
                    _ => "box",
                };
                let _ = writeln!(
                    out,
                    "    n{} [label=\"{}\", shape={shape}];",
                    n.index(),
                    label(node).replace('"', "'")
                );
            }
        }
        out.push_str("  }\n");
    }
    for e in plan.graph.edge_references() {
        let w = e.weight();
        let _ = writeln!(
            out,
            "  n{} -> n{} [label=\"{}\"];",
            e.source().index(),
            e.target().index(),
            edge_label(&w.port, w.ty.kind, &w.ty.shape)
        );
    }
    out.push_str("}\n");
    out
}
