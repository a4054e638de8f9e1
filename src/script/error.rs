//! Script errors with their place: file, line and column, plus the offending source line.

use rhai::{EvalAltResult, ParseError, Position};
use std::fmt;

/// What went wrong while compiling or running a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptErrorKind {
    /// The script does not parse.
    Syntax,
    /// A runtime error (a bad argument, a failed primitive, a type mismatch, …).
    Runtime,
    /// The user pressed Ctrl-C.
    Interrupted,
    /// A file could not be read.
    Io,
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
    /// Enclosing call sites (outermost first), e.g. a script function or module import.
    pub context: Vec<String>,
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

    fn located(
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
        }
    }

    /// Convert a runtime error of a script `source` read from `file`.
    ///
    /// Errors raised inside imported modules or script functions are unwrapped to the
    /// innermost location, and the call sites are kept as context lines.
    pub fn from_eval(err: &EvalAltResult, file: &str, source: &str) -> Self {
        let mut context = Vec::new();
        let mut current = err;
        let mut file = file.to_string();
        let mut source_text: Option<String> = Some(source.to_string());
        loop {
            match current {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                    context.push(format!("in call to '{name}' at {}", fmt_pos(&file, *pos)));
                    if !src.is_empty() && src != &file {
                        file = src.clone();
                        source_text = std::fs::read_to_string(&file).ok();
                    }
                    current = inner;
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    context.push(format!(
                        "in module '{path}' imported at {}",
                        fmt_pos(&file, *pos)
                    ));
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
        let message = match current {
            EvalAltResult::ErrorTerminated(token, _) => token
                .clone()
                .into_string()
                .unwrap_or_else(|_| "script terminated".to_string()),
            EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
            other => strip_position(&other.to_string()),
        };
        let mut e = Self::located(
            kind,
            message,
            &file,
            source_text.as_deref().unwrap_or(""),
            current.position(),
        );
        e.context = context;
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

fn fmt_pos(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
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

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let (Some(text), Some(col)) = (&self.source_line, self.column) {
            let number = self.line.map(|l| l.to_string()).unwrap_or_default();
            write!(
                f,
                "\n {number} | {text}\n {} | {}^",
                " ".repeat(number.len()),
                " ".repeat(col.saturating_sub(1))
            )?;
        }
        for c in self.context.iter().rev() {
            write!(f, "\n  note: {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}
