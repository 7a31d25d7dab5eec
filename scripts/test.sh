#!/usr/bin/env bash
# Every test of the workspace: unit, doc, golden (Hugging Face fixtures),
# CLI, property and fuzz tests, then formatting and clippy, then the Python
# package's tests (scripts/python-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
REFORMC_REQUIRE_PTXAS=1 cargo test --workspace --quiet 2>&1 | tee "${TMPDIR:-/tmp}/reformc-test.log"
# setup.sh installed rustfmt and clippy; a missing one is a failure, never a silent skip.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The Python package (python/): built with maturin into .venv-py, then its pytest suite.
bash scripts/python-test.sh 2>&1 | tee "${TMPDIR:-/tmp}/reformc-python-test.log"
passed=$(grep -Eo '[0-9]+ passed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
py=$(grep -Eo '[0-9]+ passed' "${TMPDIR:-/tmp}/reformc-python-test.log" | tail -1 | awk '{print $1+0}')
echo "reformc: ${passed} passed, ${failed} failed (cargo); ${py:-0} passed (python)"
# The build's footprint: CI machines have run out of disk before (20 GB of test
# executables, when each test file was its own binary).
echo "reformc: target/ holds $(du -sh target 2>/dev/null | cut -f1)"
