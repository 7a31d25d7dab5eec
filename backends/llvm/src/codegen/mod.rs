//! IR graph -> LLVM IR: one function per graph variant that binds symbolic
//! dims from the input shapes, validates the inputs, allocates and frees
//! intermediate buffers by the liveness plan, generates loops for layout and
//! elementwise ops and calls the runtime kernels for the heavy ones; plus the
//! exported entry points (`reformc_model_run`, weights loading, signature).

use crate::abi::{self, err, field, CTy};
use crate::error::{BackendError, Result};
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
use reformc_ir::{
    Activation, Attr, BinaryFn, DType, Dim, Graph, Node, OpKind, TensorType, UnaryFn, ValueId,
};
use reformc_passes::buffer_plan::{owned, BlockKey, Liveness};
use reformc_passes::fusion::Fusion;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

mod attention;
mod backward;
mod entries;
mod exports;
mod feed_forward;
mod fused;
mod layout;
mod nn;
mod outline;
mod parallel;
mod pointwise;
mod range;
mod scalar;
mod tensor;

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
    /// What generated code fuses (reformc_passes::fusion).
    fusion: Fusion,
    /// Linears that accumulate onto a reversible state half: (rows, stride).
    dest: HashMap<ValueId, (PointerValue<'ctx>, IntValue<'ctx>)>,
    /// Generate each top-level leaf op in a function of its own (outline.rs).
    outline_ops: bool,
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
    /// Buckets per round for the range check of an `lsh_buckets` input.
    lsh_buckets_per_round: Option<u64>,
    /// Time every leaf op (`rc_prof_now` / `rc_prof_add`; `--profile`).
    profile: bool,
    /// Runs set bf16 GEMM operands for their duration (`--precision bf16`).
    bf16: bool,
    /// Outlined block functions and the string table of the one being generated.
    outline: RefCell<outline::Outlines<'ctx>>,
    /// `.ints` constant arrays by content.
    int_arrays: RefCell<HashMap<Vec<i64>, PointerValue<'ctx>>>,
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &'ctx Context,
        name: &str,
        weights: &[(String, TensorType)],
        fn_attrs: Vec<(String, String)>,
        limits: Vec<DimLimit>,
        profile: bool,
        lsh_buckets_per_round: Option<u64>,
        bf16: bool,
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
            profile,
            bf16,
            lsh_buckets_per_round,
            outline: RefCell::default(),
            int_arrays: RefCell::default(),
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
        if let Some(p) = self.outlined_str(s) {
            return p;
        }
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

    /// The declaration of an external function: a runtime function as its
    /// `c_abi!` declaration types it ([`abi::runtime_fn`]), or a libc one ([`abi::LIBC`]).
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
        let outlinable = g
            .body
            .iter()
            .filter(|v| range::outlinable(g, &fusion, **v))
            .count();
        let mut fs = Fs {
            g,
            outline_ops: outlinable >= range::OUTLINE_OPS_FROM,
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
        if fs.outline_ops {
            self.glue(f);
        }
        self.bind_inputs(&mut fs, inputs)?;
        match fs.outline_ops {
            true => self.run_segments(&mut fs, &g.body)?,
            false => self.run_block(&mut fs, None, &g.body)?,
        }
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

    /// The i32 field `fieldno` (dtype or rank) of the tensor struct at `t`.
    fn tensor_i32(&self, t: PointerValue<'ctx>, fieldno: u32) -> Result<IntValue<'ctx>> {
        let p = self.tensor_field(t, fieldno)?;
        Ok(self.b.build_load(self.t.i32, p, "field")?.into_int_value())
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
            let mut t = self.nth_tensor(inputs, self.i64c(k as i64))?;
            if let ("lsh_buckets", [.., Dim::Const(rounds), _]) = (name, &ty.shape[..]) {
                // HF's [n, B, H, r·P] is accepted too: viewed as [n, B, H, r, P].
                let view = self.b.build_alloca(self.t.tensor, "buckets_view")?;
                t = self
                    .call(
                        "rc_model_buckets_view",
                        &[t.into(), view.into(), self.i64c(*rounds as i64).into()],
                    )?
                    .ok_or_else(|| BackendError::Internal("buckets view".into()))?
                    .into_pointer_value();
            }
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
            let dt = self.tensor_i32(t, field::DTYPE)?;
            let c = self.b.build_int_compare(
                IntPredicate::NE,
                dt,
                self.i32c(abi::dtype_code(ty.dtype)),
                "bad",
            )?;
            self.fail_if(exit, c, |g| report(g, err::DTYPE, -1, g.i64c(0), ""))?;
            let rank = self.tensor_i32(t, field::RANK)?;
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
            if name == "lsh_buckets" {
                self.check_buckets(fs, ptr, &dims)?;
            }
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

    /// Replayed buckets `[n_lsh, B, H, r, P]` index the attention kernels'
    /// sort: their range is checked at the C ABI, not only by the CLI.
    fn check_buckets(
        &self,
        fs: &Fs<'ctx, '_>,
        ids: PointerValue<'ctx>,
        dims: &[IntValue<'ctx>],
    ) -> Result<()> {
        let (Some(nb), [a, b, h, r, p]) = (self.lsh_buckets_per_round, dims) else {
            return Ok(());
        };
        let rows = self.prod(&[*a, *b, *h])?;
        let nb = i64::try_from(nb)
            .map_err(|_| BackendError::Input(format!("{nb} LSH buckets per round")))?;
        let rc = self.call_i32(
            "rc_check_lsh_buckets",
            &[
                ids.into(),
                rows.into(),
                (*r).into(),
                (*p).into(),
                self.i64c(nb).into(),
            ],
        )?;
        let bad = self
            .b
            .build_int_compare(IntPredicate::NE, rc, self.i32c(0), "bad")?;
        let what = self.cstr("input `lsh_buckets`");
        self.fail_if(fs.exit, bad, |g| {
            g.call_i32(
                "rc_model_error_kernel",
                &[g.i32c(err::VALUE).into(), what.into(), rc.into()],
            )
        })
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
        self.run_ops(fs, key, body, 0)
    }

    /// Generates `ops`, ops `base..` of block `key`, freeing each value after
    /// its last use.
    fn run_ops(
        &self,
        fs: &mut Fs<'ctx, '_>,
        key: BlockKey,
        ops: &[ValueId],
        base: usize,
    ) -> Result<()> {
        for (j, &v) in ops.iter().enumerate() {
            let i = base + j;
            let node = fs.g.node(v);
            // Leaf ops only: a region op's time is its body's.
            let timed = self.profile
                && node.regions.is_empty()
                && !fs.fusion.absorbed(v)
                && !fs.fusion.grouped.contains_key(&v)
                && !matches!(
                    node.op.kind,
                    OpKind::Input | OpKind::Weight | OpKind::Arg | OpKind::Constant
                );
            let t0 = match timed {
                true => self.call("rc_prof_now", &[])?,
                false => None,
            };
            match key.is_none() && fs.outline_ops && range::outlinable(fs.g, &fs.fusion, v) {
                // A group's members come back from its leader's function.
                true => match fs.fusion.group_of(v).to_vec() {
                    group if group.is_empty() => self.outlined_range(fs, &[v], i, false)?,
                    group => self.outlined_range(fs, &group, i, false)?,
                },
                false => self.op(fs, v)?,
            }
            if let Some(t0) = t0 {
                let n = fs.numbering.get(&v).copied().unwrap_or(usize::MAX);
                // A group's leader times the whole call: say so.
                let more = match fs.fusion.group_of(v).len() {
                    0 | 1 => String::new(),
                    k => format!(" +{} grouped", k - 1),
                };
                let label = self.cstr(&format!("{} %{n}{more}", node.op.kind.name()));
                self.call("rc_prof_add", &[label.into(), t0.into()])?;
            }
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
        if d == DType::F32 {
            // The runtime's strided row copy runs on the thread pool.
            let (to, from) = (self.gep(d, dst, dst_off)?, self.gep(d, src, src_off)?);
            return self.add_rows(to, dst_stride, from, src_stride, None, outer, count);
        }
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
        use OpKind::*;
        if fs.fusion.absorbed(v) {
            return Ok(()); // computed by its reader (reformc_passes::fusion)
        }
        if fs.fusion.grouped.contains_key(&v) {
            return Ok(()); // computed by its group's leader (reformc_passes::fusion)
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
                let ptr = self
                    .b
                    .build_load(self.t.ptr, slot, name)?
                    .into_pointer_value();
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
            RandomNormal => self.random_normal(fs, v)?,
            DropoutMask => self.dropout_mask(fs, v)?,
            Embedding => self.embedding(fs, v)?,
            AxialPosEmbedding => self.axial_pos_embedding(fs, v)?,
            LayerNorm => self.layer_norm(fs, v)?,
            LayerNormGrad => self.layer_norm_grad(fs, v)?,
            FeedForward => match fs.fusion.group_of(v).to_vec() {
                group if group.is_empty() => self.feed_forward(fs, v)?,
                group => self.feed_forward_group(fs, &group)?,
            },
            FeedForwardGrad => match fs.fusion.group_of(v).to_vec() {
                group if group.is_empty() => self.feed_forward_group(fs, &[v])?,
                group => self.feed_forward_group(fs, &group)?,
            },
            Linear => match fs.fusion.group_of(v).to_vec() {
                group if group.is_empty() => self.dense(fs, v)?,
                group => self.dense_pair(fs, &group)?,
            },
            Attention => self.attention(fs, v)?,
            LocalAttention => self.local_attention(fs, v)?,
            LshHash => self.lsh_hash(fs, v)?,
            LshAttention => self.lsh_attention(fs, v)?,
            LshAttentionGrad => self.lsh_attention_grad(fs, v)?,
            LocalAttentionGrad => self.local_attention_grad(fs, v)?,
            ReversibleBlock => self.reversible(fs, v)?,
            SeqChunk => self.seq_chunk(fs, v)?,
            PadToMultiple => self.pad_to_multiple(fs, v)?,
            Truncate | Slice | Index => self.slice_like(fs, v)?,
            Iota => self.iota(fs, v)?,
            Concat => self.concat(fs, v)?,
            Reshape => self.reshape(fs, v)?,
            Transpose => self.transpose(fs, v)?,
            Add if self.row_add_shape(fs, v) && !self.has_inlined_operand(fs, v) => {
                self.row_add(fs, v)?
            }
            Cast | Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Act | Add | Sub | Mul | Div | Max
            | Min | Lt | Eq | Select => self.pointwise(fs, v)?,
            Matmul => self.matmul(fs, v)?,
            Reduce => self.reduce(fs, v)?,
            Softmax => self.softmax(fs, v)?,
            Gather => self.gather(fs, v)?,
            Argmax => self.arg(fs, v, false)?,
            Argsort => self.arg(fs, v, true)?,
            Broadcast => self.broadcast(fs, v)?,
            ScatterAdd => self.scatter_add(fs, v)?,
            ActGrad => self.act_grad(fs, v)?,
            LmLoss | LmLossGrad => self.lm_loss(fs, v)?,
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
        if let Some(p) = self.int_arrays.borrow().get(xs) {
            return *p;
        }
        let vals: Vec<IntValue> = xs.iter().map(|&x| self.i64c(x)).collect();
        let arr = self.t.i64.const_array(&vals);
        let g = self.module.add_global(arr.get_type(), None, ".ints");
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_initializer(&arr);
        let p = g.as_pointer_value();
        self.int_arrays.borrow_mut().insert(xs.to_vec(), p);
        p
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

    // ------------------------------------------------------ exported entries
}
