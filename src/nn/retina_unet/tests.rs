//! Tests of `retina_unet`.

use super::*;
use crate::nn::InferenceBackend;
use crate::nn::encoder::{EncoderPart, ResEncConfig};
use crate::nn::testing::{TestBackend, tensor_values, test_device};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type B = TestBackend;

/// A 32³ patch with one bright cube [10, 20) × [8, 18) × [12, 22) and its targets.
fn cube_batch(device: &crate::nn::DispatchDevice) -> DetectionBatch<B> {
    let size = 32;
    let mut voxels = vec![0.0f32; size * size * size];
    let mut seg = vec![0i64; size * size * size];
    for d in 10..20 {
        for h in 8..18 {
            for w in 12..22 {
                voxels[(d * size + h) * size + w] = 1.0;
                seg[(d * size + h) * size + w] = 1;
            }
        }
    }
    DetectionBatch {
        images: Tensor::from_data(TensorData::new(voxels, [1, 1, size, size, size]), device),
        boxes: vec![vec![[10.0, 8.0, 12.0, 20.0, 18.0, 22.0]]],
        classes: vec![vec![0]],
        segmentation: Some(Tensor::from_data(
            TensorData::new(seg, [1, size, size, size]),
            device,
        )),
    }
}

#[test]
fn forward_shapes_match_the_anchor_grid() {
    let device = test_device();
    let cfg = RetinaUNetConfig::tiny(2, 3);
    assert_eq!(cfg.resolved_detection_levels(), vec![1, 2, 3]);
    let model = cfg.init::<B>(&device).unwrap();
    let x = Tensor::<B, 5>::zeros([2, 2, 16, 32, 16], &device);
    let out = model.forward(x).unwrap();
    assert_eq!(out.level_grids, vec![[8, 16, 8], [4, 8, 4], [2, 4, 2]]);
    let anchors = model.anchors([16, 32, 16]).unwrap();
    let a = (8 * 16 * 8 + 4 * 8 * 4 + 2 * 4 * 2) * 27;
    assert_eq!(anchors.len(), a);
    assert_eq!(out.class_logits.dims(), [2, a, 3]);
    assert_eq!(out.box_deltas.dims(), [2, a, 6]);
    assert_eq!(out.segmentation_logits.unwrap().dims(), [2, 2, 16, 32, 16]);
    // Level 2 anchors are twice those of level 1.
    assert_eq!(anchors.levels[1].sizes[0], [8.0, 16.0, 32.0]);
    assert!(
        model
            .forward(Tensor::zeros([1, 2, 12, 16, 16], &device))
            .is_err(),
        "12 is not divisible by 8"
    );
    assert!(
        model
            .forward(Tensor::zeros([1, 1, 16, 16, 16], &device))
            .is_err(),
        "wrong channel count"
    );

    let per_class = RetinaUNetConfig {
        segmentation: SegmentationMode::PerClass,
        ..cfg.clone()
    }
    .init::<B>(&device)
    .unwrap();
    let seg = per_class
        .forward(Tensor::zeros([1, 2, 16, 16, 16], &device))
        .unwrap()
        .segmentation_logits
        .unwrap();
    assert_eq!(seg.dims(), [1, 4, 16, 16, 16]);
    let none = RetinaUNetConfig {
        segmentation: SegmentationMode::None,
        ..cfg
    }
    .init::<B>(&device)
    .unwrap();
    assert!(none.segmenter.is_none() && none.decoder.laterals.len() == 3);
}

#[test]
fn nndetection_defaults_give_the_documented_architecture() {
    let cfg = RetinaUNetConfig::default();
    assert_eq!(cfg.resolved_detection_levels(), vec![2, 3, 4, 5]);
    let model = cfg.init::<InferenceBackend>(&test_device()).unwrap();
    assert_eq!(model.decoder.channels, vec![32, 64, 128, 128, 128, 128]);
    assert_eq!(model.decoder.output_levels, vec![0, 2, 3, 4, 5]);
    // 128³ patch: 32³ + 16³ + 8³ + 4³ positions × 27 = 1,010,880 anchors.
    assert_eq!(model.anchors([128, 128, 128]).unwrap().len(), 1_010_880);
    let summary = model.summary();
    assert!(
        summary.contains("detection levels [2, 3, 4, 5]") && summary.contains("classifier"),
        "{summary}"
    );
    assert_eq!(model.classifier.output.weight.dims(), [27, 128, 3, 3, 3]);
    assert_eq!(model.regressor.output.weight.dims(), [162, 128, 3, 3, 3]);
}

#[test]
fn invalid_configs_and_batches_are_rejected() {
    let device = test_device();
    let bad_levels = RetinaUNetConfig {
        detection_levels: vec![2, 1],
        ..RetinaUNetConfig::tiny(1, 1)
    };
    assert!(
        bad_levels
            .init::<B>(&device)
            .unwrap_err()
            .to_string()
            .contains("detection_levels")
    );
    let bad_groups = RetinaUNetConfig {
        head_channels_per_group: 5,
        ..RetinaUNetConfig::tiny(1, 1)
    };
    assert!(
        bad_groups
            .validate()
            .unwrap_err()
            .to_string()
            .contains("head_channels_per_group")
    );
    let model = RetinaUNetConfig::tiny(1, 1).init::<B>(&device).unwrap();
    let mut batch = cube_batch(&device);
    batch.classes = vec![vec![1]];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(
        model
            .loss(&batch, &mut rng)
            .unwrap_err()
            .to_string()
            .contains("class 1")
    );
    batch.classes = vec![vec![0, 0]];
    assert!(model.loss(&batch, &mut rng).is_err());
    let json = r#"{"num_classes": 2, "fpn_chanels": 8}"#;
    assert!(
        serde_json::from_str::<RetinaUNetConfig>(json)
            .unwrap_err()
            .to_string()
            .contains("fpn_chanels")
    );
    let cfg: RetinaUNetConfig =
        serde_json::from_str(r#"{"num_classes": 2, "loss": {"regression": "smooth_l1"}}"#).unwrap();
    assert_eq!(cfg.loss.regression, RegressionLoss::SmoothL1);
    assert_eq!(cfg.fpn_channels, 128);
}

#[test]
fn loss_has_all_components_and_all_options_work() {
    let device = test_device();
    let batch = cube_batch(&device);
    for (classification, regression) in [
        (ClassificationLoss::Bce, RegressionLoss::Giou),
        (ClassificationLoss::Focal, RegressionLoss::L1),
        (ClassificationLoss::Bce, RegressionLoss::SmoothL1),
    ] {
        let mut cfg = RetinaUNetConfig::tiny(1, 1);
        cfg.loss.classification = classification;
        cfg.loss.regression = regression;
        let model = cfg.init::<B>(&device).unwrap();
        let loss = model
            .loss(&batch, &mut ChaCha8Rng::seed_from_u64(1))
            .unwrap();
        let values = loss.component_values();
        let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cls", "reg", "seg_ce", "seg_dice"]);
        let sum: f64 = values.iter().map(|(_, v)| v).sum();
        assert!((sum - loss.total_value()).abs() < 1e-4, "{values:?}");
        assert!(
            values.iter().all(|(_, v)| v.is_finite() && *v >= 0.0),
            "{values:?}"
        );
        let stats: std::collections::HashMap<_, _> = loss.statistics.iter().cloned().collect();
        assert!(stats["num_positives"] >= 1.0);
        assert_eq!(
            stats["num_sampled_positives"],
            stats["num_positives"].min(10.0)
        );
    }
    // An image without objects: classification and segmentation only.
    let model = RetinaUNetConfig::tiny(1, 1).init::<B>(&device).unwrap();
    let empty = DetectionBatch {
        boxes: vec![vec![]],
        classes: vec![vec![]],
        ..batch
    };
    let names: Vec<String> = model
        .loss(&empty, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap()
        .components
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(names, ["cls", "seg_ce", "seg_dice"]);
}

#[test]
fn training_on_one_batch_halves_the_loss_through_every_head() {
    const STEPS: usize = 20;
    const LR: f64 = 5e-3;
    let device = test_device();
    crate::nn::backend::seed(&device, 3);
    let mut cfg = RetinaUNetConfig::tiny(1, 1);
    cfg.encoder = EncoderConfig::Retunet(RetUNetEncoderConfig {
        widths: vec![4, 8, 16, 32],
        ..RetUNetEncoderConfig::tiny(1)
    });
    cfg.fpn_channels = 8;
    cfg.head_channels = 8;
    cfg.head_channels_per_group = 4;
    let mut model = cfg.init::<B>(&device).unwrap();
    let batch = cube_batch(&device);
    let mut optimizer = AdamConfig::new().init::<B, RetinaUNet<B>>();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let first = model.loss(&batch, &mut rng).unwrap().component_values();
    let mut last = first.clone();
    for _ in 0..STEPS {
        let loss = model.loss(&batch, &mut rng).unwrap();
        last = loss.component_values();
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optimizer.step(LR, model, grads);
    }
    let total = |v: &[(String, f64)]| v.iter().map(|(_, x)| x).sum::<f64>();
    assert!(total(&last) < 0.5 * total(&first), "{first:?} → {last:?}");
    for ((name, a), (_, b)) in first.iter().zip(&last) {
        assert!(b < a, "component {name} did not decrease: {a} → {b}");
    }
}

#[test]
fn frozen_encoder_stays_unchanged_while_the_rest_trains() {
    let device = test_device();
    let model = RetinaUNetConfig::tiny(1, 1).init::<B>(&device).unwrap();
    let model = model.set_encoder_trainable(EncoderPart::Stages, false);
    let batch = cube_batch(&device);
    let stage_before = tensor_values(model.encoder.stages[2].convs[0].conv.weight.val());
    let stem_before = tensor_values(model.encoder.stem.convs[0].conv.weight.val());
    let head_before = tensor_values(model.classifier.output.weight.val());
    let mut optimizer = AdamConfig::new().init::<B, RetinaUNet<B>>();
    let loss = model
        .loss(&batch, &mut ChaCha8Rng::seed_from_u64(2))
        .unwrap();
    let grads = GradientsParams::from_grads(loss.total.backward(), &model);
    let model = optimizer.step(1e-2, model, grads);
    assert!(tensor_values(model.encoder.stages[2].convs[0].conv.weight.val()) == stage_before);
    assert!(tensor_values(model.encoder.stem.convs[0].conv.weight.val()) != stem_before);
    assert!(tensor_values(model.classifier.output.weight.val()) != head_before);
    let ids = model.encoder.param_ids(EncoderPart::All);
    assert_eq!(
        ids.len(),
        crate::nn::inspect::parameters(&model.encoder).len()
    );
}

#[test]
fn predictions_lie_in_the_patch_sorted_and_capped() {
    let device = test_device();
    let mut cfg = RetinaUNetConfig::tiny(1, 2);
    cfg.inference.detections_per_image = 7;
    let model = cfg.init::<B>(&device).unwrap().valid();
    let x = Tensor::<InferenceBackend, 5>::random(
        [2, 1, 16, 16, 16],
        burn::tensor::Distribution::Default,
        &device,
    );
    let dets = model.predict(x).unwrap();
    assert_eq!(dets.len(), 2);
    for d in &dets {
        assert_eq!(d.boxes.len(), 7);
        assert!(d.scores.windows(2).all(|w| w[0] >= w[1]));
        assert!(d.scores.iter().all(|s| *s > 0.0 && *s < 1.0));
        assert!(d.classes.iter().all(|c| *c < 2));
        assert!(d.boxes.iter().all(|b| {
            (0..3).all(|a| b[a] >= 0.0 && b[a + 3] <= 16.0 && b[a + 3] - b[a] >= 0.01)
        }));
    }
    let strict = RetinaUNetConfig {
        inference: InferenceConfig {
            score_threshold: 0.99,
            ..Default::default()
        },
        ..RetinaUNetConfig::tiny(1, 1)
    };
    let model = strict.init::<InferenceBackend>(&device).unwrap();
    let dets = model
        .predict(Tensor::zeros([1, 1, 16, 16, 16], &device))
        .unwrap();
    assert!(
        dets[0].boxes.is_empty(),
        "initial scores are near the prior 0.01"
    );
}

#[test]
fn capped_nms_equals_truncated_batched_nms() {
    use crate::volume::boxes::batched_nms;
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..20 {
        let n = rng.random_range(0..300);
        let boxes: Vec<Box3> = (0..n)
            .map(|_| {
                let lo: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..20.0));
                let ext: [f64; 3] = std::array::from_fn(|_| rng.random_range(1.0..8.0));
                [
                    lo[0],
                    lo[1],
                    lo[2],
                    lo[0] + ext[0],
                    lo[1] + ext[1],
                    lo[2] + ext[2],
                ]
            })
            .collect();
        // Coarse scores produce ties across classes.
        let scores: Vec<f64> = (0..n)
            .map(|_| (rng.random_range(0..50) as f64) / 50.0)
            .collect();
        let classes: Vec<usize> = (0..n).map(|_| rng.random_range(0..3)).collect();
        for max_keep in [1, 5, 100, 1000] {
            let full = batched_nms(&boxes, &scores, &classes, 0.3);
            let expected = &full[..full.len().min(max_keep)];
            assert_eq!(
                capped_batched_nms(&boxes, &scores, &classes, 0.3, max_keep),
                expected
            );
        }
    }
}

#[test]
fn resenc_retina_unet_loss_falls_on_a_fixed_batch() {
    const STEPS: usize = 6;
    let device = test_device();
    crate::nn::backend::seed(&device, 4);
    let cfg = RetinaUNetConfig::new(EncoderConfig::Resenc(ResEncConfig::tiny(1)), 1);
    let cfg = RetinaUNetConfig {
        fpn_channels: 16,
        head_channels: 16,
        head_channels_per_group: 8,
        ..cfg
    };
    let mut model = cfg.init::<B>(&device).unwrap();
    let batch = cube_batch(&device);
    let mut optimizer = AdamConfig::new().init::<B, RetinaUNet<B>>();
    // The same sampling draw every step, so the losses compare like for like.
    let rng = || ChaCha8Rng::seed_from_u64(0);
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let loss = model.loss(&batch, &mut rng()).unwrap();
        losses.push(loss.total_value());
        let grads = loss.total.backward();
        if step == 0 {
            let stem_grad = model.encoder.stem.convs[0].conv.weight.grad(&grads);
            assert!(stem_grad.is_some(), "gradients reach the stem");
        }
        let grads = GradientsParams::from_grads(grads, &model);
        model = optimizer.step(5e-3, model, grads);
    }
    let after = model.loss(&batch, &mut rng()).unwrap().total_value();
    assert!(after < 0.8 * losses[0], "{losses:?} → {after}");
}
