//! Model ops with a runtime kernel each: token and axial position
//! embeddings, an unfused layer norm, and Philox normals (LSH rotations).

use super::*;

impl<'ctx> Gen<'ctx> {
    pub(super) fn embedding(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let ids = self.i64_operand(fs, v, 0)?;
        let table = self.f32_ranked(fs, v, 1, 2)?;
        let (vocab, width) = (table.dims[0], table.dims[1]);
        let mut dims = ids.dims.clone();
        dims.push(width);
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        let n = self.prod(&ids.dims)?;
        self.kernel(
            fs,
            v,
            "rc_embedding_f32",
            &[
                ids.ptr.into(),
                n.into(),
                table.ptr.into(),
                vocab.into(),
                width.into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn axial_pos_embedding(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
    ) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let pos = self.i64_operand(fs, v, 0)?;
        let w0 = self.f32_ranked(fs, v, 1, 3)?;
        let w1 = self.f32_ranked(fs, v, 2, 3)?;
        let (n0, d0) = (w0.dims[0], w0.dims[2]);
        let (n1, d1) = (w1.dims[1], w1.dims[2]);
        let n = self.prod(&pos.dims)?;
        let width = self.add(d0, d1)?;
        let out = self.alloc_buf(fs, DType::F32, vec![n, width], &what)?;
        self.kernel(
            fs,
            v,
            "rc_axial_pos_f32",
            &[
                pos.ptr.into(),
                n.into(),
                w0.ptr.into(),
                n0.into(),
                d0.into(),
                w1.ptr.into(),
                n1.into(),
                d1.into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn layer_norm(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let f32c = |x: f64| self.t.f32.const_float(x);
        let x = self.f32_operand(fs, v, 0)?;
        let w = self.f32_operand(fs, v, 1)?;
        let bias = self.f32_operand(fs, v, 2)?;
        let eps = op.float("eps").unwrap_or(1e-12);
        let out = self.alloc_buf(fs, DType::F32, x.dims.clone(), &what)?;
        let (rows, width) = (self.rows(&x)?, self.last(&x));
        self.kernel(
            fs,
            v,
            "rc_layer_norm_f32",
            &[
                x.ptr.into(),
                rows.into(),
                width.into(),
                w.ptr.into(),
                bias.ptr.into(),
                f32c(eps).into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }

    /// `layer_norm_grad(x, w, dy) {eps, wrt}`: the runtime's row kernel.
    pub(super) fn layer_norm_grad(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let x = self.f32_operand(fs, v, 0)?;
        let w = self.f32_operand(fs, v, 1)?;
        let dy = self.f32_operand(fs, v, 2)?;
        let eps = self.t.f32.const_float(op.float("eps").unwrap_or(1e-12));
        let wrt_w = op.str("wrt") == Some("w");
        let dims = if wrt_w {
            w.dims.clone()
        } else {
            x.dims.clone()
        };
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        let (rows, width) = (self.rows(&x)?, self.last(&x));
        self.kernel(
            fs,
            v,
            "rc_layer_norm_grad_f32",
            &[
                x.ptr.into(),
                rows.into(),
                width.into(),
                w.ptr.into(),
                dy.ptr.into(),
                eps.into(),
                self.i32c(i32::from(wrt_w)).into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn random_normal(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let what = at(fs.g, &fs.numbering, v);
        let seed = self.i64_operand(fs, v, 0)?;
        if node.ty.dtype != DType::F32 {
            return Err(BackendError::Unsupported(format!("{what}: f32 only")));
        }
        let dims = self.type_dims(fs, v)?;
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        let s = self.load(DType::I64, seed.ptr, self.i64c(0))?;
        let n = self.prod(&out.dims)?;
        let stream = self.node_attr_int(fs, v, "stream")?;
        self.kernel(
            fs,
            v,
            "rc_random_normal_f32",
            &[s.into(), self.i64c(stream).into(), n.into(), out.ptr.into()],
        )?;
        Ok(out)
    }

    /// `dropout_mask seed, like {p, stream}`: the runtime's Philox mask,
    /// bit-identical to the interpreter's.
    pub(super) fn dropout_mask(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let what = at(fs.g, &fs.numbering, v);
        if node.ty.dtype != DType::F32 {
            return Err(BackendError::Unsupported(format!("{what}: f32 only")));
        }
        let p = node
            .op
            .float("p")
            .ok_or_else(|| BackendError::Internal(format!("{what}: missing attribute `p`")))?;
        let seed = self.i64_operand(fs, v, 0)?;
        let dims = self.type_dims(fs, v)?;
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        let s = self.load(DType::I64, seed.ptr, self.i64c(0))?;
        let n = self.prod(&out.dims)?;
        let stream = self.node_attr_int(fs, v, "stream")?;
        self.kernel(
            fs,
            v,
            "rc_dropout_mask_f32",
            &[
                s.into(),
                self.i64c(stream).into(),
                self.t.f64.const_float(p).into(),
                n.into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }
}
