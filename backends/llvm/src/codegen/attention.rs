//! Attention ops: exact (optionally streamed over key chunks), local,
//! LSH hashing and fused LSH attention, each one runtime kernel call with
//! its operands checked and its output allocated.

use super::*;

/// Operands of a q/k/v attention op, with the head sizes and its output.
struct Qkv<'ctx> {
    q: Buf<'ctx>,
    k: Buf<'ctx>,
    val: Buf<'ctx>,
    mask: PointerValue<'ctx>,
    heads: IntValue<'ctx>,
    dqk: IntValue<'ctx>,
    dv: IntValue<'ctx>,
    scale: FloatValue<'ctx>,
    out: Buf<'ctx>,
}

impl<'ctx> Gen<'ctx> {
    /// Operands `q, k, v, mask?` of `v` (each `[B, L, H·d]`) and its `[B, Lq, H·dv]` output.
    fn qkv(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Qkv<'ctx>> {
        let q = self.f32_ranked(fs, v, 0, 3)?;
        let k = self.f32_ranked(fs, v, 1, 3)?;
        let val = self.f32_ranked(fs, v, 2, 3)?;
        let mask = self.opt_mask(fs, v, 3)?;
        let heads = self.i64c(self.node_attr_int(fs, v, "heads")?);
        let dqk = self.b.build_int_signed_div(self.last(&q), heads, "dqk")?;
        let dv = self.b.build_int_signed_div(self.last(&val), heads, "dv")?;
        let scale = fs.g.node(v).op.float("scale").unwrap_or(1.0);
        let mut dims = q.dims.clone();
        if let Some(l) = dims.last_mut() {
            *l = self.last(&val);
        }
        let what = at(fs.g, &fs.numbering, v);
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        Ok(Qkv {
            q,
            k,
            val,
            mask,
            heads,
            dqk,
            dv,
            scale: self.t.f32.const_float(scale),
            out,
        })
    }

    pub(super) fn attention(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let mut flags = 0;
        if op.flag("causal") {
            flags |= abi::flags::CAUSAL;
        }
        if op.flag("key_norm") {
            flags |= abi::flags::KEY_NORM;
        }
        if op.flag("self_mask") {
            flags |= abi::flags::SELF_MASK;
        }
        let kv_chunk = op.int("kv_chunk").unwrap_or(0);
        let a = self.qkv(fs, v)?;
        self.kernel(
            fs,
            v,
            "rc_attention_f32",
            &[
                a.q.ptr.into(),
                a.k.ptr.into(),
                a.val.ptr.into(),
                a.mask.into(),
                a.q.dims[0].into(),
                a.q.dims[1].into(),
                a.k.dims[1].into(),
                a.heads.into(),
                a.dqk.into(),
                a.dv.into(),
                a.scale.into(),
                self.i32c(flags).into(),
                self.i64c(kv_chunk).into(),
                a.out.ptr.into(),
            ],
        )?;
        Ok(a.out)
    }

    pub(super) fn local_attention(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let causal = fs.g.node(v).op.flag("causal");
        let attr = |name| self.node_attr_int(fs, v, name).map(|x| self.i64c(x));
        let (chunk, before, after) = (attr("chunk")?, attr("before")?, attr("after")?);
        let a = self.qkv(fs, v)?;
        self.kernel(
            fs,
            v,
            "rc_local_attention_f32",
            &[
                a.q.ptr.into(),
                a.k.ptr.into(),
                a.val.ptr.into(),
                a.mask.into(),
                a.q.dims[0].into(),
                a.q.dims[1].into(),
                a.heads.into(),
                a.dqk.into(),
                a.dv.into(),
                a.scale.into(),
                chunk.into(),
                before.into(),
                after.into(),
                self.i32c(causal as i32).into(),
                a.out.ptr.into(),
            ],
        )?;
        Ok(a.out)
    }

    pub(super) fn lsh_hash(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let qk = self.f32_ranked(fs, v, 0, 3)?;
        let rot = self.f32_ranked(fs, v, 1, 4)?;
        let mask = self.opt_mask(fs, v, 2)?;
        let heads = self.node_attr_int(fs, v, "heads")?;
        let rounds = self.node_attr_int(fs, v, "n_hashes")?;
        let factors: Vec<i64> = op.ints("buckets").unwrap_or(&[]).to_vec();
        let h = self.i64c(heads);
        let d = self.b.build_int_signed_div(self.last(&qk), h, "d")?;
        let fac = self.const_i64_array(&factors);
        let dims = vec![qk.dims[0], h, self.i64c(rounds), qk.dims[1]];
        let out = self.alloc_buf(fs, DType::I64, dims, &what)?;
        self.kernel(
            fs,
            v,
            "rc_lsh_hash_f32",
            &[
                qk.ptr.into(),
                rot.ptr.into(),
                mask.into(),
                qk.dims[0].into(),
                qk.dims[1].into(),
                h.into(),
                d.into(),
                self.i64c(rounds).into(),
                fac.into(),
                self.i64c(factors.len() as i64).into(),
                out.ptr.into(),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn lsh_attention(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let (qk, mut args) = self.lsh_args(fs, v, &[])?;
        let out = self.alloc_buf(fs, DType::F32, qk.dims.clone(), &what)?;
        args.push(out.ptr.into());
        self.kernel(fs, v, "rc_lsh_attention_f32", &args)?;
        Ok(out)
    }

    /// `lsh_attention_grad(qk, v, buckets, y, dy[, mask])`: the runtime's
    /// fused backward kernel, into `[2, ..qk's shape]`.
    pub(super) fn lsh_attention_grad(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
    ) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let (qk, mut args) = self.lsh_args(fs, v, &[3, 4])?;
        let mut dims = vec![self.i64c(2)];
        dims.extend(qk.dims.iter().copied());
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        args.push(out.ptr.into());
        self.kernel(fs, v, "rc_lsh_attention_grad_f32", &args)?;
        Ok(out)
    }

    /// `local_attention_grad(q, k, v, y, dy[, mask])`: the runtime's fused
    /// backward kernel, into `[3, ..q's shape]`.
    pub(super) fn local_attention_grad(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
    ) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let op = &fs.g.node(v).op;
        let causal = op.flag("causal");
        let scale = self.t.f32.const_float(op.float("scale").unwrap_or(1.0));
        let attr = |name| self.node_attr_int(fs, v, name).map(|x| self.i64c(x));
        let (chunk, before, after) = (attr("chunk")?, attr("before")?, attr("after")?);
        let heads = attr("heads")?;
        // q, k, v, y, dy: one type, checked by the verifier.
        let xs = (0..5)
            .map(|i| self.f32_ranked(fs, v, i, 3))
            .collect::<Result<Vec<_>>>()?;
        let q = &xs[0];
        let mut ptrs: Vec<BasicMetadataValueEnum<'ctx>> = xs.iter().map(|x| x.ptr.into()).collect();
        ptrs.push(self.opt_mask(fs, v, 5)?.into());
        let d = self.b.build_int_signed_div(self.last(q), heads, "d")?;
        let mut dims = vec![self.i64c(3)];
        dims.extend(q.dims.iter().copied());
        let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
        ptrs.extend::<[BasicMetadataValueEnum<'ctx>; 10]>([
            q.dims[0].into(),
            q.dims[1].into(),
            heads.into(),
            d.into(),
            scale.into(),
            chunk.into(),
            before.into(),
            after.into(),
            self.i32c(causal as i32).into(),
            out.ptr.into(),
        ]);
        self.kernel(fs, v, "rc_local_attention_grad_f32", &ptrs)?;
        Ok(out)
    }

    /// The arguments the LSH attention kernels share, from `v`'s operands:
    /// `qk`, `v`, the buckets, the operands `extra` names (f32 `[B, P, H·d]`:
    /// the backward's `y` and `dy`), the optional mask (the operand after
    /// them), then B, P, H, d, rounds, chunk, before, after and causal; and
    /// `qk` itself. Replayed buckets come from an input: their shape is
    /// checked here against the activations' (exit 2 with a message).
    fn lsh_args(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        extra: &[usize],
    ) -> Result<(Buf<'ctx>, Vec<BasicMetadataValueEnum<'ctx>>)> {
        let op = &fs.g.node(v).op;
        let what = at(fs.g, &fs.numbering, v);
        let qk = self.f32_ranked(fs, v, 0, 3)?;
        let val = self.f32_ranked(fs, v, 1, 3)?;
        let buckets = self.i64_operand(fs, v, 2)?;
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> =
            vec![qk.ptr.into(), val.ptr.into(), buckets.ptr.into()];
        for &i in extra {
            args.push(self.f32_ranked(fs, v, i, 3)?.ptr.into());
        }
        let mask = self.opt_mask(fs, v, 3 + extra.len())?;
        let h = self.i64c(self.node_attr_int(fs, v, "heads")?);
        let d = self.b.build_int_signed_div(self.last(&qk), h, "d")?;
        if buckets.dims.len() != 4 {
            return Err(BackendError::Internal(format!(
                "{what}: buckets must be [B,H,r,L]"
            )));
        }
        let what_s = self.cstr(&format!(
            "{what}: LSH buckets do not match [B, H, r, P] of the activations"
        ));
        let ne = |a, b, name| self.b.build_int_compare(IntPredicate::NE, a, b, name);
        let b_bad = ne(buckets.dims[0], qk.dims[0], "b")?;
        let h_bad = ne(buckets.dims[1], h, "h")?;
        let l_bad = ne(buckets.dims[3], qk.dims[1], "l")?;
        let bad = self
            .b
            .build_or(self.b.build_or(b_bad, h_bad, "bh")?, l_bad, "bad")?;
        self.fail_if(fs.exit, bad, |g| {
            g.call_i32(
                "rc_model_error",
                &[g.i32c(err::SHAPE).into(), what_s.into()],
            )
        })?;
        let attr = |name| -> Result<BasicMetadataValueEnum<'ctx>> {
            Ok(self.i64c(self.node_attr_int(fs, v, name)?).into())
        };
        args.extend([
            mask.into(),
            qk.dims[0].into(),
            qk.dims[1].into(),
            h.into(),
            d.into(),
            buckets.dims[2].into(),
            attr("chunk")?,
            attr("before")?,
            attr("after")?,
            self.i32c(op.flag("causal") as i32).into(),
        ]);
        Ok((qk, args))
    }
}
