//! D6: the lag the bridge reports is read on the POS. It is 0 on an idle POS whose WAL moves for other reasons,
//! grows while the ERP is down (also in a bridge restarted during the outage, before its first apply), and falls
//! back to 0 once the backlog is applied.

use std::time::{Duration, Instant};

use possync_e2e::*;

const LAG_BYTES: &str = "possync_bridge_lag_bytes";
const LAG_SECONDS: &str = "possync_bridge_lag_seconds";

fn lag(bridge: &Bridge, source: &str) -> (f64, f64) {
    (
        bridge.metric(LAG_BYTES, source).unwrap_or(-1.0),
        bridge.metric(LAG_SECONDS, source).unwrap_or(-1.0),
    )
}

/// Polls the bridge until `ok(lag_bytes, lag_seconds)`; returns that pair. Fails after `within`.
fn wait_lag(
    bridge: &Bridge,
    source: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(f64, f64) -> bool,
) -> (f64, f64) {
    let deadline = Instant::now() + within;
    loop {
        let (bytes, secs) = lag(bridge, source);
        if ok(bytes, secs) {
            return (bytes, secs);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: lag_bytes {bytes}, lag_seconds {secs}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// WAL bytes the POS holds past the slot's confirmed position, read on the POS itself.
async fn slot_backlog(pos: &tokio_postgres::Client, slot: &str) -> f64 {
    pos.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 \
         FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_else(|e| panic!("slot backlog: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_read_on_the_pos_zero_when_idle_and_growing_while_the_erp_is_down() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    // WAL the bridge has nothing to do with: another database on the POS server
    let other = pos.connect("postgres").await;
    other
        .batch_execute("CREATE TABLE noise (n int)")
        .await
        .expect("noise table");
    let erp_url = erp.url("erp");
    let bridge = Bridge::start(&erp_url, &[("lagged", pos.url("pos"))], &[]);
    bridge.wait_streaming("lagged", Duration::from_secs(30));
    run_sales(&pos_db, "A", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "lagged", Duration::from_secs(60)).await;

    // an idle store whose server writes WAL for other reasons, and checkpoints: the lag stays under the
    // dashboard's healthy threshold throughout and comes back to 0 bytes
    let started = Instant::now();
    let mut worst = (0.0f64, 0.0f64);
    let mut zero_bytes_seen = 0;
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(8) {
        other
            .batch_execute("INSERT INTO noise VALUES (1)")
            .await
            .expect("noise");
        round += 1;
        if round % 10 == 0 {
            other.batch_execute("CHECKPOINT").await.expect("checkpoint");
        }
        for _ in 0..3 {
            let (b, s) = lag(&bridge, "lagged");
            assert!(b >= 0.0 && s >= 0.0, "no lag figures\n{}", bridge.log());
            worst = (worst.0.max(b), worst.1.max(s));
            if b == 0.0 {
                zero_bytes_seen += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "idle POS with background WAL: worst {} B, {} s",
        worst.0, worst.1
    );
    assert!(
        worst.1 < 1.0,
        "an idle, caught-up POS showed a lag of {} s\n{}",
        worst.1,
        bridge.log()
    );
    assert!(zero_bytes_seen > 0, "the byte lag never came back to 0");
    let (code, body) = bridge.http_get("/api/dashboard.json").expect("dashboard");
    assert_eq!(code, 200);
    assert!(body.contains("\"health\":\"healthy\""), "{body}");

    // the ERP goes away: the lag grows with what the POS holds and with time
    erp.stop();
    run_sales(&pos_db, "B", 1, 40, 20).await;
    let held = slot_backlog(&pos_db, "possync_lagged").await;
    assert!(held > 0.0, "the POS holds no WAL for the slot");
    eprintln!("the slot holds {held} B during the outage");
    let (b1, s1) = wait_lag(
        &bridge,
        "lagged",
        "lag during the outage",
        Duration::from_secs(60),
        |b, s| b >= held && s >= 1.0,
    );
    run_sales(&pos_db, "C", 1, 40, 20).await;
    let held = slot_backlog(&pos_db, "possync_lagged").await;
    let (b2, s2) = wait_lag(
        &bridge,
        "lagged",
        "lag still growing during the outage",
        Duration::from_secs(60),
        |b, s| b >= held && b > b1 && s > s1 + 1.0,
    );
    eprintln!("during the outage: {b1} B, {s1} s, then {b2} B, {s2} s");

    // a bridge restarted during the outage has applied nothing yet: its lag is not 0, and grows
    assert_eq!(bridge.terminate(), Some(0));
    let bridge = Bridge::start(&erp_url, &[("lagged", pos.url("pos"))], &[]);
    let (b3, s3) = wait_lag(
        &bridge,
        "lagged",
        "lag after a restart, before the first apply",
        Duration::from_secs(60),
        |b, s| b >= held && s > 0.0,
    );
    let (b4, s4) = wait_lag(
        &bridge,
        "lagged",
        "lag growing after a restart, before the first apply",
        Duration::from_secs(60),
        |b, s| b >= b3 && s >= s3 + 1.0,
    );
    eprintln!("restarted during the outage: {b3} B, {s3} s, then {b4} B, {s4} s");
    assert_eq!(
        bridge.metric("possync_bridge_transactions_applied_total", "lagged"),
        Some(0.0),
        "the restarted bridge applied something while the ERP was down"
    );

    // the ERP is back: the backlog is applied and the lag falls back to 0
    erp.restart();
    wait_caught_up(&erp_url, &pos_db, "lagged", Duration::from_secs(120)).await;
    let (b5, s5) = wait_lag(
        &bridge,
        "lagged",
        "lag after the outage",
        Duration::from_secs(60),
        |b, s| b == 0.0 && s < 1.0,
    );
    eprintln!("after the outage: {b5} B, {s5} s");
    let erp_db = erp.connect("erp").await;
    assert_eq!(
        erp_totals(&erp_db, "lagged").await,
        pos_totals(&pos_db).await
    );
    assert_eq!(doubled(&erp_db).await, 0);
    assert_eq!(bridge.terminate(), Some(0));
}
