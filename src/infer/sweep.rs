//! nnDetection's post-processing sweep (§2.11 of the reference notes; `BoxSweeper` with
//! `BoxEnsemblerSelective.sweep_parameters`).
//!
//! The validation cases are predicted once ([`collect_sweep_cases`]): per case the raw tile
//! detections of every TTA variant, cut to the `model_topk` best per variant as nnDetection
//! stores them. Then a greedy coordinate search sets one parameter after the other to the
//! value that maximises the metric (nnDetection: `mAP_IoU_0.10_0.50_0.05_MaxDet_100`) over all
//! cases, earlier winners fixed, each trial re-merging the stored predictions (no forward
//! pass):
//! 1. `model_iou` ∈ {1e-5, 0.1, 0.2, 0.3, 0.4, 0.5};
//! 2. the per-variant NMS: weighted, then plain (`weighted_nms` true, false);
//! 3. `ensemble_iou` ∈ {1e-5, 0.1, 0.2, 0.3, 0.4, 0.5};
//! 4. `score_threshold` (nnDetection's `model_score_thresh`) ∈ {0, 0.1, …, 0.6};
//! 5. `remove_small_boxes` ∈ {0.01, 2, 3, 4, 5, 6, 7} voxels.
//!
//! Ties go to the first value (numpy's `argmax`). Scoring happens in the preprocessed grid
//! against the preprocessed ground-truth boxes, like nnDetection's sweep. A NaN score (no
//! ground truth at all) never wins over a number; numpy's `argmax` would pick it.

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::InferError;
use super::config::InferenceConfig;
use super::predict::{CaseProgress, RawPrediction, collect_predictions};
use crate::data::PreprocessedDataset;
use crate::metrics::{self, EvalConfig, ImageGt, ImagePred};
use crate::nn::{Detector, PostProcessing};

/// The metric nnDetection's sweep maximises.
pub const SWEEP_METRIC: &str = "mAP_IoU_0.10_0.50_0.05_MaxDet_100";

/// The values the sweep tries, step by step, and the metric it maximises. The defaults are
/// nnDetection's; a list of one value keeps that parameter fixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    /// The metric maximised (nnDetection: `mAP_IoU_0.10_0.50_0.05_MaxDet_100`).
    pub metric: String,
    /// Step 1: per-variant NMS IoU thresholds tried (nnDetection: 1e-5, 0.1, …, 0.5).
    pub model_iou: Vec<f64>,
    /// Step 2: per-variant NMS kinds tried, weighted (true) or plain (false) (nnDetection: both).
    pub weighted_nms: Vec<bool>,
    /// Step 3: WBC / ensemble NMS IoU thresholds tried (nnDetection: 1e-5, 0.1, …, 0.5).
    pub ensemble_iou: Vec<f64>,
    /// Step 4: per-variant score thresholds tried (nnDetection: 0, 0.1, …, 0.6).
    pub score_threshold: Vec<f64>,
    /// Step 5: minimum box sides tried, in voxels (nnDetection: 0.01, 2, 3, …, 7).
    pub remove_small_boxes: Vec<f64>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        let iou = vec![1e-5, 0.1, 0.2, 0.3, 0.4, 0.5];
        SweepConfig {
            metric: SWEEP_METRIC.to_string(),
            model_iou: iou.clone(),
            weighted_nms: vec![true, false],
            ensemble_iou: iou,
            score_threshold: vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            remove_small_boxes: vec![0.01, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        }
    }
}

impl SweepConfig {
    /// The steps in nnDetection's order: parameter name and the values tried.
    pub fn steps(&self) -> Vec<(&'static str, Vec<TrialValue>)> {
        let numbers =
            |v: &[f64]| -> Vec<TrialValue> { v.iter().map(|&x| TrialValue::Number(x)).collect() };
        vec![
            ("model_iou", numbers(&self.model_iou)),
            (
                "weighted_nms",
                self.weighted_nms
                    .iter()
                    .map(|&b| TrialValue::Flag(b))
                    .collect(),
            ),
            ("ensemble_iou", numbers(&self.ensemble_iou)),
            ("score_threshold", numbers(&self.score_threshold)),
            ("remove_small_boxes", numbers(&self.remove_small_boxes)),
        ]
    }

    /// Check every list (not empty, values usable); errors name the field.
    pub fn validate(&self) -> Result<(), InferError> {
        if self.metric.trim().is_empty() {
            return Err(InferError::config("metric", "must name a metric"));
        }
        for (name, values) in self.steps() {
            if values.is_empty() {
                return Err(InferError::config(
                    name,
                    "lists no value; give one value to keep the parameter fixed",
                ));
            }
        }
        for (name, values, iou) in [
            ("model_iou", &self.model_iou, true),
            ("ensemble_iou", &self.ensemble_iou, true),
            ("score_threshold", &self.score_threshold, false),
            ("remove_small_boxes", &self.remove_small_boxes, false),
        ] {
            let usable = |v: f64| v.is_finite() && (!iou || (0.0..=1.0).contains(&v));
            if let Some(v) = values.iter().find(|v| !usable(**v)) {
                let must = if iou {
                    "finite and in [0, 1]"
                } else {
                    "finite"
                };
                return Err(InferError::config(name, format!("{v} must be {must}")));
            }
        }
        Ok(())
    }
}

/// A value tried by the sweep: a number, or the NMS kind as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrialValue {
    /// `weighted_nms`.
    Flag(bool),
    /// Every other parameter.
    Number(f64),
}

/// One evaluated setting of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepTrial {
    /// Step of the search, from 1 (`model_iou`) to 5 (`remove_small_boxes`).
    pub step: usize,
    /// The parameter this step sets.
    pub parameter: String,
    /// The value tried.
    pub value: TrialValue,
    /// The metric over all cases with these settings (NaN without any ground truth).
    pub score: f64,
    /// Whether this value won its step.
    pub chosen: bool,
    /// The whole setting evaluated (earlier winners, this value, later parameters at start).
    #[serde(flatten)]
    pub settings: PostProcessing,
}

/// The outcome of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    /// The metric maximised.
    pub metric: String,
    /// The chosen settings.
    pub chosen: PostProcessing,
    /// The metric with the chosen settings.
    pub score: f64,
    /// Every trial in order.
    pub trials: Vec<SweepTrial>,
}

/// A validation case of a sweep: its stored raw prediction and its ground truth, both in the
/// preprocessed grid.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepCase {
    /// The case id.
    pub id: String,
    /// The tile detections of every TTA variant.
    pub raw: RawPrediction,
    /// Ground-truth boxes and classes.
    pub gt: ImageGt,
}

/// The settings a sweep tunes, read from an inference configuration.
pub fn postprocessing_of(cfg: &InferenceConfig) -> PostProcessing {
    PostProcessing {
        model_iou: cfg.model_iou,
        weighted_nms: cfg.weighted_nms,
        ensemble_iou: cfg.ensemble_iou,
        score_threshold: cfg.score_threshold,
        remove_small_boxes: cfg.remove_small_boxes,
    }
}

/// `cfg` with the tuned settings of `post` (everything else unchanged).
pub fn with_postprocessing(cfg: &InferenceConfig, post: &PostProcessing) -> InferenceConfig {
    InferenceConfig {
        model_iou: post.model_iou,
        weighted_nms: post.weighted_nms,
        ensemble_iou: post.ensemble_iou,
        score_threshold: post.score_threshold,
        remove_small_boxes: post.remove_small_boxes,
        ..cfg.clone()
    }
}

fn set(post: &mut PostProcessing, parameter: &str, value: TrialValue) {
    match (parameter, value) {
        ("weighted_nms", TrialValue::Flag(b)) => post.weighted_nms = b,
        ("model_iou", TrialValue::Number(x)) => post.model_iou = x,
        ("ensemble_iou", TrialValue::Number(x)) => post.ensemble_iou = x,
        ("score_threshold", TrialValue::Number(x)) => post.score_threshold = x,
        ("remove_small_boxes", TrialValue::Number(x)) => post.remove_small_boxes = x,
        _ => unreachable!("SweepConfig::steps pairs every parameter with its value kind"),
    }
}

/// Predict the cases `ids` of a preprocessed dataset once for a sweep: the raw tile
/// detections (the `cfg.model_topk` best per TTA variant) and the ground truth of each case.
/// Every case needs labels.
pub fn collect_sweep_cases<B: Backend, M: Detector<B>>(
    model: &M,
    dataset: &PreprocessedDataset,
    ids: &[String],
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<Vec<SweepCase>, InferError> {
    cfg.validate()?;
    let mut progress = CaseProgress::new(cfg.progress, ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        progress.start();
        let case = dataset.load_case(id)?;
        if case.instances.is_none() {
            return Err(InferError::InvalidInput(format!(
                "case '{id}' has no labels (a test case?); the sweep needs labelled cases"
            )));
        }
        let mut raw = collect_predictions(model, case.image.view(), patch_size, cfg, device)
            .map_err(|e| e.in_case(id))?;
        raw.reduce(cfg.model_topk);
        progress.finished(
            id,
            raw.variants.iter().map(|v| v.len()).sum(),
            raw.num_tiles,
        );
        out.push(SweepCase {
            id: id.clone(),
            raw,
            gt: ImageGt {
                boxes: case.boxes.clone(),
                classes: case.classes.clone(),
            },
        });
    }
    Ok(out)
}

/// Merge every case's stored prediction with `cfg` and return `metric` over all cases.
pub fn score_postprocessing(
    cases: &[SweepCase],
    cfg: &InferenceConfig,
    metric: &str,
    num_classes: usize,
) -> Result<f64, InferError> {
    let predictions = cases
        .par_iter()
        .map(|c| {
            c.raw.merge(cfg).map(|d| ImagePred {
                boxes: d.boxes,
                scores: d.scores,
                classes: d.classes,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gt: Vec<ImageGt> = cases.iter().map(|c| c.gt.clone()).collect();
    let eval = EvalConfig {
        num_classes: Some(num_classes),
        ..Default::default()
    };
    let report = metrics::evaluate(&gt, &predictions, &eval)
        .map_err(|e| InferError::InvalidInput(format!("evaluating the sweep: {e}")))?;
    report.scalars.get(metric).copied().ok_or_else(|| {
        let keys: Vec<&String> = report.scalars.keys().collect();
        InferError::config(
            "metric",
            format!("'{metric}' is not a metric; available: {keys:?}"),
        )
    })
}

/// Run nnDetection's greedy coordinate search over the stored predictions of `cases`,
/// starting from the settings of `start` (see the module documentation).
pub fn sweep_postprocessing(
    cases: &[SweepCase],
    start: &InferenceConfig,
    sweep: &SweepConfig,
    num_classes: usize,
) -> Result<SweepResult, InferError> {
    start.validate()?;
    sweep.validate()?;
    if cases.is_empty() {
        return Err(InferError::InvalidInput(
            "the sweep needs at least one validation case".into(),
        ));
    }
    let mut state = postprocessing_of(start);
    let mut trials = Vec::new();
    let mut score = f64::NAN;
    for (step, (parameter, values)) in sweep.steps().into_iter().enumerate() {
        let first_trial = trials.len();
        let mut best: Option<(usize, f64)> = None;
        for (k, &value) in values.iter().enumerate() {
            crate::util::interrupt::check()?;
            let mut settings = state.clone();
            set(&mut settings, parameter, value);
            let s = score_postprocessing(
                cases,
                &with_postprocessing(start, &settings),
                &sweep.metric,
                num_classes,
            )?;
            // Strictly better only: ties keep the first value; NaN never beats a number.
            let better = match best {
                None => true,
                Some((_, b)) => s > b || (b.is_nan() && !s.is_nan()),
            };
            if better {
                best = Some((k, s));
            }
            trials.push(SweepTrial {
                step: step + 1,
                parameter: parameter.to_string(),
                value,
                score: s,
                chosen: false,
                settings,
            });
        }
        let (k, s) = best.expect("validate() refuses empty value lists");
        set(&mut state, parameter, values[k]);
        trials[first_trial + k].chosen = true;
        score = s;
    }
    Ok(SweepResult {
        metric: sweep.metric.clone(),
        chosen: state,
        score,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Tta;
    use crate::infer::merge::WeightedDetections;

    /// Eight cases of 32³ with one object each (one TTA variant, one tile). The object is
    /// found by a weak box in every case (score 0.25 in four cases, 0.2 in the others); the
    /// last four cases also hold a strong (0.8) false positive far from it. A score threshold
    /// of 0.5 keeps only the false positives (AP 0); 0.0 keeps everything (AP ≈ 8/12).
    fn cases() -> Vec<SweepCase> {
        (0..8)
            .map(|k| {
                let mut tiles = WeightedDetections::default();
                let weak = if k < 4 { 0.25 } else { 0.2 };
                tiles.push([4.0, 4.0, 4.0, 10.0, 10.2, 10.0], weak, 0, 1.0);
                if k >= 4 {
                    tiles.push([20.0, 20.0, 20.0, 28.0, 28.0, 28.0], 0.8, 0, 1.0);
                }
                SweepCase {
                    id: format!("c{k}"),
                    raw: RawPrediction {
                        shape: [32, 32, 32],
                        patch_size: [32, 32, 32],
                        num_tiles: 1,
                        flips: vec![[false; 3]],
                        variants: vec![tiles],
                    },
                    gt: ImageGt {
                        boxes: vec![[4.0, 4.0, 4.0, 10.0, 10.0, 10.0]],
                        classes: vec![0],
                    },
                }
            })
            .collect()
    }

    fn start() -> InferenceConfig {
        InferenceConfig {
            tta: Tta::All(false),
            score_threshold: 0.5,
            progress: false,
            ..Default::default()
        }
    }

    #[test]
    fn a_lower_score_threshold_that_helps_is_chosen() {
        let cases = cases();
        let at_start = score_postprocessing(&cases, &start(), SWEEP_METRIC, 1).unwrap();
        assert_eq!(at_start, 0.0, "only false positives pass 0.5");
        let result = sweep_postprocessing(&cases, &start(), &SweepConfig::default(), 1).unwrap();
        assert_eq!(result.chosen.score_threshold, 0.0, "{:?}", result.trials);
        assert!(result.score > 0.6, "{}", result.score);
        // 6 + 2 + 6 + 7 + 7 trials in nnDetection's order, one winner per step.
        assert_eq!(result.trials.len(), 28);
        let order: Vec<&str> = result.trials.iter().map(|t| t.parameter.as_str()).collect();
        assert_eq!(
            [order[0], order[6], order[8], order[14], order[21]],
            [
                "model_iou",
                "weighted_nms",
                "ensemble_iou",
                "score_threshold",
                "remove_small_boxes"
            ]
        );
        for step in 1..=5 {
            let chosen = result.trials.iter().filter(|t| t.step == step && t.chosen);
            assert_eq!(chosen.count(), 1);
        }
        // Before the threshold step every trial scores 0: ties keep the first value.
        assert!(result.trials[..14].iter().all(|t| t.score == 0.0));
        assert_eq!(result.chosen.model_iou, 1e-5);
        assert!(result.chosen.weighted_nms);
        assert_eq!(result.chosen.ensemble_iou, 1e-5);
        // 0.2 drops the four weaker true boxes; 0.3 and above drop all of them.
        let thresholds: Vec<f64> = result.trials[14..21].iter().map(|t| t.score).collect();
        assert!(
            thresholds[2] < thresholds[0] && thresholds[3] == 0.0,
            "{thresholds:?}"
        );
        // A minimum side of 7 voxels drops the 6-voxel true boxes.
        assert!(result.trials[27].score < result.trials[21].score);
        assert_eq!(result.chosen.remove_small_boxes, 0.01);
        // The chosen settings reproduce the reported score.
        let again = score_postprocessing(
            &cases,
            &with_postprocessing(&start(), &result.chosen),
            SWEEP_METRIC,
            1,
        )
        .unwrap();
        assert_eq!(again, result.score);
        // The winner is the best value wherever it stands in the list.
        let reversed = SweepConfig {
            score_threshold: vec![0.6, 0.5, 0.3, 0.2, 0.0],
            ..Default::default()
        };
        let result = sweep_postprocessing(&cases, &start(), &reversed, 1).unwrap();
        assert_eq!(result.chosen.score_threshold, 0.0);
    }

    #[test]
    fn bad_sweeps_name_their_field() {
        for (sweep, field) in [
            (
                SweepConfig {
                    model_iou: vec![],
                    ..Default::default()
                },
                "model_iou",
            ),
            (
                SweepConfig {
                    ensemble_iou: vec![1.5],
                    ..Default::default()
                },
                "ensemble_iou",
            ),
            (
                SweepConfig {
                    score_threshold: vec![f64::NAN],
                    ..Default::default()
                },
                "score_threshold",
            ),
        ] {
            let e = sweep.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{e}");
        }
        let e = sweep_postprocessing(
            &cases(),
            &InferenceConfig::default(),
            &SweepConfig {
                metric: "AP_IoU_0.77".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("AP_IoU_0.77") && e.contains("available"), "{e}");
        assert!(
            sweep_postprocessing(&[], &InferenceConfig::default(), &SweepConfig::default(), 1)
                .is_err()
        );
    }
}
