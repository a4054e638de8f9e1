//! 3D multi-scale deformable attention (Zhu et al., Deformable DETR, made 3D).
//!
//! Every query predicts, per head, level and point, a 3D offset and an attention weight (a
//! softmax over levels × points). It samples the projected values of each level trilinearly
//! at `reference + offset` and returns the weighted sum of the samples, per head.
//!
//! Offsets are in voxels of their level (`(d, h, w)` order); with a box reference
//! `(cz, cy, cx, d, h, w)` they are instead fractions of half the box extent divided by the
//! number of points, as in the 2D original. The offset bias starts on 3D directions (the 6 axis
//! directions, then the 12 edge and 8 corner directions of the 3³ neighbourhood, one per head)
//! scaled by the point index `k + 1`; attention weights start at 0 (uniform over levels ×
//! points); value and output projections are Xavier-uniform.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::sampling::weighted_trilinear_sample;

/// Settings of one multi-scale deformable attention layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DeformableAttentionConfig {
    /// Token width.
    pub d_model: usize,
    /// Attention heads (`d_model` must be divisible by it).
    pub heads: usize,
    /// Feature levels.
    pub levels: usize,
    /// Sampling points per head and level.
    pub points: usize,
}

/// A multi-scale deformable attention layer.
#[derive(Module, Debug)]
pub struct DeformableAttention<B: Backend> {
    /// Query → offsets `(heads, levels, points, 3)`.
    pub sampling_offsets: Linear<B>,
    /// Query → attention logits `(heads, levels, points)`.
    pub attention_weights: Linear<B>,
    /// Input tokens → values.
    pub value_proj: Linear<B>,
    /// Concatenated heads → output.
    pub output_proj: Linear<B>,
    /// Attention heads.
    pub heads: usize,
    /// Feature levels.
    pub levels: usize,
    /// Points per head and level.
    pub points: usize,
}

/// The 26 directions of the 3³ neighbourhood: axes first, then edges, then corners.
pub fn neighbour_directions() -> Vec<[f32; 3]> {
    let mut dirs: Vec<[f32; 3]> = Vec::with_capacity(26);
    for d in -1i32..=1 {
        for h in -1i32..=1 {
            for w in -1i32..=1 {
                if (d, h, w) != (0, 0, 0) {
                    dirs.push([d as f32, h as f32, w as f32]);
                }
            }
        }
    }
    dirs.sort_by_key(|v| v.iter().filter(|&&x| x != 0.0).count());
    dirs
}

impl DeformableAttentionConfig {
    /// Build the layer with the initialisation described in the module documentation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DeformableAttention<B> {
        let (d, h, l, p) = (self.d_model, self.heads, self.levels, self.points);
        let xavier = Initializer::XavierUniform { gain: 1.0 };
        let linear = |out: usize, init: Initializer| {
            LinearConfig::new(d, out)
                .with_initializer(init)
                .init::<B>(device)
        };
        let mut sampling_offsets = linear(h * l * p * 3, Initializer::Zeros);
        let directions = neighbour_directions();
        let mut bias = Vec::with_capacity(h * l * p * 3);
        for head in 0..h {
            let dir = directions[head % directions.len()];
            for _ in 0..l {
                for point in 0..p {
                    bias.extend(dir.iter().map(|&x| x * (point + 1) as f32));
                }
            }
        }
        sampling_offsets.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [h * l * p * 3]),
            device,
        )));
        let mut value_proj = linear(d, xavier.clone());
        let mut output_proj = linear(d, xavier);
        for layer in [&mut value_proj, &mut output_proj] {
            layer.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
        }
        DeformableAttention {
            sampling_offsets,
            attention_weights: linear(h * l * p, Initializer::Zeros),
            value_proj,
            output_proj,
            heads: h,
            levels: l,
            points: p,
        }
    }
}

impl<B: Backend> DeformableAttention<B> {
    /// Attend from `query` to the multi-scale `input` tokens around `reference`.
    ///
    /// # Shapes
    /// - query: `[N, Lq, d]`
    /// - reference: `[N, Lq, levels, 3]` normalised points `(d, h, w)` or `[N, Lq, levels, 6]`
    ///   normalised boxes `(cz, cy, cx, d, h, w)`
    /// - input: `[N, Lv, d]`, the levels' tokens concatenated (row-major within a level)
    /// - shapes: the `[D, H, W]` of every level, `Σ D·H·W = Lv`
    /// - output: `[N, Lq, d]`
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        reference: Tensor<B, 4>,
        input: Tensor<B, 3>,
        shapes: &[[usize; 3]],
    ) -> Tensor<B, 3> {
        let [n, lq, d] = query.dims();
        let [_, lv, _] = input.dims();
        let (h, l, p) = (self.heads, self.levels, self.points);
        let device = query.device();
        let value = self.value_proj.forward(input).reshape([n, lv, h, d / h]);
        let offsets = self
            .sampling_offsets
            .forward(query.clone())
            .reshape([n, lq, h, l, p, 3]);
        let weights = activation::softmax(
            self.attention_weights
                .forward(query)
                .reshape([n, lq, h, l * p]),
            3,
        )
        .reshape([n, lq, h, l, p]);
        let reference_dims = reference.dims()[3];
        let locations = if reference_dims == 3 {
            // Offsets in voxels of their level: divide by the level size.
            let inverse: Vec<f32> = shapes
                .iter()
                .flat_map(|s| s.iter().map(|&x| 1.0 / x as f32))
                .collect();
            let normaliser =
                Tensor::<B, 6>::from_data(TensorData::new(inverse, [1, 1, 1, l, 1, 3]), &device);
            reference.reshape([n, lq, 1, l, 1, 3]) + offsets * normaliser
        } else {
            let centre = reference.clone().slice([0..n, 0..lq, 0..l, 0..3]);
            let extent = reference.slice([0..n, 0..lq, 0..l, 3..6]);
            centre.reshape([n, lq, 1, l, 1, 3])
                + offsets
                    * extent
                        .reshape([n, lq, 1, l, 1, 3])
                        .mul_scalar(0.5 / p as f64)
        };
        let out = deformable_core(value, shapes, locations, weights);
        self.output_proj.forward(out)
    }
}

/// The sampling and weighting step of deformable attention (no projections): what
/// `ms_deform_attn_core_pytorch` computes with `grid_sample` in the 2D original.
///
/// # Shapes
/// - value: `[N, Lv, heads, dh]`
/// - locations: `[N, Lq, heads, levels, points, 3]` normalised `(d, h, w)`
/// - weights: `[N, Lq, heads, levels, points]`
/// - output: `[N, Lq, heads · dh]`
pub fn deformable_core<B: Backend>(
    value: Tensor<B, 4>,
    shapes: &[[usize; 3]],
    locations: Tensor<B, 6>,
    weights: Tensor<B, 5>,
) -> Tensor<B, 3> {
    super::fused::deformable_core(&value, shapes, &locations, &weights)
        .unwrap_or_else(|| composed_deformable_core(value, shapes, locations, weights))
}

/// [`deformable_core`] composed from tensor ops (trilinear samples from 8 corner gathers, per
/// level): any backend and device, and the reference the fused kernels are tested against.
pub fn composed_deformable_core<B: Backend>(
    value: Tensor<B, 4>,
    shapes: &[[usize; 3]],
    locations: Tensor<B, 6>,
    weights: Tensor<B, 5>,
) -> Tensor<B, 3> {
    let [n, _, h, dh] = value.dims();
    let [_, lq, _, l, p, _] = locations.dims();
    let mut start = 0;
    let mut output: Option<Tensor<B, 4>> = None;
    for (level, shape) in shapes.iter().enumerate() {
        let s: usize = shape.iter().product();
        let level_value = value
            .clone()
            .slice([0..n, start..start + s])
            .swap_dims(1, 2)
            .reshape([n * h, s, dh]);
        start += s;
        let level_locations = locations
            .clone()
            .slice([0..n, 0..lq, 0..h, level..level + 1])
            .reshape([n, lq, h, p, 3])
            .swap_dims(1, 2)
            .reshape([n * h, lq * p, 3]);
        let level_weights = weights
            .clone()
            .slice([0..n, 0..lq, 0..h, level..level + 1])
            .reshape([n, lq, h, p])
            .swap_dims(1, 2)
            .reshape([n * h, lq * p]);
        let sampled =
            weighted_trilinear_sample(level_value, *shape, level_locations, Some(level_weights))
                .reshape([n * h, lq, p, dh])
                .sum_dim(2)
                .reshape([n, h, lq, dh]);
        output = Some(match output {
            Some(acc) => acc + sampled,
            None => sampled,
        });
    }
    debug_assert_eq!(l, shapes.len());
    output
        .expect("at least one level")
        .swap_dims(1, 2)
        .reshape([n, lq, h * dh])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::def_detr::sampling::trilinear_sample;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};

    #[test]
    fn directions_start_with_the_six_axes_and_cover_the_neighbourhood() {
        let dirs = neighbour_directions();
        assert_eq!(dirs.len(), 26);
        for d in &dirs[..6] {
            assert_eq!(d.iter().filter(|&&x| x != 0.0).count(), 1);
        }
        for d in &dirs[18..] {
            assert_eq!(d.iter().filter(|&&x| x != 0.0).count(), 3);
        }
    }

    #[test]
    fn zero_offsets_and_one_point_sample_the_reference() {
        let device = test_device();
        let config = DeformableAttentionConfig {
            d_model: 8,
            heads: 2,
            levels: 1,
            points: 1,
        };
        let mut attention = config.init::<TestBackend>(&device);
        let offsets = &mut attention.sampling_offsets;
        offsets.bias = Some(Param::from_tensor(Tensor::zeros([6], &device)));
        let shape = [3, 4, 5];
        let lv = 60;
        let input = Tensor::<TestBackend, 3>::random(
            [1, lv, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let query = Tensor::<TestBackend, 3>::random(
            [1, 4, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let points: Vec<f32> = vec![
            0.5, 0.5, 0.5, 0.1, 0.2, 0.9, 0.77, 0.33, 0.41, 0.99, 0.01, 0.5,
        ];
        let reference = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(points.clone(), [1, 4, 1, 3]),
            &device,
        );
        let out = attention.forward(query, reference, input.clone(), &[shape]);
        // The same by hand: project, sample at the reference points, project back.
        let value = attention.value_proj.forward(input);
        let sampled = trilinear_sample(
            value,
            shape,
            Tensor::from_data(TensorData::new(points, [1, 4, 3]), &device),
        );
        let expected = attention.output_proj.forward(sampled);
        assert_close(&tensor_values(out), &tensor_values(expected), 1e-5);
    }

    #[test]
    fn core_weights_and_levels_combine_linearly() {
        // Two levels, two points with weights 0.25 / 0.75 at the same location: the result is
        // the sum over levels of the sample at that location.
        let device = test_device();
        let shapes = [[2, 2, 2], [1, 2, 3]];
        let values: Vec<f32> = (0..14).map(|i| i as f32).collect();
        let value = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(values.clone(), [1, 14, 1, 1]),
            &device,
        );
        let loc = [0.4f32, 0.6, 0.3];
        let locations = Tensor::<TestBackend, 6>::from_data(
            TensorData::new(loc.repeat(4).to_vec(), [1, 1, 1, 2, 2, 3]),
            &device,
        );
        let weights = Tensor::<TestBackend, 5>::from_data(
            TensorData::new(vec![0.25f32, 0.75, 0.25, 0.75], [1, 1, 1, 2, 2]),
            &device,
        );
        let out = tensor_values(deformable_core(value, &shapes, locations, weights))[0];
        let at = |vals: &[f32], shape: [usize; 3]| {
            tensor_values(trilinear_sample(
                Tensor::<TestBackend, 3>::from_data(
                    TensorData::new(vals.to_vec(), [1, vals.len(), 1]),
                    &device,
                ),
                shape,
                Tensor::from_data(TensorData::new(loc.to_vec(), [1, 1, 3]), &device),
            ))[0]
        };
        let expected = at(&values[..8], shapes[0]) + at(&values[8..], shapes[1]);
        assert!((out - expected).abs() < 1e-5, "{out} vs {expected}");
    }
}
