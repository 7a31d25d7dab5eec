//! `local_attention` as tensor ops (REFORMER.md §2, the interpreter's
//! `attention::local_attention`).
//!
//! The sequence is padded to whole chunks (a no-op for the lengths HF's
//! padding produces above the chunk length; a sequence no longer than one
//! chunk becomes one chunk), split into heads and chunks, and each query
//! chunk attends to the keys of its own chunk and of `before`/`after`
//! neighbours (gathered by a flat key-slot index, wrapping around), with the
//! causal and padding masks of the interpreter; padded key slots get
//! [`PAD_VALUE`](super::chunked::PAD_VALUE) and padded query rows are cut off
//! at the end. Memory is O(L * chunk): the logits are `[B, H, n, c, c_kv]`.
//!
//! A sequence of at most one chunk is full attention in the interpreter; here
//! it is the single chunk attending to itself `1 + before + after` times,
//! which weighs every key equally often and so gives the same softmax.

use super::chunked::{key_flags, mask_logits, Builder};
use super::dropout::Mask;
use reformc_ir::{Dim, Graph, Node, Op, OpKind, ValueId};

/// The attributes of a `local_attention` node.
struct Local {
    heads: u64,
    scale: f64,
    chunk: u64,
    before: u64,
    after: u64,
    causal: bool,
}

impl Local {
    fn of(node: &Node) -> Result<Local, String> {
        let op = &node.op;
        let get = |name: &str| {
            op.int(name)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| {
                    format!("local_attention: attribute `{name}` is missing or negative")
                })
        };
        Ok(Local {
            heads: get("heads")?,
            scale: op
                .float("scale")
                .ok_or("local_attention: attribute `scale` is missing")?,
            chunk: get("chunk")?,
            before: get("before")?,
            after: get("after")?,
            causal: op.flag("causal"),
        })
    }
}

/// Appends the decomposition of the `local_attention` `node` (operands
/// `inputs`: q, k, v and the optional `[B, L]` mask, already in `g`) and
/// returns the `[B, L, H*dv]` value that replaces it.
///
/// A constant length above the chunk length that is not a multiple of it is
/// an error here, as it is in the interpreter; a symbolic one is assumed to
/// be at most one chunk or a multiple of the chunk length (what the
/// frontend's padding guarantees) and is padded up otherwise.
pub(crate) fn lower(
    g: &mut Graph,
    node: &Node,
    inputs: &[ValueId],
    dropout: Option<Mask>,
) -> Result<ValueId, String> {
    let a = Local::of(node)?;
    if inputs.len() < 3 {
        return Err(format!(
            "local_attention takes q, k, v[, mask], found {} operands",
            inputs.len()
        ));
    }
    let (q, k, v, mask) = (inputs[0], inputs[1], inputs[2], inputs.get(3).copied());
    let mut b = Builder::new(g, node);
    check_length(&b.dims(q)[1], a.chunk)?;
    let dtype = b.ty(q).dtype;
    let padded = b.sym("Pad");
    let mut heads = Vec::new();
    for x in [q, k, v] {
        let p = b.pad_rows(x, a.chunk, &padded)?;
        heads.push(b.split_heads(p, a.heads)?);
    }
    let (q4, k4, v4) = (heads[0], heads[1], heads[2]);
    // HF divides the keys by sqrt(d); dividing by 1/scale keeps its rounding.
    let div = b.constant(dtype, 1.0 / a.scale)?;
    let keys = b.bin(OpKind::Div, k4, div)?;

    let n = b.sym("Nc");
    let qc = chunked(&mut b, q4, &n, a.chunk)?;
    let slots = b.adjacent_slots(qc, 2, a.chunk, a.before, a.after)?;
    let width = a.chunk * (a.before + 1 + a.after);
    let kidx = b.broadcast_index(slots, keys, 2)?;
    let kadj = adjacent_rows(&mut b, keys, kidx, &n, width)?;
    // Keys and values share their leading axes: one row index serves both.
    let vadj = adjacent_rows(&mut b, v4, kidx, &n, width)?;
    let kt = b.transpose(kadj, &[0, 1, 2, 4, 3])?;
    let logits = b.op(Op::new(OpKind::Matmul), vec![qc, kt])?;

    // Positions: query slot j*c + s, key slots as gathered; flags by key slot.
    let j = b.iota(qc, 2)?;
    let c = b.int(a.chunk as i64)?;
    let jc = b.bin(OpKind::Mul, j, c)?;
    let jc = b.reshape(jc, vec![n.clone(), Dim::Const(1)])?;
    let s = b.iota(qc, 3)?;
    let s = b.reshape(s, vec![Dim::Const(1), Dim::Const(a.chunk)])?;
    let qpos = b.bin(OpKind::Add, jc, s)?;
    let qpos = b.reshape(qpos, vec![n.clone(), Dim::Const(a.chunk), Dim::Const(1)])?;
    let kpos = b.reshape(slots, vec![n.clone(), Dim::Const(1), Dim::Const(width)])?;
    let flags = key_flags(&mut b, q, mask, a.chunk, &padded)?;
    let flag_idx = b.broadcast_index(slots, flags, 1)?;
    let kflag = b.gather(flags, flag_idx, 1)?;
    let bm = b.dims(kflag)[0].clone();
    let kflag = b.reshape(
        kflag,
        vec![
            bm,
            Dim::Const(1),
            n.clone(),
            Dim::Const(1),
            Dim::Const(width),
        ],
    )?;
    let logits = mask_logits(&mut b, logits, qpos, kpos, kflag, a.causal, false)?;

    let probs = b.on_axis(OpKind::Softmax, vec![logits], 4)?;
    // Train mode: HF drops attention probabilities before weighing the values.
    let probs = match dropout {
        Some(m) => b.masked(probs, &m)?,
        None => probs,
    };
    let out = b.op(Op::new(OpKind::Matmul), vec![probs, vadj])?;
    let d = b.dims(out);
    let out = b.reshape(out, vec![d[0].clone(), d[1].clone(), padded, d[4].clone()])?;
    let merged = b.merge_heads(out)?;
    let result = b.take_prefix(merged, q)?;
    expect_type(&b, result, node)?;
    Ok(result)
}

/// `[B, H, P, d]` -> `[B, H, n, c, d]` (also `[B, H, M, d]` -> `[B, H, n, width, d]`).
pub(super) fn chunked(b: &mut Builder, x: ValueId, n: &Dim, c: u64) -> Result<ValueId, String> {
    let s = b.dims(x);
    b.reshape(
        x,
        vec![
            s[0].clone(),
            s[1].clone(),
            n.clone(),
            Dim::Const(c),
            s[3].clone(),
        ],
    )
}

/// The rows of `x` `[B, H, P, d]` at the key slots of `idx` `[B, H, M]`
/// (see [`Builder::broadcast_index`]), chunked as `[B, H, n, width, d]`.
fn adjacent_rows(
    b: &mut Builder,
    x: ValueId,
    idx: ValueId,
    n: &Dim,
    width: u64,
) -> Result<ValueId, String> {
    let rows = b.gather(x, idx, 2)?;
    let s = b.dims(x);
    b.reshape(
        rows,
        vec![
            s[0].clone(),
            s[1].clone(),
            n.clone(),
            Dim::Const(width),
            s[3].clone(),
        ],
    )
}

/// A constant length must be at most one chunk or a multiple of it.
pub(super) fn check_length(len: &Dim, chunk: u64) -> Result<(), String> {
    match len.as_const() {
        Some(l) if l > chunk && l % chunk != 0 => Err(format!(
            "length {l} is not a multiple of the chunk length {chunk} (pad the sequence first)"
        )),
        _ => Ok(()),
    }
}

/// The decomposition's result must have the node's type.
pub(super) fn expect_type(b: &Builder, v: ValueId, node: &Node) -> Result<(), String> {
    if *b.ty(v) == node.ty {
        Ok(())
    } else {
        Err(format!(
            "`{}` lowered to {}, expected {}",
            node.op.kind,
            b.ty(v),
            node.ty
        ))
    }
}
