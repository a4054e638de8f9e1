use super::*;
use crate::volume::boxes::BoxConvention;

fn pool(modality: PoolModality, channels: usize) -> PoolConfig {
    PoolConfig {
        seed: 5,
        shape: [16, 16, 16],
        modality,
        channels,
        ..PoolConfig::default()
    }
}

/// Mean absolute difference between two channels of a volume.
fn channel_difference(v: &Volume, a: usize, b: usize) -> f64 {
    let (x, y) = (
        v.data.index_axis(ndarray::Axis(0), a),
        v.data.index_axis(ndarray::Axis(0), b),
    );
    x.iter()
        .zip(y.iter())
        .map(|(p, q)| (p - q).abs() as f64)
        .sum::<f64>()
        / x.len() as f64
}

/// Whether the channels of a 4-channel image differ pairwise after per-channel z-scoring
/// (different contrasts, not just different scales).
fn channels_differ(v: &Volume) -> bool {
    let z = crate::volume::normalize_zscore(v, None).unwrap();
    (0..4).all(|a| (a + 1..4).all(|b| channel_difference(&z, a, b) > 0.2))
}

#[test]
fn pool_is_deterministic_per_index_and_differs_between_indices() {
    let config = pool(PoolModality::Ct, 1);
    let a = pool_volume(&config, 3).unwrap();
    assert_eq!(a, pool_volume(&config, 3).unwrap());
    assert_ne!(a.data, pool_volume(&config, 4).unwrap().data);
    let other_seed = PoolConfig {
        seed: 6,
        ..config.clone()
    };
    assert_ne!(a.data, pool_volume(&other_seed, 3).unwrap().data);
    // Indices far apart are as good as neighbours (the stream is infinite).
    let far = pool_volume(&config, u64::MAX).unwrap();
    assert_ne!(far.data, pool_volume(&config, u64::MAX - 1).unwrap().data);
}

#[test]
fn pool_shapes_channels_spacing_and_intensities() {
    let ct = PoolConfig {
        spacing: [2.0, 1.0, 1.0],
        ..pool(PoolModality::Ct, 1)
    };
    let v = pool_volume(&ct, 0).unwrap();
    assert_eq!(v.shape(), [1, 16, 16, 16]);
    assert_eq!(v.spacing, [2.0, 1.0, 1.0]);
    assert_eq!(v.affine[2][2], 2.0);
    // Whole HU around soft tissue: CT normalisation sees familiar values.
    assert!(
        v.data
            .iter()
            .all(|x| x.fract() == 0.0 && (-600.0..=600.0).contains(x))
    );
    let stats = v.stats();
    assert!((-80.0..160.0).contains(&stats.mean), "{stats:?}");

    let mri = pool_sample(&pool(PoolModality::Mri, 4), 1).unwrap();
    assert_eq!(mri.modality, PoolModality::Mri);
    assert_eq!(mri.volume.shape(), [4, 16, 16, 16]);
    assert!(mri.volume.data.iter().all(|x| *x >= 0.0 && x.is_finite()));
    assert!(channels_differ(&mri.volume));

    let mixed = pool(PoolModality::Mixed, 2);
    let samples: Vec<PoolSample> = (0..16).map(|i| pool_sample(&mixed, i).unwrap()).collect();
    for s in &samples {
        let expected = if s.modality == PoolModality::Ct { 1 } else { 2 };
        assert_eq!(s.volume.channels(), expected, "{:?}", s.modality);
    }
    assert!(samples.iter().any(|s| s.modality == PoolModality::Ct));
    assert!(samples.iter().any(|s| s.modality == PoolModality::Mri));
}

#[test]
fn pool_rings_and_distractors_appear_at_the_stated_rates() {
    // The default 32³ volume: at 16³ six objects of radius 2 often do not fit.
    let config = PoolConfig {
        shape: [32, 32, 32],
        ..pool(PoolModality::Ct, 1)
    };
    let n = 300;
    let samples: Vec<PoolSample> = (0..n).map(|i| pool_sample(&config, i).unwrap()).collect();
    let share = |f: &dyn Fn(&PoolSample) -> usize| {
        samples.iter().filter(|s| f(s) > 0).count() as f64 / n as f64
    };
    let mean =
        |f: &dyn Fn(&PoolSample) -> usize| samples.iter().map(f).sum::<usize>() as f64 / n as f64;
    let rings = |s: &PoolSample| s.lesions.len();
    let distractors = |s: &PoolSample| s.distractors.len();
    // P(any) = 0.8 and a uniform count in 1..=3 give a mean of 1.6 (binomial σ ≈ 0.023).
    assert!(
        (share(&rings) - 0.8).abs() < 0.07,
        "rings in {}",
        share(&rings)
    );
    assert!(
        (share(&distractors) - 0.8).abs() < 0.07,
        "distractors in {}",
        share(&distractors)
    );
    assert!(
        (mean(&rings) - 1.6).abs() < 0.2,
        "mean rings {}",
        mean(&rings)
    );
    assert!(
        (mean(&distractors) - 1.6).abs() < 0.25,
        "mean distractors {}",
        mean(&distractors)
    );
    assert!(
        samples
            .iter()
            .all(|s| s.lesions.iter().all(|o| o.kind == "ring"))
    );
    let kinds: std::collections::BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.distractors.iter().map(|o| o.kind.as_str()))
        .collect();
    assert_eq!(kinds, ["blob", "cube"].into());
    // A ring's shell is brighter than its core.
    let s = samples
        .iter()
        .find(|s| s.lesions.iter().any(|o| o.radius_mm >= 1.9))
        .unwrap();
    let ring = s.lesions.iter().find(|o| o.radius_mm >= 1.9).unwrap();
    let at = |p: [f64; 3]| {
        s.volume.data[[
            0,
            p[0].round() as usize,
            p[1].round() as usize,
            p[2].round() as usize,
        ]]
    };
    let shell = {
        let c = ring.center_mm;
        at([c[0], c[1], c[2] + ring.radius_mm - 0.5])
    };
    assert!(
        shell > at(ring.center_mm),
        "shell {shell} core {}",
        at(ring.center_mm)
    );

    let none = PoolConfig {
        lesion_probability: 0.0,
        distractor_probability: 0.0,
        ..config
    };
    assert!((0..20).all(|i| {
        let s = pool_sample(&none, i).unwrap();
        s.lesions.is_empty() && s.distractors.is_empty()
    }));
}

#[test]
fn pool_config_errors_name_the_field() {
    let err = |c: PoolConfig| c.validate().unwrap_err().to_string();
    assert!(
        err(PoolConfig {
            channels: 2,
            ..PoolConfig::default()
        })
        .contains("pool.channels")
    );
    assert!(
        err(PoolConfig {
            lesion_probability: 1.5,
            ..PoolConfig::default()
        })
        .contains("pool.lesion_probability")
    );
    assert!(
        err(PoolConfig {
            shape: [4, 32, 32],
            ..PoolConfig::default()
        })
        .contains("pool.shape")
    );
    assert!(
        err(PoolConfig {
            lesion_radius_mm: Some([3.0, 2.0]),
            ..PoolConfig::default()
        })
        .contains("pool.lesion_radius_mm")
    );
    let parsed: PoolConfig =
        serde_json::from_str(r#"{"modality": "mixed", "channels": 4}"#).unwrap();
    assert_eq!((parsed.modality, parsed.channels), (PoolModality::Mixed, 4));
    let unknown = serde_json::from_str::<PoolConfig>(r#"{"chanels": 4}"#)
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("chanels"), "{unknown}");
    assert!(serde_json::from_str::<TaskConfig>(r#"{"contrastt": 1}"#).is_err());
    assert!(serde_json::from_str::<SourceConfig>(r#"{"test_cases": 1}"#).is_err());
}

/// Classes present in a dataset's training masks.
fn classes_present(ds: &Dataset) -> std::collections::BTreeSet<usize> {
    ds.train_ids()
        .iter()
        .flat_map(|id| ds.load_case(id).unwrap().instance_classes.into_values())
        .collect()
}

#[test]
fn every_source_round_trips_with_its_labels() {
    let expected: [(&str, &[&str], usize); 3] = [
        ("organs", &["liver", "spleen", "kidney", "liver_tumour"], 1),
        ("vessels", &["vessel", "aorta"], 1),
        ("mri4", &["edema", "tumour_core"], 4),
    ];
    for (name, labels, channels) in expected {
        let dir = tempfile::tempdir().unwrap();
        let config = SourceConfig {
            cases: 3,
            shape: [24, 24, 24],
            ..SourceConfig::default()
        };
        multitalent_source(name, dir.path(), &config).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.warnings.is_empty(), "{name}: {:?}", ds.warnings);
        assert_eq!(ds.meta.labels, labels.to_vec(), "{name}");
        assert_eq!(ds.meta.num_modalities(), channels, "{name}");
        assert_eq!(ds.train_ids(), vec!["case0000", "case0001", "case0002"]);
        assert!(ds.test_ids().is_empty());
        let present = classes_present(&ds);
        // Every class but the optional liver tumour shows up in three cases.
        for (class, label) in labels.iter().enumerate() {
            if *label != "liver_tumour" {
                assert!(present.contains(&class), "{name}: no {label}");
            }
        }
        let case = ds.load_case("case0001").unwrap();
        assert_eq!(case.image.shape(), [channels, 24, 24, 24]);
        if channels == 4 {
            assert!(channels_differ(&case.image), "{name}");
            assert_eq!(ds.meta.modalities, ["FLAIR", "T1", "T1ce", "T2"]);
        } else {
            assert!(ds.meta.is_ct(0));
        }
    }
}

fn small_task(name: &str) -> TaskConfig {
    let mut config = TaskConfig {
        cases: 2,
        test_cases: 2,
        ..TaskConfig::default()
    };
    if name == "nodules" {
        config.shape = Some([24, 48, 48]);
        config.lesion_scale = 0.5;
    }
    config
}

#[test]
fn every_task_round_trips_with_its_labels_and_test_set() {
    for name in TASK_NAMES {
        let dir = tempfile::tempdir().unwrap();
        detection_task(name, dir.path(), &small_task(name)).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.warnings.is_empty(), "{name}: {:?}", ds.warnings);
        let label = match name {
            "nodules" => "nodule",
            "mri4_tumour" => "tumour",
            _ => "lesion",
        };
        assert_eq!(ds.meta.labels, [label], "{name}");
        assert_eq!(
            ds.meta.num_modalities(),
            if name == "mri4_tumour" { 4 } else { 1 }
        );
        assert_eq!((ds.train.len(), ds.test.len()), (2, 2), "{name}");
        assert!(ds.meta.test_labels);
        for id in ds.train_ids().iter().chain(&ds.test_ids()) {
            let case = ds.load_case(id).unwrap();
            let (boxes, classes) = case.boxes(BoxConvention::HalfOpen).unwrap();
            assert!(
                (1..=3).contains(&boxes.len()),
                "{name} {id}: {} targets",
                boxes.len()
            );
            assert!(classes.iter().all(|&c| c == 0));
        }
        if name == "mri4_tumour" {
            assert!(channels_differ(&ds.load_image("case0000").unwrap()));
        }
    }
}

#[test]
fn thick_slices_are_anisotropic_so_median_and_one_mm_differ() {
    let dir = tempfile::tempdir().unwrap();
    let ds = detection_task("thick_slices", dir.path(), &small_task("thick_slices")).unwrap();
    let info = crate::volume::read_nifti_header(&ds.train[0].images[0]).unwrap();
    for (a, expected) in [3.0, 0.8, 0.8].into_iter().enumerate() {
        assert!(
            (info.spacing[a] - expected).abs() < 1e-6,
            "{:?}",
            info.spacing
        );
    }
    let image = ds.load_image("case0000").unwrap();
    assert_eq!(image.shape(), [1, 12, 40, 40]);
    // Rings span more voxels in-plane than across slices.
    let case = ds.load_case("case0001").unwrap();
    let (boxes, _) = case.boxes(BoxConvention::HalfOpen).unwrap();
    for b in boxes {
        assert!(b[3] - b[0] < b[4] - b[1], "{b:?}");
    }
}

#[test]
fn tasks_are_deterministic_and_the_test_set_does_not_depend_on_cases() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let two = TaskConfig {
        cases: 2,
        test_cases: 1,
        ..TaskConfig::default()
    };
    let three = TaskConfig {
        cases: 3,
        ..two.clone()
    };
    let da = detection_task("liver_lesion", a.path(), &two).unwrap();
    let db = detection_task("liver_lesion", b.path(), &three).unwrap();
    for id in ["case0001", "test0000"] {
        assert_eq!(
            da.load_case(id).unwrap().image.data,
            db.load_case(id).unwrap().image.data,
            "{id}"
        );
    }
    assert_ne!(
        da.load_image("case0000").unwrap().data,
        da.load_image("case0001").unwrap().data
    );
    // Regenerating into the same folder with fewer cases leaves none of the old ones.
    let one = TaskConfig {
        cases: 1,
        test_cases: 0,
        ..two
    };
    let again = detection_task("mri4_tumour", b.path(), &one).unwrap();
    assert_eq!(Dataset::open(b.path()).unwrap().train_ids(), ["case0000"]);
    assert_eq!(again.meta.labels, ["tumour"]);
    // …also when switching to the LIDC-based nodules task and back.
    detection_task("nodules", b.path(), &small_task("nodules")).unwrap();
    detection_task("thick_slices", b.path(), &one).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.path().join("world.json")).unwrap()).unwrap();
    assert_eq!(record["name"], "thick_slices");
    assert!(
        record["cases"][0]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "ring")
    );
}

#[test]
fn contrast_and_lesion_scale_are_the_difficulty_knobs() {
    let make = |contrast: f64, lesion_scale: f64| {
        let dir = tempfile::tempdir().unwrap();
        let config = TaskConfig {
            cases: 1,
            test_cases: 0,
            contrast,
            lesion_scale,
            noise: 0.0,
            ..TaskConfig::default()
        };
        let ds = detection_task("liver_lesion", dir.path(), &config).unwrap();
        ds.load_case("case0000").unwrap()
    };
    let mean_in_lesions = |case: &Case| {
        let values: Vec<f64> = case
            .image
            .data
            .iter()
            .zip(case.instances.data.iter())
            .filter(|(_, m)| **m > 0.0)
            .map(|(v, _)| *v as f64)
            .collect();
        (
            values.iter().sum::<f64>() / values.len() as f64,
            values.len(),
        )
    };
    let (low, strong) = (make(0.5, 1.0), make(2.0, 1.0));
    // The same geometry; only the lesion intensity moves (hypodense: lower with more contrast).
    assert_eq!(low.instances.data, strong.instances.data);
    let ((low_mean, _), (strong_mean, _)) = (mean_in_lesions(&low), mean_in_lesions(&strong));
    assert!(strong_mean < low_mean - 40.0, "{strong_mean} vs {low_mean}");
    let (_, small) = mean_in_lesions(&make(1.0, 0.7));
    let (_, large) = mean_in_lesions(&make(1.0, 1.4));
    assert!(large > small, "{large} vs {small} lesion voxels");
}

#[test]
fn unknown_names_bad_configs_and_foreign_folders_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let err = detection_task("lung", dir.path(), &TaskConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("liver_lesion") && err.contains("\"lung\""),
        "{err}"
    );
    let err = multitalent_source("brain", dir.path(), &SourceConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("organs, vessels, mri4"), "{err}");
    let bad = TaskConfig {
        min_lesions: 4,
        max_lesions: 2,
        ..TaskConfig::default()
    };
    assert!(
        detection_task("liver_lesion", dir.path(), &bad)
            .unwrap_err()
            .to_string()
            .contains("task.min_lesions")
    );
    let bad = TaskConfig {
        contrast: 0.0,
        ..TaskConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("task.contrast")
    );
    let crowded = TaskConfig {
        min_lesions: 3,
        lesion_scale: 3.0,
        shape: Some([12, 12, 12]),
        ..TaskConfig::default()
    };
    let err = detection_task("thick_slices", dir.path(), &crowded)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("case0") && err.contains("enlarge `shape`"),
        "{err}"
    );
    let foreign = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(foreign.path().join("raw_splitted")).unwrap();
    let err = multitalent_source("organs", foreign.path(), &SourceConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not write"), "{err}");
}

#[test]
fn noise_pool_is_white_noise_without_structure() {
    let config = pool(PoolModality::Noise, 1);
    let sample = pool_sample(&config, 2).unwrap();
    assert_eq!(sample.modality, PoolModality::Noise);
    assert!(sample.lesions.is_empty() && sample.distractors.is_empty());
    let v = &sample.volume;
    let values: Vec<f64> = v.data.iter().map(|&x| x as f64).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    assert!((var.sqrt() - 100.0).abs() < 5.0, "σ {} HU", var.sqrt());
    // Neighbouring voxels are uncorrelated: nothing to predict from context.
    let [_, d, h, w] = v.shape();
    let mut lag = 0.0;
    for z in 0..d {
        for y in 0..h {
            for x in 0..w - 1 {
                lag +=
                    (v.data[[0, z, y, x]] as f64 - mean) * (v.data[[0, z, y, x + 1]] as f64 - mean);
            }
        }
    }
    let correlation = lag / (d * h * (w - 1)) as f64 / var;
    assert!(correlation.abs() < 0.05, "lag-1 correlation {correlation}");
    let bad = PoolConfig {
        channels: 2,
        ..config
    };
    assert!(bad.validate().unwrap_err().to_string().contains("channels"));
}
