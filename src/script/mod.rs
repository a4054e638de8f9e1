//! The Rhai script engine of detlab: one package per domain module, help, completion and
//! module resolution. This module only registers and adapts; the domain code lives in
//! `volume`, `data`, `nn`, `train`, `infer`, `metrics` and `plot`.
//!
//! [`Interpreter`] is the library the front ends (the `detlab run` command, the REPL, tests)
//! drive: it keeps one scope and the script functions defined so far.

pub mod complete;
pub mod convert;
pub mod error;
pub mod help;
pub mod packages;
pub mod registrar;
pub mod resolver;

pub use error::{ScriptError, ScriptErrorKind};
pub use help::HelpIndex;

use rhai::{AST, Dynamic, Engine, Map, Scope};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// How often (in script operations) the engine checks for Ctrl-C.
const INTERRUPT_CHECK_EVERY: u64 = 1024;

/// Build the detlab engine with every domain package registered, and its help index.
pub fn build_engine(fallback_dir: PathBuf) -> (Engine, Arc<HelpIndex>) {
    let mut engine = Engine::new();
    engine.set_max_expr_depths(256, 256);
    engine.set_module_resolver(resolver::DetlabResolver::new(fallback_dir));
    engine.on_progress(|ops| {
        if ops % INTERRUPT_CHECK_EVERY == 0 && crate::util::interrupt::is_requested() {
            Some(Dynamic::from("interrupted by Ctrl-C"))
        } else {
            None
        }
    });
    let help_cell: Arc<OnceLock<Arc<HelpIndex>>> = Arc::new(OnceLock::new());
    let mut help = HelpIndex::default();
    packages::register_all(&mut engine, &mut help, help_cell.clone());
    let help = Arc::new(help);
    let _ = help_cell.set(help.clone());
    (engine, help)
}

/// A script session: the engine, its scope, and the functions defined so far.
pub struct Interpreter {
    engine: Engine,
    help: Arc<HelpIndex>,
    scope: Scope<'static>,
    functions: AST,
    display_ast: AST,
}

/// Parse a `--set key=value` value: bool, integer, float, JSON array/map, else a string.
pub fn parse_arg_value(text: &str) -> Dynamic {
    let t = text.trim();
    match t {
        "true" => return Dynamic::from(true),
        "false" => return Dynamic::from(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Dynamic::from(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        return Dynamic::from(f);
    }
    if (t.starts_with('[') || t.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(t)
    {
        return convert::json_to_dynamic(&v);
    }
    Dynamic::from(text.to_string())
}

impl Interpreter {
    /// A fresh session; imports from code typed without a file resolve against `fallback_dir`.
    pub fn new(fallback_dir: PathBuf) -> Self {
        let (engine, help) = build_engine(fallback_dir);
        let display_ast = engine
            .compile("to_debug(__value__)")
            .expect("display snippet compiles");
        let mut scope = Scope::new();
        scope.push_constant("ARGS", Map::new());
        Interpreter {
            engine,
            help,
            scope,
            functions: AST::empty(),
            display_ast,
        }
    }

    /// The underlying Rhai engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The help index of every registered primitive.
    pub fn help(&self) -> &HelpIndex {
        &self.help
    }

    /// The current scope (variables defined so far).
    pub fn scope(&self) -> &Scope<'static> {
        &self.scope
    }

    /// Set the `ARGS` map the script sees (from `--set key=value`).
    pub fn set_args(&mut self, args: Map) {
        let _ = self.scope.remove::<Dynamic>("ARGS");
        self.scope.push_constant("ARGS", args);
    }

    /// Compile a file without running it; syntax errors carry file, line and column.
    pub fn check_file(&self, path: &Path) -> Result<(), ScriptError> {
        let name = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| ScriptError::io(&name, &e))?;
        self.engine
            .compile(&source)
            .map(|_| ())
            .map_err(|e| ScriptError::from_parse(&e, &name, &source))
    }

    /// Run a script file in this session and return the value of its last statement.
    pub fn run_file(&mut self, path: &Path) -> Result<Dynamic, ScriptError> {
        let name = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| ScriptError::io(&name, &e))?;
        self.eval_source(&source, &name)
    }

    /// Evaluate code in this session: variables and `fn` definitions persist across calls.
    ///
    /// `name` is the file (or `<repl>`) that error messages name. Imports resolve against
    /// the folder of `name` when it is a file.
    pub fn eval_source(&mut self, source: &str, name: &str) -> Result<Dynamic, ScriptError> {
        let mut ast = self
            .engine
            .compile(source)
            .map_err(|e| ScriptError::from_parse(&e, name, source))?;
        ast.set_source(name);
        // Keep earlier `fn` definitions visible, and remember new ones for later lines.
        let mut combined = self.functions.clone_functions_only();
        combined += ast;
        combined.set_source(name);
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &combined);
        self.functions += combined.clone_functions_only();
        result.map_err(|e| ScriptError::from_eval(&e, name, source))
    }

    /// Whether `input` is an unfinished expression or block that should continue on the
    /// next line (an open bracket, an unterminated string, a trailing operator).
    pub fn is_incomplete(&self, input: &str) -> bool {
        use rhai::{LexError, ParseErrorType};
        if input.trim().is_empty() {
            return false;
        }
        match self.engine.compile(input) {
            Ok(_) => false,
            Err(e) => match e.err_type() {
                ParseErrorType::UnexpectedEOF => true,
                ParseErrorType::BadInput(LexError::UnterminatedString) => true,
                _ => {
                    let lines: Vec<&str> = input.lines().collect();
                    let last_line = lines.len();
                    let last_len = lines.last().map(|l| l.chars().count()).unwrap_or(0);
                    match (e.position().line(), e.position().position()) {
                        (Some(l), Some(c)) => l > last_line || (l == last_line && c > last_len),
                        (Some(l), None) => l > last_line,
                        _ => false,
                    }
                }
            },
        }
    }

    /// A readable rendering of a value for the REPL (strings quoted, custom types described).
    pub fn display(&self, value: &Dynamic) -> String {
        let mut scope = Scope::new();
        scope.push("__value__", value.clone());
        self.engine
            .eval_ast_with_scope::<String>(&mut scope, &self.display_ast)
            .unwrap_or_else(|_| value.to_string())
    }

    /// Completion candidates for `line` with the cursor at byte `pos`: the start of the word
    /// being completed and the candidates that replace it.
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        complete::complete(self, line, pos)
    }

    /// Names of the variables in scope.
    pub fn variable_names(&self) -> Vec<String> {
        self.scope
            .iter_raw()
            .map(|(n, _, _)| n.to_string())
            .collect()
    }
}
