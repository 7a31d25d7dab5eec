//! `reformc dump`: print a model's IR as text or Graphviz dot.

use super::error::{CliError, CliResult};
use super::passes::PassArgs;
use super::{model, outputs};
use clap::Args;
use reformc_backend_mlir::WeightsMode;
use reformc_frontend::lower::{LowerOptions, LshSource};
use reformc_ir::DType;
use std::path::PathBuf;

/// Arguments of `reformc dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder (config.json + model.safetensors, or a
    /// sharded model.safetensors.index.json), as save_pretrained writes it.
    pub config: PathBuf,
    /// Weights (.safetensors, a shard index or a folder): checked against the
    /// graph, and their layout (prefix, head) used. Defaults to the model folder's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output format of the IR.
    #[arg(long, value_parser = ["text", "dot"], default_value = "text")]
    pub format: String,
    /// What to print: reformc's IR, or the module `compile --emit mlir` writes.
    #[arg(long, value_parser = ["ir", "mlir"], default_value = "ir")]
    pub emit: String,
    /// For --emit mlir: `embed` (weights as dense_resource blobs, needs
    /// --weights; the default) or `args` (weights as leading arguments).
    #[arg(long, value_parser = ["embed", "args"])]
    pub weights_mode: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Where LSH hashing decisions come from.
    #[arg(long, value_parser = ["seeded", "rotations", "buckets"], default_value = "seeded")]
    pub lsh_source: String,
    /// Element type of activations.
    #[arg(long, value_parser = ["f32", "f64"], default_value = "f32")]
    pub precision: String,
    /// Add `lm_head.bias` to the logits (HF 4.x behaviour).
    #[arg(long)]
    pub lm_head_bias: bool,
    /// Print the training step instead of the forward pass: the pipeline gains
    /// `lower-model` and `autodiff` (loss, labels input, one `grad:<weight>`
    /// output per weight).
    #[arg(long)]
    pub train: bool,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Runs the command.
pub fn run(args: &DumpArgs) -> CliResult<()> {
    let mut inputs: outputs::Inputs<'_> = vec![("the config", args.config.as_path())];
    if let Some(w) = &args.weights {
        inputs.push(("--weights", w.as_path()));
    }
    if let Some(out) = &args.output {
        outputs::guard("--output", out, &inputs)?;
    }
    args.passes.guard_outputs(&inputs)?;
    let mlir = args.emit == "mlir";
    let mode = super::mlir::weights_mode(args.weights_mode.as_deref())?;
    if !mlir && args.weights_mode.is_some() {
        return Err(CliError::input("--weights-mode applies to --emit mlir"));
    }
    if mlir && args.format != "text" {
        return Err(CliError::input(
            "--format applies to --emit ir; --emit mlir prints MLIR text",
        ));
    }
    if mlir && mode == WeightsMode::Embed && args.weights.is_none() {
        return Err(CliError::input(
            "--emit mlir embeds the weights: pass --weights model.safetensors, or --weights-mode args",
        ));
    }
    let m = model::load(&args.config, args.weights.as_deref(), args.lm_head_bias)?;
    if args.train {
        // The step's loss is the LM cross-entropy: a task head has none.
        let file = args.weights.as_deref().unwrap_or(&args.config);
        super::compile::train_step::require_lm_head(&m.spec, file, "dump --train")?;
    }
    let lsh_source = match args.lsh_source.as_str() {
        "rotations" => LshSource::Rotations,
        "buckets" => LshSource::Buckets,
        _ => LshSource::Seeded,
    };
    let dtype = if args.precision == "f64" {
        DType::F64
    } else {
        DType::F32
    };
    let seq_len = args.passes.seq_len;
    let mut lowered = m.lower(&LowerOptions {
        dtype,
        lsh_source,
        seq_len,
    })?;
    let weights = match m.weights {
        Some(_) => m.weight_tensors(&lowered)?,
        None => Default::default(),
    };
    let mut passes = args.passes.clone();
    passes.train = args.train;
    passes.optimize(&mut lowered.graph, &m.spec, seq_len)?;
    let text = match args.format.as_str() {
        _ if mlir => super::mlir::module_text(&lowered.graph, mode, &weights, &args.config)?,
        "dot" => reformc_ir::to_dot(&lowered.graph),
        _ => reformc_ir::print(&lowered.graph),
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
