// A full store day through the SQL API, checked against a model of the posting rules computed here
// (included into `mod tests` in lib.rs).

mod store_day {
    use std::collections::{BTreeMap, HashMap};

    use rust_decimal::{Decimal, RoundingStrategy};
    use serde_json::{json, Value};

    /// Deterministic pseudo-random numbers (xorshift), so the day is the same on every run.
    pub struct Dice(u64);

    impl Dice {
        pub fn new(seed: u64) -> Dice {
            Dice(seed)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn cents(d: Decimal) -> Decimal {
        d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
    }

    fn six(d: Decimal) -> Decimal {
        d.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
    }

    #[derive(Default, Clone)]
    struct Stock {
        qty: Decimal,
        value: Decimal,
        avg: Option<Decimal>,
    }

    /// What the ledgers must say, computed from the events as the rules in DESIGN.md describe.
    #[derive(Default)]
    pub struct Model {
        stock: BTreeMap<(String, String), Stock>,
        pub accounts: BTreeMap<(String, String), Decimal>,
        pub standard: HashMap<String, Decimal>,
        issued: HashMap<String, HashMap<String, (Decimal, Decimal)>>,
        moves: HashMap<String, Vec<(String, String, Decimal, Decimal)>>,
    }

    impl Model {
        fn post(&mut self, code: &str, loc: &str, debit: Decimal) {
            *self.accounts.entry((code.to_string(), loc.to_string())).or_default() += debit;
        }

        fn issue(&mut self, ev: &str, sku: &str, loc: &str, qty: Decimal) -> Decimal {
            let std = self.standard.get(sku).copied().unwrap_or_default();
            let s = self.stock.entry((sku.into(), loc.into())).or_default();
            let cost = s.avg.unwrap_or(std);
            let value = if s.qty - qty == Decimal::ZERO { s.value } else { cents(qty * cost) };
            s.qty -= qty;
            s.value -= value;
            self.moves.entry(ev.into()).or_default().push((sku.into(), loc.into(), -qty, -value));
            let e = self.issued.entry(ev.into()).or_default().entry(sku.into()).or_default();
            e.0 += qty;
            e.1 += value;
            value
        }

        fn receive(&mut self, ev: &str, sku: &str, loc: &str, qty: Decimal, value: Decimal, unit: Decimal) {
            let s = self.stock.entry((sku.into(), loc.into())).or_default();
            s.qty += qty;
            s.value += value;
            if s.qty > Decimal::ZERO && s.value >= Decimal::ZERO {
                s.avg = Some(six(s.value / s.qty));
            } else if s.avg.is_none() {
                s.avg = Some(six(unit));
            }
            self.moves.entry(ev.into()).or_default().push((sku.into(), loc.into(), qty, value));
        }

        fn current_cost(&self, sku: &str, loc: &str) -> Decimal {
            let std = self.standard.get(sku).copied().unwrap_or_default();
            self.stock
                .get(&(sku.to_string(), loc.to_string()))
                .and_then(|s| s.avg)
                .unwrap_or(std)
        }

        pub fn qty(&self, sku: &str, loc: &str) -> Decimal {
            self.stock.get(&(sku.to_string(), loc.to_string())).map(|s| s.qty).unwrap_or_default()
        }

        pub fn stock(&self) -> Vec<(String, String, Decimal, Decimal)> {
            self.stock
                .iter()
                .map(|((sku, loc), s)| (sku.clone(), loc.clone(), s.qty, s.value))
                .collect()
        }

        /// Applies one well-formed, postable event.
        pub fn apply(&mut self, ev: &Value) {
            let id = ev["event_id"].as_str().unwrap_or_default().to_string();
            let loc = ev["location"].as_str().unwrap_or_default().to_string();
            let kind = ev["kind"].as_str().unwrap_or_default();
            let d = |v: &Value| -> Decimal {
                match v {
                    Value::String(s) => s.parse().unwrap_or_default(),
                    Value::Number(n) => n.to_string().parse().unwrap_or_default(),
                    _ => Decimal::ZERO,
                }
            };
            let lines = ev["lines"].as_array().cloned().unwrap_or_default();
            match kind {
                "receipt" => {
                    for l in &lines {
                        let (sku, qty, unit) = (l["sku"].as_str().unwrap_or_default(), d(&l["qty"]), d(&l["unit_cost"]));
                        let v = cents(qty * unit);
                        self.receive(&id, sku, &loc, qty, v, unit);
                        self.post("1200", &loc, v);
                        self.post("2200", &loc, -v);
                    }
                }
                "sale" | "return" | "exchange" | "fulfillment" => {
                    let mut owed = Decimal::ZERO;
                    for l in &lines {
                        let sku = l["sku"].as_str().unwrap_or_default();
                        let (qty, tax) = (d(&l["qty"]), d(&l["tax"]));
                        let net = cents(qty * d(&l["unit_price"]) - d(&l["discount"]));
                        let returned = kind == "return" || l["returned"].as_bool().unwrap_or(false);
                        if returned {
                            let orig = l["original_event_id"].as_str().or(ev["original_event_id"].as_str());
                            let sold = orig.and_then(|o| self.issued.get(o)).and_then(|m| m.get(sku)).copied();
                            let (v, unit) = match sold {
                                Some((sq, sv)) if !sq.is_zero() => {
                                    let unit = sv / sq;
                                    (if qty == sq { sv } else { cents(qty * unit) }, unit)
                                }
                                _ => {
                                    let c = self.current_cost(sku, &loc);
                                    (cents(qty * c), c)
                                }
                            };
                            self.receive(&id, sku, &loc, qty, v, unit);
                            self.post("4100", &loc, net);
                            self.post("2100", &loc, tax);
                            self.post("1200", &loc, v);
                            self.post("5000", &loc, -v);
                            owed -= net + tax;
                        } else {
                            let v = self.issue(&id, sku, &loc, qty);
                            if kind == "fulfillment" {
                                self.post("2300", &loc, net + tax);
                            }
                            self.post("4000", &loc, -net);
                            self.post("2100", &loc, -tax);
                            self.post("5000", &loc, v);
                            self.post("1200", &loc, -v);
                            owed += net + tax;
                        }
                    }
                    if kind != "fulfillment" {
                        let mut paid = Decimal::ZERO;
                        for t in ev["tenders"].as_array().cloned().unwrap_or_default() {
                            let code = if t["type"] == json!("cash") { "1000" } else { "1010" };
                            self.post(code, &loc, d(&t["amount"]));
                            paid += d(&t["amount"]);
                        }
                        self.post("5200", &loc, owed - paid);
                    }
                }
                "transfer_out" => {
                    for l in &lines {
                        let sku = l["sku"].as_str().unwrap_or_default();
                        let v = self.issue(&id, sku, &loc, d(&l["qty"]));
                        self.post("1210", &loc, v);
                        self.post("1200", &loc, -v);
                    }
                }
                "transfer_in" => {
                    // the whole shipment arrives: each sku at exactly the value it left with
                    let out = ev["out_event_id"].as_str().unwrap_or_default().to_string();
                    let from = ev["from_location"].as_str().unwrap_or_default().to_string();
                    for l in &lines {
                        let sku = l["sku"].as_str().unwrap_or_default();
                        let (sq, sv) = self.issued[&out][sku];
                        self.receive(&id, sku, &loc, d(&l["qty"]), sv, sv / sq);
                        self.post("1200", &loc, sv);
                        self.post("1210", &from, -sv);
                    }
                }
                "adjustment" | "count" => {
                    for l in &lines {
                        let sku = l["sku"].as_str().unwrap_or_default();
                        let qty = if kind == "count" { d(&l["counted_qty"]) - self.qty(sku, &loc) } else { d(&l["qty"]) };
                        if qty < Decimal::ZERO {
                            let v = self.issue(&id, sku, &loc, -qty);
                            self.post("5100", &loc, v);
                            self.post("1200", &loc, -v);
                        } else if qty > Decimal::ZERO {
                            let c = self.current_cost(sku, &loc);
                            let v = cents(qty * c);
                            self.receive(&id, sku, &loc, qty, v, c);
                            self.post("1200", &loc, v);
                            self.post("5100", &loc, -v);
                        }
                    }
                }
                _ => {}
            }
        }

        /// The exact opposite of an event's moves (and so of its journal).
        pub fn reverse(&mut self, id: &str, journal: &[(String, String, Decimal)]) {
            let moves = self.moves.get(id).cloned().unwrap_or_default();
            for (sku, loc, qty, value) in moves {
                let s = self.stock.entry((sku, loc)).or_default();
                s.qty -= qty;
                s.value -= value;
                if qty < Decimal::ZERO && s.qty > Decimal::ZERO && s.value >= Decimal::ZERO {
                    s.avg = Some(six(s.value / s.qty));
                }
            }
            for (code, loc, debit) in journal {
                self.post(code, loc, -*debit);
            }
        }
    }
}

#[pg_test]
fn a_full_store_day_matches_the_model() {
    use store_day::{Dice, Model};
    setup();
    let mut model = Model::default();
    for (sku, std) in [("A", "2.00"), ("B", "1.00"), ("C", "0"), ("NEW", "4.50")] {
        model.standard.insert(sku.into(), d(std));
    }
    let mut dice = Dice::new(20261126);
    let skus = ["A", "B", "C"];
    let prices = ["19.99", "4.25", "7.50"];
    let mut sent: Vec<Value> = Vec::new();
    let mut events_sent = 0;
    // events the model applies now, and events it must not (rejected, duplicates, conflicts, held)
    let post = |model: &mut Model, sent: &mut Vec<Value>, ev: Value, postable: bool| {
        if postable {
            model.apply(&ev);
        }
        sent.push(ev);
    };

    // opening stock
    for loc in ["DC1", "S1", "S2"] {
        let lines: Vec<(&str, &str, &str)> = vec![("A", "300", "8.10"), ("B", "400", "1.37"), ("C", "250", "3.333")];
        post(&mut model, &mut sent, receipt(&format!("open-{loc}"), loc, &lines), true);
    }
    // a transfer_in that arrives before its transfer_out: held until then
    let tin = json!({"event_id": "tin-1", "kind": "transfer_in", "location": "S1", "business_date": "2026-11-26",
        "transfer_id": "T1", "from_location": "DC1", "lines": [{"sku": "A", "qty": 6}, {"sku": "C", "qty": 4}]});
    post(&mut model, &mut sent, tin.clone(), false);

    let mut sales = Vec::new();
    for n in 0..170 {
        let loc = if dice.below(3) == 0 { "S2" } else { "S1" };
        let mut lines = Vec::new();
        let mut owed = Decimal::ZERO;
        for _ in 0..=dice.below(3) {
            let i = dice.below(3) as usize;
            let qty = Decimal::from(1 + dice.below(3));
            let disc = if dice.below(5) == 0 { d("1.00") } else { Decimal::ZERO };
            let net = qty * d(prices[i]) - disc;
            let tax = (net * d("0.08875")).round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            owed += net + tax;
            lines.push(json!({"sku": skus[i], "qty": qty.to_string(), "unit_price": prices[i],
                              "discount": disc.to_string(), "tax": tax.to_string(), "tax_code": "NY"}));
        }
        // two tills come up short by a few cents
        let paid = if n % 60 == 7 { owed - d("0.05") } else { owed };
        let tender = if dice.below(2) == 0 { "cash" } else { "card" };
        let id = format!("sale-{n:03}");
        let ev = json!({"event_id": id, "kind": "sale", "location": loc, "register": "1", "sequence": n,
            "business_date": "2026-11-26", "lines": lines, "tenders": [{"type": tender, "amount": paid.to_string()}]});
        sales.push(ev.clone());
        post(&mut model, &mut sent, ev, true);
        if n == 90 {
            let tout = json!({"event_id": "tout-1", "kind": "transfer_out", "location": "DC1",
                "business_date": "2026-11-26", "transfer_id": "T1", "to_location": "S1",
                "lines": [{"sku": "A", "qty": 6}, {"sku": "C", "qty": 4}]});
            post(&mut model, &mut sent, tout, true);
            let mut arrived = tin.clone();
            arrived["out_event_id"] = json!("tout-1");
            model.apply(&arrived);
        }
    }
    // returns of the first line of ten earlier sales, at those sales' cost
    for (k, s) in sales.iter().step_by(13).take(10).enumerate() {
        let l = &s["lines"][0];
        let price: Decimal = l["unit_price"].as_str().unwrap_or("0").parse().unwrap_or_default();
        let tax = (price * d("0.08875")).round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        let ret = json!({"event_id": format!("ret-{k}"), "kind": "return", "location": s["location"],
            "business_date": "2026-11-26", "original_event_id": s["event_id"],
            "lines": [{"sku": l["sku"], "qty": "1", "unit_price": price.to_string(), "tax": tax.to_string()}],
            "tenders": [{"type": "card", "amount": (-(price + tax)).to_string()}]});
        post(&mut model, &mut sent, ret, true);
    }
    for k in 0..5 {
        let ex = json!({"event_id": format!("exch-{k}"), "kind": "exchange", "location": "S2",
            "business_date": "2026-11-26",
            "lines": [{"sku": "B", "qty": 1, "unit_price": "4.25", "returned": true},
                      {"sku": "C", "qty": 1, "unit_price": "7.50"}],
            "tenders": [{"type": "cash", "amount": "3.25"}]});
        post(&mut model, &mut sent, ex, true);
    }
    for k in 0..4 {
        let qty = if k % 2 == 0 { "-2" } else { "1" };
        let adj = json!({"event_id": format!("adj-{k}"), "kind": "adjustment", "location": "S1",
            "business_date": "2026-11-26", "reason": "damaged", "lines": [{"sku": skus[k % 3], "qty": qty}]});
        post(&mut model, &mut sent, adj, true);
    }
    for k in 0..2 {
        let f = json!({"event_id": format!("ful-{k}"), "kind": "fulfillment", "location": "S2",
            "business_date": "2026-11-26", "order_id": format!("web-{k}"),
            "lines": [{"sku": "A", "qty": 1, "unit_price": "19.99", "tax": "1.77"}]});
        post(&mut model, &mut sent, f, true);
    }
    let counted = model.qty("B", "S1") - d("3");
    let cnt = json!({"event_id": "count-1", "kind": "count", "location": "S1", "business_date": "2026-11-26",
        "lines": [{"sku": "B", "counted_qty": counted.to_string()}]});
    post(&mut model, &mut sent, cnt, true);
    for loc in ["S1", "S2"] {
        let dc = json!({"event_id": format!("close-{loc}"), "kind": "day_close", "location": loc, "register": "1",
            "business_date": "2026-11-26", "totals": {"net_sales": "0", "tax": "0", "tenders": {},
            "transaction_count": 0, "last_sequence": 0}});
        post(&mut model, &mut sent, dc, true);
    }
    // the noise: duplicates, a conflict, malformed payloads, and a sale of an item the ERP does not know yet
    for s in sales.iter().take(5) {
        post(&mut model, &mut sent, s.clone(), false);
    }
    let mut conflict = sales[10].clone();
    conflict["tenders"][0]["amount"] = json!("0.01");
    post(&mut model, &mut sent, conflict, false);
    post(&mut model, &mut sent, json!({"event_id": "bad-1", "kind": "sale"}), false);
    post(&mut model, &mut sent, json!(["not", "an", "event"]), false);
    let mut bad_qty = sales[3].clone();
    bad_qty["event_id"] = json!("bad-3");
    bad_qty["lines"][0]["qty"] = json!("lots");
    post(&mut model, &mut sent, bad_qty, false);
    let new_sale = json!({"event_id": "sale-new", "kind": "sale", "location": "S1", "business_date": "2026-11-26",
        "lines": [{"sku": "NEW", "qty": 2, "unit_price": "12.00", "tax": "2.13"}],
        "tenders": [{"type": "card", "amount": "26.13"}]});
    post(&mut model, &mut sent, new_sale.clone(), false);

    for chunk in sent.chunks(25) {
        let results = apply_all(Value::Array(chunk.to_vec()));
        assert_eq!(results.len(), chunk.len());
        events_sent += chunk.len();
    }
    assert!(events_sent >= 200, "a full day: {events_sent} events");

    // the unknown item arrives; replay posts the held sale once
    Spi::run("INSERT INTO possync.item (sku, description, standard_cost) VALUES ('NEW', 'New item', 4.50)").expect("item");
    assert_eq!(Spi::get_one::<i32>("SELECT possync.replay_held()").expect("replay"), Some(1));
    model.apply(&new_sale);

    // a reversal of one sale
    let victim = "sale-100";
    let journal: Vec<(String, String, Decimal)> = Spi::connect(|c| {
        c.select(
            "SELECT l.account_code, l.location_id, (l.debit - l.credit)::text FROM possync.journal_line l
               JOIN possync.journal j USING (journal_id) WHERE j.event_id = 'sale-100'",
            None,
            &[],
        )
        .expect("journal")
        .map(|r| {
            let code: String = r.get(1).ok().flatten().unwrap_or_default();
            let loc: String = r.get(2).ok().flatten().unwrap_or_default();
            let amt: String = r.get(3).ok().flatten().unwrap_or_default();
            (code, loc, amt.parse().unwrap_or_default())
        })
        .collect()
    });
    Spi::run(&format!("SELECT possync.reverse_event('{victim}', 'test reversal')")).expect("reverse");
    model.reverse(victim, &journal);

    // every sku at every location, and every account at every location
    for (sku, loc, qty, value) in model.stock() {
        assert_eq!(stock(&sku, &loc), (qty, value), "{sku} at {loc}");
    }
    for ((code, loc), expected) in &model.accounts {
        assert_eq!(account(code, Some(loc)), *expected, "account {code} at {loc}");
    }
    let accounts_in_db = count("SELECT DISTINCT account_code, location_id FROM possync.journal_line");
    let modelled = model.accounts.len() as i64;
    assert!(accounts_in_db <= modelled, "no account posted that the model does not know");
    // what the noise did
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE kind = 'malformed'"), 3);
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE kind = 'conflict'"), 1);
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE kind = 'tender_mismatch'"), 3, "the three short tills");
    assert_eq!(count("SELECT 1 FROM possync.event WHERE status = 'held'"), 0);
    assert_eq!(count("SELECT 1 FROM possync.exception WHERE kind = 'unknown_sku' AND status = 'resolved'"), 1);
    assert_invariants();
}
