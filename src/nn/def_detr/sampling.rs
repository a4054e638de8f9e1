//! 3D trilinear sampling with zero padding, built from the 8 corner gathers so that burn's
//! autodiff differentiates it with respect to both the sampled values and the locations.
//!
//! Locations are normalised to `[0, 1]` per axis in `(d, h, w)` order, with PyTorch's
//! `grid_sample(..., align_corners=False)` convention: location `u` on an axis of `n` voxels
//! is the continuous voxel coordinate `u · n − 0.5` (voxel centres at `(i + 0.5) / n`).
//! Corners outside the volume contribute zero, so a location half a voxel outside the border
//! gets half the border value.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Trilinear samples of `G` flattened volumes at `M` locations each.
///
/// # Shapes
/// - values: `[G, S, C]` with `S = D · H · W` (row-major `d, h, w`)
/// - size: `[D, H, W]`
/// - locations: `[G, M, 3]`, normalised `(d, h, w)` in `[0, 1]`
/// - output: `[G, M, C]`
pub fn trilinear_sample<B: Backend>(
    values: Tensor<B, 3>,
    size: [usize; 3],
    locations: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [g, m, _] = locations.dims();
    let output = weighted_trilinear_sample(values, size, locations, None);
    let c = output.dims()[1];
    output.reshape([g, m, c])
}

/// [`trilinear_sample`] with every sample multiplied by a weight, returned flat (`[G · M, C]`);
/// folding the attention weight into the 8 corner weights saves a full-size product.
///
/// # Shapes
/// - values `[G, S, C]`, locations `[G, M, 3]`, weights `[G, M]`; output `[G · M, C]`
pub fn weighted_trilinear_sample<B: Backend>(
    values: Tensor<B, 3>,
    size: [usize; 3],
    locations: Tensor<B, 3>,
    weights: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    let [g, s, c] = values.dims();
    let [_, m, _] = locations.dims();
    let device = locations.device();
    debug_assert_eq!(s, size.iter().product::<usize>());
    let flat_values = values.reshape([g * s, c]);
    let scale = Tensor::<B, 3>::from_data(
        TensorData::new(size.iter().map(|&n| n as f32).collect(), [1, 1, 3]),
        &device,
    );
    // Continuous voxel coordinates; the floor is a constant, so the gradient with respect
    // to the location flows through the fractional parts (the corner weights).
    let position = (locations * scale).sub_scalar(0.5);
    let low = position.clone().detach().floor();
    let fraction = (position - low.clone()).reshape([g * m, 3]);
    let low = low.reshape([g * m, 3]).int();
    let axis = |t: &Tensor<B, 2>, a: usize| t.clone().slice([0..g * m, a..a + 1]).reshape([g * m]);
    let axis_int =
        |t: &Tensor<B, 2, Int>, a: usize| t.clone().slice([0..g * m, a..a + 1]).reshape([g * m]);
    let fractions: [Tensor<B, 1>; 3] = std::array::from_fn(|a| axis(&fraction, a));
    let lows: [Tensor<B, 1, Int>; 3] = std::array::from_fn(|a| axis_int(&low, a));
    // Offset of every sample's volume in the flattened values.
    let base = Tensor::<B, 1, Int>::arange(0..g as i64, &device)
        .mul_scalar(s as i64)
        .reshape([g, 1])
        .repeat_dim(1, m)
        .reshape([g * m]);
    let strides = [(size[1] * size[2]) as i64, size[2] as i64, 1];
    let weights = weights.map(|w| w.reshape([g * m]));
    let mut output: Option<Tensor<B, 2>> = None;
    for corner in 0..8 {
        let mut weight: Option<Tensor<B, 1>> = weights.clone();
        let mut index = base.clone();
        let mut valid: Option<Tensor<B, 1, burn::tensor::Bool>> = None;
        for a in 0..3 {
            let upper = (corner >> (2 - a)) & 1 == 1;
            let w = if upper {
                fractions[a].clone()
            } else {
                fractions[a].clone().neg().add_scalar(1.0)
            };
            weight = Some(match weight {
                Some(acc) => acc * w,
                None => w,
            });
            let i = if upper {
                lows[a].clone().add_scalar(1)
            } else {
                lows[a].clone()
            };
            let inside = i
                .clone()
                .greater_equal_elem(0)
                .bool_and(i.clone().lower_elem(size[a] as i64));
            valid = Some(match valid {
                Some(v) => v.bool_and(inside),
                None => inside,
            });
            index = index + i.clamp(0, size[a] as i64 - 1).mul_scalar(strides[a]);
        }
        let weight = weight
            .expect("three axes")
            .mask_fill(valid.expect("three axes").bool_not(), 0.0);
        let sampled = flat_values.clone().select(0, index) * weight.reshape([g * m, 1]);
        output = Some(match output {
            Some(acc) => acc + sampled,
            None => sampled,
        });
    }
    output.expect("eight corners")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};

    fn tensor3(values: Vec<f32>, shape: [usize; 3]) -> Tensor<TestBackend, 3> {
        Tensor::from_data(TensorData::new(values, shape), &test_device())
    }

    /// Host trilinear sample with zero padding (the definition, corner by corner).
    fn reference(values: &[f32], size: [usize; 3], c: usize, loc: [f64; 3]) -> Vec<f64> {
        let p: [f64; 3] = std::array::from_fn(|a| loc[a] * size[a] as f64 - 0.5);
        let mut out = vec![0.0; c];
        for corner in 0..8 {
            let mut w = 1.0;
            let mut idx = [0i64; 3];
            for a in 0..3 {
                let lo = p[a].floor();
                let up = (corner >> (2 - a)) & 1 == 1;
                idx[a] = lo as i64 + up as i64;
                w *= if up { p[a] - lo } else { 1.0 - (p[a] - lo) };
            }
            if (0..3).any(|a| idx[a] < 0 || idx[a] >= size[a] as i64) {
                continue;
            }
            let flat = (idx[0] as usize * size[1] + idx[1] as usize) * size[2] + idx[2] as usize;
            for ch in 0..c {
                out[ch] += w * values[flat * c + ch] as f64;
            }
        }
        out
    }

    #[test]
    fn samples_match_hand_computed_values_with_zero_padding() {
        // v(d, h, w) = 1 + 4d + 2h + w on a 2³ grid; trilinear interpolation reproduces a
        // linear function inside the grid.
        let values: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
        let locations = vec![
            0.5, 0.5, 0.5, // centre: voxel coordinate (0.5, 0.5, 0.5) → 1 + 2 + 1 + 0.5
            0.25, 0.25, 0.25, // the first voxel centre → 1
            0.75, 0.25, 0.75, // voxel (1, 0, 1) → 1 + 4 + 1 = 6
            0.0, 0.25, 0.25, // half a voxel before the border in d: half of voxel 0 → 0.5
            -0.5, 0.25, 0.25, // fully outside → 0
        ];
        let out = trilinear_sample(
            tensor3(values, [1, 8, 1]),
            [2, 2, 2],
            tensor3(locations, [1, 5, 3]),
        );
        assert_close(&tensor_values(out), &[4.5, 1.0, 6.0, 0.5, 0.0], 1e-6);
    }

    #[test]
    fn samples_match_the_corner_definition_on_a_non_cubic_grid() {
        let size = [3, 4, 5];
        let c = 2;
        let values: Vec<f32> = (0..60 * c).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let locs: Vec<[f64; 3]> = vec![
            [0.1, 0.9, 0.33],
            [0.5, 0.05, 0.97],
            [1.02, 0.4, 0.6],
            [0.71, 0.62, 0.0],
        ];
        let flat: Vec<f32> = locs.iter().flatten().map(|&v| v as f32).collect();
        let out = trilinear_sample(
            tensor3(values.clone(), [1, 60, c]),
            size,
            tensor3(flat, [1, 4, 3]),
        );
        let expected: Vec<f64> = locs
            .iter()
            .flat_map(|&l| reference(&values, size, c, l))
            .collect();
        assert_close(&tensor_values(out), &expected, 1e-4);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = test_device();
        let size = [3, 4, 5];
        let s = 60;
        let c = 2;
        let values: Vec<f32> = (0..s * c)
            .map(|i| ((i * 29) % 13) as f32 / 4.0 - 1.5)
            .collect();
        // Locations whose voxel coordinates stay away from integers (kinks of the
        // piecewise-linear interpolant), some near the zero-padded border.
        let locs: Vec<f32> = vec![0.3, 0.45, 0.52, 0.05, 0.8, 0.95, 0.62, 0.07, 0.31];
        let m = 3;
        let probe: Vec<f32> = (0..m * c).map(|i| 0.5 + i as f32 * 0.3).collect();
        let loss = |v: &[f32], l: &[f32]| -> Tensor<TestBackend, 1> {
            let out = trilinear_sample(
                tensor3(v.to_vec(), [1, s, c]),
                size,
                tensor3(l.to_vec(), [1, m, 3]),
            );
            (out * tensor3(probe.clone(), [1, m, c])).sum()
        };
        let v = tensor3(values.clone(), [1, s, c]).require_grad();
        let l = tensor3(locs.clone(), [1, m, 3]).require_grad();
        let out = trilinear_sample(v.clone(), size, l.clone());
        let grads = (out * tensor3(probe.clone(), [1, m, c])).sum().backward();
        let grad_l = tensor_values(l.grad(&grads).unwrap());
        let grad_v = tensor_values(v.grad(&grads).unwrap());
        let value = |t: Tensor<TestBackend, 1>| tensor_values(t)[0];
        let h = 1e-3f32;
        for k in 0..locs.len() {
            let mut plus = locs.clone();
            plus[k] += h;
            let mut minus = locs.clone();
            minus[k] -= h;
            let fd =
                (value(loss(&values, &plus)) - value(loss(&values, &minus))) / (2.0 * h as f64);
            assert!(
                (fd - grad_l[k]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "location {k}: autodiff {} vs finite difference {fd}",
                grad_l[k]
            );
        }
        // The sample is linear in the values: the finite difference is exact up to rounding.
        for k in [0, 7, 31, 64, 101] {
            let mut plus = values.clone();
            plus[k] += 0.5;
            let mut minus = values.clone();
            minus[k] -= 0.5;
            let fd = value(loss(&plus, &locs)) - value(loss(&minus, &locs));
            assert!(
                (fd - grad_v[k]).abs() <= 1e-4,
                "value {k}: autodiff {} vs finite difference {fd}",
                grad_v[k]
            );
        }
        let _ = device;
    }
}
