//! Parameter gradients handed over by the ops that compute them. candle's backward adds
//! every gradient it is given into a zeroed tensor of the parameter's size: a fresh
//! allocation and two extra passes per parameter per step (8 MB each for a 30,522 x 64
//! embedding table). Ops that compute a parameter's whole gradient (`crate::ops::dense`, the
//! embedding lookup) put it in the parameter's sink instead, and the training step moves
//! the sinks into candle's gradient store after the backward.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

/// One parameter's gradient for the current step, summed over the ops that use it.
#[derive(Clone, Debug, Default)]
pub struct GradSink(Arc<Mutex<Option<Tensor>>>);

impl GradSink {
    /// Adds `grad` to what this step's backward has put here so far.
    pub fn add(&self, grad: Tensor) -> candle_core::Result<()> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(match slot.take() {
            Some(sum) => (sum + grad)?,
            None => grad,
        });
        Ok(())
    }

    fn take(&self) -> Option<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// The sinks of a model's trainable parameters.
#[derive(Clone, Debug, Default)]
pub struct GradSinks(HashMap<TensorId, (Var, GradSink)>);

impl GradSinks {
    pub fn new(params: &[(String, Var)]) -> Self {
        GradSinks(
            params
                .iter()
                .map(|(_, var)| (var.id(), (var.clone(), GradSink::default())))
                .collect(),
        )
    }

    /// The sink of `param` when it is one of the model's trainable parameters.
    pub fn get(&self, param: &Tensor) -> Option<&GradSink> {
        self.0.get(&param.id()).map(|(_, sink)| sink)
    }

    /// Moves this step's gradients into `grads`, adding them to any candle computed for the
    /// same parameter through other ops.
    pub fn drain_into(&self, grads: &mut GradStore) -> candle_core::Result<()> {
        for (var, sink) in self.0.values() {
            if let Some(grad) = sink.take() {
                let grad = match grads.remove(var.as_tensor()) {
                    Some(other) => (other + grad)?,
                    None => grad,
                };
                grads.insert(var.as_tensor(), grad);
            }
        }
        Ok(())
    }

    /// Moves the gradients candle computed for the parameters into their sinks (a layer
    /// run in candle's graph inside kdc's own reverse pass).
    pub fn absorb(&self, grads: &mut GradStore) -> candle_core::Result<()> {
        for (var, sink) in self.0.values() {
            if let Some(grad) = grads.remove(var.as_tensor()) {
                sink.add(grad)?;
            }
        }
        Ok(())
    }

    /// Drops gradients left by a backward whose step was abandoned.
    pub fn clear(&self) {
        for (_, sink) in self.0.values() {
            sink.take();
        }
    }
}
