#!/usr/bin/env bash
# The one test command: everything CI runs, in order, with a plain summary at the end.
#
#   scripts/test.sh
#
# Steps: setup (scripts/setup.sh), cargo fmt --check (workspace and fuzz crate), clippy with
# -D warnings, the release test suite, a build of the clang-free crates with clang hidden
# (scripts/build-without-clang.sh), then a short libFuzzer run of every fuzz target in
# dataplane/fuzz, seeded from valid encodings (tests/protocol_vectors.rs writes the seeds).
# Every step runs even when an earlier one failed (one run shows all problems), except that
# nothing runs after a failed setup. Exit status is 0 only if every step passed.
#
# Environment:
#   RUNNEL_FUZZ_SECONDS   seconds per fuzz target (default 20; 0 skips fuzzing)
#   RUNNEL_FUZZ_TIMEOUT   seconds one fuzz input may take before it counts as a hang (10)
#   RUNNEL_TEST_LOGS      where step logs go (default target/test-logs)
#
# Budget: from a clean clone on 2 cores the compile steps dominate (clippy and tests share
# most of the release build; the fuzz build is a separate instrumented build of the
# dataplane); the fuzz runs add targets × RUNNEL_FUZZ_SECONDS.

set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
fuzz_seconds="${RUNNEL_FUZZ_SECONDS:-20}"
fuzz_timeout_seconds="${RUNNEL_FUZZ_TIMEOUT:-10}"
logs="${RUNNEL_TEST_LOGS:-$repo/target/test-logs}"
mkdir -p "$logs"
started_s=$SECONDS
results=()
failed=()

elapsed() {
    local seconds=$1
    printf '%dm%02ds' $((seconds / 60)) $((seconds % 60))
}

# step NAME COMMAND...: runs COMMAND with its output in $logs/NAME.log, records the result.
step() {
    local name="$1"
    shift
    local log="$logs/$name.log"
    local step_started_s=$SECONDS
    printf '%-28s ' "$name"
    if "$@" >"$log" 2>&1; then
        # Fuzz runs: say how many inputs ran, so "ok" is visibly not "ran nothing".
        echo "ok    $(elapsed $((SECONDS - step_started_s)))   $(grep -m1 -oE '^Done [0-9]+ runs' "$log" || true)"
        results+=("$name ok")
        return 0
    fi
    echo "FAIL  $(elapsed $((SECONDS - step_started_s)))   log: $log"
    # A failed cargo test: each failing test's name and panic message first (the tail of
    # the log is only the doc tests' summary).
    awk '/^---- .* stdout ----$/ { n = 6 } n > 0 { print; n-- }' "$log" | head -n 60 | sed 's/^/    | /'
    tail -n 30 "$log" | sed 's/^/    | /'
    results+=("$name FAIL")
    failed+=("$name")
    return 1
}

summary() {
    local total
    total="$(elapsed $((SECONDS - started_s)))"
    # cargo test's per-binary results, summed, as one plain closing line.
    if [ -f "$logs/test.log" ]; then
        awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
             END { printf "cargo test: %d passed, %d failed\n", p, f }' "$logs/test.log"
    fi
    if [ "${#failed[@]}" -eq 0 ]; then
        echo "test.sh: PASS — ${#results[@]} steps passed in $total"
        exit 0
    fi
    echo "test.sh: FAIL — ${#failed[@]} of ${#results[@]} steps failed (${failed[*]}) in $total; logs in $logs"
    exit 1
}

# Setup is sourced so that it can raise `ulimit -l` for every later step.
printf '%-28s ' "setup"
setup_log="$logs/setup.log"
# shellcheck source=scripts/setup.sh
if source "$repo/scripts/setup.sh" >"$setup_log" 2>&1; then
    echo "ok"
    results+=("setup ok")
else
    echo "FAIL  log: $setup_log"
    sed 's/^/    | /' "$setup_log"
    failed+=("setup")
    results+=("setup FAIL")
    summary
fi

step fmt cargo fmt --all --check
step fmt-fuzz cargo fmt --manifest-path dataplane/fuzz/Cargo.toml --check
step clippy cargo clippy --release --workspace --all-targets -- -D warnings
step test cargo test --release --workspace --no-fail-fast
step no-clang "$repo/scripts/build-without-clang.sh"

if [ "$fuzz_seconds" -gt 0 ]; then
    corpus="$repo/dataplane/fuzz/corpus"
    step fuzz-seeds env RUNNEL_FUZZ_SEEDS="$corpus" \
        cargo test --release -p runnel-node --test protocol_vectors fuzz_seed_corpora
    if step fuzz-build env RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir dataplane/fuzz; then
        targets="$(RUSTC_BOOTSTRAP=1 cargo fuzz list --fuzz-dir dataplane/fuzz)"
        if [ -z "$targets" ]; then
            # An empty list would make every fuzz step silently pass.
            echo "fuzz: cargo fuzz list found no targets"
            failed+=("fuzz-list")
            results+=("fuzz-list FAIL")
        fi
        for target in $targets; do
            mkdir -p "$corpus/$target"
            # -timeout: one input slower than this is a hang and fails the step (a relay
            # that stalls on one datagram is a denial of service); -rss_limit_mb likewise.
            step "fuzz-$target" env RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir dataplane/fuzz "$target" "$corpus/$target" -- \
                -max_total_time="$fuzz_seconds" -timeout="$fuzz_timeout_seconds" -rss_limit_mb=2048 -print_final_stats=1
        done
    fi
fi

summary
