//! `lsh_hash`: angular LSH bucket ids with round offsets, `i64[B,H,r,L]`.
//!
//! Per tile of positions (an `scf.for` over the length, so that the rotated
//! vectors `[B,H,r,T,S/2]` never exist for the whole sequence: with the
//! usual `S ~ 2L/chunk` buckets they would be quadratic in L):
//! 1. `rotated = x . R` as a `linalg.generic` contraction accumulated with
//!    `math.fma` in the order of the head dimension, which is how the
//!    interpreter's matrix product (matrixmultiply's FMA kernel) rounds, so
//!    that the argmax sees the same values;
//! 2. per bucket factor `f`, one reduction over its `f/2` rotated coordinates
//!    keeping the maximum of `y` and of `-y` with their first index (ties go to
//!    the lower index inside the body, so the result does not depend on the
//!    order a compiler visits the reduction in);
//! 3. a parallel kernel combining the factors' digits (first factor least
//!    significant), the padding bucket of masked positions, and the round
//!    offset `round * (n + padding)`.
//!
//! Whether there is a padding bucket depends on the mask's data (any zero in
//! the whole batch, as in HF), so it is one reduction before the loop.

use super::{tensor_of, tensor_ty, Emitter, Operand, BODY_IND, IND};
use crate::scalar::{elt, Body};
use crate::MlirError;
use reformc_ir::{DType, Dim, ValueId};

/// Positions hashed per loop iteration: bounds the rotated intermediate to
/// `B*H*r*TILE*S/2` values.
const TILE: u64 = 128;

/// The symbol under which the current tile length is bound in `syms`.
const TILE_SYM: &str = "__lsh_hash_tile";

/// The validated shape parameters of one `lsh_hash`.
struct HashShape {
    heads: u64,
    head_dim: u64,
    rounds: u64,
    half: u64,
    factors: Vec<u64>,
    batch: Dim,
    float: DType,
}

/// The operands of one tile's hashing.
struct Tile<'a> {
    /// The tile's start position (`index`).
    start: &'a str,
    /// The bucket count including the padding bucket (`i64`).
    nb_total: &'a str,
    /// The bucket count without it.
    nb: u64,
}

impl Emitter<'_> {
    /// Lowers `lsh_hash qk, rotations[, mask] {heads, n_hashes, buckets}`.
    pub(super) fn lsh_hash_tiled(&mut self, v: ValueId) -> Result<String, MlirError> {
        let s = self.hash_shape(v)?;
        let node = self.g.node(v);
        let (qk, mask) = (node.inputs[0], node.inputs.get(2).copied());
        let len_dim = self.g.ty(qk).shape[1].clone();
        let nb: u64 = s.factors.iter().product();
        let nb_total = self.bucket_stride(v, mask, nb)?;
        let out_shape = vec![
            s.batch.clone(),
            Dim::Const(s.heads),
            Dim::Const(s.rounds),
            len_dim.clone(),
        ];
        let out_ty = tensor_of(&out_shape, DType::I64);
        let acc0 = self.init(v, &out_shape, DType::I64, None)?;
        let len = self.size(v, &len_dim)?;
        let c0 = self.def("arith.constant 0 : index".into());
        let step = self.def(format!("arith.constant {TILE} : index"));
        let (start, acc, res) = (self.fresh(), self.fresh(), self.fresh());
        self.lines.push(format!(
            "{IND}{res} = scf.for {start} = {c0} to {len} step {step} iter_args({acc} = {acc0}) -> ({out_ty}) {{"
        ));
        let rem = self.def(format!("arith.subi {len}, {start} : index"));
        let tile = self.def(format!("arith.minsi {rem}, {step} : index"));
        self.syms.insert(TILE_SYM.into(), tile.clone());
        let t = Tile {
            start: &start,
            nb_total: &nb_total,
            nb,
        };
        let body = self.hash_tile(v, &s, &t);
        self.syms.remove(TILE_SYM);
        let (bk, bk_ty) = body?;
        let b = self.mixed(v, &s.batch)?;
        let up = self.def(format!(
            "tensor.insert_slice {bk} into {acc}[0, 0, 0, {start}] [{b}, {}, {}, {tile}] [1, 1, 1, 1] : {bk_ty} into {out_ty}",
            s.heads, s.rounds
        ));
        self.lines.push(format!("{IND}  scf.yield {up} : {out_ty}"));
        self.lines.push(format!("{IND}}}"));
        Ok(self.alias(&res, &out_ty))
    }

    /// Checks the operand types and attributes against each other.
    fn hash_shape(&self, v: ValueId) -> Result<HashShape, MlirError> {
        let node = self.g.node(v);
        let bad = |r: &str| MlirError::invalid(self.g, v, r.to_string());
        let op = &node.op;
        let heads = op.int("heads").filter(|&h| h > 0).ok_or_else(|| bad("bad `heads`"))? as u64;
        let rounds = op
            .int("n_hashes")
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("bad `n_hashes`"))? as u64;
        let factors: Vec<u64> = op
            .ints("buckets")
            .unwrap_or(&[])
            .iter()
            .map(|&f| u64::try_from(f).ok().filter(|f| *f > 0 && f % 2 == 0))
            .collect::<Option<_>>()
            .filter(|f: &Vec<u64>| !f.is_empty())
            .ok_or_else(|| bad("every bucket factor must be positive and even"))?;
        let qk = self.g.ty(node.inputs[0]);
        let rot = self.g.ty(node.inputs[1]);
        if qk.rank() != 3 || !qk.dtype.is_float() || rot.dtype != qk.dtype {
            return Err(bad("query/keys must be a float [B,L,H*d] of the rotations' dtype"));
        }
        let Some(width) = qk.shape[2].as_const().filter(|w| w % heads == 0) else {
            return Err(bad("the width must be a constant multiple of `heads`"));
        };
        let head_dim = width / heads;
        let half: u64 = factors.iter().sum::<u64>() / 2;
        let want = [heads, head_dim, rounds, half].map(Dim::Const);
        if rot.shape != want {
            return Err(bad("rotations must be [H, d, n_hashes, sum(buckets)/2]"));
        }
        if let Some(&m) = node.inputs.get(2) {
            let mt = self.g.ty(m);
            if mt.shape[..] != qk.shape[..2] || mt.dtype.is_float() {
                return Err(bad("the mask must be an integer or bool [B, L]"));
            }
        }
        Ok(HashShape {
            heads,
            head_dim,
            rounds,
            half,
            factors,
            batch: qk.shape[0].clone(),
            float: qk.dtype,
        })
    }

    /// The offset between rounds (`i64`): `nb`, plus one padding bucket when
    /// the mask has a zero anywhere.
    fn bucket_stride(
        &mut self,
        v: ValueId,
        mask: Option<ValueId>,
        nb: u64,
    ) -> Result<String, MlirError> {
        let nbc = self.def(format!("arith.constant {nb} : i64"));
        let Some(m) = mask else { return Ok(nbc) };
        let mt = self.g.ty(m).clone();
        let zero = self.init(v, &[], DType::I64, Some(0.0))?;
        let ins = [Operand {
            name: format!("%v{}", m.0),
            ty: tensor_ty(&mt),
            map: Self::identity(2),
        }];
        let out = Operand {
            name: zero,
            ty: "tensor<i64>".into(),
            map: vec![],
        };
        let md = mt.dtype;
        let any = self.generic(&ins, out, &["reduction", "reduction"], "i64", |b, a| {
            // `0 : i1` rather than `Body::constant`: `false : i1` does not parse.
            let z = b.def(format!("arith.constant 0 : {}", elt(md)));
            let is0 = b.def(format!("arith.cmpi eq, {}, {z} : {}", a[0], elt(md)));
            let e = b.def(format!("arith.extui {is0} : i1 to i64"));
            b.def(format!("arith.maxui {}, {e} : i64", a[1]))
        });
        let flag = self.def(format!("tensor.extract {any}[] : tensor<i64>"));
        Ok(self.def(format!("arith.addi {nbc}, {flag} : i64")))
    }

    /// The bucket ids `[B,H,r,T]` of the tile at `t.start` (length bound to
    /// [`TILE_SYM`]), with its type.
    fn hash_tile(
        &mut self,
        v: ValueId,
        s: &HashShape,
        t: &Tile,
    ) -> Result<(String, String), MlirError> {
        let node = self.g.node(v);
        let (qk, rot, mask) = (node.inputs[0], node.inputs[1], node.inputs.get(2).copied());
        let tile = Dim::sym(TILE_SYM);
        let f = s.float;
        let (h, r) = (Dim::Const(s.heads), Dim::Const(s.rounds));
        let b = self.mixed(v, &s.batch)?;
        let tl = self.mixed(v, &tile)?;
        let width = s.heads * s.head_dim;
        let qk_ty = tensor_ty(self.g.ty(qk));
        let x_ty = tensor_of(&[s.batch.clone(), tile.clone(), Dim::Const(width)], f);
        let x = self.def(format!(
            "tensor.extract_slice %v{}[0, {}, 0] [{b}, {tl}, {width}] [1, 1, 1] : {qk_ty} to {x_ty}",
            qk.0, t.start
        ));
        let x4_shape = [
            s.batch.clone(),
            tile.clone(),
            h.clone(),
            Dim::Const(s.head_dim),
        ];
        let x4_ty = tensor_of(&x4_shape, f);
        let x4 = self.def(format!(
            "tensor.expand_shape {x} [[0], [1], [2, 3]] output_shape [{b}, {tl}, {}, {}] : {x_ty} into {x4_ty}",
            s.heads, s.head_dim
        ));
        // rotated[b, h, r, t, j] = sum_k x[b, t, h, k] * R[h, k, r, j].
        let rot_shape = [
            s.batch.clone(),
            h.clone(),
            r.clone(),
            tile.clone(),
            Dim::Const(s.half),
        ];
        let rot_ty = tensor_of(&rot_shape, f);
        let zero = self.init(v, &rot_shape, f, Some(0.0))?;
        let ins = [
            Operand {
                name: x4,
                ty: x4_ty,
                map: ["d0", "d3", "d1", "d5"].map(String::from).to_vec(),
            },
            Operand {
                name: format!("%v{}", rot.0),
                ty: tensor_ty(self.g.ty(rot)),
                map: ["d1", "d5", "d2", "d4"].map(String::from).to_vec(),
            },
        ];
        let out = Operand {
            name: zero,
            ty: rot_ty.clone(),
            map: Self::identity(5),
        };
        let mut iters = vec!["parallel"; 5];
        iters.push("reduction");
        let ft = elt(f);
        let rotated = self.generic(&ins, out, &iters, ft, |b, a| {
            b.def(format!("math.fma {}, {}, {} : {ft}", a[0], a[1], a[2]))
        });
        let bk_shape = [s.batch.clone(), h, r, tile.clone()];
        let mut digits = Vec::new();
        let mut offset = 0;
        for &fac in &s.factors {
            let half = fac / 2;
            let piece_shape = [
                s.batch.clone(),
                Dim::Const(s.heads),
                Dim::Const(s.rounds),
                tile.clone(),
                Dim::Const(half),
            ];
            let piece_ty = tensor_of(&piece_shape, f);
            let piece = self.def(format!(
                "tensor.extract_slice {rotated}[0, 0, 0, 0, {offset}] [{b}, {}, {}, {tl}, {half}] [1, 1, 1, 1, 1] : {rot_ty} to {piece_ty}",
                s.heads, s.rounds
            ));
            digits.push((self.first_max_both(v, &piece, &piece_ty, &bk_shape, f)?, half));
            offset += half;
        }
        let m = match mask {
            Some(m) => {
                let mt = self.g.ty(m).clone();
                let sl_ty = tensor_of(&[s.batch.clone(), tile.clone()], mt.dtype);
                let sl = self.def(format!(
                    "tensor.extract_slice %v{}[0, {}] [{b}, {tl}] [1, 1] : {} to {sl_ty}",
                    m.0,
                    t.start,
                    tensor_ty(&mt)
                ));
                Some((sl, sl_ty, mt.dtype))
            }
            None => None,
        };
        let bk = self.combine_digits(v, &digits, m, &bk_shape, f, t)?;
        Ok((bk, tensor_of(&bk_shape, DType::I64)))
    }

    /// The maxima of `y` and of `-y` over the last axis of `piece`, each with
    /// the lowest index holding it: four tensors of `shape` (max y, its
    /// index, max -y, its index).
    fn first_max_both(
        &mut self,
        v: ValueId,
        piece: &str,
        piece_ty: &str,
        shape: &[Dim],
        f: DType,
    ) -> Result<[String; 4], MlirError> {
        let mut outs = Vec::new();
        for (d, fill) in [
            (f, f64::NEG_INFINITY),
            (DType::I64, 0.0),
            (f, f64::NEG_INFINITY),
            (DType::I64, 0.0),
        ] {
            outs.push((self.init(v, shape, d, Some(fill))?, tensor_of(shape, d)));
        }
        let ft = elt(f);
        let map4 = "affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2, d3)>";
        let map5 = "affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2, d3, d4)>";
        let r = self.fresh();
        let names: Vec<&str> = outs.iter().map(|o| o.0.as_str()).collect();
        let tys: Vec<&str> = outs.iter().map(|o| o.1.as_str()).collect();
        self.lines.push(format!(
            "{IND}{r}:4 = linalg.generic {{indexing_maps = [{map5}, {map4}, {map4}, {map4}, {map4}], iterator_types = [\"parallel\", \"parallel\", \"parallel\", \"parallel\", \"reduction\"]}} ins({piece} : {piece_ty}) outs({} : {}) {{",
            names.join(", "),
            tys.join(", ")
        ));
        let a: Vec<String> = (0..5).map(|_| self.fresh()).collect();
        self.lines.push(format!(
            "{IND}^bb0({}: {ft}, {}: {ft}, {}: i64, {}: {ft}, {}: i64):",
            a[0], a[1], a[2], a[3], a[4]
        ));
        let mut b = Body {
            lines: &mut self.lines,
            counter: &mut self.counter,
            indent: BODY_IND,
        };
        let j = b.def("linalg.index 4 : index".into());
        let j = b.def(format!("arith.index_cast {j} : index to i64"));
        let (m1, i1) = first_max_step(&mut b, &a[0], &j, &a[1], &a[2], ft);
        let neg = b.def(format!("arith.negf {} : {ft}", a[0]));
        let (m2, i2) = first_max_step(&mut b, &neg, &j, &a[3], &a[4], ft);
        self.lines.push(format!(
            "{BODY_IND}linalg.yield {m1}, {i1}, {m2}, {i2} : {ft}, i64, {ft}, i64"
        ));
        self.lines
            .push(format!("{IND}}} -> ({})", tys.join(", ")));
        Ok([0, 1, 2, 3].map(|i| format!("{r}#{i}")))
    }

    /// The bucket ids of a tile from its factors' maxima: digit `ix` when
    /// `max y >= max -y` (the `y` half comes first in `concat(y, -y)`), else
    /// `f/2 + ix'`; masked positions take bucket `nb`; round `i` adds `i *
    /// nb_total`.
    fn combine_digits(
        &mut self,
        v: ValueId,
        digits: &[([String; 4], u64)],
        mask: Option<(String, String, DType)>,
        shape: &[Dim],
        f: DType,
        t: &Tile,
    ) -> Result<String, MlirError> {
        let mut ins = Vec::new();
        for (d, _) in digits {
            for (i, name) in d.iter().enumerate() {
                let dt = if i % 2 == 0 { f } else { DType::I64 };
                ins.push(Operand {
                    name: name.clone(),
                    ty: tensor_of(shape, dt),
                    map: Self::identity(4),
                });
            }
        }
        let md = mask.as_ref().map(|m| m.2);
        if let Some((name, ty, _)) = mask {
            ins.push(Operand {
                name,
                ty,
                map: vec!["d0".into(), "d3".into()],
            });
        }
        let init = self.init(v, shape, DType::I64, None)?;
        let ty = tensor_of(shape, DType::I64);
        let out = Operand {
            name: init,
            ty,
            map: Self::identity(4),
        };
        let halves: Vec<u64> = digits.iter().map(|d| d.1).collect();
        let ft = elt(f);
        let nb_total = t.nb_total.to_string();
        let nb = t.nb;
        Ok(self.generic(&ins, out, &["parallel"; 4], "i64", |b, a| {
            let mut bucket = b.def("arith.constant 0 : i64".into());
            let mut place = 1u64;
            for (k, half) in halves.iter().enumerate() {
                let x = &a[4 * k..4 * k + 4];
                let pos = b.def(format!("arith.cmpf oge, {}, {} : {ft}", x[0], x[2]));
                let hc = b.def(format!("arith.constant {half} : i64"));
                let neg = b.def(format!("arith.addi {}, {hc} : i64", x[3]));
                let digit = b.def(format!("arith.select {pos}, {}, {neg} : i64", x[1]));
                let pc = b.def(format!("arith.constant {place} : i64"));
                let term = b.def(format!("arith.muli {digit}, {pc} : i64"));
                bucket = b.def(format!("arith.addi {bucket}, {term} : i64"));
                place *= 2 * half;
            }
            if let Some(md) = md {
                let m = &a[4 * halves.len()];
                let z = b.def(format!("arith.constant 0 : {}", elt(md)));
                let masked = b.def(format!("arith.cmpi eq, {m}, {z} : {}", elt(md)));
                let pad = b.def(format!("arith.constant {nb} : i64"));
                bucket = b.def(format!("arith.select {masked}, {pad}, {bucket} : i64"));
            }
            let round = b.def("linalg.index 2 : index".into());
            let round = b.def(format!("arith.index_cast {round} : index to i64"));
            let off = b.def(format!("arith.muli {round}, {nb_total} : i64"));
            b.def(format!("arith.addi {bucket}, {off} : i64"))
        }))
    }
}

/// One step of a first-maximum reduction: `(y, j)` replaces `(best, at)`
/// when `y > best`, or `y == best` at a lower index.
fn first_max_step(
    b: &mut Body,
    y: &str,
    j: &str,
    best: &str,
    at: &str,
    ft: &str,
) -> (String, String) {
    let gt = b.def(format!("arith.cmpf ogt, {y}, {best} : {ft}"));
    let eq = b.def(format!("arith.cmpf oeq, {y}, {best} : {ft}"));
    let lower = b.def(format!("arith.cmpi slt, {j}, {at} : i64"));
    let tie = b.def(format!("arith.andi {eq}, {lower} : i1"));
    let take = b.def(format!("arith.ori {gt}, {tie} : i1"));
    let m = b.def(format!("arith.select {take}, {y}, {best} : {ft}"));
    let i = b.def(format!("arith.select {take}, {j}, {at} : i64"));
    (m, i)
}
