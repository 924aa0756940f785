//! Reversing entries: the exact opposite of an applied event's stock moves and journal, and of what it did to
//! supply (a receipt's take from a purchase order) and to holds (a fulfillment's consumed reservations).

use std::collections::BTreeSet;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use rust_decimal::Decimal;
use serde_json::json;

use super::store::Writes;
use crate::errors::{misuse, null_argument};
use crate::ledger::{JournalDraft, JournalLine, Role};
use crate::statements::{get_decimal, get_i64, get_text, internal, run, text};
use crate::stock::{Balances, StockMove};

const EVENT: &str =
    "SELECT status, journal_id, location_id, business_date::text, kind FROM possync.event \
     WHERE event_id = $1 FOR UPDATE";
// (every month's index is probed: a reversal's own moves are dated as its journal, not as its event)
const MOVES: &str =
    "SELECT sku, location_id, qty::text, unit_cost::text, value::text FROM possync.stock_move \
     WHERE event_id = $1 ORDER BY move_id";
const LINES: &str = "SELECT line_no::bigint, account_code, location_id, debit::text, credit::text FROM possync.journal_line \
     WHERE journal_id = $1 ORDER BY line_no";
// the reversal is an event of the day it is posted; its id is kept in event_key as every event's
const INSERT_REVERSAL: &str = "WITH k AS (INSERT INTO possync.event_key (event_id, business_date) \
        VALUES ($1, current_date)) \
     INSERT INTO possync.event (event_id, kind, location_id, business_date, status, journal_id, payload) \
     VALUES ($1, 'reversal', $2, current_date, 'applied', $3::bigint, $4::jsonb)";
const INSERT_REVERSAL_BEFORE_0_4: &str = "INSERT INTO possync.event (event_id, kind, location_id, business_date, \
        status, journal_id, payload) VALUES ($1, 'reversal', $2, current_date, 'applied', $3::bigint, $4::jsonb)";
// where an event id is kept, and whether its month is archived
const STORED_IN: &str = "SELECT k.business_date::text, \
        EXISTS (SELECT 1 FROM possync.archived_period a \
                 WHERE a.month = date_trunc('month', k.business_date)::date) \
     FROM possync.event_key k WHERE k.event_id = $1";
const MARK_REVERSED: &str = "UPDATE possync.event SET status = 'reversed' WHERE event_id = $1";
// a fulfillment that consumed holds: reversed, the goods are back and held for the order again
// (read first for the balance keys, which are locked before reservations, as release() does)
const CONSUMED_HOLDS: &str = "SELECT sku, location_id FROM possync.reservation \
     WHERE consumed_by = $1 AND status = 'consumed'";
const HOLD_AGAIN: &str =
    "UPDATE possync.reservation SET status = 'active', closed_at = NULL, consumed_by = NULL \
     WHERE consumed_by = $1 AND status = 'consumed' RETURNING sku, location_id, qty::text";
// a receipt against supply: reversed, the supply is open again by exactly what the receipt took
const REOPEN_SUPPLY: &str = "UPDATE possync.supply s SET qty_open = s.qty_open + r.qty \
     FROM possync.supply_receipt r WHERE r.event_id = $1 AND s.supply_id = r.supply_id";

const TODAY: &str = "SELECT current_date::text";

const REVERSES: &str = "SELECT payload ->> 'reverses' FROM possync.event WHERE event_id = $1";
// an id kept by an archived month is taken too (its payload is not here: it is not this event's reversal)
const REVERSES_BY_MONTH: &str = "SELECT e.payload ->> 'reverses' FROM possync.event_key k \
     LEFT JOIN possync.event e ON e.event_id = k.event_id AND e.business_date = k.business_date \
     WHERE k.event_id = $1";

/// The id of the reversal of `event_id`: `<id>:reversal`, or `<id>:reversal-2`, ... when an event already has
/// that id (the POS may use any id). Walks the candidates by primary key: the first that is free, or the one
/// whose payload says it reverses `event_id` (an event already reversed keeps the id its reversal got).
fn reversal_id_for(client: &mut pgrx::spi::SpiClient<'_>, event_id: &str) -> String {
    let reverses = if super::periods::by_month() {
        REVERSES_BY_MONTH
    } else {
        REVERSES
    };
    let base = format!("{event_id}:reversal");
    for n in 1.. {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let Some(row) = run(client, reverses, &[text(&id)]).next() else {
            return id;
        };
        if get_text(&row, 1).as_deref() == Some(event_id) {
            return id;
        }
    }
    internal("no free reversal id")
}

/// Writes off value a reversal left stranded per key; returns the journal lines (cogs against inventory).
fn write_offs(
    client: &mut pgrx::spi::SpiClient<'_>,
    balances: &mut Balances,
    keys: &BTreeSet<(String, String)>,
    writes: &mut Writes,
    (reversal_id, business_date): (&str, &str),
) -> Vec<JournalLine> {
    let stranded: Vec<((String, String), Decimal)> = keys
        .iter()
        .map(|k| (k.clone(), balances.get(k).stranded()))
        .filter(|(_, v)| !v.is_zero())
        .collect();
    if stranded.is_empty() {
        return Vec::new();
    }
    let skus = stranded.iter().map(|((s, _), _)| s.clone()).collect();
    let locs = stranded.iter().map(|((_, l), _)| l.clone()).collect();
    let none = BTreeSet::new();
    let md = super::store::master_data(client, &skus, &locs, &none, &none, &none);
    let mut journal = JournalDraft::default();
    for (k, amount) in stranded {
        let mut b = balances.get(&k).clone();
        let m = b.write_off(amount);
        balances.set(k.clone(), b);
        writes.moves.push((
            reversal_id.to_string(),
            k.clone(),
            m,
            business_date.to_string(),
        ));
        let class = md.items.get(&k.0).and_then(|i| i.item_class.as_deref());
        journal.debit(Role::Cogs, &k.1, class, amount);
        journal.credit(Role::Inventory, &k.1, class, amount);
    }
    journal.resolve(&md.accounts).unwrap_or_else(|missing| {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "possync.reverse_event: the reversal needs a write-off, but {}",
                names.join("; ")
            ),
            "map the role in possync.account_map and reverse again",
        )
    })
}

/// Posts the exact reversal of an applied event (stock and journal); returns {event_id, status, ...}.
#[pg_extern]
fn reverse_event(event_id: Option<&str>, reason: Option<&str>) -> JsonB {
    let f = "possync.reverse_event";
    let Some(event_id) = event_id else {
        null_argument(f, "event_id")
    };
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        misuse(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{f}: argument reason must be given"),
            "say why the posting is reversed; finance reads it in the journal memo",
        )
    };
    let result = Spi::connect_mut(|client| {
        // the reversal is dated today; its journal and moves are dated as the event it reverses
        let by_month = super::periods::by_month();
        if by_month {
            super::periods::lock_against_archive();
        }
        let stored = if by_month {
            run(client, STORED_IN, &[text(event_id)]).next().map(|r| {
                (
                    get_text(&r, 1).unwrap_or_default(),
                    crate::statements::get_bool(&r, 2).unwrap_or(false),
                )
            })
        } else {
            None
        };
        if let Some((date, true)) = &stored {
            misuse(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{f}: argument event_id {event_id:?} is dated {date}, in an archived period: its postings are \
                     no longer in the ledger"
                ),
                "correct it with a new event (an adjustment, a return) dated in an open month",
            );
        }
        let today = run(client, TODAY, &[])
            .next()
            .and_then(|r| get_text(&r, 1))
            .unwrap_or_default();
        super::periods::prepare(
            client,
            stored
                .iter()
                .map(|(d, _)| d.as_str())
                .chain(std::iter::once(today.as_str())),
        );
        let reversal_id = reversal_id_for(client, event_id);
        let row = run(client, EVENT, &[text(event_id)]).next().map(|r| {
            (
                get_text(&r, 1).unwrap_or_default(),
                get_i64(&r, 2),
                get_text(&r, 3),
                get_text(&r, 4),
                get_text(&r, 5).unwrap_or_default(),
            )
        });
        let Some((status, journal_id, location, business_date, kind)) = row else {
            misuse(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("{f}: argument event_id {event_id:?} is not a posted event"),
                "reverse an event that possync.apply_event applied",
            )
        };
        match status.as_str() {
            "reversed" => {
                return json!({"event_id": event_id, "status": "duplicate", "reversal_event_id": reversal_id,
                              "journal_id": null, "exceptions": []})
            }
            "applied" if kind == "transfer_out" || kind == "transfer_in" => misuse(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{f}: argument event_id {event_id:?} is a {kind}; a transfer is not reversed"),
                "correct a transfer with a transfer back (a new transfer_out from where the goods are), so the \
                 goods in transit and the transfer record stay in step",
            ),
            "applied" => {}
            other => misuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{f}: argument event_id {event_id:?} is {other}, not applied"),
                "a held event has posted nothing; it needs no reversal",
            ),
        }
        // the reversal's journal and moves are dated as the event it reverses
        let dated = business_date.clone().unwrap_or_default();
        let moves: Vec<((String, String), StockMove)> = run(client, MOVES, &[text(event_id)])
            .map(|r| {
                let key = (
                    get_text(&r, 1).unwrap_or_default(),
                    get_text(&r, 2).unwrap_or_default(),
                );
                let m = StockMove {
                    qty: get_decimal(&r, 3).unwrap_or_default(),
                    unit_cost: get_decimal(&r, 4).unwrap_or_default(),
                    value: get_decimal(&r, 5).unwrap_or_default(),
                    on_hand_after: Decimal::ZERO,
                    value_after: Decimal::ZERO,
                };
                (key, m)
            })
            .collect();
        let lines: Vec<JournalLine> = match journal_id {
            None => Vec::new(),
            Some(j) => run(client, LINES, &[DatumWithOid::from(j)])
                .map(|r| JournalLine {
                    line_no: get_i64(&r, 1).unwrap_or_default() as i32,
                    account_code: get_text(&r, 2).unwrap_or_default(),
                    location_id: get_text(&r, 3).unwrap_or_default(),
                    // swapped: the reversal debits what was credited
                    debit: get_decimal(&r, 5).unwrap_or_default(),
                    credit: get_decimal(&r, 4).unwrap_or_default(),
                })
                .collect(),
        };
        let hold_keys: Vec<(String, String)> = run(client, CONSUMED_HOLDS, &[text(event_id)])
            .map(|r| {
                (
                    get_text(&r, 1).unwrap_or_default(),
                    get_text(&r, 2).unwrap_or_default(),
                )
            })
            .collect();
        let keys: BTreeSet<(String, String)> = moves
            .iter()
            .map(|(k, _)| k.clone())
            .chain(hold_keys.iter().cloned())
            .collect();
        let mut balances = Balances::lock(client, &keys);
        if !hold_keys.is_empty() {
            let held: Vec<((String, String), Decimal)> = run(client, HOLD_AGAIN, &[text(event_id)])
                .map(|r| {
                    let key = (
                        get_text(&r, 1).unwrap_or_default(),
                        get_text(&r, 2).unwrap_or_default(),
                    );
                    (key, get_decimal(&r, 3).unwrap_or_default())
                })
                .collect();
            for (k, qty) in &held {
                if keys.contains(k) {
                    balances.adjust_reserved(k, *qty);
                }
            }
        }
        let mut writes = Writes::default();
        for (k, m) in &moves {
            let mut b = balances.get(k).clone();
            let back = b.reverse(m);
            balances.set(k.clone(), b);
            writes
                .moves
                .push((reversal_id.clone(), k.clone(), back, dated.clone()));
        }
        // what has moved since can leave the reversal on exactly 0 on-hand with value, or with a value of the
        // other sign: written off against cogs, as any incoming move's
        let mut lines = lines;
        let write_off = write_offs(
            client,
            &mut balances,
            &keys,
            &mut writes,
            (&reversal_id, &dated),
        );
        if !write_off.is_empty() {
            let next = lines.iter().map(|l| l.line_no).max().unwrap_or(0);
            lines.extend(write_off.into_iter().enumerate().map(|(i, mut l)| {
                l.line_no = next + i as i32 + 1;
                l
            }));
        }
        let provisional = writes.journal_lines(
            &reversal_id,
            location.as_deref(),
            business_date.as_deref(),
            format!("reversal of {event_id}: {reason}"),
            lines,
            journal_id,
        );
        let ids = writes.flush(client, &balances, &[], Vec::new());
        let new_journal = provisional.map(|p| {
            ids.get(&p)
                .copied()
                .unwrap_or_else(|| internal("journal id lost"))
        });
        let payload = json!({"reverses": event_id, "reason": reason}).to_string();
        run(
            client,
            if by_month {
                INSERT_REVERSAL
            } else {
                INSERT_REVERSAL_BEFORE_0_4
            },
            &[
                text(&reversal_id),
                DatumWithOid::from(location.clone()),
                DatumWithOid::from(new_journal.map(|j| j.to_string())),
                text(&payload),
            ],
        );
        run(client, MARK_REVERSED, &[text(event_id)]);
        run(client, REOPEN_SUPPLY, &[text(event_id)]);
        json!({"event_id": event_id, "status": "applied", "reversal_event_id": reversal_id,
               "journal_id": new_journal, "exceptions": []})
    });
    JsonB(result)
}
