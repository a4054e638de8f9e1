//! The four detection tasks: `nodules` (the existing LIDC-like generator), `liver_lesion`,
//! `mri4_tumour` and `thick_slices`.

use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::pool::{
    ORGAN_OFFSETS, Occupied, RingStyle, anatomy, draw_count, is_free, place_distractors,
    place_rings, point_anywhere, point_in,
};
use super::scene::{
    Contrast, Scene, Shape, between, low_pass_noise, render_grid, small_rotation, smooth_field,
};
use super::sources::{
    NOISE_UNITS, brain, brain_tissue, finish_case, paint_tumour, tissue, tube_path,
};
use super::{Made, TaskConfig, WorldObject, prepare_root};
use crate::data::dataset::Dataset;
use crate::data::error::DataError;
use crate::data::synthetic::{SyntheticConfig, dist, random_direction, synthetic_dataset};

/// A detection task: its default task name, classes, modalities, geometry and generator.
pub(super) struct TaskSpec {
    pub task: &'static str,
    pub labels: &'static [&'static str],
    pub modalities: &'static [&'static str],
    pub ct: bool,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    /// Target radius range in mm at `lesion_scale` 1.
    pub radius_mm: [f64; 2],
    pub generate: fn(&Settings, &str, ChaCha8Rng) -> Result<Made, DataError>,
}

/// A task's config resolved against its defaults.
pub(super) struct Settings {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub radius_mm: [f64; 2],
    pub contrast: f64,
    pub noise: f64,
    pub lesions: [usize; 2],
}

impl Settings {
    /// The config's values, or the task's defaults where the config leaves them out.
    pub fn new(config: &TaskConfig, spec: &TaskSpec) -> Settings {
        Settings {
            shape: config.shape.unwrap_or(spec.shape),
            spacing: config.spacing.unwrap_or(spec.spacing),
            radius_mm: spec.radius_mm.map(|r| r * config.lesion_scale),
            contrast: config.contrast,
            noise: NOISE_UNITS * config.noise,
            lesions: [config.min_lesions, config.max_lesions],
        }
    }

    /// Draw how many targets a case gets.
    fn count(&self, rng: &mut ChaCha8Rng) -> usize {
        rng.random_range(self.lesions[0]..=self.lesions[1])
    }

    /// The error for a case that got fewer targets than `min_lesions`.
    fn too_few(&self, id: &str, placed: usize) -> DataError {
        DataError::Synthetic {
            case: id.to_string(),
            message: format!(
                "placed only {placed} of at least {} target(s) of radius {:.1}–{:.1} mm in a {:?} volume at {:?} mm; enlarge `shape`, or lower `lesion_scale` / `min_lesions`",
                self.lesions[0], self.radius_mm[0], self.radius_mm[1], self.shape, self.spacing
            ),
        }
    }
}

/// The task called `name` (other than `nodules`).
pub(super) fn spec(name: &str) -> Result<TaskSpec, DataError> {
    Ok(match name {
        "liver_lesion" => TaskSpec {
            task: "Task911_LiverLesion",
            labels: &["lesion"],
            modalities: &["CT"],
            ct: true,
            shape: [32, 32, 32],
            spacing: [1.0, 1.0, 1.0],
            radius_mm: [3.0, 5.0],
            generate: liver_lesion,
        },
        "mri4_tumour" => TaskSpec {
            task: "Task912_Mri4Tumour",
            labels: &["tumour"],
            modalities: &super::sources::BRAIN_MODALITIES,
            ct: false,
            shape: [32, 32, 32],
            spacing: [1.0, 1.0, 1.0],
            radius_mm: [2.5, 4.0],
            generate: mri4_tumour,
        },
        "thick_slices" => TaskSpec {
            task: "Task913_ThickSlices",
            labels: &["lesion"],
            modalities: &["CT"],
            ct: true,
            shape: [12, 40, 40],
            spacing: [3.0, 0.8, 0.8],
            radius_mm: [3.0, 6.0],
            generate: thick_slices,
        },
        other => {
            return Err(DataError::config(
                "task name",
                format!(
                    "unknown detection task {other:?}; the tasks are {}",
                    super::TASK_NAMES.join(", ")
                ),
            ));
        }
    })
}

/// `nodules`: the existing LIDC-like chest CT generator at the quickstart's calibrated geometry.
///
/// Its nodule densities are fixed by that generator, so `contrast` divides the 20 HU noise
/// (the same contrast-to-noise change); `lesion_scale` scales the LIDC sizes and the
/// 5–14 mm diameter range. Test cases continue the training numbering (`case<cases + j>`).
pub(super) fn nodules(dir: &Path, config: &TaskConfig) -> Result<Dataset, DataError> {
    prepare_root(dir)?;
    let defaults = SyntheticConfig::default();
    let synthetic = SyntheticConfig {
        task: config
            .task
            .clone()
            .unwrap_or_else(|| "Task910_Nodules".into()),
        cases: config.cases,
        test_cases: config.test_cases,
        seed: config.seed,
        shape: config.shape.unwrap_or([40, 96, 96]),
        spacing: config.spacing.unwrap_or([1.25, 0.7, 0.7]),
        min_lesions: config.min_lesions,
        max_lesions: config.max_lesions,
        size_scale: config.lesion_scale,
        size_range_mm: [5.0, 14.0].map(|d| d * config.lesion_scale),
        noise_hu: defaults.noise_hu * config.noise / config.contrast,
        ..defaults
    };
    synthetic_dataset(dir, &synthetic)
}

/// `liver_lesion`: 1–3 low-contrast hypodense lesions inside a large textured liver, with
/// bright hepatic vessels as distractors.
fn liver_lesion(settings: &Settings, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(settings.shape, settings.spacing);
    let mut scene = Scene::new(fine, 1);
    scene.fill(&[-0.5]);
    let field = smooth_field(&fine, 3, 0.3, rng);
    scene.add_field(&field, &[1.0]);
    let (size, c, edge) = (fine.size_mm(), fine.centre_mm(), fine.min_spacing());
    // A kidney- or spleen-like neighbour so that the liver is not the only bright structure.
    let neighbour = Shape::Ellipsoid {
        centre: [c[0], c[1] + 0.3 * size[1], c[2] + 0.35 * size[2]],
        semi: size.map(|s| between(rng, [0.12, 0.2]) * s),
        rotation: small_rotation(rng, 0.5),
    };
    scene.paint(&neighbour, &[between(rng, [0.8, 1.4])], None, edge);
    let liver_value = between(rng, [0.55, 0.65]);
    let liver = Shape::Ellipsoid {
        centre: [0, 1, 2].map(|a| c[a] + between(rng, [-0.05, 0.05]) * size[a]),
        semi: size.map(|s| between(rng, [0.38, 0.45]) * s),
        rotation: small_rotation(rng, 0.4),
    };
    let texture = low_pass_noise(&fine, rng);
    scene.paint(
        &liver,
        &[liver_value],
        Some((&texture[..], &[0.15][..])),
        edge,
    );
    let lesion_value = liver_value - 0.4 * settings.contrast;
    let mut occupied = Occupied::new();
    let mut objects = Vec::new();
    let mut classes = Vec::new();
    for _ in 0..settings.count(rng) {
        let r = between(rng, settings.radius_mm);
        let spot = (0..100).find_map(|_| {
            let p = point_in(&liver, 0.8, rng);
            (liver.inside_distance(p) >= r + edge && is_free(&fine, &occupied, p, r, edge))
                .then_some(p)
        });
        let Some(p) = spot else { continue };
        let semi = [0, 1, 2].map(|_| r * between(rng, [0.8, 1.0]));
        let lesion = Shape::Ellipsoid {
            centre: p,
            semi,
            rotation: small_rotation(rng, std::f64::consts::PI),
        };
        // Lesions keep a weaker copy of the liver texture, so smoothness does not give them away.
        scene.paint(
            &lesion,
            &[lesion_value],
            Some((&texture[..], &[0.1][..])),
            1.5 * edge,
        );
        let instance = objects.len() as u32 + 1;
        scene.label(&lesion, instance);
        classes.push((instance, 0));
        occupied.push((p, r));
        objects.push(WorldObject::new("lesion", p, r, Some(instance)));
    }
    if objects.len() < settings.lesions[0] {
        return Err(settings.too_few(id, objects.len()));
    }
    let mean_size = (size[0] + size[1] + size[2]) / 3.0;
    for _ in 0..rng.random_range(1..=3usize) {
        let start = point_in(&liver, 0.6, rng);
        let radius = between(rng, [0.8, 1.5]);
        let length = between(rng, [0.4, 0.8]) * mean_size;
        let lesions = occupied.clone();
        let near_lesion =
            move |p: [f64; 3]| lesions.iter().any(|(c, r)| dist(*c, p) < r + radius + edge);
        let points = tube_path(
            &fine,
            start,
            random_direction(rng),
            length,
            0.1,
            near_lesion,
            rng,
        );
        if points.len() < 3 {
            continue;
        }
        objects.push(WorldObject::new("vessel", points[0], radius, None));
        let value = liver_value + settings.contrast * between(rng, [0.8, 1.2]);
        scene.paint(&Shape::Tube { points, radius }, &[value], None, edge);
    }
    let spacing = settings.spacing;
    finish_case(
        scene,
        k,
        thick,
        spacing,
        id,
        &classes,
        objects,
        settings.noise,
        true,
        rng,
    )
}

/// `mri4_tumour`: 4-channel brain-like volumes with 1–3 small rim-enhancing tumours (labelled
/// by their core) and distractors that are bright in one contrast only (enhancing blobs in T1ce,
/// white-matter spots in FLAIR), so that finding tumours needs the channels together.
fn mri4_tumour(settings: &Settings, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(settings.shape, settings.spacing);
    let mut scene = Scene::new(fine, 4);
    brain(&mut scene, rng);
    let edge = fine.min_spacing();
    let mut occupied = Occupied::new();
    let (mut classes, mut objects) = (Vec::new(), Vec::new());
    for _ in 0..settings.count(rng) {
        let r = between(rng, settings.radius_mm);
        let factor = [0, 1, 2].map(|_| between(rng, [1.4, 2.0]));
        let reach = 2.0 * r + edge;
        let spot = (0..100).find_map(|_| {
            let p = point_anywhere(&fine, r + edge, rng);
            is_free(&fine, &occupied, p, r + edge, reach - r).then_some(p)
        });
        let Some(p) = spot else { continue };
        let (core, _) = paint_tumour(&mut scene, p, r, factor, settings.contrast, rng);
        let instance = objects.len() as u32 + 1;
        scene.label(&core, instance);
        classes.push((instance, 0));
        occupied.push((p, reach));
        objects.push(WorldObject::new("tumour", p, r, Some(instance)));
    }
    if objects.len() < settings.lesions[0] {
        return Err(settings.too_few(id, objects.len()));
    }
    for n in 0..draw_count(rng, 0.8, 3) {
        let (kind, values) = if n % 2 == 0 {
            ("enhancing", tissue::ENHANCING)
        } else {
            ("flair_spot", tissue::FLAIR_SPOT)
        };
        let r = between(rng, settings.radius_mm);
        let spot = (0..60).find_map(|_| {
            let p = point_anywhere(&fine, r + edge, rng);
            is_free(&fine, &occupied, p, r + edge, edge).then_some(p)
        });
        let Some(p) = spot else { continue };
        let values = brain_tissue(values, settings.contrast, rng);
        scene.paint(&Shape::ball(p, r), &values, None, edge);
        occupied.push((p, r + edge));
        objects.push(WorldObject::new(kind, p, r, None));
    }
    let spacing = settings.spacing;
    finish_case(
        scene,
        k,
        thick,
        spacing,
        id,
        &classes,
        objects,
        settings.noise,
        false,
        rng,
    )
}

/// `thick_slices`: the §6.3 ring lesions and solid distractors over pool-like anatomy,
/// acquired with thick slices (rendered thin and averaged: partial-volume effects along D).
fn thick_slices(settings: &Settings, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(settings.shape, settings.spacing);
    let mut scene = Scene::new(fine, 1);
    let contrast = Contrast::ct();
    let organs = anatomy(&mut scene, &contrast, ORGAN_OFFSETS, rng);
    let style = RingStyle {
        radius_mm: settings.radius_mm,
        shell_mm: 1.2,
        edge_mm: fine.min_spacing(),
        strength: settings.contrast,
    };
    let mut occupied = Occupied::new();
    let count = settings.count(rng);
    let rings = place_rings(
        &mut scene,
        &organs,
        count,
        &style,
        &contrast,
        &mut occupied,
        Some(1),
        rng,
    );
    if rings.len() < settings.lesions[0] {
        return Err(settings.too_few(id, rings.len()));
    }
    let classes: Vec<(u32, usize)> = (1..=rings.len() as u32).map(|i| (i, 0)).collect();
    let distractor_count = draw_count(rng, 0.8, 3);
    let distractors = place_distractors(
        &mut scene,
        distractor_count,
        &style,
        &contrast,
        &mut occupied,
        rng,
    );
    let objects = rings.into_iter().chain(distractors).collect();
    let spacing = settings.spacing;
    finish_case(
        scene,
        k,
        thick,
        spacing,
        id,
        &classes,
        objects,
        settings.noise,
        true,
        rng,
    )
}
