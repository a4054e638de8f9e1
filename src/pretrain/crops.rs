//! VoCo's crop geometry and per-crop augmentation (nnssl's `VocoTransform`).
//!
//! A training patch is tiled by a regular grid of **base crops** (nnssl: a 64 × 256 × 256
//! `[D, H, W]` patch in 1 × 4 × 4 crops of 64³). **Target crops** of the same size sit at
//! uniformly random integer offsets inside the patch; the network learns to predict, for every
//! target, how much of it lies in each base: `y[t][k] = |t ∩ k| / crop volume`. Because the bases
//! tile the patch, every target's labels sum to 1.
//!
//! Each crop is then augmented on its own ([`augment_crop`], after the labels are computed), in
//! nnssl's order: Gaussian noise, Gaussian blur, multiplicative brightness, contrast,
//! low-resolution simulation, inverted gamma, gamma, mirroring per axis, rot90 in the in-plane
//! (H–W) axes. The intensity formulas are those of [`crate::train::augment`], whose helpers do
//! the work here.

use crate::train::augment::{below_or_above_one, uniform};
use std::collections::BTreeMap;

use ndarray::{Array4, Axis, Slice};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::genesis::{PretrainDataError, VoxelBox};
use crate::train::Patch;
use crate::train::augment::{
    contrast, gamma, gaussian_blur, gaussian_noise, mirror, rot90, simulate_low_resolution,
};
use crate::volume::Interpolation;

const AXIS_NAMES: [&str; 3] = ["D", "H", "W"];

/// VoCo's crop layout: a patch, the grid of base crops tiling it and the number of targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocoGeometry {
    /// Training patch `[D, H, W]` (nnssl: 64 × 256 × 256).
    pub patch: [usize; 3],
    /// Base crops per axis `[D, H, W]`; they tile the patch (nnssl: 1 × 4 × 4).
    pub bases: [usize; 3],
    /// Target crops per patch (nnssl: 4).
    pub targets: usize,
}

impl Default for VocoGeometry {
    fn default() -> Self {
        VocoGeometry {
            patch: [64, 256, 256],
            bases: [1, 4, 4],
            targets: 4,
        }
    }
}

impl VocoGeometry {
    /// Check that the base grid tiles the patch exactly and that there is at least one target.
    pub fn validate(&self) -> Result<(), PretrainDataError> {
        let (patch, bases) = (self.patch, self.bases);
        if self.targets == 0 {
            return Err(PretrainDataError::config(
                "voco.targets",
                "must be at least 1 target crop per patch",
            ));
        }
        for a in 0..3 {
            let (p, g, name) = (patch[a], bases[a], AXIS_NAMES[a]);
            if g == 0 {
                return Err(PretrainDataError::config(
                    "voco.bases",
                    format!("the base grid {bases:?} has no crops on {name}; use at least 1"),
                ));
            }
            if p < g {
                return Err(PretrainDataError::config(
                    "voco.patch",
                    format!(
                        "the patch {patch:?} is smaller than VoCo's base grid {bases:?}: \
                         {p} voxels on {name} cannot hold {g} crops"
                    ),
                ));
            }
            if p % g != 0 {
                return Err(PretrainDataError::config(
                    "voco.patch",
                    format!(
                        "the patch {patch:?} is not divisible by VoCo's base grid {bases:?}: \
                         {p} voxels on {name} do not split into {g} equal crops; use a \
                         multiple of {g}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The size `[D, H, W]` of every crop (base and target): the patch divided by the grid.
    pub fn crop_size(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.patch[a] / self.bases[a].max(1))
    }

    /// The base crops: the regular tiling, D-major (index `(i·gh + j)·gw + k`).
    pub fn base_boxes(&self) -> Vec<VoxelBox> {
        let c = self.crop_size();
        let mut boxes = Vec::with_capacity(self.bases.iter().product());
        for i in 0..self.bases[0] {
            for j in 0..self.bases[1] {
                for k in 0..self.bases[2] {
                    let origin = [i * c[0], j * c[1], k * c[2]];
                    boxes.push(crop_at(origin, c));
                }
            }
        }
        boxes
    }

    /// `targets` crops of the crop size at uniformly random integer offsets inside the patch.
    pub fn random_target_boxes<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<VoxelBox> {
        let c = self.crop_size();
        (0..self.targets)
            .map(|_| {
                let origin: [usize; 3] = std::array::from_fn(|a| {
                    rng.random_range(0..=self.patch[a].saturating_sub(c[a]))
                });
                crop_at(origin, c)
            })
            .collect()
    }
}

fn crop_at(origin: [usize; 3], size: [usize; 3]) -> VoxelBox {
    [
        origin[0],
        origin[1],
        origin[2],
        origin[0] + size[0],
        origin[1] + size[1],
        origin[2] + size[2],
    ]
}

fn volume(b: &VoxelBox) -> usize {
    (0..3).map(|a| b[a + 3].saturating_sub(b[a])).product()
}

/// VoCo's labels: `y[t][k] = |targets[t] ∩ bases[k]| / |targets[t]|` (0 for an empty target).
pub fn overlap_labels(targets: &[VoxelBox], bases: &[VoxelBox]) -> Vec<Vec<f32>> {
    targets
        .iter()
        .map(|t| {
            let size = volume(t);
            bases
                .iter()
                .map(|k| {
                    let overlap: usize = (0..3)
                        .map(|a| t[a + 3].min(k[a + 3]).saturating_sub(t[a].max(k[a])))
                        .product();
                    if size == 0 {
                        0.0
                    } else {
                        (overlap as f64 / size as f64) as f32
                    }
                })
                .collect()
        })
        .collect()
}

/// The box `b` of `image` (`[C, D, H, W]`) as a new `[C, d, h, w]` array; parts of the box
/// outside the image are 0.
pub fn crop(image: &Array4<f32>, b: &VoxelBox) -> Array4<f32> {
    let (channels, d, h, w) = image.dim();
    let extent = [d, h, w];
    let size: [usize; 3] = std::array::from_fn(|a| b[a + 3].saturating_sub(b[a]));
    let mut out = Array4::zeros((channels, size[0], size[1], size[2]));
    // The part of the box inside the image, in image and in crop coordinates (empty when the
    // box starts beyond the image).
    let from: [usize; 3] = std::array::from_fn(|a| b[a].min(extent[a]));
    let to: [usize; 3] = std::array::from_fn(|a| b[a + 3].min(extent[a]).max(from[a]));
    let shift: [usize; 3] = std::array::from_fn(|a| b[a].min(from[a]));
    let source = image.slice_each_axis(|ax| match ax.axis.index() {
        0 => Slice::from(..),
        i => Slice::from(from[i - 1]..to[i - 1]),
    });
    out.slice_each_axis_mut(|ax| match ax.axis.index() {
        0 => Slice::from(..),
        i => Slice::from(from[i - 1] - shift[i - 1]..to[i - 1] - shift[i - 1]),
    })
    .assign(&source);
    out
}

/// VoCo's per-crop augmentation settings; the defaults are nnssl's `VocoTransform` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VocoAugmentConfig {
    /// Probability of additive Gaussian noise (nnssl: 0.1).
    pub noise_probability: f64,
    /// Range of the noise standard deviation (nnssl: 0 – 0.1).
    pub noise_std: [f64; 2],
    /// Probability of Gaussian blur per crop (nnssl: 0.2).
    pub blur_probability: f64,
    /// Probability of blurring each channel of a blurred crop (nnssl: 0.5).
    pub blur_channel_probability: f64,
    /// Range of the blur σ in voxels, drawn per channel (nnssl: 0.5 – 1).
    pub blur_sigma: [f64; 2],
    /// Probability of multiplicative brightness, a factor per channel (nnssl: 0.15).
    pub brightness_probability: f64,
    /// Range of the brightness factor (nnssl: 0.75 – 1.25).
    pub brightness_range: [f64; 2],
    /// Probability of contrast augmentation (nnssl: 0.15).
    pub contrast_probability: f64,
    /// Range of the contrast factor (nnssl: 0.75 – 1.25).
    pub contrast_range: [f64; 2],
    /// Probability of low-resolution simulation per crop (nnssl: 0.1).
    pub low_resolution_probability: f64,
    /// Probability of simulating low resolution in each channel of such a crop (nnssl: 0.5).
    pub low_resolution_channel_probability: f64,
    /// Range of the zoom factor (nnssl: 0.5 – 1): nearest down to `round(size · zoom)`, back up
    /// linearly (nnssl upsamples with cubic splines).
    pub low_resolution_zoom: [f64; 2],
    /// Probability of gamma on the inverted crop, statistics retained (nnssl: 0.1).
    pub inverted_gamma_probability: f64,
    /// Probability of gamma, statistics retained (nnssl: 0.3).
    pub gamma_probability: f64,
    /// Range of γ (nnssl: 0.7 – 1.5).
    pub gamma_range: [f64; 2],
    /// Probability of mirroring, drawn per axis (nnssl: 0.5).
    pub mirror_probability: f64,
    /// Probability of 1–3 quarter turns in the H–W plane, applied only when H = W (nnssl: 0.3).
    pub rot90_probability: f64,
}

impl Default for VocoAugmentConfig {
    fn default() -> Self {
        VocoAugmentConfig {
            noise_probability: 0.1,
            noise_std: [0.0, 0.1],
            blur_probability: 0.2,
            blur_channel_probability: 0.5,
            blur_sigma: [0.5, 1.0],
            brightness_probability: 0.15,
            brightness_range: [0.75, 1.25],
            contrast_probability: 0.15,
            contrast_range: [0.75, 1.25],
            low_resolution_probability: 0.1,
            low_resolution_channel_probability: 0.5,
            low_resolution_zoom: [0.5, 1.0],
            inverted_gamma_probability: 0.1,
            gamma_probability: 0.3,
            gamma_range: [0.7, 1.5],
            mirror_probability: 0.5,
            rot90_probability: 0.3,
        }
    }
}

impl VocoAugmentConfig {
    /// No augmentation: every probability 0.
    pub fn none() -> Self {
        VocoAugmentConfig {
            noise_probability: 0.0,
            blur_probability: 0.0,
            brightness_probability: 0.0,
            contrast_probability: 0.0,
            low_resolution_probability: 0.0,
            inverted_gamma_probability: 0.0,
            gamma_probability: 0.0,
            mirror_probability: 0.0,
            rot90_probability: 0.0,
            ..Default::default()
        }
    }

    /// Check that probabilities lie in [0, 1] and ranges are ordered and positive where needed.
    pub fn validate(&self) -> Result<(), PretrainDataError> {
        let field = |name: &str| format!("voco.augment.{name}");
        for (name, p) in [
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
                return Err(PretrainDataError::config(
                    field(name),
                    format!("{p} is not a probability in [0, 1]"),
                ));
            }
        }
        for (name, r, min, max) in [
            ("noise_std", self.noise_std, 0.0, f64::MAX),
            ("blur_sigma", self.blur_sigma, 0.0, f64::MAX),
            ("brightness_range", self.brightness_range, 0.0, f64::MAX),
            ("contrast_range", self.contrast_range, 0.0, f64::MAX),
            (
                "low_resolution_zoom",
                self.low_resolution_zoom,
                f64::MIN_POSITIVE,
                1.0,
            ),
            ("gamma_range", self.gamma_range, f64::MIN_POSITIVE, f64::MAX),
        ] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] >= min && r[0] <= r[1] && r[1] <= max)
            {
                return Err(PretrainDataError::config(
                    field(name),
                    format!("{r:?} must be an ordered range within [{min}, {max}]"),
                ));
            }
        }
        Ok(())
    }
}

/// Augment one VoCo crop (`[C, D, H, W]`) in place with `config`'s transforms, in nnssl's order.
pub fn augment_crop<R: Rng + ?Sized>(
    crop: &mut Array4<f32>,
    rng: &mut R,
    config: &VocoAugmentConfig,
) {
    let channels = crop.dim().0;
    if rng.random::<f64>() < config.noise_probability {
        let std = uniform(rng, config.noise_std);
        gaussian_noise(crop, std, rng);
    }
    if rng.random::<f64>() < config.blur_probability {
        for c in 0..channels {
            if rng.random::<f64>() < config.blur_channel_probability {
                let sigma = uniform(rng, config.blur_sigma);
                let mut channel = crop.index_axis(Axis(0), c).to_owned();
                gaussian_blur(&mut channel, sigma);
                crop.index_axis_mut(Axis(0), c).assign(&channel);
            }
        }
    }
    if rng.random::<f64>() < config.brightness_probability {
        for mut channel in crop.outer_iter_mut() {
            let factor = uniform(rng, config.brightness_range) as f32;
            channel.mapv_inplace(|v| v * factor);
        }
    }
    if rng.random::<f64>() < config.contrast_probability {
        for c in 0..channels {
            let factor = below_or_above_one(rng, config.contrast_range);
            contrast(crop, c, factor);
        }
    }
    if rng.random::<f64>() < config.low_resolution_probability {
        for c in 0..channels {
            if rng.random::<f64>() < config.low_resolution_channel_probability {
                let zoom = uniform(rng, config.low_resolution_zoom);
                // Back up linearly (batchgenerators: cubic), as VoCo's crops always did.
                simulate_low_resolution(crop, c, zoom, Interpolation::Linear);
            }
        }
    }
    if rng.random::<f64>() < config.inverted_gamma_probability {
        for c in 0..channels {
            let g = below_or_above_one(rng, config.gamma_range);
            gamma(crop, c, g, true);
        }
    }
    if rng.random::<f64>() < config.gamma_probability {
        for c in 0..channels {
            let g = below_or_above_one(rng, config.gamma_range);
            gamma(crop, c, g, false);
        }
    }
    for axis in 0..3 {
        if rng.random::<f64>() < config.mirror_probability {
            with_patch(crop, |patch| mirror(patch, axis));
        }
    }
    if rng.random::<f64>() < config.rot90_probability {
        let turns = rng.random_range(1..4);
        let (_, _, h, w) = crop.dim();
        // A quarter turn of a non-square plane would change the crop's shape.
        if h == w {
            with_patch(crop, |patch| rot90(patch, [1, 2], turns));
        }
    }
}

/// Run a spatial transform of [`crate::train::augment`], which works on a training [`Patch`],
/// on a bare image (no mask, no boxes).
fn with_patch(image: &mut Array4<f32>, transform: impl FnOnce(&mut Patch)) {
    let mut patch = Patch {
        case_id: String::new(),
        origin: [0; 3],
        foreground: false,
        image: std::mem::take(image),
        instances: None,
        boxes: Vec::new(),
        classes: Vec::new(),
        instance_ids: Vec::new(),
        instance_classes: BTreeMap::new(),
    };
    transform(&mut patch);
    *image = patch.image;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn geometry(patch: [usize; 3], bases: [usize; 3], targets: usize) -> VocoGeometry {
        VocoGeometry {
            patch,
            bases,
            targets,
        }
    }

    fn arange(dim: (usize, usize, usize, usize)) -> Array4<f32> {
        let n = dim.0 * dim.1 * dim.2 * dim.3;
        Array4::from_shape_vec(dim, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn bases_tile_the_patch() {
        for g in [
            VocoGeometry::default(),
            geometry([16, 32, 32], [1, 2, 2], 4),
            geometry([12, 18, 8], [3, 2, 4], 1),
        ] {
            g.validate().unwrap();
            let bases = g.base_boxes();
            assert_eq!(bases.len(), g.bases.iter().product::<usize>());
            let mut cover = ndarray::Array3::<u8>::zeros(g.patch);
            for b in &bases {
                assert_eq!(volume(b), g.crop_size().iter().product::<usize>());
                cover
                    .slice_mut(s![b[0]..b[3], b[1]..b[4], b[2]..b[5]])
                    .mapv_inplace(|v| v + 1);
            }
            assert!(
                cover.iter().all(|&v| v == 1),
                "{g:?}: every voxel in exactly one base"
            );
        }
    }

    #[test]
    fn overlap_labels_sum_to_one_per_target() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for g in [
            VocoGeometry::default(),
            geometry([16, 32, 32], [1, 2, 2], 4),
            geometry([12, 18, 8], [3, 2, 4], 8),
        ] {
            let bases = g.base_boxes();
            for _ in 0..50 {
                let targets = g.random_target_boxes(&mut rng);
                let labels = overlap_labels(&targets, &bases);
                assert_eq!(labels.len(), g.targets);
                for row in &labels {
                    assert_eq!(row.len(), bases.len());
                    assert!(row.iter().all(|&y| (0.0..=1.0).contains(&y)));
                    let total: f64 = row.iter().map(|&y| y as f64).sum();
                    assert!((total - 1.0).abs() < 1e-6, "{g:?}: {row:?}");
                }
            }
        }
    }

    #[test]
    fn a_target_equal_to_a_base_is_labelled_one_hot() {
        let g = geometry([16, 32, 32], [1, 2, 2], 4);
        let bases = g.base_boxes();
        let labels = overlap_labels(&bases, &bases);
        for (t, row) in labels.iter().enumerate() {
            for (k, &y) in row.iter().enumerate() {
                assert_eq!(y, if t == k { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn overlap_labels_are_volume_fractions() {
        // Crops of 2 × 2 × 2 in a 2 × 4 × 4 patch; a target shifted by one voxel in H and W
        // covers a quarter of each of the four bases.
        let g = geometry([2, 4, 4], [1, 2, 2], 1);
        let labels = overlap_labels(&[[0, 1, 1, 2, 3, 3]], &g.base_boxes());
        assert_eq!(labels, vec![vec![0.25; 4]]);
        let labels = overlap_labels(&[[0, 0, 1, 2, 2, 3]], &g.base_boxes());
        assert_eq!(labels, vec![vec![0.5, 0.5, 0.0, 0.0]]);
    }

    #[test]
    fn targets_are_crops_anywhere_inside_the_patch() {
        let g = geometry([8, 20, 12], [2, 4, 3], 4);
        let size = g.crop_size();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (mut lowest, mut highest) = ([usize::MAX; 3], [0; 3]);
        for _ in 0..500 {
            for t in g.random_target_boxes(&mut rng) {
                for a in 0..3 {
                    assert_eq!(t[a + 3] - t[a], size[a]);
                    assert!(t[a + 3] <= g.patch[a]);
                    lowest[a] = lowest[a].min(t[a]);
                    highest[a] = highest[a].max(t[a]);
                }
            }
        }
        assert_eq!(lowest, [0; 3]);
        assert_eq!(highest, [4, 15, 8]);
    }

    #[test]
    fn geometry_errors_name_the_patch_and_the_grid() {
        let small = geometry([1, 2, 2], [1, 4, 4], 4).validate().unwrap_err();
        let message = small.to_string();
        assert!(message.contains("voco.patch"), "{message}");
        assert!(
            message.contains("smaller than VoCo's base grid"),
            "{message}"
        );
        assert!(
            message.contains("[1, 2, 2]") && message.contains("[1, 4, 4]"),
            "{message}"
        );
        let uneven = geometry([16, 30, 32], [1, 4, 4], 4).validate().unwrap_err();
        let message = uneven.to_string();
        assert!(message.contains("not divisible"), "{message}");
        assert!(
            message.contains("[16, 30, 32]") && message.contains("on H"),
            "{message}"
        );
        let empty = geometry([16, 32, 32], [1, 0, 2], 4).validate().unwrap_err();
        assert!(empty.to_string().contains("voco.bases"), "{empty}");
        let no_targets = geometry([16, 32, 32], [1, 2, 2], 0).validate().unwrap_err();
        assert!(
            no_targets.to_string().contains("voco.targets"),
            "{no_targets}"
        );
    }

    #[test]
    fn crops_hold_the_box_and_zeros_outside_the_image() {
        let image = arange((2, 6, 7, 8));
        let b = [1, 2, 3, 4, 6, 8];
        let c = crop(&image, &b);
        assert_eq!(c.dim(), (2, 3, 4, 5));
        assert_eq!(c, image.slice(s![.., 1..4, 2..6, 3..8]));
        // Partly outside: the inside part, then zeros.
        let c = crop(&image, &[4, 5, 6, 8, 9, 10]);
        assert_eq!(c.dim(), (2, 4, 4, 4));
        assert_eq!(
            c.slice(s![.., ..2, ..2, ..2]),
            image.slice(s![.., 4.., 5.., 6..])
        );
        assert_eq!(c.sum(), image.slice(s![.., 4.., 5.., 6..]).sum());
        // Wholly outside: zeros.
        assert!(
            crop(&image, &[10, 0, 0, 12, 2, 2])
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    fn flipped_all(image: &Array4<f32>) -> Array4<f32> {
        let mut view = image.view();
        for a in 1..4 {
            view.invert_axis(Axis(a));
        }
        view.to_owned()
    }

    #[test]
    fn no_augmentation_is_the_identity() {
        let image = arange((2, 4, 6, 6));
        let mut c = image.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            augment_crop(&mut c, &mut rng, &VocoAugmentConfig::none());
        }
        assert_eq!(c, image);
    }

    #[test]
    fn mirroring_flips_every_axis_when_certain() {
        let image = arange((2, 4, 5, 6));
        let config = VocoAugmentConfig {
            mirror_probability: 1.0,
            ..VocoAugmentConfig::none()
        };
        let mut c = image.clone();
        augment_crop(&mut c, &mut ChaCha8Rng::seed_from_u64(4), &config);
        assert_eq!(c, flipped_all(&image));
    }

    #[test]
    fn rot90_turns_square_in_plane_crops_only() {
        let config = VocoAugmentConfig {
            rot90_probability: 1.0,
            ..VocoAugmentConfig::none()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let oblong = arange((1, 3, 4, 5));
        let mut c = oblong.clone();
        augment_crop(&mut c, &mut rng, &config);
        assert_eq!(c, oblong, "H ≠ W: no quarter turn");
        let square = arange((1, 3, 4, 4));
        let turns: Vec<Array4<f32>> = (1..4)
            .map(|k| {
                let mut turned = square.view();
                for _ in 0..k {
                    turned.swap_axes(2, 3);
                    turned.invert_axis(Axis(2));
                }
                turned.to_owned()
            })
            .collect();
        let mut seen = [false; 3];
        for _ in 0..30 {
            let mut c = square.clone();
            augment_crop(&mut c, &mut rng, &config);
            let k = turns
                .iter()
                .position(|t| *t == c)
                .expect("a quarter turn in H–W");
            seen[k] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn low_resolution_keeps_the_shape_and_constants() {
        let config = VocoAugmentConfig {
            low_resolution_probability: 1.0,
            low_resolution_channel_probability: 1.0,
            low_resolution_zoom: [0.5, 0.5],
            ..VocoAugmentConfig::none()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut constant = Array4::<f32>::from_elem((2, 8, 8, 8), 3.5);
        augment_crop(&mut constant, &mut rng, &config);
        assert!(constant.iter().all(|&v| (v - 3.5).abs() < 1e-6));
        let textured = Array4::from_shape_fn((1, 8, 8, 8), |(_, z, y, x)| ((z + y + x) % 2) as f32);
        let mut c = textured.clone();
        augment_crop(&mut c, &mut rng, &config);
        assert_eq!(c.dim(), textured.dim());
        assert_ne!(c, textured);
    }

    #[test]
    fn default_augmentation_is_deterministic_and_keeps_the_shape() {
        let image = Array4::from_shape_fn((1, 16, 16, 16), |(_, z, y, x)| {
            ((z * 3 + y * 5 + x * 7) % 11) as f32 / 11.0
        });
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..10)
                .map(|_| {
                    let mut c = image.clone();
                    augment_crop(&mut c, &mut rng, &VocoAugmentConfig::default());
                    c
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(7), run(7));
        assert_eq!(a, b);
        assert!(
            a.iter()
                .all(|c| c.dim() == image.dim() && c.iter().all(|v| v.is_finite()))
        );
        assert!(a.iter().any(|c| *c != image));
    }

    #[test]
    fn augmentation_settings_are_checked() {
        VocoAugmentConfig::default().validate().unwrap();
        let bad = VocoAugmentConfig {
            gamma_probability: 1.2,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("voco.augment.gamma_probability")
        );
        let bad = VocoAugmentConfig {
            low_resolution_zoom: [0.5, 1.5],
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("low_resolution_zoom")
        );
        let err = serde_json::from_str::<VocoAugmentConfig>(r#"{"mirror": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("mirror"), "{err}");
    }
}
