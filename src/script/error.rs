//! Script errors with their place: file, line and column, the offending source line, and a
//! short call trace in script terms. Messages use the script's type names (`String`, `Int`,
//! `Float`, `Volume`, …), suggest the nearest name for a typo, and list a function's valid
//! signatures when it was called with the wrong types.

use rhai::{EvalAltResult, ParseError, Position};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What went wrong while compiling or running a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptErrorKind {
    /// The script does not parse.
    Syntax,
    /// A call to a function that exists nowhere (found by `detlab check` before running).
    UnknownFunction,
    /// A runtime error (a bad argument, a failed primitive, a type mismatch, …).
    Runtime,
    /// The user pressed Ctrl-C.
    Interrupted,
    /// A file could not be read.
    Io,
}

/// A place in a script with the text of its line, for a caret display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSite {
    /// `file:line:column`.
    pub location: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The text of the line.
    pub text: String,
}

/// An error located in a script: `file:line:column: message`.
#[derive(Debug, Clone)]
pub struct ScriptError {
    /// The kind of failure.
    pub kind: ScriptErrorKind,
    /// The message, without location.
    pub message: String,
    /// The script (or module) file, or `<repl>`.
    pub file: String,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// The text of the offending line, for a caret display.
    pub source_line: Option<String>,
    /// The call trace, innermost call first, e.g. "in `boom`, called at main.rhai:2:1".
    pub context: Vec<String>,
    /// When the error lies outside the user's script (in a stdlib module), the user's line
    /// that led to it.
    pub user_site: Option<SourceSite>,
}

/// What the interpreter knows when it explains an error: the callable names with their
/// signatures, the members of each type, the variables, and where closures are defined.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Function name → its signatures as users read them (`Volume.resample(spacing: …) -> Volume`).
    pub functions: BTreeMap<String, Vec<String>>,
    /// Receiver type → names of its methods and properties.
    pub members: BTreeMap<String, Vec<String>>,
    /// Variables in scope.
    pub variables: Vec<String>,
    /// Closure (`anon$…` function) → the file it is written in and its position there.
    pub closures: HashMap<String, (String, Position)>,
}

/// The nearest of `candidates` to a mistyped `word`, if one is close enough to be a typo.
///
/// The one helper behind every "did you mean" (functions, methods, option keys, map keys).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let distance = if c.to_lowercase() == lower {
            0
        } else {
            strsim::damerau_levenshtein(&lower, &c.to_lowercase())
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, c));
        }
    }
    let (distance, name) = best?;
    let shortest = word.chars().count().min(name.chars().count());
    let allowed = (shortest / 3).clamp(1, 3);
    // A one-letter word is "near" every other one-letter word: no suggestion then.
    (distance <= allowed && distance < shortest).then(|| name.to_string())
}

/// A Rhai type name in script terms: `&str | ImmutableString | String` → `String`,
/// `i64` → `Int`, `f64` → `Float`, `bool` → `Bool`, `rhai::Map` → `Map`, …
pub fn user_type_name(type_name: &str) -> String {
    let t = type_name.trim();
    let t = t.strip_prefix("&mut ").unwrap_or(t);
    let t = t.strip_prefix('&').unwrap_or(t);
    if t.contains("ImmutableString") {
        return "String".into();
    }
    match t {
        "i64" | "i32" | "i16" | "i8" | "u64" | "u32" | "u16" | "u8" | "usize" | "isize" | "INT" => {
            "Int".into()
        }
        "f64" | "f32" | "FLOAT" => "Float".into(),
        "bool" => "Bool".into(),
        "char" => "Char".into(),
        "str" | "string" | "String" => "String".into(),
        "int" => "Int".into(),
        "float" => "Float".into(),
        "map" | "Map" | "rhai::Map" => "Map".into(),
        "array" | "Array" | "rhai::Array" => "Array".into(),
        "blob" | "Blob" => "Blob".into(),
        "Fn" | "FnPtr" | "rhai::FnPtr" => "Fn".into(),
        "()" => "()".into(),
        other => other.rsplit("::").next().unwrap_or(other).to_string(),
    }
}

/// Every Rhai type name inside `text` in script terms (`[f64; 3]` → `[Float; 3]`).
pub fn user_types_in(text: &str) -> String {
    let text = text.replace("&str | ImmutableString | String", "String");
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            // After `: ` or `-> ` a word is a type (`len(map: map)`); elsewhere only Rhai's
            // Rust type names are rewritten.
            let type_position = out.ends_with(": ") || out.ends_with("-> ");
            let mapped = match word.as_str() {
                "i64" | "i32" | "u64" | "u32" | "usize" | "INT" | "f64" | "f32" | "FLOAT"
                | "bool" | "ImmutableString" | "rhai::Map" | "rhai::Array" | "rhai::FnPtr" => {
                    user_type_name(word)
                }
                _ if type_position => user_type_name(word),
                _ => word.clone(),
            };
            out.push_str(&mapped);
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.replace("&mut ", "")
}

impl ScriptError {
    /// An I/O error on a script file.
    pub fn io(file: &str, err: &std::io::Error) -> Self {
        ScriptError {
            kind: ScriptErrorKind::Io,
            message: format!("cannot read script: {err}"),
            file: file.to_string(),
            line: None,
            column: None,
            source_line: None,
            context: Vec::new(),
            user_site: None,
        }
    }

    /// Convert a parse error of `source` (read from `file`).
    pub fn from_parse(err: &ParseError, file: &str, source: &str) -> Self {
        let mut e = Self::located(
            ScriptErrorKind::Syntax,
            err.err_type().to_string(),
            file,
            source,
            err.position(),
        );
        e.message = format!("syntax error: {}", e.message);
        e
    }

    /// An error with a message at `pos` of `source` (read from `file`).
    pub fn located(
        kind: ScriptErrorKind,
        message: String,
        file: &str,
        source: &str,
        pos: Position,
    ) -> Self {
        let line = pos.line();
        ScriptError {
            kind,
            message,
            file: file.to_string(),
            line,
            column: pos.position(),
            source_line: line
                .and_then(|l| source.lines().nth(l - 1))
                .map(str::to_string),
            context: Vec::new(),
            user_site: None,
        }
    }

    /// Convert a runtime error of a script `source` read from `file`, without a catalog of
    /// names (no suggestions).
    pub fn from_eval(err: &EvalAltResult, file: &str, source: &str) -> Self {
        Self::explain(err, file, source, &Catalog::default())
    }

    /// Convert a runtime error of a script `source` read from `file`.
    ///
    /// Errors raised inside imported modules, script functions and closures are unwrapped to
    /// the innermost location (a closure's own file, whoever called it), and the calls are kept
    /// as a trace. `catalog` provides the names for "did you mean" and the signatures of a
    /// function called with the wrong types.
    pub fn explain(err: &EvalAltResult, file: &str, source: &str, catalog: &Catalog) -> Self {
        let user_file = file.to_string();
        let mut frames: Vec<(String, String, Position)> = Vec::new();
        let mut current = err;
        let mut file = file.to_string();
        let mut source_text: Option<String> = Some(source.to_string());
        let read = |path: &str| -> Option<String> {
            if path == user_file {
                Some(source.to_string())
            } else {
                super::resolver::module_source(path)
            }
        };
        loop {
            match current {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                    let (callee_file, what) = match catalog.closures.get(name.as_str()) {
                        Some((defined_in, at)) => (
                            defined_in.clone(),
                            format!("in the closure defined at {}", fmt_pos(defined_in, *at)),
                        ),
                        None if name.starts_with("anon$") => {
                            (file.clone(), "in a closure".to_string())
                        }
                        None => {
                            let f = if src.is_empty() {
                                file.clone()
                            } else {
                                src.to_string()
                            };
                            (f, format!("in `{name}`"))
                        }
                    };
                    frames.push((what, file.clone(), *pos));
                    if callee_file != file {
                        source_text = read(&callee_file);
                        file = callee_file;
                    }
                    current = inner;
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    frames.push((format!("in module `{path}`"), file.clone(), *pos));
                    file = super::resolver::display_path(path);
                    source_text = super::resolver::module_source(path);
                    current = inner;
                }
                _ => break,
            }
        }
        let kind = match current {
            EvalAltResult::ErrorTerminated(..) => ScriptErrorKind::Interrupted,
            EvalAltResult::ErrorParsing(..) => ScriptErrorKind::Syntax,
            _ => ScriptErrorKind::Runtime,
        };
        let text = source_text.as_deref().unwrap_or("");
        let message = message_of(current, text, catalog);
        let mut e = Self::located(kind, message, &file, text, current.position());
        // Innermost first, at most a screenful.
        const MAX_FRAMES: usize = 8;
        let total = frames.len();
        for (i, (what, call_file, pos)) in frames.iter().rev().enumerate() {
            if i == MAX_FRAMES {
                e.context
                    .push(format!("… {} more calls", total - MAX_FRAMES));
                break;
            }
            e.context
                .push(format!("{what}, called at {}", fmt_pos(call_file, *pos)));
        }
        if file != user_file
            && let Some((_, _, pos)) = frames.iter().rev().find(|(_, f, _)| *f == user_file)
            && let (Some(line), Some(column)) = (pos.line(), pos.position())
            && let Some(text) = source.lines().nth(line - 1)
        {
            e.user_site = Some(SourceSite {
                location: fmt_pos(&user_file, *pos),
                line,
                column,
                text: text.to_string(),
            });
        }
        e
    }

    /// `file:line:column` (or just `file`).
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file),
            (Some(l), None) => format!("{}:{l}", self.file),
            _ => self.file.clone(),
        }
    }
}

/// The message of the innermost error, in script terms.
fn message_of(err: &EvalAltResult, source: &str, catalog: &Catalog) -> String {
    let unmarked = |text: &str| super::maps::unmark(text);
    match err {
        EvalAltResult::ErrorTerminated(token, _) => token
            .clone()
            .into_string()
            .unwrap_or_else(|_| "script terminated".to_string()),
        EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
        EvalAltResult::ErrorFunctionNotFound(signature, pos) => {
            let method = is_method_call(source, *pos);
            missing_function(&unmarked(signature), method, catalog)
        }
        EvalAltResult::ErrorVariableNotFound(name, _) => {
            let name = unmarked(name);
            let mut m = format!("unknown variable `{name}`");
            if let Some(s) = suggest(&name, catalog.variables.iter().map(String::as_str)) {
                m.push_str(&format!("; did you mean `{s}`?"));
            }
            m
        }
        EvalAltResult::ErrorPropertyNotFound(key, _) => {
            format!("the map has no key `{key}`")
        }
        EvalAltResult::ErrorDotExpr(text, _) if text.starts_with("Unknown property '") => {
            missing_property(&unmarked(text), catalog)
        }
        other => user_types_in(&strip_position(&other.to_string())),
    }
}

/// Whether the call at `pos` is written `value.name(…)`.
fn is_method_call(source: &str, pos: Position) -> bool {
    let (Some(line), Some(column)) = (pos.line(), pos.position()) else {
        return false;
    };
    let Some(text) = source.lines().nth(line - 1) else {
        return false;
    };
    let before: String = text.chars().take(column.saturating_sub(1)).collect();
    before.trim_end().ends_with('.')
}

/// "Function not found: name (T1, T2)": an unknown name (with the nearest one), or a known
/// function called with the wrong types (with its valid signatures).
fn missing_function(signature: &str, method: bool, catalog: &Catalog) -> String {
    let (name, args) = match signature.split_once(" (") {
        Some((n, rest)) => (n.trim(), rest.trim_end_matches(')')),
        None => (signature.trim(), ""),
    };
    let arg_types: Vec<String> = split_types(args)
        .iter()
        .map(|t| user_type_name(t))
        .collect();
    let shown_args = arg_types.join(", ");
    if let Some(signatures) = catalog.functions.get(name) {
        let receiver = if method { arg_types.first() } else { None };
        let mut lines: Vec<&String> = signatures.iter().collect();
        // The receiver's own overloads first.
        if let Some(r) = receiver {
            lines.sort_by_key(|s| !s.starts_with(&format!("{r}.")));
        }
        let mut m = format!("`{name}` cannot take ({shown_args}); it takes:");
        const MAX: usize = 8;
        for s in lines.iter().take(MAX) {
            m.push_str(&format!("\n    {s}"));
        }
        if lines.len() > MAX {
            m.push_str(&format!("\n    … ({} more)", lines.len() - MAX));
        }
        return m;
    }
    let receiver = arg_types.first().filter(|_| method);
    let mut m = match receiver {
        Some(r) => format!("unknown method `{name}` of {r}"),
        None => format!("unknown function `{name}`"),
    };
    let own = receiver
        .and_then(|r| catalog.members.get(r))
        .and_then(|members| suggest(name, members.iter().map(String::as_str)));
    let nearest = own.or_else(|| suggest(name, catalog.functions.keys().map(String::as_str)));
    match nearest {
        Some(s) => m.push_str(&format!("; did you mean `{s}`?")),
        None if !shown_args.is_empty() && receiver.is_none() => {
            m.push_str(&format!(" (called with {shown_args})"))
        }
        None => {}
    }
    m
}

/// "Unknown property 'shap' - a getter is not registered for type 'Volume'".
fn missing_property(text: &str, catalog: &Catalog) -> String {
    let quoted: Vec<&str> = text.split('\'').collect();
    let (property, type_name) = match quoted.as_slice() {
        [_, p, _, t, ..] => (*p, user_type_name(t)),
        [_, p, ..] => (*p, String::from("this value")),
        _ => return user_types_in(text),
    };
    let mut m = format!("{type_name} has no property `{property}`");
    if let Some(s) = catalog
        .members
        .get(&type_name)
        .and_then(|members| suggest(property, members.iter().map(String::as_str)))
    {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    m
}

/// Split "Volume, f64, &str | ImmutableString | String" at top-level commas.
fn split_types(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in args.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(current.trim().to_string());
            current.clear();
        } else {
            current.push(c);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

fn fmt_pos(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// Rhai appends " (line 3, position 5)" to messages; we print the location ourselves.
fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(i) if message.ends_with(')') => message[..i].to_string(),
        _ => message.to_string(),
    }
}

fn caret(f: &mut fmt::Formatter<'_>, line: usize, text: &str, column: usize) -> fmt::Result {
    let number = line.to_string();
    write!(
        f,
        "\n {number} | {text}\n {} | {}^",
        " ".repeat(number.len()),
        " ".repeat(column.saturating_sub(1))
    )
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let (Some(text), Some(col), Some(line)) = (&self.source_line, self.column, self.line) {
            caret(f, line, text, col)?;
        }
        for c in &self.context {
            write!(f, "\n  {c}")?;
        }
        if let Some(site) = &self.user_site {
            write!(f, "\n  from your script at {}:", site.location)?;
            caret(f, site.line, &site.text, site.column)?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_typos_only() {
        let names = ["resample", "resample_to_shape", "rescale"];
        assert_eq!(suggest("resampel", names).as_deref(), Some("resample"));
        assert_eq!(suggest("xyz", names), None);
        let keys = ["AP_IoU_0.10_MaxDet_100", "FROC_score_IoU_0.10"];
        assert_eq!(
            suggest("AP_IoU_0.1_MaxDet_100", keys).as_deref(),
            Some("AP_IoU_0.10_MaxDet_100")
        );
    }

    #[test]
    fn rhai_type_names_become_script_names() {
        assert_eq!(user_type_name("&str | ImmutableString | String"), "String");
        assert_eq!(user_type_name("f64"), "Float");
        assert_eq!(user_type_name("i64"), "Int");
        assert_eq!(
            user_types_in("resample(spacing: [f64; 3]) -> i64"),
            "resample(spacing: [Float; 3]) -> Int"
        );
        assert_eq!(
            user_types_in("len (&str | ImmutableString | String, i64)"),
            "len (String, Int)"
        );
        assert_eq!(
            user_types_in("keys(map: map) -> Array"),
            "keys(map: Map) -> Array"
        );
    }

    #[test]
    fn wrong_types_list_the_signatures() {
        let mut catalog = Catalog::default();
        catalog.functions.insert(
            "resample".into(),
            vec!["Volume.resample(spacing: Array) -> Volume".into()],
        );
        let m = missing_function("resample (Volume, f64)", true, &catalog);
        assert_eq!(
            m,
            "`resample` cannot take (Volume, Float); it takes:\n    Volume.resample(spacing: Array) -> Volume"
        );
        let m = missing_function("resampel (i64)", false, &catalog);
        assert_eq!(m, "unknown function `resampel`; did you mean `resample`?");
    }
}
