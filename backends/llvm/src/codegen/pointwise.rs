//! Elementwise ops, one loop per tree: an op whose operands were inlined by
//! the fusion plan (`reformc_passes::fusion`, `Fusion::inlined`) computes
//! them per element from their own operands, so a backward chain such as
//! `sub`, `mul`, `add` makes one pass over memory instead of three.
//!
//! Each op of the tree emits exactly the scalar operation it emits on its
//! own, so results are bit-identical to unfused code.

use super::*;
use reformc_ir::Elementwise;

/// One scalar operation of a tree, with what its kind needs.
#[derive(Clone, Copy)]
enum Scalar<'ctx> {
    Convert {
        from: DType,
        to: DType,
    },
    Unary {
        f: UnaryFn,
        act: Activation,
        dt: DType,
    },
    Binary {
        f: BinaryFn,
        dt: DType,
        msg: PointerValue<'ctx>,
    },
    Select,
}

/// A tree in post-order: each step reads leaves or earlier steps.
enum Step<'ctx> {
    /// The value of leaf operand `i`.
    Leaf(usize),
    /// `op` applied to the results of the listed steps.
    Op(Scalar<'ctx>, Vec<usize>),
}

impl<'ctx> Gen<'ctx> {
    /// An elementwise op `v` and the inlined ops under it, as one loop.
    pub(super) fn pointwise(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let mut leaves = Vec::new();
        let mut steps = Vec::new();
        self.tree(fs, v, &mut leaves, &mut steps)?;
        for &u in &leaves {
            self.contiguous_value(fs, u)?;
        }
        let xs: Vec<Buf<'ctx>> = leaves
            .iter()
            .map(|u| {
                fs.vals.get(u).cloned().ok_or_else(|| {
                    BackendError::Internal(format!(
                        "{}: operand {} is not available (freed too early?)",
                        at(fs.g, &fs.numbering, v),
                        at(fs.g, &fs.numbering, *u)
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let (exit, out_dt) = (fs.exit, fs.g.ty(v).dtype);
        // Only integer division may stop the model; it is never part of a tree.
        let parallel = !steps.iter().any(|s| {
            matches!(s, Step::Op(Scalar::Binary { f: BinaryFn::Div, dt, .. }, _) if !dt.is_float())
        });
        self.elementwise_over(fs, v, &leaves, &xs, out_dt, parallel, &|g, vals| {
            let mut done: Vec<BasicValueEnum<'ctx>> = Vec::with_capacity(steps.len());
            for s in &steps {
                let r = match s {
                    Step::Leaf(i) => vals[*i],
                    Step::Op(op, args) => {
                        let a: Vec<BasicValueEnum<'ctx>> = args.iter().map(|k| done[*k]).collect();
                        g.scalar(*op, &a, exit)?
                    }
                };
                done.push(r);
            }
            done.pop()
                .ok_or_else(|| BackendError::Internal("empty elementwise tree".into()))
        })
    }

    /// Appends `v`'s tree (post-order) to `steps`, its stored operands to
    /// `leaves`; returns the index of `v`'s step.
    fn tree(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        leaves: &mut Vec<ValueId>,
        steps: &mut Vec<Step<'ctx>>,
    ) -> Result<usize> {
        let node = fs.g.node(v);
        let mut args = Vec::with_capacity(node.inputs.len());
        for &u in &node.inputs {
            let k = if fs.fusion.inlined.contains(&u) {
                self.tree(fs, u, leaves, steps)?
            } else {
                leaves.push(u);
                steps.push(Step::Leaf(leaves.len() - 1));
                steps.len() - 1
            };
            args.push(k);
        }
        steps.push(Step::Op(self.scalar_kind(fs, v)?, args));
        Ok(steps.len() - 1)
    }

    /// What one element of `v` computes.
    fn scalar_kind(&self, fs: &Fs<'ctx, '_>, v: ValueId) -> Result<Scalar<'ctx>> {
        let g = fs.g;
        let node = g.node(v);
        let what = at(g, &fs.numbering, v);
        let in_dt = |i: usize| node.inputs.get(i).map(|u| g.ty(*u).dtype);
        let dt = in_dt(0).ok_or_else(|| BackendError::Internal(format!("{what}: no operand")))?;
        Ok(match node.op.kind.facts().elementwise {
            Some(Elementwise::Cast) => Scalar::Convert {
                from: dt,
                to: node.ty.dtype,
            },
            Some(Elementwise::Unary(f)) => {
                let act = node
                    .op
                    .activation()
                    .map_err(|e| BackendError::Unsupported(format!("{what}: {e}")))?;
                if f != UnaryFn::Neg && !dt.is_float() {
                    return Err(BackendError::Unsupported(format!(
                        "{what}: float operand expected"
                    )));
                }
                Scalar::Unary { f, act, dt }
            }
            Some(Elementwise::Binary(f)) => {
                if in_dt(1) != Some(dt) {
                    return Err(BackendError::Internal(format!(
                        "{what}: operand dtypes differ"
                    )));
                }
                let msg = self.cstr(&format!("{what}: integer division by zero"));
                Scalar::Binary { f, dt, msg }
            }
            Some(Elementwise::Select) => {
                if dt != DType::Bool {
                    return Err(BackendError::Internal(format!(
                        "{what}: condition must be bool"
                    )));
                }
                Scalar::Select
            }
            Some(Elementwise::ActGrad) | None => {
                return Err(BackendError::Internal(format!(
                    "{what}: `{}` is not computed in an elementwise loop",
                    node.op.kind
                )))
            }
        })
    }

    /// One element of `op` on `a`.
    fn scalar(
        &self,
        op: Scalar<'ctx>,
        a: &[BasicValueEnum<'ctx>],
        exit: Exit<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        match op {
            Scalar::Convert { from, to } => self.convert(a[0], from, to),
            Scalar::Unary { f, act, dt } => self.unary(f, act, dt, a[0]),
            Scalar::Binary { f, dt, msg } => self.binary(f, dt, a[0], a[1], exit, msg),
            Scalar::Select => {
                let cond = self.b.build_int_compare(
                    IntPredicate::NE,
                    a[0].into_int_value(),
                    self.t.i8.const_zero(),
                    "c",
                )?;
                Ok(self.b.build_select(cond, a[1], a[2], "sel")?)
            }
        }
    }
}

impl<'ctx> Gen<'ctx> {
    /// True when one of `v`'s operands is computed inside `v`'s loop.
    pub(super) fn has_inlined_operand(&self, fs: &Fs<'ctx, '_>, v: ValueId) -> bool {
        fs.g.node(v)
            .inputs
            .iter()
            .any(|u| fs.fusion.inlined.contains(u))
    }
}
