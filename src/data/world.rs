//! The synthetic world for pre-training studies: an unlabelled pool, MultiTalent-style
//! segmentation sources and four small detection tasks, all seeded and deterministic.
//!
//! The paper pre-trains on a large unlabelled (or differently labelled) pool and fine-tunes on
//! small, different detection tasks. This module builds those in miniature, following
//! pretraining.md §6.3:
//!
//! * **Pool** ([`pool_volume`], [`pool_sample`]): an infinite stream; volume `index` draws from
//!   ChaCha8 seeded by `seed` on stream `index`, so it never repeats and any index can be made
//!   alone. Each volume has a smooth low-frequency background, 2–3 rotated ellipsoid organs with
//!   soft 1-voxel edges and mild texture, 0–3 ring lesions (bright shell, darker core, mostly
//!   inside organs), 0–3 solid bright blobs or cubes of the same size (so that rings differ
//!   from distractors by shape, not brightness) and acquisition noise. CT-like volumes are in
//!   whole HU (tissue unit 0 = 40 HU, 100 HU per unit); MRI-like volumes are positive
//!   (`scale · exp(0.4 u)`, a smooth bias field, Rician noise), with 1–8 channels that show the
//!   same anatomy with different contrasts.
//! * **MultiTalent sources** ([`multitalent_source`], [`SOURCE_NAMES`]): segmentation-style
//!   datasets with different label sets, written in nnDetection's raw layout:
//!   `organs` (CT: liver, spleen, kidney, liver_tumour), `vessels` (CT: vessel, aorta) and
//!   `mri4` (FLAIR/T1/T1ce/T2: edema, tumour_core).
//! * **Detection tasks** ([`detection_task`], [`TASK_NAMES`]), each with a few labelled cases
//!   and a held-out labelled test set:
//!
//! | task | channels | shape, spacing (mm) | targets (radius at `lesion_scale` 1) | at `contrast` 1 |
//! | --- | --- | --- | --- | --- |
//! | `nodules` | CT | [40, 96, 96], [1.25, 0.7, 0.7] | lung nodules, diameter 5–14 mm (LIDC sizes) | 0–60 HU in −800 HU lung, noise 20 HU |
//! | `liver_lesion` | CT | [32, 32, 32], [1, 1, 1] | hypodense lesions, 3–5 mm, inside a textured liver | −40 HU against a 100 HU liver with 15 HU texture and 15 HU noise; bright vessels as distractors |
//! | `mri4_tumour` | FLAIR, T1, T1ce, T2 | [32, 32, 32], [1, 1, 1] | rim-enhancing tumours with edema, 2.5–4 mm | T1ce rim and FLAIR edema 1.5 tissue units above white matter; distractors bright in T1ce or FLAIR only |
//! | `thick_slices` | CT | [12, 40, 40], [3.0, 0.8, 0.8] | rings, 3–6 mm, rendered as partial-volume thick slices | shell +150–250 HU, solid blob/cube distractors as bright |
//!
//! Every task places 1–3 targets per case (`min_lesions`, `max_lesions`). The knobs for a
//! one-time difficulty calibration are `contrast` (factor on the target and distractor
//! contrast; for `nodules`, whose densities the LIDC generator fixes, it divides the noise
//! instead), `lesion_scale` (factor on the target size) and `noise` (factor on the noise σ).
//!
//! Training case `i` (`case<i>`) draws from stream `i` and test case `j` (`test<j>`) from
//! stream `2³² + j` of a generator seeded by (`seed`, name), so growing `cases` keeps the
//! earlier cases and the test set fixed (label-budget sweeps share one test set; `nodules`
//! numbers its test cases after the training cases, as `synthetic_dataset` does). Volumes with thick slices (D spacing
//! above the in-plane spacing) are rendered on thin sub-slices and averaged, as a scanner
//! would. Writing a dataset also writes `world.json` (the config and every object's geometry);
//! a folder holding a dataset that this module or `synthetic_dataset` did not write is refused.

mod pool;
mod scene;
mod sources;
mod tasks;
#[cfg(test)]
mod tests;

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dataset::{Case, Dataset, SaveOptions, save_dataset_with};
use super::error::DataError;
use super::meta::DatasetMeta;
use crate::volume::{NiftiDtype, Volume};

/// The MultiTalent source names accepted by [`multitalent_source`].
pub const SOURCE_NAMES: [&str; 3] = ["organs", "vessels", "mri4"];

/// The detection task names accepted by [`detection_task`].
pub const TASK_NAMES: [&str; 4] = ["nodules", "liver_lesion", "mri4_tumour", "thick_slices"];

/// Which scanner the pool imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolModality {
    /// CT-like: one channel in HU.
    Ct,
    /// MRI-like: `channels` positive channels with different contrasts.
    Mri,
    /// CT- or MRI-like per volume (MRI with probability `mri_fraction`).
    Mixed,
    /// White Gaussian noise in HU and nothing else: the studies' noise-pretrained control
    /// (an encoder that went through pre-training without seeing any structure).
    Noise,
}

/// Settings of the unlabelled pool; every field has a default (`{}` is a valid config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Random seed; (seed, index) fixes a volume.
    pub seed: u64,
    /// Volume shape `[D, H, W]` in voxels.
    pub shape: [usize; 3],
    /// Voxel spacing `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// `ct`, `mri` or `mixed`.
    pub modality: PoolModality,
    /// Channels of MRI-like volumes (CT-like volumes always have one).
    pub channels: usize,
    /// Share of MRI-like volumes when `modality` is `mixed`.
    pub mri_fraction: f64,
    /// Probability that a volume holds at least one ring lesion.
    pub lesion_probability: f64,
    /// Most ring lesions per volume (the count is uniform in 1..=max when there are any).
    pub max_lesions: usize,
    /// Probability that a volume holds at least one solid distractor.
    pub distractor_probability: f64,
    /// Most distractors per volume.
    pub max_distractors: usize,
    /// Ring and distractor radius range in mm; default [2, 4] mm at a 32 mm edge, scaled with the edge.
    pub lesion_radius_mm: Option<[f64; 2]>,
    /// Acquisition noise σ in tissue units (CT: × 100 HU).
    pub noise: f64,
    /// Peak amplitude of the MRI bias field (log scale; 0.1 ≈ ±10 %).
    pub bias_field: f64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            seed: 0,
            shape: [32, 32, 32],
            spacing: [1.0, 1.0, 1.0],
            modality: PoolModality::Ct,
            channels: 1,
            mri_fraction: 0.5,
            lesion_probability: 0.8,
            max_lesions: 3,
            distractor_probability: 0.8,
            max_distractors: 3,
            lesion_radius_mm: None,
            noise: 0.15,
            bias_field: 0.1,
        }
    }
}

/// The error for field `field` of config `what`.
fn config_error<T>(what: &str, field: &str, message: String) -> Result<T, DataError> {
    Err(DataError::config(format!("{what}.{field}"), message))
}

/// Check a shape and a spacing.
fn check_geometry(what: &str, shape: [usize; 3], spacing: [f64; 3]) -> Result<(), DataError> {
    if shape.iter().any(|&n| !(8..=1024).contains(&n)) {
        return config_error(
            what,
            "shape",
            format!("each of [D, H, W] must be in 8..=1024, got {shape:?}"),
        );
    }
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return config_error(
            what,
            "spacing",
            format!("must be finite and positive, got {spacing:?}"),
        );
    }
    Ok(())
}

/// Check a probability, a non-negative factor or a positive factor.
fn check_number(what: &str, field: &str, value: f64, range: &str) -> Result<(), DataError> {
    let ok = value.is_finite()
        && match range {
            "probability" => (0.0..=1.0).contains(&value),
            "positive" => value > 0.0,
            _ => value >= 0.0,
        };
    if ok {
        Ok(())
    } else {
        let expected = match range {
            "probability" => "in [0, 1]",
            "positive" => "finite and > 0",
            _ => "finite and >= 0",
        };
        config_error(what, field, format!("must be {expected}, got {value}"))
    }
}

impl PoolConfig {
    /// Check every field; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), DataError> {
        check_geometry("pool", self.shape, self.spacing)?;
        if !(1..=8).contains(&self.channels) {
            return config_error(
                "pool",
                "channels",
                format!("must be in 1..=8, got {}", self.channels),
            );
        }
        if matches!(self.modality, PoolModality::Ct | PoolModality::Noise) && self.channels != 1 {
            return config_error(
                "pool",
                "channels",
                format!(
                    "CT-like and noise volumes have one channel, got {}; use modality \"mri\" or \"mixed\"",
                    self.channels
                ),
            );
        }
        for (field, value) in [
            ("mri_fraction", self.mri_fraction),
            ("lesion_probability", self.lesion_probability),
            ("distractor_probability", self.distractor_probability),
        ] {
            check_number("pool", field, value, "probability")?;
        }
        check_number("pool", "noise", self.noise, "non-negative")?;
        check_number("pool", "bias_field", self.bias_field, "non-negative")?;
        for (field, value) in [
            ("max_lesions", self.max_lesions),
            ("max_distractors", self.max_distractors),
        ] {
            if value > 16 {
                return config_error("pool", field, format!("at most 16, got {value}"));
            }
        }
        if let Some([lo, hi]) = self.lesion_radius_mm
            && !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi)
        {
            return config_error(
                "pool",
                "lesion_radius_mm",
                format!("must be [min, max] with 0 < min <= max, got [{lo}, {hi}]"),
            );
        }
        Ok(())
    }

    /// The ring and distractor radius range in mm: the configured one, or [2, 4] mm scaled by
    /// the smallest edge / 32 mm (at least 1.5 voxels).
    pub fn lesion_radius_range_mm(&self) -> [f64; 2] {
        if let Some(range) = self.lesion_radius_mm {
            return range;
        }
        let edge = (0..3)
            .map(|a| self.shape[a] as f64 * self.spacing[a])
            .fold(f64::INFINITY, f64::min);
        let floor = 1.5 * self.spacing.iter().copied().fold(f64::INFINITY, f64::min);
        let lo = (2.0 * edge / 32.0).max(floor);
        [lo, (4.0 * edge / 32.0).max(lo)]
    }
}

/// An object the world generator placed (for `world.json` and for checking rates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldObject {
    /// What it is: `ring`, `blob`, `cube`, `vessel`, `lesion`, `tumour`, …
    pub kind: String,
    /// Centre `[d, h, w]` in mm from voxel 0's centre (vessels: the first point).
    pub center_mm: [f64; 3],
    /// Radius in mm (ellipsoids: the largest semi-axis).
    pub radius_mm: f64,
    /// Instance id in the mask, for labelled objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
}

impl WorldObject {
    fn new(kind: &str, center_mm: [f64; 3], radius_mm: f64, instance: Option<u32>) -> Self {
        WorldObject {
            kind: kind.to_string(),
            center_mm,
            radius_mm,
            instance,
        }
    }
}

/// One pool volume with what was placed in it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSample {
    /// The volume `[C, D, H, W]` (CT in HU, MRI-like positive).
    pub volume: Volume,
    /// `Ct`, `Mri` or `Noise` (a `mixed` pool decides per volume).
    pub modality: PoolModality,
    /// The ring lesions (unlabelled in the volume).
    pub lesions: Vec<WorldObject>,
    /// The solid distractors.
    pub distractors: Vec<WorldObject>,
}

/// Volume `index` of the unlabelled pool: deterministic in (seed, index), different for every index.
pub fn pool_volume(config: &PoolConfig, index: u64) -> Result<Volume, DataError> {
    pool::generate(config, index).map(|s| s.volume)
}

/// Volume `index` of the unlabelled pool together with its modality, rings and distractors.
pub fn pool_sample(config: &PoolConfig, index: u64) -> Result<PoolSample, DataError> {
    pool::generate(config, index)
}

/// Settings of a MultiTalent source; every field has a default (`{}` is a valid config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Task name written to `dataset.json`; default `Task950_Organs`, `Task951_Vessels`, `Task952_Mri4`.
    pub task: Option<String>,
    /// Random seed; the same seed gives identical files.
    pub seed: u64,
    /// Number of (training) cases.
    pub cases: usize,
    /// Volume shape `[D, H, W]` in voxels.
    pub shape: [usize; 3],
    /// Voxel spacing `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// Factor on the noise σ.
    pub noise: f64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            task: None,
            seed: 0,
            cases: 8,
            shape: [32, 32, 32],
            spacing: [1.0, 1.0, 1.0],
            noise: 1.0,
        }
    }
}

impl SourceConfig {
    /// Check every field; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), DataError> {
        check_geometry("source", self.shape, self.spacing)?;
        if !(1..=10_000).contains(&self.cases) {
            return config_error(
                "source",
                "cases",
                format!("must be in 1..=10000, got {}", self.cases),
            );
        }
        check_number("source", "noise", self.noise, "non-negative")?;
        check_task_name("source", &self.task)
    }
}

/// Settings of a detection task; every field has a default (`{}` is a valid config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// Task name written to `dataset.json`; default `Task910_Nodules`, `Task911_LiverLesion`,
    /// `Task912_Mri4Tumour`, `Task913_ThickSlices`.
    pub task: Option<String>,
    /// Random seed; the same seed gives identical files.
    pub seed: u64,
    /// Number of labelled training cases (`imagesTr`).
    pub cases: usize,
    /// Number of held-out test cases (`imagesTs` with `labelsTs`).
    pub test_cases: usize,
    /// Volume shape `[D, H, W]`; default per task (see the module table).
    pub shape: Option<[usize; 3]>,
    /// Voxel spacing `[sd, sh, sw]` in mm; default per task.
    pub spacing: Option<[f64; 3]>,
    /// Factor on the target (and distractor) contrast; lower is harder.
    pub contrast: f64,
    /// Factor on the target size; lower is harder.
    pub lesion_scale: f64,
    /// Factor on the noise σ; higher is harder.
    pub noise: f64,
    /// Fewest targets per case.
    pub min_lesions: usize,
    /// Most targets per case.
    pub max_lesions: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            task: None,
            seed: 0,
            cases: 8,
            test_cases: 8,
            shape: None,
            spacing: None,
            contrast: 1.0,
            lesion_scale: 1.0,
            noise: 1.0,
            min_lesions: 1,
            max_lesions: 3,
        }
    }
}

impl TaskConfig {
    /// Check every field; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), DataError> {
        if let (Some(shape), Some(spacing)) = (self.shape, self.spacing) {
            check_geometry("task", shape, spacing)?;
        } else if let Some(shape) = self.shape {
            check_geometry("task", shape, [1.0; 3])?;
        } else if let Some(spacing) = self.spacing {
            check_geometry("task", [8; 3], spacing)?;
        }
        if !(1..=10_000).contains(&self.cases) {
            return config_error(
                "task",
                "cases",
                format!("must be in 1..=10000, got {}", self.cases),
            );
        }
        if self.test_cases > 10_000 {
            return config_error(
                "task",
                "test_cases",
                format!("at most 10000, got {}", self.test_cases),
            );
        }
        check_number("task", "contrast", self.contrast, "positive")?;
        check_number("task", "lesion_scale", self.lesion_scale, "positive")?;
        check_number("task", "noise", self.noise, "non-negative")?;
        if self.min_lesions > self.max_lesions {
            return config_error(
                "task",
                "min_lesions",
                format!(
                    "{} is larger than max_lesions {}",
                    self.min_lesions, self.max_lesions
                ),
            );
        }
        if self.max_lesions > 16 {
            return config_error(
                "task",
                "max_lesions",
                format!("at most 16, got {}", self.max_lesions),
            );
        }
        check_task_name("task", &self.task)
    }
}

/// A task folder name must be non-empty and free of dots and slashes.
fn check_task_name(what: &str, task: &Option<String>) -> Result<(), DataError> {
    match task {
        Some(t) if t.is_empty() || t.contains(['.', '/', '\\']) => config_error(
            what,
            "task",
            format!("must be a non-empty folder name without dots or slashes, got {t:?}"),
        ),
        _ => Ok(()),
    }
}

/// Write MultiTalent source `name` (`organs`, `vessels` or `mri4`) under `dir` and open it.
///
/// A segmentation-style dataset in nnDetection's raw layout: every structure is an instance
/// with its class (`dataset.json` names the classes), training cases only.
pub fn multitalent_source(
    name: &str,
    dir: &Path,
    config: &SourceConfig,
) -> Result<Dataset, DataError> {
    config.validate()?;
    let spec = sources::spec(name)?;
    let task = config.task.clone().unwrap_or_else(|| spec.task.to_string());
    let mut meta = DatasetMeta::new(&task, spec.labels, spec.modalities);
    meta.name = Some(format!("detlab world: MultiTalent source {name}"));
    let train = make_cases(config.cases, |i| {
        let id = format!("case{i:04}");
        (spec.generate)(config, &id, world_rng(config.seed, name, i as u64))
    })?;
    write_world(
        dir,
        &meta,
        "source",
        name,
        config,
        train,
        Vec::new(),
        spec.ct,
    )
}

/// Write detection task `name` (`nodules`, `liver_lesion`, `mri4_tumour`, `thick_slices`)
/// under `dir` with `cases` labelled training and `test_cases` labelled test cases, and open it.
pub fn detection_task(name: &str, dir: &Path, config: &TaskConfig) -> Result<Dataset, DataError> {
    config.validate()?;
    if name == "nodules" {
        return tasks::nodules(dir, config);
    }
    let spec = tasks::spec(name)?;
    let task = config.task.clone().unwrap_or_else(|| spec.task.to_string());
    let mut meta = DatasetMeta::new(&task, spec.labels, spec.modalities);
    meta.name = Some(format!("detlab world: detection task {name}"));
    meta.test_labels = config.test_cases > 0;
    let settings = tasks::Settings::new(config, &spec);
    let train = make_cases(config.cases, |i| {
        let id = format!("case{i:04}");
        (spec.generate)(&settings, &id, world_rng(config.seed, name, i as u64))
    })?;
    let test = make_cases(config.test_cases, |j| {
        let id = format!("test{j:04}");
        (spec.generate)(
            &settings,
            &id,
            world_rng(config.seed, name, TEST_STREAM + j as u64),
        )
    })?;
    write_world(dir, &meta, "task", name, config, train, test, spec.ct)
}

/// The first stream of test cases: far above any training index, so the test set stays fixed.
const TEST_STREAM: u64 = 1 << 32;

/// A generated case with the objects placed in it.
type Made = (Case, Vec<WorldObject>);

/// Generate `count` cases in parallel.
fn make_cases(
    count: usize,
    make: impl Fn(usize) -> Result<Made, DataError> + Send + Sync,
) -> Result<Vec<Made>, DataError> {
    use rayon::prelude::*;
    (0..count).into_par_iter().map(make).collect()
}

/// The generator of stream `stream` in domain `domain` (pool, a source or a task) for `seed`,
/// so that different domains never share random draws.
pub(crate) fn world_rng(seed: u64, domain: &str, stream: u64) -> ChaCha8Rng {
    // FNV-1a of the domain name mixed into the seed by SplitMix64's finaliser.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut rng = ChaCha8Rng::seed_from_u64(z);
    rng.set_stream(stream);
    rng
}

/// Refuse a folder that holds a dataset this module did not write; clear one that it did
/// (stale cases of a larger earlier run would otherwise remain).
pub(crate) fn prepare_root(root: &Path) -> Result<(), DataError> {
    let raw = root.join("raw_splitted");
    if !raw.exists() {
        return Ok(());
    }
    let markers = [root.join("world.json"), root.join("synthetic.json")];
    if !markers.iter().any(|m| m.is_file()) {
        return Err(DataError::config(
            "dir",
            format!(
                "{} already holds a dataset that the world generator did not write; choose an empty folder",
                root.display()
            ),
        ));
    }
    std::fs::remove_dir_all(&raw).map_err(|e| DataError::io(&raw, e))?;
    for file in markers.iter().cloned().chain([root.join("splits.json")]) {
        if file.exists() {
            std::fs::remove_file(&file).map_err(|e| DataError::io(&file, e))?;
        }
    }
    Ok(())
}

/// Write the cases (CT rounded to int16 files, MRI as f32) and `world.json`, then open the dataset.
#[allow(clippy::too_many_arguments)]
fn write_world<C: Serialize>(
    root: &Path,
    meta: &DatasetMeta,
    kind: &str,
    name: &str,
    config: &C,
    train: Vec<Made>,
    test: Vec<Made>,
    ct: bool,
) -> Result<Dataset, DataError> {
    prepare_root(root)?;
    let record_of = |subset: &str, made: &[Made]| -> Vec<serde_json::Value> {
        made.iter()
            .map(|(case, objects)| {
                serde_json::json!({ "id": case.id, "subset": subset, "objects": objects })
            })
            .collect()
    };
    let mut cases = record_of("train", &train);
    cases.extend(record_of("test", &test));
    let (train, test): (Vec<Case>, Vec<Case>) = (
        train.into_iter().map(|m| m.0).collect(),
        test.into_iter().map(|m| m.0).collect(),
    );
    let options = SaveOptions {
        image_dtype: if ct { NiftiDtype::I16 } else { NiftiDtype::F32 },
    };
    let record = serde_json::json!({
        "generator": "detlab world",
        "kind": kind,
        "name": name,
        "config": config,
        "cases": cases,
    });
    // The record goes first: it marks the folder as ours, so an interrupted write can be redone.
    std::fs::create_dir_all(root).map_err(|e| DataError::io(root, e))?;
    let path = root.join("world.json");
    let text = serde_json::to_string_pretty(&record).map_err(|e| DataError::parse(&path, e))?;
    crate::util::atomic_write(&path, text.as_bytes()).map_err(|e| DataError::io(&path, e))?;
    save_dataset_with(root, meta, &train, &test, &options)
}
