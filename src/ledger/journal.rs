//! Journals built from role postings, resolved to accounts and netted per account and location.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;

/// What a posting is for; `possync.account_map` turns a role into an account code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Tender(String),
    Inventory,
    InTransit,
    TaxPayable,
    Grni,
    CustomerDeposits,
    Revenue,
    Returns,
    Cogs,
    Shrink,
    OverShort,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Tender(t) => write!(f, "tender:{t}"),
            Role::Inventory => f.write_str("inventory"),
            Role::InTransit => f.write_str("in_transit"),
            Role::TaxPayable => f.write_str("tax_payable"),
            Role::Grni => f.write_str("grni"),
            Role::CustomerDeposits => f.write_str("customer_deposits"),
            Role::Revenue => f.write_str("revenue"),
            Role::Returns => f.write_str("returns"),
            Role::Cogs => f.write_str("cogs"),
            Role::Shrink => f.write_str("shrink"),
            Role::OverShort => f.write_str("over_short"),
        }
    }
}

/// One row of `possync.account_map`.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub role: String,
    pub account_code: String,
    pub location_id: Option<String>,
    pub item_class: Option<String>,
}

/// The account map as loaded for one call.
#[derive(Debug, Default)]
pub struct AccountMap {
    rows: Vec<Mapping>,
}

impl AccountMap {
    pub fn new(rows: Vec<Mapping>) -> AccountMap {
        AccountMap { rows }
    }

    /// The most specific mapping for the role: location and item class given beat NULL, location first.
    pub fn resolve(&self, role: &Role, location: &str, item_class: Option<&str>) -> Option<&str> {
        let exact = role.to_string();
        let names: Vec<&str> = match role {
            Role::Tender(_) => vec![exact.as_str(), "tender:*"],
            _ => vec![exact.as_str()],
        };
        for name in names {
            let best = self
                .rows
                .iter()
                .filter(|m| m.role == name)
                .filter(|m| m.location_id.as_deref().is_none_or(|l| l == location))
                .filter(|m| {
                    m.item_class
                        .as_deref()
                        .is_none_or(|c| Some(c) == item_class)
                })
                .max_by_key(|m| (m.location_id.is_some(), m.item_class.is_some()));
            if let Some(m) = best {
                return Some(&m.account_code);
            }
        }
        None
    }
}

/// A posting by role: positive amounts are debits, negative credits.
#[derive(Debug, Clone)]
pub struct Posting {
    pub role: Role,
    pub location: String,
    pub item_class: Option<String>,
    pub amount: Decimal,
}

/// A balanced journal line with its account resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalLine {
    pub line_no: i32,
    pub account_code: String,
    pub location_id: String,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// Postings collected for one event, before accounts are resolved.
#[derive(Debug, Default)]
pub struct JournalDraft {
    postings: Vec<Posting>,
}

/// A role that has no account for a location (and item class): the event waits for master data.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingAccount {
    pub role: String,
    pub location: String,
    pub item_class: Option<String>,
}

impl fmt::Display for MissingAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no account is mapped for role {} at location {}",
            self.role, self.location
        )?;
        if let Some(c) = &self.item_class {
            write!(f, " (item class {c})")?;
        }
        f.write_str("; add a row to possync.account_map and run possync.replay_held()")
    }
}

impl JournalDraft {
    pub fn debit(&mut self, role: Role, location: &str, item_class: Option<&str>, amount: Decimal) {
        if !amount.is_zero() {
            self.postings.push(Posting {
                role,
                location: location.to_string(),
                item_class: item_class.map(str::to_string),
                amount,
            });
        }
    }

    pub fn credit(
        &mut self,
        role: Role,
        location: &str,
        item_class: Option<&str>,
        amount: Decimal,
    ) {
        self.debit(role, location, item_class, -amount);
    }

    /// Σ debits − Σ credits; zero for a balanced draft.
    pub fn imbalance(&self) -> Decimal {
        self.postings.iter().map(|p| p.amount).sum()
    }

    /// Resolves every role and nets amounts per account and location, in a stable order.
    pub fn resolve(&self, accounts: &AccountMap) -> Result<Vec<JournalLine>, Vec<MissingAccount>> {
        let mut net: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        let mut missing = Vec::new();
        for p in &self.postings {
            match accounts.resolve(&p.role, &p.location, p.item_class.as_deref()) {
                Some(code) => {
                    *net.entry((code.to_string(), p.location.clone()))
                        .or_default() += p.amount;
                }
                None => {
                    let m = MissingAccount {
                        role: p.role.to_string(),
                        location: p.location.clone(),
                        item_class: p.item_class.clone(),
                    };
                    if !missing.contains(&m) {
                        missing.push(m);
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(net
            .into_iter()
            .filter(|(_, amount)| !amount.is_zero())
            .enumerate()
            .map(|(i, ((account_code, location_id), amount))| JournalLine {
                line_no: i as i32 + 1,
                account_code,
                location_id,
                debit: amount.max(Decimal::ZERO),
                credit: (-amount).max(Decimal::ZERO),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    fn map(role: &str, code: &str, loc: Option<&str>, class: Option<&str>) -> Mapping {
        Mapping {
            role: role.into(),
            account_code: code.into(),
            location_id: loc.map(Into::into),
            item_class: class.map(Into::into),
        }
    }

    #[test]
    fn most_specific_mapping_wins() {
        let m = AccountMap::new(vec![
            map("revenue", "4000", None, None),
            map("revenue", "4001", Some("S1"), None),
            map("revenue", "4010", None, Some("food")),
            map("tender:*", "1010", None, None),
            map("tender:cash", "1000", None, None),
        ]);
        assert_eq!(m.resolve(&Role::Revenue, "S2", None), Some("4000"));
        assert_eq!(m.resolve(&Role::Revenue, "S1", Some("food")), Some("4001"));
        assert_eq!(m.resolve(&Role::Revenue, "S2", Some("food")), Some("4010"));
        assert_eq!(
            m.resolve(&Role::Tender("cash".into()), "S2", None),
            Some("1000")
        );
        assert_eq!(
            m.resolve(&Role::Tender("gift".into()), "S2", None),
            Some("1010")
        );
        assert_eq!(m.resolve(&Role::Cogs, "S2", None), None);
    }

    #[test]
    fn nets_per_account_and_reports_missing_roles() {
        let m = AccountMap::new(vec![
            map("tax_payable", "2100", None, None),
            map("tender:*", "1010", None, None),
        ]);
        let mut j = JournalDraft::default();
        j.credit(Role::TaxPayable, "S1", None, d("2.00"));
        j.debit(Role::TaxPayable, "S1", None, d("0.50"));
        j.debit(Role::Tender("card".into()), "S1", None, d("1.50"));
        assert!(j.imbalance().is_zero());
        let lines = j.resolve(&m).expect("resolved");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].credit, d("1.50"));
        j.debit(Role::Cogs, "S1", Some("food"), d("1"));
        let missing = j.resolve(&m).expect_err("cogs is not mapped");
        assert_eq!(missing[0].role, "cogs");
    }
}
