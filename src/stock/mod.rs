//! The stock ledger: moving average costing and the locked balances a posting works on.

pub mod balances;
pub mod cost;

pub use balances::Balances;
pub use cost::{cents, cents_of_share, Balance, StockMove};
