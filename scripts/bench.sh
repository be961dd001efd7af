#!/usr/bin/env bash
# The end-to-end benchmark: builds the relay in release mode, then runs
#   cargo bench --bench e2e -- "$@"
# against a throw-away PostgreSQL 15 cluster, the tansu broker and librdkafka's
# mock cluster (see benches/e2e.rs). Prints a markdown table; JSON goes to
# $CARGO_TARGET_DIR/bench/e2e.json.
#
#   scripts/bench.sh                                  # full run: 1M backlog, 2,000/s for 60 s
#   scripts/bench.sh --events 200000 --seconds 20     # moderate
#   scripts/bench.sh --quick                          # smoke run, ~1 min
#   scripts/bench.sh --only catchup,memory            # some parts only
#
# Micro-benchmarks: cargo bench --bench decode; cargo bench --bench message.
#   CARGO_TARGET_DIR   default ~/.cache/outbox-relay/target (shared with scripts/test.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

bash scripts/setup.sh
cargo build --release --bin outbox-relay
cargo bench --bench e2e -- "$@"
