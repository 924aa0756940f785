//! The storage floor of the posting stage: the ledger rows possync wrote for the batches of 100, written again
//! into copies of its tables (same columns, constraints, indexes, fill factor and triggers) with one multi-row
//! statement per table and batch, from rows computed beforehand. Nothing is read, locked or decided: this is
//! what storing a batch costs, and possync's posting is reported as a fraction of it.
//!
//! Each batch is one simple-query round trip holding its statements (one implicit transaction, one commit, as a
//! possync call in autocommit): journals, journal lines (the balance trigger runs once at the end), events,
//! event keys, stock moves, the balances' new values (one UPDATE ... FROM VALUES) and exceptions when there are any.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_postgres::Client;

use crate::posting::Measured;
use crate::BenchError;

/// Copies of the tables a posting writes, with possync's own trigger functions. The ledgers are copies of a
/// month's partition (keys and indexes included: the partitioned parents carry none), plus the event key table
/// that keeps ids unique across months; one unpartitioned table each, so the floor does not route rows.
const CREATE_FLOOR: &str = "\
    DROP SCHEMA IF EXISTS floor CASCADE; \
    CREATE SCHEMA floor; \
    SELECT possync.make_ledger_months(ARRAY['2026-11-01'::date]); \
    CREATE TABLE floor.event (LIKE possync.event_2026_11 INCLUDING ALL); \
    CREATE TABLE floor.event_key (LIKE possync.event_key INCLUDING ALL); \
    CREATE TABLE floor.stock_move (LIKE possync.stock_move_2026_11 INCLUDING ALL); \
    CREATE TABLE floor.stock_balance (LIKE possync.stock_balance INCLUDING ALL) WITH (fillfactor = 60); \
    CREATE TABLE floor.journal (LIKE possync.journal_2026_11 INCLUDING ALL); \
    CREATE TABLE floor.journal_line (LIKE possync.journal_line_2026_11 INCLUDING ALL); \
    CREATE TABLE floor.exception (LIKE possync.exception INCLUDING ALL); \
    CREATE TRIGGER journal_line_balanced AFTER INSERT ON floor.journal_line \
        REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION possync.journal_must_balance(); \
    CREATE TRIGGER stock_move_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON floor.stock_move \
        FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only(); \
    CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON floor.journal \
        FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only(); \
    CREATE TRIGGER journal_line_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON floor.journal_line \
        FOR EACH STATEMENT EXECUTE FUNCTION possync.ledger_is_append_only(); \
    INSERT INTO floor.stock_balance SELECT * FROM possync.stock_balance;";

/// The batch an event of the phase belongs to: its number in the stream, counted from the phase's first.
fn batch_of(alias: &str) -> String {
    format!(
        "((split_part({alias}.event_id, '-', 3)::bigint - (SELECT min(split_part(event_id, '-', 3)::bigint) \
           FROM possync.event WHERE event_id LIKE $1 || '%')) / 100)::integer"
    )
}

/// Per table, per batch: the VALUES list (as SQL text) of the rows possync wrote for the phase's events.
fn values_queries() -> Vec<(&'static str, String)> {
    let e = batch_of("e");
    let j = batch_of("j");
    let m = batch_of("m");
    let x = batch_of("x");
    vec![
        (
            "INSERT INTO floor.journal (journal_id, event_id, location_id, business_date, memo, reverses) VALUES ",
            format!(
                "SELECT {j}, string_agg(format('(%s,%L,%L,%L,%L,%L)', j.journal_id, j.event_id, j.location_id, \
                   j.business_date, j.memo, j.reverses), ',' ORDER BY j.journal_id) \
                   FROM possync.journal j WHERE j.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
        (
            "INSERT INTO floor.journal_line (journal_id, line_no, account_code, location_id, debit, credit, \
             business_date) VALUES ",
            format!(
                "SELECT {j}, string_agg(format('(%s,%s,%L,%L,%s,%s,%L)', l.journal_id, l.line_no, l.account_code, \
                   l.location_id, l.debit, l.credit, l.business_date), ',' ORDER BY l.journal_id, l.line_no) \
                   FROM possync.journal j JOIN possync.journal_line l USING (journal_id) \
                  WHERE j.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
        (
            "INSERT INTO floor.event (event_id, source, kind, location_id, register, sequence, business_date, \
             occurred_at, status, journal_id, payload, hold_key) VALUES ",
            format!(
                "SELECT {e}, string_agg(format('(%L,%L,%L,%L,%L,%L,%L,%L,%L,%L,%L,%L)', e.event_id, e.source, e.kind, \
                   e.location_id, e.register, e.sequence, e.business_date, e.occurred_at, e.status, e.journal_id, \
                   e.payload, e.hold_key), ',' ORDER BY e.event_id) \
                   FROM possync.event e WHERE e.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
        (
            "INSERT INTO floor.event_key (event_id, business_date) VALUES ",
            format!(
                "SELECT {e}, string_agg(format('(%L,%L)', e.event_id, e.business_date), ',' ORDER BY e.event_id) \
                   FROM possync.event e WHERE e.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
        (
            "INSERT INTO floor.stock_move (event_id, sku, location_id, qty, unit_cost, value, on_hand_after, \
             value_after, business_date) VALUES ",
            format!(
                "SELECT {m}, string_agg(format('(%L,%L,%L,%s,%s,%s,%s,%s,%L)', m.event_id, m.sku, m.location_id, m.qty, \
                   m.unit_cost, m.value, m.on_hand_after, m.value_after, m.business_date), ',' ORDER BY m.move_id) \
                   FROM possync.stock_move m WHERE m.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
        (
            "UPDATE floor.stock_balance b SET on_hand = x.on_hand, value = x.value, avg_cost = x.avg_cost, \
             reserved = x.reserved, updated_at = now() FROM (VALUES ",
            // the balance after each batch: its last move per sku and location
            format!(
                "SELECT batch, string_agg(format('(%L,%L,%s::numeric,%s::numeric,%s::numeric,%s::numeric)', sku, \
                   location_id, on_hand_after, value_after, unit_cost, reserved), ',' ORDER BY sku, location_id) \
                   FROM (SELECT DISTINCT ON (1, m.sku, m.location_id) {m} AS batch, m.sku, m.location_id, \
                                m.on_hand_after, m.value_after, m.unit_cost, b.reserved \
                           FROM possync.stock_move m JOIN possync.stock_balance b USING (sku, location_id) \
                          WHERE m.event_id LIKE $1 || '%' ORDER BY 1, m.sku, m.location_id, m.move_id DESC) last \
                  GROUP BY 1"
            ),
        ),
        (
            "INSERT INTO floor.exception (event_id, kind, reason, payload, location_id, amount, source) VALUES ",
            format!(
                "SELECT {x}, string_agg(format('(%L,%L,%L,%L,%L,%L,%L)', x.event_id, x.kind, x.reason, x.payload, \
                   x.location_id, x.amount, x.source), ',' ORDER BY x.exception_id) \
                   FROM possync.exception x WHERE x.event_id LIKE $1 || '%' GROUP BY 1"
            ),
        ),
    ]
}

const BALANCES_TAIL: &str = ") AS x(sku, location_id, on_hand, value, avg_cost, reserved) \
     WHERE b.sku = x.sku AND b.location_id = x.location_id";

/// Creates the floor's tables (empty ledgers, possync's balances as they stand).
pub async fn create(client: &Client) -> Result<(), BenchError> {
    client
        .batch_execute(CREATE_FLOOR)
        .await
        .map_err(|e| BenchError::sql("creating the floor schema", e))?;
    client
        .batch_execute("VACUUM ANALYZE floor.stock_balance")
        .await
        .map_err(|e| BenchError::sql("vacuuming the floor's balances", e))
}

/// Writes the rows possync posted for the events whose ids start with `prefix` again, batch by batch, into
/// the floor schema; returns the time it took for `events` events.
pub async fn write(client: &Client, prefix: &str, events: usize) -> Result<Measured, BenchError> {
    let mut batches: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (head, query) in values_queries() {
        let rows = client
            .query(&query, &[&prefix])
            .await
            .map_err(|e| BenchError::sql("reading possync's rows for the floor", e))?;
        for row in rows {
            let batch: i32 = row.get(0);
            let values: String = row.get(1);
            let tail = if head.starts_with("UPDATE") {
                BALANCES_TAIL
            } else {
                ""
            };
            batches
                .entry(batch)
                .or_default()
                .push(format!("{head}{values}{tail}"));
        }
    }
    let scripts: Vec<String> = batches.into_values().map(|s| s.join(";\n")).collect();
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(|e| BenchError::sql("checkpoint before the floor", e))?;
    let started = Instant::now();
    for script in &scripts {
        client
            .batch_execute(script)
            .await
            .map_err(|e| BenchError::sql("writing a batch into the floor tables", e))?;
    }
    let elapsed = started.elapsed();
    let written: i64 = client
        .query_one(
            "SELECT count(*) FROM floor.event WHERE event_id LIKE $1 || '%'",
            &[&prefix],
        )
        .await
        .map_err(|e| BenchError::sql("counting the floor's events", e))?
        .get(0);
    if written != events as i64 {
        return Err(BenchError::Unexpected(format!(
            "the floor wrote {written} events, possync posted {events}"
        )));
    }
    Ok(Measured { events, elapsed })
}
