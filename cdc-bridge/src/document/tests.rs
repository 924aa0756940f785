use super::*;
use crate::mapping::Mapping;

const NORMALIZED: &str = include_str!("../../mappings/normalized.toml");

fn normalized() -> Mapping {
    match Mapping::from_toml(NORMALIZED) {
        Ok(m) => m,
        Err(e) => panic!("normalized.toml: {e}"),
    }
}

#[test]
fn the_normalized_mapping_mirrors_its_tables_and_publishes_them() {
    let m = normalized();
    assert_eq!(m.mirrors().len(), 9);
    assert_eq!(m.documents().len(), 1);
    assert!(m.tables().contains(&"shop.pos_order_line_tax".to_string()));
    assert!(m.is_mirrored("shop.product"));
    assert!(!m.is_mirrored("pos.sale"));
}

#[test]
fn a_document_compiles_to_one_query_over_the_mirror_with_lookups_as_left_joins() {
    let m = normalized();
    let d = &m.documents()[0];
    let sql = compile(
        d,
        Target::Erp {
            key_type: "bigint",
            json: Json::Builtin,
        },
    );
    assert!(sql.starts_with("SELECT (o.id)::text, s.state,"), "{sql}");
    // the keys are cast to the key's type, so that its index finds them
    assert!(
        sql.ends_with("WHERE o.id = ANY($1::text[]::bigint[])"),
        "{sql}"
    );
    assert!(
        sql.contains("LEFT JOIN till AS t ON (t.id = o.till_id)"),
        "{sql}"
    );
    assert!(
        sql.contains("LEFT JOIN product AS p ON (p.id = l.product_id)"),
        "{sql}"
    );
    assert!(sql.contains("WHERE l.order_id = o.id)"), "{sql}");
    assert!(sql.contains("'source'::text, ($2::text)"), "{sql}");
    assert!(
        sql.contains("THEN json_strip_nulls(json_build_object("),
        "{sql}"
    );
    // the void event carries only what a void has
    let void_part = &sql[sql.find("WHEN 'void' THEN").unwrap_or(0)..];
    assert!(void_part.contains("'kind'::text, ('void')"), "{void_part}");
    assert!(
        !void_part[..void_part.find(" END)::text").unwrap_or(void_part.len())].contains("'lines'")
    );
    let dry = compile(d, Target::PosDryRun { limit: 7 });
    assert!(
        dry.ends_with("WHERE s.state <> 'pending' ORDER BY o.id DESC LIMIT 7"),
        "{dry}"
    );
    assert!(dry.contains("'source'::text, ($1::text)"), "{dry}");
    // against possync 0.6.0, the same objects in one pass each, with nothing to strip afterwards
    let ours = compile(
        d,
        Target::Erp {
            key_type: "bigint",
            json: Json::Possync,
        },
    );
    assert!(
        ours.contains("THEN possync.json_object_present('business_date'::text,"),
        "{ours}"
    );
    assert!(
        ours.contains("json_agg(possync.json_object_present('discount'::text,"),
        "{ours}"
    );
    assert!(
        !ours.contains("json_build_object") && !ours.contains("json_strip_nulls"),
        "{ours}"
    );
    // a dry run runs in the POS, which has no possync
    assert!(!dry.contains("possync."), "{dry}");
}

#[test]
fn dotted_fields_make_nested_objects() {
    let fields = [
        ("totals.tax", "x.tax".into()),
        ("totals.net_sales", "x.net".into()),
        ("location", "x.loc".into()),
    ];
    assert_eq!(
        build_object(&fields, Json::Builtin),
        "json_build_object('location'::text, (x.loc), 'totals'::text, json_build_object('net_sales'::text, (x.net), 'tax'::text, (x.tax)))"
    );
    assert_eq!(
        build_object(&fields, Json::Possync),
        "possync.json_object_present('location'::text, (x.loc), 'totals'::text, possync.json_object_present('net_sales'::text, (x.net), 'tax'::text, (x.tax)))"
    );
    // json_object_present takes at least one pair
    assert_eq!(build_object(&[], Json::Possync), "'{}'::json");
    assert_eq!(build_object(&[], Json::Builtin), "json_build_object()");
}

#[test]
fn touches_come_from_the_header_its_children_and_touched_by() {
    let m = normalized();
    let d = &m.documents()[0];
    let row = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    assert_eq!(
        direct_touches(
            d,
            "pos_order",
            &row(serde_json::json!({"id": 42, "state": "paid"}))
        ),
        ["42"]
    );
    assert_eq!(
        direct_touches(
            d,
            "pos_order_line",
            &row(serde_json::json!({"id": 7, "order_id": 42}))
        ),
        ["42"]
    );
    assert_eq!(
        direct_touches(
            d,
            "pos_payment",
            &row(serde_json::json!({"id": 9, "order_id": "A-1"}))
        ),
        ["A-1"]
    );
    assert!(direct_touches(d, "product", &row(serde_json::json!({"id": 1}))).is_empty());
    let columns = vec![
        ("line_id".to_string(), "bigint".to_string()),
        ("tax_id".to_string(), "integer".to_string()),
        ("amount".to_string(), "numeric(14,2)".to_string()),
    ];
    // the example gives touched_by as `through` its line: the SQL finds the line's order (the key, id, comes
    // from the mirror's shape when the poster is prepared)
    assert_eq!(d.touched_by[0].header, None);
    let mut resolved = d.touched_by[0].clone();
    resolved.header = resolved.header_sql(d, "id");
    let sql = touched_by_sql(&resolved, &columns);
    assert!(
        sql.contains("((SELECT _possync_through.order_id FROM pos_order_line AS _possync_through WHERE _possync_through.id = pos_order_line_tax.line_id))"),
        "{sql}"
    );
    // the images come as one text array per column, cast to the mirror's types, named as the table
    assert!(
        sql.contains(
            "(SELECT u.c0::bigint AS \"line_id\", u.c1::integer AS \"tax_id\", u.c2::numeric(14,2) AS \"amount\", u.i AS _possync_txn \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS u(c0, c1, c2, i)) AS pos_order_line_tax"
        ),
        "{sql}"
    );
    // the header SQL runs once per image: the key's filter is not pushed into the images' query
    assert!(
        sql.starts_with(
            "SELECT k, max(i) FROM (SELECT k, i FROM (SELECT ((SELECT _possync_through.order_id"
        ),
        "{sql}"
    );
    assert!(
        sql.contains(" OFFSET 0) AS tb) AS touched(k, i) WHERE k IS NOT NULL GROUP BY k"),
        "{sql}"
    );
}

#[test]
fn row_images_become_the_text_their_column_types_read() {
    use serde_json::json;
    assert_eq!(text_of(None, false), None);
    assert_eq!(text_of(Some(&json!(null)), false), None);
    assert_eq!(
        text_of(Some(&json!("draft")), false).as_deref(),
        Some("draft")
    );
    assert_eq!(text_of(Some(&json!(42)), false).as_deref(), Some("42"));
    assert_eq!(text_of(Some(&json!(true)), false).as_deref(), Some("true"));
    // numbers keep their digits (arbitrary precision)
    let n: serde_json::Value = serde_json::from_str("19.990").unwrap_or_default();
    assert_eq!(text_of(Some(&n), false).as_deref(), Some("19.990"));
    // a json or jsonb column reads JSON: a string stays a JSON string
    assert_eq!(text_of(Some(&json!("a")), true).as_deref(), Some("\"a\""));
    assert_eq!(
        text_of(Some(&json!({"k": [1, 2]})), true).as_deref(),
        Some("{\"k\":[1,2]}")
    );
}

fn invalid(toml: &str) -> String {
    match Mapping::from_toml(toml) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_document_over_a_table_that_is_not_mirrored_is_refused_naming_it() {
    let base = "[[mirror]]\ntable = \"shop.pos_order\"\n[[document]]\nname = \"o\"\ntable = \"pos_order\"\nkey = \"id\"\nfinal = \"true\"\n";
    let e = invalid(&format!(
        "{base}lookups = [{{ alias = \"t\", table = \"tills\", on = \"true\" }}]\n[document.fields]\nevent_id = \"1\"\nkind = \"'sale'\"\n"
    ));
    assert!(e.contains("table tills is not mirrored"), "{e}");
    let e = invalid(&format!("{base}[document.fields]\nevent_id = \"1\"\n"));
    assert!(e.contains("fields.kind is required"), "{e}");
    let e = invalid("[[mirror]]\ntable = \"a.t\"\n[[mirror]]\ntable = \"b.t\"\n");
    assert!(e.contains("two mirrored tables are called t"), "{e}");
    let e = invalid(&format!(
        "{base}[document.fields]\nevent_id = \"1\"\nkind = \"'sale'\"\n[[document.children]]\ninto = \"items\"\ntable = \"pos_order\"\nparent = \"id\"\n"
    ));
    assert!(e.contains("must be lines or tenders"), "{e}");
}

#[test]
fn names_postgresql_would_fold_are_quoted_in_the_generated_sql() {
    let m = Mapping::from_toml(
        r#"
[[mirror]]
table = "Sales.Orders"
[[mirror]]
table = "Sales.Order Lines"
[[document]]
name = "orders"
table = "Orders"
key = "OrderId"
final = "h.\"Status\" = 'PAID'"
[document.fields]
event_id = "h.\"OrderId\"::text"
kind = "'sale'"
[[document.children]]
into = "lines"
table = "Order Lines"
parent = "OrderId"
[document.children.fields]
sku = "c.\"Sku\""
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let d = &m.documents()[0];
    let sql = compile(
        d,
        Target::Erp {
            key_type: "integer",
            json: Json::Builtin,
        },
    );
    assert!(sql.contains("FROM \"Orders\" AS h"), "{sql}");
    assert!(
        sql.contains("FROM \"Order Lines\" AS c WHERE c.\"OrderId\" = h.\"OrderId\""),
        "{sql}"
    );
    assert!(
        sql.ends_with("WHERE h.\"OrderId\" = ANY($1::text[]::integer[])"),
        "{sql}"
    );
    assert_eq!(
        qualified_sql("Sales.Order Lines"),
        "\"Sales\".\"Order Lines\""
    );
    assert_eq!(qualified_sql("shop.pos_order"), "shop.pos_order");
    assert!(
        m.mirrors().iter().all(|t| t.copy),
        "tables are copied unless told not to"
    );
}

#[test]
fn touched_by_takes_header_sql_or_through_a_child_and_its_column() {
    let base = NORMALIZED.replace("through = \"pos_order_line\"\non = \"line_id\"", "THROUGH");
    assert!(base.contains("THROUGH"));
    let with = |spec: &str| Mapping::from_toml(&base.replace("THROUGH", spec)).map(|_| ());
    assert!(with("header = \"(SELECT 1)\"").is_ok());
    assert!(with("through = \"pos_order_line\"\non = \"line_id\"").is_ok());
    for (spec, says) in [
        ("", "needs either header, or through and on"),
        (
            "through = \"pos_order_line\"",
            "needs either header, or through and on",
        ),
        (
            "header = \"(SELECT 1)\"\nthrough = \"pos_order_line\"\non = \"line_id\"",
            "needs either header, or through and on",
        ),
        (
            "through = \"pos_order\"\non = \"line_id\"",
            "must be a table of the document's children",
        ),
        (
            "through = \"product\"\non = \"line_id\"",
            "must be a table of the document's children",
        ),
    ] {
        match with(spec) {
            Ok(()) => panic!("{spec:?} was accepted"),
            Err(e) => assert!(e.to_string().contains(says), "{spec:?}: {e}"),
        }
    }
}
