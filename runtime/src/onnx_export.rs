//! A trained model as an ONNX file (opset 13, inference graph): one node per layer, named
//! after the layer, weights as initializers under their safetensors names, the input
//! `input` and the output `output`, both with a symbolic batch dimension. Dropout is left
//! out (inference), batch norm uses the running statistics, GELU is written with `Erf`
//! (exact, as kdc computes it; ONNX's own `Gelu` needs opset 20).

use std::collections::HashMap;

use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use kd_plan::{Layer, LayerSpec, ModelSpec};
use prost::Message;

use crate::error::{plan_error, Result, TensorContext};
use crate::model::Model;

const OPSET: i64 = 13;

/// The ONNX file's bytes for `model`, built from `spec`'s layers.
pub fn export(spec: &ModelSpec, model: &Model) -> Result<Vec<u8>> {
    if spec.onnx.is_some() || spec.layers.is_empty() {
        return Err(plan_error(format!(
            "model `{}` has no layers of kdc's to export",
            spec.name
        )));
    }
    let weights: HashMap<&str, &candle_core::Var> = model.state().collect();
    let mut graph = Builder {
        weights,
        nodes: Vec::new(),
        initializers: Vec::new(),
        constants: 0,
    };
    let mut value = "input".to_string();
    for layer in &spec.layers {
        value = graph.layer(layer, "", &value)?;
    }
    graph
        .nodes
        .push(node("Identity", "output", &[&value], "output", vec![]));
    let batch = |shape: &[usize]| {
        let mut dims = vec![tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimParam(
                "batch".into(),
            )),
            denotation: String::new(),
        }];
        dims.extend(shape.iter().map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            denotation: String::new(),
        }));
        dims
    };
    let output_shape = spec
        .layers
        .last()
        .map(|l| l.output.clone())
        .unwrap_or_default();
    let model = ModelProto {
        ir_version: 8,
        producer_name: "kdc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: format!("model `{}` ({})", spec.name, spec.architecture),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(GraphProto {
            name: spec.name.clone(),
            node: graph.nodes,
            initializer: graph.initializers,
            input: vec![value_info("input", batch(&spec.input))],
            output: vec![value_info("output", batch(&output_shape))],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

fn value_info(name: &str, dims: Vec<tensor_shape_proto::Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attributes,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

struct Builder<'a> {
    weights: HashMap<&'a str, &'a candle_core::Var>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    constants: usize,
}

impl Builder<'_> {
    /// Adds the weight `name` as an initializer and returns its name.
    fn weight(&mut self, name: &str) -> Result<String> {
        let var = self
            .weights
            .get(name)
            .ok_or_else(|| plan_error(format!("no weight `{name}` to export")))?;
        let values = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .ctx_with(|| format!("exporting `{name}`"))?;
        self.tensor(name, var.dims(), &values);
        Ok(name.to_string())
    }

    fn tensor(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    /// A scalar constant, as an initializer.
    fn constant(&mut self, value: f32) -> String {
        self.constants += 1;
        let name = format!("const{}", self.constants);
        self.tensor(&name, &[], &[value]);
        name
    }

    /// Adds the nodes of `layer` reading `input`; returns the value it outputs.
    fn layer(&mut self, layer: &LayerSpec, prefix: &str, input: &str) -> Result<String> {
        let name = format!("{prefix}{}", layer.name);
        let out = name.clone();
        let param = |field: &str| format!("{name}.{field}");
        match &layer.layer {
            Layer::Linear { bias, .. } => {
                let weight = self.weight(&param("weight"))?;
                if layer.input.len() == 1 && *bias {
                    let b = self.weight(&param("bias"))?;
                    self.nodes.push(node(
                        "Gemm",
                        &name,
                        &[input, &weight, &b],
                        &out,
                        vec![int("transB", 1)],
                    ));
                } else {
                    // x @ W^T (+ b): on the last axis of a larger sample, or without a bias
                    // (candle-onnx's Gemm needs its C input).
                    let transposed = format!("{name}.weight_t");
                    self.nodes.push(node(
                        "Transpose",
                        &transposed,
                        &[&weight],
                        &transposed,
                        vec![],
                    ));
                    let product = if *bias {
                        format!("{name}.matmul")
                    } else {
                        out.clone()
                    };
                    self.nodes.push(node(
                        "MatMul",
                        &product,
                        &[input, &transposed],
                        &product,
                        vec![],
                    ));
                    if *bias {
                        let b = self.weight(&param("bias"))?;
                        self.nodes
                            .push(node("Add", &name, &[&product, &b], &out, vec![]));
                    }
                }
            }
            Layer::Conv2d {
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                let mut inputs = vec![input.to_string(), self.weight(&param("weight"))?];
                if *bias {
                    inputs.push(self.weight(&param("bias"))?);
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.nodes.push(node(
                    "Conv",
                    &name,
                    &refs,
                    &out,
                    vec![
                        ints("kernel_shape", &[*kernel, *kernel]),
                        ints("strides", &[(*stride).max(1); 2]),
                        ints("pads", &[*padding; 4]),
                    ],
                ));
            }
            Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride } => {
                let op = if matches!(layer.layer, Layer::MaxPool { .. }) {
                    "MaxPool"
                } else {
                    "AveragePool"
                };
                self.nodes.push(node(
                    op,
                    &name,
                    &[input],
                    &out,
                    vec![
                        ints("kernel_shape", &[*kernel, *kernel]),
                        ints("strides", &[(*stride).max(1); 2]),
                    ],
                ));
            }
            Layer::BatchNorm { eps, .. } => {
                let inputs = [
                    input.to_string(),
                    self.weight(&param("weight"))?,
                    self.weight(&param("bias"))?,
                    self.weight(&param("running_mean"))?,
                    self.weight(&param("running_var"))?,
                ];
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.nodes.push(node(
                    "BatchNormalization",
                    &name,
                    &refs,
                    &out,
                    vec![float("epsilon", *eps as f32)],
                ));
            }
            // Inference: dropout is the identity.
            Layer::Dropout { .. } => return Ok(input.to_string()),
            Layer::Flatten => {
                self.nodes
                    .push(node("Flatten", &name, &[input], &out, vec![int("axis", 1)]))
            }
            Layer::Relu => self.nodes.push(node("Relu", &name, &[input], &out, vec![])),
            Layer::Tanh => self.nodes.push(node("Tanh", &name, &[input], &out, vec![])),
            Layer::Sigmoid => self
                .nodes
                .push(node("Sigmoid", &name, &[input], &out, vec![])),
            Layer::Softmax => self.nodes.push(node(
                "Softmax",
                &name,
                &[input],
                &out,
                vec![int("axis", -1)],
            )),
            Layer::Gelu => {
                // 0.5 * x * (1 + erf(x / sqrt(2)))
                let sqrt2 = self.constant(std::f32::consts::SQRT_2);
                let one = self.constant(1.0);
                let half = self.constant(0.5);
                let step = |s: &str| format!("{name}.{s}");
                self.nodes.push(node(
                    "Div",
                    &step("scaled"),
                    &[input, &sqrt2],
                    &step("scaled"),
                    vec![],
                ));
                self.nodes.push(node(
                    "Erf",
                    &step("erf"),
                    &[&step("scaled")],
                    &step("erf"),
                    vec![],
                ));
                self.nodes.push(node(
                    "Add",
                    &step("plus1"),
                    &[&step("erf"), &one],
                    &step("plus1"),
                    vec![],
                ));
                self.nodes.push(node(
                    "Mul",
                    &step("times_x"),
                    &[input, &step("plus1")],
                    &step("times_x"),
                    vec![],
                ));
                self.nodes
                    .push(node("Mul", &name, &[&step("times_x"), &half], &out, vec![]));
            }
            Layer::Residual { body, shortcut } => {
                let inner = format!("{name}.");
                let mut value = input.to_string();
                for l in body {
                    value = self.layer(l, &inner, &value)?;
                }
                let skip = match shortcut {
                    Some(s) => {
                        let named = LayerSpec {
                            name: "shortcut".into(),
                            ..(**s).clone()
                        };
                        self.layer(&named, &inner, input)?
                    }
                    None => input.to_string(),
                };
                self.nodes
                    .push(node("Add", &name, &[&value, &skip], &out, vec![]));
            }
            other => {
                return Err(plan_error(format!(
                    "kdc cannot write `{}` layers to ONNX yet",
                    kd_plan::onnx_unsupported(other).unwrap_or("these")
                )))
            }
        }
        Ok(out)
    }
}
