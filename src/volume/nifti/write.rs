//! Writing NIfTI-1 files atomically (see the parent module for the header it writes).

use super::{CHUNK_BYTES, HEADER_SIZE};
use crate::volume::{Volume, VolumeError, check_affine, find_voxels};
use flate2::Compression;
use nifti::{NiftiHeader, XForm};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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
    if let Some((count, first_index, value)) = find_voxels(&vol.data, bad) {
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
