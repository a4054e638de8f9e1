//! The study scripts of scripts/ run end to end at their smallest scale, write their results,
//! and a rerun reuses every cached cell (same numbers, no training).

mod common;

use common::*;

#[test]
fn lr_sweep_runs_caches_its_cells_and_reruns_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("scripts/lr_sweep.rhai");
    let sets = [
        ("scale", "ci".to_string()),
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

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Table 3 at ci scale: the robust facts only. Pre-training losses fall, the noise control
/// cannot reconstruct its masked voxels, a rerun skips every cached cell, and a cell computed
/// again gives the same numbers (the pipeline is deterministic).
#[test]
fn table3_pretraining_ci_facts_caching_and_determinism() {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("scripts/table3_pretraining.rhai");
    let out = tmp.path().join("out");
    let sets = [
        ("scale", "ci".to_string()),
        ("out", out.display().to_string()),
    ];
    expect_ok(
        &run_script(&script, &sets, tmp.path()),
        "table3_pretraining",
    );
    let a = read_json(&out.join("results.json"));
    for file in [
        "table.md",
        "fig2_ranks.png",
        "fig3_resenc_tiny_retina_unet.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let pretraining = a["pretraining"].as_array().unwrap();
    assert_eq!(pretraining.len(), 6, "{a}");
    let loss = |arm: &str, when: &str| {
        pretraining.iter().find(|p| p["arm"] == arm).unwrap()[when]
            .as_f64()
            .unwrap()
    };
    for arm in ["multitalent", "mae", "spark", "models_genesis", "voco"] {
        assert!(
            loss(arm, "last") < loss(arm, "first"),
            "{arm}: {pretraining:?}"
        );
    }
    // Masked white noise cannot be predicted from its context: the loss stays near the
    // voxel variance (1 after z-scoring), far above MAE's on structured volumes.
    assert!(loss("noise", "last") > 0.95, "{pretraining:?}");
    assert!(
        loss("mae", "last") < loss("noise", "last") - 0.1,
        "{pretraining:?}"
    );
    let cells = a["cells"].as_array().unwrap();
    // Retina U-Net: 1 task × 8 arms; Deformable DETR, on its own schedule: 2 arms.
    assert_eq!(cells.len(), 10, "{cells:?}");
    let detr = cells.iter().filter(|c| c["detector"] == "def_detr").count();
    assert_eq!(detr, 2, "{cells:?}");
    assert_eq!(a["rows"].as_array().unwrap().len(), 10);
    assert!(out.join("fig3_resenc_tiny_def_detr.png").is_file());
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("scratch_default") && table.contains("noise"),
        "{table}"
    );

    // A rerun trains nothing and reports the same cells.
    std::fs::remove_dir_all(out.join("runs")).unwrap();
    expect_ok(&run_script(&script, &sets, tmp.path()), "table3 rerun");
    assert!(
        !out.join("runs").exists(),
        "a cached cell was trained again"
    );
    let b = read_json(&out.join("results.json"));
    assert_eq!(a["cells"], b["cells"].clone());

    // One cell computed again from scratch gives the same AP, mAP and FROC.
    let cell_files: Vec<_> = std::fs::read_dir(out.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("mae"))
        .collect();
    let first = read_json(&cell_files[0]);
    std::fs::remove_file(&cell_files[0]).unwrap();
    expect_ok(&run_script(&script, &sets, tmp.path()), "table3 recompute");
    let again = read_json(&cell_files[0]);
    for key in ["ap", "map", "froc"] {
        assert_eq!(first[key], again[key], "{key}: {first} vs {again}");
    }
}

/// Table 2 at ci scale: every configuration row of the paper's layout is filled on every
/// development task, and the table and the figure are written.
#[test]
fn table2_finetuning_ci_fills_the_papers_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let script = root().join("scripts/table2_finetuning.rhai");
    let out = tmp.path().join("out");
    let sets = [
        ("scale", "ci".to_string()),
        ("out", out.display().to_string()),
    ];
    expect_ok(&run_script(&script, &sets, tmp.path()), "table2_finetuning");
    let a = read_json(&out.join("results.json"));
    let rows = a["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["row"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "reference",
            "planned spacing",
            "lr 0.1",
            "full transfer",
            "own patch"
        ]
    );
    let tasks: Vec<&str> = a["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(!tasks.is_empty(), "{a}");
    for row in rows {
        for &task in &tasks {
            let ap = row[task].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&ap), "{row}");
        }
        let rank = row["rank"].as_f64().unwrap();
        assert!((1.0..=5.0).contains(&rank), "{row}");
    }
    assert!(out.join("table.md").is_file() && out.join("table2.png").is_file());
}
