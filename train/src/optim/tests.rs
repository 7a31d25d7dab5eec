use super::*;

fn f32s(t: &Tensor) -> Vec<f64> {
    t.as_f32().unwrap().iter().map(|&x| f64::from(x)).collect()
}

fn tensor(shape: &[usize], v: &[f64]) -> Tensor {
    let data = v.iter().map(|&x| x as f32).collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

fn one(name: &str, t: Tensor) -> BTreeMap<String, Tensor> {
    BTreeMap::from([(name.to_string(), t)])
}

/// Each element of `got` within a relative 1e-6 (f32 rounding of weights and state) of `want`.
fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "got {got:?}, want {want:?}"
        );
    }
}

/// Runs `steps` updates of a fresh optimizer on one weight with the given gradients.
fn run(config: OptimizerConfig, shape: &[usize], w0: &[f64], grads: &[&[f64]]) -> Vec<Vec<f64>> {
    let mut w = one("w", tensor(shape, w0));
    let mut opt = Optimizer::new(config, &w);
    let mut out = Vec::new();
    for (t, g) in grads.iter().enumerate() {
        opt.update(&mut w, &one("w", tensor(shape, g)), t as u64 + 1)
            .unwrap();
        out.push(f32s(&w["w"]));
    }
    out
}

const W0: [f64; 3] = [0.5, -1.0, 2.0];
const G1: [f64; 3] = [0.3, -0.2, 1e-3];
const G2: [f64; 3] = [-0.1, 0.4, 0.05];

#[test]
fn adam_first_two_steps_match_closed_forms() {
    let lr = 0.01;
    let c = AdamConfig {
        lr,
        ..Default::default()
    };
    let got = run(OptimizerConfig::Adam(c), &[3], &W0, &[&G1, &G2]);
    // Step 1: m̂ = g, v̂ = g², so each weight moves by lr·g/(|g|+eps).
    let w1: Vec<f64> = (0..3)
        .map(|i| W0[i] - lr * G1[i] / (G1[i].abs() + 1e-8))
        .collect();
    close(&got[0], &w1);
    // Step 2: m = 0.9·0.1·g1 + 0.1·g2 over 1-0.9², v = 0.999·0.001·g1² + 0.001·g2² over 1-0.999².
    let w2: Vec<f64> = (0..3)
        .map(|i| {
            let m = (0.09 * G1[i] + 0.1 * G2[i]) / 0.19;
            let v = (0.000999 * G1[i] * G1[i] + 0.001 * G2[i] * G2[i]) / 0.001999;
            w1[i] - lr * m / (v.sqrt() + 1e-8)
        })
        .collect();
    close(&got[1], &w2);
}

#[test]
fn adam_warmup_and_weight_decay() {
    let c = AdamConfig {
        lr: 0.1,
        warmup: 4,
        weight_decay: 0.5,
        ..Default::default()
    };
    let got = run(OptimizerConfig::Adam(c), &[3], &W0, &[&G1]);
    // Step 1 of 4 warm-up steps: lr/4, and the decay term lr/4·0.5·w.
    let want: Vec<f64> = (0..3)
        .map(|i| W0[i] - 0.025 * (G1[i].signum() + 0.5 * W0[i]))
        .collect();
    close(&got[0], &want);
}

#[test]
fn adafactor_unfactored_first_two_steps_match_closed_forms() {
    let lr = 0.1;
    let c = AdafactorConfig {
        lr: Some(lr),
        ..Default::default()
    };
    let got = run(OptimizerConfig::Adafactor(c), &[3], &W0, &[&G1, &G2]);
    let rms = |x: &[f64]| (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    // Step 1: β2 = 1 - 1^-0.8 = 0, so v = g² + 1e-30 and the update is sign(g)
    // (RMS 1: no clipping), scaled by lr·RMS(w0).
    let a1 = lr * rms(&W0);
    let w1: Vec<f64> = (0..3).map(|i| W0[i] - a1 * G1[i].signum()).collect();
    close(&got[0], &w1);
    // Step 2: β2 = 1 - 2^-0.8.
    let b = 1.0 - 2f64.powf(-0.8);
    let u: Vec<f64> = (0..3)
        .map(|i| {
            let v = b * (G1[i] * G1[i] + 1e-30) + (1.0 - b) * (G2[i] * G2[i] + 1e-30);
            G2[i] / v.sqrt()
        })
        .collect();
    let clip = rms(&u).max(1.0);
    let a2 = lr * rms(&w1);
    let w2: Vec<f64> = (0..3).map(|i| w1[i] - a2 * u[i] / clip).collect();
    close(&got[1], &w2);
}

#[test]
fn adafactor_factored_step_matches_closed_form() {
    // A 2x2 matrix: row means r0, r1; column means c0, c1; v̂_ij = r_i·c_j / ((r0+r1)/2).
    let w0 = [0.2, -0.4, 0.6, 0.1];
    let g = [0.5, -0.1, 0.02, 0.3];
    let sq: Vec<f64> = g.iter().map(|x| x * x + 1e-30).collect();
    let r = [(sq[0] + sq[1]) / 2.0, (sq[2] + sq[3]) / 2.0];
    let c = [(sq[0] + sq[2]) / 2.0, (sq[1] + sq[3]) / 2.0];
    let rbar = (r[0] + r[1]) / 2.0;
    let u: Vec<f64> = (0..4)
        .map(|k| g[k] / (r[k / 2] * c[k % 2] / rbar).sqrt())
        .collect();
    let rms_u = (u.iter().map(|x| x * x).sum::<f64>() / 4.0).sqrt();
    let rms_w = (w0.iter().map(|x| x * x).sum::<f64>() / 4.0).sqrt();
    // No --lr: the relative step min(1e-2, 1/√1) = 1e-2.
    let alpha = 1e-2 * rms_w;
    let want: Vec<f64> = (0..4)
        .map(|k| w0[k] - alpha * u[k] / rms_u.max(1.0))
        .collect();
    let config = OptimizerConfig::Adafactor(AdafactorConfig::default());
    let got = run(config, &[2, 2], &w0, &[&g]);
    close(&got[0], &want);
}

#[test]
fn adafactor_state_is_factored_over_the_last_two_dims() {
    let w = BTreeMap::from([
        (
            "a".to_string(),
            Tensor::zeros(reformc_tensor::DType::F32, &[4, 2, 3]),
        ),
        (
            "b".to_string(),
            Tensor::zeros(reformc_tensor::DType::F32, &[5]),
        ),
    ]);
    let c = AdafactorConfig {
        beta1: Some(0.9),
        ..Default::default()
    };
    let opt = Optimizer::new(OptimizerConfig::Adafactor(c), &w);
    let shapes: Vec<(String, Vec<usize>)> = opt
        .state()
        .iter()
        .map(|(k, v)| (k.clone(), v.shape().to_vec()))
        .collect();
    let want = [
        ("m.a", vec![4, 2, 3]),
        ("m.b", vec![5]),
        ("v.b", vec![5]),
        ("v_col.a", vec![4, 3]),
        ("v_row.a", vec![4, 2]),
    ];
    let want: Vec<(String, Vec<usize>)> = want
        .iter()
        .map(|(k, s)| (k.to_string(), s.clone()))
        .collect();
    assert_eq!(shapes, want);
}

/// Loss ½·Σ a_i (w_i - c_i)² of a 2x3 matrix, minimised from zero.
fn minimise(config: OptimizerConfig, steps: u64) -> (f64, f64) {
    let a = [1.0, 3.0, 0.5, 2.0, 1.5, 4.0];
    let c = [1.0, -2.0, 0.5, 3.0, -1.0, 0.25];
    let loss = |w: &[f64]| {
        (0..6)
            .map(|i| 0.5 * a[i] * (w[i] - c[i]).powi(2))
            .sum::<f64>()
    };
    let mut w = one("w", tensor(&[2, 3], &[0.0; 6]));
    let mut opt = Optimizer::new(config, &w);
    let first = loss(&f32s(&w["w"]));
    for t in 1..=steps {
        let x = f32s(&w["w"]);
        let g: Vec<f64> = (0..6).map(|i| a[i] * (x[i] - c[i])).collect();
        opt.update(&mut w, &one("w", tensor(&[2, 3], &g)), t)
            .unwrap();
    }
    (first, loss(&f32s(&w["w"])))
}

#[test]
fn adam_minimises_a_quadratic() {
    let (first, last) = minimise(
        OptimizerConfig::Adam(AdamConfig {
            lr: 0.05,
            ..Default::default()
        }),
        600,
    );
    assert!(last < first * 1e-3, "loss {first} -> {last}");
}

#[test]
fn adafactor_minimises_a_quadratic() {
    let c = AdafactorConfig {
        lr: Some(0.05),
        ..Default::default()
    };
    let (first, last) = minimise(OptimizerConfig::Adafactor(c), 600);
    assert!(last < first * 1e-3, "loss {first} -> {last}");
    let c = AdafactorConfig {
        beta1: Some(0.9),
        lr: Some(0.05),
        ..Default::default()
    };
    let (first, last) = minimise(OptimizerConfig::Adafactor(c), 600);
    assert!(last < first * 1e-3, "with momentum: loss {first} -> {last}");
}

#[test]
fn metadata_round_trips_and_state_reloads() {
    let c = OptimizerConfig::Adam(AdamConfig {
        lr: 3e-4,
        warmup: 100,
        ..Default::default()
    });
    assert_eq!(OptimizerConfig::from_metadata(&c.metadata()).unwrap(), c);
    let mut m = c.metadata();
    m.insert("optimizer".into(), "sgd".into());
    let e = OptimizerConfig::from_metadata(&m).unwrap_err();
    assert!(e.contains("`sgd` is not adam or adafactor"), "{e}");

    let w = one("w", tensor(&[3], &W0));
    let mut a = Optimizer::new(c.clone(), &w);
    let mut w1 = w.clone();
    a.update(&mut w1, &one("w", tensor(&[3], &G1)), 1).unwrap();
    let mut b = Optimizer::new(c.clone(), &w);
    b.load_state(a.state().clone()).unwrap();
    assert_eq!(a, b);
    let mut bad = a.state().clone();
    bad.insert("v.w".into(), tensor(&[2], &[0.0, 0.0]));
    let e = b.load_state(bad).unwrap_err();
    assert_eq!(e, "optimizer state `v.w` is f32 [2], expected f32 [3]");
}

#[test]
fn bad_gradients_are_errors() {
    let mut w = one("w", tensor(&[3], &W0));
    let mut opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::default()), &w);
    let e = opt.update(&mut w, &BTreeMap::new(), 1).unwrap_err();
    assert_eq!(e, "the step returned no gradient for `w`");
    let e = opt
        .update(&mut w, &one("w", tensor(&[2], &[1.0, 2.0])), 1)
        .unwrap_err();
    assert_eq!(e, "the gradient of `w` has shape [2], the weight [3]");
}

#[test]
fn decay_schedules_reach_zero_after_their_end() {
    let s = |decay| Schedule {
        decay,
        decay_steps: 12,
        max_grad_norm: None,
    };
    let (lin, cos, flat) = (s(Decay::Linear), s(Decay::Cosine), s(Decay::Constant));
    // Warm-up (4 steps) is the same for all: t / 4.
    for t in 1..4 {
        let w = t as f64 / 4.0;
        assert_eq!(
            [
                lin.lr_factor(4, t),
                cos.lr_factor(4, t),
                flat.lr_factor(4, t)
            ],
            [w; 3]
        );
    }
    // Then 1 at the end of warm-up and the step after (HF's step 4 of 0..),
    // halfway at step 9, 1/8 at step 12 (the last), 0 after.
    let lf = |t| lin.lr_factor(4, t);
    assert_eq!(
        [lf(4), lf(5), lf(9), lf(12), lf(13), lf(20)],
        [1.0, 1.0, 0.5, 0.125, 0.0, 0.0]
    );
    assert!((cos.lr_factor(4, 9) - 0.5).abs() < 1e-15);
    let quarter = 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos());
    assert!((cos.lr_factor(4, 7) - quarter).abs() < 1e-15);
    assert!(cos.lr_factor(4, 13).abs() < 1e-15 && cos.lr_factor(4, 5) == 1.0);
    assert!((4..30).all(|t| flat.lr_factor(4, t) == 1.0));
    // Monotone after warm-up.
    for sched in [&lin, &cos] {
        let f: Vec<f64> = (4..=13).map(|t| sched.lr_factor(4, t)).collect();
        assert!(f.windows(2).all(|w| w[1] <= w[0]), "{f:?}");
    }
}

#[test]
fn adam_under_a_linear_decay_takes_scaled_steps() {
    // Adam's moments do not depend on the rate, so under a decay step t
    // moves the weights by factor(t) times the constant-rate run's move.
    let decayed = AdamConfig {
        lr: 0.01,
        schedule: Schedule {
            decay: Decay::Linear,
            decay_steps: 3,
            max_grad_norm: None,
        },
        ..Default::default()
    };
    let constant = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let a = run(
        OptimizerConfig::Adam(decayed.clone()),
        &[3],
        &W0,
        &[&G1, &G2],
    );
    let b = run(OptimizerConfig::Adam(constant), &[3], &W0, &[&G1, &G2]);
    close(&a[0], &b[0]);
    let f = decayed.schedule.lr_factor(0, 2);
    assert!((f - 2.0 / 3.0).abs() < 1e-15);
    let want: Vec<f64> = (0..3).map(|i| a[0][i] + f * (b[1][i] - b[0][i])).collect();
    close(&a[1], &want);
}

#[test]
fn clipping_scales_every_gradient_by_the_global_norm() {
    let weights = BTreeMap::from([
        ("a".to_string(), tensor(&[2], &[1.0, 1.0])),
        ("b".to_string(), tensor(&[1], &[1.0])),
    ]);
    let grads = BTreeMap::from([
        ("a".to_string(), tensor(&[2], &[3.0, 0.0])),
        ("b".to_string(), tensor(&[1], &[4.0])),
    ]);
    // Adam's first step is sign-like (g/|g|), so compare its state: the
    // clipped run against one given the pre-scaled gradients.
    let config = |max| {
        OptimizerConfig::Adam(AdamConfig {
            lr: 0.1,
            schedule: Schedule {
                max_grad_norm: max,
                ..Default::default()
            },
            ..Default::default()
        })
    };
    let step = |config, grads: &BTreeMap<String, Tensor>| {
        let mut w = weights.clone();
        let mut opt = Optimizer::new(config, &w);
        let norm = opt.update(&mut w, grads, 1).unwrap();
        (w, opt.state().clone(), norm)
    };
    let (clipped, state, norm) = step(config(Some(1.0)), &grads);
    assert_eq!(norm, 5.0, "the norm before clipping");
    let s = 1.0 / (5.0 + 1e-6);
    let scaled: BTreeMap<String, Tensor> = grads
        .iter()
        .map(|(k, g)| {
            let v: Vec<f64> = f32s(g).iter().map(|x| x * s).collect();
            (k.clone(), tensor(g.shape(), &v))
        })
        .collect();
    let (by_hand, _, _) = step(config(None), &scaled);
    for k in ["a", "b"] {
        close(&f32s(&clipped[k]), &f32s(&by_hand[k]));
    }
    // The first moment holds the clipped gradient: 0.1·g·s.
    close(&f32s(&state["m.b"]), &[0.1 * 4.0 * s]);
    // A norm under the limit leaves the gradients alone.
    let (loose, _, _) = step(config(Some(10.0)), &grads);
    let (plain, _, _) = step(config(None), &grads);
    assert_eq!(loose, plain);
}

#[test]
fn schedules_round_trip_through_metadata_and_old_checkpoints_have_none() {
    let c = OptimizerConfig::Adafactor(AdafactorConfig {
        warmup: 3,
        schedule: Schedule {
            decay: Decay::Cosine,
            decay_steps: 50,
            max_grad_norm: Some(0.25),
        },
        ..Default::default()
    });
    let m = c.metadata();
    assert_eq!(m["optimizer.decay"], "cosine");
    assert_eq!(OptimizerConfig::from_metadata(&m).unwrap(), c);
    // A checkpoint written before schedules existed: constant, no clipping.
    let mut old = m.clone();
    for k in ["decay", "decay_steps", "max_grad_norm"] {
        old.remove(&format!("optimizer.{k}"));
    }
    let OptimizerConfig::Adafactor(back) = OptimizerConfig::from_metadata(&old).unwrap() else {
        panic!("adafactor")
    };
    assert_eq!(back.schedule, Schedule::default());
    let mut bad = m;
    bad.insert("optimizer.decay".into(), "exponential".into());
    let err = OptimizerConfig::from_metadata(&bad).unwrap_err();
    assert!(err.contains("`optimizer.decay` = `exponential`"), "{err}");
}
