//! Command-line parsing and dispatch (clap). Each sub-command lives in its own file.

pub mod bench;
pub mod eval;

use clap::{Parser, Subcommand};

/// detlab: a scripting lab for 3D medical object detection with large-scale pre-training.
#[derive(Parser, Debug)]
#[command(name = "detlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench { name, args }) => bench::run(&name, &args),
        Some(Command::Eval(args)) => eval::run(args),
        None => {
            eprintln!("the REPL is not built yet");
            2
        }
    }
}
