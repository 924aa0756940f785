//! The operations dashboard: one self-contained page at `/` and its data at `/api/dashboard.json`.
//!
//! Health per source comes from this bridge's metrics registry; the KPIs and open exceptions come from the ERP's
//! possync views (`kpi_integration`, `open_exceptions`, `kpi_audit`, `kpi_inventory_accuracy`, `kpi_oversell`),
//! read by one background task every [`REFRESH`] so that a page view never waits for the ERP. The same task keeps
//! the last [`HISTORY_SAMPLES`] lag samples per source for the page's chart.
//!
//! Health of a source, at a glance:
//! - **healthy**: streaming and the last applied transaction reached the ERP within [`HEALTHY_BELOW`], or
//!   standing by while another bridge owns the source;
//! - **lagging**: streaming with a lag under [`LAGGING_BELOW`], or still starting;
//! - **failing**: retrying after an error (POS or ERP disconnected), stopped, or lagging by
//!   [`LAGGING_BELOW`] or more.
//!
//! The lag is read on the POS (see [`crate::lag`]): it keeps growing while nothing is applied, whether the ERP is
//! down, the stream is down or one apply takes long, and it is 0 once the ERP holds everything the POS had.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::metrics::{Registry, SourceMetrics, SourceState};

/// A lag below this is healthy.
pub const HEALTHY_BELOW: Duration = Duration::from_secs(1);
/// A lag below this is lagging; at or above it the source is failing.
pub const LAGGING_BELOW: Duration = Duration::from_secs(30);
/// How often the ERP views are read and lag is sampled.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Lag samples kept per source (3 minutes at [`REFRESH`]).
pub const HISTORY_SAMPLES: usize = 90;
/// The ERP views are read while the page's data was asked for this recently.
pub const WATCHED_FOR: Duration = Duration::from_secs(60);
/// Reconcile and the invariant check scan the ledgers: read them every this many refreshes only.
const BOOKS_EVERY: u32 = 15;
/// Longest wait for the ERP in one refresh; the page then shows the last good figures and the error.
const ERP_TIMEOUT: Duration = Duration::from_secs(5);

/// The colour a source gets on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Lagging,
    Failing,
}

/// Classifies a source by its state and its lag (see the module documentation).
pub fn health(state: SourceState, lag: Duration) -> Health {
    match state {
        SourceState::Standby => Health::Healthy,
        SourceState::Starting => Health::Lagging,
        SourceState::Retrying
        | SourceState::Stopped
        | SourceState::SlotLost
        | SourceState::PublicationBroken => Health::Failing,
        SourceState::Streaming if lag < HEALTHY_BELOW => Health::Healthy,
        SourceState::Streaming if lag < LAGGING_BELOW => Health::Lagging,
        SourceState::Streaming => Health::Failing,
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
struct LagSample {
    /// Unix milliseconds.
    at: u64,
    /// exact, from the registry's microseconds (serialized as a decimal string)
    lag_seconds: Decimal,
    lag_bytes: u64,
    /// to one decimal
    txns_per_second: Decimal,
}

#[derive(Debug, Default)]
struct SourceHistory {
    samples: VecDeque<LagSample>,
    /// Transactions applied at the previous sample, to turn the counter into a rate.
    previous: Option<(Instant, u64)>,
}

/// What the last ERP refresh read: one JSON value per section, or why a section could not be read.
#[derive(Debug, Default)]
struct ErpSnapshot {
    refreshed_at: Option<u64>,
    error: Option<String>,
    sections: BTreeMap<&'static str, Value>,
    section_errors: BTreeMap<&'static str, String>,
}

/// The state behind the page: live figures from the registry, lag history and the last ERP snapshot.
#[derive(Debug)]
pub struct Dashboard {
    registry: Arc<Registry>,
    history: Mutex<BTreeMap<String, SourceHistory>>,
    erp: Mutex<ErpSnapshot>,
    /// When the page's data was last asked for: the ERP views are read only while someone watches.
    viewed: Mutex<Option<Instant>>,
    /// Wakes the refresh task when a first look finds the ERP figures stale.
    wake: tokio::sync::Notify,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A source's lag (as time, and in WAL bytes).
fn lag_of(s: &SourceMetrics) -> (Duration, u64) {
    let f = s.lag_figures();
    (Duration::from_micros(f.micros), f.bytes)
}

/// A duration in seconds, exactly (microsecond precision).
fn seconds(d: Duration) -> Decimal {
    Decimal::from_i128_with_scale(d.as_micros() as i128, 6).normalize()
}

impl Dashboard {
    pub fn new(registry: Arc<Registry>) -> Dashboard {
        Dashboard {
            registry,
            history: Mutex::new(BTreeMap::new()),
            erp: Mutex::new(ErpSnapshot::default()),
            viewed: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// True while the page's data was asked for within [`WATCHED_FOR`].
    pub fn watched(&self) -> bool {
        self.viewed
            .lock()
            .ok()
            .and_then(|v| *v)
            .is_some_and(|at| at.elapsed() < WATCHED_FOR)
    }

    /// Notes a look at the page's data; the first look after a while has the ERP read at once.
    fn mark_viewed(&self) {
        let was_watched = self.watched();
        if let Ok(mut v) = self.viewed.lock() {
            *v = Some(Instant::now());
        }
        if !was_watched {
            self.wake.notify_one();
        }
    }

    /// Records one lag and throughput sample per source.
    pub fn sample(&self) {
        let now = Instant::now();
        let at = unix_millis();
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        for s in self.registry.sources() {
            let (lag, lag_bytes) = lag_of(&s);
            let applied = s.transactions_applied.load(Ordering::Relaxed);
            let h = history.entry(s.name.clone()).or_default();
            let txns_per_second = match h.previous {
                Some((then, before)) if now > then => {
                    // samples less than a microsecond apart (tests) have no rate
                    Decimal::from(applied.saturating_sub(before))
                        .checked_div(seconds(now - then))
                        .unwrap_or_default()
                        .round_dp(1)
                }
                _ => Decimal::ZERO,
            };
            h.previous = Some((now, applied));
            h.samples.push_back(LagSample {
                at,
                lag_seconds: seconds(lag),
                lag_bytes,
                txns_per_second,
            });
            while h.samples.len() > HISTORY_SAMPLES {
                h.samples.pop_front();
            }
        }
    }

    /// The page's data: sources with their health and lag history, and the ERP's KPIs and open exceptions.
    pub fn json(&self) -> String {
        self.mark_viewed();
        let history = self.history.lock().ok();
        let sources: Vec<Value> = self
            .registry
            .sources()
            .iter()
            .map(|s| {
                let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let (lag, lag_bytes) = lag_of(s);
                let state = s.state();
                let samples: Vec<LagSample> = history
                    .as_ref()
                    .and_then(|h| h.get(&s.name))
                    .map(|h| h.samples.iter().copied().collect())
                    .unwrap_or_default();
                let txns_per_second = samples.last().map_or(Decimal::ZERO, |l| l.txns_per_second);
                json!({
                    "name": s.name,
                    "state": state.as_str(),
                    "health": health(state, lag),
                    "checkpoint": Lsn(r(&s.checkpoint)).to_string(),
                    "lag_seconds": seconds(lag),
                    "lag_bytes": lag_bytes,
                    "txns_per_second": txns_per_second,
                    "transactions_applied": r(&s.transactions_applied),
                    "events_applied": r(&s.events_applied),
                    "events_duplicate": r(&s.events_duplicate),
                    "events_conflict": r(&s.events_conflict),
                    "events_held": r(&s.events_held),
                    "events_rejected": r(&s.events_rejected),
                    "retries": r(&s.retries),
                    "history": samples,
                })
            })
            .collect();
        drop(history);
        let erp = match self.erp.lock() {
            Ok(e) => json!({
                "refreshed_at": e.refreshed_at,
                "error": e.error,
                "sections": e.sections,
                "section_errors": e.section_errors,
            }),
            Err(_) => json!({ "error": "snapshot unavailable" }),
        };
        json!({
            "now": unix_millis(),
            "refresh_seconds": REFRESH.as_secs(),
            "thresholds": {
                "healthy_below_seconds": HEALTHY_BELOW.as_secs(),
                "lagging_below_seconds": LAGGING_BELOW.as_secs(),
            },
            "sources": sources,
            "erp": erp,
        })
        .to_string()
    }

    fn store_erp(
        &self,
        error: Option<String>,
        sections: Vec<(&'static str, Result<Value, String>)>,
    ) {
        let Ok(mut snap) = self.erp.lock() else {
            return;
        };
        snap.error = error;
        for (name, result) in sections {
            match result {
                Ok(v) => {
                    snap.section_errors.remove(name);
                    snap.sections.insert(name, v);
                }
                Err(e) => {
                    snap.section_errors.insert(name, e);
                }
            }
        }
        if snap.error.is_none() {
            snap.refreshed_at = Some(unix_millis());
        }
    }
}

/// The sections read on every refresh: name and a query returning one JSON text value. Amounts are cast to text so
/// that the page shows them exactly as the ERP holds them.
const SECTIONS: [(&str, &str); 6] = [
    (
        "integration",
        "SELECT coalesce(json_agg(json_build_object(
             'source', k.source_id, 'checkpoint', k.checkpoint::text, 'last_applied_at', k.last_applied_at,
             'seconds_since_applied', floor(extract(epoch FROM k.lag))::bigint,
             'events_last_5_minutes', k.events_last_5_minutes, 'events_last_hour', k.events_last_hour,
             'held', k.held, 'rejected', k.rejected, 'events_applied', k.events_applied)
             ORDER BY k.source_id), '[]'::json)::text
           FROM possync.kpi_integration k",
    ),
    (
        "exceptions_by_kind",
        "SELECT coalesce(json_agg(json_build_object('kind', g.kind, 'open', g.n, 'oldest_seconds', g.oldest,
             'amount_at_stake', g.amount::text) ORDER BY g.n DESC, g.kind), '[]'::json)::text
           FROM (SELECT x.kind, count(*) AS n, floor(extract(epoch FROM max(x.age)))::bigint AS oldest,
                        sum(x.amount_at_stake) AS amount
                   FROM possync.open_exceptions x GROUP BY x.kind) g",
    ),
    (
        "recent_exceptions",
        "SELECT coalesce(json_agg(json_build_object('id', x.exception_id, 'kind', x.kind,
             'location', x.location_id, 'source', x.source, 'event_id', x.event_id, 'reason', x.reason,
             'next_step', x.next_step, 'age_seconds', floor(extract(epoch FROM x.age))::bigint,
             'amount_at_stake', x.amount_at_stake::text) ORDER BY x.raised_at DESC, x.exception_id DESC),
             '[]'::json)::text
           FROM (SELECT * FROM possync.open_exceptions ORDER BY raised_at DESC, exception_id DESC LIMIT 12) x",
    ),
    (
        "audit",
        "SELECT coalesce(json_agg(json_build_object('measure', a.measure, 'dimension', a.dimension,
             'age', a.age, 'value', a.value::text)), '[]'::json)::text
           FROM possync.kpi_audit a",
    ),
    (
        "inventory_accuracy",
        "SELECT coalesce(json_agg(json_build_object('location', a.location_id, 'items_counted', a.items_counted,
             'counted_qty', a.counted_qty::text, 'absolute_variance', a.absolute_variance::text,
             'accuracy', a.accuracy::text, 'last_counted', a.last_counted) ORDER BY a.location_id),
             '[]'::json)::text
           FROM possync.kpi_inventory_accuracy a",
    ),
    (
        "oversell",
        "SELECT coalesce(json_agg(json_build_object('location', o.location_id,
             'insufficient_reservations', o.insufficient_reservations, 'negative_on_hand', o.negative_on_hand,
             'skus_negative_now', o.skus_negative_now) ORDER BY o.location_id), '[]'::json)::text
           FROM possync.kpi_oversell o",
    ),
];

const BOOKS: &str = "SELECT json_build_object(
       'reconcile_discrepancies', (SELECT count(*) FROM possync.reconcile()),
       'broken_invariants', (SELECT count(*) FROM possync.check_invariants()))::text";

async fn connect_erp(url: &str) -> Result<Client, String> {
    let client = crate::tls::connect(url).await.map_err(|e| e.to_string())?;
    // a slow view must not hold the ERP; the page keeps the last figures meanwhile
    client
        .batch_execute(
            "SET application_name = 'possync-bridge dashboard'; SET statement_timeout = '4s'",
        )
        .await
        .map_err(|e| db_error(&e))?;
    Ok(client)
}

/// The server's message, or the client error with its cause ("error connecting to server: Connection refused").
fn db_error(e: &tokio_postgres::Error) -> String {
    crate::pgerr::describe(e)
}

async fn read_section(client: &Client, sql: &str) -> Result<Value, String> {
    let row = client.query_one(sql, &[]).await.map_err(|e| db_error(&e))?;
    let text: Option<String> = row.try_get(0).map_err(|e| e.to_string())?;
    serde_json::from_str(text.as_deref().unwrap_or("null")).map_err(|e| e.to_string())
}

/// Samples lag and reads the ERP's views every [`REFRESH`] until `shutdown` turns true.
pub async fn refresh(
    dashboard: Arc<Dashboard>,
    erp_url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    let mut round: u32 = 0;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => dashboard.sample(),
            _ = dashboard.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        // the views scan the ERP's tables: a bridge nobody watches leaves the ERP to posting
        if !dashboard.watched() {
            continue;
        }
        let read = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(connect_erp(&erp_url).await?);
            }
            let Some(c) = client.as_ref() else {
                return Err("no ERP connection".to_string());
            };
            let mut sections = Vec::with_capacity(SECTIONS.len() + 1);
            for (name, sql) in SECTIONS {
                sections.push((name, read_section(c, sql).await));
            }
            if round.is_multiple_of(BOOKS_EVERY) {
                sections.push(("books", read_section(c, BOOKS).await));
            }
            Ok(sections)
        };
        match tokio::time::timeout(ERP_TIMEOUT, read).await {
            Ok(Ok(sections)) => {
                for (name, r) in &sections {
                    if let Err(e) = r {
                        tracing::debug!(section = name, error = %e, "dashboard cannot read an ERP view");
                    }
                }
                dashboard.store_erp(None, sections);
                warned = false;
            }
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(error = %e, "dashboard cannot read the ERP; showing the last figures");
                    warned = true;
                }
                client = None;
                dashboard.store_erp(Some(e), Vec::new());
            }
            Err(_) => {
                client = None;
                dashboard.store_erp(Some("the ERP did not answer within 5 s".into()), Vec::new());
            }
        }
        round = round.wrapping_add(1);
    }
}

/// The page. Everything it shows from the data is put in with `textContent` or as numbers in SVG attributes, never
/// parsed as HTML: exception reasons and source names come from user data.
pub const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>possync · integration health</title>
<style>
  :root { --ok: #1a7f37; --warn: #b7791f; --bad: #c62828; --ink: #1f2328; --muted: #5c6670; --line: #d8dee4;
          --bg: #f6f8fa; --card: #fff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         background: var(--bg); }
  header { display: flex; align-items: center; gap: 16px; padding: 12px 20px; background: var(--ink); color: #fff; }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  header .meta { margin-left: auto; font-size: 12px; opacity: .85; }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 8px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 12px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  .source { border-left: 8px solid var(--muted); }
  .source[data-health="healthy"] { border-left-color: var(--ok); }
  .source[data-health="lagging"] { border-left-color: var(--warn); }
  .source[data-health="failing"] { border-left-color: var(--bad); }
  .source .top { display: flex; align-items: baseline; gap: 10px; }
  .source .name { font-size: 18px; font-weight: 600; }
  .pill { display: inline-block; padding: 1px 9px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600;
          text-transform: uppercase; background: var(--muted); }
  .pill.healthy { background: var(--ok); } .pill.lagging { background: var(--warn); } .pill.failing { background: var(--bad); }
  .state { color: var(--muted); }
  .figures { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px 12px; margin: 10px 0 6px; }
  .figure .v { font-size: 17px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .figure .k { font-size: 11px; color: var(--muted); }
  .small { font-size: 12px; color: var(--muted); }
  svg.chart { width: 100%; height: 70px; display: block; background: #fbfcfd; border: 1px solid var(--line); border-radius: 4px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { font-size: 11px; color: var(--muted); font-weight: 600; text-transform: uppercase; }
  td.num, th.num { text-align: right; }
  td.num, th.num, td.nowrap { white-space: nowrap; }
  td.event { max-width: 240px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  td.reason { overflow-wrap: anywhere; }
  td.reason .next { color: var(--muted); font-size: 12px; }
  .card h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0 0 6px; }
  .banner { padding: 8px 12px; border-radius: 6px; background: #fdecea; color: var(--bad); border: 1px solid #f5c2c0; }
  .empty { color: var(--muted); font-style: italic; }
  .kpis { display: grid; grid-template-columns: 1fr 1fr 1.4fr; gap: 12px; align-items: start; }
  @media (max-width: 1000px) { .kpis { grid-template-columns: 1fr; } }
  .figures.three { grid-template-columns: repeat(3, 1fr); }
  .bigno { font-size: 26px; font-weight: 700; }
  .bigno.bad { color: var(--bad); } .bigno.ok { color: var(--ok); }
  .legend { font-size: 12px; color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>possync · integration health</h1>
  <span id="overall" class="pill">loading</span>
  <span class="meta" id="meta">waiting for data…</span>
</header>
<main>
  <div id="banner" class="banner" hidden></div>
  <section>
    <h2>Sources</h2>
    <div id="sources" class="grid"><div class="card empty">no data yet</div></div>
    <p class="legend" id="legend"></p>
  </section>
  <section>
    <h2>KPIs</h2>
    <div class="kpis">
      <div class="card"><h3>Open exceptions by kind</h3><table id="by-kind"></table></div>
      <div class="card" id="books"></div>
      <div class="card"><h3>Stock by location: accuracy and oversell</h3><table id="stock"></table></div>
    </div>
  </section>
  <section>
    <h2>Open exceptions, newest first</h2>
    <div class="card"><table id="recent"></table></div>
  </section>
</main>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Number(s);
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function fmtBytes(b) {
  b = Number(b);
  if (b < 1024) return b + " B";
  if (b < 1048576) return (b / 1024).toFixed(1) + " KiB";
  if (b < 1073741824) return (b / 1048576).toFixed(1) + " MiB";
  return (b / 1073741824).toFixed(1) + " GiB";
}
function table(node, headers, rows, emptyText) {
  clear(node);
  const head = el("tr");
  for (const h of headers) {
    const attrs = h.num ? { class: "num" } : {};
    if (h.title) attrs.title = h.title;
    head.appendChild(el("th", attrs, h.label));
  }
  node.appendChild(head);
  if (rows.length === 0) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: headers.length, class: "empty" }, emptyText));
    node.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = el("tr");
    row.forEach((cell, i) => {
      const attrs = Object.assign({}, headers[i].num ? { class: "num" } : {}, headers[i].cls ? { class: headers[i].cls } : {});
      if (headers[i].field) attrs["data-field"] = headers[i].field;
      if (cell instanceof Node) {
        const td = el("td", attrs);
        td.appendChild(cell);
        tr.appendChild(td);
      } else {
        tr.appendChild(el("td", attrs, cell === null || cell === undefined ? "–" : cell));
      }
    });
    node.appendChild(tr);
  }
}

function chart(samples, thresholds) {
  const w = 360, h = 70, pad = 4;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const lags = samples.map(s => Number(s.lag_seconds) || 0);
  const top = Math.max(thresholds.healthy_below_seconds * 1.5, ...lags) * 1.1;
  const y = v => h - pad - (Math.min(v, top) / top) * (h - 2 * pad);
  for (const [v, colour] of [[thresholds.healthy_below_seconds, "#1a7f37"], [thresholds.lagging_below_seconds, "#c62828"]]) {
    if (v > top) continue;
    const line = document.createElementNS(SVG, "line");
    for (const [k, a] of [["x1", 0], ["x2", w], ["y1", y(v)], ["y2", y(v)]]) line.setAttribute(k, String(a));
    line.setAttribute("stroke", colour); line.setAttribute("stroke-dasharray", "4 3"); line.setAttribute("stroke-width", "1");
    svg.appendChild(line);
  }
  if (lags.length > 0) {
    const n = Math.max(lags.length - 1, 1);
    const points = lags.map((v, i) => `${(pad + (i / n) * (w - 2 * pad)).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", lags.length === 1 ? `${pad},${y(lags[0])} ${w - pad},${y(lags[0])}` : points);
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0969da"); line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", String(w - pad)); label.setAttribute("y", "12"); label.setAttribute("text-anchor", "end");
  label.setAttribute("font-size", "10"); label.setAttribute("fill", "#5c6670");
  label.textContent = "max " + fmtSeconds(top / 1.1);
  svg.appendChild(label);
  return svg;
}

function figure(label, value, field) {
  const f = el("div", { class: "figure" });
  f.appendChild(el("div", { class: "v", "data-field": field }, value));
  f.appendChild(el("div", { class: "k" }, label));
  return f;
}

function renderSources(data) {
  const node = clear(document.getElementById("sources"));
  const erpRows = (data.erp.sections && data.erp.sections.integration) || [];
  const erpBySource = new Map(erpRows.map(r => [r.source, r]));
  if (data.sources.length === 0) node.appendChild(el("div", { class: "card empty" }, "this bridge streams no source"));
  for (const s of data.sources) {
    const erp = erpBySource.get(s.name) || {};
    const card = el("div", { class: "card source", "data-source": s.name, "data-health": s.health });
    const top = el("div", { class: "top" });
    top.appendChild(el("span", { class: "name" }, s.name));
    top.appendChild(el("span", { class: "pill " + s.health, "data-field": "health" }, s.health));
    top.appendChild(el("span", { class: "state", "data-field": "state" }, s.state));
    card.appendChild(top);
    const figs = el("div", { class: "figures" });
    figs.appendChild(figure("lag", fmtSeconds(s.lag_seconds), "lag_seconds"));
    figs.appendChild(figure("lag (WAL)", fmtBytes(s.lag_bytes), "lag_bytes"));
    figs.appendChild(figure("txn/s", Number(s.txns_per_second).toFixed(1), "txns_per_second"));
    figs.appendChild(figure("retries", s.retries, "retries"));
    figs.appendChild(figure("events applied", s.events_applied, "events_applied"));
    figs.appendChild(figure("transactions", s.transactions_applied, "transactions_applied"));
    figs.appendChild(figure("held", erp.held !== undefined ? erp.held : s.events_held, "held"));
    figs.appendChild(figure("rejected", erp.rejected !== undefined ? erp.rejected : s.events_rejected, "rejected"));
    card.appendChild(figs);
    card.appendChild(chart(s.history || [], data.thresholds));
    const foot = el("div", { class: "small" });
    const parts = ["checkpoint " + s.checkpoint];
    if (erp.events_last_5_minutes !== undefined)
      parts.push(`ERP: ${erp.events_last_5_minutes} events in 5 min, ${erp.events_last_hour} in 1 h`);
    if (erp.seconds_since_applied !== undefined && erp.seconds_since_applied !== null)
      parts.push("last applied " + fmtSeconds(erp.seconds_since_applied) + " ago");
    if (s.events_duplicate || s.events_conflict) parts.push(`duplicate ${s.events_duplicate}, conflict ${s.events_conflict}`);
    foot.textContent = parts.join(" · ");
    card.appendChild(foot);
    node.appendChild(card);
  }
  const order = { healthy: 0, lagging: 1, failing: 2 };
  const worst = data.sources.reduce((w, s) => (order[s.health] > order[w] ? s.health : w), "healthy");
  const overall = document.getElementById("overall");
  overall.className = "pill " + worst;
  overall.textContent = data.sources.length === 0 ? "no sources" : worst;
  document.getElementById("legend").textContent =
    `healthy: streaming with lag under ${fmtSeconds(data.thresholds.healthy_below_seconds)} (or standby) · ` +
    `lagging: lag under ${fmtSeconds(data.thresholds.lagging_below_seconds)} or starting · ` +
    `failing: lag ${fmtSeconds(data.thresholds.lagging_below_seconds)} or more, retrying or stopped · ` +
    `chart: lag of the last ${fmtSeconds((data.sources[0] && data.sources[0].history.length || 0) * data.refresh_seconds)}`;
}

function renderErp(data) {
  const erp = data.erp || {};
  const sec = erp.sections || {};
  const errs = erp.section_errors || {};
  const banner = document.getElementById("banner");
  const problems = [];
  if (erp.error) problems.push("ERP unreachable: " + erp.error);
  for (const [name, e] of Object.entries(errs)) problems.push(name + ": " + e);
  banner.hidden = problems.length === 0;
  banner.textContent = problems.join(" · ");

  table(document.getElementById("by-kind"),
    [{ label: "kind", field: "kind" }, { label: "open", num: true, field: "open" }, { label: "oldest", num: true },
     { label: "at stake", num: true }],
    (sec.exceptions_by_kind || []).map(k => [k.kind, k.open, fmtSeconds(k.oldest_seconds), k.amount_at_stake]),
    "no open exceptions");
  const reason = x => {
    const d = el("div");
    d.appendChild(el("div", {}, x.reason));
    if (x.next_step) d.appendChild(el("div", { class: "next" }, x.next_step));
    return d;
  };
  const eventId = x => el("span", { title: x.event_id || "" }, x.event_id || "–");
  table(document.getElementById("recent"),
    [{ label: "#", num: true }, { label: "kind", cls: "nowrap" }, { label: "location", cls: "nowrap" },
     { label: "event", cls: "event" }, { label: "age", num: true }, { label: "at stake", num: true },
     { label: "reason and next step", cls: "reason" }],
    (sec.recent_exceptions || []).map(x => [x.id, x.kind, x.location, eventId(x), fmtSeconds(x.age_seconds),
      x.amount_at_stake, reason(x)]),
    "nothing to work on");

  const books = clear(document.getElementById("books"));
  books.appendChild(el("h3", {}, "Books agree? · sales audit"));
  const b = sec.books;
  if (b) {
    const bad = Number(b.reconcile_discrepancies) + Number(b.broken_invariants);
    books.appendChild(el("div", { class: "bigno " + (bad === 0 ? "ok" : "bad"), "data-field": "books" },
      bad === 0 ? "yes" : "no"));
    books.appendChild(el("div", { class: "small" },
      `reconcile: ${b.reconcile_discrepancies} discrepancies · invariants: ${b.broken_invariants} broken`));
  } else {
    books.appendChild(el("div", { class: "empty" }, "not read yet"));
  }
  const rows = sec.audit || [];
  const pick = (m, d) => { const r = rows.find(r => r.measure === m && r.dimension === d); return r ? r.value : "0"; };
  const open = rows.filter(r => r.measure === "open_exceptions").reduce((n, r) => n + Number(r.value), 0);
  const old = rows.filter(r => r.measure === "open_exceptions" && r.age === "1 day or more")
    .reduce((n, r) => n + Number(r.value), 0);
  const figs = el("div", { class: "figures three" });
  figs.appendChild(figure("open exceptions", open, "open_exceptions"));
  figs.appendChild(figure("open a day or more", old, "open_a_day"));
  figs.appendChild(figure("days audited", pick("days_audited", "count"), "days_audited"));
  figs.appendChild(figure("manual adjustments", pick("manual_adjustments", "count"), "adjustments"));
  figs.appendChild(figure("adjusted value", pick("manual_adjustments", "value"), "adjusted_value"));
  books.appendChild(figs);

  const byLocation = new Map();
  const at = loc => { if (!byLocation.has(loc)) byLocation.set(loc, {}); return byLocation.get(loc); };
  for (const a of sec.inventory_accuracy || []) at(a.location).accuracy = a;
  for (const o of sec.oversell || []) at(o.location).oversell = o;
  table(document.getElementById("stock"),
    [{ label: "location" }, { label: "items counted", num: true },
     { label: "accuracy", num: true, title: "1 - sum |variance| / sum counted, from count events" },
     { label: "refused", num: true, title: "reservations refused: not enough ATP" },
     { label: "went < 0", num: true, title: "times on-hand went below zero" },
     { label: "< 0 now", num: true, title: "SKUs below zero now" }],
    [...byLocation.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([loc, r]) => {
      const a = r.accuracy || {}, o = r.oversell || {};
      return [loc, a.items_counted, a.accuracy === undefined || a.accuracy === null ? null
        : (Number(a.accuracy) * 100).toFixed(2) + " %", o.insufficient_reservations, o.negative_on_hand,
        o.skus_negative_now];
    }),
    "no locations");
}

async function refresh() {
  const meta = document.getElementById("meta");
  try {
    const r = await fetch("/api/dashboard.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    renderSources(data);
    renderErp(data);
    const age = data.erp.refreshed_at ? fmtSeconds((data.now - data.erp.refreshed_at) / 1000) : "never";
    meta.textContent = "updated " + new Date(data.now).toLocaleTimeString() + " · ERP figures " + age + " old";
  } catch (e) {
    const overall = document.getElementById("overall");
    overall.className = "pill failing";
    overall.textContent = "bridge unreachable";
    meta.textContent = "cannot load /api/dashboard.json: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_state_and_lag_thresholds() {
        let ms = Duration::from_millis;
        assert_eq!(health(SourceState::Streaming, ms(200)), Health::Healthy);
        assert_eq!(health(SourceState::Streaming, ms(1_000)), Health::Lagging);
        assert_eq!(health(SourceState::Streaming, ms(29_900)), Health::Lagging);
        assert_eq!(health(SourceState::Streaming, ms(30_000)), Health::Failing);
        assert_eq!(health(SourceState::Standby, ms(100_000)), Health::Healthy);
        assert_eq!(health(SourceState::Starting, ms(0)), Health::Lagging);
        assert_eq!(health(SourceState::Retrying, ms(0)), Health::Failing);
        assert_eq!(health(SourceState::Stopped, ms(0)), Health::Failing);
    }

    #[test]
    fn data_names_each_source_with_its_health_and_keeps_a_bounded_history() {
        let registry = Arc::new(Registry::default());
        let m = registry.source("store42");
        m.set_state(SourceState::Streaming);
        m.lag_micros.store(250_000, Ordering::Relaxed);
        m.events_applied.store(7, Ordering::Relaxed);
        let d = Dashboard::new(registry);
        for _ in 0..HISTORY_SAMPLES + 5 {
            d.sample();
        }
        let v: Value = serde_json::from_str(&d.json()).unwrap_or_else(|e| panic!("{e}"));
        let s = &v["sources"][0];
        assert_eq!(s["name"], "store42");
        assert_eq!(s["health"], "healthy");
        assert_eq!(s["events_applied"], 7);
        assert_eq!(s["history"].as_array().map(Vec::len), Some(HISTORY_SAMPLES));
        assert!(v["erp"]["refreshed_at"].is_null());
    }

    #[test]
    fn the_page_never_parses_data_as_html() {
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("outerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
    }
}
