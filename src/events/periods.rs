//! Business months. The ledgers a call writes (event, stock_move, journal, journal_line) are partitioned by
//! business month. Before a call writes anything, [`prepare`] holds the archive lock shared, so that
//! `possync.archive_period` never detaches a month while a posting is in flight (it takes that lock exclusively),
//! and makes sure that every month the call may write into, and the month after the latest of them, has its
//! partitions. What exists is remembered per backend: the usual call costs one advisory lock and a set lookup;
//! only a month not seen yet goes to SQL (`possync.ensure_ledger_months`, which makes what is missing under its
//! own lock). A partition attached, detached or dropped by anyone invalidates the parents' relcache entries,
//! and a relcache callback then makes this backend ask again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::statements::{get_text, run, texts};

/// The archive lock ("PSAr", 0): every posting holds it shared, possync.archive_period exclusively.
const ARCHIVE_LOCK: (u32, u32) = (1_347_633_522, 0);

/// The partitioned ledger tables, in the order their partitions are made.
const LEDGERS: [&str; 4] = ["event", "stock_move", "journal", "journal_line"];

const ENSURE: &str =
    "SELECT m::text FROM unnest(possync.ensure_ledger_months($1::text[]::date[])) AS m";

const ARCHIVED: &str =
    "SELECT month::text FROM possync.archived_period WHERE month = ANY($1::text[]::date[])";

thread_local! {
    /// First days ("2026-11-01") of the months every ledger table has a partition for.
    static MADE: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    /// The ledger tables' oids when MADE was filled: an invalidation of one of them empties it.
    static PARENTS: Cell<[pg_sys::Oid; 4]> = const { Cell::new([pg_sys::InvalidOid; 4]) };
    static STALE: Cell<bool> = const { Cell::new(true) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// A business month, (year, month).
pub type Month = (i32, u32);

/// The month of a business date `YYYY-MM-DD` (as the event contract writes it).
pub fn month_of(date: &str) -> Option<Month> {
    let year = date.get(0..4)?.parse().ok()?;
    let month = date.get(5..7)?.parse().ok()?;
    (1..=12).contains(&month).then_some((year, month))
}

/// The month's first day, `YYYY-MM-01`.
pub fn first_day((year, month): Month) -> String {
    format!("{year:04}-{month:02}-01")
}

fn month_after((year, month): Month) -> Option<Month> {
    match month {
        12 if year >= 9999 => None,
        12 => Some((year + 1, 1)),
        m => Some((year, m + 1)),
    }
}

/// Relcache invalidation callback: runs inside invalidation processing, so it only flips a flag.
unsafe extern "C-unwind" fn forget_months(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = PARENTS
        .try_with(|p| relid == pg_sys::InvalidOid || p.get().contains(&relid))
        .unwrap_or(true);
    if watched {
        let _ = STALE.try_with(|s| s.set(true));
    }
}

fn watch() {
    if !WATCHING.with(Cell::get) {
        // SAFETY: registers a callback that only touches this thread's Cells; once per backend
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(forget_months), pg_sys::Datum::from(0))
        };
        WATCHING.with(|w| w.set(true));
    }
}

/// The ledger tables' oids, from the system caches (InvalidOid for one that does not exist).
fn parents() -> [pg_sys::Oid; 4] {
    let schema = CString::new("possync").expect("no NUL");
    // SAFETY: catalog lookups by name in a transaction
    let namespace = unsafe { pg_sys::get_namespace_oid(schema.as_ptr(), true) };
    LEDGERS.map(|t| {
        let name = CString::new(t).expect("no NUL");
        // SAFETY: as above
        unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) }
    })
}

/// Whether the database's possync schema has the ledgers by month (0.4.0 on). This library also serves a database
/// still on an earlier version until `ALTER EXTENSION possync UPDATE` runs there, writing the tables that version
/// has (installing the library does not stop posting): a catalog lookup per call tells which.
pub fn by_month() -> bool {
    has_table("event_key")
}

/// Whether the database's possync schema has this table (a catalog lookup by name): what this library writes
/// depends on the version the database is on until it is updated.
pub fn has_table(name: &str) -> bool {
    let schema = CString::new("possync").expect("no NUL");
    let Ok(table) = CString::new(name) else {
        return false;
    };
    // SAFETY: catalog lookups by name in a transaction
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        namespace != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(table.as_ptr(), namespace) != pg_sys::InvalidOid
    }
}

/// Takes the archive lock shared for the rest of the transaction (as pg_advisory_xact_lock_shared does), then
/// reads the invalidations that committed meanwhile (a month archived while this session waited).
pub fn lock_against_archive() {
    // SAFETY: a transaction-level advisory lock tag built as SET_LOCKTAG_INT32 builds it, for this database
    unsafe {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: pg_sys::MyDatabaseId.to_u32(),
            locktag_field2: ARCHIVE_LOCK.0,
            locktag_field3: ARCHIVE_LOCK.1,
            locktag_field4: 2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        pg_sys::LockAcquire(&tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false, false);
        pg_sys::AcceptInvalidationMessages();
    }
}

/// Makes sure the months of these business dates (and the month after the latest) have their partitions in
/// every ledger table, unless archived. Call before anything of the call is locked or written: making a month
/// takes the partition lock, which a session that makes one holds until it commits.
pub fn prepare<'a>(client: &mut SpiClient<'_>, dates: impl IntoIterator<Item = &'a str>) {
    if !by_month() {
        return;
    }
    lock_against_archive();
    let mut months: BTreeSet<Month> = dates.into_iter().filter_map(month_of).collect();
    if let Some(next) = months.last().copied().and_then(month_after) {
        months.insert(next);
    }
    if months.is_empty() {
        return;
    }
    watch();
    if STALE.with(|s| s.replace(false)) {
        MADE.with(|m| m.borrow_mut().clear());
    }
    let wanted: Vec<String> = months.iter().map(|m| first_day(*m)).collect();
    if MADE.with(|m| {
        let made = m.borrow();
        wanted.iter().all(|w| made.contains(w))
    }) {
        return;
    }
    let made: Vec<String> = run(client, ENSURE, &[texts(wanted.into_iter().map(Some))])
        .filter_map(|row| get_text(&row, 1))
        .collect();
    // what this call made (or another backend's change read meanwhile) flagged the record stale: it is read
    // afresh from here
    if STALE.with(|s| s.replace(false)) {
        MADE.with(|m| m.borrow_mut().clear());
    }
    PARENTS.with(|p| p.set(parents()));
    MADE.with(|m| m.borrow_mut().extend(made));
}

/// Of these months (first days), those that are archived.
pub fn archived(client: &mut SpiClient<'_>, months: &BTreeSet<String>) -> HashSet<String> {
    if months.is_empty() {
        return HashSet::new();
    }
    run(client, ARCHIVED, &[texts(months.iter().cloned().map(Some))])
        .filter_map(|row| get_text(&row, 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_of_dates_and_after() {
        assert_eq!(month_of("2026-11-26"), Some((2026, 11)));
        assert_eq!(month_of("0001-01-01"), Some((1, 1)));
        assert_eq!(month_of("x"), None);
        assert_eq!(first_day((1, 2)), "0001-02-01");
        assert_eq!(month_after((2026, 12)), Some((2027, 1)));
        assert_eq!(month_after((2026, 1)), Some((2026, 2)));
        assert_eq!(month_after((9999, 12)), None);
    }
}
