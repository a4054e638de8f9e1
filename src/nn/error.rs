//! The error type of the neural-network module.

use std::path::PathBuf;

/// Everything that can go wrong when building, running, saving or loading a network.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A device name that is not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device '{0}': expected \"cpu\", \"cuda\" or \"cuda:N\" (N = GPU index)")]
    UnknownDevice(String),
    /// A CUDA device was asked for but this binary has no CUDA backend.
    #[error(
        "detlab was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`"
    )]
    CudaNotBuilt,
    /// The CUDA backend is built but the driver or the GPU is not usable.
    #[error("CUDA device '{device}' is not usable: {reason}")]
    CudaUnavailable {
        /// The device name that was asked for.
        device: String,
        /// Why the probe failed.
        reason: String,
    },
    /// A configuration value that cannot build a network.
    #[error("invalid network configuration: `{field}`: {reason}")]
    InvalidConfig {
        /// The configuration field concerned (dotted path).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An input tensor or target that does not fit the network.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Writing or reading a weights file failed.
    #[error("weights file '{path}': {reason}")]
    Checkpoint {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl NnError {
    /// Shorthand for [`NnError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        NnError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
