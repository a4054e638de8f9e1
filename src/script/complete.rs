//! Tab completion for the REPL: primitive names, variables, methods of a variable's type,
//! map keys of a variable, stdlib module names and REPL commands.

use super::Interpreter;
use rhai::Map;

const KEYWORDS: &[&str] = &[
    "let", "const", "fn", "for", "in", "if", "else", "while", "loop", "break", "continue",
    "return", "import", "as", "true", "false", "switch", "throw", "try", "catch",
];

/// REPL meta commands, completed when the line starts with `:`.
pub const COMMANDS: &[&str] = &[":help", ":load", ":quit", ":vars", ":clear"];

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.' || c == ':'
}

/// Compute (start of the replaced word, candidates) for `line` with the cursor at `pos`.
pub fn complete(interp: &Interpreter, line: &str, pos: usize) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    let before = &line[..pos];
    if before.trim_start().starts_with(':') && !before.contains(' ') {
        let start = before.len() - before.trim_start().len();
        let word = before.trim_start();
        return (
            start,
            COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| c.to_string())
                .collect(),
        );
    }
    // Inside a string after `import "`: stdlib modules.
    if let Some(q) = before.rfind("import \"") {
        let start = q + "import \"".len();
        if !before[start..].contains('"') {
            let word = &before[start..];
            let names = super::resolver::stdlib_names()
                .filter(|n| n.starts_with(word))
                .map(str::to_string)
                .collect();
            return (start, names);
        }
    }
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !is_word_char(*c))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let word = &before[start..];
    if let Some(dot) = word.rfind('.') {
        let target = &word[..dot];
        let prefix = &word[dot + 1..];
        let member_start = start + dot + 1;
        return (member_start, member_candidates(interp, target, prefix));
    }
    let mut out: Vec<String> = Vec::new();
    for e in interp.help().names_with_prefix(word) {
        if e.kind == super::help::EntryKind::Function {
            out.push(format!("{}(", e.name));
        }
    }
    for v in interp.variable_names() {
        if v.starts_with(word) && !out.contains(&v) {
            out.push(v);
        }
    }
    for k in KEYWORDS {
        if k.starts_with(word) {
            out.push(k.to_string());
        }
    }
    out.sort();
    out.dedup();
    (start, out)
}

/// Members of `target` (a variable path like `run` or `run.history`) starting with `prefix`.
fn member_candidates(interp: &Interpreter, target: &str, prefix: &str) -> Vec<String> {
    let mut parts = target.split('.');
    let Some(root) = parts.next() else {
        return Vec::new();
    };
    let Some(mut value) = interp.scope().get_value::<rhai::Dynamic>(root) else {
        return Vec::new();
    };
    for key in parts {
        let next = value.read_lock::<Map>().and_then(|m| m.get(key).cloned());
        match next {
            Some(v) => value = v,
            None => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    if let Some(map) = value.read_lock::<Map>() {
        out.extend(
            map.keys()
                .filter(|k| k.starts_with(prefix))
                .map(|k| k.to_string()),
        );
    } else {
        let type_name = interp.engine().map_type_name(value.type_name()).to_string();
        for e in interp.help().members_of(&type_name) {
            if e.name.starts_with(prefix) {
                out.push(match e.kind {
                    super::help::EntryKind::Method => format!("{}(", e.name),
                    _ => e.name.clone(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
