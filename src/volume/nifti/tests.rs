//! Tests of NIfTI reading and writing.

use super::read::*;
use super::write::*;
use crate::volume::Volume;
use flate2::Compression;
use ndarray::Array4;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
        e.contains("huge.nii.gz") && e.contains("`dim`") && e.contains("decompresses to at most"),
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
        e.contains("labels_interpolated.nii.gz") && e.contains("0.5") && e.contains("[0, 0, 0, 2]"),
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
