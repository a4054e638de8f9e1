//! The dataset fingerprint that planning needs (nnDetection's analysis step, §1.4.3): per
//! training case its spacing, its shape after cropping to the non-zero region, and the boxes
//! of its instances in that cropped grid with nnDetection's `(min − 1, max + 1)` convention.
//!
//! Intensity statistics are not part of it: `preprocess` gathers those itself.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::error::DataError;
use crate::volume::boxes::{Box3, BoxConvention, mask_to_boxes};

/// What planning reads from one training case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseFingerprint {
    /// The case id.
    pub id: String,
    /// Voxel spacing `[sd, sh, sw]` mm.
    pub spacing: [f64; 3],
    /// Spatial shape `[D, H, W]` after cropping to the non-zero region.
    pub shape: [usize; 3],
    /// Instance boxes in the cropped grid, nnDetection's `(min − 1, max + 1)` convention.
    pub boxes: Vec<Box3>,
}

/// The fingerprint of a dataset's training cases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetFingerprint {
    /// Image channels (modalities).
    pub in_channels: usize,
    /// Foreground classes.
    pub num_classes: usize,
    /// One entry per training case.
    pub cases: Vec<CaseFingerprint>,
}

impl DatasetFingerprint {
    /// The spacing of every case.
    pub fn spacings(&self) -> Vec<[f64; 3]> {
        self.cases.iter().map(|c| c.spacing).collect()
    }

    /// The cropped shape of every case.
    pub fn shapes(&self) -> Vec<[usize; 3]> {
        self.cases.iter().map(|c| c.shape).collect()
    }
}

/// Read every training case of `dataset` (in parallel) and record its fingerprint; with
/// `crop_nonzero` the shapes and boxes are those of the crop to the non-zero region (what
/// `preprocess` does by default), else of the whole image.
pub fn fingerprint(dataset: &Dataset, crop_nonzero: bool) -> Result<DatasetFingerprint, DataError> {
    let operation = format!("fingerprinting {}", dataset.root.display());
    let cases = dataset
        .train
        .par_iter()
        .map(|files| {
            if crate::util::interrupt::is_requested() {
                return Err(DataError::Interrupted {
                    operation: operation.clone(),
                });
            }
            let case = dataset.load_case(&files.id)?;
            let (image, _) = case.image.replace_non_finite(0.0);
            let (start, shape) = if crop_nonzero {
                let (_, crop) = image.crop_to_nonzero();
                (crop.start, crop.shape)
            } else {
                ([0; 3], image.spatial_shape())
            };
            let mask = case
                .instances
                .crop_or_pad(start.map(|v| v as i64), shape, 0.0);
            let boxes = mask_to_boxes(
                &mask.data.index_axis(ndarray::Axis(0), 0),
                BoxConvention::NnDetection,
            )
            .map_err(|e| DataError::volume(format!("case {}", files.id), e))?
            .into_values()
            .collect();
            Ok(CaseFingerprint {
                id: files.id.clone(),
                spacing: image.spacing,
                shape,
                boxes,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cases.is_empty() {
        return Err(DataError::config(
            "plan",
            format!(
                "{} has no training cases to plan from",
                dataset.root.display()
            ),
        ));
    }
    Ok(DatasetFingerprint {
        in_channels: dataset.meta.num_modalities(),
        num_classes: dataset.meta.num_classes(),
        cases,
    })
}
