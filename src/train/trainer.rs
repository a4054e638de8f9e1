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
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, test_device};
    use crate::nn::{DispatchDevice, RetinaUNet, RetinaUNetConfig};
    use crate::train::augment::AugmentConfig;
    use crate::train::batch::patches_to_batch;
    use crate::train::optim::{OptimizerConfig, OptimizerKind};
    use crate::train::sampler::crop_patch;
    use crate::train::testing::cube_case;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    use burn::tensor::backend::Backend;

    type B = TestBackend;

    type Cases = Vec<Arc<dyn SampleSource>>;

    fn cases() -> (Cases, Cases) {
        let train: Vec<Arc<dyn SampleSource>> = vec![
            Arc::new(cube_case(
                "t0",
                [24, 24, 24],
                &[([3, 4, 5], [6, 5, 7], 0), ([14, 15, 12], [5, 6, 6], 0)],
            )),
            Arc::new(cube_case("t1", [20, 24, 20], &[([8, 2, 9], [7, 6, 5], 0)])),
        ];
        let val: Vec<Arc<dyn SampleSource>> = vec![Arc::new(cube_case(
            "v0",
            [24, 20, 24],
            &[([5, 6, 7], [6, 6, 6], 0)],
        ))];
        (train, val)
    }

    fn model_config() -> RetinaUNetConfig {
        RetinaUNetConfig::tiny(1, 1)
    }

    fn model(device: &DispatchDevice) -> RetinaUNet<B> {
        model_config().init::<B>(device).unwrap()
    }

    /// Train a tiny-Retina-U-Net `model` described by `model_config()` on the test device.
    fn fit(
        model: RetinaUNet<B>,
        train: Cases,
        val: Cases,
        cfg: &TrainConfig,
    ) -> Result<(RetinaUNet<B>, TrainRun), TrainError> {
        train_on_cases(
            model,
            json(&model_config()),
            train,
            val,
            cfg,
            &test_device(),
        )
    }

    fn config(out: &Path) -> TrainConfig {
        TrainConfig {
            epochs: 2,
            iters_per_epoch: 3,
            batch: 2,
            patch: [16, 16, 16],
            warmup_iters: 2,
            val_patches: 2,
            out: out.to_path_buf(),
            progress: false,
            ..Default::default()
        }
    }

    fn json(cfg: &RetinaUNetConfig) -> serde_json::Value {
        serde_json::to_value(cfg).unwrap()
    }

    struct Values {
        stack: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }

    impl<B: Backend> ModuleVisitor<B> for Values {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap();
            self.out.push((self.stack.join("."), v));
        }
    }

    /// Parameter values whose path starts with `prefix`.
    fn values<M: Module<B>>(model: &M, prefix: &str) -> Vec<(String, Vec<f32>)> {
        let mut v = Values {
            stack: Vec::new(),
            out: Vec::new(),
        };
        model.visit(&mut v);
        v.out
            .into_iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .collect()
    }

    #[test]
    fn same_seed_gives_identical_runs_with_validation_and_checkpoints() {
        let device = test_device();
        let (train, val) = cases();
        let m0 = model(&device);
        let dir = tempfile::tempdir().unwrap();
        let cfg_a = config(&dir.path().join("a"));
        let cfg_b = config(&dir.path().join("b"));
        let (ma, a) = fit(m0.clone(), train.clone(), val.clone(), &cfg_a).unwrap();
        let (_, b) = fit(m0.clone(), train.clone(), val.clone(), &cfg_b).unwrap();
        assert_eq!(a.losses(), b.losses(), "same seed, same losses");
        assert_eq!(a.history.len(), 6);
        assert!(a.losses().iter().all(|l| l.is_finite() && *l > 0.0));
        assert_eq!(a.epochs.len(), 2);
        // (Debug form: metrics may hold NaN, e.g. a FROC without true positives.)
        let metrics = |r: &TrainRun| {
            format!(
                "{:?}",
                r.epochs
                    .iter()
                    .map(|e| (&e.metrics, e.train_loss_mean))
                    .collect::<Vec<_>>()
            )
        };
        assert_eq!(metrics(&a), metrics(&b));
        for e in &a.epochs {
            assert!(
                e.metrics.contains_key("AP_IoU_0.10_MaxDet_100"),
                "{:?}",
                e.metrics.keys()
            );
            assert!(e.metrics.contains_key("mAP_IoU_0.10_0.50_0.05_MaxDet_100"));
        }
        let schedule = cfg_a.schedule();
        assert_eq!(
            a.learning_rates(),
            (0..6).map(|k| schedule.lr_at(k)).collect::<Vec<_>>()
        );
        assert!(a.finished && a.iterations_done == 6);
        assert_eq!(a.last.path, cfg_a.out.join("last"));
        let state = read_checkpoint_state(&a.last.path).unwrap();
        assert_eq!(state.iteration, 6);
        assert_eq!(
            state.history, a.history,
            "the history survives JSON bit for bit"
        );
        assert_eq!(format!("{:?}", state.epochs), format!("{:?}", a.epochs));
        assert_eq!(state.model_config, json(&model_config()));
        // The weights saved in `last` reproduce the returned model's outputs exactly.
        let loaded = load_checkpoint_weights(model(&device), &a.last.path, &device).unwrap();
        let x = Tensor::<B, 5>::random(
            [1, 1, 16, 16, 16],
            burn::tensor::Distribution::Default,
            &device,
        );
        let expected = ma.forward(x.clone()).unwrap();
        let got = loaded.forward(x).unwrap();
        assert!(got.class_logits.into_data() == expected.class_logits.into_data());
        assert!(got.box_deltas.into_data() == expected.box_deltas.into_data());
        // The validation metric is finite here, so a best checkpoint exists and holds weights.
        let best = a.best.as_ref().expect("a best checkpoint");
        assert!(
            best.path
                .join(crate::train::checkpoint::WEIGHTS_FILE)
                .is_file()
        );
        assert!(
            !best
                .path
                .join(crate::train::checkpoint::OPTIMIZER_FILE)
                .exists()
        );
        // A second run into the same folder needs `resume`.
        let err = fit(m0, train, val, &cfg_a).unwrap_err();
        assert!(err.to_string().contains("resume"), "{err}");
    }

    #[test]
    fn resuming_reproduces_the_uninterrupted_run_exactly() {
        let device = test_device();
        let (train, val) = cases();
        let m0 = model(&device);
        let dir = tempfile::tempdir().unwrap();
        let full_cfg = TrainConfig {
            freeze_encoder_iters: 2,
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Adam,
                amsgrad: true,
                weight_decay: 1e-4,
                ..Default::default()
            },
            lr: 1e-3,
            ..config(&dir.path().join("full"))
        };
        let (full_model, full) = fit(m0.clone(), train.clone(), val.clone(), &full_cfg).unwrap();
        let part_cfg = TrainConfig {
            out: dir.path().join("part"),
            stop_at_iteration: Some(4),
            ..full_cfg.clone()
        };
        let (_, part) = fit(m0.clone(), train.clone(), val.clone(), &part_cfg).unwrap();
        assert_eq!(part.iterations_done, 4);
        assert!(!part.finished);
        assert_eq!(part.losses()[..], full.losses()[..4]);
        // Resume into a model with other initial weights: the checkpoint replaces them.
        let resume_cfg = TrainConfig {
            resume: true,
            stop_at_iteration: None,
            ..part_cfg.clone()
        };
        let (resumed_model, resumed) =
            fit(model(&device), train.clone(), val.clone(), &resume_cfg).unwrap();
        assert_eq!(
            resumed.losses(),
            full.losses(),
            "the loss sequence continues bit for bit"
        );
        assert_eq!(resumed.learning_rates(), full.learning_rates());
        assert_eq!(resumed.epochs.len(), 2);
        assert_eq!(
            format!("{:?}", resumed.epochs[1].metrics),
            format!("{:?}", full.epochs[1].metrics)
        );
        assert!(
            values(&resumed_model, "") == values(&full_model, ""),
            "final weights are identical"
        );
        // Resuming with other settings or another model is refused, naming the difference.
        let changed = TrainConfig {
            lr: 0.5,
            ..resume_cfg.clone()
        };
        let err = fit(model(&device), train.clone(), val.clone(), &changed).unwrap_err();
        assert!(
            matches!(err, TrainError::Resume { .. }) && err.to_string().contains("lr"),
            "{err}"
        );
        let other = RetinaUNetConfig {
            head_convs: 1,
            ..model_config()
        };
        let err = train_on_cases(
            model(&device),
            json(&other),
            train,
            val,
            &resume_cfg,
            &device,
        )
        .unwrap_err();
        assert!(err.to_string().contains("model description"), "{err}");
    }

    #[test]
    fn the_frozen_encoder_is_bit_identical_until_the_phase_ends() {
        let device = test_device();
        let (train, _) = cases();
        let m0 = model(&device);
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            freeze_encoder_iters: 3,
            stop_at_iteration: Some(3),
            val_patches: 0,
            ..config(dir.path())
        };
        let (frozen, run_a) = fit(m0.clone(), train.clone(), vec![], &cfg).unwrap();
        assert!(
            values(&frozen, "encoder") == values(&m0, "encoder"),
            "encoder untouched while frozen"
        );
        assert!(
            values(&frozen, "decoder") != values(&m0, "decoder"),
            "decoder trained"
        );
        assert!(
            values(&frozen, "classifier") != values(&m0, "classifier"),
            "heads trained"
        );
        assert!(run_a.history.iter().all(|r| r.encoder_frozen));
        // Nor did the frozen encoder (norms included) gain optimiser state: no momentum will
        // be applied to it when it thaws, as in PyTorch.
        let saved = load_checkpoint_optimizer(
            TrainOptimizer::new(&cfg.optimizer).unwrap(),
            &frozen,
            &dir.path().join("last"),
            &device,
        )
        .unwrap();
        let with_state: std::collections::HashSet<_> =
            saved.params_with_state().into_iter().collect();
        let encoder_ids = frozen.encoder.param_ids(crate::nn::EncoderPart::All);
        assert!(!encoder_ids.is_empty());
        assert!(
            encoder_ids.iter().all(|id| !with_state.contains(id)),
            "encoder has optimiser state"
        );
        assert!(
            !with_state.is_empty(),
            "the decoder and heads have momentum"
        );
        let cfg = TrainConfig {
            resume: true,
            stop_at_iteration: Some(4),
            ..cfg
        };
        let (thawed, run_b) = fit(model(&device), train, vec![], &cfg).unwrap();
        let before = values(&frozen, "encoder");
        let after = values(&thawed, "encoder");
        assert_eq!(before.len(), after.len());
        assert!(
            before.iter().zip(&after).all(|(a, b)| a.1 != b.1),
            "every encoder tensor changed after unfreezing"
        );
        assert!(!run_b.history[3].encoder_frozen);
        assert!(
            thawed.encoder.stem.convs[0]
                .conv
                .weight
                .val()
                .is_require_grad()
        );
    }

    #[test]
    fn a_stalled_run_restarts_exactly_once_with_the_new_schedule_and_resumes_with_it() {
        let device = test_device();
        let (train, val) = cases();
        let dir = tempfile::tempdir().unwrap();
        // AP cannot rise by 2: the first validation past the patience restarts the run.
        let cfg = TrainConfig {
            epochs: 4,
            iters_per_epoch: 2,
            freeze_encoder_iters: 1,
            val_patches: 1,
            restart: crate::train::RestartConfig {
                patience_iters: 2,
                min_improvement: 2.0,
                warmup_iters: 3,
                lr: 0.004,
                max_restarts: 1,
            },
            ..config(&dir.path().join("full"))
        };
        let m0 = model(&device);
        let (_, run) = fit(m0.clone(), train.clone(), val.clone(), &cfg).unwrap();
        assert_eq!(run.restarts.len(), 1, "{:?}", run.restarts);
        let restart = &run.restarts[0];
        assert_eq!(
            restart.iteration, 4,
            "the first validation past 1 + 2 iterations"
        );
        assert_eq!((restart.warmup_iters, restart.lr), (3, 0.004));
        assert_eq!(restart.baseline, 0.0, "not validated before the phase");
        // The run grows by the 3 discarded iterations; the new phase replays the schedule
        // from its start with the restart's warm-up, then PolyLR; the last epoch is partial.
        assert_eq!(run.history.len(), 11);
        assert!(run.finished && run.iterations_done == 11);
        let new = LrSchedule {
            lr: 0.004,
            warmup_iters: 3,
            ..cfg.schedule()
        };
        let expected: Vec<f64> = (0..4)
            .map(|k| cfg.schedule().lr_at(k))
            .chain((4..11).map(|i| new.lr_at(i - 3)))
            .collect();
        assert_eq!(run.learning_rates(), expected);
        assert!(run.history[0].encoder_frozen);
        assert!(run.history[1..].iter().all(|r| !r.encoder_frozen));
        assert_eq!(run.epochs.len(), 6);
        assert!(run.epochs[5].metrics.contains_key(&cfg.best_metric));
        let point = read_checkpoint_state(&cfg.out.join(RESTART_POINT)).unwrap();
        assert_eq!(point.iteration, 1);
        let last = read_checkpoint_state(&cfg.out.join("last")).unwrap();
        assert_eq!(last.restarts, run.restarts);
        // Stopped after the restart and resumed: the same run, restart included.
        let part = TrainConfig {
            out: dir.path().join("part"),
            stop_at_iteration: Some(6),
            ..cfg.clone()
        };
        let (_, first) = fit(m0, train.clone(), val.clone(), &part).unwrap();
        assert_eq!(first.restarts, run.restarts);
        let rest = TrainConfig {
            resume: true,
            stop_at_iteration: None,
            ..part
        };
        let (_, resumed) = fit(model(&device), train, val, &rest).unwrap();
        assert_eq!(resumed.restarts, run.restarts);
        assert_eq!(resumed.learning_rates(), run.learning_rates());
        assert_eq!(resumed.losses(), run.losses());
    }

    #[test]
    fn an_existing_run_is_kept_unless_overwrite_is_set() {
        let device = test_device();
        let (train, _) = cases();
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            val_patches: 0,
            epochs: 1,
            iters_per_epoch: 1,
            ..config(dir.path())
        };
        let first = fit(model(&device), train.clone(), vec![], &cfg).unwrap();
        let saved = std::fs::read_dir(&first.1.last.path).unwrap().count();
        let err = fit(model(&device), train.clone(), vec![], &cfg)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already holds a run") && err.contains("overwrite: true"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&first.1.last.path).unwrap().count(),
            saved,
            "nothing deleted"
        );
        let cfg = TrainConfig {
            overwrite: true,
            ..cfg
        };
        let second = fit(model(&device), train, vec![], &cfg).unwrap();
        assert_eq!(second.1.iterations_done, 1);
    }

    #[test]
    fn a_diverging_loss_stops_the_run_naming_iteration_and_components() {
        let device = test_device();
        let (train, _) = cases();
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            val_patches: 0,
            lr: 1e12,
            warmup_iters: 0,
            epochs: 4,
            ..config(dir.path())
        };
        let err = fit(model(&device), train, vec![], &cfg).unwrap_err();
        let TrainError::NonFiniteLoss {
            iteration,
            epoch,
            components,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert!(*iteration >= 1, "the first loss is finite");
        assert!(
            components.contains("cls=") && components.contains("seg_ce="),
            "{components}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "the loss is not finite at iteration {} (epoch {}; both counted from 1, as in the progress lines): total ",
                iteration + 1,
                epoch + 1
            )),
            "{message}"
        );
    }

    #[test]
    fn non_finite_images_are_refused_before_training() {
        // (A NaN voxel would not even give a NaN loss: ReLU after a NaN instance norm yields 0.)
        let device = test_device();
        let mut case = cube_case("nan", [16, 16, 16], &[([4, 4, 4], [6, 6, 6], 0)]);
        case.image[[0, 8, 9, 10]] = f32::NAN;
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            val_patches: 0,
            ..config(dir.path())
        };
        let err = fit(model(&device), vec![Arc::new(case)], vec![], &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("case 'nan'") && err.contains("[0, 8, 9, 10]"),
            "{err}"
        );
    }

    #[test]
    fn an_interruption_saves_last_and_resume_completes_the_run() {
        let device = test_device();
        let (train, _) = cases();
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            val_patches: 0,
            epochs: 1,
            ..config(dir.path())
        };
        let err = run(
            model(&device),
            json(&model_config()),
            train.clone(),
            vec![],
            &cfg,
            &device,
            &|i| i == 2,
        )
        .map(|_| ())
        .unwrap_err();
        match &err {
            TrainError::Interrupted {
                iteration,
                checkpoint,
            } => {
                assert_eq!(*iteration, 2);
                assert_eq!(read_checkpoint_state(checkpoint).unwrap().iteration, 2);
            }
            other => panic!("{other}"),
        }
        assert!(
            err.to_string()
                .contains("after 2 iteration(s) (the next would have been iteration 3"),
            "{err}"
        );
        let cfg = TrainConfig {
            resume: true,
            ..cfg
        };
        let (_, done) = fit(model(&device), train, vec![], &cfg).unwrap();
        assert_eq!(done.history.len(), 3);
        assert!(done.finished);
    }

    #[test]
    fn sgd_on_one_fixed_batch_more_than_halves_the_loss() {
        let device = test_device();
        crate::nn::backend::seed(&device, 11);
        let case = cube_case("fixed", [16, 16, 16], &[([4, 3, 6], [7, 6, 6], 0)]);
        let patches = vec![crop_patch(&case, [0, 0, 0], [16, 16, 16], 0.5, true)];
        let batch = patches_to_batch::<B>(&patches, &device).unwrap();
        let mut m = model(&device);
        let mut optimizer =
            TrainOptimizer::<B, RetinaUNet<B>>::new(&OptimizerConfig::default()).unwrap();
        let mut losses = Vec::new();
        for i in 0..40 {
            let loss = m
                .loss(&batch, &mut iteration_rng(0, i, RngStream::Loss))
                .unwrap();
            losses.push(loss.total_value());
            m = optimizer.step(0.02, m, loss.total.backward()).0;
        }
        assert!(losses[39] < 0.5 * losses[0], "{losses:?}");
    }

    #[test]
    fn inputs_that_do_not_fit_the_model_are_refused() {
        let device = test_device();
        let (train, _) = cases();
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            patch: [12, 16, 16],
            augment: AugmentConfig::none(),
            ..config(dir.path())
        };
        let err = fit(model(&device), train.clone(), vec![], &cfg).unwrap_err();
        assert!(err.to_string().contains("patch divisor"), "{err}");
        let two = cube_case("k", [16, 16, 16], &[([1, 1, 1], [5, 5, 5], 1)]);
        let err = train_on_cases(
            model(&device),
            json(&model_config()),
            vec![Arc::new(two)],
            vec![],
            &config(dir.path()),
            &device,
        )
        .unwrap_err();
        assert!(err.to_string().contains("case 'k' has class 1"), "{err}");
        let cfg = TrainConfig {
            best_metric: "AP_IoU_0.77".into(),
            epochs: 1,
            ..config(dir.path())
        };
        let (_, val) = cases();
        let err = fit(model(&device), train, val, &cfg).unwrap_err();
        assert!(err.to_string().contains("AP_IoU_0.77"), "{err}");
    }
}
