//! `detlab-fuzz`: a structure-aware mutation fuzzer for every detlab reader of user files.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml -- list
//! cargo run --manifest-path fuzz/Cargo.toml -- run all --seconds 60        # CI smoke
//! cargo run --manifest-path fuzz/Cargo.toml -- run nifti --execs 10000000  # the long run
//! cargo run --manifest-path fuzz/Cargo.toml -- replay nifti FILE...        # reproduce
//! cargo run --manifest-path fuzz/Cargo.toml -- regressions                  # every past find
//! ```
//!
//! Why not `cargo fuzz`: its sanitizer-coverage flags do work on this stable toolchain with
//! `RUSTC_BOOTSTRAP=1`, but they instrument every crate, so burn, rhai and the rest would be
//! rebuilt with ASan in a separate target folder (tens of minutes on two cores) and each input
//! would run about twice as slowly. This harness shares the root's `target/` and so builds in
//! a minute. It has no coverage feedback; instead the structured mutations (JSON nodes, NIfTI
//! header fields, zip members with valid CRCs, gzip streams) reach the deep checks, and an
//! input that produces a new outcome (`ok`, or an error message with its numbers removed)
//! joins the corpus. A target's runner is a plain `fn(&[u8])`, so it can be wrapped by
//! `libfuzzer-sys` later without change.
//!
//! Failures: a panic (saved and counted, fuzzing continues), a slow input (over 1 s of CPU
//! time for a parser, 15 s for the two targets that build the network a file declares, see
//! `targets::BUILD_SLOW`), an input running past `--hang-seconds` (20 s: the watchdog stops
//! the process) and an
//! allocation above 2 GB (the counting allocator stops the process). Inputs are saved to
//! `fuzz/artifacts/<target>/`.

mod guard;
mod mutate;
mod targets;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use guard::CountingAllocator;

/// CPU seconds this process has used (every thread: some readers use rayon).
fn process_cpu() -> f64 {
    detlab::util::cpu_seconds(detlab::util::CpuClock::Process).unwrap_or(f64::NAN)
}
use targets::{Scratch, TARGETS, Target};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The corpus stops growing at this size.
const MAX_CORPUS: usize = 4096;
/// Inputs are cut to this size before running.
const MAX_INPUT: usize = 4 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                println!("{:15} {}", t.name, t.about);
            }
            0
        }
        Some("run") => run_command(&args[1..]),
        Some("replay") => replay_command(&args[1..]),
        Some("regressions") => regressions_command(),
        _ => {
            eprintln!(
                "usage: detlab-fuzz list | run TARGET|all [--seconds N] [--execs N] [--seed N] [--hang-seconds N] | replay TARGET FILE... | regressions"
            );
            2
        }
    };
    std::process::exit(code);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Options {
    seconds: Option<f64>,
    execs: Option<u64>,
    seed: u64,
    hang: Duration,
}

fn parse_options(args: &[String]) -> Result<(Vec<String>, Options), String> {
    let mut names = Vec::new();
    let mut o = Options {
        seconds: None,
        execs: None,
        seed: 0,
        hang: Duration::from_secs(20),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--seconds" => {
                o.seconds = Some(value(a)?.parse().map_err(|e| format!("--seconds: {e}"))?)
            }
            "--execs" => o.execs = Some(value(a)?.parse().map_err(|e| format!("--execs: {e}"))?),
            "--seed" => o.seed = value(a)?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--hang-seconds" => {
                o.hang = Duration::from_secs_f64(
                    value(a)?
                        .parse()
                        .map_err(|e| format!("--hang-seconds: {e}"))?,
                )
            }
            name => names.push(name.to_string()),
        }
    }
    Ok((names, o))
}

fn select(names: &[String]) -> Result<Vec<&'static Target>, String> {
    if names.iter().any(|n| n == "all") {
        return Ok(TARGETS.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            TARGETS.iter().find(|t| t.name == n).ok_or_else(|| {
                let all: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                format!("unknown target '{n}'; targets: {}, all", all.join(", "))
            })
        })
        .collect()
}

/// Totals of one target's run.
#[derive(Default)]
struct Stats {
    execs: u64,
    ok: u64,
    panics: u64,
    slow: u64,
    corpus: usize,
    outcomes: usize,
    peak_bytes: usize,
    seconds: f64,
}

fn run_command(args: &[String]) -> i32 {
    let (names, options) = match parse_options(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let targets = match select(&names) {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            eprintln!("error: name a target (`list` shows them) or `all`");
            return 2;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if options.seconds.is_none() && options.execs.is_none() {
        eprintln!("error: give --seconds N or --execs N (per target)");
        return 2;
    }
    quiet_panics();
    guard::watchdog(options.hang);
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot set up the scratch folder: {e}");
            return 1;
        }
    };
    let mut failed = false;
    let mut summary = Vec::new();
    for t in targets {
        let stats = fuzz(t, &scratch, &options);
        failed |= stats.panics > 0 || stats.slow > 0;
        summary.push((t.name, stats));
    }
    let _ = std::fs::remove_dir_all(&scratch.dir);
    println!(
        "\n{:15} {:>12} {:>9} {:>9} {:>7} {:>6} {:>6} {:>8} {:>10}",
        "target", "execs", "exec/s", "ok", "panics", "slow", "corpus", "outcomes", "peak MB"
    );
    for (name, s) in &summary {
        println!(
            "{:15} {:>12} {:>9.0} {:>9} {:>7} {:>6} {:>6} {:>8} {:>10.1}",
            name,
            s.execs,
            s.execs as f64 / s.seconds.max(1e-9),
            s.ok,
            s.panics,
            s.slow,
            s.corpus,
            s.outcomes,
            s.peak_bytes as f64 / 1e6
        );
    }
    if failed {
        println!(
            "failures saved under {}",
            root().join("artifacts").display()
        );
        1
    } else {
        0
    }
}

fn fuzz(target: &Target, scratch: &Scratch, options: &Options) -> Stats {
    let artifacts = root().join("artifacts").join(target.name);
    let mut corpus = seeds(target, scratch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ hash(target.name.as_bytes()));
    let mut outcomes = HashSet::new();
    let mut panic_sites = HashSet::new();
    let mut stats = Stats::default();
    let started = Instant::now();
    let deadline = options.seconds.map(Duration::from_secs_f64);
    let mut last_report = Instant::now();
    let mut entropy = vec![0u8; 512];
    println!("{}: {} seeds", target.name, corpus.len());
    // The seeds first, unmutated; then mutations of random corpus entries.
    let mut pending: Vec<Vec<u8>> = corpus.clone();
    loop {
        if options.execs.is_some_and(|n| stats.execs >= n)
            || deadline.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let input = match pending.pop() {
            Some(seed) => seed,
            None if corpus.is_empty() => Vec::new(),
            None => {
                rng.fill(&mut entropy[..]);
                let base = &corpus[rng.random_range(0..corpus.len())];
                let mut m = mutate::mutate(target.format, base, &corpus, &entropy);
                m.truncate(MAX_INPUT);
                m
            }
        };
        guard::start(target.name, &input, &artifacts);
        let (t0, cpu0) = (Instant::now(), process_cpu());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(scratch, &input)));
        let elapsed = t0.elapsed();
        let cpu = Some(process_cpu() - cpu0)
            .filter(|c| c.is_finite())
            .unwrap_or(elapsed.as_secs_f64());
        guard::finish();
        stats.execs += 1;
        let outcome = match result {
            Ok(Ok(())) => {
                stats.ok += 1;
                "ok".to_string()
            }
            Ok(Err(message)) => normalise(&message),
            Err(_) => {
                let site = LAST_PANIC.with(|p| p.borrow().clone());
                stats.panics += 1;
                if panic_sites.insert(site.clone()) {
                    let path = save_artifact(&artifacts, "crash", &input, target.name, &site);
                    println!(
                        "{}: PANIC {site}\n  input saved to {}",
                        target.name,
                        path.display()
                    );
                }
                format!("panic {site}")
            }
        };
        // CPU time, not wall time: a fuzz run at `nice -n 19` on a busy machine waits for the CPU
        // far longer than any input runs. A blocked input still meets the wall-clock watchdog.
        if cpu > target.slow.as_secs_f64() {
            stats.slow += 1;
            let message = format!(
                "took {cpu:.2} s of CPU ({:.2} s wall)",
                elapsed.as_secs_f64()
            );
            let path = save_artifact(&artifacts, "slow", &input, target.name, &message);
            println!(
                "{}: SLOW input ({message}) saved to {}",
                target.name,
                path.display()
            );
        }
        if outcomes.insert(outcome) && corpus.len() < MAX_CORPUS {
            corpus.push(input);
        }
        stats.peak_bytes = stats.peak_bytes.max(guard::take_peak());
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "{}: {} execs ({:.0}/s), {} ok, {} panics, {} slow, corpus {}, live {:.1} MB",
                target.name,
                stats.execs,
                stats.execs as f64 / started.elapsed().as_secs_f64(),
                stats.ok,
                stats.panics,
                stats.slow,
                corpus.len(),
                guard::live_bytes() as f64 / 1e6
            );
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.corpus = corpus.len();
    stats.outcomes = outcomes.len();
    stats
}

/// An outcome class: the message without numbers and paths' variable parts, cut short.
fn normalise(message: &str) -> String {
    let mut s: String = message
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(90)
        .collect();
    s.shrink_to_fit();
    s
}

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across runs, for artifact names and per-target seeds.
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Save an input (and a note on what it did) under `dir`; returns the input's path.
pub fn save_artifact(dir: &Path, kind: &str, input: &[u8], target: &str, message: &str) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{kind}-{:016x}", hash(input)));
    let _ = std::fs::write(&path, input);
    let _ = std::fs::write(
        path.with_extension("txt"),
        format!(
            "target {target}: {message}\nreplay: cargo run --manifest-path fuzz/Cargo.toml -- replay {target} {}\n",
            path.display()
        ),
    );
    path
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Panics are expected findings: record their site instead of printing a backtrace.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let site = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = format!("{site}: {message}"));
    }));
}

/// Seeds: the checked-in corpus, real files of the installed test data, and files that detlab
/// itself writes.
fn seeds(target: &Target, scratch: &Scratch) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let add_dir = |dir: &Path, suffix: &str, seeds: &mut Vec<Vec<u8>>| {
        for p in targets::glob_files(dir, suffix) {
            if let Ok(b) = std::fs::read(&p) {
                seeds.push(b);
            }
        }
    };
    add_dir(&root().join("corpus").join(target.name), "", &mut seeds);
    let repo = root().join("..");
    let real_nifti = || {
        let mut files = targets::glob_files(Path::new("/usr/share/mricron/templates"), ".nii.gz");
        files.extend(targets::glob_files(
            Path::new("/usr/share/doc/insighttoolkit5-examples/examples/Data"),
            ".nii.gz",
        ));
        files
    };
    match target.name {
        "nifti" | "nifti_gz" => {
            for p in real_nifti() {
                let Ok(gz) = std::fs::read(&p) else { continue };
                let Some(raw) = mutate::gunzip(&gz) else {
                    continue;
                };
                // Small files whole; every real header with a little of its data (a
                // truncated file), so every real header layout is in the corpus.
                if target.name == "nifti" {
                    if raw.len() <= 1 << 20 {
                        seeds.push(raw.clone());
                    }
                    seeds.push(raw[..raw.len().min(600)].to_vec());
                } else {
                    // Whole files up to 64 KB compressed (four real ones, inflating to
                    // 0.5-2 MB): the larger templates took each input past 10 ms, which put
                    // 10 M executions at hours; their headers are in the corpus truncated.
                    if gz.len() <= 64 << 10 {
                        seeds.push(gz);
                    }
                    seeds.push(mutate::gzip(&raw[..raw.len().min(600)]));
                }
            }
        }
        "pth" => add_dir(&repo.join("tests/fixtures/pth"), ".pth", &mut seeds),
        "pickle" => {
            for p in targets::glob_files(&repo.join("tests/fixtures/pth"), ".pth") {
                if let Some(pkl) = read_zip_member(&p, "data.pkl") {
                    seeds.push(pkl);
                }
            }
        }
        "eval_input" => add_dir(&repo.join("tests/fixtures/metrics"), ".json", &mut seeds),
        _ => {}
    }
    seeds.extend(scratch.generated_seeds(target.name));
    seeds.sort();
    seeds.dedup();
    seeds
}

fn read_zip_member(path: &Path, suffix: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(file).ok()?;
    let name = zip.file_names().find(|n| n.ends_with(suffix))?.to_string();
    let mut out = Vec::new();
    zip.by_name(&name).ok()?.read_to_end(&mut out).ok()?;
    Some(out)
}

fn replay_command(args: &[String]) -> i32 {
    let Some((name, files)) = args.split_first() else {
        eprintln!("usage: detlab-fuzz replay TARGET FILE...");
        return 2;
    };
    let target = match select(std::slice::from_ref(name)) {
        Ok(t) if t.len() == 1 => t[0],
        Ok(_) | Err(_) => {
            eprintln!("error: unknown target '{name}'");
            return 2;
        }
    };
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut code = 0;
    for f in files {
        let input = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{f}: {e}");
                code = 1;
                continue;
            }
        };
        guard::start(
            target.name,
            &input,
            &root().join("artifacts").join(target.name),
        );
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&scratch, &input)));
        let took = t0.elapsed().as_secs_f64();
        guard::finish();
        match result {
            Ok(Ok(())) => println!("{f}: ok ({took:.3} s)"),
            Ok(Err(e)) => println!("{f}: error ({took:.3} s): {e}"),
            Err(_) => {
                println!("{f}: PANIC ({took:.3} s)");
                code = 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch.dir);
    code
}

/// Replay every input under `fuzz/regressions/<target>/` (each crash the fuzzer found, checked
/// in once fixed); fails if one panics, and the guards stop it on a hang or a huge allocation.
fn regressions_command() -> i32 {
    quiet_panics();
    guard::watchdog(Duration::from_secs(20));
    let mut code = 0;
    let mut count = 0;
    for t in TARGETS {
        let dir = root().join("regressions").join(t.name);
        let files: Vec<String> = targets::glob_files(&dir, "")
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "txt"))
            .map(|p| p.display().to_string())
            .collect();
        if files.is_empty() {
            continue;
        }
        count += files.len();
        let mut args = vec![t.name.to_string()];
        args.extend(files);
        code |= replay_command(&args);
    }
    println!("{count} regression inputs replayed");
    code
}
