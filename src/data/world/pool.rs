//! The unlabelled pool of pretraining.md §6.3, and the anatomy, ring lesions and solid
//! distractors that it shares with the `thick_slices` task.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::scene::{
    Contrast, Grid, Scene, Shape, between, low_pass_noise, random_rotation, render_grid,
    smooth_field,
};
use super::{PoolConfig, PoolModality, PoolSample, WorldObject, world_rng};
use crate::data::error::DataError;
use crate::data::synthetic::dist;

/// Peak amplitude of the smooth background field, in tissue units.
const BACKGROUND_AMPLITUDE: f64 = 0.3;
/// σ of each organ's low-pass texture, in tissue units.
const ORGAN_TEXTURE: f64 = 0.1;
/// Intensity range of ring shells and solid distractors, in tissue units (brighter than any organ).
const BRIGHT_UNITS: [f64; 2] = [1.5, 2.5];
/// Intensity range of ring cores, in tissue units (darker than the shell, near the background).
const CORE_UNITS: [f64; 2] = [-0.5, 0.3];
/// Share of rings placed inside an organ ("mostly inside organs").
const INSIDE_ORGAN: f64 = 0.8;

/// Draw an object count: with probability `p` uniform in `1..=max`, else 0.
pub(super) fn draw_count(rng: &mut ChaCha8Rng, p: f64, max: usize) -> usize {
    if max == 0 || !rng.random_bool(p) {
        0
    } else {
        rng.random_range(1..=max)
    }
}

/// A point uniformly distributed in the unit ball.
pub(super) fn in_unit_ball(rng: &mut ChaCha8Rng) -> [f64; 3] {
    loop {
        let v: [f64; 3] = [0, 1, 2].map(|_| between(rng, [-1.0, 1.0]));
        if v.iter().map(|x| x * x).sum::<f64>() <= 1.0 {
            return v;
        }
    }
}

/// A random point inside an ellipsoid, within `fraction` of its semi-axes.
pub(super) fn point_in(shape: &Shape, fraction: f64, rng: &mut ChaCha8Rng) -> [f64; 3] {
    let v = in_unit_ball(rng);
    match shape {
        Shape::Ellipsoid {
            centre,
            semi,
            rotation,
        } => {
            let q = [0, 1, 2].map(|a| v[a] * semi[a] * fraction);
            [0, 1, 2].map(|i| centre[i] + (0..3).map(|j| rotation[i][j] * q[j]).sum::<f64>())
        }
        other => {
            let (lo, hi) = other.bounds();
            [0, 1, 2].map(|a| (lo[a] + hi[a]) / 2.0 + v[a] * (hi[a] - lo[a]) / 2.0 * fraction)
        }
    }
}

/// A random point whose ball of `reach` lies in the grid.
pub(super) fn point_anywhere(grid: &Grid, reach: f64, rng: &mut ChaCha8Rng) -> [f64; 3] {
    let (lo, hi) = grid.span_mm();
    [0, 1, 2].map(|a| {
        let (a0, a1) = (lo[a] + reach, hi[a] - reach);
        if a1 > a0 {
            between(rng, [a0, a1])
        } else {
            (lo[a] + hi[a]) / 2.0
        }
    })
}

/// Objects already placed, as `(centre, reach)` balls that later objects keep clear of.
pub(super) type Occupied = Vec<([f64; 3], f64)>;

/// Whether a ball of `reach` at `centre` fits the grid and keeps `margin` from every placed ball.
pub(super) fn is_free(
    grid: &Grid,
    occupied: &Occupied,
    centre: [f64; 3],
    reach: f64,
    margin: f64,
) -> bool {
    grid.holds_ball(centre, reach)
        && occupied
            .iter()
            .all(|(c, r)| dist(*c, centre) >= reach + r + margin)
}

/// Organ intensity offsets of §6.3: ±[0.5, 1.5] tissue units.
pub(super) const ORGAN_OFFSETS: [f64; 2] = [0.5, 1.5];

/// Background tissue, a smooth low-frequency field and 2–3 rotated, textured ellipsoid organs
/// with soft 1-voxel edges and intensity offsets ±`offsets` (§6.3 step 1); returns the organs.
pub(super) fn anatomy(
    scene: &mut Scene,
    contrast: &Contrast,
    offsets: [f64; 2],
    rng: &mut ChaCha8Rng,
) -> Vec<Shape> {
    let grid = scene.grid;
    scene.fill(&contrast.tissue(0.0, rng));
    let waves = rng.random_range(3..=4);
    let field = smooth_field(&grid, waves, BACKGROUND_AMPLITUDE, rng);
    scene.add_field(&field, &contrast.gains);
    let size = grid.size_mm();
    let centre = grid.centre_mm();
    let edge = grid.min_spacing();
    let count = rng.random_range(2..=3);
    let mut organs = Vec::with_capacity(count);
    for _ in 0..count {
        let semi = size.map(|s| between(rng, [0.25, 0.45]) * s);
        let organ_centre = [0, 1, 2].map(|a| centre[a] + between(rng, [-0.2, 0.2]) * size[a]);
        let shape = Shape::Ellipsoid {
            centre: organ_centre,
            semi,
            rotation: random_rotation(rng),
        };
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let values = contrast.tissue(sign * between(rng, offsets), rng);
        let texture = low_pass_noise(&grid, rng);
        let sigma: Vec<f64> = contrast
            .gains
            .iter()
            .map(|g| g.abs() * ORGAN_TEXTURE)
            .collect();
        scene.paint(&shape, &values, Some((&texture[..], &sigma[..])), edge);
        organs.push(shape);
    }
    organs
}

/// How ring lesions and solid distractors look.
#[derive(Debug, Clone, Copy)]
pub(super) struct RingStyle {
    /// Radius range in mm.
    pub radius_mm: [f64; 2],
    /// Shell thickness in mm.
    pub shell_mm: f64,
    /// Soft-edge width in mm.
    pub edge_mm: f64,
    /// Factor on the shell, core and distractor intensities (the `contrast` knob).
    pub strength: f64,
}

/// Place up to `count` rings (bright shell, darker core; §6.3 step 2), mostly inside organs.
/// With `label`, ring `k` becomes instance `first_instance + k` in the mask.
#[allow(clippy::too_many_arguments)]
pub(super) fn place_rings(
    scene: &mut Scene,
    organs: &[Shape],
    count: usize,
    style: &RingStyle,
    contrast: &Contrast,
    occupied: &mut Occupied,
    label: Option<u32>,
    rng: &mut ChaCha8Rng,
) -> Vec<WorldObject> {
    let mut out = Vec::new();
    for _ in 0..count {
        let radius = between(rng, style.radius_mm);
        let reach = radius + style.edge_mm;
        let inside = !organs.is_empty() && rng.random_bool(INSIDE_ORGAN);
        let spot = (0..60).find_map(|_| {
            let centre = if inside {
                point_in(&organs[rng.random_range(0..organs.len())], 0.7, rng)
            } else {
                point_anywhere(&scene.grid, reach, rng)
            };
            is_free(&scene.grid, occupied, centre, reach, style.edge_mm).then_some(centre)
        });
        let shell = contrast.tissue(style.strength * between(rng, BRIGHT_UNITS), rng);
        let core = contrast.tissue(style.strength * between(rng, CORE_UNITS), rng);
        let Some(centre) = spot else { continue };
        let ball = Shape::ball(centre, radius);
        scene.paint(&ball, &shell, None, style.edge_mm);
        let inner = radius - style.shell_mm;
        if inner > 0.0 {
            scene.paint(&Shape::ball(centre, inner), &core, None, style.edge_mm);
        }
        let instance = label.map(|first| first + out.len() as u32);
        if let Some(id) = instance {
            scene.label(&ball, id);
        }
        occupied.push((centre, reach));
        out.push(WorldObject::new("ring", centre, radius, instance));
    }
    out
}

/// Place up to `count` solid bright blobs or small cubes of ring size (§6.3 step 3).
pub(super) fn place_distractors(
    scene: &mut Scene,
    count: usize,
    style: &RingStyle,
    contrast: &Contrast,
    occupied: &mut Occupied,
    rng: &mut ChaCha8Rng,
) -> Vec<WorldObject> {
    let mut out = Vec::new();
    for _ in 0..count {
        let radius = between(rng, style.radius_mm);
        let cube = rng.random_bool(0.5);
        let reach = radius + style.edge_mm;
        let rotation = random_rotation(rng);
        let values = contrast.tissue(style.strength * between(rng, BRIGHT_UNITS), rng);
        let semi = [0, 1, 2].map(|_| radius * between(rng, [0.7, 1.0]));
        let spot = (0..60).find_map(|_| {
            let centre = point_anywhere(&scene.grid, reach, rng);
            is_free(&scene.grid, occupied, centre, reach, style.edge_mm).then_some(centre)
        });
        let Some(centre) = spot else { continue };
        let shape = if cube {
            // A cube's corners reach √3 · half; keep them inside the ball of `radius`.
            Shape::Cube {
                centre,
                half: radius / 3f64.sqrt() * 1.2,
                rotation,
            }
        } else {
            Shape::Ellipsoid {
                centre,
                semi,
                rotation,
            }
        };
        scene.paint(&shape, &values, None, style.edge_mm);
        occupied.push((centre, reach));
        let kind = if cube { "cube" } else { "blob" };
        out.push(WorldObject::new(kind, centre, radius, None));
    }
    out
}

/// A volume of white noise (σ 100 HU around soft tissue; `noise` is ignored): no organs,
/// rings or distractors, so nothing a pre-training objective could learn beyond the
/// intensity statistics.
fn noise_sample(
    config: &PoolConfig,
    index: u64,
    rng: &mut ChaCha8Rng,
) -> Result<PoolSample, DataError> {
    let grid = render_grid(config.shape, config.spacing).1;
    let mut scene = Scene::new(grid, 1);
    scene.finish_ct(1.0, rng);
    let (volume, _) = scene.into_volumes(config.spacing, &format!("noise sample {index}"))?;
    Ok(PoolSample {
        volume,
        modality: PoolModality::Noise,
        lesions: Vec::new(),
        distractors: Vec::new(),
    })
}

/// One pool sample (see [`super::pool_sample`]).
pub(super) fn generate(config: &PoolConfig, index: u64) -> Result<PoolSample, DataError> {
    config.validate()?;
    let mut rng = world_rng(config.seed, "pool", index);
    if config.modality == PoolModality::Noise {
        return noise_sample(config, index, &mut rng);
    }
    let modality = match config.modality {
        PoolModality::Mixed if rng.random_bool(config.mri_fraction) => PoolModality::Mri,
        PoolModality::Mixed => PoolModality::Ct,
        other => other,
    };
    let (channels, contrast) = match modality {
        PoolModality::Mri => (
            config.channels,
            Contrast::random_mri(config.channels, &mut rng),
        ),
        _ => (1, Contrast::ct()),
    };
    let (fine, thick, k) = render_grid(config.shape, config.spacing);
    let mut scene = Scene::new(fine, channels);
    let organs = anatomy(&mut scene, &contrast, ORGAN_OFFSETS, &mut rng);
    let style = RingStyle {
        radius_mm: config.lesion_radius_range_mm(),
        shell_mm: fine.min_spacing(),
        edge_mm: fine.min_spacing(),
        strength: 1.0,
    };
    let lesion_count = draw_count(&mut rng, config.lesion_probability, config.max_lesions);
    let distractor_count = draw_count(
        &mut rng,
        config.distractor_probability,
        config.max_distractors,
    );
    let mut occupied = Occupied::new();
    let lesions = place_rings(
        &mut scene,
        &organs,
        lesion_count,
        &style,
        &contrast,
        &mut occupied,
        None,
        &mut rng,
    );
    let distractors = place_distractors(
        &mut scene,
        distractor_count,
        &style,
        &contrast,
        &mut occupied,
        &mut rng,
    );
    let mut scene = scene.collapse_slices(k, thick);
    if modality == PoolModality::Mri {
        let scales: Vec<f64> = (0..channels)
            .map(|_| between(&mut rng, [200.0, 1000.0]))
            .collect();
        let bias = smooth_field(&thick, 2, config.bias_field, &mut rng);
        scene.finish_mri(&scales, config.noise, Some(&bias), &mut rng);
    } else {
        scene.finish_ct(config.noise, &mut rng);
    }
    let (volume, _) = scene.into_volumes(config.spacing, &format!("pool sample {index}"))?;
    Ok(PoolSample {
        volume,
        modality,
        lesions,
        distractors,
    })
}
