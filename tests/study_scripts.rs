//! The study scripts of scripts/ run end to end at their smallest scale, write their results,
//! and a rerun reuses every cached cell (same numbers, no training).

mod common;

use common::*;

#[test]
fn lr_sweep_runs_caches_its_cells_and_reruns_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("scripts/lr_sweep.rhai");
    let sets = [
        ("scale", "test".to_string()),
        ("out", tmp.path().join("out").display().to_string()),
    ];
    let first = std::time::Instant::now();
    expect_ok(&run_script(&script, &sets, tmp.path()), "lr_sweep");
    let first = first.elapsed();
    let results = tmp.path().join("out/results.json");
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let ap = a["summary"][0]["ap_mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ap), "{a}");
    assert!(tmp.path().join("out/ap_vs_lr.png").is_file());
    assert!(
        tmp.path()
            .join("out/pretrain/mae/last/pretrain.json")
            .is_file()
    );
    let cells = std::fs::read_dir(tmp.path().join("out/cells"))
        .unwrap()
        .count();
    assert_eq!(cells, 1);
    // A rerun trains nothing: no new training folders, identical results.
    std::fs::remove_dir_all(tmp.path().join("out/runs")).unwrap();
    let again = std::time::Instant::now();
    expect_ok(&run_script(&script, &sets, tmp.path()), "lr_sweep rerun");
    assert!(
        !tmp.path().join("out/runs").exists(),
        "a cached cell was trained again"
    );
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(a["cells"], b["cells"]);
    assert!(
        again.elapsed() < first,
        "{:?} vs {:?}",
        again.elapsed(),
        first
    );
}
