//! `detlab bench backends [--iters N]`: CPU backends on a small 3D conv net.
//!
//! The conv net is 3 × (conv3d 3³ + ReLU) with channels 1 → 8 → 16 → 16 on a 2 × 1 × 16³ input;
//! one iteration is forward + `mean(y²)` + backward. Rows: `flex` with detlab's conv3d (the
//! default: `Autodiff<Dispatch>` with the im2col + gemm forward/backward of `nn::conv`), `flex`
//! with burn's own conv3d, `flex-direct` (`Autodiff<Flex>`, no dispatch layer, burn's conv3d)
//! and, when built with `--features bench-ndarray`, `ndarray`. The per-op profile of a whole
//! Retina U-Net step is `detlab bench train-step --profile`.

use super::median;
use std::time::Instant;

use burn::module::Module;
use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3dConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, activation};

use detlab::nn::conv::{Conv3d, with_fast_conv3d};
use detlab::nn::{DispatchDevice, ScriptBackend};

#[derive(Module, Debug)]
struct SmallNet<B: Backend> {
    convs: Vec<Conv3d<B>>,
}

impl<B: Backend> SmallNet<B> {
    fn new(device: &B::Device) -> Self {
        let convs = [[1, 8], [8, 16], [16, 16]]
            .into_iter()
            .map(|c| {
                Conv3d::from(
                    Conv3dConfig::new(c, [3, 3, 3])
                        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                        .init(device),
                )
            })
            .collect();
        Self { convs }
    }

    fn forward(&self, mut x: Tensor<B, 5>) -> Tensor<B, 5> {
        for c in &self.convs {
            x = activation::relu(c.forward(x));
        }
        x
    }
}

/// Median seconds per forward+backward iteration after 2 warm-up iterations.
fn time_backend<B: AutodiffBackend>(device: &B::Device, iters: usize) -> (f64, f64) {
    let net = SmallNet::<B>::new(device);
    let x = Tensor::<B, 5>::random([2, 1, 16, 16, 16], Distribution::Default, device);
    let mut forward = Vec::new();
    let mut total = Vec::new();
    for i in 0..iters + 2 {
        let t0 = Instant::now();
        let y = net.forward(x.clone());
        let loss = y.square().mean();
        let _ = loss.clone().into_data();
        let t1 = Instant::now();
        let grads = loss.backward();
        let g = GradientsParams::from_grads::<B, _>(grads, &net);
        drop(g);
        let t2 = Instant::now();
        if i >= 2 {
            forward.push((t1 - t0).as_secs_f64());
            total.push((t2 - t0).as_secs_f64());
        }
    }
    (median(&forward), median(&total))
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut iters = 5usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iters" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => iters = n,
                _ => {
                    eprintln!("error: --iters needs a positive number");
                    return 2;
                }
            },
            other => {
                eprintln!("error: unknown argument '{other}' (expected --iters N)");
                return 2;
            }
        }
    }
    println!(
        "3 × conv3d 3³ + ReLU (1→8→16→16), input 2×1×16³, forward + backward; median of {iters}"
    );
    println!(
        "{:<18} {:>12} {:>14}",
        "backend", "forward ms", "fwd+bwd ms"
    );
    let flex = DispatchDevice::Flex(burn::backend::flex::FlexDevice);
    for (label, fast) in [("flex", true), ("flex, burn conv3d", false)] {
        let (f, t) = with_fast_conv3d(fast, || time_backend::<ScriptBackend>(&flex, iters));
        println!("{label:<18} {:>12.1} {:>14.1}", f * 1e3, t * 1e3);
    }
    let (f, t) = time_backend::<burn::backend::Autodiff<burn::backend::Flex>>(
        &burn::backend::flex::FlexDevice,
        iters,
    );
    println!("{:<18} {:>12.1} {:>14.1}", "flex-direct", f * 1e3, t * 1e3);
    #[cfg(feature = "bench-ndarray")]
    {
        let nd = DispatchDevice::NdArray(Default::default());
        let (f, t) = time_backend::<ScriptBackend>(&nd, iters.min(3));
        println!("{:<18} {:>12.1} {:>14.1}", "ndarray", f * 1e3, t * 1e3);
    }
    #[cfg(not(feature = "bench-ndarray"))]
    println!("(ndarray: rebuild with `--features bench-ndarray` to include it)");
    0
}
