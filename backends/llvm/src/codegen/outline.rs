//! Outlining: the body of a reversible block is generated into its own
//! internal, `noinline` LLVM function that the variant function calls.
//!
//! LLVM's code generation (register allocation, two-address rewriting,
//! branch folding) is superlinear in the size of a function; with one
//! function per variant, compile time grew faster than the depth of the
//! model. One function per block keeps each function small and the total
//! work linear. The outlined function receives every run-time value its body
//! reads from the caller (buffer pointers, dims, strides, slots, bound
//! symbols) as parameters; constants stay constants, so the generated loops
//! and kernel calls are the same as inline and results are bit-identical.
//!
//! Layers of the same kind differ only in those parameters and in their
//! messages (which name the op), so the strings a body uses are loaded from a
//! table its caller passes, and a body whose code equals one generated
//! before (see [`fingerprint`]) is dropped for a call to that one: LLVM then
//! optimises one function per kind of layer, whatever the depth.

use super::*;
use inkwell::llvm_sys::core as c;
use inkwell::llvm_sys::prelude::LLVMValueRef;
use inkwell::values::{AsValueRef, InstructionOpcode as Op};
use std::fmt::Write as _;

/// Outlined functions by their [`fingerprint`], and the string table of the body
/// being generated.
#[derive(Default)]
pub(super) struct Outlines<'ctx> {
    done: HashMap<String, FunctionValue<'ctx>>,
    table: Option<StrTable<'ctx>>,
    /// The strings of every call site's table, in one array that
    /// [`Gen::finish_outlines`] creates: created as they come, thousands of
    /// string globals would make each print in `dedupe` (which walks the
    /// module's globals) slower than the last.
    pending: Vec<String>,
    /// Stands for that array until then.
    placeholder: Option<GlobalValue<'ctx>>,
}

/// The strings an outlined body uses, in first-use order: loaded (in the
/// entry block) from the array its last parameter points to.
pub(super) struct StrTable<'ctx> {
    param: PointerValue<'ctx>,
    entry: Builder<'ctx>,
    strs: Vec<String>,
    loaded: HashMap<String, PointerValue<'ctx>>,
}

/// An outlined body just opened by [`Gen::open_outlined`].
pub(super) struct Opened<'ctx> {
    /// The caller's values as the function's parameters.
    pub(super) remap: Remap<'ctx>,
    /// The extra pointer parameters after the caller's values.
    pub(super) extra: Vec<BasicValueEnum<'ctx>>,
    /// The body's state, to swap into the generator.
    pub(super) st: FnState<'ctx>,
    /// The block the body starts in.
    pub(super) start: BasicBlock<'ctx>,
    /// The enclosing body's string table, to put back when this one closes.
    pub(super) outer_table: Option<StrTable<'ctx>>,
}

/// Name of an outlined function until it is known to be new.
const TEMP_NAME: &str = "__reformc_outlined";

/// The caller's run-time values an outlined body reads, deduplicated, in
/// parameter order.
#[derive(Default)]
pub(super) struct Params<'ctx> {
    pub(super) args: Vec<BasicValueEnum<'ctx>>,
    pub(super) index: HashMap<usize, usize>,
}

impl<'ctx> Params<'ctx> {
    fn key(v: BasicValueEnum<'ctx>) -> usize {
        v.as_value_ref() as usize
    }

    pub(super) fn add(&mut self, v: BasicValueEnum<'ctx>) {
        let constant = match v {
            BasicValueEnum::IntValue(i) => i.is_const(),
            BasicValueEnum::PointerValue(p) => p.is_const(),
            _ => false,
        };
        if !constant && !self.index.contains_key(&Self::key(v)) {
            self.index.insert(Self::key(v), self.args.len());
            self.args.push(v);
        }
    }

    pub(super) fn add_buf(&mut self, b: &Buf<'ctx>) {
        self.add(b.ptr.into());
        b.dims.iter().for_each(|d| self.add((*d).into()));
        b.ld.into_iter().for_each(|d| self.add(d.into()));
        b.slot.into_iter().for_each(|s| self.add(s.into()));
    }
}

/// Maps the caller's values to the outlined function's parameters.
pub(super) struct Remap<'ctx> {
    pub(super) index: HashMap<usize, usize>,
    pub(super) params: Vec<BasicValueEnum<'ctx>>,
}

impl<'ctx> Remap<'ctx> {
    fn get(&self, v: BasicValueEnum<'ctx>) -> BasicValueEnum<'ctx> {
        match self.index.get(&Params::key(v)) {
            Some(&i) => self.params[i],
            None => v, // a constant
        }
    }

    pub(super) fn int(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        self.get(v.into()).into_int_value()
    }

    pub(super) fn ptr(&self, v: PointerValue<'ctx>) -> PointerValue<'ctx> {
        self.get(v.into()).into_pointer_value()
    }

    pub(super) fn buf(&self, b: &Buf<'ctx>) -> Buf<'ctx> {
        Buf {
            ptr: self.ptr(b.ptr),
            dims: b.dims.iter().map(|d| self.int(*d)).collect(),
            dtype: b.dtype,
            slot: b.slot.map(|s| self.ptr(s)),
            ld: b.ld.map(|d| self.int(d)),
        }
    }
}

/// The per-function part of [`Fs`], swapped out while an outlined body is generated.
pub(super) struct FnState<'ctx> {
    entry_b: Builder<'ctx>,
    exit: Exit<'ctx>,
    slots: Vec<PointerValue<'ctx>>,
    pub(super) syms: HashMap<String, IntValue<'ctx>>,
    pub(super) vals: HashMap<ValueId, Buf<'ctx>>,
    dest: HashMap<ValueId, (PointerValue<'ctx>, IntValue<'ctx>)>,
}

impl<'ctx> FnState<'ctx> {
    pub(super) fn swap(&mut self, fs: &mut Fs<'ctx, '_>) {
        std::mem::swap(&mut self.entry_b, &mut fs.entry_b);
        std::mem::swap(&mut self.exit, &mut fs.exit);
        std::mem::swap(&mut self.slots, &mut fs.slots);
        std::mem::swap(&mut self.syms, &mut fs.syms);
        std::mem::swap(&mut self.vals, &mut fs.vals);
        std::mem::swap(&mut self.dest, &mut fs.dest);
    }
}

/// A text that equals another function's exactly when the two have the same
/// code: per instruction its opcode, type, flags and operands, where an
/// operand is a parameter, an instruction or a block of the function by
/// position, or a constant or global by identity (LLVM uniques constants in
/// a context). Unlike printing the function, this does not walk the rest of
/// the module, whose size grows with the depth.
fn fingerprint(f: FunctionValue<'_>) -> String {
    let mut local: HashMap<LLVMValueRef, usize> = HashMap::new();
    for p in f.get_param_iter() {
        let n = local.len();
        local.insert(p.as_value_ref(), n);
    }
    let blocks = f.get_basic_blocks();
    for b in &blocks {
        // SAFETY: `b` is a block of a live function.
        let n = local.len();
        local.insert(unsafe { c::LLVMBasicBlockAsValue(b.as_mut_ptr()) }, n);
        for i in b.get_instructions() {
            let n = local.len();
            local.insert(i.as_value_ref(), n);
        }
    }
    // The signature too: a parameter the body never reads shows nowhere else.
    let mut out = f.get_type().print_to_string().to_string();
    for b in &blocks {
        out.push('|');
        for i in b.get_instructions() {
            instruction(&mut out, i, &local);
        }
    }
    out
}

/// Appends one instruction of [`fingerprint`] to `out`.
fn instruction(
    out: &mut String,
    i: inkwell::values::InstructionValue<'_>,
    local: &HashMap<LLVMValueRef, usize>,
) {
    let r = i.as_value_ref();
    let op = i.get_opcode();
    // SAFETY: `r` is a live instruction; each query is valid for its opcode.
    unsafe {
        let _ = write!(out, ";{op:?}:{:?}:{:?}", c::LLVMTypeOf(r), flags(op, r));
        if c::LLVMCanValueUseFastMathFlags(r) != 0 {
            let _ = write!(out, ":fm{}", c::LLVMGetFastMathFlags(r));
        }
        if matches!(op, Op::ExtractValue | Op::InsertValue) {
            let n = c::LLVMGetNumIndices(r) as usize;
            let idx = std::slice::from_raw_parts(c::LLVMGetIndices(r), n);
            let _ = write!(out, ":{idx:?}");
        }
        for k in 0..c::LLVMGetNumOperands(r) as u32 {
            let v = c::LLVMGetOperand(r, k);
            let _ = match local.get(&v) {
                Some(n) => write!(out, " %{n}"),
                None => write!(out, " @{v:?}"),
            };
        }
        if op == Op::Phi {
            for k in 0..c::LLVMCountIncoming(r) {
                let b = c::LLVMBasicBlockAsValue(c::LLVMGetIncomingBlock(r, k));
                let _ = write!(out, " <{:?}", local.get(&b));
            }
        }
    }
}

/// What an instruction of opcode `op` has besides its type and operands:
/// wrap and exactness flags, predicates, volatility, alignment, the element
/// type of a GEP or alloca, the call's tail marker and convention.
///
/// # Safety
/// `r` must be a live instruction of opcode `op`.
unsafe fn flags(op: Op, r: LLVMValueRef) -> (i64, i64, usize) {
    // SAFETY: the caller's contract; each query matches its opcode.
    unsafe {
        match op {
            Op::Add | Op::Sub | Op::Mul | Op::Shl | Op::Trunc => {
                (c::LLVMGetNSW(r) as i64, c::LLVMGetNUW(r) as i64, 0)
            }
            Op::UDiv | Op::SDiv | Op::LShr | Op::AShr => (c::LLVMGetExact(r) as i64, 0, 0),
            Op::Or => (c::LLVMGetIsDisjoint(r) as i64, 0, 0),
            Op::ZExt | Op::UIToFP => (c::LLVMGetNNeg(r) as i64, 0, 0),
            Op::GetElementPtr => (
                c::LLVMGEPGetNoWrapFlags(r) as i64,
                0,
                c::LLVMGetGEPSourceElementType(r) as usize,
            ),
            Op::Alloca => (
                0,
                c::LLVMGetAlignment(r) as i64,
                c::LLVMGetAllocatedType(r) as usize,
            ),
            Op::Load | Op::Store => (
                c::LLVMGetVolatile(r) as i64,
                c::LLVMGetAlignment(r) as i64,
                0,
            ),
            Op::ICmp => (
                c::LLVMGetICmpPredicate(r) as i64,
                c::LLVMGetICmpSameSign(r) as i64,
                0,
            ),
            Op::FCmp => (c::LLVMGetFCmpPredicate(r) as i64, 0, 0),
            Op::Call => (
                c::LLVMIsTailCall(r) as i64,
                c::LLVMGetInstructionCallConv(r) as i64,
                0,
            ),
            _ => (0, 0, 0),
        }
    }
}

/// Values defined outside `v`'s regions that ops inside them read.
fn captures(g: &Graph, fusion: &Fusion, v: ValueId, out: &mut Vec<ValueId>) {
    for r in &g.node(v).regions {
        out.extend(r.results.iter().copied());
        for &w in &r.body {
            out.extend(g.node(w).inputs.iter().copied());
            fusion.effective_inputs(g, w, out);
            captures(g, fusion, w, out);
        }
    }
}

impl<'ctx> Gen<'ctx> {
    /// Generates `body` (which reads `v`'s regions) into a new internal
    /// `noinline` function and calls it here; a failure inside returns its
    /// error code, which the caller passes on to its own cleanup. `bufs` and
    /// `ints` are the caller's values `body` gets (remapped) besides the
    /// region captures and the bound symbols. Everything the body allocates
    /// is freed before the function returns.
    pub(super) fn outlined<'g>(
        &self,
        fs: &mut Fs<'ctx, 'g>,
        v: ValueId,
        bufs: &[Buf<'ctx>],
        ints: &[IntValue<'ctx>],
        body: impl FnOnce(&Self, &mut Fs<'ctx, 'g>, Vec<Buf<'ctx>>, Vec<IntValue<'ctx>>) -> Result<()>,
    ) -> Result<()> {
        let mut ids = Vec::new();
        captures(fs.g, &fs.fusion, v, &mut ids);
        ids.sort_unstable_by_key(|id| fs.numbering.get(id).copied());
        ids.dedup();
        let vals: Vec<(ValueId, Buf<'ctx>)> = ids
            .into_iter()
            .filter_map(|id| fs.vals.get(&id).map(|b| (id, b.clone())))
            .collect();
        let mut syms: Vec<(String, IntValue<'ctx>)> =
            fs.syms.iter().map(|(k, x)| (k.clone(), *x)).collect();
        syms.sort_by(|a, b| a.0.cmp(&b.0));
        let mut p = Params::default();
        vals.iter().for_each(|(_, b)| p.add_buf(b));
        bufs.iter().for_each(|b| p.add_buf(b));
        syms.iter().for_each(|(_, x)| p.add((*x).into()));
        ints.iter().for_each(|x| p.add((*x).into()));
        let caller = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))?;
        let f = self.outlined_fn(&p.args, 0)?;
        let Opened {
            remap,
            mut st,
            start,
            outer_table,
            ..
        } = self.open_outlined(f, &p, 0, &syms, &vals)?;
        let inner_bufs = bufs.iter().map(|b| remap.buf(b)).collect();
        let inner_ints = ints.iter().map(|x| remap.int(*x)).collect();
        st.swap(fs);
        let r = body(self, fs, inner_bufs, inner_ints).and_then(|()| self.close_body(fs, start));
        st.swap(fs);
        let strs = self.close_table(outer_table);
        r?;
        let f = self.dedupe(f, fs, v, caller)?;
        self.b.position_at_end(caller);
        self.call_outlined(fs, f, &p.args, &[], &strs)
    }

    /// Calls outlined `f` with the caller's `args`, the `extra` pointers and
    /// the table of `strs`; a failure inside returns its error code, which
    /// goes to the caller's cleanup.
    pub(super) fn call_outlined(
        &self,
        fs: &Fs<'ctx, '_>,
        f: FunctionValue<'ctx>,
        args: &[BasicValueEnum<'ctx>],
        extra: &[PointerValue<'ctx>],
        strs: &[String],
    ) -> Result<()> {
        let mut all: Vec<BasicMetadataValueEnum> = args.iter().map(|a| (*a).into()).collect();
        all.extend(extra.iter().map(|p| BasicMetadataValueEnum::from(*p)));
        all.push(self.str_array(strs).into());
        let inkwell::values::ValueKind::Basic(code) =
            self.b.build_call(f, &all, "code")?.try_as_basic_value()
        else {
            return Err(BackendError::Internal(
                "outlined function returns nothing".into(),
            ));
        };
        let code = code.into_int_value();
        let failed = self
            .b
            .build_int_compare(IntPredicate::NE, code, self.i32c(0), "failed")?;
        self.fail_if(fs.exit, failed, |_| Ok(code))
    }

    /// Starts the body of outlined `f` (declared by [`Self::outlined_fn`]
    /// for `p`'s arguments and `extra` pointers): its parameters mapped from
    /// the caller's values, its entry and cleanup blocks, its state holding
    /// the caller's symbols `syms` and buffers `vals` as parameters, and its
    /// string table.
    pub(super) fn open_outlined(
        &self,
        f: FunctionValue<'ctx>,
        p: &Params<'ctx>,
        extra: usize,
        syms: &[(String, IntValue<'ctx>)],
        vals: &[(ValueId, Buf<'ctx>)],
    ) -> Result<Opened<'ctx>> {
        let mut params: Vec<BasicValueEnum<'ctx>> = f.get_param_iter().collect();
        let table = params
            .pop()
            .ok_or_else(|| BackendError::Internal("outlined string table".into()))?;
        let at = params.len().checked_sub(extra).ok_or_else(|| {
            BackendError::Internal("outlined function lacks its extra parameters".into())
        })?;
        let extra = params.split_off(at);
        let remap = Remap {
            index: p.index.clone(),
            params,
        };
        let (mut st, start) = self.open_body(f)?;
        st.syms = syms
            .iter()
            .map(|(k, x)| (k.clone(), remap.int(*x)))
            .collect();
        st.vals = vals.iter().map(|(id, b)| (*id, remap.buf(b))).collect();
        let outer_table = self.open_table(f, table.into_pointer_value())?;
        Ok(Opened {
            remap,
            extra,
            st,
            start,
            outer_table,
        })
    }

    /// Declares `TEMP_NAME(args..., strings) -> i32`, internal and
    /// `noinline` (the inliner would otherwise merge it back into its caller).
    /// `extra_ptrs` pointer parameters follow `args` (a segment's frame).
    pub(super) fn outlined_fn(
        &self,
        args: &[BasicValueEnum<'ctx>],
        extra_ptrs: usize,
    ) -> Result<FunctionValue<'ctx>> {
        let mut tys: Vec<BasicMetadataTypeEnum> =
            args.iter().map(|a| a.get_type().into()).collect();
        tys.extend((0..=extra_ptrs).map(|_| BasicMetadataTypeEnum::from(self.t.ptr)));
        let f = self.define(
            TEMP_NAME,
            self.t.i32.fn_type(&tys, false),
            Linkage::Internal,
        );
        let noinline = inkwell::attributes::Attribute::get_named_enum_kind_id("noinline");
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(noinline, 0),
        );
        Ok(f)
    }

    /// Starts collecting the strings of `f`'s body; returns the table of an
    /// enclosing outlined body, to be put back when this one is done.
    pub(super) fn open_table(
        &self,
        f: FunctionValue<'ctx>,
        param: PointerValue<'ctx>,
    ) -> Result<Option<StrTable<'ctx>>> {
        let entry = f
            .get_first_basic_block()
            .ok_or_else(|| BackendError::Internal("entry".into()))?;
        let b = self.ctx.create_builder();
        b.position_at_end(entry);
        let table = StrTable {
            param,
            entry: b,
            strs: Vec::new(),
            loaded: HashMap::new(),
        };
        Ok(self.outline.borrow_mut().table.replace(table))
    }

    /// Ends the string table of a body, putting back `outer` (what
    /// [`Self::open_table`] returned); returns the body's strings.
    pub(super) fn close_table(&self, outer: Option<StrTable<'ctx>>) -> Vec<String> {
        std::mem::replace(&mut self.outline.borrow_mut().table, outer)
            .map(|t| t.strs)
            .unwrap_or_default()
    }

    /// `s` loaded from the string table of the outlined body being generated
    /// (None outside one).
    pub(super) fn outlined_str(&self, s: &str) -> Option<PointerValue<'ctx>> {
        let mut o = self.outline.borrow_mut();
        let t = o.table.as_mut()?;
        if let Some(p) = t.loaded.get(s) {
            return Some(*p);
        }
        let i = self.i64c(t.strs.len() as i64);
        // SAFETY: building a GEP only creates an instruction; the caller's
        // array has an entry per string of the table.
        let q = unsafe { t.entry.build_in_bounds_gep(self.t.ptr, t.param, &[i], "s") }.ok()?;
        let p = t.entry.build_load(self.t.ptr, q, "str").ok()?;
        let p = p.into_pointer_value();
        t.strs.push(s.to_string());
        t.loaded.insert(s.to_string(), p);
        Some(p)
    }

    /// Where `strs` will be in the string array (NULL when empty).
    pub(super) fn str_array(&self, strs: &[String]) -> PointerValue<'ctx> {
        if strs.is_empty() {
            return self.null();
        }
        let mut o = self.outline.borrow_mut();
        let base = self.i64c(o.pending.len() as i64);
        o.pending.extend(strs.iter().cloned());
        let ty = self.t.ptr.array_type(0);
        let table = *o.placeholder.get_or_insert_with(|| {
            self.module
                .add_global(ty, None, "__reformc_outlined_strings")
        });
        // SAFETY: a constant GEP only creates a constant expression; the
        // array gets an element per pending string.
        unsafe { table.as_pointer_value().const_gep(self.t.ptr, &[base]) }
    }

    /// Creates the string array of the outlined call sites (call once, after
    /// the last variant).
    pub(crate) fn finish_outlines(&self) {
        let (pending, placeholder) = {
            let mut o = self.outline.borrow_mut();
            (std::mem::take(&mut o.pending), o.placeholder.take())
        };
        let Some(placeholder) = placeholder else {
            return;
        };
        let ptrs: Vec<PointerValue> = pending.iter().map(|s| self.cstr(s)).collect();
        let arr = self.t.ptr.const_array(&ptrs);
        let g = self
            .module
            .add_global(arr.get_type(), None, ".outlined_strings");
        g.set_linkage(Linkage::Private);
        g.set_constant(true);
        g.set_unnamed_addr(true);
        g.set_initializer(&arr);
        placeholder
            .as_pointer_value()
            .replace_all_uses_with(g.as_pointer_value());
        // SAFETY: nothing refers to the placeholder any more.
        unsafe { placeholder.delete() };
    }

    /// `f`, or an earlier function with the same code (then `f` is deleted):
    /// for helper functions that keep their own name (the bodies of parallel
    /// loops), so that ops calling equal helpers stay equal and share one
    /// outlined function.
    pub(super) fn share_equal(&self, f: FunctionValue<'ctx>) -> FunctionValue<'ctx> {
        let text = fingerprint(f);
        if let Some(&same) = self.outline.borrow().done.get(&text) {
            // SAFETY: `f` was just built by the caller and nothing refers to it yet.
            unsafe { f.delete() };
            return same;
        }
        self.outline.borrow_mut().done.insert(text, f);
        f
    }

    /// `f`, named `<caller>.block%<n>`, or the earlier outlined function with
    /// the same code (then `f` is deleted).
    pub(super) fn dedupe(
        &self,
        f: FunctionValue<'ctx>,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        caller: BasicBlock<'ctx>,
    ) -> Result<FunctionValue<'ctx>> {
        let text = fingerprint(f);
        if let Some(&same) = self.outline.borrow().done.get(&text) {
            // SAFETY: `f` was created by `outlined` and nothing refers to it yet.
            unsafe { f.delete() };
            return Ok(same);
        }
        let caller = caller
            .get_parent()
            .ok_or_else(|| BackendError::Internal("caller block has no function".into()))?;
        let name = format!(
            "{}.block%{}",
            caller.get_name().to_string_lossy(),
            fs.numbering.get(&v).copied().unwrap_or(usize::MAX)
        );
        f.as_global_value().set_name(&name);
        self.outline.borrow_mut().done.insert(text, f);
        Ok(f)
    }

    /// The entry (allocas, error code), cleanup and body blocks of `f`, as in
    /// [`Self::variant`]; the builder is left in the body.
    pub(super) fn open_body(
        &self,
        f: FunctionValue<'ctx>,
    ) -> Result<(FnState<'ctx>, BasicBlock<'ctx>)> {
        let entry = f
            .get_first_basic_block()
            .ok_or_else(|| BackendError::Internal("entry".into()))?;
        let entry_b = self.ctx.create_builder();
        entry_b.position_at_end(entry);
        let err = entry_b.build_alloca(self.t.i32, "err")?;
        entry_b.build_store(err, self.i32c(0))?;
        let cleanup = self.ctx.append_basic_block(f, "cleanup");
        let start = self.ctx.append_basic_block(f, "start");
        self.b.position_at_end(start);
        let st = FnState {
            entry_b,
            exit: Exit { err, cleanup },
            slots: Vec::new(),
            syms: HashMap::new(),
            vals: HashMap::new(),
            dest: HashMap::new(),
        };
        Ok((st, start))
    }

    /// Ends the outlined function: success returns 0; the cleanup block frees
    /// whatever its slots still hold (everything on a failure).
    pub(super) fn close_body(&self, fs: &mut Fs<'ctx, '_>, start: BasicBlock<'ctx>) -> Result<()> {
        let Exit { err, cleanup } = fs.exit;
        self.b.build_store(err, self.i32c(0))?;
        self.b.build_unconditional_branch(cleanup)?;
        self.b.position_at_end(cleanup);
        for s in &fs.slots {
            self.slot_free(*s)?;
        }
        let code = self.b.build_load(self.t.i32, err, "code")?;
        self.b.build_return(Some(&code))?;
        fs.entry_b.build_unconditional_branch(start)?;
        Ok(())
    }
}
