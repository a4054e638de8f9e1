//! Resampling to a target spacing or shape (linear for images, nearest for label maps).
//!
//! # Convention (pixel-edge aligned, "grid mode")
//! Resampling an axis of `n_in` voxels to `n_out` voxels maps output voxel `o` to the input
//! position `x = (o + 0.5) · n_in / n_out − 0.5` (computed in f64), i.e. the outer edges of the
//! first and last voxels stay aligned. Positions are then **clamped** to `[0, n_in − 1]`:
//! - [`Interpolation::Linear`]: `i0 = floor(x)`, `i1 = min(i0 + 1, n_in − 1)`, weights
//!   `1 − (x − i0)` and `x − i0`; applied separably (three 1D passes, axes that shrink first).
//! - [`Interpolation::Nearest`]: `i = floor(x + 0.5)` (halves round up).
//!
//! This is exactly scipy `ndimage.zoom(x, order=1 or 0, grid_mode=True, mode='nearest')`, which is
//! what skimage's `resize(order, mode='edge', anti_aliasing=False)` calls and so what nnU-Net v1's
//! resampler (used by nnDetection) computes; at order 1 it is also torch
//! `interpolate(mode='trilinear', align_corners=False)`, whose source index is clamped at 0 and whose
//! upper neighbour is clamped at `n_in − 1` — the same as scipy's `mode='nearest'`. scipy's
//! default `mode='constant'` differs at the borders (it fades to 0 when upsampling); SimpleITK and
//! `align_corners=True` are other conventions. The unit tests compare against a fixture computed
//! with scipy 1.17 (`tests/fixtures/resample/`), to 1e-5: scipy interpolates in f64 in one 3D
//! pass, detlab in f32 in three 1D passes.
//!
//! # Output size and geometry
//! [`Volume::resample`] makes each axis `round(n · old_spacing / new_spacing)` voxels (at least 1;
//! numpy rounding, halves to even, as nnU-Net computes it), sets `spacing` to the requested target
//! (nnU-Net's convention; the true grid spacing `old · n_in / n_out` differs from it by less than
//! half a voxel over the whole extent) and sets the affine to the exact grid mapping
//! `A · [diag(z) | (z − 1)/2]` with `z = n_in / n_out` per axis, so world coordinates stay right.
//! [`Volume::resample_to_shape`] sets `spacing` to the true grid spacing.

use super::{Affine, Volume, VolumeError};
use ndarray::{Array3, Array4, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Interpolation order: cubic spline (order 3) or linear (order 1) for images, nearest (order 0)
/// for labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Interpolation {
    /// Order 1 (trilinear), for images.
    #[default]
    Linear,
    /// Order 0 (nearest neighbour), for label and instance maps.
    Nearest,
    /// Order 3 (cubic B-spline, scipy/skimage semantics), for images; nnDetection's choice.
    Cubic,
}

impl Interpolation {
    /// Parse `"cubic"`/`"3"`, `"linear"`/`"1"` or `"nearest"`/`"0"`.
    pub fn from_name(name: &str) -> Result<Interpolation, VolumeError> {
        match name.to_ascii_lowercase().as_str() {
            "linear" | "1" | "trilinear" => Ok(Interpolation::Linear),
            "nearest" | "0" => Ok(Interpolation::Nearest),
            "cubic" | "3" | "spline" => Ok(Interpolation::Cubic),
            other => Err(VolumeError::InvalidArgument(format!(
                "unknown interpolation '{other}'; use \"cubic\" or \"linear\" (images) or \"nearest\" (label maps)"
            ))),
        }
    }

    /// The spline order (0, 1 or 3).
    pub fn order(self) -> u8 {
        match self {
            Interpolation::Nearest => 0,
            Interpolation::Linear => 1,
            Interpolation::Cubic => 3,
        }
    }
}

/// numpy's `round` (halves to even) of a non-negative value, as nnU-Net computes new shapes.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The shape `[D, H, W]` after resampling `shape` from `spacing` to `target_spacing`.
///
/// Each axis becomes `round((old / new) · n)` with numpy rounding (halves to even), at least 1.
pub fn resampled_shape(
    shape: [usize; 3],
    spacing: [f64; 3],
    target_spacing: [f64; 3],
) -> [usize; 3] {
    let mut out = [1; 3];
    for a in 0..3 {
        out[a] =
            (round_half_even((spacing[a] / target_spacing[a]) * shape[a] as f64) as usize).max(1);
    }
    out
}

/// The input position of output voxel `o` (grid mode), clamped to `[0, n_in - 1]` (mode 'nearest').
#[inline]
fn source_position(o: usize, zoom: f64, n_in: usize) -> f64 {
    let x = (o as f64 + 0.5) * zoom - 0.5;
    x.clamp(0.0, (n_in - 1) as f64)
}

/// Per output index: the two input indices and their weights (linear, grid mode, clamped).
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let zoom = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let x = source_position(o, zoom, n_in);
            let i0 = x.floor() as usize;
            let t = x - i0 as f64;
            ((i0), (i0 + 1).min(n_in - 1), (1.0 - t) as f32, t as f32)
        })
        .collect()
}

/// Per output index: the nearest input index (grid mode, clamped, halves round up as scipy).
fn nearest_indices(n_in: usize, n_out: usize) -> Vec<usize> {
    let zoom = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| ((source_position(o, zoom, n_in) + 0.5).floor() as usize).min(n_in - 1))
        .collect()
}

/// Per output index of one axis: `(i0, i1, w0, w1)`.
type Taps = Vec<(usize, usize, f32, f32)>;

/// Linear pass along W on one `[h][w]` plane into `[h][w2]` (two taps gathered per voxel).
fn plane_w(input: &[f32], w: usize, taps: &Taps, out: &mut [f32]) {
    let w2 = taps.len();
    for (o_row, i_row) in out.chunks_exact_mut(w2).zip(input.chunks_exact(w)) {
        for (o, &(i0, i1, a, b)) in o_row.iter_mut().zip(taps) {
            *o = i_row[i0] * a + i_row[i1] * b;
        }
    }
}

/// Linear pass along H on one `[h][w]` plane into `[h2][w]` (whole rows blended: vectorises).
fn plane_h(input: &[f32], w: usize, taps: &Taps, out: &mut [f32]) {
    for (o_row, &(i0, i1, a, b)) in out.chunks_exact_mut(w).zip(taps) {
        let x = &input[i0 * w..(i0 + 1) * w];
        let y = &input[i1 * w..(i1 + 1) * w];
        for ((o, &p), &q) in o_row.iter_mut().zip(x).zip(y) {
            *o = p * a + q * b;
        }
    }
}

/// Resample every D slice in plane, `[d][h][w]` → `[d][h2][w2]`, in parallel over slices; the
/// two in-plane passes run back to back on one slice (the cheaper one first), so the
/// intermediate plane stays in cache.
fn in_plane(input: &[f32], dims: [usize; 3], h2: usize, w2: usize, out: &mut [f32]) {
    let [_, h, w] = dims;
    let tw = (w != w2).then(|| linear_taps(w, w2));
    let th = (h != h2).then(|| linear_taps(h, h2));
    out.par_chunks_mut(h2 * w2)
        .zip(input.par_chunks(h * w))
        .for_each_init(Vec::new, |scratch, (o, i)| match (&tw, &th) {
            (None, None) => o.copy_from_slice(i),
            (Some(tw), None) => plane_w(i, w, tw, o),
            (None, Some(th)) => plane_h(i, w, th, o),
            (Some(tw), Some(th)) => {
                if w2 * h <= h2 * w {
                    scratch.resize(h * w2, 0.0);
                    plane_w(i, w, tw, scratch);
                    plane_h(scratch, w2, th, o);
                } else {
                    scratch.resize(h2 * w, 0.0);
                    plane_h(i, w, th, scratch);
                    plane_w(scratch, w, tw, o);
                }
            }
        });
}

/// Linear pass along D, `[d][plane]` → `[d2][plane]`: whole planes blended, parallel over outputs.
fn depth_pass(input: &[f32], d: usize, plane: usize, d2: usize, out: &mut [f32]) {
    let taps = linear_taps(d, d2);
    out.par_chunks_mut(plane)
        .zip(taps.par_iter())
        .for_each(|(o, &(i0, i1, a, b))| {
            let x = &input[i0 * plane..(i0 + 1) * plane];
            let y = &input[i1 * plane..(i1 + 1) * plane];
            for ((o, &p), &q) in o.iter_mut().zip(x).zip(y) {
                *o = p * a + q * b;
            }
        });
}

/// Whether to run the D pass before the in-plane passes: when that makes the intermediate smaller.
fn depth_first(dims: [usize; 3], shape: [usize; 3]) -> bool {
    shape[0] * dims[1] * dims[2] < dims[0] * shape[1] * shape[2]
}

/// Resample one `[D, H, W]` array to `shape` with the module's grid-mode convention.
pub fn resample_array(
    data: ArrayView3<f32>,
    shape: [usize; 3],
    order: Interpolation,
) -> Array3<f32> {
    let mut out = vec![0.0f32; shape.iter().product()];
    resample_into(data, shape, order, &mut out);
    Array3::from_shape_vec(shape, out).expect("the output buffer has the output shape")
}

/// Resample `data` into `out` (C order, `shape`), the last pass writing there directly.
fn resample_into(data: ArrayView3<f32>, shape: [usize; 3], order: Interpolation, out: &mut [f32]) {
    let dims = [data.shape()[0], data.shape()[1], data.shape()[2]];
    if dims.contains(&0) || shape.contains(&0) {
        out.fill(0.0);
        return;
    }
    let standard = data.as_standard_layout();
    let input = standard
        .as_slice()
        .expect("a standard-layout array is contiguous");
    match order {
        Interpolation::Cubic => {
            let zoomed = super::spline::zoom_cubic(data, shape);
            // skimage's resize clips to the input's range (`clip=True`): cubic splines overshoot.
            let (low, high) = input
                .par_iter()
                .fold(
                    || (f32::INFINITY, f32::NEG_INFINITY),
                    |(l, h), &v| (l.min(v), h.max(v)),
                )
                .reduce(
                    || (f32::INFINITY, f32::NEG_INFINITY),
                    |a, b| (a.0.min(b.0), a.1.max(b.1)),
                );
            let zoomed = zoomed
                .as_slice()
                .expect("zoom_cubic returns a standard-layout array");
            out.par_iter_mut()
                .zip(zoomed.par_iter())
                .for_each(|(o, &v)| *o = v.clamp(low, high));
        }
        Interpolation::Nearest => {
            let idx: Vec<Vec<usize>> = (0..3).map(|a| nearest_indices(dims[a], shape[a])).collect();
            let [_, h, w] = dims;
            out.par_chunks_mut(shape[1] * shape[2])
                .zip(idx[0].par_iter())
                .for_each(|(o_slice, &z)| {
                    let i_slice = &input[z * h * w..(z + 1) * h * w];
                    for (o_row, &y) in o_slice.chunks_exact_mut(shape[2]).zip(&idx[1]) {
                        let i_row = &i_slice[y * w..(y + 1) * w];
                        for (o, &x) in o_row.iter_mut().zip(&idx[2]) {
                            *o = i_row[x];
                        }
                    }
                });
        }
        Interpolation::Linear => {
            let ([d, h, w], [d2, h2, w2]) = (dims, shape);
            match (d != d2, (h, w) != (h2, w2)) {
                (false, false) => out.copy_from_slice(input),
                (false, true) => in_plane(input, dims, h2, w2, out),
                (true, false) => depth_pass(input, d, h * w, d2, out),
                (true, true) if depth_first(dims, shape) => {
                    let mut tmp = vec![0.0f32; d2 * h * w];
                    depth_pass(input, d, h * w, d2, &mut tmp);
                    in_plane(&tmp, [d2, h, w], h2, w2, out);
                }
                (true, true) => {
                    let mut tmp = vec![0.0f32; d * h2 * w2];
                    in_plane(input, dims, h2, w2, &mut tmp);
                    depth_pass(&tmp, d, h2 * w2, d2, out);
                }
            }
        }
    }
}

/// The affine of a grid resampled from `from` to `to` voxels per axis (`[D, H, W]` order).
pub fn resampled_affine(affine: &Affine, from: [usize; 3], to: [usize; 3]) -> Affine {
    // zoom per (i, j, k) = (W, H, D) axis
    let z = [
        from[2] as f64 / to[2] as f64,
        from[1] as f64 / to[1] as f64,
        from[0] as f64 / to[0] as f64,
    ];
    let mut out = *affine;
    for r in 0..3 {
        let mut t = affine[r][3];
        for c in 0..3 {
            out[r][c] = affine[r][c] * z[c];
            t += affine[r][c] * (z[c] - 1.0) / 2.0;
        }
        out[r][3] = t;
    }
    out
}

impl Volume {
    /// Resample every channel to `target_spacing` `[sd, sh, sw]` mm (linear for images, nearest for labels).
    pub fn resample(
        &self,
        target_spacing: [f64; 3],
        order: Interpolation,
    ) -> Result<Volume, VolumeError> {
        if target_spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: target spacing {target_spacing:?} must be finite and positive",
                self.describe()
            )));
        }
        self.check_spacing()?;
        let shape = resampled_shape(self.spatial_shape(), self.spacing, target_spacing);
        let mut out = self.resample_to_shape(shape, order)?;
        out.spacing = target_spacing;
        Ok(out)
    }

    /// Resample every channel to the spatial shape `[D, H, W]`; spacing becomes the true grid spacing.
    pub fn resample_to_shape(
        &self,
        shape: [usize; 3],
        order: Interpolation,
    ) -> Result<Volume, VolumeError> {
        if shape.contains(&0) {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: cannot resample to shape {shape:?}; every axis needs at least one voxel",
                self.describe()
            )));
        }
        let from = self.spatial_shape();
        if from.contains(&0) {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: cannot resample an empty volume of shape {from:?}",
                self.describe()
            )));
        }
        self.check_spacing()?;
        let c = self.channels();
        let n = shape
            .iter()
            .try_fold(c.max(1), |acc, &k| acc.checked_mul(k))
            .map(|total| total / c.max(1));
        let n = match n {
            Some(n)
                if n.checked_mul(c * 4)
                    .is_some_and(|bytes| bytes <= isize::MAX as usize) =>
            {
                n
            }
            _ => {
                return Err(VolumeError::InvalidArgument(format!(
                    "{}: resampling to shape {shape:?} would need more memory than can be addressed",
                    self.describe()
                )));
            }
        };
        let mut buffer = vec![0.0f32; c * n];
        for (ch, out) in buffer.chunks_exact_mut(n).enumerate() {
            resample_into(self.data.index_axis(Axis(0), ch), shape, order, out);
        }
        let data = Array4::from_shape_vec((c, shape[0], shape[1], shape[2]), buffer)
            .expect("the output buffer has the output shape");
        let spacing = [0, 1, 2].map(|a| self.spacing[a] * from[a] as f64 / shape[a] as f64);
        Ok(Volume {
            data,
            spacing,
            affine: resampled_affine(&self.affine, from, shape),
            source: self.source.clone(),
        })
    }

    fn check_spacing(&self) -> Result<(), VolumeError> {
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: spacing {:?} must be finite and positive",
                self.describe(),
                self.spacing
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// scipy's 1D `zoom(order=1, grid_mode=True, mode='nearest')` written out directly.
    fn zoom1d_reference(x: &[f64], n_out: usize) -> Vec<f64> {
        let n = x.len();
        (0..n_out)
            .map(|o| {
                let p =
                    ((o as f64 + 0.5) * n as f64 / n_out as f64 - 0.5).clamp(0.0, (n - 1) as f64);
                let i = p.floor() as usize;
                let t = p - i as f64;
                x[i] * (1.0 - t) + x[(i + 1).min(n - 1)] * t
            })
            .collect()
    }

    #[test]
    fn output_shape_uses_numpy_rounding() {
        assert_eq!(
            resampled_shape([300, 512, 512], [2.5, 0.7, 0.7], [1.0, 1.0, 1.0]),
            [750, 358, 358]
        );
        // 5 · 1 / 2 = 2.5 rounds to even (2), 7 · 1 / 2 = 3.5 rounds to 4.
        assert_eq!(
            resampled_shape([5, 7, 1], [1.0, 1.0, 1.0], [2.0, 2.0, 9.0]),
            [2, 4, 1]
        );
    }

    #[test]
    fn linear_is_separable_and_matches_the_1d_reference_on_every_axis() {
        let data =
            Array3::from_shape_fn((4, 5, 6), |(d, h, w)| ((d * 7 + h * 3 + w * w) % 11) as f32);
        for (axis, n_out) in [(0usize, 9usize), (1, 2), (2, 13)] {
            let mut shape = [4, 5, 6];
            shape[axis] = n_out;
            let out = resample_array(data.view(), shape, Interpolation::Linear);
            for lane in 0..data.len() / data.shape()[axis] {
                let input: Vec<f64> = data
                    .lanes(Axis(axis))
                    .into_iter()
                    .nth(lane)
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let expected = zoom1d_reference(&input, n_out);
                let got: Vec<f32> = out
                    .lanes(Axis(axis))
                    .into_iter()
                    .nth(lane)
                    .unwrap()
                    .to_vec();
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (*g as f64 - e).abs() < 1e-5,
                        "axis {axis}: {got:?} vs {expected:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn identity_shape_is_a_copy_and_constants_stay_constant() {
        let data = Array3::from_shape_fn((3, 4, 5), |(d, h, w)| (d * 20 + h * 5 + w) as f32);
        assert_eq!(
            resample_array(data.view(), [3, 4, 5], Interpolation::Linear),
            data
        );
        assert_eq!(
            resample_array(data.view(), [3, 4, 5], Interpolation::Nearest),
            data
        );
        let c = Array3::from_elem((3, 4, 5), 7.5f32);
        let up = resample_array(c.view(), [7, 9, 2], Interpolation::Linear);
        assert!(up.iter().all(|&v| (v - 7.5).abs() < 1e-6));
    }

    #[test]
    fn nearest_rounds_half_positions_up_like_scipy() {
        // 4 → 2: positions 0.5 and 2.5 → indices 1 and 3.
        assert_eq!(nearest_indices(4, 2), vec![1, 3]);
        // 2 → 4: positions -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1).
        assert_eq!(nearest_indices(2, 4), vec![0, 0, 1, 1]);
        let labels = Array3::from_shape_fn((2, 2, 4), |(d, h, w)| (d * 8 + h * 4 + w) as f32);
        let out = resample_array(labels.view(), [4, 1, 2], Interpolation::Nearest);
        assert_eq!(
            out.iter().copied().collect::<Vec<_>>(),
            vec![5.0, 7.0, 5.0, 7.0, 13.0, 15.0, 13.0, 15.0]
        );
    }

    #[test]
    fn resample_keeps_world_positions_of_voxel_edges() {
        let mut vol = Volume::from_array(Array4::zeros((1, 10, 8, 6)), [2.5, 0.7, 0.7]);
        vol.affine[0][3] = -30.0;
        vol.affine[2][3] = 12.0;
        let out = vol
            .resample([1.0, 1.0, 1.0], Interpolation::Linear)
            .unwrap();
        assert_eq!(out.spatial_shape(), [25, 6, 4]);
        assert_eq!(out.spacing, [1.0, 1.0, 1.0]);
        // The outer edge of voxel 0 (index -0.5) maps to the same world point in both grids.
        let a = vol.voxel_to_world([-0.5, -0.5, -0.5]);
        let b = out.voxel_to_world([-0.5, -0.5, -0.5]);
        let e1 = vol.voxel_to_world([9.5, 7.5, 5.5]);
        let e2 = out.voxel_to_world([24.5, 5.5, 3.5]);
        for k in 0..3 {
            assert!(
                (a[k] - b[k]).abs() < 1e-9 && (e1[k] - e2[k]).abs() < 1e-9,
                "{a:?} {b:?} {e1:?} {e2:?}"
            );
        }
        assert!(
            vol.resample([0.0, 1.0, 1.0], Interpolation::Linear)
                .is_err()
        );
        assert!(
            vol.resample_to_shape([0, 1, 1], Interpolation::Linear)
                .is_err()
        );
        assert!(
            vol.resample_to_shape([usize::MAX / 2, 4, 4], Interpolation::Linear)
                .is_err()
        );
    }

    fn read_f32(path: &std::path::Path) -> Vec<f32> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn matches_the_scipy_fixture_for_linear_and_nearest() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resample");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap())
                .unwrap();
        let shape: Vec<usize> = serde_json::from_value(meta["input_shape"].clone()).unwrap();
        let shape = (shape[0], shape[1], shape[2]);
        let image = Array3::from_shape_vec(shape, read_f32(&dir.join("input.f32"))).unwrap();
        let labels = Array3::from_shape_vec(shape, read_f32(&dir.join("labels.f32"))).unwrap();
        let cases = meta["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 10);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let out: Vec<usize> = serde_json::from_value(case["output_shape"].clone()).unwrap();
            let out = [out[0], out[1], out[2]];
            let expected = read_f32(&dir.join(case["file"].as_str().unwrap()));
            let got = if case["order"] == 1 {
                resample_array(image.view(), out, Interpolation::Linear)
            } else {
                resample_array(labels.view(), out, Interpolation::Nearest)
            };
            assert_eq!(got.len(), expected.len(), "{name}");
            let worst = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (g - e).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{name}: max |detlab - scipy| = {worst}");
            if case["order"] == 0 {
                assert_eq!(
                    got.iter().copied().collect::<Vec<_>>(),
                    expected,
                    "{name}: nearest must be exact"
                );
            }
        }
    }

    #[test]
    fn the_pass_that_shrinks_runs_first_and_both_orders_agree() {
        // D grows, H and W shrink: the in-plane passes run before the D pass.
        assert!(!depth_first([300, 512, 512], [750, 358, 358]));
        assert!(depth_first([300, 512, 512], [100, 600, 600]));
        let data = Array3::from_shape_fn((6, 5, 7), |(d, h, w)| {
            ((d * 13 + h * 7 + w * 3) % 10) as f32
        });
        for shape in [[3, 9, 4], [12, 2, 3], [6, 5, 11], [2, 5, 7]] {
            let got = resample_array(data.view(), shape, Interpolation::Linear);
            // Reference: three separate 1D passes in D, H, W order.
            let mut cur = data.clone();
            for axis in 0..3 {
                let mut s = [cur.shape()[0], cur.shape()[1], cur.shape()[2]];
                s[axis] = shape[axis];
                cur = Array3::from_shape_fn((s[0], s[1], s[2]), |(a, b, c)| {
                    let mut idx = [a, b, c];
                    let lane: Vec<f64> = (0..cur.shape()[axis])
                        .map(|k| {
                            idx[axis] = k;
                            cur[idx] as f64
                        })
                        .collect();
                    zoom1d_reference(&lane, shape[axis])[[a, b, c][axis]] as f32
                });
            }
            for (g, e) in got.iter().zip(cur.iter()) {
                assert!((g - e).abs() < 1e-5, "{shape:?}");
            }
        }
    }
}
