#!/usr/bin/env bash
# The single test command: installs what is missing (scripts/setup.sh), then runs every
# test target. Integration tests start their own PostgreSQL and broker per test.
#   RUST_TEST_THREADS  parallel tests per test binary (default 2)
#   CARGO_TARGET_DIR   default ~/.cache/outbox-relay/target (kept across clean clones, so
#                      the rdkafka C build is cached)
# Extra arguments are passed to the test harness (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
TEST_THREADS="${RUST_TEST_THREADS:-2}"

bash scripts/setup.sh
cargo test --all-targets -- --test-threads="$TEST_THREADS" "$@"
