//! Turning sampled patches into network inputs.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::TrainError;
use super::sampler::Patch;
use crate::nn::DetectionBatch;

/// The images of `patches` as one `[N, C, D, H, W]` tensor (all patches must share a shape).
pub fn images_tensor<B: Backend>(
    patches: &[Patch],
    device: &B::Device,
) -> Result<Tensor<B, 5>, TrainError> {
    let first = patches
        .first()
        .ok_or_else(|| TrainError::InvalidData("an empty batch".into()))?;
    let (c, d, h, w) = first.image.dim();
    let mut values = Vec::with_capacity(patches.len() * c * d * h * w);
    for p in patches {
        if p.image.dim() != (c, d, h, w) {
            return Err(TrainError::InvalidData(format!(
                "patch of case '{}' has shape {:?} but the batch has {:?}",
                p.case_id,
                p.image.dim(),
                (c, d, h, w)
            )));
        }
        values.extend(p.image.iter().copied());
    }
    Ok(Tensor::from_data(
        TensorData::new(values, [patches.len(), c, d, h, w]),
        device,
    ))
}

/// A detection training batch: images, boxes, classes and (when every patch has an instance
/// mask) the segmentation target `[N, D, H, W]` (0 background, class + 1).
pub fn patches_to_batch<B: Backend>(
    patches: &[Patch],
    device: &B::Device,
) -> Result<DetectionBatch<B>, TrainError> {
    let images = images_tensor::<B>(patches, device)?;
    let [n, _, d, h, w] = images.dims();
    let targets: Option<Vec<_>> = patches.iter().map(Patch::segmentation_target).collect();
    let segmentation = targets.map(|targets| {
        let values: Vec<i64> = targets.iter().flat_map(|t| t.iter().copied()).collect();
        Tensor::<B, 4, Int>::from_data(TensorData::new(values, [n, d, h, w]), device)
    });
    Ok(DetectionBatch {
        images,
        boxes: patches.iter().map(|p| p.boxes.clone()).collect(),
        classes: patches.iter().map(|p| p.classes.clone()).collect(),
        segmentation,
    })
}
