//! Lag as the POS sees it (issue 13, D6).
//!
//! A watcher per source reads, every [`SAMPLE_EVERY`] and on an ordinary POS connection of its own, the POS's WAL
//! position (`pg_current_wal_lsn()`) and the slot's `confirmed_flush_lsn`. It runs whatever the session does, so
//! the figures keep moving while the ERP, the stream or the session is down, and in a standby bridge.
//!
//! What the ERP is known to hold, the *settled* position, is the larger of
//! - the slot's confirmed position (what a bridge told the POS the ERP has flushed), and
//! - while this process streams the source: the last commit the ERP committed, or everything the walsender has
//!   sent (its `wal_end`) when every transaction received is committed in the ERP and none is half received.
//!
//! The second term is what keeps an idle POS at 0: background WAL (checkpoints, `xl_running_xacts`, other
//! databases) moves the POS's position past the slot's confirmed one until the next status update, but the
//! walsender sends its position with a keepalive at once, and the bridge holds nothing for it.
//!
//! - `lag_bytes`: the POS's position minus the settled one (never below 0).
//! - `lag_seconds`: the longer of (a) how long ago the oldest POS position read and not yet settled was first
//!   seen, and (b) while streaming, the age of the oldest POS transaction received and not yet committed in the
//!   ERP (its POS commit time). (a) grows while nothing is applied, for whatever reason, also in a bridge
//!   restarted before its first apply (from its first reading: it cannot know how long the POS was behind
//!   before it started, but a backlog's first transaction gives its age through (b) as soon as it arrives).
//!   Both are 0 once the ERP holds everything the POS had.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::lsn::Lsn;
use crate::metrics::SourceMetrics;
use crate::replication::PG_EPOCH_OFFSET_MICROS;

/// How often the POS positions are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Positions kept while behind; when full the second oldest is dropped, so the oldest still says since when.
const MAX_SAMPLES: usize = 4096;
/// Transactions kept for their commit times; past this many the newest are not noted (the oldest matter).
const MAX_UNAPPLIED: usize = 65_536;

const READ: &str = "SELECT pg_current_wal_lsn()::text, \
     (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)";

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// POS WAL positions read and not yet settled, oldest first, each with the time it was first seen.
#[derive(Debug, Default)]
pub struct Samples(VecDeque<(u64, Lsn)>);

impl Samples {
    /// Notes the position read at `at` (Unix microseconds); positions not past the last one add nothing.
    pub fn push(&mut self, at: u64, position: Lsn) {
        if self.0.back().is_some_and(|&(_, l)| position <= l) {
            return;
        }
        if self.0.len() >= MAX_SAMPLES {
            self.0.remove(1);
        }
        self.0.push_back((at, position));
    }

    /// Forgets the positions at or below `settled`; returns when the oldest one left was first seen.
    pub fn pending_since(&mut self, settled: Lsn) -> Option<u64> {
        while self.0.front().is_some_and(|&(_, l)| l <= settled) {
            self.0.pop_front();
        }
        self.0.front().map(|&(t, _)| t)
    }
}

/// The lag figures of one source at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    pub bytes: u64,
    pub micros: u64,
}

/// What the watcher reads on the POS and what the session tells about its stream.
#[derive(Debug, Default)]
pub struct LagState {
    /// The POS's WAL position at the last reading (0: never read).
    pos_wal: AtomicU64,
    /// The slot's confirmed position at the last reading.
    slot_confirmed: AtomicU64,
    /// Whether the slot existed at the last reading.
    slot_exists: AtomicBool,
    /// Whether the last reading succeeded.
    reachable: AtomicBool,
    samples: Mutex<Samples>,
    /// True while this process streams the source.
    live: AtomicBool,
    /// Commit LSN of the last transaction handed to the applier in this session.
    handed: AtomicU64,
    /// A transaction is half received (between its Begin and its Commit).
    assembling: AtomicBool,
    /// Transactions handed and maybe not applied yet: (commit LSN, POS commit time in PostgreSQL microseconds).
    unapplied: Mutex<VecDeque<(Lsn, i64)>>,
}

/// Ends the stream's part in the figures when the session ends, however it ends.
pub struct Streaming<'a>(&'a LagState);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.live.store(false, Ordering::Release);
        self.0.assembling.store(false, Ordering::Release);
        if let Ok(mut u) = self.0.unapplied.lock() {
            u.clear();
        }
    }
}

impl LagState {
    /// The session starts streaming; its stream counts until the returned guard is dropped.
    pub fn streaming(&self) -> Streaming<'_> {
        self.handed.store(0, Ordering::Release);
        self.assembling.store(false, Ordering::Release);
        if let Ok(mut u) = self.unapplied.lock() {
            u.clear();
        }
        self.live.store(true, Ordering::Release);
        Streaming(self)
    }

    /// A committed transaction was handed to the applier.
    pub fn handed(&self, commit_lsn: Lsn, commit_time: i64) {
        if let Ok(mut u) = self.unapplied.lock() {
            if u.len() < MAX_UNAPPLIED {
                u.push_back((commit_lsn, commit_time));
            }
        }
        self.handed.fetch_max(commit_lsn.0, Ordering::AcqRel);
    }

    /// Whether a transaction is half received now.
    pub fn assembling(&self, yes: bool) {
        self.assembling.store(yes, Ordering::Release);
    }

    /// Whether the POS positions could be read at the last attempt.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// The POS's WAL position at the last reading.
    pub fn pos_wal(&self) -> Lsn {
        Lsn(self.pos_wal.load(Ordering::Acquire))
    }

    /// Records one reading of the POS taken at `at` (Unix microseconds).
    pub fn read(&self, at: u64, pos_wal: Lsn, slot_confirmed: Option<Lsn>) {
        self.pos_wal.store(pos_wal.0, Ordering::Release);
        self.slot_confirmed
            .store(slot_confirmed.unwrap_or(Lsn::ZERO).0, Ordering::Release);
        self.slot_exists
            .store(slot_confirmed.is_some(), Ordering::Release);
        self.reachable.store(true, Ordering::Release);
        if let Ok(mut s) = self.samples.lock() {
            s.push(at, pos_wal);
        }
    }

    /// The POS could not be read; the figures keep ageing from the last reading.
    pub fn unreachable(&self) {
        self.reachable.store(false, Ordering::Release);
    }

    /// What the ERP is known to hold (see the module documentation). `applied`: the last commit LSN the ERP
    /// committed (the session's checkpoint); `received`: the walsender's last `wal_end`.
    pub fn settled(&self, applied: Lsn, received: Lsn) -> Lsn {
        // the slot's position, or without a slot (not made yet, or lost) the ERP's checkpoint
        let confirmed = if self.slot_exists.load(Ordering::Acquire) {
            Lsn(self.slot_confirmed.load(Ordering::Acquire))
        } else {
            crate::source::last_commit_of(applied)
        };
        if !self.live.load(Ordering::Acquire) {
            return confirmed;
        }
        let handed = Lsn(self.handed.load(Ordering::Acquire));
        let idle = !self.assembling.load(Ordering::Acquire) && applied >= handed;
        let stream = if idle { applied.max(received) } else { applied };
        confirmed.max(stream)
    }

    /// The figures now (`now`: Unix microseconds).
    pub fn figures(&self, now: u64, applied: Lsn, received: Lsn) -> Figures {
        let settled = self.settled(applied, received);
        let pos = self.pos_wal();
        let read_lag = self
            .samples
            .lock()
            .ok()
            .and_then(|mut s| s.pending_since(settled))
            .map_or(0, |since| now.saturating_sub(since));
        let stream_lag = if self.live.load(Ordering::Acquire) {
            self.unapplied
                .lock()
                .ok()
                .and_then(|mut u| {
                    while u.front().is_some_and(|&(l, _)| l <= applied) {
                        u.pop_front();
                    }
                    u.front().map(|&(_, t)| t)
                })
                .map_or(0, |commit| {
                    let unix = u64::try_from(commit.saturating_add(PG_EPOCH_OFFSET_MICROS))
                        .unwrap_or_default();
                    now.saturating_sub(unix)
                })
        } else {
            0
        };
        let bytes = if pos > Lsn::ZERO {
            pos.0.saturating_sub(settled.0)
        } else {
            // not read yet: what the stream announced minus what the ERP committed
            received.0.saturating_sub(applied.0)
        };
        Figures {
            bytes,
            micros: read_lag.max(stream_lag),
        }
    }
}

/// Reads the POS positions every [`SAMPLE_EVERY`] until `shutdown`, into `metrics`.
pub async fn watch(
    url: String,
    slot: String,
    metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let result = match &client {
            Some(c) if !c.is_closed() => read(c, &slot).await,
            _ => match crate::tls::connect(&url).await {
                Ok(c) => {
                    let r = read(&c, &slot).await;
                    client = Some(c);
                    r
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok((pos, confirmed)) => {
                if failing {
                    tracing::info!(source = %metrics.name, "reading the POS's WAL position for the lag again");
                    failing = false;
                }
                metrics.lag.read(unix_micros(), pos, confirmed);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(source = %metrics.name, error = %e,
                        "cannot read the POS's WAL position for the lag; the lag keeps ageing from the last reading");
                    failing = true;
                }
                metrics.lag.unreachable();
            }
        }
    }
}

async fn read(c: &tokio_postgres::Client, slot: &str) -> Result<(Lsn, Option<Lsn>), String> {
    let row = c
        .query_one(READ, &[&slot])
        .await
        .map_err(|e| crate::pgerr::describe(&e))?;
    let text = |i: usize| -> Result<Option<String>, String> {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| crate::pgerr::describe(&e))
    };
    let pos = text(0)?
        .ok_or("pg_current_wal_lsn() returned NULL")?
        .parse()
        .map_err(|e| format!("pg_current_wal_lsn(): {e}"))?;
    let confirmed = match text(1)? {
        Some(t) => Some(t.parse().map_err(|e| format!("confirmed_flush_lsn: {e}"))?),
        None => None,
    };
    Ok((pos, confirmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_position_is_pending_from_its_first_sighting_until_settled() {
        let mut s = Samples::default();
        s.push(10 * S, Lsn(100));
        s.push(11 * S, Lsn(100));
        s.push(12 * S, Lsn(300));
        assert_eq!(s.pending_since(Lsn(50)), Some(10 * S));
        assert_eq!(s.pending_since(Lsn(100)), Some(12 * S));
        assert_eq!(s.pending_since(Lsn(300)), None);
        for i in 0..(MAX_SAMPLES as u64 * 2) {
            s.push((20 + i) * S, Lsn(1000 + i));
        }
        assert_eq!(
            s.pending_since(Lsn(999)),
            Some(20 * S),
            "the oldest is kept"
        );
    }

    #[test]
    fn an_idle_pos_with_background_wal_is_not_lagging_while_streaming() {
        let l = LagState::default();
        let _stream = l.streaming();
        // applied 1000; the POS wrote a checkpoint record since: at 1200, not confirmed yet
        l.read(100 * S, Lsn(1200), Some(Lsn(1000)));
        assert_eq!(l.figures(101 * S, Lsn(1000), Lsn(1000)).micros, S);
        // the walsender's keepalive said 1200 and the bridge holds nothing: settled
        assert_eq!(
            l.figures(101 * S, Lsn(1000), Lsn(1200)),
            Figures {
                bytes: 0,
                micros: 0
            }
        );
        // a transaction half received: not settled
        l.assembling(true);
        l.read(101 * S, Lsn(1300), Some(Lsn(1000)));
        assert_eq!(l.figures(102 * S, Lsn(1000), Lsn(1300)).micros, S);
        l.assembling(false);
        // handed and not applied yet: its commit time counts
        let commit = i64::try_from(100 * S).unwrap_or_default() - PG_EPOCH_OFFSET_MICROS;
        l.handed(Lsn(1150), commit);
        let f = l.figures(103 * S, Lsn(1000), Lsn(1300));
        assert_eq!(f.micros, 3 * S);
        // applied: caught up
        assert_eq!(l.figures(103 * S, Lsn(1150), Lsn(1300)).micros, 0);
    }

    #[test]
    fn without_the_stream_the_lag_grows_from_the_slot_and_is_never_zero_while_behind() {
        let l = LagState::default();
        {
            let _stream = l.streaming();
        }
        l.read(100 * S, Lsn(5000), Some(Lsn(1000)));
        // the ERP is down: what the bridge received no longer counts
        let f = l.figures(130 * S, Lsn(1000), Lsn(5000));
        assert_eq!(
            f,
            Figures {
                bytes: 4000,
                micros: 30 * S
            }
        );
        l.read(131 * S, Lsn(9000), Some(Lsn(1000)));
        let f = l.figures(160 * S, Lsn(1000), Lsn(5000));
        assert_eq!(
            f,
            Figures {
                bytes: 8000,
                micros: 60 * S
            }
        );
        // the slot confirms what was read at 100 s: behind since 131 s
        l.read(161 * S, Lsn(9000), Some(Lsn(5000)));
        assert_eq!(l.figures(161 * S, Lsn(1000), Lsn(0)).micros, 30 * S);
        // no slot: measured against the ERP's checkpoint
        l.read(162 * S, Lsn(9000), None);
        assert_eq!(l.figures(162 * S, Lsn(8001), Lsn(0)).bytes, 1000);
    }
}
