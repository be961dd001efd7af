#!/usr/bin/env bash
# The end-to-end benchmark: builds the relay in release mode, then runs
#   cargo bench --bench e2e -- "$@"
# against a throw-away PostgreSQL 15 cluster and a single-node Apache Kafka 4.1.1 (KRaft),
# see benches/e2e.rs. Prints markdown tables; JSON goes to $CARGO_TARGET_DIR/bench/.
#
#   scripts/bench.sh                                  # full run: 1M backlog, 2,000/s for 60 s, 3 runs each
#   scripts/bench.sh --events 200000 --seconds 20     # moderate
#   scripts/bench.sh --quick                          # smoke run, ~2 min
#   scripts/bench.sh --only catchup,steady            # some parts only
#   scripts/bench.sh --against debezium [--quick]     # side by side with Debezium (issue 10)
#   scripts/bench.sh --against exactly-once [--quick] # the two delivery modes side by side (issue 11)
#
# --against debezium fetches Kafka Connect and Debezium's PostgreSQL connector from Maven
# Central once (deploy/debezium/pom.xml → ~/.cache/outbox-relay/debezium/<versions>/libs),
# and matplotlib from PyPI if python3 lacks it, then writes debezium.json, debezium.md and
# debezium.png to $CARGO_TARGET_DIR/bench/. Not part of CI.
#
# Micro-benchmarks: cargo bench --bench decode; cargo bench --bench message.
#   CARGO_TARGET_DIR   default ~/.cache/outbox-relay/target (shared with scripts/test.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '[bench] %s\n' "$*" >&2; }

against=""
prev=""
for a in "$@"; do
    case "$a" in
        --against=*) against="${a#--against=}" ;;
    esac
    [ "$prev" = "--against" ] && against="$a"
    prev="$a"
done

bash scripts/setup.sh

if [ "$against" = "exactly-once" ]; then
    against=""   # the relay against itself: nothing to fetch, no picture
elif [ -n "$against" ]; then
    [ "$against" = "debezium" ] || { log "--against $against: debezium or exactly-once"; exit 2; }
    # shellcheck source=scripts/lib/debezium.sh
    . scripts/lib/debezium.sh
    debezium_fetch
    export DEBEZIUM_LIBS
    plot_deps || true
fi

cargo build --release --bin outbox-relay
cargo bench --bench e2e -- "$@" | tee "$CARGO_TARGET_DIR/bench-last.log"

if [ -n "$against" ]; then
    out="$CARGO_TARGET_DIR/bench"
    if python3 -c 'import matplotlib' >/dev/null 2>&1; then
        python3 benches/plot.py "$out/debezium.json" "$out/debezium.png"
    fi
    sed -n '/^## outbox-relay end-to-end benchmark/,$p' "$CARGO_TARGET_DIR/bench-last.log" \
        | grep -v '^JSON: ' > "$out/debezium.md"
    log "wrote $out/debezium.json, $out/debezium.md, $out/debezium.png"
fi
