#!/usr/bin/env python3
"""One measurement of one peer system in a fresh process (called by bench/run.py); `hf-bf16` is\nHF under torch.autocast(bfloat16), `torch-gemm-bf16` torch.mm of bf16 matrices.

Prints one JSON line: {"system", "length", "hashes", "times_s": [...], "max_rss_kib"}.
Times cover the forward pass only (inference, torch.no_grad), after one warm-up run.
"""
import argparse
import json
import resource
import sys
import time

import torch


def hf_model(args):
    from transformers import ReformerConfig, ReformerModelWithLMHead
    cfg = json.load(open(args.config))
    cfg.pop("model_type", None)
    cfg.pop("architectures", None)
    model = ReformerModelWithLMHead(ReformerConfig(**cfg)).eval()
    return lambda ids: model(input_ids=ids, use_cache=False).logits


def reformer_pytorch_model(args):
    from reformer_pytorch import ReformerLM
    model = ReformerLM(num_tokens=320, dim=256, depth=6, max_seq_len=max(args.length, 128), heads=2, dim_head=64,
                       bucket_size=64, n_hashes=args.hashes, ff_mult=2, ff_chunks=1, causal=True,
                       axial_position_emb=True, axial_position_shape=(256, 256)).eval()
    return lambda ids: model(ids)


class SdpaBlock(torch.nn.Module):
    def __init__(self, d=256, heads=2, head=64, ff=512):
        super().__init__()
        self.heads, self.head = heads, head
        self.ln1 = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * heads * head, bias=False)
        self.out = torch.nn.Linear(heads * head, d, bias=False)
        self.ln2 = torch.nn.LayerNorm(d)
        self.ff = torch.nn.Sequential(torch.nn.Linear(d, ff), torch.nn.ReLU(), torch.nn.Linear(ff, d))

    def forward(self, x):
        b, l, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.heads, self.head).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, l, -1))
        return x + self.ff(self.ln2(x))


def sdpa_model(args):
    emb = torch.nn.Embedding(320, 256)
    pos = torch.nn.Embedding(65536, 256)
    blocks = torch.nn.Sequential(*[SdpaBlock() for _ in range(6)])
    ln, head = torch.nn.LayerNorm(256), torch.nn.Linear(256, 320, bias=False)
    model = torch.nn.ModuleList([emb, pos, blocks, ln, head]).eval()

    def fwd(ids):
        x = emb(ids) + pos(torch.arange(ids.shape[1]))[None]
        return head(ln(blocks(x)))
    return fwd


def hf_bf16_model(args):
    """HF eager under CPU bf16 autocast (what a torch user reaches for first)."""
    fwd = hf_model(args)

    def run(ids):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fwd(ids)
    return run


def gemm_ceiling(args):
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda _ids: torch.mm(a, b)


def gemm_ceiling_bf16(args):
    n = 4096
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    return lambda _ids: torch.mm(a, b)


SYSTEMS = {"hf": hf_model, "hf-bf16": hf_bf16_model, "reformer-pytorch": reformer_pytorch_model,
           "sdpa-full": sdpa_model, "torch-gemm": gemm_ceiling, "torch-gemm-bf16": gemm_ceiling_bf16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", choices=SYSTEMS, required=True)
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--hashes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", help="HF config.json (hf)")
    ap.add_argument("--ids", help="token ids .npy")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import numpy as np
    ids = torch.from_numpy(np.load(args.ids)) if args.ids else torch.randint(0, 320, (1, args.length))
    fwd = SYSTEMS[args.system](args)
    times = []
    with torch.no_grad():
        fwd(ids)  # warm-up (also resolves HF's automatic num_buckets)
        for _ in range(args.repeats):
            t = time.perf_counter()
            fwd(ids)
            times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(system=args.system, length=args.length, hashes=args.hashes, times_s=times, max_rss_kib=rss)))


if __name__ == "__main__":
    sys.exit(main())
