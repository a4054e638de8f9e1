//! Small shared helpers that do not belong to one domain: atomic file writes, CPU clocks,
//! percentiles and the vector instruction set.

pub mod isa;

use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: write a temporary sibling file, sync it, rename it over
/// `path`, then sync the folder so that the rename itself survives a crash or power loss.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fault::write_all(&mut f, path, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keep freed buffers of any size in the process's one heap (glibc only; the allocator's own
/// environment variables, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX` and friends, still win,
/// and `DETLAB_MALLOC_TUNING=0` leaves glibc's defaults).
///
/// Why: glibc serves blocks above its mmap threshold (at most 32 MB, adapting) with a fresh
/// `mmap` and returns them with `munmap`, so a training step can re-fault and re-zero the
/// pages of its largest tensors (page faults, the kernel's locks and `memset` were 12 % of a
/// pre-training step's profile). With the threshold at 1 GB and trimming above 2 GB, freed
/// buffers are reused. Measured back to back, interleaved, six runs each (2026-12-07): MAE at
/// 32³ median 152 → 142 ms; the quickstart's step unchanged (672 vs 668 ms, four runs); the
/// peak RSS the same.
///
/// One arena: commands run on rayon workers ([`run_on_worker`]), and glibc gives other
/// threads than the main one arenas of 64 MB heaps, which serve a larger tensor from a fresh
/// `mmap` every time whatever the threshold. Through the main arena a ResEnc-L MAE step at
/// 64³ took 11.6 s against 13.0 (two runs each, interleaved), with a peak RSS of 2.2 GB
/// against 2.4.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
            "MALLOC_ARENA_MAX",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
        let off = matches!(
            std::env::var("DETLAB_MALLOC_TUNING")
                .as_deref()
                .map(str::trim),
            Ok("0" | "off" | "false")
        );
        if user_set || off {
            return;
        }
        // SAFETY: `mallopt` only changes allocator parameters; called once at start-up,
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Stack size of rayon's worker threads: commands run on one of them ([`run_on_worker`]), and
/// Rhai's evaluator may recurse as deep as a main thread's 8 MiB allows.
pub const WORKER_STACK_BYTES: usize = 16 << 20;

/// Build rayon's global pool with `threads` threads (`None`: rayon's default, `RAYON_NUM_THREADS`
/// or the number of cores) and worker stacks of [`WORKER_STACK_BYTES`]. Call it once, before any
/// parallel work; a second call fails.
pub fn init_thread_pool(threads: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    let mut builder = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK_BYTES);
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder.build_global()
}

/// Run `work` on a worker thread of rayon's global pool and wait for its result (panics
/// propagate).
///
/// Why: a parallel loop started outside the pool hands its work to the workers and sleeps
/// until they finish, so every op of a training step paid two thread wake-ups, and at one
/// thread the step ran on two OS threads taking turns (rayon's wake-ups and futex waits were 8 %
/// of a pre-training step's profile). Started on a worker, the loop runs on the calling thread
/// as well, and at one thread it runs inline, as PyTorch's OpenMP loops do.
pub fn run_on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    // `scope` called outside the pool runs its closure on a worker and blocks until it ends.
    rayon::scope(|_| work())
}

/// Sync a folder, so that files created or renamed in it are durable (`""` is the current one).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Fault injection for the crash-safety tests (`tests/crash_safety.rs`), off unless one of
/// these environment variables is set (read once per process):
/// - `DETLAB_TEST_STALL_WRITE=NAME:K` — the K-th atomic write (from 1) of a file named `NAME`
///   writes half its bytes, prints `detlab-test: stalled writing PATH` to stderr and sleeps,
///   so that a test can kill the process in the middle of that write;
/// - `DETLAB_TEST_WRITE_LIMIT=N` — atomic writes fail with "No space left on device" once
///   `N` bytes in total have been written (a full disk).
pub mod fault {
    use std::io::Write;
    use std::path::Path;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Faults {
        stall: Option<(String, u64)>,
        limit: Option<u64>,
    }

    static FAULTS: OnceLock<Faults> = OnceLock::new();
    static STALL_SEEN: AtomicU64 = AtomicU64::new(0);
    static WRITTEN: AtomicU64 = AtomicU64::new(0);

    fn faults() -> &'static Faults {
        FAULTS.get_or_init(|| Faults {
            stall: std::env::var("DETLAB_TEST_STALL_WRITE").ok().and_then(|v| {
                let (name, k) = v.rsplit_once(':')?;
                Some((name.to_string(), k.parse().ok()?))
            }),
            limit: std::env::var("DETLAB_TEST_WRITE_LIMIT")
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }

    /// `f.write_all(bytes)` for the file that will become `path`, with the faults above.
    pub(crate) fn write_all(
        f: &mut std::fs::File,
        path: &Path,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let faults = faults();
        if let Some((name, k)) = &faults.stall
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == name.as_str())
            && STALL_SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *k
        {
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            eprintln!("detlab-test: stalled writing {}", path.display());
            std::thread::sleep(std::time::Duration::from_secs(600));
        }
        if let Some(limit) = faults.limit {
            let before = WRITTEN.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            if before + bytes.len() as u64 > limit {
                let fits = limit.saturating_sub(before) as usize;
                f.write_all(&bytes[..fits.min(bytes.len())])?;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device (DETLAB_TEST_WRITE_LIMIT)",
                ));
            }
        }
        f.write_all(bytes)
    }
}

/// A temporary path next to `path` (same folder, so a rename is atomic), unique per process.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        ".{}.tmp-{}-{}",
        name,
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    path.with_file_name(unique)
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which CPU-time clock [`cpu_seconds`] reads.
#[derive(Clone, Copy, Debug)]
pub enum CpuClock {
    /// Every thread of this process.
    Process,
    /// The calling thread only.
    Thread,
}

/// CPU seconds used so far on `clock` (`None` off Linux). Unlike wall time, other processes on
/// a loaded machine do not inflate it, so a side's CPU time is its work.
pub fn cpu_seconds(clock: CpuClock) -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn clock_gettime(clock: i32, time: *mut [i64; 2]) -> i32;
        }
        let id = match clock {
            CpuClock::Process => 2, // CLOCK_PROCESS_CPUTIME_ID
            CpuClock::Thread => 3,  // CLOCK_THREAD_CPUTIME_ID
        };
        let mut t = [0i64; 2];
        // SAFETY: `t` is a valid timespec (two 64-bit fields on x86-64 Linux).
        if unsafe { clock_gettime(id, &mut t) } == 0 {
            return Some(t[0] as f64 + t[1] as f64 * 1e-9);
        }
    }
    let _ = clock;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }
}

/// Cooperative interruption (Ctrl-C): the front end sets the flag, long computations poll it.
///
/// Domain code (training loops, preprocessing) calls [`interrupt::check`] between units of
/// work so that a Ctrl-C stops a long native call cleanly, not only the script around it.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    /// The error returned by [`check`] once an interruption was requested.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("interrupted by Ctrl-C")]
    pub struct Interrupted;

    /// Ask running computations to stop at their next check point.
    pub fn request() {
        REQUESTED.store(true, Ordering::SeqCst);
    }

    /// Whether an interruption has been requested and not yet cleared.
    pub fn is_requested() -> bool {
        REQUESTED.load(Ordering::Relaxed)
    }

    /// Clear a pending request (the REPL does this after each command).
    pub fn clear() {
        REQUESTED.store(false, Ordering::SeqCst);
    }

    /// Return `Err(Interrupted)` if an interruption was requested.
    pub fn check() -> Result<(), Interrupted> {
        if is_requested() {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

/// `np.percentile(values, q)` with numpy's default linear method, of f32 or f64 values in any
/// order (`q` in 0–100, clamped): the one percentile of detlab.
///
/// Sorted input is read in place; otherwise a copy is partially sorted (O(n), total order, so
/// NaN sorts last). Interpolates in f64 with numpy's virtual index `n·q + (1 − q) − 1` and its
/// `_lerp` (from the upper end when the fraction is ≥ 0.5). NaN for an empty slice.
pub fn percentile<T: Copy + Into<f64>>(values: &[T], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let q = (q / 100.0).clamp(0.0, 1.0);
    let virtual_index = (n as f64 * q + (1.0 - q)) - 1.0;
    let lo = (virtual_index.floor().max(0.0) as usize).min(n - 1);
    let t = (virtual_index - lo as f64).max(0.0);
    let value = |v: &T| -> f64 { (*v).into() };
    let (a, b) = if values.is_sorted_by(|x, y| value(x) <= value(y)) {
        (value(&values[lo]), value(&values[(lo + 1).min(n - 1)]))
    } else {
        let mut copy: Vec<f64> = values.iter().map(value).collect();
        let (_, a, upper) = copy.select_nth_unstable_by(lo, f64::total_cmp);
        let a = *a;
        (a, upper.iter().copied().min_by(f64::total_cmp).unwrap_or(a))
    };
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

#[cfg(test)]
mod percentile_tests {
    use super::percentile;

    #[test]
    fn percentile_matches_numpy_for_sorted_unsorted_f32_and_f64() {
        // np.percentile([3, 1, 4, 1, 5, 9, 2, 6], q) for q = 0, 0.5, 25, 50, 99.5, 100.
        let v = [3.0f64, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        let single: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        for (q, e) in [
            (0.0, 1.0),
            (0.5, 1.0),
            (25.0, 1.75),
            (50.0, 3.5),
            (99.5, 8.895),
            (100.0, 9.0),
        ] {
            for got in [
                percentile(&v, q),
                percentile(&sorted, q),
                percentile(&single, q),
            ] {
                assert!((got - e).abs() < 1e-12, "q={q}: {got} vs numpy {e}");
            }
        }
        // np.percentile([4.0, 1.0, 3.0, 2.0], 2.5) = 1.075; one value; empty.
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 2.5) - 1.075).abs() < 1e-15);
        assert_eq!(percentile(&[7.0f32], 30.0), 7.0);
        assert!(percentile::<f64>(&[], 50.0).is_nan());
    }
}
