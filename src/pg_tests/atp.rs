// Available-to-Promise and reservations (included into `mod tests` in lib.rs).

fn atp_of(sku: &str, loc: Option<&str>) -> Decimal {
    match loc {
        Some(l) => num(&format!("SELECT possync.atp('{sku}', '{l}')")),
        None => num(&format!("SELECT possync.atp('{sku}')")),
    }
}

fn reserve(id: &str, sku: &str, loc: &str, qty: &str, expires: &str) -> Value {
    Spi::get_one::<JsonB>(&format!(
        "SELECT possync.reserve('{id}', '{sku}', '{loc}', {qty}, {expires})"
    ))
    .expect("reserve")
    .expect("result")
    .0
}

fn release(id: &str) -> Value {
    Spi::get_one::<JsonB>(&format!("SELECT possync.release('{id}')"))
        .expect("release")
        .expect("result")
        .0
}

#[pg_test]
fn atp_detail_adds_up_each_part() {
    setup();
    apply(receipt("r1", "S1", &[("A", "20", "1.00")]));
    Spi::run(
        "INSERT INTO possync.safety_stock (sku, location_id, qty) VALUES ('A', 'S1', 3);
         INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at) VALUES
             ('PO-soon', 'A', 'S1', 5, now() + interval '1 day'),
             ('PO-late', 'A', 'S1', 7, now() + interval '10 days');",
    )
    .expect("master data");
    assert_eq!(reserve("o1", "A", "S1", "4", "NULL")["status"], json!("reserved"));
    // an expired hold that expire_reservations has not freed yet does not count
    Spi::run(
        "INSERT INTO possync.reservation (reservation_id, sku, location_id, qty, expires_at)
             VALUES ('old', 'A', 'S1', 2, now() - interval '1 minute');
         UPDATE possync.stock_balance SET reserved = reserved + 2 WHERE sku = 'A' AND location_id = 'S1';",
    )
    .expect("expired hold");
    let (on_hand, reserved, safety) = (d("20"), d("4"), d("3"));
    assert_eq!(atp_of("A", Some("S1")), on_hand - reserved - safety, "no supply due by now");
    let in_3_days = num("SELECT possync.atp('A', 'S1', now() + interval '3 days')");
    assert_eq!(in_3_days, on_hand - reserved - safety + d("5"), "supply due before `at` counts");
    let in_30_days = num("SELECT possync.atp('A', 'S1', now() + interval '30 days')");
    assert_eq!(in_30_days, on_hand - reserved - safety + d("12"));
    let row = Spi::get_three::<String, String, String>(
        "SELECT on_hand::text, reserved::text, incoming::text
           FROM possync.atp_detail('A', 'S1', now() + interval '3 days')",
    )
    .expect("detail");
    assert_eq!(row, (Some("20".into()), Some("4".into()), Some("5".into())));
    assert_eq!(Spi::get_one::<i32>("SELECT possync.expire_reservations()").expect("expire"), Some(1));
    assert_eq!(num("SELECT reserved FROM possync.stock_balance WHERE sku = 'A' AND location_id = 'S1'"), reserved);
    assert_eq!(atp_of("A", Some("S1")), on_hand - reserved - safety);
}

#[pg_test]
fn the_index_path_and_the_sql_path_give_the_same_atp() {
    setup();
    apply(receipt("r1", "S1", &[("A", "20.500", "1.00"), ("B", "3", "2.00")]));
    apply(receipt("r2", "S2", &[("A", "7", "1.00")]));
    Spi::run(
        "INSERT INTO possync.safety_stock (sku, location_id, qty) VALUES ('A', 'S1', 3), ('B', 'S2', 1);
         INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at) VALUES
             ('PO-1', 'A', 'S1', 5, now() + interval '1 day'),
             ('PO-2', 'A', 'S1', 7.25, now() + interval '10 days'),
             ('PO-3', 'A', 'S1', 0, now() - interval '1 day'),
             ('PO-4', 'B', 'S1', 2, now() - interval '1 hour');
         INSERT INTO possync.reservation (reservation_id, sku, location_id, qty, expires_at)
             VALUES ('gone', 'A', 'S1', 2, now() - interval '1 minute');
         UPDATE possync.stock_balance SET reserved = reserved + 2 WHERE sku = 'A' AND location_id = 'S1';",
    )
    .expect("master data");
    reserve("held", "A", "S1", "1.5", "now() + interval '1 hour'");
    let same = |sql_at: &str| {
        for (sku, loc) in [("A", "S1"), ("A", "S2"), ("B", "S1"), ("B", "S2")] {
            let fast = num(&format!("SELECT possync.atp('{sku}', '{loc}', {sql_at})"));
            let checked = num(&format!("SELECT possync.atp_checked('{sku}', '{loc}', {sql_at})"));
            assert_eq!(fast, checked, "{sku} at {loc} by {sql_at}");
        }
        for sku in ["A", "B"] {
            let fast = num(&format!("SELECT possync.atp('{sku}', NULL, {sql_at})"));
            let checked = num(&format!("SELECT possync.atp_checked('{sku}', NULL, {sql_at})"));
            assert_eq!(fast, checked, "{sku} across the network by {sql_at}");
        }
    };
    same("now()");
    same("now() + interval '2 days'");
    same("now() + interval '30 days'");
    // A at S1 in 2 days: 20.5 on hand - 3.5 reserved + 2 expired - 3 safety + 5 due
    assert_eq!(num("SELECT possync.atp('A', 'S1', now() + interval '2 days')"), d("21"));
    // the network: A is 21 at S1 and 7 at S2; B is 3 + 2 due at S1 and -1 (clipped to 0) at S2
    assert_eq!(num("SELECT possync.atp('A', NULL, now() + interval '2 days')"), d("28"));
    assert_eq!(num("SELECT possync.atp('B')"), d("5"));
    // an inactive location counts for nothing
    Spi::run("UPDATE possync.location SET active = false WHERE location_id = 'S2'").expect("close S2");
    same("now() + interval '2 days'");
    assert_eq!(num("SELECT possync.atp('A', NULL, now() + interval '2 days')"), d("21"));
    Spi::run("UPDATE possync.location SET active = true WHERE location_id = 'S2'").expect("open S2");
    // the index path answers without SQL: the checked path would look up the sku in possync.item
    let item_scans = || num("SELECT idx_scan FROM pg_stat_xact_user_tables WHERE relid = 'possync.item'::regclass");
    let before = item_scans();
    atp_of("A", Some("S1"));
    assert_eq!(item_scans(), before, "atp('A', 'S1') went through SQL");
    num("SELECT possync.atp_checked('A', 'S1')");
    assert!(item_scans() > before, "the SQL path is seen by the same counter");
    // B at S2 never had stock: the SQL path answers (safety stock only)
    assert_eq!(atp_of("B", Some("S2")), d("-1"));
    // a schema the index path does not know (its index is gone) is noticed and answered by SQL
    Spi::run("DROP INDEX possync.supply_by_sku").expect("drop index");
    same("now() + interval '30 days'");
    assert_eq!(num("SELECT possync.atp('A', 'S1', NULL)"), num("SELECT possync.atp('A', 'S1')"));
}

#[pg_test]
fn network_atp_clips_each_location_and_skips_inactive_ones() {
    setup();
    Spi::run("INSERT INTO possync.location (location_id, active) VALUES ('S3', false)").expect("location");
    apply(receipt("r1", "S1", &[("B", "10", "1.00")]));
    apply(receipt("r3", "S3", &[("B", "50", "1.00")]));
    // S2 oversold: -2 must not reduce the network figure
    apply(till("s2", "sale", "S2", &[("B", "2", "2", "0", "0")], &[("cash", "4")]));
    assert_eq!(atp_of("B", Some("S2")), d("-2"));
    assert_eq!(atp_of("B", None), d("10"));
    assert_eq!(count("SELECT 1 FROM possync.atp_detail('B')"), 2, "active locations only");
}

#[pg_test]
fn a_sale_changes_atp_in_the_same_transaction() {
    setup();
    apply(receipt("r1", "S1", &[("A", "5", "1.00")]));
    let before = atp_of("A", Some("S1"));
    apply(till("s1", "sale", "S1", &[("A", "2", "3", "0", "0")], &[("cash", "6")]));
    assert_eq!(atp_of("A", Some("S1")), before - d("2"));
}

#[pg_test]
fn reserve_is_idempotent_and_never_exceeds_atp() {
    setup();
    apply(receipt("r1", "S1", &[("A", "3", "1.00")]));
    let first = reserve("w1", "A", "S1", "2", "now() + interval '30 minutes'");
    assert_eq!(first["status"], json!("reserved"));
    assert_eq!(first["atp"], json!("1"));
    let again = reserve("w1", "A", "S1", "2", "now() + interval '30 minutes'");
    assert_eq!(again["status"], json!("reserved"));
    assert_eq!(num("SELECT reserved FROM possync.stock_balance WHERE sku = 'A'"), d("2"), "no double hold");
    let too_much = reserve("w2", "A", "S1", "2", "NULL");
    assert_eq!(too_much["status"], json!("insufficient"));
    assert_eq!(reserve("w2", "A", "S1", "2", "NULL")["status"], json!("insufficient"), "same answer again");
    assert_eq!(release("w1")["status"], json!("released"));
    assert_eq!(release("w1")["status"], json!("already_released"));
    assert_eq!(release("nope")["status"], json!("unknown"));
    assert_eq!(atp_of("A", Some("S1")), d("3"));
}

#[pg_test(error = "possync.reserve: argument qty must be positive, got 0")]
fn reserve_rejects_a_zero_quantity() {
    setup();
    reserve("z", "A", "S1", "0", "NULL");
}

#[pg_test(error = "possync.reserve: argument sku \"NOPE\" is not in possync.item")]
fn reserve_rejects_an_unknown_sku() {
    setup();
    reserve("z", "NOPE", "S1", "1", "NULL");
}

#[pg_test(error = "possync.atp: argument location \"S404\" is not in possync.location")]
fn atp_rejects_an_unknown_location() {
    setup();
    atp_of("A", Some("S404"));
}

#[pg_test(error = "possync.atp: argument sku \"NOPE\" is not in possync.item")]
fn network_atp_rejects_an_unknown_sku() {
    setup();
    atp_of("NOPE", None);
}
