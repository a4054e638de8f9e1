//! Aggregation of per-image matching results into AP, mAP and FROC.
//!
//! Matching is done once ([`Prepared`]); aggregation takes optional per-image multiplicities
//! so that a bootstrap resample (a multiset of cases) is evaluated without re-matching. With
//! multiplicities the result equals [`super::evaluate`] on the list of cases in original order,
//! each repeated by its multiplicity: runs of equal score within one image are repeated as a
//! whole, which is where a stable sort of the materialised list puts the copies.

#[cfg(test)]
use super::matching::ImageMatch;
use super::matching::{MatchBuffers, visit_image};
use super::{EvalConfig, froc_curve_key, froc_score_key, numeric};
use super::{ImageGt, ImagePred, MetricsError, validate_case};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A FROC curve: the polyline (for plots), the sensitivities at the FPPI grid and the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrocCurve {
    /// IoU threshold of the matching.
    pub iou: f64,
    /// The class, or `None` for the curve pooled over classes.
    pub class: Option<usize>,
    /// FPPI of each curve point (starts at 0).
    pub fppi: Vec<f64>,
    /// Sensitivity of each curve point (starts at 0).
    pub sensitivity: Vec<f64>,
    /// Score threshold of each curve point (the first is +∞, `null` in JSON).
    pub score_thresholds: Vec<f64>,
    /// The FPPI grid the score is read at.
    pub fppi_grid: Vec<f64>,
    /// Sensitivity at each grid value (numpy `interp`).
    pub grid_sensitivity: Vec<f64>,
    /// FROC score: the mean of `grid_sensitivity`.
    pub score: f64,
    /// Number of evaluated images (N_img).
    pub num_images: usize,
    /// Number of GT boxes (G).
    pub num_gt: usize,
    /// Number of detections entering the curve.
    pub num_detections: usize,
    /// Number of true positives among them.
    pub num_tp: usize,
}

/// A precision–recall curve of one class at one IoU threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrCurve {
    /// IoU threshold of the matching.
    pub iou: f64,
    /// The class.
    pub class: usize,
    /// Number of GT boxes of the class (0: AP is −1 and the curve is empty).
    pub num_gt: usize,
    /// Recall after each detection (f32 values widened to f64).
    pub recall: Vec<f64>,
    /// Precision after each detection (f32 values widened, unless numpy-2 precision).
    pub precision: Vec<f64>,
    /// Monotone precision envelope.
    pub precision_envelope: Vec<f64>,
    /// Score of each detection, descending.
    pub scores: Vec<f64>,
    /// Image index of each detection.
    pub images: Vec<usize>,
    /// The 101 recall points.
    pub recall_grid: Vec<f64>,
    /// Interpolated precision at each recall point.
    pub grid_precision: Vec<f64>,
    /// AP: the mean of `grid_precision`.
    pub ap: f64,
}

/// Result of an evaluation: scalar metrics under nnDetection's key names plus curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricReport {
    /// Scalar metrics, e.g. `AP_IoU_0.10_MaxDet_100`, `FROC_score_IoU_0.10`, `0_AP_IoU_…`.
    pub scalars: BTreeMap<String, f64>,
    /// FROC curves: `FROC_curve_IoU_{t}` (pooled) and `{k}_FROC_curve_IoU_{t}` (per class).
    pub froc_curves: BTreeMap<String, FrocCurve>,
    /// PR curves `{k}_PR_curve_IoU_{t}` at the reported AP thresholds.
    pub pr_curves: BTreeMap<String, PrCurve>,
    /// The FPPI grid of the FROC curves.
    pub fppi_thresholds: Vec<f64>,
    /// Number of evaluated images.
    pub num_images: usize,
    /// Number of GT boxes per class.
    pub num_gt: Vec<usize>,
    /// Number of classes evaluated.
    pub num_classes: usize,
    /// Every IoU threshold that was matched.
    pub iou_thresholds: Vec<f64>,
}

impl MetricReport {
    /// The scalar metric `key`, if the report has it.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.scalars.get(key).copied()
    }

    /// The nnDetection-style JSON object: scalars (NaN as `null`), `FROC_curve_IoU_…` grid
    /// sensitivities, `FROC_fpi_thresholds`, `FROC_num_images` and `FROC_num_gt`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.scalars {
            map.insert(k.clone(), serde_json::Value::from(*v));
        }
        for (k, c) in &self.froc_curves {
            map.insert(
                k.clone(),
                serde_json::Value::from(c.grid_sensitivity.clone()),
            );
        }
        map.insert(
            "FROC_fpi_thresholds".into(),
            serde_json::Value::from(self.fppi_thresholds.clone()),
        );
        map.insert(
            "FROC_num_images".into(),
            serde_json::Value::from(self.num_images),
        );
        map.insert(
            "FROC_num_gt".into(),
            serde_json::Value::from(self.num_gt.iter().sum::<usize>()),
        );
        serde_json::Value::Object(map)
    }
}

/// A key whose ascending order is the descending order of `score` (NaN-free); -0.0 and 0.0
/// get the same key, as they compare equal in numpy's sort.
pub(crate) fn descending_key(score: f64) -> u64 {
    let score = if score == 0.0 { 0.0 } else { score };
    let bits = score.to_bits();
    let ascending = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    !ascending
}

/// The score whose [`descending_key`] is `key` (-0.0 comes back as 0.0, an equal value).
fn score_of_key(key: u64) -> f64 {
    let ascending = !key;
    let bits = if ascending >> 63 == 1 {
        ascending & !(1 << 63)
    } else {
        !ascending
    };
    f64::from_bits(bits)
}

/// A detection on its way into the pools: sort key, match flags, image and class.
#[derive(Debug, Clone, Copy, Default)]
struct Item {
    key: u64,
    flags: u64,
    image: u32,
    class: u32,
}

/// Stable LSD radix sort by `key`: 16-bit digits, all four histograms from one pass, digits
/// shared by every key skipped. The items travel with their keys, so the result is read
/// sequentially afterwards.
fn radix_sort_stable(items: &mut Vec<Item>) {
    const DIGITS: usize = 4;
    const BUCKETS: usize = 1 << 16;
    let n = items.len();
    if n < 256 {
        items.sort_by_key(|e| e.key);
        return;
    }
    let mut counts = vec![[0u32; DIGITS]; BUCKETS];
    for e in items.iter() {
        for (d, c) in (0..DIGITS).zip([0, 16, 32, 48]) {
            counts[((e.key >> c) & 0xFFFF) as usize][d] += 1;
        }
    }
    let mut buffer = vec![Item::default(); n];
    for d in 0..DIGITS {
        let shift = 16 * d;
        if counts.iter().any(|c| c[d] as usize == n) {
            continue;
        }
        let mut offsets = vec![0u32; BUCKETS];
        let mut sum = 0u32;
        for (o, c) in offsets.iter_mut().zip(&counts) {
            *o = sum;
            sum += c[d];
        }
        for e in items.iter() {
            let slot = &mut offsets[((e.key >> shift) & 0xFFFF) as usize];
            buffer[*slot as usize] = *e;
            *slot += 1;
        }
        std::mem::swap(items, &mut buffer);
    }
}

/// One chunk's detections and GT counts (per image and class).
type ChunkItems = (Vec<Item>, Vec<u32>);

/// Detections sorted by descending score (stable over the image-order concatenation).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub image: Vec<u32>,
    pub flags: Vec<u64>,
    pub score: Vec<f64>,
}

impl Pool {
    /// Sort `(image, flags, score)` entries by descending score, stably: ties stay in image
    /// order, then in within-image (score) order, as numpy's mergesort leaves them.
    #[cfg(test)]
    fn from_entries(entries: &[(u32, u64, f64)]) -> Pool {
        let mut items: Vec<Item> = entries
            .iter()
            .map(|e| Item {
                key: descending_key(e.2),
                flags: e.1,
                image: e.0,
                class: 0,
            })
            .collect();
        radix_sort_stable(&mut items);
        let mut pool = Pool::with_capacity(entries.len());
        for it in items {
            pool.push(it.image, it.flags, score_of_key(it.key));
        }
        pool
    }

    fn with_capacity(n: usize) -> Pool {
        Pool {
            image: Vec::with_capacity(n),
            flags: Vec::with_capacity(n),
            score: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, image: u32, flags: u64, score: f64) {
        self.image.push(image);
        self.flags.push(flags);
        self.score.push(score);
    }

    fn len(&self) -> usize {
        self.score.len()
    }
}

/// Matching results arranged for fast (re-)aggregation.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub thresholds: Vec<f64>,
    pub num_images: usize,
    pub num_classes: usize,
    /// GT count per image and class: `[image * num_classes + class]`.
    pub gt_counts: Vec<u32>,
    pub classes: Vec<Pool>,
    pub pooled: Pool,
}

impl Prepared {
    /// From per-image matching results (used by tests; evaluation uses [`Prepared::build`]).
    #[cfg(test)]
    pub fn new(matches: &[ImageMatch], num_classes: usize, thresholds: Vec<f64>) -> Prepared {
        let mut gt_counts = vec![0u32; matches.len() * num_classes];
        let mut items = Vec::new();
        for (i, m) in matches.iter().enumerate() {
            for cm in &m.classes {
                gt_counts[i * num_classes + cm.class] += cm.num_gt as u32;
                for (f, s) in cm.matched.iter().zip(&cm.scores) {
                    items.push(Item {
                        key: descending_key(*s),
                        flags: *f,
                        image: i as u32,
                        class: cm.class as u32,
                    });
                }
            }
        }
        Prepared::from_items(items, gt_counts, matches.len(), num_classes, thresholds)
    }

    /// Validate and match every image (in parallel chunks, without per-class allocations) and
    /// arrange the detections. `case_name(i)` names image i in errors; the first invalid image
    /// in input order is reported.
    pub fn build(
        gt: &[ImageGt],
        pred: &[ImagePred],
        thresholds: Vec<f64>,
        max_det: usize,
        num_classes: usize,
        case_name: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Prepared, MetricsError> {
        const CHUNK: usize = 64;
        let parts: Vec<Result<ChunkItems, MetricsError>> = gt
            .par_chunks(CHUNK)
            .zip(pred.par_chunks(CHUNK))
            .enumerate()
            .map_init(MatchBuffers::default, |buf, (chunk, (gs, ps))| {
                let mut items = Vec::with_capacity(ps.iter().map(|p| p.scores.len()).sum());
                let mut counts = vec![0u32; gs.len() * num_classes];
                for (j, (g, p)) in gs.iter().zip(ps).enumerate() {
                    let image = chunk * CHUNK + j;
                    validate_case(&case_name(image), g, p, Some(num_classes))?;
                    visit_image(g, p, &thresholds, max_det, buf, |m| {
                        counts[j * num_classes + m.class] += m.num_gt as u32;
                        for (&k, &flags) in m.pred_index.iter().zip(m.matched) {
                            items.push(Item {
                                key: descending_key(p.scores[k]),
                                flags,
                                image: image as u32,
                                class: m.class as u32,
                            });
                        }
                    });
                }
                Ok((items, counts))
            })
            .collect();
        let mut sizes = (0, 0);
        for part in parts.iter().flatten() {
            sizes.0 += part.0.len();
            sizes.1 += part.1.len();
        }
        let mut items = Vec::with_capacity(sizes.0);
        let mut gt_counts = Vec::with_capacity(sizes.1);
        for part in parts {
            let (it, counts) = part?;
            items.extend_from_slice(&it);
            gt_counts.extend_from_slice(&counts);
        }
        Ok(Prepared::from_items(
            items,
            gt_counts,
            gt.len(),
            num_classes,
            thresholds,
        ))
    }

    /// Sort the detections (in image order, classes in index order within an image, each class
    /// in its kept score order). One stable sort by score orders the pool; filtering one class
    /// out of it keeps that order, which is the class's own stable order (ties: image order,
    /// then within-image order), so one sort serves every class.
    fn from_items(
        mut items: Vec<Item>,
        gt_counts: Vec<u32>,
        num_images: usize,
        num_classes: usize,
        thresholds: Vec<f64>,
    ) -> Prepared {
        let mut sizes = vec![0usize; num_classes];
        for it in &items {
            sizes[it.class as usize] += 1;
        }
        radix_sort_stable(&mut items);
        let mut pooled = Pool::with_capacity(items.len());
        let mut classes: Vec<Pool> = sizes.iter().map(|&n| Pool::with_capacity(n)).collect();
        for it in &items {
            let score = score_of_key(it.key);
            pooled.push(it.image, it.flags, score);
            classes[it.class as usize].push(it.image, it.flags, score);
        }
        Prepared {
            thresholds,
            num_images,
            num_classes,
            gt_counts,
            classes,
            pooled,
        }
    }

    fn threshold_index(&self, t: f64) -> usize {
        self.thresholds
            .iter()
            .position(|&x| x == t)
            .expect("threshold was matched")
    }

    fn num_images_weighted(&self, weights: Option<&[u32]>) -> u64 {
        weights.map_or(self.num_images as u64, |w| {
            w.iter().map(|&x| x as u64).sum()
        })
    }

    fn gt_weighted(&self, weights: Option<&[u32]>, class: Option<usize>) -> u64 {
        let c = self.num_classes;
        let mut total = 0u64;
        for i in 0..self.num_images {
            let w = weights.map_or(1, |w| w[i] as u64);
            if w == 0 {
                continue;
            }
            let row = &self.gt_counts[i * c..(i + 1) * c];
            let n: u64 = match class {
                Some(k) => row[k] as u64,
                None => row.iter().map(|&x| x as u64).sum(),
            };
            total += w * n;
        }
        total
    }
}

/// What an aggregation computes.
#[derive(Debug, Clone)]
pub(crate) struct Want {
    /// Thresholds with `AP_IoU_…` keys.
    pub ap: Vec<f64>,
    /// Whether the mAP keys are wanted.
    pub map: bool,
    /// Thresholds with pooled FROC keys.
    pub froc: Vec<f64>,
    /// Whether per-class FROC (and `mc_…`) keys are wanted.
    pub per_class_froc: bool,
    /// Whether per-class AP keys are emitted.
    pub per_class_ap: bool,
}

impl Want {
    pub fn all(cfg: &EvalConfig) -> Want {
        Want {
            ap: cfg.iou_thresholds.clone(),
            map: true,
            froc: cfg.froc_iou.clone(),
            per_class_froc: cfg.per_class,
            per_class_ap: cfg.per_class,
        }
    }
}

/// Reusable buffers of the aggregation.
#[derive(Debug)]
pub(crate) struct Scratch {
    rc: Vec<f64>,
    pr: Vec<f64>,
    src: Vec<u32>,
    /// Per threshold bit: the 1-based position of each TP in the sorted detections.
    tp_positions: Vec<Vec<u64>>,
    suffix_max: Vec<f64>,
    fps: Vec<u64>,
    tps: Vec<u64>,
    ths: Vec<f64>,
    xs: Vec<f64>,
    ys: Vec<f64>,
    grid: Vec<f64>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            rc: vec![],
            pr: vec![],
            src: vec![],
            tp_positions: vec![Vec::new(); 64],
            suffix_max: vec![],
            fps: vec![],
            tps: vec![],
            ths: vec![],
            xs: vec![],
            ys: vec![],
            grid: numeric::recall_grid(),
        }
    }
}

/// Precision after `tp` TPs and `fp` FPs, as nnDetection computes it (f32, or f64 with numpy 2).
fn precision(tp: u64, fp: u64, numpy2: bool) -> f64 {
    let (tpf, fpf) = (tp as f32, fp as f32);
    if numpy2 {
        tpf as f64 / ((fpf + tpf) as f64 + f64::EPSILON)
    } else {
        (tpf / ((fpf + tpf) + EPS_F32)) as f64
    }
}

/// Record, for every threshold bit in `need`, the position of each TP of `pool` (runs of one
/// image repeated by its multiplicity).
fn collect_tp_positions(pool: &Pool, need: u64, weights: Option<&[u32]>, scratch: &mut Scratch) {
    let mut bits = need;
    while bits != 0 {
        scratch.tp_positions[bits.trailing_zeros() as usize].clear();
        bits &= bits - 1;
    }
    let positions = &mut scratch.tp_positions;
    let mut n = 0u64;
    let mut record = |f: u64, n: u64| {
        let mut b = f & need;
        while b != 0 {
            positions[b.trailing_zeros() as usize].push(n);
            b &= b - 1;
        }
    };
    match weights {
        None => {
            for &f in &pool.flags {
                n += 1;
                record(f, n);
            }
        }
        Some(w) => {
            let len = pool.len();
            let mut i = 0;
            while i < len {
                let (img, s) = (pool.image[i], pool.score[i]);
                let mut j = i + 1;
                while j < len && pool.image[j] == img && pool.score[j] == s {
                    j += 1;
                }
                for _ in 0..w[img as usize] {
                    for &f in &pool.flags[i..j] {
                        n += 1;
                        record(f, n);
                    }
                }
                i = j;
            }
        }
    }
}

/// The 101 interpolated precisions from the TP positions of one class at one threshold.
///
/// Only TP positions matter: the first position reaching a recall point is a TP (recall grows
/// only there; for the point 0 it is the first detection, whose envelope is the overall
/// maximum), and the precision after a FP is below that of the preceding TP, so the envelope
/// (a suffix maximum) is a maximum over TP positions.
fn grid_from_tp_positions(
    positions: &[u64],
    num_gt: u64,
    numpy2: bool,
    scratch_suffix: &mut Vec<f64>,
    grid: &[f64],
    out: &mut [f64],
) {
    let g = num_gt as f32;
    scratch_suffix.clear();
    scratch_suffix.resize(positions.len(), 0.0);
    let mut best = 0.0f64;
    for (idx, &n) in positions.iter().enumerate().rev() {
        let m = idx as u64 + 1;
        let p = precision(m, n - m, numpy2);
        if p > best {
            best = p;
        }
        scratch_suffix[idx] = best;
    }
    let mut idx = 0;
    for (o, &rho) in out.iter_mut().zip(grid) {
        while idx < positions.len() && (((idx as u64 + 1) as f32 / g) as f64) < rho {
            idx += 1;
        }
        *o = if idx < positions.len() {
            scratch_suffix[idx]
        } else {
            0.0
        };
    }
}

const EPS_F32: f32 = f64::EPSILON as f32;

/// Fill `scratch.rc` / `scratch.pr` with the cumulative recall / precision of `pool` at bit
/// `bit`, repeating runs of one image by its multiplicity.
fn fill_pr(
    pool: &Pool,
    bit: usize,
    weights: Option<&[u32]>,
    num_gt: u64,
    numpy2: bool,
    scratch: &mut Scratch,
    keep_src: bool,
) {
    scratch.rc.clear();
    scratch.pr.clear();
    scratch.src.clear();
    let g = num_gt as f32;
    let (mut tp, mut fp) = (0u64, 0u64);
    let n = pool.len();
    let mut i = 0;
    while i < n {
        let img = pool.image[i];
        let mut j = i + 1;
        let w = match weights {
            None => 1,
            Some(w) => {
                let s = pool.score[i];
                while j < n && pool.image[j] == img && pool.score[j] == s {
                    j += 1;
                }
                w[img as usize]
            }
        };
        for _ in 0..w {
            for k in i..j {
                let hit = (pool.flags[k] >> bit) & 1;
                tp += hit;
                fp += 1 - hit;
                // nnDetection casts the cumulative sums to float32 (numpy < 2 keeps float32).
                let (tpf, fpf) = (tp as f32, fp as f32);
                scratch.rc.push((tpf / g) as f64);
                let p = if numpy2 {
                    tpf as f64 / ((fpf + tpf) as f64 + f64::EPSILON)
                } else {
                    (tpf / ((fpf + tpf) + EPS_F32)) as f64
                };
                scratch.pr.push(p);
                if keep_src {
                    scratch.src.push(k as u32);
                }
            }
        }
        i = j;
    }
}

/// Precision envelope in place, then the precision at each recall point (searchsorted left).
fn grid_precision(scratch: &mut Scratch, grid: &[f64], out: &mut [f64]) {
    let pr = &mut scratch.pr;
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let rc = &scratch.rc;
    let mut k = 0;
    for (o, &rho) in out.iter_mut().zip(grid) {
        while k < rc.len() && rc[k] < rho {
            k += 1;
        }
        *o = if k < rc.len() { pr[k] } else { 0.0 };
    }
}

/// The PR curve (or, with `curves` false, only the grid precisions and AP) of one class.
pub(crate) fn pr_for(
    prep: &Prepared,
    weights: Option<&[u32]>,
    cfg: &EvalConfig,
    ti: usize,
    class: usize,
    scratch: &mut Scratch,
    curves: bool,
) -> PrCurve {
    let grid = numeric::recall_grid();
    let num_gt = prep.gt_weighted(weights, Some(class));
    let iou = prep.thresholds[ti];
    if num_gt == 0 {
        return PrCurve {
            iou,
            class,
            num_gt: 0,
            recall: vec![],
            precision: vec![],
            precision_envelope: vec![],
            scores: vec![],
            images: vec![],
            grid_precision: vec![-1.0; grid.len()],
            recall_grid: grid,
            ap: -1.0,
        };
    }
    let pool = &prep.classes[class];
    fill_pr(
        pool,
        ti,
        weights,
        num_gt,
        cfg.numpy2_precision,
        scratch,
        curves,
    );
    let raw = if curves { scratch.pr.clone() } else { vec![] };
    let mut values = vec![0.0; grid.len()];
    grid_precision(scratch, &grid, &mut values);
    let ap = numeric::mean(&values);
    PrCurve {
        iou,
        class,
        num_gt: num_gt as usize,
        recall: if curves { scratch.rc.clone() } else { vec![] },
        precision: raw,
        precision_envelope: if curves { scratch.pr.clone() } else { vec![] },
        scores: scratch
            .src
            .iter()
            .map(|&k| pool.score[k as usize])
            .collect(),
        images: scratch
            .src
            .iter()
            .map(|&k| pool.image[k as usize] as usize)
            .collect(),
        recall_grid: grid,
        grid_precision: values,
        ap,
    }
}

/// Streaming form of sklearn's `drop_intermediate`: curve points `(fp, tp, score)` arrive in
/// order; a point is kept when it is the first, the last, or the FP or TP count bends there.
struct Thinning<'a> {
    fps: &'a mut Vec<u64>,
    tps: &'a mut Vec<u64>,
    ths: &'a mut Vec<f64>,
    seen: usize,
    /// The step from the previous point to `current`.
    step: (u64, u64),
    current: (u64, u64, f64),
}

impl<'a> Thinning<'a> {
    fn new(fps: &'a mut Vec<u64>, tps: &'a mut Vec<u64>, ths: &'a mut Vec<f64>) -> Self {
        fps.clear();
        tps.clear();
        ths.clear();
        Thinning {
            fps,
            tps,
            ths,
            seen: 0,
            step: (0, 0),
            current: (0, 0, 0.0),
        }
    }

    #[inline]
    fn keep(&mut self, p: (u64, u64, f64)) {
        self.fps.push(p.0);
        self.tps.push(p.1);
        self.ths.push(p.2);
    }

    /// A zero second difference means the same step before and after a point.
    #[inline(always)]
    fn push(&mut self, fp: u64, tp: u64, score: f64) {
        let c = self.current;
        if self.seen == 0 {
            self.keep((fp, tp, score));
        } else {
            let step = (fp - c.0, tp - c.1);
            if self.seen >= 2 && step != self.step {
                self.keep(c);
            }
            self.step = step;
        }
        self.current = (fp, tp, score);
        self.seen += 1;
    }

    fn finish(&mut self) {
        if self.seen >= 2 {
            let c = self.current;
            self.keep(c);
        }
    }
}

/// The FROC curve at threshold index `ti`, pooled (`class` None) or for one class.
pub(crate) fn froc_for(
    prep: &Prepared,
    weights: Option<&[u32]>,
    cfg: &EvalConfig,
    ti: usize,
    class: Option<usize>,
    curves: bool,
    scratch: &mut Scratch,
) -> FrocCurve {
    let pool = match class {
        Some(c) => &prep.classes[c],
        None => &prep.pooled,
    };
    let num_gt = prep.gt_weighted(weights, class);
    let num_images = prep.num_images_weighted(weights);
    // Cumulative counts at each distinct score (ties grouped, as sklearn's roc_curve), thinned
    // on the fly as sklearn's drop_intermediate does: the first and the last point and every
    // point where the FP or TP count bends are kept.
    let mut thin = Thinning::new(&mut scratch.fps, &mut scratch.tps, &mut scratch.ths);
    let n = pool.len();
    let (mut tp, mut total) = (0u64, 0u64);
    match weights {
        None => {
            for k in 0..n {
                tp += (pool.flags[k] >> ti) & 1;
                if k + 1 == n || pool.score[k + 1] != pool.score[k] {
                    thin.push(k as u64 + 1 - tp, tp, pool.score[k]);
                }
            }
            total = n as u64;
        }
        Some(w) => {
            let mut any = false;
            for k in 0..n {
                let weight = w[pool.image[k] as usize] as u64;
                tp += weight * ((pool.flags[k] >> ti) & 1);
                total += weight;
                any |= weight > 0;
                // Groups whose images were all left out of the resample do not exist in it.
                if (k + 1 == n || pool.score[k + 1] != pool.score[k]) && any {
                    thin.push(total - tp, tp, pool.score[k]);
                    any = false;
                }
            }
        }
    }
    thin.finish();
    let (fps, tps, ths) = (&scratch.fps, &scratch.tps, &scratch.ths);
    let grid = cfg.fppi.clone();
    let total_tp = tps.last().copied().unwrap_or(0);
    let total_fp = fps.last().copied().unwrap_or(0);
    let mut curve = FrocCurve {
        iou: prep.thresholds[ti],
        class,
        fppi: vec![],
        sensitivity: vec![],
        score_thresholds: vec![],
        grid_sensitivity: vec![0.0; grid.len()],
        fppi_grid: grid,
        score: 0.0,
        num_images: num_images as usize,
        num_gt: num_gt as usize,
        num_detections: total as usize,
        num_tp: total_tp as usize,
    };
    // No GT, or no detection: nnDetection returns a zero curve and score 0.
    if num_gt == 0 || fps.is_empty() {
        if curves {
            (curve.fppi, curve.sensitivity, curve.score_thresholds) =
                (vec![0.0], vec![0.0], vec![f64::INFINITY]);
        }
        return curve;
    }
    let no_tp_nan = total_tp == 0 && cfg.froc_nan_without_tp;
    let (xs, ys) = (&mut scratch.xs, &mut scratch.ys);
    xs.clear();
    ys.clear();
    // sklearn prepends the origin; with no TP its TPR is 0/0 everywhere, the origin included.
    xs.push(0.0);
    ys.push(if no_tp_nan { f64::NAN } else { 0.0 });
    for k in 0..fps.len() {
        let fppi = if cfg.nndetection_froc_rounding {
            if total_fp == 0 {
                0.0
            } else {
                (fps[k] as f64 / total_fp as f64) * total_fp as f64 / num_images as f64
            }
        } else {
            fps[k] as f64 / num_images as f64
        };
        let sens = if no_tp_nan {
            f64::NAN
        } else if cfg.nndetection_froc_rounding {
            (tps[k] as f64 / total_tp as f64) * total_tp as f64 / num_gt as f64
        } else {
            tps[k] as f64 / num_gt as f64
        };
        xs.push(fppi);
        ys.push(sens);
    }
    for (o, &x) in curve.grid_sensitivity.iter_mut().zip(&curve.fppi_grid) {
        *o = numeric::interp(x, xs, ys);
    }
    curve.score = numeric::mean(&curve.grid_sensitivity);
    if curves {
        curve.fppi = xs.clone();
        curve.sensitivity = ys.clone();
        curve.score_thresholds = std::iter::once(f64::INFINITY)
            .chain(ths.iter().copied())
            .collect();
    }
    curve
}

/// Aggregate matching results into a [`MetricReport`].
pub(crate) fn report(
    prep: &Prepared,
    weights: Option<&[u32]>,
    cfg: &EvalConfig,
    want: &Want,
    curves: bool,
) -> MetricReport {
    report_with(prep, weights, cfg, want, curves, &mut Scratch::default())
}

/// [`report`] with caller-owned buffers (one per worker thread in the bootstrap).
pub(crate) fn report_with(
    prep: &Prepared,
    weights: Option<&[u32]>,
    cfg: &EvalConfig,
    want: &Want,
    curves: bool,
    scratch: &mut Scratch,
) -> MetricReport {
    let c_n = prep.num_classes;
    let range = cfg.range_thresholds();
    // Thresholds whose per-class AP values are needed.
    let mut ap_thresholds: Vec<f64> = want.ap.clone();
    if want.map {
        ap_thresholds.extend(range.iter().copied());
    }
    let ap_thresholds = numeric::union_sorted(&ap_thresholds);
    let grid_len = 101;
    let mut scalars = BTreeMap::new();
    let mut pr_curves = BTreeMap::new();
    // values[a][c] = the 101 interpolated precisions at ap_thresholds[a] for class c.
    let mut values: Vec<Vec<Vec<f64>>> = vec![vec![vec![-1.0; grid_len]; c_n]; ap_thresholds.len()];
    let bit_of: Vec<usize> = ap_thresholds
        .iter()
        .map(|&t| prep.threshold_index(t))
        .collect();
    let need = bit_of.iter().fold(0u64, |m, &b| m | (1 << b));
    for (c, pool) in prep.classes.iter().enumerate() {
        let num_gt = prep.gt_weighted(weights, Some(c));
        if num_gt == 0 {
            // nnDetection leaves the precision of a class without GT at -1.
            continue;
        }
        collect_tp_positions(pool, need, weights, scratch);
        for (a, &bit) in bit_of.iter().enumerate() {
            let positions = std::mem::take(&mut scratch.tp_positions[bit]);
            grid_from_tp_positions(
                &positions,
                num_gt,
                cfg.numpy2_precision,
                &mut scratch.suffix_max,
                &scratch.grid,
                &mut values[a][c],
            );
            scratch.tp_positions[bit] = positions;
        }
    }
    if curves && cfg.pr_curves {
        for &t in &want.ap {
            let ti = prep.threshold_index(t);
            for c in 0..c_n {
                let pr = pr_for(prep, weights, cfg, ti, c, scratch, true);
                pr_curves.insert(format!("{c}_PR_curve_IoU_{t:.2}"), pr);
            }
        }
    }
    let non_empty: Vec<bool> = (0..c_n)
        .map(|c| prep.gt_weighted(weights, Some(c)) > 0)
        .collect();
    let included: Vec<usize> = (0..c_n)
        .filter(|&c| !cfg.skip_empty_classes || non_empty[c])
        .collect();
    // numpy's mean over the C-order array [threshold, recall point, class].
    let class_mean = |ts: &[f64], classes: &[usize]| -> f64 {
        if classes.is_empty() {
            return -1.0;
        }
        let mut flat = Vec::with_capacity(ts.len() * grid_len * classes.len());
        for t in ts {
            let v = &values[ap_thresholds
                .iter()
                .position(|x| x == t)
                .expect("threshold aggregated")];
            // Recall point major, class minor.
            (0..grid_len).for_each(|j| flat.extend(classes.iter().map(|&c| v[c][j])));
        }
        numeric::mean(&flat)
    };
    for &t in &want.ap {
        scalars.insert(cfg.ap_key(t), class_mean(&[t], &included));
        if want.per_class_ap {
            for c in 0..c_n {
                scalars.insert(format!("{c}_{}", cfg.ap_key(t)), class_mean(&[t], &[c]));
            }
        }
    }
    if want.map {
        scalars.insert(cfg.map_key(), class_mean(&range, &included));
        if want.per_class_ap {
            for c in 0..c_n {
                scalars.insert(format!("{c}_{}", cfg.map_key()), class_mean(&range, &[c]));
            }
        }
    }
    let mut froc_curves = BTreeMap::new();
    for &t in &want.froc {
        let ti = prep.threshold_index(t);
        let curve = froc_for(prep, weights, cfg, ti, None, curves, scratch);
        scalars.insert(froc_score_key(t), curve.score);
        froc_curves.insert(froc_curve_key(t), curve);
        if want.per_class_froc {
            let mut sum = 0.0;
            for c in 0..c_n {
                let curve = froc_for(prep, weights, cfg, ti, Some(c), curves, scratch);
                // nnDetection sums the per-class scores of classes with GT and divides by all.
                if curve.num_gt > 0 {
                    sum += curve.score;
                }
                scalars.insert(format!("{c}_{}", froc_score_key(t)), curve.score);
                froc_curves.insert(format!("{c}_{}", froc_curve_key(t)), curve);
            }
            scalars.insert(
                format!("mc_{}", froc_score_key(t)),
                if c_n == 0 { 0.0 } else { sum / c_n as f64 },
            );
        }
    }
    MetricReport {
        scalars,
        froc_curves,
        pr_curves,
        fppi_thresholds: cfg.fppi.clone(),
        num_images: prep.num_images_weighted(weights) as usize,
        num_gt: (0..c_n)
            .map(|c| prep.gt_weighted(weights, Some(c)) as usize)
            .collect(),
        num_classes: c_n,
        iou_thresholds: prep.thresholds.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_order_is_the_stable_descending_score_order() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let specials = [0.0, -0.0, 1.0, -1.0, 1e-300, -1e300, 0.5];
        let scores: Vec<f64> = (0..5000)
            .map(|i| {
                if i % 3 == 0 {
                    specials[next() as usize % specials.len()]
                } else {
                    (next() % 1000) as f64 / 997.0 - 0.3
                }
            })
            .collect();
        let entries: Vec<(u32, u64, f64)> = scores
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as u32, 0, s))
            .collect();
        let pool = Pool::from_entries(&entries);
        let mut expected: Vec<usize> = (0..scores.len()).collect();
        expected.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
        let got: Vec<usize> = pool.image.iter().map(|&i| i as usize).collect();
        assert_eq!(got, expected);
        // Scores come back from the keys unchanged (-0.0 as the equal 0.0).
        for (&i, &s) in pool.image.iter().zip(&pool.score) {
            assert!(s == scores[i as usize] && (s != 0.0 || s.is_sign_positive()));
        }
    }
}
