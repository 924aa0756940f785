// Voids (cancelled till transactions), POS documents waiting to become final, and what a source left behind
// (included into `mod tests` in lib.rs).

/// A void at S1's register 7.
fn void_at(id: &str, seq: i64) -> Value {
    json!({"event_id": id, "kind": "void", "location": "S1", "register": "7", "sequence": seq,
           "business_date": "2026-11-26", "reason": "customer changed their mind"})
}

/// What a statement raises, as "SQLSTATE: message", or "no error".
fn error_of(sql: &str) -> String {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE q; RETURN 'no error';
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
    )
    .expect("helper");
    Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()])
        .expect("error_of")
        .unwrap_or_default()
}

#[pg_test]
fn a_void_posts_nothing_and_is_kept_as_applied() {
    setup();
    apply(receipt("r1", "S1", &[("A", "4", "3.00")]));
    let (moves, journals, lines) = (
        count("SELECT 1 FROM possync.stock_move"),
        count("SELECT 1 FROM possync.journal"),
        count("SELECT 1 FROM possync.journal_line"),
    );
    // a void may carry the cancelled basket: none of it is posted
    let mut v = void_at("v1", 1);
    v["lines"] = json!([{"sku": "A", "qty": 2, "unit_price": "9.00"}]);
    v["tenders"] = json!([{"type": "cash", "amount": "18.00"}]);
    let r = apply(v.clone());
    assert_eq!(status(&r), "applied", "{r}");
    assert!(r["journal_id"].is_null());
    assert_eq!(r["exceptions"], json!([]));
    assert_eq!(
        (
            count("SELECT 1 FROM possync.stock_move"),
            count("SELECT 1 FROM possync.journal"),
            count("SELECT 1 FROM possync.journal_line")
        ),
        (moves, journals, lines),
        "no stock move, no journal"
    );
    assert_eq!(stock("A", "S1"), (d("4"), d("12.00")));
    assert_eq!(
        count(
            "SELECT 1 FROM possync.event WHERE event_id = 'v1' AND kind = 'void' AND status = 'applied'
               AND register = '7' AND sequence = 1 AND location_id = 'S1' AND business_date = '2026-11-26'
               AND journal_id IS NULL AND payload ->> 'reason' = 'customer changed their mind'"
        ),
        1
    );
    // duplicate and conflict as for any event
    assert_eq!(status(&apply(v.clone())), "duplicate");
    let mut other = v.clone();
    other["reason"] = json!("keyed by mistake");
    assert_eq!(status(&apply(other)), "conflict");
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'v1' AND kind = 'conflict'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'v1'"), 1);
    // malformed: rejected and kept with the field named
    let mut bad = void_at("v2", 2);
    bad.as_object_mut().expect("object").remove("sequence");
    let r = apply(bad);
    assert_eq!(status(&r), "rejected");
    assert!(r["exceptions"][0]["reason"].as_str().unwrap_or_default().starts_with("sequence: is required"), "{r}");
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'v2'"), 0);
    // at a location the ERP does not know yet: held like any event, applied on replay, still posting nothing
    let mut away = void_at("v3", 3);
    away["location"] = json!("S7");
    assert_eq!(status(&apply(away)), "held");
    Spi::run("INSERT INTO possync.location (location_id) VALUES ('S7')").expect("location");
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held('v3')").expect("replay"), Some(1));
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'v3' AND status = 'applied'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.journal"), journals);
    assert_invariants();
}

#[pg_test]
fn a_void_fills_its_place_in_the_register_sequence() {
    setup();
    // 1 sold, 2 voided, 3 sold: no gap
    apply_all(json!([numbered_sale("t1", 1, "5"), void_at("v2", 2), numbered_sale("t3", 3, "5")]));
    assert_eq!(open_of("missing_transaction"), 0);
    // 4 and 5 skipped: a gap of 2; a late void of 5 closes one of them, the sale of 4 the other
    apply(numbered_sale("t6", 6, "5"));
    assert_eq!(num("SELECT amount FROM possync.exception WHERE kind = 'missing_transaction' AND status = 'open'"), d("2"));
    apply(void_at("v5", 5));
    assert_eq!(num("SELECT amount FROM possync.exception WHERE kind = 'missing_transaction' AND status = 'open'"), d("1"));
    let missing = Spi::get_one::<JsonB>(
        "SELECT detail -> 'missing' FROM possync.exception WHERE kind = 'missing_transaction' AND status = 'open'",
    )
    .expect("detail")
    .expect("missing")
    .0;
    assert_eq!(missing, json!([4]));
    apply(numbered_sale("t4", 4, "5"));
    assert_eq!(open_of("missing_transaction"), 0);
    // a void jumping ahead opens a gap like a sale would
    apply(void_at("v9", 9));
    assert_eq!(num("SELECT amount FROM possync.exception WHERE kind = 'missing_transaction' AND status = 'open'"), d("2"));
    // a void of a number a sale used is the number used twice
    apply(void_at("v3-again", 3));
    assert_eq!(open_of("duplicate_sequence"), 1);
    assert!(Spi::get_one::<String>("SELECT reason FROM possync.exception WHERE kind = 'duplicate_sequence'")
        .expect("reason")
        .unwrap_or_default()
        .contains("used by t3 and again by v3-again"));
    assert_eq!(num("SELECT last_sequence FROM possync.register_state WHERE register = '7'"), d("9"));
}

#[pg_test]
fn a_day_close_counts_voids_as_transactions_but_not_their_baskets() {
    setup();
    apply(receipt("r0", "S1", &[("A", "10", "1.00")]));
    let mut v2 = void_at("v2", 2);
    // the cancelled basket rides along; it was never sold
    v2["lines"] = json!([{"sku": "A", "qty": 1, "unit_price": "99.00", "tax": "8.79"}]);
    v2["tenders"] = json!([{"type": "cash", "amount": "107.79"}]);
    apply_all(json!([numbered_sale("t1", 1, "10.00"), v2, numbered_sale("t3", 3, "20.00"), void_at("v4", 4)]));
    // the register's own figures: 4 transactions (2 sales, 2 voids), last number 4, and what the sales took
    let tax = |p: &str| (d(p) * d("0.08875")).round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let (net, tax) = (d("10.00") + d("20.00"), tax("10.00") + tax("20.00"));
    let close = |id: &str, transactions: i64| {
        json!({"event_id": id, "kind": "day_close", "location": "S1", "register": "7", "business_date": "2026-11-26",
               "totals": {"net_sales": net.to_string(), "tax": tax.to_string(),
                          "tenders": {"cash": (net + tax).to_string()},
                          "transaction_count": transactions, "last_sequence": 4}})
    };
    assert_eq!(status(&apply(close("close-a", 4))), "applied");
    assert_eq!(open_of("day_close_mismatch"), 0, "voids counted, their baskets not");
    let day = Spi::get_one::<JsonB>("SELECT possync.audit_day('S1', '2026-11-26')").expect("audit").expect("day").0;
    assert_eq!(day["status"], json!("clean"), "{day}");
    // a register that counted only its sales is 2 short of what possync counts
    apply(close("close-b", 2));
    let diffs = Spi::get_one::<JsonB>(
        "SELECT detail -> 'differences' FROM possync.exception WHERE kind = 'day_close_mismatch' AND status = 'open'",
    )
    .expect("detail")
    .expect("differences")
    .0;
    assert_eq!(
        diffs,
        json!([{"field": "transaction_count", "expected": 2, "posted": 4, "difference": -2}])
    );
}

#[pg_test]
fn note_documents_keeps_pending_keys_and_forgets_settled_ones() {
    setup();
    Spi::run(
        "SELECT possync.note_documents('pos-a', 'order', '{A1,A2,A3}', '{}');
         UPDATE possync.pending_document SET first_seen = now() - interval '3 hours', last_seen = now() - interval '2 hours'
          WHERE doc_key = 'A1';",
    )
    .expect("note");
    assert_eq!(count("SELECT 1 FROM possync.pending_document WHERE source = 'pos-a' AND document = 'order'"), 3);
    // seen again (twice in one call) while still pending: first_seen kept, last_seen now; A2 settles; A4 is new;
    // B9 is settled without ever being pending
    Spi::run("SELECT possync.note_documents('pos-a', 'order', '{A1,A1,A4}', '{A2,B9}')").expect("note again");
    let keys = Spi::get_one::<String>("SELECT string_agg(doc_key, ',' ORDER BY doc_key) FROM possync.pending_document")
        .expect("keys");
    assert_eq!(keys, Some("A1,A3,A4".into()));
    assert_eq!(
        count(
            "SELECT 1 FROM possync.pending_document WHERE doc_key = 'A1'
               AND first_seen = now() - interval '3 hours' AND last_seen = now()"
        ),
        1
    );
    // a key pending and settled in the same call reached its final state within it
    Spi::run("SELECT possync.note_documents('pos-a', 'order', '{A5}', '{A5,A3}')").expect("both");
    assert_eq!(count("SELECT 1 FROM possync.pending_document WHERE doc_key IN ('A5', 'A3')"), 0);
    // another source or document with the same key is another row
    Spi::run("SELECT possync.note_documents('pos-b', 'order', '{A1}', '{}'), possync.note_documents('pos-a', 'invoice', '{A1}', '{}')")
        .expect("others");
    assert_eq!(count("SELECT 1 FROM possync.pending_document WHERE doc_key = 'A1'"), 3);
    Spi::run("SELECT possync.note_documents('pos-b', 'order', '{}', '{A1}')").expect("settle one");
    assert_eq!(count("SELECT 1 FROM possync.pending_document WHERE doc_key = 'A1'"), 2);
    assert_eq!(count("SELECT 1 FROM possync.pending_document WHERE source = 'pos-b'"), 0);
}

#[pg_test]
fn note_documents_names_a_null_argument() {
    for (call, arg) in [
        ("NULL, 'order', '{}', '{}'", "source"),
        ("'pos-a', NULL, '{}', '{}'", "document"),
        ("'pos-a', 'order', NULL, '{}'", "pending"),
        ("'pos-a', 'order', '{}', NULL", "settled"),
    ] {
        assert_eq!(
            error_of(&format!("SELECT possync.note_documents({call})")),
            format!("22004: possync.note_documents: argument {arg} must not be NULL")
        );
    }
    assert_eq!(
        error_of("SELECT possync.note_documents('pos-a', 'order', ARRAY['A1', NULL], '{}')"),
        "22004: possync.note_documents: argument pending must not contain NULL keys"
    );
    assert_eq!(
        error_of("SELECT possync.note_documents('pos-a', 'order', '{}', ARRAY[NULL]::text[])"),
        "22004: possync.note_documents: argument settled must not contain NULL keys"
    );
    assert_eq!(count("SELECT 1 FROM possync.pending_document"), 0);
}

#[pg_test]
fn a_document_pending_past_the_setting_is_an_open_exception() {
    setup();
    apply(json!({"event_id": "x", "kind": "sale"}));
    Spi::run(
        "SELECT possync.note_documents('pos-a', 'order', '{O-old,O-new}', '{}');
         UPDATE possync.pending_document SET first_seen = now() - interval '2 hours' WHERE doc_key = 'O-old';
         UPDATE possync.pending_document SET first_seen = now() - interval '30 minutes' WHERE doc_key = 'O-new';",
    )
    .expect("pending");
    // (exception_id, kind, age, reason, next_step, source, event/location/amount run together)
    type Row = (Option<i64>, String, String, String, String, String, String);
    let rows = || -> Vec<Row> {
        Spi::connect(|c| {
            c.select(
                "SELECT exception_id, kind, age::text, reason, next_step, coalesce(source, ''),
                        coalesce(event_id, '') || coalesce(location_id, '') || coalesce(amount_at_stake::text, '')
                   FROM possync.open_exceptions WHERE kind = 'document_not_final' ORDER BY raised_at",
                None,
                &[],
            )
            .expect("view")
            .map(|r| {
                let t = |i: usize| r.get::<String>(i).ok().flatten().unwrap_or_default();
                (r.get::<i64>(1).ok().flatten(), t(2), t(3), t(4), t(5), t(6), t(7))
            })
            .collect()
        })
    };
    // the default: 1 hour
    let found = rows();
    assert_eq!(found.len(), 1, "{found:?}");
    let (id, kind, age, reason, next, source, nothing) = &found[0];
    assert_eq!((id, kind.as_str(), age.as_str()), (&None, "document_not_final", "02:00:00"));
    assert!(reason.contains("pos-a") && reason.contains("order O-old") && reason.contains("02:00:00"), "{reason}");
    assert!(next.contains("final state") && next.contains("cancel it in the POS"), "{next}");
    assert!(
        next.contains("DELETE FROM possync.pending_document WHERE source = 'pos-a' AND document = 'order' AND doc_key = 'O-old'"),
        "{next}"
    );
    assert_eq!((source.as_str(), nothing.as_str()), ("pos-a", ""));
    // the other open exception is still there, first (raised now, but ordered by raised_at: the document is older)
    let kinds = Spi::get_one::<String>("SELECT string_agg(kind, ',' ORDER BY raised_at) FROM possync.open_exceptions")
        .expect("kinds");
    assert_eq!(kinds, Some("document_not_final,malformed".into()));
    // a shorter setting shows both; a longer one neither
    Spi::run("SET LOCAL possync.document_final_within = '10 min'").expect("set");
    assert_eq!(rows().iter().map(|r| r.2.clone()).collect::<Vec<_>>(), vec!["02:00:00", "00:30:00"]);
    Spi::run("SET LOCAL possync.document_final_within = '1 day'").expect("set");
    assert_eq!(rows().len(), 0);
    Spi::run("SET LOCAL possync.document_final_within = '10 min'").expect("set");
    // the document settles: gone
    Spi::run("SELECT possync.note_documents('pos-a', 'order', '{}', '{O-old}')").expect("settle");
    assert_eq!(rows().len(), 1);
    assert_eq!(
        error_of("SET possync.document_final_within = 'soon'"),
        "22023: invalid value for parameter \"possync.document_final_within\": \"soon\""
    );
    assert_eq!(
        error_of("SET possync.document_final_within = '-5 minutes'"),
        "22023: invalid value for parameter \"possync.document_final_within\": \"-5 minutes\""
    );
    assert_eq!(
        Spi::get_one::<String>("SELECT current_setting('possync.document_final_within')").expect("setting"),
        Some("10 min".into())
    );
}

#[pg_test]
fn source_status_counts_a_sources_rejected_events_and_its_open_exceptions() {
    setup();
    let batch = |lsn: &str, events: Value| {
        Spi::get_one_with_args::<JsonB>(
            "SELECT possync.apply_batch('pos-a', $1::pg_lsn, $2)",
            &[lsn.into(), JsonB(events).into()],
        )
        .expect("apply_batch")
    };
    // 3 rejected (two malformed, one unmapped row), 1 held with its exception, 1 applied sale paid a cent short
    batch(
        "0/10",
        json!([
            {"event_id": "bad-1", "kind": "sale", "location": "S1"},
            {"event_id": "bad-2", "kind": "teleport", "location": "S1", "business_date": "2026-11-26"},
            {"event_id": "row-9", "kind": "unmapped", "reason": "no mapping for pos.coupon"},
            till("held-1", "sale", "S9", &[("A", "1", "5", "0", "0")], &[("cash", "5")]),
            till("s1", "sale", "S1", &[("A", "1", "5", "0", "0")], &[("cash", "4.99")])
        ]),
    );
    // another source's rejection, and one of this source's kept before an operator resolved it
    Spi::run("SELECT possync.apply_batch('pos-b', '0/10', '[{\"event_id\": \"bad-3\", \"kind\": \"sale\"}]')").expect("pos-b");
    batch("0/20", json!([{"event_id": "bad-4", "kind": "sale"}]));
    Spi::run("SELECT possync.resolve_exception(exception_id, 'test row') FROM possync.exception WHERE event_id = 'bad-4'")
        .expect("resolve");
    // pos-a's open exceptions, counted here from the table: the 3 rejected events (never in possync.event),
    // held-1's unknown location, and s1's tender and tax mismatches and negative on-hand (no stock yet)
    let kinds = Spi::get_one::<String>(
        "SELECT string_agg(kind, ',' ORDER BY kind) FROM possync.exception WHERE source = 'pos-a' AND status = 'open'",
    )
    .expect("kinds");
    assert_eq!(
        kinds.as_deref(),
        Some("malformed,malformed,malformed,negative_on_hand,tax_mismatch,tender_mismatch,unknown_location")
    );
    let (expect_rejected, expect_open) = (3, 7);
    let row = Spi::get_three::<i64, i64, i64>(
        "SELECT held, rejected, open_exceptions FROM possync.source_status WHERE source_id = 'pos-a'",
    )
    .expect("source_status");
    assert_eq!(row, (Some(1), Some(expect_rejected), Some(expect_open)));
    assert_eq!(
        Spi::get_one::<i64>("SELECT rejected FROM possync.source_status WHERE source_id = 'pos-b'").expect("pos-b"),
        Some(1)
    );
}
