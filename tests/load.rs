//! Load: long runs do not leak. These take minutes, so they are ignored by `cargo test`; run
//! them with `cargo test --release --test load -- --ignored --nocapture` (the README's
//! "Guarantees" section has the figures).
//!
//! Memory is the resident set size of the `detlab` process, sampled from `/proc/PID/status`
//! every 50 ms; "flat" means the peak of the second half of the run (after warm-up) is within
//! 5 % of the peak of the first half.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sample the RSS of `child` until it exits; returns (seconds since start, kB) pairs.
fn sample(mut child: Child) -> Vec<(f64, u64)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the run failed: {status}");
            return samples;
        }
        if let Some(kb) = rss_kb(child.id()) {
            samples.push((started.elapsed().as_secs_f64(), kb));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak RSS of the two halves after `warmup` (a fraction of the run's duration).
fn halves(samples: &[(f64, u64)], warmup: f64) -> (u64, u64) {
    let end = samples.last().unwrap().0;
    let start = end * warmup;
    let mid = start + (end - start) / 2.0;
    let peak = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    };
    (peak(start, mid), peak(mid, end + 1.0))
}

fn run(dir: &Path, script: &str) -> Child {
    let file = dir.join("load.rhai");
    std::fs::write(&file, script).unwrap();
    Command::new(common::detlab())
        .arg("run")
        .arg(&file)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn report(what: &str, samples: &[(f64, u64)], warmup: f64) {
    let (first, second) = halves(samples, warmup);
    let seconds = samples.last().unwrap().0;
    eprintln!(
        "{what}: {seconds:.0} s, peak RSS after warm-up: first half {:.1} MB, second half {:.1} MB ({:+.1} %)",
        first as f64 / 1024.0,
        second as f64 / 1024.0,
        (second as f64 / first as f64 - 1.0) * 100.0
    );
    assert!(
        second as f64 <= first as f64 * 1.05,
        "{what}: memory grows: {first} kB then {second} kB"
    );
}

#[test]
#[ignore = "minutes: a 2,000-iteration training"]
fn a_long_training_run_has_flat_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let child = run(
        tmp.path(),
        r#"
let ds = synthetic_dataset("data", #{cases: 2, test_cases: 0, seed: 1, shape: [24, 24, 24]});
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 8});
train(model, pre, #{epochs: 20, iters_per_epoch: 100, batch: 1, patch: [16, 16, 16],
    val_patches: 1, validate_every: 5, out: "run", progress: false});
"#,
    );
    report("2,000 training iterations", &sample(child), 0.1);
}

#[test]
#[ignore = "minutes: predicting 100 cases"]
fn predicting_100_cases_has_flat_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let child = run(
        tmp.path(),
        r#"
let ds = synthetic_dataset("data", #{cases: 2, test_cases: 100, seed: 1, shape: [24, 24, 24], min_lesions: 0});
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0], include_test: true});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 8});
let preds = predict(model, pre, #{split: "test", out: "pred", patch_size: [16, 16, 16]});
"#,
    );
    // Generating and preprocessing the data is the first part of the run; the halves compare
    // the first and the last 50 cases closely enough with a 30 % warm-up.
    report("predicting 100 cases", &sample(child), 0.3);
}

#[test]
#[ignore = "a minute: 1,000 REPL commands"]
fn the_repl_holds_1000_commands_with_flat_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let cmd = format!(
        "env DETLAB_HISTORY={} TERM=xterm {}",
        tmp.path().join("history").display(),
        common::detlab().display()
    );
    let mut p = rexpect::spawn(&cmd, Some(30_000)).expect("spawn detlab");
    p.exp_string("help() lists primitives").unwrap();
    let pid = p.process.child_pid.as_raw() as u32;
    let commands = [
        "let v = [1, 2, 3].map(|x| x * 2);",
        "undefined_function(1)",
        "let m = #{a: 1}; m.b",
        "let big = range(0, 10000).map(|x| x * x);",
        "help(\"train\")",
        "1 / 0",
    ];
    let mut rss = Vec::new();
    for i in 0..1000 {
        p.exp_string("detlab> ").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        if i % 100 == 50 {
            // Ctrl-C during a long call.
            p.send_line("let n = 0; loop { n += 1; }").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            p.send_control('c').unwrap();
            p.exp_string("interrupted").unwrap();
        } else {
            p.send_line(commands[i % commands.len()]).unwrap();
        }
        if i % 100 == 99 {
            rss.push(rss_kb(pid).unwrap());
        }
    }
    p.exp_string("detlab> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
    let samples: Vec<(f64, u64)> = rss
        .iter()
        .enumerate()
        .map(|(i, kb)| (i as f64, *kb))
        .collect();
    eprintln!("REPL RSS every 100 commands (kB): {rss:?}");
    report("1,000 REPL commands", &samples, 0.1);
}
