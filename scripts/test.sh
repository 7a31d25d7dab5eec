#!/usr/bin/env bash
# Every test of the workspace: unit, doc, golden (Hugging Face fixtures),
# CLI, property and fuzz tests, then formatting and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace --quiet 2>&1 | tee "${TMPDIR:-/tmp}/reformc-test.log"
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets --quiet -- -D warnings; fi
passed=$(grep -Eo '[0-9]+ passed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
echo "reformc: ${passed} passed, ${failed} failed"
