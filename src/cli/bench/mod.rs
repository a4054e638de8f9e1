//! `detlab bench NAME [ARGS]`: timing workloads. Timing targets live here, never in tests.

pub mod augment;
pub mod backends;
pub mod conv;
pub mod eval;
pub mod genesis;
pub mod infer;
pub mod peak;
pub mod preprocess;
pub mod pretrain;
pub mod resample;
pub mod train_step;

/// Environment variables that cap a Python reference's OpenMP / BLAS threads; a benchmark sets
/// them to its `--threads` so both sides run on the same number of cores.
pub const PYTHON_THREAD_VARIABLES: [&str; 4] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// A rayon pool of `threads` threads for a benchmark's timed detlab side (`--threads`).
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))
}

pub use detlab::util::{CpuClock, cpu_seconds};

/// A memory figure of this process in MiB from /proc/self/status (`key` such as "VmHWM:", the
/// peak resident set), `None` where it cannot be read (not Linux).
pub fn process_memory_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident set size of this process in MiB (`VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    process_memory_mib("VmHWM:")
}

/// The median of timings (numpy's, via the one percentile of detlab).
pub fn median(times: &[f64]) -> f64 {
    detlab::util::percentile(times, 50.0)
}

/// The registered benchmarks: (name, one-line description).
pub const BENCHMARKS: &[(&str, &str)] = &[
    (
        "augment",
        "nnDetection's BaseMoreAug on 4 x 128^3 patches vs batchgenerators, one thread each; --patch, --batches, --case",
    ),
    (
        "backends",
        "CPU backends (flex with detlab's or burn's conv3d, ndarray) on a small 3D conv net",
    ),
    (
        "conv",
        "every CPU conv3d kernel (direct AVX-512 / AVX2, im2col + gemm) on the quickstart's conv shapes or (--set resenc_l) a ResEnc-L step's, in GFLOP/s; --threads N, --repeat N, --set default|resenc_l, --print-shapes (the set as JSON)",
    ),
    (
        "eval",
        "detlab eval vs a numpy reimplementation of nnDetection's evaluator (1,000 cases)",
    ),
    (
        "genesis",
        "Models Genesis corruption of a 160^3 patch vs a numpy reimplementation of the original loops; --size, --threads (1, both sides), --samples",
    ),
    (
        "preprocess",
        "load + resample to 1 mm + CT-normalise a 512x512x300 CT vs nibabel + scipy + numpy",
    ),
    (
        "resample",
        "cubic resampling of a 512x512x300 CT to 1 mm vs skimage resize(order=3) as nnDetection calls it; --threads (1, both sides), --repeat, --python",
    ),
    (
        "pretrain",
        "one MAE / S3D pre-training step (batch 2, 32^3 and 64^3, tiny or ResEnc-L widths); --widths, --patch, --threads",
    ),
    (
        "train-step",
        "one detector training step (Retina U-Net: 2 x 1 x 64^3, widths 16-128, SGD); --detector retina_unet|def_detr, --preset bench|quickstart|nndetection, --encoder retunet|resenc, --device, --threads N, --profile",
    ),
    (
        "infer-memory",
        "peak RSS and time of sliding-window inference of a 256^3 volume (vs 128^3), tiny Retina U-Net",
    ),
];

/// Run the benchmark `name` with its extra arguments; returns the exit code.
pub fn run(name: &str, args: &[String]) -> i32 {
    let _ = args;
    match name {
        "augment" => augment::run(args),
        "backends" => backends::run(args),
        "conv" => conv::run(args),
        "eval" => eval::run(args),
        "genesis" => genesis::run(args),
        "preprocess" => preprocess::run(args),
        "pretrain" => pretrain::run(args),
        "resample" => resample::run(args),
        "train-step" => train_step::run(args),
        "infer-memory" => infer::run(args),
        "list" => {
            for (n, d) in BENCHMARKS {
                println!("{n:<14} {d}");
            }
            0
        }
        other => {
            eprintln!(
                "error: unknown benchmark '{other}'; `detlab bench list` shows the available ones"
            );
            2
        }
    }
}
