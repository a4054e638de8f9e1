//! Encoders: a stem plus a list of stages, each returning a skip feature map.
//!
//! Two families share one module type, [`Encoder`]:
//! - [`retunet`]: nnDetection's Retina U-Net plain encoder (2 conv units per stage, ReLU,
//!   conv bias off).
//! - [`resenc_l`]: the residual encoder of nnU-Net ResEnc / nnssl (stem + BasicBlockD stages,
//!   LeakyReLU, conv bias on); [`ResEncConfig::resenc_l`] is the paper's ResEnc-L.
//!
//! The **stem** is a separate submodule because it is the only layer whose shape depends on
//! the number of input channels; weight transfer treats it specially.
//!
//! # Freezing
//! The encoder is the public field `encoder` of every detector. To freeze it:
//! `model.encoder = model.encoder.set_trainable(EncoderPart::All, false);` (or
//! `EncoderPart::Stages` to keep training the stem after an input-channel change). Frozen
//! parameters get no gradient, so any burn optimiser leaves them untouched; set them
//! trainable again to unfreeze. Alternatively keep all parameters trainable and pass only the
//! wanted ids to `GradientsParams::from_params` (see [`Encoder::param_ids`]).

pub mod resenc_l;
pub mod retunet;

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::NnError;
use super::blocks::{BasicBlockD, ConvNormAct};
use super::inspect;

pub use resenc_l::ResEncConfig;
pub use retunet::RetUNetEncoderConfig;

/// Which encoder family to build; the `kind` key selects it (`"retunet"` or `"resenc"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderConfig {
    /// nnDetection's plain Retina U-Net encoder.
    Retunet(RetUNetEncoderConfig),
    /// The residual ResEnc encoder (ResEnc-L and smaller variants).
    Resenc(ResEncConfig),
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig::Retunet(RetUNetEncoderConfig::default())
    }
}

impl burn::config::Config for EncoderConfig {}

impl EncoderConfig {
    /// Check the configuration without building anything.
    pub fn validate(&self) -> Result<(), NnError> {
        match self {
            EncoderConfig::Retunet(c) => c.validate(),
            EncoderConfig::Resenc(c) => c.validate(),
        }
    }

    /// Build the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Encoder<B>, NnError> {
        match self {
            EncoderConfig::Retunet(c) => c.init(device),
            EncoderConfig::Resenc(c) => c.init(device),
        }
    }

    /// Number of input channels (image modalities).
    pub fn in_channels(&self) -> usize {
        match self {
            EncoderConfig::Retunet(c) => c.in_channels,
            EncoderConfig::Resenc(c) => c.in_channels,
        }
    }

    /// Output channels of every stage.
    pub fn widths(&self) -> &[usize] {
        match self {
            EncoderConfig::Retunet(c) => &c.widths,
            EncoderConfig::Resenc(c) => &c.widths,
        }
    }

    /// Stride of every stage relative to the previous one.
    pub fn strides(&self) -> &[[usize; 3]] {
        match self {
            EncoderConfig::Retunet(c) => &c.strides,
            EncoderConfig::Resenc(c) => &c.strides,
        }
    }

    /// Conv kernel size of every stage.
    pub fn kernel_sizes(&self) -> &[[usize; 3]] {
        match self {
            EncoderConfig::Retunet(c) => &c.kernel_sizes,
            EncoderConfig::Resenc(c) => &c.kernel_sizes,
        }
    }

    /// Stride of every stage's output relative to the input (cumulative product).
    pub fn cumulative_strides(&self) -> Vec<[usize; 3]> {
        cumulative(self.strides())
    }

    /// The same encoder for another number of input channels (only the stem changes).
    pub fn with_in_channels(&self, in_channels: usize) -> Self {
        let mut config = self.clone();
        match &mut config {
            EncoderConfig::Retunet(c) => c.in_channels = in_channels,
            EncoderConfig::Resenc(c) => c.in_channels = in_channels,
        }
        config
    }

    /// Build a stem like this encoder's for `in_channels` inputs (MultiTalent's per-dataset
    /// stems), without building the stages.
    pub fn init_stem<B: Backend>(&self, in_channels: usize, device: &B::Device) -> Stem<B> {
        let (kernel, bias, activation, init) = match self {
            EncoderConfig::Retunet(c) => (c.kernel_sizes[0], c.conv_bias, c.activation, c.init),
            EncoderConfig::Resenc(c) => (c.kernel_sizes[0], c.conv_bias, c.activation, c.init),
        };
        Stem {
            convs: vec![
                crate::nn::blocks::ConvNormActConfig {
                    channels: [in_channels, self.widths()[0]],
                    kernel_size: kernel,
                    stride: [1, 1, 1],
                    conv_bias: bias,
                    activation,
                    norm_epsilon: 1e-5,
                    init,
                    zero_norm_weight: false,
                }
                .init(device),
            ],
        }
    }
}

pub(crate) fn cumulative(strides: &[[usize; 3]]) -> Vec<[usize; 3]> {
    let mut acc = [1usize; 3];
    strides
        .iter()
        .map(|s| {
            for a in 0..3 {
                acc[a] *= s[a];
            }
            acc
        })
        .collect()
}

/// Shared validation of stage lists.
pub(crate) fn validate_stages(
    widths: &[usize],
    strides: &[[usize; 3]],
    kernel_sizes: &[[usize; 3]],
    in_channels: usize,
) -> Result<(), NnError> {
    if in_channels == 0 || in_channels > MAX_IN_CHANNELS {
        return Err(NnError::config(
            "encoder.in_channels",
            format!(
                "{in_channels} is not in 1..={MAX_IN_CHANNELS} (image channels, i.e. modalities)"
            ),
        ));
    }
    if widths.is_empty() {
        return Err(NnError::config(
            "encoder.widths",
            "needs at least one stage",
        ));
    }
    if widths.contains(&0) {
        return Err(NnError::config(
            "encoder.widths",
            format!("{widths:?} contains 0"),
        ));
    }
    if strides.len() != widths.len() {
        return Err(NnError::config(
            "encoder.strides",
            format!(
                "has {} entries but there are {} stages",
                strides.len(),
                widths.len()
            ),
        ));
    }
    if kernel_sizes.len() != widths.len() {
        return Err(NnError::config(
            "encoder.kernel_sizes",
            format!(
                "has {} entries but there are {} stages",
                kernel_sizes.len(),
                widths.len()
            ),
        ));
    }
    if strides.iter().flatten().any(|&s| s == 0) {
        return Err(NnError::config(
            "encoder.strides",
            "strides must be at least 1",
        ));
    }
    if kernel_sizes.iter().flatten().any(|&k| k % 2 == 0) {
        return Err(NnError::config(
            "encoder.kernel_sizes",
            "kernel sizes must be odd",
        ));
    }
    // Sizes read from a file are bounded before anything is allocated (issue 14: a corrupt
    // model.json must be an error, not an out-of-memory).
    if let Some(k) = kernel_sizes
        .iter()
        .flatten()
        .find(|&&k| k > MAX_KERNEL_SIZE)
    {
        return Err(NnError::config(
            "encoder.kernel_sizes",
            format!("{k} is larger than {MAX_KERNEL_SIZE}"),
        ));
    }
    if let Some(s) = strides.iter().flatten().find(|&&s| s > MAX_KERNEL_SIZE) {
        return Err(NnError::config(
            "encoder.strides",
            format!("{s} is larger than {MAX_KERNEL_SIZE}"),
        ));
    }
    Ok(())
}

/// The most image channels (modalities) an encoder may take; medical detection uses 1-4.
pub const MAX_IN_CHANNELS: usize = 256;

/// The largest kernel size or stride a configuration may declare.
pub const MAX_KERNEL_SIZE: usize = 15;

/// The most convolution weights a configuration may declare: 300 M (1.2 GB as f32), three
/// times ResEnc-L's; more is a corrupt file, refused before allocating.
pub const MAX_PARAMETERS: u128 = 300_000_000;

/// Check the convolution weights that `convs[s]` convolutions per stage of `widths` (with
/// `kernel_sizes`, after a stem from `in_channels`) would allocate against [`MAX_PARAMETERS`].
pub(crate) fn check_parameter_count(
    field: &str,
    widths: &[usize],
    kernel_sizes: &[[usize; 3]],
    in_channels: usize,
    convs: &[usize],
) -> Result<(), NnError> {
    let mut total: u128 = 0;
    let mut previous = in_channels as u128;
    for ((&w, k), &n) in widths.iter().zip(kernel_sizes).zip(convs) {
        let volume: u128 = k.iter().map(|&x| x as u128).product();
        let w = w as u128;
        // The first convolution maps the previous width, the others keep this one.
        total = total
            .saturating_add(previous.saturating_mul(w).saturating_mul(volume))
            .saturating_add(
                (n as u128)
                    .saturating_mul(w)
                    .saturating_mul(w)
                    .saturating_mul(volume),
            );
        previous = w;
    }
    check_weight_budget(field, total)
}

/// The most times a configuration may repeat a layer in one place (blocks per stage,
/// convolutions per level or head, transformer layers): ResEnc-L repeats at most 6 blocks,
/// nnDetection 2 convolutions, the paper's DefDETR 6 layers. Every repeat is a module of its
/// own, kilobytes before any weight, so millions of thin layers exhaust memory within the
/// weight budget (a fuzz find: a million 2-channel blocks asked for 4.7 GB).
pub const MAX_REPEATS: usize = 64;

/// Refuse a repeat count above [`MAX_REPEATS`].
pub(crate) fn check_repeats(field: &str, count: usize) -> Result<(), NnError> {
    if count > MAX_REPEATS {
        return Err(NnError::config(
            field,
            format!("{count} is more than {MAX_REPEATS} (a corrupt or mistyped configuration?)"),
        ));
    }
    Ok(())
}

/// Refuse a configuration part that declares more than [`MAX_PARAMETERS`] weights (`total`,
/// computed in saturating u128 arithmetic), before anything is allocated.
pub(crate) fn check_weight_budget(field: &str, total: u128) -> Result<(), NnError> {
    if total > MAX_PARAMETERS {
        return Err(NnError::config(
            field,
            format!(
                "declares about {total} weights, more than the {MAX_PARAMETERS} \
                 detlab builds (a corrupt or mistyped configuration?)"
            ),
        ));
    }
    Ok(())
}

/// Which encoder family a module was built as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// Plain conv stages (Retina U-Net).
    Retunet,
    /// Residual BasicBlockD stages (ResEnc).
    Resenc,
}

/// Which parameters of an encoder an operation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderPart {
    /// Stem and stages.
    All,
    /// The stem only (the input-channel-dependent layer).
    Stem,
    /// The stages only.
    Stages,
}

/// The stem: conv units applied before the first stage (not a skip output).
#[derive(Module, Debug)]
pub struct Stem<B: Backend> {
    /// The conv units (one in both encoder families).
    pub convs: Vec<ConvNormAct<B>>,
}

impl<B: Backend> Stem<B> {
    /// # Shapes
    /// - input: `[N, C_in, D, H, W]`; output: `[N, widths[0], D, H, W]`
    pub fn forward(&self, mut x: Tensor<B, 5>) -> Tensor<B, 5> {
        for c in &self.convs {
            x = c.forward(x);
        }
        x
    }
}

/// One encoder stage: plain conv units (`convs`) or residual blocks (`blocks`); the first of
/// them carries the stage's stride.
#[derive(Module, Debug)]
pub struct EncoderStage<B: Backend> {
    /// Plain conv units (Retina U-Net); empty for residual stages.
    pub convs: Vec<ConvNormAct<B>>,
    /// Residual blocks (ResEnc); empty for plain stages.
    pub blocks: Vec<BasicBlockD<B>>,
}

impl<B: Backend> EncoderStage<B> {
    /// # Shapes
    /// - input: `[N, C_prev, D, H, W]`; output: `[N, C_stage, D/s0, H/s1, W/s2]`
    pub fn forward(&self, mut x: Tensor<B, 5>) -> Tensor<B, 5> {
        for c in &self.convs {
            x = c.forward(x);
        }
        for b in &self.blocks {
            x = b.forward(x);
        }
        x
    }
}

/// An encoder: `stem` then `stages`; `forward` returns every stage's output (the skips).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// The input-channel-dependent first layer.
    pub stem: Stem<B>,
    /// The stages, finest first.
    pub stages: Vec<EncoderStage<B>>,
    /// The family this encoder was built as.
    pub kind: EncoderKind,
    /// Output channels per stage.
    pub widths: Vec<usize>,
    /// Stride of each stage relative to the previous one.
    pub strides: Vec<[usize; 3]>,
    /// Number of input channels.
    pub in_channels: usize,
}

impl<B: Backend> Encoder<B> {
    /// Run the stem and all stages; returns the output of every stage (finest first).
    ///
    /// # Shapes
    /// - input: `[N, C_in, D, H, W]` with D, H, W divisible by the total stride
    /// - output `s`: `[N, widths[s], D / cum_stride[s][0], H / cum_stride[s][1], W / cum_stride[s][2]]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Vec<Tensor<B, 5>> {
        self.forward_stages(self.stem.forward(x))
    }

    /// Run the stages on the output of a stem (this encoder's or, for MultiTalent's
    /// per-dataset stems, another one); returns every stage's output, finest first.
    pub fn forward_stages(&self, mut x: Tensor<B, 5>) -> Vec<Tensor<B, 5>> {
        let mut skips = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            x = stage.forward(x);
            skips.push(x.clone());
        }
        skips
    }

    /// Run the stem and stages on one volume as given (no preprocessing) and return every
    /// stage's output as a volume `[C_stage, D/s, H/s, W/s]` whose spacing is the input's
    /// times the stage's stride (for teaching, inspection and checking imports).
    pub fn features(
        &self,
        volume: &crate::volume::Volume,
        device: &B::Device,
    ) -> Result<Vec<crate::volume::Volume>, NnError> {
        let (c, d, h, w) = volume.data.dim();
        self.check_input([1, c, d, h, w])?;
        let values: Vec<f32> = volume.data.iter().copied().collect();
        let x = Tensor::<B, 5>::from_data(
            burn::tensor::TensorData::new(values, [1, c, d, h, w]),
            device,
        );
        let strides = self.cumulative_strides();
        self.forward(x)
            .into_iter()
            .zip(strides)
            .map(|(t, s)| {
                let [_, c, d, h, w] = t.dims();
                let data: Vec<f32> = t
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| NnError::InvalidInput(format!("features: {e:?}")))?;
                let array = ndarray::Array4::from_shape_vec((c, d, h, w), data)
                    .map_err(|e| NnError::InvalidInput(format!("features: {e}")))?;
                let spacing: [f64; 3] = std::array::from_fn(|a| volume.spacing[a] * s[a] as f64);
                Ok(crate::volume::Volume::from_array(array, spacing))
            })
            .collect()
    }

    /// Check that an input of shape `[N, C, D, H, W]` fits this encoder.
    pub fn check_input(&self, dims: [usize; 5]) -> Result<(), NnError> {
        if dims[1] != self.in_channels {
            return Err(NnError::InvalidInput(format!(
                "the input has {} channels but the encoder expects {}",
                dims[1], self.in_channels
            )));
        }
        let total = self.total_stride();
        for a in 0..3 {
            if dims[2 + a] == 0 || !dims[2 + a].is_multiple_of(total[a]) {
                return Err(NnError::InvalidInput(format!(
                    "patch size {:?} must be divisible by the encoder's total stride {:?}",
                    &dims[2..],
                    total
                )));
            }
        }
        Ok(())
    }

    /// Stride of every stage's output relative to the input.
    pub fn cumulative_strides(&self) -> Vec<[usize; 3]> {
        cumulative(&self.strides)
    }

    /// Stride of the coarsest stage relative to the input.
    pub fn total_stride(&self) -> [usize; 3] {
        self.cumulative_strides()
            .last()
            .copied()
            .unwrap_or([1, 1, 1])
    }

    /// Mark the stem, the stages or both as trainable (`true`) or frozen (`false`).
    pub fn set_trainable(mut self, part: EncoderPart, trainable: bool) -> Self {
        if matches!(part, EncoderPart::All | EncoderPart::Stem) {
            self.stem = inspect::set_trainable(self.stem, trainable);
        }
        if matches!(part, EncoderPart::All | EncoderPart::Stages) {
            self.stages = inspect::set_trainable(self.stages, trainable);
        }
        self
    }

    /// Ids of the parameters of one part (for `GradientsParams::from_params` or optimiser groups).
    pub fn param_ids(&self, part: EncoderPart) -> Vec<ParamId> {
        let mut ids = Vec::new();
        if matches!(part, EncoderPart::All | EncoderPart::Stem) {
            ids.extend(inspect::parameters(&self.stem).into_iter().map(|p| p.id));
        }
        if matches!(part, EncoderPart::All | EncoderPart::Stages) {
            ids.extend(inspect::parameters(&self.stages).into_iter().map(|p| p.id));
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_config_is_selected_by_kind_and_rejects_unknown_keys() {
        let cfg: EncoderConfig =
            serde_json::from_str(r#"{"kind": "resenc", "widths": [4, 8], "blocks_per_stage": [1, 2], "strides": [[1,1,1],[2,2,2]], "kernel_sizes": [[3,3,3],[3,3,3]]}"#)
                .unwrap();
        match &cfg {
            EncoderConfig::Resenc(c) => {
                assert_eq!(c.widths, vec![4, 8]);
                assert_eq!(c.in_channels, 1);
                assert!(c.conv_bias);
            }
            other => panic!("wrong kind {other:?}"),
        }
        let plain: EncoderConfig =
            serde_json::from_str(r#"{"kind": "retunet", "in_channels": 2}"#).unwrap();
        assert_eq!(plain.in_channels(), 2);
        assert_eq!(plain.widths(), &[32, 64, 128, 256, 320, 320]);
        let err = serde_json::from_str::<EncoderConfig>(r#"{"kind": "retunet", "widht": [4]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("widht"), "{err}");
        let back: EncoderConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn cumulative_strides_multiply_per_axis() {
        assert_eq!(
            cumulative(&[[1, 1, 1], [2, 2, 1], [2, 2, 2]]),
            vec![[1, 1, 1], [2, 2, 1], [4, 4, 2]]
        );
    }
}
