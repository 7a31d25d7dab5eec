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

use super::*;
use inkwell::values::AsValueRef;

/// The caller's run-time values an outlined body reads, deduplicated, in
/// parameter order.
#[derive(Default)]
struct Params<'ctx> {
    args: Vec<BasicValueEnum<'ctx>>,
    index: HashMap<usize, usize>,
}

impl<'ctx> Params<'ctx> {
    fn key(v: BasicValueEnum<'ctx>) -> usize {
        v.as_value_ref() as usize
    }

    fn add(&mut self, v: BasicValueEnum<'ctx>) {
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

    fn add_buf(&mut self, b: &Buf<'ctx>) {
        self.add(b.ptr.into());
        b.dims.iter().for_each(|d| self.add((*d).into()));
        b.ld.into_iter().for_each(|d| self.add(d.into()));
        b.slot.into_iter().for_each(|s| self.add(s.into()));
    }
}

/// Maps the caller's values to the outlined function's parameters.
struct Remap<'ctx> {
    index: HashMap<usize, usize>,
    params: Vec<BasicValueEnum<'ctx>>,
}

impl<'ctx> Remap<'ctx> {
    fn get(&self, v: BasicValueEnum<'ctx>) -> BasicValueEnum<'ctx> {
        match self.index.get(&Params::key(v)) {
            Some(&i) => self.params[i],
            None => v, // a constant
        }
    }

    fn int(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        self.get(v.into()).into_int_value()
    }

    fn ptr(&self, v: PointerValue<'ctx>) -> PointerValue<'ctx> {
        self.get(v.into()).into_pointer_value()
    }

    fn buf(&self, b: &Buf<'ctx>) -> Buf<'ctx> {
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
struct FnState<'ctx> {
    entry_b: Builder<'ctx>,
    exit: Exit<'ctx>,
    slots: Vec<PointerValue<'ctx>>,
    syms: HashMap<String, IntValue<'ctx>>,
    vals: HashMap<ValueId, Buf<'ctx>>,
    dest: HashMap<ValueId, (PointerValue<'ctx>, IntValue<'ctx>)>,
}

impl<'ctx> FnState<'ctx> {
    fn swap(&mut self, fs: &mut Fs<'ctx, '_>) {
        std::mem::swap(&mut self.entry_b, &mut fs.entry_b);
        std::mem::swap(&mut self.exit, &mut fs.exit);
        std::mem::swap(&mut self.slots, &mut fs.slots);
        std::mem::swap(&mut self.syms, &mut fs.syms);
        std::mem::swap(&mut self.vals, &mut fs.vals);
        std::mem::swap(&mut self.dest, &mut fs.dest);
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
        let f = self.outlined_fn(fs, v, &p.args)?;
        let remap = Remap {
            index: p.index,
            params: f.get_param_iter().collect(),
        };
        let (mut st, start) = self.open_body(f)?;
        st.syms = syms.iter().map(|(k, x)| (k.clone(), remap.int(*x))).collect();
        st.vals = vals.iter().map(|(id, b)| (*id, remap.buf(b))).collect();
        let inner_bufs = bufs.iter().map(|b| remap.buf(b)).collect();
        let inner_ints = ints.iter().map(|x| remap.int(*x)).collect();
        st.swap(fs);
        let r = body(self, fs, inner_bufs, inner_ints).and_then(|()| self.close_body(fs, start));
        st.swap(fs);
        r?;
        self.b.position_at_end(caller);
        let args: Vec<BasicMetadataValueEnum> = p.args.iter().map(|a| (*a).into()).collect();
        let inkwell::values::ValueKind::Basic(code) =
            self.b.build_call(f, &args, "code")?.try_as_basic_value()
        else {
            return Err(BackendError::Internal("outlined function returns nothing".into()));
        };
        let code = code.into_int_value();
        let failed = self
            .b
            .build_int_compare(IntPredicate::NE, code, self.i32c(0), "failed")?;
        self.fail_if(fs.exit, failed, |_| Ok(code))
    }

    /// Declares `<caller>.block%<n>(args...) -> i32`, internal and `noinline`
    /// (the inliner would otherwise merge it back: it has one call site).
    fn outlined_fn(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        args: &[BasicValueEnum<'ctx>],
    ) -> Result<FunctionValue<'ctx>> {
        let caller = self.cur_fn()?;
        let name = format!(
            "{}.block%{}",
            caller.get_name().to_string_lossy(),
            fs.numbering.get(&v).copied().unwrap_or(usize::MAX)
        );
        let tys: Vec<BasicMetadataTypeEnum> = args.iter().map(|a| a.get_type().into()).collect();
        let f = self.define(&name, self.t.i32.fn_type(&tys, false), Linkage::Internal);
        let noinline = inkwell::attributes::Attribute::get_named_enum_kind_id("noinline");
        f.add_attribute(
            AttributeLoc::Function,
            self.ctx.create_enum_attribute(noinline, 0),
        );
        Ok(f)
    }

    /// The entry (allocas, error code), cleanup and body blocks of `f`, as in
    /// [`Self::variant`]; the builder is left in the body.
    fn open_body(&self, f: FunctionValue<'ctx>) -> Result<(FnState<'ctx>, BasicBlock<'ctx>)> {
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
    fn close_body(&self, fs: &mut Fs<'ctx, '_>, start: BasicBlock<'ctx>) -> Result<()> {
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
