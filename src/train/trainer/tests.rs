//! Tests of `trainer`.

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
    let with_state: std::collections::HashSet<_> = saved.params_with_state().into_iter().collect();
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
