//! A deterministic "oracle" detector for the inference tests (compiled for tests only): it
//! finds bright connected components in every patch, so tiling and merging can be tested
//! without training a network.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rand::RngCore;

use crate::nn::detector::{DetectionBatch, DetectionLoss};
use crate::nn::encoder::{Encoder, RetUNetEncoderConfig};
use crate::nn::{Detector, NnError, PatchDetections};
use crate::volume::boxes::Box3;

/// Score of a component that lies inside the patch.
pub const COMPLETE_SCORE: f64 = 0.9;
/// Score of a component cut by the patch border (a real detector is unsure about those).
pub const TRUNCATED_SCORE: f64 = 0.3;

/// Detects 6-connected components of channel 0 above `threshold`; boxes are the components'
/// boxes in nnDetection's convention `(min − 1, max + 1)`, the one detlab trains on. Patch sizes must be multiples of `divisor`.
#[derive(Module, Debug)]
pub struct BrightBlobOracle<B: Backend> {
    /// A tiny encoder, only there because the trait hands one out.
    pub encoder: Encoder<B>,
    /// Intensity threshold.
    pub threshold: f64,
    /// Patch divisor on every axis.
    pub divisor: usize,
}

impl<B: Backend> BrightBlobOracle<B> {
    /// An oracle for one-channel images.
    pub fn new(threshold: f64, divisor: usize, device: &B::Device) -> Self {
        BrightBlobOracle {
            encoder: RetUNetEncoderConfig::tiny(1)
                .init(device)
                .expect("the tiny encoder builds"),
            threshold,
            divisor,
        }
    }
}

/// Boxes and truncation flags of the bright components of one `[D, H, W]` patch.
pub fn components(values: &[f32], size: [usize; 3], threshold: f64) -> Vec<(Box3, bool)> {
    let [_, h, w] = size;
    let index = |z: usize, y: usize, x: usize| (z * h + y) * w + x;
    let mut seen = vec![false; values.len()];
    let mut out = Vec::new();
    for start in 0..values.len() {
        if seen[start] || (values[start] as f64) <= threshold {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        while let Some(i) = stack.pop() {
            let p = [i / (h * w), i / w % h, i % w];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a] + 1);
            }
            for a in 0..3 {
                for delta in [-1i64, 1] {
                    let mut q = p.map(|v| v as i64);
                    q[a] += delta;
                    if q[a] < 0 || q[a] >= size[a] as i64 {
                        continue;
                    }
                    let j = index(q[0] as usize, q[1] as usize, q[2] as usize);
                    if !seen[j] && (values[j] as f64) > threshold {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let truncated = (0..3).any(|a| lo[a] == 0 || hi[a] == size[a]);
        out.push((
            [
                lo[0] as f64 - 1.0,
                lo[1] as f64 - 1.0,
                lo[2] as f64 - 1.0,
                hi[0] as f64,
                hi[1] as f64,
                hi[2] as f64,
            ],
            truncated,
        ));
    }
    out
}

impl<B: Backend> Detector<B> for BrightBlobOracle<B> {
    fn loss(
        &self,
        _batch: &DetectionBatch<B>,
        _rng: &mut dyn RngCore,
    ) -> Result<DetectionLoss<B>, NnError> {
        Err(NnError::InvalidInput(
            "the oracle detector cannot be trained".into(),
        ))
    }

    fn predict(&self, images: Tensor<B, 5>) -> Result<Vec<PatchDetections>, NnError> {
        let [n, _, d, h, w] = images.dims();
        if [d, h, w].iter().any(|s| s % self.divisor != 0) {
            return Err(NnError::InvalidInput(format!(
                "patch {:?} is not a multiple of {}",
                [d, h, w],
                self.divisor
            )));
        }
        let channel0 = images.narrow(1, 0, 1);
        let values = channel0
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| NnError::InvalidInput(format!("{e:?}")))?;
        let per = d * h * w;
        Ok((0..n)
            .map(|i| {
                let mut found =
                    components(&values[i * per..(i + 1) * per], [d, h, w], self.threshold);
                found.sort_by_key(|f| f.1);
                PatchDetections {
                    boxes: found.iter().map(|f| f.0).collect(),
                    scores: found
                        .iter()
                        .map(|f| if f.1 { TRUNCATED_SCORE } else { COMPLETE_SCORE })
                        .collect(),
                    classes: vec![0; found.len()],
                }
            })
            .collect())
    }

    fn summary(&self) -> String {
        format!("bright-blob oracle (threshold {})", self.threshold)
    }

    fn encoder(&self) -> &Encoder<B> {
        &self.encoder
    }

    fn encoder_mut(&mut self) -> &mut Encoder<B> {
        &mut self.encoder
    }

    fn map_encoder(mut self, f: impl FnOnce(Encoder<B>) -> Encoder<B>) -> Self {
        self.encoder = f(self.encoder);
        self
    }

    fn num_classes(&self) -> usize {
        1
    }

    fn patch_divisor(&self) -> [usize; 3] {
        [self.divisor; 3]
    }
}
