//! The same model in other clothes: a bare `ReformerModel` checkpoint, reformc's
//! own schema, the LM head bias flag, and the CLI end to end on a masked case.

use crate::common;

use common::{max_abs_diff, Case};
use ndarray::{ArrayD, Axis, IxDyn};
use reformc_frontend::lower::{lower, LowerOptions, LshSource};
use reformc_frontend::schema::to_schema_json;
use reformc_frontend::spec::HeadSpec;
use reformc_interp::Tensor;
use reformc_ir::DType;
use std::collections::BTreeMap;

fn run(
    case: &Case,
    spec: &reformc_frontend::spec::ModelSpec,
    weights: &BTreeMap<String, Tensor>,
    source: LshSource,
) -> BTreeMap<String, Tensor> {
    let g = lower(
        spec,
        &LowerOptions {
            dtype: DType::F64,
            lsh_source: source,
            seq_len: Some(case.seq_len() as u64),
        },
    )
    .unwrap()
    .graph;
    reformc_interp::run(&g, &case.inputs(source), weights).unwrap()
}

/// A bare `ReformerModel` (no `reformer.` prefix, no head) outputs the last
/// hidden state [B, L, 2D]; projecting it by the decoder gives the head model's logits.
#[test]
fn bare_reformer_model_outputs_the_hidden_state() {
    let case = Case::load(&common::root().join("tests/fixtures/causal_mask_padded_b2"));
    let source = case.replay_source();
    let g = case.graph(DType::F64, source);
    let full = case.weight_map(&g);
    let bare: BTreeMap<String, Tensor> = full
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("reformer.")
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect();
    let mut spec = case.spec.clone();
    spec.weight_prefix = String::new();
    spec.head = HeadSpec::None;
    let out = run(&case, &spec, &bare, source);
    let hidden = out["last_hidden_state"].to_f64();
    assert_eq!(hidden.shape(), &[2, 60, 64]);
    let dec = full["lm_head.decoder.weight"].to_f64();
    let dec = dec.view().into_dimensionality::<ndarray::Ix2>().unwrap();
    let logits = hidden
        .to_shape((120, 64))
        .unwrap()
        .dot(&dec.t())
        .into_shape_with_order(IxDyn(&[2, 60, 48]))
        .unwrap();
    let err = max_abs_diff(&logits, &case.reference_f64());
    assert!(err < 1e-9, "{err:e}");
}

/// reformc's own schema expresses the same Reformer and lowers to the same IR.
#[test]
fn own_schema_lowers_to_the_same_ir() {
    for dir in common::fixtures() {
        let case = Case::load(&dir);
        let json = to_schema_json(&case.spec);
        let (spec, _) =
            reformc_frontend::schema::parse_schema(&json, std::path::Path::new("model.json"))
                .unwrap();
        let opts = LowerOptions {
            seq_len: Some(64),
            ..LowerOptions::default()
        };
        let a = reformc_ir::print(&lower(&case.spec, &opts).unwrap().graph);
        let b = reformc_ir::print(&lower(&spec, &opts).unwrap().graph);
        assert_eq!(a, b, "{}", case.name);
    }
}

/// `--lm-head-bias` adds `lm_head.bias` to every logit (HF 4.x); off by default (HF 5.x).
#[test]
fn lm_head_bias_flag_adds_the_bias() {
    let case = Case::load(&common::root().join("tests/fixtures/causal_lsh_r1"));
    let source = case.replay_source();
    let mut spec = case.spec.clone();
    let g0 = lower(
        &spec,
        &LowerOptions {
            dtype: DType::F64,
            lsh_source: source,
            seq_len: None,
        },
    )
    .unwrap()
    .graph;
    let mut weights = case.weight_map(&g0);
    let without = run(&case, &spec, &weights, source)["logits"].to_f64();
    assert!(max_abs_diff(&without, &case.reference_f64()) < 1e-9);
    let bias: ArrayD<f32> = ArrayD::from_shape_vec(
        IxDyn(&[48]),
        case.weights.tensor_f32("lm_head.bias").unwrap(),
    )
    .unwrap();
    assert!(
        bias.iter().any(|&b| b != 0.0),
        "fixture bias should be nonzero"
    );
    weights.insert("lm_head.bias".into(), Tensor::F32(bias.clone()));
    spec.head = HeadSpec::LmHead { bias: true };
    let with = run(&case, &spec, &weights, source)["logits"].to_f64();
    let diff = &with - &without;
    for lane in diff.lanes(Axis(2)) {
        for (d, b) in lane.iter().zip(bias.iter()) {
            assert!((d - f64::from(*b)).abs() < 1e-9);
        }
    }
}

/// The binary end to end on a case with an attention mask and HF padding.
#[test]
fn cli_run_with_mask_and_buckets_matches_hf() {
    let dir = common::root().join("tests/fixtures/noncausal_mask_padded_r8");
    let out = std::env::temp_dir().join(format!("reformc-variants-{}.npy", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(["run", "--weights"])
        .arg(dir.join("model.safetensors"))
        .arg(dir.join("config.json"))
        .arg("--input")
        .arg(dir.join("input_ids.npy"))
        .arg("--attention-mask")
        .arg(dir.join("attention_mask.npy"))
        .arg("--lsh-buckets")
        .arg(dir.join("lsh_buckets.npy"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got: ArrayD<f32> = common::read(&out);
    let _ = std::fs::remove_file(&out);
    let want: ArrayD<f64> = common::read(&dir.join("logits_f64.npy"));
    assert!(max_abs_diff(&got.mapv(f64::from), &want) <= 1e-4);
}

/// `compile --memory-plan` reports the backend's fusion plan: on the tiny
/// example (4 reversible layers) all 9 layer norms are GEMM prologues, each
/// feed-forward block is one stack, every block runs in place and both halves'
/// last linears accumulate onto the state.
#[test]
fn compile_memory_plan_reports_the_fusion() {
    let exe = std::env::temp_dir().join(format!("reformc-plan-{}", std::process::id()));
    let out = compile_tiny(&exe, &["--emit", "obj", "--memory-plan", "-q"]);
    let _ = std::fs::remove_file(&exe);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("memory plan of variant `seeded`"))
        .unwrap_or_else(|| panic!("no plan in:\n{text}"));
    assert!(line.contains(
            "9 layer-norm prologues, 4 two-layer stacks, 4 reversible blocks in place, 8 accumulations"
        ), "{line}");
    assert!(!text.contains("x2 copy"), "{text}");
    // Each variant's table ends with its static peak by part, the figure
    // `reformc explain` reports for the same length and threads.
    let peaks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("static peak at B=1, L="))
        .collect();
    assert_eq!(peaks.len(), 3, "{text}");
    for part in [
        "activations",
        "allocator cache",
        "weights",
        "kernel scratch",
        "executable",
    ] {
        assert!(peaks[0].contains(part), "{}", peaks[0]);
    }
}

/// An executable compiled with `--profile` prints the per-op table after its run.
#[test]
fn profiled_executable_prints_the_op_table() {
    let dir = common::root().join("examples/tiny-reformer");
    let tmp = std::env::temp_dir().join(format!("reformc-prof-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let exe = tmp.join("m");
    let out = compile_tiny(&exe, &["--profile", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::process::Command::new(&exe)
        .arg("--input")
        .arg(dir.join("input_ids.npy"))
        .arg("--output")
        .arg(tmp.join("y.npy"))
        .env("REFORMC_PROFILE_TOP", "1000")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    for want in [
        "by op kind",
        "\nlsh_attention ",
        "\nlocal_attention ",
        "\nlinear ",
        "slowest ops",
        // The attention projections run as linear pairs: one call, two ops.
        " +1 grouped ",
    ] {
        assert!(err.contains(want), "`{want}` missing from\n{err}");
    }
}

/// `reformc compile` of `examples/tiny-reformer` to `out` with `args`.
fn compile_tiny(out: &std::path::Path, args: &[&str]) -> std::process::Output {
    let dir = common::root().join("examples/tiny-reformer");
    std::process::Command::new(env!("CARGO_BIN_EXE_reformc"))
        .arg("compile")
        .arg(dir.join("config.json"))
        .arg("--weights")
        .arg(dir.join("model.safetensors"))
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}
