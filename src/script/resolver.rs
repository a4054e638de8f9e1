//! `import "name"` resolution: first the importing script's own folder, then the stdlib
//! embedded in the binary.

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

include!(concat!(env!("OUT_DIR"), "/stdlib_modules.rs"));

/// The display name of an embedded stdlib module.
fn stdlib_display(name: &str) -> String {
    format!("stdlib/{name}.rhai")
}

/// The source text of an embedded stdlib module, by bare name.
pub fn stdlib_source(name: &str) -> Option<&'static str> {
    STDLIB.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The names of all embedded stdlib modules.
pub fn stdlib_names() -> impl Iterator<Item = &'static str> {
    STDLIB.iter().map(|(n, _)| *n)
}

/// A module path as shown in error messages (resolved file path or `stdlib/<name>.rhai`).
pub fn display_path(path: &str) -> String {
    path.to_string()
}

/// The source of a module given its display path, for showing the offending line.
pub fn module_source(path: &str) -> Option<String> {
    if let Some(name) = path
        .strip_prefix("stdlib/")
        .and_then(|p| p.strip_suffix(".rhai"))
        && let Some(src) = stdlib_source(name)
    {
        return Some(src.to_string());
    }
    std::fs::read_to_string(path).ok()
}

/// Resolves `import` statements: the importing script's folder, then the embedded stdlib.
pub struct DetlabResolver {
    /// Folder used when the importing code has no file (the REPL): the working directory.
    fallback_dir: PathBuf,
    cache: Mutex<HashMap<String, Shared<Module>>>,
}

impl DetlabResolver {
    /// A resolver that uses `fallback_dir` for code that was not read from a file.
    pub fn new(fallback_dir: PathBuf) -> Self {
        DetlabResolver {
            fallback_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn local_candidates(&self, source: Option<&str>, path: &str) -> Vec<PathBuf> {
        let dir = source
            .map(Path::new)
            .filter(|p| p.is_file())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| self.fallback_dir.clone());
        let base = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            dir.join(path)
        };
        let mut out = vec![base.clone()];
        if base.extension().is_none_or(|e| e != "rhai") {
            out.insert(0, base.with_extension("rhai"));
        }
        out
    }

    fn compile_and_eval(
        &self,
        engine: &Engine,
        key: String,
        source_text: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        if let Some(m) = self.cache.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let wrap =
            |err: Box<EvalAltResult>| Box::new(EvalAltResult::ErrorInModule(key.clone(), err, pos));
        let mut ast = super::maps::compile(engine, source_text).map_err(|e| wrap(e.into()))?;
        ast.set_source(key.clone());
        let mut module = Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(wrap)?;
        module.build_index();
        let shared: Shared<Module> = module.into();
        self.cache.lock().unwrap().insert(key, shared.clone());
        Ok(shared)
    }
}

impl ModuleResolver for DetlabResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        for candidate in self.local_candidates(source, path) {
            if candidate.is_file() {
                let text = std::fs::read_to_string(&candidate).map_err(|e| {
                    Box::new(EvalAltResult::ErrorSystem(
                        format!("cannot read module {}", candidate.display()),
                        e.into(),
                    ))
                })?;
                return self.compile_and_eval(engine, candidate.display().to_string(), &text, pos);
            }
        }
        let name = path.trim_end_matches(".rhai");
        if let Some(text) = stdlib_source(name) {
            return self.compile_and_eval(engine, stdlib_display(name), text, pos);
        }
        let available: Vec<&str> = stdlib_names().collect();
        Err(Box::new(EvalAltResult::ErrorRuntime(
            format!(
                "module '{path}' not found: looked in the script's folder and the stdlib (which has: {})",
                available.join(", ")
            )
            .into(),
            pos,
        )))
    }
}
