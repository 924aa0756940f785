//! D1: a source whose replication slot disappeared is never streamed silently from a new slot.

use std::time::{Duration, Instant};

use possync_e2e::*;
use tokio_postgres::Client;

const ERP_SALES: &str =
    "SELECT count(*) FROM possync.event WHERE source = 'store42' AND kind = 'sale'";
const POS_SLOTS: &str =
    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'possync_store42'";

/// A POS and an ERP with a bridge that streamed `sales` sales (ids `prefix`...) and then stopped, and the
/// ERP's checkpoint for the source at that point.
struct Streamed {
    // the clusters stop when dropped: a test binds both for its whole length
    pos: Cluster,
    _erp: Cluster,
    pos_db: Client,
    erp_db: Client,
    source: [(&'static str, String); 1],
    erp_url: String,
    checkpoint: String,
}

async fn streamed_then_stopped(pos_extra: &[&str], prefix: &str, sales: i64) -> Streamed {
    let pos = pos_cluster(pos_extra).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let source = [("store42", pos.url("pos"))];
    let erp_url = erp.url("erp");
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, prefix, 1, sales, 200).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    assert_eq!(bridge.terminate(), Some(0));
    let checkpoint: String = erp_db
        .query_one("SELECT possync.source_checkpoint('store42')::text", &[])
        .await
        .expect("checkpoint")
        .get(0);
    Streamed {
        pos,
        _erp: erp,
        pos_db,
        erp_db,
        source,
        erp_url,
        checkpoint,
    }
}

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
    let Streamed {
        pos,
        pos_db,
        erp_db,
        source,
        erp_url,
        checkpoint,
        _erp,
    } = streamed_then_stopped(&[], "L", 20).await;

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

    // check says so too
    let out = std::process::Command::new(bridge_path())
        .args(["check", "--erp", &erp_url, "--source"])
        .arg(format!("store42={}", pos.url("pos")))
        .output()
        .expect("possync-bridge check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "slot possync_store42 does not exist although the ERP's checkpoint is {checkpoint}"
        )),
        "{text}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_resynced_from_the_pos_tables_and_every_sale_posts_once() {
    let _serial = serial().await;
    let Streamed {
        pos,
        pos_db,
        erp_db,
        source,
        erp_url,
        checkpoint: _,
        _erp,
    } = streamed_then_stopped(&[], "R", 20).await;
    pos_db
        .batch_execute("SELECT pg_drop_replication_slot('possync_store42')")
        .await
        .expect("drop slot");
    run_sales(&pos_db, "R", 21, 15, 200).await;

    // refused; the tills keep selling while the operator gets to it
    let bridge = Bridge::start(&erp_url, &source, &[]);
    wait_refusing(&bridge, Duration::from_secs(30));
    run_sales(&pos_db, "R", 36, 5, 200).await;
    assert_eq!(count(&erp_db, ERP_SALES).await, 20);

    // resync the business date the sales have, with the refusing bridge still running
    let out = std::process::Command::new(bridge_path())
        .args(["resync", "--erp", &erp_url, "--source"])
        .arg(format!("store42={}", pos.url("pos")))
        .args(["--from", "2026-11-26", "--to", "2026-11-26"])
        .output()
        .expect("possync-bridge resync");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // 40 sales read: the 20 the ERP had come back duplicate, the 20 it lacked are applied
    assert!(
        said.contains("re-read 40 events") && said.contains("20 applied, 20 duplicate, 0 conflict"),
        "{said}"
    );

    // the bridge streams from the new slot at its next look, and what is sold now posts too
    bridge.wait_streaming("store42", Duration::from_secs(40));
    run_sales(&pos_db, "R", 41, 5, 200).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 45);
    assert_eq!(erp_totals(&erp_db, "store42").await, expected);
    assert_eq!(doubled(&erp_db).await, 0, "a sale was posted twice");
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.exception WHERE payload->'slot_loss'->>'what' = 'slot_loss_resynced'"
        )
        .await,
        1
    );
    // a second resync is refused: the loss is dealt with
    let again = std::process::Command::new(bridge_path())
        .args(["resync", "--erp", &erp_url, "--source"])
        .arg(format!("store42={}", pos.url("pos")))
        .args(["--from", "2026-11-26", "--to", "2026-11-26"])
        .output()
        .expect("possync-bridge resync");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not refused for a slot loss"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_is_refused_and_then_replaced_on_acceptance() {
    let _serial = serial().await;
    let Streamed {
        pos: _pos,
        pos_db,
        erp_db,
        source,
        erp_url,
        checkpoint,
        _erp,
    } = streamed_then_stopped(&["max_slot_wal_keep_size = 1MB"], "V", 10).await;

    // sales, then WAL past the slot's keep size and a checkpoint: the server invalidates the stopped slot
    run_sales(&pos_db, "V", 11, 5, 200).await;
    pos_db
        .batch_execute("CREATE TABLE public.filler (x text)")
        .await
        .expect("filler");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: String = pos_db
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'possync_store42'",
                &[],
            )
            .await
            .expect("slot")
            .get(0);
        if status == "lost" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated ({status})"
        );
        pos_db
            .batch_execute(
                "INSERT INTO public.filler SELECT repeat('x', 1000) FROM generate_series(1, 3000);
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .expect("WAL");
    }

    let bridge = Bridge::start(&erp_url, &source, &[]);
    wait_refusing(&bridge, Duration::from_secs(30));
    assert!(
        bridge.log().contains("has lost the WAL it needed"),
        "{}",
        bridge.log()
    );
    assert_eq!(count(&erp_db, ERP_SALES).await, 10);
    assert_eq!(bridge.terminate(), Some(0));

    let accept = format!("store42={checkpoint}");
    let bridge = Bridge::start(&erp_url, &source, &["--accept-slot-loss", &accept]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "V", 16, 3, 200).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&erp_db, ERP_SALES).await < 13 {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(
            &pos_db,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'possync_store42' AND wal_status <> 'lost'"
        )
        .await,
        1,
        "a new slot replaced the lost one"
    );
    assert_eq!(doubled(&erp_db).await, 0);
}
