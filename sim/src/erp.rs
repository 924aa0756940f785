//! The ERP side: master data matching the simulated retailer, the web shop's reservations, and what the
//! progress line and the summary read back.

use rust_decimal::Decimal;
use tokio_postgres::Client;

use crate::catalog::{Catalog, Network, TAX_CODES};
use crate::day::{Plan, MIDDAY_RECEIPT_ITEMS};
use crate::error::SimError;
use crate::shop::CITY_TAX;

/// What `setup-erp` loaded.
#[derive(Debug)]
pub struct MasterData {
    pub locations: usize,
    pub items: usize,
    pub supply: usize,
}

fn texts<T: ToString>(v: impl IntoIterator<Item = T>) -> Vec<String> {
    v.into_iter().map(|x| x.to_string()).collect()
}

/// Loads the default chart, locations, tax codes, items with standard cost, purchase orders (supply) and
/// safety stock for the best sellers. Rows already there are left alone.
pub async fn setup(
    erp: &Client,
    plan: &Plan,
    cat: &Catalog,
    net: &Network,
) -> Result<MasterData, SimError> {
    erp.batch_execute("SELECT possync.install_default_chart()")
        .await
        .map_err(SimError::db("installing the default chart"))?;
    let locs = net.locations();
    erp.execute(
        "INSERT INTO possync.location (location_id, name, kind)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        &[
            &texts(locs.iter().map(|l| &l.0)),
            &texts(locs.iter().map(|l| &l.1)),
            &texts(locs.iter().map(|l| l.2)),
        ],
    )
    .await
    .map_err(SimError::db("loading locations"))?;
    erp.execute(
        "INSERT INTO possync.tax_code (tax_code, rate, description)
         SELECT c, r::numeric, d FROM unnest($1::text[], $2::text[], $3::text[]) AS t(c, r, d) ON CONFLICT DO NOTHING",
        &[
            &texts(TAX_CODES.iter().chain([&CITY_TAX]).map(|t| t.0)),
            &texts(TAX_CODES.iter().chain([&CITY_TAX]).map(|t| t.1)),
            &texts(TAX_CODES.iter().chain([&CITY_TAX]).map(|t| t.2)),
        ],
    )
    .await
    .map_err(SimError::db("loading tax codes"))?;
    insert_items(erp, &cat.items).await?;

    let stocking = plan.stocking(cat);
    let opening = format!("{} 06:00:00+00", plan.business_date);
    let midday = format!("{} 12:00:00+00", plan.business_date);
    let mut ids = Vec::new();
    let mut skus = Vec::new();
    let mut qtys = Vec::new();
    let mut due = Vec::new();
    for (i, item) in cat.items.iter().enumerate() {
        ids.push(format!("PO-{}", item.sku));
        skus.push(item.sku.clone());
        qtys.push(stocking.dc[i].to_string());
        due.push(opening.clone());
    }
    for i in cat.best_sellers(MIDDAY_RECEIPT_ITEMS) {
        // ordered twice what arrives at midday: the rest stays open, incoming for ATP
        ids.push(format!("PO2-{}", cat.items[i].sku));
        skus.push(cat.items[i].sku.clone());
        qtys.push((plan.midday_qty(&stocking, i) * 2).to_string());
        due.push(midday.clone());
    }
    erp.execute(
        "INSERT INTO possync.supply (supply_id, sku, location_id, qty_open, expected_at, kind)
         SELECT id, sku, 'DC1', q::numeric, at::timestamptz, 'po'
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS s(id, sku, q, at)
         ON CONFLICT DO NOTHING",
        &[&ids, &skus, &qtys, &due],
    )
    .await
    .map_err(SimError::db("loading supply"))?;
    let best: Vec<String> = cat
        .best_sellers(50)
        .into_iter()
        .map(|i| cat.items[i].sku.clone())
        .collect();
    erp.execute(
        "INSERT INTO possync.safety_stock (sku, location_id, qty)
         SELECT sku, l.location_id, 2 FROM unnest($1::text[]) AS s(sku), possync.location l
          WHERE l.kind = 'store' AND l.location_id = ANY($2::text[])
         ON CONFLICT DO NOTHING",
        &[&best, &net.stores],
    )
    .await
    .map_err(SimError::db("loading safety stock"))?;
    Ok(MasterData {
        locations: locs.len(),
        items: cat.items.len(),
        supply: ids.len(),
    })
}

async fn insert_items(erp: &Client, items: &[crate::catalog::Item]) -> Result<u64, SimError> {
    erp.execute(
        "INSERT INTO possync.item (sku, description, item_class, standard_cost)
         SELECT s, d, c, k::numeric FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS i(s, d, c, k)
         ON CONFLICT DO NOTHING",
        &[
            &texts(items.iter().map(|i| &i.sku)),
            &texts(items.iter().map(|i| &i.description)),
            &texts(items.iter().map(|i| i.class)),
            &texts(items.iter().map(|i| i.cost)),
        ],
    )
    .await
    .map_err(SimError::db("loading items"))
}

/// The items the stores sold before the ERP knew them arrive; held events that can now post are posted.
/// Returns (items added, events posted from hold).
pub async fn late_items(erp: &Client, cat: &Catalog) -> Result<(u64, i32), SimError> {
    let added = insert_items(erp, &cat.late).await?;
    let posted: i32 = erp
        .query_one("SELECT possync.replay_held()", &[])
        .await
        .map_err(SimError::db("possync.replay_held()"))?
        .get(0);
    Ok((added, posted))
}

/// `possync.reserve` for 30 minutes; returns its status (`reserved` or `insufficient`).
pub async fn reserve(
    erp: &Client,
    reservation_id: &str,
    sku: &str,
    location: &str,
    qty: Decimal,
) -> Result<String, SimError> {
    let row = erp
        .query_one(
            "SELECT possync.reserve($1, $2, $3, $4::text::numeric, now() + interval '30 minutes')->>'status'",
            &[&reservation_id, &sku, &location, &qty.to_string()],
        )
        .await
        .map_err(SimError::db(format!("possync.reserve('{reservation_id}')")))?;
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// `possync.release`.
pub async fn release(erp: &Client, reservation_id: &str) -> Result<(), SimError> {
    erp.execute("SELECT possync.release($1)", &[&reservation_id])
        .await
        .map_err(SimError::db(format!("possync.release('{reservation_id}')")))?;
    Ok(())
}

/// Events the ERP has applied (over all sources) and exceptions still open.
pub async fn applied_and_open(erp: &Client) -> Result<(i64, i64), SimError> {
    let r = erp
        .query_one(
            "SELECT (SELECT coalesce(sum(events_applied), 0)::int8 FROM possync.source),
                    (SELECT count(*) FROM possync.exception WHERE status = 'open')",
            &[],
        )
        .await
        .map_err(SimError::db("reading ERP progress"))?;
    Ok((r.get(0), r.get(1)))
}

/// The POS transaction id of a rejected event: the bridge sends a row it cannot turn into a well-formed event
/// under an id of its own, with the event it built (and so the POS id) inside the payload.
pub const REJECTED_ID: &str = "coalesce(payload #>> '{event,event_id}', event_id)";

/// How the ERP's commit time of an event is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitClock {
    /// `pg_xact_commit_timestamp(xmin)`: the ERP was started with track_commit_timestamp = on.
    CommitTimestamp,
    /// `received_at`: the start of the applying transaction (slightly early).
    ReceivedAt,
}

impl CommitClock {
    pub async fn detect(erp: &Client) -> CommitClock {
        match erp.query_one("SHOW track_commit_timestamp", &[]).await {
            Ok(r) if r.get::<_, String>(0) == "on" => CommitClock::CommitTimestamp,
            _ => CommitClock::ReceivedAt,
        }
    }
}

/// For the given event ids, when the ERP committed them (Unix microseconds); ids not there yet are left out.
/// Rejected events live only in the exception table and count as committed when their exception is.
pub async fn committed_at(
    erp: &Client,
    clock: CommitClock,
    ids: &[&str],
) -> Result<Vec<(String, i64)>, SimError> {
    let (ev, ex) = match clock {
        CommitClock::CommitTimestamp => (
            "pg_xact_commit_timestamp(xmin)",
            "pg_xact_commit_timestamp(xmin)",
        ),
        CommitClock::ReceivedAt => ("received_at", "raised_at"),
    };
    let sql = format!(
        "SELECT event_id, (extract(epoch FROM {ev}) * 1000000)::int8 FROM possync.event WHERE event_id = ANY($1)
         UNION ALL
         SELECT {REJECTED_ID}, (extract(epoch FROM min({ex})) * 1000000)::int8 FROM possync.exception
          WHERE {REJECTED_ID} = ANY($1) AND kind = 'malformed' GROUP BY 1"
    );
    let rows = erp
        .query(&sql, &[&ids])
        .await
        .map_err(SimError::db("reading ERP commit times"))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<i64>>(1)?)))
        .collect())
}
