//! `make bench`, bridge stage: live lag at a steady POS rate, backlog drain and peak RSS of possync-bridge, each
//! beside PostgreSQL's own logical replication (a subscription copying the same POS tables into the ERP cluster),
//! measured in the same run. Prints `row|figure|possync|baseline|ratio|target|note` lines for bench/run.sh.
//!
//! Environment: BENCH_RATE (1000 POS transactions/s), BENCH_LIVE_SECONDS (10), BENCH_BACKLOG (100000),
//! BENCH_BATCH_TXNS (the bridge's --batch-max-txns, 300),
//! BENCH_BATCH_WAIT_MS (its --batch-max-wait-ms, 0), BENCH_DRAIN_ONLY=1 (only the two backlog drains, reference and
//! normalized mapping: no live lag, no native subscription), BENCH_DRAIN_ROUNDS (1: with more, the reference and
//! normalized drains alternate that many times and the medians are reported, with each round's figures),
//! BENCH_PROFILE=1 (the ERP's statements by total time after each drain, from pg_stat_statements),
//! BENCH_LANES_BACKLOG (30000 sales over BENCH_LANES_STORES stores, 30, drained in 1, 2 and 4 apply lanes).

use std::time::{Duration, Instant};

use possync_e2e::{
    count, erp_cluster_with, peak_rss_mb, pos_cluster, Bridge, Cluster, POS_SCHEMA, SKUS, STORE,
};
use tokio_postgres::Client;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A server-side procedure committing `n` sales of 3 lines and 1 tender, one transaction each: at the store, or
/// with `stores` spread over a chain's stores (`L00`, `L01`, ..., for the drain in apply lanes).
const SALES_PROCEDURE: &str = r#"
CREATE PROCEDURE public.bench_sales(prefix text, n int, start_at int DEFAULT 1, stores int DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    skus text[] := ARRAY[SKUS_LIST];
    i int; l int; q numeric; p numeric; t numeric; total numeric;
BEGIN
    FOR i IN start_at..start_at + n - 1 LOOP
        INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date, occurred_at)
        VALUES (prefix || i, CASE WHEN stores > 0 THEN 'L' || lpad((i % stores)::text, 2, '0') ELSE 'STORE' END,
                prefix, i, '2026-11-26', clock_timestamp());
        total := 0;
        FOR l IN 1..3 LOOP
            q := 1 + (i + l) % 3;
            p := 1 + ((i * 7 + l * 13) % 4000) / 100.0;
            t := round(q * p * 0.08875, 2);
            total := total + q * p + t;
            INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code)
            VALUES (prefix || i, l, skus[1 + (i + l) % array_length(skus, 1)], q, p, t, 'NY');
        END LOOP;
        INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES (prefix || i, 1, 'card', total);
        COMMIT;
    END LOOP;
END $$;
"#;

/// A chain of `stores` stores given stock in the ERP, then its backlog drained in 1, 2 and 4 apply lanes:
/// (lanes, tx/s) each. The POS has `public.bench_sales` (see [`SALES_PROCEDURE`]).
async fn drain_chain_in_lanes(
    pos: &Cluster,
    erp_db: &Client,
    erp_url: &str,
    bridge_args: &[&str],
    lanes_backlog: u32,
    stores: u32,
) -> Vec<(usize, f64)> {
    let mut chain = String::new();
    for i in 0..stores {
        let lines: Vec<String> = SKUS
            .iter()
            .map(|s| format!(r#"{{"sku": "{s}", "qty": "10000000", "unit_cost": "5.00"}}"#))
            .collect();
        chain.push_str(&format!(
            r#"INSERT INTO possync.location (location_id, name) VALUES ('L{i:02}', 'chain store {i}');
               SELECT possync.apply_event('{{"event_id": "bench-opening-L{i:02}", "kind": "receipt", "location": "L{i:02}",
                 "business_date": "2026-11-26", "occurred_at": "2026-11-26T07:00:00Z", "lines": [{}]}}');"#,
            lines.join(", ")
        ));
    }
    erp_db
        .batch_execute(&chain)
        .await
        .unwrap_or_else(|e| panic!("chain stores: {e}"));
    let mut lane_rates = Vec::new();
    for lanes in [1usize, 2, 4] {
        let rate = drain_in_lanes(
            pos,
            erp_db,
            erp_url,
            bridge_args,
            lanes_backlog,
            stores,
            lanes,
        )
        .await;
        lane_rates.push((lanes, rate));
    }
    lane_rates
}

/// Drains a backlog of `backlog` sales over `stores` stores with the bridge in `lanes` apply lanes (a source of
/// its own, so a slot of its own); returns the transactions per second.
async fn drain_in_lanes(
    pos: &Cluster,
    erp_db: &Client,
    erp_url: &str,
    bridge_args: &[&str],
    backlog: u32,
    stores: u32,
    lanes: usize,
) -> f64 {
    let name = format!("lanes{lanes}");
    let prefix = format!("C{lanes}-");
    let lanes_arg = lanes.to_string();
    let mut args: Vec<&str> = bridge_args.to_vec();
    args.extend(["--apply-lanes", lanes_arg.as_str()]);
    let source = [(name.as_str(), pos.url("pos"))];
    // the slot first, then the backlog while the bridge is stopped
    let bridge = Bridge::start(erp_url, &source, &args);
    bridge.wait_streaming(&name, Duration::from_secs(60));
    let _ = bridge.terminate();
    pos.connect("pos")
        .await
        .batch_execute(&format!(
            "CALL public.bench_sales('{prefix}', {backlog}, 1, {stores})"
        ))
        .await
        .unwrap_or_else(|e| panic!("chain backlog: {e}"));
    let bridge = Bridge::start(erp_url, &source, &args);
    let started = Instant::now();
    // the bridge's own count, as for the drain above: polling the ERP would take its cores from the drain
    loop {
        let applied = bridge
            .metric("possync_bridge_transactions_applied_total", &name)
            .unwrap_or(0.0);
        if applied >= f64::from(backlog) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{lanes} lane(s) drained {applied} of {backlog}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let posted = count(
        erp_db,
        &format!("SELECT count(*) FROM possync.event WHERE event_id LIKE '{prefix}%' AND status = 'applied'"),
    )
    .await;
    assert_eq!(
        posted,
        i64::from(backlog),
        "{lanes} lane(s) posted {posted} of {backlog}"
    );
    let _ = bridge.terminate();
    eprintln!(
        "bench: {backlog} sales over {stores} stores drained in {lanes} lane(s) in {secs:.1} s"
    );
    f64::from(backlog) / secs
}

/// The same sales on the normalized POS schema (`shop`): an order with 3 lines, their tax rows and 1 payment,
/// drafted and paid in one transaction each, so that a drain of it compares with the reference schema's.
const ORDERS_PROCEDURE: &str = r#"
CREATE PROCEDURE public.bench_orders(n int, start_at int DEFAULT 1) LANGUAGE plpgsql AS $$
DECLARE
    i int; l int; q numeric; p numeric; t numeric; total numeric; o bigint; line bigint;
    products int := (SELECT count(*) FROM shop.product);
BEGIN
    FOR i IN start_at..start_at + n - 1 LOOP
        INSERT INTO shop.pos_order (till_id, receipt_no, state, date_order) VALUES (1, i, 'draft', clock_timestamp())
        RETURNING id INTO o;
        total := 0;
        FOR l IN 1..3 LOOP
            q := 1 + (i + l) % 3;
            p := 1 + ((i * 7 + l * 13) % 4000) / 100.0;
            t := round(q * p * 0.08875, 2);
            total := total + q * p + t;
            INSERT INTO shop.pos_order_line (order_id, product_id, qty, price_unit, discount_pct, price_subtotal)
            VALUES (o, 1 + (i + l) % products, q, p, 0, q * p) RETURNING id INTO line;
            INSERT INTO shop.pos_order_line_tax (line_id, tax_id, amount) VALUES (line, 1, t);
        END LOOP;
        INSERT INTO shop.pos_payment (order_id, method_id, amount) VALUES (o, 1, total);
        UPDATE shop.pos_order SET state = 'paid' WHERE id = o;
        COMMIT;
    END LOOP;
END $$;
"#;

async fn one_sale(pos: &Client, register: &str, id: &str, seq: i64) {
    let sql = format!(
        "BEGIN;
         INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date, occurred_at) VALUES ('{id}', '{STORE}', '{register}', {seq}, '2026-11-26', clock_timestamp());
         INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code) VALUES
           ('{id}', 1, '{a}', 1, 10.00, 0.89, 'NY'), ('{id}', 2, '{b}', 2, 5.50, 0.98, 'NY'), ('{id}', 3, '{c}', 1, 3.25, 0.29, 'NY');
         INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('{id}', 1, 'card', 26.41);
         COMMIT;",
        a = SKUS[0],
        b = SKUS[1],
        c = SKUS[2]
    );
    pos.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("POS sale {id}: {e}"));
}

/// Commits `total` sales at `rate`/s over 4 connections.
async fn steady_load(pos: &Cluster, prefix: &str, rate: u32, total: u32) -> f64 {
    let workers = 4u32;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = pos.connect("pos").await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1) * workers / rate.max(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = w;
            while i < total {
                ticker.tick().await;
                // each worker is one till: its own register, numbering its receipts 1, 2, 3, ...
                one_sale(
                    &client,
                    &format!("{prefix}{w}"),
                    &format!("{prefix}{i}"),
                    i64::from(i / workers) + 1,
                )
                .await;
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("load task: {e}"));
    }
    f64::from(total) / started.elapsed().as_secs_f64()
}

async fn wait_count(client: &Client, sql: &str, want: i64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let have = count(client, sql).await;
        if have >= want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{sql}: {have} of {want} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// p50, p99, max of a lag column in milliseconds.
async fn lag_ms(client: &Client, sql: &str) -> (f64, f64, f64) {
    let q = format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
         FROM (SELECT (extract(epoch FROM lag) * 1000)::float8 AS ms FROM ({sql}) s) x"
    );
    let r = client
        .query_one(&q, &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    let f = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
    (f(0), f(1), f(2))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate: u32 = env_or("BENCH_RATE", 1000);
    let live_seconds: u32 = env_or("BENCH_LIVE_SECONDS", 10);
    let backlog: u32 = env_or("BENCH_BACKLOG", 100_000);
    let live_total = rate * live_seconds;
    let batch_txns: String = env_or("BENCH_BATCH_TXNS", "300".to_string());
    let batch_wait: String = env_or("BENCH_BATCH_WAIT_MS", "0".to_string());
    let drain_only = env_or("BENCH_DRAIN_ONLY", 0u32) == 1;
    let rounds: u32 = env_or("BENCH_DRAIN_ROUNDS", 1u32).max(1);
    let profile = env_or("BENCH_PROFILE", 0u32) == 1;
    let bridge_args = [
        "--batch-max-txns",
        batch_txns.as_str(),
        "--batch-max-wait-ms",
        batch_wait.as_str(),
    ];

    // durable, as in production: every commit on either side waits for its WAL flush (the test clusters skip it);
    // memory and checkpoint spacing as the posting and ATP stages' cluster has them (bench/run.sh)
    let durable = [
        "fsync = on",
        "full_page_writes = on",
        "shared_buffers = 256MB",
        "max_wal_size = 4GB",
        "checkpoint_timeout = 30min",
    ];
    let pos = pos_cluster(&durable).await;
    let mut erp_conf = durable.to_vec();
    if profile {
        erp_conf.extend([
            "shared_preload_libraries = 'pg_stat_statements'",
            "pg_stat_statements.track = all",
            "pg_stat_statements.track_utility = off",
        ]);
    }
    let erp = erp_cluster_with(&erp_conf).await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    if profile {
        erp_db
            .batch_execute("CREATE EXTENSION pg_stat_statements")
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
    }
    let skus: Vec<String> = SKUS.iter().map(|s| format!("'{s}'")).collect();
    pos_db
        .batch_execute(
            &SALES_PROCEDURE
                .replace("SKUS_LIST", &skus.join(", "))
                .replace("'STORE'", &format!("'{STORE}'")),
        )
        .await
        .unwrap_or_else(|e| panic!("bench procedure: {e}"));
    // the ERP as a store runs it: the tills' tax code is known and there is stock to sell, so every sale posts
    // clean (without these each line would also raise unknown_tax_code and negative_on_hand exceptions)
    let stock_lines: Vec<String> = SKUS
        .iter()
        .map(|s| format!(r#"{{"sku": "{s}", "qty": "10000000", "unit_cost": "5.00"}}"#))
        .collect();
    erp_db
        .batch_execute(&format!(
            r#"INSERT INTO possync.tax_code (tax_code, rate) VALUES ('NY', 0.08875);
               SELECT possync.apply_event('{{"event_id": "bench-opening-stock", "kind": "receipt", "location": "{STORE}",
                 "business_date": "2026-11-26", "occurred_at": "2026-11-26T07:00:00Z", "lines": [{}]}}');"#,
            stock_lines.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("bench master data: {e}"));
    // when each event reached the ERP: written inside the posting transaction, as the subscriber's default is
    erp_db
        .batch_execute(
            "CREATE SCHEMA bench;
             CREATE TABLE bench.arrival (event_id text PRIMARY KEY, at timestamptz NOT NULL);
             CREATE FUNCTION bench.arrived() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO bench.arrival VALUES (NEW.event_id, clock_timestamp()) ON CONFLICT DO NOTHING; RETURN NULL; END $$;
             CREATE TRIGGER bench_arrival AFTER INSERT ON possync.event FOR EACH ROW EXECUTE FUNCTION bench.arrived();",
        )
        .await
        .unwrap_or_else(|e| panic!("bench arrival table: {e}"));
    // the native baseline: the same POS tables copied into a database of the ERP cluster
    erp.create_database("native").await;
    let native = erp.connect("native").await;
    native
        .batch_execute(&format!(
            "{POS_SCHEMA}
             ALTER TABLE pos.sale ADD COLUMN arrived timestamptz DEFAULT clock_timestamp();"
        ))
        .await
        .unwrap_or_else(|e| panic!("native schema: {e}"));
    pos_db
        .batch_execute("CREATE PUBLICATION native FOR TABLE pos.sale, pos.sale_line, pos.tender")
        .await
        .unwrap_or_else(|e| panic!("native publication: {e}"));

    let source = [("bench", pos.url("pos"))];
    let erp_url = erp.url("erp");

    let mut live = None;
    if drain_only {
        // the slot must exist before the backlog is committed: a first start makes it
        let bridge = Bridge::start(&erp_url, &source, &bridge_args);
        bridge.wait_streaming("bench", Duration::from_secs(60));
        let _ = bridge.terminate();
    } else {
        live = Some(
            live_phases(
                &pos,
                &erp_db,
                &native,
                &erp_url,
                &source,
                &bridge_args,
                rate,
                live_total,
            )
            .await,
        );
    }

    // 3. backlogs: committed while the bridge is stopped (and the subscription disabled), then drained by each.
    // Each round drains the same number of sales through the reference mapping, then as many orders through
    // the normalized mapping; with several rounds the two alternate, so that both see the same machine.
    let mut shop_ready = false;
    let mapping = possync_e2e::workspace_root()
        .join("cdc-bridge/mappings/normalized.toml")
        .display()
        .to_string();
    let mut doc_args: Vec<&str> = bridge_args.to_vec();
    doc_args.extend(["--mapping", mapping.as_str()]);
    // the normalized POS is a cluster of its own, as a store's POS would be: each drain's walsender then reads
    // only its own backlog's WAL (in one cluster, every round's drain would also read past the other schema's)
    let shop_pos = Cluster::start("shop", true, &durable);
    let doc_source = [("benchshop", shop_pos.url("shop"))];
    let shop = {
        shop_pos.create_database("shop").await;
        shop_pos.connect("shop").await
    };
    let (mut ref_rates, mut doc_rates) = (Vec::new(), Vec::new());
    let mut native_rate = f64::NAN;
    let mut in_apply = f64::NAN;
    let mut bridge_secs = f64::NAN;
    let mut rss_drain: f64 = 0.0;
    let mut rss_doc: f64 = 0.0;
    let (mut ref_wal, mut doc_wal, mut ref_erp_wal, mut doc_erp_wal) = (0.0, 0.0, 0.0, 0.0);
    let (mut ref_cpu, mut doc_cpu) = (Cpu::default(), Cpu::default());
    for round in 0..rounds {
        let start_at = round * backlog + 1;
        if !drain_only && round == 0 {
            native
                .batch_execute("ALTER SUBSCRIPTION native DISABLE")
                .await
                .unwrap_or_else(|e| panic!("disable subscription: {e}"));
        }
        let made = Instant::now();
        let wal0 = wal_lsn(&pos_db).await;
        pos_db
            .batch_execute(&format!(
                "CALL public.bench_sales('D', {backlog}, {start_at})"
            ))
            .await
            .unwrap_or_else(|e| panic!("backlog: {e}"));
        ref_wal = (wal_lsn(&pos_db).await - wal0) / f64::from(backlog);
        eprintln!(
            "bench: round {round}: {backlog} backlog transactions committed in {:.1} s ({ref_wal:.0} bytes of POS WAL each)",
            made.elapsed().as_secs_f64()
        );
        let erp0 = wal_lsn(&erp_db).await;
        statements_reset(&erp_db, profile).await;
        let d = drain(
            &erp_url,
            &source,
            &bridge_args,
            "bench",
            backlog,
            &erp_db,
            &pos_db,
        )
        .await;
        statements_top(&erp_db, profile, "reference drain", backlog).await;
        ref_erp_wal = (wal_lsn(&erp_db).await - erp0) / f64::from(backlog);
        bridge_secs = d.secs;
        in_apply = d.in_apply;
        ref_cpu = d.cpu;
        rss_drain = rss_drain.max(d.rss);
        let posted = count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE event_id LIKE 'D%' AND status = 'applied'",
        )
        .await;
        let exceptions: String = erp_db
            .query_one(
                "SELECT coalesce(string_agg(kind || ' ' || n, ', '), 'none') FROM (SELECT kind, count(*) AS n FROM possync.exception GROUP BY kind ORDER BY kind) k",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|e| panic!("exception kinds: {e}"));
        ref_rates.push(f64::from(backlog) / d.secs);
        eprintln!("bench: round {round}: bridge drained {backlog} in {:.1} s, {:.0} tx/s ({posted} posted as applied in all; exceptions: {exceptions}; {ref_erp_wal:.0} bytes of ERP WAL per transaction; {})", d.secs, f64::from(backlog) / d.secs, d.cpu.per_txn(backlog));

        if !drain_only && round == 0 {
            let started = Instant::now();
            native
                .batch_execute("ALTER SUBSCRIPTION native ENABLE")
                .await
                .unwrap_or_else(|e| panic!("enable subscription: {e}"));
            wait_count(
                &native,
                "SELECT count(*) FROM pos.sale WHERE txn_id LIKE 'D%'",
                i64::from(backlog),
                Duration::from_secs(1800),
            )
            .await;
            native_rate = f64::from(backlog) / started.elapsed().as_secs_f64();
            let _ = native.batch_execute("DROP SUBSCRIPTION native").await;
        }

        // 4. the same backlog on the normalized POS schema, drained through its document mapping
        if !shop_ready {
            let mut master = String::from(include_str!(
                "../../../cdc-bridge/sql/normalized_pos_schema.sql"
            ));
            master.push_str(&format!(
                "INSERT INTO shop.store (code, name) VALUES ('{STORE}', 'Store');
                 INSERT INTO shop.till (store_id, register_code) VALUES (1, 'O');
                 INSERT INTO shop.tax (code, rate_pct) VALUES ('NY', 8.875);
                 INSERT INTO shop.payment_method (name, journal_type) VALUES ('Card', 'card');"
            ));
            for s in SKUS {
                master.push_str(&format!(
                    "INSERT INTO shop.product (default_code, name, list_price, tax_id) VALUES ('{s}', '{s}', 10, 1);"
                ));
            }
            master.push_str(ORDERS_PROCEDURE);
            shop.batch_execute(&master)
                .await
                .unwrap_or_else(|e| panic!("normalized POS: {e}"));
            // first start: the slot, the mirror and its initial copy of the master rows
            let bridge = Bridge::start(&erp_url, &doc_source, &doc_args);
            bridge.wait_streaming("benchshop", Duration::from_secs(120));
            let _ = bridge.terminate();
            shop_ready = true;
        }
        let wal0 = wal_lsn(&shop).await;
        shop.batch_execute(&format!("CALL public.bench_orders({backlog}, {start_at})"))
            .await
            .unwrap_or_else(|e| panic!("normalized backlog: {e}"));
        doc_wal = (wal_lsn(&shop).await - wal0) / f64::from(backlog);
        let erp0 = wal_lsn(&erp_db).await;
        statements_reset(&erp_db, profile).await;
        let d = drain(
            &erp_url,
            &doc_source,
            &doc_args,
            "benchshop",
            backlog,
            &erp_db,
            &shop,
        )
        .await;
        statements_top(&erp_db, profile, "normalized drain", backlog).await;
        doc_erp_wal = (wal_lsn(&erp_db).await - erp0) / f64::from(backlog);
        rss_doc = rss_doc.max(d.rss);
        doc_cpu = d.cpu;
        let doc_posted = count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE source = 'benchshop' AND status = 'applied'",
        )
        .await;
        doc_rates.push(f64::from(backlog) / d.secs);
        eprintln!("bench: round {round}: normalized mapping drained {backlog} orders in {:.1} s, {:.0} tx/s ({doc_posted} posted as applied in all; peak RSS {:.1} MB; {doc_wal:.0} bytes of POS WAL and {doc_erp_wal:.0} of ERP WAL per order; {})", d.secs, f64::from(backlog) / d.secs, d.rss, d.cpu.per_txn(backlog));
        eprintln!(
            "bench: round {round}: normalized / reference = {:.2}",
            doc_rates[doc_rates.len() - 1] / ref_rates[ref_rates.len() - 1]
        );
    }

    // 5. a chain's backlog drained in 1, 2 and 4 apply lanes (beside native replication: not with the drains only)
    let lanes_backlog: u32 = env_or("BENCH_LANES_BACKLOG", 30_000);
    let stores: u32 = env_or("BENCH_LANES_STORES", 30);
    let mut lane_rates = Vec::new();
    if !drain_only {
        lane_rates =
            drain_chain_in_lanes(&pos, &erp_db, &erp_url, &bridge_args, lanes_backlog, stores)
                .await;
    }

    let bridge_rate = median(&ref_rates);
    let doc_rate = median(&doc_rates);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    if let Some(l) = &live {
        println!(
            "bridge bench on {cores} cores: POS committed {:.0} tx/s (bridge phase) and {:.0} tx/s (native phase); lag = event written in the ERP minus POS commit, 3-line sales with 1 tender",
            l.achieved, l.native_achieved
        );
        let (b50, b99, bmax) = l.bridge_lag;
        let (n50, n99, nmax) = l.native_lag;
        println!("row|live lag p50 at {rate} tx/s (ms)|{b50:.1}|{n50:.1}|{:.2}||native subscription as baseline", b50 / n50);
        println!(
            "row|live lag p99 at {rate} tx/s (ms)|{b99:.1}|{n99:.1}|{:.2}|≤ 10 ms|",
            b99 / n99
        );
        println!(
            "row|live lag max at {rate} tx/s (ms)|{bmax:.1}|{nmax:.1}|{:.2}||",
            bmax / nmax
        );
        println!(
            "row|backlog drain of {backlog} txns (txns/s)|{bridge_rate:.0}|{native_rate:.0}|{:.2}|≥ 5,000/s|events posted with ledgers (native copies rows only); {in_apply:.1} of {bridge_secs:.1} s inside apply_batch",
            bridge_rate / native_rate
        );
    } else {
        println!("bridge bench on {cores} cores, drains only (BENCH_DRAIN_ONLY=1): {rounds} round(s) of {backlog} transactions");
    }
    let per_round: Vec<String> = ref_rates
        .iter()
        .zip(&doc_rates)
        .map(|(r, d)| format!("{d:.0}/{r:.0}"))
        .collect();
    println!(
        "row|backlog drain of {backlog} orders, normalized mapping (txns/s)|{doc_rate:.0}|{bridge_rate:.0}|{:.2}|≥ 0.70|baseline: the reference mapping's drain (same sales: 3 lines, 1 tender; same group size); POS WAL per transaction {doc_wal:.0} bytes (9 row changes) vs {ref_wal:.0} (5); ERP WAL per transaction {doc_erp_wal:.0} vs {ref_erp_wal:.0}; {} of {rounds} alternating round(s), per round {}; last round's CPU per transaction (ERP backend / POS walsender / bridge, µs): {:.0} / {:.0} / {:.0} vs {:.0} / {:.0} / {:.0}",
        doc_rate / bridge_rate,
        if rounds > 1 { "median" } else { "one" },
        per_round.join(", "),
        doc_cpu.erp * 1e6 / f64::from(backlog),
        doc_cpu.walsender * 1e6 / f64::from(backlog),
        doc_cpu.bridge * 1e6 / f64::from(backlog),
        ref_cpu.erp * 1e6 / f64::from(backlog),
        ref_cpu.walsender * 1e6 / f64::from(backlog),
        ref_cpu.bridge * 1e6 / f64::from(backlog),
    );
    let one_lane = lane_rates.first().map_or(0.0, |(_, r)| *r);
    for (lanes, rate) in &lane_rates {
        println!(
            "row|drain of {lanes_backlog} txns over {stores} stores, {lanes} apply lane(s) (txns/s)|{rate:.0}|{native_rate:.0}|{:.2}|≥ 0.50|{:.2}× one lane; {cores} cores shared by the POS, the ERP and the bridge",
            rate / native_rate,
            rate / one_lane
        );
    }
    let rss_live = live.as_ref().map_or(0.0, |l| l.rss);
    println!(
        "row|bridge peak RSS (MB)|{:.1}|—|—|< 64 MB|live phase {rss_live:.1} MB, reference drain {rss_drain:.1} MB, normalized drain {rss_doc:.1} MB",
        rss_drain.max(rss_live).max(rss_doc)
    );
}

async fn statements_reset(erp: &Client, profile: bool) {
    if profile {
        erp.batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements_reset: {e}"));
    }
}

/// With BENCH_PROFILE=1: the ERP's statements by total time during a drain (nested ones included, so that
/// apply_batch's own statements show beside the bridge's), per POS transaction.
async fn statements_top(erp: &Client, profile: bool, what: &str, txns: u32) {
    if !profile {
        return;
    }
    let rows = erp
        .query(
            "SELECT calls, total_exec_time, rows, toplevel, regexp_replace(left(query, 150), '\\s+', ' ', 'g') \
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
              ORDER BY total_exec_time DESC LIMIT 25",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
    eprintln!("bench: {what}: ERP statements by total time (µs per POS transaction, calls, rows, top level)");
    for r in rows {
        let calls: i64 = r.get(0);
        let total: f64 = r.get(1);
        let n: i64 = r.get(2);
        let top: bool = r.get(3);
        let q: String = r.get(4);
        eprintln!(
            "bench:   {:8.1} µs {calls:7} calls {n:8} rows {} {q}",
            total * 1000.0 / f64::from(txns),
            if top { "top" } else { "   " }
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The server's WAL position, in bytes.
async fn wal_lsn(db: &Client) -> f64 {
    db.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_else(|e| panic!("WAL position: {e}"))
}

struct Drained {
    secs: f64,
    rss: f64,
    in_apply: f64,
    /// CPU seconds of the ERP backends, the POS walsenders and the bridge that served the drain.
    cpu: Cpu,
}

#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    erp: f64,
    walsender: f64,
    bridge: f64,
}

impl Cpu {
    /// Microseconds of each per transaction, for the log.
    fn per_txn(&self, txns: u32) -> String {
        let us = |s: f64| s * 1e6 / f64::from(txns);
        format!(
            "CPU per transaction: ERP backend {:.0} µs, POS walsender {:.0} µs, bridge {:.0} µs",
            us(self.erp),
            us(self.walsender),
            us(self.bridge)
        )
    }
}

/// User and system CPU seconds a process has used so far (0 when it is gone).
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // the fields after the command name, which is in parentheses and may hold spaces
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // clock ticks per second: 100 on Linux everywhere this runs
    (ticks(11) + ticks(12)) / 100.0
}

/// The CPU seconds used so far by the server processes of `kind` that started after `since`.
async fn server_cpu(db: &Client, kind: &str, since: &str) -> f64 {
    let rows = db
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND backend_start >= $2::text::timestamptz AND pid <> pg_backend_pid()",
            &[&kind, &since],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"));
    rows.iter().map(|r| cpu_seconds(r.get(0))).sum()
}

/// Starts the bridge on a backlog and times it until it has applied `backlog` POS transactions.
async fn drain(
    erp_url: &str,
    source: &[(&str, String)],
    args: &[&str],
    name: &str,
    backlog: u32,
    erp_db: &Client,
    pos_db: &Client,
) -> Drained {
    let since: String = erp_db
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("clock: {e}"));
    let bridge = Bridge::start(erp_url, source, args);
    let started = Instant::now();
    loop {
        let applied = bridge
            .metric("possync_bridge_transactions_applied_total", name)
            .unwrap_or(0.0);
        if applied >= f64::from(backlog) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{name}: the bridge drained {applied} of {backlog}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = Cpu {
        erp: server_cpu(erp_db, "client backend", &since).await,
        walsender: server_cpu(pos_db, "walsender", &since).await,
        bridge: i32::try_from(bridge.pid()).map_or(0.0, cpu_seconds),
    };
    let rss = peak_rss_mb(bridge.pid());
    let in_apply = bridge
        .metric("possync_bridge_apply_seconds_sum", name)
        .unwrap_or(f64::NAN);
    let _ = bridge.terminate();
    Drained {
        secs,
        rss,
        in_apply,
        cpu,
    }
}

struct Live {
    achieved: f64,
    native_achieved: f64,
    bridge_lag: (f64, f64, f64),
    native_lag: (f64, f64, f64),
    rss: f64,
}

/// Live lag at a steady rate, the bridge's and then the native subscription's; then the bridge catches up on the
/// native phase's sales, so that its backlog afterwards is the same as the subscription's.
#[allow(clippy::too_many_arguments)]
async fn live_phases(
    pos: &Cluster,
    erp_db: &Client,
    native: &Client,
    erp_url: &str,
    source: &[(&str, String)],
    bridge_args: &[&str],
    rate: u32,
    live_total: u32,
) -> Live {
    // 1. live lag, bridge
    let bridge = Bridge::start(erp_url, source, bridge_args);
    bridge.wait_streaming("bench", Duration::from_secs(60));
    let achieved = steady_load(pos, "L", rate, live_total).await;
    wait_count(
        erp_db,
        "SELECT count(*) FROM possync.event WHERE event_id LIKE 'L%'",
        i64::from(live_total),
        Duration::from_secs(300),
    )
    .await;
    let bridge_lag = lag_ms(
        erp_db,
        "SELECT a.at - e.occurred_at AS lag FROM possync.event e JOIN bench.arrival a USING (event_id) WHERE e.event_id LIKE 'L%'",
    )
    .await;
    let rss = peak_rss_mb(bridge.pid());
    let live_batches = bridge
        .metric("possync_bridge_batches_total", "bench")
        .unwrap_or(f64::NAN);
    let live_txns = bridge
        .metric("possync_bridge_transactions_applied_total", "bench")
        .unwrap_or(f64::NAN);
    let live_apply = bridge
        .metric("possync_bridge_apply_seconds_sum", "bench")
        .unwrap_or(f64::NAN);
    eprintln!(
        "bench: bridge live: {live_batches} apply_batch calls, {:.2} transactions and {:.3} ms each on average",
        live_txns / live_batches,
        live_apply * 1000.0 / live_batches
    );
    eprintln!(
        "bench: bridge live: {achieved:.0} tx/s committed, lag p50/p99/max {bridge_lag:?} ms"
    );
    let _ = bridge.terminate();

    // 2. live lag, native subscription (created now, so it starts at the current WAL position)
    native
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION native CONNECTION 'host=127.0.0.1 port={} dbname=pos user=postgres' PUBLICATION native WITH (copy_data = false)",
            pos.port
        ))
        .await
        .unwrap_or_else(|e| panic!("native subscription: {e}"));
    wait_count(
        native,
        "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'native' AND received_lsn IS NOT NULL",
        1,
        Duration::from_secs(60),
    )
    .await;
    let native_achieved = steady_load(pos, "N", rate, live_total).await;
    wait_count(
        native,
        "SELECT count(*) FROM pos.sale WHERE txn_id LIKE 'N%'",
        i64::from(live_total),
        Duration::from_secs(300),
    )
    .await;
    let native_lag = lag_ms(
        native,
        "SELECT arrived - occurred_at AS lag FROM pos.sale WHERE txn_id LIKE 'N%'",
    )
    .await;
    eprintln!("bench: native live: {native_achieved:.0} tx/s committed, lag p50/p99/max {native_lag:?} ms");

    let bridge = Bridge::start(erp_url, source, bridge_args);
    wait_count(
        erp_db,
        "SELECT count(*) FROM possync.event WHERE event_id LIKE 'N%'",
        i64::from(live_total),
        Duration::from_secs(300),
    )
    .await;
    let _ = bridge.terminate();
    Live {
        achieved,
        native_achieved,
        bridge_lag,
        native_lag,
        rss,
    }
}
