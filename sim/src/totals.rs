//! POS against ERP: the money and units the tills recorded, and what the ledgers posted for them.

use rust_decimal::Decimal;
use tokio_postgres::Client;

use crate::erp::REJECTED_ID;
use crate::error::SimError;

/// One figure from both sides.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub pos: Decimal,
    pub erp: Decimal,
}

impl Figure {
    pub fn agrees(&self) -> bool {
        self.pos == self.erp
    }
}

/// The comparison, and the POS transactions left out because the ERP has not posted them (held or rejected).
#[derive(Debug)]
pub struct Comparison {
    pub figures: Vec<Figure>,
    pub not_posted: Vec<String>,
}

fn dec(row: &tokio_postgres::Row, i: usize) -> Decimal {
    row.get::<_, Option<String>>(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// Sums the POS tables (minus what the ERP did not post) and the ERP's ledgers, figure by figure.
pub async fn compare(pos: &Client, erp: &Client) -> Result<Comparison, SimError> {
    let not_posted: Vec<String> = erp
        .query(
            &format!(
                "SELECT event_id FROM possync.event WHERE status <> 'applied'
                 UNION SELECT {REJECTED_ID} FROM possync.exception
                  WHERE kind IN ('malformed', 'conflict') AND {REJECTED_ID} IS NOT NULL
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(SimError::db("reading events the ERP did not post"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let p = pos
        .query_one(
            "WITH s AS (SELECT * FROM pos.sale WHERE txn_id <> ALL($1)),
                  l AS (SELECT s.kind, sl.*, (s.kind = 'return' OR sl.returned) AS back
                          FROM s JOIN pos.sale_line sl USING (txn_id)),
                  f AS (SELECT (x->>'qty')::numeric AS qty, (x->>'unit_price')::numeric AS price,
                               coalesce((x->>'discount')::numeric, 0) AS discount, coalesce((x->>'tax')::numeric, 0) AS tax
                          FROM pos.outbox o CROSS JOIN LATERAL jsonb_array_elements(o.payload->'lines') x
                         WHERE o.payload->>'kind' = 'fulfillment' AND o.payload->>'event_id' <> ALL($1)),
                  t AS (SELECT * FROM pos.tender WHERE txn_id <> ALL($1))
             SELECT (SELECT count(*) FROM s)::text,
                    ((SELECT coalesce(sum(qty * unit_price - discount), 0) FROM l WHERE NOT back)
                      + (SELECT coalesce(sum(qty * price - discount), 0) FROM f))::text,
                    (SELECT coalesce(sum(qty * unit_price - discount), 0) FROM l WHERE back)::text,
                    ((SELECT coalesce(sum(CASE WHEN back THEN -tax ELSE tax END), 0) FROM l)
                      + (SELECT coalesce(sum(tax), 0) FROM f))::text,
                    (SELECT coalesce(sum(amount), 0) FROM t WHERE tender_type = 'cash')::text,
                    (SELECT coalesce(sum(amount), 0) FROM t WHERE tender_type <> 'cash')::text,
                    (SELECT coalesce(sum(qty * price - discount + tax), 0) FROM f)::text,
                    ((SELECT coalesce(sum(qty), 0) FROM l WHERE NOT back) + (SELECT coalesce(sum(qty), 0) FROM f))::text,
                    (SELECT coalesce(sum(qty), 0) FROM l WHERE back)::text",
            &[&not_posted],
        )
        .await
        .map_err(SimError::db("summing the POS tables"))?;
    let e = erp
        .query_one(
            "WITH gl AS (SELECT account_code, sum(debit) AS dr, sum(credit) AS cr FROM possync.journal_line GROUP BY 1),
                  mv AS (SELECT e.kind, m.qty FROM possync.stock_move m JOIN possync.event e USING (event_id)
                          WHERE e.status = 'applied')
             SELECT (SELECT count(*) FROM possync.event
                      WHERE kind IN ('sale', 'return', 'exchange') AND status = 'applied')::text,
                    (SELECT coalesce(sum(cr - dr), 0) FROM gl WHERE account_code = '4000')::text,
                    (SELECT coalesce(sum(dr - cr), 0) FROM gl WHERE account_code = '4100')::text,
                    (SELECT coalesce(sum(cr - dr), 0) FROM gl WHERE account_code = '2100')::text,
                    (SELECT coalesce(sum(dr - cr), 0) FROM gl WHERE account_code = '1000')::text,
                    (SELECT coalesce(sum(dr - cr), 0) FROM gl WHERE account_code = '1010')::text,
                    (SELECT coalesce(sum(dr - cr), 0) FROM gl WHERE account_code = '2300')::text,
                    (SELECT coalesce(-sum(qty), 0) FROM mv WHERE kind IN ('sale', 'exchange', 'fulfillment') AND qty < 0)::text,
                    (SELECT coalesce(sum(qty), 0) FROM mv WHERE kind IN ('return', 'exchange') AND qty > 0)::text",
            &[],
        )
        .await
        .map_err(SimError::db("summing the ERP ledgers"))?;
    let names = [
        "till transactions posted",
        "sales net (revenue 4000)",
        "returns net (4100)",
        "tax (tax payable 2100)",
        "cash tenders (1000)",
        "card and gift tenders (1010)",
        "web orders net+tax (deposits 2300)",
        "units sold",
        "units returned",
    ];
    let figures = names
        .iter()
        .enumerate()
        .map(|(i, name)| Figure {
            name,
            pos: dec(&p, i),
            erp: dec(&e, i),
        })
        .collect();
    Ok(Comparison {
        figures,
        not_posted,
    })
}
