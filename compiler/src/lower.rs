//! Lowering: a checked program becomes a Plan, one dataflow subgraph per stage.

use std::collections::HashMap;

use kd_plan::{
    Edge, Graph, Kind, Node, NodeId, Op, Plan, Projection, Stage, TensorType, PLAN_VERSION,
};

use crate::check::{Checked, CheckedStage, TypedExpr, TypedNode};

/// Builds the Plan's graph and schedules. The result is correct but naive; `optimize` then
/// folds constants, shares common subexpressions and drops unused nodes.
pub fn lower(checked: &Checked) -> Plan {
    let mut graph = Graph::default();
    let mut stages = Vec::new();
    for stage in &checked.stages {
        stages.push(lower_stage(checked, stage, &mut graph));
    }
    let mut plan = Plan {
        version: PLAN_VERSION,
        source: checked.source.clone(),
        settings: checked.settings.clone(),
        data: checked.data.clone(),
        augments: checked.augments.clone(),
        models: checked.models.clone(),
        graph,
        stages,
        evaluations: checked.evaluations.clone(),
        exports: checked.exports.clone(),
        overrides: checked.overrides.clone(),
    };
    crate::passes::order_stages(&mut plan);
    plan
}

fn span(s: kd_grammar::ast::Span) -> kd_plan::Span {
    kd_plan::Span::new(s.start, s.end)
}

struct StageBuilder<'g> {
    graph: &'g mut Graph,
    stage: String,
    /// The node whose ports `x` and `label` feed the models and the loss.
    batch: NodeId,
    forwards: HashMap<String, NodeId>,
    /// The stage's `project(...)` maps, named `project1`, `project2`, ... in order.
    projections: Vec<Projection>,
}

impl StageBuilder<'_> {
    fn node(&mut self, op: Op, ty: TensorType, at: kd_plan::Span) -> NodeId {
        self.graph.add_node(Node {
            stage: self.stage.clone(),
            op,
            ty,
            span: at,
        })
    }

    fn edge(&mut self, from: NodeId, port: &str, to: NodeId, arg: usize, ty: TensorType) {
        self.graph.add_edge(
            from,
            to,
            Edge {
                port: port.to_string(),
                arg,
                ty,
            },
        );
    }

    /// The node and port that compute `expr`.
    fn expr(&mut self, expr: &TypedExpr) -> (NodeId, String) {
        match &expr.node {
            TypedNode::Tap { model, port } => {
                let forward = self.forwards.get(model).copied().unwrap_or(self.batch);
                (forward, port.clone())
            }
            TypedNode::Label => (self.batch, "label".to_string()),
            TypedNode::Const(v) => (
                self.node(
                    Op::Const { value: *v },
                    TensorType::scalar(),
                    span(expr.span),
                ),
                "out".into(),
            ),
            TypedNode::Apply { op, args } => {
                let inputs: Vec<(NodeId, String, TensorType)> = args
                    .iter()
                    .map(|a| {
                        let (n, p) = self.expr(a);
                        (n, p, a.ty.clone())
                    })
                    .collect();
                let op = match op {
                    Op::Project { input, out, .. } => {
                        let name = format!("project{}", self.projections.len() + 1);
                        self.projections.push(Projection {
                            name: name.clone(),
                            input: *input,
                            out: *out,
                        });
                        Op::Project {
                            name,
                            input: *input,
                            out: *out,
                        }
                    }
                    other => other.clone(),
                };
                let id = self.node(op, expr.ty.clone(), span(expr.span));
                for (arg, (from, port, ty)) in inputs.into_iter().enumerate() {
                    self.edge(from, &port, id, arg, ty);
                }
                (id, "out".into())
            }
        }
    }
}

fn lower_stage(checked: &Checked, stage: &CheckedStage, graph: &mut Graph) -> Stage {
    let at = span(stage.span);
    let data = checked.data.iter().find(|d| d.name == stage.data);
    let input_ty = TensorType {
        kind: Kind::Input,
        shape: data.map(|d| d.sample_shape.clone()).unwrap_or_default(),
    };
    let label_ty = TensorType {
        kind: Kind::Labels,
        shape: vec![],
    };
    let mut b = StageBuilder {
        graph,
        stage: stage.name.clone(),
        batch: NodeId::new(0),
        forwards: HashMap::new(),
        projections: Vec::new(),
    };
    let batch = b.node(
        Op::Batch {
            data: stage.data.clone(),
            split: stage.split.clone(),
        },
        input_ty.clone(),
        at,
    );
    b.batch = batch;
    if let Some(aug) = &stage.augment {
        let node = b.node(
            Op::Augment {
                pipeline: aug.clone(),
            },
            input_ty.clone(),
            at,
        );
        b.edge(batch, "x", node, 0, input_ty.clone());
        b.edge(batch, "label", node, 1, label_ty.clone());
        b.batch = node;
    }
    let mut models = vec![stage.trains.clone()];
    models.extend(stage.frozen.iter().cloned());
    for model in models {
        let spec = checked.models.iter().find(|m| m.name == model);
        let ty = spec
            .and_then(|m| m.taps.iter().find(|t| t.name == "output"))
            .map(|t| t.ty.clone())
            .unwrap_or_else(TensorType::scalar);
        let train = model == stage.trains;
        let node = b.node(
            Op::Forward {
                model: model.clone(),
                train,
            },
            ty,
            spec.map_or(at, |m| m.span),
        );
        let source = b.batch;
        b.edge(source, "x", node, 0, input_ty.clone());
        b.forwards.insert(model, node);
    }
    let (root, port) = b.expr(&stage.loss);
    let loss = b.node(Op::Loss, TensorType::scalar(), span(stage.loss.span));
    b.edge(root, &port, loss, 0, TensorType::scalar());

    Stage {
        name: stage.name.clone(),
        kind: stage.kind.clone(),
        trains: stage.trains.clone(),
        frozen: stage.frozen.clone(),
        data: stage.data.clone(),
        split: stage.split.clone(),
        augment: stage.augment.clone(),
        loss,
        nodes: Vec::new(),
        epochs: stage.epochs,
        batch: stage.batch,
        optimizer: stage.optimizer.clone(),
        schedule: stage.schedule.clone(),
        clip: stage.clip,
        validate: stage.validate.clone(),
        baseline_of: stage.baseline_of.clone(),
        span: at,
        projections: b.projections,
    }
}
