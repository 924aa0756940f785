//! Hostile input: seeded, generated events of every kind, half of them broken in one of many ways (numbers at and
//! past the contract's domain, impossible dates, huge and control-character ids, deep nesting, wrong types,
//! missing fields, duplicates and conflicts), sent through every door of the API. No call may raise, every event
//! gets one of the five answers, and the books stay whole. `HOSTILE_EVENTS` and `HOSTILE_SEED` change the size
//! and the seed (`make fuzz` runs it long).

use possync_e2e::{serial, Cluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::Client;

const LOCATIONS: [&str; 3] = ["S1", "S2", "DC1"];
const SKUS: [&str; 4] = ["A", "B", "C", "D"];
const ANSWERS: [&str; 5] = ["applied", "duplicate", "conflict", "held", "rejected"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Gen {
    rng: StdRng,
    n: u64,
    sent: Vec<Value>,
    shipped: Vec<(String, String, String)>,
}

impl Gen {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.gen_range(0..from.len())]
    }

    fn qty(&mut self) -> Value {
        match self.rng.gen_range(0..4) {
            0 => json!(self.rng.gen_range(1..20)),
            1 => json!(format!(
                "{}.{:03}",
                self.rng.gen_range(0..5),
                self.rng.gen_range(1..1000)
            )),
            2 => json!(format!("{}", self.rng.gen_range(1..5))),
            _ => json!(1),
        }
    }

    fn money(&mut self) -> String {
        format!(
            "{}.{:02}",
            self.rng.gen_range(0..200),
            self.rng.gen_range(0..100)
        )
    }

    fn till_lines(&mut self, returned: bool) -> Vec<Value> {
        (0..self.rng.gen_range(1..4))
            .map(|_| {
                let mut l = json!({"sku": self.pick(&SKUS), "qty": self.qty(), "unit_price": self.money(),
                                   "tax": format!("0.{:02}", self.rng.gen_range(0..100))});
                if returned {
                    l["returned"] = json!(true);
                }
                l
            })
            .collect()
    }

    /// A well-formed event of a random kind.
    fn valid(&mut self) -> Value {
        self.n += 1;
        let id = format!("E{}", self.n);
        let loc = self.pick(&LOCATIONS);
        let base = |kind: &str| {
            json!({"event_id": id, "kind": kind, "location": loc, "business_date": "2026-11-26",
                   "occurred_at": "2026-11-26T10:00:00Z"})
        };
        let mut ev;
        match self.rng.gen_range(0..11) {
            0..=2 => {
                ev = base("sale");
                ev["register"] = json!(format!("{}", self.rng.gen_range(1..3)));
                ev["sequence"] = json!(self.n);
                ev["lines"] = json!(self.till_lines(false));
                ev["tenders"] =
                    json!([{"type": self.pick(&["card", "cash"]), "amount": self.money()}]);
            }
            3 => {
                ev = base("return");
                if let Some(orig) = self.sent.iter().rev().find(|e| e["kind"] == "sale") {
                    ev["original_event_id"] = orig["event_id"].clone();
                }
                ev["lines"] = json!(self.till_lines(false));
                ev["tenders"] = json!([{"type": "card", "amount": format!("-{}", self.money())}]);
            }
            4 => {
                ev = base("exchange");
                let mut lines = self.till_lines(true);
                lines.extend(self.till_lines(false));
                ev["lines"] = json!(lines);
                ev["tenders"] = json!([]);
            }
            5 => {
                ev = base("receipt");
                let lines: Vec<Value> = (0..self.rng.gen_range(1..3))
                    .map(|_| json!({"sku": self.pick(&SKUS), "qty": self.qty(), "unit_cost": self.money()}))
                    .collect();
                ev["lines"] = json!(lines);
            }
            6 => {
                ev = base("transfer_out");
                let to = if loc == "DC1" { "S1" } else { "DC1" };
                ev["transfer_id"] = json!(format!("T{}", self.n));
                ev["to_location"] = json!(to);
                ev["lines"] = json!([{"sku": self.pick(&SKUS), "qty": self.qty()}]);
                self.shipped
                    .push((format!("T{}", self.n), loc.to_string(), to.to_string()));
            }
            7 => {
                ev = base("transfer_in");
                let (t, from, to) = if !self.shipped.is_empty() && self.rng.gen_bool(0.7) {
                    self.shipped.remove(0)
                } else {
                    // before its transfer_out (held) or never shipped
                    (
                        format!("T{}", self.n + 1),
                        "DC1".to_string(),
                        loc.to_string(),
                    )
                };
                ev["location"] = json!(to);
                ev["transfer_id"] = json!(t);
                ev["from_location"] = json!(from);
                ev["lines"] = json!([{"sku": self.pick(&SKUS), "qty": self.qty()}]);
            }
            8 => {
                ev = base("adjustment");
                ev["reason"] = json!("damaged");
                let q = if self.rng.gen_bool(0.5) { "-1" } else { "2" };
                ev["lines"] = json!([{"sku": self.pick(&SKUS), "qty": q}]);
            }
            9 => {
                ev = base("count");
                let sku = self.pick(&SKUS);
                // the same sku on two shelves
                ev["lines"] = json!([{"sku": sku, "counted_qty": self.rng.gen_range(0..5)},
                                     {"sku": sku, "counted_qty": self.rng.gen_range(0..3)}]);
            }
            _ => {
                ev = base("day_close");
                ev["register"] = json!("1");
                ev["totals"] = json!({"net_sales": self.money(), "tax": "1.00", "tenders": {"card": self.money()},
                                      "transaction_count": 3, "last_sequence": self.n});
            }
        }
        ev
    }

    /// The same event broken in one way, or an earlier one sent again.
    fn hostile(&mut self, mut ev: Value) -> Value {
        let deep = {
            let mut d = json!(1);
            for _ in 0..self.rng.gen_range(17..140) {
                d = json!([d]);
            }
            d
        };
        let bad_numbers = [
            json!("1000000000000000"),
            json!("1_0"),
            json!("\u{a0}10"),
            json!("NaN"),
            json!("Infinity"),
            json!("1e400"),
            json!("0.0000000000000000000000000001"),
            json!("5e27"),
            json!(1e308),
            json!(""),
            json!(true),
            json!([]),
            json!({"x": 1}),
            json!("99999999.999999"),
            json!("-0"),
            json!(99_999_999),
        ];
        let long = "x".repeat(self.rng.gen_range(190..3000));
        match self.rng.gen_range(0..12) {
            0 | 1 => {
                let v = bad_numbers[self.rng.gen_range(0..bad_numbers.len())].clone();
                let field = self.pick(&[
                    "qty",
                    "unit_price",
                    "tax",
                    "discount",
                    "unit_cost",
                    "counted_qty",
                ]);
                if let Some(l) = ev["lines"].get_mut(0) {
                    l[field] = v;
                } else {
                    ev["totals"]["net_sales"] = v;
                }
            }
            2 => {
                ev["business_date"] = json!(self.pick(&[
                    "+026-11-26",
                    "2026-+1-05",
                    "2026-13-01",
                    "0000-01-01",
                    "2026-2-3",
                    "x"
                ]));
            }
            3 => {
                ev["occurred_at"] = json!(self.pick(&[
                    "2026-11-26T10:00:00+16:00",
                    "2026-11-26T25:00:00Z",
                    "2026-11-26T10:00:00+05:99",
                    "yesterday"
                ]));
            }
            4 => {
                let field =
                    self.pick(&["event_id", "location", "register", "transfer_id", "reason"]);
                ev[field] = json!(long);
            }
            5 => {
                let field = self.pick(&["event_id", "location"]);
                ev[field] = json!(format!("A\u{1}B{}", self.n));
            }
            6 => {
                let field = self.pick(&["currency", "order_id", "lines"]);
                ev[field] = deep;
            }
            7 => {
                ev["sequence"] =
                    json!(self.pick(&["9223372036854775807", "-5", "1.5", "18446744073709551616"]));
            }
            8 => {
                let field = self.pick(&[
                    "lines",
                    "tenders",
                    "kind",
                    "location",
                    "event_id",
                    "business_date",
                ]);
                ev.as_object_mut().map(|o| o.remove(field));
            }
            9 => {
                ev["lines"] = json!(self.pick(&["x", "[1]"]));
                ev["kind"] = json!(self.pick(&["sale", "refund", "unmapped", "day_close"]));
            }
            10 if !self.sent.is_empty() => {
                // an earlier event again: the same (duplicate) or changed (conflict)
                let i = self.rng.gen_range(0..self.sent.len());
                ev = self.sent[i].clone();
                if self.rng.gen_bool(0.5) {
                    ev["memo"] = json!(self.n);
                }
            }
            _ => {
                ev = json!({"event_id": format!("U{}", self.n), "kind": "unmapped",
                            "reason": "r".repeat(if self.rng.gen_bool(0.05) { 1_100_000 } else { self.rng.gen_range(10..3000) })});
            }
        }
        ev
    }

    fn next(&mut self) -> Value {
        let ev = self.valid();
        let ev = if self.rng.gen_bool(0.5) {
            self.hostile(ev)
        } else {
            ev
        };
        if self.sent.len() < 500 {
            self.sent.push(ev.clone());
        }
        ev
    }
}

async fn one_text(c: &Client, sql: &str, arg: &str) -> Result<String, String> {
    c.query_one(sql, &[&arg])
        .await
        .map(|r| r.get::<_, String>(0))
        .map_err(|e| match e.as_db_error() {
            Some(d) => format!("{} {}: {:?}", d.code().code(), d.message(), d.detail()),
            None => e.to_string(),
        })
}

fn statuses(v: &Value) -> Vec<String> {
    let list = v.get("results").unwrap_or(v);
    match list {
        Value::Array(a) => a
            .iter()
            .map(|r| r["status"].as_str().unwrap_or("?").to_string())
            .collect(),
        other => vec![other["status"].as_str().unwrap_or("?").to_string()],
    }
}

async fn rows(c: &Client, sql: &str) -> String {
    c.query_one(
        &format!("SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM ({sql}) x"),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    .get(0)
}

async fn books_are_whole(c: &Client, at: &str) {
    assert_eq!(
        rows(c, "SELECT * FROM possync.check_invariants()").await,
        "",
        "check_invariants after {at}"
    );
    assert_eq!(
        rows(c, "SELECT * FROM possync.reconcile()").await,
        "",
        "reconcile after {at}"
    );
    assert_eq!(
        rows(
            c,
            "SELECT 1 FROM possync.journal_line HAVING sum(debit) <> sum(credit)"
        )
        .await,
        "",
        "the trial balance balances after {at}"
    );
}

#[tokio::test]
async fn hostile_events_never_make_the_api_raise_and_never_break_the_books() {
    let _serial = serial().await;
    let seed = env_or("HOSTILE_SEED", 20261128);
    let total = env_or("HOSTILE_EVENTS", 3000);
    let cluster = Cluster::start("hostile", false, &[]);
    cluster.create_database("erp").await;
    let c = cluster.connect("erp").await;
    c.batch_execute(
        "CREATE EXTENSION possync;
         SELECT possync.install_default_chart();
         INSERT INTO possync.location (location_id) VALUES ('S1'), ('S2'), ('DC1');
         INSERT INTO possync.item (sku, standard_cost) VALUES ('A', 2.00), ('B', 1.005), ('C', 0), ('D', 7.5);",
    )
    .await
    .unwrap_or_else(|e| panic!("setup: {e:?}"));
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        n: 0,
        sent: Vec::new(),
        shipped: Vec::new(),
    };
    let mut lsn: u64 = 0x1000;
    let (mut submitted, mut answered, mut calls) = (0u64, 0u64, 0u64);
    while submitted < total {
        let door = g.rng.gen_range(0..10);
        let size = if door < 3 { 1 } else { g.rng.gen_range(1..12) };
        let events: Vec<Value> = (0..size).map(|_| g.next()).collect();
        submitted += size as u64;
        calls += 1;
        let at = format!("call {calls} (seed {seed})");
        let result = match door {
            0..=2 => {
                one_text(
                    &c,
                    "SELECT possync.apply_event($1::text::jsonb)::text",
                    &events[0].to_string(),
                )
                .await
            }
            3..=5 => {
                one_text(
                    &c,
                    "SELECT possync.apply_events($1::text::jsonb)::text",
                    &Value::Array(events.clone()).to_string(),
                )
                .await
            }
            _ => {
                lsn += g.rng.gen_range(1..500);
                let source = if door % 2 == 0 { "pos-a" } else { "pos-b" };
                c.query_one(
                    "SELECT possync.apply_batch($1, $2::text::pg_lsn, $3::text::jsonb)::text",
                    &[
                        &source,
                        &format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
                        &Value::Array(events.clone()).to_string(),
                    ],
                )
                .await
                .map(|r| r.get::<_, String>(0))
                .map_err(|e| format!("{e:?}"))
            }
        };
        let result = result.unwrap_or_else(|e| {
            panic!("{at} raised {e}\nevents: {}", Value::Array(events.clone()))
        });
        let v: Value = serde_json::from_str(&result).unwrap_or(Value::Null);
        let got = statuses(&v);
        assert_eq!(got.len(), size, "{at}: one answer per event: {v}");
        for s in &got {
            assert!(ANSWERS.contains(&s.as_str()), "{at}: answer {s}: {v}");
        }
        answered += got.len() as u64;
        // now and then a person fixes a rejected event, or master data arrives and held events replay
        if calls % 25 == 0 {
            let open: Option<i64> = c
                .query_opt(
                    "SELECT exception_id FROM possync.exception WHERE kind = 'malformed' AND status = 'open' \
                     ORDER BY exception_id LIMIT 1",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{at}: {e:?}"))
                .map(|r| r.get(0));
            if let Some(id) = open {
                let fix = g.valid();
                c.query_one(
                    "SELECT possync.resubmit($1, $2::text::jsonb)::text",
                    &[&id, &fix.to_string()],
                )
                .await
                .unwrap_or_else(|e| panic!("{at}: resubmit {fix} raised {e:?}"));
            }
            c.query_one("SELECT possync.replay_held()", &[])
                .await
                .unwrap_or_else(|e| panic!("{at}: replay_held raised {e:?}"));
        }
        if calls % 100 == 0 {
            books_are_whole(&c, &at).await;
        }
    }
    books_are_whole(&c, &format!("all {calls} calls (seed {seed})")).await;
    assert_eq!(answered, submitted);
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM possync.exception WHERE kind = 'malformed'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .get(0);
    assert!(kept > 0, "hostile events were kept as rejected");
    println!("hostile: {submitted} events in {calls} calls, seed {seed}, {kept} kept as malformed");
}
