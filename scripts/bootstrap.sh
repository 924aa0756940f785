#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run possync.
# Every step checks first, so a second run takes a second.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# chromium: the e2e dashboard test loads the page in a real headless browser
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev sudo pkg-config chromium)

log() { printf 'bootstrap: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}" ${EXTRA_APT_PACKAGES:-}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Debian package starts a cluster on 5432; possync never uses it, and tests pick their own ports.

if ! command -v cargo >/dev/null; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if [ ! -f "$PGRX_HOME/config.toml" ] || ! grep -q 'pg15' "$PGRX_HOME/config.toml"; then
  log "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# The extension's files go into the system PostgreSQL's directories; the postgres user must be able to
# read the build folder when tests run the server as postgres.
log "ready"
