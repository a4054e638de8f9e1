//! Tests of `synthetic`.

use super::*;
use crate::volume::boxes::BoxConvention;
use std::collections::BTreeMap;

fn small(seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        cases: 3,
        test_cases: 1,
        seed,
        shape: [24, 32, 32],
        spacing: [2.0, 1.4, 1.4],
        size_range_mm: [3.0, 7.0],
        max_lesions: 3,
        vessels: 2,
        blobs: 2,
        two_classes: true,
        part_solid_fraction: 0.5,
        ..SyntheticConfig::default()
    }
}

/// Bytes of every file under `root`, by relative path.
fn file_bytes(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn lidc_statistics_are_complete() {
    let s = lidc_statistics();
    assert_eq!(s.extents_mm.len(), 2653);
    assert_eq!(s.inplane_aspects.len(), 2653);
    assert_eq!(s.count_histogram.iter().map(|h| h.1).sum::<usize>(), 1018);
    assert_eq!(
        s.count_histogram.iter().map(|h| h.0 * h.1).sum::<usize>(),
        2653
    );
    assert_eq!(s.count_histogram[0], (0, 135));
    assert!(s.extents_mm.iter().all(|e| (3.0..60.0).contains(e)));
    let mut sorted = s.extents_mm.clone();
    sorted.sort_by(f64::total_cmp);
    assert!((sorted[sorted.len() / 2] - 8.3).abs() < 0.1);
}

#[test]
fn same_seed_gives_identical_files_and_another_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synthetic_dataset(a.path(), &small(7)).unwrap();
    synthetic_dataset(b.path(), &small(7)).unwrap();
    synthetic_dataset(c.path(), &small(8)).unwrap();
    // Regenerating into the same folder with fewer cases leaves no stale case behind.
    synthetic_dataset(
        c.path(),
        &SyntheticConfig {
            cases: 2,
            test_cases: 0,
            ..small(9)
        },
    )
    .unwrap();
    assert_eq!(
        Dataset::open(c.path()).unwrap().train_ids(),
        vec!["case0000", "case0001"]
    );
    synthetic_dataset(c.path(), &small(8)).unwrap();
    let (fa, fb, fc) = (
        file_bytes(a.path()),
        file_bytes(b.path()),
        file_bytes(c.path()),
    );
    assert_eq!(fa.len(), 1 + 1 + 3 * 3 + 3); // dataset.json, synthetic.json, 3×(image, mask, json), test
    assert_eq!(fa, fb);
    let image = "raw_splitted/imagesTr/case0000_0000.nii.gz";
    assert_ne!(fa[image], fc[image]);
}

#[test]
fn lesions_respect_counts_sizes_lungs_and_do_not_overlap() {
    let config = SyntheticConfig {
        min_lesions: 2,
        max_lesions: 4,
        ..small(3)
    };
    let [lo, hi] = config.size_range_mm;
    let mut classes_seen = [false; 2];
    for index in 0..6 {
        let made = synthetic_case(&config, index).unwrap();
        let n = made.lesions.len();
        assert!((2..=4).contains(&n), "case {index}: {n} lesions");
        let (boxes, classes) = made.case.boxes(BoxConvention::HalfOpen).unwrap();
        assert_eq!(boxes.len(), n, "every lesion has voxels");
        for (lesion, (b, &class)) in made.lesions.iter().zip(boxes.iter().zip(&classes)) {
            assert_eq!(lesion.class, class);
            classes_seen[class] = true;
            assert!(
                lesion.diameter_mm >= lo * 0.999 && lesion.diameter_mm <= hi * 1.001,
                "{lesion:?}"
            );
            // The labelled voxels span at most the diameter plus one voxel per axis.
            for a in 0..3 {
                let extent_mm = (b[a + 3] - b[a]) * config.spacing[a];
                assert!(
                    extent_mm <= lesion.diameter_mm + config.spacing[a] + 1e-9,
                    "{lesion:?} {b:?}"
                );
            }
        }
        // Every labelled voxel lies in the lesion's lung; instances are apart.
        let mask = made.case.instances.data.as_slice().unwrap();
        for (i, &v) in mask.iter().enumerate() {
            if v > 0.0 {
                let lesion = &made.lesions[v as usize - 1];
                assert_eq!(
                    made.lung_mask[i], lesion.lung,
                    "voxel {i} of instance {v} is outside its lung"
                );
            }
        }
        for (i, a) in made.lesions.iter().enumerate() {
            for b in &made.lesions[i + 1..] {
                assert!(
                    dist(a.center_mm, b.center_mm)
                        >= (a.diameter_mm + b.diameter_mm) / 2.0 + config.margin_mm
                );
            }
        }
        // The image is whole HU values and the anatomy is there.
        let img = made.case.image.data.as_slice().unwrap();
        assert!(
            img.iter()
                .all(|v| v.fract() == 0.0 && (-1024.0..=3071.0).contains(v))
        );
        assert!(img.iter().filter(|&&v| v < -900.0).count() > 0, "air");
        assert!(img.iter().filter(|&&v| v > 500.0).count() > 0, "bone");
        assert!(
            made.distractors.iter().any(|d| d.kind == "vessel"),
            "vessels are placed"
        );
    }
    assert!(classes_seen[0] && classes_seen[1]);
}

#[test]
fn written_dataset_validates_and_json_matches_the_mask() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(11);
    synthetic_dataset(dir.path(), &config).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    assert_eq!(ds.train_ids(), vec!["case0000", "case0001", "case0002"]);
    assert_eq!(ds.test_ids(), vec!["case0003"]);
    assert_eq!(ds.meta.labels, vec!["solid", "part_solid"]);
    assert_eq!(ds.meta.modalities, vec!["CT"]);
    assert!(ds.meta.test_labels);
    let info = crate::volume::read_nifti_header(&ds.train[0].images[0]).unwrap();
    assert_eq!(info.stored_type, crate::volume::StoredType::I16);
    assert!((0..3).all(|a| (info.spacing[a] - config.spacing[a]).abs() < 1e-6));
    let made = synthetic_case(&config, 1).unwrap();
    let case = ds.load_case("case0001").unwrap();
    assert_eq!(case.instance_classes, made.case.instance_classes);
    assert_eq!(case.image.data, made.case.image.data);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("synthetic.json")).unwrap()).unwrap();
    assert_eq!(
        record["cases"][1]["lesions"].as_array().unwrap().len(),
        made.lesions.len()
    );
}

#[test]
fn impossible_settings_are_explained() {
    let tight = SyntheticConfig {
        shape: [8, 8, 8],
        size_range_mm: [20.0, 30.0],
        ..SyntheticConfig::default()
    };
    let foreign = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(foreign.path().join("raw_splitted")).unwrap();
    let err = synthetic_dataset(foreign.path(), &SyntheticConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not write"), "{err}");
    let err = synthetic_case(&tight, 0).unwrap_err().to_string();
    assert!(
        err.contains("case0000") && err.contains("enlarge `shape`"),
        "{err}"
    );
    // A failed generation leaves nothing behind, so the fixed settings can rerun there.
    let dir = tempfile::tempdir().unwrap();
    let small = SyntheticConfig {
        cases: 2,
        test_cases: 0,
        ..tight.clone()
    };
    assert!(synthetic_dataset(dir.path(), &small).is_err());
    assert!(!dir.path().join("raw_splitted").exists());
    let fixed = SyntheticConfig {
        shape: [16, 24, 24],
        size_range_mm: [3.0, 4.0],
        ..small
    };
    synthetic_dataset(dir.path(), &fixed).unwrap();
    let bad = SyntheticConfig {
        min_lesions: 5,
        max_lesions: 2,
        ..SyntheticConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("synthetic.min_lesions")
    );
    let parsed: SyntheticConfig = serde_json::from_str(r#"{"cases": 2, "seed": 5}"#).unwrap();
    assert_eq!(parsed.cases, 2);
    assert!(serde_json::from_str::<SyntheticConfig>(r#"{"casez": 2}"#).is_err());
}
