//! Helpers shared by the end-to-end tests: run the detlab binary on scripts, and set up the
//! real test data and the pinned Python checker (`.ci/setup-data.sh`).

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What to run by hand when the test data set-up fails.
pub const SETUP_DATA: &str = "run `bash .ci/setup-data.sh` from the repository root (needs \
network access to deb.debian.org and pypi.org, and root or sudo for apt-get; it installs Debian \
mricron-data and insighttoolkit5-examples and creates .venv with pinned nibabel, dipy, scipy, \
numpy, scikit-image)";

/// The path of the built `detlab` binary.
pub fn detlab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_detlab"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `detlab run FILE --set k=v ...` in `cwd` with two rayon threads (the CI machine's two
/// cores); returns the output.
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

/// Set up the real test data once and return the pinned venv's python (`<repo>/.venv/bin/python`).
///
/// Runs `.ci/setup-data.sh`, which installs nothing when everything is in place (a fraction of
/// a second) and otherwise installs the Debian data packages and builds the venv. Test threads
/// of one binary share the result through a `OnceLock`; test binaries running at the same time
/// are serialised with a lock file, so only one of them installs and the others then find
/// everything in place. A failed set-up (offline, no root) fails the calling test with the
/// script's output and the command to run; it never skips.
pub fn setup_data() -> PathBuf {
    static RESULT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match RESULT.get_or_init(run_setup_data) {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn run_setup_data() -> Result<PathBuf, String> {
    let root = root();
    let script = root.join(".ci/setup-data.sh");
    // CARGO_TARGET_TMPDIR is shared by every test binary of this target dir.
    let lock_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let lock_path = lock_dir.join("setup-data.lock");
    std::fs::create_dir_all(&lock_dir)
        .map_err(|e| format!("cannot create {}: {e}", lock_dir.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot run `bash {}` ({e}): {SETUP_DATA}", script.display()))?;
    drop(lock);
    if !out.status.success() {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // apt and pip are verbose; the cause is at the end.
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(format!(
            "the test data set-up `bash {}` failed ({}):\n{tail}\n\n{SETUP_DATA}",
            script.display(),
            out.status
        ));
    }
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "`bash {}` succeeded but {} does not exist: {SETUP_DATA}",
            script.display(),
            python.display()
        ));
    }
    Ok(python)
}
