//! Small shared helpers that do not belong to one domain: atomic file writes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: write a temporary sibling file, sync it, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
