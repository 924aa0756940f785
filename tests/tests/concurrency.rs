//! The extension under real concurrent connections: no lost update, no deadlock, no oversell.

use rust_decimal::Decimal;
use serde_json::json;

use possync_e2e::{erp_cluster, serial, SKUS, STORE};

/// Posts a receipt of these lines at the store, so there is stock to sell or reserve.
async fn receive(client: &tokio_postgres::Client, lines: serde_json::Value) {
    let receipt = json!({"event_id": "rcpt", "kind": "receipt", "location": STORE,
        "business_date": "2026-11-26", "lines": lines});
    client
        .execute(
            "SELECT possync.apply_event($1::text::jsonb)",
            &[&receipt.to_string()],
        )
        .await
        .expect("receipt");
}

async fn numeric(client: &tokio_postgres::Client, sql: &str) -> Decimal {
    let row = client
        .query_one(&format!("SELECT coalesce(({sql}), 0)::text"), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, String>(0)
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_postings_to_the_same_balances_lose_nothing_and_never_deadlock() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    receive(&setup, json!([{"sku": SKUS[0], "qty": 1000, "unit_cost": "3.00"}, {"sku": SKUS[1], "qty": 1000, "unit_cost": "7.00"}])).await;

    // each connection sells both skus, in opposite line order, 10 sales per transaction
    let per_conn = 30;
    let mut tasks = Vec::new();
    for conn in 0..2 {
        let client = erp.connect("erp").await;
        tasks.push(tokio::spawn(async move {
            for batch in 0..per_conn {
                let events: Vec<_> = (0..10)
                    .map(|i| {
                        let (first, second) = if conn == 0 { (SKUS[0], SKUS[1]) } else { (SKUS[1], SKUS[0]) };
                        json!({"event_id": format!("c{conn}-{batch}-{i}"), "kind": "sale", "location": STORE,
                            "business_date": "2026-11-26",
                            "lines": [{"sku": first, "qty": 1, "unit_price": "10.00"},
                                      {"sku": second, "qty": 2, "unit_price": "10.00"}],
                            "tenders": [{"type": "card", "amount": "30.00"}]})
                    })
                    .collect();
                let body = serde_json::Value::Array(events).to_string();
                client
                    .execute("SELECT possync.apply_events($1::text::jsonb)", &[&body])
                    .await
                    .unwrap_or_else(|e| panic!("connection {conn}, batch {batch}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("posting task");
    }
    let sales = Decimal::from(2 * per_conn * 10);
    // each sale takes 1 of one sku and 2 of the other; half the sales each way round
    let sold_each = sales / Decimal::TWO * Decimal::from(3);
    for sku in [SKUS[0], SKUS[1]] {
        let on_hand = numeric(
            &setup,
            &format!("SELECT on_hand FROM possync.stock_balance WHERE sku = '{sku}' AND location_id = '{STORE}'"),
        )
        .await;
        assert_eq!(
            on_hand,
            Decimal::from(1000) - sold_each,
            "{sku}: no lost update"
        );
    }
    let revenue = numeric(
        &setup,
        "SELECT sum(credit) - sum(debit) FROM possync.journal_line WHERE account_code = '4000'",
    )
    .await;
    assert_eq!(revenue, sales * Decimal::from(30));
    let stock_value = numeric(&setup, "SELECT sum(value) FROM possync.stock_balance").await;
    let gl_inventory = numeric(
        &setup,
        "SELECT sum(debit) - sum(credit) FROM possync.journal_line WHERE account_code = '1200'",
    )
    .await;
    assert_eq!(stock_value, gl_inventory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn racing_reservations_never_oversell() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    receive(
        &setup,
        json!([{"sku": SKUS[2], "qty": 100, "unit_cost": "1.00"}]),
    )
    .await;
    assert_eq!(
        numeric(
            &setup,
            &format!("SELECT possync.atp('{}', '{STORE}')", SKUS[2])
        )
        .await,
        Decimal::from(100)
    );

    let mut tasks = Vec::new();
    for conn in 0..8 {
        let client = erp.connect("erp").await;
        tasks.push(tokio::spawn(async move {
            let (mut reserved, mut insufficient) = (0u32, 0u32);
            for attempt in 0..50 {
                let row = client
                    .query_one(
                        "SELECT possync.reserve($1, $2, $3, 1)->>'status'",
                        &[&format!("web-{conn}-{attempt}"), &SKUS[2], &STORE],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("connection {conn}: {e}"));
                match row.get::<_, String>(0).as_str() {
                    "reserved" => reserved += 1,
                    "insufficient" => insufficient += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (reserved, insufficient)
        }));
    }
    let (mut reserved, mut insufficient) = (0, 0);
    for t in tasks {
        let (r, i) = t.await.expect("reserving task");
        reserved += r;
        insufficient += i;
    }
    assert_eq!((reserved, insufficient), (100, 300));
    assert_eq!(
        numeric(
            &setup,
            &format!("SELECT possync.atp('{}', '{STORE}')", SKUS[2])
        )
        .await,
        Decimal::ZERO
    );
    let held = numeric(
        &setup,
        "SELECT sum(qty) FROM possync.reservation WHERE status = 'active'",
    )
    .await;
    assert_eq!(held, Decimal::from(100));
}

fn sale(id: &str, sku: &str) -> serde_json::Value {
    json!({"event_id": id, "kind": "sale", "location": STORE, "business_date": "2026-11-26",
           "lines": [{"sku": sku, "qty": 1, "unit_price": "10.00"}],
           "tenders": [{"type": "card", "amount": "10.00"}]})
}

async fn apply_status(
    client: &tokio_postgres::Client,
    ev: &serde_json::Value,
) -> Result<String, String> {
    client
        .query_one(
            "SELECT possync.apply_event($1::text::jsonb) ->> 'status'",
            &[&ev.to_string()],
        )
        .await
        .map(|r| r.get::<_, String>(0))
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_sent_by_two_sessions_at_once_posts_once_and_is_a_duplicate_for_the_other() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let first = erp.connect("erp").await;
    let second = erp.connect("erp").await;
    let ev = sale("twice", SKUS[0]);
    first.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(apply_status(&first, &ev).await.as_deref(), Ok("applied"));
    // the second session waits for the first to commit, then finds the event in the inbox
    let ev2 = ev.clone();
    let waiting = tokio::spawn(async move { apply_status(&second, &ev2).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second session waits for the first"
    );
    first.batch_execute("COMMIT").await.expect("commit");
    let answer = waiting.await.expect("second session");
    assert_eq!(answer.as_deref(), Ok("duplicate"));
    let moves = numeric(
        &first,
        "SELECT count(*) FROM possync.stock_move WHERE event_id = 'twice'",
    )
    .await;
    assert_eq!(moves, Decimal::ONE, "posted once");
}

#[tokio::test]
async fn posting_refuses_repeatable_read_clearly() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let c = erp.connect("erp").await;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin");
    let err = apply_status(&c, &sale("rr", SKUS[0]))
        .await
        .expect_err("refused");
    assert!(
        err.contains("READ COMMITTED") && err.contains("25000"),
        "{err}"
    );
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        apply_status(&c, &sale("rr", SKUS[0])).await.as_deref(),
        Ok("applied")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_duplicates_and_counts_with_repeated_skus_under_load_never_deadlock_or_raise() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    receive(
        &setup,
        json!([{"sku": SKUS[0], "qty": 10000, "unit_cost": "3.00"},
                           {"sku": SKUS[1], "qty": 10000, "unit_cost": "4.00"}]),
    )
    .await;
    let mut tasks = Vec::new();
    for conn in 0..4u32 {
        let client = erp.connect("erp").await;
        tasks.push(tokio::spawn(async move {
            for n in 0..60u32 {
                let mut events = Vec::new();
                // hot skus in both orders, a held sale of an unknown item, a duplicate shared by every session,
                // a count naming one sku twice
                events.push(json!({"event_id": format!("h{conn}-{n}"), "kind": "sale", "location": STORE,
                    "business_date": "2026-11-26",
                    "lines": [{"sku": SKUS[(conn % 2) as usize], "qty": 1, "unit_price": "10.00"},
                              {"sku": SKUS[((conn + 1) % 2) as usize], "qty": 1, "unit_price": "10.00"}],
                    "tenders": [{"type": "card", "amount": "20.00"}]}));
                events.push(sale(&format!("u{conn}-{n}"), &format!("NEW{}", n % 5)));
                events.push(sale(&format!("shared-{n}"), SKUS[2]));
                if n % 10 == 0 {
                    events.push(json!({"event_id": format!("cnt{conn}-{n}"), "kind": "count", "location": STORE,
                        "business_date": "2026-11-26",
                        "lines": [{"sku": SKUS[3], "counted_qty": 2}, {"sku": SKUS[3], "counted_qty": 3}]}));
                }
                let body = serde_json::Value::Array(events).to_string();
                client
                    .query_one("SELECT possync.apply_events($1::text::jsonb)", &[&body])
                    .await
                    .unwrap_or_else(|e| panic!("session {conn}, round {n}: {e:?}"));
                if n % 7 == 0 {
                    if n % 14 == 0 && conn == 0 {
                        client
                            .execute(
                                &format!("INSERT INTO possync.item (sku) VALUES ('NEW{}') ON CONFLICT DO NOTHING", n % 5),
                                &[],
                            )
                            .await
                            .unwrap_or_else(|e| panic!("item: {e:?}"));
                    }
                    client
                        .query_one("SELECT possync.replay_held()", &[])
                        .await
                        .unwrap_or_else(|e| panic!("session {conn}, replay at {n}: {e:?}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("session");
    }
    setup
        .query_one("SELECT possync.replay_held()", &[])
        .await
        .expect("last replay");
    // every shared sale posted once, whoever sent it first
    assert_eq!(
        numeric(
            &setup,
            "SELECT count(*) FROM possync.stock_move WHERE event_id LIKE 'shared-%'"
        )
        .await,
        Decimal::from(60)
    );
    assert_eq!(
        numeric(
            &setup,
            &format!("SELECT on_hand FROM possync.stock_balance WHERE sku = '{}' AND location_id = '{STORE}'", SKUS[0])
        )
        .await,
        Decimal::from(10000 - 4 * 60),
        "no lost update on the hot sku"
    );
    assert_eq!(
        numeric(
            &setup,
            &format!("SELECT on_hand FROM possync.stock_balance WHERE sku = '{}' AND location_id = '{STORE}'", SKUS[3])
        )
        .await,
        Decimal::from(5),
        "a count with the sku on two shelves counts their sum"
    );
    let broken: i64 = setup
        .query_one("SELECT count(*) FROM possync.check_invariants()", &[])
        .await
        .expect("invariants")
        .get(0);
    assert_eq!(broken, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn sessions_posting_into_a_month_not_made_yet_all_post_and_make_it_once() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    receive(
        &setup,
        json!([{"sku": SKUS[3], "qty": 100, "unit_cost": "1.00"}]),
    )
    .await;
    // six sessions, each in its own transaction, post at once into months no partition exists for (in the
    // partition window, which reaches 12 months ahead): three into the month 6 months from now, three into one
    // each of the 3 months after it; each keeps its transaction open a moment after posting, so the others wait
    // for it while it holds what it made
    let ahead: Vec<String> = setup
        .query(
            "SELECT to_char(date_trunc('month', current_date) + k * interval '1 month', 'YYYY-MM')
               FROM generate_series(6, 10) k ORDER BY k",
            &[],
        )
        .await
        .expect("months ahead")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let months = [
        &ahead[0], &ahead[0], &ahead[0], &ahead[1], &ahead[2], &ahead[3],
    ];
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(months.len()));
    let mut tasks = Vec::new();
    for (n, month) in months.iter().enumerate() {
        let client = erp.connect("erp").await;
        let start = start.clone();
        let mut ev = sale(&format!("month-{n}"), SKUS[3]);
        ev["business_date"] = json!(format!("{month}-1{n}"));
        tasks.push(tokio::spawn(async move {
            client.batch_execute("BEGIN").await.expect("begin");
            start.wait().await;
            let status = apply_status(&client, &ev).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            client.batch_execute("COMMIT").await.expect("commit");
            status
        }));
    }
    for (n, t) in tasks.into_iter().enumerate() {
        let status = t.await.expect("posting task");
        assert_eq!(status.as_deref(), Ok("applied"), "session {n}");
    }
    // every month once in every ledger table (and the month after the latest)
    for table in ["event", "stock_move", "journal", "journal_line"] {
        let expected: Vec<String> = ahead
            .iter()
            .map(|m| format!("{table}_{}", m.replace('-', "_")))
            .collect();
        let made: Vec<String> = setup
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = $1::text::regclass AND c.relname = ANY($2) ORDER BY 1",
                &[&format!("possync.{table}"), &expected],
            )
            .await
            .expect("partitions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(made, expected);
    }
    assert_eq!(
        numeric(
            &setup,
            "SELECT count(*) FROM possync.event WHERE event_id LIKE 'month-%'"
        )
        .await,
        Decimal::from(months.len())
    );
    assert_eq!(
        numeric(
            &setup,
            &format!(
                "SELECT on_hand FROM possync.stock_balance WHERE sku = '{}' AND location_id = '{STORE}'",
                SKUS[3]
            )
        )
        .await,
        Decimal::from(100 - months.len() as i64)
    );
    assert_eq!(
        numeric(&setup, "SELECT count(*) FROM possync.check_invariants()").await,
        Decimal::ZERO
    );
}

/// Posts `event` (JSON text) from its own session in a task that answers its status, so that the test can see it
/// wait for a lock.
fn posting_in_background(
    session: tokio_postgres::Client,
    event: String,
) -> tokio::task::JoinHandle<Result<String, tokio_postgres::Error>> {
    tokio::spawn(async move {
        session
            .query_one(
                "SELECT possync.apply_event($1::text::jsonb)->>'status'",
                &[&event],
            )
            .await
            .map(|r| r.get::<_, String>(0))
    })
}

/// Runs the call `start` begins while an archive is in progress (the archive lock held, as archive_period takes
/// it first), sees it wait, then lets the archive take the ledger exclusively, as archive_period does next: it
/// must get it (the waiting call holds none of it; one that did would make one of the two fail with a deadlock).
/// Returns what the call answers once the archive is done.
async fn while_archiving<T: Send + 'static>(
    archiving: &tokio_postgres::Client,
    what: &str,
    start: impl FnOnce() -> tokio::task::JoinHandle<Result<T, tokio_postgres::Error>>,
) -> T {
    archiving
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(1347633522, 0)")
        .await
        .expect("archive lock");
    let call = start();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "{what} did not wait for the archive");
    archiving
        .batch_execute(
            "SET lock_timeout = '20s'; LOCK TABLE possync.event IN ACCESS EXCLUSIVE MODE; COMMIT",
        )
        .await
        .unwrap_or_else(|e| panic!("the archive takes the ledger while {what} waits for it: {e}"));
    call.await
        .expect("task")
        .unwrap_or_else(|e| panic!("{what} after the archive: {e}"))
}

/// A second store, S043, and stock of the first sku at the first store to ship from.
async fn second_store_with_stock(setup: &tokio_postgres::Client) {
    setup
        .batch_execute(
            "INSERT INTO possync.location (location_id, name) VALUES ('S043', 'Store 43')",
        )
        .await
        .expect("second store");
    receive(
        setup,
        json!([{"sku": SKUS[0], "qty": 10, "unit_cost": "4.00"}]),
    )
    .await;
}

/// One half of transfer `transfer` of 3 of the first sku, as event JSON text.
fn transfer_half(transfer: &str, id: &str, kind: &str, at: &str, other: (&str, &str)) -> String {
    json!({"event_id": id, "kind": kind, "location": at, "transfer_id": transfer,
           other.0: other.1, "business_date": "2026-11-26",
           "lines": [{"sku": SKUS[0], "qty": 3}]})
    .to_string()
}

/// The two halves of a transfer posted at the same moment by two sessions (two apply lanes of a source, say):
/// the transfer_in's session has it held but not yet committed when the transfer_out's session posts. The
/// transfer_out must wait for it and release it, not miss it and leave the receipt held for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_in_held_by_another_open_session_is_released_by_its_transfer_out() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    second_store_with_stock(&setup).await;
    let half = |id: &str, kind: &str, at: &str, other: (&str, &str)| {
        transfer_half("T-RACE", id, kind, at, other)
    };
    let receiving = erp.connect("erp").await;
    receiving.batch_execute("BEGIN").await.expect("begin");
    let held: String = receiving
        .query_one(
            "SELECT possync.apply_event($1::text::jsonb)->>'status'",
            &[&half(
                "t-in",
                "transfer_in",
                "S043",
                ("from_location", STORE),
            )],
        )
        .await
        .expect("transfer_in")
        .get(0);
    assert_eq!(held, "held", "nothing shipped yet");
    let shipping = erp.connect("erp").await;
    let out = half("t-out", "transfer_out", STORE, ("to_location", "S043"));
    let ship = posting_in_background(shipping, out);
    // the transfer_out waits for the open session's lock on the transfer
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !ship.is_finished(),
        "the transfer_out did not wait for the session holding its transfer_in"
    );
    receiving.batch_execute("COMMIT").await.expect("commit");
    let shipped = ship.await.expect("task").expect("transfer_out");
    assert_eq!(shipped, "applied");
    let status: String = setup
        .query_one(
            "SELECT status FROM possync.event WHERE event_id = 't-in'",
            &[],
        )
        .await
        .expect("t-in")
        .get(0);
    assert_eq!(
        status, "applied",
        "the receipt was released by its transfer_out"
    );
    assert_eq!(
        numeric(&setup, &format!("SELECT on_hand FROM possync.stock_balance WHERE sku = '{}' AND location_id = 'S043'", SKUS[0])).await,
        Decimal::from(3)
    );
    assert_eq!(
        numeric(
            &setup,
            "SELECT sum(debit - credit) FROM possync.journal_line WHERE account_code = '1210'"
        )
        .await,
        Decimal::ZERO,
        "nothing left in transit"
    );
}

/// archive_period takes the archive lock, then the ledgers (to detach a month). A posting that read a ledger
/// (a transfer_out looks for the transfer_in held for it) before it waited for the archive lock would hold the
/// ledger against archive_period while waiting for it: a deadlock. Posting takes the archive lock first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_posting_waiting_for_an_archive_holds_no_ledger_against_it() {
    let _one = serial().await;
    let erp = erp_cluster().await;
    let setup = erp.connect("erp").await;
    second_store_with_stock(&setup).await;
    let half = |id: &str, kind: &str, at: &str, other: (&str, &str)| {
        transfer_half("T-ARCH", id, kind, at, other)
    };
    let held: String = setup
        .query_one(
            "SELECT possync.apply_event($1::text::jsonb)->>'status'",
            &[&half(
                "a-in",
                "transfer_in",
                "S043",
                ("from_location", STORE),
            )],
        )
        .await
        .expect("transfer_in")
        .get(0);
    assert_eq!(held, "held");
    // an archive in progress: the archive lock (as archive_period takes it first), the ledgers next
    let archiving = erp.connect("erp").await;
    let shipping = erp.connect("erp").await;
    let out = half("a-out", "transfer_out", STORE, ("to_location", "S043"));
    let shipped = while_archiving(&archiving, "a transfer_out", || {
        posting_in_background(shipping, out)
    })
    .await;
    assert_eq!(shipped, "applied");
    let status: String = setup
        .query_one(
            "SELECT status FROM possync.event WHERE event_id = 'a-in'",
            &[],
        )
        .await
        .expect("a-in")
        .get(0);
    assert_eq!(status, "applied", "the held receipt was released");

    // replay_held reads the held events: it too waits for the archive before it reads them
    let unknown = sale("a-held", "NOT-AN-ITEM");
    assert_eq!(apply_status(&setup, &unknown).await.as_deref(), Ok("held"));
    let replaying = erp.connect("erp").await;
    let replayed = while_archiving(&archiving, "replay_held", || {
        tokio::spawn(async move {
            replaying
                .query_one("SELECT possync.replay_held()", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        })
    })
    .await;
    assert_eq!(replayed, 0, "the item is still unknown");
}
