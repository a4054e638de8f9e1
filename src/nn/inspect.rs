//! Walking a module's parameters by name: listings, summaries, freezing and parameter groups.
//!
//! Names are dotted paths of struct fields and vector indices, e.g.
//! `encoder.stages.1.blocks.0.conv1.conv.weight` — the same names the named-MessagePack
//! weights files use.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// One parameter tensor of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Dotted path, e.g. `encoder.stem.convs.0.conv.weight`.
    pub path: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// burn's parameter id (what optimisers and `GradientsParams` key on).
    pub id: ParamId,
}

impl ParamInfo {
    /// Number of scalars in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Collector {
    stack: Vec<String>,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(ParamInfo {
            path: self.stack.join("."),
            shape: param.lazy_shape().to_vec(),
            id: param.id,
        });
    }
}

/// Every float parameter of `module` with its path, shape and id, in visiting order.
///
/// Does not trigger lazy initialisation of the weights.
pub fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut collector = Collector {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut collector);
    collector.out
}

/// Ids of the parameters whose path starts with one of `prefixes` (`"encoder.stem"` matches
/// `encoder.stem.…` but not `encoder.stemx`); use with `GradientsParams::from_params`.
pub fn param_ids_with_prefix<B: Backend, M: Module<B>>(
    module: &M,
    prefixes: &[&str],
) -> Vec<ParamId> {
    parameters(module)
        .into_iter()
        .filter(|p| prefixes.iter().any(|pre| path_has_prefix(&p.path, pre)))
        .map(|p| p.id)
        .collect()
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'.'))
}

struct Materializer;

impl<B: Backend> ModuleVisitor<B> for Materializer {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Run the lazy initialisation of every parameter now.
///
/// burn initialises parameters on first use, and each *clone* of a never-used module draws
/// its own random values; materialising first makes clones, `valid()` copies and saved
/// weights agree with the module. The network constructors of `nn` call this.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materializer);
}

struct RequireGrad {
    trainable: bool,
}

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.trainable)
    }
}

/// Mark every parameter of `module` as trainable (`true`) or frozen (`false`).
///
/// A frozen parameter gets no gradient, so optimisers leave it unchanged, and backward does
/// not traverse a frozen sub-network whose input needs no gradient either. Unlike
/// `Module::no_grad` this also unfreezes.
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, trainable: bool) -> M {
    module.map(&mut RequireGrad { trainable })
}

/// A multi-line table of a module: one line per parameter (path, shape, count) and totals
/// per top-level submodule.
pub fn summary<B: Backend, M: Module<B>>(title: &str, module: &M) -> String {
    let params = parameters(module);
    let total: usize = params.iter().map(ParamInfo::numel).sum();
    let width = params
        .iter()
        .map(|p| p.path.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = format!(
        "{title}: {} parameters in {} tensors\n",
        group_digits(total),
        params.len()
    );
    let mut groups: Vec<(String, usize)> = Vec::new();
    for p in &params {
        let top = p.path.split('.').next().unwrap_or("").to_string();
        match groups.last_mut() {
            Some((name, count)) if *name == top => *count += p.numel(),
            _ => groups.push((top, p.numel())),
        }
    }
    out.push_str("submodules:\n");
    for (name, count) in &groups {
        out.push_str(&format!("  {name:<width$}  {:>14}\n", group_digits(*count)));
    }
    out.push_str("parameters:\n");
    for p in &params {
        let shape = format!("{:?}", p.shape);
        out.push_str(&format!(
            "  {:<width$}  {shape:<22} {:>12}\n",
            p.path,
            group_digits(p.numel())
        ));
    }
    out
}

/// `1234567` → `"1,234,567"`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::blocks::{BasicBlockDConfig, ConvNormActConfig, WeightInit};
    use crate::nn::testing::{TestBackend, test_device};

    #[test]
    fn parameters_are_listed_with_dotted_paths() {
        let device = test_device();
        let block = BasicBlockDConfig {
            channels: [2, 4],
            kernel_size: [3, 3, 3],
            stride: [2, 2, 2],
            conv_bias: true,
            activation: Default::default(),
            init: WeightInit::KaimingNormal,
            zero_init_residual: false,
        }
        .init::<TestBackend>(&device);
        let paths: Vec<String> = parameters(&block).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "conv1.conv.weight",
                "conv1.conv.bias",
                "conv1.norm.weight",
                "conv1.norm.bias",
                "conv2.conv.weight",
                "conv2.conv.bias",
                "conv2.norm.weight",
                "conv2.norm.bias",
                "skip.conv.weight",
                "skip.norm.weight",
                "skip.norm.bias",
            ]
        );
        let ids = param_ids_with_prefix(&block, &["conv2", "skip.norm"]);
        assert_eq!(ids.len(), 6);
        assert!(param_ids_with_prefix(&block, &["conv"]).is_empty());
    }

    #[test]
    fn set_trainable_freezes_and_unfreezes() {
        let device = test_device();
        let unit = ConvNormActConfig::new(1, 2).init::<TestBackend>(&device);
        assert!(unit.conv.weight.val().is_require_grad());
        let frozen = set_trainable(unit, false);
        assert!(!frozen.conv.weight.val().is_require_grad());
        assert!(!frozen.norm.bias.val().is_require_grad());
        let thawed = set_trainable(frozen, true);
        assert!(thawed.conv.weight.val().is_require_grad());
    }

    #[test]
    fn summary_lists_totals_and_digits_are_grouped() {
        assert_eq!(group_digits(90296576), "90,296,576");
        assert_eq!(group_digits(960), "960");
        let device = test_device();
        let unit = ConvNormActConfig::new(1, 32).init::<TestBackend>(&device);
        let s = summary("stem", &unit);
        assert!(s.starts_with("stem: 960 parameters in 4 tensors"), "{s}");
        assert!(
            s.contains("conv.weight") && s.contains("[32, 1, 3, 3, 3]"),
            "{s}"
        );
    }
}

struct FlatCollector<B: Backend> {
    out: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for FlatCollector<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(param.val().reshape([-1]));
    }
}

struct Blend<B: Backend> {
    student: std::vec::IntoIter<Tensor<B, 1>>,
    momentum: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(student) = self.student.next() else {
            return param;
        };
        param.map(|teacher| {
            let shape = teacher.shape();
            teacher.mul_scalar(self.momentum)
                + student.reshape(shape).mul_scalar(1.0 - self.momentum)
        })
    }
}

/// An exponential moving average of two modules of the same architecture:
/// `teacher ← momentum · teacher + (1 − momentum) · student`, parameter by parameter in
/// visiting order (VoCo's EMA teacher).
pub fn exponential_moving_average<B: Backend, M: Module<B>>(
    teacher: M,
    student: &M,
    momentum: f64,
) -> M {
    let mut collector = FlatCollector { out: Vec::new() };
    student.visit(&mut collector);
    teacher.map(&mut Blend {
        student: collector.out.into_iter(),
        momentum,
    })
}
