//! `detlab bench train-step [--threads N] [--steps N] [--profile]`: one Retina U-Net training
//! step (loss = forward + ATSS + hard-negative sampling + losses, backward, SGD Nesterov step)
//! on a batch of 2 × 1 × 64³ patches, as `detlab::train` runs it.
//!
//! The network (mirrored by `benches/torch_twin.py`): plain retunet encoder, widths
//! [16, 32, 64, 128], strides 1, 2, 2, 2, two conv(3³, no bias)–InstanceNorm–ReLU units per
//! stage; U-FPN with 1³ laterals, 2³ transposed-conv upsampling and 3³ output convs (channels
//! 32 on level 0, 64 on levels 1–3); shared heads of 2 × (conv 3³ + GroupNorm(4) + ReLU) with 64
//! channels and a 3³ output conv (27 anchors × 1 class, 27 × 6 deltas) on levels 1–3; a 1³
//! segmentation head on level 0 (2 channels). One cube object per patch.
//!
//! Prints the median of `--steps` steps after 2 warm-up steps, split into loss / backward /
//! optimiser, and the peak resident memory (`VmHWM`). `--profile` adds the time of every
//! conv, transposed conv, norm and activation of the network measured in isolation at its
//! real shapes (forward, and backward of `sum(y · r)`), summed per op type.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use rand::SeedableRng;

use detlab::nn::blocks::{ConvGroupNormAct, ConvNormAct};
use detlab::nn::detector::Detector;
use detlab::nn::encoder::{EncoderConfig, RetUNetEncoderConfig};
use detlab::nn::retina_unet::RetinaUNetConfig;
use detlab::nn::{DispatchDevice, RetinaUNet, ScriptBackend};
use detlab::train::batch::patches_to_batch;
use detlab::train::sampler::crop_patch;
use detlab::train::{CaseData, OptimizerConfig, TrainOptimizer};

type B = ScriptBackend;

/// The benchmarked network.
fn network() -> RetinaUNetConfig {
    let encoder = RetUNetEncoderConfig {
        widths: vec![16, 32, 64, 128],
        ..RetUNetEncoderConfig::nndetection(1, 4)
    };
    RetinaUNetConfig {
        fpn_channels: 64,
        head_channels: 64,
        head_channels_per_group: 16,
        ..RetinaUNetConfig::new(EncoderConfig::Retunet(encoder), 1)
    }
}

fn cube_case(id: &str, start: [usize; 3], size: [usize; 3]) -> CaseData {
    let n = 64;
    let mut image = ndarray::Array4::<f32>::zeros((1, n, n, n));
    let mut mask = ndarray::Array3::<u16>::zeros((n, n, n));
    for d in start[0]..start[0] + size[0] {
        for h in start[1]..start[1] + size[1] {
            for w in start[2]..start[2] + size[2] {
                image[[0, d, h, w]] = 1.0;
                mask[[d, h, w]] = 1;
            }
        }
    }
    let b = std::array::from_fn(|i| (start[i % 3] + if i < 3 { 0 } else { size[i % 3] }) as f64);
    CaseData {
        id: id.into(),
        image,
        instances: Some(mask),
        boxes: vec![b],
        classes: vec![0],
        instance_ids: vec![1],
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident set size in MiB (`VmHWM` of /proc/self/status).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut threads = None;
    let mut steps = 5usize;
    let mut profile = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |name: &str| match it.next().and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(format!("{name} needs a positive number")),
        };
        let parsed = match a.as_str() {
            "--threads" => number("--threads").map(|n| threads = Some(n)),
            "--steps" => number("--steps").map(|n| steps = n),
            "--profile" => {
                profile = true;
                Ok(())
            }
            other => Err(format!(
                "unknown argument '{other}' (expected --threads N, --steps N, --profile)"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}");
            return 2;
        }
    }
    if let Some(n) = threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
    {
        eprintln!("error: cannot set {n} threads: {e}");
        return 1;
    }
    let device = DispatchDevice::Flex(burn::backend::flex::FlexDevice);
    let cfg = network();
    let mut model = match cfg.init::<B>(&device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let cases = [
        cube_case("a", [20, 12, 30], [10, 12, 9]),
        cube_case("b", [35, 40, 8], [14, 8, 12]),
    ];
    let patches: Vec<_> = cases
        .iter()
        .map(|c| crop_patch(c, [0, 0, 0], [64, 64, 64], 0.5, true))
        .collect();
    let batch = match patches_to_batch::<B>(&patches, &device) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut optimizer =
        TrainOptimizer::<B, RetinaUNet<B>>::new(&OptimizerConfig::default()).expect("valid");
    println!(
        "Retina U-Net (retunet widths [16, 32, 64, 128], FPN/heads 64), {} parameters; batch 2 × 1 × 64³; \
         SGD Nesterov; {} rayon thread(s); median of {steps} steps after 2 warm-up",
        model.num_params(),
        rayon::current_num_threads()
    );
    let (mut t_loss, mut t_backward, mut t_step, mut t_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..steps + 2 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let t0 = Instant::now();
        let loss = model.loss(&batch, &mut rng).expect("valid batch");
        let value = loss.total_value();
        let t1 = Instant::now();
        let grads = loss.total.backward();
        let t2 = Instant::now();
        model = optimizer.step(0.01, model, grads).0;
        // Wait for the updated weights (backends may be lazy).
        let _ = model.classifier.output.weight.val().into_data();
        let t3 = Instant::now();
        if !value.is_finite() {
            eprintln!("error: non-finite loss {value}");
            return 1;
        }
        if i >= 2 {
            t_loss.push((t1 - t0).as_secs_f64());
            t_backward.push((t2 - t1).as_secs_f64());
            t_step.push((t3 - t2).as_secs_f64());
            t_total.push((t3 - t0).as_secs_f64());
        }
    }
    let ms = |v: &mut Vec<f64>| median(v) * 1e3;
    let total = ms(&mut t_total);
    println!(
        "loss (forward, ATSS, sampling, losses) {:>9.1} ms",
        ms(&mut t_loss)
    );
    println!(
        "backward                               {:>9.1} ms",
        ms(&mut t_backward)
    );
    println!(
        "optimiser step                         {:>9.1} ms",
        ms(&mut t_step)
    );
    println!("training step                          {total:>9.1} ms");
    match peak_rss_mib() {
        Some(m) => println!("peak RSS (VmHWM)                       {m:>9.0} MiB"),
        None => println!("peak RSS: /proc/self/status not available"),
    }
    if profile {
        op_profile(&model, batch.images.clone(), steps, total);
    }
    0
}

/// Median forward and backward seconds of `f` on `x` (backward of `sum(f(x) · r)`), and the
/// input → output shapes.
fn time_op<BA: AutodiffBackend>(
    x: &Tensor<BA, 5>,
    f: &dyn Fn(Tensor<BA, 5>) -> Tensor<BA, 5>,
    iters: usize,
) -> (f64, f64, String) {
    let x = x.clone().detach().require_grad();
    let probe = f(x.clone());
    let weights = Tensor::<BA, 5>::random(probe.shape(), Distribution::Default, &x.device());
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(3) + 1 {
        let t0 = Instant::now();
        let y = f(x.clone());
        let _ = y.clone().inner().into_data();
        let t1 = Instant::now();
        let grads = (y * weights.clone()).sum().backward();
        let _ = x.grad(&grads).map(|g| g.into_data());
        let t2 = Instant::now();
        fwd.push((t1 - t0).as_secs_f64());
        bwd.push((t2 - t1).as_secs_f64());
    }
    let shapes = format!("{:?} -> {:?}", x.dims(), weights.dims());
    (median(&mut fwd[1..]), median(&mut bwd[1..]), shapes)
}

const OPS: [&str; 6] = [
    "conv3d 3³ (encoder)",
    "conv3d (U-FPN, heads)",
    "conv_transpose3d",
    "instance norm",
    "group norm",
    "ReLU",
];

/// Time every conv, norm and activation of `model` on its real input shapes.
fn op_profile(model: &RetinaUNet<B>, images: Tensor<B, 5>, iters: usize, step_ms: f64) {
    let mut table = [[0.0f64; 2]; 6];
    let mut layers: Vec<(usize, f64, f64, String)> = Vec::new();
    let mut add = |op: usize, t: (f64, f64, String)| {
        table[op][0] += t.0;
        table[op][1] += t.1;
        layers.push((op, t.0, t.1, t.2));
    };
    let unit =
        |u: &ConvNormAct<B>, x: &Tensor<B, 5>, add: &mut dyn FnMut(usize, (f64, f64, String))| {
            add(0, time_op(x, &|t| u.conv.forward(t), iters));
            let c = u.conv.forward(x.clone());
            add(3, time_op(&c, &|t| u.norm.forward(t), iters));
            let n = u.norm.forward(c);
            add(5, time_op(&n, &|t| u.activation.apply(t), iters));
            u.activation.apply(n)
        };
    let head_unit = |u: &ConvGroupNormAct<B>,
                     x: &Tensor<B, 5>,
                     add: &mut dyn FnMut(usize, (f64, f64, String))| {
        add(1, time_op(x, &|t| u.conv.forward(t), iters));
        let c = u.conv.forward(x.clone());
        add(4, time_op(&c, &|t| u.norm.forward(t), iters));
        let n = u.norm.forward(c);
        add(5, time_op(&n, &|t| u.activation.apply(t), iters));
        u.activation.apply(n)
    };
    let encoder = &model.encoder;
    let mut x = images;
    for u in &encoder.stem.convs {
        x = unit(u, &x, &mut add);
    }
    let mut skips = Vec::new();
    for stage in &encoder.stages {
        for u in &stage.convs {
            x = unit(u, &x, &mut add);
        }
        skips.push(x.clone());
    }
    let fpn = &model.decoder;
    let mut above: Option<Tensor<B, 5>> = None;
    let mut merged: Vec<Option<Tensor<B, 5>>> = vec![None; skips.len()];
    for l in (fpn.first_level..skips.len()).rev() {
        let lateral = &fpn.laterals[l - fpn.first_level];
        add(1, time_op(&skips[l], &|t| lateral.forward(t), iters));
        let mut p = lateral.forward(skips[l].clone());
        if let Some(coarser) = above.take() {
            let up = &fpn.upsamplings[l - fpn.first_level];
            add(2, time_op(&coarser, &|t| up.forward(t), iters));
            p = p + up.forward(coarser);
        }
        merged[l] = Some(p.clone());
        above = Some(p);
    }
    for (&l, conv) in fpn.output_levels.iter().zip(&fpn.outputs) {
        let m = merged[l].clone().expect("merged level");
        add(1, time_op(&m, &|t| conv.forward(t), iters));
        let feature = conv.forward(m);
        if l == 0
            && let Some(seg) = &model.segmenter
        {
            add(1, time_op(&feature, &|t| seg.forward(t), iters));
        }
        if !model.detection_levels.contains(&l) {
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
            add(1, time_op(&h, &|t| output.forward(t), iters));
        }
    }
    println!("per-op time summed over the network's layers (isolated, same shapes, median):");
    println!(
        "{:<24} {:>11} {:>12} {:>9}",
        "op", "forward ms", "backward ms", "% step"
    );
    let (mut f, mut b) = (0.0, 0.0);
    for (name, [fw, bw]) in OPS.iter().zip(table) {
        println!(
            "{name:<24} {:>11.1} {:>12.1} {:>8.1}%",
            fw * 1e3,
            bw * 1e3,
            (fw + bw) * 1e3 / step_ms * 100.0
        );
        f += fw;
        b += bw;
    }
    println!(
        "{:<24} {:>11.1} {:>12.1} {:>8.1}%",
        "sum",
        f * 1e3,
        b * 1e3,
        (f + b) * 1e3 / step_ms * 100.0
    );
    println!(
        "rest of the step (adds, flatten/cat, anchors, ATSS, sampling, losses, optimiser): {:.1} ms",
        step_ms - (f + b) * 1e3
    );
    let _ = model.clone().valid();
    layers.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    println!("the 8 most expensive layers:");
    for (op, fw, bw, shapes) in layers.iter().take(8) {
        println!(
            "  {:<22} {shapes:<46} {:>8.1} fwd {:>8.1} bwd ms",
            OPS[*op],
            fw * 1e3,
            bw * 1e3
        );
    }
}
