//! Dropout in training steps: the probabilities `lower-model` applies, the
//! sites it finds (Hugging Face's `ReformerModelWithLMHead` in train mode)
//! and the Philox streams their masks are keyed by.

use super::build::{const_dim, emit, op, reshape};
use reformc_ir::{Attr, Dim, Graph, Node, Op, OpKind, ValueId, LAYER};

/// Dropout probabilities of a training step (the model config's, named as in
/// Hugging Face's Reformer config).
///
/// ```
/// use reformc_passes::lower_model::DropoutRates;
/// assert!(DropoutRates::default().is_zero());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DropoutRates {
    /// `hidden_dropout_prob`: embeddings, attention output, feed-forward
    /// (after the activation and after the output), final LayerNorm.
    pub hidden: f64,
    /// `lsh_attention_probs_dropout_prob`: LSH attention probabilities.
    pub lsh_attention: f64,
    /// `local_attention_probs_dropout_prob`: local attention probabilities.
    pub local_attention: f64,
}

impl DropoutRates {
    /// Whether no dropout applies.
    pub fn is_zero(&self) -> bool {
        self.hidden == 0.0 && self.lsh_attention == 0.0 && self.local_attention == 0.0
    }
}

/// Where in the model a dropout mask applies: the low byte of its stream.
///
/// The stream of a mask is `STREAM_BASE | slot << 8 | site`, where `slot` is
/// 0 for the model-level sites (embeddings, final LayerNorm) and `layer + 1`
/// inside layer `layer`. With the step's `seed` input as the Philox key, each
/// (step, layer, site) draws its own mask, and a recomputation of the same
/// site (the reversible backward) draws the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The word embeddings (before the positions are added).
    Words = 0,
    /// The position embeddings (axial or learned), masked `[B, P, D]` where
    /// they are added to the word embeddings.
    Positions = 1,
    /// After the final LayerNorm.
    Final = 2,
    /// The attention probabilities of an LSH or local attention layer.
    AttentionProbs = 3,
    /// After the attention output projection (HF `ReformerSelfOutput`).
    AttentionOutput = 4,
    /// After the feed-forward's first dense layer, before its activation
    /// (HF `ReformerFeedForwardDense`).
    FeedForwardInner = 5,
    /// After the feed-forward's output dense layer.
    FeedForwardOutput = 6,
}

/// The bit that sets dropout streams apart from the LSH rotation streams
/// (`random_normal {stream=k}`, one per LSH layer, small).
pub const STREAM_BASE: i64 = 1 << 32;

/// The Philox stream of the mask at `site` of `layer` (`None`: model level).
///
/// ```
/// use reformc_passes::lower_model::{dropout_stream, DropoutSite};
/// assert_eq!(dropout_stream(None, DropoutSite::Words), 1 << 32);
/// assert_eq!(dropout_stream(Some(2), DropoutSite::AttentionProbs), (1 << 32) | (3 << 8) | 3);
/// ```
pub fn stream(layer: Option<u64>, site: Site) -> i64 {
    let slot = layer.map_or(0, |l| l as i64 + 1);
    STREAM_BASE | (slot << 8) | site as i64
}

/// A mask to apply while lowering: the new graph's seed, the probability
/// and the stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mask {
    pub seed: ValueId,
    pub p: f64,
    pub stream: i64,
}

impl Mask {
    /// `x * dropout_mask(seed, x)`.
    pub(crate) fn apply(&self, g: &mut Graph, x: ValueId) -> Result<ValueId, String> {
        self.apply_like(g, x, x)
    }

    /// `x * dropout_mask(seed, like)`: `x` broadcast to `like`'s shape.
    pub(crate) fn apply_like(
        &self,
        g: &mut Graph,
        x: ValueId,
        like: ValueId,
    ) -> Result<ValueId, String> {
        let mask = self.mask(g, like)?;
        emit(g, Op::new(OpKind::Mul), &[x, mask])
    }

    /// Hugging Face's `dropout2d` of axial position embeddings in train
    /// mode: the embeddings, as `[B, ax0, ax1, D]` transposed to
    /// `[B, ax1, ax0, D]`, lose whole `(b, j)` planes. So one keep-draw per
    /// batch row and axial column `j = p mod ax1` scales every position of
    /// that column in every channel. `pe` is `[P, D]`, `words` `[B, P, D]`,
    /// `w0` `[ax0, 1, d0]` and `w1` `[1, ax1, d1]` (the axial weights).
    pub(crate) fn apply_axial(
        &self,
        g: &mut Graph,
        pe: ValueId,
        words: ValueId,
        w0: ValueId,
        w1: ValueId,
    ) -> Result<ValueId, String> {
        let ax0 = const_dim(&g.ty(w0).shape[0], "the first axial size")?;
        let ax1 = const_dim(&g.ty(w1).shape[1], "the second axial size")?;
        let batch = g.ty(words).shape[0].clone();
        let one = || Dim::Const(1);
        // Shape carriers only (dropout_mask and broadcast never read their values).
        let b = first(g, words, &[1, 2])?;
        let b = reshape(g, b, vec![batch.clone(), one(), one(), one()]);
        let c0 = first(g, w0, &[2])?;
        let c0 = reshape(g, c0, vec![one(), Dim::Const(ax0), one(), one()]);
        let c1 = first(g, w1, &[2])?;
        let c1 = reshape(g, c1, vec![one(), one(), Dim::Const(ax1), one()]);
        let columns = op(g, OpKind::Add, &[b, c1])?;
        let grid = op(g, OpKind::Add, &[columns, c0])?;
        let keep = self.mask(g, columns)?;
        let keep = op(g, OpKind::Broadcast, &[keep, grid])?;
        let keep = reshape(g, keep, vec![batch, Dim::Const(ax0 * ax1), one()]);
        let truncate = Op::new(OpKind::Truncate).with("axis", Attr::Int(1));
        let keep = emit(g, truncate, &[keep, words])?;
        op(g, OpKind::Mul, &[pe, keep])
    }

    /// `dropout_mask(seed, like)`.
    fn mask(&self, g: &mut Graph, like: ValueId) -> Result<ValueId, String> {
        let op = Op::new(OpKind::DropoutMask)
            .with("p", Attr::Float(self.p))
            .with("stream", Attr::Int(self.stream));
        emit(g, op, &[self.seed, like])
    }
}

/// `x` sliced to its first entry along each of `axes`.
fn first(g: &mut Graph, mut x: ValueId, axes: &[i64]) -> Result<ValueId, String> {
    for &axis in axes {
        let slice = Op::new(OpKind::Slice)
            .with("axis", Attr::Int(axis))
            .with("start", Attr::Int(0))
            .with("end", Attr::Int(1));
        x = emit(g, slice, &[x])?;
    }
    Ok(x)
}

/// The site of a model op of the old graph `g` (found by its weights'
/// Hugging Face names; the layer from its `layer` attribute or the name),
/// or `None` where no dropout applies.
pub(crate) fn site_of(g: &Graph, node: &Node) -> Option<(Site, Option<u64>)> {
    let weight = |i: usize| {
        let w = g.node(*node.inputs.get(i)?);
        (w.op.kind == OpKind::Weight).then(|| w.op.str("name"))?
    };
    let layer = |name: Option<&str>| {
        node.op.int(LAYER).map(|l| l as u64).or_else(|| {
            let rest = name?.split("layers.").nth(1)?;
            rest.split('.').next()?.parse().ok()
        })
    };
    let site = match node.op.kind {
        OpKind::LshAttention | OpKind::LocalAttention => {
            return Some((Site::AttentionProbs, layer(None)))
        }
        OpKind::AxialPosEmbedding => return Some((Site::Positions, None)),
        OpKind::Embedding => match weight(1)? {
            n if n.ends_with("embeddings.word_embeddings.weight") => Site::Words,
            n if n.ends_with("embeddings.position_embeddings.embedding.weight") => Site::Positions,
            _ => return None,
        },
        OpKind::LayerNorm => match weight(1)? {
            n if n.ends_with("encoder.layer_norm.weight") => Site::Final,
            _ => return None,
        },
        OpKind::Linear => match weight(1)? {
            n if n.ends_with("attention.output.dense.weight") => Site::AttentionOutput,
            n if n.ends_with("feed_forward.dense.dense.weight") => Site::FeedForwardInner,
            n if n.ends_with("feed_forward.output.dense.weight") => Site::FeedForwardOutput,
            _ => return None,
        },
        _ => return None,
    };
    let model_level = matches!(site, Site::Words | Site::Positions | Site::Final);
    Some((site, if model_level { None } else { layer(weight(1)) }))
}

impl DropoutRates {
    /// The probability of `site` (attention probabilities by the op's kind).
    pub(crate) fn of(&self, site: Site, kind: OpKind) -> f64 {
        match (site, kind) {
            (Site::AttentionProbs, OpKind::LshAttention) => self.lsh_attention,
            (Site::AttentionProbs, _) => self.local_attention,
            _ => self.hidden,
        }
    }
}
