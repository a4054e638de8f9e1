//! Retina U-Net 3D exactly as nnDetection builds it (`RetinaUNetV001`): an encoder, the U-FPN
//! decoder, shared classification / regression heads on the detection levels with 27 anchors
//! per position, ATSS matching, hard-negative mining, BCE + GIoU losses, a segmentation head on
//! the finest level (CE + soft Dice) and per-patch post-processing with class-wise NMS.
//!
//! Deviation from nnDetection: the regression loss is `1 − GIoU` (non-negative) instead of
//! `−GIoU`, i.e. ours = nnDetection's + 1 whenever a batch has sampled positives.

pub mod anchors;
pub mod atss;
pub mod coder;
pub mod fpn;
pub mod heads;
pub mod sampler;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use self::anchors::{ANCHORS_PER_POSITION, AnchorGrid, AnchorSizes, DEFAULT_ANCHOR_SIZES};
use self::atss::{AtssConfig, atss_match};
use self::coder::BoxCoder;
use self::fpn::{UFpn, fpn_level_channels};
use self::heads::{ClassifierHead, RegressorHead, SegmentationHead};
use self::sampler::SamplerConfig;
use super::blocks::WeightInit;
use super::detector::{DetectionBatch, DetectionLoss, Detector, PatchDetections};
use super::encoder::{Encoder, EncoderConfig, RetUNetEncoderConfig};
use super::{NnError, inspect, losses};
use crate::volume::boxes::{Box3, iou};

/// What the segmentation head predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentationMode {
    /// Two channels: background and any foreground (nnDetection `DiCESegmenterFgBg`).
    #[default]
    ForegroundBackground,
    /// One channel per class plus background.
    PerClass,
    /// No segmentation head.
    None,
}

/// Classification loss on the sampled anchors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassificationLoss {
    /// Binary cross-entropy, mean over sampled anchors × classes (nnDetection).
    #[default]
    Bce,
    /// Sigmoid focal loss (`focal_alpha`, `focal_gamma`), mean over sampled anchors × classes.
    Focal,
}

/// Regression loss on the sampled positives, summed and divided by their number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressionLoss {
    /// `1 − GIoU` of decoded boxes (nnDetection uses `−GIoU`).
    #[default]
    Giou,
    /// L1 on the encoded deltas.
    L1,
    /// Smooth L1 (`smooth_l1_beta`) on the encoded deltas.
    SmoothL1,
}

/// Loss choices and weights; the total is `Σ weight × component`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Classification loss.
    pub classification: ClassificationLoss,
    /// Regression loss.
    pub regression: RegressionLoss,
    /// Focal loss α (negative disables the class balancing).
    pub focal_alpha: f64,
    /// Focal loss γ.
    pub focal_gamma: f64,
    /// Smooth-L1 transition point β.
    pub smooth_l1_beta: f64,
    /// Weight of the classification loss (`cls`).
    pub cls_weight: f64,
    /// Weight of the regression loss (`reg`).
    pub reg_weight: f64,
    /// Weight of the segmentation cross-entropy (`seg_ce`).
    pub seg_ce_weight: f64,
    /// Weight of the segmentation soft-Dice loss (`seg_dice`).
    pub seg_dice_weight: f64,
    /// Smoothing of the soft Dice (numerator and denominator).
    pub dice_smooth: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            classification: ClassificationLoss::Bce,
            regression: RegressionLoss::Giou,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            smooth_l1_beta: 1.0 / 9.0,
            cls_weight: 1.0,
            reg_weight: 1.0,
            seg_ce_weight: 0.5,
            seg_dice_weight: 0.5,
            dice_smooth: 1e-5,
        }
    }
}

/// Per-patch post-processing (nnDetection's plan defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Candidates (anchor × class) kept before thresholding.
    pub topk_candidates: usize,
    /// Keep scores strictly above this.
    pub score_threshold: f64,
    /// Drop boxes with any side shorter than this (voxels).
    pub min_box_size: f64,
    /// Class-wise NMS IoU threshold (suppress when IoU > threshold).
    pub nms_iou: f64,
    /// Detections kept per patch.
    pub detections_per_image: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            topk_candidates: 10_000,
            score_threshold: 0.0,
            min_box_size: 0.01,
            nms_iou: 0.6,
            detections_per_image: 100,
        }
    }
}

/// Settings of a Retina U-Net; `init` builds the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaUNetConfig {
    /// The encoder (its `in_channels` is the number of image channels).
    pub encoder: EncoderConfig,
    /// Number of foreground classes.
    pub num_classes: usize,
    /// U-FPN channels on the detection levels (nnDetection: 128).
    pub fpn_channels: usize,
    /// Smallest U-FPN channel count on the finer levels (halving stops here).
    pub fpn_min_channels: usize,
    /// Channels of the heads' hidden convs (nnDetection: 128).
    pub head_channels: usize,
    /// Hidden conv-GroupNorm-ReLU units per head (nnDetection: 2).
    pub head_convs: usize,
    /// Channels per GroupNorm group in the heads (nnDetection: 16).
    pub head_channels_per_group: usize,
    /// Encoder stages the heads run on; empty = nnDetection's rule (the 4 coarsest, starting
    /// at level min(max(1, stages − 4), 2)).
    pub detection_levels: Vec<usize>,
    /// Base anchor extents per axis (level l scales them by its relative stride).
    pub anchor_sizes: AnchorSizes,
    /// Segmentation head on level 0.
    pub segmentation: SegmentationMode,
    /// Initialisation of the U-FPN and segmentation head (heads always use N(0, 0.01)).
    pub decoder_init: WeightInit,
    /// ATSS matcher.
    pub matcher: AtssConfig,
    /// Hard-negative sampler.
    pub sampler: SamplerConfig,
    /// Box coder.
    pub coder: BoxCoder,
    /// Losses and their weights.
    pub loss: LossConfig,
    /// Per-patch post-processing.
    pub inference: InferenceConfig,
}

impl Default for RetinaUNetConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderConfig::default(),
            num_classes: 1,
            fpn_channels: 128,
            fpn_min_channels: 8,
            head_channels: 128,
            head_convs: 2,
            head_channels_per_group: 16,
            detection_levels: Vec::new(),
            anchor_sizes: DEFAULT_ANCHOR_SIZES,
            segmentation: SegmentationMode::ForegroundBackground,
            decoder_init: WeightInit::KaimingNormal,
            matcher: AtssConfig::default(),
            sampler: SamplerConfig::default(),
            coder: BoxCoder::default(),
            loss: LossConfig::default(),
            inference: InferenceConfig::default(),
        }
    }
}

impl burn::config::Config for RetinaUNetConfig {}

impl RetinaUNetConfig {
    /// nnDetection's Retina U-Net over any encoder, with `num_classes` classes.
    pub fn new(encoder: EncoderConfig, num_classes: usize) -> Self {
        Self {
            encoder,
            num_classes,
            ..Default::default()
        }
    }

    /// A tiny network for tests and tutorials: the tiny retunet encoder (widths 8–64, total
    /// stride 8), 16 FPN and head channels, detection levels 1–3.
    pub fn tiny(in_channels: usize, num_classes: usize) -> Self {
        Self {
            encoder: EncoderConfig::Retunet(RetUNetEncoderConfig::tiny(in_channels)),
            num_classes,
            fpn_channels: 16,
            head_channels: 16,
            head_channels_per_group: 8,
            ..Default::default()
        }
    }

    /// The detection levels: the configured ones or nnDetection's rule.
    pub fn resolved_detection_levels(&self) -> Vec<usize> {
        if !self.detection_levels.is_empty() {
            return self.detection_levels.clone();
        }
        let stages = self.encoder.widths().len();
        let start = stages
            .saturating_sub(4)
            .clamp(1, 2)
            .min(stages.saturating_sub(1));
        (start..stages).collect()
    }

    /// Channels of the segmentation output (0 without a head).
    pub fn segmentation_channels(&self) -> usize {
        match self.segmentation {
            SegmentationMode::ForegroundBackground => 2,
            SegmentationMode::PerClass => self.num_classes + 1,
            SegmentationMode::None => 0,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), NnError> {
        self.encoder.validate()?;
        if self.num_classes == 0 {
            return Err(NnError::config("num_classes", "must be at least 1"));
        }
        let stages = self.encoder.widths().len();
        let levels = self.resolved_detection_levels();
        if levels.is_empty()
            || levels.windows(2).any(|w| w[0] >= w[1])
            || *levels.last().unwrap() >= stages
        {
            return Err(NnError::config(
                "detection_levels",
                format!("{levels:?} must be sorted, unique and below the {stages} encoder stages"),
            ));
        }
        for (name, v) in [
            ("fpn_channels", self.fpn_channels),
            ("head_channels", self.head_channels),
            ("fpn_min_channels", self.fpn_min_channels),
        ] {
            if v == 0 {
                return Err(NnError::config(name, "must be at least 1"));
            }
        }
        let per_group = self.head_channels_per_group;
        if per_group == 0 || !self.head_channels.is_multiple_of(per_group) {
            return Err(NnError::config(
                "head_channels_per_group",
                format!(
                    "{per_group} does not divide head_channels = {}",
                    self.head_channels
                ),
            ));
        }
        // The U-FPN and the two heads, estimated before allocating (a model.json's numbers
        // are untrusted): lateral and output convs per stage, then each head's conv stack.
        let wide = |v: usize| v as u128;
        let fpn = wide(self.fpn_channels.max(self.fpn_min_channels));
        let lateral: u128 = self
            .encoder
            .widths()
            .iter()
            .map(|&w| {
                wide(w)
                    .saturating_mul(fpn)
                    .saturating_add(fpn.saturating_mul(fpn).saturating_mul(27))
            })
            .fold(0, u128::saturating_add);
        let head = wide(self.head_channels);
        let outputs = wide(self.num_classes)
            .saturating_add(6)
            .saturating_mul(wide(ANCHORS_PER_POSITION));
        let one_head = fpn
            .saturating_mul(head)
            .saturating_add(
                wide(self.head_convs)
                    .saturating_mul(head)
                    .saturating_mul(head),
            )
            .saturating_add(head.saturating_mul(outputs))
            .saturating_mul(27);
        super::encoder::check_repeats("head_convs", self.head_convs)?;
        super::encoder::check_weight_budget(
            "head_convs",
            lateral.saturating_add(one_head.saturating_mul(2)),
        )?;
        self.sampler.validate()?;
        if self.matcher.num_candidates == 0 {
            return Err(NnError::config(
                "matcher.num_candidates",
                "must be at least 1",
            ));
        }
        if self
            .coder
            .weights
            .iter()
            .any(|w| !(w.is_finite() && *w > 0.0))
        {
            return Err(NnError::config("coder.weights", "must be positive"));
        }
        Ok(())
    }

    /// Build the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<RetinaUNet<B>, NnError> {
        self.validate()?;
        let encoder = self.encoder.init::<B>(device)?;
        let levels = self.resolved_detection_levels();
        let stages = encoder.widths.len();
        let channels =
            fpn_level_channels(stages, levels[0], self.fpn_channels, self.fpn_min_channels);
        let mut outputs = levels.clone();
        if self.segmentation != SegmentationMode::None && levels[0] != 0 {
            outputs.insert(0, 0);
        }
        let decoder = UFpn::new(
            &encoder.widths,
            &encoder.strides,
            self.encoder.kernel_sizes(),
            &channels,
            &outputs,
            self.decoder_init,
            device,
        )?;
        let groups = self.head_channels / self.head_channels_per_group;
        let classifier = ClassifierHead::new(
            self.fpn_channels,
            self.head_channels,
            self.head_convs,
            groups,
            ANCHORS_PER_POSITION,
            self.num_classes,
            device,
        )?;
        let regressor = RegressorHead::new(
            self.fpn_channels,
            self.head_channels,
            self.head_convs,
            groups,
            ANCHORS_PER_POSITION,
            levels.len(),
            device,
        )?;
        let segmenter = (self.segmentation != SegmentationMode::None).then(|| {
            SegmentationHead::new(
                channels[0],
                self.segmentation_channels(),
                self.decoder_init,
                device,
            )
        });
        let model = RetinaUNet {
            encoder,
            decoder,
            classifier,
            regressor,
            segmenter,
            detection_levels: levels,
            config: self.clone(),
        };
        inspect::materialize(&model);
        Ok(model)
    }
}

/// Raw network outputs of a batch.
#[derive(Clone, Debug)]
pub struct RetinaUNetOutput<B: Backend> {
    /// Class logits `[N, A, C]` (A = all anchors of all detection levels).
    pub class_logits: Tensor<B, 3>,
    /// Box deltas `[N, A, 6]`.
    pub box_deltas: Tensor<B, 3>,
    /// Segmentation logits `[N, S, D, H, W]` when the network has a segmentation head.
    pub segmentation_logits: Option<Tensor<B, 5>>,
    /// Feature-map size of every detection level.
    pub level_grids: Vec<[usize; 3]>,
}

/// The Retina U-Net detector.
#[derive(Module, Debug)]
pub struct RetinaUNet<B: Backend> {
    /// The encoder (stem + stages); freeze or transfer it through this field.
    pub encoder: Encoder<B>,
    /// The U-FPN.
    pub decoder: UFpn<B>,
    /// Shared classification head.
    pub classifier: ClassifierHead<B>,
    /// Shared regression head.
    pub regressor: RegressorHead<B>,
    /// Segmentation head on level 0.
    pub segmenter: Option<SegmentationHead<B>>,
    /// The encoder stages the heads run on.
    pub detection_levels: Vec<usize>,
    /// The configuration the network was built from.
    pub config: RetinaUNetConfig,
}

impl<B: Backend> RetinaUNet<B> {
    /// Run the network.
    ///
    /// # Shapes
    /// - images: `[N, C_in, D, H, W]`, sizes divisible by the encoder's total stride
    /// - class logits `[N, A, C]`, box deltas `[N, A, 6]`, segmentation `[N, S, D, H, W]`
    pub fn forward(&self, images: Tensor<B, 5>) -> Result<RetinaUNetOutput<B>, NnError> {
        self.encoder.check_input(images.dims())?;
        let skips = self.encoder.forward(images);
        let mut features = self.decoder.forward(skips);
        let segmentation_logits = match &self.segmenter {
            Some(head) => {
                let finest = if self.detection_levels[0] == 0 {
                    features[0].clone()
                } else {
                    features.remove(0)
                };
                Some(head.forward(finest))
            }
            None => None,
        };
        let level_grids = features
            .iter()
            .map(|f| {
                let [_, _, d, h, w] = f.dims();
                [d, h, w]
            })
            .collect();
        Ok(RetinaUNetOutput {
            class_logits: self.classifier.forward(&features),
            box_deltas: self.regressor.forward(&features),
            segmentation_logits,
            level_grids,
        })
    }

    /// The anchors of a patch of `patch_size` `[D, H, W]`.
    pub fn anchors(&self, patch_size: [usize; 3]) -> Result<AnchorGrid, NnError> {
        let cumulative = self.encoder.cumulative_strides();
        let grids: Vec<[usize; 3]> = self
            .detection_levels
            .iter()
            .map(|&l| [0, 1, 2].map(|a| patch_size[a] / cumulative[l][a]))
            .collect();
        AnchorGrid::new(patch_size, &grids, &self.config.anchor_sizes)
    }

    fn classification_loss(&self, logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
        let cfg = &self.config.loss;
        match cfg.classification {
            ClassificationLoss::Bce => losses::binary_cross_entropy_with_logits(logits, targets),
            ClassificationLoss::Focal => {
                losses::sigmoid_focal_loss(logits, targets, cfg.focal_alpha, cfg.focal_gamma)
            }
        }
    }

    fn regression_loss(
        &self,
        deltas: Tensor<B, 2>,
        anchors: &[Box3],
        targets: &[Box3],
    ) -> Tensor<B, 1> {
        let device = deltas.device();
        let p = anchors.len();
        let boxes_tensor =
            |rows: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(rows, [p, 6]), &device);
        let sum = match self.config.loss.regression {
            RegressionLoss::Giou => {
                let anchors_t = boxes_tensor(anchors.iter().flatten().map(|&v| v as f32).collect());
                let targets_t = boxes_tensor(targets.iter().flatten().map(|&v| v as f32).collect());
                let decoded = self.config.coder.decode_tensor(deltas, anchors_t);
                losses::generalized_iou(decoded, targets_t)
                    .neg()
                    .add_scalar(1.0)
                    .sum()
            }
            RegressionLoss::L1 | RegressionLoss::SmoothL1 => {
                let encoded: Vec<f32> = anchors
                    .iter()
                    .zip(targets)
                    .flat_map(|(a, t)| self.config.coder.encode(t, a))
                    .map(|v| v as f32)
                    .collect();
                let diff = (deltas - boxes_tensor(encoded)).abs();
                if self.config.loss.regression == RegressionLoss::L1 {
                    diff.sum()
                } else {
                    let beta = self.config.loss.smooth_l1_beta;
                    let quadratic = diff.clone().square().mul_scalar(0.5 / beta);
                    let linear = diff.clone().sub_scalar(0.5 * beta);
                    linear.mask_where(diff.lower_elem(beta), quadratic).sum()
                }
            }
        };
        sum.div_scalar(p.max(1) as f64)
    }

    fn segmentation_one_hot(&self, target: Tensor<B, 4, Int>, channels: usize) -> Tensor<B, 5> {
        match self.config.segmentation {
            SegmentationMode::ForegroundBackground => {
                let fg = target.greater_elem(0).float().unsqueeze_dim::<5>(1);
                Tensor::cat(vec![fg.clone().neg().add_scalar(1.0), fg], 1)
            }
            _ => Tensor::cat(
                (0..channels)
                    .map(|s| {
                        target
                            .clone()
                            .equal_elem(s as i64)
                            .float()
                            .unsqueeze_dim::<5>(1)
                    })
                    .collect(),
                1,
            ),
        }
    }
}

/// Host copy of a float tensor's values.
fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [indices.len()]), device)
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(values: &[f32], k: usize, skip_sorted: &[usize]) -> Vec<usize> {
    let mut idx: Vec<usize> = if skip_sorted.is_empty() {
        (0..values.len()).collect()
    } else {
        (0..values.len())
            .filter(|i| skip_sorted.binary_search(i).is_err())
            .collect()
    };
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx
}

/// Class-wise NMS that returns the first `max_keep` survivors in descending score order (ties:
/// lower index first) — the same as `batched_nms(..)[..max_keep]`, but each class stops after
/// `max_keep` survivors and a box is only compared with the survivors of its class, so 10,000
/// candidates cost at most 10,000 × `max_keep` IoUs.
pub fn capped_batched_nms(
    boxes: &[Box3],
    scores: &[f64],
    classes: &[usize],
    iou_threshold: f64,
    max_keep: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept_per_class: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    let mut keep = Vec::new();
    for i in order {
        if keep.len() == max_keep {
            break;
        }
        let kept = kept_per_class.entry(classes[i]).or_default();
        if kept
            .iter()
            .all(|&k| iou(&boxes[k], &boxes[i]) <= iou_threshold)
        {
            kept.push(i);
            keep.push(i);
        }
    }
    keep
}

impl<B: Backend> Detector<B> for RetinaUNet<B> {
    fn loss(
        &self,
        batch: &DetectionBatch<B>,
        rng: &mut dyn RngCore,
    ) -> Result<DetectionLoss<B>, NnError> {
        let num_classes = self.config.num_classes;
        batch.validate(num_classes)?;
        let [n, _, d, h, w] = batch.images.dims();
        let device = batch.images.device();
        let out = self.forward(batch.images.clone())?;
        let anchors = AnchorGrid::new([d, h, w], &out.level_grids, &self.config.anchor_sizes)?;
        let per_image = anchors.len();

        // ATSS per image; positives as flat indices over the batch (sorted).
        let mut positives = Vec::new();
        let mut matched: Vec<(Box3, Box3, usize)> = Vec::new(); // (anchor, target box, class)
        for i in 0..n {
            for m in atss_match(&batch.boxes[i], &anchors, &self.config.matcher) {
                positives.push(i * per_image + m.anchor);
                matched.push((
                    anchors.anchor(m.anchor),
                    batch.boxes[i][m.target],
                    batch.classes[i][m.target],
                ));
            }
        }

        // Hard negatives: highest max-over-classes logit (sigmoid is monotonic).
        let flat_logits = out
            .class_logits
            .clone()
            .reshape([n * per_image, num_classes]);
        let sampled = self.config.sampler.sample(
            n,
            n * per_image,
            &positives,
            |k| {
                let scores = flat_logits
                    .clone()
                    .detach()
                    .max_dim(1)
                    .reshape([n * per_image]);
                top_k(&host_f32(scores), k, &positives)
            },
            rng,
        );

        // Classification on the sampled anchors.
        let selected: Vec<usize> = sampled
            .positives
            .iter()
            .chain(&sampled.negatives)
            .copied()
            .collect();
        let mut targets = vec![0.0f32; selected.len() * num_classes];
        let mut pos_anchors = Vec::with_capacity(sampled.positives.len());
        let mut pos_targets = Vec::with_capacity(sampled.positives.len());
        for (row, flat) in sampled.positives.iter().enumerate() {
            let j = positives
                .binary_search(flat)
                .expect("sampled positive is a positive");
            let (anchor, target, class) = matched[j];
            targets[row * num_classes + class] = 1.0;
            pos_anchors.push(anchor);
            pos_targets.push(target);
        }
        let weights = &self.config.loss;
        let mut components: Vec<(String, Tensor<B, 1>)> = Vec::new();
        if !selected.is_empty() {
            let logits = flat_logits.select(0, index_tensor::<B>(&selected, &device));
            let target_t = Tensor::<B, 2>::from_data(
                TensorData::new(targets, [selected.len(), num_classes]),
                &device,
            );
            components.push((
                "cls".into(),
                self.classification_loss(logits, target_t)
                    .mul_scalar(weights.cls_weight),
            ));
        }
        if !pos_anchors.is_empty() {
            let deltas = out
                .box_deltas
                .clone()
                .reshape([n * per_image, 6])
                .select(0, index_tensor::<B>(&sampled.positives, &device));
            components.push((
                "reg".into(),
                self.regression_loss(deltas, &pos_anchors, &pos_targets)
                    .mul_scalar(weights.reg_weight),
            ));
        }
        if let (Some(logits), Some(target)) = (out.segmentation_logits, batch.segmentation.clone())
        {
            let channels = logits.dims()[1];
            let one_hot = self.segmentation_one_hot(target, channels);
            let ce = losses::dense_cross_entropy(logits.clone(), one_hot.clone());
            let dice = losses::soft_dice_loss(logits, one_hot, weights.dice_smooth);
            components.push(("seg_ce".into(), ce.mul_scalar(weights.seg_ce_weight)));
            components.push(("seg_dice".into(), dice.mul_scalar(weights.seg_dice_weight)));
        }
        let total = components
            .iter()
            .map(|(_, t)| t.clone())
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &device));
        let statistics = vec![
            ("num_anchors".to_string(), (n * per_image) as f64),
            ("num_positives".to_string(), positives.len() as f64),
            (
                "num_sampled_positives".to_string(),
                sampled.positives.len() as f64,
            ),
            (
                "num_sampled_negatives".to_string(),
                sampled.negatives.len() as f64,
            ),
        ];
        let components = components
            .into_iter()
            .map(|(name, t)| (name, t.detach()))
            .collect();
        Ok(DetectionLoss {
            total,
            components,
            statistics,
        })
    }

    fn predict(&self, images: Tensor<B, 5>) -> Result<Vec<PatchDetections>, NnError> {
        let [n, _, d, h, w] = images.dims();
        let device = images.device();
        let out = self.forward(images)?;
        let anchors = AnchorGrid::new([d, h, w], &out.level_grids, &self.config.anchor_sizes)?;
        let per_image = anchors.len();
        let c = self.config.num_classes;
        let cfg = &self.config.inference;
        let logits = host_f32(out.class_logits.reshape([n, per_image * c]));
        let size = [d as f64, h as f64, w as f64];
        // Candidates of every image: (image, anchor, class, score).
        let mut candidates: Vec<(usize, usize, usize, f64)> = Vec::new();
        for i in 0..n {
            let row = &logits[i * per_image * c..(i + 1) * per_image * c];
            for j in top_k(row, cfg.topk_candidates, &[]) {
                let score = 1.0 / (1.0 + (-(row[j] as f64)).exp());
                if score > cfg.score_threshold {
                    candidates.push((i, j / c, j % c, score));
                }
            }
        }
        let flat: Vec<usize> = candidates
            .iter()
            .map(|&(i, a, _, _)| i * per_image + a)
            .collect();
        let deltas = if flat.is_empty() {
            Vec::new()
        } else {
            host_f32(
                out.box_deltas
                    .reshape([n * per_image, 6])
                    .select(0, index_tensor::<B>(&flat, &device)),
            )
        };
        let mut results = vec![PatchDetections::default(); n];
        let mut per_image_boxes: Vec<(Vec<Box3>, Vec<f64>, Vec<usize>)> =
            vec![Default::default(); n];
        for (k, &(i, a, class, score)) in candidates.iter().enumerate() {
            let delta: [f64; 6] = std::array::from_fn(|j| deltas[k * 6 + j] as f64);
            let mut b = self.config.coder.decode(&delta, &anchors.anchor(a));
            for ax in 0..3 {
                b[ax] = b[ax].clamp(0.0, size[ax]);
                b[ax + 3] = b[ax + 3].clamp(0.0, size[ax]);
            }
            if (0..3).any(|ax| b[ax + 3] - b[ax] < cfg.min_box_size) {
                continue;
            }
            let entry = &mut per_image_boxes[i];
            entry.0.push(b);
            entry.1.push(score);
            entry.2.push(class);
        }
        for (i, (boxes, scores, classes)) in per_image_boxes.into_iter().enumerate() {
            let keep = capped_batched_nms(
                &boxes,
                &scores,
                &classes,
                cfg.nms_iou,
                cfg.detections_per_image,
            );
            let keep = &keep[..];
            results[i] = PatchDetections {
                boxes: keep.iter().map(|&k| boxes[k]).collect(),
                scores: keep.iter().map(|&k| scores[k]).collect(),
                classes: keep.iter().map(|&k| classes[k]).collect(),
            };
        }
        Ok(results)
    }

    fn summary(&self) -> String {
        let cfg = &self.config;
        let kind = match cfg.encoder {
            EncoderConfig::Retunet(_) => "retunet",
            EncoderConfig::Resenc(_) => "resenc",
        };
        let strides = self.encoder.cumulative_strides();
        let level_strides: Vec<[usize; 3]> =
            self.detection_levels.iter().map(|&l| strides[l]).collect();
        let mut out = format!(
            "Retina U-Net: {kind} encoder, widths {:?}, {} input channel(s), {} class(es)\n\
             U-FPN channels {:?}; detection levels {:?} (strides {:?}); segmentation {:?}\n\
             anchors: 27 per position, base extents d {:?} h {:?} w {:?}\n",
            self.encoder.widths,
            self.encoder.in_channels,
            cfg.num_classes,
            self.decoder.channels,
            self.detection_levels,
            level_strides,
            cfg.segmentation,
            cfg.anchor_sizes[0],
            cfg.anchor_sizes[1],
            cfg.anchor_sizes[2],
        );
        out.push_str(&inspect::summary("parameters", self));
        out
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
        self.config.num_classes
    }
}

#[cfg(test)]
mod tests;
