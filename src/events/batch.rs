//! The apply pipeline: a whole call's events parsed, deduplicated, checked against master data, posted in
//! memory against balances locked once in key order, and written with one statement per table.

use std::collections::{BTreeSet, HashMap};

use pgrx::spi::SpiClient;
use possync_events::{event_id_of, id_field_of, Event, EventKind, Malformed};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::context::Batch;
use super::facts::{Effect, Raised, TransferState};
use super::periods;
use super::posting::Draft;
use super::store::{self, Known, Writes};
use crate::audit::config::{check_lines, Rules};
use crate::audit::sequence::{self, Seen};
use crate::ledger::JournalLine;
use crate::statements::{internal, run, text};
use crate::stock::Balances;

/// One event handed to the pipeline. `replay` marks a held event already in the inbox; `unreadable` is the text
/// and reason of an argument that could not be read as JSON (it is rejected and kept as that text).
#[derive(Debug, Clone)]
pub struct Submission {
    pub raw: Value,
    pub replay: bool,
    pub unreadable: Option<(String, String)>,
}

impl Submission {
    pub fn new(raw: Value) -> Submission {
        Submission {
            raw,
            replay: false,
            unreadable: None,
        }
    }

    /// An event as read from an argument.
    pub fn read(read: super::input::Read) -> Submission {
        match read {
            super::input::Read::Value(v) => Submission::new(v),
            super::input::Read::Unreadable { text, reason } => Submission {
                raw: Value::Null,
                replay: false,
                unreadable: Some((text, reason)),
            },
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Applied,
    Duplicate,
    Conflict,
    Held,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Duplicate => "duplicate",
            Status::Conflict => "conflict",
            Status::Held => "held",
            Status::Rejected => "rejected",
        }
    }
}

/// The answer for one event, as apply_event returns it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event_id: Option<String>,
    pub status: Status,
    pub journal_id: Option<i64>,
    pub raised: Vec<Raised>,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "status": self.status.as_str(),
            "journal_id": self.journal_id,
            "exceptions": self.raised.iter().map(|r| json!({"kind": r.kind, "reason": r.reason})).collect::<Vec<_>>(),
        })
    }
}

/// One parsed submission and what is known of it so far.
struct Work {
    raw: Value,
    payload: String,
    replay: bool,
    parsed: Result<Event, Malformed>,
}

impl Batch<'_, '_> {
    fn commit_draft(&mut self, ev: &Event, d: Draft, lines: Vec<JournalLine>) -> Option<i64> {
        let journal_id = self.writes.journal(ev, lines);
        for (k, b) in d.balances {
            self.balances.set(k, b);
        }
        if self.returns_here && (ev.kind.has_tenders() || ev.kind == EventKind::Fulfillment) {
            let issued = self.sale_costs.entry(ev.event_id.clone()).or_default();
            for ((sku, _), m) in d.moves.iter().filter(|(_, m)| m.qty < Decimal::ZERO) {
                let e = issued.entry(sku.clone()).or_default();
                e.0 -= m.qty;
                e.1 -= m.value;
            }
        }
        for (k, m) in d.moves {
            self.writes
                .moves
                .push((ev.event_id.clone(), k, m, ev.business_date.clone()));
        }
        for effect in d.effects {
            match &effect {
                Effect::Shipped(t) => {
                    self.transfers
                        .insert(t.transfer_id.clone(), Some(t.clone()));
                }
                Effect::Received {
                    transfer_id,
                    sku,
                    qty,
                    value,
                } => {
                    if let Some(Some(t)) = self.transfers.get_mut(transfer_id) {
                        t.receive(sku, *qty, *value);
                    }
                }
                Effect::ReservationConsumed { reservation_id, .. } => {
                    if let Some(r) = self.reservations.get_mut(reservation_id) {
                        r.active = false;
                    }
                }
                Effect::SupplyReceived { .. } | Effect::Counted { .. } => {}
            }
            self.writes.effect(ev, effect);
        }
        journal_id
    }

    /// Master data an event needs that is missing: unknown location or sku.
    fn missing_master_data(&self, ev: &Event) -> Vec<Raised> {
        let mut raised = Vec::new();
        let mut locs = vec![ev.location.as_str()];
        locs.extend(ev.to_location.as_deref());
        locs.extend(ev.from_location.as_deref());
        let unknown: Vec<&str> = locs
            .into_iter()
            .filter(|l| !self.locations.contains(*l))
            .collect();
        if !unknown.is_empty() {
            raised.push(Raised::new(
                "unknown_location",
                format!(
                    "location {} is not in possync.location; add it and run possync.replay_held()",
                    unknown.join(", ")
                ),
                None,
            ));
        }
        let mut skus: Vec<&str> = ev
            .lines
            .iter()
            .map(|l| l.sku.as_str())
            .filter(|s| !self.items.contains_key(*s))
            .collect();
        skus.dedup();
        if !skus.is_empty() {
            raised.push(Raised::new(
                "unknown_sku",
                format!(
                    "sku {} is not in possync.item; add it and run possync.replay_held()",
                    skus.join(", ")
                ),
                None,
            ));
        }
        raised
    }

    /// Negative on-hand that a draft leaves, as exceptions.
    fn negatives(d: &Draft) -> Vec<Raised> {
        d.moves
            .iter()
            .filter(|(_, m)| m.qty < Decimal::ZERO && m.on_hand_after < Decimal::ZERO)
            .map(|((sku, loc), m)| {
                Raised::new(
                    "negative_on_hand",
                    format!("sku {sku} at {loc} goes to {} on hand", m.on_hand_after),
                    Some(m.on_hand_after),
                )
            })
            .collect()
    }

    /// Posts one well-formed, new event.
    fn post(&mut self, ev: &Event, payload: &str, replay: bool) -> Outcome {
        let outcome = self.post_event(ev, payload, replay);
        if !replay && matches!(outcome.status, Status::Applied | Status::Held) {
            if let (Some(register), Some(sequence)) = (&ev.register, ev.sequence) {
                // a void used its number up as a sale would have: counting it keeps a false gap away
                if ev.kind.takes_register_sequence() {
                    self.sequences.push(Seen {
                        source: ev.source.clone().unwrap_or_default(),
                        location: ev.location.clone(),
                        register: register.clone(),
                        sequence,
                        event_id: ev.event_id.clone(),
                        business_date: ev.business_date.clone(),
                    });
                }
            }
            if ev.kind == EventKind::DayClose && outcome.status == Status::Applied {
                self.closes.push(ev.event_id.clone());
            }
        }
        outcome
    }

    /// A well-formed event that is refused: kept whole in the exception table with the reasons.
    fn reject(
        &mut self,
        ev: &Event,
        payload: &str,
        mut outcome: Outcome,
        raised: Vec<Raised>,
    ) -> Outcome {
        self.writes
            .rejected(Some(&ev.event_id), Some(&ev.location), payload, &raised);
        outcome.status = Status::Rejected;
        outcome.raised = raised;
        outcome
    }

    fn post_event(&mut self, ev: &Event, payload: &str, replay: bool) -> Outcome {
        let mut outcome = Outcome {
            event_id: Some(ev.event_id.clone()),
            status: Status::Applied,
            journal_id: None,
            raised: Vec::new(),
        };
        let mut hold = self.missing_master_data(ev);
        let mut draft = None;
        if hold.is_empty() {
            let drafted = match guarded(|| self.draft(ev)) {
                Ok(drafted) => drafted,
                Err(why) => {
                    let raised = vec![Raised::new(
                        "malformed",
                        format!("the event could not be posted: {why}; nothing of it was written"),
                        None,
                    )];
                    return self.reject(ev, payload, outcome, raised);
                }
            };
            match drafted {
                Ok(d) => match d.journal.resolve(&self.accounts) {
                    Ok(lines) => draft = Some((d, lines)),
                    Err(missing) => {
                        hold = missing
                            .iter()
                            .map(|m| Raised::new("missing_account", m.to_string(), None))
                            .collect()
                    }
                },
                Err(raised) if raised.iter().any(|r| r.kind == "conflict") => {
                    return self.reject(ev, payload, outcome, raised);
                }
                Err(raised) => hold = raised,
            }
        }
        let Some((mut d, lines)) = draft else {
            outcome.status = Status::Held;
            outcome.raised = hold;
            if !replay {
                let hold_key = (ev.kind == EventKind::TransferIn
                    && outcome
                        .raised
                        .iter()
                        .any(|r| r.kind == "awaiting_transfer_out"))
                .then(|| transfer_hold_key(ev.transfer_id.as_deref().unwrap_or_default()));
                self.writes
                    .event(ev, payload, "held", None, hold_key.clone());
                self.writes.raised(ev, &outcome.raised);
                if let Some(k) = hold_key {
                    self.held_here
                        .entry(k)
                        .or_default()
                        .push((ev.clone(), payload.to_string()));
                }
            }
            return outcome;
        };
        let negatives = Self::negatives(&d);
        if !negatives.is_empty() && self.reject_negative {
            return self.reject(ev, payload, outcome, negatives);
        }
        d.raised.extend(negatives);
        if ev.kind.has_tenders() || ev.kind == EventKind::Fulfillment {
            d.raised.extend(check_lines(ev, &self.rules));
        }
        let raised = std::mem::take(&mut d.raised);
        outcome.journal_id = self.commit_draft(ev, d, lines);
        if replay {
            self.writes
                .replayed
                .push((ev.event_id.clone(), outcome.journal_id));
        } else {
            self.writes
                .event(ev, payload, "applied", outcome.journal_id, None);
        }
        self.writes.raised(ev, &raised);
        outcome.raised = raised;
        outcome
    }
}

/// Posting writes, so not on a hot standby; and it reads what other sessions committed after it waited for them
/// (an event id, a balance): that is READ COMMITTED. Under REPEATABLE READ or SERIALIZABLE a posting would answer from a stale snapshot or fail with a
/// serialization error on every hot sku, so it is refused up front, clearly.
fn require_postable_transaction() {
    // SAFETY: asks the backend whether the server is in recovery
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        crate::errors::misuse(
            pgrx::PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "possync cannot post on a hot standby: the server is in recovery",
            "post on the primary; a standby answers atp, atp_detail, reconcile, check_invariants and trace",
        );
    }
    // SAFETY: a backend global, read on the backend's own thread
    let level = unsafe { pgrx::pg_sys::XactIsoLevel };
    if level > pgrx::pg_sys::XACT_READ_COMMITTED as i32 {
        crate::errors::misuse(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "possync posts only under READ COMMITTED isolation; this transaction is REPEATABLE READ or SERIALIZABLE",
            "post in a READ COMMITTED transaction (SET TRANSACTION ISOLATION LEVEL READ COMMITTED, or the server default)",
        );
    }
}

/// Runs one event's posting rules; a Rust panic in them (an arithmetic overflow, a journal the rules left
/// unbalanced) becomes Err with its message, so that the event is rejected and kept instead of failing the whole
/// call. The rules work on a draft, so nothing of the event has reached the batch. An error PostgreSQL raised
/// is not caught here: it is rethrown and aborts the transaction as before.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        if payload.is::<pgrx::pg_sys::panic::CaughtError>() {
            std::panic::resume_unwind(payload)
        }
        if let Some(report) = payload.downcast_ref::<pgrx::pg_sys::panic::ErrorReportWithLevel>() {
            report.message().to_string()
        } else if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "an internal error".to_string()
        }
    })
}

const CHECK_DAY_CLOSE: &str = "SELECT possync.check_day_close($1)";

/// The key under which a transfer_in waits for its transfer_out.
pub fn transfer_hold_key(transfer_id: &str) -> String {
    format!("transfer:{transfer_id}")
}

/// Applies submissions in order; returns one outcome per submission, in the same order.
pub fn apply(
    client: &mut SpiClient<'_>,
    submissions: Vec<Submission>,
    source: Option<&str>,
) -> Vec<Outcome> {
    require_postable_transaction();
    let reject_negative = crate::guc::reject_negative_on_hand();
    let work: Vec<Work> = submissions
        .into_iter()
        .map(|s| {
            if let Some((text, reason)) = s.unreadable {
                return Work {
                    payload: text,
                    raw: s.raw,
                    replay: false,
                    parsed: Err(Malformed {
                        field: String::new(),
                        reason,
                    }),
                };
            }
            let mut parsed = Event::from_json(&s.raw);
            if let Ok(ev) = parsed.as_mut() {
                if ev.source.is_none() {
                    ev.source = source.map(str::to_string);
                }
            }
            Work {
                payload: s.raw.to_string(),
                raw: s.raw,
                replay: s.replay,
                parsed,
            }
        })
        .collect();
    let submitted = work.len();

    // transfer_ins already waiting for a transfer_out in this call post right after it
    let shipped: Vec<String> = work
        .iter()
        .filter_map(|w| w.parsed.as_ref().ok())
        .filter(|e| e.kind == EventKind::TransferOut)
        .filter_map(|e| e.transfer_id.as_deref().map(transfer_hold_key))
        .collect();
    let transfers: BTreeSet<String> = work
        .iter()
        .filter_map(|w| w.parsed.as_ref().ok())
        .filter(|e| matches!(e.kind, EventKind::TransferOut | EventKind::TransferIn))
        .filter_map(|e| e.transfer_id.as_deref().map(transfer_hold_key))
        .collect();
    store::lock_transfers(client, &transfers);
    let waiting = store::held_by_keys(client, &shipped);
    let mut follow: HashMap<String, Vec<Work>> = HashMap::new();
    for (_, raw) in waiting {
        let parsed = Event::from_json(&raw);
        if let Ok(ev) = &parsed {
            let k = transfer_hold_key(ev.transfer_id.as_deref().unwrap_or_default());
            follow.entry(k).or_default().push(Work {
                payload: raw.to_string(),
                raw,
                replay: true,
                parsed,
            });
        }
    }

    // the months this call may write into exist before anything is locked (making one waits for the partition
    // lock), and no month is archived while the call posts
    let dates = work
        .iter()
        .chain(follow.values().flatten())
        .filter_map(|w| w.parsed.as_ref().ok())
        .map(|e| e.business_date.as_str());
    periods::prepare(client, dates);

    // every id this call may post is locked before anything else, then judged against what is committed
    let fresh: Vec<String> = work
        .iter()
        .filter(|w| !w.replay)
        .filter_map(|w| w.parsed.as_ref().ok().map(|e| e.event_id.clone()))
        .collect();
    let replayed: Vec<String> = work
        .iter()
        .filter(|w| w.replay)
        .chain(follow.values().flatten())
        .filter_map(|w| w.parsed.as_ref().ok().map(|e| e.event_id.clone()))
        .collect();
    let to_lock: BTreeSet<String> = fresh.iter().chain(replayed.iter()).cloned().collect();
    store::lock_event_ids(client, &to_lock);
    // a held event another session posted while this one waited is not posted again
    let held_now = store::still_held(client, &replayed);
    let still_held = |w: &Work| {
        w.parsed
            .as_ref()
            .is_ok_and(|e| held_now.contains(&e.event_id))
    };
    let work: Vec<Work> = work
        .into_iter()
        .filter(|w| !w.replay || still_held(w))
        .collect();
    for waiting in follow.values_mut() {
        waiting.retain(still_held);
    }
    // event id -> what the inbox holds for it
    let stored = store::known_events(client, &fresh);
    // an id of an archived month is judged by its payload's digest
    let resent: Vec<usize> = work
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.replay)
        .filter(|(_, w)| {
            w.parsed
                .as_ref()
                .is_ok_and(|e| matches!(stored.get(&e.event_id), Some(Known::Archived(_))))
        })
        .map(|(i, _)| i)
        .collect();
    let digests = store::payload_digests(
        client,
        &resent
            .iter()
            .map(|&i| work[i].payload.as_str())
            .collect::<Vec<_>>(),
    );
    let digest_of: HashMap<usize, String> = resent.into_iter().zip(digests).collect();

    let mut skus = BTreeSet::new();
    let mut locs = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut reservation_ids = BTreeSet::new();
    let all_events = work
        .iter()
        .chain(follow.values().flatten())
        .filter_map(|w| w.parsed.as_ref().ok());
    for ev in all_events {
        locs.insert(ev.location.clone());
        locs.extend(ev.to_location.clone());
        locs.extend(ev.from_location.clone());
        for l in &ev.lines {
            skus.insert(l.sku.clone());
            if ev.kind != EventKind::DayClose {
                keys.insert((l.sku.clone(), ev.location.clone()));
            }
            reservation_ids.extend(l.reservation_id.clone());
        }
    }
    let returns_here = work.iter().filter_map(|w| w.parsed.as_ref().ok()).any(|e| {
        e.lines
            .iter()
            .any(|l| l.returned && l.original_event_id.is_some())
    });
    let mut tax_codes = BTreeSet::new();
    let mut promotions = BTreeSet::new();
    for ev in work
        .iter()
        .chain(follow.values().flatten())
        .filter_map(|w| w.parsed.as_ref().ok())
    {
        for l in &ev.lines {
            tax_codes.extend(l.tax_code.clone());
            promotions.extend(l.promotion.clone());
        }
    }
    let months: BTreeSet<String> = work
        .iter()
        .filter_map(|w| w.parsed.as_ref().ok())
        .filter_map(|e| periods::month_of(&e.business_date))
        .map(periods::first_day)
        .collect();
    let store::MasterData {
        items,
        locations,
        accounts,
        tax_rates,
        promotions,
        archived,
    } = store::master_data(client, &skus, &locs, &tax_codes, &promotions, &months);
    let rules = Rules {
        tax_rates,
        promotions,
        tax_tolerance: crate::guc::tax_tolerance(),
        max_discount_pct: crate::guc::max_discount_pct(),
    };
    // only balances of items and locations that exist: others cannot post
    keys.retain(|(s, l)| items.contains_key(s) && locations.contains(l));
    let balances = Balances::lock(client, &keys);
    let reservations = store::reservations(client, &reservation_ids);

    let mut batch = Batch {
        client,
        items,
        locations,
        accounts,
        balances,
        reservations,
        transfers: HashMap::new(),
        sale_costs: HashMap::new(),
        writes: Writes::default(),
        reject_negative,
        held_here: HashMap::new(),
        rules,
        returns_here,
        sequences: Vec::new(),
        closes: Vec::new(),
    };
    batch.writes.source = source.map(str::to_string);
    // event id -> index in `work` of its first accepted occurrence in this call
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut outcomes = Vec::with_capacity(submitted);
    for (i, w) in work.iter().enumerate() {
        let outcome = match &w.parsed {
            Err(m) => {
                let id = event_id_of(&w.raw);
                let raised = vec![Raised::new("malformed", m.to_string(), None)];
                let loc = id_field_of(&w.raw, "location");
                batch
                    .writes
                    .rejected(id.as_deref(), loc.as_deref(), &w.payload, &raised);
                Outcome {
                    event_id: id,
                    status: Status::Rejected,
                    journal_id: None,
                    raised,
                }
            }
            Ok(ev) => {
                // judged as if the call's events came one by one: against the first accepted occurrence
                // earlier in this call, else against the inbox
                let earlier = seen.get(&ev.event_id).map(|&j| work[j].raw == w.raw);
                let in_inbox = stored.get(&ev.event_id).map(|k| match k {
                    Known::Payload(p) => p == &w.raw,
                    Known::Archived(d) => digest_of.get(&i) == Some(d),
                    Known::Unavailable => false,
                });
                let archived_month = !w.replay
                    && periods::month_of(&ev.business_date)
                        .is_some_and(|m| archived.contains(&periods::first_day(m)));
                match (w.replay, earlier.or(in_inbox)) {
                    (false, Some(true)) => Outcome {
                        event_id: Some(ev.event_id.clone()),
                        status: Status::Duplicate,
                        journal_id: None,
                        raised: Vec::new(),
                    },
                    (false, Some(false)) => {
                        let why = if matches!(stored.get(&ev.event_id), Some(Known::Unavailable)) {
                            "was already received, but its stored row cannot be read (its month's partition is \
                             not attached)"
                        } else {
                            "was already received with a different payload"
                        };
                        let raised = vec![Raised::new(
                            "conflict",
                            format!(
                                "event {} {why}; this one is kept here and was not posted",
                                ev.event_id
                            ),
                            None,
                        )];
                        batch.writes.rejected(
                            Some(&ev.event_id),
                            Some(&ev.location),
                            &w.payload,
                            &raised,
                        );
                        Outcome {
                            event_id: Some(ev.event_id.clone()),
                            status: Status::Conflict,
                            journal_id: None,
                            raised,
                        }
                    }
                    _ if archived_month => {
                        let raised = vec![Raised::new(
                            "malformed",
                            format!(
                                "business_date: {} is in {}, an archived period: nothing can be posted into it; \
                                 resubmit the event with a date in an open month",
                                ev.business_date,
                                &ev.business_date[..7]
                            ),
                            None,
                        )];
                        batch.writes.rejected(
                            Some(&ev.event_id),
                            Some(&ev.location),
                            &w.payload,
                            &raised,
                        );
                        Outcome {
                            event_id: Some(ev.event_id.clone()),
                            status: Status::Rejected,
                            journal_id: None,
                            raised,
                        }
                    }
                    _ => {
                        let o = batch.post(ev, &w.payload, w.replay);
                        if o.status == Status::Applied && ev.kind == EventKind::TransferOut {
                            let k =
                                transfer_hold_key(ev.transfer_id.as_deref().unwrap_or_default());
                            for f in follow.remove(&k).unwrap_or_default() {
                                if let Ok(fev) = &f.parsed {
                                    batch.post(fev, &f.payload, true);
                                }
                            }
                            for (fev, payload) in batch.held_here.remove(&k).unwrap_or_default() {
                                batch.post(&fev, &payload, true);
                            }
                        }
                        o
                    }
                }
            }
        };
        if let Ok(ev) = &w.parsed {
            if outcome.status != Status::Conflict && outcome.status != Status::Rejected {
                seen.entry(ev.event_id.clone()).or_insert(i);
            }
        }
        outcomes.push(outcome);
    }
    let Batch {
        client,
        balances,
        writes,
        transfers,
        sequences,
        closes,
        ..
    } = batch;
    let transfers: Vec<TransferState> = transfers.into_values().flatten().collect();
    let ids = store::allocate_journal_ids(client, writes.journal_count());
    let journal_ids = writes.flush(client, &balances, &transfers, ids);
    sequence::check(client, sequences);
    for close in closes {
        run(client, CHECK_DAY_CLOSE, &[text(&close)]);
    }
    for o in outcomes.iter_mut() {
        if let Some(j) = o.journal_id {
            o.journal_id = journal_ids
                .get(&j)
                .copied()
                .or_else(|| internal("journal id was not assigned"));
        }
    }
    outcomes
}
