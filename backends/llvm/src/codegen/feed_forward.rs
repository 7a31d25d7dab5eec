//! `feed_forward` as one fused dense stack (`rc_dense_f32`: layer-norm
//! prologue, two linears) and each group of `feed_forward_grad`s (with the
//! `feed_forward` that may lead it) as one call of the runtime's blocked
//! backward kernel (`rc_feed_forward_grad_f32`), which writes every output
//! the group asks for.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `feed_forward(x, ln_w, ln_b, w1, b1, w2, b2)`: rows of `x` through the
    /// fused stack; `[rows, F]` values exist one block of rows at a time.
    pub(super) fn feed_forward(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let op = &fs.g.node(v).op;
        let act = op
            .activation()
            .map_err(|e| BackendError::Unsupported(format!("{what}: {e}")))?;
        let x = self.f32_operand(fs, v, 0)?;
        let p: Vec<Buf<'ctx>> = (1..7)
            .map(|i| self.f32_operand(fs, v, i))
            .collect::<Result<_>>()?;
        let (d, f) = (self.last(&x), p[2].dims[0]);
        let out = self.alloc_buf(fs, DType::F32, x.dims.clone(), &what)?;
        let eps = self.t.f32.const_float(op.float("eps").unwrap_or(1e-12));
        let args: [BasicMetadataValueEnum<'ctx>; 18] = [
            x.ptr.into(),
            d.into(),
            self.rows(&x)?.into(),
            d.into(),
            p[0].ptr.into(),
            p[1].ptr.into(),
            eps.into(),
            p[2].ptr.into(),
            p[3].ptr.into(),
            f.into(),
            self.i32c(abi::activation_code(act)).into(),
            p[4].ptr.into(),
            p[5].ptr.into(),
            d.into(),
            self.i32c(0).into(),
            out.ptr.into(),
            d.into(),
            self.i32c(0).into(),
        ];
        self.kernel(fs, v, "rc_dense_f32", &args)?;
        Ok(out)
    }

    /// A group ([`Fusion::group_of`], leader first; a lone
    /// `feed_forward_grad` alone): one kernel call writes the output of every
    /// member (a leading `feed_forward`'s too); the members' buffers are bound
    /// here, the leader's returned.
    pub(super) fn feed_forward_group(
        &self,
        fs: &mut Fs<'ctx, '_>,
        members: &[ValueId],
    ) -> Result<Buf<'ctx>> {
        let v = *members
            .first()
            .ok_or_else(|| BackendError::Internal("an empty feed-forward group".into()))?;
        let what = at(fs.g, &fs.numbering, v);
        let op = fs.g.node(v).op.clone();
        let act = op
            .activation()
            .map_err(|e| BackendError::Unsupported(format!("{what}: {e}")))?;
        let grad = (members.iter())
            .find(|&&m| fs.g.node(m).op.kind == OpKind::FeedForwardGrad)
            .copied()
            .ok_or_else(|| BackendError::Internal(format!("{what}: a group without gradients")))?;
        let x = self.f32_operand(fs, v, 0)?;
        let p: Vec<Buf<'ctx>> = (1..8)
            .map(|i| self.f32_operand(fs, grad, i))
            .collect::<Result<_>>()?;
        let (d, f) = (self.last(&x), p[2].dims[0]);
        // Kernel output 0 is the forward's, 1 + i the gradient of operand i.
        let slots = (members.iter())
            .map(|&m| {
                let node = fs.g.node(m);
                let wrt = node.op.str("wrt").unwrap_or("");
                match node.op.kind {
                    OpKind::FeedForward => Some(0),
                    _ => (reformc_ir::FEED_FORWARD_OPERANDS.iter())
                        .position(|n| *n == wrt)
                        .map(|i| i + 1),
                }
                .ok_or_else(|| BackendError::Internal(format!("{what}: wrt \"{wrt}\"")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut outs: [Option<Buf<'ctx>>; 8] = Default::default();
        for (&m, &i) in members.iter().zip(&slots) {
            let dims = match i {
                0 | 1 => x.dims.clone(),
                _ => p[i - 2].dims.clone(),
            };
            outs[i] = Some(self.alloc_buf(fs, DType::F32, dims, &at(fs.g, &fs.numbering, m))?);
        }
        let eps = self.t.f32.const_float(op.float("eps").unwrap_or(1e-12));
        let chunk = self.i64c(op.int("chunk").unwrap_or(1).max(1));
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = vec![
            x.ptr.into(),
            p[6].ptr.into(),
            self.rows(&x)?.into(),
            d.into(),
            f.into(),
            p[0].ptr.into(),
            p[1].ptr.into(),
            eps.into(),
            p[2].ptr.into(),
            p[3].ptr.into(),
            self.i32c(abi::activation_code(act)).into(),
            p[4].ptr.into(),
            p[5].ptr.into(),
            chunk.into(),
        ];
        let ptr = |o: &Option<Buf<'ctx>>| o.as_ref().map_or(self.null(), |b| b.ptr);
        args.extend(outs.iter().map(|o| BasicMetadataValueEnum::from(ptr(o))));
        self.kernel(fs, v, "rc_feed_forward_grad_f32", &args)?;
        let mut mine = None;
        for (&m, &i) in members.iter().zip(&slots) {
            let buf = outs[i].clone().ok_or_else(|| {
                BackendError::Internal(format!("{what}: a member's output was not computed"))
            })?;
            match m == v {
                true => mine = Some(buf),
                false => {
                    fs.vals.insert(m, buf);
                }
            }
        }
        mine.ok_or_else(|| BackendError::Internal(format!("{what}: no result")))
    }
}
