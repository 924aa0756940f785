//! Events in, read top-down: `api` (the SQL functions) → `input` (arguments read as JSON) → `batch` (the
//! pipeline: parse, judge duplicates, lock, post each event, write) → `posting` (the rules of each kind, on a
//! draft) → `context` (what one call works with) → `store` (loads and the writes of a call) → `facts` (the
//! types they pass between them). `reverse` posts reversals through the same floor; `periods` makes the business
//! months a call writes into and keeps it clear of archiving.

pub mod api;
pub mod batch;
pub mod context;
pub mod facts;
pub mod input;
pub mod periods;
pub mod posting;
pub mod reverse;
pub mod store;
