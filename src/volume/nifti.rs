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

use super::{Affine, Volume, VolumeError};
use flate2::Compression;
use ndarray::{Array4, Axis};
use nifti::{NiftiHeader, XForm};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Size of a NIfTI-1 header in bytes.
const HEADER_SIZE: usize = 348;
/// Size of a NIfTI-2 header in bytes (used only to recognise and reject NIfTI-2).
const NIFTI2_HEADER_SIZE: i32 = 540;
/// Raw bytes converted per step while streaming voxel data.
const CHUNK_BYTES: usize = 4 << 20;

/// The voxel data type stored in a NIfTI file that detlab can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredType {
    /// Unsigned 8-bit integer (`DT_UINT8`, code 2).
    U8,
    /// Signed 8-bit integer (`DT_INT8`, code 256).
    I8,
    /// Signed 16-bit integer (`DT_INT16`, code 4).
    I16,
    /// Unsigned 16-bit integer (`DT_UINT16`, code 512).
    U16,
    /// Signed 32-bit integer (`DT_INT32`, code 8).
    I32,
    /// Unsigned 32-bit integer (`DT_UINT32`, code 768).
    U32,
    /// Signed 64-bit integer (`DT_INT64`, code 1024).
    I64,
    /// Unsigned 64-bit integer (`DT_UINT64`, code 1280).
    U64,
    /// 32-bit float (`DT_FLOAT32`, code 16).
    F32,
    /// 64-bit float (`DT_FLOAT64`, code 64).
    F64,
}

impl StoredType {
    /// Map a NIfTI `datatype` code to a readable type, or the standard's name of an unreadable one.
    fn from_code(code: i16) -> Result<StoredType, &'static str> {
        Ok(match code {
            2 => StoredType::U8,
            256 => StoredType::I8,
            4 => StoredType::I16,
            512 => StoredType::U16,
            8 => StoredType::I32,
            768 => StoredType::U32,
            1024 => StoredType::I64,
            1280 => StoredType::U64,
            16 => StoredType::F32,
            64 => StoredType::F64,
            0 => return Err("DT_UNKNOWN"),
            1 => return Err("DT_BINARY, 1 bit per voxel"),
            32 => return Err("DT_COMPLEX64"),
            128 => return Err("DT_RGB24"),
            1536 => return Err("DT_FLOAT128"),
            1792 => return Err("DT_COMPLEX128"),
            2048 => return Err("DT_COMPLEX256"),
            2304 => return Err("DT_RGBA32"),
            _ => return Err("unknown code"),
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            StoredType::U8 | StoredType::I8 => 1,
            StoredType::I16 | StoredType::U16 => 2,
            StoredType::I32 | StoredType::U32 | StoredType::F32 => 4,
            StoredType::I64 | StoredType::U64 | StoredType::F64 => 8,
        }
    }
}

/// Which header transform a file's affine came from (see the module doc for the precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AffineSource {
    /// `sform_code > 0`: the sform rows.
    Sform,
    /// `sform_code <= 0` and `qform_code > 0`: the quaternion qform.
    Qform,
    /// Neither code set: `diag(pixdim)` with origin 0 (NIfTI "method 1").
    Pixdim,
}

/// What a NIfTI-1 header says about a file, validated; [`read_nifti_header`] returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiftiInfo {
    /// The file.
    pub path: PathBuf,
    /// Shape `[C, D, H, W]` the data will have.
    pub shape: [usize; 4],
    /// Stored voxel type.
    pub stored_type: StoredType,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// Spacing `[sd, sh, sw]` in mm.
    pub spacing: [f64; 3],
    /// The chosen voxel-to-world affine (acting on `(i, j, k, 1)`).
    pub affine: Affine,
    /// Which transform the affine came from.
    pub affine_source: AffineSource,
    /// `qform_code` as stored.
    pub qform_code: i16,
    /// `sform_code` as stored.
    pub sform_code: i16,
    /// `(slope, intercept)` applied to the stored values, if any.
    pub scaling: Option<(f64, f64)>,
    /// Byte offset of the voxel data.
    pub vox_offset: u64,
    /// Whether the file is gzip-compressed.
    pub gzip: bool,
    /// The `descrip` text.
    pub description: String,
}

impl NiftiInfo {
    /// Number of voxel data bytes the header announces.
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.stored_type.size() as u64, |acc, &n| {
                acc.checked_mul(n as u64)
            })
    }
}

/// An open NIfTI file positioned just after the 348 header bytes.
struct Opened {
    reader: Box<dyn Read>,
    gzip: bool,
    file_len: u64,
}

fn open(path: &Path) -> Result<Opened, VolumeError> {
    let file = File::open(path).map_err(|e| VolumeError::io(path, "opening", e))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let head = buffered
        .fill_buf()
        .map_err(|e| VolumeError::io(path, "reading", e))?;
    let gzip = head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    Ok(Opened {
        reader,
        gzip,
        file_len,
    })
}

/// Read into `buf` until it is full or the stream ends; returns the number of bytes read.
fn fill(
    reader: &mut dyn Read,
    buf: &mut [u8],
    path: &Path,
    gzip: bool,
) -> Result<usize, VolumeError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(path, gzip, e)),
        }
    }
    Ok(got)
}

fn stream_error(path: &Path, gzip: bool, e: std::io::Error) -> VolumeError {
    use std::io::ErrorKind::*;
    if gzip && matches!(e.kind(), InvalidData | InvalidInput | UnexpectedEof | Other) {
        VolumeError::Gzip {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        VolumeError::io(path, "reading", e)
    }
}

/// Parse and validate the 348 header bytes.
fn parse_header(path: &Path, bytes: &[u8], gzip: bool) -> Result<NiftiInfo, VolumeError> {
    if bytes.len() < HEADER_SIZE {
        return Err(VolumeError::NotNifti {
            path: path.to_path_buf(),
            reason: format!(
                "it has only {} bytes, a NIfTI-1 header needs {HEADER_SIZE}",
                bytes.len()
            ),
        });
    }
    let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if le == NIFTI2_HEADER_SIZE || be == NIFTI2_HEADER_SIZE {
        return Err(VolumeError::Nifti2 {
            path: path.to_path_buf(),
        });
    }
    if le != HEADER_SIZE as i32 && be != HEADER_SIZE as i32 {
        return Err(VolumeError::NotNifti {
            path: path.to_path_buf(),
            reason: format!("sizeof_hdr is {le} (little-endian) / {be} (big-endian), not 348"),
        });
    }
    let mut header =
        NiftiHeader::from_reader(&bytes[..HEADER_SIZE]).map_err(|e| VolumeError::NotNifti {
            path: path.to_path_buf(),
            reason: format!(
                "{e} (magic bytes {:?}, expected \"n+1\")",
                String::from_utf8_lossy(&bytes[344..348])
            ),
        })?;
    if header.sizeof_hdr != HEADER_SIZE as i32 {
        // The crate picks the byte order from dim[0]; a mismatch with sizeof_hdr means dim[0] is corrupt.
        return Err(VolumeError::header(
            path,
            "dim[0]",
            "is inconsistent with the byte order of sizeof_hdr",
        ));
    }
    if &header.magic == b"ni1\0" {
        return Err(VolumeError::NotNifti {
            path: path.to_path_buf(),
            reason:
                "this is the header of a .hdr/.img pair; detlab reads single-file .nii/.nii.gz (convert with nibabel)"
                    .into(),
        });
    }
    let big_endian = header.endianness == nifti::Endianness::Big;

    let ndim = header.dim[0] as i16;
    if !(1..=7).contains(&ndim) {
        return Err(VolumeError::header(
            path,
            "dim[0]",
            format!("is {ndim}, must be 1..7"),
        ));
    }
    let ndim = ndim as usize;
    let mut dims = [1usize; 7];
    for k in 1..=ndim {
        let v = header.dim[k] as i16;
        if v < 1 {
            return Err(VolumeError::header(
                path,
                format!("dim[{k}]"),
                format!("is {v}; every dimension must be >= 1"),
            ));
        }
        dims[k - 1] = v as usize;
    }
    if let Some(k) = (5..=7).find(|&k| dims[k - 1] != 1) {
        return Err(VolumeError::header(
            path,
            format!("dim[{k}]"),
            format!(
                "is {}; detlab reads at most 4 dimensions (i, j, k, channels)",
                dims[k - 1]
            ),
        ));
    }
    let stored_type =
        StoredType::from_code(header.datatype).map_err(|name| VolumeError::UnsupportedDtype {
            path: path.to_path_buf(),
            code: header.datatype,
            name,
        })?;
    let vox_offset = header.vox_offset;
    if !vox_offset.is_finite() || vox_offset.fract() != 0.0 || vox_offset < 352.0 {
        return Err(VolumeError::header(
            path,
            "vox_offset",
            format!(
                "is {vox_offset}; a single-file NIfTI-1 needs a whole number >= 352 (header + extension flag)"
            ),
        ));
    }

    let mut pixdim = [1.0f64; 3];
    for (k, p) in pixdim.iter_mut().enumerate() {
        if k >= ndim {
            continue;
        }
        let v = header.pixdim[k + 1];
        if v == 0.0 && dims[k] == 1 {
            continue;
        }
        if !v.is_finite() || v <= 0.0 {
            return Err(VolumeError::header(
                path,
                format!("pixdim[{}]", k + 1),
                format!("is {v}; voxel spacing must be finite and positive"),
            ));
        }
        *p = v as f64;
    }
    let spacing = [pixdim[2], pixdim[1], pixdim[0]];

    let scaling = {
        let slope = header.scl_slope as f64;
        let inter = header.scl_inter as f64;
        let inter = if inter.is_finite() { inter } else { 0.0 };
        if slope.is_finite() && slope != 0.0 && !(slope == 1.0 && inter == 0.0) {
            Some((slope, inter))
        } else {
            None
        }
    };

    let (affine, affine_source) = if header.sform_code > 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        let mut a = identity();
        for r in 0..3 {
            for c in 0..4 {
                a[r][c] = rows[r][c] as f64;
            }
        }
        check_affine(&a)
            .map_err(|m| VolumeError::header(path, "srow_x/srow_y/srow_z (sform)", m))?;
        (a, AffineSource::Sform)
    } else if header.qform_code > 0 {
        let q = [header.quatern_b, header.quatern_c, header.quatern_d];
        let offsets = [header.quatern_x, header.quatern_y, header.quatern_z];
        if q.iter().chain(&offsets).any(|v| !v.is_finite()) {
            return Err(VolumeError::header(
                path,
                "quatern_*",
                "holds a non-finite value",
            ));
        }
        let norm2: f64 = q.iter().map(|&v| (v as f64) * (v as f64)).sum();
        // The nifti crate panics when 1 - (b² + c² + d²) < -3 ε(f32); reject that here.
        if 1.0 - norm2 < -3.0 * f32::EPSILON as f64 {
            return Err(VolumeError::header(
                path,
                "quatern_b/c/d",
                format!("b² + c² + d² = {norm2:.6} > 1: not a unit quaternion"),
            ));
        }
        header.fix(); // qfac (pixdim[0]) other than ±1 → 1, as nibabel and the standard's reader do
        header.pixdim[1] = pixdim[0] as f32;
        header.pixdim[2] = pixdim[1] as f32;
        header.pixdim[3] = pixdim[2] as f32;
        let m = header.qform_affine::<f64>();
        let mut a = identity();
        for r in 0..3 {
            for c in 0..4 {
                a[r][c] = m[(r, c)];
            }
        }
        check_affine(&a).map_err(|m| VolumeError::header(path, "qform", m))?;
        (a, AffineSource::Qform)
    } else {
        let mut a = identity();
        for k in 0..3 {
            a[k][k] = pixdim[k];
        }
        (a, AffineSource::Pixdim)
    };

    let description = {
        let d = &header.descrip;
        let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
        String::from_utf8_lossy(&d[..end]).into_owned()
    };
    Ok(NiftiInfo {
        path: path.to_path_buf(),
        shape: [dims[3], dims[2], dims[1], dims[0]],
        stored_type,
        big_endian,
        spacing,
        affine,
        affine_source,
        qform_code: header.qform_code,
        sform_code: header.sform_code,
        scaling,
        vox_offset: vox_offset as u64,
        gzip,
        description,
    })
}

fn identity() -> Affine {
    let mut a = [[0.0; 4]; 4];
    for (k, row) in a.iter_mut().enumerate() {
        row[k] = 1.0;
    }
    a
}

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

/// The largest expansion of deflate (a 258-byte match per 2 bits, rounded up).
const MAX_DEFLATE_RATIO: u64 = 1040;

/// Read and validate only the header of a NIfTI-1 file (cheap: decodes 348 bytes).
pub fn read_nifti_header(path: &Path) -> Result<NiftiInfo, VolumeError> {
    let mut opened = open(path)?;
    let mut bytes = [0u8; HEADER_SIZE];
    let got = fill(&mut *opened.reader, &mut bytes, path, opened.gzip)?;
    parse_header(path, &bytes[..got], opened.gzip)
}

/// Read a NIfTI-1 file (`.nii` or `.nii.gz`) into a [`Volume`] (4D files become channels).
pub fn read_nifti(path: &Path) -> Result<Volume, VolumeError> {
    let mut opened = open(path)?;
    let gzip = opened.gzip;
    let reader = &mut *opened.reader;
    let mut bytes = [0u8; HEADER_SIZE];
    let got = fill(reader, &mut bytes, path, gzip)?;
    let info = parse_header(path, &bytes[..got], gzip)?;

    let n: usize = info.shape.iter().product();
    let size = info.stored_type.size();
    let expected = info.data_bytes().ok_or_else(|| {
        VolumeError::header(
            path,
            "dim",
            format!("shape {:?} overflows the address space", info.shape),
        )
    })?;
    let truncated = |found: u64| VolumeError::Truncated {
        path: path.to_path_buf(),
        expected,
        found,
        offset: info.vox_offset,
    };
    if !gzip && opened.file_len < info.vox_offset.saturating_add(expected) {
        return Err(truncated(opened.file_len.saturating_sub(info.vox_offset)));
    }
    // Deflate expands at most ~1032:1, so a gzip file cannot hold more than this; checking it
    // before allocating turns a tiny file that claims a huge shape into an error, not an OOM.
    let most = opened.file_len.saturating_mul(MAX_DEFLATE_RATIO);
    if gzip && info.vox_offset.saturating_add(expected) > most {
        return Err(VolumeError::header(
            path,
            "dim",
            format!(
                "shape {:?} needs {expected} bytes of voxel data, but a gzip file of {} bytes \
                 decompresses to at most {most}",
                info.shape, opened.file_len
            ),
        ));
    }

    // Skip the extensions between the header and the voxel data.
    let skip = info.vox_offset - HEADER_SIZE as u64;
    let skipped = std::io::copy(&mut reader.take(skip), &mut std::io::sink())
        .map_err(|e| stream_error(path, gzip, e))?;
    if skipped < skip {
        return Err(VolumeError::header(
            path,
            "vox_offset",
            format!(
                "is {}, but the file ends after {} bytes",
                info.vox_offset,
                HEADER_SIZE as u64 + skipped
            ),
        ));
    }

    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(n).map_err(|_| {
        VolumeError::header(
            path,
            "dim",
            format!(
                "shape {:?} needs {:.1} GB as f32, which cannot be allocated",
                info.shape,
                n as f64 * 4e-9
            ),
        )
    })?;
    let chunk_voxels = CHUNK_BYTES / size;
    let mut buf = vec![0u8; chunk_voxels.min(n.max(1)) * size];
    let mut read_bytes = 0u64;
    while data.len() < n {
        let want = (n - data.len()).min(chunk_voxels) * size;
        let got = fill(reader, &mut buf[..want], path, gzip)?;
        read_bytes += got as u64;
        if got < want {
            return Err(truncated(read_bytes));
        }
        convert_into(
            &buf[..want],
            &mut data,
            info.stored_type,
            info.big_endian,
            info.scaling,
        );
    }
    if gzip {
        // Decode to the end so the gzip CRC and length are checked.
        std::io::copy(reader, &mut std::io::sink()).map_err(|e| stream_error(path, gzip, e))?;
    }
    let [c, d, h, w] = info.shape;
    let data = Array4::from_shape_vec((c, d, h, w), data)
        .map_err(|e| VolumeError::InvalidArgument(e.to_string()))?;
    Ok(Volume {
        data,
        spacing: info.spacing,
        affine: info.affine,
        source: vec![path.to_path_buf()],
    })
}

/// Append the voxels in `bytes` (stored type `ty`) to `out` as f32, applying the scaling.
fn convert_into(
    bytes: &[u8],
    out: &mut Vec<f32>,
    ty: StoredType,
    big_endian: bool,
    scaling: Option<(f64, f64)>,
) {
    // The byte order and the scaling are decided outside the loops, so each loop is a plain
    // (vectorisable) conversion.
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let it = bytes.chunks_exact($n);
            let le = |b: &[u8]| {
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            };
            let be = |b: &[u8]| {
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                <$t>::from_be_bytes(a)
            };
            match (scaling, big_endian) {
                (None, false) => out.extend(it.map(|b| le(b) as f32)),
                (None, true) => out.extend(it.map(|b| be(b) as f32)),
                (Some((slope, inter)), false) => {
                    out.extend(it.map(|b| (le(b) as f64 * slope + inter) as f32))
                }
                (Some((slope, inter)), true) => {
                    out.extend(it.map(|b| (be(b) as f64 * slope + inter) as f32))
                }
            }
        }};
    }
    match ty {
        StoredType::U8 => conv!(u8, 1),
        StoredType::I8 => conv!(i8, 1),
        StoredType::I16 => conv!(i16, 2),
        StoredType::U16 => conv!(u16, 2),
        StoredType::I32 => conv!(i32, 4),
        StoredType::U32 => conv!(u32, 4),
        StoredType::I64 => conv!(i64, 8),
        StoredType::U64 => conv!(u64, 8),
        StoredType::F32 => conv!(f32, 4),
        StoredType::F64 => conv!(f64, 8),
    }
}

/// Tolerances for deciding that two files share a voxel grid: `|a - b| <= ABS + REL * |a|`.
const GRID_ABS_TOLERANCE: f64 = 1e-4;
const GRID_REL_TOLERANCE: f64 = 1e-5;

/// Read several single-modality files of one case (`case_0000`, `case_0001`, ...) as channels.
///
/// The files are read in parallel; all must have the same `[D, H, W]` shape, spacing and
/// affine (each entry within `1e-4 + 1e-5 * |value|`), otherwise the error names both files.
/// A 4D file contributes all its channels, in order.
pub fn read_channels(paths: &[PathBuf]) -> Result<Volume, VolumeError> {
    if paths.is_empty() {
        return Err(VolumeError::InvalidArgument(
            "read_channels needs at least one file".into(),
        ));
    }
    let volumes: Vec<Volume> = paths
        .par_iter()
        .map(|p| read_nifti(p))
        .collect::<Result<_, _>>()?;
    let first = &volumes[0];
    let [_, d, h, w] = first.shape();
    for (v, p) in volumes.iter().zip(paths).skip(1) {
        let [_, d2, h2, w2] = v.shape();
        if [d, h, w] != [d2, h2, w2] {
            return Err(VolumeError::GridMismatch {
                first: paths[0].clone(),
                second: p.clone(),
                detail: format!(
                    "shapes [D, H, W] differ: {:?} vs {:?}",
                    [d, h, w],
                    [d2, h2, w2]
                ),
            });
        }
        let close =
            |a: f64, b: f64| (a - b).abs() <= GRID_ABS_TOLERANCE + GRID_REL_TOLERANCE * a.abs();
        if let Some(k) = (0..3).find(|&k| !close(first.spacing[k], v.spacing[k])) {
            return Err(VolumeError::GridMismatch {
                first: paths[0].clone(),
                second: p.clone(),
                detail: format!(
                    "spacings [sd, sh, sw] differ on axis {}: {:?} vs {:?}",
                    ["d", "h", "w"][k],
                    first.spacing,
                    v.spacing
                ),
            });
        }
        let mut worst = (0.0f64, 0, 0);
        for r in 0..3 {
            for c in 0..4 {
                let (a, b) = (first.affine[r][c], v.affine[r][c]);
                if !close(a, b) && (a - b).abs() > worst.0 {
                    worst = ((a - b).abs(), r, c);
                }
            }
        }
        if worst.0 > 0.0 {
            return Err(VolumeError::GridMismatch {
                first: paths[0].clone(),
                second: p.clone(),
                detail: format!(
                    "affines differ by {:.6} at row {}, column {} (tolerance {GRID_ABS_TOLERANCE} + {GRID_REL_TOLERANCE}·|value|): {:?} vs {:?}",
                    worst.0, worst.1, worst.2, first.affine, v.affine
                ),
            });
        }
    }
    if volumes.len() == 1 {
        return Ok(volumes.into_iter().next().expect("one volume"));
    }
    let views: Vec<_> = volumes.iter().map(|v| v.data.view()).collect();
    let data = ndarray::concatenate(Axis(0), &views)
        .map_err(|e| VolumeError::InvalidArgument(e.to_string()))?;
    Ok(Volume {
        data,
        spacing: first.spacing,
        affine: first.affine,
        source: paths.to_vec(),
    })
}

/// The voxel type to store when writing a NIfTI file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NiftiDtype {
    /// 32-bit float (images; the default).
    #[default]
    F32,
    /// 64-bit float.
    F64,
    /// Unsigned 8-bit integer (small label maps, masks).
    U8,
    /// Signed 16-bit integer (CT in HU, label maps).
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 32-bit integer (instance maps with many ids).
    I32,
}

impl NiftiDtype {
    /// NIfTI `datatype` code.
    fn code(self) -> i16 {
        match self {
            NiftiDtype::F32 => 16,
            NiftiDtype::F64 => 64,
            NiftiDtype::U8 => 2,
            NiftiDtype::I16 => 4,
            NiftiDtype::U16 => 512,
            NiftiDtype::I32 => 8,
        }
    }

    /// Bytes per voxel.
    fn size(self) -> usize {
        match self {
            NiftiDtype::U8 => 1,
            NiftiDtype::I16 | NiftiDtype::U16 => 2,
            NiftiDtype::F32 | NiftiDtype::I32 => 4,
            NiftiDtype::F64 => 8,
        }
    }

    /// Lowercase name (`"f32"`, `"i16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NiftiDtype::F32 => "f32",
            NiftiDtype::F64 => "f64",
            NiftiDtype::U8 => "u8",
            NiftiDtype::I16 => "i16",
            NiftiDtype::U16 => "u16",
            NiftiDtype::I32 => "i32",
        }
    }

    /// Parse a lowercase name (`"f32"`, `"i16"`, `"u8"`, ...).
    pub fn from_name(name: &str) -> Result<NiftiDtype, VolumeError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" => NiftiDtype::F32,
            "f64" | "float64" => NiftiDtype::F64,
            "u8" | "uint8" => NiftiDtype::U8,
            "i16" | "int16" => NiftiDtype::I16,
            "u16" | "uint16" => NiftiDtype::U16,
            "i32" | "int32" => NiftiDtype::I32,
            other => {
                return Err(VolumeError::InvalidArgument(format!(
                    "unknown NIfTI dtype '{other}'; use one of f32, f64, u8, i16, u16, i32"
                )));
            }
        })
    }

    /// The integer range `(min, max)` of integer types; `None` for floats.
    fn integer_range(self) -> Option<(f64, f64)> {
        match self {
            NiftiDtype::F32 | NiftiDtype::F64 => None,
            NiftiDtype::U8 => Some((0.0, u8::MAX as f64)),
            NiftiDtype::I16 => Some((i16::MIN as f64, i16::MAX as f64)),
            NiftiDtype::U16 => Some((0.0, u16::MAX as f64)),
            NiftiDtype::I32 => Some((i32::MIN as f64, i32::MAX as f64)),
        }
    }
}

/// Options of [`write_nifti_with`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteOptions {
    /// Stored voxel type (default f32).
    pub dtype: NiftiDtype,
    /// gzip level 0–9 for `.gz` files (default 1, nibabel's default: fast, nearly as small).
    pub compression_level: u32,
    /// For integer types, round to the nearest integer (ties to even, like numpy's `rint`) instead of refusing non-integers.
    pub round_to_integer: bool,
    /// Text for the header's `descrip` field (at most 79 bytes are kept).
    pub description: String,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dtype: NiftiDtype::F32,
            compression_level: 1,
            round_to_integer: false,
            description: "detlab".into(),
        }
    }
}

/// Write a volume as NIfTI-1 (`.nii.gz` compressed, `.nii` not) atomically, stored as `dtype`.
pub fn write_nifti(vol: &Volume, path: &Path, dtype: NiftiDtype) -> Result<(), VolumeError> {
    write_nifti_with(
        vol,
        path,
        &WriteOptions {
            dtype,
            ..WriteOptions::default()
        },
    )
}

/// Write a volume as NIfTI-1 with explicit [`WriteOptions`] (atomic: temp file, sync, rename).
pub fn write_nifti_with(
    vol: &Volume,
    path: &Path,
    options: &WriteOptions,
) -> Result<(), VolumeError> {
    let header = build_header(vol, path, options)?;
    let dtype = options.dtype;
    if let Some((lo, hi)) = dtype.integer_range() {
        check_representable(vol, path, dtype, lo, hi, options.round_to_integer)?;
    }
    let gzip = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let tmp = crate::util::temp_sibling(path);
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let buffered = BufWriter::with_capacity(1 << 20, file);
        let file = if gzip {
            let level = Compression::new(options.compression_level.min(9));
            let mut encoder = flate2::write::GzEncoder::new(buffered, level);
            write_body(&mut encoder, &header, vol, dtype)?;
            encoder.finish()?.into_inner().map_err(|e| e.into_error())?
        } else {
            let mut buffered = buffered;
            write_body(&mut buffered, &header, vol, dtype)?;
            buffered.into_inner().map_err(|e| e.into_error())?
        };
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VolumeError::io(path, "writing", e));
    }
    Ok(())
}

fn write_body(
    out: &mut dyn Write,
    header: &[u8],
    vol: &Volume,
    dtype: NiftiDtype,
) -> std::io::Result<()> {
    out.write_all(header)?;
    let data = vol
        .data
        .as_slice()
        .map(std::borrow::Cow::Borrowed)
        .unwrap_or_else(|| {
            std::borrow::Cow::Owned(
                vol.data
                    .as_standard_layout()
                    .iter()
                    .copied()
                    .collect::<Vec<f32>>(),
            )
        });
    let chunk_voxels = CHUNK_BYTES / dtype.size();
    let mut buf = Vec::with_capacity(chunk_voxels.min(data.len()) * dtype.size());
    for chunk in data.chunks(chunk_voxels) {
        buf.clear();
        match dtype {
            NiftiDtype::F32 => chunk
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            NiftiDtype::F64 => chunk
                .iter()
                .for_each(|&v| buf.extend_from_slice(&(v as f64).to_le_bytes())),
            NiftiDtype::U8 => buf.extend(chunk.iter().map(|&v| v.round_ties_even() as u8)),
            NiftiDtype::I16 => chunk
                .iter()
                .for_each(|&v| buf.extend_from_slice(&(v.round_ties_even() as i16).to_le_bytes())),
            NiftiDtype::U16 => chunk
                .iter()
                .for_each(|&v| buf.extend_from_slice(&(v.round_ties_even() as u16).to_le_bytes())),
            NiftiDtype::I32 => chunk
                .iter()
                .for_each(|&v| buf.extend_from_slice(&(v.round_ties_even() as i32).to_le_bytes())),
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Refuse values an integer type cannot hold exactly (non-finite, out of range, fractional).
fn check_representable(
    vol: &Volume,
    path: &Path,
    dtype: NiftiDtype,
    lo: f64,
    hi: f64,
    round: bool,
) -> Result<(), VolumeError> {
    let bad = |v: f32| {
        let r = if round { v.round_ties_even() } else { v };
        !v.is_finite() || (r as f64) < lo || (r as f64) > hi || r.fract() != 0.0
    };
    if let Some((count, first_index, value)) = super::find_voxels(&vol.data, bad) {
        return Err(VolumeError::NotRepresentable {
            path: path.to_path_buf(),
            dtype: dtype.name(),
            count,
            first_index,
            value,
        });
    }
    Ok(())
}

/// Build the 352 header bytes (348-byte header + empty extension flag), little-endian.
fn build_header(vol: &Volume, path: &Path, options: &WriteOptions) -> Result<Vec<u8>, VolumeError> {
    let [c, d, h, w] = vol.shape();
    for (name, n) in [("C", c), ("D", d), ("H", h), ("W", w)] {
        if n == 0 || n > i16::MAX as usize {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: cannot write a volume with {name} = {n}; NIfTI-1 dimensions are 1..=32767",
                path.display()
            )));
        }
    }
    if vol.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: cannot write spacing {:?}; it must be finite and positive",
            path.display(),
            vol.spacing
        )));
    }
    check_affine(&vol.affine).map_err(|m| {
        VolumeError::InvalidArgument(format!("{}: cannot write the affine: {m}", path.display()))
    })?;

    // Let the nifti crate derive the qform quaternion (polar decomposition, as nibabel does).
    let mut hdr = NiftiHeader::default();
    let rows = [&mut hdr.srow_x, &mut hdr.srow_y, &mut hdr.srow_z];
    for (r, row) in rows.into_iter().enumerate() {
        for (cc, v) in row.iter_mut().enumerate() {
            *v = vol.affine[r][cc] as f32;
        }
    }
    let matrix = hdr.sform_affine::<f64>();
    hdr.set_qform(&matrix, XForm::ScannerAnat);

    let mut b = vec![0u8; 352];
    let put_i16 = |b: &mut [u8], at: usize, v: i16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_i32 = |b: &mut [u8], at: usize, v: i32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |b: &mut [u8], at: usize, v: f32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put_i32(&mut b, 0, HEADER_SIZE as i32);
    b[38] = b'r';
    let ndim: i16 = if c > 1 { 4 } else { 3 };
    let dims = [ndim, w as i16, h as i16, d as i16, c as i16, 1, 1, 1];
    for (k, v) in dims.iter().enumerate() {
        put_i16(&mut b, 40 + 2 * k, *v);
    }
    put_i16(&mut b, 70, options.dtype.code());
    put_i16(&mut b, 72, (options.dtype.size() * 8) as i16);
    let pixdim = [
        hdr.pixdim[0],
        vol.spacing[2] as f32,
        vol.spacing[1] as f32,
        vol.spacing[0] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (k, v) in pixdim.iter().enumerate() {
        put_f32(&mut b, 76 + 4 * k, *v);
    }
    put_f32(&mut b, 108, 352.0);
    put_f32(&mut b, 112, 1.0);
    put_f32(&mut b, 116, 0.0);
    b[123] = 2; // xyzt_units: NIFTI_UNITS_MM
    let descrip = options.description.as_bytes();
    let n = descrip.len().min(79);
    b[148..148 + n].copy_from_slice(&descrip[..n]);
    put_i16(&mut b, 252, XForm::ScannerAnat as i16);
    put_i16(&mut b, 254, XForm::ScannerAnat as i16);
    for (k, v) in [hdr.quatern_b, hdr.quatern_c, hdr.quatern_d]
        .iter()
        .enumerate()
    {
        put_f32(&mut b, 256 + 4 * k, *v);
    }
    for k in 0..3 {
        put_f32(&mut b, 268 + 4 * k, vol.affine[k][3] as f32);
    }
    for r in 0..3 {
        for cc in 0..4 {
            put_f32(&mut b, 280 + 16 * r + 4 * cc, vol.affine[r][cc] as f32);
        }
    }
    b[344..348].copy_from_slice(b"n+1\0");
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn ramp(shape: [usize; 4]) -> Array4<f32> {
        Array4::from_shape_fn(shape, |(c, d, h, w)| {
            (c * 1000 + d * 100 + h * 10 + w) as f32
        })
    }

    #[test]
    fn write_then_read_round_trips_data_spacing_and_affine() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = Volume::from_array(ramp([2, 3, 4, 5]), [2.5, 0.8, 0.7]);
        vol.affine[0][3] = -10.0;
        vol.affine[1][3] = 20.5;
        vol.affine[2][3] = 3.25;
        for name in ["a.nii.gz", "a.nii"] {
            let p = dir.path().join(name);
            write_nifti(&vol, &p, NiftiDtype::F32).unwrap();
            let back = read_nifti(&p).unwrap();
            assert_eq!(back.data, vol.data);
            assert_eq!(back.shape(), [2, 3, 4, 5]);
            for k in 0..3 {
                assert!((back.spacing[k] - vol.spacing[k]).abs() < 1e-6);
            }
            for r in 0..4 {
                for c in 0..4 {
                    assert!(
                        (back.affine[r][c] - vol.affine[r][c]).abs() < 1e-5,
                        "{r},{c}"
                    );
                }
            }
            assert_eq!(back.source, vec![p.clone()]);
            let info = read_nifti_header(&p).unwrap();
            assert_eq!(info.affine_source, AffineSource::Sform);
            assert_eq!(info.gzip, name.ends_with(".gz"));
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn integer_dtypes_round_trip_and_refuse_fractions() {
        let dir = tempfile::tempdir().unwrap();
        let vol = Volume::from_array(ramp([1, 2, 3, 4]), [1.0, 1.0, 1.0]);
        for dtype in [
            NiftiDtype::I16,
            NiftiDtype::I32,
            NiftiDtype::U16,
            NiftiDtype::F64,
        ] {
            let p = dir.path().join(format!("l_{}.nii.gz", dtype.name()));
            write_nifti(&vol, &p, dtype).unwrap();
            assert_eq!(read_nifti(&p).unwrap().data, vol.data);
        }
        let p = dir.path().join("u8.nii.gz");
        let mut big = vol.clone();
        big.data[[0, 0, 0, 1]] = 300.0;
        let err = write_nifti(&big, &p, NiftiDtype::U8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("u8") && err.contains("u8.nii.gz") && err.contains("out of range"),
            "{err}"
        );
        assert!(!p.exists());
        let mut half = vol.clone();
        half.data[[0, 1, 1, 1]] = 2.5;
        let err = write_nifti(&half, &p, NiftiDtype::I16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0, 1, 1, 1]") && err.contains("2.5"), "{err}");
        let opts = WriteOptions {
            dtype: NiftiDtype::I16,
            round_to_integer: true,
            ..Default::default()
        };
        write_nifti_with(&half, &p, &opts).unwrap();
        assert_eq!(read_nifti(&p).unwrap().data[[0, 1, 1, 1]], 2.0);
    }

    #[test]
    fn written_qform_matches_the_sform_for_an_oblique_affine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oblique.nii.gz");
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let mut vol = Volume::from_array(ramp([1, 2, 2, 2]), [3.0, 2.0, 1.5]);
        vol.affine = [
            [c * 1.5, -s * 2.0, 0.0, 5.0],
            [s * 1.5, c * 2.0, 0.0, -7.0],
            [0.0, 0.0, -3.0, 9.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        write_nifti(&vol, &p, NiftiDtype::F32).unwrap();
        // Re-read the qform alone by clearing the sform code in a copy of the file.
        let raw = {
            let mut dec = flate2::read::GzDecoder::new(File::open(&p).unwrap());
            let mut v = Vec::new();
            dec.read_to_end(&mut v).unwrap();
            v
        };
        let mut raw = raw;
        raw[254..256].copy_from_slice(&0i16.to_le_bytes());
        let q = dir.path().join("qonly.nii");
        std::fs::write(&q, &raw).unwrap();
        let info = read_nifti_header(&q).unwrap();
        assert_eq!(info.affine_source, AffineSource::Qform);
        for r in 0..3 {
            for k in 0..4 {
                assert!(
                    (info.affine[r][k] - vol.affine[r][k]).abs() < 1e-5,
                    "{r},{k}: {:?}",
                    info.affine
                );
            }
        }
    }

    /// A hand-built NIfTI-1 file, so tests can write headers no well-behaved writer would.
    #[derive(Clone)]
    struct Raw {
        big_endian: bool,
        sizeof_hdr: i32,
        dim: [i16; 8],
        datatype: i16,
        pixdim: [f32; 8],
        vox_offset: f32,
        scl_slope: f32,
        scl_inter: f32,
        qform_code: i16,
        sform_code: i16,
        quatern: [f32; 6],
        srow: [[f32; 4]; 3],
        magic: [u8; 4],
        data: Vec<u8>,
    }

    impl Raw {
        /// A 2×3×4 (i, j, k) int16 volume with values 0..24 and no transforms.
        fn new(big_endian: bool) -> Raw {
            let data = (0..24i16)
                .flat_map(|v| {
                    if big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    }
                })
                .collect();
            Raw {
                big_endian,
                sizeof_hdr: 348,
                dim: [3, 2, 3, 4, 1, 1, 1, 1],
                datatype: 4,
                pixdim: [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0],
                vox_offset: 352.0,
                scl_slope: 0.0,
                scl_inter: 0.0,
                qform_code: 0,
                sform_code: 0,
                quatern: [0.0; 6],
                srow: [[0.0; 4]; 3],
                magic: *b"n+1\0",
                data,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; (self.vox_offset.max(348.0) as usize).max(352)];
            let be = self.big_endian;
            let i16b = |v: i16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let i32b = |v: i32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let f32b = |v: f32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            b[0..4].copy_from_slice(&i32b(self.sizeof_hdr));
            for k in 0..8 {
                b[40 + 2 * k..42 + 2 * k].copy_from_slice(&i16b(self.dim[k]));
                b[76 + 4 * k..80 + 4 * k].copy_from_slice(&f32b(self.pixdim[k]));
            }
            b[70..72].copy_from_slice(&i16b(self.datatype));
            b[108..112].copy_from_slice(&f32b(self.vox_offset));
            b[112..116].copy_from_slice(&f32b(self.scl_slope));
            b[116..120].copy_from_slice(&f32b(self.scl_inter));
            b[252..254].copy_from_slice(&i16b(self.qform_code));
            b[254..256].copy_from_slice(&i16b(self.sform_code));
            for k in 0..6 {
                b[256 + 4 * k..260 + 4 * k].copy_from_slice(&f32b(self.quatern[k]));
            }
            for r in 0..3 {
                for c in 0..4 {
                    let at = 280 + 16 * r + 4 * c;
                    b[at..at + 4].copy_from_slice(&f32b(self.srow[r][c]));
                }
            }
            b[344..348].copy_from_slice(&self.magic);
            b.extend_from_slice(&self.data);
            b
        }

        fn write(&self, dir: &Path, name: &str) -> PathBuf {
            let p = dir.join(name);
            let bytes = self.bytes();
            if name.ends_with(".gz") {
                let mut e =
                    flate2::write::GzEncoder::new(File::create(&p).unwrap(), Compression::fast());
                e.write_all(&bytes).unwrap();
                e.finish().unwrap();
            } else {
                std::fs::write(&p, bytes).unwrap();
            }
            p
        }
    }

    fn err_of(raw: &Raw, name: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = raw.write(dir.path(), name);
        let e = read_nifti(&p)
            .expect_err("a bad file must be rejected")
            .to_string();
        assert!(e.contains(name), "the error must name the file: {e}");
        e
    }

    #[test]
    fn both_byte_orders_read_the_same_values_in_c_order() {
        let dir = tempfile::tempdir().unwrap();
        for be in [false, true] {
            let p = Raw::new(be).write(dir.path(), if be { "be.nii" } else { "le.nii.gz" });
            let v = read_nifti(&p).unwrap();
            assert_eq!(v.shape(), [1, 4, 3, 2]);
            // File order is i fastest: value = i + 2 j + 6 k at [0, k, j, i].
            assert_eq!(v.data[[0, 3, 1, 1]], (1 + 2 + 18) as f32);
            assert_eq!(v.spacing, [2.0, 0.75, 0.5]);
            // No qform/sform: NIfTI method 1, diag(pixdim).
            let info = read_nifti_header(&p).unwrap();
            assert_eq!(info.affine_source, AffineSource::Pixdim);
            assert_eq!(info.big_endian, be);
            assert_eq!(v.affine[0][0], 0.5);
            assert_eq!(v.affine[2][2], 2.0);
        }
    }

    #[test]
    fn every_supported_dtype_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let values = [-3.0f64, 0.0, 7.0, 100.0];
        macro_rules! case {
            ($code:expr, $t:ty) => {{
                for be in [false, true] {
                    let mut raw = Raw::new(be);
                    raw.dim = [3, 4, 1, 1, 1, 1, 1, 1];
                    raw.datatype = $code;
                    raw.data = values
                        .iter()
                        .map(|&v| {
                            if v < 0.0 && (<$t>::MIN as f64) >= 0.0 {
                                3.0
                            } else {
                                v
                            }
                        })
                        .flat_map(|v| {
                            let x = v as $t;
                            if be {
                                x.to_be_bytes().to_vec()
                            } else {
                                x.to_le_bytes().to_vec()
                            }
                        })
                        .collect();
                    let p = raw.write(dir.path(), &format!("t{}_{be}.nii", $code));
                    let v = read_nifti(&p).unwrap();
                    let got: Vec<f32> = v.data.iter().copied().collect();
                    let want: Vec<f32> = values
                                    .iter()
                                    .map(|&v| if v < 0.0 && (<$t>::MIN as f64) >= 0.0 { 3.0 } else { v } as f32)
                                    .collect();
                    assert_eq!(got, want, "datatype {}", $code);
                }
            }};
        }
        case!(2, u8);
        case!(256, i8);
        case!(4, i16);
        case!(512, u16);
        case!(8, i32);
        case!(768, u32);
        case!(1024, i64);
        case!(1280, u64);
        case!(16, f32);
        case!(64, f64);
    }

    #[test]
    fn scl_slope_and_inter_are_applied_and_slope_zero_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = Raw::new(false);
        raw.scl_slope = 2.0;
        raw.scl_inter = -1024.0;
        let v = read_nifti(&raw.write(dir.path(), "scaled.nii")).unwrap();
        assert_eq!(v.data[[0, 0, 0, 1]], 2.0 * 1.0 - 1024.0);
        assert_eq!(v.stats().max, 2.0 * 23.0 - 1024.0);
        raw.scl_slope = 0.0;
        raw.scl_inter = 5.0;
        let v = read_nifti(&raw.write(dir.path(), "zero_slope.nii")).unwrap();
        assert_eq!(v.data[[0, 0, 0, 1]], 1.0);
    }

    #[test]
    fn sform_wins_over_qform_which_wins_over_pixdim() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = Raw::new(false);
        // qform: 90° about z (quaternion b=c=0, d=sin 45°), offsets (1, 2, 3).
        let h = std::f32::consts::FRAC_1_SQRT_2;
        raw.qform_code = 1;
        raw.quatern = [0.0, 0.0, h, 1.0, 2.0, 3.0];
        // sform: a plain scaling with another origin, disagreeing with the qform.
        raw.sform_code = 2;
        raw.srow = [
            [-0.5, 0.0, 0.0, 40.0],
            [0.0, 0.75, 0.0, -50.0],
            [0.0, 0.0, 2.0, 60.0],
        ];
        let both = raw.write(dir.path(), "both.nii");
        let info = read_nifti_header(&both).unwrap();
        assert_eq!(info.affine_source, AffineSource::Sform);
        assert_eq!(info.affine[0], [-0.5, 0.0, 0.0, 40.0]);
        raw.sform_code = 0;
        let q = read_nifti_header(&raw.write(dir.path(), "qform.nii")).unwrap();
        assert_eq!(q.affine_source, AffineSource::Qform);
        // R = rot_z(90°): x = −0.75 j + 1, y = 0.5 i + 2, z = 2 k + 3.
        let expected = [
            [0.0, -0.75, 0.0, 1.0],
            [0.5, 0.0, 0.0, 2.0],
            [0.0, 0.0, 2.0, 3.0],
        ];
        for r in 0..3 {
            for c in 0..4 {
                assert!(
                    (q.affine[r][c] - expected[r][c]).abs() < 1e-6,
                    "{:?}",
                    q.affine
                );
            }
        }
        // qfac = −1 flips k.
        raw.pixdim[0] = -1.0;
        let flipped = read_nifti_header(&raw.write(dir.path(), "qfac.nii")).unwrap();
        assert!((flipped.affine[2][2] + 2.0).abs() < 1e-6);
        raw.qform_code = 0;
        raw.pixdim[0] = 1.0;
        assert_eq!(
            read_nifti_header(&raw.write(dir.path(), "none.nii"))
                .unwrap()
                .affine_source,
            AffineSource::Pixdim
        );
    }

    #[test]
    fn four_d_files_become_channels() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = Raw::new(false);
        raw.dim = [4, 2, 3, 2, 2, 1, 1, 1];
        let v = read_nifti(&raw.write(dir.path(), "4d.nii.gz")).unwrap();
        assert_eq!(v.shape(), [2, 2, 3, 2]);
        assert_eq!(v.data[[1, 0, 0, 0]], 12.0);
        raw.dim = [5, 2, 3, 2, 1, 2, 1, 1];
        assert!(err_of(&raw, "5d.nii").contains("dim[5]"));
    }

    #[test]
    fn truncated_gzip_and_truncated_data_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = Raw::new(false).write(dir.path(), "full.nii.gz");
        let bytes = std::fs::read(&p).unwrap();
        for (name, keep) in [
            ("cut_data.nii.gz", bytes.len() - 12),
            ("cut_header.nii.gz", 30),
        ] {
            let q = dir.path().join(name);
            std::fs::write(&q, &bytes[..keep]).unwrap();
            let e = read_nifti(&q).unwrap_err().to_string();
            assert!(
                e.contains(name) && (e.contains("truncated") || e.contains("NIfTI-1")),
                "{e}"
            );
        }
        // Corrupt deflate data in the middle of the stream.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0xff;
        let q = dir.path().join("corrupt.nii.gz");
        std::fs::write(&q, &bad).unwrap();
        let e = read_nifti(&q).unwrap_err().to_string();
        assert!(e.contains("corrupt.nii.gz"), "{e}");
        // Uncompressed file shorter than its data.
        let mut raw = Raw::new(false);
        raw.data.truncate(10);
        let e = err_of(&raw, "short.nii");
        assert!(
            e.contains("truncated") && e.contains("48 bytes") && e.contains("only 10"),
            "{e}"
        );
    }

    #[test]
    fn bad_header_fields_are_named() {
        let base = Raw::new(false);
        let mut r = base.clone();
        r.vox_offset = 100.0;
        assert!(err_of(&r, "offset_small.nii").contains("vox_offset"));
        let mut r = base.clone();
        r.vox_offset = 352.5;
        assert!(err_of(&r, "offset_frac.nii").contains("vox_offset"));
        let mut r = base.clone();
        r.vox_offset = 4000.0; // beyond the end of the file
        r.data.clear();
        let e = err_of(&r, "offset_far.nii");
        assert!(e.contains("truncated") || e.contains("vox_offset"), "{e}");
        let mut r = base.clone();
        r.dim[2] = 0;
        assert!(err_of(&r, "zero_dim.nii").contains("dim[2]"));
        let mut r = base.clone();
        r.dim[3] = -4;
        assert!(err_of(&r, "negative_dim.nii.gz").contains("dim[3]"));
        let mut r = base.clone();
        r.dim[0] = 0;
        assert!(err_of(&r, "dim0.nii").contains("dim[0]"));
        let mut r = base.clone();
        r.datatype = 32;
        assert!(err_of(&r, "complex.nii").contains("DT_COMPLEX64"));
        let mut r = base.clone();
        r.datatype = 1234;
        assert!(err_of(&r, "weird_type.nii").contains("1234"));
        let mut r = base.clone();
        r.pixdim[2] = -0.75;
        r.qform_code = 1;
        assert!(err_of(&r, "negative_pixdim.nii").contains("pixdim[2]"));
        let mut r = base.clone();
        r.qform_code = 1;
        r.quatern[..3].copy_from_slice(&[0.9, 0.9, 0.0]);
        assert!(err_of(&r, "bad_quaternion.nii").contains("quatern"));
        let mut r = base.clone();
        r.sform_code = 1; // all-zero srows: singular
        assert!(err_of(&r, "singular_sform.nii").contains("singular"));
        let mut r = base.clone();
        r.magic = *b"ni1\0";
        assert!(err_of(&r, "pair.nii").contains(".hdr/.img"));
        let mut r = base.clone();
        r.sizeof_hdr = 540;
        assert!(err_of(&r, "v2.nii").contains("NIfTI-2"));
        let mut r = base.clone();
        r.sizeof_hdr = 12;
        assert!(err_of(&r, "junk.nii").contains("not a NIfTI-1"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.nii.gz");
        assert!(
            read_nifti(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.nii.gz")
        );
    }

    #[test]
    fn absurd_dims_in_a_gzip_file_fail_without_panicking() {
        let mut r = Raw::new(false);
        r.dim = [4, 32767, 32767, 32767, 32767, 1, 1, 1];
        let e = err_of(&r, "huge.nii.gz");
        // Refused from the header, before anything is allocated or decompressed.
        assert!(
            e.contains("huge.nii.gz")
                && e.contains("`dim`")
                && e.contains("decompresses to at most"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_voxels_are_kept_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Raw::new(false);
        r.datatype = 16;
        r.dim = [3, 3, 1, 1, 1, 1, 1, 1];
        r.data = [1.0f32, f32::NAN, f32::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = r.write(dir.path(), "nan.nii");
        let v = read_nifti(&p).unwrap();
        let e = v.check_finite().unwrap_err().to_string();
        assert!(
            e.contains("nan.nii") && e.contains("2 non-finite") && e.contains("[0, 0, 0, 1]"),
            "{e}"
        );
        assert!(v.stats().mean.is_nan());
    }

    #[test]
    fn label_maps_must_hold_whole_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Raw::new(false);
        r.datatype = 16;
        r.dim = [3, 4, 1, 1, 1, 1, 1, 1];
        r.data = [0.0f32, 1.0, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let good = r.write(dir.path(), "labels_ok.nii.gz");
        assert_eq!(
            super::super::read_label_map(&good).unwrap().stats().max,
            3.0
        );
        r.data = [0.0f32, 1.0, 0.5, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bad = r.write(dir.path(), "labels_interpolated.nii.gz");
        let e = super::super::read_label_map(&bad).unwrap_err().to_string();
        assert!(
            e.contains("labels_interpolated.nii.gz")
                && e.contains("0.5")
                && e.contains("[0, 0, 0, 2]"),
            "{e}"
        );
    }

    #[test]
    fn read_channels_stacks_and_names_both_files_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let a = Raw::new(false).write(dir.path(), "case_0000.nii.gz");
        let mut other = Raw::new(false);
        other.data = (100..124i16).flat_map(|v| v.to_le_bytes()).collect();
        let b = other.write(dir.path(), "case_0001.nii.gz");
        let v = read_channels(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(v.shape(), [2, 4, 3, 2]);
        assert_eq!(v.data[[1, 0, 0, 0]], 100.0);
        assert_eq!(v.source, vec![a.clone(), b]);
        let mut shifted = Raw::new(false);
        shifted.sform_code = 1;
        shifted.srow = [
            [0.5, 0.0, 0.0, 1.0],
            [0.0, 0.75, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ];
        let c = shifted.write(dir.path(), "case_0002.nii.gz");
        let e = read_channels(&[a.clone(), c]).unwrap_err().to_string();
        assert!(
            e.contains("case_0000.nii.gz")
                && e.contains("case_0002.nii.gz")
                && e.contains("affines differ"),
            "{e}"
        );
        let mut small = Raw::new(false);
        small.dim = [3, 2, 3, 2, 1, 1, 1, 1];
        small.data.truncate(24);
        let d = small.write(dir.path(), "case_0003.nii.gz");
        let e = read_channels(&[a, d]).unwrap_err().to_string();
        assert!(
            e.contains("case_0003.nii.gz") && e.contains("shapes"),
            "{e}"
        );
        assert!(read_channels(&[]).is_err());
    }
}
