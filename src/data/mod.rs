//! Datasets: nnDetection's raw layout (read, validate, write), splits, the preprocessing cache
//! and synthetic CT-like datasets.

pub mod error;
pub mod meta;
pub mod splits;

pub use error::{DataError, Problem};
pub use meta::DatasetMeta;
pub use splits::{DEFAULT_FOLDS, DEFAULT_SPLIT_SEED, Fold, Splits};
