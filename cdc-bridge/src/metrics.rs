//! Counters and gauges per source, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;

/// Upper bounds (microseconds) of the apply latency histogram: 1 ms to 10 s.
const LATENCY_BUCKETS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Microseconds as exact seconds, the unit Prometheus expects (`1500` -> `0.0015`).
fn seconds(micros: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(micros), 6).normalize()
}

/// What a source task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceState {
    Starting = 0,
    /// Another bridge owns the source; waiting for its advisory lock.
    Standby = 1,
    Streaming = 2,
    /// The last session failed; waiting to retry.
    Retrying = 3,
    Stopped = 4,
    /// The replication slot is gone or lost its WAL while the ERP holds a checkpoint: refusing to stream from a
    /// new slot until an operator accepts the loss.
    SlotLost = 5,
    /// The publication on the POS is not whole (a mapped table dropped from it, no inserts, dropped) or changed
    /// while streaming: refusing to apply what it streams (see [`crate::publication`]).
    PublicationBroken = 6,
}

impl SourceState {
    fn from_u8(v: u8) -> SourceState {
        match v {
            1 => SourceState::Standby,
            2 => SourceState::Streaming,
            3 => SourceState::Retrying,
            4 => SourceState::Stopped,
            5 => SourceState::SlotLost,
            6 => SourceState::PublicationBroken,
            _ => SourceState::Starting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Standby => "standby",
            SourceState::Streaming => "streaming",
            SourceState::Retrying => "retrying",
            SourceState::Stopped => "stopped",
            SourceState::SlotLost => "slot_lost",
            SourceState::PublicationBroken => "publication_broken",
        }
    }
}

/// The figures of one source.
#[derive(Debug)]
pub struct SourceMetrics {
    pub name: String,
    state: AtomicU8,
    pub transactions_applied: AtomicU64,
    pub events_applied: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_conflict: AtomicU64,
    pub events_held: AtomicU64,
    pub events_rejected: AtomicU64,
    pub batches_applied: AtomicU64,
    pub batches_skipped: AtomicU64,
    pub retries: AtomicU64,
    /// POS transactions the ERP refused (a server error about their data), kept as rejected events instead.
    pub rejected_transactions: AtomicU64,
    /// Last commit LSN the ERP committed.
    pub checkpoint: AtomicU64,
    /// Latest WAL end the POS reported.
    pub wal_end: AtomicU64,
    /// Microseconds: ERP commit time minus POS commit time of the last applied transaction.
    pub lag_micros: AtomicU64,
    /// The lag as the POS sees it (see [`crate::lag`]).
    pub lag: crate::lag::LagState,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl SourceMetrics {
    pub fn new(name: &str) -> SourceMetrics {
        SourceMetrics {
            name: name.to_string(),
            state: AtomicU8::new(SourceState::Starting as u8),
            transactions_applied: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            events_conflict: AtomicU64::new(0),
            events_held: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            batches_applied: AtomicU64::new(0),
            batches_skipped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rejected_transactions: AtomicU64::new(0),
            checkpoint: AtomicU64::new(0),
            wal_end: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            lag: crate::lag::LagState::default(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
        }
    }

    pub fn set_state(&self, s: SourceState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> SourceState {
        SourceState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The lag now: WAL bytes and microseconds the ERP is behind the POS (see [`crate::lag`]).
    pub fn lag_figures(&self) -> crate::lag::Figures {
        self.lag.figures(
            crate::lag::unix_micros(),
            crate::lsn::Lsn(self.checkpoint.load(Ordering::Acquire)),
            crate::lsn::Lsn(self.wal_end.load(Ordering::Acquire)),
        )
    }

    /// Records one apply_batch round trip.
    pub fn observe_apply(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if micros <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// All sources of this process.
#[derive(Debug, Default)]
pub struct Registry {
    sources: Mutex<Vec<Arc<SourceMetrics>>>,
}

impl Registry {
    /// Adds a source and returns its figures.
    pub fn source(&self, name: &str) -> Arc<SourceMetrics> {
        let m = Arc::new(SourceMetrics::new(name));
        if let Ok(mut s) = self.sources.lock() {
            s.push(m.clone());
        }
        m
    }

    pub fn sources(&self) -> Vec<Arc<SourceMetrics>> {
        self.sources.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// True when every source streams or stands by for another bridge.
    pub fn healthy(&self) -> bool {
        self.sources()
            .iter()
            .all(|s| matches!(s.state(), SourceState::Streaming | SourceState::Standby))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let sources = self.sources();
        let mut out = String::new();
        let counter =
            |out: &mut String, name: &str, help: &str, get: &dyn Fn(&SourceMetrics) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for s in &sources {
                    let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", s.name, get(s));
                }
            };
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "possync_bridge_transactions_applied_total",
            "POS transactions the ERP committed",
            &|s| r(&s.transactions_applied),
        );
        counter(
            &mut out,
            "possync_bridge_events_applied_total",
            "Events posted (status applied)",
            &|s| r(&s.events_applied),
        );
        counter(
            &mut out,
            "possync_bridge_events_duplicate_total",
            "Events the ERP already had",
            &|s| r(&s.events_duplicate),
        );
        counter(
            &mut out,
            "possync_bridge_events_conflict_total",
            "Events with a known id and another payload",
            &|s| r(&s.events_conflict),
        );
        counter(
            &mut out,
            "possync_bridge_events_held_total",
            "Events held until they can post",
            &|s| r(&s.events_held),
        );
        counter(
            &mut out,
            "possync_bridge_events_rejected_total",
            "Events kept as rejected",
            &|s| r(&s.events_rejected),
        );
        counter(
            &mut out,
            "possync_bridge_batches_total",
            "apply_batch calls that applied",
            &|s| r(&s.batches_applied),
        );
        counter(
            &mut out,
            "possync_bridge_batches_skipped_total",
            "apply_batch calls at or below the checkpoint",
            &|s| r(&s.batches_skipped),
        );
        counter(
            &mut out,
            "possync_bridge_retries_total",
            "Sessions restarted after an error",
            &|s| r(&s.retries),
        );
        counter(
            &mut out,
            "possync_bridge_rejected_transactions_total",
            "POS transactions the ERP raised an error for, kept as rejected events",
            &|s| r(&s.rejected_transactions),
        );
        let gauge =
            |out: &mut String, name: &str, help: &str, get: &dyn Fn(&SourceMetrics) -> Decimal| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for s in &sources {
                    let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", s.name, get(s));
                }
            };
        gauge(
            &mut out,
            "possync_bridge_lag_bytes",
            "POS WAL position (read on the POS) minus what the ERP is known to hold",
            &|s| Decimal::from(s.lag_figures().bytes),
        );
        gauge(
            &mut out,
            "possync_bridge_lag_seconds",
            "Age of the oldest POS WAL position or transaction the ERP does not hold yet; grows while nothing is applied",
            &|s| seconds(s.lag_figures().micros),
        );
        gauge(
            &mut out,
            "possync_bridge_pos_wal_lsn",
            "The POS's WAL position at the last reading",
            &|s| Decimal::from(s.lag.pos_wal().0),
        );
        gauge(
            &mut out,
            "possync_bridge_pos_reachable",
            "1 when the last reading of the POS's WAL position succeeded",
            &|s| Decimal::from(u8::from(s.lag.reachable())),
        );
        gauge(
            &mut out,
            "possync_bridge_checkpoint_lsn",
            "Last POS commit LSN the ERP committed",
            &|s| Decimal::from(r(&s.checkpoint)),
        );
        gauge(
            &mut out,
            "possync_bridge_streaming",
            "1 while the source streams",
            &|s| Decimal::from(u8::from(s.state() == SourceState::Streaming)),
        );
        gauge(
            &mut out,
            "possync_bridge_slot_lost",
            "1 while the source's replication slot is gone or lost its WAL and the bridge refuses to stream",
            &|s| Decimal::from(u8::from(s.state() == SourceState::SlotLost)),
        );
        gauge(
            &mut out,
            "possync_bridge_publication_broken",
            "1 while the POS publication is not whole or changed while streaming and the bridge refuses the source",
            &|s| Decimal::from(u8::from(s.state() == SourceState::PublicationBroken)),
        );
        let name = "possync_bridge_apply_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} apply_batch round trip\n# TYPE {name} histogram"
        );
        for s in &sources {
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{source=\"{}\",le=\"{}\"}} {}",
                    s.name,
                    seconds(*bound),
                    r(&s.latency_buckets[i])
                );
            }
            let count = r(&s.latency_count);
            let _ = writeln!(
                out,
                "{name}_bucket{{source=\"{}\",le=\"+Inf\"}} {count}",
                s.name
            );
            let _ = writeln!(
                out,
                "{name}_sum{{source=\"{}\"}} {}",
                s.name,
                seconds(r(&s.latency_sum_micros))
            );
            let _ = writeln!(out, "{name}_count{{source=\"{}\"}} {count}", s.name);
        }
        out
    }
}
