//! Options maps of script primitives, from one definition.
//!
//! A primitive's options are the fields of its typed (serde) config plus a few script-only
//! keys declared next to the primitive ([`Extra`]). Everything users see about them derives
//! from that: the keys and defaults from the serialised default config, the types and the
//! one-line descriptions from the config's `///` doc comments (read at build time by
//! `build.rs` into [`TYPE_DOCS`]). So `help("train")`'s table, the "expected one of" list of
//! an unknown-key error and the REPL's completion of option keys cannot disagree.
//!
//! [`deserialize`] turns an options map into the config: integers are accepted wherever a
//! float is expected, and an error names the option (`optimizer.momentum`), what it must be
//! and what it got.

use super::error::suggest;
use rhai::{Dynamic, Map};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A serde struct or enum of the library, as `build.rs` read it from the sources.
#[derive(Debug)]
pub struct TypeDoc {
    /// The full path, as `std::any::type_name` prints it (`detlab::train::config::TrainConfig`).
    pub path: &'static str,
    /// An enum (its items are variants) rather than a struct (its items are fields).
    pub is_enum: bool,
    /// An untagged enum: a value is one of the variants' payloads.
    pub untagged: bool,
    /// Fields or variants in declaration order.
    pub items: &'static [ItemDoc],
}

/// One field of a struct or one variant of an enum.
#[derive(Debug)]
pub struct ItemDoc {
    /// The serde name (after `rename` / `rename_all`).
    pub name: &'static str,
    /// The Rust type of a field or of a tuple variant's payload; empty for a unit variant.
    pub rust_type: &'static str,
    /// The first paragraph of its doc comment, on one line.
    pub doc: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/type_docs.rs"));

/// The type documentation of `path`, or of the type named like its last segment that lives
/// closest to the module `near` (for field types written without their module).
fn find_type(name: &str, near: &str) -> Option<&'static TypeDoc> {
    if let Some(t) = TYPE_DOCS.iter().find(|t| t.path == name) {
        return Some(t);
    }
    let simple = name.rsplit("::").next().unwrap_or(name);
    let suffix = format!("::{simple}");
    TYPE_DOCS
        .iter()
        .filter(|t| t.path.ends_with(&suffix))
        .max_by_key(|t| common_prefix(t.path, near))
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.split("::")
        .zip(b.split("::"))
        .take_while(|(x, y)| x == y)
        .count()
}

/// The module part of a type path (`detlab::train::config` of `…::config::TrainConfig`).
fn module_of(path: &str) -> &str {
    path.rsplit_once("::").map(|(m, _)| m).unwrap_or(path)
}

/// One option of a primitive, as `help` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionDoc {
    /// The key in the options map.
    pub key: String,
    /// The type in script terms (`Float`, `[Int, Int, Int]`, `"sgd" | "adam"`, `Map`, …).
    pub type_name: String,
    /// The default as a script literal (`0.01`, `"runs/train"`, `()`).
    pub default: String,
    /// One line saying what it does.
    pub doc: String,
    /// The keys of a nested options map (`optimizer.kind`, …); empty for plain values.
    pub children: Vec<OptionDoc>,
    /// A script-only key of the primitive rather than a field of its config.
    pub script_only: bool,
}

/// A script-only option of a primitive: a key it reads itself, outside its typed config.
#[derive(Clone, Copy, Debug)]
pub struct Extra {
    /// The key.
    pub key: &'static str,
    /// Its type in script terms.
    pub type_name: &'static str,
    /// Its default, as a script literal or in words.
    pub default: &'static str,
    /// One line saying what it does.
    pub doc: &'static str,
}

impl Extra {
    /// A script-only option: key, type, default and one line of documentation.
    pub const fn new(
        key: &'static str,
        type_name: &'static str,
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        Extra {
            key,
            type_name,
            default,
            doc,
        }
    }
}

/// The options one primitive accepts (for one variant, e.g. one backbone family).
#[derive(Clone, Debug, PartialEq)]
pub struct OptionSet {
    /// The primitive, as scripts call it.
    pub primitive: String,
    /// Which variant of the primitive these options belong to (e.g. `"retunet", "retunet_tiny"`).
    pub variant: Option<String>,
    /// Every option, config fields first (in declaration order), then the script-only keys.
    pub options: Vec<OptionDoc>,
    /// The fields serde itself accepts for the config (its "expected one of" list), to check
    /// the documented options against; empty for a primitive without a typed config.
    pub config_fields: Vec<String>,
    /// Config fields the primitive sets itself (not options), e.g. `detector`'s `encoder`.
    pub omitted: Vec<String>,
}

impl OptionSet {
    /// The options of a primitive whose typed config is `T` (defaults: `T`'s serde defaults).
    pub fn of<T: Serialize + DeserializeOwned + 'static>(primitive: &str) -> Self {
        let defaults = serde_json::from_value::<T>(Value::Object(Default::default()))
            .ok()
            .and_then(|t| serde_json::to_value(&t).ok())
            .unwrap_or(Value::Null);
        let mut set = Self::from_defaults(primitive, std::any::type_name::<T>(), &defaults);
        set.config_fields = serde_fields::<T>();
        set
    }

    /// The options of a primitive that lays the script's map over `base` (a preset).
    pub fn over<T: Serialize + DeserializeOwned + 'static>(primitive: &str, base: &T) -> Self {
        let defaults = serde_json::to_value(base).unwrap_or(Value::Null);
        let mut set = Self::from_defaults(primitive, std::any::type_name::<T>(), &defaults);
        set.config_fields = serde_fields::<T>();
        set
    }

    /// A primitive whose options are all script-only keys.
    pub fn extras_only(primitive: &str, extras: &[Extra]) -> Self {
        OptionSet {
            primitive: primitive.to_string(),
            variant: None,
            options: Vec::new(),
            config_fields: Vec::new(),
            omitted: Vec::new(),
        }
        .with(extras)
    }

    fn from_defaults(primitive: &str, type_path: &str, defaults: &Value) -> Self {
        OptionSet {
            primitive: primitive.to_string(),
            variant: None,
            options: struct_options(type_path, defaults, 0),
            config_fields: Vec::new(),
            omitted: Vec::new(),
        }
    }

    /// Name the variant these options belong to.
    pub fn variant(mut self, label: &str) -> Self {
        self.variant = Some(label.to_string());
        self
    }

    /// Add script-only keys; one named like a config field replaces that field's entry.
    pub fn with(mut self, extras: &[Extra]) -> Self {
        for e in extras {
            let doc = OptionDoc {
                key: e.key.to_string(),
                type_name: e.type_name.to_string(),
                default: e.default.to_string(),
                doc: e.doc.to_string(),
                children: Vec::new(),
                script_only: true,
            };
            match self.options.iter_mut().find(|o| o.key == e.key) {
                Some(existing) => *existing = doc,
                None => self.options.push(doc),
            }
        }
        self
    }

    /// Drop config fields that the primitive sets itself (they are not options).
    pub fn without(mut self, keys: &[&str]) -> Self {
        self.options.retain(|o| !keys.contains(&o.key.as_str()));
        self.omitted.extend(keys.iter().map(|k| k.to_string()));
        self
    }

    /// The top-level keys.
    pub fn keys(&self) -> Vec<&str> {
        self.options.iter().map(|o| o.key.as_str()).collect()
    }

    /// The options at a nested path (`[]` = top level, `["optimizer"]` = its keys).
    pub fn options_at(&self, path: &[&str]) -> Option<&[OptionDoc]> {
        let mut level: &[OptionDoc] = &self.options;
        for key in path {
            let o = level.iter().find(|o| o.key == *key)?;
            if o.children.is_empty() {
                return None;
            }
            level = &o.children;
        }
        Some(level)
    }

    /// The option at a dotted path (`optimizer.momentum`).
    pub fn find(&self, path: &[&str]) -> Option<&OptionDoc> {
        let (last, parents) = path.split_last()?;
        self.options_at(parents)?.iter().find(|o| o.key == *last)
    }

    /// Check that every key of `opts` (and of its nested option maps) is an option; the error
    /// names the first unknown key, suggests the nearest one and lists the valid keys.
    pub fn check(&self, opts: &Map) -> Result<(), String> {
        check_level(self, &self.options, opts, &mut Vec::new())
    }

    /// The unknown-key message for `key` at `path`, listing the keys valid there.
    fn unknown_key(&self, path: &[String], key: &str, valid: &[OptionDoc]) -> String {
        let names: Vec<&str> = valid.iter().map(|o| o.key.as_str()).collect();
        unknown_key_message(&self.primitive, path, key, &names)
    }

    /// The options table `help` prints: key, type, default and one line each.
    pub fn render(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        flatten(&self.options, "", &mut rows);
        let width = |i: usize, cap: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .min(cap)
        };
        let (wk, wt, wd) = (width(0, 28), width(1, 26), width(2, 22));
        let mut out = match &self.variant {
            Some(v) => format!("Options ({v}):\n"),
            None => "Options:\n".to_string(),
        };
        for [key, ty, default, doc] in rows {
            let line = format!("  {key:<wk$}  {ty:<wt$}  {default:<wd$}  {doc}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `primitive: unknown option `path.key`; did you mean `x`? Expected one of: …`.
pub fn unknown_key_message(primitive: &str, path: &[String], key: &str, valid: &[&str]) -> String {
    let full = dotted(path, key);
    let mut message = format!("{primitive}: unknown option `{full}`");
    match suggest(key, valid.iter().copied()) {
        Some(s) => message.push_str(&format!("; did you mean `{}`?", dotted(path, &s))),
        None => message.push('.'),
    }
    let list: Vec<String> = valid.iter().map(|k| format!("`{k}`")).collect();
    let scope = if path.is_empty() {
        String::new()
    } else {
        format!(" in `{}`", path.join("."))
    };
    message.push_str(&format!(" Expected one of{scope}: {}", list.join(", ")));
    message
}

fn dotted(path: &[String], key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{}.{key}", path.join("."))
    }
}

fn check_level(
    set: &OptionSet,
    level: &[OptionDoc],
    opts: &Map,
    path: &mut Vec<String>,
) -> Result<(), String> {
    for (key, value) in opts {
        let Some(option) = level.iter().find(|o| o.key == key.as_str()) else {
            return Err(set.unknown_key(path, key, level));
        };
        if !option.children.is_empty()
            && let Some(inner) = value.read_lock::<Map>()
        {
            path.push(key.to_string());
            check_level(set, &option.children, &inner, path)?;
            path.pop();
        }
    }
    Ok(())
}

fn flatten(options: &[OptionDoc], prefix: &str, rows: &mut Vec<[String; 4]>) {
    for o in options {
        let key = format!("{prefix}{}", o.key);
        if o.children.is_empty() {
            rows.push([key, o.type_name.clone(), o.default.clone(), o.doc.clone()]);
        } else {
            rows.push([key.clone(), "Map".into(), String::new(), o.doc.clone()]);
            flatten(&o.children, &format!("{key}."), rows);
        }
    }
}

/// The options of the struct `type_path` whose serialised defaults are `defaults`.
fn struct_options(type_path: &str, defaults: &Value, depth: usize) -> Vec<OptionDoc> {
    let Value::Object(fields) = defaults else {
        return Vec::new();
    };
    let type_doc = find_type(type_path, module_of(type_path)).filter(|t| !t.is_enum);
    let module = type_doc.map(|t| module_of(t.path)).unwrap_or("");
    let mut out = Vec::new();
    let mut seen = Vec::new();
    if let Some(t) = type_doc {
        for item in t.items {
            let Some(value) = fields.get(item.name) else {
                continue;
            };
            seen.push(item.name);
            out.push(option_doc(
                item.name,
                item.rust_type,
                item.doc,
                value,
                module,
                depth,
            ));
        }
    }
    // Keys the sources did not show (e.g. flattened fields): still options, undocumented.
    for (key, value) in fields {
        if !seen.contains(&key.as_str()) {
            out.push(option_doc(key, "", "", value, module, depth));
        }
    }
    out
}

fn option_doc(
    key: &str,
    rust_type: &str,
    doc: &str,
    default: &Value,
    module: &str,
    depth: usize,
) -> OptionDoc {
    let inner = strip_wrappers(rust_type);
    let nested = find_type(inner, module).filter(|t| !t.is_enum && default.is_object());
    let children = match nested {
        Some(t) if depth < 4 => struct_options(t.path, default, depth + 1),
        _ => Vec::new(),
    };
    OptionDoc {
        key: key.to_string(),
        type_name: script_type(rust_type, module, default),
        default: if children.is_empty() {
            script_literal(default, 40)
        } else {
            String::new()
        },
        doc: first_sentence(doc),
        children,
        script_only: false,
    }
}

/// The fields serde accepts for `T`: the "expected one of" list of an unknown field.
fn serde_fields<T: DeserializeOwned>() -> Vec<String> {
    let mut probe = serde_json::Map::new();
    probe.insert("__no_such_field__".into(), Value::Null);
    match serde_json::from_value::<T>(Value::Object(probe)) {
        Err(e) => {
            let message = e.to_string();
            match message.split_once("expected") {
                Some((_, list)) => backticked(list),
                None => Vec::new(),
            }
        }
        Ok(_) => Vec::new(),
    }
}

/// `Box<T>` → `T`.
fn strip_wrappers(rust_type: &str) -> &str {
    let t = rust_type.trim();
    t.strip_prefix("Box<")
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(t)
}

/// The first sentence of a doc paragraph (the whole paragraph when it has one sentence).
fn first_sentence(doc: &str) -> String {
    let doc = doc.trim();
    let mut from = 0;
    while let Some(i) = doc[from..].find(". ").map(|i| from + i) {
        // "e.g. ", "i.e. ", "cf. " and "vs. " do not end a sentence.
        let before = &doc[..i];
        if ["e.g", "i.e", "cf", "vs"]
            .iter()
            .any(|a| before.ends_with(a))
        {
            from = i + 2;
            continue;
        }
        return doc[..=i].to_string();
    }
    doc.to_string()
}

/// A Rust type in script terms: `f64` → `Float`, `[usize; 3]` → `[Int, Int, Int]`,
/// `Option<T>` → `T or ()`, a unit enum → its values, a struct → `Map`.
pub fn script_type(rust_type: &str, module: &str, default: &Value) -> String {
    let t = strip_wrappers(rust_type);
    if t.is_empty() {
        return json_kind(default).to_string();
    }
    if let Some(inner) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
        let some = match default {
            Value::Null => Value::Null,
            other => other.clone(),
        };
        return format!("{} or ()", script_type(inner, module, &some));
    }
    if let Some(inner) = t.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')) {
        let first = default
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null);
        return format!("[{}, …]", script_type(inner, module, &first));
    }
    if let Some(body) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Some((elem, n)) = body.rsplit_once(';')
    {
        let first = default
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null);
        let elem = script_type(elem.trim(), module, &first);
        return match n.trim().parse::<usize>() {
            Ok(n) if n <= 4 => format!("[{}]", vec![elem; n].join(", ")),
            Ok(n) => format!("[{elem}; {n}]"),
            Err(_) => format!("[{elem}, …]"),
        };
    }
    if t.starts_with("HashMap<") || t.starts_with("BTreeMap<") || t == "Map" {
        return "Map".into();
    }
    match t {
        "f32" | "f64" => return "Float".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            return "Int".into();
        }
        "bool" => return "Bool".into(),
        "String" | "PathBuf" | "std::path::PathBuf" | "&str" | "char" => return "String".into(),
        "serde_json::Value" | "Value" => return "Dynamic".into(),
        _ => {}
    }
    match find_type(t, module) {
        Some(d) if !d.is_enum => "Map".into(),
        Some(d) if d.untagged => {
            let module = module_of(d.path);
            let kinds: Vec<String> = d
                .items
                .iter()
                .map(|v| script_type(v.rust_type, module, &Value::Null))
                .collect();
            kinds.join(" or ")
        }
        Some(d) if d.items.iter().all(|v| v.rust_type.is_empty()) => d
            .items
            .iter()
            .map(|v| format!("\"{}\"", v.name))
            .collect::<Vec<_>>()
            .join(" | "),
        _ => json_kind(default).to_string(),
    }
}

/// The script type of a JSON value.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "Dynamic",
        Value::Bool(_) => "Bool",
        Value::Number(n) if n.is_f64() => "Float",
        Value::Number(_) => "Int",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Map",
    }
}

/// A JSON value written as a script literal, shortened to `max` characters.
pub fn script_literal(value: &Value, max: usize) -> String {
    let text = literal(value);
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn literal(value: &Value) -> String {
    match value {
        Value::Null => "()".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("[{}]", a.iter().map(literal).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "#{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k}: {}", literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every declared option set, by primitive (several for a primitive with variants).
static REGISTRY: Mutex<BTreeMap<String, Vec<Arc<OptionSet>>>> = Mutex::new(BTreeMap::new());

/// Record the options of a primitive (idempotent: a set registered again replaces itself).
pub fn register(set: OptionSet) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let sets = registry.entry(set.primitive.clone()).or_default();
    match sets.iter_mut().find(|s| s.variant == set.variant) {
        Some(existing) => *existing = Arc::new(set),
        None => sets.push(Arc::new(set)),
    }
}

/// The option sets of `primitive` (none when it takes no options map).
pub fn sets_for(primitive: &str) -> Vec<Arc<OptionSet>> {
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.get(primitive).cloned().unwrap_or_default()
}

/// Every registered option set.
pub fn all_sets() -> Vec<Arc<OptionSet>> {
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.values().flatten().cloned().collect()
}

/// The one option set of a primitive without variants.
fn single_set(primitive: &str) -> Option<Arc<OptionSet>> {
    let sets = sets_for(primitive);
    (sets.len() == 1).then(|| sets[0].clone())
}

/// Convert an options map into JSON; a value that is not plain data (a Volume, a Model, …)
/// is an error naming its key.
pub fn map_to_json(what: &str, opts: &Map) -> Result<Value, String> {
    let mut path = Vec::new();
    value_to_json(what, &Dynamic::from_map(opts.clone()), &mut path)
}

fn value_to_json(what: &str, value: &Dynamic, path: &mut Vec<String>) -> Result<Value, String> {
    if let Some(map) = value.read_lock::<Map>() {
        let mut out = serde_json::Map::new();
        for (k, v) in map.iter() {
            path.push(k.to_string());
            out.insert(k.to_string(), value_to_json(what, v, path)?);
            path.pop();
        }
        return Ok(Value::Object(out));
    }
    if let Some(array) = value.read_lock::<rhai::Array>() {
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            path.push(i.to_string());
            out.push(value_to_json(what, v, path)?);
            path.pop();
        }
        return Ok(Value::Array(out));
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| {
                format!(
                    "{what}: option `{}` must be a finite number, got {f}",
                    join_path(path)
                )
            });
    }
    if value.is_string() {
        return Ok(Value::String(value.to_string()));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    Err(format!(
        "{what}: option `{}` cannot be a {}",
        join_path(path),
        super::error::user_type_name(value.type_name())
    ))
}

fn join_path(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if p.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

/// Deserialise an options map into `T`, laid over `base` (or `T`'s serde defaults).
///
/// Integers are accepted for floats. An error names the primitive (`what`) and the option:
/// an unknown key with its nearest match and the valid keys, a wrong type with what the option
/// must be and what it got, an unknown value with the valid ones.
pub fn deserialize<T: DeserializeOwned>(
    what: &str,
    base: Option<Value>,
    opts: &Map,
) -> Result<T, String> {
    let user = map_to_json(what, opts)?;
    let base = base.unwrap_or_else(|| Value::Object(Default::default()));
    let mut merged = base.clone();
    super::convert::merge_json(&mut merged, user.clone());
    match serde_json::from_value::<T>(merged) {
        Ok(t) => Ok(t),
        Err(e) => {
            let (path, message) = locate::<T>(&base, &user, &mut Vec::new())
                .unwrap_or_else(|| (Vec::new(), e.to_string()));
            Err(describe(what, &path, value_at(&user, &path), &message))
        }
    }
}

/// The path of the first option whose value alone makes deserialisation fail, with serde's
/// message for it.
fn locate<T: DeserializeOwned>(
    base: &Value,
    user: &Value,
    path: &mut Vec<String>,
) -> Option<(Vec<String>, String)> {
    let Value::Object(fields) = value_at(user, path)? else {
        return None;
    };
    for (key, value) in fields.clone() {
        path.push(key.clone());
        let mut probe = base.clone();
        super::convert::merge_json(&mut probe, nest(path, value.clone()));
        if let Err(e) = serde_json::from_value::<T>(probe) {
            let message = e.to_string();
            if message.starts_with("missing field") {
                path.pop();
                continue;
            }
            let this_key_unknown = message.starts_with(&format!("unknown field `{key}`"));
            if value.is_object()
                && !this_key_unknown
                && let Some(found) = locate::<T>(base, user, path)
            {
                return Some(found);
            }
            return Some((path.clone(), message));
        }
        path.pop();
    }
    None
}

/// `value` nested under `path` (`["a", "b"]`, v → `{"a": {"b": v}}`).
fn nest(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, key| {
        let mut m = serde_json::Map::new();
        m.insert(key.clone(), inner);
        Value::Object(m)
    })
}

fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    Some(v)
}

/// A script value's type and text, for "got …" (`String "0.1"`, `Float 1.5`).
fn describe_value(value: Option<&Value>) -> String {
    match value {
        None => "nothing".into(),
        Some(Value::Null) => "()".into(),
        Some(v @ (Value::Array(_) | Value::Object(_))) => {
            format!("{} {}", json_kind(v), script_literal(v, 40))
        }
        Some(v) => format!("{} {}", json_kind(v), literal(v)),
    }
}

/// serde's "expected …" in script terms.
fn expected_in_script_terms(expected: &str) -> String {
    let e = expected.trim();
    let words = [
        ("f64", "a number (Float)"),
        ("f32", "a number (Float)"),
        ("a boolean", "true or false (Bool)"),
        ("a string", "a string (String)"),
        ("a sequence", "an array (Array)"),
        ("a map", "a map (Map)"),
        ("unit", "()"),
        ("a character", "a string (String)"),
    ];
    for (serde_word, ours) in words {
        if e == serde_word {
            return ours.to_string();
        }
    }
    if matches!(e, "u8" | "u16" | "u32" | "u64" | "usize") {
        return "a non-negative integer (Int)".into();
    }
    if matches!(e, "i8" | "i16" | "i32" | "i64" | "isize") {
        return "an integer (Int)".into();
    }
    if let Some(n) = e
        .strip_prefix("an array of length ")
        .or_else(|| e.strip_prefix("a tuple of size "))
    {
        return format!("an array of {n} elements");
    }
    if e.starts_with("struct ") {
        return "a map (Map)".into();
    }
    if let Some(name) = e.strip_prefix("enum ") {
        return format!("one of the {name} values");
    }
    super::error::user_types_in(e)
}

/// The message for a failed option at `path` given serde's message.
fn describe(what: &str, path: &[String], value: Option<&Value>, serde_message: &str) -> String {
    let message = strip_serde_position(serde_message);
    let (parents, key) = match path.split_last() {
        Some((k, p)) => (p.to_vec(), k.clone()),
        None => (Vec::new(), String::new()),
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or("");
        let mut full_parents = parents.clone();
        if unknown != key && !key.is_empty() {
            full_parents.push(key.clone());
        }
        let parent_refs: Vec<&str> = full_parents.iter().map(String::as_str).collect();
        // The registered set knows the script-only keys too; serde only the config fields.
        let registered = single_set(primitive_of(what)).and_then(|s| {
            s.options_at(&parent_refs)
                .map(|level| level.iter().map(|o| o.key.clone()).collect::<Vec<_>>())
        });
        let valid = registered.unwrap_or_else(|| {
            backticked(rest.split_once(", expected").map(|x| x.1).unwrap_or(""))
        });
        let valid_refs: Vec<&str> = valid.iter().map(String::as_str).collect();
        return unknown_key_message(what, &full_parents, unknown, &valid_refs);
    }
    let shown = if key.is_empty() {
        String::new()
    } else {
        path.join(".")
    };
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let got = rest.split('`').next().unwrap_or("");
        let values = backticked(rest.split_once("expected").map(|x| x.1).unwrap_or(""));
        let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        let mut m = format!(
            "{what}: option `{shown}` must be one of {}; got \"{got}\"",
            quoted.join(", ")
        );
        if let Some(s) = suggest(got, values.iter().map(String::as_str)) {
            m.push_str(&format!(" (did you mean \"{s}\"?)"));
        }
        return m;
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((_, expected)) = rest.rsplit_once(", expected ")
    {
        return format!(
            "{what}: option `{shown}` must be {}, got {}",
            expected_in_script_terms(expected),
            describe_value(value)
        );
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!(
            "{what}: option `{shown}` must be {}, got {got} elements",
            expected_in_script_terms(expected)
        );
    }
    if message.starts_with("data did not match any variant") {
        let expected = single_set(primitive_of(what))
            .and_then(|s| {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                s.find(&refs).map(|o| o.type_name.clone())
            })
            .unwrap_or_else(|| "another kind of value".into());
        return format!(
            "{what}: option `{shown}` must be {expected}, got {}",
            describe_value(value)
        );
    }
    let text = super::error::user_types_in(&message);
    if shown.is_empty() {
        format!("{what}: {text}")
    } else {
        format!("{what}: option `{shown}`: {text}")
    }
}

/// `pretrain: method` → `pretrain`.
fn primitive_of(what: &str) -> &str {
    what.split(':').next().unwrap_or(what).trim()
}

/// The names between backticks in serde's lists (`` `a`, `b` `` → a, b).
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// serde_json appends " at line 1 column 2" to some messages; the position is meaningless here.
fn strip_serde_position(message: &str) -> String {
    let m = message.trim();
    match m.rfind(" at line ") {
        Some(i) if m[i..].contains(" column ") => m[..i].to_string(),
        _ => m.to_string(),
    }
}

#[cfg(test)]
mod tests;
