//! Hungarian matching of predicted queries to ground-truth boxes (DETR's set prediction), on
//! the host in f64.
//!
//! The assignment solver is our own (the shortest-augmenting-path Hungarian algorithm with
//! potentials, O(n²·m)). Why not a crate: `pathfinding::kuhn_munkres`, the maintained Rust
//! implementation, needs weights that are `Ord` (integers or a wrapper), maximises, and asks
//! for rows ≤ columns; feeding it our f64 costs means scaling and rounding them to integers,
//! which changes the optimum whenever costs differ by less than the rounding step (focal class
//! costs of near-certain queries do), and the remaining crates are unmaintained. The solver
//! is 60 lines and tested against brute force on every problem shape up to 7 × 7.

use serde::{Deserialize, Serialize};

use super::losses::{normalized_to_corners, patch_scale};
use crate::nn::NnError;
use crate::volume::boxes::giou;

/// Weights of the matching cost terms (Deformable DETR: class 2, L1 5, GIoU 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatcherConfig {
    /// Weight of the focal-style classification cost.
    pub class_cost: f64,
    /// Weight of the L1 distance of normalised `(cz, cy, cx, d, h, w)` boxes.
    pub l1_cost: f64,
    /// Weight of the negative generalised IoU (of voxel corner boxes).
    pub giou_cost: f64,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            class_cost: 2.0,
            l1_cost: 5.0,
            giou_cost: 2.0,
        }
    }
}

/// The minimum-cost assignment of rows to columns of a `rows × cols` cost matrix (row-major):
/// `min(rows, cols)` pairs `(row, col)`, sorted by row. Costs must be finite.
pub fn linear_sum_assignment(
    costs: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, NnError> {
    if costs.len() != rows * cols {
        return Err(NnError::InvalidInput(format!(
            "cost matrix has {} entries, expected {rows} × {cols}",
            costs.len()
        )));
    }
    if let Some(bad) = costs.iter().find(|c| !c.is_finite()) {
        return Err(NnError::InvalidInput(format!(
            "matching cost {bad} is not finite (a NaN in the predictions?)"
        )));
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    if rows > cols {
        let transposed: Vec<f64> = (0..cols * rows)
            .map(|k| costs[(k % rows) * cols + k / rows])
            .collect();
        let mut pairs: Vec<(usize, usize)> = solve(&transposed, cols, rows)
            .into_iter()
            .map(|(c, r)| (r, c))
            .collect();
        pairs.sort_unstable();
        return Ok(pairs);
    }
    Ok(solve(costs, rows, cols))
}

/// Hungarian algorithm for `n ≤ m` (1-based potentials `u`, `v`; `owner[j]` = row of column j).
fn solve(a: &[f64], n: usize, m: usize) -> Vec<(usize, usize)> {
    let cost = |i: usize, j: usize| a[(i - 1) * m + (j - 1)];
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut owner = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        owner[0] = i;
        let mut j0 = 0usize;
        let mut min_slack = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = owner[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let reduced = cost(i0, j) - u[i0] - v[j];
                    if reduced < min_slack[j] {
                        min_slack[j] = reduced;
                        way[j] = j0;
                    }
                    if min_slack[j] < delta {
                        delta = min_slack[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_slack[j] -= delta;
                }
            }
            j0 = j1;
            if owner[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            owner[j0] = owner[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = (1..=m)
        .filter(|&j| owner[j] != 0)
        .map(|j| (owner[j] - 1, j - 1))
        .collect();
    pairs.sort_unstable();
    pairs
}

/// The matching cost of every query against every target of one image, `[Q, T]` row-major.
///
/// - logits: `[Q, K]` class logits; boxes: `[Q, 6]` normalised `(cz, cy, cx, d, h, w)`
/// - targets: normalised boxes and classes; `patch`: the patch size (GIoU on voxel corners)
pub fn match_costs(
    logits: &[f32],
    boxes: &[f32],
    num_classes: usize,
    targets: &[[f64; 6]],
    classes: &[usize],
    patch: [usize; 3],
    config: &MatcherConfig,
    focal: (f64, f64),
) -> Vec<f64> {
    let (alpha, gamma) = focal;
    let q = boxes.len() / 6;
    let scale = patch_scale(patch);
    let target_corners: Vec<_> = targets
        .iter()
        .map(|t| normalized_to_corners(t, scale))
        .collect();
    let mut costs = Vec::with_capacity(q * targets.len());
    for i in 0..q {
        let pred: [f64; 6] = std::array::from_fn(|k| boxes[i * 6 + k] as f64);
        let pred_corners = normalized_to_corners(&pred, scale);
        for (t, target) in targets.iter().enumerate() {
            let p = 1.0 / (1.0 + (-(logits[i * num_classes + classes[t]] as f64)).exp());
            let positive = alpha * (1.0 - p).powf(gamma) * -(p + 1e-8).ln();
            let negative = (1.0 - alpha) * p.powf(gamma) * -(1.0 - p + 1e-8).ln();
            let l1: f64 = (0..6).map(|k| (pred[k] - target[k]).abs()).sum();
            let g = giou(&pred_corners, &target_corners[t]);
            costs.push(
                config.class_cost * (positive - negative) + config.l1_cost * l1
                    - config.giou_cost * g,
            );
        }
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn brute_force(costs: &[f64], rows: usize, cols: usize) -> f64 {
        // Assign every element of the smaller side to a distinct element of the larger one.
        let (small, large, at): (usize, usize, Box<dyn Fn(usize, usize) -> f64>) = if rows <= cols {
            (rows, cols, Box::new(|s, l| costs[s * cols + l]))
        } else {
            (cols, rows, Box::new(|s, l| costs[l * cols + s]))
        };
        fn go(
            s: usize,
            small: usize,
            large: usize,
            used: &mut Vec<bool>,
            at: &dyn Fn(usize, usize) -> f64,
        ) -> f64 {
            if s == small {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for l in 0..large {
                if !used[l] {
                    used[l] = true;
                    best = best.min(at(s, l) + go(s + 1, small, large, used, at));
                    used[l] = false;
                }
            }
            best
        }
        go(0, small, large, &mut vec![false; large], &*at)
    }

    #[test]
    fn assignments_are_optimal_on_random_problems_up_to_7_by_7() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for rows in 1..=7 {
            for cols in 1..=7 {
                for trial in 0..4 {
                    let costs: Vec<f64> = (0..rows * cols)
                        .map(|_| {
                            // Some problems with many ties (integer costs), some continuous.
                            if trial % 2 == 0 {
                                rng.random_range(0..4) as f64
                            } else {
                                rng.random_range(-3.0..5.0)
                            }
                        })
                        .collect();
                    let pairs = linear_sum_assignment(&costs, rows, cols).unwrap();
                    assert_eq!(pairs.len(), rows.min(cols));
                    let mut seen_r = vec![false; rows];
                    let mut seen_c = vec![false; cols];
                    for &(r, c) in &pairs {
                        assert!(!seen_r[r] && !seen_c[c], "{rows}×{cols}: {pairs:?}");
                        seen_r[r] = true;
                        seen_c[c] = true;
                    }
                    let total: f64 = pairs.iter().map(|&(r, c)| costs[r * cols + c]).sum();
                    let best = brute_force(&costs, rows, cols);
                    assert!(
                        (total - best).abs() < 1e-9,
                        "{rows}×{cols} trial {trial}: {total} vs brute force {best}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_and_invalid_problems() {
        assert!(linear_sum_assignment(&[], 0, 5).unwrap().is_empty());
        assert!(linear_sum_assignment(&[], 3, 0).unwrap().is_empty());
        let err = linear_sum_assignment(&[1.0, f64::NAN], 1, 2).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(linear_sum_assignment(&[1.0], 2, 2).is_err());
    }

    #[test]
    fn costs_prefer_the_query_on_the_target() {
        // Two queries, one on the target box with a confident class, one elsewhere.
        let target = [0.5, 0.5, 0.5, 0.2, 0.2, 0.2];
        let boxes: Vec<f32> = [target, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let logits = vec![3.0f32, -3.0];
        let costs = match_costs(
            &logits,
            &boxes,
            1,
            &[target],
            &[0],
            [32, 32, 32],
            &MatcherConfig::default(),
            (0.25, 2.0),
        );
        assert!(costs[0] < costs[1], "{costs:?}");
        // On the target: L1 0 and GIoU 1, so the cost is the class term minus 2.
        let p = 1.0 / (1.0 + (-3.0f64).exp());
        let class =
            0.25 * (1.0 - p).powi(2) * -(p + 1e-8).ln() - 0.75 * p.powi(2) * -(1.0 - p + 1e-8).ln();
        assert!(
            (costs[0] - (2.0 * class - 2.0)).abs() < 1e-6,
            "{}",
            costs[0]
        );
        let pairs = linear_sum_assignment(&costs, 2, 1).unwrap();
        assert_eq!(pairs, vec![(0, 0)]);
    }
}
