//! Keeping the pool's other workers awake between the kernels of a training step.
//!
//! A rayon worker with nothing to do yields 33 times and then sleeps; waking it takes tens
//! of microseconds, so a kernel that follows a short stretch of serial work (a candle op, a
//! tensor's bookkeeping) runs at first on the calling thread alone. Measured on 2 cores, a
//! 2 MiB ReLU: 32 us straight after another kernel, 63 us after 30 us of serial work, 143
//! us after 300 us. PyTorch's OpenMP threads spin a while before they sleep, so its small
//! ops never pay this. [`keep_warm`] does the same for kdc: it hands each other worker of
//! the pool a job that takes whatever work appears (`rayon::yield_now`) and yields in
//! between, until it has found none for [`IDLE`]; then its worker goes back to sleeping as
//! rayon's do.
//!
//! Spinning changes no result: the kernels split work into fixed chunks whichever thread
//! runs them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a spinning worker waits for work before it goes back to sleep: longer than
/// the serial gaps inside a step, shorter than what lies between steps and stages.
pub const IDLE: Duration = Duration::from_micros(300);

/// Jobs spinning now, in every pool together.
static SPINNING: AtomicUsize = AtomicUsize::new(0);
/// When the last broadcast of spinning jobs went out (nanoseconds since [`epoch`]).
static LAST: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

std::thread_local! {
    /// Set while this thread runs a spinning job, so that one never nests in another.
    static SPINS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps every other worker of the current rayon pool spinning for work for the next
/// [`IDLE`] (or longer, as long as work keeps coming). Cheap when they already are; does
/// nothing outside a pool's worker or in a pool of one thread.
pub fn keep_warm() {
    let (Some(origin), threads) = (rayon::current_thread_index(), rayon::current_num_threads())
    else {
        return;
    };
    if threads < 2 || SPINNING.load(Ordering::Acquire) >= threads - 1 {
        return;
    }
    // At most one broadcast per IDLE: its jobs may still be on their way to their workers.
    let now = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
    let last = LAST.load(Ordering::Acquire);
    let recent = now.saturating_sub(last) < IDLE.as_nanos() as u64 && last != 0;
    if recent
        || LAST
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    // One job to each worker (a job spawned to the asking worker's queue is stolen by
    // whichever worker wakes first, and could end up inside another spinner).
    rayon::spawn_broadcast(move |context| spin(context.index() == origin));
}

/// How many jobs are spinning now (tests).
pub fn spinning() -> usize {
    SPINNING.load(Ordering::Acquire)
}

/// The spinning job. On the worker that asked (which takes its copy when it next waits for
/// work), and on a worker already spinning (a broadcast came while it spun), it ends at
/// once. Between finds it yields its core to the system (candle's own threads may want it).
fn spin(origin: bool) {
    let nested = SPINS.with(|s| s.replace(true));
    if !origin && !nested {
        SPINNING.fetch_add(1, Ordering::AcqRel);
        let mut idle_since = Instant::now();
        loop {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => idle_since = Instant::now(),
                _ if idle_since.elapsed() >= IDLE => break,
                _ => std::thread::yield_now(),
            }
        }
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
    if !nested {
        SPINS.with(|s| s.set(false));
    }
}
