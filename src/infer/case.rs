//! Case-level prediction: preprocessed cases, whole datasets and raw images, with boxes
//! restored to the original image grid and written as prediction files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::InferError;
use super::config::InferenceConfig;
use super::predict::{CaseProgress, collect_predictions};
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
    let mut progress = CaseProgress::new(cfg.progress, ids.len());
    for id in &ids {
        progress.start();
        let case = dataset.load_case_once(id)?;
        let prediction = predict_case(model, &case, patch_size, cfg, device)?;
        if let Some(dir) = out_dir {
            prediction.write(dir).map_err(|e| e.in_case(id))?;
        }
        progress.finished(id, prediction.boxes.len(), prediction.num_tiles);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{
        DatasetMeta, Normalization, PreprocessConfig, Subset, TargetSpacing, preprocess,
        save_dataset,
    };
    use crate::infer::testing::BrightBlobOracle;
    use crate::metrics::io::read_prediction_dir;
    use crate::metrics::{EvalConfig, ImageGt, evaluate};
    use crate::nn::InferenceBackend;
    use crate::nn::testing::test_device;
    use crate::volume::boxes::{BoxConvention, mask_to_boxes};
    use crate::volume::normalize::NormalizationScheme;
    use ndarray::{Array4, Axis, s};
    use std::collections::BTreeMap;

    type B = InferenceBackend;

    /// A raw case `[20, 40, 36]` at spacing [2, 1, 0.5] mm: a dim body (0.1) with bright cubes
    /// (1.0) at `cubes` (half-open voxel boxes), and its instance mask.
    fn raw_case(id: &str, cubes: &[[usize; 6]]) -> crate::data::Case {
        let spacing = [2.0, 1.0, 0.5];
        let mut image = Array4::<f32>::zeros((1, 20, 40, 36));
        image.slice_mut(s![.., 2..18, 4..36, 4..32]).fill(0.1);
        let mut mask = Array4::<f32>::zeros((1, 20, 40, 36));
        for (k, c) in cubes.iter().enumerate() {
            image
                .slice_mut(s![.., c[0]..c[3], c[1]..c[4], c[2]..c[5]])
                .fill(1.0);
            mask.slice_mut(s![.., c[0]..c[3], c[1]..c[4], c[2]..c[5]])
                .fill(k as f32 + 1.0);
        }
        crate::data::Case {
            id: id.to_string(),
            image: Volume::from_array(image, spacing),
            instances: Volume::from_array(mask, spacing),
            instance_classes: (1..=cubes.len() as u32)
                .map(|i| (i, 0))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Cubes that lie strictly inside some tile of the [16, 16, 8] grid of the preprocessed
    /// [32, 32, 14] volume (the oracle scores border-cut components low).
    const CUBES: [[usize; 6]; 2] = [[4, 11, 8, 8, 19, 16], [11, 22, 20, 15, 30, 28]];

    fn plan() -> PreprocessPlan {
        PreprocessPlan {
            target_spacing: [1.0, 1.0, 1.0],
            crop_nonzero: true,
            normalization: vec![NormalizationScheme::None],
            intensity_stats: vec![None],
            modalities: vec!["CT".into()],
            image_order: 1,
        }
    }

    fn sorted(mut boxes: Vec<Box3>) -> Vec<Box3> {
        boxes.sort_by(|a, b| a.partial_cmp(b).unwrap());
        boxes
    }

    fn assert_boxes_near(actual: &[Box3], expected: &[Box3]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in sorted(actual.to_vec())
            .iter()
            .zip(sorted(expected.to_vec()))
        {
            assert!(
                a.iter().zip(&e).all(|(x, y)| (x - y).abs() < 1e-6),
                "{a:?} vs {e:?}"
            );
        }
    }

    #[test]
    fn predictions_on_a_resampled_cropped_case_map_back_to_the_raw_grid() {
        let raw = raw_case("cubes_0", &CUBES);
        // The cubes' boxes in nnDetection's convention (the low side one voxel out).
        let raw_gt: Vec<Box3> = CUBES
            .iter()
            .map(|c| std::array::from_fn(|k| c[k] as f64 - if k < 3 { 1.0 } else { 0.0 }))
            .collect();
        let (image, mask, restore) = plan().apply(&raw.image, Some(&raw.instances)).unwrap();
        assert_eq!(restore.crop_start, [2, 4, 4]);
        assert_eq!(image.spatial_shape(), [32, 32, 14]);
        // Detections equal to the preprocessed GT restore to the raw GT.
        let mask = mask.unwrap();
        let pre_gt: Vec<Box3> = mask_to_boxes(
            &mask.data.index_axis(Axis(0), 0),
            BoxConvention::NnDetection,
        )
        .unwrap()
        .into_values()
        .collect();
        let gt_as_detections = PatchDetections {
            boxes: pre_gt.clone(),
            scores: vec![0.9, 0.8],
            classes: vec![0, 0],
        };
        let restored = CasePrediction::from_detections("cubes_0", &gt_as_detections, &restore, 1);
        assert_boxes_near(&restored.boxes, &raw_gt);
        assert_eq!(restored.shape, [20, 40, 36]);
        assert_eq!(restored.spacing, [2.0, 1.0, 0.5]);

        // End to end from the raw image: the oracle finds the cubes in the 1 mm grid, tiled.
        let device = test_device();
        let oracle = BrightBlobOracle::<B>::new(0.55, 2, &device);
        let cfg = InferenceConfig::default();
        let found = predict_raw_volume(
            &oracle,
            &raw.image,
            &plan(),
            "cubes_0",
            [16, 16, 8],
            &cfg,
            &device,
        )
        .unwrap();
        assert!(found.num_tiles > 1);
        let strong: Vec<usize> = (0..found.scores.len())
            .filter(|&i| found.scores[i] > 0.5)
            .collect();
        let pick = |v: &[Box3]| strong.iter().map(|&i| v[i]).collect::<Vec<_>>();
        assert_boxes_near(&pick(&found.boxes), &raw_gt);
        assert_boxes_near(&pick(&found.boxes_preprocessed), &pre_gt);
        let mm = crate::data::preprocess::voxel_boxes_to_world_mm(&raw_gt, &raw.image.affine);
        assert_boxes_near(&pick(&found.boxes_mm), &mm);

        // The same through a preprocessed case.
        let case = PreprocessedCase {
            id: "cubes_0".into(),
            subset: Subset::Train,
            image: image.data.clone(),
            instances: None,
            boxes: pre_gt.clone(),
            classes: vec![0, 0],
            instance_ids: vec![1, 2],
            spacing: [1.0, 1.0, 1.0],
            restore: restore.clone(),
        };
        let again = predict_case(&oracle, &case, [16, 16, 8], &cfg, &device).unwrap();
        assert_eq!(again, found);
    }

    /// Section 1 of issue 10: the training targets (the cache's boxes), restored as if they were
    /// predictions, score AP 1.0 against the evaluation's GT at every IoU up to 0.9; the old
    /// half-open targets did not.
    #[test]
    fn training_targets_restored_as_predictions_score_ap_one_up_to_iou_0_9() {
        let dir = tempfile::tempdir().unwrap();
        let cases = vec![
            raw_case("cubes_0", &CUBES),
            // Small objects (2–3 voxels per axis), where a one-voxel shift costs most IoU.
            raw_case("cubes_1", &[[5, 6, 6, 7, 9, 10], [12, 24, 16, 15, 26, 22]]),
        ];
        let meta = DatasetMeta::new("Task902_RoundTrip", &["cube"], &["CT"]);
        let dataset = save_dataset(&dir.path().join("raw"), &meta, &cases, &[]).unwrap();
        let config = PreprocessConfig {
            // D is upsampled ×2, W downsampled ×2 (even-aligned cubes), the crop shifts all axes.
            target_spacing: TargetSpacing::Fixed([1.0, 1.0, 1.0]),
            // The objects are uniform, so CT's foreground statistics would have std 0; boxes
            // do not depend on intensities.
            normalization: crate::data::preprocess::Normalization::ZScore,
            ..Default::default()
        };
        let prepared = preprocess(&dataset, &config, Some(&dir.path().join("cache"))).unwrap();
        let thresholds: Vec<f64> = (1..=9).map(|k| k as f64 / 10.0).collect();
        let eval = EvalConfig {
            iou_thresholds: thresholds.clone(),
            iou_range: [0.1, 0.9, 0.05],
            ..Default::default()
        };
        let score = |half_open_targets: bool| {
            let mut gt = Vec::new();
            let mut pred = Vec::new();
            for raw in &cases {
                let case = prepared.load_case(&raw.id).unwrap();
                assert_eq!(case.restore.box_convention, BoxConvention::NnDetection);
                let boxes = if half_open_targets {
                    case.boxes
                        .iter()
                        .map(|b| BoxConvention::NnDetection.to_half_open(b))
                        .collect()
                } else {
                    case.boxes.clone()
                };
                let detections = PatchDetections {
                    scores: vec![1.0; boxes.len()],
                    classes: case.classes.clone(),
                    boxes,
                };
                let restored =
                    CasePrediction::from_detections(&raw.id, &detections, &case.restore, 1);
                pred.push(restored.to_prediction_file().to_image_pred());
                let (boxes, classes) = raw.boxes(BoxConvention::NnDetection).unwrap();
                gt.push(ImageGt { boxes, classes });
            }
            evaluate(&gt, &pred, &eval).unwrap()
        };
        let report = score(false);
        for &t in &thresholds {
            assert_eq!(report.get(&eval.ap_key(t)), Some(1.0), "AP at IoU {t}");
        }
        assert_eq!(report.get(&eval.map_key()), Some(1.0));
        let old = score(true);
        assert!(
            old.get(&eval.ap_key(0.9)).unwrap() < 1.0,
            "half-open targets should miss at IoU 0.9"
        );
    }

    #[test]
    fn dataset_predictions_are_written_read_back_and_score_ap_one() {
        let dir = tempfile::tempdir().unwrap();
        let cases = vec![
            raw_case("cubes_0", &CUBES),
            raw_case(
                "cubes_1",
                &[
                    [5, 6, 6, 9, 12, 12],
                    [12, 24, 16, 16, 32, 24],
                    [5, 26, 24, 8, 32, 30],
                ],
            ),
        ];
        let meta = DatasetMeta::new("Task901_Cubes", &["cube"], &["CT"]);
        let dataset = save_dataset(&dir.path().join("raw"), &meta, &cases, &[]).unwrap();
        let config = PreprocessConfig {
            target_spacing: TargetSpacing::Fixed([1.0, 1.0, 1.0]),
            normalization: Normalization::None,
            ..Default::default()
        };
        let prepared = preprocess(&dataset, &config, Some(&dir.path().join("cache"))).unwrap();
        let device = test_device();
        let oracle = BrightBlobOracle::<B>::new(0.55, 2, &device);
        let cfg = InferenceConfig {
            tta: crate::infer::Tta::Axes(vec![vec![], vec![0, 2]]),
            ..Default::default()
        };
        let out = dir.path().join("predictions");
        let predictions = predict_dataset(
            &oracle,
            &prepared,
            &[],
            [16, 16, 8],
            Some(&out),
            &cfg,
            &device,
        )
        .unwrap();
        assert_eq!(predictions.len(), 2);
        let files = read_prediction_dir(&out).unwrap();
        assert_eq!(
            files.iter().map(|f| f.case.as_str()).collect::<Vec<_>>(),
            ["cubes_0", "cubes_1"]
        );
        for (file, p) in files.iter().zip(&predictions) {
            assert_eq!(file, &p.to_prediction_file());
        }
        let gt: Vec<ImageGt> = cases
            .iter()
            .map(|c| {
                let (boxes, classes) = c.boxes(BoxConvention::NnDetection).unwrap();
                ImageGt { boxes, classes }
            })
            .collect();
        let pred: Vec<ImagePred> = files.iter().map(|f| f.to_image_pred()).collect();
        let eval = EvalConfig::default();
        let report = evaluate(&gt, &pred, &eval).unwrap();
        assert_eq!(report.get(&eval.ap_key(0.1)), Some(1.0));
        assert_eq!(report.get(&eval.map_key()), Some(1.0));
        // One case only, by id.
        let one = predict_dataset(
            &oracle,
            &prepared,
            &["cubes_1".to_string()],
            [16, 16, 8],
            None,
            &cfg,
            &device,
        )
        .unwrap();
        assert_eq!(one, vec![predictions[1].clone()]);
        let e = predict_dataset(
            &oracle,
            &prepared,
            &["nope".to_string()],
            [16, 16, 8],
            None,
            &cfg,
            &device,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
