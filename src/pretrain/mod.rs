//! Pre-training of encoders: MAE, SparkMAE (S3D), Models Genesis, VoCo and MultiTalent.
//!
//! A sibling of [`crate::train`]: it reuses its optimisers, schedules, checkpoint folders and
//! progress reporting, and writes checkpoints that [`crate::nn`]'s transfer reads.

pub mod crops;
pub mod genesis;
