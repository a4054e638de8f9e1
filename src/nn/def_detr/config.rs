//! Settings of a 3D Deformable DETR (`DefDetrConfig`); `init` builds the network.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::DefDetr;
use super::losses::SetLossConfig;
use super::matcher::MatcherConfig;
use crate::nn::NnError;
use crate::nn::encoder::{EncoderConfig, RetUNetEncoderConfig};

/// Per-patch post-processing of the query predictions (no NMS: the set loss already makes the
/// queries distinct).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefDetrInferenceConfig {
    /// Keep scores strictly above this.
    pub score_threshold: f64,
    /// Drop boxes with any side shorter than this (voxels).
    pub min_box_size: f64,
    /// Detections kept per patch: the top (query, class) scores (Deformable DETR: 100).
    pub detections_per_image: usize,
}

impl Default for DefDetrInferenceConfig {
    fn default() -> Self {
        Self {
            score_threshold: 0.0,
            min_box_size: 0.01,
            detections_per_image: 100,
        }
    }
}

/// Settings of a 3D Deformable DETR. Defaults are those of the 2D paper made 3D
/// (nnDetection's DefDETR is unreleased); the paper's DefDETR used 3 encoder and 6 decoder
/// layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefDetrConfig {
    /// The encoder (backbone).
    pub encoder: EncoderConfig,
    /// Number of foreground classes.
    pub num_classes: usize,
    /// Feature levels: the last `levels` encoder stages (ResEnc-L: strides 4, 8, 16, 32).
    pub levels: usize,
    /// Token width of the transformer (Deformable DETR: 256).
    pub d_model: usize,
    /// Attention heads (8).
    pub heads: usize,
    /// Sampling points per head and level (4).
    pub points: usize,
    /// Transformer encoder layers (6; the paper: 3).
    pub encoder_layers: usize,
    /// Transformer decoder layers (6).
    pub decoder_layers: usize,
    /// Hidden width of the feed-forward blocks (1024).
    pub ffn_channels: usize,
    /// Dropout in attention and feed-forward blocks (0.1).
    pub dropout: f64,
    /// Object queries (300).
    pub queries: usize,
    /// Iterative box refinement: every decoder layer refines the previous layer's boxes
    /// (deltas in inverse-sigmoid space, reference detached) with its own box head.
    pub box_refinement: bool,
    /// Two-stage: every encoder token proposes a box relative to a token-sized anchor (with its
    /// own class and box heads and an auxiliary loss); the top-`queries` proposals seed the
    /// queries and their reference boxes.
    pub two_stage: bool,
    /// Groups of the GroupNorm after every level's input projection (32; reduced to a
    /// divisor of `d_model`).
    pub norm_groups: usize,
    /// Matching cost weights.
    pub matcher: MatcherConfig,
    /// Loss weights and focal-loss parameters.
    pub loss: SetLossConfig,
    /// Per-patch post-processing.
    pub inference: DefDetrInferenceConfig,
}

impl Default for DefDetrConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderConfig::default(),
            num_classes: 1,
            levels: 4,
            d_model: 256,
            heads: 8,
            points: 4,
            encoder_layers: 6,
            decoder_layers: 6,
            ffn_channels: 1024,
            dropout: 0.1,
            queries: 300,
            box_refinement: true,
            two_stage: false,
            norm_groups: 32,
            matcher: MatcherConfig::default(),
            loss: SetLossConfig::default(),
            inference: DefDetrInferenceConfig::default(),
        }
    }
}

impl burn::config::Config for DefDetrConfig {}

impl DefDetrConfig {
    /// The defaults around `encoder`.
    pub fn new(encoder: EncoderConfig, num_classes: usize) -> Self {
        Self {
            encoder,
            num_classes,
            ..Default::default()
        }
    }

    /// A tiny network for tests: the tiny Retina U-Net encoder, 3 levels, width 16, one
    /// encoder and one decoder layer, 8 queries.
    pub fn tiny(in_channels: usize, num_classes: usize) -> Self {
        Self {
            encoder: EncoderConfig::Retunet(RetUNetEncoderConfig::tiny(in_channels)),
            num_classes,
            levels: 3,
            d_model: 16,
            heads: 2,
            points: 2,
            encoder_layers: 1,
            decoder_layers: 1,
            ffn_channels: 32,
            dropout: 0.0,
            queries: 8,
            ..Default::default()
        }
    }

    /// The encoder stages used as feature levels (the last `levels`).
    pub fn level_stages(&self) -> Vec<usize> {
        let stages = self.encoder.widths().len();
        (stages.saturating_sub(self.levels)..stages).collect()
    }

    /// The GroupNorm group count actually used (the largest divisor of `d_model` not above
    /// `norm_groups`).
    pub fn effective_norm_groups(&self) -> usize {
        (1..=self.norm_groups.min(self.d_model))
            .rev()
            .find(|g| self.d_model.is_multiple_of(*g))
            .unwrap_or(1)
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), NnError> {
        self.encoder.validate()?;
        for (field, v) in [
            ("num_classes", self.num_classes),
            ("levels", self.levels),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("points", self.points),
            ("decoder_layers", self.decoder_layers),
            ("ffn_channels", self.ffn_channels),
            ("queries", self.queries),
            ("norm_groups", self.norm_groups),
        ] {
            if v == 0 {
                return Err(NnError::config(field, "must be at least 1"));
            }
        }
        crate::nn::encoder::check_repeats("encoder_layers", self.encoder_layers)?;
        crate::nn::encoder::check_repeats("decoder_layers", self.decoder_layers)?;
        // Projections, transformer layers, queries and heads, estimated before allocating (a
        // model.json's numbers are untrusted).
        let wide = |v: usize| v as u128;
        let d = wide(self.d_model);
        let per_layer = d
            .saturating_mul(d)
            .saturating_mul(8)
            .saturating_add(d.saturating_mul(wide(self.ffn_channels)).saturating_mul(2))
            .saturating_add(
                d.saturating_mul(wide(self.heads))
                    .saturating_mul(wide(self.levels))
                    .saturating_mul(wide(self.points))
                    .saturating_mul(4),
            );
        let total = per_layer
            .saturating_mul(wide(self.encoder_layers).saturating_add(wide(self.decoder_layers)))
            .saturating_add(d.saturating_mul(wide(self.queries)).saturating_mul(2))
            .saturating_add(d.saturating_mul(wide(self.num_classes).saturating_add(6)));
        crate::nn::encoder::check_weight_budget("d_model", total)?;
        let stages = self.encoder.widths().len();
        if self.levels > stages {
            return Err(NnError::config(
                "levels",
                format!("{} exceeds the encoder's {stages} stages", self.levels),
            ));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(NnError::config(
                "d_model",
                format!(
                    "{} is not divisible by heads = {}",
                    self.d_model, self.heads
                ),
            ));
        }
        if self.d_model < 6 {
            return Err(NnError::config(
                "d_model",
                "must be at least 6 (the positional encoding needs sin and cos per axis)",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(NnError::config(
                "dropout",
                format!("{} must lie in [0, 1)", self.dropout),
            ));
        }
        let l = &self.loss;
        for (field, v) in [
            ("loss.focal_gamma", l.focal_gamma),
            ("loss.cls_weight", l.cls_weight),
            ("loss.l1_weight", l.l1_weight),
            ("loss.giou_weight", l.giou_weight),
            ("matcher.class_cost", self.matcher.class_cost),
            ("matcher.l1_cost", self.matcher.l1_cost),
            ("matcher.giou_cost", self.matcher.giou_cost),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(NnError::config(
                    field,
                    format!("{v} must be finite and ≥ 0"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&l.focal_alpha) {
            return Err(NnError::config(
                "loss.focal_alpha",
                format!("{} must lie in [0, 1]", l.focal_alpha),
            ));
        }
        if self.inference.detections_per_image == 0 {
            return Err(NnError::config(
                "inference.detections_per_image",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Build the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<DefDetr<B>, NnError> {
        self.validate()?;
        DefDetr::new(self.clone(), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_invalid_ones_name_their_field() {
        let cfg = DefDetrConfig::tiny(1, 2);
        cfg.validate().unwrap();
        let back: DefDetrConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(cfg.level_stages(), vec![1, 2, 3]);
        assert_eq!(DefDetrConfig::default().effective_norm_groups(), 32);
        assert_eq!(cfg.effective_norm_groups(), 16);
        let err = serde_json::from_str::<DefDetrConfig>(r#"{"querys": 3}"#).unwrap_err();
        assert!(err.to_string().contains("querys"), "{err}");
        for (bad, field) in [
            (
                DefDetrConfig {
                    heads: 3,
                    ..cfg.clone()
                },
                "d_model",
            ),
            (
                DefDetrConfig {
                    levels: 9,
                    ..cfg.clone()
                },
                "levels",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }
}
