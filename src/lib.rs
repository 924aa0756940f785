//! possync: POS events into a stock ledger and a balanced general ledger inside PostgreSQL, exactly once.
//!
//! The SQL surface lives in `events::api` (posting), `atp` (available-to-promise and reservations),
//! `audit` (reconciliation and checks) and `sql/` (tables, views, grants).

use pgrx::prelude::*;

pub mod atp;
pub mod audit;
mod errors;
pub mod events;
mod guc;
mod json_object;
pub mod ledger;
mod statements;
pub mod stock;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/audit.sql", name = "audit");
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

// `cargo pgrx test` calls tests.<name>(): every #[pg_test] lives in schema `tests`; one file per domain
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests/posting.rs");
    include!("pg_tests/atp.rs");
    include!("pg_tests/scenario.rs");
    include!("pg_tests/audit.rs");
    include!("pg_tests/accounting.rs");
    include!("pg_tests/defects.rs");
    include!("pg_tests/voids_and_documents.rs");
    include!("pg_tests/lanes.rs");
    include!("pg_tests/periods.rs");
    include!("pg_tests/json_object.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
