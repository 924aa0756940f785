//! Events in: the apply pipeline, the posting rules of each kind, and the SQL functions that call them.

pub mod api;
pub mod batch;
pub mod input;
pub mod posting;
pub mod reverse;
pub mod store;
