//! Index-driven tensor ops: gather, argmax, padding and truncation of an axis.

use super::{tensor_of, tensor_ty, Emitter, Operand};
use crate::scalar::elt;
use crate::MlirError;
use reformc_ir::{DType, Dim, ValueId};

impl Emitter<'_> {
    /// `gather(x, idx)`: a parallel loop nest over the result's shape whose body
    /// reads `x` at the loop's coordinates with the `axis` one replaced by the
    /// (clamped) index.
    pub(super) fn gather(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (x, idx) = (node.inputs[0], node.inputs[1]);
        let (x_ty, i_ty, out_ty) = (
            self.g.ty(x).clone(),
            self.g.ty(idx).clone(),
            node.ty.clone(),
        );
        let rank = x_ty.rank();
        let axis = self.axis(v, "axis", rank)?;
        let k = i_ty.rank();
        if k <= axis || k > rank || !i_ty.dtype.is_int() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "gather takes integer indices of a rank above the axis and at most the operand's",
            ));
        }
        let xn = format!("%v{}", x.0);
        let n = self.axis_len(&xn, &x_ty, axis);
        let one = self.def("arith.constant 1 : index".into());
        let hi = self.def(format!("arith.subi {n}, {one} : index"));
        let ins = [Operand {
            name: format!("%v{}", idx.0),
            ty: tensor_ty(&i_ty),
            // A lower-rank index serves every element of the trailing axes.
            map: Self::identity(k),
        }];
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(rank),
        };
        let (xt, id) = (tensor_ty(&x_ty), i_ty.dtype);
        let res = self.generic(
            &ins,
            out,
            &vec!["parallel"; rank],
            elt(out_ty.dtype),
            |b, a| {
                let at = Self::clamp_to_index(b, &a[0], id, &hi);
                let coords: Vec<String> = (0..rank)
                    .map(|i| {
                        if i == axis {
                            at.clone()
                        } else {
                            b.def(format!("linalg.index {i} : index"))
                        }
                    })
                    .collect();
                b.def(format!("tensor.extract {xn}[{}] : {xt}", coords.join(", ")))
            },
        );
        Ok(self.alias(&res, &ty))
    }

    /// `argmax(x) {axis}` with the interpreter's rule (the first strictly
    /// greater element wins, a NaN counts only in first place), in two
    /// passes: the maximum `m` ignoring NaNs, then the smallest index holding
    /// `m` (or 0 for a leading NaN). An empty axis gives 0.
    pub(super) fn argmax(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let rank = x_ty.rank();
        let axis = self.axis(v, "axis", rank)?;
        let d = x_ty.dtype;
        let (max_op, eq_op, lowest) = match d {
            DType::F32 | DType::F64 => (
                "arith.maxnumf",
                "arith.cmpf oeq,",
                crate::scalar::literal(d, f64::NEG_INFINITY),
            ),
            DType::I64 => ("arith.maxsi", "arith.cmpi eq,", i64::MIN.to_string()),
            DType::I32 => ("arith.maxsi", "arith.cmpi eq,", i32::MIN.to_string()),
            DType::Bool => ("arith.maxui", "arith.cmpi eq,", "false".to_string()),
        };
        let red: Vec<Dim> = x_ty
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != axis)
            .map(|(_, s)| s.clone())
            .collect();
        let map: Vec<String> = (0..rank)
            .filter(|&i| i != axis)
            .map(|i| format!("d{i}"))
            .collect();
        let (xt, rt, e) = (tensor_ty(&x_ty), tensor_of(&red, d), elt(d));
        let iters = super::reduction_iterators(rank, &[axis]);
        let xn = format!("%v{}", x.0);
        // Pass 1: the maximum over non-NaN elements.
        let m0 = self.init(v, &red, d, None)?;
        let low = self.def(format!("arith.constant {lowest} : {e}"));
        let m0 = self.def(format!(
            "linalg.fill ins({low} : {e}) outs({m0} : {rt}) -> {rt}"
        ));
        let ins = [Operand {
            name: xn.clone(),
            ty: xt.clone(),
            map: Self::identity(rank),
        }];
        let out = Operand {
            name: m0,
            ty: rt.clone(),
            map: map.clone(),
        };
        let m = self.generic(&ins, out, &iters, e, |b, a| {
            b.def(format!("{max_op} {}, {} : {e}", a[1], a[0]))
        });
        // Pass 2: the first index holding the maximum.
        let it = tensor_of(&red, DType::I64);
        let i0 = self.init(v, &red, DType::I64, Some(i64::MAX as f64))?;
        let ins = [
            Operand {
                name: xn,
                ty: xt,
                map: Self::identity(rank),
            },
            Operand {
                name: m,
                ty: rt,
                map: map.clone(),
            },
        ];
        let out = Operand {
            name: i0,
            ty: it,
            map,
        };
        let float = d.is_float();
        let found = self.generic(&ins, out, &iters, "i64", |b, a| {
            let i = b.def(format!("linalg.index {axis} : index"));
            let i = b.def(format!("arith.index_cast {i} : index to i64"));
            let mut hit = b.def(format!("{eq_op} {}, {} : {e}", a[0], a[1]));
            if float {
                let nan = b.def(format!("arith.cmpf uno, {}, {} : {e}", a[0], a[0]));
                let zero = b.def("arith.constant 0 : i64".into());
                let first = b.def(format!("arith.cmpi eq, {i}, {zero} : i64"));
                let lead = b.def(format!("arith.andi {nan}, {first} : i1"));
                hit = b.def(format!("arith.ori {hit}, {lead} : i1"));
            }
            let big = b.def(format!("arith.constant {} : i64", i64::MAX));
            let cand = b.def(format!("arith.select {hit}, {i}, {big} : i64"));
            b.def(format!("arith.minsi {}, {cand} : i64", a[2]))
        });
        let res = if x_ty.shape[axis].as_const().is_some_and(|n| n > 0) {
            found
        } else {
            self.map_unary(v, &found, &red, DType::I64, |b, a| {
                let big = b.def(format!("arith.constant {} : i64", i64::MAX));
                let none = b.def(format!("arith.cmpi eq, {a}, {big} : i64"));
                let zero = b.def("arith.constant 0 : i64".into());
                b.def(format!("arith.select {none}, {zero}, {a} : i64"))
            })?
        };
        Ok(self.alias(&res, &tensor_ty(&node.ty)))
    }

    /// `pad_to_multiple(x) {axis, multiple, min_len, value}`: the padded
    /// length `p` computed at run time (HF's rule, `hf_rules::padded_len`), a
    /// tensor of `p` filled with `value`, and `x` inserted at its start.
    pub(super) fn pad_to_multiple(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let (x_ty, out_ty) = (self.g.ty(x).clone(), node.ty.clone());
        let axis = self.axis(v, "axis", x_ty.rank())?;
        let multiple = self.nonneg(v, "multiple")?;
        let min_len = self.nonneg(v, "min_len")?;
        let value = node
            .op
            .float("value")
            .ok_or_else(|| MlirError::invalid(self.g, v, "missing `value`"))?;
        if out_ty.rank() != x_ty.rank() || out_ty.dtype != x_ty.dtype {
            return Err(MlirError::invalid(
                self.g,
                v,
                "the result must have the operand's rank and dtype",
            ));
        }
        let (xn, xt, ty) = (format!("%v{}", x.0), tensor_ty(&x_ty), tensor_ty(&out_ty));
        if multiple <= 1 {
            return Ok(format!("tensor.cast {xn} : {xt} to {ty}"));
        }
        let n = self.axis_len(&xn, &x_ty, axis);
        let c = |e: &mut Self, k: u64| e.def(format!("arith.constant {k} : index"));
        let (cm, cmin, zero) = (c(self, multiple), c(self, min_len), c(self, 0));
        let rem = self.def(format!("arith.remui {n}, {cm} : index"));
        let exact = self.def(format!("arith.cmpi eq, {rem}, {zero} : index"));
        let short = self.def(format!("arith.cmpi ule, {n}, {cmin} : index"));
        let keep = self.def(format!("arith.ori {exact}, {short} : i1"));
        let up = self.def(format!("arith.ceildivui {n}, {cm} : index"));
        let up = self.def(format!("arith.muli {up}, {cm} : index"));
        let p = self.def(format!("arith.select {keep}, {n}, {up} : index"));
        let mut sizes = Vec::new();
        for (i, dim) in out_ty.shape.iter().enumerate() {
            match dim {
                Dim::Const(_) => {}
                Dim::Sym(_) if i == axis => sizes.push(p.clone()),
                Dim::Sym(_) => sizes.push(self.axis_len(&xn, &x_ty, i)),
            }
        }
        let e = self.def(format!("tensor.empty({}) : {ty}", sizes.join(", ")));
        let fill = self.fill_scalar(out_ty.dtype, value);
        let d = elt(out_ty.dtype);
        let filled = self.def(format!(
            "linalg.fill ins({fill} : {d}) outs({e} : {ty}) -> {ty}"
        ));
        let src = self.value_sizes(&xn, &x_ty);
        let offs = vec!["0"; x_ty.rank()].join(", ");
        let ones = vec!["1"; x_ty.rank()].join(", ");
        Ok(format!(
            "tensor.insert_slice {xn} into {filled}[{offs}] [{}] [{ones}] : {xt} into {ty}",
            src.join(", ")
        ))
    }

    /// `truncate(x, ref) {axis}`: `tensor.extract_slice` of the first `n`
    /// entries of `axis`, `n` read from `ref`.
    pub(super) fn truncate(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (x, r) = (node.inputs[0], node.inputs[1]);
        let (x_ty, r_ty, out_ty) = (self.g.ty(x).clone(), self.g.ty(r).clone(), node.ty.clone());
        let axis = self.axis(v, "axis", x_ty.rank())?;
        if axis >= r_ty.rank() || out_ty.rank() != x_ty.rank() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "axis out of range for the reference",
            ));
        }
        let xn = format!("%v{}", x.0);
        let mut sizes = Vec::new();
        for (i, dim) in out_ty.shape.iter().enumerate() {
            sizes.push(match dim {
                Dim::Const(c) => c.to_string(),
                Dim::Sym(_) if i == axis => self.axis_len(&format!("%v{}", r.0), &r_ty, axis),
                Dim::Sym(_) => self.axis_len(&xn, &x_ty, i),
            });
        }
        let offs = vec!["0"; x_ty.rank()].join(", ");
        let ones = vec!["1"; x_ty.rank()].join(", ");
        Ok(format!(
            "tensor.extract_slice {xn}[{offs}] [{}] [{ones}] : {} to {}",
            sizes.join(", "),
            tensor_ty(&x_ty),
            tensor_ty(&out_ty)
        ))
    }
}
