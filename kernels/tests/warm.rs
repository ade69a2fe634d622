//! `keep_warm`: one spinner per other worker, gone again once idle, none outside a pool;
//! kernels give the same values with spinners taking their chunks.

use std::time::{Duration, Instant};

use kd_kernels::warm::{keep_warm, spinning, IDLE};

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn spinners_come_and_go_with_the_pool() {
    // Outside a pool, and in a pool of one thread: nothing to keep warm.
    keep_warm();
    assert_eq!(spinning(), 0);
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    single.install(keep_warm);
    assert_eq!(spinning(), 0);

    let x: Vec<f32> = (0..300_000).map(|i| (i % 97) as f32 - 48.0).collect();
    let expected = kd_kernels::elementwise::relu(&x);
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            keep_warm();
            assert!(spinning() < threads);
            // Asked again while they spin: no more than one per other worker.
            for _ in 0..100 {
                keep_warm();
                assert!(spinning() < threads, "{} spinners", spinning());
                assert_eq!(kd_kernels::elementwise::relu(&x), expected);
            }
        });
        // Idle for longer than IDLE, they end (the pool's threads sleep again).
        std::thread::sleep(IDLE * 4);
        wait_until("the spinners ended", || spinning() == 0);
    }
}
