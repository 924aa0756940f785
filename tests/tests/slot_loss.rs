//! D1: a source whose replication slot disappeared is never streamed silently from a new slot.

use std::time::{Duration, Instant};

use possync_e2e::*;
use tokio_postgres::Client;

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

const ERP_SALES: &str =
    "SELECT count(*) FROM possync.event WHERE source = 'store42' AND kind = 'sale'";
const POS_SLOTS: &str =
    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'possync_store42'";

fn wait_refusing(bridge: &Bridge, within: Duration) {
    let deadline = Instant::now() + within;
    while bridge.metric("possync_bridge_slot_lost", "store42") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the bridge did not refuse the source within {within:?}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_slot_was_dropped_is_refused_until_an_operator_accepts_the_loss() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let source = [("store42", pos.url("pos"))];
    let erp_url = erp.url("erp");

    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "L", 1, 20, 200).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    assert_eq!(bridge.terminate(), Some(0));
    let checkpoint: String = erp_db
        .query_one("SELECT possync.source_checkpoint('store42')::text", &[])
        .await
        .expect("checkpoint")
        .get(0);

    // a DBA drops the slot while the bridge is stopped; the tills go on selling
    pos_db
        .batch_execute("SELECT pg_drop_replication_slot('possync_store42')")
        .await
        .expect("drop slot");
    run_sales(&pos_db, "L", 21, 15, 200).await;

    // the bridge refuses loudly: metric, /healthz 503, ERROR naming source, slot and checkpoint
    let bridge = Bridge::start(&erp_url, &source, &[]);
    wait_refusing(&bridge, Duration::from_secs(30));
    let (code, body) = bridge.http_get("/healthz").expect("healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store42 slot_lost"), "{body}");
    let log = bridge.log();
    assert!(
        log.contains("ERROR")
            && log.contains("refusing to stream source store42")
            && log.contains("possync_store42")
            && log.contains(&format!("--accept-slot-loss store42={checkpoint}")),
        "{log}"
    );

    // and streams nothing from a new slot, also for what the tills sell meanwhile
    run_sales(&pos_db, "L", 36, 5, 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&erp_db, ERP_SALES).await, 20);
    assert_eq!(count(&pos_db, POS_SLOTS).await, 0, "no new slot was made");

    // the ERP holds one exception naming the range that can no longer be read
    let lost = erp_db
        .query(
            "SELECT reason, payload->'slot_loss'->>'lost_after' FROM possync.exception
             WHERE kind = 'malformed' AND payload->'slot_loss'->>'what' = 'slot_lost'",
            &[],
        )
        .await
        .expect("exceptions");
    assert_eq!(lost.len(), 1);
    let reason: String = lost[0].get(0);
    assert_eq!(
        lost[0].get::<_, Option<String>>(1).as_deref(),
        Some(checkpoint.as_str())
    );
    assert!(
        reason.contains(&format!("committed after {checkpoint}"))
            && reason.contains("possync_store42"),
        "{reason}"
    );

    // a restart, and an acceptance naming another checkpoint, are refused again without a second record
    assert_eq!(bridge.terminate(), Some(0));
    let bridge = Bridge::start(&erp_url, &source, &["--accept-slot-loss", "store42=0/8"]);
    wait_refusing(&bridge, Duration::from_secs(30));
    assert!(
        bridge.log().contains("names another checkpoint"),
        "{}",
        bridge.log()
    );
    assert_eq!(count(&pos_db, POS_SLOTS).await, 0);
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.exception WHERE payload->'slot_loss'->>'what' = 'slot_lost'"
        )
        .await,
        1
    );
    assert_eq!(count(&erp_db, ERP_SALES).await, 20);
    assert_eq!(bridge.terminate(), Some(0));

    // the operator accepts the loss: a new slot, the acceptance recorded, and the store streams again
    let accept = format!("store42={checkpoint}");
    let bridge = Bridge::start(&erp_url, &source, &["--accept-slot-loss", &accept]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    assert_eq!(
        bridge.metric("possync_bridge_slot_lost", "store42"),
        Some(0.0)
    );
    assert_eq!(bridge.http_get("/healthz").map(|(c, _)| c), Some(200));
    run_sales(&pos_db, "L", 41, 5, 200).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&erp_db, ERP_SALES).await < 25 {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // the 20 sales committed without a slot are not in the ERP; those after the acceptance are, once each
    assert_eq!(count(&erp_db, ERP_SALES).await, 25);
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE event_id BETWEEN 'L-000041' AND 'L-000045'"
        )
        .await,
        5
    );
    let accepted: String = erp_db
        .query_one(
            "SELECT reason FROM possync.exception WHERE payload->'slot_loss'->>'what' = 'slot_loss_accepted'",
            &[],
        )
        .await
        .expect("accepted record")
        .get(0);
    assert!(
        accepted.contains("an operator accepted")
            && accepted.contains(&format!("after {checkpoint}")),
        "{accepted}"
    );
    assert_eq!(doubled(&erp_db).await, 0);
    assert_eq!(bridge.terminate(), Some(0));

    // once accepted, a restart streams as usual (the flag left in place changes nothing)
    let bridge = Bridge::start(&erp_url, &source, &["--accept-slot-loss", &accept]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "L", 46, 1, 10).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&erp_db, ERP_SALES).await < 26 {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.exception WHERE payload ? 'slot_loss'"
        )
        .await,
        2
    );
}
