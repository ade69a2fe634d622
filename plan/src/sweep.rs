//! A sweep: one Plan per configuration of a `sweep` declaration, and how the best one is
//! chosen. `kdc run FILE --sweep NAME` runs it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Metric, Override, Plan};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SweepPlan {
    pub name: String,
    /// How the configurations were made: `grid`, or `random(trials: N, seed: S)`.
    pub search: String,
    pub select: Selection,
    pub configs: Vec<SweepConfig>,
}

/// `select METRIC of MODEL on DATA.SPLIT`: the configuration whose MODEL scores best there
/// (the mean over the run's seeds) wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Selection {
    pub metric: Metric,
    pub model: String,
    /// The baselines of MODEL, evaluated on the same split for the paired difference.
    pub baselines: Vec<String>,
    pub data: String,
    pub split: String,
}

/// One configuration: the swept keys' values, and the Plan they make.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SweepConfig {
    /// Its folder in the run folder (`c01`, `c02`, ...).
    pub name: String,
    pub values: Vec<Override>,
    pub plan: Plan,
}

impl SweepPlan {
    /// A digest of every configuration's Plan and of the selection.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.name.as_bytes());
        hasher.update(self.search.as_bytes());
        hasher.update(
            serde_yaml::to_string(&self.select)
                .unwrap_or_default()
                .as_bytes(),
        );
        for config in &self.configs {
            hasher.update(config.name.as_bytes());
            hasher.update(config.plan.hash().as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
