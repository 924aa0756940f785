//! Balances locked for one transaction: one pass, in (sku, location) order, so concurrent postings queue
//! behind each other instead of deadlocking; written back with one statement.

use std::collections::{BTreeMap, BTreeSet};

use pgrx::spi::SpiClient;
use rust_decimal::Decimal;

use super::cost::Balance;
use crate::statements::{decimals, get_decimal, get_text, internal, run, texts};

/// (sku, location_id)
pub type Key = (String, String);

/// The balances a call works on, as locked, and which of them it changed.
#[derive(Debug, Default)]
pub struct Balances {
    rows: BTreeMap<Key, Balance>,
    changed: BTreeSet<Key>,
}

const CREATE_MISSING: &str = "INSERT INTO possync.stock_balance (sku, location_id) \
     SELECT k.s, k.l FROM unnest($1::text[], $2::text[]) AS k(s, l) ORDER BY k.s, k.l \
     ON CONFLICT DO NOTHING";

const LOCK: &str = "SELECT b.sku, b.location_id, b.on_hand::text, b.value::text, b.avg_cost::text, b.reserved::text \
     FROM possync.stock_balance b JOIN unnest($1::text[], $2::text[]) AS k(s, l) \
       ON b.sku = k.s AND b.location_id = k.l \
     ORDER BY b.sku, b.location_id FOR UPDATE OF b";

const WRITE: &str = "UPDATE possync.stock_balance b \
        SET on_hand = x.on_hand::numeric, value = x.value::numeric, avg_cost = x.avg_cost::numeric, \
            reserved = x.reserved::numeric, updated_at = now() \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
            AS x(sku, location_id, on_hand, value, avg_cost, reserved) \
      WHERE b.sku = x.sku AND b.location_id = x.location_id";

impl Balances {
    /// Locks (creating when missing) the balance rows for `keys`, in key order.
    pub fn lock(client: &mut SpiClient<'_>, keys: &BTreeSet<Key>) -> Balances {
        let mut balances = Balances::default();
        if keys.is_empty() {
            return balances;
        }
        let skus = || keys.iter().map(|k| Some(k.0.clone()));
        let locs = || keys.iter().map(|k| Some(k.1.clone()));
        run(client, CREATE_MISSING, &[texts(skus()), texts(locs())]);
        for row in run(client, LOCK, &[texts(skus()), texts(locs())]) {
            let (Some(sku), Some(loc)) = (get_text(&row, 1), get_text(&row, 2)) else {
                internal("stock_balance row without a key")
            };
            let balance = Balance {
                on_hand: get_decimal(&row, 3).unwrap_or_default(),
                value: get_decimal(&row, 4).unwrap_or_default(),
                avg_cost: get_decimal(&row, 5),
                reserved: get_decimal(&row, 6).unwrap_or_default(),
            };
            balances.rows.insert((sku, loc), balance);
        }
        if balances.rows.len() != keys.len() {
            internal("a stock_balance row could not be locked");
        }
        balances
    }

    /// The balance for a locked key.
    pub fn get(&self, key: &Key) -> &Balance {
        self.rows
            .get(key)
            .unwrap_or_else(|| internal(&format!("stock balance {key:?} was not locked")))
    }

    /// Replaces a balance with a new state (after a posting succeeded).
    pub fn set(&mut self, key: Key, balance: Balance) {
        if self.rows.get(&key) != Some(&balance) {
            self.changed.insert(key.clone());
            self.rows.insert(key, balance);
        }
    }

    /// The balances this call changed, in key order.
    pub fn changed(&self) -> Vec<(&Key, &Balance)> {
        self.changed.iter().map(|k| (k, self.get(k))).collect()
    }

    /// Writes every changed balance back in one statement.
    pub fn write(&self, client: &mut SpiClient<'_>) {
        if self.changed.is_empty() {
            return;
        }
        let rows: Vec<(&Key, &Balance)> = self.changed.iter().map(|k| (k, self.get(k))).collect();
        run(
            client,
            WRITE,
            &[
                texts(rows.iter().map(|(k, _)| k.0.clone())),
                texts(rows.iter().map(|(k, _)| k.1.clone())),
                decimals(rows.iter().map(|(_, b)| b.on_hand)),
                decimals(rows.iter().map(|(_, b)| b.value)),
                texts(rows.iter().map(|(_, b)| b.avg_cost.map(|c| c.to_string()))),
                decimals(rows.iter().map(|(_, b)| b.reserved)),
            ],
        );
    }

    /// Reserved quantity adjustments outside posting (reservations) go through the same write.
    pub fn adjust_reserved(&mut self, key: &Key, delta: Decimal) {
        let mut b = self.get(key).clone();
        b.reserved = (b.reserved + delta).max(Decimal::ZERO);
        self.set(key.clone(), b);
    }
}
