//! Axis-aligned 3D boxes `[d0, h0, w0, d1, h1, w1]` in continuous voxel coordinates.
//!
//! A box's volume is `prod(max - min)` (no `+1`), as in nnDetection's evaluator. IoU is
//! computed in f64 without an epsilon, so two degenerate boxes give NaN, exactly like numpy.

use rayon::prelude::*;

/// A box `[d0, h0, w0, d1, h1, w1]`; its volume is `prod(max - min)`.
pub type Box3 = [f64; 6];

/// Volume of a box: `prod(max - min)`, zero for inverted axes.
pub fn box_volume(b: &Box3) -> f64 {
    (0..3).map(|a| (b[a + 3] - b[a]).max(0.0)).product()
}

/// Intersection volume of two boxes.
pub fn intersection(a: &Box3, b: &Box3) -> f64 {
    (0..3)
        .map(|ax| (a[ax + 3].min(b[ax + 3]) - a[ax].max(b[ax])).max(0.0))
        .product()
}

/// Intersection over union of two boxes, in f64 with no epsilon (nnDetection's `box_iou_np`).
pub fn iou(a: &Box3, b: &Box3) -> f64 {
    let inter = intersection(a, b);
    inter / (box_volume(a) + box_volume(b) - inter)
}

/// Generalised IoU: `IoU - (V_enclose - V_union) / V_enclose`, in [-1, 1].
pub fn giou(a: &Box3, b: &Box3) -> f64 {
    let inter = intersection(a, b);
    let union = box_volume(a) + box_volume(b) - inter;
    let enclose: f64 = (0..3)
        .map(|ax| (a[ax + 3].max(b[ax + 3]) - a[ax].min(b[ax])).max(0.0))
        .product();
    inter / union - (enclose - union) / enclose
}

/// Pairwise IoU matrix, row-major `[a.len() × b.len()]`; rows are computed in parallel.
pub fn iou_matrix(a: &[Box3], b: &[Box3]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() * b.len()];
    if b.is_empty() {
        return out;
    }
    // Small problems are faster on one thread than through rayon's scheduler.
    if a.len() * b.len() < 4096 {
        for (row, ba) in out.chunks_mut(b.len()).zip(a) {
            for (o, bb) in row.iter_mut().zip(b) {
                *o = iou(ba, bb);
            }
        }
    } else {
        out.par_chunks_mut(b.len()).zip(a.par_iter()).for_each(|(row, ba)| {
            for (o, bb) in row.iter_mut().zip(b) {
                *o = iou(ba, bb);
            }
        });
    }
    out
}

/// Centre `[cd, ch, cw]` of a box.
pub fn center(b: &Box3) -> [f64; 3] {
    [(b[0] + b[3]) / 2.0, (b[1] + b[4]) / 2.0, (b[2] + b[5]) / 2.0]
}

/// Extent `[sd, sh, sw]` of a box.
pub fn extent(b: &Box3) -> [f64; 3] {
    [b[3] - b[0], b[4] - b[1], b[5] - b[2]]
}

/// Greedy non-maximum suppression; returns kept indices in descending-score order.
///
/// A box is suppressed when its IoU with a kept, higher-scoring box is **greater** than
/// `iou_threshold` (torchvision / nnDetection semantics). Ties in score keep input order.
pub fn nms(boxes: &[Box3], scores: &[f64], iou_threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[rank + 1..] {
            if !suppressed[j] && iou(&boxes[i], &boxes[j]) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Class-wise NMS: boxes of different classes never suppress each other.
/// Returns kept indices sorted by descending score.
pub fn batched_nms(boxes: &[Box3], scores: &[f64], classes: &[usize], iou_threshold: f64) -> Vec<usize> {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &c) in classes.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut keep = Vec::new();
    for idx in by_class.values() {
        let b: Vec<Box3> = idx.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        keep.extend(nms(&b, &s, iou_threshold).into_iter().map(|k| idx[k]));
    }
    keep.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    keep
}

/// Check that a box has six finite coordinates with `min <= max` on every axis.
pub fn validate(b: &[f64]) -> Result<Box3, String> {
    if b.len() != 6 {
        return Err(format!("a box needs 6 numbers [d0, h0, w0, d1, h1, w1], got {}", b.len()));
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("box {b:?} has a non-finite coordinate"));
    }
    for ax in 0..3 {
        if b[ax] > b[ax + 3] {
            return Err(format!(
                "box {b:?} has min > max on axis {} ({} > {})",
                ["d", "h", "w"][ax],
                b[ax],
                b[ax + 3]
            ));
        }
    }
    Ok([b[0], b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_half_overlapping_cubes() {
        let a = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let b = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0];
        assert_eq!(intersection(&a, &b), 4.0);
        assert!((iou(&a, &b) - 4.0 / 12.0).abs() < 1e-15);
        assert_eq!(iou(&a, &a), 1.0);
    }

    #[test]
    fn giou_of_disjoint_boxes_is_negative() {
        let a = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let b = [2.0, 0.0, 0.0, 3.0, 1.0, 1.0];
        // union 2, enclosing 3 → GIoU = 0 - 1/3
        assert!((giou(&a, &b) + 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(giou(&a, &a), 1.0);
    }

    #[test]
    fn iou_matrix_matches_scalar_iou() {
        let a: Vec<Box3> = (0..70).map(|i| [i as f64, 0.0, 0.0, i as f64 + 3.0, 2.0, 2.0]).collect();
        let b: Vec<Box3> = (0..80).map(|i| [i as f64 * 0.5, 0.0, 0.0, i as f64 * 0.5 + 2.0, 2.0, 3.0]).collect();
        let m = iou_matrix(&a, &b);
        for (i, ba) in a.iter().enumerate() {
            for (j, bb) in b.iter().enumerate() {
                assert_eq!(m[i * b.len() + j], iou(ba, bb));
            }
        }
    }

    #[test]
    fn nms_suppresses_only_above_threshold_and_respects_classes() {
        let boxes = [
            [0.0, 0.0, 0.0, 10.0, 10.0, 10.0],
            [1.0, 0.0, 0.0, 11.0, 10.0, 10.0], // IoU 9/11 with box 0
            [50.0, 50.0, 50.0, 60.0, 60.0, 60.0],
        ];
        let scores = [0.9, 0.95, 0.5];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.9), vec![1, 0, 2]);
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 0], 0.5), vec![1, 0, 2]);
    }

    #[test]
    fn validate_names_the_problem() {
        assert!(validate(&[0.0; 5]).unwrap_err().contains("6 numbers"));
        assert!(validate(&[2.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap_err().contains("min > max on axis d"));
        assert!(validate(&[0.0, 0.0, f64::NAN, 1.0, 1.0, 1.0]).unwrap_err().contains("non-finite"));
    }
}
