//! The interactive REPL: a thin rustyline front end over [`detlab::script::Interpreter`].

use detlab::script::{Interpreter, ScriptErrorKind};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hinter, HistoryHinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// A meta command of the REPL: name, argument hint, help text.
struct MetaCommand {
    name: &'static str,
    args: &'static str,
    help: &'static str,
}

const META_COMMANDS: &[MetaCommand] = &[
    MetaCommand {
        name: ":help",
        args: "",
        help: "show these commands (use help() for primitives)",
    },
    MetaCommand {
        name: ":load",
        args: "FILE",
        help: "run a script file in this session",
    },
    MetaCommand {
        name: ":vars",
        args: "",
        help: "list the variables in scope with their types",
    },
    MetaCommand {
        name: ":clear",
        args: "",
        help: "forget all variables and functions",
    },
    MetaCommand {
        name: ":quit",
        args: "",
        help: "leave the REPL (also Ctrl-D)",
    },
];

struct ReplHelper {
    interp: Rc<RefCell<Interpreter>>,
    hinter: HistoryHinter,
}

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let Ok(interp) = self.interp.try_borrow() else {
            return Ok((pos, Vec::new()));
        };
        let (start, cands) = interp.complete(line, pos);
        Ok((
            start,
            cands
                .into_iter()
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: c,
                })
                .collect(),
        ))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
    fn hint(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Option<String> {
        self.hinter.hint(line, pos, ctx)
    }
}

impl Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> std::borrow::Cow<'h, str> {
        std::borrow::Cow::Owned(format!("\x1b[90m{hint}\x1b[0m"))
    }
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        // A blank line always submits, so a confusing parse can never trap the user.
        if input.trim_start().starts_with(':')
            || input.ends_with("\n\n")
            || input.ends_with("\n") && input.trim().is_empty()
        {
            return Ok(ValidationResult::Valid(None));
        }
        let Ok(interp) = self.interp.try_borrow() else {
            return Ok(ValidationResult::Valid(None));
        };
        if interp.is_incomplete(input) {
            Ok(ValidationResult::Incomplete)
        } else {
            Ok(ValidationResult::Valid(None))
        }
    }
}

impl Helper for ReplHelper {}

/// Where the history is kept: `$DETLAB_HISTORY`, else `$XDG_STATE_HOME/detlab/history`,
/// else `~/.local/state/detlab/history`.
fn history_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DETLAB_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("detlab").join("history"))
}

fn print_meta_help() {
    println!("REPL commands:");
    for c in META_COMMANDS {
        println!("  {:<14} {}", format!("{} {}", c.name, c.args), c.help);
    }
    println!("Multi-line input continues while brackets are open; an empty line submits.");
    println!(
        "help() lists the primitives; help(\"name\") shows one. Ctrl-C stops a running command."
    );
}

/// Handle a `:command`; returns false when the REPL should exit.
fn meta(interp: &Rc<RefCell<Interpreter>>, line: &str) -> bool {
    let mut parts = line.trim().splitn(2, char::is_whitespace);
    let cmd = parts.next().unwrap_or("");
    let arg = parts.next().map(str::trim).unwrap_or("");
    match cmd {
        ":quit" | ":q" | ":exit" => return false,
        ":help" | ":h" => print_meta_help(),
        ":load" => {
            if arg.is_empty() {
                eprintln!("error: :load needs a file, e.g. :load examples/01_volumes.rhai");
            } else {
                let result = interp.borrow_mut().run_file(std::path::Path::new(arg));
                report(&interp.borrow(), result);
            }
        }
        ":vars" => {
            let i = interp.borrow();
            for (name, constant, value) in i.scope().iter_raw() {
                let ty = detlab::script::error::user_type_name(
                    i.engine().map_type_name(value.type_name()),
                );
                println!("  {}{name}: {ty}", if constant { "const " } else { "" });
            }
        }
        ":clear" => {
            let cwd = std::env::current_dir().unwrap_or_default();
            *interp.borrow_mut() = Interpreter::new(cwd);
            println!("session cleared");
        }
        other => {
            let names: Vec<&str> = META_COMMANDS.iter().map(|c| c.name).collect();
            eprintln!(
                "error: unknown command '{other}'; commands: {}",
                names.join(", ")
            );
        }
    }
    true
}

fn report(interp: &Interpreter, result: Result<rhai::Dynamic, detlab::script::ScriptError>) {
    match result {
        Ok(v) if v.is_unit() => {}
        Ok(v) => println!("{}", interp.display(&v)),
        Err(e) if e.kind == ScriptErrorKind::Interrupted => {
            eprintln!("interrupted (the session is kept)")
        }
        Err(e) => eprintln!("error: {e}"),
    }
}

/// Run the REPL until `:quit` or Ctrl-D; returns the exit code.
pub fn run() -> i32 {
    super::run::install_interrupt_handler(false);
    let cwd = std::env::current_dir().unwrap_or_default();
    let interp = Rc::new(RefCell::new(Interpreter::new(cwd)));
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .completion_type(rustyline::CompletionType::List)
        .max_history_size(10_000)
        .map(|b| b.build())
        .unwrap_or_default();
    let mut editor: Editor<ReplHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(ReplHelper {
        interp: interp.clone(),
        hinter: HistoryHinter::new(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "detlab {} — help() lists primitives, :help shows REPL commands, :quit leaves",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        detlab::util::interrupt::clear();
        match editor.readline("detlab> ") {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                if line.trim_start().starts_with(':') {
                    if !meta(&interp, &line) {
                        break;
                    }
                    continue;
                }
                let result = interp.borrow_mut().eval_source(&line, "<repl>");
                report(&interp.borrow(), result);
            }
            Err(ReadlineError::Interrupted) => {
                println!("(Ctrl-C: input cleared; :quit or Ctrl-D leaves)");
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
        if let Some(h) = &history {
            if let Some(parent) = h.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = editor.save_history(h);
        }
    }
    0
}
