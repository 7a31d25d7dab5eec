//! `lsh_attention` as tensor ops (REFORMER.md §1.4-§1.8, the interpreter's
//! `attention::lsh_attention`).
//!
//! Per batch and head: the round-major slots `t = round * P + position` are
//! sorted by bucket id with a stable `argsort` (the ids of `lsh_hash` carry
//! the round offsets, so ties keep round-major order, HF's sort key); the
//! shared query/keys, the length-normalised keys and the values are gathered
//! in sorted order and chunked; each chunk attends to itself and its
//! `before`/`after` neighbours (wrapping around, across rounds) with the
//! causal, padding and self masks compared on original positions; the
//! outputs and log-sum-exps are unsorted with the inverse permutation and
//! the rounds combined with softmax weights of their log-sum-exps.
//!
//! The probabilities are a `softmax` (max subtracted, divided by the sum)
//! rather than `exp(logits - lse)`: near the self value -1e5, f32 cannot
//! hold `lse` to better than 1/128, which would scale a row by up to 0.4%
//! (REFORMER.md §1.8); the interpreter keeps (max, sum) apart for the same
//! reason. Memory is O(L * chunk): the logits are `[B, H, n, c, c_kv]`.
//!
//! A sequence of at most one chunk is full shared-QK attention in the
//! interpreter (no hashing). Here it is padded to one chunk and every slot's
//! bucket becomes its round, so that chunk `j` holds round `j`, i.e. every
//! position once, and each chunk sees every key `1 + before + after` times:
//! the same softmax, and every round the same output.

use super::chunked::{key_flags, mask_logits, Builder};
use super::dropout::Mask;
use super::local::{check_length, chunked, expect_type};
use reformc_ir::{Dim, Graph, Node, Op, OpKind, ValueId};

/// The attributes of an `lsh_attention` node.
struct Lsh {
    heads: u64,
    chunk: u64,
    before: u64,
    after: u64,
    causal: bool,
}

impl Lsh {
    fn of(node: &Node) -> Result<Lsh, String> {
        let op = &node.op;
        let get = |name: &str| {
            op.int(name)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| format!("lsh_attention: attribute `{name}` is missing or negative"))
        };
        Ok(Lsh {
            heads: get("heads")?,
            chunk: get("chunk")?,
            before: get("before")?,
            after: get("after")?,
            causal: op.flag("causal"),
        })
    }
}

/// The sorted order of one decomposition: slots `[B, H, RP]` in sorted
/// order hold round-major slot `perm`, whose position is `spos` and key flag
/// `sflag`; `inv` is the inverse permutation.
struct Sorted {
    spos: ValueId,
    sflag: ValueId,
    inv: ValueId,
}

/// Appends the decomposition of the `lsh_attention` `node` (operands
/// `inputs`: shared query/keys `[B, L, H*d]`, values, bucket ids
/// `i64[B, H, r, L]` and the optional `[B, L]` mask, already in `g`) and
/// returns the `[B, L, H*d]` value that replaces it.
///
/// Lengths: as for `local_attention` (see [`super::local::lower`]), a
/// constant length above the chunk length must be a multiple of it.
pub(crate) fn lower(
    g: &mut Graph,
    node: &Node,
    inputs: &[ValueId],
    dropout: Option<Mask>,
) -> Result<ValueId, String> {
    let a = Lsh::of(node)?;
    if inputs.len() < 3 {
        return Err(format!(
            "lsh_attention takes qk, v, buckets[, mask], found {} operands",
            inputs.len()
        ));
    }
    let (qk, v, buckets, mask) = (inputs[0], inputs[1], inputs[2], inputs.get(3).copied());
    let mut b = Builder::new(g, node);
    check_length(&b.dims(qk)[1], a.chunk)?;
    let rounds = b.dims(buckets)[2].as_const().ok_or_else(|| {
        format!(
            "lsh_attention: the number of rounds of {} must be a constant",
            b.ty(buckets)
        )
    })?;
    let padded = b.sym("Pad");
    let qp = b.pad_rows(qk, a.chunk, &padded)?;
    let x4 = b.split_heads(qp, a.heads)?;
    let vp = b.pad_rows(v, a.chunk, &padded)?;
    let v4 = b.split_heads(vp, a.heads)?;
    let keys = normalized_keys(&mut b, x4)?;

    let sorted = sort_slots(&mut b, qk, buckets, mask, &a, &padded, rounds)?;
    let sq = gather_rows(&mut b, x4, sorted.spos)?;
    let n = b.sym("Nc");
    let sqc = chunked(&mut b, sq, &n, a.chunk)?;
    let slots = b.adjacent_slots(sqc, 2, a.chunk, a.before, a.after)?;
    let slot_idx = b.broadcast_index(slots, sorted.spos, 2)?;
    let kpos = b.gather(sorted.spos, slot_idx, 2)?;
    let kflag = b.gather(sorted.sflag, slot_idx, 2)?;
    let width = a.chunk * (a.before + 1 + a.after);
    // Keys and values have one shape: one index operand serves both.
    let kadj = b.gather(keys, kpos, 2)?;
    let kadj = chunked(&mut b, kadj, &n, width)?;
    let vadj = b.gather(v4, kpos, 2)?;
    let vadj = chunked(&mut b, vadj, &n, width)?;
    let kt = b.transpose(kadj, &[0, 1, 2, 4, 3])?;
    let logits = b.op(Op::new(OpKind::Matmul), vec![sqc, kt])?;

    let d = b.dims(sorted.spos);
    let (bd, hd) = (d[0].clone(), d[1].clone());
    let chunk_shape = |last: Vec<Dim>| {
        let mut s = vec![bd.clone(), hd.clone(), n.clone()];
        s.extend(last);
        s
    };
    let c = Dim::Const(a.chunk);
    let qpos = b.reshape(sorted.spos, chunk_shape(vec![c.clone(), Dim::Const(1)]))?;
    let kpos = b.reshape(kpos, chunk_shape(vec![Dim::Const(1), Dim::Const(width)]))?;
    let kflag = b.reshape(kflag, chunk_shape(vec![Dim::Const(1), Dim::Const(width)]))?;
    let logits = mask_logits(&mut b, logits, qpos, kpos, kflag, a.causal, true)?;

    let probs = b.on_axis(OpKind::Softmax, vec![logits], 4)?;
    // Train mode: HF drops attention probabilities before weighing the values.
    let probs = match dropout {
        Some(m) => b.masked(probs, &m)?,
        None => probs,
    };
    let out = b.op(Op::new(OpKind::Matmul), vec![probs, vadj])?;
    let slot_dims = b.dims(sq);
    let out = b.reshape(out, slot_dims)?;
    let out = gather_rows(&mut b, out, sorted.inv)?;
    let out = if rounds == 1 {
        out
    } else {
        let lse = b.reduce(logits, "logsumexp", 4, true)?;
        combine_rounds(&mut b, out, lse, sorted.inv, rounds, &padded)?
    };
    let merged = b.merge_heads(out)?;
    let result = b.take_prefix(merged, qk)?;
    expect_type(&b, result, node)?;
    Ok(result)
}

/// HF's key normalisation (the interpreter's `len_norm` and scaling):
/// `x * rsqrt(mean(x^2) + 1e-6) / sqrt(d)` per row of `x` `[B, H, P, d]`.
fn normalized_keys(b: &mut Builder, x: ValueId) -> Result<ValueId, String> {
    let dtype = b.ty(x).dtype;
    let d = b.dims(x)[3]
        .as_const()
        .ok_or("the head width must be a constant")?;
    let sq = b.bin(OpKind::Mul, x, x)?;
    let ms = b.reduce(sq, "mean", 3, true)?;
    let eps = b.constant(dtype, 1e-6)?;
    let ms = b.bin(OpKind::Add, ms, eps)?;
    let inv = b.unary(OpKind::Rsqrt, ms)?;
    let unit = b.bin(OpKind::Mul, x, inv)?;
    // The interpreter divides by 1 / (1 / sqrt(d)), computed in f64.
    let scale = 1.0 / (d as f64).sqrt();
    let div = b.constant(dtype, 1.0 / scale)?;
    b.bin(OpKind::Div, unit, div)
}

/// The sort of REFORMER.md §1.4 over the round-major slots, with each
/// slot's position and key flag carried along.
fn sort_slots(
    b: &mut Builder,
    qk: ValueId,
    buckets: ValueId,
    mask: Option<ValueId>,
    a: &Lsh,
    padded: &Dim,
    rounds: u64,
) -> Result<Sorted, String> {
    let bp = b.pad_seq(buckets, 3, a.chunk, 0.0, padded)?;
    // At most one chunk: bucket = round, so that chunk j is round j in order.
    let positions = b.iota(qk, 1)?;
    let last = b.on_axis(OpKind::Argmax, vec![positions], 0)?;
    let c = b.int(a.chunk as i64)?;
    let short = b.bin(OpKind::Lt, last, c)?;
    let round = b.iota(bp, 2)?;
    let round = b.reshape(
        round,
        vec![
            Dim::Const(1),
            Dim::Const(1),
            Dim::Const(rounds),
            Dim::Const(1),
        ],
    )?;
    let bucket = b.select(short, round, bp)?;

    let d = b.dims(bp);
    let total = if rounds == 1 {
        padded.clone()
    } else {
        b.sym("Rp")
    };
    let flat_shape = vec![d[0].clone(), d[1].clone(), total];
    let flat = b.reshape(bucket, flat_shape.clone())?;
    let perm = b.on_axis(OpKind::Argsort, vec![flat], 2)?;
    let inv = b.on_axis(OpKind::Argsort, vec![perm], 2)?;

    // Position and key flag of every round-major slot, then in sorted order.
    let zeros = b.bin(OpKind::Sub, bp, bp)?;
    let pos = b.iota(bp, 3)?;
    let pos = b.reshape(
        pos,
        vec![Dim::Const(1), Dim::Const(1), Dim::Const(1), padded.clone()],
    )?;
    let pos = b.bin(OpKind::Add, zeros, pos)?;
    let pos = b.reshape(pos, flat_shape.clone())?;
    let flags = key_flags(b, qk, mask, a.chunk, padded)?;
    let bm = b.dims(flags)[0].clone();
    let flags = b.reshape(
        flags,
        vec![bm, Dim::Const(1), Dim::Const(1), padded.clone()],
    )?;
    let flags = b.bin(OpKind::Add, zeros, flags)?;
    let flags = b.reshape(flags, flat_shape)?;
    Ok(Sorted {
        spos: b.gather(pos, perm, 2)?,
        sflag: b.gather(flags, perm, 2)?,
        inv,
    })
}

/// Rows `idx` `[B, H, N]` of `x` `[B, H, P, d]`: `[B, H, N, d]`.
fn gather_rows(b: &mut Builder, x: ValueId, idx: ValueId) -> Result<ValueId, String> {
    b.gather(x, idx, 2)
}

/// REFORMER.md §1.8: the unsorted outputs `out` `[B, H, r*P, d]` weighed by
/// the softmax over rounds of the unsorted log-sum-exps (`lse`, sorted,
/// `[B, H, n, c, 1]`) and summed over rounds: `[B, H, P, d]`.
fn combine_rounds(
    b: &mut Builder,
    out: ValueId,
    lse: ValueId,
    inv: ValueId,
    rounds: u64,
    padded: &Dim,
) -> Result<ValueId, String> {
    let s = b.dims(out);
    let (bd, hd, dd) = (s[0].clone(), s[1].clone(), s[3].clone());
    let r = Dim::Const(rounds);
    let per_round = b.reshape(
        out,
        vec![bd.clone(), hd.clone(), r.clone(), padded.clone(), dd],
    )?;
    let lse = b.reshape(lse, b.dims(inv))?;
    let lse = b.gather(lse, inv, 2)?;
    let lse = b.reshape(lse, vec![bd.clone(), hd.clone(), r.clone(), padded.clone()])?;
    let w = b.on_axis(OpKind::Softmax, vec![lse], 2)?;
    let w = b.reshape(w, vec![bd, hd, r, padded.clone(), Dim::Const(1)])?;
    let weighted = b.bin(OpKind::Mul, per_round, w)?;
    b.reduce(weighted, "sum", 2, false)
}
