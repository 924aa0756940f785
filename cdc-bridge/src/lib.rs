//! The possync bridge: streams POS databases into the possync ERP extension over logical replication.

pub mod apply;
pub mod assembler;
pub mod check;
pub mod dashboard;
pub mod decoder;
pub mod document;
pub mod http;
pub mod lag;
pub mod lanes;
pub mod lsn;
pub mod mapping;
pub mod metrics;
pub mod mirror;
pub mod ownership;
pub mod pgerr;
pub mod publication;
pub mod remap;
pub mod replication;
pub mod resync;
pub mod source;
pub mod spill;
pub mod tls;
