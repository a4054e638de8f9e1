//! Model primitives: devices, backbones (encoders), detectors, saving and loading, training
//! and prediction. The script layer fixes one backend, `Autodiff<Dispatch>`.

use super::data::PreprocessedRef;
use super::volume::{VolumeRef, box_to_array};
use crate::data::{PreprocessedDataset, Subset};
use crate::infer::{self, CasePrediction, InferenceConfig};
use crate::nn::retina_unet::anchors::{AnchorPlanOptions, plan_anchors};
use crate::nn::{
    self, DefDetr, DefDetrConfig, DetectorConfig, DispatchDevice, EncoderConfig, ModelSpec,
    RetinaUNet, RetinaUNetConfig, ScriptBackend,
};
use crate::script::convert::{ScriptResult, at, check_options, runtime_error, to_script};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use crate::train::{self, TrainConfig, TrainRun};
use burn::module::{AutodiffModule, Module};
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

/// A device handle in scripts.
#[derive(Clone, Debug)]
pub struct Device(pub DispatchDevice);

/// A backbone (encoder configuration) in scripts.
#[derive(Clone, Debug)]
pub struct Backbone(pub EncoderConfig);

/// The network of a model, one variant per detector kind.
pub enum Net {
    /// A Retina U-Net.
    RetinaUNet(RetinaUNet<ScriptBackend>),
    /// A 3D Deformable DETR.
    DefDetr(DefDetr<ScriptBackend>),
}

impl From<RetinaUNet<ScriptBackend>> for Net {
    fn from(m: RetinaUNet<ScriptBackend>) -> Self {
        Net::RetinaUNet(m)
    }
}

impl From<DefDetr<ScriptBackend>> for Net {
    fn from(m: DefDetr<ScriptBackend>) -> Self {
        Net::DefDetr(m)
    }
}

/// Evaluate `$body` with `$m` bound to the network inside a [`Net`] (by value, `&` or
/// `&mut`, as `$net` is), whatever the detector: the body is compiled once per detector type,
/// and `Net::from` wraps a returned network again.
macro_rules! with_net {
    ($net:expr, $m:ident => $body:expr) => {
        match $net {
            $crate::script::packages::model::Net::RetinaUNet($m) => $body,
            $crate::script::packages::model::Net::DefDetr($m) => $body,
        }
    };
}
pub(crate) use with_net;

/// A model in scripts: its description, network and device, shared so that `train` updates
/// the model the script holds.
pub struct ModelState {
    /// What the model is (saved as `model.json`).
    pub spec: ModelSpec,
    /// The network with its current weights.
    pub net: Net,
    /// Where it runs.
    pub device: DispatchDevice,
}

/// The script-side handle of a model.
pub type ModelRef = Arc<Mutex<ModelState>>;

const MODEL_FILE: &str = "model.json";
const WEIGHTS_FILE: &str = "weights.mpk";

/// Apply script options on top of a serde config: unknown keys and wrong types are errors
/// naming the primitive and the option.
fn override_config<T: serde::Serialize + serde::de::DeserializeOwned>(
    ctx: &NativeCallContext,
    what: &str,
    base: &T,
    opts: &Map,
) -> ScriptResult<T> {
    crate::script::convert::options_over(ctx, what, base, opts)
}

/// `backbone`'s options for the Retina U-Net encoder presets.
static RETUNET_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::over(
        "backbone",
        &crate::nn::RetUNetEncoderConfig::nndetection(1, 6),
    )
    .variant("\"retunet\", \"retunet_tiny\"")
    .with(&[Extra::new(
        "stages",
        "Int",
        "6",
        "Stages of the \"retunet\" preset (widths 32·2^s, capped at 320).",
    )])
});

/// `backbone`'s options for the residual encoder presets.
static RESENC_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::over("backbone", &crate::nn::ResEncConfig::resenc_l(1))
        .variant("\"resenc_l\", \"resenc_tiny\"")
});

/// `detector`'s options: the Retina U-Net settings (the encoder is the backbone given).
static DETECTOR_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::over("detector", &RetinaUNetConfig::tiny(1, 1))
        .variant("\"retina_unet\"")
        .without(&["encoder"])
        .with(&[
            Extra::new(
                "device",
                "Device or String",
                "\"cpu\"",
                "Where the model runs: a Device or a name like \"cuda:0\".",
            ),
            Extra::new("seed", "Int", "0", "Seed of the weight initialisation."),
        ])
});

/// `detector`'s options for `"def_detr"`: the Deformable DETR settings (defaults of the 2D
/// paper made 3D; the encoder is the backbone given).
static DEF_DETR_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::over("detector", &DefDetrConfig::default())
        .variant("\"def_detr\"")
        .without(&["encoder"])
        .with(&[
            Extra::new(
                "device",
                "Device or String",
                "\"cpu\"",
                "Where the model runs: a Device or a name like \"cuda:0\".",
            ),
            Extra::new("seed", "Int", "0", "Seed of the weight initialisation."),
        ])
});

/// `train`'s options: the training settings plus the case selection.
static TRAIN_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<TrainConfig>("train").with(&[
        Extra::new("out", "String", "\"runs/train\"", "Output folder for the `last` and `best` checkpoints."),
        Extra::new("recipe", "\"nndetection\" | \"def_detr\"", "\"nndetection\"", "The settings the other options override: \"def_detr\" is the paper's DefDETR fine-tuning (Adam AMSGrad, lr 3e-4, weight decay 1e-4, clip 0.1, encoder_lr_factor 0.1, encoder frozen for 5 % of the iterations unless freeze_encoder_iters is given)."),
        Extra::new("train_ids", "[String, …]", "a seeded split", "The training case ids (default: the cases left by `val_fraction`)."),
        Extra::new("val_ids", "[String, …]", "a seeded split", "The validation case ids (default: a seeded `val_fraction` of the training cases)."),
        Extra::new("val_fraction", "Float", "0.2", "Fraction of the training cases held out for validation when no ids are given."),
        Extra::new("plan_anchors", "Bool", "first training", "Plan the anchor sizes from the training boxes (default: only when the model was never trained)."),
    ])
});

/// `predict`'s options: the inference settings plus what to predict and where to write it.
static PREDICT_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<InferenceConfig>("predict").with(&[
        Extra::new(
            "split",
            "\"test\" | \"train\" | \"all\"",
            "\"test\"",
            "The cases of a PreprocessedDataset to predict.",
        ),
        Extra::new(
            "ids",
            "[String, …]",
            "the split",
            "The case ids to predict (instead of `split`).",
        ),
        Extra::new(
            "out",
            "String",
            "()",
            "Folder for one prediction file `<case>.json` per case.",
        ),
        Extra::new(
            "id",
            "String",
            "the file name",
            "The case name of a raw Volume's prediction.",
        ),
    ])
});

fn backbone_preset(
    ctx: &NativeCallContext,
    name: &str,
    in_channels: usize,
    stages: usize,
) -> ScriptResult<EncoderConfig> {
    use crate::nn::{ResEncConfig, RetUNetEncoderConfig};
    Ok(match name {
        "retunet" => EncoderConfig::Retunet(RetUNetEncoderConfig::nndetection(in_channels, stages)),
        "retunet_tiny" => EncoderConfig::Retunet(RetUNetEncoderConfig::tiny(in_channels)),
        "resenc_l" => EncoderConfig::Resenc(ResEncConfig::resenc_l(in_channels)),
        "resenc_tiny" => EncoderConfig::Resenc(ResEncConfig::tiny(in_channels)),
        other => {
            return Err(runtime_error(
                format!(
                    "backbone: unknown name \"{other}\"; use \"retunet\", \"retunet_tiny\", \"resenc_l\" or \"resenc_tiny\""
                ),
                ctx.call_position(),
            ));
        }
    })
}

fn make_backbone(ctx: &NativeCallContext, name: &str, mut opts: Map) -> ScriptResult<Backbone> {
    let set = if name.starts_with("resenc") {
        &RESENC_OPTIONS
    } else {
        &RETUNET_OPTIONS
    };
    check_options(ctx, set, &opts)?;
    let in_channels = opts
        .remove("in_channels")
        .and_then(|v| v.as_int().ok())
        .unwrap_or(1)
        .max(1) as usize;
    let stages = opts
        .remove("stages")
        .and_then(|v| v.as_int().ok())
        .unwrap_or(6)
        .max(1) as usize;
    let preset = backbone_preset(ctx, name, in_channels, stages)?;
    let config = match &preset {
        EncoderConfig::Retunet(c) => {
            EncoderConfig::Retunet(override_config(ctx, "backbone", c, &opts)?)
        }
        EncoderConfig::Resenc(c) => {
            EncoderConfig::Resenc(override_config(ctx, "backbone", c, &opts)?)
        }
    };
    config.validate().map_err(at(ctx))?;
    Ok(Backbone(config))
}

impl ModelState {
    /// Build an untrained model from a spec on `device`, seeding the weight initialisation.
    pub fn build(spec: ModelSpec, device: DispatchDevice, seed: u64) -> Result<Self, nn::NnError> {
        nn::backend::seed(&device, seed);
        let net = match &spec.detector {
            DetectorConfig::RetinaUnet(c) => Net::RetinaUNet(c.init::<ScriptBackend>(&device)?),
            DetectorConfig::DefDetr(c) => Net::DefDetr(c.init::<ScriptBackend>(&device)?),
        };
        Ok(ModelState { spec, net, device })
    }

    fn num_params(&self) -> usize {
        with_net!(&self.net, m => m.num_params())
    }

    fn summary(&self) -> String {
        use crate::nn::Detector;
        with_net!(&self.net, m => m.summary())
    }

    /// Save `model.json` and `weights.mpk` into the folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.spec.to_json()).unwrap_or_default() + "\n";
        crate::util::atomic_write(&dir.join(MODEL_FILE), text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", dir.join(MODEL_FILE).display()))?;
        with_net!(&self.net, m => {
            nn::save_weights(m, &dir.join(WEIGHTS_FILE)).map_err(|e| e.to_string())
        })
    }

    /// Load a model folder written by `save` or a training checkpoint folder (`<out>/best`,
    /// `<out>/last`, or `<out>` itself).
    pub fn load(path: &Path, device: DispatchDevice) -> Result<Self, String> {
        // A run folder (`out`) stands for its `last` checkpoint: the state `train` leaves in
        // the model object too.
        let last = path.join("last");
        let path = if !path.join(MODEL_FILE).is_file()
            && !train::has_checkpoint(path)
            && train::has_checkpoint(&last)
        {
            last.as_path()
        } else {
            path
        };
        let model_file = path.join(MODEL_FILE);
        let (spec, weights_dir) = if model_file.is_file() {
            let text = std::fs::read_to_string(&model_file)
                .map_err(|e| format!("cannot read {}: {e}", model_file.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{}:{}:{}: invalid JSON: {e}",
                    model_file.display(),
                    e.line(),
                    e.column()
                )
            })?;
            (
                ModelSpec::from_json(value, &model_file.display().to_string())
                    .map_err(|e| e.to_string())?,
                path.to_path_buf(),
            )
        } else if train::has_checkpoint(path) {
            let state = train::read_checkpoint_state(path).map_err(|e| e.to_string())?;
            let spec = ModelSpec::from_json(
                state.model_config.clone(),
                &format!("{} (model_config)", path.display()),
            )
            .map_err(|e| e.to_string())?;
            (spec, path.to_path_buf())
        } else {
            return Err(format!(
                "{} is neither a saved model (no {MODEL_FILE}) nor a training checkpoint (no last/ or best/ with state.json)",
                path.display()
            ));
        };
        let mut state = ModelState::build(spec, device, 0).map_err(|e| e.to_string())?;
        let w = weights_dir.join(WEIGHTS_FILE);
        let net = with_net!(state.net, m => Net::from(if w.is_file() {
            nn::load_weights(m, &w, &state.device).map_err(|e| e.to_string())?
        } else {
            train::load_checkpoint_weights(m, &weights_dir, &state.device)
                .map_err(|e| e.to_string())?
        }));
        state.net = net;
        Ok(state)
    }
}

pub(crate) fn lock<'a>(
    ctx: &NativeCallContext,
    m: &'a ModelRef,
) -> ScriptResult<std::sync::MutexGuard<'a, ModelState>> {
    m.lock().map_err(|_| {
        runtime_error(
            "the model is unusable: an earlier call panicked while using it",
            ctx.call_position(),
        )
    })
}

fn describe_model(m: &ModelRef) -> String {
    match m.lock() {
        Ok(s) => {
            let trained = if s.spec.patch_size.is_some() {
                "trained"
            } else {
                "untrained"
            };
            format!(
                "Model {} ({} parameters, {trained}, on {})",
                s.spec.detector.name(),
                s.num_params(),
                nn::device_name(&s.device)
            )
        }
        Err(_) => "Model (unusable)".into(),
    }
}

/// Plan the anchors of a Retina U-Net from the training boxes of a preprocessed dataset.
fn plan_model_anchors(
    config: &mut RetinaUNetConfig,
    data: &PreprocessedDataset,
    ids: &[String],
) -> Result<f64, String> {
    let mut boxes = Vec::new();
    for id in ids {
        boxes.extend(data.case_meta(id).map_err(|e| e.to_string())?.boxes);
    }
    if boxes.is_empty() {
        return Err("cannot plan anchors: the training cases have no boxes".into());
    }
    let strides = config.encoder.cumulative_strides();
    let level_strides: Vec<[usize; 3]> = config
        .resolved_detection_levels()
        .iter()
        .map(|&l| strides[l])
        .collect();
    let plan = plan_anchors(&boxes, &level_strides, &AnchorPlanOptions::default())
        .map_err(|e| e.to_string())?;
    config.anchor_sizes = plan.base_sizes;
    Ok(plan.mean_best_iou)
}

/// The history of a run as columns (easy to plot), plus epochs and checkpoints.
/// A run's per-iteration history as columns (easy to plot): iteration, loss, lr and one
/// column per loss term (NaN where an iteration lacks it). Shared by `train` and `pretrain`.
pub(crate) fn history_columns(records: &[train::IterationRecord]) -> Map {
    let mut history = Map::new();
    let col = |f: &dyn Fn(&train::IterationRecord) -> Dynamic| -> Dynamic {
        Dynamic::from_array(records.iter().map(f).collect())
    };
    history.insert(
        "iteration".into(),
        col(&|r| Dynamic::from(r.iteration as i64)),
    );
    history.insert("loss".into(), col(&|r| Dynamic::from_float(r.loss)));
    history.insert("lr".into(), col(&|r| Dynamic::from_float(r.lr)));
    let mut names: Vec<String> = records
        .iter()
        .flat_map(|r| r.components.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        history.insert(
            n.as_str().into(),
            col(&|r| Dynamic::from_float(r.components.get(&n).copied().unwrap_or(f64::NAN))),
        );
    }
    history
}

/// The `device` option of a primitive: a Device, a name like "cpu", or the CPU when absent.
pub(crate) fn device_option(
    ctx: &NativeCallContext,
    what: &str,
    value: Option<Dynamic>,
) -> ScriptResult<DispatchDevice> {
    match value {
        None => nn::device("cpu").map_err(at(ctx)),
        Some(d) if d.is_string() => nn::device(&d.to_string()).map_err(at(ctx)),
        Some(d) => d.try_cast::<Device>().map(|d| d.0).ok_or_else(|| {
            runtime_error(
                format!("{what}: device must be a Device or a name like \"cpu\""),
                ctx.call_position(),
            )
        }),
    }
}

fn run_map(ctx: &NativeCallContext, run: &TrainRun) -> ScriptResult<Map> {
    let history = history_columns(&run.history);
    let mut m = Map::new();
    m.insert("history".into(), history.into());
    m.insert("epochs".into(), to_script(ctx, &run.epochs)?);
    m.insert(
        "best".into(),
        match &run.best {
            Some(b) => to_script(ctx, b)?,
            None => Dynamic::UNIT,
        },
    );
    m.insert("last".into(), to_script(ctx, &run.last)?);
    m.insert("restarts".into(), to_script(ctx, &run.restarts)?);
    m.insert("iterations".into(), (run.iterations_done as i64).into());
    m.insert("finished".into(), run.finished.into());
    m.insert("config".into(), to_script(ctx, &run.config)?);
    Ok(m)
}

fn prediction_map(p: &CasePrediction) -> Map {
    let mut m = Map::new();
    m.insert("id".into(), p.case.clone().into());
    m.insert(
        "boxes".into(),
        p.boxes.iter().map(box_to_array).collect::<Array>().into(),
    );
    m.insert(
        "boxes_mm".into(),
        p.boxes_mm
            .iter()
            .map(box_to_array)
            .collect::<Array>()
            .into(),
    );
    m.insert(
        "boxes_preprocessed".into(),
        p.boxes_preprocessed
            .iter()
            .map(box_to_array)
            .collect::<Array>()
            .into(),
    );
    m.insert(
        "scores".into(),
        p.scores
            .iter()
            .map(|&s| Dynamic::from_float(s))
            .collect::<Array>()
            .into(),
    );
    m.insert(
        "classes".into(),
        p.classes
            .iter()
            .map(|&c| Dynamic::from(c as i64))
            .collect::<Array>()
            .into(),
    );
    m.insert(
        "spacing".into(),
        p.spacing
            .iter()
            .map(|&s| Dynamic::from_float(s))
            .collect::<Array>()
            .into(),
    );
    m.insert(
        "shape".into(),
        p.shape
            .iter()
            .map(|&s| Dynamic::from(s as i64))
            .collect::<Array>()
            .into(),
    );
    m
}

pub(crate) fn ids_option(
    ctx: &NativeCallContext,
    what: &str,
    v: Dynamic,
) -> ScriptResult<Vec<String>> {
    let arr = v
        .read_lock::<Array>()
        .ok_or_else(|| {
            runtime_error(
                format!("{what} must be an array of case ids"),
                ctx.call_position(),
            )
        })?
        .clone();
    Ok(arr.iter().map(|x| x.to_string()).collect())
}

/// `train`'s settings from its options map. `augment` is a preset name or a map over the preset
/// it names, so the defaults under the user's map leave it empty (the preset fills it).
fn train_config(ctx: &NativeCallContext, opts: &Map) -> ScriptResult<TrainConfig> {
    let mut opts = opts.clone();
    let recipe = match opts.remove("recipe") {
        Some(name) => train::TrainRecipe::named(&name.to_string()).map_err(at(ctx))?,
        None => train::TrainRecipe::default(),
    };
    let mut base = serde_json::to_value(recipe.config())
        .map_err(|e| runtime_error(format!("train: {e}"), ctx.call_position()))?;
    base["augment"] = serde_json::json!({});
    let config = crate::script::options::deserialize("train", Some(base), &opts)
        .map_err(|message| runtime_error(message, ctx.call_position()))?;
    Ok(recipe.complete(config, opts.contains_key("freeze_encoder_iters")))
}

fn train_impl(
    ctx: &NativeCallContext,
    model: &ModelRef,
    data: &PreprocessedRef,
    mut opts: Map,
) -> ScriptResult<Map> {
    check_options(ctx, &TRAIN_OPTIONS, &opts)?;
    let train_ids = opts
        .remove("train_ids")
        .map(|v| ids_option(ctx, "train: train_ids", v))
        .transpose()?;
    let val_ids = opts
        .remove("val_ids")
        .map(|v| ids_option(ctx, "train: val_ids", v))
        .transpose()?;
    let val_fraction = opts
        .remove("val_fraction")
        .and_then(|v| crate::script::convert::as_f64(&v))
        .unwrap_or(0.2);
    let plan = opts
        .remove("plan_anchors")
        .map(|v| v.as_bool().unwrap_or(true));
    if !opts.contains_key("out") {
        opts.insert("out".into(), "runs/train".into());
    }
    let config = train_config(ctx, &opts)?;
    config.validate().map_err(at(ctx))?;
    let labelled = data.ids(Subset::Train);
    let (train_ids, val_ids) = match (train_ids, val_ids) {
        (Some(t), Some(v)) => (t, v),
        (t, v) => {
            let split =
                crate::data::Splits::train_val_test(&labelled, val_fraction, 0.0, config.seed)
                    .map_err(at(ctx))?;
            let fold = &split.folds[0];
            (
                t.unwrap_or_else(|| fold.train.clone()),
                v.unwrap_or_else(|| fold.val.clone()),
            )
        }
    };
    let mut state = lock(ctx, model)?;
    // A freshly built model is planned on resume too: the plan is deterministic in the data
    // and the split, so it equals the saved run's, whose model description resume checks.
    let fresh = state.spec.patch_size.is_none();
    // Only Retina U-Net has anchors; Deformable DETR predicts boxes directly.
    if plan.unwrap_or(fresh)
        && let Net::RetinaUNet(net) = &mut state.net
    {
        let mut cfg = net.config.clone();
        plan_model_anchors(&mut cfg, data, &train_ids)
            .map_err(|e| runtime_error(format!("train: {e}"), ctx.call_position()))?;
        net.config.anchor_sizes = cfg.anchor_sizes;
        if let DetectorConfig::RetinaUnet(spec_cfg) = &mut state.spec.detector {
            spec_cfg.anchor_sizes = cfg.anchor_sizes;
        }
    }
    state.spec.patch_size = Some(config.patch);
    state.spec.preprocessing = Some(data.plan().clone());
    // Post-processing swept for the old weights does not carry over to new ones.
    state.spec.postprocessing = None;
    let model_config = state.spec.to_json();
    let device = state.device.clone();
    let placeholder = ModelState::build(state.spec.clone(), device.clone(), 0)
        .map_err(at(ctx))?
        .net;
    let net = std::mem::replace(&mut state.net, placeholder);
    let result = with_net!(net, m => train::train(
            m,
            model_config,
            data,
            &train_ids,
            &val_ids,
            &config,
            &device,
    )
    .map(|(m, run)| (Net::from(m), run)));
    match result {
        Ok((net, run)) => {
            state.net = net;
            run_map(ctx, &run)
        }
        Err(e) => {
            // The last checkpoint holds the weights when the run stopped (NaN, Ctrl-C).
            if let Ok(restored) = ModelState::load(&config.out, device) {
                state.net = restored.net;
            }
            let kind_interrupted = matches!(e, train::TrainError::Interrupted { .. });
            if kind_interrupted {
                crate::util::interrupt::request();
            }
            Err(runtime_error(format!("train: {e}"), ctx.call_position()))
        }
    }
}

fn predict_impl(
    ctx: &NativeCallContext,
    model: &ModelRef,
    data: Dynamic,
    mut opts: Map,
) -> ScriptResult<Dynamic> {
    check_options(ctx, &PREDICT_OPTIONS, &opts)?;
    let split = opts
        .remove("split")
        .map(|s| s.to_string())
        .unwrap_or_else(|| "test".into());
    let ids = opts
        .remove("ids")
        .map(|v| ids_option(ctx, "predict: ids", v))
        .transpose()?;
    let out = opts.remove("out").map(|v| PathBuf::from(v.to_string()));
    let case_name = opts.remove("id").map(|v| v.to_string());
    if let Some(t) = opts.get("tta").cloned()
        && let Ok(b) = t.as_bool()
    {
        opts.insert("tta".into(), b.into());
    }
    let state = lock(ctx, model)?;
    // Settings swept on validation cases replace the defaults; explicit options win.
    let base = match &state.spec.postprocessing {
        Some(post) => infer::with_postprocessing(&InferenceConfig::default(), post),
        None => InferenceConfig::default(),
    };
    let mut cfg: InferenceConfig = override_config(ctx, "predict", &base, &opts)?;
    cfg.validate().map_err(at(ctx))?;
    let patch = cfg.patch_size.or(state.spec.patch_size).ok_or_else(|| {
        runtime_error("predict: the model was never trained, so its tile size is unknown: pass #{patch_size: [D, H, W]}", ctx.call_position())
    })?;
    cfg.patch_size = Some(patch);
    let device = state.device.clone();
    if let Some(pre) = data.clone().try_cast::<PreprocessedRef>() {
        let ids = match ids {
            Some(ids) => ids,
            None => match split.as_str() {
                "test" => pre.ids(Subset::Test),
                "train" => pre.ids(Subset::Train),
                "all" => pre.case_ids(),
                other => {
                    return Err(runtime_error(
                        format!(
                            "predict: split must be \"test\", \"train\" or \"all\" (or pass ids), got \"{other}\""
                        ),
                        ctx.call_position(),
                    ));
                }
            },
        };
        if ids.is_empty() {
            return Err(runtime_error(
                format!("predict: the dataset has no {split} cases"),
                ctx.call_position(),
            ));
        }
        let preds =
            with_net!(&state.net, net => infer::predict_dataset(&net.valid(), &pre, &ids, patch, out.as_deref(), &cfg, &device))
                .map_err(at(ctx))?;
        return Ok(preds
            .iter()
            .map(|p| Dynamic::from_map(prediction_map(p)))
            .collect::<Array>()
            .into());
    }
    if let Some(volume) = data.try_cast::<VolumeRef>() {
        let plan = state.spec.preprocessing.clone().ok_or_else(|| {
            runtime_error("predict: the model has no preprocessing plan (train it first, or predict a PreprocessedDataset)", ctx.call_position())
        })?;
        let name = case_name.unwrap_or_else(|| {
            volume
                .source
                .first()
                .and_then(|p| p.file_name())
                .map(|n| {
                    n.to_string_lossy()
                        .trim_end_matches(".gz")
                        .trim_end_matches(".nii")
                        .trim_end_matches("_0000")
                        .to_string()
                })
                .unwrap_or_else(|| "volume".into())
        });
        let p = with_net!(&state.net, net => infer::predict_raw_volume(&net.valid(), &volume, &plan, &name, patch, &cfg, &device))
            .map_err(at(ctx))?;
        if let Some(dir) = out {
            p.write(&dir).map_err(at(ctx))?;
        }
        return Ok(Dynamic::from_map(prediction_map(&p)));
    }
    Err(runtime_error(
        "predict: data must be a PreprocessedDataset or a Volume",
        ctx.call_position(),
    ))
}

/// Register the model package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    engine.register_type_with_name::<Device>("Device");
    engine.register_type_with_name::<Backbone>("Backbone");
    engine.register_type_with_name::<ModelRef>("Model");
    engine.register_fn("to_string", |d: &mut Device| nn::device_name(&d.0));
    engine.register_fn("to_debug", |d: &mut Device| {
        format!("Device({})", nn::device_name(&d.0))
    });
    engine.register_fn("to_string", |b: &mut Backbone| {
        format!("Backbone {:?}", b.0)
    });
    engine.register_fn("to_debug", |b: &mut Backbone| describe_backbone(&b.0));
    engine.register_fn("to_string", |m: &mut ModelRef| describe_model(m));
    engine.register_fn("to_debug", |m: &mut ModelRef| describe_model(m));
    let mut r = Registrar::new(
        engine,
        help,
        "model",
        "backbones, detectors, training and prediction (burn)",
    );
    for set in [
        &RETUNET_OPTIONS,
        &RESENC_OPTIONS,
        &DETECTOR_OPTIONS,
        &DEF_DETR_OPTIONS,
        &TRAIN_OPTIONS,
        &PREDICT_OPTIONS,
    ] {
        r.options((**set).clone());
    }

    r.func(
        "device(name: String) -> Device",
        "A compute device: \"cpu\" (burn's Flex backend) or \"cuda\" / \"cuda:N\" (needs a build\n\
         with `--features cuda` and an NVIDIA driver; otherwise a clear error says what is missing).",
        "let gpu = device(\"cuda\");",
        |ctx: NativeCallContext, name: &str| -> ScriptResult<Device> { nn::device(name).map(Device).map_err(at(&ctx)) },
    );
    r.func(
        "backbone(name: String) -> Backbone",
        "An encoder with preset settings: \"retunet\" (nnDetection's Retina U-Net encoder, 6 stages,\n\
         widths 32…320), \"resenc_l\" (ResEncL: widths [32, 64, 128, 256, 320, 320], blocks\n\
         [1, 3, 4, 6, 6, 6], 90.3 M parameters), or the tiny test presets \"retunet_tiny\" and\n\
         \"resenc_tiny\" (widths [8, 16, 32, 64]).",
        "let enc = backbone(\"resenc_l\");",
        |ctx: NativeCallContext, name: &str| -> ScriptResult<Backbone> { make_backbone(&ctx, name, Map::new()) },
    );
    r.func(
        "backbone(name: String, options: Map) -> Backbone",
        "An encoder from a preset with overrides of any of its settings (the tables below).",
        "let enc = backbone(\"retunet\", #{stages: 4, widths: [16, 32, 64, 128], in_channels: 1});",
        |ctx: NativeCallContext, name: &str, opts: Map| -> ScriptResult<Backbone> {
            make_backbone(&ctx, name, opts)
        },
    );
    r.method(
        "Backbone",
        "config() -> Map",
        "The full encoder configuration (kind, widths, strides, …).",
        "print(enc.config());",
        |ctx: NativeCallContext, b: &mut Backbone| -> ScriptResult<Dynamic> {
            to_script(&ctx, &b.0)
        },
    );
    r.method(
        "Backbone",
        "num_params() -> i64",
        "Number of parameters of the encoder including its stem (ResEncL with one channel: 90,296,576).",
        "print(backbone(\"resenc_l\").num_params());",
        |ctx: NativeCallContext, b: &mut Backbone| -> ScriptResult<i64> {
            let device = nn::device("cpu").map_err(at(&ctx))?;
            let enc = b.0.init::<burn::Dispatch>(&device).map_err(at(&ctx))?;
            Ok(enc.num_params() as i64)
        },
    );
    r.func(
        "detector(kind: String, backbone: Backbone, options: Map) -> Model",
        "Build a detector around an encoder. kind: \"retina_unet\" (anchors are planned from the\n\
         training boxes when the model is first trained) or \"def_detr\" (3D Deformable DETR:\n\
         multi-scale deformable attention, Hungarian matching, no anchors). Both train, predict,\n\
         evaluate and take transferred encoders alike.",
        "let model = detector(\"retina_unet\", backbone(\"retunet_tiny\"), #{num_classes: 1});\nlet detr = detector(\"def_detr\", backbone(\"retunet\"), #{num_classes: 1, encoder_layers: 3, decoder_layers: 6});",
        |ctx: NativeCallContext,
         kind: &str,
         backbone: Backbone,
         mut opts: Map|
         -> ScriptResult<ModelRef> {
            let set = if kind == "def_detr" {
                &DEF_DETR_OPTIONS
            } else {
                &DETECTOR_OPTIONS
            };
            check_options(&ctx, set, &opts)?;
            let device = device_option(&ctx, "detector", opts.remove("device"))?;
            let seed = opts
                .remove("seed")
                .and_then(|v| v.as_int().ok())
                .unwrap_or(0) as u64;
            let detector = match kind {
                "retina_unet" => {
                    let base = RetinaUNetConfig::new(backbone.0.clone(), 1);
                    let mut cfg: RetinaUNetConfig =
                        override_config(&ctx, "detector", &base, &opts)?;
                    cfg.encoder = backbone.0;
                    DetectorConfig::RetinaUnet(cfg)
                }
                "def_detr" => {
                    let base = DefDetrConfig::new(backbone.0.clone(), 1);
                    let mut cfg: DefDetrConfig = override_config(&ctx, "detector", &base, &opts)?;
                    cfg.encoder = backbone.0;
                    DetectorConfig::DefDetr(cfg)
                }
                other => {
                    return Err(runtime_error(
                        format!("detector: unknown kind \"{other}\"; available: \"retina_unet\", \"def_detr\""),
                        ctx.call_position(),
                    ));
                }
            };
            detector.validate().map_err(at(&ctx))?;
            let state =
                ModelState::build(ModelSpec::new(detector), device, seed).map_err(at(&ctx))?;
            Ok(Arc::new(Mutex::new(state)))
        },
    );
    r.method(
        "Model",
        "summary() -> String",
        "A table of the model's layers with parameter shapes and counts.",
        "print(model.summary());",
        |ctx: NativeCallContext, m: &mut ModelRef| -> ScriptResult<String> {
            Ok(lock(&ctx, m)?.summary())
        },
    );
    r.method(
        "Model",
        "num_params() -> i64",
        "The number of trainable and frozen parameters of the whole model.",
        "print(model.num_params());",
        |ctx: NativeCallContext, m: &mut ModelRef| -> ScriptResult<i64> {
            Ok(lock(&ctx, m)?.num_params() as i64)
        },
    );
    r.method(
        "Model",
        "config() -> Map",
        "The model description saved with it: detector settings, training patch size,\n\
         preprocessing plan and class names.",
        "print(model.config().patch_size);",
        |ctx: NativeCallContext, m: &mut ModelRef| -> ScriptResult<Dynamic> {
            let s = lock(&ctx, m)?;
            Ok(crate::script::convert::json_to_dynamic(&s.spec.to_json()))
        },
    );
    r.func(
        "save_model(model: Model, path: String)",
        "Save a model into the folder `path`: model.json (its description) and weights.mpk.",
        "save_model(model, \"runs/models/retina\");",
        |ctx: NativeCallContext, m: ModelRef, path: &str| -> ScriptResult<()> {
            lock(&ctx, &m)?
                .save(Path::new(path))
                .map_err(|e| runtime_error(format!("save_model: {e}"), ctx.call_position()))
        },
    );
    r.func(
        "load_model(path: String) -> Model",
        "Load a model saved with save_model, or the weights of a training checkpoint\n\
         (`<out>`, `<out>/last` or `<out>/best`), on the CPU.",
        "let best = load_model(run.best.path);",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<ModelRef> {
            let device = nn::device("cpu").map_err(at(&ctx))?;
            ModelState::load(Path::new(path), device)
                .map(|s| Arc::new(Mutex::new(s)))
                .map_err(|e| runtime_error(format!("load_model: {e}"), ctx.call_position()))
        },
    );
    r.func(
        "load_model(path: String, device: Device) -> Model",
        "Load a saved model or checkpoint onto a device.",
        "let m = load_model(\"runs/models/retina\", device(\"cuda\"));",
        |ctx: NativeCallContext, path: &str, device: Device| -> ScriptResult<ModelRef> {
            ModelState::load(Path::new(path), device.0)
                .map(|s| Arc::new(Mutex::new(s)))
                .map_err(|e| runtime_error(format!("load_model: {e}"), ctx.call_position()))
        },
    );
    r.func(
        "train(model: Model, data: PreprocessedDataset, options: Map) -> Map",
        "Train the model in place on patches of a preprocessed dataset; returns the run:\n\
         #{history: #{iteration, loss, lr, cls, reg, seg_ce, seg_dice, …}, epochs: [#{epoch,\n\
         train_loss_mean, metrics, seconds}], best, last, restarts: [#{iteration, metric, baseline,\n\
         lr, warmup_iters}], iterations, finished}. Phases: encoder frozen (freeze_encoder_iters),\n\
         whole-network warm-up, PolyLR; `restart` restarts a stalled whole-network phase.\n\
         Ctrl-C stops cleanly, keeping `last`.",
        "let run = train(model, pre, #{lr: 0.01, epochs: 4, iters_per_epoch: 50, batch: 2, patch: [32, 32, 32], out: \"runs/demo\"});\nplot_lines(\"runs/demo/loss.png\", #{loss: run.history.loss}, #{});",
        |ctx: NativeCallContext, m: ModelRef, data: PreprocessedRef, opts: Map| -> ScriptResult<Map> {
            train_impl(&ctx, &m, &data, opts)
        },
    );
    r.func(
        "predict(model: Model, data: Dynamic, options: Map) -> Dynamic",
        "Predict whole volumes with sliding windows (training patch, 50 % overlap), mirror TTA and\n\
         weighted box clustering, as nnDetection does; boxes are restored to the original image grid.\n\
         data: a PreprocessedDataset (→ an array of #{id, boxes, boxes_mm, scores, classes, …}) or a\n\
         raw Volume (preprocessed with the model's plan → one prediction map). A model that\n\
         carries settings from sweep_postprocessing uses them in place of the defaults below\n\
         (model_iou, weighted_nms, ensemble_iou, score_threshold, remove_small_boxes); options win.",
        "let preds = predict(model, pre, #{split: \"test\", tta: false, merge: \"wbc\", out: \"runs/demo/predictions\"});",
        |ctx: NativeCallContext, m: ModelRef, data: Dynamic, opts: Map| -> ScriptResult<Dynamic> { predict_impl(&ctx, &m, data, opts) },
    );
    r.func(
        "predict(model: Model, data: Dynamic) -> Dynamic",
        "Predict the test cases of a PreprocessedDataset (or a raw Volume) with nnDetection's defaults.",
        "let preds = predict(model, pre);",
        |ctx: NativeCallContext, m: ModelRef, data: Dynamic| -> ScriptResult<Dynamic> { predict_impl(&ctx, &m, data, Map::new()) },
    );
}

fn describe_backbone(c: &EncoderConfig) -> String {
    let kind = match c {
        EncoderConfig::Retunet(_) => "retunet",
        EncoderConfig::Resenc(_) => "resenc",
    };
    format!(
        "Backbone {kind} widths {:?} strides {:?} in_channels {}",
        c.widths(),
        c.strides(),
        c.in_channels()
    )
}
