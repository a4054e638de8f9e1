//! Tests of the fast conv3d.

use super::*;
use crate::nn::testing::{TestBackend, assert_close, relative_error, tensor_values, test_device};

type B = TestBackend;

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
    let values = uniform_values(shape.iter().product(), seed);
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
fn rows_the_direct_kernels_take_match_burn() {
    // Widths of 16 and 32 fill AVX-512 vectors (8 fills AVX2's), so the layer routes to the
    // direct kernels where the CPU has them (`direct::preferred`).
    for (size, channels) in [([3, 5, 16], [3, 5]), ([2, 3, 32], [2, 9])] {
        let g = kernels::Geometry::new(
            [2, channels[0], size[0], size[1], size[2]],
            [channels[1], channels[0], 3, 3, 3],
            [1; 3],
            [1; 3],
            [1; 3],
        )
        .expect("valid geometry");
        for isa in direct::Isa::available() {
            for pass in [
                direct::Pass::Forward,
                direct::Pass::InputGrad,
                direct::Pass::WeightGrad,
            ] {
                assert!(
                    direct::preferred(isa, &g, pass),
                    "{isa:?} {pass:?} {size:?}"
                );
            }
        }
        check(Case {
            batch: 2,
            channels,
            size,
            kernel: 3,
            stride: 1,
            bias: true,
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
    let g = kernels::Geometry::new([1, 40, 3, 40, 40], [2, 40, 3, 3, 3], [1; 3], [1; 3], [1; 3])
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

/// Output and gradients (input, weight, bias) of `sum(y · r)` for a transposed convolution.
fn transposed_run(layer: &ConvTranspose3d<B>, x: &Tensor<B, 5>, fast: bool) -> [Vec<f64>; 4] {
    let x = x.clone().require_grad();
    let y = with_fast_conv3d(fast, || layer.forward(x.clone()));
    let r = seeded::<B, 5>(y.dims(), 14, &test_device());
    let grads = (y.clone() * r).sum().backward();
    [
        tensor_values(y),
        tensor_values(x.grad(&grads).expect("input gradient")),
        tensor_values(layer.weight.val().grad(&grads).expect("weight gradient")),
        layer
            .bias
            .as_ref()
            .map(|b| tensor_values(b.val().grad(&grads).expect("bias gradient")))
            .unwrap_or_default(),
    ]
}

#[test]
fn blocked_transposed_convolution_matches_burn_with_gradients() {
    let device = test_device();
    for (stride, bias, size) in [
        ([2, 2, 2], true, [3, 4, 5]),
        ([1, 2, 2], false, [4, 3, 3]),
        ([2, 1, 3], true, [2, 5, 2]),
    ] {
        let layer = burn::nn::conv::ConvTranspose3dConfig::new([3, 5], stride)
            .with_stride(stride)
            .with_bias(bias)
            .init::<B>(&device);
        crate::nn::inspect::materialize(&layer);
        let layer = ConvTranspose3d::from(layer);
        let [d, h, w] = size;
        let x = seeded::<B, 5>([2, 3, d, h, w], 13, &device);
        let fast = transposed_run(&layer, &x, true);
        let reference = transposed_run(&layer, &x, false);
        for (name, (a, e)) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .zip(fast.iter().zip(&reference))
        {
            assert_eq!(a.len(), e.len(), "{name} size, stride {stride:?}");
            let err = relative_error(a, e);
            assert!(
                err <= 1e-5,
                "{name}: relative error {err} for stride {stride:?}"
            );
        }
    }
}
