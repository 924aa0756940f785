#!/usr/bin/env bash
# make test-package: the Debian packages, installed and removed on this machine the way a DBA would.
#
#   scripts/test-package.sh [--no-build]
#
# Builds both packages (scripts/package.sh; --no-build uses those already in target/package), then, holding
# /tmp/possync-system-pg.lock (the system PostgreSQL's extension and library directories are shared):
#   1. dpkg -i postgresql-15-possync and possync-bridge; checks their files, the user possync and the modes of
#      /etc/possync;
#   2. a throwaway ERP cluster (own port and socket directory under target/package-test): CREATE EXTENSION
#      possync from the packaged files, master data, a role for the bridge with possync.grant_bridge;
#   3. a POS cluster (wal_level=logical) with the reference POS schema; both clusters require passwords over TCP;
#   4. /etc/possync/bridge.toml pointing at both with ${VAR} passwords, the passwords in /etc/possync/bridge.env;
#      the bridge started from the installed unit file: its ExecStart, as its User, with its Environment and
#      EnvironmentFile, in /, with its UMask (there is no systemd here to start it);
#   5. a sale at the POS; waits until the ERP has posted it: event applied, stock moved, journal balanced,
#      reconcile and check_invariants clean; the bridge's log holds no password;
#   6. stops the bridge (SIGTERM, clean exit) and both clusters; installs possync-bridge again (an upgrade keeps
#      bridge.toml and bridge.env); dpkg --remove (keeps /etc/possync and the user); dpkg --purge both packages,
#      and checks that no file of theirs, no /etc/possync and no user or group possync remain.
# Files `make install` had put into the system PostgreSQL are saved first and put back at the end, so a test run
# leaves the machine as it found it. Must run as root (dpkg).
# `A && B || die` below means "both hold, or fail": intended.
# shellcheck disable=SC2015
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
ROOT=$(pwd)
export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

LOCK=/tmp/possync-system-pg.lock
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${PACKAGE_DIR:-$TARGET/package}
WORK=$TARGET/package-test
EXT_PKG=postgresql-$PG_MAJOR-possync
BRIDGE_PKG=possync-bridge
UNIT=/lib/systemd/system/possync-bridge.service
EXPECTED_EXEC="/usr/bin/possync-bridge run --config /etc/possync/bridge.toml"

die() { echo "test-package: FAILED: $*" >&2; exit 1; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok() { printf '  ok  %s\n' "$*"; }

BUILD=1
LOCKED=0
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --locked) LOCKED=1 ;; # internal: this process holds $LOCK
    -h|--help) sed -n '2,22p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test-package.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: the test installs packages with dpkg"

# ---------------------------------------------------------------------------------------------------------------
# outside the lock: build, find the packages, then run the rest holding the lock
# ---------------------------------------------------------------------------------------------------------------
if [ "$LOCKED" = 0 ]; then
  STARTED=$(date +%s)
  if [ "$BUILD" = 1 ]; then
    ./scripts/package.sh
  fi
  for p in "$EXT_PKG" "$BRIDGE_PKG"; do
    n=$(find "$OUT" -maxdepth 1 -name "${p}_*.deb" | wc -l)
    [ "$n" = 1 ] || die "expected one ${p}_*.deb in $OUT, found $n (run make package)"
  done
  # a caller that already holds the lock (flock ... make test) says so, or it would wait for itself
  if [ "${POSSYNC_SYSTEM_PG_LOCK_HELD:-0}" = 1 ]; then
    export TEST_PACKAGE_STARTED=$STARTED
    exec "$SELF" --locked
  fi
  if ! flock -n "$LOCK" true; then
    echo "test-package: waiting for $LOCK (someone is installing into or testing against the system PostgreSQL)"
  fi
  export TEST_PACKAGE_STARTED=$STARTED
  code=0
  flock -w 3600 -E 75 "$LOCK" "$SELF" --locked || code=$?
  [ "$code" != 75 ] || echo "test-package: gave up waiting an hour for $LOCK" >&2
  exit "$code"
fi

# ---------------------------------------------------------------------------------------------------------------
# holding the lock
# ---------------------------------------------------------------------------------------------------------------
LOCKED_AT=$(date +%s)
EXT_DEB=$(find "$OUT" -maxdepth 1 -name "${EXT_PKG}_*.deb")
BRIDGE_DEB=$(find "$OUT" -maxdepth 1 -name "${BRIDGE_PKG}_*.deb")
VERSION=$(dpkg-deb --field "$EXT_DEB" Version)
VERSION=${VERSION%-*}

installed() { # package: installed, or removed with its conffiles left
  local s
  s=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)
  [ -n "$s" ] && [ "${s:1:1}" != n ]
}
as_pg() { sudo -u postgres "$@"; }

for p in "$EXT_PKG" "$BRIDGE_PKG"; do
  installed "$p" && die "$p is already installed on this machine; this test installs and purges it.
Remove it first (dpkg --purge $p) or run the test elsewhere."
done
getent passwd possync >/dev/null && die "a user possync exists already; purging possync-bridge would remove it.
If a killed run of this test left it: deluser --system possync"
[ -e /etc/possync ] && die "/etc/possync exists already; this test writes and purges it"

BRIDGE_PID=""
INSTALLED=0
SAVED="$WORK/saved-system-files"
CLUSTERS=(erp pos)

stop_cluster() { # name
  if [ -f "$WORK/$1/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/$1" -m fast -w stop >/dev/null 2>&1 \
      || as_pg "$PG_BIN/pg_ctl" -D "$WORK/$1" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

stop_bridge() { # SIGTERM, then SIGKILL after 20 s; returns the bridge's exit status
  local code=0
  [ -n "$BRIDGE_PID" ] || return 0
  if kill -0 "$BRIDGE_PID" 2>/dev/null; then
    kill -TERM "$BRIDGE_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$BRIDGE_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$BRIDGE_PID" 2>/dev/null; then
      kill -KILL "$BRIDGE_PID" 2>/dev/null || true
      code=137
    fi
  fi
  wait "$BRIDGE_PID" 2>/dev/null || code=$?
  BRIDGE_PID=""
  return "$code"
}

restore_saved() {
  [ -f "$SAVED/list" ] || return 0
  while IFS= read -r f; do
    [ -e "$f" ] || cp -a "$SAVED/files/$(basename "$f")" "$f"
  done <"$SAVED/list"
  echo "test-package: put back the files make install had put into the system PostgreSQL ($(wc -l <"$SAVED/list"))"
  rm -rf "$SAVED"
}

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_bridge || true
  for c in "${CLUSTERS[@]}"; do stop_cluster "$c"; done
  if [ "$INSTALLED" = 1 ]; then
    echo "test-package: removing the packages this run installed"
    dpkg --purge "$BRIDGE_PKG" "$EXT_PKG" >/dev/null 2>&1 || echo "test-package: dpkg --purge failed; run: dpkg --purge $BRIDGE_PKG $EXT_PKG" >&2
  fi
  restore_saved || echo "test-package: could not put back the files saved in $SAVED" >&2
  if [ "$code" -ne 0 ]; then
    echo "test-package: logs kept in $WORK (bridge.log, erp.log, pos.log)" >&2
  else
    for c in "${CLUSTERS[@]}"; do rm -rf "${WORK:?}/$c"; done
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'echo "test-package: interrupted"; exit 130' INT TERM

for c in "${CLUSTERS[@]}"; do stop_cluster "$c"; done
rm -rf "$WORK"
mkdir -p "$WORK"
chown postgres "$WORK"

# Files of an earlier `make install`: dpkg -i overwrites them and dpkg --purge deletes them; they come back at
# the end.
mkdir -p "$SAVED/files"
: >"$SAVED/list"
for f in "$PKGLIBDIR/possync.so" "$EXTDIR/possync.control" "$EXTDIR"/possync--*.sql; do
  [ -f "$f" ] || continue
  cp -a "$f" "$SAVED/files/" && echo "$f" >>"$SAVED/list"
done

# paths the packages ship that exist before they are installed (shared directories such as /usr/bin)
package_paths() { dpkg-deb --contents "$1" | awk '{ print $6 }' | sed -e 's|^\./|/|' -e 's|/$||' | grep -v '^$' | grep -v '^\.$'; }
mapfile -t PACKAGE_PATHS < <(package_paths "$EXT_DEB"; package_paths "$BRIDGE_DEB")
PRESENT_BEFORE=()
for p in "${PACKAGE_PATHS[@]}"; do
  [ -d "$p" ] && PRESENT_BEFORE+=("$p")
done

# ---------------------------------------------------------------------------------------------------------------
say "1. dpkg -i $(basename "$EXT_DEB") $(basename "$BRIDGE_DEB")"
INSTALLED=1
dpkg -i "$EXT_DEB" "$BRIDGE_DEB"
for p in "$EXT_PKG" "$BRIDGE_PKG"; do
  [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p")" = "ii " ] || die "$p is not installed cleanly"
done
ok "both packages installed (version $VERSION)"

for f in "$PKGLIBDIR/possync.so" "$EXTDIR/possync.control" "$EXTDIR/possync--$VERSION.sql"; do
  dpkg -S "$f" 2>/dev/null | grep -q "^$EXT_PKG: " || die "$f is not installed by $EXT_PKG"
done
shopt -s nullglob
KEPT=(sql/possync--*.sql)
shopt -u nullglob
for s in "${KEPT[@]}"; do
  [ -f "$EXTDIR/$(basename "$s")" ] || die "the package lacks $(basename "$s") (from $s)"
done
ok "$EXT_PKG: possync.so, possync.control, possync--$VERSION.sql and ${#KEPT[@]} script(s) from sql/: $(dpkg -L "$EXT_PKG" | grep -c '/possync--.*\.sql$') SQL scripts in all"

for f in /usr/bin/possync-bridge "$UNIT" /etc/possync/bridge.toml; do
  dpkg -S "$f" 2>/dev/null | grep -q "^$BRIDGE_PKG: " || die "$f is not installed by $BRIDGE_PKG"
done
grep -qx /etc/possync/bridge.toml /var/lib/dpkg/info/$BRIDGE_PKG.conffiles || die "bridge.toml is not a conffile"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd possync) || die "postinst made no user possync"
[ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ] && [ "$home" = /nonexistent ] \
  || die "possync is not a system user without login and home (uid $uid, shell $shell, home $home)"
for f in /etc/possync/bridge.toml /etc/possync/bridge.env; do
  [ "$(stat -c '%a %U %G' "$f")" = "640 root possync" ] || die "$f is $(stat -c '%a %U %G' "$f"), not 640 root possync"
done
/usr/bin/possync-bridge --version | grep -qF "$VERSION" || die "possync-bridge --version does not say $VERSION"
ok "$BRIDGE_PKG: binary, unit, conffile bridge.toml; system user possync (uid $uid); bridge.toml and bridge.env 640 root:possync"
if command -v systemd-analyze >/dev/null; then
  # verify exits 0 on unknown keys too, but says so: any output is a finding
  out=$(systemd-analyze verify "$UNIT" 2>&1) && [ -z "$out" ] || die "systemd-analyze verify $UNIT: $out"
  exposure=$(systemd-analyze --offline=true security "$UNIT" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p' || true)
  ok "systemd-analyze verify $UNIT: clean${exposure:+; security exposure $exposure}"
fi

# ---------------------------------------------------------------------------------------------------------------
free_port() { # a port nothing listens on
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
start_cluster() { # name port extra-settings...
  local name=$1 port=$2; shift 2
  as_pg "$PG_BIN/initdb" -D "$WORK/$name" -U postgres -A trust --no-sync >/dev/null
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$WORK'"
    echo "max_connections = 20"
    echo "shared_buffers = 32MB"
    echo "fsync = off"
    for s in "$@"; do echo "$s"; done
  } | as_pg tee -a "$WORK/$name/postgresql.auto.conf" >/dev/null
  # the socket (tests, set-up) trusts; TCP (the bridge) needs a password
  printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n' \
    | as_pg tee "$WORK/$name/pg_hba.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/$name" -l "$WORK/$name.log" -w -t 60 start >/dev/null
}
secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

ERP_PORT=$(free_port)
say "2. ERP cluster on port $ERP_PORT: CREATE EXTENSION possync from the package"
start_cluster erp "$ERP_PORT"
erp() { psql -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$ERP_PORT" -U postgres -d erp "$@"; }
psql -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$ERP_PORT" -U postgres -d postgres -c "CREATE DATABASE erp"
erp -c "CREATE EXTENSION possync"
[ "$(erp -At -c "SELECT extversion FROM pg_extension WHERE extname = 'possync'")" = "$VERSION" ] \
  || die "CREATE EXTENSION possync did not install version $VERSION"
for s in "$EXTDIR"/possync--*.sql; do
  v=$(basename "$s" .sql); v=${v##*--}
  [ "$(erp -At -c "SELECT count(*) FROM pg_available_extension_versions WHERE name = 'possync' AND version = '$v'")" = 1 ] \
    || die "PostgreSQL does not offer possync version $v (from $(basename "$s"))"
done
ok "CREATE EXTENSION possync: version $VERSION; PostgreSQL offers $(erp -At -c "SELECT string_agg(version, ', ' ORDER BY version) FROM pg_available_extension_versions WHERE name = 'possync'")"

ERP_PW=$(secret)
POS_PW=$(secret)
# master data: the default chart, a store, two items with stock, the store's tax code; a bridge role
erp >/dev/null <<SQL
SELECT possync.install_default_chart();
INSERT INTO possync.location (location_id, name) VALUES ('S042', 'Store 42');
INSERT INTO possync.item (sku, description, standard_cost) VALUES ('TSHIRT-M', 'T-shirt M', 6.40), ('CAP', 'Cap', 4.00);
INSERT INTO possync.tax_code (tax_code, rate) VALUES ('NY', 0.08875);
SELECT possync.apply_event('{"event_id": "PKG-R-1", "kind": "receipt", "source": "erp", "location": "S042",
  "business_date": "2026-11-26", "occurred_at": "2026-11-26T08:00:00Z", "currency": "USD",
  "lines": [{"line": 1, "sku": "TSHIRT-M", "qty": "100", "unit_cost": "6.40"},
            {"line": 2, "sku": "CAP", "qty": "50", "unit_cost": "4.00"}]}');
CREATE ROLE possync_bridge LOGIN PASSWORD '$ERP_PW';
SELECT possync.grant_bridge('possync_bridge');
SELECT possync.grant_reader('possync_bridge');
SQL
[ "$(erp -At -c "SELECT status FROM possync.event WHERE event_id = 'PKG-R-1'")" = applied ] || die "the receipt did not post"
ok "master data, 100 TSHIRT-M and 50 CAP received; role possync_bridge with grant_bridge and grant_reader"

POS_PORT=$(free_port)
while [ "$POS_PORT" = "$ERP_PORT" ]; do POS_PORT=$(free_port); done
say "3. POS cluster on port $POS_PORT (wal_level=logical), reference POS schema"
start_cluster pos "$POS_PORT" "wal_level = logical" "max_wal_senders = 5" "max_replication_slots = 5"
pos() { psql -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$POS_PORT" -U postgres -d pos "$@"; }
psql -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$POS_PORT" -U postgres -d postgres -c "CREATE DATABASE pos"
pos -f cdc-bridge/sql/reference_pos_schema.sql
pos <<<"ALTER ROLE postgres PASSWORD '$POS_PW';"
ok "pos schema created; TCP logins need a password on both clusters"

# ---------------------------------------------------------------------------------------------------------------
say "4. the bridge, started from $UNIT"
METRICS_PORT=$(free_port)
cat >/etc/possync/bridge.toml <<EOF
# written by scripts/test-package.sh
erp = "postgres://possync_bridge:\${POSSYNC_ERP_PASSWORD}@127.0.0.1:$ERP_PORT/erp"
metrics = "127.0.0.1:$METRICS_PORT"

[source]
store42 = "postgres://postgres:\${POSSYNC_STORE42_PASSWORD}@127.0.0.1:$POS_PORT/pos"
EOF
[ "$(stat -c '%a %U %G' /etc/possync/bridge.toml)" = "640 root possync" ] || die "writing bridge.toml changed its mode"

unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
EXEC=$(unit_value ExecStart)
[ "$(printf '%s\n' "$EXEC" | wc -l)" = 1 ] || die "$UNIT has $(printf '%s\n' "$EXEC" | wc -l) ExecStart lines"
[ "$EXEC" = "$EXPECTED_EXEC" ] || die "ExecStart is \"$EXEC\", not \"$EXPECTED_EXEC\""
read -r -a EXEC_ARGV <<<"$EXEC"
RUN_USER=$(unit_value User)
RUN_GROUP=$(unit_value Group)
RUN_UMASK=$(unit_value UMask)
mapfile -t UNIT_ENV < <(unit_value Environment)
mapfile -t ENV_FILES < <(unit_value EnvironmentFile)
[ -n "$RUN_USER" ] && [ -n "$RUN_GROUP" ] || die "$UNIT names no User= and Group="

# Without its passwords the bridge stops at once and names the variable it lacks.
set +e
out=$(cd / && timeout 20 setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --init-groups -- \
  env -u POSSYNC_ERP_URL -u POSSYNC_ERP_PASSWORD -u POSSYNC_STORE42_PASSWORD "${EXEC_ARGV[@]}" 2>&1)
code=$?
set -e
# shellcheck disable=SC2016 # the literal ${...} the error names
[ "$code" = 2 ] && grep -qF '${POSSYNC_ERP_PASSWORD}' <<<"$out" \
  || die "without its passwords the bridge exited $code with: $out"
ok "with the password variables unset it refuses to start: $out"

printf 'POSSYNC_ERP_PASSWORD=%s\nPOSSYNC_STORE42_PASSWORD=%s\n' "$ERP_PW" "$POS_PW" >>/etc/possync/bridge.env

# What systemd does for this unit: a clean environment with the unit's Environment= and EnvironmentFile=, the
# unit's user and group, working directory /, the unit's umask, then ExecStart.
(
  cd /
  for v in $(compgen -e); do unset "$v" 2>/dev/null || true; done
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
  export HOME=/nonexistent USER="$RUN_USER" LOGNAME="$RUN_USER" SHELL=/usr/sbin/nologin
  for kv in "${UNIT_ENV[@]}"; do export "${kv?}"; done
  for f in "${ENV_FILES[@]}"; do
    optional=0
    [ "${f:0:1}" = - ] && { optional=1; f=${f:1}; }
    [ -r "$f" ] || { [ "$optional" = 1 ] && continue; echo "missing EnvironmentFile $f" >&2; exit 1; }
    while IFS= read -r line || [ -n "$line" ]; do
      [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && export "${line?}"
    done <"$f"
  done
  [ -n "$RUN_UMASK" ] && umask "$RUN_UMASK"
  exec setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --init-groups -- "${EXEC_ARGV[@]}"
) >"$WORK/bridge.log" 2>&1 &
BRIDGE_PID=$!

metrics() { # GET /metrics with bash alone
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" >&3
    cat <&3' _ "$METRICS_PORT" 2>/dev/null || true
}
streaming=0
for _ in $(seq 1 600); do
  kill -0 "$BRIDGE_PID" 2>/dev/null || { cat "$WORK/bridge.log" >&2; die "the bridge stopped"; }
  # read whole, then searched (`metrics | grep -q` under pipefail fails when grep exits before the writer)
  if grep -q '^possync_bridge_streaming{source="store42"} 1' <<<"$(metrics)"; then streaming=1; break; fi
  sleep 0.1
done
[ "$streaming" = 1 ] || { tail -30 "$WORK/bridge.log" >&2; die "the bridge did not start streaming within 60 s"; }
[ "$(ps -o user= -p "$BRIDGE_PID" | tr -d ' ')" = "$RUN_USER" ] || die "the bridge does not run as $RUN_USER"
ok "\`$EXEC\` runs as $RUN_USER (pid $BRIDGE_PID) and streams source store42 (slot possync_store42)"

# ---------------------------------------------------------------------------------------------------------------
say "5. a sale at the POS, posted in the ERP"
# 2 T-shirts at 19.99 less 4.00 and a cap at 12.50, NY tax 8.875 %, paid by card
pos <<'SQL'
BEGIN;
INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date)
     VALUES ('PKG-S-1', 'S042', '1', 1, 'sale', '2026-11-26');
INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code) VALUES
     ('PKG-S-1', 1, 'TSHIRT-M', 2, 19.99, 4.00, 3.19, 'NY'),
     ('PKG-S-1', 2, 'CAP', 1, 12.50, 0, 1.11, 'NY');
INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('PKG-S-1', 1, 'card', 52.78);
COMMIT;
SQL
status=""
for _ in $(seq 1 300); do
  status=$(erp -At -c "SELECT status FROM possync.event WHERE event_id = 'PKG-S-1'")
  [ -n "$status" ] && break
  kill -0 "$BRIDGE_PID" 2>/dev/null || { cat "$WORK/bridge.log" >&2; die "the bridge stopped"; }
  sleep 0.2
done
[ "$status" = applied ] || { tail -30 "$WORK/bridge.log" >&2; die "the sale is \"${status:-not in the ERP after 60 s}\", not applied"; }
erp -c "SELECT event_id, kind, source, status FROM possync.event ORDER BY event_id"
stock=$(erp -At -F' ' -c "SELECT string_agg(sku || '=' || on_hand::int, ' ' ORDER BY sku) FROM possync.stock_balance WHERE location_id = 'S042'")
[ "$stock" = "CAP=49 TSHIRT-M=98" ] || die "stock_balance at S042 is \"$stock\", not CAP=49 TSHIRT-M=98"
ok "possync.event PKG-S-1 applied from source store42; stock_balance S042: $stock"
journal=$(erp -At -F' ' -c "SELECT count(DISTINCT j.journal_id), sum(l.debit), sum(l.credit),
                                   sum(l.debit) = sum(l.credit),
                                   sum(l.credit - l.debit) FILTER (WHERE l.account_code = '4000') = 48.48,
                                   sum(l.credit - l.debit) FILTER (WHERE l.account_code = '2100') = 4.30
                              FROM possync.journal j JOIN possync.journal_line l USING (journal_id)
                             WHERE j.event_id = 'PKG-S-1'")
read -r journals debit credit balanced revenue_ok tax_ok <<<"$journal"
[ "$journals" = 1 ] && [ "$balanced" = t ] || die "the sale's journal: $journals journal(s), debits $debit, credits $credit"
[ "$revenue_ok" = t ] && [ "$tax_ok" = t ] || die "the sale's journal does not credit revenue 48.48 and tax 4.30"
erp -c "SELECT l.account_code, a.name, l.debit, l.credit FROM possync.journal j JOIN possync.journal_line l USING (journal_id)
          JOIN possync.account a USING (account_code) WHERE j.event_id = 'PKG-S-1' ORDER BY l.debit DESC, l.account_code"
ok "one journal, balanced: debits $debit = credits $credit (revenue 48.48, tax 4.30)"
[ "$(erp -At -c "SELECT count(*) FROM possync.reconcile()")" = 0 ] || die "reconcile() reports discrepancies"
[ "$(erp -At -c "SELECT count(*) FROM possync.check_invariants()")" = 0 ] || die "check_invariants() reports broken invariants"
ok "reconcile() and check_invariants() clean"
if grep -qF -e "$ERP_PW" -e "$POS_PW" "$WORK/bridge.log"; then die "the bridge's log shows a password"; fi
ok "no password in the bridge's log ($(wc -l <"$WORK/bridge.log") lines)"

# ---------------------------------------------------------------------------------------------------------------
say "6. stop; upgrade, remove and purge the packages; nothing left"
code=0
stop_bridge || code=$?
[ "$code" = 0 ] || die "the bridge exited $code on SIGTERM"
ok "the bridge stopped on SIGTERM (exit 0)"
for c in "${CLUSTERS[@]}"; do stop_cluster "$c"; done
ok "both clusters stopped"

# an upgrade (the same package again) keeps the DBA's config and secrets as they are
sums() { sha256sum /etc/possync/bridge.toml /etc/possync/bridge.env; stat -c '%a %U %G %n' /etc/possync/bridge.*; }
before=$(sums)
dpkg -i "$BRIDGE_DEB" >/dev/null
[ "$(sums)" = "$before" ] || die "reinstalling $BRIDGE_PKG changed /etc/possync: $(sums)"
ok "dpkg -i $BRIDGE_PKG again (an upgrade) kept bridge.toml and bridge.env, their contents and modes"
# remove keeps the configuration and the user; purge takes them
dpkg --remove "$BRIDGE_PKG" >/dev/null
[ ! -e /usr/bin/possync-bridge ] && [ ! -e "$UNIT" ] || die "dpkg --remove left the binary or the unit"
[ -f /etc/possync/bridge.toml ] && [ -f /etc/possync/bridge.env ] && getent passwd possync >/dev/null \
  || die "dpkg --remove took the configuration or the user, which only --purge should"
ok "dpkg --remove $BRIDGE_PKG: binary and unit gone; /etc/possync and the user possync kept"
dpkg --purge "$BRIDGE_PKG" "$EXT_PKG"
INSTALLED=0
for p in "$EXT_PKG" "$BRIDGE_PKG"; do
  installed "$p" && die "$p is still known to dpkg after --purge"
done
left=()
for p in "${PACKAGE_PATHS[@]}"; do
  [ -e "$p" ] || [ -L "$p" ] || continue
  keep=0
  for q in "${PRESENT_BEFORE[@]}"; do [ "$p" = "$q" ] && keep=1 && break; done
  [ "$keep" = 1 ] || left+=("$p")
done
[ -e /etc/possync ] && left+=(/etc/possync)
while IFS= read -r l; do left+=("$l"); done < <(find /etc/systemd/system -name possync-bridge.service 2>/dev/null)
[ "${#left[@]}" = 0 ] || die "left after dpkg --purge: ${left[*]}"
getent passwd possync >/dev/null && die "the user possync is left after dpkg --purge"
getent group possync >/dev/null && die "the group possync is left after dpkg --purge"
ok "purged: none of the packages' ${#PACKAGE_PATHS[@]} paths left (but shared directories), no /etc/possync, no user or group possync"

END=$(date +%s)
echo
echo "test-package: PASSED (${TEST_PACKAGE_STARTED:+$((END - TEST_PACKAGE_STARTED)) s in all, }$((END - LOCKED_AT)) s holding $LOCK)"
