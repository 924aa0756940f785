use std::time::{Duration, Instant};

use possync_e2e::*;

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_stands_by_and_takes_over_and_metrics_are_served_over_http() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let pos2 = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let erp_url = erp.url("erp");
    // the POS servers ask for passwords: md5 on one, SCRAM-SHA-256 on the other
    pos.require_password("md5", "north-pw-4f1c").await;
    pos2.require_password("scram-sha-256", "south-pw-9e2d")
        .await;
    let sources = [
        ("north", pos.url_with_password("pos", "north-pw-4f1c")),
        ("south", pos2.url_with_password("pos", "south-pw-9e2d")),
    ];
    let first = Bridge::start(&erp_url, &sources, &[]);
    wait_for(
        "the first bridge to stream",
        Duration::from_secs(30),
        || {
            first.metric("possync_bridge_streaming", "north") == Some(1.0)
                && first.metric("possync_bridge_streaming", "south") == Some(1.0)
        },
    );
    let second = Bridge::start(&erp_url, &sources, &[]);
    wait_for(
        "the second bridge to stand by",
        Duration::from_secs(30),
        || {
            second.http_get("/healthz").is_some_and(|(code, body)| {
                code == 200 && body.contains("north standby") && body.contains("south standby")
            })
        },
    );

    let north = pos.connect("pos").await;
    let south = pos2.connect("pos").await;
    run_sales(&north, "N", 1, 30, 100).await;
    run_sales(&south, "S", 1, 20, 100).await;
    wait_caught_up(&erp_url, &north, "north", Duration::from_secs(60)).await;
    wait_caught_up(&erp_url, &south, "south", Duration::from_secs(60)).await;

    // metrics over real HTTP agree with what the POS committed
    let (code, body) = first.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE possync_bridge_apply_seconds histogram"));
    assert_eq!(
        first.metric("possync_bridge_transactions_applied_total", "north"),
        Some(30.0)
    );
    assert_eq!(
        first.metric("possync_bridge_events_applied_total", "south"),
        Some(20.0)
    );
    assert_eq!(
        second.metric("possync_bridge_transactions_applied_total", "north"),
        Some(0.0)
    );
    let (code, body) = first.http_get("/healthz").expect("healthz");
    assert_eq!((code, body.lines().next()), (200, Some("ok")));
    assert_eq!(first.http_get("/nope").map(|(c, _)| c), Some(404));

    let first_log = first.log();
    first.kill9();
    run_sales(&north, "N", 31, 30, 100).await;
    wait_caught_up(&erp_url, &north, "north", Duration::from_secs(60)).await;
    wait_for(
        "the second bridge to stream",
        Duration::from_secs(30),
        || second.metric("possync_bridge_streaming", "north") == Some(1.0),
    );
    assert_eq!(
        second.metric("possync_bridge_transactions_applied_total", "north"),
        Some(30.0)
    );

    let erp_db = erp.connect("erp").await;
    assert_eq!(doubled(&erp_db).await, 0);

    // status shows each source's checkpoint as the ERP holds it, and its lag against the POS
    let out = std::process::Command::new(bridge_path())
        .args([
            "status",
            "--erp",
            &erp_url,
            "--source",
            &format!("north={}", sources[0].1),
        ])
        .output()
        .expect("run possync-bridge status");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let checkpoint: String = erp_db
        .query_one("SELECT possync.source_checkpoint('north')::text", &[])
        .await
        .expect("checkpoint")
        .get(0);
    let north_line = text
        .lines()
        .find(|l| l.starts_with("north "))
        .unwrap_or_else(|| panic!("no north line in\n{text}"));
    assert!(north_line.contains(&checkpoint), "{north_line}");
    assert!(text.lines().any(|l| l.starts_with("south ")), "{text}");
    for log in [first_log, second.log()] {
        assert!(log.contains("streaming"), "{log}");
        assert!(
            !log.contains("north-pw-4f1c") && !log.contains("south-pw-9e2d"),
            "a password appears in the bridge log"
        );
    }
    let n = pos_totals(&north).await;
    let s = pos_totals(&south).await;
    assert_eq!(
        erp_totals(&erp_db, "north").await.transactions,
        n.transactions
    );
    assert_eq!(
        erp_totals(&erp_db, "south").await.transactions,
        s.transactions
    );
    assert_eq!(n.transactions + s.transactions, 80);
}
