//! Transposed convolutions whose kernel equals their stride (the U-Net decoder's and the
//! U-FPN's upsamplings: no padding, no dilation, one group) as one matrix product per sample.
//! Each input voxel then writes its own k³ block of the output, so the layer is `Wᵀ · x`
//! followed by interleaving the blocks into the larger grid, and autodiff differentiates it as
//! a product. burn's generic kernel ran these at 5-15 GFLOP/s forward and 3-4 GFLOP/s backward
//! on the quickstart's shapes (the backward of the 32 → 16-channel 16³ → 32³ upsampling took
//! 92 ms for 0.13 GFLOP); the product runs through gemm. Any other transposed convolution, and
//! every one while the fast kernels are switched off ([`super::set_fast_conv3d`]), runs burn's.

use burn::nn::conv::ConvTranspose3d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::fast_conv3d_enabled;

/// `layer` applied to `x` `[N, C_in, D, H, W]`: by one matrix product where the kernel equals
/// the stride (see the module docs), by burn's kernel otherwise.
pub fn conv_transpose3d<B: Backend>(layer: &ConvTranspose3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let as_product = layer.kernel_size == layer.stride
        && layer.padding == [0; 3]
        && layer.padding_out == [0; 3]
        && layer.dilation == [1; 3]
        && layer.groups == 1
        && fast_conv3d_enabled();
    if !as_product {
        return layer.forward(x);
    }
    let [n, ci, d, h, w] = x.dims();
    let [_, co, kd, kh, kw] = layer.weight.dims();
    let k = kd * kh * kw;
    // [C_in, C_out, kd, kh, kw] → [C_out · k³, C_in], one copy per sample for the product.
    let weight = layer
        .weight
        .val()
        .reshape([1, ci, co * k])
        .swap_dims(1, 2)
        .repeat_dim(0, n);
    let blocks = weight.matmul(x.reshape([n, ci, d * h * w]));
    // (c, i, j, l, z, y, x) → (c, z, i, y, j, x, l): every voxel's block into its place.
    let y = blocks
        .reshape([n, co, kd, kh, kw, d, h, w])
        .permute([0, 1, 5, 2, 6, 3, 7, 4])
        .reshape([n, co, d * kd, h * kh, w * kw]);
    match &layer.bias {
        Some(bias) => y + bias.val().reshape([1, co, 1, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};
    use burn::nn::conv::ConvTranspose3dConfig;
    use burn::tensor::Distribution;

    /// Output and the gradients of input, weight and bias for a fixed probe.
    fn run(
        layer: &ConvTranspose3d<TestBackend>,
        x: &Tensor<TestBackend, 5>,
        probe: &Tensor<TestBackend, 5>,
        product: bool,
    ) -> [Vec<f64>; 4] {
        let x = x.clone().detach().require_grad();
        let out = if product {
            conv_transpose3d(layer, x.clone())
        } else {
            layer.forward(x.clone())
        };
        let grads = (out.clone() * probe.clone()).sum().backward();
        let bias = layer.bias.as_ref().expect("bias");
        [
            tensor_values(out),
            tensor_values(x.grad(&grads).unwrap()),
            tensor_values(layer.weight.grad(&grads).unwrap()),
            tensor_values(bias.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn the_product_equals_burns_transposed_convolution_forward_and_backward() {
        let device = test_device();
        // Anisotropic kernel = stride, as the planned upsamplings of thick-slice data have.
        for (kernel, [d, h, w]) in [([2, 2, 2], [3, 4, 5]), ([1, 2, 2], [2, 3, 3])] {
            let layer = ConvTranspose3dConfig::new([3, 5], kernel)
                .with_stride(kernel)
                .init::<TestBackend>(&device);
            let x = Tensor::<TestBackend, 5>::random(
                [2, 3, d, h, w],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let probe = Tensor::<TestBackend, 5>::random(
                [2, 5, d * kernel[0], h * kernel[1], w * kernel[2]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let product = run(&layer, &x, &probe, true);
            let reference = run(&layer, &x, &probe, false);
            for (what, (p, r)) in [
                "output",
                "input gradient",
                "weight gradient",
                "bias gradient",
            ]
            .iter()
            .zip(product.iter().zip(&reference))
            {
                assert_eq!(p.len(), r.len(), "{what}");
                let scale = r.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert_close(p, r, 1e-5 * scale);
            }
        }
    }

    #[test]
    fn other_transposed_convolutions_run_burns_kernel() {
        let device = test_device();
        // Kernel 3, stride 2, padding 1: overlapping blocks, not a product.
        let layer = ConvTranspose3dConfig::new([2, 2], [3, 3, 3])
            .with_stride([2, 2, 2])
            .with_padding([1, 1, 1])
            .init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 5>::random([1, 2, 3, 3, 3], Distribution::Default, &device);
        assert_eq!(
            tensor_values(conv_transpose3d(&layer, x.clone())),
            tensor_values(layer.forward(x))
        );
    }
}
