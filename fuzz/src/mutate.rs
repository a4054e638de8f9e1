//! Mutations: byte-level (libFuzzer's classic set) and structure-aware ones for JSON, NIfTI
//! headers, gzip streams and `torch.save` zip archives. Every choice is drawn from random bytes
//! through `arbitrary::Unstructured`, so a structured mutation is a function of a byte string.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};
use std::io::{Read, Write};

/// The shape of a target's input, which picks the structured mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Any bytes (the pickle stream, MessagePack weights).
    Bytes,
    /// A JSON (or YAML written as JSON) document.
    Json,
    /// An uncompressed NIfTI-1 file.
    Nifti,
    /// A gzip-compressed NIfTI-1 file.
    NiftiGz,
    /// A `torch.save` zip archive.
    Zip,
}

const INTERESTING_8: [u8; 9] = [0, 1, 2, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40];
const INTERESTING_16: [i16; 10] = [0, 1, -1, 2, 3, 4, 7, i16::MAX, i16::MIN, 255];
const INTERESTING_32: [i32; 10] = [0, 1, -1, 348, 352, 540, i32::MAX, i32::MIN, 1 << 30, 65536];
const INTERESTING_F32: [f32; 12] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-30,
    1e30,
    f32::MAX,
    f32::MIN_POSITIVE,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
];

/// Mutate `data` with 1–8 stacked mutations; `others` are corpus entries for splicing.
pub fn mutate(format: Format, data: &[u8], others: &[Vec<u8>], entropy: &[u8]) -> Vec<u8> {
    let mut u = Unstructured::new(entropy);
    let structured = match format {
        Format::Bytes => None,
        Format::Json => json(data, &mut u).ok(),
        Format::Nifti => nifti_header(data, &mut u).ok(),
        Format::NiftiGz => gunzip(data).and_then(|inner| {
            let changed = if u.ratio(1, 2).unwrap_or(false) {
                nifti_header(&inner, &mut u).ok()?
            } else {
                bytes(&inner, others, &mut u).ok()?
            };
            Some(gzip(&changed))
        }),
        Format::Zip => zip_entry(data, others, &mut u).ok(),
    };
    // Structured mutations most of the time; raw damage (truncation, bit rot) the rest.
    match structured {
        Some(out) if u.ratio(3, 4).unwrap_or(true) => out,
        _ => bytes(data, others, &mut u).unwrap_or_else(|_| data.to_vec()),
    }
}

/// libFuzzer-style byte mutations, 1–8 stacked.
pub fn bytes(data: &[u8], others: &[Vec<u8>], u: &mut Unstructured) -> Result<Vec<u8>> {
    let mut out = data.to_vec();
    let rounds = u.int_in_range(1..=8u8)?;
    for _ in 0..rounds {
        let len = out.len();
        let at = |u: &mut Unstructured| -> Result<usize> {
            if len == 0 { Ok(0) } else { u.choose_index(len) }
        };
        match u.int_in_range(0..=11u8)? {
            0 if len > 0 => {
                let i = at(u)?;
                out[i] ^= 1 << u.int_in_range(0..=7u8)?;
            }
            1 if len > 0 => {
                let i = at(u)?;
                out[i] = u.arbitrary()?;
            }
            2 if len > 0 => {
                let i = at(u)?;
                out[i] = *u.choose(&INTERESTING_8)?;
            }
            3 if len > 1 => {
                let i = at(u)?.min(len - 2);
                let v = *u.choose(&INTERESTING_16)?;
                let b = if u.arbitrary()? {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                out[i..i + 2].copy_from_slice(&b);
            }
            4 if len > 3 => {
                let i = at(u)?.min(len - 4);
                let v = *u.choose(&INTERESTING_32)?;
                let b = if u.arbitrary()? {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                out[i..i + 4].copy_from_slice(&b);
            }
            5 if len > 0 => {
                let i = at(u)?;
                let delta: i8 = u.arbitrary()?;
                out[i] = out[i].wrapping_add(delta as u8);
            }
            6 => {
                let i = at(u)?;
                let n = u.int_in_range(1..=16usize)?;
                let ins: Vec<u8> = (0..n).map(|_| u.arbitrary()).collect::<Result<_>>()?;
                out.splice(i..i, ins);
            }
            7 if len > 0 => {
                let i = at(u)?;
                let n = u.int_in_range(1..=64usize)?.min(len - i);
                out.drain(i..i + n);
            }
            8 if len > 0 => {
                // Truncate: half-copied files.
                let i = at(u)?;
                out.truncate(i);
            }
            9 if len > 1 => {
                // Duplicate a block in place.
                let i = at(u)?;
                let n = u.int_in_range(1..=256usize)?.min(len - i);
                let block = out[i..i + n].to_vec();
                let j = at(u)?;
                out.splice(j..j, block);
            }
            10 if !others.is_empty() => {
                // Splice a block of another corpus entry.
                let other = u.choose(others)?;
                if !other.is_empty() {
                    let i = u.choose_index(other.len())?;
                    let n = u.int_in_range(1..=256usize)?.min(other.len() - i);
                    let j = at(u)?;
                    let end = (j + n).min(out.len());
                    out.splice(j..end, other[i..i + n].iter().copied());
                }
            }
            11 if len > 0 => {
                // ASCII digits: long numbers in text formats.
                let i = at(u)?;
                let n = u.int_in_range(1..=24usize)?;
                let digits: Vec<u8> = (0..n)
                    .map(|_| u.int_in_range(b'0'..=b'9'))
                    .collect::<Result<_>>()?;
                out.splice(i..i, digits);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Keys detlab's JSON readers know; a mutation may add one anywhere.
const KEYS: &[&str] = &[
    "labels",
    "modalities",
    "task",
    "name",
    "dim",
    "instances",
    "train",
    "val",
    "test",
    "classes",
    "cases",
    "id",
    "gt",
    "pred",
    "boxes",
    "boxes_mm",
    "scores",
    "spacing",
    "shape",
    "case",
    "format",
    "format_version",
    "iteration",
    "history",
    "config",
    "model_config",
    "network",
    "detector",
    "backbone",
    "widths",
    "num_classes",
    "patch",
    "patch_size",
    "in_channels",
    "method",
    "data",
    "stems",
    "heads",
    "best",
    "epochs",
    "target_class",
    "test_labels",
];

/// Replace, delete or add one node of a JSON document.
fn json(data: &[u8], u: &mut Unstructured) -> Result<Vec<u8>> {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return Err(arbitrary::Error::IncorrectFormat);
    };
    let mut nodes = 0usize;
    count_nodes(&value, &mut nodes);
    let target = u.choose_index(nodes.max(1))?;
    let mut seen = 0usize;
    edit_node(&mut value, target, &mut seen, u)?;
    let text = if u.arbitrary()? {
        serde_json::to_vec_pretty(&value)
    } else {
        serde_json::to_vec(&value)
    };
    Ok(text.unwrap_or_default())
}

fn count_nodes(v: &Value, n: &mut usize) {
    *n += 1;
    match v {
        Value::Array(a) => a.iter().for_each(|x| count_nodes(x, n)),
        Value::Object(o) => o.values().for_each(|x| count_nodes(x, n)),
        _ => {}
    }
}

fn edit_node(v: &mut Value, target: usize, seen: &mut usize, u: &mut Unstructured) -> Result<bool> {
    if *seen == target {
        edit_here(v, u)?;
        return Ok(true);
    }
    *seen += 1;
    match v {
        Value::Array(a) => {
            for x in a.iter_mut() {
                if edit_node(x, target, seen, u)? {
                    return Ok(true);
                }
            }
        }
        Value::Object(o) => {
            for x in o.values_mut() {
                if edit_node(x, target, seen, u)? {
                    return Ok(true);
                }
            }
        }
        _ => {}
    }
    Ok(false)
}

fn edit_here(v: &mut Value, u: &mut Unstructured) -> Result<()> {
    match u.int_in_range(0..=5u8)? {
        // Remove a key or element (missing fields, wrong lengths).
        0 => match v {
            Value::Object(o) if !o.is_empty() => {
                let k = u.choose_index(o.len())?;
                let key = o.keys().nth(k).cloned().unwrap_or_default();
                o.remove(&key);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = u.choose_index(a.len())?;
                a.remove(i);
            }
            _ => *v = Value::Null,
        },
        // Add a key (extra fields) or duplicate an element.
        1 => match v {
            Value::Object(o) => {
                let key = if u.arbitrary()? {
                    u.choose(KEYS)?.to_string()
                } else {
                    u.arbitrary::<String>()?
                };
                o.insert(key, arbitrary_value(u, 2)?);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = u.choose_index(a.len())?;
                let x = a[i].clone();
                let copies = u.int_in_range(1..=3usize)?;
                for _ in 0..copies {
                    a.push(x.clone());
                }
            }
            _ => *v = arbitrary_value(u, 2)?,
        },
        // Nudge a number (off by one, sign, huge, fractional).
        2 => {
            if let Some(x) = v.as_f64() {
                let y = match u.int_in_range(0..=6u8)? {
                    0 => x + 1.0,
                    1 => x - 1.0,
                    2 => -x,
                    3 => x * 1e6,
                    4 => x + 0.5,
                    5 => 0.0,
                    _ => x * 2f64.powi(40),
                };
                *v = number(y, u)?;
            } else {
                *v = arbitrary_value(u, 1)?;
            }
        }
        // Anything else at this place (wrong types).
        _ => *v = arbitrary_value(u, 3)?,
    }
    Ok(())
}

fn number(x: f64, u: &mut Unstructured) -> Result<Value> {
    if x.fract() == 0.0 && x.abs() < 9e18 && u.arbitrary()? {
        Ok(Value::Number(Number::from(x as i64)))
    } else {
        Ok(Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null))
    }
}

/// An arbitrary JSON value, biased to the edge cases parsers mishandle.
fn arbitrary_value(u: &mut Unstructured, depth: u8) -> Result<Value> {
    let pick = u.int_in_range(0..=13u8)?;
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(*u.choose(&[
            0i64,
            1,
            -1,
            2,
            3,
            255,
            65536,
            i32::MAX as i64,
            i64::MAX,
            i64::MIN,
            1 << 30,
            1 << 40,
        ])?)),
        3 => Value::Number(Number::from(u64::MAX)),
        4 => number(
            *u.choose(&[
                0.5,
                -0.5,
                1e-300,
                1e300,
                f64::MAX,
                1e-7,
                0.1,
                1.0000000000000002,
            ])?,
            u,
        )?,
        5 => Value::String(String::new()),
        6 => Value::String(u.arbitrary()?),
        7 => Value::String(u.choose(KEYS)?.to_string()),
        8 => Value::String(
            (*u.choose(&[
                "NaN",
                "inf",
                "-1",
                "1e999",
                "../../etc",
                "case0000",
                "0",
                "CT",
                "mae",
            ])?)
            .to_string(),
        ),
        9 if depth > 0 => {
            let n = u.int_in_range(0..=7usize)?;
            Value::Array(
                (0..n)
                    .map(|_| arbitrary_value(u, depth - 1))
                    .collect::<Result<_>>()?,
            )
        }
        10 if depth > 0 => {
            let n = u.int_in_range(0..=3usize)?;
            let mut o = Map::new();
            for _ in 0..n {
                let key = if u.arbitrary()? {
                    u.choose(KEYS)?.to_string()
                } else {
                    u.arbitrary()?
                };
                o.insert(key, arbitrary_value(u, depth - 1)?);
            }
            Value::Object(o)
        }
        // A box-like array: 6 numbers, sometimes inverted or of another length.
        11 => {
            let n = *u.choose(&[0usize, 4, 5, 6, 6, 6, 7])?;
            Value::Array(
                (0..n)
                    .map(|_| number(u.int_in_range(-5..=40i32)? as f64, u))
                    .collect::<Result<_>>()?,
            )
        }
        // Deep nesting (recursion limits).
        12 => {
            let mut v = Value::Null;
            for _ in 0..u.int_in_range(1..=200u16)? {
                v = Value::Array(vec![v]);
            }
            v
        }
        _ => Value::Number(Number::from(u.int_in_range(-3..=100i64)?)),
    })
}

/// Byte offsets and kinds of the NIfTI-1 header fields detlab reads.
const NIFTI_FIELDS: &[(usize, u8)] = &[
    (0, 4),  // sizeof_hdr (i32)
    (40, 2), // dim[0..8] (i16)
    (42, 2),
    (44, 2),
    (46, 2),
    (48, 2),
    (50, 2),
    (70, 2), // datatype
    (72, 2), // bitpix
    (76, 5), // pixdim[0..8] (f32)
    (80, 5),
    (84, 5),
    (88, 5),
    (92, 5),
    (108, 5), // vox_offset
    (112, 5), // scl_slope
    (116, 5), // scl_inter
    (252, 2), // qform_code
    (254, 2), // sform_code
    (256, 5), // quatern_b, c, d, qoffset_x, y, z
    (260, 5),
    (264, 5),
    (268, 5),
    (280, 5), // srow_x, srow_y, srow_z
    (284, 5),
    (288, 5),
    (296, 5),
    (300, 5),
    (316, 5),
    (344, 4), // magic
];

/// Set one or more header fields to interesting values (in the file's byte order).
fn nifti_header(data: &[u8], u: &mut Unstructured) -> Result<Vec<u8>> {
    if data.len() < 348 {
        return Err(arbitrary::Error::IncorrectFormat);
    }
    let mut out = data.to_vec();
    let big = i32::from_le_bytes([data[0], data[1], data[2], data[3]]) != 348;
    for _ in 0..u.int_in_range(1..=3u8)? {
        let &(at, kind) = u.choose(NIFTI_FIELDS)?;
        match kind {
            2 => {
                let v: i16 = if u.arbitrary()? {
                    *u.choose(&INTERESTING_16)?
                } else {
                    u.arbitrary()?
                };
                let b = if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[at..at + 2].copy_from_slice(&b);
            }
            4 => {
                let v: i32 = *u.choose(&INTERESTING_32)?;
                let b = if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[at..at + 4].copy_from_slice(&b);
            }
            _ => {
                let v: f32 = if u.arbitrary()? {
                    *u.choose(&INTERESTING_F32)?
                } else {
                    u.arbitrary()?
                };
                let b = if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[at..at + 4].copy_from_slice(&b);
            }
        }
    }
    Ok(out)
}

/// Decompress a gzip stream (None if it is not one).
pub fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(64 << 20)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// Compress with gzip (fast level: the fuzzer compresses every input).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// Mutate one member of a (stored) zip archive and write the archive again with valid CRCs, so
/// the mutation reaches the reader behind the zip layer.
fn zip_entry(data: &[u8], others: &[Vec<u8>], u: &mut Unstructured) -> Result<Vec<u8>> {
    let Ok(mut archive) = zip::ZipArchive::new(std::io::Cursor::new(data)) else {
        return Err(arbitrary::Error::IncorrectFormat);
    };
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let Ok(mut f) = archive.by_index(i) else {
            return Err(arbitrary::Error::IncorrectFormat);
        };
        let name = f.name().to_string();
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return Err(arbitrary::Error::IncorrectFormat);
        }
        entries.push((name, bytes));
    }
    if entries.is_empty() {
        return Err(arbitrary::Error::IncorrectFormat);
    }
    // The pickle most of the time; a tensor storage, the version record or a rename otherwise.
    let pkl = entries.iter().position(|(n, _)| n.ends_with("data.pkl"));
    let i = match pkl {
        Some(p) if u.ratio(2, 3)? => p,
        _ => u.choose_index(entries.len())?,
    };
    match u.int_in_range(0..=9u8)? {
        0 => entries[i].0 = format!("{}x", entries[i].0),
        1 => {
            entries.remove(i);
        }
        _ => entries[i].1 = bytes(&entries[i].1, others, u)?,
    }
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in &entries {
        if w.start_file(name.as_str(), options).is_err() || w.write_all(bytes).is_err() {
            return Err(arbitrary::Error::IncorrectFormat);
        }
    }
    w.finish()
        .map(|c| c.into_inner())
        .map_err(|_| arbitrary::Error::IncorrectFormat)
}
