#!/usr/bin/env bash
# The HTTP server's binary, end to end: start it on a free port, wait for /health, one whole and
# one streamed completion and a refused one with curl, a 2 s run of the load generator, then
# SIGTERM: it must exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null; then
    echo "skipped: curl is not installed"
    exit 0
fi

# CI's release build hands over the binary it made (LATCHLESS_SERVER_BIN). Run alone, the script
# builds it as `cargo test` does, with the dev-dependencies' features unified in, so that after
# the server's tests nothing is compiled again (`cargo build` would rebuild much of the graph with
# other features).
if [ -n "${LATCHLESS_SERVER_BIN:-}" ]; then
    bin=$LATCHLESS_SERVER_BIN
else
    cargo test --release -p latchless-server --no-run
    bin="${CARGO_TARGET_DIR:-target}/release/latchless-server"
fi
out=$(mktemp)
err=$(mktemp)
"$bin" --port 0 >"$out" 2>"$err" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    rm -f "$out" "$err"
}
trap cleanup EXIT

fail() {
    echo "server smoke: $*"
    echo "--- server stderr:"
    cat "$err"
    exit 1
}

# The binary prints "listening on http://ADDR" once bound and its model is built.
addr=""
for _ in $(seq 1 300); do
    addr=$(grep -o 'http://[0-9.:]*' "$out" | head -n 1 || true)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || fail "the server exited before listening"
    sleep 0.1
done
[ -n "$addr" ] || fail "no address printed within 30 s"
echo "server at $addr"

healthy=""
for _ in $(seq 1 100); do
    if [ "$(curl -fsS "$addr/health" 2>/dev/null || true)" = ok ]; then
        healthy=yes
        break
    fi
    sleep 0.1
done
[ -n "$healthy" ] || fail "/health never answered ok"

whole=$(curl -fsS "$addr/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "smoke test", "max_tokens": 16}') || fail "the completion failed"
echo "whole: $whole"
for want in '"object":"text_completion"' '"finish_reason":"length"' '"completion_tokens":16'; do
    grep -qF "$want" <<<"$whole" || fail "the completion lacks $want"
done

streamed=$(curl -fsSN "$addr/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "smoke test", "max_tokens": 16, "stream": true}') || fail "the stream failed"
events=$(grep -c '^data: ' <<<"$streamed" || true)
last=$(grep '^data: ' <<<"$streamed" | tail -n 1)
echo "streamed: $events events, the last: $last"
[ "$last" = "data: [DONE]" ] || fail "the stream does not end with [DONE]"
[ "$events" -ge 2 ] || fail "the stream has no chunk before [DONE]"

code=$(curl -s -o /dev/null -w '%{http_code}' "$addr/v1/completions" \
    -d '{"prompt": "x", "temperature": 1}')
[ "$code" = 400 ] || fail "an unsupported parameter got $code, not 400"

# Read whole before searching: `curl | grep -q` under pipefail failed when grep matched and
# exited before curl had written the rest (curl: (23) Failed writing body).
metrics=$(curl -fsS "$addr/metrics") || fail "/metrics failed"
grep -q '^latchless_batch_completed_total 2$' <<<"$metrics" ||
    fail "/metrics does not count the two completions"

# The load generator against the binary, briefly: it must print its report and exit 0.
# Built with the server, next to its binary.
loadgen="$(dirname "$bin")/loadgen"
report=$(timeout 60 "$loadgen" --url "$addr" --duration 2 --grace 5 --rate 20 --whole-share 0.2) ||
    fail "loadgen exited with status $?: $report"
echo "$report"
for want in '^requests: ' '^throughput: ' '^latency: ' '^goodput: ' '^server overhead' '^cpu: '; do
    grep -q "$want" <<<"$report" || fail "the loadgen report lacks $want"
done
grep -q ' 0 errors, 0 unfinished$' <<<"$report" || fail "loadgen saw errors"
if "$loadgen" --url http://192.0.2.1:80 --duration 1 >/dev/null 2>&1; then
    fail "loadgen took a non-loopback URL"
fi

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] || fail "exit status $status after SIGTERM, not 0"
echo "server smoke: ok (SIGTERM, exit 0)"
