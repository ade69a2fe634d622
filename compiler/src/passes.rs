//! Passes over the Plan. Each is small and named, and runs on the whole graph:
//! `fold_constants` (`T^2` becomes one number), `share_common` (one `softmax(t.logits / T)`
//! however many terms use it), `prune` (drop what no stage's loss needs, such as a teacher
//! forward in a stage whose loss never reads it), `cache_frozen_forwards` (a frozen
//! teacher that sees un-augmented batches runs once per sample, not once per epoch).

use std::collections::{HashMap, HashSet};

use kd_plan::{Edge, NodeId, Op, Plan};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// All passes, in the order that lets each help the next.
pub fn optimize(mut plan: Plan) -> Plan {
    fold_constants(&mut plan);
    share_common(&mut plan);
    prune(&mut plan);
    cache_frozen_forwards(&mut plan);
    order_stages(&mut plan);
    plan
}

fn arguments(plan: &Plan, node: NodeId) -> Vec<(usize, NodeId, String)> {
    let mut args: Vec<(usize, NodeId, String)> = plan
        .graph
        .edges_directed(node, Direction::Incoming)
        .map(|e| (e.weight().arg, e.source(), e.weight().port.clone()))
        .collect();
    args.sort();
    args
}

fn constant(plan: &Plan, node: NodeId) -> Option<f64> {
    match plan.graph.node_weight(node)?.op {
        Op::Const { value } => Some(value),
        _ => None,
    }
}

/// Replaces arithmetic on constants by its value.
pub fn fold_constants(plan: &mut Plan) {
    for node in topological(plan) {
        let Some(op) = plan.graph.node_weight(node).map(|n| n.op.clone()) else {
            continue;
        };
        let args = arguments(plan, node);
        let values: Option<Vec<f64>> = args.iter().map(|(_, n, _)| constant(plan, *n)).collect();
        let Some(values) = values else { continue };
        let folded = match (&op, values.as_slice()) {
            (Op::Neg, [a]) => -a,
            (Op::Add, [a, b]) => a + b,
            (Op::Sub, [a, b]) => a - b,
            (Op::Mul, [a, b]) => a * b,
            (Op::Div, [a, b]) => a / b,
            (Op::Pow, [a, b]) => a.powf(*b),
            _ => continue,
        };
        let inputs: Vec<NodeId> = args.iter().map(|(_, n, _)| *n).collect();
        if let Some(weight) = plan.graph.node_weight_mut(node) {
            weight.op = Op::Const { value: folded };
        }
        let edges: Vec<_> = plan
            .graph
            .edges_directed(node, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in edges {
            plan.graph.remove_edge(e);
        }
        for input in inputs {
            if plan
                .graph
                .edges_directed(input, Direction::Outgoing)
                .next()
                .is_none()
            {
                plan.graph.remove_node(input);
            }
        }
    }
}

/// Merges nodes of one stage that compute the same op on the same inputs.
pub fn share_common(plan: &mut Plan) {
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    for node in topological(plan) {
        let Some(weight) = plan.graph.node_weight(node) else {
            continue;
        };
        if matches!(weight.op, Op::Loss | Op::Batch { .. } | Op::Augment { .. }) {
            continue;
        }
        let key = format!(
            "{}|{:?}|{:?}|{:?}",
            weight.stage,
            weight.op,
            weight.ty,
            arguments(plan, node)
        );
        let Some(&keep) = seen.get(&key) else {
            seen.insert(key, node);
            continue;
        };
        let outgoing: Vec<(NodeId, Edge)> = plan
            .graph
            .edges_directed(node, Direction::Outgoing)
            .map(|e| (e.target(), e.weight().clone()))
            .collect();
        for (target, edge) in outgoing {
            plan.graph.add_edge(keep, target, edge);
        }
        plan.graph.remove_node(node);
    }
}

/// Removes every node that no stage's loss depends on.
pub fn prune(plan: &mut Plan) {
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = plan.stages.iter().map(|s| s.loss).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(plan.graph.neighbors_directed(n, Direction::Incoming));
        }
    }
    let dead: Vec<NodeId> = plan
        .graph
        .node_indices()
        .filter(|n| !live.contains(n))
        .collect();
    for n in dead {
        plan.graph.remove_node(n);
    }
}

/// Marks for caching every forward of a model that its stage does not train, when its
/// input comes straight from a batch: in evaluation mode and frozen, the model gives each
/// sample the same outputs every epoch. An augmented input differs every epoch and is
/// left alone, and so is every forward under `cache: off`.
pub fn cache_frozen_forwards(plan: &mut Plan) {
    if plan.settings.cache == kd_plan::CacheMode::Off {
        return;
    }
    let trained: HashMap<&str, &str> = plan
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.trains.as_str()))
        .collect();
    let mut cached = Vec::new();
    for node in plan.graph.node_indices() {
        let Some(weight) = plan.graph.node_weight(node) else {
            continue;
        };
        let Op::Forward { model, .. } = &weight.op else {
            continue;
        };
        if trained.get(weight.stage.as_str()) == Some(&model.as_str()) {
            continue;
        }
        let from_batch = arguments(plan, node).iter().all(|(arg, source, port)| {
            *arg == 0
                && port == "x"
                && matches!(
                    plan.graph.node_weight(*source).map(|n| &n.op),
                    Some(Op::Batch { .. })
                )
        });
        if from_batch {
            cached.push((node, model.clone()));
        }
    }
    for (node, model) in cached {
        if let Some(weight) = plan.graph.node_weight_mut(node) {
            weight.op = Op::CachedForward { model };
        }
    }
}

/// A topological order of the whole graph (the graph is acyclic by construction).
fn topological(plan: &Plan) -> Vec<NodeId> {
    petgraph::algo::toposort(&plan.graph, None)
        .unwrap_or_else(|_| plan.graph.node_indices().collect())
}

/// Fills each stage's `nodes`: its nodes in an order where every node follows its inputs.
pub fn order_stages(plan: &mut Plan) {
    let order = topological(plan);
    for stage in &mut plan.stages {
        stage.nodes = order
            .iter()
            .copied()
            .filter(|n| {
                plan.graph
                    .node_weight(*n)
                    .is_some_and(|w| w.stage == stage.name)
            })
            .collect();
    }
}
