//! nnDetection's raw dataset layout: open (with validation), load cases, write datasets.
//!
//! ```text
//! <root>/dataset.yaml | dataset.yml | dataset.json
//! <root>/raw_splitted/imagesTr/<case>_<MMMM>.nii.gz   one file per modality (0000, 0001, …)
//! <root>/raw_splitted/labelsTr/<case>.nii.gz          instance mask: 0 background, 1..N instances
//! <root>/raw_splitted/labelsTr/<case>.json            {"instances": {"1": <class>, …}}
//! <root>/raw_splitted/imagesTs/…, labelsTs/…           optional test cases (same naming)
//! <root>/splits.json                                   folds (see [`super::splits`])
//! ```
//!
//! The four folders may also sit directly in `<root>` (no `raw_splitted/`); when both exist,
//! `raw_splitted/` is read. Datasets are always written with `raw_splitted/`.
//!
//! # Validation
//! [`Dataset::open`] collects every problem and returns them all in one
//! [`DataError::Invalid`], each naming its file. Cheap checks (always): the description file,
//! folder presence, file naming (`<case>_<MMMM>`, 4-digit modality index within `modalities`),
//! dots in case ids (forbidden, as nnDetection splits ids at dots), every modality present for
//! every case, a label mask and a label JSON for every training case (and every test case when
//! `test_labels` is true), JSON syntax, instance ids ≥ 1, class indices within `labels`, no case
//! in both train and test. Content checks (skipped with [`OpenOptions::quick`]; one case per
//! rayon task; run on every case whose files are all present, and reported together with the
//! cheap problems): image headers are readable, 3D, and share shape/spacing/affine across
//! modalities; the label mask is readable, has the image's shape and affine, holds only
//! non-negative whole numbers, and its instance ids equal the JSON's ids.
//!
//! Decisions (documented, tested): non-consecutive instance ids (e.g. {1, 3}) are a
//! **warning** kept in [`Dataset::warnings`], because every detlab step maps ids explicitly;
//! labels for a case without images and stray files are warnings too. Images are checked
//! through their headers only (reading every CT fully would make validation as slow as
//! preprocessing); a corrupt voxel stream is reported by the first load, naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ndarray::Axis;
use rayon::prelude::*;

mod save;
mod validate;

pub(crate) use save::write_case;
pub use save::{SaveOptions, save_dataset, save_dataset_with};
pub use validate::read_instance_json;
use validate::{check_case_content, check_mask};

use super::error::{DataError, Problem};
use super::meta::DatasetMeta;
use super::splits::Splits;
use crate::volume::boxes::{Box3, BoxConvention, mask_to_boxes};
use crate::volume::{self, Volume};

/// Which part of the raw data a case belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// `imagesTr` / `labelsTr`.
    Train,
    /// `imagesTs` / `labelsTs`.
    Test,
}

impl Subset {
    /// The image folder name (`imagesTr` / `imagesTs`).
    pub fn images_dir(self) -> &'static str {
        match self {
            Subset::Train => "imagesTr",
            Subset::Test => "imagesTs",
        }
    }

    /// The label folder name (`labelsTr` / `labelsTs`).
    pub fn labels_dir(self) -> &'static str {
        match self {
            Subset::Train => "labelsTr",
            Subset::Test => "labelsTs",
        }
    }
}

/// The files of one case: one image per modality and, when labelled, the mask and its JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaseFiles {
    /// The case id (file name without `_<MMMM>.nii.gz`).
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Image files in modality order.
    pub images: Vec<PathBuf>,
    /// The instance mask, if the case is labelled.
    pub label: Option<PathBuf>,
    /// The instance → class JSON, if the case is labelled.
    pub instances_json: Option<PathBuf>,
}

impl CaseFiles {
    /// Whether the case has a mask and a class JSON.
    pub fn is_labelled(&self) -> bool {
        self.label.is_some() && self.instances_json.is_some()
    }
}

/// Options of [`Dataset::open_with`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenOptions {
    /// Skip the content checks (reading headers and masks); only names, presence and JSON are checked.
    pub quick: bool,
}

/// A dataset in nnDetection's raw layout: description, case files and validation warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The dataset (task) folder.
    pub root: PathBuf,
    /// The description file that was read.
    pub meta_path: PathBuf,
    /// The parsed description.
    pub meta: DatasetMeta,
    /// Training cases (`imagesTr`), sorted by id.
    pub train: Vec<CaseFiles>,
    /// Test cases (`imagesTs`), sorted by id; labelled when `meta.test_labels`.
    pub test: Vec<CaseFiles>,
    /// Findings that do not stop the dataset from being used.
    pub warnings: Vec<Problem>,
}

/// One loaded case: stacked image channels, the instance mask and the instance classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case id.
    pub id: String,
    /// Image `[C, D, H, W]`, one channel per modality.
    pub image: Volume,
    /// Instance mask `[1, D, H, W]` (0 background, ids ≥ 1), on the image's grid.
    pub instances: Volume,
    /// Instance id → class index.
    pub instance_classes: BTreeMap<u32, usize>,
}

impl Case {
    /// Boxes of the instances (sorted by instance id) and their classes, in this case's voxel grid.
    ///
    /// Ids present in the mask but missing from `instance_classes` are skipped (a loaded case
    /// never has any: [`Dataset::load_case`] checks that both agree). Errors if the mask holds
    /// values that are not whole numbers.
    pub fn boxes(&self, convention: BoxConvention) -> Result<(Vec<Box3>, Vec<usize>), DataError> {
        let by_id = mask_to_boxes(&self.instances.data.index_axis(Axis(0), 0), convention)
            .map_err(|e| DataError::volume(format!("case {}", self.id), e))?;
        Ok(by_id
            .into_iter()
            .filter_map(|(id, b)| self.instance_classes.get(&id).map(|&c| (b, c)))
            .unzip())
    }
}

/// Ground truth of one case for evaluation: `(case id, boxes, classes)`.
pub type CaseGroundTruth = (String, Vec<Box3>, Vec<usize>);

impl Dataset {
    /// Open and fully validate the dataset at `root` (see the module docs for the checks).
    pub fn open(root: impl AsRef<Path>) -> Result<Dataset, DataError> {
        Self::open_with(root, &OpenOptions::default())
    }

    /// Open the dataset at `root`; `options.quick` skips the content checks.
    pub fn open_with(root: impl AsRef<Path>, options: &OpenOptions) -> Result<Dataset, DataError> {
        let root = root.as_ref().to_path_buf();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        if !root.is_dir() {
            return Err(DataError::Invalid {
                root: root.clone(),
                problems: vec![Problem::new(&root, "the dataset folder does not exist")],
            });
        }
        let (meta, meta_path) = match DatasetMeta::read_from_root(&root) {
            Ok((meta, path, w)) => {
                warnings.extend(w);
                (meta, path)
            }
            Err(ps) => return Err(DataError::Invalid { root, problems: ps }),
        };
        let nested = root.join("raw_splitted");
        let raw = if !nested.is_dir() && root.join("imagesTr").is_dir() {
            root.clone()
        } else {
            nested
        };
        let mut train = Vec::new();
        let mut test = Vec::new();
        let train_images = raw.join("imagesTr");
        if !train_images.is_dir() {
            problems.push(Problem::new(
                &train_images,
                "missing folder (training images <case>_<MMMM>.nii.gz, in raw_splitted/imagesTr or imagesTr)",
            ));
        } else {
            train = scan_subset(
                &raw,
                Subset::Train,
                &meta,
                true,
                &mut problems,
                &mut warnings,
            );
            if train.is_empty() {
                problems.push(Problem::new(&train_images, "no training images found"));
            }
        }
        if raw.join("imagesTs").is_dir() {
            test = scan_subset(
                &raw,
                Subset::Test,
                &meta,
                meta.test_labels,
                &mut problems,
                &mut warnings,
            );
        } else if meta.test_labels {
            problems.push(Problem::new(
                raw.join("imagesTs"),
                "missing folder, but `test_labels` is true",
            ));
        }
        let train_ids: BTreeSet<&str> = train.iter().map(|c| c.id.as_str()).collect();
        for c in &test {
            if train_ids.contains(c.id.as_str()) {
                problems.push(Problem::new(
                    &c.images[0],
                    format!("case id {:?} is used in both imagesTr and imagesTs", c.id),
                ));
            }
        }
        let mut dataset = Dataset {
            root: root.clone(),
            meta_path,
            meta,
            train,
            test,
            warnings,
        };
        if !options.quick {
            let (errors, warns) = dataset.check_content();
            problems.extend(errors);
            dataset.warnings.extend(warns);
        }
        if problems.is_empty() {
            dataset.warnings.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(dataset)
        } else {
            problems.sort_by(|a, b| a.path.cmp(&b.path));
            Err(DataError::Invalid { root, problems })
        }
    }

    /// The content checks of the module docs over all cases, in parallel: (errors, warnings).
    pub fn check_content(&self) -> (Vec<Problem>, Vec<Problem>) {
        let results: Vec<(Vec<Problem>, Vec<Problem>)> = self
            .train
            .par_iter()
            .chain(self.test.par_iter())
            .map(|c| check_case_content(c, &self.meta))
            .collect();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for (e, w) in results {
            errors.extend(e);
            warnings.extend(w);
        }
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        warnings.sort_by(|a, b| a.path.cmp(&b.path));
        (errors, warnings)
    }

    /// Ids of the training cases, sorted.
    pub fn train_ids(&self) -> Vec<String> {
        self.train.iter().map(|c| c.id.clone()).collect()
    }

    /// Ids of the test cases, sorted.
    pub fn test_ids(&self) -> Vec<String> {
        self.test.iter().map(|c| c.id.clone()).collect()
    }

    /// All cases, training first.
    pub fn all_cases(&self) -> impl Iterator<Item = &CaseFiles> {
        self.train.iter().chain(&self.test)
    }

    /// The files of case `id` (training or test).
    pub fn case_files(&self, id: &str) -> Result<&CaseFiles, DataError> {
        self.all_cases()
            .find(|c| c.id == id)
            .ok_or_else(|| DataError::UnknownCase {
                root: self.root.clone(),
                id: id.to_string(),
            })
    }

    /// The stacked image channels of case `id`, without labels (also for unlabelled test cases).
    pub fn load_image(&self, id: &str) -> Result<Volume, DataError> {
        let files = self.case_files(id)?;
        volume::read_channels(&files.images).map_err(|e| DataError::volume(format!("case {id}"), e))
    }

    /// Load case `id`: image channels, instance mask and classes (checked to agree with each other).
    pub fn load_case(&self, id: &str) -> Result<Case, DataError> {
        let files = self.case_files(id)?;
        let image = self.load_image(id)?;
        let (instances, instance_classes) = self.load_labels(files, Some(&image))?;
        Ok(Case {
            id: id.to_string(),
            image,
            instances,
            instance_classes,
        })
    }

    /// Read a case's mask and class JSON; with `image`, also check that the grids agree.
    fn load_labels(
        &self,
        files: &CaseFiles,
        image: Option<&Volume>,
    ) -> Result<(Volume, BTreeMap<u32, usize>), DataError> {
        let (Some(label), Some(json)) = (&files.label, &files.instances_json) else {
            return Err(DataError::Unlabelled {
                root: self.root.clone(),
                id: files.id.clone(),
            });
        };
        let classes =
            read_instance_json(json, self.meta.num_classes()).map_err(|ps| DataError::Invalid {
                root: self.root.clone(),
                problems: ps,
            })?;
        let mask = volume::read_nifti(label).map_err(|e| DataError::volume(label.display(), e))?;
        let mut problems = check_mask(
            &mask,
            label,
            json,
            &classes,
            image.map(|i| (i, files.images[0].as_path())),
        );
        problems.retain(|p| !p.0);
        if !problems.is_empty() {
            return Err(DataError::Invalid {
                root: self.root.clone(),
                problems: problems.into_iter().map(|p| p.1).collect(),
            });
        }
        Ok((mask, classes))
    }

    /// Ground-truth boxes and classes of the given cases in ORIGINAL voxel space, with
    /// nnDetection's `(min − 1, max + 1)` convention (what its evaluator compares against).
    /// Reads only the label files, in parallel; the output keeps the order of `ids`.
    pub fn ground_truth(&self, ids: &[String]) -> Result<Vec<CaseGroundTruth>, DataError> {
        ids.par_iter()
            .map(|id| {
                let files = self.case_files(id)?;
                let (mask, classes) = self.load_labels(files, None)?;
                let by_id = mask_to_boxes(
                    &mask.data.index_axis(Axis(0), 0),
                    BoxConvention::NnDetection,
                )
                .map_err(|e| DataError::volume(format!("case {id}"), e))?;
                let (boxes, cls): (Vec<Box3>, Vec<usize>) = by_id
                    .into_iter()
                    .filter_map(|(i, b)| classes.get(&i).map(|&c| (b, c)))
                    .unzip();
                Ok((id.clone(), boxes, cls))
            })
            .collect()
    }

    /// The path of the dataset's `splits.json` (the dataset root).
    pub fn splits_path(&self) -> PathBuf {
        self.root.join("splits.json")
    }

    /// The dataset's folds: `splits.json` if it exists (validated against the training ids),
    /// else a new `folds`-fold split with `seed` (nnDetection: 5 and 12345), saved there.
    pub fn splits(&self, folds: usize, seed: u64) -> Result<Splits, DataError> {
        let path = self.splits_path();
        let ids = self.train_ids();
        if path.is_file() {
            let splits = Splits::load(&path)?;
            splits.validate(&ids, &path)?;
            return Ok(splits);
        }
        let splits = Splits::k_fold(&ids, folds, seed)?;
        splits.save(&path)?;
        Ok(splits)
    }

    /// Read and validate a user-provided splits file against this dataset's training ids.
    pub fn load_splits(&self, path: &Path) -> Result<Splits, DataError> {
        let splits = Splits::load(path)?;
        splits.validate(&self.train_ids(), path)?;
        Ok(splits)
    }
}

/// List one subset's images and labels and check names, presence and label JSON.
fn scan_subset(
    raw: &Path,
    subset: Subset,
    meta: &DatasetMeta,
    labels_required: bool,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Vec<CaseFiles> {
    let images_dir = raw.join(subset.images_dir());
    let labels_dir = raw.join(subset.labels_dir());
    let n_mod = meta.num_modalities();
    let mut cases: BTreeMap<String, Vec<Option<PathBuf>>> = BTreeMap::new();
    for (path, name) in list_dir(&images_dir, problems) {
        let Some(stem) = nifti_stem(&name) else {
            warnings.push(Problem::new(
                &path,
                "ignored: not a NIfTI image (.nii.gz or .nii)",
            ));
            continue;
        };
        let Some((id, modality)) = stem
            .rsplit_once('_')
            .filter(|(_, m)| m.len() == 4 && m.bytes().all(|b| b.is_ascii_digit()))
        else {
            problems.push(Problem::new(
                &path,
                "image name must be <case>_<MMMM>.nii.gz with a 4-digit modality index",
            ));
            continue;
        };
        if let Some(problem) = case_id_problem(id) {
            problems.push(Problem::new(&path, problem));
            continue;
        }
        let m: usize = modality.parse().unwrap_or(usize::MAX);
        if m >= n_mod {
            problems.push(Problem::new(
                &path,
                format!(
                    "modality {modality} is not declared: `modalities` has indices 0..{}",
                    n_mod.saturating_sub(1)
                ),
            ));
            continue;
        }
        let slots = cases
            .entry(id.to_string())
            .or_insert_with(|| vec![None; n_mod]);
        if let Some(previous) = &slots[m] {
            problems.push(Problem::new(
                &path,
                format!(
                    "duplicate image for case {id:?} modality {modality} (also {})",
                    previous.display()
                ),
            ));
        } else {
            slots[m] = Some(path);
        }
    }

    let mut label_files: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    let labels_present = labels_dir.is_dir();
    if labels_required && !labels_present && !cases.is_empty() {
        problems.push(Problem::new(
            &labels_dir,
            "missing folder (instance masks <case>.nii.gz and <case>.json)",
        ));
    }
    if labels_present && labels_required {
        for (path, name) in list_dir(&labels_dir, problems) {
            if let Some(stem) = nifti_stem(&name) {
                let entry = label_files.entry(stem.to_string()).or_default();
                if let Some(previous) = &entry.0 {
                    problems.push(Problem::new(
                        &path,
                        format!("duplicate mask (also {})", previous.display()),
                    ));
                }
                entry.0 = Some(path);
            } else if let Some(stem) = name.strip_suffix(".json") {
                label_files.entry(stem.to_string()).or_default().1 = Some(path);
            } else {
                warnings.push(Problem::new(
                    &path,
                    "ignored: neither a mask (.nii.gz) nor an instance JSON",
                ));
            }
        }
    } else if labels_present && !labels_required {
        warnings.push(Problem::new(
            &labels_dir,
            "ignored: `test_labels` is false in the dataset description",
        ));
    }

    let mut out = Vec::new();
    for (id, slots) in cases {
        let mut images = Vec::with_capacity(n_mod);
        let mut complete = true;
        for (m, slot) in slots.into_iter().enumerate() {
            match slot {
                Some(p) => images.push(p),
                None => {
                    complete = false;
                    problems.push(Problem::new(
                        images_dir.join(format!("{id}_{m:04}.nii.gz")),
                        format!(
                            "missing modality {m} ({}) of case {id:?}",
                            meta.modalities[m]
                        ),
                    ));
                }
            }
        }
        let (mut label, mut json) = label_files.remove(&id).unwrap_or_default();
        if labels_required {
            if label.is_none() {
                problems.push(Problem::new(
                    labels_dir.join(format!("{id}.nii.gz")),
                    format!("missing instance mask of case {id:?}"),
                ));
            }
            match &json {
                None => problems.push(Problem::new(
                    labels_dir.join(format!("{id}.json")),
                    format!("missing instance JSON of case {id:?} ({{\"instances\": {{\"1\": <class>, …}}}})"),
                )),
                Some(j) => {
                    if let Err(ps) = read_instance_json(j, meta.num_classes()) {
                        problems.extend(ps);
                    }
                }
            }
        } else {
            label = None;
            json = None;
        }
        if complete {
            out.push(CaseFiles {
                id,
                subset,
                images,
                label,
                instances_json: json,
            });
        }
    }
    for (id, (mask, json)) in label_files {
        for p in [mask, json].into_iter().flatten() {
            warnings.push(Problem::new(
                p,
                format!(
                    "ignored: no images for case {id:?} in {}",
                    subset.images_dir()
                ),
            ));
        }
    }
    out
}

/// Sorted `(path, file name)` of the visible entries of a folder.
fn list_dir(dir: &Path, problems: &mut Vec<Problem>) -> Vec<(PathBuf, String)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem::new(dir, format!("cannot list folder: {e}")));
            return Vec::new();
        }
    };
    let mut out: Vec<(PathBuf, String)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .filter(|(_, n)| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// The name without `.nii.gz` / `.nii`, or `None` for other files.
fn nifti_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
}

/// Why a case id is unusable, if it is.
fn case_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("empty case id".into())
    } else if id.contains('.') {
        Some(format!(
            "case id {id:?} contains a dot; dots are not allowed (nnDetection splits ids at dots)"
        ))
    } else if id.contains(['/', '\\']) || id.trim() != id {
        Some(format!(
            "case id {id:?} contains a path separator or surrounding whitespace"
        ))
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests;
