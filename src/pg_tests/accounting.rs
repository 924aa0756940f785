// The clarified posting rules (DESIGN.md, "Clarified rules") and the valuation and idempotency defects they
// settled: each test would fail under the other reading.

/// An item whose standard cost has three decimals, so that per-move rounding leaves cents behind.
fn item_e() {
    Spi::run("INSERT INTO possync.item (sku, description, standard_cost) VALUES ('E', 'Item E', 1.005)")
        .expect("item E");
}

fn move_values(event_id: &str) -> Vec<Decimal> {
    Spi::connect(|c| {
        c.select(
            &format!("SELECT value::text FROM possync.stock_move WHERE event_id = '{event_id}' ORDER BY move_id"),
            None,
            &[],
        )
        .expect("moves")
        .map(|r| d(&r.get::<String>(1).expect("value").unwrap_or_default()))
        .collect()
    })
}

fn statuses(results: &[Value]) -> Vec<String> {
    results.iter().map(|r| status(r).to_string()).collect()
}

#[pg_test]
fn an_exchange_returns_at_the_cost_of_the_sale_named_on_the_event() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "4.00")]));
    apply(till("S1-1", "sale", "S1", &[("A", "2", "10.00", "0", "0")], &[("card", "20.00")]));
    apply(receipt("r2", "S1", &[("A", "8", "7.00")]));
    // average now (32.00 + 56.00) / 16 = 5.50; the sale issued at 4.00
    let mut ex = till("X1", "exchange", "S1", &[("A", "1", "10.00", "0", "0"), ("B", "5", "2.00", "0", "0")], &[]);
    ex["lines"][0]["returned"] = json!(true);
    ex["original_event_id"] = json!("S1-1");
    let r = apply(ex);
    assert_eq!(status(&r), "applied", "{r}");
    let back = num("SELECT value FROM possync.stock_move WHERE event_id = 'X1' AND sku = 'A'");
    assert_eq!(back, d("4.00"), "the returned unit comes back at the sale's 4.00, not the average 5.50");
    assert_invariants();
}

#[pg_test]
fn a_line_names_its_own_original_sale_over_the_event() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "4.00")]));
    apply(till("s-a", "sale", "S1", &[("A", "1", "10.00", "0", "0")], &[("card", "10.00")]));
    apply(receipt("r2", "S1", &[("A", "9", "8.00")]));
    // average (36.00 + 72.00) / 18 = 6.00
    apply(till("s-b", "sale", "S1", &[("A", "1", "10.00", "0", "0")], &[("card", "10.00")]));
    let mut ret = till("ret", "return", "S1", &[("A", "1", "10.00", "0", "0")], &[("card", "-10.00")]);
    ret["original_event_id"] = json!("s-a");
    ret["lines"][0]["original_event_id"] = json!("s-b");
    let r = apply(ret);
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(move_values("ret"), vec![d("6.00")], "the line's s-b (6.00) wins over the event's s-a (4.00)");
    assert_invariants();
}

#[pg_test]
fn a_partial_return_comes_back_at_its_share_of_the_original_move() {
    setup();
    apply(receipt("r1", "S1", &[("A", "3", "3.333333")]));
    // the sale empties the shelf and takes all of it: 10.00 for 3
    apply(till("s1", "sale", "S1", &[("A", "3", "10.00", "0", "0")], &[("card", "30.00")]));
    apply(receipt("r2", "S1", &[("A", "5", "9.00")]));
    let mut ret = till("ret1", "return", "S1", &[("A", "1", "10.00", "0", "0")], &[("card", "-10.00")]);
    ret["original_event_id"] = json!("s1");
    assert_eq!(status(&apply(ret)), "applied");
    // 10.00 / 3 × 1 = 3.333.. → 3.33 (the average, 9.00, would give 9.00)
    assert_eq!(move_values("ret1"), vec![d("3.33")]);
    let mut ret2 = till("ret2", "return", "S1", &[("A", "2", "10.00", "0", "0")], &[("card", "-20.00")]);
    ret2["original_event_id"] = json!("s1");
    assert_eq!(status(&apply(ret2)), "applied");
    // 10.00 / 3 × 2 = 6.666.. → 6.67
    assert_eq!(move_values("ret2"), vec![d("6.67")]);
    assert_invariants();
}

#[pg_test]
fn a_count_up_to_zero_takes_the_whole_remaining_value() {
    setup();
    item_e();
    apply(till("e1", "sale", "S1", &[("E", "1", "3.00", "0", "0")], &[("card", "3.00")]));
    apply(till("e2", "sale", "S1", &[("E", "1", "3.00", "0", "0")], &[("card", "3.00")]));
    // two issues at the standard 1.005 → 1.01 each
    assert_eq!(stock("E", "S1"), (d("-2"), d("-2.02")));
    let count = json!({"event_id": "c1", "kind": "count", "location": "S1", "business_date": "2026-11-26",
                       "lines": [{"sku": "E", "counted_qty": 0}]});
    assert_eq!(status(&apply(count)), "applied");
    // at the cost, 2 × 1.005 = 2.01 would leave -0.01 on an empty shelf
    assert_eq!(move_values("c1"), vec![d("2.02")]);
    assert_eq!(stock("E", "S1"), (d("0"), d("0")));
    assert_eq!(count_rows("SELECT * FROM possync.check_invariants()"), 0);
    assert_invariants();
}

#[pg_test]
fn an_adjustment_or_a_plain_return_up_to_zero_takes_the_whole_remaining_value() {
    setup();
    item_e();
    for (i, loc) in ["S1", "S2"].iter().enumerate() {
        for n in 0..3 {
            apply(till(&format!("s{i}{n}"), "sale", loc, &[("E", "1", "3.00", "0", "0")], &[("card", "3.00")]));
        }
    }
    let adj = json!({"event_id": "adj", "kind": "adjustment", "location": "S1", "business_date": "2026-11-26",
                     "reason": "found", "lines": [{"sku": "E", "qty": 3}]});
    assert_eq!(status(&apply(adj)), "applied");
    assert_eq!(move_values("adj"), vec![d("3.03")], "3 × 1.005 = 3.015 → 3.02 would strand 0.01");
    let ret = till("ret", "return", "S2", &[("E", "3", "3.00", "0", "0")], &[("card", "-9.00")]);
    assert_eq!(status(&apply(ret)), "applied");
    assert_eq!(move_values("ret"), vec![d("3.03")]);
    assert_eq!(stock("E", "S1"), (d("0"), d("0")));
    assert_eq!(stock("E", "S2"), (d("0"), d("0")));
    assert_invariants();
}

#[pg_test]
fn a_receipt_up_to_zero_keeps_its_cost_and_writes_the_rest_off_to_cogs() {
    setup();
    item_e();
    apply(till("e1", "sale", "S1", &[("E", "2", "3.00", "0", "0")], &[("card", "6.00")]));
    assert_eq!(stock("E", "S1"), (d("-2"), d("-2.01")));
    let cogs_before = account("5000", Some("S1"));
    let r = apply(receipt("r1", "S1", &[("E", "2", "1.00")]));
    assert_eq!(status(&r), "applied", "{r}");
    // the receipt is worth what it cost: GRNI and the receipt's move say 2.00
    assert_eq!(account("2200", Some("S1")), d("-2.00"));
    assert_eq!(move_values("r1"), vec![d("2.00"), d("0.01")], "the receipt, then the write-off of what was left");
    assert_eq!(stock("E", "S1"), (d("0"), d("0")));
    // the 0.01 left over goes to cogs: issued at 2.01, replaced for 2.00
    assert_eq!(account("5000", Some("S1")) - cogs_before, d("-0.01"));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'r1'"), 0, "an incoming move never raises negative_on_hand");
    assert_invariants();
}

#[pg_test]
fn an_incoming_move_never_raises_negative_on_hand() {
    setup();
    apply(till("s1", "sale", "S1", &[("A", "5", "3.00", "0", "0")], &[("card", "15.00")]));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 's1' AND kind = 'negative_on_hand'"), 1);
    let r = apply(receipt("r1", "S1", &[("A", "2", "2.00")]));
    assert_eq!(status(&r), "applied");
    assert_eq!(stock("A", "S1").0, d("-3"));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'r1' AND kind = 'negative_on_hand'"), 0);
    assert_invariants();
}

#[pg_test]
fn stock_never_carries_a_value_of_the_other_sign_than_its_quantity() {
    setup();
    // 2 short at the standard 2.00, then 3 arrive nearly free: the literal sum would be on-hand 1, value -3.97
    apply(till("s1", "sale", "S1", &[("A", "2", "5.00", "0", "0")], &[("card", "10.00")]));
    let r = apply(receipt("r1", "S1", &[("A", "3", "0.01")]));
    assert_eq!(status(&r), "applied");
    assert_eq!(stock("A", "S1"), (d("1"), d("0")));
    assert_eq!(account("2200", Some("S1")), d("-0.03"), "the receipt is still worth what it cost");
    assert_eq!(count_rows("SELECT * FROM possync.check_invariants()"), 0);
    assert_invariants();
}

#[pg_test]
fn a_line_net_is_rounded_to_cents_before_the_tenders_are_compared() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "0.10")]));
    // 3 × 0.333 = 0.999 → 1.00: the customer paid exactly that
    let r = apply(till("s1", "sale", "S1", &[("A", "3", "0.333", "0", "0")], &[("cash", "1.00")]));
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(account("4000", Some("S1")), d("-1.00"));
    assert_eq!(account("5200", Some("S1")), d("0"));
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 's1' AND kind = 'tender_mismatch'"), 0);
    assert_invariants();
}

#[pg_test]
fn in_transit_stays_with_the_shipping_location_on_both_journals() {
    setup();
    apply(receipt("r1", "DC1", &[("A", "10", "3.00")]));
    apply(json!({"event_id": "to", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
                 "transfer_id": "T1", "to_location": "S2", "lines": [{"sku": "A", "qty": 4}]}));
    assert_eq!(account("1210", Some("DC1")), d("12.00"));
    apply(json!({"event_id": "ti", "kind": "transfer_in", "location": "S2", "business_date": "2026-11-26",
                 "transfer_id": "T1", "from_location": "DC1", "lines": [{"sku": "A", "qty": 4}]}));
    assert_eq!(account("1210", Some("DC1")), d("0"));
    assert_eq!(count("SELECT 1 FROM possync.journal_line WHERE account_code = '1210' AND location_id = 'S2'"), 0);
    assert_invariants();
}

fn adjustment(id: &str, qty: &str) -> Value {
    json!({"event_id": id, "kind": "adjustment", "location": "S1", "business_date": "2026-11-26",
           "reason": "found", "lines": [{"sku": "A", "qty": qty, "unit_cost": "1.00"}]})
}

#[pg_test]
fn an_id_twice_in_one_call_is_judged_as_if_the_events_came_one_by_one() {
    setup();
    assert_eq!(status(&apply(adjustment("E1", "1"))), "applied");
    let r = apply_all(json!([adjustment("E1", "2"), adjustment("E1", "1")]));
    assert_eq!(statuses(&r), ["conflict", "duplicate"]);
    // the conflicting payload is the one kept
    assert_eq!(
        count("SELECT 1 FROM possync.exception WHERE event_id = 'E1' AND kind = 'conflict'
                AND payload -> 'lines' -> 0 ->> 'qty' = '2'"),
        1
    );
    let b = Spi::get_one::<JsonB>(&format!(
        "SELECT possync.apply_batch('pos-a', '0/100', '{}'::jsonb)",
        json!([adjustment("E1", "1"), adjustment("E1", "3")])
    ))
    .expect("apply_batch")
    .expect("a result")
    .0;
    let results: Vec<Value> = b["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(statuses(&results), ["duplicate", "conflict"]);
    // new ids: the first posts, an equal second is a duplicate, a different one a conflict
    let r = apply_all(json!([adjustment("E2", "1"), adjustment("E2", "1"), adjustment("E2", "5")]));
    assert_eq!(statuses(&r), ["applied", "duplicate", "conflict"]);
    assert_eq!(stock("A", "S1").0, d("2"), "E1 and E2 posted once each");
    assert_invariants();
}

#[pg_test]
fn check_invariants_sees_stranded_value_and_a_value_of_the_wrong_sign() {
    setup();
    apply(receipt("r1", "S1", &[("A", "2", "3.00")]));
    apply(till("s1", "sale", "S1", &[("A", "2", "5.00", "0", "0")], &[("card", "10.00")]));
    apply(receipt("r2", "S2", &[("A", "2", "3.00")]));
    assert_eq!(count_rows("SELECT * FROM possync.check_invariants()"), 0);
    // balances are not append-only; a hand edit is what these checks exist for
    Spi::run("UPDATE possync.stock_balance SET value = 0.01 WHERE sku = 'A' AND location_id = 'S1'").expect("edit");
    Spi::run("UPDATE possync.stock_balance SET value = -1 WHERE sku = 'A' AND location_id = 'S2'").expect("edit");
    assert_eq!(count("SELECT 1 FROM possync.check_invariants() WHERE invariant = 'stranded_value'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.check_invariants() WHERE invariant = 'value_sign_differs_from_on_hand'"), 1);
}

fn count_rows(sql: &str) -> i64 {
    count(sql)
}

#[pg_test]
fn a_partial_return_of_an_exact_half_cent_rounds_away_from_zero() {
    setup();
    // 0.9504 × 173.96 = 165.331584 → 165.33, all of it issued by the sale
    apply(receipt("r1", "S1", &[("A", "0.9504", "173.96")]));
    apply(till("s1", "sale", "S1", &[("A", "0.9504", "200", "0", "0")], &[("card", "190.08")]));
    let mut ret = till("ret", "return", "S1", &[("A", "0.1872", "200", "0", "0")], &[("card", "-37.44")]);
    ret["original_event_id"] = json!("s1");
    assert_eq!(status(&apply(ret)), "applied");
    // 165.33 × 0.1872 ÷ 0.9504 = 32.565 exactly → 32.57 (dividing first gives 32.5649999… → 32.56)
    assert_eq!(move_values("ret"), vec![d("32.57")]);
    assert_invariants();
}
