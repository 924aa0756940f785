//! Settings (`SET possync.x = ...` per session, or in postgresql.conf). They are policy: only a superuser
//! (or `ALTER ROLE ... SET` by one) changes them, so a posting role cannot switch the audit off for itself.

use std::ffi::CString;
use std::str::FromStr;

use pgrx::{pg_guard, pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PgTryBuilder};
use rust_decimal::Decimal;

static REJECT_NEGATIVE_ON_HAND: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"possync.reject_negative_on_hand",
        c"Reject events that would take on-hand below zero",
        c"By default the shelf is the truth: negative on-hand posts and raises a negative_on_hand exception. \
          When on, such an event is rejected and kept in possync.exception instead.",
        &REJECT_NEGATIVE_ON_HAND,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"possync.allow_drop",
        c"Allow DROP EXTENSION possync (and DROP SCHEMA possync) while the ledgers hold data",
        c"Off by default: dropping the extension deletes every ledger with it. Archive them first \
          (pg_dump of the database), then SET possync.allow_drop = on in the session that drops.",
        &ALLOW_DROP,
        GucContext::Suset,
        GucFlags::default(),
    );
    init_audit();
    init_documents();
}

static ALLOW_DROP: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn reject_negative_on_hand() -> bool {
    REJECT_NEGATIVE_ON_HAND.get()
}

static TAX_TOLERANCE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"0.01"));
static MAX_DISCOUNT_PCT: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"50"));

pub fn init_audit() {
    GucRegistry::define_string_guc(
        c"possync.tax_tolerance",
        c"How far a line's tax may differ from its tax code's rate times net before tax_mismatch is raised",
        c"An amount in the currency, for example 0.01.",
        &TAX_TOLERANCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"possync.max_discount_pct",
        c"Discounts above this percentage of a line's gross raise suspicious_discount",
        c"A percentage, for example 50. A promotion's own max_discount_pct takes precedence on its lines.",
        &MAX_DISCOUNT_PCT,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn decimal_setting(setting: &GucSetting<Option<CString>>, fallback: &str) -> Decimal {
    setting
        .get()
        .and_then(|c| {
            c.to_str()
                .ok()
                .and_then(|s| Decimal::from_str(s.trim()).ok())
        })
        .unwrap_or_else(|| Decimal::from_str(fallback).unwrap_or_default())
}

/// possync.tax_tolerance as a decimal (0.01 when unset or not a number).
pub fn tax_tolerance() -> Decimal {
    decimal_setting(&TAX_TOLERANCE, "0.01")
}

/// possync.max_discount_pct as a decimal (50 when unset or not a number).
pub fn max_discount_pct() -> Decimal {
    decimal_setting(&MAX_DISCOUNT_PCT, "50")
}

static DOCUMENT_FINAL_WITHIN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"1 hour"));

fn init_documents() {
    // SAFETY: the check hook is a #[pg_guard] function that catches the errors it provokes
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"possync.document_final_within",
            c"How long a POS document may wait in a draft state before open_exceptions shows it",
            c"An interval, for example '1 hour' or '30 min'. A document the bridge noted as pending \
              (possync.pending_document) for longer shows in possync.open_exceptions as document_not_final.",
            &DOCUMENT_FINAL_WITHIN,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_document_final_within),
            None,
            None,
        );
    }
}

/// Microseconds of an interval as PostgreSQL orders intervals (a month is 30 days), or None when `text` is not an
/// interval. Runs PostgreSQL's own interval input and catches its error.
fn interval_micros(text: &std::ffi::CStr) -> Option<i128> {
    let ptr = text.as_ptr();
    PgTryBuilder::new(|| {
        // SAFETY: interval_in reads a NUL-terminated string, a type oid and a typmod; it returns a palloc'd
        // Interval or raises, which PgTryBuilder catches
        let datum = unsafe {
            pgrx::fcinfo::direct_function_call_as_datum(
                pg_sys::interval_in,
                &[
                    Some(pg_sys::Datum::from(ptr)),
                    Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                    Some(pg_sys::Datum::from(-1i32)),
                ],
            )
        }?;
        // SAFETY: interval_in returned a pointer to an Interval
        let iv = unsafe { &*datum.cast_mut_ptr::<pg_sys::Interval>() };
        Some(
            (i128::from(iv.month) * 30 + i128::from(iv.day)) * 86_400_000_000 + i128::from(iv.time),
        )
    })
    .catch_others(|_| None)
    .execute()
}

/// Refuses a possync.document_final_within that is not an interval, or is negative.
#[pg_guard]
unsafe extern "C-unwind" fn check_document_final_within(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value, which may be NULL
    let Some(value) = (unsafe { newval.as_ref() }).filter(|p| !p.is_null()) else {
        return true;
    };
    // SAFETY: a non-NULL proposed value is a NUL-terminated string
    let text = unsafe { std::ffi::CStr::from_ptr(*value) };
    let detail = match interval_micros(text) {
        Some(us) if us >= 0 => return true,
        Some(_) => c"possync.document_final_within must not be negative.",
        None => c"possync.document_final_within must be an interval such as '1 hour' or '30 min'.",
    };
    // SAFETY: the GUC machinery reports this palloc'd detail with its error
    unsafe {
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
    }
    false
}
