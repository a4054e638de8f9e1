//! The content checks of a dataset's cases: masks, instance JSON, grids and ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ndarray::Axis;
use rayon::prelude::*;

use super::*;
use crate::data::error::Problem;
use crate::data::meta::DatasetMeta;
use crate::volume::{self, Affine, Volume};

/// Parse `<case>.json` (`{"instances": {"1": 0, …}}`), checking ids ≥ 1 and classes < `num_classes`.
pub fn read_instance_json(
    path: &Path,
    num_classes: usize,
) -> Result<BTreeMap<u32, usize>, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Problem::new(path, format!("cannot read: {e}"))])?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| vec![Problem::new(path, format!("invalid JSON: {e}"))])?;
    let Some(map) = value.get("instances").and_then(|v| v.as_object()) else {
        return Err(vec![Problem::new(
            path,
            "expected {\"instances\": {\"<id>\": <class>, …}}",
        )]);
    };
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let id = match k.trim().parse::<u32>() {
            Ok(0) => {
                problems.push(Problem::new(
                    path,
                    "instance id 0 is the background and cannot have a class",
                ));
                continue;
            }
            Ok(id) => id,
            Err(_) => {
                problems.push(Problem::new(
                    path,
                    format!("instance id {k:?} is not a positive integer"),
                ));
                continue;
            }
        };
        match v.as_u64() {
            Some(c) if (c as usize) < num_classes => {
                out.insert(id, c as usize);
            }
            Some(c) => problems.push(Problem::new(
                path,
                format!(
                    "instance {id} has class {c}, outside `labels` (classes 0..{})",
                    num_classes.saturating_sub(1)
                ),
            )),
            None => problems.push(Problem::new(
                path,
                format!("instance {id} has class {v}, which is not a class index"),
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Whether two affines agree within the grid tolerance (`1e-4 + 1e-5·|a|` per entry, as `read_channels`).
pub(super) fn affines_close(a: &Affine, b: &Affine) -> bool {
    (0..3).all(|r| (0..4).all(|c| (a[r][c] - b[r][c]).abs() <= 1e-4 + 1e-5 * a[r][c].abs()))
}

/// Checks on a loaded mask: `(is_warning, problem)` pairs.
pub(super) fn check_mask(
    mask: &Volume,
    label: &Path,
    json: &Path,
    classes: &BTreeMap<u32, usize>,
    image: Option<(&Volume, &Path)>,
) -> Vec<(bool, Problem)> {
    let mut out = Vec::new();
    let [c, d, h, w] = mask.shape();
    if c != 1 {
        out.push((
            false,
            Problem::new(
                label,
                format!("an instance mask must be 3D, this file has {c} channels/time points"),
            ),
        ));
        return out;
    }
    if let Some((img, img_path)) = image {
        push_grid_problems(
            &mut out,
            label,
            [d, h, w],
            &mask.affine,
            img.spatial_shape(),
            &img.affine,
            img_path,
        );
    }
    let (ids, bad) = mask_ids(mask);
    if let Some((count, value)) = bad {
        out.push((
            false,
            Problem::new(label, format!("{count} voxel(s) are not non-negative whole numbers (e.g. {value}); an instance mask holds 0 and ids 1..N")),
        ));
        return out;
    }
    push_id_problems(&mut out, &ids, label, json, classes);
    out
}

pub(super) fn push_grid_problems(
    out: &mut Vec<(bool, Problem)>,
    path: &Path,
    shape: [usize; 3],
    affine: &Affine,
    ref_shape: [usize; 3],
    ref_affine: &Affine,
    ref_path: &Path,
) {
    if shape != ref_shape {
        out.push((
            false,
            Problem::new(
                path,
                format!(
                    "shape [D, H, W] {shape:?} differs from {} {ref_shape:?}",
                    ref_path.display()
                ),
            ),
        ));
    } else if !affines_close(affine, ref_affine) {
        out.push((
            false,
            Problem::new(
                path,
                format!(
                    "affine differs from {} ({affine:?} vs {ref_affine:?})",
                    ref_path.display()
                ),
            ),
        ));
    }
}

pub(super) fn push_id_problems(
    out: &mut Vec<(bool, Problem)>,
    ids: &BTreeSet<u32>,
    label: &Path,
    json: &Path,
    classes: &BTreeMap<u32, usize>,
) {
    let listed: BTreeSet<u32> = classes.keys().copied().collect();
    let only_mask: Vec<u32> = ids.difference(&listed).copied().collect();
    let only_json: Vec<u32> = listed.difference(ids).copied().collect();
    if !only_mask.is_empty() {
        out.push((
            false,
            Problem::new(
                json,
                format!(
                    "instance id(s) {only_mask:?} are in the mask {} but not in this file",
                    label.display()
                ),
            ),
        ));
    }
    if !only_json.is_empty() {
        out.push((
            false,
            Problem::new(
                json,
                format!(
                    "instance id(s) {only_json:?} are listed here but absent from the mask {}",
                    label.display()
                ),
            ),
        ));
    }
    if let Some(&max) = ids.iter().next_back()
        && max as usize != ids.len()
    {
        out.push((
            true,
            Problem::new(
                label,
                format!(
                    "instance ids are not consecutive 1..{} (found {:?}); detlab accepts this",
                    ids.len(),
                    ids
                ),
            ),
        ));
    }
}

/// The set of non-zero ids of a mask and, if any voxel is not a whole number ≥ 0, (count, example).
pub(super) fn mask_ids(mask: &Volume) -> (BTreeSet<u32>, Option<(u64, f32)>) {
    let slices: Vec<(BTreeSet<u32>, u64, f32)> = mask
        .data
        .axis_iter(Axis(1))
        .into_par_iter()
        .map(|slab| {
            let mut ids = BTreeSet::new();
            let mut bad = 0u64;
            let mut example = 0.0f32;
            let mut last = 0u32;
            for &v in slab.iter() {
                if v == 0.0 {
                    continue;
                }
                if !(v.is_finite() && v > 0.0 && v.fract() == 0.0 && v <= u32::MAX as f32) {
                    if bad == 0 {
                        example = v;
                    }
                    bad += 1;
                    continue;
                }
                let id = v as u32;
                if id != last {
                    ids.insert(id);
                    last = id;
                }
            }
            (ids, bad, example)
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut bad = 0;
    let mut example = 0.0;
    for (i, b, e) in slices {
        ids.extend(i);
        if bad == 0 && b > 0 {
            example = e;
        }
        bad += b;
    }
    (ids, (bad > 0).then_some((bad, example)))
}

/// Content checks of one case: image headers, then the mask (errors, warnings).
pub(super) fn check_case_content(
    case: &CaseFiles,
    meta: &DatasetMeta,
) -> (Vec<Problem>, Vec<Problem>) {
    let mut found: Vec<(bool, Problem)> = Vec::new();
    let mut reference: Option<([usize; 3], Affine, &Path)> = None;
    for path in &case.images {
        match volume::read_nifti_header(path) {
            Err(e) => found.push((false, Problem::new(path, format!("unreadable image: {e}")))),
            Ok(info) => {
                let [c, d, h, w] = info.shape;
                if c != 1 {
                    found.push((false, Problem::new(path, format!("each modality file must be 3D, this one has {c} channels/time points"))));
                    continue;
                }
                match &reference {
                    None => reference = Some(([d, h, w], info.affine, path.as_path())),
                    Some((shape, affine, ref_path)) => push_grid_problems(
                        &mut found,
                        path,
                        [d, h, w],
                        &info.affine,
                        *shape,
                        affine,
                        ref_path,
                    ),
                }
            }
        }
    }
    if let (Some(label), Some(json)) = (&case.label, &case.instances_json) {
        match (
            volume::read_nifti(label),
            read_instance_json(json, meta.num_classes()),
        ) {
            (Err(e), _) => {
                found.push((false, Problem::new(label, format!("unreadable mask: {e}"))))
            }
            (Ok(_), Err(_)) => {} // already reported by the cheap checks
            (Ok(mask), Ok(classes)) => {
                let mut mask_problems = check_mask(&mask, label, json, &classes, None);
                if let Some((shape, affine, ref_path)) = &reference
                    && mask.shape()[0] == 1
                {
                    push_grid_problems(
                        &mut mask_problems,
                        label,
                        mask.spatial_shape(),
                        &mask.affine,
                        *shape,
                        affine,
                        ref_path,
                    );
                }
                found.extend(mask_problems);
            }
        }
    }
    let (warnings, errors): (Vec<_>, Vec<_>) = found.into_iter().partition(|p| p.0);
    (
        errors.into_iter().map(|p| p.1).collect(),
        warnings.into_iter().map(|p| p.1).collect(),
    )
}
