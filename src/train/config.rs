//! The training settings (`TrainConfig`), serde-serialisable so that a script map
//! deserialises into it and every checkpoint records it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::TrainError;
use super::augment::AugmentConfig;
use super::optim::OptimizerConfig;
use super::schedule::LrSchedule;
use crate::nn::EncoderPart;

/// The metric that selects the `best` checkpoint by default (nnDetection's headline metric).
pub const DEFAULT_BEST_METRIC: &str = "AP_IoU_0.10_MaxDet_100";

/// Settings of a training run. Defaults suit CPU-scale experiments; nnDetection's values are
/// given next to each field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs (nnDetection: 50).
    pub epochs: usize,
    /// Training iterations (batches) per epoch, whatever the dataset size (nnDetection: 2500).
    pub iters_per_epoch: usize,
    /// Patches per batch (nnDetection: 4).
    pub batch: usize,
    /// Patch size `[D, H, W]` in voxels; each a multiple of the model's `patch_divisor`
    /// (nnDetection: planned; the paper: 128³).
    pub patch: [usize; 3],
    /// Peak learning rate (nnDetection: 0.01 for SGD).
    pub lr: f64,
    /// First learning rate of each linear warm-up (nnDetection: 1e-6).
    pub warmup_start_lr: f64,
    /// Whole-network linear warm-up iterations (nnDetection: 4000).
    pub warmup_iters: usize,
    /// Exponent of the polynomial decay after the warm-up (nnDetection: 0.9).
    pub poly_exponent: f64,
    /// Stochastic weight averaging epochs run after `epochs` (nnDetection: 10; 0 = off): a
    /// cyclic rate from lr/1000 up to lr/10 per epoch, weights averaged once per epoch, and the
    /// run ends with the average (see `train::swa`).
    pub swa_epochs: usize,
    /// Iterations at the start during which the encoder is frozen and only the decoder and
    /// heads train (nnDetection: 0; the paper's fine-tuning: 5 % of all iterations).
    pub freeze_encoder_iters: usize,
    /// Which part of the encoder the frozen phase freezes (`all`, `stages` keeps the stem
    /// training, e.g. after an input-channel change; `stem`).
    pub frozen_part: EncoderPart,
    /// The optimiser (nnDetection: SGD, Nesterov momentum 0.9, weight decay 3e-5).
    pub optimizer: OptimizerConfig,
    /// Fraction of every batch centred on an object (nnDetection: 0.5); the last
    /// `B − round(B × (1 − fraction))` patches of a batch are foreground patches.
    pub foreground_fraction: f64,
    /// A box cut by the patch border is kept when at least this fraction of its volume lies
    /// inside the patch, or its centre does (nnDetection keeps any visible part: 0).
    pub min_visible_fraction: f64,
    /// Data augmentation: a preset ("none", "base_more", "more", "insane") or a map over one
    /// (nnDetection: "base_more"). Each transform is off at probability 0.
    pub augment: AugmentConfig,
    /// Fixed validation patches drawn once from the validation cases (nnDetection: 100
    /// batches × 4 = 400); 0 disables the online validation.
    pub val_patches: usize,
    /// Validate every this many epochs (and always after the last one).
    pub validate_every: usize,
    /// The validation metric that selects the `best` checkpoint (higher is better;
    /// nnDetection selects on `mAP_IoU_0.10_0.50_0.05_MaxDet_100`).
    pub best_metric: String,
    /// Seed of every random draw (patches, augmentation, hard-negative sampling).
    pub seed: u64,
    /// Output folder for the `last` and `best` checkpoints (required).
    pub out: PathBuf,
    /// Continue the run saved in `out/last` (same settings) instead of starting a new one.
    pub resume: bool,
    /// Start a new run even if `out` holds one: its `last` and `best` checkpoints are deleted
    /// first (without it, an existing run is an error, so no run is lost by accident).
    pub overwrite: bool,
    /// Stop this call after this many iterations in all (counted from the start of the run;
    /// the schedule still spans the whole run), writing `last`; resume later to continue.
    pub stop_at_iteration: Option<usize>,
    /// Show a progress bar and per-epoch summaries on stderr (the bar only on a terminal).
    pub progress: bool,
    /// Automatic restart when the validation metric stalls (the paper's fix for Deformable
    /// DETR's convergence failures; off while `restart.patience_iters` is 0).
    pub restart: RestartConfig,
}

/// Automatic restart: when `best_metric` has not risen by `min_improvement` within
/// `patience_iters` iterations of the whole-network phase, the weights and optimiser state
/// saved when that phase began are restored and the phase starts again, with a longer warm-up
/// (`warmup_iters`) to a lower rate (`lr`) and the same PolyLR after it; the run grows by the
/// iterations discarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// Iterations of the whole-network phase within which the metric must improve (0 = off).
    pub patience_iters: usize,
    /// How far `best_metric` must rise above its last value before the whole-network phase
    /// (0 when not validated before it).
    pub min_improvement: f64,
    /// Whole-network warm-up iterations after a restart (the paper: 10,000).
    pub warmup_iters: usize,
    /// Target learning rate after a restart (lower than `lr`).
    pub lr: f64,
    /// At most this many restarts per run.
    pub max_restarts: usize,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            patience_iters: 0,
            min_improvement: 0.01,
            warmup_iters: 100,
            lr: 1e-4,
            max_restarts: 1,
        }
    }
}

impl RestartConfig {
    /// Whether restarts are on.
    pub fn enabled(&self) -> bool {
        self.patience_iters > 0 && self.max_restarts > 0
    }
}

/// Named starting points for `train`'s settings; the options given override them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainRecipe {
    /// [`TrainConfig::default`]: SGD with Nesterov momentum, nnDetection's Retina U-Net recipe
    /// at CPU scale.
    #[default]
    Nndetection,
    /// The paper's Deformable DETR fine-tuning: Adam with AMSGrad at 3e-4 (the paper's table
    /// 2), weight decay 1e-4, gradient-norm clip 0.1, the encoder at 0.1× the rate, and the
    /// encoder frozen for the first 5 % of the iterations.
    DefDetr,
}

impl TrainRecipe {
    /// The recipe called `name` (`"nndetection"`, `"def_detr"`).
    pub fn named(name: &str) -> Result<Self, TrainError> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
            TrainError::config(
                "recipe",
                format!("unknown recipe \"{name}\"; available: \"nndetection\", \"def_detr\""),
            )
        })
    }

    /// The settings the recipe starts from.
    pub fn config(self) -> TrainConfig {
        match self {
            TrainRecipe::Nndetection => TrainConfig::default(),
            TrainRecipe::DefDetr => TrainConfig {
                lr: 3e-4,
                optimizer: OptimizerConfig {
                    kind: super::optim::OptimizerKind::Adam,
                    amsgrad: true,
                    weight_decay: 1e-4,
                    grad_clip_norm: Some(0.1),
                    encoder_lr_factor: 0.1,
                    ..OptimizerConfig::default()
                },
                ..TrainConfig::default()
            },
        }
    }

    /// The fraction of the run's iterations with a frozen encoder when `freeze_encoder_iters`
    /// is not given (the paper's DefDETR fine-tuning: 5 %).
    pub fn frozen_fraction(self) -> f64 {
        match self {
            TrainRecipe::Nndetection => 0.0,
            TrainRecipe::DefDetr => 0.05,
        }
    }

    /// `config` with the recipe's frozen phase when `freeze_encoder_iters` was not set.
    pub fn complete(self, mut config: TrainConfig, freeze_given: bool) -> TrainConfig {
        if !freeze_given {
            config.freeze_encoder_iters =
                (self.frozen_fraction() * config.total_iters() as f64).round() as usize;
        }
        config
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iters_per_epoch: 50,
            batch: 2,
            patch: [64, 64, 64],
            lr: 0.01,
            warmup_start_lr: 1e-6,
            warmup_iters: 50,
            poly_exponent: 0.9,
            swa_epochs: 0,
            freeze_encoder_iters: 0,
            frozen_part: EncoderPart::All,
            optimizer: OptimizerConfig::default(),
            foreground_fraction: 0.5,
            min_visible_fraction: 0.5,
            augment: AugmentConfig::default(),
            val_patches: 16,
            validate_every: 1,
            best_metric: DEFAULT_BEST_METRIC.to_string(),
            seed: 0,
            out: PathBuf::new(),
            resume: false,
            overwrite: false,
            stop_at_iteration: None,
            progress: true,
            restart: RestartConfig::default(),
        }
    }
}

/// Keys that may differ between a run and its resumption.
pub(crate) const RESUMABLE_DIFFERENCES: &[&str] =
    &["resume", "overwrite", "stop_at_iteration", "progress"];

impl TrainConfig {
    /// Iterations of the whole run (`epochs × iters_per_epoch`).
    pub fn total_iters(&self) -> usize {
        self.epochs.saturating_mul(self.iters_per_epoch)
    }

    /// Iterations of the whole run including the SWA epochs
    /// (`(epochs + swa_epochs) × iters_per_epoch`).
    pub fn run_iters(&self) -> usize {
        (self.epochs.saturating_add(self.swa_epochs)).saturating_mul(self.iters_per_epoch)
    }

    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            warmup_start_lr: self.warmup_start_lr,
            warmup_iters: self.warmup_iters,
            freeze_encoder_iters: self.freeze_encoder_iters,
            total_iters: self.total_iters(),
            poly_exponent: self.poly_exponent,
        }
    }

    /// Check the settings (without a model or data).
    pub fn validate(&self) -> Result<(), TrainError> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(TrainError::config(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("epochs", self.epochs)?;
        positive("iters_per_epoch", self.iters_per_epoch)?;
        positive("batch", self.batch)?;
        positive("validate_every", self.validate_every)?;
        if self.patch.contains(&0) {
            return Err(TrainError::config(
                "patch",
                format!("{:?} has a zero extent", self.patch),
            ));
        }
        let finite_nonneg = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(TrainError::config(
                    field,
                    format!("{v} must be finite and ≥ 0"),
                ))
            }
        };
        finite_nonneg("lr", self.lr)?;
        finite_nonneg("warmup_start_lr", self.warmup_start_lr)?;
        finite_nonneg("poly_exponent", self.poly_exponent)?;
        for (field, v) in [
            ("foreground_fraction", self.foreground_fraction),
            ("min_visible_fraction", self.min_visible_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(TrainError::config(field, format!("{v} must lie in [0, 1]")));
            }
        }
        if self.freeze_encoder_iters > self.total_iters() {
            return Err(TrainError::config(
                "freeze_encoder_iters",
                format!(
                    "{} exceeds the run's {} iterations (epochs × iters_per_epoch)",
                    self.freeze_encoder_iters,
                    self.total_iters()
                ),
            ));
        }
        if self.swa_epochs > 0 && self.epochs < 2 {
            return Err(TrainError::config(
                "swa_epochs",
                "needs `epochs` ≥ 2: averaging starts with the weights before the last of `epochs`",
            ));
        }
        if self.best_metric.trim().is_empty() {
            return Err(TrainError::config(
                "best_metric",
                "must name a validation metric",
            ));
        }
        if self.out.as_os_str().is_empty() {
            return Err(TrainError::config(
                "out",
                "is required: the folder for the `last` and `best` checkpoints",
            ));
        }
        if self.restart.enabled() {
            if self.val_patches == 0 {
                return Err(TrainError::config(
                    "restart.patience_iters",
                    "needs the online validation (`val_patches` > 0) to watch the metric",
                ));
            }
            finite_nonneg("restart.lr", self.restart.lr)?;
            if !self.restart.min_improvement.is_finite() {
                return Err(TrainError::config(
                    "restart.min_improvement",
                    "must be finite",
                ));
            }
        }
        self.optimizer.validate()?;
        self.augment.validate(self.patch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_maps_deserialise_and_unknown_keys_are_named() {
        let json = r#"{"lr": 0.02, "epochs": 3, "patch": [32, 32, 16], "out": "/tmp/x",
                       "optimizer": {"kind": "adam", "amsgrad": true},
                       "augment": {"mirror_probability": 0.0}}"#;
        let cfg: TrainConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.lr, 0.02);
        assert_eq!(cfg.patch, [32, 32, 16]);
        assert_eq!(cfg.iters_per_epoch, 50, "defaults fill the rest");
        assert!(cfg.optimizer.amsgrad);
        cfg.validate().unwrap();
        let err = serde_json::from_str::<TrainConfig>(r#"{"learning_rate": 0.1}"#).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
        let err =
            serde_json::from_str::<TrainConfig>(r#"{"optimizer": {"kind": "lamb"}}"#).unwrap_err();
        assert!(err.to_string().contains("lamb"), "{err}");
        let back: TrainConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn the_def_detr_recipe_is_the_papers_and_freezes_five_percent_unless_told() {
        let recipe = TrainRecipe::named("def_detr").unwrap();
        let base = recipe.config();
        assert_eq!(base.lr, 3e-4);
        let o = &base.optimizer;
        assert_eq!(o.kind, super::super::optim::OptimizerKind::Adam);
        assert!(o.amsgrad);
        assert_eq!(
            (o.weight_decay, o.grad_clip_norm, o.encoder_lr_factor),
            (1e-4, Some(0.1), 0.1)
        );
        let run = TrainConfig {
            epochs: 4,
            iters_per_epoch: 50,
            ..base
        };
        assert_eq!(recipe.complete(run.clone(), false).freeze_encoder_iters, 10);
        let told = TrainConfig {
            freeze_encoder_iters: 3,
            ..run
        };
        assert_eq!(recipe.complete(told.clone(), true).freeze_encoder_iters, 3);
        assert_eq!(
            TrainRecipe::Nndetection.config(),
            TrainConfig::default(),
            "the default recipe is the defaults"
        );
        let err = TrainRecipe::named("yolo").unwrap_err().to_string();
        assert!(
            err.contains("`recipe`") && err.contains("def_detr"),
            "{err}"
        );
        // Restarts need the online validation.
        let err = TrainConfig {
            out: "/tmp/run".into(),
            val_patches: 0,
            restart: RestartConfig {
                patience_iters: 5,
                ..Default::default()
            },
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("restart.patience_iters"), "{err}");
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let base = TrainConfig {
            out: "/tmp/run".into(),
            ..Default::default()
        };
        base.validate().unwrap();
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    batch: 0,
                    ..base.clone()
                },
                "batch",
            ),
            (
                TrainConfig {
                    patch: [0, 8, 8],
                    ..base.clone()
                },
                "patch",
            ),
            (
                TrainConfig {
                    lr: f64::NAN,
                    ..base.clone()
                },
                "lr",
            ),
            (
                TrainConfig {
                    foreground_fraction: 1.5,
                    ..base.clone()
                },
                "foreground_fraction",
            ),
            (
                TrainConfig {
                    freeze_encoder_iters: 10_000,
                    ..base.clone()
                },
                "freeze_encoder_iters",
            ),
            (
                TrainConfig {
                    out: PathBuf::new(),
                    ..base.clone()
                },
                "out",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }
}
