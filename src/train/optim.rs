//! Optimisers for any burn module: SGD (Nesterov), Adam and AdamW (both with AMSGrad), with
//! PyTorch semantics, weight decay kept off normalisation parameters (nnDetection), and
//! PyTorch's global gradient-norm clipping.
//!
//! Built on burn's optimisers (`Sgd`, `Adam`, `AdamW` through `OptimizerAdaptor`), which match
//! PyTorch's update rules once configured like it: SGD momentum without dampening (burn's
//! default dampening is 0.1, PyTorch's 0), Adam with coupled L2 decay, AdamW with decoupled
//! decay `w ← w·(1 − lr·wd) − lr·update`, AMSGrad on the running maximum of the second moment.
//!
//! **Parameter groups.** Parameters directly inside a normalisation layer (a module type whose
//! name contains `Norm`: instance, group, layer, batch norm) get no weight decay unless
//! `decay_norm` is set. Each group has its own burn optimiser; both see only their own
//! gradients, so a parameter is updated once per step.
//!
//! **Encoder learning rate.** `encoder_lr_factor` multiplies the learning rate of the encoder's
//! (backbone's) parameters, as Deformable DETR trains its backbone at 0.1× (the trainer names
//! them with [`TrainOptimizer::set_encoder_params`]); each group is then stepped twice, once
//! per rate, with disjoint gradients, so every parameter is still updated once.
//!
//! **Frozen parameters** (`require_grad` off, e.g. the encoder during the frozen phase) get no
//! gradient and are left untouched, without momentum or weight-decay updates, as in PyTorch.
//!
//! **Clipping.** `grad_clip_norm = c` scales all gradients by `c / (‖g‖ + 1e-6)` when the
//! global L2 norm `‖g‖` over every trained parameter exceeds `c`
//! (`torch.nn.utils.clip_grad_norm_`); burn's own norm clipping is per tensor, hence not used.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
    SimpleOptimizer,
};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::TrainError;

/// Which optimiser to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with (Nesterov) momentum and L2 weight decay (nnDetection's Retina U-Net).
    #[default]
    Sgd,
    /// Adam with L2 weight decay added to the gradient (PyTorch `Adam`); AMSGrad optional
    /// (nnDetection's Deformable DETR).
    Adam,
    /// AdamW: decoupled weight decay (PyTorch `AdamW`); AMSGrad optional.
    #[serde(rename = "adamw")]
    AdamW,
}

/// Optimiser settings; fields that do not apply to the chosen `kind` are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `sgd`, `adam` or `adamw`.
    pub kind: OptimizerKind,
    /// SGD momentum (nnDetection: 0.9; 0 = plain SGD).
    pub momentum: f64,
    /// SGD Nesterov momentum (nnDetection: true).
    pub nesterov: bool,
    /// Weight decay (nnDetection: 3e-5; L2 for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Also decay normalisation parameters (nnDetection: false).
    pub decay_norm: bool,
    /// Adam β₁, β₂ (PyTorch: 0.9, 0.999).
    pub betas: [f64; 2],
    /// Adam ε (PyTorch: 1e-8; burn's default would be 1e-5).
    pub eps: f64,
    /// AMSGrad variant of Adam/AdamW (the paper's DefDETR: true).
    pub amsgrad: bool,
    /// Clip the global gradient L2 norm to this value (nnDetection: none; Deformable DETR: 0.1).
    pub grad_clip_norm: Option<f64>,
    /// Learning-rate multiplier of the encoder (backbone) parameters (1 = the same rate;
    /// Deformable DETR: 0.1).
    pub encoder_lr_factor: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 3e-5,
            decay_norm: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
            amsgrad: false,
            grad_clip_norm: None,
            encoder_lr_factor: 1.0,
        }
    }
}

impl OptimizerConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), TrainError> {
        let field = |name: &str| format!("optimizer.{name}");
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(TrainError::config(
                field("momentum"),
                format!("{} must lie in [0, 1)", self.momentum),
            ));
        }
        if self.kind == OptimizerKind::Sgd && self.nesterov && self.momentum == 0.0 {
            return Err(TrainError::config(
                field("nesterov"),
                "Nesterov momentum needs momentum > 0",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::config(
                field("weight_decay"),
                format!("{} must be finite and ≥ 0", self.weight_decay),
            ));
        }
        if self
            .betas
            .iter()
            .any(|b| !(b.is_finite() && (0.0..1.0).contains(b)))
        {
            return Err(TrainError::config(
                field("betas"),
                format!("{:?} must both lie in [0, 1)", self.betas),
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TrainError::config(
                field("eps"),
                format!("{} must be positive", self.eps),
            ));
        }
        if !(self.encoder_lr_factor.is_finite() && self.encoder_lr_factor >= 0.0) {
            return Err(TrainError::config(
                field("encoder_lr_factor"),
                format!("{} must be finite and ≥ 0", self.encoder_lr_factor),
            ));
        }
        if let Some(c) = self.grad_clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(TrainError::config(
                field("grad_clip_norm"),
                format!("{c} must be positive"),
            ));
        }
        Ok(())
    }
}

/// The two parameter groups of one optimiser kind.
#[derive(Clone)]
struct Groups<O, M, B>
where
    O: SimpleOptimizer<B::InnerBackend>,
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    decayed: OptimizerAdaptor<O, M, B>,
    plain: OptimizerAdaptor<O, M, B>,
}

type GroupRecord<O, M, B> = <OptimizerAdaptor<O, M, B> as Optimizer<M, B>>::Record;
type StateRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

impl<O, M, B> Groups<O, M, B>
where
    O: SimpleOptimizer<B::InnerBackend>,
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    fn step(&mut self, lr: f64, model: M, decayed: GradientsParams, plain: GradientsParams) -> M {
        let model = self.decayed.step(lr, model, decayed);
        self.plain.step(lr, model, plain)
    }

    fn params_with_state(&self) -> Vec<ParamId> {
        let mut ids: Vec<ParamId> = self.decayed.to_record().into_keys().collect();
        ids.extend(self.plain.to_record().into_keys());
        ids
    }

    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut record = self.decayed.to_record();
        record.extend(self.plain.to_record());
        Recorder::<B>::record(&StateRecorder::default(), record, ()).map_err(|e| e.to_string())
    }

    fn load_bytes(
        self,
        bytes: Vec<u8>,
        decayed_ids: &HashSet<ParamId>,
        device: &B::Device,
    ) -> Result<Self, String> {
        let record: GroupRecord<O, M, B> =
            Recorder::<B>::load(&StateRecorder::default(), bytes, device)
                .map_err(|e| e.to_string())?;
        let (decayed, plain): (GroupRecord<O, M, B>, GroupRecord<O, M, B>) = record
            .into_iter()
            .partition(|(id, _)| decayed_ids.contains(id));
        Ok(Self {
            decayed: self.decayed.load_record(decayed),
            plain: self.plain.load_record(plain),
        })
    }
}

#[derive(Clone)]
enum Kind<B: AutodiffBackend, M: AutodiffModule<B>> {
    Sgd(Groups<Sgd<B::InnerBackend>, M, B>),
    Adam(Groups<Adam, M, B>),
    AdamW(Groups<AdamW, M, B>),
}

/// An optimiser for module `M` built from an [`OptimizerConfig`] (see the module docs).
#[derive(Clone)]
pub struct TrainOptimizer<B: AutodiffBackend, M: AutodiffModule<B>> {
    config: OptimizerConfig,
    kind: Kind<B, M>,
    /// Parameters stepped at `lr × encoder_lr_factor` (the encoder's).
    encoder_params: HashSet<ParamId>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TrainOptimizer<B, M> {
    /// Build the optimiser (its state starts empty; parameters gain state on their first step).
    pub fn new(config: &OptimizerConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let c = config;
        let kind = match c.kind {
            OptimizerKind::Sgd => {
                let make = |decay: f64| {
                    SgdConfig::new()
                        .with_momentum((c.momentum > 0.0).then_some(MomentumConfig {
                            momentum: c.momentum,
                            dampening: 0.0,
                            nesterov: c.nesterov,
                        }))
                        .with_weight_decay(
                            (decay > 0.0).then(|| WeightDecayConfig::new(decay as f32)),
                        )
                        .init::<B, M>()
                };
                Kind::Sgd(Groups {
                    decayed: make(c.weight_decay),
                    plain: make(0.0),
                })
            }
            OptimizerKind::Adam => {
                let make = |decay: f64| {
                    AdamConfig::new()
                        .with_beta_1(c.betas[0] as f32)
                        .with_beta_2(c.betas[1] as f32)
                        .with_epsilon(c.eps as f32)
                        .with_amsgrad(c.amsgrad)
                        .with_weight_decay(
                            (decay > 0.0).then(|| WeightDecayConfig::new(decay as f32)),
                        )
                        .init::<B, M>()
                };
                Kind::Adam(Groups {
                    decayed: make(c.weight_decay),
                    plain: make(0.0),
                })
            }
            OptimizerKind::AdamW => {
                let make = |decay: f64| {
                    AdamWConfig::new()
                        .with_beta_1(c.betas[0] as f32)
                        .with_beta_2(c.betas[1] as f32)
                        .with_epsilon(c.eps as f32)
                        .with_amsgrad(c.amsgrad)
                        .with_weight_decay(decay as f32)
                        .init::<B, M>()
                };
                Kind::AdamW(Groups {
                    decayed: make(c.weight_decay),
                    plain: make(0.0),
                })
            }
        };
        Ok(Self {
            config: config.clone(),
            kind,
            encoder_params: HashSet::new(),
        })
    }

    /// Name the encoder's parameters: they are stepped at `lr × encoder_lr_factor`.
    pub fn set_encoder_params(&mut self, ids: impl IntoIterator<Item = ParamId>) {
        self.encoder_params = ids.into_iter().collect();
    }

    /// The settings this optimiser was built from.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// One update of `model` with learning rate `lr` from the gradients of a backward pass;
    /// returns the updated model and the global gradient norm before clipping (only computed
    /// when clipping is on).
    pub fn step(&mut self, lr: f64, model: M, mut grads: B::Gradients) -> (M, Option<f64>) {
        let groups = parameter_groups::<B, M>(&model, self.config.decay_norm);
        let mut decayed = GradientsParams::from_params(&mut grads, &model, &groups.decayed);
        let mut plain = GradientsParams::from_params(&mut grads, &model, &groups.plain);
        let norm = self.config.grad_clip_norm.map(|max_norm| {
            let norm = global_grad_norm::<B, M>(&model, &[&decayed, &plain]);
            let coefficient = max_norm / (norm + 1e-6);
            if coefficient < 1.0 {
                scale_grads::<B, M>(&model, &mut decayed, coefficient);
                scale_grads::<B, M>(&model, &mut plain, coefficient);
            }
            norm
        });
        let factor = self.config.encoder_lr_factor;
        let split = factor != 1.0 && !self.encoder_params.is_empty();
        let (encoder_decayed, encoder_plain) = if split {
            (
                take_grads::<B, M>(&model, &mut decayed, &self.encoder_params),
                take_grads::<B, M>(&model, &mut plain, &self.encoder_params),
            )
        } else {
            (GradientsParams::new(), GradientsParams::new())
        };
        let mut model = match &mut self.kind {
            Kind::Sgd(g) => g.step(lr, model, decayed, plain),
            Kind::Adam(g) => g.step(lr, model, decayed, plain),
            Kind::AdamW(g) => g.step(lr, model, decayed, plain),
        };
        if split {
            let encoder_lr = lr * factor;
            model = match &mut self.kind {
                Kind::Sgd(g) => g.step(encoder_lr, model, encoder_decayed, encoder_plain),
                Kind::Adam(g) => g.step(encoder_lr, model, encoder_decayed, encoder_plain),
                Kind::AdamW(g) => g.step(encoder_lr, model, encoder_decayed, encoder_plain),
            };
        }
        (model, norm)
    }

    /// Ids of the parameters that have optimiser state (momentum, Adam moments): those updated
    /// at least once. A parameter frozen since the start has none.
    pub fn params_with_state(&self) -> Vec<ParamId> {
        match &self.kind {
            Kind::Sgd(g) => g.params_with_state(),
            Kind::Adam(g) => g.params_with_state(),
            Kind::AdamW(g) => g.params_with_state(),
        }
    }

    /// The optimiser state (momentum buffers, Adam moments) as bytes (named MessagePack, full
    /// precision), keyed by parameter id.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        match &self.kind {
            Kind::Sgd(g) => g.to_bytes(),
            Kind::Adam(g) => g.to_bytes(),
            Kind::AdamW(g) => g.to_bytes(),
        }
        .map_err(|e| TrainError::checkpoint("optimizer state", format!("cannot encode: {e}")))
    }

    /// Restore a state saved by [`TrainOptimizer::to_bytes`] for `model` (whose parameter ids
    /// must be those of the saved run, as after loading its weights).
    pub fn load_bytes(
        self,
        bytes: Vec<u8>,
        model: &M,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let groups = parameter_groups::<B, M>(model, self.config.decay_norm);
        let decayed: HashSet<ParamId> = groups.decayed.into_iter().collect();
        let error = |e: String| {
            TrainError::checkpoint(
                "optimizer state",
                format!("not an optimizer state of this kind: {e}"),
            )
        };
        let kind = match self.kind {
            Kind::Sgd(g) => Kind::Sgd(g.load_bytes(bytes, &decayed, device).map_err(error)?),
            Kind::Adam(g) => Kind::Adam(g.load_bytes(bytes, &decayed, device).map_err(error)?),
            Kind::AdamW(g) => Kind::AdamW(g.load_bytes(bytes, &decayed, device).map_err(error)?),
        };
        Ok(Self {
            config: self.config,
            kind,
            encoder_params: self.encoder_params,
        })
    }
}

/// Parameter ids with and without weight decay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParameterGroups {
    /// Parameters that get weight decay.
    pub decayed: Vec<ParamId>,
    /// Parameters without weight decay (normalisation layers unless `decay_norm`).
    pub plain: Vec<ParamId>,
}

struct GroupCollector {
    containers: Vec<String>,
    decay_norm: bool,
    groups: ParameterGroups,
}

impl<B: Backend> ModuleVisitor<B> for GroupCollector {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // The innermost container is the struct that owns the parameter field.
        let in_norm = self
            .containers
            .last()
            .is_some_and(|t| t.starts_with("Struct:") && t.contains("Norm"));
        if in_norm && !self.decay_norm {
            self.groups.plain.push(param.id);
        } else {
            self.groups.decayed.push(param.id);
        }
    }
}

/// Split `model`'s parameters into the weight-decay and no-decay groups.
pub fn parameter_groups<B: Backend, M: burn::module::Module<B>>(
    model: &M,
    decay_norm: bool,
) -> ParameterGroups {
    let mut collector = GroupCollector {
        containers: Vec::new(),
        decay_norm,
        groups: ParameterGroups::default(),
    };
    model.visit(&mut collector);
    collector.groups
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a [&'a GradientsParams],
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        for grads in self.grads {
            if let Some(g) = grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
}

/// Global L2 norm of all gradients in `grads` (one host synchronisation).
fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &[&GradientsParams],
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    model.visit(&mut visitor);
    visitor
        .sum
        .map(|s| {
            s.into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .ok()
                .and_then(|v| v.first().copied())
                .unwrap_or(f64::NAN)
                .sqrt()
        })
        .unwrap_or(0.0)
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

struct Take<'a> {
    from: &'a mut GradientsParams,
    into: GradientsParams,
    ids: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id)
            && let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id)
        {
            self.into.register(param.id, g);
        }
    }
}

/// Move the gradients of `ids` out of `grads` into a new set.
fn take_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    let mut take = Take {
        from: grads,
        into: GradientsParams::new(),
        ids,
    };
    model.visit(&mut take);
    take.into
}

fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    model.visit(&mut Scale { grads, factor });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, tensor_values, test_device};
    use burn::module::Module;

    type B = TestBackend;

    /// Two scalar parameters; the loss is `Σ c · w` (constant gradient `c`) plus, for `u`,
    /// `u²/2` (gradient `u`), so hand-computed updates are easy.
    #[derive(Module, Debug)]
    struct Tiny<B: Backend> {
        w: Param<Tensor<B, 1>>,
        u: Param<Tensor<B, 1>>,
    }

    impl Tiny<B> {
        fn new(w: f32, u: f32) -> Self {
            let device = test_device();
            Tiny {
                w: Param::from_tensor(Tensor::from_floats([w], &device)),
                u: Param::from_tensor(Tensor::from_floats([u], &device)),
            }
        }

        fn grads(&self, c: f32) -> <B as AutodiffBackend>::Gradients {
            let loss = self.w.val().mul_scalar(c) + self.u.val().square().mul_scalar(0.5);
            loss.sum().backward()
        }

        fn values(&self) -> (f64, f64) {
            (
                tensor_values(self.w.val())[0],
                tensor_values(self.u.val())[0],
            )
        }
    }

    #[test]
    fn sgd_nesterov_with_weight_decay_matches_the_pytorch_update() {
        let cfg = OptimizerConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        let mut model = Tiny::new(1.0, 2.0);
        let (lr, m, wd) = (0.5, 0.9, 0.1);
        // PyTorch SGD(nesterov, dampening 0): g += wd·w; v = m·v + g (v = g at step 1);
        // w -= lr·(g + m·v).
        let (mut w, mut v) = (1.0f64, 0.0f64);
        let (mut u, mut vu) = (2.0f64, 0.0f64);
        for step in 0..3 {
            let c = [3.0, -1.0, 0.5][step];
            let grads = model.grads(c as f32);
            model = opt.step(lr, model, grads).0;
            let g = c + wd * w;
            v = if step == 0 { g } else { m * v + g };
            w -= lr * (g + m * v);
            let gu = u + wd * u;
            vu = if step == 0 { gu } else { m * vu + gu };
            u -= lr * (gu + m * vu);
            let (aw, au) = model.values();
            assert!(
                (aw - w).abs() < 1e-5 * w.abs().max(1.0),
                "step {step}: w {aw} vs {w}"
            );
            assert!(
                (au - u).abs() < 1e-5 * u.abs().max(1.0),
                "step {step}: u {au} vs {u}"
            );
        }
    }

    #[test]
    fn adam_amsgrad_matches_the_pytorch_update() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            amsgrad: true,
            ..Default::default()
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        let mut model = Tiny::new(0.0, 0.0);
        let (lr, b1, b2, eps) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64);
        let (mut w, mut m1, mut m2, mut vmax) = (0.0f64, 0.0, 0.0, 0.0f64);
        // A large gradient then small ones: AMSGrad keeps the larger second moment.
        for (t, c) in [2.0f64, 0.1, 0.1, 0.1].into_iter().enumerate() {
            let t = t as i32 + 1;
            model = opt.step(lr, model.clone(), model.grads(c as f32)).0;
            m1 = b1 * m1 + (1.0 - b1) * c;
            m2 = b2 * m2 + (1.0 - b2) * c * c;
            vmax = vmax.max(m2);
            let denom = vmax.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            w -= lr / (1.0 - b1.powi(t)) * m1 / denom;
            let (aw, _) = model.values();
            assert!((aw - w).abs() < 1e-5, "step {t}: {aw} vs {w}");
        }
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let cfg = OptimizerConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            grad_clip_norm: Some(1.0),
            ..Default::default()
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        // Gradients (3, 4): norm 5 → scaled by 1/5 (+1e-6) → update (0.6, 0.8).
        let model = Tiny::new(0.0, 4.0);
        let (model, norm) = opt.step(1.0, model.clone(), model.grads(3.0));
        assert!((norm.unwrap() - 5.0).abs() < 1e-5);
        let (w, u) = model.values();
        assert!((w + 0.6).abs() < 1e-5 && (u - 3.2).abs() < 1e-5, "{w} {u}");
        // Below the threshold nothing changes: gradients (0.3, 0.4).
        let model = Tiny::new(0.0, 0.4);
        let (model, _) = opt.step(1.0, model.clone(), model.grads(0.3));
        let (w, u) = model.values();
        assert!((w + 0.3).abs() < 1e-6 && u.abs() < 1e-6, "{w} {u}");
    }

    #[test]
    fn the_encoder_parameters_step_at_the_scaled_rate_after_global_clipping() {
        let cfg = OptimizerConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            grad_clip_norm: Some(1.0),
            encoder_lr_factor: 0.1,
            ..Default::default()
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        let model = Tiny::new(0.0, 4.0);
        opt.set_encoder_params([model.w.id]);
        // Gradients (3, 4), norm 5 → clipped to (0.6, 0.8); w (the "encoder") moves at 0.1×.
        let (model, _) = opt.step(1.0, model.clone(), model.grads(3.0));
        let (w, u) = model.values();
        assert!((w + 0.06).abs() < 1e-6 && (u - 3.2).abs() < 1e-5, "{w} {u}");
        // Adam state: each parameter gained state exactly once.
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adam,
            amsgrad: true,
            ..cfg
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        let model = Tiny::new(0.0, 4.0);
        opt.set_encoder_params([model.w.id]);
        let (model, _) = opt.step(0.5, model.clone(), model.grads(3.0));
        // Adam's first step moves each parameter by lr · sign(g): 0.05 for w, 0.5 for u.
        let (w, u) = model.values();
        assert!((w + 0.05).abs() < 1e-5 && (u - 3.5).abs() < 1e-5, "{w} {u}");
        assert_eq!(opt.params_with_state().len(), 2);
    }

    #[test]
    fn norm_parameters_get_no_weight_decay_by_default() {
        let device = test_device();
        let model = crate::nn::RetinaUNetConfig::tiny(1, 1)
            .init::<B>(&device)
            .unwrap();
        let params = crate::nn::inspect::parameters(&model);
        let groups = parameter_groups::<B, _>(&model, false);
        assert_eq!(groups.decayed.len() + groups.plain.len(), params.len());
        let norm_ids: Vec<ParamId> = params
            .iter()
            .filter(|p| p.path.contains("norm."))
            .map(|p| p.id)
            .collect();
        assert!(!norm_ids.is_empty());
        assert_eq!(groups.plain, norm_ids);
        let all = parameter_groups::<B, _>(&model, true);
        assert!(all.plain.is_empty() && all.decayed.len() == params.len());
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::AdamW,
            weight_decay: 0.01,
            amsgrad: true,
            ..Default::default()
        };
        let mut opt = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap();
        let mut model = Tiny::new(1.0, 1.0);
        model = opt.step(0.1, model.clone(), model.grads(1.0)).0;
        let bytes = opt.to_bytes().unwrap();
        let restored = TrainOptimizer::<B, Tiny<B>>::new(&cfg)
            .unwrap()
            .load_bytes(bytes, &model, &test_device())
            .unwrap();
        let (mut a, mut b) = (opt, restored);
        let next_a = a.step(0.1, model.clone(), model.grads(-2.0)).0;
        let next_b = b.step(0.1, model.clone(), model.grads(-2.0)).0;
        assert_eq!(next_a.values(), next_b.values());
        let err = TrainOptimizer::<B, Tiny<B>>::new(&cfg).unwrap().load_bytes(
            vec![1, 2, 3],
            &model,
            &test_device(),
        );
        assert!(err.is_err());
    }

    #[test]
    fn invalid_settings_are_refused() {
        for (cfg, field) in [
            (
                OptimizerConfig {
                    momentum: 1.0,
                    ..Default::default()
                },
                "momentum",
            ),
            (
                OptimizerConfig {
                    momentum: 0.0,
                    ..Default::default()
                },
                "nesterov",
            ),
            (
                OptimizerConfig {
                    betas: [0.9, 1.0],
                    ..Default::default()
                },
                "betas",
            ),
            (
                OptimizerConfig {
                    eps: 0.0,
                    ..Default::default()
                },
                "eps",
            ),
            (
                OptimizerConfig {
                    grad_clip_norm: Some(-1.0),
                    ..Default::default()
                },
                "grad_clip_norm",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("optimizer.{field}")), "{err}");
        }
    }
}
