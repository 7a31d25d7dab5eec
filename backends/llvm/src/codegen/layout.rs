//! Layout ops: slicing and truncation, padding to a chunk multiple,
//! reshape, transpose, concatenation and iota, as generated copy loops.

use super::*;

impl<'ctx> Gen<'ctx> {
    pub(super) fn slice_like(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let x = self.operand(fs, v, 0)?;
        let axis = self.axis(fs, v, x.dims.len())?;
        let n = x.dims[axis];
        let (start, len) = match op.kind {
            OpKind::Truncate => {
                let r = self.operand(fs, v, 1)?;
                let raxis = axis.min(r.dims.len().saturating_sub(1));
                (
                    self.i64c(0),
                    *r.dims.get(raxis).ok_or_else(|| {
                        BackendError::Internal(format!("{what}: reference has rank 0"))
                    })?,
                )
            }
            OpKind::Slice => {
                let s = self.node_attr_int(fs, v, "start")?;
                let e = self.node_attr_int(fs, v, "end")?;
                (self.i64c(s), self.i64c(e - s))
            }
            OpKind::Index => (self.i64c(self.node_attr_int(fs, v, "index")?), self.i64c(1)),
            other => {
                return Err(BackendError::Internal(format!(
                    "{what}: `{other}` is not a slice-like op"
                )))
            }
        };
        let end = self.add(start, len)?;
        let bad = self.b.build_or(
            self.b
                .build_int_compare(IntPredicate::SGT, end, n, "past")?,
            self.b
                .build_int_compare(IntPredicate::SLT, len, self.i64c(0), "neg")?,
            "bad",
        )?;
        let msg = self.cstr(&format!("{what}: range out of bounds of axis {axis}"));
        self.fail_if(fs.exit, bad, |g| {
            g.call_i32("rc_model_error", &[g.i32c(err::SHAPE).into(), msg.into()])
        })?;
        let mut dims = x.dims.clone();
        if op.kind == OpKind::Index {
            dims.remove(axis);
        } else {
            dims[axis] = len;
        }
        self.bind_result(fs, v, &dims)?;
        let outer = self.prod(&x.dims[..axis])?;
        let inner = self.prod(&x.dims[axis + 1..])?;
        let copy = |g: &Self, dst: PointerValue<'ctx>| {
            g.copy_axis_range(x.dtype, dst, x.ptr, (start, len, n), outer, inner)
        };
        let out =
            if op.kind == OpKind::Truncate && fs.fusion.take_input.contains(&v) && x.slot.is_some()
            {
                // Nothing to cut (L == P, the usual case) and the input dies here:
                // its buffer becomes the result.
                let whole = self
                    .b
                    .build_int_compare(IntPredicate::EQ, len, n, "whole")?;
                self.take_or_copy(fs, &x, whole, dims, &what, copy)?
            } else {
                let out = self.alloc_buf(fs, x.dtype, dims, &what)?;
                copy(self, out.ptr)?;
                out
            };
        Ok(out)
    }

    pub(super) fn pad_to_multiple(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let x = self.operand(fs, v, 0)?;
        let axis = self.axis(fs, v, x.dims.len())?;
        let m = self.node_attr_int(fs, v, "multiple")?.max(1);
        let min_len = self.node_attr_int(fs, v, "min_len")?;
        let n = x.dims[axis];
        let rem = self.b.build_int_signed_rem(n, self.i64c(m), "rem")?;
        let keep = self.b.build_or(
            self.b
                .build_int_compare(IntPredicate::SLE, n, self.i64c(min_len), "short")?,
            self.b
                .build_int_compare(IntPredicate::EQ, rem, self.i64c(0), "mult")?,
            "keep",
        )?;
        let up = self.add(self.b.build_int_sub(n, rem, "dn")?, self.i64c(m))?;
        let pn = self.b.build_select(keep, n, up, "pn")?.into_int_value();
        let mut dims = x.dims.clone();
        dims[axis] = pn;
        self.bind_result(fs, v, &dims)?;
        let out = self.alloc_buf(fs, x.dtype, dims.clone(), &what)?;
        let outer = self.prod(&x.dims[..axis])?;
        let inner = self.prod(&x.dims[axis + 1..])?;
        let fill = self.constant(x.dtype, op.attrs.get("value"))?;
        let (src_n, dst_n) = (self.mul(n, inner)?, self.mul(pn, inner)?);
        let dt = x.dtype;
        self.for_range(outer, &mut |o| {
            let so = self.mul(o, src_n)?;
            let dof = self.mul(o, dst_n)?;
            self.copy_elems(dt, out.ptr, dof, x.ptr, so, src_n)?;
            let extra = self.b.build_int_sub(dst_n, src_n, "extra")?;
            self.for_range(extra, &mut |j| {
                let idx = self.add(self.add(dof, src_n)?, j)?;
                self.store(dt, out.ptr, idx, fill)
            })
        })?;
        Ok(out)
    }

    pub(super) fn reshape(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let what = at(fs.g, &fs.numbering, v);
        let x = self.operand(fs, v, 0)?;
        let n = self.prod(&x.dims)?;
        let ty = node.ty.clone();
        // At most one unbound symbol: inferred from the element count.
        let mut known = self.i64c(1);
        let mut unknown = None;
        for (a, d) in ty.shape.iter().enumerate() {
            match d {
                Dim::Sym(s) if !fs.syms.contains_key(s) => {
                    if unknown.is_some() {
                        return Err(BackendError::Unsupported(format!(
                            "{what}: more than one new symbol in a reshape"
                        )));
                    }
                    unknown = Some((a, s.clone()));
                }
                d => known = self.mul(known, self.dim(fs, d, v)?)?,
            }
        }
        if let Some((_, s)) = &unknown {
            let x = self.b.build_int_signed_div(n, known, "inf")?;
            self.bind(fs, s, x, format!("set by {what}"))?;
        }
        let dims = self.type_dims(fs, v)?;
        let m = self.prod(&dims)?;
        let bad = self.b.build_int_compare(IntPredicate::NE, m, n, "bad")?;
        let msg = self.cstr(&format!("{what}: element count changes"));
        self.fail_if(fs.exit, bad, |g| {
            g.call_i32("rc_model_error", &[g.i32c(err::SHAPE).into(), msg.into()])
        })?;
        let copy = |g: &Self, dst: PointerValue<'ctx>| {
            g.copy_elems(x.dtype, dst, g.i64c(0), x.ptr, g.i64c(0), n)
        };
        if fs.fusion.take_input.contains(&v) && x.slot.is_some() && x.ld.is_none() {
            // The input dies here: its buffer, already in row-major order, is the result.
            let always = self.ctx.bool_type().const_int(1, false);
            return self.take_or_copy(fs, &x, always, dims, &what, copy);
        }
        let out = self.alloc_buf(fs, x.dtype, dims, &what)?;
        copy(self, out.ptr)?;
        Ok(out)
    }

    pub(super) fn transpose(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let x = self.operand(fs, v, 0)?;
        let perm: Vec<usize> = op
            .ints("perm")
            .unwrap_or(&[])
            .iter()
            .map(|&p| p as usize)
            .collect();
        if perm.len() != x.dims.len() || perm.iter().any(|&p| p >= x.dims.len()) {
            return Err(BackendError::Internal(format!("{what}: bad perm")));
        }
        let strides = self.strides(&x.dims)?;
        let dims: Vec<IntValue> = perm.iter().map(|&p| x.dims[p]).collect();
        let out = self.alloc_buf(fs, x.dtype, dims.clone(), &what)?;
        if let Some(a) = adjacent_swap(&perm) {
            // Tiled and threaded in the runtime.
            let args = [
                x.ptr.into(),
                self.i64c(x.dtype.size_bytes() as i64).into(),
                self.prod(&x.dims[..a])?.into(),
                x.dims[a].into(),
                x.dims[a + 1].into(),
                self.prod(&x.dims[a + 2..])?.into(),
                out.ptr.into(),
            ];
            self.kernel(fs, v, "rc_swap_axes", &args)?;
            return Ok(out);
        }
        let ostrides = self.strides(&dims)?;
        let dt = x.dtype;
        self.for_nd(&dims, &mut |idx| {
            let mut src = self.i64c(0);
            let mut dst = self.i64c(0);
            for (j, i) in idx.iter().enumerate() {
                src = self.add(src, self.mul(*i, strides[perm[j]])?)?;
                dst = self.add(dst, self.mul(*i, ostrides[j])?)?;
            }
            let e = self.load(dt, x.ptr, src)?;
            self.store(dt, out.ptr, dst, e)
        })?;
        Ok(out)
    }

    pub(super) fn concat(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let what = at(fs.g, &fs.numbering, v);
        let xs: Vec<Buf> = (0..node.inputs.len())
            .map(|i| self.operand(fs, v, i))
            .collect::<Result<_>>()?;
        let axis = self.axis(fs, v, xs[0].dims.len())?;
        let mut total = self.i64c(0);
        for x in &xs {
            total = self.add(total, x.dims[axis])?;
        }
        let mut dims = xs[0].dims.clone();
        dims[axis] = total;
        let dt = xs[0].dtype;
        let out = self.alloc_buf(fs, dt, dims, &what)?;
        let outer = self.prod(&xs[0].dims[..axis])?;
        let inner = self.prod(&xs[0].dims[axis + 1..])?;
        let dst_stride = self.mul(total, inner)?;
        let mut off = self.i64c(0);
        for x in &xs {
            let count = self.mul(x.dims[axis], inner)?;
            self.copy_blocks(
                dt,
                out.ptr,
                off,
                dst_stride,
                x.ptr,
                self.i64c(0),
                count,
                outer,
                count,
            )?;
            off = self.add(off, count)?;
        }
        Ok(out)
    }

    pub(super) fn iota(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let what = at(fs.g, &fs.numbering, v);
        let r = self.operand(fs, v, 0)?;
        let axis = self.axis(fs, v, r.dims.len())?;
        let n = r.dims[axis];
        self.bind_result(fs, v, &[n])?;
        let dt = node.ty.dtype;
        let out = self.alloc_buf(fs, dt, vec![n], &what)?;
        self.for_range(n, &mut |i| {
            let x = self.convert(i.into(), DType::I64, dt)?;
            self.store(dt, out.ptr, i, x)
        })?;
        Ok(out)
    }
}

/// `Some(a)` when `perm` swaps axes `a` and `a + 1` and keeps the others.
fn adjacent_swap(perm: &[usize]) -> Option<usize> {
    let a = perm.iter().enumerate().position(|(i, &p)| p != i)?;
    let swapped = perm.get(a + 1) == Some(&a) && perm[a] == a + 1;
    let rest = perm.iter().enumerate().skip(a + 2).all(|(i, &p)| p == i);
    (swapped && rest).then_some(a)
}

#[cfg(test)]
mod tests {
    use super::adjacent_swap;

    #[test]
    fn adjacent_swaps_are_recognised() {
        assert_eq!(adjacent_swap(&[1, 0]), Some(0));
        assert_eq!(adjacent_swap(&[0, 2, 1]), Some(1));
        assert_eq!(adjacent_swap(&[0, 2, 1, 3]), Some(1));
        assert_eq!(adjacent_swap(&[0, 1, 2, 4, 3]), Some(3));
        assert_eq!(adjacent_swap(&[0, 1, 2]), None);
        assert_eq!(adjacent_swap(&[2, 0, 1]), None);
        assert_eq!(adjacent_swap(&[1, 0, 3, 2]), None);
    }
}
