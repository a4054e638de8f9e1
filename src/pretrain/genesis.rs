//! Models Genesis corruption: the data side of the Models Genesis pre-training task.
//!
//! A patch is corrupted and the network learns to restore it (loss: plain MSE over the whole
//! volume). [`corrupt`] follows the original transforms (MrGiovanni/ModelsGenesis
//! `pytorch/utils.py`, which nnssl copies), per sample and in this order:
//!
//! 1. **flip**: repeat "with probability 0.4 flip a random spatial axis" at most 3 times; input
//!    and target are flipped alike, so the target is the flipped original;
//! 2. **local pixel shuffling** (p 0.5): boxes with sides uniform in `[1, ⌊edge/10⌋]` per axis at
//!    random positions; each box is read from the *original* patch, its voxels permuted and
//!    written into the working copy (later boxes overwrite earlier ones);
//! 3. **non-linear intensity** (p 0.9): a cubic Bézier curve through `(0,0)`, `(a,b)`, `(c,d)`,
//!    `(1,1)`, used as an increasing map, or with probability ½ as a decreasing
//!    (intensity-inverting) one; see [`BezierCurve`];
//! 4. **painting** (p 0.9): out-painting with share 0.8, otherwise in-painting; boxes keep a
//!    3-voxel margin to the patch border and noise is uniform in `[0, 1)`.
//!
//! Deliberate differences from the reference code, each for a reason:
//! - **Intensities are first windowed to `[0, 1]`** ([`rescale_to_unit`], 0.5/99.5 percentiles
//!   per channel). nnssl applies these transforms to z-scored patches, which is a bug: the Bézier
//!   map is defined on `[0, 1]` and clamps everything outside (most of a z-scored patch), and
//!   the `U[0, 1)` noise fills do not match z-score statistics. The original Models Genesis
//!   windowed CT to `[−1000, 1000]` HU and scaled to `[0, 1]`; a per-patch percentile window
//!   does the same for any modality. The target is the windowed (flipped) patch.
//! - **The local shuffle count scales with the patch volume**: `10,000 · V / 160³` (at least 1;
//!   exactly 10,000 at nnssl's 160³) instead of a fixed 10,000, so the shuffled fraction of a
//!   patch does not depend on its size (the original used 10,000 on 64×64×32 cubes, nnssl on
//!   160³ patches, 31× the volume). Switch it off with `local_shuffle_scale_to_volume: false`.
//! - **Flips pick one of the three spatial axes.** The original draws among axes 0–2 of its
//!   `[C, X, Y, Z]` sample: the channel axis (a no-op for one channel), X and Y, never Z.
//! - **Channels are treated alike**: the original shuffles channel 0 only and fills in-painting
//!   boxes with one noise block broadcast over channels; here every channel gets the same box
//!   permutation (voxels stay together across modalities) and its own noise.
//! - **The Bézier map uses 1,000 curve samples** instead of 100,000: within 6·10⁻⁵ of the exact
//!   map (see [`BezierCurve::sample`]), and its knots stay in L1 cache.
//! - **Buffers can be recycled**: [`corrupt_into`] writes into an existing sample, sparing a
//!   data loader two fresh patch-sized arrays (and their page faults) per sample.
//! - **Speed**: shuffle boxes are applied in parallel depth slabs, each box permuted by its own
//!   stream of one seeded generator; the Bézier map is applied through a bucket index over its
//!   knots (see [`IntensityMap`]); noise is drawn per depth plane from seeded streams. Results
//!   depend only on the caller's generator, never on the thread count.

use ndarray::{Array4, ArrayView4, ArrayViewMut3, ArrayViewMut4, Axis, Slice, Zip, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::volume::normalize::percentile;

mod bezier;
mod shuffle;
#[cfg(test)]
mod tests;

pub use bezier::{BezierCurve, IntensityMap};
pub use shuffle::{local_pixel_shuffle, random_shuffle_boxes};

/// A half-open integer voxel box `[d0, h0, w0, d1, h1, w1]`.
pub type VoxelBox = [usize; 6];

/// Errors of the pre-training data transforms (Models Genesis and VoCo).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PretrainDataError {
    /// A setting is outside its valid range; `field` names it (e.g. `genesis.flip_probability`).
    #[error("{field}: {message}")]
    Config {
        /// The offending setting.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An image, patch or box does not fit the transform.
    #[error("{0}")]
    Shape(String),
    /// The image holds a NaN or infinite voxel.
    #[error(
        "voxel {index:?} ([c, d, h, w]) is {value}; clean the volume first (e.g. Volume::replace_non_finite)"
    )]
    NonFinite {
        /// Its index `[c, d, h, w]`.
        index: [usize; 4],
        /// Its value.
        value: f32,
    },
}

impl PretrainDataError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        PretrainDataError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The patch volume (nnssl's 160³) at which `local_shuffle_iterations` applies unscaled.
pub const LOCAL_SHUFFLE_REFERENCE_VOLUME: usize = 160 * 160 * 160;

/// Models Genesis settings; defaults are the reference values (original code, nnssl) unless a
/// field says otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenesisConfig {
    /// Probability of each flip draw (reference: 0.4).
    pub flip_probability: f64,
    /// Most flips per sample; drawing stops at the first failed draw (reference: 3).
    pub flip_max_repeats: usize,
    /// Probability of local pixel shuffling (reference: 0.5).
    pub local_shuffle_probability: f64,
    /// Shuffled boxes per sample (reference: 10,000), for a 160³ patch when scaled to volume.
    pub local_shuffle_iterations: usize,
    /// Scale the box count by patch volume / 160³, at least 1 (reference: fixed count; here true).
    pub local_shuffle_scale_to_volume: bool,
    /// Largest shuffle box side as a fraction of the patch edge, per axis (reference: 1/10).
    pub local_shuffle_max_side_fraction: f64,
    /// Probability of the non-linear (Bézier) intensity map (reference: 0.9).
    pub nonlinear_probability: f64,
    /// Curve samples the Bézier map interpolates between (reference: 100,000; here 1,000, within
    /// 6·10⁻⁵ of the exact map, see [`BezierCurve::sample`]).
    pub bezier_samples: usize,
    /// Probability of painting, in- or out- (reference: 0.9).
    pub painting_probability: f64,
    /// Share of paintings that are out-paintings; the rest are in-paintings (reference: 0.8).
    pub outpainting_share: f64,
    /// Most in-painting boxes (reference: 5).
    pub inpainting_max_boxes: usize,
    /// Probability of drawing each in-painting box, the first included (reference: 0.95).
    pub inpainting_box_probability: f64,
    /// In-painting box side range as fractions of the edge, floored (reference: [1/6, 1/3]).
    pub inpainting_side_fraction: [f64; 2],
    /// Out-painting box side = edge − U[⌊f0·edge⌋, ⌊f1·edge⌋] (reference: f = [3/7, 4/7]).
    pub outpainting_shrink_fraction: [f64; 2],
    /// Most out-painting boxes after the first (reference: 4).
    pub outpainting_extra_boxes: usize,
    /// Probability of drawing each extra out-painting box (reference: 0.95).
    pub outpainting_extra_probability: f64,
    /// Smallest distance in voxels between a painting box and the patch border (reference: 3).
    pub painting_margin: usize,
    /// Window each channel to [0, 1] before corrupting (reference nnssl: no, a bug; here true).
    pub rescale_to_unit: bool,
    /// Percentiles of the [0, 1] window (here 0.5 and 99.5, as nnU-Net's CT clipping).
    pub rescale_percentiles: [f64; 2],
}

impl Default for GenesisConfig {
    fn default() -> Self {
        Self {
            flip_probability: 0.4,
            flip_max_repeats: 3,
            local_shuffle_probability: 0.5,
            local_shuffle_iterations: 10_000,
            local_shuffle_scale_to_volume: true,
            local_shuffle_max_side_fraction: 0.1,
            nonlinear_probability: 0.9,
            bezier_samples: 1000,
            painting_probability: 0.9,
            outpainting_share: 0.8,
            inpainting_max_boxes: 5,
            inpainting_box_probability: 0.95,
            inpainting_side_fraction: [1.0 / 6.0, 1.0 / 3.0],
            outpainting_shrink_fraction: [3.0 / 7.0, 4.0 / 7.0],
            outpainting_extra_boxes: 4,
            outpainting_extra_probability: 0.95,
            painting_margin: 3,
            rescale_to_unit: true,
            rescale_percentiles: [0.5, 99.5],
        }
    }
}

/// `⌊edge · fraction⌋`, robust to the fraction's rounding (`6 · (1/6)` is 1, as Python's `6 // 6`).
fn floor_fraction(edge: usize, fraction: f64) -> usize {
    (edge as f64 * fraction + 1e-9).floor().max(0.0) as usize
}

const AXIS_NAMES: [&str; 3] = ["D", "H", "W"];

impl GenesisConfig {
    /// Check the settings for patches of size `patch` (`[D, H, W]`).
    pub fn validate(&self, patch: [usize; 3]) -> Result<(), PretrainDataError> {
        let field = |name: &str| format!("genesis.{name}");
        for (name, p) in [
            ("flip_probability", self.flip_probability),
            ("local_shuffle_probability", self.local_shuffle_probability),
            ("nonlinear_probability", self.nonlinear_probability),
            ("painting_probability", self.painting_probability),
            ("outpainting_share", self.outpainting_share),
            (
                "inpainting_box_probability",
                self.inpainting_box_probability,
            ),
            (
                "outpainting_extra_probability",
                self.outpainting_extra_probability,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(PretrainDataError::config(
                    field(name),
                    format!("{p} is not a probability in [0, 1]"),
                ));
            }
        }
        let f = self.local_shuffle_max_side_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(PretrainDataError::config(
                field("local_shuffle_max_side_fraction"),
                format!("{f} must be in (0, 1]"),
            ));
        }
        if self.bezier_samples < 2 {
            return Err(PretrainDataError::config(
                field("bezier_samples"),
                format!("{} must be at least 2", self.bezier_samples),
            ));
        }
        let [i0, i1] = self.inpainting_side_fraction;
        if !(i0 > 0.0 && i0 <= i1 && i1 <= 1.0) {
            return Err(PretrainDataError::config(
                field("inpainting_side_fraction"),
                format!("{:?} must be an ordered range in (0, 1]", [i0, i1]),
            ));
        }
        let [o0, o1] = self.outpainting_shrink_fraction;
        if !(o0 >= 0.0 && o0 <= o1 && o1 < 1.0) {
            return Err(PretrainDataError::config(
                field("outpainting_shrink_fraction"),
                format!("{:?} must be an ordered range in [0, 1)", [o0, o1]),
            ));
        }
        let [p0, p1] = self.rescale_percentiles;
        if !(p0 >= 0.0 && p0 < p1 && p1 <= 100.0) {
            return Err(PretrainDataError::config(
                field("rescale_percentiles"),
                format!(
                    "{:?} must be two increasing percentiles in [0, 100]",
                    [p0, p1]
                ),
            ));
        }
        let margin = self.painting_margin;
        let inpainting = self.painting_probability > 0.0 && self.outpainting_share < 1.0;
        let outpainting = self.painting_probability > 0.0 && self.outpainting_share > 0.0;
        for (axis, &edge) in patch.iter().enumerate() {
            let name = AXIS_NAMES[axis];
            if edge == 0 {
                return Err(PretrainDataError::Shape(format!(
                    "genesis: patch {patch:?} has an empty {name} axis"
                )));
            }
            if self.local_shuffle_probability > 0.0 && floor_fraction(edge, f) == 0 {
                return Err(PretrainDataError::config(
                    field("local_shuffle_max_side_fraction"),
                    format!(
                        "patch {patch:?} is too small for local shuffling: the largest box side \
                         on {name} is ⌊{edge} · {f}⌋ = 0; use a larger patch or fraction"
                    ),
                ));
            }
            if inpainting {
                let (lo, hi) = (floor_fraction(edge, i0), floor_fraction(edge, i1));
                if lo == 0 || edge < hi + 2 * margin {
                    return Err(PretrainDataError::config(
                        field("inpainting_side_fraction"),
                        format!(
                            "patch {patch:?} is too small for in-painting on {name}: box sides \
                             {lo}–{hi} plus a {margin}-voxel margin on both sides do not fit in \
                             {edge} voxels (sides must be at least 1)"
                        ),
                    ));
                }
            }
            if outpainting {
                let (lo, hi) = (floor_fraction(edge, o0), floor_fraction(edge, o1));
                if lo < 2 * margin || hi >= edge {
                    return Err(PretrainDataError::config(
                        field("outpainting_shrink_fraction"),
                        format!(
                            "patch {patch:?} is too small for out-painting on {name}: box sides \
                             {}–{} plus a {margin}-voxel margin on both sides do not fit in \
                             {edge} voxels (sides must be at least 1)",
                            edge.saturating_sub(hi),
                            edge - lo
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Shuffle boxes per sample for a patch of size `patch`: scaled to its volume when asked.
    pub fn local_shuffle_count(&self, patch: [usize; 3]) -> usize {
        let n = self.local_shuffle_iterations;
        if !self.local_shuffle_scale_to_volume || n == 0 {
            return n;
        }
        let volume = patch.iter().product::<usize>() as f64;
        ((n as f64 * volume / LOCAL_SHUFFLE_REFERENCE_VOLUME as f64).round() as usize).max(1)
    }
}

/// A corrupted patch and its restoration target, both `[C, D, H, W]`.
#[derive(Clone, Debug, Default)]
pub struct GenesisSample {
    /// The corrupted patch (network input).
    pub input: Array4<f32>,
    /// The (flipped, windowed) original patch (regression target).
    pub target: Array4<f32>,
    /// What was done to produce `input`.
    pub applied: AppliedTransforms,
}

/// The transforms [`corrupt`] applied to one sample, for logging and tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedTransforms {
    /// Spatial axes flipped (0 = D, 1 = H, 2 = W), in order.
    pub flips: Vec<usize>,
    /// Per channel `[low, high]` intensity window mapped to [0, 1] (empty: not rescaled).
    pub rescale_windows: Vec<[f32; 2]>,
    /// Shuffled boxes (0: no local shuffling).
    pub local_shuffle_boxes: usize,
    /// The Bézier curve of the non-linear map, if applied.
    pub nonlinear: Option<BezierCurve>,
    /// The painting, if applied.
    pub painting: Option<Painting>,
}

/// Which painting was applied, and its boxes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Painting {
    /// In- or out-painting.
    pub kind: PaintingKind,
    /// In-painting: the boxes filled with noise; out-painting: the boxes kept from the input.
    pub boxes: Vec<VoxelBox>,
}

/// The two painting variants of Models Genesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaintingKind {
    /// Boxes inside the patch are replaced by noise.
    Inpainting,
    /// Everything except a few large boxes is replaced by noise.
    Outpainting,
}

/// Corrupt `image` (`[C, D, H, W]`) with Models Genesis' transforms; see the module docs.
pub fn corrupt<R: Rng + ?Sized>(
    image: &Array4<f32>,
    config: &GenesisConfig,
    rng: &mut R,
) -> Result<GenesisSample, PretrainDataError> {
    let mut sample = GenesisSample::default();
    corrupt_into(image, config, rng, &mut sample)?;
    Ok(sample)
}

/// [`corrupt`] into an existing sample, reusing its arrays when they have the image's shape:
/// a data loader that recycles samples saves two fresh patch-sized allocations (and their
/// page faults) per sample.
pub fn corrupt_into<R: Rng + ?Sized>(
    image: &Array4<f32>,
    config: &GenesisConfig,
    rng: &mut R,
    sample: &mut GenesisSample,
) -> Result<(), PretrainDataError> {
    let (channels, d, h, w) = image.dim();
    let patch = [d, h, w];
    if channels == 0 {
        return Err(PretrainDataError::Shape(
            "genesis: the image has no channels".into(),
        ));
    }
    config.validate(patch)?;
    let mut applied = AppliedTransforms::default();

    let mut repeats = config.flip_max_repeats;
    while repeats > 0 && rng.random::<f64>() < config.flip_probability {
        applied.flips.push(rng.random_range(0..3));
        repeats -= 1;
    }
    // Flips compose: only the parity per axis matters, so the patch is copied once.
    let mut view = image.view();
    for axis in 0..3 {
        if applied.flips.iter().filter(|&&a| a == axis).count() % 2 == 1 {
            view.invert_axis(Axis(axis + 1));
        }
    }
    let GenesisSample { input, target, .. } = sample;
    for array in [&mut *target, &mut *input] {
        if array.dim() != image.dim() || !array.is_standard_layout() {
            *array = Array4::zeros(image.dim());
        }
    }
    // One pass copies, checks and samples the window's rows; a second windows the target and
    // writes the input (three passes over the patch fewer than doing each on its own).
    let row_stride = window_row_stride(d * h, w);
    let mut samples = vec![Vec::new(); if config.rescale_to_unit { channels } else { 0 }];
    if !copy_rows_checked(view, target, &mut samples, row_stride) {
        // Name the first bad voxel in the caller's (unflipped) coordinates.
        check_finite(image)?;
    }
    if config.rescale_to_unit {
        let volume = d * h * w;
        let target = target
            .as_slice_mut()
            .expect("the target is in standard layout");
        let input = input
            .as_slice_mut()
            .expect("the working copy is in standard layout");
        for (c, samples) in samples.iter_mut().enumerate() {
            let window = UnitWindow::of(samples, config.rescale_percentiles);
            let range = c * volume..(c + 1) * volume;
            target[range.clone()]
                .par_chunks_mut(1 << 15)
                .zip(input[range].par_chunks_mut(1 << 15))
                .for_each(|(target, input)| window.apply_and_copy(target, input));
            applied.rescale_windows.push([window.low, window.high]);
        }
    } else {
        input.assign(target);
    }

    if rng.random::<f64>() < config.local_shuffle_probability {
        let count = config.local_shuffle_count(patch);
        let boxes = random_shuffle_boxes(patch, count, config.local_shuffle_max_side_fraction, rng);
        local_pixel_shuffle(target, input, &boxes, rng)?;
        applied.local_shuffle_boxes = count;
    }
    if rng.random::<f64>() < config.nonlinear_probability {
        let curve = BezierCurve::random(rng);
        let map = curve.sample(config.bezier_samples);
        map.apply_in_place(
            input
                .as_slice_mut()
                .expect("the working copy is in standard layout"),
        );
        applied.nonlinear = Some(curve);
    }
    if rng.random::<f64>() < config.painting_probability {
        applied.painting = Some(if rng.random::<f64>() < config.outpainting_share {
            Painting {
                kind: PaintingKind::Outpainting,
                boxes: outpaint(input, config, rng),
            }
        } else {
            Painting {
                kind: PaintingKind::Inpainting,
                boxes: inpaint(input, config, rng),
            }
        });
    }
    sample.applied = applied;
    Ok(())
}

fn check_finite(image: &Array4<f32>) -> Result<(), PretrainDataError> {
    // A plain scan in logical order; over a slice when possible (ndarray's element iterator
    // has no fast `position`), which is memory-bound and cheaper than rayon here.
    let (_, d, h, w) = image.dim();
    let not_finite = |v: &f32| !v.is_finite();
    let bad = match image.as_slice() {
        Some(values) => values.iter().position(not_finite),
        None => image.iter().position(not_finite),
    }
    .map(|i| [i / (d * h * w), i / (h * w) % d, i / w % h, i % w]);
    match bad {
        Some(index) => Err(PretrainDataError::NonFinite {
            index,
            value: image[index],
        }),
        None => Ok(()),
    }
}

/// Voxels the [`rescale_to_unit`] window is estimated from, at most (every voxel up to 64³).
pub const RESCALE_SAMPLES: usize = 1 << 18;

/// Window one channel to [0, 1]: the `percentiles` (e.g. 0.5, 99.5) map to 0 and 1, the rest
/// is clipped; returns the window `[low, high]`. A window of zero width (a nearly constant
/// channel) maps voxels above it to 1 and the others to 0.
///
/// Channels of more than [`RESCALE_SAMPLES`] voxels take the percentiles of every k-th image
/// row (k odd, so the sample does not line up with the planes), as nnDetection estimates its
/// intensity percentiles from every 10th foreground voxel: a window, not an exact statistic.
/// Whole rows, because reading every k-th voxel touches every cache line of the patch.
pub fn rescale_to_unit(mut channel: ArrayViewMut3<'_, f32>, percentiles: [f64; 2]) -> [f32; 2] {
    if channel.is_empty() {
        return [0.0, 0.0];
    }
    let (d, h, w) = channel.dim();
    let mut samples: Vec<f32> = channel
        .rows()
        .into_iter()
        .step_by(window_row_stride(d * h, w))
        .flatten()
        .copied()
        .collect();
    let window = UnitWindow::of(&mut samples, percentiles);
    drop(samples);
    channel.par_map_inplace(|v| *v = window.apply(*v));
    [window.low, window.high]
}

/// Every how many rows (of `rows`, each `row_length` voxels) the window samples one: 1 up to
/// [`RESCALE_SAMPLES`] voxels, otherwise an odd stride that keeps the sample below it.
fn window_row_stride(rows: usize, row_length: usize) -> usize {
    let n = rows * row_length;
    if n <= RESCALE_SAMPLES {
        1
    } else {
        n.div_ceil(RESCALE_SAMPLES) | 1
    }
}

/// The intensity window of [`rescale_to_unit`].
#[derive(Clone, Copy, Debug)]
struct UnitWindow {
    low: f32,
    high: f32,
    scale: f32,
}

impl UnitWindow {
    /// The window between two percentiles of `samples` (reordered; empty: `[0, 0]`).
    fn of(samples: &mut [f32], percentiles: [f64; 2]) -> Self {
        if samples.is_empty() {
            return UnitWindow {
                low: 0.0,
                high: 0.0,
                scale: 0.0,
            };
        }
        let low = percentile(samples, percentiles[0]) as f32;
        let high = percentile(samples, percentiles[1]) as f32;
        let scale = if high > low { 1.0 / (high - low) } else { 0.0 };
        UnitWindow { low, high, scale }
    }

    /// `v` mapped to [0, 1].
    #[inline]
    fn apply(&self, v: f32) -> f32 {
        if self.high > self.low {
            ((v - self.low) * self.scale).clamp(0.0, 1.0)
        } else if v > self.low {
            1.0
        } else {
            0.0
        }
    }

    /// [`Self::apply`] to `target` in place, copying the result into `input` (same length).
    fn apply_and_copy(&self, target: &mut [f32], input: &mut [f32]) {
        // The branch outside and the constants in locals, so that the loops vectorise.
        let (low, scale) = (self.low, self.scale);
        let pairs = target.iter_mut().zip(input);
        if self.high > low {
            for (t, i) in pairs {
                *t = ((*t - low) * scale).clamp(0.0, 1.0);
                *i = *t;
            }
        } else {
            for (t, i) in pairs {
                *t = if *t > low { 1.0 } else { 0.0 };
                *i = *t;
            }
        }
    }
}

/// Copy `view` (the image, maybe flipped) into `target` (same shape, standard layout) row by
/// row, appending every `row_stride`-th row of channel c to `samples[c]` where `samples` has
/// that channel; false if any voxel is NaN or infinite.
fn copy_rows_checked(
    view: ArrayView4<'_, f32>,
    target: &mut Array4<f32>,
    samples: &mut [Vec<f32>],
    row_stride: usize,
) -> bool {
    let (_, _, h, _) = view.dim();
    let reversed = view.strides()[3] < 0;
    // All exponent bits set: infinite or NaN. The maximum over a row vectorises; an early exit
    // would not.
    const EXPONENT: u32 = 0x7f80_0000;
    let mut worst = 0u32;
    Zip::indexed(target.rows_mut())
        .and(view.rows())
        .for_each(|(c, z, y), mut row, source| {
            let row = row.as_slice_mut().expect("target rows are contiguous");
            if reversed {
                let source = source.slice(s![..;-1]);
                let source = source.as_slice().expect("a reversed row is contiguous");
                for (t, v) in row.iter_mut().zip(source.iter().rev()) {
                    *t = *v;
                }
            } else {
                match source.as_slice() {
                    Some(source) => row.copy_from_slice(source),
                    None => row.iter_mut().zip(source).for_each(|(t, v)| *t = *v),
                }
            }
            worst = row.iter().fold(worst, |m, v| m.max(v.to_bits() & EXPONENT));
            if let Some(samples) = samples.get_mut(c)
                && (z * h + y) % row_stride == 0
            {
                samples.extend_from_slice(row);
            }
        });
    worst != EXPONENT
}

/// A painting box: sides drawn per axis by `side`, a position that keeps `margin` voxels to
/// both borders (draws in the original's order: three sides, then three positions).
fn painting_box<R: Rng + ?Sized>(
    patch: [usize; 3],
    margin: usize,
    rng: &mut R,
    mut side: impl FnMut(usize, &mut R) -> usize,
) -> VoxelBox {
    let sides = [0, 1, 2].map(|a| side(patch[a], rng));
    let mut b = [0; 6];
    for a in 0..3 {
        b[a] = rng.random_range(margin..=patch[a] - sides[a] - margin);
        b[a + 3] = b[a] + sides[a];
    }
    b
}

/// Fill `region` (`[C, d, h, w]`) with U[0, 1) noise, except inside the boxes `keep` (in the
/// region's coordinates). Parallel over depth planes, each plane drawing from its own stream of
/// one generator seeded by `seed`, so results do not depend on the thread count.
fn fill_uniform(mut region: ArrayViewMut4<'_, f32>, keep: &[VoxelBox], seed: u64) {
    let depth = region.dim().1;
    region
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut channel)| {
            channel
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(z, mut plane)| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream((c * depth + z) as u64);
                    let width = plane.dim().1;
                    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(keep.len());
                    let mut draws = vec![0u32; width];
                    for (y, mut row) in plane.outer_iter_mut().enumerate() {
                        // The row's kept intervals, sorted; noise goes into the gaps.
                        kept.clear();
                        kept.extend(
                            keep.iter()
                                .filter(|b| (b[0]..b[3]).contains(&z) && (b[1]..b[4]).contains(&y))
                                .map(|b| (b[2], b[5])),
                        );
                        kept.sort_unstable();
                        let mut x = 0;
                        for &(start, end) in kept.iter().chain(&[(width, width)]) {
                            let gap = start.saturating_sub(x);
                            if gap > 0 {
                                uniform_into(
                                    row.slice_mut(ndarray::s![x..start]),
                                    &mut draws[..gap],
                                    &mut rng,
                                );
                            }
                            x = x.max(end);
                        }
                    }
                });
        });
}

/// Fill `out` with U[0, 1) draws, the values of `rng.random::<f32>()` one after the other (24
/// high bits of each u32, scaled by 2⁻²⁴), from one bulk draw into `draws` (as long as `out`).
/// Measured against drawing one value at a time (`detlab bench genesis`, alternating binaries):
/// out-painting 11.9 → 11.6 ms per 160³ patch, a small gain.
fn uniform_into<R: Rng + ?Sized>(
    mut out: ndarray::ArrayViewMut1<'_, f32>,
    draws: &mut [u32],
    rng: &mut R,
) {
    rng.fill(draws);
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    for (v, &r) in out.iter_mut().zip(draws.iter()) {
        *v = (r >> 8) as f32 * SCALE;
    }
}

/// The slice of box `b` along axis `index` of a `[C, D, H, W]` array (all channels).
fn box_slice(b: &VoxelBox, index: usize) -> Slice {
    match index {
        0 => Slice::from(..),
        a => Slice::from(b[a - 1]..b[a + 2]),
    }
}

/// In-painting: up to `inpainting_max_boxes` boxes (each drawn with `inpainting_box_probability`,
/// stopping at the first miss) filled with U[0, 1) noise; returns the boxes.
fn inpaint<R: Rng + ?Sized>(
    input: &mut Array4<f32>,
    config: &GenesisConfig,
    rng: &mut R,
) -> Vec<VoxelBox> {
    let (_, d, h, w) = input.dim();
    let patch = [d, h, w];
    let [f0, f1] = config.inpainting_side_fraction;
    let mut boxes = Vec::new();
    while boxes.len() < config.inpainting_max_boxes
        && rng.random::<f64>() < config.inpainting_box_probability
    {
        let b = painting_box(patch, config.painting_margin, rng, |edge, rng| {
            rng.random_range(floor_fraction(edge, f0)..=floor_fraction(edge, f1))
        });
        fill_uniform(
            input.slice_each_axis_mut(|axis| box_slice(&b, axis.axis.index())),
            &[],
            rng.random(),
        );
        boxes.push(b);
    }
    boxes
}

/// Out-painting: the patch becomes U[0, 1) noise except one large box (side edge − U[⌊3·edge/7⌋,
/// ⌊4·edge/7⌋] by default) and up to `outpainting_extra_boxes` more, which keep the input;
/// returns the kept boxes.
fn outpaint<R: Rng + ?Sized>(
    input: &mut Array4<f32>,
    config: &GenesisConfig,
    rng: &mut R,
) -> Vec<VoxelBox> {
    let (_, d, h, w) = input.dim();
    let patch = [d, h, w];
    let [f0, f1] = config.outpainting_shrink_fraction;
    let draw = |rng: &mut R| {
        painting_box(patch, config.painting_margin, rng, |edge, rng| {
            edge - rng.random_range(floor_fraction(edge, f0)..=floor_fraction(edge, f1))
        })
    };
    let mut boxes = vec![draw(rng)];
    while boxes.len() <= config.outpainting_extra_boxes
        && rng.random::<f64>() < config.outpainting_extra_probability
    {
        boxes.push(draw(rng));
    }
    // In place: the kept boxes hold the input already, so only the rest needs noise.
    fill_uniform(input.view_mut(), &boxes, rng.random());
    boxes
}
