//! The benchmark's store chain: locations, items with costs and prices, one tax code, and stock received at
//! every location so that sales issue at a real moving average cost.
//!
//! Everything is a pure function of the item or location number, so the event generator and the master data
//! agree without sharing state.

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::json;
use tokio_postgres::Client;

use crate::BenchError;

pub const TAX_CODE: &str = "STD";

/// 8.875 %
pub fn tax_rate() -> Decimal {
    Decimal::new(8875, 5)
}

pub fn location_id(n: u32) -> String {
    format!("L{n}")
}

pub fn sku(n: u32) -> String {
    format!("SKU{n}")
}

/// 2.00 .. 21.99, spread over the catalogue.
pub fn standard_cost(n: u32) -> Decimal {
    Decimal::new(200 + i64::from(n * 37 % 2000), 2)
}

/// List price: twice the standard cost, less a cent.
pub fn unit_price(n: u32) -> Decimal {
    standard_cost(n) * Decimal::TWO - Decimal::new(1, 2)
}

/// Money to cents, half away from zero (the rounding DESIGN.md uses everywhere).
pub fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Size of the chain.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    pub locations: u32,
    pub skus: u32,
}

impl Chain {
    /// Creates possync with the default chart and the chain's master data, and receives stock everywhere: a
    /// large receipt and a small one at another cost, so the moving average has six decimals.
    pub async fn install(&self, client: &Client) -> Result<(), BenchError> {
        client
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS possync; SELECT possync.install_default_chart();",
            )
            .await
            .map_err(|e| BenchError::sql("installing possync and its default chart", e))?;
        let rate = tax_rate().to_string();
        client
            .execute(
                "INSERT INTO possync.tax_code (tax_code, rate) VALUES ($1, $2::text::numeric)",
                &[&TAX_CODE, &rate],
            )
            .await
            .map_err(|e| BenchError::sql("inserting the tax code", e))?;
        let locations: Vec<String> = (1..=self.locations).map(location_id).collect();
        client
            .execute(
                "INSERT INTO possync.location (location_id, name, kind) \
                 SELECT l, 'Store ' || l, 'store' FROM unnest($1::text[]) AS l",
                &[&locations],
            )
            .await
            .map_err(|e| BenchError::sql("inserting locations", e))?;
        let skus: Vec<String> = (1..=self.skus).map(sku).collect();
        let costs: Vec<String> = (1..=self.skus)
            .map(|n| standard_cost(n).to_string())
            .collect();
        client
            .execute(
                "INSERT INTO possync.item (sku, description, item_class, standard_cost) \
                 SELECT s, 'Item ' || s, 'general', c::numeric FROM unnest($1::text[], $2::text[]) AS x(s, c)",
                &[&skus, &costs],
            )
            .await
            .map_err(|e| BenchError::sql("inserting items", e))?;

        let receipts: Vec<serde_json::Value> = (1..=self.locations)
            .flat_map(|l| {
                [
                    (1, 100_000, Decimal::new(101, 2)),
                    (2, 7, Decimal::new(93, 2)),
                ]
                .into_iter()
                .map(move |(round, qty, factor)| self.receipt(l, round, qty, factor))
            })
            .collect();
        for chunk in receipts.chunks(10) {
            let payload = serde_json::Value::Array(chunk.to_vec()).to_string();
            let out: String = client
                .query_one(
                    "SELECT possync.apply_events($1::text::jsonb)::text",
                    &[&payload],
                )
                .await
                .map_err(|e| BenchError::sql("posting the opening receipts", e))?
                .get(0);
            let applied = out.matches("\"applied\"").count();
            if applied != chunk.len() {
                return Err(BenchError::Unexpected(format!(
                    "opening receipts were not all applied: {out}"
                )));
            }
        }
        Ok(())
    }

    fn receipt(&self, loc: u32, round: u32, qty: u32, cost_factor: Decimal) -> serde_json::Value {
        let lines: Vec<serde_json::Value> = (1..=self.skus)
            .map(|n| {
                json!({
                    "sku": sku(n),
                    "qty": qty.to_string(),
                    "unit_cost": cents(standard_cost(n) * cost_factor).to_string(),
                })
            })
            .collect();
        json!({
            "event_id": format!("rcpt-{loc}-{round}"),
            "kind": "receipt",
            "location": location_id(loc),
            "business_date": "2026-11-25",
            "occurred_at": "2026-11-25T07:00:00Z",
            "lines": lines,
        })
    }
}
