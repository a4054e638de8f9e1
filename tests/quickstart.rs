//! The quickstart at a reduced size (fewer cases and iterations): it runs end to end, writes
//! everything it promises, and the trained model beats the same model untrained by a wide
//! margin on the held-out cases.

mod common;

use common::*;

/// Predict the quickstart's test cases with an untrained model of the same architecture and
/// seed, and evaluate it the same way.
const UNTRAINED: &str = r#"
let ds = dataset(ARGS.out + "/data");
let pre = preprocess(ds, #{spacing: [1.5, 1.5, 1.5]});
let model = detector("retina_unet", backbone("retunet_tiny"), #{num_classes: 1, fpn_channels: 32, head_channels: 32, seed: 0});
let preds = predict(model, pre, #{split: "test", tta: false, patch_size: [32, 32, 32]});
let m = evaluate(preds, ds);
print(`UNTRAINED_AP=${m["AP_IoU_0.10_MaxDet_100"]}`);
"#;

#[test]
fn quickstart_runs_and_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qs");
    let sets = vec![
        ("out", out.display().to_string()),
        ("seed", "0".to_string()),
        ("cases", "8".to_string()),
        ("test_cases", "4".to_string()),
        ("epochs", "2".to_string()),
        ("iters", "30".to_string()),
    ];
    let run = run_script(&root().join("examples/quickstart.rhai"), &sets, tmp.path());
    let stdout = expect_ok(&run, "quickstart");
    for f in ["metrics.json", "loss.png", "froc.png"] {
        assert!(out.join(f).is_file(), "{f} missing; stdout:\n{stdout}");
    }
    let slices = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("slice_")
        })
        .count();
    assert_eq!(slices, 4, "one slice figure per test case");
    assert_eq!(
        std::fs::read_dir(out.join("predictions")).unwrap().count(),
        4,
        "one prediction file per test case"
    );
    assert!(out.join("train/last").is_dir() && out.join("train/best").is_dir());

    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for key in [
        "AP_IoU_0.10_MaxDet_100",
        "mAP_IoU_0.10_0.50_0.05_MaxDet_100",
        "FROC_score_IoU_0.10",
        "0_AP_IoU_0.10_MaxDet_100",
    ] {
        assert!(metrics.get(key).is_some(), "metrics.json lacks {key}");
    }
    assert_eq!(metrics["FROC_curve_IoU_0.10"].as_array().unwrap().len(), 7);
    let trained = metrics["AP_IoU_0.10_MaxDet_100"].as_f64().unwrap();

    let script = tmp.path().join("untrained.rhai");
    std::fs::write(&script, UNTRAINED).unwrap();
    let baseline = run_script(&script, &[("out", out.display().to_string())], tmp.path());
    let text = expect_ok(&baseline, "untrained baseline");
    let untrained: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("UNTRAINED_AP="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no UNTRAINED_AP in {text}"));
    eprintln!("quickstart (reduced): trained AP@0.1 {trained:.3}, untrained {untrained:.3}");
    assert!(
        trained >= untrained + 0.25,
        "trained AP {trained} is not far above the untrained {untrained}"
    );
}
