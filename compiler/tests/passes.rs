//! Each pass on its own: the graph of `tests/cases/passes/*.kd` after lowering, then after
//! each pass in turn, snapshotted as Mermaid so a change in one pass shows where it acts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use kd_compiler::{
    cache_frozen_forwards, check, fold_constants, lower, prune, render, share_common, SourceFile,
};
use kd_plan::{Op, Plan};

fn lowered(path: &Path) -> Plan {
    let source = std::fs::read_to_string(path).unwrap();
    let program = kd_grammar::parse(&source).unwrap();
    let file = SourceFile {
        path: path.to_path_buf(),
        base_dir: path.parent().unwrap().to_path_buf(),
    };
    lower(&check(&program, &file, &[]).unwrap())
}

fn count(plan: &Plan, pick: impl Fn(&Op) -> bool) -> usize {
    plan.graph.node_weights().filter(|n| pick(&n.op)).count()
}

#[test]
fn each_pass_on_its_own() {
    insta::glob!("../../tests/cases/passes", "*.kd", |path: &Path| {
        let mut plan = lowered(path);
        let mut shots = vec![("lowered", render::mermaid(&plan))];
        fold_constants(&mut plan);
        kd_compiler::order_stages(&mut plan);
        shots.push(("fold_constants", render::mermaid(&plan)));
        share_common(&mut plan);
        kd_compiler::order_stages(&mut plan);
        shots.push(("share_common", render::mermaid(&plan)));
        prune(&mut plan);
        kd_compiler::order_stages(&mut plan);
        shots.push(("prune", render::mermaid(&plan)));
        cache_frozen_forwards(&mut plan);
        kd_compiler::order_stages(&mut plan);
        shots.push(("cache_frozen_forwards", render::mermaid(&plan)));
        let text: String = shots
            .iter()
            .map(|(name, m)| format!("=== after {name}\n{m}\n"))
            .collect();
        insta::assert_snapshot!(text);
    });
}

#[test]
fn passes_do_what_they_say() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/passes/hinton_terms.kd");
    let mut plan = lowered(&path);
    let pow = |p: &Plan| count(p, |op| matches!(op, Op::Pow));
    let softmax = |p: &Plan| count(p, |op| matches!(op, Op::Softmax));
    assert_eq!(pow(&plan), 1);
    fold_constants(&mut plan);
    assert_eq!(pow(&plan), 0, "T^2 folds to a number");
    assert_eq!(softmax(&plan), 3);
    share_common(&mut plan);
    assert_eq!(softmax(&plan), 2, "softmax(t.logits, T) is computed once");
    // Lowering never runs a model a stage's loss does not read; prune removes such nodes
    // wherever they come from (here: a teacher forward added to the fine-tune stage).
    let forwards = |p: &Plan| count(p, |op| matches!(op, Op::Forward { .. }));
    assert_eq!(
        forwards(&plan),
        4,
        "teach: t; distill: t and s; finetune: s"
    );
    let unused = plan.graph.add_node(kd_plan::Node {
        stage: "finetune".into(),
        op: Op::Forward {
            model: "t".into(),
            train: false,
        },
        ty: kd_plan::TensorType::scalar(),
        span: kd_plan::Span::default(),
    });
    prune(&mut plan);
    assert!(plan.graph.node_weight(unused).is_none());
    assert_eq!(forwards(&plan), 4);
}

#[test]
fn only_a_frozen_model_on_unaugmented_batches_is_cached() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases/passes/cache_teacher.kd");
    let mut plan = kd_compiler::optimize(lowered(&path));
    let cached_in = |p: &Plan, stage: &str| {
        p.graph
            .node_weights()
            .filter(|n| n.stage == stage && matches!(n.op, Op::CachedForward { .. }))
            .count()
    };
    assert_eq!(
        cached_in(&plan, "teach"),
        0,
        "a trained model is never cached"
    );
    assert_eq!(cached_in(&plan, "plain"), 1);
    assert_eq!(
        cached_in(&plan, "augmented"),
        0,
        "its batches change every epoch"
    );
    // Running the pass again changes nothing.
    let before = render::mermaid(&plan);
    cache_frozen_forwards(&mut plan);
    assert_eq!(render::mermaid(&plan), before);
}
