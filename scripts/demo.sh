#!/usr/bin/env bash
# End-to-end demo on a fresh Debian machine: installs what is missing, starts a throwaway
# PostgreSQL 15 (wal_level=logical) and Apache Kafka (single KRaft node) on loopback,
# initialises the outbox with the sample relay.toml, runs the relay, emits a few events in
# business transactions (one rolled back), and shows them arriving on Kafka. Every wait has a
# deadline; the demo fails (non-zero) if an event does not arrive. Everything lives under a
# temp dir and is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

bash scripts/setup.sh
echo "== building"
cargo build --quiet --bin outbox-relay --example tail
RELAY="$CARGO_TARGET_DIR/debug/outbox-relay"
TAIL="$CARGO_TARGET_DIR/debug/examples/tail"

# shellcheck source=lib/services.sh
source scripts/lib/services.sh
DIR=$(mktemp -d /tmp/outbox-demo-XXXX)
RELAY_PID=""
cleanup() {
    status=$?
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
    if [ "$status" -ne 0 ]; then
        echo "== demo FAILED (exit $status); logs:" >&2
        tail -n 30 "$DIR/relay.log" 2>/dev/null >&2 || true
    fi
    services_stop
    rm -rf "$DIR"
}
trap cleanup EXIT

services_start_pg "$DIR"
echo "== PostgreSQL on 127.0.0.1:$PG_PORT"
services_start_kafka "$DIR"
echo "== Apache Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP"

METRICS_PORT=$(services_free_port)
# The sample config, with this demo's addresses as environment overrides.
export OUTBOX_RELAY_POSTGRES_URL="$PG_URL"
export OUTBOX_RELAY_KAFKA_BROKERS="$KAFKA_BOOTSTRAP"
export OUTBOX_RELAY_KAFKA_CREATE_TOPICS=true
export OUTBOX_RELAY_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)

echo "== outbox-relay --config relay.toml init"
"$RELAY" --config relay.toml init
echo "== outbox-relay --config relay.toml run (log: $DIR/relay.log)"
"$RELAY" --config relay.toml run >"$DIR/relay.log" 2>&1 &
RELAY_PID=$!
services_wait "the relay to be ready (/readyz)" 60 curl -sf "http://127.0.0.1:$METRICS_PORT/readyz"

echo "== an application writes: business rows + outbox rows in the same transactions"
"${PSQL[@]}" -o /dev/null <<'SQL'
CREATE TABLE orders (id text PRIMARY KEY, total int);
BEGIN;
INSERT INTO orders VALUES ('o-1', 42);
SELECT outbox_emit('order', 'o-1', 'OrderCreated', '{"id":"o-1","total":42}', '{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}');
COMMIT;
BEGIN;
INSERT INTO orders VALUES ('o-2', 7);
SELECT outbox_emit('order', 'o-2', 'OrderCreated', '{"id":"o-2","total":7}');
ROLLBACK;  -- never published
BEGIN;
UPDATE orders SET total = 50 WHERE id = 'o-1';
SELECT outbox_emit('order', 'o-1', 'OrderUpdated', '{"id":"o-1","total":50}');
SELECT outbox_emit('payment', 'p-9', 'PaymentRequested', '{"order":"o-1","amount":50}');
COMMIT;
SQL

echo "== what arrived on Kafka (outbox.order, outbox.payment; waits up to 60 s for each)"
"$TAIL" "$KAFKA_BOOTSTRAP" outbox.order 2 60 | tee "$DIR/order.txt"
"$TAIL" "$KAFKA_BOOTSTRAP" outbox.payment 1 60 | tee "$DIR/payment.txt"
grep -q 'OrderCreated' "$DIR/order.txt" && grep -q 'OrderUpdated' "$DIR/order.txt" \
    || { echo "the two committed order events did not both arrive" >&2; exit 1; }
if grep -q '"o-2"' "$DIR/order.txt"; then
    echo "the rolled-back event was published" >&2
    exit 1
fi
echo "== lag metrics (http://127.0.0.1:$METRICS_PORT/metrics)"
services_wait "the checkpoint metric" 30 sh -c "curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep -q '^outbox_relay_checkpoint_lsn [1-9]'"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^outbox_relay_(lag|events_published|checkpoint_lsn)'
echo "== outbox-relay status"
"$RELAY" --config relay.toml status
echo "== done; stopping everything"
