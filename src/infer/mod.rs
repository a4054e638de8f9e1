//! Whole-case inference as nnDetection does it (§2.10 of the reference notes), for any
//! [`Detector`](crate::nn::Detector): sliding windows, mirror TTA, tile position weights,
//! per-variant (weighted) NMS, weighted box clustering across variants, and restoring boxes
//! to the original image grid.
//!
//! # Pipeline
//! 1. **Tiles** ([`tiling`]): the training patch (rounded up to the detector's
//!    `patch_divisor`), 50 % overlap, nnDetection's symmetric grid with border tiles shifted
//!    inside; a volume smaller than the patch gets one centred tile padded with `pad_value`.
//! 2. **Per tile and TTA flip**: the detector's `predict` (top-k, score threshold, NMS, 100
//!    boxes per patch); boxes are flipped back, weighted by their position in the tile
//!    (1 in the centre, 0.5 in a corner) and shifted into the volume.
//! 3. **Per variant** ([`merge::postprocess_variant`]): top 1000, score threshold, clip to the
//!    volume, drop boxes thinner than 0.01, class-wise weighted NMS at IoU 0.1, 100 boxes.
//! 4. **Across variants** ([`merge::merge_variants`]): top 1000, then weighted box clustering
//!    at IoU 0.5 expecting one box per variant (or plain NMS), and the 100 best per case.
//! 5. **Restore**: preprocessed voxels → original voxels (undo resampling and crop) and world
//!    mm, written as one [`PredictionFile`](crate::metrics::io::PredictionFile) per case.
//!
//! Only boxes are kept between tiles, so memory is bounded by a batch of tiles plus the
//! input volume.
//!
//! [`collect_predictions`] stops after step 2 and returns a [`RawPrediction`]; merging it
//! again with other settings ([`RawPrediction::merge`]) needs no network, which is what
//! nnDetection's post-processing sweep (§2.11, [`sweep`]) does. [`RawPrediction::merge_ensemble`] merges
//! several models (folds), every (model, flip) pair counting as one prediction.
//!
//! # Deviations from nnDetection
//! - Tiles that coincide after the border shift are predicted once (nnDetection predicts the
//!   duplicates; NMS then removes their boxes, but they also take places in the top 1000).
//! - A volume smaller than the tile is padded with the constant `pad_value` (nnDetection pads
//!   such tiles by mirroring, which can mirror objects into the padding).

mod case;
mod config;
mod error;
pub mod merge;
mod predict;
pub mod sweep;
pub mod tiling;

#[cfg(test)]
mod testing;

pub use case::{CasePrediction, predict_case, predict_dataset, predict_raw_volume};
pub use config::{InferenceConfig, Merge, Tta};
pub use error::InferError;
pub use merge::{WeightedDetections, merge_variants, postprocess_variant, weighted_box_clustering};
pub use predict::{RawPrediction, collect_predictions, effective_patch_size, predict_volume};
pub use sweep::{
    SweepCase, SweepConfig, SweepResult, SweepTrial, collect_sweep_cases, sweep_postprocessing,
    with_postprocessing,
};
