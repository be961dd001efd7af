#!/usr/bin/env bash
# End-to-end demo on a fresh Debian machine: installs what is missing, starts a
# throwaway PostgreSQL 15 (wal_level=logical) and a tansu Kafka-protocol broker
# on loopback, initialises the outbox, runs the relay, emits a few events in
# business transactions (one rolled back), and shows them arriving on Kafka.
# Everything lives under a temp dir and is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

bash scripts/setup.sh
echo "== building"
cargo build --quiet --bin outbox-relay --example tail
RELAY="$CARGO_TARGET_DIR/debug/outbox-relay"
TAIL="$CARGO_TARGET_DIR/debug/examples/tail"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PG_PORT=$(free_port); KAFKA_PORT=$(free_port); METRICS_PORT=$(free_port)
DIR=$(mktemp -d /tmp/outbox-demo-XXXX); chmod 755 "$DIR"
PGBIN=/usr/lib/postgresql/15/bin
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

echo "== PostgreSQL on 127.0.0.1:$PG_PORT"
mkdir "$DIR/pg" && chown postgres "$DIR/pg" && chown postgres "$DIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/pg" -A trust -U postgres --no-sync >/dev/null
cat >> "$DIR/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DIR'
wal_level = logical
max_replication_slots = 4
max_wal_senders = 4
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg/server.log" -w start >/dev/null

echo "== tansu broker on 127.0.0.1:$KAFKA_PORT"
tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$DIR/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "ready in" "$DIR/broker.log" 2>/dev/null && break; sleep 0.1; done

export OUTBOX_RELAY_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export OUTBOX_RELAY_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export OUTBOX_RELAY_KAFKA_CREATE_TOPICS=true
export OUTBOX_RELAY_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)

echo "== outbox-relay init"
"$RELAY" init
echo "== outbox-relay run (log: $DIR/relay.log)"
"$RELAY" run >"$DIR/relay.log" 2>&1 &
pids+=($!)

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

echo "== what arrived on Kafka (outbox.order, outbox.payment)"
"$TAIL" "$OUTBOX_RELAY_KAFKA_BROKERS" outbox.order 2 30
"$TAIL" "$OUTBOX_RELAY_KAFKA_BROKERS" outbox.payment 1 30
echo "== lag metrics (http://127.0.0.1:$METRICS_PORT/metrics)"
sleep 1
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null | grep -E '^outbox_relay_(lag|events_published|checkpoint_lsn)' || true
echo "== outbox-relay status"
"$RELAY" status || true
echo "== done; stopping everything"
