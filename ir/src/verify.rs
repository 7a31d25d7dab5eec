//! The verifier: structure, attributes, dominance and type rules of every op
//! (the per-op type rules are [`crate::check_type`]'s).
//!
//! Passes run it after every rewrite; a failure names the value (numbered as
//! the printer numbers it), the op and what was expected.

use crate::infer::{check_attrs, check_operand_count, check_type, expect, half_of_last};
use crate::{Dim, Graph, Node, OpKind, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What the verifier found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// The value as the printer names it (`%12`), or `output "name"`.
    pub at: String,
    /// The op's keyword, empty for graph-level errors.
    pub op: String,
    /// What rule was broken and what was expected or found.
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
            check_type(&node.op, &operand_types, &node.ty).map_err(fail)?;
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
    if kind == OpKind::Arg {
        return Err("`arg` is only valid as a region argument".into());
    }
    check_operand_count(kind, node.inputs.len())?;
    let regions = kind.schema().regions.len();
    if node.regions.len() != regions {
        return Err(format!(
            "takes {regions} regions, found {}",
            node.regions.len()
        ));
    }
    check_attrs(&node.op)
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
