//! Data augmentation of training patches (nnDetection's `BaseMoreAug` pipeline, minus the
//! arbitrary-angle rotation and scaling, plus optional rot90).
//!
//! Applied per patch, in nnDetection's order: rot90 (spatial), Gaussian noise, Gaussian blur,
//! multiplicative brightness, contrast, inverted gamma, gamma, mirroring. Spatial transforms
//! move the image, the instance mask and the boxes together, exactly (boxes are half-open
//! voxel boxes, so a mirrored box `[b0, b1)` on an axis of extent `P` becomes `[P − b1, P − b0)`).
//! Intensity transforms follow batchgenerators' formulas (per channel where it is per channel):
//! - noise: `x + N(0, σ²)`, `σ ~ U(noise_std)`;
//! - blur: per channel with probability `blur_channel_probability`, Gaussian of `σ ~
//!   U(blur_sigma)` (same σ on every axis, scipy's `reflect` border, truncated at 4σ);
//! - brightness: `x · m`, `m ~ U(brightness_range)` per channel;
//! - contrast: `(x − mean) · f + mean`, clipped to the channel's former range; `f` is drawn
//!   below 1 or above 1 with equal probability;
//! - gamma: `((x − min) / (range + 1e-7))^γ · range + min`, then mean and standard deviation
//!   restored ("retain stats"); the inverted variant applies it to `−x`; `γ` is drawn below 1
//!   or above 1 with equal probability.

use ndarray::{Array3, Array4, ArrayViewMut1, Axis};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::sampler::Patch;
use crate::volume::boxes::Box3;

/// Augmentation settings: a probability and a range per transform. Defaults are
/// nnDetection's (`base_more.yaml`), except rot90 (off; nnDetection rotates by ±30° instead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Master switch (false: patches are used as cut).
    pub enabled: bool,
    /// Probability of mirroring, drawn per axis (nnDetection: 0.5).
    pub mirror_probability: f64,
    /// Probability of a rot90 by 90°, 180° or 270° (nnDetection: no rot90, 0).
    pub rot90_probability: f64,
    /// Planes `[axis, axis]` (0 = D, 1 = H, 2 = W) rot90 may turn; both axes must have the same
    /// patch extent (default: the in-plane H–W plane only, since D often has another spacing).
    pub rot90_planes: Vec<[usize; 2]>,
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
    /// Probability of gamma with retained statistics (nnDetection: 0.3).
    pub gamma_probability: f64,
    /// Probability of gamma on the inverted image (nnDetection: 0.1).
    pub inverted_gamma_probability: f64,
    /// Range of γ (nnDetection: 0.7 – 1.5).
    pub gamma_range: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mirror_probability: 0.5,
            rot90_probability: 0.0,
            rot90_planes: vec![[1, 2]],
            noise_probability: 0.1,
            noise_std: [0.0, 0.1],
            blur_probability: 0.2,
            blur_channel_probability: 0.5,
            blur_sigma: [0.5, 1.0],
            brightness_probability: 0.15,
            brightness_range: [0.75, 1.25],
            contrast_probability: 0.15,
            contrast_range: [0.75, 1.25],
            gamma_probability: 0.3,
            inverted_gamma_probability: 0.1,
            gamma_range: [0.7, 1.5],
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            enabled: false,
            ..Default::default()
        }
    }

    /// Check the settings for patches of size `patch`.
    pub fn validate(&self, patch: [usize; 3]) -> Result<(), TrainError> {
        let field = |name: &str| format!("augment.{name}");
        for (name, p) in [
            ("mirror_probability", self.mirror_probability),
            ("rot90_probability", self.rot90_probability),
            ("noise_probability", self.noise_probability),
            ("blur_probability", self.blur_probability),
            ("blur_channel_probability", self.blur_channel_probability),
            ("brightness_probability", self.brightness_probability),
            ("contrast_probability", self.contrast_probability),
            ("gamma_probability", self.gamma_probability),
            (
                "inverted_gamma_probability",
                self.inverted_gamma_probability,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(TrainError::config(
                    field(name),
                    format!("{p} is not a probability"),
                ));
            }
        }
        for (name, r, min) in [
            ("noise_std", self.noise_std, 0.0),
            ("blur_sigma", self.blur_sigma, 0.0),
            ("brightness_range", self.brightness_range, 0.0),
            ("contrast_range", self.contrast_range, 0.0),
            ("gamma_range", self.gamma_range, f64::MIN_POSITIVE),
        ] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] >= min && r[0] <= r[1]) {
                return Err(TrainError::config(
                    field(name),
                    format!("{r:?} must be an ordered range of values ≥ {min}"),
                ));
            }
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

/// Apply the augmentation pipeline to `patch` (see the module documentation).
pub fn augment<R: Rng + ?Sized>(patch: &mut Patch, config: &AugmentConfig, rng: &mut R) {
    if !config.enabled {
        return;
    }
    let size = patch.size();
    if config.rot90_probability > 0.0 && rng.random::<f64>() < config.rot90_probability {
        let plane = config.rot90_planes[rng.random_range(0..config.rot90_planes.len())];
        if size[plane[0]] == size[plane[1]] {
            rot90(patch, plane, rng.random_range(1..4));
        }
    }
    if rng.random::<f64>() < config.noise_probability {
        let std = uniform(rng, config.noise_std);
        gaussian_noise(&mut patch.image, std, rng);
    }
    if rng.random::<f64>() < config.blur_probability {
        for c in 0..patch.image.dim().0 {
            if rng.random::<f64>() < config.blur_channel_probability {
                let sigma = uniform(rng, config.blur_sigma);
                let mut channel = patch.image.index_axis(Axis(0), c).to_owned();
                gaussian_blur(&mut channel, sigma);
                patch.image.index_axis_mut(Axis(0), c).assign(&channel);
            }
        }
    }
    if rng.random::<f64>() < config.brightness_probability {
        for mut channel in patch.image.outer_iter_mut() {
            let m = uniform(rng, config.brightness_range) as f32;
            channel.mapv_inplace(|v| v * m);
        }
    }
    if rng.random::<f64>() < config.contrast_probability {
        for c in 0..patch.image.dim().0 {
            let factor = below_or_above_one(rng, config.contrast_range);
            contrast(&mut patch.image, c, factor);
        }
    }
    if rng.random::<f64>() < config.inverted_gamma_probability {
        for c in 0..patch.image.dim().0 {
            let g = below_or_above_one(rng, config.gamma_range);
            gamma(&mut patch.image, c, g, true);
        }
    }
    if rng.random::<f64>() < config.gamma_probability {
        for c in 0..patch.image.dim().0 {
            let g = below_or_above_one(rng, config.gamma_range);
            gamma(&mut patch.image, c, g, false);
        }
    }
    for axis in 0..3 {
        if rng.random::<f64>() < config.mirror_probability {
            mirror(patch, axis);
        }
    }
}

/// A uniform draw in `[range[0], range[1])` (`range[0]` when the range is empty).
pub(crate) fn uniform<R: Rng + ?Sized>(rng: &mut R, range: [f64; 2]) -> f64 {
    if range[0] >= range[1] {
        range[0]
    } else {
        rng.random_range(range[0]..range[1])
    }
}

/// batchgenerators' draw: below 1 or above 1 with equal probability when the range spans 1.
pub(crate) fn below_or_above_one<R: Rng + ?Sized>(rng: &mut R, range: [f64; 2]) -> f64 {
    if rng.random::<f64>() < 0.5 && range[0] < 1.0 {
        uniform(rng, [range[0], 1.0_f64.min(range[1])])
    } else {
        uniform(rng, [range[0].max(1.0), range[1].max(range[0].max(1.0))])
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Mirror `patch` along spatial axis `axis` (0 = D, 1 = H, 2 = W): image, mask and boxes.
pub fn mirror(patch: &mut Patch, axis: usize) {
    let extent = patch.size()[axis] as f64;
    patch.image.invert_axis(Axis(axis + 1));
    patch.image = patch.image.as_standard_layout().into_owned();
    if let Some(mask) = patch.instances.as_mut() {
        mask.invert_axis(Axis(axis));
        *mask = mask.as_standard_layout().into_owned();
    }
    for b in &mut patch.boxes {
        let (lo, hi) = (b[axis], b[axis + 3]);
        b[axis] = extent - hi;
        b[axis + 3] = extent - lo;
    }
}

/// Rotate `patch` by `k` quarter turns in the plane of spatial axes `plane` (equal extents):
/// one turn moves voxel `(x_a, x_b)` to `(P − 1 − x_b, x_a)`.
pub fn rot90(patch: &mut Patch, plane: [usize; 2], k: usize) {
    let [a, b] = plane;
    let extent = patch.size()[a] as f64;
    debug_assert_eq!(patch.size()[a], patch.size()[b]);
    for _ in 0..k % 4 {
        let mut image = patch.image.view();
        image.swap_axes(a + 1, b + 1);
        image.invert_axis(Axis(a + 1));
        patch.image = image.as_standard_layout().into_owned();
        if let Some(mask) = patch.instances.as_mut() {
            let mut view = mask.view();
            view.swap_axes(a, b);
            view.invert_axis(Axis(a));
            *mask = view.as_standard_layout().into_owned();
        }
        for bx in &mut patch.boxes {
            let old: Box3 = *bx;
            bx[a] = extent - old[b + 3];
            bx[a + 3] = extent - old[b];
            bx[b] = old[a];
            bx[b + 3] = old[a + 3];
        }
    }
}

/// Add zero-mean Gaussian noise of standard deviation `std` to every voxel.
pub fn gaussian_noise<R: Rng + ?Sized>(image: &mut Array4<f32>, std: f64, rng: &mut R) {
    if std <= 0.0 {
        return;
    }
    for v in image.iter_mut() {
        *v += (standard_normal(rng) * std) as f32;
    }
}

fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f64, f64, f32, f32) {
    let (mut n, mut sum, mut min, mut max) = (0usize, 0.0f64, f32::INFINITY, f32::NEG_INFINITY);
    for v in values.clone() {
        n += 1;
        sum += f64::from(v);
        min = min.min(v);
        max = max.max(v);
    }
    let mean = sum / n.max(1) as f64;
    let var = values.map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
    (mean, var.sqrt(), min, max)
}

/// Contrast of channel `c`: `(x − mean) · factor + mean`, clipped to the former range.
pub fn contrast(image: &mut Array4<f32>, c: usize, factor: f64) {
    let mut channel = image.index_axis_mut(Axis(0), c);
    let (mean, _, min, max) = mean_std(channel.iter().copied());
    channel.mapv_inplace(|v| (((f64::from(v) - mean) * factor + mean) as f32).clamp(min, max));
}

/// Gamma of channel `c` with retained mean and standard deviation; `inverted` applies it to
/// the negated image (and negates back).
pub fn gamma(image: &mut Array4<f32>, c: usize, gamma: f64, inverted: bool) {
    let mut channel = image.index_axis_mut(Axis(0), c);
    if inverted {
        channel.mapv_inplace(|v| -v);
    }
    let (mean, std, min, max) = mean_std(channel.iter().copied());
    let range = f64::from(max) - f64::from(min);
    channel.mapv_inplace(|v| {
        let x = ((f64::from(v) - f64::from(min)) / (range + 1e-7)).max(0.0);
        (x.powf(gamma) * range + f64::from(min)) as f32
    });
    let (new_mean, new_std, _, _) = mean_std(channel.iter().copied());
    channel.mapv_inplace(|v| (((f64::from(v) - new_mean) / (new_std + 1e-8)) * std + mean) as f32);
    if inverted {
        channel.mapv_inplace(|v| -v);
    }
}

/// Gaussian filter of `volume` with `sigma` voxels on every axis (scipy `gaussian_filter`,
/// mode `reflect`, truncate 4).
pub fn gaussian_blur(volume: &mut Array3<f32>, sigma: f64) {
    if sigma <= 0.0 {
        return;
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut kernel: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let mut buffer = Vec::new();
    for axis in 0..3 {
        for lane in volume.lanes_mut(Axis(axis)) {
            blur_lane(lane, &kernel, radius, &mut buffer);
        }
    }
}

fn blur_lane(mut lane: ArrayViewMut1<f32>, kernel: &[f64], radius: i64, buffer: &mut Vec<f32>) {
    let n = lane.len() as i64;
    buffer.clear();
    buffer.extend(lane.iter().copied());
    // scipy 'reflect': (d c b a | a b c d | d c b a), periodic with period 2n.
    let reflect = |i: i64| {
        let m = i.rem_euclid(2 * n);
        if m < n { m } else { 2 * n - 1 - m }
    };
    for (i, out) in lane.iter_mut().enumerate() {
        let mut acc = 0.0f64;
        for (j, k) in kernel.iter().enumerate() {
            let src = reflect(i as i64 + j as i64 - radius);
            acc += k * f64::from(buffer[src as usize]);
        }
        *out = acc as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::sampler::crop_patch;
    use crate::train::testing::{cube_case, mask_box};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A 16 × 20 × 20 patch with two objects, one cut by the border.
    fn patch() -> Patch {
        let case = cube_case(
            "a",
            [16, 20, 20],
            &[([2, 3, 5], [4, 6, 7], 0), ([9, 12, 1], [5, 3, 4], 1)],
        );
        crop_patch(&case, [0, 0, 0], [16, 20, 20], 0.0, true)
    }

    /// Every box encloses exactly the voxels of its instance, and the image's bright voxels
    /// are exactly the mask's foreground.
    fn assert_consistent(p: &Patch) {
        let mask = p.instances.as_ref().unwrap();
        for (b, &id) in p.boxes.iter().zip(&p.instance_ids) {
            let from_mask = mask_box(&mask.mapv(|v| u32::from(v) == id)).unwrap();
            assert_eq!(&from_mask, b, "instance {id}");
        }
        let bright = p.image.index_axis(Axis(0), 0).mapv(|v| v > 0.5);
        assert_eq!(bright, mask.mapv(|v| v > 0));
    }

    #[test]
    fn mirroring_moves_boxes_masks_and_images_together() {
        for axis in 0..3 {
            let mut p = patch();
            let before = p.clone();
            mirror(&mut p, axis);
            assert_consistent(&p);
            assert_ne!(p.image, before.image);
            mirror(&mut p, axis);
            assert_eq!(p, before, "mirroring twice is the identity");
        }
        // The concrete numbers for axis 2 (extent 20): [5, 12) → [8, 15).
        let mut p = patch();
        mirror(&mut p, 2);
        assert_eq!(p.boxes[0], [2.0, 3.0, 8.0, 6.0, 9.0, 15.0]);
    }

    #[test]
    fn rot90_moves_boxes_masks_and_images_together() {
        let mut p = patch();
        rot90(&mut p, [1, 2], 1);
        assert_consistent(&p);
        // (h, w) ranges [3, 9) × [5, 12) → h' = [20 − 12, 20 − 5) = [8, 15), w' = [3, 9).
        assert_eq!(p.boxes[0], [2.0, 8.0, 3.0, 6.0, 15.0, 9.0]);
        for k in 1..4 {
            let mut q = patch();
            rot90(&mut q, [2, 1], k);
            assert_consistent(&q);
        }
        let mut q = patch();
        rot90(&mut q, [1, 2], 4);
        assert_eq!(q, patch(), "four quarter turns are the identity");
        // On a cube patch every plane works.
        let case = cube_case("c", [12, 12, 12], &[([1, 2, 3], [2, 5, 4], 0)]);
        for plane in [[0, 1], [0, 2], [1, 2], [2, 0]] {
            let mut q = crop_patch(&case, [0, 0, 0], [12, 12, 12], 0.0, true);
            rot90(&mut q, plane, 3);
            assert_consistent(&q);
        }
    }

    #[test]
    fn the_full_pipeline_keeps_boxes_on_their_objects() {
        let mut cfg = AugmentConfig {
            rot90_probability: 0.5,
            ..Default::default()
        };
        // Intensity transforms off so "bright" still identifies the objects.
        cfg.noise_probability = 0.0;
        cfg.blur_probability = 0.0;
        cfg.contrast_probability = 0.0;
        cfg.gamma_probability = 0.0;
        cfg.inverted_gamma_probability = 0.0;
        cfg.brightness_probability = 0.0;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut changed = 0;
        for _ in 0..30 {
            let mut p = patch();
            augment(&mut p, &cfg, &mut rng);
            assert_consistent(&p);
            changed += usize::from(p != patch());
        }
        assert!(changed > 20, "most patches were transformed ({changed})");
        let mut p = patch();
        augment(&mut p, &AugmentConfig::none(), &mut rng);
        assert_eq!(p, patch());
    }

    #[test]
    fn intensity_transforms_leave_geometry_alone_and_do_what_they_say() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let cfg = AugmentConfig {
            mirror_probability: 0.0,
            noise_probability: 1.0,
            blur_probability: 1.0,
            blur_channel_probability: 1.0,
            brightness_probability: 1.0,
            contrast_probability: 1.0,
            gamma_probability: 1.0,
            inverted_gamma_probability: 1.0,
            ..Default::default()
        };
        let mut p = patch();
        augment(&mut p, &cfg, &mut rng);
        assert_eq!(p.boxes, patch().boxes);
        assert_eq!(p.instances, patch().instances);
        assert!(p.image.iter().all(|v| v.is_finite()));
        assert_ne!(p.image, patch().image);

        // Gamma with retained statistics keeps mean and standard deviation.
        let mut image = patch().image.mapv(|v| v * 3.0 + 0.25);
        image[[0, 0, 0, 0]] = 1.7;
        let (m0, s0, _, _) = mean_std(image.iter().copied());
        for inverted in [false, true] {
            let mut g = image.clone();
            gamma(&mut g, 0, 0.6, inverted);
            let (m1, s1, _, _) = mean_std(g.iter().copied());
            assert!(
                (m1 - m0).abs() < 1e-4 && (s1 - s0).abs() < 1e-4,
                "{m0} {s0} → {m1} {s1}"
            );
            assert_ne!(g, image);
        }
        // Contrast keeps the mean's neighbourhood and the range.
        let mut c = image.clone();
        contrast(&mut c, 0, 1.2);
        let (_, _, lo, hi) = mean_std(image.iter().copied());
        assert!(c.iter().all(|&v| v >= lo && v <= hi));
        // Noise has about the asked standard deviation.
        let mut z = Array4::<f32>::zeros((1, 16, 16, 16));
        gaussian_noise(&mut z, 0.1, &mut rng);
        let (m, s, _, _) = mean_std(z.iter().copied());
        assert!(m.abs() < 0.01 && (s - 0.1).abs() < 0.005, "{m} {s}");
    }

    #[test]
    fn blur_matches_scipy_gaussian_filter() {
        // scipy.ndimage.gaussian_filter(x, 1.0) (float64) for x = zeros((5, 5, 5)) with
        // x[2, 2, 2] = 1 and x[0, 0, 0] = 2.
        let mut x = Array3::<f32>::zeros((5, 5, 5));
        x[[2, 2, 2]] = 1.0;
        x[[0, 0, 0]] = 2.0;
        gaussian_blur(&mut x, 1.0);
        for (index, expected) in [
            ([2, 2, 2], 0.06389302764619494),
            ([0, 0, 0], 0.5267391230268205),
            ([4, 1, 0], 0.0008771365939110329),
        ] {
            let got = f64::from(x[index]);
            assert!(
                (got - expected).abs() < 1e-6,
                "{index:?}: {got} vs {expected}"
            );
        }
        let total: f32 = x.iter().sum();
        assert!(
            (total - 3.0).abs() < 1e-4,
            "reflect keeps the mass: {total}"
        );
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let cfg = AugmentConfig {
            rot90_probability: 0.2,
            ..Default::default()
        };
        assert!(cfg.validate([16, 32, 32]).is_ok());
        let err = cfg.validate([16, 32, 16]).unwrap_err().to_string();
        assert!(
            err.contains("augment.rot90_planes") && err.contains("unequal"),
            "{err}"
        );
        let err = AugmentConfig {
            gamma_range: [1.5, 0.7],
            ..Default::default()
        }
        .validate([8, 8, 8])
        .unwrap_err()
        .to_string();
        assert!(err.contains("augment.gamma_range"), "{err}");
        let err = AugmentConfig {
            noise_probability: 2.0,
            ..Default::default()
        }
        .validate([8, 8, 8])
        .unwrap_err()
        .to_string();
        assert!(err.contains("augment.noise_probability"), "{err}");
    }
}
