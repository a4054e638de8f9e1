//! One package per domain module, like rhai's `src/packages`: each file registers the
//! primitives of one domain through a [`Registrar`](super::registrar::Registrar).

pub mod core;
pub mod data;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod plot;
pub mod postprocess;
pub mod pretrain;
pub mod volume;

use super::help::HelpIndex;
use rhai::Engine;
use std::sync::{Arc, OnceLock};

/// Register every package into `engine`, recording help into `help`.
///
/// `help_cell` receives the finished index after registration, for the `help` primitive.
pub fn register_all(
    engine: &mut Engine,
    help: &mut HelpIndex,
    help_cell: Arc<OnceLock<Arc<HelpIndex>>>,
) {
    core::register(engine, help, help_cell);
    volume::register(engine, help);
    data::register(engine, help);
    metrics::register(engine, help);
    model::register(engine, help);
    postprocess::register(engine, help);
    plan::register(engine, help);
    plot::register(engine, help);
    pretrain::register(engine, help);
    pretrain::register_transfer(engine, help);
    pretrain::register_pytorch(engine, help);
}
