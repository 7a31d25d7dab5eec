//! The graph-to-text lowering: one exhaustive `match` over [`OpKind`].

mod attention;
mod backward;
mod indexing;
mod lsh;
mod lsh_attention;
mod lsh_hash;
mod model;
mod philox;
mod regions;
mod sort;

use crate::scalar::{constant_op, elt, literal, Body};
use crate::MlirError;
use reformc_ir::{
    Activation, Attr, BinaryFn, DType, Dim, Elementwise, Graph, OpKind, Reduction, TensorType,
    UnaryFn, ValueId,
};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

const IND: &str = "    ";
const BODY_IND: &str = "      ";

/// The MLIR type of a tensor type: `tensor<?x8xf32>`, symbols dynamic.
pub(crate) fn tensor_ty(t: &TensorType) -> String {
    tensor_of(&t.shape, t.dtype)
}

fn tensor_of(shape: &[Dim], d: DType) -> String {
    let mut s = String::from("tensor<");
    for dim in shape {
        match dim {
            Dim::Const(c) => s.push_str(&c.to_string()),
            Dim::Sym(_) => s.push('?'),
        }
        s.push('x');
    }
    s.push_str(elt(d));
    s.push('>');
    s
}

/// One input of [`Emitter::concat_parts`]: its SSA name, tensor type and
/// sizes (constants or `index` values; only the copies read them).
struct ConcatPart {
    name: String,
    ty: String,
    sizes: Vec<String>,
}

/// An operand of a `linalg.generic`: SSA name, tensor type, indexing map results.
#[derive(Clone)]
struct Operand {
    name: String,
    ty: String,
    map: Vec<String>,
}

/// Builds the function body line by line.
pub(crate) struct Emitter<'g> {
    g: &'g Graph,
    lines: Vec<String>,
    counter: usize,
    /// SSA `index` value of each symbolic dimension, read from an argument.
    syms: BTreeMap<String, String>,
    /// Marks `@forward` with `llvm.emit_c_interface` (for the JIT only: the
    /// emitted module stays free of the `llvm` dialect).
    c_interface: bool,
    /// The weights' data when they are embedded (`dense_resource` blobs)
    /// rather than leading arguments.
    weights: Option<&'g BTreeMap<String, Tensor>>,
    /// The module is for reformc's own pipeline (`run --backend mlir`), not
    /// for users: see [`Self::for_own_pipeline`].
    own_pipeline: bool,
    /// With `Some`, every leaf op is timed: the clock is read before it and
    /// the time recorded after it under the op's label, whose index in this
    /// list the call passes ([`crate::profile`]; for reformc's own pipeline).
    profile: Option<Vec<String>>,
    /// The timer of the op being lowered while profiling, which
    /// [`Self::stage`] splits into named stages.
    timer: Option<OpTimer>,
}

/// The clock reading an op's timing started from, and the stage it is in.
#[derive(Clone)]
struct OpTimer {
    /// `kind %id`'s two parts.
    kind: OpKind,
    id: u32,
    /// The `i64` clock reading the current stage started at.
    start: String,
    /// The current stage's name (`None` until the first [`Emitter::stage`]).
    stage: Option<&'static str>,
}

impl<'g> Emitter<'g> {
    pub(crate) fn new(g: &'g Graph) -> Self {
        Emitter {
            g,
            lines: Vec::new(),
            counter: 0,
            syms: BTreeMap::new(),
            c_interface: false,
            weights: None,
            own_pipeline: false,
            profile: None,
            timer: None,
        }
    }

    /// Embeds `weights` as `dense_resource` constants: `@forward` then takes
    /// only the runtime inputs.
    pub(crate) fn with_weights(mut self, weights: &'g BTreeMap<String, Tensor>) -> Self {
        self.weights = Some(weights);
        self
    }

    /// Asks for the C interface wrapper the ExecutionEngine calls.
    pub(crate) fn with_c_interface(mut self) -> Self {
        self.c_interface = true;
        self
    }

    /// Emits the module for reformc's own pipeline, with differences from
    /// the one users get, none of which changes what it computes beyond
    /// rounding: the contractions the runtime has kernels for carry a
    /// `library_call` ([`crate::library_calls`]; the marked ops keep their
    /// semantics), as does the LSH hashing's rotation; the LSH softmax takes
    /// `exp` as arith ops that vectorise (`Body::exp_f32_poly`, within 2
    /// ulp); reductions combine with `fastmath<reassoc>` (vectorised sums);
    /// and copies into slices are `linalg.copy` loops, not `memref.copy`.
    pub(crate) fn for_own_pipeline(mut self) -> Self {
        self.own_pipeline = true;
        self
    }

    /// Times every leaf op ([`crate::profile`]); [`Self::module_profiled`]
    /// returns the labels.
    pub(crate) fn with_profile(mut self) -> Self {
        self.profile = Some(Vec::new());
        self
    }

    fn fresh(&mut self) -> String {
        let n = format!("%t{}", self.counter);
        self.counter += 1;
        n
    }

    fn def(&mut self, rhs: String) -> String {
        let n = self.fresh();
        self.lines.push(format!("{IND}{n} = {rhs}"));
        n
    }

    /// The whole module.
    pub(crate) fn module(self) -> Result<String, MlirError> {
        self.module_profiled().map(|(text, _)| text)
    }

    /// The whole module and, when profiling, the label of each op timed
    /// (by the index its record call passes).
    pub(crate) fn module_profiled(mut self) -> Result<(String, Vec<String>), MlirError> {
        let g = self.g;
        let embedded = match self.weights {
            Some(w) => Some(crate::weights::embed(g, w)?),
            None => None,
        };
        let args: Vec<(&str, ValueId)> = match &embedded {
            Some(_) => g.inputs(),
            None => g.weights().into_iter().chain(g.inputs()).collect(),
        };
        let mut params = Vec::new();
        for (name, v) in &args {
            params.push(format!(
                "%v{}: {} {{reformc.name = {}}}",
                v.0,
                tensor_ty(g.ty(*v)),
                quote(name)
            ));
        }
        if let Some(e) = &embedded {
            for (name, v) in g.weights() {
                let c = e.constant(g, v, name);
                self.lines.push(format!("{IND}%v{} = {c}", v.0));
            }
        }
        for (_, v) in &args {
            self.bind_syms(*v);
        }
        for &v in &g.body {
            self.op(v)?;
        }
        let (mut names, mut tys, mut res) = (Vec::new(), Vec::new(), Vec::new());
        for (name, v) in &g.outputs {
            names.push(format!("%v{}", v.0));
            tys.push(tensor_ty(g.ty(*v)));
            res.push(format!(
                "{} {{reformc.name = {}}}",
                tensor_ty(g.ty(*v)),
                quote(name)
            ));
        }
        let mut out = String::from("module {\n");
        if self.profile.is_some() {
            out.push_str(crate::profile::DECLARATIONS);
        }
        out.push_str(&format!(
            "  func.func @forward({}) -> ({}){} {{\n",
            params.join(", "),
            res.join(", "),
            if self.c_interface {
                " attributes {llvm.emit_c_interface}"
            } else {
                ""
            }
        ));
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!(
            "{IND}func.return {} : {}\n  }}\n}}\n",
            names.join(", "),
            tys.join(", ")
        ));
        if let Some(e) = &embedded {
            crate::weights::push_resources(&mut out, &e.blobs);
        }
        Ok((out, self.profile.unwrap_or_default()))
    }

    /// Reads each not yet bound symbolic dimension of argument `v` with `tensor.dim`.
    fn bind_syms(&mut self, v: ValueId) {
        let t = self.g.ty(v).clone();
        for (i, d) in t.shape.iter().enumerate() {
            if let Dim::Sym(s) = d {
                if !self.syms.contains_key(s) {
                    let c = self.def(format!("arith.constant {i} : index"));
                    let n = self.def(format!("tensor.dim %v{}, {c} : {}", v.0, tensor_ty(&t)));
                    self.syms.insert(s.clone(), n);
                }
            }
        }
    }

    /// The SSA `index` values of the dynamic dimensions of `shape`, in order.
    fn dyn_sizes(&self, v: ValueId, shape: &[Dim]) -> Result<Vec<String>, MlirError> {
        shape
            .iter()
            .filter_map(|d| match d {
                Dim::Const(_) => None,
                Dim::Sym(s) => Some(self.syms.get(s).cloned().ok_or_else(|| {
                    MlirError::invalid(self.g, v, format!("dimension `{s}` is not an argument's"))
                })),
            })
            .collect()
    }

    /// One size as an `index` value (a constant or a symbol's value).
    fn size(&mut self, v: ValueId, d: &Dim) -> Result<String, MlirError> {
        match d {
            Dim::Const(c) => Ok(self.def(format!("arith.constant {c} : index"))),
            Dim::Sym(s) => self.syms.get(s).cloned().ok_or_else(|| {
                MlirError::invalid(self.g, v, format!("dimension `{s}` is not an argument's"))
            }),
        }
    }

    /// A size as it appears in a mixed static/dynamic list.
    fn mixed(&self, v: ValueId, d: &Dim) -> Result<String, MlirError> {
        match d {
            Dim::Const(c) => Ok(c.to_string()),
            Dim::Sym(_) => Ok(self.dyn_sizes(v, std::slice::from_ref(d))?.remove(0)),
        }
    }

    /// `tensor.empty` of `shape`, filled with `fill` when given.
    fn init(
        &mut self,
        v: ValueId,
        shape: &[Dim],
        d: DType,
        fill: Option<f64>,
    ) -> Result<String, MlirError> {
        let ty = tensor_of(shape, d);
        let sizes = self.dyn_sizes(v, shape)?.join(", ");
        let e = self.def(format!("tensor.empty({sizes}) : {ty}"));
        let Some(x) = fill else { return Ok(e) };
        let c = self.def(constant_op(d, x));
        Ok(self.def(format!(
            "linalg.fill ins({c} : {}) outs({e} : {ty}) -> {ty}",
            elt(d)
        )))
    }

    /// A `linalg.generic` over `iters` loops; `body` gets the block arguments
    /// (inputs then the output) and returns the value to yield.
    fn generic(
        &mut self,
        ins: &[Operand],
        out: Operand,
        iters: &[&str],
        out_elt: &str,
        body: impl FnOnce(&mut Body, &[String]) -> String,
    ) -> String {
        self.generic_call(ins, out, iters, out_elt, None, body)
    }

    /// [`Self::generic`] with an optional `library_call` attribute naming a
    /// function that computes the same op.
    fn generic_call(
        &mut self,
        ins: &[Operand],
        out: Operand,
        iters: &[&str],
        out_elt: &str,
        library_call: Option<&str>,
        body: impl FnOnce(&mut Body, &[String]) -> String,
    ) -> String {
        let dims: Vec<String> = (0..iters.len()).map(|i| format!("d{i}")).collect();
        let dims = dims.join(", ");
        let maps: Vec<String> = ins
            .iter()
            .chain(std::iter::once(&out))
            .map(|o| format!("affine_map<({dims}) -> ({})>", o.map.join(", ")))
            .collect();
        let iters: Vec<String> = iters.iter().map(|i| format!("\"{i}\"")).collect();
        let r = self.fresh();
        let in_names: Vec<&str> = ins.iter().map(|o| o.name.as_str()).collect();
        let in_tys: Vec<&str> = ins.iter().map(|o| o.ty.as_str()).collect();
        let ins_clause = if ins.is_empty() {
            String::new()
        } else {
            format!("ins({} : {}) ", in_names.join(", "), in_tys.join(", "))
        };
        let call = library_call.map_or(String::new(), |f| format!(", library_call = \"{f}\""));
        self.lines.push(format!(
            "{IND}{r} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]{call}}} {ins_clause}outs({} : {}) {{",
            maps.join(", "),
            iters.join(", "),
            out.name,
            out.ty
        ));
        let mut args = Vec::new();
        let mut decl = Vec::new();
        for o in ins.iter().chain(std::iter::once(&out)) {
            let a = self.fresh();
            decl.push(format!("{a}: {}", elt_of_ty(&o.ty)));
            args.push(a);
        }
        self.lines.push(format!("{IND}^bb0({}):", decl.join(", ")));
        let body_start = self.lines.len();
        let mut b = Body {
            lines: &mut self.lines,
            counter: &mut self.counter,
            indent: BODY_IND,
        };
        let y = body(&mut b, &args);
        if self.own_pipeline && iters.iter().any(|i| i == "\"reduction\"") {
            let out_arg = args.last().map(String::as_str).unwrap_or("");
            reassociate_combine(&mut self.lines[body_start..], &y, out_arg);
        }
        self.lines
            .push(format!("{BODY_IND}linalg.yield {y} : {out_elt}"));
        self.lines.push(format!("{IND}}} -> {}", out.ty));
        r
    }

    /// The `library_call` of a batched product of rank `rank` in dtype `d`
    /// ([`crate::library_calls::bmm_name`]), when library calls are on and
    /// the runtime has the kernel (f32 only). The contraction it marks must
    /// be `y[.., m, n] += a[.., m, k] b[.., n, k]` (`b_transposed`) or
    /// `a[.., m, k] b[.., k, n]`, all operands with the same batch axes.
    fn bmm_call(&self, rank: usize, b_transposed: bool, d: DType) -> Option<String> {
        (self.own_pipeline && d == DType::F32)
            .then(|| crate::library_calls::bmm_name(rank, b_transposed))
    }

    /// The error for an op without a lowering.
    pub(crate) fn unsupported(&self, v: ValueId) -> MlirError {
        MlirError::Unsupported {
            op: self.g.node(v).op.kind,
            value: v.0,
        }
    }

    /// Lowers the op defining `v`, binding `%v<id>`; timed when profiling
    /// and the op is a leaf (an op with a region is timed by its inner ops).
    fn op(&mut self, v: ValueId) -> Result<(), MlirError> {
        let kind = self.g.node(v).op.kind;
        let timed = self.profile.is_some()
            && !matches!(
                kind,
                OpKind::Input
                    | OpKind::Weight
                    | OpKind::Constant
                    | OpKind::ReversibleBlock
                    | OpKind::SeqChunk
            );
        if timed {
            let start = self.def(crate::profile::now_call());
            self.timer = Some(OpTimer {
                kind,
                id: v.0,
                start,
                stage: None,
            });
        }
        let lowered = self.lower_op(v);
        if let Some(t) = self.timer.take() {
            self.record(&t);
        }
        lowered
    }

    /// Records the time since `t.start` under `kind %id`, or `kind.stage %id`
    /// once the op has stages.
    fn record(&mut self, t: &OpTimer) {
        let Some(labels) = self.profile.as_mut() else {
            return;
        };
        labels.push(match t.stage {
            Some(s) => format!("{}.{s} %{}", t.kind, t.id),
            None => format!("{} %{}", t.kind, t.id),
        });
        let id = labels.len() - 1;
        let c = self.def(format!("arith.constant {id} : i64"));
        let call = crate::profile::record_call(&c, &t.start);
        self.lines.push(format!("{IND}{call}"));
    }

    /// Starts stage `name` of the op being lowered when profiling (`run
    /// --backend mlir --profile` then lists `kind.name`): the time since the
    /// previous stage began is recorded under that stage (the first one under
    /// `prepare`). Within a region, see [`Self::branch_timer`].
    fn stage(&mut self, name: &'static str) {
        let Some(mut t) = self.timer.take() else {
            return;
        };
        let done = OpTimer {
            stage: Some(t.stage.unwrap_or("prepare")),
            start: t.start.clone(),
            ..t
        };
        self.record(&done);
        t.start = self.def(crate::profile::now_call());
        t.stage = Some(name);
        self.timer = Some(t);
    }

    /// Starts stage `name` inside a loop body: the clock is read again in
    /// every iteration (a reading from before the loop would count the
    /// earlier iterations too); end the body with [`Self::end_branch`].
    fn restart_stage(&mut self, name: &'static str) {
        let Some(mut t) = self.timer.take() else {
            return;
        };
        t.start = self.def(crate::profile::now_call());
        t.stage = Some(name);
        self.timer = Some(t);
    }

    /// The timer to restore at the start of each branch of a region that
    /// holds stages of the op being lowered ([`Self::end_branch`] ends each).
    fn branch_timer(&self) -> Option<OpTimer> {
        self.timer.clone()
    }

    /// Records the current stage at the end of a branch (before its
    /// `scf.yield`): a clock reading inside the region does not dominate
    /// code after it. After the region, set the timer to `None` (each branch
    /// recorded its own stages; one of them ran).
    fn end_branch(&mut self) {
        if let Some(t) = self.timer.take() {
            self.record(&t);
        }
    }

    /// [`Self::op`] without the timing.
    fn lower_op(&mut self, v: ValueId) -> Result<(), MlirError> {
        let node = self.g.node(v);
        let kind = node.op.kind;
        let result = match kind {
            // Function arguments, named `%v<id>` already.
            OpKind::Input | OpKind::Weight => return Ok(()),
            OpKind::Constant => self.constant(v),
            OpKind::Add
            | OpKind::Sub
            | OpKind::Mul
            | OpKind::Div
            | OpKind::Max
            | OpKind::Min
            | OpKind::Lt
            | OpKind::Eq
            | OpKind::Neg
            | OpKind::Exp
            | OpKind::Log
            | OpKind::Sqrt
            | OpKind::Rsqrt
            | OpKind::Tanh
            | OpKind::Act
            | OpKind::Cast
            | OpKind::Select
            | OpKind::ActGrad => self.elementwise(v),
            OpKind::Matmul => self.matmul(v),
            OpKind::Reduce => self.reduce(v),
            OpKind::Softmax => self.softmax(v),
            OpKind::Reshape => self.reshape(v),
            OpKind::Transpose => self.transpose(v),
            OpKind::Concat => self.concat(v),
            OpKind::Slice => self.slice(v, false),
            OpKind::Index => self.slice(v, true),
            OpKind::Iota => self.iota(v),
            // Not lowered yet (issue 10): each is an error naming the op.
            // Region arguments are bound by the op that owns the region.
            OpKind::Arg => Err(self.unsupported(v)),
            // Training-only (dropout of a step graph); steps run on the LLVM JIT.
            OpKind::DropoutMask
            | OpKind::LmLoss
            | OpKind::LmLossGrad
            | OpKind::LayerNormGrad
            | OpKind::LshAttentionGrad
            | OpKind::LocalAttentionGrad
            | OpKind::FeedForward
            | OpKind::FeedForwardGrad => Err(self.unsupported(v)),
            OpKind::Embedding => self.embedding(v),
            OpKind::AxialPosEmbedding => self.axial_pos_embedding(v),
            OpKind::LayerNorm => self.layer_norm(v),
            OpKind::Linear => self.linear(v),
            OpKind::Attention => self.attention(v),
            OpKind::LocalAttention => self.local_attention(v),
            OpKind::LshHash => self.lsh_hash(v),
            OpKind::LshAttention => self.lsh_attention(v),
            OpKind::Argsort => self.argsort(v),
            OpKind::RandomNormal => self.random_normal(v),
            OpKind::ReversibleBlock => self.reversible_block(v),
            OpKind::SeqChunk => self.seq_chunk(v),
            OpKind::PadToMultiple => self.pad_to_multiple(v),
            OpKind::Truncate => self.truncate(v),
            OpKind::Gather => self.gather(v),
            OpKind::Argmax => self.argmax(v),
            OpKind::Broadcast => self.broadcast(v),
            OpKind::ScatterAdd => self.scatter_add(v),
        }?;
        self.lines.push(format!("{IND}%v{} = {result}", v.0));
        // A symbol first seen on this result (a padded length) is read from it.
        self.bind_syms(v);
        Ok(())
    }

    /// The value `x` under another name: a cast to its own type is a no-op
    /// that keeps one `%v<id> = ...` line per value.
    fn alias(&self, x: &str, ty: &str) -> String {
        format!("tensor.cast {x} : {ty} to {ty}")
    }

    fn constant(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let d = node.ty.dtype;
        let value = node.op.float("value").unwrap_or(0.0);
        if !node.ty.shape.is_empty() {
            return Err(MlirError::invalid(self.g, v, "a constant must be rank 0"));
        }
        Ok(format!(
            "arith.constant dense<{}> : {}",
            literal(d, value),
            tensor_ty(&node.ty)
        ))
    }

    /// An operand broadcast (numpy rules) to the `rank` loops of the result
    /// `out`: axes of length 1 where the result is not read index 0.
    fn broadcast_operand(&self, x: ValueId, out: &[Dim]) -> Operand {
        let t = self.g.ty(x);
        let lead = out.len() - t.rank();
        let map = t
            .shape
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if *d == Dim::Const(1) && out[lead + i] != Dim::Const(1) {
                    "0".to_string()
                } else {
                    format!("d{}", lead + i)
                }
            })
            .collect();
        Operand {
            name: format!("%v{}", x.0),
            ty: tensor_ty(t),
            map,
        }
    }

    fn identity(rank: usize) -> Vec<String> {
        (0..rank).map(|i| format!("d{i}")).collect()
    }

    fn elementwise(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let out_ty = node.ty.clone();
        let Some(ew) = node.op.kind.facts().elementwise else {
            return Err(MlirError::invalid(self.g, v, "not elementwise"));
        };
        if node
            .inputs
            .iter()
            .any(|&x| self.g.ty(x).rank() > out_ty.rank())
        {
            return Err(MlirError::invalid(
                self.g,
                v,
                "operand of higher rank than result",
            ));
        }
        let act = match ew {
            Elementwise::Unary(UnaryFn::Act) | Elementwise::ActGrad => node
                .op
                .activation()
                .map_err(|e| MlirError::invalid(self.g, v, e))?,
            _ => Activation::None,
        };
        let in_dtype = node.inputs.last().map(|&x| self.g.ty(x).dtype);
        let in_dtype = in_dtype.unwrap_or(out_ty.dtype);
        let ins: Vec<Operand> = node
            .inputs
            .iter()
            .map(|&x| self.broadcast_operand(x, &out_ty.shape))
            .collect();
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let out = Operand {
            name: init,
            ty: tensor_ty(&out_ty),
            map: Self::identity(out_ty.rank()),
        };
        let iters = vec!["parallel"; out_ty.rank()];
        let out_dtype = out_ty.dtype;
        let r = self.generic(&ins, out, &iters, elt(out_dtype), |b, a| match ew {
            Elementwise::Unary(f) => b.unary(f, act, &a[0], in_dtype),
            Elementwise::Binary(f) => b.binary(f, &a[0], &a[1], in_dtype),
            Elementwise::Select => b.def(format!(
                "arith.select {}, {}, {} : {}",
                a[0],
                a[1],
                a[2],
                elt(out_dtype)
            )),
            Elementwise::Cast => b.cast(&a[0], in_dtype, out_dtype),
            Elementwise::ActGrad => b.act_grad(act, &a[0], &a[1], in_dtype),
        });
        Ok(self.alias(&r, &tensor_ty(&out_ty)))
    }

    fn matmul(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let out_ty = node.ty.clone();
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let r = out_ty.rank();
        if r < 2 || self.g.ty(a).rank() != r || self.g.ty(b).rank() != r {
            return Err(MlirError::invalid(
                self.g,
                v,
                "matmul needs operands of the result's rank >= 2",
            ));
        }
        // Loops: batch.., m, n (parallel), k (reduction) = d<r>.
        let batch = |x: ValueId| -> Vec<String> {
            let t = self.g.ty(x);
            (0..r - 2)
                .map(|i| {
                    if t.shape[i] == Dim::Const(1) && out_ty.shape[i] != Dim::Const(1) {
                        "0".to_string()
                    } else {
                        format!("d{i}")
                    }
                })
                .collect()
        };
        let mut am = batch(a);
        am.extend([format!("d{}", r - 2), format!("d{r}")]);
        let mut bm = batch(b);
        bm.extend([format!("d{r}"), format!("d{}", r - 1)]);
        let ins = [
            Operand {
                name: format!("%v{}", a.0),
                ty: tensor_ty(self.g.ty(a)),
                map: am,
            },
            Operand {
                name: format!("%v{}", b.0),
                ty: tensor_ty(self.g.ty(b)),
                map: bm,
            },
        ];
        let d = out_ty.dtype;
        let init = self.init(v, &out_ty.shape, d, Some(0.0))?;
        let out = Operand {
            name: init,
            ty: tensor_ty(&out_ty),
            map: Self::identity(r),
        };
        let mut iters = vec!["parallel"; r];
        iters.push("reduction");
        let res = self.generic(&ins, out, &iters, elt(d), |body, x| {
            let p = body.binary(BinaryFn::Mul, &x[0], &x[1], d);
            body.binary(BinaryFn::Add, &x[2], &p, d)
        });
        Ok(self.alias(&res, &tensor_ty(&out_ty)))
    }

    /// A reduction of `x` over `axes` with `f` (add or max) into a tensor of
    /// `shape` (the axes dropped, or kept as 1 under `keep`); returns the value
    /// and the map of the reduced tensor in `x`'s loops.
    #[allow(clippy::too_many_arguments)]
    fn reduce_into(
        &mut self,
        v: ValueId,
        x: &str,
        x_ty: &TensorType,
        axes: &[usize],
        keep: bool,
        f: BinaryFn,
        pre: impl FnOnce(&mut Body, &str) -> String,
    ) -> Result<(String, Vec<String>, Vec<Dim>), MlirError> {
        let d = x_ty.dtype;
        let mut shape = Vec::new();
        let mut map = Vec::new();
        for (i, dim) in x_ty.shape.iter().enumerate() {
            if axes.contains(&i) {
                if keep {
                    shape.push(Dim::Const(1));
                    map.push("0".to_string());
                }
            } else {
                shape.push(dim.clone());
                map.push(format!("d{i}"));
            }
        }
        let start = if f == BinaryFn::Max {
            f64::NEG_INFINITY
        } else {
            0.0
        };
        let init = self.init(v, &shape, d, Some(start))?;
        let ins = [Operand {
            name: x.to_string(),
            ty: tensor_ty(x_ty),
            map: Self::identity(x_ty.rank()),
        }];
        let out = Operand {
            name: init,
            ty: tensor_of(&shape, d),
            map: map.clone(),
        };
        let iters = reduction_iterators(x_ty.rank(), axes);
        let r = self.generic(&ins, out, &iters, elt(d), |b, a| {
            let e = pre(b, &a[0]);
            b.binary(f, &a[1], &e, d)
        });
        Ok((r, map, shape))
    }

    fn reduce(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let out_ty = node.ty.clone();
        let kind = node
            .op
            .reduction()
            .map_err(|e| MlirError::invalid(self.g, v, e))?;
        let keep = node.op.flag("keepdim");
        let axes = self.axes(v, "axes", x_ty.rank())?;
        let d = x_ty.dtype;
        let xn = format!("%v{}", x.0);
        let id = |_: &mut Body, a: &str| a.to_string();
        let r = match kind {
            Reduction::Sum => {
                self.reduce_into(v, &xn, &x_ty, &axes, keep, BinaryFn::Add, id)?
                    .0
            }
            Reduction::Max => {
                self.reduce_into(v, &xn, &x_ty, &axes, keep, BinaryFn::Max, id)?
                    .0
            }
            Reduction::Mean => {
                let (s, _, shape) =
                    self.reduce_into(v, &xn, &x_ty, &axes, keep, BinaryFn::Add, id)?;
                let mut n = self.def("arith.constant 1 : index".into());
                for &a in &axes {
                    let sz = self.size(v, &x_ty.shape[a])?;
                    n = self.def(format!("arith.muli {n}, {sz} : index"));
                }
                let n = self.def(format!("arith.index_cast {n} : index to i64"));
                let n = self.def(format!("arith.sitofp {n} : i64 to {}", elt(d)));
                self.map_unary(v, &s, &shape, d, |b, a| b.binary(BinaryFn::Div, a, &n, d))?
            }
            Reduction::LogSumExp => {
                let (m, map, shape) =
                    self.reduce_into(v, &xn, &x_ty, &axes, keep, BinaryFn::Max, id)?;
                let s = self.sum_exp_minus(v, &xn, &x_ty, &m, &map, &shape, &axes)?;
                let ins = [
                    Operand {
                        name: s,
                        ty: tensor_of(&shape, d),
                        map: Self::identity(shape.len()),
                    },
                    Operand {
                        name: m,
                        ty: tensor_of(&shape, d),
                        map: Self::identity(shape.len()),
                    },
                ];
                let init = self.init(v, &shape, d, None)?;
                let out = Operand {
                    name: init,
                    ty: tensor_of(&shape, d),
                    map: Self::identity(shape.len()),
                };
                let iters = vec!["parallel"; shape.len()];
                self.generic(&ins, out, &iters, elt(d), |b, a| {
                    let l = b.unary(UnaryFn::Log, Activation::None, &a[0], d);
                    b.binary(BinaryFn::Add, &l, &a[1], d)
                })
            }
        };
        Ok(self.alias(&r, &tensor_ty(&out_ty)))
    }

    /// `sum(exp(x - m))` over `axes`, `m` read through `map`.
    #[allow(clippy::too_many_arguments)]
    fn sum_exp_minus(
        &mut self,
        v: ValueId,
        x: &str,
        x_ty: &TensorType,
        m: &str,
        map: &[String],
        shape: &[Dim],
        axes: &[usize],
    ) -> Result<String, MlirError> {
        let d = x_ty.dtype;
        let init = self.init(v, shape, d, Some(0.0))?;
        let ins = [
            Operand {
                name: x.to_string(),
                ty: tensor_ty(x_ty),
                map: Self::identity(x_ty.rank()),
            },
            Operand {
                name: m.to_string(),
                ty: tensor_of(shape, d),
                map: map.to_vec(),
            },
        ];
        let out = Operand {
            name: init,
            ty: tensor_of(shape, d),
            map: map.to_vec(),
        };
        let iters = reduction_iterators(x_ty.rank(), axes);
        Ok(self.generic(&ins, out, &iters, elt(d), |b, a| {
            let t = b.binary(BinaryFn::Sub, &a[0], &a[1], d);
            let e = b.unary(UnaryFn::Exp, Activation::None, &t, d);
            b.binary(BinaryFn::Add, &a[2], &e, d)
        }))
    }

    /// `f` applied to every element of `x` of `shape`.
    fn map_unary(
        &mut self,
        v: ValueId,
        x: &str,
        shape: &[Dim],
        d: DType,
        f: impl FnOnce(&mut Body, &str) -> String,
    ) -> Result<String, MlirError> {
        let ty = tensor_of(shape, d);
        let init = self.init(v, shape, d, None)?;
        let ins = [Operand {
            name: x.to_string(),
            ty: ty.clone(),
            map: Self::identity(shape.len()),
        }];
        let out = Operand {
            name: init,
            ty,
            map: Self::identity(shape.len()),
        };
        let iters = vec!["parallel"; shape.len()];
        Ok(self.generic(&ins, out, &iters, elt(d), |b, a| f(b, &a[0])))
    }

    /// Softmax decomposed: max, `exp(x - max)` summed, then divided.
    fn softmax(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let axis = self.axis(v, "axis", x_ty.rank())?;
        let d = x_ty.dtype;
        let xn = format!("%v{}", x.0);
        let id = |_: &mut Body, a: &str| a.to_string();
        let (m, map, shape) = self.reduce_into(v, &xn, &x_ty, &[axis], false, BinaryFn::Max, id)?;
        let s = self.sum_exp_minus(v, &xn, &x_ty, &m, &map, &shape, &[axis])?;
        let rank = x_ty.rank();
        let ins = [
            Operand {
                name: xn,
                ty: tensor_ty(&x_ty),
                map: Self::identity(rank),
            },
            Operand {
                name: m,
                ty: tensor_of(&shape, d),
                map: map.clone(),
            },
            Operand {
                name: s,
                ty: tensor_of(&shape, d),
                map,
            },
        ];
        let init = self.init(v, &x_ty.shape, d, None)?;
        let out = Operand {
            name: init,
            ty: tensor_ty(&x_ty),
            map: Self::identity(rank),
        };
        let iters = vec!["parallel"; rank];
        let r = self.generic(&ins, out, &iters, elt(d), |b, a| {
            let t = b.binary(BinaryFn::Sub, &a[0], &a[1], d);
            let e = b.unary(UnaryFn::Exp, Activation::None, &t, d);
            b.binary(BinaryFn::Div, &e, &a[2], d)
        });
        Ok(self.alias(&r, &tensor_ty(&node.ty)))
    }

    /// A reshape as `tensor.collapse_shape` to one axis, then
    /// `tensor.expand_shape` to the result's sizes (the form bufferization and
    /// IREE handle best); a rank-0 result takes the single element.
    fn reshape(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let out_ty = node.ty.clone();
        let d = out_ty.dtype;
        let (xt, ot) = (tensor_ty(&x_ty), tensor_ty(&out_ty));
        if out_ty.shape.is_empty() {
            let zero = self.def("arith.constant 0 : index".into());
            let idx = vec![zero; x_ty.rank()].join(", ");
            let e = self.def(format!("tensor.extract %v{}[{idx}] : {xt}", x.0));
            return Ok(format!("tensor.from_elements {e} : {ot}"));
        }
        if let Some(groups) = reassociation(&x_ty.shape, &out_ty.shape) {
            return self.grouped_reshape(v, x, &x_ty, &out_ty, &groups);
        }
        let dynamic_out = out_ty
            .shape
            .iter()
            .filter(|d| d.as_const().is_none())
            .count();
        if dynamic_out > 1 {
            return self.reshape_by_index(v, x, &x_ty, &out_ty);
        }
        // `expand_shape` wants a static source where the output is all
        // static, and a dynamic one where an output axis is dynamic.
        let out_n: Option<u64> = out_ty.shape.iter().map(Dim::as_const).product();
        let flat_dyn = match out_n {
            Some(n) => tensor_of(&[Dim::Const(n)], d),
            None => tensor_of(&[Dim::sym("n")], d),
        };
        let mut flat = format!("%v{}", x.0);
        if x_ty.rank() == 0 {
            flat = self.def(format!(
                "tensor.expand_shape {flat} [] output_shape [1] : {xt} into {}",
                tensor_of(&[Dim::Const(1)], d)
            ));
            flat = self.def(format!(
                "tensor.cast {flat} : {} to {flat_dyn}",
                tensor_of(&[Dim::Const(1)], d)
            ));
        } else {
            let all = (0..x_ty.rank())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let static_n: Option<u64> = x_ty.shape.iter().map(Dim::as_const).product();
            let collapsed = match static_n {
                Some(n) => tensor_of(&[Dim::Const(n)], d),
                None => flat_dyn.clone(),
            };
            flat = self.def(format!(
                "tensor.collapse_shape {flat} [[{all}]] : {xt} into {collapsed}"
            ));
            flat = self.def(format!("tensor.cast {flat} : {collapsed} to {flat_dyn}"));
        }
        let all = (0..out_ty.rank())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut sizes = Vec::new();
        for dim in &out_ty.shape {
            sizes.push(self.mixed(v, dim)?);
        }
        Ok(format!(
            "tensor.expand_shape {flat} [[{all}]] output_shape [{}] : {flat_dyn} into {ot}",
            sizes.join(", ")
        ))
    }

    /// A reshape as a gather: each output element reads the input element at
    /// the same row-major position. Used where the output has several dynamic
    /// axes that do not pair up with the input's, since the flattened
    /// `expand_shape` crashes MLIR 22's `expand-strided-metadata` there.
    fn reshape_by_index(
        &mut self,
        v: ValueId,
        x: ValueId,
        x_ty: &TensorType,
        out_ty: &TensorType,
    ) -> Result<String, MlirError> {
        let mut out_sizes = Vec::new();
        for dim in &out_ty.shape {
            out_sizes.push(self.size(v, dim)?);
        }
        let mut in_sizes = Vec::new();
        for dim in &x_ty.shape {
            in_sizes.push(self.size(v, dim)?);
        }
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let (xt, ot) = (tensor_ty(x_ty), tensor_ty(out_ty));
        let out = Operand {
            name: init,
            ty: ot.clone(),
            map: Self::identity(out_ty.rank()),
        };
        let iters = vec!["parallel"; out_ty.rank()];
        let src = format!("%v{}", x.0);
        let r = self.generic(&[], out, &iters, elt(out_ty.dtype), |b, _| {
            let mut lin = b.def("arith.constant 0 : index".into());
            for (k, size) in out_sizes.iter().enumerate() {
                let i = b.def(format!("linalg.index {k} : index"));
                let m = b.def(format!("arith.muli {lin}, {size} : index"));
                lin = b.def(format!("arith.addi {m}, {i} : index"));
            }
            let mut idx = vec![String::new(); in_sizes.len()];
            for (k, size) in in_sizes.iter().enumerate().rev() {
                idx[k] = b.def(format!("arith.remui {lin}, {size} : index"));
                lin = b.def(format!("arith.divui {lin}, {size} : index"));
            }
            b.def(format!("tensor.extract {src}[{}] : {xt}", idx.join(", ")))
        });
        Ok(self.alias(&r, &ot))
    }

    /// A reshape by matched groups of axes: `collapse_shape` each input group
    /// to one axis, then `expand_shape` each to its output axes. Every group
    /// has at most one dynamic axis per side, which MLIR 22's
    /// `expand-strided-metadata` lowers (a fully flattened dynamic
    /// `expand_shape` crashes it).
    fn grouped_reshape(
        &mut self,
        v: ValueId,
        x: ValueId,
        x_ty: &TensorType,
        out_ty: &TensorType,
        groups: &[(Vec<usize>, Vec<usize>)],
    ) -> Result<String, MlirError> {
        let d = out_ty.dtype;
        let mid: Vec<Dim> = groups
            .iter()
            .map(|(i, _)| match i.as_slice() {
                [one] => x_ty.shape[*one].clone(),
                many => Dim::Const(
                    many.iter()
                        .filter_map(|&a| x_ty.shape[a].as_const())
                        .product(),
                ),
            })
            .collect();
        let list = |g: Vec<&Vec<usize>>| {
            g.iter()
                .map(|v| {
                    format!(
                        "[{}]",
                        v.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mid_ty = tensor_of(&mid, d);
        let mut cur = format!("%v{}", x.0);
        if groups.iter().any(|(i, _)| i.len() > 1) {
            let re = list(groups.iter().map(|(i, _)| i).collect());
            cur = self.def(format!(
                "tensor.collapse_shape {cur} [{re}] : {} into {mid_ty}",
                tensor_ty(x_ty)
            ));
        }
        let ot = tensor_ty(out_ty);
        if groups.iter().all(|(_, o)| o.len() == 1) {
            return Ok(format!("tensor.cast {cur} : {mid_ty} to {ot}"));
        }
        let re = list(groups.iter().map(|(_, o)| o).collect());
        let mut sizes = Vec::new();
        for dim in &out_ty.shape {
            sizes.push(self.mixed(v, dim)?);
        }
        Ok(format!(
            "tensor.expand_shape {cur} [{re}] output_shape [{}] : {mid_ty} into {ot}",
            sizes.join(", ")
        ))
    }

    fn transpose(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let out_ty = node.ty.clone();
        let perm = node
            .op
            .ints("perm")
            .ok_or_else(|| MlirError::invalid(self.g, v, "missing `perm`"))?;
        let perm: Vec<String> = perm.iter().map(|p| p.to_string()).collect();
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let ty = tensor_ty(&out_ty);
        let r = self.def(format!(
            "linalg.transpose ins(%v{} : {}) outs({init} : {ty}) permutation = [{}]",
            x.0,
            tensor_ty(self.g.ty(x)),
            perm.join(", ")
        ));
        Ok(self.alias(&r, &ty))
    }

    fn concat(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let axis = self.axis(v, "axis", node.ty.rank())?;
        let names: Vec<String> = node.inputs.iter().map(|x| format!("%v{}", x.0)).collect();
        let tys: Vec<String> = node
            .inputs
            .iter()
            .map(|&x| tensor_ty(self.g.ty(x)))
            .collect();
        let ty = tensor_ty(&node.ty);
        if names.len() == 1 {
            return Ok(format!("tensor.cast {} : {} to {ty}", names[0], tys[0]));
        }
        let inputs = node.inputs.clone();
        let shape = node.ty.shape.clone();
        // Only the copies (reformc's pipeline) need the sizes.
        let copies = self.own_pipeline;
        let sizes = match copies {
            true => self.dyn_sizes(v, &shape)?.join(", "),
            false => String::new(),
        };
        let empty = |e: &mut Self| e.def(format!("tensor.empty({sizes}) : {ty}"));
        let mut parts = Vec::new();
        for ((x, name), xt) in inputs.iter().zip(names).zip(tys) {
            let x_ty = self.g.ty(*x).clone();
            let sizes = match copies {
                true => self.value_sizes(&name, &x_ty),
                false => Vec::new(),
            };
            parts.push(ConcatPart {
                name,
                ty: xt,
                sizes,
            });
        }
        let r = self.concat_parts(axis, &parts, &ty, empty);
        Ok(format!("tensor.cast {r} : {ty} to {ty}"))
    }

    /// `parts` joined along `axis` into a tensor of type `ty`: a
    /// `tensor.concat`, or in reformc's own pipeline each part copied by a
    /// `linalg.copy` into its slice of `empty()` (a fresh result). Bufferized,
    /// a `tensor.concat` copies through `memref.copy`, which lowers to the C
    /// runner's element-by-element `memrefCopy` for a strided slice; a
    /// `linalg.copy` becomes a loop that LLVM vectorises.
    fn concat_parts(
        &mut self,
        axis: usize,
        parts: &[ConcatPart],
        ty: &str,
        empty: impl FnOnce(&mut Self) -> String,
    ) -> String {
        if !self.own_pipeline {
            let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
            let tys: Vec<&str> = parts.iter().map(|p| p.ty.as_str()).collect();
            return self.def(format!(
                "tensor.concat dim({axis}) {} : ({}) -> {ty}",
                names.join(", "),
                tys.join(", ")
            ));
        }
        let mut acc = empty(self);
        let mut offset = self.def("arith.constant 0 : index".into());
        for p in parts {
            let rank = p.sizes.len();
            let mut offs = vec!["0".to_string(); rank];
            offs[axis] = offset.clone();
            let ones = vec!["1"; rank].join(", ");
            let at = format!("[{}] [{}] [{ones}]", offs.join(", "), p.sizes.join(", "));
            let (name, pty) = (&p.name, &p.ty);
            let dest = self.def(format!("tensor.extract_slice {acc}{at} : {ty} to {pty}"));
            let copied = self.def(format!(
                "linalg.copy ins({name} : {pty}) outs({dest} : {pty}) -> {pty}"
            ));
            acc = self.def(format!(
                "tensor.insert_slice {copied} into {acc}{at} : {pty} into {ty}"
            ));
            let len = match p.sizes[axis].parse::<u64>() {
                Ok(n) => self.def(format!("arith.constant {n} : index")),
                Err(_) => p.sizes[axis].clone(),
            };
            offset = self.def(format!("arith.addi {offset}, {len} : index"));
        }
        acc
    }

    /// `slice` (`start..end` of an axis) or, with `drop`, `index` (one
    /// position, the axis removed by a rank-reducing `tensor.extract_slice`).
    fn slice(&mut self, v: ValueId, drop: bool) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let x = node.inputs[0];
        let x_ty = self.g.ty(x).clone();
        let axis = self.axis(v, "axis", x_ty.rank())?;
        let (start, len) = if drop {
            (self.nonneg(v, "index")?, 1)
        } else {
            let (s, e) = (self.nonneg(v, "start")?, self.nonneg(v, "end")?);
            if e < s {
                return Err(MlirError::invalid(self.g, v, "`end` before `start`"));
            }
            (s, e - s)
        };
        let mut offsets = Vec::new();
        let mut sizes = Vec::new();
        for (i, dim) in x_ty.shape.iter().enumerate() {
            if i == axis {
                offsets.push(start.to_string());
                sizes.push(len.to_string());
            } else {
                offsets.push("0".into());
                sizes.push(self.mixed(v, dim)?);
            }
        }
        let ones = vec!["1"; x_ty.rank()].join(", ");
        Ok(format!(
            "tensor.extract_slice %v{}[{}] [{}] [{ones}] : {} to {}",
            x.0,
            offsets.join(", "),
            sizes.join(", "),
            tensor_ty(&x_ty),
            tensor_ty(&node.ty)
        ))
    }

    fn iota(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let out_ty = node.ty.clone();
        let r = node.inputs[0];
        let r_ty = self.g.ty(r).clone();
        let axis = self.axis(v, "axis", r_ty.rank())?;
        if out_ty.rank() != 1 || out_ty.dtype != DType::I64 {
            return Err(MlirError::invalid(self.g, v, "iota must be i64 of rank 1"));
        }
        // The length is read from the reference operand, whose dimension may
        // be a symbol no argument carries.
        let c = self.def(format!("arith.constant {axis} : index"));
        let n = self.def(format!("tensor.dim %v{}, {c} : {}", r.0, tensor_ty(&r_ty)));
        let sizes = if out_ty.shape[0].as_const().is_some() {
            String::new()
        } else {
            n
        };
        let init = self.def(format!("tensor.empty({sizes}) : {}", tensor_ty(&out_ty)));
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(1),
        };
        let r = self.generic(&[], out, &["parallel"], "i64", |b, _| {
            let i = b.def("linalg.index 0 : index".into());
            b.def(format!("arith.index_cast {i} : index to i64"))
        });
        Ok(self.alias(&r, &ty))
    }

    fn nonneg(&self, v: ValueId, key: &str) -> Result<u64, MlirError> {
        let op = &self.g.node(v).op;
        match op.attrs.get(key) {
            Some(Attr::Int(i)) if *i >= 0 => Ok(*i as u64),
            _ => Err(MlirError::invalid(
                self.g,
                v,
                format!("`{key}` must be a non-negative integer"),
            )),
        }
    }

    fn axis(&self, v: ValueId, key: &str, rank: usize) -> Result<usize, MlirError> {
        let a = self.nonneg(v, key)? as usize;
        if a >= rank {
            return Err(MlirError::invalid(
                self.g,
                v,
                format!("`{key}` {a} out of range"),
            ));
        }
        Ok(a)
    }

    fn axes(&self, v: ValueId, key: &str, rank: usize) -> Result<Vec<usize>, MlirError> {
        let op = &self.g.node(v).op;
        let Some(list) = op.ints(key) else {
            return Err(MlirError::invalid(self.g, v, format!("missing `{key}`")));
        };
        list.iter()
            .map(|&a| match usize::try_from(a) {
                Ok(a) if a < rank => Ok(a),
                _ => Err(MlirError::invalid(
                    self.g,
                    v,
                    format!("axis {a} out of range"),
                )),
            })
            .collect()
    }
}

/// Groups of input and output axes of a reshape that hold the same elements:
/// equal dimensions pair one to one, runs of constant dimensions with equal
/// products pair as a group. `None` when the shapes do not match that way
/// (symbols that differ, or a run that never balances).
fn reassociation(a: &[Dim], b: &[Dim]) -> Option<Vec<(Vec<usize>, Vec<usize>)>> {
    let (mut i, mut j) = (0, 0);
    let mut groups = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            groups.push((vec![i], vec![j]));
            i += 1;
            j += 1;
            continue;
        }
        let (mut gi, mut gj) = (vec![i], vec![j]);
        let (mut pa, mut pb) = (a[i].as_const()?, b[j].as_const()?);
        while pa != pb {
            if pa < pb {
                i += 1;
                pa *= a.get(i)?.as_const()?;
                gi.push(i);
            } else {
                j += 1;
                pb *= b.get(j)?.as_const()?;
                gj.push(j);
            }
        }
        groups.push((gi, gj));
        i += 1;
        j += 1;
    }
    (i == a.len() && j == b.len() && !groups.is_empty()).then_some(groups)
}

/// The element type of a tensor type string (`tensor<?x8xf32>` -> `f32`).
fn elt_of_ty(ty: &str) -> &str {
    let inner = ty.trim_start_matches("tensor<").trim_end_matches('>');
    inner.rsplit('x').next().unwrap_or(inner)
}

/// Marks a reduction's combining op `fastmath<reassoc>`: the line of `body`
/// that defines the yielded value `y` as an `arith.addf` or
/// `arith.maximumf` of the output argument `out` and another value. LLVM
/// then vectorises the reduction loop with partial sums in lanes (an add
/// chain otherwise runs one element per add latency); a sum's last bits
/// change with the order, a maximum's do not. Other ops keep strict
/// semantics. For reformc's own pipeline only.
fn reassociate_combine(body: &mut [String], y: &str, out: &str) {
    let def = format!("{BODY_IND}{y} = ");
    let Some(line) = body.iter_mut().rev().find(|l| l.starts_with(&def)) else {
        return;
    };
    let rhs = &line[def.len()..];
    let combines = ["arith.addf ", "arith.maximumf "]
        .iter()
        .any(|op| rhs.starts_with(op));
    let operands = rhs.split(" : ").next().unwrap_or("");
    let reads_out = operands.split([' ', ',']).any(|w| w == out);
    if combines && reads_out && !rhs.contains("fastmath") {
        if let Some(colon) = line.rfind(" : ") {
            line.insert_str(colon, " fastmath<reassoc>");
        }
    }
}

/// A string as an MLIR string literal.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `iterator_types` of a `linalg.generic` that reduces `axes` of a
/// rank-`rank` operand: "reduction" on those axes, "parallel" elsewhere.
fn reduction_iterators(rank: usize, axes: &[usize]) -> Vec<&'static str> {
    (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                "reduction"
            } else {
                "parallel"
            }
        })
        .collect()
}
