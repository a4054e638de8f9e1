//! The fuzz targets: each writes the input where detlab expects a user file and calls the same
//! reader the CLI and scripts call. A target returns the reader's outcome as text (`ok` or the
//! error with its numbers removed); the loop keeps inputs that reach a new outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detlab::data::{Dataset, Splits, dataset::read_instance_json};
use detlab::metrics::{self, io};
use detlab::nn::{DispatchDevice, InferenceBackend, ModelSpec, RetinaUNetConfig};
use detlab::pretrain::pytorch::{self, PytorchOptions, archive::TorchFile, pickle::parse_pickle};
use detlab::volume::nifti;

use crate::mutate::{Format, gzip};

/// One parser under test.
pub struct Target {
    /// Name on the command line.
    pub name: &'static str,
    /// What it reads.
    pub about: &'static str,
    /// Which structured mutations apply.
    pub format: Format,
    /// The reader under test (seeds: `fuzz/corpus/<name>/`, real files, generated files).
    pub run: fn(&Scratch, &[u8]) -> Result<(), String>,
    /// An input slower than this is a failure. 1 s (the issue's hang threshold) for parsers;
    /// the targets that build the network a file declares get [`BUILD_SLOW`].
    pub slow: Duration,
}

/// The issue's hang threshold: no parser may take longer on one input.
pub const PARSE_SLOW: Duration = Duration::from_secs(1);

/// For targets that build the declared network: a valid configuration near the weight budget
/// (300 M weights, `nn::encoder::MAX_PARAMETERS`) takes 5-10 s to initialise on this 2-core
/// machine, which is the cost of the network, not a hang in the reader.
pub const BUILD_SLOW: Duration = Duration::from_secs(15);

/// The targets, in the order `all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "nifti",
        about: ".nii files (header and voxels)",
        format: Format::Nifti,
        run: run_nifti,
        slow: PARSE_SLOW,
    },
    Target {
        name: "nifti_gz",
        about: ".nii.gz files (gzip stream, header, voxels)",
        format: Format::NiftiGz,
        run: run_nifti_gz,
        slow: PARSE_SLOW,
    },
    Target {
        name: "dataset_json",
        about: "dataset.json, opening a dataset",
        format: Format::Json,
        run: run_dataset_json,
        slow: PARSE_SLOW,
    },
    Target {
        name: "dataset_yaml",
        about: "dataset.yaml, opening a dataset",
        format: Format::Json,
        run: run_dataset_yaml,
        slow: PARSE_SLOW,
    },
    Target {
        name: "instances",
        about: "labelsTr/<case>.json instance files",
        format: Format::Json,
        run: run_instances,
        slow: PARSE_SLOW,
    },
    Target {
        name: "splits",
        about: "splits.json",
        format: Format::Json,
        run: run_splits,
        slow: PARSE_SLOW,
    },
    Target {
        name: "eval_input",
        about: "`detlab eval FILE.json` input, read and evaluated",
        format: Format::Json,
        run: run_eval_input,
        slow: PARSE_SLOW,
    },
    Target {
        name: "predictions",
        about: "prediction files <case>.json (`detlab eval --predictions`)",
        format: Format::Json,
        run: run_predictions,
        slow: PARSE_SLOW,
    },
    Target {
        name: "pth",
        about: "torch.save .pth files, loaded as a pre-trained encoder",
        format: Format::Zip,
        run: run_pth,
        slow: PARSE_SLOW,
    },
    Target {
        name: "pickle",
        about: "the allow-list unpickler on its own",
        format: Format::Bytes,
        run: run_pickle,
        slow: PARSE_SLOW,
    },
    Target {
        name: "weights",
        about: "weights.mpk (named MessagePack) into a micro detector",
        format: Format::Bytes,
        run: run_weights,
        slow: PARSE_SLOW,
    },
    Target {
        name: "train_state",
        about: "training checkpoint state.json",
        format: Format::Json,
        run: run_train_state,
        slow: PARSE_SLOW,
    },
    Target {
        name: "pretrain_state",
        about: "pre-training checkpoint pretrain.json, loaded with its weights",
        format: Format::Json,
        run: run_pretrain_state,
        slow: BUILD_SLOW,
    },
    Target {
        name: "model_json",
        about: "saved model model.json, the detector built from it",
        format: Format::Json,
        run: run_model_json,
        slow: BUILD_SLOW,
    },
];

/// A scratch folder with the fixed files some targets need (a tiny dataset, a tiny model).
pub struct Scratch {
    pub dir: PathBuf,
    pub dataset: PathBuf,
    pub device: DispatchDevice,
    /// The network `weights` loads into: a Retina U-Net of widths 2-4.
    pub weights_model: detlab::nn::RetinaUNet<InferenceBackend>,
    pub case_ids: Vec<String>,
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn run_nifti(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("input.nii");
    std::fs::write(&path, data).map_err(text)?;
    nifti::read_nifti_header(&path).map_err(text)?;
    nifti::read_nifti(&path).map(|_| ()).map_err(text)
}

fn run_nifti_gz(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("input.nii.gz");
    // Inputs that are not gzip streams are compressed, so header mutations reach the reader.
    if data.starts_with(&[0x1f, 0x8b]) {
        std::fs::write(&path, data).map_err(text)?;
    } else {
        std::fs::write(&path, gzip(data)).map_err(text)?;
    }
    nifti::read_nifti_header(&path).map_err(text)?;
    nifti::read_nifti(&path).map(|_| ()).map_err(text)
}

fn run_dataset_meta(s: &Scratch, data: &[u8], name: &str, other: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(s.dataset.join(other));
    std::fs::write(s.dataset.join(name), data).map_err(text)?;
    let ds = Dataset::open(&s.dataset).map_err(text)?;
    let _ = ds.train_ids();
    Ok(())
}

fn run_dataset_json(s: &Scratch, data: &[u8]) -> Result<(), String> {
    run_dataset_meta(s, data, "dataset.json", "dataset.yaml")
}

fn run_dataset_yaml(s: &Scratch, data: &[u8]) -> Result<(), String> {
    run_dataset_meta(s, data, "dataset.yaml", "dataset.json")
}

fn run_instances(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("case.json");
    std::fs::write(&path, data).map_err(text)?;
    let a = read_instance_json(&path, 2)
        .map(|_| ())
        .map_err(|p| format!("{p:?}"));
    let b = io::read_instances(&path).map(|_| ()).map_err(text);
    a.and(b)
}

fn run_splits(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("splits.json");
    std::fs::write(&path, data).map_err(text)?;
    let splits = Splits::load(&path).map_err(text)?;
    splits.validate(&s.case_ids, &path).map_err(text)?;
    splits.fold(0).map(|_| ()).map_err(text)
}

fn run_eval_input(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("eval.json");
    std::fs::write(&path, data).map_err(text)?;
    let input = io::EvalInput::read(&path).map_err(text)?;
    // What `detlab eval FILE.json` does next.
    let (gt, pred) = (input.gt(), input.pred());
    let cfg = metrics::EvalConfig {
        num_classes: input.classes.as_ref().map(Vec::len),
        pr_curves: false,
        ..metrics::EvalConfig::default()
    };
    let n = metrics::infer_num_classes(&gt, &pred, &cfg);
    for ((c, g), p) in input.cases.iter().zip(&gt).zip(&pred) {
        metrics::validate_case(&c.id, g, p, Some(n)).map_err(text)?;
    }
    metrics::evaluate(&gt, &pred, &cfg)
        .map(|_| ())
        .map_err(text)
}

fn run_predictions(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("case0000.json");
    std::fs::write(&path, data).map_err(text)?;
    io::PredictionFile::read(&path).map(|_| ()).map_err(text)
}

fn run_pth(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("input.pth");
    std::fs::write(&path, data).map_err(text)?;
    let file = TorchFile::open(&path).map_err(text)?;
    let _ = file.root.keys();
    drop(file);
    pytorch::load_file::<InferenceBackend>(&path, &PytorchOptions::default(), &s.device)
        .map(|_| ())
        .map_err(text)
}

fn run_pickle(_: &Scratch, data: &[u8]) -> Result<(), String> {
    parse_pickle(data).map(|_| ()).map_err(|e| format!("{e:?}"))
}

fn run_weights(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let path = s.dir.join("weights.mpk");
    std::fs::write(&path, data).map_err(text)?;
    detlab::nn::load_weights(s.weights_model.clone(), &path, &s.device)
        .map(|_| ())
        .map_err(text)
}

fn run_train_state(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let dir = s.dir.join("train_last");
    std::fs::create_dir_all(&dir).map_err(text)?;
    std::fs::write(dir.join("state.json"), data).map_err(text)?;
    detlab::train::read_checkpoint_state(&dir)
        .map(|_| ())
        .map_err(text)
}

fn run_pretrain_state(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let dir = s.dir.join("pretrain_last");
    std::fs::write(dir.join("pretrain.json"), data).map_err(text)?;
    detlab::pretrain::load_pretrained::<InferenceBackend>(&dir, &s.device)
        .map(|_| ())
        .map_err(text)
}

fn run_model_json(s: &Scratch, data: &[u8]) -> Result<(), String> {
    let value = io::parse_json_exact(std::str::from_utf8(data).map_err(text)?)?;
    let spec = ModelSpec::from_json(value, "model.json").map_err(text)?;
    // Build the network the file describes (declared widths and depths are allocated here).
    #[allow(unreachable_patterns)]
    match &spec.detector {
        detlab::nn::DetectorConfig::RetinaUnet(c) => c
            .init::<InferenceBackend>(&s.device)
            .map(|_| ())
            .map_err(text),
        _ => Ok(()),
    }
}

impl Scratch {
    /// Create the scratch folder (in /dev/shm when it exists: every input is a file write).
    pub fn new() -> Result<Scratch, String> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("detlab-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(text)?;
        let device = detlab::nn::device("cpu").map_err(text)?;
        // A tiny dataset for the dataset.json/.yaml targets (two 24³ cases).
        let dataset = dir.join("dataset");
        let config = detlab::data::SyntheticConfig {
            cases: 2,
            test_cases: 0,
            seed: 1,
            shape: [24, 24, 24],
            ..detlab::data::SyntheticConfig::default()
        };
        let ds = detlab::data::synthetic_dataset(&dataset, &config).map_err(text)?;
        let case_ids = ds.train_ids();
        // Every tensor and name of a real detector's weights.mpk, at widths 2-4: the reader's
        // structure is the same as at full width, and each input is a few KB instead of the
        // tiny detector's 2.4 MB, so the 10 M executions take minutes, not hours.
        let mut micro = RetinaUNetConfig::tiny(1, 1);
        if let detlab::nn::EncoderConfig::Retunet(encoder) = &mut micro.encoder {
            encoder.widths = vec![2, 2, 4, 4];
        }
        micro.fpn_channels = 4;
        micro.head_channels = 4;
        micro.head_channels_per_group = 2;
        let weights_model = micro.init::<InferenceBackend>(&device).map_err(text)?;
        // A pre-training checkpoint folder whose weights fit the seed's pretrain.json.
        let pretrain_dir = dir.join("pretrain_last");
        std::fs::create_dir_all(&pretrain_dir).map_err(text)?;
        let seed_state = crate::root().join("corpus/pretrain_state/mae_last.json");
        std::fs::copy(&seed_state, pretrain_dir.join("pretrain.json")).map_err(text)?;
        let (_, state) = detlab::pretrain::read_state(&pretrain_dir).map_err(text)?;
        let network = state
            .network
            .init::<InferenceBackend>(&device)
            .map_err(text)?;
        detlab::nn::save_weights(&network, &pretrain_dir.join("weights.mpk")).map_err(text)?;
        Ok(Scratch {
            dir,
            dataset,
            device,
            weights_model,
            case_ids,
        })
    }

    /// Seeds generated by detlab itself (so they follow the current formats).
    pub fn generated_seeds(&self, target: &str) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        let read = |p: &Path| std::fs::read(p).ok();
        match target {
            "nifti" | "nifti_gz" => {
                use detlab::volume::nifti::{NiftiDtype, WriteOptions, write_nifti_with};
                let vol = detlab::volume::Volume::from_array(
                    ndarray_like_ramp(),
                    [1.5, 0.7, 0.7],
                );
                for dtype in ["uint8", "int16", "float32", "float64"] {
                    let Ok(dtype) = NiftiDtype::from_name(dtype) else { continue };
                    let path = self.dir.join("seed.nii");
                    let options = WriteOptions { dtype, ..WriteOptions::default() };
                    if write_nifti_with(&vol, &path, &options).is_ok()
                        && let Some(b) = read(&path)
                    {
                        seeds.push(if target == "nifti_gz" { gzip(&b) } else { b });
                    }
                }
                // The synthetic dataset's own files.
                for entry in glob_files(&self.dataset, ".nii.gz") {
                    if let Some(b) = read(&entry) {
                        match target {
                            "nifti_gz" => seeds.push(b),
                            _ => seeds.extend(crate::mutate::gunzip(&b)),
                        }
                    }
                }
            }
            "dataset_json" => seeds.extend(read(&self.dataset.join("dataset.json"))),
            "dataset_yaml" => seeds.push(
                b"task: Task900_Synthetic\nname: synthetic\ndim: 3\nlabels:\n  \"0\": nodule\nmodalities:\n  \"0\": CT\ntest_labels: true\n"
                    .to_vec(),
            ),
            "instances" => {
                for entry in glob_files(&self.dataset, ".json") {
                    if entry.parent().is_some_and(|p| p.ends_with("labelsTr")) {
                        seeds.extend(read(&entry));
                    }
                }
            }
            "splits" => {
                if let Ok(s) = Splits::k_fold(&self.case_ids, 2, 12345) {
                    seeds.extend(serde_json::to_vec_pretty(&s.to_json()).ok());
                }
            }
            "eval_input" => seeds.push(
                br#"{"classes": ["a", "b"], "cases": [
{"id": "c1", "gt": {"boxes": [[0, 0, 0, 4, 4, 4], [5, 5, 5, 9, 9, 9]], "classes": [0, 1]},
 "pred": {"boxes": [[0, 0, 0, 4, 4, 5], [1, 1, 1, 3, 3, 3]], "scores": [0.9, 0.2], "classes": [0, 1]}},
{"id": "c2", "gt": {"boxes": [], "classes": []},
 "pred": {"boxes": [[2, 2, 2, 6, 6, 6]], "scores": [0.5], "classes": [1]}}]}"#
                    .to_vec(),
            ),
            "weights" => {
                let path = self.dir.join("seed.mpk");
                // The detector's own weights load; a small module keeps each input fast.
                if detlab::nn::save_weights(&self.weights_model, &path).is_ok() {
                    seeds.extend(read(&path));
                }
            }
            "pretrain_state" => {}
            _ => {}
        }
        seeds
    }
}

fn ndarray_like_ramp() -> ndarray::Array4<f32> {
    ndarray::Array4::from_shape_fn((1, 4, 5, 6), |(_, d, h, w)| {
        (d * 30 + h * 6 + w) as f32 - 20.0
    })
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted.
pub fn glob_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
