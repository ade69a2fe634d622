//! kdc's hot loops. A crate of their own so that every build profile optimises them fully
//! (the workspace's dev profile builds kdc's own crates at opt-level 1), and so that they
//! can be tested against plain references in isolation.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod conv1d;
pub mod conv2d;
pub mod elementwise;
pub mod int8;
pub mod layernorm;
pub mod optim;
pub mod pool;
pub mod random;
pub mod recurrent;
pub mod unfold;
pub mod warm;

/// Runs `f` compiled for the widest vector instructions this CPU has (pulp's runtime
/// dispatch: AVX-512 or AVX2 instead of the SSE2 baseline). The kernels' loops are plain
/// Rust that the compiler vectorises; `f` and what it calls must inline into the dispatched
/// function for the wider instructions to reach them, so `f` is written
/// `#[inline(always)] || ...` and what it calls is `#[inline(always)]` too. Without the
/// attribute LLVM kept large closures out of line, on 4-wide SSE: softmax, layer norm,
/// GELU, the batch norm's input gradient and the LSTM step ran 2-3x slower (a softmax of
/// 128 rows of 1,000 on one thread: 150-230 -> 65-75 us).
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
