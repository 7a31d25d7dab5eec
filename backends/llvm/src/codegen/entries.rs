//! The exported entry points around the generated variants: the dispatcher
//! `reformc_model_run`, weight loading and setting, the signature/info
//! queries and the executable's `main`.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// `reformc_model_run`: picks the variant whose input count, dtypes and
    /// ranks match, after the argument and weights checks.
    /// `return func(args)` (a variant's status code).
    fn return_call(
        &self,
        func: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<()> {
        // bf16 GEMMs for this run on this thread (and the pool's tasks it
        // starts), then the caller's setting back.
        let before = match self.bf16 {
            true => self
                .call("rc_set_gemm_bf16", &[self.i32c(1).into()])?
                .map(|v| v.into_int_value()),
            false => None,
        };
        let rc = self.b.build_call(func, args, "rc")?.try_as_basic_value();
        let inkwell::values::ValueKind::Basic(rc) = rc else {
            return Err(BackendError::Internal("variant call".into()));
        };
        if let Some(before) = before {
            self.call("rc_set_gemm_bf16", &[before.into()])?;
        }
        self.b.build_return(Some(&rc))?;
        Ok(())
    }

    pub(crate) fn dispatcher(
        &self,
        variants: &[(FunctionValue<'ctx>, Vec<TensorType>)],
        n_outputs: usize,
        expected: &str,
    ) -> Result<()> {
        let fty = self.t.i32.fn_type(
            &[
                self.t.ptr.into(),
                self.t.i64.into(),
                self.t.ptr.into(),
                self.t.i64.into(),
            ],
            false,
        );
        let f = self.define("reformc_model_run", fty, Linkage::External);
        let p = |i: u32| {
            f.get_nth_param(i)
                .ok_or_else(|| BackendError::Internal("param".into()))
        };
        let inputs = p(0)?.into_pointer_value();
        let n_in = p(1)?.into_int_value();
        let outputs = p(2)?.into_pointer_value();
        let n_out = p(3)?.into_int_value();
        self.call("rc_model_clear_error", &[])?;
        let fail = |g: &Self, code: i32, msg: &str| -> Result<()> {
            let m = g.cstr(msg);
            let rc = g.call_i32("rc_model_error", &[g.i32c(code).into(), m.into()])?;
            g.b.build_return(Some(&rc))?;
            Ok(())
        };
        let check = |g: &Self, cond: IntValue<'ctx>, code: i32, msg: &str| -> Result<()> {
            let bad = g.block("bad")?;
            let ok = g.block("ok")?;
            g.b.build_conditional_branch(cond, bad, ok)?;
            g.b.position_at_end(bad);
            fail(g, code, msg)?;
            g.b.position_at_end(ok);
            Ok(())
        };
        check(
            self,
            self.b.build_is_null(outputs, "n")?,
            err::ARGUMENT,
            "reformc_model_run: outputs is NULL",
        )?;
        let c =
            self.b
                .build_int_compare(IntPredicate::NE, n_out, self.i64c(n_outputs as i64), "c")?;
        check(
            self,
            c,
            err::ARGUMENT,
            &format!("reformc_model_run: n_outputs must be {n_outputs}"),
        )?;
        let bytes = self
            .t
            .tensor
            .size_of()
            .ok_or_else(|| BackendError::Internal("sizeof".into()))?;
        let bytes = self.mul(bytes, self.i64c(n_outputs as i64))?;
        self.b
            .build_memset(outputs, 8, self.t.i8.const_zero(), bytes)
            .map_err(|e| BackendError::Internal(format!("memset: {e}")))?;
        let c = self.b.build_and(
            self.b.build_is_null(inputs, "n")?,
            self.b
                .build_int_compare(IntPredicate::SGT, n_in, self.i64c(0), "c")?,
            "c",
        )?;
        check(self, c, err::ARGUMENT, "reformc_model_run: inputs is NULL")?;
        let ready = self
            .b
            .build_load(self.t.i32, self.ready.as_pointer_value(), "ready")?
            .into_int_value();
        let c = self
            .b
            .build_int_compare(IntPredicate::EQ, ready, self.i32c(0), "c")?;
        check(
            self,
            c,
            err::NO_WEIGHTS,
            "reformc_model_run: no weights are loaded (call reformc_model_load_weights first)",
        )?;
        for (func, types) in variants {
            let next = self.block("next")?;
            let fields = self.block("fields")?;
            let c = self.b.build_int_compare(
                IntPredicate::EQ,
                n_in,
                self.i64c(types.len() as i64),
                "c",
            )?;
            self.b.build_conditional_branch(c, fields, next)?;
            self.b.position_at_end(fields);
            let mut ok = self.t.i1.const_int(1, false);
            for (i, ty) in types.iter().enumerate() {
                let t = self.nth_tensor(inputs, self.i64c(i as i64))?;
                let dt = self.tensor_i32(t, field::DTYPE)?;
                let rk = self.tensor_i32(t, field::RANK)?;
                let a = self.b.build_int_compare(
                    IntPredicate::EQ,
                    dt,
                    self.i32c(abi::dtype_code(ty.dtype)),
                    "a",
                )?;
                let r = self.b.build_int_compare(
                    IntPredicate::EQ,
                    rk,
                    self.i32c(ty.rank() as i32),
                    "r",
                )?;
                ok = self.b.build_and(ok, self.b.build_and(a, r, "ar")?, "ok")?;
            }
            let hit = self.block("hit")?;
            self.b.build_conditional_branch(ok, hit, next)?;
            self.b.position_at_end(hit);
            self.return_call(
                *func,
                &[inputs.into(), n_in.into(), outputs.into(), n_out.into()],
            )?;
            self.b.position_at_end(next);
        }
        // A count that only one variant takes: let that variant report the
        // precise dtype/rank/shape problem.
        for (func, types) in variants {
            let n = types.len();
            if variants.iter().filter(|(_, t)| t.len() == n).count() != 1 {
                continue;
            }
            let next = self.block("next")?;
            let hit = self.block("only")?;
            let c = self
                .b
                .build_int_compare(IntPredicate::EQ, n_in, self.i64c(n as i64), "c")?;
            self.b.build_conditional_branch(c, hit, next)?;
            self.b.position_at_end(hit);
            self.return_call(
                *func,
                &[inputs.into(), n_in.into(), outputs.into(), n_out.into()],
            )?;
            self.b.position_at_end(next);
        }
        // Describing the inputs reads them: only as many as some variant
        // takes, never past the caller's array.
        let max_n = variants.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let over =
            self.b
                .build_int_compare(IntPredicate::UGT, n_in, self.i64c(max_n as i64), "over")?;
        let shown = self
            .b
            .build_select(over, self.t.ptr.const_null(), inputs, "shown")?;
        let e = self.cstr(expected);
        let rc = self.call_i32(
            "rc_model_error_signature",
            &[
                self.i32c(err::ARGUMENT).into(),
                e.into(),
                shown.into(),
                n_in.into(),
            ],
        )?;
        self.b.build_return(Some(&rc))?;
        Ok(())
    }

    /// Weights entry points: `reformc_model_load_weights(path)`,
    /// `reformc_model_set_weights(ptrs, n)`, `reformc_model_unload_weights()`.
    /// `embedded`: per weight, the bytes to bake into the object.
    pub(crate) fn weight_entries(
        &self,
        weights: &[(String, TensorType)],
        allowed_extra: &[String],
        embedded: Option<&[Vec<u8>]>,
    ) -> Result<()> {
        let nw = weights.len();
        let handle = self
            .module
            .add_global(self.t.ptr, None, "__reformc_weights_handle");
        handle.set_linkage(Linkage::Internal);
        handle.set_initializer(&self.null());
        // The table the loader checks against.
        let names: Vec<PointerValue> = weights.iter().map(|(n, _)| self.cstr(n)).collect();
        let ranks: Vec<i64> = weights.iter().map(|(_, t)| t.rank() as i64).collect();
        let shapes: Vec<i64> = weights
            .iter()
            .flat_map(|(_, t)| {
                t.shape
                    .iter()
                    .map(|d| d.as_const().map(|c| c as i64).unwrap_or(-1))
            })
            .collect();
        let names_g = self.const_ptr_array(".wnames", &names);
        let extras: Vec<PointerValue> = allowed_extra.iter().map(|n| self.cstr(n)).collect();
        let extras_g = self.const_ptr_array(".wextra", &extras);
        let ranks_g = self.const_i64_array(&ranks);
        let shapes_g = self.const_i64_array(&shapes);
        // Embedded weights: constant arrays, the table initialised to point at them.
        let embedded_table = match embedded {
            Some(data) => {
                if data.len() != nw {
                    return Err(BackendError::Internal("embedded weight count".into()));
                }
                let ptrs: Vec<PointerValue> = data
                    .iter()
                    .map(|bytes| {
                        let init = self.ctx.const_string(bytes, false);
                        let g = self.module.add_global(init.get_type(), None, ".weight");
                        g.set_linkage(Linkage::Private);
                        g.set_constant(true);
                        g.set_alignment(ALIGN as u32);
                        g.set_initializer(&init);
                        g.as_pointer_value()
                    })
                    .collect();
                let arr = self.t.ptr.const_array(&ptrs);
                self.weights.set_initializer(&arr);
                self.ready.set_initializer(&self.i32c(1));
                Some(self.const_ptr_array(".wembedded", &ptrs))
            }
            None => None,
        };
        let table_ty = self.t.ptr.array_type(nw as u32);
        let table_bytes = self.i64c(8 * nw as i64);

        // int32_t reformc_model_load_weights(const char* path)
        let fty = self.t.i32.fn_type(&[self.t.ptr.into()], false);
        let f = self.define("reformc_model_load_weights", fty, Linkage::External);
        let path = f
            .get_nth_param(0)
            .ok_or_else(|| BackendError::Internal("param".into()))?;
        self.call("rc_model_clear_error", &[])?;
        let tmp = self.b.build_alloca(table_ty, "ptrs")?;
        let hslot = self.b.build_alloca(self.t.ptr, "h")?;
        self.b.build_store(hslot, self.null())?;
        let rc = self.call_i32(
            "rc_model_load_safetensors",
            &[
                path.into(),
                self.i64c(nw as i64).into(),
                names_g.into(),
                ranks_g.into(),
                shapes_g.into(),
                self.i64c(extras.len() as i64).into(),
                extras_g.into(),
                tmp.into(),
                hslot.into(),
            ],
        )?;
        let bad = self
            .b
            .build_int_compare(IntPredicate::NE, rc, self.i32c(0), "bad")?;
        let fail_bb = self.block("fail")?;
        let ok_bb = self.block("ok")?;
        self.b.build_conditional_branch(bad, fail_bb, ok_bb)?;
        self.b.position_at_end(fail_bb);
        self.b.build_return(Some(&rc))?;
        self.b.position_at_end(ok_bb);
        let old = self
            .b
            .build_load(self.t.ptr, handle.as_pointer_value(), "old")?;
        self.call("rc_model_unload_weights", &[old.into()])?;
        if nw > 0 {
            self.b
                .build_memcpy(self.weights.as_pointer_value(), 8, tmp, 8, table_bytes)
                .map_err(|e| BackendError::Internal(format!("memcpy: {e}")))?;
        }
        let h = self.b.build_load(self.t.ptr, hslot, "h")?;
        self.b.build_store(handle.as_pointer_value(), h)?;
        self.b
            .build_store(self.ready.as_pointer_value(), self.i32c(1))?;
        self.b.build_return(Some(&self.i32c(0)))?;

        // int32_t reformc_model_set_weights(const void* const* ptrs, int64_t n)
        let fty = self
            .t
            .i32
            .fn_type(&[self.t.ptr.into(), self.t.i64.into()], false);
        let f = self.define("reformc_model_set_weights", fty, Linkage::External);
        let ptrs = f
            .get_nth_param(0)
            .ok_or_else(|| BackendError::Internal("param".into()))?
            .into_pointer_value();
        let n = f
            .get_nth_param(1)
            .ok_or_else(|| BackendError::Internal("param".into()))?
            .into_int_value();
        self.call("rc_model_clear_error", &[])?;
        let c = self.b.build_or(
            self.b
                .build_int_compare(IntPredicate::NE, n, self.i64c(nw as i64), "c")?,
            self.b.build_and(
                self.b.build_is_null(ptrs, "z")?,
                self.b
                    .build_int_compare(IntPredicate::SGT, n, self.i64c(0), "p")?,
                "zp",
            )?,
            "bad",
        )?;
        let fail_bb = self.block("fail")?;
        let ok_bb = self.block("ok")?;
        self.b.build_conditional_branch(c, fail_bb, ok_bb)?;
        self.b.position_at_end(fail_bb);
        let m = self.cstr(&format!(
            "reformc_model_set_weights: expected {nw} non-NULL pointers in the signature's weight order"
        ));
        let rc = self.call_i32(
            "rc_model_error",
            &[self.i32c(err::ARGUMENT).into(), m.into()],
        )?;
        self.b.build_return(Some(&rc))?;
        self.b.position_at_end(ok_bb);
        // Every pointer must be non-NULL.
        let any_null = self.b.build_alloca(self.t.i1, "anynull")?;
        self.b.build_store(any_null, self.t.i1.const_zero())?;
        self.for_range(n, &mut |i| {
            // SAFETY: building a GEP only creates an instruction; i < n pointers.
            let q = unsafe { self.b.build_in_bounds_gep(self.t.ptr, ptrs, &[i], "q")? };
            let p = self.b.build_load(self.t.ptr, q, "p")?.into_pointer_value();
            let z = self.b.build_is_null(p, "z")?;
            let cur = self
                .b
                .build_load(self.t.i1, any_null, "cur")?
                .into_int_value();
            self.b
                .build_store(any_null, self.b.build_or(cur, z, "o")?)?;
            Ok(())
        })?;
        let z = self
            .b
            .build_load(self.t.i1, any_null, "z")?
            .into_int_value();
        let fail_bb = self.block("fail")?;
        let ok_bb = self.block("ok")?;
        self.b.build_conditional_branch(z, fail_bb, ok_bb)?;
        self.b.position_at_end(fail_bb);
        let rc = self.call_i32(
            "rc_model_error",
            &[self.i32c(err::ARGUMENT).into(), m.into()],
        )?;
        self.b.build_return(Some(&rc))?;
        self.b.position_at_end(ok_bb);
        let old = self
            .b
            .build_load(self.t.ptr, handle.as_pointer_value(), "old")?;
        self.call("rc_model_unload_weights", &[old.into()])?;
        self.b.build_store(handle.as_pointer_value(), self.null())?;
        if nw > 0 {
            self.b
                .build_memcpy(self.weights.as_pointer_value(), 8, ptrs, 8, table_bytes)
                .map_err(|e| BackendError::Internal(format!("memcpy: {e}")))?;
        }
        self.b
            .build_store(self.ready.as_pointer_value(), self.i32c(1))?;
        self.b.build_return(Some(&self.i32c(0)))?;

        // void reformc_model_unload_weights(void)
        let fty = self.ctx.void_type().fn_type(&[], false);
        self.define("reformc_model_unload_weights", fty, Linkage::External);
        let old = self
            .b
            .build_load(self.t.ptr, handle.as_pointer_value(), "old")?;
        self.call("rc_model_unload_weights", &[old.into()])?;
        self.b.build_store(handle.as_pointer_value(), self.null())?;
        match embedded_table {
            Some(src) if nw > 0 => {
                self.b
                    .build_memcpy(self.weights.as_pointer_value(), 8, src, 8, table_bytes)
                    .map_err(|e| BackendError::Internal(format!("memcpy: {e}")))?;
                self.b
                    .build_store(self.ready.as_pointer_value(), self.i32c(1))?;
            }
            Some(_) => {
                self.b
                    .build_store(self.ready.as_pointer_value(), self.i32c(1))?;
            }
            None => {
                if nw > 0 {
                    self.b
                        .build_memset(
                            self.weights.as_pointer_value(),
                            8,
                            self.t.i8.const_zero(),
                            table_bytes,
                        )
                        .map_err(|e| BackendError::Internal(format!("memset: {e}")))?;
                }
                self.b
                    .build_store(self.ready.as_pointer_value(), self.i32c(0))?;
            }
        }
        self.b.build_return(None)?;
        Ok(())
    }

    pub(super) fn const_ptr_array(
        &self,
        name: &str,
        ptrs: &[PointerValue<'ctx>],
    ) -> PointerValue<'ctx> {
        let arr = self.t.ptr.const_array(ptrs);
        let g = self.module.add_global(arr.get_type(), None, name);
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_initializer(&arr);
        g.as_pointer_value()
    }

    /// `const char* reformc_model_signature(void)` and `reformc_model_last_error`.
    pub(crate) fn info_entries(&self, signature_json: &str) -> Result<()> {
        let fty = self.t.ptr.fn_type(&[], false);
        self.define("reformc_model_signature", fty, Linkage::External);
        let s = self.cstr(signature_json);
        self.b.build_return(Some(&s))?;
        self.define("reformc_model_last_error", fty, Linkage::External);
        let e = self
            .call("rc_model_last_error", &[])?
            .ok_or_else(|| BackendError::Internal("rc_model_last_error".into()))?;
        self.b.build_return(Some(&e))?;
        Ok(())
    }

    /// `int main(int argc, char** argv)` calling the runtime's `reformc_exe_main`
    /// with a description of this model (see `exe-runtime/src/exe_main.rs`).
    pub(crate) fn exe_main(&self, info: &crate::ExeInfo, weights_embedded: bool) -> Result<()> {
        let fp = |name: &str| -> Result<BasicValueEnum<'ctx>> {
            Ok(self
                .module
                .get_function(name)
                .ok_or_else(|| BackendError::Internal(format!("{name} is not defined")))?
                .as_global_value()
                .as_pointer_value()
                .into())
        };
        let opt_str = |s: &Option<String>| -> BasicValueEnum<'ctx> {
            match s {
                Some(s) => self.cstr(s).into(),
                None => self.null().into(),
            }
        };
        let i = |v: i64| -> BasicValueEnum<'ctx> { self.i64c(v).into() };
        let fields: Vec<BasicValueEnum> = vec![
            self.i32c(abi::ABI_VERSION).into(),
            self.i32c(weights_embedded as i32).into(),
            fp("reformc_model_run")?,
            fp("reformc_model_load_weights")?,
            fp("reformc_model_signature")?,
            fp("reformc_model_last_error")?,
            opt_str(&info.default_weights),
            self.cstr(&info.model_name).into(),
            self.cstr(&info.output_name).into(),
            i(info.default_threads),
            i(info.vocab_size),
            i(info.max_len),
            i(info.pad_multiple),
            i(info.pad_min_len),
            i(info.n_lsh),
            i(info.heads),
            i(info.head_dim),
            i(info.rounds),
            i(info.rot_half),
            self.i32c(info.variants).into(),
            self.i32c(info.n_buckets).into(),
            // The step fields (exe-runtime's ExeInfo, after n_buckets).
            self.i32c(i32::from(info.step.is_some())).into(),
            self.i32c(i32::from(info.step.as_ref().is_some_and(|s| s.causal)))
                .into(),
            self.i32c(info.step.as_ref().map_or(-1, |s| s.labels_index))
                .into(),
            match &info.step {
                // Newline-separated: output names never hold a newline (IR names are quoted strings without one).
                Some(s) => self.cstr(&s.output_names.join("\n")).into(),
                None => self.null().into(),
            },
            self.i32c(i32::from(info.step.as_ref().is_some_and(|s| s.seed)))
                .into(),
        ];
        let st = self.ctx.struct_type(
            &fields.iter().map(|f| f.get_type()).collect::<Vec<_>>(),
            false,
        );
        let init = st.const_named_struct(&fields);
        let g = self.module.add_global(st, None, "__reformc_exe_info");
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_initializer(&init);
        let fty = self
            .t
            .i32
            .fn_type(&[self.t.i32.into(), self.t.ptr.into()], false);
        let f = self.define("main", fty, Linkage::External);
        let argc = f
            .get_nth_param(0)
            .ok_or_else(|| BackendError::Internal("param".into()))?;
        let argv = f
            .get_nth_param(1)
            .ok_or_else(|| BackendError::Internal("param".into()))?;
        let rc = self.call_i32(
            "reformc_exe_main",
            &[argc.into(), argv.into(), g.as_pointer_value().into()],
        )?;
        self.b.build_return(Some(&rc))?;
        Ok(())
    }
}
