//! Case-level prediction: preprocessed cases, whole datasets and raw images, with boxes
//! restored to the original image grid and written as prediction files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::InferError;
use super::config::InferenceConfig;
use super::predict::collect_predictions;
use crate::data::{PreprocessPlan, PreprocessedCase, PreprocessedDataset, RestoreInfo};
use crate::metrics::ImagePred;
use crate::metrics::io::PredictionFile;
use crate::nn::{Detector, PatchDetections};
use crate::volume::Volume;
use crate::volume::boxes::Box3;

/// The predictions of one case, in the original image grid and in the preprocessed grid.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CasePrediction {
    /// The case id.
    pub case: String,
    /// Boxes `[d0, h0, w0, d1, h1, w1]` in voxels of the original image.
    pub boxes: Vec<Box3>,
    /// The same boxes in world (RAS) mm `[x0, y0, z0, x1, y1, z1]`.
    pub boxes_mm: Vec<Box3>,
    /// Confidence of every box, descending.
    pub scores: Vec<f64>,
    /// Class (0-based) of every box.
    pub classes: Vec<usize>,
    /// The boxes in voxels of the preprocessed (resampled, cropped) grid.
    pub boxes_preprocessed: Vec<Box3>,
    /// Spacing `[sd, sh, sw]` of the original image in mm.
    pub spacing: [f64; 3],
    /// Shape `[D, H, W]` of the original image.
    pub shape: [usize; 3],
    /// Number of tiles the volume was cut into.
    pub num_tiles: usize,
}

impl CasePrediction {
    /// Restore detections made in the preprocessed grid of a case to its original image.
    pub fn from_detections(
        case: &str,
        detections: &PatchDetections,
        restore: &RestoreInfo,
        num_tiles: usize,
    ) -> Self {
        CasePrediction {
            case: case.to_string(),
            boxes: restore.boxes_to_original(&detections.boxes),
            boxes_mm: restore.boxes_to_world_mm(&detections.boxes),
            scores: detections.scores.clone(),
            classes: detections.classes.clone(),
            boxes_preprocessed: detections.boxes.clone(),
            spacing: restore.original_spacing,
            shape: restore.original_shape,
            num_tiles,
        }
    }

    /// The prediction file of this case (what `detlab eval --predictions DIR` reads).
    pub fn to_prediction_file(&self) -> PredictionFile {
        PredictionFile {
            case: self.case.clone(),
            boxes: self.boxes.clone(),
            boxes_mm: Some(self.boxes_mm.clone()),
            scores: self.scores.clone(),
            classes: self.classes.clone(),
            spacing: self.spacing,
            shape: self.shape,
        }
    }

    /// The predictions in the original grid, for `metrics::evaluate`.
    pub fn image_pred(&self) -> ImagePred {
        ImagePred {
            boxes: self.boxes.clone(),
            scores: self.scores.clone(),
            classes: self.classes.clone(),
        }
    }

    /// Write `<dir>/<case>.json` atomically (the folder is created); returns the path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, InferError> {
        std::fs::create_dir_all(dir).map_err(|source| InferError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!("{}.json", self.case));
        self.to_prediction_file()
            .write(&path)
            .map_err(|source| InferError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }
}

/// Predict one preprocessed case with sliding windows (`patch_size` = the training patch
/// unless `cfg.patch_size` is set) and restore the boxes to its original image.
pub fn predict_case<B: Backend, M: Detector<B>>(
    model: &M,
    case: &PreprocessedCase,
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<CasePrediction, InferError> {
    let raw = collect_predictions(model, case.image.view(), patch_size, cfg, device)
        .map_err(|e| e.in_case(&case.id))?;
    let detections = raw.merge(cfg)?;
    Ok(CasePrediction::from_detections(
        &case.id,
        &detections,
        &case.restore,
        raw.num_tiles,
    ))
}

/// Predict the cases `ids` of a preprocessed dataset (all cases when `ids` is empty), one after
/// the other; with `out_dir`, each case's prediction file is written as soon as it is done.
pub fn predict_dataset<B: Backend, M: Detector<B>>(
    model: &M,
    dataset: &PreprocessedDataset,
    ids: &[String],
    patch_size: [usize; 3],
    out_dir: Option<&Path>,
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<Vec<CasePrediction>, InferError> {
    cfg.validate()?;
    let ids: Vec<String> = if ids.is_empty() {
        dataset.case_ids()
    } else {
        ids.to_vec()
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        let case = dataset.load_case(id)?;
        let prediction = predict_case(model, &case, patch_size, cfg, device)?;
        if let Some(dir) = out_dir {
            prediction.write(dir).map_err(|e| e.in_case(id))?;
        }
        out.push(prediction);
    }
    Ok(out)
}

/// Preprocess a raw image with a dataset's plan, predict it, and restore the boxes to the raw
/// image's grid; `case` names the result (and its file).
pub fn predict_raw_volume<B: Backend, M: Detector<B>>(
    model: &M,
    image: &Volume,
    plan: &PreprocessPlan,
    case: &str,
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<CasePrediction, InferError> {
    let (preprocessed, _, restore) = plan
        .apply(image, None)
        .map_err(|e| InferError::from(e).in_case(case))?;
    let raw = collect_predictions(model, preprocessed.data.view(), patch_size, cfg, device)
        .map_err(|e| e.in_case(case))?;
    let detections = raw.merge(cfg)?;
    Ok(CasePrediction::from_detections(
        case,
        &detections,
        &restore,
        raw.num_tiles,
    ))
}
