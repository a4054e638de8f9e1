//! Where pre-training patches come from: the images of datasets (labels unused except by
//! MultiTalent), a folder of NIfTI files, or a seeded synthetic stream that never repeats.
//! Every source is already preprocessed with the spacing and normalisation that fine-tuning
//! will use; its [`DataPlan`] is stored with the checkpoint.

use std::path::Path;
use std::sync::Arc;

use ndarray::Array4;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::PretrainError;
use crate::data::world::{PoolConfig, pool_volume};
use crate::data::{PreprocessPlan, PreprocessedDataset, Subset};
use crate::train::sampler::{Patch, crop_patch, foreground_origin, random_origin};
use crate::train::{CaseData, SampleSource};
use crate::volume::{Interpolation, Volume};

/// How a source's images were prepared (recorded in the checkpoint, so that fine-tuning can
/// use the same spacing and normalisation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlan {
    /// What the data was, e.g. `dataset Task900 (24 cases)` or `synthetic pool (seed 1)`.
    pub source: String,
    /// Voxel spacing `[sd, sh, sw]` mm of the patches.
    pub spacing: [f64; 3],
    /// The intensity normalisation, in words (e.g. `z-score per image`).
    pub normalization: String,
    /// Image channels.
    pub channels: usize,
    /// The full preprocessing plan, for dataset sources.
    pub preprocessing: Option<PreprocessPlan>,
}

/// A source of pre-training patches.
pub trait PretrainSource: Send + Sync {
    /// Image channels of every patch.
    fn channels(&self) -> usize;

    /// How the images were prepared.
    fn plan(&self) -> DataPlan;

    /// Draw patch number `index` of size `patch`: `[C, D, H, W]`, zero-padded where it leaves
    /// the image. `index` is unique per draw, so a stream can use it to never repeat.
    fn patch(&self, patch: [usize; 3], index: u64, rng: &mut dyn rand::RngCore) -> Array4<f32>;
}

/// Patches cut from in-memory cases (a dataset's images or a folder of NIfTI files).
pub struct CaseSource {
    /// The dataset's name (MultiTalent names stems and heads after it).
    pub name: String,
    /// The cases.
    pub cases: Vec<Arc<dyn SampleSource>>,
    /// How they were prepared.
    pub data_plan: DataPlan,
    /// Class names of the dataset (MultiTalent), indexed by class id.
    pub class_names: Vec<String>,
}

impl CaseSource {
    /// All cases (training and test images) of a preprocessed dataset; `labelled_only` keeps
    /// the cases with labels (MultiTalent).
    pub fn from_preprocessed(
        name: &str,
        data: &PreprocessedDataset,
        class_names: Vec<String>,
        labelled_only: bool,
    ) -> Result<Self, PretrainError> {
        let ids = if labelled_only {
            data.ids(Subset::Train)
        } else {
            data.case_ids()
        };
        if ids.is_empty() {
            return Err(PretrainError::InvalidData(format!(
                "dataset '{name}' has no {}cases",
                if labelled_only { "labelled " } else { "" }
            )));
        }
        let cases: Vec<Arc<dyn SampleSource>> = data
            .load_cases(&ids)?
            .into_iter()
            .map(|c| c as Arc<dyn SampleSource>)
            .collect();
        let plan = data.plan().clone();
        let channels = cases[0].image().dim().0;
        Ok(Self {
            name: name.to_string(),
            data_plan: DataPlan {
                source: format!("dataset {name} ({} cases)", cases.len()),
                spacing: plan.target_spacing,
                normalization: format!("{:?}", plan.normalization),
                channels,
                preprocessing: Some(plan),
            },
            cases,
            class_names,
        })
    }

    /// Every `.nii`/`.nii.gz` file of `folder` (multi-channel files keep their channels),
    /// resampled linearly to `spacing` and z-scored per image and channel.
    pub fn from_nifti_folder(folder: &Path, spacing: [f64; 3]) -> Result<Self, PretrainError> {
        let entries = std::fs::read_dir(folder).map_err(|e| {
            PretrainError::InvalidData(format!("cannot read the folder {}: {e}", folder.display()))
        })?;
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
                name.is_some_and(|n| n.ends_with(".nii") || n.ends_with(".nii.gz"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PretrainError::InvalidData(format!(
                "the folder {} holds no NIfTI files (.nii or .nii.gz)",
                folder.display()
            )));
        }
        let mut cases: Vec<Arc<dyn SampleSource>> = Vec::with_capacity(files.len());
        let mut channels = None;
        for file in &files {
            let volume = crate::volume::read_nifti(file)?;
            let (volume, _) = volume.replace_non_finite(0.0);
            let volume = volume.resample(spacing, Interpolation::Linear)?;
            let image = zscore(volume.data);
            let c = image.dim().0;
            if *channels.get_or_insert(c) != c {
                return Err(PretrainError::InvalidData(format!(
                    "{} has {c} channel(s) but the files before it have {}",
                    file.display(),
                    channels.unwrap_or(0)
                )));
            }
            let id = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            cases.push(Arc::new(CaseData {
                id,
                image,
                instances: None,
                boxes: Vec::new(),
                classes: Vec::new(),
                instance_ids: Vec::new(),
            }));
        }
        let channels = channels.unwrap_or(1);
        Ok(Self {
            name: folder.display().to_string(),
            data_plan: DataPlan {
                source: format!("NIfTI folder {} ({} files)", folder.display(), cases.len()),
                spacing,
                normalization: "z-score per image and channel".into(),
                channels,
                preprocessing: None,
            },
            cases,
            class_names: Vec::new(),
        })
    }

    /// A labelled patch for MultiTalent: a random case, centred on a random object with
    /// probability `foreground_fraction`.
    pub fn labelled_patch<R: Rng + ?Sized>(
        &self,
        patch: [usize; 3],
        foreground_fraction: f64,
        rng: &mut R,
    ) -> Patch {
        let case = &self.cases[rng.random_range(0..self.cases.len())];
        let (_, d, h, w) = case.image().dim();
        let shape = [d, h, w];
        let boxes = case.boxes();
        let foreground = !boxes.is_empty() && rng.random_bool(foreground_fraction);
        let origin = if foreground {
            let object = &boxes[rng.random_range(0..boxes.len())];
            foreground_origin(shape, object, patch, rng)
        } else {
            random_origin(shape, patch, rng)
        };
        crop_patch(case.as_ref(), origin, patch, 0.0, foreground)
    }
}

/// Z-score every channel of an image (nnssl's per-image normalisation).
pub fn zscore(mut image: Array4<f32>) -> Array4<f32> {
    for mut channel in image.outer_iter_mut() {
        let n = channel.len().max(1) as f64;
        let mean = channel.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = channel
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt().max(1e-8);
        channel.mapv_inplace(|v| ((v as f64 - mean) / std) as f32);
    }
    image
}

impl PretrainSource for CaseSource {
    fn channels(&self) -> usize {
        self.data_plan.channels
    }

    fn plan(&self) -> DataPlan {
        self.data_plan.clone()
    }

    fn patch(&self, patch: [usize; 3], _index: u64, rng: &mut dyn rand::RngCore) -> Array4<f32> {
        let case = &self.cases[rng.random_range(0..self.cases.len())];
        let (_, d, h, w) = case.image().dim();
        let origin = random_origin([d, h, w], patch, rng);
        crop_patch(case.as_ref(), origin, patch, 0.0, false).image
    }
}

/// The seeded synthetic stream (`data::world` pool): volume `index` is generated at the
/// patch size and z-scored, so no two draws repeat.
pub struct PoolSource {
    /// The generator settings (its `shape` is replaced by the patch size).
    pub config: PoolConfig,
}

impl PretrainSource for PoolSource {
    fn channels(&self) -> usize {
        self.config.channels
    }

    fn plan(&self) -> DataPlan {
        DataPlan {
            source: format!(
                "synthetic pool (seed {}, {:?})",
                self.config.seed, self.config.modality
            ),
            spacing: self.config.spacing,
            normalization: "z-score per image and channel".into(),
            channels: self.config.channels,
            preprocessing: None,
        }
    }

    fn patch(&self, patch: [usize; 3], index: u64, _rng: &mut dyn rand::RngCore) -> Array4<f32> {
        let config = PoolConfig {
            shape: patch,
            ..self.config.clone()
        };
        match pool_volume(&config, index) {
            Ok(v) => zscore(v.data),
            // The generator only fails on settings that `validate_pool` already rejected.
            Err(_) => Array4::zeros((self.config.channels, patch[0], patch[1], patch[2])),
        }
    }
}

/// Check a pool configuration once, before a run starts.
pub fn validate_pool(config: &PoolConfig, patch: [usize; 3]) -> Result<(), PretrainError> {
    let config = PoolConfig {
        shape: patch,
        ..config.clone()
    };
    pool_volume(&config, 0).map(|_: Volume| ())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let err = CaseSource::from_nifti_folder(dir.path(), [1.0; 3])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no NIfTI files") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn nifti_folder_images_are_resampled_and_zscored() {
        let dir = tempfile::tempdir().unwrap();
        let data = Array4::from_shape_fn((1, 8, 8, 8), |(_, d, h, w)| (d * 64 + h * 8 + w) as f32);
        let volume = Volume::from_array(data, [2.0, 2.0, 2.0]);
        crate::volume::write_nifti(
            &volume,
            &dir.path().join("a.nii.gz"),
            crate::volume::NiftiDtype::F32,
        )
        .unwrap();
        let source = CaseSource::from_nifti_folder(dir.path(), [1.0; 3]).unwrap();
        assert_eq!(source.channels(), 1);
        let image = source.cases[0].image();
        assert_eq!(image.dim(), (1, 16, 16, 16));
        let mean = image.mean().unwrap();
        assert!(mean.abs() < 1e-4, "{mean}");
        let mut rng = rand::rng();
        assert_eq!(source.patch([8, 8, 8], 0, &mut rng).dim(), (1, 8, 8, 8));
    }
}
