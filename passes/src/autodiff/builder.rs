//! Appending typed tensor ops to a graph: the vocabulary derivative rules speak.

use reformc_ir::{infer_type, Attr, DType, Dim, Graph, Op, OpKind, TensorType, ValueId};

/// Appends ops to the top-level body of a graph, deriving result types.
///
/// ```
/// use reformc_ir::{Attr, DType, Dim, Graph, Op, OpKind, TensorType};
/// use reformc_passes::autodiff::Builder;
/// let mut g = Graph::new();
/// let t = TensorType::new(DType::F32, vec![Dim::sym("N")]);
/// let x = g.add(Op::new(OpKind::Input).with("name", Attr::Str("x".into())), vec![], t);
/// let mut b = Builder::new(&mut g);
/// let y = b.mul(x, x).unwrap();
/// assert_eq!(b.ty(y).to_string(), "f32[N]");
/// ```
pub struct Builder<'g> {
    /// The graph being extended.
    pub g: &'g mut Graph,
}

/// A rule's result: a value, or why the rule could not build it.
pub type Built = Result<ValueId, String>;

impl<'g> Builder<'g> {
    /// A builder appending to `g`'s top-level body.
    pub fn new(g: &'g mut Graph) -> Self {
        Builder { g }
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }

    /// Appends `op` on `inputs`, its result type inferred.
    pub fn op(&mut self, op: Op, inputs: &[ValueId]) -> Built {
        let tys: Vec<TensorType> = inputs.iter().map(|v| self.ty(*v)).collect();
        let refs: Vec<&TensorType> = tys.iter().collect();
        let ty = infer_type(&op, &refs)
            .map_err(|e| format!("{}: {e}", op.kind))?
            .ok_or_else(|| format!("{} needs an explicit result type", op.kind))?;
        Ok(self.g.add(op, inputs.to_vec(), ty))
    }

    /// Appends `op` on `inputs` with the result type `ty` (reshape, cast, constants).
    pub fn op_ty(&mut self, op: Op, inputs: &[ValueId], ty: TensorType) -> ValueId {
        self.g.add(op, inputs.to_vec(), ty)
    }

    /// A scalar constant of `dtype`.
    pub fn constant(&mut self, value: f64, dtype: DType) -> ValueId {
        let attr = if dtype.is_float() {
            Attr::Float(value)
        } else {
            Attr::Int(value as i64)
        };
        let op = Op::new(OpKind::Constant).with("value", attr);
        self.g.add(op, vec![], TensorType::scalar(dtype))
    }

    /// Elementwise binary op `kind` (with broadcasting).
    pub fn binary(&mut self, kind: OpKind, a: ValueId, b: ValueId) -> Built {
        self.op(Op::new(kind), &[a, b])
    }

    /// `a + b`.
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Built {
        self.binary(OpKind::Add, a, b)
    }

    /// `a - b`.
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Built {
        self.binary(OpKind::Sub, a, b)
    }

    /// `a * b`.
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Built {
        self.binary(OpKind::Mul, a, b)
    }

    /// `a / b`.
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Built {
        self.binary(OpKind::Div, a, b)
    }

    /// `-x`.
    pub fn neg(&mut self, x: ValueId) -> Built {
        self.op(Op::new(OpKind::Neg), &[x])
    }

    /// `x * c` for a scalar constant `c` of `x`'s dtype.
    pub fn scale(&mut self, x: ValueId, c: f64) -> Built {
        let k = self.constant(c, self.ty(x).dtype);
        self.mul(x, k)
    }

    /// `x` broadcast to `like`'s shape (keeping `x`'s dtype).
    pub fn broadcast(&mut self, x: ValueId, like: ValueId) -> Built {
        self.op(Op::new(OpKind::Broadcast), &[x, like])
    }

    /// Zeros of `like`'s type.
    pub fn zeros_like(&mut self, like: ValueId) -> Built {
        let z = self.constant(0.0, self.ty(like).dtype);
        self.broadcast(z, like)
    }

    /// `x` reshaped to `ty`'s shape (same dtype).
    pub fn reshape(&mut self, x: ValueId, shape: Vec<Dim>) -> ValueId {
        let ty = TensorType::new(self.ty(x).dtype, shape);
        self.op_ty(Op::new(OpKind::Reshape), &[x], ty)
    }

    /// `x` converted to `dtype`.
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> ValueId {
        if self.ty(x).dtype == dtype {
            return x;
        }
        let ty = self.ty(x).with_dtype(dtype);
        self.op_ty(Op::new(OpKind::Cast), &[x], ty)
    }

    /// A reduction of `kind` (`sum`, `max`, ...) over `axes`.
    pub fn reduce(&mut self, x: ValueId, kind: &str, axes: &[usize], keepdim: bool) -> Built {
        let axes = axes.iter().map(|&a| a as i64).collect();
        let op = Op::new(OpKind::Reduce)
            .with("kind", Attr::Str(kind.into()))
            .with("axes", Attr::Ints(axes))
            .with_flag("keepdim", keepdim);
        self.op(op, &[x])
    }

    /// Transposes the last two axes.
    pub fn transpose_last2(&mut self, x: ValueId) -> Built {
        let n = self.ty(x).rank() as i64;
        let mut perm: Vec<i64> = (0..n).collect();
        perm.swap(n as usize - 1, n as usize - 2);
        self.op(
            Op::new(OpKind::Transpose).with("perm", Attr::Ints(perm)),
            &[x],
        )
    }

    /// `select(c, a, b)`.
    pub fn select(&mut self, c: ValueId, a: ValueId, b: ValueId) -> Built {
        self.op(Op::new(OpKind::Select), &[c, a, b])
    }

    /// `slice` of `[start, end)` along `axis`.
    pub fn slice(&mut self, x: ValueId, axis: usize, start: u64, end: u64) -> Built {
        let op = Op::new(OpKind::Slice)
            .with("axis", Attr::Int(axis as i64))
            .with("start", Attr::Int(start as i64))
            .with("end", Attr::Int(end as i64));
        self.op(op, &[x])
    }

    /// `concat` along `axis`.
    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> Built {
        let op = Op::new(OpKind::Concat).with("axis", Attr::Int(axis as i64));
        self.op(op, xs)
    }

    /// The gradient `g` (of a broadcast result) summed back to `target`'s type:
    /// leading axes and axes where `target` has 1 but `g` does not are summed.
    pub fn unbroadcast(&mut self, g: ValueId, target: &TensorType) -> Built {
        let gt = self.ty(g);
        if gt.shape == target.shape {
            return Ok(self.cast(g, target.dtype));
        }
        let lead = gt.rank().checked_sub(target.rank()).ok_or_else(|| {
            format!("cannot sum a gradient {gt} back to the larger type {target}")
        })?;
        let axes: Vec<usize> = (0..gt.rank())
            .filter(|&i| {
                i < lead
                    || (target.shape[i - lead] == Dim::Const(1) && gt.shape[i] != Dim::Const(1))
            })
            .collect();
        let summed = if axes.is_empty() {
            g
        } else {
            self.reduce(g, "sum", &axes, false)?
        };
        Ok(self.reshape(summed, target.shape.clone()))
    }

    /// Indices `start, start+1, ..` along `axis` of `like`, repeated along
    /// the axes before it: an i64 index of rank `axis + 1` (`like`'s shape up
    /// to `axis`), which `gather`/`scatter_add` apply to whole trailing rows,
    /// so no index element exists per element of `like`.
    pub fn axis_positions(&mut self, like: ValueId, axis: usize, start: u64) -> Built {
        let t = self.ty(like);
        let iota = self.op(
            Op::new(OpKind::Iota).with("axis", Attr::Int(axis as i64)),
            &[like],
        )?;
        let shifted = if start == 0 {
            iota
        } else {
            let s = self.constant(start as f64, DType::I64);
            self.add(iota, s)?
        };
        let along = |i: usize, d: &Dim| {
            let mut shape = vec![Dim::Const(1); axis + 1];
            shape[i] = d.clone();
            shape
        };
        let mut idx = self.reshape(shifted, along(axis, &t.shape[axis]));
        for i in (0..axis).filter(|&i| t.shape[i] != Dim::Const(1)) {
            let io = self.op(
                Op::new(OpKind::Iota).with("axis", Attr::Int(i as i64)),
                &[like],
            )?;
            let zeros = self.sub(io, io)?;
            let zeros = self.reshape(zeros, along(i, &t.shape[i]));
            idx = self.add(idx, zeros)?;
        }
        Ok(idx)
    }

    /// `scatter_add` of `src` into zeros of `like`'s shape along `axis`.
    pub fn scatter_add(&mut self, like: ValueId, idx: ValueId, src: ValueId, axis: usize) -> Built {
        let op = Op::new(OpKind::ScatterAdd).with("axis", Attr::Int(axis as i64));
        self.op(op, &[like, idx, src])
    }
}
