//! The U-Net decoder of dynamic-network-architectures (`UNetDecoder`), used by pre-training:
//! from the bottleneck up, each level upsamples with a transposed conv (kernel = stride =
//! the encoder's stride of the level below), concatenates the skip, and runs conv units back
//! to the skip's width. A final 1³ conv (nnU-Net's "seg layer") maps the full-resolution
//! features to `out_channels`.
//!
//! Parameter paths mirror PyTorch's: `transpconvs.i.weight`, `stages.i.convs.j.conv.weight`,
//! `output.weight` (PyTorch: `seg_layers.L.weight`).

use crate::nn::conv::ConvTranspose3d;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::NnError;
use super::blocks::{
    Activation, ConvNormAct, ConvNormActConfig, WeightInit, conv3d, transposed_upsampling,
};
use super::conv::Conv3d;
use super::encoder::EncoderConfig;

/// Settings of a [`UNetDecoder`] mirroring an encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetDecoderConfig {
    /// Widths of the encoder's stages (finest first); level `i` decodes back to `widths[i]`.
    pub widths: Vec<usize>,
    /// Strides of the encoder's stages (finest first).
    pub strides: Vec<[usize; 3]>,
    /// Conv units per decoder level (ResEnc: 1, plain nnU-Net: 2).
    pub convs_per_level: usize,
    /// Channels of the final 1³ output conv.
    pub out_channels: usize,
    /// Bias of the 3³ convs and transposed convs.
    pub conv_bias: bool,
    /// Non-linearity of the conv units.
    pub activation: Activation,
    /// Weight initialisation.
    pub init: WeightInit,
}

impl Default for UNetDecoderConfig {
    fn default() -> Self {
        Self {
            widths: vec![32, 64],
            strides: vec![[1, 1, 1], [2, 2, 2]],
            convs_per_level: 1,
            out_channels: 1,
            conv_bias: true,
            activation: Activation::LeakyRelu,
            init: WeightInit::KaimingNormal,
        }
    }
}

impl UNetDecoderConfig {
    /// The decoder nnssl attaches to `encoder` (one conv per level, LeakyReLU, bias), with
    /// `out_channels` outputs.
    pub fn for_encoder(encoder: &EncoderConfig, out_channels: usize) -> Self {
        Self {
            widths: encoder.widths().to_vec(),
            strides: encoder.strides().to_vec(),
            out_channels,
            ..Self::default()
        }
    }

    /// Check the settings; the error names the field.
    pub fn validate(&self) -> Result<(), NnError> {
        if self.widths.len() < 2 {
            return Err(NnError::config(
                "decoder.widths",
                "a U-Net decoder needs at least two encoder stages",
            ));
        }
        if self.strides.len() != self.widths.len() {
            return Err(NnError::config(
                "decoder.strides",
                format!(
                    "has {} entries for {} stages",
                    self.strides.len(),
                    self.widths.len()
                ),
            ));
        }
        if self.convs_per_level == 0 || self.out_channels == 0 {
            return Err(NnError::config(
                "decoder",
                "convs_per_level and out_channels must be at least 1",
            ));
        }
        crate::nn::encoder::check_repeats("decoder.convs_per_level", self.convs_per_level)?;
        // A stride is also the transposed convolution's kernel size (fuzz find: a stride of
        // 65536 ran past the 20 s watchdog).
        let most = crate::nn::encoder::MAX_KERNEL_SIZE;
        if let Some(s) = self.strides.iter().flatten().find(|&&s| s == 0 || s > most) {
            return Err(NnError::config(
                "decoder.strides",
                format!("{s} is not in 1..={most}"),
            ));
        }
        if self.out_channels > MAX_OUT_CHANNELS {
            return Err(NnError::config(
                "decoder.out_channels",
                format!("{} is more than {MAX_OUT_CHANNELS}", self.out_channels),
            ));
        }
        // Sizes read from a file are bounded before allocating: per level, a transposed
        // convolution and `convs_per_level` 3³ convolutions (counted as 3³ for both).
        let level_convs = vec![self.convs_per_level.saturating_add(1); self.widths.len()];
        crate::nn::encoder::check_parameter_count(
            "decoder.convs_per_level",
            &self.widths,
            &vec![[3, 3, 3]; self.widths.len()],
            1,
            &level_convs,
        )
    }

    /// Build the decoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<UNetDecoder<B>, NnError> {
        self.validate()?;
        let levels = self.widths.len() - 1;
        let mut transposed = Vec::with_capacity(levels);
        let mut stages = Vec::with_capacity(levels);
        // Level 0 decodes the bottleneck into stage L-2's resolution, as PyTorch orders them.
        for level in 0..levels {
            let below = self.widths[levels - level];
            let skip = self.widths[levels - level - 1];
            let stride = self.strides[levels - level];
            transposed.push(transposed_upsampling(
                [below, skip],
                stride,
                self.conv_bias,
                self.init,
                device,
            ));
            let convs = (0..self.convs_per_level)
                .map(|j| {
                    let input = if j == 0 { 2 * skip } else { skip };
                    ConvNormActConfig {
                        conv_bias: self.conv_bias,
                        activation: self.activation,
                        init: self.init,
                        ..ConvNormActConfig::new(input, skip)
                    }
                    .init(device)
                })
                .collect();
            stages.push(DecoderStage { convs });
        }
        let output = conv3d(
            [self.widths[0], self.out_channels],
            [1, 1, 1],
            [1, 1, 1],
            true,
            self.init,
            device,
        );
        Ok(UNetDecoder {
            transpconvs: transposed,
            stages,
            output,
        })
    }
}

/// The conv units of one decoder level.
#[derive(Module, Debug)]
pub struct DecoderStage<B: Backend> {
    /// Conv units (the first takes the concatenation of upsampled features and skip).
    pub convs: Vec<ConvNormAct<B>>,
}

/// A U-Net decoder (see the module docs).
#[derive(Module, Debug)]
pub struct UNetDecoder<B: Backend> {
    /// Transposed convs, coarsest level first.
    pub transpconvs: Vec<ConvTranspose3d<B>>,
    /// Conv units per level, coarsest level first.
    pub stages: Vec<DecoderStage<B>>,
    /// The final 1³ conv to `out_channels`.
    pub output: Conv3d<B>,
}

impl<B: Backend> UNetDecoder<B> {
    /// Decode the encoder's skips (finest first) to full-resolution features `[N, widths[0], …]`.
    pub fn features(&self, skips: &[Tensor<B, 5>]) -> Tensor<B, 5> {
        let levels = self.stages.len();
        let mut x = skips[levels].clone();
        for level in 0..levels {
            let skip = skips[levels - level - 1].clone();
            x = self.transpconvs[level].forward(x);
            x = Tensor::cat(vec![x, skip], 1);
            for unit in &self.stages[level].convs {
                x = unit.forward(x);
            }
        }
        x
    }

    /// Decode the skips and apply the output conv: `[N, out_channels, D, H, W]`.
    pub fn forward(&self, skips: &[Tensor<B, 5>]) -> Tensor<B, 5> {
        self.output.forward(self.features(skips))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ResEncConfig;
    use crate::nn::testing::{TestBackend, test_device};

    #[test]
    fn decoder_restores_the_input_resolution_with_the_requested_channels() {
        let device = test_device();
        let encoder_config = EncoderConfig::Resenc(ResEncConfig::tiny(2));
        let encoder = encoder_config.init::<TestBackend>(&device).unwrap();
        let decoder = UNetDecoderConfig::for_encoder(&encoder_config, 2)
            .init::<TestBackend>(&device)
            .unwrap();
        let x = Tensor::<TestBackend, 5>::ones([1, 2, 16, 16, 8], &device);
        let y = decoder.forward(&encoder.forward(x));
        assert_eq!(y.dims(), [1, 2, 16, 16, 8]);
        let names: Vec<String> = crate::nn::inspect::parameters(&decoder)
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert!(
            names.contains(&"transpconvs.0.weight".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"stages.2.convs.0.conv.weight".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn a_single_stage_encoder_is_rejected() {
        let config = UNetDecoderConfig {
            widths: vec![8],
            strides: vec![[1, 1, 1]],
            ..Default::default()
        };
        assert!(config.validate().is_err());
    }
}

/// The most output channels a decoder may declare (a corrupt file otherwise).
const MAX_OUT_CHANNELS: usize = 4096;
