//! `detlab bench backends [--iters N] [--retina]`: CPU backends on a small 3D conv net, and
//! (with `--retina`) a profile of one training step of a tiny Retina U-Net.
//!
//! The conv net is 3 × (conv3d 3³ + ReLU) with channels 1 → 8 → 16 → 16 on a 2 × 1 × 16³ input;
//! one iteration is forward + `mean(y²)` + backward. Backends: `flex` (detlab's default,
//! through `Autodiff<Dispatch>`), `flex-direct` (`Autodiff<Flex>`, no dispatch layer) and, when
//! built with `--features bench-ndarray`, `ndarray`.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::nn::PaddingConfig3d;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData, activation};
use rand::SeedableRng;

use detlab::nn::detector::{DetectionBatch, Detector};
use detlab::nn::retina_unet::RetinaUNetConfig;
use detlab::nn::retina_unet::anchors::AnchorGrid;
use detlab::nn::retina_unet::atss::atss_match;
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
                Conv3dConfig::new(c, [3, 3, 3])
                    .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                    .init(device)
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
    (median(&mut forward), median(&mut total))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut iters = 5usize;
    let mut retina = false;
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
            "--retina" => retina = true,
            other => {
                eprintln!("error: unknown argument '{other}' (expected --iters N, --retina)");
                return 2;
            }
        }
    }
    if retina {
        return retina_profile(iters);
    }
    println!(
        "3 × conv3d 3³ + ReLU (1→8→16→16), input 2×1×16³, forward + backward; median of {iters}"
    );
    println!(
        "{:<12} {:>12} {:>14}",
        "backend", "forward ms", "fwd+bwd ms"
    );
    let flex = DispatchDevice::Flex(burn::backend::flex::FlexDevice);
    let (f, t) = time_backend::<ScriptBackend>(&flex, iters);
    println!("{:<12} {:>12.1} {:>14.1}", "flex", f * 1e3, t * 1e3);
    let (f, t) = time_backend::<burn::backend::Autodiff<burn::backend::Flex>>(
        &burn::backend::flex::FlexDevice,
        iters,
    );
    println!("{:<12} {:>12.1} {:>14.1}", "flex-direct", f * 1e3, t * 1e3);
    #[cfg(feature = "bench-ndarray")]
    {
        let nd = DispatchDevice::NdArray(Default::default());
        let (f, t) = time_backend::<ScriptBackend>(&nd, iters.min(3));
        println!("{:<12} {:>12.1} {:>14.1}", "ndarray", f * 1e3, t * 1e3);
    }
    #[cfg(not(feature = "bench-ndarray"))]
    println!("(ndarray: rebuild with `--features bench-ndarray` to include it)");
    0
}

/// Time the parts of one training step of a tiny Retina U-Net (1 × 1 × 32³, widths 8–64).
fn retina_profile(iters: usize) -> i32 {
    type B = ScriptBackend;
    let device = DispatchDevice::Flex(burn::backend::flex::FlexDevice);
    let cfg = RetinaUNetConfig::tiny(1, 1);
    let mut model = match cfg.init::<B>(&device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let size = 32;
    let mut voxels = vec![0.0f32; size * size * size];
    let mut seg = vec![0i64; size * size * size];
    for d in 10..20 {
        for h in 8..18 {
            for w in 12..22 {
                voxels[(d * size + h) * size + w] = 1.0;
                seg[(d * size + h) * size + w] = 1;
            }
        }
    }
    let images =
        Tensor::<B, 5>::from_data(TensorData::new(voxels, [1, 1, size, size, size]), &device);
    let segmentation =
        Tensor::<B, 4, Int>::from_data(TensorData::new(seg, [1, size, size, size]), &device);
    let gt = [10.0, 8.0, 12.0, 20.0, 18.0, 22.0];
    let batch = DetectionBatch {
        images: images.clone(),
        boxes: vec![vec![gt]],
        classes: vec![vec![0]],
        segmentation: Some(segmentation),
    };
    let mut optimizer = AdamConfig::new().init::<B, detlab::nn::RetinaUNet<B>>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (mut t_forward, mut t_loss, mut t_backward, mut t_step, mut t_host, mut t_predict) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    println!(
        "tiny Retina U-Net {} parameters, input 1×1×32³, median of {iters} steps",
        model.num_params()
    );
    for i in 0..iters + 2 {
        let t0 = Instant::now();
        let out = model.forward(images.clone()).expect("valid input");
        let _ = out.class_logits.clone().into_data();
        let t1 = Instant::now();
        let anchors =
            AnchorGrid::new([32, 32, 32], &out.level_grids, &cfg.anchor_sizes).expect("anchors");
        let matches = atss_match(&[gt], &anchors, &cfg.matcher);
        let scores = out
            .class_logits
            .clone()
            .reshape([anchors.len()])
            .into_data();
        let _ = (matches.len(), scores.num_elements());
        let t2 = Instant::now();
        drop(out);
        let t3 = Instant::now();
        let loss = model.loss(&batch, &mut rng).expect("valid batch");
        let _ = loss.total.clone().into_data();
        let t4 = Instant::now();
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        let t5 = Instant::now();
        model = optimizer.step(1e-3, model, grads);
        let t6 = Instant::now();
        let valid = model.valid();
        let _ = valid.predict(images.clone().inner()).expect("valid input");
        let t7 = Instant::now();
        if i >= 2 {
            t_forward.push((t1 - t0).as_secs_f64());
            t_host.push((t2 - t1).as_secs_f64());
            t_loss.push((t4 - t3).as_secs_f64());
            t_backward.push((t5 - t4).as_secs_f64());
            t_step.push((t6 - t5).as_secs_f64());
            t_predict.push((t7 - t6).as_secs_f64());
        }
    }
    let ms = |v: &mut Vec<f64>| median(v) * 1e3;
    let (fwd, loss, bwd, step) = (
        ms(&mut t_forward),
        ms(&mut t_loss),
        ms(&mut t_backward),
        ms(&mut t_step),
    );
    println!("forward (network only)                {fwd:>9.1} ms");
    println!(
        "host: anchors + ATSS + score transfer {:>9.1} ms",
        ms(&mut t_host)
    );
    println!("loss (forward + matching + sampling)  {loss:>9.1} ms");
    println!("backward                              {bwd:>9.1} ms");
    println!("Adam step                             {step:>9.1} ms");
    println!(
        "training step total (loss+bwd+Adam)   {:>9.1} ms",
        loss + bwd + step
    );
    println!(
        "predict (valid model, NMS)            {:>9.1} ms",
        ms(&mut t_predict)
    );
    op_breakdown(&model, images, iters);
    0
}

/// Median forward and backward seconds of `f` on `x` (backward of `sum(f(x) · r)`).
fn time_op<B: AutodiffBackend>(
    x: &Tensor<B, 5>,
    f: &dyn Fn(Tensor<B, 5>) -> Tensor<B, 5>,
    iters: usize,
) -> (f64, f64) {
    let x = x.clone().detach().require_grad();
    let probe = f(x.clone());
    let weights = Tensor::<B, 5>::random(probe.shape(), Distribution::Default, &x.device());
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(3) {
        let t0 = Instant::now();
        let y = f(x.clone());
        let t1 = Instant::now();
        let _ = (y * weights.clone()).sum().backward();
        let t2 = Instant::now();
        fwd.push((t1 - t0).as_secs_f64());
        bwd.push((t2 - t1).as_secs_f64());
    }
    (median(&mut fwd), median(&mut bwd))
}

type Adder<'a> = &'a mut dyn FnMut(usize, (f64, f64));

/// Time every conv, norm and activation of the network on its real input shapes.
fn op_breakdown(
    model: &detlab::nn::RetinaUNet<ScriptBackend>,
    images: Tensor<ScriptBackend, 5>,
    iters: usize,
) {
    type B = ScriptBackend;
    use detlab::nn::blocks::{ConvGroupNormAct, ConvNormAct};
    let names = [
        "conv3d",
        "conv_transpose3d",
        "instance/group norm",
        "activation",
    ];
    let mut table = [[0.0f64; 2]; 4];
    let mut add = |cat: usize, t: (f64, f64)| {
        table[cat][0] += t.0;
        table[cat][1] += t.1;
    };
    let unit = |u: &ConvNormAct<B>, x: &Tensor<B, 5>, add: Adder| -> Tensor<B, 5> {
        add(0, time_op(x, &|t| u.conv.forward(t), iters));
        let c = u.conv.forward(x.clone());
        add(2, time_op(&c, &|t| u.norm.forward(t), iters));
        let n = u.norm.forward(c);
        add(3, time_op(&n, &|t| u.activation.apply(t), iters));
        u.activation.apply(n)
    };
    let head_unit = |u: &ConvGroupNormAct<B>, x: &Tensor<B, 5>, add: Adder| -> Tensor<B, 5> {
        add(0, time_op(x, &|t| u.conv.forward(t), iters));
        let c = u.conv.forward(x.clone());
        add(2, time_op(&c, &|t| u.norm.forward(t), iters));
        let n = u.norm.forward(c);
        add(3, time_op(&n, &|t| u.activation.apply(t), iters));
        u.activation.apply(n)
    };
    let enc = &model.encoder;
    let mut x = images;
    for u in &enc.stem.convs {
        x = unit(u, &x, &mut add);
    }
    let mut skips = Vec::new();
    for stage in &enc.stages {
        for u in &stage.convs {
            x = unit(u, &x, &mut add);
        }
        for b in &stage.blocks {
            x = b.forward(x);
        }
        skips.push(x.clone());
    }
    let fpn = &model.decoder;
    let mut above: Option<Tensor<B, 5>> = None;
    let mut merged: Vec<Option<Tensor<B, 5>>> = vec![None; skips.len()];
    for l in (fpn.first_level..skips.len()).rev() {
        let lateral = &fpn.laterals[l - fpn.first_level];
        add(0, time_op(&skips[l], &|t| lateral.forward(t), iters));
        let mut p = lateral.forward(skips[l].clone());
        if let Some(coarser) = above.take() {
            let up = &fpn.upsamplings[l - fpn.first_level];
            add(1, time_op(&coarser, &|t| up.forward(t), iters));
            p = p + up.forward(coarser);
        }
        merged[l] = Some(p.clone());
        above = Some(p);
    }
    let mut outputs = Vec::new();
    for (&l, conv) in fpn.output_levels.iter().zip(&fpn.outputs) {
        let m = merged[l].clone().expect("merged level");
        add(0, time_op(&m, &|t| conv.forward(t), iters));
        outputs.push((l, conv.forward(m)));
    }
    for (l, feature) in &outputs {
        if *l == 0
            && let Some(seg) = &model.segmenter
        {
            add(0, time_op(feature, &|t| seg.forward(t), iters));
        }
        if !model.detection_levels.contains(l) {
            continue;
        }
        for (convs, output) in [
            (&model.classifier.convs, &model.classifier.output),
            (&model.regressor.convs, &model.regressor.output),
        ] {
            let mut h = feature.clone();
            for u in convs.iter() {
                h = head_unit(u, &h, &mut add);
            }
            add(0, time_op(&h, &|t| output.forward(t), iters));
        }
    }
    println!("per-op time summed over the network's layers (same shapes, isolated):");
    println!("{:<22} {:>10} {:>12}", "op", "forward ms", "backward ms");
    let (mut f, mut b) = (0.0, 0.0);
    for (name, [fw, bw]) in names.iter().zip(table) {
        println!("{name:<22} {:>10.1} {:>12.1}", fw * 1e3, bw * 1e3);
        f += fw;
        b += bw;
    }
    println!("{:<22} {:>10.1} {:>12.1}", "sum", f * 1e3, b * 1e3);
}
