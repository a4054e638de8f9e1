//! `detlab bench NAME [ARGS]`: timing workloads. Timing targets live here, never in tests.

/// The registered benchmarks: (name, one-line description).
pub const BENCHMARKS: &[(&str, &str)] = &[];

/// Run the benchmark `name` with its extra arguments; returns the exit code.
pub fn run(name: &str, args: &[String]) -> i32 {
    let _ = args;
    match name {
        "list" => {
            for (n, d) in BENCHMARKS {
                println!("{n:<14} {d}");
            }
            0
        }
        other => {
            eprintln!("error: unknown benchmark '{other}'; `detlab bench list` shows the available ones");
            2
        }
    }
}
