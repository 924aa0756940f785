//! What one call works with while it posts: master data, locked balances, state loaded on demand (transfers,
//! what earlier sales issued) and the rows to write at the end. The posting rules read it; the pipeline in
//! `batch` fills it and writes it out.

use std::collections::{HashMap, HashSet};

use pgrx::spi::SpiClient;
use possync_events::Event;
use rust_decimal::Decimal;

use super::facts::{Item, Reservation, TransferState};
use super::store::{self, Writes};
use crate::audit::config::Rules;
use crate::audit::sequence::Seen;
use crate::ledger::AccountMap;
use crate::stock::Balances;

/// Everything one call works with: master data, locked balances, state loaded on demand, and the rows to
/// write at the end.
pub struct Batch<'a, 'c> {
    pub client: &'a mut SpiClient<'c>,
    pub items: HashMap<String, Item>,
    pub locations: HashSet<String>,
    pub accounts: AccountMap,
    pub balances: Balances,
    pub reservations: HashMap<String, Reservation>,
    pub(super) transfers: HashMap<String, Option<TransferState>>,
    pub(super) sale_costs: HashMap<String, HashMap<String, (Decimal, Decimal)>>,
    pub writes: Writes,
    pub(super) reject_negative: bool,
    /// transfer_ins held earlier in this call, by hold key, for a transfer_out later in it
    pub(super) held_here: HashMap<String, Vec<(Event, String)>>,
    pub(super) rules: Rules,
    /// some event in this call returns goods against an original sale: remember what sales issued
    pub(super) returns_here: bool,
    pub(super) sequences: Vec<Seen>,
    pub(super) closes: Vec<String>,
}

impl Batch<'_, '_> {
    pub fn standard_cost(&self, sku: &str) -> Decimal {
        self.items
            .get(sku)
            .map(|i| i.standard_cost)
            .unwrap_or_default()
    }

    /// (quantity, value) that an earlier sale issued of `sku`, from this call or the ledger.
    pub fn sale_cost(&mut self, event_id: &str, sku: &str) -> Option<(Decimal, Decimal)> {
        if !self.sale_costs.contains_key(event_id) {
            let costs = store::issued_by_event(self.client, event_id);
            self.sale_costs.insert(event_id.to_string(), costs);
        }
        self.sale_costs.get(event_id)?.get(sku).copied()
    }

    /// The transfer with this id, from this call or the database.
    pub fn transfer(&mut self, transfer_id: &str) -> Option<&TransferState> {
        if !self.transfers.contains_key(transfer_id) {
            let t = store::load_transfer(self.client, transfer_id);
            self.transfers.insert(transfer_id.to_string(), t);
        }
        self.transfers.get(transfer_id)?.as_ref()
    }

    pub fn class(&self, sku: &str) -> Option<&str> {
        self.items.get(sku).and_then(|i| i.item_class.as_deref())
    }
}
