//! Model-level ops over activations: embeddings, layer norm, linear layers.

use super::{tensor_of, tensor_ty, Emitter, Operand};
use crate::scalar::{constant_op, elt, Body};
use crate::MlirError;
use reformc_ir::{Activation, BinaryFn, DType, Dim, TensorType, UnaryFn, ValueId};

impl Emitter<'_> {
    /// The constant length of axis `i` of operand `x` of `v`, or an error
    /// naming `what` (weights have static shapes; a symbolic one cannot index).
    pub(super) fn weight_dim(
        &self,
        v: ValueId,
        x: ValueId,
        i: usize,
        what: &str,
    ) -> Result<u64, MlirError> {
        self.g
            .ty(x)
            .shape
            .get(i)
            .and_then(Dim::as_const)
            .ok_or_else(|| {
                MlirError::invalid(self.g, v, format!("{what} must have a constant size"))
            })
    }

    /// An integer scalar `x` of dtype `d` as an `index` clamped to
    /// `[0, hi]`: out-of-range ids read the nearest row instead of memory
    /// outside the table (the interpreter rejects them).
    pub(super) fn clamp_to_index(b: &mut Body, x: &str, d: DType, hi: &str) -> String {
        let i = b.def(format!("arith.index_cast {x} : {} to index", elt(d)));
        let zero = b.def("arith.constant 0 : index".into());
        let lo = b.def(format!("arith.maxsi {i}, {zero} : index"));
        b.def(format!("arith.minsi {lo}, {hi} : index"))
    }

    /// `embedding(ids, table)`: one parallel loop nest over `ids.shape + [D]`
    /// whose body reads `table[ids[..], d]` with `tensor.extract`.
    pub(super) fn embedding(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (ids, table) = (node.inputs[0], node.inputs[1]);
        let (ids_ty, t_ty, out_ty) = (
            self.g.ty(ids).clone(),
            self.g.ty(table).clone(),
            node.ty.clone(),
        );
        if t_ty.rank() != 2 || !ids_ty.dtype.is_int() || out_ty.rank() != ids_ty.rank() + 1 {
            return Err(MlirError::invalid(
                self.g,
                v,
                "embedding takes integer ids and a [V,D] table",
            ));
        }
        let vocab = self.weight_dim(v, table, 0, "the table")?;
        let hi = self.def(format!(
            "arith.constant {} : index",
            vocab.saturating_sub(1)
        ));
        let r = ids_ty.rank();
        let ins = [Operand {
            name: format!("%v{}", ids.0),
            ty: tensor_ty(&ids_ty),
            map: Self::identity(r),
        }];
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(r + 1),
        };
        let iters = vec!["parallel"; r + 1];
        let (tn, tt, idd) = (format!("%v{}", table.0), tensor_ty(&t_ty), ids_ty.dtype);
        let res = self.generic(&ins, out, &iters, elt(out_ty.dtype), |b, a| {
            let row = Self::clamp_to_index(b, &a[0], idd, &hi);
            let col = b.def(format!("linalg.index {r} : index"));
            b.def(format!("tensor.extract {tn}[{row}, {col}] : {tt}"))
        });
        Ok(self.alias(&res, &ty))
    }

    /// `axial_pos_embedding(pos, w0, w1)`: column `j` of row `p` reads
    /// `w0[p / n1, 0, j]` for `j < d0`, else `w1[0, p % n1, j - d0]`. Both
    /// reads are made with clamped indices and one is selected, so that no
    /// read leaves its table.
    pub(super) fn axial_pos_embedding(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (pos, w0, w1) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let out_ty = node.ty.clone();
        let (p_ty, t0, t1) = (
            self.g.ty(pos).clone(),
            self.g.ty(w0).clone(),
            self.g.ty(w1).clone(),
        );
        if p_ty.rank() != 1
            || !p_ty.dtype.is_int()
            || t0.rank() != 3
            || t1.rank() != 3
            || out_ty.rank() != 2
        {
            return Err(MlirError::invalid(
                self.g,
                v,
                "axial_pos_embedding takes pos [N], w0 [n0,1,d0], w1 [1,n1,d1]",
            ));
        }
        let n0 = self.weight_dim(v, w0, 0, "w0")?;
        let d0 = self.weight_dim(v, w0, 2, "w0")?;
        let n1 = self.weight_dim(v, w1, 1, "w1")?;
        let d1 = self.weight_dim(v, w1, 2, "w1")?;
        if n0 == 0 || n1 == 0 || d0 == 0 || d1 == 0 {
            return Err(MlirError::invalid(self.g, v, "empty axial weights"));
        }
        let c = |e: &mut Self, x: u64| e.def(format!("arith.constant {x} : index"));
        let (hi, cn1, cd0, cd0m, cd1m) = (
            c(self, n0 * n1 - 1),
            c(self, n1),
            c(self, d0),
            c(self, d0 - 1),
            c(self, d1 - 1),
        );
        let ins = [Operand {
            name: format!("%v{}", pos.0),
            ty: tensor_ty(&p_ty),
            map: vec!["d0".into()],
        }];
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(2),
        };
        let (a0, a1) = (format!("%v{}", w0.0), format!("%v{}", w1.0));
        let (ty0, ty1, pd, od) = (
            tensor_ty(&t0),
            tensor_ty(&t1),
            p_ty.dtype,
            elt(out_ty.dtype),
        );
        let res = self.generic(&ins, out, &["parallel", "parallel"], od, |b, a| {
            let p = Self::clamp_to_index(b, &a[0], pd, &hi);
            let j = b.def("linalg.index 1 : index".into());
            let zero = b.def("arith.constant 0 : index".into());
            let row0 = b.def(format!("arith.divui {p}, {cn1} : index"));
            let row1 = b.def(format!("arith.remui {p}, {cn1} : index"));
            let j0 = b.def(format!("arith.minui {j}, {cd0m} : index"));
            let jd = b.def(format!("arith.subi {j}, {cd0} : index"));
            let jd = b.def(format!("arith.maxsi {jd}, {zero} : index"));
            let j1 = b.def(format!("arith.minsi {jd}, {cd1m} : index"));
            let x0 = b.def(format!("tensor.extract {a0}[{row0}, {zero}, {j0}] : {ty0}"));
            let x1 = b.def(format!("tensor.extract {a1}[{zero}, {row1}, {j1}] : {ty1}"));
            let first = b.def(format!("arith.cmpi ult, {j}, {cd0} : index"));
            b.def(format!("arith.select {first}, {x0}, {x1} : {od}"))
        });
        Ok(self.alias(&res, &ty))
    }

    /// `layer_norm` as the interpreter computes it, in the element type:
    /// `mean = sum(x) / n`, `var = sum((x - mean)^2) / n` (two passes),
    /// `inv = 1 / sqrt(var + eps)`, then `(x - mean) * inv * w + b`.
    pub(super) fn layer_norm(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (x, w, bias) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let x_ty = self.g.ty(x).clone();
        let d = x_ty.dtype;
        if x_ty.rank() == 0
            || !d.is_float()
            || self.g.ty(w).rank() != 1
            || self.g.ty(bias).rank() != 1
        {
            return Err(MlirError::invalid(
                self.g,
                v,
                "layer_norm takes a float x and 1-D weight and bias",
            ));
        }
        let eps = node
            .op
            .float("eps")
            .ok_or_else(|| MlirError::invalid(self.g, v, "missing `eps`"))?;
        let rank = x_ty.rank();
        let last = rank - 1;
        let xn = format!("%v{}", x.0);
        let id = |_: &mut Body, a: &str| a.to_string();
        let (sum, map, shape) =
            self.reduce_into(v, &xn, &x_ty, &[last], false, BinaryFn::Add, id)?;
        let n = self.size(v, &x_ty.shape[last])?;
        let n = self.def(format!("arith.index_cast {n} : index to i64"));
        let n = self.def(format!("arith.sitofp {n} : i64 to {}", elt(d)));
        let mean = self.map_unary(v, &sum, &shape, d, |b, a| b.binary(BinaryFn::Div, a, &n, d))?;
        let red_ty = tensor_of(&shape, d);
        // Second pass: the sum of squared deviations.
        let zero = self.init(v, &shape, d, Some(0.0))?;
        let ins = [
            Operand {
                name: xn.clone(),
                ty: tensor_ty(&x_ty),
                map: Self::identity(rank),
            },
            Operand {
                name: mean.clone(),
                ty: red_ty.clone(),
                map: map.clone(),
            },
        ];
        let out = Operand {
            name: zero,
            ty: red_ty.clone(),
            map: map.clone(),
        };
        let iters = super::reduction_iterators(rank, &[last]);
        let sq = self.generic(&ins, out, &iters, elt(d), |b, a| {
            let t = b.binary(BinaryFn::Sub, &a[0], &a[1], d);
            let t2 = b.binary(BinaryFn::Mul, &t, &t, d);
            b.binary(BinaryFn::Add, &a[2], &t2, d)
        });
        let inv = self.map_unary(v, &sq, &shape, d, |b, a| {
            let var = b.binary(BinaryFn::Div, a, &n, d);
            let e = b.constant(d, eps);
            let s = b.binary(BinaryFn::Add, &var, &e, d);
            let r = b.unary(UnaryFn::Sqrt, Activation::None, &s, d);
            let one = b.constant(d, 1.0);
            b.binary(BinaryFn::Div, &one, &r, d)
        })?;
        let lastd = format!("d{last}");
        let ins = [
            Operand {
                name: xn,
                ty: tensor_ty(&x_ty),
                map: Self::identity(rank),
            },
            Operand {
                name: mean,
                ty: red_ty.clone(),
                map: map.clone(),
            },
            Operand {
                name: inv,
                ty: red_ty,
                map,
            },
            Operand {
                name: format!("%v{}", w.0),
                ty: tensor_ty(self.g.ty(w)),
                map: vec![lastd.clone()],
            },
            Operand {
                name: format!("%v{}", bias.0),
                ty: tensor_ty(self.g.ty(bias)),
                map: vec![lastd],
            },
        ];
        let init = self.init(v, &x_ty.shape, d, None)?;
        let ty = tensor_ty(&node.ty);
        let out = Operand {
            name: init,
            ty: tensor_ty(&x_ty),
            map: Self::identity(rank),
        };
        let r = self.generic(&ins, out, &vec!["parallel"; rank], elt(d), |b, a| {
            let c = b.binary(BinaryFn::Sub, &a[0], &a[1], d);
            let s = b.binary(BinaryFn::Mul, &c, &a[2], d);
            let s = b.binary(BinaryFn::Mul, &s, &a[3], d);
            b.binary(BinaryFn::Add, &s, &a[4], d)
        });
        Ok(format!("tensor.cast {r} : {} to {ty}", tensor_ty(&x_ty)))
    }

    /// `linear(x, w[, b])`: one contraction `linalg.generic` over
    /// `x.shape[..-1] + [N]` with the reduction `K` innermost (the
    /// transposed weight read through its indexing map), then one
    /// elementwise epilogue for the bias and the activation when there is one.
    pub(super) fn linear(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let bias = node.inputs.get(2).copied();
        let (x_ty, w_ty, out_ty) = (self.g.ty(x).clone(), self.g.ty(w).clone(), node.ty.clone());
        let d = out_ty.dtype;
        let r = x_ty.rank();
        if r == 0 || w_ty.rank() != 2 || out_ty.rank() != r || !d.is_float() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "linear takes x [..,K] and w [N,K]",
            ));
        }
        if bias.is_some_and(|b| self.g.ty(b).rank() != 1) {
            return Err(MlirError::invalid(self.g, v, "the bias must be 1-D"));
        }
        let act = node
            .op
            .activation()
            .map_err(|e| MlirError::invalid(self.g, v, e))?;
        let k_positive = matches!(w_ty.shape[1], Dim::Const(k) if k > 0);
        if self.own_pipeline && k_positive && x_ty.dtype == DType::F32 && w_ty.dtype == DType::F32 {
            let y = self.linear_fused(v, &x_ty, w, bias, act, &out_ty)?;
            return Ok(self.alias(&y, &tensor_ty(&out_ty)));
        }
        // The weight transposed once to [K,N], so that the innermost loop
        // runs over n: every output element still sums its k in order (the
        // interpreter's association), but the inner loop has independent
        // lanes, contiguous in `w^T` and in the result, which loop
        // vectorizers take without reassociating the sum.
        let (n_dim, k_dim) = (w_ty.shape[0].clone(), w_ty.shape[1].clone());
        let wt_shape = [k_dim, n_dim];
        let wt_ty = tensor_of(&wt_shape, w_ty.dtype);
        let wt0 = self.init(v, &wt_shape, w_ty.dtype, None)?;
        let wt = self.def(format!(
            "linalg.transpose ins(%v{} : {}) outs({wt0} : {wt_ty}) permutation = [1, 0]",
            w.0,
            tensor_ty(&w_ty)
        ));
        // Loops d0..d(r-2) index the rows, d(r-1) is k, d(r) is n.
        let rows: Vec<String> = (0..r - 1).map(|i| format!("d{i}")).collect();
        let (kd, nd) = (format!("d{}", r - 1), format!("d{r}"));
        let mut xm = rows.clone();
        xm.push(kd.clone());
        let mut om = rows;
        om.push(nd.clone());
        let ins = [
            Operand {
                name: format!("%v{}", x.0),
                ty: tensor_ty(&x_ty),
                map: xm,
            },
            Operand {
                name: wt,
                ty: wt_ty,
                map: vec![kd, nd],
            },
        ];
        if r >= 2 {
            let y = self.linear_named(v, &x_ty, &ins[1].name, &ins[1].ty, &out_ty)?;
            return self.linear_finish(v, y, bias, act, &out_ty);
        }
        let init = self.init(v, &out_ty.shape, d, Some(0.0))?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: om,
        };
        let mut iters = vec!["parallel"; r - 1];
        iters.extend(["reduction", "parallel"]);
        let y = self.generic(&ins, out, &iters, elt(d), |b, a| {
            let p = b.binary(BinaryFn::Mul, &a[0], &a[1], d);
            b.binary(BinaryFn::Add, &a[2], &p, d)
        });
        self.linear_finish(v, y, bias, act, &out_ty)
    }

    /// `x [.., K] · wt [K, N]` as one `linalg.matmul` on `x`'s rows
    /// collapsed to `[M, K]`, expanded back to `[.., N]`. A named 2-D matmul
    /// is what IREE's data tiling (`--iree-opt-data-tiling`) packs for its
    /// mmt4d kernels; it took the bench model's products from about 150 to
    /// 250-300 GFLOP/s there, while the same contraction as a 3-D
    /// `linalg.generic` was left untiled.
    fn linear_named(
        &mut self,
        v: ValueId,
        x_ty: &TensorType,
        wt: &str,
        wt_ty: &str,
        out_ty: &TensorType,
    ) -> Result<String, MlirError> {
        let r = x_ty.rank();
        let d = out_ty.dtype;
        let xn = format!("%v{}", self.g.node(v).inputs[0].0);
        let sizes = self.value_sizes(&xn, x_ty);
        let lead: Vec<String> = (0..r - 1).map(|i| i.to_string()).collect();
        let groups = format!("[{}], [{}]", lead.join(", "), r - 1);
        let (k, n) = (x_ty.shape[r - 1].clone(), out_ty.shape[r - 1].clone());
        let x2_ty = tensor_of(&[Dim::sym("__rows"), k], x_ty.dtype);
        let x2 = self.def(format!(
            "tensor.collapse_shape {xn} [{groups}] : {} into {x2_ty}",
            tensor_ty(x_ty)
        ));
        let c0 = self.def("arith.constant 0 : index".into());
        let m = self.def(format!("tensor.dim {x2}, {c0} : {x2_ty}"));
        let y2_ty = tensor_of(&[Dim::sym("__rows"), n.clone()], d);
        let e = self.def(format!("tensor.empty({m}) : {y2_ty}"));
        let z = self.def(constant_op(d, 0.0));
        let zero = self.def(format!(
            "linalg.fill ins({z} : {}) outs({e} : {y2_ty}) -> {y2_ty}",
            elt(d)
        ));
        let y2 = self.def(format!(
            "linalg.matmul ins({x2}, {wt} : {x2_ty}, {wt_ty}) outs({zero} : {y2_ty}) -> {y2_ty}"
        ));
        let mut out_sizes = sizes;
        out_sizes[r - 1] = match n {
            Dim::Const(c) => c.to_string(),
            _ => return Err(MlirError::invalid(self.g, v, "linear needs a constant N")),
        };
        // A `tensor.reshape` rather than `tensor.expand_shape`: MLIR 22's
        // `expand-strided-metadata` crashes on a `memref.expand_shape` that
        // splits one dynamic size into two (`[B L, N]` into `[B, L, N]`).
        let mut dims = Vec::new();
        for s in &out_sizes {
            dims.push(match s.parse::<u64>() {
                Ok(c) => self.def(format!("arith.constant {c} : index")),
                Err(_) => s.clone(),
            });
        }
        let shape = self.def(format!(
            "tensor.from_elements {} : tensor<{r}xindex>",
            dims.join(", ")
        ));
        Ok(self.def(format!(
            "tensor.reshape {y2}({shape}) : ({y2_ty}, tensor<{r}xindex>) -> {}",
            tensor_ty(out_ty)
        )))
    }

    /// The product `y` of a `linear` with its bias and activation applied.
    fn linear_finish(
        &mut self,
        v: ValueId,
        mut y: String,
        bias: Option<ValueId>,
        act: Activation,
        out_ty: &TensorType,
    ) -> Result<String, MlirError> {
        if bias.is_some() || act != Activation::None {
            y = self.linear_epilogue(v, &y, bias, act, out_ty)?;
        }
        Ok(self.alias(&y, &tensor_ty(out_ty)))
    }

    /// An f32 `linear` as one contraction marked with the `library_call` of
    /// [`crate::library_calls::linear_name`], reading `w [N,K]` in place:
    /// its body starts each sum from the bias (or zero) at `k = 0`, whatever
    /// `out` held, and applies the activation after the last `k`, so the
    /// generic alone is `act(x · wᵀ + b)`, and the runtime's GEMM computes it
    /// with the bias and activation in its epilogue (no pass of their own).
    fn linear_fused(
        &mut self,
        v: ValueId,
        x_ty: &TensorType,
        w: ValueId,
        bias: Option<ValueId>,
        act: Activation,
        out_ty: &TensorType,
    ) -> Result<String, MlirError> {
        let (r, d) = (x_ty.rank(), out_ty.dtype);
        let x = self.g.node(v).inputs[0];
        let k_len = match self.g.ty(w).shape[1] {
            Dim::Const(k) => k,
            Dim::Sym(_) => {
                return Err(MlirError::invalid(
                    self.g,
                    v,
                    "the weight's K must be known",
                ))
            }
        };
        let rows: Vec<String> = (0..r - 1).map(|i| format!("d{i}")).collect();
        let (kd, nd) = (format!("d{}", r - 1), format!("d{r}"));
        let mut ins = vec![
            Operand {
                name: format!("%v{}", x.0),
                ty: tensor_ty(x_ty),
                map: rows.iter().cloned().chain([kd.clone()]).collect(),
            },
            Operand {
                name: format!("%v{}", w.0),
                ty: tensor_ty(self.g.ty(w)),
                map: vec![nd.clone(), kd],
            },
        ];
        if let Some(b) = bias {
            ins.push(Operand {
                name: format!("%v{}", b.0),
                ty: tensor_ty(self.g.ty(b)),
                map: vec![nd.clone()],
            });
        }
        let out = Operand {
            name: self.init(v, &out_ty.shape, d, None)?,
            ty: tensor_ty(out_ty),
            map: rows.into_iter().chain([nd]).collect(),
        };
        let mut iters = vec!["parallel"; r - 1];
        iters.extend(["reduction", "parallel"]);
        let name = crate::library_calls::linear_name(r, bias.is_some(), act);
        let has_bias = bias.is_some();
        Ok(
            self.generic_call(&ins, out, &iters, elt(d), Some(&name), |b, a| {
                let k = b.def(format!("linalg.index {} : index", r - 1));
                let zero_i = b.def("arith.constant 0 : index".to_string());
                let first = b.def(format!("arith.cmpi eq, {k}, {zero_i} : index"));
                let start_val = match has_bias {
                    true => a[2].clone(),
                    false => b.constant(d, 0.0),
                };
                let acc_in = &a[a.len() - 1];
                let start = b.def(format!(
                    "arith.select {first}, {start_val}, {acc_in} : {}",
                    elt(d)
                ));
                let p = b.binary(BinaryFn::Mul, &a[0], &a[1], d);
                let acc = b.binary(BinaryFn::Add, &start, &p, d);
                if act == Activation::None {
                    return acc;
                }
                let last_i = b.def(format!(
                    "arith.constant {} : index",
                    k_len.saturating_sub(1)
                ));
                let last = b.def(format!("arith.cmpi eq, {k}, {last_i} : index"));
                let acted = b.activation(act, &acc, d);
                b.def(format!("arith.select {last}, {acted}, {acc} : {}", elt(d)))
            }),
        )
    }

    /// `act(y + b)` elementwise over the product `y` of type `out_ty`.
    fn linear_epilogue(
        &mut self,
        v: ValueId,
        y: &str,
        bias: Option<ValueId>,
        act: Activation,
        out_ty: &TensorType,
    ) -> Result<String, MlirError> {
        let (r, d) = (out_ty.rank(), out_ty.dtype);
        let ty = tensor_ty(out_ty);
        let mut ins = vec![Operand {
            name: y.to_string(),
            ty: ty.clone(),
            map: Self::identity(r),
        }];
        if let Some(b) = bias {
            ins.push(Operand {
                name: format!("%v{}", b.0),
                ty: tensor_ty(self.g.ty(b)),
                map: vec![format!("d{}", r - 1)],
            });
        }
        let init = self.init(v, &out_ty.shape, d, None)?;
        let out = Operand {
            name: init,
            ty,
            map: Self::identity(r),
        };
        let has_bias = bias.is_some();
        Ok(
            self.generic(&ins, out, &vec!["parallel"; r], elt(d), |b, a| {
                let s = if has_bias {
                    b.binary(BinaryFn::Add, &a[0], &a[1], d)
                } else {
                    a[0].clone()
                };
                b.activation(act, &s, d)
            }),
        )
    }

    /// The mixed (static or SSA) sizes of the value `x` of type `ty`: a
    /// constant dim as its number, a symbol as its bound value or else read
    /// with `tensor.dim`.
    pub(super) fn value_sizes(&mut self, x: &str, ty: &TensorType) -> Vec<String> {
        let t = tensor_ty(ty);
        let mut out = Vec::new();
        for (i, dim) in ty.shape.iter().enumerate() {
            match dim {
                Dim::Const(c) => out.push(c.to_string()),
                Dim::Sym(s) => match self.syms.get(s) {
                    Some(n) => out.push(n.clone()),
                    None => {
                        let c = self.def(format!("arith.constant {i} : index"));
                        out.push(self.def(format!("tensor.dim {x}, {c} : {t}")));
                    }
                },
            }
        }
        out
    }

    /// The `index` value of axis `i` of the value `x` of type `ty`.
    pub(super) fn axis_len(&mut self, x: &str, ty: &TensorType, i: usize) -> String {
        match &ty.shape[i] {
            Dim::Const(c) => self.def(format!("arith.constant {c} : index")),
            Dim::Sym(_) => {
                let c = self.def(format!("arith.constant {i} : index"));
                self.def(format!("tensor.dim {x}, {c} : {}", tensor_ty(ty)))
            }
        }
    }

    /// A scalar constant of dtype `d` as an SSA value.
    pub(super) fn fill_scalar(&mut self, d: DType, x: f64) -> String {
        self.def(constant_op(d, x))
    }
}
