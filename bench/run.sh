#!/usr/bin/env bash
# make bench: every figure beside its baseline, measured in the same run on a throwaway PostgreSQL 15 cluster.
#
#   bench/run.sh [STAGE ...]     stages: posting atp bridge (default: all, and the report is written afresh), growth
#
# Stages:
#   posting  possync.apply_events vs the PL/pgSQL baseline (bench/baseline.sql), 3-line sales, one connection,
#            batches of 100 and of 1 (autocommit); both ledgers are checked to come out identical
#   atp      pgbench, 2 clients: possync.atp(sku, location) vs SELECT 1, p99 latency from the per-transaction
#            log, and reserve+release pairs per second
#   bridge   bench/bridge.sh when it exists (it may print `row|...` lines for the table)
#   growth   an empty ledger beside one preloaded in bulk with a year of a 30-store chain (bench/growth.sql):
#            posting, atp(), reserve, trace, reconcile(location), check_invariants() and audit_day on both, the
#            plans of trace/reconcile/audit_day on the grown one, table sizes (run it by name: not in a full run)
#
# Output: the table on stdout, and target/bench/report.md (rewritten by a full run, appended by a single stage).
# Benchmarks print figures; nothing here passes or fails on a timing.
#
# Environment: BENCH_DIR (target/bench), BENCH_PORT (54329), BENCH_LOCATIONS (50), BENCH_SKUS (200),
# BENCH_POSSYNC (package | installed, see below), BENCH_BATCH_EVENTS (50000), BENCH_SINGLE_EVENTS (8000), BENCH_ATP_SECONDS (10 per run), BENCH_ATP_ROUNDS (3), BENCH_SYNC_COMMIT (on),
# BENCH_PROFILE=1 (load pg_stat_statements, track=all, and print the top statements after the posting stage),
# GROWTH_EVENTS (2000000 sales preloaded), GROWTH_LOCATIONS (30), GROWTH_DAYS (365), GROWTH_BATCH_EVENTS (20000),
# GROWTH_SINGLE_EVENTS (2000), GROWTH_ROUNDS (3),
# BENCH_KEEP=1 (leave the cluster running afterwards, for EXPLAIN and friends), BENCH_EXTRA_SQL=FILE (a what-if:
# SQL run in the posting database once possync and the baseline exist, e.g. a candidate fix applied to both; its
# rows are labelled), PG_BIN (/usr/lib/postgresql/15/bin).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
OUT=${BENCH_DIR:-$ROOT/target/bench}
PORT=${BENCH_PORT:-54329}
LOCATIONS=${BENCH_LOCATIONS:-50}
SKUS=${BENCH_SKUS:-200}
BATCH_EVENTS=${BENCH_BATCH_EVENTS:-50000}
SINGLE_EVENTS=${BENCH_SINGLE_EVENTS:-8000}
ATP_SECONDS=${BENCH_ATP_SECONDS:-10}
ATP_ROUNDS=${BENCH_ATP_ROUNDS:-3}
GROWTH_ROUNDS=${GROWTH_ROUNDS:-3}
SYNC_COMMIT=${BENCH_SYNC_COMMIT:-on}
PROFILE=${BENCH_PROFILE:-0}
PG_CONFIG=${PG_CONFIG:-$PG_BIN/pg_config}
# BENCH_POSSYNC=package (default) measures a release build of this tree, packaged into a private server tree;
# BENCH_POSSYNC=installed measures whatever is installed in the system PostgreSQL (quicker, but a concurrent
# `cargo pgrx test` installs a debug build there)
POSSYNC_FROM=${BENCH_POSSYNC:-package}
SERVER_BIN=$PG_BIN
PGDATA_DIR=$OUT/pgdata
SOCK=$OUT/sock
REPORT=$OUT/report.md
ALL_STAGES=(posting atp bridge)
FULL_RUN=0

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi
}

psql_bench() { # psql_bench DB SQL
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d "$1" -tA -c "$2"
}

# ---------------------------------------------------------------------------------------------------------------
# the throwaway cluster: started on first use, stopped on exit (also on failure or Ctrl-C)

CLUSTER_UP=0

stop_cluster() {
    if [ "$CLUSTER_UP" = 1 ] && [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "bench: BENCH_KEEP=1: the cluster keeps running: psql -h $SOCK -p $PORT -U postgres bench_posting;" \
            "stop it with: sudo -u postgres $SERVER_BIN/pg_ctl -D $PGDATA_DIR stop"
    elif [ "$CLUSTER_UP" = 1 ]; then
        as_postgres "$SERVER_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1 || true
        CLUSTER_UP=0
        say "bench: stopped the cluster in $PGDATA_DIR"
    fi
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# A server tree of our own: the system's PostgreSQL binaries (copied: postgres finds lib/ and share/ relative to
# its own path), its libraries and share files linked, and possync's files from a release package of this tree.
private_server() {
    local pkg=$OUT/pkg root=$OUT/pg bindir libdir sharedir
    bindir=$("$PG_CONFIG" --bindir)
    libdir=$("$PG_CONFIG" --pkglibdir)
    sharedir=$("$PG_CONFIG" --sharedir)
    say "bench: packaging possync (release build of this tree; log in $OUT/package.log)"
    rm -rf "$pkg"
    (cd "$ROOT" && cargo pgrx package -p possync --pg-config "$PG_CONFIG" --out-dir "$pkg") >"$OUT/package.log" 2>&1 \
        || { tail -30 "$OUT/package.log" >&2; die "cargo pgrx package failed"; }
    [ -f "$pkg$libdir/possync.so" ] || die "the package has no $libdir/possync.so (see $OUT/package.log)"
    rm -rf "$root"
    mkdir -p "$root$bindir" "$root$libdir" "$root$sharedir/extension"
    cp -a "$bindir/postgres" "$bindir/initdb" "$bindir/pg_ctl" "$root$bindir/"
    local f
    for f in "$libdir"/*; do
        [ "$(basename "$f")" = possync.so ] || ln -s "$f" "$root$libdir/"
    done
    for f in "$sharedir"/*; do
        [ "$(basename "$f")" = extension ] || ln -s "$f" "$root$sharedir/"
    done
    for f in "$sharedir"/extension/*; do
        case $(basename "$f") in possync.control | possync--*) ;; *) ln -s "$f" "$root$sharedir/extension/" ;; esac
    done
    cp "$pkg$libdir/possync.so" "$root$libdir/"
    cp "$pkg$sharedir"/extension/possync* "$root$sharedir/extension/"
    SERVER_BIN=$root$bindir
    POSSYNC_BUILD="release package of $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src sql Cargo.toml || echo '+changes')"
}
POSSYNC_BUILD="as installed in $PG_BIN/.."

ensure_cluster() {
    [ "$CLUSTER_UP" = 1 ] && return 0
    [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL 15 in $PG_BIN (run make deps)"
    mkdir -p "$OUT"
    chown postgres "$OUT" 2>/dev/null || true
    case $POSSYNC_FROM in
    package) private_server ;;
    installed) ;;
    *) die "BENCH_POSSYNC is package or installed, not '$POSSYNC_FROM'" ;;
    esac
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_postgres "$SERVER_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    as_postgres rm -rf "$PGDATA_DIR" "$SOCK"
    as_postgres mkdir -p "$SOCK"
    as_postgres "$SERVER_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --no-locale >/dev/null \
        || die "initdb failed in $PGDATA_DIR"
    local preload=""
    [ "$PROFILE" = 1 ] && preload="shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_utility = off"
    as_postgres tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF
# possync bench: socket only, room for the run without forced checkpoints
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
synchronous_commit = $SYNC_COMMIT
max_connections = 20
$preload
EOF
    as_postgres "$SERVER_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$OUT/postgres.log" -w start >/dev/null \
        || die "the cluster did not start; see $OUT/postgres.log"
    CLUSTER_UP=1
    say "bench: cluster up (PostgreSQL $(psql_bench postgres 'SHOW server_version'), socket $SOCK, port $PORT," \
        "possync: $POSSYNC_BUILD)"
}

fresh_db() { # fresh_db NAME
    psql_bench postgres "DROP DATABASE IF EXISTS $1"
    psql_bench postgres "CREATE DATABASE $1"
}

conninfo() { echo "host=$SOCK port=$PORT user=postgres dbname=$1"; }

BENCH_BIN=""
build_bench() {
    [ -n "$BENCH_BIN" ] && return 0
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    say "bench: building possync-bench (release)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --release -q -p possync-bench) \
        || die "building possync-bench failed"
    BENCH_BIN=$target/release/possync-bench
}

# ---------------------------------------------------------------------------------------------------------------
# the table: rows `row|figure|value|baseline|ratio|target|verdict`, printed aligned and written as markdown

machine() {
    local model
    model=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') || true
    echo "$(nproc) cores (${model:-unknown cpu}), $("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown os}"), synchronous_commit=$SYNC_COMMIT"
}

print_table() { # print_table STAGE ROWS_FILE [HEADER]
    local rows=$2 header=${3:-figure|possync|baseline|ratio|target|}
    {
        echo "$header"
        sed 's/^row|//' "$rows"
    } | column -t -s '|' -o '  '
    {
        echo
        echo "### $1 — $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        [ "$FULL_RUN" = 1 ] || { echo "Machine: $(machine). possync: $POSSYNC_BUILD."; echo; }
        echo "| ${header//|/ | }|"
        echo "|---|---:|---:|---:|---|---|"
        sed 's/^row|//; s/|/ | /g; s/^/| /; s/$/ |/' "$rows"
    } >>"$REPORT"
}

# ---------------------------------------------------------------------------------------------------------------
# stages

stage_posting() {
    ensure_cluster
    build_bench
    fresh_db bench_posting
    if [ "$PROFILE" = 1 ]; then
        psql_bench bench_posting "CREATE EXTENSION pg_stat_statements"
    fi
    local rows=$OUT/rows-posting.txt extra=()
    if [ -n "${BENCH_EXTRA_SQL:-}" ]; then
        say "bench: posting: what-if run: $BENCH_EXTRA_SQL is applied once possync and the baseline exist"
        extra=(--extra-sql "$BENCH_EXTRA_SQL")
    fi
    "$BENCH_BIN" posting --db "$(conninfo bench_posting)" --locations "$LOCATIONS" --skus "$SKUS" \
        --batch-events "$BATCH_EVENTS" --single-events "$SINGLE_EVENTS" "${extra[@]}" | grep '^row|' >"$rows" \
        || die "the posting stage failed (see the message above)"
    if [ -n "${BENCH_EXTRA_SQL:-}" ]; then
        sed -i "s/^row|\([^|]*\)|/row|\1 (what-if: $(basename "$BENCH_EXTRA_SQL"))|/" "$rows"
    fi
    print_table posting "$rows"
    if [ "$PROFILE" = 1 ]; then
        say "bench: top statements by total time (pg_stat_statements, track=all)"
        "$PG_BIN/psql" -X -h "$SOCK" -p "$PORT" -U postgres -d bench_posting -P pager=off -c "
            SELECT round(total_exec_time::numeric, 0) AS total_ms, calls,
                   round((total_exec_time / calls)::numeric * 1000, 1) AS mean_us, rows,
                   left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
              FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25"
    fi
}

# pgbench_run NAME SCRIPT [DB [LOCATIONS]]: prints "tps p99_ms"
pgbench_run() {
    local name=$1 script=$2 db=${3:-bench_atp} nloc=${4:-$LOCATIONS} dir=$OUT/atp
    mkdir -p "$dir"
    rm -f "$dir/$name".log*
    local out
    out=$(cd "$dir" && "$PG_BIN/pgbench" -n -M prepared -c 2 -j 2 -T "$ATP_SECONDS" \
        -D nskus="$SKUS" -D nlocations="$nloc" -f "$script" -l --log-prefix="$name.log" \
        -h "$SOCK" -p "$PORT" -U postgres "$db" 2>&1) || { say "$out"; die "pgbench $name failed"; }
    local tps failed
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    [ -n "$tps" ] || { say "$out"; die "pgbench $name printed no tps"; }
    [ "${failed:-0}" = 0 ] || say "bench: pgbench $name: $failed failed transactions"
    # per-transaction log: client_id transaction_no latency_us script_no epoch_s epoch_us
    local p99
    p99=$(cat "$dir/$name".log* | awk '{print $3}' | sort -n |
        awk '{v[NR]=$1} END {if (NR == 0) {print "nan"} else {i=int(NR*0.99); if (i < NR*0.99) i++; printf "%.3f", v[i]/1000}}')
    echo "$tps $p99"
}

# median_runs "tps p99" ...: the median tps and the median p99 of the runs
median_runs() {
    local col
    for col in 1 2; do
        printf '%s\n' "$@" | awk -v c="$col" '{ print $c }' | sort -g |
            awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); if (NR % 2) print v[m]; else printf "%f\n", (v[m] + v[m + 1]) / 2 }'
    done | paste -sd ' '
}

stage_atp() {
    ensure_cluster
    build_bench
    fresh_db bench_atp
    "$BENCH_BIN" setup --db "$(conninfo bench_atp)" --locations "$LOCATIONS" --skus "$SKUS" \
        || die "setting up the atp database failed"
    local rows=$OUT/rows-atp.txt
    : >"$rows"
    local have
    have=$(psql_bench bench_atp "SELECT string_agg(DISTINCT p.proname, ',' ORDER BY p.proname)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'possync' AND p.proname IN ('atp', 'reserve', 'release')")
    if [[ ",$have," != *,atp,* ]]; then
        say "bench: atp: possync.atp() not installed yet; re-run 'make install' once the ATP functions are in the extension"
        echo "row|atp() calls/s, 2 clients|atp() not installed yet|—|—|>= 0.6x|not run" >>"$rows"
        print_table atp "$rows"
        return 0
    fi
    mkdir -p "$OUT/atp"
    psql_bench bench_atp "VACUUM ANALYZE"
    # SELECT 1 and atp() take turns, so that a slower minute of a shared machine hits both; each figure is the
    # median of its rounds
    say "bench: atp: $ATP_ROUNDS rounds of SELECT 1 then possync.atp(), 2 clients, ${ATP_SECONDS}s each"
    local r base_runs=() atp_runs=() base_tps base_p99 atp_tps atp_p99
    for ((r = 1; r <= ATP_ROUNDS; r++)); do
        base_runs+=("$(pgbench_run "select1-$r" "$ROOT/bench/pgbench/select1.sql")")
        atp_runs+=("$(pgbench_run "atp-$r" "$ROOT/bench/pgbench/atp.sql")")
        say "bench: atp: round $r: SELECT 1 ${base_runs[-1]% *} tps, atp() ${atp_runs[-1]% *} tps"
    done
    read -r base_tps base_p99 <<<"$(median_runs "${base_runs[@]}")"
    read -r atp_tps atp_p99 <<<"$(median_runs "${atp_runs[@]}")"
    awk -v a="$atp_tps" -v b="$base_tps" 'BEGIN {
        r = a / b; printf "row|atp() calls/s, 2 clients|%.0f|%.0f (SELECT 1)|%.2fx|>= 0.6x|%s\n", a, b, r, (r >= 0.6 ? "met" : "below") }' >>"$rows"
    awk -v a="$atp_p99" -v b="$base_p99" 'BEGIN {
        printf "row|atp() p99 latency, ms|%.3f|%.3f (SELECT 1)|%.2fx|< 1 ms|%s\n", a, b, a / b, (a < 1 ? "met" : "below") }' >>"$rows"
    say "bench: atp: the network figure, atp(sku), beside the same question through SQL, ${ATP_SECONDS}s each"
    local net net_sql
    net=$(pgbench_run atp-network "$ROOT/bench/pgbench/atp_network.sql")
    net_sql=$(pgbench_run atp-network-sql "$ROOT/bench/pgbench/atp_network_sql.sql")
    awk -v a="${net% *}" -v b="${net_sql% *}" -v n="$LOCATIONS" 'BEGIN {
        printf "row|atp(sku) network calls/s, %d locations, 2 clients|%.0f|%.0f (atp_checked, SQL)|%.2fx|reported|\n", n, a, b, a / b }' >>"$rows"
    if [[ ",$have," == *,reserve,* && ",$have," == *,release,* ]]; then
        say "bench: atp: reserve + release pairs, 2 clients, ${ATP_SECONDS}s"
        local pairs pairs_tps pairs_p99
        pairs=$(pgbench_run reserve_release "$ROOT/bench/pgbench/reserve_release.sql")
        read -r pairs_tps pairs_p99 <<<"$pairs"
        printf 'row|reserve+release pairs/s, 2 clients (p99 %s ms per pair)|%.0f|—|—|reported|\n' \
            "$pairs_p99" "$pairs_tps" >>"$rows"
    else
        say "bench: atp: possync.reserve()/release() not installed yet; pairs per second not measured"
        echo "row|reserve+release pairs/s, 2 clients|reserve()/release() not installed yet|—|—|reported|not run" >>"$rows"
    fi
    print_table atp "$rows"
}

stage_bridge() {
    local rows=$OUT/rows-bridge.txt
    if [ ! -f "$ROOT/bench/bridge.sh" ]; then
        say "bench: bridge: bench/bridge.sh is not there yet; stage skipped"
        echo "row|bridge lag and drain|bench/bridge.sh not written yet|—|—|—|not run" >"$rows"
        print_table bridge "$rows"
        return 0
    fi
    mkdir -p "$OUT"
    # its clusters run the same server tree as the other stages: with BENCH_POSSYNC=package, a release package of
    # this tree that nothing else installs over while the stage runs
    local server_bin=""
    if [ "$POSSYNC_FROM" = package ]; then
        [ "$SERVER_BIN" != "$PG_BIN" ] || private_server
        server_bin=$SERVER_BIN
    fi
    say "bench: bridge: possync $POSSYNC_BUILD"
    # bridge.sh runs its own clusters; lines starting `row|` join the table, the rest is passed through
    if ! BENCH_DIR=$OUT PG_BIN=$PG_BIN POSSYNC_PG_BIN=$server_bin bash "$ROOT/bench/bridge.sh" >"$OUT/bridge.out"; then
        cat "$OUT/bridge.out" >&2
        die "bench/bridge.sh failed"
    fi
    grep -v '^row|' "$OUT/bridge.out" >&2 || true
    grep '^row|' "$OUT/bridge.out" >"$rows" || true
    print_table bridge "$rows"
}

# ---------------------------------------------------------------------------------------------------------------
# growth: the same figures on an empty ledger and on a year of a chain's sales

GROWTH_EVENTS=${GROWTH_EVENTS:-2000000}
GROWTH_LOCATIONS=${GROWTH_LOCATIONS:-30}
GROWTH_DAYS=${GROWTH_DAYS:-365}
GROWTH_FIRST_DAY=2025-11-26
GROWTH_DAY=2026-06-15
GROWTH_STORE=L7

# growth_discrepancies DB: what reconcile() and check_invariants() report (nothing when the ledger is sound)
growth_discrepancies() {
    psql_bench "$1" "
        SELECT 'reconcile: ' || check_name || ' ' || coalesce(location_id, '') || ' ' || coalesce(sku, '')
               || ' expected ' || expected || ' actual ' || actual FROM possync.reconcile()
        UNION ALL SELECT 'check_invariants: ' || invariant || ': ' || detail FROM possync.check_invariants()
        LIMIT 30"
}

seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

stage_growth() {
    ensure_cluster
    build_bench
    local rows=$OUT/rows-growth.txt db_empty=bench_growth_empty db_grown=bench_growth db
    : >"$rows"
    for db in "$db_empty" "$db_grown"; do
        fresh_db "$db"
        "$BENCH_BIN" setup --db "$(conninfo "$db")" --locations "$GROWTH_LOCATIONS" --skus "$SKUS" \
            || die "setting up $db failed"
    done
    say "bench: growth: preloading $GROWTH_EVENTS sales over $GROWTH_DAYS days at $GROWTH_LOCATIONS stores x" \
        "$SKUS skus (bench/growth.sql, in bulk)"
    local t0 t1 t2
    t0=$(date +%s.%N)
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d "$db_grown" \
        -v events="$GROWTH_EVENTS" -v days="$GROWTH_DAYS" -v first_day="$GROWTH_FIRST_DAY" \
        -f "$ROOT/bench/growth.sql" >"$OUT/growth-load.log" 2>&1 \
        || { cat "$OUT/growth-load.log" >&2; die "the preload failed"; }
    t1=$(date +%s.%N)
    psql_bench "$db_grown" "VACUUM (ANALYZE)"
    psql_bench "$db_empty" "VACUUM (ANALYZE)"
    psql_bench postgres "CHECKPOINT"
    t2=$(date +%s.%N)
    GROWTH_LOAD_SECONDS=$(seconds_between "$t0" "$t1")
    say "bench: growth: preload ${GROWTH_LOAD_SECONDS} s, then VACUUM ANALYZE and a checkpoint" \
        "$(seconds_between "$t1" "$t2") s (each statement's time in $OUT/growth-load.log)"
    say "bench: growth: checking both ledgers: reconcile() and check_invariants() must come back empty"
    local bad t3
    for db in "$db_grown" "$db_empty"; do
        bad=$(growth_discrepancies "$db")
        if [ -n "$bad" ]; then
            say "$bad"
            die "growth: $db is not consistent (above: what reconcile() and check_invariants() report); nothing measured"
        fi
    done
    t3=$(date +%s.%N)
    say "bench: growth: both ledgers are consistent (checked in $(seconds_between "$t2" "$t3") s)"

    # table sizes, before the measurements add to them
    local sizes=$OUT/growth-sizes.txt t ne ng be bg
    for t in event stock_move stock_balance journal journal_line exception; do
        # a partitioned table's size is its partitions' (pg_partition_tree lists none for an ordinary table)
        local size_of="(SELECT coalesce(sum(pg_total_relation_size(relid)), pg_total_relation_size('possync.$t'))
                          FROM pg_partition_tree('possync.$t'))"
        read -r ne be <<<"$(psql_bench "$db_empty" "SELECT count(*), $size_of FROM possync.$t" | tr '|' ' ')"
        read -r ng bg <<<"$(psql_bench "$db_grown" "SELECT count(*), $size_of FROM possync.$t" | tr '|' ' ')"
        awk -v t="$t" -v ne="$ne" -v ng="$ng" -v be="$be" -v bg="$bg" 'BEGIN {
            printf "row|possync.%s with its indexes, MB (rows: %d / %d)|%.1f|%.1f|%.0fx|reported|\n", t, ne, ng, be / 1048576, bg / 1048576, bg / be }'
    done >"$sizes"
    cat "$sizes" | sed 's/^row|/bench: growth: size: /' >&2

    say "bench: growth: posting and the audit functions, $GROWTH_ROUNDS alternating rounds"
    "$BENCH_BIN" growth --db "$(conninfo "$db_empty")" --grown "$(conninfo "$db_grown")" \
        --locations "$GROWTH_LOCATIONS" --skus "$SKUS" --batch-events "${GROWTH_BATCH_EVENTS:-20000}" \
        --single-events "${GROWTH_SINGLE_EVENTS:-2000}" --rounds "$GROWTH_ROUNDS" \
        --location "$GROWTH_STORE" --day "$GROWTH_DAY" | grep '^row|' >"$OUT/rows-growth-rust.txt" \
        || die "the growth measurements failed (see the message above)"

    say "bench: growth: atp() and reserve+release from 2 pgbench clients, $GROWTH_ROUNDS alternating rounds of ${ATP_SECONDS}s"
    local r e_runs=() g_runs=() e_res=() g_res=()
    for db in "$db_empty" "$db_grown"; do psql_bench "$db" "VACUUM ANALYZE"; done
    for ((r = 1; r <= GROWTH_ROUNDS; r++)); do
        if ((r % 2)); then
            e_runs+=("$(pgbench_run "growth-atp-empty-$r" "$ROOT/bench/pgbench/atp.sql" "$db_empty" "$GROWTH_LOCATIONS")")
            g_runs+=("$(pgbench_run "growth-atp-grown-$r" "$ROOT/bench/pgbench/atp.sql" "$db_grown" "$GROWTH_LOCATIONS")")
            e_res+=("$(pgbench_run "growth-res-empty-$r" "$ROOT/bench/pgbench/reserve_release.sql" "$db_empty" "$GROWTH_LOCATIONS")")
            g_res+=("$(pgbench_run "growth-res-grown-$r" "$ROOT/bench/pgbench/reserve_release.sql" "$db_grown" "$GROWTH_LOCATIONS")")
        else
            g_runs+=("$(pgbench_run "growth-atp-grown-$r" "$ROOT/bench/pgbench/atp.sql" "$db_grown" "$GROWTH_LOCATIONS")")
            e_runs+=("$(pgbench_run "growth-atp-empty-$r" "$ROOT/bench/pgbench/atp.sql" "$db_empty" "$GROWTH_LOCATIONS")")
            g_res+=("$(pgbench_run "growth-res-grown-$r" "$ROOT/bench/pgbench/reserve_release.sql" "$db_grown" "$GROWTH_LOCATIONS")")
            e_res+=("$(pgbench_run "growth-res-empty-$r" "$ROOT/bench/pgbench/reserve_release.sql" "$db_empty" "$GROWTH_LOCATIONS")")
        fi
        say "bench: growth: round $r: atp() empty ${e_runs[-1]% *} tps, grown ${g_runs[-1]% *} tps;" \
            "reserve+release empty ${e_res[-1]% *} pairs/s, grown ${g_res[-1]% *} pairs/s"
    done
    local e_tps e_p99 g_tps g_p99 er_tps er_p99 gr_tps gr_p99
    read -r e_tps e_p99 <<<"$(median_runs "${e_runs[@]}")"
    read -r g_tps g_p99 <<<"$(median_runs "${g_runs[@]}")"
    read -r er_tps er_p99 <<<"$(median_runs "${e_res[@]}")"
    read -r gr_tps gr_p99 <<<"$(median_runs "${g_res[@]}")"

    {
        grep '^row|posting' "$OUT/rows-growth-rust.txt"
        awk -v e="$e_tps" -v g="$g_tps" 'BEGIN { printf "row|atp(sku, location) calls/s, 2 clients|%.0f|%.0f|%.2fx|>= 0.8x|\n", e, g, g / e }'
        awk -v e="$e_p99" -v g="$g_p99" 'BEGIN { printf "row|atp() p99 latency, ms|%.3f|%.3f|%.2fx|< 1 ms|\n", e, g, g / e }'
        awk -v e="$er_tps" -v g="$gr_tps" -v ep="$er_p99" -v gp="$gr_p99" 'BEGIN {
            printf "row|reserve+release pairs/s, 2 clients (p99 %.3f / %.3f ms)|%.0f|%.0f|%.2fx|reported|\n", ep, gp, e, g, g / e }'
        grep -v '^row|posting' "$OUT/rows-growth-rust.txt"
        cat "$sizes"
    } >"$rows"

    growth_plans "$db_grown"
    say "bench: growth: $GROWTH_EVENTS sales preloaded in $GROWTH_LOAD_SECONDS s; posting, atp and reserve are" \
        "medians of $GROWTH_ROUNDS alternating rounds, the audit functions medians of 3 calls (check_invariants" \
        "of 2); ratio = grown / empty; [answer: empty / grown]"
    print_table "growth ($GROWTH_EVENTS sales preloaded in $GROWTH_LOAD_SECONDS s)" "$rows" "figure|empty|grown|ratio|target|"
}

# growth_plans DB: the plans of trace, reconcile(location) and audit_day as they run inside the functions
# (auto_explain of nested statements, with ANALYZE and BUFFERS) go to a file; their key lines are printed
growth_plans() {
    local db=$1 plans=$OUT/growth-plans.txt call
    say "bench: growth: plans of trace, reconcile($GROWTH_STORE) and audit_day on the grown ledger (in full: $plans)"
    : >"$plans"
    for call in "SELECT count(*) FROM possync.trace('4000', '$GROWTH_STORE', '$GROWTH_DAY', '$GROWTH_DAY')" \
        "SELECT count(*) FROM possync.reconcile('$GROWTH_STORE')" \
        "SELECT possync.audit_day('$GROWTH_STORE', '$GROWTH_DAY') ->> 'status'"; do
        {
            echo "=== $call"
            printf '%s\n' "LOAD 'auto_explain';" \
                "SET auto_explain.log_min_duration = 0;" \
                "SET auto_explain.log_analyze = on;" \
                "SET auto_explain.log_buffers = on;" \
                "SET auto_explain.log_nested_statements = on;" \
                "SET client_min_messages = log;" \
                "$call;" |
                "$PG_BIN/psql" -X -q -h "$SOCK" -p "$PORT" -U postgres -d "$db" -tA 2>&1
        } >>"$plans"
    done
    # the key lines: each statement's duration and its scans of the ledger tables, with rows and buffers read
    grep -E '^=== |duration: [0-9.]+ ms|Scan (using [a-z_]+ )?on (event|stock_move|journal|journal_line|exception) |Buffers: shared' "$plans" \
        | sed -E 's/^LOG: +//; s/^ +->  / -> /; s/\(cost=[^)]*\) //' \
        | awk '/^===/ { print; next } /duration:/ { d = $0; next }
               /Scan/ { if (d != "") { print d; d = "" } print; scan = 1; next }
               /Buffers/ { if (scan) print; scan = 0 }' | cut -c1-170 >&2
}

# ---------------------------------------------------------------------------------------------------------------

main() {
    local stages=("$@")
    mkdir -p "$OUT"
    if [ ${#stages[@]} -eq 0 ] || [ "${stages[*]}" = all ]; then
        stages=("${ALL_STAGES[@]}")
        FULL_RUN=1
        ensure_cluster # first, so that the header names the possync build measured
        {
            echo "# possync benchmark report"
            echo
            echo "Written by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(machine). possync: $POSSYNC_BUILD."
            echo "Each figure is measured beside its baseline in the same run, on the same cluster."
        } >"$REPORT"
    fi
    for stage in "${stages[@]}"; do
        case $stage in
        posting | atp | bridge | growth) ;;
        *) die "unknown stage '$stage' (stages: ${ALL_STAGES[*]} growth)" ;;
        esac
    done
    say "bench: machine: $(machine)"
    for stage in "${stages[@]}"; do
        say "bench: stage $stage"
        "stage_$stage"
    done
    if [ "${#stages[@]}" -gt 1 ]; then
        # every figure of this run in one table, with the machine it was measured on
        echo
        echo "possync benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(machine)"
        {
            echo "figure|possync|baseline|ratio|target|"
            for stage in "${stages[@]}"; do
                [ -f "$OUT/rows-$stage.txt" ] && sed 's/^row|//' "$OUT/rows-$stage.txt"
            done
        } | column -t -s '|' -o '  '
    fi
    say "bench: report in $REPORT"
}

main "$@"
