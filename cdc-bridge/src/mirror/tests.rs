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
    let t = &w.tables["pos_order"];
    assert!(!t.emptied);
    match &t.rows["1\u{1f}"] {
        RowWrite::Full(r) => {
            assert_eq!(r["state"], "done");
            assert!(r.contains_key("note"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&t.rows["2\u{1f}"], RowWrite::Delete(_)));
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
    let t = &w.tables["pos_order"];
    assert!(matches!(&t.rows["5\u{1f}"], RowWrite::Delete(_)));
    assert!(matches!(&t.rows["6\u{1f}"], RowWrite::Full(_)));
    let mut truncated = changes.to_vec();
    truncated.push(change(ChangeOp::Truncate, json!({}), None));
    truncated.push(change(
        ChangeOp::Insert,
        json!({"id": 9, "state": "draft", "note": null}),
        None,
    ));
    let w = MirrorWrites::collect(&[shape()], truncated.iter());
    let t = &w.tables["pos_order"];
    assert!(t.emptied);
    assert_eq!(t.rows.len(), 1);
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
