//! `detlab bench train-step --detector def_detr`: one Deformable DETR training step as
//! `detlab::train` runs it with the paper's recipe (forward, Hungarian matching per decoder
//! layer, focal + L1 + GIoU-3D losses with auxiliary terms, backward, Adam with AMSGrad, weight
//! decay 1e-4, gradient-norm clip 0.1, encoder at 0.1× the rate).
//!
//! Presets (mirrored by `benches/def_detr_twin.py`, same flags); the encoder is the Retina
//! U-Net bench's plain (or `--encoder resenc`) encoder of the same preset:
//! - `quickstart` (default): widths [8, 16, 32, 64], batch 4 × 1 × 32³; the last 3 stages as
//!   levels (16³ + 8³ + 4³ = 4,672 tokens), d_model 32, 4 heads, 2 points, 1 encoder and 2
//!   decoder layers, FFN 64, 16 queries (`examples/06_def_detr.rhai`'s network);
//! - `bench`: widths [16, 32, 64, 128], batch 2 × 1 × 64³; the last 2 stages (16³ + 8³ = 4,608
//!   tokens), d_model 64, 4 heads, 4 points, 2 + 3 layers, FFN 256, 50 queries;
//! - `nndetection`: 6 stages (widths 32…320), batch 4 × 1 × 128³, the last 4 stages, d_model
//!   256, 8 heads, 4 points, 3 + 6 layers (the paper's), FFN 1024, 300 queries (for a GPU).
//!
//! Dropout 0.1 and iterative box refinement, as the defaults. Prints the median of `--steps`
//! steps after 2 warm-up steps, split into loss / backward / optimiser, and the peak resident
//! memory. `--profile` adds the deformable attention of every encoder and decoder layer timed
//! in isolation at its real shapes (forward, and backward of `sum(y · r)` into its input and
//! parameters), as a share of the step.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};

use detlab::nn::def_detr::attention::DeformableAttention;
use detlab::nn::{DefDetr, DefDetrConfig, device_name};
use detlab::train::batch::patches_to_batch;
use detlab::train::sampler::crop_patch;
use detlab::train::{CaseData, TrainOptimizer, TrainRecipe};

use super::{B, StepArgs, median, timed_steps};

/// The transformer of a preset (the encoder comes from the Retina U-Net bench's preset).
fn network(preset: &str, encoder: detlab::nn::EncoderConfig) -> DefDetrConfig {
    let base = DefDetrConfig::new(encoder, 1);
    match preset {
        "quickstart" => DefDetrConfig {
            levels: 3,
            d_model: 32,
            heads: 4,
            points: 2,
            encoder_layers: 1,
            decoder_layers: 2,
            ffn_channels: 64,
            queries: 16,
            ..base
        },
        "nndetection" => DefDetrConfig {
            levels: 4,
            encoder_layers: 3,
            decoder_layers: 6,
            ..base
        },
        _ => DefDetrConfig {
            levels: 2,
            d_model: 64,
            heads: 4,
            points: 4,
            encoder_layers: 2,
            decoder_layers: 3,
            ffn_channels: 256,
            queries: 50,
            ..base
        },
    }
}

/// Run the Deformable DETR step; returns the exit code.
pub(super) fn run(args: &StepArgs) -> i32 {
    let setup = match args.setup("quickstart") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: bench train-step: {e}");
            return 2;
        }
    };
    let device = match args.start() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: bench train-step: {e}");
            return 1;
        }
    };
    let cfg = network(&setup.preset, setup.network().encoder);
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
    let recipe = TrainRecipe::DefDetr.config();
    let mut optimizer = TrainOptimizer::<B, DefDetr<B>>::new(&recipe.optimizer).expect("valid");
    optimizer.set_encoder_params(
        model
            .encoder
            .param_ids(detlab::nn::EncoderPart::All)
            .into_iter(),
    );
    let shapes = model.level_shapes([p, p, p]);
    let tokens: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "Deformable DETR ({} encoder widths {:?}; levels {:?} = {tokens} tokens; d_model {}, {} \
         heads, {} points, {} + {} layers, FFN {}, {} queries, box refinement), {} parameters; \
         batch {n} × 1 × {p}³; Adam AMSGrad, clip 0.1; device {}; {} rayon thread(s); median of \
         {} steps after 2 warm-up",
        setup.encoder,
        cfg.encoder.widths(),
        shapes,
        cfg.d_model,
        cfg.heads,
        cfg.points,
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.ffn_channels,
        cfg.queries,
        model.num_params(),
        device_name(&device),
        rayon::current_num_threads(),
        args.steps
    );
    let Some((model, total)) = timed_steps(
        model,
        &batch,
        &mut optimizer,
        recipe.lr,
        args.steps,
        "loss (forward, matching, losses)",
        |m| {
            let _ = m.level_embedding.val().into_data();
        },
    ) else {
        return 1;
    };
    if args.profile {
        attention_profile(&model, n, &shapes, args.steps, total);
    }
    0
}

/// Median forward and backward seconds of one deformable attention layer at `lq` queries
/// (reference points of `width` 3 or boxes of width 6) over the `shapes` tokens.
fn time_attention(
    attention: &DeformableAttention<B>,
    n: usize,
    lq: usize,
    width: usize,
    shapes: &[[usize; 3]],
    iters: usize,
) -> (f64, f64) {
    let device = attention.value_proj.weight.val().device();
    let d = attention.value_proj.weight.dims()[0];
    let lv: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let levels = shapes.len();
    let random = |dims: [usize; 3]| {
        Tensor::<B, 3>::random(dims, Distribution::Normal(0.0, 1.0), &device).require_grad()
    };
    let (query, input) = (random([n, lq, d]), random([n, lv, d]));
    let reference = Tensor::<B, 4>::random(
        [n, lq, levels, width],
        Distribution::Uniform(0.2, 0.8),
        &device,
    );
    let weights = Tensor::<B, 3>::random([n, lq, d], Distribution::Default, &device);
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(3) + 1 {
        let t0 = Instant::now();
        let y = attention.forward(query.clone(), reference.clone(), input.clone(), shapes);
        let _ = y.clone().inner().into_data();
        let t1 = Instant::now();
        let grads = (y * weights.clone()).sum().backward();
        let _ = input.grad(&grads).map(|g| g.into_data());
        let t2 = Instant::now();
        fwd.push((t1 - t0).as_secs_f64());
        bwd.push((t2 - t1).as_secs_f64());
    }
    (median(&fwd[1..]), median(&bwd[1..]))
}

/// The deformable attention of every layer, timed in isolation at its real shapes.
fn attention_profile(
    model: &DefDetr<B>,
    n: usize,
    shapes: &[[usize; 3]],
    iters: usize,
    step_ms: f64,
) {
    let lv: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let q = model.config.queries;
    println!("deformable attention per layer (isolated, same shapes, median):");
    println!(
        "{:<34} {:>11} {:>12} {:>9}",
        "layer", "forward ms", "backward ms", "% step"
    );
    let (mut f, mut b) = (0.0, 0.0);
    let mut row = |name: String, (fw, bw): (f64, f64)| {
        println!(
            "{name:<34} {:>11.1} {:>12.1} {:>8.1}%",
            fw * 1e3,
            bw * 1e3,
            (fw + bw) * 1e3 / step_ms * 100.0
        );
        f += fw;
        b += bw;
    };
    for (i, layer) in model.encoder_layers.iter().enumerate() {
        let t = time_attention(&layer.attention, n, lv, 3, shapes, iters);
        row(format!("encoder {i} self ({lv} queries)"), t);
    }
    for (i, layer) in model.decoder_layers.iter().enumerate() {
        // The first layer's references are points; refined boxes after it.
        let width = if i == 0 || !model.config.box_refinement {
            3
        } else {
            6
        };
        let t = time_attention(&layer.cross_attention, n, q, width, shapes, iters);
        row(format!("decoder {i} cross ({q} queries)"), t);
    }
    println!(
        "{:<34} {:>11.1} {:>12.1} {:>8.1}%",
        "deformable attention, all layers",
        f * 1e3,
        b * 1e3,
        (f + b) * 1e3 / step_ms * 100.0
    );
}
