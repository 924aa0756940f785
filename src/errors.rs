//! Errors raised for misuse of the SQL API (bad arguments), never for bad business data.

use pgrx::prelude::*;

/// Raises an ERROR with `code`, a message that names the argument, and a hint saying what to do.
pub fn misuse(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message.into(), "possync")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises 22004 (null_value_not_allowed) naming the argument.
pub fn null_argument(function: &str, argument: &str) -> ! {
    misuse(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{function}: argument {argument} must not be NULL"),
        format!("pass a value for {argument}"),
    )
}
