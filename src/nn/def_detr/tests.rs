//! Tests of the whole detector: shapes, prediction format, overfitting one batch.

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;

use super::*;
use crate::nn::testing::{TestBackend, test_device};
use crate::train::optim::{OptimizerConfig, OptimizerKind, TrainOptimizer};
use crate::volume::boxes::{Box3, iou};

type B = TestBackend;

/// One 16³ image with a bright box, and its target.
fn one_batch(device: &crate::nn::DispatchDevice) -> DetectionBatch<B> {
    let size = 16;
    let target: Box3 = [3.0, 5.0, 4.0, 11.0, 12.0, 10.0];
    let mut values = vec![0.0f32; size * size * size];
    for z in 3..11 {
        for y in 5..12 {
            for x in 4..10 {
                values[(z * size + y) * size + x] = 2.0;
            }
        }
    }
    DetectionBatch {
        images: Tensor::from_data(TensorData::new(values, [1, 1, size, size, size]), device),
        boxes: vec![vec![target]],
        classes: vec![vec![0]],
        segmentation: None,
    }
}

#[test]
fn forward_shapes_and_loss_components() {
    let device = test_device();
    let cfg = DefDetrConfig {
        decoder_layers: 2,
        ..DefDetrConfig::tiny(1, 2)
    };
    let model = cfg.init::<B>(&device).unwrap();
    assert_eq!(
        model.level_shapes([16, 16, 16]),
        vec![[8, 8, 8], [4, 4, 4], [2, 2, 2]]
    );
    let images = Tensor::<B, 5>::zeros([2, 1, 16, 16, 16], &device);
    let out = model.forward(images.clone()).unwrap();
    assert_eq!(out.logits.len(), 2);
    assert_eq!(out.logits[1].dims(), [2, 8, 2]);
    assert_eq!(out.boxes[1].dims(), [2, 8, 6]);
    let mut batch = one_batch(&device);
    batch.images = Tensor::cat(vec![batch.images.clone(), batch.images], 0);
    batch.boxes.push(Vec::new());
    batch.classes.push(Vec::new());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let loss = model.loss(&batch, &mut rng).unwrap();
    let names: Vec<&str> = loss.components.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["cls", "l1", "giou", "aux"]);
    assert!(loss.total_value().is_finite());
    let detections = model.predict(images).unwrap();
    assert_eq!(detections.len(), 2);
    for d in &detections {
        assert_eq!(d.boxes.len(), 16, "8 queries × 2 classes, no threshold");
        assert!(d.scores.windows(2).all(|w| w[0] >= w[1]));
        for b in &d.boxes {
            assert!((0..3).all(|a| b[a] >= 0.0 && b[a + 3] <= 16.0 && b[a] < b[a + 3]));
        }
    }
    // Wrong input channels are refused.
    let err = model
        .forward(Tensor::zeros([1, 2, 16, 16, 16], &device))
        .unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
}

#[test]
fn a_tiny_model_overfits_one_batch() {
    let device = test_device();
    crate::nn::backend::seed(&device, 3);
    let cfg = DefDetrConfig {
        queries: 4,
        ..DefDetrConfig::tiny(1, 1)
    };
    let mut model = cfg.init::<B>(&device).unwrap();
    let batch = one_batch(&device);
    let mut optimizer = TrainOptimizer::<B, DefDetr<B>>::new(&OptimizerConfig {
        kind: OptimizerKind::AdamW,
        weight_decay: 0.0,
        ..Default::default()
    })
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let first = model.loss(&batch, &mut rng).unwrap().total_value();
    let mut last = first;
    for _ in 0..120 {
        let loss = model.loss(&batch, &mut rng).unwrap();
        last = loss.total_value();
        let grads = loss.total.backward();
        model = optimizer.step(3e-3, model, grads).0;
    }
    // Loss (with the auxiliary-free single layer): focal 2× + L1 5× + GIoU 2×; at the start
    // about 2 (the box terms of a random query) — it must fall below 0.5.
    assert!(last < 0.5, "loss {first} → {last}");
    let detections = model.valid().predict(batch.images.clone().inner()).unwrap();
    let best = &detections[0];
    let top = best.boxes[0];
    let overlap = iou(&top, &batch.boxes[0][0]);
    assert!(
        overlap > 0.5,
        "top box {top:?} (score {}) has IoU {overlap}",
        best.scores[0]
    );
}

#[test]
fn token_anchors_are_token_centres_with_the_token_extent() {
    let anchors = token_anchors(&[[2, 1, 1], [1, 1, 4]]);
    assert_eq!(anchors.len(), 6 * 6);
    assert_eq!(&anchors[..6], &[0.25, 0.5, 0.5, 0.5, 1.0, 1.0]);
    assert_eq!(&anchors[6..12], &[0.75, 0.5, 0.5, 0.5, 1.0, 1.0]);
    assert_eq!(&anchors[12..18], &[0.5, 0.5, 0.125, 1.0, 1.0, 0.25]);
}

#[test]
fn two_stage_seeds_the_queries_with_proposals_and_its_loss_falls_on_a_fixed_batch() {
    let device = test_device();
    crate::nn::backend::seed(&device, 5);
    let cfg = DefDetrConfig {
        two_stage: true,
        decoder_layers: 2,
        ..DefDetrConfig::tiny(1, 1)
    };
    let mut model = cfg.init::<B>(&device).unwrap();
    let batch = one_batch(&device);
    let out = model.forward(batch.images.clone()).unwrap();
    let (logits, boxes) = out.proposals.clone().expect("proposals");
    // 8³ + 4³ + 2³ tokens propose; the 8 best seed the queries.
    assert_eq!(logits.dims(), [1, 584, 1]);
    assert_eq!(boxes.dims(), [1, 584, 6]);
    assert_eq!(out.boxes[1].dims(), [1, 8, 6]);
    let mut optimizer = TrainOptimizer::<B, DefDetr<B>>::new(&OptimizerConfig {
        kind: OptimizerKind::AdamW,
        weight_decay: 0.0,
        ..Default::default()
    })
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut losses = Vec::new();
    for _ in 0..12 {
        let loss = model.loss(&batch, &mut rng).unwrap();
        let names: Vec<&str> = loss.components.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["cls", "l1", "giou", "aux", "proposals"]);
        losses.push(loss.total_value());
        model = optimizer.step(3e-3, model, loss.total.backward()).0;
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[11] < 0.7 * losses[0], "{losses:?}");
    let detections = model.valid().predict(batch.images.clone().inner()).unwrap();
    assert_eq!(detections[0].boxes.len(), 8);
}
