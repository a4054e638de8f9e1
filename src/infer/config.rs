//! Settings of whole-volume inference; the defaults are nnDetection's (`BoxEnsemblerSelective`).

use serde::{Deserialize, Serialize};

use super::InferError;

/// How the predictions of the TTA variants are merged into one list per case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// nnDetection's weighted box clustering (scores damped when variants miss an object).
    #[default]
    Wbc,
    /// Plain class-wise NMS at `ensemble_iou` on the raw scores.
    Nms,
}

/// Test-time augmentation by mirroring: `true` (all 8 flips), `false` (none), or a list of
/// axis sets such as `[[], [0], [1, 2]]` (axes 0, 1, 2 = D, H, W; `[]` = no flip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a boolean or a list of axis lists such as [[], [0], [1, 2]] (axes 0 = D, 1 = H, 2 = W)"
)]
pub enum Tta {
    /// `true`: the 8 flips of nnDetection; `false`: the identity only.
    All(bool),
    /// The given flips; each entry lists the axes mirrored together.
    Axes(Vec<Vec<usize>>),
}

impl Default for Tta {
    fn default() -> Self {
        Tta::All(true)
    }
}

impl Tta {
    /// The flip variants as per-axis flags `[d, h, w]`, in nnDetection's order for `true`:
    /// identity, {0}, {1}, {0, 1}, {2}, {0, 2}, {1, 2}, {0, 1, 2}.
    pub fn variants(&self) -> Result<Vec<[bool; 3]>, InferError> {
        match self {
            Tta::All(false) => Ok(vec![[false; 3]]),
            Tta::All(true) => Ok((0..8u8)
                .map(|k| [0, 1, 2].map(|a| k >> a & 1 == 1))
                .collect()),
            Tta::Axes(sets) => {
                if sets.is_empty() {
                    return Err(InferError::config(
                        "tta",
                        "the list of flips is empty; use [[]] (or false) for no augmentation",
                    ));
                }
                let mut out: Vec<[bool; 3]> = Vec::with_capacity(sets.len());
                for (i, axes) in sets.iter().enumerate() {
                    let mut flags = [false; 3];
                    for &a in axes {
                        if a > 2 {
                            return Err(InferError::config(
                                format!("tta[{i}]"),
                                format!("axis {a} does not exist (axes are 0 = D, 1 = H, 2 = W)"),
                            ));
                        }
                        if flags[a] {
                            return Err(InferError::config(
                                format!("tta[{i}]"),
                                format!("axis {a} is listed twice"),
                            ));
                        }
                        flags[a] = true;
                    }
                    if out.contains(&flags) {
                        return Err(InferError::config(
                            format!("tta[{i}]"),
                            format!("the flip {axes:?} is listed twice"),
                        ));
                    }
                    out.push(flags);
                }
                Ok(out)
            }
        }
    }
}

/// Settings of sliding-window inference and of merging tiles and TTA variants.
///
/// The defaults reproduce nnDetection (§2.10 of the reference notes): 50 % overlap, 8 flips,
/// weighted NMS at IoU 0.1 per variant, weighted box clustering at IoU 0.5 across variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Tile size `[D, H, W]`; `None` = the patch size given by the caller (the training patch).
    /// Each axis is rounded up to a multiple of the detector's `patch_divisor`.
    pub patch_size: Option<[usize; 3]>,
    /// Fraction of the tile shared by neighbouring tiles per axis, in [0, 1) (nnDetection 0.5).
    pub overlap: f64,
    /// Tiles per forward pass (nnDetection uses 4 on a GPU; 2 keeps CPU memory low).
    pub tile_batch: usize,
    /// Intensity of the padding when the volume is smaller than a tile (0 = the mean of
    /// z-score-normalised data).
    pub pad_value: f32,
    /// Mirror test-time augmentation.
    pub tta: Tta,
    /// How the TTA variants are merged.
    pub merge: Merge,
    /// Per variant: rank NMS candidates by score × tile position weight (nnDetection's
    /// `batched_weighted_nms`); `false` uses plain NMS on the scores.
    pub weighted_nms: bool,
    /// Per variant: class-wise NMS IoU threshold (suppress when IoU > threshold).
    pub model_iou: f64,
    /// Per variant: candidates kept (highest scores) before thresholding and NMS.
    pub model_topk: usize,
    /// Per variant: detections kept after NMS.
    pub model_detections: usize,
    /// Per variant: keep scores strictly above this.
    pub score_threshold: f64,
    /// Per variant: drop boxes with any side shorter than this (voxels), after clipping.
    pub remove_small_boxes: f64,
    /// Across variants: IoU threshold of WBC clusters or of the NMS (members have IoU > it).
    pub ensemble_iou: f64,
    /// Across variants: candidates kept (highest scores) before merging.
    pub ensemble_topk: usize,
    /// Across variants: keep merged scores strictly above this.
    pub ensemble_score_threshold: f64,
    /// Detections kept per case (highest scores).
    pub max_detections: usize,
    /// Report progress on stderr: a line per finished case (`case 3/12 <id>: N boxes, T tiles,
    /// s`) and, when stderr is a terminal, a bar over each case's tiles.
    pub progress: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            patch_size: None,
            overlap: 0.5,
            tile_batch: 2,
            pad_value: 0.0,
            tta: Tta::All(true),
            merge: Merge::Wbc,
            weighted_nms: true,
            model_iou: 0.1,
            model_topk: 1000,
            model_detections: 100,
            score_threshold: 0.0,
            remove_small_boxes: 0.01,
            ensemble_iou: 0.5,
            ensemble_topk: 1000,
            ensemble_score_threshold: 0.0,
            max_detections: 100,
            progress: true,
        }
    }
}

impl InferenceConfig {
    /// Check every field; errors name the field.
    pub fn validate(&self) -> Result<(), InferError> {
        if let Some(p) = self.patch_size
            && p.contains(&0)
        {
            return Err(InferError::config(
                "patch_size",
                format!("{p:?} has a zero side"),
            ));
        }
        if !(self.overlap.is_finite() && (0.0..1.0).contains(&self.overlap)) {
            return Err(InferError::config(
                "overlap",
                format!("{} must be in [0, 1)", self.overlap),
            ));
        }
        if self.tile_batch == 0 {
            return Err(InferError::config("tile_batch", "must be at least 1"));
        }
        if !self.pad_value.is_finite() {
            return Err(InferError::config("pad_value", "must be finite"));
        }
        self.tta.variants()?;
        for (name, v) in [
            ("model_iou", self.model_iou),
            ("ensemble_iou", self.ensemble_iou),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(InferError::config(name, format!("{v} must be in [0, 1]")));
            }
        }
        for (name, v) in [
            ("score_threshold", self.score_threshold),
            ("ensemble_score_threshold", self.ensemble_score_threshold),
            ("remove_small_boxes", self.remove_small_boxes),
        ] {
            if !v.is_finite() {
                return Err(InferError::config(name, format!("{v} must be finite")));
            }
        }
        for (name, v) in [
            ("model_topk", self.model_topk),
            ("model_detections", self.model_detections),
            ("ensemble_topk", self.ensemble_topk),
            ("max_detections", self.max_detections),
        ] {
            if v == 0 {
                return Err(InferError::config(name, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The TTA flip variants (see [`Tta::variants`]).
    pub fn variants(&self) -> Result<Vec<[bool; 3]>, InferError> {
        self.tta.variants()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tta_variants_follow_nndetection_order() {
        let all = Tta::All(true).variants().unwrap();
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], [false, false, false]);
        assert_eq!(all[1], [true, false, false]);
        assert_eq!(all[3], [true, true, false]);
        assert_eq!(all[4], [false, false, true]);
        assert_eq!(all[7], [true, true, true]);
        assert_eq!(Tta::All(false).variants().unwrap(), vec![[false; 3]]);
        let some = Tta::Axes(vec![vec![], vec![2, 0]]).variants().unwrap();
        assert_eq!(some, vec![[false; 3], [true, false, true]]);
        for (bad, field) in [
            (Tta::Axes(vec![]), "tta"),
            (Tta::Axes(vec![vec![3]]), "tta[0]"),
            (Tta::Axes(vec![vec![], vec![1, 1]]), "tta[1]"),
            (Tta::Axes(vec![vec![0], vec![0]]), "tta[1]"),
        ] {
            let e = bad.variants().unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{e}");
        }
    }

    #[test]
    fn config_parses_from_json_and_rejects_bad_fields() {
        let cfg: InferenceConfig =
            serde_json::from_str(r#"{"tta": [[], [1]], "merge": "nms", "overlap": 0.25}"#).unwrap();
        assert_eq!(cfg.tta, Tta::Axes(vec![vec![], vec![1]]));
        assert_eq!(cfg.merge, Merge::Nms);
        assert_eq!(cfg.model_iou, 0.1);
        assert_eq!(cfg.max_detections, 100);
        let cfg: InferenceConfig = serde_json::from_str(r#"{"tta": false}"#).unwrap();
        assert_eq!(cfg.tta, Tta::All(false));
        let e = serde_json::from_str::<InferenceConfig>(r#"{"overlapp": 0.5}"#).unwrap_err();
        assert!(e.to_string().contains("overlapp"), "{e}");
        let e = serde_json::from_str::<InferenceConfig>(r#"{"tta": "yes"}"#).unwrap_err();
        assert!(e.to_string().contains("list of axis lists"), "{e}");
        let round = serde_json::to_string(&InferenceConfig::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<InferenceConfig>(&round).unwrap(),
            InferenceConfig::default()
        );
        for (json, field) in [
            (r#"{"overlap": 1.0}"#, "overlap"),
            (r#"{"tile_batch": 0}"#, "tile_batch"),
            (r#"{"patch_size": [16, 0, 16]}"#, "patch_size"),
            (r#"{"model_iou": 1.5}"#, "model_iou"),
            (r#"{"max_detections": 0}"#, "max_detections"),
        ] {
            let cfg: InferenceConfig = serde_json::from_str(json).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{json}: {e}");
        }
    }
}
