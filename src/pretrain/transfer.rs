//! Weight transfer from a pre-training checkpoint into a detector: what is transferred
//! (`scope`), how the stem is initialised when the channel counts differ (`stem`), and a
//! report of every tensor.
//!
//! Transfer matches parameters **by path and shape** (`encoder.stem.convs.0.conv.weight`,
//! `encoder.stages.2.blocks.1.conv2.norm.bias`, …): the pre-training network and every
//! detector keep their encoder under `encoder.`. It first builds the complete new weights and
//! checks them; only then does it replace the detector's, so a failed transfer leaves the
//! detector unchanged.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::checkpoint::Pretrained;

/// What is transferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferScope {
    /// The stem and the stages (decoder, FPN and heads keep their fresh initialisation).
    #[default]
    Encoder,
    /// Every tensor whose path and shape match (a detector whose decoder was pre-trained).
    All,
}

/// How the stem is initialised (only matters when the channel counts differ, or to select
/// a MultiTalent stem).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StemPolicy {
    /// Keep the detector's fresh stem.
    Random,
    /// Tile the kernel over the new input channels.
    Replicate,
    /// Tile the kernel and divide by the ratio of channel counts (nnssl's fine-tuning; the
    /// response to an input whose channels are equal copies is unchanged).
    #[default]
    ReplicateScaled,
    /// The pre-trained kernel on the first input channels, zeros on the others.
    CopyFirst,
    /// Average the kernel over its input channels (N → 1).
    Mean,
    /// Take the stem of one MultiTalent dataset, by name, then apply `replicate_scaled` if
    /// its channels differ.
    Select(String),
}

impl StemPolicy {
    /// Parse `"random"`, `"replicate"`, `"replicate_scaled"`, `"copy_first"`, `"mean"` or
    /// `"select:<dataset>"`.
    pub fn parse(text: &str) -> Result<Self, PretrainError> {
        Ok(match text {
            "random" => StemPolicy::Random,
            "replicate" => StemPolicy::Replicate,
            "replicate_scaled" => StemPolicy::ReplicateScaled,
            "copy_first" => StemPolicy::CopyFirst,
            "mean" => StemPolicy::Mean,
            other => match other.strip_prefix("select:") {
                Some(name) if !name.is_empty() => StemPolicy::Select(name.to_string()),
                _ => {
                    return Err(PretrainError::config(
                        "stem",
                        format!(
                            "\"{other}\" is not a stem policy; use \"random\", \"replicate\", \"replicate_scaled\", \"copy_first\", \"mean\" or \"select:<dataset>\""
                        ),
                    ));
                }
            },
        })
    }

    /// The policy's name as scripts write it.
    pub fn name(&self) -> String {
        match self {
            StemPolicy::Random => "random".into(),
            StemPolicy::Replicate => "replicate".into(),
            StemPolicy::ReplicateScaled => "replicate_scaled".into(),
            StemPolicy::CopyFirst => "copy_first".into(),
            StemPolicy::Mean => "mean".into(),
            StemPolicy::Select(d) => format!("select:{d}"),
        }
    }
}

/// Options of [`transfer`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferOptions {
    /// What is transferred.
    pub scope: TransferScope,
    /// The stem policy.
    pub stem: StemPolicy,
}

/// A tensor skipped because its shape differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeMismatch {
    /// Its path.
    pub path: String,
    /// Shape in the checkpoint.
    pub checkpoint: Vec<usize>,
    /// Shape in the detector.
    pub detector: Vec<usize>,
}

/// What a transfer did, tensor by tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReport {
    /// Paths loaded from the checkpoint.
    pub loaded: Vec<String>,
    /// Checkpoint tensors in scope with no tensor of that path in the detector.
    pub skipped_by_name: Vec<String>,
    /// Tensors of equal path but different shape (left at their initialisation).
    pub skipped_by_shape: Vec<ShapeMismatch>,
    /// Detector tensors in scope that the checkpoint does not have (left at their
    /// initialisation).
    pub missing: Vec<String>,
    /// The stem policy asked for.
    pub stem_policy: String,
    /// What happened to the stem, in words.
    pub stem: String,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Transfer report")?;
        writeln!(f, "  loaded            {:>5} tensors", self.loaded.len())?;
        writeln!(f, "  skipped by name   {:>5}", self.skipped_by_name.len())?;
        writeln!(f, "  skipped by shape  {:>5}", self.skipped_by_shape.len())?;
        writeln!(f, "  missing           {:>5}", self.missing.len())?;
        writeln!(
            f,
            "  stem policy       {} ({})",
            self.stem_policy, self.stem
        )?;
        for m in &self.skipped_by_shape {
            writeln!(
                f,
                "    shape {}: checkpoint {:?}, detector {:?}",
                m.path, m.checkpoint, m.detector
            )?;
        }
        for p in self.skipped_by_name.iter().take(10) {
            writeln!(f, "    name {p}")?;
        }
        if self.skipped_by_name.len() > 10 {
            writeln!(f, "    … and {} more", self.skipped_by_name.len() - 10)?;
        }
        for p in self.missing.iter().take(10) {
            writeln!(f, "    missing {p}")?;
        }
        Ok(())
    }
}

/// Every float parameter of a module as `path → tensor data`.
pub fn named_tensors<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, TensorData> {
    struct Collect {
        stack: Vec<String>,
        out: BTreeMap<String, TensorData>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.insert(
                self.stack.join("."),
                param.val().into_data().convert::<f32>(),
            );
        }
    }
    let mut c = Collect {
        stack: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Replace the parameters of `module` found in `values` (same path; shapes already checked).
pub fn load_named_tensors<B: Backend, M: Module<B>>(
    module: M,
    values: &BTreeMap<String, TensorData>,
) -> M {
    struct Load<'a> {
        stack: Vec<String>,
        values: &'a BTreeMap<String, TensorData>,
    }
    impl<B: Backend> ModuleMapper<B> for Load<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            match self.values.get(&self.stack.join(".")) {
                Some(data) => param.map(|t| {
                    let device = t.device();
                    let require_grad = t.is_require_grad();
                    let new = Tensor::<B, D>::from_data(data.clone(), &device);
                    if require_grad {
                        new.require_grad()
                    } else {
                        new
                    }
                }),
                None => param,
            }
        }
    }
    module.map(&mut Load {
        stack: Vec::new(),
        values,
    })
}

/// Adapt a stem kernel `[O, I_checkpoint, kd, kh, kw]` to `channels` input channels.
pub fn adapt_stem_kernel(
    kernel: &TensorData,
    channels: usize,
    policy: &StemPolicy,
) -> Result<TensorData, PretrainError> {
    let shape = kernel.shape.clone();
    let [o, i, kd, kh, kw] = [shape[0], shape[1], shape[2], shape[3], shape[4]];
    let values: Vec<f32> = kernel
        .clone()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| PretrainError::InvalidData(format!("stem kernel: {e:?}")))?;
    let k = kd * kh * kw;
    let at = |out: usize, input: usize, v: usize| values[(out * i + input) * k + v];
    let mut result = vec![0.0f32; o * channels * k];
    let mut set =
        |out: usize, input: usize, v: usize, x: f32| result[(out * channels + input) * k + v] = x;
    match policy {
        StemPolicy::Replicate | StemPolicy::ReplicateScaled | StemPolicy::Select(_) => {
            let scale = if matches!(policy, StemPolicy::Replicate) {
                1.0
            } else {
                i as f32 / channels as f32
            };
            for out in 0..o {
                for input in 0..channels {
                    for v in 0..k {
                        set(out, input, v, at(out, input % i, v) * scale);
                    }
                }
            }
        }
        StemPolicy::CopyFirst => {
            for out in 0..o {
                for input in 0..channels.min(i) {
                    for v in 0..k {
                        set(out, input, v, at(out, input, v));
                    }
                }
            }
        }
        StemPolicy::Mean => {
            if channels != 1 {
                return Err(PretrainError::config(
                    "stem",
                    format!(
                        "\"mean\" averages a {i}-channel stem into 1 channel, but the detector has {channels}"
                    ),
                ));
            }
            for out in 0..o {
                for v in 0..k {
                    let mean = (0..i).map(|input| at(out, input, v)).sum::<f32>() / i as f32;
                    set(out, 0, v, mean);
                }
            }
        }
        StemPolicy::Random => unreachable!("the random policy keeps the fresh stem"),
    }
    Ok(TensorData::new(result, [o, channels, kd, kh, kw]))
}

/// The stem conv kernel's path.
const STEM_KERNEL: &str = "encoder.stem.convs.0.conv.weight";

/// Transfer `pretrained` into `detector` (any module with the encoder under `encoder.`).
/// Returns the updated detector and the report; on error the detector is dropped unchanged
/// by the caller's copy (nothing is half-loaded).
pub fn transfer<B: Backend, M: Module<B>>(
    detector: M,
    pretrained: &Pretrained<B>,
    options: &TransferOptions,
) -> Result<(M, TransferReport), PretrainError> {
    let mut source = named_tensors(&pretrained.network);
    let stems = pretrained.state.stems();
    // Select a MultiTalent stem: its tensors replace the encoder's own under `encoder.stem`.
    let mut stem_note = String::new();
    if let StemPolicy::Select(name) = &options.stem {
        let index = stems
            .iter()
            .position(|s| &s.dataset == name)
            .ok_or_else(|| {
                let names: Vec<&str> = stems.iter().map(|s| s.dataset.as_str()).collect();
                PretrainError::config(
                    "stem",
                    format!("the checkpoint has no stem \"{name}\"; its stems: {names:?}"),
                )
            })?;
        if index > 0 {
            let prefix = format!("stems.{}.", index - 1);
            let selected: Vec<(String, TensorData)> = source
                .iter()
                .filter_map(|(p, t)| {
                    p.strip_prefix(&prefix)
                        .map(|rest| (format!("encoder.stem.{rest}"), t.clone()))
                })
                .collect();
            for (p, t) in selected {
                source.insert(p, t);
            }
        }
        stem_note = format!("stem of dataset '{name}' ({} ch)", stems[index].channels);
    }
    let in_scope = |path: &str| match options.scope {
        TransferScope::Encoder => path.starts_with("encoder."),
        TransferScope::All => true,
    };
    let target = named_tensors(&detector);
    let mut report = TransferReport {
        stem_policy: options.stem.name(),
        ..TransferReport::default()
    };
    let mut values = BTreeMap::new();
    for (path, data) in source.iter().filter(|(p, _)| in_scope(p)) {
        let is_stem = path.starts_with("encoder.stem.");
        if is_stem && options.stem == StemPolicy::Random {
            report.skipped_by_name.push(path.clone());
            continue;
        }
        let Some(own) = target.get(path) else {
            report.skipped_by_name.push(path.clone());
            continue;
        };
        if own.shape == data.shape {
            values.insert(path.clone(), data.clone());
            report.loaded.push(path.clone());
            continue;
        }
        let same_but_channels = path == STEM_KERNEL
            && own.shape.len() == 5
            && (0..5).all(|a| a == 1 || own.shape[a] == data.shape[a]);
        if same_but_channels {
            let adapted = adapt_stem_kernel(data, own.shape[1], &options.stem)?;
            stem_note = format!(
                "{}{} → {} input channels by {}",
                if stem_note.is_empty() {
                    String::new()
                } else {
                    format!("{stem_note}; ")
                },
                data.shape[1],
                own.shape[1],
                match &options.stem {
                    StemPolicy::Select(_) => "replicate_scaled".to_string(),
                    p => p.name(),
                }
            );
            values.insert(path.clone(), adapted);
            report.loaded.push(path.clone());
            continue;
        }
        if options.scope == TransferScope::Encoder {
            return Err(PretrainError::InvalidData(format!(
                "cannot transfer {path}: the checkpoint's shape is {:?} but the detector's is {:?}; the encoders differ (widths, depths or kernel sizes): build the detector with ckpt.backbone()",
                data.shape.to_vec(),
                own.shape.to_vec()
            )));
        }
        report
            .skipped_by_shape
            .push(super::transfer::ShapeMismatch {
                path: path.clone(),
                checkpoint: data.shape.to_vec(),
                detector: own.shape.to_vec(),
            });
    }
    for path in target.keys().filter(|p| in_scope(p)) {
        let stem_random = options.stem == StemPolicy::Random && path.starts_with("encoder.stem.");
        if !values.contains_key(path) && !stem_random {
            report.missing.push(path.clone());
        }
    }
    if report.loaded.is_empty() {
        return Err(PretrainError::InvalidData(
            "the checkpoint and the detector share no tensor (path and shape): nothing was transferred".into(),
        ));
    }
    if options.scope == TransferScope::Encoder && !report.missing.is_empty() {
        return Err(PretrainError::InvalidData(format!(
            "the checkpoint lacks {} encoder tensor(s) of the detector, e.g. {}: the encoders differ; build the detector with ckpt.backbone()",
            report.missing.len(),
            report.missing[0]
        )));
    }
    if options.stem == StemPolicy::Random {
        stem_note = "fresh stem kept".into();
    } else if stem_note.is_empty() {
        stem_note = "channels match; loaded as is".into();
    }
    report.stem = stem_note;
    Ok((load_named_tensors(detector, &values), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(values: Vec<f32>, shape: [usize; 5]) -> TensorData {
        TensorData::new(values, shape)
    }

    fn values(t: &TensorData) -> Vec<f32> {
        t.clone().to_vec().unwrap()
    }

    #[test]
    fn every_stem_policy_gives_the_expected_kernels() {
        // Two output channels, one input channel, 1³ kernels.
        let one = kernel(vec![2.0, -4.0], [2, 1, 1, 1, 1]);
        let r = adapt_stem_kernel(&one, 4, &StemPolicy::Replicate).unwrap();
        assert_eq!(r.shape.to_vec(), vec![2, 4, 1, 1, 1]);
        assert_eq!(values(&r), vec![2.0, 2.0, 2.0, 2.0, -4.0, -4.0, -4.0, -4.0]);
        let rs = adapt_stem_kernel(&one, 4, &StemPolicy::ReplicateScaled).unwrap();
        assert_eq!(
            values(&rs),
            vec![0.5, 0.5, 0.5, 0.5, -1.0, -1.0, -1.0, -1.0]
        );
        let cf = adapt_stem_kernel(&one, 4, &StemPolicy::CopyFirst).unwrap();
        assert_eq!(values(&cf), vec![2.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0]);
        // Four input channels to one.
        let four = kernel(
            vec![1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0],
            [2, 4, 1, 1, 1],
        );
        let m = adapt_stem_kernel(&four, 1, &StemPolicy::Mean).unwrap();
        assert_eq!(values(&m), vec![3.0, 2.0]);
        let cf = adapt_stem_kernel(&four, 1, &StemPolicy::CopyFirst).unwrap();
        assert_eq!(values(&cf), vec![1.0, 0.0]);
        // Replicating 4 → 1 keeps the first channel, scaled by 4.
        let rs = adapt_stem_kernel(&four, 1, &StemPolicy::ReplicateScaled).unwrap();
        assert_eq!(values(&rs), vec![4.0, 0.0]);
        assert!(adapt_stem_kernel(&four, 2, &StemPolicy::Mean).is_err());
    }

    #[test]
    fn stem_policies_parse_and_unknown_names_are_errors() {
        assert_eq!(
            StemPolicy::parse("select:vessels").unwrap(),
            StemPolicy::Select("vessels".into())
        );
        assert_eq!(StemPolicy::parse("mean").unwrap(), StemPolicy::Mean);
        let e = StemPolicy::parse("tile").unwrap_err().to_string();
        assert!(
            e.contains("\"tile\"") && e.contains("replicate_scaled"),
            "{e}"
        );
        assert!(StemPolicy::parse("select:").is_err());
    }
}
