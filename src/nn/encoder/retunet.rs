//! nnDetection's Retina U-Net encoder: plain conv stages, channels doubling from 32 up to 320.
//!
//! Each stage is `convs_per_stage` × (conv → InstanceNorm → ReLU), conv bias off; the first
//! unit of stages s ≥ 1 is strided. **Stem choice:** the stem is stage 0's first conv unit
//! (input channels → widths[0], stride 1), so stage 0 keeps `convs_per_stage − 1` units and the
//! network is unit-for-unit nnDetection's; only that first unit depends on the input channels.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Encoder, EncoderKind, EncoderStage, Stem, validate_stages};
use crate::nn::NnError;
use crate::nn::blocks::{Activation, ConvNormActConfig, WeightInit};

/// Settings of the plain Retina U-Net encoder (default: nnDetection's 6 stages, 1 channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetUNetEncoderConfig {
    /// Input channels (modalities).
    pub in_channels: usize,
    /// Output channels per stage.
    pub widths: Vec<usize>,
    /// Stride of each stage (the first must be 1).
    pub strides: Vec<[usize; 3]>,
    /// Kernel size of each stage's convs.
    pub kernel_sizes: Vec<[usize; 3]>,
    /// Conv units per stage (nnDetection: 2).
    pub convs_per_stage: usize,
    /// Bias of the convs (nnDetection: false, a norm follows).
    pub conv_bias: bool,
    /// Non-linearity (nnDetection: ReLU).
    pub activation: Activation,
    /// Weight initialisation.
    pub init: WeightInit,
}

impl Default for RetUNetEncoderConfig {
    fn default() -> Self {
        Self::nndetection(1, 6)
    }
}

impl RetUNetEncoderConfig {
    /// nnDetection's encoder for an isotropic plan: `num_stages` stages, widths 32·2^s capped
    /// at 320, stride 2 from stage 1 on, 3³ kernels.
    pub fn nndetection(in_channels: usize, num_stages: usize) -> Self {
        let strides = (0..num_stages)
            .map(|s| if s == 0 { [1, 1, 1] } else { [2, 2, 2] })
            .collect();
        Self::planned(in_channels, strides, vec![[3, 3, 3]; num_stages])
    }

    /// The encoder for planned strides and kernels (widths 32·2^s capped at 320).
    pub fn planned(
        in_channels: usize,
        strides: Vec<[usize; 3]>,
        kernel_sizes: Vec<[usize; 3]>,
    ) -> Self {
        let widths = (0..strides.len())
            .map(|s| (32usize << s.min(16)).min(320))
            .collect();
        Self {
            in_channels,
            widths,
            strides,
            kernel_sizes,
            convs_per_stage: 2,
            conv_bias: false,
            activation: Activation::Relu,
            init: WeightInit::KaimingNormal,
        }
    }

    /// A tiny 4-stage variant for tests and tutorials: widths [8, 16, 32, 64], total stride 8.
    pub fn tiny(in_channels: usize) -> Self {
        Self {
            widths: vec![8, 16, 32, 64],
            ..Self::nndetection(in_channels, 4)
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), NnError> {
        validate_stages(
            &self.widths,
            &self.strides,
            &self.kernel_sizes,
            self.in_channels,
        )?;
        if self.strides[0] != [1, 1, 1] {
            return Err(NnError::config(
                "encoder.strides",
                "the first stage of a retunet encoder must have stride 1",
            ));
        }
        if self.convs_per_stage < 2 {
            return Err(NnError::config(
                "encoder.convs_per_stage",
                "must be at least 2 (stage 0's first unit is the stem)",
            ));
        }
        super::check_parameter_count(
            "encoder.convs_per_stage",
            &self.widths,
            &self.kernel_sizes,
            self.in_channels,
            &vec![self.convs_per_stage; self.widths.len()],
        )
    }

    /// Build the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Encoder<B>, NnError> {
        self.validate()?;
        let unit = |cin: usize, cout: usize, s: usize, stride: [usize; 3]| ConvNormActConfig {
            channels: [cin, cout],
            kernel_size: self.kernel_sizes[s],
            stride,
            conv_bias: self.conv_bias,
            activation: self.activation,
            norm_epsilon: 1e-5,
            init: self.init,
            zero_norm_weight: false,
        };
        let stem = Stem {
            convs: vec![unit(self.in_channels, self.widths[0], 0, [1, 1, 1]).init(device)],
        };
        let mut stages = Vec::with_capacity(self.widths.len());
        let mut prev = self.widths[0];
        for (s, &width) in self.widths.iter().enumerate() {
            let first = if s == 0 { 1 } else { 0 };
            let convs = (first..self.convs_per_stage)
                .map(|i| {
                    let stride = if i == 0 { self.strides[s] } else { [1, 1, 1] };
                    let cin = if i == first { prev } else { width };
                    unit(cin, width, s, stride).init(device)
                })
                .collect();
            stages.push(EncoderStage {
                convs,
                blocks: Vec::new(),
            });
            prev = width;
        }
        let encoder = Encoder {
            stem,
            stages,
            kind: EncoderKind::Retunet,
            widths: self.widths.clone(),
            strides: self.strides.clone(),
            in_channels: self.in_channels,
        };
        crate::nn::inspect::materialize(&encoder);
        Ok(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, test_device};
    use burn::module::Module;
    use burn::tensor::Tensor;

    #[test]
    fn tiny_retunet_returns_one_skip_per_stage_with_halving_sizes() {
        let device = test_device();
        let enc = RetUNetEncoderConfig::tiny(2)
            .init::<TestBackend>(&device)
            .unwrap();
        let x = Tensor::<TestBackend, 5>::ones([1, 2, 16, 16, 16], &device);
        let skips = enc.forward(x);
        let dims: Vec<[usize; 5]> = skips.iter().map(|s| s.dims()).collect();
        assert_eq!(
            dims,
            vec![
                [1, 8, 16, 16, 16],
                [1, 16, 8, 8, 8],
                [1, 32, 4, 4, 4],
                [1, 64, 2, 2, 2]
            ]
        );
        assert_eq!(enc.stem.convs.len(), 1);
        assert_eq!(enc.stages[0].convs.len(), 1);
        assert!(
            enc.stages
                .iter()
                .skip(1)
                .all(|s| s.convs.len() == 2 && s.blocks.is_empty())
        );
        assert!(enc.check_input([1, 2, 16, 16, 12]).is_err());
        assert!(enc.check_input([1, 1, 16, 16, 16]).is_err());
    }

    #[test]
    fn nndetection_encoder_has_the_computed_parameter_count() {
        // Two bias-free 3³ convs + IN per stage; stage widths 32, 64, 128, 256, 320, 320.
        let widths = [32usize, 64, 128, 256, 320, 320];
        let mut expected = 0;
        let mut prev = 1;
        for &w in &widths {
            expected += prev * w * 27 + 2 * w + w * w * 27 + 2 * w;
            prev = w;
        }
        let cfg = RetUNetEncoderConfig::nndetection(1, 6);
        assert_eq!(cfg.widths, widths);
        let enc = cfg.init::<TestBackend>(&test_device()).unwrap();
        assert_eq!(enc.num_params(), expected);
        // ≈ 14.0 M as computed in the reference notes.
        assert!((13_900_000..14_100_000).contains(&expected), "{expected}");
    }

    #[test]
    fn invalid_settings_are_rejected_with_the_field_name() {
        let mut cfg = RetUNetEncoderConfig::tiny(1);
        cfg.strides[0] = [2, 2, 2];
        assert!(
            cfg.init::<TestBackend>(&test_device())
                .unwrap_err()
                .to_string()
                .contains("encoder.strides")
        );
        let cfg = RetUNetEncoderConfig {
            kernel_sizes: vec![[3, 3, 3]],
            ..RetUNetEncoderConfig::tiny(1)
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("encoder.kernel_sizes")
        );
    }
}
