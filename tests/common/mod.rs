//! Helpers shared by the end-to-end tests: run the detlab binary on scripts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of the built `detlab` binary.
pub fn detlab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_detlab"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `detlab run FILE --set k=v ...` in `cwd` with one rayon thread; returns the output.
pub fn run_script(file: &Path, sets: &[(&str, String)], cwd: &Path) -> Output {
    let mut cmd = Command::new(detlab());
    cmd.arg("run")
        .arg(file)
        .current_dir(cwd)
        .env("RAYON_NUM_THREADS", "2");
    for (k, v) in sets {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    cmd.output().expect("detlab runs")
}

/// Assert success and return stdout, printing both streams on failure.
pub fn expect_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}
