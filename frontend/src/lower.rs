//! Lowering a [`ModelSpec`] to IR: model ops, weights as named graph inputs.
//!
//! The graph reproduces Hugging Face's eval forward: pad to the chunk multiple
//! (REFORMER.md §6.3), embed, duplicate into two halves, one
//! `reversible_block` per layer, final LayerNorm, LM head, cut back to `L`.

use crate::spec::{
    Activation, Architecture, AttentionKind, BucketSpec, HeadSpec, ModelSpec, PositionSpec,
};
use reformc_ir::{Attr, DType, Dim, Graph, Op, OpKind, TensorType, ValueId};

/// Where LSH layers get their hashing decisions from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LshSource {
    /// `random_normal` rotations keyed by the `seed` input and the layer's index.
    Seeded,
    /// Rotations from the `lsh_rotations` input `[n_lsh, H, d, r, S/2]` (HF's layout).
    Rotations,
    /// Recorded bucket ids from the `lsh_buckets` input `[n_lsh, B, H, r, P]`.
    Buckets,
}

/// Choices made at lowering time.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// Float dtype of activations and weights (weights are converted at bind time).
    pub dtype: DType,
    /// Where LSH layers get their hashing decisions from, and so which extra
    /// graph input (`seed`, `lsh_rotations` or `lsh_buckets`) the graph has;
    /// default [`LshSource::Seeded`].
    pub lsh_source: LshSource,
    /// Padded sequence length used to resolve `num_buckets: null`.
    pub seq_len: Option<u64>,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            dtype: DType::F32,
            lsh_source: LshSource::Seeded,
            seq_len: None,
        }
    }
}

/// The lowered model: its graph and the bucket factors its LSH layers use.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The verified graph: inputs `input_ids` and `attention_mask` `[B, L]`
    /// (plus the hashing input of [`LowerOptions::lsh_source`] when the model
    /// has LSH layers), one `weight` op per tensor, and the output `logits`
    /// (with an LM head: `[B, L, V]`; a classification head: `[B, num_labels]`;
    /// a question-answering head: `[B, L, 2]`, start and end) or
    /// `last_hidden_state`.
    pub graph: Graph,
    /// Resolved LSH bucket factors (empty when the model has no LSH layer).
    pub bucket_factors: Vec<u64>,
}

/// Resolves `num_buckets` exactly as HF's `_set_num_buckets` does for padded
/// length `len` (the one statement of the rule lives in `reformc_ir::hf_rules`).
///
/// ```
/// use reformc_frontend::lower::auto_buckets;
/// assert_eq!(auto_buckets(128, 8, 4096), vec![32]);
/// assert_eq!(auto_buckets(65536, 64, 65536), vec![32, 64]);
/// ```
pub use reformc_ir::hf_rules::auto_buckets;

/// Lowers `spec` to a verified graph.
pub fn lower(spec: &ModelSpec, opts: &LowerOptions) -> Result<Lowered, String> {
    let factors = match (&spec.lsh.buckets, spec.num_lsh_layers()) {
        (_, 0) => vec![],
        (BucketSpec::Factors(f), _) => f.clone(),
        (BucketSpec::Auto, _) => match opts.seq_len {
            Some(len) => auto_buckets(spec.padded_len(len), spec.lsh.chunk, spec.max_position_embeddings),
            None => return Err("`num_buckets` is null (automatic): its value depends on the sequence length, so give one (e.g. --seq-len)".into()),
        },
    };
    let mut b = Builder {
        g: Graph::new(),
        spec,
        opts,
        dtype: opts.dtype,
        factors: factors.clone(),
        layer: None,
    };
    b.build()?;
    reformc_ir::verify(&b.g)
        .map_err(|e| format!("internal error: the lowered graph does not verify: {e}"))?;
    Ok(Lowered {
        graph: b.g,
        bucket_factors: factors,
    })
}

struct Builder<'a> {
    g: Graph,
    spec: &'a ModelSpec,
    opts: &'a LowerOptions,
    dtype: DType,
    factors: Vec<u64>,
    /// The layer being lowered: recorded as the `layer` attribute of every op
    /// (weights included) emitted for it, so that passes need not parse
    /// weight names.
    layer: Option<u64>,
}

fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

fn c(n: u64) -> Dim {
    Dim::Const(n)
}

fn int(v: u64) -> Attr {
    Attr::Int(v as i64)
}

impl Builder<'_> {
    fn ty(&self, shape: Vec<Dim>) -> TensorType {
        TensorType::new(self.dtype, shape)
    }

    fn input(&mut self, name: &str, ty: TensorType) -> ValueId {
        self.g.add(
            Op::new(OpKind::Input).with("name", Attr::Str(name.into())),
            vec![],
            ty,
        )
    }

    fn weight(&mut self, name: &str, shape: &[u64]) -> ValueId {
        let ty = self.ty(shape.iter().map(|&n| c(n)).collect());
        self.g.add_top(
            Op::new(OpKind::Weight)
                .with("name", Attr::Str(name.into()))
                .with_layer(self.layer),
            vec![],
            ty,
        )
    }

    fn body_weight(&mut self, name: &str, shape: &[u64]) -> ValueId {
        let full = format!("{}{name}", self.spec.weight_prefix);
        self.weight(&full, shape)
    }

    fn op(&mut self, op: Op, inputs: Vec<ValueId>, ty: TensorType) -> ValueId {
        self.g.add(op.with_layer(self.layer), inputs, ty)
    }

    /// [B, P, width] in the model dtype.
    fn act(&self, width: u64) -> TensorType {
        self.ty(vec![sym("B"), sym("P"), c(width)])
    }

    fn linear(
        &mut self,
        x: ValueId,
        w: ValueId,
        bias: Option<ValueId>,
        activation: Activation,
    ) -> ValueId {
        let out = self.g.ty(w).shape[0].clone();
        let mut shape = self.g.ty(x).shape.clone();
        *shape.last_mut().expect("rank >= 1") = out;
        let mut op = Op::new(OpKind::Linear);
        // The text format keeps the name; the identity has none.
        if let Some(a) = activation.name() {
            op = op.with("activation", Attr::Str(a.into()));
        }
        let mut inputs = vec![x, w];
        inputs.extend(bias);
        self.op(op, inputs, self.ty(shape))
    }

    fn layer_norm(&mut self, x: ValueId, prefix: &str, width: u64) -> ValueId {
        let w = self.body_weight(&format!("{prefix}.weight"), &[width]);
        let b = self.body_weight(&format!("{prefix}.bias"), &[width]);
        let ty = self.g.ty(x).clone();
        self.op(
            Op::new(OpKind::LayerNorm).with("eps", Attr::Float(self.spec.layer_norm_eps)),
            vec![x, w, b],
            ty,
        )
    }

    fn build(&mut self) -> Result<(), String> {
        let spec = self.spec;
        let ids = self.input(
            "input_ids",
            TensorType::new(DType::I64, vec![sym("B"), sym("L")]),
        );
        let mask = self.input(
            "attention_mask",
            TensorType::new(DType::I64, vec![sym("B"), sym("L")]),
        );
        let hashing = self.hashing_inputs();
        let (ids_p, mask_p) = self.pad(ids, mask);
        let x = self.embeddings(ids_p)?;
        let h = match spec.architecture {
            Architecture::Reversible => self.reversible_layers(x, mask_p, &hashing),
            Architecture::Residual => self.residual_layers(x, mask_p, &hashing),
        };
        let width = spec.output_width();
        let h = self.layer_norm(h, "encoder.layer_norm", width);
        match spec.head {
            HeadSpec::LmHead { bias } => {
                let w = self.weight("lm_head.decoder.weight", &[spec.vocab_size, width]);
                let bias = bias.then(|| self.weight("lm_head.bias", &[spec.vocab_size]));
                let logits = self.linear(h, w, bias, Activation::None);
                let out = self.truncate(logits, ids, spec.vocab_size);
                self.g.set_output("logits", out);
            }
            HeadSpec::None => {
                let out = self.truncate(h, ids, width);
                self.g.set_output("last_hidden_state", out);
            }
            HeadSpec::Classification { num_labels } => {
                // HF's ReformerClassificationHead: the first token (padding
                // is appended, so position 0 of P is position 0 of L), dense
                // + tanh, out_proj; its dropouts are the identity in eval.
                let d = spec.hidden_size;
                let first = self.op(
                    Op::new(OpKind::Index)
                        .with("axis", int(1))
                        .with("index", int(0)),
                    vec![h],
                    self.ty(vec![sym("B"), c(width)]),
                );
                let w1 = self.weight("classifier.dense.weight", &[d, width]);
                let b1 = self.weight("classifier.dense.bias", &[d]);
                let hidden = self.linear(first, w1, Some(b1), Activation::Tanh);
                let w2 = self.weight("classifier.out_proj.weight", &[num_labels, d]);
                let b2 = self.weight("classifier.out_proj.bias", &[num_labels]);
                let logits = self.linear(hidden, w2, Some(b2), Activation::None);
                self.g.set_output("logits", logits);
            }
            HeadSpec::QuestionAnswering => {
                // One [B, L, 2] output: HF's start_logits at [..., 0], its
                // end_logits at [..., 1] (HeadSpec::QuestionAnswering).
                let w = self.weight("qa_outputs.weight", &[2, width]);
                let b = self.weight("qa_outputs.bias", &[2]);
                let logits = self.linear(h, w, Some(b), Activation::None);
                let out = self.truncate(logits, ids, 2);
                self.g.set_output("logits", out);
            }
        }
        Ok(())
    }

    fn truncate(&mut self, x: ValueId, like: ValueId, width: u64) -> ValueId {
        let ty = self.ty(vec![sym("B"), sym("L"), c(width)]);
        self.op(
            Op::new(OpKind::Truncate).with("axis", int(1)),
            vec![x, like],
            ty,
        )
    }

    /// HF's eval padding of ids (pad token) and mask (zeros) to the chunk multiple.
    fn pad(&mut self, ids: ValueId, mask: ValueId) -> (ValueId, ValueId) {
        // Without a chunked layer nothing is padded (multiple 1): P is L.
        let (multiple, min_len) = self.spec.padding();
        let pad = |value: i64| {
            Op::new(OpKind::PadToMultiple)
                .with("axis", int(1))
                .with("multiple", int(multiple))
                .with("min_len", int(min_len))
                .with("value", Attr::Int(value))
        };
        let ty = TensorType::new(DType::I64, vec![sym("B"), sym("P")]);
        let ids_p = self.op(pad(self.spec.pad_token_id), vec![ids], ty.clone());
        let mask_p = self.op(pad(0), vec![mask], ty);
        (ids_p, mask_p)
    }

    fn embeddings(&mut self, ids: ValueId) -> Result<ValueId, String> {
        let spec = self.spec;
        let d = spec.hidden_size;
        let table = self.body_weight("embeddings.word_embeddings.weight", &[spec.vocab_size, d]);
        let words = self.op(Op::new(OpKind::Embedding), vec![ids, table], self.act(d));
        let pos = self.op(
            Op::new(OpKind::Iota).with("axis", int(1)),
            vec![ids],
            TensorType::new(DType::I64, vec![sym("P")]),
        );
        let pos_ty = self.ty(vec![sym("P"), c(d)]);
        let pe = match &spec.position {
            PositionSpec::Axial { shape, dims } => {
                let w0 = self.body_weight(
                    "embeddings.position_embeddings.weights.0",
                    &[shape[0], 1, dims[0]],
                );
                let w1 = self.body_weight(
                    "embeddings.position_embeddings.weights.1",
                    &[1, shape[1], dims[1]],
                );
                self.op(
                    Op::new(OpKind::AxialPosEmbedding),
                    vec![pos, w0, w1],
                    pos_ty,
                )
            }
            PositionSpec::Learned => {
                let t = self.body_weight(
                    "embeddings.position_embeddings.embedding.weight",
                    &[spec.max_position_embeddings, d],
                );
                self.op(Op::new(OpKind::Embedding), vec![pos, t], pos_ty)
            }
        };
        Ok(self.op(Op::new(OpKind::Add), vec![words, pe], self.act(d)))
    }

    /// Per LSH layer: the rotations value or the recorded buckets value.
    fn hashing_inputs(&mut self) -> Vec<ValueId> {
        let spec = self.spec;
        let n = spec.num_lsh_layers() as u64;
        if n == 0 {
            return vec![];
        }
        let (h, d, r) = (spec.num_heads, spec.head_dim, spec.lsh.n_hashes);
        let half = self.factors.iter().sum::<u64>() / 2;
        let rot_ty = self.ty(vec![c(h), c(d), c(r), c(half)]);
        match self.opts.lsh_source {
            LshSource::Seeded => {
                let seed = self.input("seed", TensorType::scalar(DType::I64));
                (0..n)
                    .map(|i| {
                        self.op(
                            Op::new(OpKind::RandomNormal).with("stream", int(i)),
                            vec![seed],
                            rot_ty.clone(),
                        )
                    })
                    .collect()
            }
            LshSource::Rotations => {
                let all = self.input(
                    "lsh_rotations",
                    self.ty(vec![c(n), c(h), c(d), c(r), c(half)]),
                );
                (0..n)
                    .map(|i| {
                        self.op(
                            Op::new(OpKind::Index)
                                .with("axis", int(0))
                                .with("index", int(i)),
                            vec![all],
                            rot_ty.clone(),
                        )
                    })
                    .collect()
            }
            LshSource::Buckets => {
                let all = self.input(
                    "lsh_buckets",
                    TensorType::new(DType::I64, vec![c(n), sym("B"), c(h), c(r), sym("P")]),
                );
                let ty = TensorType::new(DType::I64, vec![sym("B"), c(h), c(r), sym("P")]);
                (0..n)
                    .map(|i| {
                        self.op(
                            Op::new(OpKind::Index)
                                .with("axis", int(0))
                                .with("index", int(i)),
                            vec![all],
                            ty.clone(),
                        )
                    })
                    .collect()
            }
        }
    }

    fn reversible_layers(&mut self, x: ValueId, mask: ValueId, hashing: &[ValueId]) -> ValueId {
        let d = self.spec.hidden_size;
        let mut h = self.op(
            Op::new(OpKind::Concat).with("axis", int(2)),
            vec![x, x],
            self.act(2 * d),
        );
        let mut lsh_index = 0;
        for (i, kind) in self.spec.layers.clone().iter().enumerate() {
            self.layer = Some(i as u64);
            let args = self.g.begin_region(&[self.act(d)]);
            let attn =
                self.attention_branch(i, kind, args[0], mask, hashing.get(lsh_index).copied());
            let f = self.g.end_region(vec![attn]);
            let args = self.g.begin_region(&[self.act(d)]);
            let ff = self.feed_forward_branch(i, args[0]);
            let g = self.g.end_region(vec![ff]);
            let node = reformc_ir::Node {
                op: Op::new(OpKind::ReversibleBlock).with_layer(self.layer),
                inputs: vec![h],
                ty: self.act(2 * d),
                regions: vec![f, g],
            };
            h = self.g.add_node(node);
            if *kind == AttentionKind::Lsh {
                lsh_index += 1;
            }
        }
        self.layer = None;
        h
    }

    fn residual_layers(&mut self, mut x: ValueId, mask: ValueId, hashing: &[ValueId]) -> ValueId {
        let d = self.spec.hidden_size;
        let mut lsh_index = 0;
        for (i, kind) in self.spec.layers.clone().iter().enumerate() {
            self.layer = Some(i as u64);
            let a = self.attention_branch(i, kind, x, mask, hashing.get(lsh_index).copied());
            x = self.op(Op::new(OpKind::Add), vec![x, a], self.act(d));
            let f = self.feed_forward_branch(i, x);
            x = self.op(Op::new(OpKind::Add), vec![x, f], self.act(d));
            if *kind == AttentionKind::Lsh {
                lsh_index += 1;
            }
        }
        self.layer = None;
        x
    }

    /// LN -> projections -> attention -> output projection.
    fn attention_branch(
        &mut self,
        i: usize,
        kind: &AttentionKind,
        x: ValueId,
        mask: ValueId,
        hashing: Option<ValueId>,
    ) -> ValueId {
        let spec = self.spec;
        let (d, h, hd) = (spec.hidden_size, spec.num_heads, spec.head_dim);
        let all = h * hd;
        let p = format!("encoder.layers.{i}.attention");
        let ln = self.layer_norm(x, &format!("{p}.layer_norm"), d);
        let proj = |b: &mut Self, name: &str| {
            let w = b.body_weight(&format!("{p}.self_attention.{name}.weight"), &[all, d]);
            b.linear(ln, w, None, Activation::None)
        };
        let scale = Attr::Float(1.0 / (hd as f64).sqrt());
        let causal = spec.causal;
        let out = match kind {
            AttentionKind::Lsh => {
                let qk = proj(self, "query_key");
                let v = proj(self, "value");
                let hashing = hashing.expect("one hashing value per LSH layer");
                let buckets = match self.opts.lsh_source {
                    LshSource::Buckets => hashing,
                    _ => {
                        let op = Op::new(OpKind::LshHash)
                            .with("heads", int(h))
                            .with("n_hashes", int(spec.lsh.n_hashes))
                            .with(
                                "buckets",
                                Attr::Ints(self.factors.iter().map(|&f| f as i64).collect()),
                            );
                        let ty = TensorType::new(
                            DType::I64,
                            vec![sym("B"), c(h), c(spec.lsh.n_hashes), sym("P")],
                        );
                        self.op(op, vec![qk, hashing, mask], ty)
                    }
                };
                let op = Op::new(OpKind::LshAttention)
                    .with("heads", int(h))
                    .with("chunk", int(spec.lsh.chunk))
                    .with("before", int(spec.lsh.before))
                    .with("after", int(spec.lsh.after))
                    .with_flag("causal", causal);
                self.op(op, vec![qk, v, buckets, mask], self.act(all))
            }
            AttentionKind::Local => {
                let (q, k, v) = (proj(self, "query"), proj(self, "key"), proj(self, "value"));
                let op = Op::new(OpKind::LocalAttention)
                    .with("heads", int(h))
                    .with("scale", scale)
                    .with("chunk", int(spec.local.chunk))
                    .with("before", int(spec.local.before))
                    .with("after", int(spec.local.after))
                    .with_flag("causal", causal);
                self.op(op, vec![q, k, v, mask], self.act(all))
            }
            AttentionKind::Full { shared_qk } => {
                let (q, k, v) = if *shared_qk {
                    let qk = proj(self, "query_key");
                    (qk, qk, proj(self, "value"))
                } else {
                    (proj(self, "query"), proj(self, "key"), proj(self, "value"))
                };
                let op = Op::new(OpKind::Attention)
                    .with("heads", int(h))
                    .with("scale", scale)
                    .with_flag("causal", causal)
                    .with_flag("key_norm", *shared_qk)
                    .with_flag("self_mask", *shared_qk);
                self.op(op, vec![q, k, v, mask], self.act(all))
            }
        };
        let wo = self.body_weight(&format!("{p}.output.dense.weight"), &[d, all]);
        self.linear(out, wo, None, Activation::None)
    }

    /// LN -> Linear(D -> F) + activation -> Linear(F -> D).
    fn feed_forward_branch(&mut self, i: usize, x: ValueId) -> ValueId {
        let (d, f) = (self.spec.hidden_size, self.spec.feed_forward_size);
        let p = format!("encoder.layers.{i}.feed_forward");
        let ln = self.layer_norm(x, &format!("{p}.layer_norm"), d);
        let w1 = self.body_weight(&format!("{p}.dense.dense.weight"), &[f, d]);
        let b1 = self.body_weight(&format!("{p}.dense.dense.bias"), &[f]);
        let hdn = self.linear(ln, w1, Some(b1), self.spec.activation);
        let w2 = self.body_weight(&format!("{p}.output.dense.weight"), &[d, f]);
        let b2 = self.body_weight(&format!("{p}.output.dense.bias"), &[d]);
        self.linear(hdn, w2, Some(b2), Activation::None)
    }
}

/// The weights a graph expects: (name, shape) in body order.
pub fn expected_weights(g: &Graph) -> Vec<(String, Vec<u64>)> {
    g.weights()
        .into_iter()
        .map(|(name, v)| {
            (
                name.to_string(),
                g.ty(v)
                    .shape
                    .iter()
                    .map(|d| d.as_const().unwrap_or(0))
                    .collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests_support::tiny;

    #[test]
    fn every_layer_op_records_its_layer() {
        let spec = tiny();
        let g = lower(&spec, &LowerOptions::default()).unwrap().graph;
        let mut per_layer = vec![0usize; spec.layers.len()];
        let mut unlabelled = vec![];
        for v in g.walk() {
            let node = g.node(v);
            let layer = reformc_ir::layer_of(node);
            // Weight names are HF's; the attribute must agree with them.
            if let Some(name) = node.op.str("name") {
                let from_name = name
                    .split("layers.")
                    .nth(1)
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<u64>().ok());
                assert_eq!(layer, from_name, "{name}");
            }
            if let Some(i) = layer {
                per_layer[i as usize] += 1;
            }
            let model_op = matches!(
                node.op.kind,
                OpKind::ReversibleBlock
                    | OpKind::LshHash
                    | OpKind::LshAttention
                    | OpKind::LocalAttention
                    | OpKind::Attention
                    | OpKind::LayerNorm
                    | OpKind::Linear
            );
            if model_op && layer.is_none() {
                unlabelled.push(node.op.kind);
            }
        }
        // Only the final layer norm and the LM head belong to no layer.
        assert_eq!(unlabelled, vec![OpKind::LayerNorm, OpKind::Linear]);
        assert!(per_layer.iter().all(|n| *n > 10), "{per_layer:?}");
    }
}
