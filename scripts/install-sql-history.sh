#!/usr/bin/env bash
# Installs the install scripts of earlier releases that the repository keeps (sql/possync--X.sql), beside what
# `cargo pgrx install` generated for the version being built, so that `CREATE EXTENSION possync VERSION 'X'`
# and `ALTER EXTENSION possync UPDATE` from X work. (cargo pgrx install copies the upgrade scripts
# sql/possync--A--B.sql itself, but not whole install scripts.) The current version's script is always the one
# the build generated; a test checks that a kept copy of it says the same.
set -euo pipefail
PG_CONFIG=${1:-/usr/lib/postgresql/15/bin/pg_config}
root=$(cd "$(dirname "$0")/.." && pwd)
current=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
dest="$("$PG_CONFIG" --sharedir)/extension"
for f in "$root"/sql/possync--*.sql; do
  name=$(basename "$f")
  case "$name" in
    possync--*--*.sql) install -m 644 "$f" "$dest/$name" ;;
    "possync--$current.sql") ;;
    *) install -m 644 "$f" "$dest/$name" ;;
  esac
done
