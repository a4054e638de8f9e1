//! Training: patch sampling, augmentation, optimisers, learning-rate schedules, the training
//! loop and checkpoints.

pub mod augment;
pub mod config;
mod error;
pub mod optim;
pub mod rng;
pub mod schedule;

pub use error::TrainError;
pub mod sampler;
#[cfg(test)]
pub(crate) mod testing;
