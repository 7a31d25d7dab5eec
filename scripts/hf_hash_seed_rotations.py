#!/usr/bin/env python3
"""Write the LSH rotations Hugging Face draws for a config with `hash_seed`, for
`reformc run/compile --lsh-rotations`.

HF's `LSHSelfAttention._hash_vectors` calls `torch.manual_seed(hash_seed)` right
before every rotation draw, so each LSH layer gets the same tensor,
`torch.randn((H, d, r, S/2))` on the CPU in float32 (S = num_buckets, or the
sum of the factors when factorized). reformc cannot reproduce torch's CPU
normal generator (Mersenne Twister plus a Box-Muller fill whose vectorised form
depends on the CPU), so this script asks torch for the draw and stacks it once
per LSH layer into reformc's layout [n_lsh_layers, H, d, r, S/2].

`num_buckets: null` is resolved by HF at the first forward from the padded
sequence length; pass the resolved value with --num-buckets (an int, or a
comma-separated list of factors) in that case.

Usage:
  /work/hfvenv/bin/python scripts/hf_hash_seed_rotations.py config.json -o rotations.npy \\
      [--num-buckets 8 | --num-buckets 4,8]
"""

import argparse
import json
import sys

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="the HF config.json (model_type reformer, hash_seed set)")
    ap.add_argument("-o", "--output", required=True, help="the .npy file to write (float32)")
    ap.add_argument("--num-buckets", help="resolved num_buckets when the config has null: N or F1,F2")
    args = ap.parse_args()

    with open(args.config) as fh:
        cfg = json.load(fh)
    seed = cfg.get("hash_seed")
    if seed is None:
        print(f"error: {args.config}: field `hash_seed`: null; HF then draws from the unseeded "
              "global generator and there is nothing to reproduce", file=sys.stderr)
        return 2
    nb = cfg.get("num_buckets")
    if args.num_buckets is not None:
        parts = [int(x) for x in args.num_buckets.split(",")]
        nb = parts[0] if len(parts) == 1 else parts
    if nb is None:
        print(f"error: {args.config}: field `num_buckets`: null (automatic); pass the value HF "
              "resolves for your length with --num-buckets", file=sys.stderr)
        return 2
    rot = nb if isinstance(nb, int) else sum(nb)
    heads = cfg.get("num_attention_heads", 12)
    head_dim = cfg.get("attention_head_size", 64)
    rounds = cfg.get("num_hashes", 1)
    layers = cfg.get("attn_layers", ["local", "lsh", "local", "lsh", "local", "lsh"])
    n_lsh = sum(1 for t in layers if t == "lsh")
    torch.manual_seed(seed)
    r = torch.randn((heads, head_dim, rounds, rot // 2), dtype=torch.float32)
    stacked = np.stack([r.numpy()] * n_lsh).astype(np.float32)
    np.save(args.output, stacked, allow_pickle=False)
    print(f"wrote rotations {list(stacked.shape)} float32 to {args.output} "
          f"(hash_seed={seed}, the same draw for each of {n_lsh} LSH layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
