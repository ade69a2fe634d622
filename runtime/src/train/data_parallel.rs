//! What the ranks of a data-parallel run exchange in each training step
//! ([`crate::distributed`]): the loss and the counters, the gradients weighted by each
//! rank's share of the batch, rank 0's batch-norm statistics, and the frozen models'
//! outputs each rank computed for its rows, so that every rank's cache holds every row
//! and no row goes through a frozen model twice.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::cache::{CacheKey, CacheTable, OutputCache};
use crate::distributed::World;
use crate::error::{Result, RuntimeError, TensorContext};
use crate::model::Model;

/// A rank's part of a step, before the ranks agree.
pub(super) struct Local {
    /// The rank's rows over the batch's.
    pub weight: f64,
    /// The mean loss over the rank's rows, when it computed one and it is finite.
    pub loss: Option<f64>,
    /// Whether its loss was not finite.
    pub non_finite: bool,
    /// Rows that went through a frozen model.
    pub frozen_samples: u64,
    /// Whether this process was asked to stop (Ctrl-C, SIGTERM).
    pub interrupted: bool,
}

/// What every rank takes from a step.
pub(super) struct Agreed {
    /// The batch's mean loss (each rank's weighted by its rows).
    pub loss: f64,
    /// Some rank's loss was not finite: every rank skips the batch or stops.
    pub non_finite: bool,
    pub frozen_samples: u64,
    /// Some rank was asked to stop: every rank stops after this step.
    pub interrupted: bool,
}

/// Sums the ranks' counters in rank order.
pub(super) fn agree(world: &World, local: &Local) -> Result<Agreed> {
    let mut sums = [
        local.weight * local.loss.unwrap_or(0.0),
        f64::from(u8::from(local.non_finite)),
        local.frozen_samples as f64,
        f64::from(u8::from(local.interrupted)),
    ];
    world.sum_f64(&mut sums)?;
    Ok(Agreed {
        loss: sums[0],
        non_finite: sums[1] > 0.0,
        frozen_samples: sums[2] as u64,
        interrupted: sums[3] > 0.0,
    })
}

/// Replaces each parameter's gradient by the sum over the ranks of `weight` times theirs:
/// the gradient of the whole batch's mean loss. A parameter gets a gradient when some rank
/// has one (a rank without rows has none).
pub(super) fn sum_gradients(
    world: &World,
    params: &[(String, Var)],
    grads: &mut GradStore,
    weight: f64,
) -> Result<()> {
    let total: usize = params.iter().map(|(_, v)| 1 + v.elem_count()).sum();
    let mut flat = Vec::with_capacity(total);
    for (name, var) in params {
        match grads.get(var.as_tensor()) {
            Some(g) => {
                flat.push(1.0);
                let values = g
                    .flatten_all()
                    .and_then(|g| g.to_dtype(candle_core::DType::F32))
                    .and_then(|g| g.to_vec1::<f32>())
                    .ctx_with(|| format!("reading the gradient of `{name}`"))?;
                flat.extend(values.iter().map(|v| v * weight as f32));
            }
            None => flat.extend(std::iter::repeat_n(0.0, 1 + var.elem_count())),
        }
    }
    world.sum(&mut flat)?;
    let mut at = 0;
    for (name, var) in params {
        let n = var.elem_count();
        let present = flat[at] > 0.0;
        let values = &flat[at + 1..at + 1 + n];
        at += 1 + n;
        if !present {
            grads.remove(var.as_tensor());
            continue;
        }
        let grad = Tensor::from_slice(values, var.shape(), var.device())
            .and_then(|g| g.to_dtype(var.dtype()))
            .ctx_with(|| format!("the summed gradient of `{name}`"))?;
        grads.insert(var.as_tensor(), grad);
    }
    Ok(())
}

/// Rank 0's running statistics (batch norm) and dropout counter on every rank: each
/// rank's statistics come from its own rows, and a rank without rows in a step ran no
/// forward; the ranks must keep one model (as PyTorch's DistributedDataParallel
/// broadcasts its buffers).
pub(super) fn share_model_state(world: &World, model: &mut Model) -> Result<()> {
    let calls = world.gather_bytes(&model.dropout_calls().to_le_bytes())?;
    let first = calls
        .first()
        .and_then(|c| <[u8; 8]>::try_from(c.as_slice()).ok());
    match first {
        Some(bytes) => model.set_dropout_calls(u64::from_le_bytes(bytes)),
        None => {
            return Err(RuntimeError::Distributed {
                reason: "rank 0 sent no dropout counter".into(),
                help: None,
            })
        }
    }
    let buffers = model.buffer_snapshot()?;
    if buffers.is_empty() {
        return Ok(());
    }
    let mut flat = Vec::new();
    for b in &buffers {
        flat.extend(
            b.flatten_all()
                .and_then(|b| b.to_dtype(candle_core::DType::F32))
                .and_then(|b| b.to_vec1::<f32>())
                .ctx("reading the running statistics")?,
        );
    }
    world.broadcast(&mut flat)?;
    let mut at = 0;
    let mut shared = Vec::with_capacity(buffers.len());
    for b in &buffers {
        let n = b.elem_count();
        shared.push(
            Tensor::from_slice(&flat[at..at + n], b.shape(), b.device())
                .and_then(|t| t.to_dtype(b.dtype()))
                .ctx("sharing the running statistics")?,
        );
        at += n;
    }
    model.restore_buffers(&shared)
}

/// Which rows of each cache table hold outputs: taken before a step, so that
/// [`share_cache`] sends only the rows the step computed.
pub(super) fn filled_rows(cache: &OutputCache) -> Vec<(CacheKey, Vec<bool>)> {
    cache
        .tables
        .iter()
        .map(|(key, table)| (key.clone(), table.filled.clone()))
        .collect()
}

/// Sends the rows this rank's step added to its cache to every other rank, and takes
/// theirs, in rank order.
pub(super) fn share_cache(
    world: &World,
    cache: &mut OutputCache,
    before: &[(CacheKey, Vec<bool>)],
) -> Result<()> {
    let mut message = Message::default();
    for (key, table) in &cache.tables {
        let old = before.iter().find(|(k, _)| k == key).map(|(_, f)| f);
        let fresh: Vec<usize> = (0..table.samples)
            .filter(|&i| table.filled[i] && old.is_none_or(|f| f.get(i) != Some(&true)))
            .collect();
        if !fresh.is_empty() {
            message.table(key, table, &fresh);
        }
    }
    let all = world.gather_bytes(&message.bytes)?;
    // Every rank takes every message, its own too, in rank order: two ranks that computed
    // one sample (a batch that cycles a small split) then keep the same bits for it.
    for (rank, bytes) in all.iter().enumerate() {
        take_rows(cache, bytes).map_err(|reason| RuntimeError::Distributed {
            reason: format!("rank {rank} sent frozen-model outputs that do not fit: {reason}"),
            help: Some("every rank must run the same pipeline on the same data".into()),
        })?;
    }
    Ok(())
}

/// A cache message: per table its key, its split's size, its ports' names and shapes, the
/// rows, and their values port by port.
#[derive(Default)]
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn number(&mut self, n: usize) {
        self.bytes.extend((n as u64).to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.number(text.len());
        self.bytes.extend(text.as_bytes());
    }

    fn table(&mut self, key: &CacheKey, table: &CacheTable, rows: &[usize]) {
        self.text(&key.0);
        self.text(&key.1);
        self.text(&key.2);
        self.number(table.samples);
        self.number(table.ports.len());
        for (name, shape, _) in &table.ports {
            self.text(name);
            self.number(shape.len());
            for &d in shape {
                self.number(d);
            }
        }
        self.number(rows.len());
        for &row in rows {
            self.number(row);
        }
        for (_, shape, values) in &table.ports {
            let width: usize = shape.iter().product();
            for &row in rows {
                for v in &values[row * width..(row + 1) * width] {
                    self.bytes.extend(v.to_le_bytes());
                }
            }
        }
    }
}

/// Reads a [`Message`] back.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.bytes.len() < n {
            return Err("the message ends early".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn number(&mut self) -> Result<usize, String> {
        let b = self.take(8)?;
        let n = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        usize::try_from(n).map_err(|_| format!("{n} is too large"))
    }

    fn text(&mut self) -> Result<String, String> {
        let n = self.number()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a name is not UTF-8".into())
    }

    fn f32(&mut self) -> Result<f32, String> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The most values a table made from another rank's message may hold (16 GiB of f32): a
/// message that claims more is malformed, not a table to allocate.
const MAX_TABLE_VALUES: usize = 1 << 32;

/// Stores another rank's rows in `cache`, making a table the same way when this rank has
/// none yet.
fn take_rows(cache: &mut OutputCache, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader { bytes };
    let mut allocated = 0usize;
    while !r.bytes.is_empty() {
        let key = (r.text()?, r.text()?, r.text()?);
        let samples = r.number()?;
        let port_count = r.number()?;
        let mut ports = Vec::new();
        for _ in 0..port_count {
            let name = r.text()?;
            let dims = r.number()?;
            let shape = (0..dims)
                .map(|_| r.number())
                .collect::<Result<Vec<_>, _>>()?;
            // A table this rank makes from the message must be one it can hold, and all
            // the tables of a message together.
            let values = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|width| width.checked_mul(samples.max(1)))
                .filter(|&n| n <= MAX_TABLE_VALUES - allocated.min(MAX_TABLE_VALUES))
                .ok_or_else(|| format!("port `{name}` of {samples} samples is too large"))?;
            allocated += values;
            ports.push((name, shape));
        }
        let row_count = r.number()?;
        let rows = (0..row_count)
            .map(|_| r.number())
            .collect::<Result<Vec<_>, _>>()?;
        if rows.iter().any(|&row| row >= samples) {
            return Err(format!("a row past the split's {samples} samples"));
        }
        let table = cache
            .tables
            .entry(key.clone())
            .or_insert_with(|| CacheTable::empty(samples, ports.iter().cloned()));
        let same = table.samples == samples
            && table.ports.len() == ports.len()
            && table
                .ports
                .iter()
                .zip(&ports)
                .all(|((n, s, _), (name, shape))| n == name && s == shape);
        if !same {
            return Err(format!("the table of `{}` differs from this rank's", key.0));
        }
        for (_, shape, values) in table.ports.iter_mut() {
            let width: usize = shape.iter().product();
            for &row in &rows {
                for v in &mut values[row * width..(row + 1) * width] {
                    *v = r.f32()?;
                }
            }
        }
        for &row in &rows {
            table.filled[row] = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(samples: usize, rows: &[usize]) -> CacheTable {
        let mut t = CacheTable {
            samples,
            ports: vec![("logits".into(), vec![2], vec![0.0; samples * 2])],
            filled: vec![false; samples],
        };
        for &row in rows {
            t.filled[row] = true;
            t.ports[0].2[row * 2] = row as f32;
            t.ports[0].2[row * 2 + 1] = -(row as f32);
        }
        t
    }

    #[test]
    fn a_cache_message_carries_rows_into_another_cache() {
        let key: CacheKey = ("t".into(), "mnist".into(), "train".into());
        let mut message = Message::default();
        message.table(&key, &table(6, &[1, 4]), &[1, 4]);
        let mut other = OutputCache::default();
        other.tables.insert(key.clone(), table(6, &[0]));
        assert_eq!(take_rows(&mut other, &message.bytes), Ok(()));
        assert_eq!(other.tables[&key], table(6, &[0, 1, 4]));
        // A table this rank lacks is made.
        let mut empty = OutputCache::default();
        assert_eq!(take_rows(&mut empty, &message.bytes), Ok(()));
        assert_eq!(empty.tables[&key], table(6, &[1, 4]));
    }

    #[test]
    fn any_bytes_are_a_message_or_an_error_never_a_panic() {
        let key: CacheKey = ("t".into(), "mnist".into(), "train".into());
        let mut message = Message::default();
        message.table(&key, &table(6, &[1, 4]), &[1, 4]);
        let good = message.bytes;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..3000 {
            let mut bytes = good.clone();
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let at = (state >> 33) as usize % bytes.len();
            match round % 3 {
                0 => bytes[at] ^= (state >> 7) as u8 | 1,
                1 => bytes.truncate(at),
                _ => bytes[at..(at + 8).min(good.len())].fill(0xff),
            }
            let _ = take_rows(&mut OutputCache::default(), &bytes);
        }
    }

    #[test]
    fn a_cache_message_that_does_not_fit_is_refused() {
        let key: CacheKey = ("t".into(), "mnist".into(), "train".into());
        let mut message = Message::default();
        message.table(&key, &table(6, &[1]), &[1]);
        let mut other = OutputCache::default();
        other.tables.insert(key.clone(), table(7, &[]));
        assert!(take_rows(&mut other, &message.bytes).is_err());
        let cut = &message.bytes[..message.bytes.len() - 3];
        assert!(take_rows(&mut OutputCache::default(), cut).is_err());
    }
}
