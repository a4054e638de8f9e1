//! Planning nnDetection's "default" configuration from a dataset fingerprint (§1.5): the
//! target spacing, the patch size, the encoder's poolings and (anisotropic) conv kernels, the
//! detection levels and the anchors, as nnDetection's planner `D3V001` / `BoxC002` chooses
//! them.
//!
//! The rules themselves live in [`topology`] as pure functions. Planning runs in nnDetection's
//! transposed axis order (the coarsest axis first) so that its tie-breaks are nnDetection's, and
//! returns everything in detlab's `[D, H, W]` order (detlab does not transpose the data).
//!
//! Differences from nnDetection, each for a stated reason:
//! - GPU memory is estimated by [`MemoryModel`] instead of measured on a GPU (a plan must be the
//!   same on every machine, and planning must run without one); its constants are documented
//!   there and are options.
//! - Anchors are optimised by detlab's seeded coordinate descent ([`plan_anchors`]) instead of
//!   nevergrad's TwoPointsDE, over the detection levels' true relative strides, which is what
//!   detlab's anchor generator scales by; nnDetection's own strides are reported beside them
//!   (`anchor_level_strides`) and differ only when the first pooling differs from the first
//!   detection level's.
//! - No separate low-resolution (`3dlr1`) plan is made; the plan says whether nnDetection would
//!   have made one (`low_resolution_triggered`).

pub mod memory;
pub mod topology;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::data::{DatasetFingerprint, TargetSpacing};
use crate::nn::NnError;
use crate::nn::encoder::{EncoderConfig, RetUNetEncoderConfig, cumulative};
use crate::nn::retina_unet::RetinaUNetConfig;
use crate::nn::retina_unet::anchors::{AnchorPlanOptions, AnchorSizes, plan_anchors};
use crate::util::percentile;

pub use memory::{MemoryEstimate, MemoryModel};
use topology::{
    decrease_patch_size, detection_levels, initial_patch_size, nndetection_anchor_strides, permute,
    pool_and_conv_props, transpose_forward, unpermute,
};

/// Settings of [`plan`]; the defaults are nnDetection's (`D3V001` with `BoxC002`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    /// Target spacing: `"median"` (nnDetection's median rule with the anisotropy exception) or `{"fixed": [sd, sh, sw]}`.
    pub target_spacing: TargetSpacing,
    /// Measure shapes and boxes after cropping each case to its non-zero region, as `preprocess` does (true).
    pub crop_nonzero: bool,
    /// Patches per batch in the memory estimate and the plan (nnDetection: 4).
    pub batch_size: usize,
    /// Smallest bottleneck edge: an axis is pooled only while it has at least twice this (4).
    pub min_feature_map_size: usize,
    /// Most poolings per axis (nnDetection: 999, i.e. unlimited).
    pub max_pools: usize,
    /// Voxels of the coarsest axis of the initial mm-isotropic patch before clipping (512).
    pub initial_patch_voxels: f64,
    /// Detection levels: the coarsest this many (4).
    pub num_detection_levels: usize,
    /// The finest detection level is at most this one (2).
    pub max_first_detection_level: usize,
    /// Channels of the first encoder stage; they double per stage (32).
    pub start_channels: usize,
    /// Largest encoder width (320).
    pub max_channels: usize,
    /// U-FPN channels on the detection levels (128).
    pub fpn_channels: usize,
    /// Channels of the heads' hidden convs (128).
    pub head_channels: usize,
    /// Patch anisotropy above which nnDetection turns on its "dummy 2D" augmentation (3).
    pub anisotropy_threshold: f64,
    /// The memory model that decides whether a patch fits.
    pub memory: MemoryModel,
    /// Anchor planning.
    pub anchors: AnchorPlanOptions,
    /// Most patch reductions before the search gives up (1000).
    pub max_search_steps: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            target_spacing: TargetSpacing::Median,
            crop_nonzero: true,
            batch_size: 4,
            min_feature_map_size: 4,
            max_pools: 999,
            initial_patch_voxels: 512.0,
            num_detection_levels: 4,
            max_first_detection_level: 2,
            start_channels: 32,
            max_channels: 320,
            fpn_channels: 128,
            head_channels: 128,
            anisotropy_threshold: 3.0,
            memory: MemoryModel::default(),
            anchors: AnchorPlanOptions::default(),
            max_search_steps: 1000,
        }
    }
}

impl PlanConfig {
    /// Check every field; the error names it.
    pub fn validate(&self) -> Result<(), NnError> {
        if let TargetSpacing::Fixed(s) = &self.target_spacing
            && s.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(NnError::config(
                "plan.target_spacing",
                format!("must be finite and positive, got {s:?}"),
            ));
        }
        for (name, value) in [
            ("plan.batch_size", self.batch_size),
            ("plan.min_feature_map_size", self.min_feature_map_size),
            ("plan.num_detection_levels", self.num_detection_levels),
            ("plan.start_channels", self.start_channels),
            ("plan.fpn_channels", self.fpn_channels),
            ("plan.head_channels", self.head_channels),
            ("plan.max_search_steps", self.max_search_steps),
        ] {
            if value == 0 {
                return Err(NnError::config(name, "must be at least 1"));
            }
        }
        if self.max_channels < self.start_channels {
            return Err(NnError::config(
                "plan.max_channels",
                format!(
                    "{} is below start_channels = {}",
                    self.max_channels, self.start_channels
                ),
            ));
        }
        if !(self.initial_patch_voxels.is_finite() && self.initial_patch_voxels >= 1.0) {
            return Err(NnError::config(
                "plan.initial_patch_voxels",
                "must be at least 1",
            ));
        }
        if !(self.memory.budget_bytes.is_finite() && self.memory.budget_bytes > 0.0) {
            return Err(NnError::config(
                "plan.memory.budget_bytes",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// One candidate of the patch-size search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// The candidate patch `[D, H, W]` (already padded to the pooling divisors).
    pub patch_size: [usize; 3],
    /// Its estimated training memory (bytes, or the unit of a custom estimate).
    pub estimated_bytes: f64,
    /// Whether it fits the budget.
    pub fits: bool,
}

/// What the planner chose; every array is in detlab's `[D, H, W]` order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Spacing to resample every case to (mm).
    pub target_spacing: [f64; 3],
    /// Median case shape after resampling to `target_spacing` (voxels).
    pub median_shape: [f64; 3],
    /// nnDetection's `transpose_forward` (coarsest target-spacing axis first).
    pub transpose: [usize; 3],
    /// The mm-isotropic starting patch of the search.
    pub initial_patch_size: [usize; 3],
    /// The planned training patch.
    pub patch_size: [usize; 3],
    /// Patches per batch.
    pub batch_size: usize,
    /// The pooling of every pooling step (nnU-Net's `pool_op_kernel_sizes`).
    pub pools: Vec<[usize; 3]>,
    /// The conv kernel of every encoder stage (`conv_kernel_sizes`: one per resolution).
    pub conv_kernels: Vec<[usize; 3]>,
    /// The stride of every encoder stage: `[1, 1, 1]` then the poolings.
    pub strides: Vec<[usize; 3]>,
    /// The encoder stages the heads run on.
    pub detection_levels: Vec<usize>,
    /// Planned base anchor extents per axis (voxels of the resampled grid).
    pub anchor_sizes: AnchorSizes,
    /// Mean best IoU of the training boxes with the planned anchors.
    pub anchor_mean_iou: f64,
    /// The level strides nnDetection's anchor planning would have used.
    pub anchor_level_strides: Vec<[usize; 3]>,
    /// Memory estimate of the planned network and patch.
    pub memory: MemoryEstimate,
    /// Every candidate of the patch-size search, in order.
    pub search: Vec<SearchStep>,
    /// Whether the 99.5th percentile object extent exceeds the patch on an axis (nnDetection
    /// would add a low-resolution plan).
    pub low_resolution_triggered: bool,
    /// Whether nnDetection would use its "dummy 2D" augmentation (patch anisotropy above the threshold).
    pub dummy_2d_augmentation: bool,
    /// The planned network: nnDetection's Retina U-Net over the planned encoder.
    pub network: RetinaUNetConfig,
}

/// Plan the "default" configuration for a dataset fingerprint with the memory model of
/// `config.memory`.
pub fn plan(fingerprint: &DatasetFingerprint, config: &PlanConfig) -> Result<Plan, NnError> {
    let model = config.memory.clone();
    plan_with(fingerprint, config, &|network, patch, batch| {
        model.estimate(network, patch, batch).total_bytes
    })
}

/// [`plan`] with another memory estimate: `estimate(network, patch, batch)` in the unit of
/// `config.memory.budget_bytes` (a patch fits when the estimate is below it).
pub fn plan_with(
    fingerprint: &DatasetFingerprint,
    config: &PlanConfig,
    estimate: &dyn Fn(&RetinaUNetConfig, [usize; 3], usize) -> f64,
) -> Result<Plan, NnError> {
    config.validate()?;
    if fingerprint.cases.is_empty() {
        return Err(NnError::InvalidInput(
            "planning needs at least one training case".into(),
        ));
    }
    let spacings = fingerprint.spacings();
    let shapes = fingerprint.shapes();
    let target_spacing = match &config.target_spacing {
        TargetSpacing::Fixed(s) => *s,
        TargetSpacing::Median => crate::data::preprocess::median_target_spacing(&spacings, &shapes)
            .map_err(|e| NnError::config("plan.target_spacing", e.to_string()))?,
    };
    let median_shape: [f64; 3] = std::array::from_fn(|a| {
        let sizes: Vec<f64> = spacings
            .iter()
            .zip(&shapes)
            .map(|(s, n)| s[a] / target_spacing[a] * n[a] as f64)
            .collect();
        percentile(&sizes, 50.0)
    });

    // The search, in nnDetection's transposed order.
    let order = transpose_forward(target_spacing);
    let spacing_t = permute(target_spacing, order);
    let median_t = permute(median_shape, order);
    let initial_t = initial_patch_size(spacing_t, median_t, config.initial_patch_voxels);
    let min_fm = config.min_feature_map_size;
    let mut patch_t = initial_t;
    let mut search = Vec::new();
    let mut previous: Option<topology::PoolConvProps> = None;
    let (props, network) = loop {
        if let Some(p) = &previous {
            patch_t = decrease_patch_size(patch_t, median_t, &p.pools, p.divisor, min_fm);
        }
        let props = pool_and_conv_props(spacing_t, patch_t, min_fm, config.max_pools);
        patch_t = props.patch_size;
        let network = planned_network(fingerprint, config, &props, order);
        let estimated = estimate(&network, unpermute(patch_t, order), config.batch_size);
        let fits = estimated < config.memory.budget_bytes;
        search.push(SearchStep {
            patch_size: unpermute(patch_t, order),
            estimated_bytes: estimated,
            fits,
        });
        if fits {
            break (props, network);
        }
        if search.len() >= config.max_search_steps {
            return Err(NnError::config(
                "plan.memory",
                format!(
                    "no patch fits the memory budget after {} reductions (last {:?}, {estimated:.3e} ≥ {:.3e})",
                    search.len(),
                    unpermute(patch_t, order),
                    config.memory.budget_bytes
                ),
            ));
        }
        previous = Some(props);
    };
    let patch_size = unpermute(patch_t, order);
    let levels = network.resolved_detection_levels();

    // Anchors from the training boxes scaled to the target spacing.
    let boxes: Vec<_> = fingerprint
        .cases
        .iter()
        .flat_map(|case| {
            let scale: [f64; 3] = std::array::from_fn(|a| case.spacing[a] / target_spacing[a]);
            case.boxes.iter().map(move |b| {
                [
                    b[0] * scale[0],
                    b[1] * scale[1],
                    b[2] * scale[2],
                    b[3] * scale[0],
                    b[4] * scale[1],
                    b[5] * scale[2],
                ]
            })
        })
        .collect();
    if boxes.is_empty() {
        return Err(NnError::InvalidInput(
            "the training cases have no objects: anchors cannot be planned".into(),
        ));
    }
    let stage_strides = cumulative(network.encoder.strides());
    let level_strides: Vec<[usize; 3]> = levels.iter().map(|&l| stage_strides[l]).collect();
    let anchors = plan_anchors(&boxes, &level_strides, &config.anchors)?;
    let anchor_level_strides = nndetection_anchor_strides(&props.pools, &levels)
        .into_iter()
        .map(|s| unpermute(s, order))
        .collect();
    let mut network = network;
    network.anchor_sizes = anchors.base_sizes;

    // nnDetection compares the unscaled 99.5th percentile extents with the patch.
    let low_resolution_triggered = (0..3).any(|a| {
        let extents: Vec<f64> = fingerprint
            .cases
            .iter()
            .flat_map(|c| c.boxes.iter().map(move |b| b[a + 3] - b[a]))
            .collect();
        (patch_size[a] as f64) < percentile(&extents, 99.5)
    });
    let longest = *patch_size.iter().max().unwrap_or(&1) as f64;
    let shortest = *patch_size.iter().min().unwrap_or(&1) as f64;
    let memory = config
        .memory
        .estimate(&network, patch_size, config.batch_size);
    Ok(Plan {
        target_spacing,
        median_shape,
        transpose: order,
        initial_patch_size: unpermute(initial_t, order),
        patch_size,
        batch_size: config.batch_size,
        pools: props.pools.iter().map(|p| unpermute(*p, order)).collect(),
        conv_kernels: props
            .conv_kernels
            .iter()
            .map(|k| unpermute(*k, order))
            .collect(),
        strides: network.encoder.strides().to_vec(),
        detection_levels: levels,
        anchor_sizes: anchors.base_sizes,
        anchor_mean_iou: anchors.mean_best_iou,
        anchor_level_strides,
        memory,
        search,
        low_resolution_triggered,
        dummy_2d_augmentation: longest / shortest > config.anisotropy_threshold,
        network,
    })
}

/// nnDetection's Retina U-Net for planned poolings and kernels (given in the transposed order).
fn planned_network(
    fingerprint: &DatasetFingerprint,
    config: &PlanConfig,
    props: &topology::PoolConvProps,
    order: [usize; 3],
) -> RetinaUNetConfig {
    let strides: Vec<[usize; 3]> = std::iter::once([1, 1, 1])
        .chain(props.pools.iter().map(|p| unpermute(*p, order)))
        .collect();
    let kernel_sizes: Vec<[usize; 3]> = props
        .conv_kernels
        .iter()
        .map(|k| unpermute(*k, order))
        .collect();
    let widths: Vec<usize> = (0..strides.len())
        .map(|s| {
            config
                .start_channels
                .saturating_mul(1usize << s.min(30))
                .min(config.max_channels)
        })
        .collect();
    let encoder = RetUNetEncoderConfig {
        widths,
        ..RetUNetEncoderConfig::planned(fingerprint.in_channels.max(1), strides, kernel_sizes)
    };
    let resolutions = encoder.widths.len();
    RetinaUNetConfig {
        encoder: EncoderConfig::Retunet(encoder),
        num_classes: fingerprint.num_classes.max(1),
        fpn_channels: config.fpn_channels,
        head_channels: config.head_channels,
        // nnDetection's 16 channels per GroupNorm group, or one group when 16 does not divide.
        head_channels_per_group: if config.head_channels.is_multiple_of(16) {
            16
        } else {
            config.head_channels
        },
        detection_levels: detection_levels(
            resolutions,
            config.num_detection_levels,
            config.max_first_detection_level,
        ),
        ..RetinaUNetConfig::default()
    }
}
