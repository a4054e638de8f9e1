//! Writing a dataset in the nnDetection layout.

use std::collections::BTreeSet;
use std::path::Path;

use ndarray::s;
use rayon::prelude::*;

use super::*;
use crate::data::error::{DataError, Problem};
use crate::data::meta::{DatasetMeta, META_FILE_NAMES};
use crate::volume::{self, NiftiDtype, Volume};

/// Options of [`save_dataset_with`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaveOptions {
    /// Voxel type of the image files (f32 by default; i16 for CT in HU).
    pub image_dtype: NiftiDtype,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            image_dtype: NiftiDtype::F32,
        }
    }
}

/// Write cases in nnDetection's raw layout under `root` (images as f32) and open the result.
pub fn save_dataset(
    root: &Path,
    meta: &DatasetMeta,
    train: &[Case],
    test: &[Case],
) -> Result<Dataset, DataError> {
    save_dataset_with(root, meta, train, test, &SaveOptions::default())
}

/// Write cases in nnDetection's raw layout under `root` and open the result (quick checks).
///
/// Writes `dataset.json`, one NIfTI per channel (`<id>_<MMMM>.nii.gz`), and per labelled case the
/// mask as the smallest integer type that holds its ids (u8, i16 or i32) and `<id>.json`. Test
/// labels are written only when `meta.test_labels` is true. Every file is written atomically.
pub fn save_dataset_with(
    root: &Path,
    meta: &DatasetMeta,
    train: &[Case],
    test: &[Case],
    options: &SaveOptions,
) -> Result<Dataset, DataError> {
    let mut problems = Vec::new();
    for shadow in META_FILE_NAMES.iter().filter(|n| **n != "dataset.json") {
        if root.join(shadow).exists() {
            problems.push(Problem::new(
                root.join(shadow),
                "exists and would take precedence over the dataset.json being written",
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (subset, cases) in [(Subset::Train, train), (Subset::Test, test)] {
        for case in cases {
            let where_ = root
                .join("raw_splitted")
                .join(subset.images_dir())
                .join(&case.id);
            if let Some(p) = case_id_problem(&case.id) {
                problems.push(Problem::new(&where_, p));
            }
            if !seen.insert(case.id.clone()) {
                problems.push(Problem::new(
                    &where_,
                    format!("case id {:?} is given twice", case.id),
                ));
            }
            if case.image.channels() != meta.num_modalities() {
                problems.push(Problem::new(
                    &where_,
                    format!(
                        "image has {} channel(s) but `modalities` declares {}",
                        case.image.channels(),
                        meta.num_modalities()
                    ),
                ));
            }
            if case.instances.channels() != 1
                || case.instances.spatial_shape() != case.image.spatial_shape()
            {
                problems.push(Problem::new(
                    &where_,
                    format!(
                        "instance mask shape {:?} does not match image shape {:?}",
                        case.instances.shape(),
                        case.image.shape()
                    ),
                ));
            }
            if let Some((id, c)) = case
                .instance_classes
                .iter()
                .find(|(_, c)| **c >= meta.num_classes())
            {
                problems.push(Problem::new(
                    &where_,
                    format!("instance {id} has class {c}, outside `labels`"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(DataError::Invalid {
            root: root.to_path_buf(),
            problems,
        });
    }
    let raw = root.join("raw_splitted");
    let mut dirs = vec![raw.join("imagesTr"), raw.join("labelsTr")];
    if !test.is_empty() {
        dirs.push(raw.join("imagesTs"));
        if meta.test_labels {
            dirs.push(raw.join("labelsTs"));
        }
    }
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
    }
    meta.write_json(root)?;
    let jobs: Vec<(Subset, &Case)> = train
        .iter()
        .map(|c| (Subset::Train, c))
        .chain(test.iter().map(|c| (Subset::Test, c)))
        .collect();
    jobs.par_iter().try_for_each(|(subset, case)| {
        let with_labels = *subset == Subset::Train || meta.test_labels;
        write_case(&raw, *subset, case, options.image_dtype, with_labels)
    })?;
    Dataset::open_with(root, &OpenOptions { quick: true })
}

/// Write one case's channel files and (optionally) its mask and JSON.
pub(crate) fn write_case(
    raw: &Path,
    subset: Subset,
    case: &Case,
    image_dtype: NiftiDtype,
    with_labels: bool,
) -> Result<(), DataError> {
    for c in 0..case.image.channels() {
        let channel = Volume {
            data: case.image.data.slice(s![c..c + 1, .., .., ..]).to_owned(),
            spacing: case.image.spacing,
            affine: case.image.affine,
            source: Vec::new(),
        };
        let path = raw
            .join(subset.images_dir())
            .join(format!("{}_{c:04}.nii.gz", case.id));
        volume::write_nifti(&channel, &path, image_dtype)
            .map_err(|e| DataError::volume(path.display(), e))?;
    }
    if !with_labels {
        return Ok(());
    }
    let labels = raw.join(subset.labels_dir());
    let max_id = case.instances.data.iter().fold(0.0f32, |m, &v| m.max(v));
    let dtype = if max_id <= u8::MAX as f32 {
        NiftiDtype::U8
    } else if max_id <= i16::MAX as f32 {
        NiftiDtype::I16
    } else {
        NiftiDtype::I32
    };
    let mask_path = labels.join(format!("{}.nii.gz", case.id));
    volume::write_nifti(&case.instances, &mask_path, dtype)
        .map_err(|e| DataError::volume(mask_path.display(), e))?;
    let instances: serde_json::Map<String, serde_json::Value> = case
        .instance_classes
        .iter()
        .map(|(id, c)| (id.to_string(), serde_json::Value::from(*c)))
        .collect();
    let json_path = labels.join(format!("{}.json", case.id));
    let text = serde_json::to_string_pretty(&serde_json::json!({ "instances": instances }))
        .map_err(|e| DataError::parse(&json_path, e))?;
    crate::util::atomic_write(&json_path, text.as_bytes()).map_err(|e| DataError::io(&json_path, e))
}
