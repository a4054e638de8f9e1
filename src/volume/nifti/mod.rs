//! NIfTI-1 reading and writing (`.nii` and `.nii.gz`).
//!
//! # Reading
//! The header is parsed by the `nifti` crate (both byte orders); detlab then validates every
//! field it relies on before using it, so a corrupt header gives a [`VolumeError`] naming the
//! file and the field instead of a panic. The voxel data is streamed through the gzip decoder
//! (chosen by the gzip magic bytes, not by the file name) in 4 MiB chunks and converted to f32
//! on the fly, so reading never holds the raw bytes and the f32 array at the same time.
//!
//! - Data types: u8, i8, i16, u16, i32, u32, i64, u64, f32, f64, either byte order. Complex,
//!   RGB, float128 and 1-bit data are rejected with [`VolumeError::UnsupportedDtype`].
//! - Scaling: `value * scl_slope + scl_inter` when `scl_slope` is finite and non-zero; a slope of
//!   0 (or NaN) means "no scaling", as the NIfTI standard says. Computed in f64, stored as f32.
//! - Shape: a 4D file `(i, j, k, t)` becomes `t` channels `[t, k, j, i]`; dimensions 5–7 must be 1.
//!   2D files become volumes with `D = 1`.
//! - Spacing: `[pixdim[3], pixdim[2], pixdim[1]]`; it must be finite and positive (a zero
//!   pixdim on a size-1 axis is read as 1). `xyzt_units` is ignored (as nibabel does): spacing is
//!   taken to be in mm.
//! - NIfTI-2 files are rejected with [`VolumeError::Nifti2`]; `.hdr/.img` pairs are rejected.
//!
//! # Which affine (qform/sform precedence)
//! 1. `sform_code > 0`: the sform rows `srow_x/y/z`;
//! 2. else `qform_code > 0`: the quaternion qform (with `qfac = pixdim[0]`, a qfac other than
//!    ±1 read as 1);
//! 3. else the NIfTI standard's "method 1": `diag(pixdim[1], pixdim[2], pixdim[3])`, origin 0.
//!
//! Steps 1–2 are nibabel's `get_best_affine` (and the `nifti` crate's `affine()`), so detlab and
//! nibabel agree on every file that has a qform or an sform; an sform is the more general
//! transform (it can hold shears and an exact registration), which is why it wins. For step 3
//! nibabel instead uses an ANALYZE-style affine (x flipped, origin at the centre); detlab follows
//! the NIfTI standard here, which also matches [`Volume::from_array`](super::Volume::from_array).
//!
//! # Writing
//! [`write_nifti`] writes a little-endian NIfTI-1 file (gzip-compressed when the name ends in
//! `.gz`, at level 1 by default like nibabel), atomically: a temporary sibling is written,
//! synced and renamed. The header gets `dim` from the shape (4D when `C > 1`),
//! `pixdim[1..4] = [sw, sh, sd]`, the affine as sform (code 1, exact up to f32), and a qform
//! (code 1) with the affine's rotation and the volume's spacing. Integer types refuse values that
//! are not whole numbers or out of range unless `round_to_integer` is set.

mod read;
mod write;

pub use read::{AffineSource, NiftiInfo, StoredType, read_channels, read_nifti, read_nifti_header};
pub use write::{NiftiDtype, WriteOptions, write_nifti, write_nifti_with};

/// Size of a NIfTI-1 header in bytes.
const HEADER_SIZE: usize = 348;
/// Size of a NIfTI-2 header in bytes (used only to recognise and reject NIfTI-2).
const NIFTI2_HEADER_SIZE: i32 = 540;
/// Raw bytes converted per step while streaming voxel data.
const CHUNK_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests;
