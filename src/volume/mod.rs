//! Volumes: voxel data with spacing, affine and provenance.
//!
//! # Axis convention (stated once, used everywhere in detlab)
//! A [`Volume`] holds f32 data shaped `[C, D, H, W]` in C (row-major) order:
//! - `C` is the channel (modality) axis;
//! - `W` is the NIfTI **i** axis, the fastest-varying axis in the file;
//! - `H` is the NIfTI **j** axis and `D` the NIfTI **k** axis.
//!
//! So the file's own memory order is the C-order array `[k, j, i]`, which is also what
//! nibabel's array transposed `(2, 1, 0)` and SimpleITK's `GetArrayFromImage` give.
//! Spacing is `[sd, sh, sw]` in mm (`pixdim[3], pixdim[2], pixdim[1]`).
//! The affine is the NIfTI voxel-to-RAS-world matrix and acts on `(i, j, k, 1)`,
//! i.e. on `(w, h, d, 1)`; [`Volume::voxel_to_world`] takes `[d, h, w]` and does the swap.
//! Boxes are `[d0, h0, w0, d1, h1, w1]` in voxels (see [`boxes`]).
//!
//! # Files
//! [`read_nifti`], [`read_channels`] and [`write_nifti`] read and write NIfTI-1 (details in
//! [`nifti`]). **qform/sform precedence:** `sform_code > 0` → the sform; else `qform_code > 0` →
//! the qform; else `diag(pixdim)` with origin 0 (the NIfTI standard's method 1). The first two
//! are nibabel's `get_best_affine`; nibabel's fallback (x flipped, centred) is not used.
//! `scl_slope = 0` means no scaling. NIfTI-2 is rejected with a message naming the file.
//!
//! # Resampling
//! [`Volume::resample`] (to a spacing) and [`Volume::resample_to_shape`] use the pixel-edge
//! aligned ("grid mode") convention with clamped borders: output voxel `o` samples input
//! position `clamp((o + 0.5) · n_in / n_out − 0.5, 0, n_in − 1)`. Linear (images) equals scipy
//! `zoom(order=1, grid_mode=True, mode='nearest')` = torch `trilinear, align_corners=False` =
//! nnU-Net v1's order-1 resampler; nearest (labels) equals scipy `zoom(order=0, grid_mode=True,
//! mode='nearest')`, i.e. index `floor(x + 0.5)`. Sizes are `round(n · old / new)` (halves to
//! even). The affine is updated exactly; see [`resample`].
//!
//! # Non-finite values
//! Reading keeps NaN and ±Inf voxels as they are; [`Volume::check_finite`] reports them
//! (count and first index) and [`Volume::replace_non_finite`] cleans them. Intensity
//! normalisation refuses non-finite input rather than spreading NaN through a whole case.

pub mod boxes;
pub mod crop;
pub mod error;
pub mod nifti;
pub mod normalize;
pub mod ops;
pub mod resample;
pub mod spline;

pub use crop::CropInfo;
pub use error::VolumeError;
pub use nifti::{
    AffineSource, NiftiDtype, NiftiInfo, StoredType, WriteOptions, read_channels, read_nifti,
    read_nifti_header, write_nifti, write_nifti_with,
};
pub use normalize::{
    CtNormalization, IntensityStats, NormalizationScheme, foreground_samples, intensity_stats,
    normalize, normalize_ct, normalize_ct_in_place, normalize_ct_with, normalize_in_place,
    normalize_zscore, percentile, pooled_intensity_stats, threshold_samples,
};
pub use resample::{Interpolation, resample_array, resampled_shape};

use ndarray::Array4;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A 4×4 voxel-to-world (RAS, mm) affine, row-major, acting on `(i, j, k, 1)` = `(w, h, d, 1)`.
pub type Affine = [[f64; 4]; 4];

/// Check that an affine is finite with an invertible 3×3 part; returns a message otherwise.
pub(crate) fn check_affine(a: &Affine) -> Result<(), String> {
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return Err("the affine holds a non-finite value".into());
    }
    let det = det3(a);
    if det == 0.0 || !det.is_finite() {
        return Err("the affine's 3×3 part is singular (determinant 0)".into());
    }
    Ok(())
}

/// Determinant of the upper-left 3×3 block.
pub(crate) fn det3(a: &Affine) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// A multi-channel 3D image: data `[C, D, H, W]`, spacing `[sd, sh, sw]` mm, affine and source.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxel data `[C, D, H, W]` in f32, C-order; W is the NIfTI i axis.
    pub data: Array4<f32>,
    /// Voxel spacing `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// Voxel-to-RAS-world affine acting on `(w, h, d, 1)` (NIfTI's `(i, j, k, 1)`).
    pub affine: Affine,
    /// The file(s) this volume was read from; empty for computed volumes.
    pub source: Vec<PathBuf>,
}

/// Summary statistics over all voxels of a volume (f64 accumulation, population std).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Smallest voxel value.
    pub min: f64,
    /// Largest voxel value.
    pub max: f64,
    /// Mean voxel value.
    pub mean: f64,
    /// Population standard deviation (numpy's `std`, `ddof = 0`).
    pub std: f64,
}

impl Volume {
    /// A volume from `[C, D, H, W]` data and spacing `[sd, sh, sw]`; affine `diag(sw, sh, sd)`, origin 0.
    pub fn from_array(data: Array4<f32>, spacing: [f64; 3]) -> Volume {
        let data = if data.is_standard_layout() {
            data
        } else {
            data.as_standard_layout().into_owned()
        };
        let mut affine = [[0.0; 4]; 4];
        affine[0][0] = spacing[2];
        affine[1][1] = spacing[1];
        affine[2][2] = spacing[0];
        affine[3][3] = 1.0;
        Volume {
            data,
            spacing,
            affine,
            source: Vec::new(),
        }
    }

    /// A short description for messages: the first source file, or "computed volume".
    pub fn describe(&self) -> String {
        match self.source.as_slice() {
            [] => "computed volume".to_string(),
            [one] => one.display().to_string(),
            [first, rest @ ..] => {
                format!("{} (+{} more channel files)", first.display(), rest.len())
            }
        }
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.data.shape()[0]
    }

    /// The spatial shape `[D, H, W]`.
    pub fn spatial_shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[1], s[2], s[3]]
    }

    /// Min, max, mean and population std over all voxels of all channels (NaN if any voxel is NaN).
    pub fn stats(&self) -> Stats {
        let standard = self.data.as_standard_layout();
        let all = standard
            .as_slice()
            .expect("a standard-layout array is contiguous");
        let [_, _, h, w] = self.shape();
        let slabs: Vec<&[f32]> = if all.is_empty() {
            Vec::new()
        } else {
            all.chunks((h * w).max(1)).collect()
        };
        let (sum, min, max, count) = slabs
            .par_iter()
            .map(|s| {
                let (mut sum, mut min, mut max) = (0.0f64, f32::INFINITY, f32::NEG_INFINITY);
                let mut nan = false;
                for &v in *s {
                    sum += v as f64;
                    nan |= v.is_nan();
                    min = min.min(v);
                    max = max.max(v);
                }
                if nan {
                    (f64::NAN, f32::NAN, f32::NAN, s.len())
                } else {
                    (sum, min, max, s.len())
                }
            })
            .reduce(
                || (0.0, f32::INFINITY, f32::NEG_INFINITY, 0),
                |a, b| {
                    let nan = a.1.is_nan() || b.1.is_nan();
                    let (min, max) = if nan {
                        (f32::NAN, f32::NAN)
                    } else {
                        (a.1.min(b.1), a.2.max(b.2))
                    };
                    (a.0 + b.0, min, max, a.3 + b.3)
                },
            );
        if count == 0 {
            return Stats {
                min: f64::NAN,
                max: f64::NAN,
                mean: f64::NAN,
                std: f64::NAN,
            };
        }
        let mean = sum / count as f64;
        // Second pass around the mean: numerically stable, like numpy's std.
        let ss: f64 = slabs
            .par_iter()
            .map(|s| {
                s.iter()
                    .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                    .sum::<f64>()
            })
            .sum();
        Stats {
            min: min as f64,
            max: max as f64,
            mean,
            std: (ss / count as f64).sqrt(),
        }
    }

    /// Error if any voxel is NaN or ±Inf, reporting how many and the first (C-order) index.
    pub fn check_finite(&self) -> Result<(), VolumeError> {
        match find_voxels(&self.data, |v| !v.is_finite()) {
            None => Ok(()),
            Some((count, first_index, value)) => Err(VolumeError::NonFinite {
                what: self.describe(),
                count,
                first_index,
                value,
            }),
        }
    }

    /// A copy with every NaN/±Inf voxel set to `value`, and the number replaced.
    pub fn replace_non_finite(&self, value: f32) -> (Volume, u64) {
        let mut out = self.clone();
        let count: u64 = match out.data.as_slice_mut() {
            Some(s) => s
                .par_chunks_mut(1 << 16)
                .map(|c| {
                    let mut n = 0;
                    for v in c.iter_mut().filter(|v| !v.is_finite()) {
                        *v = value;
                        n += 1;
                    }
                    n
                })
                .sum(),
            None => {
                let mut n = 0;
                out.data
                    .iter_mut()
                    .filter(|v| !v.is_finite())
                    .for_each(|v| {
                        *v = value;
                        n += 1
                    });
                n
            }
        };
        (out, count)
    }

    /// Error unless every voxel is a whole number in `[i32::MIN, u32::MAX]` (label maps).
    pub fn check_integer_labels(&self) -> Result<(), VolumeError> {
        match find_voxels(&self.data, |v| !is_label_value(v)) {
            None => Ok(()),
            Some((count, first_index, value)) => Err(VolumeError::NonIntegerLabel {
                what: self.describe(),
                count,
                first_index,
                value,
            }),
        }
    }

    /// The shape `[C, D, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.data.shape();
        [s[0], s[1], s[2], s[3]]
    }

    /// Map a continuous voxel position `[d, h, w]` to RAS world coordinates `[x, y, z]` in mm.
    pub fn voxel_to_world(&self, voxel: [f64; 3]) -> [f64; 3] {
        let ijk = [voxel[2], voxel[1], voxel[0]];
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = self.affine[r][0] * ijk[0]
                + self.affine[r][1] * ijk[1]
                + self.affine[r][2] * ijk[2]
                + self.affine[r][3];
        }
        out
    }

    /// Map RAS world coordinates `[x, y, z]` (mm) to a continuous voxel position `[d, h, w]`.
    ///
    /// `None` when the affine is not invertible.
    pub fn world_to_voxel(&self, world: [f64; 3]) -> Option<[f64; 3]> {
        let inv = boxes::invert_affine(&self.affine)?;
        let mut ijk = [0.0; 3];
        for (r, o) in ijk.iter_mut().enumerate() {
            *o = inv[r][0] * world[0] + inv[r][1] * world[1] + inv[r][2] * world[2] + inv[r][3];
        }
        Some([ijk[2], ijk[1], ijk[0]])
    }
}

/// Read a label (instance or class) map: a NIfTI file whose voxels must all be whole numbers.
///
/// Errors name the file and the first offending voxel, e.g. a label map saved after linear
/// interpolation.
pub fn read_label_map(path: &std::path::Path) -> Result<Volume, VolumeError> {
    let vol = read_nifti(path)?;
    vol.check_integer_labels()?;
    Ok(vol)
}

/// Whether a value is a valid integer label: finite, whole, within `[i32::MIN, u32::MAX]`.
pub(crate) fn is_label_value(v: f32) -> bool {
    v.is_finite() && v.fract() == 0.0 && v >= i32::MIN as f32 && v <= u32::MAX as f32
}

/// Count voxels matching `bad` (in parallel over `[c, d]` slices) and find the first in C order.
pub(crate) fn find_voxels(
    data: &Array4<f32>,
    bad: impl Fn(f32) -> bool + Sync,
) -> Option<(u64, [usize; 4], f32)> {
    let [_, d, h, w] = [
        data.shape()[0],
        data.shape()[1],
        data.shape()[2],
        data.shape()[3],
    ];
    let standard = data.as_standard_layout();
    let all = standard
        .as_slice()
        .expect("a standard-layout array is contiguous");
    // Fast check first (a branch-free fold vectorises); details only when something is found.
    let any = all
        .par_chunks(1 << 16)
        .any(|c| c.iter().fold(false, |acc, &v| acc | bad(v)));
    if !any {
        return None;
    }
    let plane = (h * w).max(1);
    let per_slice: Vec<(u64, Option<(usize, f32)>)> = all
        .par_chunks(plane)
        .map(|slice| {
            let mut count = 0u64;
            let mut first = None;
            for (k, &v) in slice.iter().enumerate() {
                if bad(v) {
                    count += 1;
                    first.get_or_insert((k, v));
                }
            }
            (count, first)
        })
        .collect();
    let total: u64 = per_slice.iter().map(|p| p.0).sum();
    let (i, (k, v)) = per_slice
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.1.map(|f| (i, f)))?;
    Some((
        total,
        [i / d.max(1), i % d.max(1), k / w.max(1), k % w.max(1)],
        v,
    ))
}
