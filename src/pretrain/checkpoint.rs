//! Pre-training checkpoints: `<out>/last` and `<out>/best`, each a folder replaced atomically
//! (the machinery of [`crate::train::checkpoint`]).
//!
//! # Layout (format `detlab-pretrain-checkpoint`, version 1)
//! - `pretrain.json` — [`PretrainState`]: the method and all its settings, the network
//!   (encoder config, decoder, stems named by dataset, heads), the data plan (spacing,
//!   normalisation, channels), the iteration and the loss history;
//! - `weights.mpk` — every weight of the [`PretrainNetwork`] (named MessagePack, full
//!   precision): the encoder under `encoder.stem.…` / `encoder.stages.…`, plus the decoder,
//!   densify, projector, extra stems and heads, kept for resuming and "all" transfer;
//! - `optimizer.mpk` — the optimiser state (`last` only);
//! - `teacher.mpk` — VoCo's EMA teacher, when it has one.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::config::{Method, PretrainConfig};
use super::network::{PretrainNetwork, PretrainNetworkConfig, StemSpec};
use super::source::DataPlan;
use crate::train::IterationRecord;
use crate::train::checkpoint::locate_checkpoint_marked;

/// Value of [`PretrainState::format`].
pub const PRETRAIN_FORMAT: &str = "detlab-pretrain-checkpoint";
/// Version of the layout.
pub const PRETRAIN_FORMAT_VERSION: u32 = 1;
/// The state file of a pre-training checkpoint folder.
pub const PRETRAIN_STATE_FILE: &str = "pretrain.json";
/// The EMA teacher's weights.
pub const TEACHER_FILE: &str = "teacher.mpk";

/// One validation of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRecord {
    /// Iterations done when it ran.
    pub iteration: usize,
    /// Mean loss over the fixed validation patches.
    pub loss: f64,
}

/// `pretrain.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainState {
    /// Always [`PRETRAIN_FORMAT`].
    pub format: String,
    /// [`PRETRAIN_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// detlab version of the writer.
    pub detlab_version: String,
    /// The method.
    pub method: Method,
    /// Iterations done.
    pub iteration: usize,
    /// Whether `optimizer.mpk` is present.
    pub has_optimizer: bool,
    /// All settings of the run.
    pub config: PretrainConfig,
    /// What the network consists of.
    pub network: PretrainNetworkConfig,
    /// How the data was prepared, one per dataset (MultiTalent) or one.
    pub data: Vec<DataPlan>,
    /// Every iteration so far.
    pub history: Vec<IterationRecord>,
    /// Every validation so far.
    pub validation: Vec<ValidationRecord>,
    /// Iteration and loss of the best (lowest validation loss) checkpoint so far.
    pub best: Option<ValidationRecord>,
}

impl PretrainState {
    /// The stems of the checkpoint: the encoder's own (named after the first dataset, or
    /// `"default"`) and MultiTalent's others.
    pub fn stems(&self) -> Vec<StemSpec> {
        if self.network.stems.is_empty() {
            vec![StemSpec {
                dataset: "default".into(),
                channels: self.network.encoder.in_channels(),
            }]
        } else {
            self.network.stems.clone()
        }
    }
}

/// Find the checkpoint folder a path means: a checkpoint folder itself, or a run folder
/// (its `best`, else its `last`).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, PretrainError> {
    if let Ok(dir) = locate_checkpoint_marked(path, PRETRAIN_STATE_FILE) {
        return Ok(dir);
    }
    for name in ["best", "last"] {
        if let Ok(dir) = locate_checkpoint_marked(&path.join(name), PRETRAIN_STATE_FILE) {
            return Ok(dir);
        }
    }
    Err(PretrainError::checkpoint(
        path,
        format!(
            "not a pre-training checkpoint: no {PRETRAIN_STATE_FILE} here or in best/ or last/"
        ),
    ))
}

/// Read `pretrain.json` of a checkpoint folder (or of a run folder's best/last).
pub fn read_state(path: &Path) -> Result<(PathBuf, PretrainState), PretrainError> {
    let dir = resolve_checkpoint(path)?;
    let file = dir.join(PRETRAIN_STATE_FILE);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| PretrainError::checkpoint(&file, format!("cannot read: {e}")))?;
    // Correctly rounded numbers, so a resumed history is bit-identical.
    let value = crate::metrics::io::parse_json_exact(&text)
        .map_err(|e| PretrainError::checkpoint(&file, format!("invalid JSON: {e}")))?;
    let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if format != PRETRAIN_FORMAT {
        return Err(PretrainError::checkpoint(
            &file,
            format!("format '{format}' is not '{PRETRAIN_FORMAT}'"),
        ));
    }
    if version != u64::from(PRETRAIN_FORMAT_VERSION) {
        return Err(PretrainError::checkpoint(
            &file,
            format!(
                "format version {version} is not {PRETRAIN_FORMAT_VERSION}; this detlab reads version {PRETRAIN_FORMAT_VERSION} only"
            ),
        ));
    }
    let state: PretrainState = serde_json::from_value(value)
        .map_err(|e| PretrainError::checkpoint(&file, format!("invalid state: {e}")))?;
    Ok((dir, state))
}

/// A pre-trained network read from a checkpoint, with everything needed to transfer it.
pub struct Pretrained<B: Backend> {
    /// The checkpoint folder it was read from.
    pub path: PathBuf,
    /// Its `pretrain.json`.
    pub state: PretrainState,
    /// The network with the saved weights.
    pub network: PretrainNetwork<B>,
}

/// Load a pre-training checkpoint (a checkpoint folder or a run folder) onto `device`.
pub fn load_pretrained<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<Pretrained<B>, PretrainError> {
    let (dir, state) = read_state(path)?;
    let network = state.network.init::<B>(device)?;
    let network = crate::nn::load_weights(
        network,
        &dir.join(crate::train::checkpoint::WEIGHTS_FILE),
        device,
    )?;
    Ok(Pretrained {
        path: dir,
        state,
        network,
    })
}

impl<B: Backend> Pretrained<B> {
    /// A readable summary: method, architecture, data plan, patch, channels, stems.
    pub fn describe(&self) -> String {
        let s = &self.state;
        let plan = s.data.first();
        let stems: Vec<String> = s
            .stems()
            .iter()
            .map(|st| format!("{} ({} ch)", st.dataset, st.channels))
            .collect();
        format!(
            "Pretrained {} encoder ({}, widths {:?}) from {}\n  iterations: {}  patch: {:?}  channels: {}\n  spacing: {:?} mm  normalisation: {}\n  stems: {}{}",
            s.method.name(),
            match &s.network.encoder {
                crate::nn::EncoderConfig::Retunet(_) => "retunet",
                crate::nn::EncoderConfig::Resenc(_) => "resenc",
            },
            s.network.encoder.widths(),
            self.path.display(),
            s.iteration,
            s.config.encoder_patch(),
            s.network.encoder.in_channels(),
            plan.map(|p| p.spacing).unwrap_or([0.0; 3]),
            plan.map(|p| p.normalization.as_str()).unwrap_or("unknown"),
            stems.join(", "),
            if s.network.decoder.is_some() {
                "\n  decoder: kept (for resume and scope \"all\")"
            } else {
                ""
            }
        )
    }
}
