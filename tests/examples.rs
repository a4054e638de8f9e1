//! Every tutorial in examples/ runs end to end (the quickstart at a reduced size has its own
//! test in tests/quickstart.rs) and writes the files it promises.

mod common;

use common::*;

fn run_example(name: &str) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("examples").join(name);
    let out = run_script(
        &script,
        &[("out", tmp.path().display().to_string())],
        tmp.path(),
    );
    let stdout = expect_ok(&out, name);
    (tmp, stdout)
}

#[test]
fn tutorial_01_volumes() {
    let (tmp, stdout) = run_example("01_volumes.rhai");
    assert!(stdout.contains("resampled"), "{stdout}");
    for f in ["01_slice.png", "01_patch.nii.gz"] {
        assert!(tmp.path().join(f).is_file(), "{f} written");
    }
    let patch = detlab::volume::read_nifti(&tmp.path().join("01_patch.nii.gz")).unwrap();
    assert_eq!(patch.shape(), [1, 16, 32, 32]);
    assert_eq!(patch.spacing, [1.0, 1.0, 1.0]);
}

#[test]
fn tutorial_02_datasets() {
    let (tmp, stdout) = run_example("02_datasets.rhai");
    assert!(stdout.contains("fold 0 validates on"), "{stdout}");
    assert!(tmp.path().join("Task901_Tutorial/splits.json").is_file());
}

#[test]
fn tutorial_03_metrics() {
    let (tmp, stdout) = run_example("03_metrics.rhai");
    assert!(stdout.contains("careful beats noisy"), "{stdout}");
    for f in [
        "03_froc.png",
        "03_pr.png",
        "03_ranks.png",
        "03_ci.png",
        "03_metrics.json",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} written");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("03_metrics.json")).unwrap())
            .unwrap();
    let ap = metrics["careful"]["AP_IoU_0.10_MaxDet_100"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&ap));
}

fn run_example_with(name: &str, sets: &[(&str, String)]) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("examples").join(name);
    let mut all = vec![("out", tmp.path().display().to_string())];
    all.extend(sets.iter().cloned());
    let out = run_script(&script, &all, tmp.path());
    let stdout = expect_ok(&out, name);
    (tmp, stdout)
}

#[test]
fn tutorial_04_pretraining() {
    let (tmp, stdout) = run_example_with("04_pretraining.rhai", &[("iterations", "80".into())]);
    assert!(stdout.contains("Pretrained mae encoder"), "{stdout}");
    let run = tmp.path().join("mae");
    assert!(run.join("best/pretrain.json").is_file());
    assert!(run.join("last/weights.mpk").is_file());
    for f in ["figures/iter_000040.png", "figures/iter_000080.png"] {
        assert!(run.join(f).is_file(), "{f} written");
    }
    assert!(tmp.path().join("mae_loss.png").is_file());
    // The masked MSE falls well below the zero-prediction baseline (≈ 1).
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last/pretrain.json")).unwrap())
            .unwrap();
    let losses: Vec<f64> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let tail = &losses[losses.len() - 20..];
    let mean = tail.iter().sum::<f64>() / tail.len() as f64;
    assert!(mean < 0.7, "masked MSE at the end {mean}");
}

#[test]
fn tutorial_05_transfer() {
    let (tmp, stdout) = run_example_with("05_transfer.rhai", &[("steps", "24".into())]);
    assert!(stdout.contains("Transfer report"), "{stdout}");
    assert!(
        stdout.contains("equal to the checkpoint's: true"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 → 4 input channels by replicate_scaled"),
        "{stdout}"
    );
    assert!(tmp.path().join("finetune/last/state.json").is_file());
}

#[test]
fn tutorial_06_def_detr() {
    let (tmp, stdout) = run_example_with(
        "06_def_detr.rhai",
        &[
            ("cases", "6".into()),
            ("test_cases", "2".into()),
            ("epochs", "1".into()),
            ("iters", "6".into()),
        ],
    );
    assert!(stdout.contains("DefDETR AP@IoU0.1 = "), "{stdout}");
    assert!(tmp.path().join("loss.png").is_file());
    assert!(tmp.path().join("train/last/state.json").is_file());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("predictions"))
            .unwrap()
            .count(),
        2,
        "one prediction file per test case"
    );
}
