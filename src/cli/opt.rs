//! `reformc opt`: read IR text, run passes on it and print the result, so that
//! one pass can be tried (and tested) on a hand-written graph without a model.

use super::error::{CliError, CliResult};
use super::outputs;
use super::passes::PassArgs;
use clap::Args;
use reformc_ir::Graph;
use std::path::{Path, PathBuf};

/// Arguments of `reformc opt`.
#[derive(Args, Debug)]
pub struct OptArgs {
    /// IR text (the format `reformc dump` prints).
    pub input: PathBuf,
    /// Comma-separated passes to run (default: reformc's default pipeline; `none` runs no pass).
    #[arg(long, value_name = "PASSES", conflicts_with = "pipeline")]
    pub passes: Option<String>,
    /// Output format: reformc IR text, Graphviz dot, or the MLIR module the
    /// MLIR backend emits for the graph (weights as leading arguments, since
    /// IR text carries no weight data).
    #[arg(long, value_parser = ["text", "dot", "mlir"], default_value = "text")]
    pub format: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub pass_args: PassArgs,
}

/// Runs the command.
pub fn run(args: &OptArgs) -> CliResult<()> {
    let inputs: outputs::Inputs<'_> = vec![("the input", args.input.as_path())];
    if let Some(out) = &args.output {
        outputs::guard("--output", out, &inputs)?;
    }
    args.pass_args.guard_outputs(&inputs)?;
    let mut g = read_ir(&args.input)?;
    let mut pass_args = args.pass_args.clone();
    if let Some(passes) = &args.passes {
        // Named here so that the message names the flag the user wrote.
        pass_args.pipeline = Some(passes.clone());
        pass_args
            .pipeline()
            .map_err(|e| CliError::input(e.message.replacen("--pipeline", "--passes", 1)))?;
    }
    pass_args.run_pipeline(
        &mut g,
        &pass_args.options_without_model(),
        Some(&args.input),
    )?;
    let text = match args.format.as_str() {
        "dot" => reformc_ir::to_dot(&g),
        "mlir" => mlir_text(&g, &args.input)?,
        _ => reformc_ir::print(&g),
    };
    match &args.output {
        Some(p) => reformc_ir::outfile::write_atomic(p, |w| w.write_all(text.as_bytes()))
            .map_err(|e| CliError::internal(format!("{}: cannot write: {e}", p.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// The MLIR module of `g` with weights as arguments; an op the backend
/// rejects is the user's error, naming the file.
fn mlir_text(g: &Graph, input: &Path) -> CliResult<String> {
    let opts = reformc_backend_mlir::EmitOptions {
        weights_mode: reformc_backend_mlir::WeightsMode::Args,
    };
    reformc_backend_mlir::emit_module(g, &opts)
        .map_err(|e| CliError::input(format!("{}: {e}", input.display())))
}

/// Reads, parses and verifies an IR file; every failure is the user's and
/// names the file (and the line:column for parse errors).
pub fn read_ir(path: &Path) -> CliResult<Graph> {
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| CliError::input(format!("{shown}: cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError::input(format!(
            "{shown}: not UTF-8 text (IR expected): invalid byte at offset {}",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let g = reformc_ir::parse(&text).map_err(|e| CliError::input(format!("{shown}:{e}")))?;
    reformc_ir::verify(&g)
        .map_err(|e| CliError::input(format!("{shown}: the IR does not verify: {e}")))?;
    Ok(g)
}

/// Whether `path` names IR text (`.ir`) rather than a model config.
pub fn is_ir(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ir"))
}
