//! The volume module's error type: every message names the file (or volume) concerned.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while reading, writing or processing a volume.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// The file could not be opened, read or written.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done ("reading", "writing", "renaming").
        action: &'static str,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The gzip stream is corrupt (bad CRC, invalid deflate data) or ends early.
    #[error(
        "{path}: the gzip stream is corrupt or truncated ({detail}); re-export or re-download the file"
    )]
    Gzip {
        /// The file concerned.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// The file ends before the data the header announces.
    #[error(
        "{path}: the file is truncated: the header announces {expected} bytes of voxel data, but only {found} follow the {offset}-byte offset"
    )]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// Bytes of voxel data announced by `dim` and `datatype`.
        expected: u64,
        /// Bytes actually present.
        found: u64,
        /// `vox_offset`.
        offset: u64,
    },
    /// The file is a NIfTI-2 file, which detlab does not read.
    #[error(
        "{path}: this is a NIfTI-2 file (540-byte header); detlab reads NIfTI-1 only. Convert it, e.g. with nibabel: nib.save(nib.Nifti1Image(img.dataobj, img.affine, None), 'out.nii.gz')"
    )]
    Nifti2 {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file is not a NIfTI-1 file at all.
    #[error("{path}: not a NIfTI-1 file: {reason}")]
    NotNifti {
        /// The file concerned.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A header field has a value detlab cannot use.
    #[error("{path}: invalid NIfTI header field `{field}`: {message}")]
    Header {
        /// The file concerned.
        path: PathBuf,
        /// The header field, e.g. `dim[2]` or `vox_offset`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The voxel data type is not one detlab reads or writes.
    #[error(
        "{path}: unsupported NIfTI datatype {code} ({name}); detlab reads u8, i8, i16, u16, i32, u32, i64, u64, f32 and f64"
    )]
    UnsupportedDtype {
        /// The file concerned.
        path: PathBuf,
        /// The NIfTI `datatype` code.
        code: i16,
        /// Its name in the NIfTI standard, or "unknown".
        name: &'static str,
    },
    /// Two files that must share a grid (channels of one case) do not.
    #[error("{first} and {second} do not share a voxel grid: {detail}")]
    GridMismatch {
        /// The first file.
        first: PathBuf,
        /// The file that disagrees with it.
        second: PathBuf,
        /// Shapes or affines, as found.
        detail: String,
    },
    /// Some voxels are NaN or infinite.
    #[error(
        "{what}: {count} non-finite voxel(s) (NaN or ±Inf); the first is {value} at [c, d, h, w] = {first_index:?}. Replace them first (e.g. `replace_non_finite(0.0)`)"
    )]
    NonFinite {
        /// The volume concerned (its file, or a description).
        what: String,
        /// Number of non-finite voxels.
        count: u64,
        /// C-order index `[c, d, h, w]` of the first one.
        first_index: [usize; 4],
        /// Its value.
        value: f32,
    },
    /// A label map holds values that are not (representable) integers.
    #[error(
        "{what}: {count} voxel(s) are not valid integer labels; the first is {value} at [c, d, h, w] = {first_index:?}. Label maps must hold whole numbers (was it resampled with linear interpolation?)"
    )]
    NonIntegerLabel {
        /// The volume concerned (its file, or a description).
        what: String,
        /// Number of offending voxels.
        count: u64,
        /// C-order index `[c, d, h, w]` of the first one.
        first_index: [usize; 4],
        /// Its value.
        value: f32,
    },
    /// A value does not fit the integer type it must be written as.
    #[error(
        "{path}: cannot write as {dtype}: {count} voxel(s) are out of range or not whole numbers; the first is {value} at [c, d, h, w] = {first_index:?} (set `round_to_integer` to round, or write as f32)"
    )]
    NotRepresentable {
        /// The file being written.
        path: PathBuf,
        /// The requested data type.
        dtype: &'static str,
        /// Number of offending voxels.
        count: u64,
        /// C-order index `[c, d, h, w]` of the first one.
        first_index: [usize; 4],
        /// Its value.
        value: f32,
    },
    /// An argument is out of its valid range (a spacing ≤ 0, an empty file list, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl VolumeError {
    /// Build an [`VolumeError::Io`] error.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        VolumeError::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// Build a [`VolumeError::Header`] error.
    pub(crate) fn header(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        VolumeError::Header {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}
