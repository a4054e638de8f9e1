//! Deformable DETR in 3D (the paper's second detector): multi-scale features of the encoder's
//! last stages, projected to `d_model` tokens with a 3D sine positional encoding and a learned
//! level embedding, a deformable transformer encoder and decoder, and per-layer class and box
//! heads; trained with Hungarian matching and focal, L1 and GIoU-3D losses (auxiliary on every
//! decoder layer).
//!
//! Boxes are predicted as normalised `(cz, cy, cx, d, h, w)` in `[0, 1]` relative to the patch
//! and converted to voxel corners `[d0, h0, w0, d1, h1, w1]` for the GIoU and for prediction.
//! Prediction keeps the top (query, class) scores per patch without NMS; whole volumes go
//! through the same sliding windows and WBC as Retina U-Net (`crate::infer`).

pub mod attention;
pub mod config;
pub mod fused;
pub mod losses;
pub mod matcher;
pub mod sampling;
pub mod transformer;

use burn::module::{Module, Param};
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData, activation};
use rand::RngCore;

use self::attention::DeformableAttentionConfig;
pub use self::config::{DefDetrConfig, DefDetrInferenceConfig};
use self::losses::{SetTargets, normalized_to_corners, patch_scale, set_loss};
use self::transformer::{
    DecoderLayer, EncoderLayer, LayerConfig, host_tokens, inverse_sigmoid, sine_position_encoding,
    token_centres, xavier_linear,
};
use super::detector::{DetectionBatch, DetectionLoss, Detector, PatchDetections};
use super::encoder::{Encoder, EncoderConfig};
use super::{NnError, inspect};

/// A level's input projection: a 1³ convolution (a linear map of the channels) + GroupNorm.
#[derive(Module, Debug)]
pub struct InputProjection<B: Backend> {
    /// The 1³ convolution as a linear layer on channel-last tokens.
    pub projection: Linear<B>,
    /// GroupNorm over `d_model` channels.
    pub norm: GroupNorm<B>,
}

/// A small MLP (linear, ReLU, …, linear): the box head.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// The layers; ReLU between them.
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// # Shapes
    /// - x: `[N, Q, d]`; output `[N, Q, out]`
    pub fn forward(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = activation::relu(x);
            }
        }
        x
    }
}

/// Outputs of every decoder layer (the last one is the prediction).
#[derive(Clone, Debug)]
pub struct DefDetrOutput<B: Backend> {
    /// Class logits `[N, Q, K]` per decoder layer.
    pub logits: Vec<Tensor<B, 3>>,
    /// Normalised boxes `[N, Q, 6]` `(cz, cy, cx, d, h, w)` per decoder layer.
    pub boxes: Vec<Tensor<B, 3>>,
    /// Two-stage only: the encoder's proposals, logits `[N, Lv, K]` and boxes `[N, Lv, 6]`.
    pub proposals: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
}

/// The two-stage parts: per-token proposals and the queries made from the top ones.
#[derive(Module, Debug)]
pub struct TwoStage<B: Backend> {
    /// Memory → proposal features (Deformable DETR's `enc_output`), then LayerNorm.
    pub projection: Linear<B>,
    /// LayerNorm of the proposal features.
    pub norm: LayerNorm<B>,
    /// Proposal class head.
    pub class_head: Linear<B>,
    /// Proposal box head: a delta on the token-sized anchor in inverse-sigmoid space.
    pub box_head: Mlp<B>,
    /// Proposal box → query position and content (`2 · d_model`), then LayerNorm.
    pub query: Linear<B>,
    /// LayerNorm of the queries made from proposals.
    pub query_norm: LayerNorm<B>,
}

/// The token-sized anchors of every level: centre of the token and its extent per axis,
/// normalised, `[Σ D·H·W, 6]` row-major.
pub fn token_anchors(shapes: &[[usize; 3]]) -> Vec<f32> {
    let centres = token_centres(shapes);
    let mut out = Vec::with_capacity(centres.len() * 2);
    let mut token = 0;
    for shape in shapes {
        for _ in 0..shape.iter().product::<usize>() {
            out.extend_from_slice(&centres[token * 3..token * 3 + 3]);
            out.extend(shape.iter().map(|&n| 1.0 / n as f32));
            token += 1;
        }
    }
    out
}

/// A class head whose every output starts at probability 0.01 (the focal-loss prior of Lin
/// et al.).
fn class_head<B: Backend>(d: usize, classes: usize, device: &B::Device) -> Linear<B> {
    let prior_bias = -((1.0f64 - 0.01) / 0.01).ln() as f32;
    let mut head = xavier_linear(d, classes, device);
    head.bias = Some(Param::from_tensor(
        Tensor::<B, 1>::ones([classes], device).mul_scalar(prior_bias),
    ));
    head
}

/// A 3-layer box MLP whose last layer starts at zero, with bias `last_bias`.
fn box_head<B: Backend>(d: usize, last_bias: [f32; 6], device: &B::Device) -> Mlp<B> {
    let mut layers = vec![
        xavier_linear(d, d, device),
        xavier_linear(d, d, device),
        xavier_linear(d, 6, device),
    ];
    let last = &mut layers[2];
    last.weight = Param::from_tensor(Tensor::zeros([d, 6], device));
    last.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(last_bias.to_vec(), [6]),
        device,
    )));
    Mlp { layers }
}

/// The 3D Deformable DETR detector.
#[derive(Module, Debug)]
pub struct DefDetr<B: Backend> {
    /// The encoder (stem + stages); freeze or transfer it through this field.
    pub encoder: Encoder<B>,
    /// Input projection of every feature level.
    pub input_projections: Vec<InputProjection<B>>,
    /// Learned level embedding `[levels, d_model]`.
    pub level_embedding: Param<Tensor<B, 2>>,
    /// Transformer encoder layers.
    pub encoder_layers: Vec<EncoderLayer<B>>,
    /// Transformer decoder layers.
    pub decoder_layers: Vec<DecoderLayer<B>>,
    /// Learned queries `[queries, 2 · d_model]`: positional half, content half.
    pub query_embedding: Param<Tensor<B, 2>>,
    /// Query position → initial reference point.
    pub reference_points: Linear<B>,
    /// Class heads: one per decoder layer with box refinement, else one shared.
    pub class_heads: Vec<Linear<B>>,
    /// Box heads (3-layer MLPs), like the class heads.
    pub box_heads: Vec<Mlp<B>>,
    /// The two-stage parts (`two_stage` only).
    pub two_stage: Option<TwoStage<B>>,
    /// The configuration the network was built from.
    pub config: DefDetrConfig,
}

impl<B: Backend> DefDetr<B> {
    pub(crate) fn new(config: DefDetrConfig, device: &B::Device) -> Result<Self, NnError> {
        let encoder = config.encoder.init(device)?;
        let d = config.d_model;
        let widths = config.encoder.widths();
        let input_projections = config
            .level_stages()
            .iter()
            .map(|&s| InputProjection {
                projection: xavier_linear(widths[s], d, device),
                norm: GroupNormConfig::new(config.effective_norm_groups(), d).init(device),
            })
            .collect();
        let layer = LayerConfig {
            attention: DeformableAttentionConfig {
                d_model: d,
                heads: config.heads,
                levels: config.levels,
                points: config.points,
            },
            ffn_channels: config.ffn_channels,
            dropout: config.dropout,
        };
        let heads = if config.box_refinement {
            config.decoder_layers
        } else {
            1
        };
        let class_heads = (0..heads)
            .map(|_| class_head(d, config.num_classes, device))
            .collect();
        // The last layer starts at zero: boxes start at the reference point, with extents
        // sigmoid(−2) ≈ 0.12 of the patch (or, seeded by proposals, at the proposal's).
        let extent = if config.two_stage { 0.0 } else { -2.0 };
        let box_heads = (0..heads)
            .map(|_| box_head(d, [0.0, 0.0, 0.0, extent, extent, extent], device))
            .collect();
        let two_stage = config.two_stage.then(|| TwoStage {
            projection: xavier_linear(d, d, device),
            norm: LayerNormConfig::new(d).init(device),
            class_head: class_head(d, config.num_classes, device),
            // Proposals start as their anchors.
            box_head: box_head(d, [0.0; 6], device),
            query: xavier_linear(6, 2 * d, device),
            query_norm: LayerNormConfig::new(2 * d).init(device),
        });
        let model = DefDetr {
            encoder,
            input_projections,
            level_embedding: Param::from_tensor(Tensor::random(
                [config.levels, d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            encoder_layers: (0..config.encoder_layers)
                .map(|_| layer.init_encoder(device))
                .collect(),
            decoder_layers: (0..config.decoder_layers)
                .map(|_| layer.init_decoder(device))
                .collect(),
            query_embedding: Param::from_tensor(Tensor::random(
                [config.queries, 2 * d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            reference_points: xavier_linear(d, 3, device),
            class_heads,
            box_heads,
            two_stage,
            config,
        };
        inspect::materialize(&model);
        Ok(model)
    }

    /// Feature-level sizes `[D, H, W]` for a patch.
    pub fn level_shapes(&self, patch: [usize; 3]) -> Vec<[usize; 3]> {
        let strides = self.encoder.cumulative_strides();
        self.config
            .level_stages()
            .iter()
            .map(|&s| std::array::from_fn(|a| patch[a] / strides[s][a]))
            .collect()
    }

    /// Run the network.
    ///
    /// # Shapes
    /// - images: `[N, C_in, D, H, W]`, sizes divisible by the encoder's total stride
    /// - per decoder layer: logits `[N, Q, K]`, boxes `[N, Q, 6]`
    pub fn forward(&self, images: Tensor<B, 5>) -> Result<DefDetrOutput<B>, NnError> {
        self.encoder.check_input(images.dims())?;
        let [n, _, pd, ph, pw] = images.dims();
        let device = images.device();
        let d = self.config.d_model;
        let levels = self.config.levels;
        let shapes = self.level_shapes([pd, ph, pw]);
        let features = self.encoder.forward(images);
        let mut tokens = Vec::with_capacity(levels);
        let mut positions = Vec::with_capacity(levels);
        for (l, &stage) in self.config.level_stages().iter().enumerate() {
            let f = features[stage].clone();
            let [_, c, fd, fh, fw] = f.dims();
            let s = fd * fh * fw;
            let projection = &self.input_projections[l];
            let t = projection
                .projection
                .forward(f.reshape([n, c, s]).swap_dims(1, 2));
            let t = projection.norm.forward(t.swap_dims(1, 2)).swap_dims(1, 2);
            tokens.push(t);
            let embedding = self
                .level_embedding
                .val()
                .slice([l..l + 1, 0..d])
                .reshape([1, 1, d]);
            positions.push(
                host_tokens::<B>(sine_position_encoding(shapes[l], d), s, d, &device) + embedding,
            );
        }
        let mut memory = Tensor::cat(tokens, 1);
        let lv = memory.dims()[1];
        let position = Tensor::cat(positions, 1).repeat_dim(0, n);
        let centres =
            Tensor::<B, 3>::from_data(TensorData::new(token_centres(&shapes), [1, lv, 3]), &device);
        let encoder_reference = centres
            .reshape([1, lv, 1, 3])
            .repeat_dim(2, levels)
            .repeat_dim(0, n);
        for layer in &self.encoder_layers {
            memory = layer.forward(memory, position.clone(), encoder_reference.clone(), &shapes);
        }

        let mut output = DefDetrOutput {
            logits: Vec::new(),
            boxes: Vec::new(),
            proposals: None,
        };
        let (q, query_position, mut target, mut reference) = match &self.two_stage {
            Some(two) => {
                let (q, position, target, reference, proposals) =
                    self.proposal_queries(two, memory.clone(), &shapes);
                output.proposals = Some(proposals);
                (q, position, target, reference)
            }
            None => {
                let q = self.config.queries;
                let queries = self.query_embedding.val();
                let query_position = queries
                    .clone()
                    .slice([0..q, 0..d])
                    .reshape([1, q, d])
                    .repeat_dim(0, n);
                let target = queries
                    .slice([0..q, d..2 * d])
                    .reshape([1, q, d])
                    .repeat_dim(0, n);
                let reference =
                    activation::sigmoid(self.reference_points.forward(query_position.clone()));
                (q, query_position, target, reference)
            }
        };
        for (k, layer) in self.decoder_layers.iter().enumerate() {
            let width = reference.dims()[2];
            let level_reference = reference
                .clone()
                .reshape([n, q, 1, width])
                .repeat_dim(2, levels);
            target = layer.forward(
                target,
                query_position.clone(),
                level_reference,
                memory.clone(),
                &shapes,
            );
            let head = if self.config.box_refinement { k } else { 0 };
            let logits = self.class_heads[head].forward(target.clone());
            let delta = self.box_heads[head].forward(target.clone());
            let prior = inverse_sigmoid(reference.clone());
            let prior = if width == 3 {
                Tensor::cat(vec![prior, Tensor::zeros([n, q, 3], &device)], 2)
            } else {
                prior
            };
            let boxes = activation::sigmoid(delta + prior);
            if self.config.box_refinement {
                reference = boxes.clone().detach();
            }
            output.logits.push(logits);
            output.boxes.push(boxes);
        }
        Ok(output)
    }

    /// Two-stage: the proposals of every token and the queries seeded by the top ones.
    ///
    /// Returns the query count `q` (`queries`, at most the token count), query position and
    /// content `[N, q, d]`, the (detached) reference boxes `[N, q, 6]` and the proposals'
    /// logits `[N, Lv, K]` and boxes `[N, Lv, 6]`.
    #[allow(clippy::type_complexity)]
    fn proposal_queries(
        &self,
        two: &TwoStage<B>,
        memory: Tensor<B, 3>,
        shapes: &[[usize; 3]],
    ) -> (
        usize,
        Tensor<B, 3>,
        Tensor<B, 3>,
        Tensor<B, 3>,
        (Tensor<B, 3>, Tensor<B, 3>),
    ) {
        let [n, lv, d] = memory.dims();
        let device = memory.device();
        let features = two.norm.forward(two.projection.forward(memory));
        let logits = two.class_head.forward(features.clone());
        let anchors =
            Tensor::<B, 3>::from_data(TensorData::new(token_anchors(shapes), [1, lv, 6]), &device);
        let boxes = activation::sigmoid(
            two.box_head.forward(features) + inverse_sigmoid(anchors).repeat_dim(0, n),
        );
        // The top proposals by their best class score, per image (ties: lower token first).
        let q = self.config.queries.min(lv);
        let scores = host_values(logits.clone().detach().max_dim(2).reshape([n, lv]));
        let mut rows = Vec::with_capacity(n * q);
        for i in 0..n {
            let row = &scores[i * lv..(i + 1) * lv];
            let mut order: Vec<usize> = (0..lv).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            rows.extend(order[..q].iter().map(|&t| (i * lv + t) as i64));
        }
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n * q]), &device);
        let reference = boxes
            .clone()
            .reshape([n * lv, 6])
            .select(0, index)
            .reshape([n, q, 6])
            .detach();
        let embedded = two.query_norm.forward(two.query.forward(reference.clone()));
        let position = embedded.clone().slice([0..n, 0..q, 0..d]);
        let target = embedded.slice([0..n, 0..q, d..2 * d]);
        (q, position, target, reference, (logits, boxes))
    }
}

fn host_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

impl<B: Backend> Detector<B> for DefDetr<B> {
    fn loss(
        &self,
        batch: &DetectionBatch<B>,
        _rng: &mut dyn RngCore,
    ) -> Result<DetectionLoss<B>, NnError> {
        batch.validate(self.config.num_classes)?;
        let [_, _, d, h, w] = batch.images.dims();
        let out = self.forward(batch.images.clone())?;
        let targets = SetTargets::new(&batch.boxes, &batch.classes, [d, h, w]);
        let proposal_loss = match out.proposals {
            Some((logits, boxes)) => {
                let l = set_loss(
                    logits,
                    boxes,
                    &targets,
                    &self.config.matcher,
                    &self.config.loss,
                )?;
                Some(l.cls + l.l1 + l.giou)
            }
            None => None,
        };
        let layers = out.logits.len();
        let mut components: Vec<(String, Tensor<B, 1>)> = Vec::new();
        let mut auxiliary: Option<Tensor<B, 1>> = None;
        let mut matched_iou = f64::NAN;
        for (k, (logits, boxes)) in out.logits.into_iter().zip(out.boxes).enumerate() {
            let last = k + 1 == layers;
            if !last && !self.config.loss.auxiliary {
                continue;
            }
            let l = set_loss(
                logits,
                boxes,
                &targets,
                &self.config.matcher,
                &self.config.loss,
            )?;
            if last {
                matched_iou = l.matched_iou;
                components.push(("cls".into(), l.cls));
                components.push(("l1".into(), l.l1));
                components.push(("giou".into(), l.giou));
            } else {
                let sum = l.cls + l.l1 + l.giou;
                auxiliary = Some(match auxiliary {
                    Some(a) => a + sum,
                    None => sum,
                });
            }
        }
        if let Some(a) = auxiliary {
            components.push(("aux".into(), a));
        }
        if let Some(p) = proposal_loss {
            components.push(("proposals".into(), p));
        }
        let total = components
            .iter()
            .map(|(_, t)| t.clone())
            .reduce(|a, b| a + b)
            .expect("the last layer's terms");
        let statistics = vec![
            ("num_targets".to_string(), targets.normaliser()),
            ("matched_iou".to_string(), matched_iou),
        ];
        Ok(DetectionLoss {
            total,
            components: components
                .into_iter()
                .map(|(name, t)| (name, t.detach()))
                .collect(),
            statistics,
        })
    }

    fn predict(&self, images: Tensor<B, 5>) -> Result<Vec<PatchDetections>, NnError> {
        let [n, _, d, h, w] = images.dims();
        let out = self.forward(images)?;
        let last = out.logits.last().expect("a decoder layer").clone();
        let [_, q, k] = last.dims();
        let logits = host_values(last);
        let boxes = host_values(out.boxes.last().expect("a decoder layer").clone());
        let cfg = &self.config.inference;
        let scale = patch_scale([d, h, w]);
        let size = [d as f64, h as f64, w as f64];
        let mut results = Vec::with_capacity(n);
        for i in 0..n {
            let row = &logits[i * q * k..(i + 1) * q * k];
            let mut order: Vec<usize> = (0..q * k).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            let mut detections = PatchDetections::default();
            for j in order {
                if detections.boxes.len() >= cfg.detections_per_image {
                    break;
                }
                let score = 1.0 / (1.0 + (-(row[j] as f64)).exp());
                if score <= cfg.score_threshold {
                    break;
                }
                let query = j / k;
                let normalised: [f64; 6] =
                    std::array::from_fn(|c| boxes[(i * q + query) * 6 + c] as f64);
                let mut b = normalized_to_corners(&normalised, scale);
                for a in 0..3 {
                    b[a] = b[a].clamp(0.0, size[a]);
                    b[a + 3] = b[a + 3].clamp(0.0, size[a]);
                }
                if (0..3).any(|a| b[a + 3] - b[a] < cfg.min_box_size) {
                    continue;
                }
                detections.boxes.push(b);
                detections.scores.push(score);
                detections.classes.push(j % k);
            }
            results.push(detections);
        }
        Ok(results)
    }

    fn summary(&self) -> String {
        let cfg = &self.config;
        let kind = match cfg.encoder {
            EncoderConfig::Retunet(_) => "retunet",
            EncoderConfig::Resenc(_) => "resenc",
        };
        let strides = self.encoder.cumulative_strides();
        let level_strides: Vec<[usize; 3]> =
            cfg.level_stages().iter().map(|&s| strides[s]).collect();
        let mut out = format!(
            "Deformable DETR: {kind} encoder, widths {:?}, {} input channel(s), {} class(es)\n\
             levels {} (strides {:?}); d_model {}, {} heads, {} points; {} encoder + {} decoder \
             layers, FFN {}; {} queries; box refinement {}; two-stage {}\n",
            self.encoder.widths,
            self.encoder.in_channels,
            cfg.num_classes,
            cfg.levels,
            level_strides,
            cfg.d_model,
            cfg.heads,
            cfg.points,
            cfg.encoder_layers,
            cfg.decoder_layers,
            cfg.ffn_channels,
            cfg.queries,
            cfg.box_refinement,
            cfg.two_stage,
        );
        out.push_str(&inspect::summary("parameters", self));
        out
    }

    fn encoder(&self) -> &Encoder<B> {
        &self.encoder
    }

    fn encoder_mut(&mut self) -> &mut Encoder<B> {
        &mut self.encoder
    }

    fn map_encoder(mut self, f: impl FnOnce(Encoder<B>) -> Encoder<B>) -> Self {
        self.encoder = f(self.encoder);
        self
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
}

#[cfg(test)]
mod tests;
