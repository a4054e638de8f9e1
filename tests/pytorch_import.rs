//! PyTorch checkpoint import and export against the fixtures of `tests/fixtures/pth/`
//! (made by `make_fixtures.py` with the real dynamic-network-architectures classes; see its
//! README): imported encoders reproduce PyTorch's skip outputs, unsafe and damaged files are
//! refused naming the file, and exports read back bit-identically.

use std::io::Write;
use std::path::{Path, PathBuf};

use detlab::nn::{EncoderConfig, ResEncConfig, ScriptBackend};
use detlab::pretrain::pytorch::{ExportNames, PytorchOptions, load_file, save_safetensors};
use detlab::pretrain::transfer::named_tensors;
use detlab::pretrain::{Method, PretrainError, Pretrained};
use detlab::volume::Volume;

type B = ScriptBackend;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn device() -> detlab::nn::DispatchDevice {
    detlab::nn::device("cpu").unwrap()
}

/// The error of a load that must fail (`Pretrained` has no `Debug`).
fn load_error(path: &Path, options: &PytorchOptions) -> PretrainError {
    match load_file::<B>(path, options, &device()) {
        Ok(_) => panic!("{} loaded but must not", path.display()),
        Err(e) => e,
    }
}

/// A little-endian f32 `.npy` file (C order): shape and values.
fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&raw[..6], b"\x93NUMPY", "{}", path.display());
    let (len, start) = match raw[6] {
        1 => (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(raw[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&raw[start..start + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let dims = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = dims
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let values: Vec<f32> = raw[start + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

/// Run `pretrained`'s encoder, with the stem of dataset `stem` (0 = the encoder's own), on the
/// fixture input `<prefix>_input.npy` and return the largest |difference| to PyTorch's skips.
fn max_skip_difference(pretrained: &Pretrained<B>, prefix: &str, stem: usize) -> f32 {
    use burn::tensor::{Tensor, TensorData};
    let (shape, values) = npy(&fixture(&format!("{prefix}_input.npy")));
    let device = device();
    let worst = if stem == 0 {
        let volume = Volume::from_array(
            ndarray::Array4::from_shape_vec((shape[1], shape[2], shape[3], shape[4]), values)
                .unwrap(),
            [1.0; 3],
        );
        let skips = pretrained
            .network
            .encoder
            .features(&volume, &device)
            .unwrap();
        skips
            .iter()
            .enumerate()
            .map(|(s, v)| {
                let (_, want) = npy(&fixture(&format!("{prefix}_skip{s}.npy")));
                assert_eq!(v.data.len(), want.len(), "skip {s} size");
                v.data
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max)
    } else {
        let x = Tensor::<B, 5>::from_data(TensorData::new(values, shape.clone()), &device);
        let net = &pretrained.network;
        let skips = net.encoder.forward_stages(net.stem(stem).forward(x));
        skips
            .into_iter()
            .enumerate()
            .map(|(s, t)| {
                let (_, want) = npy(&fixture(&format!("{prefix}_skip{s}.npy")));
                let got: Vec<f32> = t.into_data().to_vec().unwrap();
                assert_eq!(got.len(), want.len(), "skip {s} size");
                got.iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max)
    };
    eprintln!("{prefix} (stem {stem}): max |detlab - PyTorch| over the skips = {worst:.3e}");
    worst
}

fn tiny_resenc() -> EncoderConfig {
    EncoderConfig::Resenc(ResEncConfig {
        widths: vec![4, 8, 16],
        blocks_per_stage: vec![1, 1, 1],
        strides: vec![[1, 1, 1], [2, 2, 2], [1, 2, 2]],
        kernel_sizes: vec![[3, 3, 3], [3, 3, 3], [1, 3, 3]],
        ..ResEncConfig::resenc_l(1)
    })
}

#[test]
fn nnssl_checkpoint_imports_with_its_plan_and_reproduces_pytorch() {
    let p = load_file::<B>(
        &fixture("nnssl_resenc.pth"),
        &PytorchOptions::default(),
        &device(),
    )
    .unwrap();
    assert_eq!(
        p.state.network.encoder,
        tiny_resenc(),
        "the plan's architecture"
    );
    assert_eq!(p.state.method, Method::Mae, "BaseMAETrainer");
    let plan = &p.state.data[0];
    assert_eq!(plan.spacing, [1.5, 1.0, 1.0]);
    assert_eq!(plan.normalization, "z-score per image");
    assert_eq!(plan.channels, 1);
    assert_eq!(p.state.config.patch, [8, 12, 16]);
    assert!(
        plan.source.contains("BaseMAETrainer") && plan.source.contains("Dataset745_TinyFixture"),
        "{}",
        plan.source
    );
    assert!(max_skip_difference(&p, "nnssl_resenc", 0) <= 1e-5);
    assert!(p.describe().contains("mae"));
}

#[test]
fn plain_conv_unet_imports_as_the_plain_encoder_with_its_stem_from_stage_0() {
    let p = load_file::<B>(
        &fixture("nnssl_plain.pth"),
        &PytorchOptions::default(),
        &device(),
    )
    .unwrap();
    let EncoderConfig::Retunet(c) = &p.state.network.encoder else {
        panic!("not the plain encoder: {:?}", p.state.network.encoder)
    };
    assert_eq!(
        (c.in_channels, c.convs_per_stage, c.conv_bias, c.activation),
        (2, 2, true, detlab::nn::blocks::Activation::Relu)
    );
    assert_eq!(c.widths, [4, 8, 16]);
    assert_eq!(p.state.method, Method::ModelsGenesis);
    assert!(max_skip_difference(&p, "nnssl_plain", 0) <= 1e-5);
}

#[test]
fn spark_checkpoint_without_a_plan_says_what_to_pass_and_imports_with_it() {
    let path = fixture("spark_resenc.pth");
    let e = load_error(&path, &PytorchOptions::default()).to_string();
    for part in [
        "spark_resenc.pth",
        "nnssl_adaptation_plan",
        "SparkMAETrainer saves none",
        "architecture:",
        "[4, 8, 16]",
    ] {
        assert!(e.contains(part), "missing '{part}' in: {e}");
    }
    let options = PytorchOptions {
        encoder: Some(tiny_resenc()),
    };
    let p = load_file::<B>(&path, &options, &device()).unwrap();
    assert_eq!(p.state.method, Method::Spark);
    assert!(max_skip_difference(&p, "spark_resenc", 0) <= 1e-5);
    // A wrong architecture is an error naming the key, not a silent partial load.
    let wrong = PytorchOptions {
        encoder: Some(EncoderConfig::Resenc(ResEncConfig::tiny(1))),
    };
    let e = load_error(&path, &wrong).to_string();
    assert!(
        e.contains("spark_resenc.pth") && e.contains("key `encoder."),
        "{e}"
    );
}

#[test]
fn multitalent_stems_import_by_dataset_id_and_each_reproduces_pytorch() {
    let p = load_file::<B>(
        &fixture("multitalent_resenc.pth"),
        &PytorchOptions::default(),
        &device(),
    )
    .unwrap();
    let stems: Vec<(String, usize)> = p
        .state
        .stems()
        .iter()
        .map(|s| (s.dataset.clone(), s.channels))
        .collect();
    assert_eq!(
        stems,
        [
            ("3".to_string(), 1),
            ("17".to_string(), 2),
            ("220".to_string(), 3)
        ]
    );
    assert_eq!(p.state.method, Method::Multitalent);
    assert_eq!(p.state.data.len(), 3);
    assert_eq!(p.state.data[0].spacing, [1.0, 0.8, 0.8]);
    for (i, id) in ["3", "17", "220"].iter().enumerate() {
        assert!(
            max_skip_difference(&p, &format!("multitalent_resenc_{id}"), i) <= 1e-5,
            "stem {id}"
        );
    }
    // transfer's "select:<id>" finds the stem under the dataset id.
    let detector =
        detlab::nn::RetinaUNetConfig::new(p.state.network.encoder.with_in_channels(2), 1)
            .init::<B>(&device())
            .unwrap();
    let options = detlab::pretrain::TransferOptions {
        stem: detlab::pretrain::StemPolicy::Select("17".into()),
        ..Default::default()
    };
    let (detector, report) = detlab::pretrain::transfer(detector, &p, &options).unwrap();
    assert!(report.stem.contains("'17' (2 ch)"), "{}", report.stem);
    let ours = named_tensors(&detector);
    let theirs = named_tensors(&p.network);
    assert_eq!(
        ours["encoder.stem.convs.0.conv.weight"],
        theirs["stems.0.convs.0.conv.weight"]
    );
}

#[test]
fn export_reimports_bit_identically_under_both_namings() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture_name, names) in [
        ("nnssl_resenc.pth", ExportNames::Nnssl),
        ("multitalent_resenc.pth", ExportNames::Nnssl),
        ("nnssl_plain.pth", ExportNames::Nnssl),
        ("nnssl_resenc.pth", ExportNames::Detlab),
    ] {
        let p = load_file::<B>(
            &fixture(fixture_name),
            &PytorchOptions::default(),
            &device(),
        )
        .unwrap();
        let out = dir
            .path()
            .join(format!("{fixture_name}.{names:?}.safetensors"));
        let written = save_safetensors(&p, &out, names).unwrap();
        let back = load_file::<B>(&out, &PytorchOptions::default(), &device()).unwrap();
        assert_eq!(back.state.network.encoder, p.state.network.encoder);
        assert_eq!(back.state.stems(), p.state.stems());
        assert_eq!(back.state.data, p.state.data);
        let (a, b) = (named_tensors(&p.network), named_tensors(&back.network));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            let (x, y): (Vec<f32>, Vec<f32>) = (v.to_vec().unwrap(), b[k].to_vec().unwrap());
            assert!(
                x.iter().zip(&y).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{k} differs after {names:?} export"
            );
        }
        if names == ExportNames::Nnssl {
            // Canonical names plus their all_modules aliases, in nnssl's layout.
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let keys: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            assert_eq!(written, keys.len());
            let want = if fixture_name.starts_with("multitalent") {
                "encoder.stem.220.convs.0.all_modules.0.weight"
            } else if fixture_name.contains("plain") {
                "encoder.stages.0.0.convs.1.all_modules.1.bias"
            } else {
                "encoder.stages.1.blocks.0.skip.1.conv.weight"
            };
            assert!(keys.iter().any(|k| k == want), "{want} not in {keys:?}");
        }
    }
}

#[test]
fn an_alias_that_differs_from_its_parameter_is_an_error_naming_both_keys() {
    let e = load_error(&fixture("tampered_alias.pth"), &PytorchOptions::default()).to_string();
    for part in [
        "tampered_alias.pth",
        "`encoder.stem.convs.0.all_modules.0.weight`",
        "`encoder.stem.convs.0.conv.weight`",
        "different values",
    ] {
        assert!(e.contains(part), "missing {part} in: {e}");
    }
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let bytes = std::fs::read(fixture("nnssl_resenc.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 10, 100] {
        let path = dir.path().join(format!("cut_{cut}.pth"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_error(&path, &PytorchOptions::default()).to_string();
        assert!(e.contains(&format!("cut_{cut}.pth")), "{e}");
    }
}

#[test]
fn a_pickle_naming_os_system_is_refused_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pth");
    let marker = dir.path().join("pwned");
    // A torch.save-shaped zip whose data.pkl is pickle.dumps of an object reducing to
    // os.system("touch <marker>"), protocol 2.
    let command = format!("touch {}", marker.display());
    let mut pkl = b"\x80\x02cposix\nsystem\nq\x00X".to_vec();
    pkl.extend((command.len() as u32).to_le_bytes());
    pkl.extend(command.as_bytes());
    pkl.extend(b"q\x01\x85q\x02Rq\x03.");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("evil/data.pkl", stored).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.start_file("evil/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    zip.finish().unwrap();
    match load_file::<B>(&path, &PytorchOptions::default(), &device()) {
        Err(e @ PretrainError::UnsafePickle { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("evil.pth") && text.contains("posix.system"),
                "{text}"
            );
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("an os.system pickle was accepted"),
    }
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn scripts_import_select_a_stem_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mt.safetensors");
    let script = format!(
        r#"
        let ckpt = load_pretrained("{mt}");
        let stems = ckpt.stems();
        let model = detector("retina_unet", ckpt.backbone(), #{{num_classes: 1}});
        let report = transfer(model, ckpt, #{{stem: "select:220"}});
        let saved = save_pretrained(ckpt, "{out}", #{{names: "nnssl"}});
        let back = load_pretrained("{out}");
        let spark = load_pretrained("{spark}", #{{architecture: backbone("resenc_tiny", #{{widths: [4, 8, 16], blocks_per_stage: [1, 1, 1], strides: [[1, 1, 1], [2, 2, 2], [1, 2, 2]], kernel_sizes: [[3, 3, 3], [3, 3, 3], [1, 3, 3]]}})}});
        [stems.len(), stems[2].dataset, report.stem, saved.tensors, back.stems().len(), spark.info().method]
        "#,
        mt = fixture("multitalent_resenc.pth").display(),
        spark = fixture("spark_resenc.pth").display(),
        out = out.display(),
    );
    let mut interpreter = detlab::script::Interpreter::new(dir.path().to_path_buf());
    let result = interpreter
        .eval_source(&script, "pytorch.rhai")
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{result:?}");
    for part in ["3", "\"220\"", "'220' (3 ch)", "\"spark\""] {
        assert!(text.contains(part), "missing {part} in {text}");
    }
    assert!(out.is_file());
}

/// Issue 9's acceptance: a script loads an nnssl `.pth` (fixture (a)), transfers its encoder
/// into a Retina U-Net built from the checkpoint's own backbone and fine-tunes it a few
/// iterations with a frozen-encoder phase.
#[test]
fn a_script_fine_tunes_a_detector_from_an_nnssl_pth() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        let ckpt = load_pretrained("{nnssl}");
        let model = detector("retina_unet", ckpt.backbone(), #{{num_classes: 1, fpn_channels: 8, head_channels: 8, head_channels_per_group: 4}});
        let probe = pool_volume(#{{seed: 7, shape: [16, 16, 16]}}, 0);
        let fresh = features(model, probe);
        let report = transfer(model, ckpt, #{{scope: "encoder"}});
        let loaded = features(model, probe);
        let theirs = features(ckpt, probe);
        let ds = synthetic_dataset("{data}", #{{cases: 4, test_cases: 1, seed: 3, shape: [24, 32, 32], spacing: [1.0, 1.0, 1.0], size_range_mm: [3.0, 6.0]}});
        let pre = preprocess(ds, #{{spacing: [1.0, 1.0, 1.0]}});
        let run = train(model, pre, #{{lr: 0.01, epochs: 1, iters_per_epoch: 3, batch: 1,
            patch: [16, 16, 16], freeze_encoder_iters: 1, warmup_iters: 1, val_patches: 1,
            progress: false, out: "{out}"}});
        let tuned = features(model, probe);
        #{{loaded: report.loaded, missing: report.missing, by_shape: report.skipped_by_shape,
           fresh_differs: fresh[2].stats().mean != theirs[2].stats().mean,
           transferred: loaded[2].stats().mean == theirs[2].stats().mean
               && loaded[2].stats().std == theirs[2].stats().std,
           iterations: run.iterations,
           trained: tuned[2].stats().mean != theirs[2].stats().mean}}
        "#,
        nnssl = fixture("nnssl_resenc.pth").display(),
        // Absolute paths: an in-process interpreter resolves relative ones against the
        // process's folder (the repository), not its own.
        data = dir.path().join("data").display(),
        out = dir.path().join("finetune").display(),
    );
    let mut interpreter = detlab::script::Interpreter::new(dir.path().to_path_buf());
    let result = interpreter
        .eval_source(&script, "finetune_pth.rhai")
        .unwrap_or_else(|e| panic!("{e}"));
    let map = result.cast::<rhai::Map>();
    let get = |k: &str| map.get(k).unwrap_or_else(|| panic!("no {k}")).clone();
    assert!(get("loaded").as_int().unwrap() > 0, "{map:?}");
    assert_eq!(get("missing").as_int().unwrap(), 0, "{map:?}");
    assert_eq!(get("by_shape").as_int().unwrap(), 0, "{map:?}");
    for flag in ["fresh_differs", "transferred", "trained"] {
        assert!(get(flag).as_bool().unwrap(), "{flag}: {map:?}");
    }
    assert_eq!(get("iterations").as_int().unwrap(), 3, "{map:?}");
}
