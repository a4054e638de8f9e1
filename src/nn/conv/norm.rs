//! Group normalisation (and instance normalisation, groups = channels) as one fused CPU
//! operation with its own backward pass.
//!
//! Composed from burn's tensor ops, a group norm of a `[N, C, D, H, W]` map runs about ten
//! elementwise and reduction ops forward and twice as many backward, each allocating a full
//! tensor; on the quickstart's network this cost 6–8× PyTorch's fused kernels. Here the forward
//! is one pass for the statistics and one for the output, and the backward two passes per
//! (sample, group), recomputing the statistics from the saved input instead of storing them.
//! Like [`super::conv3d`], the fast path runs on the Flex device with f32 data for the script
//! and inference backends, follows the same switch ([`super::set_fast_conv3d`]), and leaves
//! every other case to the composed version in `nn::blocks::group_norm`. `DETLAB_FUSED_NORM=0`
//! switches off only this kernel, so that one binary can time the norms both ways.

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

use super::{buffer, fast_conv3d_enabled};
use crate::nn::blocks::Activation;
use crate::nn::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

/// Group norm of `x` `[N, C, D, H, W]` with per-channel `weight` and `bias` `[C]` by the fused
/// kernels, or `None` where they do not apply (another backend or device, another dtype, the
/// switch off, or shapes that do not fit): the caller then composes it from tensor ops.
pub fn fused_group_norm<B: Backend>(
    x: &Tensor<B, 5>,
    num_groups: usize,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, 5>> {
    fused_masked_group_norm(x, None, num_groups, weight, bias, epsilon)
}

/// [`fused_group_norm`] under a mask `[N, 1, D, H, W]` of 0 and 1 (S3D's masked instance
/// norm): statistics over the voxels where the mask is 1, output 0 where it is 0, and no
/// gradient through the mask; `None` where the fused kernels do not apply.
pub fn fused_masked_group_norm<B: Backend>(
    x: &Tensor<B, 5>,
    mask: Option<&Tensor<B, 5>>,
    num_groups: usize,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, 5>> {
    fused_group_norm_activation(
        x,
        mask,
        num_groups,
        weight,
        bias,
        epsilon,
        Activation::Identity,
    )
}

/// [`fused_masked_group_norm`] followed by `activation` in the same op (one pass forward, and
/// the activation's derivative folded into the norm's backward): burn's LeakyReLU is a
/// comparison and a select each way, a full tensor each. `None` where the fused kernels do not
/// apply.
pub fn fused_group_norm_activation<B: Backend>(
    x: &Tensor<B, 5>,
    mask: Option<&Tensor<B, 5>>,
    num_groups: usize,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    epsilon: f64,
    activation: Activation,
) -> Option<Tensor<B, 5>> {
    let [n, c, d, h, w] = x.dims();
    let mask_fits = mask.is_none_or(|m| m.dims() == [n, 1, d, h, w] && m.dtype() == DType::F32);
    let fits = mask_fits
        && num_groups > 0
        && c.is_multiple_of(num_groups)
        && n * c * d * h * w > 0
        && weight.dims() == [c]
        && bias.dims() == [c]
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.dtype() == DType::F32;
    if !fits || !fast_conv3d_enabled() || !fused_norm_enabled() {
        return None;
    }
    // The mask is a constant of the graph: its values go with the options.
    let mask = match mask {
        Some(m) => Some(std::sync::Arc::from(m.to_data().to_vec::<f32>().ok()?)),
        None => None,
    };
    let options = NormOptions {
        num_groups,
        epsilon,
        mask,
        activation,
    };
    if same_type::<B, Autodiff<Dispatch>>() {
        let x: Tensor<Autodiff<Dispatch>, 5> = cast(x.clone());
        if !matches!(x.device(), DispatchDevice::Flex(_)) {
            return None;
        }
        return Some(cast(run::<Autodiff<Dispatch>>(
            x,
            cast(weight.clone()),
            cast(bias.clone()),
            options,
        )));
    }
    if same_type::<B, Dispatch>() {
        let x: Tensor<Dispatch, 5> = cast(x.clone());
        if !matches!(x.device(), DispatchDevice::Flex(_)) {
            return None;
        }
        return Some(cast(run::<Dispatch>(
            x,
            cast(weight.clone()),
            cast(bias.clone()),
            options,
        )));
    }
    None
}

/// Whether the environment leaves the fused norm on (`DETLAB_FUSED_NORM` not `0`, `off` or
/// `false`); read once.
fn fused_norm_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var("DETLAB_FUSED_NORM")
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "0" | "off" | "false"
        )
    })
}

fn run<B: FusedNormBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    options: NormOptions,
) -> Tensor<B, 5> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_group_norm(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        options,
    )))
}

/// Settings of a group norm.
#[derive(Clone, Debug, PartialEq)]
pub struct NormOptions {
    /// Channel groups (C for instance norm).
    pub num_groups: usize,
    /// Added to the variance.
    pub epsilon: f64,
    /// `[N, D·H·W]` values of 0 and 1: statistics over the 1s, output 0 at the 0s.
    pub mask: Option<std::sync::Arc<[f32]>>,
    /// Applied to the normalised output, inside the op.
    pub activation: Activation,
}

/// A backend with fused group-norm kernels (burn's backend-extension pattern): `Dispatch` on
/// the Flex device computes them, `Autodiff<B>` records the forward as one op whose backward
/// calls [`FusedNormBackend::fused_group_norm_backward`].
pub trait FusedNormBackend: Backend {
    /// Group norm of `x` `[N, C, D, H, W]`, affine per channel.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: NormOptions,
    ) -> FloatTensor<Self> {
        Self::fused_group_norm_keeping_input(x, weight, bias, options).0
    }

    /// [`FusedNormBackend::fused_group_norm`] that also returns the input, for the backward
    /// pass to keep; on the Flex device it holds the buffer the kernel read (no copy where
    /// nothing else holds the input, the usual case: a convolution's output).
    fn fused_group_norm_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: NormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients (input, weight, bias) given the gradient of the output (the bias recomputes
    /// the activation's input).
    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: NormOptions,
    ) -> [FloatTensor<Self>; 3];
}

impl FusedNormBackend for Dispatch {
    fn fused_group_norm_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: NormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let device = Self::float_device(&x);
        let shape = x.shape();
        let [n, c, ..] = shape.dims::<5>();
        let (x, weight, bias) = (read_f32::<5>(x), read_f32::<1>(weight), read_f32::<1>(bias));
        let y = kernels::forward(f32s(&x), f32s(&weight), f32s(&bias), [n, c], &options);
        (
            Self::float_from_data(TensorData::new(y, shape), &device),
            Self::float_from_data(x, &device),
        )
    }

    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: NormOptions,
    ) -> [FloatTensor<Self>; 3] {
        let device = Self::float_device(&x);
        let shape = x.shape();
        let [n, c, ..] = shape.dims::<5>();
        let (x, weight, bias, dy) = (
            read_f32::<5>(x),
            read_f32::<1>(weight),
            read_f32::<1>(bias),
            read_f32::<5>(output_grad),
        );
        let (dx, dweight, dbias) = kernels::backward(
            f32s(&x),
            [f32s(&weight), f32s(&bias)],
            f32s(&dy),
            [n, c],
            &options,
        );
        [
            Self::float_from_data(TensorData::new(dx, shape), &device),
            Self::float_from_data(TensorData::new(dweight, [c]), &device),
            Self::float_from_data(TensorData::new(dbias, [c]), &device),
        ]
    }
}

#[derive(Debug)]
struct FusedGroupNorm;

impl<B: FusedNormBackend> Backward<B, 3> for FusedGroupNorm {
    /// Input, weight, bias and the options.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, NormOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, weight, bias, options) = ops.state;
        let computed = B::fused_group_norm_backward(x, weight, bias, output_grad, options);
        register_gradients::<B>(
            ops.parents.iter().map(|p| p.as_ref().map(|node| node.id)),
            computed.map(Some),
            grads,
        );
    }
}

impl<B: FusedNormBackend, C: CheckpointStrategy> FusedNormBackend for Autodiff<B, C> {
    fn fused_group_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: NormOptions,
    ) -> FloatTensor<Self> {
        match FusedGroupNorm
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, x) = B::fused_group_norm_keeping_input(
                    x.primitive,
                    weight.primitive.clone(),
                    bias.primitive.clone(),
                    options.clone(),
                );
                prep.finish((x, weight.primitive, bias.primitive, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_group_norm(
                x.primitive,
                weight.primitive,
                bias.primitive,
                options,
            )),
        }
    }

    fn fused_group_norm_backward(
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _bias: FloatTensor<Self>,
        _output_grad: FloatTensor<Self>,
        _options: NormOptions,
    ) -> [FloatTensor<Self>; 3] {
        unreachable!("the autodiff backend differentiates through its inner backend's kernels")
    }

    fn fused_group_norm_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: NormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::fused_group_norm(x.clone(), weight, bias, options), x)
    }
}

/// Kernels on contiguous `[N, C, V]` f32 buffers (V = voxels per channel).
pub(crate) mod kernels {
    use super::*;

    /// Run `$body` with `$f` bound to `Activation::$method` (`scalar` or `derivative`) of
    /// `$activation` as a closure, one copy of the body per activation: matched outside the
    /// loops, so that each loop vectorises.
    macro_rules! per_activation {
        ($activation:expr, $method:ident, |$f:ident| $body:block) => {
            match $activation {
                Activation::Identity => {
                    let $f = |x: f32| Activation::Identity.$method(x);
                    $body
                }
                Activation::LeakyRelu => {
                    let $f = |x: f32| Activation::LeakyRelu.$method(x);
                    $body
                }
                Activation::Relu => {
                    let $f = |x: f32| Activation::Relu.$method(x);
                    $body
                }
            }
        };
    }

    /// `Σ f(a_i, b_i)` of `K` quantities at once over two slices of the same length, in f64:
    /// 8 interleaved partial sums per quantity, so that the loop vectorises instead of waiting
    /// on one f64 add per value (a serial f64 sum made the statistics a tenth of S3D's step).
    /// The order of the additions is fixed, so results do not depend on the thread count.
    #[inline(always)]
    pub(crate) fn sums<const K: usize>(
        a: &[f32],
        b: &[f32],
        f: impl Fn(f32, f32) -> [f64; K],
    ) -> [f64; K] {
        const LANES: usize = 8;
        let mut partial = [[0.0f64; LANES]; K];
        let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
        for (a, b) in a_chunks.zip(b_chunks) {
            for lane in 0..LANES {
                let values = f(a[lane], b[lane]);
                for k in 0..K {
                    partial[k][lane] += values[k];
                }
            }
        }
        let mut total = partial.map(|lanes| lanes.iter().sum::<f64>());
        for (&a, &b) in a_rest.iter().zip(b_rest) {
            let values = f(a, b);
            for k in 0..K {
                total[k] += values[k];
            }
        }
        total
    }

    /// Mean and 1 / sqrt(variance + ε) of one (sample, group) block, accumulated in f64;
    /// with a mask (one value per voxel of a channel), over the voxels where it is 1 (at
    /// least one voxel counts, as in the composed version).
    fn statistics(block: &[f32], mask: Option<&[f32]>, epsilon: f64) -> (f32, f32) {
        let Some(mask) = mask else {
            let len = block.len() as f64;
            let [sum] = sums(block, block, |v, _| [f64::from(v)]);
            let mean = sum / len;
            let [squares] = sums(block, block, |v, _| {
                let d = f64::from(v) - mean;
                [d * d]
            });
            return (mean as f32, (1.0 / (squares / len + epsilon).sqrt()) as f32);
        };
        let channels = || block.chunks_exact(mask.len());
        let [visible] = sums(mask, mask, |m, _| [f64::from(m)]);
        let count = (visible * (block.len() / mask.len()) as f64).max(1.0);
        let sum: f64 = channels()
            .map(|c| sums(c, mask, |v, m| [f64::from(v * m)])[0])
            .sum();
        let mean = sum / count;
        let squares: f64 = channels()
            .map(|c| {
                sums(c, mask, |v, m| {
                    let d = (f64::from(v) - mean) * f64::from(m);
                    [d * d]
                })[0]
            })
            .sum();
        (
            mean as f32,
            (1.0 / (squares / count + epsilon).sqrt()) as f32,
        )
    }

    /// `y = act((x − mean) · rstd · γ_c + β_c)` per (sample, group), times the mask if any.
    pub fn forward(
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        [n, c]: [usize; 2],
        options: &NormOptions,
    ) -> Vec<f32> {
        let (groups, epsilon, mask) =
            (options.num_groups, options.epsilon, options.mask.as_deref());
        let activation = options.activation;
        let group_len = x.len() / (n * groups);
        let channel_len = group_len * groups / c;
        let per_group = c / groups;
        let mut y = buffer::unwritten(x.len());
        y.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (out, block))| {
                let sample_mask = mask.map(|m| &m[(i / groups) * channel_len..][..channel_len]);
                let (mean, rstd) = statistics(block, sample_mask, epsilon);
                let first = (i % groups) * per_group;
                for (k, (o, v)) in out
                    .chunks_exact_mut(channel_len)
                    .zip(block.chunks_exact(channel_len))
                    .enumerate()
                {
                    let scale = rstd * weight[first + k];
                    let shift = bias[first + k] - mean * scale;
                    match sample_mask {
                        None => per_activation!(activation, scalar, |act| {
                            for (o, &v) in o.iter_mut().zip(v) {
                                o.write(act(v * scale + shift));
                            }
                        }),
                        Some(m) => per_activation!(activation, scalar, |act| {
                            for (o, (&v, &m)) in o.iter_mut().zip(v.iter().zip(m)) {
                                o.write(act(v * scale + shift) * m);
                            }
                        }),
                    }
                }
            });
        // SAFETY: every (sample, group) block writes each of its channels' values above.
        unsafe { buffer::written(y) }
    }

    /// Input, weight and bias gradients. With x̂ = (x − mean) · rstd and g = dy · γ_c, per
    /// (sample, group): dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)); dγ_c = Σ dy · x̂,
    /// dβ_c = Σ dy over samples and voxels. Under a mask m, dy is m · dy, the means run over
    /// the voxels where m = 1, and dx is 0 where m = 0 (those voxels reach neither the
    /// statistics nor the output).
    ///
    /// With an activation, dy is first multiplied by its derivative at the recomputed input
    /// `x̂ · γ_c + β_c`.
    pub fn backward(
        x: &[f32],
        [weight, bias]: [&[f32]; 2],
        dy: &[f32],
        [n, c]: [usize; 2],
        options: &NormOptions,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (groups, epsilon, mask) =
            (options.num_groups, options.epsilon, options.mask.as_deref());
        let activation = options.activation;
        let masked_dy: Vec<f32>;
        let dy = match mask {
            Some(m) => {
                let channel_len = x.len() / (n * c);
                masked_dy = dy
                    .par_chunks(channel_len)
                    .enumerate()
                    .flat_map_iter(|(i, d)| {
                        let m = &m[(i / c) * channel_len..][..channel_len];
                        d.iter().zip(m).map(|(&d, &m)| d * m)
                    })
                    .collect();
                &masked_dy[..]
            }
            None => dy,
        };
        let group_len = x.len() / (n * groups);
        let channel_len = group_len * groups / c;
        let per_group = c / groups;
        let mut dx = buffer::unwritten(x.len());
        // Per (sample, group): the channel sums of dy · x̂ and dy, summed over samples after.
        let partial: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len).zip(dy.par_chunks(group_len)))
            .enumerate()
            .map(|(i, (dx, (block, dy)))| {
                let sample_mask = mask.map(|m| &m[(i / groups) * channel_len..][..channel_len]);
                let (mean, rstd) = statistics(block, sample_mask, epsilon);
                let first = (i % groups) * per_group;
                // Per channel Σ dy · x̂ and Σ dy, and the group means of g and g · x̂.
                let moments = |dy: &[f32]| {
                    let mut channel_sums = Vec::with_capacity(per_group);
                    let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                    for (k, (v, d)) in block
                        .chunks_exact(channel_len)
                        .zip(dy.chunks_exact(channel_len))
                        .enumerate()
                    {
                        let [dyx, dys] = sums(v, d, |v, d| {
                            let xhat = (v - mean) * rstd;
                            [f64::from(d * xhat), f64::from(d)]
                        });
                        channel_sums.push((dyx, dys));
                        let gamma = f64::from(weight[first + k]);
                        sum_g += dys * gamma;
                        sum_gx += dyx * gamma;
                    }
                    let len = match sample_mask {
                        Some(m) => {
                            let [visible] = sums(m, m, |v, _| [f64::from(v)]);
                            (visible * per_group as f64).max(1.0)
                        }
                        None => group_len as f64,
                    };
                    (channel_sums, (sum_g / len) as f32, (sum_gx / len) as f32)
                };
                if activation == Activation::Identity {
                    let (channel_sums, mean_g, mean_gx) = moments(dy);
                    for (k, (out, (v, d))) in dx
                        .chunks_exact_mut(channel_len)
                        .zip(
                            block
                                .chunks_exact(channel_len)
                                .zip(dy.chunks_exact(channel_len)),
                        )
                        .enumerate()
                    {
                        let gamma = weight[first + k];
                        let value = |v: f32, d: f32| {
                            let xhat = (v - mean) * rstd;
                            rstd * (d * gamma - mean_g - xhat * mean_gx)
                        };
                        match sample_mask {
                            None => {
                                out.iter_mut()
                                    .zip(v.iter().zip(d))
                                    .for_each(|(o, (&v, &d))| {
                                        o.write(value(v, d));
                                    })
                            }
                            Some(m) => out.iter_mut().zip(v.iter().zip(d).zip(m)).for_each(
                                |(o, ((&v, &d), &m))| {
                                    o.write(value(v, d) * m);
                                },
                            ),
                        }
                    }
                    return channel_sums;
                }
                // With an activation, dx first holds dy through the activation's derivative,
                // which the last pass then turns into dx in place (no buffer of its own).
                for (k, (out, (v, d))) in dx
                    .chunks_exact_mut(channel_len)
                    .zip(
                        block
                            .chunks_exact(channel_len)
                            .zip(dy.chunks_exact(channel_len)),
                    )
                    .enumerate()
                {
                    let scale = rstd * weight[first + k];
                    let shift = bias[first + k] - mean * scale;
                    per_activation!(activation, derivative, |slope| {
                        for (o, (&v, &d)) in out.iter_mut().zip(v.iter().zip(d)) {
                            o.write(d * slope(v * scale + shift));
                        }
                    });
                }
                // SAFETY: every channel of the block was written above.
                let dx = unsafe { buffer::written_slice(dx) };
                let (channel_sums, mean_g, mean_gx) = moments(dx);
                for (k, (out, v)) in dx
                    .chunks_exact_mut(channel_len)
                    .zip(block.chunks_exact(channel_len))
                    .enumerate()
                {
                    let gamma = weight[first + k];
                    for (o, &v) in out.iter_mut().zip(v) {
                        let xhat = (v - mean) * rstd;
                        *o = rstd * (*o * gamma - mean_g - xhat * mean_gx);
                    }
                    if let Some(m) = sample_mask {
                        out.iter_mut().zip(m).for_each(|(o, &m)| *o *= m);
                    }
                }
                channel_sums
            })
            .collect();
        let (mut dweight, mut dbias) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (i, sums) in partial.iter().enumerate() {
            let first = (i % groups) * per_group;
            for (k, (dyx, dys)) in sums.iter().enumerate() {
                dweight[first + k] += dyx;
                dbias[first + k] += dys;
            }
        }
        (
            // SAFETY: every (sample, group) block of dx was written above.
            unsafe { buffer::written(dx) },
            dweight.into_iter().map(|v| v as f32).collect(),
            dbias.into_iter().map(|v| v as f32).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::blocks::{group_norm, group_norm_activation};
    use crate::nn::conv::with_fast_conv3d;
    use crate::nn::testing::{TestBackend, relative_error, tensor_values, test_device};

    fn seeded<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<TestBackend, D> {
        let values: Vec<f32> = crate::nn::conv::uniform_values(shape.iter().product(), seed)
            .into_iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &test_device())
    }

    /// Output and the gradients of `sum(y · r)` (input, γ, β), fused or composed.
    fn run(
        x: &Tensor<TestBackend, 5>,
        groups: usize,
        fused: bool,
        activation: Activation,
    ) -> [Vec<f64>; 4] {
        let shape = x.dims();
        let c = shape[1];
        let x = x.clone().require_grad();
        let weight = seeded([c], 2).require_grad();
        let bias = seeded([c], 3).require_grad();
        let applies = with_fast_conv3d(fused, || {
            fused_group_norm_activation(&x, None, groups, &weight, &bias, 1e-5, activation)
                .is_some()
        });
        assert_eq!(applies, fused, "fused kernel used for {shape:?}");
        let y = with_fast_conv3d(fused, || {
            group_norm_activation(
                x.clone(),
                groups,
                weight.clone(),
                bias.clone(),
                1e-5,
                activation,
            )
        });
        let grads = (y.clone() * seeded(shape, 4)).sum().backward();
        [
            tensor_values(y),
            tensor_values(x.grad(&grads).unwrap()),
            tensor_values(weight.grad(&grads).unwrap()),
            tensor_values(bias.grad(&grads).unwrap()),
        ]
    }

    /// The fused op against the composed one, with each activation the networks use.
    fn assert_close(x: &Tensor<TestBackend, 5>, groups: usize) {
        for activation in [
            Activation::Identity,
            Activation::LeakyRelu,
            Activation::Relu,
        ] {
            assert_close_with(x, groups, activation);
        }
    }

    fn assert_close_with(x: &Tensor<TestBackend, 5>, groups: usize, activation: Activation) {
        let fused = run(x, groups, true, activation);
        let composed = run(x, groups, false, activation);
        let shape = x.dims();
        for (name, (a, e)) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            let err = relative_error(a, e);
            assert!(
                err <= 1e-4,
                "{name}: relative error {err} for {shape:?}, {groups} groups, {activation:?}"
            );
        }
    }

    #[test]
    fn fused_group_and_instance_norm_match_the_composed_ops_with_gradients() {
        for (shape, groups) in [
            ([3, 4, 3, 5, 7], 4), // instance norm (groups = C), batch 3, odd sizes
            ([1, 8, 3, 3, 5], 4), // C / 2 groups, batch 1
            ([3, 6, 5, 1, 3], 1), // one group over all channels
            ([1, 1, 5, 3, 2], 1), // one channel
            ([3, 6, 1, 2, 9], 3),
        ] {
            assert_close(&seeded(shape, 1), groups);
        }
    }

    #[test]
    fn fused_norm_of_a_constant_input_matches_the_composed_ops() {
        // Variance 0: x̂ = 0, the output is β and the gradients are finite (rstd = 1/√ε).
        let x = Tensor::<TestBackend, 5>::full([3, 4, 3, 3, 3], 2.0, &test_device());
        for groups in [1, 2, 4] {
            assert_close(&x, groups);
        }
        let fused = run(&x, 4, true, Activation::Identity);
        assert!(fused.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn switch_off_and_other_backends_use_the_composed_ops() {
        let x = seeded([1, 2, 2, 2, 2], 1);
        let (w, b) = (seeded([2], 2), seeded([2], 3));
        assert!(with_fast_conv3d(false, || fused_group_norm(&x, 2, &w, &b, 1e-5)).is_none());
        assert!(with_fast_conv3d(true, || fused_group_norm(&x, 3, &w, &b, 1e-5)).is_none());
        // With the switch off, group_norm is exactly the composed tensor ops.
        let composed = {
            let grouped = x.clone().reshape([1, 2, 8]);
            let mean = grouped.clone().mean_dim(2);
            let centered = grouped - mean;
            let var = centered.clone().square().mean_dim(2);
            (centered / var.add_scalar(1e-5).sqrt()).reshape([1, 2, 2, 2, 2])
                * w.clone().reshape([1, 2, 1, 1, 1])
                + b.clone().reshape([1, 2, 1, 1, 1])
        };
        let off = with_fast_conv3d(false, || {
            group_norm(x.clone(), 2, w.clone(), b.clone(), 1e-5)
        });
        assert_eq!(tensor_values(off), tensor_values(composed));
        type Plain = burn::backend::flex::Flex;
        let device = Default::default();
        let x = Tensor::<Plain, 5>::zeros([1, 2, 2, 2, 2], &device);
        let w = Tensor::<Plain, 1>::ones([2], &device);
        assert!(fused_group_norm(&x, 2, &w, &w, 1e-5).is_none());
    }
}
