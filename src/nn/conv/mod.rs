//! 3D convolution with a fast CPU backward pass.
//!
//! burn's default conv3d backward (used by the Flex CPU backend) computes the input gradient
//! with a transposed convolution and the weight gradient with a convolution whose "kernel" is
//! the whole output-gradient volume; both are poor shapes for Flex's tiled im2col + gemm and
//! cost 4–5× the forward pass (PyTorch: about 2×). This module registers conv3d as a custom
//! autodiff operation (burn's backend-extension pattern: [`FastConvBackend`], implemented for
//! `Dispatch` and for `Autodiff<B>`) whose backward, on the Flex device, runs
//! im2col + one gemm per chunk for each gradient:
//!
//! - weight gradient = Σ over chunks of `dY [C_out, M] · im2col(X)ᵀ [M, C_in·k³]`,
//! - input gradient = col2im(`Wᵀ [C_in·k³, C_out] · dY [C_out, M]`),
//! - bias gradient = the sum of `dY` over batch and space,
//!
//! where the output volume is cut into chunks of whole depth slices so that the im2col buffer
//! stays small (about [`COLUMN_BUFFER_BYTES`]). The forward pass runs the same im2col + gemm.
//! On other devices (CUDA), other dtypes or grouped convolutions burn's own kernels are used.
//!
//! Models use [`Conv3d`], a drop-in replacement of burn's `Conv3d` with the same fields (so
//! parameter paths `….weight` / `….bias` and saved weights are unchanged). Model code is
//! generic over `B: Backend`; [`conv3d`] routes to the fast operation when `B` is the script
//! backend `Autodiff<Dispatch>` or the inference backend `Dispatch`, and to burn's `conv3d`
//! otherwise. `DETLAB_FAST_CONV3D=0` (or [`set_fast_conv3d`]) switches the fast path off.
//!
//! The other CPU ops with their own backward live here too and follow the same switch, each
//! reached from the layer or function that models call: [`norm`] (group / instance norm, with
//! a mask and a fused activation; `nn::blocks::group_norm_activation`), `transpose`
//! ([`ConvTranspose3d`] with kernel = stride), `pool` (`nn::blocks::avg_pool3d`), `layout`
//! (the Retina U-Net heads' channels-last flattening) and `direct` (the AVX-512 / AVX2
//! convolution kernels).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::{Module, Param};
use burn::nn::PaddingConfig3d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, FloatTensorOps, ModuleOps};
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn::{Dispatch, DispatchDevice};
use rayon::prelude::*;

use super::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

mod buffer;
pub(crate) mod layout;
pub mod norm;
pub(crate) mod pool;
mod transpose;

pub use transpose::ConvTranspose3d;

/// Target size of the im2col buffer of one chunk (bytes); bounds the extra memory of a conv.
pub const COLUMN_BUFFER_BYTES: usize = 8 << 20;

/// A 3D convolution layer: burn's `Conv3d` (same fields and parameter names) whose forward
/// uses [`conv3d`], i.e. the fast CPU backward when training on the Flex device.
#[derive(Module, Debug)]
pub struct Conv3d<B: Backend> {
    /// Kernel `[channels_out, channels_in / groups, kd, kh, kw]`.
    pub weight: Param<Tensor<B, 5>>,
    /// Per-output-channel bias `[channels_out]`, if any.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stride `[sd, sh, sw]`.
    pub stride: [usize; 3],
    /// Kernel size `[kd, kh, kw]`.
    pub kernel_size: [usize; 3],
    /// Dilation `[dd, dh, dw]`.
    pub dilation: [usize; 3],
    /// Number of channel groups.
    pub groups: usize,
    /// Padding rule.
    pub padding: PaddingConfig3d,
}

impl<B: Backend> From<burn::nn::conv::Conv3d<B>> for Conv3d<B> {
    fn from(conv: burn::nn::conv::Conv3d<B>) -> Self {
        Self {
            weight: conv.weight,
            bias: conv.bias,
            stride: conv.stride,
            kernel_size: conv.kernel_size,
            dilation: conv.dilation,
            groups: conv.groups,
            padding: conv.padding,
        }
    }
}

impl<B: Backend> Conv3d<B> {
    /// Apply the convolution to `[N, C_in, D, H, W]`, giving `[N, C_out, D', H', W']`.
    pub fn forward(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, depth, height, width] = input.dims();
        let padding = match &self.padding {
            PaddingConfig3d::Valid => [0, 0, 0],
            PaddingConfig3d::Explicit(d, h, w) => [*d, *h, *w],
            PaddingConfig3d::Same => {
                let sizes = [depth, height, width];
                let pads: [(usize, usize); 3] = std::array::from_fn(|i| {
                    same_padding(self.kernel_size[i], self.stride[i], sizes[i])
                });
                if pads.iter().any(|(start, end)| start != end) {
                    // Asymmetric "same" padding: burn's layer reports it.
                    return self.as_burn().forward(input);
                }
                pads.map(|(start, _)| start)
            }
        };
        conv3d(
            input,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new(self.stride, padding, self.dilation, self.groups),
        )
    }

    fn as_burn(&self) -> burn::nn::conv::Conv3d<B> {
        burn::nn::conv::Conv3d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            stride: self.stride,
            kernel_size: self.kernel_size,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding.clone(),
        }
    }
}

/// burn-nn's symmetric "same" padding rule (start, end) for one axis.
fn same_padding(kernel_size: usize, stride: usize, size_in: usize) -> (usize, usize) {
    let size_out = size_in.div_ceil(stride);
    let total = if size_out > 0 {
        ((size_out - 1) * stride + kernel_size).saturating_sub(size_in)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

// ---------------------------------------------------------------------------------------------
// Switch

/// 0 = not read yet, 1 = on, 2 = off.
static FAST_CONV3D: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static FAST_CONV3D_OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Flex kernel calls on this thread (forward, backward), so tests can tell that the fast
    /// path really ran.
    static KERNEL_CALLS: Cell<[usize; 2]> = const { Cell::new([0, 0]) };
}

fn count_kernel_call(_which: usize) {
    #[cfg(test)]
    KERNEL_CALLS.with(|c| {
        let mut calls = c.get();
        calls[_which] += 1;
        c.set(calls);
    });
}

/// Switch the fast conv3d path on or off for the whole process (default: on, unless the
/// environment variable `DETLAB_FAST_CONV3D` is `0`, `off` or `false`).
pub fn set_fast_conv3d(enabled: bool) {
    FAST_CONV3D.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether convolutions built now use the fast conv3d path (on this thread).
pub fn fast_conv3d_enabled() -> bool {
    if let Some(enabled) = FAST_CONV3D_OVERRIDE.with(Cell::get) {
        return enabled;
    }
    match FAST_CONV3D.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let enabled = !matches!(
                std::env::var("DETLAB_FAST_CONV3D")
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
                    .as_str(),
                "0" | "off" | "false"
            );
            set_fast_conv3d(enabled);
            enabled
        }
    }
}

/// Run `f` with the fast conv3d path switched on or off on this thread only (the choice is
/// made when a convolution runs forward; its backward follows that choice).
pub fn with_fast_conv3d<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FAST_CONV3D_OVERRIDE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(FAST_CONV3D_OVERRIDE.with(|cell| cell.replace(Some(enabled))));
    f()
}

// ---------------------------------------------------------------------------------------------
// Routing from generic model code

/// 3D convolution of `x` `[N, C_in, D, H, W]` with `weight` `[C_out, C_in / groups, kd, kh, kw]`:
/// burn's `conv3d`, computed by the fast path when `B` is the script or inference backend.
pub fn conv3d<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<3>,
) -> Tensor<B, 5> {
    let [_, channels_in, ..] = x.dims();
    let [channels_out, group_channels_in, ..] = weight.dims();
    let valid = options.groups >= 1
        && group_channels_in * options.groups == channels_in
        && channels_out % options.groups == 0
        && bias.as_ref().is_none_or(|b| b.dims() == [channels_out]);
    if !valid || !fast_conv3d_enabled() {
        // burn's conv3d checks the shapes and explains what is wrong.
        return burn::tensor::module::conv3d(x, weight, bias, options);
    }
    if same_type::<B, Autodiff<Dispatch>>() {
        return cast(fast::<Autodiff<Dispatch>>(
            cast(x),
            cast(weight),
            bias.map(cast),
            options,
        ));
    }
    if same_type::<B, Dispatch>() {
        return cast(fast::<Dispatch>(
            cast(x),
            cast(weight),
            bias.map(cast),
            options,
        ));
    }
    burn::tensor::module::conv3d(x, weight, bias, options)
}

fn fast<B: FastConvBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<3>,
) -> Tensor<B, 5> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fast_conv3d(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        options,
    )))
}

// ---------------------------------------------------------------------------------------------
// Backend extension

/// Gradients of a conv3d with respect to its input, weight and bias (each when requested).
pub struct Conv3dGradients<B: Backend> {
    /// Gradient of the input `[N, C_in, D, H, W]`.
    pub x: Option<FloatTensor<B>>,
    /// Gradient of the weight `[C_out, C_in / groups, kd, kh, kw]`.
    pub weight: Option<FloatTensor<B>>,
    /// Gradient of the bias `[C_out]`.
    pub bias: Option<FloatTensor<B>>,
}

/// Which gradients a conv3d backward must compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dGradRequest {
    /// The input's gradient.
    pub x: bool,
    /// The weight's gradient.
    pub weight: bool,
    /// The bias's gradient.
    pub bias: bool,
}

/// A backend with its own conv3d forward and backward kernels (burn's backend-extension
/// pattern). The defaults are burn's own ops; `Dispatch` overrides them on the Flex device
/// and `Autodiff<B>` records [`FastConvBackend::fast_conv3d`] as one custom autodiff op whose
/// backward calls `B::fast_conv3d_backward`.
pub trait FastConvBackend: Backend {
    /// conv3d forward; same semantics as `Backend::conv3d`.
    fn fast_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> FloatTensor<Self> {
        Self::fast_conv3d_keeping_input(x, weight, bias, options).0
    }

    /// [`FastConvBackend::fast_conv3d`] that also returns the input, for the backward pass to
    /// keep. On the Flex device the returned input holds the buffer the kernel read, so that
    /// an input which nothing else holds (the usual case: a norm's output) is never copied.
    fn fast_conv3d_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::conv3d(x.clone(), weight, bias, options), x)
    }

    /// Gradients of conv3d given the gradient of its output.
    fn fast_conv3d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<3>,
        request: Conv3dGradRequest,
    ) -> Conv3dGradients<Self> {
        burn_conv3d_backward::<Self>(x, weight, output_grad, options, request)
    }
}

/// burn's own conv3d backward ops (used where no fast kernel applies).
fn burn_conv3d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<3>,
    request: Conv3dGradRequest,
) -> Conv3dGradients<B> {
    let bias = request.bias.then(|| {
        let [n, c, d, h, w] = output_grad.shape().dims();
        let grad = B::float_swap_dims(output_grad.clone(), 0, 1);
        let grad = B::float_reshape(grad, Shape::new([c, n * d * h * w]));
        B::float_reshape(B::float_sum_dim(grad, 1), Shape::new([c]))
    });
    let x_grad = request.x.then(|| {
        B::conv3d_x_backward(
            x.clone(),
            weight.clone(),
            output_grad.clone(),
            options.clone(),
        )
    });
    let weight_grad = request
        .weight
        .then(|| B::conv3d_weight_backward(x, weight, output_grad, options));
    Conv3dGradients {
        x: x_grad,
        weight: weight_grad,
        bias,
    }
}

impl FastConvBackend for Dispatch {
    fn fast_conv3d_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let geometry = flex_geometry(&x, &weight, None, &options);
        let (Some(geometry), true) = (
            geometry,
            bias.as_ref().is_none_or(|b| b.dtype() == DType::F32),
        ) else {
            return (Self::conv3d(x.clone(), weight, bias, options), x);
        };
        count_kernel_call(0);
        let device = Self::float_device(&x);
        // Without a copy where this is the input's only holder (see `read_f32`).
        let x = read_f32::<5>(x);
        let weight = read_f32::<5>(weight);
        let bias = bias.map(read_f32::<1>);
        let output = kernels::forward(f32s(&x), f32s(&weight), bias.as_ref().map(f32s), &geometry);
        let [n, _, d, h, w] = geometry.output_shape();
        (
            Self::float_from_data(
                TensorData::new(output, [n, geometry.channels_out, d, h, w]),
                &device,
            ),
            Self::float_from_data(x, &device),
        )
    }

    fn fast_conv3d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<3>,
        request: Conv3dGradRequest,
    ) -> Conv3dGradients<Self> {
        let geometry = flex_geometry(&x, &weight, Some(&output_grad), &options);
        let (Some(geometry), true) = (geometry, output_grad.dtype() == DType::F32) else {
            return burn_conv3d_backward::<Self>(x, weight, output_grad, options, request);
        };
        count_kernel_call(1);
        let device = Self::float_device(&x);
        let x_shape = x.shape();
        let weight_shape = weight.shape();
        let output_grad = read_f32::<5>(output_grad);
        let dy = f32s(&output_grad);
        let bias = request.bias.then(|| {
            Self::float_from_data(
                TensorData::new(kernels::bias_grad(dy, &geometry), [geometry.channels_out]),
                &device,
            )
        });
        let weight_grad = request.weight.then(|| {
            let x = read_f32::<5>(x);
            Self::float_from_data(
                TensorData::new(
                    kernels::weight_grad(f32s(&x), dy, &geometry),
                    weight_shape.clone(),
                ),
                &device,
            )
        });
        let x_grad = request.x.then(|| {
            let weight = read_f32::<5>(weight);
            Self::float_from_data(
                TensorData::new(kernels::input_grad(f32s(&weight), dy, &geometry), x_shape),
                &device,
            )
        });
        Conv3dGradients {
            x: x_grad,
            weight: weight_grad,
            bias,
        }
    }
}

/// The geometry of a conv3d the Flex kernels handle: Flex device, f32, one group, matching
/// shapes; `None` otherwise.
fn flex_geometry(
    x: &FloatTensor<Dispatch>,
    weight: &FloatTensor<Dispatch>,
    output_grad: Option<&FloatTensor<Dispatch>>,
    options: &ConvOptions<3>,
) -> Option<kernels::Geometry> {
    if !matches!(Dispatch::float_device(x), DispatchDevice::Flex(_))
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || options.groups != 1
    {
        return None;
    }
    let geometry = kernels::Geometry::new(
        x.shape().dims(),
        weight.shape().dims(),
        options.stride,
        options.padding,
        options.dilation,
    )?;
    match output_grad {
        Some(g) if g.shape().dims::<5>() != geometry.output_shape_with(geometry.channels_out) => {
            None
        }
        _ => Some(geometry),
    }
}

#[derive(Debug)]
struct FastConv3dWithBias;

#[derive(Debug)]
struct FastConv3dNoBias;

/// State kept for the backward pass: the input and weight, and the options.
type ConvState<B> = (FloatTensor<B>, FloatTensor<B>, ConvOptions<3>);

fn conv_backward<B: FastConvBackend, const N: usize>(
    ops: Ops<ConvState<B>, N>,
    grads: &mut Gradients,
) {
    let output_grad = grads.consume::<B>(&ops.node);
    let (x, weight, options) = ops.state;
    let parent = |i: usize| ops.parents.get(i).and_then(|p| p.as_ref());
    let request = Conv3dGradRequest {
        x: parent(0).is_some(),
        weight: parent(1).is_some(),
        bias: parent(2).is_some(),
    };
    let computed = B::fast_conv3d_backward(x, weight, output_grad, options, request);
    register_gradients::<B>(
        (0..3).map(|i| parent(i).map(|node| node.id)),
        [computed.x, computed.weight, computed.bias],
        grads,
    );
}

impl<B: FastConvBackend> Backward<B, 3> for FastConv3dWithBias {
    type State = ConvState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        conv_backward::<B, 3>(ops, grads);
    }
}

impl<B: FastConvBackend> Backward<B, 2> for FastConv3dNoBias {
    type State = ConvState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        conv_backward::<B, 2>(ops, grads);
    }
}

impl<B: FastConvBackend, C: CheckpointStrategy> FastConvBackend for Autodiff<B, C> {
    fn fast_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> FloatTensor<Self> {
        match bias {
            Some(bias) => match FastConv3dWithBias
                .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (output, x) = B::fast_conv3d_keeping_input(
                        x.primitive,
                        weight.primitive.clone(),
                        Some(bias.primitive),
                        options.clone(),
                    );
                    prep.finish((x, weight.primitive, options), output)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fast_conv3d(
                    x.primitive,
                    weight.primitive,
                    Some(bias.primitive),
                    options,
                )),
            },
            None => match FastConv3dNoBias
                .prepare::<C>([x.node.clone(), weight.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (output, x) = B::fast_conv3d_keeping_input(
                        x.primitive,
                        weight.primitive.clone(),
                        None,
                        options.clone(),
                    );
                    prep.finish((x, weight.primitive, options), output)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::fast_conv3d(x.primitive, weight.primitive, None, options))
                }
            },
        }
    }

    fn fast_conv3d_keeping_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::fast_conv3d(x.clone(), weight, bias, options), x)
    }
}

/// The im2col / col2im + gemm kernels on contiguous f32 buffers.
pub(crate) mod kernels;

/// Direct AVX-512 / AVX2 kernels for stride-1 convolutions.
pub(crate) mod direct;

#[cfg(test)]
mod geometry_tests;
#[cfg(test)]
mod tests;

/// `len` values drawn uniformly from [-1, 1) by a generator of their own seed (benchmarks and
/// kernel tests; the backend's generator is shared by tests running in parallel).
pub(crate) fn uniform_values(len: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Time of each conv3d kernel of one convolution (milliseconds, the best of the repeats).
#[derive(Clone, Debug)]
pub struct KernelTiming {
    /// `direct (AVX-512)`, `direct (AVX2)` or `im2col + gemm`.
    pub kernel: String,
    /// Forward pass.
    pub forward_ms: f64,
    /// Input gradient.
    pub input_grad_ms: f64,
    /// Weight gradient.
    pub weight_grad_ms: f64,
}

/// Time every CPU conv3d kernel that can compute `x` `[N, C_in, D, H, W]` convolved with a
/// kernel `[C_out, C_in, kd, kh, kw]` at `stride` and `padding` (`detlab bench conv`), on
/// random data; `None` when the shapes do not fit.
pub fn kernel_timings(
    x: [usize; 5],
    weight: [usize; 5],
    stride: [usize; 3],
    padding: [usize; 3],
    repeats: usize,
) -> Option<Vec<KernelTiming>> {
    let g = kernels::Geometry::new(x, weight, stride, padding, [1; 3])?;
    let xs = uniform_values(x.iter().product(), 1);
    let ws = uniform_values(weight.iter().product(), 2);
    let dy = uniform_values(g.output_shape().iter().product(), 3);
    let best = |f: &dyn Fn() -> Vec<f32>| {
        (0..repeats.max(1))
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(f());
                start.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let mut timings = Vec::new();
    if direct::applies(&g) {
        for isa in direct::Isa::available() {
            timings.push(KernelTiming {
                kernel: format!("direct ({isa:?})"),
                forward_ms: best(&|| direct::forward(isa, &xs, &ws, None, &g)),
                input_grad_ms: best(&|| direct::input_grad(isa, &ws, &dy, &g)),
                weight_grad_ms: best(&|| direct::weight_grad(isa, &xs, &dy, &g)),
            });
        }
    }
    timings.push(KernelTiming {
        kernel: "im2col + gemm".into(),
        forward_ms: best(&|| kernels::im2col_forward(&xs, &ws, None, &g)),
        input_grad_ms: best(&|| kernels::im2col_input_grad(&ws, &dy, &g)),
        weight_grad_ms: best(&|| kernels::im2col_weight_grad(&xs, &dy, &g)),
    });
    Some(timings)
}
