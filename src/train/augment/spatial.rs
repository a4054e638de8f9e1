//! The spatial transforms: batchgenerators' `SpatialTransform` as nnDetection configures it
//! (rotation and isotropic scaling of a larger generator patch, centre-cropped to the patch),
//! mirroring, and detlab's optional rot90.
//!
//! # Rotation and scaling (`augment_spatial` of batchgenerators)
//! Output voxel `o` of a patch of size `P`, cut from a generator patch of size `G`, reads the
//! input at `x = s · ((o − (P − 1)/2) · M) + G/2 − 1/2` (row vector times matrix), where
//! `M = R_0(α_0) · R_1(α_1) · R_2(α_2)` rotates about spatial axes 0, 1, 2 (D, H, W: the
//! matrices of `create_matrix_rotation_{x,y,z}_3d`) and `s` is the drawn scale factor of the
//! coordinates: `s > 1` samples a larger region, so objects shrink by `1/s`. The image is
//! interpolated with the configured order (nnDetection: 3, cubic B-spline with scipy's prefilter,
//! [`crate::volume::spline`]), the instance mask with order 0; outside the generator patch both
//! read 0 (`mode="constant"`). Without a drawn rotation or scaling the generator patch is only
//! centre-cropped (start `(G − P) // 2`), exactly.
//!
//! # Boxes
//! After the spatial step the boxes are derived again from the transformed instance mask, as
//! nnDetection does (`instances_to_boxes_np` after the transforms), through the crate's one
//! mask-to-box function ([`mask_to_boxes`]) in the training box convention, so they enclose
//! exactly the voxels the network sees as the object. Instances that the sampler dropped by its
//! box rule stay dropped; instances that left the patch lose their box.
//!
//! # Generator patch
//! nnDetection's `get_patch_size`: the patch extent rotated by the largest angle about each axis
//! in turn (at most 90°), the per-axis maximum, divided by the smallest scale factor, truncated.

use std::collections::BTreeMap;

use ndarray::{Array4, Axis, s};
use rand::Rng;

use super::AugmentConfig;
use super::intensity::{below_or_above_one, uniform};
use crate::train::sampler::Patch;
use crate::volume::boxes::{Box3, BoxConvention, mask_to_boxes};
use crate::volume::resample::Interpolation;
use crate::volume::spline::{Boundary, SplineVolume, map_affine_nearest};

/// Voxels kept around the sampled region when only part of the generator patch is prefiltered:
/// the cubic prefilter's influence decays as `|√3 − 2|^k` (`≈ 7e-10` at 16), so coefficients
/// this deep inside the cut equal those of the whole patch to far below f32 precision.
const PREFILTER_MARGIN: i64 = 16;

/// One draw of the rotation and scaling of a patch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpatialDraw {
    /// Rotation angles about spatial axes 0, 1, 2 (D, H, W), in radians.
    pub angles: [f64; 3],
    /// Scale factor of the sampling coordinates (objects appear `1 / scale` times as large).
    pub scale: f64,
}

impl SpatialDraw {
    /// No rotation, no scaling.
    pub const IDENTITY: SpatialDraw = SpatialDraw {
        angles: [0.0; 3],
        scale: 1.0,
    };

    /// The linear part `A` and offset `b` of `x = A · o + b` for an output of `size` read from
    /// an input of `input` voxels (see the module documentation).
    pub fn affine(&self, size: [usize; 3], input: [usize; 3]) -> ([[f64; 3]; 3], [f64; 3]) {
        let m = rotation_matrix(self.angles);
        let mut matrix = [[0.0; 3]; 3];
        let mut offset = [0.0; 3];
        for j in 0..3 {
            offset[j] = input[j] as f64 / 2.0 - 0.5;
            for i in 0..3 {
                matrix[j][i] = self.scale * m[i][j];
                offset[j] -= (size[i] as f64 - 1.0) / 2.0 * self.scale * m[i][j];
            }
        }
        (matrix, offset)
    }
}

/// `R_0(a_0) · R_1(a_1) · R_2(a_2)` with batchgenerators' rotation matrices about axes 0, 1, 2.
pub fn rotation_matrix(angles: [f64; 3]) -> [[f64; 3]; 3] {
    let [(s0, c0), (s1, c1), (s2, c2)] = angles.map(f64::sin_cos);
    let r0 = [[1.0, 0.0, 0.0], [0.0, c0, -s0], [0.0, s0, c0]];
    let r1 = [[c1, 0.0, s1], [0.0, 1.0, 0.0], [-s1, 0.0, c1]];
    let r2 = [[c2, -s2, 0.0], [s2, c2, 0.0], [0.0, 0.0, 1.0]];
    multiply(multiply(r0, r1), r2)
}

fn multiply(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// The generator patch nnDetection cuts for `patch` under `config` (see the module docs): the
/// patch itself when no rotation or scaling can be drawn.
pub fn generator_patch(config: &AugmentConfig, patch: [usize; 3]) -> [usize; 3] {
    if !config.enabled || (config.rotation_probability == 0.0 && config.scale_probability == 0.0) {
        return patch;
    }
    let angle = if config.rotation_probability > 0.0 {
        config.rotation_degrees[0]
            .abs()
            .max(config.rotation_degrees[1].abs())
            .min(90.0)
            .to_radians()
    } else {
        0.0
    };
    let min_scale = if config.scale_probability > 0.0 {
        config.scale_range[0]
    } else {
        1.0
    };
    let extent = patch.map(|p| p as f64);
    let mut largest = extent;
    for axis in 0..3 {
        let mut angles = [0.0; 3];
        angles[axis] = angle;
        let m = rotation_matrix(angles);
        for j in 0..3 {
            let rotated: f64 = (0..3).map(|i| extent[i] * m[i][j]).sum();
            largest[j] = largest[j].max(rotated.abs());
        }
    }
    std::array::from_fn(|a| ((largest[a] / min_scale) as usize).max(patch[a]))
}

/// Draw the rotation and scaling of one patch (batchgenerators' order of draws); `None` when
/// neither is drawn (the generator patch is then only centre-cropped).
pub fn draw_spatial<R: Rng + ?Sized>(config: &AugmentConfig, rng: &mut R) -> Option<SpatialDraw> {
    let mut draw = SpatialDraw::IDENTITY;
    let mut modified = false;
    if config.rotation_probability > 0.0 && rng.random::<f64>() < config.rotation_probability {
        let range = config.rotation_degrees.map(f64::to_radians);
        draw.angles = [0, 1, 2].map(|_| uniform(rng, range));
        modified = true;
    }
    if config.scale_probability > 0.0 && rng.random::<f64>() < config.scale_probability {
        draw.scale = below_or_above_one(rng, config.scale_range);
        modified = true;
    }
    modified.then_some(draw)
}

/// Rotate and scale (or only centre-crop) `patch` to `size` (see the module documentation);
/// returns whether anything changed. The boxes are left as they were: derive them again with
/// [`boxes_from_instances`] once the geometry is final.
pub fn spatial_transform(
    patch: &mut Patch,
    draw: Option<&SpatialDraw>,
    size: [usize; 3],
    image_order: Interpolation,
) -> bool {
    let input = patch.size();
    if draw.is_none() && input == size {
        return false;
    }
    match draw {
        Some(draw) => {
            let (matrix, offset) = draw.affine(size, input);
            let (lo, hi) = sampled_region(&matrix, &offset, size, input);
            let cut = s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]];
            let offset: [f64; 3] = std::array::from_fn(|j| offset[j] - lo[j] as f64);
            let channels = patch.image.dim().0;
            let mut image = Array4::<f32>::zeros((channels, size[0], size[1], size[2]));
            for c in 0..channels {
                let source = patch.image.index_axis(Axis(0), c);
                let spline =
                    SplineVolume::new(source.slice(cut), image_order, Boundary::Constant(0.0))
                        .expect("the sampled region is not empty");
                image
                    .index_axis_mut(Axis(0), c)
                    .assign(&spline.map_affine(size, matrix, offset));
            }
            patch.image = image;
            if let Some(mask) = patch.instances.as_mut() {
                *mask = map_affine_nearest(mask.slice(cut), size, matrix, offset, 0);
            }
        }
        None => {
            let start: [usize; 3] = std::array::from_fn(|a| input[a].saturating_sub(size[a]) / 2);
            let range = |a: usize| start[a]..start[a] + size[a];
            let cut = s![range(0), range(1), range(2)];
            patch.image = patch
                .image
                .slice(s![.., range(0), range(1), range(2)])
                .to_owned();
            if let Some(mask) = patch.instances.as_mut() {
                *mask = mask.slice(cut).to_owned();
            }
        }
    }
    for a in 0..3 {
        patch.origin[a] += (input[a] as i64 - size[a] as i64).div_euclid(2);
    }
    true
}

/// The half-open index ranges of the input that the positions `matrix · o + offset` of an
/// output of `size` touch, widened by the prefilter margin and clipped to `input`.
fn sampled_region(
    matrix: &[[f64; 3]; 3],
    offset: &[f64; 3],
    size: [usize; 3],
    input: [usize; 3],
) -> ([usize; 3], [usize; 3]) {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    // An affine map reaches its extremes over a box at the box's corners.
    for corner in 0..8 {
        let o: [f64; 3] = std::array::from_fn(|i| {
            if corner >> i & 1 == 1 {
                size[i] as f64 - 1.0
            } else {
                0.0
            }
        });
        for j in 0..3 {
            let x = offset[j] + (0..3).map(|i| matrix[j][i] * o[i]).sum::<f64>();
            lo[j] = lo[j].min(x);
            hi[j] = hi[j].max(x);
        }
    }
    let clip = |v: i64, n: usize| v.clamp(0, n as i64) as usize;
    let start: [usize; 3] =
        std::array::from_fn(|j| clip(lo[j].floor() as i64 - PREFILTER_MARGIN, input[j]));
    let mut end: [usize; 3] =
        std::array::from_fn(|j| clip(hi[j].ceil() as i64 + 1 + PREFILTER_MARGIN, input[j]));
    // A region wholly outside the input still needs one voxel to build the (constant) spline.
    for j in 0..3 {
        if end[j] <= start[j] {
            end[j] = (start[j] + 1).min(input[j]);
        }
    }
    let start = std::array::from_fn(|j| start[j].min(end[j] - 1));
    (start, end)
}

/// Replace the boxes of `patch` by those of its instance mask in `convention`, for the
/// instances the sampler kept (in their order); instances no longer visible lose their box. A
/// patch without a mask keeps its boxes.
pub fn boxes_from_instances(patch: &mut Patch, convention: BoxConvention) {
    let Some(mask) = patch.instances.as_ref() else {
        return;
    };
    let labels = mask.mapv(f32::from);
    let found: BTreeMap<u32, Box3> =
        mask_to_boxes(&labels.view(), convention).expect("u16 ids are whole numbers");
    let mut boxes = Vec::new();
    let mut classes = Vec::new();
    let mut ids = Vec::new();
    for (k, id) in patch.instance_ids.iter().enumerate() {
        if let Some(b) = found.get(id) {
            boxes.push(*b);
            classes.push(patch.classes[k]);
            ids.push(*id);
        }
    }
    patch.boxes = boxes;
    patch.classes = classes;
    patch.instance_ids = ids;
}

/// Mirror `patch` along spatial axis `axis` (0 = D, 1 = H, 2 = W): image, mask and boxes
/// (a box `[b0, b1)` on an axis of extent `P` becomes `[P − b1, P − b0)`).
pub fn mirror(patch: &mut Patch, axis: usize) {
    let extent = patch.size()[axis] as f64;
    patch.image.invert_axis(Axis(axis + 1));
    patch.image = patch.image.as_standard_layout().into_owned();
    if let Some(mask) = patch.instances.as_mut() {
        mask.invert_axis(Axis(axis));
        *mask = mask.as_standard_layout().into_owned();
    }
    for b in &mut patch.boxes {
        let (lo, hi) = (b[axis], b[axis + 3]);
        b[axis] = extent - hi;
        b[axis + 3] = extent - lo;
    }
}

/// Rotate `patch` by `k` quarter turns in the plane of spatial axes `plane` (equal extents):
/// one turn moves voxel `(x_a, x_b)` to `(P − 1 − x_b, x_a)`.
pub fn rot90(patch: &mut Patch, plane: [usize; 2], k: usize) {
    let [a, b] = plane;
    let extent = patch.size()[a] as f64;
    debug_assert_eq!(patch.size()[a], patch.size()[b]);
    for _ in 0..k % 4 {
        let mut image = patch.image.view();
        image.swap_axes(a + 1, b + 1);
        image.invert_axis(Axis(a + 1));
        patch.image = image.as_standard_layout().into_owned();
        if let Some(mask) = patch.instances.as_mut() {
            let mut view = mask.view();
            view.swap_axes(a, b);
            view.invert_axis(Axis(a));
            *mask = view.as_standard_layout().into_owned();
        }
        for bx in &mut patch.boxes {
            let old: Box3 = *bx;
            bx[a] = extent - old[b + 3];
            bx[a + 3] = extent - old[b];
            bx[b] = old[a];
            bx[b + 3] = old[a + 3];
        }
    }
}
