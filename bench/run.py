#!/usr/bin/env python3
"""reformc vs PyTorch peers on long sequences: time and whole-process peak memory.

Model `bench` (the default; all systems): 6 layers, D=256, 2 heads x 64, d_ff=512, vocab 320,
causal, batch 1 (`--batch B` for more sequences per forward; the table then adds tokens/s).
  - reformc: HF ReformerModelWithLMHead config (all-LSH, chunk 64, num_buckets automatic),
    compiled with `reformc compile --emit exe`, random HF-initialised weights;
  - hf: transformers 5.23.0 ReformerModelWithLMHead eager, same config;
  - reformer-pytorch: lucidrains' ReformerLM 1.4.4 (bucket 64, same sizes, axial positions);
  - sdpa-full: a plain pre-norm transformer of the same sizes with
    torch.nn.functional.scaled_dot_product_attention (full causal attention).
Model `paper` (`--model paper`; systems reformc, reformc-bf16, hf, hf-bf16): the Reformer paper's
enwik8 configuration as in HF's google/reformer-enwik8, with random weights: 12 layers
alternating local/LSH, D=1024, 8 heads x 128, d_ff 4096, chunk 128, 4 hashes, 512 buckets,
axial [128, 512], vocab 258 (146M parameters); run it at 8192 tokens with --hashes 4.
Every measurement is its own process (so peak RSS is per process), systems are interleaved
within each repeat, and the medians are reported. Forward time excludes process start-up and
weight loading, and every system is timed after one warm-up run in the same process; peak RSS is the whole process
(/usr/bin/time %M; for reformc, of a process that runs one forward). torch runs with set_num_threads = the
same thread count as reformc. The fp32 GEMM ceiling is torch.mm of 4096x4096 matrices.

Usage: /work/hfvenv/bin/python bench/run.py [--model bench|paper] [--lengths 1024,4096,16384,65536] [--hashes 1,4]
       [--threads 2] [--repeats 3] [--systems reformc,hf,reformer-pytorch,sdpa-full]
       (also reformc-bf16: `compile --precision bf16`; hf-bf16: HF under torch.autocast(bfloat16))
Writes bench/out/ (models, binaries) and bench/results.md, bench/results.json, bench/plot.png
(results-paper.* for the paper model; -bB and -tN suffixes for other batch sizes and thread counts).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
REFORMC = os.path.join(REPO, "target", "release", "reformc")


def config(hashes, model="bench"):
    if model == "paper":
        return paper_config(hashes)
    return dict(model_type="reformer", architectures=["ReformerModelWithLMHead"], is_decoder=True,
                vocab_size=320, hidden_size=256, num_attention_heads=2, attention_head_size=64,
                feed_forward_size=512, hidden_act="relu", num_hidden_layers=6, attn_layers=["lsh"] * 6,
                num_hashes=hashes, num_buckets=None, lsh_attn_chunk_length=64, local_attn_chunk_length=64,
                lsh_num_chunks_before=1, lsh_num_chunks_after=0, axial_pos_embds=True,
                axial_pos_shape=[256, 256], axial_pos_embds_dim=[64, 192], max_position_embeddings=65536,
                hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
                local_attention_probs_dropout_prob=0.0, pad_token_id=0)


def paper_config(hashes):
    """The Reformer paper's enwik8 model, as HF's google/reformer-enwik8 configures it (dropout off)."""
    return dict(model_type="reformer", architectures=["ReformerModelWithLMHead"], is_decoder=True,
                vocab_size=258, hidden_size=1024, num_attention_heads=8, attention_head_size=128,
                feed_forward_size=4096, hidden_act="relu", num_hidden_layers=12, attn_layers=["local", "lsh"] * 6,
                num_hashes=hashes, num_buckets=512, lsh_attn_chunk_length=128, local_attn_chunk_length=128,
                lsh_num_chunks_before=1, lsh_num_chunks_after=0, local_num_chunks_before=1,
                local_num_chunks_after=0, axial_pos_embds=True, axial_pos_shape=[128, 512],
                axial_pos_embds_dim=[256, 768], max_position_embeddings=65536, layer_norm_eps=1e-12,
                hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
                local_attention_probs_dropout_prob=0.0, pad_token_id=0, eos_token_id=2)


def make_model(hashes, model="bench"):
    d = os.path.join(OUT, f"model_r{hashes}" if model == "bench" else f"{model}_r{hashes}")
    os.makedirs(d, exist_ok=True)
    cfg_path = os.path.join(d, "config.json")
    json.dump(config(hashes, model), open(cfg_path, "w"), indent=1)
    w = os.path.join(d, "model.safetensors")
    if not os.path.exists(w):
        import torch
        from safetensors.torch import save_file
        from transformers import ReformerConfig, ReformerModelWithLMHead
        torch.manual_seed(hashes)
        c = config(hashes, model)
        c.pop("model_type"), c.pop("architectures")
        m = ReformerModelWithLMHead(ReformerConfig(**c))
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, w)
    return cfg_path, w


def ids_file(length, vocab=320, batch=1):
    import numpy as np
    name = f"ids_{length}" + ("" if vocab == 320 else f"_v{vocab}") + ("" if batch == 1 else f"_b{batch}")
    p = os.path.join(OUT, name + ".npy")
    if not os.path.exists(p):
        np.save(p, np.random.default_rng(length).integers(0, vocab, size=(batch, length), dtype=np.int64))
    return p


def timed(cmd):
    """Runs cmd under /usr/bin/time (a small parent, so the child's peak RSS is its own,
    not inherited from this Python process at fork); returns (stdout, stderr, peak RSS KiB)."""
    p = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KIB %M"] + cmd, capture_output=True, text=True)
    m = re.search(r"PEAK_RSS_KIB (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd[:3])}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout, p.stderr, int(m.group(1))


def measure_reformc(exe, ids, threads):
    """(seconds, peak RSS KiB): the time of a second run after a warm-up run in the same
    process, as peers.py times the PyTorch systems (the first run also faults in its buffers
    and the weights' pages); the peak RSS of a process that runs one forward, what a user who
    runs the executable once sees (a second run keeps the first one's freed buffers cached)."""
    cmd = [exe, "--input", ids, "--output", os.path.join(OUT, "out.npy"), "--threads", str(threads), "--time"]
    out, err, _ = timed(cmd + ["--repeat", "2"])
    m = re.search(r"run ([0-9.]+) ms", err)
    if not m:
        raise RuntimeError(f"{exe}: no timing in output: {out} {err}")
    _, _, rss = timed(cmd)
    return float(m.group(1)) / 1e3, rss


def measure_peer(system, length, hashes, threads, cfg, ids):
    cmd = [sys.executable, os.path.join(HERE, "peers.py"), "--system", system, "--length", str(length),
           "--hashes", str(hashes), "--threads", str(threads), "--repeats", "1", "--config", cfg, "--ids", ids]
    out, err, rss = timed(cmd)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"{system} L={length}: {err.strip()[-400:]}")
    r = json.loads(lines[-1])
    return r["times_s"][0], rss


def flops_of(cfg, length, batch=1):
    out = subprocess.run([REFORMC, "explain", cfg, "--seq-len", str(length), "--batch", str(batch), "--json", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["flops"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["bench", "paper"], default="bench")
    ap.add_argument("--lengths", default="1024,4096,16384,65536")
    ap.add_argument("--hashes", default="1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="sequences per forward (all systems)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="reformc,hf,reformer-pytorch,sdpa-full")
    ap.add_argument("--max-seconds", type=float, default=240, help="skip a system at longer lengths once one forward took longer")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    hashes = [int(x) for x in args.hashes.split(",")]
    systems = args.systems.split(",")
    if args.model == "paper":
        peers = {"reformer-pytorch", "sdpa-full"} & set(systems)
        if peers:
            sys.exit(f"--model paper: {', '.join(sorted(peers))} only build the bench model's sizes")
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(REFORMC):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)

    # GEMM ceilings
    gemm = []
    for _ in range(3):
        t, _ = measure_peer("torch-gemm", 4096, 1, args.threads, "", "")
        gemm.append(2 * 4096 ** 3 / t / 1e9)
    ceiling = statistics.median(gemm)
    print(f"fp32 GEMM ceiling (torch.mm 4096^2, {args.threads} threads): {ceiling:.0f} GFLOP/s (median of {gemm})")
    if any(s.endswith("bf16") for s in systems):
        t, _ = measure_peer("torch-gemm-bf16", 4096, 1, args.threads, "", "")
        print(f"bf16 GEMM rate (torch.mm 4096^2 bf16, {args.threads} threads): {2 * 4096 ** 3 / t / 1e9:.0f} GFLOP/s")

    results = []
    for r in hashes:
        cfg, w = make_model(r, args.model)
        for L in lengths:
            ids = ids_file(L, config(r, args.model)["vocab_size"], args.batch)
            exe = os.path.join(OUT, f"reformc_r{r}_L{L}" if args.model == "bench" else f"reformc_{args.model}_r{r}_L{L}")
            if args.batch > 1:
                exe += f"_b{args.batch}"
            t0 = time.perf_counter()
            batch = ["--batch", str(args.batch)]
            subprocess.run([REFORMC, "compile", cfg, "--weights", w, "-o", exe, "--seq-len", str(L), "--target-cpu", "host", "-q"] + batch,
                           check=True)
            compile_s = time.perf_counter() - t0
            if "reformc-bf16" in systems:
                subprocess.run([REFORMC, "compile", cfg, "--weights", w, "-o", exe + "_bf16", "--seq-len", str(L),
                                "--target-cpu", "host", "--precision", "bf16", "-q"] + batch, check=True)
            flops = flops_of(cfg, L, args.batch)
            runs = {s: [] for s in systems}
            for rep in range(args.repeats):
                for s in systems:
                    if s == "sdpa-full" and r != hashes[0]:
                        continue
                    prev = [x for x in results if x["system"] == s and x["hashes"] == r and x["time_s"] and x["time_s"] > args.max_seconds]
                    if prev:
                        continue
                    try:
                        if s in ("reformc", "reformc-bf16"):
                            t, rss = measure_reformc(exe + ("_bf16" if s == "reformc-bf16" else ""), ids, args.threads)
                        else:
                            t, rss = measure_peer(s, L, r, args.threads, cfg, ids)
                        runs[s].append((t, rss))
                        print(f"r={r} L={L} {s:17s} repeat {rep}: {t:8.3f} s, peak RSS {rss / 1024:7.0f} MiB", flush=True)
                    except Exception as e:  # a peer may run out of memory or time
                        print(f"r={r} L={L} {s}: failed: {e}", flush=True)
            for s in systems:
                if s == "sdpa-full" and r != hashes[0]:
                    # Full attention does not depend on the hash rounds: reuse the first measurement.
                    same = next(x for x in results if x["system"] == s and x["hashes"] == hashes[0] and x["length"] == L)
                    results.append(dict(same, hashes=r))
                    continue
                ts = [t for t, _ in runs[s]]
                results.append(dict(system=s, hashes=r, length=L, batch=args.batch, time_s=statistics.median(ts) if ts else None,
                                    times_s=ts, peak_rss_mib=max((x for _, x in runs[s]), default=0) / 1024,
                                    flops=flops, compile_s=compile_s if s == "reformc" else None))
    suffix = ("" if args.model == "bench" else f"-{args.model}") + ("" if args.batch == 1 else f"-b{args.batch}") + (
        "" if args.threads == 2 else f"-t{args.threads}")
    json.dump(dict(model=args.model, gemm_ceiling_gflops=ceiling, threads=args.threads, results=results),
              open(os.path.join(HERE, f"results{suffix}.json"), "w"), indent=1)
    write_markdown(results, ceiling, args, suffix)
    plot(results, hashes, suffix)


def write_markdown(results, ceiling, args, suffix):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    sizes = ("12 layers local/LSH, D=1024, 8 heads x 128, d_ff=4096, chunk 128, 512 buckets" if args.model == "paper"
             else "6 layers, D=256, 2 heads x 64, d_ff=512, chunk 64")
    lines = [f"# reformc benchmark\n", f"Machine: {cpu} ({isa}), {os.cpu_count()} cores.\n", f"{sizes}, causal, batch {args.batch}, {args.threads} threads; "
             f"median of {args.repeats} interleaved runs; fp32 GEMM ceiling (torch.mm 4096^2) {ceiling:.0f} GFLOP/s.\n",
             "| hashes | L | system | forward time | tokens/s | peak RSS | time / reformc | reformc GFLOP/s (% of GEMM ceiling) |",
             "|---|---|---|---|---|---|---|---|"]
    for x in results:
        ref = next(y for y in results if y["system"] == "reformc" and y["hashes"] == x["hashes"] and y["length"] == x["length"])
        t = f"{x['time_s']:.3f} s" if x["time_s"] else "skipped/failed"
        ratio = f"{x['time_s'] / ref['time_s']:.2f}x" if x["time_s"] and ref["time_s"] else "-"
        gf = ""
        if x["system"] == "reformc" and x["time_s"]:
            g = x["flops"] / x["time_s"] / 1e9
            gf = f"{g:.0f} ({100 * g / ceiling:.0f}%)"
        tps = f"{x.get('batch', 1) * x['length'] / x['time_s']:.0f}" if x["time_s"] else "-"
        lines.append(f"| {x['hashes']} | {x['length']} | {x['system']} | {t} | {tps} | {x['peak_rss_mib']:.0f} MiB | {ratio} | {gf} |")
    open(os.path.join(HERE, f"results{suffix}.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results, hashes, suffix):
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(hashes), figsize=(6 * len(hashes), 4.5), squeeze=False)
    for ax, r in zip(axes[0], hashes):
        for s in sorted({x["system"] for x in results}):
            pts = [(x["length"], x["time_s"]) for x in results if x["system"] == s and x["hashes"] == r and x["time_s"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("forward time (s)")
        ax.set_title(f"{r} hash round{'s' if r > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, f"plot{suffix}.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
