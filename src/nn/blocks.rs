//! Building blocks shared by every network: normalisation layers, conv-norm-activation
//! units, the ResNet-D residual block, average pooling and transposed-conv upsampling.
//!
//! Parameter names follow PyTorch / dynamic-network-architectures (`conv.weight`,
//! `norm.weight`, `norm.bias`) so that pretrained state dicts map onto ours key by key.

use burn::module::{Initializer, Module, Param};
use burn::nn::PaddingConfig3d;
use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};

use crate::nn::conv::{Conv3d, ConvTranspose3d};
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::NnError;

/// Non-linearity after a normalisation layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// LeakyReLU with negative slope 0.01 (nnU-Net, ResEnc).
    #[default]
    LeakyRelu,
    /// ReLU (nnDetection's Retina U-Net encoder and heads).
    Relu,
    /// No activation (the second conv of a residual branch).
    Identity,
}

impl Activation {
    /// Apply the activation to a tensor of any rank.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::LeakyRelu => activation::leaky_relu(x, 0.01),
            Activation::Relu => activation::relu(x),
            Activation::Identity => x,
        }
    }

    /// The activation of one value (what [`Self::apply`] computes per element).
    #[inline(always)]
    pub fn scalar(self, x: f32) -> f32 {
        match self {
            Activation::LeakyRelu => {
                if x < 0.0 {
                    x * 0.01
                } else {
                    x
                }
            }
            Activation::Relu => x.max(0.0),
            Activation::Identity => x,
        }
    }

    /// The derivative at input `x`, with burn's conventions at 0 (LeakyReLU 1, ReLU 0).
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::LeakyRelu => {
                if x < 0.0 {
                    0.01
                } else {
                    1.0
                }
            }
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Identity => 1.0,
        }
    }
}

/// How convolution weights are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// He / Kaiming normal with a = 0.01 (fan-in), biases 0: nnU-Net's `InitWeights_He`.
    #[default]
    KaimingNormal,
    /// PyTorch's default conv init (Kaiming uniform a = √5, uniform bias): nnDetection's
    /// encoder and decoder when no init is applied.
    PytorchDefault,
    /// Normal(0, std) weights, biases 0 (RetinaNet heads use std = 0.01).
    Normal {
        /// Standard deviation of the weights.
        std: f64,
    },
}

impl WeightInit {
    fn weight_initializer(self) -> Initializer {
        match self {
            WeightInit::KaimingNormal => {
                let a: f64 = 0.01;
                Initializer::KaimingNormal {
                    gain: (2.0 / (1.0 + a * a)).sqrt(),
                    fan_out_only: false,
                }
            }
            WeightInit::PytorchDefault => Initializer::KaimingUniform {
                gain: 1.0 / 3.0f64.sqrt(),
                fan_out_only: false,
            },
            WeightInit::Normal { std } => Initializer::Normal { mean: 0.0, std },
        }
    }

    fn zero_bias(self) -> bool {
        !matches!(self, WeightInit::PytorchDefault)
    }
}

/// A 3D convolution with "same" padding `(k - 1) / 2`, initialised by `init`.
pub fn conv3d<B: Backend>(
    channels: [usize; 2],
    kernel_size: [usize; 3],
    stride: [usize; 3],
    bias: bool,
    init: WeightInit,
    device: &B::Device,
) -> Conv3d<B> {
    let padding = PaddingConfig3d::Explicit(
        (kernel_size[0] - 1) / 2,
        (kernel_size[1] - 1) / 2,
        (kernel_size[2] - 1) / 2,
    );
    let mut conv = Conv3dConfig::new(channels, kernel_size)
        .with_stride(stride)
        .with_padding(padding)
        .with_bias(bias)
        .with_initializer(init.weight_initializer())
        .init(device);
    if bias && init.zero_bias() {
        conv.bias = Some(Initializer::Zeros.init([channels[1]], device));
    }
    Conv3d::from(conv)
}

/// A transposed convolution with kernel = stride (U-Net / U-FPN upsampling by `stride`).
pub fn transposed_upsampling<B: Backend>(
    channels: [usize; 2],
    stride: [usize; 3],
    bias: bool,
    init: WeightInit,
    device: &B::Device,
) -> ConvTranspose3d<B> {
    let mut conv = ConvTranspose3dConfig::new(channels, stride)
        .with_stride(stride)
        .with_bias(bias)
        .with_initializer(init.weight_initializer())
        .init(device);
    if bias && init.zero_bias() {
        conv.bias = Some(Initializer::Zeros.init([channels[1]], device));
    }
    ConvTranspose3d::from(conv)
}

/// [`group_norm`] of a `[N, C, D, H, W]` map followed by `activation`: one fused op (forward
/// and backward) on the CPU kernels, the two composed otherwise.
pub fn group_norm_activation<B: Backend>(
    x: Tensor<B, 5>,
    num_groups: usize,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
    activation: Activation,
) -> Tensor<B, 5> {
    if let Some(y) = crate::nn::conv::norm::fused_group_norm_activation(
        &x, None, num_groups, &weight, &bias, epsilon, activation,
    ) {
        return y;
    }
    activation.apply(group_norm(x, num_groups, weight, bias, epsilon))
}

/// Group normalisation of a `[N, C, ...]` tensor with per-channel affine `weight`, `bias`.
///
/// Statistics per (sample, group) over all channels of the group and all voxels, biased
/// variance, as PyTorch's `GroupNorm` / `InstanceNorm3d` (groups = channels).
pub fn group_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    num_groups: usize,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let shape = x.shape();
    let dims = x.dims();
    if D == 5 {
        // One fused op (forward and backward) on the CPU instead of a dozen composed ones.
        let dims5: [usize; 5] = std::array::from_fn(|i| dims[i]);
        let x5 = x.clone().reshape(dims5);
        if let Some(y) =
            crate::nn::conv::norm::fused_group_norm(&x5, num_groups, &weight, &bias, epsilon)
        {
            return y.reshape(shape);
        }
    }
    let (n, c) = (dims[0], dims[1]);
    let len = shape.num_elements() / (n * num_groups);
    let grouped = x.reshape([n, num_groups, len]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped - mean;
    let var = centered.clone().square().mean_dim(2);
    let normalized = (centered / var.add_scalar(epsilon).sqrt()).reshape(shape);
    let mut affine_shape = [1usize; D];
    affine_shape[1] = c;
    normalized * weight.reshape(affine_shape) + bias.reshape(affine_shape)
}

/// Instance normalisation for 5D `[N, C, D, H, W]` feature maps (affine, no running stats).
#[derive(Module, Debug)]
pub struct InstanceNorm3d<B: Backend> {
    /// Per-channel scale γ, shape `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Per-channel shift β, shape `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> InstanceNorm3d<B> {
    /// A new instance norm over `channels` with γ = 1 (or 0 when `zero_weight`), β = 0.
    pub fn new(channels: usize, epsilon: f64, zero_weight: bool, device: &B::Device) -> Self {
        let weight = if zero_weight {
            Initializer::Zeros
        } else {
            Initializer::Ones
        };
        Self {
            weight: weight.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            epsilon,
        }
    }

    /// Normalise each (sample, channel) over its voxels.
    ///
    /// # Shapes
    /// - input and output: `[N, C, D, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_activated(x, Activation::Identity)
    }

    /// [`Self::forward`] followed by `activation`, fused into one op where the CPU kernels apply.
    pub fn forward_activated(&self, x: Tensor<B, 5>, activation: Activation) -> Tensor<B, 5> {
        let channels = x.dims()[1];
        group_norm_activation(
            x,
            channels,
            self.weight.val(),
            self.bias.val(),
            self.epsilon,
            activation,
        )
    }
}

/// Group normalisation for 5D feature maps (affine), used in the detection heads.
#[derive(Module, Debug)]
pub struct GroupNorm3d<B: Backend> {
    /// Per-channel scale γ, shape `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Per-channel shift β, shape `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Number of channel groups (divides C).
    pub num_groups: usize,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> GroupNorm3d<B> {
    /// A new group norm; fails when `num_groups` does not divide `channels`.
    pub fn new(
        channels: usize,
        num_groups: usize,
        epsilon: f64,
        device: &B::Device,
    ) -> Result<Self, NnError> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(NnError::config(
                "num_groups",
                format!("{num_groups} groups do not divide {channels} channels"),
            ));
        }
        Ok(Self {
            weight: Initializer::Ones.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            num_groups,
            epsilon,
        })
    }

    /// Normalise each (sample, group) over its channels and voxels.
    ///
    /// # Shapes
    /// - input and output: `[N, C, D, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_activated(x, Activation::Identity)
    }

    /// [`Self::forward`] followed by `activation`, fused into one op where the CPU kernels apply.
    pub fn forward_activated(&self, x: Tensor<B, 5>, activation: Activation) -> Tensor<B, 5> {
        group_norm_activation(
            x,
            self.num_groups,
            self.weight.val(),
            self.bias.val(),
            self.epsilon,
            activation,
        )
    }
}

/// Settings of a [`ConvNormAct`] unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNormActConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel size per axis (padding is `(k - 1) / 2`).
    pub kernel_size: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Whether the convolution has a bias.
    pub conv_bias: bool,
    /// Non-linearity after the norm.
    pub activation: Activation,
    /// Instance-norm epsilon.
    pub norm_epsilon: f64,
    /// Weight initialisation of the convolution.
    pub init: WeightInit,
    /// Initialise the norm's γ to 0 (last norm of a residual branch).
    pub zero_norm_weight: bool,
}

impl ConvNormActConfig {
    /// A 3³ stride-1 unit with bias, LeakyReLU, eps 1e-5 and Kaiming init.
    pub fn new(in_channels: usize, out_channels: usize) -> Self {
        Self {
            channels: [in_channels, out_channels],
            kernel_size: [3, 3, 3],
            stride: [1, 1, 1],
            conv_bias: true,
            activation: Activation::LeakyRelu,
            norm_epsilon: 1e-5,
            init: WeightInit::KaimingNormal,
            zero_norm_weight: false,
        }
    }

    /// Build the unit.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvNormAct<B> {
        ConvNormAct {
            conv: conv3d(
                self.channels,
                self.kernel_size,
                self.stride,
                self.conv_bias,
                self.init,
                device,
            ),
            norm: InstanceNorm3d::new(
                self.channels[1],
                self.norm_epsilon,
                self.zero_norm_weight,
                device,
            ),
            activation: self.activation,
        }
    }
}

/// Convolution → instance norm → activation (nnU-Net's `ConvDropoutNormReLU`).
#[derive(Module, Debug)]
pub struct ConvNormAct<B: Backend> {
    /// The convolution.
    pub conv: Conv3d<B>,
    /// The instance norm.
    pub norm: InstanceNorm3d<B>,
    /// The non-linearity.
    pub activation: Activation,
}

impl<B: Backend> ConvNormAct<B> {
    /// # Shapes
    /// - input: `[N, C_in, D, H, W]`
    /// - output: `[N, C_out, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.norm
            .forward_activated(self.conv.forward(x), self.activation)
    }
}

/// A detection-head unit: 3³ conv (bias) → GroupNorm → activation.
#[derive(Module, Debug)]
pub struct ConvGroupNormAct<B: Backend> {
    /// The convolution.
    pub conv: Conv3d<B>,
    /// The group norm.
    pub norm: GroupNorm3d<B>,
    /// The non-linearity.
    pub activation: Activation,
}

impl<B: Backend> ConvGroupNormAct<B> {
    /// A head unit with `channels` in and out, `num_groups` norm groups and N(0, `std`) weights.
    pub fn new(
        channels: [usize; 2],
        num_groups: usize,
        activation: Activation,
        init: WeightInit,
        device: &B::Device,
    ) -> Result<Self, NnError> {
        Ok(Self {
            conv: conv3d(channels, [3, 3, 3], [1, 1, 1], true, init, device),
            norm: GroupNorm3d::new(channels[1], num_groups, 1e-5, device)?,
            activation,
        })
    }

    /// # Shapes
    /// - input: `[N, C_in, D, H, W]`; output: `[N, C_out, D, H, W]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.norm
            .forward_activated(self.conv.forward(x), self.activation)
    }
}

/// Average pooling with kernel = stride (non-overlapping windows), as `AvgPool3d(s, s)`.
///
/// Trailing voxels that do not fill a window are dropped (PyTorch's floor mode). Built from a
/// reshape and a mean, so autodiff comes for free.
///
/// # Shapes
/// - input: `[N, C, D, H, W]`; output: `[N, C, ⌊D/k0⌋, ⌊H/k1⌋, ⌊W/k2⌋]`
pub fn avg_pool3d<B: Backend>(x: Tensor<B, 5>, kernel: [usize; 3]) -> Tensor<B, 5> {
    if kernel == [1, 1, 1] {
        return x;
    }
    if let Some(y) = crate::nn::conv::pool::avg_pool3d(&x, kernel) {
        return y;
    }
    let [n, c, d, h, w] = x.dims();
    let (od, oh, ow) = (d / kernel[0], h / kernel[1], w / kernel[2]);
    let x = if od * kernel[0] != d || oh * kernel[1] != h || ow * kernel[2] != w {
        x.slice([
            0..n,
            0..c,
            0..od * kernel[0],
            0..oh * kernel[1],
            0..ow * kernel[2],
        ])
    } else {
        x
    };
    let x: Tensor<B, 6> = x.reshape([n * c * od, kernel[0], oh, kernel[1], ow, kernel[2]]);
    let x = x.mean_dim(5).mean_dim(3).mean_dim(1);
    x.reshape([n, c, od, oh, ow])
}

/// Settings of a [`BasicBlockD`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BasicBlockDConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel size of both 3³ convolutions.
    pub kernel_size: [usize; 3],
    /// Stride of the first convolution (and of the shortcut's average pool).
    pub stride: [usize; 3],
    /// Bias of the two main-path convolutions (the 1³ shortcut conv never has one).
    pub conv_bias: bool,
    /// Non-linearity after conv1's norm and after the addition.
    pub activation: Activation,
    /// Weight initialisation.
    pub init: WeightInit,
    /// Initialise the residual branch's last norm γ to 0 (nnU-Net's `init_last_bn_before_add_to_0`).
    pub zero_init_residual: bool,
}

impl BasicBlockDConfig {
    /// Build the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BasicBlockD<B> {
        let [cin, cout] = self.channels;
        let unit = |channels, stride, activation, zero| ConvNormActConfig {
            channels,
            kernel_size: self.kernel_size,
            stride,
            conv_bias: self.conv_bias,
            activation,
            norm_epsilon: 1e-5,
            init: self.init,
            zero_norm_weight: zero,
        };
        let skip = (cin != cout).then(|| {
            ConvNormActConfig {
                kernel_size: [1, 1, 1],
                conv_bias: false,
                ..unit([cin, cout], [1, 1, 1], Activation::Identity, false)
            }
            .init(device)
        });
        BasicBlockD {
            conv1: unit([cin, cout], self.stride, self.activation, false).init(device),
            conv2: unit(
                [cout, cout],
                [1, 1, 1],
                Activation::Identity,
                self.zero_init_residual,
            )
            .init(device),
            skip,
            skip_pool: self.stride,
            activation: self.activation,
        }
    }
}

/// ResNet-D basic block: `act(IN(conv2(act(IN(conv1(x))))) + shortcut(x))`, where the shortcut
/// is identity, or AvgPool(stride) then (when channels change) 1³ conv (no bias) + IN.
#[derive(Module, Debug)]
pub struct BasicBlockD<B: Backend> {
    /// First unit (strided, with activation).
    pub conv1: ConvNormAct<B>,
    /// Second unit (no activation).
    pub conv2: ConvNormAct<B>,
    /// 1³ projection of the shortcut when the channel count changes.
    pub skip: Option<ConvNormAct<B>>,
    /// Average-pool kernel of the shortcut (= the block's stride).
    pub skip_pool: [usize; 3],
    /// Non-linearity after the addition.
    pub activation: Activation,
}

impl<B: Backend> BasicBlockD<B> {
    /// # Shapes
    /// - input: `[N, C_in, D, H, W]` (sizes divisible by the stride)
    /// - output: `[N, C_out, D/s, H/s, W/s]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let main = self.conv2.forward(self.conv1.forward(x.clone()));
        let mut shortcut = avg_pool3d(x, self.skip_pool);
        if let Some(skip) = &self.skip {
            shortcut = skip.forward(shortcut);
        }
        self.activation.apply(main + shortcut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};
    use burn::tensor::TensorData;

    #[test]
    fn instance_norm_matches_hand_computed_values() {
        let device = test_device();
        // One sample, two channels, 2×1×2 voxels each.
        let values = [1.0f32, 2.0, 3.0, 4.0, -1.0, 1.0, -1.0, 1.0];
        let x = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(values.to_vec(), [1, 2, 2, 1, 2]),
            &device,
        );
        let mut norm = InstanceNorm3d::<TestBackend>::new(2, 1e-5, false, &device);
        norm.weight = Param::from_tensor(Tensor::from_floats([2.0, 1.0], &device));
        norm.bias = Param::from_tensor(Tensor::from_floats([0.5, 0.0], &device));
        let y = tensor_values(norm.forward(x));
        // Channel 0: mean 2.5, biased var 1.25.
        let s0 = (1.25f64 + 1e-5).sqrt();
        let expected0: Vec<f64> = [1.0, 2.0, 3.0, 4.0]
            .iter()
            .map(|v| 2.0 * (v - 2.5) / s0 + 0.5)
            .collect();
        // Channel 1: mean 0, var 1.
        let s1 = (1.0f64 + 1e-5).sqrt();
        let expected1: Vec<f64> = [-1.0, 1.0, -1.0, 1.0].iter().map(|v| v / s1).collect();
        let expected: Vec<f64> = expected0.into_iter().chain(expected1).collect();
        assert_close(&y, &expected, 1e-5);
    }

    #[test]
    fn group_norm_pools_statistics_over_the_channels_of_a_group() {
        let device = test_device();
        // Four channels, two groups; each channel has 2 voxels.
        let values = [0.0f32, 2.0, 4.0, 6.0, 1.0, 1.0, 3.0, 3.0];
        let x = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(values.to_vec(), [1, 4, 1, 1, 2]),
            &device,
        );
        let norm = GroupNorm3d::<TestBackend>::new(4, 2, 1e-5, &device).unwrap();
        let y = tensor_values(norm.forward(x));
        // Group 0 = {0, 2, 4, 6}: mean 3, var 5. Group 1 = {1, 1, 3, 3}: mean 2, var 1.
        let s0 = (5.0f64 + 1e-5).sqrt();
        let s1 = (1.0f64 + 1e-5).sqrt();
        let expected = [
            -3.0 / s0,
            -1.0 / s0,
            1.0 / s0,
            3.0 / s0,
            -1.0 / s1,
            -1.0 / s1,
            1.0 / s1,
            1.0 / s1,
        ];
        assert_close(&y, &expected, 1e-5);
        assert!(GroupNorm3d::<TestBackend>::new(6, 4, 1e-5, &device).is_err());
    }

    #[test]
    fn avg_pool_averages_non_overlapping_windows_and_drops_the_remainder() {
        let device = test_device();
        let values: Vec<f32> = (0..2 * 5 * 4).map(|v| v as f32).collect();
        let x = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(values.clone(), [1, 1, 2, 5, 4]),
            &device,
        );
        let y = avg_pool3d(x, [2, 2, 2]);
        assert_eq!(y.dims(), [1, 1, 1, 2, 2]);
        let at = |d: usize, h: usize, w: usize| values[d * 20 + h * 4 + w] as f64;
        let mut expected = Vec::new();
        for oh in 0..2 {
            for ow in 0..2 {
                let mut s = 0.0;
                for d in 0..2 {
                    for h in 0..2 {
                        for w in 0..2 {
                            s += at(d, 2 * oh + h, 2 * ow + w);
                        }
                    }
                }
                expected.push(s / 8.0);
            }
        }
        assert_close(&tensor_values(y), &expected, 1e-6);
    }

    #[test]
    fn conv_norm_act_and_residual_blocks_have_the_documented_shapes() {
        let device = test_device();
        let x = Tensor::<TestBackend, 5>::random(
            [2, 3, 8, 8, 8],
            burn::tensor::Distribution::Default,
            &device,
        );
        let mut cfg = ConvNormActConfig::new(3, 4);
        cfg.stride = [2, 2, 1];
        let unit = cfg.init::<TestBackend>(&device);
        assert_eq!(unit.forward(x.clone()).dims(), [2, 4, 4, 4, 8]);
        assert_eq!(unit.num_params(), 4 * 3 * 27 + 4 + 8);

        let block_cfg = BasicBlockDConfig {
            channels: [3, 6],
            kernel_size: [3, 3, 3],
            stride: [2, 2, 2],
            conv_bias: true,
            activation: Activation::LeakyRelu,
            init: WeightInit::KaimingNormal,
            zero_init_residual: true,
        };
        let block = block_cfg.init::<TestBackend>(&device);
        let y = block.forward(x.clone());
        assert_eq!(y.dims(), [2, 6, 4, 4, 4]);
        // conv1 + conv2 (with bias and IN) + 1³ shortcut without bias + IN.
        assert_eq!(
            block.num_params(),
            (6 * 3 * 27 + 6 + 12) + (6 * 6 * 27 + 6 + 12) + (6 * 3 + 12)
        );
        // With the residual branch zero-initialised the block is act(shortcut(x)).
        let shortcut = block
            .skip
            .as_ref()
            .unwrap()
            .forward(avg_pool3d(x.clone(), [2, 2, 2]));
        let expected = tensor_values(activation::leaky_relu(shortcut, 0.01));
        assert_close(&tensor_values(y), &expected, 1e-5);

        let identity = BasicBlockDConfig {
            channels: [3, 3],
            stride: [1, 1, 1],
            ..block_cfg
        }
        .init::<TestBackend>(&device);
        assert!(identity.skip.is_none());
        assert_eq!(identity.forward(x).dims(), [2, 3, 8, 8, 8]);
    }

    #[test]
    fn transposed_upsampling_multiplies_the_size_by_the_stride() {
        let device = test_device();
        let up = transposed_upsampling::<TestBackend>(
            [4, 2],
            [2, 2, 1],
            true,
            WeightInit::KaimingNormal,
            &device,
        );
        let x = Tensor::<TestBackend, 5>::ones([1, 4, 3, 3, 3], &device);
        assert_eq!(up.forward(x).dims(), [1, 2, 6, 6, 3]);
        assert_eq!(up.num_params(), 4 * 2 * 4 + 2);
    }

    #[test]
    fn kaiming_normal_init_has_the_he_standard_deviation_and_zero_bias() {
        let device = test_device();
        let conv = conv3d::<TestBackend>(
            [16, 32],
            [3, 3, 3],
            [1, 1, 1],
            true,
            WeightInit::KaimingNormal,
            &device,
        );
        let w = tensor_values(conv.weight.val());
        let n = w.len() as f64;
        let mean = w.iter().sum::<f64>() / n;
        let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let expected = (2.0f64 / (1.0 + 1e-4)).sqrt() / (16.0f64 * 27.0).sqrt();
        assert!(
            (std - expected).abs() < 0.05 * expected,
            "std {std} vs {expected}"
        );
        assert!(
            tensor_values(conv.bias.unwrap().val())
                .iter()
                .all(|&b| b == 0.0)
        );
    }
}
