//! The books as DESIGN.md's posting rules say they should be: stock per (sku, location) with moving average
//! cost, a general ledger per (account, location) in the default chart, and the event inbox that decides each
//! event's status. Events are applied one at a time; a call of several events is the same events in order.
//!
//! Where DESIGN.md leaves a choice open, the reading taken is written next to the code that takes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use rust_decimal::Decimal;
use serde_json::Value;

use super::event::{parse, Event, Kind, Line};
use super::money::{cents, div_round, mul_div_round, unit};

/// (sku, location)
pub type Key = (String, String);

/// The default chart (`possync.install_default_chart()`).
pub mod account {
    pub const CASH: &str = "1000";
    pub const OTHER_TENDERS: &str = "1010";
    pub const INVENTORY: &str = "1200";
    pub const IN_TRANSIT: &str = "1210";
    pub const TAX_PAYABLE: &str = "2100";
    pub const GRNI: &str = "2200";
    pub const CUSTOMER_DEPOSITS: &str = "2300";
    pub const REVENUE: &str = "4000";
    pub const RETURNS: &str = "4100";
    pub const COGS: &str = "5000";
    pub const SHRINK: &str = "5100";
    pub const OVER_SHORT: &str = "5200";

    /// tender:cash and tender:* of the default chart.
    pub fn tender(tender_type: &str) -> &'static str {
        if tender_type == "cash" {
            CASH
        } else {
            OTHER_TENDERS
        }
    }
}

/// Exception kinds the model predicts; the test compares the presence of each of these in an answer.
pub const MODELED_EXCEPTIONS: [&str; 7] = [
    "malformed",
    "conflict",
    "unknown_sku",
    "unknown_location",
    "awaiting_transfer_out",
    "tender_mismatch",
    "negative_on_hand",
];

/// Quantity, value and moving average cost of one sku at one location.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub on_hand: Decimal,
    pub value: Decimal,
    /// None until goods have come in here; until then the item's standard cost is used.
    pub avg_cost: Option<Decimal>,
}

impl Balance {
    fn cost(&self, standard_cost: Decimal) -> Decimal {
        self.avg_cost.unwrap_or(standard_cost)
    }

    /// Value that may not stay: all of it at on-hand 0 (DESIGN.md), and all of it when its sign is the other of
    /// on-hand's. Reading: DESIGN.md only names the first; issue 11 has check_invariants() report a value whose
    /// sign differs from on-hand's, and the README (the domain section, "Valuation at the edges") writes such a
    /// value off as well, so the model does too.
    fn stranded(&self) -> Decimal {
        let opposite = (self.on_hand > Decimal::ZERO && self.value < Decimal::ZERO)
            || (self.on_hand < Decimal::ZERO && self.value > Decimal::ZERO);
        if self.on_hand.is_zero() || opposite {
            self.value
        } else {
            Decimal::ZERO
        }
    }

    /// After goods came in (and anything stranded was written off): the average is what is on hand valued over
    /// its quantity, kept to 6 decimals. Reading (DESIGN is silent): when that is no average at all (on-hand 0
    /// or below) the last average stays; with none yet, the cost the goods came in at becomes the average.
    fn average_after_incoming(&mut self, incoming_unit_cost: Decimal) {
        let avg = if self.on_hand > Decimal::ZERO && self.value >= Decimal::ZERO {
            div_round(self.value, self.on_hand, 6)
        } else {
            None
        };
        match avg {
            Some(a) => self.avg_cost = Some(a),
            None if self.avg_cost.is_none() => self.avg_cost = Some(unit(incoming_unit_cost)),
            None => {}
        }
    }
}

/// What an answer said about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Applied,
    Duplicate,
    Conflict,
    Held,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Duplicate => "duplicate",
            Status::Conflict => "conflict",
            Status::Held => "held",
            Status::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The model's answer for one event: its status and which of [`MODELED_EXCEPTIONS`] it raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub exceptions: BTreeSet<&'static str>,
}

impl Outcome {
    fn new(status: Status) -> Outcome {
        Outcome {
            status,
            exceptions: BTreeSet::new(),
        }
    }

    fn raising(mut self, kind: &'static str) -> Outcome {
        self.exceptions.insert(kind);
        self
    }
}

/// What `reverse_event` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reversal {
    /// the exact reversal is posted
    Applied,
    /// refused with an error: unknown, held, or a transfer
    Refused,
    /// already reversed: nothing changes (DESIGN does not say how it answers)
    NoEffect,
}

/// An event the model cannot value because DESIGN.md does not say how; the generator must not make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfDomain(pub String);

impl fmt::Display for OutOfDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outside the model's domain: {}", self.0)
    }
}

impl std::error::Error for OutOfDomain {}

/// One stock move as posted: signed quantity and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub sku: String,
    pub location: String,
    pub qty: Decimal,
    pub value: Decimal,
}

/// Where an event in the inbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Applied,
    Held,
    Reversed,
}

/// One event's posting: its moves (a write-off is a move of quantity 0) and its journal as (account, location,
/// debit − credit).
#[derive(Debug, Clone, Default)]
struct Posting {
    moves: Vec<Move>,
    journal: Vec<(&'static str, String, Decimal)>,
    raised: BTreeSet<&'static str>,
}

impl Posting {
    fn book(&mut self, account: &'static str, location: &str, debit_minus_credit: Decimal) {
        if !debit_minus_credit.is_zero() {
            self.journal
                .push((account, location.to_string(), debit_minus_credit));
        }
    }
}

#[derive(Debug, Clone)]
struct Received {
    payload: Value,
    event: Event,
    state: State,
    posting: Posting,
}

/// A transfer_out as shipped: per line, sku, quantity and value.
#[derive(Debug, Clone)]
struct Shipment {
    from: String,
    lines: Vec<(String, Decimal, Decimal)>,
    received_by: Option<String>,
}

/// The books and the inbox.
#[derive(Debug, Clone)]
pub struct Model {
    standard_costs: BTreeMap<String, Decimal>,
    locations: BTreeSet<String>,
    balances: BTreeMap<Key, Balance>,
    ledger: BTreeMap<(String, String), Decimal>,
    inbox: HashMap<String, Received>,
    shipments: HashMap<String, Shipment>,
    /// transfer_id → held transfer_in event ids, in arrival order
    waiting: HashMap<String, Vec<String>>,
    /// (location, register) → the register numbers received
    registers: BTreeMap<(String, String), Numbers>,
}

/// The sequence numbers one register has used, as the sales audit sees them.
#[derive(Debug, Clone, Default)]
struct Numbers {
    first: Option<i64>,
    used: BTreeSet<i64>,
}

impl Model {
    /// Empty books over this master data: items with their standard cost, and locations.
    pub fn new(items: &[(&str, Decimal)], locations: &[&str]) -> Model {
        Model {
            standard_costs: items.iter().map(|(s, c)| (s.to_string(), *c)).collect(),
            locations: locations.iter().map(|l| l.to_string()).collect(),
            balances: BTreeMap::new(),
            ledger: BTreeMap::new(),
            inbox: HashMap::new(),
            shipments: HashMap::new(),
            waiting: HashMap::new(),
            registers: BTreeMap::new(),
        }
    }

    /// Per (location, register), how many sequence numbers are missing: those between the first number the
    /// register was seen with and its highest that no event has used. Reading (DESIGN.md names the audit, the
    /// README says a jump names the missing numbers and a late one fills its gap): numbers below the first one
    /// seen are never missing; every sale, return, exchange and void that was applied or held used its number
    /// (a duplicate, a conflict or a rejected event did not). Registers are told apart by location and name:
    /// the generator sends every numbered event with one `source`.
    pub fn missing_transactions(&self) -> BTreeMap<(String, String), i64> {
        self.registers
            .iter()
            .filter_map(|(k, n)| {
                let first = n.first?;
                let last = n.used.iter().next_back().copied()?;
                let between = n.used.range(first..=last).count() as i64;
                let missing = last - first + 1 - between;
                (missing > 0).then(|| (k.clone(), missing))
            })
            .collect()
    }

    /// An applied or held event that carries a register number has used it.
    fn number_used(&mut self, ev: &Event) {
        if let (true, Some(register), Some(sequence)) = (
            ev.kind.uses_a_register_number(),
            ev.register.as_ref(),
            ev.sequence,
        ) {
            let n = self
                .registers
                .entry((ev.location.clone(), register.clone()))
                .or_default();
            n.first.get_or_insert(sequence);
            n.used.insert(sequence);
        }
    }

    /// Balances of every (sku, location) that has seen a move.
    pub fn balances(&self) -> &BTreeMap<Key, Balance> {
        &self.balances
    }

    pub fn balance(&self, sku: &str, location: &str) -> Balance {
        self.balances
            .get(&(sku.to_string(), location.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// The value `qty` units leaving (sku, location) at the average now would take (positive): qty × average
    /// in cents, all that is left when they empty the location. Reading (README, "Valuation at the edges";
    /// DESIGN.md is silent, and its rounding alone can overdraw the shelf, which issue 11's check_invariants()
    /// reports): a move that leaves goods on the shelf takes at most the value the shelf holds.
    pub fn outgoing_value(&self, sku: &str, location: &str, qty: Decimal) -> Decimal {
        let b = self.balance(sku, location);
        let after = b.on_hand - qty;
        let at_average = cents(qty * b.cost(self.standard_cost(sku)));
        if after.is_zero() {
            b.value
        } else if after > Decimal::ZERO && b.value >= Decimal::ZERO {
            at_average.min(b.value)
        } else {
            at_average
        }
    }

    pub fn on_hand(&self, sku: &str, location: &str) -> Decimal {
        self.balance(sku, location).on_hand
    }

    /// The general ledger: (account code, location) → debit − credit, zero entries left out.
    pub fn ledger(&self) -> BTreeMap<(String, String), Decimal> {
        self.ledger
            .iter()
            .filter(|(_, v)| !v.is_zero())
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Value of transfers shipped from `location` and not yet received.
    pub fn open_transfers_value(&self, location: &str) -> Decimal {
        self.shipments
            .values()
            .filter(|s| s.from == location && s.received_by.is_none())
            .flat_map(|s| s.lines.iter().map(|l| l.2))
            .sum()
    }

    pub fn state(&self, event_id: &str) -> Option<State> {
        self.inbox.get(event_id).map(|r| r.state)
    }

    pub fn kind(&self, event_id: &str) -> Option<Kind> {
        self.inbox.get(event_id).map(|r| r.event.kind)
    }

    /// The stock moves an applied (or since reversed) event posted.
    pub fn moves_of(&self, event_id: &str) -> &[Move] {
        self.inbox
            .get(event_id)
            .map(|r| r.posting.moves.as_slice())
            .unwrap_or(&[])
    }

    /// True when the event wrote off stranded value.
    pub fn wrote_off(&self, event_id: &str) -> bool {
        self.moves_of(event_id)
            .iter()
            .any(|m| m.qty.is_zero() && !m.value.is_zero())
    }

    /// The model's own bookkeeping identities: every journal balances and GL inventory per location equals the
    /// stock value there; on-hand 0 carries value 0.
    pub fn self_check(&self) -> Result<(), String> {
        for (id, r) in &self.inbox {
            let sum: Decimal = r.posting.journal.iter().map(|l| l.2).sum();
            if !sum.is_zero() {
                return Err(format!("model journal of {id} is off by {sum}"));
            }
        }
        let mut stock: BTreeMap<&str, Decimal> = BTreeMap::new();
        for ((sku, loc), b) in &self.balances {
            if b.on_hand.is_zero() && !b.value.is_zero() {
                return Err(format!(
                    "model: {sku} at {loc} has on-hand 0 and value {}",
                    b.value
                ));
            }
            *stock.entry(loc).or_default() += b.value;
        }
        for loc in &self.locations {
            let gl = self
                .ledger
                .get(&(account::INVENTORY.to_string(), loc.clone()))
                .copied()
                .unwrap_or_default();
            let st = stock.get(loc.as_str()).copied().unwrap_or_default();
            if gl != st {
                return Err(format!(
                    "model: inventory at {loc} is {gl} in the GL, {st} in stock"
                ));
            }
            let transit = self
                .ledger
                .get(&(account::IN_TRANSIT.to_string(), loc.clone()))
                .copied()
                .unwrap_or_default();
            if transit != self.open_transfers_value(loc) {
                return Err(format!(
                    "model: in transit from {loc} is {transit} in the GL"
                ));
            }
        }
        Ok(())
    }

    /// Applies one event payload as `apply_event` would and says what it should answer.
    pub fn apply(&mut self, payload: &Value) -> Result<Outcome, OutOfDomain> {
        let ev = match parse(payload) {
            Ok(ev) => ev,
            // Reading: a malformed payload is rejected whatever its id; it does not count as received.
            Err(_) => return Ok(Outcome::new(Status::Rejected).raising("malformed")),
        };
        if let Some(r) = self.inbox.get(&ev.event_id) {
            // Compared as JSON values (as jsonb compares): key order does not matter.
            return Ok(if r.payload == *payload {
                Outcome::new(Status::Duplicate)
            } else {
                Outcome::new(Status::Conflict).raising("conflict")
            });
        }
        self.number_used(&ev);
        let missing = self.missing_master_data(&ev);
        if !missing.is_empty() {
            let mut o = Outcome::new(Status::Held);
            o.exceptions = missing;
            self.receive(payload, ev, State::Held, Posting::default());
            return Ok(o);
        }
        if ev.kind == Kind::TransferIn {
            let tid = ev.transfer_id.clone().unwrap_or_default();
            if !self.shipments.contains_key(&tid) {
                self.waiting
                    .entry(tid)
                    .or_default()
                    .push(ev.event_id.clone());
                self.receive(payload, ev, State::Held, Posting::default());
                return Ok(Outcome::new(Status::Held).raising("awaiting_transfer_out"));
            }
        }
        let posting = self.post(&ev)?;
        let mut o = Outcome::new(Status::Applied);
        o.exceptions = posting.raised.clone();
        let shipped = (ev.kind == Kind::TransferOut).then(|| ev.transfer_id.clone());
        self.receive(payload, ev, State::Applied, posting);
        // transfer_ins that arrived first post right after their transfer_out
        if let Some(Some(tid)) = shipped {
            for id in self.waiting.remove(&tid).unwrap_or_default() {
                let Some(held) = self.inbox.get(&id).map(|r| r.event.clone()) else {
                    continue;
                };
                let posting = self.post(&held)?;
                self.book_all(&posting);
                if let Some(r) = self.inbox.get_mut(&id) {
                    r.state = State::Applied;
                    r.posting = posting;
                }
            }
        }
        Ok(o)
    }

    /// `reverse_event`: the exact opposite of an applied event's moves and journal.
    pub fn reverse(&mut self, event_id: &str) -> Result<Reversal, OutOfDomain> {
        let Some(r) = self.inbox.get(event_id) else {
            return Ok(Reversal::Refused);
        };
        match r.state {
            State::Held => return Ok(Reversal::Refused),
            State::Reversed => return Ok(Reversal::NoEffect),
            State::Applied => {}
        }
        if matches!(r.event.kind, Kind::TransferOut | Kind::TransferIn) {
            return Ok(Reversal::Refused);
        }
        let original = r.posting.clone();
        let mut p = Posting::default();
        for (account, loc, amount) in &original.journal {
            p.book(account, loc, -*amount);
        }
        // Reading: the exact opposite of every move (write-offs included), in order, each incoming one moving the
        // average as in a posting; then, per sku and location, what the reversal leaves stranded is written off
        // as a posting would (DESIGN: on-hand 0 means value 0).
        let mut touched: Vec<Key> = Vec::new();
        for m in &original.moves {
            let key = (m.sku.clone(), m.location.clone());
            let b = self.balances.entry(key.clone()).or_default();
            b.on_hand -= m.qty;
            b.value -= m.value;
            if m.qty < Decimal::ZERO {
                // goods coming back in carry the unit cost they left at
                b.average_after_incoming(div_round(m.value, m.qty, 6).unwrap_or_default());
            }
            p.moves.push(Move {
                sku: m.sku.clone(),
                location: m.location.clone(),
                qty: -m.qty,
                value: -m.value,
            });
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for (sku, loc) in touched {
            self.write_off_stranded(&mut p, &sku, &loc);
        }
        self.book_all(&p);
        if let Some(r) = self.inbox.get_mut(event_id) {
            r.state = State::Reversed;
        }
        Ok(Reversal::Applied)
    }

    fn receive(&mut self, payload: &Value, event: Event, state: State, posting: Posting) {
        if state == State::Applied {
            self.book_all(&posting);
        }
        self.inbox.insert(
            event.event_id.clone(),
            Received {
                payload: payload.clone(),
                event,
                state,
                posting,
            },
        );
    }

    fn book_all(&mut self, p: &Posting) {
        for (account, loc, amount) in &p.journal {
            *self
                .ledger
                .entry((account.to_string(), loc.clone()))
                .or_default() += *amount;
        }
    }

    fn missing_master_data(&self, ev: &Event) -> BTreeSet<&'static str> {
        let mut missing = BTreeSet::new();
        let locations = [
            Some(&ev.location),
            ev.to_location.as_ref(),
            ev.from_location.as_ref(),
        ];
        if locations
            .into_iter()
            .flatten()
            .any(|l| !self.locations.contains(l))
        {
            missing.insert("unknown_location");
        }
        if ev
            .lines
            .iter()
            .any(|l| !self.standard_costs.contains_key(&l.sku))
        {
            missing.insert("unknown_sku");
        }
        missing
    }

    fn standard_cost(&self, sku: &str) -> Decimal {
        self.standard_costs.get(sku).copied().unwrap_or_default()
    }

    fn balance_mut(&mut self, sku: &str, location: &str) -> &mut Balance {
        self.balances
            .entry((sku.to_string(), location.to_string()))
            .or_default()
    }

    /// Goods leave at the average (standard cost before any); the move that empties the location takes all
    /// that is left. Returns the (positive) value that left.
    fn move_out_at_average(
        &mut self,
        p: &mut Posting,
        sku: &str,
        loc: &str,
        qty: Decimal,
    ) -> Decimal {
        let value = self.outgoing_value(sku, loc, qty);
        let b = self.balance_mut(sku, loc);
        let after = b.on_hand - qty;
        b.on_hand = after;
        b.value -= value;
        if after < Decimal::ZERO {
            p.raised.insert("negative_on_hand");
        }
        p.moves.push(Move {
            sku: sku.into(),
            location: loc.into(),
            qty: -qty,
            value: -value,
        });
        // Reading (README, "Valuation at the edges"): an outgoing move that leaves value of the other sign than
        // on-hand writes it off too
        self.write_off_stranded(p, sku, loc);
        value
    }

    /// Goods come in at the average (count, positive adjustment, return without its sale); landing on exactly
    /// 0 they take all the value that is left, like an outgoing move. Returns the move's value.
    fn move_in_at_average(
        &mut self,
        p: &mut Posting,
        sku: &str,
        loc: &str,
        qty: Decimal,
    ) -> Decimal {
        let standard = self.standard_cost(sku);
        let b = self.balance_mut(sku, loc);
        let cost = b.cost(standard);
        let value = if (b.on_hand + qty).is_zero() {
            -b.value
        } else {
            cents(qty * cost)
        };
        self.move_in(p, sku, loc, qty, value, cost);
        value
    }

    /// Goods come in at a fixed value (receipt, transfer_in, return at its sale's cost). Returns the value.
    fn move_in_at_value(
        &mut self,
        p: &mut Posting,
        sku: &str,
        loc: &str,
        qty: Decimal,
        value: Decimal,
        unit_cost: Decimal,
    ) -> Decimal {
        self.move_in(p, sku, loc, qty, value, unit_cost);
        value
    }

    /// An incoming move: what it leaves stranded is written off against cogs in the same journal, then the
    /// average moves.
    fn move_in(
        &mut self,
        p: &mut Posting,
        sku: &str,
        loc: &str,
        qty: Decimal,
        value: Decimal,
        unit_cost: Decimal,
    ) {
        let b = self.balance_mut(sku, loc);
        b.on_hand += qty;
        b.value += value;
        p.moves.push(Move {
            sku: sku.into(),
            location: loc.into(),
            qty,
            value,
        });
        self.write_off_stranded(p, sku, loc);
        self.balance_mut(sku, loc).average_after_incoming(unit_cost);
    }

    /// Stranded value leaves inventory for cogs, recorded as a move of quantity 0. True when there was some.
    fn write_off_stranded(&mut self, p: &mut Posting, sku: &str, loc: &str) -> bool {
        let b = self.balance_mut(sku, loc);
        let left = b.stranded();
        if left.is_zero() {
            return false;
        }
        b.value -= left;
        // Reading (README, "Valuation at the edges"): what is left on the shelf is worth what the books now say,
        // so the average follows it.
        if b.on_hand > Decimal::ZERO {
            b.avg_cost = div_round(b.value, b.on_hand, 6);
        }
        p.moves.push(Move {
            sku: sku.into(),
            location: loc.into(),
            qty: Decimal::ZERO,
            value: -left,
        });
        p.book(account::INVENTORY, loc, -left);
        p.book(account::COGS, loc, left);
        true
    }

    fn post(&mut self, ev: &Event) -> Result<Posting, OutOfDomain> {
        let mut p = Posting::default();
        match ev.kind {
            Kind::Sale | Kind::Return | Kind::Exchange => self.post_till(ev, &mut p),
            Kind::Fulfillment => self.post_fulfillment(ev, &mut p),
            Kind::Receipt => self.post_receipt(ev, &mut p),
            Kind::TransferOut => self.post_transfer_out(ev, &mut p)?,
            Kind::TransferIn => self.post_transfer_in(ev, &mut p)?,
            Kind::Adjustment => {
                for l in &ev.lines {
                    self.shrink(&mut p, &l.sku, &ev.location, l.qty);
                }
            }
            Kind::Count => {
                for l in &ev.lines {
                    let counted = l.counted_qty.unwrap_or_default();
                    let variance = counted - self.on_hand(&l.sku, &ev.location);
                    self.shrink(&mut p, &l.sku, &ev.location, variance);
                }
            }
            // DESIGN.md: a day close and a void post nothing
            Kind::DayClose | Kind::Void => {}
        }
        Ok(p)
    }

    /// A signed stock change against shrink, at the average either way.
    fn shrink(&mut self, p: &mut Posting, sku: &str, loc: &str, qty: Decimal) {
        if qty < Decimal::ZERO {
            let v = self.move_out_at_average(p, sku, loc, -qty);
            p.book(account::SHRINK, loc, v);
            p.book(account::INVENTORY, loc, -v);
        } else if qty > Decimal::ZERO {
            let v = self.move_in_at_average(p, sku, loc, qty);
            p.book(account::INVENTORY, loc, v);
            p.book(account::SHRINK, loc, -v);
        }
    }

    /// What a returned line is worth at its original sale's cost: that sale's move of the sku, its value ÷ its
    /// quantity × the quantity returned, rounded to cents. None when the original issued none of the sku.
    /// Reading: the original is looked up wherever it was sold; several moves of the sku in it count as one.
    fn value_at_original_cost(&self, original: &str, line: &Line) -> Option<(Decimal, Decimal)> {
        let r = self.inbox.get(original)?;
        let (qty, issued) = r
            .posting
            .moves
            .iter()
            .filter(|m| m.sku == line.sku && m.qty < Decimal::ZERO)
            .fold((Decimal::ZERO, Decimal::ZERO), |(q, v), m| {
                (q - m.qty, v - m.value)
            });
        if qty.is_zero() {
            return None;
        }
        let value = mul_div_round(issued, line.qty, qty, 2)?;
        let unit_cost = div_round(issued, qty, 6).unwrap_or_default();
        Some((value, unit_cost))
    }

    fn post_till(&mut self, ev: &Event, p: &mut Posting) {
        let loc = ev.location.as_str();
        let mut owed = Decimal::ZERO;
        for l in &ev.lines {
            let net = cents(l.qty * l.unit_price - l.discount);
            if l.returned {
                let at_cost = ev
                    .original_of(l)
                    .and_then(|orig| self.value_at_original_cost(orig, l));
                let value = match at_cost {
                    Some((value, unit_cost)) => {
                        self.move_in_at_value(p, &l.sku, loc, l.qty, value, unit_cost)
                    }
                    // Reading: an original that is unknown or did not sell the sku: the average, as without one.
                    None => self.move_in_at_average(p, &l.sku, loc, l.qty),
                };
                p.book(account::RETURNS, loc, net);
                p.book(account::TAX_PAYABLE, loc, l.tax);
                p.book(account::INVENTORY, loc, value);
                p.book(account::COGS, loc, -value);
                owed -= net + l.tax;
            } else {
                let value = self.move_out_at_average(p, &l.sku, loc, l.qty);
                p.book(account::REVENUE, loc, -net);
                p.book(account::TAX_PAYABLE, loc, -l.tax);
                p.book(account::COGS, loc, value);
                p.book(account::INVENTORY, loc, -value);
                owed += net + l.tax;
            }
        }
        let mut paid = Decimal::ZERO;
        for (tender_type, amount) in &ev.tenders {
            p.book(account::tender(tender_type), loc, *amount);
            paid += *amount;
        }
        let over = paid - owed;
        if !over.is_zero() {
            p.book(account::OVER_SHORT, loc, -over);
            p.raised.insert("tender_mismatch");
        }
    }

    fn post_fulfillment(&mut self, ev: &Event, p: &mut Posting) {
        let loc = ev.location.as_str();
        for l in &ev.lines {
            let net = cents(l.qty * l.unit_price - l.discount);
            let value = self.move_out_at_average(p, &l.sku, loc, l.qty);
            p.book(account::CUSTOMER_DEPOSITS, loc, net + l.tax);
            p.book(account::REVENUE, loc, -net);
            p.book(account::TAX_PAYABLE, loc, -l.tax);
            p.book(account::COGS, loc, value);
            p.book(account::INVENTORY, loc, -value);
        }
    }

    fn post_receipt(&mut self, ev: &Event, p: &mut Posting) {
        let loc = ev.location.as_str();
        for l in &ev.lines {
            let unit_cost = l.unit_cost.unwrap_or_default();
            let value = cents(l.qty * unit_cost);
            self.move_in_at_value(p, &l.sku, loc, l.qty, value, unit_cost);
            p.book(account::INVENTORY, loc, value);
            p.book(account::GRNI, loc, -value);
        }
    }

    fn post_transfer_out(&mut self, ev: &Event, p: &mut Posting) -> Result<(), OutOfDomain> {
        let loc = ev.location.as_str();
        let tid = ev.transfer_id.clone().unwrap_or_default();
        if self.shipments.contains_key(&tid) {
            return Err(OutOfDomain(format!("transfer {tid} shipped twice")));
        }
        let mut lines = Vec::new();
        for l in &ev.lines {
            if lines.iter().any(|(s, _, _)| s == &l.sku) {
                return Err(OutOfDomain(format!(
                    "transfer {tid} ships {} on two lines",
                    l.sku
                )));
            }
            let value = self.move_out_at_average(p, &l.sku, loc, l.qty);
            p.book(account::IN_TRANSIT, loc, value);
            p.book(account::INVENTORY, loc, -value);
            lines.push((l.sku.clone(), l.qty, value));
        }
        self.shipments.insert(
            tid,
            Shipment {
                from: loc.to_string(),
                lines,
                received_by: None,
            },
        );
        Ok(())
    }

    /// Goods arrive at exactly the value they left with; in transit is credited at the shipping location.
    fn post_transfer_in(&mut self, ev: &Event, p: &mut Posting) -> Result<(), OutOfDomain> {
        let loc = ev.location.as_str();
        let tid = ev.transfer_id.clone().unwrap_or_default();
        let Some(shipment) = self.shipments.get(&tid).cloned() else {
            return Err(OutOfDomain(format!(
                "transfer {tid} posted before it shipped"
            )));
        };
        if shipment.received_by.is_some() {
            return Err(OutOfDomain(format!("transfer {tid} received twice")));
        }
        let same_lines = ev.lines.len() == shipment.lines.len()
            && ev
                .lines
                .iter()
                .zip(&shipment.lines)
                .all(|(l, (sku, qty, _))| &l.sku == sku && l.qty == *qty);
        if !same_lines {
            return Err(OutOfDomain(format!(
                "transfer {tid} received with other lines than it shipped"
            )));
        }
        for (sku, qty, value) in &shipment.lines {
            let unit_cost = div_round(*value, *qty, 6).unwrap_or_default();
            self.move_in_at_value(p, sku, loc, *qty, *value, unit_cost);
            p.book(account::INVENTORY, loc, *value);
            p.book(account::IN_TRANSIT, &shipment.from, -*value);
        }
        if let Some(s) = self.shipments.get_mut(&tid) {
            s.received_by = Some(ev.event_id.clone());
        }
        Ok(())
    }
}
