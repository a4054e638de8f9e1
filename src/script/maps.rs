//! Strict map reads: reading a key that a map does not have is an error naming the key and
//! listing the keys present (a typo such as `m["AP_IoU_0.1_MaxDet_100"]` must not give `()`
//! that a plot then draws), while `m.key ?? default` and `m["key"] ?? default` still fall back,
//! and writing a new key (`m.key = v`, `m[key] = v`) still adds it.
//!
//! Rhai calls one hook for every missing key, reads and writes alike, without saying which.
//! So scripts are compiled twice: the first parse finds every key read (property names,
//! string-literal and single-variable index keys, outside assignment targets), and the second
//! parse marks those tokens: `__r__key` for a strict read, `__l__key` for a read on the left of
//! `??`. The hook ([`missing_key`]) then reads the real key, errs or falls back as marked,
//! and treats an unmarked missing key as a write (it adds the key). A variable index key is
//! marked through its variable (`__rk__name`), whose value [`resolve_marked_variable`] prefixes.
//! Getters of other types answer to the marked names too ([`register`] forwards them).
//! A key computed by an expression (`m["a" + b]`) is not marked: read it with
//! `m.get(key, default)`.

use super::error::suggest;
use rhai::{
    AST, ASTFlags, ASTNode, Dynamic, Engine, EvalAltResult, EvalContext, Expr, Map,
    NativeCallContext, ParseError, Position, Stmt, Target, Token,
};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// Prefix of a strictly read key.
const STRICT: &str = "__r__";
/// Prefix of a key read on the left of `??`.
const LENIENT: &str = "__l__";
/// Prefix of a variable holding a strictly read key.
const STRICT_VARIABLE: &str = "__rk__";
/// Prefix of a variable holding a key read on the left of `??`.
const LENIENT_VARIABLE: &str = "__lk__";

/// How a token is marked in the second parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// A property name or string key read strictly.
    Strict,
    /// A property name or string key read on the left of `??`.
    Lenient,
    /// A variable index key read strictly.
    StrictVariable,
    /// A variable index key read on the left of `??`.
    LenientVariable,
}

thread_local! {
    /// The marks of the source being compiled on this thread, by (line, column).
    static MARKS: RefCell<HashMap<(usize, usize), Mark>> = RefCell::new(HashMap::new());
}

/// Install the hooks: the missing-key hook, the marked-variable resolver, the token marker,
/// and getters answering to marked property names for every registered getter.
// `on_var` and `on_parse_token` are marked deprecated only as "volatile" (Rhai may change them).
#[allow(deprecated)]
pub fn register(engine: &mut Engine) {
    engine.on_map_missing_property(missing_key);
    engine.on_var(resolve_marked_variable);
    engine.on_parse_token(|token, pos, _state| mark_token(token, pos));
    let mut getters: Vec<String> = engine
        .gen_fn_signatures(true)
        .iter()
        .filter_map(|s| s.strip_prefix("get$"))
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    getters.sort();
    getters.dedup();
    for name in getters {
        for prefix in [STRICT, LENIENT] {
            let target_getter = format!("get${name}");
            engine.register_fn(
                format!("get${prefix}{name}"),
                move |ctx: NativeCallContext,
                      value: &mut Dynamic|
                      -> Result<Dynamic, Box<EvalAltResult>> {
                    ctx.call_fn_raw(&target_getter, true, false, &mut [value])
                },
            );
        }
    }
}

/// Forward getters for property names registered after [`register`] ran (idempotent).
pub fn forward_getter(engine: &mut Engine, name: &str) {
    for prefix in [STRICT, LENIENT] {
        let target_getter = format!("get${name}");
        engine.register_fn(
            format!("get${prefix}{name}"),
            move |ctx: NativeCallContext,
                  value: &mut Dynamic|
                  -> Result<Dynamic, Box<EvalAltResult>> {
                ctx.call_fn_raw(&target_getter, true, false, &mut [value])
            },
        );
    }
}

/// The parser of the first pass: no optimisation, so `m[k] ?? ()` keeps its `??`.
static PLAIN_PARSER: LazyLock<Engine> = LazyLock::new(|| {
    let mut engine = Engine::new_raw();
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine.set_max_expr_depths(super::MAX_EXPR_DEPTH, super::MAX_EXPR_DEPTH);
    engine
});

/// Compile `source` with its key reads marked (see the module documentation).
pub fn compile(engine: &Engine, source: &str) -> Result<AST, ParseError> {
    let plain = PLAIN_PARSER.compile(source)?;
    let marks = find_reads(&plain);
    if marks.is_empty() {
        return engine.compile(source);
    }
    MARKS.with(|m| *m.borrow_mut() = marks);
    let marked = engine.compile(source);
    MARKS.with(|m| m.borrow_mut().clear());
    marked
}

/// Remove the marks from a message (`__r__shap` → `shap`).
pub fn unmark(text: &str) -> String {
    text.replace(STRICT_VARIABLE, "")
        .replace(LENIENT_VARIABLE, "")
        .replace(STRICT, "")
        .replace(LENIENT, "")
}

fn mark_token(token: Token, pos: Position) -> Token {
    let (Some(line), Some(column)) = (pos.line(), pos.position()) else {
        return token;
    };
    let Some(mark) = MARKS.with(|m| m.borrow().get(&(line, column)).copied()) else {
        return token;
    };
    match (token, mark) {
        (Token::Identifier(name), Mark::Strict) => {
            Token::Identifier(Box::new(format!("{STRICT}{name}").into()))
        }
        (Token::Identifier(name), Mark::Lenient) => {
            Token::Identifier(Box::new(format!("{LENIENT}{name}").into()))
        }
        (Token::Identifier(name), Mark::StrictVariable) => {
            Token::Identifier(Box::new(format!("{STRICT_VARIABLE}{name}").into()))
        }
        (Token::Identifier(name), Mark::LenientVariable) => {
            Token::Identifier(Box::new(format!("{LENIENT_VARIABLE}{name}").into()))
        }
        (Token::StringConstant(text), Mark::Strict) => {
            Token::StringConstant(Box::new(format!("{STRICT}{text}").into()))
        }
        (Token::StringConstant(text), Mark::Lenient) => {
            Token::StringConstant(Box::new(format!("{LENIENT}{text}").into()))
        }
        (other, _) => other,
    }
}

/// The hook for a key a map lacks: a marked read finds the real key (or errs, or falls back
/// to `()` on the left of `??`); an unmarked access is a write and adds the key.
fn missing_key<'a>(
    map: &'a mut Map,
    key: &str,
    _ctx: EvalContext,
) -> Result<Target<'a>, Box<EvalAltResult>> {
    if let Some(real) = key.strip_prefix(STRICT) {
        if map.contains_key(real) {
            return map.get_mut(real).expect("present").try_into();
        }
        return Err(Box::new(EvalAltResult::ErrorRuntime(
            missing_key_message(map, real).into(),
            Position::NONE,
        )));
    }
    if let Some(real) = key.strip_prefix(LENIENT) {
        if map.contains_key(real) {
            return map.get_mut(real).expect("present").try_into();
        }
        return Ok(Dynamic::UNIT.into());
    }
    map.entry(key.into()).or_insert(Dynamic::UNIT).try_into()
}

/// "the map has no key `x`; did you mean `y`? Its keys: …".
pub fn missing_key_message(map: &Map, key: &str) -> String {
    let keys: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
    let mut m = format!("the map has no key `{key}`");
    match suggest(key, keys.iter().copied()) {
        Some(s) => m.push_str(&format!("; did you mean `{s}`?")),
        None => m.push('.'),
    }
    if keys.is_empty() {
        m.push_str(" The map is empty.");
    } else {
        const MAX: usize = 40;
        let mut listed: Vec<String> = keys.iter().take(MAX).map(|k| format!("`{k}`")).collect();
        if keys.len() > MAX {
            listed.push(format!("… ({} more)", keys.len() - MAX));
        }
        m.push_str(&format!(" Its keys: {}.", listed.join(", ")));
    }
    m.push_str(&format!(
        " A key that may be missing reads with `m.get(\"{key}\", default)` or `m[\"{key}\"] ?? default`."
    ));
    m
}

/// Resolve a marked variable index key: its value, prefixed with the read's mark when it is
/// a string.
fn resolve_marked_variable(
    name: &str,
    _index: usize,
    ctx: EvalContext,
) -> Result<Option<Dynamic>, Box<EvalAltResult>> {
    let (real, prefix) = if let Some(real) = name.strip_prefix(STRICT_VARIABLE) {
        (real, STRICT)
    } else if let Some(real) = name.strip_prefix(LENIENT_VARIABLE) {
        (real, LENIENT)
    } else {
        return Ok(None);
    };
    let Some(value) = ctx.scope().get_value::<Dynamic>(real) else {
        return Err(Box::new(EvalAltResult::ErrorVariableNotFound(
            real.to_string(),
            Position::NONE,
        )));
    };
    if value.is_string() {
        Ok(Some(Dynamic::from(format!("{prefix}{value}"))))
    } else {
        Ok(Some(value))
    }
}

/// Every key read of `ast` (statements and function bodies) with its mark.
fn find_reads(ast: &AST) -> HashMap<(usize, usize), Mark> {
    let mut marks = HashMap::new();
    // A closure's body sees a renamed key variable (`__rk__c`) as a variable of the enclosing
    // scope and captures it when the closure is made, before its parameter `c` exists; so
    // keys named like a closure parameter stay unmarked (read them with `.get` to be strict).
    let closure_parameters: HashSet<String> = ast
        .iter_functions()
        .filter(|f| f.name.starts_with("anon$"))
        .flat_map(|f| f.params.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .collect();
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(node)) = path.last() else {
            return true;
        };
        if !matches!(node, Expr::Dot(..) | Expr::Index(..)) {
            return true;
        }
        let parent = path.len().checked_sub(2).map(|i| &path[i]);
        let lenient = match parent {
            // A link of an enclosing chain, not a chain of its own.
            Some(ASTNode::Expr(Expr::Dot(bin, ..))) if std::ptr::eq(&bin.rhs, *node) => {
                return true;
            }
            Some(ASTNode::Expr(Expr::Index(bin, flags, ..)))
                if std::ptr::eq(&bin.rhs, *node) && !flags.contains(ASTFlags::BREAK) =>
            {
                return true;
            }
            // The target of an assignment: a write.
            Some(ASTNode::Stmt(Stmt::Assignment(x))) if std::ptr::eq(&x.1.lhs, *node) => {
                return true;
            }
            Some(ASTNode::Expr(Expr::Coalesce(operands, ..))) => operands
                .iter()
                .position(|o| std::ptr::eq(o, *node))
                .is_some_and(|i| i + 1 < operands.len()),
            _ => false,
        };
        mark_chain(node, lenient, &closure_parameters, &mut marks);
        true
    });
    marks
}

fn mark_chain(
    top: &Expr,
    lenient: bool,
    skip: &HashSet<String>,
    marks: &mut HashMap<(usize, usize), Mark>,
) {
    match top {
        Expr::Dot(bin, ..) => mark_after_dot(&bin.rhs, lenient, skip, marks),
        Expr::Index(bin, flags, ..) => mark_after_index(
            &bin.rhs,
            flags.contains(ASTFlags::BREAK),
            lenient,
            skip,
            marks,
        ),
        _ => {}
    }
}

/// The link after a `.`: a property, a method call, or a sub-chain starting with one.
fn mark_after_dot(
    rhs: &Expr,
    lenient: bool,
    skip: &HashSet<String>,
    marks: &mut HashMap<(usize, usize), Mark>,
) {
    match rhs {
        Expr::Property(_, pos) => mark_at(*pos, lenient, false, marks),
        Expr::Dot(bin, ..) => {
            if let Expr::Property(_, pos) = &bin.lhs {
                mark_at(*pos, lenient, false, marks);
            }
            mark_after_dot(&bin.rhs, lenient, skip, marks);
        }
        Expr::Index(bin, flags, ..) => {
            if let Expr::Property(_, pos) = &bin.lhs {
                mark_at(*pos, lenient, false, marks);
            }
            mark_after_index(
                &bin.rhs,
                flags.contains(ASTFlags::BREAK),
                lenient,
                skip,
                marks,
            );
        }
        _ => {}
    }
}

/// The link after a `[`: the index value, then possibly more links.
fn mark_after_index(
    rhs: &Expr,
    terminal: bool,
    lenient: bool,
    skip: &HashSet<String>,
    marks: &mut HashMap<(usize, usize), Mark>,
) {
    if terminal {
        mark_key(rhs, lenient, skip, marks);
        return;
    }
    match rhs {
        Expr::Dot(bin, ..) => {
            mark_key(&bin.lhs, lenient, skip, marks);
            mark_after_dot(&bin.rhs, lenient, skip, marks);
        }
        Expr::Index(bin, flags, ..) => {
            mark_key(&bin.lhs, lenient, skip, marks);
            mark_after_index(
                &bin.rhs,
                flags.contains(ASTFlags::BREAK),
                lenient,
                skip,
                marks,
            );
        }
        other => mark_key(other, lenient, skip, marks),
    }
}

fn mark_key(
    key: &Expr,
    lenient: bool,
    skip: &HashSet<String>,
    marks: &mut HashMap<(usize, usize), Mark>,
) {
    match key {
        Expr::StringConstant(_, pos) => mark_at(*pos, lenient, false, marks),
        Expr::Variable(x, _, pos) if x.2.is_empty() && !skip.contains(x.1.as_str()) => {
            mark_at(*pos, lenient, true, marks)
        }
        _ => {}
    }
}

fn mark_at(
    pos: Position,
    lenient: bool,
    variable: bool,
    marks: &mut HashMap<(usize, usize), Mark>,
) {
    if let (Some(line), Some(column)) = (pos.line(), pos.position()) {
        let mark = match (lenient, variable) {
            (false, false) => Mark::Strict,
            (true, false) => Mark::Lenient,
            (false, true) => Mark::StrictVariable,
            (true, true) => Mark::LenientVariable,
        };
        marks.insert((line, column), mark);
    }
}

/// `map.get(key, default)`: the value of `key`, or `default` when the map lacks it.
pub fn get_or_default(map: &mut Map, key: &str, default: Dynamic) -> Dynamic {
    map.get(key).cloned().unwrap_or(default)
}
