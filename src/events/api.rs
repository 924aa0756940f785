//! What SQL can call to post events: apply_event, apply_events, apply_batch, replay_held, resubmit,
//! reverse_event.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use super::batch::{apply, Outcome, Status, Submission};
use super::input::{read_array, read_one, JsonbText};
use super::store;
use crate::errors::{misuse, null_argument};
use crate::statements::{get_text, run, text};

fn outcomes_json(outcomes: &[Outcome]) -> Value {
    Value::Array(outcomes.iter().map(Outcome::to_json).collect())
}

/// Posts one event; returns {event_id, status, journal_id, exceptions}. Never raises for bad event data.
#[pg_extern]
fn apply_event(event: Option<JsonbText>) -> JsonB {
    let Some(JsonbText(body)) = event else {
        null_argument("possync.apply_event", "event")
    };
    let sub = Submission::read(read_one(&body));
    let outcomes = Spi::connect_mut(|client| apply(client, vec![sub], None));
    JsonB(
        outcomes
            .first()
            .map(Outcome::to_json)
            .unwrap_or(Value::Null),
    )
}

/// Posts a JSON array of events in order, in one call; returns one result per event.
#[pg_extern]
fn apply_events(events: Option<JsonbText>) -> JsonB {
    let Some(JsonbText(body)) = events else {
        null_argument("possync.apply_events", "events")
    };
    let list = event_list("possync.apply_events", &body);
    let outcomes = Spi::connect_mut(|client| apply(client, list, None));
    JsonB(outcomes_json(&outcomes))
}

fn event_list(function: &str, text: &str) -> Vec<Submission> {
    match read_array(text) {
        Ok(items) => items.into_iter().map(Submission::read).collect(),
        Err(type_name) => misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{function}: argument events must be a JSON array of events, got {type_name}"),
            "wrap a single event in [ ] or call possync.apply_event",
        ),
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`), as a number for comparison.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

const LOCK_SOURCE: &str =
    "INSERT INTO possync.source (source_id) VALUES ($1) ON CONFLICT DO NOTHING";
const SOURCE_CHECKPOINT: &str =
    "SELECT checkpoint::text FROM possync.source WHERE source_id = $1 FOR UPDATE";
const ADVANCE_SOURCE: &str =
    "UPDATE possync.source SET checkpoint = $2::pg_lsn, applied_at = now(), \
        events_applied = events_applied + $3::bigint WHERE source_id = $1";

/// The bridge's door (called through the SQL wrapper possync.apply_batch with a pg_lsn): applies the
/// events and moves the source's checkpoint in the caller's transaction, or skips a batch already applied.
#[pg_extern]
fn apply_batch_at(
    source: Option<&str>,
    commit_lsn: Option<&str>,
    events: Option<JsonbText>,
) -> JsonB {
    let f = "possync.apply_batch";
    let Some(source) = source else {
        null_argument(f, "source")
    };
    if source.trim().is_empty() {
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{f}: argument source must not be empty"),
            "name the stream, for example the store or POS database it comes from",
        );
    }
    let Some(lsn_text) = commit_lsn else {
        null_argument(f, "commit_lsn")
    };
    let Some(lsn) = parse_lsn(lsn_text) else {
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{f}: argument commit_lsn {lsn_text:?} is not an LSN"),
            "pass the commit LSN of the last POS transaction in the batch, as pg_lsn",
        )
    };
    let Some(JsonbText(body)) = events else {
        null_argument(f, "events")
    };
    let list = event_list(f, &body);
    let result = Spi::connect_mut(|client| {
        run(client, LOCK_SOURCE, &[text(source)]);
        let checkpoint = run(client, SOURCE_CHECKPOINT, &[text(source)])
            .next()
            .and_then(|row| get_text(&row, 1))
            .unwrap_or_else(|| "0/0".into());
        if lsn <= parse_lsn(&checkpoint).unwrap_or(0) {
            return json!({"status": "skipped", "source": source, "commit_lsn": lsn_text,
                          "checkpoint": checkpoint, "results": []});
        }
        let outcomes = apply(client, list, Some(source));
        let applied = outcomes
            .iter()
            .filter(|o| o.status == Status::Applied)
            .count() as i64;
        run(
            client,
            ADVANCE_SOURCE,
            &[
                text(source),
                text(lsn_text),
                pgrx::datum::DatumWithOid::from(applied),
            ],
        );
        json!({"status": "applied", "source": source, "commit_lsn": lsn_text, "results": outcomes_json(&outcomes)})
    });
    JsonB(result)
}

/// Posts held events that can now post (all, or one); returns how many posted.
#[pg_extern]
fn replay_held(event_id: default!(Option<&str>, "NULL")) -> i32 {
    Spi::connect_mut(|client| {
        let held = store::held(client, event_id);
        if let (Some(id), true) = (event_id, held.is_empty()) {
            misuse(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("possync.replay_held: argument event_id {id:?} is not a held event"),
                "list held events with SELECT event_id FROM possync.event WHERE status = 'held'",
            );
        }
        let subs = held
            .into_iter()
            .map(|(_, raw)| Submission {
                replay: true,
                ..Submission::new(raw)
            })
            .collect();
        let outcomes = apply(client, subs, None);
        outcomes
            .iter()
            .filter(|o| o.status == Status::Applied)
            .count() as i32
    })
}

const OPEN_REJECTION: &str =
    "SELECT kind, status, event_id FROM possync.exception WHERE exception_id = $1 FOR UPDATE";
const RESOLVE: &str =
    "UPDATE possync.exception SET status = 'resolved', resolved_at = now(), resolution = $2 \
     WHERE exception_id = $1";

/// Applies a corrected payload for a rejected or conflicting event and resolves its exception.
#[pg_extern]
fn resubmit(exception_id: Option<i64>, event: Option<JsonbText>) -> JsonB {
    let f = "possync.resubmit";
    let Some(id) = exception_id else {
        null_argument(f, "exception_id")
    };
    let Some(JsonbText(body)) = event else {
        null_argument(f, "event")
    };
    let submission = Submission::read(read_one(&body));
    let result = Spi::connect_mut(|client| {
        let row = run(
            client,
            OPEN_REJECTION,
            &[pgrx::datum::DatumWithOid::from(id)],
        )
        .next()
        .map(|r| {
            (
                get_text(&r, 1).unwrap_or_default(),
                get_text(&r, 2).unwrap_or_default(),
                get_text(&r, 3),
            )
        });
        let Some((kind, status, rejected_id)) = row else {
            misuse(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("{f}: argument exception_id {id} does not exist"),
                "find rejected events with SELECT * FROM possync.open_exceptions",
            )
        };
        if status != "open" {
            misuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{f}: argument exception_id {id} is already resolved"),
                "resubmit only open exceptions",
            );
        }
        if !matches!(kind.as_str(), "malformed" | "conflict" | "negative_on_hand") {
            misuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "{f}: argument exception_id {id} is a {kind} exception, not a rejected event"
                ),
                "held events post with possync.replay_held() once the missing data exists",
            );
        }
        let outcome = apply(client, vec![submission], None)
            .into_iter()
            .next()
            .unwrap_or_else(|| crate::statements::internal("apply returned no outcome"));
        // a duplicate settles the exception only when it is the rejected event itself that is now in the
        // inbox: another event's payload posts nothing for this one
        let settled = match outcome.status {
            Status::Applied | Status::Held => true,
            Status::Duplicate => rejected_id.is_some() && outcome.event_id == rejected_id,
            _ => false,
        };
        if settled {
            let note = format!(
                "resubmitted as event {}: {}",
                outcome.event_id.clone().unwrap_or_default(),
                outcome.status.as_str()
            );
            run(
                client,
                RESOLVE,
                &[pgrx::datum::DatumWithOid::from(id), text(&note)],
            );
        }
        outcome.to_json()
    });
    JsonB(result)
}
