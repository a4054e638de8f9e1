//! nnDetection-exact detection metrics: matching, COCO AP/mAP, FROC, LUNA16 CPM and
//! case-level bootstrap rankings.
//!
//! Users compare these numbers with nnDetection's, so the semantics follow nnDetection's
//! evaluator (`nndet/evaluator/detection/{matching,coco,froc}.py`) operation by operation,
//! including its float32 arithmetic and its quirks. Every deviation is listed below.
//!
//! # Boxes
//! `[d0, h0, w0, d1, h1, w1]` (continuous, [`Box3`]), volume `prod(max - min)`, IoU in f64
//! without epsilon ([`crate::volume::boxes::iou`]). Two zero-volume boxes have IoU NaN, and,
//! as in numpy's `ious < t` test, NaN does not reject a match.
//!
//! # Matching (per image, per class)
//! Predictions of class c are stably sorted by descending score and only the first
//! [`EvalConfig::max_det`] are kept (the rest are neither TP nor FP). At each IoU threshold t,
//! in score order, a prediction takes the still-unmatched GT with the highest IoU ≥
//! `min(t, 1 − 1e-10)`; on equal IoU the later GT wins. All thresholds are matched in one pass.
//! GT "ignore" flags are not supported (nnDetection never sets them).
//!
//! # AP / mAP
//! Per class: all images' detections concatenated in image order, stably sorted by score;
//! cumulative TP/FP, recall `TP/G` and precision `TP/(TP+FP+2.22e-16)` in **f32** (what
//! nnDetection computes with its pinned numpy < 2; set [`EvalConfig::numpy2_precision`] for
//! numpy ≥ 2, where the precision becomes f64); precision envelope; the 101 recall points
//! `np.linspace(0, 1, 101)` (f64) are searched (`searchsorted`, side left) in the f32 recalls
//! widened to f64, so 7 TP of G = 10 (0.7f32 < 0.7) does not reach the recall point 0.70.
//! A point beyond the last recall gets precision 0. AP = numpy mean of the 101 values.
//! `AP_IoU_t` averages classes × recall points; `mAP` additionally over the thresholds
//! `np.linspace(0.1, 0.5, 9)` (0.1, 0.15000000000000002, …).
//!
//! # FROC
//! Detections of all classes pooled after per-class matching (plus a per-class FROC with the
//! same N_img). Curve points at each distinct score (ties grouped, sklearn's collinear-point
//! thinning), starting at (0, 0); FPPI = FP count / N_img and sensitivity = TP count / G,
//! divided as integer counts (nnDetection computes `fpr · n_unmatched / N_img`, which can land
//! one ulp past an FPPI grid value on a vertical step and read the lower sensitivity; set
//! [`EvalConfig::nndetection_froc_rounding`] to reproduce that). The grid sensitivities use
//! numpy `interp` semantics (left of the first point: 0; right of the last: the final
//! sensitivity; on a vertical step: its upper end). N_img counts every evaluated image,
//! including images without GT and without predictions.
//!
//! # Edge cases (nnDetection behaviour reproduced by default)
//! * A class without GT: AP −1 (all 101 points −1), averaged into `AP_…`/`mAP_…`, so these can
//!   be negative. [`EvalConfig::skip_empty_classes`] leaves such classes out (pycocotools);
//!   with no class left the value is −1.
//! * FROC with no GT at all (pooled or per class): score 0 and a zero curve. nnDetection names
//!   that key `froc_score` / `<k>_froc_score` instead of `FROC_score_IoU_…`; detlab keeps the
//!   regular key names.
//! * FROC with GT but no detections: zero curve, score 0.
//! * FROC with detections but no TP: NaN score and curve (sklearn's NaN TPR), unless
//!   [`EvalConfig::froc_nan_without_tp`] is false (then 0). NaN is written as JSON `null`.
//! * FROC with no false positive: all FPPI 0, every grid value reads the final sensitivity.
//! * `mc_FROC_score_IoU_t` = sum of per-class FROC scores / number of classes (a class
//!   without GT adds 0), as nnDetection.
//! * Zero classes (no GT, no predictions, no class names): every AP key is −1.
//!
//! # Input formats
//! `detlab eval FILE.json` reads ([`io::EvalInput`]):
//! ```json
//! {"classes": ["name0", "name1"],
//!  "cases": [{"id": "case0",
//!             "gt":   {"boxes": [[d0,h0,w0,d1,h1,w1]], "classes": [0]},
//!             "pred": {"boxes": [[d0,h0,w0,d1,h1,w1]], "scores": [0.9], "classes": [0]}}]}
//! ```
//! (`classes` optional: the number of classes is then the largest index + 1.)
//! Prediction files ([`io::PredictionFile`], one per case, `<case>.json`, written by inference):
//! ```json
//! {"case": "case0", "boxes": [[d0,h0,w0,d1,h1,w1]], "boxes_mm": [[...]], "scores": [0.9],
//!  "classes": [0], "spacing": [sd, sh, sw], "shape": [D, H, W]}
//! ```
//! `boxes` are voxel coordinates of the original image; `boxes_mm` (world mm) is optional.
//!
//! # Output keys (nnDetection's names; k = class index)
//! `AP_IoU_{t:.2}_MaxDet_{m}`, `mAP_IoU_0.10_0.50_0.05_MaxDet_{m}`, `FROC_score_IoU_{t:.2}`,
//! `mc_FROC_score_IoU_{t:.2}`, `{k}_AP_IoU_…`, `{k}_mAP_IoU_…`, `{k}_FROC_score_IoU_…`; in
//! JSON also `FROC_curve_IoU_{t:.2}` (grid sensitivities), `{k}_FROC_curve_IoU_…`,
//! `FROC_fpi_thresholds`, `FROC_num_images`, `FROC_num_gt`.

mod aggregate;
pub mod bootstrap;
mod error;
pub mod io;
pub mod luna;
pub mod matching;
pub mod numeric;
#[cfg(test)]
mod tests;

pub use aggregate::{FrocCurve, MetricReport, PrCurve};
pub use bootstrap::{
    BootstrapConfig, BootstrapReport, MethodSummary, MetricSummary, RankTies, bootstrap,
};
pub use error::MetricsError;
pub use matching::{ClassMatch, ImageMatch};

use crate::volume::boxes::Box3;
use serde::{Deserialize, Serialize};

/// Ground truth of one image: boxes `[d0,h0,w0,d1,h1,w1]` and their class indices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageGt {
    /// GT boxes in voxels.
    pub boxes: Vec<Box3>,
    /// Class index of each box.
    pub classes: Vec<usize>,
}

/// Predictions for one image: boxes, scores and class indices (same lengths).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagePred {
    /// Predicted boxes in voxels.
    pub boxes: Vec<Box3>,
    /// Confidence of each box (finite).
    pub scores: Vec<f64>,
    /// Class index of each box.
    pub classes: Vec<usize>,
}

/// Evaluation settings; the defaults are nnDetection's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// IoU thresholds at which AP is reported (`AP_IoU_…` keys); default 0.1, 0.5.
    pub iou_thresholds: Vec<f64>,
    /// The mAP IoU range `(start, stop, step)`; default (0.1, 0.5, 0.05).
    pub iou_range: [f64; 3],
    /// Predictions kept per image and class (highest scores first); default 100.
    pub max_det: usize,
    /// FPPI grid of the FROC; default 1/8, 1/4, 1/2, 1, 2, 4, 8.
    pub fppi: Vec<f64>,
    /// IoU thresholds at which FROC is computed; default 0.1, 0.5.
    pub froc_iou: Vec<f64>,
    /// Leave classes without GT out of class means (pycocotools) instead of averaging −1 in.
    pub skip_empty_classes: bool,
    /// Number of classes; default: the largest class index in GT or predictions + 1.
    pub num_classes: Option<usize>,
    /// FROC is NaN when there are detections but no TP (nnDetection); false gives 0.
    pub froc_nan_without_tp: bool,
    /// Compute FPPI and sensitivity as nnDetection does (`fpr · n_fp / N_img`) instead of
    /// dividing integer counts.
    pub nndetection_froc_rounding: bool,
    /// Precision in f64, as nnDetection computes it under numpy ≥ 2 (recall stays f32).
    pub numpy2_precision: bool,
    /// Compute per-class values (`{k}_…` keys) and curves.
    pub per_class: bool,
    /// Keep the per-detection PR curves of every class at the reported AP thresholds.
    pub pr_curves: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            iou_thresholds: vec![0.1, 0.5],
            iou_range: [0.1, 0.5, 0.05],
            max_det: 100,
            fppi: vec![0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
            froc_iou: vec![0.1, 0.5],
            skip_empty_classes: false,
            num_classes: None,
            froc_nan_without_tp: true,
            nndetection_froc_rounding: false,
            numpy2_precision: false,
            per_class: true,
            pr_curves: true,
        }
    }
}

/// Most IoU thresholds one evaluation can match at (match flags are a 64-bit mask).
pub const MAX_THRESHOLDS: usize = 64;

impl EvalConfig {
    /// Check every field; errors name the field.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let check_iou = |field: &str, v: &[f64]| -> Result<(), MetricsError> {
            for (i, t) in v.iter().enumerate() {
                if !t.is_finite() || *t < 0.0 || *t > 1.0 {
                    return Err(MetricsError::config(
                        format!("{field}[{i}]"),
                        format!("IoU threshold {t} is not in [0, 1]"),
                    ));
                }
            }
            Ok(())
        };
        check_iou("iou_thresholds", &self.iou_thresholds)?;
        check_iou("froc_iou", &self.froc_iou)?;
        let [start, stop, step] = self.iou_range;
        check_iou("iou_range", &[start, stop])?;
        if !(step.is_finite() && step > 0.0) || stop < start {
            return Err(MetricsError::config(
                "iou_range",
                format!(
                    "expected (start, stop, step) with start <= stop and step > 0, got {:?}",
                    self.iou_range
                ),
            ));
        }
        if self.max_det == 0 {
            return Err(MetricsError::config("max_det", "must be at least 1"));
        }
        if self.fppi.is_empty() {
            return Err(MetricsError::config("fppi", "the FPPI grid is empty"));
        }
        for (i, f) in self.fppi.iter().enumerate() {
            if !f.is_finite() || *f < 0.0 {
                return Err(MetricsError::config(
                    format!("fppi[{i}]"),
                    format!("{f} is not a finite value >= 0"),
                ));
            }
        }
        let n = self.all_thresholds().len();
        if n > MAX_THRESHOLDS {
            return Err(MetricsError::config(
                "iou_thresholds",
                format!("{n} distinct IoU thresholds in total; at most {MAX_THRESHOLDS}"),
            ));
        }
        Ok(())
    }

    /// The mAP thresholds `np.linspace(start, stop, round((stop-start)/step) + 1)`.
    pub fn range_thresholds(&self) -> Vec<f64> {
        numeric::iou_range_thresholds(self.iou_range)
    }

    /// Every IoU threshold matched (union of reported, mAP and FROC thresholds, sorted).
    pub fn all_thresholds(&self) -> Vec<f64> {
        let mut all = self.iou_thresholds.clone();
        all.extend(self.range_thresholds());
        all.extend(self.froc_iou.iter().copied());
        numeric::union_sorted(&all)
    }

    /// The mAP key, e.g. `mAP_IoU_0.10_0.50_0.05_MaxDet_100`.
    pub fn map_key(&self) -> String {
        let [a, b, c] = self.iou_range;
        format!("mAP_IoU_{a:.2}_{b:.2}_{c:.2}_MaxDet_{}", self.max_det)
    }

    /// The AP key at IoU `t`, e.g. `AP_IoU_0.10_MaxDet_100`.
    pub fn ap_key(&self, t: f64) -> String {
        format!("AP_IoU_{t:.2}_MaxDet_{}", self.max_det)
    }
}

/// The FROC score key at IoU `t`, e.g. `FROC_score_IoU_0.10`.
pub fn froc_score_key(t: f64) -> String {
    format!("FROC_score_IoU_{t:.2}")
}

/// The FROC curve key at IoU `t`, e.g. `FROC_curve_IoU_0.10`.
pub fn froc_curve_key(t: f64) -> String {
    format!("FROC_curve_IoU_{t:.2}")
}

/// Check one case's GT and predictions: equal lengths, valid boxes, finite scores, classes
/// below `num_classes`. `case` names the case in errors.
pub fn validate_case(
    case: &str,
    gt: &ImageGt,
    pred: &ImagePred,
    num_classes: Option<usize>,
) -> Result<(), MetricsError> {
    if gt.boxes.len() != gt.classes.len() {
        return Err(MetricsError::input(
            case,
            "gt.classes",
            format!("{} classes for {} boxes", gt.classes.len(), gt.boxes.len()),
        ));
    }
    if pred.boxes.len() != pred.scores.len() {
        return Err(MetricsError::input(
            case,
            "pred.scores",
            format!(
                "{} scores for {} boxes",
                pred.scores.len(),
                pred.boxes.len()
            ),
        ));
    }
    if pred.boxes.len() != pred.classes.len() {
        return Err(MetricsError::input(
            case,
            "pred.classes",
            format!(
                "{} classes for {} boxes",
                pred.classes.len(),
                pred.boxes.len()
            ),
        ));
    }
    for (field, boxes) in [("gt.boxes", &gt.boxes), ("pred.boxes", &pred.boxes)] {
        // Fast check first; the full validation only runs to word the error.
        let fine = |b: &Box3| {
            b[0] <= b[3] && b[1] <= b[4] && b[2] <= b[5] && b.iter().all(|v| v.is_finite())
        };
        if boxes.iter().all(fine) {
            continue;
        }
        for (i, b) in boxes.iter().enumerate() {
            crate::volume::boxes::validate(b)
                .map_err(|m| MetricsError::input(case, format!("{field}[{i}]"), m))?;
        }
    }
    for (i, s) in pred.scores.iter().enumerate() {
        if !s.is_finite() {
            return Err(MetricsError::input(
                case,
                format!("pred.scores[{i}]"),
                format!("score {s} is not finite"),
            ));
        }
    }
    let n = num_classes.unwrap_or(MAX_CLASSES).min(MAX_CLASSES);
    for (field, classes) in [("gt.classes", &gt.classes), ("pred.classes", &pred.classes)] {
        if let Some((i, c)) = classes.iter().enumerate().find(|(_, c)| **c >= n) {
            let reason = if *c >= MAX_CLASSES {
                format!("class {c}: more than the {MAX_CLASSES} classes detlab evaluates")
            } else {
                format!("class {c} is out of range (there are {n} classes)")
            };
            return Err(MetricsError::input(case, format!("{field}[{i}]"), reason));
        }
    }
    Ok(())
}

/// The number of classes: `cfg.num_classes`, or the largest class index seen + 1.
pub fn infer_num_classes(gt: &[ImageGt], pred: &[ImagePred], cfg: &EvalConfig) -> usize {
    cfg.num_classes.unwrap_or_else(|| {
        gt.iter()
            .flat_map(|g| g.classes.iter())
            .chain(pred.iter().flat_map(|p| p.classes.iter()))
            .map(|c| c.saturating_add(1))
            .max()
            .unwrap_or(0)
    })
}

/// Check the configuration and that GT and predictions have the same number of images; the
/// number of classes.
fn check_shape(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
) -> Result<usize, MetricsError> {
    cfg.validate()?;
    if gt.len() != pred.len() {
        return Err(MetricsError::input(
            "(all)",
            "pred",
            format!("{} prediction lists for {} GT images", pred.len(), gt.len()),
        ));
    }
    let num_classes = infer_num_classes(gt, pred, cfg);
    if num_classes > MAX_CLASSES {
        // validate_case refuses a class id above MAX_CLASSES and names where it is; one stray
        // id would otherwise make a report of a million empty classes.
        for (i, (g, p)) in gt.iter().zip(pred).enumerate() {
            validate_case(&format!("#{i}"), g, p, None)?;
        }
        return Err(MetricsError::input(
            "(all)",
            "num_classes",
            format!("{num_classes} classes, more than the {MAX_CLASSES} detlab evaluates"),
        ));
    }
    Ok(num_classes)
}

/// The most classes one evaluation may have (detection datasets have a handful).
pub const MAX_CLASSES: usize = 1000;

fn check_inputs(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
) -> Result<usize, MetricsError> {
    let num_classes = check_shape(gt, pred, cfg)?;
    for (i, (g, p)) in gt.iter().zip(pred).enumerate() {
        validate_case(&format!("#{i}"), g, p, Some(num_classes))?;
    }
    Ok(num_classes)
}

/// Match every image (in parallel) at all thresholds of `cfg`; the per-class matching results.
pub fn match_images(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
) -> Result<Vec<ImageMatch>, MetricsError> {
    check_inputs(gt, pred, cfg)?;
    Ok(matching::match_all(
        gt,
        pred,
        &cfg.all_thresholds(),
        cfg.max_det,
    ))
}

/// Evaluate predictions against GT (image i of `pred` belongs to image i of `gt`): AP, mAP,
/// FROC (pooled and per class) and their curves, with nnDetection's key names.
pub fn evaluate(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
) -> Result<MetricReport, MetricsError> {
    let num_classes = check_shape(gt, pred, cfg)?;
    let prepared = aggregate::Prepared::build(
        gt,
        pred,
        cfg.all_thresholds(),
        cfg.max_det,
        num_classes,
        &|i| format!("#{i}"),
    )?;
    Ok(aggregate::report(
        &prepared,
        None,
        cfg,
        &aggregate::Want::all(cfg),
        true,
    ))
}

/// The FROC curve at IoU `iou`, pooled over classes (`class = None`) or for one class:
/// plot-ready points and the sensitivities at `cfg.fppi`.
pub fn froc_curve(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
    iou: f64,
    class: Option<usize>,
) -> Result<FrocCurve, MetricsError> {
    let one = EvalConfig {
        iou_thresholds: vec![iou],
        froc_iou: vec![iou],
        iou_range: [iou, iou, 1.0],
        ..cfg.clone()
    };
    let num_classes = check_shape(gt, pred, &one)?;
    if let Some(c) = class
        && c >= num_classes
    {
        return Err(MetricsError::config(
            "class",
            format!("class {c} is out of range (there are {num_classes} classes)"),
        ));
    }
    let prepared =
        aggregate::Prepared::build(gt, pred, vec![iou], cfg.max_det, num_classes, &|i| {
            format!("#{i}")
        })?;
    Ok(aggregate::froc_for(
        &prepared,
        None,
        &one,
        0,
        class,
        true,
        &mut aggregate::Scratch::default(),
    ))
}

/// The precision–recall curve of class `class` at IoU `iou` (recall/precision per detection,
/// precision envelope, the 101 interpolated precisions and AP).
pub fn pr_curve(
    gt: &[ImageGt],
    pred: &[ImagePred],
    cfg: &EvalConfig,
    iou: f64,
    class: usize,
) -> Result<PrCurve, MetricsError> {
    let one = EvalConfig {
        iou_thresholds: vec![iou],
        froc_iou: vec![iou],
        iou_range: [iou, iou, 1.0],
        ..cfg.clone()
    };
    let num_classes = check_shape(gt, pred, &one)?;
    if class >= num_classes {
        return Err(MetricsError::config(
            "class",
            format!("class {class} is out of range (there are {num_classes} classes)"),
        ));
    }
    let prepared =
        aggregate::Prepared::build(gt, pred, vec![iou], cfg.max_det, num_classes, &|i| {
            format!("#{i}")
        })?;
    let mut scratch = aggregate::Scratch::default();
    Ok(aggregate::pr_for(
        &prepared,
        None,
        &one,
        0,
        class,
        &mut scratch,
        true,
    ))
}
