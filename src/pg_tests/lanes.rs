// Apply lanes: one source applied in parallel sessions, each lane with its own checkpoint
// (included into `mod tests` in lib.rs).

/// apply_batch of one lane of source `pos-l`.
fn lane_batch(lsn: &str, events: Value, lane: i32, lanes: i32) -> Value {
    Spi::get_one_with_args::<JsonB>(
        "SELECT possync.apply_batch('pos-l', $1::pg_lsn, $2, $3, $4)",
        &[lsn.to_string().into(), JsonB(events).into(), lane.into(), lanes.into()],
    )
    .expect("apply_batch (lane)")
    .expect("result")
    .0
}

/// Each lane's checkpoint as start_lanes gives it.
fn start_lanes(lanes: i32) -> Vec<(i32, String)> {
    Spi::connect(|c| {
        c.select(
            "SELECT lane, checkpoint::text FROM possync.start_lanes('pos-l', $1)",
            None,
            &[lanes.into()],
        )
        .expect("start_lanes")
        .map(|r| {
            (
                r.get::<i32>(1).expect("lane").expect("lane"),
                r.get::<String>(2).expect("checkpoint").expect("checkpoint"),
            )
        })
        .collect()
    })
}

fn resume_point() -> String {
    Spi::get_one::<String>("SELECT possync.source_checkpoint('pos-l')::text")
        .expect("source_checkpoint")
        .unwrap_or_default()
}

/// A one-line cash sale of one A at `loc`.
fn lane_sale(id: &str, loc: &str) -> Value {
    till(id, "sale", loc, &[("A", "1", "5", "0", "0")], &[("cash", "5")])
}

#[pg_test]
fn each_lane_skips_what_it_applied_and_the_source_resumes_at_the_least() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "2.00")]));
    apply(receipt("r2", "S2", &[("A", "10", "2.00")]));
    assert_eq!(start_lanes(2), vec![(0, "0/0".to_string()), (1, "0/0".to_string())]);
    // lane 0 takes S1, lane 1 S2; lane 0 is ahead
    assert_eq!(lane_batch("0/300", json!([lane_sale("l0a", "S1")]), 0, 2)["status"], json!("applied"));
    assert_eq!(lane_batch("0/500", json!([lane_sale("l0b", "S1")]), 0, 2)["status"], json!("applied"));
    assert_eq!(lane_batch("0/300", json!([lane_sale("l1a", "S2")]), 1, 2)["status"], json!("applied"));
    assert_eq!(resume_point(), "0/300");
    // after a restart both lanes are sent 0/500 again: lane 0 has it, lane 1 does not
    let again = lane_batch("0/500", json!([lane_sale("l0b", "S1")]), 0, 2);
    assert_eq!(again["status"], json!("skipped"), "{again}");
    assert_eq!(lane_batch("0/500", json!([lane_sale("l1b", "S2")]), 1, 2)["status"], json!("applied"));
    assert_eq!(resume_point(), "0/500");
    // the same number of lanes keeps them where they are
    assert_eq!(start_lanes(2), vec![(0, "0/500".to_string()), (1, "0/500".to_string())]);
    assert_eq!(count("SELECT 1 FROM possync.event WHERE event_id LIKE 'l%' AND source = 'pos-l'"), 4);
    assert_eq!(stock("A", "S1").0, d("8"));
    assert_eq!(stock("A", "S2").0, d("8"));
    // source_status adds up the lanes
    let (cp, applied, lanes) = Spi::get_three::<String, i64, i32>(
        "SELECT checkpoint::text, events_applied, apply_lanes FROM possync.source_status WHERE source_id = 'pos-l'",
    )
    .expect("source_status");
    assert_eq!((cp.as_deref(), applied, lanes), (Some("0/500"), Some(4), Some(2)));
}

#[pg_test]
fn another_number_of_lanes_restarts_every_lane_at_the_least_checkpoint() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "2.00")]));
    apply(receipt("r2", "S2", &[("A", "10", "2.00")]));
    start_lanes(2);
    lane_batch("0/900", json!([lane_sale("m0", "S1")]), 0, 2);
    lane_batch("0/400", json!([lane_sale("m1", "S2")]), 1, 2);
    let three = start_lanes(3);
    assert_eq!(three.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(three.iter().all(|(_, cp)| cp == "0/400"), "{three:?}");
    // the old lanes' count is kept by the source
    assert_eq!(num("SELECT events_applied FROM possync.source WHERE source_id = 'pos-l'"), d("2"));
    // m0 comes again in whichever lane now has S1: a duplicate, posted once
    let r = lane_batch("0/900", json!([lane_sale("m0", "S1")]), 2, 3);
    assert_eq!(r["results"][0]["status"], json!("duplicate"), "{r}");
    assert_eq!(stock("A", "S1").0, d("9"));
    // a lane of the old count is refused, naming what to do
    let e = error_of("SELECT possync.apply_batch('pos-l', '0/A00', '[]', 1, 2)");
    assert!(e.starts_with("55000") && e.contains("not applied in 2 lanes") && e.contains("started as 3"), "{e}");
}

#[pg_test]
fn a_single_session_takes_the_source_back_from_its_lanes() {
    setup();
    apply(receipt("r1", "S1", &[("A", "10", "2.00")]));
    start_lanes(2);
    lane_batch("0/700", json!([lane_sale("n0", "S1")]), 0, 2);
    lane_batch("0/200", json!([]), 1, 2);
    let plain = |lsn: &str, events: Value| {
        Spi::get_one_with_args::<JsonB>(
            "SELECT possync.apply_batch('pos-l', $1::pg_lsn, $2)",
            &[lsn.to_string().into(), JsonB(events).into()],
        )
        .expect("apply_batch")
        .expect("result")
        .0
    };
    // resumes at the least lane: 0/200 is behind it, 0/700 is past it and posts n0 as a duplicate
    assert_eq!(plain("0/200", json!([]))["status"], json!("skipped"));
    assert_eq!(count("SELECT 1 FROM possync.source_lane"), 0);
    let r = plain("0/700", json!([lane_sale("n0", "S1")]));
    assert_eq!(r["results"][0]["status"], json!("duplicate"), "{r}");
    assert_eq!(resume_point(), "0/700");
    assert_eq!(stock("A", "S1").0, d("9"));
    assert_eq!(num("SELECT events_applied FROM possync.source WHERE source_id = 'pos-l'"), d("1"));
}

#[pg_test]
fn lane_arguments_are_checked_by_name() {
    setup();
    for (sql, want) in [
        ("SELECT possync.apply_batch('pos-l', '0/1', '[]', 0, 0)", "argument lanes is 0"),
        ("SELECT possync.apply_batch('pos-l', '0/1', '[]', 2, 2)", "argument lane is 2"),
        ("SELECT possync.apply_batch('pos-l', '0/1', '[]', NULL, 2)", "argument lane must not be NULL"),
        ("SELECT possync.apply_batch('pos-l', '0/1', '[]', 0, 1)", "not applied in 1 lanes"),
        ("SELECT * FROM possync.start_lanes('pos-l', 65)", "argument lanes is 65"),
        ("SELECT * FROM possync.start_lanes(NULL, 2)", "argument source must not be NULL"),
        ("SELECT * FROM possync.start_lanes(' ', 2)", "argument source must not be empty"),
    ] {
        let e = error_of(sql);
        assert!(e.contains(want), "{sql}: {e}");
    }
}
