//! What the chunked attention decompositions (`local_attention`,
//! `lsh_attention`) share: a builder of typed tensor ops, the index helpers
//! (padding to whole chunks, window slots, key flags, masks), and
//! [`lower_attention_node`], which replaces one attention node in place.
//!
//! Every op built here has its result type derived by the IR's own type rules
//! ([`reformc_ir::infer_type`]) or, where the IR declares result types
//! (`reshape`, `cast`, `pad_to_multiple`, `constant`), checked by
//! [`reformc_ir::check_type`], so a decomposition cannot emit an ill-typed
//! node without an error that names the op.

use super::dropout::Mask;
use reformc_ir::{
    check_type, infer_type, Attr, DType, Dim, Graph, Node, Op, OpKind, TensorType, ValueId,
};

/// Logit that the decompositions give the padding slots they add to reach a
/// whole chunk (see [`Builder::pad_seq`]): far below the interpreter's mask
/// value (-1e9), so a slot never takes weight from a real key, not even in a
/// row whose real keys are all masked (they share the weight as they do in
/// the interpreter), and finite, so that no `inf - inf` arises downstream.
pub(crate) const PAD_VALUE: f64 = -1e30;

/// Logit of masked (causal or padding) keys: the interpreter's
/// `attention::MASK_VALUE` (the passes crate does not depend on the interpreter).
pub(crate) const MASK_VALUE: f64 = -1e9;

/// Logit of a query's own position under the self mask: the interpreter's
/// `attention::SELF_MASK_VALUE`.
pub(crate) const SELF_MASK_VALUE: f64 = -1e5;

/// Appends typed tensor ops to a graph on behalf of one model op.
pub(crate) struct Builder<'g> {
    /// The graph being extended (ops go to its innermost open region).
    pub g: &'g mut Graph,
    /// Suffix of the fresh symbols of this decomposition (the arena size on
    /// entry, so two decompositions never share a symbol).
    tag: usize,
    /// The `layer` of the op being decomposed, copied onto every new op.
    layer: Option<u64>,
    /// Index operands of [`Builder::pad_rows`] by the shape they pad, so
    /// that operands of one shape share one.
    pad_index: Vec<(Vec<Dim>, ValueId)>,
}

impl<'g> Builder<'g> {
    /// A builder for the decomposition of `node`.
    pub fn new(g: &'g mut Graph, node: &Node) -> Builder<'g> {
        let tag = g.len();
        Builder {
            g,
            tag,
            layer: node.op.layer(),
            pad_index: Vec::new(),
        }
    }

    /// A fresh symbol `{base}{tag}` (a length the decomposition introduces,
    /// bound by the interpreter when the first value carrying it is checked),
    /// with `_` appended while the graph already uses the name.
    pub fn sym(&self, base: &str) -> Dim {
        let mut name = format!("{base}{}", self.tag);
        let taken = |n: &str| {
            self.g.nodes.iter().any(|node| {
                node.ty
                    .shape
                    .iter()
                    .any(|d| matches!(d, Dim::Sym(s) if s == n))
            })
        };
        while taken(&name) {
            name.push('_');
        }
        Dim::Sym(name)
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }

    /// The shape of `v`.
    pub fn dims(&self, v: ValueId) -> Vec<Dim> {
        self.g.ty(v).shape.clone()
    }

    /// An op whose result type the IR derives from its operands.
    pub fn op(&mut self, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, String> {
        let op = op.with_layer(self.layer);
        let types: Vec<&TensorType> = inputs.iter().map(|v| self.g.ty(*v)).collect();
        let ty = infer_type(&op, &types)
            .map_err(|e| format!("`{op}`: {e}"))?
            .ok_or_else(|| format!("`{op}` needs a declared result type"))?;
        Ok(self.g.add(op, inputs, ty))
    }

    /// `x * dropout_mask(seed, x)` for the mask `m` (training steps only).
    pub(crate) fn masked(&mut self, x: ValueId, m: &Mask) -> Result<ValueId, String> {
        let op = Op::new(OpKind::DropoutMask)
            .with("p", reformc_ir::Attr::Float(m.p))
            .with("stream", reformc_ir::Attr::Int(m.stream));
        let mask = self.op(op, vec![m.seed, x])?;
        self.bin(OpKind::Mul, x, mask)
    }

    /// An op with a declared result type, checked against the op.
    pub fn declared(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        ty: TensorType,
    ) -> Result<ValueId, String> {
        let op = op.with_layer(self.layer);
        let types: Vec<&TensorType> = inputs.iter().map(|v| self.g.ty(*v)).collect();
        check_type(&op, &types, &ty).map_err(|e| format!("`{op}`: {e}"))?;
        Ok(self.g.add(op, inputs, ty))
    }

    /// A scalar constant of `dtype` (integer dtypes take an integer value).
    pub fn constant(&mut self, dtype: DType, value: f64) -> Result<ValueId, String> {
        let attr = if dtype.is_float() {
            Attr::Float(value)
        } else {
            Attr::Int(value as i64)
        };
        let op = Op::new(OpKind::Constant).with("value", attr);
        self.declared(op, vec![], TensorType::scalar(dtype))
    }

    /// An `i64` scalar constant.
    pub fn int(&mut self, value: i64) -> Result<ValueId, String> {
        self.constant(DType::I64, value as f64)
    }

    /// An elementwise binary op (`add`, `sub`, `mul`, `div`, `lt`, `eq`).
    pub fn bin(&mut self, kind: OpKind, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.op(Op::new(kind), vec![a, b])
    }

    /// An elementwise unary op (`exp`, `rsqrt`, ...).
    pub fn unary(&mut self, kind: OpKind, x: ValueId) -> Result<ValueId, String> {
        self.op(Op::new(kind), vec![x])
    }

    /// `cond ? a : b`, broadcast.
    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.op(Op::new(OpKind::Select), vec![cond, a, b])
    }

    /// `x` reshaped to `shape` (at most one symbol in it may be fresh).
    pub fn reshape(&mut self, x: ValueId, shape: Vec<Dim>) -> Result<ValueId, String> {
        let ty = TensorType::new(self.ty(x).dtype, shape);
        self.declared(Op::new(OpKind::Reshape), vec![x], ty)
    }

    /// `x` converted to `dtype`.
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId, String> {
        let ty = self.ty(x).with_dtype(dtype);
        self.declared(Op::new(OpKind::Cast), vec![x], ty)
    }

    /// Axes permuted: result axis `i` is axis `perm[i]` of `x`.
    pub fn transpose(&mut self, x: ValueId, perm: &[i64]) -> Result<ValueId, String> {
        let op = Op::new(OpKind::Transpose).with("perm", Attr::Ints(perm.to_vec()));
        self.op(op, vec![x])
    }

    /// An op whose only attribute is `axis`.
    pub fn on_axis(
        &mut self,
        kind: OpKind,
        inputs: Vec<ValueId>,
        axis: usize,
    ) -> Result<ValueId, String> {
        self.op(Op::new(kind).with("axis", Attr::Int(axis as i64)), inputs)
    }

    /// `take_along_axis(x, idx, axis)`.
    pub fn gather(&mut self, x: ValueId, idx: ValueId, axis: usize) -> Result<ValueId, String> {
        self.on_axis(OpKind::Gather, vec![x, idx], axis)
    }

    /// `0, 1, .., n-1` for the length `n` of `x`'s `axis`.
    pub fn iota(&mut self, x: ValueId, axis: usize) -> Result<ValueId, String> {
        self.on_axis(OpKind::Iota, vec![x], axis)
    }

    /// `reduce(x) {kind, axes=[axis], keepdim}`.
    pub fn reduce(
        &mut self,
        x: ValueId,
        kind: &str,
        axis: usize,
        keepdim: bool,
    ) -> Result<ValueId, String> {
        let op = Op::new(OpKind::Reduce)
            .with("kind", Attr::Str(kind.into()))
            .with("axes", Attr::Ints(vec![axis as i64]))
            .with_flag("keepdim", keepdim);
        self.op(op, vec![x])
    }

    /// `x` along `axis` padded with `value` up to a multiple of `multiple`
    /// (unchanged when it is one already); the padded length is `padded`.
    pub fn pad_seq(
        &mut self,
        x: ValueId,
        axis: usize,
        multiple: u64,
        value: f64,
        padded: &Dim,
    ) -> Result<ValueId, String> {
        let mut ty = self.ty(x).clone();
        ty.shape[axis] = padded.clone();
        let op = Op::new(OpKind::PadToMultiple)
            .with("axis", Attr::Int(axis as i64))
            .with("multiple", Attr::Int(multiple as i64))
            .with("min_len", Attr::Int(0))
            .with("value", Attr::Float(value));
        self.declared(op, vec![x], ty)
    }

    /// `x` `[B, L, ..]` padded along axis 1 to `padded` = `L` rounded up to
    /// a multiple of `chunk` (unchanged when it is one already), as a `gather`
    /// (whose gradient is a `scatter_add`): padded rows repeat row 0. The
    /// decompositions mask padded key slots with [`PAD_VALUE`], whose weight
    /// is exactly 0, and drop padded query rows, so the rows' contents never
    /// reach the result (nor, in the backward, receive a gradient).
    pub fn pad_rows(&mut self, x: ValueId, chunk: u64, padded: &Dim) -> Result<ValueId, String> {
        let shape = self.dims(x);
        let cached = self.pad_index.iter().find(|(s, _)| *s == shape);
        let idx = match cached {
            Some((_, idx)) => *idx,
            None => {
                let pos = self.iota(x, 1)?;
                let pos = self.pad_seq(pos, 0, chunk, 0.0, padded)?;
                let idx = self.broadcast_index(pos, x, 1)?;
                self.pad_index.push((shape, idx));
                idx
            }
        };
        self.gather(x, idx, 1)
    }

    /// The first rows of `x` `[B, P, ..]` along axis 1, as many as
    /// `reference` `[B, L, ..]` has: undoes [`Builder::pad_rows`], as a `gather`.
    pub fn take_prefix(&mut self, x: ValueId, reference: ValueId) -> Result<ValueId, String> {
        let pos = self.iota(reference, 1)?;
        let idx = self.broadcast_index(pos, x, 1)?;
        self.gather(x, idx, 1)
    }

    /// The `[n]` integer vector `idx` placed along `axis` of a tensor shaped
    /// like `x`'s axes up to `axis` (whose `axis` length becomes `n`),
    /// repeated along the axes before it: the index operand of a `gather`
    /// that takes the same rows of every leading index, `[.., n]` of rank
    /// `axis + 1` (the axes after `axis` travel whole, so the index does
    /// not repeat per element).
    pub fn broadcast_index(
        &mut self,
        idx: ValueId,
        x: ValueId,
        axis: usize,
    ) -> Result<ValueId, String> {
        let dims = self.dims(x);
        let ones = |i: usize, d: Dim| {
            let mut s = vec![Dim::Const(1); axis + 1];
            s[i] = d;
            s
        };
        let n = self.dims(idx)[0].clone();
        let mut zeros: Option<ValueId> = None;
        for (i, d) in dims.iter().enumerate().take(axis) {
            let z = self.zeros_along(x, i)?;
            let z = self.reshape(z, ones(i, d.clone()))?;
            zeros = Some(match zeros {
                Some(acc) => self.bin(OpKind::Add, acc, z)?,
                None => z,
            });
        }
        let placed = self.reshape(idx, ones(axis, n))?;
        match zeros {
            Some(z) => self.bin(OpKind::Add, placed, z),
            None => Ok(placed),
        }
    }

    /// `i64` zeros of the length of `x`'s `axis` (a rank-1 tensor): what an
    /// index is added to so that it broadcasts along that axis.
    pub fn zeros_along(&mut self, x: ValueId, axis: usize) -> Result<ValueId, String> {
        let iota = self.iota(x, axis)?;
        self.bin(OpKind::Sub, iota, iota)
    }

    /// `[B, L, H*d]` -> `[B, H, L, d]` (HF's `view(B, L, H, d).transpose(1, 2)`).
    pub fn split_heads(&mut self, x: ValueId, heads: u64) -> Result<ValueId, String> {
        let s = self.dims(x);
        let width = s[2]
            .as_const()
            .filter(|w| w % heads == 0)
            .ok_or_else(|| format!("width {} is not a constant multiple of {heads} heads", s[2]))?;
        let split = self.reshape(
            x,
            vec![
                s[0].clone(),
                s[1].clone(),
                Dim::Const(heads),
                Dim::Const(width / heads),
            ],
        )?;
        self.transpose(split, &[0, 2, 1, 3])
    }

    /// `[B, H, L, d]` -> `[B, L, H*d]`.
    pub fn merge_heads(&mut self, x: ValueId) -> Result<ValueId, String> {
        let s = self.dims(x);
        let (h, d) = (s[1].as_const(), s[3].as_const());
        let width = h
            .zip(d)
            .map(|(h, d)| h * d)
            .ok_or("heads and head width must be constants")?;
        let t = self.transpose(x, &[0, 2, 1, 3])?;
        self.reshape(t, vec![s[0].clone(), s[2].clone(), Dim::Const(width)])
    }

    /// The flat key-slot index of chunked attention with neighbours, `[M]`
    /// (`M` = `n * c * (before + 1 + after)`, fresh): for query chunk `j` of
    /// the `n` chunks of `c` slots (the length of `chunks`' axis `axis`), the
    /// slots of chunks `(j + o) mod n` for `o = -before ..= after`, earlier
    /// chunks first, wrapping around (REFORMER.md §1.5). `chunks` has the
    /// chunks on `axis` and their `c` slots on `axis + 1`.
    pub fn adjacent_slots(
        &mut self,
        chunks: ValueId,
        axis: usize,
        c: u64,
        before: u64,
        after: u64,
    ) -> Result<ValueId, String> {
        let j = self.iota(chunks, axis)?;
        let n_minus_1 = self.on_axis(OpKind::Argmax, vec![j], 0)?;
        let one = self.int(1)?;
        let n = self.bin(OpKind::Add, n_minus_1, one)?;
        let cc = self.int(c as i64)?;
        let pos_in_chunk = self.iota(chunks, axis + 1)?;
        let row = self.reshape(pos_in_chunk, vec![Dim::Const(1), Dim::Const(c)])?;
        let nd = self.dims(chunks)[axis].clone();
        let mut parts = Vec::new();
        for o in -(before as i64)..=(after as i64) {
            // (j + o + |o| n) mod n: nonnegative before the (truncating) division.
            let shift = self.int(o)?;
            let lift = self.int(o.abs())?;
            let lift = self.bin(OpKind::Mul, lift, n)?;
            let t = self.bin(OpKind::Add, j, shift)?;
            let t = self.bin(OpKind::Add, t, lift)?;
            let q = self.bin(OpKind::Div, t, n)?;
            let qn = self.bin(OpKind::Mul, q, n)?;
            let jo = self.bin(OpKind::Sub, t, qn)?;
            let start = self.bin(OpKind::Mul, jo, cc)?;
            let col = self.reshape(start, vec![nd.clone(), Dim::Const(1)])?;
            parts.push(self.bin(OpKind::Add, col, row)?);
        }
        let width = c * (before + 1 + after);
        let all = self.on_axis(OpKind::Concat, parts, 1)?;
        debug_assert_eq!(self.dims(all)[1], Dim::Const(width));
        let m = self.sym("Nkv");
        self.reshape(all, vec![m])
    }
}

/// Replaces the `local_attention` or `lsh_attention` node `v` of `g` (at the
/// top level or inside a region) by its tensor-op decomposition, in place:
/// the new ops take the node's place in its block and every use of `v`
/// (operands, region results, graph outputs) is redirected to the
/// decomposition's result, which is returned. The old node stays in the
/// arena, detached.
///
/// ```
/// use reformc_ir::{parse, verify, OpKind};
/// let mut g = parse("graph {\n  %0 = input {name=\"q\"} : f64[B,L,4]\n  %1 = local_attention %0, %0, %0 {after=0, before=1, chunk=2, heads=2, scale=0.5} : f64[B,L,4]\n  output \"y\" = %1\n}\n").unwrap();
/// let v = g.find(OpKind::LocalAttention).next().unwrap();
/// let new = reformc_passes::lower_model::lower_attention_node(&mut g, v).unwrap();
/// assert_eq!(g.outputs[0].1, new);
/// assert!(g.walk().iter().all(|v| g.node(*v).op.kind != OpKind::LocalAttention));
/// verify(&g).unwrap();
/// ```
pub fn lower_attention_node(g: &mut Graph, v: ValueId) -> Result<ValueId, String> {
    let node = g.node(v).clone();
    let start = g.body.len();
    let new = match node.op.kind {
        OpKind::LocalAttention => super::local::lower(g, &node, &node.inputs, None)?,
        OpKind::LshAttention => super::lsh::lower(g, &node, &node.inputs, None)?,
        other => return Err(format!("{v} is a `{other}`, not local or LSH attention")),
    };
    let added: Vec<ValueId> = g.body.drain(start..).collect();
    if !splice(g, v, &added) {
        return Err(format!("{v} is not in the graph's body or any region"));
    }
    redirect(g, v, new);
    Ok(new)
}

/// Replaces `v` by `added` in whichever block holds it.
fn splice(g: &mut Graph, v: ValueId, added: &[ValueId]) -> bool {
    fn in_block(block: &mut Vec<ValueId>, v: ValueId, added: &[ValueId]) -> bool {
        match block.iter().position(|x| *x == v) {
            Some(i) => {
                block.splice(i..=i, added.iter().copied());
                true
            }
            None => false,
        }
    }
    if in_block(&mut g.body, v, added) {
        return true;
    }
    g.nodes
        .iter_mut()
        .flat_map(|n| n.regions.iter_mut())
        .any(|r| in_block(&mut r.body, v, added))
}

/// Every use of `old` becomes a use of `new`.
fn redirect(g: &mut Graph, old: ValueId, new: ValueId) {
    let swap = |x: &mut ValueId| {
        if *x == old {
            *x = new;
        }
    };
    for n in &mut g.nodes {
        n.inputs.iter_mut().for_each(swap);
        for r in &mut n.regions {
            r.results.iter_mut().for_each(swap);
        }
    }
    for (_, o) in &mut g.outputs {
        swap(o);
    }
}

/// Key flags of a padded sequence, `i64[Bm, P]`: 0 for a valid key, 1 for a
/// key the `[B, L]` padding mask drops (entry 0), 2 for a slot the
/// decomposition padded on. `Bm` is `B` with a mask and 1 without one.
/// `q` is any `[B, L, ..]` operand, `padded` the padded length `P`.
pub(crate) fn key_flags(
    b: &mut Builder,
    q: ValueId,
    mask: Option<ValueId>,
    chunk: u64,
    padded: &Dim,
) -> Result<ValueId, String> {
    let flags = match mask {
        Some(m) => {
            let m = if b.ty(m).dtype == DType::I64 {
                m
            } else {
                b.cast(m, DType::I64)?
            };
            let zero = b.int(0)?;
            let dropped = b.bin(OpKind::Eq, m, zero)?;
            let one = b.int(1)?;
            b.select(dropped, one, zero)?
        }
        None => {
            let z = b.zeros_along(q, 1)?;
            let len = b.dims(q)[1].clone();
            b.reshape(z, vec![Dim::Const(1), len])?
        }
    };
    b.pad_seq(flags, 1, chunk, 2.0, padded)
}

/// Applies the interpreter's masks to logits `s` `[.., c, c_kv]` in its
/// order (REFORMER.md §1.6): keys after the query (`causal`) and keys whose
/// flag (see [`key_flags`]) is 1 become -1e9, padded slots [`PAD_VALUE`],
/// then, with `self_mask`, the query's own position -1e5. `qpos` `[.., c, 1]`,
/// `kpos` and `kflag` `[.., 1, c_kv]` broadcast against `s`.
pub(crate) fn mask_logits(
    b: &mut Builder,
    s: ValueId,
    qpos: ValueId,
    kpos: ValueId,
    kflag: ValueId,
    causal: bool,
    self_mask: bool,
) -> Result<ValueId, String> {
    let dtype = b.ty(s).dtype;
    let mask = b.constant(dtype, MASK_VALUE)?;
    let mut s = s;
    if causal {
        let later = b.bin(OpKind::Lt, qpos, kpos)?;
        s = b.select(later, mask, s)?;
    }
    let zero = b.int(0)?;
    let two = b.int(2)?;
    let invalid = b.bin(OpKind::Lt, zero, kflag)?;
    let padded = b.bin(OpKind::Eq, kflag, two)?;
    let pad = b.constant(dtype, PAD_VALUE)?;
    let value = b.select(padded, pad, mask)?;
    s = b.select(invalid, value, s)?;
    if self_mask {
        let own = b.bin(OpKind::Eq, qpos, kpos)?;
        let self_value = b.constant(dtype, SELF_MASK_VALUE)?;
        s = b.select(own, self_value, s)?;
    }
    Ok(s)
}
