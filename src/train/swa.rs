//! Stochastic weight averaging (SWA) at the end of a run, as nnDetection does it
//! (`SWACycleLinear`, a subclass of Lightning's `StochasticWeightAveraging`, §1.9 of the
//! reference notes).
//!
//! With `E = epochs`, `S = swa_epochs` and `N = iters_per_epoch` a run has `E + S` epochs;
//! the polynomial schedule still spans the first `E · N` iterations. Lightning starts its SWA
//! callback one epoch before `swa_epoch_start` (its `swa_start` is `swa_epoch_start − 1`,
//! 0-based), so nnDetection:
//! - replaces the schedule from the start of epoch `E − 1` (the last regular one) by a cyclic
//!   linear rate stepped every iteration: the `k`-th step of an epoch uses
//!   `high + (low − high) · (1 − k / N)` with `low = lr / 1000`, `high = lr / 10` (1e-5 and
//!   1e-3 for nnDetection's 0.01), so within every epoch the rate rises from `low` towards
//!   `high`;
//! - adds the weights to an equal-weight running average at the *start* of each epoch from
//!   `E − 1` to `E + S − 1`: `S + 1` snapshots, the first being the weights after epoch
//!   `E − 2`, the last the weights after epoch `E + S − 2` (the last epoch's own steps are not
//!   in the average);
//! - needs no normalisation-statistics pass (instance and group norm only).
//!
//! At the end of the last epoch the averaged weights replace the trained ones, before that
//! epoch's validation, so the metrics, `best` and `last` describe the averaged model.
//! (nnDetection's Lightning ≤ 1.4.2 writes `model_last.ckpt` before its `on_train_end` hook
//! transfers the average, so its sweep and prediction, which load that file, see the last
//! trained weights; detlab's `last` holds the average, as SWA intends.)

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::nn::inspect::exponential_moving_average;

/// When the SWA phase of a run starts and which learning rates it uses.
#[derive(Clone, Debug, PartialEq)]
pub struct SwaSchedule {
    /// First iteration of the cyclic rate, `(epochs − 1) · iters_per_epoch`.
    pub start_iteration: usize,
    /// Iterations per cycle (one epoch).
    pub cycle: usize,
    /// Rate of the first step of every cycle (`lr / 1000`).
    pub low_lr: f64,
    /// Rate the cycle rises towards (`lr / 10`).
    pub high_lr: f64,
}

impl SwaSchedule {
    /// The SWA phase of `config`, or `None` when `swa_epochs` is 0.
    pub fn of(config: &TrainConfig) -> Option<SwaSchedule> {
        (config.swa_epochs > 0).then(|| SwaSchedule {
            start_iteration: config.epochs.saturating_sub(1) * config.iters_per_epoch,
            cycle: config.iters_per_epoch.max(1),
            low_lr: config.lr / 1000.0,
            high_lr: config.lr / 10.0,
        })
    }

    /// The cyclic rate of `iteration`, or `None` before the SWA phase.
    pub fn lr_at(&self, iteration: usize) -> Option<f64> {
        let step = iteration.checked_sub(self.start_iteration)? % self.cycle;
        let fraction_left = 1.0 - step as f64 / self.cycle as f64;
        Some(self.high_lr + (self.low_lr - self.high_lr) * fraction_left)
    }

    /// Whether the weights are added to the average before the step of `iteration` (the start
    /// of every epoch of the SWA phase).
    pub fn snapshot_before(&self, iteration: usize) -> bool {
        iteration >= self.start_iteration && iteration.is_multiple_of(self.cycle)
    }
}

/// An equal-weight running average of a module's parameters (`avg ← avg + (w − avg)/(n + 1)`).
#[derive(Clone, Debug)]
pub struct WeightAverage<M> {
    /// The average so far (`None` before the first snapshot).
    pub average: Option<M>,
    /// Number of snapshots in it.
    pub snapshots: usize,
}

impl<M> Default for WeightAverage<M> {
    fn default() -> Self {
        WeightAverage {
            average: None,
            snapshots: 0,
        }
    }
}

impl<M> WeightAverage<M> {
    /// Add one snapshot of the weights.
    pub fn add<B: Backend>(&mut self, weights: M)
    where
        M: Module<B>,
    {
        let n = self.snapshots as f64;
        self.average = Some(match self.average.take() {
            None => weights,
            // n/(n+1) · avg + 1/(n+1) · w: the running mean (an EMA with this momentum).
            Some(average) => exponential_moving_average(average, &weights, n / (n + 1.0)),
        });
        self.snapshots += 1;
    }
}

/// What a checkpoint's weights are, as its `state.json` records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaRecord {
    /// Per-epoch snapshots averaged into `weights.mpk` (0: the trained weights themselves).
    pub averaged_snapshots: usize,
    /// Snapshots in `average.mpk`, the running average of a run stopped during its SWA phase
    /// (`last` only; 0: no such file).
    pub running_snapshots: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, test_device};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Tensor;

    fn values<M: Module<TestBackend>>(m: &M) -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl<B: Backend> ModuleVisitor<B> for Collect {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0.extend(
                    p.val()
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .unwrap(),
                );
            }
        }
        let mut c = Collect(Vec::new());
        m.visit(&mut c);
        c.0
    }

    #[test]
    fn the_average_is_the_mean_of_the_snapshots() {
        let device = test_device();
        let snapshots: Vec<Linear<TestBackend>> = (0..5)
            .map(|_| LinearConfig::new(3, 2).init(&device))
            .collect();
        // Read every snapshot first: burn initialises parameters lazily, and a clone taken
        // before the first read would draw its own values.
        let all: Vec<Vec<f32>> = snapshots.iter().map(|s| values(s)).collect();
        let mut average = WeightAverage::default();
        for s in &snapshots {
            average.add::<TestBackend>(s.clone());
        }
        assert_eq!(average.snapshots, 5);
        let got = values(average.average.as_ref().unwrap());
        assert_eq!(got.len(), 3 * 2 + 2);
        for (k, g) in got.iter().enumerate() {
            let mean = all.iter().map(|v| v[k] as f64).sum::<f64>() / 5.0;
            assert!(
                (*g as f64 - mean).abs() <= 1e-6 * (1.0 + mean.abs()),
                "{k}: {g} vs {mean}"
            );
        }
        // One snapshot is returned unchanged.
        let mut one = WeightAverage::default();
        one.add::<TestBackend>(snapshots[3].clone());
        assert_eq!(values(one.average.as_ref().unwrap()), all[3]);
    }

    #[test]
    fn the_cyclic_rate_follows_nndetection_from_the_last_regular_epoch() {
        let cfg = TrainConfig {
            epochs: 3,
            iters_per_epoch: 4,
            swa_epochs: 2,
            lr: 0.01,
            ..Default::default()
        };
        let swa = SwaSchedule::of(&cfg).unwrap();
        assert_eq!(swa.start_iteration, 8, "Lightning's swa_start = epochs - 1");
        assert_eq!(swa.lr_at(7), None);
        // high + (low - high) · (1 - k/4) for k = 0..3, with low 1e-5 and high 1e-3:
        // 1e-5, 2.575e-4, 5.05e-4, 7.525e-4 (python's cyclic_linear_lr gives the same).
        let expected = [1e-5, 2.575e-4, 5.05e-4, 7.525e-4];
        for epoch in 2..5 {
            for (k, e) in expected.iter().enumerate() {
                let lr = swa.lr_at(epoch * 4 + k).unwrap();
                assert!((lr - e).abs() < 1e-15, "epoch {epoch} step {k}: {lr}");
            }
        }
        let starts: Vec<usize> = (0..20).filter(|&i| swa.snapshot_before(i)).collect();
        assert_eq!(
            starts,
            vec![8, 12, 16],
            "swa_epochs + 1 snapshots, at epoch starts"
        );
        assert!(SwaSchedule::of(&TrainConfig::default()).is_none());
    }

    #[test]
    fn a_run_resumed_during_swa_ends_with_the_same_average_and_records_it() {
        use crate::nn::RetinaUNetConfig;
        use crate::train::checkpoint::{AVERAGE_FILE, read_checkpoint_state};
        use crate::train::testing::cube_case;
        use crate::train::{AugmentConfig, SampleSource, train_on_cases};
        use std::sync::Arc;
        type B = TestBackend;
        let device = test_device();
        let train: Vec<Arc<dyn SampleSource>> = vec![Arc::new(cube_case(
            "t0",
            [16, 16, 16],
            &[([3, 4, 5], [6, 5, 7], 0)],
        ))];
        let val: Vec<Arc<dyn SampleSource>> = vec![Arc::new(cube_case(
            "v0",
            [16, 16, 16],
            &[([5, 6, 7], [6, 6, 6], 0)],
        ))];
        let net = RetinaUNetConfig::tiny(1, 1);
        let description = serde_json::to_value(&net).unwrap();
        let m0 = net.init::<B>(&device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let full_cfg = TrainConfig {
            epochs: 2,
            swa_epochs: 2,
            iters_per_epoch: 2,
            batch: 1,
            patch: [16, 16, 16],
            val_patches: 1,
            warmup_iters: 1,
            augment: AugmentConfig::none(),
            progress: false,
            out: dir.path().join("full"),
            ..Default::default()
        };
        let fit = |cfg: &TrainConfig| {
            train_on_cases(
                m0.clone(),
                description.clone(),
                train.clone(),
                val.clone(),
                cfg,
                &device,
            )
            .unwrap()
        };
        let (full_model, full) = fit(&full_cfg);
        // 4 epochs of 2 iterations; snapshots before iterations 2, 4 and 6.
        assert_eq!(full.history.len(), 8);
        assert_eq!(full.last.averaged_snapshots, 3);
        let swa = SwaSchedule::of(&full_cfg).unwrap();
        for r in &full.history[2..] {
            assert_eq!(
                Some(r.lr),
                swa.lr_at(r.iteration),
                "iteration {}",
                r.iteration
            );
        }
        assert_eq!(full.history[1].lr, full_cfg.schedule().lr_at(1));
        let state = read_checkpoint_state(&full.last.path).unwrap();
        assert_eq!(
            state.swa,
            SwaRecord {
                averaged_snapshots: 3,
                running_snapshots: 0
            }
        );
        assert!(!full.last.path.join(AVERAGE_FILE).exists());
        let best = full.best.as_ref().expect("validated every epoch");
        let best_state = read_checkpoint_state(&best.path).unwrap();
        assert_eq!(best_state.swa.averaged_snapshots, best.averaged_snapshots);
        assert!([0, 3].contains(&best.averaged_snapshots));
        // Stopped during the SWA phase (mid-epoch, two snapshots taken), `last` keeps the
        // trained weights and the running average; resuming ends exactly like the full run.
        let part_cfg = TrainConfig {
            out: dir.path().join("part"),
            stop_at_iteration: Some(5),
            ..full_cfg.clone()
        };
        let (_, part) = fit(&part_cfg);
        assert_eq!(part.last.averaged_snapshots, 0);
        let state = read_checkpoint_state(&part.last.path).unwrap();
        assert_eq!(state.swa.running_snapshots, 2);
        assert!(part.last.path.join(AVERAGE_FILE).is_file());
        let resume_cfg = TrainConfig {
            resume: true,
            stop_at_iteration: None,
            ..part_cfg
        };
        let (resumed_model, resumed) = fit(&resume_cfg);
        assert_eq!(resumed.losses(), full.losses());
        assert_eq!(resumed.last.averaged_snapshots, 3);
        assert_eq!(
            values(&resumed_model),
            values(&full_model),
            "same averaged weights"
        );
        // `last` holds the averaged weights the run returned.
        let trained = crate::train::load_checkpoint_weights(
            net.init::<B>(&device).unwrap(),
            &dir.path().join("part/last"),
            &device,
        )
        .unwrap();
        assert_eq!(values(&trained), values(&full_model));
    }
}
