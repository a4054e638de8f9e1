//! Learning-rate schedule and training phases, stepped per iteration.
//!
//! Iteration `k` (0-based, `T` iterations in all) belongs to one of three phases:
//!
//! 1. **Frozen encoder** (`k < F`, `F = freeze_encoder_iters`): only the decoder and heads
//!    train (the paper's first 5 % of iterations). The learning rate warms up linearly from
//!    `warmup_start_lr` to `lr` over `min(warmup_iters, F)` iterations, then stays at `lr`.
//! 2. **Warm-up** (`F ≤ k < F + W`, `W = warmup_iters`): the whole network trains and the
//!    learning rate warms up again, from `warmup_start_lr` to `lr`.
//! 3. **Poly** (`k ≥ F + W`): `lr · (1 − j / P)^poly_exponent` with `P = T − F − W` and
//!    `j = min(k − F − W + 1, P − 1)`.
//!
//! Phases 2–3 are nnDetection's `LinearWarmupPolyLR` exactly as Lightning steps it (once
//! after every optimiser step, after one initial step at construction): the rate used by the
//! `s`-th step of a phase is `start + (lr − start) · (s + 1) / W` during warm-up, so the last
//! warm-up step uses exactly `lr`, and the poly counter starts at 1 and is clamped to `P − 1`
//! (nnDetection's "PolyLR was stepped too often" guard) on the very last iteration.
//! With `F = 0` this is nnDetection's schedule (`lr` 0.01, start 1e-6, `W` 4000,
//! `T` 125,000).

use serde::{Deserialize, Serialize};

/// Which part of the schedule an iteration is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Encoder frozen; decoder and heads train.
    FrozenEncoder,
    /// Whole network, linear learning-rate warm-up.
    Warmup,
    /// Whole network, polynomial decay.
    Poly,
}

/// The learning-rate schedule of a run (see the module documentation for the formulas).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Target (peak) learning rate.
    pub lr: f64,
    /// First rate of every linear warm-up.
    pub warmup_start_lr: f64,
    /// Whole-network warm-up iterations `W`.
    pub warmup_iters: usize,
    /// Frozen-encoder iterations `F`.
    pub freeze_encoder_iters: usize,
    /// Iterations of the whole run `T`.
    pub total_iters: usize,
    /// Exponent of the polynomial decay (nnDetection: 0.9).
    pub poly_exponent: f64,
}

impl LrSchedule {
    /// The phase of iteration `iteration` (0-based).
    pub fn phase_at(&self, iteration: usize) -> Phase {
        if iteration < self.freeze_encoder_iters {
            Phase::FrozenEncoder
        } else if iteration - self.freeze_encoder_iters < self.warmup_iters {
            Phase::Warmup
        } else {
            Phase::Poly
        }
    }

    /// Whether the encoder is frozen at iteration `iteration`.
    pub fn encoder_frozen_at(&self, iteration: usize) -> bool {
        iteration < self.freeze_encoder_iters
    }

    /// The learning rate used by the optimiser step of iteration `iteration` (0-based).
    pub fn lr_at(&self, iteration: usize) -> f64 {
        let warm = |step: usize, over: usize| {
            self.warmup_start_lr
                + (self.lr - self.warmup_start_lr) * ((step + 1) as f64 / over as f64)
        };
        let frozen = self.freeze_encoder_iters;
        if iteration < frozen {
            let over = self.warmup_iters.min(frozen);
            return if iteration < over {
                warm(iteration, over)
            } else {
                self.lr
            };
        }
        let step = iteration - frozen;
        if step < self.warmup_iters {
            return warm(step, self.warmup_iters);
        }
        let poly_iters = self
            .total_iters
            .saturating_sub(frozen)
            .saturating_sub(self.warmup_iters);
        if poly_iters == 0 {
            return self.lr;
        }
        let j = (step - self.warmup_iters + 1).min(poly_iters - 1);
        self.lr * (1.0 - j as f64 / poly_iters as f64).powf(self.poly_exponent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nndetection() -> LrSchedule {
        LrSchedule {
            lr: 0.01,
            warmup_start_lr: 1e-6,
            warmup_iters: 4000,
            freeze_encoder_iters: 0,
            total_iters: 125_000,
            poly_exponent: 0.9,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
    }

    #[test]
    fn nndetection_warmup_then_poly_matches_hand_computed_values() {
        let s = nndetection();
        // 1e-6 + (0.01 - 1e-6) * 1 / 4000
        assert!(close(s.lr_at(0), 3.49975e-6), "{}", s.lr_at(0));
        // 1e-6 + (0.01 - 1e-6) * 2000 / 4000
        assert!(close(s.lr_at(1999), 0.0050005), "{}", s.lr_at(1999));
        assert!(close(s.lr_at(3999), 0.01));
        // 0.01 * (1 - 1/121000)^0.9 (python: 0.009999925619803975)
        assert!(
            close(s.lr_at(4000), 0.009_999_925_619_803_975),
            "{}",
            s.lr_at(4000)
        );
        // Half-way through the poly phase: j = 60500 → 0.01 * 0.5^0.9
        assert!(
            close(s.lr_at(64_499), 0.005_358_867_312_681_466),
            "{}",
            s.lr_at(64_499)
        );
        // Last iteration: j is clamped to 120999 → 0.01 * (1/121000)^0.9
        assert!(
            close(s.lr_at(124_999), 2.663_748_184_438_025_7e-7),
            "{}",
            s.lr_at(124_999)
        );
        assert_eq!(s.phase_at(0), Phase::Warmup);
        assert_eq!(s.phase_at(4000), Phase::Poly);
    }

    #[test]
    fn frozen_phase_warms_up_then_holds_before_the_whole_network_schedule() {
        let s = LrSchedule {
            lr: 0.1,
            warmup_start_lr: 0.0,
            warmup_iters: 4,
            freeze_encoder_iters: 6,
            total_iters: 20,
            poly_exponent: 1.0,
        };
        let lrs: Vec<f64> = (0..20).map(|k| s.lr_at(k)).collect();
        let expected = [
            0.025, 0.05, 0.075, 0.1, 0.1, 0.1, // frozen: warm-up over min(4, 6), then hold
            0.025, 0.05, 0.075, 0.1, // whole network warm-up
            // poly over P = 20 - 6 - 4 = 10 with exponent 1: 0.1 * (1 - j/10), j = 1..9, 9
            0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.01,
        ];
        for (k, (a, e)) in lrs.iter().zip(expected).enumerate() {
            assert!((a - e).abs() < 1e-12, "iteration {k}: {a} vs {e}");
        }
        assert!(s.encoder_frozen_at(5) && !s.encoder_frozen_at(6));
        assert_eq!(s.phase_at(5), Phase::FrozenEncoder);
        assert_eq!(s.phase_at(6), Phase::Warmup);
        assert_eq!(s.phase_at(10), Phase::Poly);
    }

    #[test]
    fn degenerate_schedules_stay_finite() {
        let no_warmup = LrSchedule {
            warmup_iters: 0,
            total_iters: 3,
            ..nndetection()
        };
        // poly over 3 iterations: j = 1, 2, 2 → 0.01 * (2/3)^0.9, 0.01 * (1/3)^0.9 twice
        let v: Vec<f64> = (0..3).map(|k| no_warmup.lr_at(k)).collect();
        assert!(close(v[0], 0.01 * (2.0f64 / 3.0).powf(0.9)));
        assert!(close(v[1], 0.01 * (1.0f64 / 3.0).powf(0.9)) && v[1] == v[2]);
        let only_warmup = LrSchedule {
            warmup_iters: 10,
            total_iters: 10,
            ..nndetection()
        };
        assert!(close(only_warmup.lr_at(9), 0.01));
        assert!(
            close(only_warmup.lr_at(10), 0.01),
            "past the end: the target rate"
        );
    }
}
