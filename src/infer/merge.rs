//! Merging detections: per prediction "model" (one TTA variant) over the whole case, then
//! across variants with weighted box clustering (WBC) or NMS (nnDetection's
//! `BoxEnsemblerSelective`, `batched_weighted_nms`, `batched_wbc`).

use serde::{Deserialize, Serialize};

use super::InferError;
use super::config::{InferenceConfig, Merge};
use crate::nn::PatchDetections;
use crate::volume::boxes::{Box3, batched_nms, iou};

/// Detections with a weight per box (the tile position weight, or 1 after weighted NMS).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightedDetections {
    /// Boxes `[d0, h0, w0, d1, h1, w1]`.
    pub boxes: Vec<Box3>,
    /// Scores in [0, 1].
    pub scores: Vec<f64>,
    /// Classes (0-based).
    pub classes: Vec<usize>,
    /// Weight of every box.
    pub weights: Vec<f64>,
}

impl WeightedDetections {
    /// Number of boxes.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there is no box.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Append one box.
    pub fn push(&mut self, b: Box3, score: f64, class: usize, weight: f64) {
        self.boxes.push(b);
        self.scores.push(score);
        self.classes.push(class);
        self.weights.push(weight);
    }

    /// Detections with weight 1 (e.g. to cluster plain detections).
    pub fn unweighted(d: &PatchDetections) -> Self {
        WeightedDetections {
            boxes: d.boxes.clone(),
            scores: d.scores.clone(),
            classes: d.classes.clone(),
            weights: vec![1.0; d.boxes.len()],
        }
    }

    /// The boxes, scores and classes without weights.
    pub fn detections(&self) -> PatchDetections {
        PatchDetections {
            boxes: self.boxes.clone(),
            scores: self.scores.clone(),
            classes: self.classes.clone(),
        }
    }

    /// Check that the four lists have the same length and that numbers are finite.
    pub fn validate(&self) -> Result<(), InferError> {
        let n = self.boxes.len();
        if self.scores.len() != n || self.classes.len() != n || self.weights.len() != n {
            return Err(InferError::InvalidInput(format!(
                "{n} boxes but {} scores, {} classes and {} weights",
                self.scores.len(),
                self.classes.len(),
                self.weights.len()
            )));
        }
        for (i, b) in self.boxes.iter().enumerate() {
            crate::volume::boxes::validate(b)
                .map_err(|e| InferError::InvalidInput(format!("box {i}: {e}")))?;
        }
        if let Some(i) = self.scores.iter().position(|s| !s.is_finite()) {
            return Err(InferError::InvalidInput(format!(
                "score {i} is {}",
                self.scores[i]
            )));
        }
        if let Some(i) = self
            .weights
            .iter()
            .position(|w| !(w.is_finite() && *w >= 0.0))
        {
            return Err(InferError::InvalidInput(format!(
                "weight {i} is {} (weights must be finite and non-negative)",
                self.weights[i]
            )));
        }
        Ok(())
    }

    /// The subset at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        WeightedDetections {
            boxes: indices.iter().map(|&i| self.boxes[i]).collect(),
            scores: indices.iter().map(|&i| self.scores[i]).collect(),
            classes: indices.iter().map(|&i| self.classes[i]).collect(),
            weights: indices.iter().map(|&i| self.weights[i]).collect(),
        }
    }

    /// Keep the `k` highest-scoring boxes, sorted by descending score (ties keep input order).
    pub fn top_k(&self, k: usize) -> Self {
        let mut order = descending(&self.scores);
        order.truncate(k);
        self.select(&order)
    }
}

/// Indices sorted by descending value; ties keep input order.
fn descending(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]).then(i.cmp(&j)));
    order
}

/// Post-process the detections of one variant over the whole case (nnDetection's
/// `postprocess_image`): top `model_topk` by score, scores `> score_threshold`, clip to the
/// case `shape`, drop boxes with a side `< remove_small_boxes`, class-wise NMS at `model_iou`
/// (weighted: ranked by score × weight, survivors keep their score and get weight 1; plain:
/// ranked by score, weights kept), then the first `model_detections` in NMS rank order.
pub fn postprocess_variant(
    detections: &WeightedDetections,
    shape: [usize; 3],
    cfg: &InferenceConfig,
) -> Result<WeightedDetections, InferError> {
    detections.validate()?;
    let top = detections.top_k(cfg.model_topk);
    let mut kept = WeightedDetections::default();
    for i in 0..top.len() {
        if top.scores[i] <= cfg.score_threshold {
            // Sorted by score: nothing after this passes either.
            break;
        }
        let mut b = top.boxes[i];
        for a in 0..3 {
            let limit = shape[a] as f64;
            b[a] = b[a].clamp(0.0, limit);
            b[a + 3] = b[a + 3].clamp(0.0, limit);
        }
        if (0..3).any(|a| b[a + 3] - b[a] < cfg.remove_small_boxes) {
            continue;
        }
        kept.push(b, top.scores[i], top.classes[i], top.weights[i]);
    }
    let ranking: Vec<f64> = if cfg.weighted_nms {
        kept.scores
            .iter()
            .zip(&kept.weights)
            .map(|(s, w)| s * w)
            .collect()
    } else {
        kept.scores.clone()
    };
    let mut keep = batched_nms(&kept.boxes, &ranking, &kept.classes, cfg.model_iou);
    keep.truncate(cfg.model_detections);
    let mut out = kept.select(&keep);
    if cfg.weighted_nms {
        out.weights.iter_mut().for_each(|w| *w = 1.0);
    }
    Ok(out)
}

/// Weighted box clustering of one class list (nnDetection's `batched_wbc`, `use_area` off,
/// missing weight 1), class by class.
///
/// Per class, repeat until no box is left: take the highest-scoring remaining box h; its
/// cluster is every remaining box with IoU(h, ·) `> iou_threshold` (h always included); with
/// `v_i = IoU(h, i) · w_i` the cluster becomes one box with
/// `score = Σ v_i s_i / (Σ v_i + max(0, expected − |cluster|) · mean(v_i))` and
/// `box = Σ v_i s_i · box_i / Σ v_i s_i`, emitted when `score > score_threshold`. `expected` is
/// the number of predictions expected per object (the number of merged variants), so objects
/// that some variants missed are damped. Output: classes ascending, within a class in the
/// order of the seed scores.
pub fn weighted_box_clustering(
    detections: &WeightedDetections,
    iou_threshold: f64,
    expected: f64,
    score_threshold: f64,
) -> Result<PatchDetections, InferError> {
    detections.validate()?;
    if !expected.is_finite() {
        return Err(InferError::InvalidInput(format!(
            "the expected number of predictions per object is {expected}"
        )));
    }
    let mut out = PatchDetections::default();
    let mut classes: Vec<usize> = detections.classes.clone();
    classes.sort_unstable();
    classes.dedup();
    for class in classes {
        let members: Vec<usize> = (0..detections.len())
            .filter(|&i| detections.classes[i] == class)
            .collect();
        let scores: Vec<f64> = members.iter().map(|&i| detections.scores[i]).collect();
        let mut pool: Vec<usize> = descending(&scores)
            .into_iter()
            .map(|k| members[k])
            .collect();
        while let Some(&seed) = pool.first() {
            let seed_box = detections.boxes[seed];
            // (index, IoU with the seed) of the cluster members and of the rest of the pool.
            type Members = Vec<(usize, f64)>;
            let (cluster, rest): (Members, Members) = pool
                .iter()
                .map(|&i| (i, iou(&seed_box, &detections.boxes[i])))
                .partition(|&(i, o)| i == seed || o > iou_threshold);
            pool = rest.into_iter().map(|(i, _)| i).collect();
            // A degenerate seed (IoU NaN with itself) still counts fully for itself.
            let v: Vec<f64> = cluster
                .iter()
                .map(|&(i, o)| if i == seed { 1.0 } else { o } * detections.weights[i])
                .collect();
            let v_sum: f64 = v.iter().sum();
            let vs: Vec<f64> = cluster
                .iter()
                .zip(&v)
                .map(|(&(i, _), vi)| vi * detections.scores[i])
                .collect();
            let vs_sum: f64 = vs.iter().sum();
            let missing = (expected - cluster.len() as f64).max(0.0);
            let denominator = v_sum + missing * v_sum / cluster.len() as f64;
            if !(vs_sum > 0.0 && denominator > 0.0) {
                continue;
            }
            let score = vs_sum / denominator;
            if score <= score_threshold {
                continue;
            }
            let mut merged = [0.0; 6];
            for (&(i, _), w) in cluster.iter().zip(&vs) {
                for (m, c) in merged.iter_mut().zip(&detections.boxes[i]) {
                    *m += w * c;
                }
            }
            // A weighted mean lies within its members' range; clamping to it removes the
            // last-bit rounding that would push a box past the volume edge its members touch.
            for (a, m) in merged.iter_mut().enumerate() {
                let (lo, hi) =
                    cluster
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |r, &(i, _)| {
                            let c = detections.boxes[i][a];
                            (r.0.min(c), r.1.max(c))
                        });
                *m = (*m / vs_sum).clamp(lo, hi);
            }
            out.boxes.push(merged);
            out.scores.push(score);
            out.classes.push(class);
        }
    }
    Ok(out)
}

/// Merge the post-processed detections of all variants: concatenate, keep the top
/// `ensemble_topk` by score, then WBC (expected cluster size = number of variants) or
/// class-wise NMS at `ensemble_iou`, scores `> ensemble_score_threshold`, and the
/// `max_detections` highest scores (sorted by descending score).
pub fn merge_variants(
    variants: &[WeightedDetections],
    cfg: &InferenceConfig,
) -> Result<PatchDetections, InferError> {
    let mut all = WeightedDetections::default();
    for v in variants {
        v.validate()?;
        for i in 0..v.len() {
            all.push(v.boxes[i], v.scores[i], v.classes[i], v.weights[i]);
        }
    }
    let all = all.top_k(cfg.ensemble_topk);
    let merged = match cfg.merge {
        Merge::Wbc => weighted_box_clustering(
            &all,
            cfg.ensemble_iou,
            variants.len() as f64,
            cfg.ensemble_score_threshold,
        )?,
        Merge::Nms => {
            let keep = batched_nms(&all.boxes, &all.scores, &all.classes, cfg.ensemble_iou);
            let keep: Vec<usize> = keep
                .into_iter()
                .filter(|&i| all.scores[i] > cfg.ensemble_score_threshold)
                .collect();
            all.select(&keep).detections()
        }
    };
    let mut order = descending(&merged.scores);
    order.truncate(cfg.max_detections);
    Ok(PatchDetections {
        boxes: order.iter().map(|&i| merged.boxes[i]).collect(),
        scores: order.iter().map(|&i| merged.scores[i]).collect(),
        classes: order.iter().map(|&i| merged.classes[i]).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn dets(items: &[(Box3, f64, usize, f64)]) -> WeightedDetections {
        let mut d = WeightedDetections::default();
        for &(b, s, c, w) in items {
            d.push(b, s, c, w);
        }
        d
    }

    #[test]
    fn wbc_boxes_stay_inside_the_range_of_their_members() {
        // Weighted means of equal coordinates can round one ulp past them; 0.1 + 0.2 style
        // weights make that happen without the clamp.
        let edge = [14.3, 20.1, 7.7, 24.0, 32.0, 16.0];
        let mut input = WeightedDetections::default();
        for (k, w) in [0.1, 0.2, 0.3, 0.7, 0.11, 0.13, 0.17]
            .into_iter()
            .enumerate()
        {
            let mut b = edge;
            b[0] += 0.01 * k as f64;
            input.push(b, 0.3 + 0.09 * k as f64, 0, w);
        }
        let merged = weighted_box_clustering(&input, 0.1, 7.0, 0.0).unwrap();
        assert_eq!(merged.boxes.len(), 1);
        let b = merged.boxes[0];
        assert_eq!(
            &b[1..],
            &edge[1..],
            "coordinates shared by all members are kept exactly"
        );
        assert!(b[0] >= 14.3 && b[0] <= 14.3 + 0.06 + 1e-12);
    }

    #[test]
    fn wbc_of_a_hand_made_cluster() {
        // Seed A (score 0.9, weight 1), B shifted by 1 on d (IoU 9/11 with A, score 0.6,
        // weight 0.5), C far away (score 0.8), D of another class on top of A.
        let a = [0.0, 0.0, 0.0, 10.0, 10.0, 10.0];
        let b = [1.0, 0.0, 0.0, 11.0, 10.0, 10.0];
        let c = [50.0, 50.0, 50.0, 54.0, 54.0, 54.0];
        let input = dets(&[
            (b, 0.6, 0, 0.5),
            (c, 0.8, 0, 1.0),
            (a, 0.9, 0, 1.0),
            (a, 0.7, 1, 1.0),
        ]);
        let out = weighted_box_clustering(&input, 0.5, 3.0, 0.0).unwrap();
        assert_eq!(out.classes, vec![0, 0, 1]);
        // Cluster {A, B}: v = [1, 9/11 · 0.5]; 1 missing of 3 expected.
        let v = [1.0, 9.0 / 11.0 * 0.5];
        let vs = [v[0] * 0.9, v[1] * 0.6];
        let v_sum = v[0] + v[1];
        let expected_score = (vs[0] + vs[1]) / (v_sum + 1.0 * v_sum / 2.0);
        assert!(
            close(out.scores[0], expected_score),
            "{} vs {expected_score}",
            out.scores[0]
        );
        let d0 = (vs[0] * 0.0 + vs[1] * 1.0) / (vs[0] + vs[1]);
        let d1 = (vs[0] * 10.0 + vs[1] * 11.0) / (vs[0] + vs[1]);
        let want = [d0, 0.0, 0.0, d1, 10.0, 10.0];
        assert!(
            out.boxes[0].iter().zip(&want).all(|(x, y)| close(*x, *y)),
            "{:?}",
            out.boxes[0]
        );
        // Singletons: score s · v / (v + 2 v) = s / 3, box unchanged.
        assert!(close(out.scores[1], 0.8 / 3.0));
        assert_eq!(out.boxes[1], c);
        assert!(close(out.scores[2], 0.7 / 3.0));
        assert_eq!(out.boxes[2], a);
        // With one expected prediction a singleton keeps its score.
        let single = weighted_box_clustering(&dets(&[(c, 0.8, 0, 0.7)]), 0.5, 1.0, 0.0).unwrap();
        assert!(close(single.scores[0], 0.8));
        // The score threshold drops weak clusters.
        let strict = weighted_box_clustering(&input, 0.5, 3.0, 0.3).unwrap();
        assert_eq!(strict.scores.len(), 1);
    }

    #[test]
    fn wbc_with_full_clusters_is_not_damped_and_iou_boundary_is_exclusive() {
        // Three identical boxes from three variants: score = weighted mean of the scores.
        let a = [0.0, 0.0, 0.0, 4.0, 4.0, 4.0];
        let input = dets(&[(a, 0.9, 0, 1.0), (a, 0.6, 0, 0.5), (a, 0.3, 0, 1.0)]);
        let out = weighted_box_clustering(&input, 0.5, 3.0, 0.0).unwrap();
        assert_eq!(out.scores.len(), 1);
        assert!(close(out.scores[0], (0.9 + 0.3 + 0.5 * 0.6) / 2.5));
        // IoU exactly 0.5 is not > 0.5: two clusters.
        let half = [0.0, 0.0, 0.0, 4.0, 4.0, 6.0]; // IoU with a = 64 / 96 > 0.5
        let b = [0.0, 0.0, 0.0, 4.0, 4.0, 8.0]; // IoU with a = 64 / 128 = 0.5
        assert!(close(iou(&a, &b), 0.5));
        let two =
            weighted_box_clustering(&dets(&[(a, 0.9, 0, 1.0), (b, 0.8, 0, 1.0)]), 0.5, 1.0, 0.0)
                .unwrap();
        assert_eq!(two.scores.len(), 2);
        let one = weighted_box_clustering(
            &dets(&[(a, 0.9, 0, 1.0), (half, 0.8, 0, 1.0)]),
            0.5,
            1.0,
            0.0,
        )
        .unwrap();
        assert_eq!(one.scores.len(), 1);
    }

    #[test]
    fn nms_keeps_the_best_box_while_wbc_averages_and_damps() {
        let a = [0.0, 0.0, 0.0, 10.0, 10.0, 10.0];
        let b = [0.0, 0.0, 0.0, 10.0, 10.0, 12.0]; // IoU 10/12
        let lonely = [30.0, 30.0, 30.0, 34.0, 34.0, 34.0];
        let variants = vec![
            dets(&[(a, 0.9, 0, 1.0), (lonely, 0.9, 0, 1.0)]),
            dets(&[(b, 0.5, 0, 1.0)]),
        ];
        let nms_cfg = InferenceConfig {
            merge: Merge::Nms,
            ..Default::default()
        };
        let nms = merge_variants(&variants, &nms_cfg).unwrap();
        assert_eq!(nms.boxes, vec![a, lonely]);
        assert_eq!(nms.scores, vec![0.9, 0.9]);
        let wbc = merge_variants(&variants, &InferenceConfig::default()).unwrap();
        // The object both variants found: full cluster, averaged box and score.
        let v = [1.0, 10.0 / 12.0];
        let score = (0.9 * v[0] + 0.5 * v[1]) / (v[0] + v[1]);
        // The object only one variant found: damped to half its score, ranked second.
        assert!(
            close(wbc.scores[0], score) && close(wbc.scores[1], 0.45),
            "{:?}",
            wbc.scores
        );
        assert_eq!(wbc.boxes[1], lonely);
        let w5 = (0.9 * v[0] * 10.0 + 0.5 * v[1] * 12.0) / (0.9 * v[0] + 0.5 * v[1]);
        assert!(close(wbc.boxes[0][5], w5) && wbc.boxes[0][5] > 10.0 && wbc.boxes[0][5] < 12.0);
        let capped = merge_variants(
            &variants,
            &InferenceConfig {
                max_detections: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(capped.scores.len(), 1);
    }

    #[test]
    fn variant_postprocessing_clips_thresholds_and_ranks_by_weight() {
        let cfg = InferenceConfig {
            score_threshold: 0.2,
            ..Default::default()
        };
        let central = [4.0, 4.0, 4.0, 8.0, 8.0, 8.0];
        let overlapping = [4.5, 4.0, 4.0, 8.5, 8.0, 8.0]; // IoU > 0.1 with central
        let outside = [-5.0, 0.0, 0.0, -1.0, 4.0, 4.0]; // clipped to zero thickness
        let crossing = [14.0, 0.0, 0.0, 20.0, 4.0, 4.0]; // clipped to [14, 16)
        let weak = [0.0, 10.0, 10.0, 2.0, 12.0, 12.0];
        let input = dets(&[
            (overlapping, 0.8, 0, 0.5),
            (central, 0.7, 0, 1.0),
            (outside, 0.9, 0, 1.0),
            (crossing, 0.6, 1, 0.9),
            (weak, 0.1, 0, 1.0),
        ]);
        let out = postprocess_variant(&input, [16, 16, 16], &cfg).unwrap();
        // Weighted NMS: 0.7 · 1 beats 0.8 · 0.5, survivors get weight 1.
        assert_eq!(out.boxes, vec![central, [14.0, 0.0, 0.0, 16.0, 4.0, 4.0]]);
        assert_eq!(out.scores, vec![0.7, 0.6]);
        assert_eq!(out.weights, vec![1.0, 1.0]);
        // Plain NMS ranks by score and keeps weights.
        let plain = postprocess_variant(
            &input,
            [16, 16, 16],
            &InferenceConfig {
                weighted_nms: false,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(plain.boxes[0], overlapping);
        assert_eq!(plain.weights, vec![0.5, 0.9]);
        let one = postprocess_variant(
            &input,
            [16, 16, 16],
            &InferenceConfig {
                model_detections: 1,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(one.boxes, vec![central]);
    }

    #[test]
    fn validation_names_the_bad_entry() {
        let mut d = dets(&[([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 0.5, 0, 1.0)]);
        assert!(d.validate().is_ok());
        d.weights[0] = -1.0;
        assert!(d.validate().unwrap_err().to_string().contains("weight 0"));
        d.weights.push(1.0);
        assert!(d.validate().unwrap_err().to_string().contains("2 weights"));
        let cfg = InferenceConfig::default();
        assert!(postprocess_variant(&d, [4, 4, 4], &cfg).is_err());
        assert!(merge_variants(&[d.clone()], &cfg).is_err());
        assert!(weighted_box_clustering(&d, 0.5, 1.0, 0.0).is_err());
    }
}
