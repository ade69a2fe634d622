//! `teacher t = onnx("file.onnx") { input "x" [..]  output "y" [..]  tap "v" as name }`:
//! checked against the file's graph, so a wrong name, a shape that contradicts the file or
//! an operator candle-onnx cannot run is reported on the `.kd` line before anything runs.

use kd_grammar::ast::{OnnxPort, OnnxPortRole, OnnxSource, RoleDecl, RoleKind};
use kd_plan::{Kind, ModelSpec, OnnxSpec, Role, Tap, TensorType};

use super::Cx;
use crate::diagnostics::{one_of, span, CheckError};
use crate::onnx::{Dims, OnnxFacts};

impl Cx<'_> {
    /// The model an ONNX role declares, or `None` after reporting why there is none.
    pub(super) fn onnx_role(&mut self, r: &RoleDecl, source: &OnnxSource) -> Option<ModelSpec> {
        if r.role != RoleKind::Teacher {
            self.invalid(
                source.span,
                format!("student `{}` cannot come from an ONNX file", r.name.name),
                "frozen",
                Some("kdc runs ONNX models frozen: use one as a `teacher`, and give the student a `model`".into()),
            );
            return None;
        }
        let text = self.string(&source.path, "an ONNX file")?;
        let path = self.resolve_path(&text);
        let file_error = |reason: String, help: Option<String>| CheckError::File {
            path: text.clone(),
            reason,
            span: span(source.path.span),
            help,
        };
        if !path.is_file() {
            self.error(file_error(
                "it does not exist".into(),
                Some("paths resolve against the folder of the .kd file".into()),
            ));
            return None;
        }
        let facts = match crate::onnx::read(&path) {
            Ok(facts) => facts,
            Err(reason) => {
                self.error(file_error(reason, None));
                return None;
            }
        };
        if !facts.unsupported.is_empty() {
            self.error(file_error(
                format!(
                    "candle-onnx cannot run its operators {}",
                    facts.unsupported.join(", ")
                ),
                Some("export the model with operators candle-onnx supports (docs/language.md lists them)".into()),
            ));
            return None;
        }
        let mut input = None;
        let mut output = None;
        let mut taps = Vec::new();
        let mut ok = true;
        for port in &source.ports {
            let known = match port.role {
                OnnxPortRole::Input => &facts.inputs,
                OnnxPortRole::Output | OnnxPortRole::Tap => &facts.values,
            };
            let Some(checked) = self.onnx_port(port, known, &facts) else {
                ok = false;
                continue;
            };
            let slot = match port.role {
                OnnxPortRole::Input => &mut input,
                OnnxPortRole::Output => &mut output,
                OnnxPortRole::Tap => {
                    taps.push(checked);
                    continue;
                }
            };
            if slot.is_some() {
                self.invalid(
                    port.span,
                    "an ONNX model takes one `input` and one `output`".into(),
                    "a second one",
                    Some("tap other values with `tap \"name\" as alias`".into()),
                );
                ok = false;
            }
            *slot = Some(checked);
        }
        for (what, found, example) in [
            ("input", &input, "input \"pixels\" [1, 28, 28]"),
            ("output", &output, "output \"logits\" [10]"),
        ] {
            if found.is_none() && ok {
                self.error(CheckError::Missing {
                    message: format!("`{}` names no `{what}` of `{text}`", r.name.name),
                    span: span(source.span),
                    label: format!("needs an `{what}`"),
                    help: Some(format!("for example `{example}`")),
                });
                ok = false;
            }
        }
        let (Some(input), Some(output), true) = (input, output, ok) else {
            return None;
        };
        let mut model_taps = Vec::new();
        let mut tap_values = Vec::new();
        for (tap, port) in taps
            .iter()
            .zip(source.ports.iter().filter(|p| p.role == OnnxPortRole::Tap))
        {
            let Some(alias) = &port.alias else {
                self.invalid(
                    port.span,
                    format!("tap `{}` has no name in the pipeline", tap.value),
                    "unnamed",
                    Some("name it: `tap \"...\" as hidden`".into()),
                );
                return None;
            };
            if alias.name == "output" || model_taps.iter().any(|t: &Tap| t.name == alias.name) {
                self.invalid(
                    alias.span,
                    format!("tap `{}` is named twice", alias.name),
                    "rename it",
                    None,
                );
                return None;
            }
            model_taps.push(Tap {
                name: alias.name.clone(),
                layer: 0,
                ty: TensorType {
                    kind: if alias.name == "logits" {
                        Kind::Logits
                    } else {
                        Kind::Features
                    },
                    shape: tap.shape.clone(),
                },
            });
            tap_values.push((alias.name.clone(), tap.value.clone()));
        }
        // The output answers to `t.output` and to its alias, `logits` unless named.
        let output_port = source.ports.iter().find(|p| p.role == OnnxPortRole::Output);
        let alias = output_port
            .and_then(|p| p.alias.as_ref())
            .map_or("logits".to_string(), |a| a.name.clone());
        // A graph that ends in Softmax gives probabilities, not logits.
        let kind = if facts.softmax_outputs.contains(&output.value) {
            Kind::Probabilities
        } else {
            Kind::Logits
        };
        for name in [alias.as_str(), "output"] {
            if !model_taps.iter().any(|t| t.name == name) {
                model_taps.push(Tap {
                    name: name.to_string(),
                    layer: 0,
                    ty: TensorType {
                        kind,
                        shape: output.shape.clone(),
                    },
                });
            }
        }
        Some(ModelSpec {
            name: r.name.name.clone(),
            architecture: format!("onnx(\"{text}\")"),
            role: Role::Teacher,
            input: input.shape,
            layers: Vec::new(),
            taps: model_taps,
            init_from: None,
            init_key: r.name.name.clone(),
            params: facts.params,
            flops: 0,
            span: super::models::to_plan(r.span),
            onnx: Some(OnnxSpec {
                path: text.into(),
                input: input.value,
                output: output.value,
                taps: tap_values,
            }),
            pruned: None,
            quantized: None,
            bert: None,
            tokens: false,
            precision: Default::default(),
        })
    }

    /// One port: its value must exist in the file, and its shape (one sample's, without the
    /// batch dimension) must be written or known from the file, and agree with it.
    fn onnx_port(
        &mut self,
        port: &OnnxPort,
        known: &std::collections::BTreeMap<String, Option<Dims>>,
        facts: &OnnxFacts,
    ) -> Option<CheckedPort> {
        let value = self.string(&port.value, "an ONNX value name")?;
        let Some(dims) = known.get(&value) else {
            let (what, names): (&'static str, Vec<&str>) = match port.role {
                OnnxPortRole::Input => (
                    "ONNX input",
                    facts.inputs.keys().map(String::as_str).collect(),
                ),
                _ => (
                    "ONNX value",
                    facts.values.keys().map(String::as_str).collect(),
                ),
            };
            self.error(CheckError::UnknownName {
                what,
                name: value.clone(),
                span: span(port.value.span),
                help: super::closest(&value, names.iter().copied())
                    .or_else(|| Some(format!("the file has {}", one_of(names.iter().copied())))),
            });
            return None;
        };
        // kdc feeds batches of any size: a file that fixes the batch dimension cannot run.
        if let (OnnxPortRole::Input, Some(Some(n))) =
            (port.role, dims.as_ref().and_then(|d| d.first()))
        {
            self.invalid(
                port.value.span,
                format!("`{value}` has a fixed batch dimension of {n} in the file"),
                "fixed batch",
                Some("export the model with a symbolic (dynamic) first dimension".into()),
            );
            return None;
        }
        // The file's dimensions after the batch one, when it gives them all.
        let from_file: Option<Vec<usize>> = dims
            .as_ref()
            .and_then(|d| {
                d.get(1..)
                    .map(|rest| rest.iter().copied().collect::<Option<Vec<usize>>>())
            })
            .flatten();
        let written = match &port.shape {
            Some(v) => Some(self.shape(v, "a dimension", 1)?),
            None => None,
        };
        let shape = match (written, from_file) {
            (Some(w), Some(f)) if w != f => {
                self.invalid(
                    port.shape.as_ref().map_or(port.span, |v| v.span),
                    format!("`{value}` has shape {f:?} in the file (after the batch dimension), not {w:?}"),
                    "contradicts the file",
                    Some(format!("write `{f:?}` or leave the shape out")),
                );
                return None;
            }
            (Some(w), _) => w,
            (None, Some(f)) => f,
            (None, None) => {
                self.invalid(
                    port.span,
                    format!("the file does not say the shape of `{value}`"),
                    "shape unknown",
                    Some(format!(
                        "write one sample's shape after the name: `\"{value}\" [32]`"
                    )),
                );
                return None;
            }
        };
        Some(CheckedPort { value, shape })
    }
}

/// A port whose value exists in the file, with one sample's shape.
struct CheckedPort {
    value: String,
    shape: Vec<usize>,
}
