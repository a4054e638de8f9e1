//! Volume primitives: loading and saving NIfTI, resampling, cropping, normalisation,
//! statistics, and boxes from label maps.

use crate::script::convert::{
    ScriptResult, as_f64, at, check_options, f64_triple, runtime_error, to_script,
};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use crate::volume::boxes::{self, BoxConvention};
use crate::volume::normalize::{self, CtNormalization, IntensityStats};
use crate::volume::ops::{self, Arithmetic, Comparison, Connectivity, Operand};
use crate::volume::{Interpolation, NiftiDtype, Volume};
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

/// The interpolation option of `resample` and `resample_to_shape`.
const ORDER: Extra = Extra::new(
    "order",
    "Int or String",
    "1",
    "Interpolation: 1 or \"linear\", 3 or \"cubic\" (spline, skimage's resize as nnDetection), 0 or \"nearest\" (for label maps).",
);

/// The connectivity option of `connected_components` and `labels_to_instances`.
const CONNECTIVITY: Extra = Extra::new(
    "connectivity",
    "Int",
    "26",
    "Neighbours that connect voxels: 6 (faces), 18 (and edges) or 26 (and corners).",
);

static RESAMPLE_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::extras_only("resample", &[ORDER]));

static RESAMPLE_TO_SHAPE_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::extras_only("resample_to_shape", &[ORDER]));

static SAVE_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "save",
        &[Extra::new(
            "dtype",
            "\"f32\" | \"f64\" | \"u8\" | \"i16\" | \"u16\" | \"i32\"",
            "\"f32\"",
            "Voxel type of the file (integer types for label maps).",
        )],
    )
});

static NORMALIZE_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "normalize",
        &[
            Extra::new(
                "scheme",
                "\"zscore\" | \"ct\"",
                "\"zscore\"",
                "Per-channel z-score, or nnDetection's CT scheme (clip to foreground percentiles, then z-score).",
            ),
            Extra::new(
                "nonzero_mask",
                "Bool",
                "false",
                "zscore: statistics of the body only (voxels not 0).",
            ),
            Extra::new(
                "mask",
                "Volume",
                "()",
                "ct: the foreground is where this label map is > 0.",
            ),
            Extra::new(
                "threshold",
                "Float",
                "()",
                "ct: the foreground is the voxels above this (e.g. -500 HU).",
            ),
            Extra::new(
                "stats",
                "Map",
                "()",
                "ct: dataset statistics #{mean, std, median, min, max, percentile_00_5, percentile_99_5, count}.",
            ),
            Extra::new("lower", "Float", "0.5", "ct: lower clip percentile."),
            Extra::new("upper", "Float", "99.5", "ct: upper clip percentile."),
        ],
    )
});

static LABEL_BOXES_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "label_boxes",
        &[Extra::new(
            "convention",
            "\"half_open\" | \"nndet\"",
            "\"half_open\"",
            "Box convention: [min, max + 1) or nnDetection's (min − 1, max + 1).",
        )],
    )
});

static COMPONENTS_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::extras_only("connected_components", &[CONNECTIVITY]));

static INSTANCES_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "labels_to_instances",
        &[
            CONNECTIVITY,
            Extra::new(
                "min_voxels",
                "Int",
                "0",
                "Drop smaller components (nnDetection's min_num_voxel).",
            ),
        ],
    )
});

/// The script-side handle of a volume: cheap to copy, immutable (operations return new ones).
pub type VolumeRef = Arc<Volume>;

/// A box as a script array of six floats.
pub fn box_to_array(b: &boxes::Box3) -> Dynamic {
    Dynamic::from_array(b.iter().map(|&v| Dynamic::from_float(v)).collect())
}

/// Read a script array of six numbers as a box, naming `what` in errors.
pub fn array_to_box(
    ctx: &NativeCallContext,
    what: &str,
    value: &Dynamic,
) -> ScriptResult<boxes::Box3> {
    let arr = value.read_lock::<Array>().ok_or_else(|| {
        runtime_error(
            format!("{what} must be an array [d0, h0, w0, d1, h1, w1]"),
            ctx.call_position(),
        )
    })?;
    let nums: Vec<f64> = arr
        .iter()
        .map(|v| {
            as_f64(v).ok_or_else(|| {
                runtime_error(format!("{what} must contain numbers"), ctx.call_position())
            })
        })
        .collect::<ScriptResult<_>>()?;
    boxes::validate(&nums).map_err(|e| runtime_error(format!("{what}: {e}"), ctx.call_position()))
}

/// Read an array of boxes.
pub fn array_to_boxes(
    ctx: &NativeCallContext,
    what: &str,
    value: &Array,
) -> ScriptResult<Vec<boxes::Box3>> {
    value
        .iter()
        .enumerate()
        .map(|(i, b)| array_to_box(ctx, &format!("{what}[{i}]"), b))
        .collect()
}

fn ints(values: &[usize]) -> Dynamic {
    Dynamic::from_array(
        values
            .iter()
            .map(|&v| Dynamic::from_int(v as i64))
            .collect(),
    )
}

fn floats(values: &[f64]) -> Dynamic {
    Dynamic::from_array(values.iter().map(|&v| Dynamic::from_float(v)).collect())
}

fn order_from(
    ctx: &NativeCallContext,
    set: &OptionSet,
    options: &Map,
) -> ScriptResult<Interpolation> {
    check_options(ctx, set, options)?;
    match options.get("order") {
        None => Ok(Interpolation::Linear),
        Some(v) => {
            let name = if let Ok(i) = v.as_int() {
                i.to_string()
            } else {
                v.to_string()
            };
            Interpolation::from_name(&name).map_err(at(ctx))
        }
    }
}

fn usize_triple(ctx: &NativeCallContext, what: &str, value: &Array) -> ScriptResult<[usize; 3]> {
    let v = f64_triple(ctx, what, value)?;
    if v.iter().any(|x| *x < 0.0 || x.fract() != 0.0) {
        return Err(runtime_error(
            format!("{what} must be three non-negative integers"),
            ctx.call_position(),
        ));
    }
    Ok([v[0] as usize, v[1] as usize, v[2] as usize])
}

fn convention_from(ctx: &NativeCallContext, options: &Map) -> ScriptResult<BoxConvention> {
    check_options(ctx, &LABEL_BOXES_OPTIONS, options)?;
    match options.get("convention") {
        None => Ok(BoxConvention::HalfOpen),
        Some(v) => BoxConvention::from_name(&v.to_string()).map_err(at(ctx)),
    }
}

fn normalize_with(ctx: &NativeCallContext, v: &Volume, mut options: Map) -> ScriptResult<Volume> {
    check_options(ctx, &NORMALIZE_OPTIONS, &options)?;
    let scheme = options
        .remove("scheme")
        .map(|s| s.to_string())
        .unwrap_or_else(|| "zscore".into());
    let mask = options.remove("mask");
    let lower = options
        .remove("lower")
        .map(|x| as_f64(&x).unwrap_or(f64::NAN))
        .unwrap_or(0.5);
    let upper = options
        .remove("upper")
        .map(|x| as_f64(&x).unwrap_or(f64::NAN))
        .unwrap_or(99.5);
    let threshold = options.remove("threshold").and_then(|x| as_f64(&x));
    let stats = options.remove("stats");
    let nonzero = options
        .remove("nonzero_mask")
        .map(|x| x.as_bool().unwrap_or(false))
        .unwrap_or(false);
    match scheme.as_str() {
        "zscore" | "mri" | "z_score" => {
            let mask = if nonzero {
                Some(v.nonzero_mask(true))
            } else {
                None
            };
            normalize::normalize_zscore(v, mask.as_ref()).map_err(at(ctx))
        }
        "ct" => {
            let params = if let Some(s) = stats {
                let s: IntensityStats =
                    crate::script::convert::options(ctx, "normalize: stats", s.cast::<Map>())?;
                CtNormalization::from_stats(&s)
            } else {
                let samples: Vec<f32> = if let Some(m) = mask {
                    let m = m.try_cast::<VolumeRef>().ok_or_else(|| {
                        runtime_error(
                            "normalize: `mask` must be a Volume (a label map)",
                            ctx.call_position(),
                        )
                    })?;
                    let per_channel = normalize::foreground_samples(v, &m, 1).map_err(at(ctx))?;
                    per_channel.into_iter().flatten().collect()
                } else if let Some(t) = threshold {
                    (0..v.channels())
                        .flat_map(|c| {
                            normalize::threshold_samples(
                                v.data.index_axis(ndarray::Axis(0), c),
                                t as f32,
                                1,
                            )
                        })
                        .collect()
                } else {
                    return Err(runtime_error(
                        "normalize: CT needs foreground statistics: pass `mask` (a label map), `threshold` (e.g. -500 HU) or `stats` (dataset statistics)",
                        ctx.call_position(),
                    ));
                };
                CtNormalization::from_samples(&samples, lower, upper).map_err(at(ctx))?
            };
            normalize::normalize_ct_with(v, &params).map_err(at(ctx))
        }
        other => Err(runtime_error(
            format!("normalize: unknown scheme \"{other}\"; use \"ct\" or \"zscore\""),
            ctx.call_position(),
        )),
    }
}

/// Register the volume package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    engine.register_type_with_name::<VolumeRef>("Volume");
    engine.register_fn("to_string", |v: &mut VolumeRef| describe(v));
    engine.register_fn("to_debug", |v: &mut VolumeRef| describe(v));
    let mut r = Registrar::new(
        engine,
        help,
        "volume",
        "NIfTI volumes [C, D, H, W]: load, resample, crop, normalise",
    );
    for set in [
        &RESAMPLE_OPTIONS,
        &RESAMPLE_TO_SHAPE_OPTIONS,
        &SAVE_OPTIONS,
        &NORMALIZE_OPTIONS,
        &LABEL_BOXES_OPTIONS,
        &COMPONENTS_OPTIONS,
        &INSTANCES_OPTIONS,
    ] {
        r.options((**set).clone());
    }

    r.func(
        "load_volume(path: String) -> Volume",
        "Load a NIfTI-1 file (.nii or .nii.gz) as a Volume [C, D, H, W] (4D files become channels).\n\
         W is the NIfTI i axis (fastest in the file); spacing is [sd, sh, sw] in mm;\n\
         scl_slope/scl_inter are applied; the affine is sform, else qform, else pixdim.",
        "let ct = load_volume(\"data/case_0000.nii.gz\");\nprint(ct.shape);     // [1, D, H, W]",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<VolumeRef> {
            crate::volume::read_nifti(Path::new(path)).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.func(
        "load_volume(paths: Array) -> Volume",
        "Load several single-modality files (case_0000, case_0001, …) stacked as channels;\n\
         their shapes and affines must agree.",
        "let mr = load_volume([\"case_0000.nii.gz\", \"case_0001.nii.gz\"]);\nprint(mr.shape[0]);  // 2 channels",
        |ctx: NativeCallContext, paths: Array| -> ScriptResult<VolumeRef> {
            let paths: Vec<PathBuf> = paths.iter().map(|p| PathBuf::from(p.to_string())).collect();
            crate::volume::read_channels(&paths).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.func(
        "volume(data: Array, spacing: Array) -> Volume",
        "Build a Volume from nested arrays [D][H][W] (one channel) and a spacing [sd, sh, sw] in mm.",
        "let v = volume([[[0.0, 1.0], [2.0, 3.0]]], [1.0, 1.0, 1.0]);\nprint(v.shape);   // [1, 1, 2, 2]",
        |ctx: NativeCallContext, data: Array, spacing: Array| -> ScriptResult<VolumeRef> {
            let spacing = f64_triple(&ctx, "spacing", &spacing)?;
            let err = |m: &str| runtime_error(format!("volume: {m}"), ctx.call_position());
            let d = data.len();
            let mut h = 0;
            let mut w = 0;
            let mut values = Vec::new();
            for (zi, plane) in data.iter().enumerate() {
                let plane = plane.read_lock::<Array>().ok_or_else(|| err("data must be nested arrays [D][H][W]"))?;
                if zi == 0 {
                    h = plane.len();
                } else if plane.len() != h {
                    return Err(err(&format!("slice {zi} has {} rows, slice 0 has {h}", plane.len())));
                }
                for (yi, row) in plane.iter().enumerate() {
                    let row = row.read_lock::<Array>().ok_or_else(|| err("data must be nested arrays [D][H][W]"))?;
                    if zi == 0 && yi == 0 {
                        w = row.len();
                    } else if row.len() != w {
                        return Err(err(&format!("row [{zi}][{yi}] has {} values, row [0][0] has {w}", row.len())));
                    }
                    for v in row.iter() {
                        values.push(as_f64(v).ok_or_else(|| err("values must be numbers"))? as f32);
                    }
                }
            }
            let array = ndarray::Array4::from_shape_vec((1, d, h, w), values).map_err(|e| err(&e.to_string()))?;
            Ok(Arc::new(Volume::from_array(array, spacing)))
        },
    );
    r.getter(
        "Volume",
        "shape",
        "[C, D, H, W]",
        "The shape [C, D, H, W] (ints).",
        |v: &mut VolumeRef| ints(&v.shape()),
    );
    r.getter(
        "Volume",
        "spacing",
        "[sd, sh, sw]",
        "The voxel spacing [sd, sh, sw] in mm.",
        |v: &mut VolumeRef| floats(&v.spacing),
    );
    r.getter(
        "Volume",
        "affine",
        "4×4 array",
        "The voxel-to-RAS affine (acts on (w, h, d, 1), NIfTI's (i, j, k, 1)).",
        |v: &mut VolumeRef| Dynamic::from_array(v.affine.iter().map(|row| floats(row)).collect()),
    );
    r.getter(
        "Volume",
        "source",
        "[String]",
        "The file(s) the volume was read from.",
        |v: &mut VolumeRef| {
            Dynamic::from_array(
                v.source
                    .iter()
                    .map(|p| Dynamic::from(p.display().to_string()))
                    .collect(),
            )
        },
    );
    r.method(
        "Volume",
        "stats() -> Map",
        "Min, max, mean and (population) std over all voxels: #{min, max, mean, std}.",
        "let s = ct.stats();\nprint(`mean ${s.mean} HU`);",
        |ctx: NativeCallContext, v: &mut VolumeRef| -> ScriptResult<Dynamic> {
            to_script(&ctx, &v.stats())
        },
    );
    r.method(
        "Volume",
        "resample(spacing: Array) -> Volume",
        "Resample to a target spacing [sd, sh, sw] mm with linear interpolation (order 1).\n\
         Convention: scipy zoom(order=1, grid_mode=True) = torch trilinear align_corners=False\n\
         = nnU-Net's order-1 resampler; the new size is round(n * old / new) per axis.",
        "let iso = ct.resample([1.0, 1.0, 1.0]);",
        |ctx: NativeCallContext, v: &mut VolumeRef, spacing: Array| -> ScriptResult<VolumeRef> {
            let s = f64_triple(&ctx, "spacing", &spacing)?;
            v.resample(s, Interpolation::Linear)
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "resample(spacing: Array, options: Map) -> Volume",
        "Resample with options, e.g. nearest-neighbour for label maps.",
        "let labels_iso = labels.resample([1.0, 1.0, 1.0], #{order: 0});",
        |ctx: NativeCallContext,
         v: &mut VolumeRef,
         spacing: Array,
         options: Map|
         -> ScriptResult<VolumeRef> {
            let s = f64_triple(&ctx, "spacing", &spacing)?;
            let order = order_from(&ctx, &RESAMPLE_OPTIONS, &options)?;
            v.resample(s, order).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "resample_to_shape(shape: Array, options: Map) -> Volume",
        "Resample to an explicit spatial shape [D, H, W].",
        "let small = ct.resample_to_shape([32, 64, 64], #{order: 1});",
        |ctx: NativeCallContext,
         v: &mut VolumeRef,
         shape: Array,
         options: Map|
         -> ScriptResult<VolumeRef> {
            let s = usize_triple(&ctx, "shape", &shape)?;
            let order = order_from(&ctx, &RESAMPLE_TO_SHAPE_OPTIONS, &options)?;
            v.resample_to_shape(s, order)
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "save(path: String)",
        "Write the volume as NIfTI (.nii or .nii.gz, float32), atomically; parent folders are created.",
        "iso.save(\"runs/iso.nii.gz\");",
        |ctx: NativeCallContext, v: &mut VolumeRef, path: &str| -> ScriptResult<()> {
            create_parent(&ctx, path)?;
            crate::volume::write_nifti(v, Path::new(path), NiftiDtype::F32).map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "save(path: String, options: Map)",
        "Write the volume as NIfTI with options (an integer voxel type for label maps).",
        "labels.save(\"runs/labels.nii.gz\", #{dtype: \"i16\"});",
        |ctx: NativeCallContext, v: &mut VolumeRef, path: &str, options: Map| -> ScriptResult<()> {
            check_options(&ctx, &SAVE_OPTIONS, &options)?;
            let dtype = match options.get("dtype") {
                Some(d) => NiftiDtype::from_name(&d.to_string()).map_err(at(&ctx))?,
                None => NiftiDtype::F32,
            };
            create_parent(&ctx, path)?;
            crate::volume::write_nifti(v, Path::new(path), dtype).map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "crop_nonzero() -> Map",
        "Crop to the bounding box of voxels that are non-zero in any channel.\n\
         Returns #{volume, start: [d, h, w], original_shape}: add `start` to map boxes back.",
        "let c = ct.crop_nonzero();\nprint(c.start);",
        |v: &mut VolumeRef| -> Map {
            let (cropped, info) = v.crop_to_nonzero();
            let mut m = Map::new();
            m.insert("volume".into(), Dynamic::from(Arc::new(cropped)));
            m.insert("start".into(), ints(&info.start));
            m.insert("original_shape".into(), ints(&info.original_shape));
            m
        },
    );
    r.method(
        "Volume",
        "crop(start: Array, size: Array) -> Volume",
        "Crop (or zero-pad where it leaves the volume) a box starting at voxel [d, h, w] with size [D, H, W].",
        "let patch = ct.crop([10, 20, 20], [32, 32, 32]);",
        |ctx: NativeCallContext, v: &mut VolumeRef, start: Array, size: Array| -> ScriptResult<VolumeRef> {
            let s = f64_triple(&ctx, "start", &start)?;
            let z = usize_triple(&ctx, "size", &size)?;
            Ok(Arc::new(v.crop_or_pad([s[0] as i64, s[1] as i64, s[2] as i64], z, 0.0)))
        },
    );
    r.method(
        "Volume",
        "crop(start: Array, size: Array, pad_value: f64) -> Volume",
        "Crop or pad a box; voxels outside the volume get `pad_value` (e.g. -1000 for CT air).",
        "let patch = ct.crop([-8, 0, 0], [32, 32, 32], -1000.0);",
        |ctx: NativeCallContext,
         v: &mut VolumeRef,
         start: Array,
         size: Array,
         pad: Dynamic|
         -> ScriptResult<VolumeRef> {
            let s = f64_triple(&ctx, "start", &start)?;
            let z = usize_triple(&ctx, "size", &size)?;
            let pad = as_f64(&pad)
                .ok_or_else(|| runtime_error("pad_value must be a number", ctx.call_position()))?;
            Ok(Arc::new(v.crop_or_pad(
                [s[0] as i64, s[1] as i64, s[2] as i64],
                z,
                pad as f32,
            )))
        },
    );
    r.method(
        "Volume",
        "normalize(options: Map) -> Volume",
        "Intensity normalisation.\n\
         #{scheme: \"zscore\"}: per-channel z-score (+1e-8).\n\
         #{scheme: \"ct\", mask: labels}: clip to the 0.5/99.5 percentiles of the foreground (mask > 0),\n\
         then z-score with the foreground mean/std (nnDetection's CT scheme); the foreground comes\n\
         from one of `mask`, `threshold` or `stats`. NaN voxels are an error, never silently\n\
         propagated.",
        "let n = ct.normalize(#{scheme: \"ct\", threshold: -500.0});\nprint(n.stats());",
        |ctx: NativeCallContext, v: &mut VolumeRef, options: Map| -> ScriptResult<VolumeRef> {
            normalize_with(&ctx, v, options).map(Arc::new)
        },
    );
    r.method(
        "Volume",
        "check_finite()",
        "Stop with an error naming the file and the first bad voxel if any voxel is NaN or ±Inf.",
        "ct.check_finite();",
        |ctx: NativeCallContext, v: &mut VolumeRef| -> ScriptResult<()> {
            v.check_finite().map_err(at(&ctx))
        },
    );
    r.method(
        "Volume",
        "channel(index: i64) -> Volume",
        "One channel of a multi-channel volume, as a one-channel Volume.",
        "let t2 = mr.channel(1);",
        |ctx: NativeCallContext, v: &mut VolumeRef, index: i64| -> ScriptResult<VolumeRef> {
            if index < 0 || index as usize >= v.channels() {
                return Err(runtime_error(
                    format!(
                        "channel {index} does not exist: the volume has {} channel(s)",
                        v.channels()
                    ),
                    ctx.call_position(),
                ));
            }
            let data = v
                .data
                .slice(ndarray::s![index as usize..index as usize + 1, .., .., ..])
                .to_owned();
            Ok(Arc::new(Volume {
                data,
                spacing: v.spacing,
                affine: v.affine,
                source: v.source.clone(),
            }))
        },
    );
    r.method(
        "Volume",
        "value(index: Array) -> f64",
        "The voxel value at [d, h, w] (channel 0) or [c, d, h, w].",
        "print(ct.value([10, 64, 64]));",
        |ctx: NativeCallContext, v: &mut VolumeRef, index: Array| -> ScriptResult<f64> {
            let idx: Vec<i64> = index.iter().map(|x| x.as_int().unwrap_or(-1)).collect();
            let full = match idx.len() {
                3 => [0, idx[0], idx[1], idx[2]],
                4 => [idx[0], idx[1], idx[2], idx[3]],
                n => {
                    return Err(runtime_error(
                        format!("value: index needs 3 or 4 integers, got {n}"),
                        ctx.call_position(),
                    ));
                }
            };
            let shape = v.shape();
            if full
                .iter()
                .zip(shape)
                .any(|(&i, n)| i < 0 || i as usize >= n)
            {
                return Err(runtime_error(
                    format!("value: index {full:?} is outside the shape {shape:?}"),
                    ctx.call_position(),
                ));
            }
            Ok(v.data[[
                full[0] as usize,
                full[1] as usize,
                full[2] as usize,
                full[3] as usize,
            ]] as f64)
        },
    );
    r.method(
        "Volume",
        "voxel_to_world(position: Array) -> Array",
        "Map a voxel position [d, h, w] to RAS world coordinates [x, y, z] in mm through the affine.",
        "print(ct.voxel_to_world([0, 0, 0]));",
        |ctx: NativeCallContext, v: &mut VolumeRef, position: Array| -> ScriptResult<Dynamic> {
            let p = f64_triple(&ctx, "position", &position)?;
            Ok(floats(&v.voxel_to_world(p)))
        },
    );
    r.func(
        "label_boxes(labels: Volume) -> Map",
        "Boxes of every label value > 0 of a label/instance map, keyed by the value as a string:\n\
         [d0, h0, w0, d1, h1, w1] with half-open voxel bounds (min, max + 1).",
        "let boxes = label_boxes(load_volume(\"labelsTr/case.nii.gz\"));\nprint(boxes[\"1\"]);",
        |ctx: NativeCallContext, labels: VolumeRef| -> ScriptResult<Map> {
            label_boxes_map(&ctx, &labels, BoxConvention::HalfOpen)
        },
    );
    r.func(
        "label_boxes(labels: Volume, options: Map) -> Map",
        "Boxes of every label with options, e.g. nnDetection's box convention.",
        "let boxes = label_boxes(labels, #{convention: \"nndet\"});",
        |ctx: NativeCallContext, labels: VolumeRef, options: Map| -> ScriptResult<Map> {
            let convention = convention_from(&ctx, &options)?;
            label_boxes_map(&ctx, &labels, convention)
        },
    );
    r.func(
        "boxes_to_world(boxes: Array, volume: Volume) -> Array",
        "Convert voxel boxes to world (RAS mm) boxes through the volume's affine\n\
         (for oblique affines, the axis-aligned box enclosing the transformed corners).",
        "let mm = boxes_to_world([[0, 0, 0, 10, 10, 10]], ct);",
        |ctx: NativeCallContext, b: Array, volume: VolumeRef| -> ScriptResult<Array> {
            let b = array_to_boxes(&ctx, "boxes", &b)?;
            Ok(boxes::boxes_to_world(&b, &volume.affine)
                .iter()
                .map(box_to_array)
                .collect())
        },
    );
    r.func(
        "box_iou(a: Array, b: Array) -> f64",
        "Intersection over union of two boxes [d0, h0, w0, d1, h1, w1] (volume = prod(max - min)).",
        "print(box_iou([0, 0, 0, 2, 2, 2], [1, 0, 0, 3, 2, 2]));   // 0.333…",
        |ctx: NativeCallContext, a: Dynamic, b: Dynamic| -> ScriptResult<f64> {
            Ok(boxes::iou(
                &array_to_box(&ctx, "a", &a)?,
                &array_to_box(&ctx, "b", &b)?,
            ))
        },
    );
    register_ops(&mut r);
}

/// Create the parent folders of `path` (as `save_json` does).
fn create_parent(ctx: &NativeCallContext, path: &str) -> ScriptResult<()> {
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            runtime_error(
                format!("cannot create folder {}: {e}", parent.display()),
                ctx.call_position(),
            )
        })?;
    }
    Ok(())
}

const ARITHMETIC_DOC: &str = "Voxel-wise arithmetic of Volumes and numbers: `ct * 2.0`, `2 * ct`, `a + b`, `-v`.\n\
     A number may stand on either side (int or float); two volumes must share a grid (same\n\
     [D, H, W], spacing and affine; a one-channel volume applies to every channel of the\n\
     other). Computed in f64, stored as f32; x / 0 is ±inf. The result keeps the left\n\
     volume's spacing and affine.";

const COMPARISON_DOC: &str = "Voxel-wise comparison into a 0/1 mask: `ct > 300.0`, `labels == 2`, `a <= b`.\n\
     A number may stand on either side (int or float); two volumes must share a grid. The\n\
     number is rounded to f32 (the voxel type) first; comparisons with NaN are false (`!=`:\n\
     true).";

fn number(value: &Dynamic) -> Option<f64> {
    if value.is_int() || value.is_float() {
        as_f64(value)
    } else {
        None
    }
}

fn operand<'a>(
    ctx: &NativeCallContext,
    what: &str,
    value: &'a Dynamic,
    volume: &'a Option<VolumeRef>,
) -> ScriptResult<Operand<'a>> {
    if let Some(v) = volume {
        return Ok(Operand::Volume(v));
    }
    number(value).map(Operand::Number).ok_or_else(|| {
        runtime_error(
            format!(
                "where: `{what}` must be a Volume or a number, got {}",
                value.type_name()
            ),
            ctx.call_position(),
        )
    })
}

fn connectivity_from(
    ctx: &NativeCallContext,
    set: &OptionSet,
    options: &Map,
) -> ScriptResult<Connectivity> {
    check_options(ctx, set, options)?;
    let what = &set.primitive;
    match options.get("connectivity") {
        None => Ok(Connectivity::default()),
        Some(v) => {
            let n = v.as_int().map_err(|_| {
                runtime_error(
                    format!(
                        "{what}: `connectivity` must be 6, 18 or 26, got {}",
                        v.type_name()
                    ),
                    ctx.call_position(),
                )
            })?;
            Connectivity::from_neighbours(n)
                .map_err(|e| runtime_error(format!("{what}: {e}"), ctx.call_position()))
        }
    }
}

fn instances_map(
    volume: crate::volume::Volume,
    classes: std::collections::BTreeMap<u32, u32>,
) -> Map {
    let mut m = Map::new();
    m.insert("count".into(), Dynamic::from_int(classes.len() as i64));
    m.insert("instances".into(), Dynamic::from(Arc::new(volume)));
    m.insert(
        "classes".into(),
        Dynamic::from_map(
            classes
                .into_iter()
                .map(|(id, class)| (id.to_string().into(), Dynamic::from_int(class as i64)))
                .collect(),
        ),
    );
    m
}

/// Operators (`+ - * /`, comparisons, unary minus), `where`, connected components and
/// label-map conversion.
fn register_ops(r: &mut Registrar) {
    let arithmetic = [
        (
            Arithmetic::Add,
            "let shifted = ct + 1024;   // also 1024 + ct, ct + other",
        ),
        (
            Arithmetic::Subtract,
            "let diff = a - b;   // also a - 1.0, 1000.0 - a, -a",
        ),
        (
            Arithmetic::Multiply,
            "let doubled = ct * 2.0;   // also 2 * ct, mask * ct",
        ),
        (
            Arithmetic::Divide,
            "let ratio = t1 / t2;   // also ct / 1000, 1.0 / ct",
        ),
    ];
    for (op, example) in arithmetic {
        let sym = op.symbol();
        r.func(
            &format!("{sym}(a: Volume, b: Volume) -> Volume"),
            ARITHMETIC_DOC,
            example,
            move |ctx: NativeCallContext, a: VolumeRef, b: VolumeRef| -> ScriptResult<VolumeRef> {
                ops::arithmetic(&a, op, &b).map(Arc::new).map_err(at(&ctx))
            },
        );
        r.func(
            &format!("{sym}(a: Volume, b: f64) -> Volume"),
            "",
            "",
            move |a: VolumeRef, b: f64| -> VolumeRef {
                Arc::new(ops::arithmetic_number(&a, op, b))
            },
        );
        r.func(
            &format!("{sym}(a: Volume, b: i64) -> Volume"),
            "",
            "",
            move |a: VolumeRef, b: i64| -> VolumeRef {
                Arc::new(ops::arithmetic_number(&a, op, b as f64))
            },
        );
        r.func(
            &format!("{sym}(a: f64, b: Volume) -> Volume"),
            "",
            "",
            move |a: f64, b: VolumeRef| -> VolumeRef {
                Arc::new(ops::number_arithmetic(a, op, &b))
            },
        );
        r.func(
            &format!("{sym}(a: i64, b: Volume) -> Volume"),
            "",
            "",
            move |a: i64, b: VolumeRef| -> VolumeRef {
                Arc::new(ops::number_arithmetic(a as f64, op, &b))
            },
        );
    }
    r.func(
        "-(a: Volume) -> Volume",
        "",
        "",
        |a: VolumeRef| -> VolumeRef { Arc::new(ops::map(&a, |x| -x)) },
    );
    let comparisons = [
        (
            Comparison::Greater,
            "let bone = ct > 300.0;   // a 0/1 mask",
        ),
        (Comparison::GreaterOrEqual, "let body = ct >= -500;"),
        (Comparison::Less, "let air = ct < -900.0;"),
        (Comparison::LessOrEqual, "let low = ct <= 0;"),
        (
            Comparison::Equal,
            "let liver = labels == 2;   // one class of a label map",
        ),
        (Comparison::NotEqual, "let foreground = labels != 0;"),
    ];
    for (cmp, example) in comparisons {
        let sym = cmp.symbol();
        r.func(
            &format!("{sym}(a: Volume, b: Volume) -> Volume"),
            COMPARISON_DOC,
            example,
            move |ctx: NativeCallContext, a: VolumeRef, b: VolumeRef| -> ScriptResult<VolumeRef> {
                ops::compare(&a, cmp, &b).map(Arc::new).map_err(at(&ctx))
            },
        );
        r.func(
            &format!("{sym}(a: Volume, b: f64) -> Volume"),
            "",
            "",
            move |a: VolumeRef, b: f64| -> VolumeRef { Arc::new(ops::compare_number(&a, cmp, b)) },
        );
        r.func(
            &format!("{sym}(a: Volume, b: i64) -> Volume"),
            "",
            "",
            move |a: VolumeRef, b: i64| -> VolumeRef {
                Arc::new(ops::compare_number(&a, cmp, b as f64))
            },
        );
        r.func(
            &format!("{sym}(a: f64, b: Volume) -> Volume"),
            "",
            "",
            move |a: f64, b: VolumeRef| -> VolumeRef {
                Arc::new(ops::compare_number(&b, cmp.swapped(), a))
            },
        );
        r.func(
            &format!("{sym}(a: i64, b: Volume) -> Volume"),
            "",
            "",
            move |a: i64, b: VolumeRef| -> VolumeRef {
                Arc::new(ops::compare_number(&b, cmp.swapped(), a as f64))
            },
        );
    }
    r.func(
        "where(mask: Volume, a: Volume|number, b: Volume|number) -> Volume",
        "Voxels of `a` where `mask` is not 0, else of `b` (numpy's where).\n\
         `a` and `b` are Volumes on the mask's grid or numbers (int or float); NaN in the mask\n\
         counts as not 0.",
        "let clipped = where(ct > 1000.0, 1000.0, ct);\nlet body = where(labels > 0, ct, -1000);",
        |ctx: NativeCallContext,
         mask: VolumeRef,
         a: Dynamic,
         b: Dynamic|
         -> ScriptResult<VolumeRef> {
            let va = a.clone().try_cast::<VolumeRef>();
            let vb = b.clone().try_cast::<VolumeRef>();
            let oa = operand(&ctx, "a", &a, &va)?;
            let ob = operand(&ctx, "b", &b, &vb)?;
            ops::select(&mask, oa, ob).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.func(
        "connected_components(mask: Volume) -> Volume",
        "The connected components of a one-channel mask as an instance map 1..N.\n\
         Mask voxels are those not 0; components are numbered in C order of their first voxel,\n\
         like scipy.ndimage.label. Connectivity 26 (faces, edges and corners: scipy with\n\
         structure np.ones((3, 3, 3)), as nnDetection); scipy's own default is 6. N is\n\
         `.stats().max`.",
        "let objects = connected_components(ct > 300.0);\nprint(label_boxes(objects));",
        |ctx: NativeCallContext, mask: VolumeRef| -> ScriptResult<VolumeRef> {
            ops::connected_components(&mask, Connectivity::default())
                .map(|(v, _)| Arc::new(v))
                .map_err(at(&ctx))
        },
    );
    r.func(
        "connected_components(mask: Volume, options: Map) -> Volume",
        "Connected components with options (another connectivity).",
        "let objects = connected_components(mask, #{connectivity: 6});",
        |ctx: NativeCallContext, mask: VolumeRef, options: Map| -> ScriptResult<VolumeRef> {
            let c = connectivity_from(&ctx, &COMPONENTS_OPTIONS, &options)?;
            ops::connected_components(&mask, c)
                .map(|(v, _)| Arc::new(v))
                .map_err(at(&ctx))
        },
    );
    r.func(
        "labels_to_instances(labels: Volume) -> Map",
        "A semantic label map as nnDetection's instances: #{instances, classes, count}.\n\
         As nnDetection's seg_to_instances: the 26-connected components of each class value\n\
         (1..K; 0 and negative values are background) in ascending order become instances 1..N.\n\
         `instances` is the instance map, `classes` maps \"1\" → class index (value − 1, 0-based,\n\
         as labelsTr/<case>.json stores it), `count` is N.",
        "let r = labels_to_instances(load_volume(\"seg.nii.gz\"));\n\
         r.instances.save(\"raw_splitted/labelsTr/case.nii.gz\", #{dtype: \"i16\"});\n\
         save_json(#{instances: r.classes}, \"raw_splitted/labelsTr/case.json\");",
        |ctx: NativeCallContext, labels: VolumeRef| -> ScriptResult<Map> {
            ops::labels_to_instances(&labels, Connectivity::default(), 0)
                .map(|(v, c)| instances_map(v, c))
                .map_err(at(&ctx))
        },
    );
    r.func(
        "labels_to_instances(labels: Volume, options: Map) -> Map",
        "labels_to_instances with options (connectivity, smallest component kept).",
        "let r = labels_to_instances(seg, #{min_voxels: 10});",
        |ctx: NativeCallContext, labels: VolumeRef, options: Map| -> ScriptResult<Map> {
            let c = connectivity_from(&ctx, &INSTANCES_OPTIONS, &options)?;
            let min_voxels = match options.get("min_voxels") {
                None => 0,
                Some(v) => match v.as_int() {
                    Ok(n) if n >= 0 => n as usize,
                    _ => {
                        return Err(runtime_error(
                            format!(
                                "labels_to_instances: `min_voxels` must be a non-negative integer, got {v}"
                            ),
                            ctx.call_position(),
                        ));
                    }
                },
            };
            ops::labels_to_instances(&labels, c, min_voxels)
                .map(|(v, c)| instances_map(v, c))
                .map_err(at(&ctx))
        },
    );
}

fn label_boxes_map(
    ctx: &NativeCallContext,
    labels: &Volume,
    convention: BoxConvention,
) -> ScriptResult<Map> {
    labels.check_integer_labels().map_err(at(ctx))?;
    let b = labels.instance_boxes(convention).map_err(at(ctx))?;
    Ok(b.into_iter()
        .map(|(id, bx)| (id.to_string().into(), box_to_array(&bx)))
        .collect())
}

fn describe(v: &Volume) -> String {
    let [c, d, h, w] = v.shape();
    format!(
        "Volume [{c}, {d}, {h}, {w}] spacing [{:.4}, {:.4}, {:.4}] mm from {}",
        v.spacing[0],
        v.spacing[1],
        v.spacing[2],
        v.describe()
    )
}
