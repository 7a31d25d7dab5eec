#!/usr/bin/env python3
"""Compile time against depth: `reformc compile` of deep, narrow models.

Model: examples/tiny-reformer (hidden 64, 2 heads, d_ff 128, vocab 64) with its
layers repeated to N layers (alternating local / LSH attention, the weights of
its layers 0 and 1 copied), so that only depth changes. Each point is the
median wall time of `reformc compile --emit exe` (the release build) over
--repeats runs (wall and CPU time); the process is timed whole (frontend,
passes, LLVM, link).

Usage: python3 bench/compile_depth.py [--layers 50,100,200,400,1000] [--repeats 3]
Writes bench/out/depth/ (models, executables) and bench/compile_depth.md.
REFORMC=path/to/reformc times another build (e.g. an older one, for a comparison).
No Python package beyond the standard library is needed.
"""
import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out", "depth")
REFORMC = os.environ.get("REFORMC", os.path.join(REPO, "target", "release", "reformc"))
BASE = os.path.join(REPO, "examples", "tiny-reformer")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def make_model(layers):
    """Writes config.json and model.safetensors for `layers` layers; returns the directory."""
    d = os.path.join(OUT, f"L{layers}")
    os.makedirs(d, exist_ok=True)
    cfg = json.load(open(os.path.join(BASE, "config.json")))
    cfg["num_hidden_layers"] = layers
    cfg["attn_layers"] = ["local", "lsh"] * (layers // 2) + ["local"] * (layers % 2)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    base = read_safetensors(os.path.join(BASE, "model.safetensors"))
    prefix = "reformer.encoder.layers."
    out = {k: v for k, v in base.items() if not k.startswith(prefix)}
    for i in range(layers):
        src = f"{prefix}{i % 2}."
        for k, v in base.items():
            if k.startswith(src):
                out[f"{prefix}{i}." + k[len(src):]] = v
    write_safetensors(os.path.join(d, "model.safetensors"), out)
    return d


def compile_once(d):
    """Wall and CPU (user + system) seconds of one `reformc compile`."""
    cmd = [REFORMC, "compile", "-q", os.path.join(d, "config.json"),
           "--weights", os.path.join(d, "model.safetensors"), "-o", os.path.join(d, "model")]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"compile failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime


def cpu_name():
    """The CPU's model name plus family/model and AVX-512 support: VM model
    names are often just the vendor's brand, and machines differ."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    name = fields.get("model name", platform.processor() or "unknown")
    avx512 = "avx512f" in fields.get("flags", "").split()
    return (f"{name} (CPU family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            f"{'AVX-512' if avx512 else 'no AVX-512'})")


def report(rows, repeats):
    """rows: (layers, median wall s, median CPU s)."""
    wall = {n: w for n, w, _ in rows}
    cpu = {n: c for n, _, c in rows}
    lines = [
        "# Compile time against depth",
        "",
        f"`python3 bench/compile_depth.py` on {cpu_name()}, {os.cpu_count()} cores: "
        f"median of {repeats} runs of `reformc compile` (release build, exe with mmap weights) of "
        "examples/tiny-reformer repeated to N layers (hidden 64, alternating local/LSH, "
        "3 hashing variants). CPU is user + system time of the process (steadier than wall "
        "time on a shared machine).",
        "",
        "| layers | wall s | CPU s | CPU ms per layer |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {w:.2f} | {c:.2f} | {c / n * 1000:.1f} |" for n, w, c in rows]
    if 50 in wall and 400 in wall:
        lines += ["", f"Ratio 400/50 layers: {wall[400] / wall[50]:.2f} wall, "
                      f"{cpu[400] / cpu[50]:.2f} CPU (8 would be exactly linear)."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="50,100,200,400,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=os.path.join(HERE, "compile_depth.md"))
    a = ap.parse_args()
    if not os.path.exists(REFORMC):
        sys.exit(f"{REFORMC} is missing: run `cargo build --release` first")
    rows = []
    for n in [int(x) for x in a.layers.split(",")]:
        d = make_model(n)
        runs = [compile_once(d) for _ in range(a.repeats)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        rows.append((n, wall, cpu))
        print(f"{n} layers: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    text = report(rows, a.repeats)
    open(a.output, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
