//! The facts the posting pipeline passes between its stages: what an event raised, master data of an item,
//! transfers and reservations as loaded, and the side effects a posting has on state tables. Everything above
//! (parse and check in `batch`, the rules in `posting`, the writes in `store`, the audit checks) uses these and
//! none of them uses those modules back.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::stock::balances::Key;

/// An exception raised while posting: its kind, a reason a person can act on, and what is at stake.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub kind: &'static str,
    pub reason: String,
    pub amount: Option<Decimal>,
}

impl Raised {
    pub fn new(kind: &'static str, reason: impl Into<String>, amount: Option<Decimal>) -> Raised {
        Raised {
            kind,
            reason: reason.into(),
            amount,
        }
    }
}

/// Master data of one sku.
#[derive(Debug, Clone)]
pub struct Item {
    pub item_class: Option<String>,
    pub standard_cost: Decimal,
}

/// Side effects on state tables, applied only when the event posts.
#[derive(Debug, Clone)]
pub enum Effect {
    SupplyReceived {
        supply_id: String,
        qty: Decimal,
    },
    ReservationConsumed {
        reservation_id: String,
        key: Key,
        qty: Decimal,
    },
    Shipped(TransferState),
    Received {
        transfer_id: String,
        sku: String,
        qty: Decimal,
        value: Decimal,
    },
    Counted {
        sku: String,
        system_qty: Decimal,
        counted_qty: Decimal,
    },
}

/// Per sku on a transfer: shipped and received so far.
#[derive(Debug, Clone, Default)]
pub struct TransferLine {
    pub qty_shipped: Decimal,
    pub value_shipped: Decimal,
    pub qty_received: Decimal,
    pub value_received: Decimal,
    pub changed: bool,
}

/// A transfer as known to this call (loaded from the database or shipped in it).
#[derive(Debug, Clone)]
pub struct TransferState {
    pub transfer_id: String,
    pub from_location: String,
    pub to_location: String,
    pub out_event_id: String,
    pub lines: BTreeMap<String, TransferLine>,
    pub new: bool,
}

/// An active or closed reservation that a fulfillment in this call names.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key: Key,
    pub qty: Decimal,
    pub active: bool,
}

impl TransferState {
    /// Adds a receipt to the shipped quantities.
    pub fn receive(&mut self, sku: &str, qty: Decimal, value: Decimal) {
        let l: &mut TransferLine = self.lines.entry(sku.to_string()).or_default();
        l.qty_received += qty;
        l.value_received += value;
        l.changed = true;
    }
}
