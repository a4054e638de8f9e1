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
pub mod maps;
pub mod options;
pub mod packages;
pub mod registrar;
pub mod resolver;

pub use error::{Catalog, ScriptError, ScriptErrorKind};
pub use help::HelpIndex;

use rhai::{AST, ASTNode, Dynamic, Engine, Expr, Map, Position, Scope, Stmt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Functions the Rhai language itself provides (keywords), which no package registers.
const BUILTIN_FUNCTIONS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "eval",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
    "this",
    "global",
];

/// How deeply expressions may nest (the parse of deep literals, e.g. nested arrays).
pub const MAX_EXPR_DEPTH: usize = 256;

/// How often (in script operations) the engine checks for Ctrl-C.
const INTERRUPT_CHECK_EVERY: u64 = 1024;

/// Build the detlab engine with every domain package registered, and its help index.
pub fn build_engine(fallback_dir: PathBuf) -> (Engine, Arc<HelpIndex>) {
    let mut engine = Engine::new();
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_EXPR_DEPTH);
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
    register_map_reads(&mut engine, &mut help);
    let help = Arc::new(help);
    let _ = help_cell.set(help.clone());
    (engine, help)
}

/// Strict map reads ([`maps`]) and `map.get(key, default)` for keys that may be missing.
fn register_map_reads(engine: &mut Engine, help: &mut HelpIndex) {
    engine.set_fail_on_invalid_map_property(true);
    maps::register(engine);
    let properties: Vec<String> = help
        .entries()
        .filter(|e| e.kind == help::EntryKind::Property)
        .map(|e| e.name.clone())
        .collect();
    for name in properties {
        maps::forward_getter(engine, &name);
    }
    let mut r = registrar::Registrar::new(engine, help, "core", "");
    r.method(
        "Map",
        "get(key: String, default: Dynamic) -> Dynamic",
        "The value of `key`, or `default` when the map has no such key.\n\
         Reading a missing key with `m.key` or `m[\"key\"]` is an error naming the key and\n\
         listing the keys present; `get` (or `m.key ?? default`) is for keys that may be missing.",
        "let ap = metrics.get(\"AP_IoU_0.10_MaxDet_100\", 0.0);",
        maps::get_or_default,
    );
}

/// A script session: the engine, its scope, and the functions defined so far.
pub struct Interpreter {
    engine: Engine,
    help: Arc<HelpIndex>,
    scope: Scope<'static>,
    functions: AST,
    display_ast: AST,
    /// Closures (`anon$…` functions) → the file and position where they are written.
    closures: HashMap<String, (String, Position)>,
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
            closures: HashMap::new(),
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

    /// Compile a file without running it: its syntax errors, or else its calls to functions
    /// that exist nowhere, each with file, line and column.
    pub fn check_file(&self, path: &Path) -> Result<(), Vec<ScriptError>> {
        let name = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| vec![ScriptError::io(&name, &e)])?;
        let errors = self.check_source(&source, &name);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The problems `detlab check` reports in `source` (named `name`): a syntax error, or the
    /// calls to functions and methods that exist nowhere (with the nearest name).
    pub fn check_source(&self, source: &str, name: &str) -> Vec<ScriptError> {
        let ast = match self.engine.compile(source) {
            Ok(ast) => ast,
            Err(e) => return vec![ScriptError::from_parse(&e, name, source)],
        };
        let catalog = self.catalog(Some(&ast));
        let known = |n: &str| catalog.functions.contains_key(n) || BUILTIN_FUNCTIONS.contains(&n);
        let mut errors = Vec::new();
        ast.walk(&mut |path: &[ASTNode]| {
            let (call, pos, method) = match path.last() {
                Some(ASTNode::Expr(Expr::FnCall(f, pos))) => (f, *pos, false),
                Some(ASTNode::Stmt(Stmt::FnCall(f, pos))) => (f, *pos, false),
                Some(ASTNode::Expr(Expr::MethodCall(f, pos))) => (f, *pos, true),
                _ => return true,
            };
            let fn_name = call.name.as_str();
            if call.is_qualified()
                || !rhai::is_valid_identifier(fn_name)
                || fn_name.starts_with("anon$")
                || known(fn_name)
            {
                return true;
            }
            let kind = if method { "method" } else { "function" };
            let mut message = format!("unknown {kind} `{fn_name}`");
            if let Some(s) = error::suggest(fn_name, catalog.functions.keys().map(String::as_str)) {
                message.push_str(&format!("; did you mean `{s}`?"));
            }
            errors.push(ScriptError::located(
                ScriptErrorKind::UnknownFunction,
                message,
                name,
                source,
                pos,
            ));
            true
        });
        errors.sort_by_key(|e| (e.line, e.column));
        errors
    }

    /// The names the engine knows (primitives with their signatures, the standard library,
    /// script functions of `ast` and of this session), the members of each type, the
    /// variables in scope and where closures are written: what error messages draw on.
    pub fn catalog(&self, ast: Option<&AST>) -> Catalog {
        let mut catalog = Catalog::default();
        for e in self.help.entries() {
            for s in &e.signatures {
                let text = match &s.receiver {
                    Some(r) => format!("{r}.{}", s.text),
                    None => s.text.clone(),
                };
                catalog
                    .functions
                    .entry(e.name.clone())
                    .or_default()
                    .push(error::user_types_in(&text));
                if let Some(r) = &s.receiver {
                    catalog
                        .members
                        .entry(r.clone())
                        .or_default()
                        .push(e.name.clone());
                }
            }
        }
        let documented: Vec<String> = catalog.functions.keys().cloned().collect();
        for signature in self.engine.gen_fn_signatures(true) {
            let fn_name = signature.split('(').next().unwrap_or("").trim();
            if !rhai::is_valid_identifier(fn_name) || documented.iter().any(|d| d == fn_name) {
                continue;
            }
            catalog
                .functions
                .entry(fn_name.to_string())
                .or_default()
                .push(error::user_types_in(&maps::unmark(&signature)));
        }
        for script in [Some(&self.functions), ast].into_iter().flatten() {
            for f in script.iter_functions() {
                if f.name.starts_with("anon$") {
                    continue;
                }
                let text = format!("{}({})", f.name, f.params.join(", "));
                let list = catalog.functions.entry(f.name.to_string()).or_default();
                if !list.contains(&text) {
                    list.push(text);
                }
            }
        }
        for members in catalog.members.values_mut() {
            members.sort();
            members.dedup();
        }
        catalog.variables = self.variable_names();
        catalog.closures = self.closures.clone();
        catalog
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
        let mut ast = maps::compile(&self.engine, source)
            .map_err(|e| ScriptError::from_parse(&e, name, source))?;
        ast.set_source(name);
        for f in ast.iter_fn_def() {
            if f.name.starts_with("anon$") {
                self.closures.insert(
                    f.name.to_string(),
                    (name.to_string(), f.body.start_position()),
                );
            }
        }
        // Keep earlier `fn` definitions visible, and remember new ones for later lines.
        let mut combined = self.functions.clone_functions_only();
        combined += ast;
        combined.set_source(name);
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &combined);
        self.functions += combined.clone_functions_only();
        result.map_err(|e| {
            let catalog = self.catalog(Some(&combined));
            let mut error = ScriptError::explain(&e, name, source, &catalog);
            error.message = maps::unmark(&error.message);
            error
        })
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
