use super::*;
use crate::checkpoint::{self, RunInfo};
use reformc_frontend::spec::tests_support::tiny;
use reformc_tensor::DType;

/// Settings that pass [`check`]; `naming` as given.
fn settings(naming: Naming) -> RunSettings {
    RunSettings {
        steps: 4,
        seq_len: 32,
        weights: Some("w.safetensors".into()),
        naming,
        ..Default::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reformc-train-setup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights() -> BTreeMap<String, Tensor> {
    BTreeMap::from([
        ("a".into(), Tensor::zeros(DType::F32, &[2, 3])),
        ("b".into(), Tensor::zeros(DType::F32, &[3])),
    ])
}

/// A checkpoint of step 3 of a run (seed 5, L 32, B 1, 500 tokens) with `config`.
fn checkpoint_file(dir: &Path, config: OptimizerConfig) -> (PathBuf, ModelId) {
    let (w, model) = (weights(), ModelId::new("m", &weights()));
    let opt = Optimizer::new(config, &w);
    let run = RunInfo {
        seed: 5,
        seq_len: 32,
        batch: 1,
        grad_accum: 1,
        data_len: 500,
    };
    let path = dir.join("ck.safetensors");
    checkpoint::write(&path, 3, &run, &model, &w, &opt).unwrap();
    (path, model)
}

fn read(path: &Path) -> Checkpoint {
    checkpoint::read(path).unwrap()
}

/// Settings that continue [`checkpoint_file`]'s run unchanged.
fn same_run(path: &Path) -> RunSettings {
    RunSettings {
        steps: 6,
        seq_len: 32,
        resume: Some(path.to_path_buf()),
        ..Default::default()
    }
}

#[test]
fn counts_must_be_positive() {
    type Zero = fn(&mut RunSettings);
    let cases: [(&str, Zero); 5] = [
        ("steps", |s| s.steps = 0),
        ("seq-len", |s| s.seq_len = 0),
        ("batch", |s| s.batch = 0),
        ("grad-accum", |s| s.grad_accum = 0),
        ("checkpoint-every", |s| s.checkpoint_every = Some(0)),
    ];
    for (flag, zero) in cases {
        let mut s = settings(Naming::Flags);
        zero(&mut s);
        assert_eq!(
            check(&s).unwrap_err(),
            format!("--{flag} must be at least 1")
        );
        s.naming = Naming::Keywords;
        let keyword = flag.replace('-', "_");
        assert_eq!(
            check(&s).unwrap_err(),
            format!("{keyword} must be at least 1")
        );
    }
    assert_eq!(check(&settings(Naming::Flags)), Ok(()));
}

#[test]
fn rates_must_be_finite_and_in_range() {
    let mut s = settings(Naming::Flags);
    s.lr = Some(-0.1);
    assert_eq!(
        check(&s).unwrap_err(),
        "--lr -0.1: the learning rate must be a positive finite number"
    );
    s.naming = Naming::Keywords;
    s.lr = Some(f64::NAN);
    assert_eq!(
        check(&s).unwrap_err(),
        "lr=NaN: the learning rate must be a positive finite number"
    );
    s.lr = Some(1e-3);
    s.weight_decay = Some(-1.0);
    assert_eq!(
        check(&s).unwrap_err(),
        "weight_decay=-1: must be a finite number >= 0"
    );
    s.weight_decay = Some(0.0);
    assert_eq!(check(&s), Ok(()));
}

#[test]
fn weights_or_a_checkpoint_and_a_known_optimizer() {
    let mut s = settings(Naming::Flags);
    s.weights = None;
    assert!(check(&s)
        .unwrap_err()
        .contains("pass --weights model.safetensors"));
    s.naming = Naming::Keywords;
    assert!(check(&s)
        .unwrap_err()
        .contains("pass weights=\"model.safetensors\""));
    s.resume = Some("c.safetensors".into());
    assert_eq!(check(&s), Ok(()));
    s.optimizer = Some("sgd".into());
    assert_eq!(
        check(&s).unwrap_err(),
        "optimizer: invalid value 'sgd' (possible values: adam, adafactor)"
    );
}

#[test]
fn optimizer_config_takes_the_settings_over_the_base() {
    let s = RunSettings {
        warmup: Some(7),
        ..Default::default()
    };
    // Adafactor's default learning rate is the relative step (none).
    let OptimizerConfig::Adafactor(c) = optimizer_config("adafactor", &s, None) else {
        panic!("not adafactor")
    };
    assert_eq!((c.lr, c.warmup), (None, 7));
    let base = OptimizerConfig::Adam(AdamConfig {
        lr: 0.5,
        beta1: 0.8,
        weight_decay: 0.1,
        ..Default::default()
    });
    let s = RunSettings {
        lr: Some(0.01),
        ..Default::default()
    };
    let OptimizerConfig::Adam(c) = optimizer_config("adam", &s, Some(&base)) else {
        panic!("not adam")
    };
    // The checkpoint's settings stay unless the run gives its own.
    assert_eq!(
        (c.lr, c.beta1, c.weight_decay, c.warmup),
        (0.01, 0.8, 0.1, 0)
    );
    // A base of another kind is not taken.
    let OptimizerConfig::Adafactor(c) = optimizer_config("adafactor", &s, Some(&base)) else {
        panic!("not adafactor")
    };
    assert_eq!((c.lr, c.weight_decay), (Some(0.01), 0.0));
}

#[test]
fn a_fresh_run_defaults_to_adam_and_seed_0() {
    let (state, seed) = fresh(&settings(Naming::Flags), weights());
    assert_eq!((state.step, seed), (0, 0));
    assert_eq!(state.optimizer.config().kind(), "adam");
    let s = RunSettings {
        optimizer: Some("adafactor".into()),
        seed: Some(9),
        ..Default::default()
    };
    let (state, seed) = fresh(&s, weights());
    assert_eq!((state.optimizer.config().kind(), seed), ("adafactor", 9));
}

#[test]
fn the_identity_is_the_spec_and_its_weight_list() {
    let spec = tiny();
    let id = model_identity(&spec);
    assert_eq!(id.config, format!("{spec:?}"));
    assert!(id.weights.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    assert!(id.weights.iter().any(|(n, _)| n.contains("embeddings")));
}

#[test]
fn an_unchanged_resume_warns_of_nothing() {
    let d = scratch("same");
    let (path, model) = checkpoint_file(&d, OptimizerConfig::Adam(AdamConfig::default()));
    let r = resume(&same_run(&path), read(&path), &path, &model, 500).unwrap();
    assert_eq!((r.seed, r.warnings.len()), (5, 0), "{:?}", r.warnings);
    let state = r.into_state(&model).unwrap();
    assert_eq!(state.step, 3);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn each_changed_setting_is_one_warning() {
    let d = scratch("changed");
    let (path, model) = checkpoint_file(&d, OptimizerConfig::Adam(AdamConfig::default()));
    let s = RunSettings {
        seed: Some(6),
        batch: 2,
        grad_accum: 4,
        lr: Some(0.01),
        ..same_run(&path)
    };
    let r = resume(&s, read(&path), &path, &model, 400).unwrap();
    let starts: Vec<&str> = r
        .warnings
        .iter()
        .map(|w| w.split(" differs").next().unwrap())
        .collect();
    assert_eq!(
        starts,
        [
            "--seed",
            "--batch",
            "--grad-accum",
            "the --data length",
            "the optimizer settings"
        ]
    );
    assert!(
        r.warnings[0].contains("(5 there, 6 now)"),
        "{}",
        r.warnings[0]
    );
    let s = RunSettings {
        naming: Naming::Keywords,
        ..s
    };
    let r = resume(&s, read(&path), &path, &model, 400).unwrap();
    assert!(r.warnings[3].starts_with("the data length differs"));
    // The rates of the resumed run are the settings'.
    let state = r.into_state(&model).unwrap();
    let OptimizerConfig::Adam(c) = state.optimizer.config() else {
        panic!("not adam")
    };
    assert_eq!(c.lr, 0.01);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_resume_keeps_the_optimizer_and_the_model() {
    let d = scratch("refused");
    let (path, model) = checkpoint_file(&d, OptimizerConfig::Adam(AdamConfig::default()));
    let s = RunSettings {
        optimizer: Some("adafactor".into()),
        ..same_run(&path)
    };
    let Err(TrainError::Input(e)) = resume(&s, read(&path), &path, &model, 500) else {
        panic!("accepted another optimizer")
    };
    assert!(e.ends_with("ck.safetensors: the checkpoint's optimizer is adam; --optimizer adafactor cannot continue its state (omit --optimizer, or start a new run from --weights)"), "{e}");
    let other = ModelId::new("another", &weights());
    let Err(TrainError::Input(e)) = resume(&same_run(&path), read(&path), &path, &other, 500)
    else {
        panic!("accepted another model")
    };
    assert!(e.contains("a checkpoint of another model"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn unread_weights_are_named() {
    let mut s = settings(Naming::Flags);
    assert_eq!(unread_weights(&s), None);
    s.resume = Some("c.safetensors".into());
    assert_eq!(
        unread_weights(&s).unwrap(),
        "--weights w.safetensors is not read: with --resume the weights come from the checkpoint"
    );
    s.naming = Naming::Keywords;
    assert!(unread_weights(&s)
        .unwrap()
        .starts_with("weights=w.safetensors is not read: with resume"));
}

#[test]
fn the_checkpoint_file_is_no_input_and_can_be_written() {
    let d = scratch("out");
    let input = d.join("data.npy");
    std::fs::write(&input, b"x").unwrap();
    let mut s = settings(Naming::Keywords);
    s.out = input.clone();
    let e = check_out(&s, &[("data", &input)]).unwrap_err();
    assert!(e.starts_with("out `"), "{e}");
    assert!(e.contains("is the same file as data"), "{e}");
    s.out = d.join("missing").join("c.safetensors");
    let e = check_out(&s, &[]).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    s.out = d.join("c.safetensors");
    assert_eq!(check_out(&s, &[("data", &input)]), Ok(()));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn only_an_lm_head_trains() {
    let mut spec = tiny();
    spec.head = HeadSpec::None;
    let e = require_lm_head(&spec, Path::new("w.safetensors"), "train").unwrap_err();
    assert!(
        e.starts_with("w.safetensors: train: the model has no LM head"),
        "{e}"
    );
    spec.head = HeadSpec::LmHead { bias: false };
    assert_eq!(require_lm_head(&spec, Path::new("w"), "train"), Ok(()));
}

#[test]
fn options_follow_the_settings() {
    let s = RunSettings {
        steps: 9,
        seq_len: 16,
        batch: 2,
        log_every: 3,
        checkpoint_every: Some(4),
        out: "c.safetensors".into(),
        ..Default::default()
    };
    let o = options(&s, 11);
    assert_eq!(
        (o.steps, o.seq_len, o.batch, o.seed, o.log_every),
        (9, 16, 2, 11, 3)
    );
    assert_eq!(o.checkpoint_every, Some(4));
    assert_eq!(o.out, PathBuf::from("c.safetensors"));
}

#[test]
fn clipping_norms_and_decay_ends_are_checked() {
    let mut s = settings(Naming::Flags);
    s.max_grad_norm = Some(0.0);
    assert_eq!(
        check(&s).unwrap_err(),
        "--max-grad-norm 0: the norm to clip gradients to must be a positive finite number"
    );
    s.max_grad_norm = Some(1.0);
    s.decay_steps = Some(10);
    assert_eq!(
        check(&s).unwrap_err(),
        "--decay-steps 10 needs --lr-decay linear or cosine (the step at which the decay ends)"
    );
    s.lr_decay = Some(Decay::Cosine);
    s.warmup = Some(10);
    s.naming = Naming::Keywords;
    assert_eq!(
        check(&s).unwrap_err(),
        "decay_steps=10: the decay must end after the warm-up (warmup=10)"
    );
    s.decay_steps = Some(11);
    assert_eq!(check(&s), Ok(()));
}

#[test]
fn a_decay_ends_at_the_run_s_last_step_unless_told_and_a_resume_keeps_it() {
    let fresh = RunSettings {
        steps: 40,
        lr_decay: Some(Decay::Cosine),
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let c = optimizer_config("adam", &fresh, None);
    let want = Schedule {
        decay: Decay::Cosine,
        decay_steps: 40,
        max_grad_norm: Some(1.0),
    };
    assert_eq!(c.schedule(), &want);
    // Resumed with more steps and no schedule flags: the checkpoint's end.
    let more = RunSettings {
        steps: 80,
        ..Default::default()
    };
    assert_eq!(optimizer_config("adam", &more, Some(&c)).schedule(), &want);
    // Given flags replace it; constant needs no end.
    let told = RunSettings {
        steps: 80,
        decay_steps: Some(60),
        lr_decay: Some(Decay::Linear),
        ..Default::default()
    };
    let s = optimizer_config("adam", &told, Some(&c));
    assert_eq!(
        (s.schedule().decay, s.schedule().decay_steps),
        (Decay::Linear, 60)
    );
    let flat = RunSettings {
        steps: 80,
        lr_decay: Some(Decay::Constant),
        ..Default::default()
    };
    let s = optimizer_config("adafactor", &flat, None);
    assert_eq!(s.schedule(), &Schedule::default());
}
