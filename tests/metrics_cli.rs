//! End-to-end tests of `detlab eval` through the built binary.

use detlab::metrics::io::{PredictionFile, parse_json_exact};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

const FIXTURE: &str = include_str!("fixtures/metrics/cross_checked.json");

fn detlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detlab"))
        .arg("eval")
        .args(args)
        .output()
        .expect("the detlab binary runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_json_exact(&String::from_utf8_lossy(&out.stdout)).expect("stdout is one JSON object")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fixture case converted to `detlab eval`'s input format.
fn input_of(case: &Value, classes: &Value) -> Value {
    let cases: Vec<Value> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, im)| {
            json!({
                "id": format!("img{i}"),
                "gt": {"boxes": im["gt_boxes"], "classes": im["gt_classes"]},
                "pred": {"boxes": im["pred_boxes"], "scores": im["pred_scores"], "classes": im["pred_classes"]},
            })
        })
        .collect();
    json!({"classes": classes, "cases": cases})
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[test]
fn eval_prints_the_nndetection_values_of_the_fixture() {
    let fx = parse_json_exact(FIXTURE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("AP@0.1", "AP_IoU_0.10_MaxDet_100", "nnDetection"),
        ("AP@0.5", "AP_IoU_0.50_MaxDet_100", "nnDetection"),
        (
            "mAP@0.1:0.5",
            "mAP_IoU_0.10_0.50_0.05_MaxDet_100",
            "nnDetection",
        ),
        // Per-class keys start with the class names of the input (`c0`, `c1`).
        ("c0_AP@0.1", "c0_AP_IoU_0.10_MaxDet_100", "nnDetection"),
        ("c1_AP@0.1", "c1_AP_IoU_0.10_MaxDet_100", "nnDetection"),
        ("FROC@0.1", "FROC_score_IoU_0.10", "reference"),
    ];
    for case in fx["cases"].as_array().unwrap() {
        let input = dir.path().join("input.json");
        let out_file = dir.path().join("result.json");
        write(&input, &input_of(case, &fx["classes"]));
        let out = detlab(&[input.to_str().unwrap(), "--out", out_file.to_str().unwrap()]);
        let got = stdout_json(&out);
        for (fk, key, block) in keys {
            let expected = case["expected"][block][fk].as_f64().unwrap();
            let value = got[key].as_f64().unwrap_or_else(|| panic!("missing {key}"));
            assert!(
                (value - expected).abs() <= 1e-7,
                "{} {key}: {value} vs {expected}",
                case["name"]
            );
        }
        let curve = got["FROC_curve_IoU_0.10"].as_array().unwrap();
        let expected = case["expected"]["reference"]["FROCcurve@0.1"]
            .as_array()
            .unwrap();
        assert_eq!(curve.len(), 7);
        assert_eq!(curve.len(), expected.len(), "{}", case["name"]);
        for (a, b) in curve.iter().zip(expected) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-7);
        }
        for key in [
            "c0_FROC_score_IoU_0.10",
            "c1_FROC_score_IoU_0.10",
            "FROC_score_IoU_0.50",
            "c0_mAP_IoU_0.10_0.50_0.05_MaxDet_100",
        ] {
            assert!(got.get(key).is_some(), "missing {key}");
        }
        // nnDetection's own numbers bit for bit (the fixture was made under numpy 2).
        let exact = stdout_json(&detlab(&[
            input.to_str().unwrap(),
            "--numpy2-precision",
            "--nndetection-froc-rounding",
        ]));
        for (fk, key, _) in keys {
            let expected = case["expected"]["nnDetection"][fk].as_f64().unwrap();
            assert_eq!(
                exact[key].as_f64(),
                Some(expected),
                "{} {key} with --numpy2-precision",
                case["name"]
            );
        }
        // Indices instead of names.
        let indexed = stdout_json(&detlab(&[input.to_str().unwrap(), "--class-keys", "index"]));
        assert_eq!(
            indexed["0_AP_IoU_0.10_MaxDet_100"],
            got["c0_AP_IoU_0.10_MaxDet_100"]
        );
        assert!(indexed.get("c0_AP_IoU_0.10_MaxDet_100").is_none());
        // --out holds the same object.
        assert_eq!(
            parse_json_exact(&std::fs::read_to_string(&out_file).unwrap()).unwrap(),
            got
        );
    }
}

#[test]
fn eval_options_change_thresholds_max_det_and_empty_classes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    // Class 1 has a prediction but no GT.
    write(
        &input,
        &json!({"cases": [{"id": "a",
            "gt": {"boxes": [[0, 0, 0, 2, 2, 2]], "classes": [0]},
            "pred": {"boxes": [[0, 0, 0, 2, 2, 2], [9, 9, 9, 11, 11, 11]], "scores": [0.9, 0.8], "classes": [0, 1]}}]}),
    );
    let got = stdout_json(&detlab(&[
        input.to_str().unwrap(),
        "--iou",
        "0.3,0.7",
        "--max-det",
        "5",
    ]));
    assert_eq!(got["AP_IoU_0.30_MaxDet_5"].as_f64(), Some(0.0));
    assert_eq!(got["1_AP_IoU_0.70_MaxDet_5"].as_f64(), Some(-1.0));
    assert!(
        got.get("FROC_score_IoU_0.70").is_some() && got.get("AP_IoU_0.10_MaxDet_100").is_none()
    );
    let skipped = stdout_json(&detlab(&[input.to_str().unwrap(), "--skip-empty-classes"]));
    assert_eq!(skipped["AP_IoU_0.10_MaxDet_100"].as_f64(), Some(1.0));
}

#[test]
fn nndetection_froc_rounding_is_a_flag() {
    // 7 images, 25 FPs; the TP comes right after the 7th FP: a vertical step at FPPI 1, where
    // nnDetection's fpr·25/7 = 1.0000000000000002 reads the lower end.
    let cube = |o: f64| json!([o, o, o, o + 2.0, o + 2.0, o + 2.0]);
    let mut boxes = vec![cube(0.0)];
    let mut scores = vec![json!(0.9)];
    for i in 0..25 {
        boxes.push(cube(100.0 + 5.0 * i as f64));
        scores.push(json!(if i < 7 {
            0.99 - 0.01 * i as f64
        } else {
            0.5 - 0.01 * i as f64
        }));
    }
    let mut cases = vec![json!({"id": "a",
        "gt": {"boxes": [cube(0.0), cube(10.0)], "classes": [0, 0]},
        "pred": {"boxes": boxes, "scores": scores, "classes": vec![0; 26]}})];
    cases.extend((1..7).map(|i| json!({"id": format!("empty{i}")})));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("step.json");
    write(&input, &json!({"cases": cases}));
    let curve = |args: &[&str]| {
        let mut all = vec![input.to_str().unwrap()];
        all.extend_from_slice(args);
        stdout_json(&detlab(&all))["FROC_curve_IoU_0.10"].clone()
    };
    assert_eq!(curve(&[]), json!([0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]));
    assert_eq!(
        curve(&["--nndetection-froc-rounding"]),
        json!([0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    );
}

#[test]
fn class_names_of_a_file_must_be_distinct_for_named_keys() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("twins.json");
    write(
        &input,
        &json!({"classes": ["nodule", "nodule"], "cases": [{"id": "a",
            "gt": {"boxes": [[0, 0, 0, 2, 2, 2]], "classes": [1]}}]}),
    );
    let out = detlab(&[input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("classes 0 and 1 are both named 'nodule': use --class-keys index"),
        "{}",
        stderr(&out)
    );
    let got = stdout_json(&detlab(&[input.to_str().unwrap(), "--class-keys", "index"]));
    assert_eq!(got["1_AP_IoU_0.10_MaxDet_100"].as_f64(), Some(0.0));
}

#[test]
fn bad_input_is_an_error_naming_case_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.json");
    let cases: [(&str, &[&str]); 7] = [
        (
            r#"{"cases": [{"id": "c1", "gt": {"boxes": [[0,0,0,1,1]], "classes": [0]}}]}"#,
            &["c1", "gt.boxes[0]", "6 numbers"],
        ),
        (
            r#"{"cases": [{"id": "c2", "gt": {"boxes": [[0,0,3,1,1,1]], "classes": [0]}}]}"#,
            &["c2", "gt.boxes[0]", "min > max"],
        ),
        (
            r#"{"cases": [{"id": "c3", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [NaN], "classes": [0]}}]}"#,
            &["c3", "pred.scores[0]", "not finite"],
        ),
        (
            r#"{"classes": ["x"], "cases": [{"id": "c4", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [0.5], "classes": [1]}}]}"#,
            &["c4", "pred.classes[0]", "out of range"],
        ),
        (
            r#"{"cases": [{"id": "c5", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [0.5, 0.4], "classes": [0]}}]}"#,
            &["c5", "pred.scores", "2 scores for 1 boxes"],
        ),
        (
            r#"{"cases": [{"id": "c6", "gt": {"boxes": [[0,0,0,1,1,1]], "classes": []}}]}"#,
            &["c6", "gt.classes", "0 classes for 1 boxes"],
        ),
        (
            r#"{"cases": [{"id": "c7", "pred": {"box": []}}]}"#,
            &["c7", "pred.box", "unknown field"],
        ),
    ];
    for (text, needles) in cases {
        std::fs::write(&input, text).unwrap();
        let out = detlab(&[input.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let e = stderr(&out);
        for n in needles {
            assert!(e.contains(n), "'{n}' not in: {e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    }
    let out = detlab(&[dir.path().join("missing.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.json"));
    std::fs::write(&input, "{\"cases\": [").unwrap();
    let out = detlab(&[input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_with_code_2() {
    assert_eq!(detlab(&[]).status.code(), Some(2));
    assert_eq!(
        detlab(&[
            "a.json",
            "--luna",
            "x.csv",
            "--candidates",
            "y.csv",
            "--seriesuids",
            "z.csv"
        ])
        .status
        .code(),
        Some(2)
    );
    // --dataset needs --predictions (clap).
    assert_eq!(detlab(&["--dataset", "d"]).status.code(), Some(2));
}

#[test]
fn luna_mode_reproduces_the_official_cpm() {
    let fx = parse_json_exact(FIXTURE).unwrap();
    let case = &fx["luna16"]["cases"][0];
    let dir = tempfile::tempdir().unwrap();
    let csv = |name: &str, key: &str, last: &str| {
        let mut text = format!("seriesuid,coordX,coordY,coordZ,{last}\n");
        for r in case[key].as_array().unwrap() {
            let r = r.as_array().unwrap();
            text += &format!(
                "{},{:?},{:?},{:?},{:?}\n",
                r[0].as_str().unwrap(),
                r[1].as_f64().unwrap(),
                r[2].as_f64().unwrap(),
                r[3].as_f64().unwrap(),
                r[4].as_f64().unwrap()
            );
        }
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ann = csv("annotations.csv", "annotations", "diameter_mm");
    let excl = csv("excluded.csv", "annotations_excluded", "diameter_mm");
    let cands = csv("candidates.csv", "candidates", "probability");
    let uids = dir.path().join("uids.csv");
    let list: Vec<&str> = case["seriesuids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    std::fs::write(&uids, list.join("\n") + "\n").unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let out = detlab(&[
        "--luna",
        &p(&ann),
        "--excluded",
        &p(&excl),
        "--candidates",
        &p(&cands),
        "--seriesuids",
        &p(&uids),
    ]);
    let got = stdout_json(&out);
    assert_eq!(got["cpm"], case["expected_official"]["cpm"]);
    assert_eq!(
        got["sens_at_fppi"],
        case["expected_official"]["sens_at_fppi"]
    );
    assert_eq!(got["num_scans"], 30);
    // A malformed row names file, line and column.
    std::fs::write(
        &cands,
        "seriesuid,coordX,coordY,coordZ,probability\n1.2.3,0,0,zero,0.5\n",
    )
    .unwrap();
    let out = detlab(&[
        "--luna",
        &p(&ann),
        "--candidates",
        &p(&cands),
        "--seriesuids",
        &p(&uids),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("candidates.csv") && e.contains("line 2") && e.contains("coordZ"),
        "{e}"
    );
}

#[test]
fn dataset_mode_reads_instance_masks_and_prediction_files() {
    use detlab::volume::{NiftiDtype, Volume, write_nifti};
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labelsTr");
    let preds = dir.path().join("predictions");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::create_dir_all(&preds).unwrap();
    // One 16³ case with two instances: id 1 (class 0) at voxels d 2..=4, h 3..=5, w 4..=6;
    // id 2 (class 1) at a single voxel (10, 10, 10).
    let mut data = ndarray::Array4::<f32>::zeros((1, 16, 16, 16));
    for d in 2..=4 {
        for h in 3..=5 {
            for w in 4..=6 {
                data[[0, d, h, w]] = 1.0;
            }
        }
    }
    data[[0, 10, 10, 10]] = 2.0;
    write_nifti(
        &Volume::from_array(data, [1.0, 1.0, 1.0]),
        &labels.join("case_0.nii.gz"),
        NiftiDtype::U8,
    )
    .unwrap();
    std::fs::write(
        labels.join("case_0.json"),
        r#"{"instances": {"1": 0, "2": 1}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dataset.json"),
        r#"{"task": "Task000_Test", "labels": {"0": "a", "1": "b"}}"#,
    )
    .unwrap();
    // nnDetection's (min - 1, max + 1) boxes, predicted exactly.
    let file = PredictionFile {
        case: "case_0".into(),
        boxes: vec![
            [1.0, 2.0, 3.0, 5.0, 6.0, 7.0],
            [9.0, 9.0, 9.0, 11.0, 11.0, 11.0],
        ],
        boxes_mm: None,
        scores: vec![0.9, 0.8],
        classes: vec![0, 1],
        spacing: [1.0, 1.0, 1.0],
        shape: [16, 16, 16],
    };
    file.write(&preds.join("case_0.json")).unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let got = stdout_json(&detlab(&[
        "--dataset",
        &p(dir.path()),
        "--predictions",
        &p(&preds),
        "--iou",
        "0.9",
    ]));
    assert_eq!(got["AP_IoU_0.90_MaxDet_100"].as_f64(), Some(1.0));
    assert_eq!(got["FROC_num_gt"].as_u64(), Some(2));
    // Per-class keys by the dataset's label names.
    assert_eq!(got["a_AP_IoU_0.90_MaxDet_100"].as_f64(), Some(1.0));
    assert_eq!(got["b_AP_IoU_0.90_MaxDet_100"].as_f64(), Some(1.0));
    assert!(got.get("0_AP_IoU_0.90_MaxDet_100").is_none());
    // A prediction for a case the dataset does not have.
    let stray = PredictionFile {
        case: "case_9".into(),
        ..file
    };
    stray.write(&preds.join("case_9.json")).unwrap();
    let out = detlab(&["--dataset", &p(dir.path()), "--predictions", &p(&preds)]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("case_9") && e.contains("unknown case"), "{e}");
}
