#!/usr/bin/env bash
# The AMX check, for an Intel CPU with AMX (Sapphire Rapids or later): the
# tile instructions against the tile model and an f64 reference (the
# runtime's self-test, loudly), every Hugging Face fixture in bf16 on AMX
# within bf16 accuracy of HF's float64 logits, then the bf16 GEMM rates on
# AMX and on AVX-512 BF16 side by side, with a summary at the end.
# With --bench it also runs bench/run.py (reformc fp32 and bf16 against HF
# fp32 and bf16 autocast, bench model at 16K and 64K, paper model at 8K) and
# bench/train.py (the training step, fp32 and bf16, against HF), which need
# the HF venv (/work/hfvenv or HF_PYTHON) and about 40 minutes.
#   usage: scripts/amx-check.sh [--bench]
set -uo pipefail
cd "$(dirname "$0")/.."
bench=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=1; shift ;;
    *) echo "amx-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx_tile|amx_bf16|avx512_bf16)$' | sort | tr '\n' ' ')
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); flags: ${flags:-none of amx_tile amx_bf16 avx512_bf16}"
case "$flags" in
  *amx_bf16*amx_tile*) ;;
  *) echo "amx-check: this CPU has no AMX; nothing to check here (the tile model is checked by scripts/test.sh)"; exit 0 ;;
esac
source scripts/setup.sh
results=()
step() { # name, command...
  local name=$1; shift
  echo "== $name"
  if "$@"; then results+=("ok    $name"); else results+=("FAIL  $name"); fi
}
step "runtime: tile instructions pass the self-test (amx unit tests)" \
  cargo test --release -q -p reformc-runtime --lib amx -- --nocapture
step "every HF fixture in bf16 on AMX within 1e-2 of HF float64" \
  cargo test --release -q -p reformc --test integration -- amx_tile --nocapture
step "bf16 JIT and executable tests (tests/cli_bf16.rs, backends/llvm bf16)" \
  cargo test --release -q -p reformc --test integration -- cli_bf16
cargo build --release -q -p reformc-runtime --example kernel_bench
for path in amx avx512bf16; do
  echo "== bf16 GEMM rates, REFORMC_RT_BF16=$path"
  REFORMC_RT_BF16=$path target/release/examples/kernel_bench gemm bf16 reps=5
done
echo "== f32 GEMM rates"
target/release/examples/kernel_bench gemm reps=5
if [ "$bench" = 1 ]; then
  py=${HF_PYTHON:-/work/hfvenv/bin/python}
  step "bench model, 1 and 4 hashes, 16K and 64K" "$py" bench/run.py --lengths 16384,65536 \
    --hashes 1,4 --systems reformc,reformc-bf16,hf,hf-bf16
  step "paper model at 8K" "$py" bench/run.py --model paper --lengths 8192 --hashes 4 \
    --systems reformc,reformc-bf16,hf,hf-bf16
  step "training step, 2 and 12 layers at 16K, fp32 and bf16" "$py" bench/train.py \
    --lengths 16384 --layers 2,12 --bf16
fi
echo "== summary"
printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q '^FAIL'
