#!/usr/bin/env bash
# make demo: a throwaway ERP cluster with possync, a store day of POS events posted, and what finance and
# operations see afterwards. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
DEMO_DIR="$(pwd)/target/demo"
PORT=${DEMO_PORT:-55432}
EVENTS=${DEMO_EVENTS:-demo/store-day.json}

as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -u postgres "$@"; else "$@"; fi; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$DEMO_DIR"
stop() { as_pg "$PG_BIN/pg_ctl" -D "$DEMO_DIR/data" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop EXIT

say "starting a throwaway PostgreSQL 15 (ERP) in $DEMO_DIR on port $PORT"
as_pg "$PG_BIN/initdb" -D "$DEMO_DIR/data" -U postgres -A trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w \
  -o "-p $PORT -k $DEMO_DIR -c listen_addresses=''" start >/dev/null
psql_erp() { psql -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" -U postgres "$@"; }
psql_erp -d postgres -c "CREATE DATABASE erp"

say "CREATE EXTENSION possync, the default chart, locations and items"
psql_erp -d erp <<'SQL'
CREATE EXTENSION possync;
SELECT possync.install_default_chart() AS accounts_installed;
INSERT INTO possync.location (location_id, name, kind) VALUES
    ('DC1', 'Distribution centre', 'dc'), ('S042', 'Store 42', 'store'), ('S043', 'Store 43', 'store');
INSERT INTO possync.item (sku, description, item_class, standard_cost) VALUES
    ('TSHIRT-M', 'T-shirt, medium', 'apparel', 6.40), ('JEANS-32', 'Jeans 32', 'apparel', 21.75),
    ('CAP', 'Cap', 'accessories', 3.10), ('SOCKS-3P', 'Socks, 3 pack', 'accessories', 2.05),
    ('HOODIE-L', 'Hoodie, large', 'apparel', 15.20);
INSERT INTO possync.tax_code (tax_code, rate) VALUES ('NY', 0.08875);
SQL

say "posting a store day: $(python3 -c "import json,sys;print(len(json.load(open(sys.argv[1]))))" "$EVENTS") events from $EVENTS"
psql_erp -d erp -v events="$(cat "$EVENTS")" <<'SQL'
\pset footer off
SELECT r->>'status' AS status, count(*) AS events
  FROM jsonb_array_elements(possync.apply_events(:'events'::jsonb)) r GROUP BY 1 ORDER BY 1;
SQL

say "the master data that was missing arrives; held events post"
psql_erp -d erp <<'SQL'
INSERT INTO possync.item (sku, description, item_class, standard_cost) VALUES ('SCARF', 'Scarf', 'accessories', 9.00);
SELECT possync.replay_held() AS posted_from_hold;
SQL

say "stock by location (quantity and value at moving average cost)"
psql_erp -d erp <<'SQL'
\pset footer off
SELECT location_id, sku, on_hand, value, avg_cost, possync.atp(sku, location_id) AS atp
  FROM possync.stock_balance ORDER BY location_id, sku;
SQL

say "trial balance"
psql_erp -d erp <<'SQL'
\pset footer off
SELECT account_code, name, sum(debit) AS debit, sum(credit) AS credit
  FROM possync.trial_balance GROUP BY account_code, name
 UNION ALL
SELECT 'total', CASE WHEN sum(debit) = sum(credit) THEN 'balances' ELSE 'DOES NOT BALANCE' END, sum(debit), sum(credit)
  FROM possync.trial_balance
 ORDER BY 1;
SQL

say "exceptions kept for a person to look at"
psql_erp -d erp <<'SQL'
\pset footer off
SELECT kind, status, event_id, left(reason, 90) AS reason FROM possync.exception ORDER BY exception_id;
SQL

say "done; stopping the cluster"
