//! D7: an owner that stops making progress (SIGSTOP) loses its source within the owner timeout; the standby takes
//! over, no sale is lost or doubled, and the old owner, woken up, posts nothing and stands by.

use std::process::Command;
use std::time::{Duration, Instant};

use possync_e2e::*;

const OWNER_TIMEOUT_S: u64 = 3;

fn signal(bridge: &Bridge, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &bridge.pid().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {}", bridge.pid());
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// The ERP server's clock as the bridge logs it (UTC, microseconds), to compare with log lines.
async fn erp_now(erp: &tokio_postgres::Client) -> String {
    erp.query_one(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_else(|e| panic!("ERP clock: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_loses_the_source_to_the_standby_and_stands_down_when_it_wakes() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    let erp_url = erp.url("erp");
    let sources = [("store42", pos.url("pos"))];
    let timeout = OWNER_TIMEOUT_S.to_string();
    let args = ["--owner-timeout-s", timeout.as_str()];
    let owner = Bridge::start(&erp_url, &sources, &args);
    owner.wait_streaming("store42", Duration::from_secs(30));
    let standby = Bridge::start(&erp_url, &sources, &args);
    wait_for(
        "the second bridge to stand by",
        Duration::from_secs(30),
        || {
            standby
                .http_get("/healthz")
                .is_some_and(|(code, body)| code == 200 && body.contains("store42 standby"))
        },
    );
    run_sales(&pos_db, "A", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    // an owner with nothing to apply for longer than the timeout keeps the source
    tokio::time::sleep(Duration::from_secs(OWNER_TIMEOUT_S * 2)).await;
    assert_eq!(
        owner.metric("possync_bridge_streaming", "store42"),
        Some(1.0)
    );
    assert_eq!(
        standby.metric("possync_bridge_streaming", "store42"),
        Some(0.0)
    );

    // the tills sell while the owner is frozen
    let db = pos.connect("pos").await;
    let tills = tokio::spawn(async move { run_sales(&db, "B", 1, 400, 50).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&owner, "-STOP");
    let frozen = Instant::now();
    let took = wait_for(
        "the standby to take the source over",
        Duration::from_secs(OWNER_TIMEOUT_S + 30),
        || standby.metric("possync_bridge_streaming", "store42") == Some(1.0),
    );
    let applied = wait_for(
        "the standby to apply a sale",
        Duration::from_secs(30),
        || {
            standby
                .metric("possync_bridge_transactions_applied_total", "store42")
                .is_some_and(|n| n > 0.0)
        },
    );
    eprintln!(
        "owner frozen: the standby streams after {took:?} and applies after {:?} (owner timeout {OWNER_TIMEOUT_S} s)",
        took + applied
    );
    // the bound the README states: the owner timeout plus a few seconds (generous here: two busy cores)
    assert!(
        took < Duration::from_secs(OWNER_TIMEOUT_S + 15),
        "takeover took {took:?}\n{}",
        standby.log()
    );

    // the old owner wakes up while the tills still sell: it posts nothing and stands by
    tokio::time::sleep(Duration::from_secs(2)).await;
    let woke_at = erp_now(&erp_db).await;
    signal(&owner, "-CONT");
    eprintln!("owner woken after {:?}", frozen.elapsed());
    wait_for(
        "the woken owner to stand by",
        Duration::from_secs(60),
        || {
            owner
                .http_get("/healthz")
                .is_some_and(|(_, body)| body.contains("store42 standby"))
        },
    );
    tills.await.expect("tills");
    run_sales(&pos_db, "C", 1, 20, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let expected = pos_totals(&pos_db).await;
    assert_eq!(expected.transactions, 440);
    assert_eq!(erp_totals(&erp_db, "store42").await, expected);
    assert_eq!(doubled(&erp_db).await, 0, "a sale was posted twice");
    assert_eq!(
        standby.metric("possync_bridge_streaming", "store42"),
        Some(1.0)
    );
    let log = owner.log();
    let posted_after_waking: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("applied batch") && l.get(..26).is_some_and(|t| t > woke_at.as_str())
        })
        .collect();
    assert!(
        posted_after_waking.is_empty(),
        "the woken owner applied batches after it lost the source:\n{}",
        posted_after_waking.join("\n")
    );
    assert!(log.contains("standing by"), "{log}");
    assert!(
        standby.log().contains("ended it"),
        "the standby did not end the frozen owner's walsender:\n{}",
        standby.log()
    );
    assert_eq!(owner.terminate(), Some(0));
    assert_eq!(standby.terminate(), Some(0));
}

/// With apply lanes the owner session (the one holding the source's lock) applies nothing itself: while the
/// lanes apply a group longer than the owner timeout, it must still speak, or the ERP ends it as idle and
/// releases the source while this bridge's lanes go on posting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lanes_apply_longer_than_the_owner_timeout_keeps_its_source() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;
    // one sale takes the ERP twice the owner timeout to post
    erp_db
        .batch_execute(&format!(
            "CREATE FUNCTION public.slow_marked_event() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.event_id = 'SLOW-000002' THEN PERFORM pg_sleep({}); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER slow_marked_event BEFORE INSERT ON possync.event
                 FOR EACH ROW EXECUTE FUNCTION public.slow_marked_event();",
            OWNER_TIMEOUT_S * 2
        ))
        .await
        .expect("slow trigger");
    let erp_url = erp.url("erp");
    let sources = [("store42", pos.url("pos"))];
    let timeout = OWNER_TIMEOUT_S.to_string();
    let owner = Bridge::start(
        &erp_url,
        &sources,
        &["--owner-timeout-s", timeout.as_str(), "--apply-lanes", "2"],
    );
    owner.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "SLOW", 1, 3, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    run_sales(&pos_db, "SLOW", 4, 2, 50).await;
    wait_caught_up(&erp_url, &pos_db, "store42", Duration::from_secs(60)).await;
    let log = owner.log();
    assert_eq!(
        owner.metric("possync_bridge_retries_total", "store42"),
        Some(0.0),
        "the owner session was ended while the lanes applied\n{log}"
    );
    assert!(!log.contains("ownership of the source"), "{log}");
    assert_eq!(
        count(
            &erp_db,
            "SELECT count(*) FROM possync.event WHERE event_id LIKE 'SLOW-%'"
        )
        .await,
        5
    );
    assert_eq!(doubled(&erp_db).await, 0);
}
