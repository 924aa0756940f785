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
// A single session takes the source back from apply lanes: the lanes' rows go, and the source resumes from the
// least of their checkpoints (what each lane applied past it is found a duplicate by its event id).
const FOLD_LANES: &str = "WITH gone AS (DELETE FROM possync.source_lane WHERE source_id = $1 \
        RETURNING checkpoint, events_applied) \
     UPDATE possync.source s SET checkpoint = (SELECT min(checkpoint) FROM gone), \
            events_applied = s.events_applied + (SELECT sum(events_applied) FROM gone) \
      WHERE s.source_id = $1 AND EXISTS (SELECT 1 FROM gone)";
const LANE_CHECKPOINT: &str = "SELECT checkpoint::text, lanes FROM possync.source_lane \
     WHERE source_id = $1 AND lane = $2 FOR UPDATE";
const ADVANCE_LANE: &str =
    "UPDATE possync.source_lane SET checkpoint = $3::pg_lsn, applied_at = now(), \
        events_applied = events_applied + $4::bigint WHERE source_id = $1 AND lane = $2";

/// The most apply lanes one source may be split into.
pub const MAX_LANES: i32 = 64;

/// The bridge's door (called through the SQL wrapper possync.apply_batch with a pg_lsn): applies the
/// events and moves the source's checkpoint in the caller's transaction, or skips a batch already applied.
#[pg_extern]
fn apply_batch_at(
    source: Option<&str>,
    commit_lsn: Option<&str>,
    events: Option<JsonbText>,
) -> JsonB {
    door("possync.apply_batch", source, commit_lsn, events, None)
}

/// The door of one apply lane (called through possync.apply_batch(source, commit_lsn, events, lane, lanes)):
/// the same as apply_batch, against the lane's own checkpoint, which possync.start_lanes set up. Lanes of one
/// source post in parallel sessions without waiting for each other: none of them writes the source's row.
#[pg_extern]
fn apply_lane_batch_at(
    source: Option<&str>,
    commit_lsn: Option<&str>,
    events: Option<JsonbText>,
    lane: Option<i32>,
    lanes: Option<i32>,
) -> JsonB {
    let f = "possync.apply_batch";
    let Some(lane) = lane else {
        null_argument(f, "lane")
    };
    let Some(lanes) = lanes else {
        null_argument(f, "lanes")
    };
    if !(1..=MAX_LANES).contains(&lanes) {
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{f}: argument lanes is {lanes}, not between 1 and {MAX_LANES}"),
            "pass the number of apply lanes given to possync.start_lanes",
        );
    }
    if !(0..lanes).contains(&lane) {
        misuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{f}: argument lane is {lane}, not between 0 and lanes - 1 = {}",
                lanes - 1
            ),
            "lanes are numbered from 0",
        );
    }
    door(f, source, commit_lsn, events, Some((lane, lanes)))
}

fn door(
    f: &str,
    source: Option<&str>,
    commit_lsn: Option<&str>,
    events: Option<JsonbText>,
    lane: Option<(i32, i32)>,
) -> JsonB {
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
        let checkpoint = match lane {
            None => {
                run(client, LOCK_SOURCE, &[text(source)]);
                // a database still on 0.3.0 or earlier (until it is updated) has no lanes
                if super::periods::has_table("source_lane") {
                    run(client, FOLD_LANES, &[text(source)]);
                }
                run(client, SOURCE_CHECKPOINT, &[text(source)])
                    .next()
                    .and_then(|row| get_text(&row, 1))
                    .unwrap_or_else(|| "0/0".into())
            }
            Some((lane, lanes)) => {
                let row = run(
                    client,
                    LANE_CHECKPOINT,
                    &[text(source), pgrx::datum::DatumWithOid::from(lane)],
                )
                .next()
                .map(|row| {
                    (
                        get_text(&row, 1).unwrap_or_else(|| "0/0".into()),
                        row.get::<i32>(2).ok().flatten(),
                    )
                });
                match row {
                    Some((checkpoint, Some(n))) if n == lanes => checkpoint,
                    other => misuse(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!(
                            "{f}: source {source:?} is not applied in {lanes} lanes{}",
                            match other {
                                Some((_, Some(n))) => format!(" (its lanes were started as {n})"),
                                _ => String::new(),
                            }
                        ),
                        "call possync.start_lanes(source, lanes) once before applying in lanes",
                    ),
                }
            }
        };
        if lsn <= parse_lsn(&checkpoint).unwrap_or(0) {
            let mut skipped = json!({"status": "skipped", "source": source, "commit_lsn": lsn_text,
                          "checkpoint": checkpoint, "results": []});
            if let Some((lane, _)) = lane {
                skipped["lane"] = json!(lane);
            }
            return skipped;
        }
        let outcomes = apply(client, list, Some(source));
        let applied = outcomes
            .iter()
            .filter(|o| o.status == Status::Applied)
            .count() as i64;
        let applied = pgrx::datum::DatumWithOid::from(applied);
        match lane {
            None => run(
                client,
                ADVANCE_SOURCE,
                &[text(source), text(lsn_text), applied],
            ),
            Some((lane, _)) => run(
                client,
                ADVANCE_LANE,
                &[
                    text(source),
                    pgrx::datum::DatumWithOid::from(lane),
                    text(lsn_text),
                    applied,
                ],
            ),
        };
        let mut answer = json!({"status": "applied", "source": source, "commit_lsn": lsn_text,
                                "results": outcomes_json(&outcomes)});
        if let Some((lane, _)) = lane {
            answer["lane"] = json!(lane);
        }
        answer
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
