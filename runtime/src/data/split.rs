//! Stratified splits of a source's training part.

use std::collections::BTreeMap;

use kd_plan::DataSpec;

use super::{requested_size, Part, PartKind, Split};
use crate::error::{Result, RuntimeError};
use crate::rng::Rng;

/// Partitions the training part into the splits declared in `spec`, in order, each
/// stratified by label: every class gives the same share of its remaining samples
/// (largest remainder, so sizes are exact). `SourceTest` splits take the test part.
pub fn make_splits(
    spec: &DataSpec,
    train: &Part,
    test: Option<&Part>,
    seed: u64,
) -> Result<Vec<Split>> {
    // One entry per label that occurs (ascending), not per declared class: a plan may declare
    // any number of classes, and classes without samples take no share of any split.
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, &label) in train.labels.iter().enumerate() {
        groups.entry(label).or_default().push(index);
    }
    let mut by_class: Vec<Vec<usize>> = groups.into_values().collect();
    let classes = by_class.len();
    let mut rng = Rng::new(seed, &format!("split/{}", spec.name));
    for members in &mut by_class {
        rng.shuffle(members);
    }
    // How many of each class's shuffled members earlier splits have taken.
    let mut taken = vec![0usize; classes];
    let mut splits = Vec::with_capacity(spec.splits.len());
    for split_spec in &spec.splits {
        let Some(size) = requested_size(&split_spec.size, train.len()) else {
            let test = test.ok_or_else(|| RuntimeError::Data {
                data: spec.name.clone(),
                reason: format!(
                    "split `{}` asks for the source's test part, which it does not have",
                    split_spec.name
                ),
                help: Some(
                    "only IDX sources with test files have one; use a count or a fraction".into(),
                ),
            })?;
            splits.push(Split {
                name: split_spec.name.clone(),
                part: PartKind::Test,
                indices: (0..test.len()).collect(),
                labeled: split_spec.labeled,
            });
            continue;
        };
        let remaining: Vec<usize> = by_class
            .iter()
            .zip(&taken)
            .map(|(m, t)| m.len() - t)
            .collect();
        let remaining_total: usize = remaining.iter().sum();
        if size > remaining_total {
            return Err(RuntimeError::Data {
                data: spec.name.clone(),
                reason: format!(
                    "split `{}` needs {size} samples but only {remaining_total} of {} are left",
                    split_spec.name,
                    train.len()
                ),
                help: Some("make the splits smaller (or raise `limit`)".into()),
            });
        }
        let quotas = largest_remainder(&remaining, size);
        let mut indices = Vec::with_capacity(size);
        for class in 0..classes {
            let start = taken[class];
            indices.extend_from_slice(&by_class[class][start..start + quotas[class]]);
            taken[class] += quotas[class];
        }
        indices.sort_unstable();
        splits.push(Split {
            name: split_spec.name.clone(),
            part: PartKind::Train,
            indices,
            labeled: split_spec.labeled,
        });
    }
    Ok(splits)
}

/// Shares `size` among classes in proportion to `available`, never more than available:
/// floors first, then one more to the largest fractional parts (lowest class on ties).
pub fn largest_remainder(available: &[usize], size: usize) -> Vec<usize> {
    let total: usize = available.iter().sum();
    if total == 0 {
        return vec![0; available.len()];
    }
    let mut quotas = Vec::with_capacity(available.len());
    let mut remainders = Vec::with_capacity(available.len());
    for (class, &count) in available.iter().enumerate() {
        // Exact integer arithmetic: count * size / total with its remainder.
        let product = count as u128 * size as u128;
        quotas.push((product / total as u128) as usize);
        remainders.push((product % total as u128, class));
    }
    let mut missing = size - quotas.iter().sum::<usize>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(remainder, class) in &remainders {
        if missing == 0 {
            break;
        }
        if remainder > 0 && quotas[class] < available[class] {
            quotas[class] += 1;
            missing -= 1;
        }
    }
    quotas
}
