//! The common ATP question, one sku at one location, answered by reading four indexes directly.
//!
//! A web shop asks this many times per page, so it skips the executor: no SPI, no plan, no executor start.
//! Each part is one index scan under the caller's snapshot, so the answer is exactly what the SQL
//! (`atp_checked`) would return in the same statement:
//!
//! - `stock_balance_pkey`: on hand and reserved; no row means an unknown sku or location, or a pair that never
//!   had stock, and the caller falls back to the checked path, which names a bad argument;
//! - `reservation_active_by_item`, only when something is reserved: active holds already past their expiry,
//!   which no longer count;
//! - `safety_stock_pkey`: the safety stock;
//! - `supply_by_sku`: open supply expected by `at`.
//!
//! The relation and column numbers are looked up once per backend and forgotten on any relcache
//! invalidation of those relations (ALTER, DROP, a new ANALYZE), so a changed schema is looked up again.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys::{self, AttrNumber, Datum, Oid};
use pgrx::prelude::*;
use pgrx::AnyNumeric;

/// A relation read by index: the table, the index, and the table's column whose value is summed or read.
#[derive(Clone, Copy)]
struct Indexed {
    table: Oid,
    index: Oid,
    column: AttrNumber,
}

#[derive(Clone, Copy)]
struct Catalog {
    balance: Indexed,
    /// stock_balance.reserved (the balance's `column` is on_hand)
    reserved: AttrNumber,
    safety: Indexed,
    supply: Indexed,
    holds: Indexed,
}

impl Catalog {
    fn mentions(&self, relid: Oid) -> bool {
        [self.balance, self.safety, self.supply, self.holds]
            .iter()
            .any(|r| r.table == relid || r.index == relid)
    }
}

thread_local! {
    static CATALOG: Cell<Option<Catalog>> = const { Cell::new(None) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: Datum, relid: Oid) {
    CATALOG.with(|c| {
        if let Some(cat) = c.get() {
            if relid == pg_sys::InvalidOid || cat.mentions(relid) {
                c.set(None);
            }
        }
    });
}

/// The relations, or None when the schema is not the one this code knows (then the SQL path answers).
unsafe fn look_up() -> Option<Catalog> {
    let schema = pg_sys::get_namespace_oid(c"possync".as_ptr(), true);
    if schema == pg_sys::InvalidOid {
        return None;
    }
    let relation = |name: &CStr| {
        let oid = pg_sys::get_relname_relid(name.as_ptr(), schema);
        (oid != pg_sys::InvalidOid).then_some(oid)
    };
    let column = |table: Oid, name: &CStr| {
        let n = pg_sys::get_attnum(table, name.as_ptr());
        (n > 0).then_some(n)
    };
    let indexed = |table: &CStr, index: &CStr, col: &CStr| {
        let t = relation(table)?;
        Some(Indexed {
            table: t,
            index: relation(index)?,
            column: column(t, col)?,
        })
    };
    let balance = indexed(c"stock_balance", c"stock_balance_pkey", c"on_hand")?;
    Some(Catalog {
        balance,
        reserved: column(balance.table, c"reserved")?,
        safety: indexed(c"safety_stock", c"safety_stock_pkey", c"qty")?,
        supply: indexed(c"supply", c"supply_by_sku", c"qty_open")?,
        holds: indexed(c"reservation", c"reservation_active_by_item", c"qty")?,
    })
}

fn catalog() -> Option<Catalog> {
    if let Some(c) = CATALOG.with(Cell::get) {
        return Some(c);
    }
    if !WATCHING.with(Cell::get) {
        // SAFETY: registers a callback that only clears a backend-local cell
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), Datum::from(0usize)) };
        WATCHING.with(|w| w.set(true));
    }
    // SAFETY: catalog lookups by name inside a transaction
    let found = unsafe { look_up() };
    CATALOG.with(|c| c.set(found));
    found
}

/// One condition on an index column, in index column order.
enum Key<'a> {
    Equals(&'a str),
    /// a timestamptz column at or before this value
    AtMost(Datum),
}

/// Calls `each` with every row the index finds for `keys` that the active snapshot sees.
///
/// # Safety
/// Inside a transaction with an active snapshot; `r` names an existing table and an index on it whose
/// leading columns match `keys`.
unsafe fn scan(r: Indexed, keys: &[Key], mut each: impl FnMut(*mut pg_sys::TupleTableSlot)) {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let heap = pg_sys::table_open(r.table, lock);
    let index = pg_sys::index_open(r.index, lock);
    let mut entries: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
    for (i, key) in keys.iter().enumerate().take(entries.len()) {
        let column = (i + 1) as AttrNumber;
        match key {
            Key::Equals(text) => pg_sys::ScanKeyEntryInitialize(
                &mut entries[i],
                0,
                column,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                *(*index).rd_indcollation.add(i),
                pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                Datum::from(pg_sys::cstring_to_text_with_len(
                    text.as_ptr().cast(),
                    text.len() as i32,
                )),
            ),
            Key::AtMost(at) => pg_sys::ScanKeyEntryInitialize(
                &mut entries[i],
                0,
                column,
                pg_sys::BTLessEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::Oid::from(pg_sys::F_TIMESTAMPTZ_LE),
                *at,
            ),
        }
    }
    let n = keys.len().min(entries.len()) as i32;
    let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
    let scan = pg_sys::index_beginscan(heap, index, pg_sys::GetActiveSnapshot(), n, 0);
    pg_sys::index_rescan(scan, entries.as_mut_ptr(), n, std::ptr::null_mut(), 0);
    while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        each(slot);
    }
    pg_sys::index_endscan(scan);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
    pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
}

/// A numeric column of the slot's row, copied out of the buffer; zero for NULL.
unsafe fn numeric(slot: *mut pg_sys::TupleTableSlot, column: AttrNumber) -> AnyNumeric {
    let mut is_null = false;
    let datum = pg_sys::slot_getattr(slot, i32::from(column), &mut is_null);
    AnyNumeric::from_datum(datum, is_null).unwrap_or_default()
}

/// Sums a numeric column over what the index finds; None when it finds nothing.
unsafe fn sum(r: Indexed, keys: &[Key]) -> Option<AnyNumeric> {
    let mut total: Option<AnyNumeric> = None;
    scan(r, keys, |slot| {
        let v = numeric(slot, r.column);
        match total.as_mut() {
            Some(t) => *t += v,
            None => total = Some(v),
        }
    });
    total
}

/// ATP of `sku` at `location` by `at`, or None when the checked path must answer (no balance row, no active
/// snapshot, or a schema this code does not recognise).
pub fn at_location(sku: &str, location: &str, at: Datum) -> Option<AnyNumeric> {
    let cat = catalog()?;
    // SAFETY: called from a SQL function, inside a transaction; the snapshot is checked first
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let pair = [Key::Equals(sku), Key::Equals(location)];
        let mut balance = None;
        scan(cat.balance, &pair, |slot| {
            balance = Some((
                numeric(slot, cat.balance.column),
                numeric(slot, cat.reserved),
            ))
        });
        let (on_hand, reserved) = balance?;
        let mut atp = on_hand - reserved.clone();
        if reserved > AnyNumeric::default() {
            // holds past their expiry that expire_reservations has not freed yet do not count
            let now = Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
            let holds = [Key::Equals(sku), Key::Equals(location), Key::AtMost(now)];
            if let Some(expired) = sum(cat.holds, &holds) {
                atp += expired;
            }
        }
        if let Some(safety) = sum(cat.safety, &pair) {
            atp -= safety;
        }
        let due = [Key::Equals(sku), Key::Equals(location), Key::AtMost(at)];
        if let Some(incoming) = sum(cat.supply, &due) {
            atp += incoming;
        }
        Some(atp)
    }
}
