use std::time::Duration;

use possync_e2e::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pos_sale_is_posted_exactly_once_across_repeated_sigkills() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let source = [("store42", pos.url("pos"))];
    let erp_url = erp.url("erp");

    // the slot must exist before the POS commits anything the ERP should see
    let mut bridge = Bridge::start(&erp_url, &source, &["--batch-max-txns", "20"]);
    bridge.wait_streaming("store42", Duration::from_secs(30));

    // a steady workload in the background while the bridge is killed and restarted
    let workload_client = pos.connect("pos").await;
    let workload = tokio::spawn(async move { run_sales(&workload_client, "K", 1, 600, 100).await });
    let mut kills = 0;
    while !workload.is_finished() || kills < 5 {
        let wait = rand::thread_rng().gen_range(300..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        bridge.kill9();
        kills += 1;
        bridge = Bridge::start(&erp_url, &source, &["--batch-max-txns", "20"]);
    }
    assert!(kills >= 5);
    workload.await.expect("workload task");

    // a POS update of a mapped table is kept as a rejected event, not lost
    pos_db
        .batch_execute("UPDATE pos.tender SET amount = amount WHERE txn_id = 'K-000001'")
        .await
        .expect("update");
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(120)).await;
    let erp_db = erp.connect("erp").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rejected: i64 = erp_db
            .query_one(
                "SELECT count(*) FROM possync.exception WHERE kind = 'malformed' AND payload->>'op' = 'update'",
                &[],
            )
            .await
            .expect("exceptions")
            .get(0);
        if rejected == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unmapped update was not kept as a rejected event ({rejected} found)\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 600);
    let posted = erp_totals(&erp_db, "store42").await;
    assert_eq!(posted, expected, "ERP postings differ from the POS tables");
    assert_eq!(doubled(&erp_db).await, 0, "an event was posted twice");
    let journals: i64 = erp_db
        .query_one(
            "SELECT count(DISTINCT j.event_id) FROM possync.journal j JOIN possync.event e USING (event_id) WHERE e.kind = 'sale'",
            &[],
        )
        .await
        .expect("journals")
        .get(0);
    assert_eq!(journals, 600, "one journal per POS sale");
    // a restart after everything was applied posts nothing again
    let before: i64 = erp_db
        .query_one("SELECT count(*) FROM possync.journal", &[])
        .await
        .expect("journals")
        .get(0);
    bridge.kill9();
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: i64 = erp_db
        .query_one("SELECT count(*) FROM possync.journal", &[])
        .await
        .expect("journals")
        .get(0);
    assert_eq!(after, before, "a restart re-posted transactions");
    assert_eq!(
        bridge.terminate(),
        Some(0),
        "SIGTERM stops the bridge cleanly"
    );
}
