//! The U-FPN decoder (nnDetection `UFPNModular`): 1³ laterals, transposed-conv top-down
//! upsampling with additive merges, and one 3³ output conv per returned level.

use crate::nn::conv::ConvTranspose3d;
use burn::module::Module;

use crate::nn::conv::Conv3d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::nn::NnError;
use crate::nn::blocks::{WeightInit, conv3d, transposed_upsampling};

/// Output channels per level: `fpn_channels` for levels ≥ `first_detection_level`, halving per
/// finer level down to `min_channels` (nnDetection: 128 → levels 0..5 = 32, 64, 128, 128, 128, 128).
pub fn fpn_level_channels(
    num_levels: usize,
    first_detection_level: usize,
    fpn_channels: usize,
    min_channels: usize,
) -> Vec<usize> {
    (0..num_levels)
        .map(|l| {
            if l >= first_detection_level {
                fpn_channels
            } else {
                (fpn_channels >> (first_detection_level - l).min(63))
                    .max(min_channels)
                    .min(fpn_channels)
            }
        })
        .collect()
}

/// The U-FPN. Levels are indexed like the encoder stages (0 = finest); only the levels from
/// the finest returned one up to the coarsest have laterals.
#[derive(Module, Debug)]
pub struct UFpn<B: Backend> {
    /// 1³ lateral convs (bias) for levels `first_level..num_levels`.
    pub laterals: Vec<Conv3d<B>>,
    /// Transposed convs from level l+1 to level l, for l in `first_level..num_levels−1`.
    pub upsamplings: Vec<ConvTranspose3d<B>>,
    /// Output convs, one per entry of `output_levels`.
    pub outputs: Vec<Conv3d<B>>,
    /// Levels returned by `forward`, finest first.
    pub output_levels: Vec<usize>,
    /// Finest level with a lateral (= `output_levels[0]`).
    pub first_level: usize,
    /// Output channels of every level (0..num_levels).
    pub channels: Vec<usize>,
}

impl<B: Backend> UFpn<B> {
    /// Build a U-FPN over encoder stages with `encoder_channels` and per-stage `strides`,
    /// returning `output_levels` (sorted, unique) with `level_channels` channels and `kernel_sizes[l]`
    /// output convs.
    pub fn new(
        encoder_channels: &[usize],
        strides: &[[usize; 3]],
        kernel_sizes: &[[usize; 3]],
        level_channels: &[usize],
        output_levels: &[usize],
        init: WeightInit,
        device: &B::Device,
    ) -> Result<Self, NnError> {
        let num_levels = encoder_channels.len();
        if output_levels.is_empty() || output_levels.windows(2).any(|w| w[0] >= w[1]) {
            return Err(NnError::config(
                "detection_levels",
                format!("levels {output_levels:?} must be sorted and unique"),
            ));
        }
        if *output_levels.last().unwrap() >= num_levels {
            return Err(NnError::config(
                "detection_levels",
                format!("levels {output_levels:?} exceed the encoder's {num_levels} stages"),
            ));
        }
        let first_level = output_levels[0];
        let laterals = (first_level..num_levels)
            .map(|l| {
                conv3d(
                    [encoder_channels[l], level_channels[l]],
                    [1, 1, 1],
                    [1, 1, 1],
                    true,
                    init,
                    device,
                )
            })
            .collect();
        let upsamplings = (first_level..num_levels - 1)
            .map(|l| {
                transposed_upsampling(
                    [level_channels[l + 1], level_channels[l]],
                    strides[l + 1],
                    true,
                    init,
                    device,
                )
            })
            .collect();
        let outputs = output_levels
            .iter()
            .map(|&l| {
                conv3d(
                    [level_channels[l], level_channels[l]],
                    kernel_sizes[l],
                    [1, 1, 1],
                    true,
                    init,
                    device,
                )
            })
            .collect();
        Ok(Self {
            laterals,
            upsamplings,
            outputs,
            output_levels: output_levels.to_vec(),
            first_level,
            channels: level_channels.to_vec(),
        })
    }

    /// Top-down pass over the encoder skips.
    ///
    /// # Shapes
    /// - skips: `[N, encoder_channels[l], …]` for every level l (finest first)
    /// - output i: `[N, channels[output_levels[i]], size of level output_levels[i]]`
    pub fn forward(&self, skips: Vec<Tensor<B, 5>>) -> Vec<Tensor<B, 5>> {
        let num_levels = skips.len();
        let mut merged: Vec<Option<Tensor<B, 5>>> = vec![None; num_levels];
        let mut skips: Vec<Option<Tensor<B, 5>>> = skips.into_iter().map(Some).collect();
        let mut above: Option<Tensor<B, 5>> = None;
        for l in (self.first_level..num_levels).rev() {
            let lateral = self.laterals[l - self.first_level]
                .forward(skips[l].take().expect("each skip used once"));
            let p = match above.take() {
                Some(coarser) => lateral + self.upsamplings[l - self.first_level].forward(coarser),
                None => lateral,
            };
            merged[l] = Some(p.clone());
            above = Some(p);
        }
        self.output_levels
            .iter()
            .zip(&self.outputs)
            .map(|(&l, conv)| conv.forward(merged[l].take().expect("merged level exists")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, test_device};

    #[test]
    fn level_channels_halve_below_the_detection_levels() {
        assert_eq!(
            fpn_level_channels(6, 2, 128, 8),
            vec![32, 64, 128, 128, 128, 128]
        );
        assert_eq!(fpn_level_channels(4, 1, 16, 8), vec![8, 16, 16, 16]);
        assert_eq!(fpn_level_channels(5, 4, 32, 8), vec![8, 8, 8, 16, 32]);
    }

    #[test]
    fn fpn_returns_the_requested_levels_with_their_shapes() {
        let device = test_device();
        let enc = [4, 8, 16, 32];
        let strides = [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 2]];
        let channels = fpn_level_channels(4, 1, 16, 8);
        let fpn = UFpn::<TestBackend>::new(
            &enc,
            &strides,
            &[[3, 3, 3]; 4],
            &channels,
            &[0, 1, 2, 3],
            WeightInit::KaimingNormal,
            &device,
        )
        .unwrap();
        let sizes = [[16, 16, 8], [8, 8, 4], [4, 4, 4], [2, 2, 2]];
        let skips = enc
            .iter()
            .zip(sizes)
            .map(|(&c, s)| Tensor::<TestBackend, 5>::ones([2, c, s[0], s[1], s[2]], &device))
            .collect();
        let out = fpn.forward(skips);
        let dims: Vec<[usize; 5]> = out.iter().map(|t| t.dims()).collect();
        assert_eq!(
            dims,
            vec![
                [2, 8, 16, 16, 8],
                [2, 16, 8, 8, 4],
                [2, 16, 4, 4, 4],
                [2, 16, 2, 2, 2]
            ]
        );
        // Only detection levels 2 and 3: no laterals for the finer levels.
        let coarse = UFpn::<TestBackend>::new(
            &enc,
            &strides,
            &[[3, 3, 3]; 4],
            &channels,
            &[2, 3],
            WeightInit::KaimingNormal,
            &device,
        )
        .unwrap();
        assert_eq!(coarse.laterals.len(), 2);
        assert_eq!(coarse.upsamplings.len(), 1);
        assert!(
            UFpn::<TestBackend>::new(
                &enc,
                &strides,
                &[[3, 3, 3]; 4],
                &channels,
                &[3, 2],
                WeightInit::KaimingNormal,
                &device
            )
            .is_err()
        );
        assert!(
            UFpn::<TestBackend>::new(
                &enc,
                &strides,
                &[[3, 3, 3]; 4],
                &channels,
                &[4],
                WeightInit::KaimingNormal,
                &device
            )
            .is_err()
        );
    }
}
