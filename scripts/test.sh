#!/usr/bin/env bash
# Every test of the workspace: unit, doc, golden (Hugging Face fixtures),
# CLI, property and fuzz tests, then formatting and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace --quiet 2>&1 | tee "${TMPDIR:-/tmp}/reformc-test.log"
# setup.sh installed rustfmt and clippy; a missing one is a failure, never a silent skip.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
passed=$(grep -Eo '[0-9]+ passed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "${TMPDIR:-/tmp}/reformc-test.log" | awk '{s+=$1} END {print s+0}')
echo "reformc: ${passed} passed, ${failed} failed"
