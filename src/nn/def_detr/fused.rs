//! The sampling step of multi-scale deformable attention ([`super::attention::deformable_core`])
//! as one fused CPU operation with its own backward pass: what Deformable DETR's `MSDeformAttn`
//! CUDA kernel is to its PyTorch fallback.
//!
//! Composed from tensor ops, every level costs 8 corner gathers, each with a dozen elementwise
//! ops recorded for autodiff; in the tutorial's network that was 58 % of a training step and
//! 2.3× the time of PyTorch's `grid_sample`. Here the forward is one pass over (sample, query),
//! and the backward one pass over (sample, query) for the locations and weights and one over
//! samples for the values. Like the fused norm (`nn::conv::norm`) it runs on the Flex device
//! with f32 data, follows the fast-kernel switch (`nn::conv::set_fast_conv3d`), and leaves every
//! other case to the composed version.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn::{Dispatch, DispatchDevice};
use rayon::prelude::*;

use crate::nn::conv::fast_conv3d_enabled;
use crate::nn::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

/// The fused sampling step, or `None` where it does not apply (another backend or device,
/// another dtype, the switch off, shapes that do not fit): the caller then composes it.
///
/// # Shapes
/// - value: `[N, Lv, heads, dh]`, `Lv = Σ D·H·W` of `shapes`
/// - locations: `[N, Lq, heads, levels, points, 3]` normalised `(d, h, w)`
/// - weights: `[N, Lq, heads, levels, points]`
/// - output: `[N, Lq, heads · dh]`
pub fn deformable_core<B: Backend>(
    value: &Tensor<B, 4>,
    shapes: &[[usize; 3]],
    locations: &Tensor<B, 6>,
    weights: &Tensor<B, 5>,
) -> Option<Tensor<B, 3>> {
    let [n, lv, h, dh] = value.dims();
    let [ln, lq, lh, l, p, three] = locations.dims();
    let tokens: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let fits = ln == n
        && lh == h
        && three == 3
        && l == shapes.len()
        && tokens == lv
        && weights.dims() == [n, lq, h, l, p]
        && n * lq * h * dh * l * p > 0
        && [value.dtype(), locations.dtype(), weights.dtype()] == [DType::F32; 3];
    if !fits || !fast_conv3d_enabled() {
        return None;
    }
    let layout = Layout {
        dims: Dims {
            batch: n,
            tokens: lv,
            heads: h,
            channels: dh,
            queries: lq,
            levels: l,
            points: p,
        },
        shapes: shapes.to_vec(),
    };
    if same_type::<B, Autodiff<Dispatch>>() {
        let value: Tensor<Autodiff<Dispatch>, 4> = cast(value.clone());
        if !matches!(value.device(), DispatchDevice::Flex(_)) {
            return None;
        }
        return Some(cast(run::<Autodiff<Dispatch>>(
            value,
            cast(locations.clone()),
            cast(weights.clone()),
            layout,
        )));
    }
    if same_type::<B, Dispatch>() {
        let value: Tensor<Dispatch, 4> = cast(value.clone());
        if !matches!(value.device(), DispatchDevice::Flex(_)) {
            return None;
        }
        return Some(cast(run::<Dispatch>(
            value,
            cast(locations.clone()),
            cast(weights.clone()),
            layout,
        )));
    }
    None
}

fn run<B: DeformableBackend>(
    value: Tensor<B, 4>,
    locations: Tensor<B, 6>,
    weights: Tensor<B, 5>,
    layout: Layout,
) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(B::deformable_core(
        value.into_primitive().tensor(),
        locations.into_primitive().tensor(),
        weights.into_primitive().tensor(),
        layout,
    )))
}

/// Sizes of one sampling step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Samples N.
    pub batch: usize,
    /// Value tokens of all levels.
    pub tokens: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub channels: usize,
    /// Queries Lq.
    pub queries: usize,
    /// Feature levels.
    pub levels: usize,
    /// Sampling points per head and level.
    pub points: usize,
}

/// Sizes and the `[D, H, W]` of every level (their tokens are consecutive in the values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Sizes.
    pub dims: Dims,
    /// Every level's grid.
    pub shapes: Vec<[usize; 3]>,
}

/// A backend with the fused sampling kernels (burn's backend-extension pattern): `Dispatch` on
/// the Flex device computes them, `Autodiff<B>` records the forward as one op whose backward
/// calls [`DeformableBackend::deformable_core_backward`].
pub trait DeformableBackend: Backend {
    /// The sampled, weighted and summed values `[N, Lq, heads · dh]`.
    fn deformable_core(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        layout: Layout,
    ) -> FloatTensor<Self>;

    /// Gradients (value, locations, weights) given the gradient of the output.
    fn deformable_core_backward(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        layout: Layout,
    ) -> [FloatTensor<Self>; 3];
}

impl DeformableBackend for Dispatch {
    fn deformable_core(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        layout: Layout,
    ) -> FloatTensor<Self> {
        let device = Self::float_device(&value);
        let (value, locations, weights) = (
            read_f32::<4>(value),
            read_f32::<6>(locations),
            read_f32::<5>(weights),
        );
        let out = kernels::forward(f32s(&value), f32s(&locations), f32s(&weights), &layout);
        let d = layout.dims;
        Self::float_from_data(
            TensorData::new(out, [d.batch, d.queries, d.heads * d.channels]),
            &device,
        )
    }

    fn deformable_core_backward(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        layout: Layout,
    ) -> [FloatTensor<Self>; 3] {
        let device = Self::float_device(&value);
        let shapes = (value.shape(), locations.shape(), weights.shape());
        let (value, locations, weights, dy) = (
            read_f32::<4>(value),
            read_f32::<6>(locations),
            read_f32::<5>(weights),
            read_f32::<3>(output_grad),
        );
        let (d_value, d_locations, d_weights) = kernels::backward(
            f32s(&value),
            f32s(&locations),
            f32s(&weights),
            f32s(&dy),
            &layout,
        );
        [
            Self::float_from_data(TensorData::new(d_value, shapes.0), &device),
            Self::float_from_data(TensorData::new(d_locations, shapes.1), &device),
            Self::float_from_data(TensorData::new(d_weights, shapes.2), &device),
        ]
    }
}

#[derive(Debug)]
struct FusedDeformableCore;

impl<B: DeformableBackend> Backward<B, 3> for FusedDeformableCore {
    /// Value, locations, weights and the layout.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Layout);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let output_grad = grads.consume::<B>(&ops.node);
        let (value, locations, weights, layout) = ops.state;
        let computed = B::deformable_core_backward(value, locations, weights, output_grad, layout);
        register_gradients::<B>(
            ops.parents.iter().map(|p| p.as_ref().map(|node| node.id)),
            computed.map(Some),
            grads,
        );
    }
}

impl<B: DeformableBackend, C: CheckpointStrategy> DeformableBackend for Autodiff<B, C> {
    fn deformable_core(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        layout: Layout,
    ) -> FloatTensor<Self> {
        match FusedDeformableCore
            .prepare::<C>([
                value.node.clone(),
                locations.node.clone(),
                weights.node.clone(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (
                    value.primitive.clone(),
                    locations.primitive.clone(),
                    weights.primitive.clone(),
                    layout.clone(),
                ),
                B::deformable_core(
                    value.primitive,
                    locations.primitive,
                    weights.primitive,
                    layout,
                ),
            ),
            OpsKind::UnTracked(prep) => prep.finish(B::deformable_core(
                value.primitive,
                locations.primitive,
                weights.primitive,
                layout,
            )),
        }
    }

    fn deformable_core_backward(
        _value: FloatTensor<Self>,
        _locations: FloatTensor<Self>,
        _weights: FloatTensor<Self>,
        _output_grad: FloatTensor<Self>,
        _layout: Layout,
    ) -> [FloatTensor<Self>; 3] {
        unreachable!("the autodiff backend differentiates through its inner backend's kernels")
    }
}

/// Kernels on contiguous f32 buffers in the shapes of [`deformable_core`].
pub(crate) mod kernels {
    use super::*;

    /// One in-volume corner of a trilinear sample: its token within the level, its weight,
    /// and the weight's derivative with respect to the normalised location per axis.
    #[derive(Clone, Copy, Default)]
    pub struct Corner {
        pub token: usize,
        pub weight: f32,
        pub gradient: [f32; 3],
    }

    /// The corners of the sample at normalised `location` on a `size` grid
    /// (`grid_sample`'s `align_corners=False`: voxel centres at `(i + 0.5) / n`), those outside
    /// the volume left out (zero padding); returns how many of `out` were filled.
    pub fn corners(location: [f32; 3], size: [usize; 3], out: &mut [Corner; 8]) -> usize {
        let mut low = [0i64; 3];
        let mut fraction = [0f32; 3];
        for a in 0..3 {
            let position = location[a] * size[a] as f32 - 0.5;
            let floor = position.floor();
            low[a] = floor as i64;
            fraction[a] = position - floor;
        }
        let mut count = 0;
        for corner in 0..8 {
            let mut token = 0usize;
            let mut inside = true;
            let mut factors = [0f32; 3];
            let mut signs = [0f32; 3];
            for a in 0..3 {
                let upper = (corner >> (2 - a)) & 1 == 1;
                // Saturating: an infinite location (a diverging run) floors to i64::MAX.
                let index = low[a].saturating_add(i64::from(upper));
                if index < 0 || index >= size[a] as i64 {
                    inside = false;
                    break;
                }
                token = token * size[a] + index as usize;
                factors[a] = if upper {
                    fraction[a]
                } else {
                    1.0 - fraction[a]
                };
                signs[a] = if upper { 1.0 } else { -1.0 };
            }
            if !inside {
                continue;
            }
            out[count] = Corner {
                token,
                weight: factors[0] * factors[1] * factors[2],
                gradient: [
                    signs[0] * factors[1] * factors[2] * size[0] as f32,
                    factors[0] * signs[1] * factors[2] * size[1] as f32,
                    factors[0] * factors[1] * signs[2] * size[2] as f32,
                ],
            };
            count += 1;
        }
        count
    }

    /// First token of every level.
    fn level_starts(shapes: &[[usize; 3]]) -> Vec<usize> {
        shapes
            .iter()
            .scan(0, |start, s| {
                let first = *start;
                *start += s.iter().product::<usize>();
                Some(first)
            })
            .collect()
    }

    /// Calls `visit(level, point, sample index, corners)` for every sampling point of one
    /// (sample, query, head); the sample index addresses the weights (×3: the locations).
    fn for_each_point(
        layout: &Layout,
        row_head: usize,
        locations: &[f32],
        mut visit: impl FnMut(usize, usize, &[Corner]),
    ) {
        let Dims { levels, points, .. } = layout.dims;
        let mut buffer = [Corner::default(); 8];
        for (level, &size) in layout.shapes.iter().enumerate() {
            for point in 0..points {
                let sample = (row_head * levels + level) * points + point;
                let l = &locations[sample * 3..sample * 3 + 3];
                let count = corners([l[0], l[1], l[2]], size, &mut buffer);
                visit(level, sample, &buffer[..count]);
            }
        }
    }

    /// The output `[N, Lq, heads · dh]`.
    pub fn forward(value: &[f32], locations: &[f32], weights: &[f32], layout: &Layout) -> Vec<f32> {
        let d = layout.dims;
        let starts = level_starts(&layout.shapes);
        let row_len = d.heads * d.channels;
        let mut out = vec![0.0f32; d.batch * d.queries * row_len];
        out.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(row, out_row)| {
                let sample_n = row / d.queries;
                for head in 0..d.heads {
                    let o = &mut out_row[head * d.channels..(head + 1) * d.channels];
                    for_each_point(layout, row * d.heads + head, locations, |level, s, cs| {
                        let attention = weights[s];
                        for corner in cs {
                            let token = sample_n * d.tokens + starts[level] + corner.token;
                            let at = (token * d.heads + head) * d.channels;
                            let v = &value[at..at + d.channels];
                            let w = attention * corner.weight;
                            for (o, &v) in o.iter_mut().zip(v) {
                                *o += w * v;
                            }
                        }
                    });
                }
            });
        out
    }

    /// Gradients of the values, locations and weights given the output's `dy`.
    pub fn backward(
        value: &[f32],
        locations: &[f32],
        weights: &[f32],
        dy: &[f32],
        layout: &Layout,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = layout.dims;
        let starts = level_starts(&layout.shapes);
        let per_row = d.heads * d.levels * d.points;
        let mut d_weights = vec![0.0f32; weights.len()];
        let mut d_locations = vec![0.0f32; locations.len()];
        // Locations and weights: disjoint per (sample, query).
        d_weights
            .par_chunks_mut(per_row)
            .zip(d_locations.par_chunks_mut(per_row * 3))
            .enumerate()
            .for_each(|(row, (dw_row, dl_row))| {
                let sample_n = row / d.queries;
                let first = row * per_row;
                for head in 0..d.heads {
                    let g = &dy[(row * d.heads + head) * d.channels..][..d.channels];
                    for_each_point(layout, row * d.heads + head, locations, |level, s, cs| {
                        let attention = weights[s];
                        let mut dw = 0.0f32;
                        let mut dl = [0.0f32; 3];
                        for corner in cs {
                            let token = sample_n * d.tokens + starts[level] + corner.token;
                            let at = (token * d.heads + head) * d.channels;
                            let v = &value[at..at + d.channels];
                            let dot: f32 = g.iter().zip(v).map(|(g, v)| g * v).sum();
                            dw += corner.weight * dot;
                            for a in 0..3 {
                                dl[a] += corner.gradient[a] * dot;
                            }
                        }
                        dw_row[s - first] = dw;
                        for a in 0..3 {
                            dl_row[(s - first) * 3 + a] = attention * dl[a];
                        }
                    });
                }
            });
        // Values: every query scatters into its own sample's tokens, so samples are disjoint.
        let mut d_value = vec![0.0f32; value.len()];
        let sample_len = d.tokens * d.heads * d.channels;
        d_value
            .par_chunks_mut(sample_len)
            .enumerate()
            .for_each(|(sample_n, dv)| {
                for q in 0..d.queries {
                    let row = sample_n * d.queries + q;
                    for head in 0..d.heads {
                        let g = &dy[(row * d.heads + head) * d.channels..][..d.channels];
                        for_each_point(layout, row * d.heads + head, locations, |level, s, cs| {
                            let attention = weights[s];
                            for corner in cs {
                                let token = starts[level] + corner.token;
                                let at = (token * d.heads + head) * d.channels;
                                let w = attention * corner.weight;
                                for (dv, &g) in dv[at..at + d.channels].iter_mut().zip(g) {
                                    *dv += w * g;
                                }
                            }
                        });
                    }
                }
            });
        (d_value, d_locations, d_weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::def_detr::attention::composed_deformable_core;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};
    use burn::tensor::Distribution;

    /// Output and the gradients of value, locations and weights of `core` for a fixed probe.
    fn run_with_gradients(
        core: impl Fn(
            Tensor<TestBackend, 4>,
            Tensor<TestBackend, 6>,
            Tensor<TestBackend, 5>,
        ) -> Tensor<TestBackend, 3>,
        inputs: &(
            Tensor<TestBackend, 4>,
            Tensor<TestBackend, 6>,
            Tensor<TestBackend, 5>,
        ),
        probe: &Tensor<TestBackend, 3>,
    ) -> [Vec<f64>; 4] {
        let value = inputs.0.clone().detach().require_grad();
        let locations = inputs.1.clone().detach().require_grad();
        let weights = inputs.2.clone().detach().require_grad();
        let out = core(value.clone(), locations.clone(), weights.clone());
        let grads = (out.clone() * probe.clone()).sum().backward();
        [
            tensor_values(out),
            tensor_values(value.grad(&grads).unwrap()),
            tensor_values(locations.grad(&grads).unwrap()),
            tensor_values(weights.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn the_fused_kernels_equal_the_composed_op_forward_and_backward() {
        let device = test_device();
        // Two samples, two levels of different shapes, locations partly outside the volume
        // (zero padding) and partly on the border.
        let shapes = [[3, 4, 5], [2, 2, 3]];
        let (n, lq, h, dh, l, p) = (2, 5, 2, 3, 2, 3);
        let lv = 60 + 12;
        let value = Tensor::<TestBackend, 4>::random(
            [n, lv, h, dh],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let locations = Tensor::<TestBackend, 6>::random(
            [n, lq, h, l, p, 3],
            Distribution::Uniform(-0.15, 1.15),
            &device,
        );
        let weights = Tensor::<TestBackend, 5>::random(
            [n, lq, h, l, p],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let probe = Tensor::<TestBackend, 3>::random(
            [n, lq, h * dh],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let inputs = (value, locations, weights);
        let fused = run_with_gradients(
            |v, loc, w| deformable_core(&v, &shapes, &loc, &w).expect("the fused path applies"),
            &inputs,
            &probe,
        );
        let composed = run_with_gradients(
            |v, loc, w| composed_deformable_core(v, &shapes, loc, w),
            &inputs,
            &probe,
        );
        for (what, (f, c)) in [
            "output",
            "value gradient",
            "location gradient",
            "weight gradient",
        ]
        .iter()
        .zip(fused.iter().zip(&composed))
        {
            assert_eq!(f.len(), c.len(), "{what}");
            assert!(f.iter().any(|v| v.abs() > 1e-3), "{what} is all zero");
            let scale = c.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert_close(f, c, 2e-5 * scale);
        }
    }

    #[test]
    fn corners_outside_the_volume_are_left_out() {
        let mut out = [kernels::Corner::default(); 8];
        // The centre of voxel (0, 0, 0) of a 2³ grid: one corner with weight 1 in range, its
        // lower neighbours outside.
        let count = kernels::corners([0.25, 0.25, 0.25], [2, 2, 2], &mut out);
        let total: f32 = out[..count].iter().map(|c| c.weight).sum();
        assert!((total - 1.0).abs() < 1e-6, "weights sum to {total}");
        assert!(out[..count].iter().all(|c| c.token < 8));
        // Entirely outside: no corner; infinite or huge locations (a diverging run) too,
        // without an overflow.
        assert_eq!(kernels::corners([-0.5, 0.5, 0.5], [2, 2, 2], &mut out), 0);
        for far in [f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30] {
            assert_eq!(kernels::corners([0.5, far, 0.5], [2, 2, 2], &mut out), 0);
        }
        // Half a voxel past the border: the border voxel at half weight.
        let count = kernels::corners([1.0, 0.25, 0.25], [2, 2, 2], &mut out);
        let total: f32 = out[..count].iter().map(|c| c.weight).sum();
        assert!((total - 0.5).abs() < 1e-6, "weights sum to {total}");
    }
}
