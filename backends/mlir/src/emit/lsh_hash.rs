//! `lsh_hash`: angular LSH bucket ids with round offsets, `i64[B,H,r,L]`.
//!
//! Per tile of positions (an `scf.for` over the length, so that the rotated
//! vectors `[B,H,r,T,S/2]` never exist for the whole sequence: with the
//! usual `S ~ 2L/chunk` buckets they would be quadratic in L):
//! 1. `rotated = x . R` as a `linalg.generic` contraction whose body is
//!    `mulf` + `addf` with `fastmath<contract>`: IREE recognises only that
//!    body as a contraction (with `math.fma` its llvm-cpu code was 10x
//!    slower), and LLVM fuses the pair into one FMA where the host has it,
//!    which is how the interpreter's matrix product (matrixmultiply's FMA
//!    kernel, accumulating over the head dimension in order from zero)
//!    rounds, so that the argmax sees the same values;
//! 2. one parallel kernel over `[B,H,r,T]` whose body walks, per bucket
//!    factor `f`, the `2 * f/2` values of `concat(y, -y)` in an `scf.for`
//!    (reading `rotated` with `tensor.extract`) and keeps the first maximum
//!    with a strict `>` exactly as the interpreter does; the digits combine
//!    first factor least significant, masked positions take the padding
//!    bucket, and round `i` adds `i * (n + padding)`. A kernel rather than a
//!    `linalg` reduction: no reduction order can change which of equal values
//!    wins, and IREE's Vulkan path rejected a multi-result argmax reduction
//!    with dynamic sizes.
//!
//! Whether there is a padding bucket depends on the mask's data (any zero in
//! the whole batch, as in HF), so it is one reduction before the loop.

use super::{tensor_of, tensor_ty, Emitter, Operand, IND};
use crate::scalar::{elt, Body};
use crate::MlirError;
use reformc_ir::{DType, Dim, ValueId};

/// Rotated values per batch row and loop iteration that the tile length
/// aims at (16 MiB of `f32`): large tiles keep the loop's trip count (one
/// round of dispatches per iteration in IREE) low, the bound keeps the
/// intermediate far below the quadratic whole.
const TILE_VALUES: u64 = 1 << 22;

/// The tile length: a power of two in `[32, 1024]` near
/// `TILE_VALUES / (H * r * S/2)`.
fn tile_len(heads: u64, rounds: u64, half: u64) -> u64 {
    let per_pos = heads.saturating_mul(rounds).saturating_mul(half).max(1);
    let t = (TILE_VALUES / per_pos).clamp(32, 1024);
    1 << (63 - t.leading_zeros())
}

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
        let step = tile_len(s.heads, s.rounds, s.half);
        let step = self.def(format!("arith.constant {step} : index"));
        let (start, acc, res) = (self.fresh(), self.fresh(), self.fresh());
        self.stage("tiles");
        self.lines.push(format!(
            "{IND}{res} = scf.for {start} = {c0} to {len} step {step} iter_args({acc} = {acc0}) -> ({out_ty}) {{"
        ));
        self.restart_stage("rotate");
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
        self.end_branch();
        self.lines.push(format!("{IND}  scf.yield {up} : {out_ty}"));
        self.lines.push(format!("{IND}}}"));
        Ok(self.alias(&res, &out_ty))
    }

    /// Checks the operand types and attributes against each other.
    fn hash_shape(&self, v: ValueId) -> Result<HashShape, MlirError> {
        let node = self.g.node(v);
        let bad = |r: &str| MlirError::invalid(self.g, v, r.to_string());
        let op = &node.op;
        let heads = op
            .int("heads")
            .filter(|&h| h > 0)
            .ok_or_else(|| bad("bad `heads`"))? as u64;
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
            return Err(bad(
                "query/keys must be a float [B,L,H*d] of the rotations' dtype",
            ));
        }
        let Some(width) = qk.shape[2].as_const().filter(|w| w % heads == 0) else {
            return Err(bad("the width must be a constant multiple of `heads`"));
        };
        let head_dim = width / heads;
        // Bucket ids up to `rounds * (nb + 1)` must fit an i64 (and then the
        // sum of the factors cannot overflow either: each factor is >= 2).
        let ids = factors
            .iter()
            .try_fold(1u64, |a, &f| a.checked_mul(f))
            .and_then(|nb| nb.checked_add(1)?.checked_mul(rounds));
        if ids.is_none_or(|n| n >= 1 << 62) {
            return Err(bad("too many buckets"));
        }
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
        // rotated[b, h, r, t, j] = sum_k x[b, t, h, k] * R[h, k, r, j], loops
        // (b, h, r, t, k, j): the reduction before the innermost `j`, so that
        // loop lowering gives contiguous, independent accumulations that
        // vectorize while each output still sums over k in order.
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
                map: ["d0", "d3", "d1", "d4"].map(String::from).to_vec(),
            },
            Operand {
                name: format!("%v{}", rot.0),
                ty: tensor_ty(self.g.ty(rot)),
                map: ["d1", "d4", "d2", "d5"].map(String::from).to_vec(),
            },
        ];
        let out = Operand {
            name: zero,
            ty: rot_ty.clone(),
            map: ["d0", "d1", "d2", "d3", "d5"].map(String::from).to_vec(),
        };
        let mut iters = vec!["parallel"; 6];
        iters[4] = "reduction";
        let ft = elt(f);
        let call =
            (self.own_pipeline && f == DType::F32).then_some(crate::library_calls::LSH_ROTATE);
        let rotated = self.generic_call(&ins, out, &iters, ft, call, |b, a| {
            let p = b.def(format!(
                "arith.mulf {}, {} fastmath<contract> : {ft}",
                a[0], a[1]
            ));
            b.def(format!(
                "arith.addf {}, {p} fastmath<contract> : {ft}",
                a[2]
            ))
        });
        self.stage("argmax");
        let bk_shape = [s.batch.clone(), h, r, tile.clone()];
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
        let bk = self.bucket_ids(v, s, (&rotated, &rot_ty), m, &bk_shape, t)?;
        Ok((bk, tensor_of(&bk_shape, DType::I64)))
    }

    /// The bucket ids `[B,H,r,T]` from the rotated tile: per position, for
    /// each factor, an `scf.for` over `concat(y, -y)` keeping the first
    /// maximum (strict `>`, as the interpreter), the digits combined first
    /// factor least significant; masked positions take bucket `nb`; round `i`
    /// adds `i * nb_total`. A parallel kernel reading `rotated` with
    /// `tensor.extract`, so that no reduction order can change which of equal
    /// values wins.
    fn bucket_ids(
        &mut self,
        v: ValueId,
        s: &HashShape,
        (rotated, rot_ty): (&str, &str),
        mask: Option<(String, String, DType)>,
        shape: &[Dim],
        t: &Tile,
    ) -> Result<String, MlirError> {
        let md = mask.as_ref().map(|m| m.2);
        let ins: Vec<Operand> = mask
            .into_iter()
            .map(|(name, ty, _)| Operand {
                name,
                ty,
                map: vec!["d0".into(), "d3".into()],
            })
            .collect();
        let init = self.init(v, shape, DType::I64, None)?;
        let out = Operand {
            name: init,
            ty: tensor_of(shape, DType::I64),
            map: Self::identity(4),
        };
        let ft = elt(s.float);
        let (factors, nb, nb_total) = (s.factors.clone(), t.nb, t.nb_total.to_string());
        let (rotated, rot_ty) = (rotated.to_string(), rot_ty.to_string());
        Ok(self.generic(&ins, out, &["parallel"; 4], "i64", |b, a| {
            let idx: Vec<String> = (0..4)
                .map(|i| b.def(format!("linalg.index {i} : index")))
                .collect();
            let mut bucket = b.def("arith.constant 0 : i64".into());
            let (mut place, mut offset) = (1u64, 0u64);
            for &f in &factors {
                let at = first_max(b, &rotated, &rot_ty, &idx, offset, f, ft);
                let pc = b.def(format!("arith.constant {place} : i64"));
                let term = b.def(format!("arith.muli {at}, {pc} : i64"));
                bucket = b.def(format!("arith.addi {bucket}, {term} : i64"));
                place *= f;
                offset += f / 2;
            }
            if let Some(md) = md {
                let z = b.def(format!("arith.constant 0 : {}", elt(md)));
                let masked = b.def(format!("arith.cmpi eq, {}, {z} : {}", a[0], elt(md)));
                let pad = b.def(format!("arith.constant {nb} : i64"));
                bucket = b.def(format!("arith.select {masked}, {pad}, {bucket} : i64"));
            }
            let round = b.def(format!("arith.index_cast {} : index to i64", idx[2]));
            let off = b.def(format!("arith.muli {round}, {nb_total} : i64"));
            b.def(format!("arith.addi {bucket}, {off} : i64"))
        }))
    }
}

/// The index (`i64`) of the first maximum of `concat(y, -y)`, `y` the `f/2`
/// rotated coordinates from `offset` at position `idx` (an `scf.for` in a
/// kernel body; a NaN never wins, and index 0 wins when nothing beats -inf).
/// The loop carries an `index`, not an `i64`: IREE's Vulkan target emulates
/// `i64` but not in `scf.for` iteration arguments.
fn first_max(
    b: &mut Body,
    rotated: &str,
    rot_ty: &str,
    idx: &[String],
    offset: u64,
    f: u64,
    ft: &str,
) -> String {
    let lit = |x: f64| match ft {
        "f64" => format!("0x{:016X}", x.to_bits()),
        _ => format!("0x{:08X}", (x as f32).to_bits()),
    };
    let c0 = b.def("arith.constant 0 : index".into());
    let c1 = b.def("arith.constant 1 : index".into());
    let cf = b.def(format!("arith.constant {f} : index"));
    let ch = b.def(format!("arith.constant {} : index", f / 2));
    let co = b.def(format!("arith.constant {offset} : index"));
    let ninf = b.def(format!("arith.constant {} : {ft}", lit(f64::NEG_INFINITY)));
    let r = format!("%t{}", *b.counter);
    let (i, best, at) = (
        format!("%t{}", *b.counter + 1),
        format!("%t{}", *b.counter + 2),
        format!("%t{}", *b.counter + 3),
    );
    *b.counter += 4;
    b.lines.push(format!(
        "{}{r}:2 = scf.for {i} = {c0} to {cf} step {c1} iter_args({best} = {ninf}, {at} = {c0}) -> ({ft}, index) {{",
        b.indent
    ));
    let lower = b.def(format!("arith.cmpi ult, {i}, {ch} : index"));
    let back = b.def(format!("arith.subi {i}, {ch} : index"));
    let j = b.def(format!("arith.select {lower}, {i}, {back} : index"));
    let col = b.def(format!("arith.addi {j}, {co} : index"));
    let y = b.def(format!(
        "tensor.extract {rotated}[{}, {}, {}, {}, {col}] : {rot_ty}",
        idx[0], idx[1], idx[2], idx[3]
    ));
    let ny = b.def(format!("arith.negf {y} : {ft}"));
    let x = b.def(format!("arith.select {lower}, {y}, {ny} : {ft}"));
    let gt = b.def(format!("arith.cmpf ogt, {x}, {best} : {ft}"));
    let nb = b.def(format!("arith.select {gt}, {x}, {best} : {ft}"));
    let na = b.def(format!("arith.select {gt}, {i}, {at} : index"));
    b.lines
        .push(format!("{}  scf.yield {nb}, {na} : {ft}, index", b.indent));
    b.lines.push(format!("{}}}", b.indent));
    b.def(format!("arith.index_cast {r}#1 : index to i64"))
}
