// Ledgers partitioned by business month: partitions made by posting, event ids unique across months, closed
// months archived with their totals carried (included into `mod tests` in lib.rs).

/// The event with its business date (and time) moved to `date`.
fn on(mut ev: Value, date: &str) -> Value {
    ev["business_date"] = json!(date);
    if ev.get("occurred_at").is_some() {
        ev["occurred_at"] = json!(format!("{date}T10:00:00Z"));
    }
    ev
}

/// The names of a ledger table's partitions, in order.
fn partitions_of(table: &str) -> Vec<String> {
    Spi::connect(|c| {
        c.select(
            &format!(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'possync.{table}'::regclass ORDER BY 1"
            ),
            None,
            &[],
        )
        .expect("partitions")
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect()
    })
}

/// The rows of a query as text, one per row, in the query's order.
fn rows_of(sql: &str) -> Vec<String> {
    Spi::connect(|c| {
        c.select(&format!("SELECT q::text FROM ({sql}) q"), None, &[])
            .expect(sql)
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect()
    })
}

thread_local! {
    static WARNINGS: std::cell::RefCell<Vec<(String, String)>> = const { std::cell::RefCell::new(Vec::new()) };
    static PREVIOUS_LOG_HOOK: std::cell::Cell<pg_sys::emit_log_hook_type> = const { std::cell::Cell::new(None) };
}

unsafe extern "C-unwind" fn keep_warnings(edata: *mut pg_sys::ErrorData) {
    // SAFETY: the server hands the hook a valid ErrorData; message and detail are NUL-terminated or NULL
    unsafe {
        if (*edata).elevel == pg_sys::WARNING as i32 {
            let text = |p: *mut std::ffi::c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let warning = (text((*edata).message), text((*edata).detail));
            WARNINGS.with(|w| w.borrow_mut().push(warning));
        }
        if let Some(previous) = PREVIOUS_LOG_HOOK.with(|p| p.get()) {
            previous(edata);
        }
    }
}

/// Runs `sql` and returns the WARNINGs it raised (message, detail) and its rows as text.
fn with_warnings(sql: &str) -> (Vec<(String, String)>, Vec<String>) {
    // SAFETY: the hook is put back before returning; nothing else runs on this backend meanwhile
    unsafe {
        PREVIOUS_LOG_HOOK.with(|p| p.set(pg_sys::emit_log_hook));
        pg_sys::emit_log_hook = Some(keep_warnings);
    }
    let rows = rows_of(sql);
    // SAFETY: as above
    unsafe {
        pg_sys::emit_log_hook = PREVIOUS_LOG_HOOK.with(|p| p.get());
    }
    (WARNINGS.with(|w| w.take()), rows)
}

#[pg_test]
fn posting_into_several_months_makes_their_partitions() {
    setup();
    let months = ["2026-09-05", "2026-10-03", "2027-02-01"];
    for (i, date) in months.iter().enumerate() {
        let r = apply(on(receipt(&format!("r{i}"), "S1", &[("A", "10", "2.00")]), date));
        assert_eq!(status(&r), "applied", "{r}");
        let s = apply(on(
            till(&format!("s{i}"), "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]),
            date,
        ));
        assert_eq!(status(&s), "applied", "{s}");
    }
    // each month the events are dated in, and the month after the latest of each call, in every ledger table
    for table in ["event", "stock_move", "journal", "journal_line"] {
        let expected: Vec<String> = ["2026_09", "2026_10", "2026_11", "2027_02", "2027_03"]
            .iter()
            .map(|m| format!("{table}_{m}"))
            .collect();
        assert_eq!(partitions_of(table), expected, "{table}");
    }
    // every row is in its month's partition: a receipt and a sale a month, one line each, each with a journal
    for (table, per_month) in [("event", 2), ("stock_move", 2), ("journal", 2), ("journal_line", -1)] {
        for (m, first) in [("2026_09", "2026-09-01"), ("2026_10", "2026-10-01"), ("2027_02", "2027-02-01")] {
            let dated = count(&format!(
                "SELECT 1 FROM possync.{table} WHERE business_date >= '{first}' AND business_date < '{first}'::date + interval '1 month'"
            ));
            assert_eq!(count(&format!("SELECT 1 FROM possync.{table}_{m}")), dated, "{table}_{m}");
            if per_month >= 0 {
                assert_eq!(dated, per_month, "{table}_{m}");
            }
        }
        assert_eq!(
            count(&format!("SELECT 1 FROM ONLY possync.{table}")),
            0,
            "a partitioned table holds nothing itself"
        );
        assert_eq!(count(&format!("SELECT 1 FROM possync.{table}_2026_11")), 0);
        assert_eq!(count(&format!("SELECT 1 FROM possync.{table}_2027_03")), 0);
    }
    assert_eq!(
        count("SELECT 1 FROM possync.stock_move m JOIN possync.event e USING (event_id) WHERE m.business_date <> e.business_date"),
        0
    );
    assert_eq!(
        count("SELECT 1 FROM possync.journal_line l JOIN possync.journal j USING (journal_id) WHERE l.business_date <> j.business_date"),
        0
    );
    assert_eq!(count("SELECT 1 FROM possync.event_key"), 6);
    // partitions are not members of the extension (pg_dump dumps them as the tables they are), and carry the
    // parent's keys and triggers
    assert_eq!(
        count(
            "SELECT 1 FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'"
        ),
        0
    );
    for (table, trigger) in [
        ("stock_move", "stock_move_append_only"),
        ("journal", "journal_append_only"),
        ("journal_line", "journal_line_append_only"),
        ("journal_line", "journal_line_balanced"),
    ] {
        assert_eq!(
            count(&format!(
                "SELECT 1 FROM pg_inherits i JOIN pg_trigger t ON t.tgrelid = i.inhrelid AND t.tgname = '{trigger}'
                  WHERE i.inhparent = 'possync.{table}'::regclass"
            )),
            5,
            "{trigger} on every partition of {table}"
        );
    }
    assert_eq!(
        count("SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid AND x.indisprimary
                WHERE i.inhparent IN ('possync.event'::regclass, 'possync.stock_move'::regclass,
                                      'possync.journal'::regclass, 'possync.journal_line'::regclass)"),
        20
    );
    // making them again makes nothing; make_partitions makes months ahead from the current one
    assert_eq!(
        Spi::get_one::<i32>("SELECT possync.make_ledger_months(ARRAY['2026-09-01'::date, '2027-02-14'])").expect("make"),
        Some(0)
    );
    let ahead = Spi::get_one::<i64>(
        "SELECT count(*) FROM generate_series(date_trunc('month', current_date), date_trunc('month', current_date + 62),
                                              interval '1 month') g
          WHERE to_char(g, 'YYYY-MM') NOT IN ('2026-09', '2026-10', '2026-11', '2027-02', '2027-03')",
    )
    .expect("months")
    .unwrap_or_default();
    assert_eq!(
        Spi::get_one::<i32>("SELECT possync.make_partitions(current_date + 62)").expect("ahead"),
        Some(ahead as i32 * 4)
    );
    assert_eq!(count("SELECT * FROM possync.check_invariants()"), 0);
    assert_eq!(count("SELECT * FROM possync.reconcile()"), 0);
}

#[pg_test(error = "possync.journal_line_2026_11 is append-only: UPDATE is not allowed")]
fn a_partition_is_append_only_as_its_parent() {
    setup();
    apply(till("s1", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]));
    Spi::run("UPDATE possync.journal_line_2026_11 SET debit = debit").expect("must fail");
}

#[pg_test(error = "journal 77 does not balance: debits 10.00 and credits 9.99")]
fn a_partition_refuses_an_unbalanced_journal_as_its_parent() {
    Spi::run(
        "SELECT possync.make_ledger_months(ARRAY['2026-11-01'::date]);
         INSERT INTO possync.journal_line_2026_11 (journal_id, line_no, account_code, debit, credit, business_date)
         VALUES (77, 1, '1000', 10.00, 0, '2026-11-26'), (77, 2, '4000', 0, 9.99, '2026-11-26')",
    )
    .expect("must fail");
}

#[pg_test]
fn an_event_id_is_one_event_across_months() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "2.00")]));
    let sale = on(till("x1", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]), "2026-10-10");
    assert_eq!(status(&apply(sale.clone())), "applied");
    // the same id dated in another month: another payload, a conflict, kept and not posted
    let later = on(sale.clone(), "2026-12-10");
    let r = apply(later.clone());
    assert_eq!(status(&r), "conflict", "{r}");
    assert_eq!(status(&apply(sale.clone())), "duplicate");
    // within one call too, in either order
    let rs = apply_all(json!([later, sale]));
    assert_eq!(rs.iter().map(|r| status(r).to_string()).collect::<Vec<_>>(), ["conflict", "duplicate"]);
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id = 'x1'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.event_key WHERE event_id = 'x1' AND business_date = '2026-10-10'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 'x1' AND kind = 'conflict'"), 2);
    assert_eq!(count("SELECT 1 FROM possync.journal WHERE event_id = 'x1'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.event_2026_12"), 0);
    // the key table itself refuses a second row for an id, whatever the month
    assert!(error_of(
        "INSERT INTO possync.event_key (event_id, business_date) VALUES ('x1', '2026-12-10')"
    )
    .starts_with("23505:"));
}

#[pg_test]
fn archive_refuses_an_open_period_and_one_that_is_not_closed() {
    setup();
    let e = error_of("SELECT possync.archive_period(current_date)");
    assert!(e.starts_with("55000:") && e.contains("is open"), "{e}");
    let e = error_of("SELECT possync.archive_period((current_date + 40)::date)");
    assert!(e.starts_with("55000:") && e.contains("is open"), "{e}");
    let e = error_of("SELECT possync.archive_period(NULL)");
    assert!(e.starts_with("22004:") && e.contains("argument month"), "{e}");
    // August holds a held event (an item the ERP does not know) and a tender mismatch
    apply(on(receipt("r1", "S1", &[("A", "10", "2.00")]), "2026-08-03"));
    let held = apply(on(
        till("h1", "sale", "S1", &[("NEW", "1", "5.00", "0", "0")], &[("cash", "5.00")]),
        "2026-08-04",
    ));
    assert_eq!(status(&held), "held");
    let short = apply(on(
        till("s1", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "4.99")]),
        "2026-08-05",
    ));
    assert_eq!(status(&short), "applied");
    let open = count("SELECT 1 FROM possync.exception WHERE status = 'open'");
    assert!(open >= 2, "the held event's and the short payment's");
    let e = error_of("SELECT possync.archive_period('2026-08-15')");
    assert!(e.starts_with("55000:") && e.contains(&format!("1 held events, {open} open exceptions")), "{e}");
    // September cannot go before August
    apply(on(receipt("r2", "S1", &[("A", "1", "2.00")]), "2026-09-03"));
    let e = error_of("SELECT possync.archive_period('2026-09-01')");
    assert!(e.starts_with("55000:") && e.contains("possync.event_2026_08"), "{e}");
    // once the item exists and the exceptions are resolved, August closes
    Spi::run("INSERT INTO possync.item (sku, standard_cost) VALUES ('NEW', 1.00)").expect("item");
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held()").expect("replay"), Some(1));
    Spi::run(
        "SELECT possync.resolve_exception(exception_id, 'checked') FROM possync.exception WHERE status = 'open'",
    )
    .expect("resolve");
    let done = Spi::get_one::<JsonB>("SELECT possync.archive_period('2026-08-31')").expect("archive").expect("result").0;
    assert_eq!(done["status"], json!("archived"), "{done}");
    assert_eq!(done["events"], json!(3));
    let e = error_of("SELECT possync.archive_period('2026-08-01')");
    assert!(e.starts_with("22023:") && e.contains("archived already"), "{e}");
}

/// September's sale: 2 × A at 5.00 and 1 × B at 3.00, NY tax on each line, paid by card.
fn sale_sep() -> Value {
    on(
        till("s-sep", "sale", "S1", &[("A", "2", "5.00", "0", "0.89"), ("B", "1", "3.00", "0", "0.27")], &[("card", "14.16")]),
        "2026-09-10",
    )
}

/// A store's September and October: stock received, sold, adjusted, shipped in September and received in
/// October, a return in October of a September sale. Nothing is left open in September.
fn two_months() {
    apply(on(receipt("r-sep", "S1", &[("A", "10", "2.00"), ("B", "4", "1.50")]), "2026-09-05"));
    let s = apply(sale_sep());
    assert_eq!(s["exceptions"], json!([]), "{s}");
    apply(json!({"event_id": "adj-sep", "kind": "adjustment", "location": "S1", "business_date": "2026-09-20",
                 "reason": "damaged", "lines": [{"sku": "A", "qty": -1}]}));
    apply(json!({"event_id": "to-sep", "kind": "transfer_out", "location": "S1", "business_date": "2026-09-25",
                 "transfer_id": "T1", "to_location": "S2", "lines": [{"sku": "A", "qty": 2}]}));
    apply(json!({"event_id": "ti-oct", "kind": "transfer_in", "location": "S2", "business_date": "2026-10-02",
                 "transfer_id": "T1", "from_location": "S1", "lines": [{"sku": "A", "qty": 1}]}));
    apply(on(
        till("s-oct", "sale", "S1", &[("A", "3", "5.00", "0", "1.33")], &[("cash", "16.33")]),
        "2026-10-05",
    ));
    let mut ret = on(
        till("ret-oct", "return", "S1", &[("A", "1", "5.00", "0", "0.44")], &[("card", "-5.44")]),
        "2026-10-07",
    );
    ret["original_event_id"] = json!("s-sep");
    assert_eq!(status(&apply(ret)), "applied");
}

#[pg_test]
fn an_archived_month_keeps_the_books_of_the_open_ones() {
    setup();
    two_months();
    assert_eq!(count("SELECT * FROM possync.reconcile()"), 0);
    assert_eq!(count("SELECT * FROM possync.check_invariants()"), 0);
    let trial = "SELECT account_code, location_id, debit, credit, balance FROM possync.trial_balance ORDER BY 1, 2";
    let trial_before = rows_of(trial);
    let october = "SELECT * FROM possync.trace('4000', 'S1', '2026-10-01', '2026-10-31')";
    let october_before = rows_of(october);
    assert_eq!(october_before.len(), 1, "the October sale's revenue line");
    let audit_before = rows_of("SELECT measure, dimension, value FROM possync.kpi_audit WHERE measure = 'manual_adjustments'");
    let stock_before = (stock("A", "S1"), stock("B", "S1"), stock("A", "S2"));
    // September: what its journals add per account, as the test computes it from the lines
    let september_gl = rows_of(
        "SELECT account_code, location_id, sum(debit), sum(credit) FROM possync.journal_line
          WHERE business_date < '2026-10-01' GROUP BY 1, 2 ORDER BY 1, 2",
    );
    let september = (
        count("SELECT 1 FROM possync.event WHERE business_date < '2026-10-01'"),
        count("SELECT 1 FROM possync.journal_line WHERE business_date < '2026-10-01'"),
    );

    let done = Spi::get_one::<JsonB>("SELECT possync.archive_period('2026-09-01')").expect("archive").expect("result").0;
    assert_eq!(done["status"], json!("archived"), "{done}");
    assert_eq!(done["events"], json!(september.0));
    assert_eq!(done["journal_lines"], json!(september.1));
    assert_eq!(
        done["tables"],
        json!(["possync_archive.event_2026_09", "possync_archive.stock_move_2026_09",
               "possync_archive.journal_2026_09", "possync_archive.journal_line_2026_09"])
    );
    // the month's rows left the ledgers for ordinary tables in possync_archive, and what they add is carried
    for table in ["event", "stock_move", "journal", "journal_line"] {
        assert!(!partitions_of(table).contains(&format!("{table}_2026_09")));
        assert_eq!(
            count(&format!("SELECT 1 FROM possync.{table} WHERE business_date < '2026-10-01'")),
            0
        );
    }
    assert_eq!(count("SELECT 1 FROM possync_archive.journal_line_2026_09"), september.1);
    assert_eq!(
        rows_of("SELECT account_code, location_id, debit, credit FROM possync.carried_gl ORDER BY 1, 2"),
        september_gl
    );
    assert_eq!(count("SELECT 1 FROM pg_trigger WHERE tgrelid = 'possync_archive.journal_line_2026_09'::regclass"), 0);

    // the books of the open months say what they said
    assert_eq!(rows_of("SELECT * FROM possync.reconcile()"), Vec::<String>::new());
    assert_eq!(rows_of("SELECT * FROM possync.check_invariants()"), Vec::<String>::new());
    assert_eq!(rows_of(trial), trial_before);
    assert_eq!(rows_of(october), october_before);
    assert_eq!(
        rows_of("SELECT measure, dimension, value FROM possync.kpi_audit WHERE measure = 'manual_adjustments'"),
        audit_before
    );
    assert_eq!((stock("A", "S1"), stock("B", "S1"), stock("A", "S2")), stock_before);
    // a range in open months warns of nothing
    let (warnings, _) = with_warnings(october);
    assert_eq!(warnings, Vec::<(String, String)>::new());
    // one that reaches into September says so, names where its journals are, and lists only October's lines
    let (warnings, rows) = with_warnings("SELECT * FROM possync.trace('4000', 'S1', '2026-09-15', '2026-10-31')");
    assert_eq!(rows, october_before);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].0.contains("archived periods (2026-09)"), "{warnings:?}");
    assert!(warnings[0].1.contains("possync_archive.journal_line_2026_09"), "{warnings:?}");
    let (warnings, _) = with_warnings("SELECT * FROM possync.trace('4000')");
    assert_eq!(warnings.len(), 1, "a trace without dates reaches into every month: {warnings:?}");

    // posting goes on in the open months, and the books still agree
    let later = on(till("s-nov", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]), "2026-11-20");
    assert_eq!(status(&apply(later)), "applied");
    let mut ret = on(
        till("ret-nov", "return", "S1", &[("B", "1", "3.00", "0", "0")], &[("cash", "-3.00")]),
        "2026-11-21",
    );
    ret["original_event_id"] = json!("s-sep");
    assert_eq!(status(&apply(ret)), "applied", "a return of an archived sale comes back at the current cost");
    let rev = Spi::get_one::<JsonB>("SELECT possync.reverse_event('s-oct', 'keyed twice')").expect("rev").expect("r").0;
    assert_eq!(rev["status"], json!("applied"), "{rev}");
    assert_eq!(rows_of("SELECT * FROM possync.reconcile()"), Vec::<String>::new());
    assert_eq!(rows_of("SELECT * FROM possync.check_invariants()"), Vec::<String>::new());
    let revenue = num("SELECT balance FROM possync.trial_balance WHERE account_code = '4000' AND location_id = 'S1'");
    // 2 × 5.00 + 3.00 (September), 3 × 5.00 (October, reversed), 5.00 (November); credits are negative
    assert_eq!(revenue, d("-13.00") - d("15.00") + d("15.00") - d("5.00"));
}

#[pg_test]
fn an_event_of_an_archived_month_is_recognised_and_none_posts_into_it() {
    setup();
    two_months();
    let sale = sale_sep();
    Spi::run("SELECT possync.archive_period('2026-09-01')").expect("archive");
    let journals = count("SELECT 1 FROM possync.journal");
    // sent again: the same payload is a duplicate, another one a conflict
    assert_eq!(status(&apply(sale.clone())), "duplicate");
    let mut changed = sale.clone();
    changed["tenders"] = json!([{"type": "cash", "amount": "14.16"}]);
    let r = apply(changed);
    assert_eq!(status(&r), "conflict", "{r}");
    // through the bridge's door too
    let batch = Spi::get_one_with_args::<JsonB>(
        "SELECT possync.apply_batch('pos-1', '0/10', $1)",
        &[JsonB(json!([sale])).into()],
    )
    .expect("batch")
    .expect("result")
    .0;
    assert_eq!(batch["results"][0]["status"], json!("duplicate"), "{batch}");
    // a new event dated in the archived month is rejected, kept, and names the field
    let late = on(till("s-late", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]), "2026-09-30");
    let r = apply(late);
    assert_eq!(status(&r), "rejected", "{r}");
    let reason = r["exceptions"][0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.starts_with("business_date: 2026-09-30 is in 2026-09, an archived period"), "{reason}");
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE event_id = 's-late' AND kind = 'malformed'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.journal"), journals, "nothing posted");
    // its resubmission in an open month posts
    let id = Spi::get_one::<i64>("SELECT exception_id FROM possync.exception WHERE event_id = 's-late'")
        .expect("id")
        .unwrap_or_default();
    let fixed = on(till("s-late", "sale", "S1", &[("A", "1", "5.00", "0", "0")], &[("cash", "5.00")]), "2026-10-30");
    let r = Spi::get_one_with_args::<JsonB>(
        "SELECT possync.resubmit($1, $2)",
        &[id.into(), JsonB(fixed).into()],
    )
    .expect("resubmit")
    .expect("result")
    .0;
    assert_eq!(status(&r), "applied", "{r}");
    // an archived event is not reversed here
    let e = error_of("SELECT possync.reverse_event('s-sep', 'too late')");
    assert!(e.starts_with("55000:") && e.contains("archived period"), "{e}");
    assert_eq!(count("SELECT * FROM possync.check_invariants()"), 0);
    assert_eq!(count("SELECT * FROM possync.reconcile()"), 0);
}
