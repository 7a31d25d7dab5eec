//! `ModelSpec`: the normalised model description both input formats parse into.
//!
//! The Hugging Face `config.json` reader ([`crate::hf_config`]) and reformc's
//! own schema ([`crate::schema`]) produce a `ModelSpec`; [`crate::lower`] turns
//! it into IR. Everything here is resolved: no defaults are left to apply.

pub use reformc_ir::Activation;

/// Which residual structure the layers use.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// Reformer: the embedding is duplicated into two halves, each layer is a
    /// reversible block (attention branch f, feed-forward branch g), the halves
    /// are concatenated before a final LayerNorm of width 2D.
    Reversible,
    /// A plain pre-norm transformer: x += attn(LN(x)); x += ff(LN(x)); a final
    /// LayerNorm of width D.
    Residual,
}

/// The attention of one layer.
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionKind {
    /// Reformer LSH attention with a shared query/key projection (`query_key`).
    Lsh,
    /// Chunked local attention with separate `query`, `key`, `value`.
    Local,
    /// Full softmax attention. `shared_qk` uses one projection (`query_key`)
    /// with Reformer's key normalisation and self mask (HF's short-sequence
    /// path); otherwise `query`, `key`, `value` with 1/sqrt(d) scaling.
    Full {
        /// Whether queries and keys come from one shared `query_key`
        /// projection (schema `{"type": "full", "shared_qk": true}`);
        /// `false` gives separate `query` and `key` projections.
        shared_qk: bool,
    },
}

/// How many LSH buckets each round has.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketSpec {
    /// Resolved from the (padded) sequence length as HF does at its first forward.
    Auto,
    /// Factors (each even); their product is the bucket count.
    Factors(Vec<u64>),
}

/// LSH attention parameters (REFORMER.md §1).
#[derive(Clone, Debug, PartialEq)]
pub struct LshSpec {
    /// Length, in tokens, of the chunks the bucket-sorted sequence is cut
    /// into (HF `lsh_attn_chunk_length`, default 64).
    pub chunk: u64,
    /// How many preceding chunks each chunk also attends to (HF
    /// `lsh_num_chunks_before`, default 1).
    pub before: u64,
    /// How many following chunks each chunk also attends to (HF
    /// `lsh_num_chunks_after`, default 0).
    pub after: u64,
    /// Number of hash rounds r (HF `num_hashes`, default 1).
    pub n_hashes: u64,
    /// Buckets per hash round (HF `num_buckets`, default `null`, i.e.
    /// [`BucketSpec::Auto`]).
    pub buckets: BucketSpec,
}

/// Local attention parameters (REFORMER.md §2).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSpec {
    /// Length, in tokens, of the chunks the sequence is cut into (HF
    /// `local_attn_chunk_length`, default 64).
    pub chunk: u64,
    /// How many preceding chunks each chunk also attends to (HF
    /// `local_num_chunks_before`, default 1).
    pub before: u64,
    /// How many following chunks each chunk also attends to (HF
    /// `local_num_chunks_after`, default 0).
    pub after: u64,
}

/// Position embeddings (REFORMER.md §5).
#[derive(Clone, Debug, PartialEq)]
pub enum PositionSpec {
    /// `weights.0` `[n0, 1, d0]`, `weights.1` `[1, n1, d1]`;
    /// `PE(p) = concat(w0[p / n1], w1[p % n1])`.
    Axial {
        /// The position grid `[n0, n1]`: at most `n0 * n1` positions can be
        /// embedded (HF `axial_pos_shape`, default `[64, 64]`).
        shape: [u64; 2],
        /// The widths `[d0, d1]` of the two weight tables, which sum to
        /// `hidden_size` (HF `axial_pos_embds_dim`, default `[64, 192]`).
        dims: [u64; 2],
    },
    /// A learned table `position_embeddings.embedding.weight` `[max_position_embeddings, D]`.
    Learned,
}

/// The output head.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadSpec {
    /// `lm_head.decoder` Linear(width -> vocab); `bias` adds `lm_head.bias`
    /// (HF 5.x does not; 4.x did).
    LmHead {
        /// Whether `lm_head.bias` is added to the logits (schema
        /// `head.bias`, default `false`; always `false` from a HF config).
        bias: bool,
    },
    /// A bare model: the output is the last hidden state.
    None,
    /// HF `ReformerForSequenceClassification`'s `ReformerClassificationHead`
    /// on the first token's final hidden state (width W):
    /// `classifier.dense` Linear(W -> D) with bias, tanh,
    /// `classifier.out_proj` Linear(D -> num_labels) with bias; its dropouts
    /// are the identity in eval. The output `logits` is `[B, num_labels]`.
    Classification {
        /// The number of outputs (HF `num_labels`, which HF derives from
        /// `id2label`; default 2).
        num_labels: u64,
    },
    /// HF `ReformerForQuestionAnswering`: `qa_outputs` Linear(W -> 2) with
    /// bias at every position. The output `logits` is `[B, L, 2]`: HF's
    /// `start_logits` are `[..., 0]`, its `end_logits` `[..., 1]` (one output
    /// rather than two, so that every engine and the executable's one-output
    /// ABI carry it unchanged).
    QuestionAnswering,
}

impl HeadSpec {
    /// Whether the head is a task head (classification or question
    /// answering): no LM loss exists for it, so `grad`/`train` refuse it.
    pub fn is_task_head(&self) -> bool {
        matches!(
            self,
            HeadSpec::Classification { .. } | HeadSpec::QuestionAnswering
        )
    }

    /// What the model's output holds, for messages: "logits", "last hidden
    /// state", "classification logits", "start/end logits".
    pub fn output_description(&self) -> &'static str {
        match self {
            HeadSpec::LmHead { .. } => "logits",
            HeadSpec::None => "last hidden state",
            HeadSpec::Classification { .. } => "classification logits",
            HeadSpec::QuestionAnswering => "start/end logits",
        }
    }
}

/// Dropout probabilities of training (HF names in brackets). Inference never
/// applies dropout (eval mode); a training step applies it unless asked not to
/// (`--no-dropout`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DropoutSpec {
    /// Dropout after the embeddings, the attention output projection, the
    /// feed-forward activation and output, and the final LayerNorm
    /// (`hidden_dropout_prob`; HF's default 0.05, the schema's 0).
    pub hidden: f64,
    /// Dropout of the LSH attention probabilities
    /// (`lsh_attention_probs_dropout_prob`).
    pub lsh_attention: f64,
    /// Dropout of the local attention probabilities
    /// (`local_attention_probs_dropout_prob`).
    pub local_attention: f64,
}

impl DropoutSpec {
    /// The nonzero probabilities with their config field names, in a fixed order.
    ///
    /// ```
    /// use reformc_frontend::spec::DropoutSpec;
    /// let d = DropoutSpec { hidden: 0.1, ..Default::default() };
    /// assert_eq!(d.nonzero(), vec![("hidden_dropout_prob", 0.1)]);
    /// ```
    pub fn nonzero(&self) -> Vec<(&'static str, f64)> {
        [
            ("hidden_dropout_prob", self.hidden),
            ("lsh_attention_probs_dropout_prob", self.lsh_attention),
            ("local_attention_probs_dropout_prob", self.local_attention),
        ]
        .into_iter()
        .filter(|(_, p)| *p != 0.0)
        .collect()
    }

    /// Whether every probability is 0 (a training step is then deterministic).
    pub fn is_zero(&self) -> bool {
        self.nonzero().is_empty()
    }
}

/// A fully resolved model description.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The residual structure of the layers; always
    /// [`Architecture::Reversible`] for a Hugging Face config (schema
    /// `architecture`, default `"reversible"`).
    pub architecture: Architecture,
    /// V, the number of token ids: rows of the word embedding and width of
    /// the LM head's output (HF `vocab_size`, default 320).
    pub vocab_size: u64,
    /// D, the width of the embedding (each reversible half is D wide).
    pub hidden_size: u64,
    /// H, the number of attention heads in every layer (HF
    /// `num_attention_heads`, default 12).
    pub num_heads: u64,
    /// d, the width of one attention head; the projections are D -> H·d, and
    /// H·d need not equal D (HF `attention_head_size`, default 64).
    pub head_dim: u64,
    /// F, the inner width of each layer's feed-forward block, D -> F -> D
    /// (HF `feed_forward_size`, default 512).
    pub feed_forward_size: u64,
    /// The feed-forward activation; [`Activation::None`] is the identity
    /// (HF `hidden_act: "linear"`, schema `"linear"`).
    pub activation: Activation,
    /// The epsilon added to the variance in every LayerNorm (HF
    /// `layer_norm_eps`, default 1e-12).
    pub layer_norm_eps: f64,
    /// Causal masking in every attention (HF `is_decoder`).
    pub causal: bool,
    /// The attention of each layer, in order; the length is the number of
    /// layers (HF `attn_layers`, default `local, lsh` three times over).
    pub layers: Vec<AttentionKind>,
    /// The parameters shared by every [`AttentionKind::Lsh`] layer.
    pub lsh: LshSpec,
    /// The parameters shared by every [`AttentionKind::Local`] layer.
    pub local: LocalSpec,
    /// The position embeddings (HF `axial_pos_embds`, default axial; the
    /// schema's default is learned).
    pub position: PositionSpec,
    /// The longest (padded) sequence the model accepts, and the number of
    /// rows of a learned position table (HF `max_position_embeddings`,
    /// default 4096).
    pub max_position_embeddings: u64,
    /// The token id used to pad `input_ids` up to a multiple of the chunk
    /// length, in `0..vocab_size` (HF `pad_token_id`, default 0; a HF `null`
    /// becomes 0 with a warning).
    pub pad_token_id: i64,
    /// The output head, chosen for a HF config by `architectures[0]`.
    pub head: HeadSpec,
    /// Prefix of the body's tensor names (`reformer.` for HF models with a head, empty for a bare model).
    pub weight_prefix: String,
    /// HF `chunk_size_feed_forward` when nonzero: the feed-forward chunk
    /// length the `chunk` pass uses (`None`: no chunking asked).
    pub chunk_size_feed_forward: Option<u64>,
    /// HF `chunk_size_lm_head` when nonzero: the LM head chunk length.
    pub chunk_size_lm_head: Option<u64>,
    /// Dropout probabilities applied by training steps only.
    pub dropout: DropoutSpec,
}

impl ModelSpec {
    /// Number of LSH layers.
    pub fn num_lsh_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| **l == AttentionKind::Lsh)
            .count()
    }

    /// Chunk lengths of the chunked (LSH and local) layers, in layer order.
    pub fn chunk_lengths(&self) -> impl Iterator<Item = u64> + '_ {
        self.layers.iter().filter_map(|l| match l {
            AttentionKind::Lsh => Some(self.lsh.chunk),
            AttentionKind::Local => Some(self.local.chunk),
            AttentionKind::Full { .. } => None,
        })
    }

    /// HF's eval padding rule `(multiple, min_len)` for this model
    /// ([`reformc_ir::hf_rules::padding_rule`] of its chunk lengths).
    pub fn padding(&self) -> (u64, u64) {
        reformc_ir::hf_rules::padding_rule(self.chunk_lengths())
    }

    /// Least common multiple of the chunk lengths in use (HF pads to it).
    pub fn chunk_lcm(&self) -> u64 {
        self.padding().0
    }

    /// Smallest chunk length in use, or `None` when no layer is chunked.
    pub fn min_chunk(&self) -> Option<u64> {
        self.chunk_lengths().min()
    }

    /// Width of the final hidden state: 2D for reversible models, D otherwise.
    pub fn output_width(&self) -> u64 {
        match self.architecture {
            Architecture::Reversible => 2 * self.hidden_size,
            Architecture::Residual => self.hidden_size,
        }
    }
}

impl ModelSpec {
    /// The spec a training step uses: with `no_dropout` (the `--no-dropout`
    /// flag) every dropout probability is 0, otherwise the config's apply.
    /// The result is an error only for a probability outside [0, 1] (a spec
    /// built by hand; parsed configs are checked), naming its field.
    ///
    /// ```
    /// # let mut spec = reformc_frontend::spec::tests_support::tiny();
    /// spec.dropout.hidden = 0.1;
    /// assert!(spec.for_training(true).unwrap().dropout.is_zero());
    /// assert_eq!(spec.for_training(false).unwrap().dropout.hidden, 0.1);
    /// spec.dropout.hidden = 1.5;
    /// assert!(spec.for_training(false).unwrap_err().contains("hidden_dropout_prob"));
    /// ```
    pub fn for_training(&self, no_dropout: bool) -> Result<ModelSpec, String> {
        let mut spec = self.clone();
        if no_dropout {
            spec.dropout = DropoutSpec::default();
        }
        if let Some((field, p)) = spec
            .dropout
            .nonzero()
            .into_iter()
            .find(|(_, p)| !(0.0..=1.0).contains(p))
        {
            return Err(format!(
                "field `{field}` = {p}: expected a probability in [0, 1]"
            ));
        }
        Ok(spec)
    }

    /// The length HF runs at for an input of length `len` (REFORMER.md §6.3):
    /// padded to the lcm of the chunk lengths when longer than the smallest chunk.
    ///
    /// ```
    /// # use reformc_frontend::spec::*;
    /// # let spec = reformc_frontend::spec::tests_support::tiny();
    /// assert_eq!(spec.padded_len(50), 64);
    /// assert_eq!(spec.padded_len(64), 64);
    /// assert_eq!(spec.padded_len(12), 16);
    /// assert_eq!(spec.padded_len(6), 6); // not longer than the smallest chunk (8)
    /// ```
    pub fn padded_len(&self, len: u64) -> u64 {
        let (multiple, min_len) = self.padding();
        reformc_ir::hf_rules::padded_len(len, multiple, min_len)
    }

    /// Checks that an input of length `len` fits the position embeddings once
    /// padded; returns the padded length or a message saying what is wrong.
    pub fn check_length(&self, len: u64) -> Result<u64, String> {
        let p = self.padded_len(len);
        let padded = if p == len {
            String::new()
        } else {
            format!(" (padded to {p})")
        };
        if p > self.max_position_embeddings {
            return Err(format!(
                "sequence length {len}{padded} exceeds max_position_embeddings={}",
                self.max_position_embeddings
            ));
        }
        if let PositionSpec::Axial { shape, .. } = &self.position {
            if p > shape[0] * shape[1] {
                return Err(format!(
                    "sequence length {len}{padded} exceeds the axial position grid {}x{} = {}",
                    shape[0],
                    shape[1],
                    shape[0] * shape[1]
                ));
            }
        }
        Ok(p)
    }
}

#[doc(hidden)]
pub mod tests_support {
    use super::*;

    /// A small Reformer spec for doc tests: chunks 8 (LSH) and 16 (local).
    pub fn tiny() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Reversible,
            vocab_size: 48,
            hidden_size: 32,
            num_heads: 2,
            head_dim: 16,
            feed_forward_size: 64,
            activation: Activation::Relu,
            layer_norm_eps: 1e-12,
            causal: true,
            layers: vec![AttentionKind::Local, AttentionKind::Lsh],
            lsh: LshSpec {
                chunk: 8,
                before: 1,
                after: 0,
                n_hashes: 2,
                buckets: BucketSpec::Factors(vec![8]),
            },
            local: LocalSpec {
                chunk: 16,
                before: 1,
                after: 0,
            },
            position: PositionSpec::Axial {
                shape: [8, 16],
                dims: [16, 16],
            },
            max_position_embeddings: 128,
            pad_token_id: 0,
            head: HeadSpec::LmHead { bias: false },
            weight_prefix: "reformer.".into(),
            chunk_size_feed_forward: None,
            chunk_size_lm_head: None,
            dropout: DropoutSpec::default(),
        }
    }
}
