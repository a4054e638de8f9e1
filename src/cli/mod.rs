//! Command-line parsing and dispatch (clap). Each sub-command lives in its own file.

pub mod bench;
pub mod eval;
pub mod repl;
pub mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// detlab: a scripting lab for 3D medical object detection with large-scale pre-training.
///
/// With no command, starts the interactive REPL.
#[derive(Parser, Debug)]
#[command(name = "detlab", version, about, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Rhai script; `--set key=value` values reach the script as the map ARGS.
    Run {
        /// The script file.
        file: PathBuf,
        /// A script argument, `key=value` (numbers, booleans and JSON arrays are parsed).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Compile a script without running it and report syntax errors with line:column.
    Check {
        /// The script file.
        file: PathBuf,
    },
    /// List the script primitives, or show one in full.
    Help {
        /// A primitive name, e.g. `resample`.
        name: Option<String>,
    },
    /// Start the interactive REPL (the default).
    Repl,
    /// Evaluate detections: nnDetection-exact AP/mAP/FROC, or LUNA16 CPM (`--luna`).
    Eval(eval::EvalArgs),
    /// Time a named workload (`detlab bench list` shows them).
    Bench {
        /// Benchmark name.
        name: String,
        /// Extra arguments passed to the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Parse the command line, run the command, and return the process exit code.
pub fn main() -> i32 {
    detlab::util::tune_allocator();
    let cli = Cli::parse();
    if let Some(Command::Bench { name, args }) = &cli.command {
        // Benchmarks size rayon's pool themselves (`--threads`).
        return bench::run(name, args);
    }
    if let Err(e) = detlab::util::init_thread_pool(None) {
        eprintln!("error: cannot start rayon's threads: {e}");
        return 1;
    }
    detlab::util::run_on_worker(|| match cli.command {
        Some(Command::Run { file, set }) => run::run(&file, &set),
        Some(Command::Check { file }) => run::check(&file),
        Some(Command::Help { name }) => run::help(name.as_deref()),
        Some(Command::Bench { .. }) => unreachable!("benchmarks returned above"),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Repl) | None => repl::run(),
    })
}
