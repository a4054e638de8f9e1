//! Pre-training primitives: data sources (`nifti_folder`, `synthetic_stream`), `pretrain`,
//! and `load_pretrained` with its inspection methods.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};

use super::data::{DatasetRef, PreprocessedRef};
use super::model::Backbone;
use crate::data::world::PoolConfig;
use crate::data::{PreprocessConfig, TargetSpacing};
use crate::nn::{self, ScriptBackend};
use crate::pretrain::{
    self, CaseSource, Method, PoolSource, PretrainConfig, PretrainInputs, PretrainRun,
    PretrainSource, Pretrained, Sources,
};
use crate::script::convert::{
    ScriptResult, at, check_options, options, options_over, runtime_error, to_script,
};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;

/// `pretrain`'s options: the pre-training settings (MAE's defaults shown; each method starts
/// from its own) plus the data's spacing and the device.
static PRETRAIN_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::over("pretrain", &PretrainConfig::for_method(Method::Mae)).with(&[
        Extra::new(
            "spacing",
            "Float or [Float, Float, Float]",
            "median / 1 mm",
            "Spacing of the data in mm (datasets default to their median, folders and the stream to 1 mm).",
        ),
        Extra::new(
            "device",
            "Device or String",
            "\"cpu\"",
            "Where the network runs: a Device or a name like \"cuda:0\".",
        ),
    ])
});

/// `synthetic_stream`'s options: the settings of the synthetic pool.
static STREAM_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<PoolConfig>("synthetic_stream"));

/// `transfer`'s options.
static TRANSFER_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "transfer",
        &[
            Extra::new(
                "scope",
                "\"encoder\" | \"all\"",
                "\"encoder\"",
                "What is transferred: the stem and stages, or every tensor whose path and shape match.",
            ),
            Extra::new(
                "stem",
                "String",
                "\"replicate_scaled\"",
                "Stem policy when the channels differ: random, replicate, replicate_scaled, copy_first, mean or select:<dataset>.",
            ),
        ],
    )
});

/// `load_pretrained`'s options.
static LOAD_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "load_pretrained",
        &[Extra::new(
            "architecture",
            "Backbone",
            "the file's plan",
            "The encoder of a PyTorch file without a plan, e.g. backbone(\"resenc_l\") (the weights set the channels).",
        )],
    )
});

/// `save_pretrained`'s options.
static SAVE_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::extras_only(
        "save_pretrained",
        &[Extra::new(
            "names",
            "\"nnssl\" | \"detlab\"",
            "\"nnssl\"",
            "Key names: dynamic-network-architectures' (PyTorch loads them strictly) or detlab's paths.",
        )],
    )
});

/// A folder of NIfTI files to pre-train on.
#[derive(Clone, Debug)]
pub struct NiftiFolder(pub PathBuf);

/// The seeded synthetic pre-training stream.
#[derive(Clone, Debug)]
pub struct SyntheticStream(pub PoolConfig);

/// A loaded pre-training checkpoint in scripts.
pub type PretrainedRef = Arc<Pretrained<ScriptBackend>>;

fn spacing_option(
    ctx: &NativeCallContext,
    value: Option<Dynamic>,
) -> ScriptResult<Option<[f64; 3]>> {
    let Some(v) = value else { return Ok(None) };
    if let Some(arr) = v.read_lock::<Array>() {
        return crate::script::convert::f64_triple(ctx, "pretrain: spacing", &arr).map(Some);
    }
    if let Some(x) = crate::script::convert::as_f64(&v) {
        return Ok(Some([x, x, x]));
    }
    Err(runtime_error(
        "pretrain: spacing must be a number or [sd, sh, sw] in mm",
        ctx.call_position(),
    ))
}

fn dataset_name(d: &crate::data::Dataset) -> String {
    d.root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| d.root.display().to_string())
}

/// A labelled or unlabelled case source from a Dataset (preprocessed at `spacing`, z-score
/// default normalisation) or a PreprocessedDataset.
fn case_source(
    ctx: &NativeCallContext,
    value: &Dynamic,
    spacing: Option<[f64; 3]>,
    labelled: bool,
) -> ScriptResult<Option<CaseSource>> {
    if let Some(d) = value.clone().try_cast::<DatasetRef>() {
        let config = PreprocessConfig {
            target_spacing: spacing.map_or(TargetSpacing::Median, TargetSpacing::Fixed),
            ..PreprocessConfig::default()
        };
        let pre = crate::data::preprocess(&d, &config, None).map_err(at(ctx))?;
        let name = dataset_name(&d);
        return CaseSource::from_preprocessed(&name, &pre, d.meta.labels.clone(), labelled)
            .map(Some)
            .map_err(at(ctx));
    }
    if let Some(p) = value.clone().try_cast::<PreprocessedRef>() {
        let name = p
            .manifest
            .dataset_root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.manifest.task.clone());
        let labels = p.manifest.labels.clone();
        return CaseSource::from_preprocessed(&name, &p, labels, labelled)
            .map(Some)
            .map_err(at(ctx));
    }
    Ok(None)
}

fn sources(
    ctx: &NativeCallContext,
    data: &Dynamic,
    method: Method,
    spacing: Option<[f64; 3]>,
    patch: [usize; 3],
) -> ScriptResult<Sources> {
    if let Some(list) = data.read_lock::<Array>() {
        if method != Method::Multitalent {
            return Err(runtime_error(
                format!(
                    "pretrain: a list of datasets is for method \"multitalent\"; {} takes one source",
                    method.name()
                ),
                ctx.call_position(),
            ));
        }
        let mut datasets = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match case_source(ctx, item, spacing, true)? {
                Some(s) => datasets.push(Arc::new(s)),
                None => {
                    return Err(runtime_error(
                        format!(
                            "pretrain: item {i} of the dataset list is a {}, not a Dataset or PreprocessedDataset",
                            item.type_name()
                        ),
                        ctx.call_position(),
                    ));
                }
            }
        }
        pretrain::check_multitalent_datasets(&datasets).map_err(at(ctx))?;
        let heads = Vec::new();
        return Ok(Sources::Labelled { datasets, heads });
    }
    if method == Method::Multitalent {
        if let Some(s) = case_source(ctx, data, spacing, true)? {
            return Ok(Sources::Labelled {
                datasets: vec![Arc::new(s)],
                heads: Vec::new(),
            });
        }
        return Err(runtime_error(
            "pretrain: MultiTalent needs a labelled Dataset or a list of them",
            ctx.call_position(),
        ));
    }
    if let Some(s) = case_source(ctx, data, spacing, false)? {
        return Ok(Sources::Images(Arc::new(s)));
    }
    if let Some(folder) = data.clone().try_cast::<NiftiFolder>() {
        let s = CaseSource::from_nifti_folder(&folder.0, spacing.unwrap_or([1.0; 3]))
            .map_err(at(ctx))?;
        return Ok(Sources::Images(Arc::new(s)));
    }
    if let Some(stream) = data.clone().try_cast::<SyntheticStream>() {
        let mut config = stream.0;
        if let Some(s) = spacing {
            config.spacing = s;
        }
        pretrain::source::validate_pool(&config, patch).map_err(at(ctx))?;
        return Ok(Sources::Images(Arc::new(PoolSource { config })));
    }
    Err(runtime_error(
        format!(
            "pretrain: data must be a Dataset, PreprocessedDataset, nifti_folder(…), synthetic_stream(…) or (MultiTalent) a list of datasets, not {}",
            data.type_name()
        ),
        ctx.call_position(),
    ))
}

fn run_map(ctx: &NativeCallContext, run: &PretrainRun) -> ScriptResult<Map> {
    let history = super::model::history_columns(&run.history);
    let mut m = Map::new();
    m.insert("history".into(), history.into());
    m.insert("validation".into(), to_script(ctx, &run.validation)?);
    m.insert(
        "best".into(),
        match &run.best {
            Some(b) => to_script(ctx, b)?,
            None => Dynamic::UNIT,
        },
    );
    m.insert("iterations".into(), (run.iterations_done as i64).into());
    m.insert("finished".into(), run.finished.into());
    m.insert("out".into(), run.out.display().to_string().into());
    m.insert(
        "figures".into(),
        Dynamic::from_array(
            run.figures
                .iter()
                .map(|p| Dynamic::from(p.display().to_string()))
                .collect(),
        ),
    );
    Ok(m)
}

fn pretrain_impl(
    ctx: &NativeCallContext,
    backbone: &Backbone,
    data: Dynamic,
    mut opts: Map,
) -> ScriptResult<Map> {
    check_options(ctx, &PRETRAIN_OPTIONS, &opts)?;
    let device = super::model::device_option(ctx, "pretrain", opts.remove("device"))?;
    let spacing = spacing_option(ctx, opts.remove("spacing"))?;
    let method: Method = match opts.get("method") {
        Some(m) => options(ctx, "pretrain", {
            let mut one = Map::new();
            one.insert("method".into(), m.clone());
            one
        })
        .map(|c: PretrainConfig| c.method)?,
        None => Method::Mae,
    };
    // Start from the method's defaults, then apply the script's options.
    let config = options_over(ctx, "pretrain", &PretrainConfig::for_method(method), &opts)?;
    config.validate().map_err(at(ctx))?;
    let mut sources = sources(ctx, &data, method, spacing, config.patch)?;
    let network_config =
        pretrain::network_config(&backbone.0, &sources, &config).map_err(at(ctx))?;
    if let Sources::Labelled { heads, .. } = &mut sources {
        *heads = network_config.heads.clone();
    }
    let data_plans = match &sources {
        Sources::Images(s) => vec![s.plan()],
        Sources::Labelled { datasets, .. } => datasets.iter().map(|d| d.plan()).collect(),
    };
    nn::backend::seed(&device, config.seed);
    let network = network_config
        .init::<ScriptBackend>(&device)
        .map_err(at(ctx))?;
    let inputs = PretrainInputs {
        network_config: &network_config,
        sources: &sources,
        data: data_plans,
    };
    match pretrain::pretrain(network, &inputs, &config, &device) {
        Ok((_, run)) => run_map(ctx, &run),
        Err(e) => {
            if matches!(
                e,
                pretrain::PretrainError::Train(crate::train::TrainError::Interrupted { .. })
            ) {
                crate::util::interrupt::request();
            }
            Err(runtime_error(format!("pretrain: {e}"), ctx.call_position()))
        }
    }
}

fn describe_stream(s: &SyntheticStream) -> String {
    format!(
        "SyntheticStream(seed {}, {:?}, {} channel(s), spacing {:?})",
        s.0.seed, s.0.modality, s.0.channels, s.0.spacing
    )
}

/// Register the pre-training package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    engine.register_type_with_name::<NiftiFolder>("NiftiFolder");
    engine.register_type_with_name::<SyntheticStream>("SyntheticStream");
    engine.register_type_with_name::<PretrainedRef>("Pretrained");
    engine.register_fn("to_string", |f: &mut NiftiFolder| {
        format!("NiftiFolder({})", f.0.display())
    });
    engine.register_fn("to_debug", |f: &mut NiftiFolder| {
        format!("NiftiFolder({})", f.0.display())
    });
    engine.register_fn("to_string", |s: &mut SyntheticStream| describe_stream(s));
    engine.register_fn("to_debug", |s: &mut SyntheticStream| describe_stream(s));
    engine.register_fn("to_string", |p: &mut PretrainedRef| p.describe());
    engine.register_fn("to_debug", |p: &mut PretrainedRef| p.describe());
    let mut r = Registrar::new(
        engine,
        help,
        "pretrain",
        "pre-training of encoders (MAE, S3D, Models Genesis, VoCo, MultiTalent) and checkpoints",
    );
    r.options((*PRETRAIN_OPTIONS).clone())
        .options((*STREAM_OPTIONS).clone());
    r.func(
        "nifti_folder(path: String) -> NiftiFolder",
        "Every .nii / .nii.gz file of a folder as a pre-training source (resampled to the\n\
         `spacing` of `pretrain`, z-scored per image). A folder without NIfTI files is an error.",
        "let scans = nifti_folder(\"scans/\");",
        |path: &str| -> NiftiFolder { NiftiFolder(PathBuf::from(path)) },
    );
    r.func(
        "synthetic_stream(options: Map) -> SyntheticStream",
        "The seeded synthetic pre-training stream: CT-like or MRI-like volumes with organs, ring\n\
         lesions and distractors, a new volume for every draw (`pretrain` draws patches of its\n\
         `patch` size from volumes of `shape`).",
        "let pool = synthetic_stream(#{seed: 1});",
        |ctx: NativeCallContext, opts: Map| -> ScriptResult<SyntheticStream> {
            check_options(&ctx, &STREAM_OPTIONS, &opts)?;
            let config: PoolConfig = options(&ctx, "synthetic_stream", opts)?;
            config.validate().map_err(at(&ctx))?;
            Ok(SyntheticStream(config))
        },
    );
    r.func(
        "pretrain(backbone: Backbone, data: Dynamic, options: Map) -> Map",
        "Pre-train an encoder; writes <out>/last, <out>/best (lowest validation loss) and\n\
         <out>/figures/iter_K.png (what the method sees and produces). data: a Dataset or\n\
         PreprocessedDataset (images only), nifti_folder(…), synthetic_stream(…), or for\n\
         MultiTalent a list of labelled datasets (one stem and head each). The defaults are\n\
         nnssl's and the method's own (the table shows MAE's; VoCo has no gradient clipping and a\n\
         [16, 32, 32] patch, MultiTalent lr 0.001); `seed` also seeds the weights. Returns\n\
         #{history: #{iteration, loss, lr, <terms>}, validation, best, iterations, finished, out,\n\
         figures}.",
        "let run = pretrain(backbone(\"resenc_tiny\"), synthetic_stream(#{seed: 1}), #{method: \"mae\", patch: [32, 32, 32], iterations: 200, mask: #{block: 4, ratio: 0.75}, out: \"runs/pre/mae\"});\nplot_lines(\"runs/pre/mae/loss.png\", #{loss: run.history.loss}, #{});",
        |ctx: NativeCallContext, backbone: Backbone, data: Dynamic, opts: Map| -> ScriptResult<Map> {
            pretrain_impl(&ctx, &backbone, data, opts)
        },
    );
    r.func(
        "load_pretrained(path: String) -> Pretrained",
        "Read a pre-training checkpoint (a run folder: its best, else its last; or a checkpoint\n\
         folder) on the CPU. Printing it shows the method, architecture, spacing,\n\
         normalisation, patch, channels and stems.",
        "let ckpt = load_pretrained(\"runs/pre/mae\");\nprint(ckpt);",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<PretrainedRef> {
            let device = nn::device("cpu").map_err(at(&ctx))?;
            let path = std::path::Path::new(path);
            // PyTorch (.pth/.pt) and safetensors files go to the PyTorch importer.
            if pretrain::pytorch::is_weights_file(path) {
                return pretrain::pytorch::load_file::<ScriptBackend>(
                    path,
                    &Default::default(),
                    &device,
                )
                .map(Arc::new)
                .map_err(|e| runtime_error(format!("load_pretrained: {e}"), ctx.call_position()));
            }
            pretrain::load_pretrained::<ScriptBackend>(path, &device)
                .map(Arc::new)
                .map_err(|e| runtime_error(format!("load_pretrained: {e}"), ctx.call_position()))
        },
    );
    r.method(
        "Pretrained",
        "backbone() -> Backbone",
        "The encoder configuration the checkpoint needs (widths, depths, strides, channels), to\n\
         build a detector that can take its weights.",
        "let model = detector(\"retina_unet\", ckpt.backbone(), #{num_classes: 1});",
        |p: &mut PretrainedRef| -> Backbone { Backbone(p.state.network.encoder.clone()) },
    );
    r.method(
        "Pretrained",
        "stems() -> Array",
        "The checkpoint's stems as #{dataset, channels} (MultiTalent: one per dataset; otherwise\n\
         one named \"default\").",
        "for s in ckpt.stems() { print(s.dataset + \": \" + s.channels); }",
        |ctx: NativeCallContext, p: &mut PretrainedRef| -> ScriptResult<Dynamic> {
            to_script(&ctx, &p.state.stems())
        },
    );
    r.method(
        "Pretrained",
        "info() -> Map",
        "Everything pretrain.json holds: method, iteration, config, network, data plans,\n\
         validation and best.",
        "print(ckpt.info().method);",
        |ctx: NativeCallContext, p: &mut PretrainedRef| -> ScriptResult<Dynamic> {
            let mut state = p.state.clone();
            state.history.clear();
            to_script(&ctx, &state)
        },
    );
}

/// A transfer report in scripts: counts as properties, the lists through `details()`, and a
/// readable table when printed.
pub type TransferReportRef = Arc<pretrain::TransferReport>;

fn transfer_options(
    ctx: &NativeCallContext,
    mut opts: Map,
) -> ScriptResult<pretrain::TransferOptions> {
    check_options(ctx, &TRANSFER_OPTIONS, &opts)?;
    let stem = match opts.remove("stem") {
        Some(s) => pretrain::StemPolicy::parse(&s.to_string()).map_err(at(ctx))?,
        None => pretrain::StemPolicy::default(),
    };
    let scope = match opts.remove("scope") {
        Some(s) => match s.to_string().as_str() {
            "encoder" => pretrain::TransferScope::Encoder,
            "all" => pretrain::TransferScope::All,
            other => {
                return Err(runtime_error(
                    format!("transfer: scope must be \"encoder\" or \"all\", got \"{other}\""),
                    ctx.call_position(),
                ));
            }
        },
        None => pretrain::TransferScope::Encoder,
    };
    Ok(pretrain::TransferOptions { scope, stem })
}

/// Transfer `ckpt` into the model in place (replaced only when the transfer succeeds).
fn transfer_into(
    ctx: &NativeCallContext,
    m: &super::model::ModelRef,
    ckpt: &PretrainedRef,
    options: &pretrain::TransferOptions,
) -> ScriptResult<TransferReportRef> {
    use super::model::Net;
    let mut state = m.lock().map_err(|_| {
        runtime_error(
            "transfer: the model is unusable after an earlier panic",
            ctx.call_position(),
        )
    })?;
    let (updated, report) = super::model::with_net!(&state.net, net => {
        pretrain::transfer(net.clone(), ckpt, options).map(|(u, r)| (Net::from(u), r))
    })
    .map_err(|e| runtime_error(format!("transfer: {e}"), ctx.call_position()))?;
    state.net = updated;
    Ok(Arc::new(report))
}

fn volumes_to_array(volumes: Vec<crate::volume::Volume>) -> Array {
    volumes
        .into_iter()
        .map(|v| Dynamic::from(Arc::new(v)))
        .collect()
}

/// Register the transfer primitives (part of the pre-training package).
pub fn register_transfer(engine: &mut Engine, help: &mut HelpIndex) {
    use super::model::ModelRef;
    use super::volume::VolumeRef;
    engine.register_type_with_name::<TransferReportRef>("TransferReport");
    engine.register_fn("to_string", |r: &mut TransferReportRef| r.to_string());
    engine.register_fn("to_debug", |r: &mut TransferReportRef| r.to_string());
    engine.register_get("loaded", |r: &mut TransferReportRef| r.loaded.len() as i64);
    engine.register_get("skipped_by_name", |r: &mut TransferReportRef| {
        r.skipped_by_name.len() as i64
    });
    engine.register_get("skipped_by_shape", |r: &mut TransferReportRef| {
        r.skipped_by_shape.len() as i64
    });
    engine.register_get("missing", |r: &mut TransferReportRef| {
        r.missing.len() as i64
    });
    engine.register_get("stem", |r: &mut TransferReportRef| r.stem.clone());
    engine.register_get("stem_policy", |r: &mut TransferReportRef| {
        r.stem_policy.clone()
    });
    let mut r = Registrar::new(
        engine,
        help,
        "transfer",
        "weight transfer from pre-training checkpoints into detectors, encoder features",
    );
    r.options((*TRANSFER_OPTIONS).clone());
    r.func(
        "transfer(model: Model, checkpoint: Pretrained, options: Map) -> TransferReport",
        "Load a pre-trained encoder into a detector, in place. Stem policies, for differing\n\
         channel counts: \"random\" keeps the fresh stem, \"replicate\" tiles the kernel,\n\
         \"replicate_scaled\" tiles it and divides by N (default), \"copy_first\", \"mean\" (N → 1),\n\
         \"select:<dataset>\" picks a MultiTalent stem. Returns a report with loaded,\n\
         skipped_by_name, skipped_by_shape, missing (counts), stem and details(); it prints as a\n\
         table. An encoder mismatch is an error naming the tensor and both shapes, and leaves\n\
         the model unchanged.",
        "let report = transfer(model, ckpt, #{scope: \"encoder\", stem: \"replicate_scaled\"});\nprint(report);",
        |ctx: NativeCallContext, m: ModelRef, ckpt: PretrainedRef, opts: Map| -> ScriptResult<TransferReportRef> {
            let options = transfer_options(&ctx, opts)?;
            transfer_into(&ctx, &m, &ckpt, &options)
        },
    );
    r.func(
        "transfer(model: Model, checkpoint: Pretrained) -> TransferReport",
        "Transfer the encoder with the default stem policy (replicate_scaled).",
        "print(transfer(model, load_pretrained(\"runs/pre/mae\")));",
        |ctx: NativeCallContext,
         m: ModelRef,
         ckpt: PretrainedRef|
         -> ScriptResult<TransferReportRef> {
            let options = pretrain::TransferOptions::default();
            transfer_into(&ctx, &m, &ckpt, &options)
        },
    );
    r.method(
        "TransferReport",
        "details() -> Map",
        "The report's lists: loaded, skipped_by_name, skipped_by_shape (#{path, checkpoint,\n\
         detector}), missing, stem_policy, stem.",
        "print(report.details().skipped_by_shape);",
        |ctx: NativeCallContext, r: &mut TransferReportRef| -> ScriptResult<Dynamic> {
            to_script(&ctx, r.as_ref())
        },
    );
    r.func(
        "features(model: Model, volume: Volume) -> Array",
        "Run a detector's encoder (stem and stages) on a volume as given, without\n\
         preprocessing; returns every stage's output as a Volume [C, D, H, W] (spacing times the\n\
         stage's stride). The volume's size must be divisible by the encoder's total stride.",
        "let f = features(model, vol);\nprint(f[0].shape());",
        |ctx: NativeCallContext, m: ModelRef, v: VolumeRef| -> ScriptResult<Array> {
            use crate::nn::Detector;
            use burn::module::AutodiffModule;
            let state = m.lock().map_err(|_| {
                runtime_error(
                    "features: the model is unusable after an earlier panic",
                    ctx.call_position(),
                )
            })?;
            let encoder = super::model::with_net!(&state.net, net => net.encoder().valid());
            encoder
                .features(&v, &state.device)
                .map(volumes_to_array)
                .map_err(|e| runtime_error(format!("features: {e}"), ctx.call_position()))
        },
    );
    r.func(
        "features(checkpoint: Pretrained, volume: Volume) -> Array",
        "Run a pre-trained encoder on a volume as given (see features(model, volume)).",
        "let f = features(load_pretrained(\"runs/pre/mae\"), vol);",
        |ctx: NativeCallContext, ckpt: PretrainedRef, v: VolumeRef| -> ScriptResult<Array> {
            use burn::module::AutodiffModule;
            let device = nn::device("cpu").map_err(at(&ctx))?;
            ckpt.network
                .encoder
                .valid()
                .features(&v, &device)
                .map(volumes_to_array)
                .map_err(|e| runtime_error(format!("features: {e}"), ctx.call_position()))
        },
    );
}

/// Register the PyTorch import and export primitives (part of the pre-training package).
pub fn register_pytorch(engine: &mut Engine, help: &mut HelpIndex) {
    use pretrain::pytorch::{ExportNames, PytorchOptions};
    let mut r = Registrar::new(
        engine,
        help,
        "pytorch",
        "PyTorch checkpoints: import nnssl / MultiTalent encoders, export under nnssl's names",
    );
    r.options((*LOAD_OPTIONS).clone())
        .options((*SAVE_OPTIONS).clone());
    r.func(
        "load_pretrained(path: String, options: Map) -> Pretrained",
        "Read a PyTorch checkpoint (.pth/.pt of nnssl, MultiTalent or nnU-Net, or a .safetensors\n\
         export) with options; `architecture` is for files without a plan, such as nnssl's\n\
         SparkMAETrainer checkpoints. Without it the file's own plan decides (as in\n\
         load_pretrained(path)).\n\
         The pickle is never executed; a file naming code (e.g. os.system) is refused.",
        "let ckpt = load_pretrained(\"spark/checkpoint_final.pth\", #{architecture: backbone(\"resenc_l\")});\nprint(ckpt.stems());",
        |ctx: NativeCallContext, path: &str, mut opts: Map| -> ScriptResult<PretrainedRef> {
            check_options(&ctx, &LOAD_OPTIONS, &opts)?;
            let mut options = PytorchOptions::default();
            if let Some(a) = opts.remove("architecture") {
                let backbone = a.try_cast::<Backbone>().ok_or_else(|| {
                    runtime_error("load_pretrained: architecture must be a Backbone, e.g. backbone(\"resenc_l\")", ctx.call_position())
                })?;
                options.encoder = Some(backbone.0);
            }
            let device = nn::device("cpu").map_err(at(&ctx))?;
            pretrain::pytorch::load_file::<ScriptBackend>(std::path::Path::new(path), &options, &device)
                .map(Arc::new)
                .map_err(|e| runtime_error(format!("load_pretrained: {e}"), ctx.call_position()))
        },
    );
    fn save(
        ctx: &NativeCallContext,
        ckpt: &PretrainedRef,
        path: &str,
        mut opts: Map,
    ) -> ScriptResult<Map> {
        check_options(ctx, &SAVE_OPTIONS, &opts)?;
        let names = match opts.remove("names") {
            Some(n) => ExportNames::parse(&n.to_string()).map_err(at(ctx))?,
            None => ExportNames::Nnssl,
        };
        let count = pretrain::pytorch::save_safetensors(ckpt, std::path::Path::new(path), names)
            .map_err(|e| runtime_error(format!("save_pretrained: {e}"), ctx.call_position()))?;
        let mut out = Map::new();
        out.insert("path".into(), Dynamic::from(path.to_string()));
        out.insert("tensors".into(), Dynamic::from(count as i64));
        Ok(out)
    }
    r.func(
        "save_pretrained(checkpoint: Pretrained, path: String, options: Map) -> Map",
        "Write the checkpoint's encoder (stem, stages, MultiTalent stems) as safetensors for\n\
         PyTorch. names \"nnssl\" writes dynamic-network-architectures' keys such as\n\
         encoder.stages.1.blocks.0.skip.1.conv.weight, with the all_modules aliases, so that\n\
         network.encoder.load_state_dict(..., strict=True) works after removing \"encoder.\".\n\
         load_pretrained reads the file back exactly. Returns #{path, tensors}.",
        "save_pretrained(load_pretrained(\"runs/pre/mae\"), \"mae_encoder.safetensors\", #{names: \"nnssl\"});",
        |ctx: NativeCallContext, ckpt: PretrainedRef, path: &str, opts: Map| -> ScriptResult<Map> {
            save(&ctx, &ckpt, path, opts)
        },
    );
    r.func(
        "save_pretrained(checkpoint: Pretrained, path: String) -> Map",
        "Write the checkpoint's encoder as safetensors under nnssl's names (see the 3-argument form).",
        "save_pretrained(ckpt, \"encoder.safetensors\");",
        |ctx: NativeCallContext, ckpt: PretrainedRef, path: &str| -> ScriptResult<Map> {
            save(&ctx, &ckpt, path, Map::new())
        },
    );
}
