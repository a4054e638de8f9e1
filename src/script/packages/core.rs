//! Core primitives: help, results I/O (JSON, CSV) and files (exists, mkdir, glob, safe names).

use crate::script::convert::{ScriptResult, dynamic_to_json, json_to_dynamic, runtime_error};
use crate::script::help::HelpIndex;
use crate::script::registrar::Registrar;
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Column names of an array of maps: text columns first (they usually name the row, e.g.
/// the method), then numeric ones; alphabetical within each group, since script maps do not
/// keep insertion order.
///
/// A column is numeric when every value it has is a number (NaN included); missing keys, `()`
/// (JSON null, e.g. a NaN that went through a file) and empty strings (an empty CSV cell) do
/// not count, so a failed or NaN row never moves a column.
pub fn columns_of(rows: &Array) -> Vec<String> {
    let mut cols: Vec<(bool, String)> = Vec::new();
    for r in rows {
        if let Some(m) = r.read_lock::<Map>() {
            for (k, v) in m.iter() {
                let missing = v.is_unit()
                    || (v.is_string()
                        && v.read_lock::<rhai::ImmutableString>()
                            .is_some_and(|t| t.is_empty()));
                let numeric = missing || v.is_int() || v.is_float();
                match cols.iter_mut().find(|(_, c)| c == k.as_str()) {
                    Some(entry) => entry.0 &= numeric,
                    None => cols.push((numeric, k.to_string())),
                }
            }
        }
    }
    cols.sort();
    cols.into_iter().map(|(_, c)| c).collect()
}

/// Read a `columns` argument (an array of column names), naming the primitive in errors.
pub fn columns_arg(
    ctx: &NativeCallContext,
    what: &str,
    columns: &Array,
) -> ScriptResult<Vec<String>> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.is_string() {
                Ok(c.to_string())
            } else {
                Err(runtime_error(
                    format!(
                        "{what}: columns[{i}] must be a column name (a string), got {}",
                        c.type_name()
                    ),
                    ctx.call_position(),
                ))
            }
        })
        .collect()
}

/// A file-name-safe form of `text`: letters, digits and `. _ - = , +` are kept, every other
/// character (and a leading dot) becomes `_`; when anything was replaced or the text is longer
/// than 120 characters, a hash of the original is appended, so distinct texts stay distinct.
pub fn safe_file_name(text: &str) -> String {
    const MAX: usize = 120;
    let mut out: String = text
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let kept = c.is_ascii_alphanumeric() || "._-=,+".contains(c);
            if !kept || (i == 0 && c == '.') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out != text || out.chars().count() > MAX {
        // FNV-1a, 64 bits: stable across runs and platforms.
        let mut hash: u64 = 0xcbf29ce484222325;
        for b in text.bytes() {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        out = out.chars().take(MAX).collect();
        out.push_str(&format!("-{:012x}", hash >> 16));
    }
    out
}

/// A cell as text: numbers compact, strings bare, unit empty.
pub fn cell_text(value: &Dynamic) -> String {
    if value.is_unit() {
        return String::new();
    }
    if let Ok(f) = value.as_float() {
        if f.is_finite() && f != 0.0 && (f.abs() < 1e-3 || f.abs() >= 1e6) {
            return format!("{f:.4e}");
        }
        return format!("{}", (f * 1e6).round() / 1e6);
    }
    if value.is_string() {
        return value.clone().into_string().unwrap_or_default();
    }
    if value.is_array() || value.is_map() {
        return dynamic_to_json(value).to_string();
    }
    value.to_string()
}

fn rows_checked(ctx: &NativeCallContext, what: &str, rows: &Array) -> ScriptResult<()> {
    for (i, r) in rows.iter().enumerate() {
        if !r.is_map() {
            return Err(runtime_error(
                format!(
                    "{what}: row {i} must be a map like #{{method: \"a\", ap: 0.5}}, got {}",
                    r.type_name()
                ),
                ctx.call_position(),
            ));
        }
    }
    Ok(())
}

fn write_file(ctx: &NativeCallContext, path: &str, bytes: &[u8]) -> ScriptResult<()> {
    let p = Path::new(path);
    if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            runtime_error(
                format!("cannot create folder {}: {e}", parent.display()),
                ctx.call_position(),
            )
        })?;
    }
    crate::util::atomic_write(p, bytes)
        .map_err(|e| runtime_error(format!("cannot write {path}: {e}"), ctx.call_position()))
}

/// Structural equality of script values; numbers compare by value (1 == 1.0).
pub fn values_equal(a: &Dynamic, b: &Dynamic) -> bool {
    use crate::script::convert::as_f64;
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b))
        && !a.is_string()
        && !b.is_string()
    {
        return x == y;
    }
    dynamic_to_json(a) == dynamic_to_json(b)
}

/// Register the core package.
pub fn register(
    engine: &mut Engine,
    help: &mut HelpIndex,
    help_cell: Arc<OnceLock<Arc<HelpIndex>>>,
) {
    let mut r = Registrar::new(
        engine,
        help,
        "core",
        "help, results I/O (JSON, CSV) and files",
    );
    let cell = help_cell.clone();
    r.func(
        "help()",
        "List every detlab primitive, grouped by domain.",
        "help()",
        move || {
            if let Some(h) = cell.get() {
                println!("{}", h.overview());
            }
        },
    );
    let cell = help_cell;
    r.func(
        "help(name: String)",
        "Show one primitive in full: its signatures, description and an example.",
        "help(\"resample\")",
        move |ctx: NativeCallContext, name: &str| -> ScriptResult<()> {
            let Some(h) = cell.get() else { return Ok(()) };
            match h.render(name) {
                Some(text) => {
                    println!("{text}");
                    Ok(())
                }
                None => {
                    let close: Vec<String> = h
                        .entries()
                        .filter(|e| e.name.contains(name) || name.contains(&e.name))
                        .map(|e| e.name.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .take(8)
                        .collect();
                    let hint = if close.is_empty() {
                        String::new()
                    } else {
                        format!("; did you mean: {}?", close.join(", "))
                    };
                    Err(runtime_error(
                        format!("no primitive named '{name}'{hint}"),
                        ctx.call_position(),
                    ))
                }
            }
        },
    );
    r.func(
        "to_json(value: Dynamic) -> String",
        "Render a value (map, array, number, string) as pretty-printed JSON.",
        "print(to_json(#{ap: 0.71, cases: 10}))",
        |value: Dynamic| -> String {
            serde_json::to_string_pretty(&dynamic_to_json(&value)).unwrap_or_default()
        },
    );
    r.func(
        "save_json(value: Dynamic, path: String)",
        "Write a value as pretty JSON to `path` (atomically; parent folders are created).",
        "save_json(#{ap: 0.71}, \"runs/demo/metrics.json\")",
        |ctx: NativeCallContext, value: Dynamic, path: &str| -> ScriptResult<()> {
            let text =
                serde_json::to_string_pretty(&dynamic_to_json(&value)).unwrap_or_default() + "\n";
            write_file(&ctx, path, text.as_bytes())
        },
    );
    r.func(
        "save_text(text: String, path: String)",
        "Write a string to `path` as it is (a Markdown table, a log), atomically; parent folders are created.",
        "save_text(\"| arm | AP |\\n| --- | --- |\\n\", \"runs/demo/table.md\")",
        |ctx: NativeCallContext, text: &str, path: &str| -> ScriptResult<()> {
            write_file(&ctx, path, text.as_bytes())
        },
    );
    r.func(
        "load_json(path: String) -> Dynamic",
        "Read a JSON file into maps, arrays, numbers and strings.",
        "let m = load_json(\"runs/demo/metrics.json\");\nprint(m.ap);",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<Dynamic> {
            let text = std::fs::read_to_string(path).map_err(|e| {
                runtime_error(format!("cannot read {path}: {e}"), ctx.call_position())
            })?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                runtime_error(
                    format!("{path}:{}:{}: invalid JSON: {e}", e.line(), e.column()),
                    ctx.call_position(),
                )
            })?;
            Ok(json_to_dynamic(&value))
        },
    );
    r.func(
        "save_csv(rows: Array, path: String)",
        "Write an array of maps as CSV, atomically, creating parent folders.\n\
         One column per key: text columns first, then numbers, alphabetical within each; a\n\
         missing value or NaN never moves a column. Missing values are empty cells, NaN is `NaN`.",
        "save_csv([#{method: \"scratch\", ap: 0.61}, #{method: \"mae\", ap: 0.70}], \"runs/ap.csv\")",
        |ctx: NativeCallContext, rows: Array, path: &str| -> ScriptResult<()> {
            save_csv(&ctx, &rows, path, None)
        },
    );
    r.func(
        "save_csv(rows: Array, path: String, columns: Array)",
        "Write the given columns only, in that order (the same `columns` as `table`); a column\n\
         no row has is written empty.",
        "save_csv(rows, \"runs/ap.csv\", [\"method\", \"lr\", \"ap\", \"status\"])",
        |ctx: NativeCallContext, rows: Array, path: &str, columns: Array| -> ScriptResult<()> {
            let cols = columns_arg(&ctx, "save_csv", &columns)?;
            save_csv(&ctx, &rows, path, Some(cols))
        },
    );
    r.func(
        "load_csv(path: String) -> Array",
        "Read a CSV file with a header row into an array of maps (numbers parsed).",
        "let rows = load_csv(\"runs/ap.csv\");",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<Array> {
            let mut rd = csv::Reader::from_path(path).map_err(|e| {
                runtime_error(format!("cannot read {path}: {e}"), ctx.call_position())
            })?;
            let headers = rd
                .headers()
                .map_err(|e| runtime_error(format!("{path}: {e}"), ctx.call_position()))?
                .clone();
            let mut out = Array::new();
            for (i, rec) in rd.records().enumerate() {
                let rec = rec.map_err(|e| {
                    runtime_error(format!("{path}: row {}: {e}", i + 2), ctx.call_position())
                })?;
                let mut m = Map::new();
                for (h, v) in headers.iter().zip(rec.iter()) {
                    m.insert(h.into(), crate::script::parse_arg_value(v));
                }
                out.push(m.into());
            }
            Ok(out)
        },
    );
    r.func(
        "assert(condition: bool, message: String)",
        "Stop the script with `message` unless `condition` is true.",
        "assert(run.best.ap > 0.5, \"training did not learn\");",
        |ctx: NativeCallContext, condition: bool, message: &str| -> ScriptResult<()> {
            if condition {
                Ok(())
            } else {
                Err(runtime_error(
                    format!("assertion failed: {message}"),
                    ctx.call_position(),
                ))
            }
        },
    );
    r.func(
        "assert_eq(actual: Dynamic, expected: Dynamic, message: String)",
        "Stop the script unless `actual` equals `expected` (numbers compare by value, arrays and maps element-wise).",
        "assert_eq(v.shape, [1, 32, 32, 32], \"shape\");",
        |ctx: NativeCallContext, actual: Dynamic, expected: Dynamic, message: &str| -> ScriptResult<()> {
            if values_equal(&actual, &expected) {
                Ok(())
            } else {
                Err(runtime_error(
                    format!("assertion failed: {message}: got {}, expected {}", dynamic_to_json(&actual), dynamic_to_json(&expected)),
                    ctx.call_position(),
                ))
            }
        },
    );
    r.func(
        "assert_close(actual: f64, expected: f64, tolerance: f64, message: String)",
        "Stop the script unless |actual - expected| <= tolerance.",
        "assert_close(stats.mean, 0.0, 1e-6, \"z-scored mean\");",
        |ctx: NativeCallContext,
         actual: Dynamic,
         expected: Dynamic,
         tolerance: Dynamic,
         message: &str|
         -> ScriptResult<()> {
            use crate::script::convert::as_f64;
            let (Some(a), Some(e), Some(t)) =
                (as_f64(&actual), as_f64(&expected), as_f64(&tolerance))
            else {
                return Err(runtime_error(
                    "assert_close needs numbers",
                    ctx.call_position(),
                ));
            };
            if (a - e).abs() <= t {
                Ok(())
            } else {
                Err(runtime_error(
                    format!("assertion failed: {message}: got {a}, expected {e} ± {t}"),
                    ctx.call_position(),
                ))
            }
        },
    );
    r.func(
        "exists(path: String) -> bool",
        "Whether a file or folder exists at `path`.",
        "if !exists(\"data/Task000\") { synthetic_dataset(\"data/Task000\", #{cases: 8}); }",
        |path: &str| Path::new(path).exists(),
    );
    r.func(
        "file_exists(path: String) -> bool",
        "Whether a file or folder exists at `path` (the same as `exists`).",
        "if !file_exists(\"data/Task000\") { synthetic_dataset(\"data/Task000\", #{cases: 8}); }",
        |path: &str| Path::new(path).exists(),
    );
    r.func(
        "mkdir(path: String)",
        "Create the folder `path` and every missing parent (nothing happens if it exists).",
        "mkdir(\"runs/study/figures\");",
        |ctx: NativeCallContext, path: &str| -> ScriptResult<()> {
            std::fs::create_dir_all(path).map_err(|e| {
                runtime_error(
                    format!("cannot create folder {path}: {e}"),
                    ctx.call_position(),
                )
            })
        },
    );
    r.func(
        "glob(pattern: String) -> Array",
        "The paths matching a shell pattern, sorted.\n\
         `*` and `?` match within a name, `**` across folders, `[abc]` one of a set. Relative\n\
         patterns are relative to the working folder; no match gives an empty array.",
        "for p in glob(\"data/Task000/raw_splitted/imagesTr/*_0000.nii.gz\") { print(p); }",
        |ctx: NativeCallContext, pattern: &str| -> ScriptResult<Array> {
            let entries = glob::glob(pattern).map_err(|e| {
                runtime_error(
                    format!("glob: invalid pattern \"{pattern}\": {e}"),
                    ctx.call_position(),
                )
            })?;
            let mut paths = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| {
                    runtime_error(
                        format!(
                            "glob \"{pattern}\": cannot read {}: {}",
                            e.path().display(),
                            e.error()
                        ),
                        ctx.call_position(),
                    )
                })?;
                paths.push(path.display().to_string());
            }
            paths.sort();
            Ok(paths.into_iter().map(Dynamic::from).collect())
        },
    );
    r.func(
        "interrupted() -> bool",
        "Whether Ctrl-C was pressed.\n\
         A script that catches errors (like a sweep) checks it to stop instead of going on.",
        "try { run_cell(); } catch (e) { if interrupted() { throw e; } print(`failed: ${e}`); }",
        crate::util::interrupt::is_requested,
    );
    r.func(
        "safe_name(text: String) -> String",
        "A file-name-safe form of `text` (for a file or folder per sweep cell).\n\
         Letters, digits and `_ - = , + .` are kept; anything else (and a leading dot) becomes\n\
         `_`, and then a hash of the original is appended so distinct texts give distinct names.",
        "let out = \"runs/\" + safe_name(\"lr=0.1,stem=select:mri\");",
        |ctx: NativeCallContext, text: &str| -> ScriptResult<String> {
            if text.is_empty() {
                return Err(runtime_error(
                    "safe_name: the text is empty",
                    ctx.call_position(),
                ));
            }
            Ok(safe_file_name(text))
        },
    );
}

fn save_csv(
    ctx: &NativeCallContext,
    rows: &Array,
    path: &str,
    columns: Option<Vec<String>>,
) -> ScriptResult<()> {
    rows_checked(ctx, "save_csv", rows)?;
    let cols = columns.unwrap_or_else(|| columns_of(rows));
    let csv_error =
        |e: csv::Error| runtime_error(format!("save_csv {path}: {e}"), ctx.call_position());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&cols).map_err(csv_error)?;
    for row in rows {
        let m = row
            .read_lock::<Map>()
            .expect("rows were checked to be maps");
        let rec: Vec<String> = cols
            .iter()
            .map(|c| m.get(c.as_str()).map(cell_text).unwrap_or_default())
            .collect();
        w.write_record(&rec).map_err(csv_error)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| runtime_error(format!("save_csv {path}: {e}"), ctx.call_position()))?;
    write_file(ctx, path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Dynamic)]) -> Dynamic {
        let mut m = Map::new();
        for (k, v) in pairs {
            m.insert((*k).into(), v.clone());
        }
        Dynamic::from_map(m)
    }

    #[test]
    fn a_nan_or_missing_value_does_not_move_a_column() {
        let ok = row(&[
            ("method", "mae".into()),
            ("ap", Dynamic::from_float(0.5)),
            ("lr", Dynamic::from_float(0.1)),
        ]);
        let expected = vec!["method", "ap", "lr"];
        assert_eq!(columns_of(&vec![ok.clone()]), expected);
        let nan = row(&[
            ("method", "x".into()),
            ("ap", Dynamic::from_float(f64::NAN)),
        ]);
        let null = row(&[
            ("method", "y".into()),
            ("ap", Dynamic::UNIT),
            ("lr", "".into()),
        ]);
        let failed = row(&[("method", "z".into()), ("error", "boom".into())]);
        assert_eq!(
            columns_of(&vec![nan, ok.clone(), null, failed]),
            vec!["error", "method", "ap", "lr"]
        );
        let text = row(&[("ap", "n/a".into())]);
        assert_eq!(columns_of(&vec![ok, text]), vec!["ap", "method", "lr"]);
    }

    #[test]
    fn safe_names_keep_plain_keys_and_hash_replaced_ones() {
        assert_eq!(safe_file_name("lr=0.1,seed=2"), "lr=0.1,seed=2");
        let a = safe_file_name("stem=select:mri");
        let b = safe_file_name("stem=select/mri");
        assert!(a.starts_with("stem=select_mri-") && a.len() == "stem=select_mri-".len() + 12);
        assert_ne!(a, b, "distinct texts stay distinct");
        assert!(safe_file_name("..").starts_with("_.-"));
        assert!(safe_file_name(&"x".repeat(300)).len() < 140);
    }
}
