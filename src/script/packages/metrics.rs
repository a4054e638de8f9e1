//! Metric primitives: nnDetection-exact evaluation, FROC/PR curves and bootstrap rankings.
//!
//! Script-side formats:
//! - a prediction is a map `#{id, boxes, scores, classes, ...}` (what `predict` returns;
//!   extra keys are ignored), or a folder of prediction files (a string path);
//! - ground truth is an array of maps `#{id, boxes, classes}`, a dataset folder (a string
//!   path, labels read with nnDetection's (min − 1, max + 1) boxes), or a `Dataset`;
//! - a case record `#{id, gt: #{boxes, classes}, pred: #{boxes, scores, classes}}` carries
//!   both (the `detlab eval` JSON format).
//!
//! Predictions and GT are joined by `id` when both have ids, else by position.

use crate::metrics::{self, BootstrapConfig, EvalConfig, ImageGt, ImagePred};
use crate::script::convert::{
    ScriptResult, as_f64, at, check_options, options, runtime_error, to_script,
};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::path::Path;
use std::sync::LazyLock;

/// `evaluate`'s options: nnDetection's evaluation settings.
static EVALUATE_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<EvalConfig>("evaluate").with(&[Extra::new(
        "iou",
        "[Float, …]",
        "the iou_thresholds",
        "Short for `iou_thresholds`.",
    )])
});

/// The options of a curve at one IoU: the evaluation settings plus the IoU and class.
fn curve_options(primitive: &str, class_default: &'static str) -> OptionSet {
    OptionSet::of::<EvalConfig>(primitive).with(&[
        Extra::new(
            "iou",
            "Float",
            "0.1",
            "The IoU threshold of a true positive.",
        ),
        Extra::new(
            "class",
            "Int",
            class_default,
            "The class (0-based) of the curve.",
        ),
    ])
}

/// `froc_curve`'s options.
static FROC_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| curve_options("froc_curve", "all classes pooled"));

/// `pr_curve`'s options.
static PR_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| curve_options("pr_curve", "0"));

/// Something that can provide ground truth for case ids.
pub trait GroundTruthProvider: Send + Sync {
    /// The GT of each case id, in order; errors name the missing case.
    fn ground_truth(&self, ids: &[String]) -> Result<Vec<ImageGt>, String>;
}

/// One case on the script side: an optional id, predictions and optional GT.
struct CaseRecord {
    id: Option<String>,
    pred: ImagePred,
    gt: Option<ImageGt>,
}

fn numbers(ctx: &NativeCallContext, what: &str, v: Option<&Dynamic>) -> ScriptResult<Vec<f64>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let arr = v
        .read_lock::<Array>()
        .ok_or_else(|| runtime_error(format!("{what} must be an array"), ctx.call_position()))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            as_f64(x).ok_or_else(|| {
                runtime_error(format!("{what}[{i}] must be a number"), ctx.call_position())
            })
        })
        .collect()
}

fn boxes_field(
    ctx: &NativeCallContext,
    what: &str,
    v: Option<&Dynamic>,
) -> ScriptResult<Vec<[f64; 6]>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let arr = v.read_lock::<Array>().ok_or_else(|| {
        runtime_error(
            format!("{what} must be an array of boxes"),
            ctx.call_position(),
        )
    })?;
    // Validation (lengths, min <= max, finiteness) is the metrics module's job, with case names.
    arr.iter()
        .enumerate()
        .map(|(i, b)| {
            let nums = numbers(ctx, &format!("{what}[{i}]"), Some(b))?;
            if nums.len() != 6 {
                return Err(runtime_error(
                    format!(
                        "{what}[{i}] needs 6 numbers [d0, h0, w0, d1, h1, w1], got {}",
                        nums.len()
                    ),
                    ctx.call_position(),
                ));
            }
            Ok([nums[0], nums[1], nums[2], nums[3], nums[4], nums[5]])
        })
        .collect()
}

fn classes_field(
    ctx: &NativeCallContext,
    what: &str,
    v: Option<&Dynamic>,
) -> ScriptResult<Vec<usize>> {
    numbers(ctx, what, v)?
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if c < 0.0 || c.fract() != 0.0 {
                Err(runtime_error(
                    format!("{what}[{i}] must be a class index >= 0, got {c}"),
                    ctx.call_position(),
                ))
            } else {
                Ok(c as usize)
            }
        })
        .collect()
}

fn pred_from_map(ctx: &NativeCallContext, what: &str, m: &Map) -> ScriptResult<ImagePred> {
    Ok(ImagePred {
        boxes: boxes_field(ctx, &format!("{what}.boxes"), m.get("boxes"))?,
        scores: numbers(ctx, &format!("{what}.scores"), m.get("scores"))?,
        classes: classes_field(ctx, &format!("{what}.classes"), m.get("classes"))?,
    })
}

fn gt_from_map(ctx: &NativeCallContext, what: &str, m: &Map) -> ScriptResult<ImageGt> {
    Ok(ImageGt {
        boxes: boxes_field(ctx, &format!("{what}.boxes"), m.get("boxes"))?,
        classes: classes_field(ctx, &format!("{what}.classes"), m.get("classes"))?,
    })
}

fn id_of(m: &Map) -> Option<String> {
    m.get("id").or_else(|| m.get("case")).map(|v| v.to_string())
}

/// Read predictions: a folder path of prediction files, or an array of maps / case records.
fn case_records(
    ctx: &NativeCallContext,
    what: &str,
    value: &Dynamic,
) -> ScriptResult<Vec<CaseRecord>> {
    if value.is_string() {
        let dir = value.to_string();
        let files = metrics::io::read_prediction_dir(Path::new(&dir)).map_err(at(ctx))?;
        return Ok(files
            .into_iter()
            .map(|f| CaseRecord {
                id: Some(f.case.clone()),
                pred: f.to_image_pred(),
                gt: None,
            })
            .collect());
    }
    let arr = value.read_lock::<Array>().ok_or_else(|| {
        runtime_error(
            format!("{what} must be an array of prediction maps #{{id, boxes, scores, classes}} or a folder path"),
            ctx.call_position(),
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, item)| {
            let m = item.read_lock::<Map>().ok_or_else(|| {
                runtime_error(
                    format!("{what}[{i}] must be a map, got {}", item.type_name()),
                    ctx.call_position(),
                )
            })?;
            let label = format!("{what}[{i}]");
            if let Some(p) = m.get("pred") {
                let pm = p.read_lock::<Map>().ok_or_else(|| {
                    runtime_error(format!("{label}.pred must be a map"), ctx.call_position())
                })?;
                let gt = match m.get("gt") {
                    Some(g) => {
                        let gm = g.read_lock::<Map>().ok_or_else(|| {
                            runtime_error(format!("{label}.gt must be a map"), ctx.call_position())
                        })?;
                        Some(gt_from_map(ctx, &format!("{label}.gt"), &gm)?)
                    }
                    None => None,
                };
                Ok(CaseRecord {
                    id: id_of(&m),
                    pred: pred_from_map(ctx, &format!("{label}.pred"), &pm)?,
                    gt,
                })
            } else {
                Ok(CaseRecord {
                    id: id_of(&m),
                    pred: pred_from_map(ctx, &label, &m)?,
                    gt: None,
                })
            }
        })
        .collect()
}

/// Read ground truth for `records` from a GT value (array of maps, folder path, or provider).
fn ground_truth_for(
    ctx: &NativeCallContext,
    records: &[CaseRecord],
    gt: Option<&Dynamic>,
) -> ScriptResult<Vec<ImageGt>> {
    let Some(gt) = gt else {
        return records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.gt.clone().ok_or_else(|| {
                    runtime_error(
                        format!("case {} has no ground truth: pass it as the second argument or as `gt` in each record", r.id.clone().unwrap_or_else(|| i.to_string())),
                        ctx.call_position(),
                    )
                })
            })
            .collect();
    };
    let ids: Option<Vec<String>> = records.iter().map(|r| r.id.clone()).collect();
    if let Some(provider) = super::data::ground_truth_provider(gt) {
        let ids = ids.ok_or_else(|| {
            runtime_error(
                "predictions need an `id` per case to be matched with a dataset",
                ctx.call_position(),
            )
        })?;
        return provider
            .ground_truth(&ids)
            .map_err(|e| runtime_error(e, ctx.call_position()));
    }
    if gt.is_string() {
        let root = gt.to_string();
        let ids = ids.ok_or_else(|| {
            runtime_error(
                "predictions need an `id` per case to be matched with a dataset folder",
                ctx.call_position(),
            )
        })?;
        return ids
            .iter()
            .map(|id| metrics::io::read_dataset_gt(Path::new(&root), id).map_err(at(ctx)))
            .collect();
    }
    let arr = gt.read_lock::<Array>().ok_or_else(|| {
        runtime_error(
            "ground truth must be an array of maps #{id, boxes, classes}, a dataset folder or a Dataset",
            ctx.call_position(),
        )
    })?;
    let mut entries = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let m = item.read_lock::<Map>().ok_or_else(|| {
            runtime_error(
                format!("ground_truth[{i}] must be a map"),
                ctx.call_position(),
            )
        })?;
        entries.push((
            id_of(&m),
            gt_from_map(ctx, &format!("ground_truth[{i}]"), &m)?,
        ));
    }
    let gt_ids: Option<Vec<String>> = entries.iter().map(|(id, _)| id.clone()).collect();
    match (ids, gt_ids) {
        (Some(ids), Some(_)) => ids
            .iter()
            .map(|id| {
                entries.iter().find(|(g, _)| g.as_deref() == Some(id)).map(|(_, g)| g.clone()).ok_or_else(|| {
                    runtime_error(format!("a prediction for an unknown case '{id}': it is not in the ground truth"), ctx.call_position())
                })
            })
            .collect(),
        _ => {
            if entries.len() != records.len() {
                return Err(runtime_error(
                    format!(
                        "{} predictions but {} ground-truth entries; give both an `id` to match them by case",
                        records.len(),
                        entries.len()
                    ),
                    ctx.call_position(),
                ));
            }
            Ok(entries.into_iter().map(|(_, g)| g).collect())
        }
    }
}

fn eval_config(ctx: &NativeCallContext, opts: Map) -> ScriptResult<EvalConfig> {
    let mut opts = opts;
    // Short names for the common settings.
    if let Some(v) = opts.remove("iou") {
        opts.insert("iou_thresholds".into(), v);
    }
    let cfg: EvalConfig = options(ctx, "evaluate", opts)?;
    cfg.validate().map_err(at(ctx))?;
    Ok(cfg)
}

fn report_map(ctx: &NativeCallContext, report: &metrics::MetricReport) -> ScriptResult<Map> {
    let mut m: Map = crate::script::convert::json_to_dynamic(&report.to_json()).cast::<Map>();
    let mut curves = Map::new();
    for (k, c) in &report.froc_curves {
        curves.insert(k.as_str().into(), to_script(ctx, c)?);
    }
    for (k, c) in &report.pr_curves {
        curves.insert(k.as_str().into(), to_script(ctx, c)?);
    }
    m.insert("curves".into(), curves.into());
    Ok(m)
}

fn evaluate_impl(
    ctx: &NativeCallContext,
    predictions: &Dynamic,
    gt: Option<&Dynamic>,
    opts: Map,
) -> ScriptResult<Map> {
    check_options(ctx, &EVALUATE_OPTIONS, &opts)?;
    let cfg = eval_config(ctx, opts)?;
    let records = case_records(ctx, "predictions", predictions)?;
    let gts = ground_truth_for(ctx, &records, gt)?;
    let preds: Vec<ImagePred> = records.into_iter().map(|r| r.pred).collect();
    let report = metrics::evaluate(&gts, &preds, &cfg).map_err(at(ctx))?;
    report_map(ctx, &report)
}

/// Register the metrics package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    let mut r = Registrar::new(
        engine,
        help,
        "metrics",
        "nnDetection-exact mAP, FROC, curves and bootstrap rankings",
    );
    r.options((*EVALUATE_OPTIONS).clone())
        .options((*FROC_OPTIONS).clone())
        .options((*PR_OPTIONS).clone())
        .options(OptionSet::of::<BootstrapConfig>("bootstrap").with(&[Extra::new(
            "ground_truth",
            "Dataset or String or Array",
            "()",
            "The ground truth (a Dataset, folder or GT array; needed unless records carry `gt`).",
        )]));
    r.func(
        "evaluate(predictions: Array, ground_truth: Dynamic) -> Map",
        "Score predictions against ground truth with nnDetection's exact semantics.\n\
         predictions: array of #{id, boxes, scores, classes} (what predict returns) or a folder\n\
         of prediction files; ground_truth: a Dataset, a dataset folder, or an array of\n\
         #{id, boxes, classes}. Returns nnDetection's keys (AP_IoU_0.10_MaxDet_100,\n\
         mAP_IoU_0.10_0.50_0.05_MaxDet_100, FROC_score_IoU_0.10, FROC_curve_IoU_0.10, per class\n\
         <k>_AP_IoU_0.10_MaxDet_100, …) plus `curves` (full FROC and PR curves).\n\
         A class without GT has AP −1 and is averaged in, as nnDetection does.",
        "let m = evaluate(preds, ds);\nprint(m[\"AP_IoU_0.10_MaxDet_100\"]);",
        |ctx: NativeCallContext, predictions: Dynamic, gt: Dynamic| -> ScriptResult<Map> {
            evaluate_impl(&ctx, &predictions, Some(&gt), Map::new())
        },
    );
    r.func(
        "evaluate(predictions: Array, ground_truth: Dynamic, options: Map) -> Map",
        "Evaluate with options (the table below); `skip_empty_classes` leaves classes without GT out.",
        "let m = evaluate(preds, gt, #{iou: [0.1, 0.3], skip_empty_classes: true});",
        |ctx: NativeCallContext,
         predictions: Dynamic,
         gt: Dynamic,
         opts: Map|
         -> ScriptResult<Map> { evaluate_impl(&ctx, &predictions, Some(&gt), opts) },
    );
    r.func(
        "evaluate(cases: Array) -> Map",
        "Evaluate case records #{id, gt: #{boxes, classes}, pred: #{boxes, scores, classes}}\n\
         (the `detlab eval` JSON format) that carry their own ground truth.",
        "let m = evaluate(load_json(\"cases.json\").cases);",
        |ctx: NativeCallContext, cases: Dynamic| -> ScriptResult<Map> {
            evaluate_impl(&ctx, &cases, None, Map::new())
        },
    );
    r.func(
        "froc_curve(predictions: Array, ground_truth: Dynamic, options: Map) -> Map",
        "The FROC curve pooled over classes (or one class with #{class: k}) at #{iou: 0.1}:\n\
         #{fppi, sensitivity, score_thresholds, fppi_grid, grid_sensitivity, score, num_images,\n\
         num_gt, num_detections, num_tp}. Every evaluated image counts in FPPI.",
        "let c = froc_curve(preds, gt, #{iou: 0.1});\nprint(c.score);",
        |ctx: NativeCallContext,
         predictions: Dynamic,
         gt: Dynamic,
         mut opts: Map|
         -> ScriptResult<Dynamic> {
            check_options(&ctx, &FROC_OPTIONS, &opts)?;
            let iou = opts.remove("iou").and_then(|v| as_f64(&v)).unwrap_or(0.1);
            let class = opts
                .remove("class")
                .and_then(|v| v.as_int().ok())
                .map(|c| c as usize);
            let cfg = eval_config(&ctx, opts)?;
            let records = case_records(&ctx, "predictions", &predictions)?;
            let gts = ground_truth_for(&ctx, &records, Some(&gt))?;
            let preds: Vec<ImagePred> = records.into_iter().map(|r| r.pred).collect();
            let curve = metrics::froc_curve(&gts, &preds, &cfg, iou, class).map_err(at(&ctx))?;
            to_script(&ctx, &curve)
        },
    );
    r.func(
        "pr_curve(predictions: Array, ground_truth: Dynamic, options: Map) -> Map",
        "The precision–recall curve of one class (#{class: 0}) at #{iou: 0.1}:\n\
         #{recall, precision, precision_envelope, scores, recall_grid, grid_precision, ap, num_gt}.",
        "let c = pr_curve(preds, gt, #{class: 0, iou: 0.1});\nprint(c.ap);",
        |ctx: NativeCallContext, predictions: Dynamic, gt: Dynamic, mut opts: Map| -> ScriptResult<Dynamic> {
            check_options(&ctx, &PR_OPTIONS, &opts)?;
            let iou = opts.remove("iou").and_then(|v| as_f64(&v)).unwrap_or(0.1);
            let class = opts.remove("class").and_then(|v| v.as_int().ok()).unwrap_or(0).max(0) as usize;
            let cfg = eval_config(&ctx, opts)?;
            let records = case_records(&ctx, "predictions", &predictions)?;
            let gts = ground_truth_for(&ctx, &records, Some(&gt))?;
            let preds: Vec<ImagePred> = records.into_iter().map(|r| r.pred).collect();
            let curve = metrics::pr_curve(&gts, &preds, &cfg, iou, class).map_err(at(&ctx))?;
            to_script(&ctx, &curve)
        },
    );
    r.func(
        "bootstrap(results_by_method: Map, options: Map) -> Map",
        "Case-level bootstrap of several methods evaluated on the same cases.\n\
         results_by_method: method name → predictions (or case records with `gt`).\n\
         Returns #{metric, n, seed, methods, ranking (by mean rank), summary: method → #{value, mean,\n\
         ci_low, ci_high, std, mean_rank, rank_counts, metrics}, beats: a → b → fraction of resamples\n\
         in which a is strictly better than b}.",
        "let b = bootstrap(#{scratch: p1, mae: p2}, #{ground_truth: ds, n: 1000, seed: 0});\nprint(b.ranking);",
        |ctx: NativeCallContext, methods: Map, mut opts: Map| -> ScriptResult<Map> {
            let gt_value = opts.remove("ground_truth");
            if let Some(e) = opts.remove("eval") {
                let cfg = eval_config(&ctx, e.try_cast::<Map>().unwrap_or_default())?;
                opts.insert("eval".into(), rhai::serde::to_dynamic(&cfg).map_err(|e| runtime_error(e.to_string(), ctx.call_position()))?);
            }
            let cfg: BootstrapConfig = options(&ctx, "bootstrap", opts)?;
            if methods.is_empty() {
                return Err(runtime_error("bootstrap: no methods given", ctx.call_position()));
            }
            let mut named = Vec::new();
            let mut gts: Option<Vec<ImageGt>> = None;
            let mut first_ids: Option<Vec<Option<String>>> = None;
            for (name, preds) in &methods {
                let records = case_records(&ctx, &format!("results_by_method.{name}"), preds)?;
                let ids: Vec<Option<String>> = records.iter().map(|r| r.id.clone()).collect();
                match &first_ids {
                    None => {
                        gts = Some(ground_truth_for(&ctx, &records, gt_value.as_ref())?);
                        first_ids = Some(ids);
                    }
                    Some(first) if *first != ids => {
                        return Err(runtime_error(
                            format!("bootstrap: method '{name}' was not evaluated on the same cases (in the same order) as the first method"),
                            ctx.call_position(),
                        ));
                    }
                    Some(_) => {}
                }
                named.push((name.to_string(), records.into_iter().map(|r| r.pred).collect::<Vec<_>>()));
            }
            let gts = gts.unwrap_or_default();
            let report = metrics::bootstrap(&named, &gts, &cfg).map_err(at(&ctx))?;
            bootstrap_map(&ctx, &report)
        },
    );
}

fn bootstrap_map(ctx: &NativeCallContext, report: &metrics::BootstrapReport) -> ScriptResult<Map> {
    let mut out = Map::new();
    out.insert("metric".into(), report.metric.clone().into());
    out.insert("n".into(), (report.n as i64).into());
    out.insert("seed".into(), (report.seed as i64).into());
    out.insert("num_cases".into(), (report.num_cases as i64).into());
    out.insert(
        "methods".into(),
        report
            .methods
            .iter()
            .map(|m| Dynamic::from(m.clone()))
            .collect::<Array>()
            .into(),
    );
    let mut order: Vec<usize> = (0..report.methods.len()).collect();
    order.sort_by(|&a, &b| report.mean_rank[a].total_cmp(&report.mean_rank[b]));
    out.insert(
        "ranking".into(),
        order
            .iter()
            .map(|&i| Dynamic::from(report.methods[i].clone()))
            .collect::<Array>()
            .into(),
    );
    let mut summary = Map::new();
    for (i, s) in report.summaries.iter().enumerate() {
        let mut m = Map::new();
        if let Some(main) = s.metrics.get(&report.metric) {
            m.insert("value".into(), main.value.into());
            m.insert("mean".into(), main.mean.into());
            m.insert("ci_low".into(), main.ci_low.into());
            m.insert("ci_high".into(), main.ci_high.into());
            m.insert("std".into(), main.std.into());
        }
        m.insert("mean_rank".into(), report.mean_rank[i].into());
        m.insert(
            "rank_counts".into(),
            report.rank_counts[i]
                .iter()
                .map(|&c| Dynamic::from_float(c))
                .collect::<Array>()
                .into(),
        );
        m.insert("metrics".into(), to_script(ctx, &s.metrics)?);
        summary.insert(s.name.as_str().into(), m.into());
    }
    out.insert("summary".into(), summary.into());
    let mut beats = Map::new();
    for (a, name_a) in report.methods.iter().enumerate() {
        let mut row = Map::new();
        for (b, name_b) in report.methods.iter().enumerate() {
            if a != b {
                row.insert(name_b.as_str().into(), report.beats[a][b].into());
            }
        }
        beats.insert(name_a.as_str().into(), row.into());
    }
    out.insert("beats".into(), beats.into());
    Ok(out)
}
