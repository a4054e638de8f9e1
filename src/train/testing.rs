//! Helpers shared by the unit tests of `train` (compiled for tests only): in-memory cases with
//! bright cubes.

use ndarray::{Array3, Array4, Axis};

use super::sampler::CaseData;
use crate::volume::boxes::Box3;

/// A one-channel case of `shape` with value 1 inside each object `(start, size, class)` and 0
/// elsewhere; instance ids 1, 2, … in the given order; half-open boxes.
pub fn cube_case(
    id: &str,
    shape: [usize; 3],
    objects: &[([usize; 3], [usize; 3], usize)],
) -> CaseData {
    let mut image = Array4::<f32>::zeros((1, shape[0], shape[1], shape[2]));
    let mut mask = Array3::<u16>::zeros((shape[0], shape[1], shape[2]));
    let mut boxes = Vec::new();
    let mut classes = Vec::new();
    let mut ids = Vec::new();
    for (k, (start, size, class)) in objects.iter().enumerate() {
        let id = k as u16 + 1;
        for d in start[0]..start[0] + size[0] {
            for h in start[1]..start[1] + size[1] {
                for w in start[2]..start[2] + size[2] {
                    image[[0, d, h, w]] = 1.0;
                    mask[[d, h, w]] = id;
                }
            }
        }
        let b: Box3 = std::array::from_fn(|i| {
            let a = i % 3;
            (start[a] + if i < 3 { 0 } else { size[a] }) as f64
        });
        boxes.push(b);
        classes.push(*class);
        ids.push(u32::from(id));
    }
    CaseData {
        id: id.to_string(),
        image,
        instances: Some(mask),
        boxes,
        classes,
        instance_ids: ids,
    }
}

/// Half-open bounding box of the voxels > 0.5 in channel 0, if any.
pub fn bright_box(image: &Array4<f32>) -> Option<Box3> {
    mask_box(&image.index_axis(Axis(0), 0).mapv(|v| v > 0.5))
}

/// Half-open bounding box of the `true` voxels, if any.
pub fn mask_box(mask: &Array3<bool>) -> Option<Box3> {
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut any = false;
    for ((d, h, w), &v) in mask.indexed_iter() {
        if v {
            any = true;
            for (a, x) in [d, h, w].into_iter().enumerate() {
                lo[a] = lo[a].min(x);
                hi[a] = hi[a].max(x + 1);
            }
        }
    }
    any.then(|| {
        std::array::from_fn(|i| {
            if i < 3 {
                lo[i] as f64
            } else {
                hi[i - 3] as f64
            }
        })
    })
}
