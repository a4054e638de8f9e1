//! The error type of the pre-training module.

use std::path::PathBuf;

use crate::data::DataError;
use crate::nn::NnError;
use crate::train::TrainError;
use crate::volume::VolumeError;

/// Everything that can go wrong when preparing data for, running or loading a pre-training.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// A pre-training setting that cannot work.
    #[error("invalid pre-training configuration: `{field}`: {reason}")]
    InvalidConfig {
        /// The setting concerned (dotted path, e.g. `mask.block`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Data that cannot be used for pre-training (no images, mixed channels, ...).
    #[error("invalid pre-training data: {0}")]
    InvalidData(String),
    /// Reading a dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading a volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The network refused its configuration or a batch.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// The shared training machinery (optimiser, checkpoint, NaN stop, interruption).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A pre-training checkpoint is missing, damaged or of another kind.
    #[error("pre-training checkpoint '{path}': {reason}")]
    Checkpoint {
        /// The folder or file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor or entry of a checkpoint file (PyTorch, safetensors) is missing or unusable.
    #[error("checkpoint '{path}', key `{key}`: {reason}")]
    CheckpointKey {
        /// The file concerned.
        path: PathBuf,
        /// The key in the file (state-dict key or top-level entry).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A PyTorch checkpoint whose pickle names code to run; it was refused, nothing ran.
    #[error(
        "refusing PyTorch checkpoint '{path}': its pickle refers to `{global}`, which is not plain data (tensors, numbers, strings, containers); checkpoints from nnssl and MultiTalent never need it, and detlab never runs code from a checkpoint"
    )]
    UnsafePickle {
        /// The file concerned.
        path: PathBuf,
        /// The refused global, `module.name`.
        global: String,
    },
    /// The pre-training loss became NaN or infinite; the step was not applied.
    #[error(
        "the pre-training loss is not finite at iteration {} (counted from 1, as in the progress lines): total {total}, components {components}; \
         lower the learning rate, enable `optimizer.grad_clip_norm` or check the data for NaN/Inf",
        .iteration + 1
    )]
    NonFiniteLoss {
        /// The 0-based iteration whose loss was not finite.
        iteration: usize,
        /// The total loss.
        total: f64,
        /// The loss components, e.g. `reconstruction=NaN`.
        components: String,
    },
    /// A figure could not be written.
    #[error("pre-training figure: {0}")]
    Figure(String),
}

impl PretrainError {
    /// Shorthand for [`PretrainError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PretrainError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`PretrainError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        PretrainError::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
