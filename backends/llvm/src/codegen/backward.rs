//! The ops that serve the backward pass: `broadcast` and `act_grad` as
//! elementwise loops, `scatter_add` as one sequential loop over the source
//! (the interpreter's order, so the sums are bit-identical to its).

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `lm_loss(h, w, labels) {chunk}` and `lm_loss_grad(h, w, labels, dy)
    /// {wrt, chunk}`: the runtime's chunked kernels (`h` as `[rows, D]`). A
    /// group of gradients ([`Fusion::group_of`], `wrt` h and w) is one call
    /// that writes both; the members' buffers are bound here, the leader's
    /// returned.
    pub(super) fn lm_loss(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let op = fs.g.node(v).op.clone();
        let (h, w) = (self.f32_operand(fs, v, 0)?, self.f32_ranked(fs, v, 1, 2)?);
        let labels = self.i64_operand(fs, v, 2)?;
        let (d, rest) = h
            .dims
            .split_last()
            .ok_or_else(|| BackendError::Internal(format!("{what}: h needs rank >= 1")))?;
        let rows = self.prod(rest)?;
        let chunk = self.i64c(op.int("chunk").unwrap_or(1).max(1));
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = vec![
            h.ptr.into(),
            rows.into(),
            (*d).into(),
            w.ptr.into(),
            w.dims[0].into(),
            labels.ptr.into(),
            chunk.into(),
        ];
        if op.kind == OpKind::LmLoss {
            let out = self.alloc_buf(fs, DType::F32, vec![], &what)?;
            args.push(out.ptr.into());
            self.kernel(fs, v, "rc_lm_loss_f32", &args)?;
            return Ok(out);
        }
        let dy = self.f32_ranked(fs, v, 3, 0)?;
        let members = match fs.fusion.group_of(v) {
            [] => vec![v],
            group => group.to_vec(),
        };
        // Output 0 is the gradient with respect to h, 1 with respect to w.
        let mut outs: [Option<(ValueId, Buf<'ctx>)>; 2] = Default::default();
        for &m in &members {
            let (slot, dims) = match fs.g.node(m).op.str("wrt") {
                Some("w") => (1, w.dims.clone()),
                _ => (0, h.dims.clone()),
            };
            let buf = self.alloc_buf(fs, DType::F32, dims, &at(fs.g, &fs.numbering, m))?;
            outs[slot] = Some((m, buf));
        }
        args.push(dy.ptr.into());
        let ptr = |o: &Option<(ValueId, Buf<'ctx>)>| o.as_ref().map_or(self.null(), |(_, b)| b.ptr);
        args.extend(outs.iter().map(|o| BasicMetadataValueEnum::from(ptr(o))));
        self.kernel(fs, v, "rc_lm_loss_grad_f32", &args)?;
        let mut mine = None;
        for (m, buf) in outs.into_iter().flatten() {
            match m == v {
                true => mine = Some(buf),
                false => {
                    fs.vals.insert(m, buf);
                }
            }
        }
        mine.ok_or_else(|| BackendError::Internal(format!("{what}: no result")))
    }

    /// `broadcast(x, ref)`: the elementwise copy of `x` to the declared
    /// (reference) shape; the general elementwise loop broadcasts operands.
    pub(super) fn broadcast(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let x = self.operand(fs, v, 0)?;
        let dt = x.dtype;
        self.elementwise(fs, v, &[x], dt, &|_, vals| Ok(vals[0]))
    }

    /// `act_grad(x, dy) {fn}`: `dy * act'(x)` per element.
    pub(super) fn act_grad(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let act =
            fs.g.node(v)
                .op
                .activation()
                .map_err(|e| BackendError::Unsupported(format!("{what}: {e}")))?;
        let (x, dy) = (self.operand(fs, v, 0)?, self.operand(fs, v, 1)?);
        let dt = x.dtype;
        if !dt.is_float() || dy.dtype != dt {
            return Err(BackendError::Internal(format!(
                "{what}: x and dy must share a float dtype"
            )));
        }
        self.elementwise(fs, v, &[x, dy], dt, &|g, vals| {
            let (x, dy) = (vals[0].into_float_value(), vals[1].into_float_value());
            Ok(g.act_grad_elem(act, dt, x, dy)?.into())
        })
    }

    /// `dy * act'(x)` for one element, computed in f64 and rounded once, as
    /// the interpreter's `tensor_ops::act_grad` does.
    fn act_grad_elem(
        &self,
        f: Activation,
        dt: DType,
        x: FloatValue<'ctx>,
        dy: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>> {
        let b = &self.b;
        let wide = |v: FloatValue<'ctx>| -> Result<FloatValue<'ctx>> {
            Ok(if dt == DType::F32 {
                b.build_float_ext(v, self.t.f64, "d")?
            } else {
                v
            })
        };
        let (d, g) = (wide(x)?, wide(dy)?);
        let deriv = self.act_derivative(f, d)?;
        let y = b.build_float_mul(g, deriv, "ag")?;
        Ok(if dt == DType::F32 {
            b.build_float_trunc(y, self.t.f32, "r")?
        } else {
            y
        })
    }

    /// `act'(x)` in f64, the formulas of the interpreter's
    /// `nn::activate_grad` in the same order of operations.
    fn act_derivative(&self, f: Activation, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let b = &self.b;
        let c = |v: f64| self.t.f64.const_float(v);
        let mul = |p: FloatValue<'ctx>, q: FloatValue<'ctx>| b.build_float_mul(p, q, "m");
        let add = |p: FloatValue<'ctx>, q: FloatValue<'ctx>| b.build_float_add(p, q, "a");
        let sub = |p: FloatValue<'ctx>, q: FloatValue<'ctx>| b.build_float_sub(p, q, "s");
        let sigmoid = || -> Result<FloatValue<'ctx>> {
            let e = self.libm("exp", b.build_float_neg(x, "n")?)?;
            Ok(b.build_float_div(c(1.0), add(c(1.0), e)?, "sig")?)
        };
        // d/dx of 0.5 x (1 + tanh(k (x + 0.044715 x^3))).
        let tanh_gelu = |k: f64| -> Result<FloatValue<'ctx>> {
            let x3 = mul(mul(mul(c(0.044715), x)?, x)?, x)?;
            let t = self.libm("tanh", mul(c(k), add(x, x3)?)?)?;
            let left = mul(c(0.5), add(c(1.0), t)?)?;
            let sech2 = sub(c(1.0), mul(t, t)?)?;
            let poly = add(c(1.0), mul(mul(c(3.0 * 0.044715), x)?, x)?)?;
            let right = mul(mul(mul(mul(c(0.5), x)?, sech2)?, c(k))?, poly)?;
            Ok(add(left, right)?)
        };
        Ok(match f {
            Activation::None => c(1.0),
            Activation::Relu => {
                let pos = b.build_float_compare(FloatPredicate::OGT, x, c(0.0), "pos")?;
                b.build_select(pos, c(1.0), c(0.0), "drelu")?
                    .into_float_value()
            }
            Activation::Gelu => {
                let s = b.build_float_div(x, c(std::f64::consts::SQRT_2), "s")?;
                let cdf = mul(c(0.5), add(c(1.0), self.libm("erf", s)?)?)?;
                let e = self.libm("exp", mul(mul(c(-0.5), x)?, x)?)?;
                let pdf = b.build_float_div(e, c((2.0 * std::f64::consts::PI).sqrt()), "pdf")?;
                add(cdf, mul(x, pdf)?)?
            }
            Activation::GeluNew => tanh_gelu((2.0 / std::f64::consts::PI).sqrt())?,
            Activation::GeluFast => tanh_gelu(0.797_884_560_8)?,
            Activation::Silu => {
                let s = sigmoid()?;
                mul(s, add(c(1.0), mul(x, sub(c(1.0), s)?)?)?)?
            }
            Activation::Tanh => {
                let t = self.libm("tanh", x)?;
                sub(c(1.0), mul(t, t)?)?
            }
            Activation::Sigmoid => {
                let s = sigmoid()?;
                mul(s, sub(c(1.0), s)?)?
            }
            Activation::Mish => {
                // tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2).
                let t = self.libm("tanh", self.softplus_f64(x)?)?;
                let s = sigmoid()?;
                let sech2 = sub(c(1.0), mul(t, t)?)?;
                add(t, mul(mul(x, s)?, sech2)?)?
            }
            Activation::Relu6 => {
                let pos = b.build_float_compare(FloatPredicate::OGT, x, c(0.0), "pos")?;
                let low =
                    b.build_float_compare(FloatPredicate::OLT, x, c(Activation::RELU6_MAX), "low")?;
                let inside = b.build_and(pos, low, "in")?;
                b.build_select(inside, c(1.0), c(0.0), "drelu6")?
                    .into_float_value()
            }
            Activation::QuickGelu => {
                // s + k x s (1 - s) with s = sigmoid(k x).
                let k = Activation::QUICK_GELU_SCALE;
                let e = self.libm("exp", mul(c(-k), x)?)?;
                let s = b.build_float_div(c(1.0), add(c(1.0), e)?, "sig")?;
                add(s, mul(mul(mul(c(k), x)?, s)?, sub(c(1.0), s)?)?)?
            }
            Activation::LeakyRelu => {
                let pos = b.build_float_compare(FloatPredicate::OGT, x, c(0.0), "pos")?;
                b.build_select(pos, c(1.0), c(Activation::LEAKY_RELU_SLOPE), "dleaky")?
                    .into_float_value()
            }
        })
    }

    /// `scatter_add(ref, idx, src) {axis}`: zeros of `ref`'s shape, then
    /// `out[o, idx[o, j, i], i, :] += src[o, j, i, :]` around `axis`, in
    /// row-major source order, the trailing `[..]` being the reference axes
    /// past the index's rank (a row). f32 runs the runtime's threaded
    /// `rc_scatter_add_f32` (i64 indices); other cases a generated loop. An index outside `[0, n)`
    /// stops the model with a value error.
    pub(super) fn scatter_add(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let what = at(fs.g, &fs.numbering, v);
        let r = self.operand(fs, v, 0)?;
        let src = self.operand(fs, v, 2)?;
        let dt = src.dtype;
        let idx = self.operand(fs, v, 1)?;
        let axis = self.axis(fs, v, r.dims.len())?;
        let k = idx.dims.len();
        if !dt.is_float() || !matches!(idx.dtype, DType::I64 | DType::I32) || k <= axis {
            return Err(BackendError::Internal(format!(
                "{what}: needs integer indices above the axis and a float source"
            )));
        }
        let out = self.alloc_buf(fs, dt, r.dims.clone(), &what)?;
        let (outer, n, inner) = self.around(&r.dims[..k], axis)?;
        let row = self.prod(&r.dims[k..])?;
        let m = src.dims[axis];
        if dt == DType::F32 && idx.dtype == DType::I64 {
            let args = [
                src.ptr.into(),
                outer.into(),
                m.into(),
                inner.into(),
                row.into(),
                idx.ptr.into(),
                n.into(),
                out.ptr.into(),
            ];
            self.kernel(fs, v, "rc_scatter_add_f32", &args)?;
            return Ok(out);
        }
        let zero = self.zero_of(dt);
        self.for_range(self.prod(&r.dims)?, &mut |i| {
            self.store(dt, out.ptr, i, zero)
        })?;
        let msg = self.cstr(&format!(
            "{what}: scatter_add index out of range for axis {axis}"
        ));
        let exit = fs.exit;
        let width = self.mul(inner, row)?;
        self.for_range(self.prod(&src.dims)?, &mut |s| {
            let b = &self.b;
            let q = b.build_int_signed_div(s, row, "q")?;
            let raw = self.load(idx.dtype, idx.ptr, q)?.into_int_value();
            let j = if idx.dtype == DType::I32 {
                b.build_int_s_extend(raw, self.t.i64, "j")?
            } else {
                raw
            };
            let neg = b.build_int_compare(IntPredicate::SLT, j, self.i64c(0), "neg")?;
            let big = b.build_int_compare(IntPredicate::SGE, j, n, "big")?;
            let bad = b.build_or(neg, big, "bad")?;
            self.fail_if(exit, bad, |g| {
                g.call_i32("rc_model_error", &[g.i32c(err::VALUE).into(), msg.into()])
            })?;
            // s = (o * m + jj) * width + c  ->  dst = (o * n + j) * width + c.
            let c = b.build_int_signed_rem(s, width, "c")?;
            let o = b.build_int_signed_div(s, self.mul(m, width)?, "o")?;
            let dst = self.add(self.mul(self.add(self.mul(o, n)?, j)?, width)?, c)?;
            let cur = self.load(dt, out.ptr, dst)?.into_float_value();
            let x = self.load(dt, src.ptr, s)?.into_float_value();
            let sum = b.build_float_add(cur, x, "acc")?;
            self.store(dt, out.ptr, dst, sum.into())
        })?;
        Ok(out)
    }

    /// The zero of a float dtype.
    fn zero_of(&self, dt: DType) -> BasicValueEnum<'ctx> {
        if dt == DType::F32 {
            self.t.f32.const_zero().into()
        } else {
            self.t.f64.const_zero().into()
        }
    }
}
