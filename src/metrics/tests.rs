//! Tests of the metrics module against independently computed values and hand-made edge cases.

use super::*;
use crate::volume::boxes::Box3;
use proptest::prelude::*;
use serde_json::Value;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/metrics/cross_checked.json"
));

fn fixture() -> Value {
    // Exact number parsing: serde_json's default parser can be one ulp off.
    io::parse_json_exact(FIXTURE).unwrap()
}

fn boxes(v: &Value) -> Vec<Box3> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            crate::volume::boxes::validate(
                &b.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        })
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn fixture_case(case: &Value) -> (Vec<ImageGt>, Vec<ImagePred>) {
    let mut gt = Vec::new();
    let mut pred = Vec::new();
    for im in case["images"].as_array().unwrap() {
        gt.push(ImageGt {
            boxes: boxes(&im["gt_boxes"]),
            classes: usizes(&im["gt_classes"]),
        });
        pred.push(ImagePred {
            boxes: boxes(&im["pred_boxes"]),
            scores: im["pred_scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
            classes: usizes(&im["pred_classes"]),
        });
    }
    (gt, pred)
}

/// Fixture key → detlab key.
const KEYS: [(&str, &str); 6] = [
    ("AP@0.1", "AP_IoU_0.10_MaxDet_100"),
    ("AP@0.5", "AP_IoU_0.50_MaxDet_100"),
    ("mAP@0.1:0.5", "mAP_IoU_0.10_0.50_0.05_MaxDet_100"),
    ("FROC@0.1", "FROC_score_IoU_0.10"),
    ("c0_AP@0.1", "0_AP_IoU_0.10_MaxDet_100"),
    ("c1_AP@0.1", "1_AP_IoU_0.10_MaxDet_100"),
];

fn check_fixture(cfg: &EvalConfig, tolerance: f64) -> f64 {
    let fx = fixture();
    let mut worst = 0.0f64;
    for case in fx["cases"].as_array().unwrap() {
        let (gt, pred) = fixture_case(case);
        let cfg = EvalConfig {
            num_classes: Some(fx["classes"].as_array().unwrap().len()),
            ..cfg.clone()
        };
        let report = evaluate(&gt, &pred, &cfg).unwrap();
        let name = case["name"].as_str().unwrap();
        for (fk, key) in KEYS {
            // FROC: the independent reference (nnDetection's float FPPI can differ on a step).
            let block = if fk.starts_with("FROC") {
                "reference"
            } else {
                "nnDetection"
            };
            let expected = case["expected"][block][fk].as_f64().unwrap();
            let got = report.get(key).unwrap();
            let diff = (got - expected).abs();
            worst = worst.max(diff);
            assert!(
                diff <= tolerance,
                "{name} {key}: got {got:e}, expected {expected:e} (diff {diff:e})"
            );
        }
        let curve = &report.froc_curves["FROC_curve_IoU_0.10"].grid_sensitivity;
        let expected: Vec<f64> = case["expected"]["reference"]["FROCcurve@0.1"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(
            curve.len(),
            expected.len(),
            "{name} FROC curve: {curve:?} vs {expected:?}"
        );
        for (g, e) in curve.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= tolerance,
                "{name} FROC curve: {curve:?} vs {expected:?}"
            );
        }
    }
    worst
}

#[test]
fn fixture_values_of_nndetection_are_reproduced_with_float32_precision() {
    // The fixture was produced under numpy 2 (f64 precision); f32 agrees to ~1e-8.
    let worst = check_fixture(&EvalConfig::default(), 1e-7);
    assert!(
        worst > 0.0,
        "f32 precision should differ from the numpy-2 values somewhere"
    );
}

#[test]
fn fixture_values_are_reproduced_bit_for_bit_with_numpy2_precision() {
    let cfg = EvalConfig {
        numpy2_precision: true,
        ..EvalConfig::default()
    };
    assert_eq!(check_fixture(&cfg, 0.0), 0.0);
}

#[test]
fn fixture_luna16_cpm_matches_the_official_script() {
    let fx = fixture();
    let case = &fx["luna16"]["cases"][0];
    let rows = |key: &str| -> Vec<(String, [f64; 3], f64)> {
        case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_string(),
                    [
                        r[1].as_f64().unwrap(),
                        r[2].as_f64().unwrap(),
                        r[3].as_f64().unwrap(),
                    ],
                    r[4].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let ann = |key: &str| {
        rows(key)
            .into_iter()
            .map(|(seriesuid, center, diameter_mm)| luna::LunaAnnotation {
                seriesuid,
                center,
                diameter_mm,
            })
            .collect::<Vec<_>>()
    };
    let candidates: Vec<_> = rows("candidates")
        .into_iter()
        .map(|(seriesuid, center, probability)| luna::LunaCandidate {
            seriesuid,
            center,
            probability,
        })
        .collect();
    let uids: Vec<String> = case["seriesuids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    let r = luna::cpm(
        &uids,
        &ann("annotations"),
        &ann("annotations_excluded"),
        &candidates,
        &luna::CpmConfig::default(),
    )
    .unwrap();
    let expected = &case["expected_official"];
    assert_eq!(r.cpm, expected["cpm"].as_f64().unwrap());
    let sens: Vec<f64> = expected["sens_at_fppi"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(r.sensitivities, sens);
    assert_eq!(
        (
            r.num_scans,
            r.num_nodules,
            r.num_detected,
            r.num_false_positives
        ),
        (30, 59, 48, 94)
    );
}

fn cube(x: f64, size: f64) -> Box3 {
    [x, 0.0, 0.0, x + size, size, size]
}

fn one_class_report(gt: Vec<ImageGt>, pred: Vec<ImagePred>, cfg: EvalConfig) -> MetricReport {
    evaluate(&gt, &pred, &cfg).unwrap()
}

#[test]
fn float32_recall_misses_an_exact_recall_point() {
    // 9 TP of G = 10, then a FP, then the 10th TP. In f32, 9/10 = 0.899999976 < 0.9, so the
    // recall point 0.90 reads the precision after the 10th TP (10/11) instead of 1.
    // (7 of 10 does not show it: the grid point 0.70 is 0.7000000000000001 in f64.)
    let gt = ImageGt {
        boxes: (0..10).map(|i| cube(10.0 * i as f64, 2.0)).collect(),
        classes: vec![0; 10],
    };
    let mut pboxes: Vec<Box3> = (0..9).map(|i| cube(10.0 * i as f64, 2.0)).collect();
    pboxes.push(cube(500.0, 2.0));
    pboxes.push(cube(90.0, 2.0));
    let mut scores: Vec<f64> = (0..9).map(|i| 0.99 - 0.01 * i as f64).collect();
    scores.extend([0.5, 0.4]);
    let pred = ImagePred {
        boxes: pboxes,
        scores,
        classes: vec![0; 11],
    };
    let f32_report = one_class_report(vec![gt.clone()], vec![pred.clone()], EvalConfig::default());
    // Value of the numpy < 2 reimplementation (benches/eval_numpy_reimplementation.py).
    assert_eq!(
        f32_report.get("AP_IoU_0.10_MaxDet_100").unwrap(),
        0.9900990128517151
    );
    let pr = &f32_report.pr_curves["0_PR_curve_IoU_0.10"];
    assert_eq!(pr.grid_precision[89], 1.0);
    assert_eq!(pr.grid_precision[90], (10.0f32 / 11.0f32) as f64);
    // In f64 the 9th TP reaches 0.90 exactly: the AP differs by ~9e-4.
    let f64_ap = (91.0 + 10.0 * (10.0f32 / 11.0f32) as f64) / 101.0;
    assert!((f64_ap - 0.9900990128517151).abs() > 5e-4);
}

#[test]
fn ties_across_images_are_resolved_in_image_order_for_ap_but_not_froc() {
    let fp_image = (
        ImageGt::default(),
        ImagePred {
            boxes: vec![cube(50.0, 2.0)],
            scores: vec![0.5],
            classes: vec![0],
        },
    );
    let tp_image = (
        ImageGt {
            boxes: vec![cube(0.0, 2.0)],
            classes: vec![0],
        },
        ImagePred {
            boxes: vec![cube(0.0, 2.0)],
            scores: vec![0.5],
            classes: vec![0],
        },
    );
    let run = |images: Vec<(ImageGt, ImagePred)>| {
        let (gt, pred): (Vec<_>, Vec<_>) = images.into_iter().unzip();
        one_class_report(gt, pred, EvalConfig::default())
    };
    let fp_first = run(vec![fp_image.clone(), tp_image.clone()]);
    let tp_first = run(vec![tp_image, fp_image]);
    // FP first: precision 0 then 1/2; the envelope gives 1/2 everywhere.
    assert_eq!(fp_first.get("AP_IoU_0.10_MaxDet_100").unwrap(), 0.5);
    assert_eq!(tp_first.get("AP_IoU_0.10_MaxDet_100").unwrap(), 1.0);
    assert_eq!(
        fp_first.get("FROC_score_IoU_0.10"),
        tp_first.get("FROC_score_IoU_0.10")
    );
}

#[test]
fn only_the_top_max_det_predictions_per_image_and_class_count() {
    // 100 FPs at 0.9 and the only TP at 0.1: with max_det 100 the TP is dropped.
    let gt = ImageGt {
        boxes: vec![cube(0.0, 2.0)],
        classes: vec![0],
    };
    let mut boxes: Vec<Box3> = (0..100)
        .map(|i| cube(100.0 + 3.0 * i as f64, 2.0))
        .collect();
    boxes.push(cube(0.0, 2.0));
    let mut scores = vec![0.9; 100];
    scores.push(0.1);
    let pred = ImagePred {
        boxes,
        scores,
        classes: vec![0; 101],
    };
    let capped = one_class_report(vec![gt.clone()], vec![pred.clone()], EvalConfig::default());
    assert_eq!(capped.get("AP_IoU_0.10_MaxDet_100").unwrap(), 0.0);
    // Detections but no TP: NaN FROC (nnDetection), 0 when asked.
    assert!(capped.get("FROC_score_IoU_0.10").unwrap().is_nan());
    let zero = one_class_report(
        vec![gt.clone()],
        vec![pred.clone()],
        EvalConfig {
            froc_nan_without_tp: false,
            ..EvalConfig::default()
        },
    );
    assert_eq!(zero.get("FROC_score_IoU_0.10").unwrap(), 0.0);
    assert_eq!(
        capped.froc_curves["FROC_curve_IoU_0.10"].num_detections,
        100
    );
    let all = one_class_report(
        vec![gt],
        vec![pred],
        EvalConfig {
            max_det: 101,
            ..EvalConfig::default()
        },
    );
    // The TP is the 101st detection: precision 1/101 from recall 0 to 1.
    let p = (1.0f32 / 101.0f32) as f64;
    assert_eq!(
        all.get("AP_IoU_0.10_MaxDet_101").unwrap(),
        numeric::mean(&[p; 101])
    );
    // 100 FPs on 1 image: the TP arrives at FPPI 100, beyond the grid.
    assert_eq!(all.get("FROC_score_IoU_0.10").unwrap(), 0.0);
}

#[test]
fn a_class_without_gt_is_averaged_in_as_minus_one_unless_skipped() {
    let gt = vec![ImageGt {
        boxes: vec![cube(0.0, 2.0)],
        classes: vec![0],
    }];
    let pred = vec![ImagePred {
        boxes: vec![cube(0.0, 2.0), cube(20.0, 2.0)],
        scores: vec![0.9, 0.8],
        classes: vec![0, 1],
    }];
    let r = evaluate(&gt, &pred, &EvalConfig::default()).unwrap();
    assert_eq!(r.get("0_AP_IoU_0.10_MaxDet_100").unwrap(), 1.0);
    assert_eq!(r.get("1_AP_IoU_0.10_MaxDet_100").unwrap(), -1.0);
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), 0.0);
    assert_eq!(r.get("mAP_IoU_0.10_0.50_0.05_MaxDet_100").unwrap(), 0.0);
    // Class 1 has no GT: its FROC is 0 (nnDetection's `froc_score` quirk), mc_ divides by 2.
    assert_eq!(r.get("1_FROC_score_IoU_0.10").unwrap(), 0.0);
    assert_eq!(r.get("0_FROC_score_IoU_0.10").unwrap(), 1.0);
    assert_eq!(r.get("mc_FROC_score_IoU_0.10").unwrap(), 0.5);
    let skipped = evaluate(
        &gt,
        &pred,
        &EvalConfig {
            skip_empty_classes: true,
            ..EvalConfig::default()
        },
    )
    .unwrap();
    assert_eq!(skipped.get("AP_IoU_0.10_MaxDet_100").unwrap(), 1.0);
    assert_eq!(skipped.get("1_AP_IoU_0.10_MaxDet_100").unwrap(), -1.0);
    // A class beyond every index present still counts when num_classes says so.
    let three = evaluate(
        &gt,
        &pred,
        &EvalConfig {
            num_classes: Some(3),
            ..EvalConfig::default()
        },
    )
    .unwrap();
    assert_eq!(three.get("AP_IoU_0.10_MaxDet_100").unwrap(), -1.0 / 3.0);
}

#[test]
fn images_without_predictions_count_for_g_and_n_img() {
    // Image 0: a TP and a FP with the same score (a diagonal FROC segment); image 1: GT but no
    // prediction; image 2: nothing at all. N_img = 3, G = 2.
    let gt = vec![
        ImageGt {
            boxes: vec![cube(0.0, 2.0)],
            classes: vec![0],
        },
        ImageGt {
            boxes: vec![cube(0.0, 2.0)],
            classes: vec![0],
        },
        ImageGt::default(),
    ];
    let pred = vec![
        ImagePred {
            boxes: vec![cube(0.0, 2.0), cube(40.0, 2.0)],
            scores: vec![0.7, 0.7],
            classes: vec![0, 0],
        },
        ImagePred::default(),
        ImagePred::default(),
    ];
    let r = evaluate(&gt, &pred, &EvalConfig::default()).unwrap();
    let curve = &r.froc_curves["FROC_curve_IoU_0.10"];
    assert_eq!((curve.num_images, curve.num_gt), (3, 2));
    assert_eq!(curve.fppi, vec![0.0, 1.0 / 3.0]);
    assert_eq!(curve.sensitivity, vec![0.0, 0.5]);
    let expected = [0.125 * 3.0 * 0.5, 0.25 * 3.0 * 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
    assert_eq!(curve.grid_sensitivity.len(), expected.len());
    for (g, e) in curve.grid_sensitivity.iter().zip(expected) {
        assert!((g - e).abs() < 1e-15, "{:?}", curve.grid_sensitivity);
    }
    // AP: TP then FP (input order within the tie) → precision 1 up to recall 0.5.
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), 51.0 / 101.0);
}

#[test]
fn no_detections_and_no_gt() {
    let gt = vec![ImageGt {
        boxes: vec![cube(0.0, 2.0)],
        classes: vec![0],
    }];
    let r = evaluate(&gt, &[ImagePred::default()], &EvalConfig::default()).unwrap();
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), 0.0);
    assert_eq!(r.get("FROC_score_IoU_0.10").unwrap(), 0.0);
    let pred = vec![ImagePred {
        boxes: vec![cube(0.0, 2.0)],
        scores: vec![0.5],
        classes: vec![0],
    }];
    let r = evaluate(&[ImageGt::default()], &pred, &EvalConfig::default()).unwrap();
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), -1.0);
    assert_eq!(r.get("FROC_score_IoU_0.10").unwrap(), 0.0);
    let r = evaluate(&[], &[], &EvalConfig::default()).unwrap();
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), -1.0);
    assert_eq!(r.get("FROC_score_IoU_0.10").unwrap(), 0.0);
}

#[test]
fn a_gt_box_smaller_than_a_voxel_is_matched_by_iou() {
    let gt = vec![ImageGt {
        boxes: vec![[0.0, 0.0, 0.0, 0.5, 0.5, 0.5]],
        classes: vec![0],
    }];
    // IoU of the unit voxel with the half-voxel box: 0.125 / 1.
    let pred = vec![ImagePred {
        boxes: vec![[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]],
        scores: vec![0.9],
        classes: vec![0],
    }];
    let r = evaluate(&gt, &pred, &EvalConfig::default()).unwrap();
    assert_eq!(r.get("AP_IoU_0.10_MaxDet_100").unwrap(), 1.0);
    assert_eq!(r.get("AP_IoU_0.50_MaxDet_100").unwrap(), 0.0);
    let exact = vec![ImagePred {
        boxes: gt[0].boxes.clone(),
        scores: vec![0.9],
        classes: vec![0],
    }];
    assert_eq!(
        evaluate(&gt, &exact, &EvalConfig::default())
            .unwrap()
            .get("AP_IoU_0.50_MaxDet_100")
            .unwrap(),
        1.0
    );
}

#[test]
fn nndetection_froc_rounding_reads_the_lower_end_of_a_vertical_step() {
    // 7 images, 25 FPs in total; the TP comes right after the 7th FP, so the curve has a
    // vertical step at exactly FPPI 1. nnDetection's fpr·25/7 gives 1.0000000000000002 there.
    let mut gt = vec![ImageGt {
        boxes: vec![cube(0.0, 2.0), cube(10.0, 2.0)],
        classes: vec![0, 0],
    }];
    let mut boxes = vec![cube(0.0, 2.0)];
    let mut scores = vec![0.9];
    for i in 0..25 {
        boxes.push(cube(100.0 + 5.0 * i as f64, 2.0));
        scores.push(if i < 7 {
            0.99 - 0.01 * i as f64
        } else {
            0.5 - 0.01 * i as f64
        });
    }
    let mut pred = vec![ImagePred {
        classes: vec![0; boxes.len()],
        boxes,
        scores,
    }];
    gt.extend(vec![ImageGt::default(); 6]);
    pred.extend(vec![ImagePred::default(); 6]);
    let counts = evaluate(&gt, &pred, &EvalConfig::default()).unwrap();
    assert_eq!(
        counts.froc_curves["FROC_curve_IoU_0.10"].grid_sensitivity,
        vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    );
    let nnd = evaluate(
        &gt,
        &pred,
        &EvalConfig {
            nndetection_froc_rounding: true,
            ..EvalConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        nnd.froc_curves["FROC_curve_IoU_0.10"].grid_sensitivity,
        vec![0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    );
}

#[test]
fn invalid_inputs_are_errors_naming_case_and_field() {
    let good_gt = ImageGt {
        boxes: vec![cube(0.0, 2.0)],
        classes: vec![0],
    };
    let bad_len = ImagePred {
        boxes: vec![cube(0.0, 2.0)],
        scores: vec![],
        classes: vec![0],
    };
    let e = evaluate(
        std::slice::from_ref(&good_gt),
        &[bad_len],
        &EvalConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("#0") && e.contains("pred.scores"), "{e}");
    let nan = ImagePred {
        boxes: vec![cube(0.0, 2.0)],
        scores: vec![f64::NAN],
        classes: vec![0],
    };
    let e = evaluate(
        std::slice::from_ref(&good_gt),
        &[nan],
        &EvalConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pred.scores[0]") && e.contains("not finite"),
        "{e}"
    );
    let inverted = ImageGt {
        boxes: vec![[2.0, 0.0, 0.0, 1.0, 1.0, 1.0]],
        classes: vec![0],
    };
    let e = evaluate(&[inverted], &[ImagePred::default()], &EvalConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("gt.boxes[0]") && e.contains("min > max"), "{e}");
    let e = evaluate(
        std::slice::from_ref(&good_gt),
        &[ImagePred {
            boxes: vec![cube(0.0, 2.0)],
            scores: vec![0.5],
            classes: vec![3],
        }],
        &EvalConfig {
            num_classes: Some(2),
            ..EvalConfig::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pred.classes[0]") && e.contains("out of range"),
        "{e}"
    );
    let e = evaluate(&[good_gt], &[], &EvalConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("prediction lists"), "{e}");
    let e = evaluate(
        &[],
        &[],
        &EvalConfig {
            max_det: 0,
            ..EvalConfig::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_det"), "{e}");
}

#[test]
fn curves_are_plot_ready() {
    let fx = fixture();
    let (gt, pred) = fixture_case(&fx["cases"][0]);
    let cfg = EvalConfig::default();
    let froc = froc_curve(&gt, &pred, &cfg, 0.1, None).unwrap();
    let report = evaluate(&gt, &pred, &cfg).unwrap();
    assert_eq!(froc, report.froc_curves["FROC_curve_IoU_0.10"]);
    assert!(
        froc.fppi.windows(2).all(|w| w[0] <= w[1])
            && froc.sensitivity.windows(2).all(|w| w[0] <= w[1])
    );
    let pr = pr_curve(&gt, &pred, &cfg, 0.1, 0).unwrap();
    assert_eq!(pr.ap, report.get("0_AP_IoU_0.10_MaxDet_100").unwrap());
    assert_eq!(pr.recall.len(), pr.scores.len());
    assert!(pr.scores.windows(2).all(|w| w[0] >= w[1]));
    assert!(pr_curve(&gt, &pred, &cfg, 0.1, 5).is_err());
    // FROC at a threshold that is not among the configured ones.
    let other = froc_curve(&gt, &pred, &cfg, 0.3, Some(1)).unwrap();
    assert_eq!((other.iou, other.class), (0.3, Some(1)));
    // The JSON object uses nnDetection's names.
    let json = report.to_json();
    for key in [
        "AP_IoU_0.10_MaxDet_100",
        "mAP_IoU_0.10_0.50_0.05_MaxDet_100",
        "FROC_score_IoU_0.10",
        "FROC_curve_IoU_0.10",
        "1_AP_IoU_0.10_MaxDet_100",
        "1_FROC_score_IoU_0.10",
        "FROC_fpi_thresholds",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["FROC_curve_IoU_0.10"].as_array().unwrap().len(), 7);
}

fn materialise(
    gt: &[ImageGt],
    pred: &[ImagePred],
    counts: &[u32],
) -> (Vec<ImageGt>, Vec<ImagePred>) {
    let mut g = Vec::new();
    let mut p = Vec::new();
    for (i, &c) in counts.iter().enumerate() {
        for _ in 0..c {
            g.push(gt[i].clone());
            p.push(pred[i].clone());
        }
    }
    (g, p)
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[test]
fn weighted_aggregation_equals_evaluating_the_materialised_resample() {
    let fx = fixture();
    // seed2_ties has scores rounded to 0.1: many ties within and across images.
    let (gt, pred) = fixture_case(&fx["cases"][1]);
    let cfg = EvalConfig {
        num_classes: Some(2),
        ..EvalConfig::default()
    };
    let thresholds = cfg.all_thresholds();
    let matches = matching::match_all(&gt, &pred, &thresholds, cfg.max_det);
    let prepared = aggregate::Prepared::new(&matches, 2, thresholds);
    let mut rng = 12345u64;
    for _ in 0..5 {
        let counts: Vec<u32> = (0..gt.len())
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((rng >> 33) % 4) as u32
            })
            .collect();
        let weighted = aggregate::report(
            &prepared,
            Some(&counts),
            &cfg,
            &aggregate::Want::all(&cfg),
            false,
        );
        let (g, p) = materialise(&gt, &pred, &counts);
        let direct = evaluate(&g, &p, &cfg).unwrap();
        for (k, v) in &direct.scalars {
            assert!(
                same(*v, weighted.scalars[k]),
                "{k}: {v} vs {}",
                weighted.scalars[k]
            );
        }
    }
}

#[test]
fn bootstrap_ranks_a_perfect_method_first() {
    let fx = fixture();
    let (gt, pred) = fixture_case(&fx["cases"][0]);
    let perfect: Vec<ImagePred> = gt
        .iter()
        .map(|g| ImagePred {
            boxes: g.boxes.clone(),
            scores: vec![1.0; g.boxes.len()],
            classes: g.classes.clone(),
        })
        .collect();
    let methods = vec![
        ("model".to_string(), pred.clone()),
        ("oracle".to_string(), perfect),
        ("copy".to_string(), pred),
    ];
    let cfg = BootstrapConfig {
        n: 200,
        seed: 7,
        extra_metrics: vec!["FROC_score_IoU_0.10".into()],
        ..BootstrapConfig::default()
    };
    let r = bootstrap(&methods, &gt, &cfg).unwrap();
    assert_eq!(r.methods, vec!["model", "oracle", "copy"]);
    // The oracle is best in every resample that has GT of both classes.
    assert!(r.rank_counts[1][0] >= 190.0, "{:?}", r.rank_counts);
    assert!(r.beats[1][0] >= 0.95);
    // Identical methods tie: with min ranks both get the same rank every time; neither beats the other.
    assert_eq!(r.rank_counts[0], r.rank_counts[2]);
    assert_eq!(r.beats[0][2], 0.0);
    let ap = &r.summaries[0].metrics["AP_IoU_0.10_MaxDet_100"];
    assert!(ap.ci_low <= ap.mean && ap.mean <= ap.ci_high);
    assert!((ap.mean - ap.value).abs() < 0.1);
    assert!(r.summaries[0].metrics.contains_key("FROC_score_IoU_0.10"));
    assert_eq!(r.values[0].len(), 200);
    // Same seed → same result; average ranks spread ties.
    assert_eq!(bootstrap(&methods, &gt, &cfg).unwrap(), r);
    let avg = bootstrap(
        &methods,
        &gt,
        &BootstrapConfig {
            ties: RankTies::Average,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(avg.mean_rank[0] > r.mean_rank[0]);
    assert_eq!(avg.rank_counts[0].iter().sum::<f64>(), 200.0);
    let e = bootstrap(
        &methods,
        &gt,
        &BootstrapConfig {
            metric: "AP_IoU_0.30_MaxDet_100".into(),
            ..cfg
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown metric") && e.contains("AP_IoU_0.10_MaxDet_100"),
        "{e}"
    );
}

#[test]
fn ranks_handle_ties_and_nan() {
    assert_eq!(
        bootstrap::rank(&[0.5, 0.9, 0.5, f64::NAN], RankTies::Min),
        vec![2.0, 1.0, 2.0, 4.0]
    );
    assert_eq!(
        bootstrap::rank(&[0.5, 0.9, 0.5, f64::NAN], RankTies::Average),
        vec![2.5, 1.0, 2.5, 4.0]
    );
}

fn arb_box() -> impl Strategy<Value = Box3> {
    (
        0.0..50.0f64,
        0.0..50.0f64,
        0.0..50.0f64,
        0.5..12.0f64,
        0.5..12.0f64,
        0.5..12.0f64,
    )
        .prop_map(|(d, h, w, sd, sh, sw)| [d, h, w, d + sd, h + sh, w + sw])
}

fn arb_image(classes: usize) -> impl Strategy<Value = (ImageGt, ImagePred)> {
    let gt = prop::collection::vec((arb_box(), 0..classes), 0..4);
    let pred = prop::collection::vec((arb_box(), 0..classes, 0u32..20), 0..8);
    (gt, pred).prop_map(|(gt, pred)| {
        (
            ImageGt {
                boxes: gt.iter().map(|g| g.0).collect(),
                classes: gt.iter().map(|g| g.1).collect(),
            },
            // Scores on a coarse grid so that ties occur.
            ImagePred {
                boxes: pred.iter().map(|p| p.0).collect(),
                scores: pred.iter().map(|p| p.2 as f64 / 20.0).collect(),
                classes: pred.iter().map(|p| p.1).collect(),
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn ap_is_a_fraction_when_every_class_has_gt(mut images in prop::collection::vec(arb_image(2), 1..8)) {
        images[0].0.boxes.extend([[0.0, 0.0, 0.0, 3.0, 3.0, 3.0], [5.0, 5.0, 5.0, 9.0, 9.0, 9.0]]);
        images[0].0.classes.extend([0, 1]);
        let (gt, pred): (Vec<_>, Vec<_>) = images.into_iter().unzip();
        let r = evaluate(&gt, &pred, &EvalConfig { num_classes: Some(2), ..EvalConfig::default() }).unwrap();
        for (k, v) in &r.scalars {
            if k.contains("AP_") {
                prop_assert!((0.0..=1.0).contains(v), "{} = {}", k, v);
            }
        }
    }

    #[test]
    fn the_per_detection_and_the_tp_position_ap_paths_agree(images in prop::collection::vec(arb_image(2), 1..10), numpy2 in any::<bool>()) {
        let cfg = EvalConfig { num_classes: Some(2), numpy2_precision: numpy2, ..EvalConfig::default() };
        let (gt, pred): (Vec<_>, Vec<_>) = images.into_iter().unzip();
        let r = evaluate(&gt, &pred, &cfg).unwrap();
        for c in 0..2 {
            for t in [0.1, 0.5] {
                let pr = &r.pr_curves[&format!("{c}_PR_curve_IoU_{t:.2}")];
                prop_assert_eq!(pr.ap, r.get(&format!("{c}_AP_IoU_{t:.2}_MaxDet_100")).unwrap());
            }
        }
    }

    #[test]
    fn permuting_images_leaves_froc_unchanged(images in prop::collection::vec(arb_image(2), 1..8), seed in 0u64..1000) {
        let mut permuted = images.clone();
        // A seeded Fisher–Yates shuffle.
        let mut s = seed;
        for i in (1..permuted.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            permuted.swap(i, (s >> 33) as usize % (i + 1));
        }
        let cfg = EvalConfig { num_classes: Some(2), ..EvalConfig::default() };
        let (g1, p1): (Vec<_>, Vec<_>) = images.into_iter().unzip();
        let (g2, p2): (Vec<_>, Vec<_>) = permuted.into_iter().unzip();
        let a = evaluate(&g1, &p1, &cfg).unwrap();
        let b = evaluate(&g2, &p2, &cfg).unwrap();
        for (k, v) in &a.scalars {
            if k.contains("FROC") {
                prop_assert!(same(*v, b.scalars[k]), "{} = {} vs {}", k, v, b.scalars[k]);
            }
        }
    }

    #[test]
    fn predicting_the_gt_with_score_one_is_perfect(images in prop::collection::vec(arb_image(3), 1..8)) {
        let gt: Vec<ImageGt> = images.into_iter().map(|(g, _)| g).collect();
        prop_assume!(gt.iter().any(|g| !g.boxes.is_empty()));
        let pred: Vec<ImagePred> = gt.iter().map(|g| ImagePred { boxes: g.boxes.clone(), scores: vec![1.0; g.boxes.len()], classes: g.classes.clone() }).collect();
        let r = evaluate(&gt, &pred, &EvalConfig { skip_empty_classes: true, ..EvalConfig::default() }).unwrap();
        for key in ["AP_IoU_0.10_MaxDet_100", "AP_IoU_0.50_MaxDet_100", "mAP_IoU_0.10_0.50_0.05_MaxDet_100", "FROC_score_IoU_0.10", "FROC_score_IoU_0.50"] {
            prop_assert_eq!(r.get(key).unwrap(), 1.0, "{}", key);
        }
    }
}
