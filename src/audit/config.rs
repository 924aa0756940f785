//! Line checks that catch configuration errors while they are small: tax that does not match its code's
//! rate, unknown tax codes, discounts out of proportion, promotions unknown or out of their dates.

use std::collections::HashMap;

use possync_events::Event;
use rust_decimal::Decimal;

use crate::events::facts::Raised;
use crate::stock::cents;

/// A promotion as the till may name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub starts_on: Option<String>,
    pub ends_on: Option<String>,
    pub max_discount_pct: Option<Decimal>,
}

/// What the checks compare against, loaded once per call.
#[derive(Debug, Default)]
pub struct Rules {
    pub tax_rates: HashMap<String, Decimal>,
    pub promotions: HashMap<String, Promotion>,
    pub tax_tolerance: Decimal,
    pub max_discount_pct: Decimal,
}

/// The exceptions an event's lines raise (empty for a clean event).
pub fn check_lines(ev: &Event, rules: &Rules) -> Vec<Raised> {
    let mut raised = Vec::new();
    for (i, line) in ev.lines.iter().enumerate() {
        let at = format!("line {} ({})", line.line.unwrap_or(i as i64 + 1), line.sku);
        let gross = line.qty * line.unit_price;
        let net = cents(gross - line.discount);
        if let Some(code) = &line.tax_code {
            match rules.tax_rates.get(code) {
                None => raised.push(Raised::new(
                    "unknown_tax_code",
                    format!("{at}: tax code {code} is not in possync.tax_code"),
                    Some(line.tax),
                )),
                Some(rate) => {
                    let expected = cents(net * rate);
                    let off = line.tax - expected;
                    if off.abs() > rules.tax_tolerance {
                        raised.push(Raised::new(
                            "tax_mismatch",
                            format!(
                                "{at}: tax {} but {code} at {rate} on {net} is {expected}",
                                line.tax
                            ),
                            Some(off),
                        ));
                    }
                }
            }
        }
        let promotion = line
            .promotion
            .as_ref()
            .map(|p| (p, rules.promotions.get(p)));
        let limit = match promotion {
            Some((_, Some(p))) => p.max_discount_pct.unwrap_or(rules.max_discount_pct),
            _ => rules.max_discount_pct,
        };
        if line.discount > gross {
            raised.push(Raised::new(
                "suspicious_discount",
                format!(
                    "{at}: discount {} is larger than the line's gross {gross}",
                    line.discount
                ),
                Some(line.discount - gross),
            ));
        } else if gross > Decimal::ZERO && line.discount * Decimal::ONE_HUNDRED > limit * gross {
            let pct = (line.discount * Decimal::ONE_HUNDRED / gross).round_dp(1);
            raised.push(Raised::new(
                "suspicious_discount",
                format!(
                    "{at}: discount {} is {pct}% of the gross {gross}, above {limit}%",
                    line.discount
                ),
                Some(line.discount),
            ));
        }
        match promotion {
            Some((code, None)) => raised.push(Raised::new(
                "promotion_misconfigured",
                format!("{at}: promotion {code} is not in possync.promotion"),
                Some(line.discount),
            )),
            Some((code, Some(p))) => {
                let day = ev.business_date.as_str();
                let early = p.starts_on.as_deref().is_some_and(|s| day < s);
                let late = p.ends_on.as_deref().is_some_and(|e| day > e);
                if early || late {
                    raised.push(Raised::new(
                        "promotion_misconfigured",
                        format!(
                            "{at}: promotion {code} runs from {} to {} but was used on {day}",
                            p.starts_on.as_deref().unwrap_or("the start"),
                            p.ends_on.as_deref().unwrap_or("no end")
                        ),
                        Some(line.discount),
                    ));
                }
            }
            None => {}
        }
    }
    raised
}

#[cfg(test)]
mod tests {
    use possync_events::Line;

    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    fn rules() -> Rules {
        Rules {
            tax_rates: HashMap::from([("NY".to_string(), d("0.08875"))]),
            promotions: HashMap::from([(
                "BF26".to_string(),
                Promotion {
                    starts_on: Some("2026-11-27".into()),
                    ends_on: Some("2026-11-30".into()),
                    max_discount_pct: Some(d("70")),
                },
            )]),
            tax_tolerance: d("0.01"),
            max_discount_pct: d("50"),
        }
    }

    fn sale(line: Line) -> Event {
        Event {
            event_id: "e".into(),
            business_date: "2026-11-26".into(),
            lines: vec![line],
            ..Event::default()
        }
    }

    fn line(qty: &str, price: &str, disc: &str, tax: &str) -> Line {
        Line {
            sku: "A".into(),
            qty: d(qty),
            unit_price: d(price),
            discount: d(disc),
            tax: d(tax),
            tax_code: Some("NY".into()),
            ..Line::default()
        }
    }

    fn kinds(ev: &Event) -> Vec<&'static str> {
        check_lines(ev, &rules()).iter().map(|r| r.kind).collect()
    }

    #[test]
    fn tax_within_tolerance_is_clean() {
        // 35.98 × 0.08875 = 3.193225 → 3.19
        assert!(kinds(&sale(line("2", "19.99", "4.00", "3.19"))).is_empty());
        assert!(kinds(&sale(line("2", "19.99", "4.00", "3.20"))).is_empty());
        let off = check_lines(&sale(line("2", "19.99", "4.00", "2.88")), &rules());
        assert_eq!(off[0].kind, "tax_mismatch");
        assert_eq!(off[0].amount, Some(d("-0.31")));
    }

    #[test]
    fn discounts_and_promotions() {
        assert_eq!(
            kinds(&sale(line("1", "10", "12", "0"))),
            vec!["tax_mismatch", "suspicious_discount"]
        );
        let mut l = line("1", "10", "6", "0.36");
        assert_eq!(kinds(&sale(l.clone())), vec!["suspicious_discount"]);
        l.promotion = Some("BF26".into());
        // within the promotion's 70 %, but the promotion has not started on the 26th
        assert_eq!(kinds(&sale(l.clone())), vec!["promotion_misconfigured"]);
        l.promotion = Some("NOPE".into());
        assert_eq!(
            kinds(&sale(l)),
            vec!["suspicious_discount", "promotion_misconfigured"]
        );
        let mut unknown = line("1", "10", "0", "0.89");
        unknown.tax_code = Some("XX".into());
        assert_eq!(kinds(&sale(unknown)), vec!["unknown_tax_code"]);
    }
}
