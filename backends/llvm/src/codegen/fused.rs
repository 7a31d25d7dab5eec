//! Ops that generated code fuses or runs in place (reformc_passes::fusion): dense
//! stacks through `rc_dense_f32`, reversible blocks updating their state
//! halves, `seq_chunk` bodies, and buffers taken over from a dying input.

use super::*;

/// One layer of an `rc_dense_f32` call: weight, bias (or NULL), output
/// features and activation code.
struct LayerArgs<'ctx> {
    w: PointerValue<'ctx>,
    b: PointerValue<'ctx>,
    out: IntValue<'ctx>,
    act: i32,
}

/// What a dense call reads: the rows (`rows` of `inp` values, `ldx` apart)
/// and the layer-norm prologue's parameters (NULL without one).
struct DenseInput<'ctx> {
    x: Buf<'ctx>,
    inp: IntValue<'ctx>,
    ldx: IntValue<'ctx>,
    rows: IntValue<'ctx>,
    ln_w: PointerValue<'ctx>,
    ln_b: PointerValue<'ctx>,
    eps: f64,
}

impl<'ctx> Gen<'ctx> {
    /// The result of an op that may reuse its dying input `x`: when `same`
    /// holds at run time, `x`'s block moves to the result (x's slot is
    /// emptied, so freeing x later does nothing); otherwise a fresh block is
    /// allocated and filled by `fill`.
    pub(super) fn take_or_copy(
        &self,
        fs: &mut Fs<'ctx, '_>,
        x: &Buf<'ctx>,
        same: IntValue<'ctx>,
        dims: Vec<IntValue<'ctx>>,
        what: &str,
        fill: impl FnOnce(&Self, PointerValue<'ctx>) -> Result<()>,
    ) -> Result<Buf<'ctx>> {
        let xslot = x
            .slot
            .ok_or_else(|| BackendError::Internal(format!("{what}: input is borrowed")))?;
        let out = self.new_slot(fs)?;
        let (take, copy, join) = (
            self.block("take")?,
            self.block("copy")?,
            self.block("took")?,
        );
        self.b.build_conditional_branch(same, take, copy)?;
        let size = |slot| {
            self.b
                .build_struct_gep(self.slot_ty(), slot, 1, "slot.size")
        };
        let mv = |from: PointerValue<'ctx>| -> Result<()> {
            let p = self.slot_load(from)?;
            let n = self.b.build_load(self.t.i64, size(from)?, "n")?;
            if let Some(i) = n.as_instruction_value() {
                volatile(i)?;
            }
            self.slot_store(out, p)?;
            volatile(self.b.build_store(size(out)?, n)?)?;
            self.slot_store(from, self.null())
        };
        self.b.position_at_end(take);
        mv(xslot)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(copy);
        let (p, fresh) = self.alloc(fs, x.dtype, &dims, what)?;
        fill(self, p)?;
        mv(fresh)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(Buf {
            ptr: self.slot_load(out)?,
            dims,
            dtype: x.dtype,
            slot: Some(out),
            ld: None,
        })
    }

    /// y1 = x1 + f(x2); y2 = x2 + g(y1) on the halves of the last axis.
    pub(super) fn reversible(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let x = self.f32_operand(fs, v, 0)?;
        let width = self.last(&x);
        let half = self.b.build_int_signed_div(width, self.i64c(2), "half")?;
        let rows = self.rows(&x)?;
        let dt = DType::F32;
        let state = match (fs.fusion.in_place.contains(&v), x.slot) {
            (true, Some(_)) => {
                // The input dies here: its buffer becomes the state (and the result).
                if let Some(input) = fs.vals.get_mut(&fs.g.node(v).inputs[0]) {
                    input.slot = None;
                }
                x
            }
            _ => {
                let what = at(fs.g, &fs.numbering, v);
                let out = self.alloc_buf(fs, dt, x.dims.clone(), &what)?;
                let n = self.prod(&x.dims)?;
                self.copy_elems(dt, out.ptr, self.i64c(0), x.ptr, self.i64c(0), n)?;
                out
            }
        };
        // The updates go into a function of their own (see outline.rs).
        let view = Buf {
            slot: None,
            ..state.clone()
        };
        self.outlined(fs, v, &[view], &[width, half, rows], |g, fs, bufs, ints| {
            let (Some(state), &[width, half, rows]) = (bufs.first(), &ints[..]) else {
                return Err(BackendError::Internal("outlined arguments".into()));
            };
            g.half_updates(fs, v, state, width, half, rows)
        })?;
        Ok(state)
    }

    /// y1 = x1 + f(x2) into the low half of `state`, then y2 = x2 + g(y1) into the high.
    fn half_updates(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        state: &Buf<'ctx>,
        width: IntValue<'ctx>,
        half: IntValue<'ctx>,
        rows: IntValue<'ctx>,
    ) -> Result<()> {
        let dt = DType::F32;
        let mut hdims = state.dims.clone();
        if let Some(l) = hdims.last_mut() {
            *l = half;
        }
        let view = |ptr| Buf {
            ptr,
            dims: hdims.clone(),
            dtype: dt,
            slot: None,
            ld: Some(width),
        };
        let (lo, hi) = (view(state.ptr), view(self.gep(dt, state.ptr, half)?));
        self.half_update(fs, v, 0, hi.clone(), &lo, rows)?;
        self.half_update(fs, v, 1, lo, &hi, rows)
    }

    /// `target += region ri of v (arg)`: the region's last linear accumulates
    /// onto `target` itself when the fusion plan allows, else an add follows.
    pub(super) fn half_update(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        ri: usize,
        arg: Buf<'ctx>,
        target: &Buf<'ctx>,
        rows: IntValue<'ctx>,
    ) -> Result<()> {
        let what = at(fs.g, &fs.numbering, v);
        let res = *fs.g.node(v).regions[ri]
            .results
            .first()
            .ok_or_else(|| BackendError::Internal(format!("{what}: region yields nothing")))?;
        let stride = target.ld.unwrap_or(self.last(target));
        let direct = fs.fusion.accumulated.contains(&res);
        if direct {
            fs.dest.insert(res, (target.ptr, stride));
        }
        let out = self.region(fs, v, ri, vec![arg])?;
        fs.dest.remove(&res);
        let (r, r_owned) = out
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Internal(format!("{what}: region yields nothing")))?;
        if !direct {
            let rs = r.ld.unwrap_or(self.last(&r));
            let cols = self.last(target);
            self.add_rows(
                target.ptr,
                stride,
                target.ptr,
                stride,
                Some((r.ptr, rs)),
                rows,
                cols,
            )?;
            if r_owned {
                self.free_buf(&r)?;
            }
        }
        Ok(())
    }

    /// Replaces every strided operand of `v` (a reversible half) with a
    /// contiguous copy, except the input of a `linear`, which reads rows with
    /// their stride. The copy replaces the argument's entry and is freed when
    /// the region ends.
    pub(super) fn contiguous_operands(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<()> {
        let node = fs.g.node(v);
        for (i, u) in node.inputs.iter().enumerate() {
            if node.op.kind == OpKind::Linear && i == 0 {
                continue;
            }
            self.contiguous_value(fs, *u)?;
        }
        Ok(())
    }

    /// Replaces a strided view `u` by a contiguous copy (nothing otherwise).
    pub(super) fn contiguous_value(&self, fs: &mut Fs<'ctx, '_>, u: ValueId) -> Result<()> {
        let Some(b) = fs.vals.get(&u).cloned() else {
            return Ok(());
        };
        let Some(ld) = b.ld else { return Ok(()) };
        let what = format!("{} (contiguous copy)", at(fs.g, &fs.numbering, u));
        let c = self.alloc_buf(fs, b.dtype, b.dims.clone(), &what)?;
        let cols = self.last(&b);
        let rows = self.rows(&b)?;
        self.copy_blocks(
            b.dtype,
            c.ptr,
            self.i64c(0),
            cols,
            b.ptr,
            self.i64c(0),
            ld,
            rows,
            cols,
        )?;
        fs.vals.insert(u, c);
        Ok(())
    }

    /// A `linear`, with whatever the fusion plan folds into it: a layer-norm
    /// prologue, an inner linear (two-layer stack), and accumulation onto a
    /// reversible half (one `rc_dense_f32` call).
    pub(super) fn dense(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, v);
        let input = |u: ValueId| g.node(u).inputs[0];
        let (first, second) = match input(v) {
            u if fs.fusion.inner.contains(&u) => (u, Some(v)),
            _ => (v, None),
        };
        let DenseInput {
            x,
            inp,
            ldx,
            rows,
            ln_w,
            ln_b,
            eps,
        } = self.dense_input(fs, first)?;
        let l1 = self.layer(fs, first)?;
        // No second layer: NULL weights, and the output is the first layer's.
        let l2 = match second {
            Some(s) => self.layer(fs, s)?,
            None => LayerArgs {
                w: self.null(),
                b: self.null(),
                out: l1.out,
                act: 0,
            },
        };
        let out_f = l2.out;
        let mut dims = x.dims.clone();
        if let Some(l) = dims.last_mut() {
            *l = out_f;
        }
        let (out, ldy, accumulate) = match fs.dest.get(&v).copied() {
            Some((ptr, ld)) => {
                let buf = Buf {
                    ptr,
                    dims,
                    dtype: DType::F32,
                    slot: None,
                    ld: Some(ld),
                };
                (buf, ld, 1)
            }
            None => (self.alloc_buf(fs, DType::F32, dims, &what)?, out_f, 0),
        };
        self.kernel(
            fs,
            v,
            "rc_dense_f32",
            &[
                x.ptr.into(),
                ldx.into(),
                rows.into(),
                inp.into(),
                ln_w.into(),
                ln_b.into(),
                self.t.f32.const_float(eps).into(),
                l1.w.into(),
                l1.b.into(),
                l1.out.into(),
                self.i32c(l1.act).into(),
                l2.w.into(),
                l2.b.into(),
                l2.out.into(),
                self.i32c(l2.act).into(),
                out.ptr.into(),
                ldy.into(),
                self.i32c(accumulate).into(),
            ],
        )?;
        Ok(out)
    }

    /// Two `linear`s of one input (and the same layer-norm prologue, if any)
    /// as one `rc_dense_pair_f32` call: the rows are normalized once and
    /// each product is stored into its own fresh buffer. The second's buffer
    /// is bound here, the first's returned (see `Fusion::grouped`).
    pub(super) fn dense_pair(
        &self,
        fs: &mut Fs<'ctx, '_>,
        members: &[ValueId],
    ) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let &[v, u] = members else {
            return Err(BackendError::Internal(format!(
                "a linear pair of {} ops",
                members.len()
            )));
        };
        let what = at(g, &fs.numbering, v);
        let DenseInput {
            x,
            inp,
            ldx,
            rows,
            ln_w,
            ln_b,
            eps,
        } = self.dense_input(fs, v)?;
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = vec![
            x.ptr.into(),
            ldx.into(),
            rows.into(),
            inp.into(),
            ln_w.into(),
            ln_b.into(),
            self.t.f32.const_float(eps).into(),
        ];
        let mut outs = Vec::with_capacity(2);
        for m in [v, u] {
            let l = self.layer(fs, m)?;
            let mut dims = x.dims.clone();
            if let Some(last) = dims.last_mut() {
                *last = l.out;
            }
            let out = self.alloc_buf(fs, DType::F32, dims, &at(g, &fs.numbering, m))?;
            args.extend::<[BasicMetadataValueEnum<'ctx>; 6]>([
                l.w.into(),
                l.b.into(),
                l.out.into(),
                self.i32c(l.act).into(),
                out.ptr.into(),
                l.out.into(),
            ]);
            outs.push(out);
        }
        self.kernel(fs, v, "rc_dense_pair_f32", &args)?;
        let [first, second]: [Buf<'ctx>; 2] = outs
            .try_into()
            .map_err(|_| BackendError::Internal(format!("{what}: no result")))?;
        fs.vals.insert(u, second);
        Ok(first)
    }

    /// The rows a dense call reads for linear `first` (the first layer of its
    /// stack or pair): its input, or the input of its layer-norm prologue with
    /// the norm's parameters (NULL and 0 without one).
    fn dense_input(&self, fs: &Fs<'ctx, '_>, first: ValueId) -> Result<DenseInput<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, first);
        let (norm, x_val) = match g.node(first).inputs[0] {
            n if fs.fusion.prologue.contains(&n) => (Some(n), g.node(n).inputs[0]),
            x => (None, x),
        };
        let x = fs
            .vals
            .get(&x_val)
            .cloned()
            .ok_or_else(|| BackendError::Internal(format!("{what}: input is not available")))?;
        if x.dtype != DType::F32 {
            return Err(BackendError::Unsupported(format!("{what}: f32 only")));
        }
        let inp = self.last(&x);
        let (ln_w, ln_b, eps) = match norm {
            Some(n) => (
                self.f32_operand(fs, n, 1)?.ptr,
                self.f32_operand(fs, n, 2)?.ptr,
                g.node(n).op.float("eps").unwrap_or(1e-12),
            ),
            None => (self.null(), self.null(), 0.0),
        };
        Ok(DenseInput {
            ldx: x.ld.unwrap_or(inp),
            rows: self.rows(&x)?,
            x,
            inp,
            ln_w,
            ln_b,
            eps,
        })
    }

    /// A linear's `rc_dense_f32` arguments.
    fn layer(&self, fs: &Fs<'ctx, '_>, v: ValueId) -> Result<LayerArgs<'ctx>> {
        let node = fs.g.node(v);
        let w = self.f32_ranked(fs, v, 1, 2)?;
        let b = if node.inputs.len() > 2 {
            self.f32_operand(fs, v, 2)?.ptr
        } else {
            self.null()
        };
        let act = node.op.activation().map_err(|e| {
            BackendError::Unsupported(format!("{}: {e}", at(fs.g, &fs.numbering, v)))
        })?;
        let act = abi::activation_code(act);
        Ok(LayerArgs {
            w: w.ptr,
            b,
            out: w.dims[0],
            act,
        })
    }

    /// The body on consecutive chunks of `size` along `axis`, results concatenated.
    pub(super) fn seq_chunk(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, v);
        let x = self.operand(fs, v, 0)?;
        let axis = self.axis(fs, v, x.dims.len())?;
        let size = self.node_attr_int(fs, v, "size")?.max(1);
        let region = g
            .node(v)
            .regions
            .first()
            .ok_or_else(|| BackendError::Internal(format!("{what}: no body")))?;
        let arg = *region
            .args
            .first()
            .ok_or_else(|| BackendError::Internal(format!("{what}: body has no argument")))?;
        if region.results.len() != 1 {
            return Err(BackendError::Internal(format!(
                "{what}: the body must yield one value"
            )));
        }
        let n = x.dims[axis];
        let out_dims = self.type_dims(fs, v)?;
        if out_dims.len() != x.dims.len() {
            return Err(BackendError::Unsupported(format!(
                "{what}: the body must keep the rank"
            )));
        }
        let out = self.alloc_buf(fs, g.ty(v).dtype, out_dims.clone(), &what)?;
        let outer = self.prod(&x.dims[..axis])?;
        let inner = self.prod(&x.dims[axis + 1..])?;
        let out_inner = self.prod(&out_dims[axis + 1..])?;
        let out_n = out_dims[axis];
        let chunk_sym = match &g.ty(arg).shape.get(axis) {
            Some(Dim::Sym(s)) => Some(s.clone()),
            _ => None,
        };
        let sz = self.i64c(size);
        // One chunk buffer reused by every iteration (not needed along axis 0).
        let tmp = if axis == 0 {
            None
        } else {
            let cap = self.b.build_select(
                self.b.build_int_compare(IntPredicate::SLT, n, sz, "lt")?,
                n,
                sz,
                "cap",
            )?;
            let mut dims = x.dims.clone();
            dims[axis] = cap.into_int_value();
            Some(self.alloc_buf(fs, x.dtype, dims, &format!("{what} chunk"))?)
        };
        let nchunks =
            self.b
                .build_int_signed_div(self.add(n, self.i64c(size - 1))?, sz, "nchunks")?;
        self.for_range(nchunks, &mut |c| {
            let start = self.mul(c, sz)?;
            let left = self.b.build_int_sub(n, start, "left")?;
            let clen = self
                .b
                .build_select(
                    self.b
                        .build_int_compare(IntPredicate::SLT, left, sz, "lt")?,
                    left,
                    sz,
                    "clen",
                )?
                .into_int_value();
            let saved = (fs.syms.clone(), fs.sym_note.clone());
            if let Some(s) = &chunk_sym {
                fs.syms.insert(s.clone(), clen);
                fs.sym_note
                    .insert(s.clone(), format!("chunk length of {what}"));
            }
            let mut adims = x.dims.clone();
            adims[axis] = clen;
            let arg_buf = match &tmp {
                None => Buf {
                    ptr: self.gep(x.dtype, x.ptr, self.mul(start, inner)?)?,
                    dims: adims,
                    dtype: x.dtype,
                    slot: None,
                    ld: None,
                },
                Some(t) => {
                    self.copy_axis_range(x.dtype, t.ptr, x.ptr, (start, clen, n), outer, inner)?;
                    Buf {
                        ptr: t.ptr,
                        dims: adims,
                        dtype: x.dtype,
                        slot: None,
                        ld: None,
                    }
                }
            };
            let r = self.region(fs, v, 0, vec![arg_buf])?;
            let (rb, r_owned) = r
                .into_iter()
                .next()
                .ok_or_else(|| BackendError::Internal("seq_chunk result".into()))?;
            let r_outer = self.prod(&rb.dims[..axis])?;
            let count = self.mul(clen, out_inner)?;
            self.copy_blocks(
                rb.dtype,
                out.ptr,
                self.mul(start, out_inner)?,
                self.mul(out_n, out_inner)?,
                rb.ptr,
                self.i64c(0),
                count,
                r_outer,
                count,
            )?;
            if r_owned {
                self.free_buf(&rb)?;
            }
            fs.syms = saved.0;
            fs.sym_note = saved.1;
            Ok(())
        })?;
        if let Some(t) = &tmp {
            self.free_buf(t)?;
        }
        Ok(out)
    }
}
