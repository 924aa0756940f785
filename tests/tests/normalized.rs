//! A normalized POS (schema `shop`: surrogate keys, percent discounts, tax child rows, drafts paid later by an
//! UPDATE, cancellations, refunds as negative orders) streamed into the ledgers by configuration alone
//! (`cdc-bridge/mappings/normalized.toml`), with the bridge killed while orders are half written. Every figure
//! the ERP shows is compared with the same figure computed from the POS tables.

use std::collections::BTreeMap;
use std::time::Duration;

use possync_e2e::*;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio_postgres::Client;

const SOURCE: &str = "shop";
const SCHEMA: &str = include_str!("../../cdc-bridge/sql/normalized_pos_schema.sql");

fn mapping_path() -> String {
    workspace_root()
        .join("cdc-bridge/mappings/normalized.toml")
        .display()
        .to_string()
}

/// Stores: code, time zone. The New York and Tokyo stores make business dates differ from UTC dates.
const STORES: [(&str, &str); 3] = [
    ("N01", "America/New_York"),
    ("T02", "Asia/Tokyo"),
    ("U03", "UTC"),
];
/// Tax codes and rates in percent.
const TAXES: [(&str, &str); 3] = [("STATE", "8.875"), ("CITY", "0.5"), ("ZERO", "0")];
/// Payment methods: name, tender type.
const METHODS: [(&str, &str); 3] = [("Cash", "cash"), ("Visa", "card"), ("Gift card", "gift")];
/// Products known before the bridge starts; `NEW-` ones are created by the order that first sells them.
const PRODUCTS: usize = 12;
const LATE_PRODUCTS: [&str; 2] = ["NEW-LAMP", "NEW-MUG"];

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

fn sku(i: usize) -> String {
    format!("P-{i:03}")
}

/// ERP master data for the shop: locations, items (the late products too: the ERP's item master is not the
/// POS's), tax codes.
async fn erp_master(erp: &Client) {
    let mut sql = String::new();
    for (code, _) in STORES {
        sql.push_str(&format!(
            "INSERT INTO possync.location (location_id, name) VALUES ('{code}', 'Store {code}');"
        ));
    }
    let all: Vec<String> = (0..PRODUCTS)
        .map(sku)
        .chain(LATE_PRODUCTS.iter().map(|s| s.to_string()))
        .collect();
    for s in &all {
        sql.push_str(&format!(
            "INSERT INTO possync.item (sku, description, standard_cost) VALUES ('{s}', '{s}', 3.00);"
        ));
    }
    for (code, pct) in TAXES {
        sql.push_str(&format!(
            "INSERT INTO possync.tax_code (tax_code, rate) VALUES ('{code}', {pct} / 100.0) ON CONFLICT DO NOTHING;"
        ));
    }
    exec(erp, &sql).await;
}

/// The master rows of the POS, long before the bridge starts.
async fn pos_master(pos: &Client) {
    exec(pos, SCHEMA).await;
    let mut sql = String::new();
    for (code, tz) in STORES {
        sql.push_str(&format!(
            "INSERT INTO shop.store (code, name, tz) VALUES ('{code}', 'Store {code}', '{tz}');"
        ));
    }
    for store in 1..=STORES.len() {
        for reg in 1..=2 {
            sql.push_str(&format!(
                "INSERT INTO shop.till (store_id, register_code) VALUES ({store}, 'R{reg}');"
            ));
        }
    }
    for (code, pct) in TAXES {
        sql.push_str(&format!(
            "INSERT INTO shop.tax (code, rate_pct) VALUES ('{code}', {pct});"
        ));
    }
    for (name, kind) in METHODS {
        sql.push_str(&format!(
            "INSERT INTO shop.payment_method (name, journal_type) VALUES ('{name}', '{kind}');"
        ));
    }
    for i in 0..PRODUCTS {
        // every third product is tax-free; the rest pay STATE, and some CITY on top
        let tax = if i % 3 == 2 { 3 } else { 1 };
        sql.push_str(&format!(
            "INSERT INTO shop.product (default_code, name, list_price, tax_id) VALUES ('{}', 'Product {i}', {}.{:02}, {tax});",
            sku(i),
            3 + i * 2,
            (i * 37) % 100
        ));
    }
    exec(pos, &sql).await;
}

/// Writes orders the way a till does. Each method is one or more POS transactions.
struct Till {
    rng: rand::rngs::StdRng,
    /// Next receipt number per till id.
    receipt: BTreeMap<i32, i64>,
    /// Paid orders (id, till id) that refunds may point at.
    paid: Vec<(i64, i32)>,
    /// The lines of orders drafted so far, by id, for refunds of them (each refunded once at most).
    lines_of: BTreeMap<i64, Vec<Line>>,
    /// Minutes since the day's start, moving on with every order.
    clock: i64,
    late_made: usize,
}

/// The SQL of an order's lines and tax rows, for order id `order` (a SQL expression), and the order's total.
/// An order line: SKU, signed quantity, unit price, discount percent, whether CITY tax applies too.
type Line = (String, Decimal, Decimal, Decimal, bool);

fn lines_sql(order: &str, lines: &[Line]) -> (String, Decimal) {
    let mut sql = String::new();
    let mut total = Decimal::ZERO;
    for (sku, qty, price, pct, city) in lines {
        let gross = *qty * *price;
        let subtotal = (gross - gross * *pct / Decimal::from(100))
            .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        sql.push_str(&format!(
            "WITH l AS (INSERT INTO shop.pos_order_line (order_id, product_id, qty, price_unit, discount_pct, price_subtotal)
               SELECT {order}, p.id, {qty}, {price}, {pct}, {subtotal} FROM shop.product p WHERE p.default_code = '{sku}' RETURNING id, product_id)
             INSERT INTO shop.pos_order_line_tax (line_id, tax_id, amount)
               SELECT l.id, t.id, round({subtotal} * t.rate_pct / 100, 2)
                 FROM l JOIN shop.product p ON p.id = l.product_id JOIN shop.tax t ON t.id = p.tax_id
               UNION ALL
               SELECT l.id, t.id, round({subtotal} * t.rate_pct / 100, 2)
                 FROM l JOIN shop.tax t ON t.code = 'CITY' WHERE {city};"
        ));
        let rate = |code: &str| -> Decimal {
            TAXES
                .iter()
                .find(|t| t.0 == code)
                .and_then(|t| t.1.parse().ok())
                .unwrap_or_default()
        };
        let tax_of = |r: Decimal| {
            (subtotal * r / Decimal::from(100))
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        };
        let idx: usize = sku
            .strip_prefix("P-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let main = if sku.starts_with("NEW-") || idx % 3 != 2 {
            rate("STATE")
        } else {
            rate("ZERO")
        };
        total += subtotal
            + tax_of(main)
            + if *city {
                tax_of(rate("CITY"))
            } else {
                Decimal::ZERO
            };
    }
    (sql, total)
}

impl Till {
    fn new(seed: u64) -> Till {
        Till {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            receipt: BTreeMap::new(),
            paid: Vec::new(),
            clock: 0,
            late_made: 0,
            lines_of: BTreeMap::new(),
        }
    }

    fn next_receipt(&mut self, till: i32) -> i64 {
        let r = self.receipt.entry(till).or_insert(1000);
        *r += 1;
        *r
    }

    /// When the order happened: the day starts at 2026-11-27 00:00 UTC, so New York orders before 05:00 UTC
    /// belong to the 26th and Tokyo orders after 15:00 UTC to the 28th.
    fn when(&mut self) -> String {
        self.clock += self.rng.gen_range(1..9);
        format!(
            "timestamptz '2026-11-27 00:00:00+00' + interval '{} minutes'",
            self.clock
        )
    }

    fn line(&mut self, negative: bool) -> Line {
        let i = self.rng.gen_range(0..PRODUCTS);
        let qty = Decimal::from(self.rng.gen_range(1..4i64));
        let price = Decimal::new((3 + i as i64 * 2) * 100 + ((i as i64 * 37) % 100), 2);
        let pct = [
            Decimal::ZERO,
            Decimal::ZERO,
            Decimal::new(5, 0),
            Decimal::new(125, 1),
            Decimal::new(3333, 2),
        ][self.rng.gen_range(0..5)];
        let city = i % 3 == 0;
        (sku(i), if negative { -qty } else { qty }, price, pct, city)
    }

    /// Transaction A of an order: the draft header, its lines and tax rows (and a product created for it).
    /// Returns (SQL that leaves the new order id in `new_order`, the order's total).
    fn draft(
        &mut self,
        till: i32,
        refund_of: Option<i64>,
        kind: &str,
    ) -> (String, Decimal, Vec<Line>) {
        let receipt = self.next_receipt(till);
        let at = self.when();
        let mut lines = Vec::new();
        let mut pre = String::new();
        match kind {
            "return" => match refund_of.and_then(|o| self.lines_of.remove(&o)) {
                // part of one line of the refunded order comes back, at its price and discount
                Some(original) => {
                    let (sku, qty, price, pct, city) = original[0].clone();
                    let back =
                        Decimal::from(self.rng.gen_range(1..=qty.trunc().mantissa().max(1) as i64));
                    lines.push((sku, -back.min(qty), price, pct, city));
                }
                None => lines.push(self.line(true)),
            },
            "exchange" => {
                lines.push(self.line(true));
                lines.push(self.line(false));
            }
            _ => {
                for _ in 0..self.rng.gen_range(1..4) {
                    lines.push(self.line(false));
                }
                if self.late_made < LATE_PRODUCTS.len() && self.rng.gen_bool(0.05) {
                    let code = LATE_PRODUCTS[self.late_made];
                    self.late_made += 1;
                    pre.push_str(&format!(
                        "INSERT INTO shop.product (default_code, name, list_price, tax_id) VALUES ('{code}', 'New {code}', 9.99, 1);"
                    ));
                    lines.push((
                        code.to_string(),
                        Decimal::ONE,
                        Decimal::new(999, 2),
                        Decimal::ZERO,
                        false,
                    ));
                }
            }
        }
        let refund = refund_of.map(|r| r.to_string()).unwrap_or("NULL".into());
        let (lsql, total) = lines_sql("(SELECT id FROM new_order)", &lines);
        let sql = format!(
            "{pre}CREATE TEMP TABLE IF NOT EXISTS new_order (id bigint); TRUNCATE new_order;
             WITH o AS (INSERT INTO shop.pos_order (till_id, receipt_no, state, date_order, refund_of)
                        VALUES ({till}, {receipt}, 'draft', {at}, {refund}) RETURNING id)
             INSERT INTO new_order SELECT id FROM o;
             {lsql}"
        );
        (sql, total, lines)
    }

    /// Transaction B: the payments and the state change to paid; `order` is SQL giving the order id.
    fn pay(&mut self, order: &str, total: Decimal) -> String {
        let methods = if self.rng.gen_bool(0.3) && total > Decimal::ONE {
            let first = (total / Decimal::from(3)).round_dp(2);
            vec![(self.rng.gen_range(1..=3), first), (1, total - first)]
        } else {
            vec![(self.rng.gen_range(1..=3), total)]
        };
        let mut sql = String::new();
        for (m, amount) in methods {
            sql.push_str(&format!(
                "INSERT INTO shop.pos_payment (order_id, method_id, amount) VALUES ({order}, {m}, {amount});"
            ));
        }
        sql.push_str(&format!(
            "UPDATE shop.pos_order SET state = 'paid' WHERE id = {order};"
        ));
        sql
    }
}

/// Runs one POS transaction and returns the id of the order it drafted, if any.
async fn txn(pos: &Client, body: &str) -> Option<i64> {
    exec(pos, &format!("BEGIN; {body} COMMIT;")).await;
    pos.query_opt("SELECT id FROM new_order", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Drafts waiting for their payment transaction: (order id, till, total).
type Waiting = Vec<(i64, i32, Decimal)>;

/// Trades `orders` orders: some paid at once, some drafted now and paid a few orders later, some cancelled,
/// refunds and exchanges pointing at earlier orders, some paid orders closed ('done') later.
async fn trade(pos: &Client, till: &mut Till, orders: usize, waiting: &mut Waiting) {
    for _ in 0..orders {
        let till_id = till.rng.gen_range(1..=(STORES.len() * 2) as i32);
        let roll: f64 = till.rng.gen();
        let refundable: Vec<i64> = till
            .paid
            .iter()
            .map(|p| p.0)
            .filter(|o| till.lines_of.get(o).is_some_and(|l| l[0].1 > Decimal::ZERO))
            .collect();
        let (kind, refund_of) = if roll < 0.08 && !refundable.is_empty() {
            (
                "return",
                Some(refundable[till.rng.gen_range(0..refundable.len())]),
            )
        } else if roll < 0.08 {
            ("return", None)
        } else if roll < 0.13 {
            ("exchange", None)
        } else {
            ("sale", None)
        };
        let (sql, total, lines) = till.draft(till_id, refund_of, kind);
        if till.rng.gen_bool(0.4) {
            // drafted and paid in one POS transaction
            let pay = till.pay("(SELECT id FROM new_order)", total);
            let id = txn(pos, &format!("{sql} {pay}"))
                .await
                .unwrap_or_else(|| panic!("no order id"));
            till.paid.push((id, till_id));
            till.lines_of.insert(id, lines);
        } else {
            let id = txn(pos, &sql)
                .await
                .unwrap_or_else(|| panic!("no order id"));
            waiting.push((id, till_id, total));
            till.lines_of.insert(id, lines);
        }
        // settle a waiting draft now and then: paid (most), cancelled (a few)
        if waiting.len() > 3 || (!waiting.is_empty() && till.rng.gen_bool(0.3)) {
            let at = till.rng.gen_range(0..waiting.len());
            let (id, t, total) = waiting.remove(at);
            if till.rng.gen_bool(0.06) {
                exec(
                    pos,
                    &format!("UPDATE shop.pos_order SET state = 'cancel' WHERE id = {id}"),
                )
                .await;
            } else {
                exec(
                    pos,
                    &format!("BEGIN; {} COMMIT;", till.pay(&id.to_string(), total)),
                )
                .await;
                till.paid.push((id, t));
            }
        }
        if !till.paid.is_empty() && till.rng.gen_bool(0.05) {
            let (id, _) = till.paid[till.rng.gen_range(0..till.paid.len())];
            exec(
                pos,
                &format!(
                    "UPDATE shop.pos_order SET state = 'done' WHERE id = {id} AND state = 'paid'"
                ),
            )
            .await;
        }
    }
}

fn dec(s: Option<String>) -> Decimal {
    s.and_then(|s| s.parse().ok()).unwrap_or_default()
}

async fn decimal(c: &Client, sql: &str) -> Decimal {
    dec(one::<Option<String>>(c, sql).await)
}

async fn pairs(c: &Client, sql: &str) -> BTreeMap<String, String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect()
}

#[tokio::test]
async fn a_normalized_pos_day_reaches_the_ledgers_through_its_mapping_exactly_once() {
    let _serial = serial().await;
    let pos_c = empty_pos_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp_c = erp_cluster().await;
    let erp = erp_c.connect("erp").await;
    erp_master(&erp).await;
    pos_master(&pos).await;

    let mut till = Till::new(20261128);
    // history: an order paid before the bridge ever started is not posted; a draft written before it started
    // is posted when it is paid later, from rows the initial copy brought over
    let (sql, total, _) = till.draft(1, None, "sale");
    let history = txn(&pos, &sql).await.unwrap_or_default();
    exec(
        &pos,
        &format!("BEGIN; {} COMMIT;", till.pay(&history.to_string(), total)),
    )
    .await;
    let mut waiting: Waiting = Vec::new();
    let (sql, total, _) = till.draft(2, None, "sale");
    let early = txn(&pos, &sql).await.unwrap_or_default();
    waiting.push((early, 2, total));

    let args = ["--mapping", &mapping_path()];
    let bridge = Bridge::start(&erp_c.url("erp"), &[(SOURCE, pos_c.url("pos"))], &args);
    bridge.wait_streaming(SOURCE, Duration::from_secs(60));
    trade(&pos, &mut till, 120, &mut waiting).await;

    // the bridge dies while drafts wait for their payments; the POS goes on
    bridge.kill9();
    trade(&pos, &mut till, 120, &mut waiting).await;
    let bridge = Bridge::start(&erp_c.url("erp"), &[(SOURCE, pos_c.url("pos"))], &args);
    trade(&pos, &mut till, 80, &mut waiting).await;
    // the ERP crashes while drafts wait in its mirror (an immediate shutdown loses what its WAL did not flush);
    // the POS goes on, and the bridge resumes once the ERP is back
    drop(erp);
    erp_c.crash();
    trade(&pos, &mut till, 40, &mut waiting).await;
    erp_c.restart();
    let erp = erp_c.connect("erp").await;
    trade(&pos, &mut till, 40, &mut waiting).await;
    // two drafts stay open: they must not be posted
    while waiting.len() > 2 {
        let (id, t, total) = waiting.remove(0);
        exec(
            &pos,
            &format!("BEGIN; {} COMMIT;", till.pay(&id.to_string(), total)),
        )
        .await;
        till.paid.push((id, t));
    }
    let open: Vec<i64> = waiting.iter().map(|w| w.0).collect();

    // what the ERP must end up with, from the POS tables
    let settled = count(
        &pos,
        &format!("SELECT count(*) FROM shop.pos_order WHERE state <> 'draft' AND id <> {history}"),
    )
    .await;
    wait_count(
        &erp,
        "SELECT (SELECT count(*) FROM possync.event WHERE source = 'shop')
              + (SELECT count(*) FROM possync.exception WHERE source = 'shop' AND kind = 'malformed')",
        settled,
        Duration::from_secs(120),
        || bridge.log(),
    )
    .await;
    // a tax row changed on its own, its line not in the group: the bridge asks the mirror for its order, which
    // is evaluated again (an open draft still: it stays waiting, seen again)
    let draft = open[0].to_string();
    let seen = "SELECT last_seen::text FROM possync.pending_document WHERE source = 'shop' AND doc_key = $1";
    let before: String = erp
        .query_one(seen, &[&draft])
        .await
        .unwrap_or_else(|e| panic!("pending draft {draft}: {e}"))
        .get(0);
    let changed = pos
        .execute(
            &format!(
                "UPDATE shop.pos_order_line_tax SET amount = amount WHERE line_id = (SELECT x.line_id
                   FROM shop.pos_order_line_tax x JOIN shop.pos_order_line l ON l.id = x.line_id
                  WHERE l.order_id = {draft} ORDER BY x.line_id LIMIT 1)"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("tax row: {e}"));
    assert!(changed >= 1, "draft {draft} has a tax row");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now: String = erp
            .query_one(seen, &[&draft])
            .await
            .unwrap_or_else(|e| panic!("pending draft {draft}: {e}"))
            .get(0);
        if now != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lone tax row did not touch draft {draft}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = bridge.log();
    drop(bridge);

    let rejected = pairs(
        &erp,
        "SELECT coalesce(event_id, exception_id::text), reason FROM possync.exception WHERE kind = 'malformed'",
    )
    .await;
    assert!(rejected.is_empty(), "rejected: {rejected:#?}\n{log}");
    // exactly once: one event per settled order (paid, done, refunded, exchanged or cancelled), none for the
    // history order or the open drafts
    let ids = pairs(
        &erp,
        "SELECT event_id, kind FROM possync.event WHERE source = 'shop'",
    )
    .await;
    assert_eq!(ids.len() as i64, settled, "{log}");
    assert!(!ids.contains_key(&format!("shop-{history}")));
    assert!(
        ids.contains_key(&format!("shop-{early}")),
        "the draft written before the bridge started"
    );
    for o in &open {
        assert!(!ids.contains_key(&format!("shop-{o}")));
    }
    // kinds: from the signs of the lines, as the POS holds them
    let pos_kinds = pairs(
        &pos,
        &format!(
            "SELECT 'shop-' || o.id, CASE WHEN o.state = 'cancel' THEN 'void'
                    WHEN bool_and(l.qty > 0) THEN 'sale' WHEN bool_and(l.qty < 0) THEN 'return' ELSE 'exchange' END
               FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id
              WHERE o.state <> 'draft' AND o.id <> {history} GROUP BY o.id, o.state"
        ),
    )
    .await;
    assert_eq!(ids, pos_kinds);
    // business dates in the store's time zone
    let pos_dates = pairs(
        &pos,
        &format!(
            "SELECT 'shop-' || o.id, (o.date_order AT TIME ZONE s.tz)::date::text
               FROM shop.pos_order o JOIN shop.till t ON t.id = o.till_id JOIN shop.store s ON s.id = t.store_id
              WHERE o.state <> 'draft' AND o.id <> {history}"
        ),
    )
    .await;
    let erp_dates = pairs(
        &erp,
        "SELECT event_id, business_date::text FROM possync.event WHERE source = 'shop'",
    )
    .await;
    assert_eq!(erp_dates, pos_dates);
    let distinct_dates: std::collections::BTreeSet<&String> = erp_dates.values().collect();
    assert!(
        distinct_dates.len() >= 2,
        "time zones put some orders on another day: {distinct_dates:?}"
    );

    // money: revenue, returns, tax and tenders from the general ledger against the POS rows
    let final_orders = format!("o.state IN ('paid', 'done') AND o.id <> {history}");
    let revenue = decimal(&pos, &format!("SELECT sum(l.price_subtotal)::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id WHERE {final_orders} AND l.qty > 0")).await;
    let returns = decimal(&pos, &format!("SELECT (-sum(l.price_subtotal))::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id WHERE {final_orders} AND l.qty < 0")).await;
    let tax = decimal(&pos, &format!("SELECT sum(x.amount)::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id JOIN shop.pos_order_line_tax x ON x.line_id = l.id WHERE {final_orders}")).await;
    let gl = |account: &str| {
        format!("SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '{account}'")
    };
    assert!(revenue > Decimal::ZERO && returns > Decimal::ZERO);
    assert_eq!(decimal(&erp, &gl("4000")).await, revenue, "revenue");
    assert_eq!(-decimal(&erp, &gl("4100")).await, returns, "returns");
    assert_eq!(decimal(&erp, &gl("2100")).await, tax, "tax payable");
    let pos_tenders = pairs(&pos, &format!("SELECT m.journal_type, sum(p.amount)::text FROM shop.pos_order o JOIN shop.pos_payment p ON p.order_id = o.id JOIN shop.payment_method m ON m.id = p.method_id WHERE {final_orders} GROUP BY 1")).await;
    let erp_tenders = pairs(&erp, "SELECT t->>'type', sum((t->>'amount')::numeric)::text FROM possync.event e, jsonb_array_elements(e.payload->'tenders') t WHERE e.source = 'shop' GROUP BY 1").await;
    assert_eq!(pos_tenders.len(), 3, "{pos_tenders:?}");
    for (kind, amount) in &pos_tenders {
        assert_eq!(
            dec(erp_tenders.get(kind).cloned()),
            dec(Some(amount.clone())),
            "tender {kind}"
        );
    }
    let cash = dec(pos_tenders.get("cash").cloned());
    let other: Decimal = pos_tenders
        .iter()
        .filter(|(k, _)| *k != "cash")
        .map(|(_, v)| dec(Some(v.clone())))
        .sum();
    assert_eq!(-decimal(&erp, &gl("1000")).await, cash, "cash account");
    assert_eq!(
        -decimal(&erp, &gl("1010")).await,
        other,
        "card and other tenders account"
    );
    let mismatches = count(
        &erp,
        "SELECT count(*) FROM possync.exception WHERE source = 'shop' AND kind = 'tender_mismatch'",
    )
    .await;
    assert_eq!(mismatches, 0);

    // units per SKU and store
    let pos_units = pairs(&pos, &format!("SELECT p.default_code || '@' || s.code, (-sum(l.qty))::numeric(14,3)::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id JOIN shop.product p ON p.id = l.product_id JOIN shop.till t ON t.id = o.till_id JOIN shop.store s ON s.id = t.store_id WHERE {final_orders} GROUP BY 1")).await;
    let erp_units = pairs(&erp, "SELECT m.sku || '@' || m.location_id, sum(m.qty)::numeric(14,3)::text FROM possync.stock_move m JOIN possync.event e ON e.event_id = m.event_id WHERE e.source = 'shop' GROUP BY 1").await;
    assert_eq!(erp_units, pos_units);
    assert!(
        erp_units.keys().any(|k| k.starts_with("NEW-")),
        "a product created with its first sale"
    );

    // the sequence audit: cancelled orders consumed their receipt numbers, so no register shows a gap
    let gaps = pairs(&erp, "SELECT coalesce(event_id, exception_id::text), reason FROM possync.exception WHERE source = 'shop' AND kind = 'missing_transaction' AND status = 'open'").await;
    // ... except the receipt numbers of the drafts still open, which the audit rightly reports as not received
    let open_receipts: Vec<String> = pairs(
        &pos,
        "SELECT 'register ' || t.register_code || ' at ' || s.code || ': transaction ' || o.receipt_no, ''
           FROM shop.pos_order o JOIN shop.till t ON t.id = o.till_id JOIN shop.store s ON s.id = t.store_id
          WHERE o.state = 'draft'",
    )
    .await
    .into_keys()
    .collect();
    for (id, reason) in &gaps {
        assert!(
            open_receipts
                .iter()
                .any(|r| reason.contains(&format!("{r} "))),
            "gap at {id} is not an open draft: {reason} (open: {open_receipts:?})"
        );
    }
    let voids = count(
        &pos,
        "SELECT count(*) FROM shop.pos_order WHERE state = 'cancel'",
    )
    .await;
    assert!(voids > 0, "the workload cancels orders");
    // the open drafts wait, durably, in the ERP
    let pending = count(
        &erp,
        "SELECT count(*) FROM possync.pending_document WHERE source = 'shop'",
    )
    .await;
    assert_eq!(pending, open.len() as i64);
    // a second UPDATE of a posted order (paid -> done) changed nothing
    let done = count(
        &pos,
        "SELECT count(*) FROM shop.pos_order WHERE state = 'done'",
    )
    .await;
    assert!(done > 0);
    let conflicts = count(
        &erp,
        "SELECT count(*) FROM possync.exception WHERE source = 'shop' AND kind = 'conflict'",
    )
    .await;
    assert_eq!(conflicts, 0);
    let broken = pairs(
        &erp,
        "SELECT invariant || detail, detail FROM possync.check_invariants()",
    )
    .await;
    assert!(broken.is_empty(), "{broken:#?}");
    same_events_whichever_json_builder(&erp).await;
}

/// Every order of the day's mirror evaluates to the same state and the same event (as jsonb) whether its JSON is
/// built by possync.json_object_present, as the bridge built it here, or by json_strip_nulls(json_build_object),
/// as it builds it against an ERP without the function: sales, returns, exchanges, voids, drafts, lines taxed
/// twice and products created with their first sale.
async fn same_events_whichever_json_builder(erp: &Client) {
    use possync_bridge::document::{compile, Json, Target};
    let text = std::fs::read_to_string(mapping_path()).unwrap_or_else(|e| panic!("mapping: {e}"));
    let mapping = possync_bridge::mapping::Mapping::from_toml(&text)
        .unwrap_or_else(|e| panic!("mapping: {e}"));
    let schema = possync_bridge::mirror::schema_of(SOURCE);
    for d in mapping.documents() {
        let [builtin, ours] = [Json::Builtin, Json::Possync].map(|json| {
            compile(
                d,
                Target::Erp {
                    key_type: "bigint",
                    json,
                },
            )
        });
        let sql = format!(
            "SELECT count(*) FILTER (WHERE a.state IS DISTINCT FROM b.state OR a.event::jsonb IS DISTINCT FROM b.event::jsonb),
                    count(*) FILTER (WHERE a.event IS NOT NULL), min(CASE WHEN a.event::jsonb IS DISTINCT FROM b.event::jsonb THEN a.event || ' <> ' || b.event END)
               FROM ({builtin}) AS a(key, state, event) FULL JOIN ({ours}) AS b(key, state, event) USING (key)"
        );
        let keys: Vec<String> = erp
            .query(&format!("SELECT id::text FROM {schema}.pos_order"), &[])
            .await
            .unwrap_or_else(|e| panic!("keys: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        erp.batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL search_path TO {schema}"
        ))
        .await
        .unwrap_or_else(|e| panic!("search path: {e}"));
        let row = erp
            .query_one(&sql, &[&keys, &SOURCE])
            .await
            .unwrap_or_else(|e| panic!("both builders: {e}"));
        erp.batch_execute("ROLLBACK")
            .await
            .unwrap_or_else(|e| panic!("rollback: {e}"));
        let (differ, events, first): (i64, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(differ, 0, "document {}: first difference {first:?}", d.name);
        assert!(
            events > 100,
            "document {}: only {events} events compared",
            d.name
        );
    }
}

#[tokio::test]
async fn check_validates_a_document_mapping_against_the_pos_and_dry_runs_it() {
    let _serial = serial().await;
    let pos_c = empty_pos_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp_c = erp_cluster().await;
    pos_master(&pos).await;
    let mut till = Till::new(7);
    // two paid sales, a cancelled draft, and a paid sale of a product the POS keeps without a code
    for _ in 0..2 {
        let (sql, total, _) = till.draft(1, None, "sale");
        let pay = till.pay("(SELECT id FROM new_order)", total);
        txn(&pos, &format!("{sql} {pay}")).await;
    }
    let (sql, _, _) = till.draft(3, None, "sale");
    let cancelled = txn(&pos, &sql).await.unwrap_or_default();
    exec(
        &pos,
        &format!("UPDATE shop.pos_order SET state = 'cancel' WHERE id = {cancelled}"),
    )
    .await;
    exec(&pos, "INSERT INTO shop.product (default_code, name, list_price, tax_id) VALUES (NULL, 'Unlabelled', 1.00, 3)").await;
    let bad = txn(
        &pos,
        "CREATE TEMP TABLE IF NOT EXISTS new_order (id bigint); TRUNCATE new_order;
         WITH o AS (INSERT INTO shop.pos_order (till_id, receipt_no, state, date_order) VALUES (2, 1, 'draft', now()) RETURNING id)
         INSERT INTO new_order SELECT id FROM o;
         INSERT INTO shop.pos_order_line (order_id, product_id, qty, price_unit, price_subtotal)
           SELECT (SELECT id FROM new_order), id, 1, 1.00, 1.00 FROM shop.product WHERE default_code IS NULL;
         INSERT INTO shop.pos_payment (order_id, method_id, amount) SELECT id, 1, 1.00 FROM new_order;
         UPDATE shop.pos_order SET state = 'paid' WHERE id = (SELECT id FROM new_order);",
    )
    .await
    .unwrap_or_default();

    let mapping = mapping_path();
    let source = format!("{SOURCE}={}", pos_c.url("pos"));
    let erp_url = erp_c.url("erp");
    let (code, text) = bridge_check(&[
        "--erp",
        &erp_url,
        "--source",
        &source,
        "--mapping",
        &mapping,
        "--dry-run",
        "10",
    ]);
    // the unlabelled product's sale would be rejected, naming the field: check says so and exits 1
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("document pos_order runs against the POS tables"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pos_order {bad} would be rejected")) && text.contains("sku"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pos_order {cancelled} becomes {{")),
        "{text}"
    );
    assert!(text.contains("\"kind\":\"void\""), "{text}");
    let good = text.matches("becomes {").count();
    assert_eq!(good, 3, "two sales and one void: {text}");
    // nothing was written: no slot, no publication, no mirror
    let slots = count(&pos, "SELECT count(*) FROM pg_replication_slots").await;
    assert_eq!(slots, 0);
    let erp = erp_c.connect("erp").await;
    let mirror = count(
        &erp,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'possync_pos_shop'",
    )
    .await;
    assert_eq!(mirror, 0);

    // a source that already streams (its checkpoint is past 0/0) gets no initial copy: check says so per table
    exec(&erp, "SELECT possync.apply_batch('shop', '0/10', '[]')").await;
    let (code, text) = bridge_check(&[
        "--erp",
        &erp_url,
        "--source",
        &source,
        "--mapping",
        &mapping,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("table shop.product is mapped for the mirror but the source already streams"),
        "{text}"
    );

    // a misspelled column is an error that names it, never a silently empty field
    let dir = workspace_root().join("target").join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let wrong = dir.join(format!("normalized-misspelled-{}.toml", std::process::id()));
    let text_in = std::fs::read_to_string(&mapping).unwrap_or_default();
    assert!(text_in.contains("o.receipt_no"));
    std::fs::write(&wrong, text_in.replace("o.receipt_no", "o.receipt_number"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, text) = bridge_check(&[
        "--erp",
        &erp_url,
        "--source",
        &source,
        "--mapping",
        &wrong.display().to_string(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("receipt_number"), "{text}");
    assert!(
        text.contains("ERROR") && text.contains("does not run against the POS tables"),
        "{text}"
    );
    let _ = std::fs::remove_file(&wrong);
}

#[tokio::test]
async fn a_corrected_mapping_posts_what_the_wrong_one_rejected_without_reading_the_pos_again() {
    let _serial = serial().await;
    let pos_c = empty_pos_cluster().await;
    let pos = pos_c.connect("pos").await;
    let erp_c = erp_cluster().await;
    let erp = erp_c.connect("erp").await;
    erp_master(&erp).await;
    pos_master(&pos).await;

    // a mapping mistake that only some orders meet: division by zero on lines without a discount
    let right = std::fs::read_to_string(mapping_path()).unwrap_or_default();
    let good_discount =
        "discount = \"nullif(abs(l.qty) * l.price_unit - abs(l.price_subtotal), 0)\"";
    assert!(right.contains(good_discount));
    let dir = workspace_root().join("target").join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let wrong = dir.join(format!("normalized-wrong-{}.toml", std::process::id()));
    std::fs::write(
        &wrong,
        right.replace(
            good_discount,
            "discount = \"(abs(l.qty) * l.price_unit - abs(l.price_subtotal)) * l.discount_pct / l.discount_pct\"",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let wrong_path = wrong.display().to_string();
    let bridge = Bridge::start(
        &erp_c.url("erp"),
        &[(SOURCE, pos_c.url("pos"))],
        &["--mapping", &wrong_path],
    );
    bridge.wait_streaming(SOURCE, Duration::from_secs(60));
    let mut till = Till::new(99);
    let mut waiting: Waiting = Vec::new();
    trade(&pos, &mut till, 80, &mut waiting).await;
    for (id, _, total) in std::mem::take(&mut waiting) {
        exec(
            &pos,
            &format!("BEGIN; {} COMMIT;", till.pay(&id.to_string(), total)),
        )
        .await;
    }
    let settled = count(
        &pos,
        "SELECT count(*) FROM shop.pos_order WHERE state <> 'draft'",
    )
    .await;
    const POSTED: &str = "SELECT count(*) FROM possync.event WHERE source = 'shop'";
    const REJECTED: &str = "SELECT count(*) FROM possync.exception WHERE source = 'shop' AND kind = 'malformed' AND status = 'open'";
    wait_count(
        &erp,
        &format!("SELECT ({POSTED}) + ({REJECTED})"),
        settled,
        Duration::from_secs(90),
        || bridge.log(),
    )
    .await;
    let (posted, rejected) = (count(&erp, POSTED).await, count(&erp, REJECTED).await);
    drop(bridge);
    let detail = pairs(&erp, "SELECT exception_id::text || ' ' || coalesce(event_id, '-'), kind || ' ' || status || ' ' || reason FROM possync.exception WHERE source = 'shop' AND kind = 'malformed'").await;
    assert_eq!(posted + rejected, settled, "{detail:#?}");
    assert!(
        rejected > 0 && posted > 0,
        "the mistake hits some orders only: {posted} posted, {rejected} rejected"
    );
    let why: String = one(
        &erp,
        "SELECT reason FROM possync.exception WHERE source = 'shop' AND kind = 'malformed' LIMIT 1",
    )
    .await;
    assert!(
        why.contains("division by zero") && why.contains("remap"),
        "{why}"
    );

    // what the POS says, read now: the POS is then stopped, so the remap can only use the ERP's mirror
    let final_orders = "o.state IN ('paid', 'done')";
    let revenue = decimal(&pos, &format!("SELECT sum(l.price_subtotal)::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id WHERE {final_orders} AND l.qty > 0")).await;
    let tax = decimal(&pos, &format!("SELECT sum(x.amount)::text FROM shop.pos_order o JOIN shop.pos_order_line l ON l.order_id = o.id JOIN shop.pos_order_line_tax x ON x.line_id = l.id WHERE {final_orders}")).await;
    drop(pos);
    pos_c.stop();

    let out = std::process::Command::new(bridge_path())
        .args(["remap", "--erp", &erp_c.url("erp"), "--source"])
        .arg(format!("{SOURCE}={}", pos_c.url("pos")))
        .args(["--mapping", &mapping_path()])
        .output()
        .unwrap_or_else(|e| panic!("remap: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("resubmitted {rejected} rejected events, {rejected} posted and resolved, 0 still failing")),
        "{text}"
    );
    let open = count(&erp, REJECTED).await;
    assert_eq!(open, 0);
    let events = count(
        &erp,
        "SELECT count(*) FROM possync.event WHERE source = 'shop' AND event_id LIKE 'shop-%'",
    )
    .await;
    assert_eq!(events, settled);
    let gl = |account: &str| {
        format!("SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '{account}'")
    };
    assert_eq!(decimal(&erp, &gl("4000")).await, revenue);
    assert_eq!(decimal(&erp, &gl("2100")).await, tax);
    // a second remap finds nothing left to do
    let again = std::process::Command::new(bridge_path())
        .args(["remap", "--erp", &erp_c.url("erp"), "--source"])
        .arg(format!("{SOURCE}={}", pos_c.url("pos")))
        .args(["--mapping", &mapping_path()])
        .output()
        .unwrap_or_else(|e| panic!("remap: {e}"));
    assert!(String::from_utf8_lossy(&again.stdout).contains("resubmitted 0 rejected events"));
    let _ = std::fs::remove_file(&wrong);
}
