//! `reformc`: a compiler for long-sequence transformer (Reformer) models.

mod cli;

use clap::{Parser, Subcommand};

/// reformc compiles Reformer and transformer models (Hugging Face config.json
/// or reformc's model schema + safetensors weights) through a typed tensor IR.
#[derive(Parser, Debug)]
#[command(name = "reformc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model's IR (text or Graphviz dot).
    Dump(cli::dump::DumpArgs),
    /// Run a model on token ids and write its output (.npy).
    Run(cli::run::RunArgs),
    /// Compile a model to an executable, object, shared library, LLVM IR or assembly.
    Compile(cli::compile::CompileArgs),
    /// Per layer: attention chosen and why, chunk sizes, FLOPs, static peak memory.
    Explain(cli::explain::ExplainArgs),
    /// List the registered passes with their one-line summaries.
    ListPasses,
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(a) => cli::dump::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Compile(a) => cli::compile::run(a),
        Command::Explain(a) => cli::explain::run(a),
        Command::ListPasses => {
            println!("{}", reformc_passes::list_passes().trim_end());
            Ok(())
        }
    };
    if let Err(e) = result {
        // Names and text taken from user files may hold control characters:
        // escaped, every error stays one line.
        eprintln!("error: {}", reformc_runtime::error::shown(&e.to_string()));
        std::process::exit(e.code);
    }
}
