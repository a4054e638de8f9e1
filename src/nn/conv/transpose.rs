//! Transposed convolutions whose kernel equals their stride (the U-Net and U-FPN
//! upsampling), computed as one matrix product and an interleaving.
//!
//! Then every input voxel writes its own `kd × kh × kw` output block, `Y_block = Wᵀ · x`:
//! the layer is a `[C_out·k³, C_in] × [C_in, voxels]` product, whose backward burn derives,
//! followed by a permutation that interleaves the blocks. burn's general transposed
//! convolution (kept for every other geometry) took 3× PyTorch's time for the backward, and
//! burn's own permute + reshape for the interleaving (a strided 8-D copy) took as long as
//! the product, and burn's broadcast add of the bias four times as long: the interleaving and
//! the bias are therefore one more custom op (forward: scatter + bias, backward: gather +
//! per-channel sums) on the Flex device.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn::{Dispatch, DispatchDevice};
use rayon::prelude::*;

use super::fast_conv3d_enabled;
use crate::nn::custom_op::{cast, f32s, read_f32, register_gradients, same_type};

/// A transposed 3D convolution layer: burn's `ConvTranspose3d` (same fields, so parameter
/// paths and saved weights are unchanged) whose forward, when the kernel equals the stride
/// (no padding, dilation or groups), is one matrix product and an interleaving, and burn's own
/// kernel otherwise.
#[derive(Module, Debug)]
pub struct ConvTranspose3d<B: Backend> {
    /// Kernel `[channels_in, channels_out / groups, kd, kh, kw]`.
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
    /// Padding `[pd, ph, pw]`.
    pub padding: [usize; 3],
    /// Extra output size `[od, oh, ow]`.
    pub padding_out: [usize; 3],
    /// `[channels_in, channels_out]`.
    pub channels: [usize; 2],
}

impl<B: Backend> From<burn::nn::conv::ConvTranspose3d<B>> for ConvTranspose3d<B> {
    fn from(conv: burn::nn::conv::ConvTranspose3d<B>) -> Self {
        Self {
            weight: conv.weight,
            bias: conv.bias,
            stride: conv.stride,
            kernel_size: conv.kernel_size,
            dilation: conv.dilation,
            groups: conv.groups,
            padding: conv.padding,
            padding_out: conv.padding_out,
            channels: conv.channels,
        }
    }
}

impl<B: Backend> ConvTranspose3d<B> {
    /// Apply the layer to `[N, C_in, D, H, W]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        conv_transpose3d(self, x)
    }

    fn as_burn(&self) -> burn::nn::conv::ConvTranspose3d<B> {
        burn::nn::conv::ConvTranspose3d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            stride: self.stride,
            kernel_size: self.kernel_size,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding,
            padding_out: self.padding_out,
            channels: self.channels,
        }
    }
}

fn conv_transpose3d<B: Backend>(layer: &ConvTranspose3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [channels_in, channels_out, kd, kh, kw] = layer.weight.dims();
    let [n, c, d, h, w] = x.dims();
    let blocked = layer.kernel_size == layer.stride
        && layer.padding == [0; 3]
        && layer.padding_out == [0; 3]
        && layer.dilation == [1; 3]
        && layer.groups == 1
        && c == channels_in
        && [kd, kh, kw] == layer.kernel_size;
    if !blocked || !fast_conv3d_enabled() {
        return layer.as_burn().forward(x);
    }
    let block = kd * kh * kw;
    // [C_in, C_out·k³] → [1, C_out·k³, C_in]
    let weight = layer
        .weight
        .val()
        .reshape([channels_in, channels_out * block])
        .transpose()
        .unsqueeze::<3>();
    let blocks = weight.matmul(x.reshape([n, c, d * h * w]));
    let shape = BlockShape {
        batch: n,
        channels: channels_out,
        block: [kd, kh, kw],
        size: [d, h, w],
    };
    let bias = match &layer.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([channels_out], &blocks.device()),
    };
    interleave(blocks, bias, shape)
}

/// Shapes of an interleaving: `[N, C·kd·kh·kw, D·H·W]` blocks ↔ `[N, C, D·kd, H·kh, W·kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    batch: usize,
    channels: usize,
    block: [usize; 3],
    size: [usize; 3],
}

impl BlockShape {
    fn output(&self) -> [usize; 5] {
        let ([kd, kh, kw], [d, h, w]) = (self.block, self.size);
        [self.batch, self.channels, d * kd, h * kh, w * kw]
    }

    fn blocks(&self) -> [usize; 3] {
        let ([kd, kh, kw], [d, h, w]) = (self.block, self.size);
        [self.batch, self.channels * kd * kh * kw, d * h * w]
    }
}

/// The blocks `[N, C·k³, V]` interleaved into `[N, C, D·kd, H·kh, W·kw]`, plus `bias` `[C]`.
fn interleave<B: Backend>(
    blocks: Tensor<B, 3>,
    bias: Tensor<B, 1>,
    shape: BlockShape,
) -> Tensor<B, 5> {
    let on_flex = |device: &DispatchDevice| matches!(device, DispatchDevice::Flex(_));
    if blocks.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        if same_type::<B, Autodiff<Dispatch>>() {
            let blocks: Tensor<Autodiff<Dispatch>, 3> = cast(blocks.clone());
            if on_flex(&blocks.device()) {
                return cast(run::<Autodiff<Dispatch>>(blocks, cast(bias), shape));
            }
        } else if same_type::<B, Dispatch>() {
            let blocks: Tensor<Dispatch, 3> = cast(blocks.clone());
            if on_flex(&blocks.device()) {
                return cast(run::<Dispatch>(blocks, cast(bias), shape));
            }
        }
    }
    let ([kd, kh, kw], [d, h, w]) = (shape.block, shape.size);
    blocks
        .reshape([shape.batch, shape.channels, kd, kh, kw, d, h, w])
        .permute([0, 1, 5, 2, 6, 3, 7, 4])
        .reshape(shape.output())
        + bias.reshape([1, shape.channels, 1, 1, 1])
}

fn run<B: InterleaveBackend>(
    blocks: Tensor<B, 3>,
    bias: Tensor<B, 1>,
    shape: BlockShape,
) -> Tensor<B, 5> {
    Tensor::from_primitive(TensorPrimitive::Float(B::interleave_blocks(
        blocks.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        shape,
    )))
}

/// A backend with the interleaving as one op (burn's backend-extension pattern).
pub trait InterleaveBackend: Backend {
    /// Blocks `[N, C·k³, V]` → `[N, C, D·kd, H·kh, W·kw]`, plus a per-channel bias `[C]`.
    fn interleave_blocks(
        blocks: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shape: BlockShape,
    ) -> FloatTensor<Self>;
    /// The gradients of the blocks (`[N, C, D·kd, H·kh, W·kw]` → `[N, C·k³, V]`) and of the
    /// bias (per-channel sums) given the output's.
    fn gather_blocks(grid: FloatTensor<Self>, shape: BlockShape) -> [FloatTensor<Self>; 2];
}

impl InterleaveBackend for Dispatch {
    fn interleave_blocks(
        blocks: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shape: BlockShape,
    ) -> FloatTensor<Self> {
        let device = Self::float_device(&blocks);
        let (data, bias) = (read_f32::<3>(blocks), read_f32::<1>(bias));
        let mut out = vec![0.0f32; data.num_elements()];
        kernels::permute(f32s(&data), &mut out, shape, true);
        let per_channel = out.len() / (shape.batch * shape.channels).max(1);
        let bias = f32s(&bias);
        out.par_chunks_mut(per_channel.max(1))
            .enumerate()
            .for_each(|(i, channel)| {
                let b = bias[i % shape.channels];
                channel.iter_mut().for_each(|v| *v += b);
            });
        Self::float_from_data(TensorData::new(out, shape.output()), &device)
    }

    fn gather_blocks(grid: FloatTensor<Self>, shape: BlockShape) -> [FloatTensor<Self>; 2] {
        let device = Self::float_device(&grid);
        let data = read_f32::<5>(grid);
        let values = f32s(&data);
        let mut out = vec![0.0f32; values.len()];
        kernels::permute(values, &mut out, shape, false);
        let per_channel = values.len() / (shape.batch * shape.channels).max(1);
        let sums = super::kernels::channel_sums(values, shape.channels, per_channel);
        [
            Self::float_from_data(TensorData::new(out, shape.blocks()), &device),
            Self::float_from_data(TensorData::new(sums, [shape.channels]), &device),
        ]
    }
}

#[derive(Debug)]
struct Interleave;

impl<B: InterleaveBackend> Backward<B, 2> for Interleave {
    type State = BlockShape;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let gradients = B::gather_blocks(output_grad, ops.state);
        register_gradients::<B>(
            ops.parents.iter().map(|p| p.as_ref().map(|node| node.id)),
            gradients.map(Some),
            grads,
        );
    }
}

impl<B: InterleaveBackend, C: CheckpointStrategy> InterleaveBackend for Autodiff<B, C> {
    fn interleave_blocks(
        blocks: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shape: BlockShape,
    ) -> FloatTensor<Self> {
        match Interleave
            .prepare::<C>([blocks.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                shape,
                B::interleave_blocks(blocks.primitive, bias.primitive, shape),
            ),
            OpsKind::UnTracked(prep) => prep.finish(B::interleave_blocks(
                blocks.primitive,
                bias.primitive,
                shape,
            )),
        }
    }

    fn gather_blocks(_grid: FloatTensor<Self>, _shape: BlockShape) -> [FloatTensor<Self>; 2] {
        unreachable!("the autodiff backend differentiates through its inner backend's kernels")
    }
}

mod kernels {
    use super::*;

    /// Blocks → grid when `to_grid`, grid → blocks otherwise; one task per (sample,
    /// channel), whose values are contiguous on both sides.
    pub fn permute(src: &[f32], dst: &mut [f32], shape: BlockShape, to_grid: bool) {
        let ([kd, kh, kw], [d, h, w]) = (shape.block, shape.size);
        let per_channel = kd * kh * kw * d * h * w;
        dst.par_chunks_mut(per_channel)
            .zip(src.par_chunks(per_channel))
            .for_each(|(dst, src)| {
                for a in 0..kd {
                    for b in 0..kh {
                        for c in 0..kw {
                            let block = ((a * kh + b) * kw + c) * d * h * w;
                            for z in 0..d {
                                for y in 0..h {
                                    let row = block + (z * h + y) * w;
                                    let grid = (((z * kd + a) * h + y) * kh + b) * w * kw + c;
                                    if to_grid {
                                        for x in 0..w {
                                            dst[grid + x * kw] = src[row + x];
                                        }
                                    } else {
                                        for x in 0..w {
                                            dst[row + x] = src[grid + x * kw];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
    }
}
