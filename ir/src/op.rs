//! Op kinds, their schemas (operands, attributes, regions) and the `Op` value.

use crate::activation::Activation;
use crate::attr::{Attr, Attrs};
use crate::reduction::Reduction;
use std::fmt;

macro_rules! op_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $level:ident, $summary:literal; )*) => {
        /// Every op reformc knows, at both levels of the IR.
        ///
        /// ```
        /// use reformc_ir::OpKind;
        /// assert_eq!(OpKind::from_name("lsh_attention"), Some(OpKind::LshAttention));
        /// assert_eq!(OpKind::LshAttention.name(), "lsh_attention");
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $($(#[$doc])* $variant),* }

        impl OpKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),*];

            /// The keyword of the text format.
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$variant => $name),* }
            }

            /// One line on what the op computes.
            pub fn summary(self) -> &'static str {
                match self { $(OpKind::$variant => $summary),* }
            }

            /// Whether this is a model-level op (lowered by passes) or a tensor op.
            pub fn level(self) -> OpLevel {
                match self { $(OpKind::$variant => OpLevel::$level),* }
            }

            /// Looks a kind up by its keyword.
            pub fn from_name(name: &str) -> Option<OpKind> {
                match name { $($name => Some(OpKind::$variant),)* _ => None }
            }
        }
    };
}

/// The two levels of ops that share one graph (DESIGN.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpLevel {
    /// Graph inputs, weights, constants and random streams.
    Source,
    /// Model ops: fused, semantically rich, lowered where a backend lacks a kernel.
    Model,
    /// Tensor ops: the primitive vocabulary every backend implements.
    Tensor,
}

op_kinds! {
    /// A region argument: the value the region's owner binds on entry (a half of
    /// `reversible_block`'s input, one chunk of `seq_chunk`'s operand). It takes no
    /// operands and appears only in its region's header.
    Arg => "arg", Source, "a region argument (printed in the region header, never as an op)";
    /// A runtime input of the declared type, bound by its `name` attribute when
    /// the graph runs.
    Input => "input", Source, "a runtime input bound by name";
    /// A parameter tensor of the declared type, bound by its `name` attribute to
    /// the safetensors entry of that name.
    Weight => "weight", Source, "a parameter tensor bound by name to a safetensors entry";
    /// A rank-0 tensor of the result dtype holding the number in its `value`
    /// attribute (an integer or a float literal).
    Constant => "constant", Source, "a scalar constant";
    /// Standard-normal N(0,1) samples filling the declared float type (of
    /// constant shape). Each sample is a pure function of the `i64[]` seed operand,
    /// the `stream` attribute and its row-major index (Philox4x32-10), so a
    /// recomputation replays the same numbers.
    RandomNormal => "random_normal", Source, "N(0,1) samples from a counter-based generator keyed by (seed operand, stream)";
    /// `dropout_mask(seed, like) {p, stream}`: a float tensor of `like`'s type
    /// holding `1/(1-p)` where a Philox4x32-10 uniform keyed by (the `i64[]`
    /// seed, `stream`, row-major index) is `>= p`, else 0 (all 0 when
    /// `p = 1`). Only `like`'s shape is read, so a recomputation (the
    /// reversible backward) replays the forward's mask bit for bit.
    DropoutMask => "dropout_mask", Tensor, "dropout keep-mask scaled by 1/(1-p), keyed by (seed operand, stream, index)";
    /// `embedding(ids, table)`: the rows of the float `table` `[V,D]` selected by
    /// the integer `ids` of any shape, giving `ids.shape + [D]` (torch
    /// `F.embedding`).
    Embedding => "embedding", Model, "rows of a table selected by integer ids";
    /// `axial_pos_embedding(pos, w0, w1)`: for integer positions `pos` `[N]`
    /// and weights `w0` `[n0,1,d0]`, `w1` `[1,n1,d1]`, the `[N,d0+d1]` rows
    /// `concat(w0[p / n1, 0], w1[0, p % n1])` (HF Reformer's axial position
    /// embeddings).
    AxialPosEmbedding => "axial_pos_embedding", Model, "axial position embedding: concat(w0[p / n1], w1[p % n1])";
    /// `layer_norm(x, weight, bias) {eps}`: normalises each row of `x` over its
    /// last axis to zero mean and unit biased variance (`eps` added to the
    /// variance), then multiplies by `weight` and adds `bias`, both of the last
    /// axis' length (torch `F.layer_norm`).
    LayerNorm => "layer_norm", Model, "layer normalisation over the last axis with weight and bias";
    /// `linear(x, w[, b]) {activation?}`: `x @ w^T (+ b)` for `x` `[...,in]`,
    /// `w` `[out,in]` and `b` `[out]`, giving `[...,out]`, followed by the named
    /// [`crate::Activation`] if given (torch `nn.Linear`).
    Linear => "linear", Model, "x * w^T (+ b), optionally followed by an activation";
    /// `feed_forward(x, ln_w, ln_b, w1, b1, w2, b2) {eps, activation?, chunk}`:
    /// the Reformer feed-forward `linear(act(linear(layer_norm(x, ln_w, ln_b),
    /// w1, b1)), w2, b2)` on `x` `[..., D]` with `w1` `[F, D]`, `b1` `[F]`, `w2`
    /// `[D, F]` and `b2` `[D]`, giving `x`'s type. Row by row: `chunk` is the
    /// sequence chunk it came from (`seq_chunk`), which its derivative keeps, so
    /// that `[rows, F]` values never exist whole (`lower-model` keeps it in a
    /// training step for [`OpKind::FeedForwardGrad`]).
    FeedForward => "feed_forward", Model, "layer norm, linear + activation, linear: a Reformer feed-forward kept whole for its chunked derivative";
    /// `attention(q, k, v[, mask]) {heads, scale, causal?, key_norm?, self_mask?,
    /// kv_chunk?}`: multi-head `softmax(q k^T * scale) v` over `[B,L,H*d]` tensors,
    /// giving `[B,Lq,H*dv]`. `key_norm` length-normalises the keys (shared-QK
    /// Reformer), `causal` masks later keys, `self_mask` a query's own position and
    /// the `[B,Lk]` mask (nonzero = keep) padding keys; `kv_chunk` asks for the same
    /// result computed as a streaming softmax over chunks of that many keys.
    Attention => "attention", Model, "full multi-head softmax attention over [B,L,H*d] tensors";
    /// `local_attention(q, k, v[, mask]) {heads, scale, chunk, before, after,
    /// causal?}`: multi-head attention in which the queries of each block of `chunk`
    /// positions see only the keys of their own block and of the `before` preceding
    /// and `after` following blocks, wrapping around (HF Reformer's local
    /// self-attention); queries and keys have the same length.
    LocalAttention => "local_attention", Model, "chunked local multi-head attention with neighbouring chunks";
    /// `lsh_hash(qk, rotations[, mask]) {heads, n_hashes, buckets}`: angular LSH
    /// bucket ids `i64[B,H,r,L]` of the shared query/keys `[B,L,H*d]`, `r =
    /// n_hashes`. Each head's vectors are multiplied by `rotations`
    /// `[H,d,r,sum(buckets)/2]`; each (even) factor `f` of `buckets` takes
    /// `argmax(concat(y, -y))` of its `f/2` rotated coordinates as one digit of the
    /// bucket. Round `i` adds `i * n` (`n` the number of buckets, plus one padding
    /// bucket for masked positions when the mask has a zero).
    LshHash => "lsh_hash", Model, "angular LSH bucket ids with round offsets, [B,H,r,L]";
    /// `lsh_attention(qk, v, buckets[, mask]) {heads, chunk, before, after,
    /// causal?}`: Reformer LSH self-attention with shared query/keys. Per batch
    /// and head, the positions of all rounds are sorted by bucket id, split into
    /// chunks of `chunk` that attend to themselves and to `before`/`after`
    /// neighbouring chunks (keys length-normalised, scale `1/sqrt(d)`, a query's own
    /// position masked), unsorted, and the rounds combined with softmax weights of
    /// their log-sum-exps. The result has `qk`'s shape.
    LshAttention => "lsh_attention", Model, "Reformer LSH attention given bucket ids (shared QK)";
    /// `reversible_block(x)` with regions `f` and `g`: splits `x` into halves
    /// `x1`, `x2` of its even last axis and returns `concat(y1, y2)` with
    /// `y1 = x1 + f(x2)` and `y2 = x2 + g(y1)` (RevNet); each region maps a half to
    /// a half.
    ReversibleBlock => "reversible_block", Model, "reversible residual pair: y1 = x1 + f(x2), y2 = x2 + g(y1) on halves of the last axis";
    /// `seq_chunk(x) {axis, size}` with region `body`: runs the body on
    /// consecutive slices of `size` entries of `x` along `axis` (the last may be
    /// shorter) and concatenates the results along `axis`. The body's argument
    /// carries a fresh symbol for the chunk length.
    SeqChunk => "seq_chunk", Model, "applies its body to consecutive chunks of `size` along `axis` (the last may be shorter) and concatenates the results";
    /// `pad_to_multiple(x) {axis, multiple, min_len, value}`: when the `axis`
    /// length is above `min_len` and not a multiple of `multiple`, appends entries
    /// equal to `value` up to the next multiple (HF Reformer's eval padding),
    /// otherwise returns `x`; the result type is declared.
    PadToMultiple => "pad_to_multiple", Tensor, "pads an axis up to a multiple with a fill value (HF eval padding rule)";
    /// `truncate(x, ref) {axis}`: the first `n` entries of `x` along `axis`, `n`
    /// being `ref`'s length on that axis (`x[..., :n, ...]`); it undoes
    /// `pad_to_multiple`.
    Truncate => "truncate", Tensor, "keeps the first n entries of an axis, n taken from a reference operand";
    /// `iota(ref) {axis}`: the `i64` vector `0, 1, .., n-1`, `n` being the length of
    /// `ref`'s `axis` (torch `arange`).
    Iota => "iota", Tensor, "0, 1, .., n-1 with n the reference operand's axis length";
    /// `index(x) {axis, index}`: the entries of `x` at position `index` of `axis`,
    /// that axis removed (numpy `x.take(index, axis)`).
    Index => "index", Tensor, "selects one position of an axis, dropping it";
    /// `slice(x) {axis, start, end}`: the entries `start..end` of `axis`
    /// (`x[..., start:end, ...]`), with constant bounds.
    Slice => "slice", Tensor, "a constant range [start, end) of an axis";
    /// Elementwise `a + b` of two operands of one dtype, with numpy broadcasting.
    Add => "add", Tensor, "elementwise a + b with broadcasting";
    /// Elementwise `a - b` of two operands of one dtype, with numpy broadcasting.
    Sub => "sub", Tensor, "elementwise a - b with broadcasting";
    /// Elementwise `a * b` of two operands of one dtype, with numpy broadcasting.
    Mul => "mul", Tensor, "elementwise a * b with broadcasting";
    /// Elementwise `a / b` of two operands of one dtype, with numpy broadcasting;
    /// integer division truncates toward zero.
    Div => "div", Tensor, "elementwise a / b with broadcasting";
    /// Elementwise maximum of two operands of one dtype, with numpy broadcasting
    /// (`np.maximum`).
    Max => "max", Tensor, "elementwise maximum with broadcasting";
    /// Elementwise minimum of two operands of one dtype, with numpy broadcasting
    /// (`np.minimum`).
    Min => "min", Tensor, "elementwise minimum with broadcasting";
    /// Elementwise `a < b` of two operands of one dtype, broadcast, giving `bool`.
    Lt => "lt", Tensor, "elementwise a < b, bool result";
    /// Elementwise `a == b` of two operands of one dtype, broadcast, giving `bool`.
    Eq => "eq", Tensor, "elementwise a == b, bool result";
    /// Elementwise negation `-x`, keeping the dtype.
    Neg => "neg", Tensor, "elementwise -x";
    /// Elementwise `e^x` of a float tensor.
    Exp => "exp", Tensor, "elementwise e^x";
    /// Elementwise natural logarithm `ln(x)` of a float tensor.
    Log => "log", Tensor, "elementwise natural logarithm";
    /// Elementwise square root of a float tensor.
    Sqrt => "sqrt", Tensor, "elementwise square root";
    /// Elementwise reciprocal square root `1/sqrt(x)` of a float tensor.
    Rsqrt => "rsqrt", Tensor, "elementwise 1/sqrt(x)";
    /// Elementwise hyperbolic tangent of a float tensor.
    Tanh => "tanh", Tensor, "elementwise tanh";
    /// `act(x) {fn}`: the [`crate::Activation`] named `fn` applied
    /// elementwise to a float tensor: `gelu` is the exact erf form, `gelu_new` and
    /// `gelu_fast` its tanh approximations, `silu` is `x * sigmoid(x)`.
    Act => "act", Tensor, "an activation function by name (relu, gelu, gelu_new, silu, tanh, sigmoid)";
    /// Converts each element to the declared result dtype, keeping the shape
    /// (numpy `astype`: floats to integers truncate toward zero, nonzero becomes
    /// `true`).
    Cast => "cast", Tensor, "converts to the result dtype";
    /// Batched matrix product `a @ b` of equal-rank (at least 2) operands
    /// `[...,m,k]` and `[...,k,n]`, the batch dims broadcast (numpy `matmul`).
    Matmul => "matmul", Tensor, "batched matrix product [...,m,k] x [...,k,n]";
    /// `reduce(x) {kind, axes, keepdim?}`: `sum`, `max`, `mean` or `logsumexp` of
    /// a float tensor over `axes`, which are removed, or kept with length 1 under
    /// `keepdim` (torch `x.sum(axes, keepdim)` and friends).
    Reduce => "reduce", Tensor, "sum, max, mean or logsumexp over axes";
    /// `softmax(x) {axis}`: `exp(x - max) / sum(exp(x - max))` along `axis` of a
    /// float tensor (torch `softmax(x, dim=axis)`).
    Softmax => "softmax", Tensor, "softmax along an axis";
    /// `gather(x, idx) {axis}`: `out[i] = x[i with i[axis] replaced by idx[i]]`,
    /// for integer `idx` of `x`'s rank matching `x` on every other axis; the
    /// result has `idx`'s shape (numpy `take_along_axis`, torch `gather`).
    Gather => "gather", Tensor, "take_along_axis: out[..i..] = x[..idx[..i..]..]; an index of lower rank takes x's trailing axes whole";
    /// `argmax(x) {axis}`: the `i64` index of the first maximum along `axis`, which
    /// is removed (numpy `argmax`).
    Argmax => "argmax", Tensor, "index of the first maximum along an axis, axis removed";
    /// `argsort(x) {axis}`: the `i64` permutation that sorts `x` ascending along
    /// `axis`, equal elements keeping their order (numpy `argsort(kind="stable")`).
    Argsort => "argsort", Tensor, "stable ascending sort permutation along an axis";
    /// `select(cond, a, b)`: `a` where the `bool` `cond` is true and `b` elsewhere,
    /// the three broadcast together (numpy `where`).
    Select => "select", Tensor, "cond ? a : b with broadcasting";
    /// The same elements in row-major order with the declared shape, keeping the
    /// dtype and element count (numpy `reshape`).
    Reshape => "reshape", Tensor, "same elements, the result type's shape";
    /// `transpose(x) {perm}`: result axis `i` is axis `perm[i]` of `x` (numpy
    /// `transpose(x, perm)`).
    Transpose => "transpose", Tensor, "permutes axes";
    /// `concat(x0, x1, ..) {axis}`: joins one or more operands of one dtype that
    /// agree on every other axis along `axis` (numpy `concatenate`).
    Concat => "concat", Tensor, "joins operands along an axis";
    /// `broadcast(x, ref)`: `x` repeated to `ref`'s shape by numpy broadcasting
    /// (axes aligned on the right; each axis of `x` has length 1 or `ref`'s
    /// length there), keeping `x`'s dtype; only `ref`'s shape is read (torch
    /// `x.expand_as(ref)`, materialised). The backward of a reduction.
    Broadcast => "broadcast", Tensor, "numpy-broadcasts x to the shape of a reference operand";
    /// `scatter_add(ref, idx, src) {axis}`: zeros of `ref`'s shape and `src`'s
    /// float dtype, then for every position `i` of `src` in row-major order
    /// `out[i with i[axis] replaced by idx[i]] += src[i]`; `idx` is an integer
    /// tensor of `src`'s shape and `src` matches `ref` on every axis but `axis`
    /// (torch `zeros_like(ref).scatter_add_(axis, idx, src)`). The transpose of
    /// `gather`; the sequential order makes the sums deterministic.
    ScatterAdd => "scatter_add", Tensor, "transpose of gather: zeros of ref's shape, out[..idx[i]..] += src[i]";
    /// `act_grad(x, dy) {fn}`: `dy * act'(x)` elementwise for the
    /// [`crate::Activation`] named `fn` (the derivative PyTorch's autograd
    /// takes: `relu'(0) = 0`, `gelu` of the erf form, `gelu_new`/`gelu_fast` of
    /// their tanh formulas); `dy` has `x`'s type.
    ActGrad => "act_grad", Tensor, "dy * act'(x) for an activation by name";
    /// `lm_loss(h, w, labels) {chunk}`: the LM head and the cross-entropy
    /// fused, `sum over rows r with labels[r] != -100 of logsumexp(z_r) -
    /// z_r[labels[r]]` where `z_r = w @ h_r` (`h` `[.., D]`, `w` `[V, D]`,
    /// `labels` integer of `h`'s shape without its last axis), computed
    /// `chunk` rows at a time so that the `[rows, V]` logits never exist
    /// whole. A label outside `[0, V)` other than -100 is an error.
    LmLoss => "lm_loss", Tensor, "LM head + cross-entropy summed over labelled rows, chunked over rows";
    /// `lm_loss_grad(h, w, labels, dy) {wrt, chunk}`: `dy` (a scalar) times
    /// the gradient of [`OpKind::LmLoss`] with respect to `h` (`wrt="h"`,
    /// `h`'s type) or `w` (`wrt="w"`, `w`'s type), recomputing the logits
    /// `chunk` rows at a time.
    LmLossGrad => "lm_loss_grad", Tensor, "gradient of lm_loss with respect to h or w, chunked over rows";
    /// `layer_norm_grad(x, weight, dy) {eps, wrt}`: the gradient of
    /// `sum(dy * layer_norm(x, weight, bias))` with respect to `x`
    /// (`wrt="x"`, `x`'s type: `r (g - mean(g) - x̂ mean(g x̂))` per row with
    /// `g = dy weight`, `x̂` the normalised row and `r` its inverse standard
    /// deviation) or `weight` (`wrt="w"`, `[D]`: `sum over rows of dy x̂`),
    /// recomputing each row's statistics; the bias does not enter either.
    LayerNormGrad => "layer_norm_grad", Tensor, "gradient of layer_norm with respect to x or its weight, one pass over the rows";
    /// `feed_forward_grad(x, ln_w, ln_b, w1, b1, w2, b2, dy) {eps, activation?,
    /// chunk, wrt}`: the gradient of `sum(dy * feed_forward(x, ...))` (same
    /// attributes) with respect to the operand named by `wrt` (`x`, `ln_w`,
    /// `ln_b`, `w1`, `b1`, `w2` or `b2`), of that operand's type. Computed on
    /// blocks of at least `chunk` rows: each block's hidden values are
    /// recomputed and its weight gradients added to the sums in row order.
    /// Consecutive `feed_forward_grad`s with the same operands and attributes
    /// but `wrt` are one kernel call in generated code.
    FeedForwardGrad => "feed_forward_grad", Tensor, "gradient of feed_forward with respect to x or one of its weights, chunked over rows";
    /// `lsh_attention_grad(qk, v, buckets, y, dy[, mask]) {heads, chunk,
    /// before, after, causal?}`: the gradient of `sum(dy * y)` where `y =
    /// lsh_attention(qk, v, buckets[, mask])` with the same attributes, with
    /// respect to `qk` and `v`, stacked as `[2, ..qk's shape]` (`[0]` is
    /// `d qk`, `[1]` is `d v`). The buckets are constants (no gradient flows
    /// through hashing); masked logits pass no gradient (masks replace them).
    LshAttentionGrad => "lsh_attention_grad", Tensor, "gradient of lsh_attention with respect to qk and v, stacked, recomputing the attention chunk by chunk";
    /// `local_attention_grad(q, k, v, y, dy[, mask]) {heads, scale, chunk,
    /// before, after, causal?}`: the gradient of `sum(dy * y)` where `y =
    /// local_attention(q, k, v[, mask])` with the same attributes (`q`, `k`
    /// and `v` of one type), with respect to `q`, `k` and `v`, stacked as
    /// `[3, ..q's shape]`; masked logits pass no gradient.
    LocalAttentionGrad => "local_attention_grad", Tensor, "gradient of local_attention with respect to q, k and v, stacked, recomputing the attention chunk by chunk";
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type an attribute must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    /// A flag: present ([`Attr::Unit`]) or absent.
    Unit,
    /// An [`Attr::Int`], at least [`AttrSpec::min`].
    Int,
    /// An [`Attr::Float`] (an integer literal is rejected).
    Float,
    /// An [`Attr::Str`].
    Str,
    /// An [`Attr::Ints`] whose every entry is at least [`AttrSpec::min`].
    Ints,
    /// A float or an integer (for `constant`).
    Number,
}

/// One attribute an op accepts.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    /// The attribute's key in [`Op::attrs`].
    pub name: &'static str,
    /// The kind of value it must hold.
    pub ty: AttrType,
    /// Whether the op is invalid without it (otherwise it may be omitted).
    pub required: bool,
    /// Smallest allowed value of an `Int` (or of every entry of `Ints`).
    pub min: i64,
}

const fn req(name: &'static str, ty: AttrType, min: i64) -> AttrSpec {
    AttrSpec {
        name,
        ty,
        required: true,
        min,
    }
}

const fn opt(name: &'static str, ty: AttrType, min: i64) -> AttrSpec {
    AttrSpec {
        name,
        ty,
        required: false,
        min,
    }
}

const ANY: i64 = i64::MIN;

/// Operands, attributes and regions an op kind takes.
#[derive(Clone, Copy, Debug)]
pub struct OpSchema {
    /// Fewest operands the op accepts.
    pub min_operands: usize,
    /// Most operands the op accepts; `None` for variadic ops.
    pub max_operands: Option<usize>,
    /// Every attribute the op accepts; any other attribute is an error.
    pub attrs: &'static [AttrSpec],
    /// Names of the regions, in order.
    pub regions: &'static [&'static str],
}

const fn schema(min: usize, max: Option<usize>, attrs: &'static [AttrSpec]) -> OpSchema {
    OpSchema {
        min_operands: min,
        max_operands: max,
        attrs,
        regions: &[],
    }
}

use AttrType as T;

const ATTENTION_COMMON: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("scale", T::Float, ANY),
    opt("causal", T::Unit, ANY),
    opt("key_norm", T::Unit, ANY),
    opt("self_mask", T::Unit, ANY),
    // Chunked-exact attention: a streaming (online) softmax over key chunks of
    // this many keys; O(L) memory, the same result as the materialised softmax.
    opt("kv_chunk", T::Int, 1),
];

const LOCAL_ATTENTION: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("scale", T::Float, ANY),
    req("chunk", T::Int, 1),
    req("before", T::Int, 0),
    req("after", T::Int, 0),
    opt("causal", T::Unit, ANY),
];

const FEED_FORWARD: &[AttrSpec] = &[
    req("eps", T::Float, ANY),
    opt("activation", T::Str, ANY),
    req("chunk", T::Int, 1),
];

const FEED_FORWARD_GRAD: &[AttrSpec] = &[
    req("eps", T::Float, ANY),
    opt("activation", T::Str, ANY),
    req("chunk", T::Int, 1),
    req("wrt", T::Str, ANY),
];

const LSH_ATTENTION: &[AttrSpec] = &[
    req("heads", T::Int, 1),
    req("chunk", T::Int, 1),
    req("before", T::Int, 0),
    req("after", T::Int, 0),
    opt("causal", T::Unit, ANY),
];

impl OpKind {
    /// The schema the verifier and the parser check against.
    pub fn schema(self) -> OpSchema {
        use OpKind::*;
        match self {
            Arg => schema(0, Some(0), &[]),
            Input | Weight => schema(0, Some(0), const { &[req("name", T::Str, ANY)] }),
            Constant => schema(0, Some(0), const { &[req("value", T::Number, ANY)] }),
            RandomNormal => schema(1, Some(1), const { &[req("stream", T::Int, 0)] }),
            DropoutMask => schema(
                2,
                Some(2),
                const { &[req("p", T::Float, ANY), req("stream", T::Int, 0)] },
            ),
            Embedding => schema(2, Some(2), &[]),
            AxialPosEmbedding => schema(3, Some(3), &[]),
            LayerNorm => schema(3, Some(3), const { &[req("eps", T::Float, ANY)] }),
            Linear => schema(2, Some(3), const { &[opt("activation", T::Str, ANY)] }),
            Attention => schema(3, Some(4), ATTENTION_COMMON),
            LocalAttention => schema(3, Some(4), LOCAL_ATTENTION),
            LshHash => schema(
                2,
                Some(3),
                const {
                    &[
                        req("heads", T::Int, 1),
                        req("n_hashes", T::Int, 1),
                        req("buckets", T::Ints, 2),
                    ]
                },
            ),
            LshAttention => schema(3, Some(4), LSH_ATTENTION),
            ReversibleBlock => OpSchema {
                min_operands: 1,
                max_operands: Some(1),
                attrs: &[],
                regions: &["f", "g"],
            },
            // One operand; the body may capture outer values like any region.
            // The body's argument has the operand's type with the `axis` dim
            // replaced by a fresh symbol (the chunk length), see the verifier.
            SeqChunk => OpSchema {
                min_operands: 1,
                max_operands: Some(1),
                attrs: const { &[req("axis", T::Int, 0), req("size", T::Int, 1)] },
                regions: &["body"],
            },
            PadToMultiple => schema(
                1,
                Some(1),
                const {
                    &[
                        req("axis", T::Int, 0),
                        req("multiple", T::Int, 1),
                        req("min_len", T::Int, 0),
                        req("value", T::Number, ANY),
                    ]
                },
            ),
            Truncate => schema(2, Some(2), const { &[req("axis", T::Int, 0)] }),
            Iota => schema(1, Some(1), const { &[req("axis", T::Int, 0)] }),
            Index => schema(
                1,
                Some(1),
                const { &[req("axis", T::Int, 0), req("index", T::Int, 0)] },
            ),
            Slice => schema(
                1,
                Some(1),
                const {
                    &[
                        req("axis", T::Int, 0),
                        req("start", T::Int, 0),
                        req("end", T::Int, 0),
                    ]
                },
            ),
            Add | Sub | Mul | Div | Max | Min | Lt | Eq => schema(2, Some(2), &[]),
            Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Cast => schema(1, Some(1), &[]),
            Act => schema(1, Some(1), const { &[req("fn", T::Str, ANY)] }),
            Matmul => schema(2, Some(2), &[]),
            Reduce => schema(
                1,
                Some(1),
                const {
                    &[
                        req("kind", T::Str, ANY),
                        req("axes", T::Ints, 0),
                        opt("keepdim", T::Unit, ANY),
                    ]
                },
            ),
            Softmax | Argmax | Argsort => schema(1, Some(1), const { &[req("axis", T::Int, 0)] }),
            Gather => schema(2, Some(2), const { &[req("axis", T::Int, 0)] }),
            Select => schema(3, Some(3), &[]),
            Reshape => schema(1, Some(1), &[]),
            Transpose => schema(1, Some(1), const { &[req("perm", T::Ints, 0)] }),
            Concat => schema(1, None, const { &[req("axis", T::Int, 0)] }),
            Broadcast => schema(2, Some(2), &[]),
            ScatterAdd => schema(3, Some(3), const { &[req("axis", T::Int, 0)] }),
            ActGrad => schema(2, Some(2), const { &[req("fn", T::Str, ANY)] }),
            LmLoss => schema(3, Some(3), const { &[req("chunk", T::Int, 1)] }),
            LmLossGrad => schema(
                4,
                Some(4),
                const { &[req("wrt", T::Str, ANY), req("chunk", T::Int, 1)] },
            ),
            LshAttentionGrad => schema(5, Some(6), LSH_ATTENTION),
            LocalAttentionGrad => schema(5, Some(6), LOCAL_ATTENTION),
            LayerNormGrad => schema(
                3,
                Some(3),
                const { &[req("eps", T::Float, ANY), req("wrt", T::Str, ANY)] },
            ),
            FeedForward => schema(7, Some(7), FEED_FORWARD),
            FeedForwardGrad => schema(8, Some(8), FEED_FORWARD_GRAD),
        }
    }
}

/// An op: its kind and attributes.
///
/// ```
/// use reformc_ir::{Attr, Op, OpKind};
/// let op = Op::new(OpKind::LayerNorm).with("eps", Attr::Float(1e-12));
/// assert_eq!(op.float("eps"), Some(1e-12));
/// assert!(!op.flag("causal"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// Which op this is.
    pub kind: OpKind,
    /// Its attributes by name, checked against [`OpKind::schema`] by the verifier.
    pub attrs: Attrs,
}

impl Op {
    /// An op without attributes.
    pub fn new(kind: OpKind) -> Op {
        Op {
            kind,
            attrs: Attrs::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn with(mut self, name: &str, value: Attr) -> Op {
        self.attrs.insert(name.to_string(), value);
        self
    }

    /// Adds the flag `name` when `on` is true.
    pub fn with_flag(self, name: &str, on: bool) -> Op {
        if on {
            self.with(name, Attr::Unit)
        } else {
            self
        }
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name) {
            Some(Attr::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// An integer attribute as a usize (negative values read as `None`).
    pub fn usize(&self, name: &str) -> Option<usize> {
        self.int(name).and_then(|v| usize::try_from(v).ok())
    }

    /// A float attribute (integers are widened).
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.attrs.get(name) {
            Some(Attr::Float(v)) => Some(*v),
            Some(Attr::Int(v)) => Some(*v as f64),
            _ => None,
        }
    }

    /// A string attribute.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr::Str(v)) => Some(v),
            _ => None,
        }
    }

    /// An integer-list attribute.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether a flag is present.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.attrs.get(name), Some(Attr::Unit))
    }

    /// The activation of a `linear` (its `activation` attribute, the
    /// identity when absent) or an `act` or `act_grad` (its `fn`); the
    /// identity for other ops. The text keeps names; this is where they become the enum.
    ///
    /// ```
    /// use reformc_ir::{Activation, Attr, Op, OpKind};
    /// let op = Op::new(OpKind::Act).with("fn", Attr::Str("silu".into()));
    /// assert_eq!(op.activation(), Ok(Activation::Silu));
    /// assert_eq!(Op::new(OpKind::Linear).activation(), Ok(Activation::None));
    /// let mish = Op::new(OpKind::Linear).with("activation", Attr::Str("mish".into()));
    /// assert_eq!(mish.activation(), Ok(Activation::Mish));
    /// let bad = Op::new(OpKind::Linear).with("activation", Attr::Str("relu2".into()));
    /// assert!(bad.activation().unwrap_err().contains("relu2"));
    /// ```
    pub fn activation(&self) -> Result<Activation, String> {
        let key = match self.kind {
            OpKind::Linear | OpKind::FeedForward | OpKind::FeedForwardGrad => "activation",
            OpKind::Act | OpKind::ActGrad => "fn",
            _ => return Ok(Activation::None),
        };
        match self.attrs.get(key) {
            None => Ok(Activation::None),
            Some(Attr::Str(name)) => Activation::from_name(name).ok_or_else(|| {
                format!(
                    "unknown activation `{name}` (known: {})",
                    Activation::names()
                )
            }),
            Some(other) => Err(format!("`{key}` must be a string, found {other}")),
        }
    }

    /// The reduction of a `reduce` (its `kind` attribute). The text keeps
    /// names; this is where they become the enum.
    ///
    /// ```
    /// use reformc_ir::{Attr, Op, OpKind, Reduction};
    /// let op = Op::new(OpKind::Reduce).with("kind", Attr::Str("mean".into()));
    /// assert_eq!(op.reduction(), Ok(Reduction::Mean));
    /// let bad = Op::new(OpKind::Reduce).with("kind", Attr::Str("prod".into()));
    /// assert!(bad.reduction().unwrap_err().contains("prod"));
    /// ```
    pub fn reduction(&self) -> Result<Reduction, String> {
        match self.attrs.get("kind") {
            Some(Attr::Str(name)) => Reduction::from_name(name).ok_or_else(|| {
                format!("unknown reduction `{name}` (known: {})", Reduction::names())
            }),
            None => Err(format!(
                "`{}` needs a `kind` ({})",
                self.kind,
                Reduction::names()
            )),
            Some(other) => Err(format!("`kind` must be a string, found {other}")),
        }
    }
}

impl fmt::Display for Op {
    /// `name {attrs}` as the text format prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if !self.attrs.is_empty() {
            f.write_str(" {")?;
            for (i, (k, v)) in self.attrs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match v {
                    Attr::Unit => f.write_str(k)?,
                    v => write!(f, "{k}={v}")?,
                }
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}
