//! S3D's sparse emulation of an encoder (nnssl's SparkMAE): every conv and pooling output is
//! multiplied by the mask at its resolution, every instance norm becomes a masked instance
//! norm (statistics over visible voxels only, 0 elsewhere), and levels coarser than the mask
//! grid run dense. LeakyReLU(0) = 0 and the sum of two masked tensors is masked, so zeros
//! propagate exactly through the residual blocks.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::mask::BlockMask;
use crate::nn::Encoder;
use crate::nn::blocks::{Activation, BasicBlockD, ConvNormAct, avg_pool3d};

/// The masks of one batch at every resolution asked for, built once each.
pub struct MaskPyramid<'a, B: Backend> {
    mask: &'a BlockMask,
    device: B::Device,
    cache: HashMap<[usize; 3], Option<Tensor<B, 5>>>,
}

impl<'a, B: Backend> MaskPyramid<'a, B> {
    /// Masks of `mask` on `device`.
    pub fn new(mask: &'a BlockMask, device: &B::Device) -> Self {
        Self {
            mask,
            device: device.clone(),
            cache: HashMap::new(),
        }
    }

    /// The mask `[N, 1, D, H, W]` at a spatial resolution, or `None` where the level is dense.
    pub fn at(&mut self, shape: [usize; 3]) -> Option<Tensor<B, 5>> {
        let batch = self.mask.cells.len();
        let device = self.device.clone();
        self.cache
            .entry(shape)
            .or_insert_with(|| {
                self.mask.at_resolution(shape).map(|values| {
                    Tensor::from_data(
                        TensorData::new(values, [batch, 1, shape[0], shape[1], shape[2]]),
                        &device,
                    )
                })
            })
            .clone()
    }
}

fn spatial<B: Backend>(x: &Tensor<B, 5>) -> [usize; 3] {
    let [_, _, d, h, w] = x.dims();
    [d, h, w]
}

/// Instance norm whose statistics use only the voxels where `mask` is 1; masked voxels are 0
/// in the output. Without a mask it is the ordinary instance norm. `affine` = (γ, β).
///
/// # Shapes
/// - `x`: `[N, C, D, H, W]`; `mask`: `[N, 1, D, H, W]`
pub fn masked_instance_norm<B: Backend>(
    x: Tensor<B, 5>,
    mask: Option<&Tensor<B, 5>>,
    affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    epsilon: f64,
) -> Tensor<B, 5> {
    masked_instance_norm_activation(x, mask, affine, epsilon, Activation::Identity)
}

/// [`masked_instance_norm`] followed by `activation`: one fused op (burn's broadcasting ops
/// made this norm S3D's largest cost) where the CPU kernels apply; without affine parameters
/// it runs with γ = 1 and β = 0, constants of the graph.
pub fn masked_instance_norm_activation<B: Backend>(
    x: Tensor<B, 5>,
    mask: Option<&Tensor<B, 5>>,
    affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    epsilon: f64,
    activation: Activation,
) -> Tensor<B, 5> {
    let [_, c, ..] = x.dims();
    let (gamma, beta) = match &affine {
        Some((gamma, beta)) => (gamma.clone(), beta.clone()),
        None => (
            Tensor::ones([c], &x.device()),
            Tensor::zeros([c], &x.device()),
        ),
    };
    if let Some(y) = crate::nn::conv::norm::fused_group_norm_activation(
        &x, mask, c, &gamma, &beta, epsilon, activation,
    ) {
        return y;
    }
    activation.apply(composed_masked_instance_norm(x, mask, affine, epsilon))
}

/// The masked instance norm from burn's tensor ops (other backends and devices).
fn composed_masked_instance_norm<B: Backend>(
    x: Tensor<B, 5>,
    mask: Option<&Tensor<B, 5>>,
    affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    epsilon: f64,
) -> Tensor<B, 5> {
    let shape = x.shape();
    let [n, c, d, h, w] = x.dims();
    let voxels = d * h * w;
    let flat = x.reshape([n, c, voxels]);
    let (mean, var) = match mask {
        Some(m) => {
            let m = m.clone().reshape([n, 1, voxels]);
            let count = m.clone().sum_dim(2).clamp_min(1.0);
            let mean = (flat.clone() * m.clone()).sum_dim(2) / count.clone();
            let centered = (flat.clone() - mean.clone()) * m;
            let var = centered.square().sum_dim(2) / count;
            (mean, var)
        }
        None => {
            let mean = flat.clone().mean_dim(2);
            let var = (flat.clone() - mean.clone()).square().mean_dim(2);
            (mean, var)
        }
    };
    let mut y = ((flat - mean) / var.add_scalar(epsilon).sqrt()).reshape(shape);
    if let Some((gamma, beta)) = affine {
        y = y * gamma.reshape([1, c, 1, 1, 1]) + beta.reshape([1, c, 1, 1, 1]);
    }
    match mask {
        Some(m) => y * m.clone(),
        None => y,
    }
}

/// A conv unit under the mask: conv → ×mask → masked IN → activation. The masked instance
/// norm reads only visible voxels, writes 0 at the others and passes them no gradient, so
/// the product with the mask before it changes nothing and is left out (each is a
/// broadcasting op over every channel).
pub fn sparse_unit<B: Backend>(
    unit: &ConvNormAct<B>,
    x: Tensor<B, 5>,
    masks: &mut MaskPyramid<B>,
) -> Tensor<B, 5> {
    let y = unit.conv.forward(x);
    let mask = masks.at(spatial(&y));
    masked_instance_norm_activation(
        y,
        mask.as_ref(),
        Some((unit.norm.weight.val(), unit.norm.bias.val())),
        unit.norm.epsilon,
        unit.activation,
    )
}

/// A residual block under the mask (the shortcut's average pool is masked too).
pub fn sparse_block<B: Backend>(
    block: &BasicBlockD<B>,
    x: Tensor<B, 5>,
    masks: &mut MaskPyramid<B>,
) -> Tensor<B, 5> {
    let main = sparse_unit(
        &block.conv2,
        sparse_unit(&block.conv1, x.clone(), masks),
        masks,
    );
    let mut shortcut = avg_pool3d(x, block.skip_pool);
    if block.skip_pool != [1, 1, 1]
        && let Some(m) = masks.at(spatial(&shortcut))
    {
        shortcut = shortcut * m;
    }
    if let Some(skip) = &block.skip {
        shortcut = sparse_unit(skip, shortcut, masks);
    }
    block.activation.apply(main + shortcut)
}

/// Run `encoder` sparsely on `x` `[N, C, D, H, W]`: returns every stage's output and the
/// mask of its level (`None`: dense). `zero_input` zeroes the masked input voxels first
/// (the original SparK; nnssl does not).
pub fn sparse_encoder_forward<B: Backend>(
    encoder: &Encoder<B>,
    x: Tensor<B, 5>,
    masks: &mut MaskPyramid<B>,
    zero_input: bool,
) -> (Vec<Tensor<B, 5>>, Vec<Option<Tensor<B, 5>>>) {
    let mut x = x;
    if zero_input && let Some(m) = masks.at(spatial(&x)) {
        x = x * m;
    }
    for unit in &encoder.stem.convs {
        x = sparse_unit(unit, x, masks);
    }
    let mut skips = Vec::with_capacity(encoder.stages.len());
    let mut levels = Vec::with_capacity(encoder.stages.len());
    for stage in &encoder.stages {
        for unit in &stage.convs {
            x = sparse_unit(unit, x, masks);
        }
        for block in &stage.blocks {
            x = sparse_block(block, x, masks);
        }
        levels.push(masks.at(spatial(&x)));
        skips.push(x.clone());
    }
    (skips, levels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, relative_error, tensor_values, test_device};
    use crate::nn::{EncoderConfig, ResEncConfig};
    use burn::tensor::Distribution;

    fn mask(grid: [usize; 3], cells: Vec<f32>) -> BlockMask {
        BlockMask {
            grid,
            cells: vec![cells],
        }
    }

    /// Output and gradients (input, γ, β) of `sum(y · r)` for the masked instance norm with
    /// an affine, by the fused op or by the composed tensor ops.
    /// Masked instance norm then `activation`: the fused op (both in one) or the composed ops.
    fn masked_norm_run(fused: bool, activation: Activation) -> [Vec<f64>; 4] {
        let device = test_device();
        // Seeded values (the backend's generator is shared by tests running in parallel).
        let seeded = |shape: [usize; 5], seed: u64| {
            let values: Vec<f32> = crate::nn::conv::uniform_values(shape.iter().product(), seed)
                .into_iter()
                .map(|v| v * 2.0 + 0.3)
                .collect();
            Tensor::<TestBackend, 5>::from_data(TensorData::new(values, shape), &device)
        };
        let x = seeded([2, 3, 2, 4, 6], 1).require_grad();
        let gamma = Tensor::<TestBackend, 1>::from_floats([0.5, 1.5, -1.0], &device).require_grad();
        let beta = Tensor::<TestBackend, 1>::from_floats([0.1, -0.2, 0.3], &device).require_grad();
        // Sample 0 half visible, sample 1 fully masked (its statistics fall back to 1 voxel).
        let m = BlockMask {
            grid: [1, 1, 2],
            cells: vec![vec![1.0, 0.0], vec![0.0, 0.0]],
        };
        let mut pyramid = MaskPyramid::<TestBackend>::new(&m, &device);
        let mask = pyramid.at([2, 4, 6]).unwrap();
        let applies = crate::nn::conv::with_fast_conv3d(fused, || {
            crate::nn::conv::norm::fused_masked_group_norm(&x, Some(&mask), 3, &gamma, &beta, 1e-5)
                .is_some()
        });
        assert_eq!(applies, fused, "the fused kernel ran");
        let y = crate::nn::conv::with_fast_conv3d(fused, || {
            if fused {
                crate::nn::conv::norm::fused_group_norm_activation(
                    &x,
                    Some(&mask),
                    3,
                    &gamma,
                    &beta,
                    1e-5,
                    activation,
                )
                .unwrap()
            } else {
                activation.apply(masked_instance_norm(
                    x.clone(),
                    Some(&mask),
                    Some((gamma.clone(), beta.clone())),
                    1e-5,
                ))
            }
        });
        let grads = (y.clone() * seeded(y.dims(), 2)).sum().backward();
        [
            tensor_values(y),
            tensor_values(x.grad(&grads).unwrap()),
            tensor_values(gamma.grad(&grads).unwrap()),
            tensor_values(beta.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn fused_masked_instance_norm_matches_the_composed_ops_with_gradients() {
        for activation in [Activation::Identity, Activation::LeakyRelu] {
            masked_norm_matches(activation);
        }
    }

    fn masked_norm_matches(activation: Activation) {
        let fused = masked_norm_run(true, activation);
        let composed = masked_norm_run(false, activation);
        for (name, (a, e)) in ["output", "input grad", "gamma grad", "beta grad"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            let err = relative_error(a, e);
            assert!(
                err <= 1e-4,
                "{name}: relative error {err} with {activation:?}"
            );
        }
    }

    #[test]
    fn masked_instance_norm_equals_dense_when_all_visible_and_ignores_masked_values() {
        let device = test_device();
        let x = Tensor::<TestBackend, 5>::random([1, 2, 2, 4, 4], Distribution::Default, &device);
        let ones = Tensor::<TestBackend, 5>::ones([1, 1, 2, 4, 4], &device);
        let dense = tensor_values(masked_instance_norm(x.clone(), None, None, 1e-5));
        let all = tensor_values(masked_instance_norm(x.clone(), Some(&ones), None, 1e-5));
        for (a, b) in dense.iter().zip(&all) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Half the voxels masked: changing them changes nothing, and they come out 0.
        let m = BlockMask {
            grid: [1, 1, 2],
            cells: vec![vec![1.0, 0.0]],
        };
        let mut pyramid = MaskPyramid::<TestBackend>::new(&m, &device);
        let mk = pyramid.at([2, 4, 4]).unwrap();
        let noise =
            Tensor::<TestBackend, 5>::random([1, 2, 2, 4, 4], Distribution::Default, &device);
        let changed = x.clone() + noise * (mk.clone().neg().add_scalar(1.0));
        let a = tensor_values(masked_instance_norm(x.clone(), Some(&mk), None, 1e-5));
        let b = tensor_values(masked_instance_norm(changed, Some(&mk), None, 1e-5));
        let mv = tensor_values(mk.repeat_dim(1, 2));
        for ((a, b), m) in a.iter().zip(&b).zip(&mv) {
            assert!((a - b).abs() < 1e-5);
            if *m == 0.0 {
                assert_eq!(*a, 0.0);
            }
        }
        // Statistics over the visible half: those voxels have mean 0 and variance 1.
        let visible: Vec<f64> = a
            .iter()
            .zip(&mv)
            .filter(|(_, m)| **m == 1.0)
            .map(|(v, _)| *v)
            .collect();
        let per_channel = visible.len() / 2;
        for c in 0..2 {
            let vals = &visible[c * per_channel..(c + 1) * per_channel];
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!(
                mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-2,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn masked_norm_gives_no_gradient_to_masked_inputs() {
        // The test backend is the script backend, which already records gradients.
        type AD = TestBackend;
        let device = test_device();
        let x =
            Tensor::<AD, 5>::random([1, 1, 2, 2, 2], Distribution::Default, &device).require_grad();
        let m = mask([1, 1, 2], vec![0.0, 1.0]);
        let mut pyramid = MaskPyramid::<AD>::new(&m, &device);
        let mk = pyramid.at([2, 2, 2]).unwrap();
        let y = masked_instance_norm(x.clone() * mk.clone(), Some(&mk), None, 1e-5);
        let grads = (y * Tensor::random([1, 1, 2, 2, 2], Distribution::Default, &device))
            .sum()
            .backward();
        let g = tensor_values(x.grad(&grads).unwrap());
        let mv = tensor_values(mk);
        for (g, m) in g.iter().zip(&mv) {
            if *m == 0.0 {
                assert_eq!(*g, 0.0);
            }
        }
    }

    #[test]
    fn zeros_at_masked_positions_survive_the_residual_encoder_and_the_bottleneck_is_dense() {
        let device = test_device();
        let config = EncoderConfig::Resenc(ResEncConfig::tiny(1));
        let encoder = config.init::<TestBackend>(&device).unwrap();
        // 16³ patch, 4³ blocks → grid 4³; stage resolutions 16, 8, 4, 2.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let m = BlockMask::draw(1, [16, 16, 16], 4, 0.5, &mut rng);
        let mut pyramid = MaskPyramid::<TestBackend>::new(&m, &device);
        let x =
            Tensor::<TestBackend, 5>::random([1, 1, 16, 16, 16], Distribution::Default, &device);
        let (skips, levels) = sparse_encoder_forward(&encoder, x, &mut pyramid, false);
        assert_eq!(skips.len(), 4);
        assert!(levels[3].is_none(), "2³ is coarser than the 4³ grid: dense");
        for s in 0..3 {
            let values = tensor_values(skips[s].clone());
            let mk = tensor_values(levels[s].clone().unwrap().repeat_dim(1, skips[s].dims()[1]));
            let leaked = values
                .iter()
                .zip(&mk)
                .filter(|(v, m)| **m == 0.0 && **v != 0.0)
                .count();
            assert_eq!(leaked, 0, "stage {s}");
            assert!(values.iter().zip(&mk).any(|(v, m)| *m == 1.0 && *v != 0.0));
        }
    }
}
