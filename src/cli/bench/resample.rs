//! `detlab bench resample`: cubic resampling of a CT-sized image to 1 mm ([`Volume::resample`]
//! with [`Interpolation::Cubic`]) against skimage's `resize(order=3, mode="edge",
//! anti_aliasing=False)` as nnDetection calls it (`benches/resample_reference.py`), on the same
//! array, in one run; also the maximum absolute difference between the two outputs.
//!
//! The input is `detlab bench preprocess`'s synthetic CT (default 512×512×300 voxels, spacing
//! 0.7×0.7×2.5 mm, int16 HU; generated once under `target/bench-data/`), resampled to 1 mm:
//! 750×358×358 voxels. Both sides run on `--threads` threads (1 by default: skimage's resize is
//! single-threaded; the Python side gets `OMP_NUM_THREADS` etc. set to the same number).
//! detlab's linear resampling is timed too, for scale. Each side reports its wall time and its
//! process CPU time; on a machine loaded by other processes the CPU times' ratio is the steadier
//! figure (with one thread the two agree on an idle machine).
//!
//! Options: `--size W,H,D` (512,512,300), `--spacing SW,SH,SD` (0.7,0.7,2.5), `--threads N`
//! (1), `--repeat R` (1; best time), `--python EXE` (python3; it needs scikit-image),
//! `--script PATH`, `--no-python`.

use detlab::volume::{Interpolation, read_nifti, resampled_shape};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

struct Options {
    size: [usize; 3],
    spacing: [f64; 3],
    repeat: usize,
    threads: usize,
    python: Option<String>,
    script: PathBuf,
}

fn triple<T: std::str::FromStr>(flag: &str, v: &str) -> Result<[T; 3], String> {
    let parts: Vec<T> = v
        .split(',')
        .map(|p| p.trim().parse::<T>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{flag}: '{v}' is not three comma-separated numbers"))?;
    parts
        .try_into()
        .map_err(|_| format!("{flag}: '{v}' needs exactly three numbers"))
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        size: [512, 512, 300],
        spacing: [0.7, 0.7, 2.5],
        repeat: 1,
        threads: 1,
        python: Some("python3".into()),
        script: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/resample_reference.py"
        )),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--size" => o.size = triple(flag, &value()?)?,
            "--spacing" => o.spacing = triple(flag, &value()?)?,
            "--repeat" => {
                let v = value()?;
                o.repeat = v
                    .parse::<usize>()
                    .map_err(|_| format!("--repeat: '{v}' is not a whole number"))?
                    .max(1);
            }
            "--threads" => {
                let v = value()?;
                o.threads = v
                    .parse::<usize>()
                    .map_err(|_| format!("--threads: '{v}' is not a whole number"))?
                    .max(1);
            }
            "--python" => o.python = Some(value()?),
            "--script" => o.script = PathBuf::from(value()?),
            "--no-python" => o.python = None,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if o.size.contains(&0) || o.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err("--size and --spacing must be positive".into());
    }
    Ok(o)
}

fn write_f32(path: &std::path::Path, values: impl Iterator<Item = f32>) -> Result<(), String> {
    let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    match bench(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: bench resample: {e}");
            1
        }
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let pool = super::thread_pool(o.threads)?;
    let [w, h, d] = o.size;
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-data"));
    let data = dir.join(format!("ct_{w}x{h}x{d}.nii.gz"));
    if !data.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!("generating {}", data.display());
        super::preprocess::generate(&data, o.size, o.spacing)?;
    }
    let volume = read_nifti(&data).map_err(|e| e.to_string())?;
    let target = [1.0, 1.0, 1.0];
    let out_shape = resampled_shape(volume.spatial_shape(), volume.spacing, target);
    let cpu = || super::cpu_seconds(super::CpuClock::Process).unwrap_or(f64::NAN);
    // Best wall and best CPU seconds over the repeats, and the last output.
    let time = |order: Interpolation| -> Result<(f64, f64, detlab::volume::Volume), String> {
        let (mut wall, mut cpu_best) = (f64::INFINITY, f64::INFINITY);
        let mut out = None;
        for _ in 0..o.repeat {
            let (t, c) = (Instant::now(), cpu());
            let r = pool
                .install(|| volume.resample(target, order))
                .map_err(|e| e.to_string())?;
            wall = wall.min(t.elapsed().as_secs_f64());
            cpu_best = cpu_best.min(cpu() - c);
            out = Some(r);
        }
        Ok((wall, cpu_best, out.expect("at least one repeat")))
    };
    let (linear_s, linear_cpu, _) = time(Interpolation::Linear)?;
    let (cubic_s, cubic_cpu, cubic) = time(Interpolation::Cubic)?;
    let [sd, sh, sw] = volume.spatial_shape();
    println!(
        "input {sd}x{sh}x{sw} (D,H,W) at {:?} mm -> {:?}; {} thread(s) each side, {} cores",
        volume.spacing,
        out_shape,
        pool.current_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("detlab cubic  {cubic_s:>8.2} s wall {cubic_cpu:>8.2} s CPU");
    println!("detlab linear {linear_s:>8.2} s wall {linear_cpu:>8.2} s CPU");
    let Some(python) = &o.python else {
        return Ok(());
    };
    let input_raw = dir.join("resample_input.f32");
    let output_raw = dir.join("resample_detlab.f32");
    write_f32(&input_raw, volume.data.iter().copied())?;
    write_f32(&output_raw, cubic.data.iter().copied())?;
    let shape_arg = |s: [usize; 3]| format!("{},{},{}", s[0], s[1], s[2]);
    let threads = o.threads.to_string();
    let out = Command::new(python)
        .arg(&o.script)
        .arg(&input_raw)
        .args(["--shape", &shape_arg([sd, sh, sw])])
        .args(["--out-shape", &shape_arg(out_shape)])
        .arg("--detlab")
        .arg(&output_raw)
        .args(["--repeat", &o.repeat.to_string()])
        .envs(super::PYTHON_THREAD_VARIABLES.map(|k| (k, threads.as_str())))
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let _ = std::fs::remove_file(&input_raw);
    let _ = std::fs::remove_file(&output_raw);
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            o.script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let reference: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("the reference printed no JSON ({e}): {text}"))?;
    let seconds = reference["seconds"].as_f64().unwrap_or(f64::NAN);
    let cpu_seconds = reference["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "skimage {} resize(order=3) {seconds:>8.2} s wall {cpu_seconds:>8.2} s CPU",
        reference["skimage"].as_str().unwrap_or("?"),
    );
    println!(
        "detlab cubic is {:.1}x faster (wall), {:.1}x faster (CPU)",
        seconds / cubic_s,
        cpu_seconds / cubic_cpu
    );
    println!(
        "max |detlab - skimage| = {:.3e} (mean {:.3e}) over a data range of {}",
        reference["max_abs_diff"].as_f64().unwrap_or(f64::NAN),
        reference["mean_abs_diff"].as_f64().unwrap_or(f64::NAN),
        reference["data_range"]
    );
    Ok(())
}
