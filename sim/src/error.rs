//! The simulator's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot connect to the {what} database: {message}")]
    Connect { what: &'static str, message: String },
    #[error("{what}: {message}")]
    Db { what: String, message: String },
    #[error("POS transaction {event_id} failed: {message}")]
    PosWrite { event_id: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("a POS writer stopped: {0}")]
    WriterGone(String),
}

impl SimError {
    /// Wraps a database error with what was being done; the server's own message is kept.
    pub fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SimError {
        let what = what.into();
        move |e| SimError::Db {
            what,
            message: pg_message(&e),
        }
    }
}

/// The server's message when there is one (tokio-postgres' Display says only "db error").
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.hint() {
            Some(h) => format!("{} (hint: {h})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}
