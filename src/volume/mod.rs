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

pub mod boxes;

use ndarray::Array4;
use std::path::PathBuf;

/// A 4×4 voxel-to-world (RAS, mm) affine, row-major, acting on `(i, j, k, 1)` = `(w, h, d, 1)`.
pub type Affine = [[f64; 4]; 4];

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

impl Volume {
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
}
