//! Generic tensor ops (f32): batched matmul with broadcast batch dims,
//! reductions over axes, softmax, argmax, stable argsort and
//! `take_along_axis` gather, through the runtime's `runtime/src/tensor_ops.rs`
//! kernels on an `[outer, n, inner]` view around the axis.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `(outer, n, inner)` of `dims` around `axis`.
    pub(super) fn around(
        &self,
        dims: &[IntValue<'ctx>],
        axis: usize,
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>)> {
        Ok((
            self.prod(&dims[..axis])?,
            dims[axis],
            self.prod(&dims[axis + 1..])?,
        ))
    }

    pub(super) fn softmax(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let x = self.f32_operand(fs, v, 0)?;
        let axis = self.axis(fs, v, x.dims.len())?;
        let (outer, n, inner) = self.around(&x.dims, axis)?;
        let what = at(fs.g, &fs.numbering, v);
        let out = self.alloc_buf(fs, DType::F32, x.dims.clone(), &what)?;
        let args = [
            x.ptr.into(),
            outer.into(),
            n.into(),
            inner.into(),
            out.ptr.into(),
        ];
        self.kernel(fs, v, "rc_softmax_f32", &args)?;
        Ok(out)
    }

    /// Argmax (`sort` false) or argsort (`sort` true) along `axis`, of f32
    /// or i64 keys (the LSH lowering sorts integer bucket keys).
    pub(super) fn arg(&self, fs: &mut Fs<'ctx, '_>, v: ValueId, sort: bool) -> Result<Buf<'ctx>> {
        let x = match self.operand(fs, v, 0)?.dtype {
            DType::I64 => self.i64_operand(fs, v, 0)?,
            _ => self.f32_operand(fs, v, 0)?,
        };
        let kernel = match x.dtype {
            DType::I64 => "rc_arg_i64",
            _ => "rc_arg_f32",
        };
        let axis = self.axis(fs, v, x.dims.len())?;
        let (outer, n, inner) = self.around(&x.dims, axis)?;
        let mut dims = x.dims.clone();
        if !sort {
            dims.remove(axis);
        }
        let what = at(fs.g, &fs.numbering, v);
        let out = self.alloc_buf(fs, DType::I64, dims, &what)?;
        let args = [
            x.ptr.into(),
            outer.into(),
            n.into(),
            inner.into(),
            self.i32c(sort as i32).into(),
            out.ptr.into(),
        ];
        self.kernel(fs, v, kernel, &args)?;
        Ok(out)
    }

    /// `take_along_axis`: any element type, i64 indices of rank `k`; the data
    /// axes from `k` on travel whole, as one `rc_gather` element (a row).
    pub(super) fn gather(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let x = self.operand(fs, v, 0)?;
        let idx = self.i64_operand(fs, v, 1)?;
        let axis = self.axis(fs, v, x.dims.len())?;
        let k = idx.dims.len();
        if k <= axis || k > x.dims.len() {
            return Err(BackendError::Internal(format!(
                "{}: indices of rank {k} do not fit axis {axis}",
                at(fs.g, &fs.numbering, v)
            )));
        }
        let (outer, n, inner) = self.around(&x.dims[..k], axis)?;
        let row = self.prod(&x.dims[k..])?;
        let elem = self.mul(self.i64c(x.dtype.size_bytes() as i64), row)?;
        let what = at(fs.g, &fs.numbering, v);
        let mut dims = idx.dims.clone();
        dims.extend_from_slice(&x.dims[k..]);
        let out = self.alloc_buf(fs, x.dtype, dims, &what)?;
        let args = [
            x.ptr.into(),
            elem.into(),
            outer.into(),
            n.into(),
            inner.into(),
            idx.ptr.into(),
            idx.dims[axis].into(),
            out.ptr.into(),
        ];
        self.kernel(fs, v, "rc_gather", &args)?;
        Ok(out)
    }

    /// Reductions over `axes`, one axis at a time from the last (as the
    /// interpreter does); `keepdim` only changes the shape, not the layout.
    pub(super) fn reduce(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let kind = op
            .reduction()
            .map_err(|e| BackendError::Unsupported(format!("{what}: {e}")))?
            .code();
        let mut axes: Vec<usize> = op
            .ints("axes")
            .unwrap_or(&[])
            .iter()
            .map(|&a| a as usize)
            .collect();
        axes.sort_unstable_by(|a, b| b.cmp(a));
        axes.dedup();
        let x = self.f32_operand(fs, v, 0)?;
        let mut cur = x.clone();
        for (step, &a) in axes.iter().enumerate() {
            if a >= cur.dims.len() {
                return Err(BackendError::Internal(format!(
                    "{what}: axis {a} out of range"
                )));
            }
            let (outer, n, inner) = self.around(&cur.dims, a)?;
            let mut dims = cur.dims.clone();
            dims[a] = self.i64c(1);
            let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
            let args = [
                cur.ptr.into(),
                outer.into(),
                n.into(),
                inner.into(),
                self.i32c(kind).into(),
                out.ptr.into(),
            ];
            self.kernel(fs, v, "rc_reduce_f32", &args)?;
            if step > 0 {
                self.free_buf(&cur)?;
            }
            cur = out;
        }
        if axes.is_empty() {
            // Nothing to reduce: a copy (the result is a buffer of its own).
            let out = self.alloc_buf(fs, DType::F32, x.dims.clone(), &what)?;
            let n = self.prod(&x.dims)?;
            self.copy_elems(DType::F32, out.ptr, self.i64c(0), x.ptr, self.i64c(0), n)?;
            cur = out;
        }
        cur.dims = self.type_dims(fs, v)?;
        Ok(cur)
    }

    /// `[..., m, k] x [..., k, n]` with numpy-style broadcast batch dims: one
    /// `rc_matmul_f32` per batch index, or `rc_matmul_batch_f32` when both
    /// operands have the result's batch dims.
    pub(super) fn matmul(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, v);
        let inputs = &g.node(v).inputs;
        if inputs.iter().any(|u| fs.fusion.transposed.contains(u)) {
            return self.matmul_transposed(fs, v);
        }
        let (a, b) = (self.f32_operand(fs, v, 0)?, self.f32_operand(fs, v, 1)?);
        let (ra, rb) = (a.dims.len(), b.dims.len());
        if ra < 2 || rb < 2 {
            return Err(BackendError::Internal(format!(
                "{what}: operands need rank 2 or more"
            )));
        }
        let (m, k, n) = (a.dims[ra - 2], a.dims[ra - 1], b.dims[rb - 1]);
        let dims = self.type_dims(fs, v)?;
        let batch = &dims[..dims.len() - 2];
        let out = self.alloc_buf(fs, DType::F32, dims.clone(), &what)?;
        // Per operand and batch axis: its stride in matrices, or 0 where it broadcasts.
        let strides = |buf: &Buf<'ctx>, u: usize| -> Result<Vec<IntValue<'ctx>>> {
            let ty = g.ty(g.node(v).inputs[u]);
            let own = &buf.dims[..buf.dims.len() - 2];
            let mut s = vec![self.i64c(0); batch.len()];
            let mut acc = self.i64c(1);
            for (j, d) in own.iter().enumerate().rev() {
                let at_out = batch.len() - own.len() + j;
                if ty.shape[j] != Dim::Const(1) || g.ty(v).shape[at_out] == Dim::Const(1) {
                    s[at_out] = acc;
                }
                acc = self.mul(acc, *d)?;
            }
            Ok(s)
        };
        let full = |u: usize| {
            let t = g.ty(g.node(v).inputs[u]);
            t.rank() == dims.len() && t.shape[..batch.len()] == g.ty(v).shape[..batch.len()]
        };
        if !batch.is_empty() && full(0) && full(1) {
            // No operand broadcasts: the runtime spreads the pairs over the threads.
            let nb = self.prod(batch)?;
            let args = [
                a.ptr.into(),
                b.ptr.into(),
                nb.into(),
                m.into(),
                k.into(),
                n.into(),
                out.ptr.into(),
            ];
            self.kernel(fs, v, "rc_matmul_batch_f32", &args)?;
            return Ok(out);
        }
        let (sa, sb) = (strides(&a, 0)?, strides(&b, 1)?);
        let (mk, kn, mn) = (self.mul(m, k)?, self.mul(k, n)?, self.mul(m, n)?);
        self.for_nd(batch, &mut |idx| {
            let (mut oa, mut ob, mut oy) = (self.i64c(0), self.i64c(0), self.i64c(0));
            for (j, &i) in idx.iter().enumerate() {
                oa = self.add(oa, self.mul(i, sa[j])?)?;
                ob = self.add(ob, self.mul(i, sb[j])?)?;
                oy = self.add(self.mul(oy, batch[j])?, i)?;
            }
            let pa = self.gep(DType::F32, a.ptr, self.mul(oa, mk)?)?;
            let pb = self.gep(DType::F32, b.ptr, self.mul(ob, kn)?)?;
            let py = self.gep(DType::F32, out.ptr, self.mul(oy, mn)?)?;
            let args = [
                pa.into(),
                pb.into(),
                m.into(),
                k.into(),
                n.into(),
                py.into(),
            ];
            self.kernel(fs, v, "rc_matmul_f32", &args)
        })?;
        Ok(out)
    }

    /// A `matmul` reading one or both operands through a transpose of their
    /// last two axes that the fusion plan folded into it: the runtime packs
    /// tiles from the untransposed buffers (`rc_matmul_batch_t_f32`).
    fn matmul_transposed(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, v);
        let mut stored = Vec::with_capacity(2);
        let mut flags = Vec::with_capacity(2);
        for &u in &g.node(v).inputs {
            let t = fs.fusion.transposed.contains(&u);
            let src = if t { g.node(u).inputs[0] } else { u };
            self.contiguous_value(fs, src)?;
            let buf = fs.vals.get(&src).cloned().ok_or_else(|| {
                BackendError::Internal(format!(
                    "{what}: operand {} is not available",
                    at(g, &fs.numbering, src)
                ))
            })?;
            if buf.dtype != DType::F32 || buf.dims.len() < 2 {
                return Err(BackendError::Internal(format!(
                    "{what}: f32 matrices expected"
                )));
            }
            stored.push(buf);
            flags.push(t);
        }
        let (a, b) = (&stored[0], &stored[1]);
        let (ra, rb) = (a.dims.len(), b.dims.len());
        // Logical a: [m, k] (stored [k, m] when transposed); b: [k, n] ([n, k]).
        let (m, k) = match flags[0] {
            true => (a.dims[ra - 1], a.dims[ra - 2]),
            false => (a.dims[ra - 2], a.dims[ra - 1]),
        };
        let n = match flags[1] {
            true => b.dims[rb - 2],
            false => b.dims[rb - 1],
        };
        let dims = self.type_dims(fs, v)?;
        let nb = self.prod(&dims[..dims.len() - 2])?;
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        let args = [
            a.ptr.into(),
            b.ptr.into(),
            nb.into(),
            m.into(),
            k.into(),
            n.into(),
            self.i32c(flags[0] as i32).into(),
            self.i32c(flags[1] as i32).into(),
            out.ptr.into(),
        ];
        self.kernel(fs, v, "rc_matmul_batch_t_f32", &args)?;
        Ok(out)
    }
}
