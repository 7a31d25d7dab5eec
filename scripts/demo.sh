#!/usr/bin/env bash
# The main job end to end on the committed example model: build reformc (installing
# what is missing), run examples/tiny-reformer with the reference interpreter and
# report the agreement with Hugging Face's outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet
ex=examples/tiny-reformer
out=${TMPDIR:-/tmp}/reformc-demo-logits.npy
./target/release/reformc run "$ex/config.json" --weights "$ex/model.safetensors" \
  --input "$ex/input_ids.npy" --lsh-rotations "$ex/lsh_rotations.npy" --interp \
  --output "$out" --compare "$ex/logits_f64.npy" --compare "$ex/logits.npy"
echo "agreement: logits_f64.npy is Hugging Face run in float64 with the same buckets (the exact-arithmetic reference);"
echo "           logits.npy is Hugging Face's float32 output, which carries its own rounding (README, 'Numerics')."
