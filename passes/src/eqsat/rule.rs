//! Rewrite rules over the IR language, written as Rust matchers.
//!
//! Rules need the attributes of the ops they match (permutations, scales,
//! slice ranges), so each rule is a function that looks at one e-node (of
//! one of the rule's root kinds) in one e-class and returns the right-hand
//! sides ([`Rhs`]) that are equal to that class. egg's search runs the
//! matcher over the classes holding a root kind (in class-id order) and
//! counts every right-hand side as one match, so egg's per-rule match limits
//! count rewrites; apply builds each right-hand side and unions it with the
//! class. Applying stops once the e-graph reaches the run's node limit
//! ([`IrRule::rewrite_with_cap`]).
//!
//! Every node a right-hand side builds gets its type from the IR's type
//! rules ([`super::analysis::infer_type`]); a rule must declare the type
//! only of ops whose type is not derivable (`reshape`, `cast`, ...). A type
//! that does not fit is a rule bug: it is reported, never silently merged.
//!
//! ```
//! use reformc_passes::eqsat::rule::{IrRule, Rhs};
//! use reformc_ir::OpKind;
//! // neg(neg(x)) = x
//! let rule = IrRule::new("neg-neg", &[OpKind::Neg], "neg(neg(x)) => x", |eg, _class, node| {
//!     reformc_passes::eqsat::rule::ir_nodes(eg, node.children[0], OpKind::Neg)
//!         .map(|(_, kids)| Rhs::Class(kids[0]))
//!         .collect()
//! });
//! assert_eq!(rule.name, "neg-neg");
//! ```

use super::analysis::{infer_type, IrEGraph, TypeAnalysis};
use super::lang::{IrNode, NodeOp};
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use reformc_ir::{Op, OpKind, TensorType};
use std::sync::{Arc, Mutex};

/// What a matcher returns: an expression to build, whose leaves are existing classes.
#[derive(Clone, Debug)]
pub enum Rhs {
    /// An existing e-class.
    Class(Id),
    /// A new op over built operands; `ty` is required only when the type
    /// rules cannot derive the result type.
    Node {
        /// The op to build (kind and attributes).
        op: Op,
        /// Its declared result type, or `None` to derive it from the children.
        ty: Option<TensorType>,
        /// Its operands, each an existing class or another node to build.
        children: Vec<Rhs>,
    },
}

impl Rhs {
    /// A node whose type is derived.
    pub fn node(op: Op, children: Vec<Rhs>) -> Rhs {
        Rhs::Node {
            op,
            ty: None,
            children,
        }
    }

    /// A node with a declared type (`reshape`, `cast`, `constant`, ...).
    pub fn typed(op: Op, ty: TensorType, children: Vec<Rhs>) -> Rhs {
        Rhs::Node {
            op,
            ty: Some(ty),
            children,
        }
    }
}

/// A rule's matcher: `(egraph, class, node)` to the right-hand sides equal to `class`.
pub type MatchFn = fn(&IrEGraph, Id, &IrNode) -> Vec<Rhs>;

/// One named rewrite rule.
#[derive(Clone, Copy)]
pub struct IrRule {
    /// Unique name, as reported in the saturation report.
    pub name: &'static str,
    /// Kinds of the root e-nodes the matcher looks at.
    pub roots: &'static [OpKind],
    /// `start => goal` in words, for `--explain` and the docs.
    pub summary: &'static str,
    /// Finds, for one root e-node of a class, the right-hand sides equal to
    /// that class.
    pub matcher: MatchFn,
}

impl std::fmt::Debug for IrRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.summary)
    }
}

impl IrRule {
    /// A rule from its parts.
    pub const fn new(
        name: &'static str,
        roots: &'static [OpKind],
        summary: &'static str,
        matcher: MatchFn,
    ) -> IrRule {
        IrRule {
            name,
            roots,
            summary,
            matcher,
        }
    }

    /// The egg rewrite that runs this rule, unbounded.
    pub fn rewrite(&self) -> Rewrite<IrNode, TypeAnalysis> {
        self.rewrite_with_cap(usize::MAX)
    }

    /// The egg rewrite that runs this rule and stops applying it once the
    /// e-graph holds `node_cap` e-nodes (egg itself checks its node limit
    /// only between rules, which lets one rule overshoot by a whole
    /// iteration's matches).
    pub fn rewrite_with_cap(&self, node_cap: usize) -> Rewrite<IrNode, TypeAnalysis> {
        let imp = RuleImpl {
            rule: *self,
            found: Arc::new(Mutex::new(Vec::new())),
            node_cap,
        };
        Rewrite::new(self.name, imp.clone(), imp)
            .expect("the applier binds what the searcher binds")
    }

    fn root_nodes<'a>(
        &'a self,
        eg: &'a IrEGraph,
        class: Id,
    ) -> impl Iterator<Item = &'a IrNode> + 'a {
        eg[class]
            .nodes
            .iter()
            .filter(|n| matches!(&*n.op, NodeOp::Ir { op, .. } if self.roots.contains(&op.kind)))
    }
}

/// The searcher and applier of one rule. Search runs the matcher and keeps
/// every right-hand side it found; each is one egg match (so egg's match
/// limits count rewrites), whose substitution binds `?rhs` to its index.
/// Apply builds the kept right-hand sides (their leaves are class ids, which
/// stay valid across unions).
#[derive(Clone)]
struct RuleImpl {
    rule: IrRule,
    found: Arc<Mutex<Vec<Rhs>>>,
    node_cap: usize,
}

fn rhs_var() -> Var {
    "?rhs".parse().expect("a valid variable name")
}

impl RuleImpl {
    fn search_class(
        &self,
        eg: &IrEGraph,
        eclass: Id,
        limit: usize,
        found: &mut Vec<Rhs>,
    ) -> Option<SearchMatches<'static, IrNode>> {
        let eclass = eg.find(eclass);
        let var = rhs_var();
        let mut substs = Vec::new();
        for n in self.rule.root_nodes(eg, eclass) {
            for rhs in (self.rule.matcher)(eg, eclass, n) {
                if substs.len() >= limit {
                    break;
                }
                let mut s = Subst::with_capacity(1);
                s.insert(var, Id::from(found.len()));
                found.push(rhs);
                substs.push(s);
            }
        }
        (!substs.is_empty()).then_some(SearchMatches {
            eclass,
            substs,
            ast: None,
        })
    }
}

impl Searcher<IrNode, TypeAnalysis> for RuleImpl {
    fn search_eclass_with_limit(
        &self,
        eg: &IrEGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, IrNode>> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        self.search_class(eg, eclass, limit, &mut found)
    }

    fn search_with_limit(&self, eg: &IrEGraph, mut limit: usize) -> Vec<SearchMatches<'_, IrNode>> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.clear();
        // Only classes holding a root kind, in a stable order.
        let mut classes: Vec<Id> = self
            .rule
            .roots
            .iter()
            .filter_map(|k| eg.classes_for_op(&(0, *k)))
            .flatten()
            .map(|c| eg.find(c))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        let mut out = Vec::new();
        for c in classes {
            if limit == 0 {
                break;
            }
            if let Some(m) = self.search_class(eg, c, limit, &mut found) {
                limit -= m.substs.len();
                out.push(m);
            }
        }
        out
    }

    fn vars(&self) -> Vec<Var> {
        vec![rhs_var()]
    }
}

impl Applier<IrNode, TypeAnalysis> for RuleImpl {
    fn apply_one(
        &self,
        eg: &mut IrEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<IrNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        if eg.total_size() >= self.node_cap {
            return vec![];
        }
        let rhs = {
            let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            match subst
                .get(rhs_var())
                .and_then(|i| found.get(usize::from(*i)))
            {
                Some(r) => r.clone(),
                None => return vec![],
            }
        };
        match build(eg, &rhs) {
            Ok(id) => {
                let class = eg.find(eclass);
                if eg.union(class, id) {
                    vec![eg.find(id)]
                } else {
                    vec![]
                }
            }
            Err(e) => {
                let msg = format!("rule `{}` built an ill-typed node: {e}", self.rule.name);
                debug_assert!(false, "{msg}");
                eg.analysis.errors.push(msg);
                vec![]
            }
        }
    }
}

/// Adds `rhs` to the e-graph; the class of its root.
///
/// Fails when a node's type cannot be derived (and none was declared) or
/// differs from the declared one.
pub fn build(eg: &mut IrEGraph, rhs: &Rhs) -> Result<Id, String> {
    match rhs {
        Rhs::Class(id) => Ok(eg.find(*id)),
        Rhs::Node { op, ty, children } => {
            let ids = children
                .iter()
                .map(|c| build(eg, c))
                .collect::<Result<Vec<_>, _>>()?;
            let types: Vec<TensorType> = ids.iter().map(|i| eg[*i].data.ty.clone()).collect();
            let refs: Vec<&TensorType> = types.iter().collect();
            let inferred = infer_type(op, &refs)?;
            let (payload, result) = match (inferred, ty) {
                (Some(t), None) => (None, t),
                (Some(t), Some(d)) if t == *d => (None, t),
                (Some(t), Some(d)) => {
                    return Err(format!("{op}: declared {d}, the type rules give {t}"))
                }
                (None, Some(d)) => (Some(d.clone()), d.clone()),
                (None, None) => {
                    return Err(format!(
                        "{op}: the result type is not derivable and none was declared"
                    ))
                }
            };
            if cfg!(debug_assertions) {
                super::analysis::check_node(op, &refs, &result)
                    .map_err(|e| format!("{op} : {result}: {e}"))?;
            }
            Ok(eg.add(IrNode::new(NodeOp::ir(op.clone(), payload), ids)))
        }
    }
}

/// The type of a class.
pub fn ty(eg: &IrEGraph, id: Id) -> &TensorType {
    &eg[id].data.ty
}

/// The value of a class holding a scalar constant.
pub fn constant(eg: &IrEGraph, id: Id) -> Option<f64> {
    eg[id].data.constant
}

/// True when `a` and `b` are the same class.
pub fn same(eg: &IrEGraph, a: Id, b: Id) -> bool {
    eg.find(a) == eg.find(b)
}

/// The plain IR nodes of kind `kind` in class `id`: `(op, children)`.
pub fn ir_nodes(eg: &IrEGraph, id: Id, kind: OpKind) -> impl Iterator<Item = (&Op, &[Id])> {
    eg[id]
        .nodes
        .iter()
        .filter_map(move |n| n.ir_of(kind).map(|op| (op, n.children.as_slice())))
}
