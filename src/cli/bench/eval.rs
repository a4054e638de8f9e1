//! `detlab bench eval`: detlab's evaluator against a numpy reimplementation of nnDetection's
//! evaluator semantics (`benches/eval_numpy_reimplementation.py`) on the same seeded synthetic
//! input (written once as `detlab eval` JSON), in one run. Also checks that both agree, and
//! times the whole `detlab eval FILE.json` call (read, validate, evaluate, print).
//!
//! `--script` may name any program that reads such a file and prints the same JSON (metric
//! values and `seconds`): `benches/nndetection_evaluator.py` runs nnDetection's own
//! `BoxEvaluator` (prepared by `benches/nndetection_evaluator_setup.sh`).
//!
//! Options: `--cases N` (1000), `--gt N` (3 per case), `--preds N` (100 per case), `--classes N`
//! (2), `--seed S` (0), `--repeat R` (3, best time is reported), `--python EXE` (python3),
//! `--script PATH`, `--keep DIR` (keep the input JSON there), `--bootstrap B` (1000; also
//! times a B-resample bootstrap of two methods, 0 skips it).

use detlab::metrics::{self, EvalConfig, io::EvalInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

struct Options {
    cases: usize,
    gt: usize,
    preds: usize,
    classes: usize,
    seed: u64,
    repeat: usize,
    python: String,
    script: PathBuf,
    keep: Option<PathBuf>,
    bootstrap: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        cases: 1000,
        gt: 3,
        preds: 100,
        classes: 2,
        seed: 0,
        repeat: 3,
        python: "python3".into(),
        script: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/eval_numpy_reimplementation.py"
        )),
        keep: None,
        bootstrap: 1000,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "--cases" => o.cases = num(value()?)? as usize,
            "--gt" => o.gt = num(value()?)? as usize,
            "--preds" => o.preds = num(value()?)? as usize,
            "--classes" => o.classes = (num(value()?)? as usize).max(1),
            "--seed" => o.seed = num(value()?)?,
            "--repeat" => o.repeat = (num(value()?)? as usize).max(1),
            "--python" => o.python = value()?,
            "--script" => o.script = PathBuf::from(value()?),
            "--keep" => o.keep = Some(PathBuf::from(value()?)),
            "--bootstrap" => o.bootstrap = num(value()?)? as usize,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(o)
}

/// Seeded synthetic cases: GT boxes in a 128³ volume; per GT a few jittered detections with
/// higher scores, the rest random boxes.
fn synthetic(o: &Options) -> serde_json::Value {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut cases = Vec::with_capacity(o.cases);
    let random_box = |rng: &mut ChaCha8Rng| -> Vec<f64> {
        let size: [f64; 3] = [
            rng.random_range(4.0..24.0),
            rng.random_range(4.0..24.0),
            rng.random_range(4.0..24.0),
        ];
        let lo: [f64; 3] = [
            rng.random_range(0.0..100.0),
            rng.random_range(0.0..100.0),
            rng.random_range(0.0..100.0),
        ];
        vec![
            lo[0],
            lo[1],
            lo[2],
            lo[0] + size[0],
            lo[1] + size[1],
            lo[2] + size[2],
        ]
    };
    for i in 0..o.cases {
        let gt_boxes: Vec<Vec<f64>> = (0..o.gt).map(|_| random_box(&mut rng)).collect();
        let gt_classes: Vec<usize> = (0..o.gt).map(|_| rng.random_range(0..o.classes)).collect();
        let (mut boxes, mut scores, mut classes) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..o.preds {
            if p < 3 * o.gt {
                let g = &gt_boxes[p % o.gt];
                let jitter = 0.3 * (g[3] - g[0]);
                let b: Vec<f64> = (0..3)
                    .map(|a| g[a] + rng.random_range(-jitter..jitter))
                    .collect();
                let e: Vec<f64> = (0..3)
                    .map(|a| (g[a + 3] - g[a]) * rng.random_range(0.7..1.3))
                    .collect();
                boxes.push(vec![
                    b[0],
                    b[1],
                    b[2],
                    b[0] + e[0],
                    b[1] + e[1],
                    b[2] + e[2],
                ]);
                classes.push(if rng.random_bool(0.9) {
                    gt_classes[p % o.gt]
                } else {
                    rng.random_range(0..o.classes)
                });
                scores.push(rng.random_range(0.3..1.0));
            } else {
                boxes.push(random_box(&mut rng));
                classes.push(rng.random_range(0..o.classes));
                scores.push(rng.random_range(0.0..0.8));
            }
        }
        cases.push(serde_json::json!({
            "id": format!("case_{i:05}"),
            "gt": {"boxes": gt_boxes, "classes": gt_classes},
            "pred": {"boxes": boxes, "scores": scores, "classes": classes},
        }));
    }
    let names: Vec<String> = (0..o.classes).map(|c| format!("class{c}")).collect();
    serde_json::json!({"classes": names, "cases": cases})
}

/// Run the benchmark; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let dir = o.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("detlab-bench-eval-{}", std::process::id()))
    });
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: {}: {e}", dir.display());
        return 1;
    }
    let input_path = dir.join("eval_input.json");
    let text = synthetic(&o).to_string();
    if let Err(e) = detlab::util::atomic_write(&input_path, text.as_bytes()) {
        eprintln!("error: {}: {e}", input_path.display());
        return 1;
    }
    println!(
        "input: {} cases × {} GT, {} predictions, {} classes (seed {}), {} ({:.1} MB)",
        o.cases,
        o.gt,
        o.preds,
        o.classes,
        o.seed,
        input_path.display(),
        text.len() as f64 / 1e6
    );
    let code = measure(&o, &input_path);
    if o.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

fn measure(o: &Options, input_path: &std::path::Path) -> i32 {
    let t0 = Instant::now();
    let input = match EvalInput::read(input_path) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let parse_s = t0.elapsed().as_secs_f64();
    // The same text through both readers: the typed one-pass read `detlab eval` uses, and the
    // general reader (a JSON tree first) it had before and still uses to word errors.
    let text = match std::fs::read_to_string(input_path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {}: {e}", input_path.display());
            return 1;
        }
    };
    let best_read = |read: fn(&str) -> Result<EvalInput, metrics::MetricsError>| {
        let mut best = f64::INFINITY;
        for _ in 0..o.repeat {
            let t = Instant::now();
            read(&text)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok::<f64, metrics::MetricsError>(best)
    };
    let (general_s, typed_s) = match (
        best_read(EvalInput::from_json_general),
        best_read(EvalInput::from_json_str),
    ) {
        (Ok(general), Ok(typed)) => (general, typed),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    // The whole CLI call, as a user runs it (a process of this same binary).
    let mut cli_s = f64::INFINITY;
    if let Ok(exe) = std::env::current_exe() {
        for _ in 0..o.repeat {
            let t = Instant::now();
            match std::process::Command::new(&exe)
                .arg("eval")
                .arg(input_path)
                .output()
            {
                Ok(out) if out.status.success() => cli_s = cli_s.min(t.elapsed().as_secs_f64()),
                Ok(out) => {
                    eprintln!(
                        "error: detlab eval failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    return 1;
                }
                Err(e) => {
                    eprintln!("error: cannot run detlab eval: {e}");
                    return 1;
                }
            }
        }
    }
    let (gt, pred) = (input.gt(), input.pred());
    // The configuration `detlab eval` uses (no per-detection PR curves: it does not print them).
    let cfg = EvalConfig {
        num_classes: Some(input.num_classes()),
        pr_curves: false,
        ..EvalConfig::default()
    };
    let mut best = f64::INFINITY;
    let mut report = None;
    for _ in 0..o.repeat {
        let t = Instant::now();
        match metrics::evaluate(&gt, &pred, &cfg) {
            Ok(r) => report = Some(r),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let report = report.expect("at least one repeat");
    println!(
        "detlab evaluate: {:.2} ms (best of {}, {} rayon threads); reading + validating the JSON: {:.0} ms",
        best * 1e3,
        o.repeat,
        rayon::current_num_threads(),
        parse_s * 1e3
    );
    println!(
        "parsing + validating the text (best of {}): typed one-pass read {:.1} ms, general reader (JSON tree first) {:.1} ms: {:.1}× faster",
        o.repeat,
        typed_s * 1e3,
        general_s * 1e3,
        general_s / typed_s
    );
    let command = format!(
        "{} {} {} --repeat {}",
        o.python,
        o.script.display(),
        input_path.display(),
        o.repeat
    );
    let output = match std::process::Command::new(&o.python)
        .arg(&o.script)
        .arg(input_path)
        .arg("--repeat")
        .arg(o.repeat.to_string())
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!(
                "error: `{command}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return 1;
        }
        Err(e) => {
            eprintln!("error: cannot run `{command}`: {e} (pip install 'numpy<2')");
            return 1;
        }
    };
    let theirs: serde_json::Value = match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: `{command}` printed no JSON: {e}");
            return 1;
        }
    };
    let numpy_s = theirs["seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{} evaluate: {:.2} ms (best of {}, numpy {})",
        o.script
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        numpy_s * 1e3,
        o.repeat,
        theirs["numpy_version"].as_str().unwrap_or("?")
    );
    println!("speed-up (evaluation only): {:.0}×", numpy_s / best);
    println!(
        "`detlab eval FILE.json` (read + validate + evaluate + print): {:.0} ms (best of {}); {:.0}× faster than the Python evaluation alone",
        cli_s * 1e3,
        o.repeat,
        numpy_s / cli_s
    );
    if let Some(total) = theirs["total_seconds"].as_f64() {
        println!(
            "Python read + evaluate: {:.0} ms; `detlab eval FILE.json` is {:.0}× faster",
            total * 1e3,
            total / cli_s
        );
    }
    // Agreement on every scalar both produce, under the keys `detlab eval` prints (per-class
    // keys by class name, as nnDetection's evaluator writes them).
    let ours = match &input.classes {
        Some(names) => match crate::cli::eval::name_class_keys(report.to_json(), names) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        },
        None => report.to_json(),
    };
    let (mut compared, mut max_diff) = (0usize, 0.0f64);
    let mut missing = Vec::new();
    for (k, v) in theirs.as_object().into_iter().flatten() {
        if matches!(
            k.as_str(),
            "seconds" | "read_seconds" | "total_seconds" | "numpy_version"
        ) {
            continue;
        }
        if ours.get(k).is_none() {
            missing.push(k.clone());
        }
        let pairs: Vec<(f64, f64)> = match (v, ours.get(k)) {
            (serde_json::Value::Number(a), Some(serde_json::Value::Number(b))) => vec![(
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            )],
            (serde_json::Value::Array(a), Some(serde_json::Value::Array(b)))
                if a.len() == b.len() =>
            {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| {
                        (
                            x.as_f64().unwrap_or(f64::NAN),
                            y.as_f64().unwrap_or(f64::NAN),
                        )
                    })
                    .collect()
            }
            _ => continue,
        };
        for (a, b) in pairs {
            compared += 1;
            max_diff = max_diff.max((a - b).abs());
        }
    }
    println!("agreement: {compared} metric values compared, max |difference| = {max_diff:.3e}");
    if !missing.is_empty() {
        eprintln!("error: detlab has no value for {}", missing.join(", "));
        return 1;
    }
    if compared == 0 || max_diff > 1e-7 {
        eprintln!("error: the two evaluators disagree");
        return 1;
    }
    if o.bootstrap > 0 {
        // A second method: the same boxes with perturbed scores.
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed + 1);
        let other: Vec<metrics::ImagePred> = pred
            .iter()
            .map(|p| metrics::ImagePred {
                scores: p
                    .scores
                    .iter()
                    .map(|s| s * rng.random_range(0.5..1.0))
                    .collect(),
                ..p.clone()
            })
            .collect();
        let methods = vec![
            ("synthetic".to_string(), pred.clone()),
            ("perturbed".to_string(), other),
        ];
        let bcfg = metrics::BootstrapConfig {
            n: o.bootstrap,
            extra_metrics: vec!["FROC_score_IoU_0.10".into()],
            eval: cfg.clone(),
            ..metrics::BootstrapConfig::default()
        };
        let t = Instant::now();
        match metrics::bootstrap(&methods, &gt, &bcfg) {
            Ok(r) => println!(
                "bootstrap: {} resamples × {} methods (AP@0.1 ranking + FROC@0.1): {:.2} s; mean ranks {:?}",
                o.bootstrap,
                methods.len(),
                t.elapsed().as_secs_f64(),
                r.mean_rank
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    0
}
