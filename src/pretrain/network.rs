//! The network a pre-training run trains: the encoder that fine-tuning will reuse, plus the
//! method's pre-training-only parts (a U-Net decoder, S3D's densify step, VoCo's projector,
//! MultiTalent's extra stems and segmentation heads). Only the encoder (stem and stages) is
//! transferred by default; the rest is kept in the checkpoint for resuming and "all" transfer.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::sparse::masked_instance_norm;
use crate::nn::blocks::{WeightInit, conv3d};
use crate::nn::conv::Conv3d;
use crate::nn::encoder::Stem;
use crate::nn::{Encoder, EncoderConfig, UNetDecoder, UNetDecoderConfig};

/// A MultiTalent dataset's stem: its name and input channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StemSpec {
    /// The dataset's name (what `stem: "select:<name>"` picks in transfer).
    pub dataset: String,
    /// Its input channels.
    pub channels: usize,
}

/// A MultiTalent segmentation head: which dataset (stem) it belongs to and its classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Head name: the dataset name, or `<dataset>#<part>` when a dataset was split.
    pub name: String,
    /// Index of the dataset in [`PretrainNetworkConfig::stems`].
    pub dataset: usize,
    /// The dataset's class ids this head predicts (0-based ids of the dataset), in order;
    /// the head's channel 0 is background, channel `i + 1` is `classes[i]`.
    pub classes: Vec<usize>,
    /// Their names.
    pub class_names: Vec<String>,
}

/// What a pre-training network consists of (serialised into every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainNetworkConfig {
    /// The encoder (its stem serves `stems[0]` for MultiTalent).
    pub encoder: EncoderConfig,
    /// The U-Net decoder of MAE, S3D, Models Genesis and MultiTalent.
    pub decoder: Option<UNetDecoderConfig>,
    /// S3D's densify step (mask tokens and projections per level).
    pub densify: bool,
    /// VoCo's projector width.
    pub projector_width: Option<usize>,
    /// VoCo's projector normalises over the batch (the original VoCo) instead of per sample.
    #[serde(default)]
    pub projector_batch_norm: bool,
    /// MultiTalent: one stem per dataset (dataset 0 uses the encoder's own stem).
    pub stems: Vec<StemSpec>,
    /// MultiTalent: the segmentation heads.
    pub heads: Vec<HeadSpec>,
}

impl PretrainNetworkConfig {
    /// Bound the sizes that the encoder's own check does not cover (projector, stems, heads),
    /// so that a corrupt `pretrain.json` is an error before anything is allocated.
    fn check_sizes(&self) -> Result<(), PretrainError> {
        const MOST: usize = 1 << 16;
        let bad = |field: &str, value: usize| {
            Err(PretrainError::from(crate::nn::NnError::config(
                field,
                format!("{value} is more than {MOST} (a corrupt configuration?)"),
            )))
        };
        if let Some(w) = self.projector_width.filter(|&w| w > MOST) {
            return bad("projector_width", w);
        }
        if let Some(s) = self.stems.iter().find(|s| s.channels > MOST) {
            return bad("stems.channels", s.channels);
        }
        if let Some(h) = self.heads.iter().find(|h| h.classes.len() > MOST) {
            return bad("heads.classes", h.classes.len());
        }
        // Within those bounds the parts can still declare billions of weights (a projector
        // of width 65536 has 2 · 65536² of them); count them against the encoder's budget.
        let widths = self.encoder.widths();
        let first = widths.first().copied().unwrap_or(0) as u128;
        // Every stem is a copy of the encoder's first convolution for other input channels.
        let stem_kernel: u128 = self.encoder.kernel_sizes().first().map_or(0, |k| {
            k.iter()
                .fold(1u128, |volume, &x| volume.saturating_mul(x as u128))
        });
        if let Some(w) = self.projector_width {
            let input: u128 = widths.iter().map(|&w| w as u128).sum();
            let w = w as u128;
            crate::nn::encoder::check_weight_budget(
                "projector_width",
                input
                    .saturating_mul(w)
                    .saturating_add(w.saturating_mul(w).saturating_mul(2)),
            )?;
        }
        let stems: u128 = self
            .stems
            .iter()
            .map(|s| {
                (s.channels as u128)
                    .saturating_mul(first)
                    .saturating_mul(stem_kernel)
            })
            .fold(0, u128::saturating_add);
        crate::nn::encoder::check_weight_budget("stems.channels", stems)?;
        let heads: u128 = self
            .heads
            .iter()
            .map(|h| (h.classes.len() as u128 + 1).saturating_mul(first))
            .fold(0, u128::saturating_add);
        crate::nn::encoder::check_weight_budget("heads.classes", heads)?;
        Ok(())
    }

    /// Build the network, seeding nothing (seed the device first for reproducible weights).
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<PretrainNetwork<B>, PretrainError> {
        self.check_sizes()?;
        let encoder = self.encoder.init::<B>(device)?;
        let decoder = self
            .decoder
            .as_ref()
            .map(|d| d.init::<B>(device))
            .transpose()?;
        let widths = self.encoder.widths().to_vec();
        let densify = self.densify.then(|| Densify::new(&widths, device));
        let projector = self
            .projector_width
            .map(|w| Projector::new(widths.iter().sum(), w, self.projector_batch_norm, device));
        let stems = self
            .stems
            .iter()
            .skip(1)
            .map(|s| self.encoder.init_stem::<B>(s.channels, device))
            .collect();
        let feature_width = widths[0];
        let heads = self
            .heads
            .iter()
            .map(|h| {
                conv3d(
                    [feature_width, h.classes.len() + 1],
                    [1, 1, 1],
                    [1, 1, 1],
                    true,
                    WeightInit::KaimingNormal,
                    device,
                )
            })
            .collect();
        let network = PretrainNetwork {
            encoder,
            decoder,
            densify,
            projector,
            stems,
            heads,
        };
        // Clones and saved weights must agree with the module (see `inspect::materialize`).
        crate::nn::inspect::materialize(&network);
        Ok(network)
    }
}

/// S3D's densify step: per level, a non-affine masked norm, a learnable mask token filling the
/// masked voxels, and a 3³ projection (identity at level 0).
#[derive(Module, Debug)]
pub struct Densify<B: Backend> {
    /// One mask token per level, `[C_level]`.
    pub tokens: Vec<Param<Tensor<B, 1>>>,
    /// The projection of every level but the first.
    pub projections: Vec<Conv3d<B>>,
}

impl<B: Backend> Densify<B> {
    fn new(widths: &[usize], device: &B::Device) -> Self {
        // nnssl: truncated normal, std 0.02, cut at ±0.02.
        let tokens = widths
            .iter()
            .map(|&c| {
                let t: Tensor<B, 1> = Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init::<B, 1, _>([c], device)
                .val()
                .clamp(-0.02, 0.02);
                // A fresh leaf tensor: a parameter cannot be the output of an operation.
                Param::from_tensor(Tensor::from_data(t.into_data(), device))
            })
            .collect();
        let projections = widths
            .iter()
            .skip(1)
            .map(|&c| {
                conv3d(
                    [c, c],
                    [3, 3, 3],
                    [1, 1, 1],
                    true,
                    WeightInit::KaimingNormal,
                    device,
                )
            })
            .collect();
        Self {
            tokens,
            projections,
        }
    }

    /// Densify the sparse skips; `masks[i]` is level i's mask (`None`: dense level).
    pub fn forward(
        &self,
        skips: Vec<Tensor<B, 5>>,
        masks: &[Option<Tensor<B, 5>>],
    ) -> Vec<Tensor<B, 5>> {
        skips
            .into_iter()
            .enumerate()
            .map(|(level, f)| {
                let mask = masks[level].as_ref();
                let mut f = masked_instance_norm(f, mask, None, 1e-5);
                if let Some(m) = mask {
                    // token_c · (1 − m) as a batched outer product [1, C, 1] × [N, 1, V]: burn's
                    // broadcasting product walks every voxel of every channel with strided
                    // indices, and its gradient for the token is a reduction of the same kind.
                    let [n, c, d, h, w] = f.dims();
                    let token = self.tokens[level].val().reshape([1, c, 1]);
                    let hidden = m.clone().neg().add_scalar(1.0).reshape([n, 1, d * h * w]);
                    f = f + token.matmul(hidden).reshape([n, c, d, h, w]);
                }
                match level {
                    0 => f,
                    _ => self.projections[level - 1].forward(f),
                }
            })
            .collect()
    }
}

/// VoCo's projector: Linear → per-embedding norm → ReLU, twice, then Linear (nnssl normalises
/// each embedding over its own features, a LayerNorm without affine parameters).
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    /// The three linear layers.
    pub layers: Vec<Linear<B>>,
    /// Normalise the hidden layers over the batch (dim 0) instead of per sample (dim 1).
    pub batch_norm: bool,
}

impl<B: Backend> Projector<B> {
    fn new(input: usize, width: usize, batch_norm: bool, device: &B::Device) -> Self {
        let layers = [(input, width), (width, width), (width, width)]
            .into_iter()
            .map(|(i, o)| LinearConfig::new(i, o).init(device))
            .collect();
        Self { layers, batch_norm }
    }

    /// Project pooled features `[N, F]` to embeddings `[N, width]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i + 1 < self.layers.len() {
                let dim = if self.batch_norm { 0 } else { 1 };
                let mean = x.clone().mean_dim(dim);
                let centered = x - mean;
                let var = centered.clone().square().mean_dim(dim);
                x = relu(centered / var.add_scalar(1e-5).sqrt());
            }
        }
        x
    }
}

/// The pre-training network (see the module docs).
#[derive(Module, Debug)]
pub struct PretrainNetwork<B: Backend> {
    /// The encoder that fine-tuning reuses.
    pub encoder: Encoder<B>,
    /// The U-Net decoder (all methods but VoCo).
    pub decoder: Option<UNetDecoder<B>>,
    /// S3D's densify step.
    pub densify: Option<Densify<B>>,
    /// VoCo's projector.
    pub projector: Option<Projector<B>>,
    /// MultiTalent's stems of datasets 1, 2, … (dataset 0 uses `encoder.stem`).
    pub stems: Vec<Stem<B>>,
    /// MultiTalent's segmentation heads.
    pub heads: Vec<Conv3d<B>>,
}

impl<B: Backend> PretrainNetwork<B> {
    /// The stem of MultiTalent dataset `dataset` (0, and every dataset when the stem is
    /// shared, use the encoder's own).
    pub fn stem(&self, dataset: usize) -> &Stem<B> {
        match dataset {
            d if d == 0 || self.stems.is_empty() => &self.encoder.stem,
            d => &self.stems[d - 1],
        }
    }

    /// VoCo's embedding of crops `[N, C, D, H, W]`: every stage output average-pooled over
    /// space, concatenated, projected. Returns `[N, width]`.
    pub fn embed(&self, crops: Tensor<B, 5>) -> Tensor<B, 2> {
        let skips = self.encoder.forward(crops);
        let pooled: Vec<Tensor<B, 2>> = skips
            .into_iter()
            .map(|s| {
                let [n, c, d, h, w] = s.dims();
                s.reshape([n, c, d * h * w]).mean_dim(2).reshape([n, c])
            })
            .collect();
        let features = Tensor::cat(pooled, 1);
        match &self.projector {
            Some(p) => p.forward(features),
            None => features,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ResEncConfig;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};
    use burn::tensor::Distribution;

    fn config(in_channels: usize) -> PretrainNetworkConfig {
        let encoder = EncoderConfig::Resenc(ResEncConfig::tiny(in_channels));
        PretrainNetworkConfig {
            decoder: Some(UNetDecoderConfig::for_encoder(&encoder, in_channels)),
            encoder,
            densify: true,
            projector_width: Some(16),
            projector_batch_norm: false,
            stems: vec![],
            heads: vec![],
        }
    }

    // Fuzz finds (fuzz/regressions/pretrain_state/): sizes declared by a corrupt pretrain.json
    // are refused before anything is allocated, never a capacity-overflow panic or an OOM.
    #[test]
    fn declared_sizes_of_a_corrupt_configuration_are_refused_before_allocating() {
        let device = test_device();
        let corrupt = |edit: &dyn Fn(&mut ResEncConfig)| {
            let mut c = config(1);
            let EncoderConfig::Resenc(e) = &mut c.encoder else {
                unreachable!()
            };
            edit(e);
            c.init::<TestBackend>(&device).err().map(|e| e.to_string())
        };
        let huge_kernel = corrupt(&|e| e.kernel_sizes[0][1] = usize::MAX).unwrap();
        assert!(huge_kernel.contains("kernel_sizes"), "{huge_kernel}");
        let many_blocks = corrupt(&|e| e.blocks_per_stage[0] = 1 << 30).unwrap();
        assert!(many_blocks.contains("blocks_per_stage"), "{many_blocks}");
        let wide = corrupt(&|e| e.widths[1] = 1 << 40).unwrap();
        assert!(wide.contains("weights"), "{wide}");
        // A million thin blocks: 216 M weights, within the budget, but a module each (fuzz
        // find oom-5e8ad99acdf6496e, 4.7 GB).
        let thin = corrupt(&|e| {
            e.widths[0] = 2;
            e.blocks_per_stage[0] = 1_000_000;
        })
        .unwrap();
        assert!(
            thin.contains("blocks_per_stage") && thin.contains("more than 64"),
            "{thin}"
        );
        // Widths whose sum overflows (the projector's input; fuzz find crash-af41fa4e0f72e2a7).
        let overflowing = corrupt(&|e| e.widths = vec![usize::MAX; 4]).unwrap();
        assert!(overflowing.contains("weights"), "{overflowing}");
        let mut c = config(1);
        c.projector_width = Some(1 << 40);
        assert!(c.init::<TestBackend>(&device).is_err());
        // At the width bound itself the projector declares 8.6 G weights (fuzz find
        // oom-bfc75562c3998e42, a 17 GB allocation).
        c.projector_width = Some(1 << 16);
        let err = c.init::<TestBackend>(&device).err().unwrap().to_string();
        assert!(
            err.contains("projector_width") && err.contains("weights"),
            "{err}"
        );
        let mut c = config(1);
        c.stems = (0..3)
            .map(|i| StemSpec {
                dataset: format!("d{i}"),
                channels: 1 << 16,
            })
            .collect();
        c.stems.extend((0..300).map(|i| StemSpec {
            dataset: format!("e{i}"),
            channels: 1 << 16,
        }));
        let err = c.init::<TestBackend>(&device).err().unwrap().to_string();
        assert!(err.contains("stems.channels"), "{err}");
    }

    #[test]
    fn densify_puts_the_token_exactly_at_masked_voxels_and_level_zero_is_not_projected() {
        let device = test_device();
        let net = config(1).init::<TestBackend>(&device).unwrap();
        let densify = net.densify.unwrap();
        assert_eq!(densify.projections.len(), 3);
        let m = super::super::mask::BlockMask {
            grid: [1, 1, 2],
            cells: vec![vec![1.0, 0.0]],
        };
        let mut pyramid = super::super::sparse::MaskPyramid::<TestBackend>::new(&m, &device);
        let mask = pyramid.at([2, 2, 2]).unwrap();
        let f = Tensor::<TestBackend, 5>::ones([1, 8, 2, 2, 2], &device) * mask.clone();
        let out = densify.forward(vec![f], &[Some(mask.clone())]);
        let values = tensor_values(out[0].clone());
        let token = tensor_values(densify.tokens[0].val());
        let mv = tensor_values(mask);
        for c in 0..8 {
            for v in 0..8 {
                let x = values[c * 8 + v];
                if mv[v] == 0.0 {
                    assert!((x - token[c]).abs() < 1e-7, "token at masked voxel");
                } else {
                    assert_eq!(
                        x, 0.0,
                        "constant visible values normalise to 0, unprojected"
                    );
                }
            }
        }
        assert!(token.iter().all(|t| t.abs() <= 0.02));
    }

    #[test]
    fn the_token_gradient_sums_the_output_gradient_over_masked_voxels_per_channel() {
        let device = test_device();
        let net = config(1).init::<TestBackend>(&device).unwrap();
        let densify = net.densify.unwrap();
        // Two samples with different masks, so that the batched product must not mix them.
        let m = super::super::mask::BlockMask {
            grid: [1, 2, 2],
            cells: vec![vec![1.0, 0.0, 0.0, 1.0], vec![0.0, 0.0, 1.0, 0.0]],
        };
        let mut pyramid = super::super::sparse::MaskPyramid::<TestBackend>::new(&m, &device);
        let mask = pyramid.at([2, 4, 4]).unwrap();
        let f = Tensor::<TestBackend, 5>::random([2, 8, 2, 4, 4], Distribution::Default, &device);
        let weights =
            Tensor::<TestBackend, 5>::random([2, 8, 2, 4, 4], Distribution::Default, &device);
        let out = densify.forward(vec![f], &[Some(mask.clone())]);
        let grads = (out[0].clone() * weights.clone()).sum().backward();
        let got = tensor_values(densify.tokens[0].grad(&grads).unwrap());
        let (w, mv) = (tensor_values(weights), tensor_values(mask));
        for c in 0..8 {
            let expected: f64 = (0..2)
                .flat_map(|n| (0..32).map(move |v| (n, v)))
                .filter(|&(n, v)| mv[n * 32 + v] == 0.0)
                .map(|(n, v)| w[(n * 8 + c) * 32 + v] as f64)
                .sum();
            assert!(
                (got[c] as f64 - expected).abs() < 1e-5,
                "channel {c}: {} vs {expected}",
                got[c]
            );
        }
    }

    #[test]
    fn embeddings_have_the_projector_width() {
        let device = test_device();
        let net = config(1).init::<TestBackend>(&device).unwrap();
        let z = net.embed(Tensor::ones([3, 1, 8, 8, 8], &device));
        assert_eq!(z.dims(), [3, 16]);
    }
}
