#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each, one after another,
# seeded from tests/corpus/ and the fixtures. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`); CI uses the stable fuzz tests instead.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s, all targets
#
# Fork mode keeps going after a crash: crashes land in fuzz/artifacts/<target>/,
# the growing corpus in fuzz/corpus/<target>/, each run's log in fuzz/logs/.
# The last line printed per target is its executions and crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config_json ir_text npy_runtime npy_cli safetensors_runtime safetensors_frontend exe_args)
fi

seed() { # target -> the corpus family and fixture files it starts from
    case $1 in
        config_json) echo tests/corpus/config tests/fixtures/*/config.json examples/*.json ;;
        ir_text) echo tests/corpus/ir ;;
        npy_*) echo tests/corpus/npy tests/fixtures/causal_mixed_r2/{input_ids,lsh_rotations,lsh_buckets}.npy ;;
        safetensors_*) echo tests/corpus/safetensors ;;
        exe_args) echo tests/corpus/exe_args ;;
    esac
}

mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    for s in $(seed "$t"); do
        # Existing corpus files are kept (cp -n), whatever cp's exit status says about them.
        if [ -d "$s" ]; then cp -n "$s"/* "fuzz/corpus/$t/" || true; else cp -n "$s" "fuzz/corpus/$t/$(echo "$s" | tr / _)" || true; fi
    done
    log=fuzz/logs/$t.log
    # Allocation limits turn "memory allocation of N bytes failed" into a reported crash.
    (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -max_len=65536 \
        -artifact_prefix="artifacts/$t/") >"$log" 2>&1 || true
    last=$(grep -E '^#[0-9]+: ' "$log" | tail -1 || true)
    crashes=$(ls "fuzz/artifacts/$t" | wc -l)
    echo "$t: ${last:-no stats, see $log} | artifacts: $crashes"
done
