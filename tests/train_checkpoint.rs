//! Per-layer checkpointing of layers that are not reversible (the autodiff
//! pass's `Checkpointing`): random residual models (reformc's schema: local,
//! LSH and full attention, dropout off) give bit-identical losses and
//! gradients with every layer recomputed as with every activation kept, and
//! the recomputing step's activation memory barely grows with depth where
//! the storing step's does.

use reformc_frontend::config::parse_model_config;
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::spec::ModelSpec;
use reformc_ir::{DType, Graph};
use reformc_passes::autodiff::checkpoint::{choose, Checkpointing, LayerRecompute};
use reformc_passes::autodiff::{append_loss, differentiate_with, LABELS, LOSS};
use reformc_passes::cost::dim_env;
use reformc_passes::memory_plan::plan_memory;
use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
use reformc_tensor::Tensor;
use reformc_testkit::random_model::{random_config, random_inputs, random_weights, Lcg};
use std::path::Path;

/// The lowered forward graph (with the loss) of `spec` at length `len`.
fn forward(spec: &ModelSpec, source: LshSource, len: u64) -> (Graph, Vec<u64>) {
    let opts = LowerOptions {
        dtype: DType::F32,
        lsh_source: source,
        seq_len: Some(len),
    };
    let lowered = lower(spec, &opts).unwrap();
    let mut g = lowered.graph;
    let names = [
        "simplify",
        "attention",
        "reversible",
        "chunk",
        "lower-model",
    ];
    let quiet = Instrumentation {
        quiet: true,
        ..Default::default()
    };
    let pm = PassManager::new(Pipeline::new(&names).unwrap(), quiet).unwrap();
    let popts = PassOptions {
        seq_len: Some(len),
        ..Default::default()
    };
    pm.run(&mut g, &popts, &mut std::io::sink()).unwrap();
    append_loss(&mut g, "logits").unwrap();
    (g, lowered.bucket_factors)
}

/// A random residual model: the generator's config with its architecture forced.
fn residual_model(rng: &mut Lcg) -> (ModelSpec, String) {
    let text = random_config(rng).replace("\"reversible\"", "\"residual\"");
    let (spec, _, _) = parse_model_config(&text, Path::new("random.json")).unwrap();
    (spec, text)
}

#[test]
fn recomputed_layers_give_the_same_loss_and_gradients_bit_for_bit() {
    let mut rng = Lcg(20_261_206);
    let mut recomputed = 0;
    for model in 0..8 {
        let (spec, text) = residual_model(&mut rng);
        let source = LshSource::Buckets;
        let (g, factors) = forward(&spec, source, 16);
        let (kept, none) = differentiate_with(&g, LOSS, &Checkpointing::None).unwrap();
        let (redo, layers) = differentiate_with(&g, LOSS, &Checkpointing::All).unwrap();
        assert!(none.is_empty());
        assert_eq!(layers.len(), spec.layers.len(), "model {model}\n{text}");
        recomputed += layers.len();
        let w = random_weights(&g, &mut rng);
        let mut inputs = random_inputs(&spec, 2, 16, &mut rng, source, &factors);
        let Tensor::I64(ids) = &inputs["input_ids"] else {
            panic!("ids")
        };
        let labels = reformc_train::labels::aligned(ids, spec.causal);
        inputs.insert(LABELS.into(), Tensor::I64(labels));
        let a = reformc_interp::run(&kept, &inputs, &w).unwrap();
        let b = reformc_interp::run(&redo, &inputs, &w).unwrap();
        assert_eq!(a.len(), b.len());
        for (name, x) in &a {
            assert_eq!(
                x.to_f64(),
                b[name].to_f64(),
                "model {model}: `{name}` differs when layers are recomputed\n{text}"
            );
        }
    }
    assert!(recomputed >= 8, "only {recomputed} layers recomputed");
}

/// Live activation peak (bytes) of the step graph of a residual all-LSH
/// model with `layers` layers at length 1024.
fn step_peak(layers: usize, checkpointing: &Checkpointing) -> u64 {
    let (d, _) = differentiate_with(&lsh_forward(layers), LOSS, checkpointing).unwrap();
    peak(&d)
}

fn peak(d: &Graph) -> u64 {
    plan_memory(d, &dim_env(d, 1, 1024))
        .unwrap()
        .live_peak_bytes
}

/// The forward graph of a residual all-LSH model with `layers` layers at length 1024.
fn lsh_forward(layers: usize) -> Graph {
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("examples/shared-qk-transformer.json").unwrap(),
    )
    .unwrap();
    cfg["layers"] = serde_json::json!(vec![serde_json::json!({"type": "lsh"}); layers]);
    cfg["lsh"] =
        serde_json::json!({"chunk": 64, "before": 1, "after": 0, "n_hashes": 1, "buckets": 16});
    cfg["position"] = serde_json::json!({"type": "axial", "shape": [32, 32], "dims": [128, 128]});
    cfg["max_position_embeddings"] = serde_json::json!(1024);
    let path = Path::new("examples/shared-qk-transformer.json");
    let (spec, _, _) = parse_model_config(&cfg.to_string(), path).unwrap();
    forward(&spec, LshSource::Seeded, 1024).0
}

#[test]
fn recomputing_layers_keeps_activation_memory_flat_in_depth() {
    let all = Checkpointing::All;
    let none = Checkpointing::None;
    let (r2, r12) = (step_peak(2, &all), step_peak(12, &all));
    let (s2, s12) = (step_peak(2, &none), step_peak(12, &none));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "L=1024: recompute {:.1} -> {:.1} MiB (2 -> 12 layers); stored {:.1} -> {:.1} MiB",
        mib(r2),
        mib(r12),
        mib(s2),
        mib(s12)
    );
    assert!(s12 as f64 >= 2.0 * s2 as f64, "stored: {s2} -> {s12}");
    assert!(
        r12 * 2 < s12,
        "recompute {r12} vs stored {s12} at 12 layers"
    );
    // Per extra layer the recomputing step keeps its input (one [B, L, D]
    // stream, 1 MiB here) and its weight gradients (outputs: 2.75 MiB).
    let per_layer = (r12 - r2) as f64 / 10.0;
    assert!(
        per_layer <= 4.0 * (1 << 20) as f64,
        "recompute: {r2} -> {r12}"
    );
}

#[test]
fn the_budget_picks_the_fewest_leading_layers_that_fit() {
    let g = lsh_forward(6);
    let stored = step_peak(6, &Checkpointing::None);
    let all = step_peak(6, &Checkpointing::All);
    let budget = (stored + all) / 2;
    let opts = PassOptions {
        seq_len: Some(1024),
        memory_budget: Some(budget),
        ..Default::default()
    };
    let c = choose(&g, LOSS, &opts).unwrap();
    let k = c.layers.len();
    assert!(k > 0 && k < 6, "{:?}", c.layers);
    assert_eq!(c.layers, (0..k as u64).collect::<Vec<_>>());
    assert!(peak(&c.graph) <= budget);
    let fewer = Checkpointing::Layers((0..k as u64 - 1).collect());
    assert!(
        step_peak(6, &fewer) > budget,
        "{k} layers is not the fewest"
    );
    let note = c.note.unwrap();
    assert!(
        note.contains(&format!("recomputing {k} of 6 layer(s)")),
        "{note}"
    );
    // A budget every activation fits keeps them all; none recomputes nothing.
    let roomy = PassOptions {
        memory_budget: Some(stored),
        ..opts.clone()
    };
    assert!(choose(&g, LOSS, &roomy).unwrap().layers.is_empty());
    let never = PassOptions {
        recompute: LayerRecompute::Never,
        ..opts
    };
    assert!(choose(&g, LOSS, &never).unwrap().layers.is_empty());
}

#[test]
fn explain_train_reports_the_recomputed_layers() {
    let dir = std::env::temp_dir().join(format!("rc-recompute-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("model.json");
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("examples/shared-qk-transformer.json").unwrap(),
    )
    .unwrap();
    v["max_position_embeddings"] = serde_json::json!(1024);
    v["position"] = serde_json::json!({"type": "axial", "shape": [32, 32], "dims": [128, 128]});
    std::fs::write(&cfg, v.to_string()).unwrap();
    let c = cfg.to_str().unwrap();
    let explain = |extra: &[&str]| {
        let base = ["explain", c, "--train", "--seq-len", "1024"];
        let (stdout, stderr) = reformc(&[&base[..], extra].concat());
        stdout + &stderr
    };
    let all = explain(&["--recompute-layers", "all"]);
    assert!(
        all.contains("recomputing all 6 layer(s) in the backward pass"),
        "{all}"
    );
    let tight = explain(&["--memory-budget", "1"]);
    assert!(
        tight.contains("recomputing 6 of 6 layer(s) in the backward pass (layers 0-5) and the step is still above the memory budget"),
        "{tight}"
    );
    let none = explain(&[]);
    assert!(!none.contains("recomputing"), "{none}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reformc_train_recomputing_layers_writes_the_same_checkpoint() {
    let dir = std::env::temp_dir().join(format!("rc-recompute-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Lcg(20_261_207);
    let (spec, text) = residual_model(&mut rng);
    let cfg = dir.join("model.json");
    std::fs::write(&cfg, &text).unwrap();
    let (g, _) = forward(&spec, LshSource::Seeded, 16);
    let weights = dir.join("model.safetensors");
    reformc_testkit::random_model::write_safetensors(&weights, &random_weights(&g, &mut rng));
    let tokens: Vec<i64> = (0..200).map(|i| i * 7 % spec.vocab_size as i64).collect();
    let data = dir.join("tokens.npy");
    reformc_testkit::write(
        &data,
        &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[200]), tokens).unwrap(),
    );
    let train = |policy: &str| {
        let out = dir.join(format!("{policy}.safetensors"));
        let [c, w, d, o] = [&cfg, &weights, &data, &out].map(|p| p.to_str().unwrap());
        let (stdout, _) = reformc(&[
            "train",
            c,
            "--weights",
            w,
            "--data",
            d,
            "--steps",
            "2",
            "--seq-len",
            "16",
            "--out",
            o,
            "--recompute-layers",
            policy,
        ]);
        (std::fs::read(&out).unwrap(), stdout)
    };
    let (kept, quiet) = train("none");
    let (redone, said) = train("all");
    assert!(!quiet.contains("recomputing"), "{quiet}");
    assert!(said.contains("reformc: recomputing all"), "{said}");
    assert!(kept == redone, "the checkpoints differ\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `reformc args`, which must succeed; its stdout and stderr.
fn reformc(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "reformc {args:?}: {stdout}{stderr}");
    (stdout, stderr)
}
