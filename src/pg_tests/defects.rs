// Regressions from the audit of the extension under hostile input: each named after what it protects.

#[pg_test]
fn a_transfer_received_at_another_store_than_shipped_to_is_flagged_and_booked_where_it_arrived() {
    setup();
    apply(receipt("r1", "DC1", &[("A", "10", "3.00")]));
    apply(json!({"event_id": "to", "kind": "transfer_out", "location": "DC1", "business_date": "2026-11-26",
                 "transfer_id": "T1", "to_location": "S2", "lines": [{"sku": "A", "qty": 4}]}));
    let r = apply(json!({"event_id": "ti", "kind": "transfer_in", "location": "S1", "business_date": "2026-11-26",
                         "transfer_id": "T1", "from_location": "DC1", "lines": [{"sku": "A", "qty": 4}]}));
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'ti' AND kind = 'transfer_mismatch'"), 1);
    assert_eq!(stock("A", "S1"), (d("4"), d("12.00")));
    assert_invariants();
}

#[pg_test]
fn a_reversal_never_collides_with_an_event_named_like_it() {
    setup();
    apply(receipt("rv", "S1", &[("A", "10", "3.00")]));
    // the POS happens to use the id the reversal would take
    apply(receipt("rv:reversal", "S1", &[("A", "1", "3.00")]));
    let r = Spi::get_one::<JsonB>("SELECT possync.reverse_event('rv', 'keyed twice')")
        .expect("reverse")
        .expect("a result")
        .0;
    assert_eq!(status(&r), "applied", "{r}");
    assert_eq!(r["reversal_event_id"], json!("rv:reversal-2"));
    let again = Spi::get_one::<JsonB>("SELECT possync.reverse_event('rv', 'again')")
        .expect("reverse")
        .expect("a result")
        .0;
    assert_eq!(status(&again), "duplicate");
    assert_eq!(again["reversal_event_id"], json!("rv:reversal-2"));
    assert_eq!(stock("A", "S1").0, d("1"));
    assert_invariants();
}

#[pg_test]
fn resubmitting_another_events_payload_does_not_close_a_rejected_sale() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "3.00")]));
    let mut bad = till("s-bad", "sale", "S1", &[("A", "1", "10", "0", "0")], &[("card", "10")]);
    bad["lines"][0]["qty"] = json!("two");
    assert_eq!(status(&apply(bad)), "rejected");
    let id = Spi::get_one::<i64>("SELECT exception_id FROM possync.exception WHERE event_id = 's-bad'")
        .expect("exception")
        .expect("an id");
    // the payload of r1, already applied: a duplicate of r1 posts nothing for s-bad
    let r = Spi::get_one_with_args::<JsonB>(
        "SELECT possync.resubmit($1, $2)",
        &[id.into(), JsonB(receipt("r1", "S1", &[("A", "10", "3.00")])).into()],
    )
    .expect("resubmit")
    .expect("a result")
    .0;
    assert_eq!(status(&r), "duplicate");
    assert_eq!(
        count(&format!("SELECT 1 FROM possync.exception WHERE exception_id = {id} AND status = 'open'")),
        1,
        "the rejected sale is still open"
    );
    let fixed = till("s-bad", "sale", "S1", &[("A", "1", "10", "0", "0")], &[("card", "10")]);
    let r = Spi::get_one_with_args::<JsonB>("SELECT possync.resubmit($1, $2)", &[id.into(), JsonB(fixed).into()])
        .expect("resubmit")
        .expect("a result")
        .0;
    assert_eq!(status(&r), "applied");
    assert_eq!(
        count(&format!("SELECT 1 FROM possync.exception WHERE exception_id = {id} AND status = 'resolved'")),
        1
    );
}

#[pg_test]
fn a_day_close_after_odd_numbers_never_raises() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "3.00")]));
    let mut s = till("s1", "sale", "S1", &[("A", "1", "10", "0", "0")], &[("card", "10")]);
    s["lines"][0]["qty"] = json!("1_0");
    assert_eq!(status(&apply(s)), "rejected", "1_0 is not a number");
    let mut s = till("s2", "sale", "S1", &[("A", "1", "10", "0", "0")], &[("card", "10")]);
    s["lines"][0]["qty"] = json!("\u{a0}1");
    assert_eq!(status(&apply(s)), "rejected", "a padded number is not a number");
    let close = json!({"event_id": "dc", "kind": "day_close", "location": "S1", "register": "1",
                       "business_date": "2026-11-26",
                       "totals": {"net_sales": "0", "tax": "0", "tenders": {}, "transaction_count": 0, "last_sequence": 0}});
    assert_eq!(status(&apply(close)), "applied");
    Spi::get_one::<JsonB>("SELECT possync.audit_day('S1', '2026-11-26')").expect("audit_day never raises");
}

#[pg_test]
fn an_event_nested_past_the_json_readers_limit_is_kept_as_rejected() {
    setup();
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let event = format!(
        r#"{{"event_id": "deep", "kind": "sale", "location": "S1", "business_date": "2026-11-26", "x": {deep}}}"#
    );
    let r = Spi::get_one_with_args::<JsonB>("SELECT possync.apply_event($1::jsonb)", &[event.clone().into()])
        .expect("never raises")
        .expect("a result")
        .0;
    assert_eq!(status(&r), "rejected", "{r}");
    let many = format!(r#"[{event}, {}]"#, receipt("ok", "S1", &[("A", "1", "1.00")]));
    let r = Spi::get_one_with_args::<JsonB>("SELECT possync.apply_events($1::jsonb)", &[many.into()])
        .expect("never raises")
        .expect("a result")
        .0;
    let got: Vec<&str> = r.as_array().expect("array").iter().map(status).collect();
    assert_eq!(got, ["rejected", "applied"], "one deep element does not take the others with it");
    assert_eq!(
        count("SELECT 1 FROM possync.exception WHERE kind = 'malformed' AND payload::text LIKE '%[[[[%'"),
        2,
        "kept whole, both times"
    );
}
