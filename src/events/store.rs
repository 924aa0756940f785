//! Reads the pipeline needs, and the writes it collects and flushes with one statement per table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pgrx::spi::SpiClient;
use possync_events::Event;
use rust_decimal::Decimal;
use serde_json::Value;

use super::facts::{Effect, Item, Raised, Reservation, TransferLine, TransferState};
use super::periods;
use crate::audit::config::Promotion;
use crate::ledger::journal::Mapping;
use crate::ledger::{AccountMap, JournalLine};
use crate::statements::{decimals, get_bool, get_decimal, get_text, internal, run, text, texts};
use crate::stock::balances::Key;
use crate::stock::{Balances, StockMove};

// event_key holds every id ever stored and its month; archived_event the payload digests of archived months
const KNOWN_KEYS: &str = "SELECT k.event_id, k.business_date::text, a.payload_md5 FROM possync.event_key k \
     LEFT JOIN possync.archived_event a ON a.event_id = k.event_id WHERE k.event_id = ANY($1::text[])";
// the partitions of those months only
const KNOWN_PAYLOADS: &str = "SELECT event_id, payload::text FROM possync.event \
     WHERE event_id = ANY($1::text[]) AND business_date = ANY($2::text[]::date[])";
const PAYLOAD_DIGESTS: &str =
    "SELECT md5(p::jsonb::text) FROM unnest($1::text[]) WITH ORDINALITY AS x(p, n) ORDER BY n";

/// What the inbox holds for an event id already received.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// the stored payload
    Payload(Value),
    /// its month is archived: the digest (md5 of the stored jsonb's text) of its payload
    Archived(String),
    /// the id is taken but its row cannot be read (its partition was detached or dropped by hand)
    Unavailable,
}

// before 0.4.0: one unpartitioned table
const KNOWN_EVENTS_BEFORE_0_4: &str =
    "SELECT event_id, payload::text FROM possync.event WHERE event_id = ANY($1::text[])";

/// What the inbox holds for ids already received (usually none: only duplicates and conflicts).
pub fn known_events(client: &mut SpiClient<'_>, ids: &[String]) -> HashMap<String, Known> {
    if ids.is_empty() {
        return HashMap::new();
    }
    if !periods::by_month() {
        let rows = run(
            client,
            KNOWN_EVENTS_BEFORE_0_4,
            &[texts(ids.iter().cloned())],
        );
        return payload_rows(rows)
            .into_iter()
            .map(|(id, p)| (id, Known::Payload(p)))
            .collect();
    }
    let mut known = HashMap::new();
    let mut live: Vec<(String, String)> = Vec::new();
    for row in run(client, KNOWN_KEYS, &[texts(ids.iter().cloned())]) {
        let id = get_text(&row, 1).unwrap_or_default();
        match get_text(&row, 3) {
            Some(digest) => {
                known.insert(id, Known::Archived(digest));
            }
            None => live.push((id, get_text(&row, 2).unwrap_or_default())),
        }
    }
    if live.is_empty() {
        return known;
    }
    let months: BTreeSet<String> = live.iter().map(|(_, d)| d.clone()).collect();
    let rows = run(
        client,
        KNOWN_PAYLOADS,
        &[texts(live.iter().map(|(id, _)| id.clone())), texts(months)],
    );
    for (id, payload) in payload_rows(rows) {
        known.insert(id, Known::Payload(payload));
    }
    for (id, _) in live {
        known.entry(id).or_insert(Known::Unavailable);
    }
    known
}

/// The digests an archived event's payload is compared by, of these payloads (as sent), in order.
pub fn payload_digests(client: &mut SpiClient<'_>, payloads: &[&str]) -> Vec<String> {
    if payloads.is_empty() {
        return Vec::new();
    }
    run(
        client,
        PAYLOAD_DIGESTS,
        &[texts(payloads.iter().map(|p| p.to_string()))],
    )
    .map(|row| get_text(&row, 1).unwrap_or_default())
    .collect()
}

/// The master data one call needs, read in one statement.
pub struct MasterData {
    pub items: HashMap<String, Item>,
    pub locations: HashSet<String>,
    pub accounts: AccountMap,
    pub tax_rates: HashMap<String, Decimal>,
    pub promotions: HashMap<String, Promotion>,
    /// first days of the call's months that are archived
    pub archived: HashSet<String>,
}

macro_rules! master_data_sql {
    () => {
        "SELECT 'i', sku, item_class, standard_cost::text, NULL FROM possync.item WHERE sku = ANY($1::text[]) \
         UNION ALL SELECT 'l', location_id, NULL, NULL, NULL FROM possync.location WHERE location_id = ANY($2::text[]) \
         UNION ALL SELECT 'a', role, account_code, location_id, item_class FROM possync.account_map \
         UNION ALL SELECT 't', tax_code, rate::text, NULL, NULL FROM possync.tax_code WHERE tax_code = ANY($3::text[]) \
         UNION ALL SELECT 'p', promotion_code, starts_on::text, ends_on::text, max_discount_pct::text \
           FROM possync.promotion WHERE promotion_code = ANY($4::text[])"
    };
}
const MASTER_DATA: &str = concat!(
    master_data_sql!(),
    " UNION ALL SELECT 'z', month::text, NULL, NULL, NULL FROM possync.archived_period \
      WHERE month = ANY($5::text[]::date[])"
);
// before 0.4.0: no archived months
const MASTER_DATA_BEFORE_0_4: &str = master_data_sql!();

/// Items and locations the call names, the whole account map (small), tax codes and promotions named, and which
/// of the call's months (first days) are archived.
pub fn master_data(
    client: &mut SpiClient<'_>,
    skus: &BTreeSet<String>,
    locations: &BTreeSet<String>,
    tax_codes: &BTreeSet<String>,
    promotions: &BTreeSet<String>,
    months: &BTreeSet<String>,
) -> MasterData {
    let mut md = MasterData {
        items: HashMap::new(),
        locations: HashSet::new(),
        accounts: AccountMap::default(),
        tax_rates: HashMap::new(),
        promotions: HashMap::new(),
        archived: HashSet::new(),
    };
    let mut mappings = Vec::new();
    let mut args = vec![
        texts(skus.iter().cloned()),
        texts(locations.iter().cloned()),
        texts(tax_codes.iter().cloned()),
        texts(promotions.iter().cloned()),
    ];
    let sql = if periods::by_month() {
        args.push(texts(months.iter().cloned()));
        MASTER_DATA
    } else {
        MASTER_DATA_BEFORE_0_4
    };
    for row in run(client, sql, &args) {
        let key = get_text(&row, 2).unwrap_or_default();
        match get_text(&row, 1).as_deref() {
            Some("i") => {
                let item = Item {
                    item_class: get_text(&row, 3),
                    standard_cost: get_decimal(&row, 4).unwrap_or_default(),
                };
                md.items.insert(key, item);
            }
            Some("l") => {
                md.locations.insert(key);
            }
            Some("a") => mappings.push(Mapping {
                role: key,
                account_code: get_text(&row, 3).unwrap_or_default(),
                location_id: get_text(&row, 4),
                item_class: get_text(&row, 5),
            }),
            Some("t") => {
                md.tax_rates
                    .insert(key, get_decimal(&row, 3).unwrap_or_default());
            }
            Some("p") => {
                let p = Promotion {
                    starts_on: get_text(&row, 3),
                    ends_on: get_text(&row, 4),
                    max_discount_pct: get_decimal(&row, 5),
                };
                md.promotions.insert(key, p);
            }
            Some("z") => {
                md.archived.insert(key);
            }
            _ => {}
        }
    }
    md.accounts = AccountMap::new(mappings);
    md
}

// locked after the balances, the order every reservation path uses
const RESERVATIONS: &str = "SELECT reservation_id, sku, location_id, qty::text, status = 'active' \
     FROM possync.reservation WHERE reservation_id = ANY($1::text[]) ORDER BY reservation_id FOR UPDATE";

pub fn reservations(
    client: &mut SpiClient<'_>,
    ids: &BTreeSet<String>,
) -> HashMap<String, Reservation> {
    if ids.is_empty() {
        return HashMap::new();
    }
    run(client, RESERVATIONS, &[texts(ids.iter().cloned())])
        .map(|row| {
            let id = get_text(&row, 1).unwrap_or_default();
            let r = Reservation {
                key: (
                    get_text(&row, 2).unwrap_or_default(),
                    get_text(&row, 3).unwrap_or_default(),
                ),
                qty: get_decimal(&row, 4).unwrap_or_default(),
                active: get_bool(&row, 5).unwrap_or(false),
            };
            (id, r)
        })
        .collect()
}

// the event's moves are in its month's partition
macro_rules! issued_sql {
    () => {
        "SELECT sku, (-sum(qty))::text, (-sum(value))::text FROM possync.stock_move \
         WHERE event_id = $1 AND qty < 0 \
           AND business_date = (SELECT k.business_date FROM possync.event_key k WHERE k.event_id = $1) GROUP BY sku"
    };
}
// what a sale of an archived month issued is in archived_issue
const ISSUED: &str = concat!(
    issued_sql!(),
    " UNION ALL SELECT sku, qty::text, value::text FROM possync.archived_issue WHERE event_id = $1"
);
// 0.4.0: months are archived, but what their sales issued is not kept
const ISSUED_0_4: &str = issued_sql!();

const ISSUED_BEFORE_0_4: &str =
    "SELECT sku, (-sum(qty))::text, (-sum(value))::text FROM possync.stock_move \
     WHERE event_id = $1 AND qty < 0 GROUP BY sku";

/// Per sku, the quantity and value an event issued.
pub fn issued_by_event(
    client: &mut SpiClient<'_>,
    event_id: &str,
) -> HashMap<String, (Decimal, Decimal)> {
    let sql = if periods::has_table("archived_issue") {
        ISSUED
    } else if periods::by_month() {
        ISSUED_0_4
    } else {
        ISSUED_BEFORE_0_4
    };
    run(client, sql, &[text(event_id)])
        .map(|row| {
            let sku = get_text(&row, 1).unwrap_or_default();
            (
                sku,
                (
                    get_decimal(&row, 2).unwrap_or_default(),
                    get_decimal(&row, 3).unwrap_or_default(),
                ),
            )
        })
        .collect()
}

const TRANSFER: &str = "SELECT t.from_location, t.to_location, t.out_event_id, l.sku, l.qty_shipped::text, \
        l.value_shipped::text, l.qty_received::text, l.value_received::text \
     FROM possync.transfer t JOIN possync.transfer_line l USING (transfer_id) WHERE t.transfer_id = $1";

pub fn load_transfer(client: &mut SpiClient<'_>, transfer_id: &str) -> Option<TransferState> {
    let mut state: Option<TransferState> = None;
    for row in run(client, TRANSFER, &[text(transfer_id)]) {
        let t = state.get_or_insert_with(|| TransferState {
            transfer_id: transfer_id.to_string(),
            from_location: get_text(&row, 1).unwrap_or_default(),
            to_location: get_text(&row, 2).unwrap_or_default(),
            out_event_id: get_text(&row, 3).unwrap_or_default(),
            lines: Default::default(),
            new: false,
        });
        t.lines.insert(
            get_text(&row, 4).unwrap_or_default(),
            TransferLine {
                qty_shipped: get_decimal(&row, 5).unwrap_or_default(),
                value_shipped: get_decimal(&row, 6).unwrap_or_default(),
                qty_received: get_decimal(&row, 7).unwrap_or_default(),
                value_received: get_decimal(&row, 8).unwrap_or_default(),
                changed: false,
            },
        );
    }
    state
}

const HELD_BY_KEYS: &str = "SELECT event_id, payload::text FROM possync.event \
     WHERE status = 'held' AND hold_key = ANY($1::text[]) ORDER BY received_at, event_id";
// no row locks here: the apply pipeline locks the ids (lock_event_ids) before balances, as every posting does,
// and posts only what is still held then
const HELD_ONE: &str = "SELECT event_id, payload::text FROM possync.event \
     WHERE status = 'held' AND event_id = $1";
const HELD_ALL: &str = "SELECT event_id, payload::text FROM possync.event \
     WHERE status = 'held' ORDER BY received_at, event_id";
const STILL_HELD: &str =
    "SELECT event_id FROM possync.event WHERE status = 'held' AND event_id = ANY($1::text[])";
// transaction-level advisory locks on the event ids a call posts, by bucket, in one order (first key: "PSEv")
const LOCK_EVENT_IDS: &str = "SELECT pg_catalog.pg_advisory_xact_lock(1347634550, h) \
     FROM (SELECT DISTINCT pg_catalog.hashtext(i) & 255 AS h FROM unnest($1::text[]) AS i) x ORDER BY h";

/// Locks the ids a call is about to judge and post, so that the same id sent by two sessions at once is
/// posted by one and found a duplicate by the other. Taken before any balance, in bucket order, by every path
/// that posts (apply, replay, resubmit), so the locks never deadlock among themselves. An id locks one of 256
/// buckets (its hash's low byte): a call holds at most 256 advisory locks however many events it posts (one lock
/// per id overflowed the server's lock table, 53200, for a POS transaction of 8,000 sales), and two calls whose
/// ids share a bucket merely wait for each other.
pub fn lock_event_ids(client: &mut SpiClient<'_>, ids: &BTreeSet<String>) {
    if !ids.is_empty() {
        run(client, LOCK_EVENT_IDS, &[texts(ids.iter().cloned())]);
    }
}

// transaction-level advisory locks on the transfers a call ships or receives, by bucket, in one order (first key:
// "PSTr"); taken before the event ids
const LOCK_TRANSFERS: &str = "SELECT pg_catalog.pg_advisory_xact_lock(1347638386, h) \
     FROM (SELECT DISTINCT pg_catalog.hashtext(k) & 255 AS h FROM unnest($1::text[]) AS k) x ORDER BY h";

/// Locks the transfers whose transfer_out or transfer_in a call posts, before it looks for held receipts or for
/// shipments. Two sessions posting the two halves of one transfer at once (apply lanes of one source, or any
/// two callers) then take turns, and the second finds what the first committed: a transfer_out finds the
/// transfer_in held for it and posts it, a transfer_in finds its shipment. Without this, each could miss the
/// other's uncommitted half and leave the receipt held. Taken before the event ids, by every call, in bucket
/// order, so the two kinds of locks never deadlock among themselves.
pub fn lock_transfers(client: &mut SpiClient<'_>, keys: &BTreeSet<String>) {
    if !keys.is_empty() {
        run(client, LOCK_TRANSFERS, &[texts(keys.iter().cloned())]);
    }
}

/// Of these ids, those still held now (another session may have posted them meanwhile).
pub fn still_held(client: &mut SpiClient<'_>, ids: &[String]) -> HashSet<String> {
    if ids.is_empty() {
        return HashSet::new();
    }
    run(client, STILL_HELD, &[texts(ids.iter().cloned())])
        .filter_map(|r| get_text(&r, 1))
        .collect()
}

fn payload_rows(rows: pgrx::spi::SpiTupleTable<'_>) -> Vec<(String, Value)> {
    rows.map(|row| {
        let id = get_text(&row, 1).unwrap_or_default();
        let raw = get_text(&row, 2).unwrap_or_default();
        let value = serde_json::from_str(&raw).unwrap_or_else(|e| {
            internal(&format!("stored payload of event {id} is not JSON: {e}"))
        });
        (id, value)
    })
    .collect()
}

/// Held events waiting under any of these hold keys (transfer_ins waiting for their transfer_out).
pub fn held_by_keys(client: &mut SpiClient<'_>, keys: &[String]) -> Vec<(String, Value)> {
    if keys.is_empty() {
        return Vec::new();
    }
    payload_rows(run(client, HELD_BY_KEYS, &[texts(keys.iter().cloned())]))
}

/// Held events, all or one, oldest first, locked against a concurrent replay.
pub fn held(client: &mut SpiClient<'_>, event_id: Option<&str>) -> Vec<(String, Value)> {
    match event_id {
        Some(id) => payload_rows(run(client, HELD_ONE, &[text(id)])),
        None => payload_rows(run(client, HELD_ALL, &[])),
    }
}

struct EventRow {
    event_id: String,
    source: Option<String>,
    kind: &'static str,
    location: String,
    register: Option<String>,
    sequence: Option<i64>,
    business_date: String,
    occurred_at: Option<String>,
    payload: String,
    status: &'static str,
    journal: Option<i64>,
    hold_key: Option<String>,
}

struct JournalRow {
    event_id: String,
    location: Option<String>,
    business_date: Option<String>,
    memo: String,
    reverses: Option<i64>,
}

struct ExceptionRow {
    event_id: Option<String>,
    kind: &'static str,
    reason: String,
    payload: Option<String>,
    location: Option<String>,
    amount: Option<Decimal>,
}

/// Rows collected during a call; journal ids are provisional (1, 2, ...) until [`Writes::flush`].
#[derive(Default)]
pub struct Writes {
    /// the stream this call came in on (apply_batch), recorded on its exceptions
    pub source: Option<String>,
    events: Vec<EventRow>,
    pub replayed: Vec<(String, Option<i64>)>,
    /// (event id, key, move, business date)
    pub moves: Vec<(String, Key, StockMove, String)>,
    journals: Vec<JournalRow>,
    lines: Vec<(i64, JournalLine)>,
    exceptions: Vec<ExceptionRow>,
    pub effects: Vec<(String, String, String, Effect)>,
}

impl Writes {
    pub fn event(
        &mut self,
        ev: &Event,
        payload: &str,
        status: &'static str,
        journal: Option<i64>,
        hold_key: Option<String>,
    ) {
        self.events.push(EventRow {
            event_id: ev.event_id.clone(),
            source: ev.source.clone(),
            kind: ev.kind.as_str(),
            location: ev.location.clone(),
            register: ev.register.clone(),
            sequence: ev.sequence,
            business_date: ev.business_date.clone(),
            occurred_at: ev.occurred_at.clone(),
            payload: payload.to_string(),
            status,
            journal,
            hold_key,
        });
    }

    /// A side effect of a posted event, written after the ledgers.
    pub fn effect(&mut self, ev: &Event, effect: Effect) {
        self.effects.push((
            ev.event_id.clone(),
            ev.location.clone(),
            ev.business_date.clone(),
            effect,
        ));
    }

    /// Exceptions raised by a posted or held event.
    pub fn raised(&mut self, ev: &Event, raised: &[Raised]) {
        for r in raised {
            self.exceptions.push(ExceptionRow {
                event_id: Some(ev.event_id.clone()),
                kind: r.kind,
                reason: r.reason.clone(),
                payload: None,
                location: Some(ev.location.clone()),
                amount: r.amount,
            });
        }
    }

    /// An event that was not posted: kept whole, with the reasons, in the exception table.
    pub fn rejected(
        &mut self,
        event_id: Option<&str>,
        location: Option<&str>,
        payload: &str,
        raised: &[Raised],
    ) {
        for r in raised {
            self.exceptions.push(ExceptionRow {
                event_id: event_id.map(str::to_string),
                kind: r.kind,
                reason: r.reason.clone(),
                payload: Some(payload.to_string()),
                location: location.map(str::to_string),
                amount: r.amount,
            });
        }
    }

    /// Adds the event's journal from its resolved lines; None when it has no lines.
    pub fn journal(&mut self, ev: &Event, lines: Vec<JournalLine>) -> Option<i64> {
        self.journal_lines(
            &ev.event_id,
            Some(&ev.location),
            Some(&ev.business_date),
            format!("{} {}", ev.kind, ev.event_id),
            lines,
            None,
        )
    }

    /// Adds a journal from resolved lines; returns its provisional id.
    pub fn journal_lines(
        &mut self,
        event_id: &str,
        location: Option<&str>,
        business_date: Option<&str>,
        memo: String,
        lines: Vec<JournalLine>,
        reverses: Option<i64>,
    ) -> Option<i64> {
        if lines.is_empty() {
            return None;
        }
        self.journals.push(JournalRow {
            event_id: event_id.to_string(),
            location: location.map(str::to_string),
            business_date: business_date.map(str::to_string),
            memo,
            reverses,
        });
        let id = self.journals.len() as i64;
        self.lines.extend(lines.into_iter().map(|l| (id, l)));
        Some(id)
    }

    /// How many journal ids the flush will need.
    pub fn journal_count(&self) -> usize {
        self.journals.len()
    }

    /// Writes everything collected: journals, their lines, events, stock moves and balances in one statement,
    /// then exceptions, replays and side effects. `ids` are real journal ids for the provisional ones, in order
    /// (more than needed is fine). Returns provisional journal id -> real journal id.
    pub fn flush(
        self,
        client: &mut SpiClient<'_>,
        balances: &Balances,
        transfers: &[TransferState],
        mut ids: Vec<i64>,
    ) -> HashMap<i64, i64> {
        if ids.len() < self.journals.len() {
            ids = allocate_journal_ids(client, self.journals.len());
        }
        let ids: HashMap<i64, i64> = ids
            .into_iter()
            .take(self.journals.len())
            .enumerate()
            .map(|(i, id)| (i as i64 + 1, id))
            .collect();
        let real = |p: Option<i64>| p.and_then(|p| ids.get(&p).copied());
        let nothing_to_post = self.journals.is_empty()
            && self.events.is_empty()
            && self.moves.is_empty()
            && balances.changed().is_empty();
        if !nothing_to_post {
            let (j, l, e, m) = (&self.journals, &self.lines, &self.events, &self.moves);
            let changed = balances.changed();
            // before 0.4.0 the database has no business date on lines and moves, and no event_key
            let by_month = periods::by_month();
            let mut args = vec![
                // journals
                texts((1..=j.len() as i64).map(|p| real(Some(p)).map(|r| r.to_string()))),
                texts(j.iter().map(|r| r.event_id.clone())),
                texts(j.iter().map(|r| r.location.clone())),
                texts(j.iter().map(|r| r.business_date.clone())),
                texts(j.iter().map(|r| r.memo.clone())),
                texts(j.iter().map(|r| r.reverses.map(|x| x.to_string()))),
                // journal lines
                texts(l.iter().map(|(p, _)| real(Some(*p)).map(|r| r.to_string()))),
                texts(l.iter().map(|(_, x)| x.line_no.to_string())),
                texts(l.iter().map(|(_, x)| x.account_code.clone())),
                texts(l.iter().map(|(_, x)| x.location_id.clone())),
                decimals(l.iter().map(|(_, x)| x.debit)),
                decimals(l.iter().map(|(_, x)| x.credit)),
            ];
            if by_month {
                // a line carries its journal's business date
                args.push(texts(l.iter().map(|(p, _)| {
                    j.get(*p as usize - 1).and_then(|r| r.business_date.clone())
                })));
            }
            args.extend([
                // events
                texts(e.iter().map(|r| r.event_id.clone())),
                texts(e.iter().map(|r| r.source.clone())),
                texts(e.iter().map(|r| r.kind.to_string())),
                texts(e.iter().map(|r| r.location.clone())),
                texts(e.iter().map(|r| r.register.clone())),
                texts(e.iter().map(|r| r.sequence.map(|s| s.to_string()))),
                texts(e.iter().map(|r| r.business_date.clone())),
                texts(e.iter().map(|r| r.occurred_at.clone())),
                texts(e.iter().map(|r| r.status.to_string())),
                texts(e.iter().map(|r| real(r.journal).map(|x| x.to_string()))),
                texts(e.iter().map(|r| r.payload.clone())),
                texts(e.iter().map(|r| r.hold_key.clone())),
                // stock moves
                texts(m.iter().map(|x| x.0.clone())),
                texts(m.iter().map(|x| x.1 .0.clone())),
                texts(m.iter().map(|x| x.1 .1.clone())),
                decimals(m.iter().map(|x| x.2.qty)),
                decimals(m.iter().map(|x| x.2.unit_cost)),
                decimals(m.iter().map(|x| x.2.value)),
                decimals(m.iter().map(|x| x.2.on_hand_after)),
                decimals(m.iter().map(|x| x.2.value_after)),
            ]);
            if by_month {
                args.push(texts(m.iter().map(|x| x.3.clone())));
            }
            args.extend([
                // balances
                texts(changed.iter().map(|(k, _)| k.0.clone())),
                texts(changed.iter().map(|(k, _)| k.1.clone())),
                decimals(changed.iter().map(|(_, b)| b.on_hand)),
                decimals(changed.iter().map(|(_, b)| b.value)),
                texts(
                    changed
                        .iter()
                        .map(|(_, b)| b.avg_cost.map(|c| c.to_string())),
                ),
                decimals(changed.iter().map(|(_, b)| b.reserved)),
            ]);
            run(client, if by_month { POST } else { POST_BEFORE_0_4 }, &args);
        }
        if !self.exceptions.is_empty() {
            let x = &self.exceptions;
            run(
                client,
                INSERT_EXCEPTIONS,
                &[
                    texts(x.iter().map(|r| r.event_id.clone())),
                    texts(x.iter().map(|r| r.kind.to_string())),
                    texts(x.iter().map(|r| r.reason.clone())),
                    texts(x.iter().map(|r| r.payload.clone())),
                    texts(x.iter().map(|r| r.location.clone())),
                    texts(x.iter().map(|r| r.amount.map(|a| a.to_string()))),
                    texts(x.iter().map(|_| self.source.clone())),
                ],
            );
        }
        if !self.replayed.is_empty() {
            let r = &self.replayed;
            run(
                client,
                MARK_REPLAYED,
                &[
                    texts(r.iter().map(|x| x.0.clone())),
                    texts(r.iter().map(|x| real(x.1).map(|j| j.to_string()))),
                ],
            );
        }
        write_effects(client, &self.effects, transfers);
        ids
    }
}

/// Real journal ids from the sequence, for provisional ids 1..=n.
pub fn allocate_journal_ids(client: &mut SpiClient<'_>, n: usize) -> Vec<i64> {
    if n == 0 {
        return Vec::new();
    }
    let rows = run(
        client,
        ALLOCATE_JOURNAL_IDS,
        &[pgrx::datum::DatumWithOid::from(n as i64)],
    );
    let ids: Vec<i64> = rows
        .filter_map(|r| crate::statements::get_i64(&r, 1))
        .collect();
    if ids.len() != n {
        internal("could not allocate journal ids");
    }
    ids
}

const ALLOCATE_JOURNAL_IDS: &str =
    "SELECT nextval('possync.journal_id_seq') FROM generate_series(1, $1::bigint)";

// One statement posts a whole call: journals, their lines (checked by the balance trigger at its end), the
// inbox rows with their keys (event_key keeps ids unique across the event table's months), the stock moves and
// the balances they lead to. Rows go to their business month's partition, which `periods::prepare` made.
const POST: &str = "WITH journals AS ( \
        INSERT INTO possync.journal (journal_id, event_id, location_id, business_date, memo, reverses) \
        SELECT j::bigint, e, l, d::date, m, r::bigint \
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(j, e, l, d, m, r)), \
     lines AS ( \
        INSERT INTO possync.journal_line (journal_id, line_no, account_code, location_id, debit, credit, business_date) \
        SELECT j::bigint, n::integer, a, l, dr::numeric, cr::numeric, d::date \
          FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) \
               AS x(j, n, a, l, dr, cr, d)), \
     events AS ( \
        INSERT INTO possync.event (event_id, source, kind, location_id, register, sequence, \
            business_date, occurred_at, status, journal_id, payload, hold_key) \
        SELECT id, src, k, l, reg, seq::bigint, d::date, coalesce(o::timestamptz, now()), st, j::bigint, p::jsonb, h \
          FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], \
                      $21::text[], $22::text[], $23::text[], $24::text[], $25::text[]) \
               AS x(id, src, k, l, reg, seq, d, o, st, j, p, h)), \
     keys AS ( \
        INSERT INTO possync.event_key (event_id, business_date) \
        SELECT id, d::date FROM unnest($14::text[], $20::text[]) AS x(id, d)), \
     moves AS ( \
        INSERT INTO possync.stock_move (event_id, sku, location_id, qty, unit_cost, value, on_hand_after, value_after, \
            business_date) \
        SELECT e, s, l, q::numeric, c::numeric, v::numeric, oh::numeric, va::numeric, d::date \
          FROM unnest($26::text[], $27::text[], $28::text[], $29::text[], $30::text[], $31::text[], $32::text[], \
                      $33::text[], $34::text[]) AS x(e, s, l, q, c, v, oh, va, d)) \
     UPDATE possync.stock_balance b \
        SET on_hand = x.on_hand::numeric, value = x.value::numeric, avg_cost = x.avg_cost::numeric, \
            reserved = x.reserved::numeric, updated_at = now() \
       FROM unnest($35::text[], $36::text[], $37::text[], $38::text[], $39::text[], $40::text[]) \
            AS x(sku, location_id, on_hand, value, avg_cost, reserved) \
      WHERE b.sku = x.sku AND b.location_id = x.location_id";

const POST_BEFORE_0_4: &str = "WITH journals AS ( \
        INSERT INTO possync.journal (journal_id, event_id, location_id, business_date, memo, reverses) \
        SELECT j::bigint, e, l, d::date, m, r::bigint \
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(j, e, l, d, m, r)), \
     lines AS ( \
        INSERT INTO possync.journal_line (journal_id, line_no, account_code, location_id, debit, credit) \
        SELECT j::bigint, n::integer, a, l, dr::numeric, cr::numeric \
          FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[]) AS x(j, n, a, l, dr, cr)), \
     events AS ( \
        INSERT INTO possync.event (event_id, source, kind, location_id, register, sequence, \
            business_date, occurred_at, status, journal_id, payload, hold_key) \
        SELECT id, src, k, l, reg, seq::bigint, d::date, coalesce(o::timestamptz, now()), st, j::bigint, p::jsonb, h \
          FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], \
                      $20::text[], $21::text[], $22::text[], $23::text[], $24::text[]) \
               AS x(id, src, k, l, reg, seq, d, o, st, j, p, h)), \
     moves AS ( \
        INSERT INTO possync.stock_move (event_id, sku, location_id, qty, unit_cost, value, on_hand_after, value_after) \
        SELECT e, s, l, q::numeric, c::numeric, v::numeric, oh::numeric, va::numeric \
          FROM unnest($25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::text[], $31::text[], \
                      $32::text[]) AS x(e, s, l, q, c, v, oh, va)) \
     UPDATE possync.stock_balance b \
        SET on_hand = x.on_hand::numeric, value = x.value::numeric, avg_cost = x.avg_cost::numeric, \
            reserved = x.reserved::numeric, updated_at = now() \
       FROM unnest($33::text[], $34::text[], $35::text[], $36::text[], $37::text[], $38::text[]) \
            AS x(sku, location_id, on_hand, value, avg_cost, reserved) \
      WHERE b.sku = x.sku AND b.location_id = x.location_id";

const MARK_REPLAYED: &str = "WITH posted AS ( \
        UPDATE possync.event e SET status = 'applied', journal_id = x.j::bigint, hold_key = NULL \
          FROM unnest($1::text[], $2::text[]) AS x(id, j) WHERE e.event_id = x.id RETURNING e.event_id) \
     UPDATE possync.exception x SET status = 'resolved', resolved_at = now(), \
            resolution = 'posted by replay once the missing data arrived' \
       FROM posted WHERE x.event_id = posted.event_id AND x.status = 'open' \
        AND x.kind IN ('unknown_sku', 'unknown_location', 'missing_account', 'awaiting_transfer_out')";

// Through the bridge's door (a source is named) an event that was not posted can come again: after a restart
// with another number of apply lanes every lane resumes at the least checkpoint of the old ones, and what lay past
// it is sent again. A stored event is then a duplicate by its id; one kept only as an exception (rejected,
// conflict) is not recorded a second time.
const INSERT_EXCEPTIONS: &str = "INSERT INTO possync.exception (event_id, kind, reason, payload, location_id, amount, source) \
     SELECT e, k, r, p::jsonb, l, a::numeric, s \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         AS x(e, k, r, p, l, a, s) \
      WHERE s IS NULL OR p IS NULL OR e IS NULL OR NOT EXISTS (SELECT 1 FROM possync.exception o \
              WHERE o.event_id = x.e AND o.kind = x.k AND o.payload = x.p::jsonb)";

const LOCK_SUPPLY: &str = "SELECT supply_id, qty_open::text FROM possync.supply \
     WHERE supply_id = ANY($1::text[]) ORDER BY supply_id FOR UPDATE";
const SUPPLY_LEFT: &str = "UPDATE possync.supply s SET qty_open = x.q::numeric \
     FROM unnest($1::text[], $2::text[]) AS x(id, q) WHERE s.supply_id = x.id";
const SUPPLY_TAKEN: &str = "INSERT INTO possync.supply_receipt (event_id, supply_id, qty) \
     SELECT e, id, q::numeric FROM unnest($1::text[], $2::text[], $3::text[]) AS x(e, id, q)";

/// Receipts against supply, in posting order: each takes what it received, but never more than is still open.
/// Lowers `open` and returns what each (event, supply) took.
fn take_supply(
    open: &mut BTreeMap<String, Decimal>,
    receipts: &[(String, String, Decimal)],
) -> BTreeMap<(String, String), Decimal> {
    let mut taken: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for (event_id, supply_id, qty) in receipts {
        let Some(left) = open.get_mut(supply_id) else {
            continue;
        };
        let take = (*qty).min(*left).max(Decimal::ZERO);
        if take > Decimal::ZERO {
            *left -= take;
            *taken
                .entry((event_id.clone(), supply_id.clone()))
                .or_default() += take;
        }
    }
    taken
}

/// Locks the supplies that receipts name, takes what each receipt received and records it per event.
fn receive_supply(client: &mut SpiClient<'_>, receipts: &[(String, String, Decimal)]) {
    let ids: BTreeSet<&String> = receipts.iter().map(|r| &r.1).collect();
    let mut open: BTreeMap<String, Decimal> = run(
        client,
        LOCK_SUPPLY,
        &[texts(ids.into_iter().cloned().map(Some))],
    )
    .map(|r| {
        (
            get_text(&r, 1).unwrap_or_default(),
            get_decimal(&r, 2).unwrap_or_default(),
        )
    })
    .collect();
    let taken = take_supply(&mut open, receipts);
    if taken.is_empty() {
        return;
    }
    let changed: BTreeSet<&String> = taken.keys().map(|(_, supply_id)| supply_id).collect();
    let left: Vec<(&String, &Decimal)> =
        open.iter().filter(|(id, _)| changed.contains(id)).collect();
    run(
        client,
        SUPPLY_LEFT,
        &[
            texts(left.iter().map(|(id, _)| Some((*id).clone()))),
            decimals(left.iter().map(|(_, q)| **q)),
        ],
    );
    run(
        client,
        SUPPLY_TAKEN,
        &[
            texts(taken.keys().map(|k| Some(k.0.clone()))),
            texts(taken.keys().map(|k| Some(k.1.clone()))),
            decimals(taken.values().copied()),
        ],
    );
}

const RESERVATIONS_CONSUMED: &str = "UPDATE possync.reservation r \
        SET status = 'consumed', closed_at = now(), consumed_by = x.e \
       FROM unnest($1::text[], $2::text[]) AS x(id, e) WHERE r.reservation_id = x.id AND r.status = 'active'";

const INSERT_TRANSFERS: &str =
    "INSERT INTO possync.transfer (transfer_id, from_location, to_location, out_event_id) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])";

const UPSERT_TRANSFER_LINES: &str = "INSERT INTO possync.transfer_line AS t (transfer_id, sku, qty_shipped, value_shipped, \
        qty_received, value_received) \
     SELECT id, s, qs::numeric, vs::numeric, qr::numeric, vr::numeric \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(id, s, qs, vs, qr, vr) \
     ON CONFLICT (transfer_id, sku) DO UPDATE SET qty_received = EXCLUDED.qty_received, \
        value_received = EXCLUDED.value_received";

const INSERT_COUNT_LINES: &str = "INSERT INTO possync.count_line (event_id, sku, location_id, business_date, system_qty, counted_qty) \
     SELECT e, s, l, d::date, sq::numeric, cq::numeric \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(e, s, l, d, sq, cq) \
     ON CONFLICT (event_id, sku) DO UPDATE SET counted_qty = EXCLUDED.counted_qty";

fn write_effects(
    client: &mut SpiClient<'_>,
    effects: &[(String, String, String, Effect)],
    transfers: &[TransferState],
) {
    let mut supply: Vec<(String, String, Decimal)> = Vec::new();
    let mut consumed = (Vec::new(), Vec::new());
    // (event_id, location, business_date, sku, system, counted)
    let mut counted: Vec<(&str, &str, &str, &str, Decimal, Decimal)> = Vec::new();
    for (event_id, location, business_date, effect) in effects {
        match effect {
            Effect::SupplyReceived { supply_id, qty } => {
                supply.push((event_id.clone(), supply_id.clone(), *qty));
            }
            Effect::ReservationConsumed { reservation_id, .. } => {
                consumed.0.push(reservation_id.clone());
                consumed.1.push(event_id.clone());
            }
            Effect::Counted {
                sku,
                system_qty,
                counted_qty,
            } => counted.push((
                event_id,
                location,
                business_date,
                sku,
                *system_qty,
                *counted_qty,
            )),
            Effect::Shipped(_) | Effect::Received { .. } => {}
        }
    }
    if !supply.is_empty() {
        receive_supply(client, &supply);
    }
    if !consumed.0.is_empty() {
        run(
            client,
            RESERVATIONS_CONSUMED,
            &[texts(consumed.0), texts(consumed.1)],
        );
    }
    if !counted.is_empty() {
        run(
            client,
            INSERT_COUNT_LINES,
            &[
                texts(counted.iter().map(|c| c.0.to_string())),
                texts(counted.iter().map(|c| c.3.to_string())),
                texts(counted.iter().map(|c| c.1.to_string())),
                texts(counted.iter().map(|c| c.2.to_string())),
                decimals(counted.iter().map(|c| c.4)),
                decimals(counted.iter().map(|c| c.5)),
            ],
        );
    }
    let new: Vec<&TransferState> = transfers.iter().filter(|t| t.new).collect();
    if !new.is_empty() {
        run(
            client,
            INSERT_TRANSFERS,
            &[
                texts(new.iter().map(|t| t.transfer_id.clone())),
                texts(new.iter().map(|t| t.from_location.clone())),
                texts(new.iter().map(|t| t.to_location.clone())),
                texts(new.iter().map(|t| t.out_event_id.clone())),
            ],
        );
    }
    let lines: Vec<(&str, &str, &TransferLine)> = transfers
        .iter()
        .flat_map(|t| {
            t.lines
                .iter()
                .filter(move |(_, l)| t.new || l.changed)
                .map(move |(sku, l)| (t.transfer_id.as_str(), sku.as_str(), l))
        })
        .collect();
    if !lines.is_empty() {
        run(
            client,
            UPSERT_TRANSFER_LINES,
            &[
                texts(lines.iter().map(|l| l.0.to_string())),
                texts(lines.iter().map(|l| l.1.to_string())),
                decimals(lines.iter().map(|l| l.2.qty_shipped)),
                decimals(lines.iter().map(|l| l.2.value_shipped)),
                decimals(lines.iter().map(|l| l.2.qty_received)),
                decimals(lines.iter().map(|l| l.2.value_received)),
            ],
        );
    }
}
