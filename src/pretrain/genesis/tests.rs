//! Tests of the Models Genesis configuration and of [`corrupt`] as a whole.

use super::*;
use ndarray::{Array3, Array4};
use rand_chacha::ChaCha8Rng;

/// Only the transforms switched on by `tweak` (all probabilities 0, no rescaling otherwise).
fn only(tweak: impl FnOnce(&mut GenesisConfig)) -> GenesisConfig {
    let mut config = GenesisConfig {
        flip_probability: 0.0,
        local_shuffle_probability: 0.0,
        nonlinear_probability: 0.0,
        painting_probability: 0.0,
        rescale_to_unit: false,
        ..GenesisConfig::default()
    };
    tweak(&mut config);
    config
}

/// A textured multi-channel test patch with distinct values.
fn textured(dim: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_fn(dim, |(c, z, y, x)| {
        (c * 1_000_000 + z * 10_000 + y * 100 + x) as f32 + ((z * 7 + y * 3 + x) % 5) as f32 * 0.1
    })
}

fn config_error_field(result: Result<(), PretrainDataError>) -> String {
    match result {
        Err(PretrainDataError::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn reference_patches_validate() {
    let config = GenesisConfig::default();
    config.validate([160, 160, 160]).unwrap();
    // The original Models Genesis cube (64 × 64 × 32), and the smallest cube the defaults allow.
    config.validate([32, 64, 64]).unwrap();
    config.validate([14, 14, 14]).unwrap();
}

#[test]
fn patches_too_small_for_the_margins_are_rejected() {
    let config = GenesisConfig::default();
    // 13 voxels: out-painting keeps a box of at least 13 − ⌊4·13/7⌋ = 6 and at most
    // 13 − ⌊3·13/7⌋ = 8 voxels, which with 3 + 3 margin voxels does not fit.
    let err = config.validate([13, 14, 14]).unwrap_err();
    assert!(
        err.to_string()
            .contains("genesis.outpainting_shrink_fraction"),
        "{err}"
    );
    assert!(err.to_string().contains("[13, 14, 14]"), "{err}");
    assert!(err.to_string().contains("on D"), "{err}");
    // Below 10 voxels there is no shuffle box of side ⌊edge/10⌋ ≥ 1.
    let err = config.validate([64, 9, 64]).unwrap_err();
    assert!(
        err.to_string().contains("local_shuffle_max_side_fraction"),
        "{err}"
    );
    assert!(err.to_string().contains("on H"), "{err}");
    // In-painting alone: ⌊edge/3⌋ + 6 must fit (8 voxels do, 7 do not).
    let inpainting = only(|c| {
        c.painting_probability = 1.0;
        c.outpainting_share = 0.0;
    });
    inpainting.validate([9, 9, 8]).unwrap();
    assert_eq!(
        config_error_field(inpainting.validate([9, 9, 7])),
        "genesis.inpainting_side_fraction"
    );
    // Switched-off transforms do not constrain the patch.
    only(|_| {}).validate([1, 2, 3]).unwrap();
    assert!(matches!(
        only(|_| {}).validate([0, 2, 3]),
        Err(PretrainDataError::Shape(_))
    ));
}

#[test]
fn invalid_settings_name_their_field() {
    let patch = [32, 32, 32];
    let cases: Vec<(GenesisConfig, &str)> = vec![
        (
            GenesisConfig {
                flip_probability: 1.5,
                ..Default::default()
            },
            "genesis.flip_probability",
        ),
        (
            GenesisConfig {
                outpainting_share: -0.1,
                ..Default::default()
            },
            "genesis.outpainting_share",
        ),
        (
            GenesisConfig {
                rescale_percentiles: [99.5, 0.5],
                ..Default::default()
            },
            "genesis.rescale_percentiles",
        ),
        (
            GenesisConfig {
                inpainting_side_fraction: [0.4, 0.2],
                ..Default::default()
            },
            "genesis.inpainting_side_fraction",
        ),
        (
            GenesisConfig {
                outpainting_shrink_fraction: [0.5, 1.0],
                ..Default::default()
            },
            "genesis.outpainting_shrink_fraction",
        ),
        (
            GenesisConfig {
                bezier_samples: 1,
                ..Default::default()
            },
            "genesis.bezier_samples",
        ),
        (
            GenesisConfig {
                local_shuffle_max_side_fraction: 0.0,
                ..Default::default()
            },
            "genesis.local_shuffle_max_side_fraction",
        ),
    ];
    for (config, field) in cases {
        assert_eq!(config_error_field(config.validate(patch)), field);
    }
    // The same check guards `corrupt`.
    let image = Array4::<f32>::zeros((1, 32, 32, 32));
    let bad = GenesisConfig {
        nonlinear_probability: 2.0,
        ..Default::default()
    };
    let err = corrupt(&image, &bad, &mut ChaCha8Rng::seed_from_u64(0)).unwrap_err();
    assert!(err.to_string().contains("nonlinear_probability"), "{err}");
}

#[test]
fn config_files_fill_defaults_and_reject_unknown_fields() {
    let config: GenesisConfig = serde_json::from_str(r#"{"flip_probability": 0.1}"#).unwrap();
    assert_eq!(config.flip_probability, 0.1);
    assert_eq!(config.local_shuffle_iterations, 10_000);
    assert_eq!(config.outpainting_share, 0.8);
    let err = serde_json::from_str::<GenesisConfig>(r#"{"flip_prob": 0.1}"#).unwrap_err();
    assert!(err.to_string().contains("flip_prob"), "{err}");
}

#[test]
fn floor_fraction_matches_integer_division() {
    for edge in 0..3000 {
        assert_eq!(floor_fraction(edge, 1.0 / 6.0), edge / 6, "edge {edge}");
        assert_eq!(floor_fraction(edge, 1.0 / 3.0), edge / 3, "edge {edge}");
        assert_eq!(floor_fraction(edge, 3.0 / 7.0), 3 * edge / 7, "edge {edge}");
        assert_eq!(floor_fraction(edge, 4.0 / 7.0), 4 * edge / 7, "edge {edge}");
        assert_eq!(floor_fraction(edge, 0.1), edge / 10, "edge {edge}");
    }
}

#[test]
fn the_shuffle_count_scales_with_the_patch_volume() {
    let config = GenesisConfig::default();
    assert_eq!(config.local_shuffle_count([160, 160, 160]), 10_000);
    assert_eq!(config.local_shuffle_count([80, 80, 80]), 1_250);
    assert_eq!(config.local_shuffle_count([32, 64, 64]), 320);
    assert_eq!(config.local_shuffle_count([2, 2, 2]), 1);
    let fixed = GenesisConfig {
        local_shuffle_scale_to_volume: false,
        ..Default::default()
    };
    assert_eq!(fixed.local_shuffle_count([32, 64, 64]), 10_000);
}

#[test]
fn outputs_have_the_input_shape_and_the_unit_range() {
    let image = textured((2, 20, 24, 28));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..8 {
        let sample = corrupt(&image, &GenesisConfig::default(), &mut rng).unwrap();
        assert_eq!(sample.input.dim(), image.dim());
        assert_eq!(sample.target.dim(), image.dim());
        assert_eq!(sample.applied.rescale_windows.len(), 2);
        assert!(sample.target.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(sample.input.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn flips_apply_to_input_and_target_alike() {
    let image = textured((2, 14, 15, 16));
    let config = only(|c| c.flip_probability = 1.0);
    let mut seen = [false; 3];
    for seed in 0..10 {
        let sample = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        assert_eq!(sample.applied.flips.len(), 3);
        let mut expected = image.view();
        for &axis in &sample.applied.flips {
            expected.invert_axis(Axis(axis + 1));
            seen[axis] = true;
        }
        assert_eq!(sample.target, expected);
        assert_eq!(sample.input, sample.target);
    }
    assert_eq!(seen, [true; 3]);
    let none = corrupt(&image, &only(|_| {}), &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    assert!(none.applied.flips.is_empty());
    assert_eq!(none.target, image);
}

/// Run painting only on a constant 2.0 patch (outside the noise range [0, 1)), so kept and
/// painted voxels can be told apart.
fn painted(outpainting_share: f64, seed: u64) -> (GenesisSample, [usize; 3]) {
    let patch = [20, 24, 30];
    let image = Array4::<f32>::from_elem((2, patch[0], patch[1], patch[2]), 2.0);
    let config = only(|c| {
        c.painting_probability = 1.0;
        c.outpainting_share = outpainting_share;
    });
    let sample = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
    (sample, patch)
}

fn inside_any(boxes: &[VoxelBox], z: usize, y: usize, x: usize) -> bool {
    boxes.iter().any(|b| {
        (b[0]..b[3]).contains(&z) && (b[1]..b[4]).contains(&y) && (b[2]..b[5]).contains(&x)
    })
}

#[test]
fn inpainting_boxes_keep_the_margin_and_hold_the_noise() {
    let mut counts = Vec::new();
    for seed in 0..40 {
        let (sample, patch) = painted(0.0, seed);
        let painting = sample.applied.painting.expect("painting probability 1");
        assert_eq!(painting.kind, PaintingKind::Inpainting);
        assert!(painting.boxes.len() <= 5);
        counts.push(painting.boxes.len());
        for b in &painting.boxes {
            for a in 0..3 {
                let side = b[a + 3] - b[a];
                assert!(
                    b[a] >= 3 && b[a + 3] + 3 <= patch[a],
                    "{b:?} margin in {patch:?}"
                );
                assert!(side >= patch[a] / 6 && side <= patch[a] / 3, "{b:?} side");
            }
        }
        for ((_, z, y, x), &v) in sample.input.indexed_iter() {
            if inside_any(&painting.boxes, z, y, x) {
                assert!((0.0..1.0).contains(&v), "noise {v} at ({z}, {y}, {x})");
            } else {
                assert_eq!(v, 2.0, "untouched voxel ({z}, {y}, {x})");
            }
        }
    }
    // Up to 5 boxes, each drawn with probability 0.95: most samples have 4 or 5.
    assert!(
        counts.iter().filter(|&&n| n >= 4).count() >= 30,
        "{counts:?}"
    );
}

#[test]
fn outpainting_keeps_boxes_with_the_margin_and_paints_the_rest() {
    for seed in 0..40 {
        let (sample, patch) = painted(1.0, seed);
        let painting = sample.applied.painting.expect("painting probability 1");
        assert_eq!(painting.kind, PaintingKind::Outpainting);
        assert!((1..=5).contains(&painting.boxes.len()));
        for b in &painting.boxes {
            for a in 0..3 {
                let side = b[a + 3] - b[a];
                let edge = patch[a];
                assert!(
                    b[a] >= 3 && b[a + 3] + 3 <= edge,
                    "{b:?} margin in {patch:?}"
                );
                assert!(
                    side >= edge - 4 * edge / 7 && side <= edge - 3 * edge / 7,
                    "{b:?} side"
                );
            }
        }
        for ((_, z, y, x), &v) in sample.input.indexed_iter() {
            if inside_any(&painting.boxes, z, y, x) {
                assert_eq!(v, 2.0, "kept voxel ({z}, {y}, {x})");
            } else {
                assert!((0.0..1.0).contains(&v), "noise {v} at ({z}, {y}, {x})");
            }
        }
    }
}

#[test]
fn local_shuffling_moves_voxels_only_within_a_box() {
    // Values encode their position, so every voxel's origin is known.
    let dim = (1, 30, 20, 40);
    let image = Array4::from_shape_fn(dim, |(_, z, y, x)| (z * 10_000 + y * 100 + x) as f32);
    let config = only(|c| c.local_shuffle_probability = 1.0);
    let sample = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(
        sample.applied.local_shuffle_boxes,
        config.local_shuffle_count([30, 20, 40])
    );
    let max_side = [3, 2, 4];
    let mut moved = 0;
    for ((_, z, y, x), &v) in sample.input.indexed_iter() {
        let v = v as usize;
        let from = [v / 10_000, v / 100 % 100, v % 100];
        for (a, &at) in [z, y, x].iter().enumerate() {
            assert!(
                from[a].abs_diff(at) < max_side[a],
                "{from:?} → ({z}, {y}, {x})"
            );
        }
        moved += usize::from(from != [z, y, x]);
    }
    assert!(moved > 0);
    assert_eq!(sample.target, image);
}

#[test]
fn the_nonlinear_map_is_the_recorded_curve() {
    let image = textured((1, 16, 16, 16));
    let config = only(|c| {
        c.nonlinear_probability = 1.0;
        c.rescale_to_unit = true;
    });
    for seed in 0..4 {
        let sample = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let curve = sample.applied.nonlinear.expect("non-linear probability 1");
        let map = curve.sample(config.bezier_samples);
        assert_eq!(sample.input, sample.target.mapv(|u| map.apply(u)));
    }
}

#[test]
fn corruption_is_deterministic_for_a_seed() {
    let image = textured((1, 24, 24, 24));
    let config = GenesisConfig {
        local_shuffle_probability: 1.0,
        ..Default::default()
    };
    let run = |seed| corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a.input, b.input);
    assert_eq!(a.target, b.target);
    assert_eq!(a.applied, b.applied);
    assert_ne!(a.input, c.input);
}

#[test]
fn rescale_to_unit_windows_the_percentiles() {
    let mut channel =
        Array3::from_shape_vec((10, 10, 10), (0..1000).map(|v| v as f32).collect()).unwrap();
    let window = rescale_to_unit(channel.view_mut(), [0.5, 99.5]);
    // numpy: np.percentile(np.arange(1000), [0.5, 99.5]) = [4.995, 994.005]
    assert!((window[0] - 4.995).abs() < 1e-3 && (window[1] - 994.005).abs() < 1e-3);
    let values = channel.as_slice().unwrap();
    assert_eq!(values[0], 0.0);
    assert_eq!(values[999], 1.0);
    assert!((values[500] - (500.0 - 4.995) / (994.005 - 4.995)).abs() < 1e-6);
    assert!(values.windows(2).all(|p| p[0] <= p[1]));

    let mut constant = Array3::<f32>::from_elem((4, 4, 4), 7.0);
    assert_eq!(
        rescale_to_unit(constant.view_mut(), [0.5, 99.5]),
        [7.0, 7.0]
    );
    assert!(constant.iter().all(|&v| v == 0.0));
}

#[test]
fn non_finite_voxels_are_rejected() {
    let mut image = textured((2, 16, 16, 16));
    image[[1, 2, 3, 4]] = f32::NAN;
    let err = corrupt(
        &image,
        &GenesisConfig::default(),
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PretrainDataError::NonFinite {
                index: [1, 2, 3, 4],
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupt_into_equals_corrupt_and_reuses_the_arrays() {
    let image = textured((1, 20, 20, 20));
    let config = GenesisConfig {
        local_shuffle_probability: 1.0,
        ..Default::default()
    };
    let fresh = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    // A sample of another shape is reshaped, one of the same shape reused.
    let other = textured((2, 16, 16, 16));
    let mut sample = corrupt(&other, &config, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    corrupt_into(
        &image,
        &config,
        &mut ChaCha8Rng::seed_from_u64(9),
        &mut sample,
    )
    .unwrap();
    assert_eq!(sample.input, fresh.input);
    assert_eq!(sample.target, fresh.target);
    assert_eq!(sample.applied, fresh.applied);
    let (input, target) = (sample.input.as_ptr(), sample.target.as_ptr());
    corrupt_into(
        &image,
        &config,
        &mut ChaCha8Rng::seed_from_u64(10),
        &mut sample,
    )
    .unwrap();
    assert_eq!(
        (sample.input.as_ptr(), sample.target.as_ptr()),
        (input, target)
    );
    assert_ne!(sample.input, fresh.input);
}

#[test]
fn bulk_noise_equals_one_draw_at_a_time() {
    // The noise fills draw in bulk; the values must be rand's own `random::<f32>()` sequence.
    for width in [1, 7, 160, 1000] {
        let mut expected_rng = ChaCha8Rng::seed_from_u64(width as u64);
        let expected: Vec<f32> = (0..width).map(|_| expected_rng.random::<f32>()).collect();
        let mut out = ndarray::Array1::<f32>::zeros(width);
        let mut draws = vec![0u32; width];
        uniform_into(
            out.view_mut(),
            &mut draws,
            &mut ChaCha8Rng::seed_from_u64(width as u64),
        );
        assert_eq!(out.to_vec(), expected, "width {width}");
    }
}

#[test]
fn the_target_is_the_flipped_patch_windowed_per_channel() {
    // 2 × 66³: more than RESCALE_SAMPLES voxels per channel, so the window samples every k-th
    // row; flips every time, so rows are read backwards too.
    let image = textured((2, 66, 66, 66));
    let config = only(|c| {
        c.flip_probability = 1.0;
        c.rescale_to_unit = true;
    });
    for seed in 0..3 {
        let sample = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let mut expected = image.view();
        for axis in 0..3 {
            let flips = sample.applied.flips.iter().filter(|&&a| a == axis).count();
            if flips % 2 == 1 {
                expected.invert_axis(Axis(axis + 1));
            }
        }
        let mut expected = expected.to_owned();
        let windows: Vec<[f32; 2]> = expected
            .outer_iter_mut()
            .map(|channel| rescale_to_unit(channel, [0.5, 99.5]))
            .collect();
        assert_eq!(sample.applied.rescale_windows, windows);
        assert_eq!(sample.target, expected);
        assert_eq!(sample.input, expected, "no transform but the window");
    }
}

#[test]
fn a_non_finite_voxel_is_named_in_unflipped_coordinates() {
    let mut image = textured((1, 12, 12, 12));
    image[[0, 1, 2, 3]] = f32::INFINITY;
    let config = only(|c| c.flip_probability = 1.0);
    let err = corrupt(&image, &config, &mut ChaCha8Rng::seed_from_u64(2)).unwrap_err();
    assert!(
        matches!(
            err,
            PretrainDataError::NonFinite {
                index: [0, 1, 2, 3],
                ..
            }
        ),
        "{err}"
    );
}
