//! Reading NIfTI-1 headers and voxel data (see the parent module for the rules).

use super::{CHUNK_BYTES, HEADER_SIZE, NIFTI2_HEADER_SIZE};
use crate::volume::{Affine, Volume, VolumeError, check_affine};
use ndarray::{Array4, Axis};
use nifti::NiftiHeader;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
