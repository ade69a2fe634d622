//! What the kernels' tests share.

/// `n` values in [-1, 1) from a fixed generator.
#[allow(dead_code)] // not every test file draws values
pub fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

/// Asserts `got` equals `want` within 1e-5 of `want`'s largest magnitude (at least 1).
#[allow(dead_code)] // not every test file compares this way
pub fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// `f` run on a pool of `threads` threads.
#[allow(dead_code)] // not every test file varies the threads
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(f)
}
