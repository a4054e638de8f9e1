//! Local pixel shuffling, parallel and deterministic (see the parent module for the transform).

use ndarray::{Array4, ArrayViewMut4, Axis};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use super::{PretrainDataError, VoxelBox, floor_fraction};

/// `count` local-shuffle boxes in a patch of size `patch`: sides uniform in
/// `[1, ⌊edge · max_side_fraction⌋]` per axis (at least 1), positions uniform inside the
/// patch. A patch with an empty axis holds no boxes.
pub fn random_shuffle_boxes<R: Rng + ?Sized>(
    patch: [usize; 3],
    count: usize,
    max_side_fraction: f64,
    rng: &mut R,
) -> Vec<VoxelBox> {
    if patch.contains(&0) {
        return Vec::new();
    }
    let max_side = patch.map(|edge| floor_fraction(edge, max_side_fraction).clamp(1, edge));
    (0..count)
        .map(|_| {
            let side = max_side.map(|m| rng.random_range(1..=m));
            let mut b = [0; 6];
            for axis in 0..3 {
                b[axis] = rng.random_range(0..=patch[axis] - side[axis]);
                b[axis + 3] = b[axis] + side[axis];
            }
            b
        })
        .collect()
}

/// Fewest depth planes per parallel task: thin slabs would permute many boxes more than once.
const MIN_SLAB: usize = 16;

fn box_volume(b: &VoxelBox) -> usize {
    (0..3).map(|a| b[a + 3] - b[a]).product()
}

/// Local pixel shuffling: for each box in order, read it from `original`, permute its voxels
/// (the same permutation in every channel) and write it into `working`; later boxes overwrite
/// earlier ones. Both arrays are `[C, D, H, W]` of the same shape.
///
/// Box `i` is permuted by a Xoshiro256++ generator seeded (through SplitMix64) with
/// `base + i`, `base` drawn from `rng`, so a box's permutation does not depend on which task
/// computes it. Xoshiro rather than ChaCha: the shuffle draws one number per voxel (6 M per
/// 160³ patch), and ChaCha8 took 16 % of its time. The patch is split into depth slabs
/// written in parallel, each applying every box that reaches into it in order (a box spanning
/// two slabs is permuted in both, identically); no buffer beyond one box is needed.
pub fn local_pixel_shuffle<R: Rng + ?Sized>(
    original: &Array4<f32>,
    working: &mut Array4<f32>,
    boxes: &[VoxelBox],
    rng: &mut R,
) -> Result<(), PretrainDataError> {
    let depth = original.dim().1;
    let tasks = 2 * rayon::current_num_threads();
    let slab = depth.div_ceil(tasks).max(MIN_SLAB);
    shuffle_in_slabs(original, working, boxes, rng, slab)
}

/// [`local_pixel_shuffle`] with slabs of `slab` depth planes; the result does not depend on it.
fn shuffle_in_slabs<R: Rng + ?Sized>(
    original: &Array4<f32>,
    working: &mut Array4<f32>,
    boxes: &[VoxelBox],
    rng: &mut R,
    slab: usize,
) -> Result<(), PretrainDataError> {
    let dim = original.dim();
    if working.dim() != dim {
        return Err(PretrainDataError::Shape(format!(
            "local_pixel_shuffle: the working copy has shape {:?}, the original {:?}",
            working.shape(),
            original.shape()
        )));
    }
    let (channels, d, h, w) = dim;
    let patch = [d, h, w];
    if let Some(b) = boxes
        .iter()
        .find(|b| (0..3).any(|a| b[a] >= b[a + 3] || b[a + 3] > patch[a]))
    {
        return Err(PretrainDataError::Shape(format!(
            "local_pixel_shuffle: box {b:?} is empty or outside the patch {patch:?}"
        )));
    }
    if boxes.is_empty() || d == 0 {
        return Ok(());
    }
    if !working.is_standard_layout() {
        *working = working.as_standard_layout().into_owned();
    }
    let original = original.as_standard_layout();
    let source = original.as_slice().expect("standard layout is contiguous");
    let base: u64 = rng.random();
    let largest = boxes.iter().map(box_volume).max().unwrap_or(0);
    working
        .axis_chunks_iter_mut(Axis(1), slab.max(1))
        .into_par_iter()
        .enumerate()
        .for_each(|(index, mut part)| {
            let z_start = index * slab.max(1);
            let z_end = z_start + part.dim().1;
            let mut values = vec![0.0f32; channels * largest];
            let mut draws = vec![0u32; largest];
            let mine: Vec<usize> = (0..boxes.len())
                .filter(|&i| boxes[i][0] < z_end && boxes[i][3] > z_start)
                .collect();
            for (k, &i) in mine.iter().enumerate() {
                let b = &boxes[i];
                // The next box's rows are scattered over the patch (most miss the cache):
                // request them now, so that they arrive while this box is permuted.
                if let Some(&next) = mine.get(k + 1) {
                    prefetch_box(source.as_ptr(), dim, &boxes[next], (z_start, z_end));
                    prefetch_box(
                        part.as_ptr(),
                        (channels, z_end - z_start, h, w),
                        &boxes[next],
                        (z_start, z_end),
                    );
                }
                let n = box_volume(b);
                let values = &mut values[..channels * n];
                gather_box(source, dim, b, values);
                let mut generator = box_generator(base, i);
                permute_channels(values, channels, n, &mut draws, &mut generator);
                scatter_box(&mut part, z_start, b, values);
            }
        });
    Ok(())
}

/// Prefetch the rows of box `b` within depth planes `planes` of `data`, a `[C, D, H, W]`
/// C-order block whose first plane is `planes.0` (`data` holds at least those planes).
#[inline]
fn prefetch_box(
    data: *const f32,
    dim: (usize, usize, usize, usize),
    b: &VoxelBox,
    planes: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (channels, depth, h, w) = dim;
        let (z0, z1) = (b[0].max(planes.0), b[3].min(planes.1));
        for c in 0..channels {
            for z in z0..z1 {
                for y in b[1]..b[4] {
                    let start = ((c * depth + (z - planes.0)) * h + y) * w + b[2];
                    let end = start + (b[5] - b[2]) - 1;
                    for index in [start, end] {
                        // SAFETY: a prefetch is a hint that never faults; the address is
                        // inside the block anyway.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(data.wrapping_add(index).cast()) };
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, dim, b, planes);
}

/// The generator that permutes box `index` of a shuffle whose seed is `base`.
fn box_generator(base: u64, index: usize) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(base.wrapping_add(index as u64))
}

/// `dst.copy_from_slice(src)`, without a call to `memmove` for rows of up to 16 voxels: box
/// rows are 1–16 voxels long on nnssl's 160³ patches (a tenth of the edge), and the call cost
/// more than the copy (`memmove` took 30 % of the shuffle's time). The length is the same for
/// every row of a box, so the dispatch predicts well.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => dst[..$n].copy_from_slice(&src[..$n]),)*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// Copy box `b` of every channel of `source` (`[C, D, H, W]`, C order) into `out`, C order.
fn gather_box(source: &[f32], dim: (usize, usize, usize, usize), b: &VoxelBox, out: &mut [f32]) {
    let (channels, d, h, w) = dim;
    let row = b[5] - b[2];
    let mut chunks = out.chunks_exact_mut(row);
    for c in 0..channels {
        for z in b[0]..b[3] {
            for y in b[1]..b[4] {
                let start = ((c * d + z) * h + y) * w + b[2];
                copy_row(
                    chunks.next().expect("the buffer holds the box"),
                    &source[start..start + row],
                );
            }
        }
    }
}

/// Write the rows of box `b` that fall into `slab` (depth planes from `z_start`) from `values`.
fn scatter_box(slab: &mut ArrayViewMut4<'_, f32>, z_start: usize, b: &VoxelBox, values: &[f32]) {
    let (channels, depth, h, w) = slab.dim();
    let [sd, sh, sw] = [b[3] - b[0], b[4] - b[1], b[5] - b[2]];
    let (z0, z1) = (b[0].max(z_start), b[3].min(z_start + depth));
    for c in 0..channels {
        let mut plane = slab.index_axis_mut(Axis(0), c);
        let target = plane
            .as_slice_mut()
            .expect("a depth slab of one channel is contiguous");
        let channel_values = &values[c * sd * sh * sw..(c + 1) * sd * sh * sw];
        for z in z0..z1 {
            for y in b[1]..b[4] {
                let from = ((z - b[0]) * sh + (y - b[1])) * sw;
                let to = ((z - z_start) * h + y) * w + b[2];
                copy_row(&mut target[to..to + sw], &channel_values[from..from + sw]);
            }
        }
    }
}

/// Fisher–Yates permutation of `n` voxels, the same in each of the `channels` blocks of `values`.
///
/// The random numbers come in one bulk draw (`draws`, at least `n` long, reused across boxes)
/// and map to `0..=i` by a multiply-shift instead of a range sampler's rejection loop. The
/// multiply-shift is biased by at most `n / 2³²` (below 10⁻⁶ for the largest box of a 160³
/// patch), far below anything a random corruption could show. It did not make the shuffle
/// measurably faster (`detlab bench genesis`: 41.2 → 40.9 ms per 160³ patch): the gathers,
/// scatters and swaps dominate, not the generator.
fn permute_channels<R: Rng + ?Sized>(
    values: &mut [f32],
    channels: usize,
    n: usize,
    draws: &mut [u32],
    rng: &mut R,
) {
    if n < 2 {
        return;
    }
    let draws = &mut draws[..n];
    rng.fill(draws);
    let pick = |i: usize, r: u32| ((r as u64 * (i as u64 + 1)) >> 32) as usize;
    if channels == 1 {
        for i in (1..n).rev() {
            values.swap(i, pick(i, draws[i]));
        }
        return;
    }
    for i in (1..n).rev() {
        let j = pick(i, draws[i]);
        for c in 0..channels {
            values.swap(c * n + i, c * n + j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array4, s};
    use rand_chacha::ChaCha8Rng;

    fn arange(dim: (usize, usize, usize, usize)) -> Array4<f32> {
        let n = dim.0 * dim.1 * dim.2 * dim.3;
        Array4::from_shape_vec(dim, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    fn sorted(values: impl Iterator<Item = f32>) -> Vec<f32> {
        let mut v: Vec<f32> = values.collect();
        v.sort_by(f32::total_cmp);
        v
    }

    fn region(
        b: &VoxelBox,
    ) -> ndarray::SliceInfo<[ndarray::SliceInfoElem; 4], ndarray::Ix4, ndarray::Ix4> {
        s![.., b[0]..b[3], b[1]..b[4], b[2]..b[5]]
    }

    #[test]
    fn a_shuffled_box_is_a_permutation_and_the_rest_is_untouched() {
        let original = arange((1, 8, 9, 10));
        let mut working = original.clone();
        let b = [1, 2, 3, 5, 6, 7];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        local_pixel_shuffle(&original, &mut working, &[b], &mut rng).unwrap();
        let inside = working.slice(region(&b));
        let before = original.slice(region(&b));
        assert_eq!(
            sorted(inside.iter().copied()),
            sorted(before.iter().copied())
        );
        assert_ne!(inside, before, "64 distinct voxels kept their order");
        let mut outside = working.clone();
        outside.slice_mut(region(&b)).fill(-1.0);
        let mut expected = original.clone();
        expected.slice_mut(region(&b)).fill(-1.0);
        assert_eq!(outside, expected);
    }

    #[test]
    fn later_boxes_overwrite_earlier_ones_and_read_the_original() {
        let original = arange((1, 10, 10, 10));
        let mut working = Array4::<f32>::from_elem((1, 10, 10, 10), -1.0);
        let (first, second) = ([0, 0, 0, 6, 6, 6], [3, 3, 3, 9, 9, 9]);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        local_pixel_shuffle(&original, &mut working, &[first, second], &mut rng).unwrap();
        // The second box holds exactly its own original voxels, although the first box wrote
        // into the overlap before: it reads the original, not the working copy.
        assert_eq!(
            sorted(working.slice(region(&second)).iter().copied()),
            sorted(original.slice(region(&second)).iter().copied())
        );
        // What is left of the first box holds original voxels of the first box only.
        let first_values = sorted(original.slice(region(&first)).iter().copied());
        for ((_, z, y, x), &v) in working.indexed_iter() {
            let in_first = z < 6 && y < 6 && x < 6;
            let in_second = (3..9).contains(&z) && (3..9).contains(&y) && (3..9).contains(&x);
            if in_first && !in_second {
                assert!(first_values.binary_search_by(|p| p.total_cmp(&v)).is_ok());
            } else if !in_first && !in_second {
                assert_eq!(
                    v, -1.0,
                    "voxel ({z}, {y}, {x}) outside every box was written"
                );
            }
        }
    }

    #[test]
    fn channels_share_the_permutation() {
        let mut original = arange((2, 12, 12, 12));
        let first = original.index_axis(Axis(0), 0).to_owned();
        original
            .index_axis_mut(Axis(0), 1)
            .assign(&first.mapv(|v| v * 10.0 + 0.5));
        let mut working = original.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let boxes = random_shuffle_boxes([12, 12, 12], 200, 0.34, &mut rng);
        local_pixel_shuffle(&original, &mut working, &boxes, &mut rng).unwrap();
        assert_ne!(working, original);
        let c0 = working.index_axis(Axis(0), 0);
        let c1 = working.index_axis(Axis(0), 1);
        assert_eq!(c1, c0.mapv(|v| v * 10.0 + 0.5));
    }

    /// The transform written plainly: one box after the other, same generator use.
    fn sequential_reference(
        original: &Array4<f32>,
        working: &mut Array4<f32>,
        boxes: &[VoxelBox],
        rng: &mut ChaCha8Rng,
    ) {
        let base: u64 = rng.random();
        for (i, b) in boxes.iter().enumerate() {
            let mut values: Vec<f32> = original.slice(region(b)).iter().copied().collect();
            let channels = original.dim().0;
            let n = values.len() / channels;
            let mut generator = box_generator(base, i);
            permute_channels(&mut values, channels, n, &mut vec![0; n], &mut generator);
            let mut target = working.slice_mut(region(b));
            for (t, v) in target.iter_mut().zip(values) {
                *t = v;
            }
        }
    }

    #[test]
    fn parallel_slabs_equal_the_sequential_transform() {
        let original = arange((2, 23, 17, 19));
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let boxes = random_shuffle_boxes([23, 17, 19], 700, 0.3, &mut rng);
        let mut expected = original.clone();
        sequential_reference(
            &original,
            &mut expected,
            &boxes,
            &mut ChaCha8Rng::seed_from_u64(5),
        );
        for slab in [1, 3, 7, 16, 23, 100] {
            let mut working = original.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            shuffle_in_slabs(&original, &mut working, &boxes, &mut rng, slab).unwrap();
            assert_eq!(working, expected, "slabs of {slab} planes");
        }
        let mut working = original.clone();
        local_pixel_shuffle(
            &original,
            &mut working,
            &boxes,
            &mut ChaCha8Rng::seed_from_u64(5),
        )
        .unwrap();
        assert_eq!(working, expected);
    }

    #[test]
    fn random_boxes_respect_the_side_limit_and_the_patch() {
        let patch = [40, 25, 9];
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let boxes = random_shuffle_boxes(patch, 5000, 0.1, &mut rng);
        let mut largest = [0; 3];
        for b in &boxes {
            for a in 0..3 {
                let side = b[a + 3] - b[a];
                // ⌊edge/10⌋, at least 1 (9/10 → 1).
                assert!(side >= 1 && side <= (patch[a] / 10).max(1), "{b:?}");
                assert!(b[a + 3] <= patch[a], "{b:?}");
                largest[a] = largest[a].max(side);
            }
        }
        assert_eq!(largest, [4, 2, 1]);
        assert!(random_shuffle_boxes([0, 10, 10], 5, 0.1, &mut rng).is_empty());
    }

    #[test]
    fn bad_boxes_and_shapes_are_errors() {
        let original = arange((1, 4, 4, 4));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut working = original.clone();
        let outside = local_pixel_shuffle(&original, &mut working, &[[0, 0, 0, 2, 2, 5]], &mut rng);
        assert!(
            matches!(outside, Err(PretrainDataError::Shape(m)) if m.contains("[0, 0, 0, 2, 2, 5]"))
        );
        let empty = local_pixel_shuffle(&original, &mut working, &[[1, 1, 1, 1, 2, 2]], &mut rng);
        assert!(empty.is_err());
        let mut other = Array4::<f32>::zeros((1, 4, 4, 5));
        assert!(local_pixel_shuffle(&original, &mut other, &[], &mut rng).is_err());
    }
}
