#!/usr/bin/env bash
# `reformc explain`'s static peak against the measured peak RSS of the compiled
# bench model (examples/reformer-12layer, random weights) at 16K and 64K, on 2
# threads: both must agree within 10% (tests/memory_rss.rs, which CI runs too).
# This script runs the test alone and prints the figures.
#
#   scripts/memory_rss.sh        # prints "L=...: explain ... MiB, measured ... MiB"
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p reformc --test integration memory_rss:: -- --nocapture --test-threads 1
