//! Keeping the pool's other workers awake between the kernels of a training step.
//!
//! A rayon worker with nothing to do yields 33 times and then sleeps; waking it takes tens
//! of microseconds, so a kernel that follows a short stretch of serial work (a candle op, a
//! tensor's bookkeeping) runs at first on the calling thread alone. Measured on 2 cores, a
//! 2 MiB ReLU: 32 us straight after another kernel, 63 us after 30 us of serial work, 143
//! us after 300 us. PyTorch's OpenMP threads spin a while before they sleep, so its small
//! ops never pay this. [`keep_warm`] does the same for kdc: it hands the pool a job that
//! takes whatever work appears (`rayon::yield_now`) and spins in between, until it has
//! found none for [`IDLE`]; then its worker goes back to sleeping as rayon's do.
//!
//! Spinning changes no result: the kernels split work into fixed chunks whichever thread
//! runs them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a spinning worker waits for work before it goes back to sleep: longer than
/// the serial gaps inside a step, shorter than what lies between steps and stages.
pub const IDLE: Duration = Duration::from_micros(300);

/// The spinning jobs alive, in every pool together.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Keeps every other worker of the current rayon pool spinning for work for the next
/// [`IDLE`] (or longer, as long as work keeps coming). Cheap when they already are; does
/// nothing outside a pool's worker or in a pool of one thread.
pub fn keep_warm() {
    let (Some(origin), threads) = (rayon::current_thread_index(), rayon::current_num_threads())
    else {
        return;
    };
    let wanted = threads.saturating_sub(1);
    let mut alive = SPINNING.load(Ordering::Acquire);
    while alive < wanted {
        match SPINNING.compare_exchange_weak(alive, alive + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                rayon::spawn(move || spin(origin));
                alive += 1;
            }
            Err(now) => alive = now,
        }
    }
}

/// How many spinning jobs are alive now (tests).
pub fn spinning() -> usize {
    SPINNING.load(Ordering::Acquire)
}

/// The spinning job. On the worker that asked (which took it back from its own queue while
/// it waited for other work) it ends at once: that worker is awake anyway.
fn spin(origin: usize) {
    if rayon::current_thread_index() != Some(origin) {
        let mut idle_since = Instant::now();
        loop {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => idle_since = Instant::now(),
                _ if idle_since.elapsed() >= IDLE => break,
                _ => std::hint::spin_loop(),
            }
        }
    }
    SPINNING.fetch_sub(1, Ordering::AcqRel);
}
