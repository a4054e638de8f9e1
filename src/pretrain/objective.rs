//! The five objectives: a batch is first drawn on the CPU ([`prepare_batch`], deterministic in
//! the seed and iteration), then [`loss`] runs the network and returns the loss terms and,
//! when asked, the slices of what the method sees and produces.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ndarray::{Array2, Array4, Axis};
use rand::Rng;

use super::PretrainError;
use super::config::{Method, PretrainConfig};
use super::crops::{VocoAugmentConfig, augment_crop, crop, overlap_labels};
use super::genesis::corrupt;
use super::mask::BlockMask;
use super::network::{HeadSpec, PretrainNetwork};
use super::source::{CaseSource, PretrainSource};
use super::sparse::{MaskPyramid, sparse_encoder_forward};
use crate::plot::Panel;

/// Where a run's batches come from.
#[derive(Clone)]
pub enum Sources {
    /// One unlabelled source (MAE, S3D, Models Genesis, VoCo).
    Images(Arc<dyn PretrainSource>),
    /// MultiTalent's labelled datasets, their heads, and each dataset's sampling weight.
    Labelled {
        /// The datasets.
        datasets: Vec<Arc<CaseSource>>,
        /// The heads (a dataset split into parts has several).
        heads: Vec<HeadSpec>,
    },
}

/// One batch, drawn on the CPU.
#[derive(Clone, Debug)]
pub enum PreparedBatch {
    /// MAE, S3D and Models Genesis: the network maps `input` to `target`.
    Reconstruction {
        /// Network input `[N, C, D, H, W]`.
        input: Vec<f32>,
        /// Reconstruction target, same shape.
        target: Vec<f32>,
        /// `[N, C, D, H, W]`.
        shape: [usize; 5],
        /// MAE/S3D: the cell masks (the loss covers masked voxels only).
        mask: Option<BlockMask>,
    },
    /// VoCo: every image's base crops then its target crops, and the overlap labels.
    Voco {
        /// Crops `[N·(K+T), C, d, h, w]`.
        crops: Vec<f32>,
        /// Shape of `crops`.
        shape: [usize; 5],
        /// Base crops per image `K`.
        bases: usize,
        /// Target crops per image `T`.
        targets: usize,
        /// Overlap labels `[N, T, K]`, each target's row sums to 1.
        labels: Vec<f32>,
    },
    /// MultiTalent: samples grouped by head.
    Segmentation(Vec<SegmentationGroup>),
}

/// MultiTalent samples of one head.
#[derive(Clone, Debug)]
pub struct SegmentationGroup {
    /// Index of the head.
    pub head: usize,
    /// Index of the dataset (its stem).
    pub dataset: usize,
    /// Images `[n, C_d, D, H, W]`.
    pub images: Vec<f32>,
    /// Shape of `images`.
    pub shape: [usize; 5],
    /// Head channel per voxel `[n, D, H, W]` (0 background).
    pub target: Vec<i64>,
}

/// Dataset sampling probabilities of MultiTalent: a case of dataset d is drawn ∝ N_d^exponent,
/// so dataset d is drawn ∝ N_d^(1 + exponent).
pub fn dataset_probabilities(case_counts: &[usize], exponent: f64) -> Vec<f64> {
    let weights: Vec<f64> = case_counts
        .iter()
        .map(|&n| (n as f64).powf(1.0 + exponent))
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

fn pick<R: Rng + ?Sized>(probabilities: &[f64], rng: &mut R) -> usize {
    let mut u: f64 = rng.random();
    for (i, p) in probabilities.iter().enumerate() {
        if u < *p {
            return i;
        }
        u -= p;
    }
    probabilities.len() - 1
}

fn stack(patches: &[Array4<f32>]) -> (Vec<f32>, [usize; 5]) {
    let (c, d, h, w) = patches[0].dim();
    let mut out = Vec::with_capacity(patches.len() * c * d * h * w);
    for p in patches {
        out.extend(p.iter().copied());
    }
    (out, [patches.len(), c, d, h, w])
}

/// Draw batch `iteration` (patch numbers `first_index …`) for the method of `config`.
pub fn prepare_batch<R: Rng>(
    config: &PretrainConfig,
    sources: &Sources,
    first_index: u64,
    batch: usize,
    rng: &mut R,
) -> Result<PreparedBatch, PretrainError> {
    match (config.method, sources) {
        (Method::Multitalent, Sources::Labelled { datasets, heads }) => {
            let counts: Vec<usize> = datasets.iter().map(|d| d.cases.len()).collect();
            let probabilities =
                dataset_probabilities(&counts, config.multitalent.sampling_exponent);
            let mut groups: BTreeMap<usize, (Vec<Array4<f32>>, Vec<i64>)> = BTreeMap::new();
            for _ in 0..batch {
                let dataset = pick(&probabilities, rng);
                let patch = datasets[dataset].labelled_patch(
                    config.patch,
                    config.multitalent.foreground_fraction,
                    rng,
                );
                let classes = patch.segmentation_target().unwrap_or_else(|| {
                    ndarray::Array3::zeros((config.patch[0], config.patch[1], config.patch[2]))
                });
                // Heads of this dataset; a split dataset's sample trains a random part.
                let own: Vec<usize> = (0..heads.len())
                    .filter(|&h| heads[h].dataset == dataset)
                    .collect();
                let head = own[rng.random_range(0..own.len())];
                let channel_of = |class_plus_one: i64| -> i64 {
                    if class_plus_one == 0 {
                        return 0;
                    }
                    let class = (class_plus_one - 1) as usize;
                    heads[head]
                        .classes
                        .iter()
                        .position(|&c| c == class)
                        .map_or(0, |i| i as i64 + 1)
                };
                let entry = groups.entry(head).or_default();
                entry.0.push(patch.image);
                entry.1.extend(classes.iter().map(|&c| channel_of(c)));
            }
            Ok(PreparedBatch::Segmentation(
                groups
                    .into_iter()
                    .map(|(head, (images, target))| {
                        let (images, shape) = stack(&images);
                        SegmentationGroup {
                            head,
                            dataset: heads[head].dataset,
                            images,
                            shape,
                            target,
                        }
                    })
                    .collect(),
            ))
        }
        (method, sources) => {
            let source: &dyn PretrainSource = match sources {
                Sources::Images(s) => s.as_ref(),
                Sources::Labelled { datasets, .. } => datasets[0].as_ref(),
            };
            match method {
                Method::Voco => Ok(prepare_voco(config, source, first_index, batch, rng)),
                _ => prepare_reconstruction(config, source, first_index, batch, rng),
            }
        }
    }
}

fn prepare_reconstruction<R: Rng>(
    config: &PretrainConfig,
    source: &dyn PretrainSource,
    first_index: u64,
    batch: usize,
    rng: &mut R,
) -> Result<PreparedBatch, PretrainError> {
    let images: Vec<Array4<f32>> = (0..batch)
        .map(|b| source.patch(config.patch, first_index + b as u64, rng))
        .collect();
    match config.method {
        Method::ModelsGenesis => {
            let (mut inputs, mut targets) = (Vec::new(), Vec::new());
            for image in &images {
                let sample = corrupt(image, &config.genesis, rng)
                    .map_err(|e| PretrainError::InvalidData(e.to_string()))?;
                inputs.push(sample.input);
                targets.push(sample.target);
            }
            let (input, shape) = stack(&inputs);
            let (target, _) = stack(&targets);
            Ok(PreparedBatch::Reconstruction {
                input,
                target,
                shape,
                mask: None,
            })
        }
        method => {
            let mask = BlockMask::draw(
                batch,
                config.patch,
                config.mask.block,
                config.mask.ratio,
                rng,
            );
            let (target, shape) = stack(&images);
            let input = if method == Method::Mae {
                // MAE: masked voxels set to 0 (the mean after z-scoring), no mask token.
                let voxel = mask.at_resolution(config.patch).unwrap_or_default();
                let per_sample = shape[2] * shape[3] * shape[4];
                target
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let n = i / (shape[1] * per_sample);
                        v * voxel[n * per_sample + i % per_sample]
                    })
                    .collect()
            } else {
                // S3D masks inside the encoder; the input stays whole as in nnssl.
                target.clone()
            };
            Ok(PreparedBatch::Reconstruction {
                input,
                target,
                shape,
                mask: Some(mask),
            })
        }
    }
}

fn prepare_voco<R: Rng>(
    config: &PretrainConfig,
    source: &dyn PretrainSource,
    first_index: u64,
    batch: usize,
    rng: &mut R,
) -> PreparedBatch {
    let geometry = config.voco_geometry();
    let bases = geometry.base_boxes();
    let augment = VocoAugmentConfig::default();
    let mut crops = Vec::new();
    let mut labels = Vec::new();
    let mut targets_count = 0;
    for b in 0..batch {
        let image = source.patch(config.patch, first_index + b as u64, rng);
        let targets = geometry.random_target_boxes(rng);
        targets_count = targets.len();
        for row in overlap_labels(&targets, &bases) {
            labels.extend(row);
        }
        for region in bases.iter().chain(&targets) {
            let mut c = crop(&image, region);
            if config.voco.augment_crops {
                augment_crop(&mut c, rng, &augment);
            }
            crops.push(c);
        }
    }
    let (crops, shape) = stack(&crops);
    PreparedBatch::Voco {
        crops,
        shape,
        bases: bases.len(),
        targets: targets_count,
        labels,
    }
}

/// The loss of one batch: the total and its named terms (scalar tensors).
pub struct StepLoss<B: Backend> {
    /// What the optimiser minimises.
    pub total: Tensor<B, 1>,
    /// Named terms, e.g. `masked_mse`, `l_pos`, `dice_organs`.
    pub components: Vec<(String, Tensor<B, 1>)>,
    /// Slices for the method's figure (when asked for).
    pub figure: Option<Vec<Panel>>,
}

fn tensor<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn to_array4<B: Backend>(t: Tensor<B, 5>, sample: usize) -> Array4<f32> {
    let [_, c, d, h, w] = t.dims();
    let values = t
        .slice([sample..sample + 1, 0..c, 0..d, 0..h, 0..w])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    Array4::from_shape_vec((c, d, h, w), values).unwrap_or_else(|_| Array4::zeros((c, d, h, w)))
}

fn middle_slice(volume: &Array4<f32>) -> Array2<f32> {
    let d = volume.dim().1;
    volume
        .index_axis(Axis(0), 0)
        .index_axis(Axis(0), d / 2)
        .to_owned()
}

fn flat_to_array4(values: &[f32], shape: [usize; 5], sample: usize) -> Array4<f32> {
    let per = shape[1] * shape[2] * shape[3] * shape[4];
    Array4::from_shape_vec(
        (shape[1], shape[2], shape[3], shape[4]),
        values[sample * per..(sample + 1) * per].to_vec(),
    )
    .unwrap_or_else(|_| Array4::zeros((shape[1], shape[2], shape[3], shape[4])))
}

/// Compute the loss of `batch` with `network`. `teacher` (VoCo's EMA teacher, no gradient)
/// embeds the base crops of the prediction term when given.
pub fn loss<B: Backend>(
    network: &PretrainNetwork<B>,
    config: &PretrainConfig,
    batch: &PreparedBatch,
    teacher_bases: Option<Tensor<B, 2>>,
    heads: &[HeadSpec],
    want_figure: bool,
    device: &B::Device,
) -> StepLoss<B> {
    match batch {
        PreparedBatch::Reconstruction {
            input,
            target,
            shape,
            mask,
        } => reconstruction_loss(
            network,
            config,
            input,
            target,
            *shape,
            mask.as_ref(),
            want_figure,
            device,
        ),
        PreparedBatch::Voco {
            crops,
            shape,
            bases,
            targets,
            labels,
        } => voco_loss(
            network,
            config,
            crops,
            *shape,
            *bases,
            *targets,
            labels,
            teacher_bases,
            want_figure,
            device,
        ),
        PreparedBatch::Segmentation(groups) => {
            segmentation_loss(network, groups, heads, want_figure, device)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn reconstruction_loss<B: Backend>(
    network: &PretrainNetwork<B>,
    config: &PretrainConfig,
    input: &[f32],
    target: &[f32],
    shape: [usize; 5],
    mask: Option<&BlockMask>,
    want_figure: bool,
    device: &B::Device,
) -> StepLoss<B> {
    let x = tensor::<B, 5>(input, shape, device);
    let y = tensor::<B, 5>(target, shape, device);
    let decoder = network
        .decoder
        .as_ref()
        .expect("reconstruction methods build a decoder");
    let prediction = match (config.method, mask, &network.densify) {
        (Method::Spark, Some(mask), Some(densify)) => {
            let mut pyramid = MaskPyramid::<B>::new(mask, device);
            let (skips, levels) =
                sparse_encoder_forward(&network.encoder, x, &mut pyramid, config.spark.zero_input);
            decoder.forward(&densify.forward(skips, &levels))
        }
        _ => decoder.forward(&network.encoder.forward(x)),
    };
    let squared = (prediction.clone() - y).square();
    let (name, value, voxel_mask) = match mask {
        Some(mask) => {
            let visible = mask
                .at_resolution([shape[2], shape[3], shape[4]])
                .unwrap_or_default();
            let hidden: Vec<f32> = visible.iter().map(|v| 1.0 - v).collect();
            let hidden_t =
                tensor::<B, 5>(&hidden, [shape[0], 1, shape[2], shape[3], shape[4]], device);
            let count = hidden.iter().sum::<f32>() * shape[1] as f32;
            let value = (squared * hidden_t).sum().div_scalar(count.max(1.0));
            ("masked_mse", value, Some(visible))
        }
        None => ("mse", squared.mean(), None),
    };
    let figure = want_figure.then(|| {
        let reconstruction = to_array4(prediction.detach(), 0);
        let input0 = flat_to_array4(input, shape, 0);
        let target0 = flat_to_array4(target, shape, 0);
        let mut panels = vec![Panel::new("input", middle_slice(&target0))];
        match &voxel_mask {
            Some(visible) => {
                let m = flat_to_array4(visible, [shape[0], 1, shape[2], shape[3], shape[4]], 0);
                panels.push(Panel::with_range(
                    "visible cells",
                    middle_slice(&m),
                    0.0,
                    1.0,
                ));
                let masked = &target0 * &m;
                panels.push(Panel::new("masked input", middle_slice(&masked)));
            }
            None => panels.push(Panel::new("corrupted input", middle_slice(&input0))),
        }
        let title = if config.method == Method::ModelsGenesis {
            "restoration"
        } else {
            "reconstruction"
        };
        panels.push(Panel::new(title, middle_slice(&reconstruction)));
        panels
    });
    StepLoss {
        total: value.clone(),
        components: vec![(name.to_string(), value)],
        figure,
    }
}

fn normalize_rows<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    let norm = z.clone().square().sum_dim(D - 1).sqrt().clamp_min(1e-8);
    z / norm
}

#[allow(clippy::too_many_arguments)]
fn voco_loss<B: Backend>(
    network: &PretrainNetwork<B>,
    config: &PretrainConfig,
    crops: &[f32],
    shape: [usize; 5],
    bases: usize,
    targets: usize,
    labels: &[f32],
    teacher_bases: Option<Tensor<B, 2>>,
    want_figure: bool,
    device: &B::Device,
) -> StepLoss<B> {
    let per_image = bases + targets;
    let images = shape[0] / per_image;
    let z = network.embed(tensor::<B, 5>(crops, shape, device));
    let width = z.dims()[1];
    let z = normalize_rows(z.reshape([images, per_image, width]));
    let base_z = z.clone().slice([0..images, 0..bases, 0..width]);
    let target_z = z.slice([0..images, bases..per_image, 0..width]);
    // The prediction term compares targets with detached bases (nnssl), or with the EMA
    // teacher's bases (the original VoCo).
    let reference = match teacher_bases {
        Some(t) => normalize_rows(t.reshape([images, per_image, width])).slice([
            0..images,
            0..bases,
            0..width,
        ]),
        None => base_z.clone().detach(),
    };
    let similarity = relu(target_z.matmul(reference.swap_dims(1, 2))); // [N, T, K]
    let y = tensor::<B, 3>(labels, [images, targets, bases], device);
    let positive_weight: f32 = labels.iter().sum();
    let l_pos = (y.clone()
        * ((y.clone() - similarity.clone())
            .abs()
            .neg()
            .add_scalar(1.0 + 1e-6))
        .log()
        .neg())
    .sum()
    .div_scalar(positive_weight.max(1e-6));
    let zeros: Vec<f32> = labels
        .iter()
        .map(|&v| if v == 0.0 { 1.0 } else { 0.0 })
        .collect();
    let zero_count: f32 = zeros.iter().sum();
    let l_neg = (similarity.clone().square()
        * tensor::<B, 3>(&zeros, [images, targets, bases], device))
    .sum()
    .div_scalar(zero_count.max(1.0));
    let base_similarity = relu(base_z.clone().matmul(base_z.swap_dims(1, 2))); // [N, K, K]
    let upper: Vec<f32> = (0..bases * bases)
        .map(|i| if i % bases > i / bases { 1.0 } else { 0.0 })
        .collect();
    let pairs = (bases * (bases - 1) / 2).max(1) as f32;
    let l_reg = (base_similarity * tensor::<B, 3>(&upper, [1, bases, bases], device))
        .sum()
        .div_scalar(pairs * images as f32);
    let total = (l_pos.clone() + l_neg.clone()).mul_scalar(config.voco.prediction_weight)
        + l_reg.clone().mul_scalar(config.voco.regularization_weight);
    let figure = want_figure.then(|| {
        let crop_shape = [shape[0], shape[1], shape[2], shape[3], shape[4]];
        let mut panels = Vec::new();
        for k in 0..bases.min(4) {
            panels.push(Panel::new(
                format!("base {k}"),
                middle_slice(&flat_to_array4(crops, crop_shape, k)),
            ));
        }
        for t in 0..targets.min(2) {
            panels.push(Panel::new(
                format!("target {t}"),
                middle_slice(&flat_to_array4(crops, crop_shape, bases + t)),
            ));
        }
        let true_overlap =
            Array2::from_shape_vec((targets, bases), labels[..targets * bases].to_vec())
                .unwrap_or_else(|_| Array2::zeros((targets, bases)));
        let predicted: Vec<f32> = similarity
            .detach()
            .slice([0..1, 0..targets, 0..bases])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let predicted = Array2::from_shape_vec((targets, bases), predicted)
            .unwrap_or_else(|_| Array2::zeros((targets, bases)));
        panels.push(Panel::with_range(
            "true overlap (target × base)",
            true_overlap,
            0.0,
            1.0,
        ));
        panels.push(Panel::with_range("predicted overlap", predicted, 0.0, 1.0));
        panels
    });
    StepLoss {
        total,
        components: vec![
            ("l_pos".into(), l_pos),
            ("l_neg".into(), l_neg),
            ("l_reg".into(), l_reg),
        ],
        figure,
    }
}

fn segmentation_loss<B: Backend>(
    network: &PretrainNetwork<B>,
    groups: &[SegmentationGroup],
    heads: &[HeadSpec],
    want_figure: bool,
    device: &B::Device,
) -> StepLoss<B> {
    // Every sample goes through its dataset's stem; the trunk then runs once on all of them.
    let stemmed: Vec<Tensor<B, 5>> = groups
        .iter()
        .map(|g| {
            network
                .stem(g.dataset)
                .forward(tensor::<B, 5>(&g.images, g.shape, device))
        })
        .collect();
    let features = network
        .decoder
        .as_ref()
        .expect("MultiTalent builds a decoder")
        .features(&network.encoder.forward_stages(Tensor::cat(stemmed, 0)));
    let mut start = 0;
    let mut total: Option<Tensor<B, 1>> = None;
    let mut components = Vec::new();
    let mut figure = want_figure.then(Vec::new);
    for g in groups {
        let n = g.shape[0];
        let [_, c, d, h, w] = features.dims();
        let f = features
            .clone()
            .slice([start..start + n, 0..c, 0..d, 0..h, 0..w]);
        start += n;
        let logits = network.heads[g.head].forward(f);
        let channels = logits.dims()[1];
        let target =
            Tensor::<B, 4, Int>::from_data(TensorData::new(g.target.clone(), [n, d, h, w]), device);
        let one_hot: Tensor<B, 5> = target
            .clone()
            .one_hot(channels)
            .float()
            .permute([0, 4, 1, 2, 3]);
        let ce = (one_hot.clone() * log_softmax(logits.clone(), 1))
            .sum()
            .neg()
            .div_scalar((n * d * h * w) as f32);
        let probabilities = softmax(logits.clone(), 1);
        // Batch Dice over the foreground channels (nnU-Net's smooth 1e-5, background excluded).
        let sum_dims = |t: Tensor<B, 5>| -> Tensor<B, 1> {
            t.swap_dims(0, 1)
                .reshape([channels as i32, -1])
                .sum_dim(1)
                .reshape([channels])
        };
        let intersection = sum_dims(probabilities.clone() * one_hot.clone());
        let denominator = sum_dims(probabilities.clone()) + sum_dims(one_hot);
        let dice = (intersection.mul_scalar(2.0).add_scalar(1e-5)) / denominator.add_scalar(1e-5);
        let foreground_dice = dice.slice([1..channels]).mean();
        let head_loss = ce + foreground_dice.neg().add_scalar(1.0);
        let name = &heads[g.head].name;
        components.push((format!("loss_{name}"), head_loss.clone()));
        // MultiTalent v2 sums the per-sample losses of a batch.
        let weighted = head_loss.mul_scalar(n as f32);
        total = Some(match total {
            Some(t) => t + weighted,
            None => weighted,
        });
        if let Some(panels) = figure.as_mut() {
            let image = flat_to_array4(&g.images, g.shape, 0);
            panels.push(Panel::new(format!("{name}: image"), middle_slice(&image)));
            let truth: Vec<f32> = g.target[..d * h * w].iter().map(|&v| v as f32).collect();
            let truth = Array4::from_shape_vec((1, d, h, w), truth)
                .unwrap_or_else(|_| Array4::zeros((1, d, h, w)));
            panels.push(Panel::with_range(
                format!("{name}: labels"),
                middle_slice(&truth),
                0.0,
                (channels - 1).max(1) as f64,
            ));
            let predicted = logits.detach().argmax(1).float();
            panels.push(Panel::with_range(
                format!("{name}: prediction"),
                middle_slice(&to_array4(predicted, 0)),
                0.0,
                (channels - 1).max(1) as f64,
            ));
        }
    }
    StepLoss {
        total: total.unwrap_or_else(|| Tensor::zeros([1], device)),
        components,
        figure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multitalent_draws_datasets_in_proportion_to_the_root_of_their_size() {
        let p = dataset_probabilities(&[100, 25, 4], -0.5);
        // √100 : √25 : √4 = 10 : 5 : 2.
        assert!((p[0] - 10.0 / 17.0).abs() < 1e-12);
        assert!((p[1] - 5.0 / 17.0).abs() < 1e-12);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[pick(&p, &mut rng)] += 1;
        }
        for i in 0..3 {
            let observed = counts[i] as f64 / 20_000.0;
            assert!(
                (observed - p[i]).abs() < 0.015,
                "{i}: {observed} vs {}",
                p[i]
            );
        }
    }
}
