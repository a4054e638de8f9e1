//! numpy-exact numeric helpers: `linspace`, `union1d`, `mean` (pairwise summation), `interp`,
//! sklearn's `roc_curve` point thinning and `percentile` (linear).
//!
//! These reproduce numpy's floating-point operation order so that detlab's numbers agree with
//! nnDetection's to the last bit wherever the arithmetic is the same.

/// `np.linspace(start, stop, num)` with `endpoint=True`: `i * step + start`, the last value
/// forced to `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            if step == 0.0 {
                (i as f64 / div) * delta + start
            } else {
                i as f64 * step + start
            }
        })
        .collect();
    out[num - 1] = stop;
    out
}

/// The IoU thresholds of an nnDetection `iou_range` `(start, stop, step)`:
/// `np.linspace(start, stop, round((stop - start) / step) + 1)`, e.g. 0.1, 0.15000000000000002, … 0.5.
pub fn iou_range_thresholds(range: [f64; 3]) -> Vec<f64> {
    let num = ((range[1] - range[0]) / range[2]).round_ties_even() as usize + 1;
    linspace(range[0], range[1], num)
}

/// The 101-point COCO recall grid `np.linspace(0, 1, 101)`.
pub fn recall_grid() -> Vec<f64> {
    linspace(0.0, 1.0, 101)
}

/// `np.union1d`: sorted unique values (compared as numbers).
pub fn union_sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup_by(|a, b| a == b);
    v
}

/// numpy's `add.reduce` of a contiguous float64 array: the iterator hands out chunks of 8192
/// elements (its buffer size), each summed pairwise (8 accumulators, blocks of 128) and added
/// in turn to an accumulator starting at 0.0.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let mut res = 0.0;
    for chunk in a.chunks(8192) {
        res += pairwise_inner(chunk);
    }
    res
}

fn pairwise_inner(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_inner(&a[..n2]) + pairwise_inner(&a[n2..])
    }
}

/// `np.mean` of a contiguous float64 array (pairwise sum divided by the count); NaN when empty.
pub fn mean(a: &[f64]) -> f64 {
    pairwise_sum(a) / a.len() as f64
}

/// `np.interp(x, xp, fp)` for non-decreasing `xp`: linear interpolation; left of the first point
/// the first value, right of the last point the last value; on a run of equal `xp` the last
/// point of the run is used (numpy's search for the last `xp[j] <= x`).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x.is_nan() {
        return x;
    }
    if n == 1 {
        return fp[0];
    }
    if x < xp[0] {
        return fp[0];
    }
    if x > xp[n - 1] {
        return fp[n - 1];
    }
    // Last j with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut res = slope * (x - xp[j]) + fp[j];
    if res.is_nan() {
        res = slope * (x - xp[j + 1]) + fp[j + 1];
        if res.is_nan() && fp[j] == fp[j + 1] {
            res = fp[j];
        }
    }
    res
}

/// sklearn's `roc_curve(drop_intermediate=True)` thinning on cumulative counts: keep the first
/// and last point and every point where the false- or true-positive count bends. Returns the
/// kept indices.
pub fn roc_keep_indices(fp: &[u64], tp: &[u64]) -> Vec<usize> {
    let n = fp.len();
    if n <= 2 {
        return (0..n).collect();
    }
    let mut keep = Vec::with_capacity(n);
    keep.push(0);
    for i in 1..n - 1 {
        let d2f = fp[i + 1] as i128 - 2 * fp[i] as i128 + fp[i - 1] as i128;
        let d2t = tp[i + 1] as i128 - 2 * tp[i] as i128 + tp[i - 1] as i128;
        if d2f != 0 || d2t != 0 {
            keep.push(i);
        }
    }
    keep.push(n - 1);
    keep
}

/// `np.percentile(values, q)` (numpy linear); one implementation for detlab.
pub use crate::util::percentile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_range_matches_numpy_linspace() {
        let t = iou_range_thresholds([0.1, 0.5, 0.05]);
        assert_eq!(t.len(), 9);
        assert_eq!(t[1], 0.15000000000000002);
        assert_eq!(t[4], 0.30000000000000004);
        assert_eq!(t[7], 0.45000000000000007);
        assert_eq!(t[8], 0.5);
        let g = recall_grid();
        assert_eq!(g.len(), 101);
        assert_eq!(g[57], 0.5700000000000001);
        assert_eq!(g[70], 0.7000000000000001);
        assert_eq!(g[7], 0.07);
        assert_eq!(g[100], 1.0);
    }

    #[test]
    fn union_sorted_deduplicates_by_value() {
        assert_eq!(union_sorted(&[0.5, 0.1, 0.5, 0.3]), vec![0.1, 0.3, 0.5]);
    }

    #[test]
    fn pairwise_sum_uses_numpy_blocking() {
        // 1e16 + 1 + 1 … loses the ones when summed left to right but not pairwise.
        let mut v = vec![1.0; 16];
        v[0] = 1e16;
        let sequential: f64 = v.iter().sum();
        assert_eq!(sequential, 1e16);
        // Accumulator 0 holds 1e16 + 1 (lost), the other seven hold 2.0 each → + 14.
        assert_eq!(pairwise_sum(&v), 1e16 + 14.0);
        let long: Vec<f64> = (0..1000).map(|i| i as f64 * 0.1).collect();
        assert!((pairwise_sum(&long) - 49950.0).abs() < 1e-9);
        assert!(mean(&[]).is_nan());
    }

    #[test]
    fn interp_follows_numpy_semantics() {
        let xp = [0.0, 1.0, 1.0, 2.0];
        let fp = [0.0, 0.2, 0.6, 1.0];
        assert_eq!(interp(-1.0, &xp, &fp), 0.0);
        assert_eq!(interp(0.5, &xp, &fp), 0.1);
        // On a vertical step the upper end is read.
        assert_eq!(interp(1.0, &xp, &fp), 0.6);
        assert!((interp(1.5, &xp, &fp) - 0.8).abs() < 1e-15);
        assert_eq!(interp(9.0, &xp, &fp), 1.0);
        assert_eq!(interp(3.0, &[2.0], &[0.4]), 0.4);
    }

    #[test]
    fn roc_thinning_keeps_corners_only() {
        // A straight run of false positives then a true positive.
        let fp = [1, 2, 3, 3, 3];
        let tp = [0, 0, 0, 1, 2];
        assert_eq!(roc_keep_indices(&fp, &tp), vec![0, 2, 4]);
        assert_eq!(roc_keep_indices(&[1, 2], &[0, 0]), vec![0, 1]);
    }

    #[test]
    fn percentile_is_linear() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 2.5) - 1.075).abs() < 1e-15);
    }
}
