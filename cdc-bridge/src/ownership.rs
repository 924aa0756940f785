//! Ownership of a source that expires when its owner stops making progress (issue 13, D7).
//!
//! A bridge owns a source through a session-level advisory lock in the ERP, which lives exactly as long as its ERP
//! session. A frozen owner (SIGSTOP, a stuck runtime, a host that vanished, a network partition) used to keep that
//! session, and with it the source, for good: its kernel still answers TCP, so keepalives never end it.
//!
//! The owner's ERP session now ends on the server's side when the owner goes quiet:
//! - `idle_session_timeout` (PostgreSQL 14 and later, set per session, no privilege needed) ends a session that
//!   sent nothing for the owner timeout (default 10 s) while outside a transaction. A healthy owner never idles
//!   that long: while it has nothing to apply it sends `SELECT 1` every second; apply_batch runs in single
//!   statements, never in an open transaction, so there is no idle-in-transaction state to hang in.
//! - `tcp_user_timeout` (the same value) ends the session when data the server sent stays unacknowledged that
//!   long: a host that is gone while the server answers it, where the session is busy and not idle.
//!
//! A lease row renewed by the owner would need a table the bridge's role may write (it may only call apply_batch
//! and source_checkpoint) and would not stop a stale owner's next call by itself; ending the session releases the
//! lock and makes the stale owner's connection unusable in one step, so it cannot post anything after it lost the
//! source: a frozen owner that wakes up finds its ERP connection closed (its next call fails, nothing is sent to a
//! new session), its session ends, and it stands by. apply_batch's checkpoint (a commit LSN at or below it is
//! skipped) and the event ids (duplicates) stay as two more guards.
//!
//! The standby bridge, polling the lock every 500 ms, owns the source within the owner timeout. The stale owner's
//! walsender may still hold the replication slot (until `wal_sender_timeout`, 60 s by default): the new owner,
//! which holds the lock and so is the only rightful user of the slot, ends that walsender
//! (`pg_terminate_backend`, allowed for a backend of the same role) and starts streaming. Takeover bound: the owner
//! timeout plus about 2 s (the standby's poll, its session start, ending the stale walsender).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::replication::ReplicationError;

/// How long an owner may go without a word to the ERP before its session, and the source, are taken from it.
pub const DEFAULT_OWNER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the stale walsender to let the slot go once asked to end.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The statements that make the server end this session when it goes quiet for `timeout`.
pub fn session_settings(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!("SET idle_session_timeout = {ms}; SET tcp_user_timeout = {ms}")
}

/// The settings of an apply lane's session (see [`crate::lanes`]): it holds no ownership lock, so it may stay
/// quiet between groups; a transaction it leaves open (a frozen bridge) is ended by the server after `timeout`,
/// with the lane row it locked, so the next owner's lanes do not wait behind it.
pub fn lane_session_settings(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!("SET idle_in_transaction_session_timeout = {ms}; SET tcp_user_timeout = {ms}")
}

/// True when START_REPLICATION failed because another process still streams the slot (SQLSTATE 55006).
pub fn slot_in_use(e: &ReplicationError) -> bool {
    matches!(e, ReplicationError::Server { code, .. } if code == "55006")
}

/// Why a stale walsender could not be ended.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("POS query failed while ending the previous owner's walsender: {}", crate::pgerr::describe(.0))]
    Pos(#[from] tokio_postgres::Error),
    #[error("replication slot {slot} is still used by PID {pid} {waited:?} after it was asked to end (pg_terminate_backend said {ended}); the role may lack the right to end it: grant it pg_signal_backend, or wait for the POS's wal_sender_timeout")]
    StillActive {
        slot: String,
        pid: i32,
        ended: bool,
        waited: Duration,
    },
}

/// Ends the walsender that still streams `slot` for a previous owner, and waits until the slot is free. Called
/// only by the owner of the source (it holds the ERP lock), so whoever else streams the slot is stale.
pub async fn end_stale_walsender(
    pos: &Client,
    source: &str,
    slot: &str,
) -> Result<(), TakeoverError> {
    let row = pos
        .query_opt(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
            &[&slot],
        )
        .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let pid: i32 = row.try_get(0)?;
    let ended: bool = row.try_get(1)?;
    tracing::warn!(source, slot, pid, ended,
        "the replication slot was still streamed by another process although this bridge now owns the source in the ERP (a previous owner that stopped making progress); ended it");
    let started = Instant::now();
    loop {
        let active: Option<i32> = pos
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .and_then(|r| r.try_get(0).ok())
            .flatten();
        if active != Some(pid) {
            return Ok(());
        }
        if started.elapsed() > RELEASE_WAIT {
            return Err(TakeoverError::StillActive {
                slot: slot.to_string(),
                pid,
                ended,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_ends_after_the_timeout_of_silence() {
        assert_eq!(
            session_settings(Duration::from_secs(10)),
            "SET idle_session_timeout = 10000; SET tcp_user_timeout = 10000"
        );
        let busy = ReplicationError::Server {
            code: "55006".into(),
            message: "replication slot \"possync_s\" is active for PID 42".into(),
            detail: None,
            hint: None,
        };
        assert!(slot_in_use(&busy));
        assert!(!slot_in_use(&ReplicationError::Closed));
    }
}
