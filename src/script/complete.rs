//! Tab completion for the REPL: primitive names, variables, methods of a variable's type,
//! map keys of a variable, option keys inside a primitive's `#{…}` options map, stdlib
//! module names and REPL commands.

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
    if let Some(keys) = option_key_candidates(&before[..start], word) {
        return (start, keys);
    }
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

/// An open bracket while scanning a line: a call `name(`, a map `#{` (with the key it is the
/// value of, if any), or another bracket.
enum Open {
    Call(String),
    Map { key: Option<String>, start: usize },
    Other,
}

/// Option keys for a word typed at a key position of an options map, e.g. after
/// `train(m, pre, #{l` or `#{optimizer: #{mo`: the keys of the called primitive's declared
/// options (at the nested path) that start with the word and are not yet in the map.
fn option_key_candidates(before: &str, word: &str) -> Option<Vec<String>> {
    if word.contains('.') || word.contains(':') {
        return None;
    }
    let mut stack: Vec<Open> = Vec::new();
    let chars: Vec<(usize, char)> = before.char_indices().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let (at, c) = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '`' => quote = Some(c),
            '(' => stack.push(Open::Call(identifier_before(&before[..at]))),
            '{' if at > 0 && before[..at].ends_with('#') => {
                let head = before[..at - 1].trim_end();
                let key = head
                    .strip_suffix(':')
                    .map(|h| identifier_before(h.trim_end()))
                    .filter(|k| !k.is_empty());
                stack.push(Open::Map { key, start: at + 1 });
            }
            '[' | '{' => stack.push(Open::Other),
            ')' | ']' | '}' => {
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    if quote.is_some() {
        return None;
    }
    let Some(Open::Map { start, .. }) = stack.last() else {
        return None;
    };
    // A key position: right after `{` or `,` of the innermost map.
    if !matches!(before.trim_end().chars().last(), Some('{') | Some(',')) {
        return None;
    }
    let present = keys_in(&before[*start..]);
    // The maps from the innermost out to the call's options map, then the primitive.
    let mut maps: Vec<Option<String>> = Vec::new();
    let mut primitive = None;
    for open in stack.iter().rev() {
        match open {
            Open::Map { key, .. } => maps.push(key.clone()),
            Open::Call(name) => {
                primitive = Some(name.clone());
                break;
            }
            Open::Other => return None,
        }
    }
    let primitive = primitive?;
    // Every map but the options map itself is the value of a key: that is the nested path.
    maps.pop();
    let path: Vec<String> = maps.into_iter().rev().collect::<Option<Vec<String>>>()?;
    let refs: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::new();
    for set in super::options::sets_for(&primitive) {
        if let Some(level) = set.options_at(&refs) {
            for o in level {
                if o.key.starts_with(word) && !present.contains(&o.key) && !out.contains(&o.key) {
                    out.push(o.key.clone());
                }
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(out.into_iter().map(|k| format!("{k}: ")).collect())
}

/// The identifier that ends `text` (a method name after its `.`, a function name).
fn identifier_before(text: &str) -> String {
    let rev: String = text
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    rev.chars().rev().collect()
}

/// The keys already written at the top level of a map literal's text.
fn keys_in(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ':' if depth == 0 => {
                keys.push(current.trim().trim_matches('"').to_string());
                current.clear();
                continue;
            }
            ',' if depth == 0 => {
                current.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            current.push(c);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::{identifier_before, keys_in};

    #[test]
    fn map_literal_text_is_read() {
        assert_eq!(identifier_before("let r = train"), "train");
        assert_eq!(identifier_before("x.resample"), "resample");
        assert_eq!(keys_in("lr: 0.1, patch: [1, 2, 3], "), vec!["lr", "patch"]);
    }
}
