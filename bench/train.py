#!/usr/bin/env python3
"""Training step: reformc vs Hugging Face, side by side (issue 12's bench model).

Model: HF ReformerModelWithLMHead, all-LSH, D=256, 2 heads x 64, d_ff 512, LSH chunk 64, 1 hash,
vocab 320, batch 1, num_buckets automatic, dropout 0; 2 and 12 layers; random HF-initialised weights.
  - hf: transformers 5.23.0 eager, model.train(), loss = mean cross-entropy (shifted), backward()
    through HF's reversible layers; the step time is the median of `--steps` steps after one warm-up
    step, inside one process; peak RSS is that process's (/usr/bin/time %M).
  - reformc step exe: `reformc compile --train` (weights embedded, no LLVM in the process) run on the
    same ids with `--time --repeat <steps + 1>`, like HF: the step time is its `run` figure, the
    median of the steps after the first, warm-up one (forward + loss + backward with reversible
    recomputation, gradients to memory), peak RSS the process's.
  - reformc train: `reformc train` on the same ids (as a 1-D token stream of exactly one window, Adam), the
    step compiled once by the LLVM JIT; the step time is the median over `--steps` steps of L / the
    progress line's tokens/s (forward + loss + backward with reversible recomputation + the Adam
    update); the process time includes parsing, passes and the JIT compile, and peak RSS is the
    process's.
Each measurement is its own process; the systems alternate within each repeat; medians reported.
torch runs with set_num_threads = --threads.

Usage: /work/hfvenv/bin/python bench/train.py [--lengths 1024,4096] [--layers 2,12] [--repeats 3]
       [--threads 2] [--reformc target/release/reformc] [--bf16]
With --bf16 it also runs the step exe compiled with --precision bf16 (mixed precision) and HF's
step under torch.autocast("cpu", dtype=torch.bfloat16), in the same repeats, and prints a
second table of the four.
Writes bench/out/train_* and prints a markdown table (copy it into bench/train_results.md).
The 1-D token stream has exactly L tokens, so every step trains on the same window as HF's.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")


def config(layers, length):
    side = 1 << ((length.bit_length() - 1) // 2)
    return dict(model_type="reformer", architectures=["ReformerModelWithLMHead"], is_decoder=True,
                vocab_size=320, hidden_size=256, num_attention_heads=2, attention_head_size=64,
                feed_forward_size=512, hidden_act="relu", num_hidden_layers=layers,
                attn_layers=["lsh"] * layers, num_hashes=1, num_buckets=None, lsh_attn_chunk_length=64,
                local_attn_chunk_length=64, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
                axial_pos_embds=True, axial_pos_shape=[side, length // side], axial_pos_embds_dim=[64, 192],
                max_position_embeddings=length, hidden_dropout_prob=0.0,
                lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
                pad_token_id=0)


def make_model(layers, length):
    d = os.path.join(OUT, f"train_l{layers}_n{length}")
    os.makedirs(d, exist_ok=True)
    cfg = config(layers, length)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    w = os.path.join(d, "model.safetensors")
    ids = os.path.join(d, "ids.npy")
    if not os.path.exists(w):
        import numpy as np
        import torch
        from safetensors.torch import save_file
        from transformers import ReformerConfig, ReformerModelWithLMHead
        torch.manual_seed(layers)
        c = dict(cfg)
        c.pop("model_type"), c.pop("architectures")
        m = ReformerModelWithLMHead(ReformerConfig(**c))
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, w)
        np.save(ids, np.random.default_rng(0).integers(0, 320, (1, length)).astype(np.int64))
    tokens = os.path.join(d, "tokens.npy")
    if not os.path.exists(tokens):
        import numpy as np
        np.save(tokens, np.load(ids).reshape(-1))
    return d


HF_STEP = r"""
import json, statistics, sys, time, torch
from transformers import ReformerConfig, ReformerModelWithLMHead
from safetensors.torch import load_file
import numpy as np
d, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bf16 = len(sys.argv) > 4 and sys.argv[4] == "bf16"
torch.set_num_threads(threads)
c = json.load(open(d + "/config.json")); c.pop("model_type"); c.pop("architectures")
m = ReformerModelWithLMHead(ReformerConfig(**c)); m.load_state_dict(load_file(d + "/model.safetensors"), strict=False)
m.train()
ids = torch.from_numpy(np.load(d + "/ids.npy"))
def step():
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = m(input_ids=ids).logits
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.item()
step()
times = []
for _ in range(steps):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print("STEP", statistics.median(times))
"""


def timed(cmd):
    r = subprocess.run(["/usr/bin/time", "-f", "WALL %e RSS %M"] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    wall = float(re.search(r"WALL ([0-9.]+)", r.stderr).group(1))
    rss = int(re.search(r"RSS (\d+)", r.stderr).group(1)) / 1024
    return wall, rss, r.stdout + r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--layers", default="2,12")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reformc", default=os.path.join(REPO, "target", "release", "reformc"))
    ap.add_argument("--chunk-ff", type=int, default=None,
                    help="chunk reformc's feed-forward (its backward too) in N positions: --chunk-ff N")
    ap.add_argument("--bf16", action="store_true",
                    help="also run the step exe with --precision bf16 and HF under torch.autocast(cpu, bfloat16), "
                         "and print a second table of the four")
    a = ap.parse_args()
    chunk = ["--chunk-ff", str(a.chunk_ff)] if a.chunk_ff else []
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    print(f"machine: {cpu} ({isa}), {os.cpu_count()} cores; threads {a.threads}; reformc {a.reformc} {' '.join(chunk)}\n")
    print("| layers | L | HF step (s) | HF peak (MiB) | step exe (s) | step exe peak (MiB) | train step (s) | train peak (MiB) | train process (JIT compile) (s) | engine | speed-up (HF/step exe) | step exe/HF peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mixed = []
    for length in map(int, a.lengths.split(",")):
        for layers in map(int, a.layers.split(",")):
            d = make_model(layers, length)
            hf, rc, ex, ex16, hf16 = [], [], [], [], []
            engine = "?"
            exe = os.path.join(d, "step")
            exe16 = os.path.join(d, "step_bf16")
            for path, extra in [(exe, [])] + ([(exe16, ["--precision", "bf16"])] if a.bf16 else []):
                subprocess.run([a.reformc, "compile", "--train", d + "/config.json", "--weights", d + "/model.safetensors",
                                "--seq-len", str(length), "-o", path, "--target-cpu", "host", "-q"] + chunk + extra,
                               check=True)

            def step_exe(path):
                _, rss, out = timed([path, "--input", d + "/ids.npy", "--output", d + "/grads.safetensors",
                                     "--threads", str(a.threads), "--time", "--repeat", str(a.steps + 1)])
                return float(re.search(r"run ([0-9.]+) ms", out).group(1)) / 1000, rss

            def hf_step(precision):
                _, rss, out = timed([sys.executable, "-c", HF_STEP, d, str(a.steps), str(a.threads), precision])
                return float(re.search(r"STEP ([0-9.e-]+)", out).group(1)), rss

            for _ in range(a.repeats):
                ex.append(step_exe(exe))
                hf.append(hf_step("f32"))
                if a.bf16:
                    ex16.append(step_exe(exe16))
                    hf16.append(hf_step("bf16"))
                wall, rss, out = timed([a.reformc, "train", d + "/config.json", "--weights", d + "/model.safetensors",
                                        "--data", d + "/tokens.npy", "--steps", str(a.steps), "--seq-len", str(length),
                                        "--out", d + "/ckpt.safetensors", "--threads", str(a.threads)] + chunk)
                rates = [float(x) for x in re.findall(r"tokens/s (\d+)", out)]
                engine = "LLVM JIT" if "LLVM JIT" in out else "interpreter"
                compile_s = float(re.search(r"in ([0-9.]+) s", out).group(1)) if "compiled" in out else 0.0
                rc.append((statistics.median(length / r for r in rates), rss, wall, compile_s))
            ht, hm = statistics.median(t for t, _ in hf), statistics.median(m for _, m in hf)
            rt = statistics.median(x[0] for x in rc)
            rm = statistics.median(x[1] for x in rc)
            rw = statistics.median(x[2] for x in rc)
            rcomp = statistics.median(x[3] for x in rc)
            et = statistics.median(t for t, _ in ex)
            em = statistics.median(m for _, m in ex)
            print(f"| {layers} | {length} | {ht:.2f} | {hm:.0f} | {et:.2f} | {em:.0f} | {rt:.2f} | {rm:.0f} | {rw:.1f} ({rcomp:.1f}) | {engine} | {ht / et:.2f}x | {em / hm:.2f}x |", flush=True)
            if a.bf16:
                med = lambda xs, i: statistics.median(x[i] for x in xs)
                mixed.append((layers, length, ht, med(hf16, 0), et, med(ex16, 0), hm, med(hf16, 1), em, med(ex16, 1)))
    if mixed:
        print("\nbf16 (step exe --precision bf16; HF under torch.autocast(\"cpu\", dtype=torch.bfloat16)), same runs:\n")
        print("| layers | L | HF fp32 (s) | HF bf16 autocast (s) | step exe fp32 (s) | step exe bf16 (s) | bf16 exe vs HF fp32 | bf16 exe vs HF bf16 | peak MiB: HF fp32 / HF bf16 / exe fp32 / exe bf16 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (layers, length, ht, h16, et, e16, hm, hm16, em, em16) in mixed:
            print(f"| {layers} | {length} | {ht:.2f} | {h16:.2f} | {et:.2f} | {e16:.2f} | {ht / e16:.2f}x | {h16 / e16:.2f}x | {hm:.0f} / {hm16:.0f} / {em:.0f} / {em16:.0f} |", flush=True)

if __name__ == "__main__":
    main()
