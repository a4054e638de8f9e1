//! `detlab bench pretrain [--threads N] [--steps N] [--widths tiny|l|both] [--patch 32|64|both]
//! [--methods mae,spark]`: one pre-training step (batch drawn on the CPU, loss, backward, SGD
//! step with nnssl's settings) of MAE and S3D on a ResEnc U-Net, as `detlab::pretrain` runs it.
//!
//! Networks (mirrored by `benches/pretrain_twin.py` with dynamic-network-architectures'
//! `ResidualEncoderUNet`): "tiny" = widths [8, 16, 32, 64], blocks [1, 1, 2, 2], strides
//! 1, 2, 2, 2; "l" = ResEnc-L (widths 32…320, blocks 1, 3, 4, 6, 6, 6, strides 1, 2, …, 2),
//! each with nnssl's decoder (one conv per level) and a 1-channel output. Batch 2 × 1 × P³ of
//! random z-scored data, 75 % block mask with blocks of P/8 voxels. Prints the median step
//! time after one warm-up step, steps/s and the peak resident memory (`VmHWM`, cumulative
//! over the configurations in the order run).

use super::{median, peak_rss_mib};
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;

use detlab::nn::encoder::{EncoderConfig, ResEncConfig};
use detlab::nn::{DispatchDevice, ScriptBackend};
use detlab::pretrain::objective::{Sources, loss, prepare_batch};
use detlab::pretrain::{Method, PretrainConfig, PretrainSource, network_config};
use detlab::train::TrainOptimizer;

type B = ScriptBackend;

/// Random z-scored patches (the data does not change the cost of a step).
struct Noise;

impl PretrainSource for Noise {
    fn channels(&self) -> usize {
        1
    }
    fn plan(&self) -> detlab::pretrain::DataPlan {
        detlab::pretrain::DataPlan {
            source: "noise".into(),
            spacing: [1.0; 3],
            normalization: "none".into(),
            channels: 1,
            preprocessing: None,
        }
    }
    fn patch(
        &self,
        patch: [usize; 3],
        index: u64,
        _rng: &mut dyn rand::RngCore,
    ) -> ndarray::Array4<f32> {
        use rand::Rng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(index);
        ndarray::Array4::from_shape_simple_fn((1, patch[0], patch[1], patch[2]), || {
            rng.random::<f32>() * 2.0 - 1.0
        })
    }
}

fn encoder(widths: &str) -> EncoderConfig {
    match widths {
        "l" => EncoderConfig::Resenc(ResEncConfig::resenc_l(1)),
        _ => EncoderConfig::Resenc(ResEncConfig::tiny(1)),
    }
}

fn step_times(
    method: Method,
    widths: &str,
    patch: usize,
    steps: usize,
) -> Result<Vec<f64>, String> {
    let device = DispatchDevice::Flex(burn::backend::flex::FlexDevice);
    let config = PretrainConfig {
        patch: [patch; 3],
        batch: 2,
        mask: detlab::pretrain::config::MaskConfig {
            block: patch / 8,
            ratio: 0.75,
        },
        progress: false,
        ..PretrainConfig::for_method(method)
    };
    let sources = Sources::Images(Arc::new(Noise));
    let net_config =
        network_config(&encoder(widths), &sources, &config).map_err(|e| e.to_string())?;
    let mut network = net_config.init::<B>(&device).map_err(|e| e.to_string())?;
    let mut optimizer =
        TrainOptimizer::<B, _>::new(&config.optimizer).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for step in 0..=steps {
        let started = Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step as u64);
        let batch = prepare_batch(&config, &sources, step as u64 * 2, 2, &mut rng)
            .map_err(|e| e.to_string())?;
        let l = loss(&network, &config, &batch, None, &[], false, &device);
        let grads = l.total.backward();
        let (updated, _) = optimizer.step(0.01, network, grads);
        network = updated;
        if step > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let mut threads = None;
    let mut steps = 3usize;
    let mut widths = vec!["tiny".to_string()];
    let mut patches = vec![32usize, 64];
    let mut methods = vec![Method::Mae, Method::Spark];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().cloned().unwrap_or_default();
        let parsed: Result<(), String> = match a.as_str() {
            "--threads" => value
                .parse()
                .map(|n| threads = Some(n))
                .map_err(|_| "--threads needs a number".into()),
            "--steps" => value
                .parse()
                .map(|n| steps = n)
                .map_err(|_| "--steps needs a number".into()),
            "--widths" => match value.as_str() {
                "tiny" | "l" => {
                    widths = vec![value.clone()];
                    Ok(())
                }
                "both" => {
                    widths = vec!["tiny".into(), "l".into()];
                    Ok(())
                }
                _ => Err("--widths is tiny, l or both".into()),
            },
            "--patch" => match value.as_str() {
                "both" => {
                    patches = vec![32, 64];
                    Ok(())
                }
                v => v
                    .parse()
                    .map(|p| patches = vec![p])
                    .map_err(|_| "--patch is 32, 64 or both".into()),
            },
            "--methods" => value
                .split(',')
                .map(|m| match m {
                    "mae" => Ok(Method::Mae),
                    "spark" => Ok(Method::Spark),
                    other => Err(format!("unknown method '{other}' (mae, spark)")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|m| methods = m),
            other => Err(format!(
                "unknown argument '{other}' (expected --threads N, --steps N, --widths tiny|l|both, --patch 32|64|both, --methods mae,spark)"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}");
            return 2;
        }
    }
    if let Err(e) = detlab::util::init_thread_pool(threads) {
        eprintln!("error: cannot start the threads: {e}");
        return 1;
    }
    // Timed on a pool worker, as `detlab run` trains (see `util::run_on_worker`).
    detlab::util::run_on_worker(|| report(steps, &widths, &patches, &methods))
}

/// Time and print every (widths, patch, method) case; returns the exit code.
fn report(steps: usize, widths: &[String], patches: &[usize], methods: &[Method]) -> i32 {
    println!(
        "pre-training step, batch 2, median of {steps} after 1 warm-up; threads: {}",
        rayon::current_num_threads()
    );
    for w in widths {
        for &p in patches {
            for &m in methods {
                match step_times(m, w, p, steps) {
                    Ok(t) => {
                        let s = median(&t);
                        println!(
                            "{:<6} widths {:<4} patch {p:>3}^3   step {:>9.1} ms   {:>7.3} steps/s   peak RSS {:>6.0} MiB",
                            m.name(),
                            w,
                            s * 1e3,
                            1.0 / s,
                            peak_rss_mib().unwrap_or(f64::NAN)
                        );
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 1;
                    }
                }
            }
        }
    }
    0
}
