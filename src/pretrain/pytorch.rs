//! PyTorch checkpoints: import the encoders that nnssl and MultiTalent publish (`.pth` files
//! of `torch.save`) and export detlab encoders under nnssl's key names (safetensors).
//!
//! # Import
//! 1. [`archive::TorchFile`] opens the zip archive and parses its pickle with an allow-list
//!    unpickler ([`pickle`]): nothing in the file is executed, and a file that names code
//!    (`os.system`, a trainer class) is refused.
//! 2. The state dict is `network_weights` (nnssl, nnU-Net, MultiTalent), else `state_dict`,
//!    else the file itself; SparK's `spark_weights` are checked against it. [`names`] drops
//!    the aliases (`….all_modules.N`, `decoder.encoder.…`, SparK's copies), verifying that
//!    every alias holds bit-identical values.
//! 3. The architecture comes from nnssl's `nnssl_adaptation_plan`, else from the nnU-Net
//!    plans in `init_args` (MultiTalent), else from the caller ([`PytorchOptions::encoder`]),
//!    else — only when the tensors are exactly ResEnc-L's — from the tensors ([`plan`]).
//!    Strides cannot be read from weights, so anything else is an error saying what to pass.
//! 4. Every detlab encoder parameter is taken from its PyTorch key (the map is in [`names`]);
//!    a missing, extra or differently shaped encoder tensor is an error naming the key.
//!    MultiTalent's per-dataset stems become the stems of the pre-training network, named by
//!    dataset id, so `transfer(…, #{stem: "select:<id>"})` picks one.
//!
//! The result is a [`Pretrained`] whose state records the file, trainer, plan, spacing and
//! normalisation; the method is the one the trainer's name suggests (`mae` when it suggests
//! none, which `data[0].source` then says). Decoders are not imported.
//!
//! # Export
//! [`save_safetensors`] writes the encoder (stem, stages, MultiTalent stems) with nnssl's key
//! names plus the `all_modules` aliases, so that PyTorch can
//! `network.encoder.load_state_dict(…, strict=True)` it; the detlab state rides along in the
//! safetensors metadata, so [`load_file`] reads the export back exactly.

pub mod archive;
pub mod names;
pub mod pickle;
pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::checkpoint::{PRETRAIN_FORMAT, PRETRAIN_FORMAT_VERSION, PretrainState, Pretrained};
use super::config::{Method, PretrainConfig};
use super::network::{PretrainNetworkConfig, StemSpec};
use super::source::DataPlan;
use super::transfer::{load_named_tensors, named_tensors};
use crate::nn::{EncoderConfig, ResEncConfig};
use archive::TorchFile;
use names::{Layout, all_modules_alias, canonicalize, multistem_ids, pytorch_key};
use pickle::{TensorRef, Value};
use plan::CheckpointPlan;

/// Options of [`load_file`].
#[derive(Clone, Debug, Default)]
pub struct PytorchOptions {
    /// The encoder architecture, for files without a plan (nnssl's SparkMAETrainer saves
    /// none) or to override the plan; its input channels are taken from the weights.
    pub encoder: Option<EncoderConfig>,
}

/// Key names of an exported encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportNames {
    /// dynamic-network-architectures' names as nnssl saves them, with the `all_modules` aliases.
    #[default]
    Nnssl,
    /// detlab's parameter paths.
    Detlab,
}

impl ExportNames {
    /// Parse `"nnssl"` or `"detlab"`.
    pub fn parse(text: &str) -> Result<Self, PretrainError> {
        match text {
            "nnssl" => Ok(ExportNames::Nnssl),
            "detlab" => Ok(ExportNames::Detlab),
            other => Err(PretrainError::config(
                "names",
                format!("\"{other}\" is not a naming; use \"nnssl\" or \"detlab\""),
            )),
        }
    }
}

/// Whether `path` names a file [`load_file`] reads (`.pth`, `.pt`, `.safetensors`).
pub fn is_weights_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pth" | "pt" | "safetensors")
    )
}

/// Load a PyTorch checkpoint (`.pth`/`.pt`: nnssl, MultiTalent, nnU-Net) or a safetensors
/// export onto `device`, with everything needed to transfer its encoder.
pub fn load_file<B: Backend>(
    path: &Path,
    options: &PytorchOptions,
    device: &B::Device,
) -> Result<Pretrained<B>, PretrainError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => load_safetensors(path, options, device),
        _ => load_pytorch(path, options, device),
    }
}

fn key_error(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> PretrainError {
    PretrainError::CheckpointKey {
        path: path.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// Load a `torch.save` checkpoint (see the module docs).
pub fn load_pytorch<B: Backend>(
    path: &Path,
    options: &PytorchOptions,
    device: &B::Device,
) -> Result<Pretrained<B>, PretrainError> {
    let mut file = TorchFile::open(path)?;
    let root = file.root.clone();
    let tensors_of = |dict: &Value,
                      name: &str,
                      strip: Option<&str>|
     -> Result<Vec<(String, TensorRef)>, PretrainError> {
        let Value::Dict(items) = dict else {
            return Err(key_error(
                path,
                name,
                format!("a {} where a state dict was expected", dict.type_name()),
            ));
        };
        items
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().ok_or_else(|| {
                    key_error(path, name, "a state-dict key that is not a string")
                })?;
                match v {
                    Value::Tensor(t) => {
                        let k = strip.and_then(|p| k.strip_prefix(p)).unwrap_or(k);
                        Ok((k.to_string(), t.clone()))
                    }
                    other => Err(key_error(
                        path,
                        format!("{name}.{k}"),
                        format!("a {} where a tensor was expected", other.type_name()),
                    )),
                }
            })
            .collect()
    };
    let (name, weights) = ["network_weights", "state_dict", "model", "spark_weights"]
        .iter()
        .find_map(|n| root.get(n).map(|w| (n.to_string(), w)))
        .or_else(|| matches!(&root, Value::Dict(i) if i.iter().all(|(_, v)| matches!(v, Value::Tensor(_)))).then(|| ("(file)".to_string(), &root)))
        .ok_or_else(|| {
            key_error(path, "network_weights", format!(
                "no state dict found: the file has no `network_weights`, `state_dict` or `model`; its top-level keys: {:?}",
                root.keys()
            ))
        })?;
    let mut entries = tensors_of(
        weights,
        &name,
        (name == "spark_weights").then_some("architecture."),
    )?;
    // SparK's wrapper repeats the network; its copies must agree with `network_weights`.
    if name != "spark_weights"
        && let Some(spark) = root.get("spark_weights")
    {
        entries.extend(tensors_of(spark, "spark_weights", Some("architecture."))?);
    }
    let mut same = |a: &TensorRef, b: &TensorRef, key: &str| -> Result<bool, PretrainError> {
        if a == b {
            return Ok(true);
        }
        if a.dtype != b.dtype || a.shape != b.shape {
            return Ok(false);
        }
        Ok(file.tensor_bytes(a, key)? == file.tensor_bytes(b, key)?)
    };
    let canonical = canonicalize(entries, path, &mut same)?;
    let shapes: Vec<(String, Vec<usize>)> = canonical
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();

    // The metadata, as JSON (small tensors in plans become lists).
    let mut json_of = |v: &Value| -> serde_json::Value {
        v.to_json(&mut |t| {
            if t.shape.iter().product::<usize>() > 64 {
                return serde_json::Value::Null;
            }
            file.tensor_bytes(t, "plan")
                .ok()
                .and_then(|b| pickle_floats(t, &b))
                .map_or(serde_json::Value::Null, |v| serde_json::json!(v))
        })
    };
    let trainer = root
        .get("trainer_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let epoch = match root.get("current_epoch") {
        Some(Value::Int(e)) => Some(*e),
        _ => None,
    };
    let init_args = root
        .get("init_args")
        .map(&mut json_of)
        .unwrap_or(serde_json::Value::Null);
    let adaptation = root.get("nnssl_adaptation_plan").map(|v| match v {
        // Some tools store the plan as its JSON text.
        Value::Str(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        other => json_of(other),
    });
    let plan_error = |prefix: &'static str| {
        move |e: plan::PlanError| key_error(path, format!("{prefix}{}", e.key), e.reason)
    };
    let checkpoint_plan = match &adaptation {
        Some(a) => Some(
            plan::nnssl_plan(
                a,
                init_args.get("configuration_name").and_then(|c| c.as_str()),
            )
            .map_err(plan_error("nnssl_adaptation_plan."))?,
        ),
        None => plan::nnunet_plan(&init_args).map_err(plan_error(""))?,
    };
    let origin = if adaptation.is_some() {
        "nnssl checkpoint"
    } else if checkpoint_plan.is_some() {
        "nnU-Net checkpoint"
    } else {
        "PyTorch checkpoint"
    };
    let mut notes = vec![format!(
        "{origin} {}{}{}",
        path.display(),
        if trainer.is_empty() {
            String::new()
        } else {
            format!(", trainer {trainer}")
        },
        epoch.map_or(String::new(), |e| format!(", epoch {e}"))
    )];
    let encoder = resolve_architecture(
        path,
        options,
        checkpoint_plan.as_ref(),
        &shapes,
        &trainer,
        &mut notes,
    )?;
    let fetch = |i: usize, key: &str| file.tensor_f32(&canonical[i].1, key);
    let method = plan::method_from_trainer(&trainer);
    let imported = Imported {
        shapes: &shapes,
        encoder,
        plan: checkpoint_plan.unwrap_or_default(),
        method,
        names: ExportNames::Nnssl,
        notes,
        stem_order: Vec::new(),
    };
    imported.build(path, fetch, device)
}

/// Decode a small float tensor of a plan (nnssl turns numpy arrays into tensors) to f64s.
fn pickle_floats(t: &TensorRef, bytes: &[u8]) -> Option<Vec<f64>> {
    use pickle::DType;
    match t.dtype {
        DType::I64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
                .collect(),
        ),
        DType::F64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect(),
        ),
        d => archive::to_f32(d, bytes).map(|v| v.into_iter().map(f64::from).collect()),
    }
}

/// The encoder structure the tensors show (residual encoders only): widths, blocks and
/// kernels per stage, and the stem's input channels.
#[derive(Debug, PartialEq)]
struct TensorStructure {
    widths: Vec<usize>,
    blocks: Vec<usize>,
    kernels: Vec<[usize; 3]>,
    in_channels: usize,
}

fn tensor_structure(shapes: &[(String, Vec<usize>)]) -> Option<TensorStructure> {
    let mut stages: BTreeMap<usize, (usize, usize, [usize; 3])> = BTreeMap::new();
    let mut in_channels = None;
    for (k, s) in shapes {
        if k == "encoder.stem.convs.0.conv.weight" && s.len() == 5 {
            in_channels = Some(s[1]);
        }
        let Some(rest) = k.strip_prefix("encoder.stages.") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        if let [stage, "blocks", block, "conv1", "conv", "weight"] = parts[..]
            && s.len() == 5
        {
            let (stage, block) = (stage.parse().ok()?, block.parse::<usize>().ok()?);
            let e = stages.entry(stage).or_insert((0, s[0], [s[2], s[3], s[4]]));
            e.0 = e.0.max(block + 1);
        }
    }
    if stages.is_empty() || stages.keys().copied().ne(0..stages.len()) {
        return None;
    }
    Some(TensorStructure {
        widths: stages.values().map(|v| v.1).collect(),
        blocks: stages.values().map(|v| v.0).collect(),
        kernels: stages.values().map(|v| v.2).collect(),
        in_channels: in_channels?,
    })
}

fn resolve_architecture(
    path: &Path,
    options: &PytorchOptions,
    checkpoint_plan: Option<&CheckpointPlan>,
    shapes: &[(String, Vec<usize>)],
    trainer: &str,
    notes: &mut Vec<String>,
) -> Result<EncoderConfig, PretrainError> {
    if let Some(e) = &options.encoder {
        notes.push("architecture given by the caller".into());
        return Ok(e.clone());
    }
    if let Some(e) = checkpoint_plan.and_then(|p| p.encoder.clone()) {
        notes.push(
            checkpoint_plan
                .map(|p| p.description.clone())
                .unwrap_or_default(),
        );
        return Ok(e);
    }
    let found = tensor_structure(shapes);
    let resenc_l = ResEncConfig::resenc_l(1);
    if let Some(f) = &found
        && f.widths == resenc_l.widths
        && f.blocks == resenc_l.blocks_per_stage
        && f.kernels == resenc_l.kernel_sizes
    {
        notes.push("no plan in the file; the tensors are exactly ResEnc-L's (nnssl's fixed preset, strides [1, 2, 2, 2, 2, 2])".into());
        return Ok(EncoderConfig::Resenc(resenc_l));
    }
    let trap = if trainer.to_ascii_lowercase().contains("spark") {
        " (nnssl's SparkMAETrainer saves none)"
    } else {
        ""
    };
    let seen = match found {
        Some(f) => format!(
            "; the tensors show a residual encoder with widths {:?}, blocks {:?}, kernels {:?}, {} input channel(s), but strides cannot be read from weights",
            f.widths, f.blocks, f.kernels, f.in_channels
        ),
        None => String::new(),
    };
    Err(key_error(
        path,
        "nnssl_adaptation_plan",
        format!(
            "the file has no architecture plan{trap} and no nnU-Net plans in `init_args`{seen}. Pass the architecture: in scripts load_pretrained(path, #{{architecture: backbone(\"resenc_l\")}}) or any backbone(...) whose widths, blocks, strides and kernels match; in Rust PytorchOptions {{ encoder: Some(...) }}"
        ),
    ))
}

/// Everything known about an imported file before its tensors are read.
struct Imported<'a> {
    /// Canonical keys and shapes, in file order.
    shapes: &'a [(String, Vec<usize>)],
    encoder: EncoderConfig,
    plan: CheckpointPlan,
    method: Option<Method>,
    names: ExportNames,
    notes: Vec<String>,
    /// The order of MultiTalent's stems, when known (exports); else the file's order.
    stem_order: Vec<String>,
}

impl Imported<'_> {
    /// Build the pre-training network, fill its encoder and stems from the file, and describe
    /// it; `fetch(i, key)` reads canonical tensor `i` as f32.
    fn build<B: Backend>(
        self,
        path: &Path,
        mut fetch: impl FnMut(usize, &str) -> Result<Vec<f32>, PretrainError>,
        device: &B::Device,
    ) -> Result<Pretrained<B>, PretrainError> {
        let mut ids = multistem_ids(self.shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice())));
        // An export lists its tensors by name; its state keeps the stems' order.
        ids.sort_by_key(|(id, _)| {
            self.stem_order
                .iter()
                .position(|o| o == id)
                .unwrap_or(usize::MAX)
        });
        let in_channels = match ids.first() {
            Some((_, c)) => *c,
            None => self
                .shapes
                .iter()
                .find(|(k, _)| {
                    k == "encoder.stem.convs.0.conv.weight"
                        || k == "encoder.stages.0.0.convs.0.conv.weight"
                })
                .and_then(|(_, s)| s.get(1).copied())
                .unwrap_or(self.encoder.in_channels()),
        };
        let encoder = self.encoder.with_in_channels(in_channels);
        let stems: Vec<StemSpec> = ids
            .iter()
            .map(|(id, c)| StemSpec {
                dataset: id.clone(),
                channels: *c,
            })
            .collect();
        let layout = Layout {
            residual: matches!(encoder, EncoderConfig::Resenc(_)),
            strides: encoder.strides().to_vec(),
            stem_ids: ids.iter().map(|(id, _)| id.clone()).collect(),
        };
        let network_config = PretrainNetworkConfig {
            encoder,
            decoder: None,
            densify: false,
            projector_width: None,
            projector_batch_norm: false,
            stems,
            heads: Vec::new(),
        };
        let network = network_config.init::<B>(device)?;
        let index: HashMap<&str, usize> = self
            .shapes
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.as_str(), i))
            .collect();
        let mut used = HashSet::new();
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (own, data) in named_tensors(&network) {
            let key = match self.names {
                ExportNames::Nnssl => pytorch_key(&own, &layout),
                ExportNames::Detlab => Some(own.clone()),
            }
            .ok_or_else(|| key_error(path, &own, "no PyTorch name for this detlab parameter"))?;
            let Some(&i) = index.get(key.as_str()) else {
                missing.push(key);
                continue;
            };
            let shape = &self.shapes[i].1;
            if shape.as_slice() != data.shape.as_slice() {
                return Err(key_error(
                    path,
                    &key,
                    format!(
                        "shape {shape:?} in the file but {:?} in the architecture ({}); the architecture does not match the weights",
                        data.shape.as_slice(),
                        self.notes.last().cloned().unwrap_or_default()
                    ),
                ));
            }
            used.insert(i);
            values.insert(own, TensorData::new(fetch(i, &key)?, shape.clone()));
        }
        if let Some(first) = missing.first() {
            return Err(key_error(
                path,
                first,
                format!(
                    "missing: the architecture ({}) needs {} encoder tensor(s) the file does not have, this one first",
                    self.notes.last().cloned().unwrap_or_default(),
                    missing.len()
                ),
            ));
        }
        let extra: Vec<&str> = self
            .shapes
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| {
                !used.contains(i) && (k.starts_with("encoder.") || k.starts_with("stems."))
            })
            .map(|(_, (k, _))| k.as_str())
            .collect();
        if let Some(first) = extra.first() {
            return Err(key_error(
                path,
                *first,
                format!(
                    "unexpected: {} encoder tensor(s) of the file have no place in the architecture ({}), this one first; the architecture does not match the weights",
                    extra.len(),
                    self.notes.last().cloned().unwrap_or_default()
                ),
            ));
        }
        let network = load_named_tensors(network, &values);
        let state = self.state(network_config);
        Ok(Pretrained {
            path: path.to_path_buf(),
            state,
            network,
        })
    }

    fn state(self, network: PretrainNetworkConfig) -> PretrainState {
        let mut notes = self.notes;
        let method = self.method.unwrap_or_else(|| {
            notes.push("the trainer suggests no detlab method: recorded as mae".into());
            Method::Mae
        });
        let mut config = PretrainConfig::for_method(method);
        if let Some(p) = self.plan.patch {
            config.patch = p;
        }
        let source = notes
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let plan = |channels: usize, source: String| DataPlan {
            source,
            spacing: self.plan.spacing.unwrap_or([0.0; 3]),
            normalization: self
                .plan
                .normalization
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            channels,
            preprocessing: None,
        };
        let data = if network.stems.is_empty() {
            vec![plan(network.encoder.in_channels(), source)]
        } else {
            network
                .stems
                .iter()
                .map(|s| plan(s.channels, format!("dataset {} of {source}", s.dataset)))
                .collect()
        };
        PretrainState {
            format: PRETRAIN_FORMAT.into(),
            format_version: PRETRAIN_FORMAT_VERSION,
            detlab_version: env!("CARGO_PKG_VERSION").into(),
            method,
            iteration: 0,
            has_optimizer: false,
            config,
            network,
            data,
            history: Vec::new(),
            validation: Vec::new(),
            best: None,
        }
    }
}

/// Metadata key holding the detlab state of an export.
const STATE_KEY: &str = "detlab.state";
/// Metadata key holding the naming of an export.
const NAMES_KEY: &str = "detlab.names";

/// The layout of `p`'s encoder under PyTorch names.
fn layout_of(state: &PretrainState) -> Layout {
    Layout {
        residual: matches!(state.network.encoder, EncoderConfig::Resenc(_)),
        strides: state.network.encoder.strides().to_vec(),
        stem_ids: state
            .network
            .stems
            .iter()
            .map(|s| s.dataset.clone())
            .collect(),
    }
}

/// Write `p`'s encoder (stem, stages and MultiTalent stems) to a safetensors file with
/// `names`; returns the number of tensors written. The detlab state goes into the metadata.
pub fn save_safetensors<B: Backend>(
    p: &Pretrained<B>,
    path: &Path,
    names: ExportNames,
) -> Result<usize, PretrainError> {
    let layout = layout_of(&p.state);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (own, data) in named_tensors(&p.network) {
        if !(own.starts_with("encoder.") || own.starts_with("stems.")) {
            continue;
        }
        let values: Vec<f32> = data
            .to_vec()
            .map_err(|e| key_error(path, &own, format!("cannot read the weights: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = data.shape.to_vec();
        match names {
            ExportNames::Detlab => tensors.push((own, shape, bytes)),
            ExportNames::Nnssl => {
                let key = pytorch_key(&own, &layout)
                    .ok_or_else(|| key_error(path, &own, "no nnssl name for this parameter"))?;
                if let Some(alias) = all_modules_alias(&key) {
                    tensors.push((alias, shape.clone(), bytes.clone()));
                }
                tensors.push((key, shape, bytes));
            }
        }
    }
    let mut state = p.state.clone();
    state.history.clear();
    let state_json = serde_json::to_string(&state)
        .map_err(|e| PretrainError::checkpoint(path, format!("cannot describe the state: {e}")))?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            NAMES_KEY.to_string(),
            serde_json::to_value(names)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        (STATE_KEY.to_string(), state_json),
    ]);
    let views = tensors
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| key_error(path, k, format!("cannot encode: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| PretrainError::checkpoint(path, format!("cannot encode safetensors: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            PretrainError::checkpoint(path, format!("cannot create the folder: {e}"))
        })?;
    }
    crate::util::atomic_write(path, &bytes)
        .map_err(|e| PretrainError::checkpoint(path, format!("cannot write: {e}")))?;
    Ok(tensors.len())
}

/// Load a safetensors file written by [`save_safetensors`] (or any safetensors file with
/// nnssl's encoder names, given the architecture).
pub fn load_safetensors<B: Backend>(
    path: &Path,
    options: &PytorchOptions,
    device: &B::Device,
) -> Result<Pretrained<B>, PretrainError> {
    let bytes = std::fs::read(path)
        .map_err(|e| PretrainError::checkpoint(path, format!("cannot read: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        PretrainError::checkpoint(path, format!("not a safetensors file, or truncated: {e}"))
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        PretrainError::checkpoint(path, format!("not a safetensors file, or truncated: {e}"))
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    let names = match meta.get(NAMES_KEY).map(String::as_str) {
        Some("detlab") => ExportNames::Detlab,
        _ => ExportNames::Nnssl,
    };
    let state: Option<PretrainState> = match meta.get(STATE_KEY) {
        Some(s) => Some(
            serde_json::from_str(s)
                .map_err(|e| key_error(path, STATE_KEY, format!("invalid: {e}")))?,
        ),
        None => None,
    };
    let mut entries = Vec::new();
    for (key, view) in file.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            continue;
        }
        entries.push((key, (view.shape().to_vec(), view.data().to_vec())));
    }
    // safetensors orders tensors by offset: restore a stable order by name.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical = canonicalize(entries, path, |a, b, _| Ok(a == b))?;
    let shapes: Vec<(String, Vec<usize>)> = canonical
        .iter()
        .map(|(k, (s, _))| (k.clone(), s.clone()))
        .collect();
    let mut notes = vec![format!("safetensors export {}", path.display())];
    let encoder = match (&options.encoder, &state) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) => s.network.encoder.clone(),
        (None, None) => resolve_architecture(path, options, None, &shapes, "", &mut notes)?,
    };
    if let Some(s) = &state
        && let Some(d) = s.data.first()
    {
        notes.push(d.source.clone());
    }
    let imported = Imported {
        shapes: &shapes,
        encoder,
        plan: CheckpointPlan {
            spacing: state
                .as_ref()
                .and_then(|s| s.data.first())
                .map(|d| d.spacing),
            normalization: state
                .as_ref()
                .and_then(|s| s.data.first())
                .map(|d| d.normalization.clone()),
            patch: state.as_ref().map(|s| s.config.patch),
            ..CheckpointPlan::default()
        },
        method: state.as_ref().map(|s| s.method),
        names,
        notes,
        stem_order: state
            .as_ref()
            .map(|s| {
                s.network
                    .stems
                    .iter()
                    .map(|st| st.dataset.clone())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let fetch = |i: usize, key: &str| {
        let bytes = &canonical[i].1.1;
        archive::to_f32(pickle::DType::F32, bytes).ok_or_else(|| key_error(path, key, "not f32"))
    };
    let mut p = imported.build(path, fetch, device)?;
    if let Some(mut s) = state {
        // Keep the exporter's description; the network is what was exported (encoder, stems).
        s.network = p.state.network.clone();
        p.state = s;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_from_tensors_recognises_resenc_l_only_exactly() {
        let shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "encoder.stem.convs.0.conv.weight".into(),
                vec![4, 2, 3, 3, 3],
            ),
            (
                "encoder.stages.0.blocks.0.conv1.conv.weight".into(),
                vec![4, 4, 3, 3, 3],
            ),
            (
                "encoder.stages.1.blocks.0.conv1.conv.weight".into(),
                vec![8, 4, 1, 3, 3],
            ),
            (
                "encoder.stages.1.blocks.1.conv1.conv.weight".into(),
                vec![8, 8, 1, 3, 3],
            ),
        ];
        let s = tensor_structure(&shapes).unwrap();
        assert_eq!(
            s,
            TensorStructure {
                widths: vec![4, 8],
                blocks: vec![1, 2],
                kernels: vec![[3, 3, 3], [1, 3, 3]],
                in_channels: 2
            }
        );
        let mut notes = Vec::new();
        let e = resolve_architecture(
            Path::new("s.pth"),
            &PytorchOptions::default(),
            None,
            &shapes,
            "SparkMAETrainer",
            &mut notes,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s.pth")
                && e.contains("SparkMAETrainer saves none")
                && e.contains("architecture:")
                && e.contains("[4, 8]"),
            "{e}"
        );
    }

    #[test]
    fn tensors_exactly_resenc_l_s_give_resenc_l_without_a_plan() {
        let c = ResEncConfig::resenc_l(1);
        let mut shapes = vec![(
            "encoder.stem.convs.0.conv.weight".to_string(),
            vec![32, 1, 3, 3, 3],
        )];
        let mut prev = 32;
        for (s, (&w, &n)) in c.widths.iter().zip(&c.blocks_per_stage).enumerate() {
            for b in 0..n {
                let cin = if b == 0 { prev } else { w };
                shapes.push((
                    format!("encoder.stages.{s}.blocks.{b}.conv1.conv.weight"),
                    vec![w, cin, 3, 3, 3],
                ));
            }
            prev = w;
        }
        let mut notes = Vec::new();
        let e = resolve_architecture(
            Path::new("r.pth"),
            &PytorchOptions::default(),
            None,
            &shapes,
            "SparkMAETrainer",
            &mut notes,
        )
        .unwrap();
        assert_eq!(e, EncoderConfig::Resenc(c));
        assert!(notes[0].contains("exactly ResEnc-L"), "{notes:?}");
        shapes.pop();
        assert!(
            resolve_architecture(
                Path::new("r.pth"),
                &PytorchOptions::default(),
                None,
                &shapes,
                "",
                &mut notes
            )
            .is_err()
        );
    }

    #[test]
    fn export_names_parse() {
        assert_eq!(ExportNames::parse("nnssl").unwrap(), ExportNames::Nnssl);
        assert!(
            ExportNames::parse("torch")
                .unwrap_err()
                .to_string()
                .contains("\"torch\"")
        );
    }
}
