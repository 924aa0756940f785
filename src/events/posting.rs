//! The posting rules: what each event kind does to stock and to the general ledger.
//!
//! A rule works on a [`Draft`]: copies of the balances it touches, the moves it makes and a journal by role.
//! Nothing reaches the batch until the whole event has posted, so an event that must wait (a missing account)
//! or is refused (negative stock under the reject setting) leaves no trace but its exception.

use std::collections::BTreeMap;

use possync_events::{Event, EventKind, Line};
use rust_decimal::Decimal;

use super::context::Batch;
use super::facts::{Effect, Raised, TransferState};
use crate::ledger::{JournalDraft, Role};
use crate::stock::balances::Key;
use crate::stock::{cents, cents_of_share, Balance, StockMove};

/// One event's posting before it is committed to the batch.
#[derive(Debug, Default)]
pub struct Draft {
    pub balances: BTreeMap<Key, Balance>,
    pub moves: Vec<(Key, StockMove)>,
    pub journal: JournalDraft,
    pub raised: Vec<Raised>,
    pub effects: Vec<Effect>,
}

impl Draft {
    fn balance(&mut self, batch: &Batch<'_, '_>, key: &Key) -> &mut Balance {
        self.balances
            .entry(key.clone())
            .or_insert_with(|| batch.balances.get(key).clone())
    }

    /// Goods leave at the moving average; returns the move's (positive) value. Leaving on-hand below 0 with
    /// value still above it (the average lagging what the shelf was worth) writes that value off, as an
    /// incoming move does.
    fn issue(&mut self, batch: &Batch<'_, '_>, key: Key, qty: Decimal) -> Decimal {
        let standard = batch.standard_cost(&key.0);
        let m = self.balance(batch, &key).issue(qty, standard);
        let value = -m.value;
        self.moves.push((key.clone(), m));
        self.write_off_stranded(batch, key);
        value
    }

    /// Value left stranded at `key` (on-hand exactly 0 with value, or value of the other sign than on-hand) is
    /// written off against cogs in this event's journal, as a move of quantity 0.
    fn write_off_stranded(&mut self, batch: &Batch<'_, '_>, key: Key) {
        let stranded = self.balance(batch, &key).stranded();
        if stranded.is_zero() {
            return;
        }
        let m = self.balance(batch, &key).write_off(stranded);
        self.moves.push((key.clone(), m));
        let (sku, loc) = &key;
        let class = batch.class(sku);
        // signed: a negative amount debits inventory and credits cogs
        self.journal.debit(Role::Cogs, loc, class, stranded);
        self.journal.credit(Role::Inventory, loc, class, stranded);
    }

    /// Goods arrive carrying `value`; returns it. Value the arrival leaves stranded (on-hand exactly 0, or a
    /// value of the other sign than on-hand) is written off against cogs in the same journal.
    fn receive(
        &mut self,
        batch: &Batch<'_, '_>,
        key: Key,
        qty: Decimal,
        value: Decimal,
        unit_cost: Decimal,
    ) -> Decimal {
        let m = self
            .balance(batch, &key)
            .receive_at_value(qty, value, unit_cost);
        self.moves.push((key.clone(), m));
        self.write_off_stranded(batch, key);
        value
    }

    /// Goods arrive at the location's current cost (average, else standard); landing on exactly 0 on-hand they
    /// take the whole remaining value.
    fn receive_at_current_cost(
        &mut self,
        batch: &Batch<'_, '_>,
        key: Key,
        qty: Decimal,
    ) -> Decimal {
        let standard = batch.standard_cost(&key.0);
        let b = self.balance(batch, &key);
        let cost = b.current_cost(standard);
        let value = b.incoming_value(qty, standard);
        self.receive(batch, key, qty, value, cost)
    }
}

fn key(sku: &str, location: &str) -> Key {
    (sku.to_string(), location.to_string())
}

impl Batch<'_, '_> {
    /// Applies the rules of the event's kind. Err means the event waits (held) with these reasons.
    pub fn draft(&mut self, ev: &Event) -> Result<Draft, Vec<Raised>> {
        let mut d = Draft::default();
        match ev.kind {
            EventKind::Sale | EventKind::Return | EventKind::Exchange => self.post_till(ev, &mut d),
            EventKind::Fulfillment => self.post_fulfillment(ev, &mut d),
            EventKind::Receipt => self.post_receipt(ev, &mut d),
            EventKind::TransferOut => self.post_transfer_out(ev, &mut d)?,
            EventKind::TransferIn => self.post_transfer_in(ev, &mut d)?,
            EventKind::Adjustment => self.post_adjustment(ev, &mut d),
            EventKind::Count => self.post_count(ev, &mut d),
            EventKind::DayClose | EventKind::Void => {}
        }
        if !d.journal.imbalance().is_zero() {
            crate::statements::internal(&format!(
                "posting rules for {} left a journal out of balance by {}",
                ev.kind,
                d.journal.imbalance()
            ));
        }
        Ok(d)
    }

    /// Sales, returns and exchanges: goods by line, money by tender, the difference to over/short.
    fn post_till(&mut self, ev: &Event, d: &mut Draft) {
        let loc = ev.location.as_str();
        let mut owed = Decimal::ZERO;
        for line in &ev.lines {
            let net = cents(line.net());
            let class = self.class(&line.sku).map(str::to_string);
            let class = class.as_deref();
            if line.returned {
                let cost = self.return_value(d, line, loc);
                d.journal.debit(Role::Returns, loc, class, net);
                d.journal.debit(Role::TaxPayable, loc, class, line.tax);
                d.journal.debit(Role::Inventory, loc, class, cost);
                d.journal.credit(Role::Cogs, loc, class, cost);
                owed -= net + line.tax;
            } else {
                let cost = d.issue(self, key(&line.sku, loc), line.qty);
                d.journal.credit(Role::Revenue, loc, class, net);
                d.journal.credit(Role::TaxPayable, loc, class, line.tax);
                d.journal.debit(Role::Cogs, loc, class, cost);
                d.journal.credit(Role::Inventory, loc, class, cost);
                owed += net + line.tax;
            }
        }
        let mut paid = Decimal::ZERO;
        for t in &ev.tenders {
            d.journal
                .debit(Role::Tender(t.tender_type.clone()), loc, None, t.amount);
            paid += t.amount;
        }
        let over = paid - owed;
        if !over.is_zero() {
            d.journal.credit(Role::OverShort, loc, None, over);
            d.raised.push(Raised::new(
                "tender_mismatch",
                format!("tenders total {paid} but the lines come to {owed}; {over} was posted to over_short"),
                Some(over),
            ));
        }
    }

    /// A returned line comes back at the original sale's cost when it is known, else at the current cost.
    fn return_value(&mut self, d: &mut Draft, line: &Line, loc: &str) -> Decimal {
        let k = key(&line.sku, loc);
        if let Some(orig) = line.original_event_id.as_deref() {
            if let Some((sold_qty, sold_value)) = self.sale_cost(orig, &line.sku) {
                if !sold_qty.is_zero() {
                    let unit = sold_value / sold_qty;
                    // the original move's value × returned qty ÷ its qty, rounded once (dividing first would
                    // round an exact half cent away)
                    let value = if line.qty == sold_qty {
                        sold_value
                    } else {
                        cents_of_share(sold_value, line.qty, sold_qty)
                    };
                    return d.receive(self, k, line.qty, value, unit);
                }
            }
        }
        d.receive_at_current_cost(self, k, line.qty)
    }

    /// An online order shipped from this location: paid earlier (customer deposit), consumes its reservation.
    fn post_fulfillment(&mut self, ev: &Event, d: &mut Draft) {
        let loc = ev.location.as_str();
        for line in &ev.lines {
            let net = cents(line.net());
            let class = self.class(&line.sku).map(str::to_string);
            let class = class.as_deref();
            let k = key(&line.sku, loc);
            let cost = d.issue(self, k.clone(), line.qty);
            d.journal
                .debit(Role::CustomerDeposits, loc, class, net + line.tax);
            d.journal.credit(Role::Revenue, loc, class, net);
            d.journal.credit(Role::TaxPayable, loc, class, line.tax);
            d.journal.debit(Role::Cogs, loc, class, cost);
            d.journal.credit(Role::Inventory, loc, class, cost);
            if let Some(rid) = &line.reservation_id {
                match self.reservations.get(rid) {
                    Some(r) if r.active && r.key == k => {
                        let qty = r.qty;
                        let b = d.balance(self, &k);
                        b.reserved = (b.reserved - qty).max(Decimal::ZERO);
                        d.effects.push(Effect::ReservationConsumed {
                            reservation_id: rid.clone(),
                            key: k.clone(),
                            qty,
                        });
                    }
                    Some(r) if !r.active => d.raised.push(Raised::new(
                        "reservation_not_active",
                        format!("reservation {rid} is no longer active; the goods shipped anyway"),
                        None,
                    )),
                    Some(_) => d.raised.push(Raised::new(
                        "reservation_mismatch",
                        format!(
                            "reservation {rid} is for another sku or location than line sku {}",
                            line.sku
                        ),
                        None,
                    )),
                    None => d.raised.push(Raised::new(
                        "reservation_not_found",
                        format!("reservation {rid} does not exist; the goods shipped anyway"),
                        None,
                    )),
                }
            }
        }
    }

    /// Goods in at their invoice cost, owed to the supplier until invoiced (GRNI).
    fn post_receipt(&mut self, ev: &Event, d: &mut Draft) {
        let loc = ev.location.as_str();
        for line in &ev.lines {
            let unit = line.unit_cost.unwrap_or_default();
            let class = self.class(&line.sku).map(str::to_string);
            let value = d.receive(
                self,
                key(&line.sku, loc),
                line.qty,
                cents(line.qty * unit),
                unit,
            );
            d.journal
                .debit(Role::Inventory, loc, class.as_deref(), value);
            d.journal.credit(Role::Grni, loc, class.as_deref(), value);
            if let Some(supply_id) = &line.supply_id {
                d.effects.push(Effect::SupplyReceived {
                    supply_id: supply_id.clone(),
                    qty: line.qty,
                });
            }
        }
    }

    fn post_transfer_out(&mut self, ev: &Event, d: &mut Draft) -> Result<(), Vec<Raised>> {
        let loc = ev.location.as_str();
        let transfer_id = ev.transfer_id.clone().unwrap_or_default();
        if let Some(t) = self.transfer(&transfer_id) {
            return Err(vec![Raised::new(
                "conflict",
                format!(
                    "transfer {transfer_id} was already shipped by event {}",
                    t.out_event_id
                ),
                None,
            )]);
        }
        let mut state = TransferState {
            transfer_id: transfer_id.clone(),
            from_location: loc.to_string(),
            to_location: ev.to_location.clone().unwrap_or_default(),
            out_event_id: ev.event_id.clone(),
            lines: BTreeMap::new(),
            new: true,
        };
        for line in &ev.lines {
            let class = self.class(&line.sku).map(str::to_string);
            let value = d.issue(self, key(&line.sku, loc), line.qty);
            d.journal
                .debit(Role::InTransit, loc, class.as_deref(), value);
            d.journal
                .credit(Role::Inventory, loc, class.as_deref(), value);
            let tl = state.lines.entry(line.sku.clone()).or_default();
            tl.qty_shipped += line.qty;
            tl.value_shipped += value;
        }
        d.effects.push(Effect::Shipped(state));
        Ok(())
    }

    /// Goods arrive at the cost they left with; the in-transit credit goes to the shipping location.
    fn post_transfer_in(&mut self, ev: &Event, d: &mut Draft) -> Result<(), Vec<Raised>> {
        let loc = ev.location.as_str();
        let transfer_id = ev.transfer_id.clone().unwrap_or_default();
        let Some(t) = self.transfer(&transfer_id).cloned() else {
            return Err(vec![Raised::new(
                "awaiting_transfer_out",
                format!("transfer {transfer_id} has not been shipped yet; this receipt posts when its transfer_out arrives"),
                None,
            )]);
        };
        if t.to_location != loc {
            d.raised.push(Raised::new(
                "transfer_mismatch",
                format!(
                    "transfer {transfer_id} was shipped to {} but received at {loc}; the goods are booked where they arrived",
                    t.to_location
                ),
                None,
            ));
        }
        for line in &ev.lines {
            let class = self.class(&line.sku).map(str::to_string);
            let k = key(&line.sku, loc);
            let shipped = t.lines.get(&line.sku).cloned().unwrap_or_default();
            let value = if shipped.qty_shipped.is_zero() {
                d.raised.push(Raised::new(
                    "transfer_mismatch",
                    format!(
                        "sku {} was received on transfer {transfer_id} but not shipped on it",
                        line.sku
                    ),
                    Some(line.qty),
                ));
                d.receive_at_current_cost(self, k, line.qty)
            } else {
                let unit = shipped.value_shipped / shipped.qty_shipped;
                let remaining = shipped.qty_shipped - shipped.qty_received;
                let value = if line.qty == remaining {
                    shipped.value_shipped - shipped.value_received
                } else {
                    cents(line.qty * unit)
                };
                d.receive(self, k, line.qty, value, unit)
            };
            d.journal
                .debit(Role::Inventory, loc, class.as_deref(), value);
            d.journal
                .credit(Role::InTransit, &t.from_location, class.as_deref(), value);
            d.effects.push(Effect::Received {
                transfer_id: transfer_id.clone(),
                sku: line.sku.clone(),
                qty: line.qty,
                value,
            });
        }
        Ok(())
    }

    /// Signed quantity changes against shrink: losses at the average, finds at the average or a given cost.
    fn post_adjustment(&mut self, ev: &Event, d: &mut Draft) {
        let loc = ev.location.as_str();
        for line in &ev.lines {
            let class = self.class(&line.sku).map(str::to_string);
            self.shrink_move(
                d,
                loc,
                class.as_deref(),
                &line.sku,
                line.qty,
                line.unit_cost,
            );
        }
    }

    fn shrink_move(
        &mut self,
        d: &mut Draft,
        loc: &str,
        class: Option<&str>,
        sku: &str,
        qty: Decimal,
        unit_cost: Option<Decimal>,
    ) {
        let k = key(sku, loc);
        if qty < Decimal::ZERO {
            let value = d.issue(self, k, -qty);
            d.journal.debit(Role::Shrink, loc, class, value);
            d.journal.credit(Role::Inventory, loc, class, value);
        } else if qty > Decimal::ZERO {
            let value = match unit_cost {
                Some(c) => d.receive(self, k, qty, cents(qty * c), c),
                None => d.receive_at_current_cost(self, k, qty),
            };
            d.journal.debit(Role::Inventory, loc, class, value);
            d.journal.credit(Role::Shrink, loc, class, value);
        }
    }

    /// A count moves on-hand to what was counted; the variance posts as an adjustment.
    /// A sku counted on several lines (several shelves) is counted once, at the sum of its lines.
    fn post_count(&mut self, ev: &Event, d: &mut Draft) {
        let loc = ev.location.as_str();
        let mut counted: Vec<(&str, Decimal)> = Vec::new();
        let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for line in &ev.lines {
            let qty = line.counted_qty.unwrap_or_default();
            match at.get(line.sku.as_str()) {
                Some(&i) => counted[i].1 += qty,
                None => {
                    at.insert(&line.sku, counted.len());
                    counted.push((&line.sku, qty));
                }
            }
        }
        for (sku, counted) in counted {
            let k = key(sku, loc);
            let system = d.balance(self, &k).on_hand;
            let class = self.class(sku).map(str::to_string);
            self.shrink_move(d, loc, class.as_deref(), sku, counted - system, None);
            d.effects.push(Effect::Counted {
                sku: sku.to_string(),
                system_qty: system,
                counted_qty: counted,
            });
        }
    }
}
