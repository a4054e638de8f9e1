//! Case-level bootstrap: confidence intervals and rank distributions for several methods
//! evaluated on the same cases.
//!
//! A resample draws `num_cases` cases with replacement (ChaCha8, seeded). It is a multiset: it
//! is evaluated as the list of cases in original order, each repeated by its multiplicity, so
//! N_img of the FROC is the number of drawn cases (duplicates included) and GT counts are
//! multiplied too. Matching is computed once per method; a resample only re-aggregates.
//!
//! Ranking (higher metric = better; NaN is worse than any number and ties with NaN): with
//! [`RankTies::Min`] (default, as challengeR) tied methods all get the best rank of their
//! group (1, 1, 3); with [`RankTies::Average`] they get its mean (1.5, 1.5, 3), and the rank
//! distribution spreads each tied method's count evenly over the ranks of its group.

use super::aggregate::{self, Prepared, Want};
use super::{
    EvalConfig, ImageGt, ImagePred, MetricsError, froc_score_key, infer_num_classes, numeric,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How tied methods are ranked within one resample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankTies {
    /// Every tied method gets the best rank of the group (1, 1, 3).
    #[default]
    Min,
    /// Every tied method gets the mean rank of the group (1.5, 1.5, 3).
    Average,
}

/// Bootstrap settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Number of resamples B (default 1000).
    pub n: usize,
    /// Seed of the resampling (ChaCha8).
    pub seed: u64,
    /// The metric that methods are ranked by (a key of [`super::MetricReport::scalars`]).
    pub metric: String,
    /// Further metrics to summarise (mean and CI), not used for ranking.
    pub extra_metrics: Vec<String>,
    /// Tie handling of the ranks.
    pub ties: RankTies,
    /// Lower and upper percentile of the confidence interval (default 2.5, 97.5).
    pub ci_percentiles: [f64; 2],
    /// The evaluation settings.
    pub eval: EvalConfig,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            n: 1000,
            seed: 0,
            metric: "AP_IoU_0.10_MaxDet_100".into(),
            extra_metrics: vec![],
            ties: RankTies::Min,
            ci_percentiles: [2.5, 97.5],
            eval: EvalConfig::default(),
        }
    }
}

/// Bootstrap statistics of one metric of one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// The value on all cases (no resampling).
    pub value: f64,
    /// Mean over the resamples (NaN resamples left out).
    pub mean: f64,
    /// Lower CI bound (percentile `ci_percentiles[0]`, linear).
    pub ci_low: f64,
    /// Upper CI bound (percentile `ci_percentiles[1]`, linear).
    pub ci_high: f64,
    /// Standard deviation over the resamples (n − 1).
    pub std: f64,
    /// Number of resamples where the metric was NaN.
    pub num_nan: usize,
}

/// Bootstrap statistics of one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// The method's name.
    pub name: String,
    /// Per metric: value, mean and CI.
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// Result of [`bootstrap`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapReport {
    /// The ranking metric.
    pub metric: String,
    /// Number of resamples.
    pub n: usize,
    /// The seed used.
    pub seed: u64,
    /// Tie handling used.
    pub ties: RankTies,
    /// Number of cases resampled.
    pub num_cases: usize,
    /// Method names, in input order (the index used by the matrices below).
    pub methods: Vec<String>,
    /// Per method: statistics of every requested metric.
    pub summaries: Vec<MethodSummary>,
    /// `rank_counts[m][r]`: how many resamples gave method m rank r + 1.
    pub rank_counts: Vec<Vec<f64>>,
    /// Mean rank of each method over the resamples.
    pub mean_rank: Vec<f64>,
    /// `beats[a][b]`: fraction of resamples in which method a is strictly better than b.
    pub beats: Vec<Vec<f64>>,
    /// `values[m][b]`: the ranking metric of method m on resample b.
    pub values: Vec<Vec<f64>>,
}

fn better(a: f64, b: f64) -> bool {
    a > b || (!a.is_nan() && b.is_nan())
}

fn tied(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// Ranks (1 = best) of `values` with the given tie rule.
pub fn rank(values: &[f64], ties: RankTies) -> Vec<f64> {
    values
        .iter()
        .map(|&v| {
            let above = values.iter().filter(|&&o| better(o, v)).count() as f64;
            let same = values.iter().filter(|&&o| tied(o, v)).count() as f64;
            match ties {
                RankTies::Min => above + 1.0,
                RankTies::Average => above + (same + 1.0) / 2.0,
            }
        })
        .collect()
}

/// The smallest aggregation that yields `keys`.
fn want_for(cfg: &EvalConfig, keys: &[String]) -> Want {
    let mut want = Want {
        ap: vec![],
        map: false,
        froc: vec![],
        per_class_froc: false,
        per_class_ap: true,
    };
    for key in keys {
        let (per_class, base) = match key.split_once('_') {
            Some((head, rest))
                if head == "mc"
                    || (!head.is_empty() && head.bytes().all(|b| b.is_ascii_digit())) =>
            {
                (true, rest)
            }
            _ => (false, key.as_str()),
        };
        for &t in &cfg.iou_thresholds {
            if base == cfg.ap_key(t) && !want.ap.contains(&t) {
                want.ap.push(t);
            }
        }
        if base == cfg.map_key() {
            want.map = true;
        }
        for &t in &cfg.froc_iou {
            if base == froc_score_key(t) {
                if !want.froc.contains(&t) {
                    want.froc.push(t);
                }
                want.per_class_froc |= per_class;
            }
        }
    }
    want
}

fn summarise(value: f64, samples: &[f64], ci: [f64; 2]) -> MetricSummary {
    let finite: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = numeric::mean(&finite);
    let std = if finite.len() > 1 {
        (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (finite.len() - 1) as f64)
            .sqrt()
    } else {
        f64::NAN
    };
    MetricSummary {
        value,
        mean,
        ci_low: numeric::percentile(&finite, ci[0]),
        ci_high: numeric::percentile(&finite, ci[1]),
        std,
        num_nan: samples.len() - finite.len(),
    }
}

/// Bootstrap several methods on the same cases: per-metric means and CIs, per-resample ranks
/// (rank distributions, mean ranks) and how often each method beats each other one.
pub fn bootstrap(
    methods: &[(String, Vec<ImagePred>)],
    gt: &[ImageGt],
    cfg: &BootstrapConfig,
) -> Result<BootstrapReport, MetricsError> {
    cfg.eval.validate()?;
    if cfg.n == 0 {
        return Err(MetricsError::config(
            "n",
            "the number of resamples must be at least 1",
        ));
    }
    if methods.is_empty() {
        return Err(MetricsError::config("methods", "no method to bootstrap"));
    }
    for (i, p) in cfg.ci_percentiles.iter().enumerate() {
        if !(0.0..=100.0).contains(p) {
            return Err(MetricsError::config(
                format!("ci_percentiles[{i}]"),
                format!("{p} is not in [0, 100]"),
            ));
        }
    }
    for (i, (name, preds)) in methods.iter().enumerate() {
        if methods[..i].iter().any(|(n, _)| n == name) {
            return Err(MetricsError::config(
                "methods",
                format!("method name '{name}' appears twice"),
            ));
        }
        if preds.len() != gt.len() {
            return Err(MetricsError::input(
                "(all)",
                format!("{name}.pred"),
                format!(
                    "{} prediction lists for {} GT images",
                    preds.len(),
                    gt.len()
                ),
            ));
        }
    }
    // One class count for all methods, so that their keys mean the same thing.
    let all_preds: Vec<ImagePred> = methods
        .iter()
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    let num_classes = infer_num_classes(gt, &all_preds, &cfg.eval);
    drop(all_preds);
    let eval = &cfg.eval;
    let thresholds = eval.all_thresholds();
    let mut prepared = Vec::with_capacity(methods.len());
    for (name, preds) in methods {
        prepared.push(Prepared::build(
            gt,
            preds,
            thresholds.clone(),
            eval.max_det,
            num_classes,
            &|i| format!("{name}#{i}"),
        )?);
    }
    let mut keys = vec![cfg.metric.clone()];
    keys.extend(
        cfg.extra_metrics
            .iter()
            .filter(|k| **k != cfg.metric)
            .cloned(),
    );
    // Point estimates on all cases; they also tell which keys exist.
    let full: Vec<_> = prepared
        .iter()
        .map(|p| aggregate::report(p, None, eval, &aggregate::Want::all(eval), false))
        .collect();
    for key in &keys {
        if !full[0].scalars.contains_key(key) {
            let available: Vec<&str> = full[0].scalars.keys().map(String::as_str).collect();
            return Err(MetricsError::UnknownMetric {
                name: key.clone(),
                available: available.join(", "),
            });
        }
    }
    let want = want_for(eval, &keys);
    let num_cases = gt.len();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let resamples: Vec<Vec<u32>> = (0..cfg.n)
        .map(|_| {
            let mut counts = vec![0u32; num_cases];
            for _ in 0..num_cases {
                counts[rng.random_range(0..num_cases)] += 1;
            }
            counts
        })
        .collect();
    // samples[b][m][k]
    let samples: Vec<Vec<Vec<f64>>> = resamples
        .par_iter()
        .map_init(aggregate::Scratch::default, |scratch, counts| {
            prepared
                .iter()
                .map(|p| {
                    let r = aggregate::report_with(p, Some(counts), eval, &want, false, scratch);
                    keys.iter().map(|k| r.get(k).unwrap_or(f64::NAN)).collect()
                })
                .collect()
        })
        .collect();
    let m_n = methods.len();
    let mut summaries = Vec::with_capacity(m_n);
    for (m, (name, _)) in methods.iter().enumerate() {
        let mut metrics = BTreeMap::new();
        for (k, key) in keys.iter().enumerate() {
            let column: Vec<f64> = samples.iter().map(|s| s[m][k]).collect();
            metrics.insert(
                key.clone(),
                summarise(full[m].scalars[key], &column, cfg.ci_percentiles),
            );
        }
        summaries.push(MethodSummary {
            name: name.clone(),
            metrics,
        });
    }
    let values: Vec<Vec<f64>> = (0..m_n)
        .map(|m| samples.iter().map(|s| s[m][0]).collect())
        .collect();
    let mut rank_counts = vec![vec![0.0; m_n]; m_n];
    let mut rank_sums = vec![0.0; m_n];
    let mut beats = vec![vec![0.0; m_n]; m_n];
    for s in &samples {
        let v: Vec<f64> = s.iter().map(|x| x[0]).collect();
        let ranks = rank(&v, cfg.ties);
        for m in 0..m_n {
            rank_sums[m] += ranks[m];
            let above = v.iter().filter(|&&o| better(o, v[m])).count();
            let same = v.iter().filter(|&&o| tied(o, v[m])).count();
            match cfg.ties {
                RankTies::Min => rank_counts[m][above] += 1.0,
                RankTies::Average => {
                    for count in &mut rank_counts[m][above..above + same] {
                        *count += 1.0 / same as f64;
                    }
                }
            }
            for o in 0..m_n {
                if better(v[m], v[o]) {
                    beats[m][o] += 1.0;
                }
            }
        }
    }
    let n = cfg.n as f64;
    for row in &mut beats {
        for x in row.iter_mut() {
            *x /= n;
        }
    }
    Ok(BootstrapReport {
        metric: cfg.metric.clone(),
        n: cfg.n,
        seed: cfg.seed,
        ties: cfg.ties,
        num_cases,
        methods: methods.iter().map(|(n, _)| n.clone()).collect(),
        summaries,
        rank_counts,
        mean_rank: rank_sums.iter().map(|s| s / n).collect(),
        beats,
        values,
    })
}
