//! Data augmentation of training patches: nnDetection's `BaseMoreAug` and its sibling sets,
//! with batchgenerators' transforms.
//!
//! Applied per patch, in nnDetection's order:
//! 1. spatial ([`spatial`]): rotation about each axis (p 0.2, ±30°) and isotropic scaling
//!    (p 0.2, 0.7–1.4) of the larger generator patch the sampler cut, image with a cubic spline
//!    (order 3), instance mask with order 0, centre-cropped to the patch;
//! 2. intensity ([`intensity`]): Gaussian noise, Gaussian blur, multiplicative brightness,
//!    contrast, (`more`/`insane`: simulated low resolution), inverted gamma, gamma;
//! 3. mirroring per axis (p 0.5); detlab's optional rot90 comes after it.
//!
//! Boxes: when the geometry changed, the boxes are derived again from the transformed instance
//! mask (as nnDetection does) in the training box convention, so they stay exact.
//!
//! Every transform has its own probability, so each is switched off by setting it to 0; the
//! presets ([`presets`]) are nnDetection's sets. Each patch draws from its own random stream
//! ([`augment_batch`] seeds one per patch from the iteration's stream), so a batch is augmented
//! in parallel and still deterministically.

pub mod intensity;
pub mod presets;
pub mod spatial;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::sampler::Patch;
use crate::volume::boxes::BoxConvention;
use crate::volume::resample::Interpolation;

pub(crate) use intensity::{below_or_above_one, uniform};
pub use intensity::{
    brightness, contrast, gamma, gamma_with, gaussian_blur, gaussian_blur_view, gaussian_noise,
    simulate_low_resolution,
};
pub use presets::{AugmentPreset, PRESETS};
pub use spatial::{
    SpatialDraw, boxes_from_instances, draw_spatial, generator_patch, mirror, rot90,
    rotation_matrix, spatial_transform,
};

/// Augmentation settings: a probability and a range per transform, in the order they run. A
/// script gives a preset name (`augment: "more"`) or a map laid over the preset named by its
/// `preset` key (default `"base_more"`); each transform is off at probability 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// The nnDetection set these settings start from: "none", "base_more", "more" or "insane".
    pub preset: AugmentPreset,
    /// Master switch (false: patches are used as cut).
    pub enabled: bool,
    /// Probability of a rotation about all three axes (nnDetection: 0.2).
    pub rotation_probability: f64,
    /// Range of each axis's rotation angle in degrees (nnDetection: −30 to 30).
    pub rotation_degrees: [f64; 2],
    /// Probability of isotropic scaling (nnDetection: 0.2).
    pub scale_probability: f64,
    /// Range of the scale factor of the sampling grid; objects grow by its inverse (nnDetection:
    /// 0.7 – 1.4, drawn below or above 1 with equal probability).
    pub scale_range: [f64; 2],
    /// Interpolation order of the rotated and scaled image: 3 (cubic spline, nnDetection), 1 or 0.
    pub image_order: u8,
    /// Probability of additive Gaussian noise (nnDetection: 0.1).
    pub noise_probability: f64,
    /// Range of the noise standard deviation (nnDetection: 0 – 0.1).
    pub noise_std: [f64; 2],
    /// Probability of Gaussian blur per patch (nnDetection: 0.2).
    pub blur_probability: f64,
    /// Probability of blurring each channel of a blurred patch (nnDetection: 0.5).
    pub blur_channel_probability: f64,
    /// Range of the blur σ in voxels (nnDetection: 0.5 – 1).
    pub blur_sigma: [f64; 2],
    /// Probability of multiplicative brightness (nnDetection: 0.15).
    pub brightness_probability: f64,
    /// Range of the brightness multiplier (nnDetection: 0.75 – 1.25).
    pub brightness_range: [f64; 2],
    /// Probability of contrast augmentation (nnDetection: 0.15).
    pub contrast_probability: f64,
    /// Range of the contrast factor (nnDetection: 0.75 – 1.25).
    pub contrast_range: [f64; 2],
    /// Probability of simulated low resolution (nnDetection: 0, `more` and `insane` 0.25).
    pub low_resolution_probability: f64,
    /// Probability of lowering each channel's resolution when it is drawn (nnDetection: 0.5).
    pub low_resolution_channel_probability: f64,
    /// Range of the zoom factor of the low resolution (nnDetection: 0.5 – 1).
    pub low_resolution_zoom: [f64; 2],
    /// Probability of gamma on the inverted image (nnDetection: 0.1).
    pub inverted_gamma_probability: f64,
    /// Probability of gamma (nnDetection: 0.3).
    pub gamma_probability: f64,
    /// Range of γ (nnDetection: 0.7 – 1.5).
    pub gamma_range: [f64; 2],
    /// Restore each channel's mean and standard deviation after gamma (nnDetection: true).
    pub gamma_retain_stats: bool,
    /// Probability of mirroring, drawn per axis (nnDetection: 0.5).
    pub mirror_probability: f64,
    /// Probability of a rot90 by 90°, 180° or 270° (nnDetection: no rot90, 0).
    pub rot90_probability: f64,
    /// Planes `[axis, axis]` (0 = D, 1 = H, 2 = W) rot90 may turn; both axes must have the same
    /// patch extent (default: the in-plane H–W plane only, since D often has another spacing).
    pub rot90_planes: Vec<[usize; 2]>,
}

impl Serialize for AugmentConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        AugmentConfig::serialize(self, serializer)
    }
}

/// A preset name, or a map whose missing keys come from the preset its `preset` key names
/// (`base_more` without one), so that `#{preset: "insane", noise_probability: 0.0}` is
/// `insane` without noise.
impl<'de> Deserialize<'de> for AugmentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let value = Value::deserialize(deserializer)?;
        let (preset, overrides) = match value {
            Value::String(_) => (value, Value::Object(Default::default())),
            Value::Object(map) => (
                map.get("preset").cloned().unwrap_or(Value::Null),
                Value::Object(map),
            ),
            other => {
                return Err(D::Error::custom(format!(
                    "invalid type: {other}, expected a preset name or a map"
                )));
            }
        };
        let preset = match preset {
            Value::Null => AugmentPreset::default(),
            name => serde_json::from_value::<AugmentPreset>(name).map_err(D::Error::custom)?,
        };
        let mut merged = serde_json::to_value(preset.config()).map_err(D::Error::custom)?;
        if let (Value::Object(base), Value::Object(overrides)) = (&mut merged, overrides) {
            base.extend(overrides);
        }
        AugmentConfig::deserialize(merged).map_err(D::Error::custom)
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::base_more()
    }
}

impl AugmentConfig {
    /// nnDetection's `BaseMoreAug` with `base_more.yaml` (the default).
    pub fn base_more() -> Self {
        Self {
            preset: AugmentPreset::BaseMore,
            enabled: true,
            rotation_probability: 0.2,
            rotation_degrees: [-30.0, 30.0],
            scale_probability: 0.2,
            scale_range: [0.7, 1.4],
            image_order: 3,
            noise_probability: 0.1,
            noise_std: [0.0, 0.1],
            blur_probability: 0.2,
            blur_channel_probability: 0.5,
            blur_sigma: [0.5, 1.0],
            brightness_probability: 0.15,
            brightness_range: [0.75, 1.25],
            contrast_probability: 0.15,
            contrast_range: [0.75, 1.25],
            low_resolution_probability: 0.0,
            low_resolution_channel_probability: 0.5,
            low_resolution_zoom: [0.5, 1.0],
            inverted_gamma_probability: 0.1,
            gamma_probability: 0.3,
            gamma_range: [0.7, 1.5],
            gamma_retain_stats: true,
            mirror_probability: 0.5,
            rot90_probability: 0.0,
            rot90_planes: vec![[1, 2]],
        }
    }

    /// No augmentation at all (the `none` preset).
    pub fn none() -> Self {
        AugmentPreset::None.config()
    }

    /// Every transform switched off except those `enable` turns on again (for tests and
    /// benchmarks of single transforms).
    pub fn only(enable: impl FnOnce(&mut AugmentConfig)) -> Self {
        let mut config = Self {
            rotation_probability: 0.0,
            scale_probability: 0.0,
            noise_probability: 0.0,
            blur_probability: 0.0,
            brightness_probability: 0.0,
            contrast_probability: 0.0,
            low_resolution_probability: 0.0,
            inverted_gamma_probability: 0.0,
            gamma_probability: 0.0,
            mirror_probability: 0.0,
            rot90_probability: 0.0,
            ..Self::base_more()
        };
        enable(&mut config);
        config
    }

    /// The interpolation of the rotated and scaled image.
    pub fn image_interpolation(&self) -> Interpolation {
        match self.image_order {
            0 => Interpolation::Nearest,
            1 => Interpolation::Linear,
            _ => Interpolation::Cubic,
        }
    }

    /// The generator patch the sampler cuts for a training patch of `patch` (nnDetection's
    /// `get_patch_size`; the patch itself without rotation and scaling).
    pub fn generator_patch(&self, patch: [usize; 3]) -> [usize; 3] {
        generator_patch(self, patch)
    }

    /// Check the settings for patches of size `patch`.
    pub fn validate(&self, patch: [usize; 3]) -> Result<(), TrainError> {
        let field = |name: &str| format!("augment.{name}");
        for (name, p) in [
            ("rotation_probability", self.rotation_probability),
            ("scale_probability", self.scale_probability),
            ("noise_probability", self.noise_probability),
            ("blur_probability", self.blur_probability),
            ("blur_channel_probability", self.blur_channel_probability),
            ("brightness_probability", self.brightness_probability),
            ("contrast_probability", self.contrast_probability),
            (
                "low_resolution_probability",
                self.low_resolution_probability,
            ),
            (
                "low_resolution_channel_probability",
                self.low_resolution_channel_probability,
            ),
            (
                "inverted_gamma_probability",
                self.inverted_gamma_probability,
            ),
            ("gamma_probability", self.gamma_probability),
            ("mirror_probability", self.mirror_probability),
            ("rot90_probability", self.rot90_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(TrainError::config(
                    field(name),
                    format!("{p} is not a probability"),
                ));
            }
        }
        for (name, r, min) in [
            ("rotation_degrees", self.rotation_degrees, -180.0),
            ("scale_range", self.scale_range, f64::MIN_POSITIVE),
            ("noise_std", self.noise_std, 0.0),
            ("blur_sigma", self.blur_sigma, 0.0),
            ("brightness_range", self.brightness_range, 0.0),
            ("contrast_range", self.contrast_range, 0.0),
            (
                "low_resolution_zoom",
                self.low_resolution_zoom,
                f64::MIN_POSITIVE,
            ),
            ("gamma_range", self.gamma_range, f64::MIN_POSITIVE),
        ] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] >= min && r[0] <= r[1]) {
                return Err(TrainError::config(
                    field(name),
                    format!("{r:?} must be an ordered range of values ≥ {min}"),
                ));
            }
        }
        if self.rotation_degrees[1] > 180.0 {
            return Err(TrainError::config(
                field("rotation_degrees"),
                format!("{:?} must lie within [−180, 180]", self.rotation_degrees),
            ));
        }
        if self.low_resolution_zoom[1] > 1.0 {
            return Err(TrainError::config(
                field("low_resolution_zoom"),
                format!(
                    "{:?} must not exceed 1 (it lowers the resolution)",
                    self.low_resolution_zoom
                ),
            ));
        }
        if !matches!(self.image_order, 0 | 1 | 3) {
            return Err(TrainError::config(
                field("image_order"),
                format!(
                    "{} is not an interpolation order; use 3 (cubic spline), 1 or 0",
                    self.image_order
                ),
            ));
        }
        if self.rot90_probability > 0.0 {
            if self.rot90_planes.is_empty() {
                return Err(TrainError::config(field("rot90_planes"), "is empty"));
            }
            for plane in &self.rot90_planes {
                if plane[0] >= 3 || plane[1] >= 3 || plane[0] == plane[1] {
                    return Err(TrainError::config(
                        field("rot90_planes"),
                        format!("{plane:?} is not a pair of two different axes 0–2"),
                    ));
                }
                if patch[plane[0]] != patch[plane[1]] {
                    return Err(TrainError::config(
                        field("rot90_planes"),
                        format!(
                            "plane {plane:?} has unequal patch extents {} and {} (patch {patch:?})",
                            patch[plane[0]], patch[plane[1]]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Augment `patch` (cut at the generator size for `size`, or at `size`) into a patch of `size`
/// (see the module documentation); boxes are derived in `convention`.
pub fn augment<R: Rng + ?Sized>(
    patch: &mut Patch,
    config: &AugmentConfig,
    size: [usize; 3],
    convention: BoxConvention,
    rng: &mut R,
) {
    let order = config.image_interpolation();
    if !config.enabled {
        if spatial_transform(patch, None, size, order) {
            boxes_from_instances(patch, convention);
        }
        return;
    }
    let draw = draw_spatial(config, rng);
    let resampled = spatial_transform(patch, draw.as_ref(), size, order);
    augment_intensity(&mut patch.image, config, rng);
    let mut turned = false;
    for axis in 0..3 {
        if config.mirror_probability > 0.0 && rng.random::<f64>() < config.mirror_probability {
            mirror(patch, axis);
            turned = true;
        }
    }
    if config.rot90_probability > 0.0 && rng.random::<f64>() < config.rot90_probability {
        let plane = config.rot90_planes[rng.random_range(0..config.rot90_planes.len())];
        if size[plane[0]] == size[plane[1]] {
            rot90(patch, plane, rng.random_range(1..4));
            turned = true;
        }
    }
    // Mirror's and rot90's box arithmetic is exact for half-open boxes only; the mask gives
    // the boxes of any convention.
    if resampled || (turned && convention != BoxConvention::HalfOpen) {
        boxes_from_instances(patch, convention);
    }
}

/// The intensity transforms of the pipeline, in nnDetection's order, on an image `[C, D, H, W]`.
pub fn augment_intensity<R: Rng + ?Sized>(
    image: &mut ndarray::Array4<f32>,
    config: &AugmentConfig,
    rng: &mut R,
) {
    let channels = image.dim().0;
    if config.noise_probability > 0.0 && rng.random::<f64>() < config.noise_probability {
        let std = uniform(rng, config.noise_std);
        gaussian_noise(image, std, rng);
    }
    if config.blur_probability > 0.0 && rng.random::<f64>() < config.blur_probability {
        for c in 0..channels {
            if rng.random::<f64>() < config.blur_channel_probability {
                let sigma = uniform(rng, config.blur_sigma);
                gaussian_blur_view(image.index_axis_mut(ndarray::Axis(0), c), sigma);
            }
        }
    }
    if config.brightness_probability > 0.0 && rng.random::<f64>() < config.brightness_probability {
        for c in 0..channels {
            let factor = uniform(rng, config.brightness_range);
            brightness(image, c, factor);
        }
    }
    if config.contrast_probability > 0.0 && rng.random::<f64>() < config.contrast_probability {
        for c in 0..channels {
            let factor = below_or_above_one(rng, config.contrast_range);
            contrast(image, c, factor);
        }
    }
    if config.low_resolution_probability > 0.0
        && rng.random::<f64>() < config.low_resolution_probability
    {
        for c in 0..channels {
            if rng.random::<f64>() < config.low_resolution_channel_probability {
                let zoom = uniform(rng, config.low_resolution_zoom);
                simulate_low_resolution(image, c, zoom, Interpolation::Cubic);
            }
        }
    }
    for (probability, inverted) in [
        (config.inverted_gamma_probability, true),
        (config.gamma_probability, false),
    ] {
        if probability > 0.0 && rng.random::<f64>() < probability {
            for c in 0..channels {
                let g = below_or_above_one(rng, config.gamma_range);
                gamma_with(image, c, g, inverted, config.gamma_retain_stats);
            }
        }
    }
}

/// Augment every patch of a batch in parallel, each from its own stream seeded in order from
/// `rng` (so the result does not depend on the thread count).
pub fn augment_batch<R: Rng + ?Sized>(
    patches: &mut [Patch],
    config: &AugmentConfig,
    size: [usize; 3],
    convention: BoxConvention,
    rng: &mut R,
) {
    let seeds: Vec<u64> = patches.iter().map(|_| rng.random()).collect();
    patches.par_iter_mut().zip(seeds).for_each(|(patch, seed)| {
        let mut stream = ChaCha8Rng::seed_from_u64(seed);
        augment(patch, config, size, convention, &mut stream);
    });
}

#[cfg(test)]
mod tests;
