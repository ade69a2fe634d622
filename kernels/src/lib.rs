//! kdc's hot loops. A crate of their own so that every build profile optimises them fully
//! (the workspace's dev profile builds kdc's own crates at opt-level 1), and so that they
//! can be tested against plain references in isolation.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod conv1d;
pub mod conv2d;
pub mod elementwise;
pub mod layernorm;
pub mod optim;
pub mod pool;
pub mod random;
pub mod recurrent;
pub mod unfold;

/// Runs `f` compiled for the widest vector instructions this CPU has (pulp's runtime
/// dispatch: AVX-512 or AVX2 instead of the SSE2 baseline). The kernels' loops are plain
/// Rust that the compiler vectorises; `f` and what it calls must inline into the dispatched
/// function (`#[inline(always)]`) for the wider instructions to reach them.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    struct Body<F>(F);

    impl<R, F: FnOnce() -> R> pulp::WithSimd for Body<F> {
        type Output = R;

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> R {
            (self.0)()
        }
    }

    pulp::Arch::new().dispatch(Body(f))
}
