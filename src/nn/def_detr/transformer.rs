//! The deformable transformer: encoder layers (multi-scale deformable self-attention over the
//! tokens of all levels), decoder layers (self-attention among the queries, deformable
//! cross-attention into the encoder's memory), feed-forward blocks and the 3D sine
//! positional encoding.

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::attention::{DeformableAttention, DeformableAttentionConfig};

/// Xavier-uniform linear layer with zero bias (the transformer's initialisation).
pub(crate) fn xavier_linear<B: Backend>(
    input: usize,
    output: usize,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(input, output)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device)
}

/// The 3D sine positional encoding of a `[D, H, W]` grid: per axis `2·⌊d_model / 6⌋` features
/// (sin and cos of the normalised voxel-centre coordinate · 2π over temperatures
/// `10000^(2i/F)`), axes in `(d, h, w)` order, the remaining `d_model mod 6` channels zero.
///
/// Returns `[D·H·W, d_model]` row-major values.
pub fn sine_position_encoding(shape: [usize; 3], d_model: usize) -> Vec<f32> {
    let per_axis = 2 * (d_model / 6);
    let s: usize = shape.iter().product();
    let mut out = vec![0.0f32; s * d_model];
    let temperature = |j: usize| 10000f64.powf((2 * (j / 2)) as f64 / per_axis as f64);
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            for x in 0..shape[2] {
                let token = (z * shape[1] + y) * shape[2] + x;
                for (a, i) in [z, y, x].into_iter().enumerate() {
                    let coordinate = (i as f64 + 0.5) / shape[a] as f64 * std::f64::consts::TAU;
                    for j in 0..per_axis {
                        let v = coordinate / temperature(j);
                        out[token * d_model + a * per_axis + j] =
                            if j % 2 == 0 { v.sin() } else { v.cos() } as f32;
                    }
                }
            }
        }
    }
    out
}

/// Normalised voxel-centre coordinates `(d, h, w)` of every token of every level,
/// `[Σ D·H·W, 3]` row-major: the encoder's reference points.
pub fn token_centres(shapes: &[[usize; 3]]) -> Vec<f32> {
    let mut out = Vec::new();
    for shape in shapes {
        for z in 0..shape[0] {
            for y in 0..shape[1] {
                for x in 0..shape[2] {
                    for (a, i) in [z, y, x].into_iter().enumerate() {
                        out.push(((i as f64 + 0.5) / shape[a] as f64) as f32);
                    }
                }
            }
        }
    }
    out
}

/// Feed-forward block with residual and LayerNorm: `norm(x + drop(W₂ drop(relu(W₁ x))))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// Expansion.
    pub linear1: Linear<B>,
    /// Projection back.
    pub linear2: Linear<B>,
    /// Dropout.
    pub dropout: Dropout,
    /// Post-norm.
    pub norm: LayerNorm<B>,
}

impl<B: Backend> FeedForward<B> {
    fn new(d_model: usize, hidden: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            linear1: xavier_linear(d_model, hidden, device),
            linear2: xavier_linear(hidden, d_model, device),
            dropout: DropoutConfig::new(dropout).init(),
            norm: LayerNormConfig::new(d_model).init(device),
        }
    }

    /// # Shapes
    /// - x: `[N, L, d]`; output the same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self
            .dropout
            .forward(activation::relu(self.linear1.forward(x.clone())));
        self.norm
            .forward(x + self.dropout.forward(self.linear2.forward(h)))
    }
}

/// Settings shared by the encoder and decoder layers.
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// Token width, heads, levels and points of the deformable attention.
    pub attention: DeformableAttentionConfig,
    /// Feed-forward hidden width.
    pub ffn_channels: usize,
    /// Dropout.
    pub dropout: f64,
}

/// One encoder layer: deformable self-attention of the tokens, then the feed-forward block.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Multi-scale deformable self-attention.
    pub attention: DeformableAttention<B>,
    /// Dropout after attention.
    pub dropout: Dropout,
    /// Post-norm after attention.
    pub norm: LayerNorm<B>,
    /// Feed-forward block.
    pub ffn: FeedForward<B>,
}

impl LayerConfig {
    /// Build an encoder layer.
    pub fn init_encoder<B: Backend>(&self, device: &B::Device) -> EncoderLayer<B> {
        let d = self.attention.d_model;
        EncoderLayer {
            attention: self.attention.init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            norm: LayerNormConfig::new(d).init(device),
            ffn: FeedForward::new(d, self.ffn_channels, self.dropout, device),
        }
    }

    /// Build a decoder layer.
    pub fn init_decoder<B: Backend>(&self, device: &B::Device) -> DecoderLayer<B> {
        let d = self.attention.d_model;
        DecoderLayer {
            self_attention: MultiHeadAttentionConfig::new(d, self.attention.heads)
                .with_dropout(self.dropout)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device),
            self_norm: LayerNormConfig::new(d).init(device),
            cross_attention: self.attention.init(device),
            cross_norm: LayerNormConfig::new(d).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            ffn: FeedForward::new(d, self.ffn_channels, self.dropout, device),
        }
    }
}

impl<B: Backend> EncoderLayer<B> {
    /// # Shapes
    /// - tokens, position: `[N, Lv, d]`; reference: `[N, Lv, levels, 3]`; output `[N, Lv, d]`
    pub fn forward(
        &self,
        tokens: Tensor<B, 3>,
        position: Tensor<B, 3>,
        reference: Tensor<B, 4>,
        shapes: &[[usize; 3]],
    ) -> Tensor<B, 3> {
        let attended =
            self.attention
                .forward(tokens.clone() + position, reference, tokens.clone(), shapes);
        let tokens = self.norm.forward(tokens + self.dropout.forward(attended));
        self.ffn.forward(tokens)
    }
}

/// One decoder layer: self-attention among the queries, deformable cross-attention into the
/// memory, then the feed-forward block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Multi-head self-attention of the queries.
    pub self_attention: MultiHeadAttention<B>,
    /// Post-norm after self-attention.
    pub self_norm: LayerNorm<B>,
    /// Deformable cross-attention into the memory.
    pub cross_attention: DeformableAttention<B>,
    /// Post-norm after cross-attention.
    pub cross_norm: LayerNorm<B>,
    /// Dropout after both attentions.
    pub dropout: Dropout,
    /// Feed-forward block.
    pub ffn: FeedForward<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// # Shapes
    /// - target, query_position: `[N, Q, d]`; reference: `[N, Q, levels, 3 or 6]`;
    ///   memory: `[N, Lv, d]`; output `[N, Q, d]`
    pub fn forward(
        &self,
        target: Tensor<B, 3>,
        query_position: Tensor<B, 3>,
        reference: Tensor<B, 4>,
        memory: Tensor<B, 3>,
        shapes: &[[usize; 3]],
    ) -> Tensor<B, 3> {
        let q = target.clone() + query_position.clone();
        let attended = self
            .self_attention
            .forward(MhaInput::new(q.clone(), q, target.clone()))
            .context;
        let target = self
            .self_norm
            .forward(target + self.dropout.forward(attended));
        let attended = self.cross_attention.forward(
            target.clone() + query_position,
            reference,
            memory,
            shapes,
        );
        let target = self
            .cross_norm
            .forward(target + self.dropout.forward(attended));
        self.ffn.forward(target)
    }
}

/// `log(x / (1 − x))` with `x` clamped to `[0, 1]` and both parts to at least `1e-5`.
pub fn inverse_sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = x.clamp(0.0, 1.0);
    let numerator = x.clone().clamp_min(1e-5);
    let denominator = x.neg().add_scalar(1.0).clamp_min(1e-5);
    (numerator / denominator).log()
}

/// A tensor `[1, S, d]` from host values.
pub(crate) fn host_tokens<B: Backend>(
    values: Vec<f32>,
    s: usize,
    d: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(values, [1, s, d]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_encoding_separates_axes_and_pads_with_zeros() {
        let d = 16; // 4 features per axis, 4 zero channels
        let pe = sine_position_encoding([2, 3, 4], d);
        assert_eq!(pe.len(), 24 * d);
        // Token (0, 0, 0) and token (0, 0, 1) differ only in the w features.
        let t0 = &pe[0..d];
        let t1 = &pe[d..2 * d];
        assert_eq!(&t0[..8], &t1[..8]);
        assert_ne!(&t0[8..12], &t1[8..12]);
        assert!(t0[12..].iter().all(|&v| v == 0.0));
        // First feature of the d axis: sin(2π · 0.25) = 1 for the first of two slices.
        assert!((t0[0] - 1.0).abs() < 1e-6);
        let centres = token_centres(&[[2, 1, 1], [1, 1, 2]]);
        assert_eq!(
            centres,
            vec![
                0.25, 0.5, 0.5, 0.75, 0.5, 0.5, 0.5, 0.5, 0.25, 0.5, 0.5, 0.75
            ]
        );
    }
}
