//! One task per POS source: own the source in the ERP, stream its WAL, apply batches exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::apply::{Erp, ErpError};
use crate::assembler::{Assembler, PosTransaction};
use crate::decoder::{decode, DecodeError};
use crate::lsn::Lsn;
use crate::mapping::Mapping;
use crate::metrics::{SourceMetrics, SourceState};
use crate::pgerr::ErrorClass;
use crate::replication::{pg_now_micros, ReplicationConnection, ReplicationError, StreamMessage};

/// The publication the bridge reads on every POS.
pub const PUBLICATION: &str = "possync";

/// Group commit and retry settings.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// Most POS transactions in one apply_batch call.
    pub batch_max_txns: usize,
    /// Longest wait for more transactions once one is ready.
    pub batch_max_wait: Duration,
    /// How often a standby status update is sent even when the server asks for none.
    pub status_interval: Duration,
    /// Whether each apply_batch commit waits for the ERP's WAL flush (see `--erp-synchronous-commit`).
    pub erp_synchronous_commit: bool,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How often a source whose slot was lost is looked at again.
    pub slot_lost_recheck: Duration,
    /// How long the owner of a source may go without a word to the ERP before the source is taken from it
    /// (see [`crate::ownership`]).
    pub owner_timeout: Duration,
    /// Past this many changes a POS transaction goes to a file in `spill_dir` (see [`crate::spill`]).
    pub spill_after_changes: usize,
    pub spill_dir: std::path::PathBuf,
    /// ERP sessions one source is applied in, split by location (see [`crate::lanes`]); 1: one session.
    pub apply_lanes: usize,
}

impl Default for ApplySettings {
    fn default() -> Self {
        ApplySettings {
            batch_max_txns: 300,
            // measured: waiting leaves the ERP idle and adds the wait (rounded up to the timer's next millisecond
            // tick) to the lag, while the transactions that arrive during an apply batch themselves
            batch_max_wait: Duration::ZERO,
            status_interval: Duration::from_secs(1),
            erp_synchronous_commit: false,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            slot_lost_recheck: Duration::from_secs(10),
            owner_timeout: crate::ownership::DEFAULT_OWNER_TIMEOUT,
            // about 1 KB each held in memory: 20,000 changes keep a transaction's part well under 64 MB
            spill_after_changes: 20_000,
            spill_dir: std::env::temp_dir(),
            apply_lanes: 1,
        }
    }
}

/// One POS database streamed into the ERP.
#[derive(Clone, Default)]
pub struct Source {
    pub name: String,
    pub url: String,
    /// The operator accepts that the POS transactions committed after this ERP checkpoint were lost with the
    /// replication slot (`--accept-slot-loss NAME=LSN`); see [`slot_guard`].
    pub accept_slot_loss: Option<Lsn>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("url", &redact_password(&self.url))
            .finish()
    }
}

/// A connection URL or key=value string with its password replaced by `***`, for messages and logs.
pub fn redact_password(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}{user}:***@{host}");
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Source {
    /// The replication slot of this source.
    pub fn slot(&self) -> String {
        format!("possync_{}", sanitize(&self.name))
    }
}

/// A slot name may hold lower-case letters, digits and underscores only.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Erp(#[from] ErpError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("POS query failed: {}", crate::pgerr::describe(.0))]
    Pos(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the applier stopped")]
    ApplierGone,
    #[error("the ERP connection was lost, and with it the ownership of the source")]
    ErpConnectionLost,
    #[error("{0}")]
    SlotLost(String),
    #[error("{0}")]
    Publication(String),
    #[error("mirror of the POS tables: {0}")]
    Mirror(#[from] crate::mirror::MirrorError),
    /// The publication on the POS is not whole or changed while streaming (see [`crate::publication`]).
    #[error("{0}")]
    PublicationBroken(String),
    #[error("cannot verify the publication: {0}")]
    Unverified(String),
    #[error(transparent)]
    Takeover(#[from] crate::ownership::TakeoverError),
    #[error("cannot connect to the POS: {0}")]
    PosConnect(#[from] crate::tls::ConnectError),
    #[error("planning the next document group failed: {0}")]
    Planning(String),
}

enum SessionEnd {
    Shutdown,
}

/// Runs a source until shutdown, restarting failed sessions with backoff and jitter.
pub async fn run(
    source: Source,
    erp_url: String,
    mapping: Arc<Mapping>,
    settings: ApplySettings,
    metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    // the lag is read on the POS whatever the session does (D6)
    let watcher = tokio::spawn(crate::lag::watch(
        source.url.clone(),
        source.slot(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let mut delay = settings.retry_min;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        match session(
            &source,
            &erp_url,
            &mapping,
            &settings,
            &metrics,
            shutdown.clone(),
        )
        .await
        {
            Ok(SessionEnd::Shutdown) => break,
            // said at ERROR by the session; looked at again until an operator acts
            Err(SessionError::SlotLost(_)) => {
                metrics.set_state(SourceState::SlotLost);
                tokio::select! {
                    _ = tokio::time::sleep(settings.slot_lost_recheck) => {}
                    _ = shutdown.changed() => break,
                }
            }
            // said at ERROR by the session; looked at again until the publication is whole
            Err(SessionError::PublicationBroken(_)) => {
                metrics.set_state(SourceState::PublicationBroken);
                tokio::select! {
                    _ = tokio::time::sleep(settings.slot_lost_recheck) => {}
                    _ = shutdown.changed() => break,
                }
            }
            Err(e) => {
                metrics.set_state(SourceState::Retrying);
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(30) {
                    delay = settings.retry_min;
                }
                let jitter = rand::thread_rng().gen_range(0.5..1.5);
                let wait = delay.mul_f64(jitter);
                if matches!(e, SessionError::Publication(_) | SessionError::Mirror(_)) {
                    tracing::error!(source = %source.name, error = %e, retry_in_ms = wait.as_millis() as u64, "the source cannot start until this is fixed; retrying");
                } else {
                    tracing::warn!(source = %source.name, error = %e, retry_in_ms = wait.as_millis() as u64, "session failed; retrying");
                }
                delay = (delay * 2).min(settings.retry_max);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    watcher.abort();
    metrics.set_state(SourceState::Stopped);
    tracing::info!(source = %source.name, "source stopped");
}

/// Creates the publication for the mapped tables, or adds tables it lacks.
pub async fn ensure_publication(pos_url: &str, mapping: &Mapping) -> Result<(), SessionError> {
    let client = crate::tls::connect(pos_url).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&PUBLICATION],
        )
        .await?
        .is_some();
    if !exists {
        let list = mapping.tables_sql().join(", ");
        if let Err(e) = client
            .batch_execute(&format!(
                "CREATE PUBLICATION {PUBLICATION} FOR TABLE {list}"
            ))
            .await
        {
            if e.code().map(|c| c.code()) == Some("42501") {
                return Err(SessionError::Publication(format!(
                    "the bridge's POS role may not create publication {PUBLICATION} ({}); it needs CREATE on the POS database and to own the tables. Have the tables' owner run: {}  The bridge retries until the publication exists.",
                    crate::pgerr::describe(&e),
                    crate::check::create_publication_sql(mapping)
                )));
            }
            return Err(e.into());
        }
        tracing::info!(publication = PUBLICATION, tables = %list, "created publication");
    } else {
        for (t, t_sql) in mapping.tables().iter().zip(mapping.tables_sql()) {
            let (schema, name) = t.split_once('.').unwrap_or(("public", t));
            let has = client
                .query_opt(
                    "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                    &[&PUBLICATION, &schema, &name],
                )
                .await?
                .is_some();
            if !has {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {PUBLICATION} ADD TABLE {t_sql}"
                    ))
                    .await?;
                tracing::info!(publication = PUBLICATION, table = %t, "added table to publication");
            }
        }
    }
    drop(client);
    Ok(())
}

async fn session(
    source: &Source,
    erp_url: &str,
    mapping: &Arc<Mapping>,
    settings: &ApplySettings,
    metrics: &Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let erp = Erp::connect(erp_url, settings.erp_synchronous_commit).await?;
    // a frozen owner loses its ERP session, its lock and so the source (D7)
    erp.expire_when_idle(settings.owner_timeout).await?;
    let mut announced = false;
    while !erp.try_own(&source.name).await? {
        if !announced {
            tracing::info!(source = %source.name, "another bridge owns this source; standing by");
            announced = true;
        }
        metrics.set_state(SourceState::Standby);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
        }
    }
    let checkpoint = erp.checkpoint(&source.name).await?;
    metrics.checkpoint.store(checkpoint.0, Ordering::Relaxed);
    remove_leftover_spills(&source.name, &settings.spill_dir).await;

    // the publication is made or completed only for a source that never streamed; once it has, a publication
    // that is not whole refuses the source (D5)
    let mut publication =
        crate::publication::Guard::start(source, mapping, &erp, checkpoint, metrics).await?;
    let poster = if mapping.mirrors().is_empty() {
        None
    } else {
        let shapes = crate::mirror::describe(publication.pos(), mapping).await?;
        Some(Arc::new(
            crate::mirror::DocumentPoster::prepare(&erp, &source.name, mapping, shapes).await?,
        ))
    };
    let mut repl = ReplicationConnection::connect(&source.url).await?;
    let identity = repl.identify_system().await?;
    let slot = source.slot();
    let (mut checkpoint, exported) = slot_guard(
        &erp,
        &mut repl,
        source,
        &slot,
        checkpoint,
        identity.wal_position,
        metrics,
        poster.is_some(),
    )
    .await?;
    if let (Some(poster), Some((at, snapshot))) = (&poster, exported) {
        let started = Instant::now();
        let rows =
            crate::mirror::initial_copy(&source.url, &erp, &source.name, poster, &snapshot, at)
                .await?;
        tracing::info!(source = %source.name, rows, consistent_point = %at, schema = poster.schema(),
            elapsed_ms = started.elapsed().as_millis() as u64, "copied the mirrored POS tables into the ERP");
        checkpoint = at;
    }
    let mut lanes = if settings.apply_lanes > 1 && poster.is_none() {
        let lanes = Lanes::start(&erp, erp_url, &source.name, settings).await?;
        if let Some(least) = lanes.applied_to.iter().min() {
            checkpoint = *least;
        }
        tracing::info!(source = %source.name, lanes = lanes.erps.len(), checkpoints = ?lanes.applied_to,
            "applying in lanes split by location");
        Some(lanes)
    } else {
        None
    };
    metrics.checkpoint.store(checkpoint.0, Ordering::Relaxed);
    if let Err(e) = repl.start(&slot, PUBLICATION, checkpoint).await {
        if !crate::ownership::slot_in_use(&e) {
            return Err(e.into());
        }
        // this bridge owns the source: whoever still streams its slot is a previous owner that went quiet (D7)
        crate::ownership::end_stale_walsender(publication.pos(), &source.name, &slot).await?;
        repl = ReplicationConnection::connect(&source.url).await?;
        repl.start(&slot, PUBLICATION, checkpoint).await?;
    }
    // what this session receives counts for the lag until it ends
    metrics.wal_end.store(0, Ordering::Release);
    let _streaming = metrics.lag.streaming();
    metrics.set_state(SourceState::Streaming);
    tracing::info!(source = %source.name, slot = %slot, from = %checkpoint, system = %identity.system_id, "streaming");

    // the flush position reported to the POS: only what the ERP has committed
    let committed = Arc::new(AtomicU64::new(checkpoint.0));
    // room for two full batches: the next batch is decoded while the current one is applied
    let (tx, rx) = mpsc::channel::<PosTransaction>((settings.batch_max_txns * 2).clamp(64, 8192));
    let reader = read_stream(
        repl,
        Assembler::new(&source.name, mapping.clone())
            .spilling(settings.spill_after_changes, settings.spill_dir.clone()),
        tx,
        committed.clone(),
        settings.status_interval,
        metrics.clone(),
    );
    let applier = apply_loop(
        &erp,
        mapping,
        poster.as_ref(),
        lanes.as_mut(),
        source,
        rx,
        checkpoint,
        committed,
        settings,
        metrics,
        &mut publication,
        shutdown,
    );
    tokio::select! {
        r = reader => match r {
            Ok(()) => Err(SessionError::ApplierGone),
            Err(e) => Err(e),
        },
        a = applier => a,
    }
}

/// Removes the spill files a bridge that was killed or crashed left behind for this source (see
/// [`crate::spill::remove_leftovers`]): only files no process holds. A failure is said at WARN and changes
/// nothing else.
async fn remove_leftover_spills(source: &str, dir: &std::path::Path) {
    let (name, path) = (source.to_string(), dir.to_path_buf());
    let found =
        tokio::task::spawn_blocking(move || crate::spill::remove_leftovers(&path, &name)).await;
    match found {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            tracing::info!(source, files = n, dir = %dir.display(), "removed spill files left behind by an earlier bridge")
        }
        Ok(Err(e)) => tracing::warn!(source, error = %e, "cannot look for spill files left behind"),
        Err(e) => {
            tracing::warn!(source, error = %e, "the look for spill files left behind did not finish")
        }
    }
}

/// Marks a checkpoint carries in its lowest three bits (see [`slot_guard`]).
pub(crate) const MARK_BITS: u64 = 7;

/// The commit LSN of the last real POS transaction behind a checkpoint (without the slot-loss marks).
pub fn last_commit_of(checkpoint: Lsn) -> Lsn {
    Lsn(checkpoint.0 & !MARK_BITS)
}

/// Never streams a source from a new slot silently.
///
/// The ERP's checkpoint is the commit LSN of the last POS transaction it holds. When it is past 0/0 and the
/// slot is missing, or lost the WAL it needs (`wal_status = 'lost'`), the POS transactions committed after the
/// checkpoint and before a new slot's start can no longer be streamed. The bridge then refuses the source: it
/// records the loss in the ERP, says so at ERROR and in `/healthz` and `possync_bridge_slot_lost`, and looks
/// again every `slot_lost_recheck`, until an operator runs with `--accept-slot-loss NAME=<checkpoint>`; then
/// it makes a new slot, records what was accepted, and streams.
///
/// The records are `unmapped` events (the bridge's role may call apply_batch only), which the ERP keeps as
/// malformed exceptions. apply_batch needs a commit LSN past the checkpoint: a record takes the checkpoint plus
/// one. Commit records start at 8-byte aligned positions and are longer than 8 bytes, so these positions can
/// never be a real POS commit, and the lowest three bits of the checkpoint say what was recorded since the last
/// real commit: odd, a loss not yet accepted (refused again after a restart, even if someone made a new slot
/// meanwhile); even and not zero, a loss accepted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn slot_guard(
    erp: &Erp,
    repl: &mut ReplicationConnection,
    source: &Source,
    slot: &str,
    checkpoint: Lsn,
    pos_now: Lsn,
    metrics: &SourceMetrics,
    export: bool,
) -> Result<(Lsn, Option<(Lsn, String)>), SessionError> {
    let state = repl.slot_state(slot).await?;
    let marks = checkpoint.0 & MARK_BITS;
    let last_commit = Lsn(checkpoint.0 - marks);
    let unaccepted = marks % 2 == 1;
    let problem = match &state {
        None if last_commit > Lsn::ZERO => Some("does not exist"),
        None => None,
        Some(s) if s.wal_status == "lost" => {
            Some("has lost the WAL it needed (wal_status lost, see max_slot_wal_keep_size)")
        }
        Some(_) if unaccepted => Some(
            "is not trusted after a loss the ERP recorded and no operator accepted (the slot was made again, or the publication changed while it streamed: see the ERP's exception for this source)",
        ),
        Some(_) => None,
    };
    let Some(problem) = problem else {
        // a mirror starts from a copy of the POS tables as the new slot's snapshot shows them; with the
        // checkpoint at 0/0 the ERP holds nothing from this source yet, so a slot left by a first start that
        // died before its copy committed is made again
        if export && checkpoint == Lsn::ZERO {
            if state.is_some() {
                repl.drop_slot(slot).await?;
            }
            let (at, snapshot) = repl.create_slot_exporting(slot).await?;
            tracing::info!(source = %source.name, slot, consistent_point = %at, "created replication slot with a snapshot for the initial copy");
            return Ok((checkpoint, Some((at, snapshot))));
        }
        if state.is_none() {
            repl.create_slot(slot).await?;
            tracing::info!(source = %source.name, slot, "created replication slot");
        }
        return Ok((checkpoint, None));
    };
    let name = &source.name;
    if source.accept_slot_loss == Some(last_commit) {
        let next = Lsn(checkpoint.0 + if unaccepted { 1 } else { 2 });
        let (start, at) = match &state {
            Some(s) if s.wal_status == "lost" => {
                repl.drop_slot(slot).await?;
                (repl.create_slot(slot).await?, next)
            }
            // the slot is whole but what it holds after the checkpoint is not trusted (it was made again after
            // the loss, or the publication changed while it streamed): streamed from the POS's position now on,
            // which the new checkpoint names
            Some(_) => (pos_now, rebased(pos_now, next)),
            None => (repl.create_slot(slot).await?, next),
        };
        let reason = format!(
            "an operator accepted (--accept-slot-loss) that the POS transactions of source {name} committed after {last_commit} and before {start} were not streamed: replication slot {slot} {problem}; the new slot streams from {start}"
        );
        let record = loss_record(name, "slot_loss_accepted", last_commit, at, &reason, start);
        let fits = last_commit_of(at) > last_commit || marks + 2 <= MARK_BITS;
        if fits {
            erp.apply_batch(name, at, &[record]).await?;
        }
        tracing::warn!(source = %name, slot, checkpoint = %last_commit, new_slot_start = %start, "slot loss accepted by the operator; streaming from the new slot");
        return Ok((if fits { at } else { checkpoint }, None));
    }
    if !unaccepted && marks < MARK_BITS {
        let at = Lsn(checkpoint.0 + 1);
        let reason = format!(
            "replication slot {slot} of source {name} {problem} although the ERP holds POS transactions up to {last_commit}: those committed after {last_commit}, up to at least {pos_now} (the POS's WAL position when this was found), cannot be streamed and are missing from the ERP; the bridge refuses the source until an operator re-posts them (possync-bridge resync --from DATE --to DATE) or accepts the loss (possync-bridge run --accept-slot-loss {name}={last_commit})"
        );
        let record = loss_record(name, "slot_lost", last_commit, at, &reason, pos_now);
        erp.apply_batch(name, at, &[record]).await?;
        metrics.checkpoint.store(at.0, Ordering::Relaxed);
    }
    let accept = match source.accept_slot_loss {
        Some(other) => format!(
            " (--accept-slot-loss {name}={other} names another checkpoint, so it does not apply)"
        ),
        None => String::new(),
    };
    let message = format!(
        "refusing to stream source {name}: replication slot {slot} {problem} while the ERP's checkpoint is {last_commit}; POS transactions committed after {last_commit} (the POS is at {pos_now}) cannot be streamed. Re-post them from the POS tables with possync-bridge resync --from DATE --to DATE (the business dates they may have), or accept the loss with possync-bridge run --accept-slot-loss {name}={last_commit}{accept}"
    );
    tracing::error!(source = %name, slot, checkpoint = %last_commit, pos_wal = %pos_now, "{message}");
    Err(SessionError::SlotLost(message))
}

/// The checkpoint that moves a stream past everything the POS wrote up to `pos_now`, marked as a loss dealt with
/// (even marks), or `next` when that is further.
pub(crate) fn rebased(pos_now: Lsn, next: Lsn) -> Lsn {
    Lsn((pos_now.0 & !MARK_BITS) | 2).max(next)
}

/// A record of a slot loss in the ERP: an `unmapped` event it keeps as a malformed exception.
pub(crate) fn loss_record(
    source: &str,
    what: &str,
    last_commit: Lsn,
    at: Lsn,
    reason: &str,
    until: Lsn,
) -> Value {
    serde_json::json!({
        "event_id": format!("{source}:{what}:{last_commit}:{at}"),
        "kind": possync_events::UNMAPPED,
        "source": source,
        "reason": crate::pgerr::truncate_noting_length(reason, crate::pgerr::REASON_MAX_CHARS),
        "slot_loss": {"what": what, "lost_after": last_commit.to_string(), "until": until.to_string()},
    })
}

/// Reads the CopyBoth stream, answers keepalives at once, and hands committed transactions to the applier.
async fn read_stream(
    mut repl: ReplicationConnection,
    mut assembler: Assembler,
    tx: mpsc::Sender<PosTransaction>,
    committed: Arc<AtomicU64>,
    status_interval: Duration,
    metrics: Arc<SourceMetrics>,
) -> Result<(), SessionError> {
    let mut received = Lsn::ZERO;
    let mut handed = Lsn::ZERO;
    let mut ticker = tokio::time::interval(status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<PosTransaction> = None;
    loop {
        let flush = flush_position(
            Lsn(committed.load(Ordering::Acquire)),
            received,
            handed,
            pending.is_none() && !assembler.in_transaction(),
        );
        if let Some(txn) = pending.take() {
            // the applier is behind: wait for room, but keep telling the POS we are alive
            tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(p) => p.send(txn),
                    Err(_) => return Ok(()),
                },
                _ = ticker.tick() => {
                    pending = Some(txn);
                    repl.send_status(received, flush).await?;
                }
            }
            continue;
        }
        tokio::select! {
            msg = repl.recv() => match msg? {
                StreamMessage::XLogData { wal_end, data, .. } => {
                    received = received.max(wal_end);
                    let txn = assembler.push(decode(&data)?)?;
                    // before the position it came with: the lag reads them in the other order
                    metrics.lag.assembling(assembler.in_transaction());
                    if let Some(t) = &txn {
                        metrics.lag.handed(t.commit_lsn, t.commit_time);
                    }
                    metrics.wal_end.store(received.0, Ordering::Release);
                    if let Some(txn) = txn {
                        handed = txn.commit_lsn;
                        match tx.try_send(txn) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(t)) => pending = Some(t),
                            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                        }
                    }
                }
                StreamMessage::Keepalive { wal_end, reply_requested } => {
                    received = received.max(wal_end);
                    metrics.wal_end.store(received.0, Ordering::Release);
                    if reply_requested {
                        let flush = flush_position(
                            Lsn(committed.load(Ordering::Acquire)),
                            received,
                            handed,
                            !assembler.in_transaction(),
                        );
                        repl.send_status(received, flush).await?;
                    }
                }
            },
            _ = ticker.tick() => repl.send_status(received, flush).await?,
        }
    }
}

/// The flush position to report: what the ERP committed. When every transaction received so far is committed
/// and none is half received, the WAL up to `received` holds nothing more for this source, so that position is
/// reported instead; otherwise a POS fast shutdown would wait for this walsender forever.
pub fn flush_position(committed: Lsn, received: Lsn, handed: Lsn, nothing_in_hand: bool) -> Lsn {
    if nothing_in_hand && committed >= handed {
        committed.max(received)
    } else {
        committed
    }
}

/// The ERP sessions of a source applied in lanes (see [`crate::lanes`]), with what each lane has applied.
pub(crate) struct Lanes {
    erps: Vec<Erp>,
    applied_to: Vec<Lsn>,
    /// Each lane's commits not yet known to be on the ERP's disk.
    unflushed: Vec<Unflushed>,
    /// When the owner session speaks while the lanes apply (see [`while_owning`]); kept from group to group.
    owner_ping: tokio::time::Interval,
}

/// How often the owner session speaks while the lanes apply: as when idle, well within the owner timeout (at
/// least 3 s).
const OWNER_PING: Duration = Duration::from_secs(1);

/// The ERP session that holds the ownership lock of a source (see [`crate::ownership`]).
pub(crate) trait Owner {
    /// True once the session is gone, and with it the ownership.
    fn is_closed(&self) -> bool;
    /// One round trip, so that the server does not end the session as idle.
    async fn ping(&self) -> Result<(), ErpError>;
}

impl Owner for Erp {
    fn is_closed(&self) -> bool {
        Erp::is_closed(self)
    }

    async fn ping(&self) -> Result<(), ErpError> {
        Erp::ping(self).await
    }
}

/// What paces the owner's words.
pub(crate) trait Ticks {
    async fn tick(&mut self);
}

impl Ticks for tokio::time::Interval {
    async fn tick(&mut self) {
        tokio::time::Interval::tick(self).await;
    }
}

/// Runs `work` (the lanes applying a group, on sessions of their own) while the owner session, otherwise idle,
/// speaks at each tick: a group that takes longer than the owner timeout must not let the server end the owner
/// session as idle and release the source while this bridge's lanes go on applying. Once the owner session is
/// gone (ended by the server, cut off), the work stops, no further statement is started, and the session ends
/// with [`SessionError::ErpConnectionLost`] (the bridge reconnects and owns the source again or stands by).
/// Statements already sent finish in the ERP: each lane's checkpoint skips them for whoever applies next.
pub(crate) async fn while_owning<T>(
    owner: &impl Owner,
    ticks: &mut impl Ticks,
    work: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    if owner.is_closed() {
        return Err(SessionError::ErpConnectionLost);
    }
    let keep = async {
        loop {
            ticks.tick().await;
            if owner.is_closed() {
                return SessionError::ErpConnectionLost;
            }
            if let Err(e) = owner.ping().await {
                return if owner.is_closed() {
                    SessionError::ErpConnectionLost
                } else {
                    e.into()
                };
            }
        }
    };
    tokio::select! {
        done = work => done,
        lost = keep => Err(lost),
    }
}

impl Lanes {
    /// Sets the source's lanes up in the ERP (`possync.start_lanes`) and opens a session per lane.
    async fn start(
        erp: &Erp,
        erp_url: &str,
        source: &str,
        settings: &ApplySettings,
    ) -> Result<Lanes, SessionError> {
        let count = settings.apply_lanes.clamp(1, crate::lanes::MAX_LANES);
        let applied_to = erp.start_lanes(source, count).await?;
        let mut erps = Vec::with_capacity(count);
        for lane in 0..count {
            let e =
                Erp::connect_lane(erp_url, settings.erp_synchronous_commit, lane, count).await?;
            // a lane holds no ownership lock; a frozen bridge's open lane transaction is ended by the server
            e.client()
                .batch_execute(&crate::ownership::lane_session_settings(
                    settings.owner_timeout,
                ))
                .await
                .map_err(crate::apply::ErpError::from)?;
            erps.push(e);
        }
        let mut owner_ping =
            tokio::time::interval_at(tokio::time::Instant::now() + OWNER_PING, OWNER_PING);
        owner_ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Lanes {
            erps,
            unflushed: (0..count).map(|_| Unflushed::default()).collect(),
            applied_to,
            owner_ping,
        })
    }

    fn closed(&self) -> bool {
        self.erps.iter().any(Erp::is_closed)
    }

    /// Applies a group of consecutive POS transactions in the lanes, segment by segment (see
    /// [`crate::lanes::segments`]), each lane skipping what it has already applied, while the owner session
    /// `owner` keeps the source (see [`while_owning`]). The group counts as on the ERP's disk once every lane's
    /// last commit is.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &mut self,
        owner: &Erp,
        mapping: &Arc<Mapping>,
        source: &str,
        group: &[PosTransaction],
        metrics: &SourceMetrics,
        unflushed: &mut Unflushed,
        committed: &AtomicU64,
    ) -> Result<(), SessionError> {
        let Lanes {
            erps,
            applied_to,
            unflushed: lane_unflushed,
            owner_ping,
        } = self;
        let work = apply_group(
            erps,
            applied_to,
            lane_unflushed,
            mapping,
            source,
            group,
            metrics,
            unflushed,
            committed,
        );
        while_owning(owner, owner_ping, work).await
    }
}

/// The lanes' part of [`Lanes::apply`].
#[allow(clippy::too_many_arguments)]
async fn apply_group(
    erps: &[Erp],
    applied_to: &mut [Lsn],
    lane_unflushed: &mut [Unflushed],
    mapping: &Arc<Mapping>,
    source: &str,
    group: &[PosTransaction],
    metrics: &SourceMetrics,
    unflushed: &mut Unflushed,
    committed: &AtomicU64,
) -> Result<(), SessionError> {
    let Some(last) = group.last() else {
        return Ok(());
    };
    // each lane counts the parts it applied; a POS transaction counts once
    let transactions_before = metrics.transactions_applied.load(Ordering::Relaxed);
    let lanes = erps.len();
    // a spilled transaction is applied whole by lane 0 (see crate::lanes): its file is read once
    for segment in crate::lanes::segments(group, lanes) {
        let work: Vec<Vec<PosTransaction>> = segment
            .into_iter()
            .zip(applied_to.iter())
            .map(|(parts, done)| parts.into_iter().filter(|p| p.commit_lsn > *done).collect())
            .collect();
        let runs = erps.iter().zip(&work).zip(lane_unflushed.iter_mut()).map(
            |((erp, parts), lane_unflushed)| async move {
                if parts.is_empty() {
                    return Ok(());
                }
                // what the POS is told is decided for the whole group below
                let lane_committed = AtomicU64::new(0);
                apply_isolating(
                    erp,
                    mapping,
                    None,
                    source,
                    parts,
                    metrics,
                    lane_unflushed,
                    &lane_committed,
                    None,
                )
                .await
            },
        );
        futures::future::try_join_all(runs).await?;
        for (done, parts) in applied_to.iter_mut().zip(&work) {
            if let Some(p) = parts.last() {
                *done = p.commit_lsn;
            }
        }
    }
    let mut waiting = Lsn::ZERO;
    let mut flushed = Lsn::ZERO;
    for u in lane_unflushed.iter_mut() {
        let (w, f) = u.take();
        waiting = waiting.max(w);
        flushed = flushed.max(f);
    }
    metrics
        .transactions_applied
        .store(transactions_before + group.len() as u64, Ordering::Relaxed);
    unflushed.push(waiting, last.end_lsn.max(last.commit_lsn));
    unflushed.confirm(flushed, committed);
    metrics
        .checkpoint
        .store(last.commit_lsn.0, Ordering::Relaxed);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_loop(
    erp: &Erp,
    mapping: &Arc<Mapping>,
    poster: Option<&Arc<crate::mirror::DocumentPoster>>,
    mut lanes: Option<&mut Lanes>,
    source: &Source,
    mut rx: mpsc::Receiver<PosTransaction>,
    checkpoint: Lsn,
    committed: Arc<AtomicU64>,
    settings: &ApplySettings,
    metrics: &SourceMetrics,
    publication: &mut crate::publication::Guard,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let mut applied_to = checkpoint;
    let mut liveness = tokio::time::interval(Duration::from_secs(1));
    // batches committed in the ERP but maybe not yet on its disk: (ERP WAL position, POS commit LSN)
    let mut unflushed = Unflushed::default();
    let mut flush_check = tokio::time::interval(FLUSH_CHECK);
    flush_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the next batch, taken and planned while the one before it was applied (a backlog of document groups)
    let mut ahead: Option<(Vec<PosTransaction>, Option<crate::mirror::GroupPlan>)> = None;
    loop {
        let (mut batch, mut plan) = match ahead.take() {
            Some(next) => next,
            None => match next_batch(
                &mut rx,
                settings,
                erp,
                &mut unflushed,
                &committed,
                &mut liveness,
                &mut flush_check,
                lanes.as_deref(),
                publication,
                source,
                metrics,
                &mut shutdown,
            )
            .await?
            {
                Some(batch) => (batch, None),
                None => return Ok(SessionEnd::Shutdown),
            },
        };
        let taken = batch.len();
        // after a restart the stream may repeat the transaction at the checkpoint
        batch.retain(|t| t.commit_lsn > applied_to);
        // D5: only what was streamed while the publication was verified whole is applied
        let broken = publication.admit(&mut batch).await?;
        if batch.len() != taken {
            plan = None;
        }
        let Some(last) = batch.last() else {
            match broken {
                Some(b) => {
                    return Err(crate::publication::refuse_now(erp, source, metrics, b).await)
                }
                None => continue,
            }
        };
        let last_lsn = last.commit_lsn;
        let last_commit_time = last.commit_time;
        let events: usize = batch.iter().map(|t| t.events.len()).sum();
        match lanes.as_deref_mut() {
            Some(lanes) => {
                lanes
                    .apply(
                        erp,
                        mapping,
                        &source.name,
                        &batch,
                        metrics,
                        &mut unflushed,
                        &committed,
                    )
                    .await?
            }
            None => {
                // a shutdown request waits for the batch in flight: the call is not cancelled. Meanwhile, when a full
                // batch of document groups is waiting already, it is taken and planned, so that the ERP does not wait
                // for the bridge to plan it once this one is done (never when transactions only trickle in: they join
                // the next batch as they come)
                let plan_next = async {
                    let p = Arc::clone(poster?);
                    if rx.len() < settings.batch_max_txns || broken.is_some() {
                        return None;
                    }
                    let mut next = Vec::with_capacity(settings.batch_max_txns);
                    while next.len() < settings.batch_max_txns {
                        match rx.try_recv() {
                            Ok(t) => next.push(t),
                            Err(_) => break,
                        }
                    }
                    // planned on a blocking thread: on this task's worker it would hold up the ERP connection's
                    // task, which is to send the batch just queued, for as long as the planning takes (the ERP
                    // then waited about 5 ms per group of 300 orders)
                    let name = source.name.clone();
                    Some(
                        tokio::task::spawn_blocking(move || {
                            let plan = p.plan_ahead(&name, &next);
                            (next, plan)
                        })
                        .await,
                    )
                };
                let (applied, next) = futures::future::join(
                    apply_isolating(
                        erp,
                        mapping,
                        poster.map(|p| &**p),
                        &source.name,
                        &batch,
                        metrics,
                        &mut unflushed,
                        &committed,
                        plan,
                    ),
                    plan_next,
                )
                .await;
                applied?;
                // a planning that panicked took the next transactions with it: the session ends before anything
                // past the batch applied above is, and the next one streams them again from the checkpoint
                ahead = next
                    .transpose()
                    .map_err(|e| SessionError::Planning(e.to_string()))?;
            }
        }
        applied_to = last_lsn;
        let lag = pg_now_micros().saturating_sub(last_commit_time).max(0) as u64;
        metrics.lag_micros.store(lag, Ordering::Relaxed);
        tracing::debug!(source = %source.name, commit_lsn = %last_lsn, txns = batch.len(), events, "applied batch");
        // a batch is thousands of small allocations (row images, events): freed on a blocking thread rather than
        // here, between two batches, while the ERP waits for the next one
        if batch.len() > 1 {
            tokio::task::spawn_blocking(move || drop(batch));
        }
        if let Some(b) = broken {
            return Err(crate::publication::refuse_now(erp, source, metrics, b).await);
        }
        if *shutdown.borrow() {
            confirm_before_stop(erp, &mut unflushed, &committed).await;
            return Ok(SessionEnd::Shutdown);
        }
    }
}

/// Waits for the next transactions and takes up to a batch of them (see [`ApplySettings::batch_max_txns`] and
/// `batch_max_wait`), while idle keeping the ERP session alive, the publication checked and the POS told what
/// the ERP has flushed. None: a shutdown was asked for (what the ERP flushed is confirmed first).
#[allow(clippy::too_many_arguments)]
async fn next_batch(
    rx: &mut mpsc::Receiver<PosTransaction>,
    settings: &ApplySettings,
    erp: &Erp,
    unflushed: &mut Unflushed,
    committed: &AtomicU64,
    liveness: &mut tokio::time::Interval,
    flush_check: &mut tokio::time::Interval,
    lanes: Option<&Lanes>,
    publication: &mut crate::publication::Guard,
    source: &Source,
    metrics: &SourceMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<PosTransaction>>, SessionError> {
    let first = loop {
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => break t,
                None => return Err(SessionError::ApplierGone),
            },
            _ = shutdown.changed() => {
                confirm_before_stop(erp, unflushed, committed).await;
                return Ok(None);
            }
            // a lost ERP connection also lost the ownership lock: stop streaming so another bridge can take over
            _ = liveness.tick() => {
                if erp.is_closed() || lanes.is_some_and(|l| l.closed()) {
                    return Err(SessionError::ErpConnectionLost);
                }
                // an owner with nothing to apply still speaks, or it is taken for a frozen one (D7)
                erp.ping().await?;
                if let Some(broken) = publication.idle_tick().await? {
                    return Err(crate::publication::refuse_now(erp, source, metrics, broken).await);
                }
            },
            // idle with batches not yet known to be on the ERP's disk: ask how far it has flushed
            _ = flush_check.tick(), if !unflushed.is_empty() => {
                let wal = erp.wal().await?;
                unflushed.confirm(wal.flushed, committed);
            }
        }
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + settings.batch_max_wait;
    while batch.len() < settings.batch_max_txns {
        match rx.try_recv() {
            Ok(t) => {
                batch.push(t);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        // the timer ticks in whole milliseconds: a wait that is over must not cost another tick
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => batch.push(t),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(Some(batch))
}

/// Applies consecutive POS transactions, oldest first, in as few apply_batch calls as the ERP allows.
///
/// A connection or availability error ends the session (it is retried with backoff and the stream resumes at
/// the checkpoint). An error about the data is isolated: the failed group is split in halves, each applied in
/// its own ERP transaction with its own commit LSN as checkpoint, down to the one POS transaction the ERP
/// refuses, which is then kept as rejected events (see [`reject_transaction`]). A half that was applied before a
/// later failure is not applied again: apply_batch skips an LSN at or below the checkpoint.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_isolating(
    erp: &Erp,
    mapping: &Arc<Mapping>,
    poster: Option<&crate::mirror::DocumentPoster>,
    source: &str,
    batch: &[PosTransaction],
    metrics: &SourceMetrics,
    unflushed: &mut Unflushed,
    committed: &AtomicU64,
    ahead: Option<crate::mirror::GroupPlan>,
) -> Result<(), SessionError> {
    // a spilled transaction is posted alone, from its file; the transactions around it as usual
    if let Some(at) = batch.iter().position(|t| t.spilled.is_some()) {
        let (before, rest) = batch.split_at(at);
        if !before.is_empty() {
            Box::pin(apply_isolating(
                erp, mapping, poster, source, before, metrics, unflushed, committed, None,
            ))
            .await?;
        }
        let (big, after) = rest.split_at(1);
        let txn = &big[0];
        if let Some(spilled) = &txn.spilled {
            let started = Instant::now();
            match crate::spill::apply_spilled(
                erp,
                mapping,
                poster,
                source,
                txn.commit_lsn,
                spilled,
                None,
            )
            .await
            {
                Ok((outcome, wal)) => {
                    metrics.observe_apply(started.elapsed());
                    settle(metrics, unflushed, committed, txn, wal);
                    count(metrics, &outcome, 1);
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    reject_transaction(
                        erp, mapping, source, txn, &e, metrics, unflushed, committed,
                    )
                    .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !after.is_empty() {
            Box::pin(apply_isolating(
                erp, mapping, poster, source, after, metrics, unflushed, committed, None,
            ))
            .await?;
        }
        return Ok(());
    }
    let mut pending = std::collections::VecDeque::from([(0, batch.len())]);
    // a plan made ahead is for the whole batch: its first attempt
    let mut ahead = ahead;
    while let Some((from, to)) = pending.pop_front() {
        let Some(part) = batch.get(from..to) else {
            continue;
        };
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            continue;
        };
        let started = Instant::now();
        let applied = match poster {
            Some(p) if part.iter().any(|t| !t.changes.is_empty()) => {
                p.apply(erp, source, part, ahead.take()).await
            }
            _ => {
                let events: Vec<&Value> = part.iter().flat_map(|t| t.events.iter()).collect();
                erp.apply_batch(source, last.commit_lsn, &events).await
            }
        };
        match applied {
            Ok((outcome, wal)) => {
                metrics.observe_apply(started.elapsed());
                settle(metrics, unflushed, committed, last, wal);
                count(metrics, &outcome, part.len() as u64);
            }
            Err(e) if e.class() == ErrorClass::Data && part.len() > 1 => {
                let mid = from + part.len() / 2;
                tracing::warn!(source, first_commit = %first.commit_lsn, last_commit = %last.commit_lsn,
                    txns = part.len(), error = %e,
                    "the ERP refused a group of POS transactions for their data; applying its halves separately to find the one it refuses");
                pending.push_front((mid, to));
                pending.push_front((from, mid));
            }
            Err(e) if e.class() == ErrorClass::Data => {
                reject_transaction(
                    erp, mapping, source, last, &e, metrics, unflushed, committed,
                )
                .await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// After a batch committed: the POS may forget it once the ERP has it on disk (at once when it commits
/// synchronously, otherwise after its WAL writer's next flush). The POS is told the end of the last
/// transaction's commit record, not its start (the ERP's checkpoint): a reconnect then starts past it, so an
/// applied transaction is never sent and decoded again, however large.
fn settle(
    metrics: &SourceMetrics,
    unflushed: &mut Unflushed,
    committed: &AtomicU64,
    last: &PosTransaction,
    wal: crate::apply::ErpWal,
) {
    let commit_lsn = last.commit_lsn;
    unflushed.push(wal.written, last.end_lsn.max(commit_lsn));
    unflushed.confirm(wal.flushed, committed);
    metrics.checkpoint.store(commit_lsn.0, Ordering::Relaxed);
}

fn count(metrics: &SourceMetrics, outcome: &crate::apply::BatchOutcome, txns: u64) {
    if outcome.applied {
        metrics.batches_applied.fetch_add(1, Ordering::Relaxed);
        metrics
            .transactions_applied
            .fetch_add(txns, Ordering::Relaxed);
        metrics
            .events_applied
            .fetch_add(outcome.applied_events, Ordering::Relaxed);
        metrics
            .events_duplicate
            .fetch_add(outcome.duplicate, Ordering::Relaxed);
        metrics
            .events_conflict
            .fetch_add(outcome.conflict, Ordering::Relaxed);
        metrics
            .events_held
            .fetch_add(outcome.held, Ordering::Relaxed);
        metrics
            .events_rejected
            .fetch_add(outcome.rejected, Ordering::Relaxed);
    } else {
        metrics.batches_skipped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Most characters of an original event kept as text when the ERP refuses even the rejected form that carries
/// it as JSON.
pub(crate) const ORIGINAL_TEXT_MAX_CHARS: usize = 100_000;

/// Why the ERP refused a POS transaction, as every record of its rejected form says it (see [`rejected_form`]).
#[derive(Debug, Clone)]
pub struct Rejection {
    source: String,
    prefix: String,
    reason: String,
    erp_error: Value,
    commit_lsn: String,
    /// The originals are carried as (truncated) JSON text instead of JSON.
    pub as_text: bool,
}

impl Rejection {
    pub fn new(
        source: &str,
        commit_lsn: Lsn,
        error: &crate::pgerr::ServerError,
        as_text: bool,
        lane: Option<(usize, usize)>,
    ) -> Rejection {
        let prefix = match lane {
            None => format!("{source}:erp_error:{commit_lsn}"),
            Some((l, _)) => format!("{source}:erp_error:{commit_lsn}:lane{l}"),
        };
        use crate::pgerr::{single_line, truncate_noting_length, REASON_MAX_CHARS};
        let mut why = format!(
            "the ERP raised {} while posting POS transaction {commit_lsn}: {}",
            error.sqlstate, error.message
        );
        if let Some(d) = &error.detail {
            why.push_str("; DETAIL: ");
            why.push_str(d);
        }
        if let Some(h) = &error.hint {
            why.push_str("; HINT: ");
            why.push_str(h);
        }
        let reason = truncate_noting_length(&single_line(&why), REASON_MAX_CHARS);
        let field = |t: &str| Value::from(truncate_noting_length(t, REASON_MAX_CHARS));
        let erp_error = serde_json::json!({
            "sqlstate": error.sqlstate,
            "message": field(&error.message),
            "detail": error.detail.as_deref().map(field),
            "hint": error.hint.as_deref().map(field),
        });
        Rejection {
            source: source.to_string(),
            prefix,
            reason,
            erp_error,
            commit_lsn: commit_lsn.to_string(),
            as_text,
        }
    }

    /// Why, as every record says it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A record without its original: id `<prefix>:<n>`, kind, source, reason, the server's fields.
    pub fn record(&self, n: &str) -> serde_json::Map<String, Value> {
        let mut u = serde_json::Map::new();
        u.insert(
            "event_id".into(),
            Value::from(format!("{}:{n}", self.prefix)),
        );
        u.insert("kind".into(), Value::from(possync_events::UNMAPPED));
        u.insert("source".into(), Value::from(self.source.as_str()));
        u.insert("reason".into(), Value::from(self.reason.as_str()));
        u.insert("erp_error".into(), self.erp_error.clone());
        u.insert("commit_lsn".into(), Value::from(self.commit_lsn.as_str()));
        u
    }

    /// Whether an original must be carried as text: asked to, or nested so deep (`depth`) that the record
    /// holding it would be refused for its depth and the server's words lost.
    pub fn carries_text(&self, depth: usize) -> bool {
        self.as_text || depth + 1 > possync_events::domain::MAX_DEPTH
    }

    /// An original's JSON text as the record carries it: cut to [`ORIGINAL_TEXT_MAX_CHARS`], its full length
    /// noted. `head` holds at least the first `min(chars, ORIGINAL_TEXT_MAX_CHARS)` characters of a text of
    /// `chars` characters.
    pub fn text_value(head: &str, chars: usize) -> Value {
        Value::from(crate::pgerr::truncate_known_length(
            head,
            chars,
            ORIGINAL_TEXT_MAX_CHARS,
        ))
    }

    /// The record of the `n`th original event (`None`: the one record of a transaction without events).
    pub fn wrap(&self, n: usize, original: Option<&Value>) -> Value {
        let mut u = self.record(&n.to_string());
        if let Some(o) = original {
            if let Some(id) = o.get("event_id") {
                u.insert("original_event_id".into(), id.clone());
            }
            if self.carries_text(possync_events::depth(o)) {
                let text = o.to_string();
                u.insert(
                    "original_text".into(),
                    Rejection::text_value(&text, text.chars().count()),
                );
            } else {
                u.insert("original".into(), o.clone());
            }
        }
        Value::Object(u)
    }
}

/// The rejected form of a POS transaction the ERP refused: one `unmapped` event per original event (or one for
/// a transaction without events), each carrying why (the server's SQLSTATE, message, detail and hint) and the
/// original event, so that the ERP keeps it as a `malformed` exception. Event ids are
/// `<source>:erp_error:<commit LSN>:<index>` (`…:<commit LSN>:lane<n>:<index>` for the part of apply lane n),
/// never the original id, which stays free for a corrected re-post. With `as_text`, the original is carried as
/// (truncated) JSON text instead of JSON. A spilled transaction's form is written from its file the same way
/// (see [`crate::spill::write_rejected`]).
pub fn rejected_form(
    source: &str,
    txn: &PosTransaction,
    error: &crate::pgerr::ServerError,
    as_text: bool,
    lane: Option<(usize, usize)>,
) -> Vec<Value> {
    let rejection = Rejection::new(source, txn.commit_lsn, error, as_text, lane);
    let originals: Vec<Option<&Value>> = if txn.events.is_empty() {
        vec![None]
    } else {
        txn.events.iter().map(Some).collect()
    };
    let mut records: Vec<Value> = originals
        .into_iter()
        .enumerate()
        .map(|(i, original)| rejection.wrap(i, original))
        .collect();
    // the mirrored rows of the transaction, which the mirror could not take: kept with the reason
    if !txn.changes.is_empty() {
        let rows: Vec<Value> = txn
            .changes
            .iter()
            .map(|c| serde_json::json!({"table": c.table, "op": c.op.as_str(), "row": c.row}))
            .collect();
        let rows = Value::Array(rows);
        let mut u = rejection.record("rows");
        if rejection.carries_text(possync_events::depth(&rows)) {
            let text = rows.to_string();
            u.insert(
                "rows_text".into(),
                Rejection::text_value(&text, text.chars().count()),
            );
        } else {
            u.insert("rows".into(), rows);
        }
        records.push(Value::Object(u));
    }
    records
}

/// Posts a POS transaction the ERP refused as rejected events at its own commit LSN, counts it and says so at
/// ERROR. When the ERP refuses even that, the error is not about this transaction's data after all (or the ERP
/// refuses everything): the session ends and is retried, as for a connection error.
#[allow(clippy::too_many_arguments)]
async fn reject_transaction(
    erp: &Erp,
    mapping: &Arc<Mapping>,
    source: &str,
    txn: &PosTransaction,
    error: &ErpError,
    metrics: &SourceMetrics,
    unflushed: &mut Unflushed,
    committed: &AtomicU64,
) -> Result<(), SessionError> {
    let server = error.server().unwrap_or_else(|| crate::pgerr::ServerError {
        sqlstate: String::new(),
        message: error.to_string(),
        detail: None,
        hint: None,
    });
    let original_ids: Vec<&str> = txn
        .events
        .iter()
        .filter_map(|e| e.get("event_id").and_then(Value::as_str))
        .collect();
    tracing::error!(source, commit_lsn = %txn.commit_lsn, sqlstate = %server.sqlstate, message = %server.message,
        detail = server.detail.as_deref().unwrap_or(""), hint = server.hint.as_deref().unwrap_or(""),
        events = txn.events.len(), event_ids = ?original_ids,
        spilled_changes = txn.spilled.as_ref().map_or(0, |s| s.changes),
        "the ERP refused this POS transaction; keeping it as rejected events and moving on");
    let mut last_error = None;
    for as_text in [false, true] {
        let started = Instant::now();
        let posted = match &txn.spilled {
            // its events are in its file: each is kept from there, as one held in memory would be
            Some(spilled) => {
                let rejection =
                    Rejection::new(source, txn.commit_lsn, &server, as_text, erp.lane());
                crate::spill::apply_spilled(
                    erp,
                    mapping,
                    None,
                    source,
                    txn.commit_lsn,
                    spilled,
                    Some(&rejection),
                )
                .await
            }
            None => {
                let events = rejected_form(source, txn, &server, as_text, erp.lane());
                erp.apply_batch(source, txn.commit_lsn, &events).await
            }
        };
        match posted {
            Ok((outcome, wal)) => {
                metrics.observe_apply(started.elapsed());
                settle(metrics, unflushed, committed, txn, wal);
                count(metrics, &outcome, 1);
                if outcome.applied {
                    metrics
                        .rejected_transactions
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
            Err(e) if e.class() == ErrorClass::Data => {
                tracing::error!(source, commit_lsn = %txn.commit_lsn, as_text, error = %e,
                    "the ERP refused the rejected form of the transaction too");
                last_error = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // a spilled transaction whose rejected form is refused as well is too large for the ERP to keep (jsonb holds
    // at most 1 GB): its file is kept on this host instead, and one record says where, so that the source moves
    // on instead of retrying it for good
    if let (Some(spilled), Some(e)) = (&txn.spilled, &last_error) {
        let kept = crate::spill::keep(spilled, source, txn.commit_lsn)
            .map_err(|io| SessionError::Erp(ErpError::Spill(io.to_string())))?;
        let rejection = Rejection::new(source, txn.commit_lsn, &server, true, erp.lane());
        let mut record = rejection.record("kept");
        record.insert(
            "reason".into(),
            Value::from(format!(
                "{}; neither its events nor their rejected form fit into the ERP ({e}): its {} changes are kept in \
                 the file {} on the bridge's host",
                rejection.reason(),
                spilled.changes,
                kept.display()
            )),
        );
        record.insert("kept_file".into(), Value::from(kept.display().to_string()));
        record.insert("changes".into(), Value::from(spilled.changes));
        let started = Instant::now();
        let (outcome, wal) = erp
            .apply_batch(source, txn.commit_lsn, &[Value::Object(record)])
            .await?;
        metrics.observe_apply(started.elapsed());
        settle(metrics, unflushed, committed, txn, wal);
        count(metrics, &outcome, 1);
        if outcome.applied {
            metrics
                .rejected_transactions
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(source, commit_lsn = %txn.commit_lsn, kept = %kept.display(), changes = spilled.changes,
            "the ERP took neither this POS transaction nor its rejected form: its rows are kept in this file");
        return Ok(());
    }
    Err(SessionError::Erp(last_error.unwrap_or(ErpError::Refused)))
}

/// How often an idle applier asks the ERP how far it has flushed (its WAL writer flushes every 200 ms by default).
const FLUSH_CHECK: Duration = Duration::from_millis(100);

/// Batches the ERP committed asynchronously, oldest first, until its WAL flush passes them.
#[derive(Debug, Default)]
pub struct Unflushed {
    queue: std::collections::VecDeque<(Lsn, Lsn)>,
    /// The furthest ERP flush position seen.
    flushed: Lsn,
}

impl Unflushed {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A batch whose ERP commit ends at or before `erp`, carrying POS transactions up to `pos`.
    pub fn push(&mut self, erp: Lsn, pos: Lsn) {
        self.queue.push_back((erp, pos));
    }

    /// Empties it: the ERP position the ERP must flush for all of it to be on disk (0/0 when it all is), and
    /// the furthest flush position seen.
    pub fn take(&mut self) -> (Lsn, Lsn) {
        let waiting = self
            .queue
            .drain(..)
            .map(|(erp, _)| erp)
            .max()
            .unwrap_or(Lsn::ZERO);
        (waiting, self.flushed)
    }

    /// Moves `committed` (what the POS is told) to the last batch the ERP has flushed.
    pub fn confirm(&mut self, flushed: Lsn, committed: &AtomicU64) {
        self.flushed = self.flushed.max(flushed);
        let mut last = None;
        while let Some(&(erp, pos)) = self.queue.front() {
            if erp > flushed {
                break;
            }
            last = Some(pos);
            self.queue.pop_front();
        }
        if let Some(pos) = last {
            committed.fetch_max(pos.0, Ordering::AcqRel);
        }
    }
}

/// On a clean stop, waits briefly for the ERP's WAL writer so the POS can be told everything; what is left
/// unconfirmed is streamed again on the next start and skipped by the checkpoint.
async fn confirm_before_stop(erp: &Erp, unflushed: &mut Unflushed, committed: &AtomicU64) {
    for _ in 0..10 {
        if unflushed.is_empty() {
            return;
        }
        match erp.wal().await {
            Ok(wal) => unflushed.confirm(wal.flushed, committed),
            Err(_) => return,
        }
        if !unflushed.is_empty() {
            tokio::time::sleep(FLUSH_CHECK).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_never_passes_an_uncommitted_transaction() {
        let (c, r, h) = (Lsn(100), Lsn(500), Lsn(300));
        // a handed transaction at 300 is not committed yet: report 100
        assert_eq!(flush_position(c, r, h, true), Lsn(100));
        // a transaction is half received or waiting for the applier: report 100
        assert_eq!(flush_position(c, r, Lsn(90), false), Lsn(100));
        // everything handed is committed and nothing is in hand: the WAL up to 500 holds nothing for us
        assert_eq!(flush_position(Lsn(300), r, h, true), Lsn(500));
        assert_eq!(sanitize("Store-42.East"), "store_42_east");
    }

    #[test]
    fn the_pos_is_told_only_what_the_erp_has_flushed() {
        let committed = AtomicU64::new(10);
        let mut u = Unflushed::default();
        u.push(Lsn(1000), Lsn(20));
        u.push(Lsn(2000), Lsn(30));
        u.push(Lsn(3000), Lsn(40));
        u.confirm(Lsn(999), &committed);
        assert_eq!(committed.load(Ordering::Acquire), 10, "nothing flushed yet");
        u.confirm(Lsn(2500), &committed);
        assert_eq!(committed.load(Ordering::Acquire), 30, "two batches on disk");
        assert!(!u.is_empty());
        u.confirm(Lsn(3000), &committed);
        assert_eq!(committed.load(Ordering::Acquire), 40);
        assert!(u.is_empty());
        // never backwards
        u.push(Lsn(4000), Lsn(35));
        u.confirm(Lsn(5000), &committed);
        assert_eq!(committed.load(Ordering::Acquire), 40);
    }

    #[test]
    fn a_refused_transaction_becomes_one_unmapped_event_per_event_with_the_servers_words() {
        let txn = PosTransaction {
            commit_lsn: Lsn(0x1972430),
            end_lsn: Lsn(0x1972500),
            commit_time: 0,
            events: vec![
                serde_json::json!({"event_id": "B-1", "kind": "sale"}),
                serde_json::json!({"event_id": "B-2", "kind": "sale"}),
            ],
            changes: vec![],
            spilled: None,
        };
        let error = crate::pgerr::ServerError {
            sqlstate: "22003".into(),
            message: format!("value {} is out of range", "9".repeat(1_000_000)),
            detail: Some("line 1\nline 2".into()),
            hint: Some("fix the till".into()),
        };
        let form = rejected_form("store42", &txn, &error, false, None);
        assert_eq!(form.len(), 2);
        assert_eq!(form[0]["event_id"], "store42:erp_error:0/1972430:0");
        assert_eq!(form[1]["original_event_id"], "B-2");
        assert_eq!(form[1]["original"]["kind"], "sale");
        assert_eq!(form[0]["kind"], "unmapped");
        let reason = form[0]["reason"].as_str().unwrap_or_default();
        assert_eq!(reason.chars().count(), crate::pgerr::REASON_MAX_CHARS);
        assert!(reason.starts_with(
            "the ERP raised 22003 while posting POS transaction 0/1972430: value 999"
        ));
        assert!(reason.contains("characters in all]"), "{reason}");
        assert!(!reason.chars().any(char::is_control));
        assert_eq!(form[0]["erp_error"]["hint"], "fix the till");
        let text = rejected_form("store42", &txn, &error, true, None);
        assert!(text[0].get("original").is_none());
        assert!(text[0]["original_text"]
            .as_str()
            .unwrap_or_default()
            .contains("B-1"));
        let mut deep = serde_json::json!("leaf");
        for _ in 0..possync_events::domain::MAX_DEPTH {
            deep = serde_json::json!({ "k": deep });
        }
        let nested = PosTransaction {
            events: vec![deep],
            ..txn.clone()
        };
        let kept = rejected_form("store42", &nested, &error, false, None);
        assert!(kept[0].get("original").is_none());
        assert!(possync_events::depth(&kept[0]) <= possync_events::domain::MAX_DEPTH);
        let empty = PosTransaction {
            events: vec![],
            ..txn
        };
        assert_eq!(
            rejected_form("store42", &empty, &error, false, None).len(),
            1
        );
    }

    /// An owner session that the server ends after `lives` pings.
    struct FakeOwner {
        pings: std::sync::atomic::AtomicUsize,
        lives: usize,
    }

    impl Owner for FakeOwner {
        fn is_closed(&self) -> bool {
            self.pings.load(Ordering::SeqCst) >= self.lives
        }

        async fn ping(&self) -> Result<(), ErpError> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            // the round trip: the lanes' work goes on meanwhile
            tokio::task::yield_now().await;
            Ok(())
        }
    }

    /// Ticks that come at once (the test times nothing).
    struct AtOnce;

    impl Ticks for AtOnce {
        async fn tick(&mut self) {
            tokio::task::yield_now().await;
        }
    }

    fn owner_for(lives: usize) -> FakeOwner {
        FakeOwner {
            pings: std::sync::atomic::AtomicUsize::new(0),
            lives,
        }
    }

    #[tokio::test]
    async fn the_owner_session_speaks_while_the_lanes_apply() {
        let owner = owner_for(usize::MAX);
        // a group that lasts until the owner has spoken three times
        let work = async {
            while owner.pings.load(Ordering::SeqCst) < 3 {
                tokio::task::yield_now().await;
            }
            Ok::<_, SessionError>("applied")
        };
        let done = while_owning(&owner, &mut AtOnce, work).await;
        assert_eq!(done.ok(), Some("applied"));
        assert!(owner.pings.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn the_lanes_stop_once_the_owner_session_is_gone() {
        // the server ends the owner session during a long group: the lanes start nothing more
        let owner = owner_for(2);
        let started = std::sync::atomic::AtomicUsize::new(0);
        let work = async {
            loop {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        };
        let done: Result<(), SessionError> = while_owning(&owner, &mut AtOnce, work).await;
        assert!(
            matches!(done, Err(SessionError::ErpConnectionLost)),
            "{done:?}"
        );
        assert!(started.load(Ordering::SeqCst) > 0);
        // an owner session already gone: nothing is started at all
        let gone = owner_for(0);
        let started = std::sync::atomic::AtomicUsize::new(0);
        let work = async {
            started.fetch_add(1, Ordering::SeqCst);
            Ok::<_, SessionError>(())
        };
        let done = while_owning(&gone, &mut AtOnce, work).await;
        assert!(matches!(done, Err(SessionError::ErpConnectionLost)));
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn slot_loss_marks_never_reach_a_real_commit_position() {
        // commit records start 8-byte aligned: the marks live below the next one
        assert_eq!(last_commit_of(Lsn(0x1976A90)), Lsn(0x1976A90));
        assert_eq!(last_commit_of(Lsn(0x1976A91)), Lsn(0x1976A90));
        assert_eq!(last_commit_of(Lsn(0x1976A92)), Lsn(0x1976A90));
        assert_eq!(last_commit_of(Lsn(0x1)), Lsn::ZERO);
    }

    #[test]
    fn passwords_are_redacted_from_urls_and_debug_output() {
        assert_eq!(
            redact_password("postgres://bridge:s3cret@pos42:5432/pos"),
            "postgres://bridge:***@pos42:5432/pos"
        );
        assert_eq!(
            redact_password("host=pos42 user=bridge password=s3cret dbname=pos"),
            "host=pos42 user=bridge password=*** dbname=pos"
        );
        assert_eq!(
            redact_password("postgres://bridge@pos42/pos"),
            "postgres://bridge@pos42/pos"
        );
        let s = Source {
            name: "s42".into(),
            url: "postgresql://u:hunter2@h/db".into(),
            ..Source::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
