//! `detlab bench train-step [--detector retina_unet|def_detr] [--preset bench|quickstart|nndetection]
//! [--encoder retunet|resenc] [--patch N] [--batch N] [--threads N] [--steps N]
//! [--device cpu|cuda] [--profile]`: one Retina U-Net training step (loss = forward + ATSS +
//! hard-negative sampling + losses, backward, SGD Nesterov step) as `detlab::train` runs it;
//! `--detector def_detr` times a Deformable DETR step instead ([`def_detr`]).
//!
//! Presets (mirrored by `benches/torch_twin.py`, same flags):
//! - `bench` (default): encoder widths [16, 32, 64, 128], strides 1, 2, 2, 2; U-FPN 64 channels
//!   (32 on level 0); heads 64 channels, GroupNorm(4); batch 2 × 1 × 64³.
//! - `quickstart`: the quickstart's network (`retunet_tiny`, widths [8, 16, 32, 64], U-FPN and
//!   heads 32 channels, GroupNorm(2)); batch 4 × 1 × 32³.
//! - `nndetection`: nnDetection's scale for a GPU: 6 stages (widths 32…320), U-FPN and heads
//!   128 channels; batch 4 × 1 × 128³.
//!
//! `--encoder retunet` is the plain encoder (two conv 3³ (no bias)–InstanceNorm–ReLU units per
//! stage); `--encoder resenc` the residual one (ResNet-D basic blocks, conv bias, LeakyReLU;
//! blocks [1, 1, 2, 2] on 4 stages, ResEnc-L's [1, 3, 4, 6, 6, 6] on 6). U-FPN: 1³ laterals,
//! 2³ transposed-conv upsampling, 3³ output convs; shared heads of 2 × (conv 3³ + GroupNorm +
//! ReLU) and a 3³ output conv (27 anchors × 1 class, 27 × 6 deltas) on the detection levels; a
//! 1³ segmentation head on level 0 (2 channels). One cube object per patch.
//!
//! Prints the median of `--steps` steps after 2 warm-up steps, split into loss / backward /
//! optimiser, and the peak resident memory (`VmHWM`). `--profile` adds the time of every
//! conv, transposed conv, norm and activation of the network measured in isolation at its
//! real shapes (forward, and backward of `sum(y · r)`), summed per op type, and every conv
//! layer's achieved GFLOP/s beside one core's measured peak.

use super::{median, peak_rss_mib};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use rand::SeedableRng;

use detlab::nn::blocks::{ConvGroupNormAct, ConvNormAct};
use detlab::nn::detector::{DetectionBatch, Detector};
use detlab::nn::encoder::{EncoderConfig, ResEncConfig, RetUNetEncoderConfig};
use detlab::nn::retina_unet::RetinaUNetConfig;
use detlab::nn::{RetinaUNet, ScriptBackend, device, device_name};
use detlab::train::batch::patches_to_batch;
use detlab::train::sampler::crop_patch;
use detlab::train::{CaseData, OptimizerConfig, TrainOptimizer};

mod def_detr;

type B = ScriptBackend;

/// The parsed arguments of `bench train-step` (shared by both detectors).
pub(crate) struct StepArgs {
    detector: String,
    threads: Option<usize>,
    steps: usize,
    profile: bool,
    preset: Option<String>,
    encoder: String,
    device: String,
    patch: Option<usize>,
    batch: Option<usize>,
}

impl StepArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = StepArgs {
            detector: "retina_unet".into(),
            threads: None,
            steps: 5,
            profile: false,
            preset: None,
            encoder: "retunet".into(),
            device: "cpu".into(),
            patch: None,
            batch: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let positive = |name: &str, v: String| match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name} needs a positive number")),
            };
            match a.as_str() {
                "--threads" => parsed.threads = Some(positive(a, value(a)?)?),
                "--steps" => parsed.steps = positive(a, value(a)?)?,
                "--patch" => parsed.patch = Some(positive(a, value(a)?)?),
                "--batch" => parsed.batch = Some(positive(a, value(a)?)?),
                "--preset" => parsed.preset = Some(value(a)?),
                "--encoder" => parsed.encoder = value(a)?,
                "--device" => parsed.device = value(a)?,
                "--detector" => parsed.detector = value(a)?,
                "--profile" => parsed.profile = true,
                other => {
                    return Err(format!(
                        "unknown argument '{other}' (expected --detector NAME, --preset NAME, \
                         --encoder NAME, --patch N, --batch N, --threads N, --steps N, \
                         --device NAME, --profile)"
                    ));
                }
            }
        }
        if !matches!(parsed.detector.as_str(), "retina_unet" | "def_detr") {
            return Err(format!(
                "unknown detector '{}' (retina_unet or def_detr)",
                parsed.detector
            ));
        }
        Ok(parsed)
    }

    /// The network and batch of the chosen preset, with `--patch` and `--batch` applied.
    fn setup(&self, default_preset: &str) -> Result<Setup, String> {
        let preset = self.preset.as_deref().unwrap_or(default_preset);
        let mut setup = Setup::new(preset, &self.encoder)?;
        setup.patch = self.patch.unwrap_or(setup.patch);
        setup.batch = self.batch.unwrap_or(setup.batch);
        Ok(setup)
    }

    /// Open the device (rayon's pool is sized by `run`).
    fn start(&self) -> Result<detlab::nn::DispatchDevice, String> {
        device(&self.device).map_err(|e| e.to_string())
    }
}

/// The benchmarked network and batch.
struct Setup {
    preset: String,
    encoder: String,
    patch: usize,
    batch: usize,
}

impl Setup {
    fn new(preset: &str, encoder: &str) -> Result<Self, String> {
        let (patch, batch) = match preset {
            "bench" => (64, 2),
            "quickstart" => (32, 4),
            "nndetection" => (128, 4),
            other => {
                return Err(format!(
                    "unknown preset '{other}' (bench, quickstart or nndetection)"
                ));
            }
        };
        if !matches!(encoder, "retunet" | "resenc") {
            return Err(format!("unknown encoder '{encoder}' (retunet or resenc)"));
        }
        Ok(Self {
            preset: preset.into(),
            encoder: encoder.into(),
            patch,
            batch,
        })
    }

    pub(crate) fn network(&self) -> RetinaUNetConfig {
        let (widths, fpn, head) = match self.preset.as_str() {
            "quickstart" => (vec![8, 16, 32, 64], 32, 32),
            "nndetection" => (vec![32, 64, 128, 256, 320, 320], 128, 128),
            _ => (vec![16, 32, 64, 128], 64, 64),
        };
        let stages = widths.len();
        let encoder = if self.encoder == "resenc" {
            let mut c = if stages == 6 {
                ResEncConfig::resenc_l(1)
            } else {
                ResEncConfig::tiny(1)
            };
            c.widths = widths;
            EncoderConfig::Resenc(c)
        } else {
            EncoderConfig::Retunet(RetUNetEncoderConfig {
                widths,
                ..RetUNetEncoderConfig::nndetection(1, stages)
            })
        };
        RetinaUNetConfig {
            fpn_channels: fpn,
            head_channels: head,
            head_channels_per_group: 16,
            ..RetinaUNetConfig::new(encoder, 1)
        }
    }

    /// Patch `i` of the batch: cube `a` or `b` (alternating), given at 64³ and scaled to the
    /// patch size.
    pub(crate) fn case(&self, i: usize) -> CaseData {
        let ([start, size], id) = if i % 2 == 0 {
            ([[20, 12, 30], [10, 12, 9]], "a")
        } else {
            ([[35, 40, 8], [14, 8, 12]], "b")
        };
        let p = self.patch;
        cube_case(
            &format!("{id}{i}"),
            p,
            start.map(|s| s * p / 64),
            size.map(|s| (s * p / 64).max(2)),
        )
    }
}

fn cube_case(id: &str, n: usize, start: [usize; 3], size: [usize; 3]) -> CaseData {
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

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let parsed = match StepArgs::parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: bench train-step: {e}");
            return 2;
        }
    };
    if let Err(e) = detlab::util::init_thread_pool(parsed.threads) {
        eprintln!("error: bench train-step: cannot start the threads: {e}");
        return 1;
    }
    // Timed on a pool worker, as `detlab run` trains (see `util::run_on_worker`).
    detlab::util::run_on_worker(|| {
        if parsed.detector == "def_detr" {
            def_detr::run(&parsed)
        } else {
            run_retina_unet(&parsed)
        }
    })
}

/// The Retina U-Net step (and `--profile`'s per-op table); returns the exit code.
fn run_retina_unet(parsed: &StepArgs) -> i32 {
    let (steps, profile) = (parsed.steps, parsed.profile);
    let setup = match parsed.setup("bench") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: bench train-step: {e}");
            return 2;
        }
    };
    let device = match parsed.start() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: bench train-step: {e}");
            return 1;
        }
    };
    let cfg = setup.network();
    let model = match cfg.init::<B>(&device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let (p, n) = (setup.patch, setup.batch);
    let cases: Vec<CaseData> = (0..n).map(|i| setup.case(i)).collect();
    let patches: Vec<_> = cases
        .iter()
        .map(|c| crop_patch(c, [0, 0, 0], [p, p, p], 0.5, true))
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
        "Retina U-Net ({} encoder widths {:?}, FPN/heads {}), {} parameters; batch {n} × 1 × {p}³; \
         SGD Nesterov; device {}; {} rayon thread(s); median of {steps} steps after 2 warm-up",
        setup.encoder,
        cfg.encoder.widths(),
        cfg.fpn_channels,
        model.num_params(),
        device_name(&device),
        rayon::current_num_threads()
    );
    let Some((model, total)) = timed_steps(
        model,
        &batch,
        &mut optimizer,
        0.01,
        steps,
        "loss (forward, ATSS, sampling, losses)",
        |m| {
            let _ = m.classifier.output.weight.val().into_data();
        },
    ) else {
        return 1;
    };
    if profile {
        op_profile(&model, batch.images.clone(), steps, total);
    }
    0
}

/// Time `steps` training steps of `model` on `batch` after 2 warm-up steps and print the median
/// split (loss, backward, optimiser step, whole step) and the peak RSS; `sync` waits for the
/// updated weights (backends may be lazy). Returns the model and the median step in ms, or
/// `None` after printing the error when a loss is not finite. Both detectors' benches use it,
/// so their figures are measured the same way.
pub(crate) fn timed_steps<M>(
    mut model: M,
    batch: &DetectionBatch<B>,
    optimizer: &mut TrainOptimizer<B, M>,
    lr: f64,
    steps: usize,
    loss_label: &str,
    sync: impl Fn(&M),
) -> Option<(M, f64)>
where
    M: Detector<B> + AutodiffModule<B>,
{
    let (mut t_loss, mut t_backward, mut t_step, mut t_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..steps + 2 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let t0 = Instant::now();
        let loss = model.loss(batch, &mut rng).expect("valid batch");
        let value = loss.total_value();
        let t1 = Instant::now();
        let grads = loss.total.backward();
        let t2 = Instant::now();
        model = optimizer.step(lr, model, grads).0;
        sync(&model);
        let t3 = Instant::now();
        if !value.is_finite() {
            eprintln!("error: non-finite loss {value}");
            return None;
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
    println!("{loss_label:<39}{:>9.1} ms", ms(&mut t_loss));
    println!("{:<39}{:>9.1} ms", "backward", ms(&mut t_backward));
    println!("{:<39}{:>9.1} ms", "optimiser step", ms(&mut t_step));
    println!("{:<39}{total:>9.1} ms", "training step");
    match peak_rss_mib() {
        Some(m) => println!("{:<39}{m:>9.0} MiB", "peak RSS (VmHWM)"),
        None => println!("peak RSS: /proc/self/status not available"),
    }
    Some((model, total))
}

/// Median forward and backward seconds of `f` on `x` (backward of `sum(f(x) · r)`), and the
/// input and output shapes.
pub(crate) fn time_op<BA: AutodiffBackend>(
    x: &Tensor<BA, 5>,
    f: &dyn Fn(Tensor<BA, 5>) -> Tensor<BA, 5>,
    iters: usize,
) -> Timed {
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
    Timed {
        forward: median(&fwd[1..]),
        backward: median(&bwd[1..]),
        input: x.dims(),
        output: weights.dims(),
    }
}

/// One layer timed in isolation.
pub(crate) struct Timed {
    forward: f64,
    backward: f64,
    input: [usize; 5],
    output: [usize; 5],
}

impl Timed {
    fn shapes(&self) -> String {
        format!("{:?} -> {:?}", self.input, self.output)
    }
}

/// Forward FLOPs of a convolution (2 per multiply-add): `2 · N · C_out · out voxels · C_in ·
/// kernel volume`; for a transposed convolution the input and output swap roles.
fn conv_flops(weight: [usize; 5], t: &Timed, transposed: bool) -> f64 {
    let kernel: usize = weight[2..].iter().product();
    let (small, channels_other) = if transposed {
        (t.input, t.output[1])
    } else {
        (t.output, t.input[1])
    };
    let voxels: usize = small.iter().product();
    2.0 * (voxels * channels_other * kernel) as f64
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
    // (op, timing, forward FLOPs: 0 for norms and activations)
    let mut layers: Vec<(usize, Timed, f64)> = Vec::new();
    let mut add = |op: usize, t: Timed, flops: f64| {
        table[op][0] += t.forward;
        table[op][1] += t.backward;
        layers.push((op, t, flops));
    };
    type Add<'a> = dyn FnMut(usize, Timed, f64) + 'a;
    let conv = |op: usize, c: &detlab::nn::conv::Conv3d<B>, x: &Tensor<B, 5>, add: &mut Add| {
        let t = time_op(x, &|t| c.forward(t), iters);
        let flops = conv_flops(c.weight.dims(), &t, false);
        add(op, t, flops);
        c.forward(x.clone())
    };
    let unit = |u: &ConvNormAct<B>, x: &Tensor<B, 5>, add: &mut Add| {
        let c = conv(0, &u.conv, x, add);
        add(3, time_op(&c, &|t| u.norm.forward(t), iters), 0.0);
        let n = u.norm.forward(c);
        add(5, time_op(&n, &|t| u.activation.apply(t), iters), 0.0);
        u.activation.apply(n)
    };
    let head_unit = |u: &ConvGroupNormAct<B>, x: &Tensor<B, 5>, add: &mut Add| {
        let c = conv(1, &u.conv, x, add);
        add(4, time_op(&c, &|t| u.norm.forward(t), iters), 0.0);
        let n = u.norm.forward(c);
        add(5, time_op(&n, &|t| u.activation.apply(t), iters), 0.0);
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
        for block in &stage.blocks {
            // Residual blocks: both units and the projection, then the block itself (pool,
            // add and activation are counted in the rest of the step).
            let h = unit(&block.conv1, &x, &mut add);
            let _ = unit(&block.conv2, &h, &mut add);
            if let Some(skip) = &block.skip {
                let pooled = detlab::nn::blocks::avg_pool3d(x.clone(), block.skip_pool);
                let _ = unit(skip, &pooled, &mut add);
            }
            x = block.forward(x);
        }
        skips.push(x.clone());
    }
    let fpn = &model.decoder;
    let mut above: Option<Tensor<B, 5>> = None;
    let mut merged: Vec<Option<Tensor<B, 5>>> = vec![None; skips.len()];
    for l in (fpn.first_level..skips.len()).rev() {
        let lateral = &fpn.laterals[l - fpn.first_level];
        let mut p = conv(1, lateral, &skips[l], &mut add);
        if let Some(coarser) = above.take() {
            let up = &fpn.upsamplings[l - fpn.first_level];
            let t = time_op(&coarser, &|t| up.forward(t), iters);
            let flops = conv_flops(up.weight.dims(), &t, true);
            add(2, t, flops);
            p = p + up.forward(coarser);
        }
        merged[l] = Some(p.clone());
        above = Some(p);
    }
    for (&l, output_conv) in fpn.output_levels.iter().zip(&fpn.outputs) {
        let m = merged[l].clone().expect("merged level");
        let feature = conv(1, output_conv, &m, &mut add);
        if l == 0
            && let Some(seg) = &model.segmenter
        {
            let _ = conv(1, &seg.conv, &feature, &mut add);
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
            let _ = conv(1, output, &h, &mut add);
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
    let peak = super::peak::measure();
    let threads = rayon::current_num_threads();
    println!("{peak}");
    println!(
        "conv layers, achieved GFLOP/s (backward = input + weight gradient = 2 × forward FLOPs; \
         peak × {threads} thread(s) = {:.0} GFLOP/s):",
        peak.gflops * threads as f64
    );
    println!(
        "  {:<22} {:<46} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "op", "shapes", "GFLOP", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s", "% peak"
    );
    let (mut all_flops, mut all_seconds) = (0.0, 0.0);
    for (op, t, flops) in layers.iter().filter(|l| l.2 > 0.0) {
        let (fw_rate, bw_rate) = (flops / t.forward / 1e9, 2.0 * flops / t.backward / 1e9);
        let overall = 3.0 * flops / (t.forward + t.backward) / 1e9;
        all_flops += 3.0 * flops;
        all_seconds += t.forward + t.backward;
        println!(
            "  {:<22} {:<46} {:>9.3} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6.1}%",
            OPS[*op],
            t.shapes(),
            flops / 1e9,
            t.forward * 1e3,
            t.backward * 1e3,
            fw_rate,
            bw_rate,
            overall / (peak.gflops * threads as f64) * 100.0
        );
    }
    let overall = all_flops / all_seconds / 1e9;
    println!(
        "  all conv layers: {:.2} GFLOP per step (forward + backward) in {:.1} ms = {overall:.1} GFLOP/s, {:.1}% of peak",
        all_flops / 1e9,
        all_seconds * 1e3,
        overall / (peak.gflops * threads as f64) * 100.0
    );
    layers.sort_by(|a, b| (b.1.forward + b.1.backward).total_cmp(&(a.1.forward + a.1.backward)));
    println!("the 8 most expensive layers:");
    for (op, t, _) in layers.iter().take(8) {
        println!(
            "  {:<22} {:<46} {:>8.1} fwd {:>8.1} bwd ms",
            OPS[*op],
            t.shapes(),
            t.forward * 1e3,
            t.backward * 1e3
        );
    }
}
