//! Patch sampling with foreground oversampling (nnDetection's `DataLoader3DOffset`).
//!
//! # Batches
//! The first `round(B × (1 − foreground_fraction))` patches of a batch (Python's
//! round-half-to-even, as nnDetection) are **random** patches: a uniformly chosen case and a
//! uniformly random crop position. The remaining ones are **foreground** patches: an instance
//! is drawn uniformly from all instances of all cases (cases with many objects are favoured)
//! and, per axis, the crop origin is chosen so that the whole object lies inside the patch:
//! - volume extent ≤ patch extent: origin 0 (the volume at the start, padding after);
//! - object extent ≥ patch extent: a random centre `c ∈ [⌊min⌋ + 1, ⌊max⌋)` inside the object,
//!   origin `c − patch / 2`;
//! - otherwise origin `~ U[lo, hi)` (integers; `lo` when equal) with
//!   `lo = clip(min − (patch − extent), 0, shape − patch)`, `hi = clip(min, 0, shape − patch)`.
//!
//! Random crops: origin `~ U[0, shape − patch]` per axis, or centred (`−⌊(patch − shape)/2⌋`)
//! when the volume is smaller than the patch.
//!
//! # Generator patch
//! With rotation and scaling ([`PatchSampler::with_generator_patch`]) a larger generator patch
//! `G` is cut around the patch the rules above place, starting `⌊(G − P)/2⌋` voxels earlier (as
//! nnDetection's `DataLoader3DOffset`), so that augmentation can rotate it and crop the centre.
//! The box rule is then decided on the patch's own window, with the full boxes; the patch
//! carries every instance the rule keeps, and augmentation derives the boxes from the mask.
//!
//! # Cropping
//! Out-of-volume voxels are 0 in the image and 0 (background) in the instance mask. Boxes are
//! shifted by the origin and clipped to the patch. **Box rule:** a clipped box is kept when at
//! least `min_visible_fraction` of its volume lies inside the patch or its centre does (and
//! its clipped extent is positive on every axis); otherwise it is dropped from the detection
//! targets. A dropped object's voxels stay foreground in the segmentation target (they are
//! foreground), so only the detection heads ignore it. `min_visible_fraction = 0` keeps every
//! visible box, as nnDetection does.
//!
//! The sampler knows nothing about networks: pre-training objectives reuse it for patches
//! without boxes (cases without instances, `foreground_fraction = 0`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{Array3, Array4, s};
use rand::Rng;

use super::TrainError;
use crate::volume::boxes::{Box3, BoxConvention};

/// Read access to one case for patch sampling (implemented by preprocessed cases and by
/// [`CaseData`]).
pub trait SampleSource: Send + Sync {
    /// Case id.
    fn case_id(&self) -> &str;
    /// Image `[C, D, H, W]`.
    fn image(&self) -> &Array4<f32>;
    /// Instance mask `[D, H, W]` (0 background), if labelled.
    fn instances(&self) -> Option<&Array3<u16>>;
    /// Boxes `[d0, h0, w0, d1, h1, w1]` of the instances, in [`SampleSource::box_convention`].
    fn boxes(&self) -> &[Box3];
    /// The convention of the boxes (half-open unless the source says otherwise; preprocessed
    /// cases use nnDetection's, which detlab trains on).
    fn box_convention(&self) -> BoxConvention {
        BoxConvention::HalfOpen
    }
    /// Class (0-based) of each box.
    fn classes(&self) -> &[usize];
    /// Instance id (mask value) of each box.
    fn instance_ids(&self) -> &[u32];
}

/// A case held in memory: image, optional instance mask and its boxes.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseData {
    /// Case id.
    pub id: String,
    /// Image `[C, D, H, W]`.
    pub image: Array4<f32>,
    /// Instance mask `[D, H, W]` (0 background).
    pub instances: Option<Array3<u16>>,
    /// Half-open boxes of the instances.
    pub boxes: Vec<Box3>,
    /// Class of each box.
    pub classes: Vec<usize>,
    /// Instance id of each box.
    pub instance_ids: Vec<u32>,
}

impl SampleSource for CaseData {
    fn case_id(&self) -> &str {
        &self.id
    }
    fn image(&self) -> &Array4<f32> {
        &self.image
    }
    fn instances(&self) -> Option<&Array3<u16>> {
        self.instances.as_ref()
    }
    fn boxes(&self) -> &[Box3] {
        &self.boxes
    }
    fn classes(&self) -> &[usize] {
        &self.classes
    }
    fn instance_ids(&self) -> &[u32] {
        &self.instance_ids
    }
}

/// One sampled (and possibly augmented) patch with its targets, in patch voxels.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// The case it was cut from.
    pub case_id: String,
    /// Crop origin `[d, h, w]` in the case's voxels (negative: the patch starts outside).
    pub origin: [i64; 3],
    /// Whether it was sampled as a foreground patch.
    pub foreground: bool,
    /// Image `[C, D, H, W]`.
    pub image: Array4<f32>,
    /// Instance mask `[D, H, W]` (0 background and outside the volume), if labelled.
    pub instances: Option<Array3<u16>>,
    /// Detection targets: boxes kept by the box rule.
    pub boxes: Vec<Box3>,
    /// Class of each kept box.
    pub classes: Vec<usize>,
    /// Instance id of each kept box.
    pub instance_ids: Vec<u32>,
    /// Class of every instance of the case (for the segmentation target).
    pub instance_classes: BTreeMap<u32, usize>,
}

impl Patch {
    /// Patch size `[D, H, W]`.
    pub fn size(&self) -> [usize; 3] {
        let (_, d, h, w) = self.image.dim();
        [d, h, w]
    }

    /// Semantic segmentation target `[D, H, W]`: 0 background, class + 1 inside an instance
    /// (instances of unknown class count as background); `None` without an instance mask.
    pub fn segmentation_target(&self) -> Option<Array3<i64>> {
        let mask = self.instances.as_ref()?;
        Some(mask.mapv(|id| {
            if id == 0 {
                0
            } else {
                self.instance_classes
                    .get(&u32::from(id))
                    .map_or(0, |&c| c as i64 + 1)
            }
        }))
    }
}

/// Python's `round` (half to even) of a non-negative value.
fn round_half_even(x: f64) -> usize {
    let floor = x.floor();
    let diff = x - floor;
    let round_up = diff > 0.5 || (diff == 0.5 && floor % 2.0 != 0.0);
    let r = if round_up { floor + 1.0 } else { floor };
    r.max(0.0) as usize
}

/// Number of foreground patches in a batch of `batch` (nnDetection's rule).
pub fn foreground_count(batch: usize, foreground_fraction: f64) -> usize {
    batch - round_half_even(batch as f64 * (1.0 - foreground_fraction)).min(batch)
}

/// A crop origin that keeps `object` (half-open box) inside the patch (see the module docs).
pub fn foreground_origin<R: Rng + ?Sized>(
    shape: [usize; 3],
    object: &Box3,
    patch: [usize; 3],
    rng: &mut R,
) -> [i64; 3] {
    std::array::from_fn(|a| {
        let (size, p) = (shape[a] as i64, patch[a] as i64);
        let lo_box = object[a].floor() as i64;
        let hi_box = object[a + 3].ceil() as i64;
        let extent = hi_box - lo_box;
        if size <= p {
            0
        } else if extent >= p {
            let (lo, hi) = (lo_box + 1, hi_box);
            let centre = if lo < hi {
                rng.random_range(lo..hi)
            } else {
                lo_box
            };
            centre - p / 2
        } else {
            let upper = size - p;
            let lo = (lo_box - (p - extent)).clamp(0, upper);
            let hi = lo_box.clamp(0, upper);
            if lo >= hi {
                lo
            } else {
                rng.random_range(lo..hi)
            }
        }
    })
}

/// A uniformly random crop origin (centred when the volume is smaller than the patch).
pub fn random_origin<R: Rng + ?Sized>(
    shape: [usize; 3],
    patch: [usize; 3],
    rng: &mut R,
) -> [i64; 3] {
    std::array::from_fn(|a| {
        let (size, p) = (shape[a] as i64, patch[a] as i64);
        if size < p {
            -((p - size) / 2)
        } else {
            rng.random_range(0..=size - p)
        }
    })
}

/// [`clip_box`] for a box in `convention`: the box of its voxels inside the patch, in the same
/// convention (nnDetection's box of an object touching the patch's first voxel starts at −1).
pub fn clip_box_in(
    b: &Box3,
    size: [usize; 3],
    min_visible_fraction: f64,
    convention: BoxConvention,
) -> Option<Box3> {
    clip_box(&convention.to_half_open(b), size, min_visible_fraction)
        .map(|clipped| convention.from_half_open(&clipped))
}

/// Clip the half-open box `b` (already in patch coordinates) to a patch of `size`; `None` when
/// the box rule drops it.
pub fn clip_box(b: &Box3, size: [usize; 3], min_visible_fraction: f64) -> Option<Box3> {
    let mut clipped = *b;
    for a in 0..3 {
        clipped[a] = b[a].clamp(0.0, size[a] as f64);
        clipped[a + 3] = b[a + 3].clamp(0.0, size[a] as f64);
        if clipped[a + 3] - clipped[a] <= 0.0 {
            return None;
        }
    }
    let full: f64 = (0..3).map(|a| b[a + 3] - b[a]).product();
    let visible: f64 = (0..3).map(|a| clipped[a + 3] - clipped[a]).product();
    let centre_inside = (0..3).all(|a| (0.0..size[a] as f64).contains(&(0.5 * (b[a] + b[a + 3]))));
    let fraction_ok = full > 0.0 && visible / full >= min_visible_fraction;
    (centre_inside || fraction_ok).then_some(clipped)
}

/// The overlap of `[origin, origin + patch)` with `[0, size)` on one axis as
/// (source start, destination start, length).
fn overlap(origin: i64, patch: usize, size: usize) -> Option<(usize, usize, usize)> {
    let start = origin.max(0);
    let end = (origin + patch as i64).min(size as i64);
    (end > start).then(|| {
        (
            start as usize,
            (start - origin) as usize,
            (end - start) as usize,
        )
    })
}

/// Cut the patch at `origin` out of `source` (zero padding outside the volume).
pub fn crop_patch(
    source: &dyn SampleSource,
    origin: [i64; 3],
    patch: [usize; 3],
    min_visible_fraction: f64,
    foreground: bool,
) -> Patch {
    let image = source.image();
    let (channels, d, h, w) = image.dim();
    let shape = [d, h, w];
    let mut out = Array4::<f32>::zeros((channels, patch[0], patch[1], patch[2]));
    let mut mask_out = source
        .instances()
        .map(|_| Array3::<u16>::zeros((patch[0], patch[1], patch[2])));
    let ranges: Option<Vec<(usize, usize, usize)>> = (0..3)
        .map(|a| overlap(origin[a], patch[a], shape[a]))
        .collect();
    if let Some(r) = ranges {
        let src = |a: usize| r[a].0..r[a].0 + r[a].2;
        let dst = |a: usize| r[a].1..r[a].1 + r[a].2;
        out.slice_mut(s![.., dst(0), dst(1), dst(2)])
            .assign(&image.slice(s![.., src(0), src(1), src(2)]));
        if let (Some(m_out), Some(m)) = (mask_out.as_mut(), source.instances()) {
            m_out
                .slice_mut(s![dst(0), dst(1), dst(2)])
                .assign(&m.slice(s![src(0), src(1), src(2)]));
        }
    }
    let mut boxes = Vec::new();
    let mut classes = Vec::new();
    let mut instance_ids = Vec::new();
    for (i, b) in source.boxes().iter().enumerate() {
        let shifted: Box3 = std::array::from_fn(|k| b[k] - origin[k % 3] as f64);
        if let Some(clipped) = clip_box_in(
            &shifted,
            patch,
            min_visible_fraction,
            source.box_convention(),
        ) {
            boxes.push(clipped);
            classes.push(source.classes().get(i).copied().unwrap_or(0));
            instance_ids.push(source.instance_ids().get(i).copied().unwrap_or(0));
        }
    }
    let instance_classes = source
        .instance_ids()
        .iter()
        .zip(source.classes())
        .map(|(&id, &c)| (id, c))
        .collect();
    Patch {
        case_id: source.case_id().to_string(),
        origin,
        foreground,
        image: out,
        instances: mask_out,
        boxes,
        classes,
        instance_ids,
        instance_classes,
    }
}

/// Draws patches from a set of cases (see the module documentation for the rules).
#[derive(Clone)]
pub struct PatchSampler {
    cases: Vec<Arc<dyn SampleSource>>,
    /// Every (case index, box index) pair: the pool foreground patches draw from.
    instances: Vec<(usize, usize)>,
    patch: [usize; 3],
    /// The size actually cut (≥ `patch`; larger for rotation and scaling).
    generator: [usize; 3],
    foreground_fraction: f64,
    min_visible_fraction: f64,
}

impl std::fmt::Debug for PatchSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchSampler")
            .field("cases", &self.cases.len())
            .field("instances", &self.instances.len())
            .field("patch", &self.patch)
            .field("foreground_fraction", &self.foreground_fraction)
            .finish()
    }
}

impl PatchSampler {
    /// A sampler over `cases`; fails when there are no cases, their channel counts differ, a
    /// case's boxes, classes and instance ids disagree, or foreground patches are asked for
    /// but no case has an instance.
    pub fn new(
        cases: Vec<Arc<dyn SampleSource>>,
        patch: [usize; 3],
        foreground_fraction: f64,
        min_visible_fraction: f64,
    ) -> Result<Self, TrainError> {
        if cases.is_empty() {
            return Err(TrainError::InvalidData(
                "no cases to sample patches from".into(),
            ));
        }
        if patch.contains(&0) {
            return Err(TrainError::config(
                "patch",
                format!("{patch:?} has a zero extent"),
            ));
        }
        let channels = cases[0].image().dim().0;
        let mut instances = Vec::new();
        for (c, case) in cases.iter().enumerate() {
            let (ch, d, h, w) = case.image().dim();
            if ch != channels {
                return Err(TrainError::InvalidData(format!(
                    "case '{}' has {ch} channels but case '{}' has {channels}",
                    case.case_id(),
                    cases[0].case_id()
                )));
            }
            if d == 0 || h == 0 || w == 0 {
                return Err(TrainError::InvalidData(format!(
                    "case '{}' has an empty image",
                    case.case_id()
                )));
            }
            if let Some(m) = case.instances()
                && m.dim() != (d, h, w)
            {
                return Err(TrainError::InvalidData(format!(
                    "case '{}': instance mask {:?} but image [D, H, W] {:?}",
                    case.case_id(),
                    m.dim(),
                    (d, h, w)
                )));
            }
            let n = case.boxes().len();
            if case.classes().len() != n || case.instance_ids().len() != n {
                return Err(TrainError::InvalidData(format!(
                    "case '{}': {n} boxes, {} classes, {} instance ids",
                    case.case_id(),
                    case.classes().len(),
                    case.instance_ids().len()
                )));
            }
            instances.extend((0..n).map(|i| (c, i)));
        }
        if foreground_fraction > 0.0 && instances.is_empty() {
            return Err(TrainError::InvalidData(format!(
                "foreground_fraction is {foreground_fraction} but none of the {} cases has an \
                 instance; set foreground_fraction to 0",
                cases.len()
            )));
        }
        Ok(Self {
            cases,
            instances,
            patch,
            generator: patch,
            foreground_fraction,
            min_visible_fraction,
        })
    }

    /// Cut generator patches of `generator` (≥ the patch on every axis) around the patches the
    /// sampler places (see the module documentation).
    pub fn with_generator_patch(mut self, generator: [usize; 3]) -> Result<Self, TrainError> {
        if (0..3).any(|a| generator[a] < self.patch[a]) {
            return Err(TrainError::config(
                "augment",
                format!(
                    "generator patch {generator:?} is smaller than the patch {:?}",
                    self.patch
                ),
            ));
        }
        self.generator = generator;
        Ok(self)
    }

    /// The size of the patches cut (the generator patch; the patch without one).
    pub fn generator_patch(&self) -> [usize; 3] {
        self.generator
    }

    /// Cut at `origin` (the patch's), widened to the generator patch when there is one.
    fn cut(&self, case: &dyn SampleSource, origin: [i64; 3], foreground: bool) -> Patch {
        if self.generator == self.patch {
            return crop_patch(
                case,
                origin,
                self.patch,
                self.min_visible_fraction,
                foreground,
            );
        }
        let shift: [i64; 3] =
            std::array::from_fn(|a| (self.generator[a] - self.patch[a]) as i64 / 2);
        let start: [i64; 3] = std::array::from_fn(|a| origin[a] - shift[a]);
        let mut cut = crop_patch(case, start, self.generator, 0.0, foreground);
        // The box rule on the patch's own window, with the case's full boxes.
        let kept: Vec<u32> = case
            .boxes()
            .iter()
            .zip(case.instance_ids())
            .filter(|(b, _)| {
                let shifted: Box3 = std::array::from_fn(|k| b[k] - origin[k % 3] as f64);
                clip_box_in(
                    &shifted,
                    self.patch,
                    self.min_visible_fraction,
                    case.box_convention(),
                )
                .is_some()
            })
            .map(|(_, &id)| id)
            .collect();
        let mut k = 0;
        while k < cut.instance_ids.len() {
            if kept.contains(&cut.instance_ids[k]) {
                k += 1;
            } else {
                cut.boxes.remove(k);
                cut.classes.remove(k);
                cut.instance_ids.remove(k);
            }
        }
        cut
    }

    /// Number of cases.
    pub fn num_cases(&self) -> usize {
        self.cases.len()
    }

    /// Number of instances foreground patches draw from.
    pub fn num_instances(&self) -> usize {
        self.instances.len()
    }

    /// Image channels of the cases.
    pub fn channels(&self) -> usize {
        self.cases[0].image().dim().0
    }

    /// The patch size.
    pub fn patch(&self) -> [usize; 3] {
        self.patch
    }

    /// A random patch: uniform case, uniform crop position.
    pub fn random_patch<R: Rng + ?Sized>(&self, rng: &mut R) -> Patch {
        let case = &self.cases[rng.random_range(0..self.cases.len())];
        let (_, d, h, w) = case.image().dim();
        let origin = random_origin([d, h, w], self.patch, rng);
        self.cut(case.as_ref(), origin, false)
    }

    /// A patch around a uniformly drawn instance; `None` when there are no instances.
    pub fn foreground_patch<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Patch> {
        if self.instances.is_empty() {
            return None;
        }
        let (c, i) = self.instances[rng.random_range(0..self.instances.len())];
        let case = &self.cases[c];
        let (_, d, h, w) = case.image().dim();
        let origin = foreground_origin([d, h, w], &case.boxes()[i], self.patch, rng);
        Some(self.cut(case.as_ref(), origin, true))
    }

    /// A batch: random patches first, then `foreground_count(batch, fraction)` foreground ones.
    pub fn sample_batch<R: Rng + ?Sized>(&self, batch: usize, rng: &mut R) -> Vec<Patch> {
        let foreground = foreground_count(batch, self.foreground_fraction);
        (0..batch)
            .map(|k| {
                if k >= batch - foreground {
                    self.foreground_patch(rng)
                        .unwrap_or_else(|| self.random_patch(rng))
                } else {
                    self.random_patch(rng)
                }
            })
            .collect()
    }
}

impl SampleSource for crate::data::PreprocessedCase {
    fn case_id(&self) -> &str {
        &self.id
    }
    fn box_convention(&self) -> BoxConvention {
        self.restore.box_convention
    }
    fn image(&self) -> &Array4<f32> {
        &self.image
    }
    fn instances(&self) -> Option<&Array3<u16>> {
        self.instances.as_ref()
    }
    fn boxes(&self) -> &[Box3] {
        &self.boxes
    }
    fn classes(&self) -> &[usize] {
        &self.classes
    }
    fn instance_ids(&self) -> &[u32] {
        &self.instance_ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::testing::cube_case;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn python_rounding_gives_nndetections_foreground_counts() {
        assert_eq!(foreground_count(4, 0.5), 2);
        assert_eq!(foreground_count(2, 0.5), 1);
        assert_eq!(foreground_count(1, 0.5), 1, "round(0.5) = 0 random patches");
        assert_eq!(foreground_count(3, 0.5), 1, "round(1.5) = 2 random patches");
        assert_eq!(foreground_count(5, 0.5), 3, "round(2.5) = 2 random patches");
        assert_eq!(foreground_count(4, 0.0), 0);
        assert_eq!(foreground_count(4, 1.0), 4);
    }

    #[test]
    fn batches_have_the_foreground_ratio_and_objects_lie_inside() {
        // 48³ volume, objects [10,18)³-ish and a second one; 24³ patches.
        let case: Arc<dyn SampleSource> = Arc::new(cube_case(
            "a",
            [48, 48, 48],
            &[([10, 12, 14], [8, 6, 5], 0), ([30, 28, 33], [10, 12, 9], 1)],
        ));
        let sampler = PatchSampler::new(vec![case], [24, 24, 24], 0.5, 0.5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..40 {
            let batch = sampler.sample_batch(4, &mut rng);
            let flags: Vec<bool> = batch.iter().map(|p| p.foreground).collect();
            assert_eq!(flags, [false, false, true, true]);
            for p in batch.iter().filter(|p| p.foreground) {
                // Some object lies entirely inside (its full extent survives clipping).
                let full_sizes = [[8.0, 6.0, 5.0], [10.0, 12.0, 9.0]];
                assert!(
                    p.boxes.iter().any(|b| full_sizes
                        .iter()
                        .any(|s| (0..3).all(|a| b[a + 3] - b[a] == s[a]))),
                    "no object fully inside the foreground patch at {:?}: {:?}",
                    p.origin,
                    p.boxes
                );
            }
        }
    }

    #[test]
    fn foreground_origins_follow_the_three_rules() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            // Object fits: whole object inside, origin inside the volume.
            let o = foreground_origin(
                [64, 40, 20],
                &[20.0, 5.0, 0.0, 30.0, 9.0, 16.0],
                [32, 16, 32],
                &mut rng,
            );
            assert!(
                o[0] <= 20 && o[0] + 32 >= 30 && o[0] >= 0 && o[0] <= 32,
                "{o:?}"
            );
            assert!(o[1] <= 5 && o[1] + 16 >= 9 && o[1] >= 0, "{o:?}");
            assert_eq!(o[2], 0, "volume smaller than the patch: origin 0");
            // Object larger than the patch: centre inside the object.
            let o = foreground_origin(
                [100, 100, 100],
                &[10.0, 10.0, 10.0, 60.0, 20.0, 20.0],
                [32, 32, 32],
                &mut rng,
            );
            let centre = o[0] + 16;
            assert!((11..60).contains(&centre), "{o:?}");
        }
    }

    #[test]
    fn cropped_boxes_match_the_image_content_and_padding_is_zero() {
        // One bright cube; the box must enclose exactly the bright voxels of every patch.
        let case = cube_case("c", [20, 24, 28], &[([3, 15, 20], [6, 7, 8], 0)]);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..100 {
            let origin = [
                rng.random_range(-12..16),
                rng.random_range(-12..20),
                rng.random_range(-12..24),
            ];
            let p = crop_patch(&case, origin, [16, 16, 16], 0.0, false);
            let bright = crate::train::testing::bright_box(&p.image);
            match (bright, p.boxes.first()) {
                (Some(bb), Some(b)) => assert_eq!(&bb, b, "origin {origin:?}"),
                (None, None) => {}
                (bb, b) => panic!("origin {origin:?}: bright voxels {bb:?} but box {b:?}"),
            }
            // Voxels outside the volume are 0 in the image and the mask.
            for (a, &o) in origin.iter().enumerate() {
                if o < 0 {
                    let lane = p.image.index_axis(ndarray::Axis(a + 1), 0);
                    assert!(lane.iter().all(|&v| v == 0.0));
                }
            }
            let seg = p.segmentation_target().unwrap();
            let mask = p.instances.as_ref().unwrap();
            assert!(
                seg.iter()
                    .zip(mask.iter())
                    .all(|(&s, &m)| (s == 1) == (m == 1))
            );
        }
    }

    #[test]
    fn box_rule_keeps_half_visible_or_centred_boxes() {
        let size = [10, 10, 10];
        // 60 % visible, centre outside on axis 0: kept by the fraction.
        let b = [-4.0, 2.0, 2.0, 6.0, 4.0, 4.0];
        assert!(clip_box(&b, size, 0.5).is_some());
        // 30 % visible, centre outside: dropped; kept with fraction 0.
        let b = [-7.0, 2.0, 2.0, 3.0, 4.0, 4.0];
        assert!(clip_box(&b, size, 0.5).is_none());
        assert_eq!(
            clip_box(&b, size, 0.0),
            Some([0.0, 2.0, 2.0, 3.0, 4.0, 4.0])
        );
        // Huge box whose centre is inside: kept although < 50 % visible.
        let b = [-20.0, -20.0, -20.0, 25.0, 25.0, 25.0];
        assert_eq!(
            clip_box(&b, size, 0.5),
            Some([0.0, 0.0, 0.0, 10.0, 10.0, 10.0])
        );
        // Entirely outside: dropped.
        assert!(clip_box(&[11.0, 0.0, 0.0, 12.0, 1.0, 1.0], size, 0.0).is_none());
    }

    #[test]
    fn random_crops_cover_the_volume_or_centre_small_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut seen = [false; 9];
        for _ in 0..500 {
            let o = random_origin([24, 10, 16], [16, 16, 16], &mut rng);
            assert!((0..=8).contains(&o[0]));
            seen[o[0] as usize] = true;
            assert_eq!(o[1], -3);
            assert_eq!(o[2], 0);
        }
        assert!(seen.iter().all(|&s| s), "every origin 0..=8 occurs");
    }

    #[test]
    fn bad_case_sets_are_refused() {
        assert!(PatchSampler::new(vec![], [8, 8, 8], 0.5, 0.5).is_err());
        let empty: Arc<dyn SampleSource> = Arc::new(cube_case("e", [8, 8, 8], &[]));
        let err = PatchSampler::new(vec![empty.clone()], [8, 8, 8], 0.5, 0.5).unwrap_err();
        assert!(err.to_string().contains("foreground_fraction"), "{err}");
        let sampler = PatchSampler::new(vec![empty], [8, 8, 8], 0.0, 0.5).unwrap();
        let patches = sampler.sample_batch(2, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(patches.iter().all(|p| !p.foreground && p.boxes.is_empty()));
    }
}
