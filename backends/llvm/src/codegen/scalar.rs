//! Scalar code generation: dtype conversions, libm and intrinsic calls,
//! activations, and the loops of element-wise unary and binary ops (with
//! broadcasting).

use super::*;

impl<'ctx> Gen<'ctx> {
    /// Converts one element (numpy `astype`; floats to ints saturate toward zero).
    pub(super) fn convert(
        &self,
        v: BasicValueEnum<'ctx>,
        from: DType,
        to: DType,
    ) -> Result<BasicValueEnum<'ctx>> {
        if from == to {
            return Ok(v);
        }
        let b = &self.b;
        Ok(match (from.is_float(), to) {
            (_, DType::Bool) => {
                let nz = if from.is_float() {
                    b.build_float_compare(
                        FloatPredicate::UNE,
                        v.into_float_value(),
                        v.into_float_value().get_type().const_zero(),
                        "nz",
                    )?
                } else {
                    let iv = v.into_int_value();
                    b.build_int_compare(IntPredicate::NE, iv, iv.get_type().const_zero(), "nz")?
                };
                b.build_int_z_extend(nz, self.t.i8, "b")?.into()
            }
            (true, DType::F32) => b
                .build_float_trunc(v.into_float_value(), self.t.f32, "f")?
                .into(),
            (true, DType::F64) => b
                .build_float_ext(v.into_float_value(), self.t.f64, "f")?
                .into(),
            (true, DType::I64 | DType::I32) => {
                let it = if to == DType::I64 {
                    self.t.i64
                } else {
                    self.t.i32
                };
                // Rust's `as`: saturating, NaN -> 0. (i32: via i64 like the interpreter.)
                let sat = self.intrinsic(
                    "llvm.fptosi.sat",
                    &[self.t.i64.into(), v.into_float_value().get_type().into()],
                )?;
                let r = b.build_call(sat, &[v.into()], "i")?.try_as_basic_value();
                let inkwell::values::ValueKind::Basic(r) = r else {
                    return Err(BackendError::Internal("fptosi.sat".into()));
                };
                b.build_int_truncate_or_bit_cast(r.into_int_value(), it, "t")?
                    .into()
            }
            (false, DType::F32 | DType::F64) => {
                let ft = if to == DType::F32 {
                    self.t.f32
                } else {
                    self.t.f64
                };
                let iv = v.into_int_value();
                if from == DType::Bool {
                    b.build_unsigned_int_to_float(iv, ft, "f")?.into()
                } else if to == DType::F32 && from == DType::I64 {
                    // The interpreter goes through f64.
                    let d = b.build_signed_int_to_float(iv, self.t.f64, "d")?;
                    b.build_float_trunc(d, self.t.f32, "f")?.into()
                } else {
                    b.build_signed_int_to_float(iv, ft, "f")?.into()
                }
            }
            (false, DType::I64 | DType::I32) => {
                let it = if to == DType::I64 {
                    self.t.i64
                } else {
                    self.t.i32
                };
                let iv = v.into_int_value();
                if from == DType::Bool {
                    b.build_int_z_extend(iv, it, "z")?.into()
                } else {
                    b.build_int_cast_sign_flag(iv, it, true, "c")?.into()
                }
            }
        })
    }

    pub(super) fn libm(&self, name: &str, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self
            .call(name, &[x.into()])?
            .ok_or_else(|| BackendError::Internal(name.into()))?
            .into_float_value())
    }

    pub(super) fn float_intrinsic(
        &self,
        name: &str,
        x: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>> {
        let f = self.intrinsic(name, &[x.get_type().into()])?;
        let r = self.b.build_call(f, &[x.into()], "r")?.try_as_basic_value();
        match r {
            inkwell::values::ValueKind::Basic(r) => Ok(r.into_float_value()),
            inkwell::values::ValueKind::Instruction(_) => Err(BackendError::Internal(name.into())),
        }
    }

    /// One element of a unary op; `act` is the activation of
    /// [`UnaryFn::Act`] (ignored by the others).
    pub(super) fn unary(
        &self,
        f: UnaryFn,
        act: Activation,
        dt: DType,
        v: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        let b = &self.b;
        if !dt.is_float() {
            // Only `neg` reaches here for integers.
            return Ok(b.build_int_neg(v.into_int_value(), "neg")?.into());
        }
        let x = v.into_float_value();
        let ft = x.get_type();
        let one = ft.const_float(1.0);
        Ok(match f {
            UnaryFn::Neg => b.build_float_neg(x, "neg")?.into(),
            UnaryFn::Exp => self.float_intrinsic("llvm.exp", x)?.into(),
            UnaryFn::Log => self.float_intrinsic("llvm.log", x)?.into(),
            UnaryFn::Sqrt => self.float_intrinsic("llvm.sqrt", x)?.into(),
            UnaryFn::Rsqrt => {
                let s = self.float_intrinsic("llvm.sqrt", x)?;
                b.build_float_div(one, s, "rs")?.into()
            }
            UnaryFn::Tanh => self.tanh(dt, x)?.into(),
            UnaryFn::Act => self.activation(act, dt, x)?.into(),
        })
    }

    pub(super) fn tanh(&self, dt: DType, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        if dt == DType::F32 {
            self.libm("tanhf", x)
        } else {
            self.libm("tanh", x)
        }
    }

    /// `nn::activate` of the interpreter: relu, relu6, leaky_relu and tanh in
    /// the element type, the others computed in f64 and rounded.
    pub(super) fn activation(
        &self,
        f: Activation,
        dt: DType,
        x: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>> {
        let b = &self.b;
        let ft = x.get_type();
        match f {
            Activation::None => return Ok(x),
            Activation::Relu => {
                let pos = b.build_float_compare(FloatPredicate::OGT, x, ft.const_zero(), "pos")?;
                return Ok(b
                    .build_select(pos, x, ft.const_zero(), "relu")?
                    .into_float_value());
            }
            Activation::Tanh => return self.tanh(dt, x),
            Activation::Relu6 => {
                // x > 6 ? 6 : (x > 0 ? x : 0), the interpreter's order (NaN gives 0).
                let top = ft.const_float(Activation::RELU6_MAX);
                let pos = b.build_float_compare(FloatPredicate::OGT, x, ft.const_zero(), "pos")?;
                let r = b
                    .build_select(pos, x, ft.const_zero(), "relu")?
                    .into_float_value();
                let over = b.build_float_compare(FloatPredicate::OGT, x, top, "over")?;
                return Ok(b.build_select(over, top, r, "relu6")?.into_float_value());
            }
            Activation::LeakyRelu => {
                // The slope rounded to the element type, as PyTorch multiplies.
                let slope = ft.const_float(if dt == DType::F32 {
                    f64::from(Activation::LEAKY_RELU_SLOPE as f32)
                } else {
                    Activation::LEAKY_RELU_SLOPE
                });
                let pos = b.build_float_compare(FloatPredicate::OGT, x, ft.const_zero(), "pos")?;
                let neg = b.build_float_mul(x, slope, "neg")?;
                return Ok(b.build_select(pos, x, neg, "leaky")?.into_float_value());
            }
            Activation::Gelu
            | Activation::GeluNew
            | Activation::GeluFast
            | Activation::Silu
            | Activation::Sigmoid
            | Activation::Mish
            | Activation::QuickGelu => {}
        }
        let d = if dt == DType::F32 {
            b.build_float_ext(x, self.t.f64, "d")?
        } else {
            x
        };
        let c = |v: f64| self.t.f64.const_float(v);
        let half_x = b.build_float_mul(c(0.5), d, "hx")?;
        let y = match f {
            Activation::Gelu => {
                let e = self.libm(
                    "erf",
                    b.build_float_div(d, c(std::f64::consts::SQRT_2), "s")?,
                )?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), e, "e1")?, "g")?
            }
            Activation::GeluNew => {
                let x3 = b.build_float_mul(b.build_float_mul(d, d, "x2")?, d, "x3")?;
                let inner = b.build_float_add(d, b.build_float_mul(c(0.044715), x3, "t")?, "in")?;
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let t = self.libm("tanh", b.build_float_mul(c(k), inner, "k")?)?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), t, "t1")?, "g")?
            }
            Activation::GeluFast => {
                let x2 = b.build_float_mul(d, d, "x2")?;
                let p = b.build_float_add(c(1.0), b.build_float_mul(c(0.044715), x2, "a")?, "p")?;
                let arg =
                    b.build_float_mul(b.build_float_mul(d, c(0.797_884_560_8), "k")?, p, "arg")?;
                let t = self.libm("tanh", arg)?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), t, "t1")?, "g")?
            }
            Activation::Silu | Activation::Sigmoid => {
                let e = self.libm("exp", b.build_float_neg(d, "n")?)?;
                let den = b.build_float_add(c(1.0), e, "den")?;
                let num = if f == Activation::Silu { d } else { c(1.0) };
                b.build_float_div(num, den, "s")?
            }
            Activation::QuickGelu => {
                let arg = b.build_float_mul(c(-Activation::QUICK_GELU_SCALE), d, "n")?;
                let e = self.libm("exp", arg)?;
                let den = b.build_float_add(c(1.0), e, "den")?;
                b.build_float_div(d, den, "s")?
            }
            Activation::Mish => {
                let t = self.libm("tanh", self.softplus_f64(d)?)?;
                b.build_float_mul(d, t, "mish")?
            }
            // Returned above, in the element type.
            Activation::None
            | Activation::Relu
            | Activation::Tanh
            | Activation::Relu6
            | Activation::LeakyRelu => {
                return Err(BackendError::Internal(format!("activation {f:?}")))
            }
        };
        Ok(if dt == DType::F32 {
            b.build_float_trunc(y, self.t.f32, "r")?
        } else {
            y
        })
    }

    /// `softplus(x) = max(x, 0) + log1p(exp(-|x|))` on an f64 value, the
    /// interpreter's `nn::softplus` operation for operation.
    pub(super) fn softplus_f64(&self, d: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let b = &self.b;
        let zero = self.t.f64.const_zero();
        let pos = b.build_float_compare(FloatPredicate::OGT, d, zero, "pos")?;
        let relu = b.build_select(pos, d, zero, "mx")?.into_float_value();
        let abs = self.float_intrinsic("llvm.fabs", d)?;
        let e = self.libm("exp", b.build_float_neg(abs, "na")?)?;
        let l = self.libm("log1p", e)?;
        Ok(b.build_float_add(relu, l, "sp")?)
    }

    pub(super) fn binary(
        &self,
        f: BinaryFn,
        dt: DType,
        a: BasicValueEnum<'ctx>,
        bv: BasicValueEnum<'ctx>,
        exit: Exit<'ctx>,
        div_msg: PointerValue<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        let b = &self.b;
        if dt.is_float() {
            let (x, y) = (a.into_float_value(), bv.into_float_value());
            let cmp = |p: FloatPredicate| -> Result<BasicValueEnum<'ctx>> {
                let c = b.build_float_compare(p, x, y, "c")?;
                Ok(b.build_int_z_extend(c, self.t.i8, "b")?.into())
            };
            return Ok(match f {
                BinaryFn::Add => b.build_float_add(x, y, "s")?.into(),
                BinaryFn::Sub => b.build_float_sub(x, y, "s")?.into(),
                BinaryFn::Mul => b.build_float_mul(x, y, "s")?.into(),
                BinaryFn::Div => b.build_float_div(x, y, "s")?.into(),
                BinaryFn::Max | BinaryFn::Min => {
                    let name = if f == BinaryFn::Max {
                        "llvm.maxnum"
                    } else {
                        "llvm.minnum"
                    };
                    let f = self.intrinsic(name, &[x.get_type().into()])?;
                    match b
                        .build_call(f, &[x.into(), y.into()], "m")?
                        .try_as_basic_value()
                    {
                        inkwell::values::ValueKind::Basic(r) => r,
                        inkwell::values::ValueKind::Instruction(_) => {
                            return Err(BackendError::Internal(name.into()))
                        }
                    }
                }
                BinaryFn::Lt => cmp(FloatPredicate::OLT)?,
                BinaryFn::Eq => cmp(FloatPredicate::OEQ)?,
            });
        }
        let (x, y) = (a.into_int_value(), bv.into_int_value());
        let cmp = |p: IntPredicate| -> Result<BasicValueEnum<'ctx>> {
            let c = b.build_int_compare(p, x, y, "c")?;
            Ok(b.build_int_z_extend(c, self.t.i8, "b")?.into())
        };
        let signed = dt != DType::Bool;
        Ok(match f {
            BinaryFn::Add => b.build_int_add(x, y, "s")?.into(),
            BinaryFn::Sub => b.build_int_sub(x, y, "s")?.into(),
            BinaryFn::Mul => b.build_int_mul(x, y, "s")?.into(),
            BinaryFn::Div => {
                let z = b.build_int_compare(IntPredicate::EQ, y, y.get_type().const_zero(), "z")?;
                self.fail_if(exit, z, |g| {
                    g.call_i32(
                        "rc_model_error",
                        &[g.i32c(err::VALUE).into(), div_msg.into()],
                    )
                })?;
                b.build_int_signed_div(x, y, "q")?.into()
            }
            BinaryFn::Max | BinaryFn::Min => {
                let p = match (f == BinaryFn::Max, signed) {
                    (true, true) => IntPredicate::SGT,
                    (true, false) => IntPredicate::UGT,
                    (false, true) => IntPredicate::SLT,
                    (false, false) => IntPredicate::ULT,
                };
                let c = b.build_int_compare(p, x, y, "c")?;
                b.build_select(c, x, y, "m")?
            }
            BinaryFn::Lt => cmp(if signed {
                IntPredicate::SLT
            } else {
                IntPredicate::ULT
            })?,
            BinaryFn::Eq => cmp(IntPredicate::EQ)?,
        })
    }

    /// An elementwise op with numpy broadcasting over `xs`: the result has
    /// `v`'s declared shape (every symbol bound by the operands).
    /// True for an f32 `add` whose first operand has the result's shape and
    /// whose second is a trailing part of it (`[B,P,D] + [P,D]`, or equal
    /// shapes): the runtime's threaded row add computes it.
    pub(super) fn row_add_shape(&self, fs: &Fs<'ctx, '_>, v: ValueId) -> bool {
        let g = fs.g;
        let (out, node) = (g.ty(v), g.node(v));
        let (a, b) = (g.ty(node.inputs[0]), g.ty(node.inputs[1]));
        out.dtype == DType::F32
            && a == out
            && b.dtype == DType::F32
            && (1..=out.rank()).contains(&b.rank())
            && out.shape.ends_with(&b.shape)
    }

    /// `out = a + b` for [`Self::row_add_shape`]: b's rows repeat for each
    /// index of a's leading dims.
    pub(super) fn row_add(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let (a, b) = (self.operand(fs, v, 0)?, self.operand(fs, v, 1)?);
        let what = at(fs.g, &fs.numbering, v);
        if fs.fusion.take_input.contains(&v) && a.slot.is_some() && a.ld.is_none() {
            // `a` dies here: its buffer becomes the result, and b's rows are
            // added in place (the same f32 additions, in the same order).
            let always = self.ctx.bool_type().const_int(1, false);
            let n = self.prod(&a.dims)?;
            let copy = |g: &Self, dst: PointerValue<'ctx>| {
                g.copy_elems(DType::F32, dst, g.i64c(0), a.ptr, g.i64c(0), n)
            };
            let out = self.take_or_copy(fs, &a, always, a.dims.clone(), &what, copy)?;
            return self.add_row_block(&out, &out, &b);
        }
        let out = self.alloc_buf(fs, DType::F32, a.dims.clone(), &what)?;
        self.add_row_block(&out, &a, &b)
    }

    /// `out = a + b` where b's rows repeat for each index of a's leading
    /// dims (`out` may be `a`: the add is then in place); returns `out`.
    fn add_row_block(&self, out: &Buf<'ctx>, a: &Buf<'ctx>, b: &Buf<'ctx>) -> Result<Buf<'ctx>> {
        let width = self.last(b);
        let rows = self.rows(b)?;
        let block = self.prod(&b.dims)?;
        let lead = self.prod(&a.dims[..a.dims.len() - b.dims.len()])?;
        self.for_range(lead, &mut |o| {
            let off = self.mul(o, block)?;
            let (to, from) = (
                self.gep(DType::F32, out.ptr, off)?,
                self.gep(DType::F32, a.ptr, off)?,
            );
            self.add_rows(to, width, from, width, Some((b.ptr, width)), rows, width)
        })?;
        Ok(out.clone())
    }

    pub(super) fn elementwise(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        xs: &[Buf<'ctx>],
        out_dt: DType,
        f: &dyn Fn(&Self, &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>>,
    ) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        // Integer division may stop the model (division by zero): its loop
        // branches to this function's exit, so it stays here, serial.
        let parallel = node.op.kind != OpKind::Div || out_dt.is_float();
        let leaves = node.inputs.clone();
        self.elementwise_over(fs, v, &leaves, xs, out_dt, parallel, f)
    }

    /// [`Self::elementwise`] over `leaves` (the values `xs` hold, each
    /// broadcast to `v`'s shape) rather than `v`'s own operands: `f` may
    /// compute a whole inlined tree from them ([`Self::pointwise`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn elementwise_over(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        leaves: &[ValueId],
        xs: &[Buf<'ctx>],
        out_dt: DType,
        parallel: bool,
        f: &dyn Fn(&Self, &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>>,
    ) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let node = g.node(v);
        let what = at(g, &fs.numbering, v);
        let rty = node.ty.clone();
        let dims = self.type_dims(fs, v)?;
        let out = self.alloc_buf(fs, out_dt, dims.clone(), &what)?;
        let n = rty.rank();
        let same: Vec<bool> = leaves.iter().map(|u| g.ty(*u).shape == rty.shape).collect();
        let scalar: Vec<bool> = leaves
            .iter()
            .map(|u| g.ty(*u).shape.iter().all(|d| *d == Dim::Const(1)))
            .collect();
        if same.iter().zip(&scalar).all(|(s, c)| *s || *c) {
            let total = self.prod(&dims)?;
            let mut caps: Vec<BasicValueEnum> = vec![out.ptr.into()];
            caps.extend(xs.iter().map(|x| BasicValueEnum::from(x.ptr)));
            self.par_range(fs, v, total, &caps, parallel, &mut |c, i| {
                let vals: Vec<BasicValueEnum> = xs
                    .iter()
                    .zip(&same)
                    .zip(&c[1..])
                    .map(|((x, s), p)| {
                        let at = if *s { i } else { self.i64c(0) };
                        self.load(x.dtype, p.into_pointer_value(), at)
                    })
                    .collect::<Result<_>>()?;
                let r = f(self, &vals)?;
                self.store(out_dt, c[0].into_pointer_value(), i, r)
            })?;
            return Ok(out);
        }
        // General broadcasting: per-operand strides (0 on broadcast axes).
        let mut strides: Vec<Vec<IntValue>> = Vec::new();
        for (x, u) in xs.iter().zip(leaves) {
            let shape = &g.ty(*u).shape;
            let m = shape.len();
            if m > n {
                return Err(BackendError::Internal(format!(
                    "{what}: operand rank exceeds result rank"
                )));
            }
            let own = self.strides(&x.dims)?;
            let mut s = vec![self.i64c(0); n];
            for j in 0..m {
                let rj = j + n - m;
                let bcast = shape[j] == Dim::Const(1) && rty.shape[rj] != Dim::Const(1);
                if !bcast {
                    s[rj] = own[j];
                    if shape[j] != rty.shape[rj] {
                        // Symbolically different dims must agree at run time.
                        let bad = self.b.build_int_compare(
                            IntPredicate::NE,
                            x.dims[j],
                            dims[rj],
                            "bc",
                        )?;
                        let msg = self.cstr(&format!(
                            "{what}: operand dims {} and {} do not broadcast at run time",
                            shape[j], rty.shape[rj]
                        ));
                        self.fail_if(fs.exit, bad, |g| {
                            g.call_i32("rc_model_error", &[g.i32c(err::SHAPE).into(), msg.into()])
                        })?;
                    }
                }
            }
            strides.push(s);
        }
        self.broadcast_rows(fs, v, xs, &strides, out, parallel, f)
    }

    /// The broadcasting loop of [`Self::elementwise`] (on the runtime's
    /// threads when `parallel`): one index per row of `out` (every axis but
    /// the last, recovered by division), the last axis an inner loop.
    #[allow(clippy::too_many_arguments)]
    fn broadcast_rows(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        xs: &[Buf<'ctx>],
        strides: &[Vec<IntValue<'ctx>>],
        out: Buf<'ctx>,
        parallel: bool,
        f: &dyn Fn(&Self, &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>>,
    ) -> Result<Buf<'ctx>> {
        let n = out.dims.len();
        let rows = self.prod(&out.dims[..n - 1])?;
        let ostr = self.strides(&out.dims)?;
        // Captures: out, each operand, the dims, each operand's strides, out's strides.
        let mut caps: Vec<BasicValueEnum> = vec![out.ptr.into()];
        caps.extend(xs.iter().map(|x| BasicValueEnum::from(x.ptr)));
        caps.extend(out.dims.iter().map(|d| BasicValueEnum::from(*d)));
        for s in strides.iter().chain(std::iter::once(&ostr)) {
            caps.extend(s.iter().map(|d| BasicValueEnum::from(*d)));
        }
        let out_dt = out.dtype;
        // Last-axis strides known when compiling (1 for a row-major operand,
        // 0 for one broadcast along rows) stay constants inside the loop
        // body, which reads its other captures from memory: the inner loop
        // then has a unit (or no) stride and vectorises.
        let inner: Vec<Option<IntValue<'ctx>>> = strides
            .iter()
            .chain(std::iter::once(&ostr))
            .map(|s| {
                s[n - 1]
                    .get_zero_extended_constant()
                    .map(|k| self.i64c(k as i64))
            })
            .collect();
        self.par_range(fs, v, rows, &caps, parallel, &mut |c, r| {
            let int = |k: usize| c[k].into_int_value();
            let (k_dims, k_strides) = (1 + xs.len(), 1 + xs.len() + n);
            // r -> (i_0, .., i_{n-2}), row-major.
            let mut idx = vec![self.i64c(0); n - 1];
            let mut rest = r;
            for a in (0..n - 1).rev() {
                idx[a] = self.b.build_int_signed_rem(rest, int(k_dims + a), "i")?;
                rest = self.b.build_int_signed_div(rest, int(k_dims + a), "r")?;
            }
            let base = |which: usize| -> Result<IntValue<'ctx>> {
                let mut off = self.i64c(0);
                for (a, i) in idx.iter().enumerate() {
                    off = self.add(off, self.mul(*i, int(k_strides + which * n + a))?)?;
                }
                Ok(off)
            };
            let bases: Vec<IntValue> = (0..=xs.len()).map(base).collect::<Result<_>>()?;
            let step = |w: usize| inner[w].unwrap_or_else(|| int(k_strides + w * n + n - 1));
            self.for_range(int(k_dims + n - 1), &mut |j| {
                let mut vals = Vec::with_capacity(xs.len());
                for (w, x) in xs.iter().enumerate() {
                    let off = self.add(bases[w], self.mul(j, step(w))?)?;
                    vals.push(self.load(x.dtype, c[1 + w].into_pointer_value(), off)?);
                }
                let o = self.add(bases[xs.len()], self.mul(j, step(xs.len()))?)?;
                let r = f(self, &vals)?;
                self.store(out_dt, c[0].into_pointer_value(), o, r)
            })
        })?;
        Ok(out)
    }
}
