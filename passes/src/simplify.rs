//! The `simplify` pass: bounded equality saturation with reformc's rule sets.
//!
//! Rules are grouped in phases that run one after another on the same
//! e-graph (per body, see [`crate::eqsat::convert`]); every rule has a name
//! that the [`SaturationReport`] counts.
//!
//! | phase | rule | start => goal |
//! |---|---|---|
//! | `fold` | `transpose-transpose` | `transpose{q}(transpose{p}(x))` => `transpose{p∘q}(x)` |
//! | `fold` | `transpose-identity` | `transpose{0,1,..}(x)` => `x` |
//! | `fold` | `reshape-reshape` | `reshape(reshape(x))` => `reshape(x)` |
//! | `fold` | `reshape-identity` | `reshape(x) : type(x)` => `x` |
//! | `fold` | `slice-full` | `slice{a,0,n}(x)` with `x.shape[a] = n` => `x` |
//! | `fold` | `slice-slice` | `slice{a,s2,e2}(slice{a,s1,e1}(x))` => `slice{a,s1+s2,s1+e2}(x)` |
//! | `fold` | `slice-concat` | `slice{a}(concat{a}(.., xi, ..))` inside `xi` => `slice{a}(xi)` |
//! | `fold` | `concat-slices` | `concat{a}(slice{a,s,m}(x), slice{a,m,e}(x))` => `slice{a,s,e}(x)` |
//! | `fold` | `concat-single` | `concat(x)` => `x` |
//! | `fold` | `cast-identity` | `cast(x) : type(x)` => `x` |
//! | `fold` | `neg-neg` | `neg(neg(x))` => `x` |
//! | `arith` | `mul-one`, `div-one`, `add-zero`, `sub-zero` | `x * 1`, `x / 1`, `x + 0`, `x - 0` => `x` (shape-preserving only) |
//! | `arith` | `mul-const-const` | `(x * c1) * c2` => `x * (c1 c2)` |
//! | `fuse` | `linear-activation` | `act{f}(linear(x,w[,b]))` => `linear{activation=f}(x,w[,b])` |
//! | `fuse` | `linear-bias` | `linear(x,w) + b` (either order; `b` 1-D of width out) => `linear(x,w,b)` |
//! | `fuse` | `attention-scale` | `attention{scale=s}(q * c, k, v)` (or `c * q`, `q / c`; `k` too without `key_norm`) => `attention{scale=s c}(q, k, v)`; `local_attention` alike |
//! | `algebra` (opt-in) | `add-commute`, `add-assoc`, `mul-commute`, `mul-assoc` | AC of `add`/`mul` on equal shapes; explodes on long chains, kept for bound tests |
//!
//! Scale folding only ever changes attributes: weights are graph inputs and
//! are never rewritten (a constant factor on a `linear` stays a `mul`).
//! Common subexpressions are merged by hash-consing and dead code disappears
//! at extraction, so `simplify` also does CSE and DCE (plain, saturation-free
//! versions are the `cse` and `dce` passes in [`crate::cleanup`]).
//!
//! ```
//! use reformc_passes::{Pass, PassOptions};
//! use reformc_passes::simplify::SimplifyPass;
//! let mut g = reformc_ir::parse("graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = transpose %0 {perm=[0,2,1]} : f32[B,8,L]\n  %2 = transpose %1 {perm=[0,2,1]} : f32[B,L,8]\n  output \"y\" = %2\n}\n").unwrap();
//! let notes = SimplifyPass::new().run(&mut g, &PassOptions::default()).unwrap();
//! assert_eq!(reformc_ir::print(&g), "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  output \"y\" = %0\n}\n");
//! assert!(notes[0].starts_with("saturated"));
//! ```

use crate::eqsat::analysis::IrEGraph;
use crate::eqsat::extract::{CostFunction, OpCountCost};
use crate::eqsat::lang::IrNode;
use crate::eqsat::rule::{constant, ir_nodes, same, ty, IrRule, Rhs};
use crate::eqsat::{saturate, Phase, SaturationLimits, SaturationReport};
use crate::pass::{Pass, PassError, PassOptions, PassOutcome, PassStats};
use egg::Id;
use reformc_ir::{Attr, Dim, Graph, Op, OpKind, TensorType};
use std::sync::Arc;

fn ints(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

fn perm_of(op: &Op) -> Option<Vec<usize>> {
    op.ints("perm")
        .map(|p| p.iter().map(|&x| x as usize).collect())
}

fn is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &x)| i == x)
}

fn root(node: &IrNode) -> Option<&Op> {
    node.op.op()
}

fn transpose_transpose(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(q) = root(node).and_then(perm_of) else {
        return vec![];
    };
    ir_nodes(eg, node.children[0], OpKind::Transpose)
        .filter_map(|(inner, kids)| {
            let p = perm_of(inner)?;
            if p.len() != q.len() || q.iter().any(|&i| i >= p.len()) {
                return None;
            }
            let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
            Some(if is_identity(&composed) {
                Rhs::Class(kids[0])
            } else {
                Rhs::node(
                    Op::new(OpKind::Transpose).with("perm", ints(&composed)),
                    vec![Rhs::Class(kids[0])],
                )
            })
        })
        .collect()
}

fn transpose_identity(_: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    match root(node).and_then(perm_of) {
        Some(p) if is_identity(&p) => vec![Rhs::Class(node.children[0])],
        _ => vec![],
    }
}

fn reshape_reshape(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    let want = ty(eg, class).clone();
    ir_nodes(eg, node.children[0], OpKind::Reshape)
        .map(|(_, kids)| {
            if *ty(eg, kids[0]) == want {
                Rhs::Class(kids[0])
            } else {
                Rhs::typed(
                    Op::new(OpKind::Reshape),
                    want.clone(),
                    vec![Rhs::Class(kids[0])],
                )
            }
        })
        .collect()
}

/// `op(x) : type(x)` => `x`, for ops that are identities when the type does not change.
fn same_type_identity(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    let x = node.children[0];
    if ty(eg, x) == ty(eg, class) {
        vec![Rhs::Class(x)]
    } else {
        vec![]
    }
}

fn slice_attrs(op: &Op) -> Option<(usize, u64, u64)> {
    Some((
        op.usize("axis")?,
        u64::try_from(op.int("start")?).ok()?,
        u64::try_from(op.int("end")?).ok()?,
    ))
}

fn slice_op(axis: usize, start: u64, end: u64) -> Op {
    Op::new(OpKind::Slice)
        .with("axis", Attr::Int(axis as i64))
        .with("start", Attr::Int(start as i64))
        .with("end", Attr::Int(end as i64))
}

/// `slice{a,s,e}(x)`, or `x` itself when the range covers the whole axis.
fn slice_or_whole(eg: &IrEGraph, x: Id, axis: usize, start: u64, end: u64) -> Rhs {
    if start == 0 && ty(eg, x).shape.get(axis) == Some(&Dim::Const(end)) {
        Rhs::Class(x)
    } else {
        Rhs::node(slice_op(axis, start, end), vec![Rhs::Class(x)])
    }
}

fn slice_full(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    match root(node).and_then(slice_attrs) {
        Some((a, 0, e)) if ty(eg, node.children[0]).shape.get(a) == Some(&Dim::Const(e)) => {
            vec![Rhs::Class(node.children[0])]
        }
        _ => vec![],
    }
}

fn slice_slice(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some((a, s2, e2)) = root(node).and_then(slice_attrs) else {
        return vec![];
    };
    ir_nodes(eg, node.children[0], OpKind::Slice)
        .filter_map(|(inner, kids)| {
            let (a1, s1, _) = slice_attrs(inner)?;
            (a1 == a).then(|| slice_or_whole(eg, kids[0], a, s1 + s2, s1 + e2))
        })
        .collect()
}

fn slice_concat(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some((a, s, e)) = root(node).and_then(slice_attrs) else {
        return vec![];
    };
    ir_nodes(eg, node.children[0], OpKind::Concat)
        .filter_map(|(cat, kids)| {
            if cat.usize("axis")? != a {
                return None;
            }
            let mut off = 0;
            for k in kids {
                let len = ty(eg, *k).shape.get(a)?.as_const()?;
                if s >= off && e <= off + len {
                    return Some(slice_or_whole(eg, *k, a, s - off, e - off));
                }
                off += len;
            }
            None
        })
        .collect()
}

fn concat_slices(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(a) = root(node).and_then(|op| op.usize("axis")) else {
        return vec![];
    };
    // Each operand as a slice of some x along `a`: (x, start, end), first such node of each class.
    let mut parts = Vec::with_capacity(node.children.len());
    for k in &node.children {
        let Some(p) = ir_nodes(eg, *k, OpKind::Slice).find_map(|(op, kids)| {
            let (sa, s, e) = slice_attrs(op)?;
            (sa == a).then_some((kids[0], s, e))
        }) else {
            return vec![];
        };
        parts.push(p);
    }
    let (x, start, mut end) = parts[0];
    for &(y, s, e) in &parts[1..] {
        if !same(eg, x, y) || s != end {
            return vec![];
        }
        end = e;
    }
    vec![slice_or_whole(eg, x, a, start, end)]
}

fn concat_single(_: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    if node.children.len() == 1 {
        vec![Rhs::Class(node.children[0])]
    } else {
        vec![]
    }
}

fn neg_neg(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    ir_nodes(eg, node.children[0], OpKind::Neg)
        .map(|(_, kids)| Rhs::Class(kids[0]))
        .collect()
}

/// `x op c` (and `c op x` when `commutes`) with `c` the scalar constant `unit`, shape-preserving: `x`.
fn unit_operand(eg: &IrEGraph, class: Id, node: &IrNode, unit: f64, commutes: bool) -> Vec<Rhs> {
    let (a, b) = (node.children[0], node.children[1]);
    let mut out = Vec::new();
    if constant(eg, b) == Some(unit) && ty(eg, a) == ty(eg, class) {
        out.push(Rhs::Class(a));
    }
    if commutes && constant(eg, a) == Some(unit) && ty(eg, b) == ty(eg, class) {
        out.push(Rhs::Class(b));
    }
    out
}

fn mul_one(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    unit_operand(eg, class, node, 1.0, true)
}

fn div_one(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    unit_operand(eg, class, node, 1.0, false)
}

fn add_zero(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    unit_operand(eg, class, node, 0.0, true)
}

fn sub_zero(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    unit_operand(eg, class, node, 0.0, false)
}

/// `(x, c)` for a `mul` (either order) of a value and a scalar constant.
fn scaled(eg: &IrEGraph, children: &[Id]) -> Vec<(Id, f64)> {
    let mut out = Vec::new();
    if let Some(c) = constant(eg, children[1]) {
        out.push((children[0], c));
    }
    if let Some(c) = constant(eg, children[0]) {
        out.push((children[1], c));
    }
    out
}

fn const_node(t: &TensorType, v: f64) -> Rhs {
    Rhs::typed(
        Op::new(OpKind::Constant).with("value", Attr::Float(v)),
        TensorType::scalar(t.dtype),
        vec![],
    )
}

fn mul_const_const(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    let t = ty(eg, class);
    if !t.dtype.is_float() {
        return vec![];
    }
    let mut out = Vec::new();
    for (inner, c2) in scaled(eg, &node.children) {
        for (_, kids) in ir_nodes(eg, inner, OpKind::Mul) {
            for (x, c1) in scaled(eg, kids) {
                if constant(eg, x).is_none() && ty(eg, inner) == ty(eg, x) && ty(eg, x) == t {
                    out.push(Rhs::node(
                        Op::new(OpKind::Mul),
                        vec![Rhs::Class(x), const_node(t, c1 * c2)],
                    ));
                }
            }
        }
    }
    out
}

fn linear_activation(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(f) = root(node).and_then(|op| op.str("fn")) else {
        return vec![];
    };
    ir_nodes(eg, node.children[0], OpKind::Linear)
        .filter(|(lin, _)| lin.str("activation").is_none())
        .map(|(lin, kids)| {
            let op = lin.clone().with("activation", Attr::Str(f.to_string()));
            Rhs::node(op, kids.iter().map(|k| Rhs::Class(*k)).collect())
        })
        .collect()
}

fn linear_bias(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    let mut out = Vec::new();
    for (l, b) in [
        (node.children[0], node.children[1]),
        (node.children[1], node.children[0]),
    ] {
        if ty(eg, l) != ty(eg, class) {
            continue;
        }
        for (lin, kids) in ir_nodes(eg, l, OpKind::Linear) {
            if kids.len() != 2 || lin.str("activation").is_some() {
                continue;
            }
            let (w, bt) = (ty(eg, kids[1]), ty(eg, b));
            if bt.rank() == 1 && bt.dtype == w.dtype && w.shape.first() == Some(&bt.shape[0]) {
                out.push(Rhs::node(
                    lin.clone(),
                    vec![Rhs::Class(kids[0]), Rhs::Class(kids[1]), Rhs::Class(b)],
                ));
            }
        }
    }
    out
}

fn attention_scale(eg: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(op) = root(node) else { return vec![] };
    let Some(scale) = op.float("scale") else {
        return vec![];
    };
    // Keys may be folded only when they are not normalized (normalization undoes a factor).
    let operands: &[usize] = if op.flag("key_norm") { &[0] } else { &[0, 1] };
    let mut out = Vec::new();
    for &i in operands {
        let c = node.children[i];
        let mut factors: Vec<(Id, f64)> = Vec::new();
        for (_, kids) in ir_nodes(eg, c, OpKind::Mul) {
            factors.extend(scaled(eg, kids));
        }
        for (_, kids) in ir_nodes(eg, c, OpKind::Div) {
            if let Some(k) = constant(eg, kids[1]) {
                if k != 0.0 {
                    factors.push((kids[0], 1.0 / k));
                }
            }
        }
        for (x, f) in factors {
            if ty(eg, x) != ty(eg, c) {
                continue;
            }
            let new = op.clone().with("scale", Attr::Float(scale * f));
            let kids = node
                .children
                .iter()
                .enumerate()
                .map(|(j, k)| Rhs::Class(if j == i { x } else { *k }))
                .collect();
            out.push(Rhs::node(new, kids));
        }
    }
    out
}

fn commute(_: &IrEGraph, _: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(op) = root(node) else { return vec![] };
    vec![Rhs::node(
        op.clone(),
        vec![Rhs::Class(node.children[1]), Rhs::Class(node.children[0])],
    )]
}

fn associate(eg: &IrEGraph, class: Id, node: &IrNode) -> Vec<Rhs> {
    let Some(op) = root(node) else { return vec![] };
    let t = ty(eg, class);
    let (ab, c) = (node.children[0], node.children[1]);
    if ty(eg, ab) != t || ty(eg, c) != t {
        return vec![];
    }
    ir_nodes(eg, ab, op.kind)
        .filter(|(_, kids)| ty(eg, kids[0]) == t && ty(eg, kids[1]) == t)
        .map(|(_, kids)| {
            let bc = Rhs::node(op.clone(), vec![Rhs::Class(kids[1]), Rhs::Class(c)]);
            Rhs::node(op.clone(), vec![Rhs::Class(kids[0]), bc])
        })
        .collect()
}

/// Structural folding: transposes, reshapes, slices, concats, casts, negations.
pub fn fold_rules() -> Vec<IrRule> {
    vec![
        IrRule::new(
            "transpose-transpose",
            &[OpKind::Transpose],
            "transpose{q}(transpose{p}(x)) => transpose{p∘q}(x)",
            transpose_transpose,
        ),
        IrRule::new(
            "transpose-identity",
            &[OpKind::Transpose],
            "transpose{identity}(x) => x",
            transpose_identity,
        ),
        IrRule::new(
            "reshape-reshape",
            &[OpKind::Reshape],
            "reshape(reshape(x)) => reshape(x)",
            reshape_reshape,
        ),
        IrRule::new(
            "reshape-identity",
            &[OpKind::Reshape],
            "reshape(x) : type(x) => x",
            same_type_identity,
        ),
        IrRule::new(
            "slice-full",
            &[OpKind::Slice],
            "slice{a,0,n}(x), x.shape[a] = n => x",
            slice_full,
        ),
        IrRule::new(
            "slice-slice",
            &[OpKind::Slice],
            "slice(slice(x)) on one axis => slice(x)",
            slice_slice,
        ),
        IrRule::new(
            "slice-concat",
            &[OpKind::Slice],
            "slice{a}(concat{a}(.., xi, ..)) within xi => slice{a}(xi)",
            slice_concat,
        ),
        IrRule::new(
            "concat-slices",
            &[OpKind::Concat],
            "concat{a}(slice{a,s,m}(x), slice{a,m,e}(x)) => slice{a,s,e}(x)",
            concat_slices,
        ),
        IrRule::new(
            "concat-single",
            &[OpKind::Concat],
            "concat(x) => x",
            concat_single,
        ),
        IrRule::new(
            "cast-identity",
            &[OpKind::Cast],
            "cast(x) : type(x) => x",
            same_type_identity,
        ),
        IrRule::new("neg-neg", &[OpKind::Neg], "neg(neg(x)) => x", neg_neg),
    ]
}

/// Arithmetic identities with scalar constants.
pub fn arith_rules() -> Vec<IrRule> {
    vec![
        IrRule::new("mul-one", &[OpKind::Mul], "x * 1 => x", mul_one),
        IrRule::new("div-one", &[OpKind::Div], "x / 1 => x", div_one),
        IrRule::new("add-zero", &[OpKind::Add], "x + 0 => x", add_zero),
        IrRule::new("sub-zero", &[OpKind::Sub], "x - 0 => x", sub_zero),
        IrRule::new(
            "mul-const-const",
            &[OpKind::Mul],
            "(x * c1) * c2 => x * (c1 c2)",
            mul_const_const,
        ),
    ]
}

/// Epilogue fusion into `linear` and scale folding into attention attributes.
pub fn fuse_rules() -> Vec<IrRule> {
    vec![
        IrRule::new(
            "linear-activation",
            &[OpKind::Act],
            "act{f}(linear(x,w[,b])) => linear{activation=f}(x,w[,b])",
            linear_activation,
        ),
        IrRule::new(
            "linear-bias",
            &[OpKind::Add],
            "linear(x,w) + b => linear(x,w,b)",
            linear_bias,
        ),
        IrRule::new(
            "attention-scale",
            &[OpKind::Attention, OpKind::LocalAttention],
            "attention{scale=s}(q * c, k, v) => attention{scale=s c}(q, k, v)",
            attention_scale,
        ),
    ]
}

/// Commutativity and associativity of `add` and `mul` (equal shapes only).
/// Not in the default phases: on long chains it grows the e-graph
/// exponentially, which is what the bound tests use it for.
pub fn algebra_rules() -> Vec<IrRule> {
    vec![
        IrRule::new("add-commute", &[OpKind::Add], "a + b => b + a", commute),
        IrRule::new(
            "add-assoc",
            &[OpKind::Add],
            "(a + b) + c => a + (b + c)",
            associate,
        ),
        IrRule::new("mul-commute", &[OpKind::Mul], "a * b => b * a", commute),
        IrRule::new(
            "mul-assoc",
            &[OpKind::Mul],
            "(a * b) * c => a * (b * c)",
            associate,
        ),
    ]
}

/// The default phases: `fold`, `arith`, `fuse`.
pub fn default_phases() -> Vec<Phase> {
    vec![
        Phase {
            name: "fold",
            rules: fold_rules(),
        },
        Phase {
            name: "arith",
            rules: arith_rules(),
        },
        Phase {
            name: "fuse",
            rules: fuse_rules(),
        },
    ]
}

/// Every rule of every phase, default and opt-in.
pub fn all_rules() -> Vec<IrRule> {
    let mut v = fold_rules();
    v.extend(arith_rules());
    v.extend(fuse_rules());
    v.extend(algebra_rules());
    v
}

/// The `simplify` pass.
///
/// ```
/// use reformc_passes::simplify::SimplifyPass;
/// use reformc_passes::eqsat::SaturationLimits;
/// let pass = SimplifyPass::new().with_limits(SaturationLimits { node_limit: 20_000, ..Default::default() });
/// assert_eq!(reformc_passes::Pass::name(&pass), "simplify");
/// ```
#[derive(Clone)]
pub struct SimplifyPass {
    /// Bounds on the saturation (see [`SaturationLimits`] for what each
    /// limit covers).
    pub limits: SaturationLimits,
    /// Rule phases saturated in order ([`default_phases`] unless replaced).
    pub phases: Vec<Phase>,
    cost: Arc<dyn CostFunction + Send + Sync>,
}

impl Default for SimplifyPass {
    fn default() -> Self {
        SimplifyPass::new()
    }
}

impl std::fmt::Debug for SimplifyPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimplifyPass")
            .field("limits", &self.limits)
            .field("phases", &self.phases)
            .finish()
    }
}

impl SimplifyPass {
    /// Default limits, default phases, [`OpCountCost`].
    pub fn new() -> SimplifyPass {
        SimplifyPass {
            limits: SaturationLimits::default(),
            phases: default_phases(),
            cost: Arc::new(OpCountCost),
        }
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: SaturationLimits) -> SimplifyPass {
        self.limits = limits;
        self
    }

    /// Replaces the phases (for instance adding `algebra`).
    pub fn with_phases(mut self, phases: Vec<Phase>) -> SimplifyPass {
        self.phases = phases;
        self
    }

    /// Replaces the extraction cost function.
    pub fn with_cost(mut self, cost: Arc<dyn CostFunction + Send + Sync>) -> SimplifyPass {
        self.cost = cost;
        self
    }

    /// Runs the pass and returns the full report.
    pub fn run_report(&self, g: &mut Graph) -> Result<SaturationReport, PassError> {
        let (out, report) =
            saturate(g, &self.phases, &self.limits, &*self.cost).map_err(|message| PassError {
                pass: "simplify".into(),
                message,
            })?;
        *g = out;
        Ok(report)
    }
}

/// The notes and statistics of a saturation report.
pub fn report_outcome(report: &SaturationReport) -> PassOutcome {
    let mut notes = vec![report.to_string()];
    for (body, phase, reason) in report.limits_hit().into_iter().take(5) {
        notes.push(format!("{body}: phase `{phase}` stopped at the {reason}"));
    }
    let applied = report.applied();
    if !applied.is_empty() {
        notes.push(format!(
            "rewrites: {}",
            applied
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut stats = PassStats {
        nodes: Some(report.enodes as u64),
        stop_reason: Some(report.stop_reason().to_string()),
        ..Default::default()
    }
    .with_phase("search", report.search_time())
    .with_phase("apply", report.apply_time())
    .with_phase("rebuild", report.rebuild_time())
    .with_phase("extract", report.extract_time)
    .with_counter("iterations", report.iterations() as u64)
    .with_counter("e-graphs", report.egraphs as u64)
    .with_counter("e-classes", report.eclasses as u64)
    .with_counter("rewrites", applied.values().sum::<usize>() as u64);
    stats
        .counters
        .push(("max e-nodes".into(), report.max_enodes as u64));
    PassOutcome { notes, stats }
}

impl Pass for SimplifyPass {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn summary(&self) -> &'static str {
        "bounded equality saturation: fold transposes/reshapes/slices, fuse epilogues into linear, fold scales into attention, CSE, DCE"
    }

    fn run(&self, g: &mut Graph, _opts: &PassOptions) -> Result<Vec<String>, PassError> {
        self.run_report(g).map(|r| report_outcome(&r).notes)
    }

    fn run_with_stats(&self, g: &mut Graph, _opts: &PassOptions) -> Result<PassOutcome, PassError> {
        self.run_report(g).map(|r| report_outcome(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_equivalent, check_rewrite};
    use proptest::prelude::*;

    fn g(body: &str) -> String {
        format!("graph {{\n{body}\n}}\n")
    }

    /// (rule, start, goal) for every default rule.
    fn cases() -> Vec<(&'static str, String, String)> {
        let x3 = "  %x = input {name=\"x\"} : f32[A,B,C]";
        let x2 = "  %x = input {name=\"x\"} : f32[A,6]";
        vec![
            (
                "transpose-transpose",
                g(&format!("{x3}\n  %1 = transpose %x {{perm=[1,2,0]}} : f32[B,C,A]\n  %2 = transpose %1 {{perm=[1,0,2]}} : f32[C,B,A]\n  output \"y\" = %2")),
                g(&format!("{x3}\n  %1 = transpose %x {{perm=[2,1,0]}} : f32[C,B,A]\n  output \"y\" = %1")),
            ),
            (
                "transpose-identity",
                g(&format!("{x3}\n  %1 = transpose %x {{perm=[0,1,2]}} : f32[A,B,C]\n  %2 = exp %1 : f32[A,B,C]\n  output \"y\" = %2")),
                g(&format!("{x3}\n  %1 = exp %x : f32[A,B,C]\n  output \"y\" = %1")),
            ),
            (
                "transpose-transpose (to the identity)",
                g(&format!("{x3}\n  %1 = transpose %x {{perm=[1,2,0]}} : f32[B,C,A]\n  %2 = transpose %1 {{perm=[2,0,1]}} : f32[A,B,C]\n  output \"y\" = %2")),
                g(&format!("{x3}\n  output \"y\" = %x")),
            ),
            (
                "reshape-reshape",
                g(&format!("{x2}\n  %1 = reshape %x : f32[A,2,3]\n  %2 = reshape %1 : f32[A,3,2]\n  output \"y\" = %2")),
                g(&format!("{x2}\n  %1 = reshape %x : f32[A,3,2]\n  output \"y\" = %1")),
            ),
            (
                "reshape-identity",
                g(&format!("{x2}\n  %1 = reshape %x : f32[A,6]\n  %2 = exp %1 : f32[A,6]\n  %3 = reshape %x : f32[A,2,3]\n  %4 = reshape %3 : f32[A,6]\n  output \"y\" = %2\n  output \"z\" = %4")),
                g(&format!("{x2}\n  %1 = exp %x : f32[A,6]\n  output \"y\" = %1\n  output \"z\" = %x")),
            ),
            (
                "slice-full",
                g(&format!("{x2}\n  %1 = slice %x {{axis=1, start=0, end=6}} : f32[A,6]\n  %2 = exp %1 : f32[A,6]\n  output \"y\" = %2")),
                g(&format!("{x2}\n  %1 = exp %x : f32[A,6]\n  output \"y\" = %1")),
            ),
            (
                "slice-slice",
                g(&format!("{x2}\n  %1 = slice %x {{axis=1, start=2, end=6}} : f32[A,4]\n  %2 = slice %1 {{axis=1, start=1, end=3}} : f32[A,2]\n  output \"y\" = %2")),
                g(&format!("{x2}\n  %1 = slice %x {{axis=1, start=3, end=5}} : f32[A,2]\n  output \"y\" = %1")),
            ),
            (
                "slice-concat",
                g(&format!("{x2}\n  %z = input {{name=\"z\"}} : f32[A,2]\n  %1 = concat %x, %z {{axis=1}} : f32[A,8]\n  %2 = slice %1 {{axis=1, start=6, end=8}} : f32[A,2]\n  %3 = slice %1 {{axis=1, start=1, end=3}} : f32[A,2]\n  %4 = add %2, %3 : f32[A,2]\n  output \"y\" = %4")),
                g(&format!("{x2}\n  %z = input {{name=\"z\"}} : f32[A,2]\n  %1 = slice %x {{axis=1, start=1, end=3}} : f32[A,2]\n  %2 = add %z, %1 : f32[A,2]\n  output \"y\" = %2")),
            ),
            (
                "concat-slices",
                g("  %x = input {name=\"x\"} : f32[A,B,8]\n  %1 = slice %x {axis=2, start=0, end=4} : f32[A,B,4]\n  %2 = slice %x {axis=2, start=4, end=8} : f32[A,B,4]\n  %3 = concat %1, %2 {axis=2} : f32[A,B,8]\n  %4 = slice %x {axis=2, start=2, end=3} : f32[A,B,1]\n  %5 = slice %x {axis=2, start=3, end=5} : f32[A,B,2]\n  %6 = concat %4, %5 {axis=2} : f32[A,B,3]\n  output \"y\" = %3\n  output \"z\" = %6"),
                g("  %x = input {name=\"x\"} : f32[A,B,8]\n  %1 = slice %x {axis=2, start=2, end=5} : f32[A,B,3]\n  output \"y\" = %x\n  output \"z\" = %1"),
            ),
            (
                "concat-single",
                g(&format!("{x2}\n  %1 = concat %x {{axis=0}} : f32[A,6]\n  output \"y\" = %1")),
                g(&format!("{x2}\n  output \"y\" = %x")),
            ),
            (
                "cast-identity",
                g(&format!("{x2}\n  %1 = cast %x : f32[A,6]\n  %2 = cast %1 : f64[A,6]\n  output \"y\" = %2")),
                g(&format!("{x2}\n  %1 = cast %x : f64[A,6]\n  output \"y\" = %1")),
            ),
            (
                "neg-neg",
                g(&format!("{x2}\n  %1 = neg %x : f32[A,6]\n  %2 = neg %1 : f32[A,6]\n  %3 = neg %2 : f32[A,6]\n  output \"y\" = %3")),
                g(&format!("{x2}\n  %1 = neg %x : f32[A,6]\n  output \"y\" = %1")),
            ),
            (
                "mul-one, add-zero, div-one, sub-zero",
                g(&format!("{x2}\n  %one = constant {{value=1}} : f32[]\n  %zero = constant {{value=0.0}} : f32[]\n  %1 = mul %one, %x : f32[A,6]\n  %2 = add %1, %zero : f32[A,6]\n  %3 = div %2, %one : f32[A,6]\n  %4 = sub %3, %zero : f32[A,6]\n  %5 = exp %4 : f32[A,6]\n  output \"y\" = %5")),
                g(&format!("{x2}\n  %1 = exp %x : f32[A,6]\n  output \"y\" = %1")),
            ),
            (
                "mul-const-const",
                g(&format!("{x2}\n  %a = constant {{value=2.0}} : f32[]\n  %b = constant {{value=3.0}} : f32[]\n  %1 = mul %x, %a : f32[A,6]\n  %2 = mul %b, %1 : f32[A,6]\n  output \"y\" = %2")),
                g(&format!("{x2}\n  %c = constant {{value=6.0}} : f32[]\n  %1 = mul %x, %c : f32[A,6]\n  output \"y\" = %1")),
            ),
            (
                "linear-activation",
                g("  %x = input {name=\"x\"} : f32[B,L,4]\n  %w = weight {name=\"w\"} : f32[6,4]\n  %b = weight {name=\"b\"} : f32[6]\n  %1 = linear %x, %w, %b : f32[B,L,6]\n  %2 = act %1 {fn=\"gelu\"} : f32[B,L,6]\n  output \"y\" = %2"),
                g("  %x = input {name=\"x\"} : f32[B,L,4]\n  %w = weight {name=\"w\"} : f32[6,4]\n  %b = weight {name=\"b\"} : f32[6]\n  %1 = linear %x, %w, %b {activation=\"gelu\"} : f32[B,L,6]\n  output \"y\" = %1"),
            ),
            (
                "linear-bias (then linear-activation)",
                g("  %x = input {name=\"x\"} : f32[B,L,4]\n  %w = weight {name=\"w\"} : f32[6,4]\n  %b = weight {name=\"b\"} : f32[6]\n  %1 = linear %x, %w : f32[B,L,6]\n  %2 = add %b, %1 : f32[B,L,6]\n  %3 = act %2 {fn=\"relu\"} : f32[B,L,6]\n  output \"y\" = %3"),
                g("  %x = input {name=\"x\"} : f32[B,L,4]\n  %w = weight {name=\"w\"} : f32[6,4]\n  %b = weight {name=\"b\"} : f32[6]\n  %1 = linear %x, %w, %b {activation=\"relu\"} : f32[B,L,6]\n  output \"y\" = %1"),
            ),
            (
                "attention-scale",
                g("  %q = input {name=\"q\"} : f32[B,L,8]\n  %k = input {name=\"k\"} : f32[B,L,8]\n  %c = constant {value=4.0} : f32[]\n  %d = constant {value=2.0} : f32[]\n  %1 = mul %c, %q : f32[B,L,8]\n  %2 = div %k, %d : f32[B,L,8]\n  %3 = attention %1, %2, %k {heads=2, scale=0.5} : f32[B,L,8]\n  output \"y\" = %3"),
                g("  %q = input {name=\"q\"} : f32[B,L,8]\n  %k = input {name=\"k\"} : f32[B,L,8]\n  %3 = attention %q, %k, %k {heads=2, scale=1.0} : f32[B,L,8]\n  output \"y\" = %3"),
            ),
            (
                "attention-scale (normalized keys keep their factor)",
                g("  %q = input {name=\"q\"} : f32[B,L,8]\n  %k = input {name=\"k\"} : f32[B,L,8]\n  %c = constant {value=2.0} : f32[]\n  %1 = mul %q, %c : f32[B,L,8]\n  %2 = mul %k, %c : f32[B,L,8]\n  %3 = attention %1, %2, %q {heads=2, key_norm, scale=0.25, self_mask} : f32[B,L,8]\n  output \"y\" = %3"),
                g("  %q = input {name=\"q\"} : f32[B,L,8]\n  %k = input {name=\"k\"} : f32[B,L,8]\n  %c = constant {value=2.0} : f32[]\n  %2 = mul %k, %c : f32[B,L,8]\n  %3 = attention %q, %2, %q {heads=2, key_norm, scale=0.5, self_mask} : f32[B,L,8]\n  output \"y\" = %3"),
            ),
            (
                "cse and dce",
                g(&format!("{x2}\n  %1 = exp %x : f32[A,6]\n  %2 = exp %x : f32[A,6]\n  %3 = tanh %x : f32[A,6]\n  %4 = add %1, %2 : f32[A,6]\n  output \"y\" = %4")),
                g(&format!("{x2}\n  %1 = exp %x : f32[A,6]\n  %2 = add %1, %1 : f32[A,6]\n  output \"y\" = %2")),
            ),
        ]
    }

    #[test]
    fn start_goal() {
        let pass = SimplifyPass::new();
        for (rule, start, goal) in cases() {
            let notes = check_rewrite(&pass, &start, &goal);
            assert!(notes[0].starts_with("saturated"), "{rule}: {notes:?}");
            for name in rule
                .split(&[',', ' ', '(', ')'][..])
                .filter(|n| n.contains('-'))
            {
                if all_rules().iter().any(|r| r.name == name) {
                    assert!(
                        notes.iter().any(|n| n.contains(name)),
                        "{rule}: `{name}` did not fire: {notes:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_rule_has_a_case_and_a_unique_name() {
        let names: Vec<&str> = all_rules().iter().map(|r| r.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        let covered: String = cases().iter().map(|c| c.0).collect::<Vec<_>>().join(" ");
        for r in fold_rules()
            .iter()
            .chain(&arith_rules())
            .chain(&fuse_rules())
        {
            assert!(
                covered.contains(r.name),
                "no start => goal case for {}",
                r.name
            );
        }
    }

    #[test]
    fn regions_are_simplified_one_by_one() {
        let start = g("  %x = input {name=\"x\"} : f32[B,L,8]\n  %w = weight {name=\"w\"} : f32[4,4]\n  %r = reversible_block %x : f32[B,L,8] {\n    f(%a: f32[B,L,4]) {\n      %1 = linear %a, %w : f32[B,L,4]\n      %2 = act %1 {fn=\"relu\"} : f32[B,L,4]\n      yield %2\n    }\n    g(%b: f32[B,L,4]) {\n      %3 = neg %b : f32[B,L,4]\n      %4 = neg %3 : f32[B,L,4]\n      %5 = exp %4 : f32[B,L,4]\n      yield %5\n    }\n  }\n  output \"y\" = %r");
        let goal = g("  %x = input {name=\"x\"} : f32[B,L,8]\n  %w = weight {name=\"w\"} : f32[4,4]\n  %r = reversible_block %x : f32[B,L,8] {\n    f(%a: f32[B,L,4]) {\n      %1 = linear %a, %w {activation=\"relu\"} : f32[B,L,4]\n      yield %1\n    }\n    g(%b: f32[B,L,4]) {\n      %5 = exp %b : f32[B,L,4]\n      yield %5\n    }\n  }\n  output \"y\" = %r");
        let mut pass = SimplifyPass::new();
        let notes = check_rewrite(&pass, &start, &goal);
        assert!(notes[0].contains("3 e-graphs"), "{notes:?}");
        // A region's argument may become its result.
        pass.phases = default_phases();
        let start = g("  %x = input {name=\"x\"} : f32[B,L,8]\n  %r = reversible_block %x : f32[B,L,8] {\n    f(%a: f32[B,L,4]) {\n      %1 = neg %a : f32[B,L,4]\n      %2 = neg %1 : f32[B,L,4]\n      yield %2\n    }\n    g(%b: f32[B,L,4]) {\n      yield %b\n    }\n  }\n  output \"y\" = %r");
        let goal = g("  %x = input {name=\"x\"} : f32[B,L,8]\n  %r = reversible_block %x : f32[B,L,8] {\n    f(%a: f32[B,L,4]) {\n      yield %a\n    }\n    g(%b: f32[B,L,4]) {\n      yield %b\n    }\n  }\n  output \"y\" = %r");
        check_rewrite(&pass, &start, &goal);
    }

    #[test]
    fn algebra_hits_the_node_limit_and_stays_correct() {
        // A chain of 12 additions: associativity and commutativity explode.
        let mut body = String::from("  %x0 = input {name=\"x0\"} : f32[N]\n");
        for i in 1..=12 {
            body.push_str(&format!("  %x{i} = input {{name=\"x{i}\"}} : f32[N]\n"));
        }
        body.push_str("  %s1 = add %x0, %x1 : f32[N]\n");
        for i in 2..=12 {
            body.push_str(&format!("  %s{i} = add %s{}, %x{i} : f32[N]\n", i - 1));
        }
        body.push_str("  output \"y\" = %s12");
        let text = g(&body);
        let original = reformc_ir::parse(&text).unwrap();
        let mut phases = default_phases();
        phases.push(Phase {
            name: "algebra",
            rules: algebra_rules(),
        });
        let limits = SaturationLimits {
            node_limit: 5_000,
            ..Default::default()
        };
        let pass = SimplifyPass::new().with_phases(phases).with_limits(limits);
        let mut a = original.clone();
        let report = pass.run_report(&mut a).unwrap();
        assert_eq!(
            report.stop_reason(),
            crate::eqsat::StopReason::NodeLimit,
            "{report}"
        );
        assert!(report.max_enodes <= 5_000 + 8, "{report}");
        assert_equivalent(&original, &a, 3, 3, 1e-5);
        // Deterministic: the same extraction twice.
        let mut b = original.clone();
        pass.run_report(&mut b).unwrap();
        assert_eq!(reformc_ir::print(&a), reformc_ir::print(&b));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut bad = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : i64[N]\n %1 = exp %0 : i64[N]\n output \"y\" = %1\n}").unwrap();
        let e = SimplifyPass::new()
            .run(&mut bad, &PassOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Both sides of every rule compute the same values on random shapes and tensors.
        #[test]
        fn rules_preserve_semantics(seed in any::<u64>()) {
            for (_, start, goal) in cases() {
                let a = reformc_ir::parse(&start).unwrap();
                let b = reformc_ir::parse(&goal).unwrap();
                assert_equivalent(&a, &b, seed, 1, 1e-5);
                let mut c = a.clone();
                SimplifyPass::new().run(&mut c, &PassOptions::default()).unwrap();
                assert_equivalent(&a, &c, seed ^ 1, 1, 1e-5);
            }
        }
    }
}
