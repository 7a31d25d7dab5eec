#!/usr/bin/env python3
"""Generate golden Reformer fixtures from Hugging Face transformers (5.23.0).

For every case this script builds a small, randomly initialised HF Reformer
(`ReformerModelWithLMHead` when causal, `ReformerForMaskedLM` otherwise),
runs it in eval mode on CPU with all dropouts 0 and records:

  config.json          HF config (written before the forward, so an automatic
                       `num_buckets` stays null; the resolved value is in meta.json)
  model.safetensors    float32 state dict, HF names (`reformer.*`, `lm_head.*`)
  input_ids.npy        int64 [B, L]
  attention_mask.npy   int64 [B, L] (1 keep, 0 padding), only for cases with a mask
  lsh_rotations.npy    float32 [n_lsh_calls, H, d, r, S/2], the rotations HF drew
  lsh_buckets.npy      int64 [n_lsh_calls, B, H, r*L_padded], what `_hash_vectors`
                       returned (round offsets and padding bucket included)
  logits.npy           float32 [B, L, V], HF float32 logits
  logits_f64.npy       float64 [B, L, V], the same model in float64 with the float32
                       run's buckets replayed (exact-arithmetic reference)
  labels.npy           int64 [B, L], the input ids with -100 (ignored) at t % 7 == 3 of
                       row 0 and wherever attention_mask is 0
  loss_f64.npy         0-d float64, mean cross-entropy over labelled positions computed
                       here in float64 (causal models shift: logits[:, :-1] vs labels[:, 1:])
  grads_f64.safetensors  F64 gradient of that loss for every weight that gets one, names as
                       in model.safetensors (lm_head.bias, unused by HF, is absent): HF in
                       float64 train mode, buckets replayed, backward through HF's
                       reversible recomputation; checked against plain autograd and finite
                       differences. Only where HF accepts the shape in train mode; otherwise
                       meta.json's grad_reference says "none: <HF's reason>"
  meta.json            parameters, resolved values, diffs, gradient checks and file shapes

The example (examples/tiny-reformer) gets no labels, loss or gradients.

Head cases (written under --heads-out, default tests/fixtures_heads) build
`ReformerForSequenceClassification` or `ReformerForQuestionAnswering` instead and
get no labels, loss or gradients. Their logits files hold the head's output:
  classification   logits.npy / logits_f64.npy  [B, num_labels]
  question answer  logits.npy / logits_f64.npy  [B, L, 2]: HF's start_logits at
                   [..., 0] and end_logits at [..., 1] (reformc's one-output form)
The activation cases (act_*) cover the `hidden_act` values beyond relu and gelu.

Usage:
  /work/hfvenv/bin/python scripts/hf_fixtures.py --out tests/fixtures --examples examples \
      --heads-out tests/fixtures_heads

Deterministic: fixed seeds per case, one CPU thread.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import sys
from contextlib import contextmanager

import numpy as np
import torch

import transformers
from transformers import (ReformerConfig, ReformerForMaskedLM, ReformerForQuestionAnswering,
                          ReformerForSequenceClassification, ReformerModelWithLMHead)
from transformers.models.reformer import modeling_reformer as mr

EXPECTED_TORCH = "2.15.0"
EXPECTED_TRANSFORMERS = "5.23.0"

FILES = [
    "config.json",
    "model.safetensors",
    "input_ids.npy",
    "attention_mask.npy",
    "lsh_rotations.npy",
    "lsh_buckets.npy",
    "logits.npy",
    "logits_f64.npy",
    "labels.npy",
    "loss_f64.npy",
    "grads_f64.safetensors",
    "meta.json",
]

IGNORE_INDEX = -100  # label value that the loss skips (HF's CrossEntropyLoss ignore_index)

# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

BASE = dict(
    hidden_size=32,
    num_attention_heads=2,
    attention_head_size=16,
    feed_forward_size=64,
    vocab_size=48,
    axial_pos_embds=True,
    axial_pos_shape=[8, 8],
    axial_pos_embds_dim=[16, 16],
    max_position_embeddings=64,
    lsh_attn_chunk_length=8,
    local_attn_chunk_length=16,
    lsh_num_chunks_before=1,
    lsh_num_chunks_after=0,
    local_num_chunks_before=1,
    local_num_chunks_after=0,
    num_hashes=1,
    num_buckets=8,
    hidden_act="relu",
    hidden_dropout_prob=0.0,
    lsh_attention_probs_dropout_prob=0.0,
    local_attention_probs_dropout_prob=0.0,
    pad_token_id=0,
    eos_token_id=2,
)


def case(name, description, seed, B, L, mask_keep=None, grads=True, head="lm", ff_dense_scale=1.0,
         **cfg):
    """mask_keep: None (no attention_mask) or a list of per-row numbers of kept tokens.
    grads: also write labels.npy, loss_f64.npy and grads_f64.safetensors.
    head: "lm" (ReformerModelWithLMHead when causal, else ReformerForMaskedLM), "cls"
    (ReformerForSequenceClassification) or "qa" (ReformerForQuestionAnswering).
    ff_dense_scale: multiplies every feed-forward first dense weight after the init, so that
    the pre-activations reach an activation's far regions (relu6's clamp at 6)."""
    c = dict(BASE)
    c.update(cfg)
    if head != "lm":
        grads = False  # the gradient reference is the LM loss's
    return dict(name=name, description=description, seed=seed, B=B, L=L, mask_keep=mask_keep,
                grads=grads, head=head, ff_dense_scale=ff_dense_scale, cfg=c)


CASES = [
    case("causal_lsh_r1",
         "causal, all-LSH, 1 hash round, 8 buckets, LSH chunk 8, L=64 (8 chunks)",
         seed=101, B=1, L=64,
         is_decoder=True, attn_layers=["lsh", "lsh"], num_hashes=1, num_buckets=8),
    case("causal_mixed_r2",
         "causal, mixed local/lsh x2, 2 rounds, 8 buckets, LSH chunk 8, local chunk 16, L=64",
         seed=102, B=1, L=64,
         is_decoder=True, attn_layers=["local", "lsh", "local", "lsh"], num_hashes=2, num_buckets=8),
    case("causal_lsh_r4_factorized",
         "causal, [lsh,local,lsh], 4 rounds, factorized buckets [2,4], head size 8 (H*d=16 != D=32), "
         "both chunks 8, L=64",
         seed=103, B=1, L=64,
         is_decoder=True, attn_layers=["lsh", "local", "lsh"], num_hashes=4, num_buckets=[2, 4],
         attention_head_size=8, local_attn_chunk_length=8),
    case("causal_lsh_r8_b3",
         "causal, all-LSH, 8 rounds, 8 buckets, LSH chunk 16, L=128, batch 3, axial (16,8)",
         seed=104, B=3, L=128,
         is_decoder=True, attn_layers=["lsh", "lsh"], num_hashes=8, num_buckets=8,
         lsh_attn_chunk_length=16, axial_pos_shape=[16, 8], max_position_embeddings=128),
    case("causal_auto_buckets",
         "causal, [lsh,local,lsh], num_buckets null (HF resolves [4,8] at L=128, chunk 8, "
         "max_position_embeddings 128), 2 rounds, L=128",
         seed=105, B=1, L=128,
         is_decoder=True, attn_layers=["lsh", "local", "lsh"], num_hashes=2, num_buckets=None,
         axial_pos_shape=[16, 8], max_position_embeddings=128),
    case("causal_local_only_before2",
         "causal, all-local (3 layers), local chunk 8, local_num_chunks_before=2, L=48, batch 2, "
         "axial (8,8) product 64 > L; no hashing",
         seed=106, B=2, L=48,
         is_decoder=True, attn_layers=["local", "local", "local"], local_attn_chunk_length=8,
         local_num_chunks_before=2),
    case("causal_mixed_padded",
         "causal, mixed local/lsh x2, LSH chunk 8, local chunk 12 (lcm 24), L=50 padded by HF to 72 "
         "(HF builds an attention mask for the pad tail, so the padding bucket is used), 2 rounds, "
         "axial (8,9)",
         seed=107, B=1, L=50,
         is_decoder=True, attn_layers=["local", "lsh", "local", "lsh"], num_hashes=2, num_buckets=8,
         local_attn_chunk_length=12, axial_pos_shape=[8, 9], max_position_embeddings=72),
    case("causal_mask_padded_b2",
         "causal, [lsh,local,lsh], 2 rounds, 4 buckets, user attention_mask (row 0 all kept, row 1 "
         "44 kept + zero tail), L=60 padded by HF to 64 (mask extended with zeros)",
         seed=108, B=2, L=60, mask_keep=[60, 44],
         is_decoder=True, attn_layers=["lsh", "local", "lsh"], num_hashes=2, num_buckets=4),
    case("causal_gelu_plainpos",
         "causal, [lsh,local], gelu, plain (non-axial) position embeddings, both chunks 10, "
         "2 rounds, 8 buckets, L=80",
         seed=109, B=1, L=80,
         is_decoder=True, attn_layers=["lsh", "local"], num_hashes=2, num_buckets=8, hidden_act="gelu",
         axial_pos_embds=False, max_position_embeddings=80, lsh_attn_chunk_length=10,
         local_attn_chunk_length=10),
    case("causal_short_plain_attn",
         "causal, [local,lsh], L=12 <= both chunk lengths (16): no padding, no hashing, plain "
         "full attention in both layer types (LSH keeps its self mask), batch 2",
         seed=110, B=2, L=12,
         is_decoder=True, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4,
         lsh_attn_chunk_length=16, local_attn_chunk_length=16),
    case("causal_short_lsh_chunked_local",
         "causal, [lsh,local,lsh], LSH chunk 32, local chunk 8, L=32: LSH layers take the plain "
         "path (L <= chunk, no hashing) while local layers are chunked",
         seed=111, B=1, L=32,
         is_decoder=True, attn_layers=["lsh", "local", "lsh"], num_hashes=2, num_buckets=4,
         lsh_attn_chunk_length=32, local_attn_chunk_length=8),
    case("noncausal_lsh_r2_after1",
         "non-causal (MaskedLM), all-LSH x3, 2 rounds, 8 buckets, LSH chunk 8, "
         "lsh_num_chunks_after=1, L=64",
         seed=112, B=1, L=64,
         is_decoder=False, attn_layers=["lsh", "lsh", "lsh"], num_hashes=2, num_buckets=8,
         lsh_num_chunks_after=1),
    case("noncausal_mixed_r4_plainpos",
         "non-causal, mixed local/lsh x2, 4 rounds, factorized buckets [2,4], LSH chunk 12, local "
         "chunk 16 (lcm 48), local before=2 after=1, plain position embeddings, L=96",
         seed=113, B=1, L=96,
         is_decoder=False, attn_layers=["local", "lsh", "local", "lsh"], num_hashes=4,
         num_buckets=[2, 4], lsh_attn_chunk_length=12, local_attn_chunk_length=16,
         local_num_chunks_before=2, local_num_chunks_after=1, axial_pos_embds=False,
         max_position_embeddings=96),
    case("noncausal_local_only",
         "non-causal, all-local x2, local chunk 16, local_num_chunks_after=1, L=64, batch 2; "
         "no hashing",
         seed=114, B=2, L=64,
         is_decoder=False, attn_layers=["local", "local"], local_num_chunks_after=1),
    case("noncausal_mask_b2",
         "non-causal, [lsh,local,lsh], 2 rounds, 8 buckets, attention_mask (row 0 all kept, row 1 "
         "43 kept + zero tail of 21), L=64 (no extra padding)",
         seed=115, B=2, L=64, mask_keep=[64, 43],
         is_decoder=False, attn_layers=["lsh", "local", "lsh"], num_hashes=2, num_buckets=8),
    case("noncausal_short_mask",
         "non-causal, [lsh,local], L=14 <= both chunks (16): plain attention with attention_mask "
         "(row 1 keeps 9), batch 2; no hashing",
         seed=116, B=2, L=14, mask_keep=[14, 9],
         is_decoder=False, attn_layers=["lsh", "local"], num_hashes=2, num_buckets=4,
         lsh_attn_chunk_length=16, local_attn_chunk_length=16),
    case("noncausal_mask_padded_r8",
         "non-causal, [lsh,lsh], 8 rounds, factorized buckets [2,2], LSH chunk 16, "
         "lsh_num_chunks_after=1, attention_mask (row 1 keeps 51) and L=70 padded by HF to 80, "
         "axial (10,8), batch 2",
         seed=117, B=2, L=70, mask_keep=[70, 51],
         is_decoder=False, attn_layers=["lsh", "lsh"], num_hashes=8, num_buckets=[2, 2],
         lsh_attn_chunk_length=16, lsh_num_chunks_after=1, axial_pos_shape=[10, 8],
         max_position_embeddings=80),
]

# Axial grid of exactly L=32 positions: HF's train mode (the gradient reference) needs it.
AXIAL_32 = dict(axial_pos_shape=[4, 8], max_position_embeddings=32)

# One small model per `hidden_act` that the cases above do not cover (relu and gelu are).
ACTIVATION_CASES = [
    case("act_mish",
         "non-causal, [local,lsh], hidden_act mish, 2 rounds, 4 buckets, L=32",
         seed=121, B=1, L=32,
         is_decoder=False, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4,
         hidden_act="mish", **AXIAL_32),
    case("act_relu6",
         "causal, [lsh,local], hidden_act relu6, feed-forward first dense x4 (pre-activations "
         "past the clamp at 6), L=32",
         seed=122, B=1, L=32, ff_dense_scale=4.0,
         is_decoder=True, attn_layers=["lsh", "local"], num_hashes=1, num_buckets=4,
         hidden_act="relu6", **AXIAL_32),
    case("act_quick_gelu",
         "causal, [local,lsh], hidden_act quick_gelu, 2 rounds, 4 buckets, L=32, batch 2",
         seed=123, B=2, L=32,
         is_decoder=True, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4,
         hidden_act="quick_gelu", **AXIAL_32),
    case("act_leaky_relu",
         "non-causal, [lsh,local], hidden_act leaky_relu (slope 0.01), L=32",
         seed=124, B=1, L=32,
         is_decoder=False, attn_layers=["lsh", "local"], num_hashes=1, num_buckets=4,
         hidden_act="leaky_relu", **AXIAL_32),
    case("act_linear",
         "causal, [local,lsh], hidden_act linear (identity), 2 rounds, 4 buckets, L=32",
         seed=125, B=1, L=32,
         is_decoder=True, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4,
         hidden_act="linear", **AXIAL_32),
]
CASES += ACTIVATION_CASES

# Task heads (written under --heads-out).
HEAD_CASES = [
    case("cls_noncausal_mask_b2",
         "ReformerForSequenceClassification, 3 labels, non-causal, [local,lsh], 2 rounds, "
         "4 buckets, attention_mask (row 1 keeps 21), L=32, batch 2",
         seed=131, B=2, L=32, mask_keep=[32, 21], head="cls",
         is_decoder=False, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4,
         num_labels=3),
    case("cls_causal_padded_gelu",
         "ReformerForSequenceClassification, 1 label (regression), causal, [lsh,local], gelu, "
         "L=28 padded by HF to 32, classifier_dropout set (unused in eval)",
         seed=132, B=1, L=28, head="cls",
         is_decoder=True, attn_layers=["lsh", "local"], num_hashes=1, num_buckets=4,
         hidden_act="gelu", num_labels=1, classifier_dropout=0.1, problem_type="regression"),
    case("qa_noncausal_b2",
         "ReformerForQuestionAnswering, non-causal, [local,lsh], 2 rounds, 4 buckets, L=32, "
         "batch 2",
         seed=133, B=2, L=32, head="qa",
         is_decoder=False, attn_layers=["local", "lsh"], num_hashes=2, num_buckets=4),
    case("qa_causal_padded_mask",
         "ReformerForQuestionAnswering, causal, [lsh,local], L=30 padded by HF to 32, "
         "attention_mask (row 1 keeps 19), batch 2",
         seed=134, B=2, L=30, mask_keep=[30, 19], head="qa",
         is_decoder=True, attn_layers=["lsh", "local"], num_hashes=1, num_buckets=4),
]

EXAMPLE = case(
    "tiny-reformer",
    "README demo: causal, hidden 64, 2 heads of 32, layers [local,lsh,local,lsh], 2 rounds, "
    "16 buckets, chunks 32, L=256, axial (16,16)",
    seed=201, B=1, L=256, grads=False,  # F64 gradients would double the folder (1.1 MB)
    is_decoder=True, attn_layers=["local", "lsh", "local", "lsh"], num_hashes=2, num_buckets=16,
    hidden_size=64, attention_head_size=32, feed_forward_size=128, vocab_size=64,
    axial_pos_shape=[16, 16], axial_pos_embds_dim=[32, 32], max_position_embeddings=256,
    lsh_attn_chunk_length=32, local_attn_chunk_length=32,
)

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def lcm_chunk(cfg):
    kinds = set(cfg["attn_layers"])
    if kinds == {"lsh"}:
        return cfg["lsh_attn_chunk_length"]
    if kinds == {"local"}:
        return cfg["local_attn_chunk_length"]
    return math.lcm(cfg["lsh_attn_chunk_length"], cfg["local_attn_chunk_length"])


def min_chunk(cfg):
    kinds = set(cfg["attn_layers"])
    vals = []
    if "lsh" in kinds:
        vals.append(cfg["lsh_attn_chunk_length"])
    if "local" in kinds:
        vals.append(cfg["local_attn_chunk_length"])
    return min(vals)


def padded_length(cfg, L):
    m = lcm_chunk(cfg)
    if L % m != 0 and L > min_chunk(cfg):
        return L + (m - L % m)
    return L


def reinit_(model, seed):
    """Deterministic, O(1)-scale random weights (HF's default init, std 0.02, would make the
    attention contribution negligible and the fixtures weak). lm_head.bias is made non-zero on
    purpose: HF 5.23.0 does not add it, so a wrong implementation shows up."""
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=g)
            elif name.endswith("layer_norm.bias"):
                v = 0.1 * torch.randn(shape, generator=g)
            elif "word_embeddings" in name or "position_embeddings" in name:
                v = torch.randn(shape, generator=g)
            elif name == "lm_head.bias":
                v = 0.5 * torch.randn(shape, generator=g)
            elif name.endswith("out_proj.bias") or name == "qa_outputs.bias":
                v = 0.5 * torch.randn(shape, generator=g)  # non-zero: a head without it shows
            elif name.endswith(".weight") and p.dim() == 2:
                v = torch.randn(shape, generator=g) / math.sqrt(shape[1])
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(shape, generator=g)
            else:
                raise RuntimeError(f"unexpected parameter {name}")
            p.copy_(v.to(p.dtype))


@contextmanager
def patched_hash_vectors(fn):
    orig = mr.LSHSelfAttention._hash_vectors
    mr.LSHSelfAttention._hash_vectors = fn
    try:
        yield orig
    finally:
        mr.LSHSelfAttention._hash_vectors = orig


def recording_hash(records):
    orig = mr.LSHSelfAttention._hash_vectors

    def wrapped(self, vectors, num_hashes, attention_mask, increase_num_buckets=False):
        real_randn = torch.randn
        draws = []

        def rec_randn(*args, **kwargs):
            t = real_randn(*args, **kwargs)
            draws.append(t.detach().clone())
            return t

        torch.randn = rec_randn
        try:
            out = orig(self, vectors, num_hashes, attention_mask, increase_num_buckets)
        finally:
            torch.randn = real_randn
        if len(draws) != 1:
            raise RuntimeError(f"expected exactly one torch.randn call in _hash_vectors, got {len(draws)}")
        records.append(dict(
            layer=self.layer_idx,
            num_buckets=copy.deepcopy(self.num_buckets),
            num_hashes=num_hashes,
            vectors=vectors.detach().clone(),
            attention_mask=None if attention_mask is None else attention_mask.detach().clone(),
            rotations=draws[0],
            buckets=out.detach().clone(),
        ))
        return out

    return wrapped


def replaying_hash(queue, counter):
    def replay(self, vectors, num_hashes, attention_mask, increase_num_buckets=False):
        if not queue:
            raise RuntimeError("more _hash_vectors calls than recorded")
        b = queue.pop(0)
        expect = (vectors.shape[0], self.num_attention_heads, num_hashes * vectors.shape[2])
        if tuple(b.shape) != expect:
            raise RuntimeError(f"replayed buckets shape {tuple(b.shape)} != {expect}")
        counter[0] += 1
        return b.clone()

    return replay


def hash_like_hf(vectors, rotations, num_buckets, attention_mask, num_hashes):
    """Independent re-statement of HF's hashing (used to count f32/f64 argmax flips)."""
    B, H = vectors.shape[0], vectors.shape[1]
    rotated = torch.einsum("bmtd,mdhr->bmhtr", vectors, rotations)
    factors = [num_buckets] if isinstance(num_buckets, int) else list(num_buckets)
    buckets, start, prod = None, 0, 1
    for f in factors:
        piece = rotated[..., start:start + f // 2]
        start += f // 2
        idx = torch.argmax(torch.cat([piece, -piece], dim=-1), dim=-1)
        buckets = idx if buckets is None else buckets + prod * idx
        prod *= f
    nb = prod
    if attention_mask is not None and attention_mask.sum().item() < B * attention_mask.shape[-1]:
        nb += 1
        keep = attention_mask.to(torch.bool)[:, None, None, :].expand(buckets.shape)
        buckets = torch.where(keep, buckets, torch.tensor(nb - 1, dtype=torch.long))
    offsets = (torch.arange(num_hashes) * nb).view(1, 1, -1, 1)
    return (buckets + offsets).flatten(start_dim=2, end_dim=3), nb


def run_model(model, ids, mask, causal, head="lm"):
    """The model's logits; for question answering [B, L, 2] = stack(start, end)."""
    kwargs = dict(input_ids=ids)
    if mask is not None:
        kwargs["attention_mask"] = mask
    if causal and head != "qa":  # QA passes use_cache=False itself and takes no such argument
        kwargs["use_cache"] = False
    with torch.no_grad():
        out = model(**kwargs)
    if head == "qa":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def npy_save(path, arr):
    np.save(path, np.ascontiguousarray(arr) if arr.ndim else arr, allow_pickle=False)


def save_scalar_f64(path, t):
    """A 0-d float64 .npy (np.ascontiguousarray would make it 1-d)."""
    np.save(path, np.array(t.detach().item(), dtype=np.float64), allow_pickle=False)


def file_info(path):
    if path.endswith(".npy"):
        a = np.load(path, mmap_mode="r")
        return dict(dtype=str(a.dtype), shape=list(a.shape))
    return dict(bytes=os.path.getsize(path))


# --------------------------------------------------------------------------------------
# Gradient reference (HF float64, train mode, recorded buckets replayed)
# --------------------------------------------------------------------------------------

LM_HEAD_BIAS_REASON = ("HF 5.23.0 keeps the parameter but ReformerOnlyLMHead.forward_chunk applies only "
                       "lm_head.decoder (bias=False), so lm_head.bias gets no gradient")
FD_STEP = 1e-5  # finite-difference step: rounding error ~1e-10, and ReLU kinks are hardly ever crossed
FD_ENTRIES = 3


def make_labels(ids, mask):
    """The input ids, with IGNORE_INDEX at t % 7 == 3 in row 0 (so the ignore rule is exercised
    in causal and masked-LM cases alike) and wherever the attention mask is 0."""
    labels = ids.clone()
    labels[0, 3::7] = IGNORE_INDEX
    if mask is not None:
        labels[mask == 0] = IGNORE_INDEX
    return labels


def cross_entropy_f64(logits, labels, causal):
    """Mean cross-entropy over labelled positions, in float64 throughout. Causal (LM head) models
    shift as HF does: position t predicts label t+1."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -picked[keep].sum() / keep.sum()


def train_loss(model, ids, mask, labels, causal, buckets):
    """Train-mode forward with `buckets` replayed; returns (loss, logits). The replay stays
    patched through the caller's backward via the returned context, so a re-hash there raises."""
    queue, counter = list(buckets), [0]
    kwargs = dict(input_ids=ids)
    if mask is not None:
        kwargs["attention_mask"] = mask
    if causal:
        kwargs["use_cache"] = False
    with patched_hash_vectors(replaying_hash(queue, counter)):
        logits = model(**kwargs).logits
    if counter[0] != len(buckets) or queue:
        raise RuntimeError("train-mode forward did not consume exactly the recorded buckets")
    return cross_entropy_f64(logits, labels, causal), logits


def plain_reversible_apply(hidden_states, layers, attention_mask, num_hashes, all_hidden_states,
                           all_attentions, past_buckets_states, use_cache, orig_sequence_length,
                           output_hidden_states, output_attentions):
    """Stand-in for `_ReversibleFunction.apply` that runs the same layer maths under ordinary
    autograd (activations stored, no recomputation): the non-reversible reference."""
    hidden, attn = torch.chunk(hidden_states, 2, dim=-1)
    for layer in layers:
        out = layer.attention(hidden_states=hidden, attention_mask=attention_mask, num_hashes=num_hashes,
                              orig_sequence_length=orig_sequence_length)
        attn = attn + out.hidden_states  # Y1 = X1 + f(X2)
        hidden = hidden + layer.feed_forward(attn)  # Y2 = X2 + g(Y1)
    return torch.cat([attn, hidden], dim=-1)


@contextmanager
def plain_reversible():
    orig = mr._ReversibleFunction.apply
    mr._ReversibleFunction.apply = plain_reversible_apply
    try:
        yield
    finally:
        mr._ReversibleFunction.apply = orig


def backward_grads(model, loss, buckets):
    """loss.backward() with the bucket replay patched to an empty queue (HF's reversible backward
    must reuse the forward's buckets; a re-hash would raise), then the gradients by name."""
    model.zero_grad(set_to_none=True)
    with patched_hash_vectors(replaying_hash([], [0])):
        loss.backward()
    return {n: p.grad for n, p in model.named_parameters(remove_duplicate=False)}


def max_rel_err(got, want):
    """Largest |got - want| over tensors, each relative to that tensor's max |want| (at least 1e-300)."""
    worst = 0.0
    for n, w in want.items():
        scale = max(float(w.abs().max()), 1e-300)
        worst = max(worst, float((got[n] - w).abs().max()) / scale)
    return worst


def finite_difference_check(model, ids, mask, labels, causal, buckets, grads, seed):
    """Fourth-order central differences of the f64 loss at FD_ENTRIES weight entries (random
    tensors, random entries with |grad| >= 0.1 max|grad| of their tensor). Returns the entries
    with both values and their relative error."""
    g = torch.Generator().manual_seed(seed * 13 + 3)
    names = sorted(grads)
    params = dict(model.named_parameters())
    checks = []
    for k in torch.randperm(len(names), generator=g)[:FD_ENTRIES].tolist():
        name = names[k]
        gr = grads[name].reshape(-1)
        big = torch.nonzero(gr.abs() >= 0.1 * gr.abs().max()).reshape(-1)
        flat = int(big[torch.randint(len(big), (1,), generator=g)].item())
        p = params[name].data.reshape(-1)
        orig = p[flat].item()
        f = {}
        with torch.no_grad():
            for m in (-2, -1, 1, 2):
                p[flat] = orig + m * FD_STEP
                f[m] = train_loss(model, ids, mask, labels, causal, buckets)[0].item()
            p[flat] = orig
        fd = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * FD_STEP)
        an = float(gr[flat])
        checks.append(dict(tensor=name, flat_index=flat, analytic=an, finite_difference=fd,
                           rel_err=abs(fd - an) / abs(an)))
    return checks


def gradient_reference(c, model64, ids, mask, records, causal, logits64, out_dir):
    """Writes labels.npy, loss_f64.npy and (where HF trains this shape) grads_f64.safetensors;
    returns the meta.json entries that describe them."""
    from safetensors.torch import save_file

    labels = make_labels(ids, mask)
    npy_save(os.path.join(out_dir, "labels.npy"), labels.numpy().astype(np.int64))
    buckets = [r["buckets"] for r in records]
    info = dict(labels_rule=("input_ids, with -100 at positions t % 7 == 3 of row 0 and wherever "
                             "attention_mask is 0"),
                labelled_positions=int((labels[:, 1:] if causal else labels).ne(IGNORE_INDEX).sum()),
                loss_rule=("mean cross-entropy over labels != -100, log_softmax in float64, computed "
                           "by this script (not transformers' loss); " +
                           ("causal: logits[:, :-1] vs labels[:, 1:]" if causal else "masked LM: no shift")))

    model_t = copy.deepcopy(model64).train()
    for name, m in model_t.named_modules():
        if hasattr(m, "dropout") and isinstance(m.dropout, float) and m.dropout != 0.0:
            raise RuntimeError(f"{name}.dropout = {m.dropout}; the gradient reference needs 0")
    try:
        loss, logits_t = train_loss(model_t, ids, mask, labels, causal, buckets)
    except ValueError as e:  # HF refuses this shape in train mode
        advice = ("Please", "You might")  # keep HF's diagnosis, drop its suggestions
        reason = ". ".join(x for x in str(e).split(". ") if not x.startswith(advice)).rstrip(". ")
        loss = cross_entropy_f64(logits64, labels, causal)
        save_scalar_f64(os.path.join(out_dir, "loss_f64.npy"), loss)
        info.update(grad_reference=f"none: {reason}",
                    loss_source="eval-mode float64 logits (logits_f64.npy); HF refuses train mode here")
        return info

    train_vs_eval = float((logits_t.detach() - logits64).abs().max())
    if train_vs_eval > 1e-10:
        raise RuntimeError(f"train-mode f64 logits differ from logits_f64 by {train_vs_eval:.3e}")
    grads = backward_grads(model_t, loss, buckets)
    names = list(model64.state_dict().keys())
    present = {n: grads[n].detach().contiguous().clone() for n in names if grads.get(n) is not None}
    absent = {n: (LM_HEAD_BIAS_REASON if n == "lm_head.bias" else
                  "no gradient (not a parameter, or unused by the forward)")
              for n in names if n not in present}
    save_scalar_f64(os.path.join(out_dir, "loss_f64.npy"), loss)
    save_file(present, os.path.join(out_dir, "grads_f64.safetensors"), metadata={"format": "pt"})

    # non-reversible reference: the same maths under plain autograd (activations stored)
    model_p = copy.deepcopy(model64).train()
    with plain_reversible():
        loss_p, _ = train_loss(model_p, ids, mask, labels, causal, buckets)
    grads_p = backward_grads(model_p, loss_p, buckets)
    if set(n for n in names if grads_p.get(n) is not None) != set(present):
        raise RuntimeError("plain autograd and reversible backward give gradients for different tensors")
    plain_err = max_rel_err({n: grads_p[n] for n in present}, present)
    loss_plain_diff = abs(loss_p.item() - loss.item())

    fd = finite_difference_check(model_t, ids, mask, labels, causal, buckets, present, c["seed"])
    fd_worst = max(x["rel_err"] for x in fd)
    if plain_err > 1e-10 or fd_worst > 1e-6:
        raise RuntimeError(f"gradient checks failed: plain autograd {plain_err:.3e}, "
                           f"finite differences {fd_worst:.3e}")
    info.update(
        grad_reference="hf_f64_train",
        loss_source="train-mode float64 forward (the loss whose gradient grads_f64.safetensors holds)",
        grad_reference_note=(
            "HF model .double().train(), every dropout 0 (checked), float32 run's buckets replayed in "
            "the forward (consumed exactly once per LSH call; the reversible backward reuses them and "
            "never re-hashes, checked), loss by this script in float64, loss.backward() through HF's "
            "_ReversibleFunction (recomputation). Checked: train-mode logits vs logits_f64.npy; every "
            "gradient against plain autograd on the same maths without recomputation; finite "
            "differences (4th-order, step 1e-5) at 3 entries."),
        grad_tensors=sorted(present),
        grad_tensors_absent=absent,
        max_abs_diff_train_logits_vs_logits_f64=train_vs_eval,
        max_rel_err_grads_reversible_vs_plain_autograd=plain_err,
        abs_diff_loss_reversible_vs_plain_autograd=loss_plain_diff,
        finite_difference_checks=fd,
    )
    return info


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def generate(c, out_dir):
    from safetensors.torch import save_file

    name, seed, B, L = c["name"], c["seed"], c["B"], c["L"]
    cfgd = dict(c["cfg"])
    causal = bool(cfgd["is_decoder"])
    os.makedirs(out_dir, exist_ok=True)
    for f in FILES:  # remove stale outputs of this case only
        p = os.path.join(out_dir, f)
        if os.path.exists(p):
            os.remove(p)

    head = c["head"]
    torch.manual_seed(seed)
    config = ReformerConfig(**cfgd)
    if head == "cls":
        cls = ReformerForSequenceClassification
    elif head == "qa":
        cls = ReformerForQuestionAnswering
    else:
        cls = ReformerModelWithLMHead if causal else ReformerForMaskedLM
    model = cls(config)
    model.eval()
    reinit_(model, seed)
    if c["ff_dense_scale"] != 1.0:
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("feed_forward.dense.dense.weight"):
                    p.mul_(c["ff_dense_scale"])
    model.config.architectures = [cls.__name__]

    # config.json before any forward (num_buckets=None stays null)
    model.config.to_json_file(os.path.join(out_dir, "config.json"), use_diff=True)

    # weights
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    assert ("lm_head.bias" in sd) == (head == "lm")
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    # inputs
    g = torch.Generator().manual_seed(seed * 31 + 5)
    ids = torch.randint(0, cfgd["vocab_size"], (B, L), generator=g, dtype=torch.long)
    mask = None
    if c["mask_keep"] is not None:
        mask = torch.zeros((B, L), dtype=torch.long)
        for row, keep in enumerate(c["mask_keep"]):
            mask[row, :keep] = 1
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, cfgd["pad_token_id"]))
        npy_save(os.path.join(out_dir, "attention_mask.npy"), mask.numpy().astype(np.int64))
    npy_save(os.path.join(out_dir, "input_ids.npy"), ids.numpy().astype(np.int64))

    Lp = padded_length(cfgd, L)

    # float32 run, recording rotations and buckets
    rotation_seed = seed * 1000 + 7
    records = []
    with patched_hash_vectors(recording_hash(records)):
        torch.manual_seed(rotation_seed)
        logits = run_model(model, ids, mask, causal, head)
    out_shape = {"lm": (B, L, cfgd["vocab_size"]), "cls": (B, config.num_labels), "qa": (B, L, 2)}[head]
    assert logits.dtype == torch.float32 and tuple(logits.shape) == out_shape, logits.shape

    n_calls = len(records)
    n_lsh_layers = sum(1 for t in cfgd["attn_layers"] if t == "lsh")
    hashing = Lp > cfgd["lsh_attn_chunk_length"] and n_lsh_layers > 0
    assert n_calls == (n_lsh_layers if hashing else 0), (n_calls, n_lsh_layers, hashing)
    resolved_nb = model.config.num_buckets  # HF writes the auto value back at the first LSH forward
    if n_calls:
        assert all(r["num_buckets"] == records[0]["num_buckets"] for r in records)
        assert resolved_nb == records[0]["num_buckets"]
        assert [r["layer"] for r in records] == [i for i, t in enumerate(cfgd["attn_layers"]) if t == "lsh"]

    # rotations are consecutive draws from the global generator after torch.manual_seed(rotation_seed)
    torch.manual_seed(rotation_seed)
    for r in records:
        again = torch.randn(r["rotations"].shape, dtype=r["rotations"].dtype)
        assert torch.equal(again, r["rotations"]), "rotation draw is not reproducible from rotation_seed"

    hash_info = {}
    if n_calls:
        rot = torch.stack([r["rotations"] for r in records]).numpy().astype(np.float32)
        bk = torch.stack([r["buckets"] for r in records]).numpy().astype(np.int64)
        H, d, rr = cfgd["num_attention_heads"], cfgd["attention_head_size"], cfgd["num_hashes"]
        assert rot.shape[:4] == (n_calls, H, d, rr), rot.shape
        assert bk.shape == (n_calls, B, H, rr * Lp), bk.shape
        npy_save(os.path.join(out_dir, "lsh_rotations.npy"), rot)
        npy_save(os.path.join(out_dir, "lsh_buckets.npy"), bk)

        flips, total, nb_prime = 0, 0, None
        for r in records:
            b32, nb_prime = hash_like_hf(r["vectors"], r["rotations"], r["num_buckets"],
                                         r["attention_mask"], r["num_hashes"])
            assert torch.equal(b32, r["buckets"]), "independent f32 hashing disagrees with HF"
            b64, _ = hash_like_hf(r["vectors"].double(), r["rotations"].double(), r["num_buckets"],
                                  r["attention_mask"], r["num_hashes"])
            flips += int((b64 != r["buckets"]).sum())
            total += r["buckets"].numel()
        hash_info = dict(
            padding_bucket_used=bool(nb_prime != (resolved_nb if isinstance(resolved_nb, int)
                                                  else int(np.prod(resolved_nb)))),
            buckets_per_round_with_padding=int(nb_prime),
            hash_decisions=total,
            hash_flips_f64_vs_f32=flips,
        )

    # replay the recorded buckets in the float32 model: must reproduce logits exactly
    queue = [r["buckets"] for r in records]
    counter = [0]
    with patched_hash_vectors(replaying_hash(queue, counter)):
        torch.manual_seed(rotation_seed + 1)  # different RNG state on purpose
        logits_replay = run_model(model, ids, mask, causal, head)
    assert counter[0] == n_calls and not queue
    assert torch.equal(logits_replay, logits), "f32 bucket replay does not reproduce HF logits"

    # float64 reference with the float32 run's buckets
    model64 = copy.deepcopy(model).double()
    queue = [r["buckets"] for r in records]
    counter = [0]
    with patched_hash_vectors(replaying_hash(queue, counter)):
        torch.manual_seed(rotation_seed + 2)
        logits64 = run_model(model64, ids, mask, causal, head)
    assert counter[0] == n_calls and not queue, "f64 run did not consume exactly the recorded buckets"
    assert logits64.dtype == torch.float64

    npy_save(os.path.join(out_dir, "logits.npy"), logits.numpy().astype(np.float32))
    npy_save(os.path.join(out_dir, "logits_f64.npy"), logits64.numpy().astype(np.float64))
    diff = (logits.double() - logits64).abs()
    max_diff = float(diff.max())
    if mask is None or head == "cls":  # a classification output has no position axis
        max_diff_kept = max_diff
    else:
        max_diff_kept = float(diff[mask.bool()].max())

    nb_cfg = cfgd["num_buckets"]
    if resolved_nb is None:
        rot_size = None
    elif isinstance(resolved_nb, int):
        rot_size = resolved_nb
    else:
        rot_size = int(sum(resolved_nb))
    meta = dict(
        name=name,
        description=c["description"],
        model_class=cls.__name__,
        head=head,
        num_labels=config.num_labels if head != "lm" else None,
        output_note={"lm": "logits [B, L, V]", "cls": "logits [B, num_labels]",
                     "qa": "logits [B, L, 2] = stack(start_logits, end_logits, dim=-1)"}[head],
        ff_dense_scale=c["ff_dense_scale"],
        causal=causal,
        seed=seed,
        rotation_seed=rotation_seed,
        rotation_note=("torch.manual_seed(rotation_seed) immediately before the float32 forward; "
                       "LSH call k draws torch.randn((H, d, r, S/2)) as the k-th draw of the global "
                       "CPU generator (verified)"),
        weight_init=("custom O(1) init (see reinit_ in scripts/hf_fixtures.py); lm_head.bias is "
                     "non-zero and NOT used by HF 5.23.0"),
        lm_head_bias_used=False,
        B=B,
        L=L,
        padded_length=Lp,
        hf_padding_applied=Lp != L,
        lcm_chunk_length=lcm_chunk(cfgd),
        attn_layers=list(cfgd["attn_layers"]),
        num_hashes=cfgd["num_hashes"],
        num_buckets_config=nb_cfg,
        num_buckets_resolved=resolved_nb,
        rotation_size=rot_size,
        lsh_chunk_length=cfgd["lsh_attn_chunk_length"],
        local_chunk_length=cfgd["local_attn_chunk_length"],
        hashing=bool(n_calls),
        n_lsh_calls=n_calls,
        lsh_call_layers=[r["layer"] for r in records],
        mask_used=mask is not None,
        mask_keep=c["mask_keep"],
        hidden_act=cfgd["hidden_act"],
        axial_pos_embds=cfgd["axial_pos_embds"],
        **hash_info,
        max_abs_diff_logits_f32_vs_f64=max_diff,
        max_abs_diff_logits_f32_vs_f64_kept_positions=max_diff_kept,
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
        files={},
    )
    if c["grads"]:  # after every other output: HF's train mode reseeds the global RNG
        meta.update(gradient_reference(c, model64, ids, mask, records, causal, logits64, out_dir))
    for f in FILES[:-1]:
        p = os.path.join(out_dir, f)
        if os.path.exists(p):
            meta["files"][f] = file_info(p)
    with open(os.path.join(out_dir, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return meta


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures"),
                    help="fixture root (one folder per case); default <repo>/tests/fixtures")
    ap.add_argument("--examples", default=os.path.join(repo, "examples"),
                    help="examples root (writes <dir>/tiny-reformer); default <repo>/examples")
    ap.add_argument("--heads-out", default=os.path.join(repo, "tests", "fixtures_heads"),
                    help="root of the task-head cases; default <repo>/tests/fixtures_heads")
    ap.add_argument("--skip-fixtures", action="store_true")
    ap.add_argument("--skip-examples", action="store_true")
    ap.add_argument("--case", action="append", help="only these case names (repeatable)")
    ap.add_argument("--list", action="store_true", help="list cases and exit")
    args = ap.parse_args()

    if args.list:
        for c in CASES + HEAD_CASES + [EXAMPLE]:
            print(f"{c['name']}: {c['description']}")
        return 0

    if not torch.__version__.startswith(EXPECTED_TORCH) or transformers.__version__ != EXPECTED_TRANSFORMERS:
        print(f"warning: expected torch {EXPECTED_TORCH} / transformers {EXPECTED_TRANSFORMERS}, got "
              f"{torch.__version__} / {transformers.__version__}", file=sys.stderr)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    jobs = []
    if not args.skip_fixtures:
        jobs += [(c, os.path.join(args.out, c["name"])) for c in CASES]
        jobs += [(c, os.path.join(args.heads_out, c["name"])) for c in HEAD_CASES]
    if not args.skip_examples:
        jobs.append((EXAMPLE, os.path.join(args.examples, EXAMPLE["name"])))
    if args.case:
        jobs = [j for j in jobs if j[0]["name"] in args.case]
        if not jobs:
            print("no matching case", file=sys.stderr)
            return 2

    for c, d in jobs:
        m = generate(c, d)
        size = dir_size(d)
        print(f"{m['name']:34s} B={m['B']} L={m['L']:3d} Lp={m['padded_length']:3d} "
              f"r={m['num_hashes']} nb={m['num_buckets_resolved']} calls={m['n_lsh_calls']} "
              f"flips={m.get('hash_flips_f64_vs_f32', '-')} "
              f"maxdiff={m['max_abs_diff_logits_f32_vs_f64']:.3e} "
              f"kept={m['max_abs_diff_logits_f32_vs_f64_kept_positions']:.3e} size={size / 1024:.0f}KiB")
        if m.get("grad_reference") == "hf_f64_train":
            print(f"  grads: train-vs-eval logits {m['max_abs_diff_train_logits_vs_logits_f64']:.1e}, "
                  f"reversible vs plain autograd {m['max_rel_err_grads_reversible_vs_plain_autograd']:.1e}, "
                  f"finite differences {max(x['rel_err'] for x in m['finite_difference_checks']):.1e}")
        elif "grad_reference" in m:
            print(f"  grads: {m['grad_reference']}")
        if size > 2 * 1024 * 1024:
            raise RuntimeError(f"{d} is larger than 2 MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
