//! What detlab rejects: one table, each row a bad input a user can make, run through the CLI
//! (`detlab run` / `detlab eval`) and through the script API in-process (`Interpreter`).
//!
//! Every row must give a clear error that names the file it read (and the field, case or
//! script line where one applies), no panic, and nothing written. Read the table as
//! documentation: `what` says what is wrong, `expect` what the error names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use detlab::script::Interpreter;
use detlab::volume::nifti::{NiftiDtype, read_nifti, write_nifti};

/// How a row is run from the command line.
enum Cli {
    /// `detlab run bad.rhai --set dir=DIR` with the row's script.
    Script,
    /// `detlab eval ARGS...` (`{dir}` is replaced by the row's folder).
    Eval(&'static [&'static str]),
}

struct Row {
    /// What is wrong.
    what: &'static str,
    /// Damage done to a copy of a valid dataset (with a trained run and saved models).
    setup: fn(&Path),
    /// The script (the script API, and the CLI's `detlab run`); `ARGS.dir` is the folder.
    script: &'static str,
    /// The command-line form.
    cli: Cli,
    /// What the error must name (each string must appear); `{dir}` is the row's folder.
    expect: &'static [&'static str],
}

const TABLE: &[Row] = &[
    Row {
        what: "image and label shapes differ",
        setup: |d| {
            relabel(d, "case0000", |v| {
                v.data.slice_axis_inplace(ndarray::Axis(1), (0..20).into())
            })
        },
        script: "dataset(ARGS.dir + \"/ds\");",
        cli: Cli::Script,
        expect: &["labelsTr/case0000.nii.gz", "shape", "bad.rhai:1"],
    },
    Row {
        what: "affines differ between the channels of one case",
        setup: |d| {
            set_modalities(d, r#"{"0": "CT", "1": "CT"}"#);
            for case in ["case0000", "case0001"] {
                let image = d.join(format!("ds/raw_splitted/imagesTr/{case}_0000.nii.gz"));
                let mut v = read_nifti(&image).unwrap();
                if case == "case0000" {
                    v.affine[0][3] += 5.0;
                }
                let second = d.join(format!("ds/raw_splitted/imagesTr/{case}_0001.nii.gz"));
                write_nifti(&v, &second, NiftiDtype::F32).unwrap();
            }
        },
        script: "dataset(ARGS.dir + \"/ds\");",
        cli: Cli::Script,
        expect: &["case0000_0001.nii.gz", "affine"],
    },
    Row {
        what: "instance ids that are not consecutive, and a JSON that lists another id",
        setup: |d| {
            relabel(d, "case0001", |v| {
                v.data.mapv_inplace(|x| if x == 2.0 { 3.0 } else { x })
            });
        },
        script: "dataset(ARGS.dir + \"/ds\");",
        cli: Cli::Script,
        expect: &["labelsTr/case0001.json", "[3]", "[2]"],
    },
    Row {
        what: "a label file without its JSON",
        setup: |d| std::fs::remove_file(d.join("ds/raw_splitted/labelsTr/case0000.json")).unwrap(),
        script: "dataset(ARGS.dir + \"/ds\");",
        cli: Cli::Script,
        expect: &["case0000.json"],
    },
    Row {
        what: "a dataset.json without a required key (`modalities`)",
        setup: |d| {
            edit_json(&d.join("ds/dataset.json"), |v| {
                v.as_object_mut().unwrap().remove("modalities");
            })
        },
        script: "dataset(ARGS.dir + \"/ds\");",
        cli: Cli::Script,
        expect: &["dataset.json", "modalities"],
    },
    Row {
        what: "a prediction file with a missing key (`scores`)",
        setup: |d| {
            prediction(d, |v| {
                v.as_object_mut().unwrap().remove("scores");
            })
        },
        script: "evaluate(ARGS.dir + \"/pred\", dataset(ARGS.dir + \"/ds\"));",
        cli: Cli::Eval(&[
            "--dataset",
            "{dir}/ds/raw_splitted",
            "--predictions",
            "{dir}/pred",
        ]),
        expect: &["pred/case0000.json", "scores"],
    },
    Row {
        what: "a prediction file with an extra key",
        setup: |d| {
            prediction(d, |v| {
                v.as_object_mut().unwrap().insert("score".into(), 1.into());
            })
        },
        script: "evaluate(ARGS.dir + \"/pred\", dataset(ARGS.dir + \"/ds\"));",
        cli: Cli::Eval(&[
            "--dataset",
            "{dir}/ds/raw_splitted",
            "--predictions",
            "{dir}/pred",
        ]),
        expect: &["pred/case0000.json", "score"],
    },
    Row {
        what: "a `detlab eval` input with a bad box (the error names the file, case and field)",
        setup: |d| {
            std::fs::write(
                d.join("eval.json"),
                r#"{"cases": [{"id": "c1", "gt": {"boxes": [[0, 0, 0, 4, 4, 4]], "classes": [0]},
                "pred": {"boxes": [[4, 4, 4, 0, 0, 0]], "scores": [0.5], "classes": [0]}}]}"#,
            )
            .unwrap()
        },
        script: "",
        cli: Cli::Eval(&["{dir}/eval.json"]),
        expect: &["eval.json", "c1", "pred.boxes[0]"],
    },
    Row {
        what: "a dataset with 0 training cases",
        setup: |d| {
            for sub in ["imagesTr", "labelsTr"] {
                let dir = d.join("ds/raw_splitted").join(sub);
                std::fs::remove_dir_all(&dir).unwrap();
                std::fs::create_dir(&dir).unwrap();
            }
        },
        script: "preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});",
        cli: Cli::Script,
        expect: &["imagesTr", "bad.rhai:1"],
    },
    Row {
        what: "a patch larger than every case (on every axis)",
        setup: preprocessed,
        script: concat!(
            "let pre = preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});\n",
            "let model = detector(\"retina_unet\", backbone(\"retunet_tiny\"), #{num_classes: 1});\n",
            "train(model, pre, #{epochs: 1, iters_per_epoch: 1, batch: 1, patch: [64, 64, 64], out: ARGS.dir + \"/run2\"});"
        ),
        cli: Cli::Script,
        expect: &["patch", "[64, 64, 64]", "every case", "bad.rhai:3"],
    },
    Row {
        what: "`num_classes` that disagrees with the data",
        setup: preprocessed,
        script: concat!(
            "let pre = preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});\n",
            "let model = detector(\"retina_unet\", backbone(\"retunet_tiny\"), #{num_classes: 3});\n",
            "train(model, pre, #{epochs: 1, iters_per_epoch: 1, batch: 1, patch: [16, 16, 16], out: ARGS.dir + \"/run2\"});"
        ),
        cli: Cli::Script,
        expect: &["num_classes", "3", "bad.rhai:3"],
    },
    Row {
        what: "a checkpoint from another architecture",
        setup: |d| {
            std::fs::copy(d.join("wide/weights.mpk"), d.join("model/weights.mpk")).unwrap();
        },
        script: "load_model(ARGS.dir + \"/model\");",
        cli: Cli::Script,
        expect: &["model/weights.mpk", "does not fit", "bad.rhai:1"],
    },
    Row {
        what: "a checkpoint from a newer format version",
        setup: |d| {
            edit_json(&d.join("run/last/state.json"), |v| {
                v["format_version"] = 2.into()
            })
        },
        script: "load_model(ARGS.dir + \"/run\");",
        cli: Cli::Script,
        expect: &["run/last/state.json", "version 2"],
    },
    Row {
        what: "a script that calls `train` with an option of the wrong type",
        setup: preprocessed,
        script: concat!(
            "let pre = preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});\n",
            "let model = detector(\"retina_unet\", backbone(\"retunet_tiny\"), #{num_classes: 1});\n",
            "train(model, pre, #{lr: \"0.1\", out: ARGS.dir + \"/run2\"});"
        ),
        cli: Cli::Script,
        expect: &["bad.rhai:3", "`lr`", "String"],
    },
    Row {
        what: "an output folder on a path where nothing can be written",
        setup: preprocessed,
        script: concat!(
            "let pre = preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});\n",
            "let model = detector(\"retina_unet\", backbone(\"retunet_tiny\"), #{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 8});\n",
            "train(model, pre, #{epochs: 1, iters_per_epoch: 1, batch: 1, patch: [16, 16, 16], val_patches: 1, out: \"/proc/detlab/run\"});"
        ),
        cli: Cli::Script,
        expect: &["/proc/detlab", "bad.rhai:3"],
    },
    Row {
        what: "a `detlab eval` result file on a path where nothing can be written",
        setup: |d| {
            std::fs::write(
                d.join("eval.json"),
                r#"{"cases": [{"id": "c1", "gt": {"boxes": [[0, 0, 0, 4, 4, 4]], "classes": [0]},
                "pred": {"boxes": [[0, 0, 0, 4, 4, 4]], "scores": [0.5], "classes": [0]}}]}"#,
            )
            .unwrap()
        },
        script: "",
        cli: Cli::Eval(&["{dir}/eval.json", "--out", "/proc/detlab/metrics.json"]),
        expect: &["/proc/detlab/metrics.json"],
    },
];

/// A valid dataset (two 24³ cases, preprocessed), a one-iteration training run, a saved model
/// and a saved model of another width: built once, copied for every row.
fn template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bad_input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("make.rhai");
        std::fs::write(
            &script,
            r#"
let ds = synthetic_dataset(ARGS.dir + "/ds", #{cases: 2, test_cases: 0, seed: 1, shape: [24, 24, 24]});
let pre = preprocess(ds, #{spacing: [1.0, 1.0, 1.0]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 8});
train(model, pre, #{epochs: 1, iters_per_epoch: 1, batch: 1, patch: [16, 16, 16], val_patches: 1, out: ARGS.dir + "/run"});
save_model(model, ARGS.dir + "/model");
save_model(detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 16, head_channels: 16}), ARGS.dir + "/wide");
"#,
        )
        .unwrap();
        let out = common::run_script(&script, &[("dir", dir.display().to_string())], &dir);
        common::expect_ok(&out, "the template");
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Preprocess the copied dataset as the rows' scripts do, so that their `preprocess` reuses
/// the cache (the copy has new paths and times, so the template's cache is stale) and only the
/// failing step is left to write nothing.
fn preprocessed(d: &Path) {
    let script = d.join("preprocess.rhai");
    std::fs::write(
        &script,
        "preprocess(dataset(ARGS.dir + \"/ds\"), #{spacing: [1.0, 1.0, 1.0]});",
    )
    .unwrap();
    let mut interpreter = Interpreter::new(d.to_path_buf());
    let mut args = rhai::Map::new();
    args.insert("dir".into(), d.display().to_string().into());
    interpreter.set_args(args);
    let _ = interpreter.run_file(&script).unwrap();
}

/// The entries added, removed or modified between two snapshots.
fn changed(
    before: &[(PathBuf, u64, std::time::SystemTime)],
    after: &[(PathBuf, u64, std::time::SystemTime)],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = after
        .iter()
        .filter(|e| !before.contains(e))
        .chain(before.iter().filter(|e| !after.contains(e)))
        .map(|e| e.0.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every file and folder under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

fn relabel(d: &Path, case: &str, f: impl FnOnce(&mut detlab::volume::Volume)) {
    let path = d.join(format!("ds/raw_splitted/labelsTr/{case}.nii.gz"));
    let mut v = read_nifti(&path).unwrap();
    f(&mut v);
    write_nifti(&v, &path, NiftiDtype::from_name("uint8").unwrap()).unwrap();
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn set_modalities(d: &Path, modalities: &str) {
    let m: serde_json::Value = serde_json::from_str(modalities).unwrap();
    edit_json(&d.join("ds/dataset.json"), |v| v["modalities"] = m);
}

/// A valid prediction file `pred/case0000.json`, then `f` applied to it.
fn prediction(d: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(d.join("pred")).unwrap();
    let mut v = serde_json::json!({
        "case": "case0000", "boxes": [[1, 1, 1, 5, 5, 5]], "scores": [0.5], "classes": [0],
        "spacing": [1.0, 1.0, 1.0], "shape": [24, 24, 24]
    });
    f(&mut v);
    std::fs::write(d.join("pred/case0000.json"), v.to_string()).unwrap();
}

fn check(row: &Row, how: &str, message: &str, dir: &Path) {
    assert!(
        !message.contains("panicked"),
        "{}: {how} panicked:\n{message}",
        row.what
    );
    for e in row.expect {
        let e = e.replace("{dir}", &dir.display().to_string());
        assert!(
            message.contains(&e),
            "{}: the {how} error does not name `{e}`:\n{message}",
            row.what
        );
    }
}

#[test]
fn every_bad_input_is_refused_with_an_error_naming_it_and_nothing_written() {
    let template = template();
    for (i, row) in TABLE.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for name in ["ds", "run", "model", "wide"] {
            copy_dir(&template.join(name), &dir.join(name));
        }
        (row.setup)(dir);
        let script = dir.join("bad.rhai");
        std::fs::write(&script, row.script).unwrap();
        let before = snapshot(dir);

        // The command line.
        let mut cmd = Command::new(common::detlab());
        match row.cli {
            Cli::Script => {
                cmd.arg("run")
                    .arg(&script)
                    .args(["--set", &format!("dir={}", dir.display())]);
            }
            Cli::Eval(args) => {
                cmd.arg("eval");
                cmd.args(
                    args.iter()
                        .map(|a| a.replace("{dir}", &dir.display().to_string())),
                );
            }
        }
        let out = cmd
            .current_dir(dir)
            .env("RAYON_NUM_THREADS", "2")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "row {i} ({}): exit code; stderr:\n{stderr}",
            row.what
        );
        check(row, "CLI", &stderr, dir);
        let after = snapshot(dir);
        assert!(
            after == before,
            "row {i} ({}): the CLI wrote something: {:?}",
            row.what,
            changed(&before, &after)
        );

        // The script API, in-process.
        if !row.script.is_empty() {
            let mut interpreter = Interpreter::new(dir.to_path_buf());
            let mut args = rhai::Map::new();
            args.insert("dir".into(), dir.display().to_string().into());
            interpreter.set_args(args);
            let err = interpreter
                .run_file(&script)
                .err()
                .unwrap_or_else(|| panic!("row {i} ({}): the script succeeded", row.what));
            check(row, "script API", &err.to_string(), dir);
            let after = snapshot(dir);
            assert!(
                after == before,
                "row {i} ({}): the script wrote something: {:?}",
                row.what,
                changed(&before, &after)
            );
        }
    }
}
