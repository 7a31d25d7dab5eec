//! Outlined ranges: a long flat body (a training step has thousands of
//! top-level ops) is generated as segments of ops, each an internal
//! `noinline` function, and within a segment each leaf op again in a
//! function of its own.
//!
//! One function for a step of thousands of ops makes LLVM's dominator,
//! value-tracking and register-allocation work superlinear (half a minute
//! for a two-layer step, minutes for twelve); segments keep every function
//! small, and per-op functions with the same code (same kind, shapes and
//! fusion, in every layer) are generated once through `dedupe`'s
//! fingerprint. Values cross a range's boundary as parameters (the caller's
//! buffers, dims, owning slots and symbols) and come back through a frame the
//! caller allocates: each exported value's pointer and dims, a buffer
//! allocated inside moved out of the range's slot, and symbols bound inside.

use super::outline::{Opened, Params, Remap};
use super::*;

/// Top-level ops (that [`outlinable`] accepts) from which a variant is
/// generated as outlined ranges; below it one function compiles as fast.
pub(super) const OUTLINE_OPS_FROM: usize = 300;

/// Top-level ops per segment: a segment's function stays small for LLVM,
/// and the variant's own function has one call per segment.
const SEGMENT_OPS: usize = 48;

/// Whether top-level op `v` gets a function of its own in an outlined
/// variant: leaf ops that compute a buffer. Region ops outline their own
/// bodies; inputs, weights and constants are a load or two.
pub(super) fn outlinable(g: &Graph, fusion: &Fusion, v: ValueId) -> bool {
    let node = g.node(v);
    node.regions.is_empty()
        && !fusion.absorbed(v)
        && !fusion.grouped.contains_key(&v)
        && !matches!(
            node.op.kind,
            OpKind::Input | OpKind::Weight | OpKind::Arg | OpKind::Constant
        )
}

/// Who owns an exported value's buffer.
enum Owner {
    /// Allocated inside: the frame carries its slot's pointer and size, and
    /// the caller keeps them in a slot of its own.
    Fresh,
    /// A caller slot (the parameter at this index): the range took over an
    /// input's buffer.
    Caller(usize),
    /// Nobody (a weight, an input).
    Borrowed,
}

/// A value defined in the range and live after it.
struct Export {
    id: ValueId,
    dtype: DType,
    rank: usize,
    owner: Owner,
}

/// What the caller replays after the call, in frame order.
struct Outcome {
    exports: Vec<Export>,
    /// Symbols bound inside, their values after the exports.
    new_syms: Vec<String>,
    /// Caller values freed inside (their slots are already empty).
    died: Vec<ValueId>,
    /// Caller values whose buffer an op inside took over.
    taken: Vec<ValueId>,
    words: usize,
}

impl<'ctx> Gen<'ctx> {
    /// Marks `f`, a function that only calls outlined ones and moves their
    /// results, `optnone`: optimising it gains nothing at run time and was
    /// half of the compile time of a twelve-layer step. (`optnone` needs
    /// `noinline`, which outlined functions have.)
    pub(super) fn glue(&self, f: FunctionValue<'ctx>) {
        for a in ["optnone", "noinline"] {
            let k = inkwell::attributes::Attribute::get_named_enum_kind_id(a);
            f.add_attribute(AttributeLoc::Function, self.ctx.create_enum_attribute(k, 0));
        }
    }

    /// Generates the top-level `body` as segments of outlined ranges.
    /// A segment never splits a group of `feed_forward_grad`s: its leader
    /// computes every member, which must be defined in the leader's range.
    pub(super) fn run_segments(&self, fs: &mut Fs<'ctx, '_>, body: &[ValueId]) -> Result<()> {
        let mut start = 0;
        while start < body.len() {
            let mut end = (start + SEGMENT_OPS).min(body.len());
            while end < body.len() && fs.fusion.grouped.contains_key(&body[end]) {
                end += 1;
            }
            self.outlined_range(fs, &body[start..end], start, true)?;
            start = end;
        }
        Ok(())
    }

    /// Generates `ops` (top-level ops `base..` of the body) into a new
    /// function and calls it. With `free_inside` the range also frees the
    /// values that die within it (a segment); without, the caller does (a
    /// single op). A failure inside returns its error code, which the caller
    /// passes on to its own cleanup.
    pub(super) fn outlined_range(
        &self,
        fs: &mut Fs<'ctx, '_>,
        ops: &[ValueId],
        base: usize,
        free_inside: bool,
    ) -> Result<()> {
        let vals = self.range_inputs(fs, ops, base, free_inside);
        let syms = range_syms(fs, ops, &vals);
        let mut p = Params::default();
        vals.iter().for_each(|(_, b)| p.add_buf(b));
        syms.iter().for_each(|(_, x)| p.add((*x).into()));
        let caller = self
            .b
            .get_insert_block()
            .ok_or_else(|| BackendError::Internal("builder is not positioned".into()))?;
        let f = self.outlined_fn(&p.args, 1)?;
        if free_inside {
            self.glue(f);
        }
        let Opened {
            remap,
            extra,
            mut st,
            start,
            outer_table,
        } = self.open_outlined(f, &p, 1, &syms, &vals)?;
        let frame = extra[0];
        st.swap(fs);
        let r = match free_inside {
            true => self.run_ops(fs, None, ops, base),
            false => ops.iter().try_for_each(|v| self.op(fs, *v)),
        }
        .and_then(|()| self.export(fs, ops, &vals, &syms, &remap, frame.into_pointer_value()))
        .and_then(|o| self.close_body(fs, start).map(|()| o));
        st.swap(fs);
        let strs = self.close_table(outer_table);
        let outcome = r?;
        let f = self.dedupe(f, fs, ops[0], caller)?;
        self.b.position_at_end(caller);
        let frame_ty = self.t.i64.array_type(outcome.words.max(1) as u32);
        let frame = fs.entry_b.build_alloca(frame_ty, "frame")?;
        self.call_outlined(fs, f, &p.args, &[frame], &strs)?;
        self.import(fs, &p.args, outcome, frame)
    }

    /// The caller's values that `ops` read (or, with `free_inside`, free),
    /// in numbering order.
    fn range_inputs(
        &self,
        fs: &Fs<'ctx, '_>,
        ops: &[ValueId],
        base: usize,
        free_inside: bool,
    ) -> Vec<(ValueId, Buf<'ctx>)> {
        let g = fs.g;
        let mut ids = Vec::new();
        for &v in ops {
            ids.extend(g.node(v).inputs.iter().copied());
            fs.fusion.effective_inputs(g, v, &mut ids);
        }
        if free_inside {
            for i in base..base + ops.len() {
                ids.extend(fs.live.after(None, i).iter().copied());
            }
        }
        ids.sort_unstable_by_key(|id| fs.numbering.get(id).copied());
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| fs.vals.get(&id).map(|b| (id, b.clone())))
            .collect()
    }

    /// The word `i` of `frame` (an array of 8-byte words).
    fn frame_word(&self, frame: PointerValue<'ctx>, i: usize) -> Result<PointerValue<'ctx>> {
        // SAFETY: building a GEP only creates an instruction; the caller's
        // frame has `Outcome::words` words and `i` is below that.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.t.i64, frame, &[self.i64c(i as i64)], "w")?
        })
    }

    /// In the range's body, after its ops: writes what the caller needs to
    /// the frame and moves buffers allocated here out of this function's
    /// slots, so that its cleanup leaves them alone.
    fn export(
        &self,
        fs: &mut Fs<'ctx, '_>,
        ops: &[ValueId],
        vals: &[(ValueId, Buf<'ctx>)],
        syms: &[(String, IntValue<'ctx>)],
        remap: &Remap<'ctx>,
        frame: PointerValue<'ctx>,
    ) -> Result<Outcome> {
        let mut words = 0;
        let mut exports = Vec::new();
        for &v in ops {
            let Some(res) = fs.vals.get(&v).cloned() else {
                continue; // absorbed, or died inside
            };
            let what = at(fs.g, &fs.numbering, v);
            if res.ld.is_some() {
                return Err(BackendError::Internal(format!(
                    "{what}: an outlined op returned a strided view"
                )));
            }
            self.b
                .build_store(self.frame_word(frame, words)?, res.ptr)?;
            for (k, d) in res.dims.iter().enumerate() {
                self.b
                    .build_store(self.frame_word(frame, words + 1 + k)?, *d)?;
            }
            words += 1 + res.dims.len();
            let owner = match res.slot {
                None => Owner::Borrowed,
                Some(s) if fs.slots.contains(&s) => {
                    self.move_slot(s, frame, words)?;
                    words += 2;
                    Owner::Fresh
                }
                Some(s) => {
                    let i = remap
                        .params
                        .iter()
                        .position(|q| *q == BasicValueEnum::from(s));
                    Owner::Caller(i.ok_or_else(|| {
                        BackendError::Internal(format!("{what}: result slot of unknown origin"))
                    })?)
                }
            };
            exports.push(Export {
                id: v,
                dtype: res.dtype,
                rank: res.dims.len(),
                owner,
            });
        }
        let known: HashSet<&str> = syms.iter().map(|(k, _)| k.as_str()).collect();
        let mut new_syms: Vec<String> = fs
            .syms
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        new_syms.sort();
        for s in &new_syms {
            self.b
                .build_store(self.frame_word(frame, words)?, fs.syms[s])?;
            words += 1;
        }
        let died = vals
            .iter()
            .filter(|(id, _)| !fs.vals.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        let taken = vals
            .iter()
            .filter(|(id, b)| b.slot.is_some() && fs.vals.get(id).is_some_and(|x| x.slot.is_none()))
            .map(|(id, _)| *id)
            .collect();
        Ok(Outcome {
            exports,
            new_syms,
            died,
            taken,
            words,
        })
    }

    /// Moves slot `s`'s pointer and size to frame words `at`, `at + 1` and
    /// empties the slot.
    fn move_slot(&self, s: PointerValue<'ctx>, frame: PointerValue<'ctx>, at: usize) -> Result<()> {
        let size = self.b.build_struct_gep(self.slot_ty(), s, 1, "slot.size")?;
        let n = self.b.build_load(self.t.i64, size, "n")?;
        if let Some(i) = n.as_instruction_value() {
            volatile(i)?;
        }
        self.b
            .build_store(self.frame_word(frame, at)?, self.slot_load(s)?)?;
        self.b.build_store(self.frame_word(frame, at + 1)?, n)?;
        self.slot_store(s, self.null())
    }

    /// In the caller, after the call: binds the exported values and the
    /// symbols bound inside, forgets the values freed inside and marks the
    /// buffers taken over.
    fn import(
        &self,
        fs: &mut Fs<'ctx, '_>,
        args: &[BasicValueEnum<'ctx>],
        o: Outcome,
        frame: PointerValue<'ctx>,
    ) -> Result<()> {
        for id in &o.died {
            fs.vals.remove(id);
        }
        for id in &o.taken {
            if let Some(b) = fs.vals.get_mut(id) {
                b.slot = None;
            }
        }
        let load_int = |g: &Self, i: usize| -> Result<IntValue<'ctx>> {
            Ok(g.b
                .build_load(g.t.i64, g.frame_word(frame, i)?, "w")?
                .into_int_value())
        };
        let mut w = 0;
        for e in o.exports {
            let ptr = self
                .b
                .build_load(self.t.ptr, self.frame_word(frame, w)?, "out")?
                .into_pointer_value();
            let dims = (0..e.rank)
                .map(|k| load_int(self, w + 1 + k))
                .collect::<Result<Vec<_>>>()?;
            w += 1 + e.rank;
            let slot = match e.owner {
                Owner::Borrowed => None,
                Owner::Caller(i) => Some(args[i].into_pointer_value()),
                Owner::Fresh => {
                    let s = self.new_slot(fs)?;
                    let p = self
                        .b
                        .build_load(self.t.ptr, self.frame_word(frame, w)?, "p")?
                        .into_pointer_value();
                    self.slot_store(s, p)?;
                    let size = self.b.build_struct_gep(self.slot_ty(), s, 1, "slot.size")?;
                    volatile(self.b.build_store(size, load_int(self, w + 1)?)?)?;
                    w += 2;
                    Some(s)
                }
            };
            let buf = Buf {
                ptr,
                dims,
                dtype: e.dtype,
                slot,
                ld: None,
            };
            fs.vals.insert(e.id, buf);
        }
        for s in o.new_syms {
            let x = load_int(self, w)?;
            w += 1;
            fs.syms.insert(s.clone(), x);
            fs.sym_note
                .entry(s)
                .or_insert_with(|| "set by an outlined op".into());
        }
        Ok(())
    }
}

/// The bound symbols of the types `ops` and `vals` have, sorted: only
/// those, so that the same op gets the same signature in every layer.
fn range_syms<'ctx>(
    fs: &Fs<'ctx, '_>,
    ops: &[ValueId],
    vals: &[(ValueId, Buf<'ctx>)],
) -> Vec<(String, IntValue<'ctx>)> {
    let g = fs.g;
    let mut syms: Vec<(String, IntValue<'ctx>)> = ops
        .iter()
        .copied()
        .chain(vals.iter().map(|(id, _)| *id))
        .flat_map(|id| g.ty(id).shape.iter())
        .filter_map(|d| match d {
            Dim::Sym(s) => fs.syms.get(s).map(|x| (s.clone(), *x)),
            Dim::Const(_) => None,
        })
        .collect();
    syms.sort_by(|a, b| a.0.cmp(&b.0));
    syms.dedup_by(|a, b| a.0 == b.0);
    syms
}
