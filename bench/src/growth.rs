//! The growth stage's measurements in Rust: posting and the audit functions on an empty ledger and on one that
//! holds a year of a chain's sales (preloaded by bench/growth.sql), side by side, in alternating rounds.
//!
//! Both databases get exactly the same events (one generator per database, same seed), in the same order; the
//! order of the two databases alternates from round to round, so a slower minute of a shared machine does not
//! always land on the same side. Each figure is the median of its rounds.

use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::catalog::Chain;
use crate::posting::{post, Implementation};
use crate::sales::Sales;
use crate::BenchError;

#[derive(Debug, Clone)]
pub struct Plan {
    pub chain: Chain,
    pub seed: u64,
    pub warmup_events: usize,
    pub batch_events: usize,
    pub single_events: usize,
    pub rounds: usize,
    pub query_reps: usize,
    /// the store and the business day that trace, reconcile and audit_day look at
    pub location: String,
    pub day: String,
    pub account: String,
}

/// One figure measured on both ledgers.
pub struct Pair {
    figure: String,
    empty: f64,
    grown: f64,
    /// true: events or calls per second (higher is better); false: milliseconds per call
    rate: bool,
    target: &'static str,
}

impl Pair {
    /// `row|figure|empty|grown|ratio|target|` where ratio is grown ÷ empty.
    pub fn print(&self) {
        let (e, g) = if self.rate {
            (format!("{:.0}", self.empty), format!("{:.0}", self.grown))
        } else {
            (format!("{:.1}", self.empty), format!("{:.1}", self.grown))
        };
        println!(
            "row|{}|{e}|{g}|{:.2}x|{}|",
            self.figure,
            self.grown / self.empty,
            self.target
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Posting and the audit functions on both ledgers; `clients` are (empty, grown).
pub async fn run(empty: &Client, grown: &Client, plan: Plan) -> Result<Vec<Pair>, BenchError> {
    let clients = [empty, grown];
    let mut streams = [
        Sales::new(plan.chain, plan.seed),
        Sales::new(plan.chain, plan.seed),
    ];
    for (i, c) in clients.iter().enumerate() {
        let warmup = streams[i].payloads("gw", plan.warmup_events, 100);
        post(c, Implementation::Possync, &warmup).await?;
        c.batch_execute("VACUUM ANALYZE")
            .await
            .map_err(|e| BenchError::sql("vacuuming after the warm-up", e))?;
    }

    // posting: batches of 100, then batches of 1, per round; the side that goes first alternates
    let mut per_second: [[Vec<f64>; 2]; 2] = Default::default(); // [batch kind][ledger]
    for round in 1..=plan.rounds {
        let order: [usize; 2] = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for (k, (batch, count)) in [(100, plan.batch_events), (1, plan.single_events)]
            .into_iter()
            .enumerate()
        {
            let phase = format!("g{round}{}", if batch == 1 { 's' } else { 'b' });
            let payloads: Vec<Vec<(usize, String)>> = streams
                .iter_mut()
                .map(|s| s.payloads(&phase, count, batch))
                .collect();
            for &side in &order {
                clients[side]
                    .batch_execute("CHECKPOINT")
                    .await
                    .map_err(|e| BenchError::sql("checkpoint before a run", e))?;
                let m = post(clients[side], Implementation::Possync, &payloads[side]).await?;
                eprintln!(
                    "growth: round {round}, {} ledger, batches of {batch}: {} events in {:.2} s = {:.0} events/s",
                    ["empty", "grown"][side],
                    m.events,
                    m.elapsed.as_secs_f64(),
                    m.per_second()
                );
                per_second[k][side].push(m.per_second());
            }
        }
    }
    let mut pairs = Vec::new();
    for (k, label) in ["batches of 100", "batches of 1"].into_iter().enumerate() {
        pairs.push(Pair {
            figure: format!("posting events/s, 3-line sales, {label}"),
            empty: median(per_second[k][0].clone()),
            grown: median(per_second[k][1].clone()),
            rate: true,
            target: ">= 0.8x",
        });
    }

    // the audit functions: one store, one day
    let loc = plan.location.as_str();
    let day = plan.day.as_str();
    let account = plan.account.as_str();
    let queries: [(String, &str, Vec<&(dyn ToSql + Sync)>, usize); 4] = [
        (
            format!("trace('{account}', {loc}, one day), ms"),
            "SELECT count(*)::text FROM possync.trace($1, $2, $3::text::date, $3::text::date)",
            vec![&account, &loc, &day],
            plan.query_reps,
        ),
        (
            format!("reconcile({loc}), ms"),
            "SELECT count(*)::text FROM possync.reconcile($1)",
            vec![&loc],
            plan.query_reps,
        ),
        (
            format!("audit_day({loc}, one day), ms"),
            "SELECT (a ->> 'status') || ', ' || jsonb_array_length(a -> 'exceptions') || ' open' \
               FROM possync.audit_day($1, $2::text::date) AS a",
            vec![&loc, &day],
            plan.query_reps,
        ),
        (
            "check_invariants() (whole ledger), ms".to_string(),
            "SELECT count(*)::text FROM possync.check_invariants()",
            vec![],
            plan.query_reps.min(2),
        ),
    ];
    for (figure, sql, params, reps) in queries {
        let mut times: [Vec<f64>; 2] = Default::default();
        let mut answers = [String::new(), String::new()];
        for rep in 0..reps.max(1) {
            let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for &side in &order {
                let started = Instant::now();
                let row = clients[side]
                    .query_one(sql, &params)
                    .await
                    .map_err(|e| BenchError::sql(&figure, e))?;
                times[side].push(ms(started.elapsed()));
                answers[side] = row.get::<_, Option<String>>(0).unwrap_or_default();
            }
        }
        eprintln!(
            "growth: {figure}: empty {:?} ms (answer {}), grown {:?} ms (answer {})",
            times[0], answers[0], times[1], answers[1]
        );
        pairs.push(Pair {
            figure: format!("{figure} [answer: {} / {}]", answers[0], answers[1]),
            empty: median(times[0].clone()),
            grown: median(times[1].clone()),
            rate: false,
            target: "reported",
        });
    }
    Ok(pairs)
}
