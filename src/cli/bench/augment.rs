//! `detlab bench augment`: the augmentation of a training batch ([`augment_batch`], nnDetection's
//! `BaseMoreAug`) against batchgenerators' transforms configured as nnDetection configures them
//! (`benches/augment_reference.py`), in one run, on the same generator patches, one thread each.
//!
//! The batch: `--batch` (4) generator patches of one channel for a `--patch`³ (128³) training
//! patch (the generator size follows nnDetection's `get_patch_size`: 249³ for 128³), a smooth
//! image with three spheres whose instance mask both sides turn into boxes after augmenting.
//! Every timed batch starts from copies of the same patches (the copies are not timed).
//!
//! Cases (both sides): `base_more` (nnDetection's probabilities: the mean over `--batches`
//! batches is the cost per training iteration), `all` (every transform applied, mirroring on
//! every axis: the worst case), `spatial` (rotation and scaling always, nothing else) and
//! `intensity` (every intensity transform always, on final-size patches).
//!
//! Each side reports per batch its wall time and its process CPU time (mean over the batches);
//! on a machine loaded by other processes the CPU times' ratio is the steadier figure.
//!
//! Options: `--patch N` (128), `--batch B` (4), `--batches N` (8, detlab), `--python-batches N`
//! (4), `--threads N` (1, both sides), `--seed S` (0), `--python EXE` (python3; needs numpy,
//! scipy and batchgenerators), `--script PATH`, `--no-python` (detlab only), `--case NAME`
//! (detlab runs only that case, e.g. for a profiler).

use super::median;
use detlab::train::Patch;
use detlab::train::augment::{AugmentConfig, augment_batch};
use detlab::volume::boxes::{BoxConvention, mask_to_boxes};
use ndarray::{Array3, Array4};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

struct Options {
    patch: usize,
    batch: usize,
    batches: usize,
    python_batches: usize,
    threads: usize,
    seed: u64,
    python: Option<String>,
    script: PathBuf,
    case: Option<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        patch: 128,
        batch: 4,
        batches: 8,
        python_batches: 4,
        threads: 1,
        seed: 0,
        python: Some("python3".into()),
        script: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/augment_reference.py"
        )),
        case: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let count = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: '{v}' is not a whole number"))
                .map(|n| n.max(1))
        };
        match flag.as_str() {
            "--patch" => o.patch = count(value()?)?,
            "--batch" => o.batch = count(value()?)?,
            "--batches" => o.batches = count(value()?)?,
            "--python-batches" => o.python_batches = count(value()?)?,
            "--threads" => o.threads = count(value()?)?,
            "--seed" => {
                let v = value()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a whole number"))?
            }
            "--python" => o.python = Some(value()?),
            "--script" => o.script = PathBuf::from(value()?),
            "--no-python" => o.python = None,
            "--case" => {
                let v = value()?;
                if !cases().iter().any(|(name, _)| *name == v) {
                    let names: Vec<&str> = cases().iter().map(|(name, _)| *name).collect();
                    return Err(format!("--case: '{v}' is not one of {}", names.join(", ")));
                }
                o.case = Some(v)
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(o)
}

/// Generator patch `index` of `benches/augment_reference.py` (`test_patch`): a smooth image
/// with three spheres of value 1, instance ids 1, 2, 3.
fn test_patch(size: [usize; 3], index: usize) -> Patch {
    let phase = 0.37 * index as f64;
    let centres: Vec<[f64; 3]> = (0..3)
        .map(|k| size.map(|n| (0.3 + 0.2 * k as f64 + 0.05 * index as f64) * n as f64))
        .collect();
    let smallest = *size.iter().min().expect("three axes") as f64;
    let mut mask = Array3::<u16>::zeros(size);
    let image = Array4::from_shape_fn((1, size[0], size[1], size[2]), |(_, d, h, w)| {
        let (z, y, x) = (d as f64, h as f64, w as f64);
        let mut value =
            0.5 + 0.25 * ((0.11 * z + phase).sin() * (0.07 * y).cos() + (0.05 * x + 0.3 * z).sin());
        for (k, c) in centres.iter().enumerate() {
            let radius = 0.06 * smallest * (1.0 + k as f64 * 0.5);
            if (z - c[0]).powi(2) + (y - c[1]).powi(2) + (x - c[2]).powi(2) <= radius * radius {
                mask[[d, h, w]] = k as u16 + 1;
                value = 1.0;
            }
        }
        value as f32
    });
    let found = mask_to_boxes(&mask.mapv(f32::from).view(), BoxConvention::HalfOpen)
        .expect("whole-number ids");
    let ids: Vec<u32> = found.keys().copied().collect();
    Patch {
        case_id: format!("bench{index}"),
        origin: [0; 3],
        foreground: true,
        image,
        instances: Some(mask),
        boxes: found.values().copied().collect(),
        classes: vec![0; ids.len()],
        instance_ids: ids.clone(),
        instance_classes: ids.iter().map(|&id| (id, 0)).collect(),
    }
}

/// detlab's cases, named as the reference's.
fn cases() -> Vec<(&'static str, AugmentConfig)> {
    let intensities = |c: &mut AugmentConfig| {
        c.noise_probability = 1.0;
        c.blur_probability = 1.0;
        c.blur_channel_probability = 1.0;
        c.brightness_probability = 1.0;
        c.contrast_probability = 1.0;
        c.inverted_gamma_probability = 1.0;
        c.gamma_probability = 1.0;
    };
    let spatial = |c: &mut AugmentConfig| {
        c.rotation_probability = 1.0;
        c.scale_probability = 1.0;
    };
    vec![
        ("base_more", AugmentConfig::default()),
        (
            "all",
            AugmentConfig::only(|c| {
                intensities(c);
                spatial(c);
                c.mirror_probability = 1.0;
            }),
        ),
        ("spatial", AugmentConfig::only(spatial)),
        ("intensity", AugmentConfig::only(intensities)),
    ]
}

/// Run the benchmark; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: bench augment: {e}");
            return 2;
        }
    };
    let pool = match super::thread_pool(o.threads) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: bench augment: {e}");
            return 1;
        }
    };
    let size = [o.patch; 3];
    let generator = AugmentConfig::default().generator_patch(size);
    println!(
        "Augmentation of {} x 1 x {}^3 patches (generator patches {:?}); {} thread(s) each side, {} cores",
        o.batch,
        o.patch,
        generator,
        o.threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let big: Vec<Patch> = (0..o.batch).map(|i| test_patch(generator, i)).collect();
    let small: Vec<Patch> = (0..o.batch).map(|i| test_patch(size, i)).collect();
    println!(
        "{:<12} {:>12} {:>12} {:>12}  (detlab, {} batches)",
        "case", "mean ms", "median ms", "CPU ms", o.batches
    );
    let cpu = || super::cpu_seconds(super::CpuClock::Process).unwrap_or(f64::NAN) * 1e3;
    // Per case: mean wall ms and mean CPU ms per batch.
    let mut detlab: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (name, config) in cases() {
        if o.case.as_deref().is_some_and(|c| c != name) {
            continue;
        }
        let source = if name == "intensity" { &small } else { &big };
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let mut cpu_total = 0.0;
        let times: Vec<f64> = (0..o.batches)
            .map(|_| {
                let mut batch = source.clone();
                let (start, cpu_start) = (Instant::now(), cpu());
                pool.install(|| {
                    augment_batch(&mut batch, &config, size, BoxConvention::HalfOpen, &mut rng)
                });
                let elapsed = start.elapsed().as_secs_f64() * 1e3;
                cpu_total += cpu() - cpu_start;
                std::hint::black_box(batch);
                elapsed
            })
            .collect();
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let cpu_mean = cpu_total / times.len() as f64;
        let med = median(&times);
        println!("{name:<12} {mean:>12.1} {med:>12.1} {cpu_mean:>12.1}");
        detlab.insert(name, (mean, cpu_mean));
    }
    let Some(python) = &o.python else {
        return 0;
    };
    let threads = o.threads.to_string();
    let output = match Command::new(python)
        .arg(&o.script)
        .args(["--patch", &o.patch.to_string()])
        .args(["--generator", &generator[0].to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--batches", &o.python_batches.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .envs(super::PYTHON_THREAD_VARIABLES.map(|k| (k, threads.as_str())))
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            eprintln!(
                "error: bench augment: {} failed: {}",
                o.script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            return 1;
        }
        Err(e) => {
            eprintln!(
                "error: bench augment: cannot run '{python}': {e} (numpy, scipy and batchgenerators are needed)"
            );
            return 1;
        }
    };
    println!(
        "\n{:<12} {:>12} {:>12} {:>12} {:>10} {:>10}  (batchgenerators, {} batches)",
        "case", "mean ms", "median ms", "CPU ms", "× wall", "× CPU", o.python_batches
    );
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [
                "case",
                name,
                "mean_ms",
                mean,
                "median_ms",
                med,
                "cpu_ms",
                cpu_ms,
                ..,
            ] => {
                let (Ok(mean), Ok(med), Ok(cpu_ms)) = (
                    mean.parse::<f64>(),
                    med.parse::<f64>(),
                    cpu_ms.parse::<f64>(),
                ) else {
                    println!("{line}");
                    continue;
                };
                let (wall, cpu) =
                    detlab
                        .get(name)
                        .map_or((String::from("-"), String::from("-")), |d| {
                            (
                                format!("{:.1}×", mean / d.0),
                                format!("{:.1}×", cpu_ms / d.1),
                            )
                        });
                println!("{name:<12} {mean:>12.1} {med:>12.1} {cpu_ms:>12.1} {wall:>10} {cpu:>10}");
            }
            _ => println!("{line}"),
        }
    }
    println!("(×: batchgenerators' mean wall / CPU time per batch over detlab's)");
    0
}
