//! A head's output map `[N, C, D, H, W]` to channels-last `[N, D·H·W, C]`, times a learned
//! scalar, as one op with its own backward, on the Flex device.
//!
//! Retina U-Net's heads flatten every level this way (anchors × deltas or logits last) and the
//! regressor multiplies by a scale per level. Composed, burn copied the permutation with
//! strided indices forward, again for the product's backward, and once more when the
//! convolution before it read the permuted gradient: 13 % of the quickstart's step.

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

use super::fast_conv3d_enabled;
use crate::nn::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

/// `x` `[N, C, D, H, W]` as `[N, D·H·W, C]`, times `scale` (`[1]`); `None` where this op does
/// not apply (another backend or device, not f32, or the fast kernels switched off).
pub(crate) fn channels_last_scaled<B: Backend>(
    x: &Tensor<B, 5>,
    scale: &Tensor<B, 1>,
) -> Option<Tensor<B, 3>> {
    if x.dtype() != DType::F32
        || scale.dtype() != DType::F32
        || scale.dims() != [1]
        || x.shape().num_elements() == 0
        || !fast_conv3d_enabled()
    {
        return None;
    }
    let on_flex = |device: &DispatchDevice| matches!(device, DispatchDevice::Flex(_));
    if same_type::<B, Autodiff<Dispatch>>() {
        let x: Tensor<Autodiff<Dispatch>, 5> = cast(x.clone());
        if on_flex(&x.device()) {
            return Some(cast(run::<Autodiff<Dispatch>>(x, cast(scale.clone()))));
        }
    } else if same_type::<B, Dispatch>() {
        let x: Tensor<Dispatch, 5> = cast(x.clone());
        if on_flex(&x.device()) {
            return Some(cast(run::<Dispatch>(x, cast(scale.clone()))));
        }
    }
    None
}

fn run<B: ChannelsLastBackend>(x: Tensor<B, 5>, scale: Tensor<B, 1>) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(B::channels_last(
        x.into_primitive().tensor(),
        scale.into_primitive().tensor(),
    )))
}

/// A backend with the channels-last flattening as one op (burn's backend-extension pattern).
pub(crate) trait ChannelsLastBackend: Backend {
    /// `[N, C, D, H, W]` → `[N, D·H·W, C]`, times the one value of `scale`.
    fn channels_last(x: FloatTensor<Self>, scale: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradients of `x` and, when `with_scale`, of the scale, given the output's.
    fn channels_last_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        with_scale: bool,
    ) -> [Option<FloatTensor<Self>>; 2];
}

impl ChannelsLastBackend for Dispatch {
    fn channels_last(x: FloatTensor<Self>, scale: FloatTensor<Self>) -> FloatTensor<Self> {
        let device = Self::float_device(&x);
        let [n, c, d, h, w] = x.shape().dims::<5>();
        let (data, scale) = (read_f32::<5>(x), read_f32::<1>(scale));
        let mut out = vec![0.0f32; data.num_elements()];
        kernels::to_channels_last(f32s(&data), &mut out, [n, c, d * h * w], f32s(&scale)[0]);
        Self::float_from_data(TensorData::new(out, [n, d * h * w, c]), &device)
    }

    fn channels_last_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        with_scale: bool,
    ) -> [Option<FloatTensor<Self>>; 2] {
        let device = Self::float_device(&x);
        let shape = x.shape();
        let [n, c, d, h, w] = shape.dims::<5>();
        let (data, scale, grad) = (read_f32::<5>(x), read_f32::<1>(scale), read_f32::<3>(grad));
        let mut dx = vec![0.0f32; data.num_elements()];
        let dscale = kernels::from_channels_last(
            f32s(&grad),
            &mut dx,
            [n, c, d * h * w],
            f32s(&scale)[0],
            with_scale.then(|| f32s(&data)),
        );
        [
            Some(Self::float_from_data(TensorData::new(dx, shape), &device)),
            dscale.map(|s| Self::float_from_data(TensorData::new(vec![s], [1]), &device)),
        ]
    }
}

#[derive(Debug)]
struct ChannelsLast;

impl<B: ChannelsLastBackend> Backward<B, 2> for ChannelsLast {
    /// The input and the scale.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, scale) = ops.state;
        let with_scale = ops.parents[1].is_some();
        let gradients = B::channels_last_backward(x, scale, output_grad, with_scale);
        register_gradients::<B>(
            ops.parents.iter().map(|p| p.as_ref().map(|node| node.id)),
            gradients,
            grads,
        );
    }
}

impl<B: ChannelsLastBackend, C: CheckpointStrategy> ChannelsLastBackend for Autodiff<B, C> {
    fn channels_last(x: FloatTensor<Self>, scale: FloatTensor<Self>) -> FloatTensor<Self> {
        match ChannelsLast
            .prepare::<C>([x.node.clone(), scale.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (x.primitive.clone(), scale.primitive.clone()),
                B::channels_last(x.primitive, scale.primitive),
            ),
            OpsKind::UnTracked(prep) => prep.finish(B::channels_last(x.primitive, scale.primitive)),
        }
    }

    fn channels_last_backward(
        _x: FloatTensor<Self>,
        _scale: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _with_scale: bool,
    ) -> [Option<FloatTensor<Self>>; 2] {
        unreachable!("the autodiff backend differentiates through its inner backend's kernels")
    }
}

mod kernels {
    use super::*;

    /// Voxels per task: enough work to amortise a task, few enough rows to stay in cache.
    const VOXELS_PER_TASK: usize = 4096;

    /// `out[n, v, c] = x[n, c, v] · scale`.
    pub fn to_channels_last(x: &[f32], out: &mut [f32], [_, c, v]: [usize; 3], scale: f32) {
        out.par_chunks_mut(c * v)
            .zip(x.par_chunks(c * v))
            .for_each(|(out, x)| {
                out.par_chunks_mut(c * VOXELS_PER_TASK)
                    .enumerate()
                    .for_each(|(task, out)| {
                        let first = task * VOXELS_PER_TASK;
                        for (i, row) in out.chunks_exact_mut(c).enumerate() {
                            for (channel, o) in row.iter_mut().enumerate() {
                                *o = x[channel * v + first + i] * scale;
                            }
                        }
                    });
            });
    }

    /// `dx[n, c, v] = grad[n, v, c] · scale`; with `x`, also returns `Σ grad[n, v, c] ·
    /// x[n, c, v]` (the scale's gradient, summed in f64 in a fixed order).
    pub fn from_channels_last(
        grad: &[f32],
        dx: &mut [f32],
        [_, c, v]: [usize; 3],
        scale: f32,
        x: Option<&[f32]>,
    ) -> Option<f32> {
        dx.par_chunks_mut(c * v)
            .zip(grad.par_chunks(c * v))
            .for_each(|(dx, grad)| {
                for (channel, dx) in dx.chunks_exact_mut(v).enumerate() {
                    for (i, d) in dx.iter_mut().enumerate() {
                        *d = grad[i * c + channel] * scale;
                    }
                }
            });
        x.map(|x| {
            let sums: Vec<f64> = grad
                .par_chunks(c * v)
                .zip(x.par_chunks(c * v))
                .map(|(grad, x)| {
                    let mut sum = 0.0f64;
                    for (i, row) in grad.chunks_exact(c).enumerate() {
                        for (channel, &g) in row.iter().enumerate() {
                            sum += f64::from(g) * f64::from(x[channel * v + i]);
                        }
                    }
                    sum
                })
                .collect();
            sums.iter().sum::<f64>() as f32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv::with_fast_conv3d;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};

    fn seeded<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<TestBackend, D> {
        let values = crate::nn::conv::uniform_values(shape.iter().product(), seed);
        Tensor::from_data(TensorData::new(values, shape), &test_device())
    }

    /// Output and the gradients of `sum(y · r)` (input, scale), by the op or composed.
    fn run(dims: [usize; 5], fast: bool) -> [Vec<f64>; 3] {
        let [n, c, d, h, w] = dims;
        let x = seeded(dims, 1).require_grad();
        let scale = Tensor::<TestBackend, 1>::from_floats([1.7], &test_device()).require_grad();
        let y = if fast {
            channels_last_scaled(&x, &scale).expect("the op applies")
        } else {
            with_fast_conv3d(false, || {
                assert!(channels_last_scaled(&x, &scale).is_none());
                x.clone()
                    .permute([0, 2, 3, 4, 1])
                    .reshape([n, d * h * w, c])
                    * scale.clone().reshape([1, 1, 1])
            })
        };
        let grads = (y.clone() * seeded([n, d * h * w, c], 2)).sum().backward();
        [
            tensor_values(y),
            tensor_values(x.grad(&grads).unwrap()),
            tensor_values(scale.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn channels_last_matches_permute_and_product_with_gradients() {
        // One voxel task and several (4096 voxels per task), batch 1 and 2, one channel.
        for dims in [[2, 6, 3, 4, 5], [1, 12, 9, 20, 30], [2, 1, 2, 3, 4]] {
            let fast = run(dims, true);
            let composed = run(dims, false);
            for (name, (a, e)) in ["output", "input grad", "scale grad"]
                .iter()
                .zip(fast.iter().zip(&composed))
            {
                assert_eq!(a.len(), e.len());
                for (a, e) in a.iter().zip(e) {
                    assert!(
                        (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "{name} {dims:?}: {a} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_constant_scale_gets_no_gradient_and_the_input_still_does() {
        let x = seeded([1, 4, 2, 2, 2], 3).require_grad();
        let one = Tensor::<TestBackend, 1>::ones([1], &test_device());
        let y = channels_last_scaled(&x, &one).unwrap();
        let grads = y.sum().backward();
        assert!(
            tensor_values(x.grad(&grads).unwrap())
                .iter()
                .all(|&g| g == 1.0)
        );
    }
}
