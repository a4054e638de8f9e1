//! Planning against nnDetection's rules: every expected value below is derived by hand from
//! nnDetection's planner (`D3V001`, `BoxC002`, nnU-Net v1's `get_pool_and_conv_props`); the
//! derivations are in the comments.

use super::topology::*;
use super::*;
use crate::data::{CaseFingerprint, DatasetFingerprint};

/// A fingerprint of `n` cases with the same spacing and shape and one 6-voxel box each.
fn uniform(spacing: [f64; 3], shape: [usize; 3], n: usize) -> DatasetFingerprint {
    DatasetFingerprint {
        in_channels: 1,
        num_classes: 1,
        cases: (0..n)
            .map(|i| CaseFingerprint {
                id: format!("case{i}"),
                spacing,
                shape,
                boxes: vec![[1.0, 2.0, 3.0, 7.0, 8.0, 9.0]],
            })
            .collect(),
    }
}

/// A memory "estimate" that counts patch voxels, so the search can be derived by hand.
fn voxels(_: &RetinaUNetConfig, patch: [usize; 3], _: usize) -> f64 {
    patch.iter().product::<usize>() as f64
}

fn voxel_budget(budget: f64) -> PlanConfig {
    PlanConfig {
        memory: MemoryModel {
            budget_bytes: budget,
            ..MemoryModel::default()
        },
        ..PlanConfig::default()
    }
}

#[test]
fn pool_and_conv_props_of_a_thick_slice_patch() {
    // spacing [3, 0.8, 0.8], patch [12, 40, 40], min feature map 4:
    // 1: min spacing 0.8; 3 / 0.8 = 3.75 ≥ 2 → pool H, W only; largest group within factor 2
    //    is {H, W} → kernel [1, 3, 3]; spacing [3, 1.6, 1.6], size [12, 20, 20].
    // 2: 3 / 1.6 = 1.875 < 2 → all axes, all ≥ 8 → pool [2, 2, 2], kernel [3, 3, 3];
    //    spacing [6, 3.2, 3.2], size [6, 10, 10].
    // 3: all within factor 2, but D's 6 < 8 → pool [1, 2, 2], kernel [3, 3, 3];
    //    spacing [6, 6.4, 6.4], size [6, 5, 5].
    // 4: every size < 8 → stop. Bottleneck kernel 3³; divisors [2, 8, 8]; no padding needed.
    let p = pool_and_conv_props([3.0, 0.8, 0.8], [12, 40, 40], 4, 999);
    assert_eq!(p.pools, vec![[1, 2, 2], [2, 2, 2], [1, 2, 2]]);
    assert_eq!(
        p.conv_kernels,
        vec![[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    );
    assert_eq!(p.pools_per_axis, [1, 3, 3]);
    assert_eq!(p.divisor, [2, 8, 8]);
    assert_eq!(p.patch_size, [12, 40, 40]);
    // max_pools caps every axis.
    let capped = pool_and_conv_props([3.0, 0.8, 0.8], [12, 40, 40], 4, 1);
    assert_eq!(capped.pools, vec![[1, 2, 2], [2, 1, 1]]);
}

#[test]
fn pool_and_conv_props_pad_the_patch_up_to_the_divisors() {
    // spacing [3, 2, 2], patch [62, 128, 128]: 3 / 2 = 1.5 < 2, so every step pools all
    // axes that are ≥ 8: D 62 → 31 → 15.5 → 7.75 (3 pools), H/W 128 → … → 4 (5 pools);
    // every kernel 3³ (spacings stay within factor 2 until the loop ends: [24, 64, 64] would
    // give [1, 3, 3] but that step pools nothing and is dropped). Divisors [8, 32, 32]:
    // 62 → 64, 128 stays.
    let p = pool_and_conv_props([3.0, 2.0, 2.0], [62, 128, 128], 4, 999);
    assert_eq!(
        p.pools,
        vec![[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    );
    assert_eq!(p.conv_kernels, vec![[3, 3, 3]; 6]);
    assert_eq!(p.divisor, [8, 32, 32]);
    assert_eq!(p.patch_size, [64, 128, 128]);
    assert_eq!(
        pad_to_multiple([300, 400, 448], [64, 64, 64]),
        [320, 448, 448]
    );
}

#[test]
fn initial_patch_is_mm_isotropic_and_clipped_to_the_median_shape() {
    // [3, 0.8, 0.8]: voxels/mm [1/3, 1.25, 1.25], mean 0.9444 → [0.353, 1.324, 1.324] → scaled
    // so the smallest is 512: [512, 1920, 1920]; D (largest spacing) clipped to its median 12,
    // H and W to min(40, 40).
    assert_eq!(
        initial_patch_size([3.0, 0.8, 0.8], [12.0, 40.0, 40.0], 512.0),
        [12, 40, 40]
    );
    // [1.225, 0.7, 0.7] with median [265.306, 512, 512]: [512, 896, 896] → D min(512, 265.306)
    // rounds to 265, H/W min(896, 512).
    assert_eq!(
        initial_patch_size([1.225, 0.7, 0.7], [265.306, 512.0, 512.0], 512.0),
        [265, 512, 512]
    );
    // Isotropic: np.argmax picks axis 0 as the "low-resolution" axis, clipped to its own
    // median; the others to the smaller of theirs.
    assert_eq!(
        initial_patch_size([1.0, 1.0, 1.0], [186.0, 300.0, 256.0], 512.0),
        [186, 256, 256]
    );
}

#[test]
fn decrease_takes_the_largest_ratio_and_the_last_axis_on_ties() {
    let median = [160.0; 3];
    let pools = vec![[2, 2, 2]; 5];
    // Ratios all 1 → the last axis; bottleneck 160 / 32 = 5 > 4 → minus the divisor 32.
    assert_eq!(
        decrease_patch_size([160, 160, 160], median, &pools, [32; 3], 4),
        [160, 160, 128]
    );
    assert_eq!(
        decrease_patch_size([160, 160, 128], median, &pools, [32; 3], 4),
        [160, 128, 128]
    );
    // Bottleneck 128 / 32 = 4 is not above 4 → minus half the divisor.
    assert_eq!(
        decrease_patch_size([128, 128, 128], median, &pools, [32; 3], 4),
        [128, 128, 112]
    );
}

#[test]
fn detection_levels_follow_nndetection() {
    // start = min(max(1, R − 4), 2).
    assert_eq!(detection_levels(7, 4, 2), vec![2, 3, 4, 5, 6]);
    assert_eq!(detection_levels(6, 4, 2), vec![2, 3, 4, 5]);
    assert_eq!(detection_levels(5, 4, 2), vec![1, 2, 3, 4]);
    assert_eq!(detection_levels(4, 4, 2), vec![1, 2, 3]);
    assert_eq!(detection_levels(2, 4, 2), vec![1]);
}

#[test]
fn nndetection_anchor_strides_divide_by_the_first_pooling() {
    // Isotropic, levels 2..5: cumulative product of pools 2..5 = [2, 4, 8, 16] / pool 1 (2).
    let pools = vec![[2, 2, 2]; 5];
    assert_eq!(
        nndetection_anchor_strides(&pools, &[2, 3, 4, 5]),
        vec![[1, 1, 1], [2, 2, 2], [4, 4, 4], [8, 8, 8]]
    );
    // First pooling [1, 2, 2], second [2, 2, 2]: nnDetection's first level stride is
    // [2, 2, 2] / [1, 2, 2] = [2, 1, 1], not 1 (its quirk for anisotropic plans).
    let pools = vec![[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]];
    assert_eq!(
        nndetection_anchor_strides(&pools, &[2, 3, 4, 5])[0],
        [2, 1, 1]
    );
}

#[test]
fn transposition_puts_the_coarsest_axis_first() {
    assert_eq!(transpose_forward([0.8, 0.8, 3.0]), [2, 0, 1]);
    assert_eq!(transpose_forward([1.0, 1.0, 1.0]), [0, 1, 2]);
    let order = [2, 0, 1];
    assert_eq!(permute([10, 20, 30], order), [30, 10, 20]);
    assert_eq!(unpermute(permute([10, 20, 30], order), order), [10, 20, 30]);
}

/// Fingerprint 1, the reference's worked example (§2.12): 1 mm isotropic CT, median shape 160³.
#[test]
fn isotropic_1mm_plan_is_the_reference_worked_example() {
    let fp = uniform([1.0, 1.0, 1.0], [160, 160, 160], 5);
    // Spacing: the median [1, 1, 1] (no anisotropy). Initial patch [512³] clipped to 160³.
    // 160 → 80 → 40 → 20 → 10 → 5: 5 pools per axis, divisor 32, 160 stays.
    // With a budget of 2.2 M voxels: 160³ = 4.1 M too large → last axis −32 → [160, 160, 128]
    // (3.3 M) → ratios [1, 1, 0.8], largest last = H → [160, 128, 128] (2.6 M) → D →
    // [128, 128, 128] (2.1 M) fits.
    let p = plan_with(&fp, &voxel_budget(2.2e6), &voxels).unwrap();
    assert_eq!(p.target_spacing, [1.0, 1.0, 1.0]);
    assert_eq!(p.initial_patch_size, [160, 160, 160]);
    let visited: Vec<[usize; 3]> = p.search.iter().map(|s| s.patch_size).collect();
    assert_eq!(
        visited,
        vec![
            [160, 160, 160],
            [160, 160, 128],
            [160, 128, 128],
            [128, 128, 128]
        ]
    );
    assert_eq!(p.patch_size, [128, 128, 128]);
    assert_eq!(p.pools, vec![[2, 2, 2]; 5]);
    assert_eq!(p.conv_kernels, vec![[3, 3, 3]; 6]);
    assert_eq!(p.strides[0], [1, 1, 1]);
    // 6 resolutions → P2..P5 (strides 4…32), as the reference's worked example says.
    assert_eq!(p.detection_levels, vec![2, 3, 4, 5]);
    assert_eq!(p.anchor_level_strides[0], [1, 1, 1]);
    assert_eq!(p.network.encoder.widths(), &[32, 64, 128, 256, 320, 320]);
    assert!(!p.dummy_2d_augmentation);
    assert!(!p.low_resolution_triggered);

    // The documented memory model estimates 160 × 128² (3.3 M voxels) below the 2080 Ti
    // budget, so it stops one step earlier than the 2.2 M voxel budget above.
    let modelled = plan(&fp, &PlanConfig::default()).unwrap();
    assert_eq!(modelled.patch_size, [160, 128, 128]);
    let steps: Vec<bool> = modelled.search.iter().map(|s| s.fits).collect();
    assert_eq!(steps, vec![false, false, true]);
}

/// Fingerprint 2, the anisotropic real volume of the reference (`real-data.md`: ITK's
/// KmeansTest T1, 128 × 128 × 62 at 2 × 2 × 3 mm, i.e. [D, H, W] spacing [3, 2, 2]).
#[test]
fn kmeans_test_t1_plan() {
    let fp = uniform([3.0, 2.0, 2.0], [62, 128, 128], 3);
    // Spacing: 3 > 3 × 2 is false → the plain median [3, 2, 2]; median shape [62, 128, 128].
    // Initial: voxels/mm [1/3, 1/2, 1/2] → [512, 768, 768] → clipped [62, 128, 128]; pooling as
    // in `pool_and_conv_props_pad_the_patch_up_to_the_divisors` → [64, 128, 128] (1 M voxels),
    // which fits both the 2.2 M voxel budget and the memory model at once.
    for p in [
        plan_with(&fp, &voxel_budget(2.2e6), &voxels).unwrap(),
        plan(&fp, &PlanConfig::default()).unwrap(),
    ] {
        assert_eq!(p.target_spacing, [3.0, 2.0, 2.0]);
        assert_eq!(p.initial_patch_size, [62, 128, 128]);
        assert_eq!(p.search.len(), 1);
        assert_eq!(p.patch_size, [64, 128, 128]);
        assert_eq!(
            p.strides,
            vec![
                [1, 1, 1],
                [2, 2, 2],
                [2, 2, 2],
                [2, 2, 2],
                [1, 2, 2],
                [1, 2, 2]
            ]
        );
        assert_eq!(p.detection_levels, vec![2, 3, 4, 5]);
        assert!(!p.dummy_2d_augmentation);
    }
    // A fixed 1 mm spacing: median shape [186, 256, 256]; isotropic start 512³, D (argmax of
    // equal spacings = axis 0) clipped to 186, H and W to 256.
    let fixed = PlanConfig {
        target_spacing: TargetSpacing::Fixed([1.0, 1.0, 1.0]),
        ..voxel_budget(1e12)
    };
    let p = plan_with(&fp, &fixed, &voxels).unwrap();
    assert_eq!(p.median_shape, [186.0, 256.0, 256.0]);
    assert_eq!(p.initial_patch_size, [186, 256, 256]);
    // 186 → 5 pools (…11.6 → 5.8), 256 → 6 pools: divisors [32, 64, 64], 186 → 192.
    assert_eq!(p.patch_size, [192, 256, 256]);
}

/// Fingerprint 3a: LIDC-like chest CT whose slice thickness varies (anisotropy exception).
#[test]
fn lidc_like_thick_slices_get_the_tenth_percentile_spacing() {
    let thickness = [1.0, 1.25, 1.25, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5];
    let fp = DatasetFingerprint {
        in_channels: 1,
        num_classes: 1,
        cases: thickness
            .iter()
            .enumerate()
            .map(|(i, &t)| CaseFingerprint {
                id: format!("case{i}"),
                spacing: [t, 0.7, 0.7],
                shape: [130, 512, 512],
                boxes: vec![[10.0, 100.0, 100.0, 14.0, 112.0, 112.0]],
            })
            .collect(),
    };
    // Median spacing [2.5, 0.7, 0.7]: 2.5 > 3 × 0.7 and 130 × 3 < 512 → D takes the 10th
    // percentile of its spacings: sorted [1, 1.25, 1.25, 2.5 × 7], position 0.9 → 1.225.
    // Median shape: D 2.5 / 1.225 × 130 = 265.306 (7 of 10 cases), H/W 512.
    // Initial [512, 896, 896] → [265, 512, 512]; pooling: 6 × [2, 2, 2] then [1, 2, 2]
    // (D 265 → 4.14 stops, H/W 512 → 4) → divisors [64, 128, 128] → [320, 512, 512].
    // Too large; D has the largest ratio 320 / 265.3 and a bottleneck 320 / 64 = 5 > 4 →
    // minus 64 → [256, 512, 512].
    let p = plan(&fp, &PlanConfig::default()).unwrap();
    assert!(
        (p.target_spacing[0] - 1.225).abs() < 1e-12,
        "{:?}",
        p.target_spacing
    );
    assert_eq!(&p.target_spacing[1..], &[0.7, 0.7]);
    assert!((p.median_shape[0] - 2.5 / 1.225 * 130.0).abs() < 1e-9);
    assert_eq!(p.initial_patch_size, [265, 512, 512]);
    assert_eq!(p.search[0].patch_size, [320, 512, 512]);
    assert_eq!(p.search[1].patch_size, [256, 512, 512]);
    let last = p.search.last().unwrap();
    assert!(last.fits && p.search.iter().rev().skip(1).all(|s| !s.fits));
    assert_eq!(p.patch_size, last.patch_size);
    // The planned network is built for exactly that patch.
    let divisor = p
        .network
        .encoder
        .cumulative_strides()
        .last()
        .copied()
        .unwrap();
    assert!((0..3).all(|a| p.patch_size[a] % divisor[a] == 0));
}

/// Fingerprint 3b: the synthetic thick-slice task of the detlab world (`thick_slices`,
/// 12 × 40 × 40 at [3, 0.8, 0.8] mm), read from the written dataset.
#[test]
fn synthetic_thick_slice_task_plan() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::data::world::TaskConfig {
        cases: 4,
        test_cases: 0,
        ..Default::default()
    };
    let ds =
        crate::data::world::detection_task("thick_slices", &dir.path().join("t"), &config).unwrap();
    let fp = crate::data::fingerprint(&ds, true).unwrap();
    assert_eq!(fp.cases.len(), 4);
    // NIfTI stores spacings as f32.
    let near = |a: [f64; 3], b: [f64; 3]| (0..3).all(|i| (a[i] - b[i]).abs() < 1e-6);
    assert!(fp.cases.iter().all(|c| near(c.spacing, [3.0, 0.8, 0.8])));
    assert!(
        fp.cases.iter().all(|c| c.shape == [12, 40, 40]),
        "CT is non-zero everywhere"
    );
    assert!(fp.cases.iter().any(|c| !c.boxes.is_empty()));
    // Spacing: 3 > 3 × 0.8 and 12 × 3 < 40 → the exception applies, but the 10th percentile of
    // [3, 3, 3, 3] is 3. Initial [512, 1920, 1920] → [12, 40, 40]; pools as in
    // `pool_and_conv_props_of_a_thick_slice_patch`; 4 resolutions → levels 1..3.
    let p = plan(&fp, &PlanConfig::default()).unwrap();
    assert!(
        near(p.target_spacing, [3.0, 0.8, 0.8]),
        "{:?}",
        p.target_spacing
    );
    assert_eq!(p.patch_size, [12, 40, 40]);
    assert_eq!(p.strides, vec![[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]);
    assert_eq!(
        p.conv_kernels,
        vec![[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    );
    assert_eq!(p.detection_levels, vec![1, 2, 3]);
    // Levels 1..3 sit at cumulative strides [1,2,2], [2,4,4], [2,8,8]: nnDetection's anchor
    // strides are these divided by the first pooling [1, 2, 2].
    assert_eq!(
        p.anchor_level_strides,
        vec![[1, 1, 1], [2, 2, 2], [2, 4, 4]]
    );
    assert!(p.anchor_mean_iou > 0.0 && p.anchor_mean_iou <= 1.0);
    // 40 / 12 = 3.33 > 3 → nnDetection's dummy-2D augmentation.
    assert!(p.dummy_2d_augmentation);
}

#[test]
fn axes_are_planned_in_transposed_order_and_returned_in_detlab_order() {
    // The same thick-slice geometry with the coarse axis last: the plan is the permutation.
    let fp = uniform([0.8, 0.8, 3.0], [40, 40, 12], 2);
    let p = plan(&fp, &PlanConfig::default()).unwrap();
    assert_eq!(p.transpose, [2, 0, 1]);
    assert_eq!(p.patch_size, [40, 40, 12]);
    assert_eq!(p.strides, vec![[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]]);
    assert_eq!(p.conv_kernels[0], [3, 3, 1]);
}

#[test]
fn memory_model_counts_the_parameters_of_the_built_network() {
    use burn::module::Module;
    let fp = uniform([3.0, 0.8, 0.8], [12, 40, 40], 2);
    let config = PlanConfig {
        start_channels: 4,
        max_channels: 16,
        fpn_channels: 8,
        head_channels: 8,
        ..PlanConfig::default()
    };
    let p = plan(&fp, &config).unwrap();
    let model = p
        .network
        .init::<crate::nn::testing::TestBackend>(&crate::nn::testing::test_device())
        .unwrap();
    // The estimate counts every conv, norm and head parameter; it is within 1 % of the built
    // network (82,102 of 82,406 here: a few bias and scale terms are not modelled).
    let built = model.num_params() as f64;
    let counted = p.memory.parameters as f64;
    assert!(
        (counted - built).abs() / built < 0.01,
        "{counted} vs {built}"
    );
    // The nnDetection-sized network: 14.0 M encoder parameters and more.
    let big = plan(&uniform([1.0; 3], [160; 3], 2), &PlanConfig::default()).unwrap();
    assert!(
        big.memory.parameters > 14_000_000,
        "{}",
        big.memory.parameters
    );
    assert!(big.memory.fits);
}

#[test]
fn invalid_settings_name_the_field() {
    let fp = uniform([1.0; 3], [32; 3], 1);
    let bad = PlanConfig {
        batch_size: 0,
        ..PlanConfig::default()
    };
    assert!(
        plan(&fp, &bad)
            .unwrap_err()
            .to_string()
            .contains("plan.batch_size")
    );
    let tiny_budget = PlanConfig {
        max_search_steps: 3,
        ..voxel_budget(10.0)
    };
    let err = plan_with(&fp, &tiny_budget, &voxels)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no patch fits"), "{err}");
    let empty = DatasetFingerprint {
        cases: vec![],
        ..fp
    };
    assert!(plan(&empty, &PlanConfig::default()).is_err());
}

/// The planned anisotropic network runs a forward pass and a training step on a tiny input.
#[test]
fn planned_anisotropic_network_trains() {
    use crate::nn::detector::{DetectionBatch, Detector};
    use crate::nn::testing::{TestBackend as B, tensor_values, test_device};
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::{Tensor, TensorData};
    use rand::SeedableRng;

    let fp = uniform([3.0, 0.8, 0.8], [12, 40, 40], 2);
    let config = PlanConfig {
        start_channels: 4,
        max_channels: 16,
        fpn_channels: 8,
        head_channels: 8,
        ..PlanConfig::default()
    };
    let p = plan(&fp, &config).unwrap();
    let device = test_device();
    crate::nn::backend::seed(&device, 1);
    let model = p.network.init::<B>(&device).unwrap();
    assert_eq!(
        model.encoder.stem.convs[0].conv.weight.dims(),
        [4, 1, 1, 3, 3]
    );
    let [d, h, w] = p.patch_size;
    let mut image = vec![0.0f32; d * h * w];
    let mut seg = vec![0i64; d * h * w];
    for z in 4..8 {
        for y in 10..22 {
            for x in 14..26 {
                image[(z * h + y) * w + x] = 1.0;
                seg[(z * h + y) * w + x] = 1;
            }
        }
    }
    let images = Tensor::<B, 5>::from_data(TensorData::new(image, [1, 1, d, h, w]), &device);
    let out = model.forward(images.clone()).unwrap();
    // Levels 1..3 at cumulative strides [1,2,2], [2,4,4], [2,8,8].
    assert_eq!(out.level_grids, vec![[12, 20, 20], [6, 10, 10], [6, 5, 5]]);
    let batch = DetectionBatch {
        images,
        boxes: vec![vec![[4.0, 10.0, 14.0, 8.0, 22.0, 26.0]]],
        classes: vec![vec![0]],
        segmentation: Some(Tensor::from_data(
            TensorData::new(seg, [1, d, h, w]),
            &device,
        )),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let loss = model.loss(&batch, &mut rng).unwrap();
    let first = loss.component_values();
    assert!(first.iter().all(|(_, v)| v.is_finite()), "{first:?}");
    let stem_before = tensor_values(model.encoder.stem.convs[0].conv.weight.val());
    let grads = GradientsParams::from_grads(loss.total.backward(), &model);
    let mut optimizer = AdamConfig::new().init::<B, crate::nn::RetinaUNet<B>>();
    let model = optimizer.step(1e-2, model, grads);
    assert_ne!(
        tensor_values(model.encoder.stem.convs[0].conv.weight.val()),
        stem_before,
        "the [1, 3, 3] stem kernel receives a gradient"
    );
    let after = model.loss(&batch, &mut rng).unwrap().component_values();
    assert!(after.iter().all(|(_, v)| v.is_finite()), "{after:?}");
}
