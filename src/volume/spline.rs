//! Spline interpolation of 3D arrays with scipy.ndimage's semantics (orders 0, 1 and 3).
//!
//! # Use
//! Prefilter a `[D, H, W]` array once with [`SplineVolume::new`], then sample it anywhere:
//! [`SplineVolume::sample`] at one position, or [`SplineVolume::map_affine`] for
//! `position = matrix · voxel + offset` (rotation, scaling; scipy's `affine_transform`, parallel
//! over output slices). [`map_affine_nearest`] is the order-0 map for any voxel type (masks).
//! Positions are continuous voxel indices `[d, h, w]`: integer positions are voxel centres.
//! [`zoom_cubic`] is the separable special case on a regular grid (skimage's `resize`).
//!
//! # Semantics (scipy 1.17 `ndimage`, `ni_splines.c` / `ni_interpolation.c`)
//! - **Order 3** (cubic B-spline): the data are first turned into spline coefficients by the
//!   recursive filter of Unser et al. (pole `√3 − 2`, gain 6) along each axis, which makes the
//!   spline pass through every voxel value exactly. Then a value is `Σ c · β³` over the 4 × 4 × 4
//!   neighbouring coefficients.
//! - **Order 1**: trilinear on the raw data; **order 0**: the voxel at `floor(x + 0.5)` (halves
//!   round up). Neither prefilters.
//! - [`Boundary::Nearest`] (scipy `mode="nearest"`, numpy/skimage `"edge"`): the array continues
//!   with its edge values. For order 3, scipy pads every axis with [`EDGE_PADDING`] copies of the
//!   edge voxel before prefiltering (reflect initialisation of the filter) and does **not** clamp
//!   positions: between the edge voxel centre and half a voxel beyond it the cubic spline of the
//!   padded data still varies slightly, as in scipy. Tap indices past the padding are clamped.
//! - [`Boundary::Constant`] (scipy `mode="constant"`, batchgenerators' `border_mode_data`): any
//!   position outside `[0, n − 1]` on some axis reads the constant; inside, the filter and the
//!   taps mirror the data about the edge voxels (scipy's `mirror` initialisation).
//!
//! Coefficients are stored as f32; the filter runs in f64 on blocks of lanes and evaluation
//! accumulates in f64, so results agree with scipy (f64 throughout) to a few f32 ulps of the
//! data's magnitude.
//!
//! Non-finite positions give NaN (order ≥ 1) or an edge voxel (order 0, boundary nearest); the
//! constant boundary gives the constant for them.

use super::VolumeError;
use super::resample::Interpolation;
use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

/// How positions outside the array are read (scipy.ndimage's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Boundary {
    /// scipy `mode="nearest"` = skimage/numpy `"edge"`: the edge voxels continue outwards.
    #[default]
    Nearest,
    /// scipy `mode="constant"` with this `cval`: positions outside `[0, n − 1]` read it.
    Constant(f32),
}

/// Edge copies scipy adds on every side before the order-3 prefilter in mode "nearest".
pub const EDGE_PADDING: usize = 12;

/// The cubic B-spline filter pole `√3 − 2` (scipy's value).
const POLE: f64 = -0.267_949_192_431_122_7;

/// Beyond this many samples the filter's boundary sums change nothing in f64 (`|z|^40 ≈ 1e-23`).
const HORIZON: usize = 40;

/// Lanes filtered together when each lane is a row in memory (one cache line of f32 input,
/// vectorisable f64 recursion).
const LANES: usize = 16;

/// Lanes filtered together when neighbouring lanes are contiguous in memory: a block of
/// `len × 128` f64 stays in L2 for the patch sizes of training and resampling.
const CONTIGUOUS_LANES: usize = 128;

/// The number of taps per axis for an order (0, 1 or 3).
fn taps_of(order: Interpolation) -> usize {
    match order {
        Interpolation::Nearest => 1,
        Interpolation::Linear => 2,
        Interpolation::Cubic => 4,
    }
}

/// Cubic B-spline prefilter of `width` interleaved signals of `n` samples each (sample `i` of
/// lane `l` at `c[i * width + l]`), in place, with scipy's boundary initialisation for `boundary`.
///
/// `Nearest` uses scipy's "reflect" initialisation (the caller pads with edge copies first, see
/// [`EDGE_PADDING`]); `Constant` uses "mirror". A signal of one sample is left as is, as in scipy.
pub fn prefilter_interleaved(c: &mut [f64], n: usize, width: usize, boundary: Boundary) {
    assert_eq!(c.len(), n * width, "prefilter: buffer of {n} × {width}");
    if n <= 1 || width == 0 {
        return;
    }
    let z = POLE;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|v| *v *= gain);
    let row = |i: usize| i * width..(i + 1) * width;

    // Causal initialisation of c[0] (ni_splines.c `_init_causal_reflect` / `_mirror`), truncated
    // where the powers of z vanish in f64.
    let mut sum = vec![0.0f64; width];
    match boundary {
        Boundary::Nearest => {
            let z_n = z.powi(n as i32);
            for l in 0..width {
                sum[l] = c[l] + z_n * c[(n - 1) * width + l];
            }
            let mut z_i = z;
            for i in 1..n.min(HORIZON) {
                for l in 0..width {
                    sum[l] += z_i * (c[i * width + l] + z_n * c[(n - 1 - i) * width + l]);
                }
                z_i *= z;
            }
            let factor = z / (1.0 - z_n * z_n);
            for l in 0..width {
                c[l] += sum[l] * factor;
            }
        }
        Boundary::Constant(_) => {
            let z_n_1 = z.powi(n as i32 - 1);
            for l in 0..width {
                sum[l] = c[l] + z_n_1 * c[(n - 1) * width + l];
            }
            let mut z_i = z;
            for i in 1..(n - 1).min(HORIZON) {
                for l in 0..width {
                    sum[l] += z_i * (c[i * width + l] + z_n_1 * c[(n - 1 - i) * width + l]);
                }
                z_i *= z;
            }
            let divisor = 1.0 - z_n_1 * z_n_1;
            for l in 0..width {
                c[l] = sum[l] / divisor;
            }
        }
    }
    for i in 1..n {
        let (before, rest) = c.split_at_mut(i * width);
        let previous = &before[row(i - 1)];
        for (v, p) in rest[..width].iter_mut().zip(previous) {
            *v += z * p;
        }
    }
    // Anticausal initialisation of c[n - 1], then the backward pass.
    match boundary {
        Boundary::Nearest => {
            for v in &mut c[row(n - 1)] {
                *v *= z / (z - 1.0);
            }
        }
        Boundary::Constant(_) => {
            for l in 0..width {
                let last = (n - 1) * width + l;
                c[last] = (z * c[last - width] + c[last]) * z / (z * z - 1.0);
            }
        }
    }
    for i in (0..n - 1).rev() {
        let (before, after) = c.split_at_mut((i + 1) * width);
        let next = &after[..width];
        for (v, q) in before[i * width..].iter_mut().zip(next) {
            *v = z * (q - *v);
        }
    }
}

/// scipy's interpolation weights at `x` for an order; returns the first tap index (may be
/// outside the array) and the weights (the first `order + 1` are used).
fn weights_at(x: f64, order: Interpolation) -> (i64, [f64; 4]) {
    match order {
        Interpolation::Nearest => (floor(x + 0.5) as i64, [1.0, 0.0, 0.0, 0.0]),
        Interpolation::Linear => {
            let f = floor(x);
            let t = x - f;
            (f as i64, [1.0 - t, t, 0.0, 0.0])
        }
        Interpolation::Cubic => {
            let f = floor(x);
            let y = x - f;
            let z = 1.0 - y;
            let w1 = (y * y * (y - 2.0) * 3.0 + 4.0) / 6.0;
            let w2 = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0;
            let w0 = z * z * z / 6.0;
            (f as i64 - 1, [w0, w1, w2, 1.0 - w0 - w1 - w2])
        }
    }
}

/// `x.floor()` without a call into libm: the x86-64 baseline has no rounding instruction, and
/// this runs three times per interpolated voxel. Exact for |x| < 2⁶³; NaN stays NaN.
#[inline]
fn floor(x: f64) -> f64 {
    let truncated = x as i64 as f64;
    if x.is_nan() {
        x
    } else if truncated > x {
        truncated - 1.0
    } else {
        truncated
    }
}

/// A tap index mapped into `[0, len)`: clamped (nearest) or mirrored about the edge voxels
/// (constant mode's spline boundary, scipy's `map_coordinate(…, MIRROR)`).
fn map_index(index: i64, len: usize, boundary: Boundary) -> usize {
    let n = len as i64;
    if (0..n).contains(&index) {
        return index as usize;
    }
    match boundary {
        Boundary::Nearest => index.clamp(0, n - 1) as usize,
        Boundary::Constant(_) => {
            if n <= 1 {
                return 0;
            }
            let period = 2 * n - 2;
            let mut i = index.rem_euclid(period);
            if i >= n {
                i = period - i;
            }
            i as usize
        }
    }
}

/// The taps of one axis at one position: indices into the coefficients and their weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    index: [usize; 4],
    weight: [f64; 4],
}

impl Tap {
    fn at(position: f64, order: Interpolation, len: usize, boundary: Boundary) -> Tap {
        let (start, weight) = weights_at(position, order);
        let mut index = [0; 4];
        for (k, slot) in index.iter_mut().enumerate().take(taps_of(order)) {
            *slot = map_index(start.saturating_add(k as i64), len, boundary);
        }
        Tap { index, weight }
    }
}

/// A 3D array prefiltered for spline interpolation: build once, then sample at any position.
#[derive(Debug, Clone)]
pub struct SplineVolume {
    coefficients: Array3<f32>,
    shape: [usize; 3],
    padding: usize,
    order: Interpolation,
    boundary: Boundary,
}

impl SplineVolume {
    /// Prefilter `data` `[D, H, W]` for interpolation of `order` with `boundary` (scipy semantics).
    pub fn new(
        data: ArrayView3<f32>,
        order: Interpolation,
        boundary: Boundary,
    ) -> Result<SplineVolume, VolumeError> {
        let shape = [data.shape()[0], data.shape()[1], data.shape()[2]];
        if shape.contains(&0) {
            return Err(VolumeError::InvalidArgument(format!(
                "cannot interpolate an empty array of shape {shape:?}"
            )));
        }
        let padding = match (order, boundary) {
            (Interpolation::Cubic, Boundary::Nearest) => EDGE_PADDING,
            _ => 0,
        };
        let coefficients = if order == Interpolation::Cubic {
            let mut current = pad_edge(data, padding);
            for axis in 0..3 {
                let n = current.shape()[axis];
                lane_pass_in_place(&mut current, axis, |lanes, width, out| {
                    prefilter_interleaved(lanes, n, width, boundary);
                    out.copy_from_slice(lanes);
                });
            }
            current
        } else {
            // Standard layout, so that interior samples index the slice directly.
            data.as_standard_layout().into_owned()
        };
        Ok(SplineVolume {
            coefficients,
            shape,
            padding,
            order,
            boundary,
        })
    }

    /// The shape `[D, H, W]` of the interpolated array.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The interpolation order.
    pub fn order(&self) -> Interpolation {
        self.order
    }

    /// The boundary handling.
    pub fn boundary(&self) -> Boundary {
        self.boundary
    }

    /// The interpolated value at `position` `[d, h, w]` (voxel indices, continuous).
    pub fn sample(&self, position: [f64; 3]) -> f32 {
        let mut taps = [Tap {
            index: [0; 4],
            weight: [0.0; 4],
        }; 3];
        for axis in 0..3 {
            if let Boundary::Constant(cval) = self.boundary {
                let inside =
                    position[axis] >= 0.0 && position[axis] <= (self.shape[axis] - 1) as f64;
                if !inside {
                    return cval;
                }
            }
        }
        let shifted = position.map(|x| x + self.padding as f64);
        if let Some(value) = self.sample_inside(shifted) {
            return value;
        }
        for axis in 0..3 {
            taps[axis] = Tap::at(
                shifted[axis],
                self.order,
                self.coefficients.shape()[axis],
                self.boundary,
            );
        }
        let k = taps_of(self.order);
        let c = &self.coefficients;
        let mut total = 0.0f64;
        for i in 0..k {
            let plane = c.index_axis(Axis(0), taps[0].index[i]);
            let mut in_plane = 0.0f64;
            for j in 0..k {
                let row = plane.row(taps[1].index[j]);
                let mut in_row = 0.0f64;
                for l in 0..k {
                    in_row += taps[2].weight[l] * row[taps[2].index[l]] as f64;
                }
                in_plane += taps[1].weight[j] * in_row;
            }
            total += taps[0].weight[i] * in_plane;
        }
        total as f32
    }

    /// [`Self::sample`] where every tap lies inside the coefficients (no boundary rule applies):
    /// direct offsets into the contiguous coefficients, the same taps as the general path summed
    /// in another order (equal to f64 rounding). `None` near the edges (or for a non-standard
    /// layout); `position` already includes the padding.
    #[inline]
    fn sample_inside(&self, position: [f64; 3]) -> Option<f32> {
        let c = self.coefficients.as_slice()?;
        let (n0, n1, n2) = self.coefficients.dim();
        let k = taps_of(self.order);
        let (start0, weight0) = weights_at(position[0], self.order);
        let (start1, weight1) = weights_at(position[1], self.order);
        let (start2, weight2) = weights_at(position[2], self.order);
        let fits = |start: i64, n: usize| start >= 0 && start + k as i64 <= n as i64;
        if !(fits(start0, n0) && fits(start1, n1) && fits(start2, n2)) {
            return None;
        }
        let (stride0, stride1) = (n1 * n2, n2);
        let base = start0 as usize * stride0 + start1 as usize * stride1 + start2 as usize;
        let value = match self.order {
            Interpolation::Nearest => return Some(c[base]),
            Interpolation::Linear => {
                let mut total = 0.0f64;
                for i in 0..2 {
                    let mut in_plane = 0.0f64;
                    for j in 0..2 {
                        let row = &c[base + i * stride0 + j * stride1..][..2];
                        let in_row = weight2[0] * row[0] as f64 + weight2[1] * row[1] as f64;
                        in_plane += weight1[j] * in_row;
                    }
                    total += weight0[i] * in_plane;
                }
                total
            }
            Interpolation::Cubic => {
                // Σ_l w2_l · Σ_ij (w0_i · w1_j) · c_ijl: the four W taps accumulate as one
                // vector, so the 64 taps take 16 vector multiply-adds.
                let mut along_w = [0.0f64; 4];
                for i in 0..4 {
                    for j in 0..4 {
                        let weight = weight0[i] * weight1[j];
                        let row = &c[base + i * stride0 + j * stride1..][..4];
                        for l in 0..4 {
                            along_w[l] += weight * row[l] as f64;
                        }
                    }
                }
                (0..4).map(|l| weight2[l] * along_w[l]).sum()
            }
        };
        Some(value as f32)
    }

    /// An array of `shape` sampled at `matrix · [d, h, w] + offset` (scipy's `affine_transform`
    /// with a 3 × 3 matrix): rotation and scaling about any centre. Parallel over output slices.
    pub fn map_affine(
        &self,
        shape: [usize; 3],
        matrix: [[f64; 3]; 3],
        offset: [f64; 3],
    ) -> Array3<f32> {
        let mut out = Array3::<f32>::zeros(shape);
        for_each_affine_row(&mut out, matrix, offset, |row, position| {
            for (w, v) in row.iter_mut().enumerate() {
                *v = self.sample(position(w));
            }
        });
        out
    }
}

/// Call `fill(row, position)` for every output row `[d, h, ..]` of `out`, where `position(w)` is
/// `matrix · [d, h, w] + offset` (summed in the same order for every voxel). Parallel over `d`.
fn for_each_affine_row<T: Send + Sync>(
    out: &mut Array3<T>,
    matrix: [[f64; 3]; 3],
    offset: [f64; 3],
    fill: impl Fn(&mut [T], &dyn Fn(usize) -> [f64; 3]) + Sync,
) {
    let width = out.shape()[2];
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(d, mut slice)| {
            let slice = slice.as_slice_mut().expect("a standard-layout output");
            for (h, row) in slice.chunks_mut(width.max(1)).enumerate() {
                let (d, h) = (d as f64, h as f64);
                let partial = [0, 1, 2].map(|r| matrix[r][0] * d + matrix[r][1] * h);
                let position = |w: usize| {
                    let w = w as f64;
                    [0, 1, 2].map(|r| partial[r] + matrix[r][2] * w + offset[r])
                };
                fill(row, &position);
            }
        });
}

/// Nearest-neighbour `affine_transform` of voxels of any type (scipy order 0 with a constant
/// boundary): the value at `floor(x + 0.5)` where `x = matrix · [d, h, w] + offset` lies
/// inside `[0, n − 1]` on every axis, `cval` elsewhere (and for non-finite positions). The same
/// values as a [`SplineVolume`] of order 0 with `Boundary::Constant(cval)`, without converting
/// an instance mask to f32 and back.
pub fn map_affine_nearest<T: Copy + Send + Sync>(
    data: ArrayView3<T>,
    shape: [usize; 3],
    matrix: [[f64; 3]; 3],
    offset: [f64; 3],
    cval: T,
) -> Array3<T> {
    let dims = [data.shape()[0], data.shape()[1], data.shape()[2]];
    let last = dims.map(|n| n as f64 - 1.0);
    let mut out = Array3::from_elem(shape, cval);
    for_each_affine_row(&mut out, matrix, offset, |row, position| {
        for (w, v) in row.iter_mut().enumerate() {
            let p = position(w);
            if (0..3).all(|a| p[a] >= 0.0 && p[a] <= last[a]) {
                let [i, j, k] = [0, 1, 2].map(|a| floor(p[a] + 0.5) as usize);
                *v = data[[i, j, k]];
            }
        }
    });
    out
}

/// `data` padded by `padding` copies of its edge voxels on every side (numpy `pad(mode="edge")`).
fn pad_edge(data: ArrayView3<f32>, padding: usize) -> Array3<f32> {
    if padding == 0 {
        // `to_owned` keeps a permuted view's memory order; the lane passes need C order.
        return data.as_standard_layout().into_owned();
    }
    let [d, h, w] = [data.shape()[0], data.shape()[1], data.shape()[2]];
    let clamp = |i: usize, n: usize| i.saturating_sub(padding).min(n - 1);
    Array3::from_shape_fn(
        (d + 2 * padding, h + 2 * padding, w + 2 * padding),
        |(a, b, c)| data[[clamp(a, d), clamp(b, h), clamp(c, w)]],
    )
}

/// One separable pass along `axis`: every lane of `n` input samples is gathered (as f64,
/// interleaved in blocks of lanes, with `padding` edge copies on both ends), handed to
/// `f(lanes, width, out)`, which fills `m` output samples per lane; the result replaces the axis.
fn lane_pass(
    input: ArrayView3<f32>,
    axis: usize,
    m: usize,
    padding: usize,
    f: impl Fn(&mut [f64], usize, &mut [f64]) + Sync,
) -> Array3<f32> {
    let input = input.as_standard_layout();
    let data = input.as_slice().expect("standard layout is contiguous");
    let dims = [input.shape()[0], input.shape()[1], input.shape()[2]];
    let mut shape = dims;
    shape[axis] = m;
    let mut out = Array3::<f32>::zeros(shape);
    lane_blocks(&mut out, Some(data), dims[axis], axis, padding, f);
    out
}

/// [`lane_pass`] in place for a filter that keeps the length of the lanes (the prefilter):
/// no second volume is allocated.
fn lane_pass_in_place(
    volume: &mut Array3<f32>,
    axis: usize,
    f: impl Fn(&mut [f64], usize, &mut [f64]) + Sync,
) {
    let n = volume.shape()[axis];
    lane_blocks(volume, None, n, axis, 0, f);
}

/// The blocks of [`lane_pass`]: lanes of `n` samples along `axis` are read from `source` (a
/// C-order volume of `out`'s shape with `n` along `axis`), or from `out` itself when `None`,
/// and their `m` (the extent of `out` along `axis`) results are written to `out` (standard
/// layout).
///
/// Lanes along D or H have their neighbours contiguous in memory, so a block is
/// [`CONTIGUOUS_LANES`] wide and each of its rows is one slice copy; lanes along W are rows
/// themselves, gathered [`LANES`] at a time by a small transpose. Parallel over blocks.
fn lane_blocks(
    out: &mut Array3<f32>,
    source: Option<&[f32]>,
    n: usize,
    axis: usize,
    padding: usize,
    f: impl Fn(&mut [f64], usize, &mut [f64]) + Sync,
) {
    let shape = [out.shape()[0], out.shape()[1], out.shape()[2]];
    let m = shape[axis];
    debug_assert!(source.is_some() || (m == n && padding == 0));
    let len = n + 2 * padding;
    // Edge copies of the first and last sample of every lane of a gathered block.
    let pad = |scratch: &mut [f64], width: usize| {
        for k in 0..padding {
            scratch.copy_within(padding * width..(padding + 1) * width, k * width);
            let last = (padding + n - 1) * width;
            scratch.copy_within(last..last + width, (padding + n + k) * width);
        }
    };
    if axis < 2 {
        // [outer][n][inner] with the lanes along the contiguous `inner`.
        let inner: usize = shape[axis + 1..].iter().product();
        let outer: usize = shape[..axis].iter().product();
        let mut out3 = out
            .view_mut()
            .into_shape_with_order((outer, m, inner))
            .expect("a standard-layout output");
        out3.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(o, mut plane)| {
                plane
                    .axis_chunks_iter_mut(Axis(1), CONTIGUOUS_LANES)
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(chunk, mut block)| {
                        let x0 = chunk * CONTIGUOUS_LANES;
                        let width = block.ncols();
                        let mut scratch = vec![0.0f64; len * width];
                        for k in 0..n {
                            let row = &mut scratch[(k + padding) * width..][..width];
                            let mut gather = |lane: &[f32]| {
                                for (slot, v) in row.iter_mut().zip(lane) {
                                    *slot = *v as f64;
                                }
                            };
                            match source {
                                Some(data) => gather(&data[(o * n + k) * inner + x0..][..width]),
                                None => gather(
                                    block
                                        .row(k)
                                        .as_slice()
                                        .expect("rows of a chunk are contiguous"),
                                ),
                            }
                        }
                        pad(&mut scratch, width);
                        let mut result = vec![0.0f64; m * width];
                        f(&mut scratch, width, &mut result);
                        for (k, mut row) in block.rows_mut().into_iter().enumerate() {
                            let row = row.as_slice_mut().expect("rows of a chunk are contiguous");
                            for (slot, v) in row.iter_mut().zip(&result[k * width..][..width]) {
                                *slot = *v as f32;
                            }
                        }
                    });
            });
    } else {
        // Every lane is a row of W samples; blocks of LANES rows are transposed in and out.
        let rows = shape[1];
        let output = out.as_slice_mut().expect("a standard-layout output");
        output
            .par_chunks_mut(rows * m)
            .enumerate()
            .for_each(|(d, slab)| {
                let mut scratch = Vec::new();
                let mut result = Vec::new();
                let mut r0 = 0;
                while r0 < rows {
                    let width = LANES.min(rows - r0);
                    scratch.clear();
                    scratch.resize(len * width, 0.0);
                    for r in 0..width {
                        let lane = match source {
                            Some(data) => &data[(d * rows + r0 + r) * n..][..n],
                            None => &slab[(r0 + r) * n..][..n],
                        };
                        for (k, v) in lane.iter().enumerate() {
                            scratch[(k + padding) * width + r] = *v as f64;
                        }
                    }
                    pad(&mut scratch, width);
                    result.clear();
                    result.resize(m * width, 0.0);
                    f(&mut scratch, width, &mut result);
                    for r in 0..width {
                        let target = &mut slab[(r0 + r) * m..][..m];
                        for (k, slot) in target.iter_mut().enumerate() {
                            *slot = result[k * width + r] as f32;
                        }
                    }
                    r0 += width;
                }
            });
    }
}

/// Cubic resampling of `data` to `shape` on scipy's pixel-edge aligned grid with edge
/// continuation: exactly `scipy.ndimage.zoom(data, order=3, mode="nearest", grid_mode=True)`,
/// which is skimage's `resize(order=3, mode="edge", anti_aliasing=False)` before its clipping.
///
/// Separable: along each axis whose size changes (the shrinking ones first), every lane is padded
/// with [`EDGE_PADDING`] edge copies, prefiltered, and evaluated at `(o + 0.5) · n / m − 0.5`.
pub fn zoom_cubic(data: ArrayView3<f32>, shape: [usize; 3]) -> Array3<f32> {
    let from = [data.shape()[0], data.shape()[1], data.shape()[2]];
    assert!(
        !from.contains(&0) && !shape.contains(&0),
        "zoom_cubic: shapes {from:?} → {shape:?} must be non-empty"
    );
    // Shrinking axes first keeps the intermediates small.
    let mut axes = [0usize, 1, 2];
    axes.sort_by(|&a, &b| {
        let ra = shape[a] as f64 / from[a] as f64;
        let rb = shape[b] as f64 / from[b] as f64;
        ra.total_cmp(&rb)
    });
    let mut current = data.to_owned();
    for axis in axes {
        let n = from[axis];
        let m = shape[axis];
        if n == m {
            // Positions are the knots themselves, where the spline equals the data.
            continue;
        }
        let len = n + 2 * EDGE_PADDING;
        let zoom = n as f64 / m as f64;
        let taps: Vec<Tap> = (0..m)
            .map(|o| {
                let x = (o as f64 + 0.5) * zoom - 0.5 + EDGE_PADDING as f64;
                Tap::at(x, Interpolation::Cubic, len, Boundary::Nearest)
            })
            .collect();
        current = lane_pass(
            current.view(),
            axis,
            m,
            EDGE_PADDING,
            |lanes, width, out| {
                if len > 1 {
                    prefilter_interleaved(lanes, len, width, Boundary::Nearest);
                }
                for (k, tap) in taps.iter().enumerate() {
                    let row = &mut out[k * width..(k + 1) * width];
                    for (j, &index) in tap.index.iter().enumerate() {
                        let weight = tap.weight[j];
                        let source = &lanes[index * width..(index + 1) * width];
                        for (o, v) in row.iter_mut().zip(source) {
                            *o += weight * v;
                        }
                    }
                }
            },
        );
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic test array with structure on every axis.
    fn ramp(shape: [usize; 3]) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(d, h, w)| {
            ((d * 7 + h * 3 + w * w) % 11) as f32 - 2.5 * (d as f32)
        })
    }

    #[test]
    fn cubic_spline_passes_through_every_voxel_for_both_boundaries() {
        let data = ramp([5, 6, 7]);
        for boundary in [Boundary::Nearest, Boundary::Constant(-9.0)] {
            let spline = SplineVolume::new(data.view(), Interpolation::Cubic, boundary).unwrap();
            for ((d, h, w), v) in data.indexed_iter() {
                let got = spline.sample([d as f64, h as f64, w as f64]);
                assert!(
                    (got - v).abs() < 1e-4,
                    "{boundary:?} at {d},{h},{w}: {got} vs {v}"
                );
            }
        }
    }

    #[test]
    fn constants_stay_constant_and_the_constant_mode_reads_cval_outside() {
        let data = Array3::from_elem([4, 5, 6], 3.25f32);
        for order in [
            Interpolation::Nearest,
            Interpolation::Linear,
            Interpolation::Cubic,
        ] {
            let near = SplineVolume::new(data.view(), order, Boundary::Nearest).unwrap();
            let cons = SplineVolume::new(data.view(), order, Boundary::Constant(-1.0)).unwrap();
            for p in [
                [0.3, 1.7, 4.9],
                [-3.0, 2.0, 20.0],
                [3.0, 4.0, 5.0],
                [1.5, 2.5, 0.0],
            ] {
                assert!((near.sample(p) - 3.25).abs() < 1e-5, "{order:?} {p:?}");
            }
            assert!((cons.sample([1.5, 2.5, 0.0]) - 3.25).abs() < 1e-5);
            assert_eq!(cons.sample([-0.01, 2.0, 2.0]), -1.0);
            assert_eq!(cons.sample([1.0, 2.0, 5.01]), -1.0);
        }
    }

    /// Values of scipy 1.17.1 (numpy 2.4.6) for `ramp([4, 5, 6])` in f64:
    /// `map_coordinates(a, P.T, order=k, mode=m, cval=-1.0)`.
    #[test]
    fn sampling_matches_scipy_map_coordinates() {
        let data = ramp([4, 5, 6]);
        let points = [
            [0.0, 0.0, 0.0],
            [1.3, 2.6, 3.1],
            [-0.4, 4.2, 5.7],
            [2.5, -1.5, 0.25],
            [3.0, 4.0, 5.0],
            [0.75, 0.5, 2.999],
        ];
        #[rustfmt::skip]
        let expected: [(Interpolation, Boundary, [f64; 6]); 6] = [
            (Interpolation::Cubic, Boundary::Nearest,
             [0.0, -0.005_072_653_325_612_4, 5.455_836_565_467_711_5, -1.832_632_704_762_386_3, -4.5, 5.541_884_787_158_438_5]),
            (Interpolation::Cubic, Boundary::Constant(-1.0),
             [0.0, -0.056_092_977_517_973_326, -1.0, -1.0, -4.5, 5.286_699_001_143_021]),
            (Interpolation::Linear, Boundary::Nearest,
             [0.0, 1.02, 4.0, -0.875, -4.5, 4.246_375]),
            (Interpolation::Linear, Boundary::Constant(-1.0),
             [0.0, 1.02, -1.0, -1.0, -4.5, 4.246_375]),
            (Interpolation::Nearest, Boundary::Nearest,
             [0.0, 0.5, 4.0, 2.5, -4.5, 5.5]),
            (Interpolation::Nearest, Boundary::Constant(-1.0),
             [0.0, 0.5, -1.0, -1.0, -4.5, 5.5]),
        ];
        for (order, boundary, values) in expected {
            let spline = SplineVolume::new(data.view(), order, boundary).unwrap();
            for (p, e) in points.iter().zip(values) {
                let got = spline.sample(*p) as f64;
                assert!(
                    (got - e).abs() < 2e-5,
                    "{order:?} {boundary:?} at {p:?}: {got} vs scipy {e}"
                );
            }
        }
    }

    /// `scipy.ndimage.zoom(ramp([4, 5, 6]), (7/4, 3/5, 9/6), order=3, mode="nearest",
    /// grid_mode=True)` at a few voxels (scipy 1.17.1, f64).
    #[test]
    fn zoom_cubic_matches_scipy_zoom() {
        let data = ramp([4, 5, 6]);
        let out = zoom_cubic(data.view(), [7, 3, 9]);
        assert_eq!(out.shape(), &[7, 3, 9]);
        #[rustfmt::skip]
        let expected = [
            ([0, 0, 0], 0.093_622_165_767_700_95),
            ([6, 2, 8], -6.764_304_432_903_148),
            ([3, 1, 4], -1.176_159_597_771_891_7),
            ([1, 0, 7], 3.664_452_751_843_776_4),
            ([5, 2, 2], -3.523_429_801_719_619),
        ];
        for (index, e) in expected {
            let got = out[index] as f64;
            assert!((got - e).abs() < 2e-5, "at {index:?}: {got} vs scipy {e}");
        }
        // The grid sampler and the point sampler agree.
        let spline =
            SplineVolume::new(data.view(), Interpolation::Cubic, Boundary::Nearest).unwrap();
        for ((d, h, w), v) in out.indexed_iter() {
            let p = [(d, 7, 4), (h, 3, 5), (w, 9, 6)]
                .map(|(o, m, n)| (o as f64 + 0.5) * n as f64 / m as f64 - 0.5);
            assert!((spline.sample(p) - v).abs() < 1e-4, "{d},{h},{w}");
        }
    }

    /// The typed nearest-neighbour map equals the order-0 spline with a constant boundary,
    /// for a rotation and scaling that reads outside the array, and under a non-standard view.
    #[test]
    fn map_affine_nearest_equals_the_order_0_spline() {
        let data = ramp([9, 8, 7]);
        let matrix = [[0.9, 0.3, -0.1], [-0.2, 1.1, 0.25], [0.15, -0.3, 0.8]];
        let offset = [-1.3, 0.7, 2.2];
        let spline = SplineVolume::new(
            data.view(),
            Interpolation::Nearest,
            Boundary::Constant(-7.0),
        )
        .unwrap();
        let expected = spline.map_affine([10, 6, 9], matrix, offset);
        let got = map_affine_nearest(data.view(), [10, 6, 9], matrix, offset, -7.0);
        assert_eq!(got, expected);
        assert!(got.iter().any(|&v| v == -7.0) && got.iter().any(|&v| v != -7.0));
        let reversed = data.view().reversed_axes();
        let spline =
            SplineVolume::new(reversed, Interpolation::Nearest, Boundary::Constant(0.0)).unwrap();
        let got = map_affine_nearest(reversed, [5, 6, 7], matrix, offset, 0.0);
        assert_eq!(got, spline.map_affine([5, 6, 7], matrix, offset));
    }

    /// Lanes along every axis go through the same filter: prefiltering a transposed copy and
    /// transposing back changes nothing (the contiguous and the transposed gathers agree).
    #[test]
    fn prefilter_is_the_same_along_every_axis() {
        let data = ramp([20, 131, 17]);
        let direct =
            SplineVolume::new(data.view(), Interpolation::Cubic, Boundary::Constant(0.0)).unwrap();
        let permuted = data.view().permuted_axes([2, 0, 1]);
        let other =
            SplineVolume::new(permuted, Interpolation::Cubic, Boundary::Constant(0.0)).unwrap();
        let back = other.coefficients.view().permuted_axes([1, 2, 0]);
        for (a, b) in direct.coefficients.iter().zip(back.iter()) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn map_affine_with_the_identity_reproduces_the_data() {
        let data = ramp([3, 4, 5]);
        let spline =
            SplineVolume::new(data.view(), Interpolation::Cubic, Boundary::Constant(0.0)).unwrap();
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let out = spline.map_affine([3, 4, 5], identity, [0.0; 3]);
        for (a, b) in out.iter().zip(data.iter()) {
            assert!((a - b).abs() < 1e-4);
        }
        assert!(
            SplineVolume::new(
                Array3::<f32>::zeros([0, 2, 2]).view(),
                Interpolation::Cubic,
                Boundary::Nearest
            )
            .is_err()
        );
    }
}
