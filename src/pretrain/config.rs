//! The pre-training settings (`PretrainConfig`): one typed, serde-serialisable config that a
//! script map deserialises into (unknown keys are errors naming them) and every checkpoint
//! records. Defaults are nnssl's unless a field says otherwise.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::genesis::GenesisConfig;
use crate::train::{LrSchedule, OptimizerConfig, OptimizerKind};

/// The pre-training method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Masked auto-encoder on a dense CNN: block mask, masked voxels set to 0, MSE on them.
    #[default]
    Mae,
    /// SparkMAE / S3D: MAE with sparse emulation inside the encoder and a densify step.
    Spark,
    /// Models Genesis: restore a patch corrupted by flips, local shuffling, a non-linear
    /// intensity map and in/out-painting.
    ModelsGenesis,
    /// VoCo: predict the volume overlap of random target crops with the base crops.
    Voco,
    /// MultiTalent: supervised segmentation over several datasets, one stem and one head each.
    Multitalent,
}

impl Method {
    /// The method's script name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mae => "mae",
            Method::Spark => "spark",
            Method::ModelsGenesis => "models_genesis",
            Method::Voco => "voco",
            Method::Multitalent => "multitalent",
        }
    }

    /// All methods, in the paper's order.
    pub const ALL: [Method; 5] = [
        Method::Multitalent,
        Method::Mae,
        Method::Spark,
        Method::ModelsGenesis,
        Method::Voco,
    ];

    /// Whether the method reconstructs or segments through a U-Net decoder.
    pub fn has_decoder(self) -> bool {
        !matches!(self, Method::Voco)
    }
}

/// The block mask of MAE and S3D.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    /// Edge of one mask cell in voxels (nnssl: 16 at 160³; scale it with the patch, e.g. 4 at
    /// 32³). Must divide the patch on every axis.
    pub block: usize,
    /// Fraction of cells masked; exactly ⌊ratio · cells⌋ per sample (nnssl: 0.75).
    pub ratio: f64,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            block: 4,
            ratio: 0.75,
        }
    }
}

/// S3D (SparkMAE) options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkConfig {
    /// Zero the masked input voxels before the stem (the original SparK). nnssl does not
    /// (default false), so its stem sees one voxel of true neighbours across block borders.
    pub zero_input: bool,
}

/// VoCo options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VocoConfig {
    /// Grid of base crops `[D, H, W]` tiling the patch (nnssl: 1 × 4 × 4 over 64 × 256 × 256).
    pub bases: [usize; 3],
    /// Random target crops per image (nnssl: 4).
    pub targets: usize,
    /// Width of the 3-layer projector (nnssl: 2048).
    pub projector_width: usize,
    /// How the projector normalises its hidden layers: `"sample"` (nnssl: each embedding over
    /// its own features) or `"batch"` (the original VoCo: each feature over the crops of the
    /// batch, without affine parameters or running statistics). Pooled features after
    /// instance norms are nearly the same for every crop; only the batch norm removes that
    /// shared part, and with `"sample"` the embeddings collapse (nnssl issue #22).
    pub projector_norm: ProjectorNorm,
    /// Momentum of an EMA teacher whose base embeddings the students' targets are compared
    /// with (the original VoCo: 0.9); `None` is nnssl's default, without a teacher.
    pub ema_momentum: Option<f64>,
    /// Independent intensity augmentation of every crop (nnssl: on).
    pub augment_crops: bool,
    /// Weight of the prediction terms L_pos + L_neg (nnssl: 1).
    pub prediction_weight: f64,
    /// Weight of the regularisation term L_reg (nnssl: 1).
    pub regularization_weight: f64,
}

impl Default for VocoConfig {
    fn default() -> Self {
        Self {
            bases: [1, 2, 2],
            targets: 4,
            projector_width: 2048,
            projector_norm: ProjectorNorm::Sample,
            ema_momentum: None,
            augment_crops: true,
            prediction_weight: 1.0,
            regularization_weight: 1.0,
        }
    }
}

/// The normalisation of VoCo's projector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorNorm {
    /// Normalise each embedding over its features (nnssl's `InstanceNorm1d` on `[N, F]`).
    #[default]
    Sample,
    /// Normalise each feature over the batch (the original VoCo's `BatchNorm1d`).
    Batch,
}

/// MultiTalent options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultiTalentConfig {
    /// A case of dataset d is drawn with probability ∝ N_d^exponent (MultiTalent: −0.5, so a
    /// dataset is drawn ∝ √N_d).
    pub sampling_exponent: f64,
    /// Split a dataset with more classes than this into parts with a head each; `None` never
    /// splits (MultiTalent v2 splits at 20).
    pub max_classes_per_head: Option<usize>,
    /// Fraction of patches centred on a labelled object (nnU-Net: 0.33).
    pub foreground_fraction: f64,
    /// One stem per dataset (MultiTalent's multi-stem trainer, the default); `false` shares
    /// the encoder's stem, so every dataset must have the same channels.
    pub per_dataset_stems: bool,
}

impl Default for MultiTalentConfig {
    fn default() -> Self {
        Self {
            sampling_exponent: -0.5,
            max_classes_per_head: None,
            foreground_fraction: 0.33,
            per_dataset_stems: true,
        }
    }
}

/// Settings of a pre-training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// `"mae"`, `"spark"`, `"models_genesis"`, `"voco"` or `"multitalent"`.
    pub method: Method,
    /// Patch `[D, H, W]` in voxels (nnssl: 160³; VoCo: the region its crops tile). A multiple
    /// of the encoder's total stride (VoCo: each crop is).
    pub patch: [usize; 3],
    /// Patches per batch (nnssl: 2; its benchmark setting 8).
    pub batch: usize,
    /// Optimiser steps (nnssl: 250,000).
    pub iterations: usize,
    /// Peak learning rate (nnssl: 0.01 with SGD; MultiTalent: 0.001).
    pub lr: f64,
    /// Linear warm-up iterations from `warmup_start_lr` (nnssl: 0).
    pub warmup_iters: usize,
    /// First learning rate of the warm-up.
    pub warmup_start_lr: f64,
    /// PolyLR exponent (nnssl: 0.9).
    pub poly_exponent: f64,
    /// The optimiser (nnssl: SGD, Nesterov momentum 0.99, weight decay 3e-5, gradient norm
    /// clipped at 12; VoCo unclipped). `kind: "adamw"` is the option for short schedules.
    pub optimizer: OptimizerConfig,
    /// MAE and S3D: the block mask.
    pub mask: MaskConfig,
    /// S3D options.
    pub spark: SparkConfig,
    /// Models Genesis: the corruption probabilities and sizes.
    pub genesis: GenesisConfig,
    /// VoCo options.
    pub voco: VocoConfig,
    /// MultiTalent options.
    pub multitalent: MultiTalentConfig,
    /// Fixed validation patches drawn once (their mean loss selects `best`); 0 disables.
    pub val_patches: usize,
    /// Validate, write `last` and report every this many iterations.
    pub validate_every: usize,
    /// Write the method's figure (`<out>/figures/iter_<k>.png`) every this many iterations
    /// (0: never; the last iteration always gets one when > 0).
    pub figure_every: usize,
    /// Seed of the weights' initialisation is the caller's; this one drives every random draw
    /// (patches, masks, corruptions, crops).
    pub seed: u64,
    /// Output folder (`last/`, `best/`, `figures/`).
    pub out: PathBuf,
    /// Continue the run saved in `out/last` (same settings).
    pub resume: bool,
    /// Replace a run already in `out` (without it that is an error, so nothing is lost).
    pub overwrite: bool,
    /// Stop this call after this many iterations in all (the schedule still spans the whole
    /// run); resume later to continue.
    pub stop_at_iteration: Option<usize>,
    /// Progress bar and periodic summaries on stderr.
    pub progress: bool,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Mae,
            patch: [32, 32, 32],
            batch: 4,
            iterations: 1000,
            lr: 0.01,
            warmup_iters: 0,
            warmup_start_lr: 1e-6,
            poly_exponent: 0.9,
            optimizer: nnssl_optimizer(),
            mask: MaskConfig::default(),
            spark: SparkConfig::default(),
            genesis: GenesisConfig::default(),
            voco: VocoConfig::default(),
            multitalent: MultiTalentConfig::default(),
            val_patches: 8,
            validate_every: 50,
            figure_every: 100,
            seed: 0,
            out: PathBuf::from("runs/pretrain"),
            resume: false,
            overwrite: false,
            stop_at_iteration: None,
            progress: true,
        }
    }
}

/// nnssl's optimiser: SGD, Nesterov momentum 0.99, weight decay 3e-5, gradient clip 12.
pub fn nnssl_optimizer() -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.99,
        nesterov: true,
        weight_decay: 3e-5,
        grad_clip_norm: Some(12.0),
        ..OptimizerConfig::default()
    }
}

/// Settings that may differ between a saved run and its resumption.
pub const RESUMABLE_DIFFERENCES: &[&str] = &[
    "resume",
    "overwrite",
    "stop_at_iteration",
    "progress",
    "figure_every",
];

impl PretrainConfig {
    /// The defaults of `method`: nnssl's, except VoCo (no gradient clipping, as nnssl) and
    /// MultiTalent (lr 1e-3, as MultiTalent v2).
    pub fn for_method(method: Method) -> Self {
        let mut config = Self {
            method,
            ..Self::default()
        };
        match method {
            Method::Voco => {
                config.optimizer.grad_clip_norm = None;
                config.patch = [16, 32, 32];
            }
            Method::Multitalent => config.lr = 1e-3,
            _ => {}
        }
        config
    }

    /// The learning-rate schedule: optional linear warm-up, then PolyLR.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            warmup_start_lr: self.warmup_start_lr,
            warmup_iters: self.warmup_iters,
            freeze_encoder_iters: 0,
            total_iters: self.iterations,
            poly_exponent: self.poly_exponent,
        }
    }

    /// Check every setting that does not depend on the encoder; the error names the field.
    pub fn validate(&self) -> Result<(), PretrainError> {
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(PretrainError::config(name, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("batch", self.batch)?;
        positive("iterations", self.iterations)?;
        positive("validate_every", self.validate_every)?;
        if self.patch.contains(&0) {
            return Err(PretrainError::config(
                "patch",
                format!("{:?} must be positive on every axis", self.patch),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(PretrainError::config(
                "lr",
                format!("{} must be positive", self.lr),
            ));
        }
        if !(self.warmup_start_lr.is_finite() && self.warmup_start_lr >= 0.0) {
            return Err(PretrainError::config(
                "warmup_start_lr",
                "must be finite and ≥ 0",
            ));
        }
        if !(self.poly_exponent.is_finite() && self.poly_exponent >= 0.0) {
            return Err(PretrainError::config("poly_exponent", "must be ≥ 0"));
        }
        if self.warmup_iters >= self.iterations {
            return Err(PretrainError::config(
                "warmup_iters",
                format!(
                    "{} leaves no iteration after the warm-up ({} in all)",
                    self.warmup_iters, self.iterations
                ),
            ));
        }
        self.optimizer.validate()?;
        match self.method {
            Method::Mae | Method::Spark => self.validate_mask()?,
            Method::ModelsGenesis => self
                .genesis
                .validate(self.patch)
                .map_err(|e| PretrainError::config("genesis", e.to_string()))?,
            Method::Voco => self.validate_voco()?,
            Method::Multitalent => {
                let f = self.multitalent.foreground_fraction;
                if !(0.0..=1.0).contains(&f) {
                    return Err(PretrainError::config(
                        "multitalent.foreground_fraction",
                        format!("{f} must lie in [0, 1]"),
                    ));
                }
                if self.multitalent.max_classes_per_head == Some(0) {
                    return Err(PretrainError::config(
                        "multitalent.max_classes_per_head",
                        "must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_mask(&self) -> Result<(), PretrainError> {
        let MaskConfig { block, ratio } = self.mask;
        if block == 0 || self.patch.iter().any(|p| p % block != 0) {
            return Err(PretrainError::config(
                "mask.block",
                format!(
                    "{block} must divide the patch {:?} on every axis",
                    self.patch
                ),
            ));
        }
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(PretrainError::config(
                "mask.ratio",
                format!("{ratio} must lie strictly between 0 and 1"),
            ));
        }
        let cells: usize = self.patch.iter().map(|p| p / block).product();
        let masked = (ratio * cells as f64).floor() as usize;
        if masked == 0 || masked == cells {
            return Err(PretrainError::config(
                "mask.ratio",
                format!(
                    "masks {masked} of {cells} cells; at least one cell must be masked and one visible"
                ),
            ));
        }
        Ok(())
    }

    fn validate_voco(&self) -> Result<(), PretrainError> {
        let v = &self.voco;
        self.voco_geometry()
            .validate()
            .map_err(|e| PretrainError::config("voco.bases", e.to_string()))?;
        if v.targets == 0 {
            return Err(PretrainError::config("voco.targets", "must be at least 1"));
        }
        if v.projector_width == 0 {
            return Err(PretrainError::config(
                "voco.projector_width",
                "must be at least 1",
            ));
        }
        if let Some(m) = v.ema_momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(PretrainError::config(
                "voco.ema_momentum",
                format!("{m} must lie in [0, 1)"),
            ));
        }
        if v.bases.iter().product::<usize>() < 2 {
            return Err(PretrainError::config(
                "voco.bases",
                "needs at least two base crops (the regulariser compares pairs)",
            ));
        }
        Ok(())
    }

    /// VoCo's crop geometry for this patch.
    pub fn voco_geometry(&self) -> super::crops::VocoGeometry {
        super::crops::VocoGeometry {
            patch: self.patch,
            bases: self.voco.bases,
            targets: self.voco.targets,
        }
    }

    /// The patch the encoder sees: VoCo's crop, otherwise the whole patch.
    pub fn encoder_patch(&self) -> [usize; 3] {
        match self.method {
            Method::Voco => std::array::from_fn(|a| self.patch[a] / self.voco.bases[a].max(1)),
            _ => self.patch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_nnssl_and_unknown_keys_are_rejected() {
        let c = PretrainConfig::default();
        assert_eq!(c.optimizer.momentum, 0.99);
        assert_eq!(c.optimizer.grad_clip_norm, Some(12.0));
        assert_eq!(c.mask.ratio, 0.75);
        assert_eq!(
            PretrainConfig::for_method(Method::Voco)
                .optimizer
                .grad_clip_norm,
            None
        );
        assert_eq!(PretrainConfig::for_method(Method::Multitalent).lr, 1e-3);
        let err = serde_json::from_str::<PretrainConfig>(r#"{"mask": {"blok": 4}}"#).unwrap_err();
        assert!(err.to_string().contains("blok"), "{err}");
        let m: PretrainConfig = serde_json::from_str(r#"{"method": "models_genesis"}"#).unwrap();
        assert_eq!(m.method, Method::ModelsGenesis);
        assert!(serde_json::from_str::<PretrainConfig>(r#"{"method": "simclr"}"#).is_err());
    }

    #[test]
    fn a_mask_block_that_does_not_divide_the_patch_is_an_error() {
        let c = PretrainConfig {
            patch: [32, 32, 30],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("mask.block") && e.contains("[32, 32, 30]"),
            "{e}"
        );
        let c = PretrainConfig {
            mask: MaskConfig {
                block: 16,
                ratio: 0.1,
            },
            ..Default::default()
        };
        // 8 cells, ⌊0.8⌋ = 0 masked.
        assert!(c.validate().unwrap_err().to_string().contains("mask.ratio"));
    }

    #[test]
    fn a_patch_smaller_than_the_voco_grid_is_an_error() {
        let c = PretrainConfig {
            patch: [8, 2, 2],
            voco: VocoConfig {
                bases: [1, 4, 4],
                ..Default::default()
            },
            ..PretrainConfig::for_method(Method::Voco)
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("voco.bases"), "{e}");
    }
}
