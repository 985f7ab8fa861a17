#!/usr/bin/env bash
# The fuzzing tier, in two parts, each printing its duration:
#
# 1. always, on stable: `cargo test --manifest-path fuzz/Cargo.toml`, which replays the committed
#    seed corpus (fuzz/corpus/<target>/) and seeded pseudo-random inputs through the fuzz targets'
#    bodies (fuzz/src/), so their logic cannot rot on a machine without nightly (~45 s cold,
#    ~8 s warm);
# 2. when `cargo +nightly` and cargo-fuzz are available (cargo-fuzz is installed with
#    `cargo install cargo-fuzz --locked` if missing, within 600 s): every target under libFuzzer
#    with AddressSanitizer (and LeakSanitizer) for a fixed number of runs, sized so the five
#    together take 3.5-6 minutes on the shared 2-core machine after the first build (~2 min).
#    Otherwise it prints `skipped: <reason>` and that part passes.
#
# The fuzzer starts from the committed corpus and writes what it finds to a temporary directory:
# the committed corpus is only read. A crash, a leak or an input running over 60 s fails the
# script and leaves the input in fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run <target> <file>`, or copy it under fuzz/corpus/<target>/ so the stable
# replay runs it from then on.
#
# Knobs: LATCHLESS_FUZZ_SCALE=<percent> scales the run counts (default 100);
# LATCHLESS_FUZZ_TOOLCHAIN=<toolchain> picks the nightly (default `nightly`).
set -euo pipefail
cd "$(dirname "$0")/.."
# step: prints `::: NAME` and `::: NAME: ok in N s` around each part of the tier.
source .ci/lib.sh

# Runs per target: each 30-60 s on the shared 2-core machine, from the exec/s measured with the
# seed corpus loaded (first figure at load ~4, second at load ~2): queue 105-280/s (thousands of
# values per input), cache 600-1,000/s, counter 1,500-3,200/s (it spawns threads), batch
# 130-235/s (a worker thread and its wake-ups per input), batch_stream (a step-wise worker per
# input) at most 60 s: 3,000 runs took 57 s at load ~13, niced, beside a build (52/s overall,
# 65-87/s once the corpus was loaded), so less on a quieter machine.
declare -A RUNS=(
    [queue]=15000
    [cache]=36000
    [counter]=90000
    [batch]=8000
    [batch_stream]=3000
)
TARGETS=(queue cache counter batch batch_stream)
SCALE=${LATCHLESS_FUZZ_SCALE:-100}
TOOLCHAIN=${LATCHLESS_FUZZ_TOOLCHAIN:-nightly}

replay() {
    cargo test --manifest-path fuzz/Cargo.toml
}

fuzz_target() {
    local target=$1 runs=$2
    mkdir -p "$WORK/$target"
    local log="$WORK/$target.log"
    local start=$SECONDS
    if ! cargo "+$TOOLCHAIN" fuzz run "$target" "$WORK/$target" "fuzz/corpus/$target" -- \
        -runs="$runs" -rss_limit_mb=2048 -max_len=4096 -timeout=60 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target FAILED after $((SECONDS - start)) s; its input is under fuzz/artifacts/$target/"
        return 1
    fi
    echo "$target: $runs runs in $((SECONDS - start)) s: $(grep -E '^#[0-9]+' "$log" | tail -n 1)"
}

libfuzzer() {
    if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
        echo "skipped: no $TOOLCHAIN toolchain (cargo +$TOOLCHAIN --version failed); cargo-fuzz needs nightly"
        return 0
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked (at most 600 s)"
        if ! timeout 600 cargo install cargo-fuzz --locked; then
            echo "skipped: cargo-fuzz is not installed and could not be installed"
            return 0
        fi
    fi
    echo "$(cargo "+$TOOLCHAIN" --version), $(cargo fuzz --version)"
    step "cargo fuzz build (all targets, AddressSanitizer)" cargo "+$TOOLCHAIN" fuzz build
    local target
    for target in "${TARGETS[@]}"; do
        step "cargo fuzz run $target" fuzz_target "$target" $((RUNS[$target] * SCALE / 100))
    done
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

total=$SECONDS
step "fuzz replay (stable: seed corpus + seeded inputs)" replay
step "cargo-fuzz ($TOOLCHAIN)" libfuzzer
echo "::: fuzz: all parts passed in $((SECONDS - total)) s"
