//! The REPL driven through a pseudo-terminal: completion, multi-line input, help, errors
//! that keep the session, Ctrl-C, history.
//!
//! rustyline discards type-ahead when it switches the terminal to raw mode, so every
//! command waits for the prompt before it is typed, like a person would.

mod common;

use rexpect::session::PtySession;

const PROMPT: &str = "detlab> ";

fn start(history: &std::path::Path) -> PtySession {
    let cmd = format!(
        "env DETLAB_HISTORY={} TERM=xterm {}",
        history.display(),
        common::detlab().display()
    );
    let mut p = rexpect::spawn(&cmd, Some(30_000)).expect("spawn detlab");
    p.exp_string("help() lists primitives").expect("banner");
    p
}

/// Give rustyline a moment after drawing the prompt to finish switching to raw mode.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

/// Wait for the prompt, then type `line` and Enter.
fn enter(p: &mut PtySession, line: &str) {
    p.exp_string(PROMPT).expect("prompt");
    settle();
    p.send_line(line).unwrap();
}

#[test]
fn repl_session_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let mut p = start(&history);

    // Variables persist between lines and values are echoed.
    enter(&mut p, "let answer = 40 + 2;");
    enter(&mut p, "answer");
    p.exp_string("42").unwrap();

    // Multi-line input: an open block continues on the next line (same prompt session).
    enter(&mut p, "fn twice(x) {");
    p.send_line("  x * 2").unwrap();
    p.send_line("}").unwrap();
    enter(&mut p, "twice(answer)");
    p.exp_string("84").unwrap();

    // An error prints with its position and the session continues.
    enter(&mut p, "let broken = [1, 2][7];");
    p.exp_string("error: <repl>:1:").unwrap();
    enter(&mut p, "answer + 1");
    p.exp_string("43").unwrap();

    // help("name") prints the signature, description and example.
    enter(&mut p, "help(\"save_json\")");
    p.exp_string("save_json(value: Dynamic, path: String)")
        .unwrap();
    p.exp_string("Example:").unwrap();

    // Tab completion of a primitive name.
    p.exp_string(PROMPT).unwrap();
    settle();
    p.send("save_js").unwrap();
    p.send("\t").unwrap();
    p.flush().unwrap();
    p.exp_string("save_json(").unwrap();
    p.send_control('u').unwrap();
    p.flush().unwrap();
    p.send_line("").unwrap();

    // Completion of map keys of a variable in scope.
    enter(&mut p, "let cfg = #{learning_rate: 0.1, epochs: 3};");
    p.exp_string(PROMPT).unwrap();
    settle();
    p.send("cfg.lea").unwrap();
    p.send("\t").unwrap();
    p.flush().unwrap();
    p.exp_string("learning_rate").unwrap();
    p.send_line("").unwrap();
    p.exp_string("0.1").unwrap();

    // Ctrl-C interrupts a running loop and keeps the session.
    enter(&mut p, "let n = 0; loop { n += 1; }");
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.send_control('c').unwrap();
    p.exp_string("interrupted").unwrap();
    enter(&mut p, "answer");
    p.exp_string("42").unwrap();

    // :quit leaves and the history file has the lines.
    enter(&mut p, ":quit");
    p.exp_eof().unwrap();
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("let answer = 40 + 2;"), "{saved}");
}

#[test]
fn repl_load_runs_a_file_in_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("defs.rhai");
    std::fs::write(&script, "let loaded_value = 7;\nfn triple(x) { x * 3 }\n").unwrap();
    let mut p = start(&tmp.path().join("history"));
    enter(&mut p, &format!(":load {}", script.display()));
    enter(&mut p, "triple(loaded_value)");
    p.exp_string("21").unwrap();
    enter(&mut p, ":load /no/such/file.rhai");
    p.exp_string("cannot read script").unwrap();
    enter(&mut p, ":quit");
    p.exp_eof().unwrap();
}

#[test]
fn repl_completes_option_keys_and_suggests_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = start(&tmp.path().join("history"));

    // Inside a primitive's options map, Tab offers its option keys.
    p.exp_string(PROMPT).unwrap();
    settle();
    p.send("pool_volume(#{seed: 1, chan").unwrap();
    p.send("\t").unwrap();
    p.flush().unwrap();
    p.exp_string("channels: ").unwrap();
    p.send_control('u').unwrap();
    p.flush().unwrap();
    p.send_line("").unwrap();

    // A typo gets the nearest name, and the session goes on.
    enter(&mut p, "resampel(1)");
    p.exp_string("unknown function `resampel`; did you mean `resample`?")
        .unwrap();
    enter(&mut p, "40 + 2");
    p.exp_string("42").unwrap();
    enter(&mut p, ":quit");
    p.exp_eof().unwrap();
}
