//! possync-bench: the Rust half of `make bench` (bench/run.sh runs the clusters and pgbench).
//!
//! ```text
//! possync-bench setup   --db CONNINFO [--locations 50] [--skus 200]
//! possync-bench posting --db CONNINFO [--locations 50] [--skus 200] [--seed 42]
//!                       [--warmup-events 1000] [--batch-events 50000] [--single-events 8000]
//!                       [--extra-sql FILE]   (a what-if: SQL run once both schemas exist)
//! possync-bench growth  --db EMPTY_CONNINFO --grown GROWN_CONNINFO [--locations 30] [--skus 200]
//!                       [--batch-events 5000] [--single-events 1000] [--rounds 3] [--query-reps 3]
//!                       [--location L7] [--day 2026-06-15] [--account 4000]
//! ```
//!
//! `setup` installs possync with the default chart, the chain's master data and opening stock (the ATP stage
//! uses it). `posting` does the same, adds the PL/pgSQL baseline, measures both and prints result rows as
//! `row|figure|possync|baseline|ratio|target|verdict` on stdout for bench/run.sh to lay out; progress goes to stderr.
//! `growth` measures posting and the audit functions on an empty ledger and on a grown one (bench/growth.sql
//! preloads it) and prints `row|figure|empty|grown|ratio|target|`.
//! Benchmarks print figures; they never pass or fail on a timing.

mod catalog;
mod floor;
mod growth;
mod posting;
mod sales;

use std::fmt;
use std::process::ExitCode;

use tokio_postgres::NoTls;

use crate::catalog::Chain;

#[derive(Debug)]
pub enum BenchError {
    Usage(String),
    Sql {
        doing: String,
        source: tokio_postgres::Error,
    },
    Unexpected(String),
}

impl BenchError {
    pub fn sql(doing: &str, source: tokio_postgres::Error) -> BenchError {
        BenchError::Sql {
            doing: doing.to_string(),
            source,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(m) => write!(f, "{m}"),
            BenchError::Sql { doing, source } => match source.as_db_error() {
                Some(db) => write!(f, "{doing} failed: {} ({})", db.message(), db.code().code()),
                None => write!(f, "{doing} failed: {source}"),
            },
            BenchError::Unexpected(m) => write!(f, "{m}"),
        }
    }
}

/// One line of the report: a figure, its baseline and the target ratio (or none).
pub struct Row {
    figure: String,
    value: String,
    pub baseline: String,
    ratio: String,
    target: String,
    /// "met" or "below": information for the reader, never a pass or fail
    verdict: &'static str,
}

impl Row {
    /// A throughput beside its baseline, with the ratio the issue asks for.
    pub fn compared(figure: String, value: f64, baseline: f64, target: f64) -> Row {
        Row {
            figure,
            value: format!("{value:.0}"),
            baseline: format!("{baseline:.0}"),
            ratio: format!("{:.2}x", value / baseline),
            target: format!(">= {target:.1}x"),
            verdict: if value >= target * baseline {
                "met"
            } else {
                "below"
            },
        }
    }

    fn print(&self) {
        println!(
            "row|{}|{}|{}|{}|{}|{}",
            self.figure, self.value, self.baseline, self.ratio, self.target, self.verdict
        );
    }
}

struct Args {
    command: String,
    db: String,
    chain: Chain,
    plan_seed: u64,
    warmup_events: usize,
    batch_events: usize,
    single_events: usize,
    extra_sql: Option<String>,
    grown: String,
    rounds: usize,
    query_reps: usize,
    location: String,
    day: String,
    account: String,
}

fn parse_args() -> Result<Args, BenchError> {
    let mut it = std::env::args().skip(1);
    let command = it.next().ok_or_else(|| {
        BenchError::Usage("usage: possync-bench setup|posting --db CONNINFO ...".into())
    })?;
    let mut args = Args {
        command,
        db: String::new(),
        chain: Chain {
            locations: 50,
            skus: 200,
        },
        plan_seed: 42,
        warmup_events: 1_000,
        batch_events: 50_000,
        single_events: 8_000,
        extra_sql: None,
        grown: String::new(),
        rounds: 3,
        query_reps: 3,
        location: "L7".to_string(),
        day: "2026-06-15".to_string(),
        account: "4000".to_string(),
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| BenchError::Usage(format!("{flag} takes a whole number, not {v:?}")))
        };
        match flag.as_str() {
            "--db" => args.db = value,
            "--locations" => args.chain.locations = number(&value)? as u32,
            "--skus" => args.chain.skus = number(&value)? as u32,
            "--seed" => args.plan_seed = number(&value)?,
            "--warmup-events" => args.warmup_events = number(&value)? as usize,
            "--batch-events" => args.batch_events = number(&value)? as usize,
            "--single-events" => args.single_events = number(&value)? as usize,
            "--grown" => args.grown = value,
            "--rounds" => args.rounds = number(&value)? as usize,
            "--query-reps" => args.query_reps = number(&value)? as usize,
            "--location" => args.location = value,
            "--day" => args.day = value,
            "--account" => args.account = value,
            "--extra-sql" => {
                let sql = std::fs::read_to_string(&value).map_err(|e| {
                    BenchError::Usage(format!("cannot read --extra-sql {value}: {e}"))
                })?;
                args.extra_sql = Some(sql);
            }
            _ => return Err(BenchError::Usage(format!("unknown flag {flag}"))),
        }
    }
    if args.db.is_empty() {
        return Err(BenchError::Usage(
            "--db CONNINFO is required (e.g. \"host=/tmp port=5432 user=postgres dbname=bench\")"
                .into(),
        ));
    }
    if args.chain.skus < 3 || args.chain.locations < 1 {
        return Err(BenchError::Usage(
            "a sale needs at least 3 skus and 1 location".into(),
        ));
    }
    Ok(args)
}

type Connection = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

async fn connect(db: &str) -> Result<(tokio_postgres::Client, Connection), BenchError> {
    let (client, connection) = tokio_postgres::connect(db, NoTls)
        .await
        .map_err(|e| BenchError::sql(&format!("connecting to {db}"), e))?;
    Ok((client, tokio::spawn(connection)))
}

async fn run(args: Args) -> Result<(), BenchError> {
    let (client, connection) = connect(&args.db).await?;
    let result = match args.command.as_str() {
        "setup" => args.chain.install(&client).await,
        "posting" => {
            let plan = posting::Plan {
                chain: args.chain,
                seed: args.plan_seed,
                warmup_events: args.warmup_events,
                batch_events: args.batch_events,
                single_events: args.single_events,
                extra_sql: args.extra_sql,
            };
            posting::run(&client, plan).await.map(|rows| {
                for row in rows {
                    row.print();
                }
            })
        }
        "growth" => {
            let plan = growth::Plan {
                chain: args.chain,
                seed: args.plan_seed,
                warmup_events: args.warmup_events,
                batch_events: args.batch_events,
                single_events: args.single_events,
                rounds: args.rounds,
                query_reps: args.query_reps,
                location: args.location.clone(),
                day: args.day.clone(),
                account: args.account.clone(),
            };
            match connect(&args.grown).await {
                Ok((grown, grown_connection)) => {
                    let r = growth::run(&client, &grown, plan).await.map(|pairs| {
                        for p in pairs {
                            p.print();
                        }
                    });
                    drop(grown);
                    let _ = grown_connection.await;
                    r
                }
                Err(e) => Err(e),
            }
        }
        other => Err(BenchError::Usage(format!(
            "unknown command {other:?}: use setup, posting or growth"
        ))),
    };
    drop(client);
    let _ = connection.await;
    result
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("possync-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("possync-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("possync-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
