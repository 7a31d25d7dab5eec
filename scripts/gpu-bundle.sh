#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine without network
# or toolchain (the lent device machines): a stripped, gzipped release reformc
# (its runtime archive is embedded) and NVIDIA's libdevice, in dist/gpu/
# (git-ignored, about 63 MB: under the device tool's 64 MiB carry limit).
# Then, on the device:
#   REFORMC_BIN=dist/gpu/reformc.gz REFORMC_LIBDEVICE=dist/gpu/libdevice.10.bc bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet
mkdir -p dist/gpu
strip -o dist/gpu/reformc target/release/reformc
gzip -9 -f dist/gpu/reformc
cp "$(ls .venv-gpu/lib/python3*/site-packages/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc | head -1)" dist/gpu/
du -sh dist/gpu
echo "carry: dist/gpu; command: REFORMC_BIN=dist/gpu/reformc.gz REFORMC_LIBDEVICE=dist/gpu/libdevice.10.bc bash scripts/gpu-check.sh"
