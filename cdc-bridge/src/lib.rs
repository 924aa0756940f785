//! The possync bridge: streams POS databases into the possync ERP extension over logical replication.

pub mod assembler;
pub mod decoder;
pub mod lsn;
pub mod mapping;
