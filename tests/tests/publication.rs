//! D5: a publication changed under a streaming bridge (a mapped table dropped from it, `publish` without
//! `insert`, DROP PUBLICATION) never makes the bridge post half transactions or lose sales silently: it stops the
//! source with an error that says what to do, and goes on once the publication is whole and the transactions
//! committed meanwhile are re-posted (resync) or their loss accepted.

use std::time::{Duration, Instant};

use possync_e2e::*;
use tokio_postgres::Client;

/// Sale events posted without a tender, and tender mismatches raised: a half transaction shows as either.
const HALF_SALES: &str =
    "SELECT count(*) FROM possync.event WHERE kind = 'sale' AND status = 'applied' \
     AND jsonb_array_length(coalesce(payload->'tenders', '[]'::jsonb)) = 0";
const MISMATCHES: &str = "SELECT count(*) FROM possync.exception WHERE kind = 'tender_mismatch'";
const ERP_SALES: &str = "SELECT count(*) FROM possync.event WHERE kind = 'sale'";
const POS_SALES: &str = "SELECT count(*) FROM pos.sale";

fn wait_metric(bridge: &Bridge, name: &str, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while bridge.metric(name, "store42") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{what}: {name} is not 1 after {within:?}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sales committed by their own task and connection, so that the publication can change while they run.
async fn selling(
    pos: &Cluster,
    prefix: &'static str,
    count: i64,
    per_second: u32,
) -> tokio::task::JoinHandle<()> {
    let db = pos.connect("pos").await;
    tokio::spawn(async move {
        run_sales(&db, prefix, 1, count, per_second).await;
    })
}

fn resync(erp_url: &str, pos: &Cluster) -> String {
    let out = std::process::Command::new(bridge_path())
        .args(["resync", "--erp", erp_url, "--source"])
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
    said
}

/// The ERP's checkpoint without the loss marks: what `--accept-slot-loss` names.
async fn last_commit(erp: &Client) -> String {
    erp.query_one(
        "SELECT (c - ((c - '0/0'::pg_lsn) % 8))::text FROM possync.source_checkpoint('store42') c",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_else(|e| panic!("checkpoint: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_from_the_publication_stops_the_source_before_a_half_sale_posts() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let erp_url = erp.url("erp");
    let source = [("store42", pos.url("pos"))];
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "A", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;

    // tenders leave the publication for 3 s while the tills sell 100 sales a second
    let tills = selling(&pos, "B", 500, 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let broke = Instant::now();
    pos_db
        .batch_execute("ALTER PUBLICATION possync DROP TABLE pos.tender")
        .await
        .expect("drop tender from the publication");
    wait_metric(
        &bridge,
        "possync_bridge_publication_broken",
        "the bridge did not notice tenders leaving the publication",
        Duration::from_secs(30),
    );
    eprintln!("noticed within {:?}", broke.elapsed());
    let (code, body) = bridge.http_get("/healthz").expect("healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store42 publication_broken"), "{body}");
    let log = bridge.log();
    assert!(
        log.contains("mapped table pos.tender is not in publication possync")
            && log.contains("ALTER PUBLICATION possync ADD TABLE pos.tender;")
            && log.contains("possync-bridge resync --from DATE --to DATE"),
        "{log}"
    );
    // check says it too
    let out = std::process::Command::new(bridge_path())
        .args(["check", "--erp", &erp_url, "--source"])
        .arg(format!("store42={}", pos.url("pos")))
        .output()
        .expect("possync-bridge check");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("ERROR store42: mapped table pos.tender is not in publication possync"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(broke.elapsed())).await;
    pos_db
        .batch_execute("ALTER PUBLICATION possync ADD TABLE pos.tender")
        .await
        .expect("tenders back in the publication");
    tills.await.expect("tills");

    // no sale was posted without its tenders
    let half = count(&erp_db, HALF_SALES).await;
    let mismatches = count(&erp_db, MISMATCHES).await;
    let posted = count(&erp_db, ERP_SALES).await;
    let sold = count(&pos_db, POS_SALES).await;
    eprintln!(
        "posted {posted} of {sold} sales, {half} without tenders, {mismatches} tender mismatches"
    );
    assert_eq!((half, mismatches), (0, 0), "half sales were posted");
    assert!(posted < sold);
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.exception WHERE payload->'slot_loss'->>'what' = 'publication_changed'"
        )
        .await,
        1,
        "the refusal is not recorded in the ERP"
    );

    // whole again, the source stays refused (a restart too) until the sales committed meanwhile are re-posted
    wait_metric(
        &bridge,
        "possync_bridge_slot_lost",
        "the source is not refused after the publication was fixed",
        Duration::from_secs(40),
    );
    assert_eq!(bridge.terminate(), Some(0));
    let bridge = Bridge::start(&erp_url, &source, &[]);
    wait_metric(
        &bridge,
        "possync_bridge_slot_lost",
        "a restarted bridge does not refuse the source",
        Duration::from_secs(30),
    );
    assert_eq!(count(&erp_db, ERP_SALES).await, posted);
    let fixed = Instant::now();
    let said = resync(&erp_url, &pos);
    assert!(said.contains("0 conflict"), "{said}");
    bridge.wait_streaming("store42", Duration::from_secs(40));
    eprintln!("streaming {:?} after the resync", fixed.elapsed());
    run_sales(&pos_db, "C", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 540);
    assert_eq!(erp_totals(&erp_db, "store42").await, expected);
    assert_eq!(doubled(&erp_db).await, 0, "a sale was posted twice");
    assert_eq!(count(&erp_db, HALF_SALES).await, 0);
    assert_eq!(count(&erp_db, MISMATCHES).await, 0);
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_insert_and_a_dropped_publication_stop_the_source_until_dealt_with() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let erp_url = erp.url("erp");
    let source = [("store42", pos.url("pos"))];
    let bridge = Bridge::start(&erp_url, &source, &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "A", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;

    // inserts are not published for a second while the tills sell
    let tills = selling(&pos, "B", 200, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pos_db
        .batch_execute("ALTER PUBLICATION possync SET (publish = 'update, delete')")
        .await
        .expect("publish without insert");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pos_db
        .batch_execute(
            "ALTER PUBLICATION possync SET (publish = 'insert, update, delete, truncate')",
        )
        .await
        .expect("publish inserts again");
    tills.await.expect("tills");
    // seen as broken, or as changed; then refused until dealt with
    wait_metric(
        &bridge,
        "possync_bridge_slot_lost",
        "the source is not refused after inserts went unpublished",
        Duration::from_secs(40),
    );
    let log = bridge.log();
    assert!(
        log.contains("publication possync does not publish inserts")
            || log.contains("publication possync was altered"),
        "{log}"
    );
    let posted = count(&erp_db, ERP_SALES).await;
    eprintln!(
        "publish without insert: posted {posted} of {} sales, the rest refused and recorded",
        count(&pos_db, POS_SALES).await
    );

    // the operator accepts the loss: the store streams on from now, the window's sales are named in the ERP
    let accept = format!("store42={}", last_commit(&erp_db).await);
    assert_eq!(bridge.terminate(), Some(0));
    let bridge = Bridge::start(&erp_url, &source, &["--accept-slot-loss", &accept]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "C", 1, 20, 50).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&erp_db, ERP_SALES).await < posted + 20 {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(&erp_db, ERP_SALES).await, posted + 20);

    // DROP PUBLICATION while the tills sell: PostgreSQL 15 cannot decode those sales any more
    let tills = selling(&pos, "D", 100, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pos_db
        .batch_execute("DROP PUBLICATION possync")
        .await
        .expect("drop publication");
    tills.await.expect("tills");
    wait_metric(
        &bridge,
        "possync_bridge_publication_broken",
        "the bridge did not notice the publication was dropped",
        Duration::from_secs(40),
    );
    let log = bridge.log();
    let create = log
        .split("(on the POS: ")
        .filter_map(|rest| rest.split(';').next())
        .find(|s| s.starts_with("CREATE PUBLICATION possync FOR TABLE "))
        .unwrap_or_else(|| panic!("the error does not say how to create the publication:\n{log}"))
        .to_string();
    // what the bridge said to run, as said
    pos_db
        .batch_execute(&create)
        .await
        .expect("create publication");
    wait_metric(
        &bridge,
        "possync_bridge_slot_lost",
        "the source is not refused after the publication was created again",
        Duration::from_secs(40),
    );
    run_sales(&pos_db, "E", 1, 10, 50).await;

    // a resync re-posts every sale of the day the ERP lacks, those of the accepted window too
    let said = resync(&erp_url, &pos);
    assert!(said.contains("0 conflict"), "{said}");
    bridge.wait_streaming("store42", Duration::from_secs(40));
    run_sales(&pos_db, "F", 1, 10, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 360);
    assert_eq!(erp_totals(&erp_db, "store42").await, expected);
    assert_eq!(doubled(&erp_db).await, 0, "a sale was posted twice");
    assert_eq!(count(&erp_db, HALF_SALES).await, 0);
    assert_eq!(bridge.terminate(), Some(0));
}
