//! ATSS matching (Zhang et al. 2020) as nnDetection's `ATSSMatcher` does it.
//!
//! For every ground-truth box and every detection level, the `num_candidates × 27` anchors
//! whose centres are nearest to the box centre are candidates (ties broken by anchor index);
//! the box's IoU threshold is the mean plus the unbiased standard deviation of its candidates'
//! IoUs; candidates at or above it are positives. An anchor positive for several boxes takes
//! the one with the highest IoU (the lower box index on ties). Everything else is background.
//! Candidates with zero overlap are never positives (nnDetection would mark them when all
//! candidates of a box have IoU 0).

use serde::{Deserialize, Serialize};

use super::anchors::{ANCHORS_PER_POSITION, AnchorGrid};
use crate::volume::boxes::{Box3, center, iou};

/// Settings of the ATSS matcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AtssConfig {
    /// Nearest positions per level and box (each brings its 27 anchors); nnDetection: 4.
    pub num_candidates: usize,
    /// Also require the anchor centre to lie inside the box (nnDetection: false).
    pub center_in_gt: bool,
}

impl Default for AtssConfig {
    fn default() -> Self {
        Self {
            num_candidates: 4,
            center_in_gt: false,
        }
    }
}

/// A positive anchor and the ground-truth box it regresses to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnchorMatch {
    /// Flat anchor index in the [`AnchorGrid`].
    pub anchor: usize,
    /// Index of the matched ground-truth box.
    pub target: usize,
    /// IoU of anchor and box.
    pub iou: f64,
}

/// Match the anchors of one image to its ground-truth boxes; returns the positives sorted by
/// anchor index.
pub fn atss_match(targets: &[Box3], anchors: &AnchorGrid, config: &AtssConfig) -> Vec<AnchorMatch> {
    let mut best: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
    let mut candidates: Vec<usize> = Vec::new();
    let mut distances: Vec<(f64, usize)> = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let c = center(target);
        candidates.clear();
        for level in &anchors.levels {
            let take = (config.num_candidates * ANCHORS_PER_POSITION).min(level.len());
            if take == 0 {
                continue;
            }
            let positions = take.div_ceil(ANCHORS_PER_POSITION);
            distances.clear();
            distances.extend((0..level.num_positions()).map(|p| {
                let pc = level.position_center(p);
                (
                    (pc[0] - c[0]).powi(2) + (pc[1] - c[1]).powi(2) + (pc[2] - c[2]).powi(2),
                    p,
                )
            }));
            let order =
                |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if positions < distances.len() {
                distances.select_nth_unstable_by(positions - 1, order);
                distances.truncate(positions);
            }
            distances.sort_by(order);
            let mut added = 0;
            'outer: for &(_, p) in distances.iter() {
                for k in 0..ANCHORS_PER_POSITION {
                    if added == take {
                        break 'outer;
                    }
                    candidates.push(level.offset + p * ANCHORS_PER_POSITION + k);
                    added += 1;
                }
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let ious: Vec<f64> = candidates
            .iter()
            .map(|&a| iou(target, &anchors.anchor(a)))
            .collect();
        let n = ious.len() as f64;
        let mean = ious.iter().sum::<f64>() / n;
        let std = if ious.len() > 1 {
            (ious.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let threshold = mean + std;
        for (&a, &v) in candidates.iter().zip(&ious) {
            if !(v >= threshold && v > 0.0) {
                continue;
            }
            if config.center_in_gt {
                let ac = center(&anchors.anchor(a));
                if !(0..3).all(|ax| ac[ax] > target[ax] && ac[ax] < target[ax + 3]) {
                    continue;
                }
            }
            let entry = best.entry(a).or_insert((v, t));
            if v > entry.0 {
                *entry = (v, t);
            }
        }
    }
    best.into_iter()
        .map(|(anchor, (iou, target))| AnchorMatch {
            anchor,
            target,
            iou,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::retina_unet::anchors::AnchorSizes;

    fn brute_force(targets: &[Box3], grid: &AnchorGrid, k: usize) -> Vec<(usize, usize)> {
        // Reference: sort every anchor of a level by (centre distance, index), take k·27.
        let boxes = grid.boxes();
        let mut best: Vec<Option<(f64, usize)>> = vec![None; boxes.len()];
        for (t, target) in targets.iter().enumerate() {
            let c = center(target);
            let mut cand = Vec::new();
            for level in &grid.levels {
                let mut idx: Vec<usize> = (level.offset..level.offset + level.len()).collect();
                let dist = |i: &usize| {
                    let ac = center(&boxes[*i]);
                    (0..3).map(|a| (ac[a] - c[a]).powi(2)).sum::<f64>()
                };
                idx.sort_by(|a, b| dist(a).total_cmp(&dist(b)).then(a.cmp(b)));
                cand.extend(idx.into_iter().take(k * 27));
            }
            let ious: Vec<f64> = cand.iter().map(|&a| iou(target, &boxes[a])).collect();
            let n = ious.len() as f64;
            let mean = ious.iter().sum::<f64>() / n;
            let std = (ious.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            for (&a, &v) in cand.iter().zip(&ious) {
                if v >= mean + std && v > 0.0 && best[a].is_none_or(|(b, _)| v > b) {
                    best[a] = Some((v, t));
                }
            }
        }
        best.iter()
            .enumerate()
            .filter_map(|(a, m)| m.map(|(_, t)| (a, t)))
            .collect()
    }

    #[test]
    fn a_hand_made_case_matches_the_anchors_of_the_right_size_at_the_right_place() {
        // One level, stride 4 on a 16³ patch (4³ positions), extents 2, 4, 8 per axis.
        let sizes: AnchorSizes = [[2.0, 4.0, 8.0]; 3];
        let grid = AnchorGrid::new([16, 16, 16], &[[4, 4, 4]], &sizes).unwrap();
        // An 8³ box centred on position (1, 1, 1) = voxel (4, 4, 4).
        let target = [0.0, 0.0, 0.0, 8.0, 8.0, 8.0];
        let config = AtssConfig {
            num_candidates: 1,
            center_in_gt: false,
        };
        let matches = atss_match(&[target], &grid, &config);
        // The candidates are the 27 anchors at (1,1,1), all centred on the box: IoU = abc/512
        // for extents a, b, c ∈ {2, 4, 8}. Mean 0.1985, unbiased std 0.2146 → threshold 0.413:
        // the 8³ anchor (IoU 1, k = 26) and the three 8·8·4 ones (IoU 0.5, k = 17, 23, 25).
        let p = (4 + 1) * 4 + 1;
        let anchors: Vec<usize> = matches.iter().map(|m| m.anchor).collect();
        assert_eq!(
            anchors,
            vec![p * 27 + 17, p * 27 + 23, p * 27 + 25, p * 27 + 26]
        );
        assert!(matches.iter().all(|m| m.target == 0));
        let ious: Vec<f64> = matches.iter().map(|m| m.iou).collect();
        assert_eq!(ious, vec![0.5, 0.5, 0.5, 1.0]);
        // With four candidate positions the exact anchor still wins, as in the brute force.
        let config = AtssConfig::default();
        let matches = atss_match(&[target], &grid, &config);
        assert!(matches.iter().any(|m| m.anchor == p * 27 + 26));
        assert_eq!(
            matches
                .iter()
                .map(|m| (m.anchor, m.target))
                .collect::<Vec<_>>(),
            brute_force(&[target], &grid, 4)
        );
        assert!(atss_match(&[], &grid, &config).is_empty());
    }

    #[test]
    fn an_anchor_claimed_by_two_boxes_goes_to_the_higher_iou() {
        let sizes: AnchorSizes = [[4.0, 8.0, 16.0]; 3];
        let grid = AnchorGrid::new([16, 16, 16], &[[4, 4, 4]], &sizes).unwrap();
        // Two overlapping boxes around voxel (8, 8, 8); the 8³ anchor there fits `a` exactly
        // (IoU 1) and `b` well (IoU 343/617 = 0.556).
        let a = [4.0, 4.0, 4.0, 12.0, 12.0, 12.0];
        let b = [5.0, 5.0, 5.0, 13.0, 13.0, 12.0];
        let exact = ((2 * 4 + 2) * 4 + 2) * 27 + 13; // position (2,2,2), extents (8, 8, 8)
        let alone = atss_match(&[b], &grid, &AtssConfig::default());
        assert!(
            alone.iter().any(|m| m.anchor == exact),
            "b alone claims the anchor"
        );
        let matches = atss_match(&[a, b], &grid, &AtssConfig::default());
        let m = matches
            .iter()
            .find(|m| m.anchor == exact)
            .expect("exact anchor is positive");
        assert_eq!(m.target, 0);
        assert!(
            matches.iter().any(|m| m.target == 1),
            "b keeps other anchors"
        );
        assert_eq!(
            matches
                .iter()
                .map(|m| (m.anchor, m.target))
                .collect::<Vec<_>>(),
            brute_force(&[a, b], &grid, 4)
        );
    }

    #[test]
    fn matches_agree_with_a_brute_force_reference_on_two_levels() {
        let sizes: AnchorSizes = [[3.0, 6.0, 9.0], [2.0, 5.0, 7.0], [4.0, 8.0, 12.0]];
        let grid = AnchorGrid::new([16, 16, 32], &[[8, 8, 16], [4, 4, 8]], &sizes).unwrap();
        let targets = [
            [1.0, 2.0, 3.0, 7.5, 9.0, 12.0],
            [6.0, 0.0, 14.0, 15.0, 11.0, 31.0],
            [3.3, 3.3, 3.3, 4.4, 4.4, 4.4],
        ];
        let matches = atss_match(&targets, &grid, &AtssConfig::default());
        let reference = brute_force(&targets, &grid, 4);
        assert!(!reference.is_empty());
        assert_eq!(
            matches
                .iter()
                .map(|m| (m.anchor, m.target))
                .collect::<Vec<_>>(),
            reference
        );
    }
}
