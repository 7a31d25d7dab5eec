//! LSH attention over window blocks, without gathering windows.
//!
//! Block `c` of sorted queries attends to the `before + 1 + after` chunks
//! around its own. Gathering each block's window would copy every key and
//! value `before + 1 + after` times through an index per element (IREE ran
//! that gather at 5 ns per element, a fifth of the forward pass). Instead the
//! sorted keys and values are gathered once into *extended* rows: the `n`
//! sorted slots with the wrap-around chunks on either side, so that window
//! block `j` of every query block is one slice of them (`c + j` in chunks).
//! Each block then has its own contraction and mask; the row maximum and sum
//! read all blocks in one reduction, and the weighted sum runs over the
//! blocks in order, each product accumulating onto the previous block's.
//! Full attention (`L <= chunk`) is the same with one block of every key.

use super::super::sort::{ident, loop_indices, operand, Shp, Sz};
use super::{Attended, Blocks, Lsh, Window};
use crate::emit::{ConcatPart, Emitter};
use crate::scalar::literal;

/// One window block's keys: the positions `[B, H, nc, w]` (and their
/// padding drops) and the keys and values `[B, H, nc, w, d]`: slices of the
/// extended rows (chunked windows, `w` the chunk) or every key (`nc = 1`).
struct Block {
    kpos: String,
    dropped: Option<String>,
    k: String,
    v: String,
}

impl Emitter<'_> {
    /// The attention of every block of sorted queries over its window: the
    /// chunks around its own ([`Window::Chunks`], blocks of `chunk` keys),
    /// or the whole sequence as one block ([`Window::All`], `L <= chunk`).
    pub(super) fn lsh_attend_blocks(&mut self, c: &Lsh, bl: &Blocks) -> Attended {
        let (dt, e) = (c.dt, c.e());
        let blocks = match &bl.window {
            Window::All => vec![self.lsh_whole_block(c, bl)],
            Window::Chunks { .. } => self.lsh_window_blocks(c, bl),
        };
        // Keys per block.
        let wb = match &bl.window {
            Window::All => bl.w.clone(),
            Window::Chunks { .. } => Sz::Const(c.chunk),
        };
        let dsz = Sz::Const(c.d);
        let hsz = Sz::Const(c.heads);
        let q5 = Shp(vec![
            c.b.clone(),
            hsz.clone(),
            bl.nc.clone(),
            bl.qc.clone(),
            dsz.clone(),
        ]);
        let k5 = q5.with(3, wb.clone());
        let lg = q5.with(4, wb);
        let rows4 = Shp(lg.0[..4].to_vec());
        let flat = c.rows_by(&bl.n, &dsz);
        let q = self.def(format!(
            "tensor.expand_shape {}[[0], [1], [2, 3], [4]] output_shape [{}] : {} into {}",
            bl.q,
            q5.mixed_list(),
            flat.ty(e),
            q5.ty(e)
        ));
        let zero = literal(dt, 0.0);
        let contraction = [
            "parallel",
            "parallel",
            "parallel",
            "parallel",
            "parallel",
            "reduction",
        ];
        // logits_j[b, h, c, i, w] = q[c, i] . k_j[c, w]
        self.stage("qk");
        let mut logits = Vec::new();
        for blk in &blocks {
            let init = self.shp_filled(&lg, e, &zero);
            let ins = [
                operand(&q, &q5.ty(e), &["d0", "d1", "d2", "d3", "d5"]),
                operand(&blk.k, &k5.ty(e), &["d0", "d1", "d2", "d4", "d5"]),
            ];
            let out = operand(&init, &lg.ty(e), &ident(5));
            let nt = self.bmm_call(5, true, dt);
            logits.push(
                self.generic_call(&ins, out, &contraction, e, nt.as_deref(), |b, a| {
                    let p = b.def(format!("arith.mulf {}, {} : {e}", a[0], a[1]));
                    b.def(format!("arith.addf {}, {p} : {e}", a[2]))
                }),
            );
        }
        self.stage("mask");
        let masked: Vec<String> = logits
            .iter()
            .zip(&blocks)
            .map(|(l, blk)| self.lsh_mask_logits(c, bl, &lg, l, &blk.kpos, blk.dropped.as_deref()))
            .collect();
        self.stage("softmax");
        let rmap = ["d0", "d1", "d2", "d3"];
        let red = ["parallel", "parallel", "parallel", "parallel", "reduction"];
        // Row maxima over all blocks at once (a chain of reductions, each
        // starting from the last, did not compile in IREE 3.13).
        let ins: Vec<_> = masked
            .iter()
            .map(|m| operand(m, &lg.ty(e), &ident(5)))
            .collect();
        let init = self.shp_filled(&rows4, e, &literal(dt, f64::NEG_INFINITY));
        let out = operand(&init, &rows4.ty(e), &rmap);
        let max = self.generic(&ins, out, &red, e, |b, a| {
            let (acc, xs) = a.split_last().expect("an output");
            xs.iter().fold(acc.clone(), |m, x| {
                b.def(format!("arith.maximumf {m}, {x} : {e}"))
            })
        });
        let poly = self.own_pipeline && dt == reformc_ir::DType::F32;
        let mut exps = Vec::new();
        for m in &masked {
            let init = self.shp_empty(&lg, e);
            let ins = [
                operand(m, &lg.ty(e), &ident(5)),
                operand(&max, &rows4.ty(e), &rmap),
            ];
            let out = operand(&init, &lg.ty(e), &ident(5));
            exps.push(self.generic(&ins, out, &["parallel"; 5], e, |b, a| {
                let t = b.def(format!("arith.subf {}, {} : {e}", a[0], a[1]));
                match poly {
                    true => b.exp_f32_poly(&t),
                    false => b.def(format!("math.exp {t} : {e}")),
                }
            }));
        }
        let ins: Vec<_> = exps
            .iter()
            .map(|x| operand(x, &lg.ty(e), &ident(5)))
            .collect();
        let init = self.shp_filled(&rows4, e, &zero);
        let out = operand(&init, &rows4.ty(e), &rmap);
        let sum = self.generic(&ins, out, &red, e, |b, a| {
            let (acc, xs) = a.split_last().expect("an output");
            xs.iter().fold(acc.clone(), |s, x| {
                b.def(format!("arith.addf {s}, {x} : {e}"))
            })
        });
        let probs: Vec<String> = exps
            .iter()
            .map(|x| {
                let ins = [operand(&sum, &rows4.ty(e), &rmap)];
                let out = operand(x, &lg.ty(e), &ident(5));
                self.generic(&ins, out, &["parallel"; 5], e, |b, a| {
                    b.def(format!("arith.divf {}, {} : {e}", a[1], a[0]))
                })
            })
            .collect();
        // o[b, h, c, i, e] = sum over blocks j, then w, of p_j[c, i, w] v_j[c, w, e]
        self.stage("pv");
        let mut o = self.shp_filled(&q5, e, &zero);
        for (p, blk) in probs.iter().zip(&blocks) {
            let ins = [
                operand(p, &lg.ty(e), &["d0", "d1", "d2", "d3", "d5"]),
                operand(&blk.v, &k5.ty(e), &["d0", "d1", "d2", "d5", "d4"]),
            ];
            let out = operand(&o, &q5.ty(e), &ident(5));
            let nn = self.bmm_call(5, false, dt);
            o = self.generic_call(&ins, out, &contraction, e, nn.as_deref(), |b, a| {
                let p = b.def(format!("arith.mulf {}, {} : {e}", a[0], a[1]));
                b.def(format!("arith.addf {}, {p} : {e}", a[2]))
            });
        }
        let rows = c.rows(&bl.n);
        let collapse = |x: &str, from: &Shp, to: &Shp, groups: &str| {
            format!(
                "tensor.collapse_shape {x}[{groups}] : {} into {}",
                from.ty(e),
                to.ty(e)
            )
        };
        let o = self.def(collapse(&o, &q5, &flat, "[0], [1], [2, 3], [4]"));
        let max = self.def(collapse(&max, &rows4, &rows, "[0], [1], [2, 3]"));
        let sum = self.def(collapse(&sum, &rows4, &rows, "[0], [1], [2, 3]"));
        Attended { o, max, sum }
    }

    /// The one block of full attention: every key, in order (`bl.pos` is
    /// the identity), as `[B, H, 1, L, ..]`.
    fn lsh_whole_block(&mut self, c: &Lsh, bl: &Blocks) -> Block {
        self.stage("window");
        let e = c.e();
        let one = Shp(vec![
            c.b.clone(),
            Sz::Const(c.heads),
            Sz::Const(1),
            bl.n.clone(),
        ]);
        let mut one5 = one.clone();
        one5.0.push(Sz::Const(c.d));
        let kpos = self.def(format!(
            "tensor.expand_shape {}[[0], [1], [2, 3]] output_shape [{}] : {} into {}",
            bl.pos,
            one.mixed_list(),
            c.rows(&bl.n).ty("i64"),
            one.ty("i64")
        ));
        let dropped = self.lsh_dropped(c, &kpos, &one);
        self.stage("gather_kv");
        let flat_d = c.rows_by(&bl.n, &Sz::Const(c.d));
        let keys = self.lsh_norm_keys(c, &bl.q, &flat_d);
        let values = self.lsh_gather(c, &c.v4.clone(), &bl.pos, &bl.n);
        let mut kv = [keys, values].map(|x| {
            self.def(format!(
                "tensor.expand_shape {x}[[0], [1], [2, 3], [4]] output_shape [{}] : {} into {}",
                one5.mixed_list(),
                flat_d.ty(e),
                one5.ty(e)
            ))
        });
        Block {
            kpos,
            dropped,
            k: std::mem::take(&mut kv[0]),
            v: std::mem::take(&mut kv[1]),
        }
    }

    /// Whether the padding mask drops each key of `kpos` (`i1`, shape `s`),
    /// when there is a mask.
    fn lsh_dropped(&mut self, c: &Lsh, kpos: &str, s: &Shp) -> Option<String> {
        let (m, mty, me) = c.mask.as_ref()?;
        let rank = s.rank();
        let init = self.shp_empty(s, "i1");
        let ins = [operand(kpos, &s.ty("i64"), &ident(rank))];
        let out = operand(&init, &s.ty("i1"), &ident(rank));
        Some(
            self.generic(&ins, out, &vec!["parallel"; rank], "i1", |b, a| {
                let b0 = b.def("linalg.index 0 : index".into());
                let ki = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
                let mv = b.def(format!("tensor.extract {m}[{b0}, {ki}] : {mty}"));
                let z = match *me {
                    "i1" => b.def("arith.constant false".into()),
                    _ => b.def(format!("arith.constant 0 : {me}")),
                };
                b.def(format!("arith.cmpi eq, {mv}, {z} : {me}"))
            }),
        )
    }

    /// The extended rows and every window block's slices of them.
    fn lsh_window_blocks(&mut self, c: &Lsh, bl: &Blocks) -> Vec<Block> {
        let Window::Chunks { n, base, .. } = &bl.window else {
            unreachable!("called for chunked windows")
        };
        let (n, base) = (n.clone(), base.clone());
        self.stage("window");
        let nblk = c.before + 1 + c.after;
        // Extended chunk count and rows.
        let (ncx, t) = match &bl.nc {
            Sz::Const(nc) => (
                Sz::Const(nc + nblk - 1),
                Sz::Const((nc + nblk - 1) * c.chunk),
            ),
            Sz::Dyn(nc) => {
                let x = self.idx_const(nblk - 1);
                let ncx = self.def(format!("arith.addi {nc}, {x} : index"));
                let ch = self.idx_const(c.chunk);
                let t = self.def(format!("arith.muli {ncx}, {ch} : index"));
                (Sz::Dyn(ncx), Sz::Dyn(t))
            }
        };
        let chunk = Sz::Const(c.chunk);
        let ext4 = Shp(vec![
            c.b.clone(),
            Sz::Const(c.heads),
            ncx.clone(),
            chunk.clone(),
        ]);
        let mut ext5 = ext4.clone();
        ext5.0.push(Sz::Const(c.d));
        let e = c.e();
        let flat_d = c.rows_by(&bl.n, &Sz::Const(c.d));
        let text_d = c.rows_by(&t, &Sz::Const(c.d));
        // The extended rows: the sorted rows with the wrap-around chunks
        // copied on either side (slices and a concat: n >= 2 chunks in the
        // sorted branch, so up to two chunks on a side come from one slice),
        // or, for wider windows, each row `t` taken from slot `(t + base) mod n`.
        let wrap = c.before <= 2 && c.after <= 2;
        let slots = (!wrap).then(|| self.lsh_ext_slots(c, &t, &n, &base));
        let extend = |em: &mut Self, x: &str, from: &Shp, to: &Shp, et: &str| match &slots {
            None => em.lsh_wrap_rows(c, x, from, to, &n, et),
            Some(sl) => em.lsh_take_rows(c, x, from, to, sl, et),
        };
        let ext = extend(self, &bl.pos, &c.rows(&bl.n), &c.rows(&t), "i64");
        let ext_pos = self.def(format!(
            "tensor.expand_shape {ext}[[0], [1], [2, 3]] output_shape [{}] : {} into {}",
            ext4.mixed_list(),
            c.rows(&t).ty("i64"),
            ext4.ty("i64")
        ));
        let ext_drop = self.lsh_dropped(c, &ext_pos, &ext4);
        self.stage("gather_kv");
        // The keys: the sorted queries' rows normalised (the keys' rows in
        // sorted order: the same values, without a gather); the values
        // gathered in sorted order once.
        let keys = self.lsh_norm_keys(c, &bl.q, &flat_d);
        let values = self.lsh_gather(c, &c.v4.clone(), &bl.pos, &bl.n);
        let mut gathered = Vec::new();
        for sorted in [keys, values] {
            let g = extend(self, &sorted, &flat_d, &text_d, e);
            gathered.push(self.def(format!(
                "tensor.expand_shape {g}[[0], [1], [2, 3], [4]] output_shape [{}] : {} into {}",
                ext5.mixed_list(),
                text_d.ty(e),
                ext5.ty(e)
            )));
        }
        let nc = bl.nc.clone();
        let win4 = ext4.with(2, nc.clone());
        let win5 = ext5.with(2, nc);
        (0..nblk)
            .map(|j| {
                let slice = |em: &mut Self, x: &str, from: &Shp, to: &Shp, et: &str| {
                    let rank = from.0.len();
                    let mut offs = vec!["0".to_string(); rank];
                    offs[2] = j.to_string();
                    em.def(format!(
                        "tensor.extract_slice {x}[{}] [{}] [{}] : {} to {}",
                        offs.join(", "),
                        to.mixed_list(),
                        vec!["1"; rank].join(", "),
                        from.ty(et),
                        to.ty(et)
                    ))
                };
                Block {
                    kpos: slice(self, &ext_pos, &ext4, &win4, "i64"),
                    dropped: ext_drop
                        .as_ref()
                        .map(|d| slice(self, d, &ext4, &win4, "i1")),
                    k: slice(self, &gathered[0], &ext5, &win5, e),
                    v: slice(self, &gathered[1], &ext5, &win5, e),
                }
            })
            .collect()
    }

    /// `x` (`[B, H, n, ..]` of shape `from`) extended to `to` (`T = n +
    /// (before + after) chunk` rows): its last `before` chunks, all its rows,
    /// then its first `after` chunks, by slices joined with
    /// [`Emitter::concat_parts`].
    /// Needs `n >= before chunk` and `n >= after chunk` (`n` the `index`).
    fn lsh_wrap_rows(
        &mut self,
        c: &Lsh,
        x: &str,
        from: &Shp,
        to: &Shp,
        n: &str,
        et: &str,
    ) -> String {
        let rank = from.0.len();
        let ones = vec!["1"; rank].join(", ");
        let place = |start: &str, shape: &Shp| {
            let mut offs = vec!["0".to_string(); rank];
            offs[2] = start.to_string();
            format!("[{}] [{}] [{ones}]", offs.join(", "), shape.mixed_list())
        };
        // (value, its shape) of each part, in order.
        let mut parts = Vec::new();
        if c.before > 0 {
            let len = c.before * c.chunk;
            let l = self.idx_const(len);
            let start = self.def(format!("arith.subi {n}, {l} : index"));
            let shape = from.with(2, Sz::Const(len));
            let head = self.def(format!(
                "tensor.extract_slice {x}{} : {} to {}",
                place(&start, &shape),
                from.ty(et),
                shape.ty(et)
            ));
            parts.push((head, shape));
        }
        parts.push((x.to_string(), from.clone()));
        if c.after > 0 {
            let shape = from.with(2, Sz::Const(c.after * c.chunk));
            let tail = self.def(format!(
                "tensor.extract_slice {x}{} : {} to {}",
                place("0", &shape),
                from.ty(et),
                shape.ty(et)
            ));
            parts.push((tail, shape));
        }
        let parts: Vec<ConcatPart> = parts
            .into_iter()
            .map(|(name, shape)| ConcatPart {
                name,
                ty: shape.ty(et),
                sizes: shape.mixed(),
            })
            .collect();
        self.concat_parts(2, &parts, &to.ty(et), |em| em.shp_empty(to, et))
    }

    /// The sorted slot of every extended row `[B, H, T]` (`i64`): `(t + base)
    /// mod n` (block `c`'s window entry `w` is row `c chunk + w`).
    fn lsh_ext_slots(&mut self, c: &Lsh, t: &Sz, n: &str, base: &str) -> String {
        let rows = c.rows(t);
        let init = self.shp_empty(&rows, "i64");
        let out = operand(&init, &rows.ty("i64"), &ident(3));
        self.generic(&[], out, &["parallel"; 3], "i64", |b, _| {
            let ix = loop_indices(b, 3);
            let k = b.def(format!("arith.addi {}, {base} : index", ix[2]));
            let slot = b.def(format!("arith.remui {k}, {n} : index"));
            b.def(format!("arith.index_cast {slot} : index to i64"))
        })
    }

    /// `out[b, h, t, ..] = x[b, h, slots[b, h, t], ..]` for `x` of shape
    /// `from` and `out` of shape `to`.
    fn lsh_take_rows(
        &mut self,
        c: &Lsh,
        x: &str,
        from: &Shp,
        to: &Shp,
        slots: &str,
        et: &str,
    ) -> String {
        let rank = from.0.len();
        let sty = c.rows(&to.0[2]).ty("i64");
        let init = self.shp_empty(to, et);
        let ins = [operand(slots, &sty, &["d0", "d1", "d2"])];
        let out = operand(&init, &to.ty(et), &ident(rank));
        let xty = from.ty(et);
        self.generic(&ins, out, &vec!["parallel"; rank], et, |b, a| {
            let ix = loop_indices(b, rank);
            let p = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
            let mut at = vec![ix[0].clone(), ix[1].clone(), p];
            at.extend(ix[3..].iter().cloned());
            b.def(format!("tensor.extract {x}[{}] : {xty}", at.join(", ")))
        })
    }
}
