//! Conversions between script values and typed Rust values, with errors that carry the
//! script position of the call.

use rhai::{Dynamic, EvalAltResult, Map, NativeCallContext, Position};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The error type of every native primitive.
pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error at `pos` with a plain message.
pub fn runtime_error(message: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(message.into().into(), pos))
}

/// Turn any displayable domain error into a script error at the call site.
pub fn at<E: std::fmt::Display>(
    ctx: &NativeCallContext,
) -> impl Fn(E) -> Box<EvalAltResult> + use<E> {
    let pos = ctx.call_position();
    move |e| runtime_error(e.to_string(), pos)
}

/// Deserialize an options map into a typed config (over its serde defaults).
///
/// The one conversion of options maps: integers are accepted wherever a float is expected,
/// and an error names the primitive and the option, e.g. "train: option `lr` must be a number
/// (Float), got String \"0.1\"" or "resample: unknown option `ordr`; did you mean `order`?
/// Expected one of: …" (the list comes from the primitive's declared options).
pub fn options<T: DeserializeOwned>(
    ctx: &NativeCallContext,
    what: &str,
    map: Map,
) -> ScriptResult<T> {
    super::options::deserialize::<T>(what, None, &map)
        .map_err(|message| runtime_error(message, ctx.call_position()))
}

/// Lay an options map over `base` (a preset config) and deserialize the result, with the
/// same conversions and errors as [`options`].
pub fn options_over<T: Serialize + DeserializeOwned>(
    ctx: &NativeCallContext,
    what: &str,
    base: &T,
    map: &Map,
) -> ScriptResult<T> {
    let base = serde_json::to_value(base)
        .map_err(|e| runtime_error(format!("{what}: {e}"), ctx.call_position()))?;
    super::options::deserialize::<T>(what, Some(base), map)
        .map_err(|message| runtime_error(message, ctx.call_position()))
}

/// Check an options map against the declared options of a primitive before reading it: an
/// unknown key is an error naming it, its nearest match and every valid key.
pub fn check_options(
    ctx: &NativeCallContext,
    set: &super::options::OptionSet,
    map: &Map,
) -> ScriptResult<()> {
    set.check(map)
        .map_err(|message| runtime_error(message, ctx.call_position()))
}

/// Convert a typed value into a script value (maps, arrays, numbers, strings).
pub fn to_script<T: Serialize>(ctx: &NativeCallContext, value: &T) -> ScriptResult<Dynamic> {
    rhai::serde::to_dynamic(value).map_err(|e| runtime_error(e.to_string(), ctx.call_position()))
}

/// Convert a typed value into a script value outside a call context (cannot fail for
/// plain data; a failure becomes a string describing it).
pub fn to_script_plain<T: Serialize>(value: &T) -> Dynamic {
    rhai::serde::to_dynamic(value)
        .unwrap_or_else(|e| Dynamic::from(format!("<unconvertible: {e}>")))
}

/// Read a script number (int or float) as f64.
pub fn as_f64(value: &Dynamic) -> Option<f64> {
    if let Ok(f) = value.as_float() {
        Some(f)
    } else {
        value.as_int().ok().map(|i| i as f64)
    }
}

/// Read a script array of numbers, naming `what` in the error.
pub fn f64_array(
    ctx: &NativeCallContext,
    what: &str,
    value: &rhai::Array,
) -> ScriptResult<Vec<f64>> {
    value
        .iter()
        .enumerate()
        .map(|(i, v)| {
            as_f64(v).ok_or_else(|| {
                runtime_error(
                    format!("{what}[{i}] must be a number, got {}", v.type_name()),
                    ctx.call_position(),
                )
            })
        })
        .collect()
}

/// Read exactly three numbers, e.g. a spacing `[sd, sh, sw]`.
pub fn f64_triple(
    ctx: &NativeCallContext,
    what: &str,
    value: &rhai::Array,
) -> ScriptResult<[f64; 3]> {
    let v = f64_array(ctx, what, value)?;
    <[f64; 3]>::try_from(v.as_slice()).map_err(|_| {
        runtime_error(
            format!("{what} needs 3 numbers [d, h, w], got {}", v.len()),
            ctx.call_position(),
        )
    })
}

/// Convert a JSON value into a script value.
pub fn json_to_dynamic(value: &serde_json::Value) -> Dynamic {
    to_script_plain(value)
}

/// Convert a script value into JSON (custom types become their type name as a string).
pub fn dynamic_to_json(value: &Dynamic) -> serde_json::Value {
    use serde_json::Value;
    if value.is_unit() {
        return Value::Null;
    }
    if let Ok(b) = value.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(i) = value.as_int() {
        return Value::from(i);
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null);
    }
    if value.is_string() {
        return Value::String(value.clone().into_string().unwrap_or_default());
    }
    if value.is_array() {
        let arr = value.read_lock::<rhai::Array>().unwrap();
        return Value::Array(arr.iter().map(dynamic_to_json).collect());
    }
    if value.is_map() {
        let map = value.read_lock::<Map>().unwrap();
        return Value::Object(
            map.iter()
                .map(|(k, v)| (k.to_string(), dynamic_to_json(v)))
                .collect(),
        );
    }
    if let Ok(c) = value.as_char() {
        return Value::String(c.to_string());
    }
    Value::String(value.to_string())
}

/// Merge `overrides` into `base` recursively (maps merge key by key; anything else replaces):
/// how a script's options map is laid over a config's defaults.
pub fn merge_json(base: &mut serde_json::Value, overrides: serde_json::Value) {
    match (base, overrides) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}
