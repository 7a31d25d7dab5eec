//! The verifier: structure, attributes, dominance and type rules of every op.
//!
//! Passes run it after every rewrite; a failure names the value (numbered as
//! the printer numbers it), the op and what was expected.

use crate::attr::Attr;
use crate::op::{AttrType, ACTIVATIONS, REDUCTIONS};
use crate::{DType, Dim, Graph, Node, OpKind, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What the verifier found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// The value as the printer names it (`%12`), or `output "name"`.
    pub at: String,
    /// The op's keyword, empty for graph-level errors.
    pub op: String,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{} = {}: {}", self.at, self.op, self.message)
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks `g`; returns the first problem found.
///
/// ```
/// let bad = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : i64[N]\n %1 = exp %0 : i64[N]\n output \"y\" = %1\n}").unwrap();
/// let err = reformc_ir::verify(&bad).unwrap_err();
/// assert_eq!(err.to_string(), "%1 = exp: operand 0 must be a float tensor, found i64[N]");
/// ```
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let numbering: HashMap<ValueId, usize> = g
        .walk()
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    let mut v = Verifier {
        g,
        numbering,
        visible: vec![HashSet::new()],
    };
    v.block(&g.body)?;
    let top = &v.visible[0];
    let mut seen = HashSet::new();
    for (name, out) in &g.outputs {
        if !seen.insert(name) {
            return Err(VerifyError {
                at: format!("output {name:?}"),
                op: String::new(),
                message: "output name used twice".into(),
            });
        }
        if !top.contains(out) {
            return Err(VerifyError {
                at: format!("output {name:?}"),
                op: String::new(),
                message: "refers to a value that is not defined at the top level".into(),
            });
        }
    }
    Ok(())
}

struct Verifier<'g> {
    g: &'g Graph,
    numbering: HashMap<ValueId, usize>,
    visible: Vec<HashSet<ValueId>>,
}

impl Verifier<'_> {
    fn name(&self, v: ValueId) -> String {
        match self.numbering.get(&v) {
            Some(n) => format!("%{n}"),
            None => format!("%?{}", v.0),
        }
    }

    fn block(&mut self, body: &[ValueId]) -> Result<(), VerifyError> {
        for &v in body {
            if v.index() >= self.g.nodes.len() {
                return Err(VerifyError {
                    at: format!("%?{}", v.0),
                    op: String::new(),
                    message: "refers to no node".into(),
                });
            }
            let node = self.g.node(v);
            let at = self.name(v);
            let fail = |message: String| VerifyError {
                at: at.clone(),
                op: node.op.kind.name().to_string(),
                message,
            };
            for (i, input) in node.inputs.iter().enumerate() {
                if !self.visible.iter().any(|s| s.contains(input)) {
                    let name = self.name(*input);
                    return Err(fail(format!(
                        "operand {i} ({name}) is used before it is defined or outside its region"
                    )));
                }
            }
            check_structure(node).map_err(fail)?;
            let operand_types: Vec<&TensorType> =
                node.inputs.iter().map(|i| self.g.ty(*i)).collect();
            check_types(node, &operand_types).map_err(fail)?;
            for (ri, region) in node.regions.iter().enumerate() {
                self.visible.push(region.args.iter().copied().collect());
                self.block(&region.body)?;
                for r in &region.results {
                    if !self.visible.iter().any(|s| s.contains(r)) {
                        let name = self.name(*r);
                        return Err(fail(format!(
                            "region {ri} yields {name}, which is not visible there"
                        )));
                    }
                }
                self.visible.pop();
            }
            check_regions(self.g, node).map_err(fail)?;
            if !self.visible.last_mut().expect("scope").insert(v) {
                return Err(fail("the value is defined twice".into()));
            }
        }
        Ok(())
    }
}

fn check_structure(node: &Node) -> Result<(), String> {
    let kind = node.op.kind;
    let s = kind.schema();
    let n = node.inputs.len();
    if kind == OpKind::Arg {
        return Err("`arg` is only valid as a region argument".into());
    }
    if n < s.min_operands || s.max_operands.is_some_and(|m| n > m) {
        let want = match s.max_operands {
            Some(m) if m == s.min_operands => format!("{m}"),
            Some(m) => format!("{} to {m}", s.min_operands),
            None => format!("at least {}", s.min_operands),
        };
        return Err(format!("takes {want} operands, found {n}"));
    }
    if node.regions.len() != s.regions.len() {
        return Err(format!(
            "takes {} regions, found {}",
            s.regions.len(),
            node.regions.len()
        ));
    }
    for key in node.op.attrs.keys() {
        if !s.attrs.iter().any(|a| a.name == key) {
            let known: Vec<_> = s.attrs.iter().map(|a| a.name).collect();
            return Err(format!(
                "unknown attribute `{key}` (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for spec in s.attrs {
        let Some(value) = node.op.attrs.get(spec.name) else {
            if spec.required {
                return Err(format!("missing attribute `{}`", spec.name));
            }
            continue;
        };
        let type_ok = matches!(
            (spec.ty, value),
            (AttrType::Unit, Attr::Unit)
                | (AttrType::Int, Attr::Int(_))
                | (AttrType::Float, Attr::Float(_))
                | (AttrType::Str, Attr::Str(_))
                | (AttrType::Ints, Attr::Ints(_))
                | (AttrType::Number, Attr::Int(_) | Attr::Float(_))
        );
        if !type_ok {
            return Err(format!(
                "attribute `{}` must be {:?}, found `{value}`",
                spec.name, spec.ty
            ));
        }
        let below = match value {
            Attr::Int(x) => *x < spec.min,
            Attr::Ints(xs) => xs.iter().any(|x| *x < spec.min),
            _ => false,
        };
        if below {
            return Err(format!(
                "attribute `{}` must be >= {}, found {value}",
                spec.name, spec.min
            ));
        }
    }
    Ok(())
}

fn check_regions(g: &Graph, node: &Node) -> Result<(), String> {
    if node.op.kind == OpKind::SeqChunk {
        return check_seq_chunk(g, node);
    }
    if node.op.kind != OpKind::ReversibleBlock {
        return Ok(());
    }
    let x = g.ty(node.inputs[0]);
    let half = half_of_last(x)?;
    for (name, region) in ["f", "g"].iter().zip(&node.regions) {
        if region.args.len() != 1 || region.results.len() != 1 {
            return Err(format!(
                "region `{name}` must take one argument and yield one value"
            ));
        }
        for (what, v) in [("argument", region.args[0]), ("result", region.results[0])] {
            if *g.ty(v) != half {
                return Err(format!("region `{name}` {what} must be {half} (half of the input's last axis), found {}", g.ty(v)));
            }
        }
    }
    Ok(())
}

/// `seq_chunk`: the body takes one chunk and yields one chunk. Its argument
/// has the operand's type with the `axis` dim replaced by a symbol `S` (the
/// chunk length, bound afresh for every chunk) that is fresh: it appears
/// neither in the operand's type nor in the type of any outer value the body
/// uses. The yield has `S` on `axis`; the result is the yield's type with `S`
/// replaced by the operand's `axis` dim.
fn check_seq_chunk(g: &Graph, node: &Node) -> Result<(), String> {
    let x = g.ty(node.inputs[0]);
    let axis = node.op.usize("axis").unwrap_or(0);
    let region = &node.regions[0];
    if region.args.len() != 1 || region.results.len() != 1 {
        return Err("region `body` must take one argument and yield one value".into());
    }
    let arg = g.ty(region.args[0]);
    let sym = match arg.shape.get(axis) {
        Some(Dim::Sym(s)) => Dim::Sym(s.clone()),
        _ => {
            return Err(format!(
                "region `body` argument must have a symbol (the chunk length) on axis {axis}, found {arg}"
            ))
        }
    };
    let fits = arg.dtype == x.dtype
        && arg.rank() == x.rank()
        && (0..x.rank()).all(|i| i == axis || arg.shape[i] == x.shape[i]);
    if !fits {
        return Err(format!(
            "region `body` argument must be {x} with axis {axis} replaced by the chunk symbol, found {arg}"
        ));
    }
    let mentions = |t: &TensorType| t.shape.contains(&sym);
    if mentions(x) {
        return Err(format!(
            "the chunk symbol `{sym}` must be fresh, but the operand {x} uses it"
        ));
    }
    let mut inner = HashSet::new();
    let mut uses = Vec::new();
    collect_region(g, region, &mut inner, &mut uses);
    for v in uses {
        if !inner.contains(&v) && mentions(g.ty(v)) {
            return Err(format!(
                "the chunk symbol `{sym}` must be fresh, but the body uses an outer value of type {}",
                g.ty(v)
            ));
        }
    }
    let y = g.ty(region.results[0]);
    if y.shape.get(axis) != Some(&sym) {
        return Err(format!(
            "region `body` must yield a value with the chunk symbol `{sym}` on axis {axis}, found {y}"
        ));
    }
    let shape = y
        .shape
        .iter()
        .map(|d| {
            if *d == sym {
                x.shape[axis].clone()
            } else {
                d.clone()
            }
        })
        .collect();
    expect(&node.ty, TensorType::new(y.dtype, shape))
}

/// Every value a region defines (arguments included, nested regions too) and
/// every value its ops use or it yields.
fn collect_region(
    g: &Graph,
    region: &crate::Region,
    inner: &mut HashSet<ValueId>,
    uses: &mut Vec<ValueId>,
) {
    inner.extend(region.args.iter().copied());
    uses.extend(region.results.iter().copied());
    for &v in &region.body {
        inner.insert(v);
        let n = g.node(v);
        uses.extend(n.inputs.iter().copied());
        for r in &n.regions {
            collect_region(g, r, inner, uses);
        }
    }
}

fn half_of_last(x: &TensorType) -> Result<TensorType, String> {
    let mut half = x.clone();
    match half.shape.last_mut() {
        Some(Dim::Const(c)) if *c % 2 == 0 => *c /= 2,
        _ => {
            return Err(format!(
                "input must have an even constant last axis, found {x}"
            ))
        }
    }
    Ok(half)
}

fn float(i: usize, t: &TensorType) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("operand {i} must be a float tensor, found {t}"))
    }
}

fn int(i: usize, t: &TensorType) -> Result<(), String> {
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(format!("operand {i} must be an integer tensor, found {t}"))
    }
}

fn rank(i: usize, t: &TensorType, r: usize) -> Result<(), String> {
    if t.rank() == r {
        Ok(())
    } else {
        Err(format!("operand {i} must have rank {r}, found {t}"))
    }
}

fn axis_of(node: &Node, t: &TensorType, name: &str) -> Result<usize, String> {
    let a = node.op.usize(name).unwrap_or(0);
    if a < t.rank() {
        Ok(a)
    } else {
        Err(format!("attribute `{name}`={a} is out of range for {t}"))
    }
}

fn expect(result: &TensorType, want: TensorType) -> Result<(), String> {
    if *result == want {
        Ok(())
    } else {
        Err(format!("result type must be {want}, found {result}"))
    }
}

/// numpy broadcasting of two shapes; `None` when they do not broadcast.
fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(n).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Const(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Const(1))) => x.clone(),
            _ => return None,
        });
    }
    Some(out)
}

/// `heads` divides a constant width.
fn heads_divide(node: &Node, width: &Dim) -> Result<(), String> {
    let h = node.op.int("heads").unwrap_or(1) as u64;
    match width {
        Dim::Const(w) if w % h != 0 => Err(format!("width {w} is not divisible by heads={h}")),
        _ => Ok(()),
    }
}

fn check_attention_operands(node: &Node, t: &[&TensorType]) -> Result<(), String> {
    for (i, x) in t.iter().take(3).enumerate() {
        float(i, x)?;
        rank(i, x, 3)?;
    }
    let (q, k, v) = (t[0], t[1], t[2]);
    if q.shape[0] != k.shape[0] || k.shape[0] != v.shape[0] {
        return Err(format!("batch dims differ: {q}, {k}, {v}"));
    }
    if k.shape[1] != v.shape[1] {
        return Err(format!("keys and values differ in length: {k}, {v}"));
    }
    if q.shape[2] != k.shape[2] {
        return Err(format!("queries and keys differ in width: {q}, {k}"));
    }
    heads_divide(node, &q.shape[2])?;
    heads_divide(node, &v.shape[2])?;
    if let Some(m) = t.get(3) {
        check_mask(3, m, &k.shape[0], &k.shape[1])?;
    }
    Ok(())
}

fn check_mask(i: usize, m: &TensorType, b: &Dim, l: &Dim) -> Result<(), String> {
    if !(m.dtype.is_int() || m.dtype == DType::Bool) || m.shape != [b.clone(), l.clone()] {
        return Err(format!(
            "operand {i} (mask) must be an integer or bool [{b},{l}] tensor, found {m}"
        ));
    }
    Ok(())
}

fn check_types(node: &Node, t: &[&TensorType]) -> Result<(), String> {
    use OpKind::*;
    let r = &node.ty;
    let op = &node.op;
    match op.kind {
        Arg | Input | Weight => Ok(()),
        Constant => rank(0, r, 0).map_err(|_| format!("result must be a scalar, found {r}")),
        RandomNormal => {
            if t[0].dtype != DType::I64 || t[0].rank() != 0 {
                return Err(format!("operand 0 (seed) must be i64[], found {}", t[0]));
            }
            if !r.dtype.is_float() || r.shape.iter().any(|d| d.as_const().is_none()) {
                return Err(format!(
                    "result must be a float tensor of constant shape, found {r}"
                ));
            }
            Ok(())
        }
        Embedding => {
            int(0, t[0])?;
            float(1, t[1])?;
            rank(1, t[1], 2)?;
            let mut shape = t[0].shape.clone();
            shape.push(t[1].shape[1].clone());
            expect(r, TensorType::new(t[1].dtype, shape))
        }
        AxialPosEmbedding => {
            int(0, t[0])?;
            rank(0, t[0], 1)?;
            for (i, w) in t.iter().enumerate().skip(1) {
                float(i, w)?;
                rank(i, w, 3)?;
            }
            let (w0, w1) = (t[1], t[2]);
            if w0.shape[1] != Dim::Const(1) || w1.shape[0] != Dim::Const(1) {
                return Err(format!(
                    "axial weights must be [n0,1,d0] and [1,n1,d1], found {w0} and {w1}"
                ));
            }
            let width = match (&w0.shape[2], &w1.shape[2]) {
                (Dim::Const(a), Dim::Const(b)) => Dim::Const(a + b),
                _ => return Err("axial widths must be constants".into()),
            };
            expect(
                r,
                TensorType::new(w0.dtype, vec![t[0].shape[0].clone(), width]),
            )
        }
        LayerNorm => {
            float(0, t[0])?;
            let last = t[0].shape.last().ok_or("operand 0 must have rank >= 1")?;
            for (i, p) in t.iter().enumerate().skip(1) {
                if p.shape != [last.clone()] || p.dtype != t[0].dtype {
                    return Err(format!(
                        "operand {i} must be {}[{last}], found {p}",
                        t[0].dtype
                    ));
                }
            }
            expect(r, t[0].clone())
        }
        Linear => {
            float(0, t[0])?;
            rank(1, t[1], 2)?;
            let (x, w) = (t[0], t[1]);
            if x.shape.last() != Some(&w.shape[1]) || x.dtype != w.dtype {
                return Err(format!(
                    "weight {w} does not fit input {x} (expected [out,{}])",
                    x.shape.last().map_or("?".into(), |d| d.to_string())
                ));
            }
            if let Some(b) = t.get(2) {
                if b.shape != [w.shape[0].clone()] || b.dtype != x.dtype {
                    return Err(format!(
                        "bias must be {}[{}], found {b}",
                        x.dtype, w.shape[0]
                    ));
                }
            }
            if let Some(a) = op.str("activation") {
                if !ACTIVATIONS.contains(&a) {
                    return Err(format!(
                        "unknown activation `{a}` (known: {})",
                        ACTIVATIONS.join(", ")
                    ));
                }
            }
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank checked") = w.shape[0].clone();
            expect(r, TensorType::new(x.dtype, shape))
        }
        Attention | LocalAttention => {
            check_attention_operands(node, t)?;
            if op.kind == LocalAttention && t[0].shape[1] != t[1].shape[1] {
                return Err("local attention needs queries and keys of the same length".into());
            }
            expect(
                r,
                TensorType::new(
                    t[0].dtype,
                    vec![
                        t[0].shape[0].clone(),
                        t[0].shape[1].clone(),
                        t[2].shape[2].clone(),
                    ],
                ),
            )
        }
        LshHash => {
            float(0, t[0])?;
            rank(0, t[0], 3)?;
            float(1, t[1])?;
            rank(1, t[1], 4)?;
            let factors = op.ints("buckets").unwrap_or(&[]);
            if factors.is_empty() || factors.iter().any(|f| f % 2 != 0) {
                return Err(format!(
                    "every bucket factor must be even, found {:?}",
                    factors
                ));
            }
            let heads = op.int("heads").unwrap_or(1) as u64;
            let rounds = op.int("n_hashes").unwrap_or(1) as u64;
            let half: i64 = factors.iter().sum::<i64>() / 2;
            let want_rot = [
                Dim::Const(heads),
                Dim::Const(width(t[0], heads)?),
                Dim::Const(rounds),
                Dim::Const(half as u64),
            ];
            if t[1].shape != want_rot {
                let want = TensorType::new(t[0].dtype, want_rot.to_vec());
                return Err(format!("rotations must be {want}, found {}", t[1]));
            }
            if let Some(m) = t.get(2) {
                check_mask(2, m, &t[0].shape[0], &t[0].shape[1])?;
            }
            let shape = vec![
                t[0].shape[0].clone(),
                Dim::Const(heads),
                Dim::Const(rounds),
                t[0].shape[1].clone(),
            ];
            expect(r, TensorType::new(DType::I64, shape))
        }
        LshAttention => {
            float(0, t[0])?;
            rank(0, t[0], 3)?;
            float(1, t[1])?;
            if t[1].shape != t[0].shape {
                return Err(format!(
                    "values must have the shape of the shared query/keys {}, found {}",
                    t[0], t[1]
                ));
            }
            int(2, t[2])?;
            rank(2, t[2], 4)?;
            let heads = op.int("heads").unwrap_or(1) as u64;
            width(t[0], heads)?;
            let b = &t[2].shape;
            if b[0] != t[0].shape[0] || b[1] != Dim::Const(heads) || b[3] != t[0].shape[1] {
                return Err(format!(
                    "buckets must be [{},{heads},r,{}], found {}",
                    t[0].shape[0], t[0].shape[1], t[2]
                ));
            }
            if let Some(m) = t.get(3) {
                check_mask(3, m, &t[0].shape[0], &t[0].shape[1])?;
            }
            expect(r, t[0].clone())
        }
        ReversibleBlock => {
            float(0, t[0])?;
            half_of_last(t[0])?;
            expect(r, t[0].clone())
        }
        // The result type is checked with the body (`check_seq_chunk`).
        SeqChunk => axis_of(node, t[0], "axis").map(|_| ()),
        PadToMultiple => {
            let a = axis_of(node, t[0], "axis")?;
            same_except(r, t[0], a)
        }
        Truncate => {
            let a = axis_of(node, t[0], "axis")?;
            if a >= t[1].rank() {
                return Err(format!(
                    "axis {a} is out of range for the reference {}",
                    t[1]
                ));
            }
            let mut want = t[0].clone();
            want.shape[a] = t[1].shape[a].clone();
            expect(r, want)
        }
        Iota => {
            let a = axis_of(node, t[0], "axis")?;
            expect(r, TensorType::new(DType::I64, vec![t[0].shape[a].clone()]))
        }
        Index => {
            let a = axis_of(node, t[0], "axis")?;
            let i = op.int("index").unwrap_or(0) as u64;
            if let Dim::Const(n) = t[0].shape[a] {
                if i >= n {
                    return Err(format!(
                        "index {i} is out of range for axis {a} of {}",
                        t[0]
                    ));
                }
            }
            let mut want = t[0].clone();
            want.shape.remove(a);
            expect(r, want)
        }
        Slice => {
            let a = axis_of(node, t[0], "axis")?;
            let (s, e) = (
                op.int("start").unwrap_or(0) as u64,
                op.int("end").unwrap_or(0) as u64,
            );
            if s > e || t[0].shape[a].as_const().is_some_and(|n| e > n) {
                return Err(format!(
                    "range {s}..{e} is out of range for axis {a} of {}",
                    t[0]
                ));
            }
            let mut want = t[0].clone();
            want.shape[a] = Dim::Const(e - s);
            expect(r, want)
        }
        Add | Sub | Mul | Div | Max | Min | Lt | Eq => {
            if t[0].dtype != t[1].dtype {
                return Err(format!("operand dtypes differ: {} and {}", t[0], t[1]));
            }
            let shape = broadcast(&t[0].shape, &t[1].shape)
                .ok_or_else(|| format!("shapes do not broadcast: {} and {}", t[0], t[1]))?;
            let dtype = if matches!(op.kind, Lt | Eq) {
                DType::Bool
            } else {
                t[0].dtype
            };
            expect(r, TensorType::new(dtype, shape))
        }
        Neg => expect(r, t[0].clone()),
        Exp | Log | Sqrt | Rsqrt | Tanh | Softmax => {
            float(0, t[0])?;
            if op.kind == Softmax {
                axis_of(node, t[0], "axis")?;
            }
            expect(r, t[0].clone())
        }
        Act => {
            float(0, t[0])?;
            let f = op.str("fn").unwrap_or("");
            if !ACTIVATIONS.contains(&f) {
                return Err(format!(
                    "unknown activation `{f}` (known: {})",
                    ACTIVATIONS.join(", ")
                ));
            }
            expect(r, t[0].clone())
        }
        Cast => expect(r, t[0].with_dtype(r.dtype)),
        Matmul => {
            let (a, b) = (t[0], t[1]);
            if a.rank() < 2 || a.rank() != b.rank() || a.dtype != b.dtype {
                return Err(format!(
                    "operands must have the same dtype and equal ranks >= 2, found {a} and {b}"
                ));
            }
            let n = a.rank();
            if a.shape[n - 1] != b.shape[n - 2] {
                return Err(format!("contraction dims differ: {a} x {b}"));
            }
            let mut shape = broadcast(&a.shape[..n - 2], &b.shape[..n - 2])
                .ok_or_else(|| format!("batch dims do not broadcast: {a} x {b}"))?;
            shape.push(a.shape[n - 2].clone());
            shape.push(b.shape[n - 1].clone());
            expect(r, TensorType::new(a.dtype, shape))
        }
        Reduce => {
            let kind = op.str("kind").unwrap_or("");
            if !REDUCTIONS.contains(&kind) {
                return Err(format!(
                    "unknown reduction `{kind}` (known: {})",
                    REDUCTIONS.join(", ")
                ));
            }
            let axes = op.ints("axes").unwrap_or(&[]);
            let mut seen = HashSet::new();
            for &a in axes {
                if a as usize >= t[0].rank() || !seen.insert(a) {
                    return Err(format!(
                        "axes {axes:?} are out of range or repeated for {}",
                        t[0]
                    ));
                }
            }
            let keep = op.flag("keepdim");
            let shape = (0..t[0].rank())
                .filter_map(|i| match (seen.contains(&(i as i64)), keep) {
                    (false, _) => Some(t[0].shape[i].clone()),
                    (true, true) => Some(Dim::Const(1)),
                    (true, false) => None,
                })
                .collect();
            expect(r, TensorType::new(t[0].dtype, shape))
        }
        Gather => {
            let a = axis_of(node, t[0], "axis")?;
            int(1, t[1])?;
            if t[1].rank() != t[0].rank()
                || (0..t[0].rank()).any(|i| i != a && t[0].shape[i] != t[1].shape[i])
            {
                return Err(format!(
                    "indices {} must match {} on every axis but {a}",
                    t[1], t[0]
                ));
            }
            expect(r, TensorType::new(t[0].dtype, t[1].shape.clone()))
        }
        Argmax => {
            let a = axis_of(node, t[0], "axis")?;
            let mut shape = t[0].shape.clone();
            shape.remove(a);
            expect(r, TensorType::new(DType::I64, shape))
        }
        Argsort => {
            axis_of(node, t[0], "axis")?;
            expect(r, t[0].with_dtype(DType::I64))
        }
        Select => {
            if t[0].dtype != DType::Bool || t[1].dtype != t[2].dtype {
                return Err(format!(
                    "select takes (bool, T, T), found ({}, {}, {})",
                    t[0], t[1], t[2]
                ));
            }
            let s = broadcast(&t[0].shape, &t[1].shape).and_then(|s| broadcast(&s, &t[2].shape));
            let shape =
                s.ok_or_else(|| format!("shapes do not broadcast: {}, {}, {}", t[0], t[1], t[2]))?;
            expect(r, TensorType::new(t[1].dtype, shape))
        }
        Reshape => {
            if r.dtype != t[0].dtype {
                return Err(format!("reshape keeps the dtype: {} to {r}", t[0]));
            }
            let count = |t: &TensorType| {
                t.shape
                    .iter()
                    .map(|d| d.as_const())
                    .product::<Option<u64>>()
            };
            match (count(t[0]), count(r)) {
                (Some(a), Some(b)) if a != b => Err(format!(
                    "element counts differ: {} has {a}, {r} has {b}",
                    t[0]
                )),
                _ => Ok(()),
            }
        }
        Transpose => {
            let perm = op.ints("perm").unwrap_or(&[]);
            let mut sorted: Vec<i64> = perm.to_vec();
            sorted.sort_unstable();
            if sorted != (0..t[0].rank() as i64).collect::<Vec<_>>() {
                return Err(format!(
                    "perm {perm:?} is not a permutation of the axes of {}",
                    t[0]
                ));
            }
            let shape = perm
                .iter()
                .map(|&p| t[0].shape[p as usize].clone())
                .collect();
            expect(r, TensorType::new(t[0].dtype, shape))
        }
        Concat => {
            let a = axis_of(node, t[0], "axis")?;
            let mut total = Some(0u64);
            for (i, x) in t.iter().enumerate() {
                if x.dtype != t[0].dtype
                    || x.rank() != t[0].rank()
                    || (0..x.rank()).any(|j| j != a && x.shape[j] != t[0].shape[j])
                {
                    return Err(format!(
                        "operand {i} {x} does not fit {} along axis {a}",
                        t[0]
                    ));
                }
                total = total.zip(x.shape[a].as_const()).map(|(s, c)| s + c);
            }
            match total {
                Some(n) => {
                    let mut want = t[0].clone();
                    want.shape[a] = Dim::Const(n);
                    expect(r, want)
                }
                None => same_except(r, t[0], a),
            }
        }
    }
}

fn width(t: &TensorType, heads: u64) -> Result<u64, String> {
    match t.shape.last() {
        Some(Dim::Const(w)) if w % heads == 0 => Ok(w / heads),
        _ => Err(format!(
            "last axis of {t} must be a constant multiple of heads={heads}"
        )),
    }
}

fn same_except(r: &TensorType, x: &TensorType, axis: usize) -> Result<(), String> {
    let ok = r.dtype == x.dtype
        && r.rank() == x.rank()
        && (0..x.rank()).all(|i| i == axis || r.shape[i] == x.shape[i]);
    if ok {
        Ok(())
    } else {
        Err(format!("result {r} must equal {x} except on axis {axis}"))
    }
}
