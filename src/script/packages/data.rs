//! Dataset primitives: open and validate nnDetection-layout datasets, generate synthetic CT
//! datasets, split, preprocess (with a reusable cache) and read cases.

use super::metrics::GroundTruthProvider;
use super::volume::box_to_array;
use crate::data::{
    self, Dataset, PreprocessConfig, PreprocessedDataset, Splits, SyntheticConfig, TargetSpacing,
};
use crate::metrics::ImageGt;
use crate::script::convert::{
    ScriptResult, as_f64, at, check_options, options, runtime_error, to_script,
};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use crate::volume::boxes::BoxConvention;
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::sync::{Arc, LazyLock};

/// The script-side handle of a raw dataset.
pub type DatasetRef = Arc<Dataset>;
/// The script-side handle of a preprocessed dataset.
pub type PreprocessedRef = Arc<PreprocessedDataset>;

impl GroundTruthProvider for Dataset {
    fn ground_truth(&self, ids: &[String]) -> Result<Vec<ImageGt>, String> {
        let gts = Dataset::ground_truth(self, ids).map_err(|e| e.to_string())?;
        Ok(gts
            .into_iter()
            .map(|(_, boxes, classes)| ImageGt { boxes, classes })
            .collect())
    }
}

/// The ground-truth provider inside a script value, if it is a Dataset.
pub fn ground_truth_provider(value: &Dynamic) -> Option<Arc<dyn GroundTruthProvider>> {
    value
        .clone()
        .try_cast::<DatasetRef>()
        .map(|d| d as Arc<dyn GroundTruthProvider>)
}

fn strings(values: impl IntoIterator<Item = String>) -> Dynamic {
    Dynamic::from_array(values.into_iter().map(Dynamic::from).collect())
}

fn splits_to_script(s: &Splits) -> Map {
    let mut m = Map::new();
    let folds: Array = s
        .folds
        .iter()
        .map(|f| {
            let mut fm = Map::new();
            fm.insert("train".into(), strings(f.train.clone()));
            fm.insert("val".into(), strings(f.val.clone()));
            fm.into()
        })
        .collect();
    m.insert("folds".into(), folds.into());
    m.insert("test".into(), strings(s.test.clone()));
    m
}

/// `preprocess`'s options: the preprocessing settings plus the cache folder.
static PREPROCESS_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<PreprocessConfig>("preprocess").with(&[
        Extra::new(
            "spacing",
            "\"median\" or Float or [Float, Float, Float]",
            "\"median\"",
            "Target spacing in mm (the same as `target_spacing`, written simply).",
        ),
        Extra::new(
            "cache",
            "String",
            "<dataset>/preprocessed/<hash>",
            "Folder of the preprocessing cache (the same settings reuse it).",
        ),
    ])
});

/// `Dataset.splits`'s options.
static SPLITS_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "splits",
        &[
            Extra::new("folds", "Int", "5", "Number of cross-validation folds."),
            Extra::new(
                "seed",
                "Int",
                "12345",
                "Seed of the fold assignment (nnDetection's).",
            ),
            Extra::new(
                "file",
                "String",
                "()",
                "Read the folds from this splits.json instead.",
            ),
        ],
    )
});

/// `Dataset.split`'s options.
static SPLIT_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "split",
        &[
            Extra::new(
                "val",
                "Float",
                "0.2",
                "Fraction of the training cases for validation.",
            ),
            Extra::new(
                "test",
                "Float",
                "0.0",
                "Fraction of the training cases held out for testing.",
            ),
            Extra::new("seed", "Int", "0", "Seed of the split."),
        ],
    )
});

fn preprocess_config(
    ctx: &NativeCallContext,
    mut opts: Map,
) -> ScriptResult<(PreprocessConfig, Option<String>)> {
    check_options(ctx, &PREPROCESS_OPTIONS, &opts)?;
    let cache = opts.remove("cache").map(|c| c.to_string());
    if let Some(s) = opts.remove("spacing") {
        let target = if s.is_string() {
            match s.to_string().as_str() {
                "median" => TargetSpacing::Median,
                other => {
                    return Err(runtime_error(
                        format!(
                            "preprocess: spacing must be \"median\" or [sd, sh, sw] in mm, got \"{other}\""
                        ),
                        ctx.call_position(),
                    ));
                }
            }
        } else if let Some(arr) = s.read_lock::<Array>() {
            TargetSpacing::Fixed(crate::script::convert::f64_triple(
                ctx,
                "preprocess: spacing",
                &arr,
            )?)
        } else if let Some(v) = as_f64(&s) {
            TargetSpacing::Fixed([v, v, v])
        } else {
            return Err(runtime_error(
                "preprocess: spacing must be \"median\", a number or [sd, sh, sw]",
                ctx.call_position(),
            ));
        };
        opts.insert(
            "target_spacing".into(),
            rhai::serde::to_dynamic(&target).unwrap_or_default(),
        );
    }
    let cfg: PreprocessConfig = options(ctx, "preprocess", opts)?;
    cfg.validate().map_err(at(ctx))?;
    Ok((cfg, cache))
}

fn case_map(ctx: &NativeCallContext, ds: &Dataset, id: &str) -> ScriptResult<Map> {
    let case = ds.load_case(id).map_err(at(ctx))?;
    let (boxes, classes) = case.boxes(BoxConvention::HalfOpen).map_err(at(ctx))?;
    let mut m = Map::new();
    m.insert("id".into(), case.id.clone().into());
    m.insert("image".into(), Dynamic::from(Arc::new(case.image)));
    m.insert("labels".into(), Dynamic::from(Arc::new(case.instances)));
    insert_boxes(&mut m, &boxes, &classes);
    Ok(m)
}

/// Register the data package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    engine.register_type_with_name::<DatasetRef>("Dataset");
    engine.register_type_with_name::<PreprocessedRef>("PreprocessedDataset");
    engine.register_fn("to_string", |d: &mut DatasetRef| describe(d));
    engine.register_fn("to_debug", |d: &mut DatasetRef| describe(d));
    engine.register_fn("to_string", |d: &mut PreprocessedRef| {
        describe_preprocessed(d)
    });
    engine.register_fn("to_debug", |d: &mut PreprocessedRef| {
        describe_preprocessed(d)
    });
    let mut r = Registrar::new(
        engine,
        help,
        "data",
        "nnDetection-layout datasets, synthetic CT, splits, preprocessing",
    );
    {
        use crate::data::world::{PoolConfig, SourceConfig, TaskConfig};
        r.options(OptionSet::of::<data::OpenOptions>("dataset"))
            .options(OptionSet::of::<SyntheticConfig>("synthetic_dataset"))
            .options((*SPLITS_OPTIONS).clone())
            .options((*SPLIT_OPTIONS).clone())
            .options((*PREPROCESS_OPTIONS).clone())
            .options(OptionSet::of::<TaskConfig>("synthetic_task"))
            .options(OptionSet::of::<SourceConfig>("multitalent_source"))
            .options(OptionSet::of::<PoolConfig>("pool_volume"));
    }

    r.func(
        "dataset(path: String) -> Dataset",
        "Open an nnDetection raw dataset (dataset.json/yaml, imagesTr, labelsTr, optional\n\
         imagesTs/labelsTs, also under raw_splitted/) and validate it: every problem is reported\n\
         with its file (missing modality or JSON, instance ids not matching the mask, shapes or\n\
         affines differing between image and label, class indices outside `labels`).",
        "let ds = dataset(\"data/Task900_Synthetic\");\nprint(ds.train.len());",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<DatasetRef> {
            Dataset::open(path).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.func(
        "dataset(path: String, options: Map) -> Dataset",
        "Open a dataset with options: #{quick: true} checks only names, presence and JSON\n\
         (no image reads).",
        "let ds = dataset(\"data/Task900_Synthetic\", #{quick: true});",
        |ctx: NativeCallContext, path: &str, opts: Map| -> ScriptResult<DatasetRef> {
            let o: data::OpenOptions = options(&ctx, "dataset", opts)?;
            Dataset::open_with(path, &o).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.func(
        "synthetic_dataset(path: String, options: Map) -> Dataset",
        "Generate a seeded CT-like detection dataset in nnDetection's layout: a body (~40 HU),\n\
         lungs (~−800 HU), a bone shell, noise; nodule-like lesions with LIDC-IDRI sizes and\n\
         counts; vessel and blob distractors of similar size. Same seed → identical files.",
        "let ds = synthetic_dataset(\"data/Task900_Synthetic\", #{cases: 8, test_cases: 4, seed: 0});",
        |ctx: NativeCallContext, path: &str, opts: Map| -> ScriptResult<DatasetRef> {
            let cfg: SyntheticConfig = options(&ctx, "synthetic_dataset", opts)?;
            data::synthetic_dataset(path, &cfg).map(Arc::new).map_err(at(&ctx))
        },
    );
    r.getter(
        "Dataset",
        "root",
        "String",
        "The dataset folder.",
        |d: &mut DatasetRef| d.root.display().to_string(),
    );
    r.getter(
        "Dataset",
        "train",
        "[String]",
        "Ids of the training cases (imagesTr).",
        |d: &mut DatasetRef| strings(d.train_ids()),
    );
    r.getter(
        "Dataset",
        "test",
        "[String]",
        "Ids of the test cases (imagesTs).",
        |d: &mut DatasetRef| strings(d.test_ids()),
    );
    r.getter(
        "Dataset",
        "labels",
        "[String]",
        "Class names, by class index.",
        |d: &mut DatasetRef| strings(d.meta.labels.iter().cloned()),
    );
    r.getter(
        "Dataset",
        "modalities",
        "[String]",
        "Modality names, by channel.",
        |d: &mut DatasetRef| strings(d.meta.modalities.iter().cloned()),
    );
    r.getter(
        "Dataset",
        "warnings",
        "[String]",
        "Findings that do not stop the dataset from being used.",
        |d: &mut DatasetRef| strings(d.warnings.iter().map(|w| w.to_string())),
    );
    r.method(
        "Dataset",
        "load_case(id: String) -> Map",
        "Load one case: #{id, image: Volume [C, D, H, W], labels: Volume (instance mask),\n\
         boxes (half-open, original voxels), classes}.",
        "let c = ds.load_case(ds.train[0]);\nprint(c.boxes);",
        |ctx: NativeCallContext, d: &mut DatasetRef, id: &str| -> ScriptResult<Map> {
            case_map(&ctx, d, id)
        },
    );
    r.method(
        "Dataset",
        "files(id: String) -> Map",
        "The files of one case: #{images: [one path per modality], label: path or (), instances: path or ()}.",
        "let f = ds.files(ds.train[0]);\nlet ct = load_volume(f.images[0]);",
        |ctx: NativeCallContext, d: &mut DatasetRef, id: &str| -> ScriptResult<Map> {
            let f = d.case_files(id).map_err(at(&ctx))?;
            let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| Dynamic::from(p.display().to_string())).unwrap_or(Dynamic::UNIT);
            let mut m = Map::new();
            m.insert("images".into(), strings(f.images.iter().map(|p| p.display().to_string())));
            m.insert("label".into(), path(&f.label));
            m.insert("instances".into(), path(&f.instances_json));
            Ok(m)
        },
    );
    r.method(
        "Dataset",
        "ground_truth(ids: Array) -> Array",
        "Ground truth of the given cases as #{id, boxes, classes} in original voxels with\n\
         nnDetection's (min − 1, max + 1) boxes: what evaluation compares against.",
        "let gt = ds.ground_truth(ds.test);",
        |ctx: NativeCallContext, d: &mut DatasetRef, ids: Array| -> ScriptResult<Array> {
            let ids: Vec<String> = ids.iter().map(|v| v.to_string()).collect();
            let gts = Dataset::ground_truth(d, &ids).map_err(at(&ctx))?;
            Ok(gts
                .into_iter()
                .map(|(id, boxes, classes)| {
                    let mut m = Map::new();
                    m.insert("id".into(), id.into());
                    insert_boxes(&mut m, &boxes, &classes);
                    m.into()
                })
                .collect())
        },
    );
    r.method(
        "Dataset",
        "splits(options: Map) -> Map",
        "Cross-validation folds of the training cases: #{folds: [#{train, val}, …], test}.\n\
         Uses splits.json beside the data if present (validated), else makes #{folds: 5,\n\
         seed: 12345} folds (nnDetection's) and saves them. #{file: path} reads a user split.",
        "let s = ds.splits(#{folds: 5, seed: 12345});\nprint(s.folds[0].val);",
        |ctx: NativeCallContext, d: &mut DatasetRef, mut opts: Map| -> ScriptResult<Map> {
            check_options(&ctx, &SPLITS_OPTIONS, &opts)?;
            let file = opts.remove("file").map(|f| f.to_string());
            let folds = opts
                .remove("folds")
                .and_then(|v| v.as_int().ok())
                .unwrap_or(5);
            let seed = opts
                .remove("seed")
                .and_then(|v| v.as_int().ok())
                .unwrap_or(12345);
            if let Some(k) = opts.keys().next() {
                return Err(runtime_error(
                    format!("splits: unknown option `{k}`; options are folds, seed, file"),
                    ctx.call_position(),
                ));
            }
            let s = match file {
                Some(f) => d.load_splits(std::path::Path::new(&f)),
                None => d.splits(folds.max(0) as usize, seed as u64),
            }
            .map_err(at(&ctx))?;
            Ok(splits_to_script(&s))
        },
    );
    r.method(
        "Dataset",
        "split(options: Map) -> Map",
        "One seeded train/val/test split of the training cases: #{val: 0.2, test: 0.0, seed: 0}\n\
         → #{train, val, test} id lists (deterministic for a seed).",
        "let s = ds.split(#{val: 0.25, seed: 1});\nprint(s.val);",
        |ctx: NativeCallContext, d: &mut DatasetRef, mut opts: Map| -> ScriptResult<Map> {
            check_options(&ctx, &SPLIT_OPTIONS, &opts)?;
            let val = opts.remove("val").and_then(|v| as_f64(&v)).unwrap_or(0.2);
            let test = opts.remove("test").and_then(|v| as_f64(&v)).unwrap_or(0.0);
            let seed = opts
                .remove("seed")
                .and_then(|v| v.as_int().ok())
                .unwrap_or(0);
            if let Some(k) = opts.keys().next() {
                return Err(runtime_error(
                    format!("split: unknown option `{k}`; options are val, test, seed"),
                    ctx.call_position(),
                ));
            }
            let s =
                Splits::train_val_test(&d.train_ids(), val, test, seed as u64).map_err(at(&ctx))?;
            let mut m = Map::new();
            m.insert("train".into(), strings(s.folds[0].train.clone()));
            m.insert("val".into(), strings(s.folds[0].val.clone()));
            m.insert("test".into(), strings(s.test.clone()));
            Ok(m)
        },
    );
    r.func(
        "preprocess(dataset: Dataset, options: Map) -> PreprocessedDataset",
        "Preprocess every case (in parallel): crop to non-zero, resample to the target spacing\n\
         (image linear, instance mask nearest), normalise (CT: dataset foreground 0.5/99.5\n\
         percentile clip + z-score; other modalities: per-case z-score). spacing [1, 1, 1] is the\n\
         paper's choice, \"median\" nnDetection's rule. The same settings reuse the cache.",
        "let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});",
        |ctx: NativeCallContext, d: DatasetRef, opts: Map| -> ScriptResult<PreprocessedRef> {
            let (cfg, cache) = preprocess_config(&ctx, opts)?;
            data::preprocess(&d, &cfg, cache.as_deref().map(std::path::Path::new))
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
    r.getter(
        "PreprocessedDataset",
        "ids",
        "[String]",
        "All preprocessed case ids.",
        |p: &mut PreprocessedRef| strings(p.case_ids()),
    );
    r.getter(
        "PreprocessedDataset",
        "spacing",
        "[sd, sh, sw]",
        "The target spacing in mm.",
        |p: &mut PreprocessedRef| {
            Dynamic::from_array(
                p.plan()
                    .target_spacing
                    .iter()
                    .map(|&v| Dynamic::from_float(v))
                    .collect(),
            )
        },
    );
    r.getter(
        "PreprocessedDataset",
        "reused",
        "bool",
        "Whether the cache was reused (nothing recomputed).",
        |p: &mut PreprocessedRef| p.reused(),
    );
    r.method(
        "PreprocessedDataset",
        "load_case(id: String) -> Map",
        "One preprocessed case: #{id, image: Volume (normalised, target spacing), boxes (half-open,\n\
         preprocessed voxels), classes}.",
        "let c = pre.load_case(pre.ids[0]);\nplot_slice(\"slice.png\", c.image, #{gt: c.boxes});",
        |ctx: NativeCallContext, p: &mut PreprocessedRef, id: &str| -> ScriptResult<Map> {
            let c = p.load_case(id).map_err(at(&ctx))?;
            let image = crate::volume::Volume::from_array(c.image.clone(), c.spacing);
            let mut m = Map::new();
            m.insert("id".into(), c.id.clone().into());
            m.insert("image".into(), Dynamic::from(Arc::new(image)));
            m.insert("boxes".into(), c.boxes.iter().map(box_to_array).collect::<Array>().into());
            m.insert("classes".into(), c.classes.iter().map(|&k| Dynamic::from(k as i64)).collect::<Array>().into());
            m.insert("restore".into(), to_script(&ctx, &c.restore)?);
            Ok(m)
        },
    );
    register_world(&mut r);
}

fn describe(d: &Dataset) -> String {
    format!(
        "Dataset {} ({} training, {} test cases; classes {:?}; modalities {:?}) at {}",
        d.meta.task,
        d.train.len(),
        d.test.len(),
        d.meta.labels,
        d.meta.modalities,
        d.root.display()
    )
}

fn describe_preprocessed(p: &PreprocessedDataset) -> String {
    let s = p.plan().target_spacing;
    format!(
        "PreprocessedDataset ({} cases at [{:.3}, {:.3}, {:.3}] mm{})",
        p.case_ids().len(),
        s[0],
        s[1],
        s[2],
        if p.reused() { ", cache reused" } else { "" }
    )
}

/// Put `boxes` ([d0, h0, w0, d1, h1, w1] arrays) and `classes` (ints) into a script map.
fn insert_boxes(m: &mut Map, boxes: &[crate::volume::boxes::Box3], classes: &[usize]) {
    m.insert(
        "boxes".into(),
        boxes.iter().map(box_to_array).collect::<Array>().into(),
    );
    m.insert(
        "classes".into(),
        classes
            .iter()
            .map(|&c| Dynamic::from(c as i64))
            .collect::<Array>()
            .into(),
    );
}

/// The synthetic world for pre-training studies: detection tasks, MultiTalent sources and the
/// unlabelled pool (`crate::data::world`).
fn register_world(r: &mut Registrar) {
    use crate::data::world::{self, PoolConfig, SourceConfig, TaskConfig};
    r.func(
        "synthetic_task(name: String, path: String, options: Map) -> Dataset",
        "Generate a small seeded detection task for fine-tuning studies.\n\
         nnDetection's layout, with labelled training cases and a labelled held-out test set\n\
         (imagesTs/labelsTs). Tasks: \"nodules\" (CT lung\n\
         nodules, the synthetic_dataset generator), \"liver_lesion\" (low-contrast lesions in a\n\
         textured liver), \"mri4_tumour\" (FLAIR/T1/T1ce/T2 tumours: the 4-channel task for stem\n\
         ablations), \"thick_slices\" (spacing [3.0, 0.8, 0.8]: median and 1 mm spacing differ).\n\
         Options: cases (8), test_cases (8), seed, shape, spacing (per-task defaults), contrast (1.0),\n\
         lesion_scale (1.0), noise (1.0), min_lesions (1), max_lesions (3), task. Growing `cases`\n\
         keeps the earlier cases and the test set. Same seed → identical files.",
        "let ds = synthetic_task(\"liver_lesion\", \"data/Task911\", #{cases: 8, seed: 0, contrast: 0.8});\nprint(ds.test.len());",
        |ctx: NativeCallContext, name: &str, path: &str, opts: Map| -> ScriptResult<DatasetRef> {
            let cfg: TaskConfig = options(&ctx, "synthetic_task", opts)?;
            world::detection_task(name, std::path::Path::new(path), &cfg)
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
    r.func(
        "multitalent_source(name: String, path: String, options: Map) -> Dataset",
        "Generate a MultiTalent pre-training source with its own label set.\n\
         Segmentation-style, in nnDetection's layout: every structure is an instance with its\n\
         class; training cases only. Sources, each with its\n\
         own labels: \"organs\" (CT: liver, spleen, kidney, liver_tumour), \"vessels\" (CT:\n\
         vessel, aorta), \"mri4\" (FLAIR/T1/T1ce/T2: edema, tumour_core). Options: cases (8),\n\
         seed, shape ([32, 32, 32]), spacing ([1, 1, 1]), noise (1.0), task.",
        "let organs = multitalent_source(\"organs\", \"data/Task950\", #{cases: 8});\nprint(organs.labels);",
        |ctx: NativeCallContext, name: &str, path: &str, opts: Map| -> ScriptResult<DatasetRef> {
            let cfg: SourceConfig = options(&ctx, "multitalent_source", opts)?;
            world::multitalent_source(name, std::path::Path::new(path), &cfg)
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
    r.func(
        "pool_volume(options: Map, index: i64) -> Volume",
        "Volume `index` of the unlabelled pre-training pool.\n\
         An endless seeded stream (every index differs; the same seed and index give the same\n\
         volume) of a smooth background, 2–3\n\
         textured organs, 0–3 ring lesions, 0–3 solid distractors and noise; CT in HU or MRI-like\n\
         positive channels. Options: seed, shape ([32, 32, 32]), spacing, modality (\"ct\" | \"mri\"\n\
         | \"mixed\"), channels (MRI), mri_fraction, lesion_probability (0.8), max_lesions (3),\n\
         distractor_probability (0.8), max_distractors (3), lesion_radius_mm, noise, bias_field.",
        "let v = pool_volume(#{seed: 0, modality: \"mri\", channels: 2}, 17);\nplot_slice(\"pool17.png\", v);",
        |ctx: NativeCallContext, opts: Map, index: i64| -> ScriptResult<super::volume::VolumeRef> {
            let cfg: PoolConfig = options(&ctx, "pool_volume", opts)?;
            if index < 0 {
                return Err(runtime_error(
                    format!("pool_volume: index must be >= 0, got {index}"),
                    ctx.call_position(),
                ));
            }
            world::pool_volume(&cfg, index as u64)
                .map(Arc::new)
                .map_err(at(&ctx))
        },
    );
}
