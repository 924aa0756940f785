//! Settings (`SET possync.x = ...` per session, or in postgresql.conf). They are policy: only a superuser
//! (or `ALTER ROLE ... SET` by one) changes them, so a posting role cannot switch the audit off for itself.

use std::ffi::CString;
use std::str::FromStr;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
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
