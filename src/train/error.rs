//! The error type of the training module.
//!
//! Messages count iterations and epochs from 1, as the progress lines do (`epoch 2/8`, the bar's
//! `41/320`): "iteration 41" is the 41st iteration of the run. The fields of the errors (and the
//! history records) hold 0-based indices.

use std::path::PathBuf;

use crate::data::DataError;
use crate::metrics::MetricsError;
use crate::nn::NnError;

/// Everything that can go wrong when sampling patches, training, validating or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training setting that cannot work.
    #[error("invalid training configuration: `{field}`: {reason}")]
    InvalidConfig {
        /// The setting concerned (dotted path, e.g. `optimizer.betas`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Training or validation data that does not fit the model or the sampler.
    #[error("invalid training data: {0}")]
    InvalidData(String),
    /// Loading a case failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The network refused a batch or failed.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// The online validation could not be scored.
    #[error("online validation: {0}")]
    Metrics(#[from] MetricsError),
    /// The loss became NaN or infinite; the step was not applied.
    #[error(
        "the loss is not finite at iteration {} (epoch {}; both counted from 1, as in the progress lines): total {total}, components {components}; \
         lower the learning rate, enable `optimizer.grad_clip_norm` or check the data for NaN/Inf",
        .iteration + 1,
        .epoch + 1
    )]
    NonFiniteLoss {
        /// The 0-based iteration whose loss was not finite.
        iteration: usize,
        /// Its 0-based epoch.
        epoch: usize,
        /// The total loss.
        total: f64,
        /// The loss components, e.g. `cls=0.69, reg=NaN`.
        components: String,
    },
    /// Ctrl-C (or another interruption request) stopped the run; the state was saved.
    #[error(
        "training interrupted after {iteration} iteration(s) (the next would have been iteration {}, counted from 1); \
         the state was saved to '{checkpoint}': run again with `resume: true` to continue",
        .iteration + 1
    )]
    Interrupted {
        /// Number of iterations completed (= the 0-based index of the next iteration).
        iteration: usize,
        /// The `last` checkpoint folder that was written.
        checkpoint: PathBuf,
    },
    /// Writing or reading a checkpoint failed.
    #[error("checkpoint '{path}': {reason}")]
    Checkpoint {
        /// The checkpoint folder or file concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A run cannot be resumed from its `last` checkpoint.
    #[error("cannot resume from '{path}': {reason}")]
    Resume {
        /// The checkpoint folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl TrainError {
    /// Shorthand for [`TrainError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TrainError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TrainError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
