//! One trading day as an ordered list of steps: POS transactions (what a till or stock room commits) and the
//! web shop's calls to the ERP (reserve, release). The same plan always yields the same steps.

use std::collections::{BTreeMap, VecDeque};

use possync_events::{DayTotals, Event, EventKind, Line, Tender};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::catalog::{cents, Catalog, Item, Network, Scale, DC};
use crate::rng::Rng;

/// Which trading day and how busy it is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scale: Scale,
    /// Customer transactions during trading hours (sales, returns, exchanges, web orders, bad rows).
    pub transactions: u64,
    /// `YYYY-MM-DD`.
    pub business_date: String,
}

/// What one POS database transaction writes.
#[derive(Debug, Clone)]
pub enum PosTxn {
    /// `pos.sale` + `sale_line` + `tender` (kinds sale, return, exchange).
    Sale(Event),
    /// `pos.stock_event` + `stock_event_line` (receipt, transfer_out, transfer_in, adjustment, count).
    Stock(Event),
    /// `pos.day_close`.
    DayClose(Event),
    /// `pos.outbox`: the payload is the event, as is (fulfillments, and one malformed payload).
    Outbox {
        event_id: String,
        location: String,
        payload: Value,
    },
}

impl PosTxn {
    /// The ERP event id this transaction becomes.
    pub fn event_id(&self) -> &str {
        match self {
            PosTxn::Sale(e) | PosTxn::Stock(e) | PosTxn::DayClose(e) => &e.event_id,
            PosTxn::Outbox { event_id, .. } => event_id,
        }
    }

    /// The location whose POS writer commits it: its own, but a transfer_in goes with its transfer_out's
    /// location, so that a shipment is booked before its receipt unless the day says otherwise.
    pub fn route(&self) -> &str {
        match self {
            PosTxn::Stock(e) if e.kind == EventKind::TransferIn => {
                e.from_location.as_deref().unwrap_or(&e.location)
            }
            PosTxn::Sale(e) | PosTxn::Stock(e) | PosTxn::DayClose(e) => &e.location,
            PosTxn::Outbox { location, .. } => location,
        }
    }

    /// The event as contract JSON, for apply_events.
    pub fn to_json(&self) -> Value {
        match self {
            PosTxn::Sale(e) | PosTxn::Stock(e) | PosTxn::DayClose(e) => e.to_json(),
            PosTxn::Outbox { payload, .. } => payload.clone(),
        }
    }
}

/// One thing that happens during the day, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// `trading`: paced at the target rate (opening stock and day close are not); `planted`: a bad row or a
    /// sale of an item the ERP does not know yet (held), left out of the lag figures.
    Pos {
        txn: Box<PosTxn>,
        trading: bool,
        planted: bool,
    },
    /// The web shop holds stock at a store with `possync.reserve`.
    Reserve {
        reservation_id: String,
        sku: String,
        location: String,
        qty: Decimal,
    },
    /// The customer cancelled: `possync.release`.
    Release { reservation_id: String },
    /// The ERP's item master catches up with the items the stores already sell; held sales are replayed.
    LateItems,
}

/// Counts by what was generated, for the summary.
#[derive(Debug, Default, Clone)]
pub struct Mix {
    pub by_kind: BTreeMap<&'static str, u64>,
}

impl Mix {
    fn add(&mut self, what: &'static str) {
        *self.by_kind.entry(what).or_default() += 1;
    }
}

/// The generated day.
#[derive(Debug)]
pub struct Day {
    pub steps: Vec<Step>,
    pub mix: Mix,
}

/// Opening stock per store and at the DC, derived from expected demand so that stores rarely run dry.
#[derive(Debug)]
pub struct Stocking {
    /// Units per (store index, item index).
    pub store: Vec<Vec<i64>>,
    /// Units the DC receives per item (its purchase order `PO-<sku>`).
    pub dc: Vec<i64>,
}

/// What the day plants on purpose: rows the ERP rejects, and sales it holds until the item master catches up.
pub const PLANTED: [&str; 3] = [
    "sale (unknown sku)",
    "sale (malformed line)",
    "fulfillment (malformed payload)",
];

/// Best sellers the DC receives again at midday (purchase orders `PO2-<sku>`).
pub const MIDDAY_RECEIPT_ITEMS: usize = 20;

impl Plan {
    /// Opening quantities: 1.5 × expected units sold per store and item, plus 6 (a basket may take 4 of a slow
    /// seller); the DC holds that for every store plus a third of network demand.
    pub fn stocking(&self, cat: &Catalog) -> Stocking {
        let stores = self.scale.stores.max(1) as u128;
        let total = u128::from(cat.total_weight());
        // generous on purpose: 6.3 units per transaction (about 3.5 lines × 1.3 units are drawn)
        let units_x10 = u128::from(self.transactions) * 63;
        let mut store = vec![vec![0i64; cat.items.len()]; stores as usize];
        let mut dc = vec![0i64; cat.items.len()];
        for (rank, &item) in cat.by_rank.iter().enumerate() {
            let w = u128::from(cat.weight_of_rank(rank));
            let network = units_x10 * w / total / 10;
            let per_store = (network / stores) as i64;
            let target = per_store * 3 / 2 + 6;
            for s in store.iter_mut() {
                s[item] = target;
            }
            dc[item] = target * stores as i64 + network as i64 / 3 + 10;
        }
        Stocking { store, dc }
    }

    /// Midday receipt quantity of a best seller: a tenth of its DC order, at least 12.
    pub fn midday_qty(&self, stocking: &Stocking, item: usize) -> i64 {
        (stocking.dc[item] / 10).max(12)
    }

    /// The whole day, in order.
    pub fn generate(&self, cat: &Catalog, net: &Network) -> Day {
        let mut g = Gen::new(self, cat, net);
        g.opening();
        g.trading();
        g.close();
        Day {
            steps: g.steps,
            mix: g.mix,
        }
    }
}

#[derive(Debug, Default)]
struct Register {
    seq: i64,
    count: i64,
    net: Decimal,
    tax: Decimal,
    tenders: BTreeMap<String, Decimal>,
}

#[derive(Debug)]
struct Recent {
    txn_id: String,
    lines: Vec<Line>,
    tender: String,
}

#[derive(Debug)]
struct Order {
    order_id: String,
    store: usize,
    lines: Vec<(usize, i64)>,
}

struct Gen<'a> {
    plan: &'a Plan,
    cat: &'a Catalog,
    net: &'a Network,
    rng: Rng,
    stocking: Stocking,
    steps: Vec<Step>,
    mix: Mix,
    /// The simulator's own idea of on-hand per (store index, item), for plausible cycle counts.
    on_hand: Vec<Vec<i64>>,
    registers: Vec<Register>,
    recent: Vec<VecDeque<Recent>>,
    orders: VecDeque<(u64, Order)>,
    next_order: u64,
    next_transfer: u64,
    /// Milliseconds since midnight of the current step.
    clock_ms: u64,
}

const OPEN_MS: u64 = 7 * 3_600_000;
const TRADING_START_MS: u64 = 9 * 3_600_000;
const TRADING_MS: u64 = 12 * 3_600_000;
const RECENT_KEPT: usize = 400;

impl<'a> Gen<'a> {
    fn new(plan: &'a Plan, cat: &'a Catalog, net: &'a Network) -> Gen<'a> {
        let stocking = plan.stocking(cat);
        let stores = net.stores.len();
        Gen {
            plan,
            cat,
            net,
            rng: Rng::new(plan.scale.seed).fork(2),
            on_hand: vec![vec![0; cat.items.len()]; stores],
            stocking,
            steps: Vec::new(),
            mix: Mix::default(),
            registers: (0..stores * net.registers as usize)
                .map(|_| Register::default())
                .collect(),
            recent: (0..stores).map(|_| VecDeque::new()).collect(),
            orders: VecDeque::new(),
            next_order: 0,
            next_transfer: 0,
            clock_ms: OPEN_MS,
        }
    }

    fn at(&self) -> String {
        let ms = self.clock_ms;
        format!(
            "{}T{:02}:{:02}:{:02}.{:03}Z",
            self.plan.business_date,
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }

    fn event(&self, kind: EventKind, event_id: String, location: &str) -> Event {
        Event {
            event_id,
            kind,
            location: location.to_string(),
            business_date: self.plan.business_date.clone(),
            occurred_at: Some(self.at()),
            currency: if kind.has_tenders() {
                Some("USD".into())
            } else {
                None
            },
            ..Event::default()
        }
    }

    fn push(&mut self, txn: PosTxn, trading: bool, what: &'static str) {
        self.mix.add(what);
        let planted = PLANTED.contains(&what);
        self.steps.push(Step::Pos {
            txn: Box::new(txn),
            trading,
            planted,
        });
    }

    fn item(&self, i: usize) -> &'a Item {
        &self.cat.items[i]
    }

    fn sample_item(&mut self) -> &'a Item {
        let i = self.cat.sample(&mut self.rng);
        self.item(i)
    }

    // ---------------------------------------------------------------------------------------------------
    // Opening: the DC receives its purchase orders, then ships every store its opening stock.
    // ---------------------------------------------------------------------------------------------------

    fn opening(&mut self) {
        for i in 0..self.cat.items.len() {
            let item = self.item(i);
            let mut ev = self.event(EventKind::Receipt, format!("RCV-{DC}-{}", item.sku), DC);
            ev.supply_id = Some(format!("PO-{}", item.sku));
            ev.lines.push(Line {
                line: Some(1),
                sku: item.sku.clone(),
                qty: Decimal::from(self.stocking.dc[i]),
                unit_cost: Some(item.cost),
                ..Line::default()
            });
            self.clock_ms += 5;
            self.push(PosTxn::Stock(ev), false, "receipt");
        }
        for s in 0..self.net.stores.len() {
            let lines: Vec<(usize, i64)> = (0..self.cat.items.len())
                .map(|i| (i, self.stocking.store[s][i]))
                .collect();
            for chunk in lines.chunks(250) {
                self.transfer(s, chunk, false, false);
            }
        }
    }

    /// DC → store: the transfer_out at the DC, then (or, with `in_first`, before it) the transfer_in.
    fn transfer(&mut self, store: usize, lines: &[(usize, i64)], trading: bool, in_first: bool) {
        self.next_transfer += 1;
        let id = format!("TRF-{:05}", self.next_transfer);
        let to = self.net.stores[store].clone();
        let lines: Vec<Line> = lines
            .iter()
            .enumerate()
            .map(|(n, &(i, q))| Line {
                line: Some(n as i64 + 1),
                sku: self.item(i).sku.clone(),
                qty: Decimal::from(q),
                ..Line::default()
            })
            .collect();
        let mut out = self.event(EventKind::TransferOut, format!("{id}-OUT"), DC);
        out.transfer_id = Some(id.clone());
        out.to_location = Some(to.clone());
        out.lines = lines.clone();
        self.clock_ms += 10;
        let mut inn = self.event(EventKind::TransferIn, format!("{id}-IN"), &to);
        inn.transfer_id = Some(id);
        inn.from_location = Some(DC.into());
        inn.lines = lines;
        for (i, q) in self.on_hand_items(&inn) {
            self.on_hand[store][i] += q;
        }
        if in_first {
            self.push(PosTxn::Stock(inn), trading, "transfer_in");
            self.push(PosTxn::Stock(out), trading, "transfer_out");
        } else {
            self.push(PosTxn::Stock(out), trading, "transfer_out");
            self.push(PosTxn::Stock(inn), trading, "transfer_in");
        }
    }

    fn on_hand_items(&self, ev: &Event) -> Vec<(usize, i64)> {
        ev.lines
            .iter()
            .filter_map(|l| {
                let i = self.cat.index_of(&l.sku)?;
                Some((i, i64::try_from(l.qty).unwrap_or(0)))
            })
            .collect()
    }

    // ---------------------------------------------------------------------------------------------------
    // Trading hours
    // ---------------------------------------------------------------------------------------------------

    fn trading(&mut self) {
        let n = self.plan.transactions.max(1);
        for i in 0..n {
            self.clock_ms = TRADING_START_MS + i * TRADING_MS / n;
            self.scheduled(i, n);
            while self.orders.front().is_some_and(|(due, _)| *due <= i) {
                if let Some((_, order)) = self.orders.pop_front() {
                    self.complete_order(order, true);
                }
            }
            let store = self.rng.below(self.net.stores.len() as u64) as usize;
            match self.rng.below(1000) {
                0..=49 => self.customer_return(store),
                50..=69 => self.exchange(store),
                70..=109 => self.web_order(i),
                110..=112 => self.sale(store, Bad::UnknownSku),
                113..=114 => self.sale(store, Bad::ZeroQty),
                _ => self.sale(store, Bad::None),
            }
        }
    }

    /// Stock-room work at fixed points of the day.
    fn scheduled(&mut self, i: u64, n: u64) {
        let stores = self.net.stores.len();
        if i == n / 4 {
            self.adjustment(0);
        }
        if i == n * 2 / 5 {
            self.malformed_outbox();
        }
        if i == n / 2 {
            self.midday_receipts();
        }
        if i == n * 3 / 5 {
            let best = self.cat.best_sellers(10);
            for s in 0..stores {
                let lines: Vec<(usize, i64)> = best
                    .iter()
                    .map(|&it| (it, (self.stocking.store[s][it] / 5).max(2)))
                    .collect();
                self.transfer(s, &lines, true, false);
            }
        }
        if i == n * 3 / 4 {
            self.cycle_count(1 % stores);
        }
        if i == n * 4 / 5 {
            self.steps.push(Step::LateItems);
        }
        if i == n * 9 / 10 {
            // the store scans the delivery before the DC's shipment is booked: held, then posted by itself
            let lines: Vec<(usize, i64)> = self
                .cat
                .best_sellers(3)
                .into_iter()
                .map(|it| (it, 6))
                .collect();
            self.transfer(stores - 1, &lines, true, true);
        }
    }

    fn sold_line(&mut self, line: i64, item: &Item, qty: i64) -> Line {
        let gross = item.price * Decimal::from(qty);
        let discount = if item.promoted && qty >= 2 {
            // promotion: buy 2 or more, 15 % off the line
            cents(gross * Decimal::new(15, 2))
        } else if self.rng.chance(80) {
            // markdown
            let pct = [10, 20, 30][self.rng.below(3) as usize];
            cents(gross * Decimal::new(pct, 2))
        } else {
            Decimal::ZERO
        };
        Line {
            line: Some(line),
            sku: item.sku.clone(),
            qty: Decimal::from(qty),
            unit_price: item.price,
            discount,
            tax: cents((gross - discount) * item.tax_rate()),
            tax_code: Some(item.tax_code().into()),
            ..Line::default()
        }
    }

    fn basket_qty(&mut self) -> i64 {
        match self.rng.below(100) {
            0..=79 => 1,
            80..=94 => 2,
            _ => self.rng.between(3, 4),
        }
    }

    fn register(&mut self, store: usize) -> (usize, String) {
        let r = self.rng.below(u64::from(self.net.registers)) as usize;
        (store * self.net.registers as usize + r, (r + 1).to_string())
    }

    fn till_event(&mut self, kind: EventKind, store: usize) -> (usize, Event) {
        let (reg, register) = self.register(store);
        self.registers[reg].seq += 1;
        let seq = self.registers[reg].seq;
        let loc = self.net.stores[store].clone();
        let mut ev = self.event(kind, format!("{loc}-{register}-{seq:06}"), &loc);
        ev.register = Some(register);
        ev.sequence = Some(seq);
        (reg, ev)
    }

    /// Records the register's totals and the on-hand effect of a till transaction, then queues it.
    fn commit_till(&mut self, reg: usize, store: usize, ev: Event, what: &'static str) {
        let r = &mut self.registers[reg];
        r.count += 1;
        for l in &ev.lines {
            let sign = if l.returned || ev.kind == EventKind::Return {
                Decimal::NEGATIVE_ONE
            } else {
                Decimal::ONE
            };
            r.net += sign * l.net();
            r.tax += sign * l.tax;
        }
        for t in &ev.tenders {
            *r.tenders.entry(t.tender_type.clone()).or_default() += t.amount;
        }
        for l in &ev.lines {
            if let Some(i) = self.cat.index_of(&l.sku) {
                let q = i64::try_from(l.qty).unwrap_or(0);
                let back = l.returned || ev.kind == EventKind::Return;
                self.on_hand[store][i] += if back { q } else { -q };
            }
        }
        self.push(PosTxn::Sale(ev), true, what);
    }

    fn pay(&mut self, total: Decimal) -> Vec<Tender> {
        let tender = |t: &str, amount| Tender {
            tender_type: t.into(),
            amount,
        };
        match self.rng.below(100) {
            0..=54 => vec![tender("card", total)],
            55..=84 => vec![tender("cash", total)],
            _ => {
                let gift = Decimal::from(self.rng.between(5, 50)).min(total);
                let mut v = vec![tender("gift", gift)];
                if total > gift {
                    v.push(tender("card", total - gift));
                }
                v
            }
        }
    }

    fn sale(&mut self, store: usize, bad: Bad) {
        let (reg, mut ev) = self.till_event(EventKind::Sale, store);
        let n = [1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8][self.rng.below(14) as usize];
        let mut picked: Vec<usize> = Vec::new();
        for no in 1..=n {
            let mut i = self.cat.sample(&mut self.rng);
            if picked.contains(&i) {
                i = self.cat.sample(&mut self.rng);
                if picked.contains(&i) {
                    continue;
                }
            }
            picked.push(i);
            let qty = self.basket_qty();
            let line = self.sold_line(no, self.item(i), qty);
            ev.lines.push(line);
        }
        self.coupon(&mut ev.lines);
        match bad {
            Bad::None => {}
            Bad::UnknownSku => {
                // an item the store sells before the ERP's item master has it: held until it arrives
                let item = &self.cat.late[self.rng.below(self.cat.late.len() as u64) as usize];
                let line = self.sold_line(ev.lines.len() as i64 + 1, item, 1);
                ev.lines.push(line);
            }
            Bad::ZeroQty => {
                // a line voided to quantity 0 instead of being removed: malformed, rejected and kept
                let item = self.sample_item();
                ev.lines.push(Line {
                    line: Some(ev.lines.len() as i64 + 1),
                    sku: item.sku.clone(),
                    qty: Decimal::ZERO,
                    unit_price: item.price,
                    tax_code: Some(item.tax_code().into()),
                    ..Line::default()
                });
            }
        }
        let total: Decimal = ev.lines.iter().map(|l| l.net() + l.tax).sum();
        ev.tenders = self.pay(total);
        let tender = ev.tenders[0].tender_type.clone();
        if bad == Bad::None {
            self.recent[store].push_back(Recent {
                txn_id: ev.event_id.clone(),
                lines: ev.lines.clone(),
                tender,
            });
            if self.recent[store].len() > RECENT_KEPT {
                self.recent[store].pop_front();
            }
        }
        let what = match bad {
            Bad::None => "sale",
            Bad::UnknownSku => "sale (unknown sku)",
            Bad::ZeroQty => "sale (malformed line)",
        };
        self.commit_till(reg, store, ev, what);
    }

    /// $5 off baskets of $50 or more, now and then, spread over the lines by their net (cents exact).
    fn coupon(&mut self, lines: &mut [Line]) {
        let net: Decimal = lines.iter().map(Line::net).sum();
        if net < Decimal::from(50) || !self.rng.chance(100) {
            return;
        }
        let off = Decimal::from(5);
        let mut given = Decimal::ZERO;
        let largest = lines
            .iter()
            .enumerate()
            .max_by_key(|(_, l)| l.net())
            .map(|(i, _)| i)
            .unwrap_or(0);
        for (i, l) in lines.iter_mut().enumerate() {
            if i != largest {
                let share = cents(off * l.net() / net);
                l.discount += share;
                given += share;
            }
        }
        lines[largest].discount += off - given;
        for l in lines.iter_mut() {
            let rate = self
                .cat
                .index_of(&l.sku)
                .map(|i| self.cat.items[i].tax_rate())
                .unwrap_or_default();
            l.tax = cents(l.net() * rate);
        }
    }

    fn customer_return(&mut self, store: usize) {
        let (reg, mut ev) = self.till_event(EventKind::Return, store);
        let with_receipt = !self.recent[store].is_empty() && self.rng.chance(600);
        let (line, refund_type) = if with_receipt {
            let k = self.rng.below(self.recent[store].len() as u64) as usize;
            let recent = &mut self.recent[store][k];
            let line = recent.lines.pop();
            let tender = if recent.tender == "cash" {
                "cash"
            } else {
                "card"
            };
            ev.original_event_id = Some(recent.txn_id.clone());
            if recent.lines.is_empty() {
                self.recent[store].remove(k);
            }
            (line, tender)
        } else {
            (None, "cash")
        };
        let mut line = match line {
            Some(l) => l,
            None => {
                ev.original_event_id = None;
                let item = self.sample_item();
                Line {
                    qty: Decimal::ONE,
                    unit_price: item.price,
                    tax: cents(item.price * item.tax_rate()),
                    tax_code: Some(item.tax_code().into()),
                    sku: item.sku.clone(),
                    ..Line::default()
                }
            }
        };
        line.line = Some(1);
        line.returned = true;
        let refund = -(line.net() + line.tax);
        ev.lines.push(line);
        ev.tenders.push(Tender {
            tender_type: refund_type.into(),
            amount: refund,
        });
        let what = if ev.original_event_id.is_some() {
            "return (with receipt)"
        } else {
            "return (no receipt)"
        };
        self.commit_till(reg, store, ev, what);
    }

    fn exchange(&mut self, store: usize) {
        let (reg, mut ev) = self.till_event(EventKind::Exchange, store);
        let back = self.sample_item();
        let mut returned = Line {
            line: Some(1),
            sku: back.sku.clone(),
            qty: Decimal::ONE,
            unit_price: back.price,
            tax: cents(back.price * back.tax_rate()),
            tax_code: Some(back.tax_code().into()),
            returned: true,
            ..Line::default()
        };
        let mut other = self.cat.sample(&mut self.rng);
        if self.item(other).sku == back.sku {
            other = (other + 1) % self.cat.items.len();
        }
        let sold = self.sold_line(2, self.item(other), 1);
        let diff = sold.net() + sold.tax - (returned.net() + returned.tax);
        returned.line = Some(1);
        ev.lines = vec![returned, sold];
        if !diff.is_zero() {
            ev.tenders.push(Tender {
                tender_type: "card".into(),
                amount: diff,
            });
        }
        self.commit_till(reg, store, ev, "exchange");
    }

    fn web_order(&mut self, i: u64) {
        self.next_order += 1;
        let order_id = format!("WEB-{:06}", self.next_order);
        let store = self.rng.below(self.net.stores.len() as u64) as usize;
        let n = self.rng.between(1, 2);
        let mut lines: Vec<(usize, i64)> = Vec::new();
        for _ in 0..n {
            let item = self.cat.sample(&mut self.rng);
            if lines.iter().all(|(it, _)| *it != item) {
                lines.push((item, self.rng.between(1, 2)));
            }
        }
        for (no, &(item, qty)) in lines.iter().enumerate() {
            self.steps.push(Step::Reserve {
                reservation_id: format!("{order_id}/{}", no + 1),
                sku: self.item(item).sku.clone(),
                location: self.net.stores[store].clone(),
                qty: Decimal::from(qty),
            });
        }
        self.mix.add("web order (reserved)");
        let due = i + self.rng.between(20, 60) as u64;
        self.orders.push_back((
            due,
            Order {
                order_id,
                store,
                lines,
            },
        ));
    }

    /// Ships a web order from its store (a fulfillment through the outbox), or the customer cancels.
    fn complete_order(&mut self, order: Order, trading: bool) {
        if self.rng.chance(80) {
            for no in 1..=order.lines.len() {
                self.steps.push(Step::Release {
                    reservation_id: format!("{}/{no}", order.order_id),
                });
            }
            self.mix.add("web order cancelled (released)");
            return;
        }
        let loc = self.net.stores[order.store].clone();
        let mut ev = self.event(
            EventKind::Fulfillment,
            format!("{}-F", order.order_id),
            &loc,
        );
        ev.order_id = Some(order.order_id.clone());
        for (no, &(item, qty)) in order.lines.iter().enumerate() {
            let it = self.item(item);
            let price = it.price * Decimal::from(qty);
            ev.lines.push(Line {
                line: Some(no as i64 + 1),
                sku: it.sku.clone(),
                qty: Decimal::from(qty),
                unit_price: it.price,
                tax: cents(price * it.tax_rate()),
                tax_code: Some(it.tax_code().into()),
                reservation_id: Some(format!("{}/{}", order.order_id, no + 1)),
                ..Line::default()
            });
            self.on_hand[order.store][item] -= qty;
        }
        let event_id = ev.event_id.clone();
        let payload = ev.to_json();
        self.push(
            PosTxn::Outbox {
                event_id,
                location: loc,
                payload,
            },
            trading,
            "fulfillment",
        );
    }

    fn adjustment(&mut self, store: usize) {
        let loc = self.net.stores[store].clone();
        let mut ev = self.event(EventKind::Adjustment, format!("ADJ-{loc}-1"), &loc);
        ev.reason = Some("damaged".into());
        for no in 1..=2 {
            let i = self.cat.best_sellers(5)[no];
            ev.lines.push(Line {
                line: Some(no as i64),
                sku: self.item(i).sku.clone(),
                qty: Decimal::from(-(no as i64)),
                ..Line::default()
            });
            self.on_hand[store][i] -= no as i64;
        }
        self.push(PosTxn::Stock(ev), true, "adjustment");
    }

    fn cycle_count(&mut self, store: usize) {
        let loc = self.net.stores[store].clone();
        let mut ev = self.event(EventKind::Count, format!("CNT-{loc}-1"), &loc);
        let mut counted: Vec<usize> = Vec::new();
        while counted.len() < 25.min(self.cat.items.len()) {
            let i = self.cat.sample(&mut self.rng);
            if !counted.contains(&i) {
                counted.push(i);
            }
        }
        for (no, &i) in counted.iter().enumerate() {
            // now and then a unit is missing from the shelf
            let shrink = i64::from(self.rng.chance(300));
            let qty = (self.on_hand[store][i] - shrink).max(0);
            self.on_hand[store][i] = qty;
            ev.lines.push(Line {
                line: Some(no as i64 + 1),
                sku: self.item(i).sku.clone(),
                counted_qty: Some(Decimal::from(qty)),
                ..Line::default()
            });
        }
        self.push(PosTxn::Stock(ev), true, "count");
    }

    fn midday_receipts(&mut self) {
        for i in self.cat.best_sellers(MIDDAY_RECEIPT_ITEMS) {
            let item = self.item(i);
            let mut ev = self.event(EventKind::Receipt, format!("RCV-{DC}-PO2-{}", item.sku), DC);
            ev.supply_id = Some(format!("PO2-{}", item.sku));
            // the supplier's price went up 3 %: the moving average moves
            ev.lines.push(Line {
                line: Some(1),
                sku: item.sku.clone(),
                qty: Decimal::from(self.plan.midday_qty(&self.stocking, i)),
                unit_cost: Some(cents(item.cost * Decimal::new(103, 2))),
                ..Line::default()
            });
            self.push(PosTxn::Stock(ev), true, "receipt");
        }
    }

    fn malformed_outbox(&mut self) {
        let store = self.net.stores[0].clone();
        let item = self.item(self.cat.by_rank[0]);
        let payload = json!({
            "event_id": "WEB-BAD-000001-F", "kind": "fulfillment", "location": store,
            "business_date": self.plan.business_date, "order_id": "WEB-BAD-000001",
            "lines": [{"line": 1, "sku": item.sku, "qty": "two", "unit_price": item.price.to_string()}]
        });
        self.push(
            PosTxn::Outbox {
                event_id: "WEB-BAD-000001-F".into(),
                location: store,
                payload,
            },
            true,
            "fulfillment (malformed payload)",
        );
    }

    // ---------------------------------------------------------------------------------------------------
    // Close: ship the open web orders, then every register reports its day
    // ---------------------------------------------------------------------------------------------------

    fn close(&mut self) {
        self.clock_ms = TRADING_START_MS + TRADING_MS;
        while let Some((_, order)) = self.orders.pop_front() {
            self.complete_order(order, false);
        }
        self.clock_ms += 15 * 60_000;
        for s in 0..self.net.stores.len() {
            for r in 0..self.net.registers as usize {
                let reg = &self.registers[s * self.net.registers as usize + r];
                let loc = self.net.stores[s].clone();
                let register = (r + 1).to_string();
                let mut ev = self.event(
                    EventKind::DayClose,
                    format!("{loc}:{register}:{}:day_close", self.plan.business_date),
                    &loc,
                );
                ev.register = Some(register);
                ev.totals = Some(DayTotals {
                    net_sales: reg.net,
                    tax: reg.tax,
                    tenders: reg
                        .tenders
                        .iter()
                        .map(|(t, a)| Tender {
                            tender_type: t.clone(),
                            amount: *a,
                        })
                        .collect(),
                    transaction_count: reg.count,
                    last_sequence: reg.seq,
                });
                self.push(PosTxn::DayClose(ev), false, "day_close");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    None,
    UnknownSku,
    ZeroQty,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            scale: Scale {
                seed: 9,
                stores: 3,
                registers: 2,
                skus: 300,
            },
            transactions: 3000,
            business_date: "2026-11-27".into(),
        }
    }

    fn day() -> Day {
        let p = plan();
        p.generate(&Catalog::new(&p.scale), &Network::new(&p.scale))
    }

    fn events(d: &Day) -> Vec<Value> {
        d.steps
            .iter()
            .filter_map(|s| match s {
                Step::Pos { txn, .. } => Some(txn.to_json()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_day() {
        assert_eq!(events(&day()), events(&day()));
        let mut other = plan();
        other.scale.seed = 10;
        let d = other.generate(&Catalog::new(&other.scale), &Network::new(&other.scale));
        assert_ne!(events(&day()), events(&d));
    }

    #[test]
    fn every_event_but_the_planted_bad_ones_parses_and_tills_balance() {
        let d = day();
        let mut malformed = 0;
        let mut kinds = BTreeMap::new();
        for v in events(&d) {
            match Event::from_json(&v) {
                Ok(ev) => {
                    *kinds.entry(ev.kind.as_str()).or_insert(0) += 1;
                    if ev.kind.has_tenders() {
                        let owed: Decimal = ev
                            .lines
                            .iter()
                            .map(|l| {
                                let s = if l.returned { -1 } else { 1 };
                                Decimal::from(s) * (l.net() + l.tax)
                            })
                            .sum();
                        assert_eq!(owed, ev.tendered(), "{}", ev.event_id);
                        for l in &ev.lines {
                            assert!(l.net() >= Decimal::ZERO, "{}", ev.event_id);
                            assert!(l.discount.scale() <= 2 && l.tax.scale() <= 2);
                        }
                    }
                }
                Err(_) => malformed += 1,
            }
        }
        let planted = d
            .mix
            .by_kind
            .get("sale (malformed line)")
            .copied()
            .unwrap_or(0)
            + d.mix
                .by_kind
                .get("fulfillment (malformed payload)")
                .copied()
                .unwrap_or(0);
        assert_eq!(malformed, planted);
        assert!(planted >= 2, "{:?}", d.mix);
        for k in [
            "sale",
            "return",
            "exchange",
            "fulfillment",
            "receipt",
            "transfer_out",
            "transfer_in",
            "adjustment",
            "count",
            "day_close",
        ] {
            assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k}: {kinds:?}");
        }
        // about 5 % returns among till transactions
        let tills = kinds["sale"] + kinds["return"] + kinds["exchange"];
        let share = kinds["return"] * 1000 / tills;
        assert!((35..70).contains(&share), "returns {share}‰");
    }

    #[test]
    fn day_close_totals_add_up_the_registers_transactions() {
        let d = day();
        let mut net = Decimal::ZERO;
        let mut count = 0;
        let mut closed_net = Decimal::ZERO;
        let mut closed_count = 0;
        for s in &d.steps {
            let Step::Pos { txn, .. } = s else { continue };
            match txn.as_ref() {
                PosTxn::Sale(ev) => {
                    count += 1;
                    for l in &ev.lines {
                        let back = l.returned || ev.kind == EventKind::Return;
                        net += if back { -l.net() } else { l.net() };
                    }
                }
                PosTxn::DayClose(ev) => {
                    let t = ev.totals.as_ref().expect("totals");
                    closed_net += t.net_sales;
                    closed_count += t.transaction_count;
                }
                _ => {}
            }
        }
        assert_eq!(net, closed_net);
        assert_eq!(count, closed_count);
    }
}
