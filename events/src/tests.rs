use rust_decimal::Decimal;
use serde_json::json;

use super::*;

fn dec(s: &str) -> Decimal {
    s.parse().expect("test decimal")
}

fn sale() -> Value {
    json!({ "event_id": "S042-3-000123", "kind": "sale", "source": "pos-east",
      "location": "S042", "register": "3", "sequence": 123,
      "business_date": "2026-11-26", "occurred_at": "2026-11-26T14:03:07.120Z", "currency": "USD",
      "lines":   [ {"line": 1, "sku": "TSHIRT-M", "qty": "2", "unit_price": 19.99, "discount": "4.00",
                    "tax": "2.88", "tax_code": "NY"} ],
      "tenders": [ {"type": "card", "amount": "38.86"} ] })
}

fn reason(v: Value) -> String {
    Event::from_json(&v)
        .expect_err("should be malformed")
        .to_string()
}

#[test]
fn parses_the_contract_example_exactly() {
    let ev = Event::from_json(&sale()).expect("valid");
    assert_eq!(ev.kind, EventKind::Sale);
    assert_eq!(ev.sequence, Some(123));
    let l = &ev.lines[0];
    assert_eq!(l.unit_price, dec("19.99"));
    assert_eq!(l.net(), dec("35.98"));
    assert_eq!(ev.sold_net() + l.tax, ev.tendered());
}

#[test]
fn json_numbers_keep_every_digit() {
    let mut v = sale();
    v["lines"][0]["unit_price"] = serde_json::from_str("0.10000000000000000555").expect("json");
    let ev = Event::from_json(&v).expect("valid");
    assert_eq!(ev.lines[0].unit_price, dec("0.10000000000000000555"));
}

#[test]
fn round_trips_through_json() {
    let ev = Event::from_json(&sale()).expect("valid");
    let again = Event::from_json(&ev.to_json()).expect("valid again");
    assert_eq!(ev, again);
}

#[test]
fn reasons_name_the_field() {
    let mut v = sale();
    v["lines"][0]["qty"] = json!("two");
    assert_eq!(reason(v), "lines[0].qty: \"two\" is not a number");

    let mut v = sale();
    v.as_object_mut().expect("object").remove("location");
    assert_eq!(reason(v), "location: is required");

    let mut v = sale();
    v["kind"] = json!("refund");
    assert!(reason(v).starts_with("kind: \"refund\" is not an event kind"));

    assert!(reason(json!([1, 2])).contains("expected a JSON object, got an array"));
    assert!(reason(json!("x")).contains("expected a JSON object, got a string"));

    let mut v = sale();
    v["business_date"] = json!("2026-02-30");
    assert!(reason(v).starts_with("business_date:"));

    let mut v = sale();
    v["occurred_at"] = json!("yesterday");
    assert!(reason(v).starts_with("occurred_at:"));

    let mut v = sale();
    v["lines"][0]["qty"] = json!(-1);
    assert!(reason(v).starts_with("lines[0].qty: is -1"));

    let mut v = sale();
    v.as_object_mut().expect("object").remove("tenders");
    assert!(reason(v).starts_with("tenders: is required"));
}

#[test]
fn kind_specific_fields_are_required() {
    let t = json!({"event_id": "t1", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
        "transfer_id": "T1", "lines": [{"sku": "A", "qty": 1}]});
    assert_eq!(reason(t), "to_location: is required for a transfer_out");
    let r = json!({"event_id": "r1", "kind": "receipt", "location": "DC1", "business_date": "2026-11-26",
        "lines": [{"sku": "A", "qty": 1}]});
    assert_eq!(reason(r), "lines[0].unit_cost: is required");
    let d = json!({"event_id": "d1", "kind": "day_close", "location": "S1", "register": "1",
        "business_date": "2026-11-26", "totals": {"net_sales": "10", "tenders": {"cash": "abc"}}});
    assert_eq!(reason(d), "totals.tenders.cash: \"abc\" is not a number");
}

#[test]
fn return_and_receipt_inherit_event_level_references() {
    let r = json!({"event_id": "r1", "kind": "return", "location": "S1", "business_date": "2026-11-26",
        "original_event_id": "s1", "lines": [{"sku": "A", "qty": 1, "unit_price": 5}],
        "tenders": [{"type": "cash", "amount": -5}]});
    let ev = Event::from_json(&r).expect("valid");
    assert!(ev.lines[0].returned);
    assert_eq!(ev.lines[0].original_event_id.as_deref(), Some("s1"));
}

#[test]
fn timestamps() {
    for ok in [
        "2026-11-26T14:03:07Z",
        "2026-11-26 14:03:07.5+01:00",
        "2026-11-26T14:03:07-0500",
        "2026-11-26T14:03:07",
    ] {
        assert!(parse_ok_ts(ok), "{ok}");
    }
    for bad in [
        "2026-11-26",
        "2026-11-26T25:00:00Z",
        "2026-11-26T14:03:07.Z",
        "2026-11-26T14:03:07+1",
    ] {
        assert!(!parse_ok_ts(bad), "{bad}");
    }
}

fn parse_ok_ts(ts: &str) -> bool {
    let mut v = sale();
    v["occurred_at"] = json!(ts);
    Event::from_json(&v).is_ok()
}

#[test]
fn rows_the_bridge_could_not_map_say_why() {
    let v = json!({"event_id": "pos:pos.sale:0/1:0", "kind": "unmapped", "op": "update",
                   "raw": {"txn_id": "T1"}, "reason": "an update of pos.sale is not an event"});
    assert_eq!(
        reason(v),
        "the bridge could not map this POS row: an update of pos.sale is not an event"
    );
}
