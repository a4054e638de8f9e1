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

use ndarray::{Axis, s};
use rayon::prelude::*;

use super::error::{DataError, Problem};
use super::meta::{DatasetMeta, META_FILE_NAMES};
use super::splits::Splits;
use crate::volume::boxes::{Box3, BoxConvention, mask_to_boxes};
use crate::volume::{self, Affine, NiftiDtype, Volume};

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

/// Parse `<case>.json` (`{"instances": {"1": 0, …}}`), checking ids ≥ 1 and classes < `num_classes`.
pub fn read_instance_json(
    path: &Path,
    num_classes: usize,
) -> Result<BTreeMap<u32, usize>, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Problem::new(path, format!("cannot read: {e}"))])?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| vec![Problem::new(path, format!("invalid JSON: {e}"))])?;
    let Some(map) = value.get("instances").and_then(|v| v.as_object()) else {
        return Err(vec![Problem::new(
            path,
            "expected {\"instances\": {\"<id>\": <class>, …}}",
        )]);
    };
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let id = match k.trim().parse::<u32>() {
            Ok(0) => {
                problems.push(Problem::new(
                    path,
                    "instance id 0 is the background and cannot have a class",
                ));
                continue;
            }
            Ok(id) => id,
            Err(_) => {
                problems.push(Problem::new(
                    path,
                    format!("instance id {k:?} is not a positive integer"),
                ));
                continue;
            }
        };
        match v.as_u64() {
            Some(c) if (c as usize) < num_classes => {
                out.insert(id, c as usize);
            }
            Some(c) => problems.push(Problem::new(
                path,
                format!(
                    "instance {id} has class {c}, outside `labels` (classes 0..{})",
                    num_classes.saturating_sub(1)
                ),
            )),
            None => problems.push(Problem::new(
                path,
                format!("instance {id} has class {v}, which is not a class index"),
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Whether two affines agree within the grid tolerance (`1e-4 + 1e-5·|a|` per entry, as `read_channels`).
fn affines_close(a: &Affine, b: &Affine) -> bool {
    (0..3).all(|r| (0..4).all(|c| (a[r][c] - b[r][c]).abs() <= 1e-4 + 1e-5 * a[r][c].abs()))
}

/// Checks on a loaded mask: `(is_warning, problem)` pairs.
fn check_mask(
    mask: &Volume,
    label: &Path,
    json: &Path,
    classes: &BTreeMap<u32, usize>,
    image: Option<(&Volume, &Path)>,
) -> Vec<(bool, Problem)> {
    let mut out = Vec::new();
    let [c, d, h, w] = mask.shape();
    if c != 1 {
        out.push((
            false,
            Problem::new(
                label,
                format!("an instance mask must be 3D, this file has {c} channels/time points"),
            ),
        ));
        return out;
    }
    if let Some((img, img_path)) = image {
        push_grid_problems(
            &mut out,
            label,
            [d, h, w],
            &mask.affine,
            img.spatial_shape(),
            &img.affine,
            img_path,
        );
    }
    let (ids, bad) = mask_ids(mask);
    if let Some((count, value)) = bad {
        out.push((
            false,
            Problem::new(label, format!("{count} voxel(s) are not non-negative whole numbers (e.g. {value}); an instance mask holds 0 and ids 1..N")),
        ));
        return out;
    }
    push_id_problems(&mut out, &ids, label, json, classes);
    out
}

fn push_grid_problems(
    out: &mut Vec<(bool, Problem)>,
    path: &Path,
    shape: [usize; 3],
    affine: &Affine,
    ref_shape: [usize; 3],
    ref_affine: &Affine,
    ref_path: &Path,
) {
    if shape != ref_shape {
        out.push((
            false,
            Problem::new(
                path,
                format!(
                    "shape [D, H, W] {shape:?} differs from {} {ref_shape:?}",
                    ref_path.display()
                ),
            ),
        ));
    } else if !affines_close(affine, ref_affine) {
        out.push((
            false,
            Problem::new(
                path,
                format!(
                    "affine differs from {} ({affine:?} vs {ref_affine:?})",
                    ref_path.display()
                ),
            ),
        ));
    }
}

fn push_id_problems(
    out: &mut Vec<(bool, Problem)>,
    ids: &BTreeSet<u32>,
    label: &Path,
    json: &Path,
    classes: &BTreeMap<u32, usize>,
) {
    let listed: BTreeSet<u32> = classes.keys().copied().collect();
    let only_mask: Vec<u32> = ids.difference(&listed).copied().collect();
    let only_json: Vec<u32> = listed.difference(ids).copied().collect();
    if !only_mask.is_empty() {
        out.push((
            false,
            Problem::new(
                json,
                format!(
                    "instance id(s) {only_mask:?} are in the mask {} but not in this file",
                    label.display()
                ),
            ),
        ));
    }
    if !only_json.is_empty() {
        out.push((
            false,
            Problem::new(
                json,
                format!(
                    "instance id(s) {only_json:?} are listed here but absent from the mask {}",
                    label.display()
                ),
            ),
        ));
    }
    if let Some(&max) = ids.iter().next_back()
        && max as usize != ids.len()
    {
        out.push((
            true,
            Problem::new(
                label,
                format!(
                    "instance ids are not consecutive 1..{} (found {:?}); detlab accepts this",
                    ids.len(),
                    ids
                ),
            ),
        ));
    }
}

/// The set of non-zero ids of a mask and, if any voxel is not a whole number ≥ 0, (count, example).
fn mask_ids(mask: &Volume) -> (BTreeSet<u32>, Option<(u64, f32)>) {
    let slices: Vec<(BTreeSet<u32>, u64, f32)> = mask
        .data
        .axis_iter(Axis(1))
        .into_par_iter()
        .map(|slab| {
            let mut ids = BTreeSet::new();
            let mut bad = 0u64;
            let mut example = 0.0f32;
            let mut last = 0u32;
            for &v in slab.iter() {
                if v == 0.0 {
                    continue;
                }
                if !(v.is_finite() && v > 0.0 && v.fract() == 0.0 && v <= u32::MAX as f32) {
                    if bad == 0 {
                        example = v;
                    }
                    bad += 1;
                    continue;
                }
                let id = v as u32;
                if id != last {
                    ids.insert(id);
                    last = id;
                }
            }
            (ids, bad, example)
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut bad = 0;
    let mut example = 0.0;
    for (i, b, e) in slices {
        ids.extend(i);
        if bad == 0 && b > 0 {
            example = e;
        }
        bad += b;
    }
    (ids, (bad > 0).then_some((bad, example)))
}

/// Content checks of one case: image headers, then the mask (errors, warnings).
fn check_case_content(case: &CaseFiles, meta: &DatasetMeta) -> (Vec<Problem>, Vec<Problem>) {
    let mut found: Vec<(bool, Problem)> = Vec::new();
    let mut reference: Option<([usize; 3], Affine, &Path)> = None;
    for path in &case.images {
        match volume::read_nifti_header(path) {
            Err(e) => found.push((false, Problem::new(path, format!("unreadable image: {e}")))),
            Ok(info) => {
                let [c, d, h, w] = info.shape;
                if c != 1 {
                    found.push((false, Problem::new(path, format!("each modality file must be 3D, this one has {c} channels/time points"))));
                    continue;
                }
                match &reference {
                    None => reference = Some(([d, h, w], info.affine, path.as_path())),
                    Some((shape, affine, ref_path)) => push_grid_problems(
                        &mut found,
                        path,
                        [d, h, w],
                        &info.affine,
                        *shape,
                        affine,
                        ref_path,
                    ),
                }
            }
        }
    }
    if let (Some(label), Some(json)) = (&case.label, &case.instances_json) {
        match (
            volume::read_nifti(label),
            read_instance_json(json, meta.num_classes()),
        ) {
            (Err(e), _) => {
                found.push((false, Problem::new(label, format!("unreadable mask: {e}"))))
            }
            (Ok(_), Err(_)) => {} // already reported by the cheap checks
            (Ok(mask), Ok(classes)) => {
                let mut mask_problems = check_mask(&mask, label, json, &classes, None);
                if let Some((shape, affine, ref_path)) = &reference
                    && mask.shape()[0] == 1
                {
                    push_grid_problems(
                        &mut mask_problems,
                        label,
                        mask.spatial_shape(),
                        &mask.affine,
                        *shape,
                        affine,
                        ref_path,
                    );
                }
                found.extend(mask_problems);
            }
        }
    }
    let (warnings, errors): (Vec<_>, Vec<_>) = found.into_iter().partition(|p| p.0);
    (
        errors.into_iter().map(|p| p.1).collect(),
        warnings.into_iter().map(|p| p.1).collect(),
    )
}

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ndarray::Array4;

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
            err.contains("splits.json")
                && err.contains("unknown case id(s)")
                && err.contains("case7"),
            "{err}"
        );
    }
}
