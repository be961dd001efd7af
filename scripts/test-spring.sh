#!/usr/bin/env bash
# End-to-end tests of the Spring client library (clients/spring) against real services: a
# throw-away PostgreSQL 15 cluster, a single-node Apache Kafka, and the outbox-relay binary
# built from this tree (`init`, then `run`). Then `mvn verify` in clients/spring: unit tests
# (surefire) and the *IT end-to-end tests (failsafe), which find the services through
# OUTBOX_IT_JDBC_URL, OUTBOX_IT_DB_USER and OUTBOX_IT_KAFKA_BOOTSTRAP.
# Fails if any test failed, if Maven ran no unit or no end-to-end tests, or if any was skipped.
#   CARGO_TARGET_DIR   default ~/.cache/outbox-relay/target (as scripts/test.sh)
#   OUTBOX_RELAY_BIN   use this relay binary instead of building one
#   MAVEN_OPTS         default: a small heap for Maven's own JVM (test JVMs: see the pom)
#   KEEP_WORK=1        keep the services' directory (data and logs) after the run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export MAVEN_OPTS="${MAVEN_OPTS:--Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
START=$(date +%s)

log() { printf '[test-spring] %s\n' "$*" >&2; }

bash scripts/setup.sh
# shellcheck source=lib/services.sh
. scripts/lib/services.sh

if [ -n "${OUTBOX_RELAY_BIN:-}" ]; then
    RELAY=$OUTBOX_RELAY_BIN
else
    log "building the relay (cargo build --bin outbox-relay)"
    cargo build --quiet --bin outbox-relay
    RELAY="$CARGO_TARGET_DIR/debug/outbox-relay"
fi
[ -x "$RELAY" ] || { log "no relay binary at $RELAY"; exit 1; }

WORK=$(mktemp -d /tmp/outbox-spring.XXXXXX)
RELAY_PID=""
cleanup() {
    local status=$?
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        # Graceful stop drains in-flight messages; do not wait forever.
        for _ in $(seq 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    services_stop
    if [ "$status" -ne 0 ] && [ -f "$WORK/relay.log" ]; then
        log "relay log (last 30 lines):"
        tail -30 "$WORK/relay.log" >&2 || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT

log "starting PostgreSQL and Kafka under $WORK"
services_start_pg "$WORK"
services_start_kafka "$WORK"
# The broker is a background job of this shell: disown it so its kill in services_stop is
# not reported as "Killed".
disown -a

METRICS_PORT=$(services_free_port)
export OUTBOX_RELAY_POSTGRES_URL="$PG_URL"
export OUTBOX_RELAY_KAFKA_BROKERS="$KAFKA_BOOTSTRAP"
export OUTBOX_RELAY_KAFKA_CREATE_TOPICS=true
export OUTBOX_RELAY_METRICS_LISTEN="127.0.0.1:$METRICS_PORT"
export NO_COLOR=1 # plain log file
"$RELAY" init >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; exit 1; }
"$RELAY" run >"$WORK/relay.log" 2>&1 </dev/null &
RELAY_PID=$!

relay_ready() {
    kill -0 "$RELAY_PID" 2>/dev/null || { log "the relay exited"; exit 1; }
    curl -fsS -o /dev/null "http://127.0.0.1:$METRICS_PORT/readyz"
}
end=$(( $(date +%s) + 60 ))
until relay_ready 2>/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || { log "relay not ready within 60s"; exit 1; }
    sleep 0.2
done
log "relay ready ($(( $(date +%s) - START ))s); running mvn verify"

export OUTBOX_IT_JDBC_URL="jdbc:postgresql://127.0.0.1:$PG_PORT/postgres"
export OUTBOX_IT_DB_USER=postgres
export OUTBOX_IT_KAFKA_BOOTSTRAP="$KAFKA_BOOTSTRAP"
MVN_START=$(date +%s)
set +e
# -q keeps passing runs quiet; Debian's Maven 3.8 prints stray colour resets even with -B.
mvn -B -ntp -q -f clients/spring/pom.xml clean verify 2>&1 | sed 's/\x1b\[0m//g'
mvn_status=${PIPESTATUS[0]}
set -e

# One closing line per test class and a total, from the XML reports; refuse empty or skipped runs.
python3 - "$ROOT/clients/spring/target" "$(( $(date +%s) - MVN_START ))" <<'PY' || mvn_status=1
import glob, os, sys
import xml.etree.ElementTree as ET
target, mvn_secs = sys.argv[1], sys.argv[2]
totals = {}
for kind in ("surefire", "failsafe"):
    t = totals[kind] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for path in sorted(glob.glob(os.path.join(target, kind + "-reports", "TEST-*.xml"))):
        s = ET.parse(path).getroot()
        row = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        secs = float(s.get("time", 0) or 0)
        for k in row:
            t[k] += row[k]
        t["time"] += secs
        print(f"  {kind:8} {s.get('name')}: {row['tests']} tests, {row['failures']} failed, "
              f"{row['errors']} errors, {row['skipped']} skipped, {secs:.1f}s")
ok = True
for kind, label in (("surefire", "unit"), ("failsafe", "end-to-end")):
    t = totals[kind]
    print(f"{label} tests: {t['tests']} run, {t['failures'] + t['errors']} failed, {t['skipped']} skipped ({t['time']:.1f}s)")
    if t["tests"] == 0:
        print(f"error: no {label} tests ran", file=sys.stderr); ok = False
    if t["skipped"]:
        print(f"error: {t['skipped']} {label} tests were skipped", file=sys.stderr); ok = False
    if t["failures"] or t["errors"]:
        ok = False
print(f"mvn verify took {mvn_secs}s")
sys.exit(0 if ok else 1)
PY
log "done in $(( $(date +%s) - START ))s"
exit "$mvn_status"
