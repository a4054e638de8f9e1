//! What a training run records: per-iteration losses, per-epoch validation metrics and the
//! checkpoints it wrote.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;

/// Loss and learning rate of one training iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IterationRecord {
    /// 0-based iteration of the run.
    pub iteration: usize,
    /// 0-based epoch.
    pub epoch: usize,
    /// Learning rate of this step.
    pub lr: f64,
    /// Total loss.
    pub loss: f64,
    /// Weighted loss components (`cls`, `reg`, `seg_ce`, `seg_dice`, …).
    pub components: BTreeMap<String, f64>,
    /// Global gradient norm before clipping (only when clipping is on).
    pub grad_norm: Option<f64>,
    /// Whether the encoder was frozen in this step.
    pub encoder_frozen: bool,
}

/// One automatic restart of a run (see `TrainConfig::restart`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartRecord {
    /// Iterations done when it restarted: the run's iteration `iteration` is the first step of
    /// the restarted whole-network phase.
    pub iteration: usize,
    /// The selection metric's best value in the abandoned phase (NaN if never finite).
    #[serde(with = "nan_as_null_scalar")]
    pub metric: f64,
    /// The value it had to exceed by `min_improvement` (its last value before the phase).
    pub baseline: f64,
    /// Target learning rate of the new warm-up.
    pub lr: f64,
    /// Iterations of the new warm-up.
    pub warmup_iters: usize,
}

/// Summary of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's iterations.
    pub train_loss_mean: f64,
    /// Validation metrics (nnDetection's keys, e.g. `AP_IoU_0.10_MaxDet_100`,
    /// `mAP_IoU_0.10_0.50_0.05_MaxDet_100`); empty when this epoch was not validated. NaN (a
    /// FROC without true positives) is written as JSON `null`.
    #[serde(with = "nan_as_null")]
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds of the epoch (training and validation; after a resume, only the part
    /// run since).
    pub seconds: f64,
}

/// A checkpoint folder written by a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointInfo {
    /// The folder (`<out>/last` or `<out>/best`).
    pub path: PathBuf,
    /// Iterations done when it was written.
    pub iteration: usize,
    /// Epochs completed when it was written.
    pub epochs_done: usize,
    /// Value of the selection metric (`best` only).
    pub metric: Option<f64>,
    /// Per-epoch snapshots averaged into its weights by SWA (0: the trained weights).
    #[serde(default)]
    pub averaged_snapshots: usize,
}

/// The outcome of a training call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRun {
    /// Every iteration of the run so far (including those before a resume).
    pub history: Vec<IterationRecord>,
    /// Every completed epoch.
    pub epochs: Vec<EpochRecord>,
    /// The best checkpoint by `config.best_metric`, if validated.
    pub best: Option<CheckpointInfo>,
    /// The `last` checkpoint.
    pub last: CheckpointInfo,
    /// The settings of this call.
    pub config: TrainConfig,
    /// The model description recorded with the checkpoints.
    pub model_config: serde_json::Value,
    /// Automatic restarts, in order.
    #[serde(default)]
    pub restarts: Vec<RestartRecord>,
    /// Iterations done.
    pub iterations_done: usize,
    /// Whether the whole schedule ran (false after `stop_at_iteration`).
    pub finished: bool,
}

impl TrainRun {
    /// The training losses in iteration order.
    pub fn losses(&self) -> Vec<f64> {
        self.history.iter().map(|r| r.loss).collect()
    }

    /// The learning rates in iteration order.
    pub fn learning_rates(&self) -> Vec<f64> {
        self.history.iter().map(|r| r.lr).collect()
    }

    /// Validation metric `key` per validated epoch as `(epoch, value)`.
    pub fn metric(&self, key: &str) -> Vec<(usize, f64)> {
        self.epochs
            .iter()
            .filter_map(|e| e.metrics.get(key).map(|&v| (e.epoch, v)))
            .collect()
    }
}

/// Serde for one metric value: NaN ↔ `null`.
mod nan_as_null_scalar {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        v.is_finite().then_some(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Serde for metric maps: NaN ↔ `null` (JSON has no NaN; serde_json writes `null` for it but
/// cannot read that back as a number).
mod nan_as_null {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(k, v)| (k, v.is_finite().then_some(*v)))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
            .collect())
    }
}
