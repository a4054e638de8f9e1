//! Greedy per-image, per-class matching of predictions to GT at many IoU thresholds at once.

use super::{ImageGt, ImagePred};
use crate::volume::boxes::{Box3, iou_matrix};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Matching result of one class in one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMatch {
    /// The class index.
    pub class: usize,
    /// Scores of the kept predictions, in descending (stable) order.
    pub scores: Vec<f64>,
    /// Index of each kept prediction in the image's prediction list.
    pub pred_index: Vec<usize>,
    /// Per kept prediction: bit t set when it is a TP at threshold t.
    pub matched: Vec<u64>,
    /// Number of GT boxes of this class in the image.
    pub num_gt: usize,
    /// Per GT box of this class (in input order): bit t set when matched at threshold t.
    pub gt_matched: Vec<u64>,
}

/// Matching result of one image: one entry per class present in its GT or predictions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMatch {
    /// Entries sorted by class index.
    pub classes: Vec<ClassMatch>,
}

/// Descending stable order of `scores` (ties keep input order; scores are NaN-free).
pub(crate) fn descending_order(indices: &mut [usize], scores: &[f64]) {
    indices.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
}

/// Match one image at every threshold (sorted or not); at most `max_det` predictions per class.
pub fn match_image(
    gt: &ImageGt,
    pred: &ImagePred,
    thresholds: &[f64],
    max_det: usize,
) -> ImageMatch {
    let mut classes: Vec<usize> = gt
        .classes
        .iter()
        .chain(pred.classes.iter())
        .copied()
        .collect();
    classes.sort_unstable();
    classes.dedup();
    let mut taken: Vec<bool> = Vec::new();
    let entries = classes
        .into_iter()
        .map(|c| {
            let mut p_idx: Vec<usize> = (0..pred.classes.len())
                .filter(|&i| pred.classes[i] == c)
                .collect();
            descending_order(&mut p_idx, &pred.scores);
            p_idx.truncate(max_det);
            let g_idx: Vec<usize> = (0..gt.classes.len())
                .filter(|&i| gt.classes[i] == c)
                .collect();
            let scores: Vec<f64> = p_idx.iter().map(|&i| pred.scores[i]).collect();
            let mut matched = vec![0u64; p_idx.len()];
            let mut gt_matched = vec![0u64; g_idx.len()];
            if !g_idx.is_empty() && !p_idx.is_empty() {
                let pboxes: Vec<Box3> = p_idx.iter().map(|&i| pred.boxes[i]).collect();
                let gboxes: Vec<Box3> = g_idx.iter().map(|&i| gt.boxes[i]).collect();
                let ious = iou_matrix(&pboxes, &gboxes);
                let ng = gboxes.len();
                for (ti, &t) in thresholds.iter().enumerate() {
                    taken.clear();
                    taken.resize(ng, false);
                    for (d, row) in ious.chunks_exact(ng).enumerate() {
                        let mut best = t.min(1.0 - 1e-10);
                        let mut m = None;
                        for (g, &v) in row.iter().enumerate() {
                            // `v < best` is false for NaN, exactly as numpy's test.
                            if taken[g] || v < best {
                                continue;
                            }
                            best = v;
                            m = Some(g);
                        }
                        if let Some(g) = m {
                            taken[g] = true;
                            matched[d] |= 1 << ti;
                            gt_matched[g] |= 1 << ti;
                        }
                    }
                }
            }
            ClassMatch {
                class: c,
                scores,
                pred_index: p_idx,
                matched,
                num_gt: g_idx.len(),
                gt_matched,
            }
        })
        .collect();
    ImageMatch { classes: entries }
}

/// Match all images in parallel.
pub fn match_all(
    gt: &[ImageGt],
    pred: &[ImagePred],
    thresholds: &[f64],
    max_det: usize,
) -> Vec<ImageMatch> {
    gt.par_iter()
        .zip(pred.par_iter())
        .with_min_len(8)
        .map(|(g, p)| match_image(g, p, thresholds, max_det))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(x: f64, size: f64) -> Box3 {
        [x, 0.0, 0.0, x + size, size, size]
    }

    #[test]
    fn later_gt_wins_an_iou_tie() {
        // Two identical GT boxes: the prediction takes the later one.
        let gt = ImageGt {
            boxes: vec![cube(0.0, 2.0), cube(0.0, 2.0)],
            classes: vec![0, 0],
        };
        let pred = ImagePred {
            boxes: vec![cube(0.0, 2.0)],
            scores: vec![0.5],
            classes: vec![0],
        };
        let m = match_image(&gt, &pred, &[0.5], 100);
        assert_eq!(m.classes[0].gt_matched, vec![0, 1]);
        assert_eq!(m.classes[0].matched, vec![1]);
    }

    #[test]
    fn greedy_in_score_order_and_per_threshold() {
        // GT at 0; pred A (score 0.9) overlaps with IoU 1/3, pred B (0.8) is exact.
        let gt = ImageGt {
            boxes: vec![cube(0.0, 2.0)],
            classes: vec![0],
        };
        let pred = ImagePred {
            boxes: vec![cube(0.0, 2.0), cube(1.0, 2.0)],
            scores: vec![0.8, 0.9],
            classes: vec![0, 0],
        };
        let m = match_image(&gt, &pred, &[0.1, 0.5], 100);
        let c = &m.classes[0];
        assert_eq!(c.pred_index, vec![1, 0]);
        // At 0.1 the higher-scoring partial overlap takes the GT; at 0.5 only the exact box can.
        assert_eq!(c.matched, vec![0b01, 0b10]);
        assert_eq!(c.gt_matched, vec![0b11]);
    }

    #[test]
    fn threshold_one_is_reachable_and_classes_do_not_mix() {
        let gt = ImageGt {
            boxes: vec![cube(0.0, 2.0)],
            classes: vec![1],
        };
        let pred = ImagePred {
            boxes: vec![cube(0.0, 2.0), cube(0.0, 2.0)],
            scores: vec![0.3, 0.9],
            classes: vec![1, 0],
        };
        let m = match_image(&gt, &pred, &[1.0], 100);
        assert_eq!(m.classes.len(), 2);
        assert_eq!(
            (
                m.classes[0].class,
                m.classes[0].matched.clone(),
                m.classes[0].num_gt
            ),
            (0, vec![0], 0)
        );
        assert_eq!(
            (
                m.classes[1].class,
                m.classes[1].matched.clone(),
                m.classes[1].num_gt
            ),
            (1, vec![1], 1)
        );
    }

    #[test]
    fn max_det_keeps_the_highest_scores_stably() {
        let pred = ImagePred {
            boxes: vec![cube(0.0, 1.0); 5],
            scores: vec![0.1, 0.5, 0.5, 0.9, 0.2],
            classes: vec![0; 5],
        };
        let m = match_image(&ImageGt::default(), &pred, &[0.1], 3);
        assert_eq!(m.classes[0].pred_index, vec![3, 1, 2]);
        assert_eq!(m.classes[0].scores, vec![0.9, 0.5, 0.5]);
    }
}
