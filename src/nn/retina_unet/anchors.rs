//! Anchors: 27 per feature-map position (3 extents per axis, all combinations), placed at
//! cell corners, and the planning of their base extents from training boxes.
//!
//! Order (as nnDetection's `AnchorGenerator3DS`): levels in detection order, then positions
//! in raster order (d slowest), then the 27 cell anchors with the d-extent index slowest and
//! the w-extent index fastest. Anchors are computed on demand from their index, so a 128³
//! patch's million anchors cost no memory.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::nn::NnError;
use crate::util::percentile;
use crate::volume::boxes::Box3;

/// Three anchor extents (voxels) per axis, `sizes[axis][i]`, axes in (d, h, w) order.
pub type AnchorSizes = [[f64; 3]; 3];

/// nnDetection's initial base extents: 4, 8 and 16 voxels on every axis.
pub const DEFAULT_ANCHOR_SIZES: AnchorSizes =
    [[4.0, 8.0, 16.0], [4.0, 8.0, 16.0], [4.0, 8.0, 16.0]];

/// Anchors per feature-map position.
pub const ANCHORS_PER_POSITION: usize = 27;

/// The anchors of one detection level.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorLevel {
    /// Feature-map size `[d, h, w]`.
    pub grid: [usize; 3],
    /// Integer stride per axis (patch size / feature size).
    pub stride: [usize; 3],
    /// The level's extents: base extents × (stride / stride of the first level).
    pub sizes: AnchorSizes,
    /// Index of the level's first anchor.
    pub offset: usize,
}

impl AnchorLevel {
    /// Number of positions (feature-map voxels).
    pub fn num_positions(&self) -> usize {
        self.grid.iter().product()
    }

    /// Number of anchors of the level.
    pub fn len(&self) -> usize {
        self.num_positions() * ANCHORS_PER_POSITION
    }

    /// Whether the level has no anchors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Centre of every anchor at a position: the cell corner `i · stride`.
    pub fn position_center(&self, position: usize) -> [f64; 3] {
        let w = position % self.grid[2];
        let h = (position / self.grid[2]) % self.grid[1];
        let d = position / (self.grid[2] * self.grid[1]);
        [
            (d * self.stride[0]) as f64,
            (h * self.stride[1]) as f64,
            (w * self.stride[2]) as f64,
        ]
    }

    /// Box of cell anchor `k` (0..27) at `position`.
    pub fn anchor(&self, position: usize, k: usize) -> Box3 {
        let c = self.position_center(position);
        let e = [
            self.sizes[0][k / 9],
            self.sizes[1][(k / 3) % 3],
            self.sizes[2][k % 3],
        ];
        [
            c[0] - e[0] / 2.0,
            c[1] - e[1] / 2.0,
            c[2] - e[2] / 2.0,
            c[0] + e[0] / 2.0,
            c[1] + e[1] / 2.0,
            c[2] + e[2] / 2.0,
        ]
    }
}

/// All anchors of a patch over the detection levels, addressed by a flat index.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorGrid {
    /// The detection levels, finest first.
    pub levels: Vec<AnchorLevel>,
    /// The patch size `[d, h, w]` the anchors were made for.
    pub patch_size: [usize; 3],
}

impl AnchorGrid {
    /// Anchors for a patch whose detection levels have feature maps `level_grids` (finest first).
    pub fn new(
        patch_size: [usize; 3],
        level_grids: &[[usize; 3]],
        base_sizes: &AnchorSizes,
    ) -> Result<Self, NnError> {
        if level_grids.is_empty() {
            return Err(NnError::config(
                "detection_levels",
                "at least one detection level is needed",
            ));
        }
        for (axis, sizes) in base_sizes.iter().enumerate() {
            if sizes.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(NnError::config(
                    "anchor_sizes",
                    format!("axis {axis} has a non-positive extent {sizes:?}"),
                ));
            }
        }
        let strides: Vec<[usize; 3]> = level_grids
            .iter()
            .map(|g| {
                if g.contains(&0) {
                    Err(NnError::InvalidInput(format!("empty feature map {g:?}")))
                } else {
                    Ok([
                        patch_size[0] / g[0],
                        patch_size[1] / g[1],
                        patch_size[2] / g[2],
                    ])
                }
            })
            .collect::<Result<_, _>>()?;
        let first = strides[0];
        let mut offset = 0;
        let levels = level_grids
            .iter()
            .zip(&strides)
            .map(|(&grid, &stride)| {
                let mut sizes = *base_sizes;
                for axis in 0..3 {
                    let rel = stride[axis] as f64 / first[axis].max(1) as f64;
                    for s in &mut sizes[axis] {
                        *s *= rel;
                    }
                }
                let level = AnchorLevel {
                    grid,
                    stride,
                    sizes,
                    offset,
                };
                offset += level.len();
                level
            })
            .collect();
        Ok(Self { levels, patch_size })
    }

    /// Total number of anchors.
    pub fn len(&self) -> usize {
        self.levels.last().map(|l| l.offset + l.len()).unwrap_or(0)
    }

    /// Whether there are no anchors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The level an anchor index belongs to.
    pub fn level_of(&self, index: usize) -> usize {
        self.levels.partition_point(|l| l.offset + l.len() <= index)
    }

    /// The anchor box with flat index `index` (`index < len()`).
    pub fn anchor(&self, index: usize) -> Box3 {
        let level = &self.levels[self.level_of(index)];
        let local = index - level.offset;
        level.anchor(local / ANCHORS_PER_POSITION, local % ANCHORS_PER_POSITION)
    }

    /// All anchor boxes in index order (allocates `len()` boxes; for tests and plots).
    pub fn boxes(&self) -> Vec<Box3> {
        (0..self.len()).map(|i| self.anchor(i)).collect()
    }
}

/// Options of [`plan_anchors`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorPlanOptions {
    /// Start values on every axis (nnDetection: 4, 8, 16).
    pub initial: [f64; 3],
    /// Random restarts after the run from `initial` (each perturbs the best so far).
    pub restarts: usize,
    /// Drop boxes whose extent on any axis is outside the open (0.5, 99.5) percentile range.
    pub drop_outliers: bool,
    /// Use at most this many boxes (an even subsample) to keep planning fast.
    pub max_boxes: usize,
    /// Seed of the restarts.
    pub seed: u64,
}

impl Default for AnchorPlanOptions {
    fn default() -> Self {
        Self {
            initial: [4.0, 8.0, 16.0],
            restarts: 3,
            drop_outliers: true,
            max_boxes: 4000,
            seed: 0,
        }
    }
}

/// Result of [`plan_anchors`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorPlan {
    /// Planned base extents (integers ≥ 1), sorted per axis; use as `anchor_sizes`.
    pub base_sizes: AnchorSizes,
    /// Mean over boxes of the best IoU with any planned anchor (all centred).
    pub mean_best_iou: f64,
    /// The same objective for the initial extents.
    pub initial_mean_best_iou: f64,
    /// Number of boxes the objective used.
    pub num_boxes: usize,
}

/// Plan the anchors' base extents from ground-truth boxes (nnDetection `find_anchors`).
///
/// `level_strides` are the detection levels' strides (e.g. `[[4,4,4], [8,8,8], …]`); level l
/// scales the base extents by `level_strides[l] / level_strides[0]`. The objective is the mean,
/// over boxes, of the best IoU between the box and any anchor of any level when both are
/// centred at the origin; it is maximised over 9 integers ≥ 1 by coordinate descent with
/// multiplicative and ±1/±2 steps, from `options.initial`, then from `options.restarts`
/// seeded perturbations of the best result (nnDetection uses nevergrad's TwoPointsDE).
pub fn plan_anchors(
    boxes: &[Box3],
    level_strides: &[[usize; 3]],
    options: &AnchorPlanOptions,
) -> Result<AnchorPlan, NnError> {
    if level_strides.is_empty() || level_strides.iter().flatten().any(|&s| s == 0) {
        return Err(NnError::config(
            "level_strides",
            format!("{level_strides:?} must be non-empty and positive"),
        ));
    }
    if options
        .initial
        .iter()
        .any(|v| !(v.is_finite() && *v >= 1.0))
    {
        return Err(NnError::config(
            "initial",
            format!("{:?} must be at least 1", options.initial),
        ));
    }
    let mut extents: Vec<[f64; 3]> = boxes
        .iter()
        .map(|b| [b[3] - b[0], b[4] - b[1], b[5] - b[2]])
        .filter(|e| e.iter().all(|v| v.is_finite() && *v > 0.0))
        .collect();
    if extents.is_empty() {
        return Err(NnError::InvalidInput(
            "anchor planning needs at least one box with positive extent".into(),
        ));
    }
    if options.drop_outliers {
        let mut bounds = [[0.0; 2]; 3];
        for (axis, bound) in bounds.iter_mut().enumerate() {
            let mut v: Vec<f64> = extents.iter().map(|e| e[axis]).collect();
            v.sort_by(f64::total_cmp);
            *bound = [percentile(&v, 0.5), percentile(&v, 99.5)];
        }
        let kept: Vec<[f64; 3]> = extents
            .iter()
            .copied()
            .filter(|e| (0..3).all(|a| e[a] > bounds[a][0] && e[a] < bounds[a][1]))
            .collect();
        if !kept.is_empty() {
            extents = kept;
        }
    }
    if options.max_boxes > 0 && extents.len() > options.max_boxes {
        let step = extents.len() as f64 / options.max_boxes as f64;
        extents = (0..options.max_boxes)
            .map(|i| extents[(i as f64 * step) as usize])
            .collect();
    }
    let first = level_strides[0];
    let relative: Vec<[f64; 3]> = level_strides
        .iter()
        .map(|s| [0, 1, 2].map(|a| s[a] as f64 / first[a] as f64))
        .collect();
    let objective = |sizes: &AnchorSizes| mean_best_iou(&extents, sizes, &relative);

    let initial: AnchorSizes = [options.initial; 3];
    let initial_score = objective(&initial);
    let (mut best, mut best_score) = coordinate_descent(initial, initial_score, &objective);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    for _ in 0..options.restarts {
        let mut start = best;
        for axis in &mut start {
            for v in axis.iter_mut() {
                *v = (*v * rng.random_range(-0.7f64..0.7).exp()).round().max(1.0);
            }
        }
        let start_score = objective(&start);
        let (candidate, score) = coordinate_descent(start, start_score, &objective);
        if score > best_score + 1e-12 {
            best = candidate;
            best_score = score;
        }
    }
    for axis in &mut best {
        axis.sort_by(f64::total_cmp);
    }
    Ok(AnchorPlan {
        base_sizes: best,
        mean_best_iou: best_score,
        initial_mean_best_iou: initial_score,
        num_boxes: extents.len(),
    })
}

/// Mean over boxes of the best centred IoU with any anchor extent of any level.
pub fn mean_best_iou(
    extents: &[[f64; 3]],
    sizes: &AnchorSizes,
    relative_strides: &[[f64; 3]],
) -> f64 {
    let mut anchors = Vec::with_capacity(27 * relative_strides.len());
    for r in relative_strides {
        for &a in &sizes[0] {
            for &b in &sizes[1] {
                for &c in &sizes[2] {
                    let e = [a * r[0], b * r[1], c * r[2]];
                    anchors.push((e, e[0] * e[1] * e[2]));
                }
            }
        }
    }
    let total: f64 = extents
        .iter()
        .map(|g| {
            let vol_g = g[0] * g[1] * g[2];
            anchors
                .iter()
                .map(|(e, vol_e)| {
                    let inter = e[0].min(g[0]) * e[1].min(g[1]) * e[2].min(g[2]);
                    inter / (vol_e + vol_g - inter)
                })
                .fold(0.0, f64::max)
        })
        .sum();
    total / extents.len() as f64
}

fn coordinate_descent(
    mut sizes: AnchorSizes,
    mut score: f64,
    objective: &dyn Fn(&AnchorSizes) -> f64,
) -> (AnchorSizes, f64) {
    const FACTORS: [f64; 8] = [0.5, 0.67, 0.8, 0.9, 1.1, 1.25, 1.5, 2.0];
    const STEPS: [f64; 4] = [-2.0, -1.0, 1.0, 2.0];
    for _sweep in 0..100 {
        let mut improved = false;
        for axis in 0..3 {
            for i in 0..3 {
                let current = sizes[axis][i];
                let mut candidates: Vec<f64> = FACTORS
                    .iter()
                    .map(|f| (current * f).round())
                    .chain(STEPS.iter().map(|s| current + s))
                    .filter(|v| *v >= 1.0 && *v != current)
                    .collect();
                candidates.sort_by(f64::total_cmp);
                candidates.dedup();
                for v in candidates {
                    let mut trial = sizes;
                    trial[axis][i] = v;
                    let s = objective(&trial);
                    if s > score + 1e-12 {
                        sizes = trial;
                        score = s;
                        improved = true;
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    (sizes, score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::boxes::{center, extent};

    #[test]
    fn anchors_are_cell_corner_centred_in_the_documented_order() {
        let sizes: AnchorSizes = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]];
        let grid = AnchorGrid::new([8, 8, 8], &[[4, 4, 4], [2, 2, 2]], &sizes).unwrap();
        assert_eq!(grid.len(), (64 + 8) * 27);
        assert_eq!(grid.levels[0].stride, [2, 2, 2]);
        assert_eq!(grid.levels[1].stride, [4, 4, 4]);
        assert_eq!(
            grid.levels[1].sizes[0],
            [2.0, 4.0, 6.0],
            "level 1 doubles the base extents"
        );
        // First anchor: position (0,0,0), extents (1, 4, 7), centred at the cell corner 0.
        assert_eq!(grid.anchor(0), [-0.5, -2.0, -3.5, 0.5, 2.0, 3.5]);
        // Anchor k = 1 varies the w extent fastest; k = 9 the d extent slowest.
        assert_eq!(extent(&grid.anchor(1)), [1.0, 4.0, 8.0]);
        assert_eq!(extent(&grid.anchor(3)), [1.0, 5.0, 7.0]);
        assert_eq!(extent(&grid.anchor(9)), [2.0, 4.0, 7.0]);
        // Position 1 is (0, 0, 1) → w centre = 1 · stride 2.
        assert_eq!(center(&grid.anchor(27)), [0.0, 0.0, 2.0]);
        // Position 4 is (0, 1, 0) → h centre 2; position 16 is (1, 0, 0) → d centre 2.
        assert_eq!(center(&grid.anchor(4 * 27)), [0.0, 2.0, 0.0]);
        assert_eq!(center(&grid.anchor(16 * 27)), [2.0, 0.0, 0.0]);
        // First anchor of level 1 and its level lookup.
        let first1 = 64 * 27;
        assert_eq!(grid.level_of(first1 - 1), 0);
        assert_eq!(grid.level_of(first1), 1);
        assert_eq!(extent(&grid.anchor(first1)), [2.0, 8.0, 14.0]);
        assert_eq!(grid.boxes().len(), grid.len());
        assert!(AnchorGrid::new([8, 8, 8], &[], &sizes).is_err());
        assert!(AnchorGrid::new([8, 8, 8], &[[4, 4, 4]], &[[0.0, 1.0, 2.0]; 3]).is_err());
    }

    #[test]
    fn planning_improves_the_mean_best_iou_and_recovers_the_box_sizes() {
        // Cubes of edge 6 and 11 plus elongated 6×6×20 boxes, one detection level.
        let mut boxes = Vec::new();
        for i in 0..30 {
            let o = i as f64;
            boxes.push([o, o, o, o + 6.0, o + 6.0, o + 6.0]);
            boxes.push([o, o, o, o + 11.0, o + 11.0, o + 11.0]);
            boxes.push([o, o, o, o + 6.0, o + 6.0, o + 20.0]);
        }
        let options = AnchorPlanOptions {
            drop_outliers: false,
            ..Default::default()
        };
        let plan = plan_anchors(&boxes, &[[4, 4, 4]], &options).unwrap();
        assert!(
            plan.mean_best_iou > plan.initial_mean_best_iou + 0.05,
            "{plan:?}"
        );
        assert!(plan.mean_best_iou > 0.97, "{plan:?}");
        for axis in 0..3 {
            assert!(plan.base_sizes[axis].contains(&6.0), "{plan:?}");
        }
        assert!(
            plan.base_sizes[0].contains(&11.0) && plan.base_sizes[2].contains(&20.0),
            "{plan:?}"
        );
        assert!(
            plan.base_sizes
                .iter()
                .flatten()
                .all(|v| *v >= 1.0 && v.fract() == 0.0)
        );
    }

    #[test]
    fn planning_with_several_levels_uses_the_stride_scaled_copies() {
        // Boxes of edge 5 and 40: with relative strides 1 and 8 one base size of 5 covers both.
        let boxes: Vec<Box3> = (0..20)
            .flat_map(|i| {
                let o = i as f64;
                [
                    [o, o, o, o + 5.0, o + 5.0, o + 5.0],
                    [o, o, o, o + 40.0, o + 40.0, o + 40.0],
                ]
            })
            .collect();
        let options = AnchorPlanOptions {
            drop_outliers: false,
            ..Default::default()
        };
        let plan = plan_anchors(&boxes, &[[2, 2, 2], [16, 16, 16]], &options).unwrap();
        assert!(plan.mean_best_iou > 0.99, "{plan:?}");
        assert!(mean_best_iou(&[[40.0; 3]], &plan.base_sizes, &[[1.0; 3], [8.0; 3]]) > 0.99);
        assert!(plan_anchors(&[], &[[1, 1, 1]], &options).is_err());
        assert!(plan_anchors(&boxes, &[], &options).is_err());
    }

    #[test]
    fn outlier_filter_keeps_boxes_strictly_inside_the_percentiles() {
        let mut boxes: Vec<Box3> = (0..200)
            .map(|i| {
                let f = i as f64;
                [
                    0.0,
                    0.0,
                    0.0,
                    8.0 + 0.01 * f,
                    9.0 + 0.013 * f,
                    7.0 + 0.017 * f,
                ]
            })
            .collect();
        boxes.push([0.0, 0.0, 0.0, 500.0, 500.0, 500.0]);
        let plan = plan_anchors(&boxes, &[[1, 1, 1]], &AnchorPlanOptions::default()).unwrap();
        assert!(
            plan.num_boxes < boxes.len(),
            "the 500-voxel outlier is dropped"
        );
        assert!(
            plan.base_sizes.iter().flatten().all(|v| *v < 100.0),
            "{plan:?}"
        );
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 0.5) - 1.015).abs() < 1e-12);
    }
}
