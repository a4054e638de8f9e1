//! `detlab eval`: nnDetection-exact AP/mAP/FROC of predictions, or LUNA16's CPM.
//!
//! Three input modes:
//! * `detlab eval FILE.json` — GT and predictions per case in one file;
//! * `detlab eval --dataset DIR --predictions DIR` — GT from an nnDetection raw dataset
//!   (`labelsTr|labelsTs/<case>.nii.gz` + `<case>.json`), predictions from `<case>.json` files;
//!   only cases with a prediction file are evaluated (as nnDetection does);
//! * `detlab eval --luna annotations.csv --excluded excluded.csv --candidates results.csv
//!   --seriesuids uids.csv` — LUNA16 CPM.
//!
//! The result is printed as one JSON object (NaN as `null`) and optionally written atomically
//! to `--out`. Exit code 0 on success, 1 on bad input, 2 on a usage error.

use clap::{Args, ValueEnum};
use detlab::metrics::{self, EvalConfig, ImageGt, ImagePred, MetricsError, io, luna};
use std::path::{Path, PathBuf};

/// How per-class keys start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClassKeys {
    /// The class name (`lesion_AP_IoU_…`), as nnDetection's evaluator writes the class names
    /// it is given; classes without a name keep their index.
    Name,
    /// The 0-based class index (`0_AP_IoU_…`): nnDetection's own pipeline passes
    /// dataset.json's label keys ("0", "1", …) as the class names, so its results files
    /// have these keys.
    Index,
}

/// Arguments of `detlab eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Input JSON: {"classes": [...], "cases": [{"id", "gt": {boxes, classes}, "pred": {boxes, scores, classes}}]}.
    pub file: Option<PathBuf>,
    /// IoU thresholds for the AP and FROC keys, comma-separated (default 0.1,0.5).
    #[arg(long, value_delimiter = ',')]
    pub iou: Option<Vec<f64>>,
    /// Predictions kept per image and class (default 100).
    #[arg(long)]
    pub max_det: Option<usize>,
    /// Leave classes without GT out of the class means (pycocotools) instead of averaging −1 in.
    #[arg(long)]
    pub skip_empty_classes: bool,
    /// Number of classes (default: class names, dataset labels, or the largest index + 1).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Per-class keys by class name (FILE.json's `classes`, the dataset's `labels`) or index.
    #[arg(long, value_enum, default_value_t = ClassKeys::Name)]
    pub class_keys: ClassKeys,
    /// FPPI and sensitivity computed as nnDetection does (`fpr · n_fp / N_img`, last-bit
    /// differences) instead of dividing integer counts, to reproduce its FROC bit for bit.
    #[arg(long)]
    pub nndetection_froc_rounding: bool,
    /// Precision in float64, as nnDetection computes it under numpy ≥ 2 (default: float32, as
    /// under numpy < 2; recall stays float32 either way).
    #[arg(long)]
    pub numpy2_precision: bool,
    /// Also write the JSON result to this file (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// nnDetection raw dataset folder with labelsTr/ (or labelsTs/).
    #[arg(long, requires = "predictions")]
    pub dataset: Option<PathBuf>,
    /// Folder of `<case>.json` prediction files.
    #[arg(long, requires = "dataset")]
    pub predictions: Option<PathBuf>,
    /// LUNA16 annotations CSV (seriesuid,coordX,coordY,coordZ,diameter_mm).
    #[arg(long, requires_all = ["candidates", "seriesuids"])]
    pub luna: Option<PathBuf>,
    /// LUNA16 excluded annotations CSV (hits on these are ignored).
    #[arg(long, requires = "luna")]
    pub excluded: Option<PathBuf>,
    /// LUNA16 candidates CSV (seriesuid,coordX,coordY,coordZ,probability).
    #[arg(long, requires = "luna")]
    pub candidates: Option<PathBuf>,
    /// LUNA16 scan list (one seriesuid per line).
    #[arg(long, requires = "luna")]
    pub seriesuids: Option<PathBuf>,
}

/// Run `detlab eval`; returns the exit code.
pub fn run(args: EvalArgs) -> i32 {
    let modes = [
        args.file.is_some(),
        args.dataset.is_some(),
        args.luna.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        eprintln!(
            "error: give exactly one of FILE.json, --dataset DIR --predictions DIR, or --luna CSV --candidates CSV --seriesuids CSV"
        );
        return 2;
    }
    let result = if args.luna.is_some() {
        run_luna(&args)
    } else {
        run_boxes(&args)
    };
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let text = match serde_json::to_string_pretty(&value) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot serialise the result: {e}");
            return 1;
        }
    };
    println!("{text}");
    if let Some(out) = &args.out
        && let Err(e) = detlab::util::atomic_write(out, format!("{text}\n").as_bytes())
    {
        eprintln!("error: {}: {e}", out.display());
        return 1;
    }
    0
}

fn config(args: &EvalArgs, num_classes: Option<usize>) -> EvalConfig {
    let mut cfg = EvalConfig {
        skip_empty_classes: args.skip_empty_classes,
        nndetection_froc_rounding: args.nndetection_froc_rounding,
        numpy2_precision: args.numpy2_precision,
        num_classes: args.num_classes.or(num_classes),
        // The JSON output has no per-detection PR curves.
        pr_curves: false,
        ..EvalConfig::default()
    };
    if let Some(iou) = &args.iou {
        cfg.iou_thresholds = iou.clone();
        cfg.froc_iou = iou.clone();
    }
    if let Some(m) = args.max_det {
        cfg.max_det = m;
    }
    cfg
}

fn run_boxes(args: &EvalArgs) -> Result<serde_json::Value, MetricsError> {
    let (ids, gt, pred, names) = if let Some(file) = &args.file {
        let input = io::EvalInput::read(file)?;
        let mut ids = Vec::with_capacity(input.cases.len());
        let mut gt = Vec::with_capacity(input.cases.len());
        let mut pred = Vec::with_capacity(input.cases.len());
        for case in input.cases {
            ids.push(case.id);
            gt.push(case.gt);
            pred.push(case.pred);
        }
        (ids, gt, pred, input.classes)
    } else {
        let (Some(dataset), Some(predictions)) = (&args.dataset, &args.predictions) else {
            return Err(MetricsError::config(
                "--predictions",
                "--dataset needs --predictions",
            ));
        };
        read_dataset(dataset, predictions)?
    };
    let cfg = config(args, names.as_ref().map(Vec::len));
    // Name the file and the case (not its index) if something is wrong.
    let file_of = |id: &str| match (&args.file, &args.predictions) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join(format!("{id}.json")),
        (None, None) => PathBuf::from(id),
    };
    let n = metrics::infer_num_classes(&gt, &pred, &cfg);
    for ((id, g), p) in ids.iter().zip(&gt).zip(&pred) {
        metrics::validate_case(id, g, p, Some(n))
            .map_err(|e| MetricsError::file(file_of(id), e))?;
    }
    let report = metrics::evaluate(&gt, &pred, &cfg).map_err(|e| match (e, &args.file) {
        (e @ MetricsError::Input { .. }, Some(file)) => MetricsError::file(file, e),
        (e, _) => e,
    })?;
    match (&names, args.class_keys) {
        (Some(names), ClassKeys::Name) => name_class_keys(report.to_json(), names),
        _ => Ok(report.to_json()),
    }
}

/// Rename the per-class keys `<k>_…` of an evaluation result to `<names[k]>_…`; two classes
/// of the same name would share keys, which is an error.
pub(crate) fn name_class_keys(
    value: serde_json::Value,
    names: &[String],
) -> Result<serde_json::Value, MetricsError> {
    for (k, name) in names.iter().enumerate() {
        if let Some(other) = names[..k].iter().position(|n| n == name) {
            return Err(MetricsError::config(
                "--class-keys",
                format!("classes {other} and {k} are both named '{name}': use --class-keys index"),
            ));
        }
    }
    let serde_json::Value::Object(map) = value else {
        return Ok(value);
    };
    let renamed = map
        .into_iter()
        .map(|(key, v)| {
            let class = key
                .split_once('_')
                .and_then(|(prefix, rest)| Some((prefix.parse::<usize>().ok()?, rest)));
            match class {
                Some((k, rest)) if k < names.len() && !names[k].is_empty() => {
                    (format!("{}_{rest}", names[k]), v)
                }
                _ => (key, v),
            }
        })
        .collect();
    Ok(serde_json::Value::Object(renamed))
}

/// Case ids, their GT and predictions, and the class names (when the input has them).
type Cases = (
    Vec<String>,
    Vec<ImageGt>,
    Vec<ImagePred>,
    Option<Vec<String>>,
);

fn read_dataset(dataset: &Path, predictions: &Path) -> Result<Cases, MetricsError> {
    let files = io::read_prediction_dir(predictions)?;
    if files.is_empty() {
        return Err(MetricsError::file(
            predictions,
            "no <case>.json prediction files",
        ));
    }
    let mut ids = Vec::with_capacity(files.len());
    let mut gt = Vec::with_capacity(files.len());
    let mut pred = Vec::with_capacity(files.len());
    for f in &files {
        if io::find_label_file(dataset, &f.case).is_none() {
            return Err(MetricsError::input(
                &f.case,
                "case",
                format!(
                    "prediction for an unknown case: no labelsTr/{0}.nii.gz or labelsTs/{0}.nii.gz in {1}",
                    f.case,
                    dataset.display()
                ),
            ));
        }
        gt.push(io::read_dataset_gt(dataset, &f.case)?);
        pred.push(f.to_image_pred());
        ids.push(f.case.clone());
    }
    Ok((ids, gt, pred, io::read_dataset_class_names(dataset)?))
}

fn run_luna(args: &EvalArgs) -> Result<serde_json::Value, MetricsError> {
    let (Some(ann), Some(cands), Some(uids)) = (&args.luna, &args.candidates, &args.seriesuids)
    else {
        return Err(MetricsError::config(
            "--luna",
            "--luna needs --candidates and --seriesuids",
        ));
    };
    let annotations = luna::read_annotations_csv(ann)?;
    let excluded = match &args.excluded {
        Some(p) => luna::read_annotations_csv(p)?,
        None => Vec::new(),
    };
    let candidates = luna::read_candidates_csv(cands)?;
    let seriesuids = luna::read_seriesuids_csv(uids)?;
    let r = luna::cpm(
        &seriesuids,
        &annotations,
        &excluded,
        &candidates,
        &luna::CpmConfig::default(),
    )?;
    Ok(serde_json::json!({
        "cpm": r.cpm,
        "sens_at_fppi": r.sensitivities,
        "fppi_thresholds": r.fppi,
        "num_scans": r.num_scans,
        "num_nodules": r.num_nodules,
        "num_detected": r.num_detected,
        "num_false_positives": r.num_false_positives,
        "num_candidates": r.num_candidates,
        "num_ignored_excluded": r.num_ignored_excluded,
        "num_duplicate_hits": r.num_duplicate_hits,
    }))
}
