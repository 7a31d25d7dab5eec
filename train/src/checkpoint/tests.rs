use super::*;
use crate::optim::{AdafactorConfig, AdamConfig};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reformc-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights() -> BTreeMap<String, Tensor> {
    let t = |shape: &[usize], k: f32| {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|i| (i as f32 * 0.37 + k).sin() / 3.0).collect();
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    };
    BTreeMap::from([
        ("emb.weight".to_string(), t(&[5, 3], 0.1)),
        ("ln.bias".to_string(), t(&[3], 0.7)),
    ])
}

fn run_info() -> RunInfo {
    RunInfo {
        seed: u64::MAX - 3,
        seq_len: 16,
        batch: 2,
        grad_accum: 3,
        data_len: 1000,
    }
}

/// An optimizer with a nonzero state: one update from `w`.
fn stepped(config: OptimizerConfig, w: &mut BTreeMap<String, Tensor>) -> Optimizer {
    let mut opt = Optimizer::new(config, w);
    let g = w.clone();
    opt.update(w, &g, 1).unwrap();
    opt
}

#[test]
fn round_trip_is_exact_for_both_optimizers() {
    let d = scratch("roundtrip");
    for config in [
        OptimizerConfig::Adam(AdamConfig {
            lr: 1.0 / 3.0,
            warmup: 7,
            ..Default::default()
        }),
        OptimizerConfig::Adafactor(AdafactorConfig {
            beta1: Some(0.8),
            ..Default::default()
        }),
    ] {
        let mut w = weights();
        let opt = stepped(config.clone(), &mut w);
        let model = ModelId::new("spec { d: 3 }", &w);
        let p = d.join("c.safetensors");
        write(&p, 12, &run_info(), &model, &w, &opt).unwrap();
        assert!(!temp_path(&p).exists());
        let c = read(&p).unwrap();
        assert_eq!(
            (c.step, &c.run, &c.model, &c.optimizer),
            (12, &run_info(), &model, &config)
        );
        assert_eq!(c.weights, w);
        assert_eq!(c.restore_optimizer().unwrap(), opt);
        c.check_model(&p, &model).unwrap();
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn the_file_is_plain_safetensors_with_prefixed_state() {
    let d = scratch("layout");
    let mut w = weights();
    let opt = stepped(OptimizerConfig::Adam(AdamConfig::default()), &mut w);
    let p = d.join("c.safetensors");
    write(&p, 1, &run_info(), &ModelId::new("x", &w), &w, &opt).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let (entries, _) = reformc_tensor::safetensors::parse(&bytes, bytes.len() as u64).unwrap();
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "emb.weight",
            "ln.bias",
            "optimizer.m.emb.weight",
            "optimizer.m.ln.bias",
            "optimizer.v.emb.weight",
            "optimizer.v.ln.bias"
        ]
    );
    assert!(entries.iter().all(|e| e.dtype == "F32"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn another_model_is_named_in_the_refusal() {
    let w = weights();
    let ours = ModelId::new("Spec { hidden: 3, layers: 2 }", &w);
    let p = Path::new("run/c.safetensors");
    let ck = Checkpoint {
        step: 1,
        run: run_info(),
        model: ours.clone(),
        optimizer: OptimizerConfig::Adam(AdamConfig::default()),
        weights: w.clone(),
        state: BTreeMap::new(),
    };
    let mut other = ours.clone();
    other.weights[0].1 = vec![5, 4];
    assert_eq!(
        ck.check_model(p, &other).unwrap_err(),
        "run/c.safetensors: a checkpoint of another model (weight `emb.weight` is [5, 3] in it, [5, 4] in the model)"
    );
    other = ours.clone();
    other.weights.pop();
    let e = ck.check_model(p, &other).unwrap_err();
    assert!(
        e.ends_with("(it has weight `ln.bias`, which the model does not)"),
        "{e}"
    );
    other = ours.clone();
    other.weights.push(("z".into(), vec![1]));
    let e = ck.check_model(p, &other).unwrap_err();
    assert!(e.ends_with("(it lacks the model's weight `z`)"), "{e}");
    other = ModelId {
        config: "Spec { hidden: 3, layers: 4 }".into(),
        ..ours.clone()
    };
    let e = ck.check_model(p, &other).unwrap_err();
    assert!(
        e.ends_with("(the configuration differs: `layers: 2 }` in it, `layers: 4 }` in the model)"),
        "{e}"
    );
    assert_ne!(ours.fingerprint(), other.fingerprint());
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let d = scratch("atomic");
    let p = d.join("c.safetensors");
    std::fs::write(&p, b"previous checkpoint").unwrap();
    let e = write_atomic(&p, |w| {
        w.write_all(&[7u8; 100_000])?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "disk full");
    assert_eq!(std::fs::read(&p).unwrap(), b"previous checkpoint");
    assert!(!temp_path(&p).exists());
    // A tensor that cannot be stored fails before anything is written.
    let mut w = weights();
    w.insert(
        "ids".into(),
        Tensor::zeros(reformc_tensor::DType::I64, &[2]),
    );
    let opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::default()), &weights());
    let e = write(&p, 1, &run_info(), &ModelId::new("x", &w), &w, &opt).unwrap_err();
    assert_eq!(e, "checkpoint tensor `ids` is i64, not f32");
    assert_eq!(std::fs::read(&p).unwrap(), b"previous checkpoint");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn foreign_and_damaged_files_are_refused() {
    let d = scratch("foreign");
    let p = d.join("w.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 4]);
    std::fs::write(&p, &bytes).unwrap();
    let e = read(&p).unwrap_err();
    assert!(
        e.ends_with("w.safetensors: not a reformc checkpoint: metadata `format` is missing"),
        "{e}"
    );
    std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
    let e = read(&p).unwrap_err();
    assert!(e.contains("not a valid safetensors file"), "{e}");
    let e = read(&d.join("missing.safetensors")).unwrap_err();
    assert!(e.contains("cannot read the checkpoint"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
