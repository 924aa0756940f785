//! `possync-sim`: a deterministic retail trading day for possync — N stores with registers, a DC and a web
//! shop — written into the reference POS schema or the normalized one (`shop`), emitted as contract JSON, or
//! loaded as ERP master data.

mod catalog;
mod day;
mod erp;
mod error;
mod json;
mod pos;
mod rng;
mod run;
mod shop;
mod totals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use catalog::{Catalog, Network, Scale};
use day::Plan;
use error::SimError;

#[derive(Parser)]
#[command(
    name = "possync-sim",
    version,
    about = "A deterministic retail trading day for possync: POS rows, contract JSON, ERP master data"
)]
struct Cli {
    #[command(flatten)]
    day: DayArgs,
    #[command(subcommand)]
    command: Command,
}

/// The day to simulate; every subcommand must get the same values to agree with each other.
#[derive(Args, Clone)]
struct DayArgs {
    /// Seed: the same seed and scale give the same day.
    #[arg(long, global = true, default_value_t = 42, env = "SIM_SEED")]
    seed: u64,
    #[arg(long, global = true, default_value_t = 8, env = "SIM_STORES")]
    stores: u32,
    /// Registers per store.
    #[arg(long, global = true, default_value_t = 4, env = "SIM_REGISTERS")]
    registers: u32,
    #[arg(long, global = true, default_value_t = 2000, env = "SIM_SKUS")]
    skus: u32,
    /// Customer transactions in trading hours.
    #[arg(
        long,
        global = true,
        default_value_t = 10_000,
        env = "SIM_TRANSACTIONS"
    )]
    transactions: u64,
    /// Business date, YYYY-MM-DD.
    #[arg(long, global = true, default_value = "2026-11-27", env = "SIM_DATE")]
    date: String,
}

/// The POS schema `run` writes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PosSchema {
    /// Schema `pos` (cdc-bridge/sql/reference_pos_schema.sql): the bridge maps it without configuration.
    Reference,
    /// Schema `shop` (cdc-bridge/sql/normalized_pos_schema.sql): master tables with surrogate keys, orders
    /// inserted as draft and paid by an update, cancellations, refunds as negative orders.
    Normalized,
}

#[derive(Subcommand)]
enum Command {
    /// Load the ERP's master data for this day: default chart, locations, tax codes, items, supply, safety stock.
    SetupErp {
        #[arg(long, env = "SIM_ERP_URL", hide_env_values = true)]
        erp: String,
    },
    /// Create a POS schema with its master rows (the normalized schema's stores, tills, taxes, payment methods and
    /// products), before a bridge starts; nothing is traded.
    CreatePos {
        #[arg(long, env = "SIM_POS_URL", hide_env_values = true)]
        pos: String,
        #[arg(long, value_enum, default_value_t = PosSchema::Reference)]
        pos_schema: PosSchema,
    },
    /// Commit the day into a POS schema; with --erp, reserve web orders and measure lag (reference schema) or
    /// post the opening stock first (normalized schema).
    Run {
        #[arg(long, env = "SIM_POS_URL", hide_env_values = true)]
        pos: String,
        /// The POS schema to trade on.
        #[arg(long, value_enum, default_value_t = PosSchema::Reference)]
        pos_schema: PosSchema,
        #[arg(long, env = "SIM_ERP_URL", hide_env_values = true)]
        erp: Option<String>,
        /// Trading-hours POS transactions per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// POS connections committing in parallel (a location always uses the same one).
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Create the POS schema when it is missing (the normalized one with its master rows).
        #[arg(long)]
        create_schema: bool,
        /// Show a live progress line on stderr.
        #[arg(long)]
        progress: bool,
        /// Seconds to wait at the end for the ERP to post everything.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        stats: Option<PathBuf>,
    },
    /// Emit the day's events as one JSON array (for possync.apply_events), or apply them to an ERP directly.
    Json {
        /// File to write; "-" is stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Apply to this ERP with apply_events (and reserve/release web orders) instead of writing.
        #[arg(long)]
        apply: Option<String>,
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// The items sold before the ERP knew them arrive in its item master; held sales are replayed.
    LateItems {
        #[arg(long, env = "SIM_ERP_URL", hide_env_values = true)]
        erp: String,
    },
    /// Compare POS totals with what the ERP posted; exit 1 when a figure differs.
    Totals {
        #[arg(long, env = "SIM_POS_URL", hide_env_values = true)]
        pos: String,
        #[arg(long, env = "SIM_ERP_URL", hide_env_values = true)]
        erp: String,
    },
}

impl DayArgs {
    fn plan(&self) -> Result<Plan, SimError> {
        let d = self.date.as_bytes();
        if d.len() != 10 || d[4] != b'-' || d[7] != b'-' {
            return Err(SimError::Usage(format!(
                "--date takes YYYY-MM-DD, got \"{}\"",
                self.date
            )));
        }
        if self.stores == 0 || self.registers == 0 || self.skus < 10 {
            return Err(SimError::Usage(
                "--stores and --registers must be at least 1, --skus at least 10".into(),
            ));
        }
        Ok(Plan {
            scale: Scale {
                seed: self.seed,
                stores: self.stores,
                registers: self.registers,
                skus: self.skus,
            },
            transactions: self.transactions,
            business_date: self.date.clone(),
        })
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSSYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("possync-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("possync-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<ExitCode, SimError> {
    let plan = cli.day.plan()?;
    let cat = Catalog::new(&plan.scale);
    let net = Network::new(&plan.scale);
    match cli.command {
        Command::SetupErp { erp } => {
            let client = pos::connect(&erp, "ERP").await?;
            let m = erp::setup(&client, &plan, &cat, &net).await?;
            println!(
                "ERP master data: {} locations, {} items, {} purchase orders, default chart",
                m.locations, m.items, m.supply
            );
        }
        Command::CreatePos { pos, pos_schema } => {
            let client = pos::connect(&pos, "POS").await?;
            let created = match pos_schema {
                PosSchema::Reference => pos::create_schema(&client).await?,
                PosSchema::Normalized => {
                    let products = shop::Products::new(&cat, plan.scale.seed);
                    shop::create_schema(&client, &net, &products).await?
                }
            };
            println!(
                "{}",
                if created {
                    "POS schema created"
                } else {
                    "POS schema already there; left as it is"
                }
            );
        }
        Command::Run {
            pos,
            pos_schema,
            erp,
            rate,
            writers,
            create_schema,
            progress,
            wait,
            stats,
        } => {
            let products = shop::Products::new(&cat, plan.scale.seed);
            if create_schema {
                let client = pos::connect(&pos, "POS").await?;
                match pos_schema {
                    PosSchema::Reference => {
                        if pos::create_schema(&client).await? {
                            tracing::info!("created the reference POS schema");
                        }
                    }
                    PosSchema::Normalized => {
                        if shop::create_schema(&client, &net, &products).await? {
                            tracing::info!("created the normalized POS schema and its master rows");
                        }
                    }
                }
            }
            let day = plan.generate(&cat, &net);
            tracing::info!(
                steps = day.steps.len(),
                mix = ?day.mix.by_kind,
                "day generated"
            );
            let day = match pos_schema {
                PosSchema::Reference => run::Trading::Reference(day),
                PosSchema::Normalized => {
                    let d = shop::convert(&day, &products, plan.scale.seed);
                    tracing::info!(steps = d.steps.len(), mix = ?d.mix, "day converted to orders");
                    run::Trading::Normalized(d)
                }
            };
            let opts = run::RunOptions {
                pos_url: pos,
                erp_url: erp,
                rate,
                writers,
                progress,
                wait: Duration::from_secs(wait),
            };
            let s = run::run(day, &cat, &opts).await?;
            print_stats(&s);
            if let Some(path) = stats {
                let text = serde_json::to_string_pretty(&s.to_json()).unwrap_or_default();
                std::fs::write(&path, text).map_err(|source| SimError::Write { path, source })?;
            }
            if s.not_seen > 0 {
                eprintln!(
                    "possync-sim: {} POS transactions were not in the ERP after {wait} s",
                    s.not_seen
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Json { out, apply, batch } => {
            let day = plan.generate(&cat, &net);
            match apply {
                Some(url) => {
                    let client = pos::connect(&url, "ERP").await?;
                    let started = std::time::Instant::now();
                    let statuses = json::apply(&day, &cat, &client, batch).await?;
                    let secs = started.elapsed().as_secs_f64();
                    let events: u64 = statuses
                        .iter()
                        .filter(|(k, _)| {
                            matches!(
                                k.as_str(),
                                "applied" | "duplicate" | "conflict" | "held" | "rejected"
                            )
                        })
                        .map(|(_, v)| v)
                        .sum();
                    println!(
                        "applied {events} events in {secs:.1} s ({:.0}/s): {statuses:?}",
                        events as f64 / secs.max(0.001)
                    );
                }
                None => {
                    let n = if out.as_os_str() == "-" {
                        json::write_array(&day, &mut std::io::stdout().lock())
                    } else {
                        std::fs::File::create(&out)
                            .map(std::io::BufWriter::new)
                            .and_then(|mut f| json::write_array(&day, &mut f))
                    }
                    .map_err(|source| SimError::Write {
                        path: out.clone(),
                        source,
                    })?;
                    tracing::info!(events = n, "wrote the day as JSON");
                }
            }
        }
        Command::LateItems { erp } => {
            let client = pos::connect(&erp, "ERP").await?;
            let (added, posted) = erp::late_items(&client, &cat).await?;
            println!("{added} late items added to the item master; {posted} held events posted");
        }
        Command::Totals { pos, erp } => {
            let p = pos::connect(&pos, "POS").await?;
            let e = pos::connect(&erp, "ERP").await?;
            let c = totals::compare(&p, &e).await?;
            println!("{:<36} {:>16} {:>16}", "", "POS", "ERP");
            let mut ok = true;
            for f in &c.figures {
                ok &= f.agrees();
                println!(
                    "{:<36} {:>16} {:>16}  {}",
                    f.name,
                    f.pos,
                    f.erp,
                    if f.agrees() { "ok" } else { "DIFFERS" }
                );
            }
            println!(
                "(left out on the POS side: {} transactions the ERP holds or rejected{})",
                c.not_posted.len(),
                if c.not_posted.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.not_posted.join(", "))
                }
            );
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(s: &run::RunStats) {
    println!(
        "POS transactions committed: {} ({} in trading hours) in {:.1} s, {:.0}/s",
        s.pos_transactions,
        s.trading_transactions,
        s.seconds_writing,
        s.pos_transactions as f64 / s.seconds_writing.max(0.001)
    );
    if let Some(mix) = &s.normalized {
        let n = |k: &str| mix.get(k).copied().unwrap_or(0);
        println!(
            "orders: {} sales, {} refunds ({} with refund_of), {} exchanges; paid with the order {}, later {} (on another connection {}); cancelled {}; later done {}; products inserted with their first sale {}",
            n("order: sale"),
            n("order: refund"),
            n("refund of a paid order (refund_of)"),
            n("order: exchange"),
            n("paid in the same transaction"),
            n("paid later") + n("paid later, on another connection"),
            n("paid later, on another connection"),
            n("cancelled"),
            n("paid, later done"),
            n("product inserted with its first sale"),
        );
    }
    if let Some(o) = &s.opening_posted {
        println!("opening stock posted to the ERP with apply_events: {o:?}");
    }
    if s.clock.is_none() {
        return;
    }
    println!(
        "events in the ERP: {} of {} POS transactions; {:.0} events/s end to end (first POS commit to last ERP commit, {:.1} s)",
        s.seen_in_erp,
        s.pos_transactions,
        s.seen_in_erp as f64 / s.seconds_end_to_end.max(0.001),
        s.seconds_end_to_end
    );
    let t = s.lag_trading_ms;
    let a = s.lag_all_ms;
    println!(
        "lag, POS commit to ERP commit, trading hours: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        t.p50, t.p99, t.max, t.samples
    );
    println!(
        "lag including the opening stock burst: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        a.p50, a.p99, a.max
    );
    println!(
        "web orders: reservations {:?}, released {}",
        s.reservations, s.releases
    );
    if let Some((added, posted)) = s.late_items {
        println!(
            "item master caught up mid-day: {added} items added, {posted} held sales posted by possync.replay_held()"
        );
    }
}
