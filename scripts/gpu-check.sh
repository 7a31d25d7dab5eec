#!/usr/bin/env bash
# The GPU check: every Hugging Face fixture run on the GPU by
# `reformc run --backend gpu` against HF's float64 logits (max |err| <= 1e-4)
# and as a GPU executable (`compile --target gpu --emit exe`) against the
# interpreter on the same inputs (1e-4), then a timing of the forward pass at a long length, with a summary at the
# end. Needs an NVIDIA driver (libcuda.so.1); no CUDA toolkit.
#
# On a machine with this project's toolchain (or network to install it), it
# builds reformc first. On a machine with neither (the lent GPU machines have
# no network), give it a prebuilt binary: REFORMC_BIN=path/to/reformc, and
# libdevice with REFORMC_LIBDEVICE (or the .venv-gpu that scripts/setup.sh
# makes, carried along).
#   usage: scripts/gpu-check.sh [--device N] [--gpu-arch sm_90] [--len 65536]
set -uo pipefail
cd "$(dirname "$0")/.."
device=0 arch=sm_90 len=65536
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --gpu-arch) arch=$2; shift 2 ;;
    --len) len=$2; shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${REFORMC_BIN:-target/release/reformc}
# A gzipped binary (scripts/gpu-bundle.sh) is unpacked beside /tmp.
if [ "${bin%.gz}" != "$bin" ] && [ -f "$bin" ]; then
  gunzip -c "$bin" > /tmp/gpu-check-reformc && chmod +x /tmp/gpu-check-reformc
  bin=/tmp/gpu-check-reformc
fi
if [ ! -x "$bin" ]; then
  source scripts/setup.sh
  cargo build --release --quiet || exit 1
  bin=target/release/reformc
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
gpu=(--backend gpu --device "$device" --gpu-arch "$arch")
pass=0 fail=0 failures=()
for dir in tests/fixtures/*/; do
  name=$(basename "$dir")
  args=(run "$dir/config.json" --weights "$dir/model.safetensors" --input "$dir/input_ids.npy"
        --output "/tmp/gpu-check-$name.npy" --compare "$dir/logits_f64.npy" -q "${gpu[@]}")
  [ -f "$dir/attention_mask.npy" ] && args+=(--attention-mask "$dir/attention_mask.npy")
  [ -f "$dir/lsh_buckets.npy" ] && args+=(--lsh-buckets "$dir/lsh_buckets.npy")
  out=$("$bin" "${args[@]}" 2>&1)
  err=$(printf '%s\n' "$out" | sed -n 's/.*max |output - .*| = \([0-9.eE+-]*\).*/\1/p' | tail -1)
  # The same model as a GPU executable, on the same inputs.
  source=seeded; [ -f "$dir/lsh_buckets.npy" ] && source=buckets
  exe_err=""
  if ! command -v "${CC:-cc}" >/dev/null; then
    exe_err=skipped
  elif "$bin" compile "$dir/config.json" --weights "$dir/model.safetensors" --target gpu --emit exe \
       --gpu-arch "$arch" --lsh-source "$source" -o "/tmp/gpu-check-$name" -q >/dev/null 2>&1; then
    exe_args=(--input "$dir/input_ids.npy" --output "/tmp/gpu-check-$name-exe.npy" --device "$device")
    [ -f "$dir/attention_mask.npy" ] && exe_args+=(--attention-mask "$dir/attention_mask.npy")
    [ -f "$dir/lsh_buckets.npy" ] && exe_args+=(--lsh-buckets "$dir/lsh_buckets.npy")
    if "/tmp/gpu-check-$name" "${exe_args[@]}" >/dev/null 2>&1; then
      exe_err=$("$bin" run "$dir/config.json" --weights "$dir/model.safetensors" --input "$dir/input_ids.npy" \
        --output /tmp/gpu-check-ref.npy --compare "/tmp/gpu-check-$name-exe.npy" --interp -q \
        "${exe_args[@]:6}" 2>&1 | sed -n 's/.*max |output - .*| = \([0-9.eE+-]*\).*/\1/p' | tail -1)
    fi
  fi
  if [ -n "$err" ] && awk -v e="$err" 'BEGIN { exit !(e <= 1e-4) }' &&
     { [ "$exe_err" = skipped ] || { [ -n "$exe_err" ] && awk -v e="$exe_err" 'BEGIN { exit !(e <= 1e-4) }'; }; }; then
    pass=$((pass + 1)); echo "ok   $name  max|err| $err (run), $exe_err (executable vs interpreter)"
    [ "$exe_err" = skipped ] && echo "     (the executable check was skipped: no C compiler)"
  else
    fail=$((fail + 1)); failures+=("$name"); echo "FAIL $name: run ${err:-failed}, executable ${exe_err:-failed}: $(printf '%s\n' "$out" | tail -1)"
  fi
done
# Timing: the issue's 6-layer LSH bench model (bench/lsh6_config.json, the
# config bench/run.py builds) with random weights, forward at --len tokens
# of random ids, the second of two runs (the first also loads the kernels).
timing="not run"
if command -v python3 >/dev/null; then
  model=bench/lsh6_config.json
  "$bin" dump "$model" --seq-len "$len" -q > /tmp/gpu-check-lsh6.ir 2>/dev/null
  # Random weights for every weight the IR names, and token ids [1, len], as
  # safetensors and .npy written without numpy.
  python3 - "$len" <<'PY'
import json, random, re, struct, sys
rng = random.Random(0)
header, blobs, at = {}, [], 0
for line in open("/tmp/gpu-check-lsh6.ir"):
    m = re.search(r'weight \{[^}]*name="([^"]+)"[^}]*\} : f32\[([0-9,]*)\]', line)
    if not m or m.group(1) in header:
        continue
    shape = [int(d) for d in m.group(2).split(",") if d]
    n = 1
    for d in shape:
        n *= d
    blob = struct.pack("<%df" % n, *(rng.gauss(0.0, 0.02) for _ in range(n)))
    header[m.group(1)] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + len(blob)]}
    blobs.append(blob)
    at += len(blob)
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
with open("/tmp/gpu-check-lsh6.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
n = int(sys.argv[1])
h = "{'descr': '<i8', 'fortran_order': False, 'shape': (1, %d), }" % n
h += " " * (63 - (10 + len(h)) % 64) + "\n"
with open("/tmp/gpu-check-ids.npy", "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode())
    f.write(struct.pack("<%dq" % n, *(rng.randrange(320) for _ in range(n))))
PY
  for i in 1 2; do
    timing=$("$bin" run "$model" --weights /tmp/gpu-check-lsh6.safetensors --seq-len "$len" \
      --input /tmp/gpu-check-ids.npy --output /tmp/gpu-check-long.npy "${gpu[@]}" 2>&1 |
      grep -o 'forward [0-9.]* ms' | tail -1 | sed 's/forward //')
  done
fi
echo "gpu-check: $pass fixtures within 1e-4 of HF float64, $fail failed${failures:+ (${failures[*]})}; $arch on device $device; L=$len forward: ${timing:-failed}"
[ "$fail" -eq 0 ]
