//! Datasets: nnDetection's raw layout (read, validate, write), splits, the preprocessing cache
//! and synthetic CT-like datasets.

pub mod error;
pub mod meta;
pub mod splits;

pub use error::{DataError, Problem};
pub use meta::DatasetMeta;
pub use splits::{DEFAULT_FOLDS, DEFAULT_SPLIT_SEED, Fold, Splits};
pub mod dataset;
pub mod fingerprint;
pub mod preprocess;
pub mod synthetic;
pub mod world;

pub use dataset::{
    Case, CaseFiles, CaseGroundTruth, Dataset, OpenOptions, SaveOptions, Subset, save_dataset,
    save_dataset_with,
};
pub use fingerprint::{CaseFingerprint, DatasetFingerprint, fingerprint};
pub use preprocess::{
    Normalization, PreprocessConfig, PreprocessPlan, PreprocessedCase, PreprocessedDataset,
    RestoreInfo, TargetSpacing, preprocess,
};
pub use synthetic::{SyntheticCase, SyntheticConfig, synthetic_case, synthetic_dataset};
