//! What a PyTorch checkpoint says about its network and data: nnssl's `nnssl_adaptation_plan`,
//! or the nnU-Net plans inside a MultiTalent / nnU-Net trainer's `init_args`, turned into a
//! detlab [`EncoderConfig`]; and the method a trainer's name suggests.
//!
//! Architectures that map exactly onto a detlab encoder:
//! - `ResEncL` (nnssl's preset) → [`ResEncConfig::resenc_l`];
//! - `ResidualEncoderUNet` with `BasicBlockD` blocks, strided-conv downsampling, 3-D convs,
//!   affine InstanceNorm (eps 1e-5), LeakyReLU (slope 0.01) or ReLU, no dropout →
//!   [`EncoderConfig::Resenc`];
//! - `PlainConvUNet` with the same conditions, every stage the same number (≥ 2) of convs and a
//!   first stride of 1 → detlab's plain encoder ([`EncoderConfig::Retunet`]), whose stem is
//!   stage 0's first conv. Per-stage conv counts, pooling instead of strided convs, or
//!   `nonlin_first` have no exact detlab counterpart and are refused.

use serde_json::Value as J;

use super::super::config::Method;
use crate::nn::blocks::{Activation, WeightInit};
use crate::nn::{EncoderConfig, ResEncConfig, RetUNetEncoderConfig};

/// A problem in a plan: the (dotted) key and what is wrong.
#[derive(Debug)]
pub struct PlanError {
    /// Dotted key inside the plan.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn err<T>(key: impl Into<String>, reason: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError {
        key: key.into(),
        reason: reason.into(),
    })
}

/// What a checkpoint's plan gives.
#[derive(Clone, Debug, Default)]
pub struct CheckpointPlan {
    /// The encoder (its input channels are set from the tensors later).
    pub encoder: Option<EncoderConfig>,
    /// Target spacing `[sd, sh, sw]` mm of the pre-training data.
    pub spacing: Option<[f64; 3]>,
    /// Intensity normalisation, in words.
    pub normalization: Option<String>,
    /// Pre-training patch (or the recommended downstream patch).
    pub patch: Option<[usize; 3]>,
    /// Input channels the plan states.
    pub channels: Option<usize>,
    /// Dataset and configuration, in words.
    pub description: String,
}

fn get<'a>(v: &'a J, key: &str, at: &str) -> Result<&'a J, PlanError> {
    v.get(key).ok_or_else(|| PlanError {
        key: format!("{at}{key}"),
        reason: "missing".into(),
    })
}

fn uint(v: &J, key: &str) -> Result<usize, PlanError> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .map(|u| u as usize)
        .ok_or_else(|| PlanError {
            key: key.into(),
            reason: format!("{v} is not a non-negative integer"),
        })
}

fn triple(v: &J, key: &str) -> Result<[usize; 3], PlanError> {
    match v {
        J::Array(a) if a.len() == 3 => {
            Ok([uint(&a[0], key)?, uint(&a[1], key)?, uint(&a[2], key)?])
        }
        J::Array(a) => err(
            key,
            format!("{v} has {} entries; detlab's encoders are 3-D", a.len()),
        ),
        _ => uint(v, key).map(|k| [k; 3]),
    }
}

fn float_triple(v: &J, key: &str) -> Result<[f64; 3], PlanError> {
    match v.as_array() {
        Some(a) if a.len() == 3 && a.iter().all(J::is_number) => Ok([
            a[0].as_f64().expect("number"),
            a[1].as_f64().expect("number"),
            a[2].as_f64().expect("number"),
        ]),
        _ => err(key, format!("{v} is not three numbers")),
    }
}

/// A per-stage setting: a list of `n` entries, or one value for all stages.
fn per_stage<'a>(kw: &'a J, key: &str, n: usize, at: &str) -> Result<Vec<&'a J>, PlanError> {
    let v = get(kw, key, at)?;
    match v.as_array() {
        Some(a) if a.len() == n => Ok(a.iter().collect()),
        Some(a) => err(
            format!("{at}{key}"),
            format!("has {} entries but n_stages is {n}", a.len()),
        ),
        None => Ok(vec![v; n]),
    }
}

/// The last component of a dotted Python name.
fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The detlab encoder for an architecture class and its dynamic-network-architectures kwargs
/// (`at`: the kwargs' dotted key, for errors).
pub fn architecture(class: &str, kwargs: Option<&J>, at: &str) -> Result<EncoderConfig, PlanError> {
    let name = short(class);
    if name == "ResEncL" {
        return Ok(EncoderConfig::Resenc(ResEncConfig::resenc_l(1)));
    }
    let residual = match name {
        "ResidualEncoderUNet" => true,
        "PlainConvUNet" => false,
        other => {
            return err(
                format!("{at}arch_class_name"),
                format!(
                    "architecture '{other}' has no detlab encoder; detlab imports the residual encoder (ResEncL, ResidualEncoderUNet) and the plain conv encoder (PlainConvUNet)"
                ),
            );
        }
    };
    let Some(kw) = kwargs.filter(|k| k.is_object()) else {
        return err(
            format!("{at}arch_kwargs"),
            format!("'{name}' needs its arch_kwargs"),
        );
    };
    let at = format!("{at}arch_kwargs.");
    let key = |k: &str| format!("{at}{k}");
    let n = uint(get(kw, "n_stages", &at)?, &key("n_stages"))?;
    if n == 0 {
        return err(key("n_stages"), "must be at least 1");
    }
    let widths = per_stage(kw, "features_per_stage", n, &at)?
        .into_iter()
        .map(|v| uint(v, &key("features_per_stage")))
        .collect::<Result<Vec<_>, _>>()?;
    let kernel_sizes = per_stage(kw, "kernel_sizes", n, &at)?
        .into_iter()
        .map(|v| triple(v, &key("kernel_sizes")))
        .collect::<Result<Vec<_>, _>>()?;
    let strides = per_stage(kw, "strides", n, &at)?
        .into_iter()
        .map(|v| triple(v, &key("strides")))
        .collect::<Result<Vec<_>, _>>()?;
    let conv_bias = kw.get("conv_bias").and_then(J::as_bool).unwrap_or(false);
    if let Some(op) = kw.get("conv_op").and_then(J::as_str)
        && !op.ends_with("Conv3d")
    {
        return err(
            key("conv_op"),
            format!("'{op}': detlab's encoders are 3-D (Conv3d)"),
        );
    }
    let norm = kw.get("norm_op").and_then(J::as_str).unwrap_or("None");
    if !short(norm).starts_with("InstanceNorm") {
        return err(
            key("norm_op"),
            format!("'{norm}': detlab's encoders use InstanceNorm3d"),
        );
    }
    let norm_kw = kw.get("norm_op_kwargs").cloned().unwrap_or(J::Null);
    if norm_kw.get("affine").and_then(J::as_bool) != Some(true) {
        return err(
            key("norm_op_kwargs.affine"),
            "detlab's InstanceNorm has affine γ and β; the plan has none",
        );
    }
    let eps = norm_kw.get("eps").and_then(J::as_f64).unwrap_or(1e-5);
    if (eps - 1e-5).abs() > 1e-12 {
        return err(
            key("norm_op_kwargs.eps"),
            format!("{eps}: detlab's InstanceNorm uses eps 1e-5"),
        );
    }
    if kw.get("dropout_op").is_some_and(|d| !d.is_null()) {
        return err(
            key("dropout_op"),
            "dropout in the encoder has no detlab counterpart",
        );
    }
    let nonlin = kw.get("nonlin").and_then(J::as_str).unwrap_or("None");
    let activation = match short(nonlin) {
        "LeakyReLU" => {
            let slope = kw
                .get("nonlin_kwargs")
                .and_then(|k| k.get("negative_slope"))
                .and_then(J::as_f64)
                .unwrap_or(0.01);
            if (slope - 0.01).abs() > 1e-12 {
                return err(
                    key("nonlin_kwargs.negative_slope"),
                    format!("{slope}: detlab's LeakyReLU has slope 0.01"),
                );
            }
            Activation::LeakyRelu
        }
        "ReLU" => Activation::Relu,
        other => {
            return err(
                key("nonlin"),
                format!("'{other}': detlab's encoders use LeakyReLU or ReLU"),
            );
        }
    };
    for (flag, what) in [
        ("nonlin_first", "a non-linearity before the norm"),
        ("squeeze_excitation", "squeeze-and-excitation"),
    ] {
        if kw.get(flag).and_then(J::as_bool) == Some(true) {
            return err(key(flag), format!("{what} has no detlab counterpart"));
        }
    }
    for pool in ["pool", "pool_type"] {
        if let Some(p) = kw.get(pool).and_then(J::as_str)
            && p != "conv"
        {
            return err(
                key(pool),
                format!("'{p}' pooling: detlab's encoders downsample with strided convs"),
            );
        }
    }
    if residual {
        if let Some(block) = kw.get("block").and_then(J::as_str)
            && short(block) != "BasicBlockD"
        {
            return err(
                key("block"),
                format!("'{block}': detlab's residual encoder has BasicBlockD blocks"),
            );
        }
        if let Some(stem) = kw.get("stem_channels").filter(|v| !v.is_null())
            && uint(stem, &key("stem_channels"))? != widths[0]
        {
            return err(
                key("stem_channels"),
                "a stem width other than the first stage's has no detlab counterpart",
            );
        }
        let blocks_per_stage = per_stage(kw, "n_blocks_per_stage", n, &at)?
            .into_iter()
            .map(|v| uint(v, &key("n_blocks_per_stage")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EncoderConfig::Resenc(ResEncConfig {
            in_channels: 1,
            widths,
            blocks_per_stage,
            strides,
            kernel_sizes,
            conv_bias,
            activation,
            init: WeightInit::KaimingNormal,
            zero_init_residual: true,
        }))
    } else {
        let conv_key = if kw.get("n_conv_per_stage").is_some() {
            "n_conv_per_stage"
        } else {
            "n_blocks_per_stage"
        };
        let convs = per_stage(kw, conv_key, n, &at)?
            .into_iter()
            .map(|v| uint(v, &key(conv_key)))
            .collect::<Result<Vec<_>, _>>()?;
        if convs.iter().any(|&c| c != convs[0]) || convs[0] < 2 {
            return err(
                key(conv_key),
                format!(
                    "{convs:?}: detlab's plain encoder has the same number (at least 2) of convs in every stage"
                ),
            );
        }
        if strides[0] != [1, 1, 1] {
            return err(
                key("strides"),
                "the first stage must have stride 1 (its first conv is detlab's stem)",
            );
        }
        Ok(EncoderConfig::Retunet(RetUNetEncoderConfig {
            in_channels: 1,
            widths,
            strides,
            kernel_sizes,
            convs_per_stage: convs[0],
            conv_bias,
            activation,
            init: WeightInit::KaimingNormal,
        }))
    }
}

/// The normalisation schemes of a plan, in words.
fn normalization(schemes: &J) -> Option<String> {
    let names: Vec<String> = schemes
        .as_array()?
        .iter()
        .filter_map(J::as_str)
        .map(|s| match s {
            "ZScoreNormalization" => "z-score per image".to_string(),
            "CTNormalization" => {
                "CT: clipped to the dataset's 0.5–99.5 percentiles, z-scored with its mean and std"
                    .to_string()
            }
            "NoNormalization" => "none".to_string(),
            other => other.to_string(),
        })
        .collect();
    let mut unique = names.clone();
    unique.dedup();
    match unique.len() {
        0 => None,
        1 => Some(unique.remove(0)),
        _ => Some(names.join(" | ")),
    }
}

/// The data side of an nnU-Net / nnssl configuration plan.
fn configuration_data(plan: &mut CheckpointPlan, c: &J, at: &str) -> Result<(), PlanError> {
    if let Some(s) = c.get("spacing").filter(|s| !s.is_null()) {
        plan.spacing = Some(float_triple(s, &format!("{at}spacing"))?);
    }
    if let Some(p) = c.get("patch_size").filter(|p| !p.is_null()) {
        plan.patch = Some(triple(p, &format!("{at}patch_size"))?);
    }
    if let Some(n) = c.get("normalization_schemes") {
        plan.normalization = normalization(n);
    }
    Ok(())
}

/// Read nnssl's `nnssl_adaptation_plan` (the dict `AdaptationPlan.serialize()` writes).
pub fn nnssl_plan(plan: &J, configuration: Option<&str>) -> Result<CheckpointPlan, PlanError> {
    let arch = get(plan, "architecture_plans", "")?;
    let class = get(arch, "arch_class_name", "architecture_plans.")?
        .as_str()
        .ok_or_else(|| PlanError {
            key: "architecture_plans.arch_class_name".into(),
            reason: "not a string".into(),
        })?;
    let encoder = architecture(
        class,
        arch.get("arch_kwargs").filter(|k| !k.is_null()),
        "architecture_plans.",
    )?;
    let mut out = CheckpointPlan {
        encoder: Some(encoder),
        ..CheckpointPlan::default()
    };
    if let Some(c) = plan.get("pretrain_num_input_channels") {
        out.channels = Some(uint(c, "pretrain_num_input_channels")?);
    }
    if let Some(p) = plan
        .get("recommended_downstream_patchsize")
        .filter(|p| !p.is_null())
    {
        out.patch = Some(triple(p, "recommended_downstream_patchsize")?);
    }
    let pretrain = plan.get("pretrain_plan");
    let dataset = pretrain
        .and_then(|p| p.get("dataset_name"))
        .and_then(J::as_str)
        .unwrap_or("?");
    let configs = pretrain
        .and_then(|p| p.get("configurations"))
        .and_then(J::as_object);
    let chosen = configs.and_then(|c| {
        configuration
            .and_then(|name| c.get_key_value(name))
            .or_else(|| c.iter().next())
    });
    out.description = format!("nnssl pre-training plan of {dataset}, architecture {class}");
    if let Some((name, c)) = chosen {
        let style = c.get("spacing_style").and_then(J::as_str).unwrap_or("?");
        out.description
            .push_str(&format!(", configuration {name} (spacing style {style})"));
        let patch = out.patch;
        configuration_data(
            &mut out,
            c,
            &format!("pretrain_plan.configurations.{name}."),
        )?;
        // The recommended downstream patch is what fine-tuning should use.
        out.patch = patch.or(out.patch);
    }
    Ok(out)
}

/// Read the nnU-Net plans in a trainer's `init_args` (MultiTalent, nnU-Net): the architecture
/// of `init_args.configuration` and its data settings; `None` without plans.
pub fn nnunet_plan(init_args: &J) -> Result<Option<CheckpointPlan>, PlanError> {
    let Some(plans) = init_args.get("plans").filter(|p| p.is_object()) else {
        return Ok(None);
    };
    let at = "init_args.plans.configurations.";
    let configs = get(plans, "configurations", "init_args.plans.")?;
    let name = match init_args.get("configuration").and_then(J::as_str) {
        Some(n) => n.to_string(),
        None => match configs.as_object().and_then(|c| c.keys().next()) {
            Some(n) => n.clone(),
            None => return err("init_args.plans.configurations", "empty"),
        },
    };
    let mut c = get(configs, &name, at)?.clone();
    // nnU-Net configurations may inherit from another one.
    if let Some(parent) = c
        .get("inherits_from")
        .and_then(J::as_str)
        .map(str::to_string)
        && let (Some(p), Some(obj)) = (
            configs.get(&parent).and_then(J::as_object),
            c.as_object_mut(),
        )
    {
        for (k, v) in p {
            obj.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let here = format!("{at}{name}.");
    let encoder = if let Some(arch) = c.get("architecture") {
        let class = get(arch, "network_class_name", &format!("{here}architecture."))?
            .as_str()
            .unwrap_or("");
        architecture(
            class,
            arch.get("arch_kwargs"),
            &format!("{here}architecture."),
        )?
    } else {
        // Plans before nnU-Net 2.4 list the U-Net's settings directly; nnU-Net then adds conv
        // bias, affine InstanceNorm (eps 1e-5) and LeakyReLU.
        let class = get(&c, "UNet_class_name", &here)?
            .as_str()
            .unwrap_or("")
            .to_string();
        let kernels = get(&c, "conv_kernel_sizes", &here)?.clone();
        let n = kernels.as_array().map_or(0, Vec::len);
        let base = uint(
            get(&c, "UNet_base_num_features", &here)?,
            &format!("{here}UNet_base_num_features"),
        )?;
        let max = uint(
            get(&c, "unet_max_num_features", &here)?,
            &format!("{here}unet_max_num_features"),
        )?;
        let per_stage_key = if class == "ResidualEncoderUNet" {
            "n_blocks_per_stage"
        } else {
            "n_conv_per_stage"
        };
        let kwargs = serde_json::json!({
            "n_stages": n,
            "features_per_stage": (0..n).map(|i| (base << i.min(20)).min(max)).collect::<Vec<_>>(),
            "kernel_sizes": kernels,
            "strides": get(&c, "pool_op_kernel_sizes", &here)?,
            per_stage_key: get(&c, "n_conv_per_stage_encoder", &here)?,
            "conv_bias": true,
            "norm_op": "torch.nn.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": true},
            "dropout_op": null,
            "nonlin": "torch.nn.LeakyReLU",
        });
        architecture(&class, Some(&kwargs), &here)?
    };
    let mut out = CheckpointPlan {
        encoder: Some(encoder),
        ..CheckpointPlan::default()
    };
    configuration_data(&mut out, &c, &here)?;
    let dataset = plans.get("dataset_name").and_then(J::as_str).unwrap_or("?");
    let plans_name = plans.get("plans_name").and_then(J::as_str).unwrap_or("?");
    out.description = format!("nnU-Net plans {plans_name} of {dataset}, configuration {name}");
    Ok(Some(out))
}

/// The method a trainer's class name suggests (`None`: not recognised).
pub fn method_from_trainer(trainer: &str) -> Option<Method> {
    let t = trainer.to_ascii_lowercase();
    // SparkMAETrainer contains "mae": test Spark first.
    Some(if t.contains("spark") {
        Method::Spark
    } else if t.contains("mae") {
        Method::Mae
    } else if t.contains("genesis") {
        Method::ModelsGenesis
    } else if t.contains("voco") {
        Method::Voco
    } else if t.contains("multitalent") {
        Method::Multitalent
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resenc_kwargs() -> J {
        json!({
            "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3], 3, [1, 3, 3]], "strides": [1, [2, 2, 2], [1, 2, 2]],
            "n_blocks_per_stage": [1, 2, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": true,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": true},
            "dropout_op": null, "dropout_op_kwargs": null, "nonlin": "torch.nn.modules.activation.LeakyReLU",
            "nonlin_kwargs": {"inplace": true}
        })
    }

    #[test]
    fn dynamic_kwargs_become_the_matching_detlab_encoder() {
        let EncoderConfig::Resenc(c) =
            architecture("ResidualEncoderUNet", Some(&resenc_kwargs()), "").unwrap()
        else {
            panic!("not resenc")
        };
        assert_eq!(c.widths, [4, 8, 16]);
        assert_eq!(c.blocks_per_stage, [1, 2, 1]);
        assert_eq!(c.strides, [[1, 1, 1], [2, 2, 2], [1, 2, 2]]);
        assert_eq!(c.kernel_sizes, [[3, 3, 3], [3, 3, 3], [1, 3, 3]]);
        assert!(c.conv_bias && c.activation == Activation::LeakyRelu);
        assert_eq!(
            architecture("ResEncL", None, "").unwrap(),
            EncoderConfig::Resenc(ResEncConfig::resenc_l(1))
        );
        let mut plain = resenc_kwargs();
        plain["n_conv_per_stage"] = json!(2);
        plain["nonlin"] = json!("torch.nn.ReLU");
        let EncoderConfig::Retunet(p) = architecture(
            "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            Some(&plain),
            "",
        )
        .unwrap() else {
            panic!("not plain")
        };
        assert_eq!(
            (p.convs_per_stage, p.activation, p.conv_bias),
            (2, Activation::Relu, true)
        );
    }

    #[test]
    fn what_detlab_cannot_represent_is_refused_naming_the_key() {
        for (key, value, expected) in [
            (
                "norm_op",
                json!("torch.nn.BatchNorm3d"),
                "arch_kwargs.norm_op",
            ),
            (
                "dropout_op",
                json!("torch.nn.Dropout3d"),
                "arch_kwargs.dropout_op",
            ),
            ("block", json!("BottleneckD"), "arch_kwargs.block"),
            (
                "n_blocks_per_stage",
                json!([1, 1]),
                "arch_kwargs.n_blocks_per_stage",
            ),
            (
                "norm_op_kwargs",
                json!({"eps": 1e-3, "affine": true}),
                "arch_kwargs.norm_op_kwargs.eps",
            ),
        ] {
            let mut kw = resenc_kwargs();
            kw[key] = value;
            let e =
                architecture("ResidualEncoderUNet", Some(&kw), "architecture_plans.").unwrap_err();
            assert_eq!(
                e.key,
                format!("architecture_plans.{expected}"),
                "{}",
                e.reason
            );
        }
        let mut plain = resenc_kwargs();
        plain["n_conv_per_stage"] = json!([2, 3, 2]);
        assert!(
            architecture("PlainConvUNet", Some(&plain), "")
                .unwrap_err()
                .reason
                .contains("same number")
        );
        assert!(
            architecture("PrimusM", None, "")
                .unwrap_err()
                .reason
                .contains("PrimusM")
        );
    }

    #[test]
    fn trainer_names_give_methods() {
        assert_eq!(method_from_trainer("SparkMAETrainer"), Some(Method::Spark));
        assert_eq!(method_from_trainer("BaseMAETrainer_BS8"), Some(Method::Mae));
        assert_eq!(
            method_from_trainer("ModelGenesisTrainer"),
            Some(Method::ModelsGenesis)
        );
        assert_eq!(method_from_trainer("VoCoTrainer"), Some(Method::Voco));
        assert_eq!(
            method_from_trainer("MultiTalent_trainer_multistems"),
            Some(Method::Multitalent)
        );
        assert_eq!(method_from_trainer("SimCLRTrainer"), None);
    }
}
