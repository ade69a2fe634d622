//! The batch-norm loops against plain f64 references, over layouts with one value per
//! channel and row (flat features) and runs of values (images), across several tasks, and
//! the same bits whatever the number of threads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_kernels::batchnorm::{
    backward_input, backward_sums, moments, normalise, Affine, Channels, InputGradient,
};

fn random(seed: u64, n: usize, centre: f32, spread: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            centre + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * spread
        })
        .collect()
}

/// `[outer, channels, inner]` layouts: flat features, small images, and a batch large
/// enough to split into several tasks with a ragged last one.
const LAYOUTS: [(usize, usize, usize); 4] = [(6, 8, 1), (4, 3, 25), (37, 16, 49), (300, 70, 1)];

fn index(o: usize, c: usize, i: usize, ch: usize, inner: usize) -> usize {
    (o * ch + c) * inner + i
}

fn reference_moments(x: &[f32], outer: usize, ch: usize, inner: usize) -> Vec<(f64, f64)> {
    (0..ch)
        .map(|c| {
            let values: Vec<f64> = (0..outer)
                .flat_map(|o| (0..inner).map(move |i| (o, i)))
                .map(|(o, i)| f64::from(x[index(o, c, i, ch, inner)]))
                .collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            (mean, var)
        })
        .collect()
}

fn close(got: f64, expected: f64, what: &str) {
    assert!(
        (got - expected).abs() <= 1e-5 * expected.abs() + 1e-6,
        "{what}: got {got}, expected {expected}"
    );
}

#[test]
fn moments_match_the_definition_even_far_from_zero() {
    for (seed, &(outer, ch, inner)) in LAYOUTS.iter().enumerate() {
        for centre in [0.0, 300.0] {
            let x = random(seed as u64, outer * ch * inner, centre, 1.0);
            let (mean, var) = moments(
                &x,
                Channels {
                    channels: ch,
                    inner,
                },
            );
            for (c, (m, v)) in reference_moments(&x, outer, ch, inner)
                .into_iter()
                .enumerate()
            {
                close(mean[c], m, &format!("mean {c} of {outer}x{ch}x{inner}"));
                // Relative to the variance itself, which a sum of squares around zero
                // would lose to cancellation 300 units away.
                assert!(
                    (var[c] - v).abs() <= 1e-5 * v,
                    "variance {c} of {outer}x{ch}x{inner} around {centre}: {} vs {v}",
                    var[c]
                );
            }
        }
    }
}

fn affine(ch: usize, seed: u64) -> Affine {
    Affine {
        centre: random(seed, ch, 0.0, 0.5),
        scale: random(seed + 1, ch, 1.0, 0.5),
        shift: random(seed + 2, ch, 0.0, 0.5),
    }
}

#[test]
fn normalise_matches_the_definition_with_and_without_relu() {
    for (seed, &(outer, ch, inner)) in LAYOUTS.iter().enumerate() {
        let x = random(seed as u64, outer * ch * inner, 0.0, 1.0);
        let a = affine(ch, 10 + seed as u64);
        for relu in [false, true] {
            let y = normalise(
                &x,
                Channels {
                    channels: ch,
                    inner,
                },
                &a,
                relu,
            );
            for o in 0..outer {
                for c in 0..ch {
                    for i in 0..inner {
                        let at = index(o, c, i, ch, inner);
                        let v = f64::from(a.scale[c]) * f64::from(x[at] - a.centre[c])
                            + f64::from(a.shift[c]);
                        let v = if relu { v.max(0.0) } else { v };
                        close(
                            f64::from(y[at]),
                            v,
                            &format!("y[{at}] of {outer}x{ch}x{inner}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn backward_matches_the_definition_with_and_without_relu() {
    for (seed, &(outer, ch, inner)) in LAYOUTS.iter().enumerate() {
        let n = outer * ch * inner;
        let shape = Channels {
            channels: ch,
            inner,
        };
        let x = random(seed as u64, n, 0.0, 1.0);
        let g = random(100 + seed as u64, n, 0.0, 1.0);
        let y = random(200 + seed as u64, n, 0.0, 1.0);
        let centre = random(300 + seed as u64, ch, 0.0, 0.5);
        let coefs = InputGradient {
            centre: centre.clone(),
            scale: random(400 + seed as u64, ch, 1.0, 0.5),
            slope: random(500 + seed as u64, ch, 0.0, 0.5),
            offset: random(600 + seed as u64, ch, 0.0, 0.5),
        };
        for relu in [false, true] {
            let mask = |at: usize| {
                if relu && y[at] <= 0.0 {
                    0.0
                } else {
                    f64::from(g[at])
                }
            };
            let y_in = relu.then_some(y.as_slice());
            let (sum_g, sum_gx) = backward_sums(&x, &g, y_in, shape, &centre);
            let dx = backward_input(&x, &g, y_in, shape, &coefs);
            for c in 0..ch {
                let (mut sg, mut sgx) = (0f64, 0f64);
                for o in 0..outer {
                    for i in 0..inner {
                        let at = index(o, c, i, ch, inner);
                        let centred = f64::from(x[at]) - f64::from(centre[c]);
                        sg += mask(at);
                        sgx += mask(at) * centred;
                        let expected = f64::from(coefs.scale[c]) * mask(at)
                            + f64::from(coefs.slope[c]) * centred
                            + f64::from(coefs.offset[c]);
                        close(f64::from(dx[at]), expected, &format!("dx[{at}]"));
                    }
                }
                // Sums of many terms: relative to the sum of magnitudes.
                let scale = (outer * inner) as f64;
                assert!((sum_g[c] - sg).abs() <= 1e-6 * scale, "sum g {c}");
                assert!((sum_gx[c] - sgx).abs() <= 1e-6 * scale, "sum g x {c}");
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (outer, ch, inner) = (64, 16, 196);
    let shape = Channels {
        channels: ch,
        inner,
    };
    let x = random(1, outer * ch * inner, 0.5, 1.0);
    let g = random(2, outer * ch * inner, 0.0, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mean, var) = moments(&x, shape);
            let centre: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
            let sums = backward_sums(&x, &g, None, shape, &centre);
            (mean, var, sums)
        })
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        let other = run(threads);
        assert_eq!(
            format!("{one:?}"),
            format!("{other:?}"),
            "{threads} threads"
        );
    }
}
