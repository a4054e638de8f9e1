//! `detlab bench genesis`: Models Genesis corruption ([`detlab::pretrain::genesis::corrupt`]) of
//! one patch against a numpy reimplementation of the original transforms with their Python
//! loops (`benches/genesis_reference.py`, as nnssl runs them), in one run, on the same smooth
//! test patch in [0, 1].
//!
//! Cases (both sides): `reference` (the reference probabilities), `all` (shuffling, the
//! non-linear map and painting always on), and one case per transform. The reference's shuffle
//! runs nnssl's fixed 10,000 iterations (`-nnssl`) and the count scaled to the patch volume
//! (`-scaled`, detlab's default; equal at 160³). detlab's full cases also window the patch to
//! [0, 1] by its 0.5/99.5 percentiles (which the reference does not do); `rescale` times that
//! alone, and the per-transform cases leave it out. detlab's cases reuse one sample's arrays
//! ([`corrupt_into`], as a data loader recycling its buffers would); `reference-fresh` is the
//! reference case with two fresh patch-sized arrays per sample ([`corrupt`]), like numpy.
//!
//! Options: `--size D,H,W` (160,160,160), `--samples N` (30, detlab), `--python-samples N` (10),
//! `--threads N` (1, both sides: numpy's transforms run on one core),
//! `--seed S` (0), `--python EXE` (python3), `--script PATH`, `--no-python` (detlab only),
//! `--cases A,B` (only these detlab cases, e.g. to profile one; implies `--no-python`).

use super::median;
use detlab::pretrain::genesis::{GenesisConfig, GenesisSample, corrupt, corrupt_into};
use ndarray::Array4;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

struct Options {
    size: [usize; 3],
    samples: usize,
    python_samples: usize,
    seed: u64,
    threads: usize,
    python: Option<String>,
    script: PathBuf,
    /// Only these detlab cases (empty: all).
    cases: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        size: [160, 160, 160],
        samples: 30,
        python_samples: 10,
        seed: 0,
        threads: 1,
        python: Some("python3".into()),
        script: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/genesis_reference.py"
        )),
        cases: Vec::new(),
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
            "--size" => {
                let v = value()?;
                let parts: Vec<usize> = v
                    .split(',')
                    .map(|p| p.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--size: '{v}' is not D,H,W"))?;
                if parts.len() != 3 || parts.contains(&0) {
                    return Err(format!(
                        "--size: '{v}' must be three positive numbers D,H,W"
                    ));
                }
                o.size = [parts[0], parts[1], parts[2]];
            }
            "--samples" => o.samples = count(value()?)?,
            "--python-samples" => o.python_samples = count(value()?)?,
            "--seed" => {
                let v = value()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a whole number"))?
            }
            "--threads" => o.threads = count(value()?)?,
            "--python" => o.python = Some(value()?),
            "--script" => o.script = PathBuf::from(value()?),
            "--no-python" => o.python = None,
            "--cases" => {
                let known: Vec<&str> = cases()
                    .iter()
                    .map(|c| c.0)
                    .chain(["reference-fresh"])
                    .collect();
                o.cases = value()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.cases.iter().find(|c| !known.contains(&c.as_str())) {
                    return Err(format!(
                        "--cases: unknown case '{bad}' (known: {})",
                        known.join(", ")
                    ));
                }
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(o)
}

/// The test patch of `benches/genesis_reference.py`: smooth, in [0, 1].
fn patch(size: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((1, size[0], size[1], size[2]), |(_, z, y, x)| {
        let (z, y, x) = (z as f64, y as f64, x as f64);
        (0.5 + 0.25 * ((0.11 * z).sin() * (0.07 * y).cos() + (0.05 * x + 0.3 * z).sin())) as f32
    })
}

/// Only the transforms `tweak` switches on, without the [0, 1] window.
fn only(tweak: impl FnOnce(&mut GenesisConfig)) -> GenesisConfig {
    let mut config = GenesisConfig {
        flip_probability: 0.0,
        local_shuffle_probability: 0.0,
        nonlinear_probability: 0.0,
        painting_probability: 0.0,
        rescale_to_unit: false,
        ..GenesisConfig::default()
    };
    tweak(&mut config);
    config
}

/// detlab's cases and the reference case each compares with.
fn cases() -> Vec<(&'static str, GenesisConfig, &'static str)> {
    let all = GenesisConfig {
        local_shuffle_probability: 1.0,
        nonlinear_probability: 1.0,
        painting_probability: 1.0,
        ..GenesisConfig::default()
    };
    vec![
        ("reference", GenesisConfig::default(), "reference"),
        ("all", all, "all"),
        ("rescale", only(|c| c.rescale_to_unit = true), ""),
        (
            "local-shuffle",
            only(|c| c.local_shuffle_probability = 1.0),
            "local-shuffle",
        ),
        (
            "nonlinear",
            only(|c| c.nonlinear_probability = 1.0),
            "nonlinear",
        ),
        (
            "outpainting",
            only(|c| {
                c.painting_probability = 1.0;
                c.outpainting_share = 1.0;
            }),
            "outpainting",
        ),
        (
            "inpainting",
            only(|c| {
                c.painting_probability = 1.0;
                c.outpainting_share = 0.0;
            }),
            "inpainting",
        ),
    ]
}

/// Run the benchmark; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: bench genesis: {e}");
            return 2;
        }
    };
    let pool = match super::thread_pool(o.threads) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: bench genesis: {e}");
            return 1;
        }
    };
    let image = patch(o.size);
    println!(
        "Models Genesis corruption of a 1 x {} x {} x {} patch; {} thread(s) each side, {} cores",
        o.size[0],
        o.size[1],
        o.size[2],
        o.threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut detlab: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    println!(
        "{:<16} {:>10} {:>10}  (detlab, {} samples)",
        "case", "median ms", "mean ms", o.samples
    );
    let mut measure = |name: &'static str, config: &GenesisConfig, reuse: bool| -> Option<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let mut sample = GenesisSample::default();
        // One untimed sample: the first allocations' page faults are not the transform's.
        if let Err(e) = corrupt_into(&image, config, &mut rng, &mut sample) {
            eprintln!("error: bench genesis: {e}");
            return None;
        }
        let times: Vec<f64> = (0..o.samples)
            .map(|_| {
                let start = Instant::now();
                if reuse {
                    corrupt_into(&image, config, &mut rng, &mut sample).expect("validated above");
                } else {
                    let fresh = corrupt(&image, config, &mut rng).expect("validated above");
                    std::hint::black_box(fresh);
                }
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let med = median(&times);
        println!("{name:<16} {med:>10.2} {mean:>10.2}");
        detlab.insert(name, (med, mean));
        Some(())
    };
    let wanted = |name: &str| o.cases.is_empty() || o.cases.iter().any(|c| c == name);
    let measured = pool.install(|| {
        cases()
            .into_iter()
            .filter(|(name, ..)| wanted(name))
            .all(|(name, config, _)| measure(name, &config, true).is_some())
            && (!wanted("reference-fresh")
                || measure("reference-fresh", &GenesisConfig::default(), false).is_some())
    });
    if !measured {
        return 1;
    }
    let Some(python) = o.python.as_ref().filter(|_| o.cases.is_empty()) else {
        return 0;
    };
    let [d, h, w] = o.size;
    let threads = o.threads.to_string();
    let output = match Command::new(python)
        .arg(&o.script)
        .args(["--size", &format!("{d},{h},{w}")])
        .args(["--samples", &o.python_samples.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .envs(super::PYTHON_THREAD_VARIABLES.map(|k| (k, threads.as_str())))
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            eprintln!(
                "error: bench genesis: {} failed: {}",
                o.script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            return 1;
        }
        Err(e) => {
            eprintln!("error: bench genesis: cannot run '{python}': {e} (numpy is needed)");
            return 1;
        }
    };
    // Lines `case NAME median_ms X mean_ms Y samples N`.
    let mut reference: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["case", name, "median_ms", med, "mean_ms", mean, ..] => {
                if let (Ok(med), Ok(mean)) = (med.parse(), mean.parse()) {
                    reference.insert(name.to_string(), (med, mean));
                }
            }
            _ => println!("{line}"),
        }
    }
    println!(
        "\n{:<24} {:>10} {:>10} {:>13} {:>11}  (reference, {} samples)",
        "reference case", "median ms", "mean ms", "× median", "× mean", o.python_samples
    );
    let pairs = cases()
        .into_iter()
        .map(|(name, _, reference_name)| (name, reference_name))
        .chain([("reference-fresh", "reference")]);
    for (name, reference_name) in pairs {
        if reference_name.is_empty() {
            continue;
        }
        let (d_med, d_mean) = detlab[name];
        for suffix in ["", "-nnssl", "-scaled"] {
            let key = format!("{reference_name}{suffix}");
            if let Some(&(r_med, r_mean)) = reference.get(&key) {
                println!(
                    "{key:<24} {r_med:>10.2} {r_mean:>10.2} {:>12.1}× {:>10.1}×  vs {name}",
                    r_med / d_med,
                    r_mean / d_mean
                );
            }
        }
    }
    println!("(×: reference time / detlab time of the matching detlab case)");
    0
}
