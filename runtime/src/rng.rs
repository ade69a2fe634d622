//! kdc's own random numbers. candle's CPU generator cannot be seeded, so every random draw
//! of a run (initial weights, dropout, shuffling, splits, augmentation) comes from here.
//!
//! The generator is counter-based: the `n`-th value of a stream is a pure function of
//! `(seed, stream name, n)` (SplitMix64 with a per-stream starting point), so results do
//! not depend on thread count or on the order in which streams are used.

use kd_kernels::random::{mix64, stream_value, GOLDEN_GAMMA};

/// 64-bit FNV-1a of a stream name.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// A stream of random numbers keyed by `(seed, stream)`.
#[derive(Clone, Debug)]
pub struct Rng {
    key: u64,
    counter: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    /// The stream named `stream` under `seed`, at position 0.
    pub fn new(seed: u64, stream: &str) -> Self {
        Rng::at(seed, stream, 0)
    }

    /// The stream named `stream` under `seed`, starting at `position`.
    pub fn at(seed: u64, stream: &str, position: u64) -> Self {
        let key = mix64(mix64(seed ^ GOLDEN_GAMMA) ^ fnv1a(stream));
        Rng {
            key,
            counter: position,
            spare_normal: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let value = stream_value(self.key, self.counter);
        self.counter = self.counter.wrapping_add(1);
        value
    }

    /// The stream's key and the position of its next value, for kernels that draw a
    /// stretch of it themselves (`kd_kernels::random::stream_value`).
    pub fn key_and_position(&self) -> (u64, u64) {
        (self.key, self.counter)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform_in(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Standard normal (Box-Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(spare) = self.spare_normal.take() {
            return spare;
        }
        // 1 - u is in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform();
        self.spare_normal = Some(radius * angle.sin());
        radius * angle.cos()
    }

    /// Uniform integer in `[0, n)` without modulo bias; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift with rejection of the biased low zone.
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        self.shuffle(&mut order);
        order
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang; shapes below one use the boost
    /// `Gamma(a) = Gamma(a + 1) * U^(1/a)`.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape.is_nan() || shape <= 0.0 || !shape.is_finite() {
            return 0.0;
        }
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) from two Gamma draws.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y > 0.0 {
            x / (x + y)
        } else {
            0.5
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_numbers_other_key_other_numbers() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "init/x");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "init/x");
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(8, "init/x");
                move |_| r.next_u64()
            })
            .collect();
        let d: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "init/y");
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn position_is_random_access() {
        let mut sequential = Rng::new(3, "s");
        let values: Vec<u64> = (0..5).map(|_| sequential.next_u64()).collect();
        let mut jumped = Rng::at(3, "s", 3);
        assert_eq!(jumped.next_u64(), values[3]);
    }

    #[test]
    fn moments_are_plausible() {
        let mut r = Rng::new(1, "moments");
        let n = 200_000;
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.normal();
            sum += x;
            sum_sq += x * x;
        }
        let mean = sum / n as f64;
        let var = sum_sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        let u_mean: f64 = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((u_mean - 0.5).abs() < 0.01);
        let beta_mean: f64 = (0..20_000).map(|_| r.beta(0.4, 0.4)).sum::<f64>() / 20_000.0;
        assert!((beta_mean - 0.5).abs() < 0.02, "beta mean {beta_mean}");
        let gamma_mean: f64 = (0..20_000).map(|_| r.gamma(2.5)).sum::<f64>() / 20_000.0;
        assert!((gamma_mean - 2.5).abs() < 0.1, "gamma mean {gamma_mean}");
    }

    #[test]
    fn below_and_shuffle() {
        let mut r = Rng::new(5, "b");
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)));
        assert_eq!(r.below(0), 0);
        let mut p = r.permutation(100);
        p.sort_unstable();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
