//! LSH attention (`lsh_attention`, shared query/keys) in upstream ops,
//! following `interp/src/attention.rs` step for step.
//!
//! Per (batch, head), with `r` rounds and `N = r L` hashed positions:
//! 1. the bucket ids `[B, H, r, L]` are viewed as `[B, H, N]` (round-major,
//!    HF's order) and sorted by (bucket, index) with the bitonic network of
//!    `sort.rs`, giving the permutation `perm`; `spos = perm mod L` are the
//!    original positions of the sorted slots;
//! 2. queries are gathered into sorted order (`[B, H, N, d]`, viewed as
//!    `[B, H, N / chunk, chunk, d]` blocks); for each block, the
//!    length-normalised scaled keys and the values of its window, the
//!    `W = (before + 1 + after) chunk` slots of chunks `c - before ..= c + after`
//!    (mod the chunk count), are gathered once into `[B, H, N / chunk, W, d]`;
//! 3. logits `[B, H, N / chunk, chunk, W]` as a batched contraction, the
//!    padding, causal and self masks by original positions, the row max, sum
//!    of exponentials and probabilities, and the outputs as a second
//!    contraction with the window values;
//! 4. `inv = argsort(perm)` undoes the sort, and the rounds of each position
//!    combine weighted by the softmax of their log-sum-exps, written straight
//!    into the `[B, L, H d]` result.
//!
//! Everything is O(N W d) work and O(N W) memory; nothing is `[L, L]`. A
//! length up to `chunk` takes the interpreter's other branch, full attention
//! over the whole (short) sequence as one block, chosen at run time with
//! `scf.if` (at emit time when the length is a constant).

use super::sort::{ident, loop_indices, operand, Shp, Sz};
use super::{tensor_ty, Emitter};
use crate::scalar::{elt, literal};
use crate::MlirError;
use reformc_ir::{DType, ValueId};

mod window_blocks;

/// Logit of masked (padding or causal) keys, the interpreter's `MASK_VALUE`.
const MASK_VALUE: f64 = -1e9;
/// Logit of a query's own position, the interpreter's `SELF_MASK_VALUE`.
const SELF_MASK_VALUE: f64 = -1e5;

/// What the lowering of one `lsh_attention` op needs everywhere.
struct Lsh {
    /// Float dtype of the activations.
    dt: DType,
    heads: u64,
    /// Head width.
    d: u64,
    chunk: u64,
    before: u64,
    after: u64,
    causal: bool,
    rounds: u64,
    /// Batch and length sizes.
    b: Sz,
    l: Sz,
    /// `qk` and `v` viewed as `[B, L, H, d]`.
    qk4: String,
    v4: String,
    /// The padding mask `[B, L]` and its element type, when given.
    mask: Option<(String, String, &'static str)>,
}

impl Lsh {
    fn e(&self) -> &'static str {
        elt(self.dt)
    }

    /// `[B, L, H, d]`.
    fn split_shape(&self) -> Shp {
        Shp(vec![
            self.b.clone(),
            self.l.clone(),
            Sz::Const(self.heads),
            Sz::Const(self.d),
        ])
    }

    /// `[B, H, n]`.
    fn rows(&self, n: &Sz) -> Shp {
        Shp(vec![self.b.clone(), Sz::Const(self.heads), n.clone()])
    }

    /// `[B, H, n, last]`.
    fn rows_by(&self, n: &Sz, last: &Sz) -> Shp {
        Shp(vec![
            self.b.clone(),
            Sz::Const(self.heads),
            n.clone(),
            last.clone(),
        ])
    }
}

/// Which sorted slots the queries of a block attend to.
enum Window {
    /// All `W` slots, in order (full attention: one block).
    All,
    /// The chunks around the block's own: slot `w` of the window of block
    /// `c` is `(c chunk + w + base) mod n` with `base = n before - before
    /// chunk` (never negative: `n >= chunk`), i.e. `(c - before) chunk + w`
    /// wrapped around the `n` sorted slots.
    Chunks { n: String, base: String },
}

/// The blocking of the sorted slots: `n = nc qc` slots in `nc` blocks of
/// `qc` queries, each attending to the `w` slots of its window.
struct Blocks {
    /// Sorted queries, `[B, H, n, d]`.
    q: String,
    /// The original position (`i64`) of each slot, `[B, H, n]`.
    pos: String,
    n: Sz,
    nc: Sz,
    qc: Sz,
    w: Sz,
    window: Window,
}

/// Outputs of the block attention: per slot, the normalised output
/// `[B, H, N, d]` and its log-sum-exp as (max, sum of exponentials) `[B, H, N]`.
struct Attended {
    o: String,
    max: String,
    sum: String,
}

impl Emitter<'_> {
    /// Lowers `lsh_attention(qk, v, buckets[, mask])`.
    pub(super) fn lower_lsh_attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        let ctx = self.lsh_context(v)?;
        let node = self.g.node(v);
        let out_ty = tensor_ty(&node.ty);
        let buckets = node.inputs[2];
        if let Sz::Const(l) = ctx.l {
            // A known length takes one branch at emit time (no dead `[L, L]`
            // types in the module).
            if l <= ctx.chunk {
                let full = self.lsh_full_branch(&ctx);
                return Ok(self.alias(&full, &out_ty));
            }
            if (l * ctx.rounds) % ctx.chunk != 0 {
                return Err(MlirError::invalid(
                    self.g,
                    v,
                    "rounds x length is not a multiple of the chunk length",
                ));
            }
            let lsh = self.lsh_sorted_branch(&ctx, buckets);
            return Ok(self.alias(&lsh, &out_ty));
        }
        let timer = self.branch_timer();
        let l = self.sz_val(&ctx.l);
        let chunk = self.idx_const(ctx.chunk);
        let short = self.def(format!("arith.cmpi ule, {l}, {chunk} : index"));
        let r = self.fresh();
        self.lines
            .push(format!("    {r} = scf.if {short} -> ({out_ty}) {{"));
        let full = self.lsh_full_branch(&ctx);
        let full = self.def(format!("tensor.cast {full} : {out_ty} to {out_ty}"));
        self.end_branch();
        self.lines
            .push(format!("    scf.yield {full} : {out_ty}\n    }} else {{"));
        self.timer = timer;
        let lsh = self.lsh_sorted_branch(&ctx, buckets);
        let lsh = self.def(format!("tensor.cast {lsh} : {out_ty} to {out_ty}"));
        self.end_branch();
        self.lines
            .push(format!("    scf.yield {lsh} : {out_ty}\n    }}"));
        Ok(self.alias(&r, &out_ty))
    }

    /// Checks the operands and attributes and builds the shared values.
    fn lsh_context(&mut self, v: ValueId) -> Result<Lsh, MlirError> {
        let node = self.g.node(v);
        let (qk, vv, bk) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let q_ty = self.g.ty(qk).clone();
        let b_ty = self.g.ty(bk).clone();
        let dt = q_ty.dtype;
        if !matches!(dt, DType::F32 | DType::F64) || q_ty.rank() != 3 {
            return Err(MlirError::invalid(
                self.g,
                v,
                "needs f32/f64 [B,L,H*d] operands",
            ));
        }
        if b_ty.rank() != 4 || !b_ty.dtype.is_int() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "buckets must be integer [B,H,r,L]",
            ));
        }
        let heads = self.nonneg(v, "heads")?;
        let chunk = self.nonneg(v, "chunk")?;
        let width = q_ty.shape[2].as_const();
        let rounds = b_ty.shape[2].as_const();
        let (Some(width), Some(rounds)) = (width, rounds) else {
            return Err(MlirError::invalid(
                self.g,
                v,
                "the width and the round count must be constants",
            ));
        };
        if heads == 0 || chunk == 0 || rounds == 0 || width % heads != 0 {
            return Err(MlirError::invalid(
                self.g,
                v,
                "heads, chunk and rounds must be positive, heads dividing the width",
            ));
        }
        let s = self.shp_of(qk);
        let mut ctx = Lsh {
            dt,
            heads,
            d: width / heads,
            chunk,
            before: self.nonneg(v, "before")?,
            after: self.nonneg(v, "after")?,
            causal: node.op.flag("causal"),
            rounds,
            b: s.0[0].clone(),
            l: s.0[1].clone(),
            qk4: String::new(),
            v4: String::new(),
            mask: None,
        };
        if let Some(&m) = node.inputs.get(3) {
            let m_ty = self.g.ty(m);
            ctx.mask = Some((format!("%v{}", m.0), tensor_ty(m_ty), elt(m_ty.dtype)));
        }
        let e = ctx.e();
        let split = ctx.split_shape();
        let from = s.ty(e);
        let to = split.ty(e);
        let sizes = split.mixed_list();
        ctx.qk4 = self.def(format!(
            "tensor.expand_shape %v{}[[0], [1], [2, 3]] output_shape [{sizes}] : {from} into {to}",
            qk.0
        ));
        ctx.v4 = self.def(format!(
            "tensor.expand_shape %v{}[[0], [1], [2, 3]] output_shape [{sizes}] : {from} into {to}",
            vv.0
        ));
        Ok(ctx)
    }

    /// HF's `_len_norm` then division by sqrt(d), as `scaled_keys`:
    /// `x / sqrt(mean(x^2) + 1e-6) / sqrt(d)` per row of `x` (`[.., .., .., d]`
    /// of shape `split`: the keys `[B, L, H, d]`, or sorted `[B, H, n, d]`,
    /// where each row is the same values, normalised the same way).
    fn lsh_norm_keys(&mut self, c: &Lsh, x: &str, split: &Shp) -> String {
        let (dt, e) = (c.dt, c.e());
        let split = split.clone();
        let rows = Shp(split.0[..3].to_vec());
        let zero = literal(dt, 0.0);
        let init = self.shp_filled(&rows, e, &zero);
        let ins = [operand(x, &split.ty(e), &ident(4))];
        let out = operand(&init, &rows.ty(e), &["d0", "d1", "d2"]);
        let iters = ["parallel", "parallel", "parallel", "reduction"];
        let ss = self.generic(&ins, out, &iters, e, |b, a| {
            let sq = b.def(format!("arith.mulf {}, {} : {e}", a[0], a[0]));
            b.def(format!("arith.addf {}, {sq} : {e}", a[1]))
        });
        let init = self.shp_empty(&split, e);
        let ins = [
            operand(x, &split.ty(e), &ident(4)),
            operand(&ss, &rows.ty(e), &["d0", "d1", "d2"]),
        ];
        let out = operand(&init, &split.ty(e), &ident(4));
        let width = c.d as f64;
        let div = 1.0 / (1.0 / width.sqrt());
        self.generic(&ins, out, &["parallel"; 4], e, |b, a| {
            let n = b.constant(dt, width);
            let eps = b.constant(dt, 1e-6);
            let one = b.constant(dt, 1.0);
            let div = b.constant(dt, div);
            let ms = b.def(format!("arith.divf {}, {n} : {e}", a[1]));
            let ms = b.def(format!("arith.addf {ms}, {eps} : {e}"));
            let rt = b.def(format!("math.sqrt {ms} : {e}"));
            let inv = b.def(format!("arith.divf {one}, {rt} : {e}"));
            let x = b.def(format!("arith.mulf {}, {inv} : {e}", a[0]));
            b.def(format!("arith.divf {x}, {div} : {e}"))
        })
    }

    /// `L <= chunk`: full attention over the sequence (the interpreter's
    /// `attention` with key normalisation and the self mask), as one block.
    fn lsh_full_branch(&mut self, c: &Lsh) -> String {
        let rows = c.rows(&c.l);
        let init = self.shp_empty(&rows, "i64");
        let out = operand(&init, &rows.ty("i64"), &ident(3));
        let pos = self.generic(&[], out, &["parallel"; 3], "i64", |b, _| {
            let i = b.def("linalg.index 2 : index".into());
            b.def(format!("arith.index_cast {i} : index to i64"))
        });
        let blocks = Blocks {
            q: self.lsh_gather(c, &c.qk4, &pos, &c.l),
            pos,
            n: c.l.clone(),
            nc: Sz::Const(1),
            qc: c.l.clone(),
            w: c.l.clone(),
            window: Window::All,
        };
        let att = self.lsh_attend_blocks(c, &blocks);
        self.lsh_merge_heads(c, &att.o)
    }

    /// `L > chunk`: sort by bucket, chunked attention, unsort, combine rounds.
    fn lsh_sorted_branch(&mut self, c: &Lsh, buckets: ValueId) -> String {
        let n = match &c.l {
            Sz::Const(l) => Sz::Const(l * c.rounds),
            Sz::Dyn(l) => {
                let r = self.idx_const(c.rounds);
                Sz::Dyn(self.def(format!("arith.muli {l}, {r} : index")))
            }
        };
        let b_ty = self.g.ty(buckets).clone();
        let rows = c.rows(&n);
        let bk = self.def(format!(
            "tensor.collapse_shape %v{}[[0], [1], [2, 3]] : {} into {}",
            buckets.0,
            tensor_ty(&b_ty),
            rows.ty(elt(b_ty.dtype))
        ));
        self.stage("sort");
        let keys = self.sortable_keys(&bk, &rows, b_ty.dtype);
        // Bucket ids fit i32 and positions u32: sorting `bucket << 32 |
        // position` gives the stable order without a key gathered per
        // comparison (the inverse comes from a binary search over the same
        // packed values, `inverse_perm`).
        let perm = self.packed_sort_perm(&keys, &rows, 2);
        let l = self.sz_val(&c.l);
        let init = self.shp_empty(&rows, "i64");
        let ins = [operand(&perm, &rows.ty("i64"), &ident(3))];
        let out = operand(&init, &rows.ty("i64"), &ident(3));
        // In `index`: IREE's SPIR-V path has no 64-bit remainder.
        let spos = self.generic(&ins, out, &["parallel"; 3], "i64", |b, a| {
            let t = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
            let p = b.def(format!("arith.remui {t}, {l} : index"));
            b.def(format!("arith.index_cast {p} : index to i64"))
        });
        self.stage("gather_q");
        let q = self.lsh_gather(c, &c.qk4, &spos, &n);
        let (nc, window) = self.lsh_chunk_window(c, &n);
        let blocks = Blocks {
            q,
            pos: spos,
            n: n.clone(),
            nc,
            qc: Sz::Const(c.chunk),
            w: Sz::Const((c.before + 1 + c.after) * c.chunk),
            window,
        };
        let att = self.lsh_attend_blocks(c, &blocks);
        self.stage("unsort");
        let inv = self.inverse_perm(&keys, &perm, &rows, 2);
        self.stage("combine");
        self.lsh_combine_rounds(c, &att, &inv, &n)
    }

    /// The chunk count and the chunk window over `n` sorted slots.
    fn lsh_chunk_window(&mut self, c: &Lsh, n: &Sz) -> (Sz, Window) {
        let nv = self.sz_val(n);
        let chunk = self.idx_const(c.chunk);
        let n_chunks = self.def(format!("arith.divui {nv}, {chunk} : index"));
        let before = self.idx_const(c.before);
        let before_slots = self.idx_const(c.before * c.chunk);
        let base = self.def(format!("arith.muli {nv}, {before} : index"));
        let base = self.def(format!("arith.subi {base}, {before_slots} : index"));
        let nc = match n {
            Sz::Const(n) => Sz::Const(n / c.chunk),
            Sz::Dyn(_) => Sz::Dyn(n_chunks),
        };
        let window = Window::Chunks { n: nv, base };
        (nc, window)
    }

    /// `out[b, h, s, e] = src[b, pos[b, h, s], h, e]` for `src` `[B, L, H, d]`.
    fn lsh_gather(&mut self, c: &Lsh, src: &str, pos: &str, n: &Sz) -> String {
        // Row `(b L + pos) H + h` of `src` seen as `[B L H, d]`.
        let rows = c.rows(n);
        let l = self.sz_val(&c.l);
        let h = self.idx_const(c.heads);
        let init = self.shp_empty(&rows, "i64");
        let ins = [operand(pos, &rows.ty("i64"), &ident(3))];
        let out = operand(&init, &rows.ty("i64"), &ident(3));
        let flat = self.generic(&ins, out, &["parallel"; 3], "i64", |b, a| {
            let ix = loop_indices(b, 3);
            let p = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
            let r = b.def(format!("arith.muli {}, {l} : index", ix[0]));
            let r = b.def(format!("arith.addi {r}, {p} : index"));
            let r = b.def(format!("arith.muli {r}, {h} : index"));
            let r = b.def(format!("arith.addi {r}, {} : index", ix[1]));
            b.def(format!("arith.index_cast {r} : index to i64"))
        });
        let src2 = self.lsh_flat_rows(c, src, &c.split_shape());
        self.lsh_take_flat(c, &src2, &flat, &rows)
    }

    /// `x` (`[a, b, c, d]` of shape `s`) as its rows `[a b c, d]` (a view),
    /// and that type.
    fn lsh_flat_rows(&mut self, c: &Lsh, x: &str, s: &Shp) -> (String, String) {
        let e = c.e();
        let rows = match (&s.0[0], &s.0[1], &s.0[2]) {
            (Sz::Const(a), Sz::Const(b), Sz::Const(n)) => (a * b * n).to_string(),
            _ => "?".to_string(),
        };
        let ty = format!("tensor<{rows}x{}x{e}>", c.d);
        let r = self.def(format!(
            "tensor.collapse_shape {x}[[0, 1, 2], [3]] : {} into {ty}",
            s.ty(e)
        ));
        (r, ty)
    }

    /// `out[.., e] = rows[flat[..], e]`: rows `[R, d]` picked by the `i64`
    /// tensor `flat` of shape `at`. The kernel reads only its innermost loop
    /// index (`e`), so a compiler that merges the outer loops needs no
    /// division to recover them, and each row is one contiguous read.
    fn lsh_take_flat(&mut self, c: &Lsh, rows: &(String, String), flat: &str, at: &Shp) -> String {
        let (rows, rty) = rows;
        let e = c.e();
        let rank = at.rank() + 1;
        let mut shape = at.clone();
        shape.0.push(Sz::Const(c.d));
        let init = self.shp_empty(&shape, e);
        let fmap: Vec<&str> = ident(rank)[..rank - 1].to_vec();
        let ins = [operand(flat, &at.ty("i64"), &fmap)];
        let out = operand(&init, &shape.ty(e), &ident(rank));
        self.generic(&ins, out, &vec!["parallel"; rank], e, |b, a| {
            let ei = b.def(format!("linalg.index {} : index", rank - 1));
            let r = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
            b.def(format!("tensor.extract {rows}[{r}, {ei}] : {rty}"))
        })
    }

    /// The masks of `mask_row`, by original positions: padding keys and (when
    /// causal) later keys get -1e9, then the query's own position -1e5. The
    /// positions of queries and window keys and the padding drops are read
    /// in place (affine maps), no index is computed per logit.
    fn lsh_mask_logits(
        &mut self,
        c: &Lsh,
        bl: &Blocks,
        lg: &Shp,
        logits: &str,
        kpos: &str,
        dropped: Option<&str>,
    ) -> String {
        let (dt, e) = (c.dt, c.e());
        let rows4 = Shp(vec![
            c.b.clone(),
            Sz::Const(c.heads),
            bl.nc.clone(),
            bl.qc.clone(),
        ]);
        // The logits' last axis: a whole window or one block of it.
        let wins = Shp(vec![
            c.b.clone(),
            Sz::Const(c.heads),
            bl.nc.clone(),
            lg.0[4].clone(),
        ]);
        let qpos = self.def(format!(
            "tensor.expand_shape {}[[0], [1], [2, 3]] output_shape [{}] : {} into {}",
            bl.pos,
            rows4.mixed_list(),
            c.rows(&bl.n).ty("i64"),
            rows4.ty("i64")
        ));
        let kmap = ["d0", "d1", "d2", "d4"];
        let mut ins = vec![
            operand(logits, &lg.ty(e), &ident(5)),
            operand(&qpos, &rows4.ty("i64"), &["d0", "d1", "d2", "d3"]),
            operand(kpos, &wins.ty("i64"), &kmap),
        ];
        if let Some(d) = dropped {
            ins.push(operand(d, &wins.ty("i1"), &kmap));
        }
        let init = self.shp_empty(lg, e);
        let out = operand(&init, &lg.ty(e), &ident(5));
        let causal = c.causal;
        self.generic(&ins, out, &["parallel"; 5], e, |b, a| {
            let (qp, kp) = (&a[1], &a[2]);
            let mut masked = match dropped {
                Some(_) => a[3].clone(),
                None => b.def("arith.constant false".into()),
            };
            if causal {
                let later = b.def(format!("arith.cmpi slt, {qp}, {kp} : i64"));
                masked = b.def(format!("arith.ori {masked}, {later} : i1"));
            }
            let mval = b.constant(dt, MASK_VALUE);
            let x = b.def(format!("arith.select {masked}, {mval}, {} : {e}", a[0]));
            let own = b.def(format!("arith.cmpi eq, {qp}, {kp} : i64"));
            let sval = b.constant(dt, SELF_MASK_VALUE);
            b.def(format!("arith.select {own}, {sval}, {x} : {e}"))
        })
    }

    /// `[B, H, L, d]` -> `[B, L, H d]`.
    fn lsh_merge_heads(&mut self, c: &Lsh, o: &str) -> String {
        let e = c.e();
        let from = c.rows_by(&c.l, &Sz::Const(c.d));
        let split = c.split_shape();
        let init = self.shp_empty(&split, e);
        let t = self.def(format!(
            "linalg.transpose ins({o} : {}) outs({init} : {}) permutation = [0, 2, 1, 3]",
            from.ty(e),
            split.ty(e)
        ));
        self.lsh_merge_split(c, &t)
    }

    /// Unsorts and combines the rounds: `out[b, i, h d + e]` sums over rounds
    /// `r` the output of slot `inv[b, h, r L + i]` weighted by
    /// `exp(max_r - M) sum_r / Z` (the softmax of the rounds' log-sum-exps).
    /// The weights are computed once per (b, h, r, i) ([`Self::lsh_round_weights`]),
    /// then every output element gathers its rounds' rows. With one round the
    /// weight is `exp(0) s / s`, exactly 1 (`s >= 1`: the row's largest logit
    /// contributes `exp(0)`), and is not computed.
    fn lsh_combine_rounds(&mut self, c: &Lsh, att: &Attended, inv: &str, n: &Sz) -> String {
        let (dt, e) = (c.dt, c.e());
        let weights = (c.rounds > 1).then(|| self.lsh_round_weights(c, att, inv, n));
        let split = c.split_shape();
        let pos3 = Shp(split.0[..3].to_vec());
        // Per round, the row of `o` (as `[B H n, d]`) each (b, i, h) reads:
        // `(b H + h) n + inv[b, h, r L + i]`.
        let l = self.sz_val(&c.l);
        let nv = self.sz_val(n);
        let hc = self.idx_const(c.heads);
        let rty = c.rows(n).ty("i64");
        let mut flats = Vec::new();
        for r in 0..c.rounds {
            let init = self.shp_empty(&pos3, "i64");
            let out = operand(&init, &pos3.ty("i64"), &ident(3));
            flats.push(self.generic(&[], out, &["parallel"; 3], "i64", |b, _| {
                let ix = loop_indices(b, 3);
                let (bi, i, h) = (&ix[0], &ix[1], &ix[2]);
                let rl = b.def(format!("arith.constant {r} : index"));
                let rl = b.def(format!("arith.muli {rl}, {l} : index"));
                let t = b.def(format!("arith.addi {rl}, {i} : index"));
                let slot = b.def(format!("tensor.extract {inv}[{bi}, {h}, {t}] : {rty}"));
                let slot = b.def(format!("arith.index_cast {slot} : i64 to index"));
                let row = b.def(format!("arith.muli {bi}, {hc} : index"));
                let row = b.def(format!("arith.addi {row}, {h} : index"));
                let row = b.def(format!("arith.muli {row}, {nv} : index"));
                let row = b.def(format!("arith.addi {row}, {slot} : index"));
                b.def(format!("arith.index_cast {row} : index to i64"))
            }));
        }
        let o2 = self.lsh_flat_rows(c, &att.o, &c.rows_by(n, &Sz::Const(c.d)));
        let combined = match (&weights, flats.as_slice()) {
            (None, [flat]) => self.lsh_take_flat(c, &o2, flat, &pos3),
            _ => {
                let wty = c.rows_by(&Sz::Const(c.rounds), &c.l).ty(e);
                let mut ins: Vec<_> = flats
                    .iter()
                    .map(|f| operand(f, &pos3.ty("i64"), &["d0", "d1", "d2"]))
                    .collect();
                let wmaps: Vec<String> = (0..c.rounds).map(|r| r.to_string()).collect();
                if let Some(w) = &weights {
                    for m in &wmaps {
                        ins.push(operand(w, &wty, &["d0", "d2", m, "d1"]));
                    }
                }
                let init = self.shp_empty(&split, e);
                let out = operand(&init, &split.ty(e), &ident(4));
                let rounds = c.rounds as usize;
                let (o2, o2ty) = (&o2.0, &o2.1);
                self.generic(&ins, out, &["parallel"; 4], e, |b, a| {
                    let ei = b.def("linalg.index 3 : index".into());
                    let mut acc = b.constant(dt, 0.0);
                    for r in 0..rounds {
                        let row = b.def(format!("arith.index_cast {} : i64 to index", a[r]));
                        let o = b.def(format!("tensor.extract {o2}[{row}, {ei}] : {o2ty}"));
                        let x = match weights.is_some() {
                            true => b.def(format!("arith.mulf {o}, {} : {e}", a[rounds + r])),
                            false => o,
                        };
                        acc = b.def(format!("arith.addf {acc}, {x} : {e}"));
                    }
                    acc
                })
            }
        };
        self.lsh_merge_split(c, &combined)
    }

    /// `[B, L, H, d]` -> `[B, L, H d]`.
    fn lsh_merge_split(&mut self, c: &Lsh, x: &str) -> String {
        let e = c.e();
        let split = c.split_shape();
        let merged = Shp(vec![c.b.clone(), c.l.clone(), Sz::Const(c.heads * c.d)]);
        self.def(format!(
            "tensor.collapse_shape {x}[[0], [1], [2, 3]] : {} into {}",
            split.ty(e),
            merged.ty(e)
        ))
    }

    /// The weight of round `r` at position `i`, `[B, H, r, L]`:
    /// `exp(max_r - M) sum_r / Z` with `M` the largest and `Z` the sum of the
    /// rounds' `exp(max_r - M) sum_r`, each read at slot `inv[b, h, r L + i]`.
    fn lsh_round_weights(&mut self, c: &Lsh, att: &Attended, inv: &str, n: &Sz) -> String {
        let (dt, e) = (c.dt, c.e());
        let shape = c.rows_by(&Sz::Const(c.rounds), &c.l);
        let init = self.shp_empty(&shape, e);
        let out = operand(&init, &shape.ty(e), &ident(4));
        let l = self.sz_val(&c.l);
        let rty = c.rows(n).ty("i64");
        let fty = c.rows(n).ty(e);
        self.generic(&[], out, &["parallel"; 4], e, |b, _| {
            let ix = loop_indices(b, 4);
            let (bi, h, me, i) = (&ix[0], &ix[1], &ix[2], &ix[3]);
            let mut parts = Vec::new();
            for r in 0..c.rounds {
                let t = if r == 0 {
                    i.clone()
                } else {
                    let rl = b.def(format!("arith.constant {r} : index"));
                    let rl = b.def(format!("arith.muli {rl}, {l} : index"));
                    b.def(format!("arith.addi {rl}, {i} : index"))
                };
                let slot = b.def(format!("tensor.extract {inv}[{bi}, {h}, {t}] : {rty}"));
                let slot = b.def(format!("arith.index_cast {slot} : i64 to index"));
                let at = |name: &str| format!("{name}[{bi}, {h}, {slot}]");
                let m = b.def(format!("tensor.extract {} : {fty}", at(&att.max)));
                let s = b.def(format!("tensor.extract {} : {fty}", at(&att.sum)));
                parts.push((m, s));
            }
            let mut big = b.constant(dt, f64::NEG_INFINITY);
            for (m, _) in &parts {
                big = b.def(format!("arith.maximumf {big}, {m} : {e}"));
            }
            let mut ws = Vec::new();
            let mut z = b.constant(dt, 0.0);
            for (m, s) in &parts {
                let t = b.def(format!("arith.subf {m}, {big} : {e}"));
                let x = b.def(format!("math.exp {t} : {e}"));
                let w = b.def(format!("arith.mulf {x}, {s} : {e}"));
                z = b.def(format!("arith.addf {z}, {w} : {e}"));
                ws.push(w);
            }
            // This element's round, `me`, picks its weight.
            let mut mine = b.constant(dt, 0.0);
            for (r, w) in ws.iter().enumerate() {
                let f = b.def(format!("arith.divf {w}, {z} : {e}"));
                let rc = b.def(format!("arith.constant {r} : index"));
                let is = b.def(format!("arith.cmpi eq, {me}, {rc} : index"));
                mine = b.def(format!("arith.select {is}, {f}, {mine} : {e}"));
            }
            mine
        })
    }
}
