//! The interface every detector implements (Retina U-Net now, Deformable DETR later), used by
//! the training loop and by inference.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::NnError;
use super::encoder::{Encoder, EncoderPart};
use crate::volume::boxes::Box3;

/// A training batch of patches with their targets.
#[derive(Clone, Debug)]
pub struct DetectionBatch<B: Backend> {
    /// Image patches `[N, C, D, H, W]`.
    pub images: Tensor<B, 5>,
    /// Ground-truth boxes per image, `[d0, h0, w0, d1, h1, w1]` in patch voxels.
    pub boxes: Vec<Vec<Box3>>,
    /// Class (0-based) of every box.
    pub classes: Vec<Vec<usize>>,
    /// Semantic segmentation target `[N, D, H, W]`: 0 = background, k + 1 = class k (a
    /// foreground/background head only looks at `> 0`). `None` skips the segmentation loss.
    pub segmentation: Option<Tensor<B, 4, Int>>,
}

impl<B: Backend> DetectionBatch<B> {
    /// Check the batch's internal consistency against a detector with `num_classes` classes.
    pub fn validate(&self, num_classes: usize) -> Result<(), NnError> {
        let [n, _, d, h, w] = self.images.dims();
        if self.boxes.len() != n || self.classes.len() != n {
            return Err(NnError::InvalidInput(format!(
                "batch of {n} images has box lists for {} and class lists for {} images",
                self.boxes.len(),
                self.classes.len()
            )));
        }
        for (i, (b, c)) in self.boxes.iter().zip(&self.classes).enumerate() {
            if b.len() != c.len() {
                return Err(NnError::InvalidInput(format!(
                    "image {i}: {} boxes but {} classes",
                    b.len(),
                    c.len()
                )));
            }
            if let Some(bad) = c.iter().find(|&&k| k >= num_classes) {
                return Err(NnError::InvalidInput(format!(
                    "image {i}: class {bad} but the detector has {num_classes} classes"
                )));
            }
            for bx in b {
                crate::volume::boxes::validate(bx)
                    .map_err(|e| NnError::InvalidInput(format!("image {i}: {e}")))?;
                if (0..3).any(|a| bx[a + 3] - bx[a] <= 0.0) {
                    return Err(NnError::InvalidInput(format!(
                        "image {i}: box {bx:?} has zero extent"
                    )));
                }
            }
        }
        if let Some(seg) = &self.segmentation
            && seg.dims() != [n, d, h, w]
        {
            return Err(NnError::InvalidInput(format!(
                "segmentation target has shape {:?} but the images need {:?}",
                seg.dims(),
                [n, d, h, w]
            )));
        }
        Ok(())
    }
}

/// A loss value with its named parts.
#[derive(Clone, Debug)]
pub struct DetectionLoss<B: Backend> {
    /// The differentiable total (sum of the weighted components), shape `[1]`.
    pub total: Tensor<B, 1>,
    /// Weighted components (`"cls"`, `"reg"`, `"seg_ce"`, `"seg_dice"`, …), detached.
    pub components: Vec<(String, Tensor<B, 1>)>,
    /// Host-side counts for logging (`"num_positives"`, `"num_negatives"`, …).
    pub statistics: Vec<(String, f64)>,
}

impl<B: Backend> DetectionLoss<B> {
    /// The total as a number (waits for the device).
    pub fn total_value(&self) -> f64 {
        scalar(&self.total)
    }

    /// Components as numbers (waits for the device).
    pub fn component_values(&self) -> Vec<(String, f64)> {
        self.components
            .iter()
            .map(|(n, t)| (n.clone(), scalar(t)))
            .collect()
    }
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

/// Detections of one patch in patch voxel coordinates, sorted by descending score.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PatchDetections {
    /// Boxes `[d0, h0, w0, d1, h1, w1]`.
    pub boxes: Vec<Box3>,
    /// Scores in [0, 1].
    pub scores: Vec<f64>,
    /// Classes (0-based).
    pub classes: Vec<usize>,
}

/// What the training loop and inference need from any detector.
///
/// The training loop additionally bounds `M: AutodiffModule<B>` to step an optimiser; for
/// prediction pass the `valid()` model (no autodiff graph).
pub trait Detector<B: Backend>: Module<B> + Sized {
    /// Loss of one batch; `rng` drives the hard-negative sampling (seed it for reproducibility).
    fn loss(
        &self,
        batch: &DetectionBatch<B>,
        rng: &mut dyn RngCore,
    ) -> Result<DetectionLoss<B>, NnError>;

    /// Detections of every patch of `images` `[N, C, D, H, W]`.
    fn predict(&self, images: Tensor<B, 5>) -> Result<Vec<PatchDetections>, NnError>;

    /// A human-readable table of the layers and parameter counts.
    fn summary(&self) -> String;

    /// The encoder (for weight transfer and freezing).
    fn encoder(&self) -> &Encoder<B>;

    /// Mutable access to the encoder.
    fn encoder_mut(&mut self) -> &mut Encoder<B>;

    /// Replace the encoder by `f(encoder)` (e.g. to freeze it or load pretrained weights).
    fn map_encoder(self, f: impl FnOnce(Encoder<B>) -> Encoder<B>) -> Self;

    /// Number of foreground classes.
    fn num_classes(&self) -> usize;

    /// Input channels the detector expects.
    fn in_channels(&self) -> usize {
        self.encoder().in_channels
    }

    /// Patch sizes must be multiples of this per axis.
    fn patch_divisor(&self) -> [usize; 3] {
        self.encoder().total_stride()
    }

    /// Freeze (`trainable = false`) or unfreeze a part of the encoder.
    fn set_encoder_trainable(self, part: EncoderPart, trainable: bool) -> Self {
        self.map_encoder(|e| e.set_trainable(part, trainable))
    }
}
