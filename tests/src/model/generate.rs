//! A seeded generator of event sequences of every kind, grouped into calls of `apply_event`, `apply_events`,
//! `apply_batch` and `reverse_event`. It feeds each event to the [`Model`] as it makes it, so that the next
//! event can be made against the books as they stand (returns against sales that were applied, counts to what
//! is on hand), and each step carries what the model expects the extension to answer.
//!
//! Numbers stay in a sane domain (quantities below 10^6 with up to 4 decimals, unit costs 0.0001..10^5);
//! hostile input is another test's job.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use super::books::{Model, OutOfDomain, Outcome, Reversal, State, Status};
use super::money::cents;

/// Items the ERP knows (sku, standard cost): some standard costs have 3 decimals (1.005, 2.675) so that
/// rounding half away from zero shows.
pub const ITEMS: [(&str, &str); 8] = [
    ("A", "4.00"),
    ("B", "1.005"),
    ("C", "2.675"),
    ("D", "0.335"),
    ("E", "12.5"),
    ("F", "0.0001"),
    ("G", "45000"),
    ("H", "0.125"),
];
/// Locations the ERP knows.
pub const LOCATIONS: [&str; 3] = ["S1", "S2", "DC"];
/// The tax code lines carry and its rate.
pub const TAX_CODE: (&str, &str) = ("NY", "0.08875");
/// The two streams that call apply_batch.
pub const SOURCES: [&str; 2] = ["pos-a", "pos-b"];
/// A sku and a location the ERP does not know: events naming them are held.
pub const UNKNOWN_SKU: &str = "GHOST";
pub const UNKNOWN_LOCATION: &str = "S9";
/// The `source` every event with a register sequence number names, so that the sales audit sees one stream per
/// register whichever call carries it.
pub const TILL_SOURCE: &str = "pos-tills";

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

/// The items as the model takes them.
pub fn items() -> Vec<(&'static str, Decimal)> {
    ITEMS.iter().map(|(s, c)| (*s, dec(c))).collect()
}

/// One call to the extension.
#[derive(Debug, Clone)]
pub enum Call {
    Event(Value),
    Events(Vec<Value>),
    Batch {
        source: String,
        lsn: String,
        events: Vec<Value>,
    },
    Reverse {
        event_id: String,
    },
}

impl Call {
    pub fn events(&self) -> Vec<&Value> {
        match self {
            Call::Event(e) => vec![e],
            Call::Events(es) | Call::Batch { events: es, .. } => es.iter().collect(),
            Call::Reverse { .. } => Vec::new(),
        }
    }

    /// The call as SQL a person can paste into psql to reproduce it.
    pub fn to_sql(&self) -> String {
        let q = |s: &str| s.replace('\'', "''");
        match self {
            Call::Event(e) => format!("SELECT possync.apply_event('{}');", q(&e.to_string())),
            Call::Events(es) => format!(
                "SELECT possync.apply_events('{}');",
                q(&Value::Array(es.clone()).to_string())
            ),
            Call::Batch {
                source,
                lsn,
                events,
            } => format!(
                "SELECT possync.apply_batch('{}', '{lsn}', '{}');",
                q(source),
                q(&Value::Array(events.clone()).to_string())
            ),
            Call::Reverse { event_id } => format!(
                "SELECT possync.reverse_event('{}', 'model test');",
                q(event_id)
            ),
        }
    }
}

/// What the model expects a call to answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// one outcome per event, in order
    Outcomes(Vec<Outcome>),
    /// apply_batch at or below the source's checkpoint
    Skipped,
    Reversal(Reversal),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub call: Call,
    pub expect: Expect,
}

/// Parts of the generator that can be turned off to look past a known divergence (MODEL_AVOID, comma
/// separated): `negative` (no outgoing move below what is on hand, so no incoming move lands on 0 from below),
/// `exchange_original` (exchanges name their sale on the lines only), `repeat_in_call` (no event id twice in
/// one call), `reversal_write_off` (no reversal that leaves value to write off), `reversal` (no reverse_event),
/// `sign` (no outgoing move whose rounding would leave a value of the other sign than on-hand), `half_return`
/// (no return of exactly half of what is left of a sale line).
#[derive(Debug, Clone, Default)]
pub struct Avoid {
    pub negative: bool,
    pub exchange_original: bool,
    pub repeat_in_call: bool,
    pub reversal_write_off: bool,
    pub reversal: bool,
    pub sign: bool,
    pub half_return: bool,
}

impl Avoid {
    pub fn parse(s: &str) -> Result<Avoid, String> {
        let mut a = Avoid::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "negative" => a.negative = true,
                "exchange_original" => a.exchange_original = true,
                "repeat_in_call" => a.repeat_in_call = true,
                "reversal_write_off" => a.reversal_write_off = true,
                "sign" => a.sign = true,
                "half_return" => a.half_return = true,
                "reversal" => a.reversal = true,
                other => {
                    return Err(format!(
                        "MODEL_AVOID: unknown part {other:?} (negative, exchange_original, repeat_in_call, reversal_write_off, reversal, sign, half_return)"
                    ))
                }
            }
        }
        Ok(a)
    }
}

#[derive(Debug, Clone)]
struct SoldLine {
    sku: String,
    qty: Decimal,
    unit_price: Decimal,
    /// returned against this sale so far (by this generator)
    returned: Decimal,
}

#[derive(Debug, Clone)]
struct Sold {
    event_id: String,
    location: String,
    lines: Vec<SoldLine>,
}

/// What the generator remembers of an event it made, once the model has judged it.
enum Made {
    Sale(Sold),
    Reversible(String),
    Transfer(String),
    Held(String),
    Other,
}

/// The seeded generator.
pub struct Generator {
    rng: StdRng,
    avoid: Avoid,
    serial: u64,
    step: u64,
    /// events put into calls so far (a reversal counts as one)
    pub events_made: usize,
    sales: Vec<Sold>,
    reversible: Vec<String>,
    reversed: Vec<String>,
    transfers: Vec<String>,
    held: Vec<String>,
    /// well-formed payloads sent, for duplicates and conflicts
    sent: Vec<Value>,
    /// the other half of a transfer, with the step from which it may be sent
    later: Vec<(u64, Value)>,
    lsn: [u64; 2],
    last_batch: [Option<(String, Vec<Value>)>; 2],
    tax_rate: Decimal,
    /// (location, register) → the next sequence number its till gives out
    next_number: std::collections::HashMap<(String, String), i64>,
}

const KEEP: usize = 300;

fn keep_recent<T>(v: &mut Vec<T>) {
    if v.len() > KEEP {
        v.drain(..v.len() - KEEP);
    }
}

impl Generator {
    pub fn new(seed: u64, avoid: Avoid) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            avoid,
            serial: 0,
            step: 0,
            events_made: 0,
            sales: Vec::new(),
            reversible: Vec::new(),
            reversed: Vec::new(),
            transfers: Vec::new(),
            held: Vec::new(),
            sent: Vec::new(),
            later: Vec::new(),
            lsn: [0x1_0000_0000, 0x2_0000_0000],
            last_batch: [None, None],
            tax_rate: dec(TAX_CODE.1),
            next_number: std::collections::HashMap::new(),
        }
    }

    /// The next call and what the model expects of it; the model has already applied it.
    pub fn next_step(&mut self, model: &mut Model) -> Result<Step, OutOfDomain> {
        self.step += 1;
        let r = self.rng.gen_range(0..100);
        if r < 4 && !self.avoid.reversal {
            if let Some(step) = self.reversal(model)? {
                self.events_made += 1;
                return Ok(step);
            }
        }
        if r >= 97 {
            let s = self.rng.gen_range(0..2);
            if let Some((lsn, events)) = self.last_batch[s].clone() {
                // the bridge re-sending a batch the ERP already committed
                return Ok(Step {
                    call: Call::Batch {
                        source: SOURCES[s].into(),
                        lsn,
                        events,
                    },
                    expect: Expect::Skipped,
                });
            }
        }
        let method = self.rng.gen_range(0..100);
        let n = if method < 35 {
            1
        } else if self.rng.gen_bool(0.05) {
            self.rng.gen_range(13..=30)
        } else {
            self.rng.gen_range(1..=12)
        };
        let mut events = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(n);
        let mut well_formed = Vec::with_capacity(n);
        for _ in 0..n {
            let (payload, made, ok) = self.next_event(model, &events, &well_formed);
            let outcome = model.apply(&payload)?;
            self.remember(made, &outcome);
            if ok {
                self.sent.push(payload.clone());
                if self.sent.len() > 2 * KEEP {
                    let i = self.rng.gen_range(0..self.sent.len());
                    self.sent.swap_remove(i);
                }
            }
            events.push(payload);
            outcomes.push(outcome);
            well_formed.push(ok);
        }
        self.events_made += n;
        let call = if method < 35 {
            Call::Event(events.remove(0))
        } else if method < 65 {
            Call::Events(events)
        } else {
            let s = self.rng.gen_range(0..2);
            self.lsn[s] += self.rng.gen_range(1..5000);
            let lsn = format!("{:X}/{:X}", self.lsn[s] >> 32, self.lsn[s] & 0xFFFF_FFFF);
            self.last_batch[s] = Some((lsn.clone(), events.clone()));
            Call::Batch {
                source: SOURCES[s].into(),
                lsn,
                events,
            }
        };
        Ok(Step {
            call,
            expect: Expect::Outcomes(outcomes),
        })
    }

    fn remember(&mut self, made: Made, outcome: &Outcome) {
        let applied = outcome.status == Status::Applied;
        match made {
            Made::Sale(s) if applied => {
                self.reversible.push(s.event_id.clone());
                self.sales.push(s);
                keep_recent(&mut self.sales);
                keep_recent(&mut self.reversible);
            }
            Made::Reversible(id) if applied => {
                self.reversible.push(id);
                keep_recent(&mut self.reversible);
            }
            Made::Transfer(id) => {
                self.transfers.push(id);
                keep_recent(&mut self.transfers);
            }
            Made::Held(id) if outcome.status == Status::Held => {
                self.held.push(id);
                keep_recent(&mut self.held);
            }
            _ => {}
        }
    }

    fn reversal(&mut self, model: &mut Model) -> Result<Option<Step>, OutOfDomain> {
        let r = self.rng.gen_range(0..100);
        let target = if r < 70 {
            let avoid = self.avoid.clone();
            let candidates: Vec<String> = self
                .reversible
                .iter()
                .filter(|id| model.state(id) == Some(State::Applied))
                .filter(|id| {
                    // per sku and location, what the reversal would leave
                    let mut after: Vec<((&str, &str), Decimal, Decimal)> = Vec::new();
                    for m in model.moves_of(id) {
                        let key = (m.sku.as_str(), m.location.as_str());
                        match after.iter_mut().find(|(k, _, _)| *k == key) {
                            Some((_, q, v)) => {
                                *q -= m.qty;
                                *v -= m.value;
                            }
                            None => {
                                let b = model.balance(key.0, key.1);
                                after.push((key, b.on_hand - m.qty, b.value - m.value));
                            }
                        }
                    }
                    after.iter().all(|((sku, loc), q, v)| {
                        // reversing goods that came in takes them out again: only if they are still there
                        let goes_negative = *q < Decimal::ZERO && *q < model.on_hand(sku, loc);
                        let stranded = (q.is_zero() && !v.is_zero())
                            || (*q > Decimal::ZERO && *v < Decimal::ZERO)
                            || (*q < Decimal::ZERO && *v > Decimal::ZERO);
                        !(avoid.negative && goes_negative || avoid.reversal_write_off && stranded)
                    })
                })
                .cloned()
                .collect();
            candidates.choose(&mut self.rng).cloned()
        } else if r < 85 {
            self.transfers.choose(&mut self.rng).cloned()
        } else if r < 93 {
            self.reversed.choose(&mut self.rng).cloned()
        } else {
            self.held.choose(&mut self.rng).cloned()
        };
        let Some(event_id) = target else {
            return Ok(None);
        };
        let expect = model.reverse(&event_id)?;
        if expect == Reversal::Applied {
            self.reversed.push(event_id.clone());
            self.reversible.retain(|id| id != &event_id);
            self.sales.retain(|s| s.event_id != event_id);
        }
        Ok(Some(Step {
            call: Call::Reverse { event_id },
            expect: Expect::Reversal(expect),
        }))
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}-{:06}", self.serial)
    }

    /// A decimal as the contract allows it: a JSON string, a JSON number, now and then in exponent form.
    fn num(&mut self, d: Decimal) -> Value {
        let text = match self.rng.gen_range(0..100) {
            0..=49 => return Value::String(d.to_string()),
            50..=94 => d.to_string(),
            _ => format!("{}e-{}", d.mantissa(), d.scale()),
        };
        serde_json::from_str(&text).unwrap_or(Value::String(d.to_string()))
    }

    fn pick_location(&mut self) -> String {
        LOCATIONS
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("S1")
            .to_string()
    }

    fn pick_skus(&mut self, n: usize) -> Vec<String> {
        let mut skus: Vec<&str> = ITEMS.iter().map(|i| i.0).collect();
        skus.shuffle(&mut self.rng);
        skus.into_iter().take(n).map(str::to_string).collect()
    }

    fn header(&mut self, id: &str, kind: &str, location: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("event_id".into(), json!(id));
        m.insert("kind".into(), json!(kind));
        m.insert("location".into(), json!(location));
        // mostly one week; some dates in other months of the ledgers' partition window, and some anywhere in
        // the contract's years 0001-9999 (kept in the default partitions): the books must not depend on where
        // the rows are kept
        let day = self.rng.gen_range(20..=28);
        let date = match self.rng.gen_range(0..100) {
            0..=84 => format!("2026-11-{day}"),
            85..=94 => format!(
                "{}-{:02}-{day}",
                self.rng.gen_range(2024..=2027),
                self.rng.gen_range(1..=12)
            ),
            _ => format!(
                "{:04}-{:02}-{day}",
                self.rng.gen_range(1..=9999),
                self.rng.gen_range(1..=12)
            ),
        };
        m.insert("business_date".into(), json!(date));
        if self.rng.gen_bool(0.5) {
            m.insert(
                "occurred_at".into(),
                json!(format!(
                    "2026-11-{day}T{:02}:{:02}:00Z",
                    self.rng.gen_range(8..22),
                    self.rng.gen_range(0..60)
                )),
            );
        }
        if self.rng.gen_bool(0.3) {
            m.insert("currency".into(), json!("USD"));
        }
        m
    }

    /// A quantity: mostly a few units, sometimes fractional (up to 4 decimals), rarely large.
    fn qty(&mut self) -> Decimal {
        let r = self.rng.gen_range(0..100);
        let (m, s) = match r {
            0..=61 => (self.rng.gen_range(1..=5), 0),
            62..=81 => (self.rng.gen_range(1..=50_000), 4),
            82..=91 => (self.rng.gen_range(1..=999), 2),
            92..=97 => (self.rng.gen_range(6..=200), 0),
            _ => (self.rng.gen_range(1_000_000..=9_999_999_999i64), 4),
        };
        Decimal::new(m, s).normalize()
    }

    /// A quantity of at most `max` (> 0), with up to 4 decimals.
    fn qty_up_to(&mut self, max: Decimal) -> Decimal {
        if self.rng.gen_bool(0.25) {
            return max;
        }
        let f = Decimal::new(self.rng.gen_range(1..=10_000), 4);
        let q = (max * f).round_dp_with_strategy(4, rust_decimal::RoundingStrategy::ToZero);
        if q <= Decimal::ZERO {
            max
        } else {
            q.normalize()
        }
    }

    fn unit_cost(&mut self) -> Decimal {
        let r = self.rng.gen_range(0..100);
        let (m, s) = match r {
            0..=54 => (self.rng.gen_range(50..=10_000), 2),
            55..=69 => (self.rng.gen_range(1..=10_000), 4),
            70..=77 => (self.rng.gen_range(1..=99), 4),
            78..=87 => (self.rng.gen_range(100_000..=10_000_000), 2),
            _ => (self.rng.gen_range(1..=999_999), 3),
        };
        Decimal::new(m, s).normalize()
    }

    fn price(&mut self) -> Decimal {
        if self.rng.gen_bool(0.05) {
            Decimal::ZERO
        } else {
            Decimal::new(self.rng.gen_range(1..=50_000), 2)
        }
    }

    /// A till line: the json, and what it is owed (net + tax).
    fn till_line(
        &mut self,
        sku: &str,
        qty: Decimal,
        unit_price: Decimal,
        returned: bool,
    ) -> (Map<String, Value>, Decimal) {
        let gross = qty * unit_price;
        let discount = if !returned && self.rng.gen_bool(0.2) {
            cents(gross * Decimal::new(self.rng.gen_range(0..30), 2))
        } else {
            Decimal::ZERO
        };
        let net = cents(gross - discount);
        let mut l = Map::new();
        l.insert("sku".into(), json!(sku));
        l.insert("qty".into(), self.num(qty));
        l.insert("unit_price".into(), self.num(unit_price));
        if !discount.is_zero() {
            l.insert("discount".into(), self.num(discount));
        }
        let tax = if self.rng.gen_bool(0.8) {
            let t = cents(net * self.tax_rate);
            l.insert("tax_code".into(), json!(TAX_CODE.0));
            t
        } else {
            Decimal::ZERO
        };
        l.insert("tax".into(), self.num(tax));
        (l, net + tax)
    }

    /// Tenders for what is owed (negative: a refund): mostly exact, one or two tenders, sometimes off.
    fn tenders(&mut self, owed: Decimal) -> Value {
        let mut amount = owed;
        if self.rng.gen_bool(0.12) {
            let off = Decimal::new(self.rng.gen_range(1..=500), 2);
            amount += if self.rng.gen_bool(0.5) { off } else { -off };
        }
        if amount.is_zero() && self.rng.gen_bool(0.5) {
            return json!([]);
        }
        let types = ["cash", "card", "gift"];
        let first = types.choose(&mut self.rng).copied().unwrap_or("cash");
        if self.rng.gen_bool(0.25) && amount.abs() > Decimal::new(1, 2) {
            let part = cents(amount * Decimal::new(self.rng.gen_range(1..100), 2));
            let second = types.choose(&mut self.rng).copied().unwrap_or("card");
            json!([{"type": first, "amount": self.num(part)},
                   {"type": second, "amount": self.num(amount - part)}])
        } else {
            json!([{"type": first, "amount": self.num(amount)}])
        }
    }

    /// A quantity leaving (sku, location): sometimes exactly what is there; never more with `avoid.negative`.
    fn outgoing_qty(&mut self, model: &Model, sku: &str, loc: &str) -> Option<Decimal> {
        let on_hand = model.on_hand(sku, loc);
        let qty = if self.avoid.negative {
            if on_hand <= Decimal::ZERO {
                return None;
            }
            self.qty_up_to(on_hand)
        } else if on_hand > Decimal::ZERO && self.rng.gen_bool(0.12) {
            on_hand
        } else {
            self.qty()
        };
        if self.avoid.sign && flips_sign(model, sku, loc, qty) {
            // take all that is there instead, or nothing
            return (on_hand > Decimal::ZERO && !flips_sign(model, sku, loc, on_hand))
                .then_some(on_hand);
        }
        Some(qty)
    }

    fn next_event(
        &mut self,
        model: &Model,
        in_call: &[Value],
        well_formed: &[bool],
    ) -> (Value, Made, bool) {
        // the other half of a transfer, when its time has come
        if let Some(i) = self.later.iter().position(|(due, _)| *due <= self.step) {
            if self.rng.gen_bool(0.6) {
                let (_, v) = self.later.remove(i);
                let id = v["event_id"].as_str().unwrap_or_default().to_string();
                return (v, Made::Transfer(id), true);
            }
        }
        let r = self.rng.gen_range(0..1000);
        match r {
            0..=259 => self.sale(model),
            260..=349 => self.return_event(model, false),
            350..=419 => self.return_event(model, true),
            420..=439 => self.return_at_average(model),
            440..=559 => self.receipt(model),
            560..=619 => self.adjustment(model),
            620..=679 => self.count(model),
            680..=749 => self.transfer(model),
            750..=779 => self.fulfillment(model),
            780..=789 => self.day_close(),
            790..=809 => (self.malformed(), Made::Other, false),
            810..=824 => self.unknown_master_data(),
            825..=844 => self.void(),
            845..=909 => self.repeat(in_call, well_formed, false),
            _ => self.repeat(in_call, well_formed, true),
        }
    }

    fn sale(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("SA");
        let n = self.rng.gen_range(1..=4);
        let mut lines = Vec::new();
        let mut sold = Vec::new();
        let mut owed = Decimal::ZERO;
        for sku in self.pick_skus(n) {
            let Some(qty) = self.outgoing_qty(model, &sku, &loc) else {
                continue;
            };
            let price = self.price();
            let (l, o) = self.till_line(&sku, qty, price, false);
            lines.push(Value::Object(l));
            owed += o;
            sold.push(SoldLine {
                sku,
                qty,
                unit_price: price,
                returned: Decimal::ZERO,
            });
        }
        if lines.is_empty() {
            // nothing on hand to sell without going negative: receive instead
            return self.receipt(model);
        }
        let mut m = self.header(&id, "sale", &loc);
        m.insert("register".into(), json!("1"));
        if self.rng.gen_bool(0.5) {
            self.number(&mut m, &loc);
        }
        m.insert("lines".into(), Value::Array(lines));
        m.insert("tenders".into(), self.tenders(owed));
        let s = Sold {
            event_id: id,
            location: loc,
            lines: sold,
        };
        (Value::Object(m), Made::Sale(s), true)
    }

    /// Returned lines against an earlier sale, naming it on the event, on the lines, on both (the line's id
    /// differing from the event's), or not at all. Returns (lines, owed, event-level original).
    fn returned_lines(
        &mut self,
        model: &Model,
        loc_out: &mut String,
        exchange: bool,
    ) -> Option<(Vec<Value>, Decimal, Option<String>)> {
        let open: Vec<usize> = (0..self.sales.len())
            .filter(|&i| self.sales[i].lines.iter().any(|l| l.returned < l.qty))
            .collect();
        let &i = open.choose(&mut self.rng)?;
        let sale = self.sales[i].clone();
        let decoy = self
            .sales
            .choose(&mut self.rng)
            .map(|s| s.event_id.clone())
            .filter(|d| d != &sale.event_id);
        let loc = if self.rng.gen_bool(0.9) {
            sale.location.clone()
        } else {
            self.pick_location()
        };
        // how the original sale is named: 0 event, 1 lines, 2 both (line wins), 3 none
        let mut mode = match self.rng.gen_range(0..100) {
            0..=44 => 0,
            45..=74 => 1,
            75..=84 => 2,
            _ => 3,
        };
        if exchange && self.avoid.exchange_original && mode != 3 {
            mode = 1;
        }
        let event_original = match mode {
            0 => Some(sale.event_id.clone()),
            2 => decoy.or_else(|| Some("NO-SUCH-SALE".into())),
            _ => None,
        };
        let mut lines = Vec::new();
        let mut owed = Decimal::ZERO;
        for (j, l) in sale.lines.iter().enumerate() {
            let left = l.qty - l.returned;
            if left <= Decimal::ZERO || (!lines.is_empty() && self.rng.gen_bool(0.4)) {
                continue;
            }
            let on_hand = model.on_hand(&l.sku, &loc);
            let qty = if on_hand < Decimal::ZERO && -on_hand <= left && self.rng.gen_bool(0.3) {
                // lands on exactly 0 at a fixed cost
                -on_hand
            } else if self.rng.gen_bool(0.45) {
                left
            } else if !self.avoid.half_return
                && self.rng.gen_bool(0.3)
                && (left / Decimal::TWO).scale() <= 4
            {
                // half of what is left: of 3 sold, 1.5 come back at value ÷ 3 × 1.5, an exact half cent
                // when the sale's value is an odd number of cents
                (left / Decimal::TWO).normalize()
            } else {
                self.qty_up_to(left)
            };
            let (mut line, o) = self.till_line(&l.sku, qty, l.unit_price, true);
            if exchange || self.rng.gen_bool(0.2) {
                line.insert("returned".into(), json!(true));
            }
            if matches!(mode, 1 | 2) {
                line.insert("original_event_id".into(), json!(sale.event_id));
            }
            lines.push(Value::Object(line));
            owed -= o;
            if mode != 3 {
                self.sales[i].lines[j].returned += qty;
            }
        }
        *loc_out = loc;
        Some((lines, owed, event_original))
    }

    fn return_event(&mut self, model: &Model, exchange: bool) -> (Value, Made, bool) {
        let mut loc = String::new();
        let Some((mut lines, mut owed, original)) = self.returned_lines(model, &mut loc, exchange)
        else {
            return self.sale(model);
        };
        let kind = if exchange { "exchange" } else { "return" };
        let id = self.next_id(if exchange { "EX" } else { "RT" });
        if exchange {
            let n = self.rng.gen_range(1..=2);
            for sku in self.pick_skus(n) {
                let Some(qty) = self.outgoing_qty(model, &sku, &loc) else {
                    continue;
                };
                let price = self.price();
                let (l, o) = self.till_line(&sku, qty, price, false);
                let at = self.rng.gen_range(0..=lines.len());
                lines.insert(at, Value::Object(l));
                owed += o;
            }
        }
        let mut m = self.header(&id, kind, &loc);
        if let Some(o) = original {
            m.insert("original_event_id".into(), json!(o));
        }
        m.insert("lines".into(), Value::Array(lines));
        m.insert("tenders".into(), self.tenders(owed));
        (Value::Object(m), Made::Reversible(id), true)
    }

    /// A return without its sale (or naming one the ERP never saw): it comes back at the average, sometimes
    /// landing a negative on-hand on exactly 0.
    fn return_at_average(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let sku = self.pick_skus(1).pop().unwrap_or_else(|| "A".into());
        let on_hand = model.on_hand(&sku, &loc);
        let qty = if on_hand < Decimal::ZERO && self.rng.gen_bool(0.4) {
            -on_hand
        } else {
            self.qty()
        };
        let price = self.price();
        let id = self.next_id("RA");
        let (line, o) = self.till_line(&sku, qty, price, true);
        let mut m = self.header(&id, "return", &loc);
        if self.rng.gen_bool(0.3) {
            m.insert(
                "original_event_id".into(),
                json!(format!("LEGACY-{}", self.serial)),
            );
        }
        m.insert("lines".into(), json!([line]));
        m.insert("tenders".into(), self.tenders(-o));
        (Value::Object(m), Made::Reversible(id), true)
    }

    fn receipt(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("RC");
        let n = self.rng.gen_range(1..=3);
        let mut lines = Vec::new();
        for sku in self.pick_skus(n) {
            let on_hand = model.on_hand(&sku, &loc);
            let qty = if on_hand < Decimal::ZERO && self.rng.gen_bool(0.2) {
                -on_hand
            } else {
                self.qty()
            };
            let cost = self.unit_cost();
            lines.push(json!({"sku": sku, "qty": self.num(qty), "unit_cost": self.num(cost)}));
        }
        let mut m = self.header(&id, "receipt", &loc);
        m.insert("lines".into(), Value::Array(lines));
        (Value::Object(m), Made::Reversible(id), true)
    }

    fn adjustment(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("AD");
        let n = self.rng.gen_range(1..=2);
        let mut lines = Vec::new();
        for sku in self.pick_skus(n) {
            let on_hand = model.on_hand(&sku, &loc);
            let qty = if !on_hand.is_zero()
                && self.rng.gen_bool(0.2)
                && !(self.avoid.negative && on_hand < Decimal::ZERO)
            {
                -on_hand
            } else if self.rng.gen_bool(0.5) {
                self.qty()
            } else if self.avoid.negative {
                if on_hand <= Decimal::ZERO {
                    continue;
                }
                -self.qty_up_to(on_hand)
            } else {
                -self.qty()
            };
            let qty =
                if qty < Decimal::ZERO && self.avoid.sign && flips_sign(model, &sku, &loc, -qty) {
                    if on_hand <= Decimal::ZERO {
                        continue;
                    }
                    -on_hand
                } else {
                    qty
                };
            lines.push(json!({"sku": sku, "qty": self.num(qty)}));
        }
        if lines.is_empty() {
            return self.receipt(model);
        }
        let reason = if self.rng.gen_bool(0.5) {
            "damaged"
        } else {
            "found"
        };
        let mut m = self.header(&id, "adjustment", &loc);
        m.insert("reason".into(), json!(reason));
        m.insert("lines".into(), Value::Array(lines));
        (Value::Object(m), Made::Reversible(id), true)
    }

    fn count(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("CT");
        let n = self.rng.gen_range(1..=3);
        let mut lines = Vec::new();
        for sku in self.pick_skus(n) {
            let on_hand = model.on_hand(&sku, &loc);
            let counted = match self.rng.gen_range(0..100) {
                0..=34 => Decimal::ZERO,
                35..=69 => {
                    let near = on_hand + Decimal::from(self.rng.gen_range(-2..=2));
                    near.max(Decimal::ZERO)
                }
                _ => self.qty(),
            };
            let down = on_hand - counted;
            let counted =
                if down > Decimal::ZERO && self.avoid.sign && flips_sign(model, &sku, &loc, down) {
                    Decimal::ZERO
                } else {
                    counted
                };
            lines.push(json!({"sku": sku, "counted_qty": self.num(counted)}));
        }
        let mut m = self.header(&id, "count", &loc);
        m.insert("lines".into(), Value::Array(lines));
        (Value::Object(m), Made::Other, true)
    }

    /// A transfer between two locations; its transfer_in usually follows, but now and then arrives first
    /// (held until the transfer_out comes).
    fn transfer(&mut self, model: &Model) -> (Value, Made, bool) {
        let from = self.pick_location();
        let to = loop {
            let l = self.pick_location();
            if l != from {
                break l;
            }
        };
        let tid = self.next_id("T");
        let n = self.rng.gen_range(1..=3);
        let mut out_lines = Vec::new();
        let mut in_lines = Vec::new();
        for sku in self.pick_skus(n) {
            let Some(qty) = self.outgoing_qty(model, &sku, &from) else {
                continue;
            };
            out_lines.push(json!({"sku": sku, "qty": self.num(qty)}));
            in_lines.push(json!({"sku": sku, "qty": self.num(qty)}));
        }
        if out_lines.is_empty() {
            return self.receipt(model);
        }
        let out_id = format!("{tid}-OUT");
        let in_id = format!("{tid}-IN");
        let mut out = self.header(&out_id, "transfer_out", &from);
        out.insert("transfer_id".into(), json!(tid));
        out.insert("to_location".into(), json!(to));
        out.insert("lines".into(), Value::Array(out_lines));
        let mut inn = self.header(&in_id, "transfer_in", &to);
        inn.insert("transfer_id".into(), json!(tid));
        inn.insert("from_location".into(), json!(from));
        inn.insert("lines".into(), Value::Array(in_lines));
        let due = self.step + self.rng.gen_range(0..8);
        // with avoid.negative the transfer_out must leave now, while its quantities are on hand
        if self.avoid.negative || self.rng.gen_bool(0.7) {
            self.later.push((due, Value::Object(inn)));
            (Value::Object(out), Made::Transfer(out_id), true)
        } else {
            self.later.push((due, Value::Object(out)));
            (Value::Object(inn), Made::Transfer(in_id), true)
        }
    }

    fn fulfillment(&mut self, model: &Model) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("FF");
        let n = self.rng.gen_range(1..=2);
        let mut lines = Vec::new();
        for sku in self.pick_skus(n) {
            let Some(qty) = self.outgoing_qty(model, &sku, &loc) else {
                continue;
            };
            let price = self.price();
            let (l, _) = self.till_line(&sku, qty, price, false);
            lines.push(Value::Object(l));
        }
        if lines.is_empty() {
            return self.receipt(model);
        }
        let mut m = self.header(&id, "fulfillment", &loc);
        m.insert("order_id".into(), json!(format!("O-{}", self.serial)));
        m.insert("lines".into(), Value::Array(lines));
        (Value::Object(m), Made::Reversible(id), true)
    }

    fn day_close(&mut self) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("DC");
        let mut m = self.header(&id, "day_close", &loc);
        m.insert("register".into(), json!(format!("Z{}", self.serial)));
        m.insert(
            "totals".into(),
            json!({"net_sales": "0", "tax": "0", "tenders": {}, "transaction_count": 0, "last_sequence": 0}),
        );
        (Value::Object(m), Made::Other, true)
    }

    /// Gives a till event the next sequence number of one of the location's registers (now and then skipping a
    /// few, as a till whose transactions were lost), and the one source every numbered event names.
    fn number(&mut self, m: &mut Map<String, Value>, loc: &str) {
        let register = if self.rng.gen_bool(0.5) { "1" } else { "2" };
        let next = self
            .next_number
            .entry((loc.to_string(), register.to_string()))
            .or_insert(1);
        if self.rng.gen_bool(0.03) {
            *next += 1 + self.rng.gen_range(0..3);
        }
        let sequence = *next;
        *next += 1;
        m.insert("source".into(), json!(TILL_SOURCE));
        m.insert("register".into(), json!(register));
        m.insert("sequence".into(), self.num(Decimal::from(sequence)));
    }

    /// A cancelled till transaction: it takes the register's next number and posts nothing, though it may carry
    /// the basket that was cancelled (which must not post).
    fn void(&mut self) -> (Value, Made, bool) {
        let loc = self.pick_location();
        let id = self.next_id("VO");
        let mut m = self.header(&id, "void", &loc);
        self.number(&mut m, &loc);
        if self.rng.gen_bool(0.5) {
            m.insert("reason".into(), json!("customer changed their mind"));
        }
        if self.rng.gen_bool(0.4) {
            let sku = self.pick_skus(1).pop().unwrap_or_else(|| "A".into());
            let qty = self.qty();
            let price = self.price();
            let (l, o) = self.till_line(&sku, qty, price, false);
            m.insert("lines".into(), json!([l]));
            m.insert("tenders".into(), self.tenders(o));
        }
        (Value::Object(m), Made::Other, true)
    }

    /// An event that is malformed beyond doubt: an unknown kind, an impossible date, a quantity that is no
    /// number, no location, no lines, a receipt line without its cost, a transfer without its id.
    fn malformed(&mut self) -> Value {
        let id = self.next_id("BAD");
        let loc = self.pick_location();
        let mut m = self.header(&id, "sale", &loc);
        m.insert(
            "lines".into(),
            json!([{"sku": "A", "qty": "1", "unit_price": "2.00", "tax": "0"}]),
        );
        m.insert(
            "tenders".into(),
            json!([{"type": "cash", "amount": "2.00"}]),
        );
        match self.rng.gen_range(0..9) {
            7 => {
                // a void that does not say which number it used up
                m.insert("kind".into(), json!("void"));
                m.insert("register".into(), json!("1"));
            }
            8 => {
                m.insert("kind".into(), json!("void"));
                m.insert("sequence".into(), json!(1));
            }
            0 => {
                m.insert("kind".into(), json!("teleport"));
            }
            1 => {
                m.insert("business_date".into(), json!("2026-02-30"));
            }
            2 => {
                m.insert(
                    "lines".into(),
                    json!([{"sku": "A", "qty": "two", "unit_price": "2.00"}]),
                );
            }
            3 => {
                m.remove("location");
            }
            4 => {
                m.remove("lines");
            }
            5 => {
                m.insert("kind".into(), json!("receipt"));
                m.insert("lines".into(), json!([{"sku": "A", "qty": "1"}]));
            }
            _ => {
                m.insert("kind".into(), json!("transfer_out"));
                m.insert("to_location".into(), json!("S2"));
                m.insert("lines".into(), json!([{"sku": "A", "qty": "1"}]));
            }
        }
        Value::Object(m)
    }

    /// An event naming a sku or a location the ERP does not know: held.
    fn unknown_master_data(&mut self) -> (Value, Made, bool) {
        let id = self.next_id("UK");
        let v = if self.rng.gen_bool(0.5) {
            let loc = self.pick_location();
            let mut m = self.header(&id, "sale", &loc);
            m.insert(
                "lines".into(),
                json!([{"sku": UNKNOWN_SKU, "qty": "1", "unit_price": "3.00", "tax": "0"},
                       {"sku": "A", "qty": "1", "unit_price": "3.00", "tax": "0"}]),
            );
            m.insert(
                "tenders".into(),
                json!([{"type": "cash", "amount": "6.00"}]),
            );
            m
        } else {
            let mut m = self.header(&id, "receipt", UNKNOWN_LOCATION);
            m.insert(
                "lines".into(),
                json!([{"sku": "A", "qty": "2", "unit_cost": "1.50"}]),
            );
            m
        };
        (Value::Object(v), Made::Held(id), true)
    }

    /// An event id again: the same payload (a duplicate) or another one (a conflict), taken from this call
    /// (an id twice in one array) or from earlier calls.
    fn repeat(
        &mut self,
        in_call: &[Value],
        well_formed: &[bool],
        conflict: bool,
    ) -> (Value, Made, bool) {
        let here: Vec<&Value> = in_call
            .iter()
            .zip(well_formed)
            .filter(|(_, ok)| **ok)
            .map(|(v, _)| v)
            .collect();
        let from_call = !self.avoid.repeat_in_call && !here.is_empty() && self.rng.gen_bool(0.5);
        let picked = if from_call {
            here.choose(&mut self.rng).map(|v| (*v).clone())
        } else {
            self.sent.choose(&mut self.rng).cloned()
        };
        let Some(mut v) = picked else {
            return (self.malformed(), Made::Other, false);
        };
        if self.avoid.repeat_in_call {
            let id = &v["event_id"];
            if in_call.iter().any(|e| &e["event_id"] == id) {
                return (self.malformed(), Made::Other, false);
            }
        }
        if conflict {
            self.alter(&mut v);
        }
        (v, Made::Other, true)
    }

    /// Changes a payload so that it is another, still well-formed, payload under the same id.
    fn alter(&mut self, v: &mut Value) {
        let line = v.get_mut("lines").and_then(|l| l.get_mut(0));
        if let Some(Value::Object(l)) = line {
            for key in ["qty", "counted_qty"] {
                if let Some(q) = l.get(key).and_then(super::event::number) {
                    let bumped = q.abs() + Decimal::ONE;
                    let bumped = if q < Decimal::ZERO { -bumped } else { bumped };
                    l.insert(key.into(), Value::String(bumped.to_string()));
                    return;
                }
            }
        }
        if let Value::Object(m) = v {
            let note = format!("changed {}", self.rng.gen_range(0..1_000_000));
            m.insert("memo".into(), json!(note));
        }
    }
}

/// True when `qty` units leaving (sku, location) would leave a value of the other sign than on-hand.
fn flips_sign(model: &Model, sku: &str, loc: &str, qty: Decimal) -> bool {
    let b = model.balance(sku, loc);
    let on_hand = b.on_hand - qty;
    let value = b.value - model.outgoing_value(sku, loc, qty);
    (on_hand > Decimal::ZERO && value < Decimal::ZERO)
        || (on_hand < Decimal::ZERO && value > Decimal::ZERO)
}
