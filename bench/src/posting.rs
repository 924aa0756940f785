//! The posting stage: the same sales through `possync.apply_events` and through the PL/pgSQL baseline's
//! `baseline.apply_events`, on one connection, in batches of 100 and of 1 (autocommit: one transaction per call).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::catalog::Chain;
use crate::sales::Sales;
use crate::{BenchError, Row};

/// The PL/pgSQL implementation of the same sale posting, compared side by side.
const BASELINE_SQL: &str = include_str!("../baseline.sql");

/// Copies possync's master data and opening balances into the baseline's tables, so both start equal.
const COPY_MASTER_DATA: &str = "\
    INSERT INTO baseline.location (location_id, name, kind, active) \
        SELECT location_id, name, kind, active FROM possync.location; \
    INSERT INTO baseline.item (sku, description, item_class, standard_cost, active) \
        SELECT sku, description, item_class, standard_cost, active FROM possync.item; \
    INSERT INTO baseline.account_map (role, account_code, location_id, item_class) \
        SELECT role, account_code, location_id, item_class FROM possync.account_map; \
    INSERT INTO baseline.stock_balance (sku, location_id, on_hand, value, avg_cost, reserved) \
        SELECT sku, location_id, on_hand, value, avg_cost, reserved FROM possync.stock_balance;";

#[derive(Debug, Clone)]
pub struct Plan {
    pub chain: Chain,
    pub seed: u64,
    pub warmup_events: usize,
    pub batch_events: usize,
    pub single_events: usize,
    /// SQL run after possync is installed (a what-if, such as a candidate fix)
    pub extra_sql: Option<String>,
}

/// Rounds of possync against the storage floor.
const FLOOR_ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Which implementation a run posts through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Possync,
    Baseline,
}

impl Implementation {
    fn schema(self) -> &'static str {
        match self {
            Implementation::Possync => "possync",
            Implementation::Baseline => "baseline",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub events: usize,
    pub elapsed: Duration,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sets up both implementations, measures them and checks that they posted the same ledgers.
pub async fn run(client: &Client, plan: Plan) -> Result<Vec<Row>, BenchError> {
    eprintln!(
        "posting: setting up {} locations x {} skus",
        plan.chain.locations, plan.chain.skus
    );
    plan.chain.install(client).await?;
    client
        .batch_execute(BASELINE_SQL)
        .await
        .map_err(|e| BenchError::sql("creating the baseline (bench/baseline.sql)", e))?;
    client
        .batch_execute(COPY_MASTER_DATA)
        .await
        .map_err(|e| BenchError::sql("copying master data into the baseline", e))?;
    // a what-if (a candidate fix) may change both schemas, so that the comparison stays like for like
    if let Some(sql) = &plan.extra_sql {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| BenchError::sql("running the --extra-sql file", e))?;
    }

    // every implementation gets exactly the same events, generated before the clock starts
    let mut sales = Sales::new(plan.chain, plan.seed);
    let warmup = sales.payloads("w", plan.warmup_events, 100);
    let batched = sales.payloads("b", plan.batch_events, 100);
    let single = sales.payloads("s", plan.single_events, 1);
    // the floor's rounds: each a fifth of the batched events (at least one batch)
    let floor_rounds: Vec<Vec<(usize, String)>> = (1..=FLOOR_ROUNDS)
        .map(|r| sales.payloads(&format!("f{r}"), (plan.batch_events / 5).max(100), 100))
        .collect();

    for imp in [Implementation::Possync, Implementation::Baseline] {
        eprintln!(
            "posting: warming up {} ({} events)",
            imp.schema(),
            plan.warmup_events
        );
        post(client, imp, &warmup).await?;
    }
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .map_err(|e| BenchError::sql("vacuuming after the warm-up", e))?;

    let mut results = Vec::new();
    for (label, payloads) in [("batches of 100", &batched), ("batches of 1", &single)] {
        let mut pair = Vec::new();
        for imp in [Implementation::Possync, Implementation::Baseline] {
            client
                .batch_execute("CHECKPOINT")
                .await
                .map_err(|e| BenchError::sql("checkpoint before a run", e))?;
            let m = post(client, imp, payloads).await?;
            eprintln!(
                "posting: {} {label}: {} events in {:.2} s = {:.0} events/s",
                imp.schema(),
                m.events,
                m.elapsed.as_secs_f64(),
                m.per_second()
            );
            pair.push(m);
        }
        results.push((label, pair[0], pair[1]));
    }

    verify_same_ledgers(client).await?;

    // the storage floor: in each round possync posts fresh batches of 100, then the rows it wrote for them are
    // written again without any posting; each figure is the median of its rounds
    crate::floor::create(client).await?;
    let (mut possync_rates, mut floor_rates) = (Vec::new(), Vec::new());
    for (round, payloads) in floor_rounds.iter().enumerate() {
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| BenchError::sql("checkpoint before a run", e))?;
        let m = post(client, Implementation::Possync, payloads).await?;
        let events: usize = payloads.iter().map(|(n, _)| n).sum();
        let floor = crate::floor::write(client, &format!("sale-f{}-", round + 1), events).await?;
        eprintln!(
            "posting: floor round {}: possync {:.0} events/s, storage floor {:.0} events/s ({} events each)",
            round + 1,
            m.per_second(),
            floor.per_second(),
            events
        );
        possync_rates.push(m.per_second());
        floor_rates.push(floor.per_second());
    }

    let targets = [2.0, 1.0];
    let mut rows: Vec<Row> = results
        .into_iter()
        .zip(targets)
        .map(|((label, possync, baseline), target)| {
            Row::compared(
                format!("posting events/s, 3-line sales, {label}"),
                possync.per_second(),
                baseline.per_second(),
                target,
            )
        })
        .collect();
    let mut floor_row = Row::compared(
        format!(
            "posting events/s, batches of 100, vs the storage floor (same rows, one multi-row INSERT per \
             table; median of {} alternating rounds)",
            floor_rounds.len()
        ),
        median(possync_rates),
        median(floor_rates),
        0.5,
    );
    floor_row.baseline = format!("{} (storage floor)", floor_row.baseline);
    rows.push(floor_row);
    Ok(rows)
}

/// Posts every payload with one autocommit call each; checks each call applied all its events.
pub async fn post(
    client: &Client,
    imp: Implementation,
    payloads: &[(usize, String)],
) -> Result<Measured, BenchError> {
    let sql = format!(
        "SELECT {}.apply_events($1::text::jsonb)::text",
        imp.schema()
    );
    let statement = client
        .prepare(&sql)
        .await
        .map_err(|e| BenchError::sql("preparing apply_events", e))?;
    let mut events = 0;
    let started = Instant::now();
    for (n, payload) in payloads {
        let row = client
            .query_one(&statement, &[payload])
            .await
            .map_err(|e| BenchError::sql(&format!("{}.apply_events", imp.schema()), e))?;
        let out: &str = row.get(0);
        if out.matches("\"applied\"").count() != *n {
            let head: String = out.chars().take(600).collect();
            return Err(BenchError::Unexpected(format!(
                "{}.apply_events did not apply all {n} events of a call: {head}",
                imp.schema()
            )));
        }
        events += n;
    }
    Ok(Measured {
        events,
        elapsed: started.elapsed(),
    })
}

/// Both ledgers must come out identical: otherwise the comparison would not be of the same work.
const LEDGER_DIFFERENCES: &str = "\
    WITH p AS (SELECT l.account_code, l.location_id, sum(l.debit) AS d, sum(l.credit) AS c \
                 FROM possync.journal_line l JOIN possync.journal j USING (journal_id) \
                WHERE j.event_id LIKE 'sale-%' GROUP BY 1, 2), \
         b AS (SELECT l.account_code, l.location_id, sum(l.debit) AS d, sum(l.credit) AS c \
                 FROM baseline.journal_line l JOIN baseline.journal j USING (journal_id) \
                GROUP BY 1, 2) \
    SELECT \
      (SELECT count(*) FROM p FULL JOIN b USING (account_code, location_id) \
        WHERE p.d IS DISTINCT FROM b.d OR p.c IS DISTINCT FROM b.c), \
      (SELECT count(*) FROM possync.stock_balance p FULL JOIN baseline.stock_balance b USING (sku, location_id) \
        WHERE p.on_hand IS DISTINCT FROM b.on_hand OR p.value IS DISTINCT FROM b.value), \
      (SELECT count(*) FROM possync.stock_move WHERE event_id LIKE 'sale-%') \
        - (SELECT count(*) FROM baseline.stock_move), \
      (SELECT count(*) FROM possync.exception), \
      (SELECT count(*) FROM baseline.exception), \
      (SELECT count(*) FROM possync.event WHERE event_id LIKE 'sale-%' AND status = 'applied'), \
      (SELECT count(*) FROM baseline.event WHERE status = 'applied'), \
      (SELECT coalesce(string_agg(kind || ' ' || n, ', '), 'none') \
         FROM (SELECT kind, count(*) AS n FROM possync.exception GROUP BY kind) k)";

async fn verify_same_ledgers(client: &Client) -> Result<(), BenchError> {
    let row = client
        .query_one(LEDGER_DIFFERENCES, &[])
        .await
        .map_err(|e| BenchError::sql("comparing the two ledgers", e))?;
    let accounts: i64 = row.get(0);
    let balances: i64 = row.get(1);
    let moves: i64 = row.get(2);
    let exceptions = (row.get::<_, i64>(3), row.get::<_, i64>(4));
    let events = (row.get::<_, i64>(5), row.get::<_, i64>(6));
    let possync_kinds: String = row.get(7);
    if accounts != 0 || balances != 0 || moves != 0 || exceptions != (0, 0) || events.0 != events.1
    {
        return Err(BenchError::Unexpected(format!(
            "possync and the baseline did not post the same ledgers: {accounts} account balances and \
             {balances} stock balances differ, stock moves differ by {moves}, exceptions (possync, baseline) \
             {exceptions:?} (possync's: {possync_kinds}), applied events {events:?}"
        )));
    }
    eprintln!(
        "posting: both ledgers agree ({} events each: same GL per account and location, same stock balances, \
         no exceptions)",
        events.0
    );
    Ok(())
}
