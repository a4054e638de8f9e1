//! The residual encoder of nnU-Net ResEnc / nnssl: a stem (one conv unit) and stages of
//! ResNet-D basic blocks. [`ResEncConfig::resenc_l`] is ResEnc-L exactly as nnssl builds it.
//!
//! Parameter paths match dynamic-network-architectures' `ResidualEncoder` (under `encoder.`):
//! `stem.convs.0.conv.weight`, `stages.S.blocks.B.conv1.conv.weight`, `…conv2.norm.bias`;
//! the only difference is the shortcut projection, ours `…blocks.0.skip.conv.weight` versus
//! PyTorch's `…blocks.0.skip.{0|1}.conv.weight` (index 1 when an average pool precedes it).

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Encoder, EncoderKind, EncoderStage, Stem, validate_stages};
use crate::nn::NnError;
use crate::nn::blocks::{Activation, BasicBlockDConfig, ConvNormActConfig, WeightInit};

/// Settings of a residual (ResEnc) encoder; the default is ResEnc-L with one input channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResEncConfig {
    /// Input channels (modalities).
    pub in_channels: usize,
    /// Output channels per stage (the stem outputs `widths[0]`).
    pub widths: Vec<usize>,
    /// Residual blocks per stage.
    pub blocks_per_stage: Vec<usize>,
    /// Stride of each stage's first block.
    pub strides: Vec<[usize; 3]>,
    /// Kernel size of each stage's convs (and of the stem: `kernel_sizes[0]`).
    pub kernel_sizes: Vec<[usize; 3]>,
    /// Bias of the 3³ convs (the 1³ shortcut convs never have one).
    pub conv_bias: bool,
    /// Non-linearity (LeakyReLU 0.01).
    pub activation: Activation,
    /// Weight initialisation.
    pub init: WeightInit,
    /// Initialise the last norm γ of every residual branch to 0 (nnU-Net does when training
    /// from scratch).
    pub zero_init_residual: bool,
}

impl Default for ResEncConfig {
    fn default() -> Self {
        Self::resenc_l(1)
    }
}

impl ResEncConfig {
    /// ResEnc-L: widths [32, 64, 128, 256, 320, 320], blocks [1, 3, 4, 6, 6, 6], strides
    /// [1, 2, 2, 2, 2, 2], 3³ kernels; 90,296,576 parameters with one input channel.
    pub fn resenc_l(in_channels: usize) -> Self {
        Self {
            in_channels,
            widths: vec![32, 64, 128, 256, 320, 320],
            blocks_per_stage: vec![1, 3, 4, 6, 6, 6],
            strides: vec![
                [1, 1, 1],
                [2, 2, 2],
                [2, 2, 2],
                [2, 2, 2],
                [2, 2, 2],
                [2, 2, 2],
            ],
            kernel_sizes: vec![[3, 3, 3]; 6],
            conv_bias: true,
            activation: Activation::LeakyRelu,
            init: WeightInit::KaimingNormal,
            zero_init_residual: true,
        }
    }

    /// A tiny 4-stage variant for tests and tutorials: widths [8, 16, 32, 64], blocks
    /// [1, 1, 2, 2], total stride 8.
    pub fn tiny(in_channels: usize) -> Self {
        Self {
            widths: vec![8, 16, 32, 64],
            blocks_per_stage: vec![1, 1, 2, 2],
            strides: vec![[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            kernel_sizes: vec![[3, 3, 3]; 4],
            ..Self::resenc_l(in_channels)
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
        if self.blocks_per_stage.len() != self.widths.len() {
            return Err(NnError::config(
                "encoder.blocks_per_stage",
                format!(
                    "has {} entries but there are {} stages",
                    self.blocks_per_stage.len(),
                    self.widths.len()
                ),
            ));
        }
        if self.blocks_per_stage.contains(&0) {
            return Err(NnError::config(
                "encoder.blocks_per_stage",
                "every stage needs at least one block",
            ));
        }
        for &blocks in &self.blocks_per_stage {
            super::check_repeats("encoder.blocks_per_stage", blocks)?;
        }
        // Two convolutions per residual block.
        let convs: Vec<usize> = self
            .blocks_per_stage
            .iter()
            .map(|b| b.saturating_mul(2))
            .collect();
        super::check_parameter_count(
            "encoder.blocks_per_stage",
            &self.widths,
            &self.kernel_sizes,
            self.in_channels,
            &convs,
        )
    }

    /// Build the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Encoder<B>, NnError> {
        self.validate()?;
        let stem = Stem {
            convs: vec![
                ConvNormActConfig {
                    channels: [self.in_channels, self.widths[0]],
                    kernel_size: self.kernel_sizes[0],
                    stride: [1, 1, 1],
                    conv_bias: self.conv_bias,
                    activation: self.activation,
                    norm_epsilon: 1e-5,
                    init: self.init,
                    zero_norm_weight: false,
                }
                .init(device),
            ],
        };
        let mut stages = Vec::with_capacity(self.widths.len());
        let mut prev = self.widths[0];
        for (s, &width) in self.widths.iter().enumerate() {
            let blocks = (0..self.blocks_per_stage[s])
                .map(|b| {
                    BasicBlockDConfig {
                        channels: [if b == 0 { prev } else { width }, width],
                        kernel_size: self.kernel_sizes[s],
                        stride: if b == 0 { self.strides[s] } else { [1, 1, 1] },
                        conv_bias: self.conv_bias,
                        activation: self.activation,
                        init: self.init,
                        zero_init_residual: self.zero_init_residual,
                    }
                    .init(device)
                })
                .collect();
            stages.push(EncoderStage {
                convs: Vec::new(),
                blocks,
            });
            prev = width;
        }
        let encoder = Encoder {
            stem,
            stages,
            kind: EncoderKind::Resenc,
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
    use crate::nn::inspect;
    use crate::nn::testing::{TestBackend, test_device};
    use burn::module::Module;
    use burn::tensor::Tensor;

    #[test]
    fn resenc_l_has_exactly_90_296_576_parameters() {
        let enc = ResEncConfig::resenc_l(1)
            .init::<TestBackend>(&test_device())
            .unwrap();
        assert_eq!(enc.num_params(), 90_296_576);
        assert_eq!(enc.stem.num_params(), 960);
        let per_stage: Vec<usize> = enc.stages.iter().map(|s| s.num_params()).collect();
        assert_eq!(
            per_stage,
            vec![
                55_488, 611_584, 3_329_280, 20_391_424, 32_718_720, 33_189_120
            ]
        );
        let blocks: Vec<usize> = enc.stages.iter().map(|s| s.blocks.len()).collect();
        assert_eq!(blocks, vec![1, 3, 4, 6, 6, 6]);
    }

    #[test]
    fn resenc_parameter_paths_follow_the_pytorch_layout() {
        let enc = ResEncConfig::tiny(1)
            .init::<TestBackend>(&test_device())
            .unwrap();
        let paths: Vec<String> = inspect::parameters(&enc)
            .into_iter()
            .map(|p| p.path)
            .collect();
        for expected in [
            "stem.convs.0.conv.weight",
            "stem.convs.0.norm.bias",
            "stages.1.blocks.0.conv1.conv.weight",
            "stages.1.blocks.0.conv2.norm.weight",
            "stages.1.blocks.0.skip.conv.weight",
            "stages.3.blocks.1.conv2.conv.bias",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "missing {expected} in {paths:?}"
            );
        }
        assert!(!paths.iter().any(|p| p.contains("skip.conv.bias")));
        assert!(
            !paths
                .iter()
                .any(|p| p.starts_with("stages.0.blocks.0.skip")),
            "stage 0 keeps channels and stride"
        );
    }

    #[test]
    fn tiny_resenc_forward_shapes_and_input_channel_dependent_stem() {
        let device = test_device();
        let enc = ResEncConfig::tiny(3).init::<TestBackend>(&device).unwrap();
        let x = Tensor::<TestBackend, 5>::ones([2, 3, 16, 16, 8], &device);
        let dims: Vec<[usize; 5]> = enc.forward(x).iter().map(|s| s.dims()).collect();
        assert_eq!(
            dims,
            vec![
                [2, 8, 16, 16, 8],
                [2, 16, 8, 8, 4],
                [2, 32, 4, 4, 2],
                [2, 64, 2, 2, 1]
            ]
        );
        assert_eq!(enc.stem.convs[0].conv.weight.dims(), [8, 3, 3, 3, 3]);
        let one = ResEncConfig::tiny(1).init::<TestBackend>(&device).unwrap();
        assert_eq!(
            enc.num_params() - one.num_params(),
            2 * 8 * 27,
            "only the stem depends on the input channels"
        );
    }
}
