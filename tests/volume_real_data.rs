//! The volume module on real NIfTI files (a real brain, a real atlas, big-endian, 4D, oblique,
//! LSA, NIfTI-2), compared with values computed once with nibabel 5.4.2 / numpy / scipy 1.17.
//!
//! The files come from Debian `mricron-data` and `insighttoolkit5-examples` and from PyPI
//! `nibabel==5.4.2` and `dipy==1.12.1`. The tests install them themselves on first use
//! (`common::setup_data` runs `.ci/setup-data.sh`, which also builds the pinned venv `.venv`
//! used to locate the Python packages and to read detlab's output back with nibabel). A missing
//! file or a failed set-up is a test failure (never a silent pass). The Python package folders
//! can also be given by `DETLAB_NIBABEL_DIR` / `DETLAB_DIPY_DIR`.

mod common;

use common::{SETUP_DATA, setup_data};
use detlab::volume::boxes::{BoxConvention, box_inside};
use detlab::volume::{
    AffineSource, Interpolation, NiftiDtype, Volume, VolumeError, read_nifti, read_nifti_header,
    write_nifti,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `path` after the set-up has run; a test failure naming the file if it is still missing.
fn require(path: PathBuf) -> PathBuf {
    setup_data();
    assert!(
        path.exists(),
        "real-data file {} is missing after the set-up: {SETUP_DATA}",
        path.display()
    );
    path
}

fn python_package_dir(package: &str, env: &str) -> PathBuf {
    if let Ok(dir) = std::env::var(env) {
        return PathBuf::from(dir);
    }
    let python = setup_data();
    let out = Command::new(&python)
        .args([
            "-c",
            &format!("import {package}, os; print(os.path.dirname({package}.__file__))"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP_DATA}", python.display()));
    assert!(
        out.status.success(),
        "{} cannot import {package}: {SETUP_DATA}\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn mricron(name: &str) -> PathBuf {
    require(Path::new("/usr/share/mricron/templates").join(name))
}

fn nibabel_data(name: &str) -> PathBuf {
    require(
        python_package_dir("nibabel", "DETLAB_NIBABEL_DIR")
            .join("tests/data")
            .join(name),
    )
}

fn dipy_data(name: &str) -> PathBuf {
    require(
        python_package_dir("dipy", "DETLAB_DIPY_DIR")
            .join("data/files")
            .join(name),
    )
}

fn itk_data(name: &str) -> PathBuf {
    require(Path::new("/usr/share/doc/insighttoolkit5-examples/examples/Data").join(name))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

/// Shape, spacing, affine (to f32 precision) and voxel statistics against nibabel's values.
#[allow(clippy::too_many_arguments)]
fn check(
    vol: &Volume,
    shape: [usize; 4],
    spacing: [f64; 3],
    affine: [[f64; 4]; 3],
    stats: [f64; 4],
    probe: ([usize; 4], f32),
) {
    let what = vol.describe();
    assert_eq!(vol.shape(), shape, "{what}: shape");
    for k in 0..3 {
        assert!(
            close(vol.spacing[k], spacing[k], 1e-6),
            "{what}: spacing {:?} vs {spacing:?}",
            vol.spacing
        );
    }
    for (r, (got_row, want_row)) in vol.affine.iter().zip(&affine).enumerate() {
        for (c, (got, want)) in got_row.iter().zip(want_row).enumerate() {
            assert!(
                (got - want).abs() < 1e-5,
                "{what}: affine[{r}][{c}] = {got} vs nibabel {want}"
            );
        }
    }
    assert_eq!(vol.affine[3], [0.0, 0.0, 0.0, 1.0]);
    let s = vol.stats();
    let got = [s.min, s.max, s.mean, s.std];
    for k in 0..4 {
        assert!(
            close(got[k], stats[k], 1e-9),
            "{what}: stats (min, max, mean, std) {got:?} vs nibabel {stats:?}"
        );
    }
    assert_eq!(vol.data[probe.0], probe.1, "{what}: voxel {:?}", probe.0);
    vol.check_finite().unwrap();
}

#[test]
fn colin27_t1_matches_nibabel() {
    let ch2 = read_nifti(&mricron("ch2.nii.gz")).unwrap();
    check(
        &ch2,
        [1, 181, 217, 181],
        [1.0, 1.0, 1.0],
        [
            [1.0, 0.0, 0.0, -90.0],
            [0.0, 1.0, 0.0, -125.0],
            [0.0, 0.0, 1.0, -71.0],
        ],
        [0.0, 254.0, 44.61177355282364, 46.769246611280444],
        ([0, 90, 108, 60], 110.0),
    );
    assert_eq!(
        read_nifti_header(&ch2.source[0]).unwrap().affine_source,
        AffineSource::Sform
    );
}

#[test]
fn aal_labels_give_116_boxes_inside_the_ch2_grid() {
    let ch2 = read_nifti(&mricron("ch2.nii.gz")).unwrap();
    let aal = read_nifti(&mricron("aal.nii.gz")).unwrap();
    check(
        &aal,
        [1, 181, 217, 181],
        [1.0, 1.0, 1.0],
        [
            [1.0, 0.0, 0.0, -90.0],
            [0.0, 1.0, 0.0, -125.0],
            [0.0, 0.0, 1.0, -71.0],
        ],
        [0.0, 116.0, 10.78281526998284, 25.629393234817865],
        ([0, 90, 108, 60], 0.0),
    );
    assert_eq!(aal.affine, ch2.affine, "AAL must sit on the ch2 grid");
    aal.check_integer_labels().unwrap();
    let instances = aal.instances(BoxConvention::HalfOpen).unwrap();
    assert_eq!(instances.len(), 116);
    assert_eq!(
        instances.keys().copied().collect::<Vec<_>>(),
        (1..=116).collect::<Vec<u32>>()
    );
    for (id, info) in &instances {
        assert!(
            box_inside(&info.bbox, aal.spatial_shape()),
            "label {id}: {:?}",
            info.bbox
        );
    }
    // scipy.ndimage.find_objects on the [k, j, i] array, and (aal == id).sum().
    assert_eq!(instances[&1].bbox, [86.0, 94.0, 26.0, 154.0, 142.0, 77.0]);
    assert_eq!(instances[&58].bbox, [85.0, 70.0, 98.0, 156.0, 130.0, 161.0]);
    assert_eq!(instances[&116].bbox, [31.0, 73.0, 84.0, 48.0, 86.0, 99.0]);
    assert_eq!(
        (
            instances[&1].voxels,
            instances[&58].voxels,
            instances[&116].voxels
        ),
        (28174, 30652, 874)
    );
    let nnd = aal.instance_boxes(BoxConvention::NnDetection).unwrap();
    assert_eq!(nnd[&116], [30.0, 72.0, 83.0, 48.0, 86.0, 99.0]);
    // The atlas regions lie on the brain: ch2 is non-zero in every box.
    let (_, crop) = ch2.crop_to_nonzero();
    for info in instances.values() {
        let cropped = crop.box_to_cropped(&info.bbox);
        assert!(
            box_inside(&cropped, crop.shape),
            "{:?} outside the brain crop {crop:?}",
            info.bbox
        );
    }
}

#[test]
fn resampling_real_data_matches_scipy_zoom() {
    // scipy.ndimage.zoom(x, out/in, order=1 or 0, grid_mode=True, mode='nearest') to spacing
    // [2.0, 2.5, 3.0]: shape [round(181/2) = 90 (half to even), 87, 60].
    let ch2 = read_nifti(&mricron("ch2.nii.gz")).unwrap();
    let r = ch2
        .resample([2.0, 2.5, 3.0], Interpolation::Linear)
        .unwrap();
    assert_eq!(r.shape(), [1, 90, 87, 60]);
    let s = r.stats();
    assert!(
        close(s.mean, 44.615515619171326, 1e-6) && close(s.std, 46.39509783003649, 1e-6),
        "{s:?}"
    );
    assert!(
        close(s.max, 249.9166717529297, 1e-6) && s.min == 0.0,
        "{s:?}"
    );
    for (idx, v) in [
        ([0, 45, 43, 30], 94.738_2_f32),
        ([0, 10, 20, 5], 19.565_798),
    ] {
        assert!(
            (r.data[idx] - v).abs() < 1e-4,
            "{idx:?}: {} vs scipy {v}",
            r.data[idx]
        );
    }
    let aal = read_nifti(&mricron("aal.nii.gz")).unwrap();
    let l = aal
        .resample([2.0, 2.5, 3.0], Interpolation::Nearest)
        .unwrap();
    assert_eq!(l.shape(), [1, 90, 87, 60]);
    assert_eq!(l.data.iter().map(|&v| v as f64).sum::<f64>(), 5085516.0);
    assert_eq!(l.data.iter().filter(|&&v| v == 58.0).count(), 2075);
    assert_eq!(l.data.iter().filter(|&&v| v == 116.0).count(), 49);
    assert_eq!(
        l.instance_boxes(BoxConvention::HalfOpen).unwrap().len(),
        116
    );
}

/// skimage's resize as nnU-Net v1 (and so nnDetection) calls it for an image channel, on raw
/// little-endian f32 files; prints `max |detlab − skimage|` and `max |input|`.
const SKIMAGE_RESIZE: &str = r#"
import sys
import numpy as np
from skimage.transform import resize
source, shape, ours, out_shape = sys.argv[1:5]
shape = tuple(int(v) for v in shape.split(","))
out_shape = tuple(int(v) for v in out_shape.split(","))
x = np.fromfile(source, dtype="<f4").reshape(shape)
reference = resize(x.astype(float), out_shape, order=3, mode="edge", anti_aliasing=False)
reference = reference.astype(np.float32).astype(np.float64)
detlab = np.fromfile(ours, dtype="<f4").reshape(out_shape).astype(np.float64)
print(np.abs(detlab - reference).max(), np.abs(x).max())
"#;

/// Cubic resampling (`preprocess`'s default, nnDetection's order 3) against skimage 0.26 on every
/// output voxel of two real volumes: ch2 downsampled to [2.0, 2.5, 3.0] mm and dipy's
/// anisotropic 4×4×5 mm file upsampled to 2 mm.
///
/// Tolerance `1e-5 · max |input|`: skimage (scipy) prefilters and interpolates in f64 and the
/// result is cast to f32; detlab filters each lane in f64 but stores the two intermediate arrays
/// between its three separable passes in f32. Each f32 store rounds by at most 2⁻²⁴ relative,
/// and the cubic prefilter and taps amplify a rounding by less than 2× per pass, so the
/// difference stays below ~1e-6 of the largest magnitude; 1e-5 leaves a margin of ten. It is far
/// below what a wrong convention would give: linear resampling differs by > 1 % of the range.
#[test]
fn cubic_resampling_of_real_data_matches_skimage() {
    let python = setup_data();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ch2",
            read_nifti(&mricron("ch2.nii.gz")).unwrap(),
            [2.0, 2.5, 3.0],
        ),
        (
            "aniso_vox",
            read_nifti(&dipy_data("aniso_vox.nii.gz")).unwrap(),
            [2.0, 2.0, 2.0],
        ),
    ];
    for (name, volume, spacing) in cases {
        let cubic = volume.resample(spacing, Interpolation::Cubic).unwrap();
        let linear = volume.resample(spacing, Interpolation::Linear).unwrap();
        let write = |file: &str, data: &ndarray::Array4<f32>| {
            let path = dir.path().join(file);
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let source = write("source.f32", &volume.data);
        let ours = write("detlab.f32", &cubic.data);
        let dims = |s: [usize; 3]| format!("{},{},{}", s[0], s[1], s[2]);
        let out = Command::new(&python)
            .args(["-c", SKIMAGE_RESIZE])
            .arg(&source)
            .arg(dims(volume.spatial_shape()))
            .arg(&ours)
            .arg(dims(cubic.spatial_shape()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP_DATA}", python.display()));
        assert!(
            out.status.success(),
            "skimage failed (is scikit-image in the venv? {SETUP_DATA}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<f64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let (worst, magnitude) = (numbers[0], numbers[1]);
        assert!(magnitude > 0.0, "{name}: empty input");
        assert!(
            worst <= 1e-5 * magnitude,
            "{name}: max |detlab - skimage| = {worst} over max |x| = {magnitude}"
        );
        let from_linear = cubic
            .data
            .iter()
            .zip(linear.data.iter())
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(
            from_linear > 0.01 * magnitude,
            "{name}: cubic and linear should differ ({from_linear})"
        );
        eprintln!("{name}: max |detlab - skimage| = {worst:.3e}, max |x| = {magnitude}");
    }
}

#[test]
fn itk_lsa_file_uses_the_sform_over_the_qform() {
    let path = itk_data("KmeansTest_T1UCharRaw.nii.gz");
    let info = read_nifti_header(&path).unwrap();
    assert_eq!((info.qform_code, info.sform_code), (2, 1));
    assert_eq!(info.affine_source, AffineSource::Sform);
    let vol = read_nifti(&path).unwrap();
    check(
        &vol,
        [1, 62, 128, 128],
        [3.0, 2.0, 2.0],
        [
            [-2.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 3.0, -254.0],
            [0.0, 2.0, 0.0, 0.0],
        ],
        [0.0, 255.0, 19.229813114289314, 39.06014470025947],
        ([0, 31, 64, 42], 70.0),
    );
}

#[test]
fn big_endian_int16_matches_nibabel() {
    let path = nibabel_data("anatomical.nii");
    let info = read_nifti_header(&path).unwrap();
    assert!(info.big_endian && !info.gzip);
    let vol = read_nifti(&path).unwrap();
    check(
        &vol,
        [1, 25, 41, 33],
        [2.0, 2.0, 2.0],
        [
            [-2.0, 0.0, 0.0, 32.0],
            [0.0, 2.0, 0.0, -40.0],
            [0.0, 0.0, 2.0, -16.0],
        ],
        [-610.0, 30393.0, 8401.066725794532, 2526.6561133919117],
        ([0, 12, 20, 11], 11713.0),
    );
}

#[test]
fn four_d_file_becomes_two_channels() {
    let vol = read_nifti(&nibabel_data("example4d.nii.gz")).unwrap();
    check(
        &vol,
        [2, 24, 96, 128],
        [2.199999, 2.0, 2.0],
        [
            [
                -2.0,
                6.714715653593746e-19,
                9.081024511081715e-18,
                117.8551025390625,
            ],
            [
                -6.714715653593746e-19,
                1.9737114906311035,
                -0.35552823543548584,
                -35.72294235229492,
            ],
            [
                8.25548088896093e-18,
                0.3232076168060303,
                2.171081781387329,
                -7.248798370361328,
            ],
        ],
        [0.0, 1162.0, 172.90811496310764, 238.768099508597],
        ([0, 12, 48, 42], 448.0),
    );
}

#[test]
fn oblique_affine_matches_nibabel_and_world_boxes_enclose() {
    let vol = read_nifti(&dipy_data("aniso_vox.nii.gz")).unwrap();
    check(
        &vol,
        [1, 24, 58, 58],
        [5.0, 4.0, 4.0],
        [
            [
                -3.999786615371704,
                -5.817553756060079e-06,
                -0.05163605883717537,
                118.76344299316406,
            ],
            [
                0.023993905633687973,
                -3.2563929557800293,
                -2.9034810066223145,
                132.19818115234375,
            ],
            [
                -0.03362608328461647,
                -2.322908639907837,
                4.070274353027344,
                22.819555282592773,
            ],
        ],
        [0.0, 2149.0, 96.1563614744352, 168.79628929037477],
        ([0, 12, 29, 19], 372.0),
    );
    // Every voxel centre of a box maps inside the box's world (enclosing) bounds.
    let b = [2.0, 10.0, 20.0, 8.0, 30.0, 40.0];
    let world = detlab::volume::boxes::boxes_to_world(&[b], &vol.affine)[0];
    for d in [2.0, 8.0] {
        for h in [10.0, 30.0] {
            for w in [20.0, 40.0] {
                let p = vol.voxel_to_world([d, h, w]);
                assert!((0..3).all(|k| p[k] >= world[k] - 1e-9 && p[k] <= world[k + 3] + 1e-9));
            }
        }
    }
    let back = detlab::volume::boxes::boxes_from_world(&[world], &vol.affine).unwrap()[0];
    assert!(
        (0..3).all(|k| back[k] <= b[k] + 1e-9 && back[k + 3] >= b[k + 3] - 1e-9),
        "{back:?} must enclose {b:?}"
    );
}

#[test]
fn nifti2_is_rejected_with_a_clear_message() {
    let path = nibabel_data("example_nifti2.nii.gz");
    let err = read_nifti(&path).unwrap_err();
    assert!(matches!(err, VolumeError::Nifti2 { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("example_nifti2.nii.gz") && msg.contains("NIfTI-2"),
        "{msg}"
    );
}

#[test]
fn files_written_by_detlab_read_back_identically_in_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let aniso = read_nifti(&dipy_data("aniso_vox.nii.gz")).unwrap();
    let aal = read_nifti(&mricron("aal.nii.gz")).unwrap();
    let img_path = dir.path().join("aniso_f32.nii.gz");
    let lab_path = dir.path().join("aal_u8.nii.gz");
    write_nifti(&aniso, &img_path, NiftiDtype::F32).unwrap();
    write_nifti(&aal, &lab_path, NiftiDtype::U8).unwrap();
    assert_eq!(read_nifti(&img_path).unwrap().data, aniso.data);
    // JSON built from plain Python floats and lists: numpy scalars print differently across
    // numpy versions (`repr` gives `np.float64(1.0)` under numpy 2).
    let script = "import json, sys, nibabel as nib, numpy as np\n\
         a = nib.load(sys.argv[1]); l = nib.load(sys.argv[2])\n\
         print(json.dumps({\n\
             'img_shape': list(a.shape), 'img_dtype': str(a.get_data_dtype()),\n\
             'img_sum': float(np.asanyarray(a.dataobj, dtype=np.float64).sum()),\n\
             'lab_shape': list(l.shape), 'lab_dtype': str(l.get_data_dtype()),\n\
             'lab_sum': int(np.asanyarray(l.dataobj).astype(np.int64).sum()),\n\
             'sform': a.affine[:3].ravel().tolist(),\n\
             'qform': a.get_qform()[:3].ravel().tolist(),\n\
             'zooms': [float(z) for z in a.header.get_zooms()]}))";
    let python = setup_data();
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&img_path)
        .arg(&lab_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP_DATA}", python.display()));
    assert!(
        out.status.success(),
        "nibabel ({}) failed: {}\n{SETUP_DATA}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("nibabel's output is not one JSON object ({e}): {text}"));
    let numbers = |key: &str| -> Vec<f64> {
        got[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not a list: {got}"))
            .iter()
            .map(|v| {
                v.as_f64()
                    .unwrap_or_else(|| panic!("{key}: {v} is not a number"))
            })
            .collect()
    };
    assert_eq!(numbers("img_shape"), vec![58.0, 58.0, 24.0], "{got}");
    assert_eq!(got["img_dtype"], "float32", "{got}");
    // Integer-valued voxels: the sum is exact in any order.
    let sum: f64 = aniso.data.iter().map(|&v| v as f64).sum();
    assert_eq!(got["img_sum"].as_f64(), Some(sum), "{got}");
    assert_eq!(numbers("lab_shape"), vec![181.0, 217.0, 181.0], "{got}");
    assert_eq!(got["lab_dtype"], "uint8", "{got}");
    let label_sum: i64 = aal.data.iter().map(|&v| v as i64).sum();
    assert_eq!(got["lab_sum"].as_i64(), Some(label_sum), "{got}");
    let (sform, qform) = (numbers("sform"), numbers("qform"));
    assert_eq!((sform.len(), qform.len()), (12, 12), "{got}");
    for (k, (s, q)) in sform.iter().zip(&qform).enumerate() {
        let want = aniso.affine[k / 4][k % 4];
        assert!((s - want).abs() < 1e-5, "sform entry {k}: {s} vs {want}");
        assert!((q - want).abs() < 1e-3, "qform entry {k}: {q} vs {want}");
    }
    assert_eq!(numbers("zooms"), vec![4.0, 4.0, 5.0]);
}
