#!/usr/bin/env bash
# The nightly tier: Miri and ThreadSanitizer over the core crate only (`-p latchless`: its unit
# and integration tests; never doctests, the showcase or the loom crate). Both need a nightly
# toolchain with the `miri` and `rust-src` components: without them the script prints
# `skipped: <reason>` and exits 0. Each check prints how long its build and runs took; both
# checks run even if the first fails, and the script exits non-zero if either found a problem.
#
# Builds go to target/miri and target/tsan, apart from the stable build. How these tools were
# made to work on this kind of machine, and their pitfalls: ../shared/RELIABILITY.md.
#
# Measured on the 2-core machine, from a fresh clone inside .ci/run (2026-12-02): 15.5 minutes.
# Miri 11.4 (build 2.3, then the tests one process each, two at once, 9.1), TSan 4.1 (std and
# dependencies instrumented 2.8, tests 1.3). The day before, with Miri's tests as two libtest
# groups at once, the tier took 18.2 to 28.7 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
# skip, check (a failure recorded in `failed`, the next check still runs) and part (a timed part).
source .ci/lib.sh

# ---------------------------------------------------------------------------------------------
# The toolchain.

command -v rustup >/dev/null || skip "rustup is not installed"
if ! rustup toolchain list | grep -q '^nightly-'; then
    timeout 300 rustup toolchain install nightly --profile minimal ||
        skip "no nightly toolchain, and installing one failed"
fi
timeout 300 rustup component add miri rust-src --toolchain nightly ||
    skip "could not add the miri and rust-src components to the nightly toolchain"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')

# The checks that failed, filled by `check`.
failed=()

# ---------------------------------------------------------------------------------------------
# Miri: undefined behaviour (use-after-free, double free, out-of-bounds and uninitialised reads,
# aliasing violations) and data races, with weak-memory emulation, over the tests scaled down by
# `cfg!(miri)`. Isolation stays on: the tests see no environment variable, so
# `LATCHLESS_STRESS_N` never applies there and the `cfg!(miri)` sizes do.
#
# Flags for every run:
# - `-Zmiri-ignore-leaks`: crossbeam-epoch's global collector still holds garbage at exit, which
#   Miri would report as leaks. Leaks are checked instead by the counting-allocator tests
#   (tests/queue_leak.rs, tests/cache_leak.rs), which run here on local collectors.
# - `-Zmiri-permissive-provenance`: crossbeam-epoch keeps its pointers as integers (the tag lives
#   in the low bits), so every node pointer comes back through an integer-to-pointer cast, and
#   Miri would warn at each. A freed or out-of-bounds node is still reported through such a
#   pointer; only aliasing through it goes unchecked.
#
# Aliasing model: Tree Borrows (`-Zmiri-tree-borrows`) for every test. crossbeam-epoch breaks
# Stacked Borrows inside the library (known upstream), so Stacked Borrows cannot be used. Tree
# Borrows once caught the cache filling its bucket arrays through crossbeam-epoch's
# `[MaybeUninit<T>]` `DerefMut` (a `&mut` slice derived from a shared reference) and freeing
# entries through pointers derived from `&Entry`; the cache now allocates and fills its bucket
# arrays through their own pointers (src/cache/index.rs) and keeps each entry's allocating
# pointer, tagged without losing its provenance when a bucket holds it alone.
#
# Not run under Miri, selected out here:
# - the unit tests (`--lib`) other than the queue's: the counters' have no unsafe code and no
#   shared non-atomic data, and are not scaled for Miri (35 s); tests/counter_stress.rs runs the
#   counters under Miri, scaled. The queue's unit tests run (its progress tests are ignored under Miri).
# - tests/batch.rs: src/batch has no unsafe code, its requests travel through `MsQueue`, which
#   the queue tests cover, and it takes 70 s; ThreadSanitizer runs it below.
# - tests/cache_hit_ratio.rs: hit ratios of the eviction policy on one thread, not memory safety.
# - in tests/cache_api.rs, `fifo_stays_bounded_*` (6 tests) and
#   `weight_and_len_follow_every_change`: single-threaded and about 5 minutes together under
#   Miri; differential and cache_drops take the cache through the same calls.
# Ignored under Miri in the tests themselves (`#[cfg_attr(miri, ignore)]`, each saying why):
# `cache_api::a_hot_set_survives_a_scan`, `cache_leak::global_collector_growth_stays_bounded`,
# `map::racy_map_histories_are_rejected` in linearizability.
#
# How the tests are run: each in a process of its own, two at a time, through cargo-nextest
# (which a fresh machine has), so both cores stay busy until the last test and no test pays for
# the threads of the tests before it (Miri keeps a vector clock per thread a process has made).
# Measured on a quiet machine (2026-12-02): the whole selection in 9.4 minutes, the tests'
# times summing to 17.7 (the queue's suites 9.1, the cache's 8.6); the longest are queue_leak's
# collector growth (109 s), queue_stress's two (77 and 85 s) and counter_stress's bounded
# admission (60 s). cache_expiry alone took 199 s as one libtest process and 156 s as one process
# per test. Before, as two libtest groups at once, the longer group took 12.2 and 17.3 minutes in
# the last two CI runs, on a loaded machine. Without cargo-nextest the two groups run instead.

miri() {
    local cargo=(cargo +nightly miri test -p latchless --target-dir target/miri)
    local queue_and_counters=(--test queue_stress --test counter_stress --test queue_api
        --test queue_drops --test queue_leak --test send_sync --test differential)
    local cache=(--test cache_stress --test cache_drops --test cache_leak --test cache_api
        --test cache_iter --test cache_expiry --test cache_idle --test linearizability)
    export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-permissive-provenance"
    if cargo nextest --version >/dev/null 2>&1; then
        local nextest=(cargo +nightly miri nextest run -p latchless --target-dir target/miri --lib
            "${queue_and_counters[@]}" "${cache[@]}")
        part "build" "${nextest[@]}" --no-run &&
            part "tests, tree borrows, one process each, two at once" "${nextest[@]}" -j 2 \
                --no-fail-fast -E "$miri_selection"
    else
        echo "cargo-nextest is not installed: the tests run as two libtest groups at once"
        part "build" "${cargo[@]}" --lib "${queue_and_counters[@]}" "${cache[@]}" --no-run &&
            part "tests, tree borrows, two groups at once" miri_groups
    fi
}

# The tests Miri runs, as a nextest filter: the queue's unit tests from the library's own binary
# and every test of the integration binaries, but the single-threaded ones named above.
miri_selection='(binary_id(latchless) and test(/^queue::tests::/))
    or (not binary_id(latchless)
        and not test(/^fifo_stays_bounded/) and not test(=weight_and_len_follow_every_change))'

# The fallback. Each group holds one type's suites, plus one suite over both types placed for
# balance: differential (the queue's and the cache's models) with the queue, linearizability
# (queue and map histories) with the cache. The queue-and-counters group ends with the queue's
# unit tests (`--lib`, filtered to `queue::tests`): a helper stalled on a block while the block's
# last user retires it, which Miri turns into a use-after-free report if the helper count were
# ignored.
queue_and_counters_group() {
    "${cargo[@]}" "${queue_and_counters[@]}" && "${cargo[@]}" --lib -- queue::tests
}

miri_groups() {
    local logs=target/miri/logs status=0
    mkdir -p "$logs"
    part "queue-and-counters group (with differential and the queue's unit tests)" \
        queue_and_counters_group >"$logs/queue-and-counters.log" 2>&1 &
    local queue_pid=$!
    part "cache group (with linearizability)" "${cargo[@]}" "${cache[@]}" -- \
        --skip fifo_stays_bounded \
        --skip weight_and_len_follow_every_change >"$logs/cache.log" 2>&1 || status=1
    wait "$queue_pid" || status=1
    cat "$logs/queue-and-counters.log" "$logs/cache.log"
    return "$status"
}

# ---------------------------------------------------------------------------------------------
# ThreadSanitizer: data races between threads at native speed, over the concurrency tests (the
# counters' unit tests, queue_stress, counter_stress, queue_drops, cache_stress, cache_drops, cache_api, cache_iter, cache_expiry, cache_idle, batch, batch_pool,
# batch_priority and linearizability) at their full, non-Miri sizes. std is rebuilt instrumented (`-Zbuild-std`, which is
# why rust-src is needed): an uninstrumented std makes TSan report false races. crossbeam-epoch
# notices the sanitizer (its build script sets `crossbeam_sanitize_thread`) and avoids the
# fences TSan cannot follow; no suppression is needed. libtest prints `ok` even when TSan
# reports, so `halt_on_error=1` makes the first report end the binary with exit code 66, and the
# log is searched for reports as well.
#
# Short bursts repeated: tests/linearizability runs 1,500 rounds of fresh threads; the
# `LATCHLESS_STRESS_N` sizes stay at their defaults, because a weakened release ordering in the
# queue was caught in 5 runs out of 5 at 1,000,000 values but only 3 out of 5 at 1,000.
#
# Measured: 61-71 s of tests (cache_stress the longest); building std and the dependencies
# instrumented from cold, 2.9 minutes on a quiet machine.

# A subshell (the parentheses): the sanitizer's RUSTFLAGS must not reach anything after it.
tsan() (
    local log=target/tsan/nightly.log
    local cargo=(cargo +nightly test -Zbuild-std --target "$host" -p latchless
        --target-dir target/tsan --lib --test queue_stress --test counter_stress --test queue_drops
        --test cache_stress
        --test cache_drops --test cache_api --test cache_iter --test cache_expiry --test cache_idle --test batch --test batch_pool
        --test batch_priority --test batch_stream --test linearizability)
    mkdir -p target/tsan
    export RUSTFLAGS="-Zsanitizer=thread" TSAN_OPTIONS="halt_on_error=1"
    part "build (std included)" "${cargo[@]}" --no-run || return 1
    local status=0
    part "tests" "${cargo[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    if grep -q "ThreadSanitizer" "$log"; then
        echo "ThreadSanitizer reported (the whole log: $log):"
        grep -A3 "WARNING: ThreadSanitizer" "$log" | head -n 20
        return 1
    fi
    return "$status"
)

check "miri" miri
check "thread sanitizer" tsan

if [ ${#failed[@]} -gt 0 ]; then
    echo "::: nightly: failed: ${failed[*]}"
    exit 1
fi
echo "::: nightly: all checks passed"
