//! The intensity transforms of nnDetection's augmentation, with batchgenerators' formulas
//! (`noise_augmentations.py`, `color_augmentations.py`, `resample_augmentations.py`):
//! - noise: `x + N(0, σ²)`, `σ ~ U(noise_std)` once per patch;
//! - blur: per channel with probability `blur_channel_probability`, a Gaussian of `σ ~
//!   U(blur_sigma)` voxels (one σ for the three axes; scipy's `gaussian_filter`: `reflect`
//!   border, truncated at 4σ);
//! - brightness: `x · m`, `m ~ U(brightness_range)` per channel;
//! - contrast: `(x − mean) · f + mean` per channel, clipped to the channel's former range;
//! - simulated low resolution: per channel with probability `low_resolution_channel_probability`,
//!   down to `round(size · zoom)` with nearest neighbours and back up (`zoom ~ U(range)`);
//! - gamma: `((x − min) / (range + ε))^γ · (range + ε) + min` per channel, then the mean and
//!   standard deviation restored (`retain_stats`); the inverted variant works on `−x`.
//!
//! Factors of contrast and gamma are drawn below 1 or above 1 with equal probability
//! ([`below_or_above_one`]), as batchgenerators draws them.

use ndarray::{Array4, ArrayViewMut3, Axis};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::volume::normalize::{moments, std_about, sum_min_max};
use crate::volume::resample::{Interpolation, resample_array};

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

/// Add zero-mean Gaussian noise of standard deviation `std` to every voxel.
pub fn gaussian_noise<R: Rng + ?Sized>(image: &mut Array4<f32>, std: f64, rng: &mut R) {
    if std <= 0.0 {
        return;
    }
    let std = std as f32;
    for v in image.iter_mut() {
        let z: f32 = rng.sample(StandardNormal);
        *v += z * std;
    }
}

/// Channel `c` of `image` as one mutable slice (the image is made C-ordered first if a view
/// operation left it otherwise), so the transforms below run as flat, vectorisable loops.
fn channel_mut(image: &mut Array4<f32>, c: usize) -> &mut [f32] {
    if !image.is_standard_layout() {
        *image = image.as_standard_layout().into_owned();
    }
    let voxels = image.len() / image.dim().0.max(1);
    let all = image
        .as_slice_mut()
        .expect("a standard-layout image is contiguous");
    &mut all[c * voxels..(c + 1) * voxels]
}

/// Multiply channel `c` by `factor`.
pub fn brightness(image: &mut Array4<f32>, c: usize, factor: f64) {
    let factor = factor as f32;
    channel_mut(image, c).iter_mut().for_each(|v| *v *= factor);
}

/// Contrast of channel `c`: `(x − mean) · factor + mean`, clipped to the former range.
pub fn contrast(image: &mut Array4<f32>, c: usize, factor: f64) {
    let channel = channel_mut(image, c);
    let (sum, min, max) = sum_min_max(channel);
    let (mean, factor) = ((sum / channel.len().max(1) as f64) as f32, factor as f32);
    channel
        .iter_mut()
        .for_each(|v| *v = ((*v - mean) * factor + mean).clamp(min, max));
}

/// Gamma of channel `c` with retained mean and standard deviation; `inverted` applies it to
/// the negated image (and negates back).
pub fn gamma(image: &mut Array4<f32>, c: usize, gamma: f64, inverted: bool) {
    gamma_with(image, c, gamma, inverted, true);
}

/// Gamma of channel `c`; `retain_stats` restores the mean and standard deviation afterwards.
///
/// The inverted variant works on `−x`; its statistics are those of `x` negated (exactly: the
/// sums of negated values are the negated sums), so the channel is negated only on the way out.
pub fn gamma_with(
    image: &mut Array4<f32>,
    c: usize,
    gamma: f64,
    inverted: bool,
    retain_stats: bool,
) {
    let channel = channel_mut(image, c);
    let sign = if inverted { -1.0f32 } else { 1.0 };
    let (sum, low, high) = sum_min_max(channel);
    let mean = sum / channel.len().max(1) as f64;
    // Only the restoring step needs the spread of the input.
    let std = retain_stats.then(|| std_about(channel, mean));
    let (mean, min, max) = if inverted {
        (-mean, -high, -low)
    } else {
        (mean, low, high)
    };
    let span = (f64::from(max) - f64::from(min) + 1e-7) as f32;
    let g = gamma as f32;
    let curve = |v: f32| ((sign * v - min) / span).max(0.0).powf(g) * span + min;
    if let Some(std) = std {
        channel.iter_mut().for_each(|v| *v = curve(*v));
        let after = moments(channel);
        let scale = (std / (after.std + 1e-8)) as f32;
        let (new_mean, mean) = (after.mean as f32, mean as f32);
        // The sign folds the negation back in.
        channel
            .iter_mut()
            .for_each(|v| *v = sign * ((*v - new_mean) * scale + mean));
    } else {
        channel.iter_mut().for_each(|v| *v = sign * curve(*v));
    }
}

/// Channel `c` down to `round(size · zoom)` voxels per axis (nearest neighbour) and back up
/// with `upsample` (batchgenerators: order 3; detlab's resampler offers orders 0 and 1).
pub fn simulate_low_resolution(
    image: &mut Array4<f32>,
    c: usize,
    zoom: f64,
    upsample: Interpolation,
) {
    let (_, d, h, w) = image.dim();
    let size = [d, h, w];
    let small = size.map(|n| ((n as f64 * zoom).round_ties_even() as usize).max(1));
    if small == size {
        return;
    }
    let low = resample_array(image.index_axis(Axis(0), c), small, Interpolation::Nearest);
    let back = resample_array(low.view(), size, upsample);
    image.index_axis_mut(Axis(0), c).assign(&back);
}

/// The normalised Gaussian kernel of scipy's `gaussian_filter` (radius `⌊4σ + 0.5⌋`).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    kernel.iter().map(|k| (k / total) as f32).collect()
}

/// scipy's `reflect` border (d c b a | a b c d | d c b a) of index `i` on an axis of `n`.
fn reflect(i: i64, n: i64) -> usize {
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

/// `out = Σ_k kernel[k] · rows[reflect(i + k − r)]` for every row `i` of `input` (rows of
/// `len` values, `count` of them): a 1D filter across rows, vectorised along them.
fn filter_across_rows(input: &[f32], out: &mut [f32], len: usize, count: usize, kernel: &[f32]) {
    let radius = (kernel.len() / 2) as i64;
    for (i, out_row) in out.chunks_exact_mut(len).take(count).enumerate() {
        out_row.fill(0.0);
        for (k, &weight) in kernel.iter().enumerate() {
            let src = reflect(i as i64 + k as i64 - radius, count as i64);
            let in_row = &input[src * len..(src + 1) * len];
            for (o, &x) in out_row.iter_mut().zip(in_row) {
                *o += weight * x;
            }
        }
    }
}

/// Gaussian filter of `volume` with `sigma` voxels on every axis (scipy `gaussian_filter`,
/// mode `reflect`, truncate 4), in f32.
pub fn gaussian_blur(volume: &mut ndarray::Array3<f32>, sigma: f64) {
    gaussian_blur_view(volume.view_mut(), sigma);
}

/// [`gaussian_blur`] of a view, e.g. one channel of a patch (in place when contiguous).
pub fn gaussian_blur_view(mut volume: ArrayViewMut3<f32>, sigma: f64) {
    if sigma <= 0.0 || volume.is_empty() {
        return;
    }
    let kernel = gaussian_kernel(sigma);
    let dims = volume.dim();
    if let Some(data) = volume.as_slice_mut() {
        blur_contiguous(data, dims, &kernel);
        return;
    }
    let mut owned = volume.to_owned();
    blur_contiguous(
        owned.as_slice_mut().expect("an owned array is contiguous"),
        dims,
        &kernel,
    );
    volume.assign(&owned);
}

/// The separable filter on a C-order `[D, H, W]` buffer.
fn blur_contiguous(data: &mut [f32], (d, h, w): (usize, usize, usize), kernel: &[f32]) {
    let mut scratch = vec![0.0f32; data.len()];
    // D: whole slices at a time; H: whole rows within each slice; W: along each row.
    filter_across_rows(data, &mut scratch, h * w, d, kernel);
    for (src, dst) in scratch
        .chunks_exact(h * w)
        .zip(data.chunks_exact_mut(h * w))
    {
        filter_across_rows(src, dst, w, h, kernel);
    }
    let radius = kernel.len() / 2;
    let mut padded = vec![0.0f32; w + 2 * radius];
    for row in data.chunks_exact_mut(w) {
        for (j, p) in padded.iter_mut().enumerate() {
            *p = row[reflect(j as i64 - radius as i64, w as i64)];
        }
        // Tap by tap over the whole row (the same sum in the same order per voxel), so the
        // inner loop runs along contiguous voxels and vectorises.
        row.fill(0.0);
        for (k, &weight) in kernel.iter().enumerate() {
            for (out, &x) in row.iter_mut().zip(&padded[k..k + w]) {
                *out += weight * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// Mean, std, min and max of a whole image (every channel).
    fn mean_std(image: &Array4<f32>) -> (f64, f64, f32, f32) {
        let m = moments(image.as_slice().expect("a standard-layout test image"));
        (m.mean, m.std, m.min, m.max)
    }
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A 1 × 6 × 7 × 8 patch with a smooth ramp and one bright voxel.
    fn image() -> Array4<f32> {
        let mut x = Array4::from_shape_fn((1, 6, 7, 8), |(_, d, h, w)| {
            0.25 + 0.1 * d as f32 + 0.05 * h as f32 - 0.02 * w as f32
        });
        x[[0, 2, 3, 4]] = 1.7;
        x
    }

    #[test]
    fn gamma_with_retained_stats_keeps_mean_and_std() {
        let x = image();
        let (m0, s0, _, _) = mean_std(&x);
        for inverted in [false, true] {
            for g in [0.6, 1.4] {
                let mut y = x.clone();
                gamma(&mut y, 0, g, inverted);
                let (m1, s1, _, _) = mean_std(&y);
                assert!(
                    (m1 - m0).abs() < 1e-5 && (s1 - s0).abs() < 1e-5,
                    "γ {g} inverted {inverted}: {m0} {s0} → {m1} {s1}"
                );
                assert!(y.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
            }
        }
        // Without retain_stats the minimum and maximum stay and the mean moves.
        let mut y = x.clone();
        gamma_with(&mut y, 0, 2.0, false, false);
        let (m1, _, lo, hi) = mean_std(&y);
        let (_, _, lo0, hi0) = mean_std(&x);
        assert!(
            (lo - lo0).abs() < 1e-6 && (hi - hi0).abs() < 1e-5,
            "{lo} {hi}"
        );
        assert!(
            m1 < m0 - 0.05,
            "γ 2 pulls the values towards the minimum: {m0} → {m1}"
        );
    }

    #[test]
    fn contrast_brightness_and_noise_do_what_they_say() {
        let x = image();
        let (m0, s0, lo, hi) = mean_std(&x);
        let mut c = x.clone();
        contrast(&mut c, 0, 0.5);
        let (m1, s1, _, _) = mean_std(&c);
        assert!(
            (m1 - m0).abs() < 1e-5 && (s1 - 0.5 * s0).abs() < 1e-5,
            "{m1} {s1}"
        );
        let mut c = x.clone();
        contrast(&mut c, 0, 1.5);
        assert!(
            c.iter().all(|&v| v >= lo && v <= hi),
            "clipped to the range"
        );
        let mut b = x.clone();
        brightness(&mut b, 0, 1.25);
        assert!(b.iter().zip(&x).all(|(a, v)| (a - 1.25 * v).abs() < 1e-6));
        let mut z = Array4::<f32>::zeros((1, 16, 16, 16));
        gaussian_noise(&mut z, 0.1, &mut ChaCha8Rng::seed_from_u64(3));
        let (m, s, _, _) = mean_std(&z);
        assert!(m.abs() < 0.01 && (s - 0.1).abs() < 0.005, "{m} {s}");
    }

    #[test]
    fn blur_matches_scipy_gaussian_filter() {
        // scipy.ndimage.gaussian_filter(x, 1.0) (float64) for x = zeros((5, 5, 5)) with
        // x[2, 2, 2] = 1 and x[0, 0, 0] = 2, and for x = zeros((3, 4, 9)), x[1, 2, 7] = 1
        // (σ 0.7).
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
        // Not cubic: each axis filtered with its own extent; the mass stays too.
        let mut y = Array3::<f32>::zeros((3, 4, 9));
        y[[1, 2, 7]] = 1.0;
        gaussian_blur(&mut y, 0.7);
        let total: f32 = y.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(y[[1, 2, 7]] > y[[1, 2, 6]] && y[[1, 2, 8]] > y[[0, 2, 8]]);
        // A strided view (one channel of a patch) gives the same result as an owned array.
        let mut patch = Array4::<f32>::zeros((2, 5, 5, 5));
        patch[[1, 2, 2, 2]] = 1.0;
        patch[[1, 0, 0, 0]] = 2.0;
        gaussian_blur_view(patch.index_axis_mut(Axis(0), 1), 1.0);
        assert!((patch[[1, 2, 2, 2]] - x[[2, 2, 2]]).abs() < 1e-7);
    }

    #[test]
    fn low_resolution_keeps_the_size_and_smooths() {
        let mut x = image();
        let before = x.clone();
        simulate_low_resolution(&mut x, 0, 0.5, Interpolation::Linear);
        assert_eq!(x.dim(), before.dim());
        assert_ne!(x, before);
        let mut y = image();
        simulate_low_resolution(&mut y, 0, 1.0, Interpolation::Linear);
        assert_eq!(y, before, "zoom 1 is the identity");
    }
}
