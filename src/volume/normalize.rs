//! Intensity normalisation (nnDetection's schemes) and foreground intensity statistics.
//!
//! - **CT** ([`normalize_ct`]): clip to `[p0.5, p99.5]` of the *foreground* intensities, then
//!   `(x − mean_fg) / std_fg` (no epsilon), with statistics of the whole dataset
//!   ([`IntensityStats`], computed by [`intensity_stats`] from [`foreground_samples`] pooled over
//!   cases) or of one case. Other clip percentiles: [`CtNormalization::from_samples`].
//! - **CT2** ([`NormalizationScheme::Ct2`]): clip as CT, then z-score with the mean/std of the
//!   case's voxels strictly inside the clip bounds.
//! - **z-score** ([`normalize_zscore`]): per channel `(x − mean) / (std + 1e-8)` over the whole
//!   volume, or over a mask (then voxels outside the mask become 0), as nnU-Net v1 does for MRI.
//!
//! Foreground samples follow nnDetection's dataset analysis: voxels with `mask > 0`, in C order,
//! every 10th one starting with the first. Percentiles use numpy's default (`method='linear'`):
//! position `q/100 · (n − 1)` in the sorted values, linearly interpolated. Means and standard
//! deviations (population, `ddof = 0`) are accumulated in f64.
//!
//! **NaN policy:** every function here returns [`VolumeError::NonFinite`] when its input holds
//! NaN or ±Inf voxels, instead of silently turning a whole case into NaN; clean the volume
//! first with [`Volume::replace_non_finite`] (nnU-Net sets NaN to 0 before resampling).

use super::{Volume, VolumeError};
use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// nnDetection's foreground subsampling: every 10th foreground voxel.
pub const DEFAULT_SAMPLE_STEP: usize = 10;

/// Foreground intensity statistics of one modality (nnDetection's dataset fingerprint fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntensityStats {
    /// Mean intensity.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Median (50th percentile).
    pub median: f64,
    /// Smallest intensity.
    pub min: f64,
    /// Largest intensity.
    pub max: f64,
    /// 0.5th percentile (numpy linear interpolation).
    pub percentile_00_5: f64,
    /// 99.5th percentile (numpy linear interpolation).
    pub percentile_99_5: f64,
    /// Number of samples the statistics were computed from.
    pub count: u64,
}

/// The percentile (numpy linear) used for the statistics; one implementation for detlab.
pub use crate::util::percentile;

/// Statistics of a set of intensity samples (e.g. [`foreground_samples`] of one or many cases).
pub fn intensity_stats(samples: &[f32]) -> Result<IntensityStats, VolumeError> {
    if samples.is_empty() {
        return Err(VolumeError::InvalidArgument(
            "intensity_stats: no samples (does any case have foreground voxels, i.e. mask > 0?)"
                .into(),
        ));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(VolumeError::InvalidArgument(format!(
            "intensity_stats: sample {i} is {} (non-finite); clean the volumes first",
            samples[i]
        )));
    }
    let Moments { mean, std, .. } = moments(&samples);
    let mut sorted = samples.to_vec();
    let median = percentile(&mut sorted, 50.0);
    let percentile_00_5 = percentile(&mut sorted, 0.5);
    let percentile_99_5 = percentile(&mut sorted, 99.5);
    let (min, max) = samples
        .par_chunks(1 << 16)
        .map(|c| {
            c.iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        );
    Ok(IntensityStats {
        mean,
        std,
        median,
        min: min as f64,
        max: max as f64,
        percentile_00_5,
        percentile_99_5,
        count: samples.len() as u64,
    })
}

/// Statistics of several cases' samples pooled together (nnDetection's dataset-level statistics).
pub fn pooled_intensity_stats(per_case: &[Vec<f32>]) -> Result<IntensityStats, VolumeError> {
    let pooled: Vec<f32> = per_case.concat();
    intensity_stats(&pooled)
}

/// Count, mean, population standard deviation, minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// How many values.
    pub count: usize,
    /// Their mean (NaN when there are none).
    pub mean: f64,
    /// Their population standard deviation (NaN when there are none).
    pub std: f64,
    /// The smallest value (+∞ when there are none; NaNs are skipped).
    pub min: f32,
    /// The largest value (−∞ when there are none; NaNs are skipped).
    pub max: f32,
}

/// Values per parallel chunk of [`moments`].
const MOMENT_CHUNK: usize = 1 << 16;

/// Accumulators per chunk: independent lanes, so the loops vectorise.
const MOMENT_LANES: usize = 8;

/// [`Moments`] of `values` in f64, in two passes like numpy (the mean first, then the squared
/// deviations from it), parallel over chunks.
pub fn moments(values: &[f32]) -> Moments {
    let (sum, min, max) = sum_min_max(values);
    let count = values.len();
    if count == 0 {
        return Moments {
            count,
            mean: f64::NAN,
            std: f64::NAN,
            min,
            max,
        };
    }
    let mean = sum / count as f64;
    Moments {
        count,
        mean,
        std: std_about(values, mean),
        min,
        max,
    }
}

/// The population standard deviation of `values` about a known `mean` (the second pass of
/// [`moments`]), in f64, parallel over chunks.
pub fn std_about(values: &[f32], mean: f64) -> f64 {
    let squares: f64 = values
        .par_chunks(MOMENT_CHUNK)
        .map(|chunk| {
            let mut lanes = [0.0f64; MOMENT_LANES];
            let mut blocks = chunk.chunks_exact(MOMENT_LANES);
            for block in &mut blocks {
                for (lane, &v) in lanes.iter_mut().zip(block) {
                    let deviation = f64::from(v) - mean;
                    *lane += deviation * deviation;
                }
            }
            let tail: f64 = blocks
                .remainder()
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum();
            lanes.iter().sum::<f64>() + tail
        })
        .sum();
    (squares / values.len() as f64).sqrt()
}

/// The sum (f64), minimum and maximum of `values` in one pass (NaNs skipped by the extremes).
pub fn sum_min_max(values: &[f32]) -> (f64, f32, f32) {
    values
        .par_chunks(MOMENT_CHUNK)
        .map(|chunk| {
            let mut sum = [0.0f64; MOMENT_LANES];
            let mut low = [f32::INFINITY; MOMENT_LANES];
            let mut high = [f32::NEG_INFINITY; MOMENT_LANES];
            let mut blocks = chunk.chunks_exact(MOMENT_LANES);
            for block in &mut blocks {
                for l in 0..MOMENT_LANES {
                    let v = block[l];
                    sum[l] += f64::from(v);
                    low[l] = if v < low[l] { v } else { low[l] };
                    high[l] = if v > high[l] { v } else { high[l] };
                }
            }
            let mut total: f64 = sum.iter().sum();
            let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
            for &v in low.iter().chain(&high).chain(blocks.remainder()) {
                min = if v < min { v } else { min };
                max = if v > max { v } else { max };
            }
            total += blocks
                .remainder()
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>();
            (total, min, max)
        })
        .reduce(
            || (0.0, f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0 + b.0, a.1.min(b.1), a.2.max(b.2)),
        )
}

/// Every `step`-th voxel of `image` where `mask > 0`, in C order starting with the first.
pub fn foreground_samples_array(
    image: ArrayView3<f32>,
    mask: ArrayView3<f32>,
    step: usize,
) -> Vec<f32> {
    let step = step.max(1);
    let d = image.shape()[0];
    // Count foreground per slice, then let each slice pick the voxels whose global rank is 0 mod step.
    let counts: Vec<usize> = (0..d)
        .into_par_iter()
        .map(|z| {
            mask.index_axis(Axis(0), z)
                .iter()
                .filter(|&&m| m > 0.0)
                .count()
        })
        .collect();
    let mut offsets = Vec::with_capacity(d);
    let mut total = 0;
    for c in &counts {
        offsets.push(total);
        total += c;
    }
    let parts: Vec<Vec<f32>> = (0..d)
        .into_par_iter()
        .map(|z| {
            let mut rank = offsets[z];
            let mut out = Vec::new();
            let img = image.index_axis(Axis(0), z);
            let msk = mask.index_axis(Axis(0), z);
            for (&v, &m) in img.iter().zip(msk.iter()) {
                if m > 0.0 {
                    if rank % step == 0 {
                        out.push(v);
                    }
                    rank += 1;
                }
            }
            out
        })
        .collect();
    parts.concat()
}

/// Every `step`-th voxel (C order, starting with the first) whose intensity is above `threshold`:
/// foreground samples without a label map (e.g. the body in CT: `threshold = -500`).
pub fn threshold_samples(image: ArrayView3<f32>, threshold: f32, step: usize) -> Vec<f32> {
    let step = step.max(1);
    let d = image.shape()[0];
    let counts: Vec<usize> = (0..d)
        .into_par_iter()
        .map(|z| {
            image
                .index_axis(Axis(0), z)
                .iter()
                .filter(|&&v| v > threshold)
                .count()
        })
        .collect();
    let mut offsets = Vec::with_capacity(d);
    let mut total = 0;
    for c in &counts {
        offsets.push(total);
        total += c;
    }
    let parts: Vec<Vec<f32>> = (0..d)
        .into_par_iter()
        .map(|z| {
            let mut rank = offsets[z];
            let mut out = Vec::with_capacity(counts[z] / step + 1);
            for &v in image.index_axis(Axis(0), z).iter() {
                if v > threshold {
                    if rank % step == 0 {
                        out.push(v);
                    }
                    rank += 1;
                }
            }
            out
        })
        .collect();
    parts.concat()
}

/// Foreground samples of each channel of `image` where the single-channel `mask` is `> 0`.
///
/// Returns one vector per channel; `step` is [`DEFAULT_SAMPLE_STEP`] (10) in nnDetection.
pub fn foreground_samples(
    image: &Volume,
    mask: &Volume,
    step: usize,
) -> Result<Vec<Vec<f32>>, VolumeError> {
    if mask.channels() != 1 || mask.spatial_shape() != image.spatial_shape() {
        return Err(VolumeError::InvalidArgument(format!(
            "foreground_samples: the mask {} has shape {:?} but must be one channel of the image's grid {:?} ({})",
            mask.describe(),
            mask.shape(),
            image.spatial_shape(),
            image.describe()
        )));
    }
    image.check_finite()?;
    let m = mask.data.index_axis(Axis(0), 0);
    Ok((0..image.channels())
        .map(|c| foreground_samples_array(image.data.index_axis(Axis(0), c), m, step))
        .collect())
}

/// Parameters of CT normalisation: clip bounds, then `(x − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtNormalization {
    /// Lower clip bound (nnDetection: foreground 0.5th percentile).
    pub clip_lower: f64,
    /// Upper clip bound (nnDetection: foreground 99.5th percentile).
    pub clip_upper: f64,
    /// Mean subtracted after clipping (foreground mean).
    pub mean: f64,
    /// Standard deviation divided by (foreground std; no epsilon).
    pub std: f64,
}

impl CtNormalization {
    /// nnDetection's parameters from dataset statistics: clip to `[p0.5, p99.5]`, foreground mean/std.
    pub fn from_stats(stats: &IntensityStats) -> CtNormalization {
        CtNormalization {
            clip_lower: stats.percentile_00_5,
            clip_upper: stats.percentile_99_5,
            mean: stats.mean,
            std: stats.std,
        }
    }

    /// Parameters from foreground samples with custom clip percentiles (0–100).
    pub fn from_samples(
        samples: &[f32],
        lower_percentile: f64,
        upper_percentile: f64,
    ) -> Result<Self, VolumeError> {
        if !(0.0..=100.0).contains(&lower_percentile)
            || !(0.0..=100.0).contains(&upper_percentile)
            || lower_percentile > upper_percentile
        {
            return Err(VolumeError::InvalidArgument(format!(
                "CT clip percentiles must satisfy 0 <= lower <= upper <= 100, got {lower_percentile} and {upper_percentile}"
            )));
        }
        let stats = intensity_stats(samples)?;
        let mut sorted = samples.to_vec();
        Ok(CtNormalization {
            clip_lower: percentile(&mut sorted, lower_percentile),
            clip_upper: percentile(&mut sorted, upper_percentile),
            mean: stats.mean,
            std: stats.std,
        })
    }

    fn validate(&self) -> Result<(), VolumeError> {
        let ok = [self.clip_lower, self.clip_upper, self.mean, self.std]
            .iter()
            .all(|v| v.is_finite())
            && self.clip_lower <= self.clip_upper
            && self.std > 0.0;
        if ok {
            Ok(())
        } else {
            Err(VolumeError::InvalidArgument(format!(
                "CT normalisation needs finite parameters with clip_lower <= clip_upper and std > 0, got {self:?}"
            )))
        }
    }
}

/// How one channel is normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NormalizationScheme {
    /// nnDetection "CT": clip, then z-score with the given (dataset foreground) statistics.
    Ct(CtNormalization),
    /// nnDetection "CT2": clip, then z-score with the case's voxels strictly inside the bounds.
    Ct2(CtNormalization),
    /// Per-case z-score (`+1e-8`); with `use_nonzero_mask`, statistics inside the nonzero mask
    /// (any channel ≠ 0, holes filled) and 0 outside it.
    ZScore {
        /// Compute statistics inside the nonzero mask and zero the outside.
        use_nonzero_mask: bool,
    },
    /// Leave the channel unchanged.
    None,
}

/// CT-normalise every channel with nnDetection's rule and the given foreground statistics.
pub fn normalize_ct(volume: &Volume, stats: &IntensityStats) -> Result<Volume, VolumeError> {
    normalize_ct_with(volume, &CtNormalization::from_stats(stats))
}

/// CT-normalise every channel with explicit clip bounds, mean and std.
pub fn normalize_ct_with(volume: &Volume, params: &CtNormalization) -> Result<Volume, VolumeError> {
    normalize(
        volume,
        &vec![NormalizationScheme::Ct(params.clone()); volume.channels()],
    )
}

/// Per-channel z-score `(x − mean) / (std + 1e-8)`; with a mask, statistics inside it and 0 outside.
pub fn normalize_zscore(
    volume: &Volume,
    mask: Option<&Array3<bool>>,
) -> Result<Volume, VolumeError> {
    volume.check_finite()?;
    let mut out = volume.clone();
    if let Some(m) = mask {
        check_mask(volume, m)?;
    }
    for c in 0..volume.channels() {
        zscore_channel(&mut out, c, mask);
    }
    Ok(out)
}

/// Normalise each channel with its own scheme (`schemes.len()` must equal the channel count).
pub fn normalize(volume: &Volume, schemes: &[NormalizationScheme]) -> Result<Volume, VolumeError> {
    let mut out = volume.clone();
    normalize_in_place(&mut out, schemes)?;
    Ok(out)
}

/// CT-normalise every channel in place (no copy of the volume); see [`normalize_ct_with`].
pub fn normalize_ct_in_place(
    volume: &mut Volume,
    params: &CtNormalization,
) -> Result<(), VolumeError> {
    let schemes = vec![NormalizationScheme::Ct(params.clone()); volume.channels()];
    normalize_in_place(volume, &schemes)
}

/// [`normalize`] in place: the volume is left unchanged when an error is returned.
pub fn normalize_in_place(
    volume: &mut Volume,
    schemes: &[NormalizationScheme],
) -> Result<(), VolumeError> {
    if schemes.len() != volume.channels() {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: {} normalisation schemes given for {} channels",
            volume.describe(),
            schemes.len(),
            volume.channels()
        )));
    }
    volume.check_finite()?;
    make_standard(volume);
    // Validate everything first, so that an error leaves the volume untouched.
    let mut ct2 = vec![None; schemes.len()];
    for (c, scheme) in schemes.iter().enumerate() {
        if let NormalizationScheme::Ct(p) | NormalizationScheme::Ct2(p) = scheme {
            p.validate()?;
        }
        if let NormalizationScheme::Ct2(p) = scheme {
            let (lo, hi) = (p.clip_lower, p.clip_upper);
            let inside: Vec<f32> = channel_slice(volume, c)
                .par_chunks(1 << 16)
                .flat_map_iter(|ch| {
                    ch.iter()
                        .copied()
                        .filter(|&v| (v as f64) > lo && (v as f64) < hi)
                })
                .collect();
            let Moments { mean, std, .. } = moments(&inside);
            if inside.is_empty() || !(std > 0.0) {
                return Err(VolumeError::InvalidArgument(format!(
                    "{}: CT2 normalisation of channel {c}: no voxels (or no spread) strictly inside ({lo}, {hi})",
                    volume.describe()
                )));
            }
            ct2[c] = Some((mean, std));
        }
    }
    let needs_mask = schemes.iter().any(|s| {
        matches!(
            s,
            NormalizationScheme::ZScore {
                use_nonzero_mask: true
            }
        )
    });
    let mask = if needs_mask {
        Some(volume.nonzero_mask(true))
    } else {
        None
    };
    for (c, scheme) in schemes.iter().enumerate() {
        match scheme {
            NormalizationScheme::Ct(p) => {
                let (lo, hi, mean, std) = (p.clip_lower, p.clip_upper, p.mean, p.std);
                map_channel(volume, c, |v| ((v as f64).clamp(lo, hi) - mean) / std);
            }
            NormalizationScheme::Ct2(p) => {
                let (lo, hi) = (p.clip_lower, p.clip_upper);
                let (mean, std) = ct2[c].expect("computed above");
                map_channel(volume, c, |v| ((v as f64).clamp(lo, hi) - mean) / std);
            }
            NormalizationScheme::ZScore { use_nonzero_mask } => zscore_channel(
                volume,
                c,
                if *use_nonzero_mask {
                    mask.as_ref()
                } else {
                    None
                },
            ),
            NormalizationScheme::None => {}
        }
    }
    Ok(())
}

/// The contiguous voxels of channel `c` (volumes are kept in standard layout).
fn channel_slice(vol: &Volume, c: usize) -> &[f32] {
    let n: usize = vol.spatial_shape().iter().product();
    let all = vol
        .data
        .as_slice()
        .expect("Volume data is kept in standard layout");
    &all[c * n..(c + 1) * n]
}

/// Make sure the data is in standard layout (someone may have assigned a transposed array).
fn make_standard(vol: &mut Volume) {
    if !vol.data.is_standard_layout() {
        vol.data = vol.data.as_standard_layout().into_owned();
    }
}

fn check_mask(volume: &Volume, mask: &Array3<bool>) -> Result<(), VolumeError> {
    let s = mask.shape();
    if [s[0], s[1], s[2]] != volume.spatial_shape() {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: mask shape {:?} differs from the volume's {:?}",
            volume.describe(),
            s,
            volume.spatial_shape()
        )));
    }
    Ok(())
}

/// Apply `f` (computed in f64) to every voxel of channel `c`, in parallel over slices.
fn map_channel(vol: &mut Volume, c: usize, f: impl Fn(f32) -> f64 + Sync) {
    let mut channel = vol.data.index_axis_mut(Axis(0), c);
    channel
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .for_each(|mut slice| slice.mapv_inplace(|v| f(v) as f32));
}

fn zscore_channel(vol: &mut Volume, c: usize, mask: Option<&Array3<bool>>) {
    make_standard(vol);
    let channel = vol.data.index_axis(Axis(0), c);
    let Moments { mean, std, .. } = match mask {
        None => moments(channel_slice(vol, c)),
        Some(m) => {
            let inside: Vec<f32> = channel
                .iter()
                .zip(m.iter())
                .filter(|(_, m)| **m)
                .map(|(v, _)| *v)
                .collect();
            moments(&inside)
        }
    };
    let (mean, denom) = if mean.is_finite() {
        (mean, std + 1e-8)
    } else {
        (0.0, 1.0)
    };
    let mut channel = vol.data.index_axis_mut(Axis(0), c);
    match mask {
        None => channel
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .for_each(|mut s| s.mapv_inplace(|v| ((v as f64 - mean) / denom) as f32)),
        Some(m) => channel
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(m.axis_iter(Axis(0)))
            .for_each(|(mut s, ms)| {
                s.zip_mut_with(&ms, |v, &inside| {
                    *v = if inside {
                        ((*v as f64 - mean) / denom) as f32
                    } else {
                        0.0
                    }
                })
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn percentile_matches_numpy_linear() {
        // np.percentile([3, 1, 4, 1, 5, 9, 2, 6], [0, 0.5, 25, 50, 99.5, 100]) =
        // [1.0, 1.0, 1.75, 3.5, 8.895, 9.0]
        let v = [3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        for (q, e) in [
            (0.0, 1.0),
            (0.5, 1.0),
            (25.0, 1.75),
            (50.0, 3.5),
            (99.5, 8.895),
            (100.0, 9.0),
        ] {
            let mut w = v.to_vec();
            assert!(
                (percentile(&mut w, q) - e).abs() < 1e-12,
                "q={q}: {}",
                percentile(&mut v.to_vec(), q)
            );
        }
        // np.percentile((np.arange(1000.0) ** 1.5).astype(np.float32), [0.5, 99.5])
        // = [11.1644381, 31338.8361]
        let mut big: Vec<f32> = (0..1000)
            .rev()
            .map(|i| (i as f64).powf(1.5) as f32)
            .collect();
        assert!((percentile(&mut big, 0.5) - 11.164_438_1).abs() < 1e-4);
        assert!((percentile(&mut big, 99.5) - 31_338.836_1).abs() < 1e-2);
    }

    #[test]
    fn foreground_samples_take_every_tenth_in_c_order() {
        let image = Array4::from_shape_fn((1, 3, 4, 5), |(_, d, h, w)| (d * 20 + h * 5 + w) as f32);
        let mask = Array4::from_shape_fn((1, 3, 4, 5), |(_, d, h, w)| ((d + h + w) % 2) as f32);
        let image = Volume::from_array(image, [1.0; 3]);
        let mask = Volume::from_array(mask, [1.0; 3]);
        let samples = foreground_samples(&image, &mask, 10).unwrap();
        let expected: Vec<f32> = image
            .data
            .iter()
            .zip(mask.data.iter())
            .filter(|(_, m)| **m > 0.0)
            .map(|(v, _)| *v)
            .step_by(10)
            .collect();
        assert_eq!(samples, vec![expected.clone()]);
        assert_eq!(expected.len(), 3); // 30 foreground voxels
        let by_threshold = threshold_samples(image.data.index_axis(Axis(0), 0), 29.5, 4);
        let expected: Vec<f32> = image
            .data
            .iter()
            .copied()
            .filter(|&v| v > 29.5)
            .step_by(4)
            .collect();
        assert_eq!(by_threshold, expected);
        assert_eq!(expected.first(), Some(&30.0));
        let wrong = Volume::from_array(Array4::zeros((1, 3, 4, 4)), [1.0; 3]);
        assert!(foreground_samples(&image, &wrong, 10).is_err());
    }

    #[test]
    fn ct_normalisation_clips_then_standardises() {
        let data =
            Array4::from_shape_vec((1, 1, 1, 5), vec![-1000.0, 0.0, 40.0, 80.0, 3000.0]).unwrap();
        let vol = Volume::from_array(data, [1.0; 3]);
        let stats = IntensityStats {
            mean: 40.0,
            std: 20.0,
            median: 40.0,
            min: -50.0,
            max: 500.0,
            percentile_00_5: -20.0,
            percentile_99_5: 100.0,
            count: 10,
        };
        let out = normalize_ct(&vol, &stats).unwrap();
        assert_eq!(
            out.data.iter().copied().collect::<Vec<_>>(),
            vec![-3.0, -2.0, 0.0, 2.0, 3.0]
        );
        let mut zero_std = stats.clone();
        zero_std.std = 0.0;
        assert!(
            normalize_ct(&vol, &zero_std)
                .unwrap_err()
                .to_string()
                .contains("std > 0")
        );
    }

    #[test]
    fn zscore_with_and_without_mask() {
        let data =
            Array4::from_shape_vec((1, 1, 2, 3), vec![0.0, 2.0, 4.0, 0.0, 6.0, 0.0]).unwrap();
        let vol = Volume::from_array(data, [1.0; 3]);
        let out = normalize_zscore(&vol, None).unwrap();
        let s = out.stats();
        assert!(s.mean.abs() < 1e-6 && (s.std - 1.0).abs() < 1e-6);
        let masked = normalize(
            &vol,
            &[NormalizationScheme::ZScore {
                use_nonzero_mask: true,
            }],
        )
        .unwrap();
        // inside: 2, 4, 6 → mean 4, std sqrt(8/3)
        let sd = (8.0f64 / 3.0).sqrt() + 1e-8;
        let expected = [0.0, -2.0 / sd, 0.0, 0.0, 2.0 / sd, 0.0];
        for (g, e) in masked.data.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-6);
        }
    }

    #[test]
    fn normalisation_refuses_nan_and_names_the_voxel() {
        let mut data = Array4::from_elem((1, 2, 2, 2), 1.0f32);
        data[[0, 1, 0, 1]] = f32::NAN;
        data[[0, 1, 1, 1]] = f32::INFINITY;
        let mut vol = Volume::from_array(data, [1.0; 3]);
        vol.source = vec!["case_0000.nii.gz".into()];
        let err = normalize_zscore(&vol, None).unwrap_err().to_string();
        assert!(
            err.contains("case_0000.nii.gz")
                && err.contains("2 non-finite")
                && err.contains("[0, 1, 0, 1]"),
            "{err}"
        );
        let (clean, n) = vol.replace_non_finite(0.0);
        assert_eq!(n, 2);
        assert!(normalize_zscore(&clean, None).is_ok());
        assert!(intensity_stats(&[1.0, f32::NAN]).is_err());
        assert!(intensity_stats(&[]).is_err());
    }

    #[test]
    fn pooled_stats_equal_stats_of_the_concatenation() {
        let a = vec![1.0f32, 2.0, 3.0];
        let b = vec![10.0f32, 20.0];
        let pooled = pooled_intensity_stats(&[a.clone(), b.clone()]).unwrap();
        let all = intensity_stats(&[1.0, 2.0, 3.0, 10.0, 20.0]).unwrap();
        assert_eq!(pooled, all);
        assert_eq!(all.median, 3.0);
        assert!((all.mean - 7.2).abs() < 1e-12);
        // np.std([1, 2, 3, 10, 20]) = 7.138627319029899
        assert!((all.std - 7.138_627_319_029_899).abs() < 1e-12);
        // np.percentile(np.arange(1, 103.0), [25, 75]) = [26.25, 76.75]
        let ct = CtNormalization::from_samples(&all_samples(), 25.0, 75.0).unwrap();
        assert_eq!((ct.clip_lower, ct.clip_upper), (26.25, 76.75));
    }

    fn all_samples() -> Vec<f32> {
        (1..=102).map(|v| v as f32).collect()
    }
}
