//! Pre-training of encoders: MAE, SparkMAE (S3D), Models Genesis, VoCo and MultiTalent.
//!
//! A sibling of [`crate::train`]: it reuses its optimisers, schedule, checkpoint folders,
//! per-iteration randomness and progress reporting, and writes checkpoints whose encoder
//! (stem and stages) a detector can take over.
//!
//! # A run
//! 1. A [`source`] gives patches: a preprocessed dataset's images, a folder of NIfTI files,
//!    or the seeded synthetic pool of `data::world`; MultiTalent takes several labelled
//!    datasets instead.
//! 2. [`network_config`] builds the network the method needs around the encoder
//!    ([`network`]): a U-Net decoder (MAE, S3D, Models Genesis, MultiTalent), S3D's densify
//!    step, VoCo's projector, MultiTalent's per-dataset stems and heads.
//! 3. [`pretrain`] runs `iterations` steps: iteration `i` draws its batch on the CPU from
//!    `ChaCha8(seed, i)` ([`objective::prepare_batch`]: masks, corruptions, crops), computes
//!    the method's loss ([`objective::loss`]) and steps the optimiser (nnssl: SGD 0.01,
//!    Nesterov momentum 0.99, weight decay 3e-5, PolyLR 0.9, gradient norm clipped at 12).
//!    Every `validate_every` iterations the fixed validation patches are scored, `last` is
//!    written and `best` when the validation loss fell; every `figure_every` iterations a
//!    figure shows what the method sees and produces.
//!
//! # Deviations from nnssl, on purpose
//! - Models Genesis corrupts patches rescaled to [0, 1]: nnssl applies the transforms to
//!   z-scores, where the Bézier map and the U[0, 1) noise fills make no sense.
//! - Patches are sampled without nnssl's spatial augmentation (rotation, scaling, mirroring).
//! - VoCo's crops tile a patch of `patch` voxels (default 16 × 32 × 32 in 1 × 2 × 2 crops)
//!   instead of 64 × 256 × 256 in 1 × 4 × 4; both are options.

pub mod checkpoint;
pub mod config;
pub mod crops;
mod error;
pub mod genesis;
pub mod mask;
pub mod network;
pub mod objective;
pub mod pytorch;
pub mod runner;
pub mod source;
pub mod sparse;
pub mod transfer;

use std::sync::Arc;

pub use checkpoint::{PretrainState, Pretrained, load_pretrained, read_state};
pub use config::{Method, PretrainConfig};
pub use error::PretrainError;
pub use network::{HeadSpec, PretrainNetwork, PretrainNetworkConfig, StemSpec};
pub use objective::Sources;
pub use runner::{PretrainInputs, PretrainRun, pretrain};
pub use source::{CaseSource, DataPlan, PoolSource, PretrainSource};
pub use transfer::{StemPolicy, TransferOptions, TransferReport, TransferScope, transfer};

use crate::nn::{EncoderConfig, UNetDecoderConfig};

/// The network `config.method` trains around `encoder`, for these sources.
///
/// MultiTalent gets one stem per dataset (the encoder's own serves the first) and one head
/// per dataset, or per part of at most `multitalent.max_classes_per_head` classes.
pub fn network_config(
    encoder: &EncoderConfig,
    sources: &Sources,
    config: &PretrainConfig,
) -> Result<PretrainNetworkConfig, PretrainError> {
    let method = config.method;
    match (method, sources) {
        (Method::Multitalent, Sources::Labelled { datasets, .. }) => {
            if datasets.is_empty() {
                return Err(PretrainError::InvalidData(
                    "MultiTalent needs at least one labelled dataset; the list is empty".into(),
                ));
            }
            let encoder = encoder.with_in_channels(datasets[0].channels());
            if !config.multitalent.per_dataset_stems
                && let Some(d) = datasets
                    .iter()
                    .find(|d| d.channels() != datasets[0].channels())
            {
                return Err(PretrainError::InvalidData(format!(
                    "dataset '{}' has {} channel(s) but '{}' has {}: datasets that mix channel counts need per-dataset stems (multitalent.per_dataset_stems: true)",
                    d.name,
                    d.channels(),
                    datasets[0].name,
                    datasets[0].channels()
                )));
            }
            let stems = datasets
                .iter()
                .map(|d| StemSpec {
                    dataset: d.name.clone(),
                    channels: d.channels(),
                })
                .collect::<Vec<_>>();
            let mut names: Vec<&str> = stems.iter().map(|s| s.dataset.as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(PretrainError::InvalidData(format!(
                    "two MultiTalent datasets are both named '{}'; stems and heads are named by dataset",
                    w[0]
                )));
            }
            let mut heads = Vec::new();
            for (index, d) in datasets.iter().enumerate() {
                if d.class_names.is_empty() {
                    return Err(PretrainError::InvalidData(format!(
                        "dataset '{}' has no classes; MultiTalent needs labelled datasets",
                        d.name
                    )));
                }
                let classes: Vec<usize> = (0..d.class_names.len()).collect();
                let part_size = config
                    .multitalent
                    .max_classes_per_head
                    .unwrap_or(classes.len())
                    .max(1);
                let parts: Vec<&[usize]> = classes.chunks(part_size).collect();
                for (p, part) in parts.iter().enumerate() {
                    heads.push(HeadSpec {
                        name: if parts.len() == 1 {
                            d.name.clone()
                        } else {
                            format!("{}#{}", d.name, p + 1)
                        },
                        dataset: index,
                        classes: part.to_vec(),
                        class_names: part.iter().map(|&c| d.class_names[c].clone()).collect(),
                    });
                }
            }
            let stems = if config.multitalent.per_dataset_stems {
                stems
            } else {
                Vec::new()
            };
            Ok(PretrainNetworkConfig {
                decoder: Some(UNetDecoderConfig::for_encoder(&encoder, 1)),
                encoder,
                densify: false,
                projector_width: None,
                projector_batch_norm: false,
                stems,
                heads,
            })
        }
        (Method::Multitalent, Sources::Images(_)) => Err(PretrainError::InvalidData(
            "MultiTalent is supervised: give it a list of labelled datasets".into(),
        )),
        (_, sources) => {
            let channels = match sources {
                Sources::Images(s) => s.channels(),
                Sources::Labelled { datasets, .. } => {
                    datasets.first().map(|d| d.channels()).unwrap_or(1)
                }
            };
            let encoder = encoder.with_in_channels(channels);
            Ok(PretrainNetworkConfig {
                decoder: method
                    .has_decoder()
                    .then(|| UNetDecoderConfig::for_encoder(&encoder, channels)),
                densify: method == Method::Spark,
                projector_width: (method == Method::Voco).then_some(config.voco.projector_width),
                projector_batch_norm: config.voco.projector_norm == config::ProjectorNorm::Batch,
                encoder,
                stems: Vec::new(),
                heads: Vec::new(),
            })
        }
    }
}

/// Check that MultiTalent's datasets can share one trunk: with one stem each, any channel
/// counts work; the data plans must agree on spacing.
pub fn check_multitalent_datasets(datasets: &[Arc<CaseSource>]) -> Result<(), PretrainError> {
    if datasets.is_empty() {
        return Err(PretrainError::InvalidData(
            "MultiTalent needs at least one labelled dataset; the list is empty".into(),
        ));
    }
    let spacing = datasets[0].data_plan.spacing;
    for d in &datasets[1..] {
        if d.data_plan.spacing != spacing {
            return Err(PretrainError::InvalidData(format!(
                "dataset '{}' was preprocessed to spacing {:?} but '{}' to {:?}; MultiTalent trains one trunk at one spacing",
                d.name, d.data_plan.spacing, datasets[0].name, spacing
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
