//! The preprocessed cache on disk: the manifest, per-case metadata and arrays, and the
//! checks that decide whether a cache is current (layout: the parent module's documentation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use ndarray::{Array3, Array4, ArrayBase, Data, Dimension};
use ndarray_npy::{WritableElement, WriteNpyExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CACHE_FORMAT_VERSION, PreprocessConfig, PreprocessPlan, RestoreInfo};
use crate::data::dataset::{CaseFiles, Dataset, Subset};
use crate::data::error::DataError;
use crate::volume::boxes::Box3;

/// Per-case metadata stored as `<case>.json` in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseMeta {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Image shape `[C, D, H, W]` in the preprocessed grid.
    pub shape: [usize; 4],
    /// Spacing `[sd, sh, sw]` of the preprocessed grid.
    pub spacing: [f64; 3],
    /// Whether `<case>_instances.npy` exists.
    pub labelled: bool,
    /// Boxes `(min − 1, max + 1)` (nnDetection's convention) of the instances in the preprocessed grid.
    pub boxes: Vec<Box3>,
    /// Class of each box.
    pub classes: Vec<usize>,
    /// Instance id of each box (the value in the mask).
    pub instance_ids: Vec<u32>,
    /// Instances of the raw mask that vanished when resampling (too small for the new grid).
    pub lost_instances: Vec<u32>,
    /// How to map boxes back to the original image.
    pub restore: RestoreInfo,
}

/// A preprocessed case, ready for patch sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessedCase {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Normalised image `[C, D, H, W]`.
    pub image: Array4<f32>,
    /// Instance mask `[D, H, W]` (0 background); `None` for unlabelled test cases.
    pub instances: Option<Array3<u16>>,
    /// Boxes `(min − 1, max + 1)` (nnDetection's convention) in this grid, sorted by instance id.
    pub boxes: Vec<Box3>,
    /// Class of each box.
    pub classes: Vec<usize>,
    /// Instance id of each box.
    pub instance_ids: Vec<u32>,
    /// Spacing `[sd, sh, sw]` mm of this grid.
    pub spacing: [f64; 3],
    /// How to map boxes back to the original image.
    pub restore: RestoreInfo,
}

/// Size and modification time of a raw input file, to notice changed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFingerprint {
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub modified_ns: u128,
}

/// One case in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCase {
    /// Case id.
    pub id: String,
    /// Train or test.
    pub subset: Subset,
    /// Image shape `[C, D, H, W]` after preprocessing.
    pub shape: [usize; 4],
    /// Number of instances in the preprocessed grid.
    pub instances: usize,
    /// The raw files it was made from.
    pub sources: Vec<SourceFingerprint>,
}

/// `manifest.json` of a preprocessed cache (written last; its presence means complete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"detlab-preprocessed"`.
    pub format: String,
    /// [`CACHE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// detlab version of the writer (a different version rebuilds).
    pub detlab_version: String,
    /// [`PreprocessConfig::settings_hash`].
    pub settings_hash: String,
    /// The settings.
    pub config: PreprocessConfig,
    /// The resolved plan.
    pub plan: PreprocessPlan,
    /// The dataset root.
    pub dataset_root: PathBuf,
    /// The task name.
    pub task: String,
    /// Class names.
    pub labels: Vec<String>,
    /// The cases, training first, each sorted by id.
    pub cases: Vec<ManifestCase>,
}

/// A preprocessed dataset: its cache folder, manifest, and an in-memory case cache.
#[derive(Debug)]
pub struct PreprocessedDataset {
    /// The cache folder.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Number of cases (re)built by the call that returned this (0 when the cache was reused).
    pub built_cases: usize,
    memory: Mutex<HashMap<String, Arc<PreprocessedCase>>>,
    keep_in_memory: AtomicBool,
}

impl PreprocessedDataset {
    /// Open a complete cache folder (one with a valid manifest) without checking the raw data.
    pub fn open(dir: impl AsRef<Path>) -> Result<PreprocessedDataset, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        Ok(Self::from_manifest(dir, manifest, 0))
    }

    pub(super) fn from_manifest(dir: PathBuf, manifest: Manifest, built_cases: usize) -> Self {
        PreprocessedDataset {
            dir,
            manifest,
            built_cases,
            memory: Mutex::new(HashMap::new()),
            keep_in_memory: AtomicBool::new(true),
        }
    }

    /// Whether this call reused a complete cache without rebuilding anything.
    pub fn reused(&self) -> bool {
        self.built_cases == 0
    }

    /// The resolved plan (apply it to new images with [`PreprocessPlan::apply`]).
    pub fn plan(&self) -> &PreprocessPlan {
        &self.manifest.plan
    }

    /// Ids of all cases, training first.
    pub fn case_ids(&self) -> Vec<String> {
        self.manifest.cases.iter().map(|c| c.id.clone()).collect()
    }

    /// Ids of the cases of one subset.
    pub fn ids(&self, subset: Subset) -> Vec<String> {
        self.manifest
            .cases
            .iter()
            .filter(|c| c.subset == subset)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Keep loaded cases in memory (default on; the datasets detlab trains on are small).
    pub fn set_keep_in_memory(&self, keep: bool) {
        self.keep_in_memory.store(keep, Ordering::Relaxed);
        if !keep {
            self.clear_memory();
        }
    }

    /// Drop every case held in memory.
    pub fn clear_memory(&self) {
        if let Ok(mut m) = self.memory.lock() {
            m.clear();
        }
    }

    /// Read `<case>.json` of case `id`.
    pub fn case_meta(&self, id: &str) -> Result<CaseMeta, DataError> {
        self.check_known(id)?;
        let path = self.dir.join(format!("{id}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| DataError::cache(&path, format!("invalid case metadata: {e}")))
    }

    /// Load case `id` (from memory if already loaded): image, instance mask, boxes, restore info.
    pub fn load_case(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(c);
        }
        let case = self.read_case(id)?;
        if self.keep_in_memory.load(Ordering::Relaxed)
            && let Ok(mut m) = self.memory.lock()
        {
            m.insert(id.to_string(), case.clone());
        }
        Ok(case)
    }

    /// Load case `id` for one use (from memory if already loaded, otherwise from disk without
    /// keeping it): prediction reads each case once, so holding them would grow memory with
    /// the number of cases.
    pub fn load_case_once(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(c);
        }
        self.read_case(id)
    }

    fn read_case(&self, id: &str) -> Result<Arc<PreprocessedCase>, DataError> {
        let meta = self.case_meta(id)?;
        let image_path = self.dir.join(format!("{id}_image.npy"));
        let (shape, values) = read_npy_f32(&image_path)?;
        if shape != meta.shape.to_vec() {
            return Err(DataError::cache(
                &image_path,
                format!(
                    "shape {shape:?} differs from the case metadata {:?}",
                    meta.shape
                ),
            ));
        }
        let [c, d, h, w] = meta.shape;
        let image = Array4::from_shape_vec((c, d, h, w), values)
            .map_err(|e| DataError::cache(&image_path, e.to_string()))?;
        let instances = if meta.labelled {
            let path = self.dir.join(format!("{id}_instances.npy"));
            let (shape, values) = read_npy_u16(&path)?;
            if shape != vec![d, h, w] {
                return Err(DataError::cache(
                    &path,
                    format!(
                        "shape {shape:?} differs from the image's [D, H, W] {:?}",
                        [d, h, w]
                    ),
                ));
            }
            Some(
                Array3::from_shape_vec((d, h, w), values)
                    .map_err(|e| DataError::cache(&path, e.to_string()))?,
            )
        } else {
            None
        };
        let case = Arc::new(PreprocessedCase {
            id: meta.id,
            subset: meta.subset,
            image,
            instances,
            boxes: meta.boxes,
            classes: meta.classes,
            instance_ids: meta.instance_ids,
            spacing: meta.spacing,
            restore: meta.restore,
        });
        Ok(case)
    }

    /// Load several cases in parallel (keeps the order of `ids`).
    pub fn load_cases(&self, ids: &[String]) -> Result<Vec<Arc<PreprocessedCase>>, DataError> {
        ids.par_iter().map(|id| self.load_case(id)).collect()
    }

    fn check_known(&self, id: &str) -> Result<(), DataError> {
        if self.manifest.cases.iter().any(|c| c.id == id) {
            Ok(())
        } else {
            Err(DataError::UnknownCase {
                root: self.dir.clone(),
                id: id.to_string(),
            })
        }
    }
}

/// Whether a manifest describes exactly what `preprocess` would build now.
pub(super) fn cache_is_current(
    manifest: &Manifest,
    dir: &Path,
    hash: &str,
    dataset: &Dataset,
    cases: &[&CaseFiles],
    sources: &[Vec<SourceFingerprint>],
) -> bool {
    manifest.format_version == CACHE_FORMAT_VERSION
        && manifest.detlab_version == env!("CARGO_PKG_VERSION")
        && manifest.settings_hash == hash
        && manifest.labels == dataset.meta.labels
        && manifest.cases.len() == cases.len()
        && manifest
            .cases
            .iter()
            .zip(cases)
            .zip(sources)
            .all(|((m, c), s)| {
                m.id == c.id
                    && m.subset == c.subset
                    && &m.sources == s
                    && dir.join(format!("{}.json", m.id)).is_file()
                    && dir.join(format!("{}_image.npy", m.id)).is_file()
                    && (!c.is_labelled() || dir.join(format!("{}_instances.npy", m.id)).is_file())
            })
}

/// Remove case files of a previous build that the new case list does not have.
pub(super) fn remove_stale_case_files(dir: &Path, cases: &[&CaseFiles]) -> Result<(), DataError> {
    let keep: std::collections::HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix("_image.npy")
            .or_else(|| name.strip_suffix("_instances.npy"))
            .or_else(|| {
                name.strip_suffix(".json")
                    .filter(|_| name != "manifest.json")
            });
        if let Some(id) = id
            && !keep.contains(id)
        {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    Ok(())
}

pub(super) fn fingerprint(case: &CaseFiles) -> Result<Vec<SourceFingerprint>, DataError> {
    case.images
        .iter()
        .chain(&case.label)
        .chain(&case.instances_json)
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
            let modified_ns = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            Ok(SourceFingerprint {
                path: p.clone(),
                size: m.len(),
                modified_ns,
            })
        })
        .collect()
}

pub(super) fn read_manifest(dir: &Path) -> Result<Manifest, DataError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| DataError::cache(&path, format!("invalid manifest: {e}")))?;
    if manifest.format != "detlab-preprocessed" || manifest.format_version != CACHE_FORMAT_VERSION {
        return Err(DataError::cache(
            &path,
            format!(
                "format {} v{} is not detlab-preprocessed v{CACHE_FORMAT_VERSION}",
                manifest.format, manifest.format_version
            ),
        ));
    }
    Ok(manifest)
}

/// `array` as the bytes of a `.npy` file (C order, little-endian; `ndarray-npy`), for an
/// atomic write to `path` (named in the error).
pub(super) fn npy_bytes<A, S, D>(array: &ArrayBase<S, D>, path: &Path) -> Result<Vec<u8>, DataError>
where
    A: WritableElement,
    S: Data<Elem = A>,
    D: Dimension,
{
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|e| DataError::cache(path, e.to_string()))?;
    Ok(bytes)
}

/// Parse a `.npy` file written by [`npy_bytes`]: returns (shape, data bytes).
///
/// Not `ndarray-npy`'s reader: it allocates the size a header declares before reading, so a
/// damaged cache file could exhaust memory; this one reads the file, then checks the declared
/// size against the bytes that are there.
pub(super) fn read_npy(
    path: &Path,
    descr: &str,
    item: usize,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |m: &str| DataError::cache(path, m.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated .npy header"))?,
    )
    .map_err(|_| bad("the .npy header is not text"))?;
    if !header.contains(&format!("'descr': '{descr}'"))
        || !header.contains("'fortran_order': False")
    {
        return Err(DataError::cache(
            path,
            format!("expected a C-order {descr} array, header is {header:?}"),
        ));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in the .npy header"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("invalid shape in the .npy header"))?;
    let data = bytes[start + header_len..].to_vec();
    let expected = shape.iter().product::<usize>() * item;
    if data.len() != expected {
        return Err(DataError::cache(
            path,
            format!(
                "holds {} data bytes, the shape {shape:?} needs {expected} (truncated?)",
                data.len()
            ),
        ));
    }
    Ok((shape, data))
}

pub(super) fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let (shape, data) = read_npy(path, "<f4", 4)?;
    Ok((
        shape,
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

pub(super) fn read_npy_u16(path: &Path) -> Result<(Vec<usize>, Vec<u16>), DataError> {
    let (shape, data) = read_npy(path, "<u2", 2)?;
    Ok((
        shape,
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect(),
    ))
}
