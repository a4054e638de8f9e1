//! MultiTalent sources: segmentation-style datasets with different label sets (pretraining.md
//! §3, §6.2): `organs` and `vessels` (CT) and `mri4` (four MRI-like channels), plus the brain
//! anatomy and tube paths that the detection tasks reuse.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::pool::{Occupied, anatomy, draw_count, in_unit_ball, is_free, point_anywhere, point_in};
use super::scene::{
    Contrast, Grid, Scene, Shape, between, low_pass_noise, random_rotation, render_grid,
    small_rotation, smooth_field,
};
use super::{Made, SourceConfig, WorldObject};
use crate::data::error::DataError;
use crate::data::synthetic::{bend, random_direction};

/// Noise σ in tissue units at `noise` factor 1 (pretraining.md §6.3).
pub(super) const NOISE_UNITS: f64 = 0.15;

/// A MultiTalent source: its default task name, classes, modalities and generator.
pub(super) struct SourceSpec {
    pub task: &'static str,
    pub labels: &'static [&'static str],
    pub modalities: &'static [&'static str],
    pub ct: bool,
    pub generate: fn(&SourceConfig, &str, ChaCha8Rng) -> Result<Made, DataError>,
}

/// The source called `name`.
pub(super) fn spec(name: &str) -> Result<SourceSpec, DataError> {
    Ok(match name {
        "organs" => SourceSpec {
            task: "Task950_Organs",
            labels: &["liver", "spleen", "kidney", "liver_tumour"],
            modalities: &["CT"],
            ct: true,
            generate: organs,
        },
        "vessels" => SourceSpec {
            task: "Task951_Vessels",
            labels: &["vessel", "aorta"],
            modalities: &["CT"],
            ct: true,
            generate: vessels,
        },
        "mri4" => SourceSpec {
            task: "Task952_Mri4",
            labels: &["edema", "tumour_core"],
            modalities: &BRAIN_MODALITIES,
            ct: false,
            generate: mri4,
        },
        other => {
            return Err(DataError::config(
                "source name",
                format!(
                    "unknown MultiTalent source {other:?}; the sources are {}",
                    super::SOURCE_NAMES.join(", ")
                ),
            ));
        }
    })
}

/// Finish a labelled scene: average thick slices, keep the instances left, map to CT or MRI.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_case(
    scene: Scene,
    k: usize,
    thick: Grid,
    spacing: [f64; 3],
    id: &str,
    classes: &[(u32, usize)],
    mut objects: Vec<WorldObject>,
    noise: f64,
    ct: bool,
    rng: &mut ChaCha8Rng,
) -> Result<Made, DataError> {
    let mut scene = scene.collapse_slices(k, thick);
    let (instance_classes, renumber) = scene.settle_instances(classes);
    for object in &mut objects {
        object.instance = object.instance.and_then(|i| renumber.get(&i).copied());
    }
    if ct {
        scene.finish_ct(noise, rng);
    } else {
        let scales: Vec<f64> = (0..scene.channels())
            .map(|_| between(rng, [300.0, 1200.0]))
            .collect();
        let bias = smooth_field(&thick, 2, 0.1, rng);
        scene.finish_mri(&scales, noise, Some(&bias), rng);
    }
    Ok((scene.into_case(spacing, id, instance_classes)?, objects))
}

/// `organs`: liver, spleen, two kidneys (enhancing cortex around a darker pelvis) and 0–2
/// rim-enhancing liver tumours in a fat/soft-tissue background.
fn organs(config: &SourceConfig, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(config.shape, config.spacing);
    let mut scene = Scene::new(fine, 1);
    scene.fill(&[-0.5]);
    let field = smooth_field(&fine, 3, 0.3, rng);
    scene.add_field(&field, &[1.0]);
    let (size, c, edge) = (fine.size_mm(), fine.centre_mm(), fine.min_spacing());
    let scaled = |f: [f64; 3], rng: &mut ChaCha8Rng| {
        let jitter = between(rng, [0.9, 1.1]);
        [0, 1, 2].map(|a| f[a] * size[a] * jitter)
    };
    let at = |f: [f64; 3]| [0, 1, 2].map(|a| c[a] + f[a] * size[a]);
    let tilt = 0.35;
    let liver = Shape::Ellipsoid {
        centre: at([between(rng, [-0.1, 0.1]), -0.05, -0.18]),
        semi: scaled([0.36, 0.31, 0.25], rng),
        rotation: small_rotation(rng, tilt),
    };
    let spleen = Shape::Ellipsoid {
        centre: at([between(rng, [-0.1, 0.1]), -0.1, 0.3]),
        semi: scaled([0.2, 0.14, 0.1], rng),
        rotation: small_rotation(rng, tilt),
    };
    let kidneys: Vec<Shape> = [-0.25, 0.25]
        .iter()
        .map(|&side| Shape::Ellipsoid {
            centre: at([between(rng, [-0.1, 0.1]), 0.28, side]),
            semi: scaled([0.16, 0.09, 0.07], rng),
            rotation: small_rotation(rng, tilt),
        })
        .collect();
    let texture = low_pass_noise(&fine, rng);
    let organ_texture = Some((texture.as_slice(), &[0.08][..]));
    scene.paint(&liver, &[between(rng, [0.55, 0.65])], organ_texture, edge);
    scene.paint(&spleen, &[between(rng, [0.75, 0.85])], organ_texture, edge);
    for kidney in &kidneys {
        scene.paint(kidney, &[between(rng, [1.3, 1.5])], None, edge);
        if let Shape::Ellipsoid {
            centre,
            semi,
            rotation,
        } = kidney
        {
            let pelvis = Shape::Ellipsoid {
                centre: *centre,
                semi: semi.map(|s| s * 0.45),
                rotation: *rotation,
            };
            scene.paint(&pelvis, &[0.5], None, edge);
        }
    }
    let mut objects = vec![WorldObject::new(
        "liver",
        shape_centre(&liver),
        max_semi(&liver),
        Some(1),
    )];
    objects.push(WorldObject::new(
        "spleen",
        shape_centre(&spleen),
        max_semi(&spleen),
        Some(2),
    ));
    let mut classes = vec![(1, 0), (2, 1)];
    scene.label(&liver, 1);
    scene.label(&spleen, 2);
    for (n, kidney) in kidneys.iter().enumerate() {
        let id = 3 + n as u32;
        scene.label(kidney, id);
        classes.push((id, 2));
        objects.push(WorldObject::new(
            "kidney",
            shape_centre(kidney),
            max_semi(kidney),
            Some(id),
        ));
    }
    let min_size = size.iter().copied().fold(f64::INFINITY, f64::min);
    let radius_range = [0.06 * min_size, 0.1 * min_size].map(|r| r.max(1.5 * edge));
    let mut occupied = Occupied::new();
    for _ in 0..rng.random_range(0..=2usize) {
        let r = between(rng, radius_range);
        let spot = (0..60).find_map(|_| {
            let p = point_in(&liver, 0.6, rng);
            (liver.inside_distance(p) >= r + edge && is_free(&fine, &occupied, p, r + edge, edge))
                .then_some(p)
        });
        let Some(p) = spot else { continue };
        let tumour = Shape::ball(p, r);
        scene.paint(&tumour, &[between(rng, [0.8, 1.0])], None, edge);
        scene.paint(
            &Shape::ball(p, r - edge),
            &[between(rng, [-0.1, 0.1])],
            None,
            edge,
        );
        let id = 5 + occupied.len() as u32;
        scene.label(&tumour, id);
        classes.push((id, 3));
        occupied.push((p, r + edge));
        objects.push(WorldObject::new("liver_tumour", p, r, Some(id)));
    }
    finish_case(
        scene,
        k,
        thick,
        config.spacing,
        id,
        &classes,
        objects,
        NOISE_UNITS * config.noise,
        true,
        rng,
    )
}

/// The centre of an ellipsoid (or of a shape's bounds).
fn shape_centre(shape: &Shape) -> [f64; 3] {
    match shape {
        Shape::Ellipsoid { centre, .. } | Shape::Cube { centre, .. } => *centre,
        Shape::Tube { points, .. } => points.first().copied().unwrap_or([0.0; 3]),
    }
}

/// The largest semi-axis of an ellipsoid (the radius of other shapes).
fn max_semi(shape: &Shape) -> f64 {
    match shape {
        Shape::Ellipsoid { semi, .. } => semi.iter().copied().fold(0.0, f64::max),
        Shape::Cube { half, .. } => *half,
        Shape::Tube { radius, .. } => *radius,
    }
}

/// A smoothly curving path from `start` along `direction`, `step` mm per point, turning by
/// `turn` per step, until `length` mm or until `stop(point)` or the grid's edge.
pub(super) fn tube_path(
    grid: &Grid,
    start: [f64; 3],
    direction: [f64; 3],
    length: f64,
    turn: f64,
    stop: impl Fn([f64; 3]) -> bool,
    rng: &mut ChaCha8Rng,
) -> Vec<[f64; 3]> {
    let step = grid.min_spacing() * 0.5;
    let (lo, hi) = grid.span_mm();
    let mut points = Vec::new();
    let (mut p, mut dir) = (start, direction);
    let mut travelled = 0.0;
    while travelled <= length {
        let inside = (0..3).all(|a| p[a] >= lo[a] - step && p[a] <= hi[a] + step);
        if !inside || stop(p) {
            break;
        }
        points.push(p);
        dir = bend(dir, random_direction(rng), turn);
        p = [0, 1, 2].map(|a| p[a] + dir[a] * step);
        travelled += step;
    }
    points
}

/// `vessels`: an aorta running along D and 2–4 thin curved vessels (contrast-enhanced, brighter
/// than any organ), over pool-like anatomy with milder organ offsets.
fn vessels(config: &SourceConfig, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(config.shape, config.spacing);
    let mut scene = Scene::new(fine, 1);
    anatomy(&mut scene, &Contrast::ct(), [0.3, 0.8], rng);
    let (size, c) = (fine.size_mm(), fine.centre_mm());
    let (lo, _) = fine.span_mm();
    let scale = size.iter().copied().fold(f64::INFINITY, f64::min) / 32.0;
    let edge = fine.min_spacing();
    let mean_size = (size[0] + size[1] + size[2]) / 3.0;
    let mut tubes = Vec::new();
    for _ in 0..rng.random_range(2..=4usize) {
        let start = point_anywhere(&fine, 0.0, rng);
        let length = between(rng, [0.6, 1.2]) * mean_size;
        let direction = random_direction(rng);
        let points = tube_path(&fine, start, direction, length, 0.15, |_| false, rng);
        let radius = (between(rng, [0.8, 1.5]) * scale).max(0.6 * edge);
        let value = between(rng, [1.6, 2.4]);
        if points.len() >= 3 {
            tubes.push(("vessel", Shape::Tube { points, radius }, value));
        }
    }
    // The aorta enters at the first slice and runs down D with a gentle drift.
    let start = [
        lo[0],
        c[1] + between(rng, [-0.15, 0.15]) * size[1],
        c[2] + between(rng, [-0.15, 0.15]) * size[2],
    ];
    let mut points = Vec::new();
    let (mut p, mut dir) = (start, [1.0, 0.0, 0.0]);
    let (_, hi) = fine.span_mm();
    while p[0] <= hi[0] + edge {
        points.push(p);
        dir = bend(dir, random_direction(rng), 0.04);
        if dir[0] < 0.8 {
            dir = bend(dir, [1.0, 0.0, 0.0], 0.5);
        }
        p = [0, 1, 2].map(|a| p[a] + dir[a] * edge);
    }
    let radius = (between(rng, [3.2, 3.8]) * scale).max(1.5 * edge);
    tubes.push((
        "aorta",
        Shape::Tube { points, radius },
        between(rng, [1.7, 1.9]),
    ));
    let mut classes = Vec::new();
    let mut objects = Vec::new();
    for (n, (kind, tube, value)) in tubes.iter().enumerate() {
        scene.paint(tube, &[*value], None, edge);
        let instance = n as u32 + 1;
        scene.label(tube, instance);
        classes.push((instance, usize::from(*kind == "aorta")));
        if let Shape::Tube { points, radius } = tube {
            objects.push(WorldObject::new(kind, points[0], *radius, Some(instance)));
        }
    }
    finish_case(
        scene,
        k,
        thick,
        config.spacing,
        id,
        &classes,
        objects,
        NOISE_UNITS * config.noise,
        true,
        rng,
    )
}

/// Channel names of the brain-like MRI volumes (BraTS order).
pub(super) const BRAIN_MODALITIES: [&str; 4] = ["FLAIR", "T1", "T1ce", "T2"];

/// Brain tissues in tissue units per channel (FLAIR, T1, T1ce, T2), after BraTS appearance.
pub(super) mod tissue {
    /// White matter: the background.
    pub const WHITE_MATTER: [f64; 4] = [0.0, 0.6, 0.5, -0.4];
    /// Grey matter.
    pub const GREY_MATTER: [f64; 4] = [0.4, -0.2, -0.2, 0.4];
    /// Cerebrospinal fluid (ventricles): dark except in T2.
    pub const CSF: [f64; 4] = [-1.2, -1.4, -1.3, 1.8];
    /// Peritumoural edema: bright in FLAIR and T2.
    pub const EDEMA: [f64; 4] = [1.5, -0.5, -0.4, 1.3];
    /// Enhancing tumour rim: bright in T1ce.
    pub const RIM: [f64; 4] = [0.9, -0.1, 2.0, 0.6];
    /// Necrotic core: dark in T1 and T1ce, bright in T2.
    pub const NECROSIS: [f64; 4] = [0.6, -1.0, -1.0, 1.6];
    /// Enhancing vessel or meningioma-like blob: T1ce only.
    pub const ENHANCING: [f64; 4] = [0.1, 0.6, 2.0, -0.2];
    /// Non-enhancing FLAIR hyperintensity (white-matter lesion): FLAIR and T2 only.
    pub const FLAIR_SPOT: [f64; 4] = [1.5, 0.2, 0.2, 1.0];
}

/// Per-channel values of a brain tissue, `strength` of the way from white matter, with a
/// per-case jitter of σ 0.1 (between-subject variation).
pub(super) fn brain_tissue(values: [f64; 4], strength: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..4)
        .map(|c| {
            let base = tissue::WHITE_MATTER[c];
            base + strength * (values[c] - base) + 0.1 * crate::data::synthetic::gaussian(rng)
        })
        .collect()
}

/// White matter with a smooth field, 2–3 textured grey-matter ellipsoids and a ventricle.
pub(super) fn brain(scene: &mut Scene, rng: &mut ChaCha8Rng) {
    let grid = scene.grid;
    scene.fill(&brain_tissue(tissue::WHITE_MATTER, 1.0, rng));
    let field = smooth_field(&grid, 3, 0.3, rng);
    scene.add_field(&field, &[1.0; 4]);
    let (size, c, edge) = (grid.size_mm(), grid.centre_mm(), grid.min_spacing());
    for _ in 0..rng.random_range(2..=3usize) {
        let offset = in_unit_ball(rng);
        let shape = Shape::Ellipsoid {
            centre: [0, 1, 2].map(|a| c[a] + 0.3 * offset[a] * size[a]),
            semi: size.map(|s| between(rng, [0.15, 0.3]) * s),
            rotation: random_rotation(rng),
        };
        let texture = low_pass_noise(&grid, rng);
        let values = brain_tissue(tissue::GREY_MATTER, 1.0, rng);
        scene.paint(&shape, &values, Some((&texture[..], &[0.1; 4][..])), edge);
    }
    let ventricle = Shape::Ellipsoid {
        centre: [0, 1, 2].map(|a| c[a] + between(rng, [-0.08, 0.08]) * size[a]),
        semi: [0.2 * size[0], 0.12 * size[1], 0.05 * size[2]],
        rotation: small_rotation(rng, 0.3),
    };
    scene.paint(&ventricle, &brain_tissue(tissue::CSF, 1.0, rng), None, edge);
}

/// A rim-enhancing tumour with necrotic core and an edema halo; returns the core ball and the
/// edema ellipsoid. `strength` scales the tissue contrast against white matter.
pub(super) fn paint_tumour(
    scene: &mut Scene,
    centre: [f64; 3],
    core_radius: f64,
    edema_factor: [f64; 3],
    strength: f64,
    rng: &mut ChaCha8Rng,
) -> (Shape, Shape) {
    let edge = scene.grid.min_spacing();
    let edema = Shape::Ellipsoid {
        centre,
        semi: edema_factor.map(|f| f * core_radius),
        rotation: random_rotation(rng),
    };
    let core = Shape::ball(centre, core_radius);
    scene.paint(
        &edema,
        &brain_tissue(tissue::EDEMA, strength, rng),
        None,
        1.5 * edge,
    );
    scene.paint(&core, &brain_tissue(tissue::RIM, strength, rng), None, edge);
    let necrosis = core_radius - 1.2 * edge;
    if necrosis > 0.0 {
        let values = brain_tissue(tissue::NECROSIS, strength, rng);
        scene.paint(&Shape::ball(centre, necrosis), &values, None, edge);
    }
    (core, edema)
}

/// `mri4`: brain-like 4-channel volumes with 1–2 tumours labelled as edema and tumour core.
fn mri4(config: &SourceConfig, id: &str, mut rng: ChaCha8Rng) -> Result<Made, DataError> {
    let rng = &mut rng;
    let (fine, thick, k) = render_grid(config.shape, config.spacing);
    let mut scene = Scene::new(fine, 4);
    brain(&mut scene, rng);
    let edge = fine.min_spacing();
    let min_size = fine.size_mm().iter().copied().fold(f64::INFINITY, f64::min);
    let radius_range = [0.1 * min_size, 0.16 * min_size].map(|r| r.max(2.0 * edge));
    let mut occupied = Occupied::new();
    let (mut classes, mut objects) = (Vec::new(), Vec::new());
    for _ in 0..draw_count(rng, 1.0, 2) {
        let r = between(rng, radius_range);
        let factor = [0, 1, 2].map(|_| between(rng, [1.5, 2.2]));
        let reach = r * 2.2 + edge;
        let spot = (0..60).find_map(|_| {
            let p = point_anywhere(&fine, r + edge, rng);
            is_free(&fine, &occupied, p, r + edge, reach - r).then_some(p)
        });
        let Some(p) = spot else { continue };
        let (core, edema) = paint_tumour(&mut scene, p, r, factor, 1.0, rng);
        let n = occupied.len() as u32;
        scene.label(&edema, 2 * n + 1);
        scene.label(&core, 2 * n + 2);
        classes.extend([(2 * n + 1, 0), (2 * n + 2, 1)]);
        objects.push(WorldObject::new(
            "edema",
            p,
            r * factor.iter().copied().fold(0.0, f64::max),
            Some(2 * n + 1),
        ));
        objects.push(WorldObject::new("tumour_core", p, r, Some(2 * n + 2)));
        occupied.push((p, reach));
    }
    finish_case(
        scene,
        k,
        thick,
        config.spacing,
        id,
        &classes,
        objects,
        NOISE_UNITS * config.noise,
        false,
        rng,
    )
}
