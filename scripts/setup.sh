#!/usr/bin/env bash
# Installs what the build and the integration tests need on Debian 12. Idempotent: installs
# only what is missing. Needs root (or sudo) for apt-get.
#   - PostgreSQL 15 server (/usr/lib/postgresql/15/bin), build deps of rdkafka (bundled
#     librdkafka with ssl + zlib)
#   - tansu 0.6.0 (Kafka-protocol broker used by the tests) in ~/.cargo/bin
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
TANSU_VERSION=0.6.0
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
PKGS=(postgresql-15 postgresql-contrib libssl-dev zlib1g-dev build-essential pkg-config prometheus python3 python3-yaml)
missing=()
for p in "${PKGS[@]}"; do
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

# --- Rust toolchain components used by .ci/run ---------------------------------------------
command -v cargo >/dev/null 2>&1 || { log "cargo not found (expected in $CARGO_BIN)"; exit 1; }
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "cargo ${c/rustfmt/fmt} missing; trying: rustup component add $c"
        rustup component add "$c" || log "could not add $c"
    fi
done

# --- tansu broker ------------------------------------------------------------------------
tansu_ok() {
    [ -x "$CARGO_BIN/tansu" ] && "$CARGO_BIN/tansu" --version 2>/dev/null | grep -qw "$TANSU_VERSION"
}
other_install_running() {
    pgrep -f "cargo install .*tansu" >/dev/null 2>&1
}
if ! tansu_ok; then
    mkdir -p "$HOME/.cache/outbox-relay"
    # One install at a time (CI and a developer may run this concurrently).
    exec 9>"$HOME/.cache/outbox-relay/tansu-install.lock"
    flock 9
    # An install started by hand elsewhere: wait for it instead of building twice.
    waited=0
    while ! tansu_ok && other_install_running && [ "$waited" -lt 3600 ]; do
        [ "$waited" -eq 0 ] && log "waiting for a running 'cargo install tansu' to finish"
        sleep 10
        waited=$((waited + 10))
    done
    if ! tansu_ok; then
        log "installing tansu $TANSU_VERSION (takes ~7-10 min on 2 cores)"
        # Its own target dir: CARGO_TARGET_DIR (the project's) must not be shared with it.
        env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
            --features dynostore --root "${CARGO_HOME:-$HOME/.cargo}"
    fi
    flock -u 9
    exec 9>&-
    tansu_ok || { log "tansu $TANSU_VERSION not usable after install"; exit 1; }
fi
log "tansu: $("$CARGO_BIN/tansu" --version 2>&1 | head -1)"
