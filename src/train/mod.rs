//! Training: patch sampling, augmentation, optimisers, learning-rate schedules, the training
//! loop and checkpoints — generic over the detector (`nn::Detector`) and the backend.
//!
//! # A run
//! [`train`] (preprocessed cases) or [`train_on_cases`] (in-memory cases) runs
//! `epochs × iters_per_epoch` iterations. Iteration `i`: draw a batch with the
//! [`PatchSampler`](sampler::PatchSampler) (foreground-oversampled), [`augment`](augment::augment)
//! every patch, compute the detector's loss, stop with [`TrainError::NonFiniteLoss`] if it is
//! NaN/Inf, backpropagate and step the [`TrainOptimizer`](optim::TrainOptimizer) with the
//! schedule's learning rate. After each epoch the model (its `valid()` copy, no autodiff)
//! predicts a fixed set of validation patches, scored with `metrics::evaluate`; `<out>/last`
//! is rewritten and `<out>/best` when the selection metric improved.
//!
//! # Phases ([`schedule`])
//! 1. frozen encoder (`freeze_encoder_iters`): the encoder's parameters (or `frozen_part` of
//!    them) are marked non-trainable, get no gradient and are not touched by the optimiser
//!    (no momentum, no weight decay); the learning rate warms up, then holds;
//! 2. whole network, linear warm-up over `warmup_iters` from `warmup_start_lr`;
//! 3. PolyLR(`poly_exponent`) to the end. With `freeze_encoder_iters = 0` this is nnDetection's
//!    schedule; the paper's fine-tuning sets it to 5 % of the iterations.
//!
//! # Randomness and resuming ([`rng`])
//! Every random draw of iteration `i` comes from `ChaCha8(seed, i, stream)` with separate
//! streams for sampling, augmentation and the loss's hard-negative mining; the validation
//! patches from the validation stream. Nothing else is random (weights are initialised by the
//! caller), so a run is deterministic on the CPU, and resuming needs only the iteration
//! number: `last` holds the weights, the optimiser state, the iteration and the history, and
//! `resume: true` continues bit for bit as if never stopped.
//!
//! # Interruption
//! Ctrl-C (`util::interrupt`) is polled before every iteration; the run writes `last` and
//! returns [`TrainError::Interrupted`] naming the iteration.
//!
//! # Checkpoints ([`checkpoint`])
//! `<out>/last/` and `<out>/best/` each hold `weights.mpk`, `state.json` (config, model
//! config, iteration, history) and, in `last`, `optimizer.mpk`; folders are replaced atomically.
//!
//! # Stochastic weight averaging ([`swa`])
//! `swa_epochs` adds nnDetection's SWA phase; `state.json` records whether `weights.mpk` holds
//! averaged weights, and a `last` written during the phase also holds the running average
//! (`average.mpk`), so a resumed run averages exactly as an uninterrupted one.

pub mod augment;
pub mod batch;
pub mod checkpoint;
pub mod config;
mod error;
pub mod optim;
pub mod records;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod swa;
mod trainer;

#[cfg(test)]
pub(crate) mod testing;

pub use augment::AugmentConfig;
pub use checkpoint::{CheckpointState, load_checkpoint_weights, read_checkpoint_state};
pub use config::{RestartConfig, TrainConfig, TrainRecipe};
pub use error::TrainError;
pub use optim::{OptimizerConfig, OptimizerKind, TrainOptimizer};
pub use records::{CheckpointInfo, EpochRecord, IterationRecord, RestartRecord, TrainRun};
pub use sampler::{CaseData, Patch, PatchSampler, SampleSource};
pub use schedule::{LrSchedule, Phase};
pub(crate) use trainer::progress_bar;
pub use trainer::{has_checkpoint, train, train_on_cases, validate, validation_patches};
