//! Parallel loops of generated code: the body of a loop becomes an internal
//! function `void (ctx*, lo, hi)` that the runtime's `rc_parallel_for` runs
//! on its threads over disjoint ranges. The values the body reads from the
//! enclosing function travel in a context struct (one field per capture).

use super::*;

/// Elements per task below which a loop is not worth splitting: about one
/// page of f32s per task keeps the call overhead under a few percent.
const GRAIN: i64 = 4096;

impl<'ctx> Gen<'ctx> {
    /// `for i in 0..n { body(caps, i) }` on the runtime's threads. `body`
    /// sees `caps` as values of the outlined function (it must not use any
    /// other value of the enclosing function, nor branch to its blocks), and
    /// must write only elements owned by index `i`. Without `parallel` the
    /// loop runs here, serially, on `caps` themselves (then `body` may
    /// branch to this function's exit).
    pub(super) fn par_range(
        &self,
        fs: &Fs<'ctx, '_>,
        v: ValueId,
        n: IntValue<'ctx>,
        caps: &[BasicValueEnum<'ctx>],
        parallel: bool,
        body: &mut dyn FnMut(&[BasicValueEnum<'ctx>], IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        if !parallel {
            return self.for_range(n, &mut |i| body(caps, i));
        }
        let caller = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))?;
        let tys: Vec<BasicTypeEnum> = caps.iter().map(|c| c.get_type()).collect();
        let ctx_ty = self.ctx.struct_type(&tys, false);
        let fty = self.ctx.void_type().fn_type(
            &[self.t.ptr.into(), self.t.i64.into(), self.t.i64.into()],
            false,
        );
        let f = self
            .module
            .add_function("rc.par", fty, Some(Linkage::Internal));
        self.decorate(f);
        let entry = self.ctx.append_basic_block(f, "entry");
        self.b.position_at_end(entry);
        let param = |i: u32| {
            f.get_nth_param(i)
                .ok_or_else(|| BackendError::Internal("rc.par: missing parameter".into()))
        };
        let (ctxp, lo, hi) = (
            param(0)?.into_pointer_value(),
            param(1)?.into_int_value(),
            param(2)?.into_int_value(),
        );
        let mut inner = Vec::with_capacity(caps.len());
        for (i, ty) in tys.iter().enumerate() {
            let p = self.b.build_struct_gep(ctx_ty, ctxp, i as u32, "cap")?;
            inner.push(self.b.build_load(*ty, p, "cap")?);
        }
        let len = self.b.build_int_sub(hi, lo, "len")?;
        self.for_range(len, &mut |j| body(&inner, self.add(lo, j)?))?;
        self.b.build_return(None)?;
        let f = self.share_equal(f);
        self.b.position_at_end(caller);
        let ctx = fs.entry_b.build_alloca(ctx_ty, "par.ctx")?;
        for (i, c) in caps.iter().enumerate() {
            let p = self.b.build_struct_gep(ctx_ty, ctx, i as u32, "cap")?;
            self.b.build_store(p, *c)?;
        }
        let fp = f.as_global_value().as_pointer_value();
        let args = [fp.into(), ctx.into(), n.into(), self.i64c(GRAIN).into()];
        self.kernel(fs, v, "rc_parallel_for", &args)
    }
}
