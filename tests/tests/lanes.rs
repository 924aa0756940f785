//! Apply lanes (issue 15 part 3): one source applied in several ERP sessions split by location must leave the
//! books exactly as one session does, through SIGKILLs of the bridge and changes of the number of lanes.
//!
//! A seeded chain of eight stores trades on the reference POS schema: sales, returns of sales made at other
//! stores (valued at the original sale's cost), receipts, and transfers whose transfer_in comes in the same POS
//! transaction as its transfer_out, in the next one, or before it. Two ERPs stream the same POS: one through a
//! bridge with one session that runs undisturbed, one through a bridge with lanes that is killed and restarted
//! with 3, 2 and 4 lanes, every other time spilling most POS transactions to files. Both ERPs must then hold
//! the same events with the same statuses, the same stock and value per item and store, the same general
//! ledger per account and store, and the same exceptions; and the revenue, returns and units must equal what
//! the POS tables say.

use std::collections::BTreeMap;
use std::time::Duration;

use possync_e2e::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio_postgres::Client;

const STORES: usize = 8;

fn store(i: usize) -> String {
    format!("L{i:02}")
}

/// The generated chain's POS transactions, as SQL, and what they add up to.
struct Chain {
    txns: Vec<String>,
    events: i64,
}

fn generate(seed: u64, count: usize) -> Chain {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = [0i64; STORES];
    let mut sales: Vec<(String, usize, String)> = Vec::new();
    let mut txns = Vec::new();
    let mut events = 0i64;
    // a transfer_in that waits for a later POS transaction, or comes before its transfer_out
    let mut later: Vec<String> = Vec::new();
    let mut n = 0usize;
    let stock_event = |id: &str,
                       at: usize,
                       kind: &str,
                       r: Option<&str>,
                       other: Option<usize>,
                       lines: &[(String, Decimal, Option<Decimal>)]| {
        let mut sql = format!(
            "INSERT INTO pos.stock_event (event_id, store_id, kind, ref, other_store_id, business_date) VALUES ('{id}', '{}', '{kind}', {}, {}, '2026-11-26');",
            store(at),
            r.map_or("NULL".into(), |r| format!("'{r}'")),
            other.map_or("NULL".into(), |o| format!("'{}'", store(o)))
        );
        for (no, (sku, qty, cost)) in lines.iter().enumerate() {
            sql.push_str(&format!(
                "INSERT INTO pos.stock_event_line (event_id, line_no, sku, qty, unit_cost) VALUES ('{id}', {}, '{sku}', {qty}, {});",
                no + 1,
                cost.map_or("NULL".into(), |c| c.to_string())
            ));
        }
        sql
    };
    while txns.len() < count {
        n += 1;
        let at = rng.gen_range(0..STORES);
        let sku = SKUS[rng.gen_range(0..SKUS.len())].to_string();
        let roll = rng.gen_range(0..100);
        let mut sql = String::from("BEGIN;");
        if roll < 12 || n <= STORES {
            let at = if n <= STORES { n - 1 } else { at };
            let lines: Vec<_> = SKUS
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        Decimal::from(rng.gen_range(5..30)),
                        Some(Decimal::new(rng.gen_range(200..900), 2)),
                    )
                })
                .collect();
            sql.push_str(&stock_event(
                &format!("RC{n}"),
                at,
                "receipt",
                None,
                None,
                &lines,
            ));
            events += 1;
        } else if roll < 24 {
            // a transfer: its transfer_in in this transaction, in a later one, or first
            let to = (at + rng.gen_range(1..STORES)) % STORES;
            let tid = format!("TR{n}");
            let qty = Decimal::from(rng.gen_range(1..4));
            let out = stock_event(
                &format!("TO{n}"),
                at,
                "transfer_out",
                Some(&tid),
                Some(to),
                &[(sku.clone(), qty, None)],
            );
            let inn = stock_event(
                &format!("TI{n}"),
                to,
                "transfer_in",
                Some(&tid),
                Some(at),
                &[(sku.clone(), qty, None)],
            );
            match rng.gen_range(0..3) {
                0 => {
                    sql.push_str(&out);
                    sql.push_str(&inn);
                }
                1 => {
                    sql.push_str(&out);
                    later.push(inn);
                }
                _ => {
                    // the receipt is committed first: held until its transfer_out comes
                    txns.push(format!("BEGIN;{inn}COMMIT;"));
                    sql.push_str(&out);
                }
            }
            events += 2;
        } else if roll < 36 && !sales.is_empty() {
            // a return, at this store, of a sale made at any store
            let (orig, _, orig_sku) = sales[rng.gen_range(0..sales.len())].clone();
            seq[at] += 1;
            let id = format!("RT{n}");
            let price = Decimal::new(rng.gen_range(100..3000), 2);
            let tax = (price * Decimal::new(8875, 5)).round_dp(2);
            sql.push_str(&format!(
                "INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date, original_txn_id) VALUES ('{id}', '{}', '1', {}, 'return', '2026-11-26', '{orig}');
                 INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code, returned) VALUES ('{id}', 1, '{orig_sku}', 1, {price}, 0, {tax}, 'NY', true);
                 INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('{id}', 1, 'cash', {});",
                store(at), seq[at], -(price + tax)
            ));
            events += 1;
        } else {
            // one sale, or one at each of two stores in the same POS transaction
            let stores = if rng.gen_bool(0.15) {
                vec![at, (at + 1) % STORES]
            } else {
                vec![at]
            };
            for s in stores {
                seq[s] += 1;
                let id = format!("SL{n}-{s}");
                let qty = Decimal::from(rng.gen_range(1..3));
                let price = Decimal::new(rng.gen_range(100..3000), 2);
                let tax = (qty * price * Decimal::new(8875, 5)).round_dp(2);
                let tender = if rng.gen_bool(0.5) { "cash" } else { "card" };
                sql.push_str(&format!(
                    "INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date) VALUES ('{id}', '{}', '1', {}, 'sale', '2026-11-26');
                     INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code) VALUES ('{id}', 1, '{sku}', {qty}, {price}, 0, {tax}, 'NY');
                     INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('{id}', 1, '{tender}', {});",
                    store(s), seq[s], qty * price + tax
                ));
                sales.push((id, s, sku.clone()));
                events += 1;
            }
        }
        if rng.gen_bool(0.5) {
            if let Some(inn) = later.pop() {
                sql.push_str(&inn);
            }
        }
        sql.push_str("COMMIT;");
        txns.push(sql);
    }
    for inn in later {
        txns.push(format!("BEGIN;{inn}COMMIT;"));
    }
    Chain { txns, events }
}

async fn rows(db: &Client, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// What both ERPs must agree on, as text rows in a fixed order.
async fn books(db: &Client) -> BTreeMap<&'static str, Vec<String>> {
    let mut b = BTreeMap::new();
    b.insert(
        "events",
        rows(
            db,
            "SELECT event_id, kind, status, location_id FROM possync.event ORDER BY event_id",
        )
        .await,
    );
    b.insert(
        "stock",
        rows(db, "SELECT sku, location_id, on_hand::text, value::text, avg_cost::text FROM possync.stock_balance ORDER BY 1, 2").await,
    );
    b.insert(
        "moves",
        rows(db, "SELECT event_id, sku, location_id, qty::text, value::text FROM possync.stock_move ORDER BY 1, 2, 3, 4").await,
    );
    b.insert(
        "gl",
        rows(db, "SELECT account_code, coalesce(location_id, '-'), sum(debit)::text, sum(credit)::text FROM possync.journal_line GROUP BY 1, 2 ORDER BY 1, 2").await,
    );
    b.insert(
        "exceptions",
        rows(db, "SELECT kind, coalesce(event_id, '-'), status, count(*)::text FROM possync.exception GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").await,
    );
    b
}

async fn setup_erp(erp: &Cluster) -> Client {
    let db = erp.connect("erp").await;
    let mut sql = String::new();
    for i in 0..STORES {
        sql.push_str(&format!(
            "INSERT INTO possync.location (location_id, name) VALUES ('{}', 'store {i}');",
            store(i)
        ));
    }
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("locations: {e}"));
    db
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_post_what_one_session_posts_through_sigkills_and_lane_changes() {
    let _serial = serial().await;
    let seed = std::env::var("LANES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen_range(0..1_000_000u64));
    eprintln!("LANES_SEED={seed}");
    let chain = generate(seed, 900);
    let pos = pos_cluster(&[]).await;
    let (single_erp, laned_erp) = (erp_cluster().await, erp_cluster().await);
    let (single_db, laned_db) = (setup_erp(&single_erp).await, setup_erp(&laned_erp).await);
    let small = ["--batch-max-txns", "25"];
    let single = Bridge::start(
        &single_erp.url("erp"),
        &[("single", pos.url("pos"))],
        &small,
    );
    // every other run spills each POS transaction of 5 changes or more to a file (two stores' sales, a receipt):
    // each lane then writes its own events of it from the file
    let laned_args = |k: &'static str, spill: bool| {
        [
            "--batch-max-txns",
            "25",
            "--apply-lanes",
            k,
            "--spill-after-changes",
            if spill { "5" } else { "20000" },
        ]
    };
    let laned_source = [("chain", pos.url("pos"))];
    let mut laned = Bridge::start(
        &laned_erp.url("erp"),
        &laned_source,
        &laned_args("3", false),
    );
    single.wait_streaming("single", Duration::from_secs(30));
    laned.wait_streaming("chain", Duration::from_secs(30));

    let pos_db = pos.connect("pos").await;
    let txns = chain.txns.clone();
    let writer = tokio::spawn(async move {
        for sql in txns {
            pos_db
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("POS: {e}\n{sql}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // killed while it applies, restarted with as many lanes, then with fewer, then with more
    for (k, spill) in [("3", true), ("2", false), ("4", true)] {
        tokio::time::sleep(Duration::from_millis(
            rand::thread_rng().gen_range(500..1500),
        ))
        .await;
        laned.kill9();
        laned = Bridge::start(&laned_erp.url("erp"), &laned_source, &laned_args(k, spill));
    }
    writer.await.expect("POS writer");

    let events = "SELECT count(*) FROM possync.event";
    wait_count(
        &single_db,
        events,
        chain.events,
        Duration::from_secs(180),
        || single.log(),
    )
    .await;
    wait_count(
        &laned_db,
        events,
        chain.events,
        Duration::from_secs(180),
        || laned.log(),
    )
    .await;
    // and every lane's checkpoint at the POS's last commit (nothing more in flight)
    let lanes_done = "SELECT count(*) FROM possync.source_lane l WHERE l.checkpoint = (SELECT checkpoint FROM possync.source_status WHERE source_id = 'chain') AND l.lanes = 4";
    wait_count(&laned_db, lanes_done, 4, Duration::from_secs(60), || {
        laned.log()
    })
    .await;
    single.terminate();
    laned.terminate();

    // possync-bridge status shows the least checkpoint and the lanes
    let out = std::process::Command::new(bridge_path())
        .args(["status", "--erp", &laned_erp.url("erp")])
        .output()
        .expect("possync-bridge status");
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("chain "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let least = count(&laned_db, "SELECT count(*) FROM possync.source_lane WHERE checkpoint::text = (SELECT possync.source_checkpoint('chain')::text)").await;
    assert_eq!(least, 4, "{text}");
    assert_eq!(line.get(6).copied(), Some("4"), "lanes column\n{text}");

    let (a, b) = (books(&single_db).await, books(&laned_db).await);
    for (what, rows) in &a {
        assert!(!rows.is_empty(), "{what}: nothing posted");
        let other = &b[what];
        let diff: Vec<_> = rows
            .iter()
            .filter(|r| !other.contains(r))
            .chain(other.iter().filter(|r| !rows.contains(r)))
            .take(10)
            .collect();
        assert!(
            diff.is_empty(),
            "{what} differ between one session and lanes (seed {seed}): {diff:?}"
        );
    }
    // nothing waits: every transfer_in found its transfer_out, also when they raced in two lanes
    assert_eq!(
        count(
            &laned_db,
            "SELECT count(*) FROM possync.event WHERE status = 'held'"
        )
        .await,
        0,
        "held events (seed {seed})"
    );
    assert_eq!(doubled(&laned_db).await, 0);
    assert_eq!(
        count(&laned_db, "SELECT count(*) FROM possync.check_invariants()").await,
        0,
        "invariants"
    );
    assert_eq!(
        count(&laned_db, "SELECT count(*) FROM possync.reconcile()").await,
        0,
        "reconcile"
    );
    assert_eq!(count(&laned_db, "SELECT count(*) FROM possync.exception WHERE kind IN ('malformed', 'conflict', 'missing_transaction')").await, 0);

    // the books against the POS tables
    let pos_db = pos.connect("pos").await;
    let pos_fig = rows(
        &pos_db,
        "SELECT (SELECT sum(l.qty * l.unit_price - l.discount) FROM pos.sale_line l JOIN pos.sale s USING (txn_id) WHERE s.kind = 'sale')::text,
                (SELECT sum(l.qty * l.unit_price - l.discount) FROM pos.sale_line l JOIN pos.sale s USING (txn_id) WHERE s.kind = 'return')::text,
                (SELECT sum(CASE WHEN s.kind = 'sale' THEN -l.qty ELSE l.qty END) FROM pos.sale_line l JOIN pos.sale s USING (txn_id))::text",
    )
    .await;
    let erp_fig = rows(
        &laned_db,
        "SELECT (SELECT sum(credit - debit) FROM possync.journal_line WHERE account_code = '4000')::text,
                (SELECT sum(debit - credit) FROM possync.journal_line WHERE account_code = '4100')::text,
                (SELECT sum(m.qty) FROM possync.stock_move m JOIN possync.event e USING (event_id) WHERE e.kind IN ('sale', 'return'))::text",
    )
    .await;
    let parse = |r: &str| r.split('|').map(dec).collect::<Vec<_>>();
    assert_eq!(
        parse(&erp_fig[0]),
        parse(&pos_fig[0]),
        "revenue, returns and units (seed {seed})"
    );
}
