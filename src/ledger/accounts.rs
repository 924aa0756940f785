//! Loading the account map for a call.

use pgrx::spi::SpiClient;

use super::journal::{AccountMap, Mapping};
use crate::statements::{get_text, run};

const ACCOUNT_MAP: &str =
    "SELECT role, account_code, location_id, item_class FROM possync.account_map";

/// The whole map: it is small (a role per row, a few overrides), and one read serves the call.
pub fn load(client: &mut SpiClient<'_>) -> AccountMap {
    let rows = run(client, ACCOUNT_MAP, &[])
        .map(|row| Mapping {
            role: get_text(&row, 1).unwrap_or_default(),
            account_code: get_text(&row, 2).unwrap_or_default(),
            location_id: get_text(&row, 3),
            item_class: get_text(&row, 4),
        })
        .collect();
    AccountMap::new(rows)
}
