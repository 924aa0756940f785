//! The ERP side: the per-source advisory lock, the checkpoint, and `possync.apply_batch`.

use serde_json::Value;
use tokio_postgres::{Client, Statement};

use crate::lsn::Lsn;
use crate::pgerr::{classify, ErrorClass, ServerError};

/// First key of the advisory lock that says which bridge owns a source (ASCII "PS").
const LOCK_CLASS: i32 = 0x5053;

/// Why an ERP call failed.
#[derive(Debug, thiserror::Error)]
pub enum ErpError {
    #[error("ERP database error: {}", crate::pgerr::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("cannot connect to the ERP: {0}")]
    Connect(#[from] crate::tls::ConnectError),
    #[error("apply_batch returned something other than JSON: {0}")]
    Response(#[from] serde_json::Error),
    #[error("bad checkpoint from the ERP: {0}")]
    Checkpoint(#[from] crate::lsn::BadLsn),
    #[error("the ERP refused a POS transaction and its rejected form")]
    Refused,
    /// Reading a spilled transaction's file failed (see [`crate::spill`]); the stream resends the transaction.
    #[error("a spilled POS transaction: {0}")]
    Spill(String),
    /// The batch may have committed; asking where the ERP's WAL stands failed.
    #[error("reading the ERP's WAL position after a batch: {0}")]
    AfterApply(Box<ErpError>),
    /// A statement that always answers with a row answered with none.
    #[error("the ERP returned no row for {0}")]
    NoAnswer(&'static str),
}

impl ErpError {
    /// Whether retrying the same call may succeed (see [`crate::pgerr::classify`]); only a server error about
    /// the data is not worth retrying.
    pub fn class(&self) -> ErrorClass {
        match self {
            ErpError::Db(e) => classify(e),
            ErpError::Connect(e) => e.db().map_or(ErrorClass::Transient, classify),
            ErpError::Response(_)
            | ErpError::Checkpoint(_)
            | ErpError::Refused
            | ErpError::Spill(_)
            | ErpError::AfterApply(_)
            | ErpError::NoAnswer(_) => ErrorClass::Transient,
        }
    }

    /// The server's fields, when the server raised the error.
    pub fn server(&self) -> Option<ServerError> {
        match self {
            ErpError::Db(e) => ServerError::of(e),
            _ => None,
        }
    }
}

/// What one apply_batch call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// False when the ERP said `skipped` (the commit LSN was at or below its checkpoint).
    pub applied: bool,
    pub applied_events: u64,
    pub duplicate: u64,
    pub conflict: u64,
    pub held: u64,
    pub rejected: u64,
}

/// The call every batch makes, prepared once per connection: one round trip per batch instead of two.
const APPLY_BATCH: &str = "SELECT possync.apply_batch($1, $2::text::pg_lsn, $3::text::jsonb)::text";
/// The same for one apply lane (see [`crate::lanes`]).
const APPLY_LANE_BATCH: &str =
    "SELECT possync.apply_batch($1, $2::text::pg_lsn, $3::text::jsonb, $4::int4, $5::int4)::text";
/// The ERP's WAL positions: where the next record goes (past any commit already made) and what is on disk.
const WAL: &str = "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text";

/// A connection to the ERP database.
pub struct Erp {
    client: Client,
    apply: Statement,
    wal: Statement,
    /// This session applies lane `.0` of `.1` (see [`crate::lanes`]); None: the source's own door.
    lane: Option<(i32, i32)>,
}

/// Where the ERP's WAL stands after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErpWal {
    /// At or past the end of the batch's commit record: once flushed this far, the batch is durable.
    pub written: Lsn,
    /// What the ERP has flushed to disk.
    pub flushed: Lsn,
}

impl Erp {
    /// Connects; the connection's driver runs as its own task. Unless `synchronous_commit`, the session's
    /// commits do not wait for the WAL flush; callers confirm positions with [`Erp::wal`].
    pub async fn connect(url: &str, synchronous_commit: bool) -> Result<Erp, ErpError> {
        let client = crate::tls::connect(url).await?;
        if !synchronous_commit {
            client.batch_execute("SET synchronous_commit = off").await?;
        }
        let apply = client.prepare(APPLY_BATCH).await?;
        let wal = client.prepare(WAL).await?;
        Ok(Erp {
            client,
            apply,
            wal,
            lane: None,
        })
    }

    /// Connects a session that applies lane `lane` of `lanes` of a source (see [`crate::lanes`]).
    pub async fn connect_lane(
        url: &str,
        synchronous_commit: bool,
        lane: usize,
        lanes: usize,
    ) -> Result<Erp, ErpError> {
        let mut erp = Erp::connect(url, synchronous_commit).await?;
        erp.apply = erp.client.prepare(APPLY_LANE_BATCH).await?;
        erp.lane = Some((lane as i32, lanes as i32));
        Ok(erp)
    }

    /// The lane this session applies, as (lane, lanes).
    pub fn lane(&self) -> Option<(usize, usize)> {
        self.lane.map(|(l, n)| (l as usize, n as usize))
    }

    /// Sets the source up to be applied in `lanes` sessions (`possync.start_lanes`) and returns each lane's
    /// checkpoint, lane 0 first.
    pub async fn start_lanes(&self, source: &str, lanes: usize) -> Result<Vec<Lsn>, ErpError> {
        let rows = self
            .client
            .query(
                "SELECT checkpoint::text FROM possync.start_lanes($1, $2::int4) ORDER BY lane",
                &[&source, &(lanes as i32)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let text: String = r.get(0);
            out.push(text.parse()?);
        }
        Ok(out)
    }

    /// The connection, for the statements of a document group (see [`crate::mirror`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes the server end this session, and with it the ownership lock, after `timeout` without a word from
    /// the bridge (see [`crate::ownership`]). A server without `idle_session_timeout` (before PostgreSQL 14) is
    /// said at WARN: there, a frozen owner keeps its sources.
    pub async fn expire_when_idle(&self, timeout: std::time::Duration) -> Result<(), ErpError> {
        match self
            .client
            .batch_execute(&crate::ownership::session_settings(timeout))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                tracing::warn!(error = %crate::pgerr::describe(&e),
                    "the ERP server cannot end a quiet session (idle_session_timeout needs PostgreSQL 14): a frozen bridge keeps the sources it owns");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One round trip, so that an owner with nothing to apply is not taken for a frozen one.
    pub async fn ping(&self) -> Result<(), ErpError> {
        self.client.batch_execute("SELECT 1").await?;
        Ok(())
    }

    /// True once the connection is gone (and with it the ownership lock).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Tries once to become the owner of `source`; the lock lives as long as this connection.
    pub async fn try_own(&self, source: &str) -> Result<bool, ErpError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &source],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Where the source's stream must resume.
    pub async fn checkpoint(&self, source: &str) -> Result<Lsn, ErpError> {
        let row = self
            .client
            .query_one("SELECT possync.source_checkpoint($1)::text", &[&source])
            .await?;
        let text: String = row.get(0);
        Ok(text.parse()?)
    }

    /// Applies the events of consecutive POS transactions whose last commit is `commit_lsn`, in one ERP
    /// transaction that also advances the checkpoint.
    pub async fn apply_batch(
        &self,
        source: &str,
        commit_lsn: Lsn,
        events: &impl serde::Serialize,
    ) -> Result<(BatchOutcome, ErpWal), ErpError> {
        let payload = serde_json::to_string(events)?;
        let lsn = commit_lsn.to_string();
        // pipelined in one round trip: `join` polls the apply first, so it is sent first, and the WAL query
        // runs after the batch's transaction has committed
        let apply = async {
            match self.lane {
                None => {
                    self.client
                        .query_one(&self.apply, &[&source, &lsn, &payload])
                        .await
                }
                Some((lane, lanes)) => {
                    self.client
                        .query_one(&self.apply, &[&source, &lsn, &payload, &lane, &lanes])
                        .await
                }
            }
        };
        let (row, wal) = futures::future::join(apply, self.wal()).await;
        let text: String = row?.get(0);
        // never about the batch's data: retried, and the checkpoint skips the batch if it did commit
        let wal = wal.map_err(|e| ErpError::AfterApply(Box::new(e)))?;
        Ok((outcome_of(&serde_json::from_str(&text)?), wal))
    }

    /// The ERP's WAL positions now.
    pub async fn wal(&self) -> Result<ErpWal, ErpError> {
        let row = self.client.query_one(&self.wal, &[]).await?;
        let written: String = row.get(0);
        let flushed: String = row.get(1);
        Ok(ErpWal {
            written: written.parse()?,
            flushed: flushed.parse()?,
        })
    }
}

/// Counts the per-event statuses of an apply_batch answer.
pub fn outcome_of(answer: &Value) -> BatchOutcome {
    let mut o = BatchOutcome {
        applied: answer.get("status").and_then(Value::as_str) != Some("skipped"),
        ..BatchOutcome::default()
    };
    if let Some(results) = answer.get("results").and_then(Value::as_array) {
        for r in results {
            match r.get("status").and_then(Value::as_str) {
                Some("applied") => o.applied_events += 1,
                Some("duplicate") => o.duplicate += 1,
                Some("conflict") => o.conflict += 1,
                Some("held") => o.held += 1,
                Some("rejected") => o.rejected += 1,
                _ => {}
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_statuses_and_recognises_skipped() {
        let o = outcome_of(&json!({"status": "applied", "results": [
            {"status": "applied"}, {"status": "applied"}, {"status": "rejected"},
            {"status": "held"}, {"status": "duplicate"}, {"status": "conflict"}]}));
        assert_eq!(
            o,
            BatchOutcome {
                applied: true,
                applied_events: 2,
                duplicate: 1,
                conflict: 1,
                held: 1,
                rejected: 1
            }
        );
        assert!(!outcome_of(&json!({"status": "skipped"})).applied);
    }
}
