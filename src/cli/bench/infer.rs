//! `detlab bench infer-memory [--size N] [--compare M] [--patch P] [--tile-batch B] [--tta]
//! [--device cpu|cuda]`: peak memory and time of sliding-window inference of a random N³
//! volume with a tiny Retina U-Net (random weights: memory does not depend on training).
//!
//! Every size runs in a fresh worker process, so that Linux `VmHWM` (peak resident memory)
//! measures that prediction only. The table shows the resident memory once the model and the
//! volume exist ("before"), the peak during prediction, and the volume's own size: the peak
//! should grow with the volume only by the volume itself, because only boxes are kept between
//! tiles. The default tile batch is 1 so that both sizes run the same batch shape (a 128³
//! volume is a single 128³ tile); `--tile-batch 2` is detlab's inference default.

use std::process::Command;
use std::time::Instant;

use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use detlab::infer::{InferenceConfig, Tta, collect_predictions};
use detlab::nn::retina_unet::RetinaUNetConfig;
use detlab::nn::{InferenceBackend, device, device_name};

struct Options {
    size: usize,
    compare: Option<usize>,
    patch: usize,
    tile_batch: usize,
    tta: bool,
    device: String,
    worker: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        size: 256,
        compare: Some(128),
        patch: 128,
        tile_batch: 1,
        tta: false,
        device: "cpu".into(),
        worker: false,
    };
    let mut i = 0;
    let number = |i: usize, name: &str| -> Result<usize, String> {
        args.get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{name}: {e}"))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--size" => {
                o.size = number(i, "--size")?;
                i += 1;
            }
            "--compare" => {
                let v = number(i, "--compare")?;
                o.compare = (v > 0).then_some(v);
                i += 1;
            }
            "--patch" => {
                o.patch = number(i, "--patch")?;
                i += 1;
            }
            "--tile-batch" => {
                o.tile_batch = number(i, "--tile-batch")?;
                i += 1;
            }
            "--device" => {
                o.device = args.get(i + 1).ok_or("--device needs a value")?.clone();
                i += 1;
            }
            "--tta" => o.tta = true,
            "--worker" => o.worker = true,
            other => {
                return Err(format!(
                    "unknown argument '{other}' (expected --size N, --compare M (0 = none), \
                     --patch P, --tile-batch B, --tta, --device NAME)"
                ));
            }
        }
        i += 1;
    }
    if o.size == 0 || o.patch == 0 || o.tile_batch == 0 {
        return Err("--size, --patch and --tile-batch must be positive".into());
    }
    Ok(o)
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: bench infer-memory: {e}");
            return 2;
        }
    };
    if o.worker {
        return match worker(&o) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the detlab executable: {e}");
            return 1;
        }
    };
    println!(
        "tiny Retina U-Net (random weights), patch {p}³, 50 % overlap, tile batch {b}, TTA {t}, device {d}",
        p = o.patch,
        b = o.tile_batch,
        t = if o.tta { "8 flips" } else { "off" },
        d = o.device
    );
    println!(
        "{:>8} {:>7} {:>9} {:>11} {:>12} {:>11} {:>10} {:>7}",
        "volume", "tiles", "time s", "s / tile", "volume MiB", "before MiB", "peak MiB", "boxes"
    );
    let mut sizes = vec![o.size];
    sizes.extend(o.compare);
    for size in sizes {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "infer-memory", "--worker"])
            .args(["--size", &size.to_string()])
            .args(["--patch", &o.patch.to_string()])
            .args(["--tile-batch", &o.tile_batch.to_string()])
            .args(["--device", &o.device]);
        if o.tta {
            cmd.arg("--tta");
        }
        let output = match cmd.output() {
            Ok(out) if out.status.success() => out,
            Ok(out) => {
                eprintln!(
                    "error: worker for {size}³ failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return 1;
            }
            Err(e) => {
                eprintln!("error: cannot start the worker: {e}");
                return 1;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let v: serde_json::Value = match text.lines().last().map(serde_json::from_str) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("error: the worker printed no result: {text}");
                return 1;
            }
        };
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>7}³ {:>7} {:>9.1} {:>11.2} {:>12.0} {:>11.0} {:>10.0} {:>7}",
            size,
            f("tiles"),
            f("seconds"),
            f("seconds") / f("tiles"),
            f("volume_mb"),
            f("rss_before_mb"),
            f("peak_mb"),
            f("boxes"),
        );
    }
    0
}

fn worker(o: &Options) -> Result<String, String> {
    let dev = device(&o.device).map_err(|e| e.to_string())?;
    let model = RetinaUNetConfig::tiny(1, 1)
        .init::<InferenceBackend>(&dev)
        .map_err(|e| e.to_string())?;
    let n = o.size;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let volume = Array4::from_shape_simple_fn((1, n, n, n), || rng.random::<f32>());
    let cfg = InferenceConfig {
        tile_batch: o.tile_batch,
        tta: Tta::All(o.tta),
        progress: false,
        ..Default::default()
    };
    let rss_before = super::process_memory_mib("VmRSS:");
    let start = Instant::now();
    let raw = collect_predictions(&model, volume.view(), [o.patch; 3], &cfg, &dev)
        .map_err(|e| e.to_string())?;
    let merged = raw.merge(&cfg).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "size": n,
        "device": device_name(&dev),
        "tiles": raw.num_tiles,
        "seconds": seconds,
        "volume_mb": (n * n * n * 4) as f64 / 1_048_576.0,
        "rss_before_mb": rss_before,
        "peak_mb": super::process_memory_mib("VmHWM:"),
        "boxes": merged.boxes.len(),
    })
    .to_string())
}
