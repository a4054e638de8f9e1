//! Sliding-window prediction of a whole volume with any [`Detector`].

use std::io::IsTerminal;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::ArrayView4;
use serde::{Deserialize, Serialize};

use super::InferError;
use super::config::InferenceConfig;
use super::merge::{WeightedDetections, merge_variants, postprocess_variant};
use super::tiling::{
    extract_tile, flip_box, position_weight, round_up_patch, shift_box, tile_grid,
};
use crate::nn::{Detector, PatchDetections};
use crate::util::interrupt;

/// What sliding-window prediction collected for one volume before merging: per TTA variant,
/// the detections of every tile in volume voxels with their tile position weights.
///
/// Merging ([`RawPrediction::merge`]) only reads this, so post-processing settings can be
/// tried (nnDetection's sweep) without running the detector again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawPrediction {
    /// Spatial shape `[D, H, W]` of the predicted volume.
    pub shape: [usize; 3],
    /// The tile size used (after rounding up to the detector's divisor).
    pub patch_size: [usize; 3],
    /// Number of tiles of the grid.
    pub num_tiles: usize,
    /// The mirrored axes `[d, h, w]` of every TTA variant.
    pub flips: Vec<[bool; 3]>,
    /// Per variant: the detections of all tiles, in volume voxels, with position weights.
    pub variants: Vec<WeightedDetections>,
}

impl RawPrediction {
    /// Merge tiles and variants into the final detections of the volume (see
    /// [`postprocess_variant`] and [`merge_variants`]); sorted by descending score.
    pub fn merge(&self, cfg: &InferenceConfig) -> Result<PatchDetections, InferError> {
        cfg.validate()?;
        let processed = self
            .variants
            .iter()
            .map(|v| postprocess_variant(v, self.shape, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        merge_variants(&processed, cfg)
    }

    /// Merge the raw predictions of several models of the same volume (e.g. the folds of a
    /// cross-validation): every (model, TTA variant) pair counts as one prediction, so WBC
    /// expects `models × variants` boxes per object (nnDetection's consolidated predictor).
    pub fn merge_ensemble(
        models: &[RawPrediction],
        cfg: &InferenceConfig,
    ) -> Result<PatchDetections, InferError> {
        cfg.validate()?;
        let Some(first) = models.first() else {
            return Err(InferError::InvalidInput(
                "an ensemble needs the predictions of at least one model".into(),
            ));
        };
        if let Some((i, other)) = models
            .iter()
            .enumerate()
            .find(|(_, m)| m.shape != first.shape)
        {
            return Err(InferError::InvalidInput(format!(
                "model {i} predicted a volume of shape {:?} but model 0 one of shape {:?}",
                other.shape, first.shape
            )));
        }
        let processed = models
            .iter()
            .flat_map(|m| {
                m.variants
                    .iter()
                    .map(|v| postprocess_variant(v, m.shape, cfg))
            })
            .collect::<Result<Vec<_>, _>>()?;
        merge_variants(&processed, cfg)
    }

    /// Keep only the `k` highest-scoring detections of every variant (what nnDetection stores
    /// for its post-processing sweep; merging stays exact while `k >= model_topk`).
    pub fn reduce(&mut self, k: usize) {
        for v in &mut self.variants {
            *v = v.top_k(k);
        }
    }
}

/// The tile size used for a detector: `cfg.patch_size` or `patch_size`, each side rounded up
/// to a multiple of the detector's `patch_divisor`.
pub fn effective_patch_size<B: Backend, M: Detector<B>>(
    model: &M,
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
) -> Result<[usize; 3], InferError> {
    let patch = cfg.patch_size.unwrap_or(patch_size);
    if patch.contains(&0) {
        return Err(InferError::config(
            "patch_size",
            format!("{patch:?} has a zero side"),
        ));
    }
    Ok(round_up_patch(patch, model.patch_divisor()))
}

/// Run the detector over every tile and TTA variant of `image` `[C, D, H, W]` (a preprocessed
/// volume) and collect the tile detections, without merging.
///
/// Tiles of `patch_size` (or `cfg.patch_size`) overlap by `cfg.overlap`; `cfg.tile_batch`
/// tiles go through the detector at once; Ctrl-C is checked between batches. Memory is
/// bounded by a batch of tiles: only boxes are kept from each tile.
pub fn collect_predictions<B: Backend, M: Detector<B>>(
    model: &M,
    image: ArrayView4<'_, f32>,
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<RawPrediction, InferError> {
    cfg.validate()?;
    let (channels, d, h, w) = image.dim();
    let shape = [d, h, w];
    if channels != model.in_channels() {
        return Err(InferError::InvalidInput(format!(
            "the image has {channels} channel(s) but the detector expects {}",
            model.in_channels()
        )));
    }
    let patch = effective_patch_size(model, patch_size, cfg)?;
    let tiles = tile_grid(shape, patch, cfg.overlap)?;
    let flips = cfg.variants()?;
    let mut variants = vec![WeightedDetections::default(); flips.len()];
    let bar = progress_bar(tiles.len() as u64, cfg.progress);
    let tile_values = channels * patch.iter().product::<usize>();
    let mut buffer: Vec<f32> = Vec::new();
    for (batch_index, batch) in tiles.chunks(cfg.tile_batch).enumerate() {
        interrupt::check()?;
        let first_tile = batch_index * cfg.tile_batch;
        buffer.clear();
        buffer.reserve(batch.len() * tile_values);
        for tile in batch {
            extract_tile(&image, tile, cfg.pad_value, &mut buffer);
        }
        let data = TensorData::new(
            std::mem::take(&mut buffer),
            [batch.len(), channels, patch[0], patch[1], patch[2]],
        );
        let images = Tensor::<B, 5>::from_data(data, device);
        for (flip, collected) in flips.iter().zip(variants.iter_mut()) {
            let mut input = images.clone();
            for (axis, &flipped) in flip.iter().enumerate() {
                if flipped {
                    input = input.flip([2 + axis as isize]);
                }
            }
            let predictions = model.predict(input).map_err(|source| InferError::Model {
                first_tile,
                end_tile: first_tile + batch.len(),
                source,
            })?;
            if predictions.len() != batch.len() {
                return Err(InferError::InvalidInput(format!(
                    "the detector returned {} detection lists for a batch of {} tiles",
                    predictions.len(),
                    batch.len()
                )));
            }
            for (tile, p) in batch.iter().zip(predictions) {
                for ((b, score), class) in p.boxes.iter().zip(p.scores).zip(p.classes) {
                    let unflipped = flip_box(b, *flip, tile.size);
                    let weight = position_weight(&unflipped, tile.size);
                    collected.push(shift_box(&unflipped, tile.origin), score, class, weight);
                }
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(RawPrediction {
        shape,
        patch_size: patch,
        num_tiles: tiles.len(),
        flips,
        variants,
    })
}

/// Predict a whole preprocessed volume `[C, D, H, W]` with sliding windows, TTA and merging;
/// boxes are in voxels of that volume, sorted by descending score.
pub fn predict_volume<B: Backend, M: Detector<B>>(
    model: &M,
    image: ArrayView4<'_, f32>,
    patch_size: [usize; 3],
    cfg: &InferenceConfig,
    device: &B::Device,
) -> Result<PatchDetections, InferError> {
    collect_predictions(model, image, patch_size, cfg, device)?.merge(cfg)
}

/// Progress over the cases of a prediction run, in the style of training's epoch lines: one
/// line per finished case on stderr, `case 3/12 case_0007: 4 boxes, 27 tiles, 3.2 s`, when
/// [`InferenceConfig::progress`] is on (the default). Cases are counted from 1, like epochs.
#[derive(Debug)]
pub struct CaseProgress {
    enabled: bool,
    total: usize,
    done: usize,
    started: std::time::Instant,
}

impl CaseProgress {
    /// Progress over `total` cases, printed only when `enabled`.
    pub fn new(enabled: bool, total: usize) -> Self {
        CaseProgress {
            enabled,
            total,
            done: 0,
            started: std::time::Instant::now(),
        }
    }

    /// Start timing the next case.
    pub fn start(&mut self) {
        self.started = std::time::Instant::now();
    }

    /// Count the case `id` as finished with `boxes` detections over `tiles` tiles, print its
    /// line (when enabled) and return it.
    pub fn finished(&mut self, id: &str, boxes: usize, tiles: usize) -> String {
        self.done += 1;
        let line = case_line(
            self.done,
            self.total,
            id,
            boxes,
            tiles,
            self.started.elapsed().as_secs_f64(),
        );
        if self.enabled {
            eprintln!("{line}");
        }
        line
    }
}

/// The progress line of the `number`-th (from 1) of `total` cases.
pub fn case_line(
    number: usize,
    total: usize,
    id: &str,
    boxes: usize,
    tiles: usize,
    seconds: f64,
) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    let box_text = if boxes == 1 {
        "1 box".to_string()
    } else {
        format!("{boxes} boxes")
    };
    format!(
        "case {number}/{total} {id}: {box_text}, {}, {seconds:.1} s",
        plural(tiles, "tile")
    )
}

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    let target = if enabled && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target).with_message("predicting");
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:30} {pos}/{len} tiles [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::testing::{BrightBlobOracle, COMPLETE_SCORE};
    use crate::infer::{Tta, tiling};
    use crate::nn::InferenceBackend;
    use crate::nn::retina_unet::RetinaUNetConfig;
    use crate::nn::testing::test_device;
    use crate::volume::boxes::{Box3, iou};
    use ndarray::{Array4, s};

    type B = InferenceBackend;

    const CUBE_A: Box3 = [5.0, 8.0, 30.0, 15.0, 16.0, 40.0];
    const CUBE_B: Box3 = [28.0, 26.0, 6.0, 36.0, 38.0, 14.0];

    /// A 48³ volume with two bright cubes on a noisy dark background.
    fn two_cubes() -> Array4<f32> {
        let mut image = Array4::from_shape_fn((1, 48, 48, 48), |(_, d, h, w)| {
            ((d * 7 + h * 3 + w) % 5) as f32 * 0.05
        });
        for b in [CUBE_A, CUBE_B] {
            let r = b.map(|v| v as usize);
            image
                .slice_mut(s![.., r[0]..r[3], r[1]..r[4], r[2]..r[5]])
                .fill(1.0);
        }
        image
    }

    fn best_iou(found: &PatchDetections, target: &Box3, among: usize) -> f64 {
        found
            .boxes
            .iter()
            .take(among)
            .map(|b| iou(b, target))
            .fold(0.0, f64::max)
    }

    #[test]
    fn case_progress_lines_count_from_one() {
        assert_eq!(
            case_line(3, 12, "case_0007", 4, 27, 3.24),
            "case 3/12 case_0007: 4 boxes, 27 tiles, 3.2 s"
        );
        assert_eq!(
            case_line(1, 1, "a", 1, 1, 0.0),
            "case 1/1 a: 1 box, 1 tile, 0.0 s"
        );
        let mut progress = CaseProgress::new(false, 2);
        progress.start();
        assert!(
            progress
                .finished("x", 0, 8)
                .starts_with("case 1/2 x: 0 boxes, 8 tiles, ")
        );
        assert!(
            progress
                .finished("y", 2, 8)
                .starts_with("case 2/2 y: 2 boxes")
        );
    }

    #[test]
    fn tiled_inference_finds_the_same_objects_as_one_pass() {
        let device = test_device();
        let oracle = BrightBlobOracle::<B>::new(0.5, 4, &device);
        let image = two_cubes();
        let cfg = InferenceConfig::default();
        let one_pass_raw =
            collect_predictions(&oracle, image.view(), [48, 48, 48], &cfg, &device).unwrap();
        assert_eq!(one_pass_raw.num_tiles, 1);
        let one_pass = one_pass_raw.merge(&cfg).unwrap();
        let tiled_raw =
            collect_predictions(&oracle, image.view(), [24, 24, 24], &cfg, &device).unwrap();
        assert_eq!(tiled_raw.num_tiles, 27, "starts 0, 12, 24 per axis");
        let tiled = tiled_raw.merge(&cfg).unwrap();
        for found in [&one_pass, &tiled] {
            assert!(found.scores.len() >= 2, "{found:?}");
            for cube in [CUBE_A, CUBE_B] {
                assert!(
                    best_iou(found, &cube, 2) > 0.7,
                    "{cube:?} not among the two best of {found:?}"
                );
            }
            assert!(
                found.scores[..2]
                    .iter()
                    .all(|s| (s - COMPLETE_SCORE).abs() < 1e-9),
                "{:?}",
                found.scores
            );
            // Border-cut pieces that survive are weak.
            assert!(
                found.scores[2..].iter().all(|s| *s < 0.5),
                "{:?}",
                found.scores
            );
            assert!(found.scores.windows(2).all(|w| w[0] >= w[1]));
        }
        for i in 0..2 {
            assert!(best_iou(&tiled, &one_pass.boxes[i], 2) > 0.7);
        }
        // An ensemble of two identical models merges to the same detections.
        let twice =
            RawPrediction::merge_ensemble(&[tiled_raw.clone(), tiled_raw.clone()], &cfg).unwrap();
        assert_eq!(twice.boxes.len(), tiled.boxes.len());
        for (a, b) in twice.boxes.iter().zip(&tiled.boxes) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9));
        }
        assert!(
            twice
                .scores
                .iter()
                .zip(&tiled.scores)
                .all(|(x, y)| (x - y).abs() < 1e-9)
        );
        let mut other = tiled_raw.clone();
        other.shape = [48, 48, 40];
        assert!(
            RawPrediction::merge_ensemble(&[tiled_raw.clone(), other], &cfg)
                .unwrap_err()
                .to_string()
                .contains("model 1")
        );
        assert!(RawPrediction::merge_ensemble(&[], &cfg).is_err());
        // NMS merging finds the same objects.
        let nms = tiled_raw
            .merge(&InferenceConfig {
                merge: crate::infer::Merge::Nms,
                ..cfg
            })
            .unwrap();
        for cube in [CUBE_A, CUBE_B] {
            assert!(best_iou(&nms, &cube, 2) > 0.7);
        }
    }

    #[test]
    fn flipped_variants_give_the_same_boxes_back() {
        let device = test_device();
        let oracle = BrightBlobOracle::<B>::new(0.5, 4, &device);
        let image = two_cubes();
        let raw = collect_predictions(
            &oracle,
            image.view(),
            [24, 24, 24],
            &InferenceConfig::default(),
            &device,
        )
        .unwrap();
        assert_eq!(raw.flips.len(), 8);
        let sorted = |v: &WeightedDetections| {
            let mut items: Vec<(Box3, u64, u64)> = (0..v.len())
                .map(|i| (v.boxes[i], v.scores[i].to_bits(), v.weights[i].to_bits()))
                .collect();
            items.sort_by(|a, b| a.partial_cmp(b).unwrap());
            items
        };
        let identity = sorted(&raw.variants[0]);
        assert!(!identity.is_empty());
        for v in &raw.variants[1..] {
            assert_eq!(sorted(v), identity);
        }
        // Merged over 8 identical variants: full clusters keep the boxes and scores.
        let merged = raw.merge(&InferenceConfig::default()).unwrap();
        let near = |a: &Box3, b: &Box3| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        for cube in [CUBE_A, CUBE_B] {
            // The oracle reports boxes in nnDetection's convention, as detlab trains.
            let cube = crate::volume::boxes::BoxConvention::NnDetection.from_half_open(&cube);
            assert!(
                merged.boxes[..2].iter().any(|b| near(b, &cube)),
                "{cube:?} in {:?}",
                merged.boxes
            );
        }
        assert!(
            merged.scores[..2]
                .iter()
                .all(|s| (s - COMPLETE_SCORE).abs() < 1e-12)
        );
    }

    #[test]
    fn a_volume_smaller_than_the_patch_is_padded_and_boxes_map_back() {
        let device = test_device();
        let oracle = BrightBlobOracle::<B>::new(0.5, 8, &device);
        let mut image = Array4::<f32>::zeros((1, 20, 12, 30));
        // The box of voxels 3..9, 2..6, 10..20 in nnDetection's convention.
        let cube = [2.0, 1.0, 9.0, 9.0, 6.0, 20.0];
        image.slice_mut(s![.., 3..9, 2..6, 10..20]).fill(2.0);
        let cfg = InferenceConfig {
            tta: Tta::Axes(vec![vec![], vec![1, 2]]),
            ..Default::default()
        };
        // 30 is rounded up to 32 (divisor 8); every axis gets one centred, padded tile.
        let raw = collect_predictions(&oracle, image.view(), [30, 30, 30], &cfg, &device).unwrap();
        assert_eq!(raw.patch_size, [32, 32, 32]);
        assert_eq!(raw.num_tiles, 1);
        let found = raw.merge(&cfg).unwrap();
        assert_eq!(found.boxes, vec![cube]);
        assert!((found.scores[0] - COMPLETE_SCORE).abs() < 1e-12);
        // A patch given in the config overrides the caller's.
        let cfg = InferenceConfig {
            patch_size: Some([8, 8, 8]),
            tta: Tta::All(false),
            ..Default::default()
        };
        let raw = collect_predictions(&oracle, image.view(), [30, 30, 30], &cfg, &device).unwrap();
        assert_eq!(raw.patch_size, [8, 8, 8]);
        assert_eq!(
            raw.num_tiles,
            tiling::tile_grid([20, 12, 30], [8, 8, 8], 0.5)
                .unwrap()
                .len()
        );
        let found = raw.merge(&cfg).unwrap();
        assert!(
            found
                .boxes
                .iter()
                .all(|b| crate::volume::boxes::box_inside(b, [20, 12, 30]))
        );
    }

    #[test]
    fn a_tiny_retina_unet_predicts_a_whole_volume() {
        let device = test_device();
        let mut net = RetinaUNetConfig::tiny(1, 2);
        net.inference.detections_per_image = 20;
        let model = net.init::<B>(&device).unwrap();
        let image = Array4::from_shape_fn((1, 24, 32, 16), |(_, d, h, w)| {
            ((d * 13 + h * 7 + w * 3) % 11) as f32 / 11.0
        });
        let cfg = InferenceConfig {
            tta: Tta::Axes(vec![vec![], vec![0]]),
            max_detections: 30,
            ..Default::default()
        };
        let raw = collect_predictions(&model, image.view(), [16, 16, 16], &cfg, &device).unwrap();
        assert_eq!(raw.num_tiles, 2 * 3);
        assert_eq!(raw.variants.len(), 2);
        assert!(raw.variants.iter().all(|v| v.len() == 6 * 20));
        assert!(
            raw.variants
                .iter()
                .flat_map(|v| &v.weights)
                .all(|w| (0.5..=1.0).contains(w))
        );
        let found = raw.merge(&cfg).unwrap();
        assert!(!found.boxes.is_empty() && found.boxes.len() <= 30);
        for b in &found.boxes {
            assert!(crate::volume::boxes::box_inside(b, [24, 32, 16]), "{b:?}");
        }
        assert!(found.scores.windows(2).all(|w| w[0] >= w[1]));
        assert!(found.classes.iter().all(|c| *c < 2));
        let wrong = Array4::<f32>::zeros((2, 16, 16, 16));
        let e = predict_volume(&model, wrong.view(), [16, 16, 16], &cfg, &device).unwrap_err();
        assert!(e.to_string().contains("2 channel(s)"), "{e}");
    }
}
