use serde_json::json;

use super::*;

fn shape() -> TableShape {
    TableShape {
        name: "pos_order".into(),
        pos_table: "shop.pos_order".into(),
        columns: vec![
            ("id".into(), "bigint".into()),
            ("state".into(), "text".into()),
            ("note".into(), "text".into()),
        ],
        key: vec!["id".into()],
        replica_identity: 'd',
        index: vec![],
        copy: true,
    }
}

fn change(op: ChangeOp, row: Value, old: Option<Value>) -> Change {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Change {
        table: "shop.pos_order".into(),
        op,
        row: obj(row),
        old: old.map(obj),
    }
}

#[test]
fn a_group_leaves_each_row_at_its_last_image() {
    let changes = [
        change(
            ChangeOp::Insert,
            json!({"id": 1, "state": "draft", "note": null}),
            None,
        ),
        change(
            ChangeOp::Insert,
            json!({"id": 2, "state": "draft", "note": null}),
            None,
        ),
        change(
            ChangeOp::Update,
            json!({"id": 1, "state": "paid", "note": null}),
            None,
        ),
        change(ChangeOp::Delete, json!({"id": 2}), None),
        // an update that left the (TOASTed) note out keeps the rest of the row
        change(ChangeOp::Update, json!({"id": 1, "state": "done"}), None),
        change(ChangeOp::Update, json!({"id": 3, "state": "paid"}), None),
    ];
    let w = MirrorWrites::collect(&[shape()], changes.iter());
    let t = &w.tables[&0];
    assert!(!t.emptied);
    match &t.rows["1\u{1f}"] {
        RowWrite::Full { row, fresh } => {
            assert_eq!(row["state"], "done");
            assert!(row.contains_key("note"));
            // inserted by the group: the mirror cannot hold it yet
            assert!(fresh);
        }
        other => panic!("{other:?}"),
    }
    // inserted and deleted by the group: nothing reaches the mirror
    assert!(!t.rows.contains_key("2\u{1f}"));
    assert!(matches!(&t.rows["3\u{1f}"], RowWrite::Partial(_)));
}

#[test]
fn a_key_change_deletes_the_old_row_and_a_truncate_forgets_what_came_before() {
    let changes = [
        change(
            ChangeOp::Insert,
            json!({"id": 5, "state": "draft", "note": null}),
            None,
        ),
        change(
            ChangeOp::Update,
            json!({"id": 6, "state": "draft", "note": null}),
            Some(json!({"id": 5})),
        ),
    ];
    let w = MirrorWrites::collect(&[shape()], changes.iter());
    let t = &w.tables[&0];
    // 5 was inserted by the group and moved to 6: never in the mirror, and 6 is not known to be new
    assert!(!t.rows.contains_key("5\u{1f}"));
    assert!(matches!(
        &t.rows["6\u{1f}"],
        RowWrite::Full { fresh: false, .. }
    ));
    let mut truncated = changes.to_vec();
    truncated.push(change(ChangeOp::Truncate, json!({}), None));
    truncated.push(change(
        ChangeOp::Insert,
        json!({"id": 9, "state": "draft", "note": null}),
        None,
    ));
    let w = MirrorWrites::collect(&[shape()], truncated.iter());
    let t = &w.tables[&0];
    assert!(t.emptied);
    assert_eq!(t.rows.len(), 1);
}

#[test]
fn only_rows_the_group_inserted_first_are_known_to_be_new() {
    let changes = [
        // a row the mirror holds, updated: an upsert
        change(
            ChangeOp::Update,
            json!({"id": 1, "state": "paid", "note": null}),
            None,
        ),
        // deleted, then inserted again under the same key: the mirror still has the old row until the delete
        change(ChangeOp::Delete, json!({"id": 2}), None),
        change(
            ChangeOp::Insert,
            json!({"id": 2, "state": "draft", "note": null}),
            None,
        ),
        // a row the mirror holds, deleted
        change(ChangeOp::Delete, json!({"id": 3}), None),
        // inserted, then updated (partly): new
        change(
            ChangeOp::Insert,
            json!({"id": 4, "state": "draft", "note": "x"}),
            None,
        ),
        change(ChangeOp::Update, json!({"id": 4, "state": "paid"}), None),
    ];
    let w = MirrorWrites::collect(&[shape()], changes.iter());
    let t = &w.tables[&0];
    assert!(matches!(
        &t.rows["1\u{1f}"],
        RowWrite::Full { fresh: false, .. }
    ));
    assert!(matches!(
        &t.rows["2\u{1f}"],
        RowWrite::Full { fresh: false, .. }
    ));
    assert!(matches!(&t.rows["3\u{1f}"], RowWrite::Delete(_)));
    match &t.rows["4\u{1f}"] {
        RowWrite::Full { row, fresh: true } => {
            assert_eq!(row["state"], "paid");
            assert_eq!(row["note"], "x");
        }
        other => panic!("{other:?}"),
    }
    // after a truncate every inserted row is new
    let mut truncated = changes.to_vec();
    truncated.push(change(ChangeOp::Truncate, json!({}), None));
    truncated.push(change(
        ChangeOp::Insert,
        json!({"id": 1, "state": "draft", "note": null}),
        None,
    ));
    let w = MirrorWrites::collect(&[shape()], truncated.iter());
    let t = &w.tables[&0];
    assert!(t.emptied);
    assert!(matches!(
        &t.rows["1\u{1f}"],
        RowWrite::Full { fresh: true, .. }
    ));
}

#[test]
fn a_group_statement_finds_evaluates_notes_and_posts_in_one_call() {
    let m = match crate::mapping::Mapping::from_toml(include_str!("../../mappings/normalized.toml"))
    {
        Ok(m) => m,
        Err(e) => panic!("normalized.toml: {e}"),
    };
    let tax = vec![
        ("line_id".to_string(), "bigint".to_string()),
        ("tax_id".to_string(), "integer".to_string()),
        ("amount".to_string(), "numeric(14,2)".to_string()),
    ];
    let touched = vec![vec![tax]];
    let mut documents = m.documents().to_vec();
    documents[0].touched_by[0].header = documents[0].touched_by[0].header_sql(&documents[0], "id");
    let sql = group_sql(
        &documents,
        &["bigint".to_string()],
        &touched,
        true,
        crate::document::Json::Builtin,
    );
    // the keys: those the bridge found ($5, $6) and those the touched_by SQL finds from the tax rows ($7..$10)
    assert!(
        sql.starts_with("WITH k0 AS MATERIALIZED (SELECT key, max(at) AS at FROM (SELECT u.key, u.at FROM unnest($5::text[], $6::int[]) AS u(key, at) UNION ALL SELECT k, i FROM (SELECT ((SELECT _possync_through.order_id FROM pos_order_line AS _possync_through WHERE _possync_through.id = pos_order_line_tax.line_id))::text AS k, pos_order_line_tax._possync_txn AS i FROM"),
        "{sql}"
    );
    // a transaction's own events first, then each document's events by key in byte order
    assert!(
        sql.contains("json_agg(x.ev ORDER BY x.at, x.grp, x.ord, x.key COLLATE \"C\")"),
        "{sql}"
    );
    assert!(
        sql.contains("FROM unnest($7::text[], $8::text[], $9::text[], $10::int[]) AS u(c0, c1, c2, i)) AS pos_order_line_tax"),
        "{sql}"
    );
    // the evaluation reads the keys found, cast to the key's type; the source is $1
    assert!(
        sql.contains("WHERE o.id = ANY(ARRAY(SELECT key FROM k0)::text[]::bigint[])"),
        "{sql}"
    );
    assert!(sql.contains("'source'::text, ($1::text)"), "{sql}");
    assert!(
        sql.contains("possync.note_documents($1, 'pos_order',"),
        "{sql}"
    );
    assert!(
        sql.contains("SELECT possync.apply_batch($1, $2::text::pg_lsn,"),
        "{sql}"
    );
    // the notes are read in the FROM item, before apply_batch, and selected so that they are not planned away
    // nothing is posted outside the group's transaction (its BEGIN is pipelined with it)
    assert!(
        sql.ends_with("::text, noted.n FROM (SELECT (SELECT count(*) FROM n0) AS n) AS noted WHERE pg_catalog.current_setting('possync_bridge.in_group', true) = 'on'"),
        "{sql}"
    );
    assert!(
        sql.contains("WHERE EXISTS (SELECT FROM k0) AND pg_catalog.current_setting('possync_bridge.in_group', true) = 'on')"),
        "{sql}"
    );
    // without note_documents (an older ERP) the notes are left out
    let older = group_sql(
        m.documents(),
        &["bigint".to_string()],
        &touched,
        false,
        crate::document::Json::Builtin,
    );
    assert!(!older.contains("note_documents"), "{older}");
    assert!(
        older.ends_with(
            ")::jsonb)::text WHERE pg_catalog.current_setting('possync_bridge.in_group', true) = 'on'"
        ),
        "{older}"
    );
}

#[test]
fn the_mirror_ddl_keeps_the_pos_key_and_indexes_parent_columns() {
    let mut s = shape();
    s.index = vec!["state".into()];
    let sql = ddl("possync_pos_east", &[s]);
    assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"possync_pos_east\";"));
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"possync_pos_east\".\"pos_order\" (\"id\" bigint, \"state\" text, \"note\" text, PRIMARY KEY (\"id\"));"), "{sql}");
    assert!(sql.contains("ADD COLUMN IF NOT EXISTS \"note\" text;"));
    assert!(sql.contains("CREATE INDEX IF NOT EXISTS \"pos_order_state_idx\" ON \"possync_pos_east\".\"pos_order\" (\"state\");"));
}

#[test]
fn schemas_are_named_after_the_source() {
    assert_eq!(schema_of("Store-42"), "possync_pos_store_42");
}

#[test]
fn every_statement_that_writes_the_mirror_writes_only_inside_a_group() {
    let poster = DocumentPoster {
        schema: "possync_pos_east".into(),
        shapes: vec![shape()],
        documents: Vec::new(),
        queries: Vec::new(),
        key_types: Vec::new(),
        statements: Mutex::new(HashMap::new()),
        note_documents: true,
        group: String::new(),
        touched_shapes: Vec::new(),
        through: Vec::new(),
        last_done: Mutex::new(None),
        shape_index: HashMap::from([("shop.pos_order".to_string(), 0)]),
        routes: vec![Route::default()],
    };
    let changes = [
        change(ChangeOp::Truncate, json!({}), None),
        change(
            ChangeOp::Insert,
            json!({"id": 1, "state": "draft", "note": null}),
            None,
        ),
        change(
            ChangeOp::Update,
            json!({"id": 2, "state": "paid", "note": "x"}),
            None,
        ),
        change(ChangeOp::Update, json!({"id": 3, "state": "paid"}), None),
        change(ChangeOp::Delete, json!({"id": 4}), None),
    ];
    let writes = MirrorWrites::collect(&[shape()], changes.iter());
    let statements = poster.mirror_statements(&writes, true);
    // the truncate, the delete, the insert of the new row, the upsert and the partial update
    assert_eq!(statements.len(), 5);
    for p in &statements {
        assert!(p.sql.contains(IN_GROUP), "{}", p.sql);
    }
    assert!(statements
        .iter()
        .any(|p| p.sql.starts_with("INSERT") && !p.sql.contains("ON CONFLICT")));
    // without `fresh` every complete row is an upsert
    let upserts = poster.mirror_statements(&writes, false);
    assert!(upserts
        .iter()
        .filter(|p| p.sql.starts_with("INSERT"))
        .all(|p| p.sql.contains("ON CONFLICT")));
}

/// The normalized mapping's poster over hand-made shapes, without an ERP.
fn normalized_poster() -> DocumentPoster {
    let m = match crate::mapping::Mapping::from_toml(include_str!("../../mappings/normalized.toml"))
    {
        Ok(m) => m,
        Err(e) => panic!("normalized.toml: {e}"),
    };
    let cols = |c: &[(&str, &str)]| -> Vec<(String, String)> {
        c.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    let table = |name: &str, columns: Vec<(String, String)>, key: &[&str]| TableShape {
        name: name.into(),
        pos_table: format!("shop.{name}"),
        columns,
        key: key.iter().map(|k| k.to_string()).collect(),
        replica_identity: 'd',
        index: vec![],
        copy: true,
    };
    let shapes = vec![
        table(
            "pos_order",
            cols(&[
                ("id", "bigint"),
                ("till_id", "integer"),
                ("receipt_no", "bigint"),
                ("state", "text"),
                ("date_order", "timestamp with time zone"),
                ("refund_of", "bigint"),
                ("currency", "character(3)"),
                ("note", "text"),
            ]),
            &["id"],
        ),
        table(
            "pos_order_line",
            cols(&[
                ("id", "bigint"),
                ("order_id", "bigint"),
                ("product_id", "integer"),
                ("qty", "numeric(12,3)"),
                ("price_unit", "numeric(12,2)"),
                ("discount_pct", "numeric(5,2)"),
                ("price_subtotal", "numeric(14,2)"),
            ]),
            &["id"],
        ),
        table(
            "pos_order_line_tax",
            cols(&[
                ("line_id", "bigint"),
                ("tax_id", "integer"),
                ("amount", "numeric(14,2)"),
            ]),
            &["line_id", "tax_id"],
        ),
        table(
            "pos_payment",
            cols(&[
                ("id", "bigint"),
                ("order_id", "bigint"),
                ("method_id", "integer"),
                ("amount", "numeric(14,2)"),
                ("paid_at", "timestamp with time zone"),
            ]),
            &["id"],
        ),
    ];
    let mut documents = m.documents().to_vec();
    let through = match resolve_through(&mut documents, &shapes) {
        Ok(t) => t,
        Err(e) => panic!("through: {e}"),
    };
    DocumentPoster {
        schema: "possync_pos_benchshop".into(),
        queries: Vec::new(),
        key_types: vec!["bigint".into()],
        statements: Mutex::new(HashMap::new()),
        note_documents: true,
        group: String::new(),
        touched_shapes: vec![vec![2]],
        through,
        last_done: Mutex::new(None),
        shape_index: shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.pos_table.clone(), i))
            .collect(),
        routes: shapes.iter().map(|s| Route::of(s, &documents)).collect(),
        shapes,
        documents,
    }
}

/// `n` orders as the bench's POS writes them: drafted with 3 lines, their tax rows and a payment, then paid.
fn orders(n: i64) -> Vec<PosTransaction> {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let ch = |table: &str, op: ChangeOp, row: Value| Change {
        table: format!("shop.{table}"),
        op,
        row: obj(row),
        old: None,
    };
    (1..=n)
        .map(|o| {
            let order = |state: &str| {
                json!({"id": o, "till_id": 1, "receipt_no": o, "state": state,
                       "date_order": "2026-11-26T14:03:07.12+00:00", "refund_of": null, "currency": "USD", "note": null})
            };
            let mut changes = vec![ch("pos_order", ChangeOp::Insert, order("draft"))];
            for l in 0..3 {
                let line = o * 3 + l;
                changes.push(ch(
                    "pos_order_line",
                    ChangeOp::Insert,
                    json!({"id": line, "order_id": o, "product_id": 1 + l, "qty": "2.000",
                           "price_unit": "19.99", "discount_pct": "0.00", "price_subtotal": "39.98"}),
                ));
                changes.push(ch(
                    "pos_order_line_tax",
                    ChangeOp::Insert,
                    json!({"line_id": line, "tax_id": 1, "amount": "3.55"}),
                ));
            }
            changes.push(ch(
                "pos_payment",
                ChangeOp::Insert,
                json!({"id": o, "order_id": o, "method_id": 1, "amount": "130.59",
                       "paid_at": "2026-11-26T14:03:07.12+00:00"}),
            ));
            changes.push(ch("pos_order", ChangeOp::Update, order("paid")));
            PosTransaction {
                commit_lsn: crate::lsn::Lsn(o as u64 * 1000),
                end_lsn: crate::lsn::Lsn(o as u64 * 1000 + 8),
                commit_time: 0,
                events: Vec::new(),
                changes,
                spilled: None,
            }
        })
        .collect()
}

#[test]
fn a_group_of_orders_is_planned_as_the_mirror_writes_and_one_group_statement() {
    let poster = normalized_poster();
    let txns = orders(300);
    let writes = MirrorWrites::collect(&poster.shapes, txns.iter().flat_map(|t| t.changes.iter()));
    let planned = match poster.plan("benchshop", "0/4B0", &txns, &writes) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    // ARM, one plain INSERT per table (every row is new), the group statement
    assert_eq!(planned.len(), 6);
    assert!(planned[0].sql.starts_with("SELECT c::text"));
    assert_eq!(
        planned[1..5]
            .iter()
            .filter(|p| p.sql.starts_with("INSERT") && !p.sql.contains("ON CONFLICT"))
            .count(),
        4
    );
    // $1..$4, the 300 orders' keys and transactions, and the tax rows (3 columns and their transactions)
    assert_eq!(planned[5].params.len(), 4 + 2 + 4);
}

#[test]
fn a_tax_row_written_with_its_line_is_routed_by_the_bridge_and_one_alone_by_the_mirror() {
    let poster = normalized_poster();
    let mut txns = orders(3);
    // a later transaction changes a tax row of a line the group does not carry (one of an earlier order)
    let mut alone = orders(1).remove(0);
    alone.changes = vec![Change {
        table: "shop.pos_order_line_tax".into(),
        op: ChangeOp::Update,
        row: match json!({"line_id": 99, "tax_id": 1, "amount": "3.56"}) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        old: None,
    }];
    txns.push(alone);
    let mut changes: Vec<(usize, &Change)> = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        changes.extend(t.changes.iter().map(|c| (i, c)));
    }
    let mut touched = Touched::new(1);
    let indirect = poster.direct_touches(&changes, &mut touched);
    // the tax rows that came with their lines ask nothing of the mirror; the one alone does
    let images: Vec<usize> = indirect.values().flatten().map(|(i, _)| *i).collect();
    assert_eq!(images, vec![3], "{indirect:?}");
    // each order is touched by its own transaction
    let mut keys: Vec<(String, usize)> =
        touched.0[0].iter().map(|(k, &a)| (k.clone(), a)).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![("1".into(), 0), ("2".into(), 1), ("3".into(), 2)]
    );
    // in one group with the line it hangs from, the lone tax row's order is found without the mirror, at the
    // tax row's transaction
    let mut txns = orders(2);
    let mut later = orders(1).remove(0);
    later.changes = vec![Change {
        table: "shop.pos_order_line_tax".into(),
        op: ChangeOp::Insert,
        row: match json!({"line_id": 6, "tax_id": 2, "amount": "1.00"}) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        old: None,
    }];
    txns.push(later);
    let mut changes: Vec<(usize, &Change)> = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        changes.extend(t.changes.iter().map(|c| (i, c)));
    }
    let mut touched = Touched::new(1);
    let indirect = poster.direct_touches(&changes, &mut touched);
    assert!(indirect.values().all(Vec::is_empty), "{indirect:?}");
    let mut keys: Vec<(String, usize)> =
        touched.0[0].iter().map(|(k, &a)| (k.clone(), a)).collect();
    keys.sort();
    assert_eq!(keys, vec![("1".into(), 0), ("2".into(), 2)]);
}

#[test]
fn a_row_image_gives_its_columns_values_in_the_shapes_order() {
    let columns: Vec<(String, String)> = ["id", "state", "amount", "note"]
        .iter()
        .map(|c| (c.to_string(), "text".to_string()))
        .collect();
    let row = match json!({"amount": "1.50", "extra": 1, "id": 7, "state": "paid", "zz": null}) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut out = Vec::new();
    values_of(&row, &columns, &by_name(&columns), &mut out);
    assert_eq!(
        out,
        vec![
            Some(&json!(7)),
            Some(&json!("paid")),
            Some(&json!("1.50")),
            None
        ]
    );
}
