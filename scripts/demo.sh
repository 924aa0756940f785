#!/usr/bin/env bash
# make demo: a simulated trading day streamed from a POS database into possync, live.
#
# Starts two throwaway PostgreSQL 15 clusters under target/demo (a POS with wal_level=logical, and an ERP with
# possync), loads the ERP's master data, creates the reference POS schema, starts possync-bridge between them
# and lets possync-sim trade a day at the tills while a progress line updates. Then it prints what finance and
# operations see, and stops everything it started (also on Ctrl-C).
#
#   scripts/demo.sh [--seconds N] [--rate TXNS_PER_S] [--stores N] [--skus N] [--registers N] [--seed N] [--keep]
#                   [--pos-schema reference|normalized]
#
# --pos-schema normalized trades on a normalized POS (schema shop: surrogate keys, percent discounts, tax rows,
# drafts paid later by an UPDATE, cancellations, refunds) mapped by cdc-bridge/mappings/normalized.toml.
#
# The same settings as environment variables: DEMO_SECONDS (40), DEMO_RATE (250), DEMO_STORES (8), DEMO_SKUS
# (2000), DEMO_REGISTERS (4), DEMO_SEED (42). Others: DEMO_DIR, DEMO_POS_PORT, DEMO_ERP_PORT, DEMO_METRICS
# (127.0.0.1:9187), DEMO_BIN_DIR (use the binaries there instead of building them), DEMO_KEEP=1 (leave both
# clusters running and print their URLs; the end-to-end test uses this).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PG_BIN=/usr/lib/postgresql/15/bin
DEMO_DIR=${DEMO_DIR:-$ROOT/target/demo}
POS_PORT=${DEMO_POS_PORT:-55433}
ERP_PORT=${DEMO_ERP_PORT:-55432}
METRICS=${DEMO_METRICS:-127.0.0.1:9187}
SECONDS_OF_TRADING=${DEMO_SECONDS:-40}
RATE=${DEMO_RATE:-250}
STORES=${DEMO_STORES:-8}
SKUS=${DEMO_SKUS:-2000}
REGISTERS=${DEMO_REGISTERS:-4}
SEED=${DEMO_SEED:-42}
KEEP=${DEMO_KEEP:-0}
POS_SCHEMA=${DEMO_POS_SCHEMA:-reference}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_OF_TRADING=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --stores) STORES=$2; shift 2 ;;
    --skus) SKUS=$2; shift 2 ;;
    --registers) REGISTERS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --pos-schema) POS_SCHEMA=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "demo.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
for n in "$SECONDS_OF_TRADING" "$RATE" "$STORES" "$SKUS" "$REGISTERS" "$SEED"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "demo.sh: \"$n\" is not a whole number" >&2; exit 2; }
done
[ "$RATE" -gt 0 ] || { echo "demo.sh: --rate must be above 0" >&2; exit 2; }
case "$POS_SCHEMA" in
  reference) MAPPING_ARGS=() ;;
  normalized) MAPPING_ARGS=(--mapping "$ROOT/cdc-bridge/mappings/normalized.toml") ;;
  *) echo "demo.sh: --pos-schema takes reference or normalized, not \"$POS_SCHEMA\"" >&2; exit 2 ;;
esac
TRANSACTIONS=$((SECONDS_OF_TRADING * RATE))

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }

# ---------------------------------------------------------------------------------------------------------------
# binaries
# ---------------------------------------------------------------------------------------------------------------
if [ -n "${DEMO_BIN_DIR:-}" ]; then
  BIN=$DEMO_BIN_DIR
else
  say "building possync-bridge and possync-sim (release)"
  cargo build --release -q -p possync-bridge -p possync-sim
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
for b in possync-bridge possync-sim; do
  [ -x "$BIN/$b" ] || { echo "demo.sh: $BIN/$b is missing" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------------------------------
# clusters, and stopping everything this script started
# ---------------------------------------------------------------------------------------------------------------
BRIDGE_PID=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [ -n "$BRIDGE_PID" ] && kill -0 "$BRIDGE_PID" 2>/dev/null; then
    kill -TERM "$BRIDGE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BRIDGE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BRIDGE_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ] && [ "$code" -eq 0 ]; then
    echo "kept running: POS postgres://postgres@127.0.0.1:$POS_PORT/pos  ERP postgres://postgres@127.0.0.1:$ERP_PORT/erp"
    echo "stop them with: $PG_BIN/pg_ctl -D $DEMO_DIR/pos stop; $PG_BIN/pg_ctl -D $DEMO_DIR/erp stop (as postgres)"
  else
    for c in pos erp; do
      [ -f "$DEMO_DIR/$c/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DEMO_DIR/$c" -m fast -w stop >/dev/null 2>&1 || true
    done
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'echo; echo "demo.sh: interrupted, stopping"; exit 130' INT TERM

# a cluster left by an interrupted run is stopped before its folder is removed
for c in pos erp; do
  [ -f "$DEMO_DIR/$c/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DEMO_DIR/$c" -m immediate -w stop >/dev/null 2>&1 || true
done
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$DEMO_DIR"

start_cluster() { # name port extra-settings...
  local name=$1 port=$2; shift 2
  as_pg "$PG_BIN/initdb" -D "$DEMO_DIR/$name" -U postgres -A trust --no-sync >/dev/null
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$DEMO_DIR'"
    echo "max_connections = 50"
    # one machine runs both clusters, the bridge and the tills: keep each server small
    echo "shared_buffers = 128MB"
    for s in "$@"; do echo "$s"; done
  } | as_pg tee -a "$DEMO_DIR/$name/postgresql.auto.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$DEMO_DIR/$name" -l "$DEMO_DIR/$name.log" -w -t 60 start >/dev/null
}

say "starting a POS cluster (port $POS_PORT, wal_level=logical) and an ERP cluster (port $ERP_PORT) in $DEMO_DIR"
start_cluster pos "$POS_PORT" "wal_level = logical" "max_wal_senders = 10" "max_replication_slots = 10"
# commit timestamps let the simulator measure lag as POS commit to ERP commit
start_cluster erp "$ERP_PORT" "track_commit_timestamp = on"
POS_URL="postgres://postgres@127.0.0.1:$POS_PORT/pos"
ERP_URL="postgres://postgres@127.0.0.1:$ERP_PORT/erp"
psql_pos() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$POS_PORT" -U postgres -d pos "$@"; }
psql_erp() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$ERP_PORT" -U postgres -d erp "$@"; }
psql -X -q -h 127.0.0.1 -p "$POS_PORT" -U postgres -d postgres -c "CREATE DATABASE pos"
psql -X -q -h 127.0.0.1 -p "$ERP_PORT" -U postgres -d postgres -c "CREATE DATABASE erp"

SIM=("$BIN/possync-sim" --seed "$SEED" --stores "$STORES" --registers "$REGISTERS" --skus "$SKUS"
     --transactions "$TRANSACTIONS")

say "ERP: CREATE EXTENSION possync, the default chart and the retailer's master data"
psql_erp -c "CREATE EXTENSION possync"
"${SIM[@]}" setup-erp --erp "$ERP_URL"

if [ "$POS_SCHEMA" = normalized ]; then
  say "POS: the normalized POS schema (shop) with its stores, tills, taxes, payment methods and products"
  "${SIM[@]}" create-pos --pos "$POS_URL" --pos-schema normalized
else
  say "POS: the reference POS schema"
  psql_pos -f cdc-bridge/sql/reference_pos_schema.sql
fi

say "starting possync-bridge"
POSSYNC_LOG=info NO_COLOR=1 "$BIN/possync-bridge" run --erp "$ERP_URL" --source "pos-central=$POS_URL" "${MAPPING_ARGS[@]}" \
  --metrics "$METRICS" 2>"$DEMO_DIR/bridge.log" &
BRIDGE_PID=$!
# the metrics are read whole before they are searched: `curl | grep -q` under pipefail fails whenever grep finds
# the line and exits before curl has written the rest (curl dies of SIGPIPE)
streaming() {
  local metrics
  metrics=$(curl -fs "http://$METRICS/metrics" 2>/dev/null) || return 1
  grep -q '^possync_bridge_streaming{source="pos-central"} 1' <<<"$metrics"
}
for _ in $(seq 1 300); do
  if streaming; then
    break
  fi
  kill -0 "$BRIDGE_PID" 2>/dev/null || { echo "the bridge stopped:"; tail -20 "$DEMO_DIR/bridge.log"; exit 1; }
  sleep 0.1
done
streaming || { echo "the bridge did not start streaming:"; tail -20 "$DEMO_DIR/bridge.log"; exit 1; }
echo "bridge streaming; metrics at http://$METRICS/metrics (health: http://$METRICS/healthz), log $DEMO_DIR/bridge.log"

say "trading: $STORES stores x $REGISTERS registers, a DC and a web shop, $SKUS SKUs; $TRANSACTIONS customer transactions at $RATE/s (about ${SECONDS_OF_TRADING} s)"
"${SIM[@]}" run --pos "$POS_URL" --pos-schema "$POS_SCHEMA" --erp "$ERP_URL" --rate "$RATE" --progress \
  --stats "$DEMO_DIR/stats.json"

say "ATP of the five best sellers, network-wide"
psql_erp <<'SQL'
\pset footer off
WITH sold AS (
  SELECT m.sku, -sum(m.qty) AS units_sold
    FROM possync.stock_move m JOIN possync.event e USING (event_id)
   WHERE e.kind IN ('sale', 'exchange', 'fulfillment') AND m.qty < 0
   GROUP BY m.sku ORDER BY 2 DESC LIMIT 5)
SELECT s.sku, s.units_sold, b.on_hand, b.reserved, possync.atp(s.sku) AS atp_network,
       possync.atp(s.sku, NULL, now() + interval '10 years') AS atp_with_open_supply
  FROM sold s
  CROSS JOIN LATERAL (SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved
                        FROM possync.stock_balance WHERE sku = s.sku) b
 ORDER BY s.units_sold DESC;
SQL

say "trial balance"
psql_erp <<'SQL'
\pset footer off
SELECT account_code, name, sum(debit) AS debit, sum(credit) AS credit, sum(debit) - sum(credit) AS balance
  FROM possync.trial_balance GROUP BY account_code, name
 UNION ALL
SELECT 'total', CASE WHEN sum(debit) = sum(credit) THEN 'balances' ELSE 'DOES NOT BALANCE' END,
       sum(debit), sum(credit), sum(debit) - sum(credit)
  FROM possync.trial_balance
 ORDER BY 1;
SQL

say "reconcile: stock ledger against the general ledger, balances against moves"
if [ "$(psql_erp -At -c "SELECT count(*) FROM pg_proc WHERE proname = 'reconcile' AND pronamespace = 'possync'::regnamespace")" = 0 ]; then
  echo "reconcile not available (possync.reconcile() is not in this version of the extension)"
else
  n=$(psql_erp -At -c "SELECT count(*) FROM possync.reconcile()")
  if [ "$n" = 0 ]; then echo "reconcile clean: no discrepancies"; else
    echo "reconcile found $n discrepancies:"; psql_erp -c "SELECT * FROM possync.reconcile() LIMIT 20"
  fi
fi

say "exceptions kept for a person, by kind"
psql_erp <<'SQL'
\pset footer off
SELECT kind, status, count(*) AS exceptions, min(event_id) AS for_example
  FROM possync.exception GROUP BY kind, status ORDER BY status, kind;
SQL

say "POS against ERP"
if [ "$POS_SCHEMA" = normalized ]; then
  # the figures of the paid orders in the POS tables, and the same figures from the general ledger
  pos_fig=$(psql_pos -At -F' ' -c "SELECT coalesce(sum(l.price_subtotal) FILTER (WHERE l.qty > 0), 0),
      coalesce(-sum(l.price_subtotal) FILTER (WHERE l.qty < 0), 0),
      (SELECT coalesce(sum(x.amount), 0) FROM shop.pos_order o2 JOIN shop.pos_order_line l2 ON l2.order_id = o2.id
         JOIN shop.pos_order_line_tax x ON x.line_id = l2.id
        WHERE o2.state IN ('paid', 'done'))
    FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id WHERE o.state IN ('paid', 'done')")
  erp_fig=$(psql_erp -At -F' ' -c "SELECT coalesce(sum(credit - debit) FILTER (WHERE account_code = '4000'), 0),
      coalesce(sum(debit - credit) FILTER (WHERE account_code = '4100'), 0),
      coalesce(sum(credit - debit) FILTER (WHERE account_code = '2100'), 0) FROM possync.journal_line")
  read -r p_rev p_ret p_tax <<<"$pos_fig"; read -r e_rev e_ret e_tax <<<"$erp_fig"
  printf '%-12s %14s %14s\n' figure POS ERP revenue "$p_rev" "$e_rev" returns "$p_ret" "$e_ret" tax "$p_tax" "$e_tax"
  echo "(sales the ERP holds as held or rejected, listed above, are in the POS figures and not yet in the ledger)"
else
  "${SIM[@]}" totals --pos "$POS_URL" --erp "$ERP_URL"
fi

say "the bridge's own figures (http://$METRICS/metrics)"
curl -fs "http://$METRICS/metrics" | grep -E '^possync_bridge_(transactions_applied_total|events_(applied|held|rejected)_total|batches_total|retries_total|lag_seconds)\{' || true

say "done; stopping the bridge and both clusters"
