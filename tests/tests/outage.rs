use std::time::{Duration, Instant};

use possync_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erp_outage_never_blocks_the_till_and_loses_nothing() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_url = erp.url("erp");
    let bridge = Bridge::start(&erp_url, &[("east", pos.url("pos"))], &[]);
    bridge.wait_streaming("east", Duration::from_secs(30));

    run_sales(&pos_db, "A", 1, 50, 50).await;
    wait_caught_up(&erp_url, &pos_db, "east", Duration::from_secs(60)).await;

    erp.stop();
    let outage = Instant::now();
    // 12 s of sales at 25/s while the ERP is down
    let slowest = run_sales(&pos_db, "B", 1, 300, 25).await;
    let down_for = outage.elapsed();
    assert!(
        down_for >= Duration::from_secs(10),
        "outage lasted only {down_for:?}"
    );
    eprintln!("slowest POS commit during a {down_for:?} ERP outage: {slowest:?}");
    // a commit that waited on the ERP would have waited for the whole outage
    assert!(
        slowest < down_for / 4,
        "a POS commit took {slowest:?} while the ERP was down"
    );
    let retries_during = bridge
        .metric("possync_bridge_retries_total", "east")
        .unwrap_or(0.0);
    assert!(
        retries_during >= 1.0,
        "the bridge did not notice the outage"
    );
    let (code, _) = bridge
        .http_get("/healthz")
        .expect("healthz answers during the outage");
    assert_eq!(code, 503, "unhealthy while the ERP is down");
    erp.restart();

    wait_caught_up(&erp_url, &pos_db, "east", Duration::from_secs(120)).await;
    let erp_db = erp.connect("erp").await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 350);
    assert_eq!(erp_totals(&erp_db, "east").await, expected);
    assert_eq!(doubled(&erp_db).await, 0);
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pos_restart_and_an_apply_blocked_past_wal_sender_timeout_lose_nothing() {
    let _serial = serial().await;
    let pos = pos_cluster(&["wal_sender_timeout = '2s'"]).await;
    let erp = erp_cluster().await;
    let erp_url = erp.url("erp");
    let bridge = Bridge::start(&erp_url, &[("west", pos.url("pos"))], &[]);
    bridge.wait_streaming("west", Duration::from_secs(30));
    {
        let pos_db = pos.connect("pos").await;
        run_sales(&pos_db, "A", 1, 40, 50).await;
        wait_caught_up(&erp_url, &pos_db, "west", Duration::from_secs(60)).await;
    }

    // block apply_batch for 3x the POS's wal_sender_timeout: keepalives keep the stream alive
    let blocker = erp.connect("erp").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE possync.source IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let retries_before = bridge
        .metric("possync_bridge_retries_total", "west")
        .unwrap_or(-1.0);
    {
        let pos_db = pos.connect("pos").await;
        run_sales(&pos_db, "B", 1, 20, 20).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    blocker.batch_execute("COMMIT").await.expect("unlock");
    let pos_db = pos.connect("pos").await;
    wait_caught_up(&erp_url, &pos_db, "west", Duration::from_secs(60)).await;
    let retries_after = bridge
        .metric("possync_bridge_retries_total", "west")
        .unwrap_or(-1.0);
    assert_eq!(
        retries_after,
        retries_before,
        "the replication connection should survive a slow apply (keepalives)\n{}",
        bridge.log()
    );
    drop(pos_db);

    // the POS restarts: the bridge reconnects and resumes
    pos.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pos.restart();
    let pos_db = pos.connect("pos").await;
    run_sales(&pos_db, "C", 1, 40, 50).await;
    wait_caught_up(&erp_url, &pos_db, "west", Duration::from_secs(90)).await;
    let erp_db = erp.connect("erp").await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 100);
    assert_eq!(erp_totals(&erp_db, "west").await, expected);
    assert_eq!(doubled(&erp_db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erp_crashes_mid_stream_leave_no_half_posted_and_no_double_posted_sale() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let erp_url = erp.url("erp");
    let bridge = Bridge::start(&erp_url, &[("north", pos.url("pos"))], &[]);
    bridge.wait_streaming("north", Duration::from_secs(30));

    // the tills keep selling at 40/s while the ERP crashes three times, each in the middle of the stream
    let till = pos.connect("pos").await;
    let sales = tokio::spawn(async move {
        run_sales(&till, "K", 1, 400, 40).await;
        till
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        erp.crash();
        tokio::time::sleep(Duration::from_millis(500)).await;
        erp.restart();
    }
    let pos_db = sales.await.expect("sales task");
    wait_caught_up(&erp_url, &pos_db, "north", Duration::from_secs(120)).await;

    let erp_db = erp.connect("erp").await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 400);
    // every sale posted once with its whole journal: the totals agree and no event has two journals
    assert_eq!(erp_totals(&erp_db, "north").await, expected);
    assert_eq!(doubled(&erp_db).await, 0);
    let unbalanced: i64 = erp_db
        .query_one(
            "SELECT count(*) FROM (SELECT journal_id FROM possync.journal_line GROUP BY journal_id
                                   HAVING sum(debit) <> sum(credit)) j",
            &[],
        )
        .await
        .expect("balance check")
        .get(0);
    assert_eq!(unbalanced, 0, "a journal was left half posted");
    let without_journal: i64 = erp_db
        .query_one(
            "SELECT count(*) FROM possync.event e WHERE e.status = 'applied' AND e.kind = 'sale'
                AND NOT EXISTS (SELECT 1 FROM possync.journal j WHERE j.event_id = e.event_id)",
            &[],
        )
        .await
        .expect("journal check")
        .get(0);
    assert_eq!(without_journal, 0, "an applied sale has no journal");
    let retries = bridge
        .metric("possync_bridge_retries_total", "north")
        .unwrap_or(0.0);
    assert!(
        retries >= 3.0,
        "the bridge saw {retries} retries for 3 crashes\n{}",
        bridge.log()
    );
    assert_eq!(bridge.terminate(), Some(0));
}
