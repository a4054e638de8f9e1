//! The `detlab` command line: a thin front end over the library (REPL, run, check, help,
//! eval, bench).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
