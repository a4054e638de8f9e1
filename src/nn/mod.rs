//! Neural networks on burn: building blocks, encoders (`retunet`, `resenc_l`), the Retina
//! U-Net detector (U-FPN, heads, anchors, box coder, ATSS, sampling, losses), the
//! [`Detector`] trait every detector implements, weights files and device selection.
//!
//! Models are generic over `B: Backend`; the script layer uses [`ScriptBackend`].
//! Boxes are `[d0, h0, w0, d1, h1, w1]` in voxels of the input patch throughout.

pub mod backend;
pub mod blocks;
pub mod checkpoint;
pub mod conv;
pub(crate) mod custom_op;
pub mod def_detr;
pub mod detector;
pub mod encoder;
mod error;
pub mod inspect;
pub mod losses;
pub mod model;
pub mod planning;
pub mod retina_unet;
pub mod unet_decoder;

#[cfg(test)]
pub(crate) mod testing;

pub use backend::{DispatchDevice, InferenceBackend, ScriptBackend, device, device_name};
pub use checkpoint::{load_weights, save_weights};
pub use def_detr::{DefDetr, DefDetrConfig};
pub use detector::{DetectionBatch, DetectionLoss, Detector, PatchDetections};
pub use encoder::{Encoder, EncoderConfig, EncoderPart, ResEncConfig, RetUNetEncoderConfig};
pub use error::NnError;
pub use model::{DetectorConfig, MODEL_FORMAT, ModelSpec, PostProcessing};
pub use retina_unet::{RetinaUNet, RetinaUNetConfig};
pub use unet_decoder::{UNetDecoder, UNetDecoderConfig};
