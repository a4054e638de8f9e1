//! Tests of dataset scanning, validation and saving.

use super::*;
use crate::volume::NiftiDtype;
use ndarray::Array4;
use ndarray::s;

/// A 16³ case with `channels` channels and two instances: id 1 (class 0), id 2 (class `class2`).
pub(crate) fn tiny_case(id: &str, channels: usize, class2: usize) -> Case {
    let spacing = [2.0, 1.0, 1.0];
    let mut image = Array4::<f32>::zeros((channels, 16, 16, 16));
    for ((c, d, h, w), v) in image.indexed_iter_mut() {
        *v = (c * 100 + d + h + w) as f32;
    }
    let mut mask = Array4::<f32>::zeros((1, 16, 16, 16));
    mask.slice_mut(s![0, 2..5, 3..7, 4..6]).fill(1.0);
    mask.slice_mut(s![0, 9..10, 10..14, 8..15]).fill(2.0);
    Case {
        id: id.to_string(),
        image: Volume::from_array(image, spacing),
        instances: Volume::from_array(mask, spacing),
        instance_classes: BTreeMap::from([(1, 0), (2, class2)]),
    }
}

pub(crate) fn tiny_dataset(root: &Path, modalities: &[&str]) -> Dataset {
    let meta = DatasetMeta::new("Task100_Tiny", &["a", "b"], modalities);
    let cases: Vec<Case> = ["case0", "case1", "case2"]
        .iter()
        .map(|id| tiny_case(id, modalities.len(), 1))
        .collect();
    save_dataset(root, &meta, &cases, &[]).unwrap()
}

fn problems_of(root: &Path) -> Vec<Problem> {
    match Dataset::open(root) {
        Err(DataError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn labels(root: &Path) -> PathBuf {
    root.join("raw_splitted/labelsTr")
}

#[test]
fn saved_dataset_round_trips_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path(), &["CT", "MRI"]);
    let full = Dataset::open(dir.path()).unwrap();
    assert_eq!(full.train_ids(), vec!["case0", "case1", "case2"]);
    assert!(full.warnings.is_empty(), "{:?}", full.warnings);
    assert_eq!(ds.train, full.train);
    let case = full.load_case("case1").unwrap();
    let original = tiny_case("case1", 2, 1);
    assert_eq!(case.image.data, original.image.data);
    assert_eq!(case.instances.data, original.instances.data);
    assert_eq!(case.instance_classes, original.instance_classes);
    let (boxes, classes) = case.boxes(BoxConvention::HalfOpen).unwrap();
    assert_eq!(
        boxes,
        vec![
            [2.0, 3.0, 4.0, 5.0, 7.0, 6.0],
            [9.0, 10.0, 8.0, 10.0, 14.0, 15.0]
        ]
    );
    assert_eq!(classes, vec![0, 1]);
    // The mask is stored as an integer type.
    let info = volume::read_nifti_header(full.train[0].label.as_ref().unwrap()).unwrap();
    assert_eq!(info.stored_type, volume::StoredType::U8);
}

#[test]
fn a_dataset_without_raw_splitted_opens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path(), &["CT"]);
    for folder in ["imagesTr", "labelsTr"] {
        std::fs::rename(
            dir.path().join("raw_splitted").join(folder),
            dir.path().join(folder),
        )
        .unwrap();
    }
    std::fs::remove_dir(dir.path().join("raw_splitted")).unwrap();
    let flat = Dataset::open(dir.path()).unwrap();
    assert_eq!(flat.train_ids(), ds.train_ids());
    assert!(flat.train[0].images[0].starts_with(dir.path().join("imagesTr")));
    assert_eq!(
        flat.load_case("case1").unwrap().instance_classes,
        tiny_case("case1", 1, 1).instance_classes
    );
    std::fs::remove_dir_all(dir.path().join("imagesTr")).unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("raw_splitted/imagesTr"));
    assert!(
        problems[0]
            .message
            .contains("in raw_splitted/imagesTr or imagesTr"),
        "{problems:?}"
    );
}

#[test]
fn ground_truth_uses_nndetection_boxes_in_original_space() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path(), &["CT"]);
    let gt = ds
        .ground_truth(&["case2".to_string(), "case0".to_string()])
        .unwrap();
    assert_eq!(gt[0].0, "case2");
    assert_eq!(gt[1].0, "case0");
    assert_eq!(
        gt[0].1,
        vec![
            [1.0, 2.0, 3.0, 5.0, 7.0, 6.0],
            [8.0, 9.0, 7.0, 10.0, 14.0, 15.0]
        ]
    );
    assert_eq!(gt[0].2, vec![0, 1]);
    assert!(matches!(
        ds.ground_truth(&["nope".to_string()]),
        Err(DataError::UnknownCase { .. })
    ));
}

#[test]
fn missing_modality_names_the_expected_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT", "MRI"]);
    std::fs::remove_file(dir.path().join("raw_splitted/imagesTr/case1_0001.nii.gz")).unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("imagesTr/case1_0001.nii.gz"));
    assert!(problems[0].message.contains("missing modality 1 (MRI)"));
}

#[test]
fn missing_json_names_the_expected_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT"]);
    std::fs::remove_file(labels(dir.path()).join("case2.json")).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("labelsTr/case2.json: missing instance JSON"),
        "{err}"
    );
}

#[test]
fn instance_ids_must_agree_between_mask_and_json_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT"]);
    std::fs::write(
        labels(dir.path()).join("case0.json"),
        r#"{"instances": {"1": 0}}"#,
    )
    .unwrap();
    std::fs::write(
        labels(dir.path()).join("case1.json"),
        r#"{"instances": {"1": 0, "2": 1, "3": 0}}"#,
    )
    .unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].path.ends_with("labelsTr/case0.json"));
    assert!(
        problems[0].message.contains("[2] are in the mask")
            && problems[0].message.contains("case0.nii.gz")
    );
    assert!(problems[1].path.ends_with("labelsTr/case1.json"));
    assert!(
        problems[1]
            .message
            .contains("[3] are listed here but absent from the mask")
    );
    // Quick mode skips the content checks.
    assert!(Dataset::open_with(dir.path(), &OpenOptions { quick: true }).is_ok());
    // Loading a case still checks it.
    let ds = Dataset::open_with(dir.path(), &OpenOptions { quick: true }).unwrap();
    assert!(
        ds.load_case("case1")
            .unwrap_err()
            .to_string()
            .contains("absent from the mask")
    );
}

#[test]
fn shape_and_affine_mismatches_name_the_label() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT"]);
    let small = Volume::from_array(Array4::zeros((1, 8, 16, 16)), [2.0, 1.0, 1.0]);
    volume::write_nifti(
        &small,
        &labels(dir.path()).join("case0.nii.gz"),
        NiftiDtype::U8,
    )
    .unwrap();
    std::fs::write(
        labels(dir.path()).join("case0.json"),
        r#"{"instances": {}}"#,
    )
    .unwrap();
    let mut shifted = tiny_case("case1", 1, 1).instances;
    shifted.affine[0][3] = 5.0;
    volume::write_nifti(
        &shifted,
        &labels(dir.path()).join("case1.nii.gz"),
        NiftiDtype::U8,
    )
    .unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].path.ends_with("labelsTr/case0.nii.gz"));
    assert!(
        problems[0]
            .message
            .contains("shape [D, H, W] [8, 16, 16] differs")
    );
    assert!(problems[1].path.ends_with("labelsTr/case1.nii.gz"));
    assert!(problems[1].message.contains("affine differs"));
}

#[test]
fn modality_shape_mismatch_names_the_image() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT", "MRI"]);
    let other = Volume::from_array(Array4::zeros((1, 16, 16, 12)), [2.0, 1.0, 1.0]);
    volume::write_nifti(
        &other,
        &dir.path().join("raw_splitted/imagesTr/case2_0001.nii.gz"),
        NiftiDtype::F32,
    )
    .unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("imagesTr/case2_0001.nii.gz"));
    assert!(problems[0].message.contains("[16, 16, 12] differs from"));
}

#[test]
fn class_outside_labels_names_the_json() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT"]);
    std::fs::write(
        labels(dir.path()).join("case1.json"),
        r#"{"instances": {"1": 0, "2": 5}}"#,
    )
    .unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("labelsTr/case1.json"));
    assert!(problems[0].message.contains("class 5, outside `labels`"));
}

#[test]
fn dots_non_integer_labels_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT"]);
    let images = dir.path().join("raw_splitted/imagesTr");
    std::fs::copy(
        images.join("case0_0000.nii.gz"),
        images.join("case.9_0000.nii.gz"),
    )
    .unwrap();
    let mut fractional = tiny_case("case1", 1, 1).instances;
    fractional.data[[0, 0, 0, 0]] = 1.5;
    volume::write_nifti(
        &fractional,
        &labels(dir.path()).join("case1.nii.gz"),
        NiftiDtype::F32,
    )
    .unwrap();
    // Cheap and content problems are reported together.
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].path.ends_with("imagesTr/case.9_0000.nii.gz"));
    assert!(problems[0].message.contains("contains a dot"));
    assert!(problems[1].path.ends_with("labelsTr/case1.nii.gz"));
    std::fs::remove_file(images.join("case.9_0000.nii.gz")).unwrap();
    let problems = problems_of(dir.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("labelsTr/case1.nii.gz"));
    assert!(
        problems[0]
            .message
            .contains("not non-negative whole numbers (e.g. 1.5)")
    );

    // Non-consecutive ids {1, 3}: a warning, and the dataset opens.
    let mut gap = tiny_case("case1", 1, 1);
    gap.instances
        .data
        .mapv_inplace(|v| if v == 2.0 { 3.0 } else { v });
    volume::write_nifti(
        &gap.instances,
        &labels(dir.path()).join("case1.nii.gz"),
        NiftiDtype::U8,
    )
    .unwrap();
    std::fs::write(
        labels(dir.path()).join("case1.json"),
        r#"{"instances": {"1": 0, "3": 1}}"#,
    )
    .unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.warnings.len(), 1);
    assert!(ds.warnings[0].path.ends_with("labelsTr/case1.nii.gz"));
    assert!(ds.warnings[0].message.contains("not consecutive"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), &["CT", "MRI"]);
    std::fs::remove_file(dir.path().join("raw_splitted/imagesTr/case0_0000.nii.gz")).unwrap();
    std::fs::remove_file(labels(dir.path()).join("case1.json")).unwrap();
    std::fs::remove_file(labels(dir.path()).join("case2.nii.gz")).unwrap();
    std::fs::write(
        dir.path().join("raw_splitted/imagesTr/case3_0007.nii.gz"),
        b"x",
    )
    .unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("has 4 problem(s)"), "{err}");
    for needle in [
        "case0_0000.nii.gz: missing modality 0",
        "case1.json: missing",
        "case2.nii.gz: missing",
        "case3_0007.nii.gz: modality 0007",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[test]
fn test_cases_without_labels_load_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let meta = DatasetMeta::new("Task100_Tiny", &["a", "b"], &["CT"]);
    let ds = save_dataset(
        dir.path(),
        &meta,
        &[tiny_case("tr", 1, 0)],
        &[tiny_case("ts", 1, 0)],
    )
    .unwrap();
    assert_eq!(ds.test_ids(), vec!["ts"]);
    assert!(!ds.test[0].is_labelled());
    assert!(matches!(
        ds.load_case("ts"),
        Err(DataError::Unlabelled { .. })
    ));
    assert_eq!(ds.load_image("ts").unwrap().shape(), [1, 16, 16, 16]);
    Dataset::open(dir.path()).unwrap();
}

#[test]
fn splits_are_created_once_and_user_files_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path(), &["CT"]);
    let made = ds.splits(3, 12345).unwrap();
    assert!(ds.splits_path().is_file());
    assert_eq!(made.folds.len(), 3);
    // Asking again with other parameters reads the saved file.
    assert_eq!(ds.splits(2, 1).unwrap(), made);
    std::fs::write(
        ds.splits_path(),
        r#"[{"train": ["case0", "case1"], "val": ["case2"]}]"#,
    )
    .unwrap();
    let user = ds.splits(5, 12345).unwrap();
    assert_eq!(user.folds.len(), 1);
    assert_eq!(user.folds[0].val, vec!["case2"]);
    std::fs::write(
        ds.splits_path(),
        r#"[{"train": ["case0", "case7"], "val": ["case2"]}]"#,
    )
    .unwrap();
    let err = ds.splits(5, 12345).unwrap_err().to_string();
    assert!(
        err.contains("splits.json") && err.contains("unknown case id(s)") && err.contains("case7"),
        "{err}"
    );
}
