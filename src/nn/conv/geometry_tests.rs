//! The fast conv3d (`nn::conv`) against burn's own conv3d on the geometries planning produces:
//! non-cubic kernels, anisotropic strides and paddings, one and many channels, odd sizes;
//! forward and all three gradients.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::nn::conv::{conv3d, with_fast_conv3d};
use crate::nn::testing::{TestBackend as B, relative_error, tensor_values, test_device};

struct Geometry {
    batch: usize,
    channels: [usize; 2],
    size: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    bias: bool,
}

fn seeded<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &test_device())
}

/// Output and the gradients of `sum(y · r)` w.r.t. input, weight and bias.
fn run(g: &Geometry, fast: bool) -> [Vec<f64>; 4] {
    let [ci, co] = g.channels;
    let [d, h, w] = g.size;
    let [kd, kh, kw] = g.kernel;
    let x = seeded([g.batch, ci, d, h, w], 11).require_grad();
    let weight = seeded([co, ci, kd, kh, kw], 12).require_grad();
    let bias = g.bias.then(|| seeded([co], 13).require_grad());
    let options = ConvOptions::new(g.stride, g.padding, [1, 1, 1], 1);
    let y = with_fast_conv3d(fast, || {
        conv3d(x.clone(), weight.clone(), bias.clone(), options.clone())
    });
    let r = seeded(y.dims(), 14);
    let grads = (y.clone() * r).sum().backward();
    [
        tensor_values(y),
        tensor_values(x.grad(&grads).expect("input gradient")),
        tensor_values(weight.grad(&grads).expect("weight gradient")),
        bias.map(|b| tensor_values(b.grad(&grads).expect("bias gradient")))
            .unwrap_or_default(),
    ]
}

/// Compare both paths; returns whether any value differed bitwise (the paths sum in different
/// orders, so identical results everywhere would mean the fast path never ran).
fn check(g: Geometry) -> bool {
    let fast = run(&g, true);
    let reference = run(&g, false);
    let mut differs = false;
    for (name, (a, e)) in ["output", "input grad", "weight grad", "bias grad"]
        .iter()
        .zip(fast.iter().zip(&reference))
    {
        let err = relative_error(a, e);
        assert!(
            err <= 1e-4,
            "{name}: relative error {err} for kernel {:?} stride {:?} padding {:?} size {:?} channels {:?}",
            g.kernel,
            g.stride,
            g.padding,
            g.size,
            g.channels
        );
        differs |= a != e;
    }
    differs
}

#[test]
fn fast_conv3d_matches_burn_on_anisotropic_geometries() {
    let cases = [
        // Planned thick-slice stem: [1, 3, 3] kernel, padding [0, 1, 1], odd sizes, 1 channel.
        Geometry {
            batch: 1,
            channels: [1, 1],
            size: [5, 9, 7],
            kernel: [1, 3, 3],
            stride: [1, 1, 1],
            padding: [0, 1, 1],
            bias: false,
        },
        // A strided [1, 3, 3] conv pooling only H and W, many channels.
        Geometry {
            batch: 2,
            channels: [6, 10],
            size: [3, 11, 9],
            kernel: [1, 3, 3],
            stride: [1, 2, 2],
            padding: [0, 1, 1],
            bias: true,
        },
        // Transposed planning order: kernel [3, 3, 1], stride [2, 2, 1].
        Geometry {
            batch: 1,
            channels: [5, 3],
            size: [9, 7, 4],
            kernel: [3, 3, 1],
            stride: [2, 2, 1],
            padding: [1, 1, 0],
            bias: true,
        },
        // Three different kernel extents, strides and paddings.
        Geometry {
            batch: 2,
            channels: [3, 4],
            size: [7, 10, 13],
            kernel: [5, 3, 1],
            stride: [2, 1, 3],
            padding: [2, 0, 1],
            bias: true,
        },
        // Padding larger than "same", stride on D only.
        Geometry {
            batch: 1,
            channels: [1, 7],
            size: [6, 5, 5],
            kernel: [3, 1, 3],
            stride: [3, 1, 1],
            padding: [2, 1, 0],
            bias: false,
        },
    ];
    let mut any_differs = false;
    for g in cases {
        any_differs |= check(g);
    }
    assert!(
        any_differs,
        "the fast path gave bit-identical results everywhere: it did not run"
    );
}
