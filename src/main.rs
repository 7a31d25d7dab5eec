//! `reformc`: a compiler for long-sequence transformer (Reformer) models.

mod cli;

use clap::{Parser, Subcommand};

/// reformc compiles Reformer and transformer models (Hugging Face config.json
/// or reformc's model schema + safetensors weights) through a typed tensor IR.
#[derive(Parser, Debug)]
#[command(name = "reformc", version, long_version = LONG_VERSION, about)]
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
    /// Compile a model to an executable, object, shared library, LLVM IR, assembly or MLIR.
    Compile(cli::compile::CompileArgs),
    /// One training step: the loss and the gradient of every weight (.safetensors).
    Grad(cli::grad::GradArgs),
    /// Per layer: attention chosen and why, chunk sizes, FLOPs, static peak memory.
    Explain(cli::explain::ExplainArgs),
    /// Train a model on a token stream (optimizer, checkpoints, exact resume).
    Train(cli::train::TrainArgs),
    /// Run passes on IR text (a file `reformc dump` wrote, or one written by hand) and print the IR.
    Opt(cli::opt::OptArgs),
    /// List the registered passes with their one-line summaries.
    ListPasses,
}

/// `--version`: the version and where artifacts' runtime archive comes from.
#[cfg(reformc_embedded_runtime)]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nruntime archive: embedded (",
    env!("REFORMC_EMBEDDED_RUNTIME_HASH"),
    ")"
);
#[cfg(not(reformc_embedded_runtime))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nruntime archive: not embedded (searched beside the binary and in its build tree; REFORMC_RUNTIME_LIB overrides)"
);

/// Hands the runtime archive the build script embedded (release builds) to
/// the backend, which links artifacts against it.
fn embed_runtime() {
    #[cfg(reformc_embedded_runtime)]
    {
        use reformc_backend_llvm::runtime_lib::{embed, EmbeddedRuntime};
        static BYTES: &[u8] = include_bytes!(env!("REFORMC_EMBEDDED_RUNTIME"));
        embed(EmbeddedRuntime {
            bytes: BYTES,
            hash: env!("REFORMC_EMBEDDED_RUNTIME_HASH"),
        });
    }
}

fn main() {
    embed_runtime();
    let mut cli = match Cli::try_parse_from(help_help_as_help(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => exit_on_bad_arguments(e),
    };
    let result = resolve_model_paths(&mut cli.command).and_then(|()| dispatch(&cli.command));
    if let Err(e) = result {
        // Names and text taken from user files may hold control characters:
        // escaped, every error stays one line.
        eprintln!("error: {}", reformc_tensor::shown(&e.to_string()));
        std::process::exit(e.code);
    }
}

/// `reformc help --help` (or `-h`) asks how to get help: clap's generated
/// `help` subcommand takes no flags and would refuse it, so it is read as
/// `reformc --help`.
fn help_help_as_help(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.collect();
    let is_help_flag = |a: &std::ffi::OsString| a == "--help" || a == "-h";
    if args.len() == 3 && args[1] == "help" && is_help_flag(&args[2]) {
        args.remove(1);
    }
    args
}

/// Hugging Face folders given as the model become their config and weights.
fn resolve_model_paths(command: &mut Command) -> cli::error::CliResult<()> {
    use cli::model::{resolve_paths, resolve_required_paths};
    match command {
        Command::Run(a) => resolve_required_paths(&mut a.config, &a.weights_flag, &mut a.weights),
        Command::Compile(a) => {
            resolve_required_paths(&mut a.config, &a.weights_flag, &mut a.weights)
        }
        Command::Grad(a) => resolve_required_paths(&mut a.config, &a.weights_flag, &mut a.weights),
        Command::Dump(a) => resolve_paths(&mut a.config, &mut a.weights),
        Command::Train(a) => resolve_paths(&mut a.config, &mut a.weights),
        Command::Explain(a) => resolve_paths(&mut a.config, &mut None),
        Command::Opt(_) | Command::ListPasses => Ok(()),
    }
}

/// Runs the command.
fn dispatch(command: &Command) -> cli::error::CliResult<()> {
    match command {
        Command::Dump(a) => cli::dump::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Compile(a) => cli::compile::run(a),
        Command::Explain(a) => cli::explain::run(a),
        Command::Grad(a) => cli::grad::run(a),
        Command::Opt(a) => cli::opt::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::ListPasses => {
            println!("{}", reformc_passes::list_passes().trim_end());
            Ok(())
        }
    }
}

/// Help and version go to stdout as clap prints them; an argument error is one
/// line (clap's first, which names the flag and the accepted values), exit 2.
fn exit_on_bad_arguments(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || matches!(
            e.kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        e.exit();
    }
    // clap's message may continue on indented lines (the missing arguments);
    // the usage and "For more information" lines after it are dropped.
    let text = e.render().to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}", reformc_tensor::shown(&line.join(" ")));
    std::process::exit(2);
}
