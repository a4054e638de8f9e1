//! The planning primitive: `plan(dataset)` returns nnDetection's "default" configuration as a
//! map (a thin wrapper over [`crate::nn::planning::plan`]).

use super::data::DatasetRef;
use super::model::Backbone;
use crate::nn::planning::{self, PlanConfig};
use crate::script::convert::{ScriptResult, at, check_options, options, to_script};
use crate::script::help::HelpIndex;
use crate::script::options::OptionSet;
use crate::script::registrar::Registrar;
use rhai::{Dynamic, Engine, Map, NativeCallContext};
use std::sync::LazyLock;

static PLAN_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| OptionSet::of::<PlanConfig>("plan"));

fn plan_map(ctx: &NativeCallContext, dataset: &DatasetRef, opts: Map) -> ScriptResult<Map> {
    check_options(ctx, &PLAN_OPTIONS, &opts)?;
    let config: PlanConfig = options(ctx, "plan", opts)?;
    config.validate().map_err(at(ctx))?;
    let fingerprint = crate::data::fingerprint(dataset, config.crop_nonzero).map_err(at(ctx))?;
    let plan = planning::plan(&fingerprint, &config).map_err(at(ctx))?;
    let mut map: Map = to_script(ctx, &plan)?
        .try_cast::<Map>()
        .expect("a serialised struct is a map");
    // The network as script values: the encoder as a Backbone for `detector`, the rest as
    // `detector` options.
    map.remove("network");
    map.insert(
        "backbone".into(),
        Dynamic::from(Backbone(plan.network.encoder.clone())),
    );
    let mut detector = Map::new();
    let net = &plan.network;
    detector.insert("num_classes".into(), (net.num_classes as i64).into());
    detector.insert("fpn_channels".into(), (net.fpn_channels as i64).into());
    detector.insert("head_channels".into(), (net.head_channels as i64).into());
    detector.insert(
        "head_channels_per_group".into(),
        (net.head_channels_per_group as i64).into(),
    );
    detector.insert(
        "detection_levels".into(),
        to_script(ctx, &net.detection_levels)?,
    );
    detector.insert("anchor_sizes".into(), to_script(ctx, &net.anchor_sizes)?);
    map.insert("detector".into(), detector.into());
    Ok(map)
}

/// Register the planning primitive.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    let mut r = Registrar::new(
        engine,
        help,
        "plan",
        "nnDetection's planned \"default\" configuration: spacing, patch, network, anchors",
    );
    r.options((*PLAN_OPTIONS).clone());
    const DOC: &str = "Plan nnDetection's \"default\" configuration from the training cases (planner D3V001 /\n\
         BoxC002): `target_spacing` (median rule with the anisotropy exception), `patch_size`\n\
         (the mm-isotropic start shrunk until the memory model fits; every candidate is in\n\
         `search`), `pools` and anisotropic `conv_kernels` (nnU-Net's get_pool_and_conv_props),\n\
         `strides` per encoder stage, `detection_levels`, `anchor_sizes` (planned on the boxes\n\
         scaled to the target spacing), `memory` (the estimate), `batch_size`,\n\
         `low_resolution_triggered`, `dummy_2d_augmentation`, `backbone` (a Backbone) and\n\
         `detector` (options for `detector`). Every key can be read and overwritten; arrays are\n\
         [D, H, W]. Memory is estimated, not measured: see help(\"plan\") options `memory.*`.\n\
         Anchors are planned again at the first `train` unless `plan_anchors: false`.";
    const EXAMPLE: &str = "let p = plan(ds);\n\
         let pre = preprocess(ds, #{spacing: p.target_spacing});\n\
         let model = detector(\"retina_unet\", p.backbone, p.detector);\n\
         train(model, pre, #{patch: p.patch_size, batch: p.batch_size, plan_anchors: false});";
    r.func(
        "plan(dataset: Dataset) -> Map",
        DOC,
        EXAMPLE,
        |ctx: NativeCallContext, dataset: DatasetRef| -> ScriptResult<Map> {
            plan_map(&ctx, &dataset, Map::new())
        },
    );
    r.func(
        "plan(dataset: Dataset, options: Map) -> Map",
        "Plan with options, e.g. a fixed spacing #{target_spacing: #{fixed: [1.0, 1.0, 1.0]}},\n\
         another memory budget #{memory: #{budget_bytes: 24e9}} or smaller widths\n\
         #{start_channels: 8, max_channels: 64}; help(\"plan\") lists every option.",
        "let p = plan(ds, #{target_spacing: #{fixed: [1.0, 1.0, 1.0]}});",
        |ctx: NativeCallContext, dataset: DatasetRef, opts: Map| -> ScriptResult<Map> {
            plan_map(&ctx, &dataset, opts)
        },
    );
}
