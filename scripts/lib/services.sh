# Shell helpers shared by scripts/demo.sh, scripts/bench.sh and scripts/test-spring.sh: a
# throw-away PostgreSQL 15 cluster and a single-node Apache Kafka (KRaft) on loopback, both
# under one directory, stopped by `services_stop`. Source it; run scripts/setup.sh first.
#
#   services_start_pg DIR          -> PG_PORT, PG_URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   services_start_kafka DIR       -> KAFKA_PORT, KAFKA_BOOTSTRAP
#   services_stop                  -> stops what was started (call it from an EXIT trap)
#
# The JVM gets a small heap and few compiler/GC threads: left alone it takes a quarter of the
# RAM and its threads starve PostgreSQL's walsender on 2 cores.

SERVICES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_LIBS="${KAFKA_LIBS:-$HOME/.cache/outbox-relay/kafka/$KAFKA_VERSION/libs}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
KAFKA_JAVA_OPTS="${KAFKA_JAVA_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 -Djava.awt.headless=true}"
_SERVICES_PG_DIR=""
_SERVICES_KAFKA_PID=""

services_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# services_wait WHAT SECONDS CMD...: polls CMD every 0.2 s until it succeeds or the deadline.
services_wait() {
    local what=$1 secs=$2; shift 2
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then
            echo "timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

services_start_pg() {
    local dir=$1
    PG_PORT=$(services_free_port)
    mkdir -p "$dir/pg"
    chmod 755 "$dir"
    chown postgres "$dir" "$dir/pg" 2>/dev/null || true
    local as=()
    [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$PGBIN/initdb" -D "$dir/pg" -A trust -U postgres --no-sync >/dev/null
    cat >> "$dir/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 8
max_wal_senders = 8
fsync = off
CONF
    "${as[@]}" "$PGBIN/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w start >/dev/null
    _SERVICES_PG_DIR="$dir/pg"
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

# A random KRaft cluster id (16 bytes, URL-safe base64). Like Kafka's own Uuid.randomUuid,
# never one that starts with "-": the storage tool's argument parser would take it for an
# option and fail the format ("argument --cluster-id/-t: expected one argument"), 1 run in 64.
services_cluster_id() {
    python3 -c 'import uuid, base64
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

services_start_kafka() {
    local dir=$1
    [ -d "$KAFKA_LIBS" ] || { echo "no Kafka at $KAFKA_LIBS: run scripts/setup.sh" >&2; return 1; }
    KAFKA_PORT=$(services_free_port)
    local ctl_port
    ctl_port=$(services_free_port)
    mkdir -p "$dir/kafka"
    cat > "$dir/kafka/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl_port
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/kafka/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.flush.interval.messages=9223372036854775807
PROPS
    # shellcheck disable=SC2086
    java $KAFKA_JAVA_OPTS -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
        -t "$(services_cluster_id)" \
        -c "$dir/kafka/server.properties" >"$dir/kafka/format.log" 2>&1 \
        || { echo "kafka storage format failed:" >&2; cat "$dir/kafka/format.log" >&2; return 1; }
    # shellcheck disable=SC2086
    setsid java $KAFKA_JAVA_OPTS -Dlog4j2.configurationFile="$SERVICES_ROOT/deploy/kafka/log4j2.yaml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/kafka/server.properties" \
        >"$dir/kafka/broker.log" 2>&1 </dev/null &
    _SERVICES_KAFKA_PID=$!
    # No "Killed" job notice when services_stop ends it.
    disown "$_SERVICES_KAFKA_PID" 2>/dev/null || true
    KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
    if ! services_wait "Kafka to start (log: $dir/kafka/broker.log)" 90 grep -q 'Kafka Server started' "$dir/kafka/broker.log"; then
        tail -20 "$dir/kafka/broker.log" >&2
        return 1
    fi
}

services_stop() {
    if [ -n "$_SERVICES_KAFKA_PID" ]; then
        # setsid made the JVM a process-group leader: take the whole group.
        kill -9 -- "-$_SERVICES_KAFKA_PID" 2>/dev/null || kill -9 "$_SERVICES_KAFKA_PID" 2>/dev/null || true
        _SERVICES_KAFKA_PID=""
    fi
    if [ -n "$_SERVICES_PG_DIR" ]; then
        local as=()
        [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
        "${as[@]}" "$PGBIN/pg_ctl" -D "$_SERVICES_PG_DIR" -m immediate stop >/dev/null 2>&1 || true
        _SERVICES_PG_DIR=""
    fi
}
