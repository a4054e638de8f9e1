//! State-dict key names: dropping PyTorch's aliases, and the map between
//! dynamic-network-architectures' encoder keys (nnssl, nnU-Net, MultiTalent) and detlab's
//! parameter paths.
//!
//! # Aliases in a PyTorch state dict
//! - every `ConvDropoutNormReLU` registers its conv and norm twice: `….conv.weight` and
//!   `….all_modules.0.weight`, `….norm.bias` and `….all_modules.1.bias` (the conv is always
//!   module 0; the norm is the only other module with parameters);
//! - the U-Net decoder keeps a reference to the encoder: `decoder.encoder.…` repeats `encoder.…`;
//! - nnssl's SparK wrapper repeats the network as `architecture.…` and its parts as
//!   `encoder.…` / `decoder.…` (callers strip `architecture.` from those entries first).
//!
//! # Encoder keys
//! | detlab path | residual encoder (ResEnc) | plain encoder (PlainConvUNet) |
//! | --- | --- | --- |
//! | `encoder.stem.convs.0.P` | `encoder.stem.convs.0.P` | `encoder.stages.0.0.convs.0.P` |
//! | `encoder.stages.S.blocks.B.conv1.P` | same | — |
//! | `encoder.stages.S.blocks.0.skip.P` | `….skip.1.P` after an average pool (stride ≠ 1), else `….skip.0.P` | — |
//! | `encoder.stages.0.convs.I.P` | — | `encoder.stages.0.0.convs.{I+1}.P` |
//! | `encoder.stages.S.convs.I.P` (S ≥ 1) | — | `encoder.stages.S.0.convs.I.P` |
//!
//! MultiTalent's encoders have one stem per dataset, `encoder.stem.<id>.convs.0.P`; its plain
//! encoder's stage 0 then keeps the remaining convs as `encoder.stages.0.0.convs.I.P`, exactly
//! detlab's layout. detlab keeps the first dataset's stem as `encoder.stem` and the others as
//! `stems.{i}`.

use super::super::PretrainError;

/// The canonical key of a state-dict key: aliases mapped onto the names that remain.
pub fn canonical_key(key: &str) -> String {
    // DDP's `module.` and torch.compile's `_orig_mod.` wrappers.
    let key = key.strip_prefix("module.").unwrap_or(key);
    let key = key.strip_prefix("_orig_mod.").unwrap_or(key);
    let mut key = match key.strip_prefix("decoder.encoder.") {
        Some(rest) => format!("encoder.{rest}"),
        None => key.to_string(),
    };
    while let Some(at) = key.find(".all_modules.") {
        let rest = &key[at + ".all_modules.".len()..];
        let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let Ok(index) = index.parse::<usize>() else {
            break;
        };
        let module = if index == 0 { "conv" } else { "norm" };
        key = format!(
            "{}.{module}{}{tail}",
            &key[..at],
            if tail.is_empty() { "" } else { "." }
        );
    }
    key
}

/// Merge aliases: the entries in order of first appearance under their canonical keys. All
/// keys of one canonical key must hold bit-identical tensors (`same` decides); otherwise the
/// error names both keys.
pub fn canonicalize<T>(
    entries: Vec<(String, T)>,
    path: &std::path::Path,
    mut same: impl FnMut(&T, &T, &str) -> Result<bool, PretrainError>,
) -> Result<Vec<(String, T)>, PretrainError> {
    let mut out: Vec<(String, String, T)> = Vec::with_capacity(entries.len());
    let mut index = std::collections::HashMap::new();
    for (key, tensor) in entries {
        let canonical = canonical_key(&key);
        match index.get(&canonical) {
            Some(&i) => {
                let (first_key, _, first): &(String, String, T) = &out[i];
                if !same(first, &tensor, &key)? {
                    return Err(PretrainError::CheckpointKey {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        reason: format!(
                            "`{key}` and `{first_key}` are aliases of one parameter (`{canonical}`) but hold different values; the file was edited inconsistently"
                        ),
                    });
                }
            }
            None => {
                index.insert(canonical.clone(), out.len());
                out.push((key, canonical, tensor));
            }
        }
    }
    Ok(out.into_iter().map(|(_, c, t)| (c, t)).collect())
}

/// How an encoder's PyTorch keys are laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Residual (ResEnc) or plain (PlainConvUNet) stages.
    pub residual: bool,
    /// Stride of each stage (decides `skip.0` / `skip.1`).
    pub strides: Vec<[usize; 3]>,
    /// MultiTalent's stem ids, in order (empty: one stem).
    pub stem_ids: Vec<String>,
}

/// The PyTorch key of a detlab parameter path of a pre-training network (`encoder.…` or
/// `stems.{i}.…`); `None` for paths outside the encoder and stems.
pub fn pytorch_key(path: &str, layout: &Layout) -> Option<String> {
    let stem_key = |index: usize, rest: &str| -> Option<String> {
        match layout.stem_ids.is_empty() {
            false => Some(format!(
                "encoder.stem.{}.{rest}",
                layout.stem_ids.get(index)?
            )),
            true if index != 0 => None,
            true if layout.residual => Some(format!("encoder.stem.{rest}")),
            // A plain encoder's stem is the first conv of stage 0.
            true => rest
                .starts_with("convs.0.")
                .then(|| format!("encoder.stages.0.0.{rest}")),
        }
    };
    if let Some(rest) = path.strip_prefix("encoder.stem.") {
        return stem_key(0, rest);
    }
    if let Some(rest) = path.strip_prefix("stems.") {
        let (i, rest) = rest.split_once('.')?;
        return stem_key(i.parse::<usize>().ok()? + 1, rest);
    }
    let rest = path.strip_prefix("encoder.stages.")?;
    let (stage, rest) = rest.split_once('.')?;
    let s: usize = stage.parse().ok()?;
    if layout.residual {
        let tail = rest.strip_prefix("blocks.")?;
        let (block, tail) = tail.split_once('.')?;
        return Some(match tail.strip_prefix("skip.") {
            Some(p) => {
                let pooled = layout.strides.get(s)? != &[1, 1, 1];
                format!(
                    "encoder.stages.{s}.blocks.{block}.skip.{}.{p}",
                    usize::from(pooled)
                )
            }
            None => format!("encoder.stages.{s}.blocks.{block}.{tail}"),
        });
    }
    let tail = rest.strip_prefix("convs.")?;
    let (conv, p) = tail.split_once('.')?;
    let conv: usize = conv.parse().ok()?;
    let shift = usize::from(s == 0 && layout.stem_ids.is_empty());
    Some(format!("encoder.stages.{s}.0.convs.{}.{p}", conv + shift))
}

/// The alias PyTorch's `ConvDropoutNormReLU` also registers for a key (`….conv.P` →
/// `….all_modules.0.P`, `….norm.P` → `….all_modules.1.P`); written on export so that strict
/// `load_state_dict` works.
pub fn all_modules_alias(key: &str) -> Option<String> {
    for (module, index) in [(".conv.", 0), (".norm.", 1)] {
        if let Some(at) = key.rfind(module) {
            let tail = &key[at + module.len()..];
            if !tail.contains('.') {
                return Some(format!("{}.all_modules.{index}.{tail}", &key[..at]));
            }
        }
    }
    None
}

/// The MultiTalent stem ids of a canonical state dict (`encoder.stem.<id>.convs.0.conv.weight`),
/// in order, with their input channels (from the kernel's shape).
pub fn multistem_ids<'a>(
    keys: impl Iterator<Item = (&'a str, &'a [usize])>,
) -> Vec<(String, usize)> {
    keys.filter_map(|(k, shape)| {
        let rest = k.strip_prefix("encoder.stem.")?;
        let id = rest.strip_suffix(".convs.0.conv.weight")?;
        (!id.contains('.') && id != "convs" && shape.len() == 5).then(|| (id.to_string(), shape[1]))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_onto_the_names_that_remain() {
        for (alias, canonical) in [
            (
                "encoder.stem.convs.0.all_modules.0.weight",
                "encoder.stem.convs.0.conv.weight",
            ),
            (
                "encoder.stem.convs.0.all_modules.1.bias",
                "encoder.stem.convs.0.norm.bias",
            ),
            (
                "decoder.encoder.stages.1.blocks.0.skip.1.all_modules.0.weight",
                "encoder.stages.1.blocks.0.skip.1.conv.weight",
            ),
            (
                "module.encoder.stages.0.blocks.0.conv1.conv.bias",
                "encoder.stages.0.blocks.0.conv1.conv.bias",
            ),
            (
                "decoder.stages.0.convs.0.all_modules.1.weight",
                "decoder.stages.0.convs.0.norm.weight",
            ),
            (
                "decoder.transpconvs.0.weight",
                "decoder.transpconvs.0.weight",
            ),
        ] {
            assert_eq!(canonical_key(alias), canonical, "{alias}");
        }
    }

    #[test]
    fn canonicalize_keeps_first_keys_and_refuses_differing_aliases() {
        let path = std::path::Path::new("x.pth");
        let entries = vec![
            (
                "encoder.stem.convs.0.conv.weight".to_string(),
                vec![1.0f32, 2.0],
            ),
            (
                "encoder.stem.convs.0.all_modules.0.weight".to_string(),
                vec![1.0, 2.0],
            ),
            (
                "decoder.encoder.stem.convs.0.conv.weight".to_string(),
                vec![1.0, 2.0],
            ),
            ("decoder.seg_layers.0.weight".to_string(), vec![3.0]),
        ];
        let bits = |a: &Vec<f32>, b: &Vec<f32>, _: &str| {
            Ok(a.iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())))
        };
        let out = canonicalize(entries.clone(), path, bits).unwrap();
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "encoder.stem.convs.0.conv.weight",
                "decoder.seg_layers.0.weight"
            ]
        );
        let mut bad = entries;
        bad[2].1[1] = f32::from_bits(2.0f32.to_bits() + 1);
        let e = canonicalize(bad, path, bits).unwrap_err().to_string();
        assert!(
            e.contains("x.pth")
                && e.contains("`decoder.encoder.stem.convs.0.conv.weight`")
                && e.contains("`encoder.stem.convs.0.conv.weight`"),
            "{e}"
        );
    }

    #[test]
    fn detlab_paths_map_to_dynamic_network_architectures_keys() {
        let resenc = Layout {
            residual: true,
            strides: vec![[1, 1, 1], [2, 2, 2], [1, 1, 1]],
            stem_ids: vec![],
        };
        let cases = [
            (
                "encoder.stem.convs.0.conv.weight",
                "encoder.stem.convs.0.conv.weight",
            ),
            (
                "encoder.stages.1.blocks.2.conv2.norm.bias",
                "encoder.stages.1.blocks.2.conv2.norm.bias",
            ),
            (
                "encoder.stages.1.blocks.0.skip.conv.weight",
                "encoder.stages.1.blocks.0.skip.1.conv.weight",
            ),
            (
                "encoder.stages.2.blocks.0.skip.norm.weight",
                "encoder.stages.2.blocks.0.skip.0.norm.weight",
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(pytorch_key(ours, &resenc).as_deref(), Some(theirs));
        }
        assert_eq!(
            pytorch_key("decoder.stages.0.convs.0.conv.weight", &resenc),
            None
        );
        assert_eq!(pytorch_key("stems.0.convs.0.conv.weight", &resenc), None);
        let plain = Layout {
            residual: false,
            ..resenc.clone()
        };
        assert_eq!(
            pytorch_key("encoder.stem.convs.0.conv.bias", &plain).unwrap(),
            "encoder.stages.0.0.convs.0.conv.bias"
        );
        assert_eq!(
            pytorch_key("encoder.stages.0.convs.0.norm.weight", &plain).unwrap(),
            "encoder.stages.0.0.convs.1.norm.weight"
        );
        assert_eq!(
            pytorch_key("encoder.stages.2.convs.1.conv.weight", &plain).unwrap(),
            "encoder.stages.2.0.convs.1.conv.weight"
        );
        let multi = Layout {
            stem_ids: vec!["3".into(), "17".into()],
            ..plain
        };
        assert_eq!(
            pytorch_key("encoder.stem.convs.0.conv.weight", &multi).unwrap(),
            "encoder.stem.3.convs.0.conv.weight"
        );
        assert_eq!(
            pytorch_key("stems.0.convs.0.norm.bias", &multi).unwrap(),
            "encoder.stem.17.convs.0.norm.bias"
        );
        assert_eq!(pytorch_key("stems.1.convs.0.norm.bias", &multi), None);
        assert_eq!(
            pytorch_key("encoder.stages.0.convs.0.conv.weight", &multi).unwrap(),
            "encoder.stages.0.0.convs.0.conv.weight"
        );
        assert_eq!(
            all_modules_alias("encoder.stem.convs.0.conv.weight").unwrap(),
            "encoder.stem.convs.0.all_modules.0.weight"
        );
        assert_eq!(
            all_modules_alias("encoder.stages.1.blocks.0.skip.1.norm.bias").unwrap(),
            "encoder.stages.1.blocks.0.skip.1.all_modules.1.bias"
        );
    }
}
