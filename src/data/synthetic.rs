//! Seeded CT-like synthetic datasets with lung-nodule-like lesions, for tests and tutorials.
//!
//! Each case is a chest-like volume in Hounsfield units: air (−1000) around an elliptic body
//! cylinder of soft tissue (~40 HU) with a subcutaneous fat layer (~−100 HU), a rib shell
//! (bands of ~+700 HU) and a spine, two lungs (ellipsoids of ~−800 HU), a smooth low-frequency
//! intensity variation and Gaussian noise. Inside the lungs it places:
//! - **lesions** (the detection targets): ellipsoidal nodules of soft-tissue density with a soft
//!   edge; sizes follow the LIDC-IDRI nodule extents and the per-scan count follows LIDC's
//!   nodules-per-scan histogram (both embedded from `lidc_extents.csv` / `lidc_counts.csv`),
//!   truncated to `size_range_mm` / `[min_lesions, max_lesions]`. With `two_classes`, a share of
//!   them are part-solid (class 1): a ground-glass halo (~−500 HU) around a small solid core;
//! - **distractors** of the same density: branching vessel-like tubes, and cubes and flat discs
//!   of nodule size, so that a detector must learn shape, not an intensity threshold.
//!
//! Lesions never overlap each other or a distractor (a margin is kept) and lie entirely inside
//! one lung. Generation is deterministic: case `i` draws from ChaCha8 seeded with `seed` on
//! stream `i`, so cases can be made in parallel and the same seed gives byte-identical files.
//! Images are written as int16 HU, masks as uint8.

use std::path::Path;
use std::sync::OnceLock;

use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{Case, Dataset, OpenOptions, Subset, write_case};
use super::error::DataError;
use super::meta::DatasetMeta;
use crate::volume::{NiftiDtype, Volume};

/// Settings of the synthetic generator; every field has a default (`{}` is a valid config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Task name written to `dataset.json`.
    pub task: String,
    /// Number of training cases (`imagesTr`).
    pub cases: usize,
    /// Number of test cases (`imagesTs`, with labels in `labelsTs`).
    pub test_cases: usize,
    /// Random seed; the same seed gives byte-identical files.
    pub seed: u64,
    /// Volume shape `[D, H, W]` in voxels.
    pub shape: [usize; 3],
    /// Voxel spacing `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// Two classes: solid nodules (0) and part-solid nodules (1) instead of one class.
    pub two_classes: bool,
    /// Share of part-solid lesions when `two_classes` is on.
    pub part_solid_fraction: f64,
    /// Fewest lesions per case (LIDC's count distribution is truncated to `[min, max]`).
    pub min_lesions: usize,
    /// Most lesions per case.
    pub max_lesions: usize,
    /// Factor applied to the LIDC nodule extents before truncation to `size_range_mm`.
    pub size_scale: f64,
    /// Smallest and largest lesion diameter in mm (largest extent).
    pub size_range_mm: [f64; 2],
    /// Vessel-like tube distractors per case.
    pub vessels: usize,
    /// Cube- and disc-shaped distractors per case.
    pub blobs: usize,
    /// Standard deviation of the Gaussian noise in HU.
    pub noise_hu: f64,
    /// Amplitude of the smooth low-frequency intensity variation in HU.
    pub low_frequency_hu: f64,
    /// Width of the soft lesion edge in mm.
    pub edge_mm: f64,
    /// Smallest gap between a lesion and any other object, in mm.
    pub margin_mm: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            task: "Task900_Synthetic".into(),
            cases: 8,
            test_cases: 2,
            seed: 0,
            shape: [48, 96, 96],
            spacing: [1.25, 0.7, 0.7],
            two_classes: false,
            part_solid_fraction: 0.35,
            min_lesions: 1,
            max_lesions: 4,
            size_scale: 1.0,
            size_range_mm: [3.0, 16.0],
            vessels: 4,
            blobs: 2,
            noise_hu: 20.0,
            low_frequency_hu: 10.0,
            edge_mm: 1.0,
            margin_mm: 2.0,
        }
    }
}

impl SyntheticConfig {
    /// Check every field; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), DataError> {
        let err = |f: &str, m: String| Err(DataError::config(format!("synthetic.{f}"), m));
        if self.cases == 0 {
            return err("cases", "at least one training case is needed".into());
        }
        if self.shape.iter().any(|&n| !(8..=2048).contains(&n)) {
            return err(
                "shape",
                format!(
                    "each of [D, H, W] must be in 8..=2048, got {:?}",
                    self.shape
                ),
            );
        }
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return err(
                "spacing",
                format!("must be finite and positive, got {:?}", self.spacing),
            );
        }
        if self.min_lesions > self.max_lesions {
            return err(
                "min_lesions",
                format!(
                    "{} is larger than max_lesions {}",
                    self.min_lesions, self.max_lesions
                ),
            );
        }
        if self.max_lesions > 255 {
            return err(
                "max_lesions",
                format!("at most 255 (masks are uint8), got {}", self.max_lesions),
            );
        }
        let [lo, hi] = self.size_range_mm;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return err(
                "size_range_mm",
                format!(
                    "must be [min, max] with 0 < min <= max, got {:?}",
                    self.size_range_mm
                ),
            );
        }
        if !(self.size_scale.is_finite() && self.size_scale > 0.0) {
            return err(
                "size_scale",
                format!("must be positive, got {}", self.size_scale),
            );
        }
        if !(0.0..=1.0).contains(&self.part_solid_fraction) {
            return err(
                "part_solid_fraction",
                format!("must be in [0, 1], got {}", self.part_solid_fraction),
            );
        }
        for (f, v) in [
            ("noise_hu", self.noise_hu),
            ("low_frequency_hu", self.low_frequency_hu),
            ("edge_mm", self.edge_mm),
            ("margin_mm", self.margin_mm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(f, format!("must be finite and >= 0, got {v}"));
            }
        }
        if self.task.is_empty() || self.task.contains(['.', '/', '\\']) {
            return err(
                "task",
                format!(
                    "must be a non-empty folder name without dots or slashes, got {:?}",
                    self.task
                ),
            );
        }
        Ok(())
    }

    /// The case id of case `index` (training cases first, then test cases).
    pub fn case_id(&self, index: usize) -> String {
        format!("case{index:04}")
    }
}

/// LIDC-IDRI nodule statistics embedded in the binary (see `src/data/lidc_extents.csv`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LidcStatistics {
    /// Mean largest extent of each nodule in mm (2,653 nodules).
    pub extents_mm: Vec<f64>,
    /// In-plane aspect ratio (≤ 1) of each nodule's voxel bounding box, same order.
    pub inplane_aspects: Vec<f64>,
    /// `(nodules per scan, number of scans)` over 1,018 scans.
    pub count_histogram: Vec<(usize, usize)>,
}

/// The LIDC-IDRI nodule size and count statistics the generator samples from.
pub fn lidc_statistics() -> &'static LidcStatistics {
    static STATS: OnceLock<LidcStatistics> = OnceLock::new();
    STATS.get_or_init(|| {
        let rows = |text: &'static str| {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .skip(1)
                .map(|l| {
                    l.split(',')
                        .map(|v| v.trim().parse::<f64>().unwrap_or(f64::NAN))
                        .collect::<Vec<f64>>()
                })
                .collect::<Vec<_>>()
        };
        let extents = rows(include_str!("lidc_extents.csv"));
        let counts = rows(include_str!("lidc_counts.csv"));
        LidcStatistics {
            extents_mm: extents.iter().map(|r| r[0]).collect(),
            inplane_aspects: extents.iter().map(|r| r[1]).collect(),
            count_histogram: counts
                .iter()
                .map(|r| (r[0] as usize, r[1] as usize))
                .collect(),
        }
    })
}

/// A lesion placed by the generator (instance id, class and geometry in mm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticLesion {
    /// Instance id in the mask.
    pub instance: u32,
    /// Class index (0 solid, 1 part-solid).
    pub class: usize,
    /// Centre `[d, h, w]` in mm from voxel 0's centre.
    pub center_mm: [f64; 3],
    /// Semi-axes `[d, h, w]` in mm.
    pub semi_axes_mm: [f64; 3],
    /// Largest extent (2 × largest semi-axis) in mm.
    pub diameter_mm: f64,
    /// Density of the solid part in HU.
    pub hu: f64,
    /// Which lung holds it (1 or 2).
    pub lung: u8,
}

/// A distractor placed by the generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticDistractor {
    /// `"vessel"`, `"cube"` or `"disc"`.
    pub kind: String,
    /// Centre (vessels: start point) `[d, h, w]` in mm.
    pub center_mm: [f64; 3],
    /// Size in mm (vessel: radius; cube: side; disc: diameter).
    pub size_mm: f64,
    /// Density in HU.
    pub hu: f64,
}

/// One generated case with its ground-truth geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticCase {
    /// The case (image in HU, instance mask, classes).
    pub case: Case,
    /// The lesions, by instance id.
    pub lesions: Vec<SyntheticLesion>,
    /// The distractors.
    pub distractors: Vec<SyntheticDistractor>,
    /// Lung mask `[D, H, W]` flattened in C order: 0 outside, 1 and 2 for the two lungs.
    pub lung_mask: Vec<u8>,
}

/// Generate case number `index` of `config` in memory (deterministic in `seed` and `index`).
pub fn synthetic_case(config: &SyntheticConfig, index: usize) -> Result<SyntheticCase, DataError> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(index as u64);
    let id = config.case_id(index);
    let grid = Grid {
        shape: config.shape,
        spacing: config.spacing,
    };
    let mut scene = Scene::anatomy(&grid);
    let lesions = place_lesions(&grid, &mut scene, config, &mut rng, &id)?;
    let distractors = place_distractors(&grid, &mut scene, &lesions, config, &mut rng);
    scene.finish(&grid, config, &mut rng);

    let [d, h, w] = grid.shape;
    let image =
        Array4::from_shape_vec((1, d, h, w), scene.hu).map_err(|e| DataError::Synthetic {
            case: id.clone(),
            message: e.to_string(),
        })?;
    let mask = Array4::from_shape_vec(
        (1, d, h, w),
        scene.instances.iter().map(|&v| v as f32).collect(),
    )
    .map_err(|e| DataError::Synthetic {
        case: id.clone(),
        message: e.to_string(),
    })?;
    let instance_classes = lesions.iter().map(|l| (l.instance, l.class)).collect();
    let case = Case {
        id,
        image: Volume::from_array(image, config.spacing),
        instances: Volume::from_array(mask, config.spacing),
        instance_classes,
    };
    Ok(SyntheticCase {
        case,
        lesions,
        distractors,
        lung_mask: scene.lung,
    })
}

/// Write a synthetic dataset in nnDetection's raw layout under `root` and open it.
///
/// Writes `dataset.json` (one modality `"CT"`, classes `nodule` or `solid`/`part_solid`,
/// `test_labels` true), `raw_splitted/{imagesTr,labelsTr,imagesTs,labelsTs}` and
/// `synthetic.json` (the config and every lesion's and distractor's geometry). Cases are
/// generated and written in parallel.
pub fn synthetic_dataset(
    root: impl AsRef<Path>,
    config: &SyntheticConfig,
) -> Result<Dataset, DataError> {
    let root = root.as_ref();
    config.validate()?;
    let labels: &[&str] = if config.two_classes {
        &["solid", "part_solid"]
    } else {
        &["nodule"]
    };
    let mut meta = DatasetMeta::new(&config.task, labels, &["CT"]);
    meta.name = Some("detlab synthetic CT-like nodules".into());
    meta.test_labels = config.test_cases > 0;
    let raw = root.join("raw_splitted");
    // Regenerating replaces an earlier synthetic dataset (stale cases would otherwise remain);
    // any other data in the folder is left alone and refused.
    if raw.exists() {
        if !root.join("synthetic.json").is_file() {
            return Err(DataError::config(
                "synthetic path",
                format!(
                    "{} already holds a dataset that the generator did not write; choose an empty folder",
                    root.display()
                ),
            ));
        }
        std::fs::remove_dir_all(&raw).map_err(|e| DataError::io(&raw, e))?;
        let splits = root.join("splits.json");
        if splits.exists() {
            std::fs::remove_file(&splits).map_err(|e| DataError::io(&splits, e))?;
        }
    }
    let mut dirs = vec!["imagesTr", "labelsTr"];
    if config.test_cases > 0 {
        dirs.extend(["imagesTs", "labelsTs"]);
    }
    for d in dirs {
        let p = raw.join(d);
        std::fs::create_dir_all(&p).map_err(|e| DataError::io(&p, e))?;
    }
    let total = config.cases + config.test_cases;
    let records: Vec<serde_json::Value> = (0..total)
        .into_par_iter()
        .map(|i| {
            let made = synthetic_case(config, i)?;
            let subset = if i < config.cases {
                Subset::Train
            } else {
                Subset::Test
            };
            write_case(&raw, subset, &made.case, NiftiDtype::I16, true)?;
            Ok(serde_json::json!({
                "id": made.case.id,
                "subset": subset,
                "lesions": made.lesions,
                "distractors": made.distractors,
            }))
        })
        .collect::<Result<_, DataError>>()
        .inspect_err(|_| {
            // A case that cannot be made (no room for its lesions) must not leave a half
            // dataset without its `synthetic.json`, which a rerun would refuse to replace.
            let _ = std::fs::remove_dir_all(&raw);
        })?;
    let record =
        serde_json::json!({ "generator": "detlab synthetic", "config": config, "cases": records });
    let path = root.join("synthetic.json");
    let text = serde_json::to_string_pretty(&record).map_err(|e| DataError::parse(&path, e))?;
    crate::util::atomic_write(&path, text.as_bytes()).map_err(|e| DataError::io(&path, e))?;
    meta.write_json(root)?;
    Dataset::open_with(root, &OpenOptions { quick: true })
}

/// Voxel grid geometry: voxel `(d, h, w)` has its centre at `(d·sd, h·sh, w·sw)` mm.
struct Grid {
    shape: [usize; 3],
    spacing: [f64; 3],
}

impl Grid {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    fn index(&self, v: [usize; 3]) -> usize {
        (v[0] * self.shape[1] + v[1]) * self.shape[2] + v[2]
    }

    fn extent_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| (self.shape[a] - 1) as f64 * self.spacing[a])
    }

    /// Voxel ranges covering a ball of `radius` mm around `center` (clipped to the grid).
    fn ball_ranges(&self, center: [f64; 3], radius: f64) -> [std::ops::Range<usize>; 3] {
        [0, 1, 2].map(|a| {
            let lo = ((center[a] - radius) / self.spacing[a]).floor().max(0.0) as usize;
            let hi = (((center[a] + radius) / self.spacing[a]).ceil() + 1.0)
                .clamp(0.0, self.shape[a] as f64) as usize;
            lo.min(self.shape[a])..hi
        })
    }

    /// Call `f(index, position_mm)` for every voxel within the ball's bounding box.
    fn for_each_near(&self, center: [f64; 3], radius: f64, mut f: impl FnMut(usize, [f64; 3])) {
        let [rd, rh, rw] = self.ball_ranges(center, radius);
        for d in rd {
            for h in rh.clone() {
                for w in rw.clone() {
                    let p = [
                        d as f64 * self.spacing[0],
                        h as f64 * self.spacing[1],
                        w as f64 * self.spacing[2],
                    ];
                    f(self.index([d, h, w]), p);
                }
            }
        }
    }

    /// The voxel index nearest to a position, if inside the grid.
    fn nearest(&self, p: [f64; 3]) -> Option<usize> {
        let mut v = [0usize; 3];
        for a in 0..3 {
            let i = (p[a] / self.spacing[a]).round();
            if i < 0.0 || i >= self.shape[a] as f64 {
                return None;
            }
            v[a] = i as usize;
        }
        Some(self.index(v))
    }
}

/// An axis-aligned ellipsoid in mm.
#[derive(Debug, Clone, Copy)]
struct Ellipsoid {
    center: [f64; 3],
    semi: [f64; 3],
}

impl Ellipsoid {
    /// Normalised radius: < 1 inside, 1 on the surface.
    fn rho(&self, p: [f64; 3]) -> f64 {
        (0..3)
            .map(|a| ((p[a] - self.center[a]) / self.semi[a]).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Approximate signed distance to the surface in mm (positive inside).
    fn inside_distance(&self, p: [f64; 3]) -> f64 {
        let mean = (self.semi[0] * self.semi[1] * self.semi[2]).cbrt();
        (1.0 - self.rho(p)) * mean
    }
}

/// Blend weight of a soft edge: 1 well inside, 0.5 on the surface, 0 well outside.
pub(crate) fn soft_edge(inside_distance: f64, edge_mm: f64) -> f64 {
    if edge_mm <= 0.0 {
        return if inside_distance >= 0.0 { 1.0 } else { 0.0 };
    }
    let t = (0.5 + inside_distance / edge_mm).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// The volume being built: HU values, lung ids and instance ids, all `[D, H, W]` C-order.
struct Scene {
    hu: Vec<f32>,
    lung: Vec<u8>,
    instances: Vec<u8>,
    lungs: [Ellipsoid; 2],
    /// Voxels already taken by a distractor (lesions keep their margin from them).
    occupied: Vec<bool>,
}

impl Scene {
    /// Air, body, fat layer, ribs, spine and two lungs.
    fn anatomy(grid: &Grid) -> Scene {
        let n = grid.len();
        let ext = grid.extent_mm();
        let c = ext.map(|e| e / 2.0);
        let (bh, bw) = (0.46 * ext[1], 0.46 * ext[2]);
        let lungs = [-1.0, 1.0].map(|side| Ellipsoid {
            center: [c[0], c[1] - 0.05 * bh, c[2] + side * 0.44 * bw],
            semi: [0.46 * ext[0], 0.62 * bh, 0.34 * bw],
        });
        let rib_period = 10.0;
        let spine = [c[1] + 0.68 * bh, c[2]];
        let spine_r = 0.13 * bw;
        let mut hu = vec![-1000.0f32; n];
        let mut lung = vec![0u8; n];
        for d in 0..grid.shape[0] {
            let z = d as f64 * grid.spacing[0];
            let rib_band = (2.0 * std::f64::consts::PI * z / rib_period).cos() > 0.2;
            for h in 0..grid.shape[1] {
                let y = h as f64 * grid.spacing[1];
                for w in 0..grid.shape[2] {
                    let x = w as f64 * grid.spacing[2];
                    let rho = (((y - c[1]) / bh).powi(2) + ((x - c[2]) / bw).powi(2)).sqrt();
                    let i = grid.index([d, h, w]);
                    if rho > 1.0 {
                        continue;
                    }
                    let mut v = 40.0;
                    if (0.91..0.96).contains(&rho) {
                        v = -100.0;
                    } else if (0.85..0.90).contains(&rho) && rib_band {
                        v = 700.0;
                    }
                    let sr = ((y - spine[0]).powi(2) + (x - spine[1]).powi(2)).sqrt();
                    if sr < spine_r {
                        v = if sr > 0.7 * spine_r { 700.0 } else { 250.0 };
                    }
                    for (k, l) in lungs.iter().enumerate() {
                        if l.rho([z, y, x]) <= 1.0 {
                            v = -800.0;
                            lung[i] = k as u8 + 1;
                        }
                    }
                    hu[i] = v as f32;
                }
            }
        }
        Scene {
            hu,
            lung,
            instances: vec![0; n],
            lungs,
            occupied: vec![false; n],
        }
    }

    /// Blend `target` HU into the image with weights from `weight(position) -> [0, 1]`.
    fn blend(
        &mut self,
        grid: &Grid,
        center: [f64; 3],
        radius: f64,
        target: f64,
        weight: impl Fn([f64; 3]) -> f64,
    ) {
        let hu = &mut self.hu;
        grid.for_each_near(center, radius, |i, p| {
            let t = weight(p);
            if t > 0.0 {
                hu[i] = (hu[i] as f64 * (1.0 - t) + target * t) as f32;
            }
        });
    }

    /// Whether every voxel within `radius` of `center` lies in lung `lung` and is not occupied.
    fn ball_is_free_lung(&self, grid: &Grid, center: [f64; 3], radius: f64, lung: u8) -> bool {
        let mut ok = grid.nearest(center).is_some();
        grid.for_each_near(center, radius, |i, p| {
            if ok && dist(p, center) <= radius && (self.lung[i] != lung || self.occupied[i]) {
                ok = false;
            }
        });
        // A ball reaching past the grid border is not inside the lung.
        let extent = grid.extent_mm();
        ok && center
            .iter()
            .zip(extent)
            .all(|(&c, e)| c - radius >= 0.0 && c + radius <= e)
    }

    /// Low-frequency variation and Gaussian noise, then rounding to whole HU (int16 on disk).
    fn finish(&mut self, grid: &Grid, config: &SyntheticConfig, rng: &mut ChaCha8Rng) {
        let ext = grid.extent_mm();
        let waves: Vec<([f64; 3], f64)> = (0..3)
            .map(|_| {
                let k = [0, 1, 2]
                    .map(|a| rng.random_range(0.5..1.5) * std::f64::consts::PI / ext[a].max(1.0));
                (k, rng.random_range(0.0..std::f64::consts::TAU))
            })
            .collect();
        let amplitude = config.low_frequency_hu / 3.0;
        for d in 0..grid.shape[0] {
            for h in 0..grid.shape[1] {
                for w in 0..grid.shape[2] {
                    let i = grid.index([d, h, w]);
                    let p = [
                        d as f64 * grid.spacing[0],
                        h as f64 * grid.spacing[1],
                        w as f64 * grid.spacing[2],
                    ];
                    let mut v = self.hu[i] as f64;
                    if v > -990.0 {
                        v += waves
                            .iter()
                            .map(|(k, phase)| {
                                amplitude * (k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase).sin()
                            })
                            .sum::<f64>();
                    }
                    v += config.noise_hu * gaussian(rng);
                    self.hu[i] = v.round().clamp(-1024.0, 3071.0) as f32;
                }
            }
        }
    }
}

pub(crate) fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// A standard normal sample (Box–Muller; one draw per call keeps the stream simple).
pub(crate) fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Draw the number of lesions from LIDC's histogram truncated to `[min, max]`.
fn sample_count(config: &SyntheticConfig, rng: &mut ChaCha8Rng) -> usize {
    let hist: Vec<(usize, usize)> = lidc_statistics()
        .count_histogram
        .iter()
        .copied()
        .filter(|(n, _)| (config.min_lesions..=config.max_lesions).contains(n))
        .collect();
    let total: usize = hist.iter().map(|h| h.1).sum();
    if total == 0 {
        return rng.random_range(config.min_lesions..=config.max_lesions);
    }
    let mut pick = rng.random_range(0..total);
    for (n, count) in hist {
        if pick < count {
            return n;
        }
        pick -= count;
    }
    config.max_lesions
}

/// Draw a lesion diameter (mm) and in-plane aspect from LIDC, scaled and truncated to the range.
fn sample_size(config: &SyntheticConfig, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let stats = lidc_statistics();
    let [lo, hi] = config.size_range_mm;
    let mut last = (lo, 1.0);
    for _ in 0..200 {
        let k = rng.random_range(0..stats.extents_mm.len());
        let d = stats.extents_mm[k] * config.size_scale;
        last = (d.clamp(lo, hi), stats.inplane_aspects[k]);
        if (lo..=hi).contains(&d) {
            return (d, stats.inplane_aspects[k]);
        }
    }
    last
}

/// Place the lesions: sizes from LIDC, inside one lung, apart from each other by the margin.
fn place_lesions(
    grid: &Grid,
    scene: &mut Scene,
    config: &SyntheticConfig,
    rng: &mut ChaCha8Rng,
    id: &str,
) -> Result<Vec<SyntheticLesion>, DataError> {
    let count = sample_count(config, rng);
    let mut placed: Vec<SyntheticLesion> = Vec::new();
    for _ in 0..count {
        let (mut diameter, aspect) = sample_size(config, rng);
        let part_solid = config.two_classes && rng.random_bool(config.part_solid_fraction);
        let mut semi_factors = [1.0, aspect.clamp(0.6, 1.0), rng.random_range(0.7..1.0)];
        // Shuffle which axis gets the largest extent.
        for i in (1..3).rev() {
            let j = rng.random_range(0..=i);
            semi_factors.swap(i, j);
        }
        let mut done = None;
        for attempt in 0..300 {
            if attempt > 0 && attempt % 60 == 0 {
                diameter = (diameter * 0.8).max(config.size_range_mm[0]);
            }
            let semi = semi_factors.map(|f| f * diameter / 2.0);
            let radius = diameter / 2.0;
            let lung_index = rng.random_range(0..2usize);
            let lung = scene.lungs[lung_index];
            let center =
                [0, 1, 2].map(|a| lung.center[a] + rng.random_range(-1.0..1.0) * lung.semi[a]);
            let clear = placed.iter().all(|o| {
                dist(o.center_mm, center) >= radius + o.diameter_mm / 2.0 + config.margin_mm
            });
            if !clear
                || !scene.ball_is_free_lung(
                    grid,
                    center,
                    radius + config.margin_mm.min(config.edge_mm),
                    lung_index as u8 + 1,
                )
            {
                continue;
            }
            let shape = Ellipsoid { center, semi };
            let mut voxels = 0;
            grid.for_each_near(center, radius, |_, p| {
                voxels += usize::from(shape.rho(p) <= 1.0)
            });
            if voxels == 0 {
                continue;
            }
            done = Some((shape, lung_index as u8 + 1));
            break;
        }
        let Some((shape, lung)) = done else { continue };
        let instance = placed.len() as u32 + 1;
        let hu = rng.random_range(0.0..60.0);
        let radius = diameter / 2.0 + config.edge_mm;
        if part_solid {
            scene.blend(grid, shape.center, radius, -500.0, |p| {
                soft_edge(shape.inside_distance(p), config.edge_mm)
            });
            let core_factor = rng.random_range(0.35..0.55);
            let core = Ellipsoid {
                center: shape.center,
                semi: shape.semi.map(|s| s * core_factor),
            };
            scene.blend(grid, shape.center, radius, hu, |p| {
                soft_edge(core.inside_distance(p), config.edge_mm)
            });
        } else {
            scene.blend(grid, shape.center, radius, hu, |p| {
                soft_edge(shape.inside_distance(p), config.edge_mm)
            });
        }
        let instances = &mut scene.instances;
        grid.for_each_near(shape.center, diameter / 2.0, |i, p| {
            if shape.rho(p) <= 1.0 {
                instances[i] = instance as u8;
            }
        });
        placed.push(SyntheticLesion {
            instance,
            class: usize::from(part_solid),
            center_mm: shape.center,
            semi_axes_mm: shape.semi,
            diameter_mm: 2.0 * shape.semi.iter().cloned().fold(0.0, f64::max),
            hu,
            lung,
        });
    }
    if placed.len() < config.min_lesions {
        return Err(DataError::Synthetic {
            case: id.to_string(),
            message: format!(
                "placed only {} of at least {} lesion(s) inside the lungs of a {:?} volume at {:?} mm; enlarge `shape`, or lower `size_range_mm` / `min_lesions`",
                placed.len(),
                config.min_lesions,
                config.shape,
                config.spacing
            ),
        });
    }
    Ok(placed)
}

/// Whether a ball stays clear of every lesion by the margin.
fn clear_of_lesions(lesions: &[SyntheticLesion], p: [f64; 3], radius: f64, margin: f64) -> bool {
    lesions
        .iter()
        .all(|l| dist(l.center_mm, p) >= l.diameter_mm / 2.0 + radius + margin)
}

/// Place vessel-like tubes and cube/disc blobs of lesion density, clear of every lesion.
fn place_distractors(
    grid: &Grid,
    scene: &mut Scene,
    lesions: &[SyntheticLesion],
    config: &SyntheticConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<SyntheticDistractor> {
    let mut out = Vec::new();
    let margin = config.margin_mm;
    for _ in 0..config.vessels {
        let lung_index = rng.random_range(0..2usize);
        let lung = scene.lungs[lung_index];
        let start = [0, 1, 2].map(|a| lung.center[a] + rng.random_range(-0.7..0.7) * lung.semi[a]);
        let radius = rng.random_range(0.6..1.5);
        let hu = rng.random_range(10.0..70.0);
        let length = rng.random_range(15.0..40.0);
        let mut points: Vec<([f64; 3], f64)> = Vec::new();
        let mut branches = vec![(start, random_direction(rng), radius, length)];
        while let Some((mut p, mut dir, r, len)) = branches.pop() {
            let mut travelled = 0.0;
            let branch_at = if points.is_empty() {
                rng.random_range(0.3..0.7) * len
            } else {
                f64::INFINITY
            };
            while travelled < len {
                let inside = grid
                    .nearest(p)
                    .is_some_and(|i| scene.lung[i] == lung_index as u8 + 1);
                if !inside || !clear_of_lesions(lesions, p, r, margin) {
                    break;
                }
                points.push((p, r * (1.0 - 0.3 * travelled / len)));
                if travelled <= branch_at && travelled + 1.0 > branch_at {
                    let child = bend(dir, random_direction(rng), 0.8);
                    branches.push((p, child, r * 0.7, (len - travelled) * 0.8));
                }
                dir = bend(dir, random_direction(rng), 0.15);
                p = [0, 1, 2].map(|a| p[a] + dir[a]);
                travelled += 1.0;
            }
        }
        if points.is_empty() {
            continue;
        }
        paint_union(
            grid,
            scene,
            &points,
            hu,
            config.edge_mm.min(0.7),
            |q, (c, r)| r - dist(q, *c),
        );
        out.push(SyntheticDistractor {
            kind: "vessel".into(),
            center_mm: start,
            size_mm: radius,
            hu,
        });
    }
    for k in 0..config.blobs {
        let cube = k % 2 == 0;
        let (diameter, _) = sample_size(config, rng);
        let hu = rng.random_range(0.0..60.0);
        let axis = rng.random_range(0..3usize);
        let reach = diameter / 2.0 * if cube { 3f64.sqrt() } else { 1.0 };
        for _ in 0..100 {
            let lung_index = rng.random_range(0..2usize);
            let lung = scene.lungs[lung_index];
            let center =
                [0, 1, 2].map(|a| lung.center[a] + rng.random_range(-1.0..1.0) * lung.semi[a]);
            if !clear_of_lesions(lesions, center, reach, margin)
                || !scene.ball_is_free_lung(grid, center, reach, lung_index as u8 + 1)
            {
                continue;
            }
            let half = diameter / 2.0;
            let thickness = (diameter / 4.0).max(1.5);
            let shape = move |q: [f64; 3]| -> f64 {
                let rel = [0, 1, 2].map(|a| q[a] - center[a]);
                if cube {
                    half * 0.8 - rel.iter().map(|v| v.abs()).fold(0.0, f64::max)
                } else {
                    let radial = (0..3)
                        .filter(|&a| a != axis)
                        .map(|a| rel[a] * rel[a])
                        .sum::<f64>()
                        .sqrt();
                    (half - radial).min(thickness / 2.0 - rel[axis].abs())
                }
            };
            paint_union(
                grid,
                scene,
                &[(center, reach)],
                hu,
                config.edge_mm,
                |q, _| shape(q),
            );
            out.push(SyntheticDistractor {
                kind: if cube { "cube" } else { "disc" }.into(),
                center_mm: center,
                size_mm: diameter,
                hu,
            });
            break;
        }
    }
    out
}

/// Paint the union of shapes (signed inside distance per part) with a soft edge, marking voxels occupied.
///
/// `parts` are `(centre, reach)` balls that bound each part; `inside(position, part)` is the
/// signed distance to that part's surface in mm (positive inside).
fn paint_union(
    grid: &Grid,
    scene: &mut Scene,
    parts: &[([f64; 3], f64)],
    hu: f64,
    edge: f64,
    inside: impl Fn([f64; 3], &([f64; 3], f64)) -> f64,
) {
    let mut weight: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
    for part in parts {
        let reach = part.1 + edge;
        grid.for_each_near(part.0, reach, |i, p| {
            let t = soft_edge(inside(p, part), edge);
            if t > 0.0 {
                let e = weight.entry(i).or_insert(0.0);
                *e = e.max(t);
            }
        });
    }
    for (i, t) in weight {
        scene.hu[i] = (scene.hu[i] as f64 * (1.0 - t) + hu * t) as f32;
        if t >= 0.5 {
            scene.occupied[i] = true;
        }
    }
}

pub(crate) fn random_direction(rng: &mut ChaCha8Rng) -> [f64; 3] {
    loop {
        let v: [f64; 3] = [0, 1, 2].map(|_| rng.random_range(-1.0..1.0));
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if n > 0.1 && n <= 1.0 {
            return v.map(|x| x / n);
        }
    }
}

/// Turn unit direction `dir` towards `towards` by weight `amount`, renormalised.
pub(crate) fn bend(dir: [f64; 3], towards: [f64; 3], amount: f64) -> [f64; 3] {
    let v = [0, 1, 2].map(|a| dir[a] * (1.0 - amount) + towards[a] * amount);
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-9);
    v.map(|x| x / n)
}

#[cfg(test)]
mod tests;
