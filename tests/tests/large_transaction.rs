//! D4: one POS transaction of thousands of sales is mapped in time linear in its size, applied once, and never sent
//! again: the POS is told the end of its commit record, so a restarted bridge starts past it.

use std::time::{Duration, Instant};

use possync_e2e::*;
use rust_decimal::Decimal;

const SALES: i64 = 8000;

#[tokio::test]
async fn a_large_pos_transaction_is_applied_once_and_never_streamed_again() {
    let _serial = serial().await;
    let pos_c = pos_cluster(&[]).await;
    let erp_c = erp_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp = erp_c.connect("erp").await;
    let source = [("store42", pos_c.url("pos"))];
    let bridge = Bridge::start(&erp_c.url("erp"), &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));

    let started = Instant::now();
    pos.batch_execute(&format!(
        "BEGIN;
         INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date)
           SELECT 'BIG-' || i, '{STORE}', 'R9', i, '2026-11-26' FROM generate_series(1, {SALES}) i;
         INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code)
           SELECT 'BIG-' || i, 1, 'CAP', 1, 10.00, 0.89, 'NY' FROM generate_series(1, {SALES}) i;
         INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount)
           SELECT 'BIG-' || i, 1, 'card', 10.89 FROM generate_series(1, {SALES}) i;
         COMMIT;"
    ))
    .await
    .unwrap_or_else(|e| panic!("the large transaction: {e}"));
    let after_commit: String = pos
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    // a small sale right behind it is not held up for long
    pos.batch_execute(&format!(
        "BEGIN;
         INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date) VALUES ('SMALL-1', '{STORE}', 'R8', 1, '2026-11-26');
         INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code) VALUES ('SMALL-1', 1, 'CAP', 1, 10.00, 0.89, 'NY');
         INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('SMALL-1', 1, 'cash', 10.89);
         COMMIT;"
    ))
    .await
    .unwrap_or_else(|e| panic!("the small sale: {e}"));
    wait_count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE source = 'store42'",
        SALES + 1,
        Duration::from_secs(180),
        || bridge.log(),
    )
    .await;
    let took = started.elapsed();
    eprintln!("large transaction: {SALES} sales in one POS transaction posted in {took:?}");
    // the POS was told it may forget the transaction: the slot's confirmed position is past its commit record
    wait_count(
        &pos,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'possync_store42' AND confirmed_flush_lsn >= '{after_commit}'"
        ),
        1,
        Duration::from_secs(30),
        || "the slot's confirmed position stays before the applied transaction".into(),
    )
    .await;
    // a restarted bridge is not sent the transaction again
    bridge.kill9();
    let bridge = Bridge::start(&erp_c.url("erp"), &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = bridge.metric("possync_bridge_transactions_applied_total", "store42");
    let skipped = bridge.metric("possync_bridge_batches_skipped_total", "store42");
    assert_eq!(received, Some(0.0), "{}", bridge.log());
    assert_eq!(skipped, Some(0.0));
    let n: i64 = erp
        .query_one("SELECT count(*) FROM possync.journal j JOIN possync.event e USING (event_id) WHERE e.source = 'store42'", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(n, SALES + 1, "one journal per sale, none twice");
}

/// D3: one sale of `LINES` lines (set `LARGE_SALE_LINES` to try 10⁶) is spilled to disk past 20,000 changes and
/// posted from there: the bridge's peak memory stays bounded whatever the sale's size.
#[tokio::test]
async fn a_sale_of_a_hundred_thousand_lines_is_posted_in_bounded_memory() {
    let lines: i64 = std::env::var("LARGE_SALE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let _serial = serial().await;
    let pos_c = pos_cluster(&[]).await;
    let erp_c = erp_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp = erp_c.connect("erp").await;
    let spill_dir = workspace_root().join("target").join("e2e");
    let spill_dir = spill_dir.display().to_string();
    let source = [("store42", pos_c.url("pos"))];
    let bridge = Bridge::start(&erp_c.url("erp"), &source, &["--spill-dir", &spill_dir]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    let started = Instant::now();
    pos.batch_execute(&format!(
        "BEGIN;
         INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date) VALUES ('HUGE-1', '{STORE}', 'R7', 1, '2026-11-26');
         INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code)
           SELECT 'HUGE-1', i, 'CAP', 1, 1.00, 0.09, 'NY' FROM generate_series(1, {lines}) i;
         INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('HUGE-1', 1, 'card', {lines} * 1.09);
         COMMIT;
         BEGIN;
         INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date) VALUES ('AFTER-1', '{STORE}', 'R7', 2, '2026-11-26');
         INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code) VALUES ('AFTER-1', 1, 'CAP', 1, 10.00, 0.89, 'NY');
         INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('AFTER-1', 1, 'cash', 10.89);
         COMMIT;"
    ))
    .await
    .unwrap_or_else(|e| panic!("the huge sale: {e}"));
    wait_count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE event_id IN ('HUGE-1', 'AFTER-1')",
        2,
        Duration::from_secs(900),
        || bridge.log(),
    )
    .await;
    let took = started.elapsed();
    let rss = peak_rss_mb(bridge.pid());
    eprintln!("large sale: {lines} lines posted in {took:?}; bridge peak RSS {rss:.1} MB");
    let log = bridge.log();
    assert!(log.contains("spilled to disk"), "{log}");
    assert!(rss < 64.0, "peak RSS {rss:.1} MB");
    let row = erp
        .query_one(
            "SELECT (SELECT count(*) FROM possync.stock_move WHERE event_id = 'HUGE-1'),
                    (SELECT sum(credit - debit) FROM possync.journal_line l JOIN possync.journal j USING (journal_id)
                      WHERE j.event_id = 'HUGE-1' AND l.account_code = '4000')::text,
                    (SELECT count(*) FROM possync.exception WHERE kind IN ('malformed', 'tender_mismatch'))",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.get::<_, i64>(0), lines, "one stock move per line");
    let revenue: Decimal = row
        .get::<_, Option<String>>(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    assert_eq!(revenue, Decimal::from(lines), "revenue: 1.00 per line");
    assert_eq!(row.get::<_, i64>(2), 0);
    let left: usize = std::fs::read_dir(&spill_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("possync-spill-")
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "the spill file is removed once posted");
}
