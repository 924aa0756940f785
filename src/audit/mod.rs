//! Sales audit while posting: configuration errors spotted on each line, register sequence gaps, and the day
//! close comparison. These flag; they never stop an event from posting. The read-only side (reconcile,
//! check_invariants, trace, KPIs) is SQL in sql/audit.sql.

pub mod config;
pub mod sequence;
