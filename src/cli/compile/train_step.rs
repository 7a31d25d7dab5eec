//! `reformc compile --train`: the flag checks and the step description the
//! executable's command line needs (where the labels go, the output names).

use super::CompileArgs;
use crate::cli::error::{CliError, CliResult};
use reformc_backend_llvm::aot::Emit;
use reformc_backend_llvm::{StepInfo, Variant};
use reformc_frontend::spec::ModelSpec;
use reformc_passes::autodiff::LABELS;
use reformc_passes::lower_model::INTERFACE_INPUTS;
use std::path::Path;

/// Refuses flag combinations `--train` (or `--precision`) cannot honour.
pub fn check_flags(args: &CompileArgs) -> CliResult<()> {
    if args.precision == "f64" {
        return Err(CliError::input(
            "--precision f64: the LLVM backend compiles f32 code only; for an f64 step use `reformc grad --precision f64` (the interpreter)",
        ));
    }
    if args.precision == "bf16" && args.emit == "mlir" {
        return Err(CliError::input(
            "--precision bf16 with --emit mlir: bf16 matrix products are an option of the LLVM backend (--emit exe|lib|obj|staticlib|llvm|asm)",
        ));
    }
    if args.train && !matches!(args.emit.as_str(), "exe" | "lib" | "obj") {
        return Err(CliError::input(format!(
            "--train with --emit {}: a training step compiles to an executable, a shared library or an object file (--emit exe|lib|obj)",
            args.emit
        )));
    }
    Ok(())
}

/// A training step needs a loss: the model must have an LM head.
pub fn check_model(spec: &ModelSpec, weights: &Path) -> CliResult<()> {
    require_lm_head(spec, weights, "--train")
}

/// The error of a training command (`what`: `grad`, `train`, `--train`) for a
/// model without an LM head: reformc's only loss is the LM cross-entropy, so
/// a bare model has nothing to differentiate and a task head (sequence
/// classification, question answering) has a loss reformc does not build.
pub fn require_lm_head(spec: &ModelSpec, weights: &Path, what: &str) -> CliResult<()> {
    reformc_train::setup::require_lm_head(spec, weights, what).map_err(CliError::input)
}

/// For a step library or object of a causal LM: its callers must shift the
/// labels themselves (the executable does it for its `--labels`).
pub fn labels_note(args: &CompileArgs, emit: Emit, causal: bool) -> Option<String> {
    (args.train && causal && emit != Emit::Exe).then(|| {
        format!(
            "the step's `{LABELS}` input is aligned with the logits: for this causal LM pass labels[:, 1:] followed by -100 (position t predicts token t+1), as `reformc grad` does"
        )
    })
}

/// The step description of compiled step graphs. The executable passes ids,
/// mask, the seed (where dropout masks are drawn, in every variant), a
/// replayed hashing input, then `labels`: every variant's inputs must follow
/// that order ([`INTERFACE_INPUTS`], `labels` last), and either every
/// variant takes `seed` or only the seeded one does. The outputs are named by
/// the first variant.
pub fn step_info(variants: &[Variant], causal: bool) -> CliResult<StepInfo> {
    let mut seeds = Vec::new();
    for v in variants {
        let names: Vec<&str> = v.graph.inputs().iter().map(|(n, _)| *n).collect();
        let (last, rest) = names.split_last().unzip();
        let ordered = rest
            .unwrap_or_default()
            .iter()
            .map(|n| INTERFACE_INPUTS.iter().position(|f| f == n))
            .collect::<Option<Vec<_>>>()
            .is_some_and(|p| p.windows(2).all(|w| w[0] < w[1]));
        if last != Some(&LABELS) || !ordered {
            return Err(CliError::internal(format!(
                "step variant `{}` has inputs {names:?}: the executable passes ids, mask, the seed, the hashing input and `{LABELS}` last",
                v.name
            )));
        }
        seeds.push(names.contains(&"seed"));
    }
    let first = variants
        .first()
        .ok_or_else(|| CliError::internal("no variant"))?;
    let seed = seeds.iter().all(|&s| s);
    let seeded_only = variants
        .iter()
        .zip(&seeds)
        .all(|(v, &s)| s == (v.name == "seeded"));
    if !seed && !seeded_only {
        return Err(CliError::internal(format!(
            "step variants {:?} disagree on taking `seed`",
            variants.iter().map(|v| &v.name).collect::<Vec<_>>()
        )));
    }
    Ok(StepInfo {
        causal,
        labels_index: first.graph.inputs().len() as i32 - 1,
        seed,
        output_names: first.graph.outputs.iter().map(|(n, _)| n.clone()).collect(),
    })
}
