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
