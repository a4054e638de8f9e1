//! nnDetection's augmentation sets (`nndet/conf/train/augmentation/*.yaml` with the transform
//! lists of `nndet/io/augmentation/bg_aug.py`) as [`AugmentConfig`] values.
//!
//! | preset      | nnDetection class | differences from `base_more`                                |
//! |-------------|-------------------|--------------------------------------------------------------|
//! | `none`      | `NoAug`           | nothing is applied (patches are used as cut)                 |
//! | `base_more` | `BaseMoreAug`     | — (the default)                                              |
//! | `more`      | `MoreAug`         | + simulated low resolution (p 0.25)                          |
//! | `insane`    | `InsaneAug`       | + low resolution; stronger ranges and probabilities (below)  |
//!
//! `insane` also switches on elastic deformation in nnDetection (`do_elastic: True`,
//! α ∈ [0, 1300], σ ∈ [9, 15], p 0.2); detlab has no elastic deformation, so its `insane`
//! leaves it out (stated in the README's differences from nnDetection).

use serde::{Deserialize, Serialize};

use super::AugmentConfig;
use crate::train::TrainError;

/// An nnDetection augmentation set, named as in its configuration files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentPreset {
    /// `NoAug`: no augmentation.
    None,
    /// `BaseMoreAug` (`base_more.yaml`), nnDetection's default.
    #[default]
    BaseMore,
    /// `MoreAug` (`more.yaml`): `base_more` plus simulated low resolution.
    More,
    /// `InsaneAug` (`insane.yaml`): stronger ranges, without the elastic deformation.
    Insane,
}

/// Every preset with its script name, in the order `help` lists them.
pub const PRESETS: [(&str, AugmentPreset); 4] = [
    ("none", AugmentPreset::None),
    ("base_more", AugmentPreset::BaseMore),
    ("more", AugmentPreset::More),
    ("insane", AugmentPreset::Insane),
];

impl AugmentPreset {
    /// The preset called `name` (`"none"`, `"base_more"`, `"more"`, `"insane"`).
    pub fn from_name(name: &str) -> Result<AugmentPreset, TrainError> {
        let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
        PRESETS
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let names: Vec<String> = PRESETS.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                TrainError::config(
                    "augment.preset",
                    format!("unknown preset \"{name}\"; use one of {}", names.join(", ")),
                )
            })
    }

    /// The script name of the preset.
    pub fn name(self) -> &'static str {
        PRESETS
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .expect("every preset is listed")
    }

    /// The settings of the preset.
    pub fn config(self) -> AugmentConfig {
        let base = AugmentConfig::base_more();
        match self {
            AugmentPreset::None => AugmentConfig {
                preset: self,
                enabled: false,
                ..base
            },
            AugmentPreset::BaseMore => base,
            AugmentPreset::More => AugmentConfig {
                preset: self,
                low_resolution_probability: 0.25,
                ..base
            },
            AugmentPreset::Insane => AugmentConfig {
                preset: self,
                scale_range: [0.65, 1.6],
                noise_probability: 0.15,
                blur_sigma: [0.5, 1.5],
                brightness_range: [0.75, 1.3],
                contrast_range: [0.65, 1.5],
                low_resolution_probability: 0.25,
                inverted_gamma_probability: 0.15,
                gamma_range: [0.6, 2.0],
                ..base
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_nndetection_values_and_names() {
        for (name, preset) in PRESETS {
            assert_eq!(AugmentPreset::from_name(name).unwrap(), preset);
            assert_eq!(preset.name(), name);
            let config = preset.config();
            assert_eq!(config.preset, preset);
            config.validate([32, 32, 32]).unwrap();
        }
        assert_eq!(AugmentConfig::default(), AugmentPreset::BaseMore.config());
        assert!(!AugmentPreset::None.config().enabled);
        let more = AugmentPreset::More.config();
        assert_eq!(more.low_resolution_probability, 0.25);
        assert_eq!(more.rotation_degrees, [-30.0, 30.0]);
        let insane = AugmentPreset::Insane.config();
        assert_eq!(insane.scale_range, [0.65, 1.6]);
        assert_eq!(insane.gamma_range, [0.6, 2.0]);
        assert_eq!(
            AugmentPreset::from_name("Base-More").unwrap(),
            AugmentPreset::BaseMore
        );
        let err = AugmentPreset::from_name("default").unwrap_err().to_string();
        assert!(
            err.contains("augment.preset") && err.contains("\"base_more\""),
            "{err}"
        );
    }
}
