//! `reformc run FILE.ir`: run IR text (what `reformc dump` or `reformc opt`
//! wrote, possibly edited) on token ids, with weights from `--weights`.
//!
//! There is no model config: the graph's own types decide the precision,
//! and its inputs are fed by name from the flags that `run` already has.

use super::error::{CliError, CliResult};
use super::run::RunArgs;
use super::{model, npy, opt, outputs, run};
use ndarray::{ArrayD, IxDyn};
use reformc_frontend::weights::WeightFile;
use reformc_ir::{DType, Graph, OpKind, ValueId};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// Graph inputs `run` can feed from an `.ir` file, and the flag behind each.
const FED: &str =
    "input_ids (--input), attention_mask (--attention-mask, default all ones), seed (--seed)";

/// Runs the command on an IR file.
pub fn run(args: &RunArgs) -> CliResult<()> {
    let mut clock = run::PhaseClock::new(args.time, args.passes.quiet);
    let inputs = run::inputs(args);
    outputs::guard("--output", &args.output, &inputs)?;
    args.passes.guard_outputs(&inputs)?;
    let file = &args.config;
    if args.lsh_rotations.is_some() || args.lsh_buckets.is_some() {
        return Err(CliError::input(format!(
            "{}: --lsh-rotations and --lsh-buckets need a model config; with IR input the graph's inputs are {FED}",
            file.display()
        )));
    }
    let mut g = opt::read_ir(file)?;
    check_weight_types(&g, file)?;
    let ids = npy::read_int(&args.input, 2, "token ids [B, L]")?;
    check_ids(&g, &args.input, &ids)?;
    let feeds = feed(&g, file, ids, args)?;
    let weights = model::graph_weights(&WeightFile::open(&args.weights)?, &g)?;
    model::check_finite(&weights, &args.weights, args.allow_nonfinite_weights)?;
    clock.lap("load");
    let mut opts = args.passes.options_without_model();
    opts.seq_len = opts.seq_len.or(Some(seq_len(&feeds)));
    args.passes.run_pipeline(&mut g, &opts, Some(file))?;
    clock.lap("passes");
    let (outputs, engine) = run::engine(args, &g, &feeds, &weights, &mut clock)?;
    run::write_outputs(args, outputs, engine, "output")?;
    clock.lap("write output");
    clock.report();
    Ok(())
}

/// Weights are read from safetensors as F32 at their declared shape, so the
/// IR must declare them so.
fn check_weight_types(g: &Graph, file: &std::path::Path) -> CliResult<()> {
    for (name, v) in g.weights() {
        let ty = g.ty(v);
        if ty.dtype != DType::F32 || ty.shape.iter().any(|d| d.as_const().is_none()) {
            return Err(CliError::input(format!(
                "{}: weight `{name}` is {ty}: weights must be f32 with numeric dimensions",
                file.display()
            )));
        }
    }
    Ok(())
}

/// The tensors for the graph's inputs, by name; an input with no source is
/// the user's error, naming it and what can be fed.
fn feed(
    g: &Graph,
    file: &std::path::Path,
    ids: ArrayD<i64>,
    args: &RunArgs,
) -> CliResult<BTreeMap<String, Tensor>> {
    let shape = ids.shape().to_vec();
    let mask = match &args.attention_mask {
        Some(p) => Some(npy::read_int(p, 2, "attention mask [B, L]")?),
        None => None,
    };
    if let Some(m) = &mask {
        if m.shape() != shape.as_slice() {
            return Err(CliError::input(format!(
                "{}: attention mask: expected shape {shape:?} (that of the token ids), found {:?}",
                args.attention_mask.as_deref().unwrap_or(file).display(),
                m.shape()
            )));
        }
    }
    let mut ids = Some(ids);
    let mut mask = Some(mask.unwrap_or_else(|| ArrayD::from_elem(IxDyn(&shape), 1)));
    let mut out = BTreeMap::new();
    for (name, _) in g.inputs() {
        let t = match name {
            "input_ids" => ids.take().map(Tensor::I64),
            "attention_mask" => mask.take().map(Tensor::I64),
            "seed" => Some(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), args.seed))),
            _ => None,
        };
        let Some(t) = t else {
            return Err(CliError::input(format!(
                "{}: graph input `{name}` cannot be fed by `reformc run`: it feeds {FED}, each once",
                file.display()
            )));
        };
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// The sequence length of the token ids, the cost model's target length.
fn seq_len(feeds: &BTreeMap<String, Tensor>) -> u64 {
    feeds
        .get("input_ids")
        .map_or(1, |t| t.shape().get(1).copied().unwrap_or(1) as u64)
}

/// Refuses token ids outside every embedding table that `input_ids` selects
/// rows of (through padding and reshapes), as `run` does with a config's
/// vocabulary: a bad id is the input file's fault, caught before any work.
fn check_ids(g: &Graph, path: &std::path::Path, ids: &ArrayD<i64>) -> CliResult<()> {
    if ids.is_empty() {
        return Err(CliError::input(format!(
            "{}: token ids: expected a non-empty [B, L] array, found shape {:?}",
            path.display(),
            ids.shape()
        )));
    }
    let Some(rows) = g
        .walk()
        .into_iter()
        .filter(|&v| g.node(v).op.kind == OpKind::Embedding)
        .filter(|&e| reads_input_ids(g, g.node(e).inputs[0]))
        .filter_map(|e| g.ty(g.node(e).inputs[1]).shape.first()?.as_const())
        .min()
    else {
        return Ok(());
    };
    match ids.indexed_iter().find(|(_, &v)| v < 0 || v as u64 >= rows) {
        Some((ix, &id)) => Err(CliError::input(format!(
            "{}: token id {id} at [{}, {}] is out of range: the embedding table has {rows} rows (expected 0 <= id < {rows})",
            path.display(),
            ix[0],
            ix[1]
        ))),
        None => Ok(()),
    }
}

/// Whether `v` is the `input_ids` input, padded or reshaped.
fn reads_input_ids(g: &Graph, mut v: ValueId) -> bool {
    loop {
        let node = g.node(v);
        match node.op.kind {
            OpKind::Input => return node.op.str("name") == Some("input_ids"),
            OpKind::PadToMultiple | OpKind::Reshape => v = node.inputs[0],
            _ => return false,
        }
    }
}
