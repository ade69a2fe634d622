//! Augmentation: deterministic under the seed, shape-preserving, sensible effects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_plan::AugmentOp;
use kd_runtime::augment::{apply, AugmentKey};
use kd_runtime::losses::Labels;

fn batch(samples: usize, len: usize) -> Vec<f32> {
    (0..samples * len)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect()
}

fn key(seed: u64, step: usize) -> AugmentKey<'static> {
    AugmentKey {
        seed,
        stage: "train",
        epoch: 0,
        step,
    }
}

fn all_ops() -> Vec<AugmentOp> {
    vec![
        AugmentOp::RandomCrop { padding: 2 },
        AugmentOp::Flip { p: 0.5 },
        AugmentOp::Rotate { max_degrees: 15.0 },
        AugmentOp::Translate { max_pixels: 1 },
        AugmentOp::Noise { std: 0.1 },
        AugmentOp::Cutout { size: 3 },
        AugmentOp::Mixup { alpha: 0.4 },
    ]
}

fn run(ops: &[AugmentOp], shape: &[usize], seed: u64) -> (Vec<f32>, Labels) {
    let len: usize = shape.iter().product();
    let mut x = batch(8, len);
    let mut labels = Labels::hard((0..8).map(|i| i % 3).collect());
    apply(
        ops,
        &mut x,
        &mut labels,
        shape,
        &[-0.5, 0.0, 0.5],
        key(seed, 3),
    );
    (x, labels)
}

#[test]
fn same_seed_same_batch_other_seed_other_batch() {
    let shape = [3, 8, 8];
    let (a, la) = run(&all_ops(), &shape, 1);
    let (b, lb) = run(&all_ops(), &shape, 1);
    let (c, _) = run(&all_ops(), &shape, 2);
    assert_eq!(a, b);
    assert_eq!(la, lb);
    assert_ne!(a, c);
    assert_eq!(a.len(), 8 * 3 * 64);
    assert!(a.iter().all(|v| v.is_finite()));
    let mix = la.mix.expect("mixup blends labels");
    assert_eq!(mix.partner.len(), 8);
    assert!((0.0..=1.0).contains(&mix.lambda));
}

#[test]
fn each_op_alone_is_deterministic_and_keeps_shape() {
    for op in all_ops() {
        for shape in [vec![1, 6, 5], vec![6, 5], vec![10]] {
            let ops = vec![op.clone()];
            let (a, _) = run(&ops, &shape, 9);
            let (b, _) = run(&ops, &shape, 9);
            assert_eq!(a, b, "{op:?} on {shape:?}");
            assert_eq!(a.len(), 8 * shape.iter().product::<usize>());
        }
    }
}

#[test]
fn image_ops_do_nothing_on_features() {
    let ops = vec![
        AugmentOp::RandomCrop { padding: 2 },
        AugmentOp::Flip { p: 1.0 },
        AugmentOp::Rotate { max_degrees: 30.0 },
        AugmentOp::Cutout { size: 2 },
    ];
    let (x, _) = run(&ops, &[10], 4);
    assert_eq!(x, batch(8, 10));
}

#[test]
fn flip_mirrors_rows_and_translate_fills() {
    let mut x: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let mut labels = Labels::hard(vec![0]);
    apply(
        &[AugmentOp::Flip { p: 1.0 }],
        &mut x,
        &mut labels,
        &[1, 2, 3],
        &[0.0],
        key(0, 0),
    );
    assert_eq!(x, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
    // Zero rotation changes nothing.
    let before = x.clone();
    apply(
        &[AugmentOp::Rotate { max_degrees: 0.0 }],
        &mut x,
        &mut labels,
        &[1, 2, 3],
        &[0.0],
        key(0, 0),
    );
    assert_eq!(x, before);
    // Translation by up to one pixel keeps values or fills with -9.
    let mut y: Vec<f32> = (1..=9).map(|i| i as f32).collect();
    apply(
        &[AugmentOp::Translate { max_pixels: 1 }],
        &mut y,
        &mut labels,
        &[1, 3, 3],
        &[-9.0],
        key(5, 1),
    );
    assert!(y.iter().all(|&v| v == -9.0 || (1.0..=9.0).contains(&v)));
}
