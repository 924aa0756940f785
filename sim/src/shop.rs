//! The day on the normalized POS schema (schema `shop`, cdc-bridge/sql/normalized_pos_schema.sql), shaped like
//! the commercial POS databases retailers run.
//!
//! Master rows (stores, tills, taxes, payment methods, most products) are written once, with the schema, long
//! before trading. Every till transaction of the generated day (sale, return, exchange) becomes an order:
//! transaction A inserts it as `draft` with its lines and one tax row per tax of each line; transaction B inserts
//! the payments and sets it `paid`. Half the orders commit A and B together; for the others B follows later,
//! after other orders, sometimes from another POS connection. About 1 % of sales are cancelled instead (their
//! receipt number stays used); a few paid orders are later set `done`. A return is a refund order with negative
//! quantities pointing (`refund_of`) at an earlier paid order of its store when the customer has a receipt.
//! Stock events, day closes and outbox rows do not exist in this POS: the opening stock goes to the ERP directly.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write;

use possync_events::{Event, EventKind};
use rust_decimal::Decimal;
use tokio_postgres::Client;

use crate::catalog::{cents, Catalog, Item, Network, TAX_CODES};
use crate::day::{Day, PosTxn, Step};
use crate::error::SimError;
use crate::rng::Rng;

/// The normalized POS schema, fixed by the bridge's mapping of it.
pub const NORMALIZED_SCHEMA: &str = include_str!("../../cdc-bridge/sql/normalized_pos_schema.sql");

/// A second, small tax on apparel and footwear, on top of their own: (code, rate, description).
pub const CITY_TAX: (&str, &str, &str) = ("CITY", "0.005", "city tax on apparel and footwear");
const CITY_CLASSES: [&str; 2] = ["apparel", "footwear"];

/// Payment methods: (name, journal_type); journal_type is the events' tender type.
pub const PAYMENT_METHODS: [(&str, &str); 3] =
    [("Cash", "cash"), ("Card", "card"), ("Gift card", "gift")];

/// Share of the catalogue's SKUs (per mille) that reach the POS product table only with their first sale.
const LATE_PER_MILLE: usize = 20;

/// The time zone of the store with this index (S001 is index 0): odd-numbered stores are in New York, the
/// others keep UTC.
pub fn store_tz(index: usize) -> &'static str {
    if index.is_multiple_of(2) {
        "America/New_York"
    } else {
        "UTC"
    }
}

/// A tax's `rate_pct` (8.875 for a rate of 0.08875).
pub fn rate_pct(code: &str) -> Decimal {
    let rate = if code == CITY_TAX.0 {
        CITY_TAX.1
    } else {
        TAX_CODES.iter().find(|t| t.0 == code).map_or("0", |t| t.1)
    };
    (rate.parse::<Decimal>().unwrap_or_default() * Decimal::ONE_HUNDRED).normalize()
}

/// `price_subtotal = round(qty × price_unit × (1 − discount_pct / 100), 2)`, half away from zero, signed like qty.
pub fn subtotal(qty: Decimal, price_unit: Decimal, discount_pct: Decimal) -> Decimal {
    cents(qty * price_unit * (Decimal::ONE_HUNDRED - discount_pct) / Decimal::ONE_HUNDRED)
}

/// A line's amount of one tax: `round(price_subtotal × rate_pct / 100, 2)`, signed like the subtotal.
pub fn tax_amount(subtotal: Decimal, rate_pct: Decimal) -> Decimal {
    cents(subtotal * rate_pct / Decimal::ONE_HUNDRED)
}

/// A row of `shop.product`.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// `default_code`: the catalogue's SKU.
    pub code: String,
    pub name: String,
    pub list_price: Decimal,
    /// `tax_id` points at this tax code (STD, RED or EXEMPT).
    pub tax: &'static str,
    /// Also charged the city tax.
    pub city: bool,
}

impl Product {
    fn of(item: &Item) -> Product {
        Product {
            code: item.sku.clone(),
            name: item.description.clone(),
            list_price: item.price,
            tax: item.tax_code(),
            city: CITY_CLASSES.contains(&item.class),
        }
    }

    /// The taxes charged on a line of this product: (code, rate_pct), its own tax first.
    pub fn taxes(&self) -> Vec<(&'static str, Decimal)> {
        let mut v = vec![(self.tax, rate_pct(self.tax))];
        if self.city {
            v.push((CITY_TAX.0, rate_pct(CITY_TAX.0)));
        }
        v
    }
}

/// The POS product master: the catalogue's items, then the items the ERP learns late (`NEW-…`).
#[derive(Debug)]
pub struct Products {
    pub list: Vec<Product>,
    /// Inserted with their first sale instead of up front: a seed-chosen 2 % of the catalogue and all `NEW-…`.
    pub late: Vec<bool>,
    index: HashMap<String, usize>,
}

impl Products {
    pub fn new(cat: &Catalog, seed: u64) -> Products {
        let list: Vec<Product> = cat.items.iter().chain(&cat.late).map(Product::of).collect();
        let mut late = vec![false; list.len()];
        for l in late.iter_mut().skip(cat.items.len()) {
            *l = true;
        }
        let n = cat.items.len();
        let mut rng = Rng::new(seed).fork(4);
        let want = (n * LATE_PER_MILLE / 1000).max(1).min(n);
        let mut chosen = 0;
        while chosen < want {
            let i = rng.below(n as u64) as usize;
            if !late[i] {
                late[i] = true;
                chosen += 1;
            }
        }
        let index = list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.code.clone(), i))
            .collect();
        Products { list, late, index }
    }

    pub fn index_of(&self, code: &str) -> Option<usize> {
        self.index.get(code).copied()
    }
}

/// An order by its natural key: store code, till register code, receipt number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRef {
    pub store: String,
    pub till: String,
    pub receipt: i64,
}

impl OrderRef {
    fn label(&self) -> String {
        format!("{}-{}-{:06}", self.store, self.till, self.receipt)
    }
}

/// A row of `shop.pos_order_line` with its `pos_order_line_tax` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderLine {
    pub sku: String,
    /// Negative for a returned line.
    pub qty: Decimal,
    pub price_unit: Decimal,
    pub discount_pct: Decimal,
    pub subtotal: Decimal,
    /// (tax code, amount), one per tax of the product.
    pub taxes: Vec<(&'static str, Decimal)>,
}

impl OrderLine {
    pub fn new(p: &Product, qty: Decimal, price_unit: Decimal, discount_pct: Decimal) -> OrderLine {
        let sub = subtotal(qty, price_unit, discount_pct);
        OrderLine {
            sku: p.code.clone(),
            qty,
            price_unit,
            discount_pct,
            subtotal: sub,
            taxes: p
                .taxes()
                .into_iter()
                .map(|(code, pct)| (code, tax_amount(sub, pct)))
                .collect(),
        }
    }

    /// Subtotal plus its taxes: what the customer pays for the line.
    pub fn total(&self) -> Decimal {
        self.subtotal + self.taxes.iter().map(|t| t.1).sum::<Decimal>()
    }
}

/// One write inside a POS transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `INSERT INTO shop.product`: a product the POS master did not have, with its first sale.
    NewProduct(Product),
    /// Transaction A: the order as `draft`, its lines and their tax rows.
    Place {
        order: OrderRef,
        date_order: String,
        refund_of: Option<OrderRef>,
        lines: Vec<OrderLine>,
    },
    /// Transaction B: the payments (journal_type, amount), then `state = 'paid'`.
    Pay {
        order: OrderRef,
        payments: Vec<(&'static str, Decimal)>,
        paid_at: String,
    },
    /// `UPDATE shop.pos_order SET state = ...`: 'cancel' (a draft) or 'done' (a paid order).
    SetState {
        order: OrderRef,
        state: &'static str,
    },
}

/// What a POS transaction waits for, or makes true when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// Order n (in the day's order) is inserted.
    Placed(u32),
    /// Order n is paid.
    Paid(u32),
    /// Product n of [`Products::list`] is inserted.
    Product(u32),
}

/// One POS database transaction on the normalized schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ShopTxn {
    /// Names the transaction in errors: the order and what is done to it.
    pub label: String,
    /// The store whose POS connection commits it.
    pub store: String,
    /// Committed by the next POS connection instead of the store's own (a payment taken at another terminal).
    pub other_writer: bool,
    pub ops: Vec<Op>,
    /// Committed only after these (written by earlier transactions, perhaps on another connection).
    pub needs: Vec<Key>,
    /// True once this commits.
    pub marks: Vec<Key>,
}

/// One thing of the day in normalized mode.
#[derive(Debug, Clone)]
pub enum ShopStep {
    Txn(Box<ShopTxn>),
    /// The ERP's item master catches up with the `NEW-…` items; held sales are replayed.
    LateItems,
}

/// The day converted for the normalized POS.
#[derive(Debug)]
pub struct ShopDay {
    pub steps: Vec<ShopStep>,
    /// The opening stock (DC receipts, transfers to the stores), for the ERP directly.
    pub opening: Vec<Event>,
    pub mix: BTreeMap<&'static str, u64>,
}

// ---------------------------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------------------------

fn lit(out: &mut String, s: &str) {
    out.push('\'');
    out.push_str(&s.replace('\'', "''"));
    out.push('\'');
}

fn till_id(sql: &mut String, store: &str, till: &str) {
    sql.push_str(
        "(SELECT t.id FROM shop.till t JOIN shop.store s ON s.id = t.store_id WHERE s.code = ",
    );
    lit(sql, store);
    sql.push_str(" AND t.register_code = ");
    lit(sql, till);
    sql.push(')');
}

fn order_key(sql: &mut String, o: &OrderRef) {
    sql.push_str("till_id = ");
    till_id(sql, &o.store, &o.till);
    let _ = write!(sql, " AND receipt_no = {}", o.receipt);
}

fn order_id(sql: &mut String, o: &OrderRef) {
    sql.push_str("(SELECT id FROM shop.pos_order WHERE ");
    order_key(sql, o);
    sql.push(')');
}

fn tax_id(sql: &mut String, code: &str) {
    sql.push_str("(SELECT id FROM shop.tax WHERE code = ");
    lit(sql, code);
    sql.push(')');
}

fn new_product(sql: &mut String, p: &Product) {
    sql.push_str("INSERT INTO shop.product (default_code, name, list_price, tax_id) VALUES (");
    lit(sql, &p.code);
    sql.push(',');
    lit(sql, &p.name);
    let _ = write!(sql, ",{},", p.list_price);
    tax_id(sql, p.tax);
    sql.push_str(");");
}

fn place(
    sql: &mut String,
    order: &OrderRef,
    date_order: &str,
    refund_of: Option<&OrderRef>,
    lines: &[OrderLine],
) {
    sql.push_str(
        "INSERT INTO shop.pos_order (till_id, receipt_no, state, date_order, refund_of) VALUES (",
    );
    till_id(sql, &order.store, &order.till);
    let _ = write!(sql, ",{},'draft',", order.receipt);
    lit(sql, date_order);
    sql.push(',');
    match refund_of {
        Some(r) => order_id(sql, r),
        None => sql.push_str("NULL"),
    }
    sql.push_str(");");
    for l in lines {
        sql.push_str("INSERT INTO shop.pos_order_line (order_id, product_id, qty, price_unit, discount_pct, price_subtotal) VALUES (currval('shop.pos_order_id_seq'),(SELECT id FROM shop.product WHERE default_code = ");
        lit(sql, &l.sku);
        let _ = write!(
            sql,
            "),{},{},{},{});",
            l.qty, l.price_unit, l.discount_pct, l.subtotal
        );
        if !l.taxes.is_empty() {
            sql.push_str("INSERT INTO shop.pos_order_line_tax (line_id, tax_id, amount) VALUES ");
            for (i, (code, amount)) in l.taxes.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(currval('shop.pos_order_line_id_seq'),");
                tax_id(sql, code);
                let _ = write!(sql, ",{amount})");
            }
            sql.push(';');
        }
    }
}

fn pay(sql: &mut String, order: &OrderRef, payments: &[(&str, Decimal)], paid_at: &str) {
    if !payments.is_empty() {
        sql.push_str("INSERT INTO shop.pos_payment (order_id, method_id, amount, paid_at) VALUES ");
        for (i, (method, amount)) in payments.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            order_id(sql, order);
            sql.push_str(",(SELECT min(id) FROM shop.payment_method WHERE journal_type = ");
            lit(sql, method);
            let _ = write!(sql, "),{amount},");
            lit(sql, paid_at);
            sql.push(')');
        }
        sql.push(';');
    }
    set_state(sql, order, "paid");
}

fn set_state(sql: &mut String, order: &OrderRef, state: &str) {
    sql.push_str("UPDATE shop.pos_order SET state = ");
    lit(sql, state);
    sql.push_str(" WHERE ");
    order_key(sql, order);
    sql.push(';');
}

/// The SQL of one POS transaction, BEGIN to COMMIT.
pub fn render(txn: &ShopTxn) -> String {
    let mut sql = String::with_capacity(2048);
    sql.push_str("BEGIN;");
    for op in &txn.ops {
        match op {
            Op::NewProduct(p) => new_product(&mut sql, p),
            Op::Place {
                order,
                date_order,
                refund_of,
                lines,
            } => place(&mut sql, order, date_order, refund_of.as_ref(), lines),
            Op::Pay {
                order,
                payments,
                paid_at,
            } => pay(&mut sql, order, payments, paid_at),
            Op::SetState { order, state } => set_state(&mut sql, order, state),
        }
    }
    sql.push_str("COMMIT;");
    sql
}

/// The master rows written with the schema: stores (code = the sim's location id), tills (register_code = the
/// sim's register number), taxes, payment methods, and every product but the late ones.
pub fn master_sql(net: &Network, products: &Products) -> String {
    let mut sql = String::with_capacity(128 * products.list.len() + 4096);
    sql.push_str("INSERT INTO shop.store (code, name, tz) VALUES ");
    for (i, s) in net.stores.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        lit(&mut sql, s);
        sql.push(',');
        lit(&mut sql, &format!("Store {}", s.trim_start_matches('S')));
        sql.push(',');
        lit(&mut sql, store_tz(i));
        sql.push(')');
    }
    sql.push_str(";INSERT INTO shop.till (store_id, register_code) VALUES ");
    let mut first = true;
    for s in &net.stores {
        for r in 1..=net.registers {
            if !first {
                sql.push(',');
            }
            first = false;
            sql.push_str("((SELECT id FROM shop.store WHERE code = ");
            lit(&mut sql, s);
            let _ = write!(sql, "),'{r}')");
        }
    }
    sql.push_str(";INSERT INTO shop.tax (code, rate_pct) VALUES ");
    for (i, code) in TAX_CODES
        .iter()
        .map(|t| t.0)
        .chain([CITY_TAX.0])
        .enumerate()
    {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        lit(&mut sql, code);
        let _ = write!(sql, ",{})", rate_pct(code));
    }
    sql.push_str(";INSERT INTO shop.payment_method (name, journal_type) VALUES ");
    for (i, (name, journal)) in PAYMENT_METHODS.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        lit(&mut sql, name);
        sql.push(',');
        lit(&mut sql, journal);
        sql.push(')');
    }
    sql.push_str(";INSERT INTO shop.product (default_code, name, list_price, tax_id) SELECT v.code, v.name, v.price, t.id FROM (VALUES ");
    let mut first = true;
    for (p, _) in products
        .list
        .iter()
        .zip(&products.late)
        .filter(|(_, l)| !**l)
    {
        if !first {
            sql.push(',');
        }
        first = false;
        sql.push('(');
        lit(&mut sql, &p.code);
        sql.push(',');
        lit(&mut sql, &p.name);
        let _ = write!(sql, ",{}::numeric,", p.list_price);
        lit(&mut sql, p.tax);
        sql.push(')');
    }
    sql.push_str(
        ") AS v(code, name, price, tax) JOIN shop.tax t ON t.code = v.tax ORDER BY v.code;",
    );
    sql
}

/// Creates schema `shop` with its master rows, in one transaction, unless it is there. True when created.
pub async fn create_schema(
    pos: &Client,
    net: &Network,
    products: &Products,
) -> Result<bool, SimError> {
    let exists: bool = pos
        .query_one("SELECT to_regclass('shop.pos_order') IS NOT NULL", &[])
        .await
        .map_err(SimError::db("looking for the normalized POS schema"))?
        .get(0);
    if !exists {
        // one simple-query message: the server runs it as one transaction
        let sql = format!("{NORMALIZED_SCHEMA}\n{}", master_sql(net, products));
        pos.batch_execute(&sql).await.map_err(SimError::db(
            "creating the normalized POS schema and its master rows",
        ))?;
    }
    Ok(!exists)
}

/// Posts the opening stock to the ERP with `possync.apply_events`, as the back office would; returns the count
/// of each status.
pub async fn post_opening(
    erp: &Client,
    opening: &[Event],
) -> Result<BTreeMap<String, u64>, SimError> {
    let mut statuses = BTreeMap::new();
    for chunk in opening.chunks(500) {
        let mut batch: Vec<serde_json::Value> = chunk.iter().map(Event::to_json).collect();
        crate::json::flush(erp, &mut batch, &mut statuses).await?;
    }
    Ok(statuses)
}

// ---------------------------------------------------------------------------------------------------------------
// The day as orders
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct OrderState {
    order: OrderRef,
    kind: EventKind,
    lines: Vec<OrderLine>,
    returned: Vec<bool>,
    paid: bool,
}

#[derive(Debug)]
enum Later {
    Pay {
        order: u32,
        payments: Vec<(&'static str, Decimal)>,
        other_writer: bool,
    },
    Cancel(u32),
    Done(u32),
}

/// Paid sales kept per store as candidates for refunds.
const PAID_KEPT: usize = 400;

struct Convert<'a> {
    products: &'a Products,
    rng: Rng,
    orders: Vec<OrderState>,
    by_event: HashMap<String, u32>,
    paid: HashMap<String, VecDeque<u32>>,
    /// Transactions waiting to be written: (due after this many orders placed, tie-break) → what.
    later: BTreeMap<(u64, u64), Later>,
    placed: u64,
    queued: u64,
    inserted: HashSet<usize>,
    steps: Vec<ShopStep>,
    opening: Vec<Event>,
    mix: BTreeMap<&'static str, u64>,
    now: String,
}

/// Turns the generated day into the normalized POS's transactions (and the opening stock for the ERP).
pub fn convert(day: &Day, products: &Products, seed: u64) -> ShopDay {
    let mut c = Convert {
        products,
        rng: Rng::new(seed).fork(3),
        orders: Vec::new(),
        by_event: HashMap::new(),
        paid: HashMap::new(),
        later: BTreeMap::new(),
        placed: 0,
        queued: 0,
        inserted: HashSet::new(),
        steps: Vec::new(),
        opening: Vec::new(),
        mix: BTreeMap::new(),
        now: String::new(),
    };
    for step in &day.steps {
        match step {
            Step::Pos {
                txn,
                trading,
                planted,
            } => match txn.as_ref() {
                PosTxn::Sale(ev) => c.order(ev, *planted),
                PosTxn::Stock(ev) if !trading => c.opening.push(ev.clone()),
                // stock events during the day, day closes and outbox rows: this POS has no such tables
                _ => {}
            },
            Step::LateItems => c.steps.push(ShopStep::LateItems),
            // web orders are reserved for a fulfillment this POS never writes: left out
            Step::Reserve { .. } | Step::Release { .. } => {}
        }
    }
    while let Some((_, later)) = c.later.pop_first() {
        c.emit(later);
    }
    ShopDay {
        steps: c.steps,
        opening: c.opening,
        mix: c.mix,
    }
}

fn journal(tender_type: &str) -> &'static str {
    PAYMENT_METHODS
        .iter()
        .map(|m| m.1)
        .find(|j| *j == tender_type)
        .unwrap_or("card")
}

impl Convert<'_> {
    fn count(&mut self, what: &'static str) {
        *self.mix.entry(what).or_default() += 1;
    }

    fn discount_pct(&mut self) -> Decimal {
        match self.rng.below(100) {
            0..=54 => Decimal::ZERO,
            55..=63 => Decimal::from(5),
            64..=72 => Decimal::from(10),
            73..=81 => Decimal::new(1250, 2),
            82..=90 => Decimal::from(15),
            _ => Decimal::new(3333, 2),
        }
    }

    fn schedule(&mut self, after: i64, later: Later) {
        self.queued += 1;
        self.later
            .insert((self.placed + after.max(1) as u64, self.queued), later);
    }

    fn push(&mut self, txn: ShopTxn) {
        self.steps.push(ShopStep::Txn(Box::new(txn)));
    }

    fn became_paid(&mut self, o: u32) {
        let st = &mut self.orders[o as usize];
        st.paid = true;
        if st.kind == EventKind::Sale {
            let list = self.paid.entry(st.order.store.clone()).or_default();
            list.push_back(o);
            if list.len() > PAID_KEPT {
                list.pop_front();
            }
        }
        if self.rng.chance(30) {
            let after = self.rng.between(5, 30);
            self.schedule(after, Later::Done(o));
        }
    }

    /// Writes the transactions that are due before the next order.
    fn emit_due(&mut self) {
        while let Some(entry) = self.later.first_entry() {
            if entry.key().0 > self.placed {
                break;
            }
            let later = entry.remove();
            self.emit(later);
        }
    }

    fn emit(&mut self, later: Later) {
        match later {
            Later::Pay {
                order: o,
                payments,
                other_writer,
            } => {
                let order = self.orders[o as usize].order.clone();
                self.count(if other_writer {
                    "paid later, on another connection"
                } else {
                    "paid later"
                });
                self.push(ShopTxn {
                    label: format!("{} pay", order.label()),
                    store: order.store.clone(),
                    other_writer,
                    ops: vec![Op::Pay {
                        order,
                        payments,
                        paid_at: self.now.clone(),
                    }],
                    needs: vec![Key::Placed(o)],
                    marks: vec![Key::Paid(o)],
                });
                self.became_paid(o);
            }
            Later::Cancel(o) => {
                let order = self.orders[o as usize].order.clone();
                self.count("cancelled");
                self.push(ShopTxn {
                    label: format!("{} cancel", order.label()),
                    store: order.store.clone(),
                    other_writer: false,
                    ops: vec![Op::SetState {
                        order,
                        state: "cancel",
                    }],
                    needs: vec![Key::Placed(o)],
                    marks: vec![],
                });
            }
            Later::Done(o) => {
                let order = self.orders[o as usize].order.clone();
                self.count("paid, later done");
                self.push(ShopTxn {
                    label: format!("{} done", order.label()),
                    store: order.store.clone(),
                    other_writer: false,
                    ops: vec![Op::SetState {
                        order,
                        state: "done",
                    }],
                    needs: vec![Key::Paid(o)],
                    marks: vec![],
                });
            }
        }
    }

    fn line(&mut self, sku: &str, qty: Decimal, price_unit: Decimal) -> Option<OrderLine> {
        let p = &self.products.list[self.products.index_of(sku)?];
        let pct = self.discount_pct();
        Some(OrderLine::new(p, qty, price_unit, pct))
    }

    /// A paid sale of the store with a line not refunded yet: the return's original when it qualifies, else
    /// one drawn from the store's recent paid sales.
    fn refundable(&mut self, ev: &Event) -> Option<(u32, usize)> {
        let unreturned = |st: &OrderState, sku: Option<&str>| {
            st.lines
                .iter()
                .zip(&st.returned)
                .position(|(l, r)| !*r && l.qty > Decimal::ZERO && sku.is_none_or(|s| l.sku == s))
        };
        let sku = ev.lines.first().map(|l| l.sku.as_str());
        if let Some(&o) = ev
            .original_event_id
            .as_ref()
            .and_then(|id| self.by_event.get(id))
        {
            let st = &self.orders[o as usize];
            if st.paid && st.order.store == ev.location {
                if let Some(li) = unreturned(st, sku) {
                    return Some((o, li));
                }
            }
        }
        loop {
            let list = self.paid.get(&ev.location)?;
            if list.is_empty() {
                return None;
            }
            let k = self.rng.below(list.len() as u64) as usize;
            let o = list[k];
            match unreturned(&self.orders[o as usize], None) {
                Some(li) => return Some((o, li)),
                None => {
                    if let Some(list) = self.paid.get_mut(&ev.location) {
                        list.remove(k);
                    }
                }
            }
        }
    }

    /// A return's lines: a line of an earlier paid order, negated, when the customer has a receipt; else the
    /// event's line with a negative quantity and no order to point at.
    fn refund(&mut self, ev: &Event, needs: &mut Vec<Key>) -> (Vec<OrderLine>, Option<u32>) {
        if ev.original_event_id.is_some() {
            if let Some((o, li)) = self.refundable(ev) {
                let st = &mut self.orders[o as usize];
                st.returned[li] = true;
                let orig = st.lines[li].clone();
                if let Some(p) = self.products.index_of(&orig.sku) {
                    let line = OrderLine::new(
                        &self.products.list[p],
                        -orig.qty,
                        orig.price_unit,
                        orig.discount_pct,
                    );
                    needs.push(Key::Paid(o));
                    self.count("refund of a paid order (refund_of)");
                    return (vec![line], Some(o));
                }
            }
        }
        self.count("refund without an original (refund_of NULL)");
        let lines = ev
            .lines
            .iter()
            .filter_map(|l| self.line(&l.sku, -l.qty, l.unit_price))
            .collect();
        (lines, None)
    }

    /// Payments of `total`: the event's tender types, one or two of them; none when nothing is owed.
    fn payments(ev: &Event, total: Decimal) -> Vec<(&'static str, Decimal)> {
        if total.is_zero() {
            return Vec::new();
        }
        let mut types: Vec<&'static str> = Vec::new();
        for t in &ev.tenders {
            let j = journal(&t.tender_type);
            if !types.contains(&j) {
                types.push(j);
            }
        }
        let Some(&first_type) = types.first() else {
            return vec![("card", total)];
        };
        let first = ev.tenders[0].amount.abs().min(total.abs());
        let first = if total.is_sign_negative() {
            -first
        } else {
            first
        };
        match types.get(1) {
            Some(&second) if !first.is_zero() && first != total => {
                vec![(first_type, first), (second, total - first)]
            }
            _ => vec![(first_type, total)],
        }
    }

    fn order(&mut self, ev: &Event, planted: bool) {
        if let Some(at) = &ev.occurred_at {
            self.now.clone_from(at);
        }
        self.emit_due();
        let o = self.orders.len() as u32;
        let order = OrderRef {
            store: ev.location.clone(),
            till: ev.register.clone().unwrap_or_default(),
            receipt: ev.sequence.unwrap_or_default(),
        };
        let mut needs = Vec::new();
        let (lines, refund_of) = if ev.kind == EventKind::Return {
            self.refund(ev, &mut needs)
        } else {
            let lines = ev
                .lines
                .iter()
                .filter_map(|l| {
                    let qty = if l.returned { -l.qty } else { l.qty };
                    self.line(&l.sku, qty, l.unit_price)
                })
                .collect();
            (lines, None)
        };
        let mut ops = Vec::new();
        let mut marks = vec![Key::Placed(o)];
        for l in &lines {
            if l.taxes.len() > 1 {
                self.count("line with two tax rows");
            }
            let Some(p) = self.products.index_of(&l.sku) else {
                continue;
            };
            if !self.products.late[p] {
                continue;
            }
            let k = Key::Product(p as u32);
            if self.inserted.insert(p) {
                ops.push(Op::NewProduct(self.products.list[p].clone()));
                marks.push(k);
                self.count("product inserted with its first sale");
            } else if !marks.contains(&k) && !needs.contains(&k) {
                needs.push(k);
            }
        }
        let total: Decimal = lines.iter().map(OrderLine::total).sum();
        ops.push(Op::Place {
            order: order.clone(),
            date_order: self.now.clone(),
            refund_of: refund_of.map(|r| self.orders[r as usize].order.clone()),
            lines: lines.clone(),
        });
        self.orders.push(OrderState {
            order: order.clone(),
            kind: ev.kind,
            returned: vec![false; lines.len()],
            lines,
            paid: false,
        });
        self.by_event.insert(ev.event_id.clone(), o);
        self.placed += 1;
        self.count(match ev.kind {
            EventKind::Return => "order: refund",
            EventKind::Exchange => "order: exchange",
            _ => "order: sale",
        });
        let mut txn = ShopTxn {
            label: format!("{} place", order.label()),
            store: order.store.clone(),
            other_writer: false,
            ops,
            needs,
            marks,
        };
        if ev.kind == EventKind::Sale && !planted && self.rng.chance(10) {
            self.push(txn);
            let after = self.rng.between(1, 4);
            self.schedule(after, Later::Cancel(o));
            return;
        }
        let payments = Self::payments(ev, total);
        if self.rng.chance(500) {
            txn.label = format!("{} place and pay", order.label());
            txn.ops.push(Op::Pay {
                order,
                payments,
                paid_at: self.now.clone(),
            });
            txn.marks.push(Key::Paid(o));
            self.count("paid in the same transaction");
            self.push(txn);
            self.became_paid(o);
        } else {
            self.push(txn);
            let after = self.rng.between(1, 6);
            let other_writer = self.rng.chance(500);
            self.schedule(
                after,
                Later::Pay {
                    order: o,
                    payments,
                    other_writer,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Scale;
    use crate::day::Plan;

    fn d(s: &str) -> Decimal {
        s.parse().expect("a decimal")
    }

    fn product(tax: &'static str, city: bool) -> Product {
        Product {
            code: "SKU-00042".into(),
            name: "apparel item 42".into(),
            list_price: d("19.99"),
            tax,
            city,
        }
    }

    #[test]
    fn subtotal_and_tax_round_half_away_from_zero_signed_like_qty() {
        // 2 × 19.99 × 0.875 = 34.9825
        assert_eq!(subtotal(d("2"), d("19.99"), d("12.50")), d("34.98"));
        // 19.49 × 0.6667 = 12.993883
        assert_eq!(subtotal(d("-1"), d("19.49"), d("33.33")), d("-12.99"));
        // 0.10 × 0.95 = 0.095: half away from zero, both signs
        assert_eq!(subtotal(d("1"), d("0.10"), d("5")), d("0.10"));
        assert_eq!(subtotal(d("-1"), d("0.10"), d("5")), d("-0.10"));
        assert_eq!(subtotal(d("3"), d("4.49"), d("0")), d("13.47"));
        assert_eq!(rate_pct("STD"), d("8.875"));
        assert_eq!(rate_pct("RED"), d("4"));
        assert_eq!(rate_pct("CITY"), d("0.5"));
        // 10.00 × 8.875 % = 0.8875
        assert_eq!(tax_amount(d("10.00"), d("8.875")), d("0.89"));
        assert_eq!(tax_amount(d("-10.00"), d("8.875")), d("-0.89"));
        // 34.98 × 8.875 % = 3.104475; × 0.5 % = 0.1749
        let line = OrderLine::new(&product("STD", true), d("2"), d("19.99"), d("12.50"));
        assert_eq!(line.subtotal, d("34.98"));
        assert_eq!(line.taxes, vec![("STD", d("3.10")), ("CITY", d("0.17"))]);
        assert_eq!(line.total(), d("38.25"));
        let back = OrderLine::new(&product("STD", true), d("-2"), d("19.99"), d("12.50"));
        assert_eq!(back.subtotal, d("-34.98"));
        assert_eq!(back.taxes, vec![("STD", d("-3.10")), ("CITY", d("-0.17"))]);
        let exempt = OrderLine::new(&product("EXEMPT", false), d("1"), d("1.49"), d("0"));
        assert_eq!(exempt.taxes, vec![("EXEMPT", d("0"))]);
    }

    fn order_ref(receipt: i64) -> OrderRef {
        OrderRef {
            store: "S001".into(),
            till: "2".into(),
            receipt,
        }
    }

    const TILL: &str = "(SELECT t.id FROM shop.till t JOIN shop.store s ON s.id = t.store_id WHERE s.code = 'S001' AND t.register_code = '2')";

    #[test]
    fn an_order_renders_as_a_draft_with_lines_and_taxes_then_payments_and_paid() {
        let line = OrderLine::new(&product("STD", true), d("2"), d("19.99"), d("12.50"));
        let a = ShopTxn {
            label: "S001-2-000007 place".into(),
            store: "S001".into(),
            other_writer: false,
            ops: vec![Op::Place {
                order: order_ref(7),
                date_order: "2026-11-27T09:00:00.000Z".into(),
                refund_of: None,
                lines: vec![line.clone()],
            }],
            needs: vec![],
            marks: vec![Key::Placed(0)],
        };
        let sql = render(&a);
        let want = format!(
            "BEGIN;\
             INSERT INTO shop.pos_order (till_id, receipt_no, state, date_order, refund_of) VALUES ({TILL},7,'draft','2026-11-27T09:00:00.000Z',NULL);\
             INSERT INTO shop.pos_order_line (order_id, product_id, qty, price_unit, discount_pct, price_subtotal) VALUES (currval('shop.pos_order_id_seq'),(SELECT id FROM shop.product WHERE default_code = 'SKU-00042'),2,19.99,12.50,34.98);\
             INSERT INTO shop.pos_order_line_tax (line_id, tax_id, amount) VALUES (currval('shop.pos_order_line_id_seq'),(SELECT id FROM shop.tax WHERE code = 'STD'),3.10),(currval('shop.pos_order_line_id_seq'),(SELECT id FROM shop.tax WHERE code = 'CITY'),0.17);\
             COMMIT;"
        );
        assert_eq!(sql, want);
        assert!(!sql.contains("pos_payment") && !sql.contains("UPDATE"));

        // 38.25 owed: 20 on a gift card, the rest by card
        let ev = Event {
            tenders: vec![
                possync_events::Tender {
                    tender_type: "gift".into(),
                    amount: d("20"),
                },
                possync_events::Tender {
                    tender_type: "card".into(),
                    amount: d("24.10"),
                },
            ],
            ..Event::default()
        };
        let payments = Convert::payments(&ev, line.total());
        assert_eq!(payments, vec![("gift", d("20")), ("card", d("18.25"))]);
        let b = ShopTxn {
            label: "S001-2-000007 pay".into(),
            store: "S001".into(),
            other_writer: true,
            ops: vec![Op::Pay {
                order: order_ref(7),
                payments,
                paid_at: "2026-11-27T09:00:05.000Z".into(),
            }],
            needs: vec![Key::Placed(0)],
            marks: vec![Key::Paid(0)],
        };
        let order =
            format!("(SELECT id FROM shop.pos_order WHERE till_id = {TILL} AND receipt_no = 7)");
        let method = |j: &str| {
            format!("(SELECT min(id) FROM shop.payment_method WHERE journal_type = '{j}')")
        };
        let want = format!(
            "BEGIN;\
             INSERT INTO shop.pos_payment (order_id, method_id, amount, paid_at) VALUES ({order},{},20,'2026-11-27T09:00:05.000Z'),({order},{},18.25,'2026-11-27T09:00:05.000Z');\
             UPDATE shop.pos_order SET state = 'paid' WHERE till_id = {TILL} AND receipt_no = 7;\
             COMMIT;",
            method("gift"),
            method("card")
        );
        assert_eq!(render(&b), want);

        // a refund of it: negative, pointing at the order, refunded in cash
        let refund = Convert::payments(
            &Event {
                tenders: vec![possync_events::Tender {
                    tender_type: "cash".into(),
                    amount: d("-1"),
                }],
                ..Event::default()
            },
            d("-38.25"),
        );
        assert_eq!(refund, vec![("cash", d("-38.25"))]);
        let r = render(&ShopTxn {
            ops: vec![Op::Place {
                order: order_ref(9),
                date_order: "2026-11-27T10:00:00.000Z".into(),
                refund_of: Some(order_ref(7)),
                lines: vec![],
            }],
            ..a
        });
        assert!(r.contains(&format!(",9,'draft','2026-11-27T10:00:00.000Z',{order});")));
    }

    #[test]
    fn a_cancellation_keeps_the_receipt_number_and_pays_nothing() {
        let c = ShopTxn {
            label: "S001-2-000008 cancel".into(),
            store: "S001".into(),
            other_writer: false,
            ops: vec![Op::SetState {
                order: order_ref(8),
                state: "cancel",
            }],
            needs: vec![Key::Placed(1)],
            marks: vec![],
        };
        assert_eq!(
            render(&c),
            format!(
                "BEGIN;UPDATE shop.pos_order SET state = 'cancel' WHERE till_id = {TILL} AND receipt_no = 8;COMMIT;"
            )
        );
    }

    fn plan() -> Plan {
        Plan {
            scale: Scale {
                seed: 5,
                stores: 3,
                registers: 2,
                skus: 300,
            },
            transactions: 3000,
            business_date: "2026-11-27".into(),
        }
    }

    fn shop_day() -> (ShopDay, Products, Day) {
        let p = plan();
        let cat = Catalog::new(&p.scale);
        let day = p.generate(&cat, &Network::new(&p.scale));
        let products = Products::new(&cat, p.scale.seed);
        (convert(&day, &products, p.scale.seed), products, day)
    }

    fn txns(d: &ShopDay) -> Vec<&ShopTxn> {
        d.steps
            .iter()
            .filter_map(|s| match s {
                ShopStep::Txn(t) => Some(t.as_ref()),
                ShopStep::LateItems => None,
            })
            .collect()
    }

    #[test]
    fn the_day_as_orders_is_deterministic_gap_free_and_paid_in_full() {
        let (day, products, reference) = shop_day();
        let again = shop_day().0;
        assert_eq!(txns(&day), txns(&again));
        let sales = reference
            .steps
            .iter()
            .filter(
                |s| matches!(s, Step::Pos { txn, .. } if matches!(txn.as_ref(), PosTxn::Sale(_))),
            )
            .count();

        let mut receipts: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        let mut owed: HashMap<(String, String, i64), Decimal> = HashMap::new();
        let mut state: HashMap<(String, String, i64), &str> = HashMap::new();
        let mut paid_total: HashMap<(String, String, i64), Decimal> = HashMap::new();
        let mut marked: HashSet<Key> = HashSet::new();
        let mut new_products = HashSet::new();
        let mut refund_of = 0;
        let mut two_methods = 0;
        let key = |o: &OrderRef| (o.store.clone(), o.till.clone(), o.receipt);
        for t in txns(&day) {
            for n in &t.needs {
                assert!(marked.contains(n), "{}: {n:?} not written before", t.label);
            }
            for op in &t.ops {
                match op {
                    Op::NewProduct(p) => {
                        let i = products.index_of(&p.code).expect("a product");
                        assert!(products.late[i]);
                        assert!(new_products.insert(p.code.clone()), "{} twice", p.code);
                    }
                    Op::Place {
                        order,
                        refund_of: r,
                        lines,
                        ..
                    } => {
                        receipts
                            .entry((order.store.clone(), order.till.clone()))
                            .or_default()
                            .push(order.receipt);
                        for l in lines {
                            let i = products.index_of(&l.sku).expect("a product");
                            // a late product is in the POS before (or with) its first sale
                            assert!(!products.late[i] || new_products.contains(&l.sku));
                            assert_eq!(l.subtotal, subtotal(l.qty, l.price_unit, l.discount_pct));
                        }
                        if let Some(r) = r {
                            refund_of += 1;
                            assert_eq!(r.store, order.store);
                            assert!(matches!(state.get(&key(r)), Some(&"paid" | &"done")));
                            assert!(lines.iter().all(|l| l.qty < Decimal::ZERO));
                        }
                        let total: Decimal = lines.iter().map(OrderLine::total).sum();
                        owed.insert(key(order), total);
                        assert!(state.insert(key(order), "draft").is_none());
                    }
                    Op::Pay {
                        order, payments, ..
                    } => {
                        assert_eq!(state.get(&key(order)), Some(&"draft"));
                        state.insert(key(order), "paid");
                        two_methods += usize::from(payments.len() == 2);
                        paid_total.insert(key(order), payments.iter().map(|p| p.1).sum());
                    }
                    Op::SetState { order, state: s } => {
                        let before = state.get(&key(order)).copied();
                        match *s {
                            "cancel" => assert_eq!(before, Some("draft")),
                            "done" => assert_eq!(before, Some("paid")),
                            other => panic!("state {other}"),
                        }
                        state.insert(key(order), *s);
                    }
                }
            }
            marked.extend(t.marks.iter().copied());
        }
        // every till transaction is an order; receipts per till are 1, 2, 3 ... in commit order
        assert_eq!(owed.len(), sales);
        for (till, r) in &receipts {
            let want: Vec<i64> = (1..=r.len() as i64).collect();
            assert_eq!(r, &want, "{till:?}");
        }
        let cancelled = state.values().filter(|s| **s == "cancel").count();
        let done = state.values().filter(|s| **s == "done").count();
        assert!(state.values().all(|s| *s != "draft"));
        assert!(
            cancelled * 1000 / sales >= 4 && cancelled * 1000 / sales <= 20,
            "{cancelled}"
        );
        assert!(done > 10, "{done}");
        for (k, s) in &state {
            if *s == "cancel" {
                assert!(!paid_total.contains_key(k));
            } else {
                assert_eq!(paid_total[k], owed[k], "{k:?}");
            }
        }
        assert!(
            refund_of > 20 && two_methods > 20,
            "{refund_of} {two_methods}"
        );
        assert!(!new_products.is_empty());
        for what in [
            "paid in the same transaction",
            "paid later",
            "paid later, on another connection",
            "line with two tax rows",
            "refund without an original (refund_of NULL)",
            "order: exchange",
        ] {
            assert!(
                day.mix.get(what).copied().unwrap_or(0) > 10,
                "{what}: {:?}",
                day.mix
            );
        }
        // the opening stock, for the ERP: DC receipts and the transfers to the stores
        assert!(day.opening.iter().any(|e| e.kind == EventKind::Receipt));
        assert!(day.opening.iter().any(|e| e.kind == EventKind::TransferIn));
    }

    #[test]
    fn master_rows_name_stores_tills_taxes_methods_and_the_early_products() {
        let p = plan();
        let cat = Catalog::new(&p.scale);
        let net = Network::new(&p.scale);
        let products = Products::new(&cat, p.scale.seed);
        let late = products.late.iter().filter(|l| **l).count();
        // 2 % of 300, plus the three NEW- items
        assert_eq!(late, 6 + 3);
        let sql = master_sql(&net, &products);
        assert!(sql.starts_with("INSERT INTO shop.store (code, name, tz) VALUES ('S001','Store 001','America/New_York'),('S002','Store 002','UTC'),"));
        assert!(sql.contains("((SELECT id FROM shop.store WHERE code = 'S003'),'2')"));
        assert!(sql.contains("('STD',8.875),('RED',4),('EXEMPT',0),('CITY',0.5)"));
        assert!(sql.contains("('Cash','cash'),('Card','card'),('Gift card','gift')"));
        for (prod, l) in products.list.iter().zip(&products.late) {
            assert_eq!(
                sql.contains(&format!("('{}',", prod.code)),
                !l,
                "{}",
                prod.code
            );
        }
    }
}
