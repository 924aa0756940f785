//! Upgrades in place: every kept release's install script, a store day posted on it, `ALTER EXTENSION possync
//! UPDATE`, and then the same ledgers, the same answers, the same catalog as a fresh install, and posting that
//! keeps working. Also: DROP is refused while ledgers hold data, and a pg_dump / pg_restore round trip keeps
//! every row and keeps posting.

use std::collections::HashMap;

use possync_e2e::catalog::{DESCRIBE_EXTENSION, DESCRIBE_PARTITIONS, LEDGER_TABLES};
use possync_e2e::{serial, workspace_root, Cluster};
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Every version whose install script the repository keeps (`sql/possync--X.sql`), oldest first.
fn kept_versions() -> Vec<String> {
    let dir = workspace_root().join("sql");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let v = name.strip_prefix("possync--")?.strip_suffix(".sql")?;
            (!v.contains("--")).then(|| v.to_string())
        })
        .collect();
    versions.sort_by_key(|v| {
        v.split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    versions
}

/// The rows of a query as sorted text, one line each.
async fn rows(c: &Client, sql: &str) -> String {
    let q =
        format!("SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM ({sql}) x");
    c.query_one(&q, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

async fn describe(c: &Client) -> Vec<String> {
    c.query(DESCRIBE_EXTENSION, &[])
        .await
        .unwrap_or_else(|e| panic!("describe the extension: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

async fn describe_partitions(c: &Client) -> Vec<String> {
    c.query(DESCRIBE_PARTITIONS, &[])
        .await
        .unwrap_or_else(|e| panic!("describe the partitions: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// The columns of each ledger table, in order, as a column list: a snapshot reads the columns a release had, so
/// that a column a later release adds (stock_move.business_date in 0.4.0) does not count as a changed row.
async fn ledger_columns(c: &Client) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for t in LEDGER_TABLES {
        let cols: String = c
            .query_one(
                "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
                   FROM information_schema.columns WHERE table_schema = 'possync' AND table_name = $1",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("columns of {t}: {e:?}"))
            .get(0);
        out.insert(t.to_string(), cols);
    }
    out
}

/// Every ledger row (the given columns of each table), the books and the ATP answers: what an upgrade must not
/// change.
async fn snapshot(c: &Client, columns: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in LEDGER_TABLES {
        out.push((
            t.to_string(),
            rows(c, &format!("SELECT {} FROM possync.{t}", columns[t])).await,
        ));
    }
    for (name, sql) in [
        ("trial_balance", "SELECT * FROM possync.trial_balance"),
        ("reconcile", "SELECT * FROM possync.reconcile()"),
        ("check_invariants", "SELECT * FROM possync.check_invariants()"),
        (
            "atp",
            "SELECT b.sku, b.location_id, possync.atp(b.sku, b.location_id, '2026-12-01'::timestamptz), \
                    possync.atp(b.sku, NULL, '2026-12-01'::timestamptz) FROM possync.stock_balance b",
        ),
        (
            "atp_detail",
            "SELECT d.* FROM possync.item i, possync.atp_detail(i.sku, NULL, '2026-12-01'::timestamptz) d",
        ),
        ("open_exceptions", "SELECT kind, event_id FROM possync.open_exceptions"),
        // the columns 0.1.0 had (0.2.0 adds rejected)
        (
            "source_status",
            "SELECT source_id, checkpoint, applied_at, events_applied, held, open_exceptions FROM possync.source_status",
        ),
    ] {
        out.push((name.to_string(), rows(c, sql).await));
    }
    out
}

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn apply(c: &Client, ev: Value) -> Value {
    let row = c
        .query_one(
            "SELECT possync.apply_event($1::text::jsonb)::text",
            &[&ev.to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("apply_event {ev}: {e:?}"));
    serde_json::from_str(&row.get::<_, String>(0)).unwrap_or(Value::Null)
}

async fn json_of(c: &Client, sql: &str) -> Value {
    let row = c
        .query_one(&format!("SELECT ({sql})::text"), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    serde_json::from_str(&row.get::<_, String>(0)).unwrap_or(Value::Null)
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("")
}

const MASTER_DATA: &str = "
    SELECT possync.install_default_chart();
    INSERT INTO possync.location (location_id, name, kind) VALUES
        ('S1', 'Store 1', 'store'), ('S2', 'Store 2', 'store'), ('DC1', 'DC', 'dc');
    INSERT INTO possync.item (sku, description, item_class, standard_cost) VALUES
        ('A', 'A', 'apparel', 4.00), ('B', 'B', NULL, 2.50), ('C', 'C', NULL, 1.005);
    INSERT INTO possync.tax_code VALUES ('NY', 0.08875, 'New York');
    INSERT INTO possync.safety_stock VALUES ('A', 'S1', 1);
    INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at) VALUES
        ('PO-1', 'A', 'S1', 30, '2026-11-27'), ('PO-2', 'B', 'S2', 10, '2026-11-30');";

fn sale(id: &str, seq: i64, lines: Value, card: &str) -> Value {
    json!({"event_id": id, "kind": "sale", "location": "S1", "register": "1", "sequence": seq,
           "business_date": "2026-11-26", "occurred_at": "2026-11-26T10:00:00Z",
           "lines": lines, "tenders": [{"type": "card", "amount": card}]})
}

/// A store day with every event kind, open reservations, a held and a rejected event, a conflict and audit
/// exceptions; returns the exception id of the rejected event.
async fn store_day(c: &Client) -> i64 {
    exec(c, MASTER_DATA).await;
    let receipt = json!({"event_id": "RCV-1", "kind": "receipt", "location": "S1", "business_date": "2026-11-26",
        "lines": [{"sku": "A", "qty": 20, "unit_cost": "4.10", "supply_id": "PO-1"},
                  {"sku": "B", "qty": 10, "unit_cost": "2.45"}, {"sku": "C", "qty": 5, "unit_cost": "1.00"}]});
    let dc = json!({"event_id": "RCV-DC", "kind": "receipt", "location": "DC1", "business_date": "2026-11-26",
        "lines": [{"sku": "A", "qty": 50, "unit_cost": "3.90"}]});
    let day = vec![
        receipt,
        dc,
        sale(
            "S1-1-1",
            1,
            json!([{"sku": "A", "qty": 2, "unit_price": "19.99", "tax": "3.55", "tax_code": "NY"},
                   {"sku": "B", "qty": 1, "unit_price": "5.00", "discount": "0.50", "tax": "0.40", "tax_code": "NY"}]),
            "48.43",
        ),
        // paid a cent short: tender_mismatch to over_short
        sale(
            "S1-1-2",
            2,
            json!([{"sku": "C", "qty": 1, "unit_price": "3.00"}]),
            "2.99",
        ),
        json!({"event_id": "S1-1-3", "kind": "return", "location": "S1", "register": "1", "sequence": 3,
               "business_date": "2026-11-26", "original_event_id": "S1-1-1",
               "lines": [{"sku": "A", "qty": 1, "unit_price": "19.99", "tax": "1.77"}],
               "tenders": [{"type": "card", "amount": "-21.76"}]}),
        json!({"event_id": "S1-1-4", "kind": "exchange", "location": "S1", "register": "1", "sequence": 4,
               "business_date": "2026-11-26", "original_event_id": "S1-1-1",
               "lines": [{"sku": "B", "qty": 1, "unit_price": "4.50", "returned": true},
                         {"sku": "C", "qty": 2, "unit_price": "3.00"}],
               "tenders": [{"type": "cash", "amount": "1.50"}]}),
        json!({"event_id": "TO-1", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
               "transfer_id": "T1", "to_location": "S2", "lines": [{"sku": "A", "qty": 10}]}),
        json!({"event_id": "TI-1", "kind": "transfer_in", "location": "S2", "business_date": "2026-11-26",
               "transfer_id": "T1", "from_location": "DC1", "lines": [{"sku": "A", "qty": 6}]}),
        // arrives before its transfer_out: held until it ships
        json!({"event_id": "TI-2", "kind": "transfer_in", "location": "S1", "business_date": "2026-11-26",
               "transfer_id": "T2", "from_location": "DC1", "lines": [{"sku": "A", "qty": 5}]}),
        json!({"event_id": "ADJ-1", "kind": "adjustment", "location": "S1", "business_date": "2026-11-26",
               "reason": "damaged", "lines": [{"sku": "B", "qty": -1}]}),
        json!({"event_id": "CNT-1", "kind": "count", "location": "S1", "business_date": "2026-11-26",
               "lines": [{"sku": "C", "counted_qty": 1}]}),
        // an item the ERP does not know yet: held
        sale(
            "S1-1-6",
            6,
            json!([{"sku": "NEW", "qty": 1, "unit_price": "9.00"}]),
            "9.00",
        ),
        json!({"event_id": "S1-1-2", "kind": "sale", "location": "S1", "register": "1", "sequence": 2,
               "business_date": "2026-11-26", "lines": [{"sku": "C", "qty": 9, "unit_price": "3.00"}],
               "tenders": []}),
        json!({"event_id": "DC-1", "kind": "day_close", "location": "S1", "register": "1",
               "business_date": "2026-11-26",
               "totals": {"net_sales": "44.99", "tax": "2.18", "tenders": {"card": "26.67", "cash": "1.50"},
                          "transaction_count": 5, "last_sequence": 6}}),
    ];
    for ev in day {
        apply(c, ev).await;
    }
    let r1 = json_of(
        c,
        "SELECT possync.reserve('R1', 'A', 'S1', 2, '2027-01-01')",
    )
    .await;
    assert_eq!(status(&r1), "reserved", "{r1}");
    let r2 = json_of(c, "SELECT possync.reserve('R2', 'B', 'S1', 1)").await;
    assert_eq!(status(&r2), "reserved", "{r2}");
    let ful = apply(
        c,
        json!({"event_id": "WEB-1", "kind": "fulfillment", "location": "S1", "order_id": "O1",
               "business_date": "2026-11-26",
               "lines": [{"sku": "A", "qty": 2, "unit_price": "19.99", "tax": "3.55", "reservation_id": "R1"}]}),
    )
    .await;
    assert_eq!(status(&ful), "applied", "{ful}");
    let batch = json_of(
        c,
        &format!(
            "SELECT possync.apply_batch('pos-a', '0/1000', '{}'::jsonb)",
            json!([sale(
                "S1-2-1",
                1,
                json!([{"sku": "A", "qty": 1, "unit_price": "19.99"}]),
                "19.99"
            )])
        ),
    )
    .await;
    assert_eq!(status(&batch), "applied", "{batch}");
    let bad = apply(
        c,
        json!({"event_id": "S1-1-5", "kind": "sale", "location": "S1", "business_date": "2026-11-26",
               "lines": [{"sku": "A", "qty": "two", "unit_price": "19.99"}], "tenders": []}),
    )
    .await;
    assert_eq!(status(&bad), "rejected", "{bad}");
    c.query_one(
        "SELECT exception_id FROM possync.exception WHERE event_id = 'S1-1-5' AND kind = 'malformed'",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("rejected event kept: {e:?}"))
    .get(0)
}

/// After the upgrade: posting, replaying held events, resubmitting rejected ones, reversing, batches.
async fn keeps_working(c: &Client, rejected: i64) {
    let s = apply(
        c,
        sale(
            "S1-1-7",
            7,
            json!([{"sku": "A", "qty": 1, "unit_price": "19.99"}]),
            "19.99",
        ),
    )
    .await;
    assert_eq!(status(&s), "applied", "{s}");
    let again = apply(
        c,
        sale(
            "S1-1-7",
            7,
            json!([{"sku": "A", "qty": 1, "unit_price": "19.99"}]),
            "19.99",
        ),
    )
    .await;
    assert_eq!(status(&again), "duplicate", "{again}");
    exec(
        c,
        "INSERT INTO possync.item (sku, standard_cost) VALUES ('NEW', 3.00)",
    )
    .await;
    let replayed: i32 = c
        .query_one("SELECT possync.replay_held('S1-1-6')", &[])
        .await
        .unwrap_or_else(|e| panic!("replay_held: {e:?}"))
        .get(0);
    assert_eq!(replayed, 1);
    let fixed = json_of(
        c,
        &format!(
            "SELECT possync.resubmit({rejected}, '{}'::jsonb)",
            json!({"event_id": "S1-1-5", "kind": "sale", "location": "S1", "business_date": "2026-11-26",
                   "lines": [{"sku": "A", "qty": 2, "unit_price": "19.99"}],
                   "tenders": [{"type": "card", "amount": "39.98"}]})
        ),
    )
    .await;
    assert_eq!(status(&fixed), "applied", "{fixed}");
    let rev = json_of(c, "SELECT possync.reverse_event('S1-1-1', 'keyed twice')").await;
    assert_eq!(status(&rev), "applied", "{rev}");
    let out = apply(
        c,
        json!({"event_id": "TO-2", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-27",
               "transfer_id": "T2", "to_location": "S1", "lines": [{"sku": "A", "qty": 5}]}),
    )
    .await;
    assert_eq!(status(&out), "applied", "{out}");
    // what 0.2.0 adds: a void takes its register number and posts nothing; documents waiting to become final
    let lines_before = rows(c, "SELECT count(*) FROM possync.journal_line").await;
    let void = apply(
        c,
        json!({"event_id": "S1-1-8", "kind": "void", "location": "S1", "register": "1", "sequence": 8,
               "business_date": "2026-11-26"}),
    )
    .await;
    assert_eq!(status(&void), "applied", "{void}");
    assert_eq!(
        rows(c, "SELECT count(*) FROM possync.journal_line").await,
        lines_before,
        "a void posts no journal"
    );
    exec(
        c,
        "SELECT possync.note_documents('pos-a', 'order', '{O-1}', '{}');
         UPDATE possync.pending_document SET first_seen = now() - interval '2 hours';",
    )
    .await;
    assert_eq!(
        rows(
            c,
            "SELECT kind, source FROM possync.open_exceptions WHERE kind = 'document_not_final'"
        )
        .await,
        "(document_not_final,pos-a)"
    );
    exec(
        c,
        "SELECT possync.note_documents('pos-a', 'order', '{}', '{O-1}')",
    )
    .await;
    let held_left: i64 = c
        .query_one(
            "SELECT count(*) FROM possync.event WHERE status = 'held'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert_eq!(
        held_left, 0,
        "the held transfer_in posts when its transfer_out arrives"
    );
    let batch = |lsn: &'static str, id: &'static str| {
        format!(
            "SELECT possync.apply_batch('pos-a', '{lsn}', '{}'::jsonb)",
            json!([sale(
                id,
                2,
                json!([{"sku": "B", "qty": 1, "unit_price": "5.00"}]),
                "5.00"
            )])
        )
    };
    assert_eq!(
        status(&json_of(c, &batch("0/2000", "S1-2-2")).await),
        "applied"
    );
    assert_eq!(
        status(&json_of(c, &batch("0/1800", "S1-2-3")).await),
        "skipped"
    );
    assert_eq!(
        rows(c, "SELECT * FROM possync.check_invariants()").await,
        ""
    );
    assert_eq!(rows(c, "SELECT * FROM possync.reconcile()").await, "");
    assert_eq!(
        rows(
            c,
            "SELECT sum(debit) = sum(credit) FROM possync.journal_line"
        )
        .await,
        "(t)"
    );
}

fn diff(a: &[String], b: &[String]) -> String {
    let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    format!(
        "only after the upgrade:\n  {}\nonly in a fresh install:\n  {}",
        only_a
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_b
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    )
}

#[tokio::test]
async fn every_kept_release_upgrades_in_place_to_what_a_fresh_install_is() {
    let _serial = serial().await;
    let versions = kept_versions();
    assert!(
        !versions.is_empty(),
        "the repository keeps no release install script (sql/possync--X.sql)"
    );
    let cluster = Cluster::start("upgrade", false, &[]);
    cluster.create_database("fresh").await;
    let fresh = cluster.connect("fresh").await;
    exec(&fresh, "CREATE EXTENSION possync").await;
    let target: String = fresh
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'possync'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    let fresh_catalog = describe(&fresh).await;
    assert!(
        fresh_catalog.len() > 100,
        "the catalog description found too little: {fresh_catalog:?}"
    );
    // a fresh install has no partitions until it posts
    assert_eq!(describe_partitions(&fresh).await, Vec::<String>::new());
    let fresh_rejected = store_day(&fresh).await;
    keeps_working(&fresh, fresh_rejected).await;
    let fresh_partitions = describe_partitions(&fresh).await;
    assert!(
        fresh_partitions.len() > 20,
        "the partitions' description found too little: {fresh_partitions:?}"
    );
    assert_eq!(
        describe(&fresh).await,
        fresh_catalog,
        "posting changed the extension's catalog"
    );
    for (n, version) in versions.iter().enumerate() {
        let db = format!("from_{n}");
        cluster.create_database(&db).await;
        let c = cluster.connect(&db).await;
        exec(&c, &format!("CREATE EXTENSION possync VERSION '{version}'")).await;
        let rejected = store_day(&c).await;
        let columns = ledger_columns(&c).await;
        let before = snapshot(&c, &columns).await;
        assert_eq!(
            before
                .iter()
                .find(|(n, _)| n == "check_invariants")
                .map(|(_, v)| v.as_str()),
            Some(""),
            "the day posted on {version} is sound"
        );
        exec(&c, "ALTER EXTENSION possync UPDATE").await;
        let now: String = c
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'possync'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .get(0);
        assert_eq!(now, target, "ALTER EXTENSION possync UPDATE from {version}");
        let after = snapshot(&c, &columns).await;
        for ((name, b), (_, a)) in before.iter().zip(after.iter()) {
            assert_eq!(b, a, "{name} changed by the upgrade from {version}");
        }
        // 0.4.0: the rows are in their business month's partitions; a move and a journal line carry the date of
        // their event and journal (a reversal's, of the event it reverses)
        assert_eq!(
            rows(
                &c,
                "SELECT m.move_id FROM possync.stock_move m JOIN possync.event e USING (event_id)
                  LEFT JOIN possync.event r ON e.kind = 'reversal' AND r.event_id = e.payload ->> 'reverses'
                 WHERE m.business_date <> coalesce(r.business_date, e.business_date)
                 UNION ALL
                 SELECT l.journal_id FROM possync.journal_line l JOIN possync.journal j USING (journal_id)
                 WHERE l.business_date <> j.business_date
                 UNION ALL
                 SELECT count(*) FROM possync.event e
                 WHERE NOT EXISTS (SELECT 1 FROM possync.event_key k WHERE k.event_id = e.event_id
                                                                      AND k.business_date = e.business_date)
                HAVING count(*) > 0"
            )
            .await,
            "",
            "business dates and event keys after the upgrade from {version}"
        );
        let upgraded_catalog = describe(&c).await;
        assert!(
            upgraded_catalog == fresh_catalog,
            "the schema upgraded from {version} differs from a fresh install of {target} \
             (every schema change needs its upgrade script sql/possync--A--B.sql):\n{}",
            diff(&upgraded_catalog, &fresh_catalog)
        );
        keeps_working(&c, rejected).await;
        // the partitions the upgrade made for the data and those posting made since have the shape posting
        // gives a partition in a fresh install
        let upgraded_partitions = describe_partitions(&c).await;
        assert!(
            upgraded_partitions == fresh_partitions,
            "the partitions upgraded from {version} differ from those of a fresh install:\n{}",
            diff(&upgraded_partitions, &fresh_partitions)
        );
    }
}

#[tokio::test]
async fn drop_extension_refuses_while_ledgers_hold_data() {
    let _serial = serial().await;
    let cluster = Cluster::start("dropguard", false, &[]);
    cluster.create_database("erp").await;
    let c = cluster.connect("erp").await;
    // an empty installation drops freely
    exec(&c, "CREATE EXTENSION possync; DROP EXTENSION possync").await;
    exec(&c, "CREATE EXTENSION possync").await;
    store_day(&c).await;
    for stmt in [
        "DROP EXTENSION possync",
        "DROP EXTENSION possync CASCADE",
        "DROP SCHEMA possync CASCADE",
        r#"drop extension if exists "possync""#,
        "SELECT 1; DROP SCHEMA other_one, possync CASCADE",
    ] {
        let err = c
            .batch_execute(stmt)
            .await
            .err()
            .unwrap_or_else(|| panic!("{stmt} succeeded while ledgers hold data"));
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert!(
            db.message().contains("possync") && db.message().contains("ledger"),
            "{stmt}: {}",
            db.message()
        );
        let hint = db.hint().unwrap_or_default();
        assert!(
            hint.contains("pg_dump") && hint.contains("possync.allow_drop"),
            "{stmt}: the hint says how to archive and which setting allows it: {hint}"
        );
    }
    let events: i64 = c
        .query_one("SELECT count(*) FROM possync.event", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert!(events > 10, "the ledgers are intact");
    // other objects still drop
    exec(
        &c,
        "SELECT count(*) FROM possync.event; CREATE SCHEMA other; CREATE TABLE other.t (x int);
         DROP SCHEMA IF EXISTS other CASCADE; CREATE SCHEMA possync_archive; DROP SCHEMA possync_archive",
    )
    .await;
    exec(&c, "SET possync.allow_drop = on; DROP EXTENSION possync").await;
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'possync'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert_eq!(left, 0, "dropped once the setting allows it");
}

#[tokio::test]
async fn a_restored_database_keeps_every_ledger_row_and_keeps_posting() {
    let _serial = serial().await;
    let cluster = Cluster::start("restore", false, &[]);
    cluster.create_database("erp").await;
    let c = cluster.connect("erp").await;
    exec(&c, "CREATE EXTENSION possync").await;
    store_day(&c).await;
    let columns = ledger_columns(&c).await;
    let before = snapshot(&c, &columns).await;
    assert!(
        !describe_partitions(&c).await.is_empty(),
        "the ledgers' rows are in partitions"
    );
    let dump = cluster.dir().join("erp.dump");
    cluster.pg_tool("pg_dump", &["-Fc", "-f", &dump.to_string_lossy(), "erp"]);
    cluster.create_database("restored").await;
    cluster.pg_tool(
        "pg_restore",
        &["--exit-on-error", "-d", "restored", &dump.to_string_lossy()],
    );
    let r = cluster.connect("restored").await;
    let after = snapshot(&r, &columns).await;
    for ((name, b), (_, a)) in before.iter().zip(after.iter()) {
        assert_eq!(b, a, "{name} differs after pg_dump / pg_restore");
    }
    assert_eq!(
        describe_partitions(&r).await,
        describe_partitions(&c).await,
        "the restored partitions"
    );
    assert_eq!(
        describe(&r).await,
        describe(&c).await,
        "the restored extension"
    );
    let dup = apply(
        &r,
        sale(
            "S1-1-2",
            2,
            json!([{"sku": "C", "qty": 1, "unit_price": "3.00"}]),
            "2.99",
        ),
    )
    .await;
    assert_eq!(status(&dup), "duplicate", "{dup}");
    let rejected: i64 = r
        .query_one(
            "SELECT exception_id FROM possync.exception WHERE event_id = 'S1-1-5' AND kind = 'malformed'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    keeps_working(&r, rejected).await;
}
