//! Crash safety: runs of the `detlab` binary are killed with SIGKILL at random points and in
//! the middle of a checkpoint write (the test hook `DETLAB_TEST_STALL_WRITE` in
//! `detlab::util::fault` stalls one write half-way). After each kill:
//! - `last` is a whole checkpoint, either the previous one or the new one (its history is a
//!   prefix of the uninterrupted run's, bit for bit);
//! - `resume: true` continues it;
//! - the resumed loss curve equals the uninterrupted run's from the resumed iteration on.
//!
//! The same for pre-training and for the preprocessing cache (a killed preprocessing leaves no
//! manifest, so no later run trusts a half-written case). A full disk (`DETLAB_TEST_WRITE_LIMIT`)
//! fails with a clear error and leaves the earlier checkpoint intact.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use detlab::data::PreprocessedDataset;

const DATA: &str = r#"
let ds = synthetic_dataset(ARGS.dir + "/data", #{cases: 2, test_cases: 0, seed: 1, shape: [24, 24, 24]});
preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
"#;

/// 12 iterations, `last` after every 2 (one epoch), validation only at the end.
const TRAIN: &str = r#"
let ds = dataset(ARGS.dir + "/data");
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 8});
train(model, pre, #{lr: 0.01, epochs: 6, iters_per_epoch: 2, batch: 1, patch: [16, 16, 16],
    val_patches: 1, validate_every: 100, seed: 3, out: ARGS.dir + "/" + ARGS.out,
    resume: ARGS.resume, overwrite: !ARGS.resume});
"#;

/// 8 iterations, `last` after every 2.
const PRETRAIN: &str = r#"
pretrain(backbone("resenc_tiny"), synthetic_stream(#{seed: 2}), #{
    method: "mae", patch: [16, 16, 16], batch: 1, iterations: 8, validate_every: 2,
    figure_every: 0, seed: 4, out: ARGS.dir + "/" + ARGS.out,
    resume: ARGS.resume, overwrite: !ARGS.resume});
"#;

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn command(dir: &Path, file: &Path, out: &str, resume: bool) -> Command {
    let mut cmd = Command::new(common::detlab());
    cmd.arg("run")
        .arg(file)
        .args(["--set", &format!("dir={}", dir.display())])
        .args(["--set", &format!("out={out}")])
        .args(["--set", &format!("resume={resume}")])
        .env("RAYON_NUM_THREADS", "2")
        .current_dir(dir);
    cmd
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap();
    common::expect_ok(&out, what);
}

/// Start `cmd` and SIGKILL it when `stalled` is seen on stderr (a stalled write), or after
/// `after` if given; returns whether it was killed (false: it finished first).
fn kill_during(mut cmd: Command, after: Option<Duration>) -> bool {
    let mut child: Child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("detlab-test: stalled writing") {
                let _ = tx.send(());
            }
        }
    });
    let started = Instant::now();
    loop {
        if rx.try_recv().is_ok() || after.is_some_and(|a| started.elapsed() >= a) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the run failed before the kill: {status}");
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the run hangs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Losses of every iteration in a checkpoint's state file (bit patterns, for exact equality).
fn losses(state_file: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(state_file).unwrap();
    let v = detlab::metrics::io::parse_json_exact(&text).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap().to_bits())
        .collect()
}

/// A tiny deterministic generator for the kill times (printed, so a failure can be replayed).
fn kill_times(seed: u64, n: usize, range_ms: std::ops::Range<u64>) -> Vec<u64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let span = (range_ms.end - range_ms.start).max(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            range_ms.start + (x >> 33) % span
        })
        .collect()
}

/// Check `last` after a kill: absent, or whole with a history that is a prefix of `reference`
/// and a weights file that loads into the saved model. Returns the iteration it holds.
fn check_last_is_whole(run: &Path, reference: &[u64], marker: &str) -> Option<usize> {
    let last = run.join("last");
    let dir = match detlab::train::checkpoint::locate_checkpoint_marked(&last, marker) {
        Ok(dir) => dir,
        Err(_) => {
            assert!(!last.exists(), "{} exists without {marker}", last.display());
            return None;
        }
    };
    let history = losses(&dir.join(marker));
    assert!(
        reference.starts_with(&history),
        "{}: the history is not a prefix of the uninterrupted run's",
        dir.display()
    );
    let weights = std::fs::read(dir.join("weights.mpk")).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(marker)).unwrap()).unwrap();
    assert!(!weights.is_empty());
    if marker == "state.json" {
        // The weights load into the network the checkpoint describes: the file is whole.
        let config: detlab::nn::DetectorConfig =
            serde_json::from_value(state["model_config"]["detector"].clone()).unwrap();
        let device = detlab::nn::device("cpu").unwrap();
        #[allow(irrefutable_let_patterns)]
        let detlab::nn::DetectorConfig::RetinaUnet(c) = config else {
            panic!("the test trains a Retina U-Net");
        };
        let model = c.init::<detlab::nn::InferenceBackend>(&device).unwrap();
        detlab::nn::load_weights(model, &dir.join("weights.mpk"), &device)
            .unwrap_or_else(|e| panic!("a half-written checkpoint: {e}"));
        assert!(dir.join("optimizer.mpk").is_file());
    } else {
        let (_, s) = detlab::pretrain::read_state(&dir).unwrap();
        let device = detlab::nn::device("cpu").unwrap();
        detlab::pretrain::load_pretrained::<detlab::nn::InferenceBackend>(&dir, &device)
            .unwrap_or_else(|e| panic!("a half-written checkpoint: {e}"));
        assert_eq!(s.iteration, history.len());
    }
    Some(history.len())
}

/// Kill `file`'s run at the stalled writes and random times; each time check `last`, resume,
/// and compare the finished run's losses with the uninterrupted run's.
fn kill_and_resume(
    dir: &Path,
    file: &Path,
    marker: &str,
    stalls: &[&str],
    kills: usize,
    seed: u64,
) {
    let started = Instant::now();
    run_ok(
        command(dir, file, "reference", false),
        "the uninterrupted run",
    );
    // Random kills fall inside the uninterrupted run's duration (its middle 80 %), so they hit
    // a running process (times drawn up to a fixed bound mostly landed after the run had
    // finished).
    let duration_ms = started.elapsed().as_millis() as u64;
    let times = kill_times(seed, kills, duration_ms / 10..duration_ms * 9 / 10);
    eprintln!("kill times (seed {seed}, run of {duration_ms} ms): {times:?} ms");
    let reference = losses(&dir.join("reference/last").join(marker));
    let mut kills: Vec<(Option<&str>, Option<u64>)> =
        stalls.iter().map(|s| (Some(*s), None)).collect();
    kills.extend(times.iter().map(|t| (None, Some(*t))));
    let mut random_hits = 0;
    for (i, (stall, after_ms)) in kills.into_iter().enumerate() {
        let out = format!("killed{i}");
        let mut cmd = command(dir, file, &out, false);
        if let Some(s) = stall {
            cmd.env("DETLAB_TEST_STALL_WRITE", s);
        }
        let killed = kill_during(cmd, after_ms.map(Duration::from_millis));
        let run = dir.join(&out);
        let held = check_last_is_whole(&run, &reference, marker);
        eprintln!(
            "kill {i} ({stall:?}, {after_ms:?} ms): killed {killed}, last holds {held:?} iterations"
        );
        if stall.is_none() && killed {
            random_hits += 1;
        }
        if let Some(s) = stall {
            // The stalled write never finished: `last` is the checkpoint before it.
            let k: usize = s.rsplit(':').next().unwrap().parse().unwrap();
            assert!(killed, "{s}: the run finished without stalling");
            assert_eq!(held, if k > 1 { Some(2 * (k - 1)) } else { None }, "{s}");
        }
        if held.is_none() {
            continue;
        }
        run_ok(command(dir, file, &out, true), "the resumed run");
        let resumed = losses(&run.join("last").join(marker));
        assert_eq!(
            resumed, reference,
            "kill {i}: the resumed run's losses differ from the uninterrupted run's"
        );
    }
    // Random kills must mostly hit the run, or the test checks little; the bound is loose
    // because the tests run in parallel and a run's duration varies with the load.
    assert!(
        times.len() < 5 || 4 * random_hits >= times.len(),
        "only {random_hits} of {} random kills hit a running process",
        times.len()
    );
}

/// Train in `dir` (after setting up the data) and kill the run at `stalls` and `kills` random
/// times drawn from `seed`.
fn kill_training(stalls: &[&str], kills: usize, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_ok(
        command(dir, &script(dir, "data.rhai", DATA), "-", false),
        "the data set-up",
    );
    let file = script(dir, "train.rhai", TRAIN);
    kill_and_resume(dir, &file, "state.json", stalls, kills, seed);
}

fn kill_pretraining(stalls: &[&str], kills: usize, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = script(dir, "pretrain.rhai", PRETRAIN);
    kill_and_resume(dir, &file, "pretrain.json", stalls, kills, seed);
}

// One kill in the middle of a checkpoint write and one at a random time per kind of run, then
// every checkpoint file's write and 10 random times (about 30 s in all).

#[test]
fn a_killed_training_run_keeps_a_whole_checkpoint_and_resumes_exactly() {
    kill_training(&["weights.mpk:3"], 1, 14);
}

#[test]
fn a_training_run_killed_at_many_points_keeps_a_whole_checkpoint_and_resumes_exactly() {
    kill_training(
        &["state.json:2", "weights.mpk:3", "optimizer.mpk:4"],
        10,
        1414,
    );
}

// pretrain.json is written for `best` and `last` at each validation: the 2nd optimizer.mpk is
// the first checkpoint's `last` or the second's `best`.
#[test]
fn a_killed_pretraining_run_keeps_a_whole_checkpoint_and_resumes_exactly() {
    kill_pretraining(&["optimizer.mpk:2"], 1, 7);
}

#[test]
fn a_pretraining_run_killed_at_many_points_keeps_a_whole_checkpoint_and_resumes_exactly() {
    kill_pretraining(&["optimizer.mpk:2"], 10, 77);
}

#[test]
fn a_killed_preprocessing_leaves_nothing_a_later_run_trusts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = script(dir, "data.rhai", DATA);
    run_ok(command(dir, &data, "-", false), "the data set-up");
    let cache_root = dir.join("data/preprocessed");
    let cache = std::fs::read_dir(&cache_root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let complete: Vec<(String, Vec<u8>)> = files(&cache);
    // Preprocess again into an emptied cache, killed while the second case is written.
    std::fs::remove_dir_all(&cache_root).unwrap();
    let mut cmd = command(dir, &data, "-", false);
    cmd.env("DETLAB_TEST_STALL_WRITE", "case0001_image.npy:1");
    assert!(
        kill_during(cmd, None),
        "the preprocessing finished without stalling"
    );
    assert!(
        !cache.join("manifest.json").exists() && PreprocessedDataset::open(&cache).is_err(),
        "a killed preprocessing left a manifest that claims a complete cache"
    );
    // The next run rebuilds what is missing and gives exactly the uninterrupted cache.
    run_ok(
        command(dir, &data, "-", false),
        "the preprocessing after the kill",
    );
    // A write killed mid-way may leave its hidden temporary file (`.NAME.tmp-PID-N`) behind:
    // never read as a case, so harmless, and not compared here.
    let rebuilt: Vec<_> = files(&cache)
        .into_iter()
        .filter(|f| !(f.0.starts_with('.') && f.0.contains(".tmp-")))
        .collect();
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&rebuilt), names(&complete));
    for ((name, a), (_, b)) in rebuilt.iter().zip(&complete) {
        if name != "manifest.json" {
            assert!(a == b, "{name} differs from the uninterrupted run's");
        }
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_fails_with_a_clear_error_and_keeps_the_earlier_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_ok(
        command(dir, &script(dir, "data.rhai", DATA), "-", false),
        "the data set-up",
    );
    let file = script(dir, "train.rhai", TRAIN);
    run_ok(
        command(dir, &file, "reference", false),
        "the uninterrupted run",
    );
    let reference = losses(&dir.join("reference/last/state.json"));
    // Room for the first checkpoint and half of the second.
    let checkpoint: u64 = std::fs::read_dir(dir.join("reference/last"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let mut cmd = command(dir, &file, "full", false);
    cmd.env("DETLAB_TEST_WRITE_LIMIT", (checkpoint * 3 / 2).to_string());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a full disk must fail the run");
    assert!(
        // The file named is the one being written: inside the checkpoint's temporary folder
        // (`full/.last.tmp-PID/…`), which is never renamed to `last` once a write failed.
        stderr.contains("No space left on device") && stderr.contains("full/.last.tmp-"),
        "the error must say the disk is full and name the file:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        check_last_is_whole(&dir.join("full"), &reference, "state.json"),
        Some(2)
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("full"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    // The run resumes from the intact checkpoint once there is space again.
    run_ok(command(dir, &file, "full", true), "the resumed run");
    assert_eq!(losses(&dir.join("full/last/state.json")), reference);
}
