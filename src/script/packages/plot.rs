//! Plot primitives (PNG or SVG by file extension): slices with boxes, curves, grouped bars,
//! FROC and PR curves, bootstrap rank histograms and confidence intervals, and text tables.

use super::core::{cell_text, columns_arg, columns_of};
use super::volume::VolumeRef;
use crate::plot::{self, BarSeries, Estimate, Series, SliceOptions};
use crate::script::convert::{ScriptResult, as_f64, at, check_options, options, runtime_error};
use crate::script::help::HelpIndex;
use crate::script::options::{Extra, OptionSet};
use crate::script::registrar::Registrar;
use crate::volume::boxes::Box3;
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::sync::LazyLock;

/// `plot_slice`'s options: the slice settings; boxes come as `gt` and `pred` in script form.
static SLICE_OPTIONS: LazyLock<OptionSet> = LazyLock::new(|| {
    OptionSet::of::<SliceOptions>("plot_slice")
        .without(&[
            "gt_boxes",
            "gt_classes",
            "pred_boxes",
            "pred_scores",
            "pred_classes",
        ])
        .with(&[
            Extra::new(
                "gt",
                "Array or Map",
                "()",
                "Ground truth (green): boxes, a label_boxes map or #{boxes, classes}.",
            ),
            Extra::new(
                "pred",
                "Array or Map",
                "()",
                "Predictions (orange): a prediction #{boxes, scores, classes} or boxes.",
            ),
        ])
});

// The other plot primitives: every option is a field of the figure's options struct.
static LINE_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::LineOptions>("plot_lines"));
static BAR_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::BarOptions>("plot_bars"));
static FROC_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::FrocOptions>("plot_froc"));
static PR_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::PrOptions>("plot_pr"));
static RANK_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::RankHistogramOptions>("plot_rank_histograms"));
static CI_OPTIONS: LazyLock<OptionSet> =
    LazyLock::new(|| OptionSet::of::<plot::BootstrapCiOptions>("plot_ci"));

fn floats(ctx: &NativeCallContext, what: &str, v: &Dynamic) -> ScriptResult<Vec<f64>> {
    let arr = v.read_lock::<Array>().ok_or_else(|| {
        runtime_error(
            format!("{what} must be an array of numbers"),
            ctx.call_position(),
        )
    })?;
    Ok(arr.iter().map(|x| as_f64(x).unwrap_or(f64::NAN)).collect())
}

fn one_box(ctx: &NativeCallContext, what: &str, v: &Dynamic) -> ScriptResult<Box3> {
    let n = floats(ctx, what, v)?;
    crate::volume::boxes::validate(&n)
        .map_err(|e| runtime_error(format!("{what}: {e}"), ctx.call_position()))
}

/// Boxes (+ classes + scores) from: an array of boxes, a map label → box (label_boxes), or a
/// map #{boxes, classes?, scores?} (a prediction or GT record).
fn boxes_from(
    ctx: &NativeCallContext,
    what: &str,
    v: &Dynamic,
) -> ScriptResult<(Vec<Box3>, Vec<usize>, Vec<f64>)> {
    if let Some(arr) = v.read_lock::<Array>() {
        let b = arr
            .iter()
            .enumerate()
            .map(|(i, x)| one_box(ctx, &format!("{what}[{i}]"), x))
            .collect::<ScriptResult<_>>()?;
        return Ok((b, Vec::new(), Vec::new()));
    }
    if let Some(m) = v.read_lock::<Map>() {
        if let Some(b) = m.get("boxes") {
            let (boxes, _, _) = boxes_from(ctx, &format!("{what}.boxes"), b)?;
            let classes = match m.get("classes") {
                Some(c) => floats(ctx, &format!("{what}.classes"), c)?
                    .into_iter()
                    .map(|x| x.max(0.0) as usize)
                    .collect(),
                None => Vec::new(),
            };
            let scores = match m.get("scores") {
                Some(s) => floats(ctx, &format!("{what}.scores"), s)?,
                None => Vec::new(),
            };
            return Ok((boxes, classes, scores));
        }
        let b = m
            .iter()
            .map(|(k, x)| one_box(ctx, &format!("{what}[\"{k}\"]"), x))
            .collect::<ScriptResult<_>>()?;
        return Ok((b, Vec::new(), Vec::new()));
    }
    Err(runtime_error(
        format!(
            "{what} must be an array of boxes, a map of boxes (label_boxes) or #{{boxes, classes, scores}}"
        ),
        ctx.call_position(),
    ))
}

fn slice_options(ctx: &NativeCallContext, mut opts: Map) -> ScriptResult<SliceOptions> {
    check_options(ctx, &SLICE_OPTIONS, &opts)?;
    let gt = opts.remove("gt");
    let pred = opts.remove("pred");
    if let Some(w) = opts.remove("window") {
        let w = floats(ctx, "plot_slice: window", &w)?;
        if w.len() != 2 {
            return Err(runtime_error(
                "plot_slice: window is [center, width]",
                ctx.call_position(),
            ));
        }
        opts.insert(
            "window".into(),
            Dynamic::from_array(vec![w[0].into(), w[1].into()]),
        );
    }
    let mut o: SliceOptions = options(ctx, "plot_slice", opts)?;
    if let Some(g) = gt {
        let (b, c, _) = boxes_from(ctx, "plot_slice: gt", &g)?;
        o.gt_boxes = b;
        o.gt_classes = c;
    }
    if let Some(p) = pred {
        let (b, c, s) = boxes_from(ctx, "plot_slice: pred", &p)?;
        o.pred_boxes = b;
        o.pred_classes = c;
        o.pred_scores = s;
    }
    Ok(o)
}

/// Series from a map name → [y] | #{x, y}, or an array of #{name, x, y}.
fn series_from(ctx: &NativeCallContext, what: &str, v: &Dynamic) -> ScriptResult<Vec<Series>> {
    let one = |name: String, item: &Dynamic| -> ScriptResult<Series> {
        if item.is_array() {
            let y = floats(ctx, &format!("{what}.{name}"), item)?;
            let x = (0..y.len()).map(|i| i as f64).collect();
            return Ok(Series::new(name, x, y));
        }
        let m = item.read_lock::<Map>().ok_or_else(|| {
            runtime_error(
                format!("{what}.{name} must be an array of y values or #{{x, y}}"),
                ctx.call_position(),
            )
        })?;
        let y = floats(
            ctx,
            &format!("{what}.{name}.y"),
            m.get("y").unwrap_or(&Dynamic::UNIT),
        )?;
        let x = match m.get("x") {
            Some(x) => floats(ctx, &format!("{what}.{name}.x"), x)?,
            None => (0..y.len()).map(|i| i as f64).collect(),
        };
        let name = m.get("name").map(|n| n.to_string()).unwrap_or(name);
        Ok(Series::new(name, x, y))
    };
    if let Some(m) = v.read_lock::<Map>() {
        return m.iter().map(|(k, item)| one(k.to_string(), item)).collect();
    }
    if let Some(arr) = v.read_lock::<Array>() {
        return arr
            .iter()
            .enumerate()
            .map(|(i, item)| one(format!("series {i}"), item))
            .collect();
    }
    Err(runtime_error(
        format!("{what} must be a map name → values or an array of #{{name, x, y}}"),
        ctx.call_position(),
    ))
}

/// A FROC polyline from a froc_curve map, or from an evaluate() result (pooled IoU 0.1 curve).
fn froc_of(ctx: &NativeCallContext, name: &str, v: &Dynamic) -> ScriptResult<Series> {
    let m = v.read_lock::<Map>().ok_or_else(|| {
        runtime_error(
            format!("plot_froc: curves.{name} must be a FROC curve or an evaluation result"),
            ctx.call_position(),
        )
    })?;
    if let (Some(x), Some(y)) = (m.get("fppi"), m.get("sensitivity")) {
        return Ok(Series::new(
            name,
            floats(ctx, "fppi", x)?,
            floats(ctx, "sensitivity", y)?,
        ));
    }
    if let Some(curves) = m
        .get("curves")
        .and_then(|c| c.read_lock::<Map>().map(|c| c.clone()))
        && let Some(c) = curves.get("FROC_curve_IoU_0.10")
    {
        return froc_of(ctx, name, c);
    }
    Err(runtime_error(
        format!(
            "plot_froc: curves.{name} has neither fppi/sensitivity nor curves[\"FROC_curve_IoU_0.10\"]"
        ),
        ctx.call_position(),
    ))
}

fn pr_of(ctx: &NativeCallContext, name: &str, v: &Dynamic) -> ScriptResult<Series> {
    let m = v.read_lock::<Map>().ok_or_else(|| {
        runtime_error(
            format!("plot_pr: curves.{name} must be a PR curve or an evaluation result"),
            ctx.call_position(),
        )
    })?;
    if let (Some(x), Some(y)) = (
        m.get("recall"),
        m.get("precision_envelope").or_else(|| m.get("precision")),
    ) {
        return Ok(Series::new(
            name,
            floats(ctx, "recall", x)?,
            floats(ctx, "precision", y)?,
        ));
    }
    if let Some(curves) = m
        .get("curves")
        .and_then(|c| c.read_lock::<Map>().map(|c| c.clone()))
        && let Some(c) = curves.get("0_PR_curve_IoU_0.10")
    {
        return pr_of(ctx, name, c);
    }
    Err(runtime_error(
        format!(
            "plot_pr: curves.{name} has neither recall/precision nor curves[\"0_PR_curve_IoU_0.10\"]"
        ),
        ctx.call_position(),
    ))
}

/// (method, rank counts) from a bootstrap() result or a map name → counts.
fn rank_counts(ctx: &NativeCallContext, v: &Map) -> ScriptResult<Vec<(String, Vec<u64>)>> {
    if let (Some(methods), Some(summary)) = (v.get("methods"), v.get("summary")) {
        let methods = methods
            .read_lock::<Array>()
            .map(|a| a.clone())
            .unwrap_or_default();
        let summary = summary
            .read_lock::<Map>()
            .map(|m| m.clone())
            .unwrap_or_default();
        return methods
            .iter()
            .map(|m| {
                let name = m.to_string();
                let entry = summary
                    .get(name.as_str())
                    .and_then(|e| e.read_lock::<Map>().map(|e| e.clone()))
                    .unwrap_or_default();
                let counts = floats(
                    ctx,
                    "rank_counts",
                    entry.get("rank_counts").unwrap_or(&Dynamic::UNIT),
                )?;
                Ok((
                    name,
                    counts
                        .into_iter()
                        .map(|c| c.max(0.0).round() as u64)
                        .collect(),
                ))
            })
            .collect();
    }
    v.iter()
        .map(|(k, c)| {
            Ok((
                k.to_string(),
                floats(ctx, k, c)?
                    .into_iter()
                    .map(|x| x.max(0.0).round() as u64)
                    .collect(),
            ))
        })
        .collect()
}

/// Register the plot package.
pub fn register(engine: &mut Engine, help: &mut HelpIndex) {
    let mut r = Registrar::new(
        engine,
        help,
        "plot",
        "figures to PNG or SVG (by extension) and text tables",
    );
    for set in [
        &SLICE_OPTIONS,
        &LINE_OPTIONS,
        &BAR_OPTIONS,
        &FROC_OPTIONS,
        &PR_OPTIONS,
        &RANK_OPTIONS,
        &CI_OPTIONS,
    ] {
        r.options((**set).clone());
    }
    r.func(
        "plot_slice(path: String, volume: Volume, options: Map)",
        "Draw one slice of a volume in grayscale with GT (green) and predicted (orange) boxes.\n\
         Anisotropic spacing is respected.",
        "plot_slice(\"runs/slice.png\", ct, #{index: 20, window: [-600, 1500], gt: label_boxes(labels)});",
        |ctx: NativeCallContext, path: &str, volume: VolumeRef, opts: Map| -> ScriptResult<()> {
            let o = slice_options(&ctx, opts)?;
            plot::plot_volume_slice(path, &volume, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_slice(path: String, volume: Volume)",
        "Draw the middle slice (axis 0) of a volume with an automatic window.",
        "plot_slice(\"runs/slice.png\", ct);",
        |ctx: NativeCallContext, path: &str, volume: VolumeRef| -> ScriptResult<()> {
            plot::plot_volume_slice(path, &volume, &SliceOptions::default()).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_lines(path: String, series: Map, options: Map)",
        "Line chart of curves: series is a map name → [y…] (x = 0, 1, …) or name → #{x, y}.",
        "plot_lines(\"runs/loss.png\", #{train: run.history.loss}, #{title: \"loss\", x_label: \"iteration\"});",
        |ctx: NativeCallContext, path: &str, series: Dynamic, opts: Map| -> ScriptResult<()> {
            let s = series_from(&ctx, "plot_lines: series", &series)?;
            let o: plot::LineOptions = options(&ctx, "plot_lines", opts)?;
            plot::plot_lines(path, &s, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_bars(path: String, groups: Array, series: Map, options: Map)",
        "Grouped bar chart, e.g. a metric per dataset (group) and method (series):\n\
         series is a map method → [value per group] or method → #{values, ci_low, ci_high}.",
        "plot_bars(\"runs/ap.png\", [\"D01\", \"D02\"], #{scratch: [0.61, 0.55], mae: [0.70, 0.58]}, #{y_label: \"mAP@0.1\"});",
        |ctx: NativeCallContext, path: &str, groups: Array, series: Map, opts: Map| -> ScriptResult<()> {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            let mut s = Vec::new();
            for (name, v) in &series {
                if v.is_array() {
                    s.push(BarSeries { name: name.to_string(), values: floats(&ctx, name, v)?, ..Default::default() });
                } else if let Some(m) = v.read_lock::<Map>() {
                    let get = |k: &str| -> ScriptResult<Vec<f64>> {
                        m.get(k).map(|x| floats(&ctx, &format!("{name}.{k}"), x)).unwrap_or(Ok(Vec::new()))
                    };
                    s.push(BarSeries { name: name.to_string(), values: get("values")?, ci_low: get("ci_low")?, ci_high: get("ci_high")? });
                } else {
                    return Err(runtime_error(format!("plot_bars: series.{name} must be an array or #{{values, ci_low, ci_high}}"), ctx.call_position()));
                }
            }
            let o: plot::BarOptions = options(&ctx, "plot_bars", opts)?;
            plot::plot_bars_with_ci(path, &groups, &s, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_froc(path: String, curves: Map, options: Map)",
        "FROC curves of several methods in one figure, log FPPI axis with the 1/8 … 8 grid marked.\n\
         curves: method → an evaluate() result (its IoU 0.1 curve) or a froc_curve() map.",
        "plot_froc(\"runs/froc.png\", #{scratch: m1, mae: m2}, #{mean_in_legend: true});",
        |ctx: NativeCallContext, path: &str, curves: Map, opts: Map| -> ScriptResult<()> {
            let s = curves.iter().map(|(k, v)| froc_of(&ctx, k, v)).collect::<ScriptResult<Vec<_>>>()?;
            let o: plot::FrocOptions = options(&ctx, "plot_froc", opts)?;
            plot::plot_froc(path, &s, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_pr(path: String, curves: Map, options: Map)",
        "Precision–recall curves (the precision envelope): curves is method → a pr_curve() map or\n\
         an evaluate() result (class 0 at IoU 0.1).",
        "plot_pr(\"runs/pr.png\", #{scratch: m1, mae: m2}, #{});",
        |ctx: NativeCallContext, path: &str, curves: Map, opts: Map| -> ScriptResult<()> {
            let s = curves
                .iter()
                .map(|(k, v)| pr_of(&ctx, k, v))
                .collect::<ScriptResult<Vec<_>>>()?;
            let o: plot::PrOptions = options(&ctx, "plot_pr", opts)?;
            plot::plot_pr(path, &s, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_rank_histograms(path: String, ranks: Map, options: Map)",
        "Rank distributions from bootstrapping, one panel per method (like the paper's Fig. 3):\n\
         ranks is a bootstrap() result or a map method → counts per rank.",
        "plot_rank_histograms(\"runs/ranks.png\", bootstrap(methods, #{ground_truth: gt}), #{});",
        |ctx: NativeCallContext, path: &str, ranks: Map, opts: Map| -> ScriptResult<()> {
            let counts = rank_counts(&ctx, &ranks)?;
            let o: plot::RankHistogramOptions = options(&ctx, "plot_rank_histograms", opts)?;
            plot::plot_rank_histograms(path, &counts, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "plot_ci(path: String, estimates: Dynamic, options: Map)",
        "Forest plot of estimates with confidence intervals: a bootstrap() result (ranking\n\
         metric per method) or an array of #{name, value, low, high}.",
        "plot_ci(\"runs/ci.png\", b, #{x_label: \"AP@0.1\"});",
        |ctx: NativeCallContext, path: &str, estimates: Dynamic, opts: Map| -> ScriptResult<()> {
            let list: Vec<Estimate> = if let Some(m) = estimates.read_lock::<Map>() {
                let methods = m
                    .get("methods")
                    .and_then(|x| x.read_lock::<Array>().map(|a| a.clone()))
                    .unwrap_or_default();
                let summary = m
                    .get("summary")
                    .and_then(|x| x.read_lock::<Map>().map(|s| s.clone()))
                    .unwrap_or_default();
                methods
                    .iter()
                    .map(|name| {
                        let name = name.to_string();
                        let e = summary
                            .get(name.as_str())
                            .and_then(|e| e.read_lock::<Map>().map(|e| e.clone()))
                            .unwrap_or_default();
                        let g = |k: &str| e.get(k).and_then(as_f64).unwrap_or(f64::NAN);
                        Estimate::new(name, g("value"), g("ci_low"), g("ci_high"))
                    })
                    .collect()
            } else {
                options(&ctx, "plot_ci: estimates", {
                    let mut w = Map::new();
                    w.insert("list".into(), estimates.clone());
                    w
                })
                .map(|w: EstimateList| w.list)?
            };
            let o: plot::BootstrapCiOptions = options(&ctx, "plot_ci", opts)?;
            plot::plot_bootstrap_ci(path, &list, &o).map_err(at(&ctx))
        },
    );
    r.func(
        "table(rows: Array)",
        "Print an aligned text table of an array of maps: one column per key, text columns first,\n\
         then numbers (right-aligned), alphabetical within each; a missing value or NaN never\n\
         moves a column.",
        "table([#{method: \"scratch\", ap: 0.61}, #{method: \"mae\", ap: 0.70}]);",
        |ctx: NativeCallContext, rows: Array| -> ScriptResult<()> {
            println!("{}", format_rows(&ctx, "table", &rows, None)?);
            Ok(())
        },
    );
    r.func(
        "table(rows: Array, columns: Array)",
        "Print an aligned table of the given columns only, in that order (the same `columns` as\n\
         `save_csv`); a column no row has is printed empty.",
        "table(rows, [\"method\", \"ap\"]);",
        |ctx: NativeCallContext, rows: Array, columns: Array| -> ScriptResult<()> {
            let cols = columns_arg(&ctx, "table", &columns)?;
            println!("{}", format_rows(&ctx, "table", &rows, Some(cols))?);
            Ok(())
        },
    );
    r.func(
        "format_table(rows: Array) -> String",
        "The aligned text table of an array of maps, as a string (for logs and files).",
        "let text = format_table(rows);",
        |ctx: NativeCallContext, rows: Array| -> ScriptResult<String> {
            format_rows(&ctx, "format_table", &rows, None)
        },
    );
    r.func(
        "format_table(rows: Array, columns: Array) -> String",
        "The aligned text table of the given columns only, in that order, as a string.",
        "let text = format_table(rows, [\"method\", \"ap\"]);",
        |ctx: NativeCallContext, rows: Array, columns: Array| -> ScriptResult<String> {
            let cols = columns_arg(&ctx, "format_table", &columns)?;
            format_rows(&ctx, "format_table", &rows, Some(cols))
        },
    );
}

#[derive(serde::Deserialize)]
struct EstimateList {
    list: Vec<Estimate>,
}

fn format_rows(
    ctx: &NativeCallContext,
    what: &str,
    rows: &Array,
    columns: Option<Vec<String>>,
) -> ScriptResult<String> {
    for (i, r) in rows.iter().enumerate() {
        if !r.is_map() {
            return Err(runtime_error(
                format!("{what}: row {i} must be a map, got {}", r.type_name()),
                ctx.call_position(),
            ));
        }
    }
    let cols = columns.unwrap_or_else(|| columns_of(rows));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let m = r.read_lock::<Map>().unwrap();
            cols.iter()
                .map(|c| m.get(c.as_str()).map(cell_text).unwrap_or_default())
                .collect()
        })
        .collect();
    Ok(plot::format_table(&cols, &body))
}
