//! Weights files: any module's parameters saved as named MessagePack (burn's
//! `NamedMpkBytesRecorder`, full f32 precision), written atomically.
//!
//! Loading checks every parameter's name and shape against the module it is loaded into, so a
//! file from a differently configured network is refused with the first mismatch named.
//! The configuration is not inside the weights file; save it next to it (configs are serde).

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;

use super::{NnError, inspect};

type WeightsRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Save `module`'s parameters to `path` (atomically: temporary file, then rename).
pub fn save_weights<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<(), NnError> {
    let error = |reason: String| NnError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    inspect::materialize(module);
    let bytes = WeightsRecorder::default()
        .record(module.clone().into_record(), ())
        .map_err(|e| error(format!("cannot encode the weights: {e}")))?;
    crate::util::atomic_write(path, &bytes).map_err(|e| error(format!("cannot write: {e}")))
}

/// Check that every length a MessagePack stream declares fits in the bytes that follow it.
///
/// The decoder behind burn's recorder reserves what a list declares before reading it (a
/// tensor shape declaring 2³² dimensions reserved 34 GB; found by the fuzzer), so a damaged
/// file must be refused before it is decoded. Each element takes at least one byte, so a
/// length beyond the rest of the file cannot be genuine.
fn check_declared_lengths(bytes: &[u8]) -> Result<(), String> {
    use rmp::Marker;
    let mut position = 0usize;
    // Values still to read: one at the top, plus the elements of each list and map entered.
    let mut pending: u64 = 1;
    let take = |position: &mut usize, count: u64, what: &str| -> Result<(), String> {
        let rest = (bytes.len() - *position) as u64;
        if count > rest {
            return Err(format!(
                "{what} at byte {} declares {count} bytes or elements, but only {rest} bytes follow",
                *position
            ));
        }
        *position += count as usize;
        Ok(())
    };
    let read_uint = |position: &mut usize, width: usize| -> Result<u64, String> {
        let field = bytes
            .get(*position..*position + width)
            .ok_or_else(|| format!("the file ends inside a length field at byte {}", *position))?;
        *position += width;
        Ok(field
            .iter()
            .fold(0u64, |value, &b| value << 8 | u64::from(b)))
    };
    while pending > 0 {
        let Some(&byte) = bytes.get(position) else {
            return Err(format!(
                "the file ends at byte {position} with {pending} values unread"
            ));
        };
        position += 1;
        pending -= 1;
        match Marker::from_u8(byte) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            }
            Marker::U8 | Marker::I8 => take(&mut position, 1, "a number")?,
            Marker::U16 | Marker::I16 => take(&mut position, 2, "a number")?,
            Marker::U32 | Marker::I32 | Marker::F32 => take(&mut position, 4, "a number")?,
            Marker::U64 | Marker::I64 | Marker::F64 => take(&mut position, 8, "a number")?,
            Marker::FixStr(n) => take(&mut position, u64::from(n), "a string")?,
            Marker::Str8 | Marker::Bin8 => {
                let n = read_uint(&mut position, 1)?;
                take(&mut position, n, "a string")?
            }
            Marker::Str16 | Marker::Bin16 => {
                let n = read_uint(&mut position, 2)?;
                take(&mut position, n, "a string")?
            }
            Marker::Str32 | Marker::Bin32 => {
                let n = read_uint(&mut position, 4)?;
                take(&mut position, n, "a string")?
            }
            Marker::FixArray(n) => pending += u64::from(n),
            Marker::FixMap(n) => pending += 2 * u64::from(n),
            Marker::Array16 | Marker::Array32 | Marker::Map16 | Marker::Map32 => {
                let width = if matches!(Marker::from_u8(byte), Marker::Array16 | Marker::Map16) {
                    2
                } else {
                    4
                };
                let declared = read_uint(&mut position, width)?;
                let values = if matches!(Marker::from_u8(byte), Marker::Map16 | Marker::Map32) {
                    2 * declared
                } else {
                    declared
                };
                let rest = (bytes.len() - position) as u64;
                if values > rest {
                    return Err(format!(
                        "a list at byte {} declares {declared} elements, but only {rest} bytes follow",
                        position - 1 - width
                    ));
                }
                pending += values;
            }
            Marker::FixExt1 => take(&mut position, 2, "an extension")?,
            Marker::FixExt2 => take(&mut position, 3, "an extension")?,
            Marker::FixExt4 => take(&mut position, 5, "an extension")?,
            Marker::FixExt8 => take(&mut position, 9, "an extension")?,
            Marker::FixExt16 => take(&mut position, 17, "an extension")?,
            Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                let width = match Marker::from_u8(byte) {
                    Marker::Ext8 => 1,
                    Marker::Ext16 => 2,
                    _ => 4,
                };
                let n = read_uint(&mut position, width)?;
                take(&mut position, n.saturating_add(1), "an extension")?
            }
            Marker::Reserved => {
                return Err(format!("byte {} is not a MessagePack marker", position - 1));
            }
        }
    }
    Ok(())
}

/// Load parameters saved by [`save_weights`] into `module` (which fixes the architecture).
pub fn load_weights<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, NnError> {
    let error = |reason: String| NnError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
    check_declared_lengths(&bytes).map_err(|e| error(format!("damaged ({e})")))?;
    // burn panics on a malformed parameter id instead of returning its error; a damaged file
    // must be an error, so the panic is caught here.
    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        WeightsRecorder::default().load::<M::Record>(bytes, device)
    }))
    .map_err(|panic| error(format!("damaged ({})", panic_text(&*panic))))?
    .map_err(|e| error(format!("not a weights file of this network: {e}")))?;
    let expected: Vec<(String, Vec<usize>)> = inspect::parameters(&module)
        .into_iter()
        .map(|p| (p.path, p.shape))
        .collect();
    // burn asserts that a list of layers in the file has the module's length (it panics
    // otherwise); a file of another architecture must be an error, so the panic is caught here.
    let loaded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| module.load_record(record)))
            .map_err(|panic| {
                error(format!(
                    "does not fit the network: a list of layers has another length ({})",
                    panic_text(&*panic)
                ))
            })?;
    let found: Vec<(String, Vec<usize>)> = inspect::parameters(&loaded)
        .into_iter()
        .map(|p| (p.path, p.shape))
        .collect();
    if found != expected {
        let first = expected
            .iter()
            .zip(&found)
            .find(|(e, f)| e != f)
            .map(|(e, f)| {
                format!(
                    "parameter `{}` {:?} in the network, `{}` {:?} in the file",
                    e.0, e.1, f.0, f.1
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "the network has {} parameter tensors, the file {}",
                    expected.len(),
                    found.len()
                )
            });
        return Err(error(format!("does not fit the network: {first}")));
    }
    Ok(loaded)
}

/// The first line of a caught panic's message.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::encoder::{EncoderConfig, ResEncConfig};
    use crate::nn::retina_unet::RetinaUNetConfig;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};
    use burn::tensor::{Distribution, Tensor};

    #[test]
    fn save_then_load_gives_identical_outputs() {
        let device = test_device();
        let cfg = RetinaUNetConfig::tiny(1, 2);
        let model = cfg.init::<TestBackend>(&device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.mpk");
        save_weights(&model, &path).unwrap();
        let fresh = cfg.init::<TestBackend>(&device).unwrap();
        let x =
            Tensor::<TestBackend, 5>::random([1, 1, 16, 16, 16], Distribution::Default, &device);
        let before = tensor_values(model.forward(x.clone()).unwrap().class_logits);
        let differs = tensor_values(fresh.forward(x.clone()).unwrap().class_logits);
        assert!(before != differs, "a fresh network has other weights");
        let loaded = load_weights(fresh, &path, &device).unwrap();
        let out = loaded.forward(x.clone()).unwrap();
        let reference = model.forward(x).unwrap();
        assert!(
            tensor_values(out.class_logits) == before,
            "class logits differ after loading"
        );
        assert!(
            tensor_values(out.box_deltas) == tensor_values(reference.box_deltas),
            "box deltas differ"
        );
        let seg = tensor_values(out.segmentation_logits.unwrap());
        assert!(
            seg == tensor_values(reference.segmentation_logits.unwrap()),
            "segmentation logits differ"
        );
    }

    #[test]
    fn loading_into_another_architecture_is_refused() {
        let device = test_device();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.mpk");
        let small = ResEncConfig::tiny(1).init::<TestBackend>(&device).unwrap();
        save_weights(&small, &path).unwrap();
        let wider = EncoderConfig::Resenc(ResEncConfig {
            widths: vec![8, 16, 32, 48],
            ..ResEncConfig::tiny(1)
        })
        .init::<TestBackend>(&device)
        .unwrap();
        let err = load_weights(wider, &path, &device).unwrap_err().to_string();
        assert!(
            err.contains("does not fit") || err.contains("not a weights file"),
            "{err}"
        );
        // A list declaring 2³² − 1 elements in a 20-byte file is refused before anything is
        // reserved for it (the decoder reserved 34 GB for such a tensor shape).
        let huge = dir.path().join("huge.mpk");
        let mut bytes = vec![0x81, 0xa4];
        bytes.extend(b"item");
        bytes.extend([0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        std::fs::write(&huge, &bytes).unwrap();
        let err = load_weights(small.clone(), &huge, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("huge.mpk") && err.contains("declares 4294967295 elements"),
            "{err}"
        );
        let truncated = dir.path().join("truncated.mpk");
        std::fs::write(&truncated, [0x82, 0xa1, b'a', 0x01]).unwrap();
        let err = load_weights(small.clone(), &truncated, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 values unread"), "{err}");
        let missing = load_weights(small, &dir.path().join("nope.mpk"), &device)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("nope.mpk") && missing.contains("cannot read"),
            "{missing}"
        );
    }
}
