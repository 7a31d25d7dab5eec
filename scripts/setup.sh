#!/usr/bin/env bash
# Installs what building reformc needs on a fresh Debian machine, when missing.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "reformc needs a Rust toolchain (cargo): install it with rustup, then rerun." >&2
    exit 1
  fi
fi
# rustfmt and clippy: scripts/test.sh fails without them rather than skipping the checks.
for comp in rustfmt clippy; do
  probe=fmt; [ "$comp" = clippy ] && probe=clippy
  if ! cargo "$probe" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$comp"
    else
      echo "reformc: cargo $probe is missing and there is no rustup to install $comp" >&2
      exit 1
    fi
  fi
done
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# LLVM/MLIR 22 (the LLVM backend links them statically; .cargo/config.toml points at /usr/lib/llvm-22).
if [ ! -x /usr/lib/llvm-22/bin/llvm-config ] || [ ! -d /usr/lib/llvm-22/include/mlir ]; then
  need+=(llvm-22-dev libmlir-22-dev mlir-22-tools clang-22 libpolly-22-dev libzstd-dev zlib1g-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
# The MLIR backend's tests run emitted modules through IREE (CPU and Vulkan):
# Mesa's software Vulkan device (llvmpipe), its loader and vulkaninfo from apt,
# and python3 with venv for IREE's PyPI packages ...
iree_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv-iree"
extra=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || extra+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || extra+=(libvulkan1)
command -v vulkaninfo >/dev/null 2>&1 || extra+=(vulkan-tools)
# Graphviz: tests render `--format dot` output with `dot`.
command -v dot >/dev/null 2>&1 || extra+=(graphviz)
# The Python package (python/, a workspace member) links libpython when cargo
# builds it outside maturin: python3-dev has the library to link.
dpkg -s python3-dev >/dev/null 2>&1 || extra+=(python3-dev python3-venv)
if [ ! -x "$iree_venv/bin/iree-compile" ] || [ ! -x "$iree_venv/bin/iree-run-module" ]; then
  command -v python3 >/dev/null 2>&1 || extra+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || extra+=(python3-venv)
fi
if [ ${#extra[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${extra[@]}"
fi
# ... and IREE's compiler and runtime 3.13 from PyPI in a project-local venv
# (git-ignored; the tests find the tools in .venv-iree/bin).
if [ ! -x "$iree_venv/bin/iree-compile" ] || [ ! -x "$iree_venv/bin/iree-run-module" ]; then
  python3 -m venv "$iree_venv"
  "$iree_venv/bin/pip" install --quiet "iree-base-compiler==3.13.*" "iree-base-runtime==3.13.*"
fi
# The GPU backend's tools from PyPI, in a project-local venv (git-ignored):
# NVIDIA's nvcc wheel has `ptxas`, which the tests assemble every emitted PTX
# with, and `libdevice.10.bc`, which `--target gpu` links math functions from
# (found in .venv-gpu without flags). No CUDA driver or GPU is needed.
gpu_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv-gpu"
if ! ls "$gpu_venv"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas >/dev/null 2>&1; then
  python3 -m venv "$gpu_venv"
  "$gpu_venv/bin/pip" install --quiet "nvidia-cuda-nvcc-cu12==12.9.*"
fi
