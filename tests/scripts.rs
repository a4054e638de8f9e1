//! End-to-end: the command line runs real scripts (tests/scripts/*.rhai and examples/).

mod common;

use common::*;
use std::process::Command;

#[test]
fn every_test_script_passes() {
    let dir = root().join("tests/scripts");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    scripts.retain(|p| p.extension().is_some_and(|e| e == "rhai"));
    scripts.sort();
    assert!(!scripts.is_empty());
    for script in scripts {
        let tmp = tempfile::tempdir().unwrap();
        let sets = vec![
            ("seed", "7".to_string()),
            ("lr", "0.5".to_string()),
            ("flag", "true".to_string()),
            ("name", "demo".to_string()),
            ("sizes", "[1,2,3]".to_string()),
            ("out", tmp.path().display().to_string()),
        ];
        let out = run_script(&script, &sets, tmp.path());
        expect_ok(&out, &script.display().to_string());
    }
}

#[test]
fn runtime_error_names_file_line_and_column_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("bad.rhai");
    std::fs::write(&script, "let a = 1;\nlet b = [1, 2];\nlet c = b[5];\n").unwrap();
    let out = run_script(&script, &[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.rhai:3:"), "{err}");
    assert!(err.contains("let c = b[5];"), "source line shown: {err}");
}

#[test]
fn error_inside_a_primitive_points_at_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("missing.rhai");
    std::fs::write(
        &script,
        "print(\"start\");\n  let m = load_json(\"no/such/file.json\");\n",
    )
    .unwrap();
    let out = run_script(&script, &[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.rhai:2:11"), "{err}");
    assert!(err.contains("no/such/file.json"), "{err}");
}

#[test]
fn error_in_an_imported_module_names_the_module_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("helper.rhai"),
        "fn boom(x) {\n    x / 0\n}\n",
    )
    .unwrap();
    let script = tmp.path().join("main.rhai");
    std::fs::write(&script, "import \"helper\" as h;\nh::boom(1);\n").unwrap();
    let out = run_script(&script, &[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("helper.rhai:2:"), "{err}");
    assert!(
        err.contains("main.rhai:2:"),
        "call site kept as a note: {err}"
    );
}

#[test]
fn check_reports_syntax_errors_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("syntax.rhai");
    std::fs::write(&script, "let a = 1;\nlet b = 1 +* 2;\n").unwrap();
    let out = Command::new(detlab())
        .arg("check")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syntax.rhai:2:"), "{err}");
    let good = tmp.path().join("good.rhai");
    std::fs::write(&good, "let a = 1;\n").unwrap();
    let out = Command::new(detlab())
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn local_module_shadows_stdlib_and_unknown_module_is_clear() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("sweep.rhai"), "fn grid(p) { \"local\" }\n").unwrap();
    let script = tmp.path().join("main.rhai");
    std::fs::write(&script, "import \"sweep\" as s;\nif s::grid(1) != \"local\" { throw \"stdlib won\"; }\nimport \"nope\" as n;\n").unwrap();
    let out = run_script(&script, &[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("module 'nope' not found"), "{err}");
    assert!(err.contains("main.rhai:3:"), "{err}");
}

#[test]
fn help_lists_domains_and_shows_one_primitive() {
    let out = Command::new(detlab()).arg("help").output().unwrap();
    let text = expect_ok(&out, "detlab help");
    assert!(text.contains("core:"), "{text}");
    assert!(text.contains("save_json()"), "{text}");
    let out = Command::new(detlab())
        .args(["help", "save_json"])
        .output()
        .unwrap();
    let text = expect_ok(&out, "detlab help save_json");
    assert!(
        text.contains("save_json(value: Dynamic, path: String)"),
        "{text}"
    );
    assert!(text.contains("Example:"), "{text}");
    let out = Command::new(detlab())
        .args(["help", "no_such_thing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_set_argument_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("a.rhai");
    std::fs::write(&script, "1").unwrap();
    let out = Command::new(detlab())
        .arg("run")
        .arg(&script)
        .args(["--set", "novalue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key=value"));
}

#[test]
fn ctrl_c_stops_a_running_script_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("forever.rhai");
    std::fs::write(
        &script,
        "print(\"started\");\nlet n = 0;\nloop { n += 1; }\n",
    )
    .unwrap();
    let child = Command::new(detlab())
        .arg("run")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted by Ctrl-C"), "{err}");
    assert!(err.contains("forever.rhai:3:"), "{err}");
}

/// The lines of `text` that start with `prefix`.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn a_sweep_keeps_going_past_a_failed_cell_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("study.rhai");
    // Every closure call leaves a file under calls/, so calls across runs can be counted.
    std::fs::write(
        &script,
        r#"import "sweep" as sweep;
let rows = sweep::run(#{lr: [0.01, 0.1], seed: [0, 1]}, "cells", |p| {
    save_json(#{}, `calls/${safe_name(sweep::label(p))}-${glob("calls/*.json").len()}.json`);
    if ARGS.fail && p.lr == 0.1 && p.seed == 0 { throw "the loss is NaN at lr 0.1"; }
    #{ap: p.lr + p.seed}
});
table(rows, ["lr", "seed", "ap", "status", "error"]);
save_csv(rows, "rows.csv", ["lr", "seed", "ap", "status", "error"]);
"#,
    )
    .unwrap();
    let calls = || std::fs::read_dir(tmp.path().join("calls")).unwrap().count();

    let out = run_script(&script, &[("fail", "true".into())], tmp.path());
    let text = expect_ok(&out, "first run");
    assert_eq!(calls(), 4, "every cell ran");
    let ended: Vec<&str> = lines_starting(&text, "cell ")
        .into_iter()
        .filter(|l| !l.ends_with(": running"))
        .collect();
    assert_eq!(ended.len(), 4, "{text}");
    assert!(
        ended[0].starts_with("cell 1/4 lr=0.01 seed=0: ok ("),
        "{text}"
    );
    assert!(ended[0].ends_with(" s)"), "{text}");
    assert!(
        ended[2].starts_with("cell 3/4 lr=0.1 seed=0: failed (")
            && ended[2].ends_with(" s): the loss is NaN at lr 0.1"),
        "{text}"
    );
    assert!(
        ended[3].starts_with("cell 4/4 lr=0.1 seed=1: ok ("),
        "{text}"
    );
    assert!(
        text.contains("cell 3/4 lr=0.1 seed=0: running\n"),
        "a line when a cell starts: {text}"
    );
    assert!(text.contains("sweep: 4 cells: 3 ok, 1 failed\n"), "{text}");
    let csv = std::fs::read_to_string(tmp.path().join("rows.csv")).unwrap();
    assert_eq!(
        csv,
        "lr,seed,ap,status,error\n\
         0.01,0,0.01,ok,\n\
         0.01,1,1.01,ok,\n\
         0.1,0,,failed,the loss is NaN at lr 0.1\n\
         0.1,1,1.1,ok,\n"
    );
    for name in ["lr=0.01,seed=0", "lr=0.01,seed=1", "lr=0.1,seed=1"] {
        assert!(
            tmp.path().join(format!("cells/{name}.json")).is_file(),
            "{name}"
        );
    }
    assert!(!tmp.path().join("cells/lr=0.1,seed=0.json").exists());

    // The rerun reads the three finished cells and runs only the failed one.
    let out = run_script(&script, &[("fail", "false".into())], tmp.path());
    let text = expect_ok(&out, "rerun");
    assert_eq!(calls(), 5, "only the failed cell ran again: {text}");
    assert_eq!(
        lines_starting(&text, "cell 1/4"),
        vec!["cell 1/4 lr=0.01 seed=0: cached"]
    );
    assert!(
        lines_starting(&text, "cell 3/4")
            .last()
            .unwrap()
            .starts_with("cell 3/4 lr=0.1 seed=0: ok ("),
        "{text}"
    );
    assert!(
        text.contains("sweep: 4 cells: 4 ok (3 cached), 0 failed\n"),
        "{text}"
    );
    let csv = std::fs::read_to_string(tmp.path().join("rows.csv")).unwrap();
    assert!(csv.contains("\n0.1,0,0.1,ok,\n"), "{csv}");
}

#[test]
fn table_and_save_csv_keep_the_column_order_with_nan_and_missing_values() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("t.rhai");
    std::fs::write(
        &script,
        r#"let rows = [
    #{method: "mae", ap: 0.0 / 0.0, lr: 0.1},
    #{method: "scratch", ap: 0.5, lr: 0.01},
    #{method: "voco", lr: 0.01},
    #{method: "s3d", ap: (), lr: 0.01},
];
save_csv(rows, "all.csv");
save_csv(rows, "some.csv", ["lr", "method", "ap"]);
table(rows);
"#,
    )
    .unwrap();
    let out = run_script(&script, &[], tmp.path());
    let text = expect_ok(&out, "tables");
    let all = std::fs::read_to_string(tmp.path().join("all.csv")).unwrap();
    assert_eq!(
        all,
        "method,ap,lr\nmae,NaN,0.1\nscratch,0.5,0.01\nvoco,,0.01\ns3d,,0.01\n"
    );
    let some = std::fs::read_to_string(tmp.path().join("some.csv")).unwrap();
    assert_eq!(
        some,
        "lr,method,ap\n0.1,mae,NaN\n0.01,scratch,0.5\n0.01,voco,\n0.01,s3d,\n"
    );
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["method", "ap", "lr"], "{text}");
}

#[test]
fn connected_components_and_labels_to_instances_match_scipy_and_nndetection() {
    let python = setup_data();
    let tmp = tempfile::tempdir().unwrap();
    // Random masks and label maps (numpy, seeded), labelled by scipy: ndimage.label with a
    // full 3×3×3 structure (26), its default (6) and generate_binary_structure(3, 2) (18), and
    // nnDetection's seg_to_instances (per class, full structure), all in detlab's [D, H, W]
    // order (nibabel's array transposed), as NIfTI files.
    let make = r#"
import sys, numpy as np, nibabel as nib
from scipy import ndimage
out = sys.argv[1]
rng = np.random.default_rng(5)
mask = (ndimage.uniform_filter(rng.random((14, 17, 19)), 2) > 0.55).astype(np.uint8)
seg = np.where(rng.random((14, 17, 19)) < 0.25, rng.integers(1, 4, (14, 17, 19)), 0).astype(np.int16)
seg[seg == 2] = 3  # classes 1 and 3: a gap in the values
def save(a, name):
    nib.save(nib.Nifti1Image(a.transpose(2, 1, 0).astype(np.float32), np.eye(4)), f"{out}/{name}.nii.gz")
save(mask, "mask")
save(seg, "seg")
for n, structure in [(26, np.ones((3, 3, 3))), (6, None), (18, ndimage.generate_binary_structure(3, 2))]:
    save(ndimage.label(mask, structure=structure)[0], f"scipy_{n}")
instances = np.zeros_like(seg, dtype=np.int32)
classes = {}
i = 1
for uc in [u for u in np.unique(seg) if u > 0]:
    labelled, _ = ndimage.label(seg == uc, structure=np.ones((3, 3, 3)))
    for iid in [k for k in np.unique(labelled) if k > 0]:
        instances[labelled == iid] = i
        classes[str(i)] = int(uc) - 1
        i += 1
save(instances, "nndet")
import json
json.dump(classes, open(f"{out}/nndet.json", "w"))
print(int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]), i - 1)
"#;
    let out = Command::new(&python)
        .args(["-c", make, &tmp.path().display().to_string()])
        .output()
        .unwrap();
    let counts = expect_ok(&out, "numpy/scipy reference");
    let script = tmp.path().join("cc.rhai");
    std::fs::write(
        &script,
        r#"let mask = load_volume("mask.nii.gz");
for n in [26, 6, 18] {
    let ours = connected_components(mask, #{connectivity: n});
    let theirs = load_volume(`scipy_${n}.nii.gz`);
    assert_eq((ours != theirs).stats().max, 0.0, `connectivity ${n}: same labels as scipy`);
    print(`${n}: ${ours.stats().max.to_int()}`);
}
assert_eq((connected_components(mask) != load_volume("scipy_26.nii.gz")).stats().max, 0.0, "26 is the default");
let r = labels_to_instances(load_volume("seg.nii.gz"));
assert_eq((r.instances != load_volume("nndet.nii.gz")).stats().max, 0.0, "same instances as nnDetection");
assert_eq(r.classes, load_json("nndet.json"), "same instance classes as nnDetection");
print(`instances ${r.count}`);
"#,
    )
    .unwrap();
    let out = run_script(&script, &[], tmp.path());
    let text = expect_ok(&out, "detlab components");
    let (components, instances) = counts.trim().split_once(' ').unwrap();
    assert!(text.contains(&format!("26: {components}\n")), "{text}");
    assert!(text.contains(&format!("instances {instances}\n")), "{text}");
    assert!(
        components.parse::<u32>().unwrap() > 5 && instances.parse::<u32>().unwrap() > 50,
        "the reference cases are not trivial: {components} components, {instances} instances"
    );
}

#[test]
fn help_shows_the_file_and_volume_primitives() {
    for (name, expected) in [
        (
            "where",
            "where(mask: Volume, a: Volume|number, b: Volume|number) -> Volume",
        ),
        ("glob", "glob(pattern: String) -> Array"),
        ("connected_components", "scipy.ndimage.label"),
        ("labels_to_instances", "seg_to_instances"),
        ("+", "Voxel-wise arithmetic"),
        (">", "comparison into a 0/1 mask"),
        (
            "save_csv",
            "save_csv(rows: Array, path: String, columns: Array)",
        ),
    ] {
        let out = Command::new(detlab())
            .args(["help", name])
            .output()
            .unwrap();
        let text = expect_ok(&out, &format!("detlab help {name}"));
        assert!(text.contains(expected), "help {name}: {text}");
    }
}

#[test]
fn predict_prints_a_line_per_case_unless_progress_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("p.rhai");
    std::fs::write(
        &script,
        r#"let ds = synthetic_dataset("data", #{cases: 2, test_cases: 2, seed: 0, shape: [24, 24, 24], spacing: [1.0, 1.0, 1.0], min_lesions: 1, max_lesions: 1, size_range_mm: [4.0, 6.0], vessels: 0, blobs: 0});
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 16, head_channels: 16, seed: 0});
let preds = predict(model, pre, #{split: "test", tta: false, patch_size: [16, 16, 16], progress: ARGS.progress});
print(`predicted ${preds.len()}`);
"#,
    )
    .unwrap();
    let out = run_script(&script, &[("progress", "true".into())], tmp.path());
    expect_ok(&out, "predict with progress");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = lines_starting(&err, "case ");
    assert_eq!(lines.len(), 2, "{err}");
    for (i, line) in lines.iter().enumerate() {
        let prefix = format!("case {}/2 ", i + 1);
        assert!(
            line.starts_with(&prefix) && line.contains(" tiles, ") && line.ends_with(" s"),
            "{err}"
        );
    }
    let out = run_script(&script, &[("progress", "false".into())], tmp.path());
    expect_ok(&out, "predict without progress");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(lines_starting(&err, "case ").is_empty(), "{err}");
}

#[test]
fn ctrl_c_stops_a_sweep_instead_of_failing_the_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("sweep_forever.rhai");
    std::fs::write(
        &script,
        "import \"sweep\" as sweep;\nsweep::run(#{n: [1, 2]}, \"cells\", |p| { let i = 0; loop { i += 1; } });\n",
    )
    .unwrap();
    let child = Command::new(detlab())
        .arg("run")
        .arg(&script)
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{text}{err}");
    assert!(err.contains("interrupted by Ctrl-C"), "{err}");
    assert_eq!(
        text, "cell 1/2 n=1: running\n",
        "no failed row, no next cell"
    );
    assert!(!tmp.path().join("cells").exists(), "nothing cached");
}
