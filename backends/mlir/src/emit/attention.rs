//! Full (dense or key-chunked streaming) and local attention.
//!
//! Both ops take `[B, L, H*d]` tensors with the heads interleaved (HF's
//! `view(B, L, H, d)`). The lowering splits the last axis with a
//! `tensor.expand_shape` (no data movement) and indexes `[B, L, H, d]`
//! directly from `linalg.generic` maps, so no transposes are materialised.
//! The semantics are the interpreter's (`interp/src/attention.rs`): keys are
//! (optionally length-normalised and then) divided by `1/scale`, padding and
//! causal logits are replaced with -1e9, the query's own logit with -1e5
//! (last), and the softmax is `exp(x - max) / sum`.

use super::{tensor_of, Emitter, Operand, IND};
use crate::scalar::{elt, literal, Body};
use crate::MlirError;
use reformc_ir::{BinaryFn, DType, Dim, TensorType, ValueId};

/// Logit of masked (padding or causal) keys; the interpreter's `MASK_VALUE`.
const MASK_VALUE: f64 = -1e9;
/// Logit of a query's own key under `self_mask`; the interpreter's `SELF_MASK_VALUE`.
const SELF_MASK_VALUE: f64 = -1e5;

/// Sizes of one attention op: queries `[b, lq, h*d]`, keys `[b, lk, h*d]`,
/// values `[b, lk, h*dv]`.
#[derive(Clone, Debug)]
struct Heads {
    b: Dim,
    lq: Dim,
    lk: Dim,
    h: u64,
    d: u64,
    dv: u64,
    dt: DType,
}

impl Heads {
    /// `[b, l, h, w]`: a `[b, l, h*w]` tensor with its heads split.
    fn split(&self, l: &Dim, w: u64) -> Vec<Dim> {
        vec![self.b.clone(), l.clone(), Dim::Const(self.h), Dim::Const(w)]
    }

    /// The tensor type of a float tensor of `shape`.
    fn ty(&self, shape: &[Dim]) -> String {
        tensor_of(shape, self.dt)
    }
}

/// Which masks apply besides the padding mask.
#[derive(Clone, Copy, Debug)]
struct Rules {
    causal: bool,
    self_mask: bool,
}

/// The optional `[B, Lk]` padding mask operand (nonzero or `true` = keep).
#[derive(Clone, Debug)]
struct Mask {
    name: String,
    ty: String,
    dt: DType,
}

/// Key and query positions of one logit, computed inside a `linalg.generic`
/// body: `kpos` is used for the causal and self rules, `kread` (in range) to
/// read the padding mask, and `beyond` (an `i1`) marks padded key slots that
/// must not count at all.
struct Pos {
    qpos: String,
    kpos: String,
    kread: String,
    beyond: Option<String>,
}

/// `(d_i, d_j, ...)` as the result list of an indexing map.
fn dims(list: &[usize]) -> Vec<String> {
    list.iter().map(|i| format!("d{i}")).collect()
}

/// The `iterator_types` of `n` parallel loops, then one reduction if `reduce`.
fn iters(n: usize, reduce: bool) -> Vec<&'static str> {
    let mut it = vec!["parallel"; n];
    if reduce {
        it.push("reduction");
    }
    it
}

/// An operand of a `linalg.generic`.
fn operand(name: &str, ty: &str, map: &[usize]) -> Operand {
    Operand {
        name: name.to_string(),
        ty: ty.to_string(),
        map: dims(map),
    }
}

/// `linalg.index i` inside a body.
fn index(b: &mut Body, i: usize) -> String {
    b.def(format!("linalg.index {i} : index"))
}

/// An `index` constant inside a body.
fn cindex(b: &mut Body, c: u64) -> String {
    b.def(format!("arith.constant {c} : index"))
}

/// `a <op> b` on `index` values inside a body.
fn iop(b: &mut Body, op: &str, x: &str, y: &str) -> String {
    b.def(format!("arith.{op} {x}, {y} : index"))
}

impl Emitter<'_> {
    /// `attention(q, k, v[, mask])`: the materialised `[B, H, Lq, Lk]` softmax,
    /// or with `kv_chunk` a streaming softmax over key chunks (O(Lq·kv_chunk)).
    pub(super) fn attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let op = node.op.clone();
        let (q, k, val) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let s = self.heads_of(v)?;
        let scale = self.scale(v)?;
        let rules = Rules {
            causal: op.flag("causal"),
            self_mask: op.flag("self_mask"),
        };
        let mask = self.mask_operand(v, 3)?;
        let q4 = self.split_heads(v, q, &s, &s.lq, s.d)?;
        let k4 = self.split_heads(v, k, &s, &s.lk, s.d)?;
        let v4 = self.split_heads(v, val, &s, &s.lk, s.dv)?;
        let kn = self.scaled_keys(v, &k4, &s, scale, op.flag("key_norm"))?;
        let o = match op.int("kv_chunk") {
            None => self.dense(v, &s, &q4, &kn, &v4, mask.as_ref(), rules)?,
            Some(c) if c >= 1 => {
                self.streamed(v, &s, &q4, &kn, &v4, mask.as_ref(), rules, c as u64)?
            }
            Some(_) => {
                return Err(MlirError::invalid(
                    self.g,
                    v,
                    "`kv_chunk` must be at least 1",
                ))
            }
        };
        Ok(self.merge_heads(&s, &o))
    }

    /// `local_attention(q, k, v[, mask])`: queries in chunks of `chunk`
    /// positions attend to their own chunk and `before`/`after` neighbours
    /// (wrapping around); a sequence no longer than one chunk is plain full
    /// attention, as in the interpreter. With a dynamic length the choice is
    /// an `scf.if`.
    pub(super) fn local_attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let op = node.op.clone();
        let (q, k, val) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let s = self.heads_of(v)?;
        if s.lq != s.lk {
            return Err(MlirError::invalid(
                self.g,
                v,
                "queries and keys differ in length",
            ));
        }
        let scale = self.scale(v)?;
        let chunk = self.nonneg(v, "chunk")?;
        if chunk == 0 {
            return Err(MlirError::invalid(self.g, v, "`chunk` must be at least 1"));
        }
        let win = Window {
            chunk,
            before: self.nonneg(v, "before")?,
            after: self.nonneg(v, "after")?,
        };
        let rules = Rules {
            causal: op.flag("causal"),
            self_mask: false,
        };
        let mask = self.mask_operand(v, 3)?;
        let q4 = self.split_heads(v, q, &s, &s.lq, s.d)?;
        let k4 = self.split_heads(v, k, &s, &s.lk, s.d)?;
        let v4 = self.split_heads(v, val, &s, &s.lk, s.dv)?;
        let kn = self.scaled_keys(v, &k4, &s, scale, false)?;
        let ins = (q4.as_str(), kn.as_str(), v4.as_str());
        match s.lq.as_const() {
            Some(l) if l <= chunk => {
                let o = self.dense(v, &s, &q4, &kn, &v4, mask.as_ref(), rules)?;
                Ok(self.merge_heads(&s, &o))
            }
            Some(l) if l % chunk != 0 => Err(MlirError::invalid(
                self.g,
                v,
                format!("length {l} is not a multiple of the chunk length {chunk}"),
            )),
            Some(l) => {
                let n = Dim::Const(l / chunk);
                let o = self.local_chunks(v, &s, ins, mask.as_ref(), rules, win, &n)?;
                Ok(self.merge_chunks(&s, &o, &n, chunk))
            }
            None => self.local_dynamic(v, &s, ins, mask.as_ref(), rules, win),
        }
    }

    /// Local attention of a dynamic length: `scf.if` length <= chunk (full
    /// attention) else the chunked form. A length that is not a multiple of
    /// the chunk (an error in the interpreter) reads only in-range keys.
    fn local_dynamic(
        &mut self,
        v: ValueId,
        s: &Heads,
        (q4, kn, v4): (&str, &str, &str),
        mask: Option<&Mask>,
        rules: Rules,
        win: Window,
    ) -> Result<String, MlirError> {
        let len = self.size(v, &s.lq)?;
        let c = self.def(format!("arith.constant {} : index", win.chunk));
        let n_val = self.def(format!("arith.divui {len}, {c} : index"));
        let n = self.synthetic(&n_val);
        let short = self.def(format!("arith.cmpi ule, {len}, {c} : index"));
        let ty = self.ty_of(v);
        let r = self.fresh();
        self.lines
            .push(format!("{IND}{r} = scf.if {short} -> ({ty}) {{"));
        let o = self.dense(v, s, q4, kn, v4, mask, rules)?;
        let full = self.merge_heads(s, &o);
        let full = self.def(full);
        self.lines.push(format!("{IND}scf.yield {full} : {ty}"));
        self.lines.push(format!("{IND}}} else {{"));
        let o = self.local_chunks(v, s, (q4, kn, v4), mask, rules, win, &n)?;
        let local = self.merge_chunks(s, &o, &n, win.chunk);
        let local = self.def(local);
        self.lines.push(format!("{IND}scf.yield {local} : {ty}"));
        self.lines.push(format!("{IND}}}"));
        Ok(self.alias(&r, &ty))
    }

    /// The result type of `v` as MLIR text.
    fn ty_of(&self, v: ValueId) -> String {
        super::tensor_ty(&self.g.node(v).ty)
    }

    /// A symbolic dimension whose value is the SSA `index` value `ssa`, so
    /// that `init` and the type helpers treat it like the IR's symbols. Its
    /// name is the SSA name itself, which no IR symbol can spell.
    fn synthetic(&mut self, ssa: &str) -> Dim {
        self.syms.insert(ssa.to_string(), ssa.to_string());
        Dim::Sym(ssa.to_string())
    }

    /// Checks the operand types and reads the sizes of an attention op.
    fn heads_of(&self, v: ValueId) -> Result<Heads, MlirError> {
        let node = self.g.node(v);
        let bad = |r: String| MlirError::invalid(self.g, v, r);
        let h = match node.op.int("heads") {
            Some(h) if h >= 1 => h as u64,
            _ => return Err(bad("`heads` must be at least 1".into())),
        };
        if node.inputs.len() < 3 {
            return Err(bad("needs queries, keys and values".into()));
        }
        let t: Vec<&TensorType> = node.inputs.iter().map(|&x| self.g.ty(x)).collect();
        let dt = t[0].dtype;
        if !matches!(dt, DType::F32 | DType::F64) || t[1].dtype != dt || t[2].dtype != dt {
            return Err(bad(
                "queries, keys and values must share a float dtype".into()
            ));
        }
        if t.iter().take(3).any(|x| x.rank() != 3) {
            return Err(bad("queries, keys and values must be [B, L, H*d]".into()));
        }
        let per_head = |x: &TensorType| match x.shape[2].as_const() {
            Some(w) if w % h == 0 && w > 0 => Ok(w / h),
            _ => Err(bad(format!(
                "last axis of {x} must be a constant multiple of heads={h}"
            ))),
        };
        Ok(Heads {
            b: t[0].shape[0].clone(),
            lq: t[0].shape[1].clone(),
            lk: t[1].shape[1].clone(),
            h,
            d: per_head(t[0])?,
            dv: per_head(t[2])?,
            dt,
        })
    }

    /// The `scale` attribute (a finite, nonzero float).
    fn scale(&self, v: ValueId) -> Result<f64, MlirError> {
        match self.g.node(v).op.float("scale") {
            Some(x) if x.is_finite() && x != 0.0 => Ok(x),
            _ => Err(MlirError::invalid(
                self.g,
                v,
                "`scale` must be a finite nonzero number",
            )),
        }
    }

    /// Operand `i` as the padding mask, if present.
    fn mask_operand(&self, v: ValueId, i: usize) -> Result<Option<Mask>, MlirError> {
        let Some(&m) = self.g.node(v).inputs.get(i) else {
            return Ok(None);
        };
        let t = self.g.ty(m);
        if !(t.dtype.is_int() || t.dtype == DType::Bool) || t.rank() != 2 {
            return Err(MlirError::invalid(
                self.g,
                v,
                "the mask must be an integer or bool [B, L] tensor",
            ));
        }
        Ok(Some(Mask {
            name: format!("%v{}", m.0),
            ty: super::tensor_ty(t),
            dt: t.dtype,
        }))
    }

    /// `[B, L, H*w]` operand `x` viewed as `[B, L, H, w]`.
    fn split_heads(
        &mut self,
        v: ValueId,
        x: ValueId,
        s: &Heads,
        l: &Dim,
        w: u64,
    ) -> Result<String, MlirError> {
        let from = super::tensor_ty(self.g.ty(x));
        let to = s.ty(&s.split(l, w));
        let (b, l) = (self.mixed(v, &s.b)?, self.mixed(v, l)?);
        Ok(self.def(format!(
            "tensor.expand_shape %v{} [[0], [1], [2, 3]] output_shape [{b}, {l}, {}, {w}] : {from} into {to}",
            x.0, s.h
        )))
    }

    /// `[B, Lq, H, dv]` back to `[B, Lq, H*dv]` (the op's result).
    fn merge_heads(&self, s: &Heads, o: &str) -> String {
        let from = s.ty(&s.split(&s.lq, s.dv));
        let to = s.ty(&[s.b.clone(), s.lq.clone(), Dim::Const(s.h * s.dv)]);
        format!("tensor.collapse_shape {o} [[0], [1], [2, 3]] : {from} into {to}")
    }

    /// The interpreter's `scaled_keys`: keys (length-normalised under
    /// `key_norm`: `x / sqrt(mean(x²) + 1e-6)`) divided by `1/scale`, which
    /// keeps HF's rounding of a division by `sqrt(d)`.
    fn scaled_keys(
        &mut self,
        v: ValueId,
        k4: &str,
        s: &Heads,
        scale: f64,
        key_norm: bool,
    ) -> Result<String, MlirError> {
        let dt = s.dt;
        let shape = s.split(&s.lk, s.d);
        let ty = s.ty(&shape);
        let div = literal(dt, 1.0 / scale);
        if !key_norm {
            return self.map_unary(v, k4, &shape, dt, |b, x| {
                let c = b.def(format!("arith.constant {div} : {}", elt(dt)));
                b.binary(BinaryFn::Div, x, &c, dt)
            });
        }
        let rows = &shape[..3];
        let init = self.init(v, rows, dt, Some(0.0))?;
        let ss = self.generic(
            &[operand(k4, &ty, &[0, 1, 2, 3])],
            operand(&init, &s.ty(rows), &[0, 1, 2]),
            &iters(3, true),
            elt(dt),
            |b, a| {
                let sq = b.binary(BinaryFn::Mul, &a[0], &a[0], dt);
                b.binary(BinaryFn::Add, &a[1], &sq, dt)
            },
        );
        let out = self.init(v, &shape, dt, None)?;
        let width = s.d as f64;
        Ok(self.generic(
            &[
                operand(k4, &ty, &[0, 1, 2, 3]),
                operand(&ss, &s.ty(rows), &[0, 1, 2]),
            ],
            operand(&out, &ty, &[0, 1, 2, 3]),
            &iters(4, false),
            elt(dt),
            |b, a| {
                let n = b.constant(dt, width);
                let eps = b.constant(dt, 1e-6);
                let one = b.constant(dt, 1.0);
                let ms = b.binary(BinaryFn::Div, &a[1], &n, dt);
                let t = b.binary(BinaryFn::Add, &ms, &eps, dt);
                let r = b.def(format!("math.sqrt {t} : {}", elt(dt)));
                let inv = b.binary(BinaryFn::Div, &one, &r, dt);
                let y = b.binary(BinaryFn::Mul, &a[0], &inv, dt);
                let c = b.def(format!("arith.constant {div} : {}", elt(dt)));
                b.binary(BinaryFn::Div, &y, &c, dt)
            },
        ))
    }

    /// `q · k` per head: `[B, H, Lq, nk]` from queries `[B, Lq, H, d]` and
    /// keys `[B, nk, H, d]` (`nk` the keys' own length).
    fn logits(
        &mut self,
        v: ValueId,
        s: &Heads,
        q4: &str,
        k: &str,
        nk: &Dim,
    ) -> Result<String, MlirError> {
        let dt = s.dt;
        let shape = [s.b.clone(), Dim::Const(s.h), s.lq.clone(), nk.clone()];
        let init = self.init(v, &shape, dt, Some(0.0))?;
        Ok(self.generic(
            &[
                operand(q4, &s.ty(&s.split(&s.lq, s.d)), &[0, 2, 1, 4]),
                operand(k, &s.ty(&s.split(nk, s.d)), &[0, 3, 1, 4]),
            ],
            operand(&init, &s.ty(&shape), &[0, 1, 2, 3]),
            &iters(4, true),
            elt(dt),
            |b, a| {
                let p = b.binary(BinaryFn::Mul, &a[0], &a[1], dt);
                b.binary(BinaryFn::Add, &a[2], &p, dt)
            },
        ))
    }

    /// Logits `x` of `(shape, dtype)` with the masks applied in the
    /// interpreter's order; `pos` computes each element's positions from
    /// `linalg.index`.
    fn masked(
        &mut self,
        v: ValueId,
        x: &str,
        (shape, dt): (&[Dim], DType),
        mask: Option<&Mask>,
        rules: Rules,
        pos: impl FnOnce(&mut Body) -> Pos,
    ) -> Result<String, MlirError> {
        let ty = tensor_of(shape, dt);
        let rank = shape.len();
        let all: Vec<usize> = (0..rank).collect();
        let out = self.init(v, shape, dt, None)?;
        Ok(self.generic(
            &[operand(x, &ty, &all)],
            operand(&out, &ty, &all),
            &iters(rank, false),
            elt(dt),
            |b, a| {
                let p = pos(b);
                let mut y = a[0].clone();
                let t = elt(dt);
                if let Some(m) = mask {
                    let bi = index(b, 0);
                    let e = b.def(format!(
                        "tensor.extract {}[{bi}, {}] : {}",
                        m.name, p.kread, m.ty
                    ));
                    let keep = if m.dt == DType::Bool {
                        e
                    } else {
                        let zero = b.constant(m.dt, 0.0);
                        b.def(format!("arith.cmpi ne, {e}, {zero} : {}", elt(m.dt)))
                    };
                    let c = b.constant(dt, MASK_VALUE);
                    y = b.def(format!("arith.select {keep}, {y}, {c} : {t}"));
                }
                if rules.causal {
                    let later = iop(b, "cmpi ult,", &p.qpos, &p.kpos);
                    let c = b.constant(dt, MASK_VALUE);
                    y = b.def(format!("arith.select {later}, {c}, {y} : {t}"));
                }
                if rules.self_mask {
                    let same = iop(b, "cmpi eq,", &p.qpos, &p.kpos);
                    let c = b.constant(dt, SELF_MASK_VALUE);
                    y = b.def(format!("arith.select {same}, {c}, {y} : {t}"));
                }
                if let Some(o) = p.beyond {
                    let c = b.constant(dt, f64::NEG_INFINITY);
                    y = b.def(format!("arith.select {o}, {c}, {y} : {t}"));
                }
                y
            },
        ))
    }

    /// Softmax over the last axis of `x` (`shape`), as the interpreter
    /// computes it: `exp(x - max) / sum(exp(x - max))`.
    fn softmax_last(
        &mut self,
        v: ValueId,
        x: &str,
        shape: &[Dim],
        dt: DType,
    ) -> Result<String, MlirError> {
        let rank = shape.len();
        let x_ty = TensorType::new(dt, shape.to_vec());
        let id = |_: &mut Body, a: &str| a.to_string();
        let (m, map, red) = self.reduce_into(v, x, &x_ty, &[rank - 1], false, BinaryFn::Max, id)?;
        let sum = self.sum_exp_minus(v, x, &x_ty, &m, &map, &red, &[rank - 1])?;
        let ty = tensor_of(shape, dt);
        let red_ty = tensor_of(&red, dt);
        let all: Vec<usize> = (0..rank).collect();
        let out = self.init(v, shape, dt, None)?;
        Ok(self.generic(
            &[
                operand(x, &ty, &all),
                operand(&m, &red_ty, &all[..rank - 1]),
                operand(&sum, &red_ty, &all[..rank - 1]),
            ],
            operand(&out, &ty, &all),
            &iters(rank, false),
            elt(dt),
            |b, a| {
                let t = b.binary(BinaryFn::Sub, &a[0], &a[1], dt);
                let e = b.def(format!("math.exp {t} : {}", elt(dt)));
                b.binary(BinaryFn::Div, &e, &a[2], dt)
            },
        ))
    }

    /// `Σ_j p[b,h,i,j] · v[b,j,h,c]`: `[B, Lq, H, dv]` from weights `[B, H, Lq, nk]`.
    fn weighted_values(
        &mut self,
        v: ValueId,
        s: &Heads,
        p: &str,
        vals: &str,
        nk: &Dim,
    ) -> Result<String, MlirError> {
        let dt = s.dt;
        let shape = s.split(&s.lq, s.dv);
        let init = self.init(v, &shape, dt, Some(0.0))?;
        let p_ty = s.ty(&[s.b.clone(), Dim::Const(s.h), s.lq.clone(), nk.clone()]);
        Ok(self.generic(
            &[
                operand(p, &p_ty, &[0, 2, 1, 4]),
                operand(vals, &s.ty(&s.split(nk, s.dv)), &[0, 4, 2, 3]),
            ],
            operand(&init, &s.ty(&shape), &[0, 1, 2, 3]),
            &iters(4, true),
            elt(dt),
            |b, a| {
                let m = b.binary(BinaryFn::Mul, &a[0], &a[1], dt);
                b.binary(BinaryFn::Add, &a[2], &m, dt)
            },
        ))
    }

    /// Materialised attention: `[B, Lq, H, dv]`.
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &mut self,
        v: ValueId,
        s: &Heads,
        q4: &str,
        kn: &str,
        v4: &str,
        mask: Option<&Mask>,
        rules: Rules,
    ) -> Result<String, MlirError> {
        let x = self.logits(v, s, q4, kn, &s.lk)?;
        let shape = [s.b.clone(), Dim::Const(s.h), s.lq.clone(), s.lk.clone()];
        let x = self.masked(v, &x, (&shape, s.dt), mask, rules, |b| {
            let (qpos, kpos) = (index(b, 2), index(b, 3));
            Pos {
                qpos,
                kread: kpos.clone(),
                kpos,
                beyond: None,
            }
        })?;
        let p = self.softmax_last(v, &x, &shape, s.dt)?;
        self.weighted_values(v, s, &p, v4, &s.lk)
    }

    /// `x` (`[B, L, H, w]`) copied into a zero tensor of length `np`.
    fn pad_len(
        &mut self,
        v: ValueId,
        s: &Heads,
        x: &str,
        w: u64,
        np: &Dim,
    ) -> Result<String, MlirError> {
        let from = s.ty(&s.split(&s.lk, w));
        let padded = s.split(np, w);
        let init = self.init(v, &padded, s.dt, Some(0.0))?;
        let (b, l) = (self.mixed(v, &s.b)?, self.mixed(v, &s.lk)?);
        Ok(self.def(format!(
            "tensor.insert_slice {x} into {init}[0, 0, 0, 0] [{b}, {l}, {}, {w}] [1, 1, 1, 1] : {from} into {}",
            s.h,
            s.ty(&padded)
        )))
    }

    /// Streaming attention (the interpreter's `attention_chunked`): an
    /// `scf.for` over key chunks of `c` keys carrying the running max, the
    /// running sum (`[B, H, Lq]`) and the unnormalised output (`[B, Lq, H, dv]`).
    /// Keys and values are zero-padded to a multiple of `c`; padded slots get
    /// logit -inf, so they add exactly nothing.
    #[allow(clippy::too_many_arguments)]
    fn streamed(
        &mut self,
        v: ValueId,
        s: &Heads,
        q4: &str,
        kn: &str,
        v4: &str,
        mask: Option<&Mask>,
        rules: Rules,
        c: u64,
    ) -> Result<String, MlirError> {
        let dt = s.dt;
        let lk = self.size(v, &s.lk)?;
        let np = match s.lk.as_const() {
            Some(n) => Dim::Const(n.div_ceil(c) * c),
            None => {
                let cm1 = self.def(format!("arith.constant {} : index", c - 1));
                let cc = self.def(format!("arith.constant {c} : index"));
                let t = self.def(format!("arith.addi {lk}, {cm1} : index"));
                let t = self.def(format!("arith.divui {t}, {cc} : index"));
                let np = self.def(format!("arith.muli {t}, {cc} : index"));
                self.synthetic(&np)
            }
        };
        // A static length that `c` divides needs no padded copy.
        let (kp, vp) = if np == s.lk {
            (kn.to_string(), v4.to_string())
        } else {
            (
                self.pad_len(v, s, kn, s.d, &np)?,
                self.pad_len(v, s, v4, s.dv, &np)?,
            )
        };
        let one = self.def("arith.constant 1 : index".into());
        let last = self.def(format!("arith.subi {lk}, {one} : index"));
        let rows = [s.b.clone(), Dim::Const(s.h), s.lq.clone()];
        let acc_shape = s.split(&s.lq, s.dv);
        let (rows_ty, acc_ty) = (s.ty(&rows), s.ty(&acc_shape));
        let m0 = self.init(v, &rows, dt, Some(f64::NEG_INFINITY))?;
        let s0 = self.init(v, &rows, dt, Some(0.0))?;
        let a0 = self.init(v, &acc_shape, dt, Some(0.0))?;
        let zero = self.def("arith.constant 0 : index".into());
        let step = self.def(format!("arith.constant {c} : index"));
        let r = self.fresh();
        let (iv, m, sum, acc) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        self.lines.push(format!(
            "{IND}{r}:3 = scf.for {iv} = {zero} to {lk} step {step} iter_args({m} = {m0}, {sum} = {s0}, {acc} = {a0}) -> ({rows_ty}, {rows_ty}, {acc_ty}) {{"
        ));
        let cdim = Dim::Const(c);
        let b = self.mixed(v, &s.b)?;
        let kc = self.def(format!(
            "tensor.extract_slice {kp}[0, {iv}, 0, 0] [{b}, {c}, {}, {}] [1, 1, 1, 1] : {} to {}",
            s.h,
            s.d,
            s.ty(&s.split(&np, s.d)),
            s.ty(&s.split(&cdim, s.d))
        ));
        let vc = self.def(format!(
            "tensor.extract_slice {vp}[0, {iv}, 0, 0] [{b}, {c}, {}, {}] [1, 1, 1, 1] : {} to {}",
            s.h,
            s.dv,
            s.ty(&s.split(&np, s.dv)),
            s.ty(&s.split(&cdim, s.dv))
        ));
        let x = self.logits(v, s, q4, &kc, &cdim)?;
        let shape = [s.b.clone(), Dim::Const(s.h), s.lq.clone(), cdim.clone()];
        let x = self.masked(v, &x, (&shape, dt), mask, rules, |b| {
            let qpos = index(b, 2);
            let j = index(b, 3);
            let kpos = iop(b, "addi", &iv, &j);
            let beyond = iop(b, "cmpi ugt,", &kpos, &last);
            let kread = iop(b, "minui", &kpos, &last);
            Pos {
                qpos,
                kpos,
                kread,
                beyond: Some(beyond),
            }
        })?;
        let ty4 = s.ty(&shape);
        let x_ty = TensorType::new(dt, shape.to_vec());
        let id = |_: &mut Body, a: &str| a.to_string();
        let (chunk_max, _, _) = self.reduce_into(v, &x, &x_ty, &[3], false, BinaryFn::Max, id)?;
        // Everything that reads the old running values comes first: the
        // updates below then write into the loop-carried tensors in place,
        // which one-shot bufferization requires of `scf.for` yields.
        let out = self.init(v, &rows, dt, None)?;
        let rescale = self.generic(
            &[
                operand(&m, &rows_ty, &[0, 1, 2]),
                operand(&chunk_max, &rows_ty, &[0, 1, 2]),
            ],
            operand(&out, &rows_ty, &[0, 1, 2]),
            &iters(3, false),
            elt(dt),
            |b, a| {
                let t = elt(dt);
                let ninf = b.constant(dt, f64::NEG_INFINITY);
                let zero = b.constant(dt, 0.0);
                let first = b.def(format!("arith.cmpf oeq, {}, {ninf} : {t}", a[0]));
                let new = b.binary(BinaryFn::Max, &a[0], &a[1], dt);
                let d = b.binary(BinaryFn::Sub, &a[0], &new, dt);
                let e = b.def(format!("math.exp {d} : {t}"));
                b.def(format!("arith.select {first}, {zero}, {e} : {t}"))
            },
        );
        let new_m = self.generic(
            &[operand(&chunk_max, &rows_ty, &[0, 1, 2])],
            operand(&m, &rows_ty, &[0, 1, 2]),
            &iters(3, false),
            elt(dt),
            |b, a| b.binary(BinaryFn::Max, &a[1], &a[0], dt),
        );
        let out = self.init(v, &shape, dt, None)?;
        let p = self.generic(
            &[
                operand(&x, &ty4, &[0, 1, 2, 3]),
                operand(&new_m, &rows_ty, &[0, 1, 2]),
            ],
            operand(&out, &ty4, &[0, 1, 2, 3]),
            &iters(4, false),
            elt(dt),
            |b, a| {
                let d = b.binary(BinaryFn::Sub, &a[0], &a[1], dt);
                b.def(format!("math.exp {d} : {}", elt(dt)))
            },
        );
        let (chunk_sum, _, _) = self.reduce_into(v, &p, &x_ty, &[3], false, BinaryFn::Add, id)?;
        let new_sum = self.generic(
            &[
                operand(&rescale, &rows_ty, &[0, 1, 2]),
                operand(&chunk_sum, &rows_ty, &[0, 1, 2]),
            ],
            operand(&sum, &rows_ty, &[0, 1, 2]),
            &iters(3, false),
            elt(dt),
            |b, a| {
                let t = b.binary(BinaryFn::Mul, &a[2], &a[0], dt);
                b.binary(BinaryFn::Add, &t, &a[1], dt)
            },
        );
        let pv = self.weighted_values(v, s, &p, &vc, &cdim)?;
        let new_acc = self.generic(
            &[
                operand(&rescale, &rows_ty, &[0, 2, 1]),
                operand(&pv, &acc_ty, &[0, 1, 2, 3]),
            ],
            operand(&acc, &acc_ty, &[0, 1, 2, 3]),
            &iters(4, false),
            elt(dt),
            |b, a| {
                let t = b.binary(BinaryFn::Mul, &a[2], &a[0], dt);
                b.binary(BinaryFn::Add, &t, &a[1], dt)
            },
        );
        self.lines.push(format!(
            "{IND}scf.yield {new_m}, {new_sum}, {new_acc} : {rows_ty}, {rows_ty}, {acc_ty}"
        ));
        self.lines.push(format!("{IND}}}"));
        let out = self.init(v, &acc_shape, dt, None)?;
        Ok(self.generic(
            &[
                operand(&format!("{r}#2"), &acc_ty, &[0, 1, 2, 3]),
                operand(&format!("{r}#1"), &rows_ty, &[0, 2, 1]),
            ],
            operand(&out, &acc_ty, &[0, 1, 2, 3]),
            &iters(4, false),
            elt(dt),
            |b, a| b.binary(BinaryFn::Div, &a[0], &a[1], dt),
        ))
    }

    /// Keys or values `x` (`[B, L, H, w]`) gathered into the window of each
    /// query chunk: `[B, n, K, H, w]` with `K = (before+1+after)·chunk`;
    /// `n` is the number of chunks as a dimension and as an `index` value.
    fn gather_windows(
        &mut self,
        v: ValueId,
        s: &Heads,
        x: &str,
        w: u64,
        win: Window,
        (n, n_val): (&Dim, &str),
    ) -> Result<String, MlirError> {
        let shape = [
            s.b.clone(),
            n.clone(),
            Dim::Const(win.keys()),
            Dim::Const(s.h),
            Dim::Const(w),
        ];
        let x_ty = s.ty(&s.split(&s.lk, w));
        let out = self.init(v, &shape, s.dt, None)?;
        Ok(self.generic(
            &[],
            operand(&out, &s.ty(&shape), &[0, 1, 2, 3, 4]),
            &iters(5, false),
            elt(s.dt),
            |b, _| {
                let bi = index(b, 0);
                let j = index(b, 1);
                let slot = index(b, 2);
                let hi = index(b, 3);
                let e = index(b, 4);
                let kpos = win.key_pos(b, &j, &slot, n_val);
                b.def(format!(
                    "tensor.extract {x}[{bi}, {kpos}, {hi}, {e}] : {x_ty}"
                ))
            },
        ))
    }

    /// Chunked local attention for a length of `n` whole chunks:
    /// `[B, n, chunk, H, dv]`. Each chunk's window of keys and values is
    /// gathered once (O(L·(before+1+after)) memory), so no `[L, L]` exists.
    #[allow(clippy::too_many_arguments)]
    fn local_chunks(
        &mut self,
        v: ValueId,
        s: &Heads,
        (q4, kn, v4): (&str, &str, &str),
        mask: Option<&Mask>,
        rules: Rules,
        win: Window,
        n: &Dim,
    ) -> Result<String, MlirError> {
        let dt = s.dt;
        let chunk = win.chunk;
        let n_val = self.size(v, n)?;
        let (bs, ns) = (self.mixed(v, &s.b)?, self.mixed(v, n)?);
        let q5_shape = [
            s.b.clone(),
            n.clone(),
            Dim::Const(chunk),
            Dim::Const(s.h),
            Dim::Const(s.d),
        ];
        let q5_ty = s.ty(&q5_shape);
        let q5 = self.def(format!(
            "tensor.expand_shape {q4} [[0], [1, 2], [3], [4]] output_shape [{bs}, {ns}, {chunk}, {}, {}] : {} into {q5_ty}",
            s.h,
            s.d,
            s.ty(&s.split(&s.lq, s.d))
        ));
        let kg = self.gather_windows(v, s, kn, s.d, win, (n, &n_val))?;
        let vg = self.gather_windows(v, s, v4, s.dv, win, (n, &n_val))?;
        let kk = Dim::Const(win.keys());
        let win_shape = |w: u64| {
            [
                s.b.clone(),
                n.clone(),
                kk.clone(),
                Dim::Const(s.h),
                Dim::Const(w),
            ]
        };
        // Logits [B, H, n, chunk, K]; loops (b, h, j, t, slot, e).
        let shape = [
            s.b.clone(),
            Dim::Const(s.h),
            n.clone(),
            Dim::Const(chunk),
            kk.clone(),
        ];
        let ty = s.ty(&shape);
        let init = self.init(v, &shape, dt, Some(0.0))?;
        let x = self.generic(
            &[
                operand(&q5, &q5_ty, &[0, 2, 3, 1, 5]),
                operand(&kg, &s.ty(&win_shape(s.d)), &[0, 2, 4, 1, 5]),
            ],
            operand(&init, &ty, &[0, 1, 2, 3, 4]),
            &iters(5, true),
            elt(dt),
            |b, a| {
                let p = b.binary(BinaryFn::Mul, &a[0], &a[1], dt);
                b.binary(BinaryFn::Add, &a[2], &p, dt)
            },
        );
        let x = self.masked(v, &x, (&shape, dt), mask, rules, |b| {
            let j = index(b, 2);
            let t = index(b, 3);
            let slot = index(b, 4);
            let c = cindex(b, chunk);
            let q0 = iop(b, "muli", &j, &c);
            let qpos = iop(b, "addi", &q0, &t);
            let kpos = win.key_pos(b, &j, &slot, &n_val);
            Pos {
                qpos,
                kread: kpos.clone(),
                kpos,
                beyond: None,
            }
        })?;
        let p = self.softmax_last(v, &x, &shape, dt)?;
        // Output [B, n, chunk, H, dv]; loops (b, j, t, h, c, slot).
        let out_shape = [
            s.b.clone(),
            n.clone(),
            Dim::Const(chunk),
            Dim::Const(s.h),
            Dim::Const(s.dv),
        ];
        let init = self.init(v, &out_shape, dt, Some(0.0))?;
        Ok(self.generic(
            &[
                operand(&p, &ty, &[0, 3, 1, 2, 5]),
                operand(&vg, &s.ty(&win_shape(s.dv)), &[0, 1, 5, 3, 4]),
            ],
            operand(&init, &s.ty(&out_shape), &[0, 1, 2, 3, 4]),
            &iters(5, true),
            elt(dt),
            |b, a| {
                let m = b.binary(BinaryFn::Mul, &a[0], &a[1], dt);
                b.binary(BinaryFn::Add, &a[2], &m, dt)
            },
        ))
    }

    /// `[B, n, chunk, H, dv]` back to `[B, n·chunk, H·dv]`.
    fn merge_chunks(&self, s: &Heads, o: &str, n: &Dim, chunk: u64) -> String {
        let from = s.ty(&[
            s.b.clone(),
            n.clone(),
            Dim::Const(chunk),
            Dim::Const(s.h),
            Dim::Const(s.dv),
        ]);
        let len = match n.as_const() {
            Some(n) => Dim::Const(n * chunk),
            None => s.lq.clone(),
        };
        let to = s.ty(&[s.b.clone(), len, Dim::Const(s.h * s.dv)]);
        format!("tensor.collapse_shape {o} [[0], [1, 2], [3, 4]] : {from} into {to}")
    }
}

/// The neighbourhood of a local-attention chunk.
#[derive(Clone, Copy, Debug)]
struct Window {
    chunk: u64,
    before: u64,
    after: u64,
}

impl Window {
    /// Keys in one window: `(before + 1 + after) · chunk`.
    fn keys(self) -> u64 {
        (self.before + 1 + self.after) * self.chunk
    }

    /// The original position of window slot `slot` of query chunk `j` among
    /// `n` chunks: chunk `(j + n·(before+1) + slot/chunk - before) mod n`
    /// (the interpreter's `adjacent_chunks`, wrapping around), offset
    /// `slot mod chunk`.
    fn key_pos(self, b: &mut Body, j: &str, slot: &str, n: &str) -> String {
        let c = cindex(b, self.chunk);
        let o = iop(b, "divui", slot, &c);
        let t = iop(b, "remui", slot, &c);
        let k = cindex(b, self.before + 1);
        let base = iop(b, "muli", n, &k);
        let x = iop(b, "addi", j, &base);
        let x = iop(b, "addi", &x, &o);
        let before = cindex(b, self.before);
        let x = iop(b, "subi", &x, &before);
        let ch = iop(b, "remui", &x, n);
        let start = iop(b, "muli", &ch, &c);
        iop(b, "addi", &start, &t)
    }
}
