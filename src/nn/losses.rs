//! Differentiable loss functions shared by the detectors: binary cross-entropy and focal loss
//! on logits, generalised IoU of boxes, dense cross-entropy and soft Dice.

use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::Backend;

/// Mean binary cross-entropy on logits: `mean(-(t·log σ(x) + (1−t)·log σ(−x)))`.
///
/// # Shapes
/// - logits, targets: `[S, C]`; output: `[1]`
pub fn binary_cross_entropy_with_logits<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
) -> Tensor<B, 1> {
    elementwise_bce(logits, targets).mean()
}

fn elementwise_bce<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 2> {
    let positive = activation::log_sigmoid(logits.clone());
    let negative = activation::log_sigmoid(logits.neg());
    (targets.clone() * positive + (targets.neg().add_scalar(1.0)) * negative).neg()
}

/// Mean sigmoid focal loss (Lin et al.): `α_t (1 − p_t)^γ · BCE`, with α_t = α for targets 1
/// and 1 − α for targets 0 (α < 0 disables the weighting).
///
/// # Shapes
/// - logits, targets: `[S, C]`; output: `[1]`
pub fn sigmoid_focal_loss<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
    alpha: f64,
    gamma: f64,
) -> Tensor<B, 1> {
    let p = activation::sigmoid(logits.clone());
    let ce = elementwise_bce(logits, targets.clone());
    let p_t = p.clone() * targets.clone()
        + (p.neg().add_scalar(1.0)) * (targets.clone().neg().add_scalar(1.0));
    let modulating = p_t.neg().add_scalar(1.0).clamp_min(0.0).powf_scalar(gamma);
    let mut loss = ce * modulating;
    if alpha >= 0.0 {
        let alpha_t = targets.clone().mul_scalar(alpha)
            + targets.neg().add_scalar(1.0).mul_scalar(1.0 - alpha);
        loss = loss * alpha_t;
    }
    loss.mean()
}

/// Generalised IoU of paired boxes `[d0, h0, w0, d1, h1, w1]`:
/// `IoU − (V_enclose − V_union) / V_enclose`, with 1e-7 added to the enclosing volume (and the
/// union) as nnDetection does. Values lie in [−1, 1].
///
/// # Shapes
/// - boxes_a, boxes_b: `[P, 6]`; output: `[P]`
pub fn generalized_iou<B: Backend>(boxes_a: Tensor<B, 2>, boxes_b: Tensor<B, 2>) -> Tensor<B, 1> {
    let [p, _] = boxes_a.dims();
    let a_min = boxes_a.clone().slice([0..p, 0..3]);
    let a_max = boxes_a.slice([0..p, 3..6]);
    let b_min = boxes_b.clone().slice([0..p, 0..3]);
    let b_max = boxes_b.slice([0..p, 3..6]);
    let volume = |lo: Tensor<B, 2>, hi: Tensor<B, 2>| prod_columns((hi - lo).clamp_min(0.0));
    let vol_a = volume(a_min.clone(), a_max.clone());
    let vol_b = volume(b_min.clone(), b_max.clone());
    let inter = volume(
        a_min.clone().max_pair(b_min.clone()),
        a_max.clone().min_pair(b_max.clone()),
    );
    let union = vol_a + vol_b - inter.clone();
    let enclose = volume(a_min.min_pair(b_min), a_max.max_pair(b_max)).add_scalar(1e-7);
    let iou = inter / union.clone().add_scalar(1e-7);
    iou - (enclose.clone() - union) / enclose
}

fn prod_columns<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let [p, _] = x.dims();
    let c0 = x.clone().slice([0..p, 0..1]);
    let c1 = x.clone().slice([0..p, 1..2]);
    let c2 = x.slice([0..p, 2..3]);
    (c0 * c1 * c2).reshape([p])
}

/// Mean cross-entropy of dense logits against one-hot targets (softmax over channels).
///
/// # Shapes
/// - logits, one_hot: `[N, S, D, H, W]`; output: `[1]`
pub fn dense_cross_entropy<B: Backend>(
    logits: Tensor<B, 5>,
    one_hot: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let [n, _, d, h, w] = logits.dims();
    let log_p = activation::log_softmax(logits, 1);
    (log_p * one_hot)
        .sum()
        .neg()
        .div_scalar((n * d * h * w) as f64)
}

/// `1 − mean Dice` of softmax probabilities, nnDetection / nnU-Net style: batch Dice (sums over
/// the batch and all voxels), background channel 0 excluded, `smooth` added to numerator and
/// denominator: `Dice_c = (2·TP + smooth) / (2·TP + FP + FN + smooth)`.
///
/// # Shapes
/// - logits, one_hot: `[N, S, D, H, W]` with S ≥ 2; output: `[1]`
pub fn soft_dice_loss<B: Backend>(
    logits: Tensor<B, 5>,
    one_hot: Tensor<B, 5>,
    smooth: f64,
) -> Tensor<B, 1> {
    let [n, s, d, h, w] = logits.dims();
    let probs = activation::softmax(logits, 1);
    // [S, N·D·H·W] so that one sum per channel covers the batch and the volume.
    let per_channel = |t: Tensor<B, 5>| {
        t.swap_dims(0, 1)
            .reshape([s, n * d * h * w])
            .sum_dim(1)
            .reshape([s])
    };
    let tp = per_channel(probs.clone() * one_hot.clone());
    let sum_p = per_channel(probs);
    let sum_y = per_channel(one_hot);
    // FP + FN = (ΣP − TP) + (ΣY − TP).
    let dice = (tp.clone().mul_scalar(2.0).add_scalar(smooth)) / (sum_p + sum_y).add_scalar(smooth);
    dice.slice(1..s).mean().neg().add_scalar(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};
    use crate::volume::boxes;
    use burn::tensor::TensorData;

    fn t2(rows: &[[f64; 6]]) -> Tensor<TestBackend, 2> {
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), 6]), &test_device())
    }

    #[test]
    fn generalized_iou_matches_the_host_reference() {
        let a = [
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 4.0, 2.0, 2.0],
            [1.0, 1.0, 1.0, 3.0, 3.0, 3.0],
        ];
        let b = [
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
            [2.0, 2.0, 2.0, 3.0, 3.0, 3.0],
            [1.0, 0.0, 0.0, 3.0, 2.0, 2.0],
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],
        ];
        let g = tensor_values(generalized_iou(t2(&a), t2(&b)));
        let expected: Vec<f64> = a.iter().zip(&b).map(|(x, y)| boxes::giou(x, y)).collect();
        assert_close(&g, &expected, 1e-5);
        // Identical boxes: 1; disjoint unit cubes at (0,0,0) and (2,2,2): 2/27 − 1.
        assert!((g[0] - 1.0).abs() < 1e-5);
        assert!((g[1] - (2.0 / 27.0 - 1.0)).abs() < 1e-5);
        // IoU of [0,4]×[0,2]² and [1,3]×[0,2]²: 8/16 = 0.5, enclosing = union.
        assert!((g[2] - 0.5).abs() < 1e-5);
    }

    #[test]
    fn bce_and_focal_loss_match_hand_computed_values() {
        let device = test_device();
        let logits = Tensor::<TestBackend, 2>::from_floats([[0.0, 2.0], [-1.0, 3.0]], &device);
        let targets = Tensor::<TestBackend, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let terms = [
            -(sig(0.0)).ln(),
            -(1.0 - sig(2.0)).ln(),
            -(1.0 - sig(-1.0)).ln(),
            -(sig(3.0)).ln(),
        ];
        let bce = tensor_values(binary_cross_entropy_with_logits(
            logits.clone(),
            targets.clone(),
        ))[0];
        assert!(
            (bce - terms.iter().sum::<f64>() / 4.0).abs() < 1e-5,
            "{bce}"
        );
        let p_t = [sig(0.0), 1.0 - sig(2.0), 1.0 - sig(-1.0), sig(3.0)];
        let alpha_t = [0.25, 0.75, 0.75, 0.25];
        let focal_expected: f64 = (0..4)
            .map(|i| alpha_t[i] * (1.0 - p_t[i]).powi(2) * terms[i])
            .sum::<f64>()
            / 4.0;
        let focal = tensor_values(sigmoid_focal_loss(logits, targets, 0.25, 2.0))[0];
        assert!(
            (focal - focal_expected).abs() < 1e-5,
            "{focal} vs {focal_expected}"
        );
    }

    #[test]
    fn dense_cross_entropy_and_dice_match_hand_computed_values() {
        let device = test_device();
        // N = 1, S = 2, two voxels: logits (bg, fg) = (0, ln 3) and (0, 0); targets fg, bg.
        let logits = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 3.0f32.ln(), 0.0], [1, 2, 1, 1, 2]),
            &device,
        );
        let one_hot = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 1.0, 0.0], [1, 2, 1, 1, 2]),
            &device,
        );
        // p_fg = 0.75 at voxel 0 (target fg), 0.5 at voxel 1 (target bg).
        let ce = tensor_values(dense_cross_entropy(logits.clone(), one_hot.clone()))[0];
        assert!(
            (ce - (-(0.75f64).ln() - (0.5f64).ln()) / 2.0).abs() < 1e-5,
            "{ce}"
        );
        let smooth = 1e-5;
        let tp = 0.75;
        let dice = (2.0 * tp + smooth) / (0.75 + 0.5 + 1.0 + smooth);
        let loss = tensor_values(soft_dice_loss(logits, one_hot, smooth))[0];
        assert!(
            (loss - (1.0 - dice)).abs() < 1e-5,
            "{loss} vs {}",
            1.0 - dice
        );
    }
}
