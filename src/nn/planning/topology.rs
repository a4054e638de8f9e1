//! nnDetection's network-topology rules (planner `BoxC002`, nnU-Net v1's
//! `get_pool_and_conv_props`), each a pure function of spacings and sizes so that tests can
//! check them against values derived by hand. All arrays are in the order planning works in
//! (nnDetection's transposed order: the coarsest axis first).

/// Pooling and convolution layout of an encoder for one patch size (nnU-Net v1's
/// `get_pool_and_conv_props`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConvProps {
    /// Poolings per axis.
    pub pools_per_axis: [usize; 3],
    /// The pooling (stride) of every pooling step, finest first.
    pub pools: Vec<[usize; 3]>,
    /// Conv kernel of every resolution: one per pooling step plus the bottleneck's 3³.
    pub conv_kernels: Vec<[usize; 3]>,
    /// The patch padded up to a multiple of `divisor`.
    pub patch_size: [usize; 3],
    /// What every patch axis must be divisible by: 2^(poolings of that axis).
    pub divisor: [usize; 3],
}

/// nnU-Net v1's `get_pool_and_conv_props`: pool an axis by 2 while its current spacing is
/// below twice the smallest current spacing, its current size is at least
/// `2 × min_feature_map_size` and it has been pooled fewer than `max_pools` times; the conv
/// kernel of a resolution is 3 on the largest group of axes whose spacings are within a factor
/// 2 of each other and 1 elsewhere; the bottleneck gets a 3³ kernel; the patch is padded up to
/// a multiple of 2^(poolings) per axis.
pub fn pool_and_conv_props(
    spacing: [f64; 3],
    patch_size: [usize; 3],
    min_feature_map_size: usize,
    max_pools: usize,
) -> PoolConvProps {
    let mut current_spacing = spacing;
    // Sizes halve as floats (nnU-Net divides without rounding).
    let mut current_size = patch_size.map(|s| s as f64);
    let mut pools_per_axis = [0usize; 3];
    let mut pools = Vec::new();
    let mut conv_kernels = Vec::new();
    loop {
        let min_spacing = current_spacing
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        // The first largest group of mutually "within factor 2" axes gets the 3-kernels.
        let mut group: Vec<usize> = Vec::new();
        for a in 0..3 {
            let partners: Vec<usize> = (0..3)
                .filter(|&i| {
                    current_spacing[i] / current_spacing[a] < 2.0
                        && current_spacing[a] / current_spacing[i] < 2.0
                })
                .collect();
            if partners.len() > group.len() {
                group = partners;
            }
        }
        let kernel: [usize; 3] = std::array::from_fn(|a| if group.contains(&a) { 3 } else { 1 });
        let valid: Vec<usize> = (0..3)
            .filter(|&a| current_spacing[a] / min_spacing < 2.0)
            .filter(|&a| current_size[a] >= 2.0 * min_feature_map_size as f64)
            .filter(|&a| pools_per_axis[a] < max_pools)
            .collect();
        if valid.is_empty() {
            break;
        }
        let mut pool = [1usize; 3];
        for &a in &valid {
            pool[a] = 2;
            pools_per_axis[a] += 1;
            current_spacing[a] *= 2.0;
            current_size[a] /= 2.0;
        }
        pools.push(pool);
        conv_kernels.push(kernel);
    }
    conv_kernels.push([3, 3, 3]);
    let divisor = pools_per_axis.map(|p| 1usize << p.min(62));
    PoolConvProps {
        pools_per_axis,
        pools,
        conv_kernels,
        patch_size: pad_to_multiple(patch_size, divisor),
        divisor,
    }
}

/// nnU-Net's `pad_shape`: every axis rounded up to a multiple of its divisor (unchanged when
/// it already is one).
pub fn pad_to_multiple(shape: [usize; 3], divisor: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|a| shape[a].div_ceil(divisor[a]) * divisor[a])
}

/// `BoxC002._get_initial_patch_size`: a patch isotropic in mm whose coarsest axis has
/// `start_voxels` voxels (voxels per mm normalised by their mean, scaled so the smallest entry
/// is `start_voxels`, rounded), then clipped: the low-resolution axis (largest spacing, the
/// first on ties) to its median size, every other axis to the smallest median size among the
/// other axes; finally rounded half to even like numpy.
pub fn initial_patch_size(
    target_spacing: [f64; 3],
    median_shape: [f64; 3],
    start_voxels: f64,
) -> [usize; 3] {
    let per_mm = target_spacing.map(|s| 1.0 / s);
    let mean = per_mm.iter().sum::<f64>() / 3.0;
    let normalised = per_mm.map(|v| v / mean);
    let smallest = normalised.iter().copied().fold(f64::INFINITY, f64::min);
    let start = normalised.map(|v| (v * (1.0 / smallest) * start_voxels).round_ties_even());
    let low_res = argmax_first(&target_spacing);
    let min_other = (0..3)
        .filter(|&a| a != low_res)
        .map(|a| median_shape[a])
        .fold(f64::INFINITY, f64::min);
    std::array::from_fn(|a| {
        let limit = if a == low_res {
            median_shape[a]
        } else {
            min_other
        };
        start[a].min(limit).round_ties_even().max(1.0) as usize
    })
}

/// `BoxC001._decrease_patch_size`: shrink the axis with the largest patch / median-shape ratio
/// (the last such axis on ties, as numpy's reversed stable argsort gives) by its divisor, or by
/// half of it when that axis' bottleneck is already at most `min_feature_map_size`.
pub fn decrease_patch_size(
    patch_size: [usize; 3],
    median_shape: [f64; 3],
    pools: &[[usize; 3]],
    divisor: [usize; 3],
    min_feature_map_size: usize,
) -> [usize; 3] {
    let ratio: [f64; 3] = std::array::from_fn(|a| patch_size[a] as f64 / median_shape[a]);
    let mut axis = 0;
    for a in 1..3 {
        if ratio[a] >= ratio[axis] {
            axis = a;
        }
    }
    let total_pool: usize = pools.iter().map(|p| p[axis]).product();
    let bottleneck = patch_size[axis] as f64 / total_pool as f64;
    // numpy subtracts divisor / 2 as a float from an integer array: 1 / 2 truncates to a step of 1.
    let step = if bottleneck > min_feature_map_size as f64 {
        divisor[axis]
    } else {
        divisor[axis].div_ceil(2)
    };
    let mut out = patch_size;
    out[axis] = out[axis].saturating_sub(step).max(1);
    out
}

/// nnDetection's detection (decoder) levels for `num_resolutions` encoder resolutions:
/// `range(min(max(1, R − num_levels), max_first), R)`.
pub fn detection_levels(num_resolutions: usize, num_levels: usize, max_first: usize) -> Vec<usize> {
    let start = num_resolutions
        .saturating_sub(num_levels)
        .max(1)
        .min(max_first)
        .min(num_resolutions.saturating_sub(1));
    (start..num_resolutions).collect()
}

/// The level strides nnDetection's anchor planning uses (`BoxC001._plan_anchors`): the
/// per-resolution pool list `[1, pools…]` restricted to the detection levels, its cumulative
/// product, divided by the first pooling and truncated to integers. Equals the detection
/// levels' strides relative to the first one when the first pooling equals the first detection
/// level's pooling (isotropic plans); otherwise the first entry is not 1.
pub fn nndetection_anchor_strides(pools: &[[usize; 3]], levels: &[usize]) -> Vec<[usize; 3]> {
    let first_pool = pools.first().copied().unwrap_or([1, 1, 1]);
    let mut acc = [1usize; 3];
    levels
        .iter()
        .map(|&l| {
            let p = if l == 0 { [1, 1, 1] } else { pools[l - 1] };
            for a in 0..3 {
                acc[a] *= p[a];
            }
            std::array::from_fn(|a| acc[a] / first_pool[a])
        })
        .collect()
}

/// Index of the largest value (the first one on ties, like `np.argmax`).
pub fn argmax_first(values: &[f64; 3]) -> usize {
    (1..3).fold(0, |best, a| if values[a] > values[best] { a } else { best })
}

/// nnDetection's `transpose_forward`: the axis with the largest target spacing first, the
/// others in their order.
pub fn transpose_forward(target_spacing: [f64; 3]) -> [usize; 3] {
    let first = argmax_first(&target_spacing);
    let rest: Vec<usize> = (0..3).filter(|&a| a != first).collect();
    [first, rest[0], rest[1]]
}

/// `values` in the transposed order (`out[i] = values[order[i]]`).
pub fn permute<T: Copy>(values: [T; 3], order: [usize; 3]) -> [T; 3] {
    order.map(|a| values[a])
}

/// Undo [`permute`]: `out[order[i]] = values[i]`.
pub fn unpermute<T: Copy>(values: [T; 3], order: [usize; 3]) -> [T; 3] {
    let mut out = values;
    for (i, &a) in order.iter().enumerate() {
        out[a] = values[i];
    }
    out
}
