#!/usr/bin/env bash
# Builds the relay binary of the *previous release* for the side-by-side version test
# (tests/versions.rs: an old and a new relay on one slot hand the lead to each other).
# Prints the binary's path on stdout; scripts/test.sh exports it as OUTBOX_PREV_RELAY.
#
#   OUTBOX_PREV_COMMIT  which commit of this repository is "the previous release"
#                       (default below: main before versioned records; a hash, never a tag)
#   OUTBOX_PREV_CACHE   where binaries are kept, one per commit
#                       (default ~/.cache/outbox-relay/prev/<commit>/outbox-relay)
#   CARGO_TARGET_DIR    the current build's target dir: the old sources build in it too, so
#                       dependencies with the same version and features are reused and only
#                       the crate itself compiles (~1-2 min on a warm dir)
#
# Idempotent (an existing binary is reused) and safe to run concurrently (flock per commit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEFAULT_COMMIT=50876486ed25ff66de405076b27781326fa251dd
COMMIT="${OUTBOX_PREV_COMMIT:-$DEFAULT_COMMIT}"
CACHE="${OUTBOX_PREV_CACHE:-$HOME/.cache/outbox-relay/prev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outbox-relay/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '[build-previous] %s\n' "$*" >&2; }

if ! full="$(git rev-parse --verify --quiet "${COMMIT}^{commit}")"; then
    log "commit $COMMIT is not in this clone (a shallow clone?): run 'git fetch --unshallow' or set OUTBOX_PREV_COMMIT"
    exit 1
fi
out="$CACHE/$full"
bin="$out/outbox-relay"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -x "$bin" ]; then
    log "reusing $bin"
    echo "$bin"
    exit 0
fi

# The sources at a fixed path per commit (a stable path keeps cargo's fingerprints stable).
src="$out/src"
if [ ! -f "$src/.complete" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    git archive "$full" | tar -x -C "$src"
    touch "$src/.complete"
fi

log "building $full in $src (target dir $CARGO_TARGET_DIR)"
start=$(date +%s)
# With the examples, dependency features are unified with the dev-dependencies exactly as
# in `cargo test`, so the test build's dependency artifacts are reused instead of a second
# feature set being compiled.
(cd "$src" && cargo build --locked --bin outbox-relay --examples) >&2
# The binary cargo just linked (it also uplifted it to $CARGO_TARGET_DIR/debug/, where the
# current tree's next build links its own again).
cp "$CARGO_TARGET_DIR/debug/outbox-relay" "$bin.tmp"
mv "$bin.tmp" "$bin"
log "built $bin in $(( $(date +%s) - start )) s"
echo "$bin"
