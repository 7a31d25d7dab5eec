//! The MLIR backend in the CLI: `compile --emit mlir` (module + signature
//! file), `dump --emit mlir` (the module on stdout) and `run --backend mlir`
//! (the module through reformc's own MLIR CPU pipeline).

use super::error::{CliError, CliResult};
use reformc_backend_mlir::{
    emit_module_with_weights, jit_run_with_weights_opts, signature_json, verify_module,
    EmitOptions, JitOptions, MlirError, WeightsMode,
};
use reformc_ir::{DType, Graph};
use reformc_tensor::Tensor;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `--weights-mode` of the MLIR outputs: `embed` (the default) or `args`.
pub fn weights_mode(flag: Option<&str>) -> CliResult<WeightsMode> {
    match flag {
        None | Some("embed") => Ok(WeightsMode::Embed),
        Some("args") => Ok(WeightsMode::Args),
        Some(other) => Err(CliError::input(format!(
            "--weights-mode {other}: --emit mlir takes `embed` (weights inside the module) or `args` (weights as leading arguments of @forward)"
        ))),
    }
}

/// Where the signature of module `out` goes: `<out>.json` (`model.mlir.json`).
pub fn signature_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// A backend error as the CLI reports it: an op without a lowering, an op
/// the lowering refuses, or weights that do not match are the input's fault
/// (exit 2, naming `what`: the model file); a module that does not verify or
/// run is a bug in reformc.
fn cli_error(what: &Path, e: MlirError) -> CliError {
    match e {
        MlirError::Unsupported { .. } | MlirError::Invalid { .. } | MlirError::Weights(_) => {
            CliError::input(format!("{}: {e}", what.display()))
        }
        MlirError::NotImplemented(_) | MlirError::Verify(_) => {
            CliError::internal(format!("MLIR backend: {e}"))
        }
    }
}

/// The weights as the graph declares them: the safetensors loader reads f32,
/// an f64 graph embeds f64 blobs. Borrowed unchanged when nothing converts
/// (the weights of a large model are not copied).
pub(super) fn as_graph_dtypes<'w>(
    g: &Graph,
    weights: &'w BTreeMap<String, Tensor>,
) -> Cow<'w, BTreeMap<String, Tensor>> {
    let f64_names: std::collections::BTreeSet<&str> = g
        .weights()
        .into_iter()
        .filter(|(_, v)| g.ty(*v).dtype == DType::F64)
        .map(|(n, _)| n)
        .collect();
    let converts = |(name, t): (&String, &Tensor)| {
        matches!(t, Tensor::F32(_)) && f64_names.contains(name.as_str())
    };
    if !weights.iter().any(converts) {
        return Cow::Borrowed(weights);
    }
    Cow::Owned(
        weights
            .iter()
            .map(|(name, t)| {
                let t = if converts((name, t)) {
                    Tensor::F64(t.to_f64())
                } else {
                    t.clone()
                };
                (name.clone(), t)
            })
            .collect(),
    )
}

/// The module text of `g`, checked by MLIR's verifier (a module that fails
/// it is never written).
pub fn module_text(
    g: &Graph,
    mode: WeightsMode,
    weights: &BTreeMap<String, Tensor>,
    what: &Path,
) -> CliResult<String> {
    let opts = EmitOptions { weights_mode: mode };
    let text = emit_module_with_weights(g, &opts, &as_graph_dtypes(g, weights))
        .map_err(|e| cli_error(what, e))?;
    verify_module(&text).map_err(|e| cli_error(what, e))?;
    Ok(text)
}

/// Writes the module to `out` and its signature to `<out>.json`; returns the
/// paths written.
pub fn write(g: &Graph, mode: WeightsMode, text: &str, out: &Path) -> CliResult<Vec<PathBuf>> {
    let sig = signature_path(out);
    let signature = signature_json(g, &EmitOptions { weights_mode: mode });
    for (path, body) in [(out, text), (sig.as_path(), signature.as_str())] {
        reformc_tensor::outfile::write_atomic(path, |w| w.write_all(body.as_bytes()))
            .map_err(|e| CliError::input(format!("{}: cannot write: {e}", path.display())))?;
    }
    Ok(vec![out.to_path_buf(), sig])
}

/// Runs `g` through the MLIR CPU pipeline with the weights embedded: the
/// inputs are taken by name from `inputs`, the outputs returned by name.
pub fn run_engine(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    what: &Path,
    flags: RunFlags,
) -> CliResult<(BTreeMap<String, Tensor>, &'static str)> {
    let args: CliResult<Vec<Tensor>> = g
        .inputs()
        .into_iter()
        .map(|(name, _)| {
            inputs.get(name).cloned().ok_or_else(|| {
                CliError::input(format!(
                    "{}: graph input `{name}` has no value (give it with its flag)",
                    what.display()
                ))
            })
        })
        .collect();
    let opts = JitOptions {
        profile: flags.profile,
    };
    let (mut outs, times) =
        jit_run_with_weights_opts(g, &as_graph_dtypes(g, weights), &[args?], opts)
            .map_err(|e| cli_error(what, e))?;
    let out = outs.pop().unwrap_or_default();
    if !flags.quiet {
        let run = times.runs.first().copied().unwrap_or_default();
        eprintln!(
            "reformc: MLIR CPU pipeline: compile {:.2} s, forward {:.1} ms",
            times.compile.as_secs_f64(),
            run.as_secs_f64() * 1e3
        );
    }
    if let Some(table) = &times.profile {
        eprint!("{table}");
    }
    let named = g.outputs.iter().map(|(n, _)| n.clone()).zip(out).collect();
    Ok((named, "MLIR CPU pipeline"))
}

/// How [`run_engine`] reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunFlags {
    /// No timing line.
    pub quiet: bool,
    /// Print the per-op table (`--profile`).
    pub profile: bool,
}

/// `reformc compile --emit mlir`: the model (a config, or IR text) with the
/// default pipeline run, as one module in `--output` and its signature
/// beside it.
pub fn compile(args: &super::compile::CompileArgs, t0: std::time::Instant) -> CliResult<()> {
    let mode = weights_mode(args.weights_mode.as_deref())?;
    for (set, flag) in [
        (args.memory_plan, "--memory-plan"),
        (args.profile, "--profile"),
    ] {
        if set {
            return Err(CliError::input(format!(
                "{flag} applies to the LLVM backend's outputs, not to --emit mlir"
            )));
        }
    }
    let sig = signature_path(&args.output);
    let inputs: super::outputs::Inputs<'_> = vec![
        ("the config", args.config.as_path()),
        ("--weights", args.weights.as_path()),
    ];
    super::outputs::guard("--output", &args.output, &inputs)?;
    super::outputs::guard("the signature file of --output", &sig, &inputs)?;
    args.passes.guard_outputs(&inputs)?;
    let (graph, weights) = graph_and_weights(args)?;
    let text = module_text(&graph, mode, &weights, &args.config)?;
    let written = write(&graph, mode, &text, &args.output)?;
    if !args.passes.quiet {
        println!(
            "reformc: emitted MLIR for `{}` ({} weights {}, {} bytes) in {:.2}s",
            args.config.display(),
            weights.len(),
            if mode == WeightsMode::Embed {
                "embedded"
            } else {
                "as arguments"
            },
            text.len(),
            t0.elapsed().as_secs_f64()
        );
        for w in written {
            println!("reformc: wrote {}", w.display());
        }
    }
    Ok(())
}

/// The graph `compile` emits (lowered from a config with `--lsh-source` and
/// `--seq-len`, or read from IR text) after the pass pipeline, and its
/// weights, checked against the weight file.
pub(super) fn graph_and_weights(
    args: &super::compile::CompileArgs,
) -> CliResult<(Graph, BTreeMap<String, Tensor>)> {
    if super::opt::is_ir(&args.config) {
        if args.lsh_source.is_some() {
            return Err(CliError::input(format!(
                "{}: --lsh-source needs a model config; IR text has its LSH inputs already",
                args.config.display()
            )));
        }
        let mut g = super::opt::read_ir(&args.config)?;
        let file = reformc_frontend::weights::WeightFile::open(&args.weights)?;
        let weights = super::model::graph_weights(&file, &g)?;
        super::model::check_finite(&weights, &args.weights, args.allow_nonfinite_weights)?;
        let opts = args.passes.options_without_model();
        args.passes
            .run_pipeline(&mut g, &opts, Some(&args.config))?;
        return Ok((g, weights));
    }
    let (_, lowered, weights) = lowered_model(args)?;
    Ok((lowered.graph, weights))
}

/// A model config lowered with `--lsh-source` (seeded by default) and
/// `--seq-len`, its weights checked against the file (finite unless
/// allowed), and the pass pipeline run: the model, the lowered graph and the
/// weights.
pub(super) fn lowered_model(
    args: &super::compile::CompileArgs,
) -> CliResult<(
    super::model::Model,
    reformc_frontend::lower::Lowered,
    BTreeMap<String, Tensor>,
)> {
    use reformc_frontend::lower::{LowerOptions, LshSource};
    let m = super::model::load(&args.config, Some(&args.weights), args.lm_head_bias)?;
    let lsh_source = match args.lsh_source.as_deref() {
        Some("rotations") => LshSource::Rotations,
        Some("buckets") => LshSource::Buckets,
        _ => LshSource::Seeded,
    };
    let seq_len = args.passes.seq_len;
    let mut lowered = m.lower(&LowerOptions {
        dtype: DType::F32,
        lsh_source,
        seq_len,
    })?;
    let weights = m.weight_tensors(&lowered)?;
    super::model::check_finite(&weights, &args.weights, args.allow_nonfinite_weights)?;
    args.passes.optimize(&mut lowered.graph, &m.spec, seq_len)?;
    Ok((m, lowered, weights))
}
