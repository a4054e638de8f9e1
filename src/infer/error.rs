//! The error type of the inference module.

use std::path::PathBuf;

use crate::data::DataError;
use crate::metrics::MetricsError;
use crate::nn::NnError;
use crate::util::interrupt::Interrupted;

/// Everything that can go wrong while predicting volumes, cases and datasets.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A configuration value that cannot be used.
    #[error("invalid inference configuration: `{field}`: {reason}")]
    InvalidConfig {
        /// The configuration field concerned.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image or detection list that does not fit the detector or the call.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The detector failed on a batch of tiles.
    #[error("the detector failed on tiles {first_tile}..{end_tile}: {source}")]
    Model {
        /// Index of the first tile of the failing batch.
        first_tile: usize,
        /// One past the last tile of the failing batch.
        end_tile: usize,
        /// The detector's error.
        source: NnError,
    },
    /// Loading or preprocessing a case failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Writing a prediction file failed.
    #[error("cannot write predictions to {path}: {source}")]
    Write {
        /// The file or folder concerned.
        path: PathBuf,
        /// What went wrong.
        source: MetricsError,
    },
    /// Creating the output folder failed.
    #[error("cannot create the output folder {path}: {source}")]
    Io {
        /// The folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A failure while predicting one case (wraps the cause with the case id).
    #[error("case {case:?}: {source}")]
    Case {
        /// The case id.
        case: String,
        /// The underlying error.
        source: Box<InferError>,
    },
    /// Ctrl-C was pressed; the prediction stopped between two tile batches.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl InferError {
    /// Shorthand for [`InferError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InferError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Attach a case id to this error (kept once: an error that names its case is unchanged).
    pub fn in_case(self, case: &str) -> Self {
        match self {
            e @ (InferError::Case { .. } | InferError::Interrupted(_)) => e,
            other => InferError::Case {
                case: case.to_string(),
                source: Box::new(other),
            },
        }
    }
}
