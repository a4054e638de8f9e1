//! The error type of the `data` module and the problem list that dataset validation returns.

use std::fmt;
use std::path::PathBuf;

use crate::volume::VolumeError;

/// One validation finding about a dataset file (an error, or a warning kept on the dataset).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The file (or folder) the problem is about.
    pub path: PathBuf,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A problem about `path`.
    pub fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Format a list of problems one per line, for error messages.
fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

/// Everything that can go wrong in the `data` module; every variant names the file, field or case.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read, written, listed or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON or YAML file could not be parsed or has wrong fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file concerned.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The dataset failed validation; every problem found is listed with its file.
    #[error("dataset {root} has {} problem(s):{}", problems.len(), list(problems))]
    Invalid {
        /// The dataset root folder.
        root: PathBuf,
        /// All problems found (never empty).
        problems: Vec<Problem>,
    },
    /// A case id that the dataset does not hold.
    #[error("dataset {root} has no case {id:?}")]
    UnknownCase {
        /// The dataset root folder.
        root: PathBuf,
        /// The id that was asked for.
        id: String,
    },
    /// The case has no labels (an unlabelled test case), but labels were needed.
    #[error(
        "case {id:?} of dataset {root} has no labels (unlabelled test case); use load_image for its image"
    )]
    Unlabelled {
        /// The dataset root folder.
        root: PathBuf,
        /// The case id.
        id: String,
    },
    /// A split (fold list) is invalid or does not fit the dataset.
    #[error("splits {path}: {message}")]
    Split {
        /// The splits file (or `<generated>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A volume operation (NIfTI I/O, resampling, normalisation) failed for a file or case.
    #[error("{context}: {source}")]
    Volume {
        /// The file or case concerned.
        context: String,
        /// The underlying volume error.
        source: VolumeError,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid {field}: {message}")]
    Config {
        /// The configuration field concerned.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The preprocessed cache is unusable (corrupt file, wrong format, missing case).
    #[error("preprocessed cache {path}: {message}")]
    Cache {
        /// The cache file or folder concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The user asked to stop (Ctrl-C); a long operation stopped between cases.
    #[error("{operation} interrupted by Ctrl-C; nothing claims to be complete")]
    Interrupted {
        /// What was interrupted (e.g. "preprocessing dataset /data/Task100").
        operation: String,
    },
    /// The synthetic generator could not build a case (e.g. lesions do not fit the lungs).
    #[error("synthetic case {case}: {message}")]
    Synthetic {
        /// The case id being generated.
        case: String,
        /// What went wrong.
        message: String,
    },
}

impl DataError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A parse error about `path`.
    pub fn parse(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        DataError::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A volume error with the file or case it concerns.
    pub fn volume(context: impl fmt::Display, source: VolumeError) -> Self {
        DataError::Volume {
            context: context.to_string(),
            source,
        }
    }

    /// A configuration error about `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A cache error about `path`.
    pub fn cache(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Cache {
            path: path.into(),
            message: message.into(),
        }
    }
}
