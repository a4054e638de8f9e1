//! The pre-training loop. It shares `train`'s optimisers, schedule, checkpoint folders,
//! per-iteration randomness, progress bar, NaN stop and Ctrl-C handling, so a pre-training
//! run behaves like a training run: `last` and `best` are replaced atomically, `resume`
//! continues bit for bit, `overwrite` replaces a finished run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::checkpoint::{
    PRETRAIN_FORMAT, PRETRAIN_FORMAT_VERSION, PRETRAIN_STATE_FILE, PretrainState, TEACHER_FILE,
    ValidationRecord, read_state,
};
use super::config::{Method, PretrainConfig, RESUMABLE_DIFFERENCES};
use super::network::{PretrainNetwork, PretrainNetworkConfig};
use super::objective::{PreparedBatch, Sources, loss, prepare_batch};
use super::source::DataPlan;
use crate::nn::inspect::exponential_moving_average;
use crate::train::checkpoint::{
    OPTIMIZER_FILE, WEIGHTS_FILE, locate_checkpoint_marked, replace_dir,
};
use crate::train::rng::{RngStream, iteration_rng};
use crate::train::{IterationRecord, TrainError, TrainOptimizer};

/// What a finished (or stopped) pre-training call returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainRun {
    /// Every iteration of the run so far.
    pub history: Vec<IterationRecord>,
    /// Every validation.
    pub validation: Vec<ValidationRecord>,
    /// The best checkpoint (lowest validation loss), if validation ran.
    pub best: Option<ValidationRecord>,
    /// Iterations done.
    pub iterations_done: usize,
    /// Whether all iterations are done.
    pub finished: bool,
    /// The run folder.
    pub out: PathBuf,
    /// The figures written by this call.
    pub figures: Vec<PathBuf>,
}

/// Patch numbers of the validation batches start here, far from the training draws, so the
/// synthetic stream never shows a validation volume during training.
const VALIDATION_INDEX_OFFSET: u64 = 1 << 62;

/// Everything the loop needs besides the network.
pub struct PretrainInputs<'a> {
    /// The network's description (stored in checkpoints, checked on resume).
    pub network_config: &'a PretrainNetworkConfig,
    /// Where batches come from.
    pub sources: &'a Sources,
    /// How the data was prepared (stored in checkpoints).
    pub data: Vec<DataPlan>,
}

/// Pre-train `network` (see the module docs); polls Ctrl-C before every iteration.
pub fn pretrain<B: AutodiffBackend>(
    network: PretrainNetwork<B>,
    inputs: &PretrainInputs,
    config: &PretrainConfig,
    device: &B::Device,
) -> Result<(PretrainNetwork<B>, PretrainRun), PretrainError> {
    run(network, inputs, config, device, &|_| {
        crate::util::interrupt::is_requested()
    })
}

fn check_compatible(
    network_config: &PretrainNetworkConfig,
    sources: &Sources,
    config: &PretrainConfig,
) -> Result<(), PretrainError> {
    let encoder = &network_config.encoder;
    let total = encoder
        .cumulative_strides()
        .last()
        .copied()
        .unwrap_or([1, 1, 1]);
    let patch = config.encoder_patch();
    if (0..3).any(|a| !patch[a].is_multiple_of(total[a])) {
        let what = if config.method == Method::Voco {
            "each VoCo crop (patch / voco.bases)"
        } else {
            "the patch"
        };
        return Err(PretrainError::config(
            "patch",
            format!("{what} {patch:?} must be a multiple of the encoder's total stride {total:?}"),
        ));
    }
    match (config.method, sources) {
        (Method::Multitalent, Sources::Labelled { datasets, .. }) => {
            let shared = network_config.stems.is_empty();
            if !shared && datasets.len() != network_config.stems.len() {
                return Err(PretrainError::InvalidData(format!(
                    "{} dataset(s) but the network has {} stem(s)",
                    datasets.len(),
                    network_config.stems.len()
                )));
            }
        }
        (Method::Multitalent, Sources::Images(_)) => {
            return Err(PretrainError::InvalidData(
                "MultiTalent is supervised: give it a list of labelled datasets".into(),
            ));
        }
        (_, Sources::Images(source)) => {
            if source.channels() != encoder.in_channels() {
                return Err(PretrainError::InvalidData(format!(
                    "the images have {} channel(s) but the encoder expects {}",
                    source.channels(),
                    encoder.in_channels()
                )));
            }
        }
        (method, Sources::Labelled { .. }) => {
            return Err(PretrainError::InvalidData(format!(
                "{} pre-trains on one unlabelled source, not a list of datasets",
                method.name()
            )));
        }
    }
    Ok(())
}

fn config_differences(stored: &PretrainConfig, given: &PretrainConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(stored), serde_json::to_value(given))
    else {
        return vec!["<unserialisable>".into()];
    };
    a.keys()
        .filter(|k| !RESUMABLE_DIFFERENCES.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn scalar<B: burn::tensor::backend::Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

struct Saved<'a, B: AutodiffBackend> {
    config: &'a PretrainConfig,
    inputs: &'a PretrainInputs<'a>,
    network: &'a PretrainNetwork<B>,
    optimizer: Option<&'a TrainOptimizer<B, PretrainNetwork<B>>>,
    teacher: Option<&'a PretrainNetwork<B::InnerBackend>>,
    iteration: usize,
    history: &'a [IterationRecord],
    validation: &'a [ValidationRecord],
    best: &'a Option<ValidationRecord>,
}

fn write<B: AutodiffBackend>(dir: &std::path::Path, s: Saved<B>) -> Result<(), PretrainError> {
    let optimizer_bytes = s.optimizer.map(TrainOptimizer::to_bytes).transpose()?;
    let state = PretrainState {
        format: PRETRAIN_FORMAT.into(),
        format_version: PRETRAIN_FORMAT_VERSION,
        detlab_version: env!("CARGO_PKG_VERSION").into(),
        method: s.config.method,
        iteration: s.iteration,
        has_optimizer: optimizer_bytes.is_some(),
        config: s.config.clone(),
        network: s.inputs.network_config.clone(),
        data: s.inputs.data.clone(),
        history: s.history.to_vec(),
        validation: s.validation.to_vec(),
        best: s.best.clone(),
    };
    let json = serde_json::to_vec_pretty(&state)
        .map_err(|e| PretrainError::checkpoint(dir, format!("cannot encode the state: {e}")))?;
    replace_dir(dir, |tmp| {
        crate::nn::save_weights(s.network, &tmp.join(WEIGHTS_FILE))?;
        if let Some(teacher) = s.teacher {
            crate::nn::save_weights(teacher, &tmp.join(TEACHER_FILE))?;
        }
        let io = |path: PathBuf, e: std::io::Error| {
            TrainError::checkpoint(path, format!("cannot write: {e}"))
        };
        if let Some(bytes) = &optimizer_bytes {
            let path = tmp.join(OPTIMIZER_FILE);
            crate::util::atomic_write(&path, bytes).map_err(|e| io(path.clone(), e))?;
        }
        let path = tmp.join(PRETRAIN_STATE_FILE);
        crate::util::atomic_write(&path, &json).map_err(|e| io(path.clone(), e))
    })?;
    Ok(())
}

/// The loop behind [`pretrain`]; `interrupted(iteration)` is polled before every iteration.
pub(crate) fn run<B: AutodiffBackend>(
    mut network: PretrainNetwork<B>,
    inputs: &PretrainInputs,
    config: &PretrainConfig,
    device: &B::Device,
    interrupted: &dyn Fn(usize) -> bool,
) -> Result<(PretrainNetwork<B>, PretrainRun), PretrainError> {
    config.validate()?;
    check_compatible(inputs.network_config, inputs.sources, config)?;
    let heads = inputs.network_config.heads.clone();
    let total = config.iterations;
    let schedule = config.schedule();
    let last_dir = config.out.join("last");
    let best_dir = config.out.join("best");
    let mut optimizer = TrainOptimizer::<B, PretrainNetwork<B>>::new(&config.optimizer)?;
    let mut history: Vec<IterationRecord> = Vec::new();
    let mut validation: Vec<ValidationRecord> = Vec::new();
    let mut best: Option<ValidationRecord> = None;
    let ema = if config.method == Method::Voco {
        config.voco.ema_momentum
    } else {
        None
    };
    let mut teacher: Option<PretrainNetwork<B::InnerBackend>> = ema.map(|_| network.valid());

    // Fixed validation batches, drawn once from their own stream.
    let validation_batches: Vec<PreparedBatch> = {
        let mut rng = iteration_rng(config.seed, 0, RngStream::Validation);
        let mut batches = Vec::new();
        let mut drawn = 0;
        while drawn < config.val_patches {
            let n = config.batch.min(config.val_patches - drawn);
            batches.push(prepare_batch(
                config,
                inputs.sources,
                VALIDATION_INDEX_OFFSET + drawn as u64,
                n,
                &mut rng,
            )?);
            drawn += n;
        }
        batches
    };

    let mut start = 0;
    if config.resume {
        let resume_error = |reason: String| {
            PretrainError::Train(TrainError::Resume {
                path: last_dir.clone(),
                reason,
            })
        };
        let (dir, state) = read_state(&last_dir).map_err(|e| resume_error(e.to_string()))?;
        if dir != last_dir {
            return Err(resume_error(
                "no `last` checkpoint in this run folder".into(),
            ));
        }
        let differences = config_differences(&state.config, config);
        if !differences.is_empty() {
            return Err(resume_error(format!(
                "the settings differ from the saved run's in {}",
                differences.join(", ")
            )));
        }
        if &state.network != inputs.network_config {
            return Err(resume_error(
                "the network differs from the saved run's".into(),
            ));
        }
        if !state.has_optimizer {
            return Err(resume_error("the checkpoint has no optimizer state".into()));
        }
        network = crate::nn::load_weights(network, &last_dir.join(WEIGHTS_FILE), device)?;
        let bytes = std::fs::read(last_dir.join(OPTIMIZER_FILE))
            .map_err(|e| resume_error(format!("cannot read {OPTIMIZER_FILE}: {e}")))?;
        optimizer = optimizer.load_bytes(bytes, &network, device)?;
        if let Some(t) = teacher.take() {
            teacher = Some(crate::nn::load_weights(
                t,
                &last_dir.join(TEACHER_FILE),
                device,
            )?);
        }
        start = state.iteration;
        history = state.history;
        validation = state.validation;
        best = state.best;
    } else if locate_checkpoint_marked(&last_dir, PRETRAIN_STATE_FILE).is_ok() {
        if !config.overwrite {
            return Err(PretrainError::config(
                "out",
                format!(
                    "'{}' already holds a pre-training run; set `resume: true` to continue it, `overwrite: true` to replace it, or choose another folder",
                    config.out.display()
                ),
            ));
        }
        for dir in [&last_dir, &best_dir, &config.out.join("figures")] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| {
                    PretrainError::checkpoint(
                        dir.clone(),
                        format!("cannot delete it for `overwrite: true`: {e}"),
                    )
                })?;
            }
        }
    }

    let stop = config.stop_at_iteration.unwrap_or(total).min(total);
    let bar = crate::train::progress_bar(config.progress, start, total);
    let say = |line: String| {
        if config.progress {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let mut figures = Vec::new();
    let mut last_written_at = None;
    let save = |dir: &std::path::Path,
                network: &PretrainNetwork<B>,
                optimizer: Option<&TrainOptimizer<B, PretrainNetwork<B>>>,
                teacher: Option<&PretrainNetwork<B::InnerBackend>>,
                iteration: usize,
                history: &[IterationRecord],
                validation: &[ValidationRecord],
                best: &Option<ValidationRecord>| {
        write(
            dir,
            Saved {
                config,
                inputs,
                network,
                optimizer,
                teacher,
                iteration,
                history,
                validation,
                best,
            },
        )
    };

    for iteration in start..stop {
        if interrupted(iteration) {
            bar.abandon();
            save(
                &last_dir,
                &network,
                Some(&optimizer),
                teacher.as_ref(),
                iteration,
                &history,
                &validation,
                &best,
            )?;
            return Err(TrainError::Interrupted {
                iteration,
                checkpoint: last_dir,
            }
            .into());
        }
        let lr = schedule.lr_at(iteration);
        let mut rng = iteration_rng(config.seed, iteration as u64, RngStream::Sampling);
        let batch = prepare_batch(
            config,
            inputs.sources,
            (iteration * config.batch) as u64,
            config.batch,
            &mut rng,
        )?;
        let want_figure = config.figure_every > 0
            && ((iteration + 1).is_multiple_of(config.figure_every) || iteration + 1 == total);
        let teacher_bases = match (&teacher, &batch) {
            (Some(t), PreparedBatch::Voco { crops, shape, .. }) => {
                let crops = Tensor::<B::InnerBackend, 5>::from_data(
                    burn::tensor::TensorData::new(crops.clone(), *shape),
                    device,
                );
                Some(Tensor::from_inner(t.embed(crops)))
            }
            _ => None,
        };
        let step = loss(
            &network,
            config,
            &batch,
            teacher_bases,
            &heads,
            want_figure,
            device,
        );
        let value = scalar(&step.total);
        let components: BTreeMap<String, f64> = step
            .components
            .iter()
            .map(|(k, v)| (k.clone(), scalar(v)))
            .collect();
        if !value.is_finite() || components.values().any(|v| !v.is_finite()) {
            bar.abandon();
            let listed: Vec<String> = components.iter().map(|(k, v)| format!("{k}={v}")).collect();
            // Pre-training has no epochs: the message names the iteration only.
            return Err(PretrainError::NonFiniteLoss {
                iteration,
                total: value,
                components: listed.join(", "),
            });
        }
        if let Some(panels) = &step.figure {
            let path = config
                .out
                .join("figures")
                .join(format!("iter_{:06}.png", iteration + 1));
            crate::plot::plot_panels(&path, panels, 160)
                .map_err(|e| PretrainError::Figure(e.to_string()))?;
            figures.push(path);
        }
        let grads = step.total.backward();
        let (updated, grad_norm) = optimizer.step(lr, network, grads);
        network = updated;
        if let (Some(t), Some(m)) = (teacher.take(), ema) {
            teacher = Some(exponential_moving_average(t, &network.valid(), m));
        }
        history.push(IterationRecord {
            iteration,
            // The history's "epoch" of a pre-training is its validation period.
            epoch: iteration / config.validate_every,
            lr,
            loss: value,
            components,
            grad_norm,
            encoder_frozen: false,
        });
        bar.inc(1);
        bar.set_message(format!(
            "{} loss {value:.4} lr {lr:.2e}",
            config.method.name()
        ));

        let done = iteration + 1;
        if done.is_multiple_of(config.validate_every) || done == total {
            let mut line = format!(
                "iteration {done}/{total}: {} loss {value:.4}",
                config.method.name()
            );
            if !validation_batches.is_empty() {
                let valid = network.valid();
                let mut sum = 0.0;
                for b in &validation_batches {
                    let l = loss(&valid, config, b, None, &heads, false, device);
                    sum += scalar(&l.total);
                }
                let mean = sum / validation_batches.len() as f64;
                validation.push(ValidationRecord {
                    iteration: done,
                    loss: mean,
                });
                line.push_str(&format!(", validation {mean:.4}"));
                if mean.is_finite() && best.as_ref().is_none_or(|b| mean < b.loss) {
                    best = Some(ValidationRecord {
                        iteration: done,
                        loss: mean,
                    });
                    save(
                        &best_dir,
                        &network,
                        None,
                        teacher.as_ref(),
                        done,
                        &history,
                        &validation,
                        &best,
                    )?;
                    line.push_str(" (best)");
                }
            }
            say(line);
            save(
                &last_dir,
                &network,
                Some(&optimizer),
                teacher.as_ref(),
                done,
                &history,
                &validation,
                &best,
            )?;
            last_written_at = Some(done);
        }
    }
    bar.finish_and_clear();
    let done = stop.max(start);
    if last_written_at != Some(done) && !(start == done && done == total && config.resume) {
        save(
            &last_dir,
            &network,
            Some(&optimizer),
            teacher.as_ref(),
            done,
            &history,
            &validation,
            &best,
        )?;
    }
    Ok((
        network,
        PretrainRun {
            history,
            validation,
            best,
            iterations_done: done,
            finished: done == total,
            out: config.out.clone(),
            figures,
        },
    ))
}
