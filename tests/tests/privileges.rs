//! Least privilege, each grant tried by a role that attempts more than it was given: readers read the views and
//! ask ATP but see no raw POS payloads, the bridge posts through apply_batch only, policy settings are for
//! superusers, and a source's checkpoint is repaired by the owner through a recorded, privileged function.

use possync_e2e::{erp_cluster, serial, Cluster, SKUS, STORE};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

async fn connect_as(cluster: &Cluster, role: &str) -> Client {
    let conninfo = format!(
        "host={} port={} user={role} dbname=erp",
        cluster.dir().display(),
        cluster.port
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
    tokio::spawn(conn);
    client
}

/// The SQLSTATE a statement fails with, or None when it succeeds.
async fn refused(c: &Client, sql: &str) -> Option<String> {
    match c.batch_execute(sql).await {
        Ok(()) => None,
        Err(e) => Some(
            e.as_db_error()
                .map(|d| d.code().code().to_string())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

fn sale(id: &str) -> String {
    json!([{"event_id": id, "kind": "sale", "location": STORE, "business_date": "2026-11-26",
            "lines": [{"sku": SKUS[0], "qty": 1, "unit_price": "10.00"}],
            "tenders": [{"type": "card", "amount": "10.00"}]}])
    .to_string()
}

#[tokio::test]
async fn each_grant_allows_what_design_says_and_nothing_more() {
    let _serial = serial().await;
    let erp = erp_cluster().await;
    let admin = erp.connect("erp").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE reader LOGIN; CREATE ROLE bridge LOGIN; CREATE ROLE nobody LOGIN;
             SELECT possync.grant_reader('reader'); SELECT possync.grant_bridge('bridge');
             SELECT possync.apply_events('{}'::jsonb);",
            sale("s1")
        ))
        .await
        .unwrap_or_else(|e| panic!("setup: {e:?}"));

    let reader = connect_as(&erp, "reader").await;
    for ok in [
        format!("SELECT possync.atp('{}', '{STORE}')", SKUS[0]),
        format!("SELECT possync.atp('{}')", SKUS[0]),
        format!("SELECT * FROM possync.atp_detail('{}')", SKUS[0]),
        "SELECT * FROM possync.trial_balance".to_string(),
        "SELECT * FROM possync.open_exceptions".to_string(),
        "SELECT * FROM possync.source_status".to_string(),
        "SELECT * FROM possync.reconcile()".to_string(),
        "SELECT * FROM possync.check_invariants()".to_string(),
        "SELECT * FROM possync.trace('4000')".to_string(),
    ] {
        assert_eq!(refused(&reader, &ok).await, None, "reader: {ok}");
    }
    for (no, code) in [
        ("SELECT payload FROM possync.event", "42501"),
        ("SELECT payload FROM possync.exception", "42501"),
        ("SELECT * FROM possync.journal_line", "42501"),
        ("SELECT possync.apply_event('{}'::jsonb)", "42501"),
        ("SET possync.max_discount_pct = '100'", "42501"),
        ("SET possync.tax_tolerance = '1000'", "42501"),
        ("SET possync.reject_negative_on_hand = on", "42501"),
    ] {
        assert_eq!(
            refused(&reader, no).await.as_deref(),
            Some(code),
            "reader: {no}"
        );
    }

    let bridge = connect_as(&erp, "bridge").await;
    let batch = |lsn: &str, id: &str| {
        format!(
            "SELECT possync.apply_batch('pos-east', '{lsn}', '{}'::jsonb)",
            sale(id)
        )
    };
    assert_eq!(refused(&bridge, &batch("0/100", "b1")).await, None);
    assert_eq!(
        refused(&bridge, "SELECT possync.source_checkpoint('pos-east')").await,
        None
    );
    // the bridge notes documents that wait for a final state and reads where its sources stand
    for ok in [
        "SELECT possync.note_documents('pos-east', 'order', '{O-1,O-2}', '{}')",
        "SELECT possync.note_documents('pos-east', 'order', '{}', '{O-2}')",
        "SELECT * FROM possync.source_status",
    ] {
        assert_eq!(refused(&bridge, ok).await, None, "bridge: {ok}");
    }
    for no in [
        "SELECT * FROM possync.pending_document".to_string(),
        "SELECT * FROM possync.exception".to_string(),
        "SELECT * FROM possync.source".to_string(),
        "SELECT possync.apply_event('{}'::jsonb)".to_string(),
        "SELECT possync.replay_held()".to_string(),
        "SELECT * FROM possync.event".to_string(),
        "SELECT possync.atp('X')".to_string(),
        "SELECT possync.set_source_checkpoint('pos-east', '0/0', 'mine')".to_string(),
        "SET possync.tax_tolerance = '1000'".to_string(),
    ] {
        assert_eq!(
            refused(&bridge, &no).await.as_deref(),
            Some("42501"),
            "bridge: {no}"
        );
    }

    let pending: String = admin
        .query_one(
            "SELECT string_agg(source || '/' || document || '/' || doc_key, ',') FROM possync.pending_document",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert_eq!(pending, "pos-east/order/O-1");

    // `possync-bridge status` as the bridge's role: two events it sent were rejected, one is held
    let rejected_and_held = json!([
        {"event_id": "bad-1", "kind": "sale", "location": STORE},
        {"event_id": "row-1", "kind": "unmapped", "reason": "no mapping for pos.coupon"},
        {"event_id": "held-1", "kind": "sale", "location": "S-unknown", "business_date": "2026-11-26",
         "lines": [{"sku": SKUS[0], "qty": 1, "unit_price": "10.00"}], "tenders": []}
    ]);
    assert_eq!(
        refused(
            &bridge,
            &format!(
                "SELECT possync.apply_batch('pos-east', '0/200', '{rejected_and_held}'::jsonb)"
            )
        )
        .await,
        None
    );
    let bridge_url = erp.url("erp").replacen("postgres@", "bridge@", 1);
    let out = std::process::Command::new(possync_e2e::bridge_path())
        .args(["status", "--erp", &bridge_url])
        .output()
        .expect("possync-bridge status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status as the bridge's role: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("pos-east "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    // source, checkpoint, lag, events, held, rejected
    assert_eq!(line.get(1).copied(), Some("0/200"), "{text}");
    assert_eq!(line.get(4).copied(), Some("1"), "held\n{text}");
    assert_eq!(line.get(5).copied(), Some("2"), "rejected\n{text}");

    let nobody = connect_as(&erp, "nobody").await;
    assert_eq!(
        refused(
            &nobody,
            &format!("SELECT possync.atp('{}', '{STORE}')", SKUS[0])
        )
        .await
        .as_deref(),
        Some("42501"),
        "nothing is granted to PUBLIC"
    );
}

#[tokio::test]
async fn a_checkpoint_pushed_too_far_is_repaired_by_the_owner_and_the_change_is_recorded() {
    let _serial = serial().await;
    let erp = erp_cluster().await;
    let admin = erp.connect("erp").await;
    admin
        .batch_execute("CREATE ROLE bridge LOGIN; SELECT possync.grant_bridge('bridge');")
        .await
        .unwrap_or_else(|e| panic!("setup: {e:?}"));
    let bridge = connect_as(&erp, "bridge").await;
    let status = |lsn: &'static str, id: &'static str| {
        let sql = format!(
            "SELECT possync.apply_batch('pos-east', '{lsn}', '{}'::jsonb) ->> 'status'",
            sale(id)
        );
        let c = &bridge;
        async move {
            c.query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get::<_, String>(0)
        }
    };
    assert_eq!(status("0/100", "a").await, "applied");
    // a mistaken (or hostile) call moves the checkpoint to the end of time: every later batch is skipped
    assert_eq!(
        status("FFFFFFFF/FFFFFFFF", "nothing").await,
        "applied",
        "an empty-looking batch at the last LSN"
    );
    assert_eq!(status("0/200", "b").await, "skipped");
    // the operator sees it and puts it back; the change is kept with who and why
    let checkpoint: String = admin
        .query_one(
            "SELECT checkpoint::text FROM possync.source_status WHERE source_id = 'pos-east'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert_eq!(checkpoint, "FFFFFFFF/FFFFFFFF");
    let err = admin
        .batch_execute("SELECT possync.set_source_checkpoint('pos-east', '0/100', '')")
        .await
        .expect_err("a reason is required");
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("reason")),
        "{err:?}"
    );
    admin
        .batch_execute(
            "SELECT possync.set_source_checkpoint('pos-east', '0/100', 'a test batch moved it to the end')",
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status("0/200", "b").await, "applied");
    let recorded: String = admin
        .query_one(
            "SELECT reason FROM possync.exception WHERE kind = 'checkpoint_changed' AND source = 'pos-east'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert!(
        recorded.contains("FFFFFFFF/FFFFFFFF")
            && recorded.contains("0/100")
            && recorded.contains("postgres"),
        "{recorded}"
    );
}

#[tokio::test]
async fn read_only_functions_answer_on_a_hot_standby() {
    let _serial = serial().await;
    let primary = erp_cluster().await;
    let admin = primary.connect("erp").await;
    admin
        .batch_execute(&format!(
            "SELECT possync.apply_event('{}'::jsonb);
             SELECT possync.apply_events('{}'::jsonb);",
            json!({"event_id": "r1", "kind": "receipt", "location": STORE, "business_date": "2026-11-26",
                   "lines": [{"sku": SKUS[0], "qty": 5, "unit_cost": "3.00"}]}),
            sale("s1")
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let standby = Cluster::standby_of(&primary);
    let c = standby.connect("erp").await;
    // wait until the standby has replayed the sale
    let mut seen = false;
    for _ in 0..100 {
        let n: i64 = c
            .query_one("SELECT count(*) FROM possync.event", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n >= 2 {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "the standby replays the primary");
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert!(in_recovery);
    for sql in [
        format!("SELECT possync.atp('{}', '{STORE}')::text", SKUS[0]),
        format!("SELECT possync.atp('{}')::text", SKUS[0]),
        format!("SELECT possync.atp_checked('{}')::text", SKUS[0]),
        format!(
            "SELECT string_agg(d::text, ',') FROM possync.atp_detail('{}') d",
            SKUS[0]
        ),
        "SELECT count(*)::text FROM possync.reconcile()".to_string(),
        "SELECT count(*)::text FROM possync.check_invariants()".to_string(),
        "SELECT count(*)::text FROM possync.trace('4000')".to_string(),
        "SELECT possync.source_checkpoint('pos-east')::text".to_string(),
    ] {
        let answer: Option<String> = c
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("on a standby, {sql}: {e:?}"))
            .get(0);
        assert!(answer.is_some(), "{sql}");
    }
    let atp: String = c
        .query_one(
            &format!("SELECT possync.atp('{}', '{STORE}')::text", SKUS[0]),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert_eq!(atp, "4", "5 received, 1 sold");
    // posting is refused by PostgreSQL itself, with its own clear error
    let err = c
        .batch_execute(&format!(
            "SELECT possync.apply_events('{}'::jsonb)",
            sale("s2")
        ))
        .await
        .expect_err("a standby cannot post");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("25006"));
    drop(c);
    standby.stop();
}

#[tokio::test]
async fn atp_answers_only_what_the_caller_may_read() {
    let _serial = serial().await;
    let erp = erp_cluster().await;
    let admin = erp.connect("erp").await;
    let sku = SKUS[0];
    admin
        .batch_execute(&format!(
            "INSERT INTO possync.location (location_id) VALUES ('S043');
             SELECT possync.apply_events('{}'::jsonb);
             CREATE ROLE exec_only LOGIN; GRANT USAGE ON SCHEMA possync TO exec_only;
             GRANT EXECUTE ON FUNCTION possync.atp(text, text, timestamptz) TO exec_only;
             GRANT EXECUTE ON FUNCTION possync.atp_checked(text, text, timestamptz) TO exec_only;
             CREATE ROLE narrow LOGIN; SELECT possync.grant_reader('narrow');
             ALTER TABLE possync.stock_balance ENABLE ROW LEVEL SECURITY;
             CREATE POLICY everyone ON possync.stock_balance USING (true);
             CREATE POLICY one_store ON possync.stock_balance AS RESTRICTIVE FOR SELECT TO narrow
                 USING (location_id = '{STORE}');",
            json!([
                {"event_id": "r1", "kind": "receipt", "location": STORE, "business_date": "2026-11-26",
                 "lines": [{"sku": sku, "qty": 5, "unit_cost": "3.00"}]},
                {"event_id": "r2", "kind": "receipt", "location": "S043", "business_date": "2026-11-26",
                 "lines": [{"sku": sku, "qty": 7, "unit_cost": "3.00"}]}
            ])
        ))
        .await
        .unwrap_or_else(|e| panic!("setup: {e:?}"));
    assert_eq!(atp_of(&admin, sku, None).await, Ok("12".to_string()));
    // EXECUTE without SELECT on the tables: the index path does not answer for it
    let exec_only = connect_as(&erp, "exec_only").await;
    assert_eq!(
        atp_of(&exec_only, sku, Some(STORE)).await,
        Err("42501".to_string())
    );
    assert_eq!(
        atp_of(&exec_only, sku, None).await,
        Err("42501".to_string())
    );
    // a policy that limits a reader to one store holds for ATP too
    let narrow = connect_as(&erp, "narrow").await;
    assert_eq!(atp_of(&narrow, sku, Some(STORE)).await, Ok("5".to_string()));
    assert_eq!(
        atp_of(&narrow, sku, None).await,
        Ok("5".to_string()),
        "the network it may see"
    );
    assert_eq!(
        atp_of(&narrow, sku, Some("S043")).await,
        Ok("0".to_string()),
        "another store's stock is not shown"
    );
}

async fn atp_of(c: &Client, sku: &str, loc: Option<&str>) -> Result<String, String> {
    let sql = match loc {
        Some(l) => format!("SELECT possync.atp('{sku}', '{l}')::text"),
        None => format!("SELECT possync.atp('{sku}')::text"),
    };
    c.query_one(&sql, &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.code().code().to_string())
                .unwrap_or_default()
        })
}
