// The posting rules, each through the SQL API, checked against numbers computed here.
// (Included into `mod tests` in lib.rs: `cargo pgrx test` calls tests.<name>().)

use pgrx::prelude::*;
use pgrx::JsonB;
use rust_decimal::Decimal;
use serde_json::{json, Value};

pub(crate) fn d(s: &str) -> Decimal {
    s.parse().expect("test decimal")
}

/// The default chart, three locations, three items and a tax code.
pub(crate) fn setup() {
    Spi::run(
        "SELECT possync.install_default_chart();
         INSERT INTO possync.location (location_id, name, kind) VALUES
             ('S1', 'Store 1', 'store'), ('S2', 'Store 2', 'store'), ('DC1', 'Warehouse', 'dc');
         INSERT INTO possync.item (sku, description, item_class, standard_cost) VALUES
             ('A', 'Item A', NULL, 2.00), ('B', 'Item B', 'food', 1.00), ('C', 'Item C', NULL, 0);
         INSERT INTO possync.tax_code (tax_code, rate) VALUES ('NY', 0.08875);",
    )
    .expect("setup");
}

pub(crate) fn apply(ev: Value) -> Value {
    Spi::get_one_with_args::<JsonB>("SELECT possync.apply_event($1)", &[JsonB(ev).into()])
        .expect("apply_event")
        .expect("a result")
        .0
}

pub(crate) fn apply_all(evs: Value) -> Vec<Value> {
    let r = Spi::get_one_with_args::<JsonB>("SELECT possync.apply_events($1)", &[JsonB(evs).into()])
        .expect("apply_events")
        .expect("a result")
        .0;
    r.as_array().cloned().expect("an array")
}

pub(crate) fn status(r: &Value) -> &str {
    r["status"].as_str().unwrap_or("?")
}

pub(crate) fn num(sql: &str) -> Decimal {
    let s = Spi::get_one::<String>(&format!("SELECT coalesce(({sql}), 0)::text"))
        .expect(sql)
        .unwrap_or_default();
    s.parse().expect("numeric")
}

pub(crate) fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(&format!("SELECT count(*) FROM ({sql}) q"))
        .expect(sql)
        .unwrap_or_default()
}

/// (on_hand, value) of a sku at a location.
pub(crate) fn stock(sku: &str, loc: &str) -> (Decimal, Decimal) {
    (
        num(&format!("SELECT on_hand FROM possync.stock_balance WHERE sku = '{sku}' AND location_id = '{loc}'")),
        num(&format!("SELECT value FROM possync.stock_balance WHERE sku = '{sku}' AND location_id = '{loc}'")),
    )
}

/// Debits minus credits on an account, at one location or all.
pub(crate) fn account(code: &str, loc: Option<&str>) -> Decimal {
    let filter = loc.map(|l| format!(" AND location_id = '{l}'")).unwrap_or_default();
    num(&format!(
        "SELECT sum(debit) - sum(credit) FROM possync.journal_line WHERE account_code = '{code}'{filter}"
    ))
}

/// The ledger invariants that must hold after anything: balanced journals, stock value = GL inventory per
/// location, balances = Σ moves, in-transit = open transfers.
pub(crate) fn assert_invariants() {
    assert_eq!(
        count("SELECT journal_id FROM possync.journal_line GROUP BY journal_id HAVING sum(debit) <> sum(credit)"),
        0,
        "every journal balances"
    );
    assert_eq!(
        count(
            "SELECT l FROM (SELECT location_id l, sum(value) v FROM possync.stock_balance GROUP BY 1) s
             FULL JOIN (SELECT location_id l, sum(debit - credit) v FROM possync.journal_line
                         WHERE account_code = '1200' GROUP BY 1) g USING (l)
             WHERE coalesce(s.v, 0) <> coalesce(g.v, 0)"
        ),
        0,
        "stock value per location equals the GL inventory balance"
    );
    assert_eq!(
        count(
            "SELECT 1 FROM possync.stock_balance b FULL JOIN
                 (SELECT sku, location_id, sum(qty) q, sum(value) v FROM possync.stock_move GROUP BY 1, 2) m
                 USING (sku, location_id)
             WHERE coalesce(b.on_hand, 0) <> coalesce(m.q, 0) OR coalesce(b.value, 0) <> coalesce(m.v, 0)"
        ),
        0,
        "stock_balance equals the sum of stock_move"
    );
    assert_eq!(
        count(
            "SELECT 1 FROM possync.stock_move m WHERE m.on_hand_after <> (SELECT sum(qty) FROM possync.stock_move p
               WHERE p.sku = m.sku AND p.location_id = m.location_id AND p.move_id <= m.move_id)"
        ),
        0,
        "each move's on_hand_after is the running sum"
    );
    assert_eq!(
        num("SELECT sum(value_shipped - value_received) FROM possync.transfer_line"),
        account("1210", None),
        "in-transit equals the value of open transfers"
    );
}

pub(crate) fn receipt(id: &str, loc: &str, lines: &[(&str, &str, &str)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, qty, cost)| json!({"sku": sku, "qty": qty, "unit_cost": cost}))
        .collect();
    json!({"event_id": id, "kind": "receipt", "location": loc, "business_date": "2026-11-26", "lines": lines})
}

/// A till event; lines are (sku, qty, unit_price, discount, tax).
pub(crate) fn till(id: &str, kind: &str, loc: &str, lines: &[(&str, &str, &str, &str, &str)], tenders: &[(&str, &str)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, qty, price, disc, tax)| {
            json!({"sku": sku, "qty": qty, "unit_price": price, "discount": disc, "tax": tax, "tax_code": "NY"})
        })
        .collect();
    let tenders: Vec<Value> = tenders.iter().map(|(t, a)| json!({"type": t, "amount": a})).collect();
    json!({"event_id": id, "kind": kind, "location": loc, "register": "1", "business_date": "2026-11-26",
           "occurred_at": "2026-11-26T10:00:00Z", "lines": lines, "tenders": tenders})
}

#[pg_test]
fn sale_posts_stock_at_average_cost_and_a_balanced_journal() {
    setup();
    assert_eq!(status(&apply(receipt("r1", "S1", &[("A", "10", "5.00")]))), "applied");
    assert_eq!(status(&apply(receipt("r2", "S1", &[("A", "10", "6.00")]))), "applied");
    // average (50 + 60) / 20 = 5.50
    let r = apply(till("s1", "sale", "S1", &[("A", "2", "19.99", "4.00", "2.88")], &[("card", "38.86")]));
    assert_eq!(status(&r), "applied", "{r}");
    assert!(r["journal_id"].as_i64().is_some());
    let net = d("2") * d("19.99") - d("4.00");
    let cost = d("2") * d("5.50");
    assert_eq!(stock("A", "S1"), (d("18"), d("110.00") - cost));
    assert_eq!(account("1010", Some("S1")), net + d("2.88"));
    assert_eq!(account("4000", Some("S1")), -net);
    assert_eq!(account("2100", Some("S1")), d("-2.88"));
    assert_eq!(account("5000", Some("S1")), cost);
    assert_eq!(account("2200", Some("S1")), d("-110.00"));
    assert_eq!(num("SELECT avg_cost FROM possync.stock_balance WHERE sku = 'A' AND location_id = 'S1'"), d("5.5"));
    assert_invariants();
}

#[pg_test]
fn the_last_unit_takes_the_remaining_value() {
    setup();
    apply(receipt("r1", "S1", &[("C", "3", "0.01")]));
    apply(receipt("r2", "S1", &[("C", "3", "0.02")]));
    // average 0.09 / 6 = 0.015; each single-unit sale is 0.02 (rounded half away from zero), but never more
    // than the shelf still holds: the fifth takes the last 0.01, and the last unit is worth nothing
    for i in 0..5 {
        apply(till(&format!("s{i}"), "sale", "S1", &[("C", "1", "1", "0", "0")], &[("cash", "1")]));
    }
    assert_eq!(stock("C", "S1"), (d("1"), d("0")));
    apply(till("s5", "sale", "S1", &[("C", "1", "1", "0", "0")], &[("cash", "1")]));
    assert_eq!(stock("C", "S1"), (d("0"), d("0")), "no cents stranded at zero on hand");
    assert_eq!(account("5000", None), d("0.09"));
    assert_invariants();
}

#[pg_test]
fn standard_cost_is_used_before_anything_was_received() {
    setup();
    let r = apply(till("s1", "sale", "S2", &[("B", "3", "2.50", "0", "0")], &[("cash", "7.50")]));
    assert_eq!(status(&r), "applied");
    assert_eq!(stock("B", "S2"), (d("-3"), d("-3.00")));
    let kinds = count("SELECT 1 FROM possync.exception WHERE event_id = 's1' AND kind = 'negative_on_hand'");
    assert_eq!(kinds, 1, "negative on-hand posts and is flagged");
    assert_invariants();
}

#[pg_test]
fn negative_on_hand_can_be_rejected_by_setting() {
    setup();
    Spi::run("SET LOCAL possync.reject_negative_on_hand = on").expect("set");
    let r = apply(till("s1", "sale", "S1", &[("A", "1", "3", "0", "0")], &[("cash", "3")]));
    assert_eq!(status(&r), "rejected");
    assert_eq!(count("SELECT 1 FROM possync.stock_move"), 0);
    assert_eq!(count("SELECT 1 FROM possync.journal"), 0);
    assert_eq!(
        count("SELECT 1 FROM possync.exception WHERE event_id = 's1' AND kind = 'negative_on_hand' AND payload IS NOT NULL"),
        1
    );
}

#[pg_test]
fn return_comes_back_at_the_original_sale_cost() {
    setup();
    apply(receipt("r1", "S1", &[("A", "4", "3.00")]));
    apply(till("s1", "sale", "S1", &[("A", "2", "10", "0", "0.80")], &[("card", "20.80")]));
    // the average moves after the sale
    apply(receipt("r2", "S1", &[("A", "2", "9.00")]));
    let mut ret = till("ret1", "return", "S1", &[("A", "1", "10", "0", "0.40")], &[("card", "-10.40")]);
    ret["original_event_id"] = json!("s1");
    let r = apply(ret);
    assert_eq!(status(&r), "applied", "{r}");
    let back = num("SELECT value FROM possync.stock_move WHERE event_id = 'ret1'");
    assert_eq!(back, d("3.00"), "returned at the sale's 3.00, not the new average");
    assert_eq!(account("4100", None), d("10"));
    assert_eq!(account("2100", None), d("-0.80") + d("0.40"));
    assert_eq!(account("5000", None), d("6.00") - d("3.00"));
    assert_eq!(account("1010", None), d("20.80") - d("10.40"));
    assert_invariants();
}

#[pg_test]
fn exchange_posts_sold_and_returned_lines_in_one_journal() {
    setup();
    apply(receipt("r1", "S1", &[("A", "5", "4.00"), ("B", "5", "1.00")]));
    let mut ex = till("x1", "exchange", "S1", &[("A", "1", "10", "0", "0"), ("B", "2", "3", "0", "0")], &[("cash", "4")]);
    ex["lines"][0]["returned"] = json!(true);
    let r = apply(ex);
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(count("SELECT 1 FROM possync.journal WHERE event_id = 'x1'"), 1);
    assert_eq!(stock("A", "S1").0, d("6"));
    assert_eq!(stock("B", "S1").0, d("3"));
    // customer owes 6 for B and gets 10 back for A, and paid 4 more: 4 over
    assert_eq!(account("4000", None), d("-6"));
    assert_eq!(account("4100", None), d("10"));
    assert_eq!(account("5200", None), d("-8"));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'x1' AND kind = 'tender_mismatch' AND amount = 8"), 1);
    assert_invariants();
}

#[pg_test]
fn tender_mismatch_goes_to_over_short_and_is_flagged() {
    setup();
    apply(receipt("r1", "S1", &[("A", "5", "4.00")]));
    let r = apply(till("s1", "sale", "S1", &[("A", "1", "10", "0", "0.89")], &[("cash", "10.80")]));
    assert_eq!(status(&r), "applied");
    assert_eq!(r["exceptions"][0]["kind"], json!("tender_mismatch"));
    assert_eq!(account("5200", None), d("0.09"), "short by 9 cents is an expense");
    assert_invariants();
}

/// Five A received at S2, two of them held for web order web-1; returns the fulfillment that ships the two.
fn web_order_held_at_s2() -> Value {
    setup();
    apply(receipt("r1", "S2", &[("A", "5", "4.00")]));
    Spi::run(
        "INSERT INTO possync.reservation (reservation_id, sku, location_id, qty) VALUES ('web-1/1', 'A', 'S2', 2);
         UPDATE possync.stock_balance SET reserved = 2 WHERE sku = 'A' AND location_id = 'S2';",
    )
    .expect("reserve");
    json!({"event_id": "f1", "kind": "fulfillment", "location": "S2", "business_date": "2026-11-26",
        "order_id": "web-1", "lines": [{"sku": "A", "qty": 2, "unit_price": "10.00", "tax": "1.78", "reservation_id": "web-1/1"}]})
}

#[pg_test]
fn fulfillment_draws_on_customer_deposits_and_consumes_its_reservation() {
    let f = web_order_held_at_s2();
    let r = apply(f);
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(account("2300", None), d("21.78"));
    assert_eq!(account("4000", None), d("-20.00"));
    assert_eq!(num("SELECT reserved FROM possync.stock_balance WHERE sku = 'A' AND location_id = 'S2'"), d("0"));
    assert_eq!(count("SELECT 1 FROM possync.reservation WHERE status = 'consumed' AND consumed_by = 'f1'"), 1);
    assert_eq!(stock("A", "S2"), (d("3"), d("12.00")));
    assert_invariants();
}

#[pg_test]
fn receipt_reduces_its_supply() {
    setup();
    Spi::run(
        "INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at)
         VALUES ('PO-1', 'A', 'DC1', 10, now() + interval '1 day')",
    )
    .expect("supply");
    let mut r = receipt("r1", "DC1", &[("A", "4", "2.50")]);
    r["supply_id"] = json!("PO-1");
    assert_eq!(status(&apply(r)), "applied");
    assert_eq!(num("SELECT qty_open FROM possync.supply WHERE supply_id = 'PO-1'"), d("6"));
    assert_eq!(account("1200", Some("DC1")), d("10.00"));
    assert_eq!(account("2200", Some("DC1")), d("-10.00"));
}

#[pg_test]
fn reversed_receipts_give_back_exactly_what_they_took_from_supply() {
    setup();
    Spi::run(
        "INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at)
         VALUES ('PO-1', 'A', 'DC1', 10, now() + interval '1 day')",
    )
    .expect("supply");
    let against_po = |id: &str, qty: &str| {
        let mut r = receipt(id, "DC1", &[("A", qty, "2.50")]);
        r["supply_id"] = json!("PO-1");
        r
    };
    let open = || num("SELECT qty_open FROM possync.supply WHERE supply_id = 'PO-1'");
    assert_eq!(status(&apply(against_po("r1", "4"))), "applied");
    assert_eq!(open(), d("6"));
    // one call: r2 over-receives (8 against 6 open) and takes the 6; r3 finds nothing left to take
    let both = apply_all(json!([against_po("r2", "8"), against_po("r3", "1")]));
    assert!(both.iter().all(|r| status(r) == "applied"), "{both:?}");
    assert_eq!(open(), d("0"));
    assert_eq!(num("SELECT qty FROM possync.supply_receipt WHERE event_id = 'r2'"), d("6"));
    assert_eq!(count("SELECT 1 FROM possync.supply_receipt WHERE event_id = 'r3'"), 0);
    let reverse = |id: &str| {
        Spi::run(&format!("SELECT possync.reverse_event('{id}', 'keyed against the wrong PO')")).expect("reverse")
    };
    reverse("r3");
    assert_eq!(open(), d("0"), "r3 took nothing, so gives nothing back");
    reverse("r2");
    assert_eq!(open(), d("6"));
    reverse("r1");
    assert_eq!(open(), d("10"));
    assert_eq!(stock("A", "DC1"), (d("0"), d("0.00")));
    assert_invariants();
}

#[pg_test]
fn a_reversed_fulfillment_holds_the_goods_for_its_order_again() {
    let f = web_order_held_at_s2();
    let atp_before = num("SELECT possync.atp('A', 'S2')");
    assert_eq!(atp_before, d("3"));
    assert_eq!(status(&apply(f)), "applied");
    assert_eq!(num("SELECT possync.atp('A', 'S2')"), d("3"), "shipped goods leave on-hand once");
    Spi::run("SELECT possync.reverse_event('f1', 'the parcel never left')").expect("reverse");
    assert_eq!(
        count("SELECT 1 FROM possync.reservation WHERE reservation_id = 'web-1/1' AND status = 'active' AND consumed_by IS NULL"),
        1
    );
    assert_eq!(num("SELECT reserved FROM possync.stock_balance WHERE sku = 'A' AND location_id = 'S2'"), d("2"));
    assert_eq!(stock("A", "S2"), (d("5"), d("20.00")));
    assert_eq!(num("SELECT possync.atp('A', 'S2')"), atp_before);
    assert_eq!(account("2300", None), d("0.00"));
    assert_invariants();
}

#[pg_test]
fn transfer_in_waits_for_its_transfer_out_then_posts_at_the_shipped_cost() {
    setup();
    apply(receipt("r1", "DC1", &[("A", "3", "1.00"), ("A", "0.5", "1.01")]));
    let tin = json!({"event_id": "tin1", "kind": "transfer_in", "location": "S1", "business_date": "2026-11-26",
        "transfer_id": "T1", "from_location": "DC1", "lines": [{"sku": "A", "qty": 3}]});
    let r = apply(tin);
    assert_eq!(status(&r), "held");
    assert_eq!(r["exceptions"][0]["kind"], json!("awaiting_transfer_out"));
    assert_eq!(stock("A", "S1").0, d("0"));
    let tout = json!({"event_id": "tout1", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
        "transfer_id": "T1", "to_location": "S1", "lines": [{"sku": "A", "qty": 3}]});
    assert_eq!(status(&apply(tout)), "applied");
    // average (3.00 + 0.51) / 3.5 = 1.002857; 3 units = 3.01
    let shipped = d("3") * d("1.002857");
    let shipped = shipped.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(stock("A", "S1"), (d("3"), shipped), "the held transfer_in posted by itself");
    assert_eq!(stock("A", "DC1"), (d("0.5"), d("3.51") - shipped));
    assert_eq!(account("1210", None), d("0"), "nothing left in transit");
    assert_eq!(count("SELECT 1 FROM possync.event WHERE status = 'held'"), 0);
    assert_eq!(
        count("SELECT 1 FROM possync.exception WHERE kind = 'awaiting_transfer_out' AND status = 'resolved'"),
        1
    );
    assert_invariants();
}

#[pg_test]
fn transfer_out_and_in_in_one_call_leave_nothing_in_transit() {
    setup();
    apply(receipt("r1", "DC1", &[("B", "10", "0.70")]));
    let out = apply_all(json!([
        {"event_id": "tin", "kind": "transfer_in", "location": "S2", "business_date": "2026-11-26",
         "transfer_id": "T9", "from_location": "DC1", "lines": [{"sku": "B", "qty": 4}]},
        {"event_id": "tout", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
         "transfer_id": "T9", "to_location": "S2", "lines": [{"sku": "B", "qty": 4}]}
    ]));
    assert_eq!(status(&out[0]), "held");
    assert_eq!(status(&out[1]), "applied");
    assert_eq!(stock("B", "S2"), (d("4"), d("2.80")));
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'tin' AND status = 'applied'"), 1);
    assert_invariants();
}

#[pg_test]
fn adjustment_and_count_post_to_shrink() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "2.00")]));
    let adj = json!({"event_id": "a1", "kind": "adjustment", "location": "S1", "business_date": "2026-11-26",
        "reason": "damaged", "lines": [{"sku": "A", "qty": -2}]});
    assert_eq!(status(&apply(adj)), "applied");
    assert_eq!(account("5100", None), d("4.00"));
    let cnt = json!({"event_id": "c1", "kind": "count", "location": "S1", "business_date": "2026-11-26",
        "lines": [{"sku": "A", "counted_qty": 9}]});
    assert_eq!(status(&apply(cnt)), "applied");
    assert_eq!(stock("A", "S1"), (d("9"), d("18.00")));
    assert_eq!(account("5100", None), d("4.00") - d("2.00"));
    assert_eq!(num("SELECT system_qty FROM possync.count_line WHERE event_id = 'c1'"), d("8"));
    assert_invariants();
}

#[pg_test]
fn day_close_is_stored_without_posting() {
    setup();
    let dc = json!({"event_id": "dc1", "kind": "day_close", "location": "S1", "register": "1",
        "business_date": "2026-11-26", "totals": {"net_sales": "100.00", "tax": "8.88",
        "tenders": {"cash": "50", "card": "58.88"}, "transaction_count": 3, "last_sequence": 17}});
    let r = apply(dc);
    assert_eq!(status(&r), "applied");
    assert!(r["journal_id"].is_null());
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'dc1' AND kind = 'day_close'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.journal"), 0);
}

#[pg_test]
fn duplicates_do_nothing_and_conflicts_are_kept() {
    setup();
    let s = till("s1", "sale", "S1", &[("A", "1", "5", "0", "0")], &[("cash", "5")]);
    assert_eq!(status(&apply(s.clone())), "applied");
    assert_eq!(status(&apply(s.clone())), "duplicate");
    let mut other = s.clone();
    other["tenders"][0]["amount"] = json!("6");
    let r = apply(other);
    assert_eq!(status(&r), "conflict");
    assert_eq!(count("SELECT 1 FROM possync.journal"), 1);
    assert_eq!(stock("A", "S1").0, d("-1"));
    assert_eq!(
        count("SELECT 1 FROM possync.exception WHERE kind = 'conflict' AND payload->'tenders'->0->>'amount' = '6'"),
        1
    );
    // within one call as well
    let out = apply_all(json!([s, s]));
    assert_eq!(status(&out[0]), "duplicate");
    assert_eq!(status(&out[1]), "duplicate");
}

#[pg_test]
fn unknown_master_data_holds_the_event_until_replay() {
    setup();
    let s = till("s1", "sale", "S9", &[("NEW", "1", "5", "0", "0")], &[("cash", "5")]);
    let r = apply(s);
    assert_eq!(status(&r), "held");
    let kinds: Vec<&str> = r["exceptions"].as_array().expect("list").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["unknown_location", "unknown_sku"]);
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held()").expect("replay"), Some(0));
    Spi::run("INSERT INTO possync.location (location_id) VALUES ('S9'); INSERT INTO possync.item (sku, standard_cost) VALUES ('NEW', 1.25)")
        .expect("master data");
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held()").expect("replay"), Some(1));
    assert_eq!(stock("NEW", "S9"), (d("-1"), d("-1.25")));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 's1' AND kind LIKE 'unknown%' AND status = 'open'"), 0);
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held()").expect("replay"), Some(0), "posted once");
    assert_invariants();
}

#[pg_test]
fn a_missing_account_holds_the_event_until_mapped() {
    setup();
    Spi::run("DELETE FROM possync.account_map WHERE role = 'shrink'").expect("unmap");
    let adj = json!({"event_id": "a1", "kind": "adjustment", "location": "S1", "business_date": "2026-11-26",
        "reason": "found", "lines": [{"sku": "A", "qty": 2}]});
    let r = apply(adj);
    assert_eq!(status(&r), "held");
    assert!(r["exceptions"][0]["reason"].as_str().unwrap_or("").contains("role shrink"));
    assert_eq!(count("SELECT 1 FROM possync.stock_move"), 0, "a held event moves no stock");
    Spi::run("INSERT INTO possync.account_map (role, account_code, location_id) VALUES ('shrink', '5100', 'S1')").expect("map");
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held('a1')").expect("replay"), Some(1));
    assert_eq!(account("5100", Some("S1")), d("-4.00"));
    assert_invariants();
}

#[pg_test]
fn malformed_events_are_rejected_and_kept_with_a_reason() {
    setup();
    let cases = [
        (json!({"kind": "sale"}), "event_id: is required"),
        (json!([1, 2, 3]), "expected a JSON object, got an array [1,2,3]"),
        (json!("just text"), "expected a JSON object, got a string \"just text\""),
        (
            json!({"event_id": "m1", "kind": "sale", "location": "S1", "business_date": "2026-11-26",
                   "lines": [{"sku": "A", "qty": "two", "unit_price": 1}], "tenders": []}),
            "lines[0].qty: \"two\" is not a number",
        ),
    ];
    for (ev, reason) in cases {
        let r = apply(ev.clone());
        assert_eq!(status(&r), "rejected", "{ev}");
        assert_eq!(r["exceptions"][0]["reason"], json!(reason));
        let kept = Spi::get_one_with_args::<JsonB>(
            "SELECT payload FROM possync.exception WHERE kind = 'malformed' AND reason = $1",
            &[reason.to_string().into()],
        )
        .expect("kept")
        .expect("payload");
        assert_eq!(kept.0, ev, "the raw payload is kept");
    }
    assert_eq!(count("SELECT 1 FROM possync.event"), 0);
    // a corrected payload posts and resolves the exception
    let id = Spi::get_one::<i64>("SELECT exception_id FROM possync.exception WHERE event_id = 'm1'")
        .expect("id")
        .expect("exception");
    let fixed = till("m1", "sale", "S1", &[("A", "2", "1", "0", "0")], &[("cash", "2")]);
    let r = Spi::get_one_with_args::<JsonB>("SELECT possync.resubmit($1, $2)", &[id.into(), JsonB(fixed).into()])
        .expect("resubmit")
        .expect("result");
    assert_eq!(status(&r.0), "applied");
    assert_eq!(count(&format!("SELECT 1 FROM possync.exception WHERE exception_id = {id} AND status = 'resolved'")), 1);
}

#[pg_test]
fn apply_batch_is_exactly_once_by_commit_lsn() {
    setup();
    let batch = json!([till("b1", "sale", "S1", &[("A", "1", "5", "0", "0")], &[("cash", "5")])]);
    let call = |lsn: &str| {
        Spi::get_one_with_args::<JsonB>(
            "SELECT possync.apply_batch('store1', $1::pg_lsn, $2)",
            &[lsn.to_string().into(), JsonB(batch.clone()).into()],
        )
        .expect("apply_batch")
        .expect("result")
        .0
    };
    assert_eq!(Spi::get_one::<String>("SELECT possync.source_checkpoint('store1')::text").expect("cp"), Some("0/0".into()));
    assert_eq!(call("0/1A2B")["status"], json!("applied"));
    assert_eq!(Spi::get_one::<String>("SELECT possync.source_checkpoint('store1')::text").expect("cp"), Some("0/1A2B".into()));
    assert_eq!(call("0/1A2B")["status"], json!("skipped"));
    assert_eq!(call("0/100")["status"], json!("skipped"));
    assert_eq!(count("SELECT 1 FROM possync.journal"), 1);
    assert_eq!(num("SELECT events_applied FROM possync.source WHERE source_id = 'store1'"), d("1"));
    assert_eq!(Spi::get_one::<String>("SELECT source FROM possync.event WHERE event_id = 'b1'").expect("src"), Some("store1".into()));
}

#[pg_test]
fn reverse_event_undoes_stock_and_journal_exactly() {
    setup();
    apply(receipt("r1", "S1", &[("A", "3", "2.00")]));
    apply(till("s1", "sale", "S1", &[("A", "2", "5", "0", "0.80")], &[("card", "10.80")]));
    let r = Spi::get_one::<JsonB>("SELECT possync.reverse_event('s1', 'rung up on the wrong till')")
        .expect("reverse")
        .expect("result")
        .0;
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(stock("A", "S1"), (d("3"), d("6.00")));
    for code in ["1010", "4000", "2100", "5000"] {
        assert_eq!(account(code, None), d("0"), "account {code} back to zero");
    }
    assert_eq!(account("1200", None), d("6.00"));
    let again = Spi::get_one::<JsonB>("SELECT possync.reverse_event('s1', 'again')").expect("reverse").expect("result").0;
    assert_eq!(status(&again), "duplicate");
    assert_eq!(count("SELECT 1 FROM possync.journal WHERE reverses IS NOT NULL"), 1);
    assert_invariants();
}

#[pg_test(error = "possync.stock_move is append-only: UPDATE is not allowed")]
fn stock_moves_cannot_be_updated() {
    Spi::run("UPDATE possync.stock_move SET qty = 0").expect("must fail");
}

#[pg_test(error = "possync.journal_line is append-only: DELETE is not allowed")]
fn journal_lines_cannot_be_deleted() {
    Spi::run("DELETE FROM possync.journal_line").expect("must fail");
}

#[pg_test(error = "possync.journal is append-only: TRUNCATE is not allowed")]
fn journals_cannot_be_truncated() {
    Spi::run("TRUNCATE possync.journal CASCADE").expect("must fail");
}

#[pg_test(error = "journal 77 does not balance: debits 10.00 and credits 9.99")]
fn an_unbalanced_journal_cannot_be_written() {
    Spi::run(
        "SELECT possync.make_ledger_months(ARRAY['2026-11-01'::date]);
         INSERT INTO possync.journal_line (journal_id, line_no, account_code, debit, credit, business_date)
         VALUES (77, 1, '1000', 10.00, 0, '2026-11-26'), (77, 2, '4000', 0, 9.99, '2026-11-26')",
    )
    .expect("must fail");
}

#[pg_test(error = "possync.apply_event: argument event must not be NULL")]
fn apply_event_null_names_the_argument() {
    Spi::run("SELECT possync.apply_event(NULL)").expect("must fail");
}

#[pg_test(error = "possync.apply_batch: argument source must not be NULL")]
fn apply_batch_null_source_names_the_argument() {
    Spi::run("SELECT possync.apply_batch(NULL, '0/1', '[]')").expect("must fail");
}

#[pg_test(error = "possync.apply_events: argument events must be a JSON array of events, got an object")]
fn apply_events_wants_an_array() {
    Spi::run("SELECT possync.apply_events('{}')").expect("must fail");
}

#[pg_test(error = "unknown role 'revenu' in possync.account_map.role")]
fn account_map_rejects_an_unknown_role() {
    Spi::run("SELECT possync.install_default_chart(); INSERT INTO possync.account_map (role, account_code) VALUES ('revenu', '4000')")
        .expect("must fail");
}

#[pg_test]
fn misuse_errors_carry_a_sqlstate() {
    let state = Spi::get_one::<String>(
        "DO $$ BEGIN PERFORM possync.apply_event(NULL); EXCEPTION WHEN null_value_not_allowed THEN
            RAISE NOTICE 'ok'; END $$; SELECT 'caught'",
    );
    assert_eq!(state.expect("caught by SQLSTATE 22004"), Some("caught".into()));
}

#[pg_test(error = "possync.reverse_event: argument event_id \"tout1\" is a transfer_out; a transfer is not reversed")]
fn a_transfer_is_corrected_by_a_transfer_back_not_reversed() {
    setup();
    apply(receipt("r1", "DC1", &[("A", "3", "1.00")]));
    let tout = json!({"event_id": "tout1", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
        "transfer_id": "T1", "to_location": "S1", "lines": [{"sku": "A", "qty": 3}]});
    assert_eq!(status(&apply(tout)), "applied");
    Spi::run("SELECT possync.reverse_event('tout1', 'shipped to the wrong store')").expect("must fail");
}
