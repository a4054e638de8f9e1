//! The error type of the metrics module.

use thiserror::Error;

/// Everything that can go wrong while evaluating detections; each variant names what is wrong.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// A case's ground truth or predictions are malformed (wrong lengths, bad box, NaN score…).
    #[error("case '{case}', field '{field}': {message}")]
    Input {
        /// The case id (or `#index` when the caller gave no ids).
        case: String,
        /// The offending field, e.g. `pred.scores[3]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration value is out of range.
    #[error("configuration field '{field}': {message}")]
    Config {
        /// The configuration field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file could not be read, parsed or written.
    #[error("{path}: {message}")]
    File {
        /// The file concerned.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A metric name that the evaluator does not produce.
    #[error("unknown metric '{name}'; available metrics: {available}")]
    UnknownMetric {
        /// The requested name.
        name: String,
        /// The names that exist, comma-separated.
        available: String,
    },
}

impl MetricsError {
    /// Shorthand for an [`MetricsError::Input`] error.
    pub fn input(
        case: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        MetricsError::Input {
            case: case.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a [`MetricsError::Config`] error.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        MetricsError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a [`MetricsError::File`] error.
    pub fn file(path: impl AsRef<std::path::Path>, message: impl std::fmt::Display) -> Self {
        MetricsError::File {
            path: path.as_ref().display().to_string(),
            message: message.to_string(),
        }
    }
}
