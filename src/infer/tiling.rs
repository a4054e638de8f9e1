//! The sliding-window grid (nnDetection's "symmetric" grid with shifted border tiles), tile
//! extraction with padding, mirror flips of boxes and the tile position weight.

use ndarray::{Array4, ArrayView4, s};

use super::InferError;
use crate::volume::boxes::{Box3, center};

/// One tile of the sliding-window grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// First voxel `[d, h, w]` of the tile in the volume; negative on an axis where the volume
    /// is smaller than the tile (the tile is then centred and padded).
    pub origin: [i64; 3],
    /// Tile size `[D, H, W]`.
    pub size: [usize; 3],
}

/// Tile starts along one axis of `length` voxels for tiles of `patch` voxels sharing
/// `overlap` voxels (nnDetection's `_symmetric_slices` followed by the "shift" crop).
///
/// The first start is `((length mod (patch − overlap)) − patch) // 2` (floor), then starts
/// advance by `patch − overlap` until a tile reaches the end; tiles crossing a border are
/// shifted inside. Unlike nnDetection, tiles that become identical after the shift are kept
/// once (same detections, less work). A volume shorter than the patch gets one centred tile
/// starting at `−(patch − length) // 2` (floor), which is padded.
pub fn axis_starts(length: usize, patch: usize, overlap: usize) -> Vec<i64> {
    let (length_i, patch_i, overlap_i) = (length as i64, patch as i64, overlap as i64);
    if patch_i >= length_i {
        return vec![(-(patch_i - length_i)).div_euclid(2)];
    }
    let step = (patch_i - overlap_i).max(1);
    let first = ((length_i % step) - patch_i).div_euclid(2);
    let mut starts = Vec::new();
    let mut lower = first;
    let mut upper = i64::MIN;
    while upper < length_i {
        if !starts.is_empty() {
            lower -= overlap_i;
        }
        upper = lower + patch_i;
        starts.push(lower.clamp(0, length_i - patch_i));
        lower = upper;
    }
    starts.dedup();
    starts
}

/// The tiles covering a volume of spatial `shape` with tiles of `patch` voxels and a relative
/// `overlap` in [0, 1) (overlap in voxels = ⌊patch × overlap⌋ per axis); D-major order.
pub fn tile_grid(
    shape: [usize; 3],
    patch: [usize; 3],
    overlap: f64,
) -> Result<Vec<Tile>, InferError> {
    if shape.contains(&0) {
        return Err(InferError::InvalidInput(format!(
            "the volume has an empty spatial shape {shape:?}"
        )));
    }
    if patch.contains(&0) {
        return Err(InferError::config(
            "patch_size",
            format!("{patch:?} has a zero side"),
        ));
    }
    if !(overlap.is_finite() && (0.0..1.0).contains(&overlap)) {
        return Err(InferError::config(
            "overlap",
            format!("{overlap} must be in [0, 1)"),
        ));
    }
    let starts: Vec<Vec<i64>> = (0..3)
        .map(|a| axis_starts(shape[a], patch[a], (patch[a] as f64 * overlap) as usize))
        .collect();
    let mut tiles = Vec::with_capacity(starts.iter().map(Vec::len).product());
    for &d in &starts[0] {
        for &h in &starts[1] {
            for &w in &starts[2] {
                tiles.push(Tile {
                    origin: [d, h, w],
                    size: patch,
                });
            }
        }
    }
    Ok(tiles)
}

/// Copy a tile `[C, size]` out of `image` `[C, D, H, W]`, filling voxels outside the volume with
/// `pad_value`; the values are appended to `out` in C order.
pub fn extract_tile(image: &ArrayView4<f32>, tile: &Tile, pad_value: f32, out: &mut Vec<f32>) {
    let (c, d, h, w) = image.dim();
    let shape = [d, h, w];
    let [sd, sh, sw] = tile.size;
    // Inside-volume part of the tile on every axis: volume range and its offset in the tile.
    let range = |a: usize| {
        let start = tile.origin[a].max(0) as usize;
        let end = ((tile.origin[a] + tile.size[a] as i64).max(0) as usize).min(shape[a]);
        let offset = (start as i64 - tile.origin[a]) as usize;
        (start, end.max(start), offset)
    };
    let (r0, r1, r2) = (range(0), range(1), range(2));
    let inside = tile.origin.iter().all(|&o| o >= 0)
        && (0..3).all(|a| tile.origin[a] as usize + tile.size[a] <= shape[a]);
    if inside {
        out.extend(
            image
                .slice(s![.., r0.0..r0.1, r1.0..r1.1, r2.0..r2.1])
                .iter()
                .copied(),
        );
        return;
    }
    let mut buffer = Array4::from_elem((c, sd, sh, sw), pad_value);
    let (n0, n1, n2) = (r0.1 - r0.0, r1.1 - r1.0, r2.1 - r2.0);
    buffer
        .slice_mut(s![.., r0.2..r0.2 + n0, r1.2..r1.2 + n1, r2.2..r2.2 + n2])
        .assign(&image.slice(s![.., r0.0..r0.1, r1.0..r1.1, r2.0..r2.1]));
    out.extend(buffer.iter().copied());
}

/// Mirror a box (nnDetection's convention, the one detlab trains on) inside a tile of `size`
/// along the flagged axes: `c → size − 1 − c`, min and max swapped, so the box of an object's
/// voxels becomes the box of the mirrored voxels. (nnDetection maps `c → size − c`, which moves
/// boxes of its own convention by one voxel.) Applying it twice gives the box back.
pub fn flip_box(b: &Box3, flips: [bool; 3], size: [usize; 3]) -> Box3 {
    crate::volume::boxes::BoxConvention::NnDetection.flip(b, flips, size)
}

/// Weight of a box by its position in a tile: `1 − max(0, d / d_max − 0.5)` with `d` the
/// distance of the box centre from the tile centre and `d_max` half the tile diagonal, so
/// 1 in the central region and 0.5 at the corners (nnDetection's linear tile weight).
pub fn position_weight(b: &Box3, size: [usize; 3]) -> f64 {
    let c = center(b);
    let half = size.map(|s| s as f64 / 2.0);
    let d_max = half.iter().map(|h| h * h).sum::<f64>().sqrt();
    let d = (0..3).map(|a| (c[a] - half[a]).powi(2)).sum::<f64>().sqrt();
    1.0 - (d / d_max - 0.5).max(0.0)
}

/// Shift a box from tile coordinates into volume coordinates.
pub fn shift_box(b: &Box3, origin: [i64; 3]) -> Box3 {
    let mut o = *b;
    for a in 0..3 {
        o[a] += origin[a] as f64;
        o[a + 3] += origin[a] as f64;
    }
    o
}

/// Round every side of `patch` up to a multiple of `divisor`.
pub fn round_up_patch(patch: [usize; 3], divisor: [usize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| {
        let d = divisor[a].max(1);
        patch[a].div_ceil(d) * d
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn axis_starts_match_nndetection_examples() {
        // L = 32, P = 16, O = 8: symmetric starts −8, 0, 8, 16 → shifted 0, 0, 8, 16 → deduped.
        assert_eq!(axis_starts(32, 16, 8), vec![0, 8, 16]);
        // L = 37: pmod 5, first (5 − 16) // 2 = −6: −6, 2, 10, 18, 26 → 0, 2, 10, 18, 21.
        assert_eq!(axis_starts(37, 16, 8), vec![0, 2, 10, 18, 21]);
        // No overlap: L = 40, P = 16: first (8 − 16) // 2 = −4: −4, 12, 28 → 0, 12, 24.
        assert_eq!(axis_starts(40, 16, 0), vec![0, 12, 24]);
        // Volume equal to / smaller than the patch: one (centred) tile.
        assert_eq!(axis_starts(16, 16, 8), vec![0]);
        assert_eq!(axis_starts(11, 16, 8), vec![-3]);
        assert_eq!(axis_starts(10, 16, 8), vec![-3]);
    }

    #[test]
    fn tile_grid_covers_every_voxel_inside_the_volume_and_is_symmetric() {
        for (length, patch) in [
            (32, 16),
            (37, 16),
            (48, 24),
            (17, 8),
            (100, 32),
            (9, 8),
            (5, 8),
        ] {
            for overlap in [0.0, 0.25, 0.5, 0.75] {
                let o = (patch as f64 * overlap) as usize;
                let starts = axis_starts(length, patch, o);
                let mut covered = vec![0usize; length];
                for &s in &starts {
                    if patch <= length {
                        assert!(
                            s >= 0 && s as usize + patch <= length,
                            "{length} {patch} {overlap}: {starts:?}"
                        );
                    } else {
                        assert!(s <= 0 && s + patch as i64 >= length as i64);
                    }
                    for v in s.max(0)..(s + patch as i64).min(length as i64) {
                        covered[v as usize] += 1;
                    }
                }
                assert!(
                    covered.iter().all(|&c| c > 0),
                    "{length} {patch} {overlap}: {starts:?}"
                );
                assert!(starts.windows(2).all(|w| w[0] < w[1]));
                // Symmetric: mirroring the tiles of the axis gives the same set of tiles.
                let mut mirrored: Vec<i64> = starts
                    .iter()
                    .map(|&s| length as i64 - patch as i64 - s)
                    .collect();
                mirrored.sort();
                if patch <= length && (length % (patch - o).max(1)).is_multiple_of(2) {
                    assert_eq!(mirrored, starts, "{length} {patch} {overlap}");
                }
            }
        }
        let tiles = tile_grid([32, 20, 8], [16, 16, 16], 0.5).unwrap();
        assert_eq!(tiles.len(), 9, "h: starts −6, 2, 10 shifted to 0, 2, 4");
        assert!(
            tiles
                .iter()
                .all(|t| t.size == [16, 16, 16] && t.origin[2] == -4)
        );
        assert!(tile_grid([0, 4, 4], [4, 4, 4], 0.5).is_err());
        assert!(tile_grid([4, 4, 4], [4, 4, 4], 1.0).is_err());
    }

    #[test]
    fn tiles_are_copied_and_padded() {
        let image = Array4::from_shape_fn((2, 4, 5, 6), |(c, d, h, w)| {
            (c * 1000 + d * 100 + h * 10 + w) as f32
        });
        let mut out = Vec::new();
        extract_tile(
            &image.view(),
            &Tile {
                origin: [1, 2, 3],
                size: [2, 2, 2],
            },
            -1.0,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                123., 124., 133., 134., 223., 224., 233., 234., 1123., 1124., 1133., 1134., 1223.,
                1224., 1233., 1234.
            ]
        );
        out.clear();
        // A tile larger than the volume: centred with −1 padding.
        extract_tile(
            &image.view(),
            &Tile {
                origin: [-1, 0, 0],
                size: [6, 5, 6],
            },
            -1.0,
            &mut out,
        );
        let tile = Array4::from_shape_vec((2, 6, 5, 6), out).unwrap();
        assert_eq!(tile[[0, 0, 0, 0]], -1.0);
        assert_eq!(tile[[1, 5, 4, 5]], -1.0);
        assert_eq!(tile[[0, 1, 0, 0]], 0.0);
        assert_eq!(tile[[1, 4, 4, 5]], 1345.0);
    }

    #[test]
    fn flipping_twice_is_the_identity_and_flips_mirror_coordinates() {
        let b = [1.0, 2.5, 3.0, 4.0, 6.0, 7.25];
        let size = [8, 10, 12];
        for k in 0..8u8 {
            let f = [0, 1, 2].map(|a| k >> a & 1 == 1);
            assert_eq!(flip_box(&flip_box(&b, f, size), f, size), b);
        }
        assert_eq!(
            flip_box(&b, [true, false, true], size),
            [3.0, 2.5, 3.75, 6.0, 6.0, 8.0]
        );
    }

    #[test]
    fn position_weight_is_one_in_the_centre_and_half_in_a_corner() {
        let size = [16, 16, 16];
        assert_eq!(
            position_weight(&[6.0, 6.0, 6.0, 10.0, 10.0, 10.0], size),
            1.0
        );
        // Centre at (0, 0, 0): distance = d_max → 0.5.
        assert!((position_weight(&[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], size) - 0.5).abs() < 1e-12);
        // Centre displaced diagonally by t · d_max: weight 1 up to t = 0.5, then 1.5 − t.
        let at = |t: f64| {
            let c = 8.0 + 8.0 * t;
            [c - 1.0, c - 1.0, c - 1.0, c + 1.0, c + 1.0, c + 1.0]
        };
        assert!((position_weight(&at(0.5), size) - 1.0).abs() < 1e-12);
        assert!((position_weight(&at(0.75), size) - 0.75).abs() < 1e-12);
        assert!((position_weight(&at(-0.75), size) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn patches_round_up_to_the_divisor() {
        assert_eq!(round_up_patch([30, 32, 33], [8, 8, 1]), [32, 32, 33]);
        assert_eq!(round_up_patch([5, 5, 5], [0, 4, 16]), [5, 8, 16]);
    }
}
