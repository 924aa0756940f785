//! The common ATP questions, one sku at one location or across the network, answered by reading the indexes
//! directly.
//!
//! A web shop asks these many times per page, so they skip the executor: no SPI, no plan, no executor start.
//! Each part is an index scan under the caller's snapshot, so the answer is exactly what the SQL
//! (`atp_checked`) would return in the same statement:
//!
//! - `stock_balance_pkey`: on hand and reserved; for one location, no row means an unknown sku or location, or
//!   a pair that never had stock, and the caller falls back to the checked path, which names a bad argument;
//! - `reservation_active_by_item`: active holds already past their expiry, which no longer count;
//! - `safety_stock_pkey`: the safety stock;
//! - `supply_by_sku`: open supply expected by `at`;
//! - for the network, `item_pkey` (an unknown sku falls back, to be named) and `location_pkey` (each location's
//!   `active`).
//!
//! The relation and column numbers are looked up once per backend and forgotten on any relcache
//! invalidation of those relations (ALTER, DROP, a new ANALYZE), so a changed schema is looked up again.

use std::cell::Cell;
use std::collections::BTreeMap;
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
    /// the location_id column of stock_balance, safety_stock, supply and reservation
    balance_location: AttrNumber,
    safety: Indexed,
    safety_location: AttrNumber,
    supply: Indexed,
    supply_location: AttrNumber,
    holds: Indexed,
    holds_location: AttrNumber,
    /// item by sku (`column` unused: existence only)
    item: Indexed,
    /// location by id, `column` is active
    location: Indexed,
}

impl Catalog {
    /// Whether the current user may have the answer read straight from the indexes: SELECT on every table the
    /// probe reads, and no row-level security that applies to this user on any of them. Otherwise the checked
    /// path answers through SQL, which raises permission denied or applies the policies. Asked on every call
    /// (a few syscache lookups): roles, grants and policies may change at any time.
    fn readable_directly(&self) -> bool {
        // SAFETY: catalog lookups on this backend, inside a transaction (callers run in a SQL function)
        unsafe {
            let user = pg_sys::GetUserId();
            self.read().iter().all(|r| {
                pg_sys::pg_class_aclcheck(r.table, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
                    == pg_sys::AclResult::ACLCHECK_OK
                    && pg_sys::check_enable_rls(r.table, pg_sys::InvalidOid, true)
                        != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            })
        }
    }

    /// Every relation the probe reads.
    fn read(&self) -> [Indexed; 6] {
        [
            self.balance,
            self.safety,
            self.supply,
            self.holds,
            self.item,
            self.location,
        ]
    }

    fn mentions(&self, relid: Oid) -> bool {
        self.read()
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
    let safety = indexed(c"safety_stock", c"safety_stock_pkey", c"qty")?;
    let supply = indexed(c"supply", c"supply_by_sku", c"qty_open")?;
    let holds = indexed(c"reservation", c"reservation_active_by_item", c"qty")?;
    Some(Catalog {
        balance,
        reserved: column(balance.table, c"reserved")?,
        balance_location: column(balance.table, c"location_id")?,
        safety,
        safety_location: column(safety.table, c"location_id")?,
        supply,
        supply_location: column(supply.table, c"location_id")?,
        holds,
        holds_location: column(holds.table, c"location_id")?,
        item: indexed(c"item", c"item_pkey", c"sku")?,
        location: indexed(c"location", c"location_pkey", c"active")?,
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

/// One condition on an index column.
enum Key<'a> {
    Equals(&'a str),
    /// a timestamptz column at or before this value
    AtMost(Datum),
}

/// An index scan that can be run again with other keys (one open and one lock per relation per call).
struct Scan {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    scan: pg_sys::IndexScanDesc,
    nkeys: i32,
}

impl Scan {
    /// Opens `r` for `nkeys` conditions.
    ///
    /// # Safety
    /// Inside a transaction with an active snapshot; `r` names an existing table and an index on it.
    unsafe fn open(r: Indexed, nkeys: usize) -> Scan {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(r.table, lock);
        let index = pg_sys::index_open(r.index, lock);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let nkeys = nkeys as i32;
        let scan = pg_sys::index_beginscan(heap, index, pg_sys::GetActiveSnapshot(), nkeys, 0);
        Scan {
            heap,
            index,
            slot,
            scan,
            nkeys,
        }
    }

    /// Calls `each` with every row the index finds for `keys` (index column number, condition) that the
    /// snapshot sees. `keys` must hold as many conditions as `open` was given.
    unsafe fn run(
        &mut self,
        keys: &[(AttrNumber, Key)],
        mut each: impl FnMut(*mut pg_sys::TupleTableSlot),
    ) {
        let mut entries: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        let n = keys.len().min(entries.len()).min(self.nkeys as usize);
        for (entry, (column, key)) in entries.iter_mut().zip(keys.iter()).take(n) {
            match key {
                Key::Equals(text) => pg_sys::ScanKeyEntryInitialize(
                    entry,
                    0,
                    *column,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::InvalidOid,
                    *(*self.index).rd_indcollation.add(*column as usize - 1),
                    pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                    Datum::from(pg_sys::cstring_to_text_with_len(
                        text.as_ptr().cast(),
                        text.len() as i32,
                    )),
                ),
                Key::AtMost(at) => pg_sys::ScanKeyEntryInitialize(
                    entry,
                    0,
                    *column,
                    pg_sys::BTLessEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::Oid::from(pg_sys::F_TIMESTAMPTZ_LE),
                    *at,
                ),
            }
        }
        pg_sys::index_rescan(
            self.scan,
            entries.as_mut_ptr(),
            n as i32,
            std::ptr::null_mut(),
            0,
        );
        while pg_sys::index_getnext_slot(
            self.scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            self.slot,
        ) {
            each(self.slot);
        }
    }

    unsafe fn close(self) {
        pg_sys::index_endscan(self.scan);
        pg_sys::ExecDropSingleTupleTableSlot(self.slot);
        pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// Runs one scan of `r` for `keys`.
unsafe fn scan(
    r: Indexed,
    keys: &[(AttrNumber, Key)],
    each: impl FnMut(*mut pg_sys::TupleTableSlot),
) {
    let mut s = Scan::open(r, keys.len());
    s.run(keys, each);
    s.close();
}

/// Column `column` of the slot's row, and whether it is NULL.
unsafe fn attr(slot: *mut pg_sys::TupleTableSlot, column: AttrNumber) -> (Datum, bool) {
    let mut is_null = false;
    let datum = pg_sys::slot_getattr(slot, i32::from(column), &mut is_null);
    (datum, is_null)
}

/// A numeric column of the slot's row, copied out of the buffer; zero for NULL.
unsafe fn numeric(slot: *mut pg_sys::TupleTableSlot, column: AttrNumber) -> AnyNumeric {
    let (datum, is_null) = attr(slot, column);
    AnyNumeric::from_datum(datum, is_null).unwrap_or_default()
}

/// A text column of the slot's row, copied out; None for NULL.
unsafe fn text(slot: *mut pg_sys::TupleTableSlot, column: AttrNumber) -> Option<String> {
    let (datum, is_null) = attr(slot, column);
    String::from_datum(datum, is_null)
}

/// A boolean column of the slot's row; false for NULL.
unsafe fn boolean(slot: *mut pg_sys::TupleTableSlot, column: AttrNumber) -> bool {
    let (datum, is_null) = attr(slot, column);
    !is_null && datum.value() != 0
}

/// Adds `v` to the sum at `key`.
fn add(sums: &mut BTreeMap<String, AnyNumeric>, key: String, v: AnyNumeric) {
    match sums.get_mut(&key) {
        Some(t) => *t += v,
        None => {
            sums.insert(key, v);
        }
    }
}

/// Sums a numeric column over what the index finds; None when it finds nothing.
unsafe fn sum(r: Indexed, keys: &[(AttrNumber, Key)]) -> Option<AnyNumeric> {
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
    let cat = catalog().filter(Catalog::readable_directly)?;
    // SAFETY: called from a SQL function, inside a transaction; the snapshot is checked first
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let pair = [(1, Key::Equals(sku)), (2, Key::Equals(location))];
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
            let holds = [
                (1, Key::Equals(sku)),
                (2, Key::Equals(location)),
                (3, Key::AtMost(now)),
            ];
            if let Some(expired) = sum(cat.holds, &holds) {
                atp += expired;
            }
        }
        if let Some(safety) = sum(cat.safety, &pair) {
            atp -= safety;
        }
        let due = [
            (1, Key::Equals(sku)),
            (2, Key::Equals(location)),
            (3, Key::AtMost(at)),
        ];
        if let Some(incoming) = sum(cat.supply, &due) {
            atp += incoming;
        }
        Some(atp)
    }
}

/// Network ATP of `sku` by `at`: Σ over active locations of max(location ATP, 0), the locations being those
/// with a balance, a safety stock or supply due by `at` for the sku. None when the checked path must answer
/// (an unknown sku, no active snapshot, a schema this code does not recognise).
pub fn network(sku: &str, at: Datum) -> Option<AnyNumeric> {
    let cat = catalog().filter(Catalog::readable_directly)?;
    // SAFETY: as in at_location
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let by_sku = [(1, Key::Equals(sku))];
        let mut known = false;
        scan(cat.item, &by_sku, |_| known = true);
        if !known {
            return None;
        }
        // per location: on hand − reserved + expired holds − safety stock + supply due
        let mut parts: BTreeMap<String, AnyNumeric> = BTreeMap::new();
        scan(cat.balance, &by_sku, |slot| {
            if let Some(loc) = text(slot, cat.balance_location) {
                let v = numeric(slot, cat.balance.column) - numeric(slot, cat.reserved);
                add(&mut parts, loc, v);
            }
        });
        let now = Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
        let mut expired: BTreeMap<String, AnyNumeric> = BTreeMap::new();
        scan(
            cat.holds,
            &[(1, Key::Equals(sku)), (3, Key::AtMost(now))],
            |slot| {
                if let Some(loc) = text(slot, cat.holds_location) {
                    add(&mut expired, loc, numeric(slot, cat.holds.column));
                }
            },
        );
        scan(cat.safety, &by_sku, |slot| {
            if let Some(loc) = text(slot, cat.safety_location) {
                let v = AnyNumeric::default() - numeric(slot, cat.safety.column);
                add(&mut parts, loc, v);
            }
        });
        scan(
            cat.supply,
            &[(1, Key::Equals(sku)), (3, Key::AtMost(at))],
            |slot| {
                if let Some(loc) = text(slot, cat.supply_location) {
                    add(&mut parts, loc, numeric(slot, cat.supply.column));
                }
            },
        );
        // only locations that exist and are active count, each at no less than zero
        let zero = AnyNumeric::default();
        let mut total = AnyNumeric::default();
        let mut locations = Scan::open(cat.location, 1);
        for (loc, mut atp) in parts {
            if let Some(e) = expired.remove(&loc) {
                atp += e;
            }
            let mut active = false;
            locations.run(&[(1, Key::Equals(&loc))], |slot| {
                active = boolean(slot, cat.location.column)
            });
            if active && atp > zero {
                total += atp;
            }
        }
        locations.close();
        Some(total)
    }
}
