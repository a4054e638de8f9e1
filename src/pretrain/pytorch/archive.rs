//! The `torch.save` zip archive around the pickle: finding `<name>/data.pkl`, refusing legacy,
//! big-endian and damaged files, and reading tensor storages on demand (an nnssl checkpoint's
//! optimizer state is never read).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::super::PretrainError;
use super::pickle::{DType, PickleError, TensorRef, Value, parse_pickle};

/// An open `torch.save` file: its parsed pickle and access to the tensor storages.
pub struct TorchFile {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<File>>,
    prefix: String,
    /// The archive's size on disk: no entry is pre-allocated larger than this.
    archive_len: u64,
    /// The pickled object (nnssl: a dict with `network_weights`, `nnssl_adaptation_plan`, ...).
    pub root: Value,
}

impl std::fmt::Debug for TorchFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TorchFile({})", self.path.display())
    }
}

/// The most bytes one tensor may hold once materialised (ResEncL's largest weight is ~11 MB).
const MAX_TENSOR_BYTES: usize = 1 << 30;

/// Read one archive entry of `declared` bytes. The declaration comes from the file, so it only
/// bounds what is read: nothing is allocated up front beyond what the archive can hold, and an
/// entry that inflates past its declared size is an error, not an out-of-memory.
fn read_entry(entry: &mut impl Read, declared: u64, archive_len: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(declared.min(archive_len) as usize);
    entry
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("{e} (truncated or damaged?)"))?;
    if buf.len() as u64 > declared {
        return Err(format!(
            "it holds more than the {declared} bytes it declares"
        ));
    }
    Ok(buf)
}

impl TorchFile {
    /// Open and parse a `.pth` / `.pt` file; nothing in it is executed.
    pub fn open(path: &Path) -> Result<Self, PretrainError> {
        let err = |reason: String| PretrainError::checkpoint(path, reason);
        let mut file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let mut magic = [0u8; 4];
        let n = file
            .read(&mut magic)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if n >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
            return Err(err(
                "a PyTorch file in the legacy (before 1.6) format; re-save it with a current torch.save".into(),
            ));
        }
        if n < 4 || &magic != b"PK\x03\x04" {
            return Err(err(
                "not a PyTorch checkpoint: not a zip archive as torch.save writes".into(),
            ));
        }
        let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let archive_len = file
            .metadata()
            .map_err(|e| err(format!("cannot read: {e}")))?
            .len();
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| err(format!("damaged or truncated zip archive: {e}")))?;
        let pkl = zip
            .file_names()
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .next()
            .ok_or_else(|| {
                err("the archive has no <name>/data.pkl: not written by torch.save".into())
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let read = |zip: &mut zip::ZipArchive<BufReader<File>>,
                    name: &str|
         -> Result<Option<Vec<u8>>, PretrainError> {
            let mut entry = match zip.by_name(name) {
                Ok(e) => e,
                Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                Err(e) => return Err(err(format!("cannot read {name}: {e}"))),
            };
            let declared = entry.size();
            read_entry(&mut entry, declared, archive_len)
                .map(Some)
                .map_err(|e| err(format!("cannot read {name}: {e}")))
        };
        if let Some(order) = read(&mut zip, &format!("{prefix}byteorder"))?
            && order.trim_ascii() != b"little"
        {
            return Err(err(format!(
                "tensors are stored {}-endian; only little-endian files are supported",
                String::from_utf8_lossy(&order).trim()
            )));
        }
        let data = read(&mut zip, &pkl)?.unwrap_or_default();
        let root = parse_pickle(&data).map_err(|e| match e {
            PickleError::Global(global) => PretrainError::UnsafePickle {
                path: path.to_path_buf(),
                global,
            },
            PickleError::Invalid(reason) => err(format!("{pkl}: {reason}")),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            zip,
            prefix,
            archive_len,
            root,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of a tensor's view, contiguous in C order, little-endian; `key` names the
    /// tensor in errors.
    pub fn tensor_bytes(&mut self, t: &TensorRef, key: &str) -> Result<Vec<u8>, PretrainError> {
        let name = format!("{}data/{}", self.prefix, t.storage);
        let path = self.path.clone();
        let err = |reason: String| PretrainError::CheckpointKey {
            path: path.clone(),
            key: key.to_string(),
            reason,
        };
        let mut entry = self
            .zip
            .by_name(&name)
            .map_err(|e| err(format!("storage {name}: {e}")))?;
        let size = t.dtype.size();
        let expected = t
            .storage_len
            .checked_mul(size)
            .ok_or_else(|| err(format!("storage {name} declares an impossible length")))?;
        let archive_len = self.archive_len;
        let storage = read_entry(&mut entry, expected as u64, archive_len)
            .map_err(|e| err(format!("cannot read storage {name}: {e}")))?;
        if storage.len() < expected {
            return Err(err(format!(
                "storage {name} has {} bytes, {} expected",
                storage.len(),
                expected
            )));
        }
        // A view with zero strides can declare far more elements than its storage holds.
        let bytes = t
            .shape
            .iter()
            .try_fold(size, |acc, &n| acc.checked_mul(n))
            .filter(|&b| b <= MAX_TENSOR_BYTES)
            .ok_or_else(|| {
                err(format!(
                    "a tensor of shape {:?} is larger than the {MAX_TENSOR_BYTES} bytes detlab reads for one weight",
                    t.shape
                ))
            })?;
        let count = bytes / size;
        let mut out = Vec::with_capacity(bytes);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..count {
            let e = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&storage[e * size..(e + 1) * size]);
            for a in (0..index.len()).rev() {
                index[a] += 1;
                if index[a] < t.shape[a] {
                    break;
                }
                index[a] = 0;
            }
        }
        Ok(out)
    }

    /// A floating-point tensor's values as f32 (f64 rounds; f16 and bf16 are exact).
    pub fn tensor_f32(&mut self, t: &TensorRef, key: &str) -> Result<Vec<f32>, PretrainError> {
        let bytes = self.tensor_bytes(t, key)?;
        to_f32(t.dtype, &bytes).ok_or_else(|| PretrainError::CheckpointKey {
            path: self.path.clone(),
            key: key.to_string(),
            reason: format!(
                "a {} tensor where floating-point weights were expected",
                t.dtype.name()
            ),
        })
    }
}

/// Decode little-endian floating-point bytes to f32; `None` for integer types.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32)
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        _ => return None,
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise the fraction.
            let shift = f.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((f << shift) & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_decodes_exactly() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
    }
}
