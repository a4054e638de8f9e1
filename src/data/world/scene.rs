//! The scene engine of the synthetic world: a voxel grid in mm, soft-edged shapes painted per
//! channel in tissue units, low-pass textures, smooth fields, thick-slice averaging and the
//! modality mappings (CT in HU, MRI-like positive intensities with bias field and Rician noise).
//!
//! Tissue units: 0 is the background tissue, organs sit at ±0.5–1.5 and the acquisition noise
//! has σ 0.15 (the scales of pretraining.md §6.3). CT maps a unit to 100 HU around 40 HU.

use std::collections::BTreeMap;

use ndarray::Array4;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::dataset::Case;
use crate::data::error::DataError;
use crate::data::synthetic::{dist, gaussian, soft_edge};
use crate::volume::Volume;

/// A 3×3 rotation matrix, row-major; columns are the rotated axes.
pub(super) type Rotation = [[f64; 3]; 3];

/// The identity rotation.
pub(super) const IDENTITY: Rotation = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// HU of tissue unit 0 (soft tissue) and HU per tissue unit, for CT-like volumes.
const CT_OFFSET_HU: f64 = 40.0;
const CT_HU_PER_UNIT: f64 = 100.0;

/// Exponent per tissue unit of the MRI-like intensity mapping `scale · exp(k · u)`.
const MRI_LOG_GAIN: f64 = 0.4;

/// A uniform draw from `[lo, hi)` that also accepts `lo == hi` (then returns `lo`).
pub(super) fn between(rng: &mut ChaCha8Rng, range: [f64; 2]) -> f64 {
    range[0] + (range[1] - range[0]) * rng.random::<f64>()
}

/// A uniformly distributed random rotation (Shoemake's unit quaternion from three uniforms).
pub(super) fn random_rotation(rng: &mut ChaCha8Rng) -> Rotation {
    let (u1, u2, u3): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let [w, x, y, z] = [
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
        b * (tau * u3).cos(),
    ];
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// A rotation about a random axis by an angle of at most `max_radians` (Rodrigues' formula),
/// for organs that keep their anatomical layout.
pub(super) fn small_rotation(rng: &mut ChaCha8Rng, max_radians: f64) -> Rotation {
    let k = crate::data::synthetic::random_direction(rng);
    let angle = between(rng, [-max_radians, max_radians]);
    let (s, c) = angle.sin_cos();
    let mut r = [[0.0; 3]; 3];
    let cross = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
    for i in 0..3 {
        for j in 0..3 {
            let identity = if i == j { 1.0 } else { 0.0 };
            r[i][j] = c * identity + s * cross[i][j] + (1.0 - c) * k[i] * k[j];
        }
    }
    r
}

/// Coordinates of `p − centre` in the rotated frame (`Rᵀ (p − c)`).
fn to_local(rotation: &Rotation, centre: [f64; 3], p: [f64; 3]) -> [f64; 3] {
    let v = [0, 1, 2].map(|a| p[a] - centre[a]);
    [0, 1, 2].map(|j| (0..3).map(|i| rotation[i][j] * v[i]).sum())
}

/// Voxel grid: voxel `(d, h, w)` has its centre at `origin + (d·sd, h·sh, w·sw)` mm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Grid {
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
}

impl Grid {
    /// A grid with voxel 0 at the origin.
    pub fn new(shape: [usize; 3], spacing: [f64; 3]) -> Grid {
        Grid {
            shape,
            spacing,
            origin: [0.0; 3],
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Physical size `n · s` per axis in mm.
    pub fn size_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| self.shape[a] as f64 * self.spacing[a])
    }

    /// The position of the grid's centre in mm.
    pub fn centre_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| self.origin[a] + (self.shape[a] as f64 - 1.0) / 2.0 * self.spacing[a])
    }

    /// Smallest and largest voxel-centre position per axis (mm).
    pub fn span_mm(&self) -> ([f64; 3], [f64; 3]) {
        (
            self.origin,
            [0, 1, 2].map(|a| self.origin[a] + (self.shape[a] as f64 - 1.0) * self.spacing[a]),
        )
    }

    /// The smallest voxel spacing: the width of a "1-voxel" edge.
    pub fn min_spacing(&self) -> f64 {
        self.spacing.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Call `f(index, position_mm)` for every voxel whose centre lies in the box `[lo, hi]` mm.
    pub fn for_each_in(&self, lo: [f64; 3], hi: [f64; 3], mut f: impl FnMut(usize, [f64; 3])) {
        let range = |a: usize| {
            let first = ((lo[a] - self.origin[a]) / self.spacing[a]).ceil().max(0.0);
            let last = ((hi[a] - self.origin[a]) / self.spacing[a])
                .floor()
                .min(self.shape[a] as f64 - 1.0);
            if last < first {
                0..0
            } else {
                first as usize..last as usize + 1
            }
        };
        let (rd, rh, rw) = (range(0), range(1), range(2));
        for d in rd {
            for h in rh.clone() {
                for w in rw.clone() {
                    let p = [
                        self.origin[0] + d as f64 * self.spacing[0],
                        self.origin[1] + h as f64 * self.spacing[1],
                        self.origin[2] + w as f64 * self.spacing[2],
                    ];
                    f((d * self.shape[1] + h) * self.shape[2] + w, p);
                }
            }
        }
    }

    /// Call `f(index, position_mm)` for every voxel.
    pub fn for_each(&self, f: impl FnMut(usize, [f64; 3])) {
        let (lo, hi) = self.span_mm();
        self.for_each_in(lo, hi, f)
    }

    /// Whether a ball of `reach` mm around `centre` lies inside the voxel-centre span.
    pub fn holds_ball(&self, centre: [f64; 3], reach: f64) -> bool {
        let (lo, hi) = self.span_mm();
        (0..3).all(|a| centre[a] - reach >= lo[a] && centre[a] + reach <= hi[a])
    }
}

/// A solid shape in mm with a signed inside distance (positive inside).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shape {
    /// An ellipsoid with semi-axes along the columns of `rotation`.
    Ellipsoid {
        centre: [f64; 3],
        semi: [f64; 3],
        rotation: Rotation,
    },
    /// A cube of half side `half`, rotated.
    Cube {
        centre: [f64; 3],
        half: f64,
        rotation: Rotation,
    },
    /// A tube of `radius` around a polyline.
    Tube { points: Vec<[f64; 3]>, radius: f64 },
}

impl Shape {
    /// A ball.
    pub fn ball(centre: [f64; 3], radius: f64) -> Shape {
        Shape::Ellipsoid {
            centre,
            semi: [radius; 3],
            rotation: IDENTITY,
        }
    }

    /// Approximate signed distance to the surface in mm (positive inside; exact for balls).
    pub fn inside_distance(&self, p: [f64; 3]) -> f64 {
        match self {
            Shape::Ellipsoid {
                centre,
                semi,
                rotation,
            } => {
                let q = to_local(rotation, *centre, p);
                let rho = (0..3).map(|a| (q[a] / semi[a]).powi(2)).sum::<f64>().sqrt();
                let length = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
                if rho < 1e-9 {
                    semi.iter().copied().fold(f64::INFINITY, f64::min)
                } else {
                    // Distance along the ray from the centre through p.
                    length * (1.0 / rho - 1.0)
                }
            }
            Shape::Cube {
                centre,
                half,
                rotation,
            } => {
                let q = to_local(rotation, *centre, p);
                half - q.iter().map(|v| v.abs()).fold(0.0, f64::max)
            }
            Shape::Tube { points, radius } => {
                let nearest = if points.len() == 1 {
                    dist(points[0], p)
                } else {
                    points
                        .windows(2)
                        .map(|s| segment_distance(s[0], s[1], p))
                        .fold(f64::INFINITY, f64::min)
                };
                radius - nearest
            }
        }
    }

    /// A box `[lo, hi]` mm that holds the shape.
    pub fn bounds(&self) -> ([f64; 3], [f64; 3]) {
        match self {
            Shape::Ellipsoid { centre, semi, .. } => {
                let r = semi.iter().copied().fold(0.0, f64::max);
                (centre.map(|c| c - r), centre.map(|c| c + r))
            }
            Shape::Cube { centre, half, .. } => {
                let r = half * 3f64.sqrt();
                (centre.map(|c| c - r), centre.map(|c| c + r))
            }
            Shape::Tube { points, radius } => {
                let mut lo = [f64::INFINITY; 3];
                let mut hi = [f64::NEG_INFINITY; 3];
                for p in points {
                    for a in 0..3 {
                        lo[a] = lo[a].min(p[a] - radius);
                        hi[a] = hi[a].max(p[a] + radius);
                    }
                }
                (lo, hi)
            }
        }
    }
}

/// Distance from `p` to the segment `a`–`b`.
fn segment_distance(a: [f64; 3], b: [f64; 3], p: [f64; 3]) -> f64 {
    let ab = [0, 1, 2].map(|i| b[i] - a[i]);
    let len2 = ab.iter().map(|v| v * v).sum::<f64>();
    let t = if len2 > 0.0 {
        ((0..3).map(|i| (p[i] - a[i]) * ab[i]).sum::<f64>() / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    dist(p, [0, 1, 2].map(|i| a[i] + t * ab[i]))
}

/// How tissue units map to each channel: `gain[c] · u` plus a per-tissue jitter.
///
/// CT has one channel with gain 1; MRI-like volumes get one gain per channel, some negative,
/// so that channels show the same anatomy with different contrasts (as T1 and T2 do).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Contrast {
    pub gains: Vec<f64>,
    pub jitter: f64,
}

impl Contrast {
    /// One CT channel.
    pub fn ct() -> Contrast {
        Contrast {
            gains: vec![1.0],
            jitter: 0.0,
        }
    }

    /// `channels` MRI-like channels: channel 0 keeps the sign of the tissue units, the others
    /// flip it at random; every tissue value gets a jitter of σ 0.3 per channel.
    pub fn random_mri(channels: usize, rng: &mut ChaCha8Rng) -> Contrast {
        let gains = (0..channels)
            .map(|c| {
                let sign = if c > 0 && rng.random_bool(0.5) {
                    -1.0
                } else {
                    1.0
                };
                sign * between(rng, [0.6, 1.4])
            })
            .collect();
        Contrast { gains, jitter: 0.3 }
    }

    /// The per-channel values of a tissue at `u` tissue units.
    pub fn tissue(&self, u: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
        self.gains
            .iter()
            .map(|g| g * u + self.jitter * gaussian(rng))
            .collect()
    }
}

/// The volume being built: per-channel values in tissue units and the instance mask.
#[derive(Debug, Clone)]
pub(super) struct Scene {
    pub grid: Grid,
    /// One `[D·H·W]` C-order buffer per channel.
    pub image: Vec<Vec<f32>>,
    /// Instance ids (0 background).
    pub instances: Vec<u32>,
}

impl Scene {
    /// An empty scene (all channels 0, no instances).
    pub fn new(grid: Grid, channels: usize) -> Scene {
        Scene {
            grid,
            image: vec![vec![0.0; grid.len()]; channels],
            instances: vec![0; grid.len()],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.image.len()
    }

    /// Set every voxel to the tissue `values` (one per channel).
    pub fn fill(&mut self, values: &[f64]) {
        for (channel, v) in self.image.iter_mut().zip(values) {
            channel.fill(*v as f32);
        }
    }

    /// Add `gains[c] · field` to every channel.
    pub fn add_field(&mut self, field: &[f32], gains: &[f64]) {
        for (channel, g) in self.image.iter_mut().zip(gains) {
            for (v, f) in channel.iter_mut().zip(field) {
                *v += (*g as f32) * f;
            }
        }
    }

    /// Blend the tissue `values` into the shape with a soft edge of `edge_mm`; an optional
    /// texture adds `texture[i] · sigma[c]` inside.
    pub fn paint(
        &mut self,
        shape: &Shape,
        values: &[f64],
        texture: Option<(&[f32], &[f64])>,
        edge_mm: f64,
    ) {
        let (lo, hi) = shape.bounds();
        let lo = lo.map(|v| v - edge_mm);
        let hi = hi.map(|v| v + edge_mm);
        let image = &mut self.image;
        self.grid.for_each_in(lo, hi, |i, p| {
            let t = soft_edge(shape.inside_distance(p), edge_mm);
            if t <= 0.0 {
                return;
            }
            for (c, channel) in image.iter_mut().enumerate() {
                let mut v = values[c];
                if let Some((field, sigma)) = texture {
                    v += field[i] as f64 * sigma[c];
                }
                channel[i] = (channel[i] as f64 * (1.0 - t) + v * t) as f32;
            }
        });
    }

    /// Mark every voxel inside the shape as `instance` (overwriting); returns how many.
    pub fn label(&mut self, shape: &Shape, instance: u32) -> usize {
        let (lo, hi) = shape.bounds();
        let instances = &mut self.instances;
        let mut count = 0;
        self.grid.for_each_in(lo, hi, |i, p| {
            if shape.inside_distance(p) >= 0.0 {
                instances[i] = instance;
                count += 1;
            }
        });
        count
    }

    /// Renumber the instances that still have voxels to 1, 2, … in the order given, keeping
    /// their classes (a later shape or thick-slice averaging may have removed an earlier one);
    /// returns the new id → class map and the old → new id map.
    pub fn settle_instances(
        &mut self,
        classes: &[(u32, usize)],
    ) -> (BTreeMap<u32, usize>, BTreeMap<u32, u32>) {
        let present: std::collections::BTreeSet<u32> =
            self.instances.iter().copied().filter(|&v| v > 0).collect();
        let mut renumber = BTreeMap::new();
        let mut out = BTreeMap::new();
        for &(id, class) in classes {
            if present.contains(&id) && !renumber.contains_key(&id) {
                let new = renumber.len() as u32 + 1;
                renumber.insert(id, new);
                out.insert(new, class);
            }
        }
        for v in &mut self.instances {
            *v = renumber.get(v).copied().unwrap_or(0);
        }
        (out, renumber)
    }

    /// Average every `k` consecutive slices along D into one (partial-volume thick slices) on
    /// `thick`; a thick voxel takes the instance that covers at least half of its sub-slices.
    pub fn collapse_slices(self, k: usize, thick: Grid) -> Scene {
        if k == 1 {
            return Scene {
                grid: thick,
                ..self
            };
        }
        let plane = thick.shape[1] * thick.shape[2];
        let mut out = Scene::new(thick, self.channels());
        for d in 0..thick.shape[0] {
            for j in 0..plane {
                let fine = |s: usize| (d * k + s) * plane + j;
                for (c, channel) in out.image.iter_mut().enumerate() {
                    let sum: f32 = (0..k).map(|s| self.image[c][fine(s)]).sum();
                    channel[d * plane + j] = sum / k as f32;
                }
                let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
                for s in 0..k {
                    let v = self.instances[fine(s)];
                    if v > 0 {
                        *counts.entry(v).or_insert(0) += 1;
                    }
                }
                if let Some((&id, &n)) = counts.iter().max_by_key(|(_, n)| **n)
                    && 2 * n >= k
                {
                    out.instances[d * plane + j] = id;
                }
            }
        }
        out
    }

    /// Map tissue units to whole HU with acquisition noise of `noise` units (σ).
    pub fn finish_ct(&mut self, noise: f64, rng: &mut ChaCha8Rng) {
        for channel in &mut self.image {
            for v in channel.iter_mut() {
                let u = *v as f64 + noise * gaussian(rng);
                *v = (CT_OFFSET_HU + CT_HU_PER_UNIT * u)
                    .round()
                    .clamp(-1024.0, 3071.0) as f32;
            }
        }
    }

    /// Map tissue units to positive MRI-like intensities `scale[c] · exp(0.4 u) · bias` and add
    /// Rician noise (magnitude of a complex signal with Gaussian noise) of `noise` units.
    pub fn finish_mri(
        &mut self,
        scales: &[f64],
        noise: f64,
        bias_field: Option<&[f32]>,
        rng: &mut ChaCha8Rng,
    ) {
        for (c, channel) in self.image.iter_mut().enumerate() {
            let sigma = noise * MRI_LOG_GAIN * scales[c];
            for (i, v) in channel.iter_mut().enumerate() {
                let bias = bias_field.map_or(1.0, |b| (b[i] as f64).exp());
                let signal = scales[c] * (MRI_LOG_GAIN * *v as f64).exp() * bias;
                let (re, im) = (signal + sigma * gaussian(rng), sigma * gaussian(rng));
                *v = (re * re + im * im).sqrt() as f32;
            }
        }
    }

    /// The finished image as a volume with `spacing`, and the instance mask.
    pub fn into_volumes(self, spacing: [f64; 3], id: &str) -> Result<(Volume, Volume), DataError> {
        let [d, h, w] = self.grid.shape;
        let channels = self.channels();
        let failed = |e: ndarray::ShapeError| DataError::Synthetic {
            case: id.to_string(),
            message: e.to_string(),
        };
        let image =
            Array4::from_shape_vec((channels, d, h, w), self.image.concat()).map_err(failed)?;
        let mask = Array4::from_shape_vec(
            (1, d, h, w),
            self.instances.iter().map(|&v| v as f32).collect(),
        )
        .map_err(failed)?;
        Ok((
            Volume::from_array(image, spacing),
            Volume::from_array(mask, spacing),
        ))
    }

    /// The finished scene as a labelled case.
    pub fn into_case(
        self,
        spacing: [f64; 3],
        id: &str,
        instance_classes: BTreeMap<u32, usize>,
    ) -> Result<Case, DataError> {
        let (image, instances) = self.into_volumes(spacing, id)?;
        Ok(Case {
            id: id.to_string(),
            image,
            instances,
            instance_classes,
        })
    }
}

/// The grid to render on for a target grid: thick slices (D spacing above the in-plane
/// spacing) are rendered as `k` thin sub-slices that [`Scene::collapse_slices`] averages.
pub(super) fn render_grid(shape: [usize; 3], spacing: [f64; 3]) -> (Grid, Grid, usize) {
    let thick = Grid::new(shape, spacing);
    let in_plane = spacing[1].min(spacing[2]);
    let k = ((spacing[0] / in_plane) - 1e-6).ceil().max(1.0) as usize;
    let fine_d = spacing[0] / k as f64;
    let fine = Grid {
        shape: [shape[0] * k, shape[1], shape[2]],
        spacing: [fine_d, spacing[1], spacing[2]],
        // Sub-slice s of slice d sits at d·sd + (s + ½)·sd/k − sd/2.
        origin: [fine_d / 2.0 - spacing[0] / 2.0, 0.0, 0.0],
    };
    (fine, thick, k)
}

/// Unit-variance low-pass noise: white noise blurred twice by a 3-voxel box along each axis.
pub(super) fn low_pass_noise(grid: &Grid, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut field: Vec<f32> = (0..grid.len()).map(|_| gaussian(rng) as f32).collect();
    let [_, nh, nw] = grid.shape;
    let strides = [nh * nw, nw, 1];
    let mut tmp = vec![0.0f32; field.len()];
    for _ in 0..2 {
        for (axis, &stride) in strides.iter().enumerate() {
            let n = grid.shape[axis];
            for (i, out) in tmp.iter_mut().enumerate() {
                let pos = (i / stride) % n;
                let mut sum = field[i];
                let mut count = 1.0;
                if pos > 0 {
                    sum += field[i - stride];
                    count += 1.0;
                }
                if pos + 1 < n {
                    sum += field[i + stride];
                    count += 1.0;
                }
                *out = sum / count;
            }
            std::mem::swap(&mut field, &mut tmp);
        }
    }
    let n = field.len() as f64;
    let mean = field.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (field
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
        .max(1e-12);
    field
        .iter()
        .map(|&v| ((v as f64 - mean) / std) as f32)
        .collect()
}

/// A smooth field: the sum of `waves` plane cosines with wavelengths of 0.7–2 volume sizes,
/// random directions and phases, scaled so that its peak amplitude is about `amplitude`.
pub(super) fn smooth_field(
    grid: &Grid,
    waves: usize,
    amplitude: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let size = grid.size_mm();
    let mean_size = (size[0] + size[1] + size[2]) / 3.0;
    let parts: Vec<([f64; 3], f64, f64)> = (0..waves)
        .map(|_| {
            let direction = crate::data::synthetic::random_direction(rng);
            let wavelength = between(rng, [0.7, 2.0]) * mean_size;
            let k = direction.map(|v| v * std::f64::consts::TAU / wavelength);
            let phase = between(rng, [0.0, std::f64::consts::TAU]);
            let weight = between(rng, [0.5, 1.0]);
            (k, phase, weight)
        })
        .collect();
    let total: f64 = parts.iter().map(|p| p.2).sum::<f64>().max(1e-12);
    let mut field = vec![0.0f32; grid.len()];
    grid.for_each(|i, p| {
        let v: f64 = parts
            .iter()
            .map(|(k, phase, weight)| {
                weight * (k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase).cos()
            })
            .sum();
        field[i] = (amplitude * v / total) as f32;
    });
    field
}
