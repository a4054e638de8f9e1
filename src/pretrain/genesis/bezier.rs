//! The non-linear intensity transform: a cubic Bézier curve applied as a piecewise-linear map.

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::isa::Isa;

/// A cubic Bézier curve through `(0,0)`, `control[0]`, `control[1]`, `(1,1)`, used as an
/// intensity map on [0, 1]: increasing, or decreasing (intensity-inverting) when `decreasing`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BezierCurve {
    /// The inner control points `[(a, b), (c, d)]`, each coordinate in [0, 1].
    pub control: [[f64; 2]; 2],
    /// Use the map `u ↦ y(1 − x⁻¹(u))`, from 1 at u = 0 down to 0 at u = 1.
    pub decreasing: bool,
}

/// Buckets of the [`IntensityMap`] index over [0, 1]: a power of two, so bucket edges are exact
/// in f32; 65,536 leave few buckets with a knot inside (the vector path walks those), and the
/// two tables (512 KB) stay in L2: 16,384 took 2.5 ms more per 160³ patch.
const MAP_BUCKETS: usize = 1 << 16;

impl BezierCurve {
    /// Models Genesis' draw: a, b, c, d uniform in [0, 1), decreasing with probability ½.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let control = [
            [rng.random::<f64>(), rng.random::<f64>()],
            [rng.random::<f64>(), rng.random::<f64>()],
        ];
        BezierCurve {
            control,
            decreasing: rng.random::<f64>() < 0.5,
        }
    }

    /// The curve point at parameter `s` ∈ [0, 1] (`(0,0)` at 0, `(1,1)` at 1).
    pub fn point(&self, s: f64) -> [f64; 2] {
        let r = 1.0 - s;
        let (b1, b2, b3) = (3.0 * r * r * s, 3.0 * r * s * s, s * s * s);
        let [[a, b], [c, d]] = self.control;
        [b1 * a + b2 * c + b3, b1 * b + b2 * d + b3]
    }

    /// The exact map at intensity `u`: `y(s)` (or `y(1 − s)` when decreasing) where `x(s) = u`,
    /// by bisection; `u` outside [0, 1] takes the end values. For checks; [`Self::sample`] is
    /// what transforms images.
    ///
    /// Both coordinates of the curve are monotone in `s` (control values in [0, 1] make the
    /// derivative a positive semi-definite quadratic form), so `x` is invertible and the map is
    /// monotone: increasing, or decreasing — the original's "sort the x samples only" pairs
    /// ascending x with descending y, which is this same map.
    pub fn evaluate(&self, u: f64) -> f64 {
        let s = if u <= 0.0 {
            0.0
        } else if u >= 1.0 {
            1.0
        } else {
            let (mut low, mut high) = (0.0f64, 1.0f64);
            // 2⁻⁵² of the unit interval: f64 resolution.
            for _ in 0..52 {
                let middle = 0.5 * (low + high);
                if self.point(middle)[0] < u {
                    low = middle;
                } else {
                    high = middle;
                }
            }
            0.5 * (low + high)
        };
        self.point(if self.decreasing { 1.0 - s } else { s })[1]
    }

    /// The map through the curve sampled at `samples` evenly spaced parameters, interpolated
    /// linearly between them, as the original does (with 100,000 samples and `np.interp`).
    ///
    /// Parameter samples crowd where the map is steep, so few suffice: over 200 random curves
    /// the largest deviation from the exact map is 6·10⁻⁵ with 1,000 samples (5·10⁻⁹ with
    /// 100,000), far below any intensity difference that matters for a random corruption,
    /// while 1,000 knots stay in L1 cache.
    pub fn sample(&self, samples: usize) -> IntensityMap {
        let samples = samples.max(2);
        let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = (0..samples)
            .map(|i| {
                let p = self.point(i as f64 / (samples - 1) as f64);
                (p[0], p[1])
            })
            .unzip();
        // Monotone already up to rounding, which sorting repairs.
        xs.sort_by(f64::total_cmp);
        ys.sort_by(f64::total_cmp);
        if self.decreasing {
            ys.reverse();
        }
        IntensityMap::new(
            xs.into_iter().map(|v| v as f32).collect(),
            ys.into_iter().map(|v| v as f32).collect(),
        )
    }
}

/// A piecewise-linear map through sorted knots, as numpy's `interp`: inputs below the first
/// knot or above the last take the end values.
///
/// A bucket index over [0, 1] (the number of knots ≤ each bucket edge) narrows every lookup to
/// the knots of one bucket, usually none or one, so a lookup costs about the same whatever the
/// knot count; slopes are precomputed.
#[derive(Clone, Debug)]
pub struct IntensityMap {
    x: Vec<f32>,
    y: Vec<f32>,
    /// `slope[j]` of the segment from knot `j` to `j + 1` (0 where two knots coincide).
    slope: Vec<f32>,
    /// `bucket_counts[b]` = number of knots ≤ `b / MAP_BUCKETS`, for b = 0 ..= MAP_BUCKETS.
    bucket_counts: Vec<u32>,
    /// Per bucket, the segment `j` that covers all of it, or [`MIXED`] when a knot lies inside
    /// the bucket: most lookups then cost one index read and one interpolation, no search.
    bucket_segment: Vec<u32>,
}

/// A bucket with a knot inside: its lookups search the bucket's knots.
const MIXED: u32 = u32::MAX;

impl IntensityMap {
    /// A map through knots `x` (ascending, starting at 0) and values `y` (same length ≥ 2).
    fn new(x: Vec<f32>, y: Vec<f32>) -> Self {
        debug_assert!(x.len() == y.len() && x.len() >= 2);
        let slope = x
            .windows(2)
            .zip(y.windows(2))
            .map(|(x, y)| {
                if x[1] > x[0] {
                    (y[1] - y[0]) / (x[1] - x[0])
                } else {
                    0.0
                }
            })
            .collect();
        let mut bucket_counts = Vec::with_capacity(MAP_BUCKETS + 1);
        let mut k = 0;
        for b in 0..=MAP_BUCKETS {
            let edge = b as f32 / MAP_BUCKETS as f32;
            while k < x.len() && x[k] <= edge {
                k += 1;
            }
            bucket_counts.push(k as u32);
        }
        // A bucket [b/B, (b+1)/B) without a knot in (b/B, (b+1)/B] lies on the segment that
        // starts at the last knot ≤ b/B. Buckets below the first knot or at or above the last
        // are handled before the lookup; they are marked mixed so that nothing reads past the
        // ends.
        let bucket_segment = bucket_counts
            .windows(2)
            .map(|pair| {
                let (low, high) = (pair[0] as usize, pair[1] as usize);
                if low == high && low >= 1 && low < x.len() {
                    (low - 1) as u32
                } else {
                    MIXED
                }
            })
            .collect();
        IntensityMap {
            x,
            y,
            slope,
            bucket_counts,
            bucket_segment,
        }
    }

    /// The mapped value of `u`.
    #[inline]
    pub fn apply(&self, u: f32) -> f32 {
        let (x, y) = (&self.x, &self.y);
        let n = x.len();
        if u.is_nan() || u <= x[0] {
            // Also NaN, which the callers have excluded.
            return y[0];
        }
        if u >= x[n - 1] {
            return y[n - 1];
        }
        // Knots ≤ u: those ≤ the bucket's lower edge, plus the ones of this bucket ≤ u.
        let count = if u < 1.0 {
            // 0 < u < 1 here, so the product is in (0, MAP_BUCKETS): a plain truncation.
            let b = (u * MAP_BUCKETS as f32) as u32 as usize;
            let segment = self.bucket_segment[b];
            if segment != MIXED {
                let j = segment as usize;
                return y[j] + (u - x[j]) * self.slope[j];
            }
            let (low, high) = (
                self.bucket_counts[b] as usize,
                self.bucket_counts[b + 1] as usize,
            );
            low + x[low..high].partition_point(|&k| k <= u)
        } else {
            x.partition_point(|&k| k <= u)
        };
        let j = count - 1;
        y[j] + (u - x[j]) * self.slope[j]
    }

    /// Map every value of `values` in place (in parallel), 16 or 8 at a time where the CPU has
    /// AVX-512 or AVX2: the same values as [`Self::apply`], bit for bit.
    pub fn apply_in_place(&self, values: &mut [f32]) {
        let isa = Isa::best();
        values.par_chunks_mut(1 << 15).for_each(|chunk| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::best` names only instruction sets this CPU has.
            Some(Isa::Avx512) => unsafe { vector::apply_avx512(self, chunk) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Some(Isa::Avx2) => unsafe { vector::apply_avx2(self, chunk) },
            _ => chunk.iter_mut().for_each(|v| *v = self.apply(*v)),
        });
    }
}

/// The bucket lookup of [`IntensityMap::apply`] on whole vectors: the segment index, knot,
/// value and slope come by gathers, so a lookup costs a few instructions per 16 (8) voxels
/// instead of a dependent chain of loads and branches per voxel (24 ms → see the module's
/// benchmark note). Lanes the vector path does not cover — a bucket with a knot inside, NaN,
/// inputs at or above 1 — go through the scalar [`IntensityMap::apply`], so the result is
/// the scalar one everywhere: the same operations in the same order, and no FMA contraction.
#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    use super::{IntensityMap, MAP_BUCKETS, MIXED};

    /// Knots a lane walks past in a bucket with knots inside before it falls back to the
    /// scalar path (a steep stretch of the map can crowd hundreds of knots into one bucket).
    const WALK_STEPS: usize = 4;

    /// 16 voxels at a time.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn apply_avx512(map: &IntensityMap, values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(16);
        // SAFETY: loads and stores stay inside `chunk`, which holds a whole vector; the
        // segment gather reads bucket `⌊u · MAP_BUCKETS⌋ < MAP_BUCKETS` only in lanes with
        // 0 < u < 1, and the knot gathers read segment j < n − 1 only in lanes whose bucket
        // named one (masked-off lanes read nothing).
        unsafe {
            let n = map.x.len();
            let (first, last) = (_mm512_set1_ps(map.x[0]), _mm512_set1_ps(map.x[n - 1]));
            let (first_value, last_value) =
                (_mm512_set1_ps(map.y[0]), _mm512_set1_ps(map.y[n - 1]));
            let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
            let buckets = _mm512_set1_ps(MAP_BUCKETS as f32);
            let mixed = _mm512_set1_epi32(MIXED as i32);
            for chunk in &mut chunks {
                let u = _mm512_loadu_ps(chunk.as_ptr());
                // As the scalar path: NaN and u ≤ first take the first value (unordered: true).
                let below = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(u, first);
                let above = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(u, last);
                let inside = !below
                    & !above
                    & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(u, one)
                    & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(u, zero);
                let bucket = _mm512_cvttps_epi32(_mm512_mul_ps(u, buckets));
                let segment = _mm512_mask_i32gather_epi32::<4>(
                    mixed,
                    inside,
                    bucket,
                    map.bucket_segment.as_ptr().cast(),
                );
                let mut direct = inside & _mm512_cmpneq_epi32_mask(segment, mixed);
                let mut segment = segment;
                // Buckets with a knot inside: walk from the segment at the bucket's lower edge
                // up to the one holding u, a few knots at most, then leave the rest to the
                // scalar path. `j + 1 ≤ n − 1` always holds, as u < x[n − 1].
                let walking = inside & !direct;
                if walking != 0 {
                    let counts = _mm512_mask_i32gather_epi32::<4>(
                        _mm512_setzero_si512(),
                        walking,
                        bucket,
                        map.bucket_counts.as_ptr().cast(),
                    );
                    let walking = walking & _mm512_cmpgt_epi32_mask(counts, _mm512_setzero_si512());
                    let one_step = _mm512_set1_epi32(1);
                    let mut j = _mm512_sub_epi32(counts, one_step);
                    let mut active = walking;
                    for _ in 0..WALK_STEPS {
                        let next = _mm512_add_epi32(j, one_step);
                        let knot = _mm512_mask_i32gather_ps::<4>(
                            zero,
                            active,
                            next,
                            map.x.as_ptr().cast(),
                        );
                        active &= _mm512_cmp_ps_mask::<_CMP_LE_OQ>(knot, u);
                        j = _mm512_mask_mov_epi32(j, active, next);
                        if active == 0 {
                            break;
                        }
                    }
                    let found = walking & !active;
                    segment = _mm512_mask_mov_epi32(segment, found, j);
                    direct |= found;
                }
                let x = _mm512_mask_i32gather_ps::<4>(zero, direct, segment, map.x.as_ptr().cast());
                let y = _mm512_mask_i32gather_ps::<4>(zero, direct, segment, map.y.as_ptr().cast());
                let slope =
                    _mm512_mask_i32gather_ps::<4>(zero, direct, segment, map.slope.as_ptr().cast());
                let mut result = _mm512_add_ps(y, _mm512_mul_ps(_mm512_sub_ps(u, x), slope));
                result = _mm512_mask_blend_ps(below, result, first_value);
                result = _mm512_mask_blend_ps(above, result, last_value);
                let rest = !(direct | below | above);
                _mm512_storeu_ps(chunk.as_mut_ptr(), result);
                if rest != 0 {
                    let mut inputs = [0.0f32; 16];
                    _mm512_storeu_ps(inputs.as_mut_ptr(), u);
                    for lane in (0..16).filter(|lane| rest & (1 << lane) != 0) {
                        chunk[lane] = map.apply(inputs[lane]);
                    }
                }
            }
        }
        for v in chunks.into_remainder() {
            *v = map.apply(*v);
        }
    }

    /// 8 voxels at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn apply_avx2(map: &IntensityMap, values: &mut [f32]) {
        let mut chunks = values.chunks_exact_mut(8);
        // SAFETY: loads and stores stay inside `chunk`, which holds a whole vector; the
        // segment gather reads bucket `⌊u · MAP_BUCKETS⌋ < MAP_BUCKETS` only in lanes with
        // 0 < u < 1, and the knot gathers read segment j < n − 1 only in lanes whose bucket
        // named one (masked-off lanes read nothing).
        unsafe {
            let n = map.x.len();
            let (first, last) = (_mm256_set1_ps(map.x[0]), _mm256_set1_ps(map.x[n - 1]));
            let (first_value, last_value) =
                (_mm256_set1_ps(map.y[0]), _mm256_set1_ps(map.y[n - 1]));
            let (zero, one) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
            let buckets = _mm256_set1_ps(MAP_BUCKETS as f32);
            let mixed = _mm256_set1_epi32(MIXED as i32);
            for chunk in &mut chunks {
                let u = _mm256_loadu_ps(chunk.as_ptr());
                let below = _mm256_cmp_ps::<_CMP_NGT_UQ>(u, first);
                let above = _mm256_cmp_ps::<_CMP_GE_OQ>(u, last);
                let inside = _mm256_andnot_ps(
                    _mm256_or_ps(below, above),
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_LT_OQ>(u, one),
                        _mm256_cmp_ps::<_CMP_GT_OQ>(u, zero),
                    ),
                );
                let bucket = _mm256_cvttps_epi32(_mm256_mul_ps(u, buckets));
                let segment = _mm256_mask_i32gather_epi32::<4>(
                    mixed,
                    map.bucket_segment.as_ptr().cast(),
                    bucket,
                    _mm256_castps_si256(inside),
                );
                let mut direct = _mm256_andnot_si256(
                    _mm256_cmpeq_epi32(segment, mixed),
                    _mm256_castps_si256(inside),
                );
                let mut segment = segment;
                // As on AVX-512: walk the knots of buckets with a knot inside.
                let walking = _mm256_andnot_si256(direct, _mm256_castps_si256(inside));
                if _mm256_testz_si256(walking, walking) == 0 {
                    let zeros = _mm256_setzero_si256();
                    let counts = _mm256_mask_i32gather_epi32::<4>(
                        zeros,
                        map.bucket_counts.as_ptr().cast(),
                        bucket,
                        walking,
                    );
                    let walking = _mm256_and_si256(walking, _mm256_cmpgt_epi32(counts, zeros));
                    let one_step = _mm256_set1_epi32(1);
                    let mut j = _mm256_sub_epi32(counts, one_step);
                    let mut active = walking;
                    for _ in 0..WALK_STEPS {
                        let next = _mm256_add_epi32(j, one_step);
                        let knot = _mm256_mask_i32gather_ps::<4>(
                            zero,
                            map.x.as_ptr(),
                            next,
                            _mm256_castsi256_ps(active),
                        );
                        active = _mm256_and_si256(
                            active,
                            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(knot, u)),
                        );
                        j = _mm256_blendv_epi8(j, next, active);
                        if _mm256_testz_si256(active, active) != 0 {
                            break;
                        }
                    }
                    let found = _mm256_andnot_si256(active, walking);
                    segment = _mm256_blendv_epi8(segment, j, found);
                    direct = _mm256_or_si256(direct, found);
                }
                let direct_mask = _mm256_castsi256_ps(direct);
                let x = _mm256_mask_i32gather_ps::<4>(zero, map.x.as_ptr(), segment, direct_mask);
                let y = _mm256_mask_i32gather_ps::<4>(zero, map.y.as_ptr(), segment, direct_mask);
                let slope =
                    _mm256_mask_i32gather_ps::<4>(zero, map.slope.as_ptr(), segment, direct_mask);
                let mut result = _mm256_add_ps(y, _mm256_mul_ps(_mm256_sub_ps(u, x), slope));
                result = _mm256_blendv_ps(result, first_value, below);
                result = _mm256_blendv_ps(result, last_value, above);
                let covered = _mm256_or_ps(direct_mask, _mm256_or_ps(below, above));
                let rest = !_mm256_movemask_ps(covered) & 0xff;
                _mm256_storeu_ps(chunk.as_mut_ptr(), result);
                if rest != 0 {
                    let mut inputs = [0.0f32; 8];
                    _mm256_storeu_ps(inputs.as_mut_ptr(), u);
                    for lane in (0..8).filter(|lane| rest & (1 << lane) != 0) {
                        chunk[lane] = map.apply(inputs[lane]);
                    }
                }
            }
        }
        for v in chunks.into_remainder() {
            *v = map.apply(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn curves(count: u64) -> Vec<BezierCurve> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        (0..count).map(|_| BezierCurve::random(&mut rng)).collect()
    }

    #[test]
    fn the_map_is_monotone_with_fixed_end_points() {
        let all = curves(60);
        assert!(all.iter().any(|c| c.decreasing) && all.iter().any(|c| !c.decreasing));
        for curve in all {
            let map = curve.sample(1000);
            let (start, end) = if curve.decreasing {
                (1.0, 0.0)
            } else {
                (0.0, 1.0)
            };
            assert_eq!(map.apply(0.0), start, "{curve:?}");
            assert_eq!(map.apply(1.0), end, "{curve:?}");
            // Outside [0, 1] the end values hold.
            assert_eq!(map.apply(-0.7), start);
            assert_eq!(map.apply(3.0), end);
            let values: Vec<f32> = (0..=5000).map(|i| map.apply(i as f32 / 5000.0)).collect();
            for pair in values.windows(2) {
                if curve.decreasing {
                    assert!(pair[1] <= pair[0], "{curve:?} rises: {pair:?}");
                } else {
                    assert!(pair[1] >= pair[0], "{curve:?} falls: {pair:?}");
                }
            }
        }
    }

    #[test]
    fn the_exact_map_follows_the_curve() {
        for curve in curves(30) {
            for i in 0..=200 {
                let s = i as f64 / 200.0;
                let [x, y] = curve.point(s);
                // Increasing: x(s) ↦ y(s); decreasing: x(s) ↦ y(1 − s).
                let expected = if curve.decreasing {
                    curve.point(1.0 - s)[1]
                } else {
                    y
                };
                let got = curve.evaluate(x);
                assert!(
                    (got - expected).abs() < 1e-6,
                    "{curve:?} at s={s}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn a_thousand_samples_stay_close_to_the_exact_map() {
        for curve in curves(50) {
            let map = curve.sample(1000);
            for i in 0..=4000 {
                let u = i as f64 / 4000.0;
                let error = (map.apply(u as f32) as f64 - curve.evaluate(u)).abs();
                assert!(error < 1e-4, "{curve:?} at u={u}: off by {error}");
            }
        }
    }

    /// numpy's `interp`, by binary search over every knot.
    fn plain_interp(x: &[f32], y: &[f32], u: f32) -> f32 {
        let n = x.len();
        if u.is_nan() || u <= x[0] {
            return y[0];
        }
        if u >= x[n - 1] {
            return y[n - 1];
        }
        let j = x.partition_point(|&k| k <= u) - 1;
        y[j] + (u - x[j]) * ((y[j + 1] - y[j]) / (x[j + 1] - x[j]))
    }

    #[test]
    fn the_bucket_index_equals_plain_interpolation() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for curve in curves(10) {
            for samples in [2, 7, 1000, 100_000] {
                let map = curve.sample(samples);
                for k in 0..samples.min(500) {
                    // Exactly on knots, too.
                    let u = map.x[k * map.x.len() / samples.min(500)];
                    assert_eq!(map.apply(u), plain_interp(&map.x, &map.y, u));
                }
                for _ in 0..5000 {
                    let u: f32 = rng.random_range(-0.1..1.1);
                    assert_eq!(map.apply(u), plain_interp(&map.x, &map.y, u), "u = {u}");
                }
            }
        }
    }

    #[test]
    fn apply_in_place_maps_every_value() {
        let curve = curves(1)[0];
        let map = curve.sample(1000);
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 1001) as f32 / 1000.0).collect();
        let expected: Vec<f32> = values.iter().map(|&u| map.apply(u)).collect();
        map.apply_in_place(&mut values);
        assert_eq!(values, expected);
    }

    #[test]
    fn the_vector_lookups_equal_the_scalar_one_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for curve in curves(8) {
            for samples in [2, 7, 1000, 100_000] {
                let map = curve.sample(samples);
                // Random values in and around [0, 1], knots, the ends, NaN, ±∞, and a length
                // that leaves a scalar tail.
                let mut values: Vec<f32> = (0..4099).map(|_| rng.random_range(-0.1..1.1)).collect();
                values.extend(map.x.iter().step_by(samples / 200 + 1));
                values.extend([0.0, 1.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
                values.extend([1.0 - f32::EPSILON, f32::MIN_POSITIVE, 0.5]);
                let expected: Vec<u32> = values.iter().map(|&u| map.apply(u).to_bits()).collect();
                #[cfg(target_arch = "x86_64")]
                for isa in Isa::available() {
                    let mut got = values.clone();
                    // SAFETY: `available` lists only instruction sets this CPU has.
                    unsafe {
                        match isa {
                            Isa::Avx512 => vector::apply_avx512(&map, &mut got),
                            Isa::Avx2 => vector::apply_avx2(&map, &mut got),
                        }
                    }
                    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, expected, "{isa:?}, {samples} samples, {curve:?}");
                }
            }
        }
    }
}
