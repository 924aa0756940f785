//! The same day as contract JSON: a JSON array for `possync.apply_events`, or applied directly in batches.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;
use tokio_postgres::Client;

use crate::catalog::Catalog;
use crate::day::{Day, Step};
use crate::erp;
use crate::error::SimError;

/// Writes every event of the day as one JSON array (one event per line inside it).
pub fn write_array(day: &Day, out: &mut dyn Write) -> std::io::Result<usize> {
    let mut n = 0;
    out.write_all(b"[\n")?;
    for step in &day.steps {
        if let Step::Pos { txn, .. } = step {
            if n > 0 {
                out.write_all(b",\n")?;
            }
            out.write_all(txn.to_json().to_string().as_bytes())?;
            n += 1;
        }
    }
    out.write_all(b"\n]\n")?;
    Ok(n)
}

/// Applies the day with `possync.apply_events`, `batch` events per call, reserving and releasing in order.
/// Returns the count of each status the ERP answered.
pub async fn apply(
    day: &Day,
    cat: &Catalog,
    erp_client: &Client,
    batch: usize,
) -> Result<BTreeMap<String, u64>, SimError> {
    let mut statuses = BTreeMap::new();
    let mut pending: Vec<Value> = Vec::new();
    for step in &day.steps {
        match step {
            Step::Pos { txn, .. } => {
                pending.push(txn.to_json());
                if pending.len() >= batch.max(1) {
                    flush(erp_client, &mut pending, &mut statuses).await?;
                }
            }
            Step::Reserve {
                reservation_id,
                sku,
                location,
                qty,
            } => {
                flush(erp_client, &mut pending, &mut statuses).await?;
                let status = erp::reserve(erp_client, reservation_id, sku, location, *qty).await?;
                *statuses.entry(format!("reserve: {status}")).or_default() += 1;
            }
            Step::Release { reservation_id } => {
                flush(erp_client, &mut pending, &mut statuses).await?;
                erp::release(erp_client, reservation_id).await?;
                *statuses.entry("release".into()).or_default() += 1;
            }
            Step::LateItems => {
                flush(erp_client, &mut pending, &mut statuses).await?;
                let (_, posted) = erp::late_items(erp_client, cat).await?;
                *statuses.entry("replayed from hold".into()).or_default() += posted as u64;
            }
        }
    }
    flush(erp_client, &mut pending, &mut statuses).await?;
    Ok(statuses)
}

pub async fn flush(
    erp_client: &Client,
    pending: &mut Vec<Value>,
    statuses: &mut BTreeMap<String, u64>,
) -> Result<(), SimError> {
    if pending.is_empty() {
        return Ok(());
    }
    let events = Value::Array(std::mem::take(pending)).to_string();
    let rows = erp_client
        .query(
            "SELECT r->>'status' FROM jsonb_array_elements(possync.apply_events($1::text::jsonb)) r",
            &[&events],
        )
        .await
        .map_err(SimError::db("possync.apply_events"))?;
    for r in rows {
        let s: Option<String> = r.get(0);
        *statuses.entry(s.unwrap_or_default()).or_default() += 1;
    }
    Ok(())
}
