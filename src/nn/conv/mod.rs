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

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
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

pub mod norm;

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

fn same_type<A: 'static, T: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<T>()
}

/// Move a value between two names of the same type (checked with [`same_type`] first).
fn cast<A: 'static, T: 'static>(value: A) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("cast between identical types")
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
        Self::conv3d(x, weight, bias, options)
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
    fn fast_conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<3>,
    ) -> FloatTensor<Self> {
        let geometry = flex_geometry(&x, &weight, None, &options);
        let (Some(geometry), true) = (
            geometry,
            bias.as_ref().is_none_or(|b| b.dtype() == DType::F32),
        ) else {
            return Self::conv3d(x, weight, bias, options);
        };
        count_kernel_call(0);
        let device = Self::float_device(&x);
        let x = read_f32::<5>(x);
        let weight = read_f32::<5>(weight);
        let bias = bias.map(read_f32::<1>);
        let output = kernels::forward(f32s(&x), f32s(&weight), bias.as_ref().map(f32s), &geometry);
        let [n, _, d, h, w] = geometry.output_shape();
        Self::float_from_data(
            TensorData::new(output, [n, geometry.channels_out, d, h, w]),
            &device,
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

fn read_f32<const D: usize>(tensor: FloatTensor<Dispatch>) -> TensorData {
    Tensor::<Dispatch, D>::from_primitive(TensorPrimitive::Float(tensor)).into_data()
}

fn f32s(data: &TensorData) -> &[f32] {
    data.as_slice::<f32>()
        .expect("f32 tensor data (dtype checked before)")
}

#[derive(Debug)]
struct FastConv3dWithBias;

#[derive(Debug)]
struct FastConv3dNoBias;

/// State kept for the backward pass: checkpointed input and weight, and the options.
type ConvState = (NodeId, NodeId, ConvOptions<3>);

fn conv_backward<B: FastConvBackend, const N: usize>(
    ops: Ops<ConvState, N>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let output_grad = grads.consume::<B>(&ops.node);
    let (x_state, weight_state, options) = ops.state;
    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
    let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
    let parent = |i: usize| ops.parents.get(i).and_then(|p| p.as_ref());
    let request = Conv3dGradRequest {
        x: parent(0).is_some(),
        weight: parent(1).is_some(),
        bias: parent(2).is_some(),
    };
    let computed = B::fast_conv3d_backward(x, weight, output_grad, options, request);
    for (i, grad) in [computed.x, computed.weight, computed.bias]
        .into_iter()
        .enumerate()
    {
        if let (Some(node), Some(grad)) = (parent(i), grad) {
            grads.register::<B>(node.id, grad);
        }
    }
}

impl<B: FastConvBackend> Backward<B, 3> for FastConv3dWithBias {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        conv_backward::<B, 3>(ops, grads, checkpointer);
    }
}

impl<B: FastConvBackend> Backward<B, 2> for FastConv3dNoBias {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        conv_backward::<B, 2>(ops, grads, checkpointer);
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
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let weight_state = prep.checkpoint(&weight);
                    prep.finish(
                        (x_state, weight_state, options.clone()),
                        B::fast_conv3d(
                            x.primitive,
                            weight.primitive,
                            Some(bias.primitive),
                            options,
                        ),
                    )
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
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let weight_state = prep.checkpoint(&weight);
                    prep.finish(
                        (x_state, weight_state, options.clone()),
                        B::fast_conv3d(x.primitive, weight.primitive, None, options),
                    )
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::fast_conv3d(x.primitive, weight.primitive, None, options))
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels on contiguous f32 buffers

/// im2col / col2im + gemm conv3d kernels (one group, any kernel, stride, padding, dilation).
///
/// im2col rows are `(c_in, kd, kh, kw)` in the weight's memory order, so the weight is the
/// matrix `[C_out, C_in·k³]` as stored; columns are output voxels of a chunk of whole depth
/// slices of one sample.
pub(crate) mod kernels {
    use super::*;

    /// Shapes and options of one convolution.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Geometry {
        pub batch: usize,
        pub channels_in: usize,
        pub channels_out: usize,
        pub input: [usize; 3],
        pub output: [usize; 3],
        pub kernel: [usize; 3],
        pub stride: [usize; 3],
        pub padding: [usize; 3],
        pub dilation: [usize; 3],
    }

    impl Geometry {
        /// The geometry of `x` `[N, C_in, D, H, W]` convolved with `weight`
        /// `[C_out, C_in, kd, kh, kw]`; `None` when the shapes do not fit or the output is
        /// empty.
        pub fn new(
            x: [usize; 5],
            weight: [usize; 5],
            stride: [usize; 3],
            padding: [usize; 3],
            dilation: [usize; 3],
        ) -> Option<Self> {
            let [batch, channels_in, d, h, w] = x;
            let [channels_out, weight_in, kd, kh, kw] = weight;
            if weight_in != channels_in || stride.contains(&0) || dilation.contains(&0) {
                return None;
            }
            let input = [d, h, w];
            let kernel = [kd, kh, kw];
            let mut output = [0; 3];
            for i in 0..3 {
                let span = dilation[i] * (kernel[i].checked_sub(1)?) + 1;
                let padded = input[i] + 2 * padding[i];
                if padded < span {
                    return None;
                }
                output[i] = (padded - span) / stride[i] + 1;
            }
            let g = Self {
                batch,
                channels_in,
                channels_out,
                input,
                output,
                kernel,
                stride,
                padding,
                dilation,
            };
            (g.batch > 0 && g.channels_in > 0 && g.channels_out > 0 && g.input_volume() > 0)
                .then_some(g)
        }

        pub fn output_shape(&self) -> [usize; 5] {
            self.output_shape_with(self.channels_out)
        }

        pub fn output_shape_with(&self, channels: usize) -> [usize; 5] {
            let [d, h, w] = self.output;
            [self.batch, channels, d, h, w]
        }

        /// Values of one sample of the input (or input gradient): `C_in · D · H · W`.
        fn input_len(&self) -> usize {
            self.channels_in * self.input_volume()
        }

        /// Values of one sample of the output (or output gradient): `C_out · D' · H' · W'`.
        fn output_len(&self) -> usize {
            self.channels_out * self.output_volume()
        }

        fn kernel_volume(&self) -> usize {
            self.kernel.iter().product()
        }

        /// Rows of the im2col matrix: `C_in · k³`.
        fn rows(&self) -> usize {
            self.channels_in * self.kernel_volume()
        }

        fn input_volume(&self) -> usize {
            self.input.iter().product()
        }

        fn output_volume(&self) -> usize {
            self.output.iter().product()
        }

        /// A 1³ convolution without stride or padding: the input is its own im2col matrix.
        fn is_pointwise(&self) -> bool {
            self.kernel == [1, 1, 1] && self.stride == [1, 1, 1] && self.padding == [0, 0, 0]
        }

        /// Output depth slices per chunk so that one im2col chunk stays near the budget.
        fn slices_per_chunk(&self) -> usize {
            let slice = self.rows() * self.output[1] * self.output[2] * size_of::<f32>();
            (COLUMN_BUFFER_BYTES / slice.max(1)).clamp(1, self.output[0].max(1))
        }

        /// Chunks `(sample, first depth slice, end depth slice)` covering the output.
        pub fn chunks(&self) -> Vec<(usize, usize, usize)> {
            let per = self.slices_per_chunk();
            (0..self.batch)
                .flat_map(|n| {
                    (0..self.output[0])
                        .step_by(per)
                        .map(move |d0| (n, d0, (d0 + per).min(self.output[0])))
                })
                .collect()
        }

        /// Output positions `[lo, hi)` along `axis` whose input index for kernel tap `tap`
        /// lies inside the input, and the input index of `lo`.
        fn valid_range(&self, axis: usize, tap: usize) -> (usize, usize, usize) {
            let stride = self.stride[axis];
            let offset = (tap * self.dilation[axis]) as i64 - self.padding[axis] as i64;
            let lo = if offset >= 0 {
                0
            } else {
                ((-offset) as usize).div_ceil(stride)
            };
            let limit = self.input[axis] as i64 - offset;
            let hi = if limit <= 0 {
                0
            } else {
                (limit as usize).div_ceil(stride)
            };
            let hi = hi.min(self.output[axis]);
            let lo = lo.min(hi);
            let first = ((lo * stride) as i64 + offset).max(0) as usize;
            (lo, hi, first)
        }

        fn tap(&self, row: usize) -> [usize; 3] {
            let [_, kh, kw] = self.kernel;
            let t = row % self.kernel_volume();
            [t / (kh * kw), (t / kw) % kh, t % kw]
        }
    }

    thread_local! {
        /// Set while a chunk-parallel loop runs its per-chunk gemm on this thread.
        static SEQUENTIAL_GEMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Run `f` with single-threaded gemms on this thread (the caller parallelises over chunks).
    fn sequential_gemm<R>(f: impl FnOnce() -> R) -> R {
        let before = SEQUENTIAL_GEMM.with(|c| c.replace(true));
        let result = f();
        SEQUENTIAL_GEMM.with(|c| c.set(before));
        result
    }

    /// Run `work` on every chunk in parallel, in waves of one chunk per thread, each chunk with
    /// a slot of buffers from `slot` that is reused by later waves (fresh multi-megabyte
    /// buffers would be page-faulted in on every chunk); gemms inside `work` run
    /// single-threaded, as a gemm with C_out = 16–64 rows does not split well over threads.
    /// `gather` then sees every chunk with its slot, sequentially and in chunk order, so the
    /// result does not depend on the number of threads.
    fn in_chunk_waves<S: Send>(
        chunks: &[(usize, usize, usize)],
        slot: impl Fn() -> S,
        work: impl Fn(&(usize, usize, usize), &mut S) + Sync,
        mut gather: impl FnMut(&(usize, usize, usize), &S),
    ) {
        let wave = rayon::current_num_threads().max(1);
        let mut slots: Vec<S> = (0..wave.min(chunks.len())).map(|_| slot()).collect();
        for group in chunks.chunks(wave) {
            group
                .par_iter()
                .zip(slots.par_iter_mut())
                .for_each(|(chunk, slot)| sequential_gemm(|| work(chunk, slot)));
            for (chunk, slot) in group.iter().zip(&slots) {
                gather(chunk, slot);
            }
        }
    }

    fn parallelism() -> gemm::Parallelism {
        if rayon::current_num_threads() > 1 && !SEQUENTIAL_GEMM.with(|c| c.get()) {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        }
    }

    /// A strided matrix view: element `(i, j)` at `offset + i * row_stride + j * col_stride`.
    #[derive(Clone, Copy)]
    struct View {
        row_stride: isize,
        col_stride: isize,
    }

    const ROW_MAJOR: fn(usize) -> View = |cols| View {
        row_stride: cols as isize,
        col_stride: 1,
    };
    const COL_MAJOR: fn(usize) -> View = |rows| View {
        row_stride: 1,
        col_stride: rows as isize,
    };

    /// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        [m, n, k]: [usize; 3],
        dst: &mut [f32],
        dst_view: View,
        accumulate: bool,
        lhs: &[f32],
        lhs_view: View,
        rhs: &[f32],
        rhs_view: View,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let last = |v: View, rows: usize, cols: usize| {
            (rows - 1) as isize * v.row_stride + (cols - 1) as isize * v.col_stride
        };
        assert!(last(dst_view, m, n) < dst.len() as isize, "gemm dst bounds");
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    for j in 0..n {
                        let at =
                            i as isize * dst_view.row_stride + j as isize * dst_view.col_stride;
                        dst[at as usize] = 0.0;
                    }
                }
            }
            return;
        }
        assert!(last(lhs_view, m, k) < lhs.len() as isize, "gemm lhs bounds");
        assert!(last(rhs_view, k, n) < rhs.len() as isize, "gemm rhs bounds");
        // SAFETY: the three views stay inside their slices (asserted above, strides are
        // non-negative) and `dst` does not alias `lhs` or `rhs` (it is a unique borrow).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_view.col_stride,
                dst_view.row_stride,
                accumulate,
                lhs.as_ptr(),
                lhs_view.col_stride,
                lhs_view.row_stride,
                rhs.as_ptr(),
                rhs_view.col_stride,
                rhs_view.row_stride,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
    }

    /// Fill one im2col row (input channel `x_channel`, kernel tap `tap`) for the output depth
    /// slices `[d0, d1)`.
    fn im2col_row(row: &mut [f32], x_channel: &[f32], g: &Geometry, tap: [usize; 3], d0: usize) {
        let [_, in_h, in_w] = g.input;
        let [_, out_h, out_w] = g.output;
        let plane = out_h * out_w;
        let (d_lo, d_hi, d_first) = g.valid_range(0, tap[0]);
        let (h_lo, h_hi, h_first) = g.valid_range(1, tap[1]);
        let (w_lo, w_hi, w_first) = g.valid_range(2, tap[2]);
        let [sd, sh, sw] = g.stride;
        for (i, out_plane) in row.chunks_exact_mut(plane).enumerate() {
            let od = d0 + i;
            if od < d_lo || od >= d_hi || h_lo == h_hi || w_lo == w_hi {
                out_plane.fill(0.0);
                continue;
            }
            let id = d_first + (od - d_lo) * sd;
            out_plane[..h_lo * out_w].fill(0.0);
            out_plane[h_hi * out_w..].fill(0.0);
            for oh in h_lo..h_hi {
                let ih = h_first + (oh - h_lo) * sh;
                let src = &x_channel[(id * in_h + ih) * in_w..][..in_w];
                let out = &mut out_plane[oh * out_w..][..out_w];
                out[..w_lo].fill(0.0);
                out[w_hi..].fill(0.0);
                let out = &mut out[w_lo..w_hi];
                if sw == 1 {
                    out.copy_from_slice(&src[w_first..w_first + out.len()]);
                } else {
                    for (o, v) in out.iter_mut().zip(src[w_first..].iter().step_by(sw)) {
                        *o = *v;
                    }
                }
            }
        }
    }

    /// Add one column-gradient row back into the input gradient of its channel (col2im).
    fn col2im_row(row: &[f32], dx_channel: &mut [f32], g: &Geometry, tap: [usize; 3], d0: usize) {
        let [_, in_h, in_w] = g.input;
        let [_, out_h, out_w] = g.output;
        let plane = out_h * out_w;
        let (d_lo, d_hi, d_first) = g.valid_range(0, tap[0]);
        let (h_lo, h_hi, h_first) = g.valid_range(1, tap[1]);
        let (w_lo, w_hi, w_first) = g.valid_range(2, tap[2]);
        let [sd, sh, sw] = g.stride;
        if h_lo == h_hi || w_lo == w_hi {
            return;
        }
        for (i, out_plane) in row.chunks_exact(plane).enumerate() {
            let od = d0 + i;
            if od < d_lo || od >= d_hi {
                continue;
            }
            let id = d_first + (od - d_lo) * sd;
            for oh in h_lo..h_hi {
                let ih = h_first + (oh - h_lo) * sh;
                let dst = &mut dx_channel[(id * in_h + ih) * in_w..][..in_w];
                let src = &out_plane[oh * out_w..][w_lo..w_hi];
                if sw == 1 {
                    for (d, s) in dst[w_first..w_first + src.len()].iter_mut().zip(src) {
                        *d += *s;
                    }
                } else {
                    for (d, s) in dst[w_first..].iter_mut().step_by(sw).zip(src) {
                        *d += *s;
                    }
                }
            }
        }
    }

    /// im2col of output depth slices `[d0, d1)` of sample `x_sample` into `col` (rows × cols).
    fn im2col(col: &mut [f32], x_sample: &[f32], g: &Geometry, d0: usize) {
        let volume = g.input_volume();
        let cols = col.len() / g.rows();
        col.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            let channel = r / g.kernel_volume();
            im2col_row(
                row,
                &x_sample[channel * volume..][..volume],
                g,
                g.tap(r),
                d0,
            );
        });
    }

    /// Forward: `Y[n, :, chunk] = W [C_out, rows] · im2col(X)[rows, chunk] (+ bias)`.
    pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
        let (co, rows) = (g.channels_out, g.rows());
        let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
        let plane = g.output[1] * g.output[2];
        let mut y = vec![0.0f32; g.batch * g.output_len()];
        if g.is_pointwise() {
            for n in 0..g.batch {
                matmul(
                    [co, out_volume, rows],
                    &mut y[n * g.output_len()..][..g.output_len()],
                    ROW_MAJOR(out_volume),
                    false,
                    weight,
                    ROW_MAJOR(rows),
                    &x[n * g.input_len()..][..g.input_len()],
                    ROW_MAJOR(in_volume),
                );
            }
        } else {
            // Per chunk: im2col into its own buffer, then `W · col` into an output buffer that
            // is copied into `y` afterwards.
            in_chunk_waves(
                &g.chunks(),
                || (Vec::new(), Vec::new()),
                |&(n, d0, d1), (col, out): &mut (Vec<f32>, Vec<f32>)| {
                    let cols = (d1 - d0) * plane;
                    col.resize(rows * cols, 0.0);
                    out.resize(co * cols, 0.0);
                    let x_sample = &x[n * g.input_len()..][..g.input_len()];
                    im2col(col, x_sample, g, d0);
                    matmul(
                        [co, cols, rows],
                        out,
                        ROW_MAJOR(cols),
                        false,
                        weight,
                        ROW_MAJOR(rows),
                        col,
                        ROW_MAJOR(cols),
                    );
                },
                |&(n, d0, d1), (_, out)| {
                    let cols = (d1 - d0) * plane;
                    let y_sample = &mut y[n * g.output_len()..][..g.output_len()];
                    for (channel, values) in out.chunks_exact(cols).enumerate() {
                        y_sample[channel * out_volume + d0 * plane..][..cols]
                            .copy_from_slice(values);
                    }
                },
            );
        }
        if let Some(bias) = bias {
            y.par_chunks_mut(out_volume)
                .enumerate()
                .for_each(|(i, channel)| {
                    let b = bias[i % co];
                    channel.iter_mut().for_each(|v| *v += b);
                });
        }
        y
    }

    /// Weight gradient `[C_out, rows] = Σ_chunks dY[n, :, chunk] · im2col(X)[rows, chunk]ᵀ`.
    pub fn weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
        let (co, rows) = (g.channels_out, g.rows());
        let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
        let plane = g.output[1] * g.output[2];
        // One partial gradient per chunk, computed in parallel with single-threaded gemms and
        // summed in chunk order: the result is the same for any number of threads.
        let mut dw = vec![0.0f32; co * rows];
        in_chunk_waves(
            &g.chunks(),
            || (Vec::new(), vec![0.0f32; co * rows]),
            |&(n, d0, d1), (col, partial): &mut (Vec<f32>, Vec<f32>)| {
                let x_sample = &x[n * g.input_len()..][..g.input_len()];
                let dy_sample = &dy[n * g.output_len()..][..g.output_len()];
                let cols = (d1 - d0) * plane;
                let (rhs, rhs_view): (&[f32], View) = if g.is_pointwise() {
                    (&x_sample[d0 * plane..], COL_MAJOR(in_volume))
                } else {
                    col.resize(rows * cols, 0.0);
                    im2col(col, x_sample, g, d0);
                    (&col[..], COL_MAJOR(cols))
                };
                matmul(
                    [co, rows, cols],
                    partial,
                    ROW_MAJOR(rows),
                    false,
                    &dy_sample[d0 * plane..],
                    ROW_MAJOR(out_volume),
                    rhs,
                    rhs_view,
                );
            },
            |_, (_, partial)| dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b),
        );
        dw
    }

    /// Input gradient: col2im of `Wᵀ [rows, C_out] · dY[n, :, chunk]`.
    pub fn input_grad(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
        let (co, ci, rows) = (g.channels_out, g.channels_in, g.rows());
        let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
        let plane = g.output[1] * g.output[2];
        let mut dx = vec![0.0f32; g.batch * g.input_len()];
        if g.is_pointwise() {
            for n in 0..g.batch {
                matmul(
                    [ci, out_volume, co],
                    &mut dx[n * g.input_len()..][..g.input_len()],
                    ROW_MAJOR(in_volume),
                    false,
                    weight,
                    COL_MAJOR(rows),
                    &dy[n * g.output_len()..][..g.output_len()],
                    ROW_MAJOR(out_volume),
                );
            }
            return dx;
        }
        let k = g.kernel_volume();
        let mut col = Vec::new();
        for (n, d0, d1) in g.chunks() {
            let cols = (d1 - d0) * plane;
            col.resize(rows * cols, 0.0);
            let dy_sample = &dy[n * g.output_len()..][..g.output_len()];
            matmul(
                [rows, cols, co],
                &mut col,
                ROW_MAJOR(cols),
                false,
                weight,
                COL_MAJOR(rows),
                &dy_sample[d0 * plane..],
                ROW_MAJOR(out_volume),
            );
            let dx_sample = &mut dx[n * g.input_len()..][..g.input_len()];
            dx_sample
                .par_chunks_mut(in_volume)
                .zip(col.par_chunks(k * cols))
                .for_each(|(dx_channel, channel_rows)| {
                    for (t, row) in channel_rows.chunks_exact(cols).enumerate() {
                        col2im_row(row, dx_channel, g, g.tap(t), d0);
                    }
                });
        }
        dx
    }

    /// Bias gradient: the sum of `dY` over batch and space, per output channel.
    pub fn bias_grad(dy: &[f32], g: &Geometry) -> Vec<f32> {
        let out_volume = g.output_volume();
        let mut sums = vec![0.0f64; g.channels_out];
        for (i, channel) in dy.chunks_exact(out_volume).enumerate() {
            sums[i % g.channels_out] += channel.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        sums.into_iter().map(|s| s as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};

    type B = TestBackend;

    /// Largest absolute difference relative to the largest magnitude of `expected`.
    fn relative_error(actual: &[f64], expected: &[f64]) -> f64 {
        assert_eq!(actual.len(), expected.len(), "lengths differ");
        let scale = expected.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let diff = actual
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
        diff / scale
    }

    struct Case {
        batch: usize,
        channels: [usize; 2],
        size: [usize; 3],
        kernel: usize,
        stride: usize,
        bias: bool,
    }

    /// A tensor of uniform values in [-1, 1) from its own seed (the backend's generator is
    /// shared by tests running in parallel).
    fn seeded<Bk: Backend, const D: usize>(
        shape: [usize; D],
        seed: u64,
        device: &Bk::Device,
    ) -> Tensor<Bk, D> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// Output, and gradients of `sum(y · r)` w.r.t. input, weight, bias, with the fast path
    /// on or off.
    fn run(case: &Case, fast: bool) -> [Vec<f64>; 4] {
        let device = test_device();
        let [ci, co] = case.channels;
        let [d, h, w] = case.size;
        let k = case.kernel;
        let x = seeded::<B, 5>([case.batch, ci, d, h, w], 1, &device).require_grad();
        let weight = seeded::<B, 5>([co, ci, k, k, k], 2, &device).require_grad();
        let bias = case
            .bias
            .then(|| seeded::<B, 1>([co], 3, &device).require_grad());
        let p = (k - 1) / 2;
        let options = ConvOptions::new([case.stride; 3], [p; 3], [1; 3], 1);
        let calls_before = KERNEL_CALLS.with(Cell::get);
        let y = with_fast_conv3d(fast, || {
            conv3d(x.clone(), weight.clone(), bias.clone(), options.clone())
        });
        let r = seeded::<B, 5>(y.dims(), 4, &device);
        let grads = (y.clone() * r).sum().backward();
        let calls = KERNEL_CALLS.with(Cell::get);
        let expected = if fast { 1 } else { 0 };
        assert_eq!(
            [calls[0] - calls_before[0], calls[1] - calls_before[1]],
            [expected, expected],
            "Flex kernel calls (forward, backward) with the fast path {}",
            if fast { "on" } else { "off" }
        );
        let bias_grad = bias
            .map(|b| tensor_values(b.grad(&grads).expect("bias gradient")))
            .unwrap_or_default();
        [
            tensor_values(y),
            tensor_values(x.grad(&grads).expect("input gradient")),
            tensor_values(weight.grad(&grads).expect("weight gradient")),
            bias_grad,
        ]
    }

    fn check(case: Case) {
        let fast = run(&case, true);
        let reference = run(&case, false);
        for (name, (a, e)) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .zip(fast.iter().zip(&reference))
        {
            let err = relative_error(a, e);
            assert!(
                err <= 1e-4,
                "{name}: relative error {err} for kernel {} stride {} size {:?} channels {:?}",
                case.kernel,
                case.stride,
                case.size,
                case.channels
            );
        }
    }

    #[test]
    fn kernel_3_stride_1_matches_burn_with_and_without_bias() {
        for bias in [true, false] {
            check(Case {
                batch: 2,
                channels: [3, 5],
                size: [6, 7, 5],
                kernel: 3,
                stride: 1,
                bias,
            });
        }
    }

    #[test]
    fn kernel_3_stride_2_matches_burn_on_odd_and_even_sizes() {
        for size in [[7, 6, 5], [8, 8, 8]] {
            check(Case {
                batch: 2,
                channels: [4, 6],
                size,
                kernel: 3,
                stride: 2,
                bias: true,
            });
        }
    }

    #[test]
    fn kernel_1_matches_burn_with_stride_1_and_2() {
        for stride in [1, 2] {
            check(Case {
                batch: 2,
                channels: [6, 3],
                size: [5, 7, 9],
                kernel: 1,
                stride,
                bias: true,
            });
        }
    }

    #[test]
    fn single_channel_and_wide_layers_match_burn() {
        check(Case {
            batch: 1,
            channels: [1, 8],
            size: [9, 9, 9],
            kernel: 3,
            stride: 1,
            bias: false,
        });
        check(Case {
            batch: 1,
            channels: [16, 2],
            size: [4, 5, 6],
            kernel: 3,
            stride: 1,
            bias: true,
        });
    }

    #[test]
    fn several_chunks_give_the_same_gradients_as_one() {
        // 40 channels · 27 taps · 40² voxels · 4 bytes = 6.9 MB per depth slice: with the
        // 8 MB budget each depth slice is its own chunk, crossing chunk borders in col2im.
        let g =
            kernels::Geometry::new([1, 40, 3, 40, 40], [2, 40, 3, 3, 3], [1; 3], [1; 3], [1; 3])
                .expect("valid geometry");
        assert_eq!(g.chunks().len(), 3);
        check(Case {
            batch: 1,
            channels: [40, 2],
            size: [3, 40, 40],
            kernel: 3,
            stride: 1,
            bias: true,
        });
    }

    #[test]
    fn switch_off_records_burns_own_op_and_restores() {
        set_fast_conv3d(true);
        assert!(fast_conv3d_enabled());
        with_fast_conv3d(false, || assert!(!fast_conv3d_enabled()));
        assert!(fast_conv3d_enabled());
    }

    #[test]
    fn layer_keeps_burns_parameter_paths_and_output() {
        let device = test_device();
        let burn_conv = burn::nn::conv::Conv3dConfig::new([2, 3], [3, 3, 3])
            .with_padding(PaddingConfig3d::Same)
            .init::<B>(&device);
        // Parameters are initialised lazily; materialise them before sharing them.
        crate::nn::inspect::materialize(&burn_conv);
        let conv = Conv3d::from(burn_conv.clone());
        let paths: Vec<String> = crate::nn::inspect::parameters(&conv)
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(paths, ["weight", "bias"]);
        let x = seeded::<B, 5>([1, 2, 5, 6, 7], 5, &device);
        assert_close(
            &tensor_values(conv.forward(x.clone())),
            &tensor_values(burn_conv.forward(x)),
            1e-5,
        );
    }

    #[test]
    fn inference_backend_forward_matches_burn() {
        let device = test_device();
        let x = seeded::<Dispatch, 5>([2, 3, 6, 5, 7], 6, &device);
        let w = seeded::<Dispatch, 5>([4, 3, 3, 3, 3], 7, &device);
        let b = seeded::<Dispatch, 1>([4], 8, &device);
        let options = ConvOptions::new([2, 1, 2], [1; 3], [1; 3], 1);
        let fast = with_fast_conv3d(true, || {
            conv3d(x.clone(), w.clone(), Some(b.clone()), options.clone())
        });
        let reference = burn::tensor::module::conv3d(x, w, Some(b), options);
        assert_eq!(fast.dims(), reference.dims());
        let err = relative_error(&tensor_values(fast), &tensor_values(reference));
        assert!(err <= 1e-5, "relative error {err}");
    }

    #[test]
    fn frozen_weights_and_plain_inputs_get_no_gradient() {
        let device = test_device();
        let x = seeded::<B, 5>([1, 2, 4, 4, 4], 9, &device);
        let w = seeded::<B, 5>([3, 2, 3, 3, 3], 10, &device).require_grad();
        let y = with_fast_conv3d(true, || {
            conv3d(
                x.clone(),
                w.clone(),
                None,
                ConvOptions::new([1; 3], [1; 3], [1; 3], 1),
            )
        });
        let grads = y.sum().backward();
        assert!(x.grad(&grads).is_none());
        assert_eq!(
            w.grad(&grads).expect("weight gradient").dims(),
            [3, 2, 3, 3, 3]
        );
    }
}
