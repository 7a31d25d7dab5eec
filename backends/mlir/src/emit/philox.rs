//! `random_normal`: Philox counter-based samples, keyed like the CPU backend.
//!
//! Element `i` of the (row-major, static) result is sample `i` of
//! `interp::philox::normals(seed, stream, n)`: Philox4x32-10 on the counter
//! `(i / 4 as u64, stream as u64)` with the key `seed`, and a Box-Muller pair
//! from words `(0, 1)` or `(2, 3)` of the block, cosine for even `i` and sine
//! for odd `i`. The integer part uses 32-bit words only (`arith.mului_extended`
//! gives the high and low halves of each product), so that targets without
//! 64-bit integers keep it exact; the float part runs in `f64` like the
//! interpreter and is truncated to the result's type at the end.

use super::{tensor_ty, Emitter, Operand};
use crate::scalar::{elt, Body};
use crate::MlirError;
use reformc_ir::{DType, ValueId};

/// Philox4x32 round multipliers and Weyl key increments (Random123's).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
const ROUNDS: u32 = 10;

/// An `i32` constant from its bit pattern (MLIR prints `i32` literals signed).
fn i32_lit(x: u32) -> String {
    format!("arith.constant {} : i32", x as i32)
}

impl Emitter<'_> {
    /// `random_normal seed {stream}`: one parallel `linalg.generic` over the
    /// result computing the Philox block of each element (four elements share
    /// a block; recomputing it keeps the op a single elementwise kernel).
    pub(super) fn random_normal(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let out_ty = node.ty.clone();
        let seed = node.inputs[0];
        // A non-negative integer, as the interpreter reads it.
        let stream = self.nonneg(v, "stream")?;
        let d = out_ty.dtype;
        if !d.is_float() {
            return Err(MlirError::invalid(self.g, v, "result must be a float"));
        }
        let Some(dims) = out_ty
            .shape
            .iter()
            .map(|x| x.as_const())
            .collect::<Option<Vec<u64>>>()
        else {
            return Err(MlirError::invalid(self.g, v, "result shape must be static"));
        };
        if dims.iter().product::<u64>() > 1 << 32 {
            return Err(MlirError::invalid(self.g, v, "more than 2^32 samples"));
        }
        if self.g.ty(seed).dtype != DType::I64 || self.g.ty(seed).rank() != 0 {
            return Err(MlirError::invalid(self.g, v, "seed must be i64[]"));
        }
        let keys = self.philox_keys(&format!("%v{}", seed.0), tensor_ty(self.g.ty(seed)));
        let rank = dims.len();
        // Row-major strides: the flat index of an element is the sample number.
        let strides: Vec<u64> = (0..rank).map(|i| dims[i + 1..].iter().product()).collect();
        let init = self.init(v, &out_ty.shape, d, None)?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(rank),
        };
        let iters = vec!["parallel"; rank];
        let r = self.generic(&[], out, &iters, elt(d), |b, _| {
            let flat = flat_index(b, &strides);
            let words = philox_block(b, &flat, stream, &keys);
            box_muller(b, &flat, &words, d)
        });
        Ok(self.alias(&r, &ty))
    }

    /// The round keys `(k0 + i*W0, k1 + i*W1)`, `i < 10`, of a seed `i64[]`
    /// tensor, computed once outside the kernel.
    fn philox_keys(&mut self, seed: &str, seed_ty: String) -> Vec<(String, String)> {
        let s = self.def(format!("tensor.extract {seed}[] : {seed_ty}"));
        let c32 = self.def("arith.constant 32 : i64".into());
        let hi = self.def(format!("arith.shrui {s}, {c32} : i64"));
        let k0 = self.def(format!("arith.trunci {s} : i64 to i32"));
        let k1 = self.def(format!("arith.trunci {hi} : i64 to i32"));
        let mut keys = vec![(k0.clone(), k1.clone())];
        for i in 1..ROUNDS {
            let a = self.def(i32_lit(W0.wrapping_mul(i)));
            let b = self.def(i32_lit(W1.wrapping_mul(i)));
            let x = self.def(format!("arith.addi {k0}, {a} : i32"));
            let y = self.def(format!("arith.addi {k1}, {b} : i32"));
            keys.push((x, y));
        }
        keys
    }
}

/// The row-major flat index (`i32`, the result has at most 2^32 elements)
/// of the current element of a generic with loops of the given strides.
fn flat_index(b: &mut Body, strides: &[u64]) -> String {
    let mut flat = b.def("arith.constant 0 : i32".into());
    for (i, &s) in strides.iter().enumerate() {
        let x = b.def(format!("linalg.index {i} : index"));
        let x = b.def(format!("arith.index_cast {x} : index to i32"));
        let c = b.def(i32_lit(s as u32));
        let t = b.def(format!("arith.muli {x}, {c} : i32"));
        flat = b.def(format!("arith.addi {flat}, {t} : i32"));
    }
    flat
}

/// The four output words of Philox4x32-10 for the block of sample `flat`
/// (counter `(flat / 4, stream)` as four 32-bit words, low word first).
fn philox_block(b: &mut Body, flat: &str, stream: u64, keys: &[(String, String)]) -> [String; 4] {
    let c2 = b.def("arith.constant 2 : i32".into());
    let block = b.def(format!("arith.shrui {flat}, {c2} : i32"));
    let mut ctr = [
        block,
        b.def("arith.constant 0 : i32".into()),
        b.def(i32_lit(stream as u32)),
        b.def(i32_lit((stream >> 32) as u32)),
    ];
    let m0 = b.def(i32_lit(M0));
    let m1 = b.def(i32_lit(M1));
    for (k0, k1) in keys {
        let p0 = mul_extended(b, &ctr[0], &m0);
        let p1 = mul_extended(b, &ctr[2], &m1);
        // `%p:2` results: #0 the low word, #1 the high word.
        let x0 = b.def(format!("arith.xori {p1}#1, {} : i32", ctr[1]));
        let x0 = b.def(format!("arith.xori {x0}, {k0} : i32"));
        let x2 = b.def(format!("arith.xori {p0}#1, {} : i32", ctr[3]));
        let x2 = b.def(format!("arith.xori {x2}, {k1} : i32"));
        ctr = [x0, format!("{p1}#0"), x2, format!("{p0}#0")];
    }
    ctr
}

/// `a * b` of two `i32` words as a two-result `arith.mului_extended`: the
/// returned name `%p` has the low word `%p#0` and the high word `%p#1`.
fn mul_extended(b: &mut Body, x: &str, y: &str) -> String {
    let name = format!("%t{}", *b.counter);
    *b.counter += 1;
    b.lines.push(format!(
        "{}{name}:2 = arith.mului_extended {x}, {y} : i32",
        b.indent
    ));
    name
}

/// Sample `flat` from its block's words `(w, w')` (words 0, 1 for the first
/// two samples of a block, 2, 3 for the others): `sqrt(-2 ln u1)` times
/// `cos(2 pi u2)` (even `flat`) or `sin` (odd), `u1 = (w + 1) / 2^32`,
/// `u2 = w' / 2^32`, in `f64`, then converted to `d`.
///
/// In `f64` this is the interpreter's arithmetic. It is also written to stay
/// accurate where a compiler demotes `f64` to `f32` (IREE does by default):
/// `ln u1` for `u1 > 1/2` is `log1p(-(2^32 - 1 - w) / 2^32)`, whose argument
/// converts exactly, and the angle is split into its quadrant (top two bits of
/// `w'`) and an angle below pi/2 from the other 30 bits.
fn box_muller(b: &mut Body, flat: &str, w: &[String; 4], d: DType) -> String {
    let c1 = b.def("arith.constant 1 : i32".into());
    let c2 = b.def("arith.constant 2 : i32".into());
    let c3 = b.def("arith.constant 3 : i32".into());
    let zero = b.def("arith.constant 0 : i32".into());
    let lane = b.def(format!("arith.andi {flat}, {c3} : i32"));
    let first = b.def(format!("arith.cmpi ult, {lane}, {c2} : i32"));
    let odd = b.def(format!("arith.andi {flat}, {c1} : i32"));
    let even = b.def(format!("arith.cmpi eq, {odd}, {zero} : i32"));
    let a = b.def(format!("arith.select {first}, {}, {} : i32", w[0], w[2]));
    let c = b.def(format!("arith.select {first}, {}, {} : i32", w[1], w[3]));
    let radius = radius(b, &a);
    let (cos, sin) = cos_sin_turn(b, &c);
    let trig = b.def(format!("arith.select {even}, {cos}, {sin} : f64"));
    let x = b.def(format!("arith.mulf {radius}, {trig} : f64"));
    match d {
        DType::F64 => x,
        _ => b.def(format!("arith.truncf {x} : f64 to {}", elt(d))),
    }
}

/// `sqrt(-2 ln u1)` for `u1 = (a + 1) / 2^32`, `a` an unsigned word.
fn radius(b: &mut Body, a: &str) -> String {
    let scale = b.constant(DType::F64, 1.0 / 4_294_967_296.0);
    let one = b.constant(DType::F64, 1.0);
    let fa = b.def(format!("arith.uitofp {a} : i32 to f64"));
    let a1 = b.def(format!("arith.addf {fa}, {one} : f64"));
    let u1 = b.def(format!("arith.mulf {a1}, {scale} : f64"));
    let ln_small = b.def(format!("math.log {u1} : f64"));
    let ones = b.def(i32_lit(u32::MAX));
    let rest = b.def(format!("arith.xori {a}, {ones} : i32"));
    let fr = b.def(format!("arith.uitofp {rest} : i32 to f64"));
    let neg = b.constant(DType::F64, -1.0 / 4_294_967_296.0);
    let x = b.def(format!("arith.mulf {fr}, {neg} : f64"));
    let ln_big = b.def(format!("math.log1p {x} : f64"));
    let zero = b.def("arith.constant 0 : i32".into());
    let high = b.def(format!("arith.cmpi slt, {a}, {zero} : i32"));
    let ln = b.def(format!("arith.select {high}, {ln_big}, {ln_small} : f64"));
    let m2 = b.constant(DType::F64, -2.0);
    let t = b.def(format!("arith.mulf {m2}, {ln} : f64"));
    b.def(format!("math.sqrt {t} : f64"))
}

/// `(cos, sin)` of `2 pi c / 2^32`, `c` an unsigned word: quadrant `c >> 30`
/// and `theta = (pi/2) (c mod 2^30) / 2^30`, then the quadrant's swap and signs.
fn cos_sin_turn(b: &mut Body, c: &str) -> (String, String) {
    let c30 = b.def("arith.constant 30 : i32".into());
    let q = b.def(format!("arith.shrui {c}, {c30} : i32"));
    let low = b.def(i32_lit((1 << 30) - 1));
    let fr = b.def(format!("arith.andi {c}, {low} : i32"));
    let ff = b.def(format!("arith.uitofp {fr} : i32 to f64"));
    let k = b.constant(
        DType::F64,
        std::f64::consts::FRAC_PI_2 / f64::from(1u32 << 30),
    );
    let theta = b.def(format!("arith.mulf {ff}, {k} : f64"));
    let ct = b.def(format!("math.cos {theta} : f64"));
    let st = b.def(format!("math.sin {theta} : f64"));
    let one = b.def("arith.constant 1 : i32".into());
    let two = b.def("arith.constant 2 : i32".into());
    let q_odd = b.def(format!("arith.andi {q}, {one} : i32"));
    let swap = b.def(format!("arith.cmpi eq, {q_odd}, {one} : i32"));
    let cos = b.def(format!("arith.select {swap}, {st}, {ct} : f64"));
    let sin = b.def(format!("arith.select {swap}, {ct}, {st} : f64"));
    // cos is negative in quadrants 1 and 2, sin in quadrants 2 and 3.
    let qp1 = b.def(format!("arith.addi {q}, {one} : i32"));
    let cneg = b.def(format!("arith.andi {qp1}, {two} : i32"));
    let cneg = b.def(format!("arith.cmpi eq, {cneg}, {two} : i32"));
    let sneg = b.def(format!("arith.cmpi uge, {q}, {two} : i32"));
    let ncos = b.def(format!("arith.negf {cos} : f64"));
    let nsin = b.def(format!("arith.negf {sin} : f64"));
    let cos = b.def(format!("arith.select {cneg}, {ncos}, {cos} : f64"));
    let sin = b.def(format!("arith.select {sneg}, {nsin}, {sin} : f64"));
    (cos, sin)
}
