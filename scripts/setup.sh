#!/usr/bin/env bash
# Installs what the build and the integration tests need on Debian 12. Idempotent: installs
# only what is missing. Needs root (or sudo) for apt-get.
#   - PostgreSQL 15 server (/usr/lib/postgresql/15/bin), build deps of rdkafka (bundled
#     librdkafka with ssl + zlib)
#   - a Java runtime (17+) and Maven, if missing
#   - Apache Kafka (KRaft broker + tools) from Maven Central, via deploy/kafka/pom.xml, into
#     ~/.cache/outbox-relay/kafka/$KAFKA_VERSION/libs (fetched once; ~15 s on a fast mirror)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
# Keep in step with deploy/kafka/pom.xml and docker-compose.yml.
KAFKA_VERSION=4.1.1
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        log "not root and no sudo: apt-get installs will fail"
    fi
fi

# --- Debian packages -------------------------------------------------------------------
# prometheus: promtool and the server for tests/observability.rs; python3-yaml: the tests
# parse docker-compose.yml with python3.
PKGS=(postgresql-15 openjdk-17-jre-headless maven postgresql-contrib libssl-dev zlib1g-dev build-essential pkg-config prometheus python3 python3-yaml)
missing=()
for p in "${PKGS[@]}"; do
    # A Java 17+ or Maven installed some other way (SDKMAN, Temurin) is as good.
    case "$p" in
        openjdk-17-jre-headless) java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' && continue ;;
        maven) command -v mvn >/dev/null 2>&1 && continue ;;
    esac
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Update the package lists only if they are absent or older than a day.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]; then
        "${SUDO[@]}" apt-get update -qq
    fi
    if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        log "install failed; retrying after apt-get update"
        "${SUDO[@]}" apt-get update -qq
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    log "Debian packages present"
fi
test -x /usr/lib/postgresql/15/bin/initdb || { log "initdb missing after install"; exit 1; }
id postgres >/dev/null 2>&1 || { log "no postgres system user after install"; exit 1; }
command -v promtool >/dev/null 2>&1 || { log "promtool missing after install (package prometheus)"; exit 1; }
# The python3 first on PATH may not be Debian's (pyenv): give it PyYAML too.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    log "installing PyYAML for $(command -v python3)"
    python3 -m pip install --quiet pyyaml \
        || python3 -m pip install --quiet --break-system-packages pyyaml \
        || { log "could not install PyYAML"; exit 1; }
fi

# The official CloudEvents SDK parses the relay's CloudEvents messages in tests/cloudevents.rs.
if ! python3 -c 'import cloudevents.core.bindings.kafka' >/dev/null 2>&1; then
    log "installing the CloudEvents SDK for $(command -v python3)"
    python3 -m pip install --quiet 'cloudevents>=2' \
        || python3 -m pip install --quiet --break-system-packages 'cloudevents>=2' \
        || { log "could not install the cloudevents package"; exit 1; }
fi

# --- Rust toolchain components used by .ci/run ---------------------------------------------
command -v cargo >/dev/null 2>&1 || { log "cargo not found (expected in $CARGO_BIN)"; exit 1; }
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "cargo ${c/rustfmt/fmt} missing; trying: rustup component add $c"
        rustup component add "$c" || log "could not add $c"
    fi
done

# --- Apache Kafka from Maven Central -------------------------------------------------------
KAFKA_HOME_DIR="$HOME/.cache/outbox-relay/kafka/$KAFKA_VERSION"
if [ ! -f "$KAFKA_HOME_DIR/.complete" ]; then
    mkdir -p "$KAFKA_HOME_DIR"
    exec 8>"$KAFKA_HOME_DIR.lock"
    flock 8
    if [ ! -f "$KAFKA_HOME_DIR/.complete" ]; then
        log "fetching Apache Kafka $KAFKA_VERSION from Maven Central (first time only)"
        started=$(date +%s)
        rm -rf "$KAFKA_HOME_DIR/libs"
        mvn -q -B -f deploy/kafka/pom.xml -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DoutputDirectory="$KAFKA_HOME_DIR/libs"
        ls "$KAFKA_HOME_DIR/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null \
            || { log "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; exit 1; }
        touch "$KAFKA_HOME_DIR/.complete"
        log "Kafka fetched in $(($(date +%s) - started)) s"
    fi
    flock -u 8
    exec 8>&-
fi
log "Apache Kafka $KAFKA_VERSION: $KAFKA_HOME_DIR/libs"
