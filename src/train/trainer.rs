//! The training loop: any [`Detector`] that is an autodiff module, on any autodiff backend.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::TrainError;
use super::augment::augment_batch;
use super::batch::{images_tensor, patches_to_batch};
use super::checkpoint::{
    CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, CheckpointState, load_checkpoint_average,
    load_checkpoint_optimizer, load_checkpoint_weights, locate_checkpoint, read_checkpoint_state,
    write_checkpoint, write_checkpoint_with_average,
};
use super::config::{RESUMABLE_DIFFERENCES, TrainConfig};
use super::optim::TrainOptimizer;
use super::records::{CheckpointInfo, EpochRecord, IterationRecord, RestartRecord, TrainRun};
use super::rng::{RngStream, iteration_rng};
use super::sampler::{Patch, PatchSampler, SampleSource};
use super::schedule::LrSchedule;
use super::swa::{SwaRecord, SwaSchedule, WeightAverage};
use crate::data::PreprocessedDataset;
use crate::metrics::{self, EvalConfig, ImageGt, ImagePred};
use crate::nn::Detector;
use crate::volume::boxes::BoxConvention;

/// Train `model` on the preprocessed cases `train_ids`, validating on patches of `val_ids`.
///
/// `model_config` describes the model (e.g. `serde_json::to_value(&retina_unet_config)`); it
/// is stored in every checkpoint and must match on resume. Returns the trained model (the
/// state after the last iteration, not the best one) and the run's history.
pub fn train<B, M>(
    model: M,
    model_config: serde_json::Value,
    data: &PreprocessedDataset,
    train_ids: &[String],
    val_ids: &[String],
    config: &TrainConfig,
    device: &B::Device,
) -> Result<(M, TrainRun), TrainError>
where
    B: AutodiffBackend,
    M: Detector<B> + AutodiffModule<B>,
    M::InnerModule: Detector<B::InnerBackend>,
{
    let load = |ids: &[String]| -> Result<Vec<Arc<dyn SampleSource>>, TrainError> {
        let cases = data.load_cases(ids)?;
        cases
            .into_iter()
            .map(|c| {
                if c.instances.is_none() {
                    Err(TrainError::InvalidData(format!(
                        "case '{}' has no labels (a test case?); training and validation need \
                         labelled cases",
                        c.id
                    )))
                } else {
                    Ok(c as Arc<dyn SampleSource>)
                }
            })
            .collect()
    };
    // A class the data never has would score -1 in every metric (nnDetection's "no ground
    // truth" value) and pull mAP below zero; nnDetection takes the count from dataset.json.
    let labels = &data.manifest.labels;
    if !labels.is_empty() && labels.len() != model.num_classes() {
        return Err(TrainError::InvalidData(format!(
            "the dataset '{}' has {} class(es) ({}) but the model has num_classes = {}; build \
             the detector with num_classes: {}",
            data.manifest.task,
            labels.len(),
            labels.join(", "),
            model.num_classes(),
            labels.len()
        )));
    }
    let train_cases = load(train_ids)?;
    let val_cases = load(val_ids)?;
    train_on_cases(model, model_config, train_cases, val_cases, config, device)
}

/// Train `model` on in-memory cases (see [`train`]).
pub fn train_on_cases<B, M>(
    model: M,
    model_config: serde_json::Value,
    train_cases: Vec<Arc<dyn SampleSource>>,
    val_cases: Vec<Arc<dyn SampleSource>>,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<(M, TrainRun), TrainError>
where
    B: AutodiffBackend,
    M: Detector<B> + AutodiffModule<B>,
    M::InnerModule: Detector<B::InnerBackend>,
{
    run(
        model,
        model_config,
        train_cases,
        val_cases,
        config,
        device,
        &|_| crate::util::interrupt::is_requested(),
    )
}

/// Everything recorded so far, saved with each checkpoint.
struct Progress {
    history: Vec<IterationRecord>,
    epochs: Vec<EpochRecord>,
    best: Option<CheckpointInfo>,
    restarts: Vec<RestartRecord>,
}

/// The folder holding the weights and optimiser state saved when the whole-network phase
/// began, restored by an automatic restart.
pub const RESTART_POINT: &str = "restart_point";

/// Where a run stands after its automatic restarts: iteration `i` of the run (counting every
/// step taken) is iteration [`Attempt::schedule_iteration`] of the schedule.
struct Attempt<'a> {
    config: &'a TrainConfig,
    restarts: &'a [RestartRecord],
}

impl Attempt<'_> {
    /// First run iteration of the current whole-network phase.
    fn phase_start(&self) -> usize {
        self.restarts
            .last()
            .map_or(self.config.freeze_encoder_iters, |r| r.iteration)
    }

    /// The schedule iteration of run iteration `iteration` (the same before a restart; after
    /// one, `iteration` ≥ the phase start).
    fn schedule_iteration(&self, iteration: usize) -> usize {
        (iteration + self.config.freeze_encoder_iters).saturating_sub(self.phase_start())
    }

    /// Iterations of the whole run, grown by the iterations each restart discarded.
    fn run_iters(&self) -> usize {
        let discarded: usize = self
            .restarts
            .iter()
            .scan(self.config.freeze_encoder_iters, |start, r| {
                let d = r.iteration - *start;
                *start = r.iteration;
                Some(d)
            })
            .sum();
        self.config.run_iters() + discarded
    }

    /// The learning-rate schedule of the current attempt.
    fn schedule(&self) -> LrSchedule {
        match self.restarts.last() {
            None => self.config.schedule(),
            Some(r) => LrSchedule {
                lr: r.lr,
                warmup_iters: r.warmup_iters,
                ..self.config.schedule()
            },
        }
    }

    /// After a validation with `done` iterations done: the restart due now, if any (the metric
    /// has not risen by `min_improvement` within `patience_iters` of the phase start).
    fn restart_due(&self, epochs: &[EpochRecord], done: usize) -> Option<RestartRecord> {
        let r = &self.config.restart;
        let start = self.phase_start();
        if !r.enabled()
            || self.restarts.len() >= r.max_restarts
            || done < start + r.patience_iters
            || self.schedule_iteration(done) > self.config.total_iters()
        {
            return None;
        }
        let per_epoch = self.config.iters_per_epoch;
        let metric = |e: &EpochRecord| e.metrics.get(&self.config.best_metric).copied();
        let end_of = |e: &EpochRecord| (e.epoch + 1) * per_epoch;
        let baseline = epochs
            .iter()
            .filter(|e| end_of(e) <= self.config.freeze_encoder_iters)
            .filter_map(metric)
            .filter(|v| v.is_finite())
            .next_back()
            .unwrap_or(0.0);
        let best = epochs
            .iter()
            .filter(|e| end_of(e) > start && end_of(e) <= done)
            .filter_map(metric)
            .filter(|v| v.is_finite())
            .fold(f64::NAN, f64::max);
        if best >= baseline + r.min_improvement {
            return None;
        }
        Some(RestartRecord {
            iteration: done,
            metric: best,
            baseline,
            lr: r.lr,
            warmup_iters: r.warmup_iters,
        })
    }
}

fn check_inputs<B: AutodiffBackend, M: Detector<B>>(
    model: &M,
    sampler: &PatchSampler,
    cases: &[Arc<dyn SampleSource>],
    config: &TrainConfig,
) -> Result<(), TrainError> {
    let divisor = model.patch_divisor();
    if (0..3).any(|a| !config.patch[a].is_multiple_of(divisor[a])) {
        return Err(TrainError::config(
            "patch",
            format!(
                "{:?} must be a multiple of the model's patch divisor {divisor:?} on every axis",
                config.patch
            ),
        ));
    }
    if sampler.channels() != model.in_channels() {
        return Err(TrainError::InvalidData(format!(
            "the cases have {} image channel(s) but the model expects {}",
            sampler.channels(),
            model.in_channels()
        )));
    }
    // nnDetection pads a case smaller than the patch, which is fine on some axes; a patch that
    // exceeds every case on every axis is mostly padding, almost surely a mistyped patch.
    let shape = |case: &Arc<dyn SampleSource>| {
        let s = case.image().shape().to_vec();
        [s[1], s[2], s[3]]
    };
    if !cases.is_empty()
        && cases
            .iter()
            .all(|case| (0..3).all(|a| config.patch[a] > shape(case)[a]))
    {
        let largest = cases
            .iter()
            .map(shape)
            .max_by_key(|s| s.iter().product::<usize>())
            .unwrap_or_default();
        return Err(TrainError::config(
            "patch",
            format!(
                "{:?} is larger than every case on every axis (the largest case is {largest:?}): \
                 each patch would be mostly padding; use a patch no larger than the cases",
                config.patch
            ),
        ));
    }
    let classes = model.num_classes();
    for case in cases {
        if let Some((index, v)) = case.image().indexed_iter().find(|(_, v)| !v.is_finite()) {
            let (c, d, h, w) = index;
            return Err(TrainError::InvalidData(format!(
                "case '{}' has the non-finite value {v} at [{c}, {d}, {h}, {w}] (channel, D, H, W)",
                case.case_id()
            )));
        }
        if let Some(&c) = case.classes().iter().find(|&&c| c >= classes) {
            return Err(TrainError::InvalidData(format!(
                "case '{}' has class {c} but the model has {classes} class(es)",
                case.case_id()
            )));
        }
    }
    Ok(())
}

/// The fixed validation patches: `val_patches` patches drawn once from `cases` in batches of
/// `batch` (foreground-oversampled like training when the cases have instances, never
/// augmented), from the seed alone.
pub fn validation_patches(
    cases: Vec<Arc<dyn SampleSource>>,
    config: &TrainConfig,
) -> Result<Vec<Patch>, TrainError> {
    if config.val_patches == 0 || cases.is_empty() {
        return Ok(Vec::new());
    }
    let has_instances = cases.iter().any(|c| !c.boxes().is_empty());
    let fraction = if has_instances {
        config.foreground_fraction
    } else {
        0.0
    };
    let sampler = PatchSampler::new(cases, config.patch, fraction, config.min_visible_fraction)?;
    let mut patches = Vec::with_capacity(config.val_patches);
    let mut batch_index = 0u64;
    while patches.len() < config.val_patches {
        let n = config.batch.min(config.val_patches - patches.len());
        let mut rng = iteration_rng(config.seed, batch_index, RngStream::Validation);
        patches.extend(sampler.sample_batch(n, &mut rng));
        batch_index += 1;
    }
    Ok(patches)
}

/// Predict the validation patches with `model` and score them (nnDetection's metrics).
pub fn validate<B, M>(
    model: &M,
    patches: &[Patch],
    batch: usize,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, TrainError>
where
    B: burn::tensor::backend::Backend,
    M: Detector<B>,
{
    let mut predictions = Vec::with_capacity(patches.len());
    for chunk in patches.chunks(batch.max(1)) {
        let images = images_tensor::<B>(chunk, device)?;
        for d in model.predict(images)? {
            predictions.push(ImagePred {
                boxes: d.boxes,
                scores: d.scores,
                classes: d.classes,
            });
        }
    }
    let gt: Vec<ImageGt> = patches
        .iter()
        .map(|p| ImageGt {
            boxes: p.boxes.clone(),
            classes: p.classes.clone(),
        })
        .collect();
    let eval = EvalConfig {
        num_classes: Some(model.num_classes()),
        ..Default::default()
    };
    Ok(metrics::evaluate(&gt, &predictions, &eval)?.scalars)
}

fn config_differences(stored: &TrainConfig, given: &TrainConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(stored), serde_json::to_value(given))
    else {
        return vec!["<unserialisable>".into()];
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !RESUMABLE_DIFFERENCES.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The progress bar of a training or pre-training run (hidden unless `enabled` and stderr is
/// a terminal), positioned at `start` of `total` iterations.
pub(crate) fn progress_bar(enabled: bool, start: usize, total: usize) -> ProgressBar {
    if !(enabled && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(start as u64);
    bar
}

/// The loop behind [`train`]; `interrupted(iteration)` is polled before every iteration.
pub(crate) fn run<B, M>(
    mut model: M,
    model_config: serde_json::Value,
    train_cases: Vec<Arc<dyn SampleSource>>,
    val_cases: Vec<Arc<dyn SampleSource>>,
    config: &TrainConfig,
    device: &B::Device,
    interrupted: &dyn Fn(usize) -> bool,
) -> Result<(M, TrainRun), TrainError>
where
    B: AutodiffBackend,
    M: Detector<B> + AutodiffModule<B>,
    M::InnerModule: Detector<B::InnerBackend>,
{
    config.validate()?;
    let sampler = PatchSampler::new(
        train_cases.clone(),
        config.patch,
        config.foreground_fraction,
        config.min_visible_fraction,
    )?
    .with_generator_patch(config.augment.generator_patch(config.patch))?;
    check_inputs::<B, M>(&model, &sampler, &train_cases, config)?;
    check_inputs::<B, M>(&model, &sampler, &val_cases, config)?;
    let validation = validation_patches(val_cases, config)?;
    let swa = SwaSchedule::of(config);
    let mut average = WeightAverage::<M::InnerModule>::default();
    // Snapshots averaged into the current weights (set once the SWA phase ends).
    let mut averaged_snapshots = 0;
    let mut run_epochs = config.epochs + config.swa_epochs;
    let per_epoch = config.iters_per_epoch;
    let last_dir = config.out.join("last");
    let best_dir = config.out.join("best");
    let restart_dir = config.out.join(RESTART_POINT);
    let mut optimizer = TrainOptimizer::<B, M>::new(&config.optimizer)?;
    let mut progress = Progress {
        history: Vec::new(),
        epochs: Vec::new(),
        best: None,
        restarts: Vec::new(),
    };

    let mut start = 0;
    if config.resume {
        let resume_error = |reason: String| TrainError::Resume {
            path: last_dir.clone(),
            reason,
        };
        let state = read_checkpoint_state(&last_dir).map_err(|e| resume_error(e.to_string()))?;
        let differences = config_differences(&state.config, config);
        if !differences.is_empty() {
            return Err(resume_error(format!(
                "the settings differ from the saved run's in {}",
                differences.join(", ")
            )));
        }
        if state.model_config != model_config {
            return Err(resume_error(
                "the model description differs from the saved run's".into(),
            ));
        }
        if !state.has_optimizer {
            return Err(resume_error("the checkpoint has no optimizer state".into()));
        }
        model = load_checkpoint_weights(model, &last_dir, device)?;
        optimizer = load_checkpoint_optimizer(optimizer, &model, &last_dir, device)?;
        if state.swa.running_snapshots > 0 {
            average.average = Some(load_checkpoint_average::<B::InnerBackend, _>(
                model.valid(),
                &last_dir,
                device,
            )?);
            average.snapshots = state.swa.running_snapshots;
        }
        averaged_snapshots = state.swa.averaged_snapshots;
        start = state.iteration;
        progress.history = state.history;
        progress.epochs = state.epochs;
        progress.best = state.best;
        progress.restarts = state.restarts;
    } else if locate_checkpoint(&last_dir).is_ok() && config.overwrite {
        for dir in [&last_dir, &best_dir, &restart_dir] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| TrainError::Checkpoint {
                    path: dir.clone(),
                    reason: format!("cannot delete it for `overwrite: true`: {e}"),
                })?;
            }
        }
    } else if locate_checkpoint(&last_dir).is_ok() {
        return Err(TrainError::config(
            "out",
            format!(
                "'{}' already holds a run; set `resume: true` to continue it, `overwrite: true` to replace it, or choose another folder",
                config.out.display()
            ),
        ));
    }

    // After loading a checkpoint: parameter ids come with the weights.
    optimizer.set_encoder_params(model.encoder().param_ids(crate::nn::EncoderPart::All));

    // The schedule, the phase start and the run's length of the current attempt.
    let attempt = |restarts: &[RestartRecord]| -> (LrSchedule, usize, usize) {
        let a = Attempt { config, restarts };
        (a.schedule(), a.phase_start(), a.run_iters())
    };
    let (mut schedule, mut phase_start, mut total) = attempt(&progress.restarts);
    run_epochs = run_epochs.max(total.div_ceil(per_epoch));
    let at_schedule = |iteration: usize, phase_start: usize| {
        (iteration + config.freeze_encoder_iters).saturating_sub(phase_start)
    };

    let freezing = config.freeze_encoder_iters > 0;
    let mut frozen = false;
    if freezing {
        frozen = schedule.encoder_frozen_at(at_schedule(start, phase_start));
        model = model.set_encoder_trainable(config.frozen_part, !frozen);
    }

    let stop_at = |total: usize| config.stop_at_iteration.unwrap_or(total).min(total);
    let mut stop = stop_at(total);
    let bar = progress_bar(config.progress, start, total);
    let say = |line: String| {
        if config.progress {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let mut epoch_started = Instant::now();
    let mut last_written_at = None;

    let state_of = |progress: &Progress, iteration: usize, swa: SwaRecord| CheckpointState {
        format: CHECKPOINT_FORMAT.into(),
        format_version: CHECKPOINT_FORMAT_VERSION,
        detlab_version: env!("CARGO_PKG_VERSION").into(),
        iteration,
        epochs_done: progress.epochs.len(),
        has_optimizer: true,
        config: config.clone(),
        model_config: model_config.clone(),
        history: progress.history.clone(),
        epochs: progress.epochs.clone(),
        best: progress.best.clone(),
        swa,
        restarts: progress.restarts.clone(),
    };
    let save_last = |model: &M,
                     optimizer: &TrainOptimizer<B, M>,
                     progress: &Progress,
                     average: &WeightAverage<M::InnerModule>,
                     averaged_snapshots: usize,
                     iteration: usize|
     -> Result<CheckpointInfo, TrainError> {
        let state = state_of(
            progress,
            iteration,
            SwaRecord {
                averaged_snapshots,
                running_snapshots: average.snapshots,
            },
        );
        write_checkpoint_with_average(
            &last_dir,
            model,
            Some(optimizer),
            average.average.as_ref(),
            &state,
        )?;
        Ok(CheckpointInfo {
            path: last_dir.clone(),
            iteration,
            epochs_done: progress.epochs.len(),
            metric: None,
            averaged_snapshots,
        })
    };

    let mut iteration = start;
    while iteration < stop {
        if interrupted(iteration) {
            bar.abandon();
            save_last(
                &model,
                &optimizer,
                &progress,
                &average,
                averaged_snapshots,
                iteration,
            )?;
            return Err(TrainError::Interrupted {
                iteration,
                checkpoint: last_dir,
            });
        }
        let epoch = iteration / per_epoch;
        // The schedule's iteration (behind the run's after a restart).
        let k = at_schedule(iteration, phase_start);
        if freezing && frozen && !schedule.encoder_frozen_at(k) {
            model = model.set_encoder_trainable(config.frozen_part, true);
            frozen = false;
        }
        if config.restart.enabled()
            && progress.restarts.is_empty()
            && iteration == config.freeze_encoder_iters
        {
            // The start of the whole-network phase: what a restart comes back to.
            let state = state_of(&progress, iteration, SwaRecord::default());
            write_checkpoint::<B, M>(&restart_dir, &model, Some(&optimizer), &state)?;
        }
        if let Some(swa) = &swa
            && swa.snapshot_before(k)
        {
            average.add::<B::InnerBackend>(model.valid());
        }
        let lr = match swa.as_ref().and_then(|s| s.lr_at(k)) {
            Some(cyclic) => cyclic,
            None => schedule.lr_at(k),
        };
        let it = iteration as u64;
        let mut patches = sampler.sample_batch(
            config.batch,
            &mut iteration_rng(config.seed, it, RngStream::Sampling),
        );
        let mut augmentation_rng = iteration_rng(config.seed, it, RngStream::Augmentation);
        augment_batch(
            &mut patches,
            &config.augment,
            config.patch,
            BoxConvention::NnDetection,
            &mut augmentation_rng,
        );
        let batch = patches_to_batch::<B>(&patches, device)?;
        let loss = model.loss(&batch, &mut iteration_rng(config.seed, it, RngStream::Loss))?;
        let value = loss.total_value();
        let components: BTreeMap<String, f64> = loss.component_values().into_iter().collect();
        if !value.is_finite() || components.values().any(|v| !v.is_finite()) {
            bar.abandon();
            let listed: Vec<String> = components.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(TrainError::NonFiniteLoss {
                iteration,
                epoch,
                total: value,
                components: listed.join(", "),
            });
        }
        let grads = loss.total.backward();
        let (updated, grad_norm) = optimizer.step(lr, model, grads);
        model = updated;
        progress.history.push(IterationRecord {
            iteration,
            epoch,
            lr,
            loss: value,
            components,
            grad_norm,
            encoder_frozen: frozen,
        });
        bar.inc(1);
        bar.set_message(format!(
            "epoch {}/{} loss {value:.4} lr {lr:.2e}",
            epoch + 1,
            run_epochs
        ));

        // After a restart the run may end inside an epoch: that part is an epoch too.
        if (iteration + 1) % per_epoch == 0 || iteration + 1 == total {
            if iteration + 1 == total
                && let Some(averaged) = average.average.take()
            {
                // The end of the SWA phase: the average becomes the model (nnDetection's
                // `on_train_end` transfer), before the last validation.
                model = M::from_inner(averaged);
                averaged_snapshots = std::mem::take(&mut average.snapshots);
            }
            let losses: Vec<f64> = progress
                .history
                .iter()
                .rev()
                .take_while(|r| r.epoch == epoch)
                .map(|r| r.loss)
                .collect();
            let train_loss_mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
            let due = (epoch + 1).is_multiple_of(config.validate_every) || iteration + 1 == total;
            let metrics = if due && !validation.is_empty() {
                validate(&model.valid(), &validation, config.batch, device)?
            } else {
                BTreeMap::new()
            };
            progress.epochs.push(EpochRecord {
                epoch,
                train_loss_mean,
                metrics: metrics.clone(),
                seconds: epoch_started.elapsed().as_secs_f64(),
            });
            let mut line = format!(
                "epoch {}/{}: train loss {train_loss_mean:.4}",
                epoch + 1,
                run_epochs
            );
            if averaged_snapshots > 0 && iteration + 1 == total {
                line.push_str(&format!(", SWA average of {averaged_snapshots} epochs"));
            }
            if !metrics.is_empty() {
                let Some(&value) = metrics.get(&config.best_metric) else {
                    let keys: Vec<&String> = metrics.keys().collect();
                    return Err(TrainError::config(
                        "best_metric",
                        format!(
                            "'{}' is not a validation metric; available: {keys:?}",
                            config.best_metric
                        ),
                    ));
                };
                for key in [
                    "mAP_IoU_0.10_0.50_0.05_MaxDet_100",
                    "AP_IoU_0.10_MaxDet_100",
                ] {
                    if let Some(v) = metrics.get(key) {
                        line.push_str(&format!(", {key} {v:.4}"));
                    }
                }
                let better = progress
                    .best
                    .as_ref()
                    .and_then(|b| b.metric)
                    .is_none_or(|previous| value > previous);
                if value.is_finite() && better {
                    let info = CheckpointInfo {
                        path: best_dir.clone(),
                        iteration: iteration + 1,
                        epochs_done: progress.epochs.len(),
                        metric: Some(value),
                        averaged_snapshots,
                    };
                    progress.best = Some(info);
                    let state = CheckpointState {
                        has_optimizer: false,
                        ..state_of(
                            &progress,
                            iteration + 1,
                            SwaRecord {
                                averaged_snapshots,
                                running_snapshots: 0,
                            },
                        )
                    };
                    write_checkpoint::<B, M>(&best_dir, &model, None, &state)?;
                    line.push_str(" (best)");
                }
                let restart = Attempt {
                    config,
                    restarts: &progress.restarts,
                }
                .restart_due(&progress.epochs, iteration + 1);
                if let Some(record) = restart {
                    // Back to the weights and optimiser state of the whole-network phase's
                    // start; the phase runs again with the restart's warm-up.
                    model = load_checkpoint_weights(model, &restart_dir, device)?;
                    model = model.set_encoder_trainable(config.frozen_part, true);
                    optimizer = load_checkpoint_optimizer(
                        TrainOptimizer::<B, M>::new(&config.optimizer)?,
                        &model,
                        &restart_dir,
                        device,
                    )?;
                    optimizer
                        .set_encoder_params(model.encoder().param_ids(crate::nn::EncoderPart::All));
                    line.push_str(&format!(
                        "; restart {}: {} {} did not exceed {:.4} + {} within {} iterations; \
                         the whole-network phase starts again with a {}-iteration warm-up to lr {:e}",
                        progress.restarts.len() + 1,
                        config.best_metric,
                        record.metric,
                        record.baseline,
                        config.restart.min_improvement,
                        config.restart.patience_iters,
                        record.warmup_iters,
                        record.lr
                    ));
                    progress.restarts.push(record);
                    (schedule, phase_start, total) = attempt(&progress.restarts);
                    stop = stop_at(total);
                    run_epochs = total.div_ceil(per_epoch);
                    bar.set_length(total as u64);
                }
            }
            say(line);
            save_last(
                &model,
                &optimizer,
                &progress,
                &average,
                averaged_snapshots,
                iteration + 1,
            )?;
            last_written_at = Some(iteration + 1);
            epoch_started = Instant::now();
        }
        iteration += 1;
    }
    bar.finish_and_clear();
    let done = stop.max(start);
    let last = if last_written_at == Some(done) {
        CheckpointInfo {
            path: last_dir.clone(),
            iteration: done,
            epochs_done: progress.epochs.len(),
            metric: None,
            averaged_snapshots,
        }
    } else if start == done && done == total {
        // A finished run resumed again: nothing ran, the saved `last` stands.
        CheckpointInfo {
            path: last_dir.clone(),
            iteration: done,
            epochs_done: progress.epochs.len(),
            metric: None,
            averaged_snapshots,
        }
    } else {
        save_last(
            &model,
            &optimizer,
            &progress,
            &average,
            averaged_snapshots,
            done,
        )?
    };
    Ok((
        model,
        TrainRun {
            history: progress.history,
            epochs: progress.epochs,
            best: progress.best,
            last,
            config: config.clone(),
            model_config,
            restarts: progress.restarts,
            iterations_done: done,
            finished: done == total,
        },
    ))
}

/// Whether `dir` holds a complete checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    locate_checkpoint(dir).is_ok()
}

#[cfg(test)]
mod tests;
