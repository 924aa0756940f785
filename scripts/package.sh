#!/usr/bin/env bash
# make package: Debian packages for PostgreSQL 15, written to target/package/:
#
#   postgresql-15-possync_<version>-<rev>_<arch>.deb  the extension: possync.so, possync.control, the install
#                                                     script of this version and every kept install and upgrade
#                                                     script (sql/possync--*.sql)
#   possync-bridge_<version>-<rev>_<arch>.deb         /usr/bin/possync-bridge, its systemd unit, the example
#                                                     config /etc/possync/bridge.toml, the system user possync
#
# <version> is the workspace version in Cargo.toml, <rev> is PACKAGE_REVISION (1). Builds with `cargo pgrx package`
# and `cargo build --release` (the same artifacts `make install` builds), then `dpkg-deb --build --root-owner-group`.
# Nothing is installed. Settings: PG_CONFIG, PACKAGE_DIR (target/package), PACKAGE_REVISION, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${PACKAGE_DIR:-$TARGET/package}
REVISION=${PACKAGE_REVISION:-1}
EXT=possync

die() { echo "package.sh: $*" >&2; exit 1; }
say() { printf 'package: %s\n' "$*"; }

for tool in dpkg-deb dpkg-shlibdeps strip; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev binutils)"
done
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG (apt-get install postgresql-server-dev-15)"

# the workspace version: the `version = "..."` line of [workspace.package] in Cargo.toml
VERSION=$(awk '/^\[/ { section = $0 } section == "[workspace.package]" && $1 == "version" {
  gsub(/[" ]/, "", $3); print $3; exit }' Cargo.toml)
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.+~-][0-9A-Za-z.+~-]*)?$ ]] \
  || die "cannot read the workspace version from Cargo.toml (found \"$VERSION\")"
[[ "$REVISION" =~ ^[0-9A-Za-z.+~]+$ ]] || die "PACKAGE_REVISION \"$REVISION\" is not a Debian revision"
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
[[ "$PG_MAJOR" =~ ^[0-9]+$ ]] || die "cannot read the PostgreSQL major version from $PG_CONFIG"
ARCH=$(dpkg --print-architecture)
DEB_VERSION="$VERSION-$REVISION"
EXT_PKG="postgresql-$PG_MAJOR-$EXT"
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"

BUILD="$OUT/build"
rm -rf "$BUILD"
mkdir -p "$BUILD"
rm -f "$OUT/$EXT_PKG"_*.deb "$OUT"/possync-bridge_*.deb

# ---------------------------------------------------------------------------------------------------------------
# compile
# ---------------------------------------------------------------------------------------------------------------
say "building the extension for PostgreSQL $PG_MAJOR (cargo pgrx package, release)"
PGRX_OUT="$BUILD/pgrx"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$PGRX_OUT" >"$BUILD/pgrx-package.log" 2>&1 \
  || { tail -40 "$BUILD/pgrx-package.log" >&2; die "cargo pgrx package failed (log: $BUILD/pgrx-package.log)"; }
say "building possync-bridge (release)"
cargo build --release -q -p possync-bridge --bin possync-bridge
BRIDGE_BIN="$TARGET/release/possync-bridge"
[ -x "$BRIDGE_BIN" ] || die "$BRIDGE_BIN was not built"

# Runtime library dependencies of a binary as Debian package names, the way debhelper finds them.
shlibs_depends() { # file...
  local dir="$BUILD/shlibdeps" files=()
  mkdir -p "$dir/debian"
  printf 'Source: possync\n\nPackage: possync\nArchitecture: any\n' >"$dir/debian/control"
  for f in "$@"; do files+=("$(realpath "$f")"); done
  # a PostgreSQL module resolves the server's symbols at load time: those are expected to be missing
  (cd "$dir" && dpkg-shlibdeps -O --warnings=0 "${files[@]}" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# control file fields every package shares
common_fields() {
  cat <<EOF
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: possync developers <possync@localhost>
Section: database
Priority: optional
EOF
}

copyright() { # package
  cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: possync
Comment: built by make package from the possync repository

Files: *
License: PostgreSQL
 Released under the PostgreSQL Licence, as Cargo.toml declares.
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# postgresql-15-possync
# ---------------------------------------------------------------------------------------------------------------
say "staging $EXT_PKG $DEB_VERSION"
STAGE="$BUILD/$EXT_PKG"
PGRX_EXTDIR="$PGRX_OUT$EXTDIR"
PGRX_LIB="$PGRX_OUT$PKGLIBDIR/$EXT.so"
[ -f "$PGRX_LIB" ] || die "cargo pgrx package made no $PKGLIBDIR/$EXT.so under $PGRX_OUT"
[ -f "$PGRX_EXTDIR/$EXT.control" ] || die "cargo pgrx package made no $EXT.control"
[ -f "$PGRX_EXTDIR/$EXT--$VERSION.sql" ] || die "cargo pgrx package made no install script $EXT--$VERSION.sql"
install -d -m 0755 "$STAGE/DEBIAN" "$STAGE$PKGLIBDIR" "$STAGE$EXTDIR" "$STAGE/usr/share/doc/$EXT_PKG"
install -m 0644 "$PGRX_LIB" "$STAGE$PKGLIBDIR/$EXT.so"
strip --strip-unneeded "$STAGE$PKGLIBDIR/$EXT.so"
install -m 0644 "$PGRX_EXTDIR/$EXT.control" "$PGRX_EXTDIR"/"$EXT"--*.sql "$STAGE$EXTDIR/"
# cargo-pgrx 0.18 copies sql/possync--A--B.sql (upgrade scripts) but not the kept install scripts of earlier
# versions (sql/possync--A.sql); every one of them goes in. This version's script is the generated one.
shopt -s nullglob
for script in sql/"$EXT"--*.sql; do
  name=$(basename "$script")
  if [ "$name" = "$EXT--$VERSION.sql" ]; then
    say "note: $script is this version's install script; the package carries the one cargo pgrx generated"
    continue
  fi
  [ -f "$STAGE$EXTDIR/$name" ] || install -m 0644 "$script" "$STAGE$EXTDIR/$name"
done
shopt -u nullglob
grep -q "^default_version = '$VERSION'" "$STAGE$EXTDIR/$EXT.control" \
  || die "$EXT.control does not say default_version = '$VERSION'"
install -m 0644 README.md "$STAGE/usr/share/doc/$EXT_PKG/README.md"
copyright >"$STAGE/usr/share/doc/$EXT_PKG/copyright"
EXT_LIBS=$(shlibs_depends "$STAGE$PKGLIBDIR/$EXT.so")
{
  echo "Package: $EXT_PKG"
  common_fields
  echo "Depends: postgresql-$PG_MAJOR${EXT_LIBS:+, $EXT_LIBS}"
  echo "Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
  cat <<EOF
Description: possync: POS events into a stock ledger and a general ledger (PostgreSQL $PG_MAJOR)
 The possync extension posts point-of-sale events (sales, returns, receipts,
 transfers, counts, day closes) into a stock ledger valued at moving average
 cost and a balanced double-entry general ledger, exactly once, and answers
 available-to-promise. CREATE EXTENSION possync in the ERP database.
EOF
} >"$STAGE/DEBIAN/control"

# ---------------------------------------------------------------------------------------------------------------
# possync-bridge
# ---------------------------------------------------------------------------------------------------------------
say "staging possync-bridge $DEB_VERSION"
STAGE="$BUILD/possync-bridge"
P=packaging/possync-bridge
install -d -m 0755 "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/etc/possync" \
  "$STAGE/usr/share/possync-bridge" "$STAGE/usr/share/doc/possync-bridge/examples"
install -m 0755 "$BRIDGE_BIN" "$STAGE/usr/bin/possync-bridge"
strip --strip-unneeded "$STAGE/usr/bin/possync-bridge"
install -m 0644 "$P/possync-bridge.service" "$STAGE/lib/systemd/system/possync-bridge.service"
install -m 0640 "$P/bridge.toml" "$STAGE/etc/possync/bridge.toml"
install -m 0644 "$P/bridge.env" "$STAGE/usr/share/possync-bridge/bridge.env"
install -m 0644 cdc-bridge/README.md "$STAGE/usr/share/doc/possync-bridge/README.md"
install -m 0644 cdc-bridge/mappings/reference.toml "$STAGE/usr/share/doc/possync-bridge/examples/reference-mapping.toml"
install -m 0644 cdc-bridge/sql/reference_pos_schema.sql "$STAGE/usr/share/doc/possync-bridge/examples/"
install -m 0644 cdc-bridge/mappings/normalized.toml "$STAGE/usr/share/doc/possync-bridge/examples/normalized-mapping.toml"
install -m 0644 cdc-bridge/sql/normalized_pos_schema.sql "$STAGE/usr/share/doc/possync-bridge/examples/"
copyright >"$STAGE/usr/share/doc/possync-bridge/copyright"
install -m 0755 "$P/postinst" "$P/prerm" "$P/postrm" "$STAGE/DEBIAN/"
echo /etc/possync/bridge.toml >"$STAGE/DEBIAN/conffiles"
BRIDGE_LIBS=$(shlibs_depends "$STAGE/usr/bin/possync-bridge")
{
  echo "Package: possync-bridge"
  common_fields
  echo "Depends: adduser${BRIDGE_LIBS:+, $BRIDGE_LIBS}"
  echo "Suggests: $EXT_PKG"
  echo "Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
  cat <<EOF
Description: possync bridge: POS databases into the ERP over logical replication
 possync-bridge streams each POS PostgreSQL database into the ERP's possync
 extension over logical replication (pgoutput), exactly once. Runs as the
 systemd service possync-bridge with /etc/possync/bridge.toml, as the system
 user possync.
EOF
} >"$STAGE/DEBIAN/control"

# ---------------------------------------------------------------------------------------------------------------
# build the .deb files
# ---------------------------------------------------------------------------------------------------------------
for pkg in "$EXT_PKG" possync-bridge; do
  deb="$OUT/${pkg}_${DEB_VERSION}_${ARCH}.deb"
  dpkg-deb --build --root-owner-group -Zxz "$BUILD/$pkg" "$deb" >/dev/null
  say "$deb ($(du -h "$deb" | cut -f1))"
  dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print "    " $1 " " $6 }'
done
