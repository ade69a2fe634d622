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
    if spec.onnx.is_some() || (spec.layers.is_empty() && spec.bert.is_none()) {
        return Err(plan_error(format!(
            "model `{}` has no layers of kdc's to export",
            spec.name
        )));
    }
    let weights: HashMap<String, candle_core::Tensor> =
        model.export_tensors().into_iter().collect();
    let int8 = model
        .int8_tensors()
        .into_iter()
        .map(|q| (q.name.clone(), q))
        .collect();
    let mut graph = Builder {
        weights,
        int8,
        nodes: Vec::new(),
        initializers: Vec::new(),
        constants: 0,
        mask: None,
    };
    // A token model reads int64 ids, as deployed text models do; the attention mask is
    // "not the padding id", computed in the graph.
    let input_name = if spec.tokens { "input_ids" } else { "input" };
    let mut value = input_name.to_string();
    if spec.tokens {
        let pad = model.pad_id().unwrap_or(0);
        let pad = graph.int_constant(&[], &[i64::from(pad)]);
        let is_pad = graph.op("Equal", "mask.is_pad", &[input_name, &pad], vec![]);
        let real = graph.op("Not", "mask.real", &[&is_pad], vec![]);
        let mask = graph.op(
            "Cast",
            "mask",
            &[&real],
            vec![int("to", DataType::Float as i64)],
        );
        graph.mask = Some(mask);
    }
    match (&spec.bert, model.bert_export_config()) {
        (Some(bert), Some(config)) => value = graph.bert(bert, &config, &value)?,
        _ => {
            for layer in &spec.layers {
                value = graph.layer(layer, "", &value)?;
            }
        }
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
    let output_shape = match &spec.bert {
        Some(bert) => vec![bert.classes],
        None => spec
            .layers
            .last()
            .map(|l| l.output.clone())
            .unwrap_or_default(),
    };
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
            input: vec![{
                let mut dims = batch(&spec.input);
                if spec.bert.is_some() {
                    // Any length up to the checkpoint's positions.
                    dims[1].value = Some(tensor_shape_proto::dimension::Value::DimParam(
                        "sequence".into(),
                    ));
                }
                let mut info = value_info(input_name, dims);
                if spec.tokens {
                    if let Some(type_proto::Value::TensorType(t)) =
                        info.r#type.as_mut().and_then(|t| t.value.as_mut())
                    {
                        t.elem_type = DataType::Int64 as i32;
                    }
                }
                info
            }],
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

fn ints_signed(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
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

struct Builder {
    /// Every tensor of the model by export name.
    weights: HashMap<String, candle_core::Tensor>,
    /// An int8 model's quantised weights by name: shape, int8 values, per-channel scales,
    /// and the scale of the layer's input.
    int8: HashMap<String, crate::model::Int8Weight>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    constants: usize,
    /// Token models: the value holding the current attention mask, `[B, L]` float.
    mask: Option<String>,
}

impl Builder {
    /// Adds a node whose one output is named after it; returns the name.
    fn op(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, name, attributes));
        name.to_string()
    }

    /// An int64 constant of shape `dims`, as an initializer.
    fn int_constant(&mut self, dims: &[usize], values: &[i64]) -> String {
        self.constants += 1;
        let name = format!("const{}", self.constants);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A float tensor built here (a reordered weight), as an initializer.
    fn float_tensor(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.tensor(name, dims, values);
        name.to_string()
    }

    fn values(&self, name: &str) -> Result<Vec<f32>> {
        let tensor = self
            .weights
            .get(name)
            .ok_or_else(|| plan_error(format!("no weight `{name}` to export")))?;
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .ctx_with(|| format!("exporting `{name}`"))
    }

    /// `x W^T + b` on the last axis.
    fn linear(&mut self, x: &str, prefix: &str, out: &str) -> Result<String> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        let wt = self.op(
            "Transpose",
            &format!("{prefix}.weight_t"),
            &[&weight],
            vec![],
        );
        let product = self.op("MatMul", &format!("{prefix}.matmul"), &[x, &wt], vec![]);
        Ok(self.op("Add", out, &[&product, &bias], vec![]))
    }

    /// Layer norm over the last axis (opset 13 has no LayerNormalization).
    fn layer_norm(&mut self, x: &str, prefix: &str, eps: f64, out: &str) -> Result<String> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        let step = |s: &str| format!("{out}.{s}");
        let last = vec![ints_signed("axes", &[-1]), int("keepdims", 1)];
        let mean = self.op("ReduceMean", &step("mean"), &[x], last.clone());
        let centred = self.op("Sub", &step("centred"), &[x, &mean], vec![]);
        let squared = self.op("Mul", &step("squared"), &[&centred, &centred], vec![]);
        let var = self.op("ReduceMean", &step("var"), &[&squared], last);
        let eps = self.constant(eps as f32);
        let shifted = self.op("Add", &step("var_eps"), &[&var, &eps], vec![]);
        let std = self.op("Sqrt", &step("std"), &[&shifted], vec![]);
        let normed = self.op("Div", &step("normed"), &[&centred, &std], vec![]);
        let scaled = self.op("Mul", &step("scaled"), &[&normed, &weight], vec![]);
        Ok(self.op("Add", out, &[&scaled, &bias], vec![]))
    }

    /// `0.5 * x * (1 + erf(x / sqrt(2)))`.
    fn gelu(&mut self, x: &str, out: &str) -> String {
        let sqrt2 = self.constant(std::f32::consts::SQRT_2);
        let one = self.constant(1.0);
        let half = self.constant(0.5);
        let step = |s: &str| format!("{out}.{s}");
        let scaled = self.op("Div", &step("scaled"), &[x, &sqrt2], vec![]);
        let erf = self.op("Erf", &step("erf"), &[&scaled], vec![]);
        let plus1 = self.op("Add", &step("plus1"), &[&erf, &one], vec![]);
        let times_x = self.op("Mul", &step("times_x"), &[x, &plus1], vec![]);
        self.op("Mul", out, &[&times_x, &half], vec![])
    }

    /// `(mask - 1) * 1e9`: zero at real tokens, far below any activation at padding.
    fn mask_penalty(&mut self, mask: &str, out: &str) -> String {
        let one = self.constant(1.0);
        let big = self.constant(1e9);
        let shifted = self.op("Sub", &format!("{out}.shifted"), &[mask, &one], vec![]);
        self.op("Mul", out, &[&shifted, &big], vec![])
    }

    /// Multi-head attention over the real tokens: queries, keys and values `[B, L, D]` to the
    /// context vectors `[B, L, D]`, as `sequence::attention` computes them.
    fn attention(
        &mut self,
        [q, k, v]: [&str; 3],
        mask: &str,
        d: usize,
        heads: usize,
        name: &str,
    ) -> String {
        let step = |s: &str| format!("{name}.{s}");
        let dh = d / heads;
        let split_shape = self.int_constant(&[4], &[0, 0, heads as i64, dh as i64]);
        let mut parts = Vec::new();
        for (value, part) in [(q, "q"), (k, "k"), (v, "v")] {
            let shaped = self.op(
                "Reshape",
                &step(&format!("{part}_heads")),
                &[value, &split_shape],
                vec![],
            );
            let perm: &[usize] = if part == "k" {
                &[0, 2, 3, 1]
            } else {
                &[0, 2, 1, 3]
            };
            parts.push(self.op(
                "Transpose",
                &step(&format!("{part}_t")),
                &[&shaped],
                vec![ints("perm", perm)],
            ));
        }
        let scores = self.op("MatMul", &step("scores"), &[&parts[0], &parts[1]], vec![]);
        let root = self.constant((dh as f32).sqrt());
        let scaled = self.op("Div", &step("scaled"), &[&scores, &root], vec![]);
        let penalty = self.mask_penalty(mask, &step("penalty"));
        let axes12 = self.int_constant(&[2], &[1, 2]);
        let penalty = self.op("Unsqueeze", &step("penalty4"), &[&penalty, &axes12], vec![]);
        let masked = self.op("Add", &step("masked"), &[&scaled, &penalty], vec![]);
        let weights = self.op(
            "Softmax",
            &step("weights"),
            &[&masked],
            vec![int("axis", -1)],
        );
        let context = self.op("MatMul", &step("context"), &[&weights, &parts[2]], vec![]);
        let context = self.op(
            "Transpose",
            &step("context_t"),
            &[&context],
            vec![ints("perm", &[0, 2, 1, 3])],
        );
        let merge = self.int_constant(&[3], &[0, 0, d as i64]);
        self.op(
            "Reshape",
            &step("context_merged"),
            &[&context, &merge],
            vec![],
        )
    }

    /// Pooling over the real tokens, as `sequence::pool` computes it.
    fn pool(&mut self, input: &str, mask: &str, kind: kd_plan::SeqPool, out: &str) -> String {
        let step = |s: &str| format!("{out}.{s}");
        match kind {
            kd_plan::SeqPool::Max => {
                let axis2 = self.int_constant(&[1], &[2]);
                let penalty = self.mask_penalty(mask, &step("penalty"));
                let penalty = self.op("Unsqueeze", &step("penalty3"), &[&penalty, &axis2], vec![]);
                let shifted = self.op("Add", &step("masked"), &[input, &penalty], vec![]);
                let top = self.op(
                    "ReduceMax",
                    &step("max"),
                    &[&shifted],
                    vec![ints("axes", &[1]), int("keepdims", 0)],
                );
                // A row with no real token pools to zeros, as in kdc.
                let any = self.op(
                    "ReduceMax",
                    &step("any_real"),
                    &[mask],
                    vec![ints("axes", &[1]), int("keepdims", 1)],
                );
                self.op("Mul", out, &[&top, &any], vec![])
            }
            kd_plan::SeqPool::Mean => {
                let axis1 = self.int_constant(&[1], &[1]);
                let axis2 = self.int_constant(&[1], &[2]);
                let m3 = self.op("Unsqueeze", &step("mask3"), &[mask, &axis2], vec![]);
                let kept = self.op("Mul", &step("kept"), &[input, &m3], vec![]);
                let sum = self.op(
                    "ReduceSum",
                    &step("sum"),
                    &[&kept, &axis1],
                    vec![int("keepdims", 0)],
                );
                let count = self.op(
                    "ReduceSum",
                    &step("count"),
                    &[mask, &axis1],
                    vec![int("keepdims", 1)],
                );
                let one = self.constant(1.0);
                let count = self.op("Max", &step("count1"), &[&count, &one], vec![]);
                self.op("Div", out, &[&sum, &count], vec![])
            }
            kd_plan::SeqPool::First => {
                let zero = self.int_constant(&[], &[0]);
                self.op("Gather", out, &[input, &zero], vec![int("axis", 1)])
            }
        }
    }

    /// A BERT classifier (`bert.rs`): embeddings, post-norm encoder layers, pooling, head.
    fn bert(
        &mut self,
        spec: &kd_plan::BertSpec,
        config: &crate::model::bert::ExportConfig,
        input: &str,
    ) -> Result<String> {
        let mask = self.current_mask("bert")?;
        let h = spec.hidden;
        // Positions 0..L of the table, L read from the input's shape.
        let shape = self.op("Shape", "embeddings.input_shape", &[input], vec![]);
        let one = self.int_constant(&[1], &[1]);
        let zero = self.int_constant(&[1], &[0]);
        let len = self.op(
            "Gather",
            "embeddings.length",
            &[&shape, &one],
            vec![int("axis", 0)],
        );
        let table = self.weight("embeddings.position_embeddings.weight")?;
        let positions = self.op(
            "Slice",
            "embeddings.positions",
            &[&table, &zero, &len, &zero],
            vec![],
        );
        let words = self.weight("embeddings.word_embeddings.weight")?;
        let tokens = self.op(
            "Gather",
            "embeddings.tokens",
            &[&words, input],
            vec![int("axis", 0)],
        );
        let types = self.weight("embeddings.token_type_embeddings.weight")?;
        let first = self.int_constant(&[], &[0]);
        let type0 = self.op(
            "Gather",
            "embeddings.type0",
            &[&types, &first],
            vec![int("axis", 0)],
        );
        let summed = self.op("Add", "embeddings.sum1", &[&tokens, &positions], vec![]);
        let summed = self.op("Add", "embeddings.sum", &[&summed, &type0], vec![]);
        let mut x = self.layer_norm(&summed, "embeddings.LayerNorm", config.eps, "embeddings")?;
        for i in 0..spec.layers.len() {
            let p = format!("encoder.layer.{i}");
            let q = self.linear(
                &x,
                &format!("{p}.attention.self.query"),
                &format!("{p}.q_out"),
            )?;
            let k = self.linear(
                &x,
                &format!("{p}.attention.self.key"),
                &format!("{p}.k_out"),
            )?;
            let v = self.linear(
                &x,
                &format!("{p}.attention.self.value"),
                &format!("{p}.v_out"),
            )?;
            let context = self.attention(
                [&q, &k, &v],
                &mask,
                h,
                config.heads,
                &format!("{p}.attention"),
            );
            let attended = self.linear(
                &context,
                &format!("{p}.attention.output.dense"),
                &format!("{p}.attended"),
            )?;
            let sum = self.op("Add", &format!("{p}.residual1"), &[&attended, &x], vec![]);
            x = self.layer_norm(
                &sum,
                &format!("{p}.attention.output.LayerNorm"),
                config.eps,
                &format!("{p}.normed1"),
            )?;
            let inner = self.linear(
                &x,
                &format!("{p}.intermediate.dense"),
                &format!("{p}.inner"),
            )?;
            let inner = match config.act {
                crate::model::bert::Activation::GeluErf => self.gelu(&inner, &format!("{p}.gelu")),
                crate::model::bert::Activation::GeluTanh => {
                    return Err(plan_error(
                        "kdc writes BERT's exact (erf) GELU to ONNX, not the tanh approximation",
                    ))
                }
                crate::model::bert::Activation::Relu => {
                    self.op("Relu", &format!("{p}.relu"), &[&inner], vec![])
                }
            };
            let fed = self.linear(&inner, &format!("{p}.output.dense"), &format!("{p}.fed"))?;
            let sum = self.op("Add", &format!("{p}.residual2"), &[&fed, &x], vec![]);
            x = self.layer_norm(&sum, &format!("{p}.output.LayerNorm"), config.eps, &p)?;
        }
        let kind = match spec.pooling {
            kd_plan::Pooling::Mean => kd_plan::SeqPool::Mean,
            kd_plan::Pooling::Cls => kd_plan::SeqPool::First,
        };
        let pooled = self.pool(&x, &mask, kind, "pooled");
        self.linear(&pooled, "head", "logits")
    }

    fn current_mask(&self, name: &str) -> Result<String> {
        self.mask
            .clone()
            .ok_or_else(|| plan_error(format!("layer `{name}` needs token input")))
    }

    /// The text layers: sequences are `[B, L, C]`, the mask `[B, L]`.
    fn text_layer(&mut self, layer: &LayerSpec, name: &str, input: &str) -> Result<String> {
        let out = name.to_string();
        let step = |s: &str| format!("{name}.{s}");
        Ok(match &layer.layer {
            Layer::Embedding { positions, .. } => {
                let weight = self.weight(&format!("{name}.weight"))?;
                if *positions {
                    let gathered = self.op(
                        "Gather",
                        &step("tokens"),
                        &[&weight, input],
                        vec![int("axis", 0)],
                    );
                    let table = self.weight(&format!("{name}.positions"))?;
                    self.op("Add", &out, &[&gathered, &table], vec![])
                } else {
                    self.op("Gather", &out, &[&weight, input], vec![int("axis", 0)])
                }
            }
            Layer::Conv1d {
                kernel,
                padding,
                bias,
                ..
            } => {
                let channels_first = self.op(
                    "Transpose",
                    &step("channels_first"),
                    &[input],
                    vec![ints("perm", &[0, 2, 1])],
                );
                let mut inputs = vec![channels_first, self.weight(&format!("{name}.weight"))?];
                if *bias {
                    inputs.push(self.weight(&format!("{name}.bias"))?);
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let attributes = vec![
                    ints("kernel_shape", &[*kernel]),
                    ints("pads", &[*padding, *padding]),
                ];
                let conv = self.op("Conv", &step("conv"), &refs, attributes.clone());
                if let Some(mask) = self.mask.clone() {
                    // An output is real when its window covers a real token.
                    let axis1 = self.int_constant(&[1], &[1]);
                    let m3 = self.op("Unsqueeze", &step("mask3"), &[&mask, &axis1], vec![]);
                    let ones =
                        self.float_tensor(&step("window"), &[1, 1, *kernel], &vec![1.0; *kernel]);
                    let covered = self.op("Conv", &step("covered"), &[&m3, &ones], attributes);
                    let half = self.constant(0.5);
                    let any = self.op("Greater", &step("any_real"), &[&covered, &half], vec![]);
                    let as_float = self.op(
                        "Cast",
                        &step("mask_float"),
                        &[&any],
                        vec![int("to", DataType::Float as i64)],
                    );
                    let next = self.op("Squeeze", &step("mask"), &[&as_float, &axis1], vec![]);
                    self.mask = Some(next);
                }
                self.op("Transpose", &out, &[&conv], vec![ints("perm", &[0, 2, 1])])
            }
            Layer::Pool { kind } => {
                let mask = self.current_mask(name)?;
                self.pool(input, &mask, *kind, &out)
            }
            Layer::LayerNorm { eps } => self.layer_norm(input, name, *eps, &out)?,
            Layer::Transformer { heads, .. } => {
                let mask = self.current_mask(name)?;
                let d = layer.input.last().copied().unwrap_or(1);
                let heads = (*heads).max(1);
                let normed = self.layer_norm(input, &step("norm1"), 1e-5, &step("normed1"))?;
                let qkv = self.linear(&normed, &step("qkv"), &step("qkv_out"))?;
                let axis2 = self.int_constant(&[1], &[2]);
                let mut parts = Vec::new();
                for (i, part) in ["q", "k", "v"].iter().enumerate() {
                    let start = self.int_constant(&[1], &[(i * d) as i64]);
                    let end = self.int_constant(&[1], &[((i + 1) * d) as i64]);
                    parts.push(self.op(
                        "Slice",
                        &step(part),
                        &[&qkv, &start, &end, &axis2],
                        vec![],
                    ));
                }
                let context =
                    self.attention([&parts[0], &parts[1], &parts[2]], &mask, d, heads, name);
                let attended = self.linear(&context, &step("attn_out"), &step("attended"))?;
                let h = self.op("Add", &step("residual1"), &[input, &attended], vec![]);
                let normed2 = self.layer_norm(&h, &step("norm2"), 1e-5, &step("normed2"))?;
                let inner = self.linear(&normed2, &step("ff1"), &step("inner"))?;
                let inner = self.gelu(&inner, &step("gelu"));
                let fed = self.linear(&inner, &step("ff2"), &step("fed"))?;
                self.op("Add", &out, &[&h, &fed], vec![])
            }
            Layer::Lstm {
                hidden,
                bidirectional,
            } => {
                let mask = self.current_mask(name)?;
                let h = *hidden;
                let c = layer.input.last().copied().unwrap_or(1);
                let suffixes: &[&str] = if *bidirectional {
                    &["", "_reverse"]
                } else {
                    &[""]
                };
                // ONNX orders the gates input, output, forget, cell; kdc (as PyTorch) input,
                // forget, cell, output.
                let reorder = |values: &[f32], width: usize| -> Vec<f32> {
                    [0usize, 3, 1, 2]
                        .iter()
                        .flat_map(|&g| values[g * h * width..(g + 1) * h * width].to_vec())
                        .collect()
                };
                let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
                for d in suffixes {
                    w.extend(reorder(&self.values(&format!("{name}.weight_ih{d}"))?, c));
                    r.extend(reorder(&self.values(&format!("{name}.weight_hh{d}"))?, h));
                    b.extend(reorder(&self.values(&format!("{name}.bias{d}"))?, 1));
                    b.extend(vec![0.0; 4 * h]);
                }
                let dirs = suffixes.len();
                let w = self.float_tensor(&step("W"), &[dirs, 4 * h, c], &w);
                let r = self.float_tensor(&step("R"), &[dirs, 4 * h, h], &r);
                let b = self.float_tensor(&step("B"), &[dirs, 8 * h], &b);
                let axis1 = self.int_constant(&[1], &[1]);
                let lengths = self.op(
                    "ReduceSum",
                    &step("lengths_f"),
                    &[&mask, &axis1],
                    vec![int("keepdims", 0)],
                );
                let lengths = self.op(
                    "Cast",
                    &step("lengths"),
                    &[&lengths],
                    vec![int("to", DataType::Int32 as i64)],
                );
                let time_first = self.op(
                    "Transpose",
                    &step("time_first"),
                    &[input],
                    vec![ints("perm", &[1, 0, 2])],
                );
                let direction = if *bidirectional {
                    "bidirectional"
                } else {
                    "forward"
                };
                let y = self.op(
                    "LSTM",
                    &step("y"),
                    &[&time_first, &w, &r, &b, &lengths],
                    vec![int("hidden_size", h as i64), string("direction", direction)],
                );
                let batch_first = self.op(
                    "Transpose",
                    &step("batch_first"),
                    &[&y],
                    vec![ints("perm", &[2, 0, 1, 3])],
                );
                let merge = self.int_constant(&[3], &[0, 0, (dirs * h) as i64]);
                self.op("Reshape", &out, &[&batch_first, &merge], vec![])
            }
            other => {
                return Err(plan_error(format!(
                    "kdc cannot write `{}` layers to ONNX yet",
                    kd_plan::onnx_unsupported(other).unwrap_or("these")
                )))
            }
        })
    }
    /// Adds the weight `name` as an initializer and returns its name. An int8 weight is
    /// stored as int8 with its per-channel scales, and `name` is its DequantizeLinear.
    fn weight(&mut self, name: &str) -> Result<String> {
        if let Some(q) = self.int8.get(name).cloned() {
            let scales = q.scales;
            let quantized = format!("{name}_quantized");
            self.int8_tensor(&quantized, &q.shape, &q.values);
            let scale = self.float_tensor(&format!("{name}_scale"), &[scales.len()], &scales);
            let zero = format!("{name}_zero_point");
            self.int8_tensor(&zero, &[scales.len()], &vec![0; scales.len()]);
            self.nodes.push(node(
                "DequantizeLinear",
                name,
                &[&quantized, &scale, &zero],
                name,
                vec![int("axis", 0)],
            ));
            return Ok(name.to_string());
        }
        let values = self.values(name)?;
        let dims = self
            .weights
            .get(name)
            .map(|t| t.dims().to_vec())
            .unwrap_or_default();
        self.tensor(name, &dims, &values);
        Ok(name.to_string())
    }

    fn int8_tensor(&mut self, name: &str, dims: &[usize], values: &[i8]) {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int8 as i32,
            raw_data: values.iter().map(|v| *v as u8).collect(),
            ..Default::default()
        });
    }

    /// An int8 layer's input, quantised and dequantised with the layer's input scale
    /// (QDQ): the values its int8 kernel reads.
    fn quantized_input(&mut self, layer: &str, input: &str, scale: f32) -> String {
        let scale = self.float_tensor(&format!("{layer}.input_scale"), &[], &[scale]);
        let zero = format!("{layer}.input_zero_point");
        self.int8_tensor(&zero, &[], &[0]);
        let q = self.op(
            "QuantizeLinear",
            &format!("{layer}.input_quantized"),
            &[input, &scale, &zero],
            vec![],
        );
        self.op(
            "DequantizeLinear",
            &format!("{layer}.input_dequantized"),
            &[&q, &scale, &zero],
            vec![],
        )
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
        let int8_input = self.int8.get(&param("weight")).map(|q| q.input_scale);
        let quantized;
        let input = match int8_input {
            Some(scale) => {
                quantized = self.quantized_input(&name, input, scale);
                quantized.as_str()
            }
            None => input,
        };
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
            Layer::Embedding { .. }
            | Layer::Conv1d { .. }
            | Layer::Pool { .. }
            | Layer::LayerNorm { .. }
            | Layer::Transformer { .. }
            | Layer::Lstm { .. } => return self.text_layer(layer, &name, input),
        }
        Ok(out)
    }
}
