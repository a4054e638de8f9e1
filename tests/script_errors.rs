//! Script errors say what is wrong in the script's own terms: the nearest name for a typo, the
//! valid signatures of a function called with the wrong types, the option at fault, the
//! user's own line for an error inside a closure, the keys of a map that lacks one. And every
//! primitive's options come from one definition: what `help` documents is what it accepts.

mod common;

use common::*;
use detlab::script::options::{self, OptionDoc};
use detlab::script::{Interpreter, ScriptErrorKind};
use std::process::{Command, Stdio};

/// Run `source` as `name` in a fresh folder; return (exit code, stdout, stderr).
fn run(name: &str, source: &str) -> (Option<i32>, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join(name);
    std::fs::write(&script, source).unwrap();
    // Run by its bare name from its folder, so messages name it as a user would.
    let out = run_script(std::path::Path::new(name), &[], tmp.path());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The first line of the error a failing script prints (`error: file:line:col: message`).
fn first_error_line(name: &str, source: &str) -> String {
    let (code, _, err) = run(name, source);
    assert_eq!(code, Some(1), "{name} fails: {err}");
    err.lines().next().unwrap_or("").to_string()
}

const VOLUME: &str = "let v = pool_volume(#{shape: [16, 16, 16]}, 0);\n";

#[test]
fn an_unknown_function_suggests_the_nearest_name() {
    assert_eq!(
        first_error_line("typo.rhai", "resampel(1);\n"),
        "error: typo.rhai:1:1: unknown function `resampel`; did you mean `resample`?"
    );
}

#[test]
fn an_unknown_method_suggests_a_member_of_its_type() {
    let script = format!("{VOLUME}v.resampel([1.0, 1.0, 1.0]);\n");
    assert_eq!(
        first_error_line("method.rhai", &script),
        "error: method.rhai:2:3: unknown method `resampel` of Volume; did you mean `resample`?"
    );
    let script = format!("{VOLUME}print(v.shap);\n");
    assert_eq!(
        first_error_line("property.rhai", &script),
        "error: property.rhai:2:9: Volume has no property `shap`; did you mean `shape`?"
    );
}

#[test]
fn wrong_types_list_the_valid_signatures_in_script_type_names() {
    let script = format!("{VOLUME}v.resample(1.0);\n");
    let (_, _, err) = run("types.rhai", &script);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0], "error: types.rhai:2:3: `resample` cannot take (Volume, Float); it takes:",
        "{err}"
    );
    assert!(
        lines[1].trim_start().starts_with("Volume.resample("),
        "{err}"
    );
    let (_, _, err) = run("strings.rhai", "let n = \"abc\".len(1, 2);\n");
    assert!(
        err.starts_with(
            "error: strings.rhai:1:15: `len` cannot take (String, Int, Int); it takes:"
        ),
        "{err}"
    );
    for internal in ["ImmutableString", "&str", "i64", "f64"] {
        assert!(!err.contains(internal), "no Rhai type names: {err}");
    }
}

#[test]
fn option_errors_name_the_option_and_accept_integers_for_floats() {
    assert_eq!(
        first_error_line("seed.rhai", "pool_volume(#{seed: \"x\"}, 0);\n"),
        "error: seed.rhai:1:1: pool_volume: option `seed` must be a non-negative integer (Int), got String \"x\""
    );
    let (code, out, err) = run(
        "ints.rhai",
        "let v = pool_volume(#{shape: [16, 16, 16], noise: 1, lesion_probability: 0}, 0);\nprint(v.shape);\n",
    );
    assert_eq!(code, Some(0), "an integer is accepted for a float: {err}");
    assert!(out.contains("[1, 16, 16, 16]"), "{out}");
    let (_, _, err) = run("typo_key.rhai", "pool_volume(#{chanels: 2}, 0);\n");
    assert!(
        err.starts_with("error: typo_key.rhai:1:1: pool_volume: unknown option `chanels`; did you mean `channels`? Expected one of: `seed`, `shape`"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("syntax error"), "{err}");
}

/// A tiny preprocessed dataset and an untrained tiny detector, for the training options.
const MODEL_AND_DATA: &str = r#"
let ds = synthetic_dataset("data", #{cases: 2, test_cases: 1, seed: 1, shape: [24, 24, 24]});
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 16, head_channels: 16});
"#;

#[test]
fn training_options_are_checked_before_any_work() {
    let script = format!("{MODEL_AND_DATA}train(model, pre, #{{lr: \"0.1\"}});\n");
    let (_, _, err) = run("lr.rhai", &script);
    assert!(
        err.starts_with(
            "error: lr.rhai:5:1: train: option `lr` must be a number (Float), got String \"0.1\""
        ),
        "{err}"
    );
    // `lr: 1` is a float: the run gets as far as validating the settings.
    let script = format!("{MODEL_AND_DATA}train(model, pre, #{{lr: 1, epochs: 0}});\n");
    let (_, _, err) = run("lr_int.rhai", &script);
    assert!(err.contains("epochs"), "{err}");
    assert!(!err.contains("`lr`"), "{err}");
    let script = format!("{MODEL_AND_DATA}predict(model, pre, #{{splt: \"test\"}});\n");
    let (_, _, err) = run("split.rhai", &script);
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("error: split.rhai:5:1: predict: unknown option `splt`; did you mean `split`? Expected one of: "),
        "{err}"
    );
    for key in ["`split`", "`ids`", "`out`", "`tta`", "`merge`"] {
        assert!(first.contains(key), "{key} listed: {first}");
    }
    let script = format!(
        "{MODEL_AND_DATA}train(model, pre, #{{optimizer: #{{kind: \"adamw\", momentun: 0.9}}}});\n"
    );
    let (_, _, err) = run("nested.rhai", &script);
    assert!(
        err.starts_with("error: nested.rhai:5:1: train: unknown option `optimizer.momentun`; did you mean `optimizer.momentum`?"),
        "{err}"
    );
}

#[test]
fn an_error_inside_a_closure_points_at_the_users_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("grid.rhai"),
        "fn each(values, f) {\n    let rows = [];\n    for v in values {\n        rows.push(f.call(v));\n    }\n    rows\n}\n",
    )
    .unwrap();
    let script = tmp.path().join("main.rhai");
    std::fs::write(
        &script,
        "import \"grid\" as grid;\nlet rows = grid::each([1, 2], |x| {\n    let y = x + 1;\n    y.nope()\n});\n",
    )
    .unwrap();
    let out = run_script(&script, &[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let main = script.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!("error: {main}:4:7: unknown method `nope` of Int"),
        "{err}"
    );
    assert_eq!(lines[1], " 4 |     y.nope()", "the user's line: {err}");
    assert!(
        lines[3].starts_with(&format!("  in the closure defined at {main}:2:")),
        "{err}"
    );
    assert!(
        lines[3].contains("grid.rhai:4:"),
        "called by the module: {err}"
    );
    assert_eq!(
        lines[4],
        format!("  in `each`, called at {main}:2:18"),
        "{err}"
    );
    assert!(!err.contains("anon$"), "no internal names: {err}");
}

#[test]
fn a_missing_map_key_is_an_error_naming_it_and_listing_the_keys() {
    let script = r#"let m = #{"AP_IoU_0.10_MaxDet_100": 0.5, "FROC_score_IoU_0.10": 0.3};
assert_eq(m["missing"] ?? 1, 1, "?? falls back");
assert_eq(m.get("missing", 2), 2, "get falls back");
assert_eq(ARGS.missing ?? 3, 3, "ARGS too");
let key = "missing";
assert_eq(m[key] ?? 4, 4, "a variable key falls back");
m.added = 5;
m[key] = 6;
assert_eq(m.added + m.missing, 11, "writes add keys");
print(m["AP_IoU_0.1_MaxDet_100"]);
"#;
    let (code, _, err) = run("keys.rhai", script);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.lines().next().unwrap(),
        "error: keys.rhai:10:9: the map has no key `AP_IoU_0.1_MaxDet_100`; did you mean \
         `AP_IoU_0.10_MaxDet_100`? Its keys: `AP_IoU_0.10_MaxDet_100`, `FROC_score_IoU_0.10`, \
         `added`, `missing`. A key that may be missing reads with \
         `m.get(\"AP_IoU_0.1_MaxDet_100\", default)` or `m[\"AP_IoU_0.1_MaxDet_100\"] ?? default`."
    );
    let (_, _, err) = run("in_fn.rhai", "fn ap(m) { m.ap }\nap(#{auc: 1});\n");
    assert!(
        err.starts_with("error: in_fn.rhai:1:14: the map has no key `ap`. Its keys: `auc`."),
        "{err}"
    );
    // A closure's parameter as the key (`|c| row[c]`), inside a loop too: Rhai captures the
    // closure's free variables when it is made, so such keys must stay plain variables.
    let (code, out, err) = run(
        "closure_key.rhai",
        "let row = #{a: 1, b: 2};\nlet cols = [\"a\", \"b\"];\n\
         for (r, i) in [row] { print(cols.map(|c| r[c])); }\nprint(cols.map(|c| row[c] * 10));\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "[1, 2]\n[10, 20]\n");
}

#[test]
fn check_reports_calls_to_unknown_functions() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("calls.rhai");
    std::fs::write(
        &script,
        "fn mine(x) { x }\nlet a = mine(1);\nlet v = resampel(a);\nprint(v.lenn());\n",
    )
    .unwrap();
    let out = Command::new(detlab())
        .arg("check")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = script.display();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        lines,
        vec![
            format!("error: {file}:3:9: unknown function `resampel`; did you mean `resample`?"),
            format!("error: {file}:4:9: unknown method `lenn`; did you mean `len`?"),
        ],
        "{err}"
    );
}

#[test]
fn help_into_a_closed_pipe_exits_quietly() {
    for args in [vec!["help"], vec!["help", "train"]] {
        let mut child = Command::new(detlab())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before detlab writes (it builds its engine first).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

fn help_text(name: &str) -> String {
    let out = Command::new(detlab())
        .args(["help", name])
        .output()
        .unwrap();
    expect_ok(&out, &format!("detlab help {name}"))
}

#[test]
fn help_shows_every_option_with_type_and_default() {
    let train = help_text("train");
    for row in [
        "progress",
        "optimizer.grad_clip_norm",
        "foreground_fraction",
        "train_ids",
        "augment.",
    ] {
        assert!(train.contains(row), "help train lists {row}:\n{train}");
    }
    assert!(
        train
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["lr", "Float", "0.01"]),
        "lr with its type and default:\n{train}"
    );
    let predict = help_text("predict");
    for key in ["split", "ids", "out", "tta", "merge"] {
        assert!(
            predict
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} "))),
            "help predict lists {key}:\n{predict}"
        );
    }
    let backbone = help_text("backbone");
    assert!(
        backbone.contains("Options (\"retunet\", \"retunet_tiny\"):"),
        "{backbone}"
    );
    assert!(
        backbone.contains("Options (\"resenc_l\", \"resenc_tiny\"):"),
        "{backbone}"
    );
    assert!(backbone.contains("blocks_per_stage"), "{backbone}");
}

/// Every option (nested ones too) with its dotted key.
fn flatten(options: &[OptionDoc], prefix: &str, out: &mut Vec<(String, OptionDoc)>) {
    for o in options {
        let key = format!("{prefix}{}", o.key);
        out.push((key.clone(), o.clone()));
        flatten(&o.children, &format!("{key}."), out);
    }
}

/// One call per primitive that takes options, with `OPTS` for the options map.
const CALLS: &[(&str, &str)] = &[
    ("dataset", r#"dataset("data", OPTS)"#),
    ("synthetic_dataset", r#"synthetic_dataset("fresh", OPTS)"#),
    (
        "synthetic_task",
        r#"synthetic_task("nodules", "task", OPTS)"#,
    ),
    (
        "multitalent_source",
        r#"multitalent_source("organs", "source", OPTS)"#,
    ),
    ("pool_volume", "pool_volume(OPTS, 0)"),
    ("splits", "ds.splits(OPTS)"),
    ("split", "ds.split(OPTS)"),
    ("preprocess", "preprocess(ds, OPTS)"),
    ("backbone", r#"backbone("retunet", OPTS)"#),
    ("backbone", r#"backbone("resenc_l", OPTS)"#),
    (
        "detector",
        r#"detector("retina_unet", backbone("retunet_tiny"), OPTS)"#,
    ),
    ("train", "train(model, pre, OPTS)"),
    ("predict", "predict(model, pre, OPTS)"),
    ("evaluate", "evaluate([], ds, OPTS)"),
    ("froc_curve", "froc_curve([], ds, OPTS)"),
    ("pr_curve", "pr_curve([], ds, OPTS)"),
    ("bootstrap", "bootstrap(#{a: []}, OPTS)"),
    ("plan", "plan(ds, OPTS)"),
    (
        "sweep_postprocessing",
        "sweep_postprocessing(model, pre, OPTS)",
    ),
    ("plot_slice", r#"plot_slice("x.png", v, OPTS)"#),
    (
        "plot_lines",
        r#"plot_lines("x.png", #{a: [1.0, 2.0]}, OPTS)"#,
    ),
    (
        "plot_bars",
        r#"plot_bars("x.png", ["g"], #{a: [1.0]}, OPTS)"#,
    ),
    ("plot_froc", r#"plot_froc("x.png", #{}, OPTS)"#),
    ("plot_pr", r#"plot_pr("x.png", #{}, OPTS)"#),
    (
        "plot_rank_histograms",
        r#"plot_rank_histograms("x.png", #{}, OPTS)"#,
    ),
    ("plot_ci", r#"plot_ci("x.png", [], OPTS)"#),
    ("synthetic_stream", "synthetic_stream(OPTS)"),
    (
        "pretrain",
        r#"pretrain(backbone("resenc_tiny"), synthetic_stream(#{}), OPTS)"#,
    ),
    ("transfer", "transfer(model, ckpt, OPTS)"),
    ("load_pretrained", "load_pretrained(fixture, OPTS)"),
    (
        "save_pretrained",
        r#"save_pretrained(ckpt, "x.safetensors", OPTS)"#,
    ),
    ("resample", "v.resample([1.0, 1.0, 1.0], OPTS)"),
    ("resample_to_shape", "v.resample_to_shape([4, 4, 4], OPTS)"),
    ("save", r#"v.save("x.nii.gz", OPTS)"#),
    ("normalize", "v.normalize(OPTS)"),
    ("label_boxes", "label_boxes(v, OPTS)"),
    ("connected_components", "connected_components(v, OPTS)"),
    ("labels_to_instances", "labels_to_instances(v, OPTS)"),
];

#[test]
fn every_documented_option_is_accepted_and_every_accepted_option_is_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let mut interp = Interpreter::new(tmp.path().to_path_buf());
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth/nnssl_resenc.pth")
        .display()
        .to_string();
    let setup = MODEL_AND_DATA.replace(
        "\"data\"",
        &format!("{:?}", tmp.path().join("data").display().to_string()),
    ) + format!(
        "let fixture = {fixture:?};\nlet ckpt = load_pretrained(fixture);\nlet v = pool_volume(#{{shape: [8, 8, 8]}}, 0);\n"
    )
    .as_str();
    let _ = interp.eval_source(&setup, "setup").expect("setup runs");

    // Every primitive that takes an options map declares its options.
    let mut takes_options: Vec<String> = interp
        .help()
        .entries()
        .filter(|e| e.signatures.iter().any(|s| s.text.contains("options: Map")))
        .map(|e| e.name.clone())
        .collect();
    takes_options.sort();
    takes_options.dedup();
    for name in &takes_options {
        assert!(
            !options::sets_for(name).is_empty(),
            "`{name}` takes options but does not declare them"
        );
        assert!(
            CALLS.iter().any(|(primitive, _)| primitive == name),
            "`{name}` has no call in CALLS to check its options against"
        );
    }

    for set in options::all_sets() {
        let mut all = Vec::new();
        flatten(&set.options, "", &mut all);
        // Documented: a type, a default and a line for every option.
        for (key, o) in &all {
            assert!(
                !o.doc.is_empty(),
                "{}: `{key}` has no description (a `///` line)",
                set.primitive
            );
            assert!(
                !o.type_name.is_empty(),
                "{}: `{key}` has no type",
                set.primitive
            );
            assert!(
                !o.children.is_empty() || !o.default.is_empty(),
                "{}: `{key}` has no default",
                set.primitive
            );
        }
        // The documented options are exactly the fields serde accepts (less those the
        // primitive sets itself), plus the script-only keys.
        if !set.config_fields.is_empty() {
            for field in &set.config_fields {
                assert!(
                    set.omitted.contains(field) || set.options.iter().any(|o| &o.key == field),
                    "{}: `{field}` is accepted but not documented",
                    set.primitive
                );
            }
            for o in set.options.iter().filter(|o| !o.script_only) {
                assert!(
                    set.config_fields.contains(&o.key),
                    "{}: `{}` is documented but not a config field",
                    set.primitive,
                    o.key
                );
            }
        }
    }

    // Accepted: a call with an unknown key lists exactly the documented keys.
    for (name, call) in CALLS {
        let source = call.replace("OPTS", "#{zz_not_an_option: 1}");
        let error = interp
            .eval_source(&source, "call")
            .expect_err(&format!("{source} rejects an unknown key"));
        assert_eq!(error.kind, ScriptErrorKind::Runtime, "{}", error);
        let listed: Vec<String> = error
            .message
            .split_once("Expected one of: ")
            .unwrap_or_else(|| panic!("{name}: {}", error.message))
            .1
            .split(", ")
            .map(|k| k.trim_matches('`').to_string())
            .collect();
        let sets = options::sets_for(name);
        let set = sets.iter().find(|s| s.keys() == listed).unwrap_or_else(|| {
            panic!(
                "{name}: the error lists {listed:?}, help documents {:?}",
                sets.iter().map(|s| s.keys()).collect::<Vec<_>>()
            )
        });
        // Documented: each config option with its default passes the key check (the error is
        // about the unknown key only).
        {
            for o in set.options.iter().filter(|o| !o.script_only) {
                let value = if o.children.is_empty() {
                    o.default.clone()
                } else {
                    "#{}".to_string()
                };
                if value.contains('…') {
                    continue;
                }
                let source = call.replace(
                    "OPTS",
                    &format!("#{{\"{}\": {value}, zz_not_an_option: 1}}", o.key),
                );
                let error = interp.eval_source(&source, "call").expect_err(&source);
                assert!(
                    error.message.contains("unknown option `zz_not_an_option`"),
                    "{name}: `{}` with its default {value} is accepted: {}",
                    o.key,
                    error.message
                );
            }
        }
    }
}
