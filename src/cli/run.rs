//! `detlab run`, `detlab check` and `detlab help`: scripts from files, without the REPL.

use detlab::script::{Interpreter, ScriptErrorKind, parse_arg_value};
use rhai::Map;
use std::path::Path;

/// Parse `key=value` pairs from `--set` into the `ARGS` map.
pub fn parse_sets(sets: &[String]) -> Result<Map, String> {
    let mut args = Map::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set expects key=value, got '{s}'"))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!(
                "--set key '{k}' must be a plain name (letters, digits, _)"
            ));
        }
        args.insert(k.into(), parse_arg_value(v));
    }
    Ok(args)
}

/// Install the Ctrl-C handler: the first press asks the script to stop, a second one exits.
pub fn install_interrupt_handler(exit_on_second: bool) {
    let _ = ctrlc::set_handler(move || {
        if exit_on_second && detlab::util::interrupt::is_requested() {
            eprintln!("\ninterrupted twice: exiting now");
            std::process::exit(130);
        }
        detlab::util::interrupt::request();
    });
}

/// Run a script file; returns the exit code (0 ok, 1 script error, 130 interrupted).
pub fn run(file: &Path, sets: &[String]) -> i32 {
    let args = match parse_sets(sets) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    install_interrupt_handler(true);
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut interp = Interpreter::new(cwd);
    interp.set_args(args);
    match interp.run_file(file) {
        Ok(_) => 0,
        Err(e) if e.kind == ScriptErrorKind::Interrupted => {
            eprintln!("{}: stopped: interrupted by Ctrl-C", e.location());
            130
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Compile a script without running it and report its syntax errors, or its calls to
/// functions that exist nowhere; returns the exit code.
pub fn check(file: &Path) -> i32 {
    let interp = Interpreter::new(std::env::current_dir().unwrap_or_default());
    match interp.check_file(file) {
        Ok(()) => {
            print_out(&format!("{}: ok", file.display()));
            0
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            1
        }
    }
}

/// Print the overview of primitives, or one primitive in full.
pub fn help(name: Option<&str>) -> i32 {
    let interp = Interpreter::new(std::env::current_dir().unwrap_or_default());
    match name {
        None => {
            print_out(&interp.help().overview());
            0
        }
        Some(n) => match interp.help().render(n) {
            Some(text) => {
                print_out(&text);
                0
            }
            None => {
                let names: Vec<&str> = interp.help().entries().map(|e| e.name.as_str()).collect();
                let hint = match detlab::script::error::suggest(n, names) {
                    Some(s) => format!("did you mean `{s}`? "),
                    None => String::new(),
                };
                eprintln!("error: no primitive named '{n}'; {hint}(`detlab help` lists them)");
                1
            }
        },
    }
}

/// Write `text` and a newline to stdout; a reader that went away (`detlab help | head`) is
/// not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|_| out.flush());
}
