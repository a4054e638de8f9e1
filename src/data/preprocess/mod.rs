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

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::Axis;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod cache;

pub use cache::{
    CaseMeta, Manifest, ManifestCase, PreprocessedCase, PreprocessedDataset, SourceFingerprint,
};
use cache::{cache_is_current, fingerprint, npy_bytes, read_manifest, remove_stale_case_files};

use super::dataset::{CaseFiles, Dataset};
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
        let (z, s) = (self.scale(), self.crop_start.map(|v| v as f64));
        self.map_edges(boxes, |x, a| x * z[a] + s[a])
    }

    /// Map boxes from original voxel coordinates into the preprocessed grid (inverse of
    /// [`RestoreInfo::boxes_to_original`]).
    pub fn boxes_to_preprocessed(&self, boxes: &[Box3]) -> Vec<Box3> {
        let (z, s) = (self.scale(), self.crop_start.map(|v| v as f64));
        self.map_edges(boxes, |x, a| (x - s[a]) / z[a])
    }

    /// Apply `f(edge, axis)` to both half-open edges of every box on every axis, in the box
    /// convention of this grid (the edges of voxels, not their centres, scale and shift).
    fn map_edges(&self, boxes: &[Box3], f: impl Fn(f64, usize) -> f64) -> Vec<Box3> {
        let convention = self.box_convention;
        boxes
            .iter()
            .map(|b| {
                let mut o = convention.to_half_open(b);
                for a in 0..3 {
                    o[a] = f(o[a], a);
                    o[a + 3] = f(o[a + 3], a);
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
    let image_bytes = npy_bytes(&normalised.data.as_standard_layout(), &image_path)?;
    crate::util::atomic_write(&image_path, &image_bytes)
        .map_err(|e| DataError::io(&image_path, e))?;
    if let Some(inst) = &instances {
        let path = dir.join(format!("{id}_instances.npy"));
        let bytes = npy_bytes(&inst.as_standard_layout(), &path)?;
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

/// FNV-1a, 64 bit: a stable hash for naming cache folders (not for security).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
