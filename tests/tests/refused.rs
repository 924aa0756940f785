//! D2: one POS transaction the ERP raises an error for must not stop the store.

use std::time::{Duration, Instant};

use possync_e2e::*;
use rust_decimal::Decimal;
use tokio_postgres::Client;

/// The sale the ERP is made to refuse (a test-only trigger in the ERP raises for its event id).
const BAD: &str = "B-000050";

/// A trigger in the ERP test database that raises a data error (22003, numeric out of range) for one event id,
/// standing in for data the contract accepts and the posting still fails on.
const FAULT: &str = "
CREATE FUNCTION public.refuse_marked_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_id = 'B-000050' THEN
        RAISE EXCEPTION 'test fault: event % refused', NEW.event_id
            USING ERRCODE = '22003', DETAIL = 'injected by the e2e test', HINT = 'drop the test trigger';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked_event BEFORE INSERT ON possync.event
    FOR EACH ROW EXECUTE FUNCTION public.refuse_marked_event();";

/// The POS totals of the sales other than `BAD`.
async fn pos_totals_without_bad(pos: &Client) -> Totals {
    let mut all = pos_totals(pos).await;
    let r = pos
        .query_one(
            "SELECT sum(qty * unit_price - discount)::text, sum(tax)::text, sum(qty)::text FROM pos.sale_line WHERE txn_id = $1",
            &[&BAD],
        )
        .await
        .unwrap_or_else(|e| panic!("bad sale: {e}"));
    let dec = |i: usize| -> Decimal {
        r.get::<_, Option<String>>(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    };
    all.transactions -= 1;
    all.net -= dec(0);
    all.tax -= dec(1);
    all.qty -= dec(2);
    for t in pos
        .query(
            "SELECT tender_type, amount::text FROM pos.tender WHERE txn_id = $1",
            &[&BAD],
        )
        .await
        .unwrap_or_else(|e| panic!("bad tenders: {e}"))
    {
        let kind: String = t.get(0);
        let amount: Decimal = t.get::<_, String>(1).parse().unwrap_or_default();
        if let Some(v) = all.tenders.get_mut(&kind) {
            *v -= amount;
        }
    }
    all.tenders.retain(|_, v| !v.is_zero());
    all
}

async fn wait_for_sales(erp: &Client, want: i64, bridge: &Bridge, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have = count(
            erp,
            "SELECT count(*) FROM possync.event WHERE source = 'store42' AND kind = 'sale'",
        )
        .await;
        if have >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ERP holds {have} of {want} sales after {within:?}: the store is stuck\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pos_transaction_the_erp_raises_for_is_kept_as_rejected_and_the_store_keeps_posting() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let source = [("store42", pos.url("pos"))];
    let erp_url = erp.url("erp");
    erp_db.batch_execute(FAULT).await.expect("fault trigger");

    // the slot exists; then a backlog of 120 sales with the bad one in the middle, so that it arrives in one
    // group with many good ones
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    assert_eq!(bridge.terminate(), Some(0));
    run_sales(&pos_db, "B", 1, 120, 1000).await;
    let bridge = Bridge::start(&erp_url, &source, &[]);
    wait_for_sales(&erp_db, 119, &bridge, Duration::from_secs(60)).await;

    // and the store keeps posting what it sells afterwards
    run_sales(&pos_db, "B", 121, 30, 200).await;
    wait_for_sales(&erp_db, 149, &bridge, Duration::from_secs(60)).await;

    // the refused sale is kept as one rejected exception naming the server's message, detail, hint and SQLSTATE
    let kept = erp_db
        .query(
            "SELECT reason, payload->'original'->>'event_id', payload->'erp_error'->>'sqlstate', payload->'erp_error'->>'hint'
             FROM possync.exception WHERE kind = 'malformed' AND payload->>'original_event_id' = $1",
            &[&BAD],
        )
        .await
        .expect("exceptions");
    assert_eq!(kept.len(), 1, "one rejected exception for the refused sale");
    let reason: String = kept[0].get(0);
    assert!(
        reason.contains("test fault: event B-000050 refused")
            && reason.contains("22003")
            && reason.contains("injected by the e2e test"),
        "{reason}"
    );
    assert_eq!(kept[0].get::<_, Option<String>>(1).as_deref(), Some(BAD));
    assert_eq!(
        kept[0].get::<_, Option<String>>(2).as_deref(),
        Some("22003")
    );
    assert_eq!(
        kept[0].get::<_, Option<String>>(3).as_deref(),
        Some("drop the test trigger")
    );
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE event_id = 'B-000050'"
        )
        .await,
        0,
        "the refused sale did not post"
    );

    // everything else posted once, to the cent
    let posted = erp_totals(&erp_db, "store42").await;
    let expected = pos_totals_without_bad(&pos_db).await;
    assert_eq!(expected.transactions, 149);
    assert_eq!(
        posted, expected,
        "ERP postings differ from the POS sales other than {BAD}"
    );
    assert_eq!(doubled(&erp_db).await, 0, "an event was posted twice");
    assert_eq!(
        bridge.metric("possync_bridge_rejected_transactions_total", "store42"),
        Some(1.0)
    );
    let log = bridge.log();
    assert!(
        log.contains("ERROR")
            && log.contains("test fault: event B-000050 refused")
            && log.contains("injected by the e2e test")
            && log.contains("drop the test trigger")
            && log.contains("22003"),
        "the log names the server's message, detail, hint and SQLSTATE\n{log}"
    );
    assert!(!log.contains("db error"), "{log}");

    // status counts it among the source's rejected events
    let out = std::process::Command::new(bridge_path())
        .args(["status", "--erp", &erp_url])
        .output()
        .expect("possync-bridge status");
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("store42 "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(line.get(5).copied(), Some("1"), "rejected column\n{text}");

    // a restart posts nothing again: neither the sales nor the rejected form
    let journals = count(&erp_db, "SELECT count(*) FROM possync.journal").await;
    assert_eq!(bridge.terminate(), Some(0));
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "B", 151, 1, 10).await;
    wait_for_sales(&erp_db, 150, &bridge, Duration::from_secs(60)).await;
    assert_eq!(
        count(&erp_db, "SELECT count(*) FROM possync.journal").await,
        journals + 1
    );
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.exception WHERE kind = 'malformed' AND payload->>'original_event_id' = 'B-000050'"
        )
        .await,
        1
    );
    assert_eq!(doubled(&erp_db).await, 0);
}

/// A trigger that refuses one sale of a POS transaction too large to hold (22003, as `FAULT`).
const FAULT_SPILLED: &str = "
CREATE FUNCTION public.refuse_marked_spilled_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_id = 'BIGREF-3' THEN
        RAISE EXCEPTION 'test fault: event % refused', NEW.event_id
            USING ERRCODE = '22003', DETAIL = 'injected by the e2e test';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked_spilled_event BEFORE INSERT ON possync.event
    FOR EACH ROW EXECUTE FUNCTION public.refuse_marked_spilled_event();";

/// A spilled POS transaction (its changes in a file, D3) the ERP refuses is kept whole: every event, with all
/// its lines, and every row left over, each as a rejected record carrying it, as a transaction held in memory is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spilled_pos_transaction_keeps_every_event_and_row() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    erp_db
        .batch_execute(FAULT_SPILLED)
        .await
        .expect("fault trigger");
    let spill_dir = workspace_root().join("target").join("e2e-refused-spill");
    std::fs::create_dir_all(&spill_dir).expect("spill dir");
    let spill_dir = spill_dir.display().to_string();
    let source = [("store42", pos.url("pos"))];
    let bridge = Bridge::start(
        &erp.url("erp"),
        &source,
        &["--spill-after-changes", "50", "--spill-dir", &spill_dir],
    );
    bridge.wait_streaming("store42", Duration::from_secs(30));
    // 10 sales of 10 lines, their tenders and an update of one (which makes no event): 121 changes, spilled
    // past 50
    pos_db
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO pos.sale (txn_id, store_id, register_id, seq, business_date)
               SELECT 'BIGREF-' || i, '{STORE}', 'R9', i, '2026-11-26' FROM generate_series(1, 10) i;
             INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, tax, tax_code)
               SELECT 'BIGREF-' || i, n, 'CAP', 1, 10.00, 0.89, 'NY'
                 FROM generate_series(1, 10) i, generate_series(1, 10) n;
             INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount)
               SELECT 'BIGREF-' || i, 1, 'card', 108.90 FROM generate_series(1, 10) i;
             UPDATE pos.sale SET currency = 'USD' WHERE txn_id = 'BIGREF-1';
             COMMIT;"
        ))
        .await
        .unwrap_or_else(|e| panic!("the large transaction: {e}"));
    run_sales(&pos_db, "AFTER", 1, 1, 10).await;
    wait_count(
        &erp_db,
        "SELECT count(*) FROM possync.event WHERE event_id LIKE 'AFTER-%'",
        1,
        Duration::from_secs(120),
        || bridge.log(),
    )
    .await;
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE event_id LIKE 'BIGREF-%'"
        )
        .await,
        0,
        "nothing of the refused transaction posted"
    );
    // one record per event, each carrying its original with every line, and the update (kept as the unmapped
    // row it was)
    let row = erp_db
        .query_one(
            "SELECT count(*) FILTER (WHERE payload->>'original_event_id' LIKE 'BIGREF-%'),
                    count(DISTINCT payload->>'original_event_id') FILTER (WHERE payload->>'original_event_id' LIKE 'BIGREF-%'),
                    coalesce(sum(jsonb_array_length(payload->'original'->'lines')), 0)::bigint,
                    count(*) FILTER (WHERE payload->'original'->>'op' = 'update'
                                       AND payload->'original'->'raw'->>'txn_id' = 'BIGREF-1'),
                    count(*) FILTER (WHERE payload->'erp_error'->>'sqlstate' = '22003'
                                       AND reason LIKE '%test fault: event BIGREF-3 refused%'),
                    count(*)
               FROM possync.exception WHERE kind = 'malformed' AND payload ? 'erp_error'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("exceptions: {e}"));
    let kept = (
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3),
        row.get::<_, i64>(4),
        row.get::<_, i64>(5),
    );
    assert_eq!(
        kept,
        (10, 10, 100, 1, 11, 11),
        "(records of sales, distinct sales, lines kept, update kept, records naming the server's error, all records)\n{}",
        bridge.log()
    );
    assert_eq!(
        bridge.metric("possync_bridge_rejected_transactions_total", "store42"),
        Some(1.0)
    );
    let log = bridge.log();
    assert!(log.contains("spilled to disk"), "{log}");
    assert_eq!(doubled(&erp_db).await, 0);
    let left = std::fs::read_dir(&spill_dir)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    assert_eq!(left, 0, "the spill file is removed once kept");
}
