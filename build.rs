//! Build-time tables for the script layer:
//!
//! * `stdlib_modules.rs`: every `stdlib/*.rhai` module embedded into the binary, so an
//!   installed detlab needs no source tree to `import "sweep"`;
//! * `type_docs.rs`: the fields (and enum variants) of every serde type under `src/`, each with
//!   its Rust type and its `///` doc comment. The script layer derives the option tables of
//!   `help`, the "expected one of" lists of errors and REPL completion from these and from the
//!   serialised defaults, so a config's doc comments are the one definition of its options.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    // The manifest folder of this build (read at run time: a build script compiled for another
    // checkout of the same target folder must not embed that checkout's files).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out_dir.join("stdlib_modules.rs"), stdlib_modules(&root)).unwrap();
    std::fs::write(out_dir.join("type_docs.rs"), type_docs(&root)).unwrap();
}

fn stdlib_modules(root: &Path) -> String {
    let dir = root.join("stdlib");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.retain(|p| p.extension().is_some_and(|e| e == "rhai"));
    entries.sort();
    let mut code = String::from(
        "/// The stdlib modules shipped with detlab: (name, source).\npub static STDLIB: &[(&str, &str)] = &[\n",
    );
    for p in &entries {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p.file_stem().unwrap().to_string_lossy();
        writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    code
}

/// One field of a struct or one variant of an enum.
struct Item {
    /// The serde name (after `rename` / `rename_all`).
    name: String,
    /// The Rust type of a field or of a tuple variant's payload; empty for unit variants.
    rust_type: String,
    /// The first paragraph of the doc comment, on one line.
    doc: String,
}

/// A serde struct or enum found in the sources.
struct TypeDef {
    path: String,
    is_enum: bool,
    untagged: bool,
    items: Vec<Item>,
}

fn type_docs(root: &Path) -> String {
    let src = root.join("src");
    println!("cargo:rerun-if-changed={}", src.display());
    let mut files = Vec::new();
    collect_rs_files(&src, &mut files);
    files.sort();
    let mut types = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        // The binary's own modules are not part of the library.
        if rel.starts_with("cli") || rel == Path::new("main.rs") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", file.display());
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        parse_file(&module_path(rel), &text, &mut types);
    }
    let mut code = String::from(
        "/// Every serde type under `src/` with its fields or variants and their doc comments.\n\
         pub static TYPE_DOCS: &[TypeDoc] = &[\n",
    );
    for t in &types {
        writeln!(
            code,
            "    TypeDoc {{ path: {:?}, is_enum: {}, untagged: {}, items: &[",
            t.path, t.is_enum, t.untagged
        )
        .unwrap();
        for i in &t.items {
            writeln!(
                code,
                "        ItemDoc {{ name: {:?}, rust_type: {:?}, doc: {:?} }},",
                i.name, i.rust_type, i.doc
            )
            .unwrap();
        }
        code.push_str("    ] },\n");
    }
    code.push_str("];\n");
    code
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            collect_rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `train/config.rs` → `detlab::train::config`; `nn/mod.rs` → `detlab::nn`.
fn module_path(rel: &Path) -> String {
    let mut parts = vec!["detlab".to_string()];
    let comps: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().to_string())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if last {
            let stem = c.trim_end_matches(".rs");
            if stem != "mod" && stem != "lib" {
                parts.push(stem.to_string());
            }
        } else {
            parts.push(c.clone());
        }
    }
    parts.join("::")
}

/// The body of a struct or enum being read.
struct Open {
    def: TypeDef,
    rename_all: Option<String>,
    depth: i32,
    /// A field or variant whose declaration continues on the next line.
    pending: String,
}

fn parse_file(module: &str, text: &str, types: &mut Vec<TypeDef>) {
    let mut docs: Vec<String> = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut attr_open = String::new();
    let mut open: Option<Open> = None;
    for raw in text.lines() {
        let line = raw.trim();
        // Inline test modules end the library code of a file (`mod tests;` does not).
        if (line.starts_with("mod tests") || line.starts_with("pub(crate) mod tests"))
            && line.ends_with('{')
        {
            break;
        }
        if !attr_open.is_empty() {
            attr_open.push(' ');
            attr_open.push_str(line);
            if balanced(&attr_open) {
                attrs.push(std::mem::take(&mut attr_open));
            }
            continue;
        }
        if let Some(doc) = line.strip_prefix("///") {
            docs.push(doc.trim().to_string());
            continue;
        }
        if line.starts_with("#[") {
            if balanced(line) {
                attrs.push(line.to_string());
            } else {
                attr_open = line.to_string();
            }
            continue;
        }
        if line.starts_with("//") || line.is_empty() {
            if line.is_empty() {
                docs.clear();
            }
            continue;
        }
        if let Some(o) = open.as_mut() {
            let code = strip_comment(line);
            let continues = !o.pending.is_empty();
            if continues || (o.depth == 1 && !code.starts_with('}')) {
                o.pending.push_str(code);
                o.pending.push(' ');
                if item_complete(&o.pending) {
                    let decl = std::mem::take(&mut o.pending);
                    if let Some(item) =
                        parse_item(&decl, o.def.is_enum, &attrs, &docs, &o.rename_all)
                    {
                        o.def.items.push(item);
                    }
                    docs.clear();
                    attrs.clear();
                }
            }
            o.depth += brace_delta(code);
            if o.depth <= 0 {
                let done = open.take().unwrap();
                types.push(done.def);
            }
            continue;
        }
        let serde_type = attrs
            .iter()
            .any(|a| a.starts_with("#[derive") && a.contains("Deserialize"));
        if serde_type && let Some((name, is_enum)) = type_header(line) {
            let untagged = attrs.iter().any(|a| a.contains("untagged"));
            let rename_all = attrs.iter().find_map(|a| attr_value(a, "rename_all"));
            let code = strip_comment(line);
            let depth = brace_delta(code);
            let def = TypeDef {
                path: format!("{module}::{name}"),
                is_enum,
                untagged,
                items: Vec::new(),
            };
            if depth > 0 {
                open = Some(Open {
                    def,
                    rename_all,
                    depth,
                    pending: String::new(),
                });
            }
        }
        docs.clear();
        attrs.clear();
    }
}

/// `pub struct Name {` / `pub enum Name<T> {` → (Name, is_enum).
fn type_header(line: &str) -> Option<(String, bool)> {
    let rest = line
        .strip_prefix("pub ")
        .or_else(|| line.strip_prefix("pub(crate) "))
        .unwrap_or(line);
    let (is_enum, rest) = if let Some(r) = rest.strip_prefix("struct ") {
        (false, r)
    } else if let Some(r) = rest.strip_prefix("enum ") {
        (true, r)
    } else {
        return None;
    };
    if !line.contains('{') {
        return None;
    }
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some((name, is_enum))
}

fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0
}

/// The code of a line without a trailing `//` comment and without string literals' contents.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

fn brace_delta(code: &str) -> i32 {
    let mut in_string = false;
    let mut delta = 0;
    let bytes = code.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'{' if !in_string => delta += 1,
            b'}' if !in_string => delta -= 1,
            _ => {}
        }
    }
    delta
}

/// A field or variant declaration is complete when its brackets balance and it ends with a
/// comma (or closes a struct variant).
fn item_complete(decl: &str) -> bool {
    let t = decl.trim();
    let mut depth = 0i32;
    for c in t.chars() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0 && (t.ends_with(',') || t.ends_with('}'))
}

fn attr_value(attr: &str, key: &str) -> Option<String> {
    let i = attr.find(&format!("{key} = \""))?;
    let rest = &attr[i + key.len() + 4..];
    Some(rest[..rest.find('"')?].to_string())
}

fn parse_item(
    decl: &str,
    is_enum: bool,
    attrs: &[String],
    docs: &[String],
    rename_all: &Option<String>,
) -> Option<Item> {
    let serde: Vec<&String> = attrs.iter().filter(|a| a.starts_with("#[serde")).collect();
    if serde
        .iter()
        .any(|a| a.contains("skip)") || a.contains("skip,") || a.contains("skip_deserializing"))
    {
        return None;
    }
    let decl = decl.trim().trim_end_matches(',').trim();
    let decl = decl
        .strip_prefix("pub(crate) ")
        .or_else(|| decl.strip_prefix("pub "))
        .unwrap_or(decl);
    let ident: String = decl
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        return None;
    }
    let rest = decl[ident.len()..].trim();
    let rust_type = if is_enum {
        match rest.strip_prefix('(') {
            Some(r) => r.trim_end_matches(')').trim().to_string(),
            None if rest.starts_with('{') => "{}".to_string(),
            None => String::new(),
        }
    } else {
        rest.strip_prefix(':')?.trim().to_string()
    };
    let explicit = serde.iter().find_map(|a| attr_value(a, "rename"));
    let name = match (explicit, rename_all) {
        (Some(n), _) => n,
        (None, Some(rule)) => apply_rename(&ident, rule, is_enum),
        (None, None) => ident,
    };
    let paragraph: Vec<&str> = docs
        .iter()
        .map(String::as_str)
        .take_while(|l| !l.is_empty())
        .collect();
    Some(Item {
        name,
        rust_type,
        doc: paragraph.join(" "),
    })
}

/// serde's `rename_all` rules for variant names (PascalCase) and field names (snake_case).
fn apply_rename(ident: &str, rule: &str, is_enum: bool) -> String {
    let words: Vec<String> = if is_enum {
        let mut words = Vec::new();
        let mut current = String::new();
        for c in ident.chars() {
            if c.is_uppercase() && !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            current.push(c);
        }
        if !current.is_empty() {
            words.push(current);
        }
        words
    } else {
        ident.split('_').map(str::to_string).collect()
    };
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    match rule {
        "lowercase" => ident.to_lowercase(),
        "UPPERCASE" => ident.to_uppercase(),
        "snake_case" => lower.join("_"),
        "SCREAMING_SNAKE_CASE" => lower.join("_").to_uppercase(),
        "kebab-case" => lower.join("-"),
        "SCREAMING-KEBAB-CASE" => lower.join("-").to_uppercase(),
        "camelCase" | "PascalCase" => {
            let mut out = String::new();
            for (i, w) in lower.iter().enumerate() {
                let mut chars = w.chars();
                match chars.next() {
                    Some(first) if i > 0 || rule == "PascalCase" => {
                        out.push(first.to_ascii_uppercase());
                        out.extend(chars);
                    }
                    Some(first) => {
                        out.push(first);
                        out.extend(chars);
                    }
                    None => {}
                }
            }
            out
        }
        _ => ident.to_string(),
    }
}
