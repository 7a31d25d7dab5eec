//! Ops with regions: reversible blocks (inlined) and sequence chunking (a loop).

use super::{tensor_ty, Emitter, Operand, IND};
use crate::scalar::elt;
use crate::MlirError;
use reformc_ir::{BinaryFn, Dim, TensorType, ValueId};

impl Emitter<'_> {
    /// Emits every op of `body` (a region's ops) in place.
    fn emit_region_ops(&mut self, body: &[ValueId]) -> Result<(), MlirError> {
        for &x in body {
            self.op(x)?;
        }
        Ok(())
    }

    /// The single argument and result of region `i` of `v`.
    fn region_arg_result(&self, v: ValueId, i: usize) -> Result<(ValueId, ValueId), MlirError> {
        let r = self
            .g
            .node(v)
            .regions
            .get(i)
            .ok_or_else(|| MlirError::invalid(self.g, v, "missing region"))?;
        match (r.args.as_slice(), r.results.as_slice()) {
            ([a], [y]) => Ok((*a, *y)),
            _ => Err(MlirError::invalid(
                self.g,
                v,
                "a region must take and yield one value",
            )),
        }
    }

    /// Binds the region argument `arg` to the value `x` (of MLIR type `xt`),
    /// reading any symbol its type introduces.
    fn bind_region_arg(&mut self, arg: ValueId, x: &str, xt: &str) {
        let at = tensor_ty(self.g.ty(arg));
        self.lines
            .push(format!("{IND}%v{} = tensor.cast {x} : {xt} to {at}", arg.0));
        self.bind_syms(arg);
    }

    /// `a + b` for two tensors of type `ty` (the residual additions), written
    /// into `into` (a slice of the block's result).
    fn residual_add(&mut self, a: &str, b: &str, ty: &TensorType, into: &str) -> String {
        let (r, d) = (ty.rank(), ty.dtype);
        let t = tensor_ty(ty);
        let ins = [
            Operand {
                name: a.to_string(),
                ty: t.clone(),
                map: Self::identity(r),
            },
            Operand {
                name: b.to_string(),
                ty: t.clone(),
                map: Self::identity(r),
            },
        ];
        let out = Operand {
            name: into.to_string(),
            ty: t,
            map: Self::identity(r),
        };
        self.generic(&ins, out, &vec!["parallel"; r], elt(d), |body, x| {
            body.binary(BinaryFn::Add, &x[0], &x[1], d)
        })
    }

    /// `reversible_block(x)`, inlined: `x1`, `x2` are the halves of the last
    /// axis, `y1 = x1 + f(x2)`, `y2 = x2 + g(y1)`, the result `concat(y1, y2)`.
    ///
    /// Each residual addition writes into its half of the result (an
    /// `extract_slice` of it as the addition's destination, inserted back),
    /// so bufferization computes `y1` and `y2` in place: a `tensor.concat`
    /// would copy both halves of the state once per layer.
    pub(super) fn reversible_block(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let rank = x_ty.rank();
        let d = x_ty.dtype;
        if rank == 0 || !d.is_float() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "reversible_block takes a float tensor",
            ));
        }
        let last = rank - 1;
        let (fa, fy) = self.region_arg_result(v, 0)?;
        let (ga, gy) = self.region_arg_result(v, 1)?;
        let half = match x_ty.shape[last] {
            Dim::Const(n) if n % 2 == 0 => Dim::Const(n / 2),
            _ => {
                return Err(MlirError::invalid(
                    self.g,
                    v,
                    "the last axis must have an even constant length",
                ))
            }
        };
        let mut h_ty = x_ty.clone();
        h_ty.shape[last] = half.clone();
        let hn = half.as_const().unwrap_or(0);
        let xn = format!("%v{}", x.0);
        let mut sizes = self.value_sizes(&xn, &x_ty);
        sizes[last] = hn.to_string();
        let (xt, ht) = (tensor_ty(&x_ty), tensor_ty(&h_ty));
        let ones = vec!["1"; rank].join(", ");
        let at = |start: u64| {
            let mut offs = vec!["0".to_string(); rank];
            offs[last] = start.to_string();
            format!("[{}] [{}] [{ones}]", offs.join(", "), sizes.join(", "))
        };
        let (lo, hi) = (at(0), at(hn));
        let x1 = self.def(format!("tensor.extract_slice {xn}{lo} : {xt} to {ht}"));
        let x2 = self.def(format!("tensor.extract_slice {xn}{hi} : {xt} to {ht}"));
        let yt = tensor_ty(&node.ty);
        let y = self.init(v, &node.ty.shape, d, None)?;
        let y1_dest = self.def(format!("tensor.extract_slice {y}{lo} : {yt} to {ht}"));
        self.bind_region_arg(fa, &x2, &ht);
        let (f_body, g_body) = (node.regions[0].body.clone(), node.regions[1].body.clone());
        self.emit_region_ops(&f_body)?;
        let fyn = self.cast_result(fy, &ht);
        let y1 = self.residual_add(&x1, &fyn, &h_ty, &y1_dest);
        self.bind_region_arg(ga, &y1, &ht);
        self.emit_region_ops(&g_body)?;
        let gyn = self.cast_result(gy, &ht);
        // Inserted after `g` has read `y1`: inserted before, one-shot
        // bufferization sees those reads after a write to the whole result
        // and computes `y1` out of place (a copy per layer).
        let y = self.def(format!(
            "tensor.insert_slice {y1} into {y}{lo} : {ht} into {yt}"
        ));
        let y2_dest = self.def(format!("tensor.extract_slice {y}{hi} : {yt} to {ht}"));
        let y2 = self.residual_add(&x2, &gyn, &h_ty, &y2_dest);
        Ok(format!(
            "tensor.insert_slice {y2} into {y}{hi} : {ht} into {yt}"
        ))
    }

    /// The value `y` cast to the MLIR type `to` (a region result whose
    /// declared type may name other symbols than the slot it fills).
    fn cast_result(&mut self, y: ValueId, to: &str) -> String {
        let yt = tensor_ty(self.g.ty(y));
        self.def(format!("tensor.cast %v{} : {yt} to {to}", y.0))
    }

    /// `seq_chunk(x) {axis, size}`: an `scf.for` over the chunk starts that
    /// carries the result tensor. Each iteration slices `min(size, n - start)`
    /// entries of `x`, emits the body with the chunk's symbol bound to that
    /// length, and inserts the body's result at `start`. Symbols bound inside
    /// the loop are forgotten after it (their values do not dominate the rest).
    pub(super) fn seq_chunk(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let (x_ty, out_ty) = (self.g.ty(x).clone(), node.ty.clone());
        let rank = x_ty.rank();
        let axis = self.axis(v, "axis", rank)?;
        let size = self.nonneg(v, "size")?.max(1);
        if out_ty.rank() != rank {
            return Err(MlirError::invalid(
                self.g,
                v,
                "the result must have the operand's rank",
            ));
        }
        let (arg, res) = self.region_arg_result(v, 0)?;
        let body = node.regions[0].body.clone();
        let xn = format!("%v{}", x.0);
        let (xt, ot) = (tensor_ty(&x_ty), tensor_ty(&out_ty));
        let n = self.axis_len(&xn, &x_ty, axis);
        let zero = self.def("arith.constant 0 : index".into());
        let step = self.def(format!("arith.constant {size} : index"));
        let mut out_sizes = Vec::new();
        for (i, dim) in out_ty.shape.iter().enumerate() {
            match dim {
                Dim::Const(_) => {}
                Dim::Sym(_) if i == axis => out_sizes.push(n.clone()),
                Dim::Sym(s) => out_sizes.push(self.syms.get(s).cloned().ok_or_else(|| {
                    MlirError::invalid(self.g, v, format!("dimension `{s}` is not bound"))
                })?),
            }
        }
        let init = self.def(format!("tensor.empty({}) : {ot}", out_sizes.join(", ")));
        let x_sizes = self.value_sizes(&xn, &x_ty);
        let (loop_v, start, acc) = (self.fresh(), self.fresh(), self.fresh());
        self.lines.push(format!(
            "{IND}{loop_v} = scf.for {start} = {zero} to {n} step {step} iter_args({acc} = {init}) -> ({ot}) {{"
        ));
        let saved = self.syms.clone();
        let left = self.def(format!("arith.subi {n}, {start} : index"));
        let len = self.def(format!("arith.minui {left}, {step} : index"));
        let mut c_ty = x_ty.clone();
        c_ty.shape[axis] = Dim::sym("?chunk");
        let ct = tensor_ty(&c_ty);
        let ones = vec!["1"; rank].join(", ");
        let mut offs = vec!["0".to_string(); rank];
        offs[axis] = start.clone();
        let mut sizes = x_sizes;
        sizes[axis] = len.clone();
        let chunk = self.def(format!(
            "tensor.extract_slice {xn}[{}] [{}] [{ones}] : {xt} to {ct}",
            offs.join(", "),
            sizes.join(", ")
        ));
        if let Dim::Sym(s) = &self.g.ty(arg).shape[axis] {
            self.syms.insert(s.clone(), len.clone());
        }
        self.bind_region_arg(arg, &chunk, &ct);
        let emitted = self.emit_region_ops(&body);
        let result = emitted.map(|()| {
            let r_ty = self.g.ty(res).clone();
            let rn = format!("%v{}", res.0);
            let r_sizes = self.value_sizes(&rn, &r_ty);
            let ins = self.fresh();
            self.lines.push(format!(
                "{IND}{ins} = tensor.insert_slice {rn} into {acc}[{}] [{}] [{ones}] : {} into {ot}",
                offs.join(", "),
                r_sizes.join(", "),
                tensor_ty(&r_ty)
            ));
            self.lines.push(format!("{IND}scf.yield {ins} : {ot}"));
            self.lines.push(format!("{IND}}}"));
        });
        self.syms = saved;
        result?;
        Ok(self.alias(&loop_v, &ot))
    }
}
