//! Tests of preprocessing and its cache.

use super::cache::{read_npy_f32, read_npy_u16};
use super::*;
use crate::data::dataset::{Case, Subset, save_dataset, tests::tiny_case};
use crate::data::meta::DatasetMeta;
use crate::data::synthetic::{SyntheticConfig, synthetic_dataset};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn synthetic(dir: &Path) -> Dataset {
    let config = SyntheticConfig {
        cases: 3,
        test_cases: 1,
        seed: 4,
        shape: [20, 40, 40],
        spacing: [1.6, 0.8, 0.8],
        size_range_mm: [3.0, 5.0],
        max_lesions: 3,
        vessels: 1,
        blobs: 1,
        ..SyntheticConfig::default()
    };
    synthetic_dataset(dir, &config).unwrap()
}

fn fixed(s: f64) -> PreprocessConfig {
    PreprocessConfig {
        target_spacing: TargetSpacing::Fixed([s, s, s]),
        ..PreprocessConfig::default()
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn median_rule_with_anisotropy_exception() {
    let shapes = vec![[40, 512, 512]; 5];
    let spacings = |d: [f64; 5]| d.map(|v| [v, 0.8, 0.7]).to_vec();
    // Anisotropic: 5 > 3 × 0.7 and 40 × 3 < 512 → 10th percentile of [1, 2.5, 5, 5, 5] = 1.6.
    let t = median_target_spacing(&spacings([5.0, 1.0, 5.0, 2.5, 5.0]), &shapes).unwrap();
    assert!(
        (t[0] - 1.6).abs() < 1e-12 && t[1] == 0.8 && t[2] == 0.7,
        "{t:?}"
    );
    // The percentile falls below the finest other spacing → just above it.
    let t = median_target_spacing(&spacings([0.3, 0.3, 5.0, 5.0, 5.0]), &shapes).unwrap();
    assert!((t[0] - (0.7 + 1e-5)).abs() < 1e-12, "{t:?}");
    // Enough slices: plain median.
    let t =
        median_target_spacing(&spacings([5.0, 1.0, 5.0, 2.5, 5.0]), &[[300, 512, 512]; 5]).unwrap();
    assert_eq!(t, [5.0, 0.8, 0.7]);
    assert!(median_target_spacing(&[], &[]).is_err());
}

#[test]
fn boxes_map_back_to_the_original_within_half_a_voxel() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synthetic(dir.path());
    // Upsampling on every axis (scale 0.625): each original voxel is sampled, so box edges
    // come back within half an original voxel. (Downsampling can skip an object's extreme
    // rows, so no such bound holds there.)
    let config = PreprocessConfig {
        target_spacing: TargetSpacing::Fixed([1.0, 0.5, 0.5]),
        ..Default::default()
    };
    let pre = preprocess(&ds, &config, None).unwrap();
    assert_eq!(pre.case_ids().len(), 4);
    let mut checked = 0;
    for id in ds.train_ids() {
        let case = pre.load_case(&id).unwrap();
        let raw = ds.load_case(&id).unwrap();
        let (orig_boxes, orig_classes) = raw.boxes(BoxConvention::NnDetection).unwrap();
        assert_eq!(case.classes, orig_classes);
        assert_eq!(case.spacing, [1.0, 0.5, 0.5]);
        assert_eq!(case.restore.original_shape, [20, 40, 40]);
        assert_eq!(case.restore.resampled_shape, [32, 64, 64]);
        assert_eq!(case.image.shape(), &[1, 32, 64, 64]);
        let scale = case.restore.scale();
        let back = case.restore.boxes_to_original(&case.boxes);
        for (b, o) in back.iter().zip(&orig_boxes) {
            for k in 0..6 {
                let tolerance = 0.5 * scale[k % 3] + 1e-9;
                assert!(
                    (b[k] - o[k]).abs() <= tolerance,
                    "{id}: {b:?} vs {o:?} (scale {scale:?})"
                );
            }
            checked += 1;
        }
        let again = case.restore.boxes_to_preprocessed(&back);
        for (a, b) in again.iter().zip(&case.boxes) {
            assert!((0..6).all(|k| (a[k] - b[k]).abs() < 1e-9));
        }
        // World positions agree with the original boxes mapped by the original affine.
        let world = case.restore.boxes_to_world_mm(&case.boxes);
        let expected = crate::volume::boxes::boxes_to_world(&orig_boxes, &raw.image.affine);
        for (w, e) in world.iter().zip(&expected) {
            // Within the voxel tolerance above, in mm: x ↔ w and y ↔ h (0.8 mm), z ↔ d (1.6 mm).
            let tolerance_mm = [0.8, 0.8, 1.6].map(|s| 0.5 * 0.625 * s + 1e-6);
            assert!(
                (0..6).all(|k| (w[k] - e[k]).abs() <= tolerance_mm[k % 3]),
                "{w:?} vs {e:?}"
            );
        }
    }
    assert!(checked >= 3);
    // The unlabelled-style test case is preprocessed too, with its labels (test_labels is true).
    let test = pre.load_case("case0003").unwrap();
    assert_eq!(test.subset, Subset::Test);
    assert!(test.instances.is_some());
}

#[test]
fn crop_resample_and_zscore_with_exact_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut case = tiny_case("case0", 1, 1);
    // Non-zero only inside [1..12, 2..15, 3..16): the crop starts at [1, 2, 3].
    case.image.data.fill(0.0);
    case.image
        .data
        .slice_mut(ndarray::s![0, 1..12, 2..15, 3..16])
        .fill(5.0);
    case.image.data[[0, 3, 4, 5]] = 9.0;
    let mut other = case.clone();
    other.id = "case1".into();
    let meta = DatasetMeta::new("Task101_Crop", &["a", "b"], &["MRI"]);
    let ds = save_dataset(dir.path(), &meta, &[case.clone(), other], &[]).unwrap();
    let pre = preprocess(&ds, &fixed(1.0), None).unwrap();
    assert_eq!(
        pre.plan().normalization,
        vec![NormalizationScheme::ZScore {
            use_nonzero_mask: false
        }]
    );
    let p = pre.load_case("case0").unwrap();
    assert_eq!(p.restore.crop_start, [1, 2, 3]);
    assert_eq!(p.restore.cropped_shape, [11, 13, 13]);
    assert_eq!(p.restore.resampled_shape, [22, 13, 13]);
    // Doubling D with nearest neighbour is exact, so boxes come back exactly.
    let (orig, _) = case.boxes(BoxConvention::NnDetection).unwrap();
    assert_eq!(p.restore.boxes_to_original(&p.boxes), orig);
    let n = p.image.len() as f64;
    let mean = p.image.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (p
        .image
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!(
        mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-4,
        "{mean} {std}"
    );
    let inst = p.instances.as_ref().unwrap();
    assert_eq!(inst.shape(), &[22, 13, 13]);
    assert_eq!(p.instance_ids, vec![1, 2]);
    // The same plan applied to the raw image gives the cached image.
    let raw = ds.load_case("case0").unwrap();
    let (image, _, restore) = pre.plan().apply(&raw.image, None).unwrap();
    assert_eq!(image.data, p.image);
    assert_eq!(restore, p.restore);
}

#[test]
fn ct_normalisation_uses_dataset_foreground_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synthetic(dir.path());
    let pre = preprocess(
        &ds,
        &PreprocessConfig {
            include_test: false,
            ..fixed(1.0)
        },
        None,
    )
    .unwrap();
    let NormalizationScheme::Ct(params) = &pre.plan().normalization[0] else {
        panic!("CT expected, got {:?}", pre.plan().normalization)
    };
    let stats = pre.plan().intensity_stats[0].as_ref().unwrap();
    assert_eq!(params.clip_lower, stats.percentile_00_5);
    assert!(
        stats.mean > -600.0 && stats.mean < 100.0,
        "lesions are soft tissue: {stats:?}"
    );
    assert_eq!(pre.ids(Subset::Test), Vec::<String>::new());
    // The statistics are those of every 10th raw foreground voxel, pooled over training cases.
    let mut pooled = Vec::new();
    for id in ds.train_ids() {
        let raw = ds.load_case(&id).unwrap();
        pooled.extend(
            normalize::foreground_samples(&raw.image, &raw.instances, 10)
                .unwrap()
                .remove(0),
        );
    }
    assert_eq!(stats, &normalize::intensity_stats(&pooled).unwrap());
    let lower = ((params.clip_lower - params.mean) / params.std) as f32;
    let upper = ((params.clip_upper - params.mean) / params.std) as f32;
    for id in pre.case_ids() {
        let c = pre.load_case(&id).unwrap();
        assert!(
            c.image
                .iter()
                .all(|&v| v >= lower - 1e-4 && v <= upper + 1e-4)
        );
    }
}

#[test]
fn cache_is_reused_and_rebuilt_when_settings_or_data_change() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synthetic(dir.path());
    let config = fixed(1.0);
    let first = preprocess(&ds, &config, None).unwrap();
    assert_eq!(first.built_cases, 4);
    assert!(first.dir.starts_with(dir.path().join("preprocessed")));
    assert!(first.dir.ends_with(config.settings_hash()));
    let manifest = first.dir.join("manifest.json");
    let image = first.dir.join("case0001_image.npy");
    let (m0, i0) = (mtime(&manifest), mtime(&image));

    let second = preprocess(&ds, &config, None).unwrap();
    assert!(second.reused());
    assert_eq!((mtime(&manifest), mtime(&image)), (m0, i0));
    // Compare what defines the cache (floats in the plan may differ by an ulp after JSON).
    assert_eq!(second.manifest.settings_hash, first.manifest.settings_hash);
    assert_eq!(second.manifest.cases, first.manifest.cases);
    let opened = PreprocessedDataset::open(&first.dir).unwrap();
    assert_eq!(
        opened.load_case("case0001").unwrap().image,
        first.load_case("case0001").unwrap().image
    );

    // In-memory cache: the same Arc until memory is cleared.
    let a = second.load_case("case0000").unwrap();
    assert!(Arc::ptr_eq(&a, &second.load_case("case0000").unwrap()));
    second.clear_memory();
    assert!(!Arc::ptr_eq(&a, &second.load_case("case0000").unwrap()));

    // Different settings → a different folder.
    let coarse = preprocess(&ds, &fixed(2.0), None).unwrap();
    assert_eq!(coarse.built_cases, 4);
    assert_ne!(coarse.dir, first.dir);
    assert_eq!(coarse.load_case("case0000").unwrap().spacing, [2.0; 3]);

    // Same explicit folder with other settings → rebuilt in place.
    let explicit = dir.path().join("my_cache");
    preprocess(&ds, &config, Some(&explicit)).unwrap();
    let rebuilt = preprocess(&ds, &fixed(2.0), Some(&explicit)).unwrap();
    assert_eq!(rebuilt.built_cases, 4);
    assert_eq!(
        PreprocessedDataset::open(&explicit)
            .unwrap()
            .manifest
            .config,
        fixed(2.0)
    );

    // A changed raw file (new modification time) → rebuilt.
    let label = ds.train[2].label.clone().unwrap();
    let file = std::fs::File::options().write(true).open(&label).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(file);
    assert_eq!(preprocess(&ds, &config, None).unwrap().built_cases, 4);
    assert!(preprocess(&ds, &config, None).unwrap().reused());

    // A missing case file → rebuilt (the manifest alone is not trusted).
    std::fs::remove_file(&image).unwrap();
    assert_eq!(preprocess(&ds, &config, None).unwrap().built_cases, 4);
    assert!(image.is_file());
}

#[test]
fn stale_cases_are_removed_and_a_missing_manifest_means_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let meta = DatasetMeta::new("Task102", &["a", "b"], &["MRI"]);
    let cases: Vec<Case> = ["c0", "c1", "c2"]
        .iter()
        .map(|id| tiny_case(id, 1, 0))
        .collect();
    let ds = save_dataset(dir.path(), &meta, &cases, &[]).unwrap();
    let cache = dir.path().join("cache");
    preprocess(&ds, &fixed(2.0), Some(&cache)).unwrap();
    // Fewer cases now: c2's files disappear on rebuild.
    let mut smaller = ds.clone();
    smaller.train.truncate(2);
    let pre = preprocess(&smaller, &fixed(2.0), Some(&cache)).unwrap();
    assert_eq!(pre.built_cases, 2);
    assert!(!cache.join("c2_image.npy").exists() && !cache.join("c2.json").exists());
    std::fs::remove_file(cache.join("manifest.json")).unwrap();
    assert!(PreprocessedDataset::open(&cache).is_err());
    assert!(matches!(
        pre.load_case("c2"),
        Err(DataError::UnknownCase { .. })
    ));
}

#[test]
fn npy_files_round_trip_and_reject_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    let values: Vec<f32> = (0..24).map(|v| v as f32 * 0.5 - 3.0).collect();
    let array = ndarray::Array3::from_shape_vec((2, 3, 4), values.clone()).unwrap();
    let bytes = npy_bytes(&array, &p).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(read_npy_f32(&p).unwrap(), (vec![2, 3, 4], values));
    std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    assert!(
        read_npy_f32(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    assert!(read_npy_u16(&p).unwrap_err().to_string().contains("<u2"));
    let one = npy_bytes(&ndarray::arr1(&[1u16, 2, 3, 4, 5]), &p).unwrap();
    std::fs::write(&p, &one).unwrap();
    assert_eq!(read_npy_u16(&p).unwrap(), (vec![5], vec![1, 2, 3, 4, 5]));
}

#[test]
fn config_serde_and_validation() {
    let c: PreprocessConfig = serde_json::from_str(
        r#"{"target_spacing": {"fixed": [1, 1, 1]}, "normalization": "zscore"}"#,
    )
    .unwrap();
    assert_eq!(c.target_spacing, TargetSpacing::Fixed([1.0; 3]));
    assert_eq!(c.normalization, Normalization::ZScore);
    let m: PreprocessConfig = serde_json::from_str(r#"{"target_spacing": "median"}"#).unwrap();
    assert_eq!(m, PreprocessConfig::default());
    assert_ne!(c.settings_hash(), m.settings_hash());
    assert_eq!(
        m.settings_hash(),
        PreprocessConfig::default().settings_hash()
    );
    assert!(serde_json::from_str::<PreprocessConfig>(r#"{"spacing": 1}"#).is_err());
    let bad = PreprocessConfig {
        target_spacing: TargetSpacing::Fixed([1.0, 0.0, 1.0]),
        ..Default::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("preprocess.target_spacing")
    );
}
