//! The memory model that replaces nnDetection's measurement in the patch-size search.
//!
//! nnDetection builds the candidate network on the GPU, runs ten mixed-precision training
//! steps with Adam at batch size 4 beside a 768 MiB safety tensor, and accepts the patch when
//! the reserved memory stays below an RTX 2080 Ti's 11,523,260,416 B minus 11 MiB. detlab
//! estimates that number from the network's shape instead, so a plan is the same on every
//! machine and needs no GPU:
//!
//! ```text
//! total = reserve + parameters × parameter_bytes + batch × per-sample activations
//! per-sample activations =
//!     Σ encoder conv units      C_out × voxels × unit_bytes
//!   + Σ U-FPN levels            (lateral + upsampled + sum + output conv) × C × voxels × tensor_bytes
//!   + Σ detection levels        2 heads × head_convs × C_head × voxels × unit_bytes
//!                               + (27 · classes + 27 · 6) × voxels × tensor_bytes
//!   + anchors                   27 × Σ level voxels × anchor_bytes
//!   + segmentation head         channels × voxels × segmentation_bytes
//!   + input                     C_in × voxels × 4
//! ```
//!
//! The per-element constants count what PyTorch keeps for the backward pass under autocast:
//! a conv-norm-activation unit keeps its fp16 conv output, the fp32 normalised values and the
//! fp16 activation (2 + 4 + 2 = 8 B); plain fp16 tensors keep 2 B; every anchor keeps its fp32
//! logits and deltas, its box and its matching quality (4 × (classes + 6 + 6 + 1) B, taken as
//! 4 × 14 for one class); parameters cost their fp32 value, gradient and two Adam moments plus
//! the fp16 copy autocast caches (4 + 4 + 8 + 2 = 18 B). The model ignores allocator
//! fragmentation and cuDNN workspaces (covered by the reserve), so it is an estimate: with the
//! defaults nnDetection's 1 mm network at 160 × 128² is estimated below the budget and 160² × 128
//! above it.

use serde::{Deserialize, Serialize};

use crate::nn::RetinaUNetConfig;
use crate::nn::encoder::{EncoderConfig, cumulative};
use crate::nn::retina_unet::SegmentationMode;
use crate::nn::retina_unet::anchors::ANCHORS_PER_POSITION;
use crate::nn::retina_unet::fpn::fpn_level_channels;

/// Constants of the memory estimate (see the module docs for the formula).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryModel {
    /// Memory a plan must stay below, bytes (nnDetection: an RTX 2080 Ti, 11,523,260,416 B − 11 MiB).
    pub budget_bytes: f64,
    /// Memory held back first, bytes (nnDetection's 768 MiB safety tensor).
    pub reserve_bytes: f64,
    /// Bytes per parameter: fp32 value, gradient, two Adam moments and an fp16 copy (18).
    pub parameter_bytes: f64,
    /// Bytes kept per output element of a conv-norm-activation unit (8: fp16 + fp32 + fp16).
    pub unit_bytes: f64,
    /// Bytes per element of a plain fp16 tensor (2).
    pub tensor_bytes: f64,
    /// Bytes kept per anchor and sample: fp32 logits, deltas, box and matching quality (56).
    pub anchor_bytes: f64,
    /// Bytes per element of the segmentation output: fp16 logits, fp32 softmax and target (10).
    pub segmentation_bytes: f64,
}

impl Default for MemoryModel {
    fn default() -> Self {
        Self {
            budget_bytes: 11_523_260_416.0 - 11.0 * 1024.0 * 1024.0,
            reserve_bytes: 768.0 * 1024.0 * 1024.0,
            parameter_bytes: 18.0,
            unit_bytes: 8.0,
            tensor_bytes: 2.0,
            anchor_bytes: 56.0,
            segmentation_bytes: 10.0,
        }
    }
}

/// The estimate for one network, patch and batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// Parameters of the network.
    pub parameters: usize,
    /// Bytes of the parameters with their gradients and optimiser state.
    pub parameter_bytes: f64,
    /// Bytes of the activations of the whole batch.
    pub activation_bytes: f64,
    /// Reserve + parameters + activations.
    pub total_bytes: f64,
    /// Whether `total_bytes` is below the budget.
    pub fits: bool,
}

impl MemoryModel {
    /// Estimate the training memory of `network` on `batch` patches of `patch_size`.
    pub fn estimate(
        &self,
        network: &RetinaUNetConfig,
        patch_size: [usize; 3],
        batch: usize,
    ) -> MemoryEstimate {
        let encoder = &network.encoder;
        let widths = encoder.widths();
        let kernels = encoder.kernel_sizes();
        let strides = encoder.strides();
        let levels = network.resolved_detection_levels();
        let stages = widths.len();
        let channels = fpn_level_channels(
            stages,
            levels[0],
            network.fpn_channels,
            network.fpn_min_channels,
        );
        let voxels: Vec<f64> = cumulative(strides)
            .iter()
            .map(|s| {
                (0..3)
                    .map(|a| (patch_size[a] / s[a].max(1)) as f64)
                    .product()
            })
            .collect();
        let kernel_volume = |k: [usize; 3]| k.iter().product::<usize>();
        let with_segmentation = network.segmentation != SegmentationMode::None;
        let mut outputs = levels.clone();
        if with_segmentation && levels[0] != 0 {
            outputs.insert(0, 0);
        }

        // Parameters.
        // Conv units per stage (residual blocks hold two; their 1³ shortcuts are not counted).
        let (units, conv_bias): (Vec<usize>, bool) = match encoder {
            EncoderConfig::Retunet(c) => (vec![c.convs_per_stage; stages], c.conv_bias),
            EncoderConfig::Resenc(c) => (
                c.blocks_per_stage.iter().map(|b| 2 * b).collect(),
                c.conv_bias,
            ),
        };
        let mut parameters = 0usize;
        let mut previous = encoder.in_channels();
        for s in 0..stages {
            for u in 0..units[s] {
                let cin = if u == 0 { previous } else { widths[s] };
                parameters += cin * widths[s] * kernel_volume(kernels[s])
                    + if conv_bias { widths[s] } else { 0 }
                    + 2 * widths[s];
            }
            previous = widths[s];
        }
        for l in levels[0]..stages {
            parameters += widths[l] * channels[l] + channels[l];
            if l + 1 < stages {
                parameters +=
                    channels[l + 1] * channels[l] * kernel_volume(strides[l + 1]) + channels[l];
            }
        }
        for &l in &outputs {
            parameters += channels[l] * channels[l] * kernel_volume(kernels[l]) + channels[l];
        }
        let head = network.head_channels;
        let hidden = |cin: usize| cin * head * 27 + head + 2 * head;
        let (head_body, head_last) = match network.head_convs {
            0 => (0, network.fpn_channels),
            n => (hidden(network.fpn_channels) + (n - 1) * hidden(head), head),
        };
        let class_out = ANCHORS_PER_POSITION * network.num_classes;
        let box_out = ANCHORS_PER_POSITION * 6;
        parameters += head_body + head_last * class_out * 27 + class_out;
        parameters += head_body + head_last * box_out * 27 + box_out + levels.len();
        let segmentation_channels = network.segmentation_channels();
        parameters += channels[0] * segmentation_channels + segmentation_channels;

        // Activations of one sample.
        let mut per_sample = encoder.in_channels() as f64 * voxels[0] * 4.0;
        for s in 0..stages {
            per_sample += (units[s] * widths[s]) as f64 * voxels[s] * self.unit_bytes;
        }
        for l in levels[0]..stages {
            let tensors = 1.0 + if l + 1 < stages { 2.0 } else { 0.0 };
            per_sample += tensors * channels[l] as f64 * voxels[l] * self.tensor_bytes;
        }
        for &l in &outputs {
            per_sample += channels[l] as f64 * voxels[l] * self.tensor_bytes;
        }
        let mut positions = 0.0;
        for &l in &levels {
            per_sample += (2 * network.head_convs * head) as f64 * voxels[l] * self.unit_bytes;
            per_sample += (class_out + box_out) as f64 * voxels[l] * self.tensor_bytes;
            positions += voxels[l];
        }
        per_sample += ANCHORS_PER_POSITION as f64 * positions * self.anchor_bytes;
        per_sample += segmentation_channels as f64 * voxels[0] * self.segmentation_bytes;

        let parameter_bytes = parameters as f64 * self.parameter_bytes;
        let activation_bytes = batch as f64 * per_sample;
        let total_bytes = self.reserve_bytes + parameter_bytes + activation_bytes;
        MemoryEstimate {
            parameters,
            parameter_bytes,
            activation_bytes,
            total_bytes,
            fits: total_bytes < self.budget_bytes,
        }
    }
}
