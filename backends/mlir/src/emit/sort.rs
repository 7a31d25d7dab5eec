//! Sorting in upstream ops: a bitonic network of `linalg.generic` stages.
//!
//! Upstream linalg has no sort. [`Emitter::sort_perm`] sorts a permutation
//! tensor instead of the keys: it starts from the identity (padded to a power
//! of two `P`) and runs the bitonic network on it, each compare-exchange stage
//! one `linalg.generic` over the output index whose body reads its own slot and
//! its partner slot (`i xor j`) from the stage's input with `tensor.extract`
//! and the two keys through them. Comparing `(key, position)` pairs makes every
//! comparison strict, so the network's result is the stable order; padding
//! slots (positions `>= n`) compare above every real one. The stages run in an
//! `scf.while` over `(k, j)` carrying the tensor, at function level (the form
//! DESIGN.md §8 records as running on IREE llvm-cpu and Vulkan).
//! Work: `P log2(P) (log2(P) + 1) / 2` element updates per row, `P < 2n`.

use super::{Emitter, Operand};
use crate::scalar::elt;
use crate::MlirError;
use reformc_ir::{DType, Dim, ValueId};

/// One size of a tensor built by these lowerings: a constant or an SSA `index` value.
#[derive(Clone, Debug)]
pub(super) enum Sz {
    /// Known when the module is emitted.
    Const(u64),
    /// Read at run time, held by an SSA `index` value.
    Dyn(String),
}

/// A tensor shape whose dynamic sizes are SSA values.
#[derive(Clone, Debug)]
pub(super) struct Shp(pub(super) Vec<Sz>);

impl Shp {
    /// The MLIR tensor type of this shape with element type `e`.
    pub(super) fn ty(&self, e: &str) -> String {
        let mut s = String::from("tensor<");
        for d in &self.0 {
            match d {
                Sz::Const(c) => s.push_str(&c.to_string()),
                Sz::Dyn(_) => s.push('?'),
            }
            s.push('x');
        }
        s.push_str(e);
        s.push('>');
        s
    }

    /// The dynamic sizes, comma separated (operands of `tensor.empty`).
    pub(super) fn dyn_list(&self) -> String {
        let dyns: Vec<&str> = self
            .0
            .iter()
            .filter_map(|d| match d {
                Sz::Dyn(s) => Some(s.as_str()),
                Sz::Const(_) => None,
            })
            .collect();
        dyns.join(", ")
    }

    /// Every size as it appears in a mixed static/dynamic list.
    pub(super) fn mixed_list(&self) -> String {
        self.mixed().join(", ")
    }

    /// Every size: a constant, or the SSA name of its `index` value.
    pub(super) fn mixed(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|d| match d {
                Sz::Const(c) => c.to_string(),
                Sz::Dyn(s) => s.clone(),
            })
            .collect()
    }

    /// This shape with axis `axis` replaced by `sz`.
    pub(super) fn with(&self, axis: usize, sz: Sz) -> Shp {
        let mut s = self.clone();
        s.0[axis] = sz;
        s
    }

    /// The rank.
    pub(super) fn rank(&self) -> usize {
        self.0.len()
    }
}

/// An operand of a `linalg.generic` read through the loop indices `map`.
pub(super) fn operand(name: &str, ty: &str, map: &[&str]) -> Operand {
    Operand {
        name: name.to_string(),
        ty: ty.to_string(),
        map: map.iter().map(|m| m.to_string()).collect(),
    }
}

/// The identity map over `rank` loops, as `&str`s for [`operand`].
pub(super) fn ident(rank: usize) -> Vec<&'static str> {
    ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"][..rank].to_vec()
}

/// The `linalg.index` lines of loops `0..rank` inside a body, as SSA names.
pub(super) fn loop_indices(b: &mut crate::scalar::Body, rank: usize) -> Vec<String> {
    (0..rank)
        .map(|i| b.def(format!("linalg.index {i} : index")))
        .collect()
}

impl Emitter<'_> {
    /// The shape of value `x` with its symbolic sizes as SSA values (read with
    /// `tensor.dim` when no argument bound the symbol).
    pub(super) fn shp_of(&mut self, x: ValueId) -> Shp {
        let t = self.g.ty(x).clone();
        let mut dims = Vec::new();
        for (i, d) in t.shape.iter().enumerate() {
            dims.push(match d {
                Dim::Const(c) => Sz::Const(*c),
                Dim::Sym(s) => match self.syms.get(s) {
                    Some(n) => Sz::Dyn(n.clone()),
                    None => {
                        let c = self.def(format!("arith.constant {i} : index"));
                        let ty = super::tensor_ty(&t);
                        Sz::Dyn(self.def(format!("tensor.dim %v{}, {c} : {ty}", x.0)))
                    }
                },
            });
        }
        Shp(dims)
    }

    /// An `index` constant.
    pub(super) fn idx_const(&mut self, n: u64) -> String {
        self.def(format!("arith.constant {n} : index"))
    }

    /// A size as an SSA `index` value.
    pub(super) fn sz_val(&mut self, s: &Sz) -> String {
        match s {
            Sz::Const(c) => self.idx_const(*c),
            Sz::Dyn(n) => n.clone(),
        }
    }

    /// `tensor.empty` of shape `s` and element type `e`.
    pub(super) fn shp_empty(&mut self, s: &Shp, e: &str) -> String {
        self.def(format!("tensor.empty({}) : {}", s.dyn_list(), s.ty(e)))
    }

    /// `tensor.empty` of shape `s` filled with the literal `x` of type `e`.
    pub(super) fn shp_filled(&mut self, s: &Shp, e: &str, x: &str) -> String {
        let init = self.shp_empty(s, e);
        let c = self.def(format!("arith.constant {x} : {e}"));
        let ty = s.ty(e);
        self.def(format!(
            "linalg.fill ins({c} : {e}) outs({init} : {ty}) -> {ty}"
        ))
    }

    /// `argsort(x) {axis}`: the stable ascending permutation along `axis`,
    /// ordered as the interpreter's `total_cmp` on the values.
    pub(super) fn argsort(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let axis = self.axis(v, "axis", x_ty.rank())?;
        let s = self.shp_of(x);
        let keys = self.sortable_keys(&format!("%v{}", x.0), &s, x_ty.dtype);
        let perm = self.sort_perm(&keys, &s, axis);
        Ok(self.alias(&perm, &super::tensor_ty(&node.ty)))
    }

    /// `x` (of dtype `d`, shape `s`) mapped to `i64` keys in the same order:
    /// integers widened, floats as the bit pattern ordered like IEEE
    /// `totalOrder` (negative values have their magnitude bits flipped).
    pub(super) fn sortable_keys(&mut self, x: &str, s: &Shp, d: DType) -> String {
        if d == DType::I64 {
            return x.to_string();
        }
        let rank = s.rank();
        let init = self.shp_empty(s, "i64");
        let ins = [operand(x, &s.ty(elt(d)), &ident(rank))];
        let out = operand(&init, &s.ty("i64"), &ident(rank));
        let iters = vec!["parallel"; rank];
        self.generic(&ins, out, &iters, "i64", |b, a| match d {
            DType::I64 => a[0].clone(),
            DType::I32 => b.def(format!("arith.extsi {} : i32 to i64", a[0])),
            DType::Bool => b.def(format!("arith.extui {} : i1 to i64", a[0])),
            DType::F32 | DType::F64 => {
                let (it, bits) = if d == DType::F32 {
                    ("i32", 31)
                } else {
                    ("i64", 63)
                };
                let i = b.def(format!("arith.bitcast {} : {} to {it}", a[0], elt(d)));
                let sh = b.def(format!("arith.constant {bits} : {it}"));
                let one = b.def(format!("arith.constant 1 : {it}"));
                let sign = b.def(format!("arith.shrsi {i}, {sh} : {it}"));
                let flip = b.def(format!("arith.shrui {sign}, {one} : {it}"));
                let k = b.def(format!("arith.xori {i}, {flip} : {it}"));
                if it == "i64" {
                    k
                } else {
                    b.def(format!("arith.extsi {k} : i32 to i64"))
                }
            }
        })
    }

    /// The permutation (`i64`, shape `s`) that sorts the `i64` tensor `keys`
    /// (shape `s`) ascending along `axis`, equal keys in position order.
    pub(super) fn sort_perm(&mut self, keys: &str, s: &Shp, axis: usize) -> String {
        let net = self.sort_network(s, axis);
        let rank = s.rank();
        let init = self.shp_empty(&net.ps, "i64");
        let out = operand(&init, &net.pty, &ident(rank));
        let iters = vec!["parallel"; rank];
        let iota = self.generic(&[], out, &iters, "i64", |b, _| {
            let i = b.def(format!("linalg.index {axis} : index"));
            b.def(format!("arith.index_cast {i} : index to i64"))
        });
        let n64 = self.def(format!("arith.index_cast {} : index to i64", net.n));
        let one = self.idx_const(1);
        let last = self.def(format!("arith.subi {}, {one} : index", net.n));
        let order = Order::ByKeys(Cmp {
            keys: keys.to_string(),
            kty: s.ty("i64"),
            n64,
            last,
        });
        let sorted = self.bitonic_network(&net, &iota, &order);
        self.unpadded(&sorted, &net, s)
    }

    /// The `i64` tensor `x` (shape `s`) sorted ascending along `axis`: the
    /// same network on the values themselves, so that a stage reads two
    /// values and compares them, with no key gathered through an index.
    /// Callers that need a stable argsort pack `key << 32 | position` into
    /// each value (keys in i32's range, positions below `2^32`) and unpack
    /// the low half ([`Self::packed_sort_perm`]).
    pub(super) fn sort_values(&mut self, x: &str, s: &Shp, axis: usize) -> String {
        let net = self.sort_network(s, axis);
        let rank = s.rank();
        let (n, xty) = (net.n.clone(), s.ty("i64"));
        let init = self.shp_empty(&net.ps, "i64");
        let out = operand(&init, &net.pty, &ident(rank));
        let iters = vec!["parallel"; rank];
        // Padding slots hold the largest i64, so they sort last.
        let padded = self.generic(&[], out, &iters, "i64", |b, _| {
            let mut idx = loop_indices(b, rank);
            let i = idx[axis].clone();
            let one = b.def("arith.constant 1 : index".into());
            let last = b.def(format!("arith.subi {n}, {one} : index"));
            idx[axis] = b.def(format!("arith.minui {i}, {last} : index"));
            let v = b.def(format!("tensor.extract {x}[{}] : {xty}", idx.join(", ")));
            let pad = b.def(format!("arith.cmpi uge, {i}, {n} : index"));
            let max = b.def(format!("arith.constant {} : i64", i64::MAX));
            b.def(format!("arith.select {pad}, {max}, {v} : i64"))
        });
        let sorted = self.bitonic_network(&net, &padded, &Order::Values);
        self.unpadded(&sorted, &net, s)
    }

    /// The stable ascending permutation along `axis` of `keys` (`i64`, shape
    /// `s`, keys in i32's range, the axis shorter than `2^32`), by
    /// [`Self::sort_values`] on `key << 32 | position`: the order of
    /// [`Self::sort_perm`] at the cost of a plain sort.
    pub(super) fn packed_sort_perm(&mut self, keys: &str, s: &Shp, axis: usize) -> String {
        let rank = s.rank();
        let ty = s.ty("i64");
        let init = self.shp_empty(s, "i64");
        let ins = [operand(keys, &ty, &ident(rank))];
        let out = operand(&init, &ty, &ident(rank));
        let iters = vec!["parallel"; rank];
        let packed = self.generic(&ins, out, &iters, "i64", |b, a| {
            let i = b.def(format!("linalg.index {axis} : index"));
            let i = b.def(format!("arith.index_cast {i} : index to i64"));
            pack_key(b, &a[0], &i)
        });
        let sorted = self.sort_values(&packed, s, axis);
        let init = self.shp_empty(s, "i64");
        let ins = [operand(&sorted, &ty, &ident(rank))];
        let out = operand(&init, &ty, &ident(rank));
        self.generic(&ins, out, &iters, "i64", |b, a| {
            let mask = b.def(format!("arith.constant {} : i64", u32::MAX));
            b.def(format!("arith.andi {}, {mask} : i64", a[0]))
        })
    }

    /// The inverse of the stable permutation `perm` that sorts `keys` (both
    /// `i64`, shape `s`, along `axis`; keys in i32's range, the axis shorter
    /// than `2^32`): slot `inv[i]` of entry `i`, found by binary search.
    /// Sorted by (key, position), the entries' packed values `key << 32 |
    /// position` are strictly increasing, so entry `i`'s slot is where its
    /// own packed value lies: `ceil(log2 n)` probes per entry, instead of a
    /// second sort of the whole permutation.
    pub(super) fn inverse_perm(&mut self, keys: &str, perm: &str, s: &Shp, axis: usize) -> String {
        let rank = s.rank();
        let ty = s.ty("i64");
        let iters = vec!["parallel"; rank];
        // The packed values in sorted order.
        let init = self.shp_empty(s, "i64");
        let ins = [operand(perm, &ty, &ident(rank))];
        let out = operand(&init, &ty, &ident(rank));
        let sorted = self.generic(&ins, out, &iters, "i64", |b, a| {
            let mut idx = loop_indices(b, rank);
            idx[axis] = b.def(format!("arith.index_cast {} : i64 to index", a[0]));
            let key = b.def(format!("tensor.extract {keys}[{}] : {ty}", idx.join(", ")));
            pack_key(b, &key, &a[0])
        });
        // Probes: ceil(log2 n).
        let n = self.sz_val(&s.0[axis]);
        let (_, probes) = self.pow2_steps(&n);
        let init = self.shp_empty(s, "i64");
        let ins = [operand(keys, &ty, &ident(rank))];
        let out = operand(&init, &ty, &ident(rank));
        self.generic(&ins, out, &iters, "i64", |b, a| {
            let mut idx = loop_indices(b, rank);
            let i = b.def(format!("arith.index_cast {} : index to i64", idx[axis]));
            let target = pack_key(b, &a[0], &i);
            let (zero, one) = (b.def("arith.constant 0 : index".into()), b.def("arith.constant 1 : index".into()));
            // Branchless lower bound: `base` stays at the last slot whose value
            // is <= the target while the range `len` halves.
            let (it, base, len) = (b.fresh(), b.fresh(), b.fresh());
            let res = b.fresh();
            b.line(format!(
                "{res}:2 = scf.for {it} = {zero} to {probes} step {one} iter_args({base} = {zero}, {len} = {n}) -> (index, index) {{"
            ));
            let half = b.def(format!("arith.shrui {len}, {one} : index"));
            let mid = b.def(format!("arith.addi {base}, {half} : index"));
            idx[axis] = mid.clone();
            let v = b.def(format!("tensor.extract {sorted}[{}] : {ty}", idx.join(", ")));
            let le = b.def(format!("arith.cmpi sle, {v}, {target} : i64"));
            let nb = b.def(format!("arith.select {le}, {mid}, {base} : index"));
            let nl = b.def(format!("arith.subi {len}, {half} : index"));
            b.line(format!("  scf.yield {nb}, {nl} : index, index"));
            b.line("}".to_string());
            b.def(format!("arith.index_cast {res}#0 : index to i64"))
        })
    }

    /// The padded shape of a sort of `s` along `axis` (the length rounded up
    /// to a power of two).
    fn sort_network(&mut self, s: &Shp, axis: usize) -> Network {
        let n = self.sz_val(&s.0[axis]);
        let p = match &s.0[axis] {
            Sz::Const(c) => Sz::Const(c.next_power_of_two().max(1)),
            Sz::Dyn(_) => Sz::Dyn(self.pow2_steps(&n).0),
        };
        let ps = s.with(axis, p.clone());
        let p = self.sz_val(&p);
        let pty = ps.ty("i64");
        Network {
            ps,
            pty,
            p,
            n,
            axis,
        }
    }

    /// The first `s` entries of a padded sort result.
    fn unpadded(&mut self, sorted: &str, net: &Network, s: &Shp) -> String {
        let rank = s.rank();
        let offsets = vec!["0"; rank].join(", ");
        let strides = vec!["1"; rank].join(", ");
        self.def(format!(
            "tensor.extract_slice {sorted}[{offsets}] [{}] [{strides}] : {} to {}",
            s.mixed_list(),
            net.pty,
            s.ty("i64")
        ))
    }

    /// Runs the bitonic network on `init` (shape `net.ps`), each stage
    /// ordering entries as `order` says; returns the sorted padded tensor.
    fn bitonic_network(&mut self, net: &Network, init: &str, order: &Order) -> String {
        let (pty, p) = (net.pty.clone(), net.p.clone());
        let one = self.idx_const(1);
        let two = self.idx_const(2);
        let zero = self.idx_const(0);
        let empty = self.shp_empty(&net.ps, "i64");
        // Two stages per iteration, ping-ponging between two buffers, so that
        // each yielded tensor is the one its iteration argument held (what
        // one-shot bufferization accepts without loop-carried allocations).
        // When the network ends after the first, the second is a copy (j = 0).
        let (res, wk, wj, wa, wb) = (
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
        );
        let sig = format!("(index, index, {pty}, {pty})");
        self.lines.push(format!(
            "    {res}:4 = scf.while ({wk} = {two}, {wj} = {one}, {wa} = {init}, {wb} = {empty}) : {sig} -> {sig} {{"
        ));
        let go = self.def(format!("arith.cmpi ule, {wk}, {p} : index"));
        self.lines.push(format!(
            "    scf.condition({go}) {wk}, {wj}, {wa}, {wb} : index, index, {pty}, {pty}"
        ));
        let (bk, bj, ba, bb) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        self.lines.push(format!(
            "    }} do {{\n    ^bb0({bk}: index, {bj}: index, {ba}: {pty}, {bb}: {pty}):"
        ));
        let s1 = self.bitonic_stage(net, order, &ba, &bb, &bk, &bj, &zero);
        let (k1, j1) = self.sort_next_stage(&bk, &bj, &one, &zero);
        let live = self.def(format!("arith.cmpi ule, {k1}, {p} : index"));
        let j1c = self.def(format!("arith.select {live}, {j1}, {zero} : index"));
        let s2 = self.bitonic_stage(net, order, &s1, &ba, &k1, &j1c, &zero);
        let (k2, j2) = self.sort_next_stage(&k1, &j1, &one, &zero);
        self.lines.push(format!(
            "    scf.yield {k2}, {j2}, {s2}, {s1} : index, index, {pty}, {pty}\n    }}"
        ));
        format!("{res}#2")
    }

    /// The stage after `(k, j)`: `j` halves, and after `j = 1` the next
    /// block size `2k` starts at `j = k`.
    fn sort_next_stage(&mut self, k: &str, j: &str, one: &str, zero: &str) -> (String, String) {
        let jh = self.def(format!("arith.shrui {j}, {one} : index"));
        let done = self.def(format!("arith.cmpi eq, {jh}, {zero} : index"));
        let k2 = self.def(format!("arith.shli {k}, {one} : index"));
        let kn = self.def(format!("arith.select {done}, {k2}, {k} : index"));
        let jn = self.def(format!("arith.select {done}, {k}, {jh} : index"));
        (kn, jn)
    }

    /// The least power of two `>= n` and its exponent `ceil(log2 n)` (1 and 0
    /// for `n <= 1`), both `index`, by doubling in an `scf.while` (no 64-bit
    /// bit counting: IREE's Vulkan path emulates i64).
    fn pow2_steps(&mut self, n: &str) -> (String, String) {
        let (zero, one) = (self.idx_const(0), self.idx_const(1));
        let (r, q, c, q2, c2) = (
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
            self.fresh(),
        );
        self.lines.push(format!(
            "    {r}:2 = scf.while ({q} = {one}, {c} = {zero}) : (index, index) -> (index, index) {{"
        ));
        let lt = self.def(format!("arith.cmpi ult, {q}, {n} : index"));
        self.lines.push(format!(
            "    scf.condition({lt}) {q}, {c} : index, index\n    }} do {{"
        ));
        self.lines
            .push(format!("    ^bb0({q2}: index, {c2}: index):"));
        let d = self.def(format!("arith.shli {q2}, {one} : index"));
        let e = self.def(format!("arith.addi {c2}, {one} : index"));
        self.lines
            .push(format!("    scf.yield {d}, {e} : index, index\n    }}"));
        (format!("{r}#0"), format!("{r}#1"))
    }

    /// One compare-exchange stage `(k, j)` of the network over `src` (shape
    /// `net.ps`): slot `i` and its partner `i xor j` keep the smaller entry
    /// (as `order` compares them) in the lower slot of an ascending block
    /// (`i & k == 0`). The stage writes into `dest`, whose contents it does
    /// not read.
    #[allow(clippy::too_many_arguments)]
    fn bitonic_stage(
        &mut self,
        net: &Network,
        order: &Order,
        src: &str,
        dest: &str,
        k: &str,
        j: &str,
        zero: &str,
    ) -> String {
        let (rank, axis) = (net.ps.rank(), net.axis);
        let pty = net.pty.clone();
        let out = operand(dest, &pty, &ident(rank));
        let iters = vec!["parallel"; rank];
        self.generic(&[], out, &iters, "i64", |b, _| {
            let idx = loop_indices(b, rank);
            let i = &idx[axis];
            let l = b.def(format!("arith.xori {i}, {j} : index"));
            let mut pidx = idx.clone();
            pidx[axis] = l.clone();
            let a = b.def(format!("tensor.extract {src}[{}] : {pty}", idx.join(", ")));
            let p = b.def(format!("tensor.extract {src}[{}] : {pty}", pidx.join(", ")));
            let lt = match order {
                Order::ByKeys(c) => c.less(b, &idx, axis, &a, &p),
                Order::Values => b.def(format!("arith.cmpi slt, {a}, {p} : i64")),
            };
            let upper = b.def(format!("arith.cmpi ugt, {l}, {i} : index"));
            let ik = b.def(format!("arith.andi {i}, {k} : index"));
            let asc = b.def(format!("arith.cmpi eq, {ik}, {zero} : index"));
            let take_min = b.def(format!("arith.cmpi eq, {asc}, {upper} : i1"));
            let mn = b.def(format!("arith.select {lt}, {a}, {p} : i64"));
            let mx = b.def(format!("arith.select {lt}, {p}, {a} : i64"));
            b.def(format!("arith.select {take_min}, {mn}, {mx} : i64"))
        })
    }
}

/// `key << 32 | pos` (`i64`), the key clamped into i32's range (a bucket
/// id always is): packed values order as (key, position) do.
fn pack_key(b: &mut crate::scalar::Body, key: &str, pos: &str) -> String {
    let lo = b.def(format!("arith.constant {} : i64", i32::MIN));
    let hi = b.def(format!("arith.constant {} : i64", i32::MAX));
    let k = b.def(format!("arith.maxsi {key}, {lo} : i64"));
    let k = b.def(format!("arith.minsi {k}, {hi} : i64"));
    let sh = b.def("arith.constant 32 : i64".into());
    let k = b.def(format!("arith.shli {k}, {sh} : i64"));
    b.def(format!("arith.ori {k}, {pos} : i64"))
}

/// The padded shape of one sort: `ps` (the sorted axis `p`, a power of two,
/// long), its tensor type, the unpadded length `n` and the axis.
struct Network {
    ps: Shp,
    pty: String,
    p: String,
    n: String,
    axis: usize,
}

/// How a stage orders two entries.
enum Order {
    /// Entries are permutation indices compared by the keys they point at.
    ByKeys(Cmp),
    /// Entries are the `i64` values themselves.
    Values,
}

/// What a permutation entry is compared by: the keys its entries point at.
struct Cmp {
    keys: String,
    kty: String,
    /// The unpadded length as `i64`: entries `>= n64` are padding.
    n64: String,
    /// `n - 1` as `index`: padding entries read this key (never used).
    last: String,
}

impl Cmp {
    /// `a < b` for permutation entries `a`, `b` (distinct) at the row `idx`:
    /// by key, then by position; padding above everything.
    fn less(
        &self,
        b: &mut crate::scalar::Body,
        idx: &[String],
        axis: usize,
        a: &str,
        p: &str,
    ) -> String {
        let pa = b.def(format!("arith.cmpi sge, {a}, {} : i64", self.n64));
        let pb = b.def(format!("arith.cmpi sge, {p}, {} : i64", self.n64));
        let ka = self.key(b, idx, axis, a);
        let kb = self.key(b, idx, axis, p);
        let klt = b.def(format!("arith.cmpi slt, {ka}, {kb} : i64"));
        let keq = b.def(format!("arith.cmpi eq, {ka}, {kb} : i64"));
        let ilt = b.def(format!("arith.cmpi slt, {a}, {p} : i64"));
        let tie = b.def(format!("arith.andi {keq}, {ilt} : i1"));
        let real = b.def(format!("arith.ori {klt}, {tie} : i1"));
        let real = b.def(format!("arith.ori {pb}, {real} : i1"));
        let both = b.def(format!("arith.andi {pb}, {ilt} : i1"));
        b.def(format!("arith.select {pa}, {both}, {real} : i1"))
    }

    /// The key of permutation entry `e`, clamped into range for padding.
    fn key(&self, b: &mut crate::scalar::Body, idx: &[String], axis: usize, e: &str) -> String {
        let i = b.def(format!("arith.index_cast {e} : i64 to index"));
        let i = b.def(format!("arith.minsi {i}, {} : index", self.last));
        let mut kidx = idx.to_vec();
        kidx[axis] = i;
        b.def(format!(
            "tensor.extract {}[{}] : {}",
            self.keys,
            kidx.join(", "),
            self.kty
        ))
    }
}
