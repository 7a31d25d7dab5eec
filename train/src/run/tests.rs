use super::*;
use crate::optim::{AdafactorConfig, AdamConfig};
use ndarray::{ArrayD, IxDyn};

const V: usize = 6;

/// A bigram language model: logits of the token after `t` are `w[t] + b`;
/// the loss is the mean cross-entropy over the L-1 predicted positions of
/// each window, with its exact gradient.
struct Bigram;

impl StepFn for Bigram {
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        _step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String> {
        let w = weights["w"].as_f32().unwrap();
        let b = weights["b"].as_f32().unwrap();
        let ids = ids.to_i64();
        let (bs, len) = (ids.shape()[0], ids.shape()[1]);
        let n = (bs * (len - 1)) as f64;
        let mut gw = vec![0.0f64; V * V];
        let mut gb = vec![0.0f64; V];
        let mut loss = 0.0;
        for r in 0..bs {
            for i in 0..len - 1 {
                let (prev, next) = (ids[[r, i]] as usize, ids[[r, i + 1]] as usize);
                let z: Vec<f64> = (0..V).map(|j| f64::from(w[[prev, j]] + b[[j]])).collect();
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                loss += (lse - z[next]) / n;
                for j in 0..V {
                    let d = ((z[j] - lse).exp() - f64::from(u8::from(j == next))) / n;
                    gw[prev * V + j] += d;
                    gb[j] += d;
                }
            }
        }
        let t = |shape: &[usize], v: Vec<f64>| {
            Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(shape), v.into_iter().map(|x| x as f32).collect())
                    .unwrap(),
            )
        };
        Ok((
            loss,
            BTreeMap::from([("w".into(), t(&[V, V], gw)), ("b".into(), t(&[V], gb))]),
        ))
    }
}

/// Returns NaN from step `at` (0-based) on.
struct NanAt(u64);

impl StepFn for NanAt {
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String> {
        let (loss, g) = Bigram.step(weights, ids, step)?;
        Ok((if step >= self.0 { f64::NAN } else { loss }, g))
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reformc-train-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Mostly the cycle 0,1,..,V-1 with an occasional jump: learnable, not trivial.
fn data() -> TokenStream {
    let mut x: u64 = 12345;
    let mut t = 0i64;
    let tokens = (0..2000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t = if (x >> 33).is_multiple_of(10) {
                ((x >> 40) % V as u64) as i64
            } else {
                (t + 1) % V as i64
            };
            t
        })
        .collect();
    TokenStream::new(tokens, V as u64).unwrap()
}

fn init() -> BTreeMap<String, Tensor> {
    let w = ArrayD::from_shape_fn(IxDyn(&[V, V]), |i| {
        ((i[0] * 7 + i[1] * 3) as f32).sin() * 0.1
    });
    BTreeMap::from([
        ("w".into(), Tensor::F32(w)),
        ("b".into(), Tensor::zeros(reformc_tensor::DType::F32, &[V])),
    ])
}

fn options(out: PathBuf, steps: u64) -> TrainOptions {
    TrainOptions {
        steps,
        seq_len: 12,
        batch: 3,
        grad_accum: 1,
        seed: 77,
        log_every: 0,
        checkpoint_every: None,
        out,
    }
}

fn model() -> ModelId {
    ModelId::new("bigram", &init())
}

fn adam() -> OptimizerConfig {
    OptimizerConfig::Adam(AdamConfig {
        lr: 0.05,
        warmup: 3,
        ..Default::default()
    })
}

#[test]
fn loss_decreases() {
    let d = scratch("decrease");
    let mut state = TrainState::fresh(init(), adam());
    let opts = options(d.join("c.safetensors"), 80);
    let s = train(
        &opts,
        &mut state,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&s.losses[..10]), mean(&s.losses[70..]));
    // Uniform guessing costs ln 6 = 1.79; the cycle is 90% predictable.
    assert!(
        first > 1.5 && last < 0.8 * first && last < 1.0,
        "loss {first} -> {last}"
    );
    assert_eq!(s.checkpoints, vec![80]);
    std::fs::remove_dir_all(&d).ok();
}

fn resume_is_bit_exact(config: OptimizerConfig, name: &str) {
    resume_is_bit_exact_with(config, name, 1);
}

/// Ten steps, a checkpoint, ten more from it: the same state and checkpoint
/// bytes as twenty steps in one run, with `grad_accum` micro-batches a step.
fn resume_is_bit_exact_with(config: OptimizerConfig, name: &str, grad_accum: u64) {
    let options = |out: PathBuf, steps| TrainOptions {
        grad_accum,
        ..options(out, steps)
    };
    let d = scratch(name);
    let whole = d.join("whole.safetensors");
    let mut a = TrainState::fresh(init(), config.clone());
    train(
        &options(whole.clone(), 20),
        &mut a,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();

    let half = d.join("half.safetensors");
    let mut b = TrainState::fresh(init(), config);
    train(
        &options(half.clone(), 10),
        &mut b,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();
    let ck = checkpoint::read(&half).unwrap();
    assert_eq!(ck.step, 10);
    let mut c = TrainState::resume(ck, &half, &model()).unwrap();
    train(
        &options(half.clone(), 20),
        &mut c,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();

    assert_eq!(a, c, "weights, optimizer state and step");
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&half).unwrap()
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resume_is_bit_exact_with_adam() {
    resume_is_bit_exact(adam(), "resume-adam");
}

#[test]
fn resume_is_bit_exact_with_adafactor() {
    let c = AdafactorConfig {
        beta1: Some(0.9),
        warmup: 4,
        ..Default::default()
    };
    resume_is_bit_exact(OptimizerConfig::Adafactor(c), "resume-adafactor");
}

#[test]
fn nan_stops_at_the_step_and_keeps_the_last_checkpoint() {
    let d = scratch("nan");
    let out = d.join("c.safetensors");
    let mut opts = options(out.clone(), 20);
    opts.checkpoint_every = Some(5);
    let mut good = TrainState::fresh(init(), adam());
    train(
        &TrainOptions {
            steps: 5,
            ..opts.clone()
        },
        &mut good,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();
    let at_5 = std::fs::read(&out).unwrap();

    let mut state = TrainState::fresh(init(), adam());
    let e = train(
        &opts,
        &mut state,
        &data(),
        &mut NanAt(7),
        &model(),
        &mut std::io::sink(),
    )
    .unwrap_err();
    let TrainError::Input(m) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        m,
        format!(
            "step 8/20: the loss is NaN; training stopped ({} keeps the checkpoint of step 5; try a lower --lr, more --warmup or --max-grad-norm)",
            out.display()
        )
    );
    assert_eq!(std::fs::read(&out).unwrap(), at_5);
    assert!(!checkpoint::temp_path(&out).exists());
    assert_eq!(state.step, 7);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_nan_gradient_is_named() {
    let mut g = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros(reformc_tensor::DType::F32, &[3]),
    )]);
    assert_eq!(non_finite(1.0, &g), None);
    if let Tensor::F32(a) = g.get_mut("w").unwrap() {
        a[[2]] = f32::INFINITY;
    }
    assert_eq!(
        non_finite(1.0, &g).unwrap(),
        "the gradient of `w` is inf at flat index 2"
    );
    assert_eq!(
        non_finite(f64::NEG_INFINITY, &g).unwrap(),
        "the loss is -inf"
    );
}

#[test]
fn progress_lines_and_periodic_checkpoints() {
    let d = scratch("progress");
    let mut opts = options(d.join("c.safetensors"), 7);
    opts.log_every = 3;
    opts.checkpoint_every = Some(2);
    let mut log = Vec::new();
    let mut state = TrainState::fresh(init(), adam());
    let s = train(&opts, &mut state, &data(), &mut Bigram, &model(), &mut log).unwrap();
    assert_eq!(s.checkpoints, vec![2, 4, 6, 7]);
    let text = String::from_utf8(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, step) in lines.iter().zip(["3/7", "6/7", "7/7"]) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (f[0], f[1], f[2], f[4], f[6], f[8]),
            ("step", step, "loss", "tokens/s", "peak", "MiB"),
            "{line}"
        );
        assert!(
            f[3].parse::<f64>().unwrap() > 0.0 && f[5].parse::<u64>().is_ok(),
            "{line}"
        );
        assert!(f[7].parse::<u64>().unwrap() > 0, "{line}");
        assert_eq!((f[9], f[11]), ("grad-norm", "lr"), "{line}");
        assert!(f[10].parse::<f64>().unwrap() > 0.0, "{line}");
        let step: u64 = step.split('/').next().unwrap().parse().unwrap();
        let lr: f64 = f[12].parse().unwrap();
        let want = adam().lr_at(step);
        assert!(
            (lr - want).abs() <= 1e-3 * want,
            "{line}: lr {lr} vs {want}"
        );
    }
    // The first line's loss is the mean of steps 1-3.
    let mean = s.losses[..3].iter().sum::<f64>() / 3.0;
    assert_eq!(
        lines[0].split_whitespace().nth(3).unwrap(),
        format!("{mean:.4}")
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn runs_that_cannot_start_are_refused() {
    let d = scratch("refuse");
    let short = TokenStream::new(vec![1, 2, 3], V as u64).unwrap();
    let mut state = TrainState::fresh(init(), adam());
    let e = train(
        &options(d.join("c"), 5),
        &mut state,
        &short,
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    );
    assert_eq!(
        e.unwrap_err(),
        TrainError::Input("--data: 3 tokens is shorter than one window of --seq-len 12".into())
    );
    state.step = 5;
    let e = train(
        &options(d.join("c"), 5),
        &mut state,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    );
    assert_eq!(
        e.unwrap_err(),
        TrainError::Input("nothing to do: 5 steps are done and --steps is 5".into())
    );
    assert!(!d.join("c").exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resuming_another_model_is_refused() {
    let d = scratch("other");
    let out = d.join("c.safetensors");
    let mut state = TrainState::fresh(init(), adam());
    train(
        &options(out.clone(), 2),
        &mut state,
        &data(),
        &mut Bigram,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();
    let other = ModelId::new("bigram with a wider table", &init());
    let e = TrainState::resume(checkpoint::read(&out).unwrap(), &out, &other).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{}: a checkpoint of another model (the configuration differs",
            out.display()
        )),
        "{e}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// Records the step keys it is called with, then runs [`Bigram`].
struct Keys(Vec<u64>);

impl StepFn for Keys {
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String> {
        self.0.push(step);
        Bigram.step(weights, ids, step)
    }
}

#[test]
fn gradient_accumulation_averages_the_micro_steps() {
    // Two optimizer steps of three micro-batches each: micro-step m of step
    // s draws the windows (and keys) of step 3s + m; the update is the one
    // of the micro-steps' mean gradient, and the loss their mean.
    let d = scratch("accum");
    let mut opts = options(d.join("c.safetensors"), 2);
    opts.grad_accum = 3;
    let mut state = TrainState::fresh(init(), adam());
    let mut keys = Keys(Vec::new());
    let s = train(
        &opts,
        &mut state,
        &data(),
        &mut keys,
        &model(),
        &mut std::io::sink(),
    )
    .unwrap();
    assert_eq!(keys.0, [0, 1, 2, 3, 4, 5]);
    let mut by_hand = TrainState::fresh(init(), adam());
    for (step, loss) in s.losses.iter().enumerate() {
        let mut mean_loss = 0.0;
        let mut sum: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
        for m in 0..3u64 {
            let k = 3 * step as u64 + m;
            let ids = data().batch(opts.seed, k, opts.batch, opts.seq_len);
            let (l, g) = Bigram.step(&by_hand.weights, &ids, k).unwrap();
            mean_loss += l;
            for (name, t) in g {
                *sum.entry(name).or_insert_with(|| ArrayD::zeros(t.shape())) += t.as_f32().unwrap();
            }
        }
        let grads = sum
            .into_iter()
            .map(|(n, g)| (n, Tensor::F32(g.mapv(|x| (f64::from(x) / 3.0) as f32))))
            .collect();
        mean_loss /= 3.0;
        by_hand
            .optimizer
            .update(&mut by_hand.weights, &grads, step as u64 + 1)
            .unwrap();
        assert!(
            (loss - mean_loss).abs() <= 1e-12 * mean_loss.abs(),
            "{loss} vs {mean_loss}"
        );
    }
    assert_eq!(state.weights, by_hand.weights);
    let ck = checkpoint::read(&opts.out).unwrap();
    assert_eq!(ck.run.grad_accum, 3);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resume_is_bit_exact_with_gradient_accumulation() {
    resume_is_bit_exact_with(adam(), "accum-resume", 2);
}
