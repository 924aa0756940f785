//! Streams the day into a POS database: writers commit transactions (one connection each, a location always
//! on the same writer so its order holds), the web shop reserves on the ERP, and a monitor matches every POS
//! commit with the ERP's commit of its event to measure lag. On the normalized POS schema a transaction may
//! wait for others committed on another writer (a payment for its order, a product inserted with a sale).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use possync_events::Event;
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::catalog::Catalog;
use crate::day::{Day, PosTxn, Step};
use crate::erp::{self, CommitClock};
use crate::error::SimError;
use crate::pos;
use crate::shop::{self, Key, ShopDay, ShopStep, ShopTxn};

/// The day to trade, on the POS schema it is written into.
#[derive(Debug)]
pub enum Trading {
    /// The reference POS schema (`pos`): every event of the day, as the bridge maps it without configuration.
    Reference(Day),
    /// The normalized POS schema (`shop`): the till transactions as orders; the opening stock goes to the ERP.
    Normalized(ShopDay),
}

/// One POS database transaction.
#[derive(Debug)]
enum Write {
    Reference(Box<PosTxn>),
    Shop(Box<ShopTxn>),
}

impl Write {
    fn sql(&self) -> String {
        match self {
            Write::Reference(t) => pos::render(t),
            Write::Shop(t) => shop::render(t),
        }
    }

    fn label(&self) -> &str {
        match self {
            Write::Reference(t) => t.event_id(),
            Write::Shop(t) => &t.label,
        }
    }

    fn route(&self) -> &str {
        match self {
            Write::Reference(t) => t.route(),
            Write::Shop(t) => &t.store,
        }
    }

    fn other_writer(&self) -> bool {
        matches!(self, Write::Shop(t) if t.other_writer)
    }

    fn needs(&self) -> &[Key] {
        match self {
            Write::Reference(_) => &[],
            Write::Shop(t) => &t.needs,
        }
    }

    fn marks(&self) -> &[Key] {
        match self {
            Write::Reference(_) => &[],
            Write::Shop(t) => &t.marks,
        }
    }

    /// The ERP event id it becomes, for the lag: known for the reference schema only (on the normalized one the
    /// bridge's mapping names the events).
    fn event_id(&self) -> Option<&str> {
        match self {
            Write::Reference(t) => Some(t.event_id()),
            Write::Shop(_) => None,
        }
    }
}

/// One thing the run does, in order.
#[derive(Debug)]
enum RunStep {
    Pos {
        write: Write,
        trading: bool,
        planted: bool,
    },
    Reserve {
        reservation_id: String,
        sku: String,
        location: String,
        qty: Decimal,
    },
    Release {
        reservation_id: String,
    },
    LateItems,
}

/// The run's steps, and the opening stock to post to the ERP first (normalized schema).
fn run_steps(trading: Trading) -> (Vec<RunStep>, Option<Vec<Event>>) {
    match trading {
        Trading::Reference(day) => (
            day.steps
                .into_iter()
                .map(|s| match s {
                    Step::Pos {
                        txn,
                        trading,
                        planted,
                    } => RunStep::Pos {
                        write: Write::Reference(txn),
                        trading,
                        planted,
                    },
                    Step::Reserve {
                        reservation_id,
                        sku,
                        location,
                        qty,
                    } => RunStep::Reserve {
                        reservation_id,
                        sku,
                        location,
                        qty,
                    },
                    Step::Release { reservation_id } => RunStep::Release { reservation_id },
                    Step::LateItems => RunStep::LateItems,
                })
                .collect(),
            None,
        ),
        Trading::Normalized(day) => (
            day.steps
                .into_iter()
                .map(|s| match s {
                    ShopStep::Txn(t) => RunStep::Pos {
                        write: Write::Shop(t),
                        trading: true,
                        planted: false,
                    },
                    ShopStep::LateItems => RunStep::LateItems,
                })
                .collect(),
            Some(day.opening),
        ),
    }
}

/// What has committed, for transactions that must wait for others on another writer.
#[derive(Debug)]
struct Gate {
    state: Mutex<GateState>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct GateState {
    done: HashSet<Key>,
    failed: bool,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    /// Returns once every key is marked; an error once a writer failed (what it waits for may never come).
    async fn wait(&self, needs: &[Key]) -> Result<(), SimError> {
        if needs.is_empty() {
            return Ok(());
        }
        // subscribed before looking: a mark made after the look wakes this up
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self
                    .state
                    .lock()
                    .map_err(|_| SimError::WriterGone("a POS writer panicked".into()))?;
                if st.failed {
                    return Err(SimError::WriterGone("another POS writer failed".into()));
                }
                if needs.iter().all(|k| st.done.contains(k)) {
                    return Ok(());
                }
            }
            rx.changed()
                .await
                .map_err(|_| SimError::WriterGone("the run stopped".into()))?;
        }
    }

    fn mark(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            st.done.extend(keys.iter().copied());
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn fail(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.failed = true;
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pos_url: String,
    pub erp_url: Option<String>,
    /// Trading-hours POS transactions per second; 0: as fast as possible.
    pub rate: u32,
    pub writers: usize,
    pub progress: bool,
    /// How long to wait at the end for the ERP to post everything.
    pub wait: Duration,
}

/// One POS commit, as the till saw it acknowledged.
#[derive(Debug)]
struct Commit {
    event_id: String,
    at_us: i64,
    /// Counted in the trading-hours lag (paced, and not a planted bad row).
    trading: bool,
}

#[derive(Debug, Default)]
struct Shared {
    committed: AtomicU64,
    /// Commits the monitor has not taken yet.
    commits: Mutex<Vec<Commit>>,
    /// Commits the monitor took but has not found in the ERP yet.
    unmatched: AtomicU64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// What the run measured.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub pos_transactions: u64,
    pub trading_transactions: u64,
    pub seconds_writing: f64,
    pub reservations: HashMap<String, u64>,
    pub releases: u64,
    /// (items added, held events posted) when the item master caught up.
    pub late_items: Option<(u64, i32)>,
    /// POS transactions whose event the ERP holds (matched by id).
    pub seen_in_erp: u64,
    pub not_seen: u64,
    /// First POS commit to last ERP commit.
    pub seconds_end_to_end: f64,
    pub lag_trading_ms: Percentiles,
    pub lag_all_ms: Percentiles,
    pub events_applied: i64,
    pub open_exceptions: i64,
    pub clock: Option<&'static str>,
    /// Normalized schema: what the orders were (counts by kind and path).
    pub normalized: Option<BTreeMap<&'static str, u64>>,
    /// Normalized schema with an ERP: the statuses of the opening stock posted with apply_events.
    pub opening_posted: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(lags_us: &mut [i64]) -> Percentiles {
        if lags_us.is_empty() {
            return Percentiles::default();
        }
        lags_us.sort_unstable();
        let at = |q: usize| {
            lags_us[((lags_us.len() - 1) * q / 100).min(lags_us.len() - 1)] as f64 / 1000.0
        };
        Percentiles {
            samples: lags_us.len(),
            p50: at(50),
            p99: at(99),
            max: lags_us[lags_us.len() - 1] as f64 / 1000.0,
        }
    }
}

impl RunStats {
    pub fn to_json(&self) -> serde_json::Value {
        let p = |p: &Percentiles| json!({"samples": p.samples, "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max});
        json!({
            "pos_transactions": self.pos_transactions,
            "trading_transactions": self.trading_transactions,
            "seconds_writing": self.seconds_writing,
            "pos_tps": rate(self.pos_transactions, self.seconds_writing),
            "seen_in_erp": self.seen_in_erp,
            "not_seen": self.not_seen,
            "seconds_end_to_end": self.seconds_end_to_end,
            "events_per_second": rate(self.seen_in_erp, self.seconds_end_to_end),
            "lag_trading": p(&self.lag_trading_ms),
            "lag_all": p(&self.lag_all_ms),
            "events_applied": self.events_applied,
            "open_exceptions": self.open_exceptions,
            "reservations": self.reservations,
            "releases": self.releases,
            "late_items": self.late_items.map(|(a, p)| json!({"added": a, "held_posted": p})),
            "lag_clock": self.clock,
            "normalized_orders": self.normalized,
            "opening_posted": self.opening_posted,
        })
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Matches POS commits with the ERP's commits of the same event ids.
struct LagTracker {
    clock: CommitClock,
    pending: Vec<Commit>,
    trading: Vec<i64>,
    all: Vec<i64>,
    /// (ERP commit, lag) of recent matches, for the live p99.
    window: Vec<(i64, i64)>,
    first_pos_us: Option<i64>,
    last_erp_us: i64,
}

impl LagTracker {
    fn new(clock: CommitClock) -> LagTracker {
        LagTracker {
            clock,
            pending: Vec::new(),
            trading: Vec::new(),
            all: Vec::new(),
            window: Vec::new(),
            first_pos_us: None,
            last_erp_us: 0,
        }
    }

    async fn poll(&mut self, erp: &Client, shared: &Shared) -> Result<(), SimError> {
        if let Ok(mut c) = shared.commits.lock() {
            self.pending.append(&mut c);
            // set under the lock: whoever sees the buffer empty also sees these as unmatched
            shared
                .unmatched
                .store(self.pending.len() as u64, Ordering::Relaxed);
        }
        if self.first_pos_us.is_none() {
            self.first_pos_us = self.pending.iter().map(|c| c.at_us).min();
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = self
            .pending
            .iter()
            .take(5000)
            .map(|c| c.event_id.as_str())
            .collect();
        let found: HashMap<String, i64> = erp::committed_at(erp, self.clock, &ids)
            .await?
            .into_iter()
            .collect();
        let mut still = Vec::with_capacity(self.pending.len());
        for c in self.pending.drain(..) {
            match found.get(&c.event_id) {
                Some(&erp_us) => {
                    let lag = (erp_us - c.at_us).max(0);
                    self.all.push(lag);
                    if c.trading {
                        self.trading.push(lag);
                    }
                    self.window.push((erp_us, lag));
                    self.last_erp_us = self.last_erp_us.max(erp_us);
                }
                None => still.push(c),
            }
        }
        self.pending = still;
        shared
            .unmatched
            .store(self.pending.len() as u64, Ordering::Relaxed);
        let horizon = now_us() - 5_000_000;
        self.window.retain(|(at, _)| *at >= horizon);
        Ok(())
    }

    fn live_p99_ms(&self) -> Option<f64> {
        let mut lags: Vec<i64> = self.window.iter().map(|w| w.1).collect();
        (!lags.is_empty()).then(|| Percentiles::of(&mut lags).p99)
    }
}

/// The live line: redrawn in place on a terminal, printed every few seconds into a log.
fn progress_line(
    shared: &Shared,
    last: &mut (Instant, u64),
    applied: i64,
    open: i64,
    p99: Option<f64>,
) {
    let committed = shared.committed.load(Ordering::Relaxed);
    let secs = last.0.elapsed().as_secs_f64();
    let tty = std::io::stderr().is_terminal();
    if !tty && secs < 5.0 {
        return;
    }
    let per_s = (committed - last.1) as f64 / secs.max(0.001);
    *last = (Instant::now(), committed);
    let lag = p99.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let line = format!(
        "POS txns committed {committed:>7} ({per_s:>5.0}/s) | events applied {applied:>7} | lag p99 (last 5 s) {lag:>9} | open exceptions {open:>4}"
    );
    let mut err = std::io::stderr();
    let _ = if tty {
        write!(err, "\r\x1b[2K  {line}")
    } else {
        writeln!(err, "  {line}")
    };
    let _ = err.flush();
}

/// Waits until the monitor has found every commit so far in the ERP, or `within` has passed.
async fn wait_until_posted(shared: &Shared, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = shared
            .commits
            .lock()
            .map(|c| c.is_empty() && shared.unmatched.load(Ordering::Relaxed) == 0)
            .unwrap_or(true);
        if done || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the day into the POS database and, with an ERP, reserves and measures.
pub async fn run(day: Trading, cat: &Catalog, opts: &RunOptions) -> Result<RunStats, SimError> {
    let mut stats = RunStats::default();
    if let Trading::Normalized(d) = &day {
        stats.normalized = Some(d.mix.clone());
    }
    let (steps, opening) = run_steps(day);
    let writers = opts.writers.max(1);
    let shared = Arc::new(Shared::default());
    let gate = Arc::new(Gate::new());
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let client = pos::connect(&opts.pos_url, "POS").await?;
        let (tx, mut rx) = mpsc::channel::<(Write, bool)>(64);
        senders.push(tx);
        let shared = shared.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((write, trading)) = rx.recv().await {
                let committed = match gate.wait(write.needs()).await {
                    Ok(()) => pos::commit(&client, &write.sql(), write.label()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = committed {
                    gate.fail();
                    return Err(e);
                }
                gate.mark(write.marks());
                let at_us = now_us();
                shared.committed.fetch_add(1, Ordering::Relaxed);
                if let Some(event_id) = write.event_id() {
                    if let Ok(mut c) = shared.commits.lock() {
                        c.push(Commit {
                            event_id: event_id.to_string(),
                            at_us,
                            trading,
                        });
                    }
                }
            }
            Ok::<(), SimError>(())
        }));
    }
    let erp = match &opts.erp_url {
        Some(url) => Some(pos::connect(url, "ERP").await?),
        None => {
            tracing::warn!("no --erp given: web orders are not reserved and lag is not measured");
            None
        }
    };
    if let (Some(erp), Some(opening)) = (&erp, &opening) {
        // this POS has no stock tables: the back office posts the opening stock to the ERP itself
        let t = Instant::now();
        let statuses = shop::post_opening(erp, opening).await?;
        tracing::info!(
            events = opening.len(),
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            ?statuses,
            "opening stock posted to the ERP with possync.apply_events"
        );
        stats.opening_posted = Some(statuses);
    }
    // the monitor has its own connection so that reserve calls never wait behind it
    let monitor_erp = match &opts.erp_url {
        Some(url) => Some(pos::connect(url, "ERP").await?),
        None => None,
    };
    let clock = match &monitor_erp {
        Some(c) => CommitClock::detect(c).await,
        None => CommitClock::ReceivedAt,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let monitor = {
        let shared = shared.clone();
        let progress = opts.progress;
        tokio::spawn(async move {
            let mut tracker = LagTracker::new(clock);
            let Some(erp) = monitor_erp else {
                return (tracker, 0, 0);
            };
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut last = (Instant::now(), 0u64);
            let (mut applied, mut open) = (0, 0);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                if let Err(e) = tracker.poll(&erp, &shared).await {
                    tracing::debug!(error = %e, "progress poll failed");
                }
                if let Ok((a, o)) = erp::applied_and_open(&erp).await {
                    (applied, open) = (a, o);
                }
                if progress {
                    progress_line(&shared, &mut last, applied, open, tracker.live_p99_ms());
                }
            }
            (tracker, applied, open)
        })
    };

    let mut routes: HashMap<String, usize> = HashMap::new();
    let mut trading_started: Option<Instant> = None;
    let mut opened = false;
    let mut trading_sent: u64 = 0;
    let result: Result<(), SimError> = async {
        for step in steps {
            match step {
                RunStep::Pos {
                    write,
                    trading,
                    planted,
                } => {
                    if trading && !opened && erp.is_some() {
                        // the stores open once their opening stock is posted (a flag of its own: with --rate 0
                        // trading_started stays unset)
                        opened = true;
                        let t = Instant::now();
                        wait_until_posted(&shared, opts.wait).await;
                        tracing::info!(
                            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
                            "opening stock posted; trading starts"
                        );
                    }
                    if trading {
                        stats.trading_transactions += 1;
                        if opts.rate > 0 {
                            let t0 = *trading_started.get_or_insert_with(Instant::now);
                            let due = t0
                                + Duration::from_secs_f64(
                                    trading_sent as f64 / f64::from(opts.rate),
                                );
                            tokio::time::sleep_until(due.into()).await;
                        }
                        trading_sent += 1;
                    }
                    let n = routes.len();
                    let mut w = *routes
                        .entry(write.route().to_string())
                        .or_insert(n % writers);
                    if write.other_writer() {
                        w = (w + 1) % writers;
                    }
                    senders[w]
                        .send((write, trading && !planted))
                        .await
                        .map_err(|_| SimError::WriterGone(format!("writer {w}")))?;
                }
                RunStep::Reserve {
                    reservation_id,
                    sku,
                    location,
                    qty,
                } => {
                    if let Some(erp) = &erp {
                        let status =
                            erp::reserve(erp, &reservation_id, &sku, &location, qty).await?;
                        *stats.reservations.entry(status).or_default() += 1;
                    }
                }
                RunStep::Release { reservation_id } => {
                    if let Some(erp) = &erp {
                        erp::release(erp, &reservation_id).await?;
                        stats.releases += 1;
                    }
                }
                RunStep::LateItems => {
                    if let Some(erp) = &erp {
                        let (added, posted) = erp::late_items(erp, cat).await?;
                        stats.late_items = Some((added, posted));
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    drop(senders);
    let mut writer_error = None;
    for t in tasks {
        let e = match t.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => SimError::WriterGone(e.to_string()),
        };
        // the failed commit says more than the writers that stopped waiting because of it
        if matches!(writer_error, None | Some(SimError::WriterGone(_))) {
            writer_error = Some(e);
        }
    }
    stats.seconds_writing = started.elapsed().as_secs_f64();
    stats.pos_transactions = shared.committed.load(Ordering::Relaxed);
    // a writer's own error says more than the dispatcher's "writer gone"
    if let Some(e) = writer_error {
        let _ = stop_tx.send(true);
        return Err(e);
    }
    result.inspect_err(|_| {
        let _ = stop_tx.send(true);
    })?;

    // wait for the ERP to post everything, the monitor still showing progress
    if opts.erp_url.is_some() {
        wait_until_posted(&shared, opts.wait).await;
    }
    let _ = stop_tx.send(true);
    let (mut tracker, applied, open) = monitor
        .await
        .map_err(|e| SimError::WriterGone(format!("monitor: {e}")))?;
    if opts.progress && std::io::stderr().is_terminal() {
        eprintln!();
    }
    stats.seen_in_erp = tracker.all.len() as u64;
    stats.not_seen = tracker.pending.len() as u64;
    stats.events_applied = applied;
    stats.open_exceptions = open;
    if let Some(first) = tracker.first_pos_us {
        stats.seconds_end_to_end = (tracker.last_erp_us - first).max(0) as f64 / 1e6;
    }
    stats.lag_trading_ms = Percentiles::of(&mut tracker.trading);
    stats.lag_all_ms = Percentiles::of(&mut tracker.all);
    let lag_measured = stats.normalized.is_none();
    stats.clock = opts
        .erp_url
        .as_ref()
        .filter(|_| lag_measured)
        .map(|_| match clock {
            CommitClock::CommitTimestamp => {
                "commit timestamps (POS commit acknowledged -> ERP commit)"
            }
            CommitClock::ReceivedAt => "received_at (POS commit acknowledged -> ERP apply start)",
        });
    Ok(stats)
}
