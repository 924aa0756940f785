//! Deterministic 3-line sales with one card tender, paid exactly (no over/short).

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::catalog::{cents, location_id, sku, tax_rate, unit_price, Chain, TAX_CODE};

/// xorshift64*: deterministic for a seed, and enough randomness for picking skus and stores.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 1..=n
    pub fn pick(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32 + 1
    }
}

/// Registers per store.
const REGISTERS: u32 = 4;

/// One stream of sales over the chain. Each register numbers its sales 1, 2, 3, ... without gaps across the
/// whole stream (possync audits register sequences), whichever phase a sale belongs to.
pub struct Sales {
    chain: Chain,
    rng: Rng,
    next: u64,
    sequences: HashMap<(u32, u32), u64>,
}

impl Sales {
    pub fn new(chain: Chain, seed: u64) -> Sales {
        Sales {
            chain,
            rng: Rng::new(seed),
            next: 0,
            sequences: HashMap::new(),
        }
    }

    /// The next sale: three distinct skus, 1-3 units each, every fifth line 10 % off, tax on the net; `phase`
    /// names the part of the run in its event id.
    pub fn sale(&mut self, phase: &str) -> Value {
        self.next += 1;
        let loc = self.rng.pick(self.chain.locations);
        let register = self.rng.pick(REGISTERS);
        let sequence = self.sequences.entry((loc, register)).or_insert(0);
        *sequence += 1;
        let sequence = *sequence;
        let mut skus: Vec<u32> = Vec::with_capacity(3);
        while skus.len() < 3 {
            let s = self.rng.pick(self.chain.skus);
            if !skus.contains(&s) {
                skus.push(s);
            }
        }
        let mut paid = Decimal::ZERO;
        let lines: Vec<Value> = skus
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let qty = Decimal::from(self.rng.pick(3));
                let price = unit_price(s);
                let discount = if self.rng.pick(5) == 1 {
                    cents(qty * price / Decimal::TEN)
                } else {
                    Decimal::ZERO
                };
                let net = qty * price - discount;
                let tax = cents(net * tax_rate());
                paid += net + tax;
                json!({
                    "line": i + 1,
                    "sku": sku(s),
                    "qty": qty.to_string(),
                    "unit_price": price.to_string(),
                    "discount": discount.to_string(),
                    "tax": tax.to_string(),
                    "tax_code": TAX_CODE,
                })
            })
            .collect();
        let second = self.next % 60;
        let minute = (self.next / 60) % 60;
        json!({
            "event_id": format!("sale-{phase}-{}", self.next),
            "kind": "sale",
            "location": location_id(loc),
            "register": register.to_string(),
            "sequence": sequence,
            "business_date": "2026-11-26",
            "occurred_at": format!("2026-11-26T14:{minute:02}:{second:02}.120Z"),
            "currency": "USD",
            "lines": lines,
            "tenders": [{"type": "card", "amount": paid.to_string()}],
        })
    }

    /// The next `count` sales as JSON array payloads of `batch` events each (the last may be shorter).
    pub fn payloads(&mut self, phase: &str, count: usize, batch: usize) -> Vec<(usize, String)> {
        let mut out = Vec::with_capacity(count.div_ceil(batch));
        let mut left = count;
        while left > 0 {
            let n = batch.min(left);
            let events: Vec<Value> = (0..n).map(|_| self.sale(phase)).collect();
            out.push((n, Value::Array(events).to_string()));
            left -= n;
        }
        out
    }
}
