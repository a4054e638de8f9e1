//! LUNA16's Competition Performance Metric (CPM), exactly as the official evaluation script
//! (`noduleCADEvaluationLUNA16.py`) computes it.
//!
//! * Coordinates are world mm (`coordX, coordY, coordZ`); a candidate hits a nodule when the
//!   squared centre distance is **strictly** less than (diameter / 2)²; a negative diameter
//!   means 10 mm.
//! * Per scan at most `max_candidates_per_scan` (100) candidates are kept. As in the official
//!   script, when a scan has more, only candidates with a probability strictly above the
//!   101st-highest are kept (in file order, at most 100): candidates tied with the cut-off are
//!   all dropped, so fewer than 100 can remain.
//! * A nodule (from the annotations) with hits counts once, as a TP with its highest hit
//!   probability; its other hits are neither TP nor FP. A candidate can hit several nodules.
//!   Hits on excluded nodules (`annotations_excluded`) are ignored. Every remaining candidate
//!   is a FP. Missed nodules count in the total but never enter the curve.
//! * The FROC curve has a point at each distinct probability (ties grouped, collinear points
//!   dropped) from (0, 0); FPPI = FP count / number of scans (the official script computes
//!   `fpr · n_fp / N`, which agrees except for ulp-level differences on a vertical step);
//!   sensitivity = TP count / number of nodules. CPM = mean sensitivity at the FPPI grid
//!   (1/8 … 8), read with numpy `interp`.
//! * Edge cases: no false positive → all FPPI 0; detections but no TP → NaN (the official
//!   script's NaN TPR); no nodule at all → NaN; no candidate → 0.
//! * Only scans in the seriesuid list count; rows for other scans are ignored.

use super::aggregate::FrocCurve;
use super::{MetricsError, numeric};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// One nodule annotation: scan id, centre in world mm and diameter in mm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LunaAnnotation {
    /// The scan's series UID.
    pub seriesuid: String,
    /// Centre `[coordX, coordY, coordZ]` in world mm.
    pub center: [f64; 3],
    /// Diameter in mm (negative: 10 mm).
    pub diameter_mm: f64,
}

/// One CAD candidate: scan id, centre in world mm and probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LunaCandidate {
    /// The scan's series UID.
    pub seriesuid: String,
    /// Centre `[coordX, coordY, coordZ]` in world mm.
    pub center: [f64; 3],
    /// The candidate's probability.
    pub probability: f64,
}

/// CPM settings (defaults: LUNA16's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpmConfig {
    /// FPPI grid (default 1/8, 1/4, 1/2, 1, 2, 4, 8).
    pub fppi: Vec<f64>,
    /// Candidates kept per scan (default 100).
    pub max_candidates_per_scan: usize,
}

impl Default for CpmConfig {
    fn default() -> Self {
        CpmConfig {
            fppi: vec![0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
            max_candidates_per_scan: 100,
        }
    }
}

/// Result of [`cpm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpmReport {
    /// The CPM: mean sensitivity at the FPPI grid.
    pub cpm: f64,
    /// The FPPI grid.
    pub fppi: Vec<f64>,
    /// Sensitivity at each grid value.
    pub sensitivities: Vec<f64>,
    /// The full FROC curve (for plots).
    pub curve: FrocCurve,
    /// Number of scans (N).
    pub num_scans: usize,
    /// Number of (non-excluded) nodules.
    pub num_nodules: usize,
    /// Nodules hit by at least one candidate.
    pub num_detected: usize,
    /// Candidates counted as false positives.
    pub num_false_positives: usize,
    /// Candidates kept after the per-scan limit.
    pub num_candidates: usize,
    /// Candidates ignored because they hit an excluded nodule (and no included one).
    pub num_ignored_excluded: usize,
    /// Extra hits on already-hit nodules (neither TP nor FP).
    pub num_duplicate_hits: usize,
}

fn squared_distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// LUNA16's CPM for `candidates` on the scans `seriesuids`.
pub fn cpm(
    seriesuids: &[String],
    annotations: &[LunaAnnotation],
    excluded: &[LunaAnnotation],
    candidates: &[LunaCandidate],
    cfg: &CpmConfig,
) -> Result<CpmReport, MetricsError> {
    if cfg.max_candidates_per_scan == 0 {
        return Err(MetricsError::config(
            "max_candidates_per_scan",
            "must be at least 1",
        ));
    }
    if cfg.fppi.is_empty() || cfg.fppi.iter().any(|f| !f.is_finite() || *f < 0.0) {
        return Err(MetricsError::config(
            "fppi",
            "expected a non-empty list of finite values >= 0",
        ));
    }
    for (rows, what) in [
        (annotations, "annotations"),
        (excluded, "annotations_excluded"),
    ] {
        for (i, a) in rows.iter().enumerate() {
            if a.center
                .iter()
                .chain([&a.diameter_mm])
                .any(|v| !v.is_finite())
            {
                return Err(MetricsError::input(
                    &a.seriesuid,
                    format!("{what}[{i}]"),
                    "non-finite coordinate or diameter",
                ));
            }
        }
    }
    for (i, c) in candidates.iter().enumerate() {
        if c.center
            .iter()
            .chain([&c.probability])
            .any(|v| !v.is_finite())
        {
            return Err(MetricsError::input(
                &c.seriesuid,
                format!("candidates[{i}]"),
                "non-finite coordinate or probability",
            ));
        }
    }
    let mut by_scan: HashMap<&str, Vec<&LunaCandidate>> = HashMap::new();
    for c in candidates {
        by_scan.entry(c.seriesuid.as_str()).or_default().push(c);
    }
    let limit = cfg.max_candidates_per_scan;
    let mut tp_probs = Vec::new();
    let mut fp_probs = Vec::new();
    let (mut num_nodules, mut num_candidates, mut ignored, mut duplicates) =
        (0usize, 0usize, 0usize, 0usize);
    for uid in seriesuids {
        let mut cands: Vec<&LunaCandidate> = by_scan.get(uid.as_str()).cloned().unwrap_or_default();
        if cands.len() > limit {
            let mut probs: Vec<f64> = cands.iter().map(|c| c.probability).collect();
            probs.sort_by(|a, b| b.total_cmp(a));
            let cut = probs[limit];
            cands = cands
                .into_iter()
                .filter(|c| c.probability > cut)
                .take(limit)
                .collect();
        }
        num_candidates += cands.len();
        let mut remaining = vec![true; cands.len()];
        let scan_nodules = annotations
            .iter()
            .filter(|a| a.seriesuid == *uid)
            .map(|a| (a, true));
        let scan_excluded = excluded
            .iter()
            .filter(|a| a.seriesuid == *uid)
            .map(|a| (a, false));
        for (nodule, included) in scan_nodules.chain(scan_excluded) {
            let diameter = if nodule.diameter_mm < 0.0 {
                10.0
            } else {
                nodule.diameter_mm
            };
            let radius_squared = (diameter / 2.0).powi(2);
            let mut best: Option<f64> = None;
            let mut hits = 0usize;
            for (k, c) in cands.iter().enumerate() {
                if squared_distance(&nodule.center, &c.center) < radius_squared {
                    if included {
                        hits += 1;
                        best = Some(best.map_or(c.probability, |b: f64| b.max(c.probability)));
                        remaining[k] = false;
                    } else if remaining[k] {
                        ignored += 1;
                        remaining[k] = false;
                    }
                }
            }
            if included {
                num_nodules += 1;
                duplicates += hits.saturating_sub(1);
                if let Some(p) = best {
                    tp_probs.push(p);
                }
            }
        }
        fp_probs.extend(
            cands
                .iter()
                .zip(&remaining)
                .filter(|(_, r)| **r)
                .map(|(c, _)| c.probability),
        );
    }
    let num_scans = seriesuids.len();
    let mut entries: Vec<(f64, bool)> = tp_probs
        .iter()
        .map(|&p| (p, true))
        .chain(fp_probs.iter().map(|&p| (p, false)))
        .collect();
    entries.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut fps, mut tps, mut ths) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &(p, hit)) in entries.iter().enumerate() {
        if hit {
            tp += 1;
        } else {
            fp += 1;
        }
        if k + 1 == entries.len() || entries[k + 1].0 != p {
            fps.push(fp);
            tps.push(tp);
            ths.push(p);
        }
    }
    let mut curve = FrocCurve {
        iou: f64::NAN,
        class: None,
        fppi: vec![0.0],
        sensitivity: vec![0.0],
        score_thresholds: vec![f64::INFINITY],
        fppi_grid: cfg.fppi.clone(),
        grid_sensitivity: vec![0.0; cfg.fppi.len()],
        score: 0.0,
        num_images: num_scans,
        num_gt: num_nodules,
        num_detections: entries.len(),
        num_tp: tp_probs.len(),
    };
    if !entries.is_empty() {
        let keep = numeric::roc_keep_indices(&fps, &tps);
        let nan_sens = tp == 0 || num_nodules == 0;
        for &k in &keep {
            curve.fppi.push(fps[k] as f64 / num_scans as f64);
            curve.sensitivity.push(if nan_sens {
                f64::NAN
            } else {
                tps[k] as f64 / num_nodules as f64
            });
            curve.score_thresholds.push(ths[k]);
        }
        if nan_sens {
            curve.sensitivity[0] = f64::NAN;
        }
        for (o, &x) in curve.grid_sensitivity.iter_mut().zip(&cfg.fppi) {
            *o = numeric::interp(x, &curve.fppi, &curve.sensitivity);
        }
        curve.score = numeric::mean(&curve.grid_sensitivity);
    } else if num_nodules == 0 {
        curve
            .grid_sensitivity
            .iter_mut()
            .for_each(|v| *v = f64::NAN);
        curve.score = f64::NAN;
    }
    Ok(CpmReport {
        cpm: curve.score,
        fppi: cfg.fppi.clone(),
        sensitivities: curve.grid_sensitivity.clone(),
        num_scans,
        num_nodules,
        num_detected: tp_probs.len(),
        num_false_positives: fp_probs.len(),
        num_candidates,
        num_ignored_excluded: ignored,
        num_duplicate_hits: duplicates,
        curve,
    })
}

fn read_rows(
    path: &Path,
    value_column: &str,
) -> Result<Vec<(String, [f64; 3], f64)>, MetricsError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| MetricsError::file(path, e))?;
    let headers = reader
        .headers()
        .map_err(|e| MetricsError::file(path, e))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            MetricsError::file(
                path,
                format!(
                    "missing column '{name}' (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            )
        })
    };
    let cols = [
        column("seriesuid")?,
        column("coordX")?,
        column("coordY")?,
        column("coordZ")?,
        column(value_column)?,
    ];
    let names = ["seriesuid", "coordX", "coordY", "coordZ", value_column];
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| MetricsError::file(path, e))?;
        let mut numbers = [0.0; 4];
        for (slot, k) in numbers.iter_mut().zip(1..5) {
            let text = record.get(cols[k]).unwrap_or("");
            *slot = text.parse::<f64>().map_err(|_| {
                MetricsError::file(
                    path,
                    format!(
                        "line {}: column '{}': '{text}' is not a number",
                        line + 2,
                        names[k]
                    ),
                )
            })?;
        }
        let uid = record.get(cols[0]).unwrap_or("").to_string();
        rows.push((uid, [numbers[0], numbers[1], numbers[2]], numbers[3]));
    }
    Ok(rows)
}

/// Read LUNA16 annotations (`seriesuid,coordX,coordY,coordZ,diameter_mm`, with a header).
pub fn read_annotations_csv(path: &Path) -> Result<Vec<LunaAnnotation>, MetricsError> {
    Ok(read_rows(path, "diameter_mm")?
        .into_iter()
        .map(|(seriesuid, center, diameter_mm)| LunaAnnotation {
            seriesuid,
            center,
            diameter_mm,
        })
        .collect())
}

/// Read LUNA16 candidates (`seriesuid,coordX,coordY,coordZ,probability`, with a header).
pub fn read_candidates_csv(path: &Path) -> Result<Vec<LunaCandidate>, MetricsError> {
    Ok(read_rows(path, "probability")?
        .into_iter()
        .map(|(seriesuid, center, probability)| LunaCandidate {
            seriesuid,
            center,
            probability,
        })
        .collect())
}

/// Read the scan list: the first column of each line; a `seriesuid` header line is skipped.
pub fn read_seriesuids_csv(path: &Path) -> Result<Vec<String>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::file(path, e))?;
    Ok(text
        .lines()
        .map(|l| l.split(',').next().unwrap_or("").trim().to_string())
        .filter(|uid| !uid.is_empty())
        .enumerate()
        .filter(|(i, uid)| !(*i == 0 && uid == "seriesuid"))
        .map(|(_, uid)| uid)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(uid: &str, x: f64, d: f64) -> LunaAnnotation {
        LunaAnnotation {
            seriesuid: uid.into(),
            center: [x, 0.0, 0.0],
            diameter_mm: d,
        }
    }

    fn cand(uid: &str, x: f64, p: f64) -> LunaCandidate {
        LunaCandidate {
            seriesuid: uid.into(),
            center: [x, 0.0, 0.0],
            probability: p,
        }
    }

    #[test]
    fn hits_are_strict_duplicates_ignored_and_excluded_hits_dropped() {
        let uids = vec!["a".to_string(), "b".to_string()];
        // Nodule at 0 with diameter 4 (radius 2): x = 2 is NOT a hit (strict), x = 1.9 is.
        let anns = vec![ann("a", 0.0, 4.0), ann("b", 0.0, -1.0)];
        let excl = vec![ann("a", 50.0, 4.0)];
        let cands = vec![
            cand("a", 2.0, 0.9),  // FP (on the boundary)
            cand("a", 1.9, 0.5),  // TP
            cand("a", 1.0, 0.7),  // duplicate hit: the nodule keeps 0.7, this is neither TP nor FP
            cand("a", 50.5, 0.8), // on an excluded nodule: ignored
            cand("b", 4.9, 0.6),  // negative diameter → 10 mm → hit
            cand("z", 0.0, 0.99), // unknown scan: ignored
        ];
        let r = cpm(&uids, &anns, &excl, &cands, &CpmConfig::default()).unwrap();
        assert_eq!(
            (r.num_nodules, r.num_detected, r.num_false_positives),
            (2, 2, 1)
        );
        assert_eq!(
            (
                r.num_ignored_excluded,
                r.num_duplicate_hits,
                r.num_candidates
            ),
            (1, 1, 5)
        );
        // Curve: 0.9 FP → (0.5, 0), 0.7 TP → (0.5, 0.5), 0.6 TP → (0.5, 1).
        assert_eq!(r.sensitivities, vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(r.cpm, 5.0 / 7.0);
    }

    #[test]
    fn the_per_scan_limit_drops_candidates_tied_with_the_cut_off() {
        let uids = vec!["a".to_string()];
        let cands = vec![
            cand("a", 100.0, 0.9),
            cand("a", 101.0, 0.5),
            cand("a", 102.0, 0.5),
            cand("a", 103.0, 0.1),
        ];
        let cfg = CpmConfig {
            max_candidates_per_scan: 2,
            ..CpmConfig::default()
        };
        let r = cpm(&uids, &[ann("a", 0.0, 4.0)], &[], &cands, &cfg).unwrap();
        // The 3rd-highest probability is 0.5: only the candidate above it survives.
        assert_eq!(r.num_candidates, 1);
        // No TP at all: NaN as in the official script.
        assert!(r.cpm.is_nan());
    }
}
