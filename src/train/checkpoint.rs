//! Training checkpoints: one folder each (`<out>/last`, `<out>/best`), replaced atomically.
//!
//! # Layout
//! - `weights.mpk` — the model's parameters (named MessagePack, full precision; the format of
//!   `nn::save_weights`, so `nn::load_weights` reads it too);
//! - `optimizer.mpk` — the optimiser state (momentum buffers, Adam moments), `last` only;
//! - `state.json` — [`CheckpointState`]: format version, iterations and epochs done, the
//!   training config, the model config, the loss/metric history and the best checkpoint so far.
//!
//! # Atomicity
//! A checkpoint is written into a temporary sibling folder `.<name>.tmp-…`, then the old folder
//! is renamed to `.<name>.old-<pid>`, the new one into place, and the old one removed. A crash
//! between the two renames leaves only `.<name>.old-<pid>`; readers then restore it, so a
//! complete checkpoint is always found.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::config::TrainConfig;
use super::optim::TrainOptimizer;
use super::records::{CheckpointInfo, EpochRecord, IterationRecord, RestartRecord};
use super::swa::SwaRecord;

/// Value of [`CheckpointState::format`].
pub const CHECKPOINT_FORMAT: &str = "detlab-train-checkpoint";
/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// The weights file inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "weights.mpk";
/// The optimiser-state file inside a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.mpk";
/// The state file inside a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// The running SWA average inside a `last` written during the SWA phase.
pub const AVERAGE_FILE: &str = "average.mpk";

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// [`CHECKPOINT_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// detlab version of the writer.
    pub detlab_version: String,
    /// Iterations done (the 0-based index of the next iteration).
    pub iteration: usize,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Whether `optimizer.mpk` is present.
    pub has_optimizer: bool,
    /// The training settings of the run.
    pub config: TrainConfig,
    /// The model description given to the run (e.g. a serialised `RetinaUNetConfig`).
    pub model_config: serde_json::Value,
    /// Every iteration so far.
    pub history: Vec<IterationRecord>,
    /// Every completed epoch.
    pub epochs: Vec<EpochRecord>,
    /// The best checkpoint so far.
    pub best: Option<CheckpointInfo>,
    /// Whether `weights.mpk` holds SWA-averaged weights, and the running average's size.
    #[serde(default)]
    pub swa: SwaRecord,
    /// The automatic restarts so far.
    #[serde(default)]
    pub restarts: Vec<RestartRecord>,
}

fn hidden_sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{tag}"))
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> TrainError {
    TrainError::checkpoint(path, format!("cannot {what}: {e}"))
}

/// Find a checkpoint folder, restoring `.<name>.old-*` left by a crash mid-replacement.
pub fn locate_checkpoint(dir: &Path) -> Result<PathBuf, TrainError> {
    locate_checkpoint_marked(dir, STATE_FILE)
}

/// [`locate_checkpoint`] for checkpoint folders recognised by another state file (the
/// pre-training checkpoints' `pretrain.json`).
pub fn locate_checkpoint_marked(dir: &Path, marker: &str) -> Result<PathBuf, TrainError> {
    if dir.join(marker).is_file() {
        return Ok(dir.to_path_buf());
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.old-");
    if let Some(parent) = dir.parent()
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_old = entry.file_name().to_string_lossy().starts_with(&prefix);
            if is_old && path.join(marker).is_file() && !dir.exists() {
                std::fs::rename(&path, dir).map_err(|e| io_error(dir, "restore", e))?;
                return Ok(dir.to_path_buf());
            }
        }
    }
    Err(TrainError::checkpoint(
        dir,
        format!("no checkpoint here (no {marker})"),
    ))
}

/// Replace the folder `dir` by one filled by `fill` (see the module docs).
pub fn replace_dir(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, "create", e))?;
    }
    let tmp = hidden_sibling(dir, &format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = hidden_sibling(dir, &format!("old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| io_error(dir, "move aside", e))?;
        std::fs::rename(&tmp, dir).map_err(|e| io_error(dir, "move into place", e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| io_error(dir, "move into place", e))?;
    }
    // The renames count once the parent folder is synced (the files were by atomic_write).
    let parent = dir.parent().unwrap_or(Path::new("."));
    crate::util::sync_dir(parent).map_err(|e| io_error(parent, "sync", e))
}

/// Write a checkpoint folder: the weights, the optimiser state (if given) and `state`.
pub fn write_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    dir: &Path,
    model: &M,
    optimizer: Option<&TrainOptimizer<B, M>>,
    state: &CheckpointState,
) -> Result<(), TrainError> {
    write_checkpoint_with_average(dir, model, optimizer, None, state)
}

/// [`write_checkpoint`] plus the running SWA average (`average.mpk`) when given.
pub fn write_checkpoint_with_average<B: AutodiffBackend, M: AutodiffModule<B>>(
    dir: &Path,
    model: &M,
    optimizer: Option<&TrainOptimizer<B, M>>,
    average: Option<&M::InnerModule>,
    state: &CheckpointState,
) -> Result<(), TrainError> {
    let optimizer_bytes = optimizer.map(TrainOptimizer::to_bytes).transpose()?;
    let state_json = serde_json::to_vec_pretty(&CheckpointState {
        has_optimizer: optimizer_bytes.is_some(),
        ..state.clone()
    })
    .map_err(|e| TrainError::checkpoint(dir, format!("cannot encode the state: {e}")))?;
    replace_dir(dir, |tmp| {
        crate::nn::save_weights(model, &tmp.join(WEIGHTS_FILE))?;
        if let Some(average) = average {
            crate::nn::save_weights::<B::InnerBackend, _>(average, &tmp.join(AVERAGE_FILE))?;
        }
        if let Some(bytes) = &optimizer_bytes {
            let path = tmp.join(OPTIMIZER_FILE);
            crate::util::atomic_write(&path, bytes).map_err(|e| io_error(&path, "write", e))?;
        }
        let path = tmp.join(STATE_FILE);
        crate::util::atomic_write(&path, &state_json).map_err(|e| io_error(&path, "write", e))
    })
}

/// Read `state.json` of the checkpoint folder `dir`.
pub fn read_checkpoint_state(dir: &Path) -> Result<CheckpointState, TrainError> {
    let dir = locate_checkpoint(dir)?;
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, "read", e))?;
    // Correctly rounded numbers: serde_json's own float parser can be one ulp off, and the
    // history must survive a resume bit for bit.
    let value = crate::metrics::io::parse_json_exact(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("invalid JSON: {e}")))?;
    let state: CheckpointState = serde_json::from_value(value)
        .map_err(|e| TrainError::checkpoint(&path, format!("invalid state: {e}")))?;
    if state.format != CHECKPOINT_FORMAT || state.format_version != CHECKPOINT_FORMAT_VERSION {
        return Err(TrainError::checkpoint(
            &path,
            format!(
                "format '{}' version {} is not '{CHECKPOINT_FORMAT}' version {CHECKPOINT_FORMAT_VERSION}",
                state.format, state.format_version
            ),
        ));
    }
    Ok(state)
}

/// Load the weights of the checkpoint folder `dir` into `model` (same architecture), e.g. to
/// predict with the `best` model or to fine-tune from it.
pub fn load_checkpoint_weights<B: Backend, M: Module<B>>(
    model: M,
    dir: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let dir = locate_checkpoint(dir)?;
    Ok(crate::nn::load_weights(
        model,
        &dir.join(WEIGHTS_FILE),
        device,
    )?)
}

/// Load the optimiser state of the checkpoint folder `dir` into `optimizer` for `model`
/// (loaded from the same checkpoint).
pub fn load_checkpoint_optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
    optimizer: TrainOptimizer<B, M>,
    model: &M,
    dir: &Path,
    device: &B::Device,
) -> Result<TrainOptimizer<B, M>, TrainError> {
    let dir = locate_checkpoint(dir)?;
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
    optimizer
        .load_bytes(bytes, model, device)
        .map_err(|e| match e {
            TrainError::Checkpoint { reason, .. } => TrainError::checkpoint(&path, reason),
            other => other,
        })
}

/// Load the running SWA average of the checkpoint folder `dir` into `model` (same
/// architecture, e.g. the training model's `valid()` copy).
pub fn load_checkpoint_average<B: Backend, M: Module<B>>(
    model: M,
    dir: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let dir = locate_checkpoint(dir)?;
    Ok(crate::nn::load_weights(
        model,
        &dir.join(AVERAGE_FILE),
        device,
    )?)
}
