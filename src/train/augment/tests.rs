use std::collections::BTreeMap;

use ndarray::{Array3, Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::train::sampler::{PatchSampler, SampleSource, crop_patch};
use crate::train::testing::{cube_case, mask_box};
use crate::volume::boxes::Box3;

/// A 16 × 20 × 20 patch with two objects, one cut by the border.
fn patch() -> Patch {
    let case = cube_case(
        "a",
        [16, 20, 20],
        &[([2, 3, 5], [4, 6, 7], 0), ([9, 12, 1], [5, 3, 4], 1)],
    );
    crop_patch(&case, [0, 0, 0], [16, 20, 20], 0.0, true)
}

/// A patch of `size` whose instance 1 (class 0, value 1 in the image) is the voxels `inside`
/// picks; its box is half-open.
fn object_patch(size: [usize; 3], inside: impl Fn([f64; 3]) -> bool) -> Patch {
    let mask = Array3::from_shape_fn(size, |(d, h, w)| {
        u16::from(inside([d as f64, h as f64, w as f64]))
    });
    let image = mask.mapv(f32::from).insert_axis(Axis(0));
    let boxes = vec![mask_box(&mask.mapv(|v| v > 0)).expect("the object is not empty")];
    Patch {
        case_id: "object".into(),
        origin: [0; 3],
        foreground: true,
        image,
        instances: Some(mask),
        boxes,
        classes: vec![0],
        instance_ids: vec![1],
        instance_classes: BTreeMap::from([(1, 0)]),
    }
}

/// Every box encloses exactly the voxels of its instance, and the image's bright voxels
/// are exactly the mask's foreground.
fn assert_consistent(p: &Patch) {
    let mask = p.instances.as_ref().unwrap();
    for (b, &id) in p.boxes.iter().zip(&p.instance_ids) {
        let from_mask = mask_box(&mask.mapv(|v| u32::from(v) == id)).unwrap();
        assert_eq!(&from_mask, b, "instance {id}");
    }
    let bright = p.image.index_axis(Axis(0), 0).mapv(|v| v > 0.5);
    assert_eq!(bright, mask.mapv(|v| v > 0));
}

/// Output positions `o` with `A · o + b = x` for the input voxels `x` of the object, and the
/// half-open box of the output voxels nearest to them.
fn expected_box(p: &Patch, draw: &SpatialDraw, size: [usize; 3]) -> [f64; 6] {
    let (a, b) = draw.affine(size, p.size());
    let inverse = invert(a);
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for ((d, h, w), &v) in p.instances.as_ref().unwrap().indexed_iter() {
        if v == 0 {
            continue;
        }
        let x = [d as f64 - b[0], h as f64 - b[1], w as f64 - b[2]];
        for j in 0..3 {
            let o: f64 = (0..3).map(|i| inverse[j][i] * x[i]).sum();
            lo[j] = lo[j].min(o);
            hi[j] = hi[j].max(o);
        }
    }
    [lo[0], lo[1], lo[2], hi[0] + 1.0, hi[1] + 1.0, hi[2] + 1.0]
}

fn invert(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det
        })
    })
}

fn assert_box_near(got: &Box3, expected: &[f64; 6], tolerance: f64, what: &str) {
    for k in 0..6 {
        assert!(
            (got[k] - expected[k]).abs() <= tolerance,
            "{what}: box {got:?}, expected {expected:?} within {tolerance}"
        );
    }
}

#[test]
fn a_rotated_ring_stays_inside_its_box() {
    // A ring in the H–W plane (radius 8, tube radius 2.2) in a 40³ generator patch.
    let centre = 19.5;
    let ring = object_patch([40, 40, 40], |[d, h, w]| {
        let radial = ((h - centre).powi(2) + (w - centre).powi(2)).sqrt() - 8.0;
        radial * radial + (d - centre).powi(2) <= 2.2 * 2.2
    });
    let size = [32, 32, 32];
    for angles in [[0.4, -0.3, 0.5], [-0.52, 0.1, 0.0], [0.0, 0.5, -0.45]] {
        let draw = SpatialDraw { angles, scale: 1.0 };
        let mut p = ring.clone();
        assert!(spatial_transform(
            &mut p,
            Some(&draw),
            size,
            Interpolation::Cubic
        ));
        boxes_from_instances(&mut p, BoxConvention::HalfOpen);
        assert_eq!(p.size(), size);
        let b = p.boxes[0];
        let mask = p.instances.as_ref().unwrap();
        // Every voxel of the mask, and every bright voxel of the cubic-spline image, lies in it.
        for ((d, h, w), &v) in mask.indexed_iter() {
            let inside = (0..3).all(|a| {
                let x = [d, h, w][a] as f64;
                x >= b[a] && x < b[a + 3]
            });
            assert!(
                v == 0 || inside,
                "{angles:?}: mask voxel {:?} outside {b:?}",
                (d, h, w)
            );
            // The image is cubic and the mask nearest-neighbour (as in nnDetection), so the
            // image's half-maximum contour may cross the mask's edge by up to one voxel.
            let near = (0..3).all(|a| {
                let x = [d, h, w][a] as f64;
                x >= b[a] - 1.0 && x < b[a + 3] + 1.0
            });
            let bright = p.image[[0, d, h, w]] > 0.5;
            assert!(
                !bright || near,
                "{angles:?}: bright voxel {:?} outside {b:?}",
                (d, h, w)
            );
        }
        // The box is the rotated ring's own, to the voxel, and the hole stays empty.
        assert_box_near(&b, &expected_box(&ring, &draw, size), 1.5, "ring");
        assert_eq!(mask[[16, 16, 16]], 0, "{angles:?}: the hole of the ring");
        // Image and mask agree away from the edges of the object.
        let agree = mask
            .iter()
            .zip(p.image.iter())
            .filter(|&(&m, &v)| (m > 0) == (v > 0.5))
            .count();
        assert!(agree as f64 > 0.98 * mask.len() as f64, "{agree}");
    }
}

#[test]
fn scaling_scales_the_box_about_the_centre() {
    // A 10 × 8 × 6 block off the centre of a 40³ generator patch.
    let block = object_patch([40, 40, 40], |[d, h, w]| {
        (12.0..22.0).contains(&d) && (20.0..28.0).contains(&h) && (15.0..21.0).contains(&w)
    });
    let size = [32, 32, 32];
    for scale in [0.75, 0.8, 1.25, 1.4] {
        let draw = SpatialDraw {
            angles: [0.0; 3],
            scale,
        };
        let mut p = block.clone();
        spatial_transform(&mut p, Some(&draw), size, Interpolation::Cubic);
        boxes_from_instances(&mut p, BoxConvention::HalfOpen);
        let b = p.boxes[0];
        // Objects grow by 1/scale about the centres (input 19.5, output 15.5).
        let zoom = 1.0 / scale;
        let original = block.boxes[0];
        for a in 0..3 {
            // The object's continuous extent is [lo − ½, hi − ½] in voxel-centre coordinates.
            let edge = |x: f64| (x - 0.5 - 19.5) * zoom + 15.5 + 0.5;
            let (lo, hi) = (edge(original[a]), edge(original[a + 3]));
            assert!(
                (b[a] - lo).abs() <= 1.0 && (b[a + 3] - hi).abs() <= 1.0,
                "scale {scale} axis {a}: {b:?} vs [{lo}, {hi})"
            );
            let extent = original[a + 3] - original[a];
            assert!(
                ((b[a + 3] - b[a]) - extent * zoom).abs() <= 1.0,
                "scale {scale} axis {a}: extent {} vs {}",
                b[a + 3] - b[a],
                extent * zoom
            );
        }
    }
}

#[test]
fn without_a_draw_the_generator_patch_is_centre_cropped_exactly() {
    let case = cube_case(
        "c",
        [30, 40, 36],
        &[([4, 6, 8], [5, 5, 5], 0), ([12, 20, 14], [6, 8, 7], 1)],
    );
    let patch_size = [16, 20, 18];
    let source: std::sync::Arc<dyn SampleSource> = std::sync::Arc::new(case.clone());
    let plain = PatchSampler::new(vec![source.clone()], patch_size, 1.0, 0.5).unwrap();
    let wide = PatchSampler::new(vec![source], patch_size, 1.0, 0.5)
        .unwrap()
        .with_generator_patch([27, 33, 30])
        .unwrap();
    for seed in 0..12 {
        let expected = plain.sample_batch(2, &mut ChaCha8Rng::seed_from_u64(seed));
        let mut got = wide.sample_batch(2, &mut ChaCha8Rng::seed_from_u64(seed));
        for (g, e) in got.iter_mut().zip(&expected) {
            assert_eq!(g.size(), [27, 33, 30]);
            let config = AugmentConfig::none();
            augment(
                g,
                &config,
                patch_size,
                BoxConvention::HalfOpen,
                &mut ChaCha8Rng::seed_from_u64(0),
            );
            assert_eq!(g, e, "seed {seed}");
        }
    }
}

#[test]
fn the_full_pipeline_keeps_boxes_on_their_objects() {
    // Nearest-neighbour images so that "bright" identifies the objects exactly.
    let config = AugmentConfig::only(|c| {
        c.rotation_probability = 0.5;
        c.scale_probability = 0.5;
        c.image_order = 0;
        c.mirror_probability = 0.5;
        c.rot90_probability = 0.3;
    });
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut changed = 0;
    let size = [12, 16, 16];
    let generator = config.generator_patch(size);
    assert!(generator.iter().zip(size).all(|(g, p)| *g > p));
    let case = cube_case(
        "g",
        generator,
        &[([9, 12, 10], [5, 6, 7], 0), ([3, 2, 2], [4, 4, 4], 1)],
    );
    let mut cropped = crop_patch(&case, [0, 0, 0], generator, 0.0, true);
    augment(
        &mut cropped,
        &AugmentConfig::none(),
        size,
        BoxConvention::HalfOpen,
        &mut rng,
    );
    assert_consistent(&cropped);
    for _ in 0..20 {
        let mut p = crop_patch(&case, [0, 0, 0], generator, 0.0, true);
        augment(&mut p, &config, size, BoxConvention::HalfOpen, &mut rng);
        assert_eq!(p.size(), size);
        assert_consistent(&p);
        changed += usize::from(p.image != cropped.image);
    }
    assert!(changed > 10, "most patches were transformed ({changed})");
    let mut p = patch();
    augment(
        &mut p,
        &AugmentConfig::none(),
        [16, 20, 20],
        BoxConvention::HalfOpen,
        &mut rng,
    );
    assert_eq!(p, patch());
}

#[test]
fn boxes_follow_the_convention_after_every_transform() {
    let config = AugmentConfig::only(|c| c.mirror_probability = 1.0);
    let mut p = patch();
    augment(
        &mut p,
        &config,
        [16, 20, 20],
        BoxConvention::NnDetection,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    // Instance 1 spans voxels d 2..=5, h 3..=8, w 5..=11; mirrored on all axes (16, 20, 20):
    // d 10..=13, h 11..=16, w 8..=14 → (min − 1, max + 1).
    assert_eq!(p.boxes[0], [9.0, 10.0, 7.0, 14.0, 17.0, 15.0]);
    let mut q = patch();
    augment(
        &mut q,
        &config,
        [16, 20, 20],
        BoxConvention::HalfOpen,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    assert_eq!(q.boxes[0], [10.0, 11.0, 8.0, 14.0, 17.0, 15.0]);
}

#[test]
fn mirroring_and_rot90_move_boxes_masks_and_images_together() {
    for axis in 0..3 {
        let mut p = patch();
        let before = p.clone();
        mirror(&mut p, axis);
        assert_consistent(&p);
        assert_ne!(p.image, before.image);
        mirror(&mut p, axis);
        assert_eq!(p, before, "mirroring twice is the identity");
    }
    let mut p = patch();
    mirror(&mut p, 2);
    assert_eq!(p.boxes[0], [2.0, 3.0, 8.0, 6.0, 9.0, 15.0]);
    let mut p = patch();
    rot90(&mut p, [1, 2], 1);
    assert_consistent(&p);
    // (h, w) ranges [3, 9) × [5, 12) → h' = [20 − 12, 20 − 5) = [8, 15), w' = [3, 9).
    assert_eq!(p.boxes[0], [2.0, 8.0, 3.0, 6.0, 15.0, 9.0]);
    let mut q = patch();
    rot90(&mut q, [1, 2], 4);
    assert_eq!(q, patch(), "four quarter turns are the identity");
}

#[test]
fn batches_are_deterministic_whatever_the_thread_count() {
    let config = AugmentConfig::only(|c| {
        c.rotation_probability = 0.7;
        c.noise_probability = 0.5;
        c.gamma_probability = 0.5;
        c.mirror_probability = 0.5;
    });
    let size = [8, 10, 10];
    let generator = config.generator_patch(size);
    let case = cube_case("b", generator, &[([3, 4, 3], [5, 6, 6], 0)]);
    let run = |threads: usize| {
        let mut batch: Vec<Patch> = (0..4)
            .map(|_| crop_patch(&case, [0, 0, 0], generator, 0.0, true))
            .collect();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                augment_batch(
                    &mut batch,
                    &config,
                    size,
                    BoxConvention::HalfOpen,
                    &mut ChaCha8Rng::seed_from_u64(9),
                )
            });
        batch
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert!(
        one.windows(2).any(|w| w[0].image != w[1].image),
        "patches draw differently"
    );
}

#[test]
fn generator_patches_match_nndetection() {
    // nnDetection's get_patch_size (batchgenerators' rotate_coords_3d), evaluated in numpy.
    let base = AugmentConfig::default();
    assert_eq!(base.generator_patch([128, 128, 128]), [249, 249, 249]);
    assert_eq!(base.generator_patch([64, 128, 128]), [170, 249, 204]);
    let insane = AugmentPreset::Insane.config();
    assert_eq!(insane.generator_patch([24, 40, 32]), [62, 77, 61]);
    let flat = AugmentConfig::only(|c| c.mirror_probability = 0.5);
    assert_eq!(flat.generator_patch([24, 40, 32]), [24, 40, 32]);
    assert_eq!(AugmentConfig::none().generator_patch([8, 8, 8]), [8, 8, 8]);
    // The rotation matrix is batchgenerators' R_x · R_y · R_z.
    let m = rotation_matrix([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
    let expected = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
    for i in 0..3 {
        for j in 0..3 {
            assert!((m[i][j] - expected[i][j]).abs() < 1e-12);
        }
    }
}

#[test]
fn intensity_transforms_leave_geometry_alone() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let config = AugmentConfig::only(|c| {
        c.noise_probability = 1.0;
        c.blur_probability = 1.0;
        c.blur_channel_probability = 1.0;
        c.brightness_probability = 1.0;
        c.contrast_probability = 1.0;
        c.low_resolution_probability = 1.0;
        c.low_resolution_channel_probability = 1.0;
        c.gamma_probability = 1.0;
        c.inverted_gamma_probability = 1.0;
    });
    let mut p = patch();
    augment(
        &mut p,
        &config,
        [16, 20, 20],
        BoxConvention::HalfOpen,
        &mut rng,
    );
    assert_eq!(p.boxes, patch().boxes);
    assert_eq!(p.instances, patch().instances);
    assert!(p.image.iter().all(|v| v.is_finite()));
    assert_ne!(p.image, patch().image);
    let mut image = Array4::<f32>::zeros((2, 4, 4, 4));
    augment_intensity(&mut image, &AugmentConfig::none(), &mut rng);
}

#[test]
fn invalid_settings_name_their_field() {
    let config = AugmentConfig {
        rot90_probability: 0.2,
        ..Default::default()
    };
    assert!(config.validate([16, 32, 32]).is_ok());
    let err = config.validate([16, 32, 16]).unwrap_err().to_string();
    assert!(
        err.contains("augment.rot90_planes") && err.contains("unequal"),
        "{err}"
    );
    for (config, field) in [
        (
            AugmentConfig {
                gamma_range: [1.5, 0.7],
                ..Default::default()
            },
            "gamma_range",
        ),
        (
            AugmentConfig {
                noise_probability: 2.0,
                ..Default::default()
            },
            "noise_probability",
        ),
        (
            AugmentConfig {
                scale_range: [0.0, 1.4],
                ..Default::default()
            },
            "scale_range",
        ),
        (
            AugmentConfig {
                rotation_degrees: [-30.0, 200.0],
                ..Default::default()
            },
            "rotation_degrees",
        ),
        (
            AugmentConfig {
                image_order: 2,
                ..Default::default()
            },
            "image_order",
        ),
        (
            AugmentConfig {
                low_resolution_zoom: [0.5, 2.0],
                ..Default::default()
            },
            "low_resolution_zoom",
        ),
    ] {
        let err = config.validate([8, 8, 8]).unwrap_err().to_string();
        assert!(err.contains(&format!("augment.{field}")), "{err}");
    }
}

#[test]
fn settings_read_as_a_preset_name_or_a_map_over_a_preset() {
    let read = |json: &str| serde_json::from_str::<AugmentConfig>(json);
    assert_eq!(read(r#""insane""#).unwrap(), AugmentPreset::Insane.config());
    assert_eq!(read("{}").unwrap(), AugmentConfig::default());
    let tuned = read(r#"{"preset": "insane", "noise_probability": 0.0}"#).unwrap();
    assert_eq!(
        tuned,
        AugmentConfig {
            noise_probability: 0.0,
            ..AugmentPreset::Insane.config()
        }
    );
    assert!(!read(r#"{"preset": "none"}"#).unwrap().enabled);
    let back = read(&serde_json::to_string(&tuned).unwrap()).unwrap();
    assert_eq!(back, tuned, "a written config reads back unchanged");
    let err = read(r#"{"noise_prob": 0.0}"#).unwrap_err().to_string();
    assert!(err.contains("unknown field `noise_prob`"), "{err}");
    let err = read(r#""fancy""#).unwrap_err().to_string();
    assert!(err.contains("fancy") && err.contains("base_more"), "{err}");
}
