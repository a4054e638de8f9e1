//! Post-processing primitives: nnDetection's sweep of the merging settings on validation
//! cases (`infer::sweep`), stored in the model for `predict` and `save_model`.

use super::data::PreprocessedRef;
use super::model::{ModelRef, ids_option, lock};
use crate::data::Subset;
use crate::infer::{self, InferenceConfig, SweepConfig};
use crate::script::convert::{
    ScriptResult, as_f64, at, check_options, options, runtime_error, to_script,
};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use burn::module::AutodiffModule;
use rhai::{Dynamic, Engine, Map, NativeCallContext};
use std::sync::LazyLock;

/// `sweep_postprocessing`'s options: the values tried per step plus what to predict.
static SWEEP_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<SweepConfig>("sweep_postprocessing").with(&[
        Extra::new(
            "split",
            "\"val\" | \"train\" | \"all\"",
            "\"val\"",
            "The labelled cases to sweep on; \"val\" is the validation split `train` draws with the same `val_fraction` and `seed`.",
        ),
        Extra::new("ids", "[String, …]", "the split", "The case ids to sweep on (instead of `split`)."),
        Extra::new("val_fraction", "Float", "0.2", "Validation fraction of the \"val\" split (as given to `train`)."),
        Extra::new("seed", "Int", "0", "Seed of the \"val\" split (`train`'s `seed`)."),
        Extra::new(
            "inference",
            "Map",
            "predict's defaults",
            "Settings of the one prediction pass and the search's starting point (predict's options, e.g. #{tta: false}); nnDetection's defaults.",
        ),
        Extra::new("apply", "Bool", "true", "Store the chosen settings in the model, so predict and save_model use them."),
    ])
});

/// The labelled case ids `sweep_postprocessing` sweeps on.
fn sweep_ids(
    ctx: &NativeCallContext,
    data: &PreprocessedRef,
    opts: &mut Map,
) -> ScriptResult<Vec<String>> {
    let split = opts
        .remove("split")
        .map(|s| s.to_string())
        .unwrap_or_else(|| "val".into());
    let val_fraction = opts
        .remove("val_fraction")
        .and_then(|v| as_f64(&v))
        .unwrap_or(0.2);
    let seed = opts
        .remove("seed")
        .and_then(|v| v.as_int().ok())
        .unwrap_or(0)
        .max(0) as u64;
    if let Some(ids) = opts.remove("ids") {
        return ids_option(ctx, "sweep_postprocessing: ids", ids);
    }
    let labelled = data.ids(Subset::Train);
    match split.as_str() {
        "val" => {
            let split = crate::data::Splits::train_val_test(&labelled, val_fraction, 0.0, seed)
                .map_err(at(ctx))?;
            Ok(split.folds[0].val.clone())
        }
        "train" | "all" => Ok(labelled),
        other => Err(runtime_error(
            format!(
                "sweep_postprocessing: split must be \"val\", \"train\" or \"all\" (or pass ids), got \"{other}\""
            ),
            ctx.call_position(),
        )),
    }
}

fn sweep_impl(
    ctx: &NativeCallContext,
    model: &ModelRef,
    data: &PreprocessedRef,
    mut opts: Map,
) -> ScriptResult<Map> {
    check_options(ctx, &SWEEP_OPTIONS, &opts)?;
    let ids = sweep_ids(ctx, data, &mut opts)?;
    if ids.is_empty() {
        return Err(runtime_error(
            "sweep_postprocessing: no labelled cases to sweep on",
            ctx.call_position(),
        ));
    }
    let apply = opts
        .remove("apply")
        .map(|v| v.as_bool().unwrap_or(true))
        .unwrap_or(true);
    let mut inference_map = match opts.remove("inference") {
        None => Map::new(),
        Some(v) => v.try_cast::<Map>().ok_or_else(|| {
            runtime_error(
                "sweep_postprocessing: option `inference` must be a map of predict's options",
                ctx.call_position(),
            )
        })?,
    };
    if let Some(t) = inference_map.get("tta").cloned()
        && let Ok(b) = t.as_bool()
    {
        inference_map.insert("tta".into(), b.into());
    }
    let mut start: InferenceConfig =
        options(ctx, "sweep_postprocessing: inference", inference_map)?;
    start.validate().map_err(at(ctx))?;
    let sweep: SweepConfig = options(ctx, "sweep_postprocessing", opts)?;
    sweep.validate().map_err(at(ctx))?;
    let mut state = lock(ctx, model)?;
    let patch = start.patch_size.or(state.spec.patch_size).ok_or_else(|| {
        runtime_error(
            "sweep_postprocessing: the model was never trained, so its tile size is unknown: pass #{inference: #{patch_size: [D, H, W]}}",
            ctx.call_position(),
        )
    })?;
    start.patch_size = Some(patch);
    let device = state.device.clone();
    let (num_classes, cases) = super::model::with_net!(&state.net, net => {
        let valid = net.valid();
        (
            crate::nn::Detector::num_classes(&valid),
            infer::collect_sweep_cases(&valid, data, &ids, patch, &start, &device),
        )
    });
    let cases = cases.map_err(at(ctx))?;
    let result =
        infer::sweep_postprocessing(&cases, &start, &sweep, num_classes).map_err(at(ctx))?;
    if apply {
        state.spec.postprocessing = Some(result.chosen.clone());
    }
    let mut m = Map::new();
    m.insert("chosen".into(), to_script(ctx, &result.chosen)?);
    m.insert("score".into(), Dynamic::from_float(result.score));
    m.insert("metric".into(), result.metric.clone().into());
    m.insert("trials".into(), to_script(ctx, &result.trials)?);
    m.insert(
        "cases".into(),
        ids.iter()
            .map(|i| Dynamic::from(i.clone()))
            .collect::<rhai::Array>()
            .into(),
    );
    Ok(m)
}

/// Register the post-processing package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    let mut r = Registrar::new(
        engine,
        help,
        "postprocess",
        "nnDetection's post-processing sweep on validation cases",
    );
    r.options((*SWEEP_OPTIONS).clone());
    r.func(
        "sweep_postprocessing(model: Model, data: PreprocessedDataset, options: Map) -> Map",
        "nnDetection's post-processing sweep: predict the validation cases once, then set model_iou,\n\
         the NMS kind (weighted_nms), ensemble_iou, score_threshold and remove_small_boxes one\n\
         after the other to the value maximising mAP over IoU 0.1–0.5 (preprocessed grid),\n\
         re-merging the stored predictions. Returns #{chosen, score, metric, cases, trials} where\n\
         trials is a table of every setting tried (#{step, parameter, value, score, chosen,\n\
         model_iou, …}); the chosen settings are stored in the model (apply: true), so predict\n\
         uses them and save_model keeps them.",
        "let sweep = sweep_postprocessing(model, pre, #{split: \"val\", inference: #{tta: false}});\nprint(sweep.chosen);\nsave_csv(sweep.trials, \"runs/demo/sweep.csv\");",
        |ctx: NativeCallContext, m: ModelRef, data: PreprocessedRef, opts: Map| -> ScriptResult<Map> {
            sweep_impl(&ctx, &m, &data, opts)
        },
    );
}
