//! detlab: a scripting lab for 3D medical object detection with large-scale pre-training.
//!
//! Data flows one way through the modules:
//! `volume → data → nn → train → infer → metrics → plot`, with `script` on top.
//! The domain modules know nothing of Rhai; `script` registers thin wrappers over them.
//!
//! Axis convention (used everywhere): volumes are `[C, D, H, W]`, where W is the NIfTI
//! i-axis (fastest in the file); boxes are `[d0, h0, w0, d1, h1, w1]` in voxels.

pub mod data;
pub mod infer;
pub mod metrics;
pub mod nn;
pub mod plot;
pub mod pretrain;
pub mod script;
pub mod train;
pub mod util;
pub mod volume;
