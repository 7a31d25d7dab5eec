//! `reformc compile --train`: the flag checks and the step description the
//! executable's command line needs (where the labels go, the output names).

use super::CompileArgs;
use crate::cli::error::{CliError, CliResult};
use reformc_backend_llvm::aot::Emit;
use reformc_backend_llvm::{StepInfo, Variant};
use reformc_frontend::spec::ModelSpec;
use reformc_passes::autodiff::LABELS;
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

/// The forward inputs of a variant in the order the executable passes them.
const FORWARD_ORDER: &[&str] = &[
    "input_ids",
    "attention_mask",
    "seed",
    "lsh_rotations",
    "lsh_buckets",
];

/// The step description of compiled step graphs: `labels` must sit at one
/// position in every variant and the other inputs follow the executable's
/// order (ids, mask, hashing input); the outputs are named by the first variant.
pub fn step_info(variants: &[Variant], causal: bool) -> CliResult<StepInfo> {
    let mut index = None;
    for v in variants {
        let names: Vec<&str> = v.graph.inputs().iter().map(|(n, _)| *n).collect();
        let at = names.iter().position(|n| *n == LABELS).ok_or_else(|| {
            CliError::internal(format!("step variant `{}` has no `{LABELS}` input", v.name))
        })?;
        let rest: Vec<&str> = names.iter().filter(|n| **n != LABELS).copied().collect();
        let ordered = rest
            .iter()
            .map(|n| FORWARD_ORDER.iter().position(|f| f == n))
            .collect::<Option<Vec<_>>>()
            .is_some_and(|p| p.windows(2).all(|w| w[0] < w[1]));
        if !ordered || index.is_some_and(|i| i != at) {
            return Err(CliError::internal(format!(
                "step variant `{}` has inputs {names:?}: the executable passes ids, mask, the hashing input and `{LABELS}` at one position",
                v.name
            )));
        }
        index = Some(at);
    }
    let first = variants
        .first()
        .ok_or_else(|| CliError::internal("no variant"))?;
    Ok(StepInfo {
        causal,
        labels_index: index.unwrap_or(0) as i32,
        output_names: first.graph.outputs.iter().map(|(n, _)| n.clone()).collect(),
    })
}
