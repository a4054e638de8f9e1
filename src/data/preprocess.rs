//! Preprocessing a whole dataset into a cache: crop, resample, normalise, boxes, restore info.
//!
//! # Pipeline (nnDetection §1.4–1.6)
//! 1. **Analysis** (only when needed: `Median` spacing or CT normalisation), over the training
//!    cases in parallel: stack channels, set NaN/±Inf to 0, crop to the non-zero region, record
//!    spacings and cropped shapes, and take every 10th foreground voxel (instance mask > 0) per
//!    channel.
//! 2. **Plan** ([`PreprocessPlan`]): the target spacing (fixed, or nnU-Net v1's median rule with
//!    the anisotropy exception, [`median_target_spacing`]) and one normalisation per channel:
//!    `"CT"` channels are clipped to the dataset's foreground percentiles (0.5/99.5) and
//!    z-scored with the dataset's foreground mean/std; other channels get a per-case z-score.
//! 3. **Per case**, in parallel: stack, clean (NaN/±Inf → 0), crop (the mask with the same
//!    box), resample (image with a cubic spline by default, skimage `resize(order=3,
//!    mode="edge", anti_aliasing=False)` as nnDetection, or linear with `image_order: 1`; mask
//!    nearest to exactly the image's new shape; see `volume::resample` for the grid convention;
//!    no separate-z resampling, as in nnDetection), normalise, and compute the boxes in
//!    nnDetection's convention `(min − 1, max + 1)` in the new grid: the sampling candidates,
//!    the training targets and the evaluation share it (see [`RestoreInfo`] for the way back).
//!    Unlike nnDetection, axes are not transposed (detlab's D axis is the slice axis already).
//!
//! # Cache layout (default `<dataset>/preprocessed/<settings-hash>/`)
//! - `manifest.json` — [`Manifest`]: format version, detlab version, settings hash, the config,
//!   the resolved plan (target spacing, per-channel normalisation with the dataset statistics),
//!   and per case its id, subset, shapes, and the size and modification time of its raw files.
//!   It is written **last**, atomically, and removed before a rebuild starts, so an interrupted
//!   run never leaves a manifest that claims completeness.
//! - `<case>.json` — [`CaseMeta`]: shape, spacing, boxes, classes, instance ids, restore info.
//! - `<case>_image.npy` — the image, little-endian f32 `[C, D, H, W]`, C order (numpy `.npy` v1,
//!   readable with `np.load`); no compression, so loading is a plain read.
//! - `<case>_instances.npy` — the instance mask, little-endian u16 `[D, H, W]` (labelled cases).
//!
//! The settings hash is FNV-1a (64 bit) of the canonical JSON of the config and the cache
//! format version. A second call with the same settings only validates the manifest (config,
//! detlab version, case list, raw files' sizes and mtimes, case files present) and reads no
//! case; any difference rebuilds (a different config gets a different folder by default).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{CaseFiles, Dataset, Subset};
use super::error::DataError;
use crate::volume::boxes::{Box3, BoxConvention, boxes_to_world, mask_to_boxes};
use crate::volume::normalize::{self, CtNormalization, IntensityStats, NormalizationScheme};
use crate::volume::{Affine, Interpolation, Volume};

/// Version of the cache layout; bump when the files or their meaning change.
pub const CACHE_FORMAT_VERSION: u32 = 2;

/// The voxel spacing every case is resampled to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSpacing {
    /// A fixed spacing `[sd, sh, sw]` mm, e.g. `{"fixed": [1.0, 1.0, 1.0]}` (the paper's 1 mm setting).
    Fixed([f64; 3]),
    /// nnDetection's rule: per-axis median of the training spacings, with the anisotropy exception.
    Median,
}

/// How intensities are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Per channel by modality: `"CT"` → CT scheme, `"CT2"` → CT2, anything else → per-case z-score.
    #[default]
    Auto,
    /// CT scheme for every channel (dataset foreground clip + z-score).
    Ct,
    /// Per-case z-score for every channel.
    #[serde(alias = "zscore")]
    ZScore,
    /// No normalisation.
    None,
}

/// Settings of [`preprocess`]; every field has a default (`{}` gives nnDetection's choices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Target spacing: `"median"` (default) or `{"fixed": [sd, sh, sw]}`.
    pub target_spacing: TargetSpacing,
    /// Intensity normalisation (default `"auto"`).
    pub normalization: Normalization,
    /// Crop each case to the bounding box of its non-zero voxels first (default true).
    pub crop_nonzero: bool,
    /// For z-scored channels, compute statistics inside the non-zero mask and zero the outside.
    pub zscore_nonzero_mask: bool,
    /// Foreground percentiles `[lower, upper]` the CT scheme clips to (default `[0.5, 99.5]`).
    pub ct_clip_percentiles: [f64; 2],
    /// Take every n-th foreground voxel for the dataset statistics (nnDetection: 10).
    pub foreground_sample_step: usize,
    /// Also preprocess the test cases (`imagesTs`), with the training statistics (default true).
    pub include_test: bool,
    /// Spline order for resampling images: 3 (default; cubic, nnDetection's choice) or 1 (linear,
    /// faster, no overshoot at edges). Labels always use order 0.
    pub image_order: u8,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            target_spacing: TargetSpacing::Median,
            normalization: Normalization::Auto,
            crop_nonzero: true,
            zscore_nonzero_mask: false,
            ct_clip_percentiles: [0.5, 99.5],
            foreground_sample_step: normalize::DEFAULT_SAMPLE_STEP,
            include_test: true,
            image_order: 3,
        }
    }
}

impl PreprocessConfig {
    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), DataError> {
        if let TargetSpacing::Fixed(s) = &self.target_spacing
            && s.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(DataError::config(
                "preprocess.target_spacing",
                format!("must be finite and positive, got {s:?}"),
            ));
        }
        let [lo, hi] = self.ct_clip_percentiles;
        if !(0.0 <= lo && lo <= hi && hi <= 100.0) {
            return Err(DataError::config(
                "preprocess.ct_clip_percentiles",
                format!(
                    "must satisfy 0 <= lower <= upper <= 100, got {:?}",
                    self.ct_clip_percentiles
                ),
            ));
        }
        if !matches!(self.image_order, 1 | 3) {
            return Err(DataError::config(
                "preprocess.image_order",
                format!(
                    "must be 3 (cubic, nnDetection) or 1 (linear), got {}",
                    self.image_order
                ),
            ));
        }
        if self.foreground_sample_step == 0 {
            return Err(DataError::config(
                "preprocess.foreground_sample_step",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The settings hash naming the default cache folder (16 hex digits).
    pub fn settings_hash(&self) -> String {
        let canonical =
            serde_json::json!({ "config": self, "format_version": CACHE_FORMAT_VERSION });
        format!("{:016x}", fnv1a64(canonical.to_string().as_bytes()))
    }
}

/// The resolved preprocessing: what every case (and any new image at inference) goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessPlan {
    /// Target spacing `[sd, sh, sw]` mm.
    pub target_spacing: [f64; 3],
    /// Whether cases are cropped to their non-zero region first.
    pub crop_nonzero: bool,
    /// One normalisation per channel.
    pub normalization: Vec<NormalizationScheme>,
    /// Dataset foreground statistics per channel (present for CT-normalised channels).
    pub intensity_stats: Vec<Option<IntensityStats>>,
    /// Modality names per channel.
    pub modalities: Vec<String>,
    /// Spline order images are resampled with (3 or 1; plans saved before it existed used 1).
    #[serde(default = "PreprocessPlan::linear_order")]
    pub image_order: u8,
}

/// How to map boxes from the preprocessed grid back to the original image.
///
/// Boxes are in `box_convention` (nnDetection's `(min − 1, max + 1)` for every cache detlab
/// writes). They are mapped through the voxels they cover: in half-open coordinates, where
/// voxel `v` spans `[v, v + 1)`, resampling scales by `cropped_shape / resampled_shape` per axis
/// (the grid-mode convention of `volume::resample`) and cropping shifts by `crop_start`; the
/// result is expressed in the same convention again. So the box of an object's voxels maps to
/// the box of the same object's voxels in the original grid (exactly when the resampling
/// factor is a whole number), which is what the evaluation derives from the original mask.
/// nnDetection instead scales the `(min − 1, max + 1)` numbers themselves, which moves the low
/// side by `1 − scale` voxels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreInfo {
    /// Spatial shape `[D, H, W]` of the original image.
    pub original_shape: [usize; 3],
    /// Spacing `[sd, sh, sw]` of the original image in mm.
    pub original_spacing: [f64; 3],
    /// Voxel-to-world affine of the original image (acts on `(w, h, d, 1)`).
    pub original_affine: Affine,
    /// First voxel `[d, h, w]` of the crop in the original grid (0 without cropping).
    pub crop_start: [usize; 3],
    /// Spatial shape after cropping, before resampling.
    pub cropped_shape: [usize; 3],
    /// Spatial shape after resampling (the preprocessed grid).
    pub resampled_shape: [usize; 3],
    /// Spacing of the preprocessed grid in mm (the target spacing).
    pub target_spacing: [f64; 3],
    /// The convention of the boxes in both grids.
    pub box_convention: BoxConvention,
}

impl RestoreInfo {
    /// Original voxels per preprocessed voxel, per axis `[d, h, w]`.
    pub fn scale(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| self.cropped_shape[a] as f64 / self.resampled_shape[a] as f64)
    }

    /// Map boxes from the preprocessed grid to voxel coordinates of the original image.
    pub fn boxes_to_original(&self, boxes: &[Box3]) -> Vec<Box3> {
        let z = self.scale();
        let s = self.crop_start.map(|v| v as f64);
        let convention = self.box_convention;
        boxes
            .iter()
            .map(|b| {
                let h = convention.to_half_open(b);
                let mut o = h;
                for a in 0..3 {
                    o[a] = h[a] * z[a] + s[a];
                    o[a + 3] = h[a + 3] * z[a] + s[a];
                }
                convention.from_half_open(&o)
            })
            .collect()
    }

    /// Map boxes from original voxel coordinates into the preprocessed grid (inverse of
    /// [`RestoreInfo::boxes_to_original`]).
    pub fn boxes_to_preprocessed(&self, boxes: &[Box3]) -> Vec<Box3> {
        let z = self.scale();
        let s = self.crop_start.map(|v| v as f64);
        let convention = self.box_convention;
        boxes
            .iter()
            .map(|b| {
                let h = convention.to_half_open(b);
                let mut o = h;
                for a in 0..3 {
                    o[a] = (h[a] - s[a]) / z[a];
                    o[a + 3] = (h[a + 3] - s[a]) / z[a];
                }
                convention.from_half_open(&o)
            })
            .collect()
    }

    /// Map boxes from the preprocessed grid to world (RAS) mm with the original affine:
    /// `[x0, y0, z0, x1, y1, z1]`, via `volume::boxes::boxes_to_world` (coordinates map like
    /// `Volume::voxel_to_world`; oblique affines give the enclosing axis-aligned box).
    pub fn boxes_to_world_mm(&self, boxes: &[Box3]) -> Vec<Box3> {
        boxes_to_world(&self.boxes_to_original(boxes), &self.original_affine)
    }
}

/// Map boxes in original voxel coordinates to world (RAS) mm `[x0, y0, z0, x1, y1, z1]` with a
/// NIfTI affine (same convention as [`RestoreInfo::boxes_to_world_mm`] and `volume::boxes::boxes_to_world`).
pub fn voxel_boxes_to_world_mm(boxes: &[Box3], affine: &Affine) -> Vec<Box3> {
    boxes_to_world(boxes, affine)
}

/// Per-case metadata stored as `<case>.json` in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseMeta {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Image shape `[C, D, H, W]` in the preprocessed grid.
    pub shape: [usize; 4],
    /// Spacing `[sd, sh, sw]` of the preprocessed grid.
    pub spacing: [f64; 3],
    /// Whether `<case>_instances.npy` exists.
    pub labelled: bool,
    /// Boxes `(min − 1, max + 1)` (nnDetection's convention) of the instances in the preprocessed grid.
    pub boxes: Vec<Box3>,
    /// Class of each box.
    pub classes: Vec<usize>,
    /// Instance id of each box (the value in the mask).
    pub instance_ids: Vec<u32>,
    /// Instances of the raw mask that vanished when resampling (too small for the new grid).
    pub lost_instances: Vec<u32>,
    /// How to map boxes back to the original image.
    pub restore: RestoreInfo,
}

/// A preprocessed case, ready for patch sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessedCase {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Normalised image `[C, D, H, W]`.
    pub image: Array4<f32>,
    /// Instance mask `[D, H, W]` (0 background); `None` for unlabelled test cases.
    pub instances: Option<Array3<u16>>,
    /// Boxes `(min − 1, max + 1)` (nnDetection's convention) in this grid, sorted by instance id.
    pub boxes: Vec<Box3>,
    /// Class of each box.
    pub classes: Vec<usize>,
    /// Instance id of each box.
    pub instance_ids: Vec<u32>,
    /// Spacing `[sd, sh, sw]` mm of this grid.
    pub spacing: [f64; 3],
    /// How to map boxes back to the original image.
    pub restore: RestoreInfo,
}

/// Size and modification time of a raw input file, to notice changed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFingerprint {
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub modified_ns: u128,
}

/// One case in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCase {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Image shape `[C, D, H, W]` after preprocessing.
    pub shape: [usize; 4],
    /// Number of instances in the preprocessed grid.
    pub instances: usize,
    /// The raw files it was made from.
    pub sources: Vec<SourceFingerprint>,
}

/// `manifest.json` of a preprocessed cache (written last; its presence means complete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"detlab-preprocessed"`.
    pub format: String,
    /// [`CACHE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// detlab version of the writer (a different version rebuilds).
    pub detlab_version: String,
    /// [`PreprocessConfig::settings_hash`].
    pub settings_hash: String,
    /// The settings.
    pub config: PreprocessConfig,
    /// The resolved plan.
    pub plan: PreprocessPlan,
    /// The dataset root.
    pub dataset_root: PathBuf,
    /// The task name.
    pub task: String,
    /// Class names.
    pub labels: Vec<String>,
    /// The cases, training first, each sorted by id.
    pub cases: Vec<ManifestCase>,
}

/// A preprocessed dataset: its cache folder, manifest, and an in-memory case cache.
#[derive(Debug)]
pub struct PreprocessedDataset {
    /// The cache folder.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Number of cases (re)built by the call that returned this (0 when the cache was reused).
    pub built_cases: usize,
    memory: Mutex<HashMap<String, Arc<PreprocessedCase>>>,
    keep_in_memory: AtomicBool,
}

impl PreprocessedDataset {
    /// Open a complete cache folder (one with a valid manifest) without checking the raw data.
    pub fn open(dir: impl AsRef<Path>) -> Result<PreprocessedDataset, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        Ok(Self::from_manifest(dir, manifest, 0))
    }

    fn from_manifest(dir: PathBuf, manifest: Manifest, built_cases: usize) -> Self {
        PreprocessedDataset {
            dir,
            manifest,
            built_cases,
            memory: Mutex::new(HashMap::new()),
            keep_in_memory: AtomicBool::new(true),
        }
    }

    /// Whether this call reused a complete cache without rebuilding anything.
    pub fn reused(&self) -> bool {
        self.built_cases == 0
    }

    /// The resolved plan (apply it to new images with [`PreprocessPlan::apply`]).
    pub fn plan(&self) -> &PreprocessPlan {
        &self.manifest.plan
    }

    /// Ids of all cases, training first.
    pub fn case_ids(&self) -> Vec<String> {
        self.manifest.cases.iter().map(|c| c.id.clone()).collect()
    }

    /// Ids of the cases of one subset.
    pub fn ids(&self, subset: Subset) -> Vec<String> {
        self.manifest
            .cases
            .iter()
            .filter(|c| c.subset == subset)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Keep loaded cases in memory (default on; the datasets detlab trains on are small).
    pub fn set_keep_in_memory(&self, keep: bool) {
        self.keep_in_memory.store(keep, Ordering::Relaxed);
        if !keep {
            self.clear_memory();
        }
    }

    /// Drop every case held in memory.
    pub fn clear_memory(&self) {
        if let Ok(mut m) = self.memory.lock() {
            m.clear();
        }
    }

    /// Read `<case>.json` of case `id`.
    pub fn case_meta(&self, id: &str) -> Result<CaseMeta, DataError> {
        self.check_known(id)?;
        let path = self.dir.join(format!("{id}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| DataError::cache(&path, format!("invalid case metadata: {e}")))
    }

    /// Load case `id` (from memory if already loaded): image, instance mask, boxes, restore info.
    pub fn load_case(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(c);
        }
        let case = self.read_case(id)?;
        if self.keep_in_memory.load(Ordering::Relaxed)
            && let Ok(mut m) = self.memory.lock()
        {
            m.insert(id.to_string(), case.clone());
        }
        Ok(case)
    }

    /// Load case `id` for one use (from memory if already loaded, otherwise from disk without
    /// keeping it): prediction reads each case once, so holding them would grow memory with
    /// the number of cases.
    pub fn load_case_once(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(c);
        }
        self.read_case(id)
    }

    fn read_case(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        let meta = self.case_meta(id)?;
        let image_path = self.dir.join(format!("{id}_image.npy"));
        let (shape, values) = read_npy_f32(&image_path)?;
        if shape != meta.shape.to_vec() {
            return Err(DataError::cache(
                &image_path,
                format!(
                    "shape {shape:?} differs from the case metadata {:?}",
                    meta.shape
                ),
            ));
        }
        let [c, d, h, w] = meta.shape;
        let image = Array4::from_shape_vec((c, d, h, w), values)
            .map_err(|e| DataError::cache(&image_path, e.to_string()))?;
        let instances = if meta.labelled {
            let path = self.dir.join(format!("{id}_instances.npy"));
            let (shape, values) = read_npy_u16(&path)?;
            if shape != vec![d, h, w] {
                return Err(DataError::cache(
                    &path,
                    format!(
                        "shape {shape:?} differs from the image's [D, H, W] {:?}",
                        [d, h, w]
                    ),
                ));
            }
            Some(
                Array3::from_shape_vec((d, h, w), values)
                    .map_err(|e| DataError::cache(&path, e.to_string()))?,
            )
        } else {
            None
        };
        let case = Arc::new(PreprocessedCase {
            id: meta.id,
            subset: meta.subset,
            image,
            instances,
            boxes: meta.boxes,
            classes: meta.classes,
            instance_ids: meta.instance_ids,
            spacing: meta.spacing,
            restore: meta.restore,
        });
        Ok(case)
    }

    /// Load several cases in parallel (keeps the order of `ids`).
    pub fn load_cases(&self, ids: &[String]) -> Result<Vec<Arc<PreprocessedCase>>, DataError> {
        ids.par_iter().map(|id| self.load_case(id)).collect()
    }

    fn check_known(&self, id: &str) -> Result<(), DataError> {
        if self.manifest.cases.iter().any(|c| c.id == id) {
            Ok(())
        } else {
            Err(DataError::UnknownCase {
                root: self.dir.clone(),
                id: id.to_string(),
            })
        }
    }
}

impl PreprocessPlan {
    fn linear_order() -> u8 {
        1
    }

    /// The interpolation images are resampled with.
    pub fn image_interpolation(&self) -> Interpolation {
        if self.image_order == 3 {
            Interpolation::Cubic
        } else {
            Interpolation::Linear
        }
    }

    /// Preprocess one image (and optionally its instance mask) exactly as the cache was made.
    ///
    /// Returns the normalised image, the resampled mask (same grid) and the restore info.
    pub fn apply(
        &self,
        image: &Volume,
        instances: Option<&Volume>,
    ) -> Result<(Volume, Option<Volume>, RestoreInfo), DataError> {
        let what = image.describe();
        if image.channels() != self.normalization.len() {
            return Err(DataError::config(
                "image",
                format!(
                    "{what} has {} channel(s) but the plan expects {}",
                    image.channels(),
                    self.normalization.len()
                ),
            ));
        }
        if let Some(m) = instances
            && (m.channels() != 1 || m.spatial_shape() != image.spatial_shape())
        {
            return Err(DataError::config(
                "instances",
                format!(
                    "mask {} has shape {:?}; it must be one channel on the image's grid {:?}",
                    m.describe(),
                    m.shape(),
                    image.spatial_shape()
                ),
            ));
        }
        let (image, _) = image.replace_non_finite(0.0);
        let original_shape = image.spatial_shape();
        let (cropped, crop) = if self.crop_nonzero {
            image.crop_to_nonzero()
        } else {
            let shape = image.spatial_shape();
            (
                image.clone(),
                crate::volume::CropInfo {
                    start: [0; 3],
                    original_shape: shape,
                    shape,
                },
            )
        };
        let cropped_mask =
            instances.map(|m| m.crop_or_pad(crop.start.map(|v| v as i64), crop.shape, 0.0));
        let resampled = cropped
            .resample(self.target_spacing, self.image_interpolation())
            .map_err(|e| DataError::volume(&what, e))?;
        let new_shape = resampled.spatial_shape();
        let mask = match cropped_mask {
            Some(m) => {
                let mut r = m
                    .resample_to_shape(new_shape, Interpolation::Nearest)
                    .map_err(|e| DataError::volume(&what, e))?;
                r.spacing = self.target_spacing;
                Some(r)
            }
            None => None,
        };
        let normalised = normalize::normalize(&resampled, &self.normalization)
            .map_err(|e| DataError::volume(&what, e))?;
        let restore = RestoreInfo {
            original_shape,
            original_spacing: image.spacing,
            original_affine: image.affine,
            crop_start: crop.start,
            cropped_shape: crop.shape,
            resampled_shape: new_shape,
            target_spacing: self.target_spacing,
            box_convention: BoxConvention::NnDetection,
        };
        Ok((normalised, mask, restore))
    }
}

/// nnU-Net v1's target spacing rule (nnDetection §1.5) from per-case spacings and cropped shapes.
///
/// Per-axis median; if the coarsest axis' median spacing exceeds 3× the smallest other median
/// spacing **and** its median size × 3 is below the smallest other median size, that axis
/// gets the 10th percentile of its spacings instead (raised to just above the smallest other
/// spacing, `+ 1e-5`, if it would fall below it).
pub fn median_target_spacing(
    spacings: &[[f64; 3]],
    shapes: &[[usize; 3]],
) -> Result<[f64; 3], DataError> {
    if spacings.is_empty() || spacings.len() != shapes.len() {
        return Err(DataError::config(
            "preprocess.target_spacing",
            "the median rule needs at least one case",
        ));
    }
    let column = |a: usize| spacings.iter().map(|s| s[a]).collect::<Vec<f64>>();
    let mut target = [0, 1, 2].map(|a| crate::util::percentile(&column(a), 50.0));
    let size = [0, 1, 2].map(|a| {
        crate::util::percentile(
            &shapes.iter().map(|s| s[a] as f64).collect::<Vec<_>>(),
            50.0,
        )
    });
    let worst = (0..3).fold(0, |best, a| if target[a] > target[best] { a } else { best });
    let others: Vec<usize> = (0..3).filter(|&a| a != worst).collect();
    let min_other_spacing = others
        .iter()
        .map(|&a| target[a])
        .fold(f64::INFINITY, f64::min);
    let min_other_size = others
        .iter()
        .map(|&a| size[a])
        .fold(f64::INFINITY, f64::min);
    if target[worst] > 3.0 * min_other_spacing && size[worst] * 3.0 < min_other_size {
        let mut v = crate::util::percentile(&column(worst), 10.0);
        if v < min_other_spacing {
            v = min_other_spacing.max(v) + 1e-5;
        }
        target[worst] = v;
    }
    Ok(target)
}

/// Preprocess `dataset` with `config` into `cache_dir` (default `<root>/preprocessed/<hash>/`),
/// or reuse that cache when it is complete and up to date (see the module docs).
pub fn preprocess(
    dataset: &Dataset,
    config: &PreprocessConfig,
    cache_dir: Option<&Path>,
) -> Result<PreprocessedDataset, DataError> {
    config.validate()?;
    let hash = config.settings_hash();
    let dir = cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dataset.root.join("preprocessed").join(&hash));
    let cases: Vec<&CaseFiles> = dataset
        .train
        .iter()
        .chain(dataset.test.iter().filter(|_| config.include_test))
        .collect();
    let sources: Vec<Vec<SourceFingerprint>> = cases
        .iter()
        .map(|c| fingerprint(c))
        .collect::<Result<_, _>>()?;

    if let Ok(manifest) = read_manifest(&dir)
        && cache_is_current(&manifest, &dir, &hash, dataset, &cases, &sources)
    {
        return Ok(PreprocessedDataset::from_manifest(dir, manifest, 0));
    }

    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let manifest_path = dir.join("manifest.json");
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| DataError::io(&manifest_path, e))?;
    }
    let plan = make_plan(dataset, config)?;
    remove_stale_case_files(&dir, &cases)?;

    let operation = format!("preprocessing {}", dataset.root.display());
    let bar = progress_bar(cases.len() as u64, "preprocessing");
    let results: Vec<ManifestCase> = cases
        .par_iter()
        .zip(sources.into_par_iter())
        .map(|(files, sources)| {
            if crate::util::interrupt::is_requested() {
                return Err(DataError::Interrupted {
                    operation: operation.clone(),
                });
            }
            let out = preprocess_case(dataset, files, &plan, &dir, sources);
            bar.inc(1);
            out
        })
        .collect::<Result<_, _>>()?;
    bar.finish_and_clear();

    let manifest = Manifest {
        format: "detlab-preprocessed".into(),
        format_version: CACHE_FORMAT_VERSION,
        detlab_version: env!("CARGO_PKG_VERSION").into(),
        settings_hash: hash,
        config: config.clone(),
        plan,
        dataset_root: dataset.root.clone(),
        task: dataset.meta.task.clone(),
        labels: dataset.meta.labels.clone(),
        cases: results,
    };
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| DataError::parse(&manifest_path, e))?;
    crate::util::atomic_write(&manifest_path, text.as_bytes())
        .map_err(|e| DataError::io(&manifest_path, e))?;
    let built = manifest.cases.len();
    Ok(PreprocessedDataset::from_manifest(dir, manifest, built))
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(len: u64, message: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target).with_message(message);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:30} {pos}/{len} cases [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Whether a manifest describes exactly what `preprocess` would build now.
fn cache_is_current(
    manifest: &Manifest,
    dir: &Path,
    hash: &str,
    dataset: &Dataset,
    cases: &[&CaseFiles],
    sources: &[Vec<SourceFingerprint>],
) -> bool {
    manifest.format_version == CACHE_FORMAT_VERSION
        && manifest.detlab_version == env!("CARGO_PKG_VERSION")
        && manifest.settings_hash == hash
        && manifest.labels == dataset.meta.labels
        && manifest.cases.len() == cases.len()
        && manifest
            .cases
            .iter()
            .zip(cases)
            .zip(sources)
            .all(|((m, c), s)| {
                m.id == c.id
                    && m.subset == c.subset
                    && &m.sources == s
                    && dir.join(format!("{}.json", m.id)).is_file()
                    && dir.join(format!("{}_image.npy", m.id)).is_file()
                    && (!c.is_labelled() || dir.join(format!("{}_instances.npy", m.id)).is_file())
            })
}

/// Remove case files of a previous build that the new case list does not have.
fn remove_stale_case_files(dir: &Path, cases: &[&CaseFiles]) -> Result<(), DataError> {
    let keep: std::collections::HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix("_image.npy")
            .or_else(|| name.strip_suffix("_instances.npy"))
            .or_else(|| {
                name.strip_suffix(".json")
                    .filter(|_| name != "manifest.json")
            });
        if let Some(id) = id
            && !keep.contains(id)
        {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    Ok(())
}

fn fingerprint(case: &CaseFiles) -> Result<Vec<SourceFingerprint>, DataError> {
    case.images
        .iter()
        .chain(&case.label)
        .chain(&case.instances_json)
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
            let modified_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            Ok(SourceFingerprint {
                path: p.clone(),
                size: m.len(),
                modified_ns,
            })
        })
        .collect()
}

fn read_manifest(dir: &Path) -> Result<Manifest, DataError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| DataError::cache(&path, format!("invalid manifest: {e}")))?;
    if manifest.format != "detlab-preprocessed" || manifest.format_version != CACHE_FORMAT_VERSION {
        return Err(DataError::cache(
            &path,
            format!(
                "format {} v{} is not detlab-preprocessed v{CACHE_FORMAT_VERSION}",
                manifest.format, manifest.format_version
            ),
        ));
    }
    Ok(manifest)
}

/// Analysis pass (if needed) and the resolved plan.
fn make_plan(dataset: &Dataset, config: &PreprocessConfig) -> Result<PreprocessPlan, DataError> {
    let n_channels = dataset.meta.num_modalities();
    let ct_channels: Vec<bool> = (0..n_channels)
        .map(|c| match config.normalization {
            Normalization::Auto => {
                dataset.meta.modalities[c].eq_ignore_ascii_case("ct")
                    || dataset.meta.modalities[c].eq_ignore_ascii_case("ct2")
            }
            Normalization::Ct => true,
            Normalization::ZScore | Normalization::None => false,
        })
        .collect();
    let needs_samples = ct_channels.iter().any(|&b| b);
    let needs_shapes = config.target_spacing == TargetSpacing::Median;

    struct Analysis {
        spacing: [f64; 3],
        shape: [usize; 3],
        samples: Vec<Vec<f32>>,
    }
    let mut analyses: Vec<Analysis> = Vec::new();
    if needs_samples || needs_shapes {
        let bar = progress_bar(dataset.train.len() as u64, "analysing");
        let operation = format!("analysing {}", dataset.root.display());
        analyses = dataset
            .train
            .par_iter()
            .map(|files| {
                if crate::util::interrupt::is_requested() {
                    return Err(DataError::Interrupted {
                        operation: operation.clone(),
                    });
                }
                let case = dataset.load_case(&files.id)?;
                let (image, _) = case.image.replace_non_finite(0.0);
                let (image, crop) = if config.crop_nonzero {
                    image.crop_to_nonzero()
                } else {
                    let s = image.spatial_shape();
                    (
                        image,
                        crate::volume::CropInfo {
                            start: [0; 3],
                            original_shape: s,
                            shape: s,
                        },
                    )
                };
                let samples = if needs_samples {
                    let mask =
                        case.instances
                            .crop_or_pad(crop.start.map(|v| v as i64), crop.shape, 0.0);
                    normalize::foreground_samples(&image, &mask, config.foreground_sample_step)
                        .map_err(|e| DataError::volume(format!("case {}", files.id), e))?
                } else {
                    Vec::new()
                };
                bar.inc(1);
                Ok(Analysis {
                    spacing: image.spacing,
                    shape: crop.shape,
                    samples,
                })
            })
            .collect::<Result<_, DataError>>()?;
        bar.finish_and_clear();
    }

    let target_spacing = match &config.target_spacing {
        TargetSpacing::Fixed(s) => *s,
        TargetSpacing::Median => {
            let spacings: Vec<[f64; 3]> = analyses.iter().map(|a| a.spacing).collect();
            let shapes: Vec<[usize; 3]> = analyses.iter().map(|a| a.shape).collect();
            median_target_spacing(&spacings, &shapes)?
        }
    };
    let mut normalization = Vec::with_capacity(n_channels);
    let mut intensity_stats = Vec::with_capacity(n_channels);
    for (c, &is_ct) in ct_channels.iter().enumerate() {
        if is_ct {
            let pooled: Vec<f32> = analyses
                .iter()
                .flat_map(|a| a.samples[c].iter().copied())
                .collect();
            let context = format!(
                "CT normalisation of channel {c} ({}) of {}",
                dataset.meta.modalities[c],
                dataset.root.display()
            );
            let stats =
                normalize::intensity_stats(&pooled).map_err(|e| DataError::volume(&context, e))?;
            let [lo, hi] = config.ct_clip_percentiles;
            let params = CtNormalization::from_samples(&pooled, lo, hi)
                .map_err(|e| DataError::volume(&context, e))?;
            let ct2 = config.normalization == Normalization::Auto
                && dataset.meta.modalities[c].eq_ignore_ascii_case("ct2");
            normalization.push(if ct2 {
                NormalizationScheme::Ct2(params)
            } else {
                NormalizationScheme::Ct(params)
            });
            intensity_stats.push(Some(stats));
        } else {
            normalization.push(match config.normalization {
                Normalization::None => NormalizationScheme::None,
                _ => NormalizationScheme::ZScore {
                    use_nonzero_mask: config.zscore_nonzero_mask,
                },
            });
            intensity_stats.push(None);
        }
    }
    Ok(PreprocessPlan {
        target_spacing,
        crop_nonzero: config.crop_nonzero,
        normalization,
        intensity_stats,
        modalities: dataset.meta.modalities.clone(),
        image_order: config.image_order,
    })
}

/// Preprocess one case and write its three files.
fn preprocess_case(
    dataset: &Dataset,
    files: &CaseFiles,
    plan: &PreprocessPlan,
    dir: &Path,
    sources: Vec<SourceFingerprint>,
) -> Result<ManifestCase, DataError> {
    let id = &files.id;
    let (image, mask, classes_by_id) = if files.is_labelled() {
        let case = dataset.load_case(id)?;
        (case.image, Some(case.instances), case.instance_classes)
    } else {
        (dataset.load_image(id)?, None, Default::default())
    };
    let (normalised, mask, restore) = plan.apply(&image, mask.as_ref())?;
    let mut boxes = Vec::new();
    let mut classes = Vec::new();
    let mut instance_ids = Vec::new();
    let mut lost = Vec::new();
    let instances = match &mask {
        Some(m) => {
            let view = m.data.index_axis(Axis(0), 0);
            let by_id = mask_to_boxes(&view, BoxConvention::NnDetection)
                .map_err(|e| DataError::volume(format!("case {id}"), e))?;
            for (&inst, &class) in &classes_by_id {
                match by_id.get(&inst) {
                    Some(b) => {
                        boxes.push(*b);
                        classes.push(class);
                        instance_ids.push(inst);
                    }
                    None => lost.push(inst),
                }
            }
            if let Some(&too_big) = classes_by_id.keys().find(|&&i| i > u16::MAX as u32) {
                return Err(DataError::cache(
                    files.label.clone().unwrap_or_default(),
                    format!(
                        "instance id {too_big} of case {id} does not fit the cache's u16 masks"
                    ),
                ));
            }
            Some(view.mapv(|v| v as u16))
        }
        None => None,
    };
    let [c, d, h, w] = normalised.shape();
    let meta = CaseMeta {
        id: id.clone(),
        subset: files.subset,
        shape: [c, d, h, w],
        spacing: normalised.spacing,
        labelled: instances.is_some(),
        boxes,
        classes,
        instance_ids,
        lost_instances: lost,
        restore,
    };
    let image_path = dir.join(format!("{id}_image.npy"));
    let flat = normalised.data.as_standard_layout();
    let image_bytes = npy_bytes(
        "<f4",
        &[c, d, h, w],
        flat.iter().flat_map(|v| v.to_le_bytes()),
    );
    crate::util::atomic_write(&image_path, &image_bytes)
        .map_err(|e| DataError::io(&image_path, e))?;
    if let Some(inst) = &instances {
        let path = dir.join(format!("{id}_instances.npy"));
        let bytes = npy_bytes(
            "<u2",
            &[d, h, w],
            inst.as_standard_layout()
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        crate::util::atomic_write(&path, &bytes).map_err(|e| DataError::io(&path, e))?;
    }
    let meta_path = dir.join(format!("{id}.json"));
    let text = serde_json::to_string_pretty(&meta).map_err(|e| DataError::parse(&meta_path, e))?;
    crate::util::atomic_write(&meta_path, text.as_bytes())
        .map_err(|e| DataError::io(&meta_path, e))?;
    Ok(ManifestCase {
        id: id.clone(),
        subset: files.subset,
        shape: [c, d, h, w],
        instances: meta.boxes.len(),
        sources,
    })
}

/// A `.npy` (v1.0) file: magic, header dict padded to 64 bytes, then the raw data.
fn npy_bytes(descr: &str, shape: &[usize], data: impl Iterator<Item = u8>) -> Vec<u8> {
    let shape_text = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + shape.iter().product::<usize>() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// Parse a `.npy` file written by [`npy_bytes`]: returns (shape, data bytes).
fn read_npy(path: &Path, descr: &str, item: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |m: &str| DataError::cache(path, m.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated .npy header"))?,
    )
    .map_err(|_| bad("the .npy header is not text"))?;
    if !header.contains(&format!("'descr': '{descr}'"))
        || !header.contains("'fortran_order': False")
    {
        return Err(DataError::cache(
            path,
            format!("expected a C-order {descr} array, header is {header:?}"),
        ));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in the .npy header"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("invalid shape in the .npy header"))?;
    let data = bytes[start + header_len..].to_vec();
    let expected = shape.iter().product::<usize>() * item;
    if data.len() != expected {
        return Err(DataError::cache(
            path,
            format!(
                "holds {} data bytes, the shape {shape:?} needs {expected} (truncated?)",
                data.len()
            ),
        ));
    }
    Ok((shape, data))
}

fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let (shape, data) = read_npy(path, "<f4", 4)?;
    Ok((
        shape,
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

fn read_npy_u16(path: &Path) -> Result<(Vec<usize>, Vec<u16>), DataError> {
    let (shape, data) = read_npy(path, "<u2", 2)?;
    Ok((
        shape,
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect(),
    ))
}

/// FNV-1a, 64 bit: a stable hash for naming cache folders (not for security).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{Case, save_dataset, tests::tiny_case};
    use crate::data::meta::DatasetMeta;
    use crate::data::synthetic::{SyntheticConfig, synthetic_dataset};
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
        let t = median_target_spacing(&spacings([5.0, 1.0, 5.0, 2.5, 5.0]), &[[300, 512, 512]; 5])
            .unwrap();
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
        let bytes = npy_bytes(
            "<f4",
            &[2, 3, 4],
            values.iter().flat_map(|v| v.to_le_bytes()),
        );
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
        let one = npy_bytes(
            "<u2",
            &[5],
            [1u16, 2, 3, 4, 5].iter().flat_map(|v| v.to_le_bytes()),
        );
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
}
