//! Detection heads shared across levels (classifier, regressor) and the segmentation head.

use crate::nn::conv::Conv3d;
use burn::module::{Initializer, Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::nn::NnError;
use crate::nn::blocks::{Activation, ConvGroupNormAct, WeightInit, conv3d};

const HEAD_INIT: WeightInit = WeightInit::Normal { std: 0.01 };

fn hidden_convs<B: Backend>(
    in_channels: usize,
    channels: usize,
    num_convs: usize,
    num_groups: usize,
    device: &B::Device,
) -> Result<Vec<ConvGroupNormAct<B>>, NnError> {
    (0..num_convs)
        .map(|i| {
            let cin = if i == 0 { in_channels } else { channels };
            ConvGroupNormAct::new(
                [cin, channels],
                num_groups,
                Activation::Relu,
                HEAD_INIT,
                device,
            )
        })
        .collect()
}

/// Flatten `[N, A·K, d, h, w]` to `[N, d·h·w·A, K]`: positions in raster order, anchors inner.
fn flatten_level<B: Backend>(x: Tensor<B, 5>, k: usize) -> Tensor<B, 3> {
    flatten_level_scaled(x, k, None)
}

/// [`flatten_level`] times a learned `scale` (`[1]`), one op on the CPU kernels.
fn flatten_level_scaled<B: Backend>(
    x: Tensor<B, 5>,
    k: usize,
    scale: Option<Tensor<B, 1>>,
) -> Tensor<B, 3> {
    let [n, c, d, h, w] = x.dims();
    let a = c / k;
    let fused_scale = scale
        .clone()
        .unwrap_or_else(|| Tensor::ones([1], &x.device()));
    if let Some(y) = crate::nn::conv::layout::channels_last_scaled(&x, &fused_scale) {
        return y.reshape([n, d * h * w * a, k]);
    }
    let y = x.permute([0, 2, 3, 4, 1]).reshape([n, d * h * w * a, k]);
    match scale {
        Some(scale) => y * scale.reshape([1, 1, 1]),
        None => y,
    }
}

/// The classification head: hidden conv-GroupNorm-ReLU units, then a 3³ conv to A·C logits.
#[derive(Module, Debug)]
pub struct ClassifierHead<B: Backend> {
    /// Hidden units.
    pub convs: Vec<ConvGroupNormAct<B>>,
    /// Output conv (bias = −ln((1 − π) / π), π = 0.01).
    pub output: Conv3d<B>,
    /// Foreground classes C.
    pub num_classes: usize,
    /// Anchors per position A.
    pub anchors_per_position: usize,
}

impl<B: Backend> ClassifierHead<B> {
    /// A classifier for `in_channels` features; all weights N(0, 0.01).
    pub fn new(
        in_channels: usize,
        channels: usize,
        num_convs: usize,
        num_groups: usize,
        anchors_per_position: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Result<Self, NnError> {
        let convs = hidden_convs(in_channels, channels, num_convs, num_groups, device)?;
        let last = if num_convs == 0 {
            in_channels
        } else {
            channels
        };
        let out_channels = anchors_per_position * num_classes;
        let mut output = conv3d(
            [last, out_channels],
            [3, 3, 3],
            [1, 1, 1],
            true,
            HEAD_INIT,
            device,
        );
        let prior: f64 = 0.01;
        output.bias = Some(
            Initializer::Constant {
                value: -((1.0 - prior) / prior).ln(),
            }
            .init([out_channels], device),
        );
        Ok(Self {
            convs,
            output,
            num_classes,
            anchors_per_position,
        })
    }

    /// Class logits of every anchor of every level.
    ///
    /// # Shapes
    /// - levels: `[N, C_fpn, d_l, h_l, w_l]`
    /// - output: `[N, Σ_l d_l·h_l·w_l·A, C]`
    pub fn forward(&self, levels: &[Tensor<B, 5>]) -> Tensor<B, 3> {
        let outs = levels
            .iter()
            .map(|x| {
                let mut x = x.clone();
                for c in &self.convs {
                    x = c.forward(x);
                }
                flatten_level(self.output.forward(x), self.num_classes)
            })
            .collect();
        Tensor::cat(outs, 1)
    }
}

/// The regression head: hidden units, a 3³ conv to A·6 deltas, times a learned scale per level.
#[derive(Module, Debug)]
pub struct RegressorHead<B: Backend> {
    /// Hidden units.
    pub convs: Vec<ConvGroupNormAct<B>>,
    /// Output conv.
    pub output: Conv3d<B>,
    /// One learned scale per detection level (init 1).
    pub scales: Param<Tensor<B, 1>>,
    /// Anchors per position A.
    pub anchors_per_position: usize,
}

impl<B: Backend> RegressorHead<B> {
    /// A regressor for `in_channels` features over `num_levels` levels; weights N(0, 0.01).
    pub fn new(
        in_channels: usize,
        channels: usize,
        num_convs: usize,
        num_groups: usize,
        anchors_per_position: usize,
        num_levels: usize,
        device: &B::Device,
    ) -> Result<Self, NnError> {
        let convs = hidden_convs(in_channels, channels, num_convs, num_groups, device)?;
        let last = if num_convs == 0 {
            in_channels
        } else {
            channels
        };
        let output = conv3d(
            [last, anchors_per_position * 6],
            [3, 3, 3],
            [1, 1, 1],
            true,
            HEAD_INIT,
            device,
        );
        Ok(Self {
            convs,
            output,
            scales: Initializer::Ones.init([num_levels], device),
            anchors_per_position,
        })
    }

    /// Box deltas of every anchor of every level.
    ///
    /// # Shapes
    /// - levels: `[N, C_fpn, d_l, h_l, w_l]`
    /// - output: `[N, Σ_l d_l·h_l·w_l·A, 6]`
    pub fn forward(&self, levels: &[Tensor<B, 5>]) -> Tensor<B, 3> {
        let scales = self.scales.val();
        let outs = levels
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let mut x = x.clone();
                for c in &self.convs {
                    x = c.forward(x);
                }
                let scale = scales.clone().slice(i..i + 1);
                flatten_level_scaled(self.output.forward(x), 6, Some(scale))
            })
            .collect();
        Tensor::cat(outs, 1)
    }
}

/// The segmentation head on the finest FPN level: a 1³ conv (bias) to S channels.
#[derive(Module, Debug)]
pub struct SegmentationHead<B: Backend> {
    /// The 1³ conv.
    pub conv: Conv3d<B>,
}

impl<B: Backend> SegmentationHead<B> {
    /// A head mapping `in_channels` to `out_channels` logits.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        init: WeightInit,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: conv3d(
                [in_channels, out_channels],
                [1, 1, 1],
                [1, 1, 1],
                true,
                init,
                device,
            ),
        }
    }

    /// # Shapes
    /// - input: `[N, C_fpn, D, H, W]`; output: `[N, S, D, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};
    use burn::tensor::TensorData;

    #[test]
    fn heads_flatten_levels_positions_then_anchors_then_channels() {
        let device = test_device();
        let cls = ClassifierHead::<TestBackend>::new(8, 8, 2, 2, 27, 3, &device).unwrap();
        let reg = RegressorHead::<TestBackend>::new(8, 8, 2, 2, 27, 2, &device).unwrap();
        let levels = vec![
            Tensor::<TestBackend, 5>::random(
                [2, 8, 4, 4, 2],
                burn::tensor::Distribution::Default,
                &device,
            ),
            Tensor::<TestBackend, 5>::random(
                [2, 8, 2, 2, 1],
                burn::tensor::Distribution::Default,
                &device,
            ),
        ];
        assert_eq!(cls.forward(&levels).dims(), [2, (32 + 4) * 27, 3]);
        assert_eq!(reg.forward(&levels).dims(), [2, (32 + 4) * 27, 6]);
        // Initial logits are near the prior: sigmoid ≈ 0.01.
        let logits = tensor_values(cls.forward(&levels));
        let mean = logits.iter().sum::<f64>() / logits.len() as f64;
        assert!((mean + (99.0f64).ln()).abs() < 0.1, "{mean}");

        // Flattening: channel a·K + k of position p lands at row p·A + a, column k.
        let x = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(
                (0..2 * 3 * 2).map(|v| v as f32).collect::<Vec<_>>(),
                [1, 4, 1, 1, 3],
            ),
            &device,
        );
        // 4 channels = A 2 × K 2, three positions (w = 0, 1, 2).
        let flat = tensor_values(flatten_level(x, 2));
        // channel c at position w has value c·3 + w.
        let expected: Vec<f64> = (0..3)
            .flat_map(|w| (0..4).map(move |c| (c * 3 + w) as f64))
            .collect();
        assert_eq!(flat, expected);
    }
}
