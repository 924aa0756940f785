//! Prepared statements kept for the life of the backend, and conversions at the SPI boundary.
//!
//! Every statement is planned once per backend and reused; arguments are passed as arrays so that one
//! statement writes a whole batch (`unnest`), never one statement per row.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};
use rust_decimal::Decimal;

thread_local! {
    // keyed by the address of the statement's text: every statement is a `const`, so the address names it
    // without hashing the text on every call
    static PLANS: RefCell<HashMap<usize, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// The planner settings our statements are planned under, set while one of them runs and restored on drop
/// (also when the statement raises: pgrx turns the error into an unwind).
///
/// - `plan_cache_mode = force_generic_plan`: under `auto` the plan cache re-planned a statement whose arrays
///   held one or two keys on every call, because the custom plan looked cheaper than the generic one; for a
///   one-event apply that planning was a third of the time.
/// - `enable_seqscan = off`: every statement here finds rows by key. On a small table whose few rows are
///   updated all the time (the balances of a store's best sellers, a till's register_state) the planner
///   otherwise picks a sequential scan, which then walks every dead row version on every call.
/// - `jit = off`: a statement that probes a few keys never repays compiling it (150 ms seen), and the cost
///   that `enable_seqscan = off` adds to a table without an index would otherwise trigger JIT.
struct PlannerSettings {
    plan_cache_mode: i32,
    enable_seqscan: bool,
    jit: bool,
}

impl PlannerSettings {
    fn ours() -> PlannerSettings {
        // SAFETY: backend-local GUC variables, read and written on this backend's only thread
        unsafe {
            let previous = PlannerSettings {
                plan_cache_mode: pg_sys::plan_cache_mode,
                enable_seqscan: pg_sys::enable_seqscan,
                jit: pg_sys::jit_enabled,
            };
            pg_sys::plan_cache_mode =
                pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as i32;
            pg_sys::enable_seqscan = false;
            pg_sys::jit_enabled = false;
            previous
        }
    }
}

impl Drop for PlannerSettings {
    fn drop(&mut self) {
        // SAFETY: as above
        unsafe {
            pg_sys::plan_cache_mode = self.plan_cache_mode;
            pg_sys::enable_seqscan = self.enable_seqscan;
            pg_sys::jit_enabled = self.jit;
        }
    }
}

/// Runs `sql` as a kept plan (prepared on first use) with `args`.
pub fn run<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    args: &[DatumWithOid],
) -> SpiTupleTable<'c> {
    execute(client, sql, args, false)
}

/// Runs a statement that only reads, read-only: it takes no transaction id, so it works on a hot standby and
/// costs a reader nothing (pgrx's read-write path assigns one to every transaction it touches).
pub fn read<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    args: &[DatumWithOid],
) -> SpiTupleTable<'c> {
    execute(client, sql, args, true)
}

fn execute<'c>(
    client: &mut SpiClient<'c>,
    sql: &'static str,
    args: &[DatumWithOid],
    read_only: bool,
) -> SpiTupleTable<'c> {
    let _settings = PlannerSettings::ours();
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        let plan = plans.entry(sql.as_ptr() as usize).or_insert_with(|| {
            let oids: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            client
                .prepare_mut(sql, &oids)
                .unwrap_or_else(|e| {
                    internal(&format!("preparing a possync statement failed: {e}: {sql}"))
                })
                .keep()
        });
        let result = if read_only {
            client.select(&*plan, None, args)
        } else {
            client.update(&*plan, None, args)
        };
        result.unwrap_or_else(|e| internal(&format!("a possync statement failed: {e}: {sql}")))
    })
}

/// An internal error: a bug or a broken installation, never bad user data.
pub fn internal(message: &str) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        message.to_string()
    );
    unreachable!("ereport(ERROR) does not return")
}

/// A text[] argument.
pub fn texts<'a, I, S>(values: I) -> DatumWithOid<'a>
where
    I: IntoIterator<Item = S>,
    S: Into<Option<String>>,
{
    let v: Vec<Option<String>> = values.into_iter().map(Into::into).collect();
    DatumWithOid::from(v)
}

/// A text[] argument of decimals (cast to numeric[] in SQL).
pub fn decimals<'a, I>(values: I) -> DatumWithOid<'a>
where
    I: IntoIterator<Item = Decimal>,
{
    texts(values.into_iter().map(|d| Some(d.to_string())))
}

/// A text argument.
pub fn text<'a>(value: &str) -> DatumWithOid<'a> {
    DatumWithOid::from(value.to_string())
}

/// Column `n` (1-based) as text, or None for NULL.
pub fn get_text(row: &SpiHeapTupleData, n: usize) -> Option<String> {
    row.get::<String>(n)
        .unwrap_or_else(|e| internal(&format!("reading column {n} as text: {e}")))
}

/// Column `n` (1-based), selected as `::text`, as a Decimal; None for NULL.
pub fn get_decimal(row: &SpiHeapTupleData, n: usize) -> Option<Decimal> {
    get_text(row, n).map(|s| {
        Decimal::from_str(&s)
            .unwrap_or_else(|_| internal(&format!("{s} does not fit a 28-digit decimal")))
    })
}

/// Column `n` (1-based) as bigint.
pub fn get_i64(row: &SpiHeapTupleData, n: usize) -> Option<i64> {
    row.get::<i64>(n)
        .unwrap_or_else(|e| internal(&format!("reading column {n} as bigint: {e}")))
}

/// Column `n` (1-based) as boolean.
pub fn get_bool(row: &SpiHeapTupleData, n: usize) -> Option<bool> {
    row.get::<bool>(n)
        .unwrap_or_else(|e| internal(&format!("reading column {n} as boolean: {e}")))
}
