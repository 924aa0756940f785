//! The possync event contract: one business event per JSON object.
//!
//! The extension parses events with [`Event::from_json`]; the bridge builds them with the same types and
//! serializes them. Amounts and quantities are [`Decimal`], read exactly from JSON numbers or strings.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

mod parse;

pub use parse::{depth, domain, type_name as json_type_name, Malformed, UNMAPPED};

/// What happened at the till or in the stock room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    #[default]
    Sale,
    Return,
    Exchange,
    Fulfillment,
    Receipt,
    TransferOut,
    TransferIn,
    Adjustment,
    Count,
    DayClose,
    /// A cancelled till transaction that used up a register sequence number: it posts nothing, but the
    /// register's sequence audit and its day close count it.
    Void,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Sale,
        EventKind::Return,
        EventKind::Exchange,
        EventKind::Fulfillment,
        EventKind::Receipt,
        EventKind::TransferOut,
        EventKind::TransferIn,
        EventKind::Adjustment,
        EventKind::Count,
        EventKind::DayClose,
        EventKind::Void,
    ];

    /// The kind's name as it appears in the `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sale => "sale",
            EventKind::Return => "return",
            EventKind::Exchange => "exchange",
            EventKind::Fulfillment => "fulfillment",
            EventKind::Receipt => "receipt",
            EventKind::TransferOut => "transfer_out",
            EventKind::TransferIn => "transfer_in",
            EventKind::Adjustment => "adjustment",
            EventKind::Count => "count",
            EventKind::DayClose => "day_close",
            EventKind::Void => "void",
        }
    }

    /// Parses a `kind` field value.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True for kinds where a customer pays or is refunded at a till.
    pub fn has_tenders(self) -> bool {
        matches!(
            self,
            EventKind::Sale | EventKind::Return | EventKind::Exchange
        )
    }

    /// True for kinds that use up a register's sequence number: the till transactions, and a void (a till
    /// transaction cancelled after it took its number). The sequence audit counts these.
    pub fn takes_register_sequence(self) -> bool {
        self.has_tenders() || self == EventKind::Void
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an event. Which fields matter depends on the event kind.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    pub sku: String,
    /// Units moved: sold, returned, received, transferred, or signed for an adjustment.
    #[serde(skip_serializing_if = "Decimal::is_zero")]
    pub qty: Decimal,
    #[serde(skip_serializing_if = "Decimal::is_zero")]
    pub unit_price: Decimal,
    #[serde(skip_serializing_if = "Decimal::is_zero")]
    pub discount: Decimal,
    #[serde(skip_serializing_if = "Decimal::is_zero")]
    pub tax: Decimal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
    /// Exchange lines: true for the goods coming back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub returned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_cost: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_qty: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supply_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
}

impl Line {
    /// qty × unit_price − discount.
    pub fn net(&self) -> Decimal {
        self.qty * self.unit_price - self.discount
    }
}

/// How the customer paid (negative amount: refunded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tender {
    #[serde(rename = "type")]
    pub tender_type: String,
    pub amount: Decimal,
}

/// The totals a register reports at day close.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct DayTotals {
    pub net_sales: Decimal,
    pub tax: Decimal,
    pub tenders: Vec<Tender>,
    pub transaction_count: i64,
    pub last_sequence: i64,
}

impl Serialize for DayTotalsTenders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for t in self.0 {
            m.serialize_entry(&t.tender_type, &t.amount)?;
        }
        m.end()
    }
}

struct DayTotalsTenders<'a>(&'a [Tender]);

/// A parsed, well-formed business event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub event_id: String,
    pub kind: EventKind,
    pub source: Option<String>,
    pub location: String,
    pub register: Option<String>,
    pub sequence: Option<i64>,
    /// ISO date, `YYYY-MM-DD`.
    pub business_date: String,
    /// RFC 3339 timestamp; None means "when received".
    pub occurred_at: Option<String>,
    pub currency: Option<String>,
    pub lines: Vec<Line>,
    pub tenders: Vec<Tender>,
    pub order_id: Option<String>,
    pub transfer_id: Option<String>,
    pub to_location: Option<String>,
    pub from_location: Option<String>,
    pub reason: Option<String>,
    pub supply_id: Option<String>,
    pub original_event_id: Option<String>,
    pub totals: Option<DayTotals>,
}

impl Event {
    /// Parses and validates one event, naming the field at fault when it is malformed.
    pub fn from_json(value: &Value) -> Result<Event, Malformed> {
        parse::event(value)
    }

    /// Parses and validates an event's header alone: every field but `lines` and `tenders`, which it ignores
    /// (a day close's totals are read). With [`Event::header_json`], [`Event::line_json`] and
    /// [`Event::tender_json`] an event too large to hold is written in its contract form piece by piece, equal
    /// to what [`Event::to_json`] gives for the whole.
    pub fn header_from_json(value: &Value) -> Result<Event, Malformed> {
        parse::header(value)
    }

    /// One line of this event, as `to_json` writes it (`i`: its index, for the field an error names).
    pub fn line_json(&self, line: &Value, i: usize) -> Result<Value, Malformed> {
        parse::line(self, line, i).map(|l| serde_json::to_value(l).unwrap_or(Value::Null))
    }

    /// One tender, as `to_json` writes it.
    pub fn tender_json(tender: &Value, i: usize) -> Result<Value, Malformed> {
        parse::tender(tender, i).map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
    }

    /// The event as contract JSON.
    pub fn to_json(&self) -> Value {
        let mut m = self.header_json();
        if !self.lines.is_empty() {
            m.insert(
                "lines".into(),
                serde_json::to_value(&self.lines).unwrap_or(Value::Null),
            );
        }
        if self.kind.has_tenders() || !self.tenders.is_empty() {
            m.insert(
                "tenders".into(),
                serde_json::to_value(&self.tenders).unwrap_or(Value::Null),
            );
        }
        Value::Object(m)
    }

    /// The event's contract JSON without `lines` and `tenders`.
    pub fn header_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("event_id", Value::from(self.event_id.clone()));
        put("kind", Value::from(self.kind.as_str()));
        let opt = |v: &Option<String>| v.clone().map(Value::from);
        for (k, v) in [
            ("source", opt(&self.source)),
            ("register", opt(&self.register)),
            ("occurred_at", opt(&self.occurred_at)),
            ("currency", opt(&self.currency)),
            ("order_id", opt(&self.order_id)),
            ("transfer_id", opt(&self.transfer_id)),
            ("to_location", opt(&self.to_location)),
            ("from_location", opt(&self.from_location)),
            ("reason", opt(&self.reason)),
            ("supply_id", opt(&self.supply_id)),
            ("original_event_id", opt(&self.original_event_id)),
        ] {
            if let Some(v) = v {
                put(k, v);
            }
        }
        put("location", Value::from(self.location.clone()));
        put("business_date", Value::from(self.business_date.clone()));
        if let Some(s) = self.sequence {
            put("sequence", Value::from(s));
        }
        if let Some(t) = &self.totals {
            let mut tm = Map::new();
            tm.insert("net_sales".into(), Value::from(t.net_sales.to_string()));
            tm.insert("tax".into(), Value::from(t.tax.to_string()));
            tm.insert(
                "tenders".into(),
                serde_json::to_value(DayTotalsTenders(&t.tenders)).unwrap_or(Value::Null),
            );
            tm.insert("transaction_count".into(), Value::from(t.transaction_count));
            tm.insert("last_sequence".into(), Value::from(t.last_sequence));
            put("totals", Value::Object(tm));
        }
        m
    }

    /// Σ net over lines that are sold (not returned).
    pub fn sold_net(&self) -> Decimal {
        self.lines
            .iter()
            .filter(|l| !l.returned)
            .map(Line::net)
            .sum()
    }

    /// Σ tenders.
    pub fn tendered(&self) -> Decimal {
        self.tenders.iter().map(|t| t.amount).sum()
    }
}

/// The event id as far as it can be read from a payload that may be malformed.
pub fn event_id_of(value: &Value) -> Option<String> {
    let id = match value.get("event_id")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    within_id_domain(&id).then_some(id)
}

/// A text field of a payload that may be malformed, when it is a usable id (within the contract's domain).
pub fn id_field_of(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && within_id_domain(s))
        .map(str::to_string)
}

fn within_id_domain(s: &str) -> bool {
    s.chars().count() <= domain::ID_MAX_CHARS && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
