//! PostgreSQL errors said in full, and sorted into "try again later" and "this data cannot be posted".
//!
//! `tokio_postgres::Error`'s own `Display` says only "db error" for a server error: every message, log line and
//! status line of the bridge goes through [`describe`] instead, which gives the server's SQLSTATE, message,
//! detail, hint, context and position.

use std::fmt::Write;

/// Longest text the event contract accepts in a `reason` (the extension's `domain::TEXT_MAX_CHARS`).
pub const REASON_MAX_CHARS: usize = 1000;

/// One line with everything the server said, or the client-side error and its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                let _ = write!(s, "; DETAIL: {d}");
            }
            if let Some(h) = db.hint() {
                let _ = write!(s, "; HINT: {h}");
            }
            if let Some(w) = db.where_() {
                let _ = write!(s, "; WHERE: {w}");
            }
            if let Some(p) = db.position() {
                match p {
                    tokio_postgres::error::ErrorPosition::Original(at) => {
                        let _ = write!(s, "; at character {at}");
                    }
                    tokio_postgres::error::ErrorPosition::Internal { position, query } => {
                        let _ = write!(s, "; at character {position} of internal query {query}");
                    }
                }
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let _ = write!(s, ": {c}");
                cause = c.source();
            }
            s
        }
    }
}

/// The server's fields of an error, when it came from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    pub fn of(e: &tokio_postgres::Error) -> Option<ServerError> {
        e.as_db_error().map(|db| ServerError {
            sqlstate: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
        })
    }
}

/// What to do about an error of an ERP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The ERP is unreachable, busy, shutting down or refused for a reason that will pass (or that every call
    /// would meet, such as a revoked grant): retry the same call with backoff.
    Transient,
    /// The server refused this data: retrying the same call would fail the same way.
    Data,
}

/// Sorts an ERP error by its SQLSTATE. Errors without one (I/O, a closed connection, a timeout) are transient.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        None => ErrorClass::Transient,
        Some(code) => classify_sqlstate(code.code()),
    }
}

/// [`classify`] on the five-character SQLSTATE.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let transient = matches!(
        code.get(..2),
        // connection exception, insufficient resources, system error (I/O on the server)
        Some("08" | "53" | "58")
    ) || code.starts_with("57P") // admin/crash shutdown, cannot connect now, database dropped
        || matches!(
            code,
            // serialization failure, deadlock, lock not available, read-only (a standby), query canceled
            // (statement timeout or pg_cancel_backend: the same call may well pass next time)
            "40001" | "40P01" | "55P03" | "25006" | "57014"
            // data or index corruption on the ERP is the ERP's problem, not the sale's
            | "XX001" | "XX002"
            // configuration that every call meets: privilege revoked, extension or function missing,
            // database or role gone. Rejecting sales one by one for these would empty the store into exceptions
            | "42501" | "42883" | "3F000" | "3D000" | "28000" | "28P01"
        );
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Data
    }
}

/// Cuts `text` to at most `max` characters, saying how long it was when it had to be cut.
pub fn truncate_noting_length(text: &str, max: usize) -> String {
    truncate_known_length(text, text.chars().count(), max)
}

/// The same for a text of `n` characters of which `head` holds at least the first `min(n, max)` (a text read in
/// pieces and not held whole).
pub fn truncate_known_length(head: &str, n: usize, max: usize) -> String {
    if n <= max {
        return head.chars().take(n).collect();
    }
    let note = format!(" … [truncated: {n} characters in all]");
    let keep = max.saturating_sub(note.chars().count());
    let mut s: String = head.chars().take(keep).collect();
    s.push_str(&note);
    s
}

/// Control characters (newlines in a DETAIL, for instance) are not allowed in an event's text fields.
pub fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_availability_errors_are_retried_and_data_errors_are_not() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57P03", "40001", "40P01", "55P03",
            "25006", "57014", "42501",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Transient, "{code}");
        }
        for code in [
            "22003", "22P02", "23505", "23514", "XX000", "54000", "54001", "42804", "P0001",
            "2201E",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Data, "{code}");
        }
    }

    #[test]
    fn long_text_is_cut_to_the_limit_with_its_length_noted() {
        assert_eq!(truncate_noting_length("short", 1000), "short");
        let long = "é".repeat(1_000_000);
        let cut = truncate_noting_length(&long, REASON_MAX_CHARS);
        assert_eq!(cut.chars().count(), REASON_MAX_CHARS);
        assert!(
            cut.ends_with("[truncated: 1000000 characters in all]"),
            "{cut}"
        );
        assert_eq!(single_line("a\nb\tc"), "a b c");
    }
}
