//! The set-prediction loss of Deformable DETR: Hungarian matching per image, then sigmoid focal
//! classification over every query, L1 on normalised `(cz, cy, cx, d, h, w)` boxes and
//! GIoU-3D on voxel corner boxes of the matched queries, each summed and divided by the
//! number of ground-truth boxes in the batch (as the 2D original does).
//!
//! The focal loss and the GIoU are the shared ones of `nn::losses`.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::matcher::{MatcherConfig, linear_sum_assignment, match_costs};
use crate::nn::{NnError, losses};
use crate::volume::boxes::Box3;

/// Loss weights and focal-loss parameters (Deformable DETR: α 0.25, γ 2; weights 2 / 5 / 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SetLossConfig {
    /// Focal α (weight of positives).
    pub focal_alpha: f64,
    /// Focal γ (down-weighting of easy examples).
    pub focal_gamma: f64,
    /// Weight of the focal classification loss.
    pub cls_weight: f64,
    /// Weight of the L1 box loss.
    pub l1_weight: f64,
    /// Weight of the GIoU box loss.
    pub giou_weight: f64,
    /// Add the same losses on the output of every earlier decoder layer (and on the encoder
    /// proposals in two-stage mode).
    pub auxiliary: bool,
}

impl Default for SetLossConfig {
    fn default() -> Self {
        Self {
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            cls_weight: 2.0,
            l1_weight: 5.0,
            giou_weight: 2.0,
            auxiliary: true,
        }
    }
}

/// Per-axis patch extent, the scale from normalised to voxel coordinates.
pub fn patch_scale(patch: [usize; 3]) -> [f64; 3] {
    patch.map(|n| n as f64)
}

/// A normalised `(cz, cy, cx, d, h, w)` box as voxel corners `[d0, h0, w0, d1, h1, w1]`.
pub fn normalized_to_corners(b: &[f64; 6], scale: [f64; 3]) -> Box3 {
    std::array::from_fn(|k| {
        let a = k % 3;
        let half = b[a + 3] / 2.0;
        let edge = if k < 3 { b[a] - half } else { b[a] + half };
        edge * scale[a]
    })
}

/// Voxel corners `[d0, h0, w0, d1, h1, w1]` as a normalised `(cz, cy, cx, d, h, w)` box.
pub fn corners_to_normalized(b: &Box3, scale: [f64; 3]) -> [f64; 6] {
    std::array::from_fn(|k| {
        let a = k % 3;
        if k < 3 {
            (b[a] + b[a + 3]) / 2.0 / scale[a]
        } else {
            (b[a + 3] - b[a]) / scale[a]
        }
    })
}

/// [`normalized_to_corners`] on a tensor of boxes.
///
/// # Shapes
/// - boxes: `[P, 6]`; output: `[P, 6]`
pub fn normalized_to_corners_tensor<B: Backend>(
    boxes: Tensor<B, 2>,
    scale: [f64; 3],
) -> Tensor<B, 2> {
    let [p, _] = boxes.dims();
    let device = boxes.device();
    let centre = boxes.clone().slice([0..p, 0..3]);
    let half = boxes.slice([0..p, 3..6]).mul_scalar(0.5);
    let s = Tensor::<B, 2>::from_data(
        TensorData::new(scale.iter().map(|&v| v as f32).collect(), [1, 3]),
        &device,
    );
    Tensor::cat(
        vec![
            (centre.clone() - half.clone()) * s.clone(),
            (centre + half) * s,
        ],
        1,
    )
}

/// Ground truth of a batch in normalised form.
#[derive(Clone, Debug)]
pub struct SetTargets {
    /// Normalised `(cz, cy, cx, d, h, w)` boxes per image.
    pub boxes: Vec<Vec<[f64; 6]>>,
    /// Classes per image.
    pub classes: Vec<Vec<usize>>,
    /// The patch size `[D, H, W]`.
    pub patch: [usize; 3],
}

impl SetTargets {
    /// Targets from voxel corner boxes of a patch of size `patch`.
    pub fn new(boxes: &[Vec<Box3>], classes: &[Vec<usize>], patch: [usize; 3]) -> Self {
        let scale = patch_scale(patch);
        SetTargets {
            boxes: boxes
                .iter()
                .map(|bs| bs.iter().map(|b| corners_to_normalized(b, scale)).collect())
                .collect(),
            classes: classes.to_vec(),
            patch,
        }
    }

    /// Number of boxes in the batch, at least 1 (the loss normaliser).
    pub fn normaliser(&self) -> f64 {
        (self.boxes.iter().map(Vec::len).sum::<usize>()).max(1) as f64
    }
}

/// The three weighted loss terms of one set of predictions, plus matching statistics.
pub struct SetLoss<B: Backend> {
    /// Weighted focal classification loss `[1]`.
    pub cls: Tensor<B, 1>,
    /// Weighted L1 box loss `[1]`.
    pub l1: Tensor<B, 1>,
    /// Weighted GIoU loss `[1]`.
    pub giou: Tensor<B, 1>,
    /// Mean IoU of the matched predictions with their targets (NaN without targets).
    pub matched_iou: f64,
}

/// The matched `(query, target)` pairs of every image.
pub fn match_batch<B: Backend>(
    logits: &Tensor<B, 3>,
    boxes: &Tensor<B, 3>,
    targets: &SetTargets,
    matcher: &MatcherConfig,
    loss: &SetLossConfig,
) -> Result<Vec<Vec<(usize, usize)>>, NnError> {
    let [n, q, k] = logits.dims();
    let host = |t: &Tensor<B, 3>| -> Vec<f32> {
        t.clone()
            .detach()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default()
    };
    let all_logits = host(logits);
    let all_boxes = host(boxes);
    (0..n)
        .map(|i| {
            let t = targets.boxes[i].len();
            if t == 0 {
                return Ok(Vec::new());
            }
            let costs = match_costs(
                &all_logits[i * q * k..(i + 1) * q * k],
                &all_boxes[i * q * 6..(i + 1) * q * 6],
                k,
                &targets.boxes[i],
                &targets.classes[i],
                targets.patch,
                matcher,
                (loss.focal_alpha, loss.focal_gamma),
            );
            linear_sum_assignment(&costs, q, t)
        })
        .collect()
}

/// The loss of one decoder layer's (or the proposals') predictions.
///
/// # Shapes
/// - logits: `[N, Q, K]`; boxes: `[N, Q, 6]` normalised (sigmoid outputs)
pub fn set_loss<B: Backend>(
    logits: Tensor<B, 3>,
    boxes: Tensor<B, 3>,
    targets: &SetTargets,
    matcher: &MatcherConfig,
    config: &SetLossConfig,
) -> Result<SetLoss<B>, NnError> {
    let [n, q, k] = logits.dims();
    let device = logits.device();
    let matches = match_batch(&logits, &boxes, targets, matcher, config)?;
    let normaliser = targets.normaliser();
    let mut one_hot = vec![0.0f32; n * q * k];
    let mut rows = Vec::new();
    let mut target_rows: Vec<f32> = Vec::new();
    for (i, pairs) in matches.iter().enumerate() {
        for &(query, target) in pairs {
            one_hot[(i * q + query) * k + targets.classes[i][target]] = 1.0;
            rows.push((i * q + query) as i64);
            target_rows.extend(targets.boxes[i][target].iter().map(|&v| v as f32));
        }
    }
    let one_hot = Tensor::<B, 2>::from_data(TensorData::new(one_hot, [n * q, k]), &device);
    let cls = losses::sigmoid_focal_loss(
        logits.reshape([n * q, k]),
        one_hot,
        config.focal_alpha,
        config.focal_gamma,
    )
    .mul_scalar((n * q * k) as f64 / normaliser * config.cls_weight);
    let m = rows.len();
    if m == 0 {
        let zero = Tensor::<B, 1>::zeros([1], &device);
        return Ok(SetLoss {
            cls,
            l1: zero.clone(),
            giou: zero,
            matched_iou: f64::NAN,
        });
    }
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [m]), &device);
    let predicted = boxes.reshape([n * q, 6]).select(0, index);
    let target = Tensor::<B, 2>::from_data(TensorData::new(target_rows, [m, 6]), &device);
    let l1 = (predicted.clone() - target.clone())
        .abs()
        .sum()
        .mul_scalar(config.l1_weight / normaliser);
    let scale = patch_scale(targets.patch);
    let g = losses::generalized_iou(
        normalized_to_corners_tensor(predicted.clone(), scale),
        normalized_to_corners_tensor(target.clone(), scale),
    );
    let giou = g
        .neg()
        .add_scalar(1.0)
        .sum()
        .mul_scalar(config.giou_weight / normaliser);
    let host = |t: Tensor<B, 2>| -> Vec<f64> {
        t.detach()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default()
    };
    let (p, t) = (host(predicted), host(target));
    let matched_iou = (0..m)
        .map(|r| {
            let a: [f64; 6] = std::array::from_fn(|c| p[r * 6 + c]);
            let b: [f64; 6] = std::array::from_fn(|c| t[r * 6 + c]);
            crate::volume::boxes::iou(
                &normalized_to_corners(&a, scale),
                &normalized_to_corners(&b, scale),
            )
        })
        .sum::<f64>()
        / m as f64;
    Ok(SetLoss {
        cls,
        l1,
        giou,
        matched_iou,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};

    #[test]
    fn corner_conversions_round_trip() {
        let scale = [32.0, 16.0, 8.0];
        let b = [2.0, 3.0, 1.0, 10.0, 7.0, 5.0];
        let n = corners_to_normalized(&b, scale);
        assert!((n[0] - 6.0 / 32.0).abs() < 1e-12 && (n[5] - 0.5).abs() < 1e-12);
        let back = normalized_to_corners(&n, scale);
        for k in 0..6 {
            assert!((back[k] - b[k]).abs() < 1e-12);
        }
        let t = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(n.iter().map(|&v| v as f32).collect(), [1, 6]),
            &test_device(),
        );
        let corners = tensor_values(normalized_to_corners_tensor(t, scale));
        for k in 0..6 {
            assert!((corners[k] - b[k]).abs() < 1e-5, "{corners:?}");
        }
    }

    #[test]
    fn giou_3d_of_disjoint_nested_and_overlapping_boxes() {
        let cases: [(Box3, Box3, f64); 4] = [
            // Disjoint along d: no intersection, union 2, enclosing 3.
            (
                [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
                [2.0, 0.0, 0.0, 3.0, 1.0, 1.0],
                -1.0 / 3.0,
            ),
            // Nested: IoU = 8 / 64 and the enclosing box is the outer one.
            (
                [0.0, 0.0, 0.0, 4.0, 4.0, 4.0],
                [1.0, 1.0, 1.0, 3.0, 3.0, 3.0],
                0.125,
            ),
            // Partly overlapping cubes: intersection 1, union 15, enclosing 27.
            (
                [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
                [1.0, 1.0, 1.0, 3.0, 3.0, 3.0],
                1.0 / 15.0 - 12.0 / 27.0,
            ),
            // Identical.
            (
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                1.0,
            ),
        ];
        let scale = [8.0, 8.0, 8.0];
        let normalised = |bs: Vec<Box3>| -> Tensor<TestBackend, 2> {
            let flat: Vec<f32> = bs
                .iter()
                .flat_map(|b| corners_to_normalized(b, scale))
                .map(|v| v as f32)
                .collect();
            Tensor::from_data(TensorData::new(flat, [bs.len(), 6]), &test_device())
        };
        let a = normalised(cases.iter().map(|c| c.0).collect());
        let b = normalised(cases.iter().map(|c| c.1).collect());
        let g = tensor_values(losses::generalized_iou(
            normalized_to_corners_tensor(a, scale),
            normalized_to_corners_tensor(b, scale),
        ));
        for (k, (x, y, expected)) in cases.iter().enumerate() {
            assert!(
                (g[k] - expected).abs() < 1e-5,
                "case {k}: {} vs {expected}",
                g[k]
            );
            let host = crate::volume::boxes::giou(x, y);
            assert!((host - expected).abs() < 1e-9, "host case {k}: {host}");
        }
    }

    #[test]
    fn a_perfect_prediction_has_no_box_loss_and_is_matched() {
        let device = test_device();
        let patch = [16, 16, 16];
        let targets = SetTargets::new(&[vec![[4.0, 4.0, 4.0, 10.0, 12.0, 8.0]]], &[vec![0]], patch);
        let t = targets.boxes[0][0];
        let boxes: Vec<f32> = [[0.2, 0.2, 0.2, 0.1, 0.1, 0.1], t]
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let boxes = Tensor::<TestBackend, 3>::from_data(TensorData::new(boxes, [1, 2, 6]), &device);
        let logits = Tensor::<TestBackend, 3>::from_data(
            TensorData::new(vec![-4.0f32, 4.0], [1, 2, 1]),
            &device,
        );
        let loss = set_loss(
            logits,
            boxes,
            &targets,
            &MatcherConfig::default(),
            &SetLossConfig::default(),
        )
        .unwrap();
        assert!(tensor_values(loss.l1)[0].abs() < 1e-5);
        assert!(tensor_values(loss.giou)[0].abs() < 1e-5);
        assert!((loss.matched_iou - 1.0).abs() < 1e-5);
        assert!(tensor_values(loss.cls)[0] < 0.01);
    }
}
