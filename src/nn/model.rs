//! The description of a whole detection model as saved with it: which detector with which
//! settings, the training patch size and the preprocessing it expects, and class names.
//!
//! This is what `model.json` of a saved model and `state.json → model_config` of a training
//! checkpoint hold, so a model folder is enough to predict new raw images.

use serde::{Deserialize, Serialize};

use super::NnError;
use super::def_detr::DefDetrConfig;
use super::retina_unet::RetinaUNetConfig;
use crate::data::PreprocessPlan;

/// Which detector, with its full configuration (`{"retina_unet": {...}}` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorConfig {
    /// Retina U-Net (nnDetection's `RetinaUNetV001`).
    RetinaUnet(RetinaUNetConfig),
    /// A 3D Deformable DETR.
    DefDetr(DefDetrConfig),
}

impl DetectorConfig {
    /// The detector's name as scripts write it, e.g. `"retina_unet"`.
    pub fn name(&self) -> &'static str {
        match self {
            DetectorConfig::RetinaUnet(_) => "retina_unet",
            DetectorConfig::DefDetr(_) => "def_detr",
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), NnError> {
        match self {
            DetectorConfig::RetinaUnet(c) => c.validate(),
            DetectorConfig::DefDetr(c) => c.validate(),
        }
    }
}

/// Everything needed to rebuild and use a trained model (besides its weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `"detlab-model"`, to recognise the file.
    pub format: String,
    /// The detector and its configuration.
    pub detector: DetectorConfig,
    /// Patch size `[D, H, W]` the model was trained on (the inference tile), if trained.
    #[serde(default)]
    pub patch_size: Option<[usize; 3]>,
    /// How images must be preprocessed for this model (from its training data), if trained.
    #[serde(default)]
    pub preprocessing: Option<PreprocessPlan>,
    /// Class names by index (from the training dataset), if known.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Post-processing chosen on validation cases (`sweep_postprocessing`), used by `predict`
    /// unless its options say otherwise; absent: nnDetection's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocessing: Option<PostProcessing>,
}

/// The post-processing settings nnDetection's sweep tunes (its `inference_plan`), named like
/// the fields of `infer::InferenceConfig` they set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcessing {
    /// Per TTA variant: class-wise NMS IoU threshold (`model_iou`).
    pub model_iou: f64,
    /// Per TTA variant: weighted NMS (`true`) or plain NMS (`model_nms_fn`).
    pub weighted_nms: bool,
    /// Across variants: WBC / NMS IoU threshold (`ensemble_iou`).
    pub ensemble_iou: f64,
    /// Per TTA variant: keep scores above this (`model_score_thresh`).
    pub score_threshold: f64,
    /// Per TTA variant: drop boxes with a side shorter than this, in voxels
    /// (`remove_small_boxes`).
    pub remove_small_boxes: f64,
}

/// The `format` value of a [`ModelSpec`].
pub const MODEL_FORMAT: &str = "detlab-model";

impl ModelSpec {
    /// A spec for an untrained detector.
    pub fn new(detector: DetectorConfig) -> Self {
        ModelSpec {
            format: MODEL_FORMAT.to_string(),
            detector,
            patch_size: None,
            preprocessing: None,
            class_names: Vec::new(),
            postprocessing: None,
        }
    }

    /// Parse a spec from JSON, naming `source` (a file) in errors.
    pub fn from_json(value: serde_json::Value, source: &str) -> Result<Self, NnError> {
        let spec: ModelSpec = serde_json::from_value(value)
            .map_err(|e| NnError::config(source, format!("not a detlab model description: {e}")))?;
        if spec.format != MODEL_FORMAT {
            return Err(NnError::config(
                source,
                format!("format is '{}', expected '{MODEL_FORMAT}'", spec.format),
            ));
        }
        spec.detector.validate()?;
        Ok(spec)
    }

    /// The spec as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a model spec serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json_and_rejects_other_files() {
        let mut spec = ModelSpec::new(DetectorConfig::RetinaUnet(RetinaUNetConfig::tiny(1, 2)));
        spec.patch_size = Some([32, 32, 32]);
        spec.class_names = vec!["a".into(), "b".into()];
        let back = ModelSpec::from_json(spec.to_json(), "model.json").unwrap();
        assert_eq!(back, spec);
        // A spec without post-processing writes no such key (old files stay byte-identical and
        // load), and one with it keeps it.
        assert!(spec.to_json().get("postprocessing").is_none());
        spec.postprocessing = Some(PostProcessing {
            model_iou: 0.2,
            weighted_nms: false,
            ensemble_iou: 1e-5,
            score_threshold: 0.3,
            remove_small_boxes: 2.0,
        });
        let back = ModelSpec::from_json(spec.to_json(), "model.json").unwrap();
        assert_eq!(back, spec);
        let mut other = spec.to_json();
        other["format"] = "something-else".into();
        let err = ModelSpec::from_json(other, "model.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.json"), "{err}");
        let err = ModelSpec::from_json(serde_json::json!({"format": MODEL_FORMAT}), "m.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("detector"), "{err}");
    }
}
