//! Element-wise arithmetic, comparisons and selection on volumes, and connected components.
//!
//! # Grids
//! Two volumes combine only when they share a voxel grid: the same spatial shape `[D, H, W]`,
//! spacings and affines equal within `1e-4 + 1e-5 · |value|` (the tolerance of
//! [`super::read_channels`]), and either the same number of channels or one channel on one side
//! (that channel then applies to every channel of the other, e.g. a mask times a 4-channel
//! MRI). Otherwise the error names both volumes, the operation and what differs. Results take
//! spacing and affine of the left operand and have no source file.
//!
//! # Arithmetic and comparisons
//! Numbers are applied voxel by voxel; arithmetic is computed in f64 and stored as f32, so
//! `x / 0` gives ±inf or NaN as IEEE says ([`Volume::check_finite`] finds them). Comparisons
//! give masks of 0.0 and 1.0; the number is rounded to f32 (the voxel type) first, so
//! `v == 0.1` holds for voxels that store 0.1. A comparison with NaN is false (`!=`: true).
//!
//! # Masks
//! A voxel is in a mask when its value is not 0 (NaN counts as in, as numpy's `bool` does).
//!
//! # Connected components
//! [`connected_components`] numbers the components 1..N in the order of their first voxel in
//! C (raster) order `[d, h, w]`, which is the numbering of `scipy.ndimage.label`. The default
//! connectivity is 26 (faces, edges and corners; scipy with `structure = np.ones((3, 3, 3))`,
//! what nnDetection uses); scipy's own default is 6 (faces only). [`labels_to_instances`] is
//! nnDetection's `seg_to_instances`: components of every class value in ascending order,
//! numbered consecutively, with class index `value − 1`.

use super::{Volume, VolumeError};
use ndarray::Array4;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Absolute tolerance of spacing and affine entries when two volumes must share a grid.
const GRID_ABS_TOLERANCE: f64 = 1e-4;
/// Relative tolerance of spacing and affine entries when two volumes must share a grid.
const GRID_REL_TOLERANCE: f64 = 1e-5;
/// Voxels per parallel work item of element-wise operations.
const CHUNK: usize = 1 << 15;
/// The largest instance id an f32 voxel holds exactly (2^24).
const MAX_EXACT_LABEL: usize = 1 << 24;

/// An arithmetic operation on voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    /// `a + b`.
    Add,
    /// `a - b`.
    Subtract,
    /// `a * b`.
    Multiply,
    /// `a / b`.
    Divide,
}

impl Arithmetic {
    /// The operator as written in scripts (`+`, `-`, `*`, `/`).
    pub fn symbol(self) -> &'static str {
        match self {
            Arithmetic::Add => "+",
            Arithmetic::Subtract => "-",
            Arithmetic::Multiply => "*",
            Arithmetic::Divide => "/",
        }
    }

    fn apply(self, a: f32, b: f64) -> f32 {
        let a = a as f64;
        (match self {
            Arithmetic::Add => a + b,
            Arithmetic::Subtract => a - b,
            Arithmetic::Multiply => a * b,
            Arithmetic::Divide => a / b,
        }) as f32
    }
}

/// A comparison of voxels that gives a 0/1 mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `a > b`.
    Greater,
    /// `a >= b`.
    GreaterOrEqual,
    /// `a < b`.
    Less,
    /// `a <= b`.
    LessOrEqual,
    /// `a == b`.
    Equal,
    /// `a != b`.
    NotEqual,
}

impl Comparison {
    /// The operator as written in scripts (`>`, `>=`, `<`, `<=`, `==`, `!=`).
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Equal => "==",
            Comparison::NotEqual => "!=",
        }
    }

    /// The comparison with its operands swapped (`3 < v` is `v > 3`).
    pub fn swapped(self) -> Comparison {
        match self {
            Comparison::Greater => Comparison::Less,
            Comparison::GreaterOrEqual => Comparison::LessOrEqual,
            Comparison::Less => Comparison::Greater,
            Comparison::LessOrEqual => Comparison::GreaterOrEqual,
            other => other,
        }
    }

    fn holds(self, a: f32, b: f32) -> bool {
        match self {
            Comparison::Greater => a > b,
            Comparison::GreaterOrEqual => a >= b,
            Comparison::Less => a < b,
            Comparison::LessOrEqual => a <= b,
            Comparison::Equal => a == b,
            Comparison::NotEqual => a != b,
        }
    }
}

/// One side of [`select`]: a volume or a number used for every voxel.
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    /// Voxel values of a volume on the mask's grid.
    Volume(&'a Volume),
    /// One value for every voxel.
    Number(f64),
}

/// Which neighbours touch in [`connected_components`]: 6 (faces), 18 (faces and edges) or 26
/// (faces, edges and corners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Voxels that share a face (scipy's default structure).
    Faces6,
    /// Voxels that share a face or an edge.
    Edges18,
    /// Voxels that share a face, an edge or a corner (`np.ones((3, 3, 3))`; nnDetection's).
    #[default]
    Corners26,
}

impl Connectivity {
    /// The connectivity for 6, 18 or 26 neighbours; other numbers are an error naming them.
    pub fn from_neighbours(n: i64) -> Result<Connectivity, VolumeError> {
        match n {
            6 => Ok(Connectivity::Faces6),
            18 => Ok(Connectivity::Edges18),
            26 => Ok(Connectivity::Corners26),
            other => Err(VolumeError::InvalidArgument(format!(
                "connectivity must be 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners), got {other}"
            ))),
        }
    }

    /// The offsets `[dd, dh, dw]` of the neighbours that come earlier in C order.
    fn earlier_neighbours(self) -> Vec<[isize; 3]> {
        let mut out = Vec::new();
        for dd in -1isize..=1 {
            for dh in -1isize..=1 {
                for dw in -1isize..=1 {
                    let order = (dd, dh, dw);
                    if order >= (0, 0, 0) {
                        continue;
                    }
                    let nonzero = [dd, dh, dw].iter().filter(|x| **x != 0).count();
                    let max = match self {
                        Connectivity::Faces6 => 1,
                        Connectivity::Edges18 => 2,
                        Connectivity::Corners26 => 3,
                    };
                    if nonzero <= max {
                        out.push([dd, dh, dw]);
                    }
                }
            }
        }
        out
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= GRID_ABS_TOLERANCE + GRID_REL_TOLERANCE * a.abs()
}

fn mismatch(a: &Volume, b: &Volume, detail: String) -> VolumeError {
    VolumeError::GridMismatch {
        first: PathBuf::from(a.describe()),
        second: PathBuf::from(b.describe()),
        detail,
    }
}

/// Check that `a` and `b` can be combined voxel by voxel by `what` (see the module docs).
pub fn check_same_grid(a: &Volume, b: &Volume, what: &str) -> Result<(), VolumeError> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa[1..] != sb[1..] {
        return Err(mismatch(
            a,
            b,
            format!(
                "`{what}` needs the same spatial shape [D, H, W], got {:?} and {:?}",
                &sa[1..],
                &sb[1..]
            ),
        ));
    }
    if sa[0] != sb[0] && sa[0] != 1 && sb[0] != 1 {
        return Err(mismatch(
            a,
            b,
            format!(
                "`{what}` needs the same number of channels (or one channel on one side), got {} and {}",
                sa[0], sb[0]
            ),
        ));
    }
    if let Some(k) = (0..3).find(|&k| !close(a.spacing[k], b.spacing[k])) {
        return Err(mismatch(
            a,
            b,
            format!(
                "`{what}`: spacings [sd, sh, sw] differ on axis {}: {:?} and {:?} (resample one onto the other first)",
                ["d", "h", "w"][k],
                a.spacing,
                b.spacing
            ),
        ));
    }
    for r in 0..3 {
        for c in 0..4 {
            if !close(a.affine[r][c], b.affine[r][c]) {
                return Err(mismatch(
                    a,
                    b,
                    format!(
                        "`{what}`: affines differ at row {r}, column {c}: {} and {} (tolerance {GRID_ABS_TOLERANCE} + {GRID_REL_TOLERANCE}·|value|)",
                        a.affine[r][c], b.affine[r][c]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The contiguous voxels of a volume, in C order.
fn voxels(v: &Volume) -> std::borrow::Cow<'_, [f32]> {
    match v.data.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.data.as_standard_layout().iter().copied().collect()),
    }
}

fn computed(like: &Volume, channels: usize, data: Vec<f32>) -> Volume {
    let [_, d, h, w] = like.shape();
    Volume {
        data: Array4::from_shape_vec((channels, d, h, w), data)
            .expect("the data has channels × D × H × W values"),
        spacing: like.spacing,
        affine: like.affine,
        source: Vec::new(),
    }
}

/// Apply `f` to every voxel.
pub fn map(v: &Volume, f: impl Fn(f32) -> f32 + Sync) -> Volume {
    let input = voxels(v);
    let mut out = vec![0.0f32; input.len()];
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o = f(*x);
            }
        });
    computed(v, v.channels(), out)
}

/// Combine two volumes on one grid voxel by voxel with `f` (checked by [`check_same_grid`]).
pub fn zip_with(
    a: &Volume,
    b: &Volume,
    what: &str,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Volume, VolumeError> {
    check_same_grid(a, b, what)?;
    let channels = a.channels().max(b.channels());
    let plane: usize = a.spatial_shape().iter().product();
    let (xa, xb) = (voxels(a), voxels(b));
    let mut out = vec![0.0f32; channels * plane];
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(c, o)| {
            let ca = if a.channels() == 1 { 0 } else { c };
            let cb = if b.channels() == 1 { 0 } else { c };
            let sa = &xa[ca * plane..(ca + 1) * plane];
            let sb = &xb[cb * plane..(cb + 1) * plane];
            o.par_chunks_mut(CHUNK)
                .zip(sa.par_chunks(CHUNK).zip(sb.par_chunks(CHUNK)))
                .for_each(|(o, (x, y))| {
                    for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                        *o = f(*x, *y);
                    }
                });
        });
    }
    Ok(computed(a, channels, out))
}

/// `v op number` for every voxel, e.g. `ct * 2.0`.
pub fn arithmetic_number(v: &Volume, op: Arithmetic, number: f64) -> Volume {
    map(v, |x| op.apply(x, number))
}

/// `number op v` for every voxel, e.g. `1000.0 - ct`.
pub fn number_arithmetic(number: f64, op: Arithmetic, v: &Volume) -> Volume {
    map(v, |x| {
        let x = x as f64;
        (match op {
            Arithmetic::Add => number + x,
            Arithmetic::Subtract => number - x,
            Arithmetic::Multiply => number * x,
            Arithmetic::Divide => number / x,
        }) as f32
    })
}

/// `a op b` voxel by voxel for two volumes on one grid.
pub fn arithmetic(a: &Volume, op: Arithmetic, b: &Volume) -> Result<Volume, VolumeError> {
    zip_with(a, b, &format!("a {} b", op.symbol()), |x, y| {
        op.apply(x, y as f64)
    })
}

/// The mask `v cmp number` (1.0 where it holds, else 0.0).
pub fn compare_number(v: &Volume, cmp: Comparison, number: f64) -> Volume {
    let n = number as f32;
    map(v, |x| if cmp.holds(x, n) { 1.0 } else { 0.0 })
}

/// The mask `a cmp b` voxel by voxel for two volumes on one grid.
pub fn compare(a: &Volume, cmp: Comparison, b: &Volume) -> Result<Volume, VolumeError> {
    zip_with(a, b, &format!("a {} b", cmp.symbol()), |x, y| {
        if cmp.holds(x, y) { 1.0 } else { 0.0 }
    })
}

/// Voxels of `inside` where `mask` is not 0, of `outside` elsewhere (numpy's `where`).
///
/// Volumes among `inside` and `outside` must share the mask's grid (see the module docs); the
/// result has the mask's spacing and affine and the largest channel count of the three.
pub fn select(
    mask: &Volume,
    inside: Operand<'_>,
    outside: Operand<'_>,
) -> Result<Volume, VolumeError> {
    let mut channels = mask.channels();
    for (operand, side) in [(inside, "a"), (outside, "b")] {
        if let Operand::Volume(v) = operand {
            check_same_grid(mask, v, &format!("where(mask, a, b)` for `{side}"))?;
            if channels != v.channels() && channels != 1 && v.channels() != 1 {
                return Err(mismatch(
                    mask,
                    v,
                    format!(
                        "`where(mask, a, b)`: a and b have {channels} and {} channels",
                        v.channels()
                    ),
                ));
            }
            channels = channels.max(v.channels());
        }
    }
    let plane: usize = mask.spatial_shape().iter().product();
    let m = voxels(mask);
    fn source<'v>(o: Operand<'v>) -> Option<(std::borrow::Cow<'v, [f32]>, usize)> {
        match o {
            Operand::Volume(v) => Some((voxels(v), v.channels())),
            Operand::Number(_) => None,
        }
    }
    let (a, b) = (source(inside), source(outside));
    let value = |o: &Operand<'_>| match o {
        Operand::Number(n) => *n as f32,
        Operand::Volume(_) => 0.0,
    };
    let (na, nb) = (value(&inside), value(&outside));
    fn channel_slice<'s>(
        s: &'s Option<(std::borrow::Cow<'_, [f32]>, usize)>,
        c: usize,
        plane: usize,
    ) -> Option<&'s [f32]> {
        s.as_ref().map(|(data, channels)| {
            let c = if *channels == 1 { 0 } else { c };
            &data[c * plane..(c + 1) * plane]
        })
    }
    let mut out = vec![0.0f32; channels * plane];
    if plane > 0 {
        out.par_chunks_mut(plane).enumerate().for_each(|(c, o)| {
            let cm = if mask.channels() == 1 { 0 } else { c };
            let ms = &m[cm * plane..(cm + 1) * plane];
            let sa = channel_slice(&a, c, plane);
            let sb = channel_slice(&b, c, plane);
            o.par_chunks_mut(CHUNK).enumerate().for_each(|(k, o)| {
                let start = k * CHUNK;
                for (i, o) in o.iter_mut().enumerate() {
                    let j = start + i;
                    *o = if ms[j] != 0.0 {
                        sa.map_or(na, |s| s[j])
                    } else {
                        sb.map_or(nb, |s| s[j])
                    };
                }
            });
        });
    }
    Ok(computed(mask, channels, out))
}

/// A component found by [`components`]: its key and its number of voxels.
struct Component {
    key: u32,
    size: usize,
}

/// Label the components of the voxels of a `[D, H, W]` grid by their `key` (0 = background):
/// neighbouring voxels with equal keys are connected. Returns the component index of every
/// voxel (0 = background, else 1 + index into the components) and the components in the order
/// of their first voxel in C order. Memory: one u32 per voxel besides the input.
fn components(
    values: &[f32],
    key: impl Fn(f32) -> u32,
    shape: [usize; 3],
    connectivity: Connectivity,
) -> (Vec<u32>, Vec<Component>) {
    let [d, h, w] = shape;
    let offsets = connectivity.earlier_neighbours();
    // Provisional labels (1-based) per voxel, and a union-find forest over them.
    let mut provisional = vec![0u32; values.len()];
    let mut parent: Vec<u32> = vec![0];
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    }
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                let k = key(values[i]);
                if k == 0 {
                    continue;
                }
                let mut label = 0u32;
                for [dz, dy, dx] in &offsets {
                    let (nz, ny, nx) = (z as isize + dz, y as isize + dy, x as isize + dx);
                    if nz < 0 || ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let j = (nz as usize * h + ny as usize) * w + nx as usize;
                    if key(values[j]) != k {
                        continue;
                    }
                    let other = find(&mut parent, provisional[j]);
                    if label == 0 {
                        label = other;
                    } else if other != label {
                        let (low, high) = (label.min(other), label.max(other));
                        parent[high as usize] = low;
                        label = low;
                    }
                }
                if label == 0 {
                    label = parent.len() as u32;
                    parent.push(label);
                }
                provisional[i] = label;
            }
        }
    }
    // Final numbering: by first appearance in C order (the smallest provisional label of a
    // component is its root, and provisional labels grow in C order).
    let mut final_of = vec![0u32; parent.len()];
    let mut found: Vec<Component> = Vec::new();
    for (i, p) in provisional.iter_mut().enumerate() {
        if *p == 0 {
            continue;
        }
        let root = find(&mut parent, *p) as usize;
        if final_of[root] == 0 {
            found.push(Component {
                key: key(values[i]),
                size: 0,
            });
            final_of[root] = found.len() as u32;
        }
        let f = final_of[root];
        found[f as usize - 1].size += 1;
        *p = f;
    }
    (provisional, found)
}

fn one_channel(v: &Volume, what: &str) -> Result<(), VolumeError> {
    if v.channels() != 1 {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: {what} needs a one-channel volume, this one has {} channels (take one with .channel(i))",
            v.describe(),
            v.channels()
        )));
    }
    Ok(())
}

/// A one-channel volume on `like`'s grid holding `labels` (the allocation is reused).
fn label_volume(like: &Volume, labels: Vec<u32>, relabel: impl Fn(u32) -> u32) -> Volume {
    let data: Vec<f32> = labels.into_iter().map(|l| relabel(l) as f32).collect();
    computed(like, 1, data)
}

/// The connected components of a one-channel mask (voxels ≠ 0) as an instance map 1..N
/// (numbered like `scipy.ndimage.label`), and N.
pub fn connected_components(
    mask: &Volume,
    connectivity: Connectivity,
) -> Result<(Volume, usize), VolumeError> {
    one_channel(mask, "connected_components")?;
    let (labels, found) = components(
        &voxels(mask),
        |v| u32::from(v != 0.0),
        mask.spatial_shape(),
        connectivity,
    );
    if found.len() > MAX_EXACT_LABEL {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: {} components, more than the {MAX_EXACT_LABEL} an f32 volume numbers exactly",
            mask.describe(),
            found.len()
        )));
    }
    Ok((label_volume(mask, labels, |l| l), found.len()))
}

/// nnDetection's conversion of a semantic label map (class values 1..K, 0 and negative values
/// background) into an instance map and its instance → class map: the connected components of
/// every class value in ascending order, numbered 1..N consecutively (within a class in C
/// order), class index `value − 1`. Components smaller than `min_voxels` are dropped
/// (nnDetection's `min_num_voxel`).
pub fn labels_to_instances(
    labels: &Volume,
    connectivity: Connectivity,
    min_voxels: usize,
) -> Result<(Volume, BTreeMap<u32, u32>), VolumeError> {
    one_channel(labels, "labels_to_instances")?;
    labels.check_integer_labels()?;
    let (component_of, found) = components(
        &voxels(labels),
        |v| if v > 0.0 { v as u32 } else { 0 },
        labels.spatial_shape(),
        connectivity,
    );
    let mut order: Vec<usize> = (0..found.len())
        .filter(|&c| found[c].size >= min_voxels.max(1))
        .collect();
    order.sort_by_key(|&c| found[c].key);
    if order.len() > MAX_EXACT_LABEL {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: {} instances, more than the {MAX_EXACT_LABEL} an f32 volume numbers exactly",
            labels.describe(),
            order.len()
        )));
    }
    let mut instance_of = vec![0u32; found.len() + 1];
    let mut classes = BTreeMap::new();
    for (n, &c) in order.iter().enumerate() {
        let id = n as u32 + 1;
        instance_of[c + 1] = id;
        classes.insert(id, found[c].key - 1);
    }
    let volume = label_volume(labels, component_of, |c| instance_of[c as usize]);
    Ok((volume, classes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn vol(d: usize, h: usize, w: usize, values: &[f32]) -> Volume {
        Volume::from_array(
            Array4::from_shape_vec((1, d, h, w), values.to_vec()).unwrap(),
            [1.0, 1.0, 1.0],
        )
    }

    fn values(v: &Volume) -> Vec<f32> {
        v.data.iter().copied().collect()
    }

    #[test]
    fn arithmetic_with_numbers_and_volumes() {
        let a = vol(1, 1, 4, &[1.0, 2.0, 3.0, 4.0]);
        let b = vol(1, 1, 4, &[4.0, 3.0, 2.0, 0.0]);
        assert_eq!(
            values(&arithmetic_number(&a, Arithmetic::Multiply, 2.0)),
            [2.0, 4.0, 6.0, 8.0]
        );
        assert_eq!(
            values(&number_arithmetic(10.0, Arithmetic::Subtract, &a)),
            [9.0, 8.0, 7.0, 6.0]
        );
        assert_eq!(
            values(&number_arithmetic(12.0, Arithmetic::Divide, &a)),
            [12.0, 6.0, 4.0, 3.0]
        );
        assert_eq!(
            values(&arithmetic(&a, Arithmetic::Add, &b).unwrap()),
            [5.0, 5.0, 5.0, 4.0]
        );
        let q = values(&arithmetic(&a, Arithmetic::Divide, &b).unwrap());
        assert_eq!(q[3], f32::INFINITY, "IEEE division by zero");
        assert!(
            arithmetic(&a, Arithmetic::Add, &b)
                .unwrap()
                .source
                .is_empty()
        );
    }

    #[test]
    fn comparisons_give_masks_and_round_the_number_to_f32() {
        let a = vol(1, 1, 4, &[0.1, 0.2, f32::NAN, -1.0]);
        assert_eq!(
            values(&compare_number(&a, Comparison::Equal, 0.1)),
            [1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            values(&compare_number(&a, Comparison::Greater, 0.1)),
            [0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(
            values(&compare_number(&a, Comparison::NotEqual, 0.1)),
            [0.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(Comparison::Less.swapped(), Comparison::Greater);
        let b = vol(1, 1, 4, &[0.1, 0.3, 0.0, -2.0]);
        assert_eq!(
            values(&compare(&a, Comparison::LessOrEqual, &b).unwrap()),
            [1.0, 1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn grids_must_agree_and_errors_say_what_differs() {
        let a = vol(1, 1, 4, &[1.0; 4]);
        let b = vol(1, 2, 2, &[1.0; 4]);
        let e = arithmetic(&a, Arithmetic::Add, &b).unwrap_err().to_string();
        assert_eq!(
            e,
            "computed volume and computed volume do not share a voxel grid: `a + b` needs the same spatial shape [D, H, W], got [1, 1, 4] and [1, 2, 2]"
        );
        let mut c = a.clone();
        c.spacing = [1.0, 1.0, 2.0];
        let e = compare(&a, Comparison::Greater, &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`a > b`: spacings [sd, sh, sw] differ on axis w"),
            "{e}"
        );
        let mut d = a.clone();
        d.affine[0][3] = 5.0;
        let e = arithmetic(&a, Arithmetic::Multiply, &d)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("affines differ at row 0, column 3: 0 and 5"),
            "{e}"
        );
        let two = Volume::from_array(Array4::from_elem((2, 1, 1, 4), 1.0), [1.0; 3]);
        let three = Volume::from_array(Array4::from_elem((3, 1, 1, 4), 1.0), [1.0; 3]);
        let e = arithmetic(&two, Arithmetic::Add, &three)
            .unwrap_err()
            .to_string();
        assert!(e.contains("got 2 and 3"), "{e}");
        // One channel applies to every channel of the other side.
        let sum = arithmetic(&two, Arithmetic::Add, &a).unwrap();
        assert_eq!(sum.shape(), [2, 1, 1, 4]);
        assert!(sum.data.iter().all(|v| *v == 2.0));
    }

    #[test]
    fn where_selects_voxels_of_volumes_or_numbers() {
        let mask = vol(1, 1, 4, &[1.0, 0.0, f32::NAN, 0.0]);
        let a = vol(1, 1, 4, &[10.0, 20.0, 30.0, 40.0]);
        let r = select(&mask, Operand::Volume(&a), Operand::Number(-1.0)).unwrap();
        assert_eq!(values(&r), [10.0, -1.0, 30.0, -1.0]);
        let r = select(&mask, Operand::Number(1.0), Operand::Volume(&a)).unwrap();
        assert_eq!(values(&r), [1.0, 20.0, 1.0, 40.0]);
        let wrong = vol(1, 1, 3, &[0.0; 3]);
        let e = select(&mask, Operand::Volume(&wrong), Operand::Number(0.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`where(mask, a, b)` for `a`"), "{e}");
    }

    #[test]
    fn components_follow_scipy_numbering_and_connectivity() {
        // Two voxels touching at a corner, and a separate bar: 26 → 2 components, 6 → 3.
        let mut data = vec![0.0f32; 4 * 4 * 4];
        let at = |d: usize, h: usize, w: usize| (d * 4 + h) * 4 + w;
        data[at(0, 0, 0)] = 1.0;
        data[at(1, 1, 1)] = 1.0;
        data[at(3, 3, 2)] = 5.0;
        data[at(3, 3, 3)] = 5.0;
        let mask = vol(4, 4, 4, &data);
        let (l26, n26) = connected_components(&mask, Connectivity::Corners26).unwrap();
        assert_eq!(n26, 2);
        let v = values(&l26);
        assert_eq!(
            (
                v[at(0, 0, 0)],
                v[at(1, 1, 1)],
                v[at(3, 3, 2)],
                v[at(3, 3, 3)]
            ),
            (1.0, 1.0, 2.0, 2.0)
        );
        let (l6, n6) = connected_components(&mask, Connectivity::Faces6).unwrap();
        assert_eq!(n6, 3);
        let v = values(&l6);
        assert_eq!(
            (
                v[at(0, 0, 0)],
                v[at(1, 1, 1)],
                v[at(3, 3, 2)],
                v[at(3, 3, 3)]
            ),
            (1.0, 2.0, 3.0, 3.0)
        );
        // Two voxels sharing an edge: 18 connects them, 6 does not.
        let mut data = vec![0.0f32; 8];
        data[0] = 1.0;
        data[3] = 1.0; // [0, 1, 1]
        let edge = vol(2, 2, 2, &data);
        assert_eq!(
            connected_components(&edge, Connectivity::Edges18)
                .unwrap()
                .1,
            1
        );
        assert_eq!(
            connected_components(&edge, Connectivity::Faces6).unwrap().1,
            2
        );
        // A U shape whose arms meet late gets one label (union of provisional labels).
        let u = vol(1, 3, 3, &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let (l, n) = connected_components(&u, Connectivity::Faces6).unwrap();
        assert_eq!(n, 1);
        assert!(values(&l).iter().all(|v| *v == 0.0 || *v == 1.0));
        assert!(
            Connectivity::from_neighbours(8)
                .unwrap_err()
                .to_string()
                .contains("got 8")
        );
    }

    #[test]
    fn labels_become_instances_per_class_like_nndetection() {
        // Class 2 comes first in C order, but class 1's instances are numbered first; two
        // touching voxels of different classes stay separate instances.
        let labels = vol(1, 1, 6, &[2.0, 1.0, 0.0, 1.0, 2.0, 2.0]);
        let (inst, classes) = labels_to_instances(&labels, Connectivity::Corners26, 0).unwrap();
        assert_eq!(values(&inst), [3.0, 1.0, 0.0, 2.0, 4.0, 4.0]);
        assert_eq!(classes, BTreeMap::from([(1, 0), (2, 0), (3, 1), (4, 1)]));
        let (inst, classes) = labels_to_instances(&labels, Connectivity::Corners26, 2).unwrap();
        assert_eq!(values(&inst), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(classes, BTreeMap::from([(1, 1)]));
        let e = labels_to_instances(&vol(1, 1, 2, &[0.5, 1.0]), Connectivity::Corners26, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid integer labels"), "{e}");
    }
}
