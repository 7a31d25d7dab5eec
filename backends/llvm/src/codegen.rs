//! IR graph -> LLVM IR: one function per graph variant that binds symbolic
//! dims from the input shapes, validates the inputs, allocates and frees
//! intermediate buffers by the liveness plan, generates loops for layout and
//! elementwise ops and calls the runtime kernels for the heavy ones; plus the
//! exported entry points (`reformc_model_run`, weights loading, signature).

use crate::abi::{self, err, field, CTy};
use crate::error::{BackendError, Result};
use crate::fusion::Fusion;
use crate::plan::{owned, BlockKey, Liveness};
use inkwell::attributes::AttributeLoc;
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum, PointerType, StructType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, GlobalValue,
    IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use reformc_ir::{Attr, DType, Dim, Graph, Node, OpKind, TensorType, ValueId};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Alignment of every buffer generated code allocates.
const ALIGN: u64 = 64;

/// Largest value a symbolic dim may take at run time (keeps size arithmetic far from overflow).
const MAX_DIM: i64 = 1 << 40;

/// LLVM types used throughout.
pub(crate) struct Types<'ctx> {
    pub i1: inkwell::types::IntType<'ctx>,
    pub i8: inkwell::types::IntType<'ctx>,
    pub i32: inkwell::types::IntType<'ctx>,
    pub i64: inkwell::types::IntType<'ctx>,
    pub f32: inkwell::types::FloatType<'ctx>,
    pub f64: inkwell::types::FloatType<'ctx>,
    pub ptr: PointerType<'ctx>,
    /// `reformc_tensor`.
    pub tensor: StructType<'ctx>,
}

impl<'ctx> Types<'ctx> {
    pub(crate) fn new(ctx: &'ctx Context) -> Self {
        let i64 = ctx.i64_type();
        let i32 = ctx.i32_type();
        let ptr = ctx.ptr_type(AddressSpace::default());
        let dims = i64.array_type(abi::MAX_RANK as u32);
        let tensor = ctx.opaque_struct_type("reformc_tensor");
        tensor.set_body(
            &[
                i32.into(),
                i32.into(),
                dims.into(),
                dims.into(),
                ptr.into(),
                i32.into(),
                i32.into(),
            ],
            false,
        );
        Types {
            i1: ctx.bool_type(),
            i8: ctx.i8_type(),
            i32,
            i64,
            f32: ctx.f32_type(),
            f64: ctx.f64_type(),
            ptr,
            tensor,
        }
    }
}

/// A limit checked when a symbol is bound: `value <= max`, else `what` is reported.
#[derive(Clone, Debug)]
pub struct DimLimit {
    /// The symbol (`P`, `L`).
    pub symbol: String,
    /// Largest accepted value.
    pub max: u64,
    /// What the limit is, for the error message.
    pub what: String,
}

/// A value at run time: its buffer, concrete dims and who frees it.
#[derive(Clone)]
struct Buf<'ctx> {
    ptr: PointerValue<'ctx>,
    dims: Vec<IntValue<'ctx>>,
    dtype: DType,
    /// The stack slot holding the owning pointer (None: borrowed).
    slot: Option<PointerValue<'ctx>>,
    /// Row stride in elements when rows are not contiguous (a half of a
    /// reversible state); only `linear` reads such a buffer directly, other
    /// ops get a contiguous copy first.
    ld: Option<IntValue<'ctx>>,
}

/// Where a failing check goes: the error-code slot and the cleanup block.
#[derive(Clone, Copy)]
struct Exit<'ctx> {
    err: PointerValue<'ctx>,
    cleanup: BasicBlock<'ctx>,
}

/// State of the function being generated.
struct Fs<'ctx, 'g> {
    g: &'g Graph,
    live: Liveness,
    numbering: HashMap<ValueId, usize>,
    entry_b: Builder<'ctx>,
    exit: Exit<'ctx>,
    slots: Vec<PointerValue<'ctx>>,
    syms: HashMap<String, IntValue<'ctx>>,
    sym_note: HashMap<String, String>,
    vals: HashMap<ValueId, Buf<'ctx>>,
    /// What generated code fuses (crate::fusion).
    fusion: Fusion,
    /// Linears that accumulate onto a reversible state half: (rows, stride).
    dest: HashMap<ValueId, (PointerValue<'ctx>, IntValue<'ctx>)>,
}

/// Builds one LLVM module from graph variants.
pub(crate) struct Gen<'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    pub t: Types<'ctx>,
    strings: RefCell<HashMap<String, PointerValue<'ctx>>>,
    fn_attrs: Vec<(String, String)>,
    /// `[n_weights x ptr]`: where each weight's data is.
    weights: GlobalValue<'ctx>,
    weights_ty: inkwell::types::ArrayType<'ctx>,
    ready: GlobalValue<'ctx>,
    weight_index: HashMap<String, usize>,
    limits: Vec<DimLimit>,
}

fn volatile(i: inkwell::values::InstructionValue) -> Result<()> {
    i.set_volatile(true)
        .map_err(|e| BackendError::Internal(format!("volatile: {e}")))
}

fn at(g: &Graph, numbering: &HashMap<ValueId, usize>, v: ValueId) -> String {
    format!(
        "%{} = {}",
        numbering.get(&v).copied().unwrap_or(usize::MAX),
        g.node(v).op.kind.name()
    )
}

impl<'ctx> Gen<'ctx> {
    /// A module with the weight table for `weights` (name, type) declared.
    pub(crate) fn new(
        ctx: &'ctx Context,
        name: &str,
        weights: &[(String, TensorType)],
        fn_attrs: Vec<(String, String)>,
        limits: Vec<DimLimit>,
    ) -> Self {
        let module = ctx.create_module(name);
        let t = Types::new(ctx);
        let wt = t.ptr.array_type(weights.len() as u32);
        let wg = module.add_global(wt, None, "__reformc_weights");
        wg.set_linkage(Linkage::Internal);
        wg.set_initializer(&wt.const_zero());
        let ready = module.add_global(t.i32, None, "__reformc_weights_ready");
        ready.set_linkage(Linkage::Internal);
        ready.set_initializer(&t.i32.const_zero());
        Gen {
            ctx,
            module,
            b: ctx.create_builder(),
            t,
            strings: RefCell::new(HashMap::new()),
            fn_attrs,
            weights: wg,
            weights_ty: wt,
            ready,
            weight_index: weights
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.clone(), i))
                .collect(),
            limits,
        }
    }

    // ---------------------------------------------------------------- basics

    fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.t.i64.const_int(v as u64, true)
    }

    fn i32c(&self, v: i32) -> IntValue<'ctx> {
        self.t.i32.const_int(v as u64, true)
    }

    fn null(&self) -> PointerValue<'ctx> {
        self.t.ptr.const_null()
    }

    /// A private NUL-terminated string constant.
    pub(crate) fn cstr(&self, s: &str) -> PointerValue<'ctx> {
        if let Some(p) = self.strings.borrow().get(s) {
            return *p;
        }
        let bytes = s.as_bytes();
        let init = self.ctx.const_string(bytes, true);
        let g = self.module.add_global(init.get_type(), None, ".str");
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_unnamed_addr(true);
        g.set_initializer(&init);
        let p = g.as_pointer_value();
        self.strings.borrow_mut().insert(s.to_string(), p);
        p
    }

    fn ctype(&self, c: CTy) -> Option<BasicMetadataTypeEnum<'ctx>> {
        Some(match c {
            CTy::Void => return None,
            CTy::I32 => self.t.i32.into(),
            CTy::I64 => self.t.i64.into(),
            CTy::F32 => self.t.f32.into(),
            CTy::F64 => self.t.f64.into(),
            CTy::Ptr => self.t.ptr.into(),
        })
    }

    /// The declaration of an external function of [`abi::EXTERNS`].
    pub(crate) fn external(&self, name: &str) -> Result<FunctionValue<'ctx>> {
        if let Some(f) = self.module.get_function(name) {
            return Ok(f);
        }
        let (ret, params) = abi::extern_sig(name)
            .ok_or_else(|| BackendError::Internal(format!("unknown external `{name}`")))?;
        let params: Vec<BasicMetadataTypeEnum> =
            params.iter().filter_map(|p| self.ctype(*p)).collect();
        let fty = match ret {
            CTy::Void => self.ctx.void_type().fn_type(&params, false),
            CTy::I32 => self.t.i32.fn_type(&params, false),
            CTy::I64 => self.t.i64.fn_type(&params, false),
            CTy::F32 => self.t.f32.fn_type(&params, false),
            CTy::F64 => self.t.f64.fn_type(&params, false),
            CTy::Ptr => self.t.ptr.fn_type(&params, false),
        };
        let f = self.module.add_function(name, fty, Some(Linkage::External));
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(
                inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"),
                0,
            ),
        );
        Ok(f)
    }

    /// Calls an external function; returns its value (None for void).
    fn call(
        &self,
        name: &str,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<Option<BasicValueEnum<'ctx>>> {
        let f = self.external(name)?;
        let cs = self.b.build_call(f, args, "")?;
        Ok(match cs.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(v) => Some(v),
            inkwell::values::ValueKind::Instruction(_) => None,
        })
    }

    fn call_i32(
        &self,
        name: &str,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<IntValue<'ctx>> {
        self.call(name, args)?
            .map(|v| v.into_int_value())
            .ok_or_else(|| BackendError::Internal(format!("`{name}` returns nothing")))
    }

    /// Applies the target attributes (and nounwind) to a defined function.
    pub(crate) fn decorate(&self, f: FunctionValue<'ctx>) {
        for (k, v) in &self.fn_attrs {
            f.add_attribute(
                AttributeLoc::Function,
                self.ctx.create_string_attribute(k, v),
            );
        }
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(
                inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"),
                0,
            ),
        );
    }

    fn cur_fn(&self) -> Result<FunctionValue<'ctx>> {
        self.b
            .get_insert_block()
            .and_then(|b| b.get_parent())
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))
    }

    fn block(&self, name: &str) -> Result<BasicBlock<'ctx>> {
        Ok(self.ctx.append_basic_block(self.cur_fn()?, name))
    }

    fn elem_ty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            DType::F32 => self.t.f32.into(),
            DType::F64 => self.t.f64.into(),
            DType::I64 => self.t.i64.into(),
            DType::I32 => self.t.i32.into(),
            DType::Bool => self.t.i8.into(),
        }
    }

    fn gep(
        &self,
        d: DType,
        p: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>> {
        // SAFETY: building a GEP only creates an instruction; generated code
        // indexes within buffers sized from the same dims as the loops.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.elem_ty(d), p, &[idx], "p")?
        })
    }

    fn load(
        &self,
        d: DType,
        p: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        let q = self.gep(d, p, idx)?;
        Ok(self.b.build_load(self.elem_ty(d), q, "v")?)
    }

    fn store(
        &self,
        d: DType,
        p: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
        v: BasicValueEnum<'ctx>,
    ) -> Result<()> {
        let q = self.gep(d, p, idx)?;
        self.b.build_store(q, v)?;
        Ok(())
    }

    fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_mul(a, b, "m")?)
    }

    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_add(a, b, "a")?)
    }

    fn prod(&self, dims: &[IntValue<'ctx>]) -> Result<IntValue<'ctx>> {
        let mut p = self.i64c(1);
        for d in dims {
            p = self.mul(p, *d)?;
        }
        Ok(p)
    }

    fn intrinsic(&self, name: &str, tys: &[BasicTypeEnum<'ctx>]) -> Result<FunctionValue<'ctx>> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.module, tys))
            .ok_or_else(|| BackendError::Internal(format!("no intrinsic {name}")))
    }

    /// Branches to the cleanup block with the code `make` computes when `cond` holds.
    fn fail_if(
        &self,
        exit: Exit<'ctx>,
        cond: IntValue<'ctx>,
        make: impl FnOnce(&Self) -> Result<IntValue<'ctx>>,
    ) -> Result<()> {
        let bad = self.block("fail")?;
        let ok = self.block("ok")?;
        self.b.build_conditional_branch(cond, bad, ok)?;
        self.b.position_at_end(bad);
        let code = make(self)?;
        self.b.build_store(exit.err, code)?;
        self.b.build_unconditional_branch(exit.cleanup)?;
        self.b.position_at_end(ok);
        Ok(())
    }

    /// `for i in 0..n { f(i) }`.
    fn for_range(
        &self,
        n: IntValue<'ctx>,
        f: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        let pre = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))?;
        let header = self.block("loop")?;
        let body = self.block("body")?;
        let exit = self.block("done")?;
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(header);
        let phi = self.b.build_phi(self.t.i64, "i")?;
        phi.add_incoming(&[(&self.i64c(0), pre)]);
        let i = phi.as_basic_value().into_int_value();
        let c = self.b.build_int_compare(IntPredicate::SLT, i, n, "c")?;
        self.b.build_conditional_branch(c, body, exit)?;
        self.b.position_at_end(body);
        f(i)?;
        let next = self.b.build_int_nsw_add(i, self.i64c(1), "next")?;
        let latch = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))?;
        self.b.build_unconditional_branch(header)?;
        phi.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// Nested loops over `dims` (outermost first).
    fn for_nd(
        &self,
        dims: &[IntValue<'ctx>],
        f: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
    ) -> Result<()> {
        fn rec<'ctx>(
            g: &Gen<'ctx>,
            dims: &[IntValue<'ctx>],
            idx: &mut Vec<IntValue<'ctx>>,
            f: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
        ) -> Result<()> {
            if idx.len() == dims.len() {
                return f(idx);
            }
            let d = dims[idx.len()];
            g.for_range(d, &mut |i| {
                idx.push(i);
                rec(g, dims, idx, f)?;
                idx.pop();
                Ok(())
            })
        }
        rec(self, dims, &mut Vec::new(), f)
    }

    /// Sets `target-cpu`/`target-features`-style attributes and returns a new
    /// function with an entry block the builder is positioned at.
    fn define(
        &self,
        name: &str,
        fty: inkwell::types::FunctionType<'ctx>,
        linkage: Linkage,
    ) -> FunctionValue<'ctx> {
        let f = self.module.add_function(name, fty, Some(linkage));
        self.decorate(f);
        let entry = self.ctx.append_basic_block(f, "entry");
        self.b.position_at_end(entry);
        f
    }

    // ------------------------------------------------------- memory & slots

    /// A slot is `{ptr, i64}`: the owning pointer (at the slot's address) and
    /// the byte size it was requested with (for `rc_free`).
    fn slot_ty(&self) -> inkwell::types::StructType<'ctx> {
        self.ctx
            .struct_type(&[self.t.ptr.into(), self.t.i64.into()], false)
    }

    fn new_slot(&self, fs: &mut Fs<'ctx, '_>) -> Result<PointerValue<'ctx>> {
        let s = fs.entry_b.build_alloca(self.slot_ty(), "slot")?;
        volatile(fs.entry_b.build_store(s, self.null())?)?;
        let sz = fs
            .entry_b
            .build_struct_gep(self.slot_ty(), s, 1, "slot.size")?;
        volatile(fs.entry_b.build_store(sz, self.i64c(0))?)?;
        fs.slots.push(s);
        Ok(s)
    }

    /// As [`Self::free_buf`], returning the block to the system (`rc_free_release`).
    fn release_buf(&self, buf: &Buf<'ctx>) -> Result<()> {
        if let Some(slot) = buf.slot {
            self.slot_free_with(slot, "rc_free_release")?;
            self.slot_store(slot, self.null())?;
        }
        Ok(())
    }

    /// Releases the block held in `slot` to the buffer cache (NULL is ignored).
    fn slot_free(&self, slot: PointerValue<'ctx>) -> Result<()> {
        self.slot_free_with(slot, "rc_free")
    }

    /// The result of an op that may reuse its dying input `x`: when `same`
    /// holds at run time, `x`'s block moves to the result (x's slot is
    /// emptied, so freeing x later does nothing); otherwise a fresh block is
    /// allocated and filled by `fill`.
    fn take_or_copy(
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

    fn slot_free_with(&self, slot: PointerValue<'ctx>, func: &str) -> Result<()> {
        let p = self.slot_load(slot)?;
        let szp = self
            .b
            .build_struct_gep(self.slot_ty(), slot, 1, "slot.size")?;
        let sz = self.b.build_load(self.t.i64, szp, "size")?;
        if let Some(i) = sz.as_instruction_value() {
            volatile(i)?;
        }
        self.call(func, &[p.into(), sz.into()])?;
        Ok(())
    }

    /// `n` elements of `d` (size computed with overflow checks); the pointer is
    /// kept in a fresh slot so that every exit path frees it.
    fn alloc(
        &self,
        fs: &mut Fs<'ctx, '_>,
        d: DType,
        dims: &[IntValue<'ctx>],
        what: &str,
    ) -> Result<(PointerValue<'ctx>, PointerValue<'ctx>)> {
        let slot = self.new_slot(fs)?;
        let umul = self.intrinsic("llvm.umul.with.overflow", &[self.t.i64.into()])?;
        let mut bytes = self.i64c(d.size_bytes() as i64);
        let mut over = self.t.i1.const_zero();
        for dim in dims {
            let r = self
                .b
                .build_call(umul, &[bytes.into(), (*dim).into()], "sz")?
                .try_as_basic_value();
            let inkwell::values::ValueKind::Basic(r) = r else {
                return Err(BackendError::Internal("umul.with.overflow".into()));
            };
            let r = r.into_struct_value();
            bytes = self.b.build_extract_value(r, 0, "b")?.into_int_value();
            let o = self.b.build_extract_value(r, 1, "o")?.into_int_value();
            over = self.b.build_or(over, o, "ov")?;
        }
        let limit = self.b.build_int_compare(
            IntPredicate::UGT,
            bytes,
            self.i64c(i64::MAX - 2 * ALIGN as i64),
            "big",
        )?;
        let over = self.b.build_or(over, limit, "ov")?;
        let exit = fs.exit;
        let what_s = self.cstr(what);
        self.fail_if(exit, over, |g| {
            g.call_i32(
                "rc_model_error_alloc",
                &[
                    g.i32c(err::OUT_OF_MEMORY).into(),
                    what_s.into(),
                    g.i64c(-1).into(),
                ],
            )
        })?;
        // size = round_up(max(bytes, 1), ALIGN)
        let one = self
            .b
            .build_int_compare(IntPredicate::EQ, bytes, self.i64c(0), "z")?;
        let b1 = self
            .b
            .build_select(one, self.i64c(1), bytes, "b1")?
            .into_int_value();
        let up = self
            .b
            .build_int_add(b1, self.i64c(ALIGN as i64 - 1), "up")?;
        let size = self.b.build_and(up, self.i64c(-(ALIGN as i64)), "size")?;
        let p = self
            .call("rc_alloc", &[size.into(), self.i64c(ALIGN as i64).into()])?
            .ok_or_else(|| BackendError::Internal("rc_alloc".into()))?
            .into_pointer_value();
        let isnull = self.b.build_is_null(p, "isnull")?;
        self.fail_if(exit, isnull, |g| {
            g.call_i32(
                "rc_model_error_alloc",
                &[
                    g.i32c(err::OUT_OF_MEMORY).into(),
                    what_s.into(),
                    bytes.into(),
                ],
            )
        })?;
        self.slot_store(slot, p)?;
        let szp = self
            .b
            .build_struct_gep(self.slot_ty(), slot, 1, "slot.size")?;
        volatile(self.b.build_store(szp, size)?)?;
        Ok((p, slot))
    }

    fn alloc_buf(
        &self,
        fs: &mut Fs<'ctx, '_>,
        d: DType,
        dims: Vec<IntValue<'ctx>>,
        what: &str,
    ) -> Result<Buf<'ctx>> {
        let (ptr, slot) = self.alloc(fs, d, &dims, what)?;
        Ok(Buf {
            ptr,
            dims,
            dtype: d,
            slot: Some(slot),
            ld: None,
        })
    }

    /// Slots are accessed with volatile loads and stores: promoted to SSA
    /// they would need a phi per slot in the cleanup block with an operand
    /// per failure branch, which makes instruction selection quadratic.
    fn slot_store(&self, slot: PointerValue<'ctx>, v: PointerValue<'ctx>) -> Result<()> {
        volatile(self.b.build_store(slot, v)?)
    }

    fn slot_load(&self, slot: PointerValue<'ctx>) -> Result<PointerValue<'ctx>> {
        let v = self.b.build_load(self.t.ptr, slot, "p")?;
        if let Some(i) = v.as_instruction_value() {
            volatile(i)?;
        }
        Ok(v.into_pointer_value())
    }

    fn free_buf(&self, buf: &Buf<'ctx>) -> Result<()> {
        if let Some(slot) = buf.slot {
            self.slot_free(slot)?;
            self.slot_store(slot, self.null())?;
        }
        Ok(())
    }

    // ------------------------------------------------------------- dims

    fn dim(&self, fs: &Fs<'ctx, '_>, d: &Dim, v: ValueId) -> Result<IntValue<'ctx>> {
        match d {
            Dim::Const(c) => Ok(self.i64c(*c as i64)),
            Dim::Sym(s) => fs.syms.get(s).copied().ok_or_else(|| {
                BackendError::Internal(format!(
                    "{}: symbol {s} is not bound here",
                    at(fs.g, &fs.numbering, v)
                ))
            }),
        }
    }

    fn type_dims(&self, fs: &Fs<'ctx, '_>, v: ValueId) -> Result<Vec<IntValue<'ctx>>> {
        fs.g.ty(v)
            .shape
            .iter()
            .map(|d| self.dim(fs, d, v))
            .collect()
    }

    /// Binds `sym` to `value`, checking a compiled limit if there is one.
    fn bind(
        &self,
        fs: &mut Fs<'ctx, '_>,
        sym: &str,
        value: IntValue<'ctx>,
        note: String,
    ) -> Result<()> {
        fs.syms.insert(sym.to_string(), value);
        fs.sym_note.insert(sym.to_string(), note);
        for lim in self.limits.iter().filter(|l| l.symbol == sym) {
            let c = self.b.build_int_compare(
                IntPredicate::SGT,
                value,
                self.i64c(lim.max as i64),
                "lim",
            )?;
            let what = self.cstr(&lim.what);
            self.fail_if(fs.exit, c, |g| {
                g.call_i32(
                    "rc_model_error_limit",
                    &[
                        g.i32c(err::SHAPE).into(),
                        what.into(),
                        value.into(),
                        g.i64c(lim.max as i64).into(),
                    ],
                )
            })?;
        }
        Ok(())
    }

    // ---------------------------------------------------------- variant fn

    /// Generates `name(inputs, n_inputs, outputs, n_outputs) -> i32` for `g`.
    /// Inputs are in `g.inputs()` order; the caller has checked their number.
    pub(crate) fn variant(&self, name: &str, g: &Graph) -> Result<FunctionValue<'ctx>> {
        let fty = self.t.i32.fn_type(
            &[
                self.t.ptr.into(),
                self.t.i64.into(),
                self.t.ptr.into(),
                self.t.i64.into(),
            ],
            false,
        );
        let f = self.define(name, fty, Linkage::Internal);
        let entry = f
            .get_first_basic_block()
            .ok_or_else(|| BackendError::Internal("entry".into()))?;
        let entry_b = self.ctx.create_builder();
        entry_b.position_at_end(entry);
        let errp = entry_b.build_alloca(self.t.i32, "err")?;
        entry_b.build_store(errp, self.i32c(0))?;
        let cleanup = self.ctx.append_basic_block(f, "cleanup");
        let body = self.ctx.append_basic_block(f, "start");
        self.b.position_at_end(body);
        let numbering = g
            .walk()
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, i))
            .collect();
        let fusion = Fusion::new(g);
        let mut fs = Fs {
            g,
            live: Liveness::new(g, &fusion),
            fusion,
            dest: HashMap::new(),
            numbering,
            entry_b,
            exit: Exit { err: errp, cleanup },
            slots: Vec::new(),
            syms: HashMap::new(),
            sym_note: HashMap::new(),
            vals: HashMap::new(),
        };
        let inputs = f
            .get_nth_param(0)
            .ok_or_else(|| BackendError::Internal("param".into()))?
            .into_pointer_value();
        let outputs = f
            .get_nth_param(2)
            .ok_or_else(|| BackendError::Internal("param".into()))?
            .into_pointer_value();
        self.bind_inputs(&mut fs, inputs)?;
        self.run_block(&mut fs, None, &g.body)?;
        self.write_outputs(&mut fs, outputs)?;
        self.b.build_store(errp, self.i32c(0))?;
        self.b.build_unconditional_branch(cleanup)?;
        // Cleanup: free whatever is still held (nothing on success), return the code.
        self.b.position_at_end(cleanup);
        for s in &fs.slots {
            self.slot_free(*s)?;
        }
        let code = self.b.build_load(self.t.i32, errp, "code")?;
        self.b.build_return(Some(&code))?;
        fs.entry_b.build_unconditional_branch(body)?;
        Ok(f)
    }

    fn tensor_field(&self, t: PointerValue<'ctx>, fieldno: u32) -> Result<PointerValue<'ctx>> {
        Ok(self.b.build_struct_gep(self.t.tensor, t, fieldno, "f")?)
    }

    fn tensor_dim_ptr(
        &self,
        t: PointerValue<'ctx>,
        fieldno: u32,
        axis: usize,
    ) -> Result<PointerValue<'ctx>> {
        let arr = self.tensor_field(t, fieldno)?;
        self.gep(DType::I64, arr, self.i64c(axis as i64))
    }

    fn nth_tensor(
        &self,
        base: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>> {
        // SAFETY: building a GEP only creates an instruction; callers check `i < n`.
        Ok(unsafe { self.b.build_in_bounds_gep(self.t.tensor, base, &[i], "t")? })
    }

    fn bind_inputs(&self, fs: &mut Fs<'ctx, '_>, inputs: PointerValue<'ctx>) -> Result<()> {
        let g = fs.g;
        let exit = fs.exit;
        for (k, (name, v)) in g.inputs().into_iter().enumerate() {
            let ty = g.ty(v).clone();
            if ty.rank() > abi::MAX_RANK {
                return Err(BackendError::Unsupported(format!(
                    "input `{name}` has rank {} (at most {})",
                    ty.rank(),
                    abi::MAX_RANK
                )));
            }
            let t = self.nth_tensor(inputs, self.i64c(k as i64))?;
            let name_s = self.cstr(name);
            let expected = self.cstr(&ty.to_string());
            let report = |g: &Self, code: i32, axis: i64, want: IntValue<'ctx>, note: &str| {
                let note = g.cstr(note);
                g.call_i32(
                    "rc_model_error_input",
                    &[
                        g.i32c(code).into(),
                        name_s.into(),
                        expected.into(),
                        t.into(),
                        g.i64c(axis).into(),
                        want.into(),
                        note.into(),
                    ],
                )
            };
            let dt = self
                .b
                .build_load(self.t.i32, self.tensor_field(t, field::DTYPE)?, "dtype")?
                .into_int_value();
            let c = self.b.build_int_compare(
                IntPredicate::NE,
                dt,
                self.i32c(abi::dtype_code(ty.dtype)),
                "bad",
            )?;
            self.fail_if(exit, c, |g| report(g, err::DTYPE, -1, g.i64c(0), ""))?;
            let rank = self
                .b
                .build_load(self.t.i32, self.tensor_field(t, field::RANK)?, "rank")?
                .into_int_value();
            let c = self.b.build_int_compare(
                IntPredicate::NE,
                rank,
                self.i32c(ty.rank() as i32),
                "bad",
            )?;
            self.fail_if(exit, c, |g| report(g, err::RANK, -1, g.i64c(0), ""))?;
            let mut dims = Vec::new();
            for (a, d) in ty.shape.iter().enumerate() {
                let s = self
                    .b
                    .build_load(self.t.i64, self.tensor_dim_ptr(t, field::SHAPE, a)?, "dim")?
                    .into_int_value();
                match d {
                    Dim::Const(c) => {
                        let bad = self.b.build_int_compare(
                            IntPredicate::NE,
                            s,
                            self.i64c(*c as i64),
                            "bad",
                        )?;
                        self.fail_if(exit, bad, |g| {
                            report(
                                g,
                                err::SHAPE,
                                a as i64,
                                g.i64c(*c as i64),
                                "fixed by the model",
                            )
                        })?;
                    }
                    Dim::Sym(sym) => match fs.syms.get(sym).copied() {
                        Some(bound) => {
                            let bad =
                                self.b
                                    .build_int_compare(IntPredicate::NE, s, bound, "bad")?;
                            let note = format!(
                                "{sym}, {}",
                                fs.sym_note.get(sym).cloned().unwrap_or_default()
                            );
                            self.fail_if(exit, bad, |g| {
                                report(g, err::SHAPE, a as i64, bound, &note)
                            })?;
                        }
                        None => {
                            let lo = self.b.build_int_compare(
                                IntPredicate::SLT,
                                s,
                                self.i64c(1),
                                "lo",
                            )?;
                            let hi = self.b.build_int_compare(
                                IntPredicate::SGT,
                                s,
                                self.i64c(MAX_DIM),
                                "hi",
                            )?;
                            let bad = self.b.build_or(lo, hi, "bad")?;
                            let note = format!("{sym} must be between 1 and 2^40");
                            self.fail_if(exit, bad, |g| {
                                report(g, err::SHAPE, a as i64, g.i64c(-1), &note)
                            })?;
                            self.bind(fs, sym, s, format!("set by input `{name}` axis {a}"))?;
                        }
                    },
                }
                dims.push(s);
            }
            // Strides: row-major contiguous, or all zero.
            let mut expect = self.i64c(1);
            let mut mismatch = self.t.i1.const_zero();
            let mut nonzero = self.t.i1.const_zero();
            for a in (0..ty.rank()).rev() {
                let st = self
                    .b
                    .build_load(self.t.i64, self.tensor_dim_ptr(t, field::STRIDES, a)?, "st")?
                    .into_int_value();
                let ne = self
                    .b
                    .build_int_compare(IntPredicate::NE, st, expect, "ne")?;
                let nz = self
                    .b
                    .build_int_compare(IntPredicate::NE, st, self.i64c(0), "nz")?;
                // A stride of an axis of length 1 does not matter.
                let one =
                    self.b
                        .build_int_compare(IntPredicate::EQ, dims[a], self.i64c(1), "one")?;
                let ne = self.b.build_and(ne, self.b.build_not(one, "n1")?, "ne1")?;
                mismatch = self.b.build_or(mismatch, ne, "mm")?;
                nonzero = self.b.build_or(nonzero, nz, "nzs")?;
                expect = self.mul(expect, dims[a])?;
            }
            let bad = self.b.build_and(mismatch, nonzero, "bad")?;
            self.fail_if(exit, bad, |g| {
                report(
                    g,
                    err::SHAPE,
                    -2,
                    g.i64c(0),
                    "strides must be row-major contiguous (in elements) or all 0",
                )
            })?;
            let data = self
                .b
                .build_load(self.t.ptr, self.tensor_field(t, field::DATA)?, "data")?
                .into_pointer_value();
            let isnull = self.b.build_is_null(data, "isnull")?;
            let ptr = if name == "attention_mask" && ty.dtype == DType::I64 {
                // NULL data: all ones (no padding), like an absent mask.
                let pre = self
                    .b
                    .get_insert_block()
                    .ok_or_else(|| BackendError::Internal("pos".into()))?;
                let mk = self.block("mask_ones")?;
                let join = self.block("mask_join")?;
                self.b.build_conditional_branch(isnull, mk, join)?;
                self.b.position_at_end(mk);
                let (ones, _slot) = self.alloc(fs, DType::I64, &dims, "attention mask of ones")?;
                let n = self.prod(&dims)?;
                self.for_range(n, &mut |i| {
                    self.store(DType::I64, ones, i, self.i64c(1).into())
                })?;
                let mk_end = self
                    .b
                    .get_insert_block()
                    .ok_or_else(|| BackendError::Internal("pos".into()))?;
                self.b.build_unconditional_branch(join)?;
                self.b.position_at_end(join);
                let phi = self.b.build_phi(self.t.ptr, "mask")?;
                phi.add_incoming(&[(&data, pre), (&ones, mk_end)]);
                phi.as_basic_value().into_pointer_value()
            } else {
                let msg = self.cstr(&format!(
                    "input `{name}`: data is NULL (only attention_mask may be NULL, meaning all ones)"
                ));
                self.fail_if(exit, isnull, |g| {
                    g.call_i32(
                        "rc_model_error",
                        &[g.i32c(err::ARGUMENT).into(), msg.into()],
                    )
                })?;
                data
            };
            fs.vals.insert(
                v,
                Buf {
                    ptr,
                    dims,
                    dtype: ty.dtype,
                    slot: None,
                    ld: None,
                },
            );
        }
        Ok(())
    }

    fn write_outputs(&self, fs: &mut Fs<'ctx, '_>, outputs: PointerValue<'ctx>) -> Result<()> {
        let g = fs.g;
        let mut seen = HashSet::new();
        let mut bufs = Vec::new();
        for (name, v) in &g.outputs {
            let buf = fs.vals.get(v).cloned().ok_or_else(|| {
                BackendError::Internal(format!("output `{name}` was not computed"))
            })?;
            if abi::MAX_RANK < buf.dims.len() {
                return Err(BackendError::Unsupported(format!(
                    "output `{name}` has rank {}",
                    buf.dims.len()
                )));
            }
            let buf = if buf.slot.is_none() || !seen.insert(*v) {
                let copy =
                    self.alloc_buf(fs, buf.dtype, buf.dims.clone(), &format!("output `{name}`"))?;
                let n = self.prod(&buf.dims)?;
                self.copy_elems(buf.dtype, copy.ptr, self.i64c(0), buf.ptr, self.i64c(0), n)?;
                copy
            } else {
                buf
            };
            bufs.push(buf);
        }
        for (k, buf) in bufs.iter().enumerate() {
            let t = self.nth_tensor(outputs, self.i64c(k as i64))?;
            self.b.build_store(
                self.tensor_field(t, field::DTYPE)?,
                self.i32c(abi::dtype_code(buf.dtype)),
            )?;
            self.b.build_store(
                self.tensor_field(t, field::RANK)?,
                self.i32c(buf.dims.len() as i32),
            )?;
            let mut stride = self.i64c(1);
            for a in (0..buf.dims.len()).rev() {
                self.b
                    .build_store(self.tensor_dim_ptr(t, field::SHAPE, a)?, buf.dims[a])?;
                self.b
                    .build_store(self.tensor_dim_ptr(t, field::STRIDES, a)?, stride)?;
                stride = self.mul(stride, buf.dims[a])?;
            }
            self.b
                .build_store(self.tensor_field(t, field::DATA)?, buf.ptr)?;
            self.b
                .build_store(self.tensor_field(t, field::OWNS_DATA)?, self.i32c(1))?;
            if let Some(slot) = buf.slot {
                self.slot_store(slot, self.null())?;
            }
        }
        Ok(())
    }

    // --------------------------------------------------------------- blocks

    fn run_block(&self, fs: &mut Fs<'ctx, '_>, key: BlockKey, body: &[ValueId]) -> Result<()> {
        for (i, &v) in body.iter().enumerate() {
            self.op(fs, v)?;
            let dead: Vec<ValueId> = fs.live.after(key, i).to_vec();
            for d in dead {
                if let Some(buf) = fs.vals.remove(&d) {
                    if fs.live.release.contains(&d) {
                        self.release_buf(&buf)?;
                    } else {
                        self.free_buf(&buf)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs region `ri` of `owner` on `args`; returns the results and whether
    /// each was allocated inside the region (then the caller frees it).
    fn region(
        &self,
        fs: &mut Fs<'ctx, '_>,
        owner: ValueId,
        ri: usize,
        args: Vec<Buf<'ctx>>,
    ) -> Result<Vec<(Buf<'ctx>, bool)>> {
        let g = fs.g;
        let r = &g.node(owner).regions[ri];
        if r.args.len() != args.len() {
            return Err(BackendError::Internal(format!(
                "{}: region {ri} takes {} arguments",
                at(g, &fs.numbering, owner),
                r.args.len()
            )));
        }
        for (a, mut buf) in r.args.iter().zip(args) {
            buf.slot = None; // the owner frees its arguments
            fs.vals.insert(*a, buf);
        }
        self.run_block(fs, Some((owner, ri)), &r.body)?;
        let inner: HashSet<ValueId> = r.body.iter().copied().collect();
        let mut out = Vec::new();
        for res in &r.results {
            let buf = fs.vals.get(res).cloned().ok_or_else(|| {
                BackendError::Internal(format!(
                    "{}: region result was not computed",
                    at(g, &fs.numbering, owner)
                ))
            })?;
            out.push((buf, inner.contains(res) && owned(g, *res)));
        }
        for a in &r.args {
            // An argument's buffer is the owner's; an owned one here is a
            // contiguous copy made for a reader (contiguous_operands).
            if let Some(buf) = fs.vals.remove(a) {
                self.free_buf(&buf)?;
            }
        }
        for v in &r.body {
            fs.vals.remove(v);
        }
        Ok(out)
    }

    // ----------------------------------------------------------- copy loops

    /// Copies `n` elements `src[src_off..]` to `dst[dst_off..]`.
    fn copy_elems(
        &self,
        d: DType,
        dst: PointerValue<'ctx>,
        dst_off: IntValue<'ctx>,
        src: PointerValue<'ctx>,
        src_off: IntValue<'ctx>,
        n: IntValue<'ctx>,
    ) -> Result<()> {
        let dp = self.gep(d, dst, dst_off)?;
        let sp = self.gep(d, src, src_off)?;
        let bytes = self.mul(n, self.i64c(d.size_bytes() as i64))?;
        self.b
            .build_memcpy(dp, d.size_bytes() as u32, sp, d.size_bytes() as u32, bytes)
            .map_err(|e| BackendError::Internal(format!("memcpy: {e}")))?;
        Ok(())
    }

    /// `out[r*os + i] = a[r*as + i] (+ b[r*bs + i])` for `r < rows`, `i < cols`
    /// (f32; `b` NULL: a copy), in parallel over rows (`rc_add_rows_f32`).
    #[allow(clippy::too_many_arguments)]
    fn add_rows(
        &self,
        out: PointerValue<'ctx>,
        os: IntValue<'ctx>,
        a: PointerValue<'ctx>,
        a_s: IntValue<'ctx>,
        b: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
        rows: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Result<()> {
        let (bp, bs) = b.unwrap_or((self.null(), self.i64c(0)));
        self.call(
            "rc_add_rows_f32",
            &[
                out.into(),
                os.into(),
                a.into(),
                a_s.into(),
                bp.into(),
                bs.into(),
                rows.into(),
                cols.into(),
            ],
        )?;
        Ok(())
    }

    /// Copies positions `start..start+len` of an axis of extent `n` (with
    /// `outer` blocks before it and `inner` elements after it) from `src` to a
    /// contiguous `dst`.
    fn copy_axis_range(
        &self,
        dt: DType,
        dst: PointerValue<'ctx>,
        src: PointerValue<'ctx>,
        (start, len, n): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        outer: IntValue<'ctx>,
        inner: IntValue<'ctx>,
    ) -> Result<()> {
        let count = self.mul(len, inner)?;
        let (from, stride) = (self.mul(start, inner)?, self.mul(n, inner)?);
        self.copy_blocks(
            dt,
            dst,
            self.i64c(0),
            count,
            src,
            from,
            stride,
            outer,
            count,
        )
    }

    /// For `o` in `0..outer`: copies `count` elements from
    /// `src[src_off + o*src_stride]` to `dst[dst_off + o*dst_stride]`.
    #[allow(clippy::too_many_arguments)]
    fn copy_blocks(
        &self,
        d: DType,
        dst: PointerValue<'ctx>,
        dst_off: IntValue<'ctx>,
        dst_stride: IntValue<'ctx>,
        src: PointerValue<'ctx>,
        src_off: IntValue<'ctx>,
        src_stride: IntValue<'ctx>,
        outer: IntValue<'ctx>,
        count: IntValue<'ctx>,
    ) -> Result<()> {
        self.for_range(outer, &mut |o| {
            let so = self.add(src_off, self.mul(o, src_stride)?)?;
            let dof = self.add(dst_off, self.mul(o, dst_stride)?)?;
            self.copy_elems(d, dst, dof, src, so, count)
        })
    }

    // ------------------------------------------------------------------ ops

    fn operand(&self, fs: &Fs<'ctx, '_>, v: ValueId, i: usize) -> Result<Buf<'ctx>> {
        let node = fs.g.node(v);
        let u = node.inputs.get(i).ok_or_else(|| {
            BackendError::Internal(format!(
                "{}: missing operand {i}",
                at(fs.g, &fs.numbering, v)
            ))
        })?;
        fs.vals.get(u).cloned().ok_or_else(|| {
            BackendError::Internal(format!(
                "{}: operand {i} is not available (freed too early?)",
                at(fs.g, &fs.numbering, v)
            ))
        })
    }

    /// An f32 operand of exactly `rank` dims (kernels index their dims).
    fn f32_ranked(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        i: usize,
        rank: usize,
    ) -> Result<Buf<'ctx>> {
        let b = self.f32_operand(fs, v, i)?;
        if b.dims.len() != rank {
            return Err(BackendError::Unsupported(format!(
                "{}: operand {i} has rank {}, the kernel takes rank {rank}",
                at(fs.g, &fs.numbering, v),
                b.dims.len()
            )));
        }
        Ok(b)
    }

    fn f32_operand(&self, fs: &Fs<'ctx, '_>, v: ValueId, i: usize) -> Result<Buf<'ctx>> {
        let b = self.operand(fs, v, i)?;
        if b.dtype != DType::F32 {
            return Err(BackendError::Unsupported(format!(
                "{}: operand {i} is {}; the runtime kernels are f32 only (compile with f32 precision)",
                at(fs.g, &fs.numbering, v),
                b.dtype
            )));
        }
        Ok(b)
    }

    fn i64_operand(&self, fs: &Fs<'ctx, '_>, v: ValueId, i: usize) -> Result<Buf<'ctx>> {
        let b = self.operand(fs, v, i)?;
        if b.dtype != DType::I64 {
            return Err(BackendError::Unsupported(format!(
                "{}: operand {i} is {}, expected i64",
                at(fs.g, &fs.numbering, v),
                b.dtype
            )));
        }
        Ok(b)
    }

    fn opt_mask(&self, fs: &Fs<'ctx, '_>, v: ValueId, i: usize) -> Result<PointerValue<'ctx>> {
        if fs.g.node(v).inputs.len() > i {
            Ok(self.i64_operand(fs, v, i)?.ptr)
        } else {
            Ok(self.null())
        }
    }

    fn last(&self, b: &Buf<'ctx>) -> IntValue<'ctx> {
        b.dims.last().copied().unwrap_or_else(|| self.i64c(1))
    }

    fn rows(&self, b: &Buf<'ctx>) -> Result<IntValue<'ctx>> {
        match b.dims.split_last() {
            Some((_, rest)) => self.prod(rest),
            None => Ok(self.i64c(1)),
        }
    }

    fn kernel(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        name: &str,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<()> {
        let rc = self.call_i32(name, args)?;
        let bad = self
            .b
            .build_int_compare(IntPredicate::NE, rc, self.i32c(0), "bad")?;
        let what = self.cstr(&format!("{} ({name})", at(fs.g, &fs.numbering, v)));
        self.fail_if(fs.exit, bad, |g| {
            g.call_i32(
                "rc_model_error_kernel",
                &[g.i32c(err::KERNEL).into(), what.into(), rc.into()],
            )
        })
    }

    fn node_attr_int(&self, fs: &Fs<'ctx, '_>, v: ValueId, name: &str) -> Result<i64> {
        fs.g.node(v).op.int(name).ok_or_else(|| {
            BackendError::Internal(format!(
                "{}: missing attribute `{name}`",
                at(fs.g, &fs.numbering, v)
            ))
        })
    }

    fn axis(&self, fs: &Fs<'ctx, '_>, v: ValueId, rank: usize) -> Result<usize> {
        let a = self.node_attr_int(fs, v, "axis")?;
        if a < 0 || a as usize >= rank {
            return Err(BackendError::Internal(format!(
                "{}: axis {a} out of range for rank {rank}",
                at(fs.g, &fs.numbering, v)
            )));
        }
        Ok(a as usize)
    }

    /// Binds symbols of `v`'s declared type that are still unbound to `dims`.
    fn bind_result(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        dims: &[IntValue<'ctx>],
    ) -> Result<()> {
        let ty = fs.g.ty(v).clone();
        let what = at(fs.g, &fs.numbering, v);
        for (d, x) in ty.shape.iter().zip(dims) {
            let Dim::Sym(s) = d else { continue };
            match fs.syms.get(s).copied() {
                None => self.bind(fs, s, *x, format!("set by {what}"))?,
                Some(bound) => {
                    // Bound before (by an input): the computed value must agree.
                    let bad = self
                        .b
                        .build_int_compare(IntPredicate::NE, *x, bound, "mm")?;
                    let msg = self.cstr(&format!(
                        "{what}: {s} ({})",
                        fs.sym_note.get(s).cloned().unwrap_or_default()
                    ));
                    self.fail_if(fs.exit, bad, |g| {
                        g.call_i32(
                            "rc_model_error_mismatch",
                            &[
                                g.i32c(err::SHAPE).into(),
                                msg.into(),
                                (*x).into(),
                                bound.into(),
                            ],
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    fn op(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<()> {
        let g = fs.g;
        let node: &Node = g.node(v);
        let op = &node.op;
        let what = at(g, &fs.numbering, v);
        let f32c = |x: f64| self.t.f32.const_float(x);
        use OpKind::*;
        if fs.fusion.absorbed(v) {
            return Ok(()); // computed by its reader (crate::fusion)
        }
        self.contiguous_operands(fs, v)?;
        let result: Buf<'ctx> = match op.kind {
            Input => return Ok(()), // bound at entry
            Arg => return Ok(()),   // bound by the owner
            Weight => {
                let name = op.str("name").unwrap_or("");
                let idx = *self.weight_index.get(name).ok_or_else(|| {
                    BackendError::Internal(format!("weight `{name}` is not in the table"))
                })?;
                if node.ty.dtype != DType::F32 {
                    return Err(BackendError::Unsupported(format!(
                        "weight `{name}` is {}; only f32 weights are supported",
                        node.ty.dtype
                    )));
                }
                // SAFETY: building a GEP only creates an instruction; idx < table length.
                let slot = unsafe {
                    self.b.build_in_bounds_gep(
                        self.weights_ty,
                        self.weights.as_pointer_value(),
                        &[self.i64c(0), self.i64c(idx as i64)],
                        "w",
                    )?
                };
                let ptr = self.b.build_load(self.t.ptr, slot, name)?.into_pointer_value();
                let dims = self.type_dims(fs, v)?;
                fs.vals.insert(
                    v,
                    Buf {
                        ptr,
                        dims,
                        dtype: DType::F32,
                        slot: None,
                        ld: None,
                    },
                );
                return Ok(());
            }
            Constant => {
                let out = self.alloc_buf(fs, node.ty.dtype, vec![], &what)?;
                let c = self.constant(node.ty.dtype, op.attrs.get("value"))?;
                self.store(node.ty.dtype, out.ptr, self.i64c(0), c)?;
                if node.ty.rank() != 0 {
                    return Err(BackendError::Unsupported(format!(
                        "{what}: only scalar constants"
                    )));
                }
                out
            }
            RandomNormal => {
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
                out
            }
            Embedding => {
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
                out
            }
            AxialPosEmbedding => {
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
                out
            }
            LayerNorm => {
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
                out
            }
            Linear => self.dense(fs, v)?,
            Attention => {
                let q = self.f32_ranked(fs, v, 0, 3)?;
                let k = self.f32_ranked(fs, v, 1, 3)?;
                let val = self.f32_ranked(fs, v, 2, 3)?;
                let mask = self.opt_mask(fs, v, 3)?;
                let heads = self.node_attr_int(fs, v, "heads")?;
                let h = self.i64c(heads);
                let dqk = self.b.build_int_signed_div(self.last(&q), h, "dqk")?;
                let dv = self.b.build_int_signed_div(self.last(&val), h, "dv")?;
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
                let mut dims = q.dims.clone();
                if let Some(l) = dims.last_mut() {
                    *l = self.last(&val);
                }
                let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
                self.kernel(
                    fs,
                    v,
                    "rc_attention_f32",
                    &[
                        q.ptr.into(),
                        k.ptr.into(),
                        val.ptr.into(),
                        mask.into(),
                        q.dims[0].into(),
                        q.dims[1].into(),
                        k.dims[1].into(),
                        h.into(),
                        dqk.into(),
                        dv.into(),
                        f32c(op.float("scale").unwrap_or(1.0)).into(),
                        self.i32c(flags).into(),
                        self.i64c(kv_chunk).into(),
                        out.ptr.into(),
                    ],
                )?;
                out
            }
            LocalAttention => {
                let q = self.f32_ranked(fs, v, 0, 3)?;
                let k = self.f32_ranked(fs, v, 1, 3)?;
                let val = self.f32_ranked(fs, v, 2, 3)?;
                let mask = self.opt_mask(fs, v, 3)?;
                let h = self.i64c(self.node_attr_int(fs, v, "heads")?);
                let dqk = self.b.build_int_signed_div(self.last(&q), h, "dqk")?;
                let dv = self.b.build_int_signed_div(self.last(&val), h, "dv")?;
                let mut dims = q.dims.clone();
                if let Some(l) = dims.last_mut() {
                    *l = self.last(&val);
                }
                let out = self.alloc_buf(fs, DType::F32, dims, &what)?;
                self.kernel(
                    fs,
                    v,
                    "rc_local_attention_f32",
                    &[
                        q.ptr.into(),
                        k.ptr.into(),
                        val.ptr.into(),
                        mask.into(),
                        q.dims[0].into(),
                        q.dims[1].into(),
                        h.into(),
                        dqk.into(),
                        dv.into(),
                        f32c(op.float("scale").unwrap_or(1.0)).into(),
                        self.i64c(self.node_attr_int(fs, v, "chunk")?).into(),
                        self.i64c(self.node_attr_int(fs, v, "before")?).into(),
                        self.i64c(self.node_attr_int(fs, v, "after")?).into(),
                        self.i32c(op.flag("causal") as i32).into(),
                        out.ptr.into(),
                    ],
                )?;
                out
            }
            LshHash => {
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
                out
            }
            LshAttention => {
                let qk = self.f32_ranked(fs, v, 0, 3)?;
                let val = self.f32_ranked(fs, v, 1, 3)?;
                let buckets = self.i64_operand(fs, v, 2)?;
                let mask = self.opt_mask(fs, v, 3)?;
                let h = self.i64c(self.node_attr_int(fs, v, "heads")?);
                let d = self.b.build_int_signed_div(self.last(&qk), h, "d")?;
                if buckets.dims.len() != 4 {
                    return Err(BackendError::Internal(format!(
                        "{what}: buckets must be [B,H,r,L]"
                    )));
                }
                // Replayed buckets come from an input: check their shape here.
                let exit = fs.exit;
                let what_s = self.cstr(&format!(
                    "{what}: LSH buckets do not match [B, H, r, P] of the activations"
                ));
                let b_ok = self.b.build_int_compare(IntPredicate::NE, buckets.dims[0], qk.dims[0], "b")?;
                let h_ok = self.b.build_int_compare(IntPredicate::NE, buckets.dims[1], h, "h")?;
                let l_ok = self.b.build_int_compare(IntPredicate::NE, buckets.dims[3], qk.dims[1], "l")?;
                let bad = self.b.build_or(self.b.build_or(b_ok, h_ok, "bh")?, l_ok, "bad")?;
                self.fail_if(exit, bad, |g| {
                    g.call_i32("rc_model_error", &[g.i32c(err::SHAPE).into(), what_s.into()])
                })?;
                let out = self.alloc_buf(fs, DType::F32, val.dims.clone(), &what)?;
                self.kernel(
                    fs,
                    v,
                    "rc_lsh_attention_f32",
                    &[
                        qk.ptr.into(),
                        val.ptr.into(),
                        buckets.ptr.into(),
                        mask.into(),
                        qk.dims[0].into(),
                        qk.dims[1].into(),
                        h.into(),
                        d.into(),
                        buckets.dims[2].into(),
                        self.i64c(self.node_attr_int(fs, v, "chunk")?).into(),
                        self.i64c(self.node_attr_int(fs, v, "before")?).into(),
                        self.i64c(self.node_attr_int(fs, v, "after")?).into(),
                        self.i32c(op.flag("causal") as i32).into(),
                        out.ptr.into(),
                    ],
                )?;
                out
            }
            ReversibleBlock => self.reversible(fs, v)?,
            SeqChunk => self.seq_chunk(fs, v)?,
            PadToMultiple => {
                let x = self.operand(fs, v, 0)?;
                let axis = self.axis(fs, v, x.dims.len())?;
                let m = self.node_attr_int(fs, v, "multiple")?.max(1);
                let min_len = self.node_attr_int(fs, v, "min_len")?;
                let n = x.dims[axis];
                let rem = self.b.build_int_signed_rem(n, self.i64c(m), "rem")?;
                let keep = self.b.build_or(
                    self.b.build_int_compare(IntPredicate::SLE, n, self.i64c(min_len), "short")?,
                    self.b.build_int_compare(IntPredicate::EQ, rem, self.i64c(0), "mult")?,
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
                out
            }
            Truncate | Slice | Index => {
                let x = self.operand(fs, v, 0)?;
                let axis = self.axis(fs, v, x.dims.len())?;
                let n = x.dims[axis];
                let (start, len) = match op.kind {
                    Truncate => {
                        let r = self.operand(fs, v, 1)?;
                        let raxis = axis.min(r.dims.len().saturating_sub(1));
                        (self.i64c(0), *r.dims.get(raxis).ok_or_else(|| {
                            BackendError::Internal(format!("{what}: reference has rank 0"))
                        })?)
                    }
                    Slice => {
                        let s = self.node_attr_int(fs, v, "start")?;
                        let e = self.node_attr_int(fs, v, "end")?;
                        (self.i64c(s), self.i64c(e - s))
                    }
                    _ => (self.i64c(self.node_attr_int(fs, v, "index")?), self.i64c(1)),
                };
                let end = self.add(start, len)?;
                let bad = self.b.build_or(
                    self.b.build_int_compare(IntPredicate::SGT, end, n, "past")?,
                    self.b.build_int_compare(IntPredicate::SLT, len, self.i64c(0), "neg")?,
                    "bad",
                )?;
                let msg = self.cstr(&format!("{what}: range out of bounds of axis {axis}"));
                self.fail_if(fs.exit, bad, |g| {
                    g.call_i32("rc_model_error", &[g.i32c(err::SHAPE).into(), msg.into()])
                })?;
                let mut dims = x.dims.clone();
                if op.kind == Index {
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
                if op.kind == Truncate && fs.fusion.take_input.contains(&v) && x.slot.is_some() {
                    // Nothing to cut (L == P, the usual case) and the input dies here:
                    // its buffer becomes the result.
                    let whole = self.b.build_int_compare(IntPredicate::EQ, len, n, "whole")?;
                    self.take_or_copy(fs, &x, whole, dims, &what, copy)?
                } else {
                    let out = self.alloc_buf(fs, x.dtype, dims, &what)?;
                    copy(self, out.ptr)?;
                    out
                }
            }
            Iota => {
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
                out
            }
            Concat => {
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
                    self.copy_blocks(dt, out.ptr, off, dst_stride, x.ptr, self.i64c(0), count, outer, count)?;
                    off = self.add(off, count)?;
                }
                out
            }
            Reshape => {
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
                let out = self.alloc_buf(fs, x.dtype, dims, &what)?;
                self.copy_elems(x.dtype, out.ptr, self.i64c(0), x.ptr, self.i64c(0), n)?;
                out
            }
            Transpose => {
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
                out
            }
            Cast => {
                let x = self.operand(fs, v, 0)?;
                let (from, to) = (x.dtype, node.ty.dtype);
                self.elementwise(fs, v, &[x], to, &|_, vals| self.convert(vals[0], from, to))?
            }
            Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Act => {
                let x = self.operand(fs, v, 0)?;
                let dt = x.dtype;
                let kind = op.kind;
                let act = op.str("fn").map(str::to_string);
                if kind != Neg && !dt.is_float() {
                    return Err(BackendError::Unsupported(format!("{what}: float operand expected")));
                }
                self.elementwise(fs, v, &[x], dt, &|_, vals| {
                    self.unary(kind, act.as_deref(), dt, vals[0])
                })?
            }
            Add | Sub | Mul | Div | Max | Min | Lt | Eq => {
                let a = self.operand(fs, v, 0)?;
                let bb = self.operand(fs, v, 1)?;
                let dt = a.dtype;
                if bb.dtype != dt {
                    return Err(BackendError::Internal(format!("{what}: operand dtypes differ")));
                }
                let kind = op.kind;
                let out_dt = node.ty.dtype;
                let exit = fs.exit;
                let msg = self.cstr(&format!("{what}: integer division by zero"));
                self.elementwise(fs, v, &[a, bb], out_dt, &|_, vals| {
                    self.binary(kind, dt, vals[0], vals[1], exit, msg)
                })?
            }
            Select => {
                let c = self.operand(fs, v, 0)?;
                let a = self.operand(fs, v, 1)?;
                let bb = self.operand(fs, v, 2)?;
                if c.dtype != DType::Bool {
                    return Err(BackendError::Internal(format!("{what}: condition must be bool")));
                }
                let dt = a.dtype;
                self.elementwise(fs, v, &[c, a, bb], dt, &|_, vals| {
                    let cond = self.b.build_int_compare(
                        IntPredicate::NE,
                        vals[0].into_int_value(),
                        self.t.i8.const_zero(),
                        "c",
                    )?;
                    Ok(self.b.build_select(cond, vals[1], vals[2], "sel")?)
                })?
            }
            Matmul | Reduce | Softmax | Gather | Argmax | Argsort => {
                return Err(BackendError::Unsupported(format!(
                    "{what}: the tensor op `{}` has no LLVM lowering yet (keep the model ops, or run the interpreter)",
                    op.kind
                )))
            }
        };
        fs.vals.insert(v, result);
        Ok(())
    }

    fn strides(&self, dims: &[IntValue<'ctx>]) -> Result<Vec<IntValue<'ctx>>> {
        let mut s = vec![self.i64c(1); dims.len()];
        for a in (0..dims.len().saturating_sub(1)).rev() {
            s[a] = self.mul(s[a + 1], dims[a + 1])?;
        }
        Ok(s)
    }

    fn const_i64_array(&self, xs: &[i64]) -> PointerValue<'ctx> {
        let vals: Vec<IntValue> = xs.iter().map(|&x| self.i64c(x)).collect();
        let arr = self.t.i64.const_array(&vals);
        let g = self.module.add_global(arr.get_type(), None, ".ints");
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_initializer(&arr);
        g.as_pointer_value()
    }

    fn constant(&self, d: DType, a: Option<&Attr>) -> Result<BasicValueEnum<'ctx>> {
        let x = match a {
            Some(Attr::Int(i)) => *i as f64,
            Some(Attr::Float(f)) => *f,
            _ => 0.0,
        };
        Ok(match (d, a) {
            (DType::F32, _) => self.t.f32.const_float(x).into(),
            (DType::F64, _) => self.t.f64.const_float(x).into(),
            (DType::I64, Some(Attr::Int(i))) => self.i64c(*i).into(),
            (DType::I64, _) => self.i64c(x as i64).into(),
            (DType::I32, Some(Attr::Int(i))) => self.t.i32.const_int(*i as i32 as u64, true).into(),
            (DType::I32, _) => self.t.i32.const_int(x as i32 as u64, true).into(),
            (DType::Bool, _) => self.t.i8.const_int((x != 0.0) as u64, false).into(),
        })
    }

    /// Converts one element (numpy `astype`; floats to ints saturate toward zero).
    fn convert(
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

    fn libm(&self, name: &str, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        Ok(self
            .call(name, &[x.into()])?
            .ok_or_else(|| BackendError::Internal(name.into()))?
            .into_float_value())
    }

    fn float_intrinsic(&self, name: &str, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let f = self.intrinsic(name, &[x.get_type().into()])?;
        let r = self.b.build_call(f, &[x.into()], "r")?.try_as_basic_value();
        match r {
            inkwell::values::ValueKind::Basic(r) => Ok(r.into_float_value()),
            inkwell::values::ValueKind::Instruction(_) => Err(BackendError::Internal(name.into())),
        }
    }

    fn unary(
        &self,
        kind: OpKind,
        act: Option<&str>,
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
        Ok(match kind {
            OpKind::Neg => b.build_float_neg(x, "neg")?.into(),
            OpKind::Exp => self.float_intrinsic("llvm.exp", x)?.into(),
            OpKind::Log => self.float_intrinsic("llvm.log", x)?.into(),
            OpKind::Sqrt => self.float_intrinsic("llvm.sqrt", x)?.into(),
            OpKind::Rsqrt => {
                let s = self.float_intrinsic("llvm.sqrt", x)?;
                b.build_float_div(one, s, "rs")?.into()
            }
            OpKind::Tanh => self.tanh(dt, x)?.into(),
            _ => self.activation(act.unwrap_or(""), dt, x)?.into(),
        })
    }

    fn tanh(&self, dt: DType, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        if dt == DType::F32 {
            self.libm("tanhf", x)
        } else {
            self.libm("tanh", x)
        }
    }

    /// `nn::activate` of the interpreter: relu and tanh in the element type,
    /// the others computed in f64 and rounded.
    fn activation(&self, f: &str, dt: DType, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
        let b = &self.b;
        let ft = x.get_type();
        match f {
            "relu" => {
                let pos = b.build_float_compare(FloatPredicate::OGT, x, ft.const_zero(), "pos")?;
                return Ok(b
                    .build_select(pos, x, ft.const_zero(), "relu")?
                    .into_float_value());
            }
            "tanh" => return self.tanh(dt, x),
            _ => {}
        }
        let d = if dt == DType::F32 {
            b.build_float_ext(x, self.t.f64, "d")?
        } else {
            x
        };
        let c = |v: f64| self.t.f64.const_float(v);
        let half_x = b.build_float_mul(c(0.5), d, "hx")?;
        let y = match f {
            "gelu" => {
                let e = self.libm(
                    "erf",
                    b.build_float_div(d, c(std::f64::consts::SQRT_2), "s")?,
                )?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), e, "e1")?, "g")?
            }
            "gelu_new" => {
                let x3 = b.build_float_mul(b.build_float_mul(d, d, "x2")?, d, "x3")?;
                let inner = b.build_float_add(d, b.build_float_mul(c(0.044715), x3, "t")?, "in")?;
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let t = self.libm("tanh", b.build_float_mul(c(k), inner, "k")?)?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), t, "t1")?, "g")?
            }
            "gelu_fast" => {
                let x2 = b.build_float_mul(d, d, "x2")?;
                let p = b.build_float_add(c(1.0), b.build_float_mul(c(0.044715), x2, "a")?, "p")?;
                let arg =
                    b.build_float_mul(b.build_float_mul(d, c(0.797_884_560_8), "k")?, p, "arg")?;
                let t = self.libm("tanh", arg)?;
                b.build_float_mul(half_x, b.build_float_add(c(1.0), t, "t1")?, "g")?
            }
            "silu" | "sigmoid" => {
                let e = self.libm("exp", b.build_float_neg(d, "n")?)?;
                let den = b.build_float_add(c(1.0), e, "den")?;
                let num = if f == "silu" { d } else { c(1.0) };
                b.build_float_div(num, den, "s")?
            }
            other => return Err(BackendError::Unsupported(format!("activation `{other}`"))),
        };
        Ok(if dt == DType::F32 {
            b.build_float_trunc(y, self.t.f32, "r")?
        } else {
            y
        })
    }

    fn binary(
        &self,
        kind: OpKind,
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
            return Ok(match kind {
                OpKind::Add => b.build_float_add(x, y, "s")?.into(),
                OpKind::Sub => b.build_float_sub(x, y, "s")?.into(),
                OpKind::Mul => b.build_float_mul(x, y, "s")?.into(),
                OpKind::Div => b.build_float_div(x, y, "s")?.into(),
                OpKind::Max | OpKind::Min => {
                    let name = if kind == OpKind::Max {
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
                OpKind::Lt => cmp(FloatPredicate::OLT)?,
                _ => cmp(FloatPredicate::OEQ)?,
            });
        }
        let (x, y) = (a.into_int_value(), bv.into_int_value());
        let cmp = |p: IntPredicate| -> Result<BasicValueEnum<'ctx>> {
            let c = b.build_int_compare(p, x, y, "c")?;
            Ok(b.build_int_z_extend(c, self.t.i8, "b")?.into())
        };
        let signed = dt != DType::Bool;
        Ok(match kind {
            OpKind::Add => b.build_int_add(x, y, "s")?.into(),
            OpKind::Sub => b.build_int_sub(x, y, "s")?.into(),
            OpKind::Mul => b.build_int_mul(x, y, "s")?.into(),
            OpKind::Div => {
                let z = b.build_int_compare(IntPredicate::EQ, y, y.get_type().const_zero(), "z")?;
                self.fail_if(exit, z, |g| {
                    g.call_i32(
                        "rc_model_error",
                        &[g.i32c(err::VALUE).into(), div_msg.into()],
                    )
                })?;
                b.build_int_signed_div(x, y, "q")?.into()
            }
            OpKind::Max | OpKind::Min => {
                let p = match (kind == OpKind::Max, signed) {
                    (true, true) => IntPredicate::SGT,
                    (true, false) => IntPredicate::UGT,
                    (false, true) => IntPredicate::SLT,
                    (false, false) => IntPredicate::ULT,
                };
                let c = b.build_int_compare(p, x, y, "c")?;
                b.build_select(c, x, y, "m")?
            }
            OpKind::Lt => cmp(if signed {
                IntPredicate::SLT
            } else {
                IntPredicate::ULT
            })?,
            _ => cmp(IntPredicate::EQ)?,
        })
    }

    /// An elementwise op with numpy broadcasting over `xs`: the result has
    /// `v`'s declared shape (every symbol bound by the operands).
    fn elementwise(
        &self,
        fs: &mut Fs<'ctx, '_>,
        v: ValueId,
        xs: &[Buf<'ctx>],
        out_dt: DType,
        f: &dyn Fn(&Self, &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>>,
    ) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let node = g.node(v);
        let what = at(g, &fs.numbering, v);
        let rty = node.ty.clone();
        let dims = self.type_dims(fs, v)?;
        let out = self.alloc_buf(fs, out_dt, dims.clone(), &what)?;
        let n = rty.rank();
        let same: Vec<bool> = node
            .inputs
            .iter()
            .map(|u| g.ty(*u).shape == rty.shape)
            .collect();
        let scalar: Vec<bool> = node
            .inputs
            .iter()
            .map(|u| g.ty(*u).shape.iter().all(|d| *d == Dim::Const(1)))
            .collect();
        if same.iter().zip(&scalar).all(|(s, c)| *s || *c) {
            let total = self.prod(&dims)?;
            self.for_range(total, &mut |i| {
                let vals: Vec<BasicValueEnum> = xs
                    .iter()
                    .zip(&same)
                    .map(|(x, s)| self.load(x.dtype, x.ptr, if *s { i } else { self.i64c(0) }))
                    .collect::<Result<_>>()?;
                let r = f(self, &vals)?;
                self.store(out_dt, out.ptr, i, r)
            })?;
            return Ok(out);
        }
        // General broadcasting: per-operand strides (0 on broadcast axes).
        let mut strides: Vec<Vec<IntValue>> = Vec::new();
        for (x, u) in xs.iter().zip(&node.inputs) {
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
        let ostr = self.strides(&dims)?;
        self.for_nd(&dims, &mut |idx| {
            let mut vals = Vec::new();
            for (x, s) in xs.iter().zip(&strides) {
                let mut off = self.i64c(0);
                for (i, st) in idx.iter().zip(s) {
                    off = self.add(off, self.mul(*i, *st)?)?;
                }
                vals.push(self.load(x.dtype, x.ptr, off)?);
            }
            let mut o = self.i64c(0);
            for (i, st) in idx.iter().zip(&ostr) {
                o = self.add(o, self.mul(*i, *st)?)?;
            }
            let r = f(self, &vals)?;
            self.store(out_dt, out.ptr, o, r)
        })?;
        Ok(out)
    }

    /// y1 = x1 + f(x2); y2 = x2 + g(y1) on the halves of the last axis.
    fn reversible(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
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
        // y1 = x1 + f(x2) into the low half, then y2 = x2 + g(y1) into the high.
        self.half_update(fs, v, 0, hi.clone(), &lo, rows)?;
        self.half_update(fs, v, 1, lo, &hi, rows)?;
        Ok(state)
    }

    /// `target += region ri of v (arg)`: the region's last linear accumulates
    /// onto `target` itself when the fusion plan allows, else an add follows.
    fn half_update(
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
    fn contiguous_operands(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<()> {
        let node = fs.g.node(v);
        for (i, u) in node.inputs.iter().enumerate() {
            if node.op.kind == OpKind::Linear && i == 0 {
                continue;
            }
            let Some(b) = fs.vals.get(u).cloned() else {
                continue;
            };
            let Some(ld) = b.ld else { continue };
            let what = format!("{} (contiguous copy)", at(fs.g, &fs.numbering, *u));
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
            fs.vals.insert(*u, c);
        }
        Ok(())
    }

    /// A `linear`, with whatever the fusion plan folds into it: a layer-norm
    /// prologue, an inner linear (two-layer stack), and accumulation onto a
    /// reversible half (one `rc_dense_f32` call).
    fn dense(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
        let g = fs.g;
        let what = at(g, &fs.numbering, v);
        let input = |u: ValueId| g.node(u).inputs[0];
        let (first, second) = match input(v) {
            u if fs.fusion.inner.contains(&u) => (u, Some(v)),
            _ => (v, None),
        };
        let (norm, x_val) = match input(first) {
            n if fs.fusion.prologue.contains(&n) => (Some(n), input(n)),
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
        let ldx = x.ld.unwrap_or(inp);
        let rows = self.rows(&x)?;
        let (ln_w, ln_b, eps) = match norm {
            Some(n) => (
                self.f32_operand(fs, n, 1)?.ptr,
                self.f32_operand(fs, n, 2)?.ptr,
                g.node(n).op.float("eps").unwrap_or(1e-12),
            ),
            None => (self.null(), self.null(), 0.0),
        };
        let l1 = self.layer(fs, first)?;
        let l2 = match second {
            Some(s) => Some(self.layer(fs, s)?),
            None => None,
        };
        let (w2, b2, out_f, act2) = match &l2 {
            Some(l) => (l.0, l.1, l.2, l.3),
            None => (self.null(), self.null(), l1.2, 0),
        };
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
                l1.0.into(),
                l1.1.into(),
                l1.2.into(),
                self.i32c(l1.3).into(),
                w2.into(),
                b2.into(),
                out_f.into(),
                self.i32c(act2).into(),
                out.ptr.into(),
                ldy.into(),
                self.i32c(accumulate).into(),
            ],
        )?;
        Ok(out)
    }

    /// A linear's weight, bias (or NULL), output features and activation code.
    #[allow(clippy::type_complexity)]
    fn layer(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
    ) -> Result<(PointerValue<'ctx>, PointerValue<'ctx>, IntValue<'ctx>, i32)> {
        let node = fs.g.node(v);
        let w = self.f32_ranked(fs, v, 1, 2)?;
        let b = if node.inputs.len() > 2 {
            self.f32_operand(fs, v, 2)?.ptr
        } else {
            self.null()
        };
        let name = node.op.str("activation");
        let act = abi::activation_code(name).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "{}: activation {name:?}",
                at(fs.g, &fs.numbering, v)
            ))
        })?;
        Ok((w.ptr, b, w.dims[0], act))
    }

    /// The body on consecutive chunks of `size` along `axis`, results concatenated.
    fn seq_chunk(&self, fs: &mut Fs<'ctx, '_>, v: ValueId) -> Result<Buf<'ctx>> {
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

    // ------------------------------------------------------ exported entries

    /// `reformc_model_run`: picks the variant whose input count, dtypes and
    /// ranks match, after the argument and weights checks.
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
                let dt = self
                    .b
                    .build_load(self.t.i32, self.tensor_field(t, field::DTYPE)?, "dt")?
                    .into_int_value();
                let rk = self
                    .b
                    .build_load(self.t.i32, self.tensor_field(t, field::RANK)?, "rk")?
                    .into_int_value();
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
            let rc = self
                .b
                .build_call(
                    *func,
                    &[inputs.into(), n_in.into(), outputs.into(), n_out.into()],
                    "rc",
                )?
                .try_as_basic_value();
            let inkwell::values::ValueKind::Basic(rc) = rc else {
                return Err(BackendError::Internal("variant call".into()));
            };
            self.b.build_return(Some(&rc))?;
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
            let rc = self
                .b
                .build_call(
                    *func,
                    &[inputs.into(), n_in.into(), outputs.into(), n_out.into()],
                    "rc",
                )?
                .try_as_basic_value();
            let inkwell::values::ValueKind::Basic(rc) = rc else {
                return Err(BackendError::Internal("variant call".into()));
            };
            self.b.build_return(Some(&rc))?;
            self.b.position_at_end(next);
        }
        let e = self.cstr(expected);
        let rc = self.call_i32(
            "rc_model_error_signature",
            &[
                self.i32c(err::ARGUMENT).into(),
                e.into(),
                inputs.into(),
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

    fn const_ptr_array(&self, name: &str, ptrs: &[PointerValue<'ctx>]) -> PointerValue<'ctx> {
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
    /// with a description of this model (see `runtime/src/exe_main.rs`).
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
            self.i32c(0).into(),
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
