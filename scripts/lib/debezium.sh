# Fetching what `scripts/bench.sh --against debezium` needs. Source it.
#
#   debezium_fetch   Kafka Connect + Debezium's PostgreSQL connector (deploy/debezium/pom.xml)
#                    from Maven Central, once, into ~/.cache/outbox-relay/debezium/<kafka>-<dbz>/libs
#                    -> DEBEZIUM_LIBS
#   plot_deps        matplotlib for benches/plot.py (pip, only if python3 lacks it)

DEBEZIUM_VERSION="${DEBEZIUM_VERSION:-3.6.1.Final}"
CONNECT_VERSION="${CONNECT_VERSION:-4.1.1}"

debezium_fetch() {
    local home="$HOME/.cache/outbox-relay/debezium/$CONNECT_VERSION-$DEBEZIUM_VERSION"
    DEBEZIUM_LIBS="$home/libs"
    if [ -f "$home/.complete" ]; then
        echo "[bench] Kafka Connect $CONNECT_VERSION + Debezium $DEBEZIUM_VERSION: $DEBEZIUM_LIBS" >&2
        return 0
    fi
    mkdir -p "$home"
    exec 9>"$home.lock"
    flock 9
    if [ ! -f "$home/.complete" ]; then
        echo "[bench] fetching Kafka Connect $CONNECT_VERSION + Debezium $DEBEZIUM_VERSION from Maven Central (first time only)" >&2
        local started
        started=$(date +%s)
        rm -rf "$DEBEZIUM_LIBS"
        mvn -q -B -f deploy/debezium/pom.xml -Dkafka.version="$CONNECT_VERSION" \
            -Ddebezium.version="$DEBEZIUM_VERSION" \
            dependency:copy-dependencies -DoutputDirectory="$DEBEZIUM_LIBS"
        ls "$DEBEZIUM_LIBS"/debezium-connector-postgres-"$DEBEZIUM_VERSION".jar \
            "$DEBEZIUM_LIBS"/connect-runtime-"$CONNECT_VERSION".jar >/dev/null \
            || { echo "[bench] jars missing after the fetch" >&2; return 1; }
        touch "$home/.complete"
        echo "[bench] fetched in $(($(date +%s) - started)) s" >&2
    fi
    flock -u 9
    exec 9>&-
}

plot_deps() {
    if python3 -c 'import matplotlib' >/dev/null 2>&1; then
        return 0
    fi
    echo "[bench] installing matplotlib for $(command -v python3)" >&2
    python3 -m pip install --quiet matplotlib \
        || python3 -m pip install --quiet --break-system-packages matplotlib \
        || { echo "[bench] could not install matplotlib (no picture)" >&2; return 1; }
}
