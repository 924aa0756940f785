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
    v["lines"][0]["unit_price"] = serde_json::from_str("0.123457").expect("json");
    let ev = Event::from_json(&v).expect("valid");
    assert_eq!(ev.lines[0].unit_price, dec("0.123457"));
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

fn with(path: &[&str], value: Value) -> Value {
    let mut v = sale();
    let mut at = &mut v;
    for p in &path[..path.len() - 1] {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*p],
        };
    }
    at[path[path.len() - 1]] = value;
    v
}

#[test]
fn numbers_outside_the_domain_are_rejected_naming_the_field() {
    for (path, value, expect) in [
        (
            vec!["lines", "0", "qty"],
            json!("1_0"),
            "lines[0].qty: \"1_0\" is not a number",
        ),
        (
            vec!["lines", "0", "qty"],
            json!("\u{a0}10"),
            "is not a number",
        ),
        (vec!["lines", "0", "qty"], json!(" 10"), "is not a number"),
        (vec!["lines", "0", "qty"], json!("NaN"), "is not a number"),
        (
            vec!["lines", "0", "qty"],
            json!("Infinity"),
            "is not a number",
        ),
        (
            vec!["lines", "0", "qty"],
            json!("1000000000000000"),
            "lines[0].qty: 1000000000000000 is too large",
        ),
        (
            vec!["lines", "0", "unit_price"],
            json!("5e27"),
            "lines[0].unit_price:",
        ),
        (
            vec!["lines", "0", "qty"],
            json!("0.0000000000000000000000000001"),
            "decimal places",
        ),
        (
            vec!["lines", "0", "tax"],
            json!("0.0000001"),
            "lines[0].tax: 0.0000001 has 7 decimal places",
        ),
        (
            vec!["tenders", "0", "amount"],
            json!("1000000000000"),
            "tenders[0].amount:",
        ),
        (
            vec!["sequence"],
            json!(9_223_372_036_854_775_807_i64),
            "sequence:",
        ),
        (vec!["sequence"], json!(-1), "sequence: -1 is out of range"),
    ] {
        let r = reason(with(&path, value.clone()));
        assert!(r.contains(expect), "{path:?} = {value}: {r}");
    }
    // the edges of the domain are accepted
    let ok = with(&["lines", "0", "qty"], json!("99999999.999999"));
    assert!(Event::from_json(&ok).is_ok());
    let ok = with(&["sequence"], json!(domain::WHOLE_MAX));
    assert!(Event::from_json(&ok).is_ok());
    for text in ["1", "-1.5", "+2", ".5", "5.", "1.5e2", "1E-2"] {
        assert!(parse::parse_decimal(text).is_some(), "{text}");
    }
    for text in ["", "-", ".", "e5", "1e", "1.2.3", "0x10", "1 ", "--1"] {
        assert!(parse::parse_decimal(text).is_none(), "{text}");
    }
}

#[test]
fn dates_and_timestamps_outside_the_domain_are_rejected() {
    for (field, value) in [
        ("business_date", "+026-11-26"),
        ("business_date", "2026-+1-05"),
        ("business_date", "0000-01-01"),
        ("business_date", "2026-02-29"),
        ("occurred_at", "2026-11-26T10:00:00+16:00"),
        ("occurred_at", "2026-11-26T10:00:00+05:60"),
        ("occurred_at", "2026-11-26T+1:00:00Z"),
    ] {
        let r = reason(with(&[field], json!(value)));
        assert!(r.starts_with(field), "{field} = {value}: {r}");
    }
    assert!(Event::from_json(&with(&["occurred_at"], json!("2026-11-26T10:00:00-15:59"))).is_ok());
}

#[test]
fn text_outside_the_domain_is_rejected_and_not_used_as_an_id() {
    let long = "x".repeat(domain::ID_MAX_CHARS + 1);
    for field in ["event_id", "location", "register"] {
        let r = reason(with(&[field], json!(long)));
        assert!(r.starts_with(field) && r.contains("characters long"), "{r}");
    }
    let r = reason(with(&["lines", "0", "sku"], json!("A\u{0}B")));
    assert!(r.contains("control character"), "{r}");
    assert_eq!(event_id_of(&with(&["event_id"], json!(long))), None);
    assert_eq!(
        id_field_of(&with(&["location"], json!(long)), "location"),
        None
    );
    assert_eq!(id_field_of(&sale(), "location").as_deref(), Some("S042"));
}

#[test]
fn deep_nesting_is_rejected() {
    let mut deep = json!("x");
    for _ in 0..20 {
        deep = json!([deep]);
    }
    let r = reason(with(&["currency"], deep));
    assert!(r.contains("levels deep"), "{r}");
}

#[test]
fn an_exchange_takes_the_event_level_original_sale_on_its_returned_lines() {
    let mut v = sale();
    v["kind"] = json!("exchange");
    v["original_event_id"] = json!("S1");
    v["lines"] = json!([
        {"sku": "A", "qty": 1, "unit_price": "10", "returned": true},
        {"sku": "B", "qty": 1, "unit_price": "10", "returned": true, "original_event_id": "S2"},
        {"sku": "C", "qty": 1, "unit_price": "10"}
    ]);
    let ev = Event::from_json(&v).expect("valid");
    let origs: Vec<Option<&str>> = ev
        .lines
        .iter()
        .map(|l| l.original_event_id.as_deref())
        .collect();
    assert_eq!(origs, [Some("S1"), Some("S2"), None]);
}

fn void() -> Value {
    json!({"event_id": "S042-3-000124", "kind": "void", "location": "S042", "register": "3",
           "sequence": 124, "business_date": "2026-11-26", "reason": "customer walked away"})
}

#[test]
fn a_void_needs_its_register_and_sequence_and_nothing_else() {
    let ev = Event::from_json(&void()).expect("valid");
    assert_eq!(ev.kind, EventKind::Void);
    assert_eq!(
        (ev.register.as_deref(), ev.sequence),
        (Some("3"), Some(124))
    );
    assert_eq!(ev.reason.as_deref(), Some("customer walked away"));
    assert!(ev.lines.is_empty() && ev.tenders.is_empty());
    assert!(EventKind::Void.takes_register_sequence() && !EventKind::Void.has_tenders());
    assert!(!EventKind::DayClose.takes_register_sequence());
    assert_eq!(
        Event::from_json(&ev.to_json()).expect("round trip"),
        ev,
        "round trips"
    );

    let mut v = void();
    v.as_object_mut().expect("object").remove("reason");
    assert!(Event::from_json(&v).is_ok(), "reason is optional");

    // lines and tenders of the cancelled transaction are not read (they post nothing)
    let mut v = void();
    v["lines"] = json!([{"sku": "X", "qty": "not read"}]);
    v["tenders"] = json!("not read either");
    let ev = Event::from_json(&v).expect("valid");
    assert!(ev.lines.is_empty() && ev.tenders.is_empty());

    let mut v = void();
    v.as_object_mut().expect("object").remove("sequence");
    assert_eq!(
        reason(v),
        "sequence: is required for a void (the register sequence number it used up)"
    );
    let mut v = void();
    v.as_object_mut().expect("object").remove("register");
    assert_eq!(reason(v), "register: is required for a void");
    let mut v = void();
    v["sequence"] = json!(-1);
    assert!(reason(v).starts_with("sequence: -1 is out of range"));
    let mut v = void();
    v["sequence"] = json!("12.5");
    assert_eq!(reason(v), "sequence: expected a whole number, got 12.5");
    let mut v = void();
    v["reason"] = json!("x".repeat(1001));
    assert!(reason(v).starts_with("reason: is 1001 characters long"));
    let mut v = void();
    v.as_object_mut().expect("object").remove("business_date");
    assert_eq!(reason(v), "business_date: is required");
    let mut v = void();
    v.as_object_mut().expect("object").remove("location");
    assert_eq!(reason(v), "location: is required");
}
