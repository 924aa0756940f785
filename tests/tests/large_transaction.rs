//! D4: one POS transaction of thousands of sales is mapped in time linear in its size, applied once, and never sent
//! again: the POS is told the end of its commit record, so a restarted bridge starts past it.

use std::time::{Duration, Instant};

use possync_e2e::*;

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
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n: i64 = erp
            .query_one(
                "SELECT count(*) FROM possync.event WHERE source = 'store42'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if n == SALES + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {} posted\n{}",
            SALES + 1,
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    eprintln!("large transaction: {SALES} sales in one POS transaction posted in {took:?}");
    // the POS was told it may forget the transaction: the slot's confirmed position is past its commit record
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let past: bool = pos
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'possync_store42'",
                &[&after_commit],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if past {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot's confirmed position stays before the applied transaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
