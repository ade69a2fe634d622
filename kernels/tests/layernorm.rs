//! Layer norm and its backward against plain f64 references, over enough rows to split
//! into several tasks, far from zero too, and the same bits whatever the number of threads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_kernels::layernorm::{layer_norm, layer_norm_backward};

fn random(seed: u64, n: usize, centre: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            centre + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn close(got: f32, expected: f64, what: &str) {
    let got = f64::from(got);
    assert!(
        (got - expected).abs() <= 1e-5 * expected.abs() + 1e-5,
        "{what}: {got} vs {expected}"
    );
}

#[test]
fn layer_norm_and_its_gradients_match_the_definition() {
    let eps = 1e-5;
    for (rows, dim, centre) in [(3, 8, 0.0), (700, 64, 0.0), (5, 33, 40.0)] {
        let x = random(1, rows * dim, centre);
        let g = random(2, rows * dim, 0.0);
        let w = random(3, dim, 1.0);
        let b = random(4, dim, 0.0);
        let (y, stats) = layer_norm(&x, &w, &b, eps);
        let (dx, dw, db) = layer_norm_backward(&x, &g, &w, &stats, true);
        let dx = dx.unwrap();
        let (mut dw_ref, mut db_ref) = (vec![0f64; dim], vec![0f64; dim]);
        for r in 0..rows {
            let row: Vec<f64> = x[r * dim..(r + 1) * dim]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let mean = row.iter().sum::<f64>() / dim as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + eps).sqrt();
            let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * inv).collect();
            let gr: Vec<f64> = g[r * dim..(r + 1) * dim]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let dxhat: Vec<f64> = (0..dim).map(|j| gr[j] * f64::from(w[j])).collect();
            let a = dxhat.iter().sum::<f64>() / dim as f64;
            let c = dxhat.iter().zip(&xhat).map(|(d, h)| d * h).sum::<f64>() / dim as f64;
            for j in 0..dim {
                let at = r * dim + j;
                close(
                    y[at],
                    xhat[j] * f64::from(w[j]) + f64::from(b[j]),
                    &format!("y[{at}]"),
                );
                close(
                    dx[at],
                    inv * (dxhat[j] - a - xhat[j] * c),
                    &format!("dx[{at}]"),
                );
                dw_ref[j] += gr[j] * xhat[j];
                db_ref[j] += gr[j];
            }
        }
        for j in 0..dim {
            close(dw[j], dw_ref[j], &format!("dw[{j}] of {rows}x{dim}"));
            close(db[j], db_ref[j], &format!("db[{j}] of {rows}x{dim}"));
        }
        // Without the input's gradient, the same parameter gradients.
        let (none, dw2, db2) = layer_norm_backward(&x, &g, &w, &stats, false);
        assert!(none.is_none());
        assert_eq!((dw2, db2), (dw.clone(), db.clone()));
        // The same bits on one thread as on several.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (y1, s1) = pool.install(|| layer_norm(&x, &w, &b, eps));
        let (_, dw1, db1) = pool.install(|| layer_norm_backward(&x, &g, &w, &s1, false));
        assert_eq!((y1, dw1, db1), (y, dw, db));
    }
}
