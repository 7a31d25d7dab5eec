#!/usr/bin/env python3
"""reformc's MLIR output against reformc's own LLVM executable, side by side in one run.

Model: bench/run.py's (6 layers all-LSH, D=256, 2 heads x 64, d_ff 512, chunk 64, 1 hash,
causal, batch 1), random weights (normal, std 0.02; the names and shapes from `reformc dump`),
`--lsh-source seeded` (the module draws the rotations with the same Philox keys as the
executable, so all three give the same logits).

Systems, each forward in its own process, interleaved within each repeat:
  - llvm:      `reformc compile --emit exe` (the executable's own `--time` forward time);
  - iree-cpu:  `reformc compile --emit mlir` (weights embedded) -> `iree-compile` llvm-cpu
               (host CPU) -> `iree-benchmark-module` (forward time) and `iree-run-module`
               (peak RSS of a whole run);
  - iree-cpu-dt: the same module compiled with `--iree-opt-data-tiling` as well (IREE's packed
               matmul layouts and mmt4d kernels);
  - mlir-jit:  `reformc run --backend mlir` (reformc's MLIR CPU pipeline + ExecutionEngine;
               the forward time it prints, compile excluded).
It also reports `--emit mlir` and `iree-compile` times, and checks that the three outputs agree.

Usage: .venv-iree/bin/python bench/mlir.py [--lengths 16384,65536] [--threads 2] [--repeats 3]
       [--systems llvm,iree-cpu,iree-cpu-dt,mlir-jit] [--reformc target/release/reformc]
Needs only what scripts/setup.sh installs (IREE and numpy in .venv-iree). Writes bench/out/mlir_*
and bench/mlir_results.md.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import OUT, REPO, config, ids_file, timed  # noqa: E402

IREE = os.path.join(REPO, ".venv-iree", "bin")


REFORMC = os.path.join(REPO, "target", "release", "reformc")


def make_model():
    """The bench model's config and random weights, written without torch."""
    import json

    import numpy as np
    d = os.path.join(OUT, "mlir_model")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "config.json")
    json.dump(config(1), open(cfg, "w"), indent=1)
    w = os.path.join(d, "model.safetensors")
    if os.path.exists(w):
        return cfg, w
    ir = subprocess.run([REFORMC, "dump", cfg, "--seq-len", "1024", "-q"], capture_output=True, text=True, check=True).stdout
    rng = np.random.default_rng(1)
    tensors = {}
    for name, shape in re.findall(r'weight \{[^}]*name="([^"]+)"[^}]*\} : f32\[([0-9,]*)\]', ir):
        dims = [int(x) for x in shape.split(",")] if shape else []
        ones = name.endswith("layer_norm.weight")
        tensors[name] = np.ones(dims, np.float32) if ones else (0.02 * rng.standard_normal(dims)).astype(np.float32)
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(w, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for t in tensors.values():
            f.write(t.tobytes())
    return cfg, w


def seconds(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: exit {p.returncode}: {p.stderr.strip()[-600:]}")
    return time.perf_counter() - t0


def build(cfg, w, length):
    exe = os.path.join(OUT, f"mlir_llvm_L{length}")
    mlir = os.path.join(OUT, f"mlir_L{length}.mlir")
    vmfb = os.path.join(OUT, f"mlir_L{length}.vmfb")
    vmfb_dt = os.path.join(OUT, f"mlir_L{length}_dt.vmfb")
    seconds([REFORMC, "compile", cfg, "--weights", w, "-o", exe, "--seq-len", str(length), "--target-cpu", "host", "-q"])
    emit_s = seconds([REFORMC, "compile", cfg, "--weights", w, "--emit", "mlir", "-o", mlir,
                      "--seq-len", str(length), "--lsh-source", "seeded", "-q"])
    flags = [os.path.join(IREE, "iree-compile"), mlir, "--iree-hal-target-device=local",
             "--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=host"]
    iree_s = seconds(flags + ["-o", vmfb])
    iree_dt_s = seconds(flags + ["--iree-opt-data-tiling", "-o", vmfb_dt])
    return exe, {"iree-cpu": vmfb, "iree-cpu-dt": vmfb_dt}, emit_s, (iree_s, iree_dt_s)


def run_llvm(exe, ids, threads, out):
    _, err, rss = timed([exe, "--input", ids, "--output", out, "--threads", str(threads), "--time"])
    m = re.search(r"run ([0-9.]+) ms", err)
    if not m:
        raise RuntimeError(f"{exe}: no timing in {err}")
    return float(m.group(1)) / 1e3, rss


def iree_inputs(signature, ids):
    """`--input` flags in the signature's order: the ids, a mask of ones, seed 0."""
    import json

    import numpy as np
    flags = []
    for x in json.load(open(signature))["inputs"]:
        if x["name"] == "input_ids":
            flags.append(f"--input=@{ids}")
        elif x["name"] == "attention_mask":
            mask = ids.replace(".npy", "_mask.npy")
            if not os.path.exists(mask):
                np.save(mask, np.ones(np.load(ids).shape, np.int64))
            flags.append(f"--input=@{mask}")
        elif x["name"] == "seed":
            flags.append("--input=i64=0")
        else:
            raise RuntimeError(f"{signature}: unexpected input {x['name']}")
    return flags


def run_iree(vmfb, ids, threads, out):
    signature = vmfb.replace("_dt.vmfb", ".vmfb").replace(".vmfb", ".mlir.json")
    common = [f"--device=local-task", f"--module={vmfb}", "--function=forward",
              f"--task_topology_max_group_count={threads}"] + iree_inputs(signature, ids)
    _, _, rss = timed([os.path.join(IREE, "iree-run-module")] + common + [f"--output=@{out}"])
    p = subprocess.run([os.path.join(IREE, "iree-benchmark-module")] + common + ["--benchmark_repetitions=1"],
                       capture_output=True, text=True)
    m = re.search(r"BM_forward\S*\s+([0-9.]+) ms", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"iree-benchmark-module: {p.stdout[-400:]} {p.stderr[-400:]}")
    return float(m.group(1)) / 1e3, rss


def run_mlir_jit(cfg, w, ids, out):
    _, err, rss = timed([REFORMC, "run", cfg, "--weights", w, "--input", ids, "--output", out,
                         "--backend", "mlir"])
    m = re.search(r"forward ([0-9.]+) ms", err)
    if not m:
        raise RuntimeError(f"run --backend mlir: no forward time in {err[-400:]}")
    return float(m.group(1)) / 1e3, rss


def max_rel(a, b):
    import numpy as np
    x, y = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    return float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(y)))))


def main():
    global REFORMC
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="16384,65536")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="llvm,iree-cpu,iree-cpu-dt,mlir-jit")
    ap.add_argument("--reformc", default=None, help="the reformc binary (built in release when missing)")
    args = ap.parse_args()
    REFORMC = args.reformc or REFORMC
    systems = args.systems.split(",")
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(REFORMC):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    cfg, w = make_model()
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        ids = ids_file(length)
        exe, vmfbs, emit_s, (iree_s, iree_dt_s) = build(cfg, w, length)
        print(f"L={length}: --emit mlir {emit_s:.2f} s, iree-compile {iree_s:.1f} s "
              f"({iree_dt_s:.1f} s with data tiling)", flush=True)
        runs = {s: [] for s in systems}
        outs = {s: os.path.join(OUT, f"mlir_out_{s}_L{length}.npy") for s in systems}
        for rep in range(args.repeats):
            for s in systems:
                try:
                    if s == "llvm":
                        r = run_llvm(exe, ids, args.threads, outs[s])
                    elif s in vmfbs:
                        r = run_iree(vmfbs[s], ids, args.threads, outs[s])
                    else:
                        r = run_mlir_jit(cfg, w, ids, outs[s])
                    runs[s].append(r)
                    print(f"L={length} {s:9s} repeat {rep}: {r[0]:8.3f} s, peak RSS {r[1] / 1024:6.0f} MiB", flush=True)
                except Exception as e:  # noqa: BLE001 -- a system may fail or run out of memory
                    print(f"L={length} {s}: failed: {e}", flush=True)
        base = statistics.median(t for t, _ in runs["llvm"]) if runs.get("llvm") else None
        for s in systems:
            if not runs[s]:
                rows.append((length, s, None, None, None, "failed"))
                continue
            t = statistics.median(x for x, _ in runs[s])
            rss = max(x for _, x in runs[s]) / 1024
            diff = max_rel(outs[s], outs["llvm"]) if "llvm" in systems and runs["llvm"] and s != "llvm" else 0.0
            rows.append((length, s, t, rss, t / base if base else None, f"{diff:.1e}"))
        rows.append((length, "compile", emit_s, None, None,
                     f"iree-compile {iree_s:.1f} s ({iree_dt_s:.1f} s with data tiling)"))
    lines = ["# reformc MLIR benchmark", "",
             f"bench/run.py's model, 1 hash, batch 1, {args.threads} threads, median of {args.repeats}.", "",
             "| L | system | forward time | peak RSS | time / llvm | max rel. diff vs llvm |", "|---|---|---|---|---|---|"]
    for length, s, t, rss, ratio, note in rows:
        if s == "compile":
            lines.append(f"| {length} | `--emit mlir` | {t:.2f} s | | | {note} |")
            continue
        tt = f"{t:.3f} s" if t is not None else "failed"
        rr = f"{rss:.0f} MiB" if rss is not None else "-"
        ra = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(f"| {length} | {s} | {tt} | {rr} | {ra} | {note} |")
    open(os.path.join(HERE, "mlir_results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
