#!/usr/bin/env bash
# The single test command: installs what is missing (scripts/setup.sh), then runs every
# test target. Integration tests start their own PostgreSQL and broker per test.
#   RUST_TEST_THREADS  parallel tests per test binary (default 2)
#   CARGO_TARGET_DIR   default ~/.cache/outbox-relay/target (kept across clean clones, so
#                      the rdkafka C build is cached)
#   OUTBOX_PREV_RELAY  the previous release's binary (default: scripts/build-previous.sh)
# Extra arguments are passed to the test harness (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
TEST_THREADS="${RUST_TEST_THREADS:-2}"

bash scripts/setup.sh
# The previous release's relay for tests/versions.rs (built once per commit into a cache;
# a path set by the caller wins). If it cannot be built the other tests still run and
# tests/versions.rs fails, saying so.
if [ -z "${OUTBOX_PREV_RELAY:-}" ]; then
    if OUTBOX_PREV_RELAY="$(bash scripts/build-previous.sh)"; then
        export OUTBOX_PREV_RELAY
    else
        echo "[test] scripts/build-previous.sh failed: tests/versions.rs will fail" >&2
    fi
fi
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
set +e
cargo test --all-targets -- --test-threads="$TEST_THREADS" "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (unit, integration, benches in test mode).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$LOG"
exit "$status"
