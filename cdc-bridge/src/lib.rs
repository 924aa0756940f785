//! The possync bridge: streams POS databases into the possync ERP extension over logical replication.

pub mod apply;
pub mod assembler;
pub mod check;
pub mod dashboard;
pub mod decoder;
pub mod document;
pub mod http;
pub mod lsn;
pub mod mapping;
pub mod metrics;
pub mod mirror;
pub mod pgerr;
pub mod remap;
pub mod replication;
pub mod resync;
pub mod source;
