//! An independent model of DESIGN.md's posting rules, and a seeded generator of event sequences checked
//! against it (tests/tests/model.rs runs them against the real extension).
//!
//! Written from DESIGN.md ("The event contract", its rules and "Clarified rules"), not from the extension's
//! code, so that both can be wrong only in the same way by reading DESIGN.md the same way. The readings taken
//! where DESIGN.md is silent are marked "Reading:" in books.rs.

pub mod books;
pub mod event;
pub mod generate;
pub mod money;

pub use books::{Balance, Model, Outcome, Reversal, State, Status, MODELED_EXCEPTIONS};
pub use generate::{Avoid, Call, Expect, Generator, Step};

#[cfg(test)]
mod tests;
