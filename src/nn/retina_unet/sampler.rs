//! Hard-negative mining over a batch (nnDetection `HardNegativeSamplerBatched`).
//!
//! Budget = `batch_size_per_image × B` anchors. Positives: `min(#pos, ⌊budget · f⌋)` drawn
//! uniformly. Negatives: `n_neg = min(#neg, max(⌊max(1, n_pos) · |1 − 1/f|⌋, min_negatives))`
//! drawn uniformly from the pool of the `⌊n_neg · pool_size⌋` negatives with the highest
//! foreground score. With B = 4 and the defaults: up to 42 positives and 85 negatives drawn
//! from the 1,700 hardest.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::nn::NnError;

/// Settings of the hard-negative sampler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Anchors per image in the budget (nnDetection: 32).
    pub batch_size_per_image: usize,
    /// Target fraction of positives f (nnDetection: 0.33).
    pub positive_fraction: f64,
    /// Pool of hardest negatives, as a multiple of the negatives drawn (nnDetection: 20).
    pub pool_size: f64,
    /// Lower bound on the number of negatives (nnDetection: 1).
    pub min_negatives: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            batch_size_per_image: 32,
            positive_fraction: 0.33,
            pool_size: 20.0,
            min_negatives: 1,
        }
    }
}

/// The anchors a loss is computed on (flat indices over the batch: `image · A + anchor`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampledAnchors {
    /// Sampled positive anchors.
    pub positives: Vec<usize>,
    /// Sampled (hard) negative anchors.
    pub negatives: Vec<usize>,
}

impl SamplerConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), NnError> {
        if !(self.positive_fraction > 0.0 && self.positive_fraction < 1.0) {
            return Err(NnError::config(
                "sampler.positive_fraction",
                "must lie in (0, 1)",
            ));
        }
        if self.pool_size.is_nan() || self.pool_size < 1.0 {
            return Err(NnError::config("sampler.pool_size", "must be at least 1"));
        }
        if self.batch_size_per_image == 0 {
            return Err(NnError::config(
                "sampler.batch_size_per_image",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Number of positives and negatives drawn for `num_positive` / `num_negative` candidates.
    pub fn counts(
        &self,
        batch_size: usize,
        num_positive: usize,
        num_negative: usize,
    ) -> (usize, usize) {
        let budget = self.batch_size_per_image * batch_size;
        let num_pos = num_positive.min((budget as f64 * self.positive_fraction) as usize);
        let ratio = (1.0 - 1.0 / self.positive_fraction).abs();
        let wanted = (num_pos.max(1) as f64 * ratio) as usize;
        (num_pos, num_negative.min(wanted.max(self.min_negatives)))
    }

    /// Size of the hard-negative pool for `num_neg` drawn negatives.
    pub fn pool(&self, num_neg: usize, num_negative: usize) -> usize {
        ((num_neg as f64 * self.pool_size) as usize).min(num_negative)
    }

    /// Sample anchors of a batch of `batch_size` images with `num_anchors` anchors in total.
    ///
    /// `positives` are the positive flat indices; `hardest_negatives(k)` must return the `k`
    /// non-positive anchors with the highest foreground score (any order).
    pub fn sample(
        &self,
        batch_size: usize,
        num_anchors: usize,
        positives: &[usize],
        hardest_negatives: impl FnOnce(usize) -> Vec<usize>,
        rng: &mut dyn RngCore,
    ) -> SampledAnchors {
        let num_negative = num_anchors - positives.len();
        let (num_pos, num_neg) = self.counts(batch_size, positives.len(), num_negative);
        let chosen_pos = rand::seq::index::sample(rng, positives.len(), num_pos);
        let positives = chosen_pos.iter().map(|i| positives[i]).collect();
        let pool = hardest_negatives(self.pool(num_neg, num_negative));
        let chosen_neg = rand::seq::index::sample(rng, pool.len(), num_neg.min(pool.len()));
        let negatives = chosen_neg.iter().map(|i| pool[i]).collect();
        SampledAnchors {
            positives,
            negatives,
        }
    }
}

/// The `k` highest-scoring indices of `scores` that are not in `sorted_positives` (host version
/// of the device-side selection; for tests and small problems).
pub fn hardest_negatives_from_scores(
    scores: &[f32],
    sorted_positives: &[usize],
    k: usize,
) -> Vec<usize> {
    let mut candidates: Vec<usize> = (0..scores.len())
        .filter(|i| sorted_positives.binary_search(i).is_err())
        .collect();
    let k = k.min(candidates.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn counts_follow_nndetection_for_a_batch_of_four() {
        let s = SamplerConfig::default();
        assert_eq!(s.counts(4, 1000, 100_000), (42, 85));
        assert_eq!(s.pool(85, 100_000), 1700);
        // Few positives: all taken, negatives ≈ 2.03 per positive (at least 2 for zero positives).
        assert_eq!(s.counts(4, 10, 100_000), (10, 20));
        assert_eq!(s.counts(4, 0, 100_000), (0, 2));
        // Few negatives cap everything.
        assert_eq!(s.counts(4, 1000, 30), (42, 30));
        assert_eq!(s.pool(30, 30), 30);
    }

    #[test]
    fn sampled_ratios_and_hard_negative_pool() {
        let s = SamplerConfig::default();
        let num_anchors = 20_000;
        let positives: Vec<usize> = (0..num_anchors).step_by(97).collect();
        // Scores rise with the index, so the hardest negatives are the highest indices.
        let scores: Vec<f32> = (0..num_anchors).map(|i| i as f32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let sampled = s.sample(
            4,
            num_anchors,
            &positives,
            |k| hardest_negatives_from_scores(&scores, &positives, k),
            &mut rng,
        );
        assert_eq!(sampled.positives.len(), 42);
        assert_eq!(sampled.negatives.len(), 85);
        let ratio = sampled.positives.len() as f64
            / (sampled.positives.len() + sampled.negatives.len()) as f64;
        assert!((ratio - 0.33).abs() < 0.01, "{ratio}");
        assert!(sampled.positives.iter().all(|p| positives.contains(p)));
        // Every negative comes from the pool of the 1700 highest-scoring non-positives.
        let pool = hardest_negatives_from_scores(&scores, &positives, 1700);
        let min_pool = *pool.iter().min().unwrap();
        assert!(min_pool > num_anchors - 1800, "{min_pool}");
        assert!(
            sampled
                .negatives
                .iter()
                .all(|n| pool.contains(n) && positives.binary_search(n).is_err())
        );
        let mut unique = sampled.negatives.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 85, "drawn without replacement");
        // Same seed, same draw.
        let again = s.sample(
            4,
            num_anchors,
            &positives,
            |k| hardest_negatives_from_scores(&scores, &positives, k),
            &mut ChaCha8Rng::seed_from_u64(7),
        );
        assert_eq!(again, sampled);
    }

    #[test]
    fn hardest_negatives_skip_positives_and_break_ties_by_index() {
        let scores = [0.5f32, 0.9, 0.9, 0.1, 0.7];
        let mut h = hardest_negatives_from_scores(&scores, &[1], 3);
        h.sort();
        assert_eq!(h, vec![0, 2, 4]);
        assert_eq!(hardest_negatives_from_scores(&scores, &[], 10).len(), 5);
        assert!(
            SamplerConfig {
                positive_fraction: 1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
