//! Axis-aligned 3D boxes `[d0, h0, w0, d1, h1, w1]` in continuous voxel coordinates.
//!
//! A box's volume is `prod(max - min)` (no `+1`), as in nnDetection's evaluator. IoU is
//! computed in f64 without an epsilon, so two degenerate boxes give NaN, exactly like numpy.

use super::{Affine, Volume, VolumeError};
use ndarray::{ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A box `[d0, h0, w0, d1, h1, w1]`; its volume is `prod(max - min)`.
pub type Box3 = [f64; 6];

/// Volume of a box: `prod(max - min)`, zero for inverted axes.
pub fn box_volume(b: &Box3) -> f64 {
    (0..3).map(|a| (b[a + 3] - b[a]).max(0.0)).product()
}

/// Intersection volume of two boxes.
pub fn intersection(a: &Box3, b: &Box3) -> f64 {
    (0..3)
        .map(|ax| (a[ax + 3].min(b[ax + 3]) - a[ax].max(b[ax])).max(0.0))
        .product()
}

/// Intersection over union of two boxes, in f64 with no epsilon (nnDetection's `box_iou_np`).
pub fn iou(a: &Box3, b: &Box3) -> f64 {
    let inter = intersection(a, b);
    inter / (box_volume(a) + box_volume(b) - inter)
}

/// Generalised IoU: `IoU - (V_enclose - V_union) / V_enclose`, in [-1, 1].
pub fn giou(a: &Box3, b: &Box3) -> f64 {
    let inter = intersection(a, b);
    let union = box_volume(a) + box_volume(b) - inter;
    let enclose: f64 = (0..3)
        .map(|ax| (a[ax + 3].max(b[ax + 3]) - a[ax].min(b[ax])).max(0.0))
        .product();
    inter / union - (enclose - union) / enclose
}

/// Pairwise IoU matrix, row-major `[a.len() × b.len()]`; rows are computed in parallel.
pub fn iou_matrix(a: &[Box3], b: &[Box3]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() * b.len()];
    if b.is_empty() {
        return out;
    }
    // Small problems are faster on one thread than through rayon's scheduler.
    if a.len() * b.len() < 4096 {
        for (row, ba) in out.chunks_mut(b.len()).zip(a) {
            for (o, bb) in row.iter_mut().zip(b) {
                *o = iou(ba, bb);
            }
        }
    } else {
        out.par_chunks_mut(b.len())
            .zip(a.par_iter())
            .for_each(|(row, ba)| {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o = iou(ba, bb);
                }
            });
    }
    out
}

/// Centre `[cd, ch, cw]` of a box.
pub fn center(b: &Box3) -> [f64; 3] {
    [
        (b[0] + b[3]) / 2.0,
        (b[1] + b[4]) / 2.0,
        (b[2] + b[5]) / 2.0,
    ]
}

/// Extent `[sd, sh, sw]` of a box.
pub fn extent(b: &Box3) -> [f64; 3] {
    [b[3] - b[0], b[4] - b[1], b[5] - b[2]]
}

/// Greedy non-maximum suppression; returns kept indices in descending-score order.
///
/// A box is suppressed when its IoU with a kept, higher-scoring box is **greater** than
/// `iou_threshold` (torchvision / nnDetection semantics). Ties in score keep input order.
pub fn nms(boxes: &[Box3], scores: &[f64], iou_threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[rank + 1..] {
            if !suppressed[j] && iou(&boxes[i], &boxes[j]) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Class-wise NMS: boxes of different classes never suppress each other.
/// Returns kept indices sorted by descending score.
pub fn batched_nms(
    boxes: &[Box3],
    scores: &[f64],
    classes: &[usize],
    iou_threshold: f64,
) -> Vec<usize> {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &c) in classes.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut keep = Vec::new();
    for idx in by_class.values() {
        let b: Vec<Box3> = idx.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        keep.extend(nms(&b, &s, iou_threshold).into_iter().map(|k| idx[k]));
    }
    keep.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    keep
}

/// Check that a box has six finite coordinates with `min <= max` on every axis.
pub fn validate(b: &[f64]) -> Result<Box3, String> {
    if b.len() != 6 {
        return Err(format!(
            "a box needs 6 numbers [d0, h0, w0, d1, h1, w1], got {}",
            b.len()
        ));
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("box {b:?} has a non-finite coordinate"));
    }
    for ax in 0..3 {
        if b[ax] > b[ax + 3] {
            return Err(format!(
                "box {b:?} has min > max on axis {} ({} > {})",
                ["d", "h", "w"][ax],
                b[ax],
                b[ax + 3]
            ));
        }
    }
    Ok([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// How a box is derived from an instance's voxel bounds `min..=max` on each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BoxConvention {
    /// `[min, max + 1)`: the box covers exactly the instance's voxels (detlab's default).
    #[default]
    HalfOpen,
    /// nnDetection's `(min − 1, max + 1)`: one voxel larger on the low side (a single voxel gives 2×2×2).
    NnDetection,
}

impl BoxConvention {
    /// The half-open box `[min, max + 1)` covering the same voxels as `b` (given in this convention).
    pub fn to_half_open(self, b: &Box3) -> Box3 {
        match self {
            BoxConvention::HalfOpen => *b,
            // A predicted box can be thinner than the one voxel this convention adds on the
            // low side; its half-open form then starts at its end instead of after it (an
            // empty box, never an inverted one that evaluation would reject).
            BoxConvention::NnDetection => [
                (b[0] + 1.0).min(b[3]),
                (b[1] + 1.0).min(b[4]),
                (b[2] + 1.0).min(b[5]),
                b[3],
                b[4],
                b[5],
            ],
        }
    }

    /// The box in this convention covering the same voxels as the half-open box `b`.
    pub fn from_half_open(self, b: &Box3) -> Box3 {
        match self {
            BoxConvention::HalfOpen => *b,
            BoxConvention::NnDetection => [b[0] - 1.0, b[1] - 1.0, b[2] - 1.0, b[3], b[4], b[5]],
        }
    }

    /// `b` mirrored on the axes flagged in `flips` of a grid of `size` voxels: the box of the
    /// mirrored voxels (half-open `x → size − x`; nnDetection's `x → size − 1 − x`).
    pub fn flip(self, b: &Box3, flips: [bool; 3], size: [usize; 3]) -> Box3 {
        let mut o = self.to_half_open(b);
        let h = o;
        for a in 0..3 {
            if flips[a] {
                let s = size[a] as f64;
                o[a] = s - h[a + 3];
                o[a + 3] = s - h[a];
            }
        }
        self.from_half_open(&o)
    }

    /// Parse `"half_open"` or `"nndetection"`.
    pub fn from_name(name: &str) -> Result<BoxConvention, VolumeError> {
        match name.to_ascii_lowercase().replace('-', "_").as_str() {
            "half_open" | "halfopen" => Ok(BoxConvention::HalfOpen),
            "nndetection" | "nndet" => Ok(BoxConvention::NnDetection),
            other => Err(VolumeError::InvalidArgument(format!(
                "unknown box convention '{other}'; use \"half_open\" or \"nndetection\""
            ))),
        }
    }
}

/// One instance of a mask: its box (in the chosen convention) and its voxel count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The box `[d0, h0, w0, d1, h1, w1]`.
    pub bbox: Box3,
    /// Number of voxels carrying the instance id.
    pub voxels: u64,
}

/// Label ids up to this value are accumulated in a dense table, larger ones in a hash map.
const DENSE_LABEL_LIMIT: u32 = 1 << 16;

#[derive(Clone, Copy)]
struct Bounds {
    min: [usize; 3],
    max: [usize; 3],
    count: u64,
}

impl Bounds {
    fn new(p: [usize; 3]) -> Bounds {
        Bounds {
            min: p,
            max: p,
            count: 1,
        }
    }
    fn add(&mut self, p: [usize; 3]) {
        for a in 0..3 {
            self.min[a] = self.min[a].min(p[a]);
            self.max[a] = self.max[a].max(p[a]);
        }
        self.count += 1;
    }
    fn merge(&mut self, o: &Bounds) {
        for a in 0..3 {
            self.min[a] = self.min[a].min(o.min[a]);
            self.max[a] = self.max[a].max(o.max[a]);
        }
        self.count += o.count;
    }
}

/// Per instance id (> 0): box and voxel count; values ≤ 0 are background (nnDetection marks
/// "outside the body" with −1). Errors on values that are not whole numbers.
pub fn mask_instances(
    mask: &ArrayView3<f32>,
    convention: BoxConvention,
) -> Result<BTreeMap<u32, InstanceInfo>, VolumeError> {
    mask_instances_named(mask, convention, "instance mask")
}

/// Per instance id (> 0) of an instance mask, its box `[d0, h0, w0, d1, h1, w1]` in `convention`.
pub fn mask_to_boxes(
    mask: &ArrayView3<f32>,
    convention: BoxConvention,
) -> Result<BTreeMap<u32, Box3>, VolumeError> {
    Ok(mask_instances(mask, convention)?
        .into_iter()
        .map(|(id, info)| (id, info.bbox))
        .collect())
}

fn mask_instances_named(
    mask: &ArrayView3<f32>,
    convention: BoxConvention,
    what: &str,
) -> Result<BTreeMap<u32, InstanceInfo>, VolumeError> {
    let d = mask.shape()[0];
    // Pass 1: validate the labels and find the largest id, in parallel over slices.
    let per_slice: Vec<(u64, Option<([usize; 2], f32)>, f32)> = (0..d)
        .into_par_iter()
        .map(|z| {
            let (mut bad, mut first, mut max) = (0u64, None, 0.0f32);
            for ((y, x), &v) in mask.index_axis(Axis(0), z).indexed_iter() {
                if !super::is_label_value(v) {
                    bad += 1;
                    first.get_or_insert(([y, x], v));
                } else if v > max {
                    max = v;
                }
            }
            (bad, first, max)
        })
        .collect();
    let bad: u64 = per_slice.iter().map(|p| p.0).sum();
    if bad > 0 {
        let (z, ([y, x], value)) = per_slice
            .iter()
            .enumerate()
            .find_map(|(z, p)| p.1.map(|f| (z, f)))
            .expect("a bad voxel was counted");
        return Err(VolumeError::NonIntegerLabel {
            what: what.to_string(),
            count: bad,
            first_index: [0, z, y, x],
            value,
        });
    }
    let max_label = per_slice.iter().map(|p| p.2).fold(0.0f32, f32::max) as u32;

    // Pass 2: accumulate bounds per id, per slice, then merge.
    let mut merged: BTreeMap<u32, Bounds> = BTreeMap::new();
    if max_label <= DENSE_LABEL_LIMIT {
        let table = (0..d)
            .into_par_iter()
            .fold(
                || vec![None::<Bounds>; max_label as usize + 1],
                |mut table, z| {
                    for ((y, x), &v) in mask.index_axis(Axis(0), z).indexed_iter() {
                        if v > 0.0 {
                            let p = [z, y, x];
                            match &mut table[v as usize] {
                                Some(b) => b.add(p),
                                slot => *slot = Some(Bounds::new(p)),
                            }
                        }
                    }
                    table
                },
            )
            .reduce(
                || vec![None; max_label as usize + 1],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        match (x.as_mut(), y) {
                            (Some(x), Some(y)) => x.merge(&y),
                            (None, y) => *x = y,
                            _ => {}
                        }
                    }
                    a
                },
            );
        for (id, b) in table.into_iter().enumerate() {
            if let Some(b) = b {
                merged.insert(id as u32, b);
            }
        }
    } else {
        let maps: Vec<std::collections::HashMap<u32, Bounds>> = (0..d)
            .into_par_iter()
            .map(|z| {
                let mut m = std::collections::HashMap::<u32, Bounds>::new();
                for ((y, x), &v) in mask.index_axis(Axis(0), z).indexed_iter() {
                    if v > 0.0 {
                        let p = [z, y, x];
                        m.entry(v as u32)
                            .and_modify(|b| b.add(p))
                            .or_insert_with(|| Bounds::new(p));
                    }
                }
                m
            })
            .collect();
        for m in maps {
            for (id, b) in m {
                merged.entry(id).and_modify(|x| x.merge(&b)).or_insert(b);
            }
        }
    }
    let low = match convention {
        BoxConvention::HalfOpen => 0.0,
        BoxConvention::NnDetection => -1.0,
    };
    Ok(merged
        .into_iter()
        .map(|(id, b)| {
            let bbox = [
                b.min[0] as f64 + low,
                b.min[1] as f64 + low,
                b.min[2] as f64 + low,
                b.max[0] as f64 + 1.0,
                b.max[1] as f64 + 1.0,
                b.max[2] as f64 + 1.0,
            ];
            (
                id,
                InstanceInfo {
                    bbox,
                    voxels: b.count,
                },
            )
        })
        .collect())
}

impl Volume {
    /// Boxes and voxel counts of the instances (ids > 0) of a one-channel instance map.
    pub fn instances(
        &self,
        convention: BoxConvention,
    ) -> Result<BTreeMap<u32, InstanceInfo>, VolumeError> {
        if self.channels() != 1 {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: an instance mask must have one channel, this one has {}",
                self.describe(),
                self.channels()
            )));
        }
        mask_instances_named(
            &self.data.index_axis(Axis(0), 0),
            convention,
            &self.describe(),
        )
    }

    /// Boxes `[d0, h0, w0, d1, h1, w1]` of the instances (ids > 0) of a one-channel instance map.
    pub fn instance_boxes(
        &self,
        convention: BoxConvention,
    ) -> Result<BTreeMap<u32, Box3>, VolumeError> {
        Ok(self
            .instances(convention)?
            .into_iter()
            .map(|(id, i)| (id, i.bbox))
            .collect())
    }
}

/// The 8 corners `[d, h, w]` of a box.
fn corners(b: &Box3) -> [[f64; 3]; 8] {
    let mut out = [[0.0; 3]; 8];
    for (k, c) in out.iter_mut().enumerate() {
        *c = [
            b[if k & 1 == 0 { 0 } else { 3 }],
            b[if k & 2 == 0 { 1 } else { 4 }],
            b[if k & 4 == 0 { 2 } else { 5 }],
        ];
    }
    out
}

fn enclosing(points: impl Iterator<Item = [f64; 3]>) -> Box3 {
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for p in points {
        for a in 0..3 {
            b[a] = b[a].min(p[a]);
            b[a + 3] = b[a + 3].max(p[a]);
        }
    }
    b
}

/// Voxel boxes `[d0, h0, w0, d1, h1, w1]` → world (RAS mm) boxes `[x0, y0, z0, x1, y1, z1]`.
///
/// Box coordinates are continuous voxel indices, mapped exactly like [`Volume::voxel_to_world`]
/// (integer index = voxel centre). The world box is the axis-aligned bounds of the 8 mapped
/// corners: exact for axis-aligned affines, an *enclosing* box for oblique ones.
pub fn boxes_to_world(boxes: &[Box3], affine: &Affine) -> Vec<Box3> {
    boxes
        .iter()
        .map(|b| {
            enclosing(corners(b).into_iter().map(|[d, h, w]| {
                let ijk = [w, h, d];
                let mut out = [0.0; 3];
                for (r, o) in out.iter_mut().enumerate() {
                    *o = affine[r][0] * ijk[0]
                        + affine[r][1] * ijk[1]
                        + affine[r][2] * ijk[2]
                        + affine[r][3];
                }
                out
            }))
        })
        .collect()
}

/// World (RAS mm) boxes `[x0, y0, z0, x1, y1, z1]` → voxel boxes `[d0, h0, w0, d1, h1, w1]`.
///
/// The inverse of [`boxes_to_world`]: the axis-aligned voxel bounds of the 8 corners mapped
/// through the inverse affine (enclosing for oblique affines). Errors on a singular affine.
pub fn boxes_from_world(boxes: &[Box3], affine: &Affine) -> Result<Vec<Box3>, VolumeError> {
    let inv = invert_affine(affine).ok_or_else(|| {
        VolumeError::InvalidArgument(format!(
            "boxes_from_world: the affine {affine:?} is not invertible"
        ))
    })?;
    Ok(boxes
        .iter()
        .map(|b| {
            // `corners` yields (x, y, z) here; map each to (i, j, k) = (w, h, d).
            enclosing(corners(b).into_iter().map(|p| {
                let mut ijk = [0.0; 3];
                for (r, o) in ijk.iter_mut().enumerate() {
                    *o = inv[r][0] * p[0] + inv[r][1] * p[1] + inv[r][2] * p[2] + inv[r][3];
                }
                [ijk[2], ijk[1], ijk[0]]
            }))
        })
        .collect())
}

/// Inverse of an affine's 3×3 part plus translation, or `None` when singular / non-finite.
pub fn invert_affine(a: &Affine) -> Option<Affine> {
    let det = super::det3(a);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let m = |r: usize, c: usize| a[r][c];
    let mut inv = [[0.0; 4]; 4];
    inv[0][0] = (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) / det;
    inv[0][1] = (m(0, 2) * m(2, 1) - m(0, 1) * m(2, 2)) / det;
    inv[0][2] = (m(0, 1) * m(1, 2) - m(0, 2) * m(1, 1)) / det;
    inv[1][0] = (m(1, 2) * m(2, 0) - m(1, 0) * m(2, 2)) / det;
    inv[1][1] = (m(0, 0) * m(2, 2) - m(0, 2) * m(2, 0)) / det;
    inv[1][2] = (m(0, 2) * m(1, 0) - m(0, 0) * m(1, 2)) / det;
    inv[2][0] = (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)) / det;
    inv[2][1] = (m(0, 1) * m(2, 0) - m(0, 0) * m(2, 1)) / det;
    inv[2][2] = (m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)) / det;
    for r in 0..3 {
        inv[r][3] = -(0..3).map(|c| inv[r][c] * a[c][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    Some(inv)
}

/// Scale voxel boxes from a grid with `old_spacing` to one with `new_spacing` (`[sd, sh, sw]`):
/// every coordinate is multiplied by `old / new` per axis (nnDetection's rule for restoring
/// predictions; exact for the grid-mode resampler when sizes are `n · old / new`).
pub fn scale_boxes(boxes: &[Box3], old_spacing: [f64; 3], new_spacing: [f64; 3]) -> Vec<Box3> {
    let f = [0, 1, 2].map(|a| old_spacing[a] / new_spacing[a]);
    boxes
        .iter()
        .map(|b| {
            [
                b[0] * f[0],
                b[1] * f[1],
                b[2] * f[2],
                b[3] * f[0],
                b[4] * f[1],
                b[5] * f[2],
            ]
        })
        .collect()
}

/// Shift voxel boxes by `offset` `[dd, dh, dw]` (e.g. `+crop start` to map a crop back).
pub fn shift_boxes(boxes: &[Box3], offset: [f64; 3]) -> Vec<Box3> {
    boxes
        .iter()
        .map(|b| {
            [
                b[0] + offset[0],
                b[1] + offset[1],
                b[2] + offset[2],
                b[3] + offset[0],
                b[4] + offset[1],
                b[5] + offset[2],
            ]
        })
        .collect()
}

/// Whether a box lies within a grid of shape `[D, H, W]` (`0 <= min` and `max <= shape`).
pub fn box_inside(b: &Box3, shape: [usize; 3]) -> bool {
    (0..3).all(|a| b[a] >= 0.0 && b[a + 3] <= shape[a] as f64 && b[a] <= b[a + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_thinner_than_a_voxel_never_inverts() {
        // A predicted nnDetection-convention box 0.4 voxels wide on W (seen near a border).
        let thin = [2.0, 3.0, 47.6, 6.0, 8.0, 48.0];
        let h = BoxConvention::NnDetection.to_half_open(&thin);
        assert_eq!(h, [3.0, 4.0, 48.0, 6.0, 8.0, 48.0]);
        let back = BoxConvention::NnDetection.from_half_open(&h);
        assert!((0..3).all(|a| back[a] <= back[a + 3]), "{back:?}");
        // Boxes of a voxel or more convert exactly, both ways.
        let b = [2.0, 3.0, 4.0, 6.0, 8.0, 9.0];
        let n = BoxConvention::NnDetection;
        assert_eq!(n.from_half_open(&n.to_half_open(&b)), b);
    }

    #[test]
    fn iou_of_half_overlapping_cubes() {
        let a = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let b = [1.0, 0.0, 0.0, 3.0, 2.0, 2.0];
        assert_eq!(intersection(&a, &b), 4.0);
        assert!((iou(&a, &b) - 4.0 / 12.0).abs() < 1e-15);
        assert_eq!(iou(&a, &a), 1.0);
    }

    #[test]
    fn giou_of_disjoint_boxes_is_negative() {
        let a = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let b = [2.0, 0.0, 0.0, 3.0, 1.0, 1.0];
        // union 2, enclosing 3 → GIoU = 0 - 1/3
        assert!((giou(&a, &b) + 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(giou(&a, &a), 1.0);
    }

    #[test]
    fn iou_matrix_matches_scalar_iou() {
        let a: Vec<Box3> = (0..70)
            .map(|i| [i as f64, 0.0, 0.0, i as f64 + 3.0, 2.0, 2.0])
            .collect();
        let b: Vec<Box3> = (0..80)
            .map(|i| [i as f64 * 0.5, 0.0, 0.0, i as f64 * 0.5 + 2.0, 2.0, 3.0])
            .collect();
        let m = iou_matrix(&a, &b);
        for (i, ba) in a.iter().enumerate() {
            for (j, bb) in b.iter().enumerate() {
                assert_eq!(m[i * b.len() + j], iou(ba, bb));
            }
        }
    }

    #[test]
    fn nms_suppresses_only_above_threshold_and_respects_classes() {
        let boxes = [
            [0.0, 0.0, 0.0, 10.0, 10.0, 10.0],
            [1.0, 0.0, 0.0, 11.0, 10.0, 10.0], // IoU 9/11 with box 0
            [50.0, 50.0, 50.0, 60.0, 60.0, 60.0],
        ];
        let scores = [0.9, 0.95, 0.5];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.9), vec![1, 0, 2]);
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 0], 0.5), vec![1, 0, 2]);
    }

    #[test]
    fn validate_names_the_problem() {
        assert!(validate(&[0.0; 5]).unwrap_err().contains("6 numbers"));
        assert!(
            validate(&[2.0, 0.0, 0.0, 1.0, 1.0, 1.0])
                .unwrap_err()
                .contains("min > max on axis d")
        );
        assert!(
            validate(&[0.0, 0.0, f64::NAN, 1.0, 1.0, 1.0])
                .unwrap_err()
                .contains("non-finite")
        );
    }

    use ndarray::{Array3, Array4, s};

    #[test]
    fn mask_to_boxes_half_open_and_nndetection() {
        let mut m = Array3::<f32>::zeros((6, 7, 8));
        m[[1, 2, 3]] = 1.0;
        m.slice_mut(s![2..5, 1..3, 4..8]).fill(2.0);
        m[[0, 0, 0]] = -1.0; // nnDetection's "outside" marker is background
        let half = mask_to_boxes(&m.view(), BoxConvention::HalfOpen).unwrap();
        assert_eq!(half.len(), 2);
        assert_eq!(half[&1], [1.0, 2.0, 3.0, 2.0, 3.0, 4.0]);
        assert_eq!(half[&2], [2.0, 1.0, 4.0, 5.0, 3.0, 8.0]);
        let nnd = mask_to_boxes(&m.view(), BoxConvention::NnDetection).unwrap();
        assert_eq!(nnd[&1], [0.0, 1.0, 2.0, 2.0, 3.0, 4.0]);
        let info = mask_instances(&m.view(), BoxConvention::HalfOpen).unwrap();
        assert_eq!(info[&1].voxels, 1);
        assert_eq!(info[&2].voxels, 3 * 2 * 4);
        assert!(half.values().all(|b| box_inside(b, [6, 7, 8])));
        // Conversions and mirroring agree with the boxes of the mirrored mask in both conventions.
        let mirrored = m.slice(s![..;-1, .., ..;-1]).to_owned();
        for convention in [BoxConvention::HalfOpen, BoxConvention::NnDetection] {
            let boxes = mask_to_boxes(&m.view(), convention).unwrap();
            let flipped = mask_to_boxes(&mirrored.view(), convention).unwrap();
            for (id, b) in &boxes {
                assert_eq!(convention.from_half_open(&convention.to_half_open(b)), *b);
                assert_eq!(convention.to_half_open(b), half[id]);
                let f = convention.flip(b, [true, false, true], [6, 7, 8]);
                assert_eq!(f, flipped[id], "{convention:?} instance {id}");
            }
        }
    }

    #[test]
    fn large_label_ids_use_the_sparse_path() {
        let mut m = Array3::<f32>::zeros((3, 3, 3));
        m[[0, 1, 2]] = 100_000.0;
        m[[2, 2, 2]] = 100_000.0;
        m[[1, 1, 1]] = 7.0;
        let b = mask_to_boxes(&m.view(), BoxConvention::HalfOpen).unwrap();
        assert_eq!(b[&100_000], [0.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
        assert_eq!(b[&7], [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn non_integer_labels_are_an_error_naming_the_file_and_voxel() {
        let mut m = Array4::<f32>::zeros((1, 4, 4, 4));
        m[[0, 2, 1, 3]] = 1.5;
        m[[0, 3, 0, 0]] = f32::NAN;
        let mut vol = Volume::from_array(m, [1.0; 3]);
        vol.source = vec!["labelsTr/case_7.nii.gz".into()];
        let err = vol
            .instance_boxes(BoxConvention::HalfOpen)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labelsTr/case_7.nii.gz")
                && err.contains("2 voxel(s)")
                && err.contains("[0, 2, 1, 3]"),
            "{err}"
        );
        assert!(vol.check_integer_labels().is_err());
    }

    #[test]
    fn world_boxes_round_trip_and_enclose_oblique_boxes() {
        let affine = [
            [0.0, 0.0, 2.0, 10.0],
            [0.0, -0.5, 0.0, 5.0],
            [1.5, 0.0, 0.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let b = [1.0, 2.0, 3.0, 4.0, 6.0, 9.0];
        let w = boxes_to_world(&[b], &affine);
        // x = 2·d + 10, y = −0.5·h + 5, z = 1.5·w − 3
        assert_eq!(w[0], [12.0, 2.0, 1.5, 18.0, 4.0, 10.5]);
        let back = boxes_from_world(&w, &affine).unwrap();
        for k in 0..6 {
            assert!((back[0][k] - b[k]).abs() < 1e-12);
        }
        let (s, c) = (0.5f64.sin(), 0.5f64.cos());
        let oblique = [
            [c, -s, 0.0, 0.0],
            [s, c, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let cube = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let wb = boxes_to_world(&[cube], &oblique)[0];
        // A rotated unit square's bounds are larger than the square: an enclosing box.
        assert!((wb[3] - wb[0] - (c + s)).abs() < 1e-12);
        let singular = [[0.0; 4]; 4];
        assert!(boxes_from_world(&[cube], &singular).is_err());
    }

    #[test]
    fn scaling_and_shifting_boxes() {
        let b = [2.0, 4.0, 6.0, 4.0, 8.0, 10.0];
        assert_eq!(
            scale_boxes(&[b], [2.5, 0.5, 1.0], [1.0, 1.0, 2.0])[0],
            [5.0, 2.0, 3.0, 10.0, 4.0, 5.0]
        );
        assert_eq!(
            shift_boxes(&[b], [1.0, -1.0, 0.5])[0],
            [3.0, 3.0, 6.5, 5.0, 7.0, 10.5]
        );
        assert_eq!(
            BoxConvention::from_name("nnDetection").unwrap(),
            BoxConvention::NnDetection
        );
    }
}
