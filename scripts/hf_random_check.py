#!/usr/bin/env python3
"""Differential check of reformc against Hugging Face on random Reformer configs.

Draws N random configurations (sizes, layer mixes, rounds, integer/factorized/auto
buckets, chunk windows, axial or plain positions, batch, lengths that need padding,
masks), builds each with scripts/hf_fixtures.py's generator into a temporary folder
(nothing is committed), runs `reformc run` on it, and reports the max abs error
against HF's float64 logits:
  - replaying HF's buckets (--lsh-buckets), the bar is 1e-4;
  - from HF's rotations only (--lsh-rotations), reformc hashes by itself; the
    error is reported together with the number of bucket decisions.

Needs the pinned venv of scripts/README.md. Not part of CI (it needs torch).
Usage: /work/hfvenv/bin/python scripts/hf_random_check.py --n 30 --seed 1
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_fixtures as hf  # noqa: E402


def random_case(rng, i):
    heads = rng.choice([1, 2, 3])
    head = rng.choice([4, 8, 16])
    hidden = rng.choice([16, 24, 32, 48])
    n_layers = rng.randint(1, 4)
    kinds = rng.choice([["lsh"], ["local"], ["lsh", "local"]])
    layers = [rng.choice(kinds) for _ in range(n_layers)]
    causal = rng.random() < 0.6
    lsh_chunk = rng.choice([4, 8, 12, 16])
    local_chunk = rng.choice([4, 8, 16])
    r = rng.choice([1, 2, 3, 4, 8])
    nb = rng.choice([2, 4, 6, 8, 16, [2, 4], [4, 2], [2, 2, 2], None])
    B = rng.randint(1, 3)
    L = rng.randint(2, 100)
    lcm = hf.lcm_chunk(dict(attn_layers=layers, lsh_attn_chunk_length=lsh_chunk, local_attn_chunk_length=local_chunk))
    Lp = -(-L // lcm) * lcm
    n1 = rng.choice([4, 8, 16])
    n0 = -(-Lp // n1) + rng.randint(0, 2)
    axial = rng.random() < 0.7
    d0 = rng.choice([x for x in range(2, hidden, 2)])
    cfg = dict(
        is_decoder=causal, attn_layers=layers, num_hashes=r, num_buckets=nb,
        num_attention_heads=heads, attention_head_size=head, hidden_size=hidden,
        feed_forward_size=rng.choice([16, 32, 64]), vocab_size=rng.choice([20, 50]),
        lsh_attn_chunk_length=lsh_chunk, local_attn_chunk_length=local_chunk,
        lsh_num_chunks_before=rng.choice([0, 1, 2]), lsh_num_chunks_after=0 if causal else rng.choice([0, 1]),
        local_num_chunks_before=rng.choice([0, 1, 2]), local_num_chunks_after=0 if causal else rng.choice([0, 1]),
        hidden_act=rng.choice(["relu", "gelu", "gelu_new", "silu"]),
        axial_pos_embds=axial, axial_pos_shape=[n0, n1], axial_pos_embds_dim=[d0, hidden - d0],
        max_position_embeddings=max(Lp, n0 * n1) if axial else Lp + rng.randint(0, 8),
    )
    if axial:
        cfg["max_position_embeddings"] = n0 * n1
    mask = None
    if rng.random() < 0.3:
        mask = [L] + [rng.randint(1, L) for _ in range(B - 1)]
        rng.shuffle(mask)
    return hf.case(f"random_{i:03d}", "random", seed=1000 + i, B=B, L=L, mask_keep=mask, **cfg)


def run_reformc(binary, d, hashing):
    args = [binary, "run", f"{d}/config.json", "--weights", f"{d}/model.safetensors", "--input", f"{d}/input_ids.npy",
            "--output", f"{d}/out.npy", "--compare", f"{d}/logits_f64.npy"]
    if os.path.exists(f"{d}/attention_mask.npy"):
        args += ["--attention-mask", f"{d}/attention_mask.npy"]
    if hashing and os.path.exists(f"{d}/lsh_{hashing}.npy"):
        args += [f"--lsh-{hashing}", f"{d}/lsh_{hashing}.npy"]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    err = float(p.stdout.strip().splitlines()[-1].split("=")[-1])
    return err, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reformc", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release", "reformc"))
    args = ap.parse_args()
    hf.torch.set_num_threads(1)
    hf.transformers.logging.set_verbosity_error()
    rng = random.Random(args.seed)
    worst, failures = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            c = random_case(rng, i)
            d = os.path.join(tmp, c["name"])
            try:
                m = hf.generate(c, d)
            except Exception as e:  # HF itself rejects some random configs
                print(f"{c['name']}: HF rejected the config: {type(e).__name__}: {str(e)[:100]}")
                continue
            e_b, msg_b = run_reformc(args.reformc, d, "buckets")
            e_r, msg_r = run_reformc(args.reformc, d, "rotations")
            ok = e_b is not None and e_b <= 1e-4
            failures += not ok
            worst = max(worst, e_b or 0.0)
            cfg = c["cfg"]
            print(f"{c['name']} B={c['B']} L={c['L']:3d} Lp={m['padded_length']:3d} layers={','.join(cfg['attn_layers'])} "
                  f"r={cfg['num_hashes']} nb={m['num_buckets_resolved']} causal={int(cfg['is_decoder'])} "
                  f"mask={int(c['mask_keep'] is not None)} buckets-replayed err={e_b if e_b is not None else msg_b} "
                  f"own-hashing err={e_r if e_r is not None else msg_r} {'ok' if ok else 'FAIL'}")
    print(f"random check: {args.n - failures} passed, {failures} failed (worst replayed error {worst:.2e})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
