//! `reformc explain`: per layer, the attention chosen and why, chunk sizes,
//! FLOPs and the static peak memory of each stage, before and after the passes.

use super::error::{CliError, CliResult};
use super::model;
use super::passes::PassArgs;
use clap::Args;
use reformc_frontend::lower::LowerOptions;
use std::path::PathBuf;

/// Arguments of `reformc explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Model description: a Hugging Face config.json or a reformc model file,
    /// or a Hugging Face model folder (config.json + model.safetensors, or a
    /// sharded model.safetensors.index.json), as save_pretrained writes it.
    pub config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads of the executable the static peak is for (its
    /// per-thread scratch counts); 0 = all cores, as the executable's default.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub threads: u64,
    /// Explain the training step (the pipeline gains `lower-model` and
    /// `autodiff`): its FLOPs and static peak, reversible blocks recomputed.
    #[arg(long)]
    pub train: bool,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Runs the command.
pub fn run(args: &ExplainArgs) -> CliResult<()> {
    let m = model::load(&args.config, None, false)?;
    let max = model::max_len(&m.spec);
    let note = match args.passes.seq_len {
        None => Some(format!(
            "no --seq-len given: explained at L={max}, the longest input the model's position embeddings allow"
        )),
        Some(l) if m.spec.padded_len(l) > max => {
            eprintln!(
                "warning: --seq-len {l} exceeds the longest input the model takes ({max}, its position embeddings): a run at this length is refused"
            );
            None
        }
        Some(_) => None,
    };
    let seq_len = args.passes.seq_len.unwrap_or(max);
    let lowered = m.lower(&LowerOptions {
        seq_len: Some(seq_len),
        ..LowerOptions::default()
    })?;
    let mut passes = args.passes.clone();
    passes.train = args.train;
    let pipeline = passes.pipeline()?;
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        n => n,
    };
    let mut opts = args.passes.options(&m.spec);
    opts.seq_len = Some(seq_len);
    let mut e = reformc_passes::explain::explain_on(&lowered.graph, &opts, &pipeline, threads)
        .map_err(|e| CliError::input(e.to_string()))?;
    e.notes.extend(note);
    if args.json {
        let text = serde_json::to_string_pretty(&e.to_json())
            .map_err(|e| CliError::internal(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", e.to_table());
    }
    Ok(())
}
