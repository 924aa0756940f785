//! Writing the day into the reference POS schema: each step is one POS database transaction, the header
//! first and its lines in the same transaction, exactly as a till would commit it.

use std::fmt::Write;

use possync_events::{Event, EventKind, Line};
use rust_decimal::Decimal;
use tokio_postgres::{Client, NoTls};

use crate::day::PosTxn;
use crate::error::{pg_message, SimError};

/// The reference POS schema the bridge maps without configuration.
pub const REFERENCE_SCHEMA: &str = include_str!("../../cdc-bridge/sql/reference_pos_schema.sql");

/// Connects and keeps the connection driven in the background.
pub async fn connect(url: &str, what: &'static str) -> Result<Client, SimError> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| SimError::Connect {
                what,
                message: pg_message(&e),
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(database = what, error = %pg_message(&e), "connection closed");
        }
    });
    Ok(client)
}

/// Creates schema `pos` unless it is there.
pub async fn create_schema(pos: &Client) -> Result<bool, SimError> {
    let exists: bool = pos
        .query_one("SELECT to_regclass('pos.sale') IS NOT NULL", &[])
        .await
        .map_err(SimError::db("looking for the POS schema"))?
        .get(0);
    if !exists {
        pos.batch_execute(REFERENCE_SCHEMA)
            .await
            .map_err(SimError::db("creating the reference POS schema"))?;
    }
    Ok(!exists)
}

fn lit(out: &mut String, s: &str) {
    out.push('\'');
    out.push_str(&s.replace('\'', "''"));
    out.push('\'');
}

fn opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => lit(out, s),
        None => out.push_str("NULL"),
    }
}

fn num(out: &mut String, d: Decimal) {
    let _ = write!(out, "{d}");
}

/// The SQL of one POS transaction, BEGIN to COMMIT.
pub fn render(txn: &PosTxn) -> String {
    let mut sql = String::with_capacity(1024);
    sql.push_str("BEGIN;");
    match txn {
        PosTxn::Sale(ev) => sale(&mut sql, ev),
        PosTxn::Stock(ev) => stock(&mut sql, ev),
        PosTxn::DayClose(ev) => day_close(&mut sql, ev),
        PosTxn::Outbox { payload, .. } => {
            sql.push_str("INSERT INTO pos.outbox (payload) VALUES (");
            lit(&mut sql, &payload.to_string());
            sql.push_str("::jsonb);");
        }
    }
    sql.push_str("COMMIT;");
    sql
}

fn header(sql: &mut String, ev: &Event) {
    lit(sql, &ev.event_id);
    sql.push(',');
    lit(sql, &ev.location);
    sql.push(',');
}

fn sale(sql: &mut String, ev: &Event) {
    sql.push_str("INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date, occurred_at, currency, original_txn_id) VALUES (");
    header(sql, ev);
    opt(sql, ev.register.as_deref());
    let _ = write!(sql, ",{},", ev.sequence.unwrap_or_default());
    lit(sql, ev.kind.as_str());
    sql.push(',');
    lit(sql, &ev.business_date);
    sql.push(',');
    opt(sql, ev.occurred_at.as_deref());
    sql.push(',');
    lit(sql, ev.currency.as_deref().unwrap_or("USD"));
    sql.push(',');
    opt(sql, ev.original_event_id.as_deref());
    sql.push_str(");");
    if !ev.lines.is_empty() {
        sql.push_str("INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code, returned) VALUES ");
        for (i, l) in ev.lines.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            lit(sql, &ev.event_id);
            let _ = write!(sql, ",{},", line_no(l, i));
            lit(sql, &l.sku);
            for d in [l.qty, l.unit_price, l.discount, l.tax] {
                sql.push(',');
                num(sql, d);
            }
            sql.push(',');
            opt(sql, l.tax_code.as_deref());
            let returned = l.returned || ev.kind == EventKind::Return;
            let _ = write!(sql, ",{returned})");
        }
        sql.push(';');
    }
    if !ev.tenders.is_empty() {
        sql.push_str("INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ");
        for (i, t) in ev.tenders.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            lit(sql, &ev.event_id);
            let _ = write!(sql, ",{},", i + 1);
            lit(sql, &t.tender_type);
            sql.push(',');
            num(sql, t.amount);
            sql.push(')');
        }
        sql.push(';');
    }
}

fn line_no(l: &Line, i: usize) -> i64 {
    l.line.unwrap_or(i as i64 + 1)
}

fn stock(sql: &mut String, ev: &Event) {
    let (reference, other) = match ev.kind {
        EventKind::Receipt => (ev.supply_id.as_deref(), None),
        EventKind::TransferOut => (ev.transfer_id.as_deref(), ev.to_location.as_deref()),
        EventKind::TransferIn => (ev.transfer_id.as_deref(), ev.from_location.as_deref()),
        _ => (None, None),
    };
    sql.push_str("INSERT INTO pos.stock_event (event_id, store_id, kind, ref, other_store_id, reason, business_date, occurred_at) VALUES (");
    header(sql, ev);
    lit(sql, ev.kind.as_str());
    sql.push(',');
    opt(sql, reference);
    sql.push(',');
    opt(sql, other);
    sql.push(',');
    opt(sql, ev.reason.as_deref());
    sql.push(',');
    lit(sql, &ev.business_date);
    sql.push(',');
    opt(sql, ev.occurred_at.as_deref());
    sql.push_str(");");
    if !ev.lines.is_empty() {
        sql.push_str(
            "INSERT INTO pos.stock_event_line (event_id, line_no, sku, qty, unit_cost) VALUES ",
        );
        for (i, l) in ev.lines.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            lit(sql, &ev.event_id);
            let _ = write!(sql, ",{},", line_no(l, i));
            lit(sql, &l.sku);
            sql.push(',');
            // a count's line carries the counted quantity in qty
            num(sql, l.counted_qty.unwrap_or(l.qty));
            sql.push(',');
            match l.unit_cost {
                Some(c) => num(sql, c),
                None => sql.push_str("NULL"),
            }
            sql.push(')');
        }
        sql.push(';');
    }
}

fn day_close(sql: &mut String, ev: &Event) {
    let totals = ev.totals.clone().unwrap_or_default();
    let tenders: serde_json::Map<String, serde_json::Value> = totals
        .tenders
        .iter()
        .map(|t| (t.tender_type.clone(), t.amount.to_string().into()))
        .collect();
    sql.push_str("INSERT INTO pos.day_close (store_id, register_id, business_date, net_sales, tax, txn_count, last_seq, tenders) VALUES (");
    lit(sql, &ev.location);
    sql.push(',');
    opt(sql, ev.register.as_deref());
    sql.push(',');
    lit(sql, &ev.business_date);
    sql.push(',');
    num(sql, totals.net_sales);
    sql.push(',');
    num(sql, totals.tax);
    let _ = write!(
        sql,
        ",{},{},",
        totals.transaction_count, totals.last_sequence
    );
    lit(sql, &serde_json::Value::Object(tenders).to_string());
    sql.push_str("::jsonb);");
}

/// Commits one POS transaction (its SQL, BEGIN to COMMIT; `label` names it in the error); on failure the
/// transaction is rolled back so the connection stays usable.
pub async fn commit(pos: &Client, sql: &str, label: &str) -> Result<(), SimError> {
    if let Err(e) = pos.batch_execute(sql).await {
        let _ = pos.batch_execute("ROLLBACK").await;
        return Err(SimError::PosWrite {
            event_id: label.to_string(),
            message: pg_message(&e),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use possync_events::Tender;

    #[test]
    fn a_sale_renders_header_lines_and_tenders_in_one_transaction() {
        let ev = Event {
            event_id: "S001-1-000007".into(),
            kind: EventKind::Sale,
            location: "S001".into(),
            register: Some("1".into()),
            sequence: Some(7),
            business_date: "2026-11-27".into(),
            occurred_at: Some("2026-11-27T09:00:00.000Z".into()),
            currency: Some("USD".into()),
            lines: vec![Line {
                line: Some(1),
                sku: "O'BRIEN".into(),
                qty: Decimal::from(2),
                unit_price: Decimal::new(1999, 2),
                discount: Decimal::new(400, 2),
                tax: Decimal::new(319, 2),
                tax_code: Some("STD".into()),
                ..Line::default()
            }],
            tenders: vec![Tender {
                tender_type: "card".into(),
                amount: Decimal::new(3917, 2),
            }],
            ..Event::default()
        };
        let sql = render(&PosTxn::Sale(ev));
        assert!(sql.starts_with("BEGIN;INSERT INTO pos.sale "));
        assert!(sql.ends_with("COMMIT;"));
        assert!(sql.contains("('S001-1-000007',1,'O''BRIEN',2,19.99,4.00,3.19,'STD',false)"));
        assert!(sql.contains("('S001-1-000007',1,'card',39.17)"));
    }
}
