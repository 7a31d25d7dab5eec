#!/usr/bin/env bash
# The main job end to end on the committed example model: build reformc (installing
# what is missing), compile examples/tiny-reformer to a standalone executable, run it,
# run the reference interpreter too, and report the agreement with Hugging Face's outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet
ex=examples/tiny-reformer
out=${TMPDIR:-/tmp}/reformc-demo-logits.npy
exe=${TMPDIR:-/tmp}/reformc-demo-tiny-reformer
./target/release/reformc compile "$ex/config.json" --weights "$ex/model.safetensors" -o "$exe" -q
echo "reformc: compiled $ex to the standalone executable $exe"
"$exe" --input "$ex/input_ids.npy" --lsh-rotations "$ex/lsh_rotations.npy" --output "$out" --time
./target/release/reformc run "$ex/config.json" --weights "$ex/model.safetensors" -q \
  --input "$ex/input_ids.npy" --lsh-rotations "$ex/lsh_rotations.npy" --interp \
  --output "$out.interp.npy" --compare "$out" --compare "$ex/logits_f64.npy" --compare "$ex/logits.npy"
echo "agreement: the first line compares the interpreter with the compiled executable;"
echo "           logits_f64.npy is Hugging Face run in float64 with the same buckets (the exact-arithmetic reference);"
echo "           logits.npy is Hugging Face's float32 output, which carries its own rounding (README, 'Numerics')."
