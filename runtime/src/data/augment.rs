//! Augmentation of a normalised batch, in place. Every draw comes from kdc's generator
//! under a stream named by `(stage, epoch, step, op)`, so a seed fixes every augmented batch.
//!
//! Image ops act on `[C, H, W]` samples (`[H, W]` counts as one channel) and do nothing on
//! other shapes; Noise and Mixup apply to any shape. "Zero fill" fills with the normalised
//! value of a raw zero (per channel), as padding before normalisation would.

use kd_plan::AugmentOp;
use rayon::prelude::*;

use crate::rng::Rng;
use crate::train::losses::{Labels, Mix};

/// Where a batch's draws come from.
#[derive(Debug, Clone, Copy)]
pub struct AugmentKey<'a> {
    pub seed: u64,
    pub stage: &'a str,
    pub epoch: usize,
    pub step: usize,
}

impl AugmentKey<'_> {
    fn rng(&self, op_index: usize) -> Rng {
        Rng::new(
            self.seed,
            &format!(
                "augment/{}/{}/{}/{op_index}",
                self.stage, self.epoch, self.step
            ),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Image {
    channels: usize,
    height: usize,
    width: usize,
}

impl Image {
    fn of(sample_shape: &[usize]) -> Option<Image> {
        match *sample_shape {
            [channels, height, width] => Some(Image {
                channels,
                height,
                width,
            }),
            [height, width] => Some(Image {
                channels: 1,
                height,
                width,
            }),
            _ => None,
        }
        .filter(|i| i.channels * i.height * i.width > 0)
    }

    fn plane(&self) -> usize {
        self.height * self.width
    }
}

/// Applies `ops` in order to the batch `x` (`labels.classes.len()` samples of
/// `sample_shape`). `fill` holds one value per channel (or one for all).
pub fn apply(
    ops: &[AugmentOp],
    x: &mut [f32],
    labels: &mut Labels,
    sample_shape: &[usize],
    fill: &[f32],
    key: AugmentKey,
) {
    kd_kernels::warm::keep_warm();
    let sample_len: usize = sample_shape.iter().product();
    if sample_len == 0 || x.is_empty() {
        return;
    }
    let batch = x.len() / sample_len;
    let image = Image::of(sample_shape);
    let fill_of = |c: usize| fill.get(c).or(fill.first()).copied().unwrap_or(0.0);
    let mut scratch = vec![0f32; sample_len];
    for (op_index, op) in ops.iter().enumerate() {
        let mut rng = key.rng(op_index);
        match (op, image) {
            (AugmentOp::Noise { std }, _) => {
                let (key, position) = rng.key_and_position();
                kd_kernels::augment::add_noise(x, *std as f32, key, position);
            }
            (AugmentOp::Mixup { alpha }, _) => {
                mixup(x, labels, sample_len, batch, *alpha, &mut rng)
            }
            (_, None) => {}
            // Token operations act on text batches only (see `apply_text`).
            (
                AugmentOp::TokenDropout { .. }
                | AugmentOp::MaskTokens { .. }
                | AugmentOp::SpanDelete { .. }
                | AugmentOp::SwapTokens { .. },
                _,
            ) => {}
            (AugmentOp::Flip { p }, Some(img)) => {
                for sample in x.chunks_exact_mut(sample_len) {
                    if rng.uniform() < *p {
                        for row in sample.chunks_exact_mut(img.width) {
                            row.reverse();
                        }
                    }
                }
            }
            // Padding by p and cropping back at a random place is a shift by up to p pixels
            // with the padding value filling in: one operation for both.
            (
                AugmentOp::RandomCrop { padding: max } | AugmentOp::Translate { max_pixels: max },
                Some(img),
            ) => {
                let span = 2 * *max as u64 + 1;
                for sample in x.chunks_exact_mut(sample_len) {
                    let dy = rng.below(span) as isize - *max as isize;
                    let dx = rng.below(span) as isize - *max as isize;
                    shift(sample, &mut scratch, img, dy, dx, &fill_of);
                }
            }
            (AugmentOp::Rotate { max_degrees }, Some(img)) => {
                // The angles in sample order, then the samples in parallel.
                let angles: Vec<f64> = (0..batch)
                    .map(|_| rng.uniform_in(-*max_degrees, *max_degrees).to_radians())
                    .collect();
                let fills: Vec<f32> = (0..img.channels).map(fill_of).collect();
                let geometry = (img.channels, img.height, img.width);
                x.par_chunks_exact_mut(sample_len)
                    .zip(angles.par_iter())
                    .for_each_init(
                        || vec![0f32; sample_len],
                        |scratch, (sample, &angle)| {
                            kd_kernels::augment::rotate(sample, scratch, geometry, angle, &fills);
                        },
                    );
            }
            (AugmentOp::Cutout { size }, Some(img)) => {
                for sample in x.chunks_exact_mut(sample_len) {
                    let cy = rng.below(img.height as u64) as isize;
                    let cx = rng.below(img.width as u64) as isize;
                    cutout(sample, img, cy, cx, *size, &fill_of);
                }
            }
        }
    }
}

/// Moves the image content by `(dy, dx)` pixels, filling what comes in.
fn shift(
    sample: &mut [f32],
    scratch: &mut [f32],
    img: Image,
    dy: isize,
    dx: isize,
    fill: &impl Fn(usize) -> f32,
) {
    if dy == 0 && dx == 0 {
        return;
    }
    scratch.copy_from_slice(sample);
    let (h, w) = (img.height as isize, img.width as isize);
    // Output columns [left, right) read the source row from column left - dx on: one copy
    // per row, the fill on either side.
    let left = dx.clamp(0, w) as usize;
    let right = (w + dx).clamp(0, w) as usize;
    for c in 0..img.channels {
        let base = c * img.plane();
        let value = fill(c);
        for i in 0..h {
            let row = &mut sample[base + (i * w) as usize..base + ((i + 1) * w) as usize];
            let si = i - dy;
            if si < 0 || si >= h || left >= right {
                row.fill(value);
                continue;
            }
            let source = base + (si * w) as usize;
            let from = (left as isize - dx) as usize;
            row[..left].fill(value);
            row[left..right].copy_from_slice(&scratch[source + from..source + from + right - left]);
            row[right..].fill(value);
        }
    }
}

/// Fills a `size` x `size` square centred at `(cy, cx)`, clipped to the image.
fn cutout(
    sample: &mut [f32],
    img: Image,
    cy: isize,
    cx: isize,
    size: usize,
    fill: &impl Fn(usize) -> f32,
) {
    let half = (size / 2) as isize;
    let (top, left) = ((cy - half).max(0) as usize, (cx - half).max(0) as usize);
    let bottom = ((cy - half + size as isize).max(0) as usize).min(img.height);
    let right = ((cx - half + size as isize).max(0) as usize).min(img.width);
    for c in 0..img.channels {
        let base = c * img.plane();
        let value = fill(c);
        for i in top..bottom {
            sample[base + i * img.width + left..base + i * img.width + right].fill(value);
        }
    }
}

/// Blends each sample with a partner from a permutation of the batch, one weight
/// `lambda ~ Beta(alpha, alpha)` per batch; the labels carry the partner and the weight.
fn mixup(
    x: &mut [f32],
    labels: &mut Labels,
    sample_len: usize,
    batch: usize,
    alpha: f64,
    rng: &mut Rng,
) {
    if batch == 0 || alpha.is_nan() || alpha <= 0.0 {
        return;
    }
    let lambda = rng.beta(alpha, alpha);
    let partner = rng.permutation(batch);
    let original = x.to_vec();
    let (keep, take) = (lambda as f32, (1.0 - lambda) as f32);
    for (b, sample) in x.chunks_exact_mut(sample_len).enumerate() {
        let other = &original[partner[b] * sample_len..(partner[b] + 1) * sample_len];
        for (v, &o) in sample.iter_mut().zip(other) {
            *v = keep * *v + take * o;
        }
    }
    let partner_labels = partner
        .iter()
        .map(|&p| labels.classes.get(p).copied().unwrap_or(0))
        .collect();
    labels.mix = Some(Mix {
        partner: partner_labels,
        lambda,
    });
}

/// What text augmentation needs of the tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    pub pad_id: u32,
    /// `None`: the tokenizer has none, and `mask_tokens` changes nothing.
    pub mask_id: Option<u32>,
    /// Ids never dropped, masked or moved (`[CLS]`, `[SEP]`, ...).
    pub special: &'a [u32],
}

/// Applies the token operations of `ops` to a batch of token ids (`x`, as f32, rows of
/// `len` padded at the end). Only ordinary tokens change; the rows stay `len` long.
pub fn apply_text(ops: &[AugmentOp], x: &mut [f32], len: usize, tokens: Tokens, key: AugmentKey) {
    if len == 0 {
        return;
    }
    for (op_index, op) in ops.iter().enumerate() {
        let mut rng = key.rng(op_index);
        for row in x.chunks_exact_mut(len) {
            // Up to the last real token: padding is at the end (a pad id inside the text,
            // from a literal "[PAD]", stays where it is and stays masked).
            let real = row
                .iter()
                .rposition(|&v| v as u32 != tokens.pad_id)
                .map_or(0, |p| p + 1);
            let ids: Vec<u32> = row[..real].iter().map(|&v| v as u32).collect();
            let ordinary: Vec<usize> = (0..ids.len())
                .filter(|&i| !tokens.special.contains(&ids[i]))
                .collect();
            let edited = match op {
                AugmentOp::TokenDropout { p } => {
                    let mut kept = Vec::with_capacity(ids.len());
                    for &id in &ids {
                        let ordinary = !tokens.special.contains(&id);
                        if !(ordinary && rng.uniform() < *p) {
                            kept.push(id);
                        }
                    }
                    kept
                }
                AugmentOp::MaskTokens { p } => {
                    let mut out = ids.clone();
                    if let Some(mask_id) = tokens.mask_id {
                        for &i in &ordinary {
                            if rng.uniform() < *p {
                                out[i] = mask_id;
                            }
                        }
                    }
                    out
                }
                AugmentOp::SpanDelete { max } => {
                    if ordinary.is_empty() {
                        ids.clone()
                    } else {
                        let span = 1 + rng.below(*max as u64) as usize;
                        let start = rng.below(ordinary.len() as u64) as usize;
                        let doomed: Vec<usize> =
                            ordinary[start..(start + span).min(ordinary.len())].to_vec();
                        ids.iter()
                            .enumerate()
                            .filter(|(i, _)| !doomed.contains(i))
                            .map(|(_, &id)| id)
                            .collect()
                    }
                }
                AugmentOp::SwapTokens { n } => {
                    let mut out = ids.clone();
                    if ordinary.len() >= 2 {
                        for _ in 0..*n {
                            let a = ordinary[rng.below(ordinary.len() as u64) as usize];
                            let b = ordinary[rng.below(ordinary.len() as u64) as usize];
                            out.swap(a, b);
                        }
                    }
                    out
                }
                _ => continue,
            };
            for (slot, id) in row.iter_mut().zip(
                edited
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(tokens.pad_id)),
            ) {
                *slot = id as f32;
            }
        }
    }
}
