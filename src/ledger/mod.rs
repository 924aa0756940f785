//! The general ledger: roles, the account map, and balanced journals.

pub mod journal;

pub use journal::{AccountMap, JournalDraft, JournalLine, Role};
