//! 3D average pooling with the kernel equal to the stride (ResEnc's residual shortcut) as one
//! op with its own backward, on the Flex device.
//!
//! burn has no 3D pooling, and the composed version (a 6-D reshape and three means) walked
//! every voxel with strided indices in the backward of each mean: 7 % of a pre-training step
//! at 32³, for an op that reads its input once.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn::{Dispatch, DispatchDevice};
use rayon::prelude::*;

use super::fast_conv3d_enabled;
use crate::nn::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

/// The geometry of one pooling: input `[N, C, D, H, W]`, kernel = stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolShape {
    /// `[N, C, D, H, W]` of the input.
    input: [usize; 5],
    /// Kernel (and stride) per axis.
    kernel: [usize; 3],
}

impl PoolShape {
    fn output(&self) -> [usize; 5] {
        let [n, c, d, h, w] = self.input;
        let [kd, kh, kw] = self.kernel;
        [n, c, d / kd, h / kh, w / kw]
    }
}

/// Average pooling of `x` (`[N, C, D, H, W]`) over `kernel`-sized blocks with the same stride,
/// voxels past the last whole block left out; `None` where this op does not apply (another
/// backend or device, not f32, or the fast kernels switched off).
pub(crate) fn avg_pool3d<B: Backend>(x: &Tensor<B, 5>, kernel: [usize; 3]) -> Option<Tensor<B, 5>> {
    let shape = PoolShape {
        input: x.dims(),
        kernel,
    };
    let output = shape.output();
    if x.dtype() != DType::F32
        || kernel.contains(&0)
        || output.iter().product::<usize>() == 0
        || !fast_conv3d_enabled()
    {
        return None;
    }
    let on_flex = |device: &DispatchDevice| matches!(device, DispatchDevice::Flex(_));
    if same_type::<B, Autodiff<Dispatch>>() {
        let x: Tensor<Autodiff<Dispatch>, 5> = cast(x.clone());
        if on_flex(&x.device()) {
            return Some(cast(run::<Autodiff<Dispatch>>(x, shape)));
        }
    } else if same_type::<B, Dispatch>() {
        let x: Tensor<Dispatch, 5> = cast(x.clone());
        if on_flex(&x.device()) {
            return Some(cast(run::<Dispatch>(x, shape)));
        }
    }
    None
}

fn run<B: PoolBackend>(x: Tensor<B, 5>, shape: PoolShape) -> Tensor<B, 5> {
    Tensor::from_primitive(TensorPrimitive::Float(B::average_pool(
        x.into_primitive().tensor(),
        shape,
    )))
}

/// A backend with the pooling as one op (burn's backend-extension pattern).
pub(crate) trait PoolBackend: Backend {
    /// `[N, C, D, H, W]` → `[N, C, D/kd, H/kh, W/kw]`, block means.
    fn average_pool(x: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self>;
    /// The input gradient given the output's: each output gradient spread evenly over its
    /// block, 0 for the voxels past the last whole block.
    fn average_pool_backward(grad: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self>;
}

impl PoolBackend for Dispatch {
    fn average_pool(x: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self> {
        let device = Self::float_device(&x);
        let data = read_f32::<5>(x);
        let mut out = vec![0.0f32; shape.output().iter().product()];
        kernels::pool(f32s(&data), &mut out, shape);
        Self::float_from_data(TensorData::new(out, shape.output()), &device)
    }

    fn average_pool_backward(grad: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self> {
        let device = Self::float_device(&grad);
        let data = read_f32::<5>(grad);
        let mut out = vec![0.0f32; shape.input.iter().product()];
        kernels::spread(f32s(&data), &mut out, shape);
        Self::float_from_data(TensorData::new(out, shape.input), &device)
    }
}

#[derive(Debug)]
struct AveragePool;

impl<B: PoolBackend> Backward<B, 1> for AveragePool {
    type State = PoolShape;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let input_grad = B::average_pool_backward(output_grad, ops.state);
        register_gradients::<B>(
            ops.parents.iter().map(|p| p.as_ref().map(|node| node.id)),
            [Some(input_grad)],
            grads,
        );
    }
}

impl<B: PoolBackend, C: CheckpointStrategy> PoolBackend for Autodiff<B, C> {
    fn average_pool(x: FloatTensor<Self>, shape: PoolShape) -> FloatTensor<Self> {
        match AveragePool
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shape, B::average_pool(x.primitive, shape)),
            OpsKind::UnTracked(prep) => prep.finish(B::average_pool(x.primitive, shape)),
        }
    }

    fn average_pool_backward(_grad: FloatTensor<Self>, _shape: PoolShape) -> FloatTensor<Self> {
        unreachable!("the autodiff backend differentiates through its inner backend's kernels")
    }
}

mod kernels {
    use super::*;

    /// Block means; one task per (sample, channel).
    pub fn pool(x: &[f32], out: &mut [f32], shape: PoolShape) {
        let [_, _, d, h, w] = shape.input;
        let [kd, kh, kw] = shape.kernel;
        let [_, _, od, oh, ow] = shape.output();
        let scale = 1.0 / (kd * kh * kw) as f32;
        out.par_chunks_mut(od * oh * ow)
            .zip(x.par_chunks(d * h * w))
            .for_each(|(out, x)| {
                for z in 0..od {
                    for y in 0..oh {
                        let row = &mut out[(z * oh + y) * ow..][..ow];
                        for a in 0..kd {
                            for b in 0..kh {
                                let source = &x[((z * kd + a) * h + y * kh + b) * w..][..ow * kw];
                                for (o, block) in row.iter_mut().zip(source.chunks_exact(kw)) {
                                    *o += block.iter().sum::<f32>();
                                }
                            }
                        }
                        row.iter_mut().for_each(|o| *o *= scale);
                    }
                }
            });
    }

    /// The pooling's input gradient; one task per (sample, channel).
    pub fn spread(grad: &[f32], out: &mut [f32], shape: PoolShape) {
        let [_, _, d, h, w] = shape.input;
        let [kd, kh, kw] = shape.kernel;
        let [_, _, od, oh, ow] = shape.output();
        let scale = 1.0 / (kd * kh * kw) as f32;
        out.par_chunks_mut(d * h * w)
            .zip(grad.par_chunks(od * oh * ow))
            .for_each(|(out, grad)| {
                for z in 0..od {
                    for y in 0..oh {
                        let row = &grad[(z * oh + y) * ow..][..ow];
                        for a in 0..kd {
                            for b in 0..kh {
                                let target =
                                    &mut out[((z * kd + a) * h + y * kh + b) * w..][..ow * kw];
                                for (block, &g) in target.chunks_exact_mut(kw).zip(row) {
                                    block.iter_mut().for_each(|v| *v = g * scale);
                                }
                            }
                        }
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv::with_fast_conv3d;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};
    use burn::tensor::TensorData;

    /// The op and the composed version, with the input gradient under a random output weight.
    fn run(dims: [usize; 5], kernel: [usize; 3], fast: bool) -> [Vec<f64>; 2] {
        let device = test_device();
        // Values from a generator of their own: the backend's is shared by parallel tests.
        let seeded = |shape: [usize; 5], seed: u64| {
            let values = crate::nn::conv::uniform_values(shape.iter().product(), seed);
            Tensor::<TestBackend, 5>::from_data(TensorData::new(values, shape), &device)
        };
        let x = seeded(dims, 3).require_grad();
        let y = with_fast_conv3d(fast, || crate::nn::blocks::avg_pool3d(x.clone(), kernel));
        let applied = with_fast_conv3d(fast, || avg_pool3d(&x, kernel).is_some());
        assert_eq!(applied, fast);
        let weight = seeded(y.dims(), 4);
        let grads = (y.clone() * weight).sum().backward();
        [tensor_values(y), tensor_values(x.grad(&grads).unwrap())]
    }

    #[test]
    fn pooling_matches_the_composed_version_with_gradients() {
        for (dims, kernel) in [
            ([2, 3, 4, 6, 8], [2, 2, 2]),
            ([1, 2, 5, 7, 9], [2, 2, 2]), // odd sizes: the last voxels are left out
            ([2, 1, 4, 4, 6], [1, 2, 3]),
            ([1, 2, 3, 3, 3], [3, 3, 3]),
        ] {
            let [fast_y, fast_dx] = run(dims, kernel, true);
            let [y, dx] = run(dims, kernel, false);
            for (a, b) in fast_y.iter().zip(&y).chain(fast_dx.iter().zip(&dx)) {
                assert!((a - b).abs() < 1e-6, "{dims:?} {kernel:?}: {a} vs {b}");
            }
            assert_eq!((fast_y.len(), fast_dx.len()), (y.len(), dx.len()));
        }
    }
}
