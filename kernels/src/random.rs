//! The mixer of kdc's counter-based generator (`kd_runtime::rng`): value `n` of a stream
//! keyed `key` is `mix64(key + (n + 1) * GOLDEN_GAMMA)`, so kernels can draw any stretch
//! of a stream in parallel, and vectorised.

pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Value `n` of the stream keyed `key`.
#[inline(always)]
pub fn stream_value(key: u64, n: u64) -> u64 {
    mix64(key.wrapping_add(n.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}
