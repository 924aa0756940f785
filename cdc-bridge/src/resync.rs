//! `possync-bridge resync`: after a slot loss (or a publication changed while streaming, see
//! [`crate::publication`]), re-read the POS tables for a range of business dates and post what the ERP lacks, by
//! event id, exactly once, then let the bridge stream from a new slot (or from the POS's position now).
//!
//! The order makes it exact: the new slot is made first, so every POS transaction committed after its start is
//! streamed; the tables are read afterwards, so every row committed before that start (and after) is in the read.
//! Events read twice, or that the ERP already holds, come back `duplicate` by event id. The events and a record
//! of the resync go in one apply_batch call at the checkpoint plus one, which marks the loss as dealt with (see
//! [`crate::source`]'s slot guard): the running bridge then streams from the new slot at its next look.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use crate::apply::{BatchOutcome, Erp, ErpError};
use crate::lsn::Lsn;
use crate::mapping::{json_of_text, Change, ChangeOp, Mapping};
use crate::pgerr::describe;
use crate::replication::{ReplicationConnection, ReplicationError};
use crate::source::Source;

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(transparent)]
    Erp(#[from] ErpError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("POS query failed: {}", describe(.0))]
    Pos(#[from] tokio_postgres::Error),
    #[error("cannot connect to the POS: {0}")]
    PosConnect(#[from] crate::tls::ConnectError),
    #[error("{0}")]
    Refused(String),
}

/// What a resync did.
#[derive(Debug, Clone)]
pub struct ResyncReport {
    pub last_commit: Lsn,
    pub new_slot_start: Lsn,
    pub events_read: usize,
    pub outcome: BatchOutcome,
}

/// A business date as the POS writes it; anything else is refused before it reaches a query.
pub fn valid_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Rows of `sql` with their columns by name, values as the mapping sees streamed ones.
async fn rows(
    pos: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<serde_json::Map<String, Value>>, ResyncError> {
    let statement = pos.prepare(sql).await?;
    let types: Vec<(String, u32)> = statement
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect();
    let mut out = Vec::new();
    for message in pos.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = message {
            let mut m = serde_json::Map::new();
            for (i, (name, oid)) in types.iter().enumerate() {
                let v = match r.get(i) {
                    Some(t) => json_of_text(*oid, t),
                    None => Value::Null,
                };
                m.insert(name.clone(), v);
            }
            out.push(m);
        }
    }
    Ok(out)
}

fn text_key(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Re-posts the events of the POS rows whose business date is within `from..=to` (outbox payloads by their
/// `business_date`), for a source the bridge refused for a recorded loss.
pub async fn resync(
    erp_url: &str,
    source: &Source,
    mapping: &Mapping,
    from: &str,
    to: &str,
) -> Result<ResyncReport, ResyncError> {
    if !valid_date(from) || !valid_date(to) {
        return Err(ResyncError::Refused(
            "--from and --to take business dates as YYYY-MM-DD".into(),
        ));
    }
    let name = &source.name;
    let erp = Erp::connect(erp_url, true).await?;
    let refused = |checkpoint: Lsn| {
        ResyncError::Refused(format!(
            "source {name} is not refused for a slot loss or a broken publication (ERP checkpoint {checkpoint}); resync re-posts what a lost slot or a broken publication could not stream, after the bridge has recorded the loss"
        ))
    };
    let seen = erp.checkpoint(name).await?;
    if (seen.0 & 7) % 2 == 0 {
        return Err(refused(seen));
    }
    // the source's owner must not act on the slot meanwhile
    let deadline = Instant::now() + Duration::from_secs(60);
    while !erp.try_own(name).await? {
        if Instant::now() > deadline {
            return Err(ResyncError::Refused(format!(
                "another bridge has owned source {name} for a minute; is it streaming? resync is for a source refused for a recorded loss"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let checkpoint = erp.checkpoint(name).await?;
    let marks = checkpoint.0 & 7;
    let last_commit = Lsn(checkpoint.0 - marks);
    if marks % 2 == 0 {
        return Err(refused(checkpoint));
    }

    // the new slot first: everything committed after its start is streamed
    let slot = source.slot();
    let mut repl = ReplicationConnection::connect(&source.url).await?;
    let next = Lsn(checkpoint.0 + 1);
    let (start, at) = match repl.slot_state(&slot).await? {
        Some(s) if s.wal_status == "lost" => {
            repl.drop_slot(&slot).await?;
            (repl.create_slot(&slot).await?, next)
        }
        // a whole slot whose stream is not trusted after the checkpoint (made again after the loss, or its
        // publication changed while it streamed): the stream goes on from the POS's position now, past what the
        // tables read below hold
        Some(_) => {
            let now = repl.identify_system().await?.wal_position;
            (now, crate::source::rebased(now, next))
        }
        None => (repl.create_slot(&slot).await?, next),
    };
    drop(repl);

    // then the tables: everything committed before that start is in this read
    let pos = crate::tls::connect(&source.url).await?;
    pos.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 1; \
         SET default_transaction_isolation = 'repeatable read'; BEGIN",
    )
    .await?;
    let mut events: Vec<Value> = Vec::new();
    for em in mapping.event_mappings() {
        let Some(date_column) = em.fields.get("business_date").map(|f| f.column()) else {
            continue;
        };
        let filter = format!("{date_column} BETWEEN '{from}' AND '{to}'");
        let headers = rows(&pos, &format!("SELECT * FROM {} WHERE {filter}", em.table)).await?;
        // child rows by header key, in the order read
        type ByKey = std::collections::HashMap<String, Vec<serde_json::Map<String, Value>>>;
        let mut children: Vec<(String, ByKey)> = Vec::new();
        if let Some(key) = &em.key {
            for c in &em.children {
                let r = rows(
                    &pos,
                    &format!(
                        "SELECT * FROM {} WHERE {} IN (SELECT {key} FROM {} WHERE {filter})",
                        c.table, c.key, em.table
                    ),
                )
                .await?;
                let mut by_key = ByKey::new();
                for row in r {
                    by_key
                        .entry(text_key(row.get(&c.key)))
                        .or_default()
                        .push(row);
                }
                children.push((c.table.clone(), by_key));
            }
        }
        for header in headers {
            let key = em.key.as_ref().map(|k| text_key(header.get(k)));
            let mut changes = vec![Change {
                table: em.table.clone(),
                op: ChangeOp::Insert,
                row: header,
                old: None,
            }];
            if let Some(key) = key {
                for (table, by_key) in &mut children {
                    for row in by_key.remove(&key).unwrap_or_default() {
                        changes.push(Change {
                            table: table.clone(),
                            op: ChangeOp::Insert,
                            row,
                            old: None,
                        });
                    }
                }
            }
            events.extend(mapping.events_of(name, at, &changes));
        }
    }
    for o in mapping.outbox_mappings() {
        let r = rows(
            &pos,
            &format!(
                "SELECT * FROM {} WHERE {}->>'business_date' BETWEEN '{from}' AND '{to}'",
                o.table, o.column
            ),
        )
        .await?;
        for row in r {
            let changes = [Change {
                table: o.table.clone(),
                op: ChangeOp::Insert,
                row,
                old: None,
            }];
            events.extend(mapping.events_of(name, at, &changes));
        }
    }
    let _ = pos.batch_execute("COMMIT").await;
    let events_read = events.len();
    let reason = format!(
        "resync: the stream of source {name} after {last_commit} was lost (replication slot {slot} lost, or its publication changed while streaming); the POS rows of business dates {from} to {to} were re-read and posted ({events_read} events, those the ERP had are duplicates); POS transactions committed after {last_commit} and before the stream's new start {start} with other business dates were not re-read"
    );
    events.push(serde_json::json!({
        "event_id": format!("{name}:slot_loss_resynced:{last_commit}:{at}"),
        "kind": possync_events::UNMAPPED,
        "source": name,
        "reason": crate::pgerr::truncate_noting_length(&reason, crate::pgerr::REASON_MAX_CHARS),
        "slot_loss": {"what": "slot_loss_resynced", "lost_after": last_commit.to_string(),
                      "until": start.to_string(), "business_dates": [from, to]},
    }));
    let (outcome, _) = erp.apply_batch(name, at, &events).await?;
    if !outcome.applied {
        return Err(ResyncError::Refused(format!(
            "the ERP skipped the resync: its checkpoint for {name} moved past {checkpoint} meanwhile"
        )));
    }
    tracing::warn!(source = %name, checkpoint = %last_commit, new_slot_start = %start, from, to,
        events = events_read, applied = outcome.applied_events, duplicate = outcome.duplicate,
        "resync posted the re-read POS rows; the bridge streams from the new slot");
    Ok(ResyncReport {
        last_commit,
        new_slot_start: start,
        events_read,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_dates_reach_a_query() {
        assert!(valid_date("2026-11-26"));
        for bad in ["2026-11-2", "2026/11/26", "2026-11-26'", "'; DROP", ""] {
            assert!(!valid_date(bad), "{bad}");
        }
    }
}
