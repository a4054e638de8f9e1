//! Greedy per-image, per-class matching of predictions to GT at many IoU thresholds at once.

use super::aggregate::descending_key;
use super::{ImageGt, ImagePred};
use crate::volume::boxes::{Box3, box_volume};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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

/// Reusable buffers of the matching (one set per worker thread).
#[derive(Debug, Default)]
pub(crate) struct MatchBuffers {
    keyed: Vec<u128>,
    g_order: Vec<usize>,
    /// Predictions that reach the lowest threshold with some GT: (index in the class's list,
    /// start of its IoU row).
    candidates: Vec<(usize, usize)>,
    /// IoU rows of the predictions against the GT of their class.
    rows: Vec<f64>,
    /// Per prediction (input order): start of its row, and whether it can match at all.
    row_at: Vec<(usize, bool)>,
    /// Per class with GT: (class, start, end) in the class-sorted GT order.
    gt_ranges: Vec<(usize, usize, usize)>,
    taken: Vec<bool>,
    gt_volumes: Vec<f64>,
    p_idx: Vec<usize>,
    matched: Vec<u64>,
    gt_matched: Vec<u64>,
}

/// [`crate::volume::boxes::iou`] with the two volumes given: the same operations in the same
/// order, so the same bits.
#[inline]
fn iou_with_volumes(a: &Box3, va: f64, b: &Box3, vb: f64) -> f64 {
    let i0 = (a[3].min(b[3]) - a[0].max(b[0])).max(0.0);
    let i1 = (a[4].min(b[4]) - a[1].max(b[1])).max(0.0);
    let i2 = (a[5].min(b[5]) - a[2].max(b[2])).max(0.0);
    let inter = i0 * i1 * i2;
    // Disjoint boxes (the common case) skip the division: 0 / (va + vb) is +0.0 when the
    // volumes are positive, and the division still runs when they are not (0 / 0 = NaN).
    if inter == 0.0 && va + vb > 0.0 {
        return 0.0;
    }
    inter / (va + vb - inter)
}

/// Match one image at every threshold (sorted or not); at most `max_det` predictions per class.
pub fn match_image(
    gt: &ImageGt,
    pred: &ImagePred,
    thresholds: &[f64],
    max_det: usize,
) -> ImageMatch {
    match_image_with(gt, pred, thresholds, max_det, &mut MatchBuffers::default())
}

pub(crate) fn match_image_with(
    gt: &ImageGt,
    pred: &ImagePred,
    thresholds: &[f64],
    max_det: usize,
    buf: &mut MatchBuffers,
) -> ImageMatch {
    let mut entries = Vec::new();
    visit_image(gt, pred, thresholds, max_det, buf, |m| {
        entries.push(ClassMatch {
            class: m.class,
            scores: m.pred_index.iter().map(|&i| pred.scores[i]).collect(),
            pred_index: m.pred_index.to_vec(),
            matched: m.matched.to_vec(),
            num_gt: m.num_gt,
            gt_matched: m.gt_matched.to_vec(),
        })
    });
    ImageMatch { classes: entries }
}

/// One class of one image, as [`visit_image`] hands it out (borrowed from its buffers).
pub(crate) struct ClassMatchView<'a> {
    pub class: usize,
    pub pred_index: &'a [usize],
    pub matched: &'a [u64],
    pub num_gt: usize,
    pub gt_matched: &'a [u64],
}

/// Match one image and hand each class's result to `visit`, in class order, without
/// allocating per class.
pub(crate) fn visit_image(
    gt: &ImageGt,
    pred: &ImagePred,
    thresholds: &[f64],
    max_det: usize,
    buf: &mut MatchBuffers,
    mut visit: impl FnMut(ClassMatchView<'_>),
) {
    // Predictions grouped by class, each group in descending (stable) score order; GT grouped
    // by class in input order. Keys are unique (they end with the index), so an unstable sort
    // gives the stable order.
    buf.keyed.clear();
    buf.keyed.extend((0..pred.classes.len()).map(|i| {
        ((pred.classes[i] as u128) << 96)
            | ((descending_key(pred.scores[i]) as u128) << 32)
            | i as u128
    }));
    buf.keyed.sort_unstable();
    buf.g_order.clear();
    buf.g_order.extend(0..gt.classes.len());
    buf.g_order.sort_by_key(|&i| gt.classes[i]);
    let effective: Vec<f64> = thresholds.iter().map(|t| t.min(1.0 - 1e-10)).collect();
    let lowest = effective.iter().copied().fold(f64::INFINITY, f64::min);
    // GT ranges per class (in `g_order`), and GT volumes in that order.
    buf.gt_ranges.clear();
    let mut start = 0;
    while start < buf.g_order.len() {
        let c = gt.classes[buf.g_order[start]];
        let mut end = start;
        while end < buf.g_order.len() && gt.classes[buf.g_order[end]] == c {
            end += 1;
        }
        buf.gt_ranges.push((c, start, end));
        start = end;
    }
    buf.gt_volumes.clear();
    buf.gt_volumes
        .extend(buf.g_order.iter().map(|&g| box_volume(&gt.boxes[g])));
    // IoU of every prediction with the GT of its class, in input order: the boxes are read
    // sequentially (score order would read them at random, which is slower than the IoUs).
    // `row_at[i]` is where prediction i's row starts in `rows`, and whether it can match.
    buf.rows.clear();
    buf.row_at.clear();
    for (i, pb) in pred.boxes.iter().enumerate() {
        let c = pred.classes[i];
        let Some(&(_, g0, g1)) = buf.gt_ranges.iter().find(|r| r.0 == c) else {
            buf.row_at.push((usize::MAX, false));
            continue;
        };
        let at = buf.rows.len();
        let pv = box_volume(pb);
        let (mut best, mut any_nan) = (f64::NEG_INFINITY, false);
        for k in g0..g1 {
            let v = iou_with_volumes(pb, pv, &gt.boxes[buf.g_order[k]], buf.gt_volumes[k]);
            any_nan |= v.is_nan();
            best = best.max(v);
            buf.rows.push(v);
        }
        // A prediction below every threshold can never match (NaN always can: numpy's
        // `iou < t` test does not reject it), so it is left out of the greedy loops.
        buf.row_at.push((at, any_nan || best >= lowest));
    }
    let (mut pi, mut gi) = (0, 0);
    let (np_all, ng_all) = (buf.keyed.len(), buf.g_order.len());
    while pi < np_all || gi < ng_all {
        let pc = buf.keyed.get(pi).map(|&k| (k >> 96) as usize);
        let gc = buf.g_order.get(gi).map(|&i| gt.classes[i]);
        let c = match (pc, gc) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let mut p_end = pi;
        while p_end < np_all && (buf.keyed[p_end] >> 96) as usize == c {
            p_end += 1;
        }
        let mut g_end = gi;
        while g_end < ng_all && gt.classes[buf.g_order[g_end]] == c {
            g_end += 1;
        }
        buf.p_idx.clear();
        buf.p_idx.extend(
            buf.keyed[pi..p_end.min(pi + max_det)]
                .iter()
                .map(|&k| k as u32 as usize),
        );
        let (np, ng) = (buf.p_idx.len(), g_end - gi);
        buf.matched.clear();
        buf.matched.resize(np, 0);
        buf.gt_matched.clear();
        buf.gt_matched.resize(ng, 0);
        if np > 0 && ng > 0 {
            buf.candidates.clear();
            for (d, &p) in buf.p_idx.iter().enumerate() {
                let (at, reachable) = buf.row_at[p];
                if reachable {
                    buf.candidates.push((d, at));
                }
            }
            if !buf.candidates.is_empty() {
                for (ti, &t) in effective.iter().enumerate() {
                    buf.taken.clear();
                    buf.taken.resize(ng, false);
                    for &(d, at) in &buf.candidates {
                        let row = &buf.rows[at..at + ng];
                        let mut best = t;
                        let mut m = None;
                        for (g, &v) in row.iter().enumerate() {
                            // `v < best` is false for NaN, exactly as numpy's test.
                            if buf.taken[g] || v < best {
                                continue;
                            }
                            best = v;
                            m = Some(g);
                        }
                        if let Some(g) = m {
                            buf.taken[g] = true;
                            buf.matched[d] |= 1 << ti;
                            buf.gt_matched[g] |= 1 << ti;
                        }
                    }
                }
            }
        }
        visit(ClassMatchView {
            class: c,
            pred_index: &buf.p_idx,
            matched: &buf.matched,
            num_gt: ng,
            gt_matched: &buf.gt_matched,
        });
        pi = p_end;
        gi = g_end;
    }
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
        .with_min_len(16)
        .map_init(MatchBuffers::default, |buf, (g, p)| {
            match_image_with(g, p, thresholds, max_det, buf)
        })
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
    fn iou_with_volumes_is_bit_identical_to_the_volume_module() {
        let mut state = 3u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 20.0
        };
        for _ in 0..2000 {
            let a = [next(), next(), next(), 0.0, 0.0, 0.0];
            let a = [
                a[0],
                a[1],
                a[2],
                a[0] + next(),
                a[1] + next(),
                a[2] + next(),
            ];
            let b = [next(), next(), next(), 0.0, 0.0, 0.0];
            let b = [
                b[0],
                b[1],
                b[2],
                b[0] + next(),
                b[1] + next(),
                b[2] + next(),
            ];
            let fast = iou_with_volumes(&a, box_volume(&a), &b, box_volume(&b));
            assert_eq!(fast.to_bits(), crate::volume::boxes::iou(&a, &b).to_bits());
        }
    }

    #[test]
    fn two_zero_volume_boxes_match_as_in_numpy() {
        // IoU 0/0 = NaN, which numpy's `iou < t` test does not reject.
        let flat = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0];
        let gt = ImageGt {
            boxes: vec![flat],
            classes: vec![0],
        };
        let pred = ImagePred {
            boxes: vec![flat],
            scores: vec![0.5],
            classes: vec![0],
        };
        assert_eq!(
            match_image(&gt, &pred, &[0.5], 100).classes[0].matched,
            vec![1]
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
