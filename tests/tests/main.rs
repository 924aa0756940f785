//! End-to-end tests: real POS and ERP clusters, the bridge binary in between, results checked against totals
//! computed from the POS tables. Run after `make install` (the ERP side needs the real extension):
//! `cargo test -p possync-e2e -- --test-threads=1`.

mod check;
mod concurrency;
mod dashboard;
mod demo;
mod documents;
mod exactly_once;
mod hostile;
mod hung_owner;
mod lag;
mod lanes;
mod large_transaction;
mod model;
mod network;
mod normalized;
mod outage;
mod privileges;
mod publication;
mod refused;
mod slot_loss;
mod takeover;
mod tls;
mod upgrade;
