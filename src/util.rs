//! Small shared helpers that do not belong to one domain: atomic file writes.

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
