//! Quantisation-aware training (`quantize(s) on data.split { aware: true }`). While stages
//! train such a model, each `linear` and `conv2d` layer computes with its input and weight
//! fake-quantised: replaced by the int8 values its int8 layer will use, times their scales
//! (the input per tensor, at the range calibrated when the model was made; the weight per
//! output channel, from its current values, as `super::int8` quantises it). Gradients
//! pass straight through the rounding (a straight-through estimator), except at input
//! values that saturate, as PyTorch's FakeQuantize does. After the last stage the model is
//! put in int8 with the same ranges, so what it trained against is what it computes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, TensorId, Var};
use kd_kernels::int8;
use rayon::prelude::*;

use super::int8::{row_scales, scale_of, QUANTIZE_CHUNK};
use super::{ForwardContext, Model};
use crate::error::{plan_error, Result};

/// Each quantised layer's input range (the largest magnitude seen in calibration), by the
/// id of the layer's weight.
pub(super) type Ranges = HashMap<TensorId, f32>;

/// `x` fake-quantised for an input range of `amax`, outside any graph, on `x`'s device;
/// with `inside`, also where its gradient passes (1) and where the value saturates (0).
fn input(x: &Tensor, amax: f32, inside: bool) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let scale = scale_of(amax);
    let values = host_values(x)?;
    let mut out = vec![0f32; values.len()];
    let mut mask = vec![0f32; if inside { values.len() } else { 0 }];
    let run =
        |(o, v, m): (&mut [f32], &[f32], Option<&mut [f32]>)| int8::fake_quantize(v, scale, o, m);
    // The mask's chunks, or none for each chunk of values.
    let masks: Vec<Option<&mut [f32]>> = match inside {
        true => mask.chunks_mut(QUANTIZE_CHUNK).map(Some).collect(),
        false => (0..values.len().div_ceil(QUANTIZE_CHUNK))
            .map(|_| None)
            .collect(),
    };
    let chunks: Vec<_> = out
        .chunks_mut(QUANTIZE_CHUNK)
        .zip(values.chunks(QUANTIZE_CHUNK))
        .zip(masks)
        .map(|((o, v), m)| (o, v, m))
        .collect();
    match chunks.len() {
        0 | 1 => chunks.into_iter().for_each(run),
        _ => chunks.into_par_iter().for_each(run),
    }
    let on = |v: Vec<f32>| Tensor::from_vec(v, x.dims(), &Device::Cpu)?.to_device(x.device());
    let mask = match inside {
        true => Some(on(mask)?),
        false => None,
    };
    Ok((on(out)?, mask))
}

/// A weight fake-quantised per output channel (its first axis), outside any graph, with
/// the scales its int8 layer will have.
fn weight_values(w: &Tensor) -> candle_core::Result<Tensor> {
    let values = host_values(w)?;
    let depth = w.dims()[1..].iter().product::<usize>().max(1);
    let mut out = vec![0f32; values.len()];
    for ((row, o), scale) in values
        .chunks(depth)
        .zip(out.chunks_mut(depth))
        .zip(row_scales(&values, depth))
    {
        int8::fake_quantize(row, scale, o, None);
    }
    Tensor::from_vec(out, w.dims(), &Device::Cpu)?.to_device(w.device())
}

/// `t`'s values as f32 on the host.
fn host_values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.detach()
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// In candle's graph: `values`, with the gradient reaching `x` unchanged (times `inside`
/// when given). `a - a` is exactly zero, so the values are exactly `values`.
fn straight_through(
    x: &Tensor,
    values: &Tensor,
    inside: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let passed = match inside {
        Some(m) => x.mul(m)?,
        None => x.clone(),
    };
    passed.sub(&passed.detach())?.add(values)
}

/// What a fake-quantised layer of the taped forward computes with in place of its input
/// and weight, and where the input's gradient passes (1) and where it stops.
pub(super) struct Operands {
    pub x: Tensor,
    pub w: Tensor,
    pub inside: Option<Tensor>,
}

impl ForwardContext<'_> {
    /// The input range of the layer whose weight is `weight`, when this model trains
    /// quantisation-aware.
    fn range(&self, weight: &Var) -> Option<f32> {
        self.aware?.get(&weight.as_tensor().id()).copied()
    }

    /// The input and weight a linear or conv2d layer computes with on `x`: fake-quantised
    /// for an aware model (straight-through when gradients are tracked), as they are
    /// otherwise; while an int8 model calibrates, the input is observed first.
    pub(super) fn operands(
        &self,
        weight: &Var,
        x: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if let Some(observer) = self.observer {
            super::int8::observe(observer, weight, x)?;
        }
        let w = self.param(weight);
        let Some(amax) = self.range(weight) else {
            return Ok((x.clone(), w));
        };
        let (xq, inside) = input(x, amax, x.track_op())?;
        let wq = weight_values(&w)?;
        let x = match x.track_op() {
            true => straight_through(x, &xq, inside.as_ref())?,
            false => xq,
        };
        let w = match w.track_op() {
            true => straight_through(&w, &wq, None)?,
            false => wq,
        };
        Ok((x, w))
    }

    /// [`ForwardContext::operands`] for the taped forward: the values only (the weight's
    /// gradient goes to its sink as it comes), and the input's mask when `want_x`.
    pub(super) fn quantized_taped(
        &self,
        weight: &Var,
        x: &Tensor,
        want_x: bool,
    ) -> candle_core::Result<Option<Operands>> {
        let Some(amax) = self.range(weight) else {
            return Ok(None);
        };
        let (x, inside) = input(x, amax, want_x)?;
        Ok(Some(Operands {
            x,
            w: weight_values(weight.as_tensor())?,
            inside,
        }))
    }
}

impl Model {
    /// Makes this model quantisation-aware: records each linear and conv2d layer's input
    /// range on `batches` (in eval mode, in f32), after which its forwards fake-quantise.
    pub fn make_aware(&mut self, batches: &mut dyn Iterator<Item = Result<Tensor>>) -> Result<()> {
        let ranges = self.observe_inputs(batches)?;
        let weights = self.quantizable_weights();
        if let Some((name, _)) = weights.iter().find(|(_, id)| !ranges.contains_key(id)) {
            return Err(plan_error(format!(
                "`{name}` of model `{}` saw no calibration input",
                self.name
            )));
        }
        self.aware = Some(ranges);
        Ok(())
    }

    /// Whether the model trains quantisation-aware (made, not yet in int8).
    pub fn is_aware(&self) -> bool {
        self.aware.is_some()
    }

    /// Puts an aware model's linear and conv2d layers in int8, with the input ranges it
    /// trained with.
    pub fn finish_aware(&mut self) -> Result<()> {
        let ranges = self.aware.take().ok_or_else(|| {
            plan_error(format!(
                "model `{}` was never made quantisation-aware",
                self.name
            ))
        })?;
        self.convert_to_int8(&ranges)
    }

    /// An aware model's input ranges, by the name of the layer's weight (what checkpoints
    /// keep).
    pub fn input_ranges(&self) -> Vec<(String, f32)> {
        let Some(ranges) = &self.aware else {
            return Vec::new();
        };
        self.params
            .iter()
            .filter_map(|(name, var)| Some((name.clone(), *ranges.get(&var.as_tensor().id())?)))
            .collect()
    }

    /// Makes the model aware with `ranges` (by weight name), as [`Model::input_ranges`]
    /// gave them; every quantised layer needs one.
    pub fn set_input_ranges(&mut self, ranges: &[(String, f32)]) -> Result<()> {
        let weights = self.quantizable_weights();
        let mut by_id = Ranges::new();
        for (name, amax) in ranges {
            let (_, id) = weights.iter().find(|(n, _)| n == name).ok_or_else(|| {
                plan_error(format!(
                    "model `{}` has no linear or conv2d weight `{name}`",
                    self.name
                ))
            })?;
            if !(amax.is_finite() && *amax >= 0.0) {
                return Err(plan_error(format!(
                    "the input range of `{name}` is not a magnitude: {amax}"
                )));
            }
            by_id.insert(*id, *amax);
        }
        let missing = weights.into_iter().find(|(_, id)| !by_id.contains_key(id));
        if let Some((name, _)) = missing {
            return Err(plan_error(format!(
                "no input range for `{name}` of model `{}`",
                self.name
            )));
        }
        self.aware = Some(by_id);
        Ok(())
    }

    /// The linear and conv2d layers' weights (shortcuts included): name and tensor id.
    fn quantizable_weights(&self) -> Vec<(String, TensorId)> {
        let ids = super::int8::quantizable_ids(&self.layers);
        self.params
            .iter()
            .filter(|(_, v)| ids.contains(&v.as_tensor().id()))
            .map(|(n, v)| (n.clone(), v.as_tensor().id()))
            .collect()
    }
}
