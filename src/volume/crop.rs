//! Cropping and padding: to the non-zero region (nnDetection's first preprocessing step) or to a box.
//!
//! Every crop or pad moves the affine's origin by `A · (start_w, start_h, start_d)`, so a voxel
//! keeps its world position; [`CropInfo`] maps boxes between the cropped and the original grid.

use super::boxes::Box3;
use super::{Volume, VolumeError};
use ndarray::{Array3, Array4, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a crop came from: its start in the original grid and the original spatial shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropInfo {
    /// First voxel `[d, h, w]` of the crop in the original grid.
    pub start: [usize; 3],
    /// Spatial shape `[D, H, W]` of the original volume.
    pub original_shape: [usize; 3],
    /// Spatial shape `[D, H, W]` of the crop.
    pub shape: [usize; 3],
}

impl CropInfo {
    /// Map a box from cropped coordinates back to the original grid (adds `start`).
    pub fn box_to_original(&self, b: &Box3) -> Box3 {
        let s = self.start.map(|v| v as f64);
        [
            b[0] + s[0],
            b[1] + s[1],
            b[2] + s[2],
            b[3] + s[0],
            b[4] + s[1],
            b[5] + s[2],
        ]
    }

    /// Map a box from the original grid into cropped coordinates (subtracts `start`).
    pub fn box_to_cropped(&self, b: &Box3) -> Box3 {
        let s = self.start.map(|v| v as f64);
        [
            b[0] - s[0],
            b[1] - s[1],
            b[2] - s[2],
            b[3] - s[0],
            b[4] - s[1],
            b[5] - s[2],
        ]
    }
}

impl Volume {
    /// Mask of voxels where any channel is non-zero; with `fill_holes`, enclosed zero regions
    /// (6-connected, not touching the border) are filled, like scipy's `binary_fill_holes`.
    pub fn nonzero_mask(&self, fill_holes: bool) -> Array3<bool> {
        let [c, d, h, w] = self.shape();
        let mut mask = Array3::from_elem((d, h, w), false);
        mask.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(z, mut slice)| {
                for ch in 0..c {
                    let src = self.data.slice(s![ch, z, .., ..]);
                    slice.zip_mut_with(&src, |m, &v| *m |= v != 0.0);
                }
            });
        if fill_holes {
            fill_holes_6(&mut mask);
        }
        mask
    }

    /// Crop to the bounding box of the non-zero region (any channel ≠ 0).
    ///
    /// An all-zero volume is returned whole (start 0). Returns the crop and where it came from.
    pub fn crop_to_nonzero(&self) -> (Volume, CropInfo) {
        let [c, d, h, w] = self.shape();
        // Per D slice: (hmin, hmax, wmin, wmax) of non-zero voxels, if any.
        let per_slice: Vec<Option<[usize; 4]>> = (0..d)
            .into_par_iter()
            .map(|z| {
                let mut b: Option<[usize; 4]> = None;
                for ch in 0..c {
                    for ((y, x), &v) in self.data.slice(s![ch, z, .., ..]).indexed_iter() {
                        if v != 0.0 {
                            b = Some(match b {
                                None => [y, y, x, x],
                                Some(o) => [o[0].min(y), o[1].max(y), o[2].min(x), o[3].max(x)],
                            });
                        }
                    }
                }
                b
            })
            .collect();
        let zs: Vec<usize> = (0..d).filter(|&z| per_slice[z].is_some()).collect();
        let (start, size) = match (zs.first(), zs.last()) {
            (Some(&z0), Some(&z1)) => {
                let bounds =
                    per_slice
                        .iter()
                        .flatten()
                        .fold([usize::MAX, 0, usize::MAX, 0], |a, b| {
                            [
                                a[0].min(b[0]),
                                a[1].max(b[1]),
                                a[2].min(b[2]),
                                a[3].max(b[3]),
                            ]
                        });
                (
                    [z0, bounds[0], bounds[2]],
                    [
                        z1 - z0 + 1,
                        bounds[1] - bounds[0] + 1,
                        bounds[3] - bounds[2] + 1,
                    ],
                )
            }
            _ => ([0, 0, 0], [d, h, w]),
        };
        let cropped = self.crop_or_pad(start.map(|v| v as i64), size, 0.0);
        (
            cropped,
            CropInfo {
                start,
                original_shape: [d, h, w],
                shape: size,
            },
        )
    }

    /// Take the `size` region starting at `start` (may be negative or reach past the end);
    /// voxels outside the volume get `pad_value`. The affine moves with the crop.
    pub fn crop_or_pad(&self, start: [i64; 3], size: [usize; 3], pad_value: f32) -> Volume {
        let [c, d, h, w] = self.shape();
        let dims = [d, h, w];
        let mut data = Array4::from_elem((c, size[0], size[1], size[2]), pad_value);
        // Overlap of [start, start + size) with [0, dims) per axis, in source coordinates.
        let mut lo = [0usize; 3];
        let mut hi = [0usize; 3];
        let mut empty = false;
        for a in 0..3 {
            let l = start[a].max(0);
            let r = (start[a] + size[a] as i64).min(dims[a] as i64);
            if r <= l {
                empty = true;
            } else {
                lo[a] = l as usize;
                hi[a] = r as usize;
            }
        }
        if !empty {
            let dst0 = [0, 1, 2].map(|a| (lo[a] as i64 - start[a]) as usize);
            data.axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(ch, mut out)| {
                    let src = self
                        .data
                        .slice(s![ch, lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
                    out.slice_mut(s![
                        dst0[0]..dst0[0] + hi[0] - lo[0],
                        dst0[1]..dst0[1] + hi[1] - lo[1],
                        dst0[2]..dst0[2] + hi[2] - lo[2]
                    ])
                    .assign(&src);
                });
        }
        let mut affine = self.affine;
        // The affine acts on (i, j, k) = (w, h, d).
        let shift = [start[2] as f64, start[1] as f64, start[0] as f64];
        for r in 0..3 {
            affine[r][3] += (0..3).map(|k| self.affine[r][k] * shift[k]).sum::<f64>();
        }
        Volume {
            data,
            spacing: self.spacing,
            affine,
            source: self.source.clone(),
        }
    }

    /// Put a crop back into its original grid (the inverse of [`Volume::crop_to_nonzero`]).
    pub fn uncrop(&self, info: &CropInfo, pad_value: f32) -> Result<Volume, VolumeError> {
        if self.spatial_shape() != info.shape {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: cannot uncrop a volume of shape {:?} with a crop of shape {:?}",
                self.describe(),
                self.spatial_shape(),
                info.shape
            )));
        }
        Ok(self.crop_or_pad(
            info.start.map(|v| -(v as i64)),
            info.original_shape,
            pad_value,
        ))
    }
}

/// Fill enclosed `false` regions of a mask: flood the background from the border (6-connected).
fn fill_holes_6(mask: &mut Array3<bool>) {
    let (d, h, w) = mask.dim();
    if d == 0 || h == 0 || w == 0 {
        return;
    }
    let n = d * h * w;
    let flat = mask.as_slice_mut().expect("a new array is contiguous");
    // 0 = unvisited background, 1 = foreground, 2 = background reached from the border.
    let mut state: Vec<u8> = flat.iter().map(|&m| m as u8).collect();
    let mut stack: Vec<usize> = Vec::new();
    let seed = |i: usize, state: &mut Vec<u8>, stack: &mut Vec<usize>| {
        if state[i] == 0 {
            state[i] = 2;
            stack.push(i);
        }
    };
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                if z == 0 || z == d - 1 || y == 0 || y == h - 1 || x == 0 || x == w - 1 {
                    seed((z * h + y) * w + x, &mut state, &mut stack);
                }
            }
        }
    }
    while let Some(i) = stack.pop() {
        let (z, rem) = (i / (h * w), i % (h * w));
        let (y, x) = (rem / w, rem % w);
        if x > 0 {
            seed(i - 1, &mut state, &mut stack);
        }
        if x + 1 < w {
            seed(i + 1, &mut state, &mut stack);
        }
        if y > 0 {
            seed(i - w, &mut state, &mut stack);
        }
        if y + 1 < h {
            seed(i + w, &mut state, &mut stack);
        }
        if z > 0 {
            seed(i - h * w, &mut state, &mut stack);
        }
        if z + 1 < d {
            seed(i + h * w, &mut state, &mut stack);
        }
    }
    debug_assert_eq!(state.len(), n);
    for (m, s) in flat.iter_mut().zip(&state) {
        *m = *s != 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol_with_block() -> Volume {
        let mut data = Array4::zeros((2, 8, 9, 10));
        data[[0, 2, 3, 4]] = 1.0;
        data[[1, 5, 6, 7]] = -2.0;
        let mut v = Volume::from_array(data, [2.0, 1.0, 0.5]);
        v.affine[0][3] = 100.0;
        v
    }

    #[test]
    fn crop_to_nonzero_uses_any_channel_and_keeps_world_positions() {
        let vol = vol_with_block();
        let (crop, info) = vol.crop_to_nonzero();
        assert_eq!(
            info,
            CropInfo {
                start: [2, 3, 4],
                original_shape: [8, 9, 10],
                shape: [4, 4, 4]
            }
        );
        assert_eq!(crop.shape(), [2, 4, 4, 4]);
        assert_eq!(crop.data[[0, 0, 0, 0]], 1.0);
        assert_eq!(crop.data[[1, 3, 3, 3]], -2.0);
        assert_eq!(
            crop.voxel_to_world([0.0, 0.0, 0.0]),
            vol.voxel_to_world([2.0, 3.0, 4.0])
        );
        let b = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(info.box_to_original(&b), [2.0, 3.0, 4.0, 3.0, 4.0, 5.0]);
        assert_eq!(info.box_to_cropped(&info.box_to_original(&b)), b);
        assert_eq!(crop.uncrop(&info, 0.0).unwrap(), vol);
        let empty = Volume::from_array(Array4::zeros((1, 3, 3, 3)), [1.0; 3]);
        assert_eq!(empty.crop_to_nonzero().1.shape, [3, 3, 3]);
    }

    #[test]
    fn crop_or_pad_pads_outside_and_shifts_the_affine() {
        let vol = vol_with_block();
        let out = vol.crop_or_pad([-1, 3, 8], [3, 2, 4], -5.0);
        assert_eq!(out.shape(), [2, 3, 2, 4]);
        // Source d = -1 is padding; w = 10, 11 are past the end.
        assert!(out.data.slice(s![.., 0, .., ..]).iter().all(|&v| v == -5.0));
        assert!(
            out.data
                .slice(s![.., .., .., 2..])
                .iter()
                .all(|&v| v == -5.0)
        );
        assert_eq!(out.data[[0, 1, 0, 0]], 0.0);
        assert_eq!(
            out.voxel_to_world([1.0, 0.0, 0.0]),
            vol.voxel_to_world([0.0, 3.0, 8.0])
        );
        let nothing = vol.crop_or_pad([20, 0, 0], [2, 2, 2], 7.0);
        assert!(nothing.data.iter().all(|&v| v == 7.0));
    }

    #[test]
    fn nonzero_mask_fills_enclosed_holes_only() {
        let mut data = Array4::zeros((1, 5, 5, 5));
        data.slice_mut(s![0, 1..4, 1..4, 1..4]).fill(1.0);
        data[[0, 2, 2, 2]] = 0.0; // enclosed hole
        data[[0, 2, 2, 1]] = 0.0; // open to the border through x = 0? no: (2,2,0) is border background
        let vol = Volume::from_array(data, [1.0; 3]);
        let raw = vol.nonzero_mask(false);
        let filled = vol.nonzero_mask(true);
        assert!(!raw[[2, 2, 2]]);
        // (2,2,1) touches the border voxel (2,2,0), so it and the centre it opens onto stay empty.
        assert!(!filled[[2, 2, 1]] && !filled[[2, 2, 2]]);
        let mut data = Array4::zeros((1, 5, 5, 5));
        data.slice_mut(s![0, 1..4, 1..4, 1..4]).fill(1.0);
        data[[0, 2, 2, 2]] = 0.0;
        let filled = Volume::from_array(data, [1.0; 3]).nonzero_mask(true);
        assert!(filled[[2, 2, 2]] && !filled[[0, 0, 0]]);
        assert_eq!(filled.iter().filter(|&&m| m).count(), 27);
    }
}
