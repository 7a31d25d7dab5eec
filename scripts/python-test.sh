#!/usr/bin/env bash
# Builds the Python package (python/: pyo3 + maturin) into a project-local,
# git-ignored venv (.venv-py) and runs its pytest suite against the Hugging
# Face fixtures. Called by scripts/test.sh after the cargo tests; runs alone too.
#
# The extension builds in the workspace's target dir with the dev profile
# (python/pyproject.toml), so the dependencies `cargo test` built are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
venv="$root/.venv-py"
start=$(date +%s)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3 python3-venv
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
# maturin, numpy and pytest from PyPI, when missing.
need=()
"$py" -c 'import numpy' >/dev/null 2>&1 || need+=("numpy")
"$py" -c 'import pytest' >/dev/null 2>&1 || need+=("pytest")
[ -x "$venv/bin/maturin" ] || need+=("maturin>=1.5,<2")
if [ ${#need[@]} -gt 0 ]; then
  "$py" -m pip install --quiet "${need[@]}"
fi
# `maturin develop` builds with python/pyproject.toml's settings (dev
# profile, extension-module) and installs into the venv; the same build
# `pip install ./python` runs, without pip's isolated build environment.
VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --quiet --manifest-path python/Cargo.toml
built=$(date +%s)
"$py" -m pytest -q -rs python/tests "$@"
end=$(date +%s)
echo "reformc python: built in $((built - start)) s, tested in $((end - built)) s"
