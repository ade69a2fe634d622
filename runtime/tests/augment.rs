//! Augmentation: deterministic under the seed, shape-preserving, sensible effects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_plan::AugmentOp;
use kd_runtime::data::augment::{apply, AugmentKey};
use kd_runtime::train::losses::Labels;

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

mod text {
    use kd_plan::AugmentOp;
    use kd_runtime::data::augment::{apply_text, AugmentKey, Tokens};

    const LEN: usize = 40;
    const SPECIAL: [u32; 3] = [0, 101, 102];

    /// 50 rows: [CLS], 20 + (row % 10) ordinary tokens (ids 1000 + position), [SEP], padding.
    fn batch() -> Vec<f32> {
        let mut x = Vec::new();
        for row in 0..50 {
            let n = 20 + row % 10;
            let mut ids = vec![101u32];
            ids.extend((0..n as u32).map(|i| 1000 + i));
            ids.push(102);
            ids.resize(LEN, 0);
            x.extend(ids.iter().map(|&i| i as f32));
        }
        x
    }

    fn run(op: AugmentOp, step: usize) -> Vec<f32> {
        let mut x = batch();
        let key = AugmentKey {
            seed: 3,
            stage: "s",
            epoch: 0,
            step,
        };
        let tokens = Tokens {
            pad_id: 0,
            mask_id: Some(103),
            special: &SPECIAL,
        };
        apply_text(&[op], &mut x, LEN, tokens, key);
        x
    }

    fn rows(x: &[f32]) -> Vec<Vec<u32>> {
        x.chunks(LEN)
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect()
    }

    /// Every row keeps [CLS] first, one [SEP] after the last real token, padding only at
    /// the end, and its length.
    fn well_formed(x: &[f32]) {
        for row in rows(x) {
            assert_eq!(row.len(), LEN);
            assert_eq!(row[0], 101);
            let real = row.iter().position(|&i| i == 0).unwrap_or(LEN);
            assert_eq!(row[real - 1], 102, "{row:?}");
            assert!(row[real..].iter().all(|&i| i == 0), "{row:?}");
            assert_eq!(row.iter().filter(|&&i| i == 102).count(), 1);
        }
    }

    fn ordinary(x: &[f32]) -> usize {
        rows(x).iter().flatten().filter(|&&i| i >= 1000).count()
    }

    #[test]
    fn token_operations_keep_special_tokens_and_the_layout() {
        let before = ordinary(&batch());
        let ops = [
            AugmentOp::TokenDropout { p: 0.2 },
            AugmentOp::MaskTokens { p: 0.2 },
            AugmentOp::SpanDelete { max: 4 },
            AugmentOp::SwapTokens { n: 3 },
        ];
        for op in ops {
            let x = run(op.clone(), 0);
            well_formed(&x);
            assert_eq!(
                x,
                run(op.clone(), 0),
                "{op:?} is deterministic under its key"
            );
            assert_ne!(x, run(op.clone(), 1), "{op:?} changes with the step");
            let after = ordinary(&x);
            match op {
                AugmentOp::TokenDropout { .. } => {
                    let dropped = (before - after) as f64 / before as f64;
                    assert!((0.15..0.25).contains(&dropped), "dropped {dropped}");
                }
                AugmentOp::MaskTokens { .. } => {
                    let masked = rows(&x).iter().flatten().filter(|&&i| i == 103).count();
                    assert_eq!(masked + after, before);
                    let share = masked as f64 / before as f64;
                    assert!((0.15..0.25).contains(&share), "masked {share}");
                }
                AugmentOp::SpanDelete { max } => {
                    for (a, b) in rows(&batch()).iter().zip(rows(&x)) {
                        let lost = a.iter().filter(|&&i| i >= 1000).count()
                            - b.iter().filter(|&&i| i >= 1000).count();
                        assert!((1..=max).contains(&lost), "lost {lost}");
                        // What is left keeps its order.
                        let kept: Vec<u32> = b.iter().copied().filter(|&i| i >= 1000).collect();
                        assert!(kept.windows(2).all(|w| w[0] < w[1]));
                    }
                }
                _ => {
                    assert_eq!(after, before);
                    for (a, b) in rows(&batch()).iter().zip(rows(&x)) {
                        let mut a = a.clone();
                        let mut b = b.clone();
                        a.sort_unstable();
                        b.sort_unstable();
                        assert_eq!(a, b, "a swap keeps the same tokens");
                    }
                }
            }
        }
    }
}

/// `sample` (`[channels, h, w]`) moved by `(dy, dx)`, `fill[c]` coming in: the definition.
fn shifted(
    sample: &[f32],
    (c, h, w): (usize, usize, usize),
    dy: isize,
    dx: isize,
    fill: &[f32],
) -> Vec<f32> {
    let mut out = Vec::with_capacity(sample.len());
    for ch in 0..c {
        for i in 0..h as isize {
            for j in 0..w as isize {
                let (si, sj) = (i - dy, j - dx);
                out.push(
                    if (0..h as isize).contains(&si) && (0..w as isize).contains(&sj) {
                        sample[ch * h * w + si as usize * w + sj as usize]
                    } else {
                        fill[ch]
                    },
                );
            }
        }
    }
    out
}

#[test]
fn crop_and_translate_shift_each_sample_within_their_range() {
    let (c, h, w) = (3, 5, 7);
    let fill = [-1.0, -2.0, -3.0];
    for (op, max) in [
        (AugmentOp::RandomCrop { padding: 2 }, 2),
        (AugmentOp::Translate { max_pixels: 1 }, 1),
        (AugmentOp::RandomCrop { padding: 8 }, 8),
    ] {
        let samples = 64;
        let original: Vec<f32> = (0..samples * c * h * w).map(|i| i as f32).collect();
        let mut x = original.clone();
        let mut labels = Labels::hard(vec![0; samples]);
        apply(
            std::slice::from_ref(&op),
            &mut x,
            &mut labels,
            &[c, h, w],
            &fill,
            key(3, 2),
        );
        let mut seen = std::collections::HashSet::new();
        for (b, (out, input)) in x
            .chunks_exact(c * h * w)
            .zip(original.chunks_exact(c * h * w))
            .enumerate()
        {
            let shift = (-max..=max)
                .flat_map(|dy| (-max..=max).map(move |dx| (dy, dx)))
                .find(|&(dy, dx)| shifted(input, (c, h, w), dy, dx, &fill) == out);
            let shift = shift.unwrap_or_else(|| panic!("{op:?}: sample {b} is no shift"));
            seen.insert(shift);
        }
        // Shifts that leave any of the image are told apart; 64 draws hit many of them.
        assert!(
            seen.len() >= 8,
            "{op:?}: only {} distinct shifts",
            seen.len()
        );
    }
}

/// Noise has the declared spread: over 49,159 values (several parallel chunks, an odd
/// count), mean 0 and standard deviation 0.5 within sampling error, and a normal's tails.
#[test]
fn noise_is_normal_with_the_declared_std() {
    let n = 3 * 16_384 + 7;
    let mut x = vec![0f32; n];
    let mut labels = Labels::hard(vec![0]);
    apply(
        &[AugmentOp::Noise { std: 0.5 }],
        &mut x,
        &mut labels,
        &[n],
        &[0.0],
        key(3, 4),
    );
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    // Beyond two standard deviations: 4.55% of a normal.
    let tails = x.iter().filter(|v| v.abs() > 1.0).count() as f64 / n as f64;
    assert!((tails - 0.0455).abs() < 0.004, "tails {tails}");
}

/// Rotating samples in parallel gives each sample the angle drawn for it in order: the
/// same batch as rotating one sample at a time.
#[test]
fn rotation_of_a_batch_is_rotation_of_each_sample() {
    let shape = [2, 9, 7];
    let len = 2 * 9 * 7;
    let x = batch(5, len);
    let op = [AugmentOp::Rotate { max_degrees: 30.0 }];
    let mut whole = x.clone();
    apply(
        &op,
        &mut whole,
        &mut Labels::hard(vec![0; 5]),
        &shape,
        &[-1.0],
        key(9, 2),
    );
    // The same draws, one sample per batch: sample k takes the stream's k-th angle, so it
    // is rotated alone by giving it a batch where it comes k-th after copies of itself.
    for k in 0..5 {
        let mut alone: Vec<f32> = (0..=k)
            .flat_map(|_| x[k * len..(k + 1) * len].to_vec())
            .collect();
        apply(
            &op,
            &mut alone,
            &mut Labels::hard(vec![0; k + 1]),
            &shape,
            &[-1.0],
            key(9, 2),
        );
        assert_eq!(
            &alone[k * len..],
            &whole[k * len..(k + 1) * len],
            "sample {k}"
        );
    }
}
