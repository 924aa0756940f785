use serde_json::json;

use rust_decimal::Decimal;

use super::*;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal literal")
}

fn row(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("test row must be an object, got {other}"),
    }
}

fn insert(table: &str, v: Value) -> Change {
    Change {
        table: table.into(),
        op: ChangeOp::Insert,
        row: row(v),
        old: None,
    }
}

fn sale_header(txn: &str, kind: &str) -> Change {
    insert(
        "pos.sale",
        json!({"txn_id": txn, "store_id": "S042", "register_id": "3", "seq": 123, "kind": kind,
               "business_date": "2026-11-26", "occurred_at": "2026-11-26T14:03:07.12+00:00",
               "currency": "USD", "original_txn_id": null}),
    )
}

fn sale_line(txn: &str, line: i64, sku: &str, qty: &str, price: &str) -> Change {
    insert(
        "pos.sale_line",
        json!({"txn_id": txn, "line_no": line, "sku": sku, "qty": qty, "unit_price": price,
               "discount": "0.00", "tax": "1.00", "tax_code": "NY", "returned": false}),
    )
}

fn tender(txn: &str, no: i64, kind: &str, amount: &str) -> Change {
    insert(
        "pos.tender",
        json!({"txn_id": txn, "tender_no": no, "tender_type": kind, "amount": amount}),
    )
}

const LSN: Lsn = Lsn(0x1975EF8);

#[test]
fn the_reference_mapping_is_valid_and_names_the_reference_tables() {
    let m = Mapping::reference();
    assert_eq!(
        m.tables(),
        [
            "pos.sale",
            "pos.sale_line",
            "pos.tender",
            "pos.stock_event",
            "pos.stock_event_line",
            "pos.day_close",
            "pos.outbox"
        ]
    );
}

#[test]
fn a_sale_header_lines_and_tenders_make_one_event_in_line_order() {
    let changes = vec![
        sale_header("T1", "sale"),
        sale_line("T1", 2, "JEANS-32", "1", "49.50"),
        tender("T1", 1, "card", "70.48"),
        sale_line("T1", 1, "TSHIRT-M", "1", "19.98"),
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event_id"], "T1");
    assert_eq!(e["kind"], "sale");
    assert_eq!(e["source"], "east");
    assert_eq!(e["location"], "S042");
    assert_eq!(e["register"], "3");
    assert_eq!(e["sequence"], 123);
    assert_eq!(e["business_date"], "2026-11-26");
    let skus: Vec<&str> = e["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["sku"].as_str())
        .collect();
    assert_eq!(skus, ["TSHIRT-M", "JEANS-32"]);
    // the payload is the contract's own serialization and parses back to the same totals
    let parsed = Event::from_json(e).expect("well-formed");
    assert_eq!(parsed.sold_net(), d("69.48"));
    assert_eq!(parsed.tendered(), d("70.48"));
    assert_eq!(parsed.lines[0].tax, d("1.00"));
}

#[test]
fn two_sales_in_one_transaction_get_their_own_lines() {
    let changes = vec![
        sale_header("A", "sale"),
        sale_header("B", "sale"),
        sale_line("B", 1, "SKU-B", "2", "5"),
        sale_line("A", 1, "SKU-A", "1", "7"),
        tender("A", 1, "cash", "8"),
        tender("B", 1, "cash", "12"),
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_id"], "A");
    assert_eq!(events[0]["lines"][0]["sku"], "SKU-A");
    assert_eq!(events[1]["lines"][0]["sku"], "SKU-B");
    assert_eq!(events[1]["tenders"][0]["amount"], "12");
}

#[test]
fn rows_without_their_header_and_updates_and_deletes_become_unmapped_with_the_raw_row() {
    let mut update = sale_line("T9", 1, "X", "1", "1");
    update.op = ChangeOp::Update;
    let mut delete = tender("T9", 1, "cash", "1");
    delete.op = ChangeOp::Delete;
    let truncate = Change {
        table: "pos.outbox".into(),
        op: ChangeOp::Truncate,
        row: Map::new(),
        old: None,
    };
    let changes = vec![
        sale_line("T8", 1, "ORPHAN", "1", "2"),
        update,
        delete,
        truncate,
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 4);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["kind"], "unmapped");
        assert_eq!(
            e["event_id"],
            format!("east:{}:0/1975EF8:{i}", changes[i].table)
        );
        assert!(Event::from_json(e).is_err(), "the extension must reject it");
    }
    assert_eq!(events[0]["raw"]["sku"], "ORPHAN");
    assert!(events[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("without its header")));
    assert_eq!(events[1]["op"], "update");
    assert_eq!(events[2]["op"], "delete");
    assert_eq!(events[3]["op"], "truncate");
}

#[test]
fn a_header_that_is_not_a_well_formed_event_is_unmapped_with_header_and_children() {
    // a sale with no lines at all
    let changes = vec![sale_header("T2", "sale"), tender("T2", 1, "cash", "5")];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["kind"], "unmapped");
    assert_eq!(e["raw"]["pos.sale"]["txn_id"], "T2");
    assert_eq!(e["raw"]["pos.tender"][0]["amount"], "5");
    assert!(e["reason"].as_str().is_some_and(|r| r.contains("lines")));
}

#[test]
fn stock_events_map_ref_and_qty_by_kind() {
    let changes = vec![
        insert(
            "pos.stock_event",
            json!({"event_id": "C1", "store_id": "S042", "kind": "count", "ref": null,
                   "other_store_id": null, "reason": null, "business_date": "2026-11-26",
                   "occurred_at": "2026-11-26T18:00:00+00:00"}),
        ),
        insert(
            "pos.stock_event_line",
            json!({"event_id": "C1", "line_no": 1, "sku": "TSHIRT-M", "qty": "7", "unit_cost": null}),
        ),
        insert(
            "pos.stock_event",
            json!({"event_id": "X1", "store_id": "S042", "kind": "transfer_out", "ref": "TR-9",
                   "other_store_id": "S043", "reason": null, "business_date": "2026-11-26",
                   "occurred_at": "2026-11-26T18:00:00+00:00"}),
        ),
        insert(
            "pos.stock_event_line",
            json!({"event_id": "X1", "line_no": 1, "sku": "TSHIRT-M", "qty": "2", "unit_cost": null}),
        ),
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["kind"], "count");
    assert_eq!(events[0]["lines"][0]["counted_qty"], "7");
    assert!(events[0]["lines"][0].get("qty").is_none());
    assert_eq!(events[1]["transfer_id"], "TR-9");
    assert_eq!(events[1]["to_location"], "S043");
    assert!(events[1].get("from_location").is_none());
    assert!(events[1].get("supply_id").is_none());
    assert_eq!(events[1]["lines"][0]["qty"], "2");
}

#[test]
fn day_close_builds_totals_and_an_id_from_a_template() {
    let changes = vec![insert(
        "pos.day_close",
        json!({"store_id": "S042", "register_id": "3", "business_date": "2026-11-26",
               "net_sales": "1234.50", "tax": "98.10", "txn_count": 40, "last_seq": 163,
               "tenders": {"cash": "300.00", "card": "1032.60"}}),
    )];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    let e = &events[0];
    assert_eq!(e["event_id"], "S042:3:2026-11-26:day_close");
    assert_eq!(e["kind"], "day_close");
    let parsed = Event::from_json(e).expect("well-formed day close");
    let totals = parsed.totals.expect("totals");
    assert_eq!(totals.net_sales, d("1234.50"));
    assert_eq!(totals.transaction_count, 40);
    assert_eq!(totals.last_sequence, 163);
    assert_eq!(totals.tenders.len(), 2);
}

#[test]
fn outbox_payloads_pass_through_unchanged_even_when_not_events() {
    let changes = vec![
        insert(
            "pos.outbox",
            json!({"id": 1, "payload": {"event_id": "O1", "kind": "receipt", "anything": [1, 2]}}),
        ),
        insert("pos.outbox", json!({"id": 2, "payload": [1, 2, 3]})),
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(
        events,
        vec![
            json!({"event_id": "O1", "kind": "receipt", "anything": [1, 2]}),
            json!([1, 2, 3])
        ]
    );
}

#[test]
fn a_mapping_file_adapts_another_schema() {
    let m = Mapping::from_toml(
        r#"
        [[event]]
        table = "till.receipt"
        key = "rid"
        event_id = "R-{shop}-{rid}"
        kind = { constant = "sale" }
        [event.fields]
        location = "shop"
        business_date = "day"
        [[event.children]]
        table = "till.item"
        key = "receipt"
        into = "lines"
        [event.children.fields]
        sku = "article"
        qty = "n"
        unit_price = "price"
        [[event.children]]
        table = "till.payment"
        key = "receipt"
        into = "tenders"
        [event.children.fields]
        type = "how"
        amount = "paid"
        "#,
    )
    .expect("valid mapping");
    assert_eq!(m.tables(), ["till.receipt", "till.item", "till.payment"]);
    let changes = vec![
        insert(
            "till.receipt",
            json!({"rid": 7, "shop": "S1", "day": "2026-01-02"}),
        ),
        insert(
            "till.item",
            json!({"receipt": 7, "article": "A", "n": "3", "price": "2.50"}),
        ),
        insert(
            "till.payment",
            json!({"receipt": 7, "how": "cash", "paid": "7.50"}),
        ),
    ];
    let events = m.events_of("s1", LSN, &changes);
    assert_eq!(events.len(), 1);
    let ev = Event::from_json(&events[0]).expect("well-formed");
    assert_eq!(ev.event_id, "R-S1-7");
    assert_eq!(ev.location, "S1");
    assert_eq!(ev.sold_net(), d("7.50"));
    assert_eq!(ev.tendered(), d("7.50"));
}

#[test]
fn invalid_mapping_files_say_what_is_wrong() {
    let both = Mapping::from_toml(
        r#"[[event]]
        table = "a.b"
        event_id = "id"
        kind = { column = "k", constant = "sale" }"#,
    );
    assert!(both.is_err_and(|e| e.to_string().contains("exactly one of column or constant")));
    let into = Mapping::from_toml(
        r#"[[event]]
        table = "a.b"
        key = "id"
        event_id = "id"
        kind = { constant = "sale" }
        [[event.children]]
        table = "a.c"
        key = "b_id"
        into = "items""#,
    );
    assert!(into.is_err_and(|e| e.to_string().contains("\"lines\" or \"tenders\"")));
    assert!(Mapping::from_toml("").is_err());
    assert!(Mapping::from_toml("[[outbox]]\ntable = \"nodot\"\ncolumn = \"p\"").is_err());
    assert!(Mapping::from_toml("[[outbox]]\ntable = \"a.b\"\ncolum = \"p\"").is_err());
}

#[test]
fn timestamps_become_rfc3339() {
    assert_eq!(
        rfc3339("2026-11-26 14:03:07.12+00"),
        "2026-11-26T14:03:07.12+00:00"
    );
    assert_eq!(
        rfc3339("2026-11-26 14:03:07+05:30"),
        "2026-11-26T14:03:07+05:30"
    );
}

#[test]
fn a_megabyte_value_copied_into_a_reason_is_cut_with_its_length_noted() {
    // a quantity of a million digits: the contract's reason quotes it in full
    let huge = format!("1{}", "0".repeat(1_000_000));
    let changes = vec![
        sale_header("T9", "sale"),
        sale_line("T9", 1, "SKU1", &huge, "1"),
        tender("T9", 1, "cash", "1"),
    ];
    let events = Mapping::reference().events_of("east", LSN, &changes);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["kind"], "unmapped");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason.chars().count(),
        crate::pgerr::REASON_MAX_CHARS,
        "{}",
        &reason[..reason.len().min(200)]
    );
    assert!(reason.starts_with("the pos.sale row does not make a well-formed event"));
    assert!(reason.ends_with("characters in all]"), "{reason}");
    // the value itself is kept whole in the raw row
    assert_eq!(
        e["raw"]["pos.sale_line"][0]["qty"].as_str(),
        Some(huge.as_str())
    );
}
